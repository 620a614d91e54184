//! Controllers: the shared [`Context`], the credentials, job-run and job-trigger reconcilers, the
//! shared run poller, and their pure cores: the run lifecycle, the credentials policy and the
//! trigger decision.

pub mod credentials;
pub mod credentials_policy;
pub mod intent;
pub mod job_run;
pub mod job_trigger;
pub mod lifecycle;
pub mod newest_run;
pub mod poller;
pub mod registry;
pub mod report_lane;
pub mod search;
pub mod trigger_policy;
pub mod written;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::Controller;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{info, warn};

use crate::crd::reasons::{EventAction, EventNote, Reason};
use crate::crd::{
    ClusterDbtCloudCredentials, DbtCloudCredentials, DbtCloudJobRun, DbtCloudJobTrigger,
};
use crate::dbt_cloud::{http_client, ClientConfig, RateLimitConfig, RateLimiterRegistry};
use crate::metrics::Metrics;
use crate::Result;

pub use registry::{
    CredentialsEntry, CredentialsKey, CredentialsRegistry, CredentialsStores, LiveCredentials,
    Lookup,
};

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
    /// The clock of schedules (`DbtCloudJobTrigger`): the system's, or a manual one in tests.
    pub clock: Clock,
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
            clock: Clock::system(),
        }
    }
}

/// The time schedules are computed against: the system clock, or a manual clock that tests set
/// and advance (every trigger is then reconciled again at once). Cheap to clone; clones share
/// the time.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<tokio::sync::watch::Sender<Timestamp>>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock(system)"),
            Some(t) => write!(f, "Clock(manual {})", *t.borrow()),
        }
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands at `start` until [`Clock::set`] or [`Clock::advance`] moves it.
    pub fn manual(start: Timestamp) -> Self {
        Self {
            manual: Some(Arc::new(tokio::sync::watch::Sender::new(start))),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match &self.manual {
            None => Timestamp::now(),
            Some(t) => *t.borrow(),
        }
    }

    /// Sets a manual clock (the system clock ignores it).
    pub fn set(&self, now: Timestamp) {
        if let Some(t) = &self.manual {
            t.send_replace(now);
        }
    }

    /// Moves a manual clock forward (the system clock ignores it).
    pub fn advance(&self, by: std::time::Duration) {
        if let Some(t) = &self.manual {
            t.send_modify(|now| {
                *now = now
                    .saturating_add(
                        jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::MAX),
                    )
                    .unwrap_or(*now)
            });
        }
    }

    /// Yields once per change of a manual clock; never for the system clock.
    pub fn changes(&self) -> futures::stream::BoxStream<'static, ()> {
        match &self.manual {
            None => futures::stream::pending().boxed(),
            Some(t) => futures::stream::unfold(t.subscribe(), |mut rx| async move {
                rx.changed().await.ok()?;
                Some(((), rx))
            })
            .boxed(),
        }
    }

    /// How long from now until `at` (zero when past), as a timer delay.
    pub fn until(&self, at: Timestamp) -> Duration {
        let d = at.duration_since(self.now());
        Duration::try_from(d).unwrap_or(Duration::ZERO)
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
    /// The credentials objects as the API server has them (reflector stores of the watches).
    pub stores: CredentialsStores,
    /// Shared poller of in-flight runs (one group per credentials object).
    pub poller: poller::RunPoller,
    /// Versions this replica wrote, to skip reconciles of a cache that lags behind them.
    pub written: written::WrittenVersions,
    /// Objects being reconciled now (the controller and the report lane take turns).
    pub busy: written::Busy,
    /// Newest run each account is known to have (the search bound of the next trigger).
    pub newest_runs: newest_run::NewestRuns,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Builds the context over the credentials `stores` (filled by the watches); the receiver gets
    /// the objects whose runs changed in dbt Cloud.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        stores: CredentialsStores,
    ) -> Result<(Arc<Self>, UnboundedReceiver<ObjectRef<DbtCloudJobRun>>)> {
        let http = http_client(&config.client)?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: config.reporter.clone(),
                instance: config.instance.clone(),
            },
        );
        let credentials = CredentialsRegistry::with_metrics(metrics.clone());
        // The poller asks for the current client of a group's credentials on every tick.
        let source: poller::ClientSource = {
            let (credentials, stores) = (credentials.clone(), stores.clone());
            Arc::new(move |key: &CredentialsKey| credentials.client(key, stores.live(key).as_ref()))
        };
        let (poller, changes) = poller::RunPoller::new(config.poll_tick, source);
        let ctx = Self {
            client,
            recorder,
            limiters: RateLimiterRegistry::new(config.rate_limits),
            metrics,
            http,
            client_config: Arc::new(config.client.clone()),
            credentials,
            stores,
            poller,
            written: written::WrittenVersions::default(),
            busy: written::Busy::default(),
            newest_runs: newest_run::NewestRuns::default(),
            config,
        };
        Ok((Arc::new(ctx), changes))
    }

    /// Whether objects in `namespace` are this operator's to reconcile (`--watch-namespaces`).
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        self.config.watch_namespaces.is_empty()
            || self.config.watch_namespaces.iter().any(|n| n == namespace)
    }

    /// Reports a failed reconcile of `obj` as a Warning Event (reason `ReconcileFailed`, the
    /// error as the note; errors carry no secrets), published in the background because error
    /// policies are synchronous. Routine failures (see [`crate::Error::is_reportable`]) are not
    /// reported.
    pub fn report_failure<K>(self: &Arc<Self>, obj: Arc<K>, err: &crate::Error)
    where
        K: Resource<DynamicType = ()> + Send + Sync + 'static,
    {
        if !err.is_reportable() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let event = EventNote::warning(Reason::ReconcileFailed, err.to_string());
        let ctx = self.clone();
        runtime.spawn(async move {
            ctx.publish(obj.as_ref(), EventAction::Reconcile, &event)
                .await
        });
    }

    /// Publishes an Event about `obj`; failures are logged, never fatal.
    pub async fn publish<K>(&self, obj: &K, action: EventAction, event: &EventNote)
    where
        K: Resource<DynamicType = ()>,
    {
        let reason = event.reason.as_str();
        let kube_event = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(crate::crd::conditions::truncate_str(&event.note, 1000)),
            action: action.as_str().to_string(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&kube_event, &obj.object_ref(&()))
            .await
        {
            warn!(error = %e, reason, "failed to publish event");
        }
    }
}

