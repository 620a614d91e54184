//! The namespace-scoped variant (`kubectl apply -k deploy/overlays/namespaced`) against a real
//! kube-apiserver, with the operator running locally as its ServiceAccount: it works in the watched
//! namespaces, may read Secrets only there, and leaves other namespaces alone (no status written,
//! no Secret read attempted, no dbt Cloud call). A binary of its own: it needs a cluster without the
//! base's cluster-wide Secret grant.

#[path = "e2e/harness.rs"]
mod harness;

use std::time::Duration;

use dbt_cloud_simulator::{JobBehavior, JobSpec};
use harness::*;
use serde_json::Value;

const NS: &str = "dbt-cloud-operator";
const SA: &str = "dbt-cloud-operator";
const KEY: &str = "dbtc_namespacedVariantKey_6c5b4a39";

/// WATCH_NAMESPACES of the rendered Deployment.
fn watched(rendered: &str) -> String {
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let v: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["kind"] != "Deployment" {
            continue;
        }
        for c in v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for e in c["env"].as_array().into_iter().flatten() {
                if e["name"] == "WATCH_NAMESPACES" {
                    return e["value"].as_str().unwrap_or_default().to_string();
                }
            }
        }
    }
    String::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_deploy_namespaced_variant_confines_the_operator() {
    let env = TestEnv::new("outsider").await;
    let overlay = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/overlays/namespaced");
    assert!(
        std::path::Path::new(overlay)
            .join("kustomization.yaml")
            .is_file(),
        "{overlay}/kustomization.yaml is missing"
    );
    let kc = &env.cluster.kubeconfig;
    let rendered = kubectl_with(kc, &["kustomize", overlay], None);
    let watch = watched(rendered.expect_ok("kubectl kustomize"));
    let namespaces: Vec<String> = watch
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    assert!(!namespaces.is_empty(), "no WATCH_NAMESPACES in the overlay");
    for ns in &namespaces {
        kubectl_with(kc, &["create", "namespace", ns], None).expect_ok("create namespace");
    }
    kubectl_with(kc, &["apply", "-k", overlay], None).expect_ok("apply -k overlays/namespaced");

    let who = format!("--as=system:serviceaccount:{NS}:{SA}");
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.push(&who);
        kubectl_with(kc, &a, None).stdout.trim().to_string()
    };
    assert_eq!(can(&["list", "secrets", "-A"]), "no");
    assert_eq!(can(&["get", "secrets", "-n", NS]), "yes");
    for ns in &namespaces {
        assert_eq!(can(&["get", "secrets", "-n", ns]), "yes", "{ns}");
    }
    assert_eq!(can(&["get", "secrets", "-n", &env.ns]), "no");

    let token = kubectl_with(
        kc,
        &["create", "token", SA, "-n", NS, "--duration=1h"],
        None,
    )
    .expect_ok("create token")
    .trim()
    .to_string();
    let sa_kc = env.dir.path().join("sa.kubeconfig");
    write_kubeconfig(
        &sa_kc,
        &env.cluster.server,
        &env.cluster.ca_file,
        SA,
        &token,
    );

    env.sim.add_account(1, "Acme");
    env.sim.add_token(KEY, &[1]);
    env.sim.add_project(1, 10, "analytics");
    env.sim.add_environment(1, 10, 20, "production");
    env.sim.add_job(
        1,
        JobSpec {
            id: 100,
            project_id: 10,
            environment_id: 20,
            name: "nightly".into(),
            steps: vec!["dbt build".into()],
            behavior: JobBehavior {
                running: Duration::from_millis(300),
                ..JobBehavior::default()
            },
        },
    );
    let run = "apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobRun\nmetadata:\n  name: nightly\nspec:\n  credentialsRef:\n    name: acme\n  job:\n    id: 100\n  pollIntervalSeconds: 1\n";
    let setup = format!(
        "{}---\n{run}",
        TestEnv::credentials_yaml("acme", "acme-key", 1, KEY)
    );
    // In a watched namespace and in one that is not.
    let first = &namespaces[0];
    kubectl_with(kc, &["apply", "-n", first, "-f", "-"], Some(&setup)).expect_ok("watched");
    env.apply(&setup).expect_ok("unwatched");

    let mut opts = env.operator_opts();
    opts.kubeconfig = sa_kc;
    opts.watch_namespaces = Vec::new();
    opts.namespace = String::new();
    opts.leader = Some("local-0".into());
    opts.lease = (4, 1);
    opts.env = vec![
        ("POD_NAMESPACE".into(), NS.into()),
        ("WATCH_NAMESPACES".into(), watch.clone()),
    ];
    let op = env.operator("operator.log", opts);

    let out = kubectl_with(
        kc,
        &[
            "wait",
            "-n",
            first,
            "--for=condition=Complete",
            "dbtcloudjobrun/nightly",
            "--timeout=60s",
        ],
        None,
    );
    out.expect_ok(&format!("run in {first}: {}", op.logs()));
    kubectl_with(
        kc,
        &[
            "wait",
            "-n",
            first,
            "--for=condition=Ready",
            "dbtcloudcredentials/acme",
            "--timeout=30s",
        ],
        None,
    )
    .expect_ok("credentials Ready");
    // Some time for the operator to (wrongly) act on the unwatched namespace, then check it did
    // not: no status, no Secret read attempt, one trigger only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for what in ["dbtcloudjobrun/nightly", "dbtcloudcredentials/acme"] {
        let obj = env.get_json(what);
        assert!(
            obj.get("status")
                .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty())),
            "{what} in an unwatched namespace got a status: {}",
            obj["status"]
        );
        assert!(
            obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty()),
            "{what} in an unwatched namespace got a finalizer"
        );
    }
    assert_eq!(env.sim.trigger_count(1, 100), 1);
    let log = op.logs();
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .collect();
    assert!(denied.is_empty(), "RBAC denials:\n{}", denied.join("\n"));
    assert!(panics(&log).is_empty());
    say(format!(
        "deploy (namespaced overlay, WATCH_NAMESPACES={watch}): run Succeeded as the ServiceAccount, unwatched namespace untouched; {:.1}s",
        env.elapsed()
    ));
}
