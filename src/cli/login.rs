//! `login`: validate a dbt Cloud API key, pick the account, and store the key as a Secret plus a
//! `DbtCloudCredentials` (or `ClusterDbtCloudCredentials`) the operator uses.
//!
//! `login` only touches what it created: both objects carry the label
//! `app.kubernetes.io/managed-by: dbt-cloud-operator-cli`; an object of the same name without it is
//! never overwritten (not even with `--force`); a missing object is created (so one that appears
//! meanwhile is not overwritten), and the CLI's own objects are updated with their
//! `resourceVersion` as precondition.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use secrecy::{ExposeSecret, SecretString};

use super::access::{account_label, key_or_prompt, list_accounts, parse_host, DbtArgs, KeyArgs};
use super::error::{is_not_found, CliError, CliResult};
use super::objects::{
    check_name, is_managed, DEFAULT_CREDENTIALS_NAME, DEFAULT_OPERATOR_NAMESPACE, FIELD_MANAGER,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use super::terminal::Ctx;
use crate::crd::credentials::{AllowedNamespaces, DEFAULT_SECRET_KEY};
use crate::crd::{
    ClusterDbtCloudCredentials, ClusterDbtCloudCredentialsSpec, DbtCloudCredentials,
    DbtCloudCredentialsSpec, SecretKeyRef,
};
use crate::dbt_cloud::{AccessHost, Account, ClientConfig};

/// Reasons of `Ready=False` that waiting longer will not fix.
const FINAL_REASONS: &[&str] = &[
    "Unauthorized",
    "Forbidden",
    "AccountNotAccessible",
    "SecretNotFound",
    "SecretKeyMissing",
    "SecretKeyInvalid",
    "InvalidHost",
];

/// Flags of `login`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// dbt Cloud account id; required without a terminal when the key can access several.
    #[arg(long)]
    pub account: Option<i64>,
    #[command(flatten)]
    pub dbt: DbtArgs,
    /// Namespace of the DbtCloudCredentials and its Secret (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Name of the credentials object (DbtCloudJobRuns refer to it in spec.credentialsRef.name).
    #[arg(long, default_value = DEFAULT_CREDENTIALS_NAME)]
    pub name: String,
    /// Name of the Secret holding the key (default: `<name>-api-key`).
    #[arg(long)]
    pub secret_name: Option<String>,
    /// Create cluster-wide ClusterDbtCloudCredentials (Secret in --operator-namespace).
    #[arg(long)]
    pub cluster: bool,
    /// The operator's namespace, where Secrets of cluster-wide credentials live.
    #[arg(long, default_value = DEFAULT_OPERATOR_NAMESPACE)]
    pub operator_namespace: String,
    /// With --cluster: a namespace whose DbtCloudJobRuns may use the credentials. Repeatable.
    #[arg(
        long = "allow-namespace",
        value_name = "NAMESPACE",
        requires = "cluster"
    )]
    pub allow_namespaces: Vec<String>,
    /// Print the Secret and credentials as YAML instead of applying them (writes nothing).
    #[arg(long)]
    pub dry_run: bool,
    /// Replace existing credentials for the account without asking.
    #[arg(long)]
    pub force: bool,
    /// Wait until the operator reports the credentials Ready (bounded by --wait-timeout-seconds).
    #[arg(long)]
    pub wait: bool,
    /// Longest wait of --wait.
    #[arg(long, default_value_t = 120)]
    pub wait_timeout_seconds: u64,
}

/// What `login` is about to write.
struct Plan {
    account: Account,
    host: AccessHost,
    secret: Secret,
    credentials: Credentials,
}

enum Credentials {
    Namespaced(DbtCloudCredentials),
    Cluster(ClusterDbtCloudCredentials),
}

impl Credentials {
    fn describe(&self) -> String {
        match self {
            Credentials::Namespaced(c) => format!(
                "DbtCloudCredentials {}/{}",
                c.metadata.namespace.as_deref().unwrap_or_default(),
                c.metadata.name.as_deref().unwrap_or_default()
            ),
            Credentials::Cluster(c) => format!(
                "ClusterDbtCloudCredentials {}",
                c.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())])
}

