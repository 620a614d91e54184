//! Controllers: the shared [`Context`], the credentials and job-run reconcilers, the shared run
//! poller, and the pure run lifecycle.

pub mod credentials;
pub mod job_run;
pub mod lifecycle;
pub mod poller;
pub mod registry;
pub mod search;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::Controller;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{info, warn};

use crate::crd::{ClusterDbtCloudCredentials, DbtCloudCredentials, DbtCloudJobRun};
use crate::dbt_cloud::{http_client, ClientConfig, RateLimitConfig, RateLimiterRegistry};
use crate::metrics::Metrics;
use crate::Result;

pub use registry::{CredentialsEntry, CredentialsKey, CredentialsRegistry};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "dbt-cloud-operator";
/// Finalizer placed on `DbtCloudJobRun`s so in-flight runs can be cancelled on delete.
pub const RUN_FINALIZER: &str = "dbtcloud.io/cancel-run";

/// Operator configuration (from flags and environment, see the CLI).
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace the operator runs in (Secrets of cluster-scoped credentials live here).
    pub operator_namespace: String,
    /// Namespaces to watch; empty means all.
    pub watch_namespaces: Vec<String>,
    /// Run lifecycle tunables.
    pub lifecycle: lifecycle::Settings,
    /// How often credentials re-read their Secret (bounds how long a key rotation takes).
    pub secret_refresh: Duration,
    /// How often valid credentials are re-checked against dbt Cloud.
    pub revalidate_every: Duration,
    /// Longest time a deletion waits for the dbt Cloud cancel before letting go.
    pub deletion_timeout: Duration,
    /// Granularity of the shared poller.
    pub poll_tick: Duration,
    /// dbt Cloud client settings.
    pub client: ClientConfig,
    /// Per-account rate limits.
    pub rate_limits: RateLimitConfig,
    /// Most reconciles running at once per controller (bounds memory and API bursts at start-up).
    pub max_concurrent_reconciles: u16,
    /// Name of the reporting controller in Events.
    pub reporter: String,
    /// Pod name, reported as the Event instance.
    pub instance: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            operator_namespace: "dbt-cloud-operator".into(),
            watch_namespaces: Vec::new(),
            lifecycle: lifecycle::Settings::default(),
            secret_refresh: Duration::from_secs(60),
            revalidate_every: Duration::from_secs(3600),
            deletion_timeout: Duration::from_secs(300),
            poll_tick: Duration::from_secs(1),
            client: ClientConfig::default(),
            rate_limits: RateLimitConfig::default(),
            max_concurrent_reconciles: 16,
            reporter: "dbt-cloud-operator".into(),
            instance: None,
        }
    }
}

/// State shared by every reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: Config,
    /// One HTTP connection pool for every dbt Cloud call.
    pub http: reqwest::Client,
    /// dbt Cloud client settings shared by every client.
    pub client_config: Arc<ClientConfig>,
    /// Per-account rate limiters.
    pub limiters: RateLimiterRegistry,
    /// Validated credentials and their clients.
    pub credentials: CredentialsRegistry,
    /// Shared per-account poller of in-flight runs.
    pub poller: poller::RunPoller,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Builds the context; `poll_events` receives the objects whose runs changed in dbt Cloud.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<(
        Arc<Self>,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<DbtCloudJobRun>>,
    )> {
        let http = http_client(&config.client)?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: config.reporter.clone(),
                instance: config.instance.clone(),
            },
        );
        let (poller, changes) = poller::RunPoller::new(config.poll_tick);
        let ctx = Self {
            client,
            recorder,
            limiters: RateLimiterRegistry::new(config.rate_limits),
            metrics,
            http,
            client_config: Arc::new(config.client.clone()),
            credentials: CredentialsRegistry::default(),
            poller,
            config,
        };
        Ok((Arc::new(ctx), changes))
    }

    /// Whether objects in `namespace` are this operator's to reconcile (`--watch-namespaces`).
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        self.config.watch_namespaces.is_empty()
            || self.config.watch_namespaces.iter().any(|n| n == namespace)
    }

    /// Publishes an Event about `obj`; failures are logged, never fatal.
    pub async fn publish<K>(&self, obj: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = KubeEvent {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(crate::crd::conditions::truncate_str(&note, 1000)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "failed to publish event");
        }
    }
}

