//! The chaos test, in-process (cheaper than the e2e one, same real kube-apiserver): many runs,
//! the operator killed at random moments (task aborted: no graceful anything) and restarted, and
//! the simulator answering 20 % of requests with 429/5xx and losing trigger responses. Pass: every
//! run reaches its expected terminal phase with exactly one trigger per attempt. Seeded; the seed
//! is printed (`CHAOS_SEED=N` replays it).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use dbt_cloud_operator::crd::RunPhase;
use dbt_cloud_simulator::{Fault, FaultScope, JobBehavior, JobSpec, Outcome, RandomFaults};
use kube::api::ListParams;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::*;

/// The two chaos tests run one at a time: each loads the 2 cores on its own, and starving the
/// in-process simulator past the confirm window is not the failure they look for.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_faults_never_duplicate_or_lose_a_run() {
    let _serial = SERIAL.lock().await;
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed = {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::new().await;
    env.valid_credentials().await;
    // Jobs 500..505 succeed; 505..510 fail once and succeed on a native retry.
    for id in 500..510 {
        let fails = id >= 505;
        env.sim.add_job(
            ACCOUNT,
            JobSpec {
                id,
                project_id: 10,
                environment_id: 20,
                name: format!("chaos-{id}"),
                steps: vec!["dbt build".into()],
                behavior: JobBehavior {
                    queued: Duration::from_millis(20),
                    starting: Duration::from_millis(20),
                    running: Duration::from_millis(150),
                    outcome: if fails {
                        Outcome::FailAtStep(1)
                    } else {
                        Outcome::Success
                    },
                    retry_outcome: Outcome::Success,
                },
            },
        );
    }
    env.sim.set_random_faults(RandomFaults {
        seed,
        rate_429: 0.1,
        rate_5xx: 0.1,
        rate_lost_trigger: 0.1,
        retry_after_secs: 0,
    });
    let runs = 60;
    for i in 0..runs {
        let job = 500 + (i % 10) as i64;
        let spec = json!({"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": 1, "retry": {"maxAttempts": 2, "strategy": "RerunFailed"}});
        env.create_run(&format!("c{i}"), spec).await;
    }
    let mut operator = env.start_operator();
    // Ten kills at random moments while the runs are being triggered, polled and retried.
    let kills = 10;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        operator.kill().await;
        operator = env.start_operator();
    }
    let mut done = 0;
    // Let the last instance finish without faults.
    env.sim.set_random_faults(RandomFaults::default());
    for _ in 0..1500 {
        let all = env.runs().list(&ListParams::default()).await.unwrap().items;
        done = all
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
            .count();
        if done == runs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(done, runs, "every run finished (seed {seed})");
    // Exactly one trigger per attempt: count triggers by their attempt marker.
    let mut per_marker: HashMap<String, usize> = HashMap::new();
    for t in env.sim.triggers() {
        let marker = t
            .cause
            .rsplit_once("[dco:")
            .map(|(_, m)| m.to_string())
            .expect("every trigger carries a marker");
        *per_marker.entry(marker).or_default() += 1;
    }
    assert_no_duplicates(&env, &per_marker, seed).await;
    let all = env.runs().list(&ListParams::default()).await.unwrap().items;
    for run in &all {
        let s = run.status.as_ref().unwrap();
        // A failed run is retried natively only while it is its job's latest run (dbt Cloud's
        // RETRY_NOT_LATEST_RUN); otherwise the fallback full run fails again, as the job does.
        let name = run.metadata.name.as_deref().unwrap_or("");
        let native_retry = s
            .attempts
            .last()
            .is_some_and(|a| format!("{:?}", a.kind) == "RerunFailed");
        let job_fails = s.job_id.is_some_and(|j| j >= 505);
        let expected = if !job_fails || native_retry {
            RunPhase::Succeeded
        } else {
            RunPhase::Failed
        };
        assert_eq!(
            s.phase, expected,
            "{name} (seed {seed}): {:?} {:?}",
            s.status_message, s.attempts
        );
        assert!(s.attempt_count <= 2, "{name} (seed {seed})");
        // Every Full attempt recorded in status has exactly one trigger; native retries none.
        let uid = run.metadata.uid.clone().unwrap();
        for a in &s.attempts {
            let triggers = per_marker
                .get(&format!("{uid}#{}]", a.attempt))
                .copied()
                .unwrap_or(0);
            let expected = usize::from(format!("{:?}", a.kind) == "Full");
            assert_eq!(
                triggers,
                expected,
                "{} attempt {} (seed {seed})",
                run.metadata.name.as_deref().unwrap_or(""),
                a.attempt
            );
        }
    }
    let lost = env.sim.requests().iter().filter(|r| r.status == 0).count();
    eprintln!("chaos in-process: {runs} runs, {kills} kills, {} triggers, {lost} lost responses, 0 duplicates", env.sim.triggers().len());
}

