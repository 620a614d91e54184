//! The `DbtCloudJobRun` lifecycle as a pure function: `(object, what dbt Cloud reports, now) →
//! next action + the status to write`. No IO happens here; the reconciler (a thin shell) gathers
//! observations, performs the action, and calls [`decide`] again when the action was a question.
//!
//! Exactly-once triggering rests on three rules, all enforced here and tested without any client:
//! 1. A trigger is always preceded by a status write that records the intent (`pendingTrigger`, with
//!    a token derived from the object's UID and the attempt number); the shell writes it with a
//!    resourceVersion precondition, so two actors that read the same object cannot both record it.
//! 2. Whenever a pending trigger exists without a known run, the next step is a search for the run
//!    carrying the token (or, for native retries, the run retrying the failed one) — never a trigger.
//! 3. Only when the search finds nothing *after* the ambiguity window (POST timeout + visibility
//!    margin) is the trigger sent again, with the same token.
//!
//! The search must see every run that may be the trigger's, however busy the job is. So the intent
//! also records a lower bound (`afterRunId`): the job's newest run id, asked for just before the
//! intent is written (for a native retry, the failed run). dbt Cloud run ids only grow, so the run
//! of the trigger is newer than the bound; the search reads every run newer than it, page by page,
//! and nothing older (see [`crate::controller::search`]). If more runs were created since than one
//! search reads, the outcome stays unknown: the trigger is never sent again, and the run reports
//! `TriggerUnconfirmed` (Stalled) until the user decides.
//!
//! dbt Cloud status codes other than 1, 2, 3, 10, 20 and 30 are not guessed at: such a run is still
//! followed (polled) in its last in-flight phase, `Ready`/`Reconciling` carry the reason
//! `UnknownRunStatus` and a message naming the code, a Warning Event names each new code once, and
//! `timeoutSeconds` ends the wait as for any run (without it, the run waits for a known code). A
//! known code, when it comes, takes over as usual.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::conditions::{self, Conditions};
use crate::crd::job_run::{
    AttemptKind, DbtCloudJobRun, DbtCloudJobRunStatus, PendingTrigger, ResultsSummary,
    RetryStrategy, RunAttempt, RunPhase, StepSummary, MAX_CAUSE_LEN,
};
pub use crate::crd::reasons::EventNote;
use crate::crd::reasons::Reason;
use crate::dbt_cloud::RunStatus;

/// Condition type mirroring whether the referenced credentials are usable.
pub const CREDENTIALS_READY: &str = "CredentialsReady";
/// Condition type set while `spec.suspend` holds the run.
pub const SUSPENDED: &str = "Suspended";

/// Most steps kept in status: the first [`STATUS_STEPS_HEAD`] and the last ones.
pub const MAX_STATUS_STEPS: usize = 50;
/// Steps kept from the start of a run that has more than [`MAX_STATUS_STEPS`].
pub const STATUS_STEPS_HEAD: usize = 10;
/// Most attempts kept in status: every failed one (the retry budget counts them), the latest, then
/// the most recent others.
pub const MAX_STATUS_ATTEMPTS: usize = 20;
/// Most failing nodes listed in status.
pub const MAX_FAILED_NODES: usize = 20;
/// Longest name kept in status (step names and statuses, node ids, attempt statuses), in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest URL kept in status, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Tunables of the lifecycle (from the operator's configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long after recording a trigger a missing run may still appear: the send (started
    /// within one request timeout of the record, bounded by another), plus dbt Cloud's own delay
    /// in processing it. Only after this window is a trigger considered not sent, so it must
    /// exceed twice the request timeout (checked at start-up).
    pub ambiguity_window: Duration,
    /// Requeue delay while waiting for credentials to become ready, and after transient dbt Cloud
    /// errors.
    pub credentials_retry: Duration,
    /// Requeue delay while a pending trigger is being confirmed.
    pub confirm_retry: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ambiguity_window: Duration::from_secs(90),
            credentials_retry: Duration::from_secs(30),
            confirm_retry: Duration::from_secs(3),
        }
    }
}

/// A dbt Cloud run as the lifecycle needs to see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedRun {
    /// Run id.
    pub id: i64,
    /// Job id the run belongs to.
    pub job_id: Option<i64>,
    /// Status code.
    pub status: RunStatus,
    /// Link to the run.
    pub href: Option<String>,
    /// Whether dbt Cloud can retry it natively (failed runs only).
    pub can_retry: bool,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Execution start.
    pub started_at: Option<Timestamp>,
    /// Finish time.
    pub finished_at: Option<Timestamp>,
    /// dbt Cloud's status message (for errors).
    pub status_message: Option<String>,
}

/// Whether the referenced credentials can be used.
#[derive(Clone, Debug, PartialEq)]
pub enum CredentialsState {
    /// Validated; a client is available.
    Ready {
        /// Account the credentials are for.
        account_id: i64,
    },
    /// Not usable yet; `stalled` when only a user change can fix it (e.g. namespace not allowed).
    NotReady {
        /// Why.
        reason: Reason,
        /// What to fix.
        message: String,
        /// Whether progress needs a user change.
        stalled: bool,
    },
}

/// Outcome of resolving `spec.job` to a job id.
#[derive(Clone, Debug, PartialEq)]
pub enum JobResolution {
    /// Exactly one job.
    Resolved(i64),
    /// No job matched, or the job id does not exist / is not visible to the token.
    NotFound(String),
    /// Several jobs matched the names.
    Ambiguous(String),
    /// The lookup failed in a way that may pass (rate limit, outage).
    Transient {
        /// Why.
        reason: Reason,
        /// Message for the condition.
        message: String,
    },
}

/// Result of searching dbt Cloud for the run of a pending trigger.
#[derive(Clone, Debug, PartialEq)]
pub enum PendingSearch {
    /// Not searched in this reconcile.
    NotSearched,
    /// Found the run.
    Found(ObservedRun),
    /// No run carries the token (yet); every run newer than the bound was read.
    NotFound,
    /// More runs of the job were created since the bound than one search reads
    /// ([`crate::controller::search::MAX_SEARCH_PAGES`] pages): none of those read carries the
    /// token, the others were not read. Whether the trigger arrived is unknown.
    Incomplete {
        /// Runs read.
        runs_read: u32,
    },
}

/// What to look for in dbt Cloud when a recorded trigger's outcome is unknown: the run of one
/// attempt, among the runs of its job.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSearch {
    /// Job the run belongs to.
    pub job_id: i64,
    /// Token the run's `trigger.cause` carries (full triggers).
    pub token: String,
    /// For native retries: the failed run being retried (the retry run names it in its
    /// `retrying_run_id`).
    pub retry_of_run_id: Option<i64>,
    /// The job's newest run id before the trigger was sent (see `PendingTrigger::after_run_id`).
    pub after_run_id: Option<i64>,
    /// When the trigger was recorded.
    pub requested_at: Timestamp,
}

impl RunSearch {
    /// The search for a recorded trigger of a job.
    pub fn for_pending(job_id: i64, pending: &PendingTrigger) -> Self {
        Self {
            job_id,
            token: pending.token.clone(),
            retry_of_run_id: pending.retry_of_run_id,
            after_run_id: pending.after_run_id,
            requested_at: pending.requested_at.0,
        }
    }