/// Longest requeue delay ever asked for (a little over `ttlSecondsAfterFinished`'s maximum of one
/// year): a larger delay, from a hostile `Retry-After` say, would overflow the scheduler's clock.
pub const MAX_REQUEUE_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// Adds up to 10% jitter to a requeue delay, so many objects do not requeue in lockstep. The
/// delay is first capped at [`MAX_REQUEUE_DELAY`]; any input is safe.
pub fn jittered(delay: Duration) -> Duration {
    let delay = delay.min(MAX_REQUEUE_DELAY);
    let extra = u64::try_from(delay.as_millis() / 10).unwrap_or(u64::MAX);
    if extra == 0 {
        return delay;
    }
    delay.saturating_add(Duration::from_millis(rand::rng().random_range(0..=extra)))
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
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let wc = watcher::Config::default().any_semantic();

    let runs_api: Api<DbtCloudJobRun> = scoped_api(&client, &config.watch_namespaces);
    let creds_api: Api<DbtCloudCredentials> = scoped_api(&client, &config.watch_namespaces);
    let cluster_creds_api: Api<ClusterDbtCloudCredentials> = Api::all(client.clone());
    let triggers_api: Api<DbtCloudJobTrigger> = scoped_api(&client, &config.watch_namespaces);
    // Changes of runs owned by a trigger reconcile the trigger: fed from the one run watch.
    let (owner_tx, owner_rx) = unbounded();
    let runs_listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listed_for_ready = runs_listed.clone();

    // One watch per credentials kind, shared (kube's shared-stream pattern): it fills the store
    // every lookup checks, feeds the credentials controller, and tells the registry and the runs
    // about deletions, which no reconcile ever sees.
    let (creds_store, creds_writer) = kube::runtime::reflector::store_shared(SHARED_BUFFER);
    let (cluster_store, cluster_writer) = kube::runtime::reflector::store_shared(SHARED_BUFFER);
    let creds_subscriber = creds_writer
        .subscribe()
        .expect("a shared store can be subscribed");
    let cluster_subscriber = cluster_writer
        .subscribe()
        .expect("a shared store can be subscribed");
    let stores = CredentialsStores {
        namespaced: creds_store.clone(),
        cluster: cluster_store.clone(),
        operator_namespace: config.operator_namespace.clone(),
    };
    let (ctx, changes) = Context::new(client.clone(), config.clone(), metrics, stores)?;
    // However this future ends (returns, or is dropped: killed, or stopped after a lost Lease),
    // the poll loops it started stop too.
    let _stop_polling = StopPolling(ctx.poller.clone());

    // The run cache holds every DbtCloudJobRun (finished ones too): keep it lean by dropping
    // managedFields and kubectl's last-applied copy of the object before it is stored.
    let (runs_store, runs_writer) = kube::runtime::reflector::store();
    let run_events = {
        let (ctx, store) = (ctx.clone(), runs_store.clone());
        kube::runtime::reflector(
            runs_writer,
            watcher::watcher(runs_api, wc.clone())
                .default_backoff()
                .modify(slim_for_cache),
        )
        .inspect_ok(move |event| job_runs_changed(&ctx, &store, event))
        .inspect_ok({
            let listed = runs_listed.clone();
            move |event| job_trigger::runs_listed(&listed, event)
        })
        .touched_objects()
        .inspect(move |run| {
            if let Some(owner) = run.as_ref().ok().and_then(job_trigger::trigger_of) {
                let _ = owner_tx.unbounded_send(owner);
            }
        })
    };

    // Runs to reconcile because their credentials changed or went away.
    let (creds_triggers, creds_triggered) = unbounded();
    let creds_watch = credentials_watch(
        watcher::watcher(creds_api, wc.clone()),
        creds_writer,
        ctx.clone(),
        runs_store.clone(),
        creds_triggers.clone(),
    );
    let cluster_watch = credentials_watch(
        watcher::watcher(cluster_creds_api, wc.clone()),
        cluster_writer,
        ctx.clone(),
        runs_store.clone(),
        creds_triggers,
    );

    // What the poller learns is written by the report lane, not queued behind new triggers.
    let (requeue, requeued) = unbounded();
    let reports = report_lane::run(
        changes,
        runs_store.clone(),
        ctx.clone(),
        requeue,
        shutdown.clone(),
    );

    let controller_config =
        kube::runtime::controller::Config::default().concurrency(config.max_concurrent_reconciles);
    let runs = Controller::for_stream(run_events, runs_store.clone())
        .with_config(controller_config.clone())
        .reconcile_on(futures::stream::select(requeued, creds_triggered))
        .graceful_shutdown_on(shutdown.clone())
        .run(job_run::reconcile, job_run::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "job run reconcile failed");
            }
        });
    let creds = Controller::for_shared_stream(creds_subscriber, creds_store)
        .with_config(controller_config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            credentials::reconcile_namespaced,
            credentials::error_policy_namespaced,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let cluster_creds = Controller::for_shared_stream(cluster_subscriber, cluster_store)
        .with_config(controller_config.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            credentials::reconcile_cluster,
            credentials::error_policy_cluster,
            ctx.clone(),
        )
        .for_each(|_| async {});
    // The shared watches end with the controllers (their streams never end on their own).
    let watches = async {
        futures::future::select(
            Box::pin(async {
                futures::join!(creds_watch, cluster_watch);
            }),
            shutdown.clone(),
        )
        .await;
    };

    let triggers = Controller::new(triggers_api, wc.clone()).with_config(controller_config.clone());
    let trigger_store = triggers.store();
    let every_trigger = config.clock.changes().flat_map(move |()| {
        futures::stream::iter(
            trigger_store
                .state()
                .iter()
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>(),
        )
    });
    let trigger_ctx = Arc::new(job_trigger::TriggerContext {
        base: ctx.clone(),
        runs: runs_store.clone(),
        runs_listed,
    });
    let triggers = triggers
        .reconcile_on(owner_rx)
        .reconcile_on(every_trigger)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            job_trigger::reconcile,
            job_trigger::error_policy,
            trigger_ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "job trigger reconcile failed");
            }
        });

    // Ready once the run watch has listed. Not `Store::wait_until_ready`: in kube-runtime 5 it
    // wakes only the last of several waiters, and the run controller waits on the same store.
    if let Some(ready) = ready {
        tokio::spawn(async move {
            while !listed_for_ready.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = ready.send(true);
        });
    }
    info!(namespaces = ?config.watch_namespaces, "controllers started");
    futures::join!(runs, creds, cluster_creds, watches, reports, triggers);
    info!("controllers stopped");
    Ok(())
}

