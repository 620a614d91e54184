//! Prometheus metrics (`prometheus-client`), served on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::RunPhase;
use crate::dbt_cloud::ApiObserver;

/// Labels naming a controller (`kind`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `DbtCloudJobRun`, `DbtCloudCredentials` or `ClusterDbtCloudCredentials`.
    pub kind: String,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Controller kind.
    pub kind: String,
    /// Error class.
    pub error: String,
}

/// Labels of a run phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Phase name.
    pub phase: String,
}

/// Labels of a dbt Cloud API response.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// Endpoint label (`trigger_run`, `list_runs`, ...).
    pub endpoint: String,
    /// HTTP status code, or `error` when no response arrived.
    pub code: String,
}

/// Labels of an endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Endpoint label.
    pub endpoint: String,
}

/// Labels naming a credentials object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialsLabels {
    /// Kind.
    pub kind: String,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciliations by kind.
    pub reconciliations: Family<KindLabels, Counter>,
    /// Reconcile errors by kind and error class.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration by kind.
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// Current number of DbtCloudJobRuns by phase.
    pub runs_by_phase: Family<PhaseLabels, Gauge>,
    /// Runs triggered in dbt Cloud (attempts started).
    pub runs_triggered: Counter,
    /// Runs found after an ambiguous trigger and adopted instead of triggered again.
    pub runs_adopted: Counter,
    /// Trigger-to-finish duration of finished runs, seconds.
    pub run_duration: Histogram,
    /// Time runs spent queued in dbt Cloud (created → started), seconds.
    pub run_queue_time: Histogram,
    /// dbt Cloud API responses by endpoint and status code.
    pub api_requests: Family<ApiLabels, Counter>,
    /// dbt Cloud API request latency by endpoint, seconds.
    pub api_request_duration: Family<EndpointLabels, Histogram>,
    /// Requests that waited for the per-account rate limiter.
    pub rate_limit_waits: Counter,
    /// 429 answers from dbt Cloud.
    pub api_throttled: Counter,
    /// 1 when the credentials are Ready, 0 otherwise.
    pub credentials_ready: Family<CredentialsLabels, Gauge>,
    /// 1 while this replica leads.
    pub leader: Gauge,
    phases: Mutex<HashMap<String, RunPhase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn run_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

impl Metrics {
    /// Creates and registers every metric (prefix `dbt_cloud_operator`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dbt_cloud_operator");
        let m = Self {
            reconciliations: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(seconds_histogram),
            runs_by_phase: Family::default(),
            runs_triggered: Counter::default(),
            runs_adopted: Counter::default(),
            run_duration: run_histogram(),
            run_queue_time: run_histogram(),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(seconds_histogram),
            rate_limit_waits: Counter::default(),
            api_throttled: Counter::default(),
            credentials_ready: Family::default(),
            leader: Gauge::default(),
            phases: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "reconciliations",
            "Reconciliations by kind",
            m.reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind and error class",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            m.reconcile_duration.clone(),
        );
        registry.register("runs", "DbtCloudJobRuns by phase", m.runs_by_phase.clone());
        registry.register(
            "runs_triggered",
            "dbt Cloud runs triggered (attempts started)",
            m.runs_triggered.clone(),
        );
        registry.register(
            "runs_adopted",
            "dbt Cloud runs adopted after an ambiguous trigger instead of triggering again",
            m.runs_adopted.clone(),
        );
        registry.register(
            "run_duration_seconds",
            "Trigger-to-finish duration of finished runs",
            m.run_duration.clone(),
        );
        registry.register(
            "run_queue_seconds",
            "Time runs waited in dbt Cloud's queue (created to started)",
            m.run_queue_time.clone(),
        );
        registry.register(
            "api_requests",
            "dbt Cloud API responses by endpoint and status code",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "dbt Cloud API request latency by endpoint",
            m.api_request_duration.clone(),
        );
        registry.register(
            "api_rate_limit_waits",
            "Requests delayed by the per-account rate limiter",
            m.rate_limit_waits.clone(),
        );
        registry.register(
            "api_throttled",
            "429 Too Many Requests answers from dbt Cloud",
            m.api_throttled.clone(),
        );
        registry.register(
            "credentials_ready",
            "1 when the credentials are Ready",
            m.credentials_ready.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        Self { registry, ..m }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Starts measuring one reconcile of `kind`: it is counted and its duration observed when
    /// the returned guard is dropped, however the reconcile ends (an early `?` included).
    pub fn measure_reconcile(&self, kind: &str) -> ReconcileMeasurer {
        ReconcileMeasurer {
            start: Instant::now(),
            labels: KindLabels { kind: kind.into() },
            reconciliations: self.reconciliations.clone(),
            duration: self.reconcile_duration.clone(),
        }
    }

    /// Counts a reconcile error.
    pub fn reconcile_failed(&self, kind: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                error: error.into(),
            })
            .inc();
    }

    /// Records the current phase of a run (by `namespace/name`), or forgets it (`None`).
    pub fn set_run_phase(&self, key: &str, phase: Option<RunPhase>) {
        let mut phases = crate::sync::lock(&self.phases);
        let old = match phase {
            Some(p) => phases.insert(key.to_string(), p),
            None => phases.remove(key),
        };
        if old == phase {
            return;
        }
        if let Some(old) = old {
            self.runs_by_phase
                .get_or_create(&PhaseLabels {
                    phase: old.as_str().into(),
                })
                .dec();
        }
        if let Some(new) = phase {
            self.runs_by_phase
                .get_or_create(&PhaseLabels {
                    phase: new.as_str().into(),
                })
                .inc();
        }
    }

    /// Forgets the phase of every run `keep` rejects (runs deleted while the watch was down).
    pub fn retain_run_phases(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let phases = crate::sync::lock(&self.phases);
            phases.keys().filter(|k| !keep(k)).cloned().collect()
        };
        for key in gone {
            self.set_run_phase(&key, None);
        }
    }

    /// Records whether a credentials object is ready.
    pub fn set_credentials_ready(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        ready: Option<bool>,
    ) {
        let labels = CredentialsLabels {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        match ready {
            Some(r) => {
                self.credentials_ready
                    .get_or_create(&labels)
                    .set(i64::from(r));
            }
            None => {
                self.credentials_ready.remove(&labels);
            }
        }
    }
}

