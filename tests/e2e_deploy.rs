//! "Run it in production": `kubectl apply -k deploy/` against a real kube-apiserver, then the
//! operator binary runs locally as the operator's ServiceAccount (a TokenRequest token, not admin),
//! so RBAC is enforced exactly as in the cluster: credentials validate, runs succeed (namespaced and
//! cluster credentials, and one started by a DbtCloudJobTrigger), Events are published, finished
//! runs are deleted after their TTL, leader election works and hands over, and the ServiceAccount
//! cannot list Secrets.

#[path = "e2e/harness.rs"]
mod harness;

use std::time::Duration;

use dbt_cloud_simulator::{JobBehavior, JobSpec};
use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const NS: &str = "dbt-cloud-operator";
const SA: &str = "dbt-cloud-operator";
const KEY: &str = "dbtc_deployE2eKey_0f1e2d3c4b5a";
const CLUSTER_KEY: &str = "dbtc_deployClusterKey_9a8b7c6d";

async fn lease_holder(env: &TestEnv) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(env.client.clone(), NS);
    api.get_opt("dbt-cloud-operator-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
}

fn run_yaml(name: &str, creds: &str, kind: &str, extra: &str) -> String {
    format!(
        "apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobRun\nmetadata:\n  name: {name}\nspec:\n  credentialsRef:\n    name: {creds}\n    kind: {kind}\n  job:\n    id: 100\n  pollIntervalSeconds: 1\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_deploy_kustomize_and_run_as_service_account() {
    let env = TestEnv::new("team-analytics").await;
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    assert!(
        std::path::Path::new(deploy)
            .join("kustomization.yaml")
            .is_file(),
        "{deploy}/kustomization.yaml is missing"
    );
    let kc = &env.cluster.kubeconfig;
    let out = kubectl_with(kc, &["apply", "-k", deploy], None);
    let applied = out.expect_ok("kubectl apply -k deploy/").to_string();
    for fragment in [
        "namespace/dbt-cloud-operator",
        "serviceaccount/dbt-cloud-operator",
        "clusterrole.rbac.authorization.k8s.io/dbt-cloud-operator",
        "deployment.apps/dbt-cloud-operator",
    ] {
        assert!(applied.contains(fragment), "{fragment} not in:\n{applied}");
    }
    // Applying again changes nothing: `kubectl diff` finds no difference (exit 0). (A second
    // `kubectl apply` prints the PodDisruptionBudget as "configured" with an empty patch.)
    let again = kubectl_with(kc, &["apply", "-k", deploy], None);
    again.expect_ok("re-apply");
    let diff = kubectl_with(kc, &["diff", "-k", deploy], None);
    assert!(diff.ok, "kubectl diff after apply:\n{}", diff.all());
    // A server-side dry run of the same manifests also passes (field validation is strict).
    kubectl_with(
        kc,
        &[
            "apply",
            "-k",
            deploy,
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
        ],
        None,
    )
    .expect_ok("server-side dry run");

    // RBAC as the operator's ServiceAccount.
    let who = format!("--as=system:serviceaccount:{NS}:{SA}");
    let can = |args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.push(&who);
        kubectl_with(kc, &a, None).stdout.trim().to_string()
    };
    assert_eq!(can(&["list", "secrets", "-A"]), "no");
    assert_eq!(can(&["watch", "secrets", "-A"]), "no");
    assert_eq!(can(&["get", "secrets", "-n", &env.ns]), "yes");
    assert_eq!(can(&["create", "secrets", "-n", &env.ns]), "no");
    assert_eq!(
        can(&["patch", "dbtcloudjobruns.dbtcloud.io/status", "-A"]),
        "yes"
    );
    for verb in ["create", "delete"] {
        assert_eq!(can(&[verb, "dbtcloudjobruns.dbtcloud.io", "-A"]), "yes");
    }
    assert_eq!(
        can(&["patch", "dbtcloudjobtriggers.dbtcloud.io/status", "-A"]),
        "yes"
    );
    assert_eq!(
        can(&["delete", "dbtcloudjobtriggers.dbtcloud.io", "-A"]),
        "no"
    );
    assert_eq!(
        can(&["create", "leases.coordination.k8s.io", "-n", NS]),
        "yes"
    );
    assert_eq!(
        can(&["create", "leases.coordination.k8s.io", "-n", &env.ns]),
        "no"
    );
    assert_eq!(can(&["create", "pods", "-n", NS]), "no");

    // A kubeconfig with a token of the ServiceAccount (TokenRequest).
    let out = kubectl_with(
        kc,
        &["create", "token", SA, "-n", NS, "--duration=1h"],
        None,
    );
    let token = out.expect_ok("kubectl create token").trim().to_string();
    assert!(token.split('.').count() == 3, "not a JWT: {token}");
    let sa_kc = env.dir.path().join("sa.kubeconfig");
    write_kubeconfig(
        &sa_kc,
        &env.cluster.server,
        &env.cluster.ca_file,
        SA,
        &token,
    );
    let whoami = kubectl_with(
        &sa_kc,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    if whoami.ok {
        assert_eq!(whoami.stdout, format!("system:serviceaccount:{NS}:{SA}"));
    }
    let denied = kubectl_with(&sa_kc, &["get", "secrets", "-A"], None);
    denied.expect_err("list secrets as the ServiceAccount", "forbidden");

    // dbt Cloud: two accounts, one job each.
    for (acct, key) in [(1, KEY), (2, CLUSTER_KEY)] {
        env.sim.add_account(acct, &format!("Account {acct}"));
        env.sim.add_token(key, &[acct]);
        env.sim.add_project(acct, 10, "analytics");
        env.sim.add_environment(acct, 10, 20, "production");
        env.sim.add_job(
            acct,
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
    }
    env.apply(&TestEnv::credentials_yaml("acme", "acme-key", 1, KEY))
        .expect_ok("namespaced credentials");
    // Cluster credentials: Secret in the operator namespace, namespaces allowed by label.
    kubectl_with(
        kc,
        &[
            "create",
            "secret",
            "generic",
            "shared-key",
            "-n",
            NS,
            &format!("--from-literal=apiKey={CLUSTER_KEY}"),
        ],
        None,
    )
    .expect_ok("cluster secret");
    env.kubectl(&["label", "namespace", &env.ns, "dbtcloud.io/shared=yes"])
        .expect_ok("label namespace");
    kubectl_with(
        kc,
        &["apply", "-f", "-"],
        Some("apiVersion: dbtcloud.io/v1alpha1\nkind: ClusterDbtCloudCredentials\nmetadata:\n  name: shared\nspec:\n  accountId: 2\n  apiKeySecretRef:\n    name: shared-key\n  allowedNamespaces:\n    selector:\n      matchLabels:\n        dbtcloud.io/shared: \"yes\"\n"),
    )
    .expect_ok("cluster credentials");

    // The operator, locally, as the ServiceAccount, electing a leader as in the Deployment.
    let opts = |pod: &str| {
        let mut o = env.operator_opts();
        o.kubeconfig = sa_kc.clone();
        o.watch_namespaces = Vec::new();
        o.namespace = String::new();
        o.leader = Some(pod.to_string());
        o.lease = (4, 1);
        o.env = vec![("POD_NAMESPACE".into(), NS.into())];
        o
    };
    let mut a = env.operator("operator-a.log", opts("local-a"));
    env.wait_until("local-a holds the Lease", 60, || a.running())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lease_holder(&env).await.as_deref() != Some("local-a") {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader:\n{}",
            a.logs()
        );
        assert!(a.running(), "operator exited:\n{}", a.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = env.operator("operator-b.log", opts("local-b"));

    env.apply(&run_yaml(
        "by-namespaced",
        "acme",
        "DbtCloudCredentials",
        "",
    ))
    .expect_ok("run");
    env.apply(&run_yaml(
        "by-cluster",
        "shared",
        "ClusterDbtCloudCredentials",
        "  ttlSecondsAfterFinished: 3\n",
    ))
    .expect_ok("run with cluster credentials");
    for what in ["dbtcloudjobrun/by-namespaced", "dbtcloudjobrun/by-cluster"] {
        let out = env.wait_for(what, "Complete", 60);
        if !out.ok {
            panic!(
                "{what} did not complete: {}\nlog:\n{}",
                env.get_json(what)["status"],
                a.logs()
            );
        }
    }
    env.wait_for("dbtcloudcredentials/acme", "Ready", 30)
        .expect_ok("credentials Ready");
    kubectl_with(
        kc,
        &[
            "wait",
            "--for=condition=Ready",
            "clusterdbtcloudcredentials/shared",
            "--timeout=30s",
        ],
        None,
    )
    .expect_ok("cluster credentials Ready");
    assert_eq!(env.sim.trigger_count(1, 100), 1);
    assert_eq!(env.sim.trigger_count(2, 100), 1);

    // A DbtCloudJobTrigger, as the ServiceAccount: its status is written and its run created
    // (with an owner reference that blocks the trigger's deletion) and run.
    env.apply("apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobTrigger\nmetadata:\n  name: on-deploy\nspec:\n  revision: r1\n  runTemplate:\n    spec:\n      credentialsRef:\n        name: acme\n      job:\n        id: 100\n      pollIntervalSeconds: 1\n")
        .expect_ok("trigger");
    env.wait_for("dbtcloudjobtrigger/on-deploy", "Ready", 30)
        .expect_ok("trigger Ready");
    let mut started = String::new();
    env.wait_until("the trigger started a run", 30, || {
        started = env.get_json("dbtcloudjobtrigger/on-deploy")["status"]["lastRunName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !started.is_empty()
    })
    .await;
    env.wait_for(&format!("dbtcloudjobrun/{started}"), "Complete", 60)
        .expect_ok("the trigger's run Complete");
    assert_eq!(env.sim.trigger_count(1, 100), 2);

    // Events were published with the ServiceAccount's rights.
    let events = env.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={range .items[*]}{.reportingController} {.reason}{\"\\n\"}{end}",
    ]);
    let events = events.expect_ok("events").to_string();
    assert!(
        events.contains("dbt-cloud-operator"),
        "no operator events:\n{events}"
    );

    // ttlSecondsAfterFinished: deleted (finalizer removed, object gone) by the ServiceAccount.
    env.wait_until("by-cluster deleted after its TTL", 60, || {
        let out = env.kubectl(&[
            "get",
            "dbtcloudjobrun",
            "by-cluster",
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        out.ok && out.stdout.trim().is_empty()
    })
    .await;

    // No RBAC denial in the log.
    let log = a.logs();
    let forbidden: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "RBAC denials:\n{}",
        forbidden.join("\n")
    );
    assert!(panics(&log).is_empty());

    // Hand-over: SIGTERM the leader, the standby takes the Lease and works.
    let status = a.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "leader did not exit cleanly: {status:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lease_holder(&env).await.as_deref() != Some("local-b") {
        assert!(
            std::time::Instant::now() < deadline,
            "standby did not take over:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.apply(&run_yaml(
        "after-handover",
        "acme",
        "DbtCloudCredentials",
        "",
    ))
    .expect_ok("run after hand-over");
    env.wait_for("dbtcloudjobrun/after-handover", "Complete", 60)
        .expect_ok("run after hand-over Complete");
    assert_eq!(env.sim.trigger_count(1, 100), 3);
    let log_b = b.logs();
    assert!(panics(&log_b).is_empty());
    assert!(
        !log_b.contains("forbidden"),
        "RBAC denial for the standby:\n{log_b}"
    );
    say(format!(
        "deploy: kustomize applied, operator as ServiceAccount ran 4 runs (namespaced + cluster credentials, one by a trigger), TTL deletion, leader hand-over; {:.1}s",
        env.elapsed()
    ));
}
