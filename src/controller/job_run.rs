//! Reconciler of `DbtCloudJobRun`: the IO shell around [`lifecycle::decide`]. It gathers what the
//! lifecycle asks for (credentials, job lookup, run state from the shared poller, run details),
//! performs the effects (trigger with a recorded intent, cancel, delete) and writes status with
//! server-side apply, only when it changed.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::lifecycle::{
    self, after_start_failed, after_start_settled, Cleanup, CredentialsState, DeletionObservation,
    EventNote, FailedStep, JobResolution, Observation, PendingSearch, Requeue, RunDetails,
    StartFailure, StartRequest,
};
use super::poller::{follow_plan, observe, Follow};
use super::registry::{CredentialsKey, Lookup};
use super::search::{find_pending_run, SearchResult};
use super::{intent, jittered, written, Context, FIELD_MANAGER, RUN_FINALIZER};
use crate::crd::job_run::{
    CredentialsKind, JobSelector, ResultsSummary, StepSummary, TriggerOverrides,
};
use crate::crd::reasons::{EventAction, Reason};
use crate::crd::{DbtCloudJobRun, DbtCloudJobRunStatus};
use crate::dbt_cloud::{
    parse_timestamp, DbtCloudClient, DbtCloudError, ListJobsParams, ListRunsParams, Reservation,
    RunStatus, TriggerRunRequest,
};
use crate::{Error, InStage, Result, Stage};

const KIND: &str = "DbtCloudJobRun";
/// Longest step log tail kept for Events and status.
const LOG_TAIL: usize = 300;

/// Objects whose runs use the given credentials (for re-reconciling them when credentials change).
pub fn runs_using(
    store: &Store<DbtCloudJobRun>,
    kind: CredentialsKind,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<DbtCloudJobRun>> {
    store
        .state()
        .iter()
        .filter(|r| r.spec.credentials_ref.kind == kind && r.spec.credentials_ref.name == name)
        .filter(|r| namespace.is_none() || r.namespace() == namespace)
        .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Reconciles one `DbtCloudJobRun` (finalizer-wrapped).
#[instrument(skip_all, fields(object = %format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any())))]
pub async fn reconcile(run: Arc<DbtCloudJobRun>, ctx: Arc<Context>) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    if !ctx.watches_namespace(&ns) {
        return Ok(Action::await_change());
    }
    // One reconcile of an object at a time, across the controller and the report lane.
    let Some(_busy) = run
        .metadata
        .uid
        .as_deref()
        .and_then(|uid| ctx.busy.enter(uid))
    else {
        return Ok(Action::requeue(Duration::from_millis(100)));
    };
    // The watch cache may still hold the object as it was before our own last write of it.
    if let (Some(uid), Some(rv)) = (run.metadata.uid.as_deref(), run.resource_version()) {
        if ctx.written.check(uid, &rv) == written::Freshness::Stale {
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
    }
    let _measure = ctx.metrics.measure_reconcile(KIND);
    let api: Api<DbtCloudJobRun> = Api::namespaced(ctx.client.clone(), &ns);
    // A finished run has nothing to cancel: it needs no finalizer (so thousands of finished runs
    // cost no writes at start-up, and deleting them is immediate).
    if run.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
        return finished(run, &ctx, &api).await;
    }
    // The finalizer is added with the first trigger's intent (one write, see `intent`): until
    // then there is nothing in dbt Cloud to cancel, and deleting the object is immediate.
    let seen = intent::effective(&run).map(Arc::new).unwrap_or(run);
    if seen.meta().deletion_timestamp.is_some() {
        if seen.finalizers().iter().any(|f| f == RUN_FINALIZER) {
            cleanup(seen.clone(), &ctx).await.in_stage(Stage::Cleanup)?;
            return remove_finalizer(&api, &seen)
                .await
                .in_stage(Stage::RemoveFinalizer);
        }
        return Ok(Action::await_change());
    }
    apply(seen, &ctx).await
}

/// Removes our finalizer (`test` first, so a concurrent change of the list is not overwritten).
async fn remove_finalizer(api: &Api<DbtCloudJobRun>, run: &DbtCloudJobRun) -> Result<Action> {
    let Some(i) = run.finalizers().iter().position(|f| f == RUN_FINALIZER) else {
        return Ok(Action::await_change());
    };
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": RUN_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]))
    .expect("valid JSON patch");
    match api
        .patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Gone already: nothing to do.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        // The list changed under us (the `test` failed) or another error: try again soon.
        Err(e) => Err(e.into()),
    }
}

