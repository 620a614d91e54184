//! e2e against a real kube-apiserver: `dbt-cloud-operator login` (the real binary, non-interactive)
//! validates the key with dbt Cloud (the simulator), writes the Secret and the credentials through
//! the API server, the operator validates them (Ready=True) and a run using them completes;
//! a bad key writes nothing; an existing login is not replaced without --force; logout removes both.

#[path = "e2e/harness.rs"]
mod harness;

use std::process::Command;

use harness::*;

const KEY: &str = "dbtc_e2eLoginKey0123456789abcdef";

fn login(env: &TestEnv, args: &[&str], key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dbt-cloud-operator"))
        .args(args)
        .args([
            "--namespace",
            &env.ns,
            "--dev-dbt-cloud-base-url",
            &env.sim.base_url(),
        ])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .env("DBT_CLOUD_API_KEY", key)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("binary runs")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn login_against_a_real_api_server() {
    let env = TestEnv::new("login").await;
    env.sim.add_account(1, "Acme");
    env.sim.add_account(2, "Other");
    env.sim.add_token(KEY, &[1]);
    env.sim.add_project(1, 10, "analytics");
    env.sim.add_environment(1, 10, 20, "production");
    env.sim.add_job(
        1,
        dbt_cloud_simulator::JobSpec {
            id: 100,
            project_id: 10,
            environment_id: 20,
            name: "nightly".into(),
            steps: vec!["dbt build".into()],
            behavior: Default::default(),
        },
    );
    let mut operator = env.operator("operator.log", env.operator_opts());

    // A bad key: non-zero exit, nothing written.
    let bad = login(&env, &["login", "--account", "1"], "dbtc_wrong");
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(
        text(&bad).contains("correct and unexpired"),
        "{}",
        text(&bad)
    );
    let secrets = env.kubectl(&["get", "secrets", "-o", "name"]);
    assert!(!secrets.all().contains("api-key"), "{}", secrets.all());

    // An account the key cannot see: the error lists the ones it can.
    let unknown = login(&env, &["login", "--account", "2"], KEY);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("Acme"), "{}", text(&unknown));

    // Success: Secret + credentials through the API server, validated by the operator.
    let ok = login(&env, &["login", "--account", "1"], KEY);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(!text(&ok).contains(KEY), "the key is never printed");
    env.wait_for("dbtcloudcredentials/dbt-cloud", "Ready", 60)
        .expect_ok("credentials Ready");
    let run = "apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobRun\nmetadata:\n  name: after-login\nspec:\n  credentialsRef:\n    name: dbt-cloud\n  job:\n    id: 100\n  pollIntervalSeconds: 1\n";
    env.apply(run).expect_ok("apply run");
    env.wait_for("dbtcloudjobrun/after-login", "Complete", 60)
        .expect_ok("run completes");

    // Logging in again without --force is refused and changes nothing.
    let again = login(&env, &["login", "--account", "1"], KEY);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));

    // Logout removes what login created.
    let out = Command::new(env!("CARGO_BIN_EXE_dbt-cloud-operator"))
        .args([
            "logout",
            "--name",
            "dbt-cloud",
            "--yes",
            "--namespace",
            &env.ns,
        ])
        .env("KUBECONFIG", &env.cluster.kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("binary runs");
    assert!(out.status.success(), "{}", text(&out));
    let gone = env.kubectl(&["get", "dbtcloudcredentials", "-o", "name"]);
    assert!(!gone.all().contains("dbt-cloud"), "{}", gone.all());
    assert!(
        !operator.logs().contains(KEY),
        "no key in the operator's log"
    );
    operator.kill();
    say(format!("e2e login: done in {:.1}s", env.elapsed()));
}
