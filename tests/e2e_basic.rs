//! e2e against a real kube-apiserver (envtest style, see tests/e2e/harness.rs): the CRDs install
//! and explain, a run by id and a run by name (with a native retry) complete through the real
//! operator binary, admission rejects what the CRD schema and CEL rules forbid, and a status write
//! with a stale resourceVersion precondition gets 409 Conflict.

#[path = "e2e/harness.rs"]
mod harness;

use std::time::Duration;

use dbt_cloud_operator::crd::DbtCloudJobRun;
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome, Simulator};
use harness::*;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const KEY: &str = "dbtc_e2eBasicKey0123456789abcdef";

fn seed(sim: &Simulator) {
    sim.add_account(1, "Acme");
    sim.add_token(KEY, &[1]);
    sim.add_project(1, 10, "analytics");
    sim.add_environment(1, 10, 20, "production");
    let quick = JobBehavior {
        queued: Duration::from_millis(100),
        starting: Duration::from_millis(100),
        running: Duration::from_millis(500),
        ..JobBehavior::default()
    };
    sim.add_job(
        1,
        JobSpec {
            id: 100,
            project_id: 10,
            environment_id: 20,
            name: "nightly".into(),
            steps: vec!["dbt seed".into(), "dbt build".into()],
            behavior: quick.clone(),
        },
    );
    sim.add_job(
        1,
        JobSpec {
            id: 101,
            project_id: 10,
            environment_id: 20,
            name: "flaky".into(),
            steps: vec!["dbt seed".into(), "dbt build".into()],
            behavior: JobBehavior {
                outcome: Outcome::FailAtStep(2),
                retry_outcome: Outcome::Success,
                ..quick
            },
        },
    );
}

fn run_yaml(name: &str, job: &str, extra: &str) -> String {
    format!(
        "apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobRun\nmetadata:\n  name: {name}\nspec:\n  credentialsRef:\n    name: acme\n  job:\n{job}\n  pollIntervalSeconds: 1\n{extra}"
    )
}

#[tokio::test]
async fn e2e_crds_install_and_explain() {
    let env = TestEnv::new("basic-crds").await;
    say(format!(
        "shared cluster startup: {:.1}s",
        env.cluster.startup_secs
    ));
    // Re-applying is clean (server-side apply, same field manager: no conflict).
    let out = kubectl_with(
        &env.cluster.kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=e2e",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/crds"),
        ],
        None,
    );
    let text = out.expect_ok("re-apply CRDs");
    assert_eq!(text.matches("serverside-applied").count(), 4, "{text}");
    for crd in [
        "dbtcloudjobruns.dbtcloud.io",
        "dbtcloudjobtriggers.dbtcloud.io",
        "dbtcloudcredentials.dbtcloud.io",
        "clusterdbtcloudcredentials.dbtcloud.io",
    ] {
        let out = env.kubectl(&[
            "get",
            "crd",
            crd,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}/{.status.conditions[?(@.type==\"NamesAccepted\")].status}",
        ]);
        assert_eq!(out.expect_ok("crd status"), "True/True", "{crd}");
    }
    let out = env.kubectl(&["explain", "dbtcloudjobrun.spec.job"]);
    let text = out.expect_ok("explain");
    for fragment in [
        "Which dbt Cloud job to run",
        "dbt Cloud job id",
        "projectName",
        "Exact name of the environment in that project",
        "jobName",
    ] {
        assert!(
            text.contains(fragment),
            "explain lacks {fragment:?}:\n{text}"
        );
    }
    let out = env.kubectl(&["explain", "dbtcloudcredentials.spec.host"]);
    assert!(
        out.expect_ok("explain host")
            .contains("dbt Cloud access host name"),
        "{}",
        out.stdout
    );
    let out = env.kubectl(&["explain", "dbtcloudjobtrigger.spec"]);
    let text = out.expect_ok("explain trigger");
    for fragment in [
        "runTemplate",
        "five fields",
        "timeZone",
        "revision",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "successfulRunsHistoryLimit",
    ] {
        assert!(
            text.contains(fragment),
            "explain lacks {fragment:?}:\n{text}"
        );
    }
    // Short names and the category work; a trigger shows its schedule columns.
    env.kubectl(&["get", "dbtrun,dbtcred,dbttrigger"])
        .expect_ok("short names");
    env.apply("apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobTrigger\nmetadata:\n  name: nightly\nspec:\n  schedule: \"30 2 * * *\"\n  suspend: true\n  runTemplate:\n    spec:\n      credentialsRef:\n        name: acme\n      job:\n        id: 100\n")
        .expect_ok("apply trigger");
    let out = env.kubectl(&["get", "dbttrigger", "nightly"]);
    let header = out
        .expect_ok("get trigger")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST", "RUN", "NEXT", "AGE"],
        "{header}"
    );
    assert!(
        out.stdout.contains("30 2 * * *") && out.stdout.contains("true"),
        "{}",
        out.stdout
    );
    env.kubectl(&["get", "dbtcloud"]).expect_ok("category");
}