/// Requeue policy after a failed reconcile: soon for conflicts, `Retry-After` for rate limits,
/// otherwise a jittered delay.
pub fn error_policy(run: Arc<DbtCloudJobRun>, err: &Error, ctx: Arc<Context>) -> Action {
    let inner = Some(err.cause());
    // A deletion waiting to cancel is not a failure.
    if let Some(Error::DeletionPending { retry_in, message }) = inner {
        debug!(object = %key_of(&run), "{message}; retrying in {retry_in:?}");
        return Action::requeue(*retry_in);
    }
    ctx.metrics.reconcile_failed(KIND, err.metric_label());
    let delay = match inner {
        Some(Error::Conflict(_)) => Duration::from_millis(500),
        Some(Error::DbtCloud(e)) => e
            .retry_after()
            .unwrap_or(ctx.config.lifecycle.credentials_retry),
        _ => ctx
            .config
            .lifecycle
            .credentials_retry
            .min(Duration::from_secs(10)),
    };
    warn!(object = %format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any()), error = %err, "reconcile failed; retrying in {delay:?}");
    ctx.report_failure(run, err);
    Action::requeue(jittered(delay))
}

/// Whether the run's namespace may use cluster-scoped credentials.
async fn namespace_allowed(
    ctx: &Context,
    allowed: &crate::crd::credentials::AllowedNamespaces,
    ns: &str,
) -> Result<bool> {
    if allowed.names.iter().any(|n| n == ns) {
        return Ok(true);
    }
    let Some(selector) = allowed.selector.clone() else {
        return Ok(false);
    };
    let Ok(selector) = Selector::try_from(selector) else {
        return Ok(false);
    };
    let namespace = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(ns)
        .await?;
    Ok(namespace.is_some_and(|n| {
        selector.matches(n.metadata.labels.as_ref().unwrap_or(&Default::default()))
    }))
}

/// The credentials state for a run, and a client when they are ready.
///
/// The credentials follow the API server: an entry of the registry is used only while the object
/// it validated still exists (same uid and target) in the watch's store, and the allowed
/// namespaces of cluster credentials are read from the object as it is now. So deleting the
/// credentials, or removing the run's namespace from `allowedNamespaces`, stops their use at once.
/// A run in flight then keeps its phase and waits (condition reason `CredentialsNotFound` or
/// `NamespaceNotAllowed`, and an Event); it is not polled, and it resumes when usable credentials
/// come back.
pub async fn credentials_for(
    run: &DbtCloudJobRun,
    ctx: &Context,
) -> Result<(CredentialsState, Option<DbtCloudClient>)> {
    let ns = run.namespace().unwrap_or_default();
    let r = &run.spec.credentials_ref;
    let key = CredentialsKey::of_run(run);
    let not_ready = |reason: Reason, message: String, stalled: bool| {
        Ok((
            CredentialsState::NotReady {
                reason,
                message,
                stalled,
            },
            None,
        ))
    };
    if !ctx.stores.synced() {
        return not_ready(
            Reason::CredentialsNotValidated,
            format!("{key} has not been validated yet (the operator is starting)"),
            false,
        );
    }
    let live = ctx.stores.live(&key);
    let where_ = if r.kind == CredentialsKind::DbtCloudCredentials {
        format!(" in namespace '{ns}'")
    } else {
        String::new()
    };
    let entry = match ctx.credentials.lookup(&key, live.as_ref()) {
        Lookup::Found(entry) => entry,
        Lookup::NotValidated => {
            return not_ready(
                Reason::CredentialsNotValidated,
                format!("{key} has not been validated yet"),
                false,
            )
        }
        Lookup::Missing => {
            let what = format!("{:?} '{}'", r.kind, r.name);
            return not_ready(
                Reason::CredentialsNotFound,
                format!("{what} not found{where_}: create it, or fix spec.credentialsRef"),
                false,
            );
        }
        Lookup::Deleting => {
            let what = format!("{:?} '{}'", r.kind, r.name);
            return not_ready(
                Reason::CredentialsNotFound,
                format!(
                    "{what}{where_} is being deleted: create it again, or fix spec.credentialsRef"
                ),
                false,
            );
        }
    };
    if let Some(allowed) = live.as_ref().and_then(|l| l.allowed_namespaces.as_ref()) {
        if !namespace_allowed(ctx, allowed, &ns).await? {
            return not_ready(
                Reason::NamespaceNotAllowed,
                format!("ClusterDbtCloudCredentials '{}' does not allow namespace '{ns}' (see its spec.allowedNamespaces)", r.name),
                true,
            );
        }
    }
    match entry.client {
        Some(client) => Ok((
            CredentialsState::Ready {
                account_id: entry.target.account_id,
            },
            Some(client),
        )),
        // Runs wait either way; they are Stalled when the credentials need a user's fix.
        None => not_ready(
            entry.reason,
            format!("{key} is not ready: {}", entry.message),
            entry.stalled,
        ),
    }
}