/// Runs `login`. `kube` is needed unless `--dry-run` (then it is only read, best effort, to warn
/// about existing credentials).
pub async fn login(
    args: LoginArgs,
    kube: Result<kube::Client, String>,
    config: ClientConfig,
    ctx: &mut Ctx<'_>,
) -> CliResult {
    let host = parse_host(args.dbt.host.as_deref(), &config)?;
    check_name("--name", &args.name)?;
    let secret_name = args
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-api-key", args.name));
    check_name("--secret-name", &secret_name)?;
    if args.cluster {
        check_name("--operator-namespace", &args.operator_namespace)?;
        for ns in &args.allow_namespaces {
            check_name("--allow-namespace", ns)?;
        }
    }
    if !args.dry_run {
        if let Err(e) = &kube {
            return Err(CliError::new(format!(
                "{e}\n(use --dry-run to print the objects instead of applying them)"
            )));
        }
    }
    if config.insecure_base_url_override.is_some() {
        ctx.note("DEVELOPMENT MODE: dbt Cloud requests go to --dev-dbt-cloud-base-url")?;
    }

    let key = key_or_prompt(
        args.key.key.clone(),
        ctx,
        "pass --key KEY (or set DBT_CLOUD_API_KEY) and --account ID to log in non-interactively",
    )?;

    // Validate before writing anything.
    let accounts = list_accounts(&host, &key, &config).await?;
    let account = choose_account(&accounts, args.account, &host, ctx)?;
    ctx.note(format!(
        "Authenticated with dbt Cloud at {host}: account {}.",
        account_label(&account)
    ))?;

    let namespace = match (&args.namespace, &kube) {
        (Some(ns), _) => ns.clone(),
        (None, Ok(client)) => client.default_namespace().to_string(),
        (None, Err(_)) => "default".to_string(),
    };
    check_name("--namespace", &namespace)?;
    let plan = build(&args, account, host, &namespace, &secret_name, &key);

    // Existing credentials for this account?
    let mut found = Existing::default();
    match &kube {
        Ok(client) if args.dry_run => {
            let check = tokio::time::timeout(
                Duration::from_secs(10),
                existing(client, &args, &plan, &namespace),
            )
            .await;
            match check {
                Ok(Ok(found)) => {
                    confirm_replace(&found, &args, ctx)?;
                }
                Ok(Err(e)) => ctx.note(format!(
                    "note: could not check the cluster for existing credentials: {e}"
                ))?,
                Err(_) => ctx.note(
                    "note: could not check the cluster for existing credentials: timed out",
                )?,
            }
        }
        Ok(client) => {
            found = existing(client, &args, &plan, &namespace).await?;
            confirm_replace(&found, &args, ctx)?;
        }
        Err(_) => {}
    }

    if args.dry_run {
        write_yaml(&plan, ctx)?;
        ctx.note("Dry run: nothing was written to the cluster.")?;
        return Ok(());
    }
    let client = kube.expect("checked above");
    apply(&client, &plan, &namespace, &found).await?;
    ctx.note(format!(
        "Stored the API key in Secret {}/{} and applied {} for account {} on {}.",
        plan.secret
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default(),
        plan.secret.metadata.name.as_deref().unwrap_or_default(),
        plan.credentials.describe(),
        account_label(&plan.account),
        plan.host,
    ))?;
    let kind_hint = if args.cluster {
        ", kind: ClusterDbtCloudCredentials"
    } else {
        ""
    };
    ctx.note(format!(
        "DbtCloudJobRuns use it with `credentialsRef: {{name: {}{kind_hint}}}`.",
        args.name
    ))?;
    if args.wait {
        wait_ready(&client, &args, &namespace, ctx).await?;
    }
    Ok(())
}

