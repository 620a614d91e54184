//! Exhaustive tests of the pure lifecycle: no client, no clock, no IO.

use super::*;
use crate::crd::job_run::{DbtCloudJobRunSpec, JobSelector, RetryPolicy, TriggerOverrides};
use kube::api::ObjectMeta;

const UID: &str = "0b9b0c55-5f7e-4d8e-9f3a-2f0c1b4d6e7a";

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn spec() -> DbtCloudJobRunSpec {
    serde_json::from_value(serde_json::json!({
        "credentialsRef": {"name": "creds"},
        "job": {"id": 42}
    }))
    .unwrap()
}

fn object(spec: DbtCloudJobRunSpec, status: Option<DbtCloudJobRunStatus>) -> DbtCloudJobRun {
    DbtCloudJobRun {
        metadata: ObjectMeta {
            name: Some("nightly".into()),
            namespace: Some("analytics".into()),
            uid: Some(UID.into()),
            generation: Some(1),
            ..Default::default()
        },
        spec,
        status,
    }
}

/// Newest run of job 42 before a trigger, as the shell answers [`Action::ObserveNewestRun`].
const NEWEST: i64 = 90;

fn ready(now: i64) -> Observation {
    let mut obs = Observation::new(ts(now), CredentialsState::Ready { account_id: 7 });
    obs.newest_run_id = Some(NEWEST);
    obs
}

fn not_ready(now: i64) -> Observation {
    Observation::new(
        ts(now),
        CredentialsState::NotReady {
            reason: Reason::Unauthorized,
            message: "key rejected".into(),
            stalled: false,
        },
    )
}

fn run(id: i64, status: RunStatus) -> ObservedRun {
    ObservedRun {
        id,
        job_id: Some(42),
        status,
        href: Some(format!(
            "https://cloud.getdbt.com/deploy/7/projects/1/runs/{id}/"
        )),
        can_retry: status == RunStatus::Error,
        created_at: Some(ts(1)),
        started_at: Some(ts(2)),
        finished_at: status.is_terminal().then(|| ts(30)),
        status_message: None,
    }
}

fn settings() -> Settings {
    Settings {
        ambiguity_window: Duration::from_secs(60),
        credentials_retry: Duration::from_secs(30),
        confirm_retry: Duration::from_secs(3),
    }
}

fn cond<'a>(
    d: &'a Decision,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions::find(&d.status.conditions, t)
}

fn cond_status(d: &Decision, t: &str) -> Option<String> {
    cond(d, t).map(|c| c.status.clone())
}

/// Applies a start decision as the shell would after a successful POST.
fn started(d: &Decision, run_id: i64, status: RunStatus) -> DbtCloudJobRunStatus {
    assert!(
        matches!(d.action, Action::StartAttempt(_)),
        "{:?}",
        d.action
    );
    after_start(&d.status, &run(run_id, status), ts(0)).0
}

fn details_ok() -> RunDetails {
    RunDetails {
        steps: vec![StepSummary {
            index: 1,
            name: "Invoke dbt with `dbt build`".into(),
            status: "Success".into(),
            duration_seconds: Some(3),
        }],
        results: Some(ResultsSummary {
            pass: 3,
            ..Default::default()
        }),
        failed_step: None,
    }
}

fn details_failed() -> RunDetails {
    RunDetails {
        steps: vec![StepSummary {
            index: 1,
            name: "Invoke dbt with `dbt build`".into(),
            status: "Error".into(),
            duration_seconds: Some(3),
        }],
        results: Some(ResultsSummary {
            error: 1,
            failed_nodes: vec!["model.shop.orders".into()],
            ..Default::default()
        }),
        failed_step: Some(FailedStep {
            name: "Invoke dbt with `dbt build`".into(),
            log_tail: "Database Error in model orders".into(),
        }),
    }
}

#[test]
fn fresh_run_records_intent_and_triggers_with_token() {
    let d = decide(&object(spec(), None), &ready(0), &settings());
    let token = attempt_token(UID, 1);
    match &d.action {
        Action::StartAttempt(StartRequest::Trigger { job_id, cause }) => {
            assert_eq!(*job_id, 42);
            assert!(cause.ends_with(&token), "{cause}");
            assert!(cause.starts_with("Triggered by dbt-cloud-operator: analytics/nightly"));
        }
        other => panic!("expected a trigger, got {other:?}"),
    }
    let pending = d
        .status
        .pending_trigger
        .as_ref()
        .expect("intent recorded before the POST");
    assert_eq!(pending.attempt, 1);
    assert_eq!(pending.token, token);
    assert_eq!(d.status.phase, RunPhase::Pending);
    assert_eq!(d.status.observed_generation, Some(1));
    assert_eq!(
        cond_status(&d, conditions::RECONCILING).as_deref(),
        Some("True")
    );
    assert_eq!(cond_status(&d, conditions::READY).as_deref(), Some("False"));
}

#[test]
fn user_cause_is_kept_and_trimmed_to_fit() {
    let mut s = spec();
    s.trigger = Some(TriggerOverrides {
        cause: Some("ü".repeat(5000)),
        ..Default::default()
    });
    let d = decide(&object(s, None), &ready(0), &settings());
    let Action::StartAttempt(StartRequest::Trigger { cause, .. }) = d.action else {
        panic!()
    };
    assert!(cause.len() <= MAX_CAUSE_LEN, "{} bytes", cause.len());
    assert!(cause.starts_with('ü'));
    assert!(cause.ends_with(&attempt_token(UID, 1)));
    assert_eq!(cause_with_token("   ", "[t]"), "[t]");
}

#[test]
fn credentials_not_ready_waits_without_triggering() {
    let d = decide(&object(spec(), None), &not_ready(0), &settings());
    assert_eq!(
        d.action,
        Action::Settle {
            requeue: Some(Duration::from_secs(30))
        }
    );
    assert!(d.status.pending_trigger.is_none());
    assert_eq!(cond(&d, CREDENTIALS_READY).unwrap().reason, "Unauthorized");
    assert!(
        d.events
            .iter()
            .any(|e| e.warning && e.reason == "Unauthorized"),
        "{:?}",
        d.events
    );
    let again = decide(
        &object(spec(), Some(d.status.clone())),
        &not_ready(5),
        &settings(),
    );
    assert!(
        again.events.is_empty(),
        "the same wait is not announced twice: {:?}",
        again.events
    );
    assert_eq!(cond(&d, conditions::READY).unwrap().reason, "Unauthorized");
    assert_eq!(
        cond_status(&d, conditions::STALLED).as_deref(),
        Some("False")
    );
    assert!(d
        .status
        .status_message
        .clone()
        .unwrap()
        .contains("key rejected"));
    // Recovery: same object, credentials ready → trigger.
    let d2 = decide(&object(spec(), Some(d.status)), &ready(10), &settings());
    assert!(matches!(d2.action, Action::StartAttempt(_)));
    assert_eq!(cond(&d2, CREDENTIALS_READY).unwrap().status, "True");
}

#[test]
fn stalled_credentials_mark_stalled() {
    let mut obs = not_ready(0);
    obs.credentials = CredentialsState::NotReady {
        reason: Reason::NamespaceNotAllowed,
        message: "no".into(),
        stalled: true,
    };
    let d = decide(&object(spec(), None), &obs, &settings());
    assert_eq!(
        cond_status(&d, conditions::STALLED).as_deref(),
        Some("True")
    );
    assert_eq!(
        cond_status(&d, conditions::RECONCILING).as_deref(),
        Some("False")
    );
}

