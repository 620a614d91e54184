//! Production behaviour of the operator process: leader election (one replica acts, the other takes
//! over), graceful shutdown in the middle of a trigger, `/metrics` with real values, probes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dbt_cloud_operator::controller;
use dbt_cloud_operator::crd::RunPhase;
use dbt_cloud_operator::leader::{self, LeaderConfig, Outcome};
use dbt_cloud_operator::metrics::Metrics;
use dbt_cloud_operator::probes::{self, Role};
use dbt_cloud_simulator::{Fault, FaultScope};
use serde_json::json;
use support::*;
use tokio::sync::{oneshot, watch};

fn by_id(job: i64) -> serde_json::Value {
    json!({"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": 1})
}

/// One replica: leader election around the real controllers, stoppable like SIGTERM.
struct Replica {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Outcome, leader::LeaderError>>,
    metrics: Arc<Metrics>,
}

fn replica(env: &Env, identity: &str) -> Replica {
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let client = env.client.clone();
    let config = test_config(&env.sim, &env.ns);
    let m = metrics.clone();
    let lease = LeaderConfig {
        lease_name: "dbt-cloud-operator-leader".into(),
        namespace: env.ns.clone(),
        identity: identity.into(),
        duration: 15,
        grace: 5,
    };
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        let client2 = client.clone();
        leader::run_as_leader(client, lease, m.clone(), shutdown, move |stop| async move {
            let stop = futures::FutureExt::shared(stop);
            controller::run(client2, config, m, stop, None)
                .await
                .expect("controllers run");
        })
        .await
    });
    Replica {
        stop: Some(stop),
        task,
        metrics,
    }
}

/// Holder of the leader Lease, read from the API server.
async fn lease_holder(env: &Env) -> Option<String> {
    kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(env.client.clone(), &env.ns)
        .get("dbt-cloud-operator-leader")
        .await
        .expect("lease exists")
        .spec
        .and_then(|s| s.holder_identity)
}

fn leading(r: &Replica) -> bool {
    r.metrics
        .encode()
        .lines()
        .any(|l| l == "dbt_cloud_operator_leader 1")
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let mut a = replica(&env, "replica-a");
    env.wait_until("replica a leads", || leading(&a)).await;
    let b = replica(&env, "replica-b");
    env.wait_until("replica b reads the Lease", || {
        env.requests()
            .iter()
            .filter(|r| r.path.contains("leases") && r.method == "GET")
            .count()
            >= 2
    })
    .await;
    env.create_run("first", by_id(JOB_OK)).await;
    env.wait_phase("first", RunPhase::Succeeded).await;
    let holder = lease_holder(&env).await;
    assert!(
        !leading(&b),
        "only one replica leads: {holder:?} {:?}",
        env.requests()
            .iter()
            .filter(|r| r.path.contains("leases"))
            .map(|r| format!("{} {} {}", r.method, r.query, r.status))
            .collect::<Vec<_>>()
    );
    assert!(
        !b.metrics
            .encode()
            .contains("reconciliations_total{kind=\"DbtCloudJobRun\"}"),
        "the standby reconciled nothing"
    );
    // The leader stops (SIGTERM): it releases the Lease and the standby takes over.
    let _ = a.stop.take().unwrap().send(());
    let outcome = tokio::time::timeout(Duration::from_secs(30), a.task)
        .await
        .expect("leader stops")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Shutdown);
    let stopped_at = std::time::Instant::now();
    env.wait_until("replica b leads", || leading(&b)).await;
    eprintln!(
        "leader hand-over after a graceful stop: {:.1}s (lease 15s + grace 5s)",
        stopped_at.elapsed().as_secs_f64()
    );
    env.create_run("second", by_id(JOB_OK)).await;
    env.wait_phase("second", RunPhase::Succeeded).await;
    assert_eq!(
        env.sim.trigger_count(ACCOUNT, JOB_OK),
        2,
        "one trigger per run across the hand-over"
    );
    assert!(b
        .metrics
        .encode()
        .contains("dbt_cloud_operator_runs_triggered_total 1"));
    assert_eq!(lease_holder(&env).await.as_deref(), Some("replica-b"));
}

#[tokio::test]
async fn sigterm_during_a_trigger_leaves_no_duplicate() {
    let env = Env::new().await;
    env.valid_credentials().await;
    // The trigger's answer takes 1 s; SIGTERM arrives while it is in flight.
    env.sim.inject(Fault::SlowResponse {
        count: 1,
        delay: Duration::from_secs(1),
        scope: FaultScope::Trigger,
    });
    let first = env.start_operator();
    env.create_run("term", by_id(JOB_OK)).await;
    env.wait_until("the trigger reached dbt Cloud", || {
        env.sim.trigger_count(ACCOUNT, JOB_OK) == 1
    })
    .await;
    first.shutdown().await;
    // The in-flight reconcile finished within the grace period: the outcome is recorded.
    let run = env.run("term").await.unwrap();
    let status = run.status.unwrap();
    assert!(
        status.run_id.is_some() && status.pending_trigger.is_none(),
        "{status:?}"
    );
    let _second = env.start_operator();
    env.wait_phase("term", RunPhase::Succeeded).await;
    assert_eq!(env.sim.trigger_count(ACCOUNT, JOB_OK), 1);
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_and_probes_tell_the_truth() {
    let env = Env::new().await;
    env.valid_credentials().await;
    let op = env.start_operator();
    let (role_tx, role_rx) = watch::channel(Role::Starting);
    let addr = probes::serve("127.0.0.1:0".parse().unwrap(), op.metrics.clone(), role_rx)
        .await
        .unwrap();
    let base = format!("http://{addr}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(
        get(&format!("{base}/readyz")).await.0,
        503,
        "not ready while starting"
    );
    role_tx.send(Role::Standby).unwrap();
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready: standby".to_string())
    );
    role_tx.send(Role::Leader).unwrap();
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready: leader".to_string())
    );

    env.create_run("measured", by_id(JOB_OK)).await;
    env.create_run("broken", by_id(JOB_FAILS)).await;
    env.wait_phase("measured", RunPhase::Succeeded).await;
    env.wait_phase("broken", RunPhase::Failed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    let creds_ready = format!(
        "dbt_cloud_operator_credentials_ready{{kind=\"DbtCloudCredentials\",namespace=\"{}\",name=\"creds\"}} 1",
        env.ns
    );
    for needle in [
        "dbt_cloud_operator_reconciliations_total{kind=\"DbtCloudJobRun\"}",
        "dbt_cloud_operator_reconcile_duration_seconds_count{kind=\"DbtCloudJobRun\"}",
        "dbt_cloud_operator_runs{phase=\"Succeeded\"} 1",
        "dbt_cloud_operator_runs{phase=\"Failed\"} 1",
        "dbt_cloud_operator_runs_triggered_total 2",
        "dbt_cloud_operator_run_duration_seconds_count 2",
        "dbt_cloud_operator_run_queue_seconds_count",
        "dbt_cloud_operator_api_requests_total{endpoint=\"trigger_run\",code=\"200\"} 2",
        "dbt_cloud_operator_api_requests_total{endpoint=\"get_account\",code=\"200\"}",
        "dbt_cloud_operator_api_request_duration_seconds_count{endpoint=\"list_runs\"}",
        creds_ready.as_str(),
        "dbt_cloud_operator_api_throttled_total 0",
        "dbt_cloud_operator_api_rate_limit_waits_total",
        "dbt_cloud_operator_leader 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    op.shutdown().await;
}