async fn apply(run: Arc<DbtCloudJobRun>, ctx: &Context) -> Result<Action> {
    let (credentials, client) = credentials_for(&run, ctx)
        .await
        .in_stage(Stage::ResolveCredentials)?;
    let mut obs = Observation::new(Timestamp::now(), credentials);
    let obj_ref = ObjectRef::from_obj(run.as_ref());
    let interval = Duration::from_secs(run.spec.poll_interval_seconds.max(1) as u64);
    let mut notes = Vec::new();
    let mut reserved: Option<Reservation> = None;
    for _ in 0..10 {
        let decision = lifecycle::decide(&run, &obs, &ctx.config.lifecycle);
        let action = decision.action.clone();
        if let lifecycle::Action::Settle { requeue } = action {
            write_status(ctx, &run, &decision.status)
                .await
                .in_stage(Stage::WriteStatus)?;
            publish_all(ctx, &run, &decision, notes).await;
            follow(
                ctx,
                &run,
                &decision.status,
                client.as_ref(),
                &obj_ref,
                interval,
                obs.current_run.clone(),
            );
            return Ok(requeue
                .map(|d| Action::requeue(jittered(d)))
                .unwrap_or_else(Action::await_change));
        }
        if let lifecycle::Action::Delete = action {
            info!("ttlSecondsAfterFinished expired; deleting");
            ctx.metrics.set_run_phase(&key_of(&run), None);
            Api::<DbtCloudJobRun>::namespaced(
                ctx.client.clone(),
                &run.namespace().unwrap_or_default(),
            )
            .delete(&run.name_any(), &Default::default())
            .await
            .in_stage(Stage::Delete)?;
            return Ok(Action::await_change());
        }
        let Some(client) = client.as_ref() else {
            return Ok(Action::requeue(jittered(
                ctx.config.lifecycle.credentials_retry,
            )));
        };
        match action {
            lifecycle::Action::ResolveJob => {
                obs.job = Some(resolve_job(client, &run.spec.job).await)
            }
            lifecycle::Action::SearchPendingRun(search) => {
                let SearchResult {
                    outcome: found,
                    duplicates,
                    ..
                } = find_pending_run(client, &search)
                    .await
                    .in_stage(Stage::FindRun)?;
                for dup in duplicates {
                    client.cancel_run(dup).await.in_stage(Stage::Cancel)?;
                    notes.push(EventNote::warning(Reason::DuplicateRunCancelled, format!("dbt Cloud run {dup} carries the same attempt marker as an earlier run and was cancelled")));
                }
                if matches!(found, PendingSearch::Found(_)) {
                    ctx.metrics.runs_adopted.inc();
                }
                obs.pending_search = found;
            }
            lifecycle::Action::ObserveNewestRun { job_id } => {
                // A run this operator created in the account a moment ago bounds the search as
                // well as the job's newest run, without a call (see `newest_run`).
                let known = ctx
                    .newest_runs
                    .recent(client.account(), std::time::Instant::now());
                obs.newest_run_id = Some(match known {
                    Some(id) => id,
                    None => newest_run_id(client, job_id)
                        .await
                        .in_stage(Stage::Trigger)?,
                });
            }
            lifecycle::Action::ObserveRun { run_id } => {
                let known = ctx.poller.snapshot(&obj_ref, run_id);
                let current = match known {
                    Some(k) => k,
                    None => observe(&client.get_run(run_id, &[]).await.in_stage(Stage::Follow)?),
                };
                obs.current_run = Some(current);
            }
            lifecycle::Action::FetchDetails { run_id } => {
                obs.details = Some(fetch_details(client, run_id).await)
            }
            lifecycle::Action::CancelRun { run_id, reason } => {
                info!(run_id, ?reason, "cancelling dbt Cloud run");
                let answer = client.cancel_run(run_id).await.in_stage(Stage::Cancel)?;
                obs.current_run = Some(lifecycle::after_cancel_accepted(observe(&answer)));
            }
            lifecycle::Action::StartAttempt(request) => {
                let Some(reserved) = reserved.take() else {
                    // The account's budget first (a busy account may make this wait), then the
                    // start is decided again at the time after the wait: the intent's time, from
                    // which its send deadline counts, is then a moment it can be sent at.
                    reserved = Some(client.reserve().await);
                    obs.now = Timestamp::now();
                    continue;
                };
                let credentials = obs.credentials.clone();
                return start_attempt(
                    ctx,
                    &run,
                    client,
                    &decision,
                    ReservedStart { request, reserved },
                    PollTarget {
                        obj_ref: &obj_ref,
                        interval,
                    },
                    credentials,
                )
                .await
                .in_stage(Stage::Trigger);
            }
            lifecycle::Action::Settle { .. } | lifecycle::Action::Delete => {
                unreachable!("handled above")
            }
        }
    }
    Err(Error::Invalid(
        "the run lifecycle asked too many questions in one reconcile".into(),
    ))
}

