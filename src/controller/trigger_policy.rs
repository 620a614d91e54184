//! The `DbtCloudJobTrigger` decision as a pure function: `(trigger spec + status, its runs, now) →
//! runs to start, cancel and delete, the status to write, Events, and when to look again`. No IO
//! and no client here; the reconciler (`job_trigger.rs`) performs what [`decide`] asks for and
//! records each start's outcome with [`record_start`], [`record_name_taken`] or
//! [`record_rejected`].
//!
//! Never starting a run twice rests on deterministic names: a schedule slot's run is named
//! `<trigger>-<unix minutes of the slot>`, a revision change's run `<trigger>-r-<hash8>` (hash of
//! the trigger's UID, the number of revision changes handled before and the revision). A crash
//! between deciding and recording leaves either no run (decided again, same name) or the run,
//! which [`decide`] finds among the children (and a create of the same name answers 409).

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::crd::conditions::{self, Conditions};
use crate::crd::job_run::{DbtCloudJobRun, RunPhase, TriggerOverrides};
use crate::crd::job_trigger::{
    ActiveRun, ConcurrencyPolicy, DbtCloudJobTriggerSpec, DbtCloudJobTriggerStatus, SkippedRun,
    MAX_TRIGGER_NAME_LEN,
};
pub use crate::crd::reasons::EventNote;
use crate::crd::reasons::Reason;

/// Annotation on a run started by the schedule: its scheduled time (RFC 3339).
pub const SCHEDULED_AT_ANNOTATION: &str = "dbtcloud.io/scheduled-at";
/// Annotation on a run started by a revision change: the revision.
pub const REVISION_ANNOTATION: &str = "dbtcloud.io/revision";
/// Annotation on every run a trigger starts: `Schedule`, `Revision` or `Manual`.
pub const STARTED_BY_ANNOTATION: &str = "dbtcloud.io/started-by";
/// Label on every run a trigger starts: the trigger's name (when it fits a label value).
pub const TRIGGER_LABEL: &str = "dbtcloud.io/trigger";
/// Longest object name.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label value.
const MAX_LABEL_VALUE_LEN: usize = 63;
/// Longest `cause` the operator writes (the run controller appends its marker and trims to 255).
const MAX_CAUSE: usize = 200;
/// Most earlier missed slots counted for an Event (the count is only informative).
const MAX_MISSED_COUNT: usize = 100;

/// Condition reason: the schedule does not parse or never fires.
pub const REASON_INVALID_SCHEDULE: Reason = Reason::InvalidSchedule;
/// Condition reason: the time zone is unknown.
pub const REASON_INVALID_TIME_ZONE: Reason = Reason::InvalidTimeZone;
/// Condition reason: the API server refused a run made from the template.
pub const REASON_TEMPLATE_REJECTED: Reason = Reason::RunTemplateRejected;
/// Condition reason: the trigger's name leaves no room for its runs' suffixes.
pub const REASON_NAME_TOO_LONG: Reason = Reason::NameTooLong;

/// The trigger as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct TriggerView<'a> {
    /// Name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// UID (part of revision run names and the runs' owner reference).
    pub uid: &'a str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`: the schedule starts counting there.
    pub created: Timestamp,
    /// Spec.
    pub spec: &'a DbtCloudJobTriggerSpec,
    /// Status as read (default when none).
    pub status: &'a DbtCloudJobTriggerStatus,
}

/// One `DbtCloudJobRun` controlled by the trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    /// Name.
    pub name: String,
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    /// Its scheduled time, for a run started by the schedule.
    pub scheduled_at: Option<Timestamp>,
    /// Phase (`Pending` before the run controller wrote any status).
    pub phase: RunPhase,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// `spec.cancel` is set.
    pub cancel_requested: bool,
    /// Being deleted.
    pub deleting: bool,
}

impl Child {
    fn active(&self) -> bool {
        !self.deleting && !self.phase.is_terminal()
    }
}

/// Why a run is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartCause {
    /// The schedule slot at this time.
    Schedule(Timestamp),
    /// A change of `spec.revision` to this value.
    Revision(String),
    /// On demand (`kubectl dbtcloud trigger`).
    Manual,
}

impl StartCause {
    /// `Schedule`, `Revision` or `Manual` (the `dbtcloud.io/started-by` annotation).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Schedule(_) => "Schedule",
            Self::Revision(_) => "Revision",
            Self::Manual => "Manual",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Schedule(t) => format!("schedule slot {t}"),
            Self::Revision(r) => format!("revision {}", quote(r)),
            Self::Manual => "a manual trigger".into(),
        }
    }
}

