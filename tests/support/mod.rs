//! Test harness of the in-process tier: the operator's real controllers running in the test's
//! process against the real kube-apiserver (shared by the test binary, see `tests/e2e/harness.rs`;
//! each test gets a namespace of its own and a client wrapped in [`KubeFaults`]) and the dbt Cloud
//! simulator.
#![allow(dead_code)]

#[path = "../e2e/harness.rs"]
pub mod harness;
pub mod kube_faults;

pub use kube_faults::{KubeFaults, RecordedRequest};

use std::sync::Arc;
use std::time::Duration;

use dbt_cloud_operator::controller::{self, lifecycle, Config};
use dbt_cloud_operator::crd::{DbtCloudCredentials, DbtCloudJobRun, RunPhase};
use dbt_cloud_operator::dbt_cloud::ClientConfig;
use dbt_cloud_operator::metrics::Metrics;
use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome, Simulator};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// dbt Cloud account of the default seed.
pub const ACCOUNT: i64 = 1;
/// A valid token for [`ACCOUNT`].
pub const TOKEN: &str = "dbtc_test_token_5f1d2c";
/// Job ids of the default seed.
pub const JOB_OK: i64 = 100;
pub const JOB_FAILS: i64 = 101;
pub const JOB_SLOW: i64 = 102;
pub const JOB_FLAKY: i64 = 103;

/// A running operator instance (its controllers in a task), stoppable like a SIGTERM or a crash.
pub struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    pub metrics: Arc<Metrics>,
}

impl Operator {
    /// Graceful stop (SIGTERM): running reconciles finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Crash (SIGKILL): the task is aborted wherever it is.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The world of one test: a namespace of its own on the shared real API server, a client that
/// records (and can fail) its requests, and a simulator.
pub struct Env {
    /// The shared control plane of this test binary.
    pub cluster: &'static harness::Cluster,
    /// This test's namespace (the operator instances it starts watch only this one).
    pub ns: String,
    /// Admin client through [`KubeFaults`]; operators started by the test use it too.
    pub client: kube::Client,
    /// Requests sent through `client`, and injected failures.
    pub faults: KubeFaults,
    /// The dbt Cloud simulator.
    pub sim: Simulator,
}

/// Operator configuration for tests: fast ticks, short windows, the simulator as dbt Cloud.
pub fn test_config(sim: &Simulator, ns: &str) -> Config {
    let mut config = Config {
        operator_namespace: ns.into(),
        watch_namespaces: vec![ns.into()],
        poll_tick: Duration::from_millis(20),
        secret_refresh: Duration::from_millis(300),
        deletion_timeout: Duration::from_secs(5),
        client: ClientConfig {
            request_timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            max_retry_after: Duration::from_millis(100),
            insecure_base_url_override: Some(sim.base_url().parse().unwrap()),
            ..ClientConfig::default()
        },
        ..Config::default()
    };
    config.lifecycle = lifecycle::Settings {
        ambiguity_window: Duration::from_secs(6),
        credentials_retry: Duration::from_millis(200),
        confirm_retry: Duration::from_millis(100),
    };
    config
}

fn behavior(outcome: Outcome, running_ms: u64) -> JobBehavior {
    JobBehavior {
        queued: Duration::from_millis(20),
        starting: Duration::from_millis(20),
        running: Duration::from_millis(running_ms),
        outcome,
        ..JobBehavior::default()
    }
}

impl Env {
    /// Simulator seeded with one account, one project/environment and a few jobs; empty cluster.
    pub async fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `TEST_LOG=dbt_cloud_operator=debug` shows the operators' logs (captured per test).
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let sim = Simulator::start().await.expect("simulator starts");
        sim.add_account(ACCOUNT, "Acme");
        sim.add_token(TOKEN, &[ACCOUNT]);
        sim.add_project(ACCOUNT, 10, "analytics");
        sim.add_environment(ACCOUNT, 10, 20, "production");
        let job = |id: i64, name: &str, b: JobBehavior| JobSpec {
            id,
            project_id: 10,
            environment_id: 20,
            name: name.into(),
            steps: vec!["dbt seed".into(), "dbt build".into()],
            behavior: b,
        };
        sim.add_job(
            ACCOUNT,
            job(JOB_OK, "nightly", behavior(Outcome::Success, 100)),
        );
        sim.add_job(
            ACCOUNT,
            job(JOB_FAILS, "broken", behavior(Outcome::FailAtStep(2), 100)),
        );
        sim.add_job(
            ACCOUNT,
            job(JOB_SLOW, "slow", behavior(Outcome::Success, 600_000)),
        );
        let mut flaky = behavior(Outcome::FailAtStep(2), 100);
        flaky.retry_outcome = Outcome::Success;
        sim.add_job(ACCOUNT, job(JOB_FLAKY, "flaky", flaky));
        let cluster = harness::cluster();
        let ns = format!("t-{}", harness::random_token()[..8].to_lowercase());
        let faults = KubeFaults::default();
        let client = harness::client_with_layer(&cluster.kubeconfig, &ns, &faults).await;
        create_namespace(&client, &ns).await;
        faults.clear_requests();
        Self {
            cluster,
            ns,
            client,
            faults,
            sim,
        }
    }

