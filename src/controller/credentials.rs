//! Reconciler of `DbtCloudCredentials` and `ClusterDbtCloudCredentials`: reads the referenced
//! Secret (a `get`, never a list or watch), validates the key against dbt Cloud, reports the result
//! in the `Ready` condition and keeps a ready-to-use client in the [`CredentialsRegistry`].
//!
//! Key rotation: the Secret is re-read every `secret_refresh` (default 60 s); a changed key (seen
//! through its fingerprint) is validated at once and replaces the client used by every run and by
//! the poller. A deleted Secret or a rejected key removes the client the same way: from then on
//! nothing uses the old key (runs wait with the credentials' reason). Secrets are read with `get`
//! only (no list/watch permission), so such a change takes effect within `secret_refresh`.
//!
//! Deletion: credentials objects carry no finalizer, so a deleted one is never reconciled. The one
//! watch per kind (shared with the controller through a reflector store) handles it instead:
//! [`on_watch_event`] forgets the object at once and names the runs to re-reconcile, and every
//! lookup checks the object still exists (see [`super::registry`]).

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use super::registry::{CredentialsEntry, CredentialsKey, CredentialsRegistry, LiveCredentials};
use super::{jittered, Context, FIELD_MANAGER};
use crate::crd::conditions::{self, Conditions};
use crate::crd::credentials::{CredentialsStatus, CredentialsTarget};
use crate::crd::job_run::CredentialsKind;
use crate::crd::reasons::{EventNote, Reason};
use crate::crd::{ClusterDbtCloudCredentials, DbtCloudCredentials};
use crate::dbt_cloud::{AccessHost, DbtCloudClient, DbtCloudError};
use crate::{Error, Result};

/// What both credentials kinds have in common for the reconciler.
pub trait CredentialsResource:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// Which kind this is.
    const KIND: CredentialsKind;
    /// Client-building target; `operator_namespace` locates cluster Secrets.
    fn target(&self, operator_namespace: &str) -> CredentialsTarget;
    /// Current status.
    fn credentials_status(&self) -> Option<&CredentialsStatus>;
    /// API handle for status writes.
    fn api_for(&self, client: kube::Client) -> Api<Self>;
}

