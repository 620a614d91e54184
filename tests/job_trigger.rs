//! `DbtCloudJobTrigger` on the real kube-apiserver with the operator's controllers in-process and
//! the dbt Cloud simulator: schedule slots with a manual clock (no real minutes are waited for),
//! crashes between deciding and creating, revision changes, concurrency policies, history limits,
//! catch-up after downtime, bad input, and `kubectl dbtcloud trigger`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use dbt_cloud_operator::cli::terminal::{Ctx, ScriptedPrompt};
use dbt_cloud_operator::cli::{trigger as trigger_cli, Cli, Command};
use dbt_cloud_operator::controller::trigger_policy::{
    scheduled_run_name, Schedule, REVISION_ANNOTATION, SCHEDULED_AT_ANNOTATION,
};
use dbt_cloud_operator::controller::Clock;
use dbt_cloud_operator::crd::{DbtCloudJobRun, DbtCloudJobTrigger, RunPhase};
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome};
use http::Method;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use support::*;

fn template(job: i64) -> Value {
    json!({"spec": {"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": 1}})
}

fn triggers(env: &Env) -> Api<DbtCloudJobTrigger> {
    Api::namespaced(env.client.clone(), &env.ns)
}

async fn create_trigger(env: &Env, name: &str, spec: Value) -> DbtCloudJobTrigger {
    let t: DbtCloudJobTrigger = serde_json::from_value(json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobTrigger",
        "metadata": {"name": name, "namespace": env.ns},
        "spec": spec
    }))
    .unwrap();
    triggers(env)
        .create(&PostParams::default(), &t)
        .await
        .unwrap_or_else(|e| panic!("create trigger {name}: {e}"))
}

async fn patch_spec(env: &Env, name: &str, spec: Value) -> i64 {
    let t = triggers(env)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
    t.metadata.generation.unwrap()
}

/// Runs controlled by the trigger `name`, by name.
async fn children(env: &Env, name: &str) -> Vec<DbtCloudJobRun> {
    let mut runs: Vec<DbtCloudJobRun> = env
        .runs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references().iter().any(|o| {
                o.kind == "DbtCloudJobTrigger" && o.name == name && o.controller == Some(true)
            })
        })
        .collect();
    runs.sort_by_key(|r| r.name_any());
    runs
}

async fn child_names(env: &Env, name: &str) -> Vec<String> {
    children(env, name)
        .await
        .iter()
        .map(|r| r.name_any())
        .collect()
}