fn by_name() -> DbtCloudJobRunSpec {
    let mut s = spec();
    s.job = JobSelector {
        id: None,
        project_name: Some("p".into()),
        environment_name: Some("e".into()),
        job_name: Some("j".into()),
    };
    s
}

#[test]
fn job_by_name_is_resolved_before_triggering() {
    let obj = object(by_name(), None);
    assert_eq!(
        decide(&obj, &ready(0), &settings()).action,
        Action::ResolveJob
    );
    let mut obs = ready(0);
    obs.job = Some(JobResolution::Resolved(9));
    let d = decide(&obj, &obs, &settings());
    assert!(matches!(
        d.action,
        Action::StartAttempt(StartRequest::Trigger { job_id: 9, .. })
    ));
    assert_eq!(d.status.job_id, Some(9));
}

#[test]
fn job_lookup_failures_fail_clearly_or_wait() {
    let obj = object(by_name(), None);
    for (res, reason) in [
        (
            JobResolution::NotFound("no job named j".into()),
            "JobNotFound",
        ),
        (
            JobResolution::Ambiguous("2 jobs named j".into()),
            "JobNameAmbiguous",
        ),
    ] {
        let mut obs = ready(0);
        obs.job = Some(res);
        let d = decide(&obj, &obs, &settings());
        assert_eq!(d.action, Action::Settle { requeue: None });
        assert_eq!(d.status.phase, RunPhase::Failed);
        assert_eq!(cond(&d, conditions::FAILED).unwrap().reason, reason);
        assert_eq!(
            cond_status(&d, conditions::STALLED).as_deref(),
            Some("True")
        );
        assert!(d.events.iter().any(|e| e.reason == reason && e.warning));
        // Later reconciles of the finished object keep the reason (and say nothing new).
        let again = decide(
            &object(by_name(), Some(d.status.clone())),
            &ready(100),
            &settings(),
        );
        assert_eq!(again.status, d.status);
        assert!(again.events.is_empty());
    }
    let mut obs = ready(0);
    obs.job = Some(JobResolution::Transient {
        reason: Reason::RateLimited,
        message: "slow down".into(),
    });
    let d = decide(&obj, &obs, &settings());
    assert!(matches!(d.action, Action::Settle { requeue: Some(_) }));
    assert_eq!(d.status.phase, RunPhase::Pending);
    assert_eq!(cond(&d, conditions::READY).unwrap().reason, "RateLimited");
}

fn pending_status() -> DbtCloudJobRunStatus {
    decide(&object(spec(), None), &ready(0), &settings()).status
}

#[test]
fn pending_trigger_is_searched_never_resent_blindly() {
    let obj = object(spec(), Some(pending_status()));
    let d = decide(&obj, &ready(5), &settings());
    assert_eq!(
        d.action,
        Action::SearchPendingRun(RunSearch {
            job_id: 42,
            token: attempt_token(UID, 1),
            retry_of_run_id: None,
            after_run_id: Some(NEWEST),
            requested_at: ts(0),
        })
    );
}

#[test]
fn found_pending_run_is_adopted() {
    let obj = object(spec(), Some(pending_status()));
    let mut obs = ready(5);
    obs.pending_search = PendingSearch::Found(run(100, RunStatus::Running));
    let d = decide(&obj, &obs, &settings());
    assert!(
        matches!(d.action, Action::Settle { requeue: Some(_) }),
        "{:?}",
        d.action
    );
    assert!(d.status.pending_trigger.is_none());
    assert_eq!(d.status.run_id, Some(100));
    assert_eq!(d.status.attempts.len(), 1);
    assert_eq!(d.status.phase, RunPhase::Running);
    assert!(d.events.iter().any(|e| e.reason == "Adopted"));
}

#[test]
fn missing_pending_run_waits_for_the_window_then_resends_same_token() {
    let obj = object(spec(), Some(pending_status()));
    let mut obs = ready(59);
    obs.pending_search = PendingSearch::NotFound;
    let d = decide(&obj, &obs, &settings());
    assert!(matches!(d.action, Action::Settle { requeue: Some(r) } if r <= Duration::from_secs(3)));
    assert!(d.status.pending_trigger.is_some());

    // Recorded at second 0, the record may have been made at 0.999: at second 60 the full
    // window has not certainly passed.
    let mut obs = ready(60);
    obs.pending_search = PendingSearch::NotFound;
    let d = decide(&obj, &obs, &settings());
    assert!(
        matches!(d.action, Action::Settle { .. }),
        "the recorded second is rounded down: {:?}",
        d.action
    );

    let mut obs = ready(61);
    obs.pending_search = PendingSearch::NotFound;
    let d = decide(&obj, &obs, &settings());
    let Action::StartAttempt(StartRequest::Trigger { cause, .. }) = &d.action else {
        panic!("{:?}", d.action)
    };
    assert!(
        cause.ends_with(&attempt_token(UID, 1)),
        "same attempt, same token"
    );
    let p = d.status.pending_trigger.as_ref().unwrap();
    assert_eq!((p.attempt, p.requested_at.0), (1, ts(61)));
    assert_eq!(
        p.after_run_id,
        Some(NEWEST),
        "same bound: a late run of the first send is still found"
    );
    assert!(d.events.iter().any(|e| e.reason == "TriggerNotFound"));
}

#[test]
fn trigger_records_the_newest_run_of_the_job_as_the_search_bound() {
    let obj = object(spec(), None);
    let mut obs = Observation::new(ts(0), CredentialsState::Ready { account_id: 7 });
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.action, Action::ObserveNewestRun { job_id: 42 });
    assert!(
        d.status.pending_trigger.is_none(),
        "nothing recorded before the bound is known"
    );
    for (newest, bound) in [(0, 0), (NEWEST, NEWEST)] {
        obs.newest_run_id = Some(newest);
        let d = decide(&obj, &obs, &settings());
        assert!(matches!(
            d.action,
            Action::StartAttempt(StartRequest::Trigger { .. })
        ));
        let p = d.status.pending_trigger.as_ref().unwrap();
        assert_eq!(p.after_run_id, Some(bound), "0: the job had no run");
        // The search for this trigger reads only runs newer than the bound.
        let search = RunSearch::for_pending(42, p);
        assert_eq!(search.lower_bound(), Some(bound));
    }
    // Intents recorded by earlier versions have no bound (the search is bounded by time).
    let mut legacy = pending_status().pending_trigger.unwrap();
    legacy.after_run_id = None;
    assert_eq!(RunSearch::for_pending(42, &legacy).lower_bound(), None);
}

#[test]
fn unconfirmed_trigger_is_never_sent_again_and_stalls_until_the_user_decides() {
    let obj = object(spec(), Some(pending_status()));
    let mut obs = ready(10_000);
    obs.pending_search = PendingSearch::Incomplete { runs_read: 5_000 };
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.action, Action::Settle { requeue: None });
    assert!(d.status.pending_trigger.is_some(), "the intent is kept");
    let stalled = cond(&d, conditions::STALLED).unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "TriggerUnconfirmed")
    );
    let message = d.status.status_message.clone().unwrap();
    assert!(
        message.contains("5000") && message.contains(&attempt_token(UID, 1)),
        "{message}"
    );
    assert_eq!(
        d.events
            .iter()
            .filter(|e| e.warning && e.reason == "TriggerUnconfirmed")
            .count(),
        1,
        "{:?}",
        d.events
    );
    let again = decide(&object(spec(), Some(d.status.clone())), &obs, &settings());
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(again.status, d.status);

    // The user gives up with spec.cancel: finished, and told that a run may exist.
    let mut s = spec();
    s.cancel = true;
    let d = decide(&object(s, Some(d.status)), &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Cancelled);
    assert!(d.status.pending_trigger.is_none());
    assert!(d
        .events
        .iter()
        .any(|e| e.reason == "TriggerUnconfirmed" && e.note.contains("not cancelled")));
}