#[tokio::test]
async fn e2e_run_by_id_completes() {
    let env = TestEnv::new("basic-id").await;
    seed(&env.sim);
    let _op = env.operator("operator.log", env.operator_opts());
    env.apply(&TestEnv::credentials_yaml("acme", "acme-key", 1, KEY))
        .expect_ok("apply credentials");
    env.apply(&run_yaml("nightly-1", "    id: 100", ""))
        .expect_ok("apply run");
    env.wait_for("dbtcloudjobrun/nightly-1", "Complete", 60)
        .expect_ok("wait Complete");
    env.wait_for("dbtcloudcredentials/acme", "Ready", 30)
        .expect_ok("credentials Ready");

    let run = env.get_json("dbtcloudjobrun/nightly-1");
    let st = &run["status"];
    assert_eq!(st["phase"], "Succeeded", "{st:#}");
    let run_id = st["runId"].as_i64().expect("runId");
    assert!(
        st["runUrl"]
            .as_str()
            .is_some_and(|u| u.contains(&run_id.to_string())),
        "{st:#}"
    );
    assert_eq!(st["jobId"], 100);
    assert_eq!(st["accountId"], 1);
    assert_eq!(st["attemptCount"], 1);
    assert!(st.get("pendingTrigger").is_none(), "{st:#}");
    let steps = st["steps"].as_array().expect("steps");
    assert!(!steps.is_empty(), "{st:#}");
    assert!(steps.iter().all(|s| s["status"] == "Success"), "{st:#}");
    assert_eq!(condition(&run, "Complete").unwrap()["status"], "True");

    let creds = env.get_json("dbtcloudcredentials/acme");
    let ready = condition(&creds, "Ready").expect("Ready");
    assert_eq!(ready["status"], "True", "{creds:#}");
    assert_eq!(ready["reason"], "Valid");
    assert_eq!(creds["status"]["accountName"], "Acme");

    // Printer columns.
    let out = env.kubectl(&["get", "dbtrun", "nightly-1"]);
    let table = out.expect_ok("get dbtrun");
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for col in ["NAME", "JOB", "RUN", "PHASE", "ATTEMPTS"] {
        assert!(header.contains(&col), "{table}");
    }
    let at = |c: &str| row[header.iter().position(|h| *h == c).unwrap()];
    assert_eq!(at("PHASE"), "Succeeded", "{table}");
    assert_eq!(at("RUN"), run_id.to_string(), "{table}");
    assert_eq!(at("JOB"), "100", "{table}");
    let wide = env.kubectl(&["get", "dbtrun", "nightly-1", "-o", "wide"]);
    assert!(wide.expect_ok("wide").contains("URL"), "{}", wide.stdout);
    let creds_table = env.kubectl(&["get", "dbtcred", "acme"]);
    let t = creds_table.expect_ok("get dbtcred");
    assert!(
        t.contains("READY") && t.contains("True") && t.contains("Valid"),
        "{t}"
    );

    // Exactly one trigger, carrying the attempt marker of this object.
    let uid = run["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(env.sim.trigger_count(1, 100), 1);
    let triggers = env.sim.triggers();
    assert_eq!(
        marker(&triggers[0].cause),
        Some((uid, 1)),
        "{:?}",
        triggers[0].cause
    );
    say(format!(
        "run by id: Succeeded in {:.1}s, 1 trigger, run {run_id}",
        env.elapsed()
    ));
}

#[tokio::test]
async fn e2e_run_by_name_retries_failed_steps() {
    let env = TestEnv::new("basic-name").await;
    seed(&env.sim);
    let _op = env.operator("operator.log", env.operator_opts());
    env.apply(&TestEnv::credentials_yaml("acme", "acme-key", 1, KEY))
        .expect_ok("apply credentials");
    env.apply(&run_yaml(
        "flaky-1",
        "    projectName: analytics\n    environmentName: production\n    jobName: flaky",
        "  retry:\n    maxAttempts: 2\n    strategy: RerunFailed\n",
    ))
    .expect_ok("apply run");
    let out = env.wait_for("dbtcloudjobrun/flaky-1", "Complete", 60);
    let run = env.get_json("dbtcloudjobrun/flaky-1");
    out.expect_ok(&format!("wait Complete: {:#}", run["status"]));
    let st = &run["status"];
    assert_eq!(st["phase"], "Succeeded", "{st:#}");
    assert_eq!(st["jobId"], 101, "{st:#}");
    assert_eq!(st["attemptCount"], 2, "{st:#}");
    let attempts = st["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["kind"], "Full");
    assert_eq!(attempts[0]["status"], "Error");
    assert_eq!(attempts[1]["kind"], "RerunFailed");
    assert_eq!(attempts[1]["status"], "Success");
    assert_eq!(st["runId"], attempts[1]["runId"]);
    // One trigger (the retry goes through dbt Cloud's retry endpoint).
    assert_eq!(env.sim.trigger_count(1, 101), 1);
    assert_eq!(env.sim.runs(1).len(), 2);
    say(format!(
        "run by name with RerunFailed retry: Succeeded after 2 attempts in {:.1}s",
        env.elapsed()
    ));
}

#[tokio::test]
async fn e2e_admission_rejects_invalid_specs() {
    let env = TestEnv::new("basic-admission").await;
    // A valid run (no operator here: only admission matters).
    env.apply(&run_yaml("keep", "    id: 100", ""))
        .expect_ok("apply valid run");

    // CEL: the spec is immutable except a few fields.
    env.kubectl(&[
        "patch",
        "dbtcloudjobrun",
        "keep",
        "--type=merge",
        "-p",
        r#"{"spec":{"job":{"id":101}}}"#,
    ])
    .expect_err(
        "patch spec.job",
        "spec is immutable except suspend, cancel, cancelOnDelete and ttlSecondsAfterFinished",
    );
    env.kubectl(&[
        "patch",
        "dbtcloudjobrun",
        "keep",
        "--type=merge",
        "-p",
        r#"{"spec":{"trigger":{"cause":"changed"}}}"#,
    ])
    .expect_err("add spec.trigger", "spec is immutable");
    // …but suspend may change.
    env.kubectl(&[
        "patch",
        "dbtcloudjobrun",
        "keep",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true,"ttlSecondsAfterFinished":60}}"#,
    ])
    .expect_ok("patch suspend");

    let cases: &[(&str, String, &str)] = &[
        (
            "id and names",
            run_yaml(
                "both",
                "    id: 100\n    projectName: a\n    environmentName: b\n    jobName: c",
                "",
            ),
            "set either job.id, or job.projectName + job.environmentName + job.jobName",
        ),
        (
            "neither",
            run_yaml("neither", "    {}", ""),
            "set either job.id, or job.projectName",
        ),
        (
            "partial names",
            run_yaml("partial", "    projectName: a\n    jobName: c", ""),
            "a job by name needs all of projectName, environmentName and jobName",
        ),
        (
            "negative pollIntervalSeconds",
            run_yaml("neg-poll", "    id: 100", "")
                .replace("pollIntervalSeconds: 1", "pollIntervalSeconds: -5"),
            "spec.pollIntervalSeconds: Invalid value: -5: spec.pollIntervalSeconds in body should be greater than or equal to 1",
        ),
        (
            "threadsOverride 0",
            run_yaml("threads0", "    id: 100", "  trigger:\n    threadsOverride: 0\n"),
            "spec.trigger.threadsOverride in body should be greater than or equal to 1",
        ),
        (
            "job id 0",
            run_yaml("id0", "    id: 0", ""),
            "spec.job.id in body should be greater than or equal to 1",
        ),
    ];
    for (what, yaml, fragment) in cases {
        env.apply(yaml).expect_err(what, fragment);
    }
    let creds = |name: &str, host: &str| {
        format!("apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudCredentials\nmetadata:\n  name: {name}\nspec:\n  accountId: 1\n  host: {host}\n  apiKeySecretRef:\n    name: s\n")
    };
    for (what, host) in [
        ("host with a path", "\"cloud.getdbt.com/evil\""),
        ("host that is an IP", "\"10.0.0.1\""),
        ("uppercase host", "Cloud.GetDbt.com"),
        ("host with a port", "\"cloud.getdbt.com:8443\""),
        ("host with a scheme", "\"https://cloud.getdbt.com\""),
    ] {
        env.apply(&creds("bad-host", host))
            .expect_err(what, "spec.host in body should match");
    }
    env.apply(&creds("good-host", "emea.dbt.com"))
        .expect_ok("valid host");
    say("admission: CEL immutability, selector rules and schema checks enforced by the real API server");
}