/// A run to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRun {
    /// Its deterministic name.
    pub name: String,
    /// Why.
    pub cause: StartCause,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Active runs to cancel (set `spec.cancel`), before anything is started (`Replace`).
    pub cancel: Vec<String>,
    /// Runs to create, in order. Record each outcome on `status` with [`record_start`],
    /// [`record_name_taken`] or [`record_rejected`].
    pub start: Vec<StartRun>,
    /// Finished runs beyond the history limits, to delete.
    pub delete: Vec<String>,
    /// The status to write, before the starts are recorded.
    pub status: DbtCloudJobTriggerStatus,
    /// Events (skips, missed schedules, replacements, deletions, invalid spec).
    pub events: Vec<EventNote>,
    /// When to decide again (the next schedule slot), if ever without a change.
    pub requeue_at: Option<Timestamp>,
}

/// A parsed `schedule` + `timeZone`.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
    tz: TimeZone,
}

/// Why a spec cannot be acted on: a condition reason and a message that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Why.
    pub reason: Reason,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Schedule {
    /// Parses a five-field cron expression (or macro) in an IANA time zone (UTC when `None`).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, Invalid> {
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| Invalid {
                reason: REASON_INVALID_TIME_ZONE,
                message: format!(
                    "spec.timeZone {}: no such time zone in the IANA database; use a name such as \
                     \"Europe/Berlin\", \"America/New_York\" or \"UTC\"",
                    quote(name)
                ),
            })?,
        };
        let invalid = |why: String| Invalid {
            reason: REASON_INVALID_SCHEDULE,
            message: format!(
                "spec.schedule {}: {why}; use five fields (minute hour day-of-month month \
                 day-of-week), e.g. \"0 2 * * *\", or a macro such as \"@daily\"",
                quote(expr)
            ),
        };
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 {
            return Err(invalid(format!("{fields} fields, not 5")));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| invalid(e.to_string()))?;
        let schedule = Schedule { cron, tz };
        // A pattern such as `0 0 30 2 *` parses but never fires.
        if schedule.next_after(Timestamp::UNIX_EPOCH).is_none() {
            return Err(invalid("it never matches a date".into()));
        }
        Ok(schedule)
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&t.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The first slot after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// `t` in UTC, and in the schedule's time zone when that is another.
    pub fn describe(&self, t: Timestamp) -> String {
        match self.tz.iana_name() {
            None | Some("UTC") | Some("Etc/UTC") => t.to_string(),
            Some(name) => format!(
                "{t} ({} {name})",
                t.to_zoned(self.tz.clone()).strftime("%Y-%m-%d %H:%M")
            ),
        }
    }

    /// Slots strictly between `after` and `before`, counted up to `cap`.
    fn count_between(&self, after: Timestamp, before: Timestamp, cap: usize) -> usize {
        let mut n = 0;
        let mut t = after;
        while n < cap {
            match self.next_after(t) {
                Some(next) if next < before => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }
}

/// Name of the run of the schedule slot at `slot`: `<trigger>-<unix minutes>`.
pub fn scheduled_run_name(trigger: &str, slot: Timestamp) -> String {
    format!("{trigger}-{}", slot.as_second().div_euclid(60))
}

/// Name of the run of a revision change: `<trigger>-r-<hash8>`, the hash of the trigger's UID,
/// the number of revision changes handled before, and the revision.
pub fn revision_run_name(trigger: &str, uid: &str, changes: i64, revision: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{uid}\n{changes}\n{revision}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{trigger}-r-{hex}")
}

/// `generateName` of a manual run: `<trigger>-manual-`.
pub fn manual_run_prefix(trigger: &str) -> String {
    format!("{trigger}-manual-")
}

fn quote(s: &str) -> String {
    format!("{:?}", conditions::truncate_str(s, 80))
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// Decides what the trigger does now.
pub fn decide(view: TriggerView<'_>, children: &[Child], now: Timestamp) -> Decision {
    let spec = view.spec;
    let gen = view.generation;
    let mut status = view.status.clone();
    status.observed_generation = gen;
    let mut events = Vec::new();

    // What cannot be acted on at all.
    let schedule = spec
        .schedule
        .as_deref()
        .map(|s| Schedule::parse(s, spec.time_zone.as_deref()));
    let invalid = if view.name.len() > MAX_TRIGGER_NAME_LEN {
        Some(Invalid {
            reason: REASON_NAME_TOO_LONG,
            message: format!(
                "the trigger's name has {} characters; at most {MAX_TRIGGER_NAME_LEN} leave room \
                 for its runs' names: recreate it with a shorter name",
                view.name.len()
            ),
        })
    } else {
        match &schedule {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    };
    let schedule = schedule.and_then(Result::ok);
    // A template the API server refused holds every start until the spec changes.
    let rejected = conditions::find(&status.conditions, conditions::STALLED).is_some_and(|c| {
        c.status == "True" && c.reason == REASON_TEMPLATE_REJECTED && c.observed_generation == gen
    });
    let may_start = invalid.is_none() && !rejected && !spec.suspend;

    let live: Vec<&Child> = children.iter().filter(|c| !c.deleting).collect();
    let mut active: Vec<&Child> = live.iter().copied().filter(|c| c.active()).collect();
    active.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));

    // Adopt what the children show was done (a status write lost in a crash).
    let newest_slot = children.iter().filter_map(|c| c.scheduled_at).max();
    if newest_slot > status.last_schedule_time.as_ref().map(|t| t.0) {
        status.last_schedule_time = newest_slot.map(time);
    }

    // A revision's run goes first: under Forbid or Replace it wins over a slot due at the same
    // moment (it runs the same job, on the newer revision).
    let mut due: Vec<StartRun> = Vec::new();
    let mut slot_due = None;
    status.next_schedule_time = None;
    let mut requeue_at = None;
    if let Some(schedule) = &schedule {
        let handled = status
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(view.created);
        if may_start {
            if let Some(slot) = schedule
                .latest_at_or_before(now)
                .filter(|slot| *slot > handled)
            {
                let earlier = schedule.count_between(handled, slot, MAX_MISSED_COUNT);
                let late = now.duration_since(slot);
                let deadline = spec
                    .starting_deadline_seconds
                    .map(SignedDuration::from_secs);
                if deadline.is_some_and(|d| late > d) {
                    let message = format!(
                        "the run scheduled for {slot} was not started: it is {}s late, more than \
                         startingDeadlineSeconds ({}s){}",
                        late.as_secs(),
                        spec.starting_deadline_seconds.unwrap_or_default(),
                        missed_note(earlier)
                    );
                    events.push(EventNote {
                        warning: true,
                        reason: Reason::MissedSchedule,
                        note: message.clone(),
                    });
                    status.last_schedule_time = Some(time(slot));
                    status.last_skipped = Some(SkippedRun {
                        time: time(now),
                        schedule_time: Some(time(slot)),
                        revision: None,
                        reason: Reason::MissedDeadline.into(),
                        message,
                    });
                } else {
                    if earlier > 0 {
                        events.push(EventNote {
                            warning: true,
                            reason: Reason::MissedSchedule,
                            note: format!(
                                "{}; starting only the latest, scheduled for {slot}",
                                missed_note(earlier).trim_start_matches("; ")
                            ),
                        });
                    }
                    slot_due = Some(StartRun {
                        name: scheduled_run_name(view.name, slot),
                        cause: StartCause::Schedule(slot),
                    });
                }
            }
        }
        if may_start {
            status.next_schedule_time = schedule.next_after(now).map(time);
            requeue_at = status.next_schedule_time.as_ref().map(|t| t.0);
        }
    }

    if let Some(revision) = spec.revision.as_deref().filter(|r| !r.is_empty()) {
        if status.last_revision.as_deref() != Some(revision) {
            let name = revision_run_name(view.name, view.uid, status.revision_changes, revision);
            if children.iter().any(|c| c.name == name) {
                // Started before a crash lost the status write.
                status.last_revision = Some(revision.to_string());
                status.revision_changes += 1;
            } else if may_start {
                due.push(StartRun {
                    name,
                    cause: StartCause::Revision(revision.to_string()),
                });
            }
        }
    }

    due.extend(slot_due);

    // Concurrency.
    let mut cancel = Vec::new();
    let mut start = Vec::new();
    for run in due {
        let busy: Vec<String> = active
            .iter()
            .map(|c| c.name.clone())
            .chain(start.iter().map(|s: &StartRun| s.name.clone()))
            .collect();
        let skip =
            |reason: Reason, message: String, status: &mut DbtCloudJobTriggerStatus| match &run
                .cause
            {
                StartCause::Schedule(slot) => {
                    status.last_schedule_time = Some(time(*slot));
                    status.last_skipped = Some(SkippedRun {
                        time: time(now),
                        schedule_time: Some(time(*slot)),
                        revision: None,
                        reason: reason.into(),
                        message,
                    });
                }
                StartCause::Revision(rev) => {
                    status.last_revision = Some(rev.clone());
                    status.revision_changes += 1;
                    status.last_skipped = Some(SkippedRun {
                        time: time(now),
                        schedule_time: None,
                        revision: Some(rev.clone()),
                        reason: reason.into(),
                        message,
                    });
                }
                StartCause::Manual => {}
            };
        match spec.concurrency_policy {
            ConcurrencyPolicy::Forbid if !busy.is_empty() => {
                let message = format!(
                    "not started for {}: run {} is still active (concurrencyPolicy Forbid)",
                    run.cause.describe(),
                    busy.join(", ")
                );
                events.push(EventNote {
                    warning: false,
                    reason: Reason::RunSkipped,
                    note: message.clone(),
                });
                skip(Reason::Forbidden, message, &mut status);
            }
            ConcurrencyPolicy::Replace if !start.is_empty() => {
                let message = format!(
                    "not started for {}: superseded by run {} started at the same moment \
                     (concurrencyPolicy Replace)",
                    run.cause.describe(),
                    start[0].name
                );
                events.push(EventNote {
                    warning: false,
                    reason: Reason::RunSkipped,
                    note: message.clone(),
                });
                skip(Reason::Superseded, message, &mut status);
            }
            ConcurrencyPolicy::Replace => {
                let to_cancel: Vec<String> = active
                    .iter()
                    .filter(|c| !c.cancel_requested)
                    .map(|c| c.name.clone())
                    .collect();
                if !to_cancel.is_empty() {
                    events.push(EventNote {
                        warning: false,
                        reason: Reason::RunReplaced,
                        note: format!(
                            "cancelling {} to start {} for {} (concurrencyPolicy Replace)",
                            to_cancel.join(", "),
                            run.name,
                            run.cause.describe()
                        ),
                    });
                }
                cancel.extend(to_cancel);
                start.push(run);
            }
            _ => start.push(run),
        }
    }

    // History: the newest finished runs of each kind are kept.
    let mut delete = Vec::new();
    let mut finished: Vec<&Child> = live
        .iter()
        .copied()
        .filter(|c| c.phase.is_terminal())
        .collect();
    finished.sort_by(|a, b| {
        (b.finished_at.unwrap_or(b.created), b.created, &b.name).cmp(&(
            a.finished_at.unwrap_or(a.created),
            a.created,
            &a.name,
        ))
    });
    let (mut kept_ok, mut kept_failed) = (0, 0);
    for c in finished {
        let (kept, limit) = if c.phase == RunPhase::Succeeded {
            (&mut kept_ok, spec.successful_runs_history_limit)
        } else {
            (&mut kept_failed, spec.failed_runs_history_limit)
        };
        if *kept < limit.max(0) {
            *kept += 1;
        } else {
            delete.push(c.name.clone());
        }
    }
    if !delete.is_empty() {
        events.push(EventNote {
            warning: false,
            reason: Reason::RunsDeleted,
            note: format!(
                "deleted finished run(s) beyond the history limits (successful {}, failed {}): {}",
                spec.successful_runs_history_limit,
                spec.failed_runs_history_limit,
                conditions::truncate_str(&delete.join(", "), 800)
            ),
        });
    }

    // Runs and times.
    status.active = active
        .iter()
        .map(|c| ActiveRun {
            name: c.name.clone(),
        })
        .collect();
    status.active_count = status.active.len() as i32;
    if let Some(newest) = live
        .iter()
        .max_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)))
    {
        status.last_run_name = Some(newest.name.clone());
    }
    let last_success = children
        .iter()
        .filter(|c| c.phase == RunPhase::Succeeded)
        .filter_map(|c| c.finished_at)
        .max();
    if last_success > status.last_successful_time.as_ref().map(|t| t.0) {
        status.last_successful_time = last_success.map(time);
    }

    // Conditions.
    let was_stalled = conditions::find(&status.conditions, conditions::STALLED)
        .filter(|c| c.status == "True")
        .map(|c| (c.reason.clone(), c.observed_generation));
    if let Some(inv) = &invalid {
        if was_stalled != Some((inv.reason.to_string(), gen)) {
            events.push(EventNote {
                warning: true,
                reason: inv.reason,
                note: inv.message.clone(),
            });
        }
        set_stalled(&mut status, inv.reason, &inv.message, gen, now);
    } else if !rejected {
        let ReadySummary { reason, message } = summary(spec, &status, schedule.as_ref());
        set_ready(&mut status, reason, &message, gen, now);
    }

    Decision {
        cancel,
        start,
        delete,
        status,
        events,
        requeue_at,
    }
}