#[test]
fn unknown_status_code_is_reported_once_per_code_and_followed_until_timeout() {
    let mut s = spec();
    s.timeout_seconds = Some(3_600);
    let obj = object(s.clone(), Some(running_status()));
    let unknown = |code: i64, now: i64, status: &DbtCloudJobRunStatus| {
        let mut obs = ready(now);
        obs.current_run = Some(run(100, RunStatus::Unknown(code)));
        decide(&object(s.clone(), Some(status.clone())), &obs, &settings())
    };
    let d = unknown(7, 5, obj.status.as_ref().unwrap());
    assert_eq!(
        d.action,
        Action::Settle {
            requeue: Some(Duration::from_secs(10))
        },
        "still polled"
    );
    assert_eq!(
        d.status.phase,
        RunPhase::Queued,
        "last in-flight phase kept"
    );
    let ready_c = cond(&d, conditions::READY).unwrap();
    assert_eq!(ready_c.reason, "UnknownRunStatus");
    assert!(
        ready_c.message.contains("status code 7") && ready_c.message.contains("3600s"),
        "{}",
        ready_c.message
    );
    assert_eq!(
        cond_status(&d, conditions::RECONCILING).as_deref(),
        Some("True")
    );
    assert_eq!(
        cond_status(&d, conditions::STALLED).as_deref(),
        Some("False")
    );
    let reported = |d: &Decision| {
        d.events
            .iter()
            .filter(|e| e.warning && e.reason == "UnknownRunStatus")
            .map(|e| e.note.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(reported(&d).len(), 1, "{:?}", d.events);
    assert!(reported(&d)[0].contains("code 7"));
    // Same code again: nothing new to say.
    let d2 = unknown(7, 15, &d.status);
    assert!(d2.events.is_empty(), "{:?}", d2.events);
    assert_eq!(d2.status, d.status);
    // A new code: one Event naming it.
    let d3 = unknown(8, 25, &d2.status);
    assert_eq!(reported(&d3).len(), 1, "{:?}", d3.events);
    assert!(reported(&d3)[0].contains("code 8"));
    // A known code takes over.
    let mut obs = ready(35);
    obs.current_run = Some(run(100, RunStatus::Running));
    let d4 = decide(
        &object(s.clone(), Some(d3.status.clone())),
        &obs,
        &settings(),
    );
    assert_eq!(d4.status.phase, RunPhase::Running);
    assert_eq!(cond(&d4, conditions::READY).unwrap().reason, "Running");
    // Not waited on forever: timeoutSeconds cancels it like any in-flight run.
    let d5 = unknown(8, 3_600, &d3.status);
    assert_eq!(
        d5.action,
        Action::CancelRun {
            run_id: 100,
            reason: CancelReason::Timeout
        }
    );
    // Without a timeout the message says how to bound the wait.
    let mut obs = ready(5);
    obs.current_run = Some(run(100, RunStatus::Unknown(7)));
    let d6 = decide(&object(spec(), Some(running_status())), &obs, &settings());
    assert!(
        d6.status
            .status_message
            .as_deref()
            .unwrap()
            .contains("set timeoutSeconds"),
        "{:?}",
        d6.status.status_message
    );
}

#[test]
fn missing_pending_run_with_cancel_requested_is_not_resent() {
    let mut s = spec();
    s.cancel = true;
    let obj = object(s, Some(pending_status()));
    let mut obs = ready(61);
    obs.pending_search = PendingSearch::NotFound;
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Cancelled);
    assert!(d.status.pending_trigger.is_none());
}

fn running_status() -> DbtCloudJobRunStatus {
    let d = decide(&object(spec(), None), &ready(0), &settings());
    started(&d, 100, RunStatus::Queued)
}

#[test]
fn in_flight_run_is_observed_and_phase_follows() {
    let obj = object(spec(), Some(running_status()));
    assert_eq!(
        decide(&obj, &ready(5), &settings()).action,
        Action::ObserveRun { run_id: 100 }
    );
    let mut obs = ready(5);
    obs.current_run = Some(run(100, RunStatus::Running));
    let d = decide(&obj, &obs, &settings());
    assert_eq!(
        d.action,
        Action::Settle {
            requeue: Some(Duration::from_secs(10))
        }
    );
    assert_eq!(d.status.phase, RunPhase::Running);
    assert_eq!(d.status.attempts[0].status, "Running");
    assert!(
        d.events.is_empty(),
        "a phase passed through is told by status, not by an Event: {:?}",
        d.events
    );
    // Same observation again: nothing new to say.
    let d2 = decide(&object(spec(), Some(d.status.clone())), &obs, &settings());
    assert!(d2.events.is_empty());
    assert_eq!(d2.status, d.status);
}

#[test]
fn success_fetches_details_once_then_completes() {
    let obj = object(spec(), Some(running_status()));
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Success));
    assert_eq!(
        decide(&obj, &obs, &settings()).action,
        Action::FetchDetails { run_id: 100 }
    );
    obs.details = Some(details_ok());
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.action, Action::Settle { requeue: None });
    assert_eq!(d.status.phase, RunPhase::Succeeded);
    assert_eq!(d.status.steps.len(), 1);
    assert_eq!(d.status.results.as_ref().unwrap().pass, 3);
    assert_eq!(
        d.status.duration_seconds,
        Some(30),
        "trigger (t=0) to dbt Cloud's finish (t=30)"
    );
    assert_eq!(
        cond_status(&d, conditions::COMPLETE).as_deref(),
        Some("True")
    );
    assert_eq!(cond_status(&d, conditions::READY).as_deref(), Some("True"));
    assert_eq!(
        cond_status(&d, conditions::RECONCILING).as_deref(),
        Some("False")
    );
    assert_eq!(
        cond_status(&d, conditions::STALLED).as_deref(),
        Some("False")
    );
    assert!(cond(&d, conditions::FAILED).is_none());
}

#[test]
fn failure_without_retries_fails_with_step_log() {
    let obj = object(spec(), Some(running_status()));
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Error));
    obs.details = Some(details_failed());
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Failed);
    let msg = d.status.status_message.clone().unwrap();
    assert!(msg.contains("Database Error in model orders"), "{msg}");
    assert_eq!(cond(&d, conditions::FAILED).unwrap().reason, "RunFailed");
    assert_eq!(
        cond_status(&d, conditions::STALLED).as_deref(),
        Some("True")
    );
    assert!(d
        .events
        .iter()
        .any(|e| e.reason == "Failed" && e.note.contains("orders")));
}

fn with_retry(strategy: RetryStrategy) -> DbtCloudJobRunSpec {
    let mut s = spec();
    s.retry = RetryPolicy {
        max_attempts: 2,
        strategy,
    };
    s
}

