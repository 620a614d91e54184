//! Benchmarks against the real kube-apiserver of the test harness (built by
//! `hack/control-plane/install`), with the operator binary as its own process and the dbt Cloud
//! simulator on loopback. Prints each figure next to its target and a baseline measured in the
//! same run. Writes are counted by the API server itself (`apiserver_request_total` on its
//! `/metrics`, before and after), not by the operator.
//!
//! `cargo bench --bench real_apiserver` (`BENCH_RUNS`, default 1000; `BENCH_FINISHED`, default
//! 10000; `BENCH_STEADY_SECS`, default 60; `BENCH_RATE_LIMIT`, the operator's dbt Cloud budget
//! per minute, default 5000; `BENCH_PERF=1` adds a `perf` profile of the burst).

#[path = "../tests/e2e/harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbt_cloud_operator::crd::{DbtCloudJobRun, RunPhase};
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome};
use futures::StreamExt;
use harness::*;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

const KEY: &str = "dbtc_benchRealApiKey0123456789";
const INTERVAL_SECS: u64 = 10;
const BURST_QUEUED: Duration = Duration::from_secs(30);
const BURST_RUNNING: Duration = Duration::from_secs(5);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
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

/// The value of label `key` in a Prometheus sample's `labels` (empty when absent).
fn label(labels: &str, key: &str) -> String {
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap_or_default()
}

/// Mutating requests the API server counted, by `verb resource[/subresource]`, for the
/// `dbtcloud.io` resources and Events.
fn apiserver_writes(env: &TestEnv) -> BTreeMap<String, f64> {
    let out = kubectl_with(&env.cluster.kubeconfig, &["get", "--raw", "/metrics"], None);
    let text = out.expect_ok("apiserver /metrics");
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| label(labels, k);
        let (verb, group, resource, sub) = (
            get("verb"),
            get("group"),
            get("resource"),
            get("subresource"),
        );
        if !matches!(verb.as_str(), "POST" | "PATCH" | "PUT" | "DELETE" | "APPLY") {
            continue;
        }
        if group != "dbtcloud.io" && resource != "events" {
            continue;
        }
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *m.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    m
}

/// Where the time goes, on the server side: `apiserver_request_duration_seconds` (sum and count
/// by `verb resource[/subresource]` for `dbtcloud.io` and Events) and
/// `etcd_request_duration_seconds` (by operation and type), as the API server reports them.
fn server_durations(env: &TestEnv) -> BTreeMap<String, (f64, f64)> {
    let out = kubectl_with(&env.cluster.kubeconfig, &["get", "--raw", "/metrics"], None);
    let text = out.expect_ok("apiserver /metrics");
    let mut m: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let (name, rest) = if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_")
        {
            ("api", r)
        } else if let Some(r) = line.strip_prefix("etcd_request_duration_seconds_") {
            ("etcd", r)
        } else {
            continue;
        };
        let (is_sum, rest) = if let Some(r) = rest.strip_prefix("sum{") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("count{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| label(labels, k);
        let key = if name == "api" {
            let (group, resource, sub) = (get("group"), get("resource"), get("subresource"));
            if group != "dbtcloud.io" && resource != "events" && resource != "leases" {
                continue;
            }
            let sub = if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            };
            format!("api {} {resource}{sub}", get("verb"))
        } else {
            format!("etcd {} {}", get("operation"), get("type"))
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        let e = m.entry(key).or_insert((0.0, 0.0));
        if is_sum {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    m
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the command).
    (ticks(11) + ticks(12)) / 100.0
}

fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| pid.to_string())
}