/// Fails with the whole story of each duplicated attempt marker (its triggers, the object with its
/// intent and status, its Events, and the simulator's requests about the job and its runs).
async fn assert_no_duplicates(env: &Env, per_marker: &HashMap<String, usize>, seed: u64) {
    let duplicates: Vec<_> = per_marker.iter().filter(|(_, n)| **n > 1).collect();
    if duplicates.is_empty() {
        return;
    }
    {
        // Everything that tells how: the triggers of the marker, the object, its Events, and
        // the simulator's requests naming the job since the first of them.
        let start = std::time::Instant::now();
        let mut report = String::new();
        for (marker, _) in &duplicates {
            let uid = marker.trim_end_matches(']').split('#').next().unwrap_or("");
            let triggers: Vec<_> = env
                .sim
                .triggers()
                .into_iter()
                .filter(|t| t.cause.contains(marker.as_str()))
                .collect();
            for t in &triggers {
                report += &format!(
                    "trigger run {} job {} at -{:?}: {}\n",
                    t.run_id,
                    t.job_id,
                    start.duration_since(t.at),
                    t.cause
                );
            }
            let all = env.runs().list(&ListParams::default()).await.unwrap().items;
            if let Some(run) = all.iter().find(|r| r.metadata.uid.as_deref() == Some(uid)) {
                let name = run.metadata.name.clone().unwrap_or_default();
                report += &format!(
                    "object {name}: annotations {:?}\nstatus {}\nevents {:?}\n",
                    run.metadata.annotations,
                    serde_json::to_string_pretty(&run.status).unwrap(),
                    env.event_reasons(&name).await
                );
            }
            if let Some(first) = triggers.first() {
                let job = first.job_id;
                let names_it = |r: &dbt_cloud_simulator::RequestRecord| {
                    r.query.contains(&format!("job_definition_id={job}"))
                        || r.path.contains(&format!("/jobs/{job}/"))
                        || triggers
                            .iter()
                            .any(|t| r.path.contains(&format!("/runs/{}/", t.run_id)))
                };
                for r in env.sim.requests().iter().filter(|r| names_it(r)) {
                    report += &format!(
                        "  -{:?} {} {}?{} -> {}\n",
                        start.duration_since(r.at),
                        r.method,
                        r.path,
                        r.query,
                        r.status
                    );
                }
            }
        }
        panic!("duplicate triggers {duplicates:?} (seed {seed})\n{report}");
    }
}

/// A client of the simulator for the runs other people make on the same job (CI, schedules).
fn others(env: &Env) -> dbt_cloud_operator::dbt_cloud::DbtCloudClient {
    use dbt_cloud_operator::dbt_cloud::*;
    let config = ClientConfig {
        insecure_base_url_override: Some(env.sim.base_url().parse().unwrap()),
        max_attempts: 1,
        ..Default::default()
    };
    DbtCloudClient::new(
        AccessHost::parse("cloud.getdbt.com", DEFAULT_ALLOWED_SUFFIXES).unwrap(),
        ACCOUNT,
        secrecy::SecretString::from(TOKEN.to_string()),
        http_client(&config).unwrap(),
        AccountLimits::unlimited(),
        std::sync::Arc::new(config),
        std::sync::Arc::new(NoopObserver),
    )
    .unwrap()
}

