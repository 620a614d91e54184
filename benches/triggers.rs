//! Benchmark (not a test): 1,000 `DbtCloudJobTrigger`s whose schedules fire in the same minute,
//! the operator's controllers in-process against the real kube-apiserver of the test harness and
//! the dbt Cloud simulator on loopback. The schedule clock is the operator's manual clock (set
//! once to just after the slot), so no real minute is waited for. Prints how long until every
//! trigger's run exists and until every run was triggered in dbt Cloud, and the duplicates found
//! (runs per trigger, dbt Cloud triggers per run). See BENCHMARKS.md.
//!
//! `cargo bench --bench triggers` (`BENCH_TRIGGERS` changes the count).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbt_cloud_operator::controller::trigger_policy::{scheduled_run_name, Schedule};
use dbt_cloud_operator::controller::Clock;
use dbt_cloud_operator::crd::{DbtCloudJobRun, DbtCloudJobTrigger};
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome};
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use support::*;

const FIRST_JOB: i64 = 5000;

async fn trigger_runs(env: &Env) -> Vec<DbtCloudJobRun> {
    env.runs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.kind == "DbtCloudJobTrigger")
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n: usize = std::env::var("BENCH_TRIGGERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = Env::new().await;
    env.valid_credentials().await;
    for i in 0..n as i64 {
        env.sim.add_job(
            ACCOUNT,
            JobSpec {
                id: FIRST_JOB + i,
                project_id: 10,
                environment_id: 20,
                name: format!("bench-{i}"),
                steps: vec!["dbt build".into()],
                behavior: JobBehavior {
                    queued: Duration::from_millis(10),
                    starting: Duration::from_millis(10),
                    running: Duration::from_secs(3600),
                    outcome: Outcome::Success,
                    ..JobBehavior::default()
                },
            },
        );
    }
    let clock = Clock::manual(Timestamp::now());
    let mut config = test_config(&env.sim, &env.ns);
    config.clock = clock.clone();
    config.poll_tick = Duration::from_millis(200);
    let op = env.start_operator_with(config);

    // n triggers, every minute, created as fast as the API server takes them.
    let api: Api<DbtCloudJobTrigger> = Api::namespaced(env.client.clone(), &env.ns);
    let start = Instant::now();
    let mut latest_created = Timestamp::UNIX_EPOCH;
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let futs = chunk.iter().map(|i| {
            let api = api.clone();
            let t: DbtCloudJobTrigger = serde_json::from_value(json!({
                "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobTrigger",
                "metadata": {"name": format!("t{i}")},
                "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
                         "runTemplate": {"spec": {"credentialsRef": {"name": "creds"},
                                                  "job": {"id": FIRST_JOB + *i as i64},
                                                  "pollIntervalSeconds": 30}}}
            }))
            .unwrap();
            async move { api.create(&PostParams::default(), &t).await }
        });
        for t in futures::future::join_all(futs).await {
            let t = t.expect("create trigger");
            latest_created = latest_created.max(t.metadata.creation_timestamp.unwrap().0);
        }
    }
    let create_time = start.elapsed();
    // Every trigger reconciled once (status with its next slot).
    for _ in 0..6000 {
        let ready = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.next_schedule_time.is_some())
            })
            .count();
        if ready >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = start.elapsed();

    // The minute comes for all of them at once.
    let slot = Schedule::parse("* * * * *", None)
        .unwrap()
        .next_after(latest_created)
        .unwrap();
    let fired = Instant::now();
    clock.set(slot + SignedDuration::from_secs(1));
    let mut all_created = None;
    let mut all_triggered = None;
    for _ in 0..3000 {
        if all_created.is_none() && trigger_runs(&env).await.len() >= n {
            all_created = Some(fired.elapsed());
        }
        if all_created.is_some() && env.sim.triggers().len() >= n {
            all_triggered = Some(fired.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Keep going a while: nothing more may appear.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let runs = trigger_runs(&env).await;
    let mut per_trigger: HashMap<String, usize> = HashMap::new();
    for r in &runs {
        let owner = r.owner_references()[0].name.clone();
        *per_trigger.entry(owner).or_default() += 1;
    }
    let wrong_name = runs
        .iter()
        .filter(|r| {
            let owner = &r.owner_references()[0].name;
            r.name_any() != scheduled_run_name(owner, slot)
        })
        .count();
    let triggers = env.sim.triggers();
    let mut per_run: HashMap<String, usize> = HashMap::new();
    for t in &triggers {
        if let Some(uid) = t
            .cause
            .split("[dco:")
            .nth(1)
            .and_then(|s| s.split('#').next())
        {
            *per_run.entry(uid.to_string()).or_default() += 1;
        }
    }
    let fmt = |d: Option<Duration>| {
        d.map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "not within the wait".into())
    };
    println!(
        "triggers | {n} triggers created in {:.1}s, all reconciled {:.1}s after the first create | slot fired: all {n} DbtCloudJobRuns created {} after, all triggered in dbt Cloud {} after | runs {} for {} triggers (duplicates {}, misnamed {}); dbt Cloud triggers {} (runs triggered twice {})",
        create_time.as_secs_f64(),
        settled.as_secs_f64(),
        fmt(all_created),
        fmt(all_triggered),
        runs.len(),
        per_trigger.len(),
        per_trigger.values().filter(|c| **c > 1).count(),
        wrong_name,
        triggers.len(),
        per_run.values().filter(|c| **c > 1).count(),
    );
    op.shutdown().await;
}