impl CredentialsResource for DbtCloudCredentials {
    const KIND: CredentialsKind = CredentialsKind::DbtCloudCredentials;
    fn target(&self, _: &str) -> CredentialsTarget {
        DbtCloudCredentials::target(self)
    }
    fn credentials_status(&self) -> Option<&CredentialsStatus> {
        self.status.as_ref()
    }
    fn api_for(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

impl CredentialsResource for ClusterDbtCloudCredentials {
    const KIND: CredentialsKind = CredentialsKind::ClusterDbtCloudCredentials;
    fn target(&self, operator_namespace: &str) -> CredentialsTarget {
        ClusterDbtCloudCredentials::target(self, operator_namespace)
    }
    fn credentials_status(&self) -> Option<&CredentialsStatus> {
        self.status.as_ref()
    }
    fn api_for(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
}

/// Result of checking credentials.
#[derive(Debug)]
struct Assessment {
    reason: Reason,
    message: String,
    /// Only a user change can fix it (as opposed to an outage or rate limit).
    stalled: bool,
    account_name: Option<String>,
    fingerprint: Option<String>,
    validated_at: Option<Timestamp>,
    client: Option<DbtCloudClient>,
}

impl Assessment {
    /// The key validated earlier is still the one in the Secret: keep its Ready state.
    fn still_valid(old: &CredentialsStatus, fingerprint: String, client: DbtCloudClient) -> Self {
        Self {
            reason: Reason::Valid,
            message: conditions::find(&old.conditions, conditions::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
            stalled: false,
            account_name: old.account_name.clone(),
            fingerprint: Some(fingerprint),
            validated_at: old.last_validated_time.as_ref().map(|t| t.0),
            client: Some(client),
        }
    }

    fn failed(reason: Reason, message: String, stalled: bool) -> Self {
        Self {
            reason,
            message,
            stalled,
            account_name: None,
            fingerprint: None,
            validated_at: None,
            client: None,
        }
    }
}

/// A short, non-reversible fingerprint of a key (first 12 hex digits of its SHA-256).
pub fn fingerprint(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Extracts the API key from a Secret, or explains what is wrong with it.
pub fn key_from_secret(
    secret: &Secret,
    target: &CredentialsTarget,
) -> Result<String, (Reason, String)> {
    let name = &target.secret.name;
    let key = &target.secret.key;
    let data = secret.data.clone().unwrap_or_default();
    let Some(value) = data.get(key) else {
        let mut present: Vec<&String> = data.keys().collect();
        present.sort();
        return Err((
            Reason::SecretKeyMissing,
            format!(
                "Secret '{name}' has no key '{key}' (keys present: {}). Add the key, or set spec.apiKeySecretRef.key to the key that holds the API key",
                if present.is_empty() { "none".to_string() } else { present.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ") }
            ),
        ));
    };
    let Ok(text) = std::str::from_utf8(&value.0) else {
        return Err((
            Reason::SecretKeyInvalid,
            format!("The value of key '{key}' in Secret '{name}' is not text; it must hold the dbt Cloud API key as plain text"),
        ));
    };
    let text = text.trim();
    if text.is_empty() {
        return Err((
            Reason::SecretKeyInvalid,
            format!("The value of key '{key}' in Secret '{name}' is empty"),
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            Reason::SecretKeyInvalid,
            format!("The value of key '{key}' in Secret '{name}' contains spaces or control characters; it must hold only the token (no `Token ` prefix, no line breaks)"),
        ));
    }
    Ok(text.to_string())
}

fn explain(
    e: &DbtCloudError,
    account_id: i64,
    accessible: Option<Vec<String>>,
) -> (Reason, String, bool) {
    match e {
        DbtCloudError::Unauthorized { .. } => (
            Reason::Unauthorized,
            format!(
                "{}. Ensure the credentials are correct and unexpired",
                e.to_string().trim_end_matches('.')
            ),
            true,
        ),
        DbtCloudError::Forbidden { .. } | DbtCloudError::NotFound { .. } => {
            let list = accessible
                .map(|a| {
                    if a.is_empty() {
                        "none".to_string()
                    } else {
                        a.join(", ")
                    }
                })
                .map(|a| format!(" Accounts this key can access: {a}."))
                .unwrap_or_default();
            (
                Reason::AccountNotAccessible,
                format!("The key cannot access dbt Cloud account {account_id} (check spec.accountId and the token's permissions).{list}"),
                true,
            )
        }
        DbtCloudError::RateLimited { .. } => {
            (Reason::RateLimited, format!("{e}; will retry"), false)
        }
        e if e.is_retryable() => (
            Reason::Unreachable,
            format!("Cannot reach dbt Cloud: {e}; will retry"),
            false,
        ),
        e => (e.condition_reason(), e.to_string(), true),
    }
}

async fn assess<K: CredentialsResource>(
    obj: &K,
    target: &CredentialsTarget,
    ctx: &Context,
    now: Timestamp,
) -> Assessment {
    let host = match AccessHost::parse(&target.host, &ctx.config.client.allowed_host_suffixes) {
        Ok(h) => h,
        Err(e) => return Assessment::failed(Reason::InvalidHost, format!("spec.host: {e}"), true),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.secret_namespace);
    let secret = match secrets.get_opt(&target.secret.name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Assessment::failed(Reason::SecretNotFound,
                format!(
                    "Secret '{}' not found in namespace '{}'. Create it: kubectl create secret generic {} -n {} --from-literal={}=<dbt Cloud API token>",
                    target.secret.name, target.secret_namespace, target.secret.name, target.secret_namespace, target.secret.key
                ),
                true,
            )
        }
        Err(e) => {
            return Assessment::failed(Reason::SecretUnreadable,
                format!("Cannot read Secret '{}' in namespace '{}': {e}", target.secret.name, target.secret_namespace),
                false,
            )
        }
    };
    let key = match key_from_secret(&secret, target) {
        Ok(k) => k,
        Err((reason, message)) => return Assessment::failed(reason, message, true),
    };
    let fp = fingerprint(&key);
    let client = match DbtCloudClient::new(
        host,
        target.account_id,
        SecretString::from(key),
        ctx.http.clone(),
        ctx.limiters.for_account(&target.host, target.account_id),
        ctx.client_config.clone(),
        ctx.metrics.clone(),
    ) {
        Ok(c) => c,
        Err(e) => {
            let mut a = Assessment::failed(Reason::InvalidCredentials, e.to_string(), true);
            a.fingerprint = Some(fp);
            return a;
        }
    };
    // Skip the dbt Cloud call when this exact key and spec were validated recently.
    let old = obj.credentials_status().cloned().unwrap_or_default();
    let recent = old.last_validated_time.as_ref().is_some_and(|t| {
        now.as_second() - t.0.as_second() < ctx.config.revalidate_every.as_secs() as i64
    });
    if conditions::is_true(&old.conditions, conditions::READY)
        && old.key_fingerprint.as_deref() == Some(fp.as_str())
        && old.observed_generation == obj.meta().generation
        && recent
    {
        return Assessment::still_valid(&old, fp, client);
    }
    match client.get_account().await {
        Ok(account) => {
            let name = account.name.clone();
            Assessment {
                reason: Reason::Valid,
                message: format!(
                    "API key validated for dbt Cloud account {}{} on {}",
                    target.account_id,
                    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(),
                    target.host
                ),
                stalled: false,
                account_name: name,
                fingerprint: Some(fp),
                validated_at: Some(now),
                client: Some(client),
            }
        }
        Err(e) => {
            // A transient failure does not invalidate a key that was valid a moment ago.
            if !e.is_retryable()
                || old.key_fingerprint.as_deref() != Some(fp.as_str())
                || !conditions::is_true(&old.conditions, conditions::READY)
            {
                let accessible = if matches!(
                    e,
                    DbtCloudError::Forbidden { .. } | DbtCloudError::NotFound { .. }
                ) {
                    client.list_accounts().await.ok().map(|accounts| {
                        accounts
                            .iter()
                            .map(|a| format!("{} ({})", a.id, a.name.clone().unwrap_or_default()))
                            .collect()
                    })
                } else {
                    None
                };
                let (reason, message, stalled) = explain(&e, target.account_id, accessible);
                let mut a = Assessment::failed(reason, message, stalled);
                a.fingerprint = Some(fp);
                return a;
            }
            warn!(error = %e, "revalidation failed transiently; keeping the key valid");
            Assessment::still_valid(&old, fp, client)
        }
    }
}

/// Reconciles a namespaced `DbtCloudCredentials`.
pub async fn reconcile_namespaced(
    obj: Arc<DbtCloudCredentials>,
    ctx: Arc<Context>,
) -> Result<Action> {
    reconcile(obj, ctx).await
}

/// Reconciles a `ClusterDbtCloudCredentials`.
pub async fn reconcile_cluster(
    obj: Arc<ClusterDbtCloudCredentials>,
    ctx: Arc<Context>,
) -> Result<Action> {
    reconcile(obj, ctx).await
}

/// Requeue policy after an error (namespaced kind).
pub fn error_policy_namespaced(
    obj: Arc<DbtCloudCredentials>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    error_policy(obj, err, ctx)
}

/// Requeue policy after an error (cluster kind).
pub fn error_policy_cluster(
    obj: Arc<ClusterDbtCloudCredentials>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    error_policy(obj, err, ctx)
}

fn error_policy<K: CredentialsResource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(name = %obj.name_any(), error = %err, "credentials reconcile failed");
    ctx.metrics
        .reconcile_failed(kind_name(K::KIND), err.metric_label());
    Action::requeue(super::backoff(3))
}

fn kind_name(kind: CredentialsKind) -> &'static str {
    CredentialsKey {
        kind,
        namespace: None,
        name: String::new(),
    }
    .kind_name()
}

/// Key of a credentials object in the registry.
pub fn key_of<K: CredentialsResource>(obj: &K) -> CredentialsKey {
    CredentialsKey {
        kind: K::KIND,
        namespace: obj.meta().namespace.clone(),
        name: obj.name_any(),
    }
}

/// Applies one event of a credentials watch to the registry (after the reflector store applied
/// it), and returns the credentials whose runs must be reconciled now:
///
/// * a deleted object leaves the registry (and its metric series) at once;
/// * after a re-list (which reports no deletions), every entry whose object is gone or was
///   replaced leaves it too;
/// * an applied object (a status or spec change) re-reconciles its runs, as a deletion does, so a
///   waiting run resumes and an in-flight run learns at once that its credentials are gone.
///
/// `live` reads the reflector store the event was applied to.
pub fn on_watch_event<K: CredentialsResource>(
    registry: &CredentialsRegistry,
    live: impl Fn(&CredentialsKey) -> Option<LiveCredentials>,
    event: &watcher::Event<K>,
) -> Vec<CredentialsKey> {
    match event {
        watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => vec![key_of(obj)],
        watcher::Event::Delete(obj) => {
            let key = key_of(obj);
            registry.remove_if(&key, obj.meta().uid.as_deref());
            vec![key]
        }
        watcher::Event::InitDone => registry.retain_live(K::KIND, live),
        watcher::Event::Init => Vec::new(),
    }
}

#[instrument(skip_all, fields(kind = kind_name(K::KIND), object = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())))]
async fn reconcile<K: CredentialsResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let _measure = ctx.metrics.measure_reconcile(kind_name(K::KIND));
    let key = key_of(obj.as_ref());
    let ns = obj.namespace().unwrap_or_default();
    if obj.meta().namespace.is_some() && !ctx.watches_namespace(&ns) {
        return Ok(Action::await_change());
    }
    if obj.meta().deletion_timestamp.is_some() {
        // Going away (another finalizer holds it): stop using it now.
        ctx.credentials.remove_if(&key, None);
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let target = obj.target(&ctx.config.operator_namespace);
    let a = assess(obj.as_ref(), &target, &ctx, now).await;
    let ready = a.client.is_some();
    let stored = ctx.credentials.put_if_current(
        key.clone(),
        CredentialsEntry {
            uid: obj.meta().uid.clone().unwrap_or_default(),
            target: target.clone(),
            generation: obj.meta().generation,
            fingerprint: a.fingerprint.clone(),
            client: a.client.clone(),
            reason: a.reason,
            message: a.message.clone(),
            stalled: a.stalled,
        },
        || ctx.stores.live(&key),
    );
    if !stored {
        // Deleted or changed while it was being validated: the watch brings the next version.
        return Ok(Action::await_change());
    }

    let old = obj.credentials_status().cloned().unwrap_or_default();
    let mut status = old.clone();
    let gen = obj.meta().generation;
    status.observed_generation = gen;
    status.account_name = a.account_name.clone().or(if ready {
        old.account_name.clone()
    } else {
        None
    });
    status.key_fingerprint = a.fingerprint.clone();
    status.last_validated_time = a.validated_at.map(Time).or(old.last_validated_time.clone());
    let mut c = Conditions::new(&mut status.conditions, gen, now);
    c.set(conditions::READY, ready, a.reason, &a.message);
    c.set(
        conditions::RECONCILING,
        !ready && !a.stalled,
        a.reason,
        &a.message,
    );
    c.set(
        conditions::STALLED,
        !ready && a.stalled,
        a.reason,
        &a.message,
    );

    if status != old {
        let api = obj.api_for(ctx.client.clone());
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        let was_ready = conditions::find(&old.conditions, conditions::READY)
            .map(|c| (c.status.clone(), c.reason.clone()));
        let now_ready = (conditions::status_str(ready), a.reason.to_string());
        if was_ready.as_ref() != Some(&now_ready) {
            if ready {
                info!(account = target.account_id, "credentials validated");
                ctx.publish(
                    obj.as_ref(),
                    "Validate",
                    &EventNote::normal(Reason::Validated, a.message.clone()),
                )
                .await;
            } else {
                warn!(reason = %a.reason, "credentials not ready");
                ctx.publish(
                    obj.as_ref(),
                    "Validate",
                    &EventNote::warning(a.reason, a.message.clone()),
                )
                .await;
            }
        } else if old.key_fingerprint.is_some() && old.key_fingerprint != status.key_fingerprint {
            ctx.publish(
                obj.as_ref(),
                "Validate",
                &EventNote::normal(
                    Reason::KeyRotated,
                    "A new API key was found in the Secret and validated",
                ),
            )
            .await;
        }
    }
    let requeue = if ready || a.stalled {
        ctx.config.secret_refresh
    } else {
        ctx.config.lifecycle.credentials_retry
    };
    Ok(Action::requeue(jittered(requeue)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;
    use k8s_openapi::ByteString;

    fn target() -> CredentialsTarget {
        CredentialsTarget {
            account_id: 1,
            host: "cloud.getdbt.com".into(),
            secret: SecretKeyRef {
                name: "dbt".into(),
                key: "apiKey".into(),
            },
            secret_namespace: "ns".into(),
        }
    }

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn secret_key_problems_are_explained() {
        let (reason, msg) = key_from_secret(&secret(&[("token", b"x")]), &target()).unwrap_err();
        assert_eq!(reason, "SecretKeyMissing");
        assert!(msg.contains("keys present: token"), "{msg}");
        assert_eq!(
            key_from_secret(&secret(&[("apiKey", b"  ")]), &target())
                .unwrap_err()
                .0,
            "SecretKeyInvalid"
        );
        assert_eq!(
            key_from_secret(&secret(&[("apiKey", &[0xff, 0xfe])]), &target())
                .unwrap_err()
                .0,
            "SecretKeyInvalid"
        );
        assert_eq!(
            key_from_secret(&secret(&[("apiKey", b"Token dbtc_x")]), &target())
                .unwrap_err()
                .0,
            "SecretKeyInvalid"
        );
        assert_eq!(
            key_from_secret(&secret(&[("apiKey", b"dbtc_abc\n")]), &target()).unwrap(),
            "dbtc_abc"
        );
        assert_eq!(
            key_from_secret(&Secret::default(), &target())
                .unwrap_err()
                .0,
            "SecretKeyMissing"
        );
    }

    #[test]
    fn fingerprint_is_stable_short_and_not_the_key() {
        let f = fingerprint("dbtc_secret_value");
        assert_eq!(f, fingerprint("dbtc_secret_value"));
        assert_ne!(f, fingerprint("dbtc_other"));
        assert!(!f.contains("secret_value"));
        assert_eq!(f.len(), "sha256:".len() + 12);
    }
}
