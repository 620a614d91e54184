//! "Prove it": chaos against a real kube-apiserver. Hundreds of DbtCloudJobRuns across two
//! accounts, the operator process SIGKILLed at random moments (also right after a trigger reached
//! dbt Cloud) and restarted, the simulator answering 429/5xx at random and losing trigger
//! responses. Every run must reach its expected phase with exactly one dbt Cloud run per attempt:
//! no duplicate, none lost, nothing stuck, no panic. A second variant runs two operator replicas
//! with leader election and kills the leader again and again.
//!
//! Replay with `CHAOS_SEED=<n>` (printed as `chaos seed = n`); scale with `CHAOS_RUNS`,
//! `CHAOS_KILLS`.

#[path = "e2e/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dbt_cloud_operator::crd::job_run::AttemptKind;
use dbt_cloud_operator::crd::DbtCloudJobRun;
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome, RandomFaults, Simulator};
use harness::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::Api;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The two chaos tests share one API server and two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEYS: [&str; 2] = [
    "dbtc_chaosAccountOneKey_7f3a9c1e5b",
    "dbtc_chaosAccountTwoKey_2d8e6b4f0a",
];
const ACCOUNTS: [i64; 2] = [101, 202];
/// Shared jobs per account whose runs succeed.
const SUCCESS_JOBS: i64 = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Debug)]
struct Planned {
    name: String,
    account_idx: usize,
    job: i64,
    yaml_retry: String,
    expect_phase: &'static str,
    expect_attempts: u32,
}

fn behavior(outcome: Outcome, retry_outcome: Outcome, rng: &mut StdRng) -> JobBehavior {
    JobBehavior {
        queued: Duration::from_millis(20),
        starting: Duration::from_millis(20),
        running: Duration::from_millis(rng.random_range(60..250)),
        outcome,
        retry_outcome,
    }
}

/// Sets up the simulator and plans `n` runs: mostly successes on shared jobs, plus runs failing
/// once then retried natively (RerunFailed, each on its own job so it is the job's latest run),
/// runs failing twice with full retries, and runs failing twice with native retries.
fn plan(sim: &Simulator, n: usize, rng: &mut StdRng) -> Vec<Planned> {
    let mut next_job = 5000;
    for (i, &acct) in ACCOUNTS.iter().enumerate() {
        sim.add_account(acct, &format!("Chaos {i}"));
        sim.add_token(KEYS[i], &[acct]);
        sim.add_project(acct, 10, "analytics");
        sim.add_environment(acct, 10, 20, "production");
        for j in 0..SUCCESS_JOBS {
            let b = behavior(Outcome::Success, Outcome::Success, rng);
            sim.add_job(acct, job_spec(1000 + j, "ok", b));
        }
        let b = behavior(Outcome::FailAtStep(2), Outcome::FailAtStep(2), rng);
        sim.add_job(acct, job_spec(2000, "always-fails", b));
    }
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let account_idx = k % 2;
        let acct = ACCOUNTS[account_idx];
        let name = format!("chaos-{k:03}");
        let p = out.len() % 10;
        let planned = match p {
            // Fails once, native retry succeeds.
            0 | 5 => {
                next_job += 1;
                let b = behavior(Outcome::FailAtStep(2), Outcome::Success, rng);
                sim.add_job(acct, job_spec(next_job, "flaky", b));
                Planned {
                    name,
                    account_idx,
                    job: next_job,
                    yaml_retry: "  retry:\n    maxAttempts: 2\n    strategy: RerunFailed\n".into(),
                    expect_phase: "Succeeded",
                    expect_attempts: 2,
                }
            }
            // Fails every time; two full triggers.
            3 => Planned {
                name,
                account_idx,
                job: 2000,
                yaml_retry: "  retry:\n    maxAttempts: 2\n    strategy: Full\n".into(),
                expect_phase: "Failed",
                expect_attempts: 2,
            },
            // Fails, and its native retry fails too.
            7 => {
                next_job += 1;
                let b = behavior(Outcome::FailAtStep(2), Outcome::FailAtStep(2), rng);
                sim.add_job(acct, job_spec(next_job, "broken", b));
                Planned {
                    name,
                    account_idx,
                    job: next_job,
                    yaml_retry: "  retry:\n    maxAttempts: 2\n    strategy: RerunFailed\n".into(),
                    expect_phase: "Failed",
                    expect_attempts: 2,
                }
            }
            _ => Planned {
                name,
                account_idx,
                job: 1000 + rng.random_range(0..SUCCESS_JOBS),
                yaml_retry: String::new(),
                expect_phase: "Succeeded",
                expect_attempts: 1,
            },
        };
        out.push(planned);
    }
    out
}

