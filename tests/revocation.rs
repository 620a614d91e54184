//! Revocation end to end on the real API server: deleting credentials, deleting their Secret or
//! rotating the key stops the old access for new runs and for runs in flight; runs in flight keep
//! their phase, wait with a condition and an Event, and resume when usable credentials come back.
//! (Cluster-scoped credentials — deletion, `allowedNamespaces` — are in `cluster_credentials.rs`.)

mod support;

use dbt_cloud_operator::crd::{DbtCloudCredentials, DbtCloudJobRun, RunPhase};
use dbt_cloud_simulator::Outcome;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn by_id(job: i64) -> serde_json::Value {
    json!({"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": 1})
}

fn waits_for(r: &DbtCloudJobRun, reason: &str) -> bool {
    condition(r, "CredentialsReady").is_some_and(|c| c.0 == "False" && c.1 == reason)
}

async fn delete_credentials(env: &Env) {
    Api::<DbtCloudCredentials>::namespaced(env.client.clone(), &env.ns)
        .delete("creds", &DeleteParams::default())
        .await
        .unwrap();
}

/// The run's dbt Cloud run id once it is in flight.
async fn in_flight(env: &Env, name: &str) -> i64 {
    let run = env.wait_phase(name, RunPhase::Running).await;
    run.status.unwrap().run_id.unwrap()
}

#[tokio::test]
async fn deleted_credentials_trigger_nothing_new() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    env.create_run("before", by_id(JOB_OK)).await;
    env.wait_phase("before", RunPhase::Succeeded).await;

    // `kubectl delete dbtcred creds`, then at once a new run naming it.
    delete_credentials(&env).await;
    env.create_run("after", by_id(JOB_OK)).await;
    let run = env
        .wait_run("after", "CredentialsNotFound", |r| {
            waits_for(r, "CredentialsNotFound")
        })
        .await;
    assert_eq!(run.status.unwrap().phase, RunPhase::Pending);
    assert_eq!(
        env.sim.trigger_count(ACCOUNT, JOB_OK),
        1,
        "the deleted key triggered nothing"
    );
}

#[tokio::test]
async fn deleted_credentials_hold_an_in_flight_run_until_they_come_back() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    env.create_run("slow", by_id(JOB_SLOW)).await;
    let run_id = in_flight(&env, "slow").await;

    delete_credentials(&env).await;
    let run = env
        .wait_run("slow", "CredentialsNotFound", |r| {
            waits_for(r, "CredentialsNotFound")
        })
        .await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, RunPhase::Running, "the last phase is kept");
    assert_eq!(status.run_id, Some(run_id));
    assert_eq!(
        condition(&run, "Ready").map(|c| c.1),
        Some("CredentialsNotFound".into())
    );
    env.wait_events("slow", &["CredentialsNotFound"]).await;

    // dbt Cloud finishes the run meanwhile; the credentials come back: the run resumes.
    env.sim.finish_run(ACCOUNT, run_id, Outcome::Success);
    env.create_credentials("dbt-api-key").await;
    env.wait_phase("slow", RunPhase::Succeeded).await;
    assert_eq!(env.sim.trigger_count(ACCOUNT, JOB_SLOW), 1);
}

#[tokio::test]
async fn a_deleted_secret_stops_the_key_for_new_and_in_flight_runs() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    env.create_run("slow", by_id(JOB_SLOW)).await;
    let run_id = in_flight(&env, "slow").await;

    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .delete("dbt-api-key", &DeleteParams::default())
        .await
        .unwrap();
    let run = env
        .wait_run("slow", "SecretNotFound", |r| waits_for(r, "SecretNotFound"))
        .await;
    assert_eq!(run.status.unwrap().phase, RunPhase::Running);
    env.create_run("after", by_id(JOB_OK)).await;
    env.wait_run("after", "SecretNotFound", |r| {
        waits_for(r, "SecretNotFound")
    })
    .await;
    assert_eq!(env.sim.trigger_count(ACCOUNT, JOB_OK), 0);

    env.sim.finish_run(ACCOUNT, run_id, Outcome::Success);
    env.create_secret("dbt-api-key", TOKEN).await;
    env.wait_phase("slow", RunPhase::Succeeded).await;
    env.wait_phase("after", RunPhase::Succeeded).await;
}

#[tokio::test]
async fn a_rotated_key_replaces_the_old_one_for_a_run_in_flight() {
    const OLD: &str = "dbtc_old_key_7c2e41";
    let env = Env::new().await;
    env.sim.add_token(OLD, &[ACCOUNT]);
    let _op = env.start_operator();
    env.create_secret("dbt-api-key", OLD).await;
    env.create_credentials("dbt-api-key").await;
    env.create_run("slow", by_id(JOB_SLOW)).await;
    let run_id = in_flight(&env, "slow").await;
    let creds_api = Api::<DbtCloudCredentials>::namespaced(env.client.clone(), &env.ns);
    let old_fingerprint = creds_api
        .get("creds")
        .await
        .unwrap()
        .status
        .and_then(|s| s.key_fingerprint);

    let patch = json!({"data": {"apiKey": k8s_openapi::ByteString(TOKEN.as_bytes().to_vec())}});
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "dbt-api-key",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    for _ in 0..1500 {
        let now = creds_api.get("creds").await.unwrap().status;
        if now.and_then(|s| s.key_fingerprint) != old_fingerprint {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The old key is revoked in dbt Cloud: only the new one can see the run finish.
    env.sim.add_token(OLD, &[]);
    env.sim.finish_run(ACCOUNT, run_id, Outcome::Success);
    env.wait_phase("slow", RunPhase::Succeeded).await;
}

#[tokio::test]
async fn a_run_whose_secret_is_gone_is_not_polled_with_the_old_key() {
    let env = Env::new().await;
    let _op = env.start_operator();
    env.valid_credentials().await;
    // Other credentials for the same account, with their own Secret and run.
    env.create_secret("other-key", TOKEN).await;
    let other: DbtCloudCredentials = serde_json::from_value(json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudCredentials",
        "metadata": {"name": "other", "namespace": env.ns},
        "spec": {"accountId": ACCOUNT, "apiKeySecretRef": {"name": "other-key"}}
    }))
    .unwrap();
    Api::<DbtCloudCredentials>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    env.create_run("slow", by_id(JOB_SLOW)).await;
    let slow_id = in_flight(&env, "slow").await;

    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .delete("dbt-api-key", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_run("slow", "SecretNotFound", |r| waits_for(r, "SecretNotFound"))
        .await;
    // From here on the old key of `creds` must not be used. A witness run on the other
    // credentials (same account) keeps the poller busy meanwhile, from trigger to end.
    env.sim.clear_requests();
    env.create_run(
        "witness",
        json!({"credentialsRef": {"name": "other"}, "job": {"id": JOB_OK}, "pollIntervalSeconds": 1}),
    )
    .await;
    env.wait_phase("witness", RunPhase::Succeeded).await;
    let slow_polls: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/runs/") && r.query.contains(&slow_id.to_string()))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(slow_polls.is_empty(), "{slow_polls:?}");
}
