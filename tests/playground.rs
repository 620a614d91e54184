//! The README's first command, `hack/playground`, driven as a newcomer would: it comes up on its own
//! (etcd, kube-apiserver, simulator, operator), both example runs reach their final phase (one
//! succeeds, one fails at a step with its log in status), and Ctrl-C leaves no process behind.

#[path = "e2e/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

fn alive(pid: u32) -> bool {
    // A zombie still answers kill -0; the playground reaps what it started, so "alive" is exact.
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn playground_runs_both_examples_and_ctrl_c_stops_everything() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("playground");
    let mut cmd = Command::new("bash");
    cmd.arg(repo.join("hack/playground"))
        .env("PLAYGROUND_DIR", &dir)
        .env("PLAYGROUND_PORT", free_port().to_string())
        .env("PLAYGROUND_SIM_PORT", free_port().to_string())
        .env("KUBEBUILDER_ASSETS", assets_dir())
        .env("OPERATOR_BIN", env!("CARGO_BIN_EXE_dbt-cloud-operator"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // `cargo test --workspace` builds the simulator's binary next to ours; else the script builds it.
    let sim_bin =
        Path::new(env!("CARGO_BIN_EXE_dbt-cloud-operator")).with_file_name("dbt-cloud-simulator");
    if sim_bin.is_file() {
        cmd.env("SIMULATOR_BIN", &sim_bin);
    }
    let mut child = cmd.spawn().expect("start hack/playground");
    let _reaper = KillOnDrop(child.id());

    // Up: it prints what to try next, ending with PLAYGROUND READY (bounded by the reader thread).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line == "PLAYGROUND READY" {
                let _ = tx.send(text.clone());
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the playground came up and printed PLAYGROUND READY");
    let kubeconfig = dir.join("kubeconfig");
    for hint in [
        format!("export KUBECONFIG={}", kubeconfig.display()),
        "kubectl get dbtrun -w".to_string(),
        "kubectl wait --for=condition=Complete dbtrun/nightly".to_string(),
        "never talks to dbt Cloud".to_string(),
        "Ctrl-C".to_string(),
    ] {
        assert!(banner.contains(&hint), "{hint:?} missing from:\n{banner}");
    }

    // Both example runs reach their final phase, as the user would see them with kubectl.
    let phase = |name: &str| {
        let out = kubectl_with(
            &kubeconfig,
            &["get", "dbtrun", name, "-o", "jsonpath={.status.phase}"],
            None,
        );
        out.stdout.trim().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline
        && !(phase("nightly") == "Succeeded" && phase("broken") == "Failed")
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(phase("nightly"), "Succeeded");
    assert_eq!(phase("broken"), "Failed");
    let broken = kubectl_with(
        &kubeconfig,
        &["get", "dbtrun", "broken", "-o", "json"],
        None,
    );
    let broken: serde_json::Value = serde_json::from_str(broken.expect_ok("get broken")).unwrap();
    let message = broken["status"]["statusMessage"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("failed at step"), "{message}");
    assert!(
        broken["status"]["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|st| st["status"] == "Error")),
        "{broken}"
    );
    let wait = kubectl_with(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Complete",
            "dbtrun/nightly",
            "--timeout=10s",
        ],
        None,
    );
    wait.expect_ok("kubectl wait for Complete");

    // Ctrl-C: everything it started stops, and nothing is left running.
    let pids: Vec<u32> = ["etcd", "kube-apiserver", "simulator", "operator"]
        .iter()
        .map(|p| {
            std::fs::read_to_string(dir.join(format!("{p}.pid")))
                .unwrap_or_else(|e| panic!("{p}.pid: {e}"))
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(pids.iter().all(|p| alive(*p)), "all four run before Ctrl-C");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the playground did not stop within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(130),
        "exit status of an interrupted playground"
    );
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "processes left running after Ctrl-C: {left:?}"
    );
}

/// SIGKILLs the playground's process group leader if the test fails midway.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.to_string()])
                .status();
        }
    }
}
