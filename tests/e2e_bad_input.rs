//! Malformed and hostile input against a real kube-apiserver and the real operator binary: every
//! manifest in tests/manifests/bad/ is either rejected at admission with a clear message or
//! accepted and then given a condition that says what to fix. The operator never panics, keeps
//! reconciling (a good run created afterwards succeeds), triggers nothing for bad runs, and never
//! writes an API key into its logs, Events or any status.
//!
//! Each manifest starts with comment lines saying what to expect:
//! `# reject: <fragment>` (every fragment must be in kubectl's error),
//! `# reason: <resource>/<name> <Reason>` (some condition of that object has this reason),
//! `# phase: <resource>/<name> <Phase>`. `${NAMESPACE}` is replaced by the test namespace.

#[path = "e2e/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dbt_cloud_simulator::{JobBehavior, JobSpec, Simulator};
use harness::*;
use serde_json::Value;

const GOOD_KEY: &str = "dbtc_goodBadInputKey_5e4d3c2b1a";
/// Every key string used by the manifests (must never show up anywhere).
const KEYS: &[&str] = &[
    GOOD_KEY,
    "dbtc_wrongKeyNameButValidLooking",
    "dbtc_has spaces_in_it_9f8e7d",
    "dbtc_prefixedKey_3c4d5e",
    "dbtc_wellFormedButUnknown_8a7b6c",
];

fn seed(sim: &Simulator) {
    sim.add_account(1, "Acme");
    sim.add_token(GOOD_KEY, &[1]);
    sim.add_project(1, 10, "analytics");
    sim.add_environment(1, 10, 20, "production");
    let quick = JobBehavior {
        queued: Duration::from_millis(50),
        starting: Duration::from_millis(50),
        running: Duration::from_millis(300),
        ..JobBehavior::default()
    };
    for (id, name) in [(100, "nightly"), (200, "twin"), (201, "twin")] {
        sim.add_job(
            1,
            JobSpec {
                id,
                project_id: 10,
                environment_id: 20,
                name: name.into(),
                steps: vec!["dbt build".into()],
                behavior: quick.clone(),
            },
        );
    }
}

#[derive(Debug)]
struct Case {
    file: String,
    text: String,
    reject: Vec<String>,
    reasons: Vec<(String, String)>,
    phases: Vec<(String, String)>,
}

fn load_cases(ns: &str) -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/manifests/bad")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("${NAMESPACE}", ns);
            let mut case = Case {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                text: text.clone(),
                reject: Vec::new(),
                reasons: Vec::new(),
                phases: Vec::new(),
            };
            for line in text.lines().take_while(|l| l.starts_with('#')) {
                let split = |rest: &str| {
                    let (a, b) = rest.trim().split_once(' ').expect("`what value`");
                    (a.to_string(), b.trim().to_string())
                };
                if let Some(rest) = line.strip_prefix("# reject:") {
                    case.reject.push(rest.trim().to_string());
                } else if let Some(rest) = line.strip_prefix("# reason:") {
                    case.reasons.push(split(rest));
                } else if let Some(rest) = line.strip_prefix("# phase:") {
                    case.phases.push(split(rest));
                }
            }
            case
        })
        .collect()
}

