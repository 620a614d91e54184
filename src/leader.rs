//! Leader election with a `coordination.k8s.io/v1` Lease (`kube-lease-manager`).
//!
//! Only the leader runs the controllers; standby replicas keep their HTTP endpoints up and are
//! ready, waiting to take over. Hand-over: on a graceful shutdown the leader finishes its
//! reconciles and releases the Lease; a standby notices when it next checks the Lease, at the latest
//! when the old term would have expired. Either way a standby leads within `duration + grace` of the
//! leader stopping (defaults 15 s + 5 s; measured about 15 s in `tests/operator_runtime.rs`).
//! A replica that sees the Lease taken by someone else stops its controllers and exits (Kubernetes
//! restarts it as a standby), so it never keeps acting without the Lease it can observe. Leader
//! election does no fencing: what makes a brief overlap harmless is the trigger intent written with
//! a resourceVersion precondition (see `controller::lifecycle`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info};

use crate::metrics::Metrics;

/// Settings of the Lease.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Lease name.
    pub lease_name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Lease duration, seconds.
    pub duration: u64,
    /// Grace period, seconds.
    pub grace: u64,
}

/// How leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown was requested (before or while leading).
    Shutdown,
    /// Another replica holds the Lease now; the caller should exit.
    LostLease,
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
#[error("leader election: {0}")]
pub struct LeaderError(String);

/// Waits for the Lease, then runs `work(stop)` while holding it. `stop` resolves when `shutdown`
/// resolves or the Lease is lost; `work` must then return (with its in-flight reconciles done).
pub async fn run_as_leader<W, WF>(
    client: Client,
    config: LeaderConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    work: W,
) -> Result<Outcome, LeaderError>
where
    W: FnOnce(futures::future::BoxFuture<'static, ()>) -> WF,
    WF: Future<Output = ()>,
{
    // Replicas starting together race to create the Lease; the loser retries (10 times, from
    // 200 ms, doubling up to 2 s, jittered).
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(10);
    let manager = (|| {
        LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.duration)
            .with_grace(config.grace)
            .with_field_manager("dbt-cloud-operator-leader")
            .build()
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .notify(|e, delay| {
        tracing::warn!(error = %e, ?delay, "cannot set up the leader Lease yet; retrying");
    })
    .await
    .map_err(|e| LeaderError(e.to_string()))?;
    let (mut leading, task) = manager.watch().await;
    let mut shutdown = Box::pin(shutdown);
    info!(identity = %config.identity, lease = %config.lease_name, "waiting to become leader");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                return Err(LeaderError("lease manager stopped".into()));
            },
            _ = &mut shutdown => {
                drop(leading);
                let _ = task.await;
                return Ok(Outcome::Shutdown);
            }
        }
    }
    info!(identity = %config.identity, "became leader");
    metrics.leader.set(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop: futures::future::BoxFuture<'static, ()> = Box::pin(async move {
        let _ = stop_rx.await;
    });
    let mut watch_lost = leading.clone();
    let lost = async move {
        loop {
            if watch_lost.changed().await.is_err() || !*watch_lost.borrow_and_update() {
                return;
            }
        }
    };
    let work = work(stop);
    tokio::pin!(work);
    let mut stop_tx = Some(stop_tx);
    let outcome = tokio::select! {
        _ = &mut work => Outcome::Shutdown,
        _ = &mut shutdown => {
            if let Some(tx) = stop_tx.take() { let _ = tx.send(()); }
            work.await;
            Outcome::Shutdown
        }
        _ = lost => {
            error!("lost the leader lease; stopping controllers");
            if let Some(tx) = stop_tx.take() { let _ = tx.send(()); }
            // Stop promptly: another replica may already be starting.
            let _ = tokio::time::timeout(Duration::from_secs(config.grace), work).await;
            Outcome::LostLease
        }
    };
    metrics.leader.set(0);
    drop(leading);
    // Dropping the channel makes the manager release the Lease (when we still hold it).
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    info!(?outcome, "stopped leading");
    Ok(outcome)
}
