//! The real binary under a pseudo-terminal: hidden key prompt, account picker and replacement
//! confirmation of `login --dry-run`, with dbt Cloud simulated and the API key never shown.
#![cfg(unix)]

use std::path::Path;
use std::process::Command;

mod support;

use dbt_cloud_operator::crd::DbtCloudCredentials;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::json;

use dbt_cloud_simulator::Simulator;

const BIN: &str = env!("CARGO_BIN_EXE_dbt-cloud-operator");
const KEY: &str = "dbtu_pty_personal_token_93f1";
const TIMEOUT_MS: u64 = 30_000;

async fn simulator() -> Simulator {
    let sim = Simulator::start().await.expect("simulator starts");
    sim.add_account(101, "Acme");
    sim.add_account(102, "Beta Corp");
    sim.add_token(KEY, &[101, 102]);
    sim
}

/// The admin kubeconfig of the shared real API server, with `ns` as its namespace.
fn kubeconfig_text(ns: &str) -> String {
    let admin = std::fs::read_to_string(&support::harness::cluster().kubeconfig).unwrap();
    assert!(admin.contains("namespace: default"), "{admin}");
    admin.replace("namespace: default", &format!("namespace: {ns}"))
}

/// The binary with a clean environment: no real kubeconfig, dbt Cloud simulated.
fn command(dir: &Path, kubeconfig_text: Option<&str>, sim: &Simulator, args: &[&str]) -> Command {
    let kubeconfig = dir.join("kubeconfig");
    if let Some(text) = kubeconfig_text {
        std::fs::write(&kubeconfig, text).unwrap();
    }
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("KUBECONFIG", &kubeconfig)
        .env("TERM", "dumb")
        .env("DEV_DBT_CLOUD_BASE_URL", sim.base_url());
    cmd
}

fn b64(s: &str) -> String {
    serde_json::to_value(ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Drives `login --dry-run` under a pseudo-terminal; returns everything the terminal showed.
fn interactive_login(cmd: Command, expect_replace: bool) -> String {
    let mut p = rexpect::session::spawn_command(cmd, Some(TIMEOUT_MS)).expect("spawn under a pty");
    let mut seen = String::new();
    seen += &p.exp_string("input hidden): ").expect("key prompt");
    p.send_line(KEY).unwrap();
    seen += &p
        .exp_string("Select an account [1-2]: ")
        .expect("account picker");
    p.send_line("2").unwrap();
    if expect_replace {
        seen += &p
            .exp_string("Replace them? [y/N]: ")
            .expect("replace prompt");
        p.send_line("y").unwrap();
    }
    seen += &p.exp_eof().expect("exits");
    let status = p.process_mut().wait().expect("exit status");
    assert!(
        matches!(status, rexpect::process::wait::WaitStatus::Exited(_, 0)),
        "{status:?}\n{seen}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_login_dry_run_without_a_cluster() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = command(
        dir.path(),
        None,
        &sim,
        &["login", "--dry-run", "-n", "analytics"],
    );
    let seen = tokio::task::spawn_blocking(move || interactive_login(cmd, false))
        .await
        .unwrap();
    assert!(
        seen.contains("101  Acme") && seen.contains("102  Beta Corp"),
        "{seen}"
    );
    assert!(seen.contains("kind: Secret"), "{seen}");
    assert!(seen.contains(&format!("apiKey: {}", b64(KEY))), "{seen}");
    assert!(
        seen.contains("kind: DbtCloudCredentials") && seen.contains("accountId: 102"),
        "{seen}"
    );
    assert!(!seen.contains(KEY), "the key was shown: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_login_dry_run_confirms_replacing_existing_credentials() {
    let sim = simulator().await;
    let cluster = support::harness::cluster();
    let admin = support::harness::client_from(&cluster.kubeconfig).await;
    let ns = format!("pty-{}", &support::harness::random_token()[..8]);
    support::create_namespace(&admin, &ns).await;
    let creds: DbtCloudCredentials = serde_json::from_value(
        json!({"apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudCredentials",
            "metadata": {"name": "dbt-cloud", "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "dbt-cloud-operator-cli"}},
            "spec": {"accountId": 102, "host": "cloud.getdbt.com",
                "apiKeySecretRef": {"name": "dbt-cloud-api-key"}}}),
    )
    .unwrap();
    let creds_api = Api::<DbtCloudCredentials>::namespaced(admin.clone(), &ns);
    let before = creds_api
        .create(&PostParams::default(), &creds)
        .await
        .unwrap()
        .resource_version();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_text(&ns);
    let cmd = command(dir.path(), Some(&kubeconfig), &sim, &["login", "--dry-run"]);
    let seen = tokio::task::spawn_blocking(move || interactive_login(cmd, true))
        .await
        .unwrap();
    assert!(
        seen.contains(&format!("DbtCloudCredentials {ns}/dbt-cloud (account 102")),
        "the cluster was consulted: {seen}"
    );
    assert!(seen.contains(&format!("namespace: {ns}")), "{seen}");
    assert!(seen.contains(&format!("apiKey: {}", b64(KEY))), "{seen}");
    assert!(!seen.contains(KEY), "the key was shown: {seen}");
    // A dry run writes nothing: the credentials are untouched and no Secret exists.
    let after = creds_api.get("dbt-cloud").await.unwrap().resource_version();
    assert_eq!(before, after, "dry run changed the credentials");
    let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
    assert!(
        secrets
            .get_opt("dbt-cloud-api-key")
            .await
            .unwrap()
            .is_none(),
        "dry run wrote a Secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_the_binary_explains_the_flags_and_hides_the_key() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = command(dir.path(), None, &sim, args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(&["login", "--dry-run"]);
    assert!(
        !ok && text.contains("--key") && text.contains("--account"),
        "{text}"
    );

    let (ok, text) = run(&["login", "--dry-run", "--key", KEY]);
    assert!(
        !ok && text.contains("--account") && text.contains("102  Beta Corp"),
        "{text}"
    );
    assert!(!text.contains(KEY), "{text}");

    let (ok, text) = run(&["login", "--dry-run", "--key", "Token dbtc_wrong_5521"]);
    assert!(
        !ok && text.contains("unexpired") && text.contains("dbtc_"),
        "{text}"
    );
    assert!(!text.contains("wrong_5521"), "{text}");

    let (ok, text) = run(&["login", "--dry-run", "--key", KEY, "--account", "101"]);
    assert!(ok, "{text}");
    assert!(text.contains(&b64(KEY)) && !text.contains(KEY), "{text}");

    // The kubectl plugin name.
    let link = dir.path().join("kubectl-dbtcloud");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = Command::new(&link)
        .args(["login", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: kubectl dbtcloud login"), "{help}");
}
