//! The Argo CD health checks in deploy/argocd/*.lua, run the way Argo CD runs them: a global `obj`
//! holding the object (JSON numbers as floats, as gopher-lua decodes them), and a returned table
//! with `status` and `message`. Also checks that the argocd-cm snippet embeds the .lua files
//! verbatim and that the scripts avoid Lua 5.2+ syntax (Argo CD runs Lua 5.1, this test 5.4).

use std::path::PathBuf;

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{json, Value};

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn run_script() -> String {
    repo_file("deploy/argocd/dbtcloudjobrun-health.lua")
}

fn credentials_script() -> String {
    repo_file("deploy/argocd/credentials-health.lua")
}

fn trigger_script() -> String {
    repo_file("deploy/argocd/dbtcloudjobtrigger-health.lua")
}

/// JSON to Lua as gopher-lua (Argo CD) does it: objects and arrays become tables, numbers floats,
/// null nothing.
fn to_lua(lua: &Lua, value: &Value) -> LuaValue {
    match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => LuaValue::Number(n.as_f64().expect("number")),
        Value::String(s) => LuaValue::String(lua.create_string(s).expect("string")),
        Value::Array(items) => {
            let t = lua.create_table().expect("table");
            for (i, item) in items.iter().enumerate() {
                t.set(i + 1, to_lua(lua, item)).expect("set");
            }
            LuaValue::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table().expect("table");
            for (k, v) in map {
                t.set(k.as_str(), to_lua(lua, v)).expect("set");
            }
            LuaValue::Table(t)
        }
    }
}

/// Runs a health script on `obj`; returns (status, message).
fn health(script: &str, obj: Value) -> (String, String) {
    let lua = Lua::new();
    lua.globals()
        .set("obj", to_lua(&lua, &obj))
        .expect("set obj");
    let hs: Table = lua
        .load(script)
        .eval()
        .unwrap_or_else(|e| panic!("script failed on {obj}: {e}"));
    let status: String = hs.get("status").expect("status is a string");
    let message: String = hs.get("message").expect("message is a string");
    assert!(
        [
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown"
        ]
        .contains(&status.as_str()),
        "not an Argo CD health status: {status}"
    );
    (status, message)
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1
    })
}

