//! `accounts`: the dbt Cloud accounts an API key can access.

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use secrecy::SecretString;

use super::access::{key_or_prompt, list_accounts, parse_host, DbtArgs, KeyArgs};
use super::error::{CliError, CliResult};
use super::objects::{DEFAULT_CREDENTIALS_NAME, DEFAULT_OPERATOR_NAMESPACE};
use super::table::Table;
use super::terminal::Ctx;
use crate::controller::credentials::key_from_secret;
use crate::crd::{ClusterDbtCloudCredentials, CredentialsTarget, DbtCloudCredentials};
use crate::dbt_cloud::ClientConfig;

/// Flags of `accounts`.
#[derive(Debug, Clone, Args)]
pub struct AccountsArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub dbt: DbtArgs,
    /// Mark the account of these credentials with `*` (and use their key and host when --key /
    /// --host are not given).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the credentials given by --name (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// --name names ClusterDbtCloudCredentials.
    #[arg(long)]
    pub cluster: bool,
    /// The operator's namespace, where Secrets of cluster-wide credentials live.
    #[arg(long, default_value = DEFAULT_OPERATOR_NAMESPACE)]
    pub operator_namespace: String,
}

/// Runs `accounts`. `kube` is only used when `--name` or `--namespace` is given.
pub async fn accounts(
    args: AccountsArgs,
    kube: Result<kube::Client, String>,
    config: ClientConfig,
    ctx: &mut Ctx<'_>,
) -> CliResult {
    let explicit = args.name.is_some();
    let current = if explicit || args.namespace.is_some() {
        let client = kube.map_err(CliError::new)?;
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_CREDENTIALS_NAME.to_string());
        let target = if args.cluster {
            Api::<ClusterDbtCloudCredentials>::all(client.clone())
                .get_opt(&name)
                .await?
                .map(|c| c.target(&args.operator_namespace))
        } else {
            let ns = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            Api::<DbtCloudCredentials>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await?
                .map(|c| c.target())
        };
        match target {
            Some(t) => Some((client, t)),
            None if explicit => {
                return Err(CliError::new(format!("credentials `{name}` not found")));
            }
            None => None,
        }
    } else {
        None
    };

    let key = match (args.key.key.clone(), &current) {
        (Some(k), _) => k,
        (None, Some((client, target))) => stored_key(client, target).await?,
        (None, None) => key_or_prompt(
            None,
            ctx,
            "pass --key KEY (or set DBT_CLOUD_API_KEY), or --name of existing credentials",
        )?,
    };
    let host = args
        .dbt
        .host
        .clone()
        .or_else(|| current.as_ref().map(|(_, t)| t.host.clone()));
    let host = parse_host(host.as_deref(), &config)?;
    let list = list_accounts(&host, &key, &config).await?;
    let marked = current.as_ref().map(|(_, t)| t.account_id);
    let mut table = Table::new(&["", "ID", "NAME"]);
    for a in &list {
        let mark = if Some(a.id) == marked { "*" } else { "" };
        table.row(vec![
            mark.into(),
            a.id.to_string(),
            a.name.clone().unwrap_or_default(),
        ]);
    }
    if table.is_empty() {
        ctx.note(format!("The API key can access no account on {host}."))?;
    } else {
        table.write(ctx.out)?;
    }
    Ok(())
}

/// The key stored in the credentials' Secret.
async fn stored_key(client: &kube::Client, target: &CredentialsTarget) -> CliResult<SecretString> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &target.secret_namespace);
    let secret = api.get_opt(&target.secret.name).await?.ok_or_else(|| {
        CliError::new(format!(
            "Secret {}/{} of the credentials not found",
            target.secret_namespace, target.secret.name
        ))
    })?;
    key_from_secret(&secret, target)
        .map(SecretString::from)
        .map_err(|problem| CliError::new(problem.message))
}