#[tokio::test]
async fn e2e_stale_status_write_conflicts() {
    let env = TestEnv::new("basic-conflict").await;
    env.apply(&run_yaml("guarded", "    id: 100", ""))
        .expect_ok("apply run");
    let api: Api<DbtCloudJobRun> = Api::namespaced(env.client.clone(), &env.ns);
    let old = api.get("guarded").await.unwrap();
    let old_rv = old.metadata.resource_version.clone().unwrap();
    // Someone else writes (as another operator would) and moves the resourceVersion on.
    let pp = PatchParams::apply("e2e-other").force();
    let other = json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
        "metadata": {"name": "guarded"},
        "status": {"phase": "Queued", "attemptCount": 1}
    });
    let now = api
        .patch_status("guarded", &pp, &Patch::Apply(&other))
        .await
        .expect("status write");
    let new_rv = now.metadata.resource_version.clone().unwrap();
    assert_ne!(old_rv, new_rv);

    // A status computed from the old object, guarded by its resourceVersion: 409.
    let pp = PatchParams::apply("dbt-cloud-operator").force();
    let stale = json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
        "metadata": {"name": "guarded", "resourceVersion": old_rv},
        "status": {"phase": "Queued", "attemptCount": 2}
    });
    match api
        .patch_status("guarded", &pp, &Patch::Apply(&stale))
        .await
    {
        Err(kube::Error::Api(ae)) => {
            assert_eq!(ae.code, 409, "{ae:?}");
            assert_eq!(ae.reason, "Conflict", "{ae:?}");
            assert!(
                ae.message.contains("the object has been modified"),
                "{ae:?}"
            );
        }
        other => panic!("stale status write was not rejected: {other:?}"),
    }
    let current = api.get_status("guarded").await.unwrap();
    assert_eq!(current.status.unwrap().attempt_count, 1);

    // The same write guarded by the current resourceVersion goes through.
    let fresh = json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
        "metadata": {"name": "guarded", "resourceVersion": new_rv},
        "status": {"phase": "Queued", "attemptCount": 2}
    });
    let done = api
        .patch_status("guarded", &pp, &Patch::Apply(&fresh))
        .await
        .expect("fresh guarded write");
    assert_eq!(done.status.unwrap().attempt_count, 2);
    // A merge patch with a stale precondition is refused the same way.
    let stale_merge =
        json!({"metadata": {"resourceVersion": old_rv}, "status": {"attemptCount": 3}});
    let err = api
        .patch_status(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(&stale_merge),
        )
        .await
        .expect_err("stale merge patch");
    assert!(
        matches!(err, kube::Error::Api(ref ae) if ae.code == 409),
        "{err:?}"
    );
    // The operator's own status write (a JSON patch replacing the whole status, carrying the
    // resourceVersion it was computed from): refused when stale, applied when fresh, and it
    // removes what the new status leaves out.
    use dbt_cloud_operator::controller::job_run::status_patch;
    use dbt_cloud_operator::crd::DbtCloudJobRunStatus;
    let replacement = DbtCloudJobRunStatus {
        attempt_count: 5,
        ..Default::default()
    };
    let err = api
        .patch_status(
            "guarded",
            &PatchParams::default(),
            &Patch::Json::<()>(status_patch(&old_rv, &replacement)),
        )
        .await
        .expect_err("stale JSON patch");
    assert!(
        matches!(err, kube::Error::Api(ref ae) if ae.code == 409),
        "{err:?}"
    );
    let current_rv = api
        .get_status("guarded")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let done = api
        .patch_status(
            "guarded",
            &PatchParams::default(),
            &Patch::Json::<()>(status_patch(&current_rv, &replacement)),
        )
        .await
        .expect("fresh JSON patch");
    let status = serde_json::to_value(done.status.unwrap()).unwrap();
    assert_eq!(status["attemptCount"], 5);
    assert!(
        status.get("phase").is_none_or(|p| p == "Pending"),
        "the whole status is replaced: {status}"
    );
    say("status writes with a stale resourceVersion: 409 Conflict (apply, merge patch and the operator's JSON patch)");
}