fn job_spec(id: i64, name: &str, behavior: JobBehavior) -> JobSpec {
    JobSpec {
        id,
        project_id: 10,
        environment_id: 20,
        name: format!("{name}-{id}"),
        steps: vec!["dbt seed".into(), "dbt build".into()],
        behavior,
    }
}

fn credentials_yaml() -> String {
    let mut y = String::new();
    for i in 0..2 {
        y.push_str(&TestEnv::credentials_yaml(
            &format!("account-{i}"),
            &format!("account-{i}-key"),
            ACCOUNTS[i],
            KEYS[i],
        ));
        y.push_str("---\n");
    }
    y
}

fn run_yaml(p: &Planned) -> String {
    format!(
        "apiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudJobRun\nmetadata:\n  name: {}\nspec:\n  credentialsRef:\n    name: account-{}\n  job:\n    id: {}\n  pollIntervalSeconds: 1\n{}---\n",
        p.name, p.account_idx, p.job, p.yaml_retry
    )
}

struct Figures {
    kills: u32,
    kills_after_trigger: u32,
    kills_during_startup: u32,
    starts: u32,
}

async fn leader_index(api: &Api<Lease>) -> Option<usize> {
    let lease = api.get_opt("dbt-cloud-operator-leader").await.ok()??;
    let holder = lease.spec?.holder_identity?;
    match holder.as_str() {
        "replica-0" => Some(0),
        "replica-1" => Some(1),
        _ => None,
    }
}

async fn count_terminal(api: &Api<DbtCloudJobRun>) -> (usize, usize) {
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let total = list.items.len();
            let done = list
                .items
                .iter()
                .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
                .count();
            (total, done)
        }
        Err(_) => (0, 0),
    }
}

