//! Benchmarks against a real kube-apiserver (envtest convention: `KUBEBUILDER_ASSETS`, else
//! `/usr/local/kubebuilder/bin`, else the project's own build), with the operator binary as its own
//! process and the dbt Cloud simulator on loopback. Prints figures.
//!
//! `cargo bench --bench real_apiserver`

#[path = "../tests/e2e/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbt_cloud_operator::crd::{DbtCloudJobRun, RunPhase};
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome};
use harness::*;
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;

const KEY: &str = "dbtc_benchRealApiKey0123456789";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn count(api: &Api<DbtCloudJobRun>, pred: impl Fn(&DbtCloudJobRun) -> bool) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|l| l.items.iter().filter(|r| pred(r)).count())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let env = TestEnv::new("bench").await;
    let n: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    env.sim.add_account(1, "Acme");
    env.sim.add_token(KEY, &[1]);
    env.sim.add_project(1, 10, "analytics");
    env.sim.add_environment(1, 10, 20, "production");
    for i in 0..n as i64 {
        env.sim.add_job(
            1,
            JobSpec {
                id: 1000 + i,
                project_id: 10,
                environment_id: 20,
                name: format!("bench-{i}"),
                steps: vec!["dbt build".into()],
                behavior: JobBehavior {
                    queued: Duration::from_millis(10),
                    starting: Duration::from_millis(10),
                    running: Duration::from_secs(20),
                    outcome: Outcome::Success,
                    ..JobBehavior::default()
                },
            },
        );
    }
    env.apply(&TestEnv::credentials_yaml("creds", "dbt-api-key", 1, KEY))
        .expect_ok("credentials");
    let mut opts = env.operator_opts();
    opts.rust_log = Some("warn".into());
    let operator = env.operator("operator.log", opts);
    let ready = env.wait_for("dbtcloudcredentials/creds", "Ready", 60);
    if !ready.ok {
        panic!(
            "credentials not Ready: {}\noperator log:\n{}",
            ready.all(),
            operator.logs()
        );
    }
    let pid = operator.pid().expect("operator runs");
    let api: Api<DbtCloudJobRun> = Api::namespaced(env.client.clone(), &env.ns);

    // Trigger throughput: n runs created as fast as the API server takes them.
    let mut created = HashMap::new();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let futs = chunk.iter().map(|i| {
            let api = api.clone();
            let run: DbtCloudJobRun = serde_json::from_value(json!({
                "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
                "metadata": {"name": format!("b{i}")},
                "spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 1000 + *i as i64}, "pollIntervalSeconds": 10}
            }))
            .unwrap();
            async move { api.create(&PostParams::default(), &run).await.map(|r| (r.metadata.uid.unwrap_or_default(), Instant::now())) }
        });
        for r in futures::future::join_all(futs).await {
            let (uid, at) = r.expect("create");
            created.insert(uid, at);
        }
    }
    let create_time = start.elapsed();
    let mut triggered_all = None;
    for _ in 0..3000 {
        if count(&api, |r| {
            r.status.as_ref().is_some_and(|s| s.run_id.is_some())
        })
        .await
            >= n
        {
            triggered_all = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat: Vec<f64> = env
        .sim
        .triggers()
        .iter()
        .filter_map(|t| {
            let uid = t.cause.split("[dco:").nth(1)?.split('#').next()?;
            Some(t.at.duration_since(*created.get(uid)?).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let all = triggered_all
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_else(|| "not within 300s".into());
    println!(
        "real kube-apiserver | trigger throughput | {n} runs created in {:.1}s; all triggered {all} after the first create | create→trigger p50 {:.0} ms, p99 {:.0} ms | {} triggers (duplicates {})",
        create_time.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        env.sim.triggers().len(),
        env.sim.triggers().len().saturating_sub(n)
    );
    let in_flight_rss = rss_mib(pid);
    // Completion: all runs finish in dbt Cloud; the operator writes the final phase.
    let t = Instant::now();
    let mut finished = 0;
    for _ in 0..3000 {
        finished = count(&api, |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == RunPhase::Succeeded)
        })
        .await;
        if finished >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "real kube-apiserver | completion + memory | {finished}/{n} Succeeded {:.1}s after all were triggered (runs last 20 s in dbt Cloud) | operator RSS {in_flight_rss:.1} MiB with {n} in flight, {:.1} MiB with {n} finished",
        t.elapsed().as_secs_f64(),
        rss_mib(pid)
    );
    drop(operator);
}