fn missed_note(earlier: usize) -> String {
    match earlier {
        0 => String::new(),
        n if n >= MAX_MISSED_COUNT => format!("; {n} or more earlier slots were missed too"),
        n => format!("; {n} earlier slot(s) were missed too"),
    }
}

/// `Ready=True` reason and message of a working trigger.
struct ReadySummary {
    reason: Reason,
    message: String,
}

/// What a working trigger's `Ready=True` condition says.
fn summary(
    spec: &DbtCloudJobTriggerSpec,
    status: &DbtCloudJobTriggerStatus,
    schedule: Option<&Schedule>,
) -> ReadySummary {
    let mut parts = Vec::new();
    let reason = if spec.suspend {
        parts.push("suspended: no runs are started".to_string());
        Reason::Suspended
    } else if let Some(schedule) = schedule {
        if let Some(next) = &status.next_schedule_time {
            parts.push(format!("next run at {}", schedule.describe(next.0)));
        }
        Reason::Scheduled
    } else {
        parts.push("waiting for a revision change or a manual trigger".to_string());
        Reason::Waiting
    };
    match status.active.len() {
        0 => {}
        1 => parts.push(format!("run {} is active", status.active[0].name)),
        n => parts.push(format!("{n} runs are active")),
    }
    if let Some(last) = &status.last_revision {
        parts.push(format!("last revision {}", quote(last)));
    }
    ReadySummary {
        reason,
        message: parts.join("; "),
    }
}

