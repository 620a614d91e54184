//! Where a trigger's intent is recorded, so that a trigger costs two API-server writes: the intent
//! and the finalizer in one metadata write, then the outcome in one status write.
//!
//! Before a trigger is sent, its intent (the [`PendingTrigger`]: attempt, marker token, search
//! bound) is written into the annotation [`INTENT_ANNOTATION`] together with the finalizer, with a
//! resourceVersion precondition (a replica that read an older object gets 409 and does not
//! trigger). The outcome is then written to status, carrying the intent's id in
//! `status.resolvedIntent`. On every read, an intent in the annotation whose id is not the
//! resolved one is *pending*: it is treated exactly as a `status.pendingTrigger` (searched for,
//! never re-sent blindly). The id is the resourceVersion the intent write was guarded by, so every
//! intent has a fresh one even when an attempt (and so its marker) is recorded again.
//!
//! Pure functions: no client here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crd::job_run::PendingTrigger;
use crate::crd::{DbtCloudJobRun, DbtCloudJobRunStatus};

/// Annotation holding the intent of the latest trigger (operator-owned; do not edit).
pub const INTENT_ANNOTATION: &str = "dbtcloud.io/trigger-intent";

/// The annotation's content.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RecordedIntent {
    /// Unique id of this intent: the resourceVersion its write was guarded by.
    pub id: String,
    /// The intent itself.
    pub intent: PendingTrigger,
    /// The status as decided when the intent was recorded (what the status write before the
    /// trigger used to persist: job and account ids, the previous attempt's end, conditions). Used
    /// when the outcome never made it to status, so a crash loses nothing the decision knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<DbtCloudJobRunStatus>>,
}

/// The intent recorded in the object's annotation, if any (an unreadable one counts as none).
pub fn recorded(run: &DbtCloudJobRun) -> Option<RecordedIntent> {
    let text = run.metadata.annotations.as_ref()?.get(INTENT_ANNOTATION)?;
    serde_json::from_str(text).ok()
}

/// The recorded intent whose outcome is not in status yet.
pub fn unresolved(run: &DbtCloudJobRun) -> Option<RecordedIntent> {
    let rec = recorded(run)?;
    let status = run.status.as_ref();
    if status.is_some_and(|s| s.phase.is_terminal()) {
        return None;
    }
    (status.and_then(|s| s.resolved_intent.as_deref()) != Some(rec.id.as_str())).then_some(rec)
}

/// The object as the run lifecycle must see it: an unresolved intent is its pending trigger.
/// `None` when nothing changes.
pub fn effective(run: &DbtCloudJobRun) -> Option<DbtCloudJobRun> {
    let rec = unresolved(run)?;
    let status = run.status.clone().unwrap_or_default();
    if status.pending_trigger.as_ref() == Some(&rec.intent) {
        // Status already carries this intent (written while it was pending): it is as new.
        return None;
    }
    // Every intent is recorded here first, so an unresolved one is the newest: a different
    // `pendingTrigger` in status is an older intent's copy (resolved by the decision that
    // recorded this one), and must not hide it.
    let decided = rec.status.map(|s| *s).unwrap_or(status);
    let mut seen = run.clone();
    seen.status = Some(DbtCloudJobRunStatus {
        pending_trigger: Some(rec.intent),
        ..decided
    });
    Some(seen)
}

/// The status to write for `run`: when it no longer has a pending trigger, the recorded intent
/// is resolved by it.
pub fn mark_resolved(run: &DbtCloudJobRun, status: &DbtCloudJobRunStatus) -> DbtCloudJobRunStatus {
    let mut status = status.clone();
    if status.pending_trigger.is_none() {
        if let Some(rec) = recorded(run) {
            status.resolved_intent = Some(rec.id);
        }
    }
    status
}

