//! Reconciler of `DbtCloudJobTrigger`: the IO shell around [`trigger_policy::decide`]. It reads
//! the trigger's runs from the shared run cache (confirming cached-out active ones with a GET),
//! performs the decision (cancel for `Replace`, create with a deterministic name, delete beyond
//! the history limits), records each create's outcome, writes status with server-side apply
//! guarded by the resourceVersion it read, publishes Events, and requeues at the next schedule
//! slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::trigger_policy::{
    self, build_run, child_of, record_name_taken, record_rejected, record_start, Child, EventNote,
    StartRun, TriggerView,
};
use super::written::Freshness;
use super::{jittered, Context, FIELD_MANAGER, MAX_REQUEUE_DELAY};
use crate::crd::reasons::{EventAction, Reason};
use crate::crd::{DbtCloudJobRun, DbtCloudJobTrigger, DbtCloudJobTriggerStatus};
use crate::{Error, InStage, Result, Stage};

const KIND: &str = "DbtCloudJobTrigger";
/// Event reasons of effects already performed when a reconcile ends (as opposed to decisions
/// that only status records).
const EFFECTS: [Reason; 3] = [Reason::RunStarted, Reason::RunReplaced, Reason::RunsDeleted];

/// What the trigger reconciler needs besides the shared [`Context`]: the run cache.
pub struct TriggerContext {
    /// The shared context (client, recorder, metrics, configuration and its clock).
    pub base: Arc<Context>,
    /// Every `DbtCloudJobRun` the operator watches (the run controller's cache).
    pub runs: Store<DbtCloudJobRun>,
    /// Set once the run watch has listed every run ([`runs_listed`] on its events). Reconciles
    /// check it instead of awaiting `Store::wait_until_ready`: that future keeps only the last
    /// waiter's waker, so a reconcile waiting on it could take the wake-up from another waiter
    /// of the same store (the run controller, the readiness probe) or never be woken itself.
    pub runs_listed: Arc<AtomicBool>,
}

/// Marks `listed` once a watch event stream reports its initial list complete.
pub fn runs_listed<K>(listed: &AtomicBool, event: &kube::runtime::watcher::Event<K>) {
    if matches!(event, kube::runtime::watcher::Event::InitDone) {
        listed.store(true, Ordering::Release);
    }
}

/// The trigger that controls `run`, if a trigger does.
pub fn trigger_of(run: &DbtCloudJobRun) -> Option<ObjectRef<DbtCloudJobTrigger>> {
    let owner = run.owner_references().iter().find(|o| {
        o.controller == Some(true) && o.kind == KIND && o.api_version.starts_with("dbtcloud.io/")
    })?;
    Some(ObjectRef::new(&owner.name).within(&run.namespace()?))
}

/// Whether `run` is controlled by the trigger with this UID.
pub fn controlled_by(run: &DbtCloudJobRun, uid: &str) -> bool {
    run.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == KIND && o.uid == uid)
}

/// Requeue policy after a failed reconcile: soon for conflicts, otherwise a short jittered delay
/// (every effect is idempotent: deterministic names, cancel and delete by name).
pub fn error_policy(
    trigger: Arc<DbtCloudJobTrigger>,
    err: &Error,
    ctx: Arc<TriggerContext>,
) -> Action {
    ctx.base.metrics.reconcile_failed(KIND, err.metric_label());
    let delay = match err.cause() {
        Error::Conflict(_) => Duration::from_millis(500),
        _ => ctx
            .base
            .config
            .lifecycle
            .credentials_retry
            .min(Duration::from_secs(10)),
    };
    warn!(object = %format!("{}/{}", trigger.namespace().unwrap_or_default(), trigger.name_any()), error = %err, "reconcile failed; retrying in {delay:?}");
    ctx.base.report_failure(trigger, err);
    Action::requeue(jittered(delay))
}