/// Waits (bounded: 30 s) until the trigger satisfies `pred`.
async fn wait_trigger(
    env: &Env,
    name: &str,
    what: &str,
    pred: impl Fn(&DbtCloudJobTrigger) -> bool,
) -> DbtCloudJobTrigger {
    let mut last = None;
    for _ in 0..1500 {
        if let Some(t) = triggers(env).get_opt(name).await.unwrap() {
            if pred(&t) {
                return t;
            }
            last = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "timed out waiting for trigger {name}: {what}; last status: {:#?}",
        last.and_then(|t| t.status)
    );
}

/// Waits until the trigger has observed its current generation.
async fn wait_observed(env: &Env, name: &str) -> DbtCloudJobTrigger {
    wait_trigger(env, name, "observedGeneration == generation", |t| {
        t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
    })
    .await
}

/// Waits until the trigger has exactly `n` runs (bounded), then returns their names.
async fn wait_children(env: &Env, name: &str, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..1500 {
        names = child_names(env, name).await;
        if names.len() == n {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("trigger {name} has runs {names:?}, want {n}");
}

/// Checks for a while that the trigger's runs stay exactly `want`.
async fn stays(env: &Env, name: &str, want: &[String]) {
    for _ in 0..25 {
        assert_eq!(child_names(env, name).await, want, "runs of {name} changed");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn condition_of(t: &DbtCloudJobTrigger, type_: &str) -> Option<(String, String, String)> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The first slot of `schedule` after `t`.
fn next_slot(schedule: &str, t: Timestamp) -> Timestamp {
    Schedule::parse(schedule, None)
        .unwrap()
        .next_after(t)
        .unwrap()
}

fn created_at(t: &DbtCloudJobTrigger) -> Timestamp {
    t.metadata.creation_timestamp.as_ref().unwrap().0
}

/// A manual clock standing at the real time, and an operator using it.
fn operator_with_clock(env: &Env) -> (Operator, Clock) {
    let clock = Clock::manual(Timestamp::now());
    (start_with_clock(env, &clock), clock)
}

fn start_with_clock(env: &Env, clock: &Clock) -> Operator {
    let mut config = test_config(&env.sim, &env.ns);
    config.clock = clock.clone();
    env.start_operator_with(config)
}

fn secs(s: i64) -> SignedDuration {
    SignedDuration::from_secs(s)
}

/// dbt Cloud runs triggered per DbtCloudJobRun (by the operator's cause marker): every run was
/// triggered exactly once.
fn assert_each_triggered_once(env: &Env, runs: &[DbtCloudJobRun]) {
    let triggers = env.sim.triggers();
    for r in runs {
        let uid = r.uid().unwrap();
        let n = triggers.iter().filter(|t| t.cause.contains(&uid)).count();
        assert_eq!(
            n,
            1,
            "{} was triggered {n} times in dbt Cloud",
            r.name_any()
        );
    }
}

#[tokio::test]
async fn a_schedule_starts_exactly_one_run_per_slot_across_crashes_and_restarts() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let (op, clock) = operator_with_clock(&env);
    let t = create_trigger(
        &env,
        "nightly",
        json!({"schedule": "* * * * *", "runTemplate": template(JOB_OK),
               "successfulRunsHistoryLimit": 20}),
    )
    .await;
    let slot1 = next_slot("* * * * *", created_at(&t));
    let t = wait_trigger(&env, "nightly", "nextScheduleTime", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.next_schedule_time.as_ref())
            .map(|n| n.0)
            == Some(slot1)
    })
    .await;
    assert_eq!(condition_of(&t, "Ready").unwrap().0, "True");
    assert!(child_names(&env, "nightly").await.is_empty());

    // Slot 1: one run, named after the slot, annotated, owned.
    clock.set(slot1 + secs(1));
    let names = wait_children(&env, "nightly", 1).await;
    assert_eq!(names, vec![scheduled_run_name("nightly", slot1)]);
    let run = env.wait_phase(&names[0], RunPhase::Succeeded).await;
    assert_eq!(
        run.annotations()[SCHEDULED_AT_ANNOTATION],
        slot1.to_string()
    );
    env.wait_events("nightly", &["RunStarted"]).await;

    // Slot 2: the create fails (the API server falls over), the operator crashes, a new one
    // starts: one run for the slot.
    env.faults
        .fail_next(Method::POST, "/dbtcloudjobruns", 503, 1);
    let slot2 = slot1 + secs(60);
    clock.set(slot2 + secs(1));
    env.wait_until("the create was refused", || {
        env.requests().iter().any(|r| {
            r.method == Method::POST && r.path.ends_with("/dbtcloudjobruns") && r.status == 503
        })
    })
    .await;
    op.kill().await;
    let op = start_with_clock(&env, &clock);
    wait_children(&env, "nightly", 2).await;
    wait_trigger(&env, "nightly", "slot 2 recorded", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(|x| x.0)
            == Some(slot2)
    })
    .await;

    // Slot 3: the run is created, then the operator dies before its status write lands.
    env.faults.fail_next(
        Method::PATCH,
        "/dbtcloudjobtriggers/nightly/status",
        503,
        1000,
    );
    let slot3 = slot2 + secs(60);
    clock.set(slot3 + secs(1));
    wait_children(&env, "nightly", 3).await;
    env.wait_until("a status write failed after the create", || {
        env.requests().iter().any(|r| {
            r.method == Method::PATCH && r.path.ends_with("/nightly/status") && r.status == 503
        })
    })
    .await;
    op.kill().await;
    env.faults.clear_failures();
    let stale = triggers(&env).get("nightly").await.unwrap();
    assert_eq!(
        stale.status.unwrap().last_schedule_time.map(|t| t.0),
        Some(slot2),
        "the status write of slot 3 never landed"
    );
    let op = start_with_clock(&env, &clock);
    let t = wait_trigger(&env, "nightly", "slot 3 recorded", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(|x| x.0)
            == Some(slot3)
    })
    .await;
    assert_eq!(
        t.status
            .as_ref()
            .unwrap()
            .next_schedule_time
            .as_ref()
            .map(|x| x.0),
        Some(slot3 + secs(60))
    );

    // Graceful restarts between slots change nothing; the next slot starts one run.
    op.shutdown().await;
    let op = start_with_clock(&env, &clock);
    let want: Vec<String> = [slot1, slot2, slot3]
        .iter()
        .map(|s| scheduled_run_name("nightly", *s))
        .collect();
    stays(&env, "nightly", &want).await;
    clock.set(slot3 + secs(61));
    let names = wait_children(&env, "nightly", 4).await;
    assert!(names.contains(&scheduled_run_name("nightly", slot3 + secs(60))));
    for n in &names {
        env.wait_phase(n, RunPhase::Succeeded).await;
    }
    assert_each_triggered_once(&env, &children(&env, "nightly").await);
    let t = wait_trigger(&env, "nightly", "lastSuccessfulTime", |t| {
        t.status
            .as_ref()
            .is_some_and(|s| s.last_successful_time.is_some() && s.active.is_empty())
    })
    .await;
    assert_eq!(
        t.status.unwrap().last_run_name,
        Some(scheduled_run_name("nightly", slot3 + secs(60)))
    );
    op.shutdown().await;
}