fn choose_account(
    accounts: &[Account],
    wanted: Option<i64>,
    host: &AccessHost,
    ctx: &mut Ctx<'_>,
) -> CliResult<Account> {
    let list = || {
        accounts
            .iter()
            .map(|a| format!("  {}  {}", a.id, a.name.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if accounts.is_empty() {
        return Err(CliError::new(format!(
            "the API key is valid but can access no dbt Cloud account on {host}; check the \
             token's permissions and --host"
        )));
    }
    if let Some(id) = wanted {
        return accounts
            .iter()
            .find(|a| a.id == id)
            .cloned()
            .ok_or_else(|| {
                CliError::new(format!(
                    "account {id} is not accessible with this API key on {host}. Accounts it can \
                 access:\n{}",
                    list()
                ))
            });
    }
    if accounts.len() == 1 {
        return Ok(accounts[0].clone());
    }
    if !ctx.interactive {
        return Err(CliError::new(format!(
            "the API key can access {} accounts and there is no terminal to choose on: pass \
             --key and --account ID to log in non-interactively. Accounts:\n{}",
            accounts.len(),
            list()
        )));
    }
    let items: Vec<String> = accounts
        .iter()
        .map(|a| format!("{}  {}", a.id, a.name.as_deref().unwrap_or("")))
        .collect();
    let i = ctx.choose(
        &format!(
            "The API key can access {} dbt Cloud accounts:",
            accounts.len()
        ),
        &items,
    )?;
    Ok(accounts[i].clone())
}

fn build(
    args: &LoginArgs,
    account: Account,
    host: AccessHost,
    namespace: &str,
    secret_name: &str,
    key: &SecretString,
) -> Plan {
    let secret_namespace = if args.cluster {
        args.operator_namespace.clone()
    } else {
        namespace.to_string()
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_string()),
            namespace: Some(secret_namespace),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            DEFAULT_SECRET_KEY.to_string(),
            ByteString(key.expose_secret().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let secret_ref = SecretKeyRef {
        name: secret_name.to_string(),
        key: DEFAULT_SECRET_KEY.to_string(),
    };
    let meta = |ns: Option<String>| ObjectMeta {
        name: Some(args.name.clone()),
        namespace: ns,
        labels: Some(labels()),
        ..ObjectMeta::default()
    };
    let credentials = if args.cluster {
        let mut c = ClusterDbtCloudCredentials::new(
            &args.name,
            ClusterDbtCloudCredentialsSpec {
                account_id: account.id,
                host: host.to_string(),
                api_key_secret_ref: secret_ref,
                allowed_namespaces: AllowedNamespaces {
                    names: args.allow_namespaces.clone(),
                    selector: None,
                },
            },
        );
        c.metadata = meta(None);
        Credentials::Cluster(c)
    } else {
        let mut c = DbtCloudCredentials::new(
            &args.name,
            DbtCloudCredentialsSpec {
                account_id: account.id,
                host: host.to_string(),
                api_key_secret_ref: secret_ref,
            },
        );
        c.metadata = meta(Some(namespace.to_string()));
        Credentials::Namespaced(c)
    };
    Plan {
        account,
        host,
        secret,
        credentials,
    }
}

/// What `login` found where it is about to write.
#[derive(Debug, Default)]
struct Existing {
    /// Objects it would replace or duplicate (replacing needs `--force` or a yes).
    replaced: Vec<String>,
    /// Objects of the same name it did not create: never overwritten, whatever the flags.
    foreign: Vec<String>,
    /// `resourceVersion` of the CLI's own Secret, when it exists (the update's precondition);
    /// `None`: the Secret does not exist and is created.
    secret_version: Option<String>,
    /// Likewise for the CLI's own credentials object of the same name.
    credentials_version: Option<String>,
}

/// Existing objects that `login` would replace, duplicate, or must not touch.
async fn existing(
    client: &kube::Client,
    args: &LoginArgs,
    plan: &Plan,
    namespace: &str,
) -> CliResult<Existing> {
    let mut found = Existing::default();
    let account = plan.account.id;
    let host = plan.host.as_str();
    let mut same_name = |meta: &ObjectMeta, what: String, account_id: i64, on_host: &str| {
        let described = format!("{what} (account {account_id}, host {on_host})");
        if is_managed(meta) {
            found.replaced.push(format!("{described} already exists"));
            found.credentials_version = meta.resource_version.clone();
        } else {
            found.foreign.push(format!(
                "{described} exists and was not created by this CLI"
            ));
        }
    };
    let mut others = Vec::new();
    match &plan.credentials {
        Credentials::Namespaced(_) => {
            let api: Api<DbtCloudCredentials> = Api::namespaced(client.clone(), namespace);
            if let Some(c) = api.get_opt(&args.name).await? {
                same_name(
                    &c.metadata,
                    format!("DbtCloudCredentials {namespace}/{}", args.name),
                    c.spec.account_id,
                    &c.spec.host,
                );
            }
            for c in api.list(&ListParams::default()).await?.items {
                let name = c.metadata.name.clone().unwrap_or_default();
                if name != args.name && c.spec.account_id == account && c.spec.host == host {
                    others.push(format!(
                        "DbtCloudCredentials {namespace}/{name} already holds credentials for \
                         account {account} on {host}"
                    ));
                }
            }
        }
        Credentials::Cluster(_) => {
            let api: Api<ClusterDbtCloudCredentials> = Api::all(client.clone());
            if let Some(c) = api.get_opt(&args.name).await? {
                same_name(
                    &c.metadata,
                    format!("ClusterDbtCloudCredentials {}", args.name),
                    c.spec.account_id,
                    &c.spec.host,
                );
            }
            for c in api.list(&ListParams::default()).await?.items {
                let name = c.metadata.name.clone().unwrap_or_default();
                if name != args.name && c.spec.account_id == account && c.spec.host == host {
                    others.push(format!(
                        "ClusterDbtCloudCredentials {name} already holds credentials for \
                         account {account} on {host}"
                    ));
                }
            }
        }
    }
    found.replaced.extend(others);
    let secret_ns = plan.secret.metadata.namespace.clone().unwrap_or_default();
    let secret_name = plan.secret.metadata.name.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &secret_ns);
    match secrets.get_metadata_opt(&secret_name).await {
        Ok(Some(s)) if is_managed(&s.metadata) => {
            found.secret_version = s.metadata.resource_version.clone();
        }
        Ok(Some(_)) => found.foreign.push(format!(
            "Secret {secret_ns}/{secret_name} already exists and was not created by this CLI"
        )),
        Ok(None) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(found)
}

fn confirm_replace(found: &Existing, args: &LoginArgs, ctx: &mut Ctx<'_>) -> CliResult {
    for f in found.foreign.iter().chain(&found.replaced) {
        ctx.note(format!("{f}."))?;
    }
    if !found.foreign.is_empty() {
        return Err(CliError::new(format!(
            "login never overwrites objects not created by this CLI (without the label \
             {MANAGED_BY_LABEL}: {MANAGED_BY_VALUE}), not even with --force: choose another \
             --name or --secret-name, or delete them with kubectl first if they are yours to \
             replace. Nothing was changed."
        )));
    }
    if found.replaced.is_empty() {
        return Ok(());
    }
    if args.force {
        ctx.note("--force: replacing.")?;
        return Ok(());
    }
    if !ctx.interactive {
        return Err(CliError::new(
            "credentials for this account already exist; pass --force to replace them \
             (nothing was changed)",
        ));
    }
    if ctx.confirm("Replace them?")? {
        Ok(())
    } else {
        Err(CliError::new("not replaced; nothing was changed"))
    }
}

fn write_yaml(plan: &Plan, ctx: &mut Ctx<'_>) -> CliResult {
    let yaml = |v: Result<String, serde_yaml::Error>| {
        v.map_err(|e| CliError::new(format!("cannot render YAML: {e}")))
    };
    let secret = yaml(serde_yaml::to_string(&plan.secret))?;
    let credentials = match &plan.credentials {
        Credentials::Namespaced(c) => yaml(serde_yaml::to_string(c))?,
        Credentials::Cluster(c) => yaml(serde_yaml::to_string(c))?,
    };
    write!(ctx.out, "---\n{secret}---\n{credentials}")?;
    ctx.out.flush()?;
    Ok(())
}

/// Writes one object: created when `version` is `None` (so an object someone else created in the
/// meantime is never overwritten: 409), else updated by server-side apply with `version` as
/// precondition (so it is still the CLI's own object checked above).
async fn write<K>(api: &Api<K>, obj: &K, version: Option<&str>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    match version {
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PostParams::default()
            };
            api.create(&params, obj).await.map(|_| ())
        }
        Some(rv) => {
            let mut obj = obj.clone();
            obj.meta_mut().resource_version = Some(rv.to_string());
            // The user confirmed (or passed --force): take over fields other managers own.
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&name, &params, &Patch::Apply(&obj))
                .await
                .map(|_| ())
        }
    }
}

/// The message of a failed write; a conflict means someone changed the cluster meanwhile.
fn write_error(what: &str, e: kube::Error) -> CliError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => CliError::new(format!(
            "{what} was created or changed by someone else while login ran; it was not \
             overwritten. Run login again"
        )),
        _ => CliError::new(format!("cannot write {what}: {}", CliError::from(e))),
    }
}