/// Prints where the time of a phase went: CPU seconds per process over `wall`, and the server's
/// mean latency per request kind (the busiest first).
fn print_profile(
    what: &str,
    wall: Duration,
    cpu: &[(String, f64)],
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let cpu_text: Vec<String> = cpu
        .iter()
        .map(|(name, secs)| {
            format!(
                "{name} {secs:.1}s ({:.0}%)",
                100.0 * secs / (wall.as_secs_f64() * cores)
            )
        })
        .collect();
    println!(
        "profile {what} | {:.1}s wall on {cores} cores | CPU: {} | idle {:.0}%",
        wall.as_secs_f64(),
        cpu_text.join(", "),
        (100.0 - 100.0 * cpu.iter().map(|(_, s)| s).sum::<f64>() / (wall.as_secs_f64() * cores))
            .max(0.0)
    );
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(k, (sum, count))| {
            let (s0, c0) = before.get(k).copied().unwrap_or((0.0, 0.0));
            (k.clone(), sum - s0, count - c0)
        })
        .filter(|(_, _, c)| *c > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    for (k, sum, count) in rows.iter().take(12) {
        println!(
            "profile {what} | {k}: {count:.0} requests, mean {:.1} ms, {sum:.1} s in total",
            1000.0 * sum / count
        );
    }
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Writes by the operator: everything but the benchmark's own creates of runs.
fn operator_writes(d: &BTreeMap<String, f64>) -> f64 {
    d.iter()
        .filter(|(k, _)| k.as_str() != "POST dbtcloudjobruns")
        .map(|(_, v)| v)
        .sum()
}

fn job(id: i64, queued: Duration, running: Duration) -> JobSpec {
    JobSpec {
        id,
        project_id: 10,
        environment_id: 20,
        name: format!("bench-{id}"),
        steps: vec!["dbt build".into()],
        behavior: JobBehavior {
            queued,
            starting: Duration::from_millis(10),
            running,
            outcome: Outcome::Success,
            ..JobBehavior::default()
        },
    }
}

fn run_object(name: &str, job: i64) -> DbtCloudJobRun {
    serde_json::from_value(json!({
        "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
        "metadata": {"name": name},
        "spec": {"credentialsRef": {"name": "creds"}, "job": {"id": job}, "pollIntervalSeconds": INTERVAL_SECS}
    }))
    .unwrap()
}

/// When each object was first seen Succeeded (a watch, so the time is the write's, not a poll's).
fn watch_succeeded(api: Api<DbtCloudJobRun>) -> Arc<Mutex<HashMap<String, Instant>>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let mut w = Box::pin(kube::runtime::watcher(api, Default::default()));
        while let Some(ev) = w.next().await {
            let Ok(
                kube::runtime::watcher::Event::Apply(r)
                | kube::runtime::watcher::Event::InitApply(r),
            ) = ev
            else {
                continue;
            };
            if r.status
                .as_ref()
                .is_some_and(|s| s.phase == RunPhase::Succeeded)
            {
                s.lock()
                    .unwrap()
                    .entry(r.metadata.name.clone().unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
        }
    });
    seen
}