impl ApiObserver for Metrics {
    fn on_response(&self, endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
        let code = status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "error".into());
        self.api_requests
            .get_or_create(&ApiLabels {
                endpoint: endpoint.into(),
                code,
            })
            .inc();
        self.api_request_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn on_rate_limit_wait(&self, _waited: Duration) {
        self.rate_limit_waits.inc();
    }

    fn on_throttled(&self) {
        self.api_throttled.inc();
    }
}

/// Measures one reconcile from [`Metrics::measure_reconcile`] to its drop (as kube-rs's
/// `controller-rs` example does): `reconciliations_total` and `reconcile_duration_seconds` are
/// recorded together in `Drop`, so no return path of a reconciler can skip them.
#[must_use = "the reconcile is measured until this guard is dropped"]
pub struct ReconcileMeasurer {
    start: Instant,
    labels: KindLabels,
    reconciliations: Family<KindLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
}

impl Drop for ReconcileMeasurer {
    fn drop(&mut self) {
        self.reconciliations.get_or_create(&self.labels).inc();
        self.duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_between_buckets() {
        let m = Metrics::new();
        m.set_run_phase("a/x", Some(RunPhase::Running));
        m.set_run_phase("a/y", Some(RunPhase::Running));
        m.set_run_phase("a/x", Some(RunPhase::Succeeded));
        m.set_run_phase("a/y", None);
        let text = m.encode();
        assert!(
            text.contains("dbt_cloud_operator_runs{phase=\"Running\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("dbt_cloud_operator_runs{phase=\"Succeeded\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn api_observer_counts_by_endpoint_and_code() {
        let m = Metrics::new();
        m.on_response("trigger_run", Some(200), Duration::from_millis(5));
        m.on_response("trigger_run", None, Duration::from_millis(5));
        m.on_throttled();
        let text = m.encode();
        assert!(
            text.contains(
                "dbt_cloud_operator_api_requests_total{endpoint=\"trigger_run\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("code=\"error\"} 1"), "{text}");
        assert!(
            text.contains("dbt_cloud_operator_api_throttled_total 1"),
            "{text}"
        );
    }

    /// A panic while the lock was held (a bug) does not take every later reconcile down with it.
    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = Metrics::new();
        crate::sync::poison(|| m.phases.lock());
        assert!(m.phases.is_poisoned());
        m.set_run_phase("a/x", Some(RunPhase::Running));
        m.retain_run_phases(|_| true);
        assert!(
            m.encode()
                .contains("dbt_cloud_operator_runs{phase=\"Running\"} 1"),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn a_reconcile_is_measured_on_every_return_path() {
        fn reconcile(m: &Metrics, fail: bool) -> Result<(), &'static str> {
            let _measure = m.measure_reconcile("DbtCloudJobRun");
            if fail {
                Err("failed half-way")?;
            }
            Ok(())
        }
        let m = Metrics::new();
        assert!(reconcile(&m, true).is_err());
        assert!(reconcile(&m, false).is_ok());
        let text = m.encode();
        for series in [
            "dbt_cloud_operator_reconciliations_total{kind=\"DbtCloudJobRun\"} 2",
            "dbt_cloud_operator_reconcile_duration_seconds_count{kind=\"DbtCloudJobRun\"} 2",
        ] {
            assert!(text.contains(series), "{series}:\n{text}");
        }
    }
}