/// Reconciles one `DbtCloudJobTrigger`.
#[instrument(skip_all, fields(object = %format!("{}/{}", trigger.namespace().unwrap_or_default(), trigger.name_any())))]
pub async fn reconcile(
    trigger: Arc<DbtCloudJobTrigger>,
    ctx: Arc<TriggerContext>,
) -> Result<Action> {
    let ns = trigger.namespace().unwrap_or_default();
    if !ctx.base.watches_namespace(&ns) {
        return Ok(Action::await_change());
    }
    if trigger.meta().deletion_timestamp.is_some() {
        // Its runs go with it (owner references: the garbage collector deletes them).
        if let Some(uid) = trigger.uid() {
            ctx.base.written.forget(&uid);
        }
        return Ok(Action::await_change());
    }
    // The watch cache may still hold the trigger as it was before our own last status write
    // (runs it just started report in first): wait for the watch rather than decide on stale
    // state, which could only end in a rejected write.
    if let (Some(uid), Some(rv)) = (trigger.uid(), trigger.resource_version()) {
        if ctx.base.written.check(&uid, &rv) == Freshness::Stale {
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
    }
    let _measure = ctx.base.metrics.measure_reconcile(KIND);
    apply(&trigger, &ctx, &ns).await
}

async fn apply(trigger: &DbtCloudJobTrigger, ctx: &TriggerContext, ns: &str) -> Result<Action> {
    let Some(uid) = trigger.uid() else {
        return Err(Error::Invalid("the trigger has no UID".into()));
    };
    let runs: Api<DbtCloudJobRun> = Api::namespaced(ctx.base.client.clone(), ns);
    // Children are only complete once the run cache has listed everything: until then, look
    // again soon (deciding without them would still never start a run twice, names being
    // deterministic, but could miss a run to cancel or delete).
    if !ctx.runs_listed.load(Ordering::Acquire) {
        debug!("run cache not listed yet");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let clock = &ctx.base.config.clock;
    let now = clock.now();
    let created = trigger
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let mut owned: Vec<Arc<DbtCloudJobRun>> = ctx
        .runs
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns) && controlled_by(r, &uid))
        .collect();
    // A run this trigger just created may not be cached yet: ask the API server about active runs
    // the status lists but the cache lacks (gone ones drop out).
    let status = trigger.status.clone().unwrap_or_default();
    for a in &status.active {
        if !owned.iter().any(|r| r.name_any() == a.name) {
            if let Some(run) = runs.get_opt(&a.name).await.in_stage(Stage::ManageRuns)? {
                if controlled_by(&run, &uid) {
                    owned.push(Arc::new(run));
                }
            }
        }
    }
    let children: Vec<Child> = owned.iter().map(|r| child_of(r, now)).collect();
    let name = trigger.name_any();
    let view = TriggerView {
        name: &name,
        namespace: ns,
        uid: &uid,
        generation: trigger.meta().generation,
        created,
        spec: &trigger.spec,
        status: &status,
    };
    let decision = trigger_policy::decide(view, &children, now);
    debug!(
        %now,
        runs = children.len(),
        start = decision.start.len(),
        cancel = decision.cancel.len(),
        delete = decision.delete.len(),
        requeue_at = ?decision.requeue_at,
        "decided"
    );
    let mut status = decision.status.clone();
    let mut notes: Vec<EventNote> = decision.events.clone();
    let post = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };

    // Replace: only cancel when the new run would be accepted.
    let mut starts: Vec<&StartRun> = decision.start.iter().collect();
    let mut cancel: &[String] = &decision.cancel;
    if let (false, Some(first)) = (cancel.is_empty(), starts.first()) {
        let probe = build_run(view, Some(&first.name), &first.cause);
        let dry = PostParams {
            dry_run: true,
            ..post.clone()
        };
        match runs.create(&dry, &probe).await {
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                notes.retain(|n| n.reason != "RunReplaced");
                notes.push(record_rejected(
                    &mut status,
                    first,
                    &s.message,
                    view.generation,
                    now,
                ));
                starts.clear();
                cancel = &[];
            }
            // 409 (it exists already) and success: go ahead.
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::from(e).in_stage(Stage::ManageRuns)),
        }
    }
    for run in cancel {
        let patch = serde_json::json!({"spec": {"cancel": true}});
        match runs
            .patch(run, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(run = %run, "cancelled for concurrencyPolicy Replace"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::from(e).in_stage(Stage::ManageRuns)),
        }
    }
    for start in starts {
        let run = build_run(view, Some(&start.name), &start.cause);
        match runs.create(&post, &run).await {
            Ok(_) => {
                record_start(&mut status, start);
                info!(run = %start.name, cause = start.cause.as_str(), "run started");
                notes.push(EventNote {
                    warning: false,
                    reason: Reason::RunStarted,
                    note: format!("started run {} ({})", start.name, describe(&start.cause)),
                });
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Created before (a crash, a stale read): done, if it is ours.
                let existing = runs
                    .get_opt(&start.name)
                    .await
                    .in_stage(Stage::ManageRuns)?;
                if existing.as_ref().is_some_and(|r| controlled_by(r, &uid)) {
                    debug!(run = %start.name, "run exists already");
                    record_start(&mut status, start);
                } else {
                    notes.push(record_name_taken(&mut status, start, now));
                }
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                notes.push(record_rejected(
                    &mut status,
                    start,
                    &s.message,
                    view.generation,
                    now,
                ));
                break;
            }
            Err(e) => return Err(Error::from(e).in_stage(Stage::ManageRuns)),
        }
    }
    for run in &decision.delete {
        match runs.delete(run, &DeleteParams::background()).await {
            Ok(_) => debug!(run = %run, "deleted beyond the history limit"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::from(e).in_stage(Stage::ManageRuns)),
        }
    }
    match write_status(ctx, trigger, &status).await {
        Err(Error::Conflict(_)) => {
            debug!("status changed since read; deciding again");
            // Changed since read (our own previous write, a spec change): decide again on the new
            // version; every effect above is idempotent. What was done is reported now (the next
            // decision finds it done and says nothing).
            for n in notes.into_iter().filter(|n| EFFECTS.contains(&n.reason)) {
                ctx.base.publish(trigger, EventAction::Reconcile, &n).await;
            }
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        other => other.in_stage(Stage::WriteStatus)?,
    };
    for n in notes {
        ctx.base.publish(trigger, EventAction::Reconcile, &n).await;
    }
    Ok(match decision.requeue_at {
        // A little after the slot, so that the clock has reached it; never jittered (a slot is
        // a promise), capped like every requeue.
        Some(at) if status_holds_schedule(&status) => {
            Action::requeue((clock.until(at) + Duration::from_millis(50)).min(MAX_REQUEUE_DELAY))
        }
        _ => Action::await_change(),
    })
}