/// Waits (at most `secs`) until `done` holds, checking in memory every 50 ms: the harness
/// watches and reads the simulator instead of listing thousands of objects from the API server
/// (a first version did, and its LISTs took a third of the server's time during the burst).
async fn wait_for(secs: u64, done: impl Fn() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if done() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Triggers dbt Cloud received for jobs in `jobs`.
fn triggers_of(sim: &dbt_cloud_simulator::Simulator, jobs: std::ops::Range<i64>) -> usize {
    sim.triggers()
        .iter()
        .filter(|t| jobs.contains(&t.job_id))
        .count()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env_usize("BENCH_RUNS", 1000);
    let finished_n = env_usize("BENCH_FINISHED", 10_000);
    let steady_secs = env_usize("BENCH_STEADY_SECS", 60);
    let env = TestEnv::new("bench").await;
    println!(
        "machine: {} cores; kube-apiserver + etcd (real, this repo's build), operator binary, simulator and this harness share them; {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        jiff::Timestamp::now()
    );
    env.sim.add_account(1, "Acme");
    env.sim.add_token(KEY, &[1]);
    env.sim.add_project(1, 10, "analytics");
    env.sim.add_environment(1, 10, 20, "production");
    for i in 0..n as i64 {
        // Queued 30 s, so the trigger figures are not mixed with phase writes; then 5 s running.
        env.sim
            .add_job(1, job(1000 + i, BURST_QUEUED, BURST_RUNNING));
    }
    env.sim.add_job(
        1,
        job(900, Duration::from_millis(10), Duration::from_millis(500)),
    );
    env.sim.add_job(
        1,
        job(901, Duration::from_millis(10), Duration::from_secs(3600)),
    );
    env.apply(&TestEnv::credentials_yaml("creds", "dbt-api-key", 1, KEY))
        .expect_ok("credentials");
    let api: Api<DbtCloudJobRun> = Api::namespaced(env.client.clone(), &env.ns);

    // Memory first, on a quiet server: finished runs with realistic statuses (created, then their
    // status written, before the operator starts), then 100 in flight.
    let finished_status = |i: usize| {
        json!({"status": {"observedGeneration": 1, "phase": "Succeeded", "jobId": 42, "accountId": 1, "runId": 1_000_000 + i, "runUrl": format!("https://cloud.getdbt.com/deploy/1/projects/10/runs/{}/", 1_000_000 + i),
            "attemptCount": 1, "attempts": [{"attempt": 1, "runId": 1_000_000 + i, "kind": "Full", "status": "Success", "createdAt": "2026-11-01T00:00:00Z", "startedAt": "2026-11-01T00:00:05Z", "finishedAt": "2026-11-01T00:05:12Z"}],
            "steps": [{"index": 1, "name": "Clone git repository", "status": "Success", "durationSeconds": 1}, {"index": 2, "name": "Create profile from connection Snowflake", "status": "Success", "durationSeconds": 0}, {"index": 3, "name": "Invoke dbt with `dbt deps`", "status": "Success", "durationSeconds": 4}, {"index": 4, "name": "Invoke dbt with `dbt build`", "status": "Success", "durationSeconds": 302}],
            "results": {"pass": 120, "error": 0, "fail": 0, "skip": 0, "warn": 2},
            "statusMessage": format!("dbt Cloud run {} succeeded", 1_000_000 + i),
            "startedAt": "2026-11-01T00:00:00Z", "finishedAt": "2026-11-01T00:05:12Z", "durationSeconds": 312,
            "conditions": [
                {"type": "CredentialsReady", "status": "True", "reason": "Ready", "message": "Credentials are valid", "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1},
                {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "dbt Cloud run succeeded", "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1},
                {"type": "Complete", "status": "True", "reason": "Succeeded", "message": "dbt Cloud run succeeded", "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1},
                {"type": "Reconciling", "status": "False", "reason": "Finished", "message": "dbt Cloud run succeeded", "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1},
                {"type": "Stalled", "status": "False", "reason": "Finished", "message": "dbt Cloud run succeeded", "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 1}]}})
    };
    // The status write itself, both ways, on a quiet server: server-side apply (what the operator
    // used before) and the JSON patch replacing the whole status (what it uses), each guarded by
    // the resourceVersion, one after the other on 200 objects, with the API server's CPU.
    let apiserver_pid = env
        .cluster
        .pids()
        .into_iter()
        .find(|p| process_name(*p) == "kube-apiserver");
    for method in ["server-side apply", "JSON patch"] {
        let writes = 200;
        let mut objects = Vec::new();
        for i in 0..writes {
            let name = format!("w{}-{i}", if method == "JSON patch" { "j" } else { "a" });
            let created = api
                .create(&PostParams::default(), &run_object(&name, 42))
                .await
                .expect("create");
            objects.push((name, created.metadata.resource_version.unwrap_or_default()));
        }
        let cpu0 = apiserver_pid.map(cpu_secs).unwrap_or(0.0);
        let mut ms = Vec::new();
        for (i, (name, rv)) in objects.iter().enumerate() {
            let mut status: dbt_cloud_operator::crd::DbtCloudJobRunStatus =
                serde_json::from_value(finished_status(i)["status"].clone()).unwrap();
            status.resolved_intent = Some(rv.clone());
            let t = Instant::now();
            if method == "JSON patch" {
                let patch = dbt_cloud_operator::controller::job_run::status_patch(rv, &status);
                api.patch_status(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await
                    .expect("JSON patch");
            } else {
                let body = json!({
                    "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
                    "metadata": {"resourceVersion": rv}, "status": status,
                });
                api.patch_status(
                    name,
                    &PatchParams::apply("dbt-cloud-operator").force(),
                    &Patch::Apply(&body),
                )
                .await
                .expect("apply");
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let cpu = apiserver_pid.map(cpu_secs).unwrap_or(0.0) - cpu0;
        let ms = sorted(ms);
        println!(
            "status write | {method}, {writes} writes one after the other | p50 {:.1} ms, p99 {:.1} ms | API server CPU {:.2} ms per write",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            1000.0 * cpu / writes as f64
        );
    }

    let t = Instant::now();
    for chunk in (0..finished_n).collect::<Vec<_>>().chunks(50) {
        let futs = chunk.iter().map(|&i| {
            let api = api.clone();
            let status = finished_status(i);
            async move {
                let name = format!("done-{i}");
                api.create(&PostParams::default(), &run_object(&name, 42))
                    .await
                    .expect("create");
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .expect("status");
            }
        });
        futures::future::join_all(futs).await;
    }
    let object_bytes = serde_json::to_vec(&api.get("done-0").await.unwrap())
        .unwrap()
        .len();
    println!(
        "setup | {finished_n} finished runs written in {:.0}s ({object_bytes} bytes each as JSON)",
        t.elapsed().as_secs_f64()
    );

    // The harness's own watch of Succeeded runs, started (and its first list done) before anything
    // is measured.
    let succeeded = watch_succeeded(api.clone());
    let mut opts = env.operator_opts();
    opts.rust_log = Some("warn".into());
    // BENCH_RATE_LIMIT: the operator's dbt Cloud budget per account and minute (default: dbt
    // Cloud's own 5,000), to show what bounds a figure when that budget is not the bound.
    let rate_limit = env_usize("BENCH_RATE_LIMIT", 5000);
    opts.extra_args.extend([
        "--rate-limit-per-minute".to_string(),
        rate_limit.to_string(),
    ]);
    println!("dbt Cloud budget | {rate_limit} requests per account and minute (dbt Cloud's documented limit is 5,000)");
    let operator = env.operator("operator.log", opts);
    let ready = env.wait_for("dbtcloudcredentials/creds", "Ready", 120);
    assert!(
        ready.ok,
        "credentials not Ready: {}\n{}",
        ready.all(),
        operator.logs()
    );
    let pid = operator.pid().expect("operator runs");
    for i in 0..100 {
        api.create(
            &PostParams::default(),
            &run_object(&format!("live-{i}"), 901),
        )
        .await
        .expect("create");
    }
    wait_for(300, || triggers_of(&env.sim, 901..902) >= 100).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_memory = rss_mib(pid);
    println!(
        "memory | {finished_n} finished (realistic statuses, {object_bytes} B each) + 100 in flight | operator RSS {rss_memory:.1} MiB | target ≤ 64 MiB | bound: the operator (its run cache holds every object, managedFields and last-applied stripped)"
    );

    // Burst: n runs created as fast as the API server accepts them.
    let before = apiserver_writes(&env);
    let mut procs: Vec<(String, u32)> = env
        .cluster
        .pids()
        .into_iter()
        .map(|p| (process_name(p), p))
        .collect();
    procs.push(("operator".into(), pid));
    procs.push(("harness+simulator".into(), std::process::id()));
    let cpu_before: Vec<f64> = procs.iter().map(|(_, p)| cpu_secs(*p)).collect();
    let durations_before = server_durations(&env);
    // BENCH_PERF=1: a CPU profile of the operator and the API server during the burst.
    let perf = std::env::var("BENCH_PERF")
        .is_ok_and(|v| v == "1")
        .then(|| {
            let pids: Vec<String> = procs
                .iter()
                .filter(|(n, _)| n != "harness+simulator")
                .map(|(_, p)| p.to_string())
                .collect();
            std::process::Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "199",
                    "-g",
                    "-o",
                    "/tmp/dbt-cloud-operator-bench.perf",
                    "-p",
                ])
                .arg(pids.join(","))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("perf runs")
        });
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut create_ms = Vec::new();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let futs = chunk.iter().map(|&i| {
            let api = api.clone();
            async move {
                let t0 = Instant::now();
                let r = api
                    .create(
                        &PostParams::default(),
                        &run_object(&format!("b{i}"), 1000 + i as i64),
                    )
                    .await
                    .expect("create");
                (r.metadata.uid.unwrap_or_default(), t0, t0.elapsed())
            }
        });
        for (uid, at, took) in futures::future::join_all(futs).await {
            created.insert(uid, at);
            create_ms.push(took.as_secs_f64() * 1000.0);
        }
    }
    let create_time = start.elapsed();
    let burst_jobs = 1000..1000 + n as i64;
    let all = wait_for(300, || triggers_of(&env.sim, burst_jobs.clone()) >= n)
        .await
        .and_then(|_| {
            // The last trigger's arrival in dbt Cloud, from the first create.
            env.sim
                .triggers()
                .iter()
                .filter(|t| burst_jobs.contains(&t.job_id))
                .map(|t| t.at.saturating_duration_since(start))
                .max()
        });
    let burst_wall = start.elapsed();
    let cpu: Vec<(String, f64)> = procs
        .iter()
        .zip(&cpu_before)
        .map(|((n, p), b)| (n.clone(), cpu_secs(*p) - b))
        .collect();
    let durations_after = server_durations(&env);
    if let Some(mut perf) = perf {
        // SIGINT makes perf write its data and exit.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        for (name, _) in procs.iter().filter(|(n, _)| n != "harness+simulator") {
            let comm = if name == "operator" {
                "dbt-cloud-opera"
            } else {
                name.as_str()
            };
            let out = std::process::Command::new("perf")
                .args([
                    "report",
                    "-i",
                    "/tmp/dbt-cloud-operator-bench.perf",
                    "--stdio",
                    "--no-children",
                    "--sort",
                    "dso,sym",
                    "--percent-limit",
                    "2",
                    "-g",
                    "none",
                    "--comms",
                    comm,
                ])
                .output()
                .expect("perf report");
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(12)
            {
                println!("perf {name} | {}", line.trim());
            }
        }
    }
    print_profile(
        "burst",
        burst_wall,
        &cpu,
        &durations_before,
        &durations_after,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_trigger = apiserver_writes(&env);
    let trig = env.sim.triggers();
    let lat = sorted(
        trig.iter()
            .filter_map(|t| {
                let uid = t.cause.split("[dco:").nth(1)?.split('#').next()?;
                Some(t.at.duration_since(*created.get(uid)?).as_secs_f64() * 1000.0)
            })
            .collect(),
    );
    let create_ms = sorted(create_ms);
    let d_trigger = delta(&before, &after_trigger);
    println!(
        "burst | {n} runs created in {:.1}s | all triggered {} after the first create (target ≤ 10 s) | create→trigger p50 {:.0} ms, p99 {:.0} ms | baseline: the API server's own create p50 {:.0} ms, p99 {:.0} ms | duplicates {} | bound: the API server (writes) and the shared 2 cores",
        create_time.as_secs_f64(),
        all.map(|d| format!("{:.1}s", d.as_secs_f64())).unwrap_or_else(|| "NOT within 300 s".into()),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&create_ms, 0.5),
        percentile(&create_ms, 0.99),
        trig.len().saturating_sub(n + 100),
    );
    println!(
        "writes per trigger | {:.2} (target ≤ 2, Events aside: {:.2} with Events) | counted by the API server: {:?}",
        (operator_writes(&d_trigger) - d_trigger.get("POST events").copied().unwrap_or(0.0)) / n as f64,
        operator_writes(&d_trigger) / n as f64,
        d_trigger
    );

    // Polling cost with n runs in flight, in the steady state (one interval after the burst, so
    // that runs triggered over several seconds share their polls): list calls per interval vs one
    // GET per run.
    tokio::time::sleep(Duration::from_secs(INTERVAL_SECS)).await;
    env.sim.clear_requests();
    tokio::time::sleep(Duration::from_secs(INTERVAL_SECS)).await;
    let reqs = env.sim.requests();
    let lists = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/runs/"))
        .count();
    let gets = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/runs/") && !r.path.ends_with("/runs/"))
        .count();
    println!(
        "polling | {} runs in flight, interval {INTERVAL_SECS}s | operator: {} requests per interval ({lists} list + {gets} get) | naive loop (Airflow/Prefect style): {} per interval | target ≤ 10 per 1,000",
        n + 100,
        lists + gets,
        n + 100
    );

    // Completion detection under the burst: dbt Cloud finishes each run 35 s after its trigger.
    wait_for(300, || {
        succeeded
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with('b'))
            .count()
            >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_done = apiserver_writes(&env);
    let seen = succeeded.lock().unwrap().clone();
    let done = sorted(
        trig.iter()
            .filter_map(|t| {
                let name = t
                    .cause
                    .split(": ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .split('/')
                    .nth(1)?;
                if !name.starts_with('b') {
                    return None;
                }
                let finished = t.at + BURST_QUEUED + Duration::from_millis(10) + BURST_RUNNING;
                Some(
                    seen.get(name)?
                        .saturating_duration_since(finished)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect(),
    );
    println!(
        "completion | {} runs finishing in dbt Cloud, interval {INTERVAL_SECS}s | finished → Succeeded written p50 {:.0} ms, p99 {:.0} ms | target ≤ interval + 1 s = {} ms | bound: the poll interval",
        done.len(),
        percentile(&done, 0.5),
        percentile(&done, 0.99),
        INTERVAL_SECS * 1000 + 1000
    );
    let d_run = delta(&before, &after_done);
    println!(
        "writes per successful run | {:.2} with Events (target ≤ 4) | counted by the API server: {:?}",
        operator_writes(&d_run) / n as f64,
        d_run
    );

    // Steady: 20 creates/s, short runs.
    let t0 = Instant::now();
    let mut steady: Vec<(String, Instant)> = Vec::new();
    let mut create_ms = Vec::new();
    let total = 20 * steady_secs;
    for i in 0..total {
        let due = t0 + Duration::from_millis(50 * i as u64);
        tokio::time::sleep_until(due.into()).await;
        let c = Instant::now();
        let r = api
            .create(&PostParams::default(), &run_object(&format!("s{i}"), 900))
            .await
            .expect("create");
        create_ms.push(c.elapsed().as_secs_f64() * 1000.0);
        steady.push((r.metadata.uid.unwrap_or_default(), c));
    }
    wait_for(120, || triggers_of(&env.sim, 900..901) >= total).await;
    let by_uid: HashMap<_, _> = steady.into_iter().collect();
    let lat = sorted(
        env.sim
            .triggers()
            .iter()
            .filter_map(|t| {
                let uid = t.cause.split("[dco:").nth(1)?.split('#').next()?;
                Some(t.at.duration_since(*by_uid.get(uid)?).as_secs_f64() * 1000.0)
            })
            .collect(),
    );
    let create_ms = sorted(create_ms);
    println!(
        "steady | 20 creates/s for {steady_secs}s ({} runs) | create→trigger p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 ≤ 250 ms) | baseline: the API server's create p50 {:.0} ms, p99 {:.0} ms | bound: the API server's write latency on 2 shared cores",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        percentile(&create_ms, 0.5),
        percentile(&create_ms, 0.99),
    );
    println!("operator RSS at the end: {:.1} MiB", rss_mib(pid));
    drop(operator);
}
