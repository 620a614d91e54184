//! Cluster-scoped credentials against the real kube-apiserver, in a test binary of their own:
//! every operator instance watches every `ClusterDbtCloudCredentials`, so sharing a cluster with
//! other tests' operators would have them all validate (and write the status of) one object. For
//! the same reason the tests here run one at a time ([`SERIAL`]): a test's operator stops with it.

mod support;

use std::time::Duration;

use dbt_cloud_operator::crd::{ClusterDbtCloudCredentials, DbtCloudJobRun, RunPhase};
use dbt_cloud_simulator::{Fault, FaultScope, Outcome};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

/// One test at a time: every operator instance acts on every cluster-scoped credentials object.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The name of this test's cluster credentials.
fn shared(env: &Env) -> String {
    format!("{}-shared", env.ns)
}

fn cluster_run(env: &Env, job: i64) -> serde_json::Value {
    json!({"credentialsRef": {"name": shared(env), "kind": "ClusterDbtCloudCredentials"},
           "job": {"id": job}, "pollIntervalSeconds": 1})
}

fn waits_for(r: &DbtCloudJobRun, reason: &str) -> bool {
    condition(r, "CredentialsReady").is_some_and(|c| c.0 == "False" && c.1 == reason)
}

/// The run's dbt Cloud run id once it is in flight.
async fn in_flight(env: &Env, name: &str) -> i64 {
    let run = env.wait_phase(name, RunPhase::Running).await;
    run.status.unwrap().run_id.unwrap()
}

/// Cluster credentials `<ns>-shared` (the test's own name: the kind is cluster-scoped), their
/// Secret in the operator's namespace (the test's, see `test_config`), allowing `allowed`.
async fn create_cluster_credentials(env: &Env, allowed: &[&str]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("shared-key".into()),
            namespace: Some(env.ns.clone()),
            ..Default::default()
        },
        data: Some(key_data(TOKEN)),
        ..Default::default()
    };
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let creds: ClusterDbtCloudCredentials = serde_json::from_value(json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "ClusterDbtCloudCredentials",
        "metadata": {"name": shared(env)},
        "spec": {"accountId": ACCOUNT, "apiKeySecretRef": {"name": "shared-key"},
                 "allowedNamespaces": {"names": allowed}}
    }))
    .unwrap();
    Api::<ClusterDbtCloudCredentials>::all(env.client.clone())
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
}

#[tokio::test]
async fn cluster_credentials_serve_only_allowed_namespaces() {
    use dbt_cloud_operator::crd::ClusterDbtCloudCredentials;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Api, PostParams};
    let _serial = SERIAL.lock().await;
    let env = Env::new().await;
    // Namespaces of this test only: the cluster is shared by the tests of this binary.
    let listed = format!("{}-listed", env.ns);
    let by_label = format!("{}-by-label", env.ns);
    let other = format!("{}-other", env.ns);
    let mut config = test_config(&env.sim, &env.ns);
    config.watch_namespaces = vec![listed.clone(), by_label.clone(), other.clone()];
    let _op = env.start_operator_with(config);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("shared-key".into()),
            namespace: Some(env.ns.clone()),
            ..Default::default()
        },
        data: Some(key_data(TOKEN)),
        ..Default::default()
    };
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    for (name, team) in [
        (listed.as_str(), "data"),
        (by_label.as_str(), "data"),
        (other.as_str(), "web"),
    ] {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
                .unwrap();
        Api::<Namespace>::all(env.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let creds: ClusterDbtCloudCredentials = serde_json::from_value(json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "ClusterDbtCloudCredentials",
        "metadata": {"name": "shared"},
        "spec": {"accountId": ACCOUNT, "apiKeySecretRef": {"name": "shared-key"},
                 "allowedNamespaces": {"names": [listed], "selector": {"matchLabels": {"team": "data"}}}}
    }))
    .unwrap();
    Api::<ClusterDbtCloudCredentials>::all(env.client.clone())
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let spec = json!({"credentialsRef": {"name": "shared", "kind": "ClusterDbtCloudCredentials"}, "job": {"id": JOB_OK}, "pollIntervalSeconds": 1});
    let create_in = |ns: String, name: &'static str| {
        let spec = spec.clone();
        let client = env.client.clone();
        async move {
            let run: dbt_cloud_operator::crd::DbtCloudJobRun = serde_json::from_value(json!({
                "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
                "metadata": {"name": name, "namespace": ns}, "spec": spec
            }))
            .unwrap();
            Api::<dbt_cloud_operator::crd::DbtCloudJobRun>::namespaced(client, &ns)
                .create(&PostParams::default(), &run)
                .await
                .unwrap();
        }
    };
    create_in(listed.clone(), "listed").await;
    create_in(by_label.clone(), "labelled").await;
    create_in(other.clone(), "outsider").await;
    let runs_in = |ns: &str| {
        Api::<dbt_cloud_operator::crd::DbtCloudJobRun>::namespaced(env.client.clone(), ns)
    };
    let mut labelled = None;
    let mut outsider = None;
    for _ in 0..1500 {
        let first = runs_in(&listed).get("listed").await.ok();
        labelled = runs_in(&by_label).get("labelled").await.ok();
        outsider = runs_in(&other).get("outsider").await.ok();
        let done = [&first, &labelled].iter().all(|r| {
            r.as_ref()
                .and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.phase == RunPhase::Succeeded)
        });
        let refused = outsider.as_ref().is_some_and(|r| {
            condition(r, "CredentialsReady").is_some_and(|c| c.1 == "NamespaceNotAllowed")
        });
        if done && refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        labelled.unwrap().status.unwrap().phase,
        RunPhase::Succeeded,
        "allowed by label selector"
    );
    let outsider = outsider.unwrap();
    assert_eq!(
        condition(&outsider, "CredentialsReady").map(|c| c.1),
        Some("NamespaceNotAllowed".into())
    );
    assert_eq!(
        condition(&outsider, "Stalled").map(|c| c.0),
        Some("True".into())
    );
    assert_eq!(outsider.status.unwrap().phase, RunPhase::Pending);
    assert_eq!(
        env.sim.trigger_count(ACCOUNT, JOB_OK),
        2,
        "the disallowed run never reached dbt Cloud"
    );
}

