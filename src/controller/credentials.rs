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
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use super::credentials_policy::{self as policy, CallFailure, FailureKind};
pub use super::credentials_policy::{key_from_secret, SecretProblem};
use super::registry::{CredentialsEntry, CredentialsKey, CredentialsRegistry, LiveCredentials};
use super::{jittered, Context, FIELD_MANAGER};
use crate::crd::credentials::{CredentialsStatus, CredentialsTarget};
use crate::crd::job_run::CredentialsKind;
use crate::crd::reasons::{EventAction, Reason};
use crate::crd::{ClusterDbtCloudCredentials, DbtCloudCredentials};
use crate::dbt_cloud::{AccessHost, DbtCloudClient, DbtCloudError};
use crate::{Error, InStage, Result, Stage};

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

/// What a failed call to dbt Cloud means to the credentials policy.
fn call_failure(e: &DbtCloudError) -> CallFailure {
    let kind = match e {
        DbtCloudError::Unauthorized { .. } => FailureKind::Unauthorized,
        DbtCloudError::Forbidden { .. } | DbtCloudError::NotFound { .. } => FailureKind::NoAccess,
        DbtCloudError::RateLimited { .. } => FailureKind::RateLimited,
        e if e.is_retryable() => FailureKind::Unreachable,
        e => FailureKind::Other(e.condition_reason()),
    };
    CallFailure {
        kind,
        error: e.to_string(),
    }
}

/// Gathers what [`policy::assess`] needs (host check, Secret, key, dbt Cloud's answer) and returns
/// its assessment, with a client when the credentials are usable.
async fn assess(
    facts: &policy::Facts<'_>,
    ctx: &Context,
) -> (policy::Assessment, Option<DbtCloudClient>) {
    let (observed, client) = observe(facts, ctx).await;
    if let policy::Observed::Key {
        validation: policy::Validation::Failed { failure, .. },
        fingerprint,
    } = &observed
    {
        if policy::keeps_valid(facts, fingerprint, failure) {
            warn!(error = %failure.error, "revalidation failed transiently; keeping the key valid");
        }
    }
    let a = policy::assess(facts, &observed);
    let client = client.filter(|_| a.ready);
    (a, client)
}

/// The IO of an assessment: reads the Secret, builds a client, asks dbt Cloud (unless the key was
/// validated recently).
async fn observe(
    facts: &policy::Facts<'_>,
    ctx: &Context,
) -> (policy::Observed, Option<DbtCloudClient>) {
    use policy::Observed;
    let target = facts.target;
    let host = match AccessHost::parse(&target.host, &ctx.config.client.allowed_host_suffixes) {
        Ok(h) => h,
        Err(e) => return (Observed::InvalidHost(e.to_string()), None),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.secret_namespace);
    let secret = match secrets.get_opt(&target.secret.name).await {
        Ok(Some(s)) => s,
        Ok(None) => return (Observed::SecretMissing, None),
        Err(e) => return (Observed::SecretUnreadable(e.to_string()), None),
    };
    let key = match key_from_secret(&secret, target) {
        Ok(k) => k,
        Err(problem) => return (Observed::BadKey(problem), None),
    };
    let fingerprint = fingerprint(&key);
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
            return (
                Observed::InvalidClient {
                    fingerprint,
                    error: e.to_string(),
                },
                None,
            )
        }
    };
    let validation = if !policy::needs_validation(facts, &fingerprint, ctx.config.revalidate_every)
    {
        policy::Validation::Recent
    } else {
        match client.get_account().await {
            Ok(account) => policy::Validation::Valid {
                account_name: account.name,
            },
            Err(e) => {
                let failure = call_failure(&e);
                let accessible = if policy::wants_accessible_accounts(&failure)
                    && !policy::keeps_valid(facts, &fingerprint, &failure)
                {
                    client.list_accounts().await.ok().map(|accounts| {
                        accounts
                            .iter()
                            .map(|a| format!("{} ({})", a.id, a.name.clone().unwrap_or_default()))
                            .collect()
                    })
                } else {
                    None
                };
                policy::Validation::Failed {
                    failure,
                    accessible,
                }
            }
        }
    };
    (
        Observed::Key {
            fingerprint,
            validation,
        },
        Some(client),
    )
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
    ctx.report_failure(obj, err);
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
    let old = obj.credentials_status().cloned().unwrap_or_default();
    let facts = policy::Facts {
        target: &target,
        old: &old,
        generation: obj.meta().generation,
        now,
    };
    let (a, client) = assess(&facts, &ctx).await;
    let stored = ctx.credentials.put_if_current(
        key.clone(),
        CredentialsEntry {
            uid: obj.meta().uid.clone().unwrap_or_default(),
            target: target.clone(),
            generation: obj.meta().generation,
            fingerprint: a.fingerprint.clone(),
            client,
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

    let status = policy::status_for(&facts, &a);
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
        .await
        .in_stage(Stage::WriteStatus)?;
        if let Some(event) = policy::event_for(&old, &status, &a) {
            match event.reason {
                Reason::Validated => info!(account = target.account_id, "credentials validated"),
                Reason::KeyRotated => info!("credentials use a new key"),
                reason => warn!(%reason, "credentials not ready"),
            }
            ctx.publish(obj.as_ref(), EventAction::Validate, &event)
                .await;
        }
    }
    let requeue = policy::requeue_after(
        &a,
        ctx.config.secret_refresh,
        ctx.config.lifecycle.credentials_retry,
    );
    Ok(Action::requeue(jittered(requeue)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_short_and_not_the_key() {
        let f = fingerprint("dbtc_secret_value");
        assert_eq!(f, fingerprint("dbtc_secret_value"));
        assert_ne!(f, fingerprint("dbtc_other"));
        assert!(!f.contains("secret_value"));
        assert_eq!(f.len(), "sha256:".len() + 12);
    }
}
