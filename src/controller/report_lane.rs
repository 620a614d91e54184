//! The report lane: what the poller learns (a run's phase changed, a run finished) is written at
//! once, not behind a burst of new triggers in the controller's queue. The lane reconciles the
//! changed objects itself, a few at a time; an object the lane is already busy with, or whose
//! reconcile failed, goes to the controller's queue as before. Writes stay guarded by the
//! resourceVersion of the read, so the lane and the controller can never both act on one state.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinSet;

use super::{job_run, Context};
use crate::crd::DbtCloudJobRun;

/// Reconciles in flight in the report lane at most.
pub const REPORT_CONCURRENCY: usize = 16;

/// Runs the lane until `changes` ends (the poller stops) or `shutdown` resolves; then waits for
/// the reconciles in flight. Dropped (the operator killed, or the controllers stopped after losing
/// the Lease), it aborts them: nothing it started outlives it.
pub async fn run(
    mut changes: UnboundedReceiver<ObjectRef<DbtCloudJobRun>>,
    store: Store<DbtCloudJobRun>,
    ctx: Arc<Context>,
    fallback: UnboundedSender<ObjectRef<DbtCloudJobRun>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let busy: Arc<Mutex<HashSet<ObjectRef<DbtCloudJobRun>>>> = Arc::default();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // At most REPORT_CONCURRENCY reconciles at once: wait for one to end first.
        if tasks.len() >= REPORT_CONCURRENCY {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tasks.join_next() => continue,
            }
        }
        let obj_ref = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            next = changes.next() => match next {
                Some(obj_ref) => obj_ref,
                None => break,
            },
        };
        let Some(obj) = store.get(&obj_ref) else {
            continue;
        };
        // The controller is on it: it queues behind that reconcile instead.
        if obj
            .metadata
            .uid
            .as_deref()
            .is_some_and(|uid| ctx.busy.enter(uid).is_none())
        {
            let _ = fallback.unbounded_send(obj_ref);
            continue;
        }
        let fresh = busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(obj_ref.clone());
        if !fresh {
            let _ = fallback.unbounded_send(obj_ref);
            continue;
        }
        let (ctx, busy, fallback) = (ctx.clone(), busy.clone(), fallback.clone());
        tasks.spawn(async move {
            if job_run::reconcile(obj, ctx).await.is_err() {
                let _ = fallback.unbounded_send(obj_ref.clone());
            }
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&obj_ref);
        });
    }
    // Stopping: the reconciles in flight finish (the caller bounds this by its grace period).
    while tasks.join_next().await.is_some() {}
}
