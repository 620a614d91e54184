//! The operator, restarted after a crash that lost a trigger's outcome, while more than a page
//! (100) of newer runs of the same job exist in dbt Cloud: it adopts the run instead of triggering
//! again, cancels it when the object is deleted, and adopts a lost native retry.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dbt_cloud_operator::crd::RunPhase;
use dbt_cloud_operator::dbt_cloud::*;
use dbt_cloud_simulator::{Fault, FaultScope, JobBehavior, Outcome};
use secrecy::SecretString;
use serde_json::json;
use support::*;

fn by_id(job: i64) -> serde_json::Value {
    json!({"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": 1})
}

/// A client of the simulator, for the runs other people make.
fn others(env: &Env) -> DbtCloudClient {
    let config = ClientConfig {
        insecure_base_url_override: Some(env.sim.base_url().parse().unwrap()),
        ..Default::default()
    };
    DbtCloudClient::new(
        AccessHost::parse("cloud.getdbt.com", DEFAULT_ALLOWED_SUFFIXES).unwrap(),
        ACCOUNT,
        SecretString::from(TOKEN.to_string()),
        http_client(&config).unwrap(),
        AccountLimits::unlimited(),
        Arc::new(config),
        Arc::new(NoopObserver),
    )
    .unwrap()
}

/// `n` runs of `job` triggered by others (CI, schedules), finishing fast.
async fn busy(env: &Env, job: i64, n: usize, outcome: Outcome) {
    env.sim.set_job_behavior(
        ACCOUNT,
        job,
        JobBehavior {
            queued: Duration::from_millis(1),
            starting: Duration::from_millis(1),
            running: Duration::from_millis(1),
            outcome,
            retry_outcome: Outcome::Success,
        },
    );
    let c = others(env);
    for i in 0..n {
        c.trigger_run(job, &TriggerRunRequest::new(format!("CI run {i}")).unwrap())
            .await
            .unwrap();
    }
}

/// Triggers the operator sent (their cause carries its marker).
fn operator_triggers(env: &Env) -> Vec<i64> {
    env.sim
        .triggers()
        .into_iter()
        .filter(|t| t.cause.contains("[dco:"))
        .map(|t| t.run_id)
        .collect()
}

/// Starts an operator and kills it once `sent()` holds: the request whose answer `fault` holds
/// back reached dbt Cloud, the intent is recorded, the outcome is not.
async fn crash_when(
    env: &Env,
    name: &str,
    spec: serde_json::Value,
    fault: Fault,
    sent: impl Fn() -> bool,
) {
    env.sim.inject(fault);
    let first = env.start_operator();
    env.create_run(name, spec).await;
    env.wait_until("the request reached dbt Cloud", sent).await;
    first.kill().await;
    let run = env.run(name).await.unwrap();
    assert!(
        dbt_cloud_operator::controller::intent::unresolved(&run).is_some(),
        "the outcome is unknown: {:?}",
        run.status
    );
}

/// Waits until the run is finished, whichever way.
async fn finished(env: &Env, name: &str) -> dbt_cloud_operator::crd::DbtCloudJobRun {
    env.wait_run(name, "a final phase", |r| {
        r.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    })
    .await
}

fn held_trigger() -> Fault {
    Fault::SlowResponse {
        count: 1,
        delay: Duration::from_secs(5),
        scope: FaultScope::Trigger,
    }
}

#[tokio::test]
async fn lost_trigger_is_adopted_though_more_than_100_newer_runs_exist() {
    let env = Env::new().await;
    env.valid_credentials().await;
    crash_when(&env, "busy", by_id(JOB_OK), held_trigger(), || {
        operator_triggers(&env).len() == 1
    })
    .await;
    busy(&env, JOB_OK, 150, Outcome::Success).await;

    let _second = env.start_operator();
    let run = finished(&env, "busy").await;
    let sent = operator_triggers(&env);
    assert_eq!(sent.len(), 1, "triggered again: runs {sent:?}");
    let s = run.status.unwrap();
    assert_eq!(s.phase, RunPhase::Succeeded);
    assert_eq!(s.run_id, Some(sent[0]));
    assert_eq!(s.attempt_count, 1);
    env.wait_events("busy", &["Adopted"]).await;
}

#[tokio::test]
async fn deleting_during_a_lost_trigger_cancels_the_run_behind_100_newer_runs() {
    let env = Env::new().await;
    env.valid_credentials().await;
    crash_when(&env, "doomed", by_id(JOB_SLOW), held_trigger(), || {
        operator_triggers(&env).len() == 1
    })
    .await;
    let ours = operator_triggers(&env)[0];
    busy(&env, JOB_SLOW, 150, Outcome::Success).await;
    env.runs()
        .delete("doomed", &Default::default())
        .await
        .unwrap();

    let _second = env.start_operator();
    env.wait_gone("doomed").await;
    let run = env.sim.run(ACCOUNT, ours).unwrap();
    assert_eq!(
        run["status"],
        30,
        "the run of the deleted object was cancelled: {run} {:?}",
        env.event_reasons("doomed").await
    );
    assert_eq!(operator_triggers(&env), vec![ours]);
}

#[tokio::test]
async fn lost_native_retry_is_adopted_though_more_than_100_newer_runs_exist() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let mut spec = by_id(JOB_FLAKY);
    spec["retry"] = json!({"maxAttempts": 2, "strategy": "RerunFailed"});
    let retries = || {
        env.sim
            .runs(ACCOUNT)
            .into_iter()
            .filter(|r| r["retrying_run_id"].is_i64())
            .map(|r| r["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    // Attempt 1 fails; the native retry (attempt 2) reaches dbt Cloud, its answer is held back.
    let held_retry = Fault::SlowResponse {
        count: 1,
        delay: Duration::from_secs(5),
        scope: FaultScope::PathContains("/retry/".into()),
    };
    crash_when(&env, "flaky", spec, held_retry, || retries().len() == 1).await;
    let retry = retries()[0];
    let run = env.run("flaky").await.unwrap();
    assert_eq!(
        dbt_cloud_operator::controller::intent::unresolved(&run).map(|p| p.intent.attempt),
        Some(2),
        "the retry's outcome is unknown"
    );
    busy(&env, JOB_FLAKY, 150, Outcome::FailAtStep(2)).await;

    let _second = env.start_operator();
    let run = finished(&env, "flaky").await;
    let s = run.status.unwrap();
    assert_eq!(s.phase, RunPhase::Succeeded, "{:?}", s.status_message);
    assert_eq!(s.run_id, Some(retry), "{:?}", s.attempts);
    assert_eq!(retries(), vec![retry], "retried once");
    assert_eq!(operator_triggers(&env).len(), 1);
}

#[tokio::test]
async fn deletion_waits_for_a_run_that_is_not_visible_yet_and_cancels_it() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    // The trigger's answer is lost and its run stays invisible for a while (eventual consistency).
    env.sim.inject(Fault::HideNewRuns {
        duration: Duration::from_secs(1),
    });
    env.sim.inject(Fault::LoseTriggerResponse { count: 1 });
    env.create_run("hidden", by_id(JOB_SLOW)).await;
    env.wait_until("the trigger reached dbt Cloud", || {
        operator_triggers(&env).len() == 1
    })
    .await;
    let ours = operator_triggers(&env)[0];
    env.runs()
        .delete("hidden", &Default::default())
        .await
        .unwrap();
    env.wait_gone("hidden").await;
    let run = env.sim.run(ACCOUNT, ours).unwrap();
    assert_eq!(
        run["status"],
        30,
        "the object was let go before its run could be found and cancelled: {:?}",
        env.event_reasons("hidden").await
    );
}