async fn apply(client: &kube::Client, plan: &Plan, ns: &str, found: &Existing) -> CliResult {
    let secret_ns = plan.secret.metadata.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &secret_ns);
    write(&secrets, &plan.secret, found.secret_version.as_deref())
        .await
        .map_err(|e| {
            write_error(
                &format!(
                    "the Secret {secret_ns}/{}",
                    plan.secret.metadata.name.as_deref().unwrap_or_default()
                ),
                e,
            )
        })?;
    let version = found.credentials_version.as_deref();
    let result = match &plan.credentials {
        Credentials::Namespaced(c) => {
            write(
                &Api::<DbtCloudCredentials>::namespaced(client.clone(), ns),
                c,
                version,
            )
            .await
        }
        Credentials::Cluster(c) => {
            write(
                &Api::<ClusterDbtCloudCredentials>::all(client.clone()),
                c,
                version,
            )
            .await
        }
    };
    result.map_err(|e| match &e {
        kube::Error::Api(s) if s.code == 409 => write_error(&plan.credentials.describe(), e),
        _ => CliError::new(format!(
            "cannot write {}: {} (is the CRD installed? `dbt-cloud-operator crds | kubectl apply -f -`)",
            plan.credentials.describe(),
            CliError::from(e)
        )),
    })
}

