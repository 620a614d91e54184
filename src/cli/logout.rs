//! `logout`: delete the credentials `login` created, and what `login` wrote into their Secret: the
//! whole Secret when it holds only the key `login` wrote, else only that key. Nothing without the
//! CLI's managed-by label is touched, and the Secret is changed only in the version checked.

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

use super::error::{is_not_found, CliError, CliResult};
use super::objects::{is_managed, DEFAULT_CREDENTIALS_NAME, DEFAULT_OPERATOR_NAMESPACE};
use super::terminal::Ctx;
use crate::crd::credentials::DEFAULT_SECRET_KEY;
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
    let plan = SecretPlan::of(secrets.get_opt(&target.secret.name).await?);
    let secret_name = format!("{}/{}", target.secret_namespace, target.secret.name);
    let what = format!(
        "{describe} (account {}, host {}){}",
        target.account_id,
        target.host,
        match &plan {
            SecretPlan::Delete { .. } => format!(" and Secret {secret_name}"),
            SecretPlan::RemoveKey { .. } => format!(
                " and key {DEFAULT_SECRET_KEY} of Secret {secret_name} (its other keys stay)"
            ),
            _ => String::new(),
        }
    );
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
    delete_credentials(&client, &args, &ns, meta.uid.clone()).await?;
    ctx.note(format!("Deleted {describe}."))?;
    clean_secret(&secrets, plan, &target, ctx).await
}

/// What `logout` does with the credentials' Secret.
#[derive(Debug)]
enum SecretPlan {
    /// There is no such Secret.
    Absent,
    /// Not created by the CLI: kept.
    Foreign,
    /// Created by the CLI and holding only the key `login` writes: deleted, if still this version.
    Delete {
        version: Option<String>,
        uid: Option<String>,
    },
    /// Created by the CLI but also holding keys `login` did not write: only `login`'s key is
    /// removed, if still this version.
    RemoveKey {
        version: String,
        others: Vec<String>,
    },
    /// Created by the CLI but no longer holding `login`'s key: kept.
    NothingOfOurs,
}

impl SecretPlan {
    fn of(secret: Option<Secret>) -> Self {
        let Some(secret) = secret else {
            return SecretPlan::Absent;
        };
        if !is_managed(&secret.metadata) {
            return SecretPlan::Foreign;
        }
        let keys: Vec<String> = secret
            .data
            .iter()
            .flat_map(|d| d.keys())
            .chain(secret.string_data.iter().flat_map(|d| d.keys()))
            .cloned()
            .collect();
        if !keys.iter().any(|k| k == DEFAULT_SECRET_KEY) {
            return SecretPlan::NothingOfOurs;
        }
        let others: Vec<String> = keys
            .into_iter()
            .filter(|k| k != DEFAULT_SECRET_KEY)
            .collect();
        match (others.is_empty(), secret.metadata.resource_version) {
            (true, version) => SecretPlan::Delete {
                version,
                uid: secret.metadata.uid,
            },
            (false, Some(version)) => SecretPlan::RemoveKey { version, others },
            (false, None) => SecretPlan::NothingOfOurs,
        }
    }
}

/// Deletes the credentials checked above (their uid as precondition: a same-named object created
/// since, perhaps not by the CLI, is left alone).
async fn delete_credentials(
    client: &kube::Client,
    args: &LogoutArgs,
    ns: &str,
    uid: Option<String>,
) -> CliResult {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let result = if args.cluster {
        Api::<ClusterDbtCloudCredentials>::all(client.clone())
            .delete(&args.name, &params)
            .await
            .map(|_| ())
    } else {
        Api::<DbtCloudCredentials>::namespaced(client.clone(), ns)
            .delete(&args.name, &params)
            .await
            .map(|_| ())
    };
    match result {
        Err(e) if !is_not_found(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

async fn clean_secret(
    secrets: &Api<Secret>,
    plan: SecretPlan,
    target: &CredentialsTarget,
    ctx: &mut Ctx<'_>,
) -> CliResult {
    let name = format!("{}/{}", target.secret_namespace, target.secret.name);
    let changed_meanwhile =
        |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
    match plan {
        SecretPlan::Absent => Ok(()),
        SecretPlan::Foreign => ctx.note(format!(
            "Kept Secret {name}: it was not created by this CLI (no managed-by label)."
        )),
        SecretPlan::NothingOfOurs => ctx.note(format!(
            "Kept Secret {name}: it no longer holds the key {DEFAULT_SECRET_KEY} that login wrote."
        )),
        SecretPlan::Delete { version, uid } => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: version,
                    uid,
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(&target.secret.name, &params).await {
                Ok(_) => ctx.note(format!("Deleted Secret {name}.")),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) if changed_meanwhile(&e) => ctx.note(format!(
                    "Kept Secret {name}: it changed while logout ran; delete it with kubectl if \
                     it is no longer needed."
                )),
                Err(e) => Err(e.into()),
            }
        }
        SecretPlan::RemoveKey { version, others } => {
            let pointer = format!(
                "/data/{}",
                DEFAULT_SECRET_KEY.replace('~', "~0").replace('/', "~1")
            );
            let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                {"op": "remove", "path": pointer},
            ]))
            .map_err(|e| CliError::new(format!("cannot build the patch: {e}")))?;
            match secrets
                .patch(
                    &target.secret.name,
                    &PatchParams::default(),
                    &Patch::Json::<()>(patch),
                )
                .await
            {
                Ok(_) => ctx.note(format!(
                    "Removed key {DEFAULT_SECRET_KEY} from Secret {name} and kept the Secret: it \
                     also holds keys login did not write ({}).",
                    others.join(", ")
                )),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) if changed_meanwhile(&e) => ctx.note(format!(
                    "Kept Secret {name} as it is: it changed while logout ran."
                )),
                Err(e) => Err(e.into()),
            }
        }
    }
}