/// The shared-job variant (the class of bug a job-per-run chaos test cannot see): 30 runs of ONE
/// job while others trigger 400 runs of that job. First 10 triggers whose answers never reach the
/// operator (killed while they are held back) with 150 newer runs behind them; then 20 more with
/// lost trigger responses, 429/5xx and 8 random kills of the operator while others keep
/// triggering. Pass: every object finished Succeeded with exactly one dbt Cloud run, and the
/// searches read past the newest page of 100 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_shared_job_never_gets_a_duplicate_or_loses_a_run() {
    let _serial = SERIAL.lock().await;
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("shared-job chaos seed = {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::new().await;
    env.valid_credentials().await;
    const JOB: i64 = 600;
    env.sim.add_job(
        ACCOUNT,
        JobSpec {
            id: JOB,
            project_id: 10,
            environment_id: 20,
            name: "shared".into(),
            steps: vec!["dbt build".into()],
            behavior: JobBehavior {
                queued: Duration::from_millis(1),
                starting: Duration::from_millis(1),
                running: Duration::from_millis(5),
                outcome: Outcome::Success,
                retry_outcome: Outcome::Success,
            },
        },
    );
    // Phase 1, deterministic: the operator triggers 10 runs and is killed while their answers are
    // held back (the runs exist in dbt Cloud, the operator never hears of them); then others make
    // 150 runs of the job. Every one of the 10 must now be found behind more than a page of runs.
    env.sim.inject(Fault::SlowResponse {
        count: 10,
        delay: Duration::from_secs(5),
        scope: FaultScope::Trigger,
    });
    let first = env.start_operator();
    for i in 0..10 {
        env.create_run(
            &format!("s{i}"),
            json!({"credentialsRef": {"name": "creds"}, "job": {"id": JOB}, "pollIntervalSeconds": 1}),
        )
        .await;
    }
    env.wait_until("10 triggers reached dbt Cloud", || {
        env.sim.trigger_count(ACCOUNT, JOB) == 10
    })
    .await;
    first.kill().await;
    env.sim.clear_faults();
    let busy = others(&env);
    let mut made_by_others = 0;
    for i in 0..150 {
        let req =
            dbt_cloud_operator::dbt_cloud::TriggerRunRequest::new(format!("CI run {i}")).unwrap();
        busy.trigger_run(JOB, &req).await.unwrap();
        made_by_others += 1;
    }
    // Phase 2, random: 20 more runs while others keep triggering (250 more), with lost trigger
    // responses, 429/5xx and random kills.
    let busy_task = tokio::spawn(async move {
        let mut made = 0;
        for i in 150..400 {
            let req = dbt_cloud_operator::dbt_cloud::TriggerRunRequest::new(format!("CI run {i}"))
                .unwrap();
            if busy.trigger_run(JOB, &req).await.is_ok() {
                made += 1;
            }
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        made
    });
    env.sim.set_random_faults(RandomFaults {
        seed,
        rate_429: 0.05,
        rate_5xx: 0.05,
        rate_lost_trigger: 0.3,
        retry_after_secs: 0,
    });
    let runs = 30;
    let mut operator = env.start_operator();
    for i in 10..runs {
        env.create_run(
            &format!("s{i}"),
            json!({"credentialsRef": {"name": "creds"}, "job": {"id": JOB}, "pollIntervalSeconds": 1}),
        )
        .await;
    }
    let kills = 8;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        operator.kill().await;
        operator = env.start_operator();
    }
    made_by_others += busy_task.await.unwrap();
    env.sim.set_random_faults(RandomFaults::default());
    let mut done = 0;
    for _ in 0..3000 {
        let all = env.runs().list(&ListParams::default()).await.unwrap().items;
        done = all
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
            .count();
        if done == runs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(operator);
    assert_eq!(done, runs, "every run finished (seed {seed})");
    let mut per_marker: HashMap<String, usize> = HashMap::new();
    for t in env.sim.triggers() {
        if let Some((_, m)) = t.cause.rsplit_once("[dco:") {
            *per_marker.entry(m.to_string()).or_default() += 1;
        }
    }
    assert_no_duplicates(&env, &per_marker, seed).await;
    let all = env.runs().list(&ListParams::default()).await.unwrap().items;
    for run in &all {
        let s = run.status.as_ref().unwrap();
        let name = run.metadata.name.as_deref().unwrap_or("");
        assert_eq!(
            s.phase,
            RunPhase::Succeeded,
            "{name} (seed {seed}): {:?}",
            s.status_message
        );
        let uid = run.metadata.uid.clone().unwrap();
        let ours = per_marker.get(&format!("{uid}#1]")).copied().unwrap_or(0);
        assert_eq!(ours, 1, "{name}: one dbt Cloud run (seed {seed})");
    }
    // The searches had to read past the newest page of the job's runs.
    let deep_pages = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/runs/"))
        .filter(|r| {
            r.query
                .split('&')
                .any(|kv| kv.strip_prefix("offset=").is_some_and(|o| o != "0"))
        })
        .count();
    let lost = env.sim.requests().iter().filter(|r| r.status == 0).count();
    eprintln!(
        "shared-job chaos: {runs} runs + {made_by_others} by others on one job, {kills} kills, {lost} lost responses, {deep_pages} search pages past the first, 0 duplicates"
    );
    assert!(
        deep_pages >= 10,
        "the 10 held triggers were searched for past the newest page (seed {seed})"
    );
}