#[test]
fn rerun_failed_uses_native_retry_when_possible() {
    let obj = object(
        with_retry(RetryStrategy::RerunFailed),
        Some(running_status()),
    );
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Error));
    obs.details = Some(details_failed());
    let d = decide(&obj, &obs, &settings());
    assert_eq!(
        d.action,
        Action::StartAttempt(StartRequest::Retry {
            job_id: 42,
            run_id: 100
        })
    );
    let p = d.status.pending_trigger.as_ref().unwrap();
    assert_eq!(
        (p.attempt, p.kind, p.retry_of_run_id),
        (2, AttemptKind::RerunFailed, Some(100))
    );
    assert!(d.events.iter().any(|e| e.reason == "Retrying"));
    assert!(!d.events.iter().any(|e| e.reason == "RetryFallbackFull"));
    // Pending native retry is searched by the run it retries.
    let obj2 = object(
        with_retry(RetryStrategy::RerunFailed),
        Some(d.status.clone()),
    );
    assert_eq!(
        decide(&obj2, &ready(41), &settings()).action,
        Action::SearchPendingRun(RunSearch {
            job_id: 42,
            token: attempt_token(UID, 2),
            retry_of_run_id: Some(100),
            after_run_id: Some(100),
            requested_at: ts(40),
        })
    );
    // Attempt 2 succeeds.
    let s2 = after_start(&d.status, &run(101, RunStatus::Queued), ts(41)).0;
    assert_eq!(s2.attempts[1].kind, AttemptKind::RerunFailed);
    let obj3 = object(with_retry(RetryStrategy::RerunFailed), Some(s2));
    let mut obs = ready(60);
    obs.current_run = Some(run(101, RunStatus::Success));
    obs.details = Some(details_ok());
    let d3 = decide(&obj3, &obs, &settings());
    assert_eq!(d3.status.phase, RunPhase::Succeeded);
    assert_eq!(d3.status.attempt_count, 2);
    assert_eq!(d3.status.attempts[0].status, "Error");
}

#[test]
fn rerun_failed_falls_back_to_full_run_and_says_so() {
    let obj = object(
        with_retry(RetryStrategy::RerunFailed),
        Some(running_status()),
    );
    let mut obs = ready(40);
    let mut failed = run(100, RunStatus::Error);
    failed.can_retry = false;
    obs.current_run = Some(failed);
    obs.details = Some(details_failed());
    let d = decide(&obj, &obs, &settings());
    assert!(matches!(
        d.action,
        Action::StartAttempt(StartRequest::Trigger { .. })
    ));
    assert!(d.events.iter().any(|e| e.reason == "RetryFallbackFull"));
    let obj = object(with_retry(RetryStrategy::Full), Some(running_status()));
    obs.current_run = Some(run(100, RunStatus::Error));
    let d = decide(&obj, &obs, &settings());
    let Action::StartAttempt(StartRequest::Trigger { cause, .. }) = &d.action else {
        panic!()
    };
    assert!(cause.ends_with(&attempt_token(UID, 2)));
}

#[test]
fn retries_stop_at_max_attempts() {
    let first = object(with_retry(RetryStrategy::Full), Some(running_status()));
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Error));
    obs.details = Some(details_failed());
    let d = decide(&first, &obs, &settings());
    let s2 = started(&d, 101, RunStatus::Queued);
    let second = object(with_retry(RetryStrategy::Full), Some(s2));
    obs.current_run = Some(run(101, RunStatus::Error));
    let d2 = decide(&second, &obs, &settings());
    assert_eq!(d2.status.phase, RunPhase::Failed);
    assert_eq!(d2.status.attempt_count, 2);
}

#[test]
fn cancel_in_flight_cancels_then_finishes_cancelled() {
    let mut s = spec();
    s.cancel = true;
    let obj = object(s, Some(running_status()));
    let d = decide(&obj, &ready(5), &settings());
    assert_eq!(
        d.action,
        Action::CancelRun {
            run_id: 100,
            reason: CancelReason::Requested
        }
    );
    let mut obs = ready(6);
    obs.current_run = Some(run(100, RunStatus::Cancelled));
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Cancelled);
    assert_eq!(d.status.attempts[0].status, "Cancelled");
    assert_eq!(cond(&d, conditions::FAILED).unwrap().reason, "Cancelled");
}

#[test]
fn cancelled_in_dbt_cloud_is_cancelled_not_retried() {
    let obj = object(with_retry(RetryStrategy::Full), Some(running_status()));
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Cancelled));
    obs.details = Some(RunDetails::default());
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Cancelled);
}

#[test]
fn timeout_cancels_in_flight_run_unless_told_not_to() {
    let mut s = spec();
    s.timeout_seconds = Some(30);
    let obj = object(s.clone(), Some(running_status()));
    let d = decide(&obj, &ready(31), &settings());
    assert_eq!(
        d.action,
        Action::CancelRun {
            run_id: 100,
            reason: CancelReason::Timeout
        }
    );
    let mut obs = ready(32);
    obs.current_run = Some(run(100, RunStatus::Cancelled));
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::TimedOut);
    assert!(d.events.iter().any(|e| e.reason == "TimedOut"));

    s.cancel_on_timeout = false;
    let obj = object(s, Some(running_status()));
    let d = decide(&obj, &ready(31), &settings());
    assert_eq!(d.status.phase, RunPhase::TimedOut);
    assert_eq!(cond(&d, conditions::FAILED).unwrap().reason, "TimedOut");
}

#[test]
fn suspend_before_trigger_holds_and_resume_triggers() {
    let mut s = spec();
    s.suspend = true;
    let d = decide(&object(s.clone(), None), &ready(0), &settings());
    assert_eq!(d.action, Action::Settle { requeue: None });
    assert!(d.status.pending_trigger.is_none());
    assert_eq!(cond_status(&d, SUSPENDED).as_deref(), Some("True"));
    s.suspend = false;
    let d2 = decide(&object(s, Some(d.status)), &ready(5), &settings());
    assert!(matches!(d2.action, Action::StartAttempt(_)));
    assert!(cond(&d2, SUSPENDED).is_none());
}

#[test]
fn suspend_in_flight_cancels_and_resume_starts_a_new_attempt() {
    let mut s = spec();
    s.suspend = true;
    let obj = object(s.clone(), Some(running_status()));
    let d = decide(&obj, &ready(5), &settings());
    assert_eq!(
        d.action,
        Action::CancelRun {
            run_id: 100,
            reason: CancelReason::Suspended
        }
    );
    let mut obs = ready(6);
    obs.current_run = Some(run(100, RunStatus::Cancelled));
    let d = decide(&obj, &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Pending);
    assert_eq!(d.status.run_id, None);
    s.suspend = false;
    let d2 = decide(&object(s, Some(d.status)), &ready(7), &settings());
    let Action::StartAttempt(StartRequest::Trigger { cause, .. }) = &d2.action else {
        panic!("{:?}", d2.action)
    };
    assert!(cause.ends_with(&attempt_token(UID, 2)));
}

#[test]
fn ttl_deletes_after_expiry() {
    let mut s = spec();
    s.ttl_seconds_after_finished = Some(100);
    let obj = object(s.clone(), Some(running_status()));
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Success));
    obs.details = Some(details_ok());
    let d = decide(&obj, &obs, &settings());
    assert_eq!(
        d.action,
        Action::Settle {
            requeue: Some(Duration::from_secs(90))
        },
        "finished at t=30 in dbt Cloud"
    );
    let done = object(s, Some(d.status));
    assert_eq!(
        decide(&done, &ready(129), &settings()).action,
        Action::Settle {
            requeue: Some(Duration::from_secs(1))
        }
    );
    assert_eq!(
        decide(&done, &ready(130), &settings()).action,
        Action::Delete
    );
}