fn set_ready(
    status: &mut DbtCloudJobTriggerStatus,
    reason: Reason,
    message: &str,
    gen: Option<i64>,
    now: Timestamp,
) {
    let mut c = Conditions::new(&mut status.conditions, gen, now);
    c.set(conditions::READY, true, reason, message);
    c.set(conditions::RECONCILING, false, reason, message);
    c.set(conditions::STALLED, false, reason, message);
}

fn set_stalled(
    status: &mut DbtCloudJobTriggerStatus,
    reason: Reason,
    message: &str,
    gen: Option<i64>,
    now: Timestamp,
) {
    let mut c = Conditions::new(&mut status.conditions, gen, now);
    c.set(conditions::READY, false, reason, message);
    c.set(conditions::RECONCILING, false, reason, message);
    c.set(conditions::STALLED, true, reason, message);
}

/// Records a started run (created now, or found already created by this trigger).
pub fn record_start(status: &mut DbtCloudJobTriggerStatus, run: &StartRun) {
    match &run.cause {
        StartCause::Schedule(slot) => {
            if status.last_schedule_time.as_ref().map(|t| t.0) < Some(*slot) {
                status.last_schedule_time = Some(time(*slot));
            }
        }
        StartCause::Revision(rev) => {
            status.last_revision = Some(rev.clone());
            status.revision_changes += 1;
        }
        StartCause::Manual => {}
    }
    if !status.active.iter().any(|a| a.name == run.name) {
        status.active.push(ActiveRun {
            name: run.name.clone(),
        });
    }
    status.active_count = status.active.len() as i32;
    status.last_run_name = Some(run.name.clone());
}