    /// Every run of this trigger has a larger id than this: the larger of `after_run_id` and
    /// `retry_of_run_id` (a retry run is newer than the run it retries). `None` only for intents
    /// recorded by earlier operator versions.
    pub fn lower_bound(&self) -> Option<i64> {
        self.after_run_id.max(self.retry_of_run_id)
    }
}

/// Details of a finished run, fetched once when it turns terminal.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunDetails {
    /// Steps of the run.
    pub steps: Vec<StepSummary>,
    /// Summary of `run_results.json`, when available.
    pub results: Option<ResultsSummary>,
    /// The failing step, when a step failed.
    pub failed_step: Option<FailedStep>,
}

/// The step of a run that failed, as shown in its message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FailedStep {
    /// Step name.
    pub name: String,
    /// Short tail of its log.
    pub log_tail: String,
}

/// Everything known about the world in this reconcile.
#[derive(Clone, Debug)]
pub struct Observation {
    /// Current time.
    pub now: Timestamp,
    /// State of the referenced credentials.
    pub credentials: CredentialsState,
    /// Job resolution, when it was performed in this reconcile.
    pub job: Option<JobResolution>,
    /// Latest state of `status.runId`, when known.
    pub current_run: Option<ObservedRun>,
    /// Search result for `status.pendingTrigger`.
    pub pending_search: PendingSearch,
    /// Details of `current_run`, once fetched.
    pub details: Option<RunDetails>,
    /// The job's newest run id before a trigger (0 when it has no runs), asked with
    /// [`Action::ObserveNewestRun`].
    pub newest_run_id: Option<i64>,
}

impl Observation {
    /// An observation with nothing gathered yet.
    pub fn new(now: Timestamp, credentials: CredentialsState) -> Self {
        Self {
            now,
            credentials,
            job: None,
            current_run: None,
            pending_search: PendingSearch::NotSearched,
            details: None,
            newest_run_id: None,
        }
    }
}

/// Why a run is being cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// `spec.cancel` was set.
    Requested,
    /// `spec.suspend` was set.
    Suspended,
    /// `timeoutSeconds` expired.
    Timeout,
}

/// How the shell must start an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum StartRequest {
    /// `POST /jobs/{job}/run/` with this cause (already ≤ 255 bytes and carrying the token).
    Trigger {
        /// Job id.
        job_id: i64,
        /// Cause to send.
        cause: String,
    },
    /// `POST /runs/{run}/retry/` (dbt Cloud's native retry of a failed run).
    Retry {
        /// Job id.
        job_id: i64,
        /// The failed run.
        run_id: i64,
    },
}

/// What the shell should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Question: resolve `spec.job` to an id, put the answer in `Observation::job`, decide again.
    ResolveJob,
    /// Question: search for the run of the pending trigger, fill `pending_search`, decide again.
    SearchPendingRun(RunSearch),
    /// Question: fetch the id of the job's newest run (0 when it has none) into
    /// `newest_run_id`, decide again. Asked before a trigger is recorded, so that its run can be
    /// found among the runs newer than that if the trigger's outcome is lost.
    ObserveNewestRun {
        /// Job id.
        job_id: i64,
    },
    /// Question: fetch the current state of a run into `current_run`, decide again.
    ObserveRun {
        /// Run id.
        run_id: i64,
    },
    /// Question: fetch steps and results of a finished run into `details`, decide again.
    FetchDetails {
        /// Run id.
        run_id: i64,
    },
    /// Effect: write the decision's status (recording `pendingTrigger`) with a resourceVersion
    /// precondition, then send the request; then write [`after_start`]'s status.
    StartAttempt(StartRequest),
    /// Effect: cancel the run, put the answer in `current_run`, decide again.
    CancelRun {
        /// Run id.
        run_id: i64,
        /// Why.
        reason: CancelReason,
    },
    /// Effect: delete the object (`ttlSecondsAfterFinished` expired).
    Delete,
    /// Write the status if it changed and requeue after the given delay (none: wait for a change).
    Settle {
        /// Requeue delay.
        requeue: Option<Duration>,
    },
}

/// Why a run waits (or is stuck): the reason and message its conditions carry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Blocker {
    reason: Reason,
    message: String,
}

impl Blocker {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The next action and the status that goes with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Next action.
    pub action: Action,
    /// Status to write (before the action's effect for `StartAttempt`).
    pub status: DbtCloudJobRunStatus,
    /// Events to publish once the status is written.
    pub events: Vec<EventNote>,
}

/// The marker that identifies an attempt in dbt Cloud (`trigger.cause`): derived from the object's
/// UID and the attempt number, so it is the same whoever computes it.
pub fn attempt_token(uid: &str, attempt: u32) -> String {
    format!("[dco:{uid}#{attempt}]")
}

/// The cause sent to dbt Cloud: the user's (or default) text, trimmed so that text + space + token
/// fits in 255 bytes; the token always survives.
pub fn cause_with_token(cause: &str, token: &str) -> String {
    let budget = MAX_CAUSE_LEN.saturating_sub(token.len() + 1);
    let text = conditions::truncate_str(cause.trim(), budget);
    if text.is_empty() {
        token.to_string()
    } else {
        format!("{text} {token}")
    }
}

/// Default cause naming the resource.
pub fn default_cause(namespace: &str, name: &str) -> String {
    format!("Triggered by dbt-cloud-operator: {namespace}/{name}")
}

/// Phase corresponding to a dbt Cloud status of an in-flight run.
fn in_flight_phase(status: RunStatus) -> RunPhase {
    match status {
        RunStatus::Queued => RunPhase::Queued,
        RunStatus::Starting => RunPhase::Starting,
        _ => RunPhase::Running,
    }
}

fn time(ts: Option<Timestamp>) -> Option<Time> {
    ts.map(Time)
}

/// Whole seconds a recorded trigger has certainly been waiting for its run at `now`. The recorded
/// time is kept to the second by the API server (it may have been up to a second later than
/// written), so the wait is counted from the second after it: never more than the real wait.
pub fn confirm_waited(pending: &PendingTrigger, now: Timestamp) -> i64 {
    (now.as_second() - pending.requested_at.0.as_second() - 1).max(0)
}

/// Whether a run of a recorded trigger that a search did not find may still appear: the sender
/// puts the request on the wire within one request timeout of recording it and gives up one
/// timeout later (see `job_run::start_attempt`), and dbt Cloud may process it after that; only
/// after the whole `ambiguity_window` is the trigger considered not sent.
pub fn trigger_may_still_appear(
    pending: &PendingTrigger,
    now: Timestamp,
    settings: &Settings,
) -> bool {
    confirm_waited(pending, now) < settings.ambiguity_window.as_secs() as i64
}

/// The object's name (or, before it has one, its `generateName`), as `kube`'s `name_any` gives it.
fn object_name(run: &DbtCloudJobRun) -> String {
    let meta = &run.metadata;
    meta.name
        .clone()
        .or_else(|| meta.generate_name.clone())
        .unwrap_or_default()
}