/// A run in a final phase: drop our finalizer if it is still there, then only TTL is left.
async fn finished(
    run: Arc<DbtCloudJobRun>,
    ctx: &Context,
    api: &Api<DbtCloudJobRun>,
) -> Result<Action> {
    if run.finalizers().iter().any(|f| f == RUN_FINALIZER) {
        remove_finalizer(api, &run)
            .await
            .in_stage(Stage::RemoveFinalizer)?;
    }
    if run.meta().deletion_timestamp.is_some() {
        ctx.metrics.set_run_phase(&key_of(&run), None);
        return Ok(Action::await_change());
    }
    apply(run, ctx).await
}

fn key_of(run: &DbtCloudJobRun) -> String {
    format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any())
}

/// Keeps the poller, metrics and phase gauge in line with the written status: the object's current
/// dbt Cloud run is polled with the key of the credentials it names while it is in flight and
/// those credentials are usable; otherwise (finished, suspended, credentials gone) nothing is
/// polled for it.
fn follow(
    ctx: &Context,
    run: &DbtCloudJobRun,
    status: &DbtCloudJobRunStatus,
    client: Option<&DbtCloudClient>,
    obj_ref: &ObjectRef<DbtCloudJobRun>,
    interval: Duration,
    known: Option<lifecycle::ObservedRun>,
) {
    ctx.metrics.set_run_phase(&key_of(run), Some(status.phase));
    match follow_plan(status, client.is_some()) {
        Follow::Track(run_id) => ctx.poller.track(
            &CredentialsKey::of_run(run),
            run_id,
            obj_ref.clone(),
            interval,
            known,
        ),
        Follow::Untrack => ctx.poller.untrack(obj_ref),
    }
}

async fn publish_all(
    ctx: &Context,
    run: &DbtCloudJobRun,
    decision: &lifecycle::Decision,
    notes: Vec<EventNote>,
) {
    let old = run.status.clone().unwrap_or_default();
    let new = &decision.status;
    for e in notes.iter().chain(&decision.events) {
        ctx.publish(run, EventAction::Reconcile, e).await;
    }
    if old.phase != new.phase && new.phase.is_terminal() {
        if let (Some(start), Some(end)) = (&new.started_at, &new.finished_at) {
            ctx.metrics
                .run_duration
                .observe(end.0.duration_since(start.0).as_secs_f64().max(0.0));
        }
        if let Some(a) = new.attempts.last() {
            if let (Some(created), Some(started)) = (&a.created_at, &a.started_at) {
                ctx.metrics
                    .run_queue_time
                    .observe(started.0.duration_since(created.0).as_secs_f64().max(0.0));
            }
        }
        info!(phase = new.phase.as_str(), run_id = ?new.run_id, "run finished");
    }
}

/// Writes the status when it differs from the object's, guarded by the object's resourceVersion:
/// every status is computed from a read, so a write based on a stale read (another replica, a
/// lagging cache) fails with [`Error::Conflict`] instead of clobbering newer state such as a
/// recorded trigger. Returns the resourceVersion after the write.
///
/// The write is a JSON patch that replaces the whole status (and sets the resourceVersion the
/// status was computed from, which the API server checks): measured against server-side apply on
/// the real API server it costs the server less (no structured merge of managed fields), and
/// replacing the whole status needs no merge semantics (see BENCHMARKS.md).
pub async fn write_status(
    ctx: &Context,
    run: &DbtCloudJobRun,
    status: &DbtCloudJobRunStatus,
) -> Result<String> {
    let rv = run.resource_version().unwrap_or_default();
    let status = &intent::mark_resolved(run, status);
    // Compared as the API server stores them: times are kept to the second there, so a status
    // computed in memory (sub-second) and the same one read back differ only in precision.
    if serde_json::to_value(&run.status).ok() == serde_json::to_value(Some(status)).ok() {
        return Ok(rv);
    }
    let api: Api<DbtCloudJobRun> =
        Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let patch = status_patch(&rv, status);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api
        .patch_status(&run.name_any(), &params, &Patch::Json::<()>(patch))
        .await
    {
        Ok(written) => {
            let rv = written.resource_version().unwrap_or_default();
            ctx.written.wrote(&written.uid().unwrap_or_default(), &rv);
            Ok(rv)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(s.message.clone())),
        Err(e) => Err(e.into()),
    }
}