/// Records a run that could not be created because an object of another owner has its name:
/// the slot or revision counts as handled (it is skipped), so it is not retried forever.
pub fn record_name_taken(
    status: &mut DbtCloudJobTriggerStatus,
    run: &StartRun,
    now: Timestamp,
) -> EventNote {
    let message = format!(
        "not started for {}: a DbtCloudJobRun named {} already exists and does not belong to this \
         trigger; delete or rename it",
        run.cause.describe(),
        run.name
    );
    let mut skipped = SkippedRun {
        time: time(now),
        schedule_time: None,
        revision: None,
        reason: Reason::NameTaken.into(),
        message: message.clone(),
    };
    match &run.cause {
        StartCause::Schedule(slot) => {
            status.last_schedule_time = Some(time(*slot));
            skipped.schedule_time = Some(time(*slot));
        }
        StartCause::Revision(rev) => {
            status.last_revision = Some(rev.clone());
            status.revision_changes += 1;
            skipped.revision = Some(rev.clone());
        }
        StartCause::Manual => {}
    }
    status.last_skipped = Some(skipped);
    EventNote {
        warning: true,
        reason: Reason::RunNameTaken,
        note: message,
    }
}

/// Records that the API server refused a run made from the template (invalid labels, a spec the
/// run's schema refuses, an admission webhook): `Stalled` until the spec changes; the slot or
/// revision is not consumed, so it is started once the template is fixed (a slot only within
/// `startingDeadlineSeconds`).
pub fn record_rejected(
    status: &mut DbtCloudJobTriggerStatus,
    run: &StartRun,
    error: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> EventNote {
    let message = format!(
        "the API server refused the run {} for {}: {}; fix spec.runTemplate (any change of the \
         spec retries)",
        run.name,
        run.cause.describe(),
        conditions::truncate_str(error, 600)
    );
    status.next_schedule_time = None;
    set_stalled(status, REASON_TEMPLATE_REJECTED, &message, generation, now);
    EventNote {
        warning: true,
        reason: REASON_TEMPLATE_REJECTED,
        note: message,
    }
}

/// The `DbtCloudJobRun` to create for `cause`: the template's labels, annotations and spec, the
/// operator's annotations, a controller owner reference to the trigger, and (with
/// `revisionAsGitSha`) the revision as `trigger.gitSha`. `name` is the deterministic name, or
/// `None` for a manual run (then `generateName` is set).
pub fn build_run(view: TriggerView<'_>, name: Option<&str>, cause: &StartCause) -> DbtCloudJobRun {
    let spec = view.spec;
    let template = &spec.run_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    if view.name.len() <= MAX_LABEL_VALUE_LEN {
        labels.insert(TRIGGER_LABEL.into(), view.name.into());
    }
    let mut annotations = meta.annotations;
    annotations.insert(STARTED_BY_ANNOTATION.into(), cause.as_str().into());
    match cause {
        StartCause::Schedule(slot) => {
            annotations.insert(SCHEDULED_AT_ANNOTATION.into(), slot.to_string());
        }
        StartCause::Revision(rev) => {
            annotations.insert(REVISION_ANNOTATION.into(), rev.clone());
        }
        StartCause::Manual => {}
    }
    let mut run_spec = template.spec.clone();
    let revision = spec.revision.as_deref().filter(|r| !r.is_empty());
    let overrides = run_spec
        .trigger
        .get_or_insert_with(TriggerOverrides::default);
    if let (true, Some(rev)) = (spec.revision_as_git_sha, revision) {
        overrides.git_sha = Some(rev.to_string());
    }
    if overrides.cause.is_none() {
        let why = match cause {
            StartCause::Schedule(slot) => format!("schedule {slot}"),
            StartCause::Revision(rev) => format!("revision {rev}"),
            StartCause::Manual => "manual trigger".into(),
        };
        overrides.cause = Some(conditions::truncate_str(
            &format!("DbtCloudJobTrigger {}/{}: {why}", view.namespace, view.name),
            MAX_CAUSE,
        ));
    }
    let mut run = DbtCloudJobRun::new(name.unwrap_or_default(), run_spec);
    run.metadata = ObjectMeta {
        name: name.map(str::to_string),
        generate_name: name.is_none().then(|| manual_run_prefix(view.name)),
        namespace: Some(view.namespace.to_string()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![OwnerReference {
            api_version: "dbtcloud.io/v1alpha1".into(),
            kind: "DbtCloudJobTrigger".into(),
            name: view.name.into(),
            uid: view.uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    };
    run
}

/// The [`Child`] view of a run (annotations, status and spec flags).
pub fn child_of(run: &DbtCloudJobRun, fallback_created: Timestamp) -> Child {
    let annotations = run.metadata.annotations.as_ref();
    let status = run.status.as_ref();
    Child {
        name: run.metadata.name.clone().unwrap_or_default(),
        created: run
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(fallback_created),
        scheduled_at: annotations
            .and_then(|a| a.get(SCHEDULED_AT_ANNOTATION))
            .and_then(|s| s.parse().ok()),
        phase: status.map(|s| s.phase).unwrap_or_default(),
        finished_at: status.and_then(|s| s.finished_at.as_ref()).map(|t| t.0),
        cancel_requested: run.spec.cancel,
        deleting: run.metadata.deletion_timestamp.is_some(),
    }
}

#[cfg(test)]
#[path = "trigger_policy_tests.rs"]
mod tests;