#[tokio::test]
async fn each_revision_change_starts_one_run_and_an_unchanged_revision_none() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let op = env.start_operator();
    create_trigger(
        &env,
        "deploy",
        json!({"revision": "3f2a9c1", "revisionAsGitSha": true, "runTemplate": template(JOB_OK),
               "successfulRunsHistoryLimit": 10}),
    )
    .await;
    let first = wait_children(&env, "deploy", 1).await;
    let run = env.wait_phase(&first[0], RunPhase::Succeeded).await;
    assert!(first[0].starts_with("deploy-r-"), "{first:?}");
    assert_eq!(run.annotations()[REVISION_ANNOTATION], "3f2a9c1");
    assert_eq!(
        run.spec.trigger.as_ref().unwrap().git_sha.as_deref(),
        Some("3f2a9c1")
    );
    // N changes → N more runs (waiting for each to be recorded, as GitOps syncs would).
    for (i, rev) in ["8e1b2d4", "c0ffee0", "3f2a9c1"].iter().enumerate() {
        patch_spec(&env, "deploy", json!({ "revision": rev })).await;
        wait_children(&env, "deploy", i + 2).await;
        wait_trigger(&env, "deploy", "revision recorded", |t| {
            t.status.as_ref().and_then(|s| s.last_revision.as_deref()) == Some(*rev)
        })
        .await;
    }
    let names = child_names(&env, "deploy").await;
    // Re-applied unchanged (server-side apply of the same revision, and a change of another
    // field): none.
    let gen = patch_spec(&env, "deploy", json!({"revision": "3f2a9c1"})).await;
    let gen2 = patch_spec(&env, "deploy", json!({"failedRunsHistoryLimit": 2})).await;
    assert!(gen2 > gen);
    wait_observed(&env, "deploy").await;
    stays(&env, "deploy", &names).await;
    for n in &names {
        env.wait_phase(n, RunPhase::Succeeded).await;
    }
    assert_each_triggered_once(&env, &children(&env, "deploy").await);
    let t = triggers(&env).get("deploy").await.unwrap();
    assert_eq!(t.status.unwrap().revision_changes, 4);
    op.shutdown().await;
}

