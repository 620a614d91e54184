//! `dbt-cloud-operator run` refuses, at start-up, a configuration that breaks a rule its flags
//! document (`run --help`), before it talks to any cluster, with a message naming the flags to
//! change. The binary runs with no kubeconfig at all, so a configuration that passes the checks
//! stops at the next step instead: building the Kubernetes client.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_dbt-cloud-operator");

/// Runs `run` with `args` and no usable kubeconfig; the exit status and everything it printed.
fn run(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .args(["--http-addr", "127.0.0.1:0", "--log-format", "text"])
        .args(args)
        .env_clear()
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("RUST_LOG", "info")
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_confirm_window_not_above_twice_the_request_timeout_is_refused() {
    for window in ["10", "30", "60"] {
        let (ok, text) = run(&[
            "--trigger-confirm-window-seconds",
            window,
            "--request-timeout-seconds",
            "30",
        ]);
        assert!(!ok, "{text}");
        assert!(text.contains("invalid configuration"), "{text}");
        assert!(
            text.contains("--trigger-confirm-window-seconds")
                && text.contains("--request-timeout-seconds"),
            "the message names the flags to change: {text}"
        );
        assert!(!text.contains("Kubernetes client"), "checked first: {text}");
    }
}

#[test]
fn a_lease_grace_not_below_the_lease_duration_is_refused() {
    for (duration, grace) in [("5", "5"), ("5", "9"), ("15", "0")] {
        let (ok, text) = run(&[
            "--leader-elect",
            "--lease-duration-seconds",
            duration,
            "--lease-grace-seconds",
            grace,
        ]);
        assert!(!ok, "{text}");
        assert!(text.contains("invalid configuration"), "{text}");
        assert!(
            text.contains("--lease-grace-seconds") && text.contains("--lease-duration-seconds"),
            "the message names the flags to change: {text}"
        );
    }
    // Without leader election the Lease settings are not used, so they are not checked.
    let (_, text) = run(&[
        "--lease-duration-seconds",
        "5",
        "--lease-grace-seconds",
        "9",
    ]);
    assert!(!text.contains("invalid configuration"), "{text}");
}

#[test]
fn the_defaults_pass_the_checks() {
    let (ok, text) = run(&["--leader-elect"]);
    assert!(!ok, "no cluster to run against: {text}");
    assert!(!text.contains("invalid configuration"), "{text}");
    assert!(
        text.contains("cannot build a Kubernetes client"),
        "stopped at the next step: {text}"
    );
}