/// Decides the next step for a run. Pure: same inputs, same output.
pub fn decide(run: &DbtCloudJobRun, obs: &Observation, settings: &Settings) -> Decision {
    let mut d = Decider::new(run, obs, settings);
    let action = d.step();
    d.finish(action)
}

/// Status after a successful start request: the attempt is recorded, the pending trigger cleared.
pub fn after_start(
    status: &DbtCloudJobRunStatus,
    started: &ObservedRun,
    now: Timestamp,
) -> (DbtCloudJobRunStatus, EventNote) {
    let mut status = status.clone();
    let pending = status.pending_trigger.take();
    let (attempt, kind) = pending
        .map(|p| (p.attempt, p.kind))
        .unwrap_or((status.attempt_count + 1, AttemptKind::Full));
    record_attempt(&mut status, attempt, kind, started, now);
    bound_status(&mut status);
    let note = EventNote::normal(
        Reason::Triggered,
        format!(
            "Attempt {attempt}: dbt Cloud run {} {}",
            started.id,
            if kind == AttemptKind::RerunFailed {
                "retries the failed steps"
            } else {
                "triggered"
            }
        ),
    );
    (status, note)
}

/// [`after_start`], settled as the next reconcile would settle it (phase, conditions and message
/// of the started run), so that the outcome is recorded in one write and not rewritten right
/// after. `credentials` are those the start was made with.
pub fn after_start_settled(
    run: &DbtCloudJobRun,
    status: &DbtCloudJobRunStatus,
    started: &ObservedRun,
    credentials: CredentialsState,
    settings: &Settings,
    now: Timestamp,
) -> (DbtCloudJobRunStatus, EventNote) {
    let (recorded, note) = after_start(status, started, now);
    let mut next = run.clone();
    next.status = Some(recorded.clone());
    let obs = Observation {
        current_run: Some(started.clone()),
        ..Observation::new(now, credentials)
    };
    let d = decide(&next, &obs, settings);
    match d.action {
        Action::Settle { .. } => (d.status, note),
        _ => (recorded, note),
    }
}

/// Status after a start request that dbt Cloud definitely refused (no run was created): the intent
/// is void. A `permanent` refusal (400, or 404 for the job) fails the run; otherwise the run waits
/// and the start is decided again later. Returns the status and the Event to publish (with the
/// given reason).
pub fn after_start_rejected(
    run: &DbtCloudJobRun,
    status: &DbtCloudJobRunStatus,
    reason: Reason,
    message: &str,
    permanent: bool,
    now: Timestamp,
) -> (DbtCloudJobRunStatus, EventNote) {
    let mut status = status.clone();
    status.pending_trigger = None;
    let message = conditions::truncate_message(message);
    status.status_message = Some(message.clone());
    let mut c = Conditions::new(&mut status.conditions, run.metadata.generation, now);
    if permanent {
        set_unsuccessful(&mut c, reason, &message);
        status.phase = RunPhase::Failed;
        status.finished_at = Some(Time(now));
        if let Some(start) = &status.started_at {
            status.duration_seconds = Some((now.as_second() - start.0.as_second()).max(0));
        }
    } else {
        set_unfinished(&mut c, reason, &message, false);
    }
    bound_status(&mut status);
    (status, EventNote::warning(reason, message))
}

/// How a start request (trigger or native retry) failed, as the lifecycle needs to know it. The
/// shell builds it from the client's error; which failures are final is decided here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The request may have reached dbt Cloud and created a run (a timeout, a 5xx, a lost or
    /// unreadable answer): the outcome is unknown.
    Ambiguous,
    /// The request was not put on the wire before its deadline: certainly nothing was created.
    NotSent,
    /// dbt Cloud answered that the job does not exist (404).
    JobNotFound,
    /// dbt Cloud refused the request as invalid (400), or it was refused before sending.
    Invalid,
    /// dbt Cloud refused the request in a way that may pass (rate limit, permissions, …).
    Refused {
        /// The error's own reason.
        reason: Reason,
        /// When dbt Cloud asked to be called again, if it did.
        retry_after: Option<Duration>,
    },
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// After exactly this delay.
    After(Duration),
    /// After about this delay (jittered by the shell).
    Jittered(Duration),
    /// Only when the object changes.
    AwaitChange,
}

/// What to do after a failed start request: the status to write (none: keep the recorded intent),
/// the Event to publish, and when to decide again.
#[derive(Clone, Debug, PartialEq)]
pub struct AfterStartFailed {
    /// Status to write (with the intent voided), when the start certainly did not happen.
    pub status: Option<DbtCloudJobRunStatus>,
    /// Event to publish.
    pub event: Option<EventNote>,
    /// When to decide again.
    pub requeue: Requeue,
}

/// Decides what a failed start request means. `error` is the client's error as text (no secrets).
///
/// * An ambiguous failure keeps the intent: the next reconcile searches for its run before
///   deciding anything (`TriggerOutcomeUnknown` Event, requeue after `confirm_retry`).
/// * A request not sent voids the intent and the start is decided again at once (reason
///   `TriggerNotSent`, no Event).
/// * A refusal voids the intent: 404 (`JobNotFound`) and 400 (`TriggerRejected`) fail the run;
///   any other refusal keeps it waiting under the error's reason and retries after `Retry-After`
///   or `credentials_retry`.
pub fn after_start_failed(
    run: &DbtCloudJobRun,
    status: &DbtCloudJobRunStatus,
    failure: &StartFailure,
    error: &str,
    settings: &Settings,
    now: Timestamp,
) -> AfterStartFailed {
    let (reason, permanent, retry_after) = match failure {
        StartFailure::Ambiguous => {
            return AfterStartFailed {
                status: None,
                event: Some(EventNote::warning(
                    Reason::TriggerOutcomeUnknown,
                    format!(
                        "{error}; looking for the run before deciding whether to trigger again"
                    ),
                )),
                requeue: Requeue::After(settings.confirm_retry),
            };
        }
        StartFailure::NotSent => {
            let attempt = status.pending_trigger.as_ref().map_or(0, |p| p.attempt);
            let (status, _) = after_start_rejected(
                run,
                status,
                Reason::TriggerNotSent,
                &format!("Attempt {attempt} was not sent ({error}); it is tried again"),
                false,
                now,
            );
            return AfterStartFailed {
                status: Some(status),
                event: None,
                requeue: Requeue::Jittered(Duration::from_secs(1)),
            };
        }
        StartFailure::JobNotFound => (Reason::JobNotFound, true, None),
        StartFailure::Invalid => (Reason::TriggerRejected, true, None),
        StartFailure::Refused {
            reason,
            retry_after,
        } => (*reason, false, *retry_after),
    };
    let (status, event) = after_start_rejected(
        run,
        status,
        reason,
        &format!("dbt Cloud refused the trigger: {error}"),
        permanent,
        now,
    );
    AfterStartFailed {
        status: Some(status),
        event: Some(event),
        requeue: if permanent {
            Requeue::AwaitChange
        } else {
            Requeue::Jittered(retry_after.unwrap_or(settings.credentials_retry))
        },
    }
}