/// The JSON patch that replaces the whole status of an object read at `resource_version`: the
/// API server refuses it (409) when the object changed since.
pub fn status_patch(resource_version: &str, status: &DbtCloudJobRunStatus) -> json_patch::Patch {
    serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "add", "path": "/status", "value": status},
    ]))
    .expect("a valid JSON patch")
}

/// Writes the trigger's intent and our finalizer in one metadata patch, guarded by the
/// resourceVersion `run` was read at. Returns the object as written (its status unchanged).
async fn record_intent(
    ctx: &Context,
    run: &DbtCloudJobRun,
    pending: &crate::crd::job_run::PendingTrigger,
    decided: &DbtCloudJobRunStatus,
) -> Result<DbtCloudJobRun> {
    let rv = run.resource_version().unwrap_or_default();
    let (patch, mut after) = intent::record_patch(run, pending, decided, &rv, RUN_FINALIZER);
    let api: Api<DbtCloudJobRun> =
        Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    match api
        .patch(
            &run.name_any(),
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(written) => {
            after.metadata.resource_version = written.resource_version();
            ctx.written.wrote(
                &written.uid().unwrap_or_default(),
                &written.resource_version().unwrap_or_default(),
            );
            Ok(after)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(s.message.clone())),
        Err(e) => Err(e.into()),
    }
}

fn trigger_request(overrides: Option<&TriggerOverrides>, cause: &str) -> Result<TriggerRunRequest> {
    let mut req = TriggerRunRequest::new(cause)?;
    if let Some(o) = overrides {
        req.git_sha = o.git_sha.clone();
        req.git_branch = o.git_branch.clone();
        req.schema_override = o.schema_override.clone();
        req.dbt_version_override = o.dbt_version_override.clone();
        req.threads_override = o.threads_override;
        req.target_name_override = o.target_name_override.clone();
        req.generate_docs_override = o.generate_docs_override;
        req.timeout_seconds_override = o.timeout_seconds_override;
        req.steps_override = o.steps_override.clone();
        req.github_pull_request_id = o.github_pull_request_id;
        req.gitlab_merge_request_id = o.gitlab_merge_request_id;
        req.azure_pull_request_id = o.azure_pull_request_id;
        req.non_native_pull_request_id = o.non_native_pull_request_id;
    }
    Ok(req)
}

/// A start request with the account's budget for it already taken.
struct ReservedStart {
    request: StartRequest,
    reserved: Reservation,
}

/// The object a started run is followed for, and how often it is polled.
struct PollTarget<'a> {
    obj_ref: &'a ObjectRef<DbtCloudJobRun>,
    interval: Duration,
}

