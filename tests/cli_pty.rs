//! The real binary under a pseudo-terminal: hidden key prompt, account picker and replacement
//! confirmation of `login --dry-run`, with dbt Cloud simulated and the API key never shown.
#![cfg(unix)]

use std::path::Path;
use std::process::Command;

use fake_kube_api::FakeApiServer;
use http::Method;
use k8s_openapi::ByteString;
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

/// Serves the in-memory Kubernetes API over HTTP on 127.0.0.1; returns its URL.
async fn serve_kube(kube: &FakeApiServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback_service(kube.service());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// The binary with a clean environment: no real kubeconfig, dbt Cloud simulated.
fn command(dir: &Path, kube_url: Option<&str>, sim: &Simulator, args: &[&str]) -> Command {
    let kubeconfig = dir.join("kubeconfig");
    if let Some(url) = kube_url {
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
                 users:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
                 user: me\n    namespace: analytics\ncurrent-context: fake\n"
            ),
        )
        .unwrap();
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
    let kube = FakeApiServer::new();
    kube.put_object(
        "dbtcloud.io/v1alpha1",
        "dbtcloudcredentials",
        json!({"apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudCredentials",
            "metadata": {"name": "dbt-cloud", "namespace": "analytics"},
            "spec": {"accountId": 102, "host": "cloud.getdbt.com",
                "apiKeySecretRef": {"name": "dbt-cloud-api-key"}}}),
    );
    let url = serve_kube(&kube).await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = command(dir.path(), Some(&url), &sim, &["login", "--dry-run"]);
    let seen = tokio::task::spawn_blocking(move || interactive_login(cmd, true))
        .await
        .unwrap();
    assert!(
        seen.contains("DbtCloudCredentials analytics/dbt-cloud (account 102"),
        "{seen}"
    );
    assert!(seen.contains("namespace: analytics"), "{seen}");
    assert!(seen.contains(&format!("apiKey: {}", b64(KEY))), "{seen}");
    assert!(!seen.contains(KEY), "the key was shown: {seen}");
    let writes: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.method != Method::GET)
        .collect();
    assert!(writes.is_empty(), "dry run wrote: {writes:?}");
    assert!(!kube.requests().is_empty(), "the cluster was consulted");
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