#[tokio::test]
async fn concurrency_policies_allow_forbid_and_replace() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let (op, clock) = operator_with_clock(&env);
    let mut created = Timestamp::UNIX_EPOCH;
    // A slow job per trigger (dbt Cloud queues the runs of one job behind each other).
    for (i, policy) in ["Allow", "Forbid", "Replace"].into_iter().enumerate() {
        let job = 300 + i as i64;
        env.sim.add_job(
            ACCOUNT,
            JobSpec {
                id: job,
                project_id: 10,
                environment_id: 20,
                name: format!("slow-{policy}"),
                steps: vec!["dbt build".into()],
                behavior: JobBehavior {
                    queued: Duration::from_millis(20),
                    starting: Duration::from_millis(20),
                    running: Duration::from_secs(600),
                    outcome: Outcome::Success,
                    ..JobBehavior::default()
                },
            },
        );
        let t = create_trigger(
            &env,
            &policy.to_lowercase(),
            json!({"schedule": "* * * * *", "concurrencyPolicy": policy,
                   "runTemplate": template(job)}),
        )
        .await;
        created = created.max(created_at(&t));
    }
    let slot1 = next_slot("* * * * *", created);
    clock.set(slot1 + secs(1));
    for name in ["allow", "forbid", "replace"] {
        let names = wait_children(&env, name, 1).await;
        env.wait_phase(&names[0], RunPhase::Running).await;
    }
    let slot2 = slot1 + secs(60);
    clock.set(slot2 + secs(1));

    // Allow: both are active (dbt Cloud queues the second behind the first).
    let allow = wait_children(&env, "allow", 2).await;
    env.wait_phase(&allow[0], RunPhase::Running).await;
    env.wait_run(&allow[1], "triggered", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.run_id.is_some() && !s.phase.is_terminal())
    })
    .await;
    // Replace: the first is cancelled (spec.cancel, then Cancelled), the second runs.
    let replace = wait_children(&env, "replace", 2).await;
    let old = scheduled_run_name("replace", slot1);
    let new = scheduled_run_name("replace", slot2);
    assert_eq!(replace, vec![old.clone(), new.clone()]);
    let cancelled = env.wait_phase(&old, RunPhase::Cancelled).await;
    assert!(cancelled.spec.cancel);
    env.wait_phase(&new, RunPhase::Running).await;
    env.wait_events("replace", &["RunReplaced", "RunStarted"])
        .await;
    // Forbid: skipped, recorded in status and an Event, and not started later.
    env.wait_events("forbid", &["RunSkipped"]).await;
    let t = wait_trigger(&env, "forbid", "lastSkipped", |t| {
        t.status.as_ref().is_some_and(|s| s.last_skipped.is_some())
    })
    .await;
    let skipped = t.status.unwrap().last_skipped.unwrap();
    assert_eq!(skipped.reason, "Forbidden");
    assert_eq!(skipped.schedule_time.map(|t| t.0), Some(slot2));
    let forbid = child_names(&env, "forbid").await;
    assert_eq!(forbid, vec![scheduled_run_name("forbid", slot1)]);
    // The active run ends (cancelled by hand): still nothing for the skipped slot.
    env.runs()
        .patch(
            &forbid[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .unwrap();
    env.wait_phase(&forbid[0], RunPhase::Cancelled).await;
    wait_trigger(&env, "forbid", "no active run", |t| {
        t.status.as_ref().is_some_and(|s| s.active_count == 0)
    })
    .await;
    stays(&env, "forbid", &forbid).await;
    // The next slot starts again.
    clock.set(slot2 + secs(61));
    wait_children(&env, "forbid", 2).await;
    let t = wait_trigger(&env, "allow", "three active", |t| {
        t.status.as_ref().is_some_and(|s| s.active_count == 3)
    })
    .await;
    assert_eq!(t.status.unwrap().active.len(), 3);
    op.shutdown().await;
}

#[tokio::test]
async fn history_limits_are_kept_by_the_operator() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let op = env.start_operator();
    create_trigger(
        &env,
        "hist",
        json!({"revision": "r0", "runTemplate": template(JOB_OK),
               "successfulRunsHistoryLimit": 2, "failedRunsHistoryLimit": 1}),
    )
    .await;
    let mut started = Vec::new();
    for i in 0..5 {
        if i > 0 {
            patch_spec(&env, "hist", json!({"revision": format!("r{i}")})).await;
        }
        let run = wait_trigger(&env, "hist", "revision recorded", |t| {
            t.status.as_ref().and_then(|s| s.last_revision.clone()) == Some(format!("r{i}"))
        })
        .await
        .status
        .unwrap()
        .last_run_name
        .unwrap();
        env.wait_phase(&run, RunPhase::Succeeded).await;
        started.push(run);
    }
    // Only the two newest successful runs are left, deleted by the operator itself.
    wait_exactly(&env, "hist", &started[3..]).await;
    env.wait_events("hist", &["RunsDeleted"]).await;
    for gone in &started[..3] {
        assert!(env.run(gone).await.is_none(), "{gone} was kept");
    }
    // Failed runs have their own limit.
    patch_spec(&env, "hist", json!({"runTemplate": template(JOB_FAILS)})).await;
    let mut failed = Vec::new();
    for i in 5..8 {
        patch_spec(&env, "hist", json!({"revision": format!("r{i}")})).await;
        let run = wait_trigger(&env, "hist", "revision recorded", |t| {
            t.status.as_ref().and_then(|s| s.last_revision.clone()) == Some(format!("r{i}"))
        })
        .await
        .status
        .unwrap()
        .last_run_name
        .unwrap();
        env.wait_phase(&run, RunPhase::Failed).await;
        failed.push(run);
    }
    let want = vec![started[3].clone(), started[4].clone(), failed[2].clone()];
    wait_exactly(&env, "hist", &want).await;
    op.shutdown().await;
}