async fn start_attempt(
    ctx: &Context,
    run: &DbtCloudJobRun,
    client: &DbtCloudClient,
    decision: &lifecycle::Decision,
    start: ReservedStart,
    polled: PollTarget<'_>,
    credentials: CredentialsState,
) -> Result<Action> {
    let PollTarget { obj_ref, interval } = polled;
    let ReservedStart { request, reserved } = start;
    // 1. Record the intent, with the finalizer, in one write; fails if anyone changed the object
    //    since we read it.
    let Some(pending) = decision.status.pending_trigger.as_ref() else {
        return Err(Error::Invalid(
            "the run lifecycle asked to start an attempt without recording it".into(),
        ));
    };
    info!(
        attempt = pending.attempt,
        kind = ?pending.kind,
        after_run_id = ?pending.after_run_id,
        resource_version = run.resource_version().unwrap_or_default(),
        previous_intent = ?intent::recorded(run).map(|r| r.id),
        resolved_intent = ?run.status.as_ref().and_then(|s| s.resolved_intent.clone()),
        "recording the trigger intent"
    );
    let recorded = match record_intent(ctx, run, pending, &decision.status).await {
        Err(Error::Conflict(_)) => {
            debug!("object changed since read; not triggering, will re-read");
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        other => other?,
    };
    // 2. Send it, within one request timeout of the recorded time or not at all: whoever finds
    //    the intent unresolved waits the confirm window (more than two request timeouts) before
    //    sending it again, so this send has ended long before.
    let send_by = send_deadline(pending, ctx.config.client.request_timeout);
    let result = match &request {
        StartRequest::Trigger { job_id, cause } => {
            let body = trigger_request(run.spec.trigger.as_ref(), cause)?;
            client
                .trigger_run_by(*job_id, &body, Some(send_by), Some(reserved))
                .await
        }
        StartRequest::Retry { run_id, .. } => {
            client
                .retry_run_by(*run_id, Some(send_by), Some(reserved))
                .await
        }
    };
    let now = Timestamp::now();
    // 3. Record the outcome (a crash before this is resolved by the pending-trigger search). The
    //    object as the intent write left it: this write is guarded by that version, and marks the
    //    intent resolved.
    match result {
        Ok(started) => {
            ctx.newest_runs
                .created(client.account(), started.id, std::time::Instant::now());
            let observed = observe(&started);
            let (status, note) = after_start_settled(
                run,
                &decision.status,
                &observed,
                credentials,
                &ctx.config.lifecycle,
                now,
            );
            write_status(ctx, &recorded, &status)
                .await
                .in_stage(Stage::WriteStatus)?;
            ctx.metrics.runs_triggered.inc();
            info!(run_id = started.id, "dbt Cloud run started");
            // No Event for a successful start (the status says it): Events are kept for failures
            // and the final outcome, so a run costs few writes.
            let _ = note;
            let mut d = decision.clone();
            d.status = status.clone();
            publish_all(ctx, run, &d, Vec::new()).await;
            follow(
                ctx,
                run,
                &status,
                Some(client),
                obj_ref,
                interval,
                Some(observed),
            );
            Ok(Action::requeue(jittered(interval)))
        }
        Err(e) => {
            let failure = start_failure(&e);
            let next = after_start_failed(
                run,
                &decision.status,
                &failure,
                &e.to_string(),
                &ctx.config.lifecycle,
                now,
            );
            match failure {
                StartFailure::Ambiguous => {
                    warn!(error = %e, "trigger outcome unknown; will search for the run before deciding again")
                }
                StartFailure::NotSent => {
                    warn!(error = %e, "trigger not sent before its deadline; deciding again")
                }
                _ => {}
            }
            if let Some(status) = &next.status {
                write_status(ctx, &recorded, status)
                    .await
                    .in_stage(Stage::WriteStatus)?;
                ctx.metrics.set_run_phase(&key_of(run), Some(status.phase));
            }
            if let Some(event) = &next.event {
                ctx.publish(run, EventAction::Trigger, event).await;
            }
            Ok(match next.requeue {
                Requeue::After(d) => Action::requeue(d),
                Requeue::Jittered(d) => Action::requeue(jittered(d)),
                Requeue::AwaitChange => Action::await_change(),
            })
        }
    }
}

/// What the lifecycle needs to know of a failed start request (it decides what that means).
fn start_failure(e: &DbtCloudError) -> StartFailure {
    if e.is_ambiguous_for_trigger() {
        return StartFailure::Ambiguous;
    }
    match e {
        DbtCloudError::NotSent { .. } => StartFailure::NotSent,
        DbtCloudError::NotFound { .. } => StartFailure::JobNotFound,
        DbtCloudError::BadRequest { .. } | DbtCloudError::InvalidRequest { .. } => {
            StartFailure::Invalid
        }
        other => StartFailure::Refused {
            reason: other.condition_reason(),
            retry_after: other.retry_after(),
        },
    }
}

/// The instant a recorded trigger must be on the wire by: one request timeout after the time in
/// its intent (the in-memory value, finer than the second kept in the object).
fn send_deadline(
    pending: &crate::crd::job_run::PendingTrigger,
    request_timeout: Duration,
) -> std::time::Instant {
    let elapsed = pending.requested_at.0.duration_until(Timestamp::now());
    let left = if elapsed.is_negative() {
        request_timeout
    } else {
        request_timeout.saturating_sub(elapsed.unsigned_abs())
    };
    std::time::Instant::now() + left
}

/// Resolves project/environment/job names to exactly one job id.
async fn resolve_job(client: &DbtCloudClient, job: &JobSelector) -> JobResolution {
    let transient = |e: DbtCloudError| {
        if e.is_retryable() {
            JobResolution::Transient {
                reason: e.condition_reason(),
                message: format!("Looking up the job failed: {e}"),
            }
        } else {
            JobResolution::NotFound(format!("Looking up the job failed: {e}"))
        }
    };
    if let Some(id) = job.id {
        return match client.get_job(id).await {
            Ok(j) => JobResolution::Resolved(j.id),
            Err(e) => transient(e),
        };
    }
    let (Some(p), Some(env), Some(name)) =
        (&job.project_name, &job.environment_name, &job.job_name)
    else {
        return JobResolution::NotFound(
            "spec.job needs id, or projectName + environmentName + jobName".into(),
        );
    };
    let exact = |candidates: Vec<(i64, Option<String>)>,
                 what: &str,
                 wanted: &str|
     -> Result<i64, JobResolution> {
        let ids: Vec<i64> = candidates
            .into_iter()
            .filter(|(_, n)| n.as_deref() == Some(wanted))
            .map(|(id, _)| id)
            .collect();
        match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err(JobResolution::NotFound(format!("No dbt Cloud {what} is named '{wanted}' (names are matched exactly; dbt Cloud also hides objects the token cannot see)"))),
            many => Err(JobResolution::Ambiguous(format!("{} dbt Cloud {what}s are named '{wanted}' (ids {:?}): use spec.job.id instead", many.len(), many))),
        }
    };
    let projects = match client.list_all_projects(Some(p)).await {
        Ok(v) => v,
        Err(e) => return transient(e),
    };
    let project_id = match exact(
        projects.into_iter().map(|x| (x.id, x.name)).collect(),
        "project",
        p,
    ) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let envs = match client.list_all_environments(project_id, Some(env)).await {
        Ok(v) => v,
        Err(e) => return transient(e),
    };
    let env_id = match exact(
        envs.into_iter().map(|x| (x.id, x.name)).collect(),
        "environment",
        env,
    ) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let jobs = match client
        .list_all_jobs(&ListJobsParams {
            project_id: Some(project_id),
            environment_id: Some(env_id),
            name_icontains: Some(name.clone()),
            ..Default::default()
        })
        .await
    {
        Ok(v) => v,
        Err(e) => return transient(e),
    };
    match exact(
        jobs.into_iter().map(|x| (x.id, x.name)).collect(),
        "job",
        name,
    ) {
        Ok(id) => JobResolution::Resolved(id),
        Err(r) => r,
    }
}