/// False when a start was refused just now (`Stalled`): nothing is due until the spec changes.
fn status_holds_schedule(status: &DbtCloudJobTriggerStatus) -> bool {
    status.next_schedule_time.is_some()
}

fn describe(cause: &trigger_policy::StartCause) -> String {
    match cause {
        trigger_policy::StartCause::Schedule(t) => format!("scheduled for {t}"),
        trigger_policy::StartCause::Revision(r) => format!("revision {r:?}"),
        trigger_policy::StartCause::Manual => "manual".into(),
    }
}

/// Writes the status with server-side apply when it differs from the object's, guarded by the
/// object's resourceVersion (as the run controller does): a status computed from a stale read
/// fails with [`Error::Conflict`] instead of overwriting newer state.
async fn write_status(
    ctx: &TriggerContext,
    trigger: &DbtCloudJobTrigger,
    status: &DbtCloudJobTriggerStatus,
) -> Result<()> {
    if trigger.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<DbtCloudJobTrigger> = Api::namespaced(
        ctx.base.client.clone(),
        &trigger.namespace().unwrap_or_default(),
    );
    let body = serde_json::json!({
        "apiVersion": "dbtcloud.io/v1alpha1",
        "kind": KIND,
        "metadata": { "resourceVersion": trigger.resource_version() },
        "status": status,
    });
    match api
        .patch_status(
            &trigger.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(written) => {
            ctx.base.written.wrote(
                &written.uid().unwrap_or_default(),
                &written.resource_version().unwrap_or_default(),
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(s.message.clone())),
        Err(e) => Err(e.into()),
    }
}
