//! `logout`: delete the credentials `login` created, and their Secret when the CLI created it.

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};

use super::common::{
    is_managed, is_not_found, CliError, CliResult, Ctx, DEFAULT_CREDENTIALS_NAME,
    DEFAULT_OPERATOR_NAMESPACE,
};
use crate::crd::{ClusterDbtCloudCredentials, CredentialsTarget, DbtCloudCredentials};

/// Flags of `logout`.
#[derive(Debug, Clone, Args)]
pub struct LogoutArgs {
    /// Name of the credentials object.
    #[arg(long, default_value = DEFAULT_CREDENTIALS_NAME)]
    pub name: String,
    /// Namespace of the credentials (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Delete ClusterDbtCloudCredentials (and their Secret in --operator-namespace).
    #[arg(long)]
    pub cluster: bool,
    /// The operator's namespace, where Secrets of cluster-wide credentials live.
    #[arg(long, default_value = DEFAULT_OPERATOR_NAMESPACE)]
    pub operator_namespace: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Runs `logout`.
pub async fn logout(args: LogoutArgs, client: kube::Client, ctx: &mut Ctx<'_>) -> CliResult {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let (describe, meta, target) = if args.cluster {
        let api: Api<ClusterDbtCloudCredentials> = Api::all(client.clone());
        let c = api.get_opt(&args.name).await?.ok_or_else(|| {
            CliError::new(format!(
                "ClusterDbtCloudCredentials {} not found",
                args.name
            ))
        })?;
        (
            format!("ClusterDbtCloudCredentials {}", args.name),
            c.metadata.clone(),
            c.target(&args.operator_namespace),
        )
    } else {
        let api: Api<DbtCloudCredentials> = Api::namespaced(client.clone(), &ns);
        let c = api.get_opt(&args.name).await?.ok_or_else(|| {
            CliError::new(format!("DbtCloudCredentials {ns}/{} not found", args.name))
        })?;
        (
            format!("DbtCloudCredentials {ns}/{}", args.name),
            c.metadata.clone(),
            c.target(),
        )
    };
    if !is_managed(&meta) {
        return Err(CliError::new(format!(
            "{describe} was not created by this CLI (no label app.kubernetes.io/managed-by: \
             dbt-cloud-operator-cli); nothing was deleted. Delete it with kubectl if you mean to."
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.secret_namespace);
    let secret = secrets.get_metadata_opt(&target.secret.name).await?;
    let secret_managed = secret.as_ref().is_some_and(|s| is_managed(&s.metadata));
    let what = if secret_managed {
        format!(
            "{describe} (account {}, host {}) and Secret {}/{}",
            target.account_id, target.host, target.secret_namespace, target.secret.name
        )
    } else {
        format!(
            "{describe} (account {}, host {})",
            target.account_id, target.host
        )
    };
    if !args.yes {
        if !ctx.interactive {
            return Err(CliError::new(format!(
                "would delete {what}; pass --yes to confirm without a terminal"
            )));
        }
        if !ctx.confirm(&format!("Delete {what}?"))? {
            return Err(CliError::new("nothing was deleted"));
        }
    }
    delete_credentials(&client, &args, &ns).await?;
    ctx.note(format!("Deleted {describe}."))?;
    report_secret(&secrets, secret.is_some(), secret_managed, &target, ctx).await
}

async fn delete_credentials(client: &kube::Client, args: &LogoutArgs, ns: &str) -> CliResult {
    let result = if args.cluster {
        Api::<ClusterDbtCloudCredentials>::all(client.clone())
            .delete(&args.name, &DeleteParams::default())
            .await
            .map(|_| ())
    } else {
        Api::<DbtCloudCredentials>::namespaced(client.clone(), ns)
            .delete(&args.name, &DeleteParams::default())
            .await
            .map(|_| ())
    };
    match result {
        Err(e) if !is_not_found(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

async fn report_secret(
    secrets: &Api<Secret>,
    exists: bool,
    managed: bool,
    target: &CredentialsTarget,
    ctx: &mut Ctx<'_>,
) -> CliResult {
    let name = format!("{}/{}", target.secret_namespace, target.secret.name);
    if !exists {
        return Ok(());
    }
    if !managed {
        return ctx.note(format!(
            "Kept Secret {name}: it was not created by this CLI (no managed-by label)."
        ));
    }
    match secrets
        .delete(&target.secret.name, &DeleteParams::default())
        .await
    {
        Ok(_) => ctx.note(format!("Deleted Secret {name}.")),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