fn reasons_of(obj: &Value) -> Vec<String> {
    obj["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_bad_input_is_rejected_or_explained() {
    let env = TestEnv::new("bad-input").await;
    seed(&env.sim);
    let mut opts = env.operator_opts();
    opts.rust_log = Some("info,dbt_cloud_operator=debug".into());
    let mut op = env.operator("operator.log", opts);
    env.apply(&TestEnv::credentials_yaml("good", "good-key", 1, GOOD_KEY))
        .expect_ok("good credentials");
    // A Secret the cluster credentials must not find (it is not in the operator namespace).
    let out = kubectl_with(
        &env.cluster.kubeconfig,
        &[
            "create",
            "secret",
            "generic",
            "secret-only-in-kube-system",
            "-n",
            "kube-system",
            &format!("--from-literal=apiKey={GOOD_KEY}"),
        ],
        None,
    );
    out.expect_ok("secret in kube-system");

    let cases = load_cases(&env.ns);
    assert!(cases.len() >= 40, "only {} bad manifests", cases.len());
    let (mut rejected, mut accepted) = (0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let out = env.apply(&case.text);
        if case.reject.is_empty() {
            if out.ok {
                accepted += 1;
            } else {
                failures.push(format!(
                    "{}: expected to be accepted, got {}",
                    case.file,
                    out.all()
                ));
            }
            continue;
        }
        if out.ok {
            failures.push(format!(
                "{}: accepted, expected rejection: {}",
                case.file, out.stdout
            ));
            continue;
        }
        rejected += 1;
        let text = out.all();
        for frag in &case.reject {
            if !text.contains(frag.as_str()) {
                failures.push(format!(
                    "{}: error lacks {frag:?}: {}",
                    case.file,
                    text.trim()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "admission:\n{}", failures.join("\n"));
    say(format!(
        "bad input: {} manifests, {rejected} rejected at admission, {accepted} accepted",
        cases.len()
    ));

    // Accepted ones get a condition that says what to fix (bounded wait).
    let expectations: Vec<(&Case, &str, String, String)> = cases
        .iter()
        .flat_map(|c| {
            c.reasons
                .iter()
                .map(move |(o, r)| (c, "reason", o.clone(), r.clone()))
                .chain(
                    c.phases
                        .iter()
                        .map(move |(o, p)| (c, "phase", o.clone(), p.clone())),
                )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut unmet: Vec<String>;
    loop {
        unmet = Vec::new();
        for (case, what, obj, want) in &expectations {
            let out = env.kubectl(&["get", obj, "-o", "json"]);
            let json: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            let ok = match *what {
                "reason" => reasons_of(&json).iter().any(|r| r == want),
                _ => json["status"]["phase"] == want.as_str(),
            };
            if !ok {
                unmet.push(format!(
                    "{}: {obj} expected {what} {want}; status {}",
                    case.file, json["status"]
                ));
            }
        }
        if unmet.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(unmet.is_empty(), "conditions:\n{}", unmet.join("\n"));
    assert!(op.running(), "operator exited:\n{}", op.logs());

    // Still reconciling: a good run created afterwards succeeds.
    env.apply(
        "apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobRun\nmetadata:\n  name: good-after\nspec:\n  credentialsRef:\n    name: good\n  job:\n    id: 100\n  pollIntervalSeconds: 1\n",
    )
    .expect_ok("good run");
    let out = env.wait_for("dbtcloudjobrun/good-after", "Complete", 60);
    out.expect_ok(&format!(
        "good run after bad input: {}",
        env.get_json("dbtcloudjobrun/good-after")["status"]
    ));

    // Only the good runs triggered anything.
    let allowed: BTreeSet<String> = ["good-after", "run-unicode-cause"]
        .iter()
        .map(|n| {
            env.get_json(&format!("dbtcloudjobrun/{n}"))["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let triggers = env.sim.triggers();
    for t in &triggers {
        let (uid, _) = marker(&t.cause).expect("marker");
        assert!(allowed.contains(&uid), "a bad run triggered: {t:?}");
        assert!(
            t.cause.chars().count() <= 255,
            "cause too long: {}",
            t.cause
        );
    }
    assert_eq!(triggers.len(), 2, "{triggers:?}");
    let unicode = triggers
        .iter()
        .find(|t| t.cause.contains("Nächtlicher Lauf 🚀 夜間"))
        .expect("the unicode cause reached dbt Cloud");
    say(format!(
        "unicode cause sent as {} characters / {} bytes",
        unicode.cause.chars().count(),
        unicode.cause.len()
    ));

    // Secret hygiene: no key in the log, any Event or any dbtcloud.io object.
    let logs = op.logs();
    assert!(panics(&logs).is_empty(), "panicked: {:?}", panics(&logs));
    let mut haystacks = vec![("operator log".to_string(), logs.clone())];
    for what in ["events", "events.events.k8s.io"] {
        let out = kubectl_with(
            &env.cluster.kubeconfig,
            &["get", what, "-A", "-o", "json"],
            None,
        );
        haystacks.push((what.to_string(), out.expect_ok(what).to_string()));
    }
    let out = kubectl_with(
        &env.cluster.kubeconfig,
        &[
            "get",
            "dbtcloudjobruns,dbtcloudjobtriggers,dbtcloudcredentials,clusterdbtcloudcredentials",
            "-A",
            "-o",
            "json",
        ],
        None,
    );
    haystacks.push((
        "dbtcloud.io objects".into(),
        out.expect_ok("dump").to_string(),
    ));
    let events: Value = serde_json::from_str(&haystacks[2].1).unwrap();
    let event_count = events["items"].as_array().map_or(0, Vec::len);
    for (where_, text) in &haystacks {
        for key in KEYS {
            let tail = key.trim_start_matches("dbtc_");
            assert!(
                !text.contains(key) && !text.contains(tail),
                "API key {key:?} found in {where_}"
            );
        }
    }
    say(format!(
        "secret hygiene: {} keys absent from {} log bytes, {event_count} events, all dbtcloud.io objects; {} dbt Cloud requests, {} triggers",
        KEYS.len(),
        logs.len(),
        env.sim.requests().len(),
        triggers.len()
    ));
    op.kill();
}