async fn chaos(name: &str, default_runs: u64, leader_elect: bool) {
    let env = TestEnv::new(name).await;
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    say(format!(
        "{name}: chaos seed = {seed} (replay with CHAOS_SEED={seed})"
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let n = env_u64("CHAOS_RUNS", default_runs) as usize;
    let min_kills = env_u64("CHAOS_KILLS", 20) as u32;
    let planned = plan(&env.sim, n, &mut rng);
    env.sim.set_random_faults(RandomFaults {
        seed,
        rate_429: 0.10,
        rate_5xx: 0.10,
        rate_lost_trigger: 0.10,
        retry_after_secs: 1,
    });

    // One operator, or two replicas electing a leader.
    let mut ops: Vec<Operator> = if leader_elect {
        (0..2)
            .map(|i| {
                let mut o = env.operator_opts();
                o.leader = Some(format!("replica-{i}"));
                o.lease = (3, 1);
                env.operator(&format!("operator-{i}.log"), o)
            })
            .collect()
    } else {
        vec![env.operator("operator.log", env.operator_opts())]
    };
    env.apply(&credentials_yaml()).expect_ok("credentials");

    let runs_api: Api<DbtCloudJobRun> = Api::namespaced(env.client.clone(), &env.ns);
    let lease_api: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    // Runs arrive in batches while the killing goes on, so kills hit a busy operator.
    let batches: Vec<String> = planned
        .chunks(planned.len().div_ceil(10).max(1))
        .map(|c| c.iter().map(run_yaml).collect())
        .collect();
    let mut next_batch = 0;
    let mut f = Figures {
        kills: 0,
        kills_after_trigger: 0,
        kills_during_startup: 0,
        starts: 0,
    };
    let chaos_deadline = Instant::now() + Duration::from_secs(150);
    // Kill until at least `min_kills`, every batch is created and every run finished (bounded).
    loop {
        if Instant::now() > chaos_deadline {
            break;
        }
        if f.kills >= min_kills && next_batch == batches.len() {
            let (total, done) = count_terminal(&runs_api).await;
            if total == n && done == n {
                break;
            }
        }
        if next_batch < batches.len() && (f.kills as usize) >= next_batch * 2 {
            env.apply(&batches[next_batch]).expect_ok("apply runs");
            next_batch += 1;
        }
        // Pick the victim: the leader when electing (else whoever runs).
        let victim = match ops.len() {
            1 => 0,
            _ => {
                let mut idx = None;
                for _ in 0..40 {
                    idx = leader_index(&lease_api).await;
                    if idx.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                idx.unwrap_or_else(|| rng.random_range(0..2))
            }
        };
        let mode = rng.random_range(0..10);
        if mode < 5 {
            // Right after a trigger reached dbt Cloud (bounded wait).
            let before = env.sim.triggers().len();
            let until = Instant::now() + Duration::from_secs(4);
            while env.sim.triggers().len() == before && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if env.sim.triggers().len() > before {
                f.kills_after_trigger += 1;
            }
        } else {
            let ms = rng.random_range(100..2500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ops[victim].kill();
        f.kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        ops[victim].restart();
        if rng.random_range(0..6) == 0 {
            // Killed again while starting up (listing, first reconciles).
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
            ops[victim].kill();
            f.kills += 1;
            f.kills_during_startup += 1;
            ops[victim].restart();
        }
        // A replica that exited by itself (e.g. after losing the Lease) is started again.
        for o in ops.iter_mut() {
            if !o.running() {
                o.restart();
            }
        }
    }
    let chaos_secs = t0.elapsed().as_secs_f64();
    assert!(
        f.kills >= min_kills,
        "only {} kills before the deadline",
        f.kills
    );
    assert_eq!(next_batch, batches.len(), "not every batch was created");

    // Let everything settle (bounded), faults still on.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, 0);
    while Instant::now() < settle_deadline {
        last = count_terminal(&runs_api).await;
        if last.0 == n && last.1 == n {
            break;
        }
        for o in ops.iter_mut() {
            if !o.running() {
                o.restart();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total_secs = t0.elapsed().as_secs_f64();
    for o in ops.iter_mut() {
        f.starts += o.starts;
    }

    // Verdict.
    let runs = runs_api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(runs.len(), n);
    let by_name: BTreeMap<String, &DbtCloudJobRun> = runs
        .iter()
        .map(|r| (r.metadata.name.clone().unwrap(), r))
        .collect();
    let triggers = env.sim.triggers();
    let mut trigger_markers: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let mut unmarked = 0;
    for t in &triggers {
        match marker(&t.cause) {
            Some(m) => *trigger_markers.entry(m).or_default() += 1,
            None => unmarked += 1,
        }
    }
    let duplicates: Vec<_> = trigger_markers.iter().filter(|(_, c)| **c > 1).collect();
    let mut sim_runs_by_uid: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut retries = 0;
    for acct in ACCOUNTS {
        for r in env.sim.runs(acct) {
            if r.get("retrying_run_id").is_some_and(|v| !v.is_null()) {
                retries += 1;
            }
            if let Some((uid, _)) = r["trigger"]["cause"].as_str().and_then(marker) {
                sim_runs_by_uid
                    .entry(uid)
                    .or_default()
                    .insert(r["id"].as_i64().unwrap());
            }
        }
    }
    let mut problems = Vec::new();
    let mut lost = 0;
    for p in &planned {
        let Some(r) = by_name.get(&p.name) else {
            problems.push(format!("{}: missing", p.name));
            continue;
        };
        let uid = r.metadata.uid.clone().unwrap();
        let st = r.status.clone().unwrap_or_default();
        if st.phase.as_str() != p.expect_phase || st.attempt_count != p.expect_attempts {
            problems.push(format!(
                "{}: phase {} attempts {} (expected {} after {}): {:?}",
                p.name,
                st.phase.as_str(),
                st.attempt_count,
                p.expect_phase,
                p.expect_attempts,
                st.status_message
            ));
        }
        if st.pending_trigger.is_some()
            || dbt_cloud_operator::controller::intent::unresolved(r).is_some()
        {
            problems.push(format!("{}: a trigger intent left unresolved", p.name));
        }
        // Exactly one dbt Cloud run per attempt: full triggers by their marker, native retries by
        // the runs carrying this object's marker.
        for a in &st.attempts {
            if a.kind == AttemptKind::Full {
                match trigger_markers.get(&(uid.clone(), a.attempt)) {
                    Some(1) => {}
                    Some(c) => problems.push(format!(
                        "{}: attempt {} triggered {c} times",
                        p.name, a.attempt
                    )),
                    None => {
                        lost += 1;
                        problems.push(format!("{}: attempt {} has no trigger", p.name, a.attempt));
                    }
                }
            }
        }
        let sim_ids = sim_runs_by_uid.remove(&uid).unwrap_or_default();
        let status_ids: BTreeSet<i64> = st.attempts.iter().map(|a| a.run_id).collect();
        if sim_ids != status_ids {
            problems.push(format!(
                "{}: dbt Cloud runs {sim_ids:?} but status attempts {status_ids:?}",
                p.name
            ));
        }
    }
    for (uid, ids) in &sim_runs_by_uid {
        problems.push(format!(
            "runs {ids:?} carry the marker of unknown object {uid}"
        ));
    }
    let mut panicked = Vec::new();
    let mut terms = 0;
    for o in ops.iter_mut() {
        let logs = o.logs();
        terms += logs.matches("became leader").count();
        panicked.extend(
            panics(&logs)
                .into_iter()
                .map(|l| l.chars().take(400).collect::<String>()),
        );
    }
    let requests = env.sim.requests();
    let dropped = requests.iter().filter(|r| r.status == 0).count();
    let e429 = requests.iter().filter(|r| r.status == 429).count();
    let e5xx = requests.iter().filter(|r| r.status >= 500).count();
    say(format!(
        "{name}: {n} runs, {} accounts, {} kills ({} right after a trigger, {} during start-up), {} process starts, {} triggers + {retries} native retries, {} duplicates, {lost} lost, {unmarked} unmarked; dbt Cloud requests {} ({e429} x 429, {e5xx} x 5xx, {dropped} responses lost); {terms} leader terms; chaos phase {chaos_secs:.0}s, all terminal at {total_secs:.0}s",
        ACCOUNTS.len(),
        f.kills,
        f.kills_after_trigger,
        f.kills_during_startup,
        f.starts,
        triggers.len(),
        duplicates.len(),
        requests.len(),
    ));
    for t in ops.iter_mut() {
        t.kill();
    }
    assert!(
        panicked.is_empty(),
        "operator panicked:\n{}",
        panicked.join("\n")
    );
    assert!(duplicates.is_empty(), "duplicate triggers: {duplicates:?}");
    assert_eq!(
        last,
        (n, n),
        "runs not terminal (total, terminal) after settling"
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_chaos_sigkill_single_operator() {
    chaos("chaos-single", 200, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_chaos_sigkill_leader_elected_pair() {
    chaos("chaos-leader", 200, true).await;
}