/// The run as a cancel request's answer shows it: dbt Cloud may answer with the run still
/// "cancelling" (in flight); an accepted cancel counts as done, so it is `Cancelled`.
pub fn after_cancel_accepted(mut answer: ObservedRun) -> ObservedRun {
    if !answer.status.is_terminal() {
        answer.status = RunStatus::Cancelled;
    }
    answer
}

/// What the shell gathered for the deletion of a run (see [`cleanup`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DeletionObservation {
    /// Current time.
    pub now: Timestamp,
    /// Whether the run's credentials are usable (a client is available).
    pub credentials_ready: bool,
    /// Search result for `status.pendingTrigger` (asked with [`Cleanup::Search`]).
    pub pending_search: PendingSearch,
    /// Further runs the search found carrying the same token.
    pub duplicates: Vec<i64>,
}

impl DeletionObservation {
    /// An observation with nothing searched yet.
    pub fn new(now: Timestamp, credentials_ready: bool) -> Self {
        Self {
            now,
            credentials_ready,
            pending_search: PendingSearch::NotSearched,
            duplicates: Vec::new(),
        }
    }
}

/// What to do for a run being deleted (its finalizer is ours).
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup {
    /// Question: search for the run of the pending trigger, fill `pending_search` and
    /// `duplicates`, decide again.
    Search(RunSearch),
    /// Keep the finalizer and try again after `retry_in`.
    Wait {
        /// What the deletion waits for.
        message: String,
        /// When to try again.
        retry_in: Duration,
    },
    /// Publish `events`, cancel these dbt Cloud runs (publishing [`cancelled_on_delete`] for
    /// each), then let the object go.
    Release {
        /// Runs to cancel.
        cancel: Vec<i64>,
        /// Events to publish first.
        events: Vec<EventNote>,
    },
}

impl Cleanup {
    fn release(cancel: Vec<i64>) -> Self {
        Cleanup::Release {
            cancel,
            events: Vec::new(),
        }
    }

    fn release_with(event: EventNote) -> Self {
        Cleanup::Release {
            cancel: Vec::new(),
            events: vec![event],
        }
    }
}

/// Decides the deletion of a run with our finalizer. Pure.
///
/// Nothing is cancelled for a finished run, nor with `cancelOnDelete: false`. After
/// `deletion_timeout` the object is let go whatever the state (`CancelAbandoned`). Without usable
/// credentials the deletion waits. A recorded trigger is first searched for: its run (and
/// duplicates) is cancelled; while a run of it may still appear the deletion waits; when one
/// search cannot tell, nothing is cancelled (`TriggerUnconfirmed`). Otherwise `status.runId` is
/// cancelled.
pub fn cleanup(
    run: &DbtCloudJobRun,
    obs: &DeletionObservation,
    settings: &Settings,
    deletion_timeout: Duration,
) -> Cleanup {
    let Some(status) = run.status.as_ref() else {
        return Cleanup::release(Vec::new());
    };
    let in_flight = !status.phase.is_terminal()
        && (status.run_id.is_some() || status.pending_trigger.is_some());
    if !in_flight || !run.spec.cancel_on_delete {
        return Cleanup::release(Vec::new());
    }
    let deleted_at = run
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(obs.now, |t| t.0);
    let waited = obs.now.as_second() - deleted_at.as_second();
    let limit = deletion_timeout.as_secs() as i64;
    if waited >= limit {
        return Cleanup::release_with(EventNote::warning(
            Reason::CancelAbandoned,
            format!("Could not cancel the dbt Cloud run within {limit}s of deletion; letting go. Check it in dbt Cloud"),
        ));
    }
    if !obs.credentials_ready {
        return Cleanup::Wait {
            message: "the credentials are not ready to cancel the dbt Cloud run".into(),
            retry_in: settings.credentials_retry.min(Duration::from_secs(10)),
        };
    }
    let job_id = status.job_id.or(run.spec.job.id);
    let (Some(pending), Some(job_id)) = (&status.pending_trigger, job_id) else {
        return Cleanup::release(status.run_id.into_iter().collect());
    };
    match &obs.pending_search {
        PendingSearch::NotSearched => Cleanup::Search(RunSearch::for_pending(job_id, pending)),
        PendingSearch::Found(found) => Cleanup::release(
            std::iter::once(found.id)
                .chain(obs.duplicates.iter().copied())
                .collect(),
        ),
        PendingSearch::Incomplete { runs_read } => Cleanup::release_with(EventNote::warning(
            Reason::TriggerUnconfirmed,
            format!("Could not tell whether attempt {} reached dbt Cloud (more than {runs_read} newer runs of job {job_id}), so nothing was cancelled. Look in dbt Cloud for a run whose cause contains {}", pending.attempt, pending.token),
        )),
        PendingSearch::NotFound if trigger_may_still_appear(pending, obs.now, settings) => {
            Cleanup::Wait {
                message: format!(
                    "confirming whether attempt {} reached dbt Cloud before cancelling it",
                    pending.attempt
                ),
                retry_in: settings.confirm_retry,
            }
        }
        PendingSearch::NotFound => Cleanup::release(Vec::new()),
    }
}

/// The Event for a dbt Cloud run cancelled because its object was deleted (also when dbt Cloud no
/// longer knows the run).
pub fn cancelled_on_delete(run_id: i64) -> EventNote {
    EventNote::normal(
        Reason::Cancelled,
        format!("Cancelled dbt Cloud run {run_id} because the object was deleted (cancelOnDelete)"),
    )
}

/// Conditions of a run that ended unsuccessfully (`Failed`, `Cancelled`, `TimedOut`).
fn set_unsuccessful(c: &mut Conditions<'_>, reason: Reason, message: &str) {
    c.set(conditions::READY, false, reason, message);
    c.set(conditions::FAILED, true, reason, message);
    c.remove(conditions::COMPLETE);
    c.set(conditions::RECONCILING, false, Reason::Finished, message);
    c.set(conditions::STALLED, true, reason, message);
}

/// Conditions of a run still working (or waiting): `stalled` when only a user change helps.
fn set_unfinished(c: &mut Conditions<'_>, reason: Reason, message: &str, stalled: bool) {
    c.set(conditions::READY, false, reason, message);
    c.set(conditions::RECONCILING, !stalled, reason, message);
    c.set(conditions::STALLED, stalled, reason, message);
}

/// The dbt Cloud status an attempt last reported. Status keeps it as display text
/// ([`RunStatus::humanized`]); `None` for a status whose code is not kept (`Unknown`).
pub fn attempt_status(attempt: &RunAttempt) -> Option<RunStatus> {
    RunStatus::from_humanized(&attempt.status)
}

/// Whether an attempt's last reported status is `Error`.
fn attempt_failed(attempt: &RunAttempt) -> bool {
    attempt_status(attempt) == Some(RunStatus::Error)
}

/// Records an attempt's status as status shows it.
fn set_attempt_status(attempt: &mut RunAttempt, status: RunStatus) {
    attempt.status = status.humanized().to_string();
}