#[tokio::test]
async fn deleted_cluster_credentials_serve_no_namespace() {
    let _serial = SERIAL.lock().await;
    let env = Env::new().await;
    let _op = env.start_operator();
    create_cluster_credentials(&env, &[env.ns.as_str()]).await;
    env.create_run("before", cluster_run(&env, JOB_OK)).await;
    env.wait_phase("before", RunPhase::Succeeded).await;

    Api::<ClusterDbtCloudCredentials>::all(env.client.clone())
        .delete(&shared(&env), &DeleteParams::default())
        .await
        .unwrap();
    env.create_run("after", cluster_run(&env, JOB_OK)).await;
    env.wait_run("after", "CredentialsNotFound", |r| {
        waits_for(r, "CredentialsNotFound")
    })
    .await;
    assert_eq!(env.sim.trigger_count(ACCOUNT, JOB_OK), 1);
}

#[tokio::test]
async fn removing_a_namespace_from_allowed_namespaces_takes_effect_at_once() {
    let _serial = SERIAL.lock().await;
    let env = Env::new().await;
    let _op = env.start_operator();
    create_cluster_credentials(&env, &[env.ns.as_str()]).await;
    env.create_run("slow", cluster_run(&env, JOB_SLOW)).await;
    let run_id = in_flight(&env, "slow").await;

    // The changed credentials are re-validated slowly: the change must not wait for that.
    env.sim.inject(Fault::Delay {
        count: 3,
        delay: std::time::Duration::from_millis(1500),
        scope: FaultScope::Accounts,
    });
    let patch = json!({"spec": {"allowedNamespaces": {"names": ["somewhere-else"]}}});
    Api::<ClusterDbtCloudCredentials>::all(env.client.clone())
        .patch(
            &shared(&env),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    env.create_run("after", cluster_run(&env, JOB_OK)).await;
    let after = env
        .wait_run("after", "NamespaceNotAllowed", |r| {
            waits_for(r, "NamespaceNotAllowed")
        })
        .await;
    assert_eq!(
        condition(&after, "Stalled").map(|c| c.0),
        Some("True".into())
    );
    assert_eq!(env.sim.trigger_count(ACCOUNT, JOB_OK), 0);
    let slow = env
        .wait_run("slow", "NamespaceNotAllowed", |r| {
            waits_for(r, "NamespaceNotAllowed")
        })
        .await;
    assert_eq!(slow.status.unwrap().phase, RunPhase::Running);

    // Allowed again: both proceed.
    env.sim.finish_run(ACCOUNT, run_id, Outcome::Success);
    let patch = json!({"spec": {"allowedNamespaces": {"names": [env.ns]}}});
    Api::<ClusterDbtCloudCredentials>::all(env.client.clone())
        .patch(
            &shared(&env),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    env.wait_phase("slow", RunPhase::Succeeded).await;
    env.wait_phase("after", RunPhase::Succeeded).await;
}
