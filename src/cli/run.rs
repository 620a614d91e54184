//! `dbt-cloud-operator run`: its flags and environment variables, and the [`Settings`] they
//! describe; the process itself (controllers, leader election, probes, shutdown) is
//! [`crate::operator`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tracing::{error, warn};

use crate::controller::{lifecycle, Config};
use crate::dbt_cloud::{allowed_suffixes_with, ClientConfig, LimitSpec, RateLimitConfig};
use crate::leader::LeaderConfig;
use crate::operator::{self, Settings};
use crate::telemetry::{self, LogFormat};

/// Flags of `run`. Every flag can also be set by the environment variable shown in `--help`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespace the operator runs in (Secrets of ClusterDbtCloudCredentials live here).
    /// Defaults to the pod's namespace, else `dbt-cloud-operator`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Log format: json in-cluster, text on a terminal (auto), or forced.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// Address of the metrics and health endpoints (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader with a Lease so only one replica acts (use with several replicas).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "dbt-cloud-operator-leader")]
    pub lease_name: String,
    /// Namespace of the leader Lease (defaults to --namespace).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Lease duration in seconds: how long a dead leader blocks a standby.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Lease grace period in seconds: the leader renews the Lease this long before it expires.
    /// At least 1 and less than --lease-duration-seconds.
    #[arg(long, env = "LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How often credentials re-read their Secret: a rotated key is in use within this time.
    #[arg(long, env = "SECRET_REFRESH_SECONDS", default_value_t = 60)]
    pub secret_refresh_seconds: u64,
    /// How often valid credentials are re-checked against dbt Cloud.
    #[arg(long, env = "REVALIDATE_SECONDS", default_value_t = 3600)]
    pub revalidate_seconds: u64,
    /// How long after a trigger whose answer was lost a run may still appear in dbt Cloud; only
    /// then is the trigger sent again. Must exceed twice --request-timeout-seconds (a trigger is
    /// sent within one request timeout of being recorded, and answered within another).
    #[arg(long, env = "TRIGGER_CONFIRM_WINDOW_SECONDS", default_value_t = 90)]
    pub trigger_confirm_window_seconds: u64,
    /// Longest wait for the dbt Cloud cancel when a run is deleted.
    #[arg(long, env = "DELETION_TIMEOUT_SECONDS", default_value_t = 300)]
    pub deletion_timeout_seconds: u64,
    /// Timeout of one dbt Cloud request.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,
    /// Largest dbt Cloud API response read, in bytes (a larger one is an error, never buffered).
    #[arg(long, env = "MAX_RESPONSE_BYTES", default_value_t = crate::dbt_cloud::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_response_bytes: u64,
    /// Largest dbt Cloud artifact (`run_results.json`) read, in bytes.
    #[arg(long, env = "MAX_ARTIFACT_BYTES", default_value_t = crate::dbt_cloud::DEFAULT_MAX_ARTIFACT_BYTES)]
    pub max_artifact_bytes: u64,
    /// Requests per minute allowed per dbt Cloud account (Administrative API; dbt Cloud allows 5,000).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 5000)]
    pub rate_limit_per_minute: u32,
    /// Extra host suffixes the API key may be sent to (single-tenant hosts), besides getdbt.com
    /// and dbt.com. Repeat or comma-separate.
    #[arg(long, env = "ALLOWED_HOST_SUFFIXES", value_delimiter = ',')]
    pub allowed_host_suffix: Vec<String>,
    /// How long running reconciles may take to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Most reconciles running at once per kind (bounds memory and API bursts at start-up).
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    pub max_concurrent_reconciles: u16,
    /// Granularity of the shared run poller, in milliseconds.
    #[arg(long, env = "POLL_TICK_MILLIS", default_value_t = 1000, hide = true)]
    pub poll_tick_millis: u64,
    /// DEVELOPMENT ONLY: send every dbt Cloud request to this base URL (e.g. the simulator at
    /// http://127.0.0.1:8089), plain http allowed. Never use it with real API keys.
    #[arg(long, env = "DEV_DBT_CLOUD_BASE_URL")]
    pub dev_dbt_cloud_base_url: Option<url::Url>,
}

impl RunArgs {
    /// The operator configuration these flags describe.
    pub fn config(&self) -> Config {
        let allowed = allowed_suffixes_with(&self.allowed_host_suffix);
        let client = ClientConfig {
            request_timeout: Duration::from_secs(self.request_timeout_seconds),
            max_response_bytes: self.max_response_bytes,
            max_artifact_bytes: self.max_artifact_bytes,
            allowed_host_suffixes: allowed,
            insecure_base_url_override: self.dev_dbt_cloud_base_url.clone(),
            ..ClientConfig::default()
        };
        Config {
            operator_namespace: self.operator_namespace(),
            watch_namespaces: self
                .watch_namespaces
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            lifecycle: lifecycle::Settings {
                ambiguity_window: Duration::from_secs(self.trigger_confirm_window_seconds),
                ..lifecycle::Settings::default()
            },
            secret_refresh: Duration::from_secs(self.secret_refresh_seconds),
            revalidate_every: Duration::from_secs(self.revalidate_seconds),
            deletion_timeout: Duration::from_secs(self.deletion_timeout_seconds),
            poll_tick: Duration::from_millis(self.poll_tick_millis.max(10)),
            client,
            rate_limits: RateLimitConfig {
                admin: LimitSpec::per_minute(self.rate_limit_per_minute.max(1)),
            },
            max_concurrent_reconciles: self.max_concurrent_reconciles.max(1),
            reporter: "dbt-cloud-operator".into(),
            instance: self.pod_name.clone(),
            clock: crate::controller::Clock::system(),
        }
    }

    /// The operator process settings: [`RunArgs::config`], the HTTP address, the leader Lease
    /// (when `--leader-elect`) and the shutdown grace period.
    pub fn settings(&self) -> Settings {
        let controllers = self.config();
        let leader_election = self.leader_elect.then(|| LeaderConfig {
            lease_name: self.lease_name.clone(),
            namespace: self
                .lease_namespace
                .clone()
                .unwrap_or_else(|| controllers.operator_namespace.clone()),
            identity: self
                .pod_name
                .clone()
                .unwrap_or_else(|| format!("dbt-cloud-operator-{}", std::process::id())),
            duration: self.lease_duration_seconds,
            grace: self.lease_grace_seconds,
        });
        Settings {
            controllers,
            http_addr: self.http_addr,
            leader_election,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
        }
    }

    fn operator_namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "dbt-cloud-operator".into())
    }
}

/// Runs the operator until SIGTERM (exit 0) or a fatal error / lost lease (exit 1).
pub async fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format);
    if args.dev_dbt_cloud_base_url.is_some() {
        warn!("DEVELOPMENT MODE: every dbt Cloud request goes to --dev-dbt-cloud-base-url");
    }
    match operator::run(args.settings()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