/// Keeps status far below etcd's 1.5 MiB object limit whatever dbt Cloud reports and however long
/// the object lives: lists are bounded ([`MAX_STATUS_STEPS`], [`MAX_STATUS_ATTEMPTS`],
/// [`MAX_FAILED_NODES`]) with what was left out counted in `stepsOmitted`, `attemptsOmitted` and
/// `results.failedNodesOmitted`; strings are bounded ([`MAX_NAME_LEN`], [`MAX_URL_LEN`],
/// [`conditions::MAX_MESSAGE_LEN`]) and end with `…` when cut. Idempotent. Every status the
/// lifecycle returns has been through it.
pub fn bound_status(status: &mut DbtCloudJobRunStatus) {
    let n = status.steps.len();
    if n > MAX_STATUS_STEPS {
        let tail = MAX_STATUS_STEPS - STATUS_STEPS_HEAD;
        status.steps.drain(STATUS_STEPS_HEAD..n - tail);
        let dropped = u32::try_from(n - MAX_STATUS_STEPS).unwrap_or(u32::MAX);
        status.steps_omitted = Some(status.steps_omitted.unwrap_or(0).saturating_add(dropped));
    }
    for step in &mut status.steps {
        cap(&mut step.name, MAX_NAME_LEN);
        cap(&mut step.status, MAX_NAME_LEN);
    }

    let n = status.attempts.len();
    status.attempt_count = status
        .attempt_count
        .max(u32::try_from(n).unwrap_or(u32::MAX));
    if n > MAX_STATUS_ATTEMPTS {
        let mut keep = vec![false; n];
        keep[n - 1] = true;
        let mut kept = 1;
        // Failed attempts first (the retry budget counts them), then the most recent others.
        for only_failed in [true, false] {
            for i in (0..n).rev() {
                if kept == MAX_STATUS_ATTEMPTS {
                    break;
                }
                if !keep[i] && (!only_failed || attempt_failed(&status.attempts[i])) {
                    keep[i] = true;
                    kept += 1;
                }
            }
        }
        let mut flags = keep.into_iter();
        status.attempts.retain(|_| flags.next().unwrap_or(false));
    }
    let omitted = status
        .attempt_count
        .saturating_sub(u32::try_from(status.attempts.len()).unwrap_or(u32::MAX));
    status.attempts_omitted = (omitted > 0).then_some(omitted);
    for a in &mut status.attempts {
        cap(&mut a.status, MAX_NAME_LEN);
        if let Some(url) = &mut a.url {
            cap(url, MAX_URL_LEN);
        }
    }

    if let Some(results) = &mut status.results {
        let n = results.failed_nodes.len();
        if n > MAX_FAILED_NODES {
            results.failed_nodes.truncate(MAX_FAILED_NODES);
            let dropped = u32::try_from(n - MAX_FAILED_NODES).unwrap_or(u32::MAX);
            results.failed_nodes_omitted = Some(
                results
                    .failed_nodes_omitted
                    .unwrap_or(0)
                    .saturating_add(dropped),
            );
        }
        for node in &mut results.failed_nodes {
            cap(node, MAX_NAME_LEN);
        }
    }
    if let Some(url) = &mut status.run_url {
        cap(url, MAX_URL_LEN);
    }
    if let Some(m) = &mut status.status_message {
        cap(m, conditions::MAX_MESSAGE_LEN);
    }
    for c in &mut status.conditions {
        cap(&mut c.message, conditions::MAX_MESSAGE_LEN);
        cap(&mut c.reason, MAX_NAME_LEN);
    }
}

/// Cuts a string to `max` bytes (marked with `…`), only when it is longer.
fn cap(value: &mut String, max: usize) {
    if value.len() > max {
        *value = conditions::truncate_str(value, max);
    }
}

fn record_attempt(
    status: &mut DbtCloudJobRunStatus,
    attempt: u32,
    kind: AttemptKind,
    run: &ObservedRun,
    now: Timestamp,
) {
    if kind == AttemptKind::RerunFailed {
        // dbt Cloud retries only a failed run: the attempts before this one failed, even when
        // their end was not recorded (a crash, or a concurrent write, between the retry's intent
        // and its outcome).
        for a in status.attempts.iter_mut().filter(|a| a.attempt < attempt) {
            if a.finished_at.is_none() && !attempt_failed(a) {
                set_attempt_status(a, RunStatus::Error);
            }
        }
    }
    if !status.attempts.iter().any(|a| a.run_id == run.id) {
        // Count from before any bounding: `attempts` may list fewer than were made.
        status.attempt_count = status
            .attempt_count
            .max(u32::try_from(status.attempts.len()).unwrap_or(u32::MAX))
            .saturating_add(1);
        status.attempts.push(RunAttempt {
            attempt,
            run_id: run.id,
            url: run.href.clone(),
            kind,
            status: run.status.humanized().to_string(),
            created_at: time(run.created_at),
            started_at: time(run.started_at),
            finished_at: time(run.finished_at),
        });
    }
    status.run_id = Some(run.id);
    status.run_url = run.href.clone();
    status.steps.clear();
    status.steps_omitted = None;
    status.results = None;
    if status.started_at.is_none() {
        status.started_at = Some(Time(run.created_at.unwrap_or(now)));
    }
    if !run.status.is_terminal() {
        status.phase = in_flight_phase(run.status);
    }
}

struct Decider<'a> {
    run: &'a DbtCloudJobRun,
    obs: &'a Observation,
    settings: &'a Settings,
    old_phase: RunPhase,
    status: DbtCloudJobRunStatus,
    events: Vec<EventNote>,
    stalled: Option<Blocker>,
    waiting: Option<Blocker>,
}

impl<'a> Decider<'a> {
    fn new(run: &'a DbtCloudJobRun, obs: &'a Observation, settings: &'a Settings) -> Self {
        let status = run.status.clone().unwrap_or_default();
        Self {
            run,
            obs,
            settings,
            old_phase: status.phase,
            status,
            events: Vec::new(),
            stalled: None,
            waiting: None,
        }
    }

    fn now(&self) -> Timestamp {
        self.obs.now
    }

    fn job_id(&self) -> Option<i64> {
        self.status.job_id.or(self.run.spec.job.id)
    }

