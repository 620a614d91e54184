//! The chaos test, in-process (cheaper than the e2e one, same real kube-apiserver): many runs,
//! the operator killed at random moments (task aborted: no graceful anything) and restarted, and
//! the simulator answering 20 % of requests with 429/5xx and losing trigger responses. Pass: every
//! run reaches its expected terminal phase with exactly one trigger per attempt. Seeded; the seed
//! is printed (`CHAOS_SEED=N` replays it).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use dbt_cloud_operator::crd::RunPhase;
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome, RandomFaults};
use kube::api::ListParams;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_faults_never_duplicate_or_lose_a_run() {
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
    let duplicates: Vec<_> = per_marker.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "duplicate triggers {duplicates:?} (seed {seed})"
    );
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
            "{name} (seed {seed}): {:?}",
            s.status_message
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