    /// Requests sent through [`Env::client`] so far (the operators' included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.faults.requests()
    }

    /// Starts an operator instance with `config`.
    pub fn start_operator_with(&self, config: Config) -> Operator {
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let client = self.client.clone();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            controller::run(client, config, m, shutdown, None)
                .await
                .expect("controllers run");
        });
        Operator {
            stop: Some(stop),
            task: Some(task),
            metrics,
        }
    }

    /// Starts an operator instance with the test configuration.
    pub fn start_operator(&self) -> Operator {
        self.start_operator_with(test_config(&self.sim, &self.ns))
    }

    /// Creates the API-key Secret.
    pub async fn create_secret(&self, name: &str, token: &str) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.ns.clone()),
                ..Default::default()
            },
            data: Some(key_data(token)),
            ..Default::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// Replaces the API key in a Secret (rotation).
    pub async fn rotate_secret(&self, name: &str, token: &str) {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.ns);
        let patch = Secret {
            data: Some(key_data(token)),
            ..Default::default()
        };
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }

    /// Creates `DbtCloudCredentials` named `creds` pointing at Secret `secret`.
    pub async fn create_credentials(&self, secret: &str) {
        let creds: DbtCloudCredentials = serde_json::from_value(json!({
            "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudCredentials",
            "metadata": {"name": "creds", "namespace": self.ns},
            "spec": {"accountId": ACCOUNT, "host": "cloud.getdbt.com", "apiKeySecretRef": {"name": secret}}
        }))
        .unwrap();
        Api::<DbtCloudCredentials>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &creds)
            .await
            .unwrap();
    }

    /// Secret + credentials with the valid token.
    pub async fn valid_credentials(&self) {
        self.create_secret("dbt-api-key", TOKEN).await;
        self.create_credentials("dbt-api-key").await;
    }

    /// Creates a `DbtCloudJobRun` from a spec (JSON).
    pub async fn create_run(&self, name: &str, spec: serde_json::Value) -> DbtCloudJobRun {
        let run: DbtCloudJobRun = serde_json::from_value(json!({
            "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec
        }))
        .unwrap();
        self.runs()
            .create(&PostParams::default(), &run)
            .await
            .unwrap()
    }

    /// API handle for runs.
    pub fn runs(&self) -> Api<DbtCloudJobRun> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Current object (None when gone).
    pub async fn run(&self, name: &str) -> Option<DbtCloudJobRun> {
        self.runs().get_opt(name).await.unwrap()
    }

    /// Waits (bounded: 30 s in 20 ms steps) until the run satisfies `pred`; panics with the last
    /// status otherwise.
    pub async fn wait_run(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&DbtCloudJobRun) -> bool,
    ) -> DbtCloudJobRun {
        let mut last = None;
        for _ in 0..1500 {
            if let Some(r) = self.run(name).await {
                if pred(&r) {
                    return r;
                }
                last = Some(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "timed out waiting for {name}: {what}; last status: {:#?}",
            last.and_then(|r| r.status)
        );
    }

    /// Waits until the run reaches `phase`.
    pub async fn wait_phase(&self, name: &str, phase: RunPhase) -> DbtCloudJobRun {
        self.wait_run(name, phase.as_str(), |r| {
            r.status.as_ref().is_some_and(|s| s.phase == phase)
        })
        .await
    }

    /// Waits until the object is gone.
    pub async fn wait_gone(&self, name: &str) {
        for _ in 0..1500 {
            if self.run(name).await.is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} was never deleted");
    }

    /// Waits until `cond()` holds (bounded like [`Env::wait_run`]).
    pub async fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// Reasons of the Events recorded for a run (read from the API server).
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = events
            .list(&kube::api::ListParams::default())
            .await
            .expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Waits (bounded like [`Env::wait_run`]) until the run has Events with every reason in
    /// `want` (Events are written after the status they report); returns all its reasons.
    pub async fn wait_events(&self, name: &str, want: &[&str]) -> Vec<String> {
        let mut reasons = Vec::new();
        for _ in 0..1500 {
            reasons = self.event_reasons(name).await;
            if want.iter().all(|w| reasons.iter().any(|r| r == w)) {
                return reasons;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} never had Events {want:?}; it has {reasons:?}");
    }
}

/// Creates a namespace (the control plane has no controller-manager: it is never finalized, so
/// tests never delete theirs).
pub async fn create_namespace(client: &kube::Client, ns: &str) {
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
}

/// Secret data holding `token` under the default key.
pub fn key_data(token: &str) -> std::collections::BTreeMap<String, k8s_openapi::ByteString> {
    [(
        "apiKey".to_string(),
        k8s_openapi::ByteString(token.as_bytes().to_vec()),
    )]
    .into()
}

/// Condition status of a run (`"True"`/`"False"`), if present.
pub fn condition(run: &DbtCloudJobRun, type_: &str) -> Option<(String, String)> {
    run.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}