    fn uid(&self) -> String {
        self.run.metadata.uid.clone().unwrap_or_default()
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.run.spec.poll_interval_seconds.max(1) as u64)
    }

    /// The main decision, in priority order.
    fn step(&mut self) -> Action {
        let spec = &self.run.spec;
        if self.status.phase.is_terminal() {
            return self.after_terminal();
        }
        if let CredentialsState::Ready { account_id } = &self.obs.credentials {
            self.status.account_id = Some(*account_id);
        }
        // 1. A recorded trigger without a known run: find it before anything else.
        if let Some(pending) = self.status.pending_trigger.clone() {
            if let Some(action) = self.resolve_pending(&pending) {
                return action;
            }
        }
        let in_flight = self.status.run_id.is_some() && self.current_is_in_flight();
        // 2. User cancel, suspend, timeout.
        if spec.cancel {
            return self.stop(CancelReason::Requested, in_flight);
        }
        if spec.suspend {
            return self.stop(CancelReason::Suspended, in_flight);
        }
        conditions::remove_condition(&mut self.status.conditions, SUSPENDED);
        if self.timed_out() {
            return self.stop(CancelReason::Timeout, in_flight && spec.cancel_on_timeout);
        }
        // 3. Follow the current run.
        if let Some(run_id) = self.status.run_id {
            let Some(current) = self.current(run_id) else {
                return self
                    .need_credentials()
                    .unwrap_or(Action::ObserveRun { run_id });
            };
            self.update_attempt(&current);
            if !current.status.is_terminal() {
                if let RunStatus::Unknown(code) = current.status {
                    self.unknown_status(&current, code);
                } else {
                    self.status.phase = in_flight_phase(current.status);
                    self.status.status_message = Some(format!(
                        "dbt Cloud run {} is {}",
                        current.id,
                        current.status.humanized()
                    ));
                }
                return Action::Settle {
                    requeue: Some(self.poll_interval()),
                };
            }
            let Some(details) = self.obs.details.clone() else {
                return Action::FetchDetails { run_id };
            };
            self.status.steps = details.steps.clone();
            self.status.steps_omitted = None;
            self.status.results = details.results.clone();
            return self.after_finished_run(&current, &details);
        }
        // 4. Nothing triggered yet (or resumed after suspend): start the first attempt.
        self.start_attempt(AttemptKind::Full, None)
    }

    /// A status code this operator does not know (not 1, 2, 3, 10, 20 or 30): the run is still
    /// followed, in its last in-flight phase, with the reason `UnknownRunStatus` naming the code,
    /// and a Warning Event for each new code. `timeoutSeconds` applies as to any run.
    fn unknown_status(&mut self, run: &ObservedRun, code: i64) {
        const REASON: Reason = Reason::UnknownRunStatus;
        if !matches!(
            self.status.phase,
            RunPhase::Queued | RunPhase::Starting | RunPhase::Running
        ) {
            self.status.phase = RunPhase::Running;
        }
        let until = match self.run.spec.timeout_seconds {
            Some(limit) => {
                format!("until it reports a known code or timeoutSeconds ({limit}s) expires")
            }
            None => "until it reports a known code (set timeoutSeconds to bound the wait)".into(),
        };
        let message = format!(
            "dbt Cloud run {} reports status code {code}, which this operator does not know (1 Queued, 2 Starting, 3 Running, 10 Success, 20 Error, 30 Cancelled); still following it {until}",
            run.id
        );
        // The first unknown code is announced with the condition's new reason (in `finish`); a
        // different code under the same reason needs its own Event.
        let old = conditions::find(&self.status.conditions, conditions::READY);
        if old.is_some_and(|c| {
            c.reason == REASON && c.message != conditions::truncate_message(&message)
        }) {
            self.events
                .push(EventNote::warning(REASON, message.clone()));
        }
        self.waiting = Some(Blocker::new(REASON, message.clone()));
        self.status.status_message = Some(message);
    }

    /// The latest observation of `run_id`: polled, or found by the pending-trigger search.
    fn current(&self, run_id: i64) -> Option<ObservedRun> {
        let found = match &self.obs.pending_search {
            PendingSearch::Found(run) => Some(run),
            _ => None,
        };
        self.obs
            .current_run
            .as_ref()
            .filter(|r| r.id == run_id)
            .or(found.filter(|r| r.id == run_id))
            .cloned()
    }

    fn current_is_in_flight(&self) -> bool {
        match self.status.run_id.and_then(|id| self.current(id)) {
            Some(r) => !r.status.is_terminal(),
            // Unknown: trust the last written phase.
            _ => !self.status.phase.is_terminal() && self.status.phase != RunPhase::Pending,
        }
    }

    fn timed_out(&self) -> bool {
        match (self.run.spec.timeout_seconds, &self.status.started_at) {
            (Some(limit), Some(started)) => self.now().as_second() - started.0.as_second() >= limit,
            _ => false,
        }
    }

    fn need_credentials(&mut self) -> Option<Action> {
        match &self.obs.credentials {
            CredentialsState::Ready { .. } => None,
            CredentialsState::NotReady {
                reason,
                message,
                stalled,
            } => {
                let msg = format!("Waiting for credentials: {message}");
                let blocker = Blocker::new(*reason, msg.clone());
                if *stalled {
                    self.stalled = Some(blocker);
                } else {
                    self.waiting = Some(blocker);
                }
                self.status.status_message = Some(msg);
                Some(Action::Settle {
                    requeue: Some(self.settings.credentials_retry),
                })
            }
        }
    }

    fn resolve_pending(&mut self, pending: &PendingTrigger) -> Option<Action> {
        if let Some(action) = self.need_credentials() {
            return Some(action);
        }
        let job_id = self.job_id()?;
        match &self.obs.pending_search {
            PendingSearch::NotSearched => Some(Action::SearchPendingRun(RunSearch::for_pending(
                job_id, pending,
            ))),
            PendingSearch::Found(found) => {
                self.status.pending_trigger = None;
                record_attempt(
                    &mut self.status,
                    pending.attempt,
                    pending.kind,
                    found,
                    self.obs.now,
                );
                self.events.push(EventNote::normal(Reason::Adopted,
                    format!(
                        "Attempt {}: found dbt Cloud run {} from an earlier trigger whose outcome was not recorded; following it instead of triggering again",
                        pending.attempt, found.id
                    ),
                ));
                None
            }
            PendingSearch::NotFound => {
                let waited = confirm_waited(pending, self.now());
                let window = self.settings.ambiguity_window.as_secs() as i64;
                if waited < window {
                    self.status.status_message = Some(format!(
                        "Confirming whether attempt {} reached dbt Cloud ({waited}s of {window}s)",
                        pending.attempt
                    ));
                    let left = Duration::from_secs((window - waited).max(1) as u64);
                    return Some(Action::Settle {
                        requeue: Some(left.min(self.settings.confirm_retry)),
                    });
                }
                // Not sent: the intent is void. Either stop, or send it again with the same token.
                self.status.pending_trigger = None;
                if self.run.spec.cancel || self.run.spec.suspend || self.timed_out() {
                    return None;
                }
                self.events.push(EventNote::warning(Reason::TriggerNotFound,
                    format!(
                        "Attempt {}: no dbt Cloud run appeared within {window}s of the recorded trigger; sending it again",
                        pending.attempt
                    ),
                ));
                // Same bound: a late run of the first send is still found (and cancelled as a
                // duplicate) by the next search.
                Some(self.start_with(
                    pending.attempt,
                    pending.kind,
                    pending.retry_of_run_id,
                    job_id,
                    pending.after_run_id,
                ))
            }
            PendingSearch::Incomplete { runs_read } => {
                let message = format!(
                    "Attempt {}: cannot confirm whether the trigger reached dbt Cloud: more than {runs_read} runs of job {job_id} were created after it was recorded, more than one search reads. It is not sent again. Look in dbt Cloud for a run whose cause contains {}; set spec.cancel to give up, or delete this object",
                    pending.attempt, pending.token
                );
                if self.run.spec.cancel || self.run.spec.suspend || self.timed_out() {
                    self.status.pending_trigger = None;
                    self.events.push(EventNote::warning(
                        Reason::TriggerUnconfirmed,
                        format!("{message}. A run of it, if there is one, was not cancelled"),
                    ));
                    return None;
                }
                // Only a user can move this on; the search is repeated when the object changes.
                self.stalled = Some(Blocker::new(Reason::TriggerUnconfirmed, message.clone()));
                self.status.status_message = Some(message);
                Some(Action::Settle { requeue: None })
            }
        }
    }

    fn stop(&mut self, reason: CancelReason, in_flight: bool) -> Action {
        if in_flight {
            if let Some(run_id) = self.status.run_id {
                if let Some(action) = self.need_credentials() {
                    return action;
                }
                // After a cancel the shell puts dbt Cloud's answer in `current_run`.
                let answered = self.current(run_id).is_some_and(|r| r.status.is_terminal());
                if !answered {
                    return Action::CancelRun { run_id, reason };
                }
            }
        }
        if let Some(current) = self.status.run_id.and_then(|id| self.current(id)) {
            self.update_attempt(&current);
        }
        match reason {
            CancelReason::Requested => {
                self.events.push(EventNote::normal(
                    Reason::Cancelled,
                    "Cancelled as requested by spec.cancel",
                ));
                self.finish_phase(RunPhase::Cancelled, "Cancelled by spec.cancel".into())
            }
            CancelReason::Timeout => {
                let limit = self.run.spec.timeout_seconds.unwrap_or_default();
                let what = if in_flight {
                    "the dbt Cloud run was cancelled"
                } else if self.run.spec.cancel_on_timeout {
                    "no dbt Cloud run was in flight"
                } else {
                    "the dbt Cloud run was left running (cancelOnTimeout: false)"
                };
                self.events.push(EventNote::warning(
                    Reason::TimedOut,
                    format!("timeoutSeconds ({limit}s) expired; {what}"),
                ));
                self.finish_phase(
                    RunPhase::TimedOut,
                    format!("timeoutSeconds ({limit}s) expired"),
                )
            }
            CancelReason::Suspended => {
                if in_flight {
                    self.events.push(EventNote::normal(Reason::Suspended,
                        "spec.suspend is set: the dbt Cloud run was cancelled; a new attempt starts on resume",
                    ));
                }
                self.status.phase = RunPhase::Pending;
                self.status.run_id = None;
                self.status.run_url = None;
                self.status.status_message = Some("Suspended by spec.suspend".into());
                Conditions::new(
                    &mut self.status.conditions,
                    self.run.metadata.generation,
                    self.obs.now,
                )
                .set(
                    SUSPENDED,
                    true,
                    Reason::Suspended,
                    "spec.suspend is true; nothing runs until it is false",
                );
                Action::Settle { requeue: None }
            }
        }
    }

    fn start_attempt(&mut self, kind: AttemptKind, retry_of: Option<i64>) -> Action {
        if let Some(action) = self.need_credentials() {
            return action;
        }
        let job_id = match self.job_id() {
            Some(id) => id,
            None => match &self.obs.job {
                None => return Action::ResolveJob,
                Some(JobResolution::Resolved(id)) => {
                    self.status.job_id = Some(*id);
                    *id
                }
                Some(JobResolution::NotFound(msg)) => {
                    self.events
                        .push(EventNote::warning(Reason::JobNotFound, msg.clone()));
                    return self.fail_with(Reason::JobNotFound, msg.clone());
                }
                Some(JobResolution::Ambiguous(msg)) => {
                    self.events
                        .push(EventNote::warning(Reason::JobNameAmbiguous, msg.clone()));
                    return self.fail_with(Reason::JobNameAmbiguous, msg.clone());
                }
                Some(JobResolution::Transient { reason, message }) => {
                    self.waiting = Some(Blocker::new(*reason, message.clone()));
                    self.status.status_message = Some(message.clone());
                    return Action::Settle {
                        requeue: Some(self.settings.credentials_retry),
                    };
                }
            },
        };
        self.status.job_id = Some(job_id);
        // The lower bound of the search for this trigger's run, should its outcome be lost.
        let after_run_id = match (kind, retry_of) {
            (AttemptKind::RerunFailed, Some(failed)) => failed,
            _ => match self.obs.newest_run_id {
                Some(id) => id,
                None => return Action::ObserveNewestRun { job_id },
            },
        };
        let attempt = self.next_attempt();
        self.start_with(attempt, kind, retry_of, job_id, Some(after_run_id))
    }

    fn start_with(
        &mut self,
        attempt: u32,
        kind: AttemptKind,
        retry_of: Option<i64>,
        job_id: i64,
        after_run_id: Option<i64>,
    ) -> Action {
        let token = attempt_token(&self.uid(), attempt);
        self.status.pending_trigger = Some(PendingTrigger {
            attempt,
            token: token.clone(),
            kind,
            retry_of_run_id: retry_of,
            after_run_id,
            requested_at: Time(self.now()),
        });
        if self.status.started_at.is_none() {
            self.status.started_at = Some(Time(self.now()));
        }
        self.status.phase = RunPhase::Pending;
        self.status.status_message = Some(format!("Triggering attempt {attempt}"));
        let request = match (kind, retry_of) {
            (AttemptKind::RerunFailed, Some(run_id)) => StartRequest::Retry { job_id, run_id },
            _ => {
                let text = self
                    .run
                    .spec
                    .trigger
                    .as_ref()
                    .and_then(|t| t.cause.clone())
                    .unwrap_or_else(|| {
                        default_cause(
                            self.run.metadata.namespace.as_deref().unwrap_or_default(),
                            &object_name(self.run),
                        )
                    });
                StartRequest::Trigger {
                    job_id,
                    cause: cause_with_token(&text, &token),
                }
            }
        };
        Action::StartAttempt(request)
    }

    /// Number of the next attempt (attempt numbers only grow).
    fn next_attempt(&self) -> u32 {
        self.status
            .attempts
            .iter()
            .map(|a| a.attempt)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn update_attempt(&mut self, run: &ObservedRun) {
        if let Some(a) = self.status.attempts.iter_mut().find(|a| a.run_id == run.id) {
            set_attempt_status(a, run.status);
            a.url = run.href.clone().or(a.url.take());
            a.created_at = time(run.created_at).or(a.created_at.take());
            a.started_at = time(run.started_at).or(a.started_at.take());
            a.finished_at = time(run.finished_at).or(a.finished_at.take());
        }
        if run.href.is_some() {
            self.status.run_url = run.href.clone();
        }
    }

    /// Attempts that count against the retry budget: those that failed, and earlier attempts whose
    /// end was never recorded (a later attempt exists, so they ended; after a crash between a
    /// retry's intent and its outcome their last status may still say `Queued`). Counting those
    /// errs towards fewer retries, never more.
    fn failed_attempts(&self) -> u32 {
        let latest = self.next_attempt() - 1;
        self.status
            .attempts
            .iter()
            .filter(|a| {
                attempt_failed(a)
                    || (a.attempt < latest
                        && !matches!(
                            attempt_status(a),
                            Some(RunStatus::Success | RunStatus::Cancelled)
                        ))
            })
            .count() as u32
    }

    fn after_finished_run(&mut self, run: &ObservedRun, details: &RunDetails) -> Action {
        // The run's own finish time, so durations match dbt Cloud's.
        if let Some(finished) = run.finished_at {
            self.status.finished_at = Some(Time(finished));
        }
        match run.status {
            RunStatus::Success => {
                self.events.push(EventNote::normal(
                    Reason::Succeeded,
                    format!("dbt Cloud run {} succeeded", run.id),
                ));
                self.finish_phase(
                    RunPhase::Succeeded,
                    format!("dbt Cloud run {} succeeded", run.id),
                )
            }
            RunStatus::Cancelled => {
                self.events.push(EventNote::warning(
                    Reason::Cancelled,
                    format!("dbt Cloud run {} was cancelled in dbt Cloud", run.id),
                ));
                self.finish_phase(
                    RunPhase::Cancelled,
                    format!("dbt Cloud run {} was cancelled in dbt Cloud", run.id),
                )
            }
            _ => {
                let step = details
                    .failed_step
                    .as_ref()
                    .map(|step| {
                        let name = conditions::truncate_str(&step.name, MAX_NAME_LEN);
                        format!(" at step {name}: {}", step.log_tail)
                    })
                    .unwrap_or_else(|| {
                        run.status_message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    });
                let message =
                    conditions::truncate_message(&format!("dbt Cloud run {} failed{step}", run.id));
                let policy = &self.run.spec.retry;
                if self.failed_attempts() < policy.max_attempts {
                    let next = self.next_attempt();
                    self.events
                        .push(EventNote::warning(Reason::RunFailed, message.clone()));
                    let kind = match policy.strategy {
                        RetryStrategy::RerunFailed if run.can_retry => AttemptKind::RerunFailed,
                        RetryStrategy::RerunFailed => {
                            self.events.push(EventNote::normal(Reason::RetryFallbackFull,
                                format!("dbt Cloud cannot retry run {} natively; triggering the whole job for attempt {next}", run.id),
                            ));
                            AttemptKind::Full
                        }
                        RetryStrategy::Full => AttemptKind::Full,
                    };
                    self.events.push(EventNote::normal(
                        Reason::Retrying,
                        format!(
                            "Starting attempt {next} of {} ({kind:?})",
                            policy.max_attempts
                        ),
                    ));
                    let retry_of = (kind == AttemptKind::RerunFailed).then_some(run.id);
                    self.status.finished_at = None;
                    return self.start_attempt(kind, retry_of);
                }
                self.events
                    .push(EventNote::warning(Reason::Failed, message.clone()));
                self.finish_phase(RunPhase::Failed, message)
            }
        }
    }

    fn fail_with(&mut self, reason: Reason, message: String) -> Action {
        self.stalled = Some(Blocker::new(reason, message.clone()));
        self.finish_phase(RunPhase::Failed, message)
    }

    fn finish_phase(&mut self, phase: RunPhase, message: String) -> Action {
        self.status.phase = phase;
        self.status.status_message = Some(conditions::truncate_message(&message));
        self.status.pending_trigger = None;
        if self.status.finished_at.is_none() {
            self.status.finished_at = Some(Time(self.now()));
        }
        if let (Some(start), Some(end)) = (&self.status.started_at, &self.status.finished_at) {
            self.status.duration_seconds = Some((end.0.as_second() - start.0.as_second()).max(0));
        }
        self.after_terminal()
    }

    fn after_terminal(&mut self) -> Action {
        let Some(ttl) = self.run.spec.ttl_seconds_after_finished else {
            return Action::Settle { requeue: None };
        };
        let finished = self
            .status
            .finished_at
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(self.now());
        let left = finished.as_second() + ttl - self.now().as_second();
        if left <= 0 {
            Action::Delete
        } else {
            Action::Settle {
                requeue: Some(Duration::from_secs(left as u64)),
            }
        }
    }

    /// Writes conditions from the final state and assembles the decision.
    fn finish(mut self, action: Action) -> Decision {
        // A finished run's status is final: re-deciding it changes nothing (no writes for old runs).
        if self.old_phase.is_terminal() {
            bound_status(&mut self.status);
            return Decision {
                action,
                status: self.status,
                events: Vec::new(),
            };
        }
        let now = self.now();
        let gen = self.run.metadata.generation;
        self.status.observed_generation = gen;
        // No Event for a phase a run passes through (Queued, Running): status says it, and each
        // Event is an API-server write. Events are kept for failures and the final outcome.
        let phase = self.status.phase;
        let mut c = Conditions::new(&mut self.status.conditions, gen, now);
        match &self.obs.credentials {
            CredentialsState::Ready { .. } => {
                c.set(
                    CREDENTIALS_READY,
                    true,
                    Reason::Ready,
                    "Credentials are valid",
                );
            }
            CredentialsState::NotReady {
                reason, message, ..
            } if !phase.is_terminal() => {
                c.set(CREDENTIALS_READY, false, *reason, message);
            }
            CredentialsState::NotReady { .. } => {}
        }
        let message = self.status.status_message.clone().unwrap_or_default();
        match phase {
            RunPhase::Succeeded => {
                c.set(conditions::READY, true, Reason::Succeeded, &message);
                c.set(conditions::COMPLETE, true, Reason::Succeeded, &message);
                c.remove(conditions::FAILED);
                c.set(conditions::RECONCILING, false, Reason::Finished, &message);
                c.set(conditions::STALLED, false, Reason::Finished, &message);
            }
            RunPhase::Failed | RunPhase::Cancelled | RunPhase::TimedOut => {
                // A terminal phase keeps the reason it was reached with.
                let reason = self
                    .stalled
                    .as_ref()
                    .map(|b| b.reason)
                    .or_else(|| {
                        conditions::find(c.list(), conditions::FAILED)
                            .and_then(|f| Reason::parse(&f.reason))
                    })
                    .unwrap_or(match phase {
                        RunPhase::Failed => Reason::RunFailed,
                        other => other.into(),
                    });
                set_unsuccessful(&mut c, reason, &message);
            }
            _ => {
                let (reason, stalled) = if let Some(b) = &self.stalled {
                    (b.reason, true)
                } else if let Some(b) = &self.waiting {
                    (b.reason, false)
                } else if conditions::is_true(c.list(), SUSPENDED) {
                    (Reason::Suspended, false)
                } else {
                    (phase.into(), false)
                };
                // Starting to wait on something (credentials, a lookup, a user fix) is an Event,
                // except for credentials not validated *yet* (the operator starting, or a key
                // being checked): that passes by itself within seconds, and the condition says it.
                let blocked = self.stalled.is_some() || self.waiting.is_some();
                let old_reason =
                    conditions::find(c.list(), conditions::READY).map(|r| r.reason.as_str());
                if blocked
                    && old_reason != Some(reason.as_str())
                    && reason != Reason::CredentialsNotValidated
                {
                    self.events
                        .push(EventNote::warning(reason, message.clone()));
                }
                set_unfinished(&mut c, reason, &message, stalled);
            }
        }
        bound_status(&mut self.status);
        Decision {
            action,
            status: self.status,
            events: self.events,
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