/// Adds up to 10% jitter to a requeue delay, so many objects do not requeue in lockstep.
pub fn jittered(delay: Duration) -> Duration {
    let extra = delay.as_millis() as u64 / 10;
    if extra == 0 {
        return delay;
    }
    delay + Duration::from_millis(rand::rng().random_range(0..=extra))
}

/// Exponential backoff with jitter for failed reconciles: 1s, 2s, 4s … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(8);
    jittered(Duration::from_secs(secs.min(300)))
}

/// Runs every controller until `shutdown` resolves, then lets running reconciles finish.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ready: Option<tokio::sync::watch::Sender<bool>>,
) -> Result<()> {
    let (ctx, changes) = Context::new(client.clone(), config.clone(), metrics)?;
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let wc = watcher::Config::default().any_semantic();

    let runs_api: Api<DbtCloudJobRun> = scoped_api(&client, &config.watch_namespaces);
    let creds_api: Api<DbtCloudCredentials> = scoped_api(&client, &config.watch_namespaces);
    let cluster_creds_api: Api<ClusterDbtCloudCredentials> = Api::all(client.clone());

    // The run cache holds every DbtCloudJobRun (finished ones too): keep it lean by dropping
    // managedFields and kubectl's last-applied copy of the object before it is stored.
    let (runs_store, runs_writer) = kube::runtime::reflector::store();
    let run_events = kube::runtime::reflector(
        runs_writer,
        watcher::watcher(runs_api, wc.clone())
            .default_backoff()
            .modify(|run: &mut DbtCloudJobRun| {
                run.metadata.managed_fields = None;
                if let Some(a) = run.metadata.annotations.as_mut() {
                    a.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            }),
    )
    .touched_objects();
    let controller_config =
        kube::runtime::controller::Config::default().concurrency(config.max_concurrent_reconciles);
    let runs = Controller::for_stream(run_events, runs_store.clone())
        .with_config(controller_config.clone());
    let store_for_creds = runs_store.clone();
    let store_for_cluster = runs_store.clone();
    let runs = runs
        .watches(
            creds_api.clone(),
            wc.clone(),
            move |creds: DbtCloudCredentials| {
                job_run::runs_using(
                    &store_for_creds,
                    crate::crd::job_run::CredentialsKind::DbtCloudCredentials,
                    creds.namespace(),
                    &creds.name_any(),
                )
            },
        )
        .watches(
            cluster_creds_api.clone(),
            wc.clone(),
            move |creds: ClusterDbtCloudCredentials| {
                job_run::runs_using(
                    &store_for_cluster,
                    crate::crd::job_run::CredentialsKind::ClusterDbtCloudCredentials,
                    None,
                    &creds.name_any(),
                )
            },
        )
        .reconcile_on(changes)
        .graceful_shutdown_on(shutdown.clone())
        .run(job_run::reconcile, job_run::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "job run reconcile failed");
            }
        });
    let creds = Controller::new(creds_api, wc.clone())
        .with_config(controller_config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            credentials::reconcile_namespaced,
            credentials::error_policy_namespaced,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let cluster_creds = Controller::new(cluster_creds_api, wc)
        .with_config(controller_config)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            credentials::reconcile_cluster,
            credentials::error_policy_cluster,
            ctx.clone(),
        )
        .for_each(|_| async {});

    if let Some(ready) = ready {
        let store = runs_store.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = ready.send(true);
            }
        });
    }
    info!(namespaces = ?config.watch_namespaces, "controllers started");
    futures::join!(runs, creds, cluster_creds);
    ctx.poller.stop();
    info!("controllers stopped");
    Ok(())
}

fn scoped_api<K>(client: &Client, namespaces: &[String]) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespaces {
        [one] => Api::namespaced(client.clone(), one),
        _ => Api::all(client.clone()),
    }
}