/// Id of the job's newest run (0 when it has none): the lower bound recorded with a trigger.
async fn newest_run_id(client: &DbtCloudClient, job_id: i64) -> Result<i64, DbtCloudError> {
    let page = client
        .list_runs(&ListRunsParams {
            job_definition_id: Some(job_id),
            order_by: Some("-id".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    Ok(page.items.first().map_or(0, |r| r.id))
}

/// Steps and `run_results.json` of a finished run. Failures leave parts empty (never fatal).
async fn fetch_details(client: &DbtCloudClient, run_id: i64) -> RunDetails {
    let mut details = match client.get_run(run_id, &["run_steps"]).await {
        Ok(run) => run_details(&run),
        Err(e) => {
            warn!(run_id, error = %e, "could not fetch run steps");
            RunDetails::default()
        }
    };
    match client
        .get_run_artifact(run_id, "run_results.json", None)
        .await
    {
        Ok(bytes) => details.results = summarize_run_results(&bytes),
        Err(e) => debug!(run_id, error = %e, "no run_results.json"),
    }
    details
}

/// Steps of a run fetched with `include_related=run_steps`, and the failing step with the tail of
/// its log. Pure; the lifecycle bounds what reaches status.
pub fn run_details(run: &crate::dbt_cloud::Run) -> RunDetails {
    let mut details = RunDetails::default();
    for step in run.run_steps.as_deref().unwrap_or_default() {
        let duration = match (
            step.started_at.as_deref().and_then(parse_timestamp),
            step.finished_at.as_deref().and_then(parse_timestamp),
        ) {
            (Some(s), Some(f)) => Some((f.as_second() - s.as_second()).max(0)),
            _ => None,
        };
        let name = step.name.clone().unwrap_or_default();
        let status = step
            .status_humanized
            .clone()
            .unwrap_or_else(|| step.status.humanized().to_string());
        if step.status == RunStatus::Error && details.failed_step.is_none() {
            let log = step
                .logs
                .as_deref()
                .or(step.truncated_debug_logs.as_deref())
                .unwrap_or_default();
            details.failed_step = Some(FailedStep {
                name: name.clone(),
                log_tail: tail(log, LOG_TAIL),
            });
        }
        details.steps.push(StepSummary {
            index: step.index.unwrap_or_default(),
            name,
            status,
            duration_seconds: duration,
        });
    }
    details
}

fn tail(log: &str, max: usize) -> String {
    let trimmed = log.trim();
    if trimmed.len() <= max {
        return trimmed.to_string();
    }
    let mut start = trimmed.len() - max;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &trimmed[start..])
}

/// Counts of a `run_results.json` and its failing nodes (capped).
pub fn summarize_run_results(bytes: &[u8]) -> Option<ResultsSummary> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let results = doc.get("results")?.as_array()?;
    let mut s = ResultsSummary::default();
    for r in results {
        let status = r.get("status").and_then(|v| v.as_str()).unwrap_or_default();
        let failed = match status {
            "success" | "pass" => {
                s.pass += 1;
                false
            }
            "error" | "runtime error" => {
                s.error += 1;
                true
            }
            "fail" => {
                s.fail += 1;
                true
            }
            "skipped" | "skip" => {
                s.skip += 1;
                false
            }
            "warn" => {
                s.warn += 1;
                false
            }
            _ => false,
        };
        if failed {
            if s.failed_nodes.len() < lifecycle::MAX_FAILED_NODES {
                if let Some(id) = r.get("unique_id").and_then(|v| v.as_str()) {
                    s.failed_nodes.push(crate::crd::conditions::truncate_str(
                        id,
                        lifecycle::MAX_NAME_LEN,
                    ));
                }
            } else {
                s.failed_nodes_omitted = Some(s.failed_nodes_omitted.unwrap_or(0) + 1);
            }
        }
    }
    Some(s)
}

/// Performs [`lifecycle::cleanup`] for a run being deleted: cancels what it says, or keeps the
/// finalizer ([`Error::DeletionPending`]) while it waits.
async fn cleanup(run: Arc<DbtCloudJobRun>, ctx: &Context) -> Result<Action> {
    let client = credentials_for(&run, ctx)
        .await
        .ok()
        .and_then(|(_, client)| client);
    ctx.poller.untrack(&ObjectRef::from_obj(run.as_ref()));
    let mut obs = DeletionObservation::new(Timestamp::now(), client.is_some());
    loop {
        match lifecycle::cleanup(
            &run,
            &obs,
            &ctx.config.lifecycle,
            ctx.config.deletion_timeout,
        ) {
            Cleanup::Search(search) => {
                let (Some(client), PendingSearch::NotSearched) = (&client, &obs.pending_search)
                else {
                    return Err(Error::Invalid(
                        "the deletion asked for a search it cannot make".into(),
                    ));
                };
                let found = find_pending_run(client, &search)
                    .await
                    .in_stage(Stage::FindRun)?;
                obs.pending_search = found.outcome;
                obs.duplicates = found.duplicates;
            }
            Cleanup::Wait { message, retry_in } => {
                return Err(Error::DeletionPending { message, retry_in })
            }
            Cleanup::Release { cancel, events } => {
                for e in &events {
                    ctx.publish(run.as_ref(), EventAction::Delete, e).await;
                }
                for id in cancel {
                    let client = client.as_ref().ok_or_else(|| {
                        Error::Invalid("the deletion asked for a cancel without credentials".into())
                    })?;
                    match client.cancel_run(id).await {
                        Ok(_) | Err(DbtCloudError::NotFound { .. }) => {
                            ctx.publish(
                                run.as_ref(),
                                EventAction::Delete,
                                &lifecycle::cancelled_on_delete(id),
                            )
                            .await;
                        }
                        Err(e) => return Err(Error::from(e).in_stage(Stage::Cancel)),
                    }
                }
                ctx.metrics.set_run_phase(&key_of(&run), None);
                return Ok(Action::await_change());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_results_are_summarised() {
        let doc = serde_json::json!({"results": [
            {"unique_id": "model.a", "status": "success"},
            {"unique_id": "test.b", "status": "pass"},
            {"unique_id": "model.c", "status": "error"},
            {"unique_id": "test.d", "status": "fail"},
            {"unique_id": "model.e", "status": "skipped"},
            {"unique_id": "test.f", "status": "warn"}
        ]});
        let s = summarize_run_results(doc.to_string().as_bytes()).unwrap();
        assert_eq!((s.pass, s.error, s.fail, s.skip, s.warn), (2, 1, 1, 1, 1));
        assert_eq!(s.failed_nodes, vec!["model.c", "test.d"]);
        assert!(summarize_run_results(b"not json").is_none());
    }

    #[test]
    fn run_results_list_at_most_20_failing_nodes_and_count_the_rest() {
        let results: Vec<_> = (0..30)
            .map(|i| serde_json::json!({"unique_id": format!("model.m{i}"), "status": "error"}))
            .collect();
        let doc = serde_json::json!({ "results": results });
        let s = summarize_run_results(doc.to_string().as_bytes()).unwrap();
        assert_eq!(s.error, 30);
        assert_eq!(s.failed_nodes.len(), 20);
        assert_eq!(s.failed_nodes_omitted, Some(10));
    }

    #[test]
    fn log_tail_keeps_the_end() {
        assert_eq!(tail("  short ", 10), "short");
        let t = tail(&"x".repeat(400), 300);
        assert!(t.starts_with('…') && t.len() <= 303);
    }
}