/// Ready condition (status, reason, message) if the status describes the current generation.
fn ready_of(
    generation: Option<i64>,
    status: Option<&crate::crd::CredentialsStatus>,
) -> Option<(String, String, String)> {
    let status = status?;
    if let (Some(g), Some(o)) = (generation, status.observed_generation) {
        if o < g {
            return None;
        }
    }
    status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::crd::conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_ready(
    client: &kube::Client,
    args: &LoginArgs,
    ns: &str,
    ctx: &mut Ctx<'_>,
) -> CliResult {
    ctx.note(format!(
        "Waiting up to {}s for the operator to report Ready...",
        args.wait_timeout_seconds
    ))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_timeout_seconds);
    let mut last = None;
    loop {
        let ready = if args.cluster {
            let api: Api<ClusterDbtCloudCredentials> = Api::all(client.clone());
            api.get_opt(&args.name)
                .await?
                .and_then(|c| ready_of(c.metadata.generation, c.status.as_ref()))
        } else {
            let api: Api<DbtCloudCredentials> = Api::namespaced(client.clone(), ns);
            api.get_opt(&args.name)
                .await?
                .and_then(|c| ready_of(c.metadata.generation, c.status.as_ref()))
        };
        if let Some((status, reason, message)) = &ready {
            if status == "True" {
                ctx.note(format!("Ready=True ({reason}): {message}"))?;
                return Ok(());
            }
            if FINAL_REASONS.contains(&reason.as_str()) {
                return Err(CliError::new(format!("Ready=False ({reason}): {message}")));
            }
        }
        last = ready.or(last);
        if tokio::time::Instant::now() >= deadline {
            let detail = match last {
                Some((s, r, m)) => format!("last Ready={s} ({r}): {m}"),
                None => "the operator has not reported on them yet; is it running?".into(),
            };
            return Err(CliError::new(format!(
                "the credentials were written but are not Ready after {}s: {detail}",
                args.wait_timeout_seconds
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
