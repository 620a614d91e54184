//! A dbt Cloud run reporting a status code the operator does not know (not 1, 2, 3, 10, 20, 30):
//! the run is still followed, the code is reported (condition and Event), and
//! `timeoutSeconds` ends the wait.

mod support;

use dbt_cloud_operator::crd::RunPhase;
use serde_json::json;
use support::*;

fn ready_condition(env_run: &dbt_cloud_operator::crd::DbtCloudJobRun) -> (String, String) {
    env_run
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn unknown_status_codes_are_reported_and_the_timeout_still_applies() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    env.create_run(
        "odd",
        json!({"credentialsRef": {"name": "creds"}, "job": {"id": JOB_SLOW},
               "pollIntervalSeconds": 1, "timeoutSeconds": 15}),
    )
    .await;
    let run = env.wait_phase("odd", RunPhase::Running).await;
    let run_id = run.status.unwrap().run_id.unwrap();

    env.sim.set_run_status(ACCOUNT, run_id, Some(5));
    let run = env
        .wait_run("odd", "status code 5 reported", |r| {
            let (reason, message) = ready_condition(r);
            reason == "UnknownRunStatus" && message.contains("status code 5")
        })
        .await;
    let s = run.status.unwrap();
    assert_eq!(s.phase, RunPhase::Running, "still followed");
    assert!(
        s.status_message
            .as_deref()
            .is_some_and(|m| m.contains("timeoutSeconds (15s)")),
        "{:?}",
        s.status_message
    );

    env.sim.set_run_status(ACCOUNT, run_id, Some(6));
    env.wait_run("odd", "status code 6 reported", |r| {
        ready_condition(r).1.contains("status code 6")
    })
    .await;
    // One Event per new code is decided by the lifecycle (see its unit tests); Kubernetes folds a
    // repeated reason into one Event series, so the Event is there once.
    env.wait_events("odd", &["UnknownRunStatus"]).await;

    // Not waited on forever: the timeout ends it.
    let run = env.wait_phase("odd", RunPhase::TimedOut).await;
    assert!(run
        .status
        .unwrap()
        .status_message
        .unwrap()
        .contains("timeoutSeconds"));
    let cancels = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/runs/{run_id}/cancel/")))
        .count();
    assert_eq!(cancels, 1, "the run was cancelled on timeout");
}