/// Stops the poller's loops when dropped.
struct StopPolling(poller::RunPoller);

impl Drop for StopPolling {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Events of a shared stream buffered for its slowest subscriber.
const SHARED_BUFFER: usize = 1024;

/// Drives one credentials watch: the reflector store and the controller's subscribers first, then
/// the registry (deletions, re-lists) and the runs naming the credentials.
async fn credentials_watch<K>(
    stream: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
    writer: kube::runtime::reflector::store::Writer<K>,
    ctx: Arc<Context>,
    runs: Store<DbtCloudJobRun>,
    triggers: UnboundedSender<ObjectRef<DbtCloudJobRun>>,
) where
    K: credentials::CredentialsResource,
{
    stream
        .default_backoff()
        .reflect_shared(writer)
        .for_each(|event| {
            match event {
                Ok(event) => {
                    let keys = credentials::on_watch_event(
                        &ctx.credentials,
                        |key| ctx.stores.live(key),
                        &event,
                    );
                    for key in keys {
                        for run in
                            job_run::runs_using(&runs, key.kind, key.namespace.clone(), &key.name)
                        {
                            let _ = triggers.unbounded_send(run);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "credentials watch failed; retrying"),
            }
            futures::future::ready(())
        })
        .await;
}

/// Keeps the poller and run metrics in step with the run watch: a deleted object is untracked at
/// once (it may never be reconciled again), and after a re-list every object that is gone.
fn job_runs_changed(
    ctx: &Context,
    store: &Store<DbtCloudJobRun>,
    event: &watcher::Event<DbtCloudJobRun>,
) {
    match event {
        watcher::Event::Delete(run) => {
            ctx.poller.untrack(&ObjectRef::from_obj(run));
            if let Some(uid) = run.metadata.uid.as_deref() {
                ctx.written.forget(uid);
            }
            ctx.metrics.set_run_phase(
                &format!("{}/{}", run.namespace().unwrap_or_default(), run.name_any()),
                None,
            );
        }
        watcher::Event::InitDone => {
            ctx.poller.retain(|obj| store.get(obj).is_some());
            ctx.metrics.retain_run_phases(|key| {
                let (ns, name) = key.split_once('/').unwrap_or(("", key));
                store.get(&ObjectRef::new(name).within(ns)).is_some()
            });
        }
        _ => {}
    }
}

/// What the run cache keeps of an object: no managedFields, no kubectl last-applied copy, and for
/// a finished run only what the operator still reads (phase, times for `ttlSecondsAfterFinished`,
/// identity): its steps, results, attempts, conditions and intent are dropped. A finished status
/// is final — re-deciding it changes nothing, so nothing slimmed is ever written back (the
/// lifecycle's exhaustive tests hold that rule).
pub fn slim_for_cache(run: &mut DbtCloudJobRun) {
    run.metadata.managed_fields = None;
    if let Some(a) = run.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    let finished = run.status.as_ref().is_some_and(|s| s.phase.is_terminal());
    if !finished {
        return;
    }
    if let Some(a) = run.metadata.annotations.as_mut() {
        a.remove(intent::INTENT_ANNOTATION);
    }
    if let Some(s) = run.status.as_mut() {
        s.steps = Vec::new();
        s.steps_omitted = None;
        s.results = None;
        s.attempts = Vec::new();
        // As `bound_status` would count them, so the slim copy is already bounded.
        s.attempts_omitted = (s.attempt_count > 0).then_some(s.attempt_count);
        s.conditions = Vec::new();
        s.status_message = None;
        s.run_url = None;
        s.pending_trigger = None;
    }
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

#[cfg(test)]
mod tests {
    use super::slim_for_cache;
    use crate::controller::lifecycle::{decide, CredentialsState, Observation, Settings};
    use crate::crd::DbtCloudJobRun;

    #[test]
    fn a_slimmed_finished_run_decides_the_same_and_writes_nothing() {
        let mut run: DbtCloudJobRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "dbtcloud.io/v1alpha1", "kind": "DbtCloudJobRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 1,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "data"}},
            "spec": {"credentialsRef": {"name": "c"}, "job": {"id": 1}, "ttlSecondsAfterFinished": 60},
            "status": {"observedGeneration": 1, "phase": "Succeeded", "runId": 7, "attemptCount": 1,
                "attempts": [{"attempt": 1, "runId": 7, "kind": "Full", "status": "Success"}],
                "steps": [{"index": 4, "name": "Invoke dbt with `dbt build`", "status": "Success"}],
                "results": {"pass": 3, "error": 0, "fail": 0, "skip": 0, "warn": 0},
                "finishedAt": "2026-11-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done", "lastTransitionTime": "2026-11-01T00:00:00Z"}]}
        }))
        .unwrap();
        let full = run.clone();
        slim_for_cache(&mut run);
        let s = run.status.clone().unwrap();
        assert!(s.steps.is_empty() && s.attempts.is_empty() && s.results.is_none());
        assert_eq!(
            s.finished_at,
            full.status.as_ref().unwrap().finished_at,
            "TTL still works"
        );
        assert_eq!(
            run.metadata
                .annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["team"]
        );
        // Deciding the slim copy: its status comes back unchanged (so no write), the same action.
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let creds = CredentialsState::NotReady {
            reason: crate::crd::reasons::Reason::CredentialsNotFound,
            message: "x".into(),
            stalled: false,
        };
        let settings = Settings::default();
        let slim_d = decide(&run, &Observation::new(now, creds.clone()), &settings);
        let full_d = decide(&full, &Observation::new(now, creds), &settings);
        assert_eq!(Some(&slim_d.status), run.status.as_ref());
        assert_eq!(slim_d.action, full_d.action);
        // An in-flight run keeps everything but the bookkeeping copies.
        let mut live = full.clone();
        live.status.as_mut().unwrap().phase = crate::crd::RunPhase::Running;
        let before = live.status.clone();
        slim_for_cache(&mut live);
        assert_eq!(live.status, before);
    }

    use super::*;

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_told_and_says_so() {
        let start: Timestamp = "2026-11-25T00:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        let copy = clock.clone();
        let mut changes = clock.changes();
        assert_eq!(copy.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(copy.now(), start + jiff::SignedDuration::from_secs(90));
        assert_eq!(changes.next().await, Some(()));
        assert_eq!(
            clock.until(start + jiff::SignedDuration::from_secs(100)),
            Duration::from_secs(10)
        );
        assert_eq!(clock.until(start), Duration::ZERO);
        copy.set(start);
        assert_eq!(clock.now(), start);
        // The system clock ignores both and never reports a change.
        let system = Clock::system();
        let long_ago: Timestamp = "2000-01-01T00:00:00Z".parse().unwrap();
        system.set(long_ago);
        assert!(system.now() > long_ago);
        assert!(futures::FutureExt::now_or_never(system.changes().next()).is_none());
    }

    #[test]
    fn jitter_of_any_delay_is_bounded_and_fits_the_clock() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(5),
            Duration::from_secs(30),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            let j = jittered(d);
            assert!(j >= d.min(MAX_REQUEUE_DELAY), "{d:?} -> {j:?}");
            assert!(
                j <= MAX_REQUEUE_DELAY + MAX_REQUEUE_DELAY / 10,
                "{d:?} -> {j:?}"
            );
            assert!(std::time::Instant::now().checked_add(j).is_some());
        }
    }
}