/// The metadata merge patch that records `intent` with the status `decided` for it (guarded by
/// `resource_version`) and adds `finalizer` when missing, as one write. Returns the patch and the object as it will be.
pub fn record_patch(
    run: &DbtCloudJobRun,
    intent: &PendingTrigger,
    decided: &DbtCloudJobRunStatus,
    resource_version: &str,
    finalizer: &str,
) -> (serde_json::Value, DbtCloudJobRun) {
    // The copy leaves out the previous attempt's steps and results (a started attempt clears
    // them anyway): they are the bulk of a status, and annotations share a 256 KiB budget.
    let rec = RecordedIntent {
        id: resource_version.to_string(),
        intent: intent.clone(),
        status: Some(Box::new(DbtCloudJobRunStatus {
            pending_trigger: None,
            steps: Vec::new(),
            steps_omitted: None,
            results: None,
            ..decided.clone()
        })),
    };
    let text = serde_json::to_string(&rec).expect("an intent serializes");
    let mut finalizers = run.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        finalizers.push(finalizer.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "finalizers": finalizers,
            "annotations": { INTENT_ANNOTATION: text },
        }
    });
    let mut after = run.clone();
    after.metadata.finalizers = Some(finalizers);
    after
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INTENT_ANNOTATION.to_string(), text);
    (patch, after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::job_run::AttemptKind;
    use crate::crd::RunPhase;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn intent(attempt: u32) -> PendingTrigger {
        PendingTrigger {
            attempt,
            token: format!("[dco:uid#{attempt}]"),
            kind: AttemptKind::Full,
            retry_of_run_id: None,
            after_run_id: Some(7),
            requested_at: Time(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
        }
    }

    /// What the lifecycle decided with the intent: ids it resolved, the previous attempt's end.
    fn decided() -> DbtCloudJobRunStatus {
        DbtCloudJobRunStatus {
            job_id: Some(100),
            account_id: Some(1),
            pending_trigger: Some(intent(1)),
            ..Default::default()
        }
    }

    fn run() -> DbtCloudJobRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
            "metadata": {"name": "r", "namespace": "ns", "resourceVersion": "41", "finalizers": ["other"]},
            "spec": {"credentialsRef": {"name": "c"}, "job": {"id": 1}}
        }))
        .unwrap()
    }

    #[test]
    fn a_recorded_intent_is_pending_until_a_status_resolves_it() {
        let (patch, mut after) = record_patch(
            &run(),
            &intent(1),
            &decided(),
            "41",
            "dbtcloud.io/cancel-run",
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "41");
        assert_eq!(
            patch["metadata"]["finalizers"],
            serde_json::json!(["other", "dbtcloud.io/cancel-run"]),
            "the finalizer is added in the same write, others kept"
        );
        // Crash before the outcome: the intent is the pending trigger the lifecycle sees.
        let seen = effective(&after).expect("pending").status.unwrap();
        assert_eq!(seen.pending_trigger, Some(intent(1)));
        assert_eq!(
            (seen.job_id, seen.account_id),
            (Some(100), Some(1)),
            "what was decided with the intent survives a crash before the outcome"
        );
        // The outcome is written: resolved from then on.
        let outcome = DbtCloudJobRunStatus {
            phase: RunPhase::Queued,
            run_id: Some(9),
            ..Default::default()
        };
        let written = mark_resolved(&after, &outcome);
        assert_eq!(written.resolved_intent.as_deref(), Some("41"));
        after.status = Some(written);
        assert!(unresolved(&after).is_none() && effective(&after).is_none());
    }

    #[test]
    fn an_attempt_recorded_again_gets_a_fresh_id() {
        let (_, mut after) = record_patch(&run(), &intent(1), &decided(), "41", "f");
        after.status = Some(mark_resolved(&after, &DbtCloudJobRunStatus::default()));
        // The same attempt (same marker) recorded again later, after a rejected trigger.
        let (patch, again) = record_patch(&after, &intent(1), &decided(), "57", "f");
        assert_eq!(
            patch["metadata"]["finalizers"],
            serde_json::json!(["other", "f"])
        );
        assert_eq!(unresolved(&again).map(|r| r.id), Some("57".into()));
    }

    /// The duplicate the chaos test found: attempt 1's intent was copied into status while it was
    /// being confirmed; the reconcile that adopted its run saw it fail and recorded attempt 2 in
    /// the annotation (status still holding attempt 1's copy). Attempt 2 must be the pending one,
    /// or its run is never searched for and attempt 2 is triggered again.
    #[test]
    fn a_newer_intent_is_not_hidden_by_an_older_copy_in_status() {
        let (_, mut after) = record_patch(&run(), &intent(2), &decided(), "57", "f");
        after.status = Some(DbtCloudJobRunStatus {
            pending_trigger: Some(intent(1)),
            resolved_intent: Some("41".into()),
            ..Default::default()
        });
        let seen = effective(&after).expect("attempt 2 is pending");
        assert_eq!(seen.status.unwrap().pending_trigger, Some(intent(2)));
        // A re-send of the same attempt (new time) is newer too.
        let mut again = intent(2);
        again.requested_at = Time(jiff::Timestamp::from_second(1_700_000_100).unwrap());
        let (_, mut resent) = record_patch(&run(), &again, &decided(), "60", "f");
        resent.status = Some(DbtCloudJobRunStatus {
            pending_trigger: Some(intent(2)),
            ..Default::default()
        });
        assert_eq!(
            effective(&resent).unwrap().status.unwrap().pending_trigger,
            Some(again)
        );
    }

    /// However large a (bounded) status gets, the intent annotation stays far below the 256 KiB
    /// that all of an object's annotations share (a larger one would make the intent write fail):
    /// under 96 KiB with every bounded field at its limit in escaped multi-byte text (realistic
    /// statuses give a few KiB).
    #[test]
    fn the_intent_annotation_stays_small_for_the_largest_status() {
        use crate::controller::lifecycle::{self, MAX_NAME_LEN, MAX_STATUS_ATTEMPTS};
        use crate::crd::conditions::MAX_MESSAGE_LEN;
        use crate::crd::job_run::{ResultsSummary, RunAttempt, StepSummary};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let long = |n: usize| "\"é".repeat(n); // escapes and multi-byte characters
        let t = Some(Time(jiff::Timestamp::from_second(1_700_000_000).unwrap()));
        let mut status = DbtCloudJobRunStatus {
            conditions: [
                "Ready",
                "Reconciling",
                "Stalled",
                "Failed",
                "Complete",
                "CredentialsReady",
                "Suspended",
            ]
            .iter()
            .map(|ty| Condition {
                type_: ty.to_string(),
                status: "False".into(),
                reason: long(MAX_NAME_LEN),
                message: long(MAX_MESSAGE_LEN * 4),
                observed_generation: Some(1),
                last_transition_time: Time(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
            })
            .collect(),
            run_url: Some(long(10_000)),
            status_message: Some(long(10_000)),
            attempts: (0..MAX_STATUS_ATTEMPTS as u32 * 3)
                .map(|i| RunAttempt {
                    attempt: i + 1,
                    run_id: i64::MAX,
                    url: Some(long(10_000)),
                    kind: AttemptKind::Full,
                    status: long(100),
                    created_at: t.clone(),
                    started_at: t.clone(),
                    finished_at: t.clone(),
                })
                .collect(),
            steps: (0..500)
                .map(|i| StepSummary {
                    index: i,
                    name: long(10_000),
                    status: long(100),
                    duration_seconds: Some(1),
                })
                .collect(),
            results: Some(ResultsSummary {
                failed_nodes: (0..500).map(|_| long(10_000)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        lifecycle::bound_status(&mut status);
        let (_, after) = record_patch(&run(), &intent(3), &status, "41", "f");
        let text = &after.metadata.annotations.unwrap()[INTENT_ANNOTATION];
        assert!(
            text.len() < 96 * 1024,
            "intent annotation of {} bytes for the largest status",
            text.len()
        );
        // And it still reads back as the pending intent.
        let mut back = run();
        back.metadata.annotations = Some([(INTENT_ANNOTATION.to_string(), text.clone())].into());
        assert_eq!(recorded(&back).map(|r| r.intent), Some(intent(3)));
    }

    #[test]
    fn finished_runs_and_status_intents_win() {
        let (_, mut after) = record_patch(&run(), &intent(2), &decided(), "41", "f");
        after.status = Some(DbtCloudJobRunStatus {
            phase: RunPhase::Succeeded,
            ..Default::default()
        });
        assert!(
            effective(&after).is_none(),
            "a finished run has nothing pending"
        );
        after.status = Some(DbtCloudJobRunStatus {
            pending_trigger: Some(intent(2)),
            ..Default::default()
        });
        assert!(
            effective(&after).is_none(),
            "the same intent in status is used as is"
        );
        let mut unreadable = run();
        unreadable.metadata.annotations =
            Some([(INTENT_ANNOTATION.to_string(), "{garbage".to_string())].into());
        assert!(recorded(&unreadable).is_none());
    }
}