/// A DbtCloudJobRun at generation 1 with the given status.
fn job_run(status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "dbtcloud.io/v1alpha1",
        "kind": "DbtCloudJobRun",
        "metadata": {"name": "nightly", "namespace": "analytics", "generation": 1},
        "spec": {"credentialsRef": {"name": "dbt-cloud"}, "job": {"id": 42}, "suspend": false}
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

fn run_status(phase: &str, message: &str, conditions: Vec<Value>) -> Value {
    json!({
        "observedGeneration": 1,
        "phase": phase,
        "statusMessage": message,
        "attemptCount": 1,
        "conditions": conditions,
    })
}

fn in_flight(phase: &str) -> Value {
    job_run(Some(run_status(
        phase,
        &format!("dbt Cloud run 7 is {phase}"),
        vec![
            condition("Ready", "False", phase, "in flight"),
            condition("Reconciling", "True", phase, "in flight"),
            condition("Stalled", "False", phase, "in flight"),
        ],
    )))
}

#[test]
fn run_without_status_waits_for_the_operator() {
    assert_eq!(
        health(&run_script(), job_run(None)),
        ("Progressing".into(), "Waiting for the operator".into())
    );
    // A status without a phase (not written by this operator) is treated the same.
    assert_eq!(
        health(&run_script(), job_run(Some(json!({})))).0,
        "Progressing"
    );
}

#[test]
fn in_flight_phases_are_progressing() {
    for phase in ["Pending", "Queued", "Starting", "Running"] {
        let (status, message) = health(&run_script(), in_flight(phase));
        assert_eq!(status, "Progressing", "{phase}");
        assert_eq!(message, format!("{phase}: dbt Cloud run 7 is {phase}"));
    }
}

#[test]
fn succeeded_is_healthy() {
    let obj = job_run(Some(run_status(
        "Succeeded",
        "dbt Cloud run 7 succeeded",
        vec![
            condition("Ready", "True", "Succeeded", "done"),
            condition("Complete", "True", "Succeeded", "done"),
            condition("Stalled", "False", "Finished", "done"),
        ],
    )));
    assert_eq!(
        health(&run_script(), obj),
        (
            "Healthy".into(),
            "Succeeded: dbt Cloud run 7 succeeded".into()
        )
    );
}

#[test]
fn failed_timed_out_and_cancelled_are_degraded() {
    for (phase, reason) in [
        ("Failed", "RunFailed"),
        ("TimedOut", "TimedOut"),
        ("Cancelled", "Cancelled"),
    ] {
        let obj = job_run(Some(run_status(
            phase,
            "it ended",
            vec![
                condition("Ready", "False", reason, "it ended"),
                condition("Failed", "True", reason, "it ended"),
                condition("Stalled", "True", reason, "it ended"),
            ],
        )));
        assert_eq!(
            health(&run_script(), obj),
            ("Degraded".into(), format!("{phase}: it ended")),
            "{phase}"
        );
        // The phase alone decides: no Stalled condition needed.
        let obj = job_run(Some(run_status(phase, "it ended", vec![])));
        assert_eq!(health(&run_script(), obj).0, "Degraded", "{phase}");
    }
}

#[test]
fn finished_runs_keep_their_health_when_spec_changes_later() {
    // ttlSecondsAfterFinished edited after the end: generation 2, observed 1. The phase is final,
    // so the health must not fall back to Progressing (that would flap Argo CD apps).
    // spec.suspend set too: suspending a finished run changes nothing, so it is not Suspended.
    for (phase, want) in [
        ("Succeeded", "Healthy"),
        ("Failed", "Degraded"),
        ("TimedOut", "Degraded"),
        ("Cancelled", "Degraded"),
    ] {
        let mut obj = job_run(Some(run_status(phase, "over", vec![])));
        obj["metadata"]["generation"] = json!(2);
        obj["spec"]["suspend"] = json!(true);
        assert_eq!(health(&run_script(), obj).0, want, "{phase}");
    }
}

#[test]
fn suspend_is_suspended_before_and_after_the_operator_observed_it() {
    let mut obj = in_flight("Pending");
    obj["spec"]["suspend"] = json!(true);
    obj["status"]["statusMessage"] =
        json!("Suspended: nothing is triggered until spec.suspend is false");
    let (status, message) = health(&run_script(), obj.clone());
    assert_eq!(status, "Suspended");
    assert_eq!(
        message,
        "Suspended: Suspended: nothing is triggered until spec.suspend is false"
    );

    // Just set, not yet seen by the operator.
    obj["metadata"]["generation"] = json!(2);
    let (status, message) = health(&run_script(), obj);
    assert_eq!(status, "Suspended");
    assert_eq!(
        message,
        "Suspend requested; waiting for the operator to observe generation 2"
    );
}

#[test]
fn unobserved_generation_is_progressing_even_when_status_looked_stalled() {
    let mut obj = job_run(Some(run_status(
        "Pending",
        "namespace not allowed",
        vec![condition(
            "Stalled",
            "True",
            "NamespaceNotAllowed",
            "not allowed",
        )],
    )));
    obj["metadata"]["generation"] = json!(3);
    obj["status"]["observedGeneration"] = json!(2);
    assert_eq!(
        health(&run_script(), obj.clone()),
        (
            "Progressing".into(),
            "Waiting for the operator to observe generation 3".into()
        )
    );
    // No observedGeneration at all counts as not observed.
    obj["status"]
        .as_object_mut()
        .unwrap()
        .remove("observedGeneration");
    assert_eq!(health(&run_script(), obj).0, "Progressing");
}

#[test]
fn stalled_before_the_end_is_degraded_with_the_stalled_message() {
    let obj = job_run(Some(run_status(
        "Pending",
        "summary",
        vec![
            condition("Ready", "False", "NamespaceNotAllowed", "summary"),
            condition(
                "Stalled",
                "True",
                "NamespaceNotAllowed",
                "ClusterDbtCloudCredentials 'shared' does not allow namespace 'analytics'",
            ),
        ],
    )));
    assert_eq!(
        health(&run_script(), obj),
        (
            "Degraded".into(),
            "Pending: ClusterDbtCloudCredentials 'shared' does not allow namespace 'analytics'"
                .into()
        )
    );
}

#[test]
fn messages_fall_back_to_the_ready_condition_then_the_phase() {
    let mut obj = in_flight("Running");
    obj["status"]
        .as_object_mut()
        .unwrap()
        .remove("statusMessage");
    assert_eq!(health(&run_script(), obj.clone()).1, "Running: in flight");
    obj["status"].as_object_mut().unwrap().remove("conditions");
    assert_eq!(
        health(&run_script(), obj),
        ("Progressing".into(), "Running".into())
    );
}

#[test]
fn unknown_phase_is_unknown() {
    let (status, message) = health(&run_script(), in_flight("Exploded"));
    assert_eq!(status, "Unknown");
    assert_eq!(message, "Unknown phase Exploded");
}

fn credentials(kind: &str, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "dbtcloud.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "dbt-cloud", "generation": 1},
        "spec": {"accountId": 1, "apiKeySecretRef": {"name": "key"}}
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

fn credentials_status(conditions: Vec<Value>) -> Value {
    json!({"observedGeneration": 1, "conditions": conditions})
}

const CREDENTIAL_KINDS: [&str; 2] = ["DbtCloudCredentials", "ClusterDbtCloudCredentials"];

#[test]
fn credentials_without_status_are_progressing() {
    for kind in CREDENTIAL_KINDS {
        assert_eq!(
            health(&credentials_script(), credentials(kind, None)),
            (
                "Progressing".into(),
                "Waiting for the operator to validate the credentials".into()
            )
        );
        assert_eq!(
            health(
                &credentials_script(),
                credentials(kind, Some(json!({"observedGeneration": 1})))
            )
            .0,
            "Progressing"
        );
    }
}

#[test]
fn ready_credentials_are_healthy() {
    for kind in CREDENTIAL_KINDS {
        let obj = credentials(
            kind,
            Some(credentials_status(vec![
                condition("Ready", "True", "Valid", "API key valid for account 'Acme'"),
                condition("Stalled", "False", "Valid", ""),
            ])),
        );
        assert_eq!(
            health(&credentials_script(), obj),
            (
                "Healthy".into(),
                "Valid: API key valid for account 'Acme'".into()
            )
        );
    }
}

#[test]
fn stalled_credentials_are_degraded() {
    for kind in CREDENTIAL_KINDS {
        let obj = credentials(
            kind,
            Some(credentials_status(vec![
                condition(
                    "Ready",
                    "False",
                    "Unauthorized",
                    "dbt Cloud refused the key",
                ),
                condition(
                    "Stalled",
                    "True",
                    "Unauthorized",
                    "dbt Cloud refused the key",
                ),
            ])),
        );
        assert_eq!(
            health(&credentials_script(), obj),
            (
                "Degraded".into(),
                "Unauthorized: dbt Cloud refused the key".into()
            )
        );
        // Stalled without a message: the Ready condition explains.
        let obj = credentials(
            kind,
            Some(credentials_status(vec![
                condition("Ready", "False", "SecretNotFound", "Secret 'key' not found"),
                condition("Stalled", "True", "SecretNotFound", ""),
            ])),
        );
        assert_eq!(
            health(&credentials_script(), obj),
            (
                "Degraded".into(),
                "SecretNotFound: Secret 'key' not found".into()
            )
        );
    }
}

#[test]
fn transient_credential_errors_are_progressing() {
    for kind in CREDENTIAL_KINDS {
        let obj = credentials(
            kind,
            Some(credentials_status(vec![
                condition("Ready", "False", "Unreachable", "dbt Cloud did not answer"),
                condition("Reconciling", "True", "Unreachable", "retrying"),
                condition("Stalled", "False", "Unreachable", "retrying"),
            ])),
        );
        assert_eq!(
            health(&credentials_script(), obj),
            (
                "Progressing".into(),
                "Unreachable: dbt Cloud did not answer".into()
            )
        );
    }
}

#[test]
fn credentials_with_an_unobserved_spec_are_progressing_even_if_ready() {
    for kind in CREDENTIAL_KINDS {
        let mut obj = credentials(
            kind,
            Some(credentials_status(vec![condition(
                "Ready", "True", "Valid", "ok",
            )])),
        );
        obj["metadata"]["generation"] = json!(2);
        assert_eq!(
            health(&credentials_script(), obj),
            (
                "Progressing".into(),
                "Waiting for the operator to observe generation 2".into()
            )
        );
    }
}

/// A DbtCloudJobTrigger at generation `generation` with the status the operator's own decision
/// writes for it (the pure core, no cluster), or none.
fn trigger(spec: Value, generation: i64, decided: bool) -> Value {
    use dbt_cloud_operator::controller::trigger_policy::{decide, TriggerView};
    use dbt_cloud_operator::crd::{DbtCloudJobTriggerSpec, DbtCloudJobTriggerStatus};
    let mut full = json!({
        "runTemplate": {"spec": {"credentialsRef": {"name": "dbt-cloud"}, "job": {"id": 42}}}
    });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    let typed: DbtCloudJobTriggerSpec = serde_json::from_value(full.clone()).unwrap();
    let mut obj = json!({
        "apiVersion": "dbtcloud.io/v1alpha1",
        "kind": "DbtCloudJobTrigger",
        "metadata": {"name": "nightly", "namespace": "analytics", "generation": generation},
        "spec": full
    });
    if decided {
        let now: jiff::Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let status = DbtCloudJobTriggerStatus::default();
        let view = TriggerView {
            name: "nightly",
            namespace: "analytics",
            uid: "uid-1",
            generation: Some(1),
            created: now,
            spec: &typed,
            status: &status,
        };
        obj["status"] = serde_json::to_value(decide(view, &[], now).status).unwrap();
    }
    obj
}

#[test]
fn triggers_are_healthy_when_they_work_and_degraded_when_they_cannot() {
    assert_eq!(
        health(
            &trigger_script(),
            trigger(json!({"schedule": "0 2 * * *"}), 1, false)
        ),
        ("Progressing".into(), "Waiting for the operator".into())
    );
    let (status, message) = health(
        &trigger_script(),
        trigger(
            json!({"schedule": "0 2 * * *", "timeZone": "Europe/Berlin"}),
            1,
            true,
        ),
    );
    assert_eq!(status, "Healthy");
    assert!(
        message.starts_with("Scheduled: next run at 2026-11-26T01:00:00Z"),
        "{message}"
    );
    let (status, message) = health(
        &trigger_script(),
        trigger(json!({"revision": "abc"}), 1, true),
    );
    assert_eq!(status, "Healthy", "{message}");
    let (status, message) = health(
        &trigger_script(),
        trigger(
            json!({"schedule": "0 2 * * *", "timeZone": "Mars/Base"}),
            1,
            true,
        ),
    );
    assert_eq!(status, "Degraded");
    assert!(
        message.starts_with("InvalidTimeZone: spec.timeZone"),
        "{message}"
    );
    let (status, message) = health(
        &trigger_script(),
        trigger(json!({"schedule": "0 2 * * *", "suspend": true}), 1, true),
    );
    assert_eq!(status, "Suspended");
    assert!(message.contains("suspended"), "{message}");
    // A spec the operator has not seen yet: its old health is not trusted.
    assert_eq!(
        health(
            &trigger_script(),
            trigger(json!({"schedule": "0 2 * * *"}), 2, true)
        ),
        (
            "Progressing".into(),
            "Waiting for the operator to observe generation 2".into()
        )
    );
    // Stalled wins over suspend (the spec needs a fix either way).
    let (status, _) = health(
        &trigger_script(),
        trigger(json!({"schedule": "0 99 * * *", "suspend": true}), 1, true),
    );
    assert_eq!(status, "Degraded");
}

#[test]
fn argocd_cm_snippet_embeds_the_lua_files_verbatim() {
    let cm: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("deploy/argocd/argocd-cm-patch.yaml")).unwrap();
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    let data = cm["data"].as_mapping().expect("data");
    let expected = [
        ("DbtCloudJobRun", run_script()),
        ("DbtCloudJobTrigger", trigger_script()),
        ("DbtCloudCredentials", credentials_script()),
        ("ClusterDbtCloudCredentials", credentials_script()),
    ];
    assert_eq!(data.len(), expected.len(), "unexpected keys in data");
    for (kind, script) in expected {
        let key = format!("resource.customizations.health.dbtcloud.io_{kind}");
        let embedded = data
            .get(key.as_str())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("argocd-cm has no {key}"));
        assert_eq!(
            embedded, script,
            "{key} differs from the .lua file: run .ci/check-manifests --sync"
        );
    }
}

#[test]
fn scripts_use_only_lua_5_1_syntax() {
    // Argo CD's gopher-lua is Lua 5.1; these are 5.2+ and would fail there although they pass here.
    let forbidden = [
        "goto ",
        "//",
        "<const>",
        "<close>",
        "utf8.",
        "table.move",
        "table.unpack",
        "math.tointeger",
        "math.type",
        "string.pack",
        " & ",
        " | ",
        " ~ ",
        "<<",
        ">>",
    ];
    for (name, script) in [
        ("dbtcloudjobrun-health.lua", run_script()),
        ("dbtcloudjobtrigger-health.lua", trigger_script()),
        ("credentials-health.lua", credentials_script()),
    ] {
        for (n, line) in script.lines().enumerate() {
            let code = line.split("--").next().unwrap_or("");
            for bad in forbidden {
                assert!(
                    !code.contains(bad),
                    "{name}:{}: `{bad}` is not Lua 5.1: {line}",
                    n + 1
                );
            }
        }
        assert!(
            script.trim_end().ends_with("return hs"),
            "{name} must end by returning the health table"
        );
    }
}
