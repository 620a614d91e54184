//! Cluster-scoped credentials against the real kube-apiserver, in a test binary of their own:
//! every operator instance watches every `ClusterDbtCloudCredentials`, so sharing a cluster with
//! other tests' operators would have them all validate (and write the status of) one object.

mod support;

use std::time::Duration;

use dbt_cloud_operator::crd::RunPhase;
use serde_json::json;
use support::*;

#[tokio::test]
async fn cluster_credentials_serve_only_allowed_namespaces() {
    use dbt_cloud_operator::crd::ClusterDbtCloudCredentials;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{Api, PostParams};
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