/// Waits (bounded) until the trigger `name` has exactly the runs `want`.
async fn wait_exactly(env: &Env, name: &str, want: &[String]) {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    let mut got = BTreeSet::new();
    for _ in 0..1500 {
        got = child_names(env, name).await.into_iter().collect();
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("runs of {name}: {got:?}, want {want:?}");
}

#[tokio::test]
async fn after_downtime_at_most_one_missed_slot_is_caught_up_within_the_deadline() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let (op, clock) = operator_with_clock(&env);
    let schedule = "*/10 * * * *";
    let t = create_trigger(
        &env,
        "catchup",
        json!({"schedule": schedule, "startingDeadlineSeconds": 90,
               "runTemplate": template(JOB_OK), "successfulRunsHistoryLimit": 10}),
    )
    .await;
    let slot1 = next_slot(schedule, created_at(&t));
    clock.set(slot1 + secs(5));
    wait_children(&env, "catchup", 1).await;
    op.shutdown().await;

    // Down for five slots; back 30 s after the latest: that one (only) is started.
    let latest = slot1 + secs(50 * 60);
    clock.set(latest + secs(30));
    let op = start_with_clock(&env, &clock);
    let names = wait_children(&env, "catchup", 2).await;
    assert!(
        names.contains(&scheduled_run_name("catchup", latest)),
        "{names:?}"
    );
    env.wait_events("catchup", &["MissedSchedule"]).await;
    stays(&env, "catchup", &names).await;
    op.shutdown().await;

    // Down again; back 5 minutes after the next slot, beyond the 90 s deadline: nothing starts,
    // the miss is recorded, and the following slot starts on time.
    let missed = latest + secs(600);
    clock.set(missed + secs(300));
    let op = start_with_clock(&env, &clock);
    let t = wait_trigger(&env, "catchup", "missed slot recorded", |t| {
        t.status
            .as_ref()
            .and_then(|s| s.last_skipped.as_ref())
            .is_some_and(|s| s.reason == "MissedDeadline")
    })
    .await;
    let skipped = t.status.unwrap().last_skipped.unwrap();
    assert_eq!(skipped.schedule_time.map(|t| t.0), Some(missed));
    stays(&env, "catchup", &names).await;
    clock.set(missed + secs(601));
    wait_children(&env, "catchup", 3).await;
    op.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_at_admission_or_stalls_without_a_hot_loop() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let (op, clock) = operator_with_clock(&env);
    // Refused by the API server.
    for (spec, fragment) in [
        (json!({"schedule": "every day"}), "spec.schedule"),
        (
            json!({"schedule": "0 2 * * *", "timeZone": "Europe Berlin"}),
            "spec.timeZone",
        ),
        (
            json!({"timeZone": "UTC"}),
            "spec.timeZone needs spec.schedule",
        ),
        (
            json!({"concurrencyPolicy": "Sometimes"}),
            "concurrencyPolicy",
        ),
        (
            json!({"revisionAsGitSha": true,
                "runTemplate": {"spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 1},
                                          "trigger": {"gitSha": "abc"}}}}),
            "either spec.revisionAsGitSha",
        ),
        (
            json!({"runTemplate": {"spec": {"credentialsRef": {"name": "creds"}, "job": {}}}}),
            "job.id",
        ),
    ] {
        let mut full = json!({"runTemplate": template(JOB_OK)});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        let obj: Value = json!({
            "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobTrigger",
            "metadata": {"name": "bad", "namespace": env.ns}, "spec": full
        });
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            env.client.clone(),
            &env.ns,
            &kube::api::ApiResource::erase::<DbtCloudJobTrigger>(&()),
        );
        let err = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap(),
            )
            .await
            .expect_err(&format!("{spec} should be refused"));
        assert!(err.to_string().contains(fragment), "{spec}: {err}");
    }

    // Passes the schema, caught by the operator: Stalled with the reason, one Event.
    create_trigger(
        &env,
        "badcron",
        json!({"schedule": "61 * * * *", "runTemplate": template(JOB_OK)}),
    )
    .await;
    create_trigger(
        &env,
        "badzone",
        json!({"schedule": "0 2 * * *", "timeZone": "Mars/Olympus_Mons", "runTemplate": template(JOB_OK)}),
    )
    .await;
    for (name, reason) in [
        ("badcron", "InvalidSchedule"),
        ("badzone", "InvalidTimeZone"),
    ] {
        let t = wait_trigger(&env, name, "Stalled", |t| {
            condition_of(t, "Stalled").is_some_and(|c| c.0 == "True")
        })
        .await;
        let (_, r, message) = condition_of(&t, "Stalled").unwrap();
        assert_eq!(r, reason);
        assert!(
            message.contains("e.g.") || message.contains("Europe/Berlin"),
            "{message}"
        );
        assert_eq!(condition_of(&t, "Ready").unwrap().0, "False");
        env.wait_events(name, &[reason]).await;
    }

    // A template the API server refuses as a DbtCloudJobRun (a label value it does not allow):
    // Stalled, not retried while the spec is unchanged, retried once it is fixed.
    create_trigger(
        &env,
        "badtemplate",
        json!({"schedule": "* * * * *", "revision": "r1",
               "runTemplate": {"metadata": {"labels": {"team": "data team!"}},
                               "spec": template(JOB_OK)["spec"]}}),
    )
    .await;
    let t = wait_trigger(&env, "badtemplate", "Stalled", |t| {
        condition_of(t, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, reason, message) = condition_of(&t, "Stalled").unwrap();
    assert_eq!(reason, "RunTemplateRejected");
    assert!(message.contains("team"), "{message}");
    env.wait_events("badtemplate", &["RunTemplateRejected"])
        .await;
    let posts = || {
        env.requests()
            .iter()
            .filter(|r| r.method == Method::POST && r.path.ends_with("/dbtcloudjobruns"))
            .count()
    };
    let before = posts();
    assert_eq!(before, 1, "one refused create");
    // Slots come and go: nothing is tried again.
    let slot = next_slot("* * * * *", created_at(&t));
    for m in 0..3 {
        clock.set(slot + secs(60 * m + 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        posts(),
        before,
        "a refused template was retried without a change"
    );
    // Fixed: the revision's run and the latest slot's start.
    patch_spec(
        &env,
        "badtemplate",
        json!({"runTemplate": {"metadata": {"labels": {"team": "data-team"}}}}),
    )
    .await;
    let names = wait_children(&env, "badtemplate", 2).await;
    let t = wait_observed(&env, "badtemplate").await;
    assert_eq!(condition_of(&t, "Ready").unwrap().0, "True", "{names:?}");
    assert_eq!(condition_of(&t, "Stalled").unwrap().0, "False");
    op.shutdown().await;
}

#[tokio::test]
async fn kubectl_dbtcloud_trigger_starts_a_run_now() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let op = env.start_operator();
    create_trigger(
        &env,
        "adhoc",
        json!({"suspend": true, "runTemplate": {"metadata": {"labels": {"team": "data"}},
                                                "spec": template(JOB_OK)["spec"]}}),
    )
    .await;
    wait_observed(&env, "adhoc").await;
    let run_cli = |args: Vec<String>| {
        let client = env.client.clone();
        async move {
            let mut argv = vec!["dbt-cloud-operator".to_string()];
            argv.extend(args);
            let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("valid command line");
            let Command::Trigger(a) = cli.command else {
                panic!("not the trigger command")
            };
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut prompt = ScriptedPrompt::new(Vec::<String>::new());
            let mut ctx = Ctx {
                out: &mut out,
                err: &mut err,
                prompt: &mut prompt,
                interactive: false,
            };
            let r = trigger_cli::trigger(a, client, &mut ctx).await;
            (
                r.map_err(|e| e.to_string()),
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        }
    };
    let (r, out, err) = run_cli(vec![
        "trigger".into(),
        "adhoc".into(),
        "-n".into(),
        env.ns.clone(),
    ])
    .await;
    r.unwrap();
    let name = out.trim().to_string();
    assert!(name.starts_with("adhoc-manual-"), "{out}");
    assert!(err.contains(&name), "{err}");
    let run = env.wait_phase(&name, RunPhase::Succeeded).await;
    assert_eq!(run.labels()["team"], "data");
    assert_eq!(run.annotations()["dbtcloud.io/started-by"], "Manual");
    assert_eq!(child_names(&env, "adhoc").await, vec![name.clone()]);
    wait_trigger(&env, "adhoc", "lastRunName", |t| {
        t.status.as_ref().and_then(|s| s.last_run_name.as_deref()) == Some(name.as_str())
    })
    .await;
    // A missing trigger says so.
    let (r, _, _) = run_cli(vec![
        "trigger".into(),
        "nope".into(),
        "-n".into(),
        env.ns.clone(),
    ])
    .await;
    assert!(r.unwrap_err().contains("not found"));
    op.shutdown().await;
}