#[test]
fn after_start_records_attempt_and_clears_intent() {
    let d = decide(&object(spec(), None), &ready(0), &settings());
    let (s, note) = after_start(&d.status, &run(100, RunStatus::Queued), ts(1));
    assert!(s.pending_trigger.is_none());
    assert_eq!(
        (s.run_id, s.attempt_count, s.phase),
        (Some(100), 1, RunPhase::Queued)
    );
    assert_eq!(note.reason, "Triggered");
    // Idempotent: recording the same run twice keeps one attempt.
    let (s2, _) = after_start(&s, &run(100, RunStatus::Queued), ts(2));
    assert_eq!(s2.attempts.len(), 1);
}

/// Every combination of state and observation: the safety rules hold.
#[test]
fn exhaustive_safety_rules() {
    let phases = [
        RunPhase::Pending,
        RunPhase::Queued,
        RunPhase::Starting,
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
        RunPhase::TimedOut,
    ];
    let statuses = [
        None,
        Some(RunStatus::Queued),
        Some(RunStatus::Running),
        Some(RunStatus::Success),
        Some(RunStatus::Error),
        Some(RunStatus::Cancelled),
        Some(RunStatus::Unknown(7)),
    ];
    let searches = [
        PendingSearch::NotSearched,
        PendingSearch::NotFound,
        PendingSearch::Found(run(100, RunStatus::Running)),
        PendingSearch::Incomplete { runs_read: 5_000 },
    ];
    let mut cases = 0;
    for phase in phases {
        for has_pending in [false, true] {
            for has_run in [false, true] {
                for current in statuses {
                    for search in &searches {
                        for (cancel, suspend) in [(false, false), (true, false), (false, true)] {
                            for creds_ready in [true, false] {
                                for now in [5, 60, 61, 10_000] {
                                    for (details, newest) in [false, true]
                                        .into_iter()
                                        .flat_map(|d| [(d, None), (d, Some(NEWEST))])
                                    {
                                        cases += 1;
                                        let mut s = with_retry(RetryStrategy::RerunFailed);
                                        s.cancel = cancel;
                                        s.suspend = suspend;
                                        s.timeout_seconds = Some(5_000);
                                        let mut st = DbtCloudJobRunStatus {
                                            phase,
                                            job_id: Some(42),
                                            ..Default::default()
                                        };
                                        if has_run {
                                            st = after_start(
                                                &st,
                                                &run(99, RunStatus::Queued),
                                                ts(0),
                                            )
                                            .0;
                                            st.phase = phase;
                                        }
                                        if has_pending {
                                            st.pending_trigger = Some(PendingTrigger {
                                                attempt: st.attempt_count + 1,
                                                token: attempt_token(UID, st.attempt_count + 1),
                                                kind: AttemptKind::Full,
                                                retry_of_run_id: None,
                                                after_run_id: Some(50),
                                                requested_at: Time(ts(0)),
                                            });
                                        }
                                        let mut obs = if creds_ready {
                                            ready(now)
                                        } else {
                                            not_ready(now)
                                        };
                                        obs.current_run = current.map(|c| run(99, c));
                                        obs.pending_search = search.clone();
                                        obs.details = details.then(details_failed);
                                        obs.newest_run_id = newest;
                                        let obj = object(s, Some(st.clone()));
                                        let d = decide(&obj, &obs, &settings());
                                        let ctx = format!("{phase:?} pending={has_pending} run={has_run} current={current:?} search={search:?} cancel={cancel} suspend={suspend} creds={creds_ready} now={now} → {:?}", d.action);
                                        // Pure: the same inputs give the same decision.
                                        assert_eq!(d, decide(&obj, &obs, &settings()), "{ctx}");
                                        let starts = matches!(d.action, Action::StartAttempt(_));
                                        if phase.is_terminal() {
                                            assert!(
                                                matches!(
                                                    d.action,
                                                    Action::Settle { .. } | Action::Delete
                                                ),
                                                "{ctx}"
                                            );
                                            assert_eq!(d.status.phase, phase, "{ctx}");
                                        }
                                        if starts {
                                            // Never while a recorded trigger is unresolved...
                                            if has_pending {
                                                assert!(
                                                    matches!(search, PendingSearch::NotFound)
                                                        && now >= 61,
                                                    "{ctx}"
                                                );
                                            }
                                            // ...never without credentials, never when asked to stop,
                                            assert!(creds_ready && !cancel && !suspend, "{ctx}");
                                            // ...and always with the intent in the status to write first.
                                            let p =
                                                d.status.pending_trigger.as_ref().expect("intent");
                                            assert_eq!(
                                                p.token,
                                                attempt_token(UID, p.attempt),
                                                "{ctx}"
                                            );
                                            assert_eq!(p.requested_at.0, ts(now), "{ctx}");
                                            // ...with the lower bound of the search for its run: the
                                            // job's newest run, the failed run a native retry retries,
                                            // or, when sent again, the bound recorded the first time.
                                            let bound = match (&d.action, has_pending) {
                                                (_, true) => Some(50),
                                                (
                                                    Action::StartAttempt(StartRequest::Retry {
                                                        run_id,
                                                        ..
                                                    }),
                                                    _,
                                                ) => Some(*run_id),
                                                _ => newest,
                                            };
                                            assert!(bound.is_some(), "{ctx}");
                                            assert_eq!(p.after_run_id, bound, "{ctx}");
                                        }
                                        if matches!(d.action, Action::ObserveNewestRun { .. }) {
                                            assert!(
                                                newest.is_none()
                                                    && creds_ready
                                                    && !cancel
                                                    && !suspend,
                                                "{ctx}"
                                            );
                                        }
                                        if has_pending
                                            && matches!(search, PendingSearch::Incomplete { .. })
                                        {
                                            // Unconfirmed: never sent again; kept unless told to stop.
                                            assert!(!starts, "{ctx}");
                                            if !phase.is_terminal()
                                                && creds_ready
                                                && !cancel
                                                && !suspend
                                                && now < 5_000
                                            {
                                                assert!(
                                                    d.status.pending_trigger.is_some(),
                                                    "{ctx}"
                                                );
                                                assert!(
                                                    conditions::is_true(
                                                        &d.status.conditions,
                                                        conditions::STALLED
                                                    ),
                                                    "{ctx}"
                                                );
                                            }
                                        }
                                        if !creds_ready {
                                            assert!(
                                                !matches!(
                                                    d.action,
                                                    Action::StartAttempt(_)
                                                        | Action::CancelRun { .. }
                                                        | Action::SearchPendingRun(_)
                                                        | Action::ObserveNewestRun { .. }
                                                ),
                                                "{ctx}"
                                            );
                                        }
                                        if matches!(d.action, Action::SearchPendingRun(_)) {
                                            assert!(
                                                has_pending
                                                    && matches!(search, PendingSearch::NotSearched),
                                                "{ctx}"
                                            );
                                        }
                                        if phase.is_terminal() {
                                            // A finished run's status is final: nothing to write.
                                            assert_eq!(d.status, st, "{ctx}");
                                            assert!(d.events.is_empty(), "{ctx}");
                                        } else {
                                            // kstatus: a status always says whether it is still working.
                                            let reconciling = conditions::find(
                                                &d.status.conditions,
                                                conditions::RECONCILING,
                                            );
                                            assert!(reconciling.is_some(), "{ctx}");
                                            assert_eq!(
                                                d.status.observed_generation,
                                                Some(1),
                                                "{ctx}"
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 8 * 2 * 2 * 7 * 4 * 3 * 2 * 4 * 2 * 2);
}

#[test]
fn rejected_start_voids_the_intent() {
    let obj = object(spec(), None);
    let d = decide(&obj, &ready(0), &settings());
    let (s, note) = after_start_rejected(
        &obj,
        &d.status,
        Reason::JobNotFound,
        "404 for job 42",
        true,
        ts(1),
    );
    assert!(s.pending_trigger.is_none());
    assert_eq!(s.phase, RunPhase::Failed);
    assert_eq!(
        conditions::find(&s.conditions, conditions::FAILED)
            .unwrap()
            .reason,
        "JobNotFound"
    );
    assert!(note.warning);
    let (s, _) = after_start_rejected(&obj, &d.status, Reason::RateLimited, "429", false, ts(1));
    assert!(s.pending_trigger.is_none());
    assert_eq!(s.phase, RunPhase::Pending);
    assert!(conditions::is_true(&s.conditions, conditions::RECONCILING));
    // The next decision starts the attempt again (same attempt number: nothing was created).
    let d2 = decide(&object(spec(), Some(s)), &ready(2), &settings());
    assert_eq!(d2.status.pending_trigger.as_ref().unwrap().attempt, 1);
}

// ----- status stays small whatever dbt Cloud reports -----

/// Budget of a serialized status: etcd refuses objects over 1.5 MiB, and status is cached for
/// every object, so it must stay far below.
const STATUS_BUDGET: usize = 256 * 1024;

fn long(prefix: &str, len: usize) -> String {
    format!("{prefix}{}", "x".repeat(len))
}

fn serialized_len(status: &DbtCloudJobRunStatus) -> usize {
    serde_json::to_vec(status).unwrap().len()
}

/// A status grown by thousands of suspend/resume cycles and written by an older version that
/// bounded nothing: 5,000 attempts with huge URLs, huge messages everywhere, 10,000 steps.
fn hostile_status() -> DbtCloudJobRunStatus {
    let mut st = running_status();
    st.attempts = (1..=5_000)
        .map(|i| RunAttempt {
            attempt: i,
            run_id: if i == 5_000 {
                100
            } else {
                10_000 + i64::from(i)
            },
            url: Some(long("https://cloud.getdbt.com/", 4_096)),
            kind: AttemptKind::Full,
            status: if i == 5_000 { "Running" } else { "Cancelled" }.into(),
            created_at: Some(Time(ts(0))),
            started_at: Some(Time(ts(0))),
            finished_at: None,
        })
        .collect();
    st.attempt_count = 5_000;
    st.run_url = Some(long("https://cloud.getdbt.com/", 100_000));
    st.status_message = Some(long("message ", 1_000_000));
    for c in &mut st.conditions {
        c.message = long("condition ", 1_000_000);
    }
    st.steps = hostile_details().steps;
    st
}

/// What a hostile dbt Cloud could report for a finished run.
fn hostile_details() -> RunDetails {
    RunDetails {
        steps: (1..=10_000)
            .map(|i| StepSummary {
                index: i,
                name: long("Invoke dbt with `dbt run -s ", 1_024),
                status: long("Error", 1_024),
                duration_seconds: Some(1),
            })
            .collect(),
        results: Some(ResultsSummary {
            error: 10_000,
            failed_nodes: (0..10_000)
                .map(|i| long(&format!("model.p.m{i}_"), 1_024))
                .collect(),
            ..Default::default()
        }),
        failed_step: Some(FailedStep {
            name: long("step ", 65_536),
            log_tail: long("log ", 1_000_000),
        }),
    }
}

fn hostile_run(status: RunStatus) -> ObservedRun {
    let mut r = run(100, status);
    r.href = Some(long(
        "https://cloud.getdbt.com/deploy/7/projects/1/runs/100/",
        100_000,
    ));
    r.status_message = Some(long("dbt Cloud says ", 1_000_000));
    r
}

#[test]
fn worst_case_status_stays_under_budget() {
    let obj = object(spec(), Some(hostile_status()));
    // Still running: the old status is written back.
    let mut obs = ready(40);
    obs.current_run = Some(hostile_run(RunStatus::Running));
    let running = decide(&obj, &obs, &settings());
    // Finished with an error and a flood of details.
    obs.current_run = Some(hostile_run(RunStatus::Error));
    obs.details = Some(hostile_details());
    let failed = decide(&obj, &obs, &settings());
    assert_eq!(failed.status.phase, RunPhase::Failed);
    // Retried: a new attempt recorded on top of it all.
    let retried = decide(
        &object(with_retry(RetryStrategy::Full), Some(hostile_status())),
        &obs,
        &settings(),
    );
    assert!(
        matches!(retried.action, Action::StartAttempt(_)),
        "{:?}",
        retried.action
    );
    let mut next = hostile_run(RunStatus::Queued);
    next.id = 101;
    let (after, _) = after_start(&retried.status, &next, ts(50));
    // An old finished object is re-decided without changes, except the bounding.
    let mut done = hostile_status();
    done.phase = RunPhase::Failed;
    let old = decide(&object(spec(), Some(done)), &ready(60), &settings());
    let (rejected, _) = after_start_rejected(
        &obj,
        &hostile_status(),
        Reason::ServerError,
        &long("dbt Cloud refused ", 1_000_000),
        false,
        ts(50),
    );
    for (what, st) in [
        ("running", &running.status),
        ("failed", &failed.status),
        ("after start", &after),
        ("rejected start", &rejected),
        ("old finished", &old.status),
    ] {
        let len = serialized_len(st);
        assert!(len < STATUS_BUDGET, "{what}: status is {len} bytes");
    }
}

#[test]
fn bounded_status_marks_what_it_left_out() {
    let obj = object(spec(), Some(hostile_status()));
    let mut obs = ready(40);
    obs.current_run = Some(hostile_run(RunStatus::Error));
    obs.details = Some(hostile_details());
    let st = decide(&obj, &obs, &settings()).status;
    // Steps: the first 10 and the last 40 of 10,000.
    let idx: Vec<i64> = st.steps.iter().map(|s| s.index).collect();
    assert_eq!(idx.len(), MAX_STATUS_STEPS);
    assert_eq!(idx[..10], (1..=10).collect::<Vec<_>>()[..]);
    assert_eq!(idx[10], 10_000 - 39);
    assert_eq!(st.steps_omitted, Some(10_000 - 50));
    assert!(st.steps[0].name.len() <= MAX_NAME_LEN && st.steps[0].name.ends_with('…'));
    // Attempts: 20 listed, the current one last, the count still right.
    assert_eq!(st.attempt_count, 5_000);
    assert_eq!(st.attempts.len(), MAX_STATUS_ATTEMPTS);
    assert_eq!(st.attempts_omitted, Some(5_000 - 20));
    assert_eq!(st.attempts.last().unwrap().run_id, 100);
    assert!(st
        .attempts
        .iter()
        .all(|a| a.url.as_ref().unwrap().len() <= MAX_URL_LEN));
    // Failing nodes, URL and messages.
    let r = st.results.as_ref().unwrap();
    assert_eq!(r.failed_nodes.len(), MAX_FAILED_NODES);
    assert_eq!(r.failed_nodes_omitted, Some(10_000 - 20));
    assert!(r.failed_nodes.iter().all(|n| n.len() <= MAX_NAME_LEN));
    assert!(st.run_url.as_ref().unwrap().ends_with('…'));
    let msg = st.status_message.as_ref().unwrap();
    assert!(
        msg.len() <= conditions::MAX_MESSAGE_LEN && msg.ends_with('…'),
        "{msg}"
    );
    assert!(st
        .conditions
        .iter()
        .all(|c| c.message.len() <= conditions::MAX_MESSAGE_LEN));
    // Idempotent: bounding again changes nothing, and a new attempt starts a fresh step list.
    let mut again = st.clone();
    bound_status(&mut again);
    assert_eq!(again, st);
    let mut next = hostile_run(RunStatus::Queued);
    next.id = 101;
    let (after, _) = after_start(&st, &next, ts(60));
    assert_eq!((after.steps.len(), after.steps_omitted), (0, None));
    assert_eq!(after.attempt_count, 5_001);
    assert_eq!(after.attempts_omitted, Some(5_001 - 20));
}

#[test]
fn bounding_keeps_every_failed_attempt_so_retries_stay_within_budget() {
    // Attempt 1 failed, then 40 suspend/resume cycles, then attempt 42 failed; 43 is running.
    let mut st = running_status();
    st.attempts = (1..=43)
        .map(|i| RunAttempt {
            attempt: i,
            run_id: if i == 43 { 100 } else { 1_000 + i64::from(i) },
            url: None,
            kind: AttemptKind::Full,
            status: match i {
                1 | 42 => "Error",
                43 => "Running",
                _ => "Cancelled",
            }
            .into(),
            created_at: None,
            started_at: None,
            finished_at: None,
        })
        .collect();
    st.attempt_count = 43;
    let mut s = with_retry(RetryStrategy::Full);
    s.retry.max_attempts = 3;
    let mut obs = ready(40);
    obs.current_run = Some(run(100, RunStatus::Running));
    let bounded = decide(&object(s.clone(), Some(st)), &obs, &settings()).status;
    assert_eq!(bounded.attempts.len(), MAX_STATUS_ATTEMPTS);
    let failed =
        |st: &DbtCloudJobRunStatus| st.attempts.iter().filter(|a| a.status == "Error").count();
    assert_eq!(failed(&bounded), 2, "both failed attempts are kept");
    // The third failure exhausts maxAttempts: no fourth attempt.
    obs.current_run = Some(run(100, RunStatus::Error));
    obs.details = Some(details_failed());
    let d = decide(&object(s, Some(bounded)), &obs, &settings());
    assert_eq!(d.status.phase, RunPhase::Failed, "{:?}", d.action);
}

// ----- a failed start request -----

#[test]
fn failed_start_requests_are_classified_by_the_core() {
    let obj = object(spec(), None);
    let d = decide(&obj, &ready(0), &settings());
    assert!(d.status.pending_trigger.is_some());
    let fail = |failure: StartFailure| {
        after_start_failed(&obj, &d.status, &failure, "boom", &settings(), ts(1))
    };

    // Ambiguous: the intent stays (nothing is written), the run is searched for next.
    let a = fail(StartFailure::Ambiguous);
    assert_eq!(a.status, None);
    assert_eq!(a.requeue, Requeue::After(settings().confirm_retry));
    let e = a.event.unwrap();
    assert!(e.warning);
    assert_eq!(e.reason, Reason::TriggerOutcomeUnknown);
    assert!(
        e.note.starts_with("boom; looking for the run"),
        "{}",
        e.note
    );

    // Not sent: the intent is void, no Event, decided again soon.
    let n = fail(StartFailure::NotSent);
    let s = n.status.unwrap();
    assert!(s.pending_trigger.is_none());
    assert_eq!(s.phase, RunPhase::Pending);
    assert_eq!(
        conditions::find(&s.conditions, conditions::READY)
            .unwrap()
            .reason,
        "TriggerNotSent"
    );
    assert_eq!(
        s.status_message.as_deref(),
        Some("Attempt 1 was not sent (boom); it is tried again")
    );
    assert_eq!(n.event, None);
    assert_eq!(n.requeue, Requeue::Jittered(Duration::from_secs(1)));

    // Final refusals fail the run and wait for a change.
    for (failure, reason) in [
        (StartFailure::JobNotFound, Reason::JobNotFound),
        (StartFailure::Invalid, Reason::TriggerRejected),
    ] {
        let r = fail(failure);
        let s = r.status.unwrap();
        assert!(s.pending_trigger.is_none());
        assert_eq!(s.phase, RunPhase::Failed);
        assert_eq!(
            conditions::find(&s.conditions, conditions::FAILED)
                .unwrap()
                .reason,
            reason.as_str()
        );
        assert_eq!(r.requeue, Requeue::AwaitChange);
        let e = r.event.unwrap();
        assert!(e.warning);
        assert_eq!(e.reason, reason);
        assert_eq!(e.note, "dbt Cloud refused the trigger: boom");
    }

    // Other refusals wait under the error's reason, after Retry-After or the credentials retry.
    for (retry_after, expected) in [
        (Some(Duration::from_secs(7)), Duration::from_secs(7)),
        (None, settings().credentials_retry),
    ] {
        let r = fail(StartFailure::Refused {
            reason: Reason::RateLimited,
            retry_after,
        });
        let s = r.status.unwrap();
        assert!(s.pending_trigger.is_none());
        assert_eq!(s.phase, RunPhase::Pending);
        assert!(conditions::is_true(&s.conditions, conditions::RECONCILING));
        assert_eq!(r.requeue, Requeue::Jittered(expected));
        assert_eq!(r.event.unwrap().reason, Reason::RateLimited);
    }
}

#[test]
fn an_accepted_cancel_counts_as_cancelled() {
    for status in [
        RunStatus::Queued,
        RunStatus::Starting,
        RunStatus::Running,
        RunStatus::Unknown(7),
        RunStatus::Cancelled,
    ] {
        assert_eq!(
            after_cancel_accepted(run(5, status)).status,
            RunStatus::Cancelled
        );
    }
    // A run that finished before the cancel arrived keeps its outcome.
    for status in [RunStatus::Success, RunStatus::Error] {
        assert_eq!(after_cancel_accepted(run(5, status)).status, status);
    }
}

// ----- deletion -----

const DELETION_TIMEOUT: Duration = Duration::from_secs(300);

fn pending_trigger(requested_at: i64) -> PendingTrigger {
    PendingTrigger {
        attempt: 2,
        token: attempt_token(UID, 2),
        kind: AttemptKind::Full,
        retry_of_run_id: None,
        after_run_id: Some(NEWEST),
        requested_at: Time(ts(requested_at)),
    }
}

#[test]
fn deletion_decisions_cover_every_state() {
    let phases = [
        RunPhase::Pending,
        RunPhase::Queued,
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
        RunPhase::TimedOut,
    ];
    let searches = [
        PendingSearch::NotSearched,
        PendingSearch::Found(run(101, RunStatus::Running)),
        PendingSearch::NotFound,
        PendingSearch::Incomplete { runs_read: 500 },
    ];
    let mut cases = 0;
    for phase in phases {
        for run_id in [None, Some(100)] {
            for pending in [false, true] {
                for job_known in [false, true] {
                    for cancel_on_delete in [false, true] {
                        // Seconds since the deletion (300: the timeout has passed).
                        for deleted_ago in [0, 299, 300] {
                            for credentials_ready in [false, true] {
                                // Seconds since the trigger was recorded (window: 60 s).
                                for recorded_ago in [5, 61] {
                                    for search in &searches {
                                        cases += 1;
                                        let now = 1_000;
                                        let mut spec = if job_known { spec() } else { by_name() };
                                        spec.cancel_on_delete = cancel_on_delete;
                                        let status = DbtCloudJobRunStatus {
                                            phase,
                                            run_id,
                                            pending_trigger: pending
                                                .then(|| pending_trigger(now - recorded_ago)),
                                            ..Default::default()
                                        };
                                        let mut obj = object(spec, Some(status));
                                        obj.metadata.deletion_timestamp =
                                            Some(Time(ts(now - deleted_ago)));
                                        let obs = DeletionObservation {
                                            now: ts(now),
                                            credentials_ready,
                                            pending_search: search.clone(),
                                            duplicates: vec![102],
                                        };
                                        let got =
                                            cleanup(&obj, &obs, &settings(), DELETION_TIMEOUT);
                                        let in_flight =
                                            !phase.is_terminal() && (run_id.is_some() || pending);
                                        let nothing = Cleanup::Release {
                                            cancel: vec![],
                                            events: vec![],
                                        };
                                        let ctx = format!("{phase:?} run_id={run_id:?} pending={pending} job={job_known} cod={cancel_on_delete} deleted_ago={deleted_ago} creds={credentials_ready} recorded_ago={recorded_ago} {search:?}");
                                        if !in_flight || !cancel_on_delete {
                                            assert_eq!(got, nothing, "{ctx}");
                                            continue;
                                        }
                                        if deleted_ago >= 300 {
                                            match &got {
                                                Cleanup::Release { cancel, events } => {
                                                    assert!(cancel.is_empty(), "{ctx}");
                                                    assert_eq!(events.len(), 1, "{ctx}");
                                                    assert_eq!(
                                                        events[0].reason,
                                                        Reason::CancelAbandoned
                                                    );
                                                    assert!(events[0].warning);
                                                }
                                                other => panic!("{ctx}: {other:?}"),
                                            }
                                            continue;
                                        }
                                        if !credentials_ready {
                                            assert_eq!(
                                                got,
                                                Cleanup::Wait {
                                                    message: "the credentials are not ready to cancel the dbt Cloud run".into(),
                                                    retry_in: Duration::from_secs(10),
                                                },
                                                "{ctx}"
                                            );
                                            continue;
                                        }
                                        if !(pending && job_known) {
                                            assert_eq!(
                                                got,
                                                Cleanup::Release {
                                                    cancel: run_id.into_iter().collect(),
                                                    events: vec![],
                                                },
                                                "{ctx}"
                                            );
                                            continue;
                                        }
                                        match search {
                                            PendingSearch::NotSearched => assert_eq!(
                                                got,
                                                Cleanup::Search(RunSearch::for_pending(
                                                    42,
                                                    &pending_trigger(now - recorded_ago)
                                                )),
                                                "{ctx}"
                                            ),
                                            PendingSearch::Found(r) => assert_eq!(
                                                got,
                                                Cleanup::Release {
                                                    cancel: vec![r.id, 102],
                                                    events: vec![],
                                                },
                                                "{ctx}"
                                            ),
                                            PendingSearch::Incomplete { .. } => match &got {
                                                Cleanup::Release { cancel, events } => {
                                                    assert!(cancel.is_empty(), "{ctx}");
                                                    assert_eq!(
                                                        events
                                                            .iter()
                                                            .map(|e| e.reason)
                                                            .collect::<Vec<_>>(),
                                                        vec![Reason::TriggerUnconfirmed],
                                                        "{ctx}"
                                                    );
                                                }
                                                other => panic!("{ctx}: {other:?}"),
                                            },
                                            PendingSearch::NotFound if recorded_ago < 61 => {
                                                assert_eq!(
                                                    got,
                                                    Cleanup::Wait {
                                                        message: "confirming whether attempt 2 reached dbt Cloud before cancelling it".into(),
                                                        retry_in: settings().confirm_retry,
                                                    },
                                                    "{ctx}"
                                                )
                                            }
                                            PendingSearch::NotFound => {
                                                assert_eq!(got, nothing, "{ctx}")
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 7 * 2 * 2 * 2 * 2 * 3 * 2 * 2 * 4);
}

#[test]
fn deletion_without_a_status_or_a_deletion_time_lets_go_or_counts_from_now() {
    let obj = object(spec(), None);
    let obs = DeletionObservation::new(ts(0), true);
    assert_eq!(
        cleanup(&obj, &obs, &settings(), DELETION_TIMEOUT),
        Cleanup::Release {
            cancel: vec![],
            events: vec![],
        }
    );
    // No deletion time recorded (not yet seen): counted from now, so not abandoned.
    let status = DbtCloudJobRunStatus {
        phase: RunPhase::Running,
        run_id: Some(100),
        ..Default::default()
    };
    let obj = object(spec(), Some(status));
    assert_eq!(
        cleanup(&obj, &obs, &settings(), DELETION_TIMEOUT),
        Cleanup::Release {
            cancel: vec![100],
            events: vec![],
        }
    );
    assert_eq!(cancelled_on_delete(100).reason, Reason::Cancelled);
    assert!(!cancelled_on_delete(100).warning);
}

#[test]
fn attempt_status_reads_back_what_status_shows() {
    for status in [
        RunStatus::Queued,
        RunStatus::Starting,
        RunStatus::Running,
        RunStatus::Success,
        RunStatus::Error,
        RunStatus::Cancelled,
    ] {
        let mut a = RunAttempt {
            attempt: 1,
            run_id: 1,
            url: None,
            kind: AttemptKind::Full,
            status: String::new(),
            created_at: None,
            started_at: None,
            finished_at: None,
        };
        set_attempt_status(&mut a, status);
        assert_eq!(attempt_status(&a), Some(status));
        assert_eq!(attempt_failed(&a), status == RunStatus::Error);
    }
    let mut a = RunAttempt {
        attempt: 1,
        run_id: 1,
        url: None,
        kind: AttemptKind::Full,
        status: String::new(),
        created_at: None,
        started_at: None,
        finished_at: None,
    };
    set_attempt_status(&mut a, RunStatus::Unknown(7));
    assert_eq!(a.status, "Unknown");
    assert_eq!(attempt_status(&a), None);
}

/// Waiting for credentials that are not validated *yet* (the operator starting) is said by the
/// condition only; a real credentials problem is also an Event.
#[test]
fn credentials_not_validated_yet_is_not_an_event() {
    let obj = object(spec(), None);
    let obs = Observation::new(
        ts(0),
        CredentialsState::NotReady {
            reason: Reason::CredentialsNotValidated,
            message: "not validated yet".into(),
            stalled: false,
        },
    );
    let d = decide(&obj, &obs, &settings());
    assert!(matches!(d.action, Action::Settle { .. }), "{:?}", d.action);
    assert!(d.events.is_empty(), "{:?}", d.events);
    let ready = conditions::find(&d.status.conditions, conditions::READY).unwrap();
    assert_eq!(ready.reason, "CredentialsNotValidated");
    // The same wait for a rejected key is announced.
    let d = decide(&obj, &not_ready(0), &settings());
    assert_eq!(
        d.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        vec![Reason::Unauthorized]
    );
}
