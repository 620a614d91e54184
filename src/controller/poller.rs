//! The shared run poller: every in-flight run of one dbt Cloud account is followed by one
//! `GET /runs/?pk__in=[…]` per poll interval (up to 100 runs per request), instead of one `GET` per
//! run. When a run's status changes, the owning `DbtCloudJobRun` is queued for reconciliation.
//!
//! Runs due within half an interval are folded into the same request, so an account with N runs
//! in flight costs about `ceil(N / 100)` requests per interval however the runs are staggered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, warn};

use super::lifecycle::ObservedRun;
use crate::crd::DbtCloudJobRun;
use crate::dbt_cloud::{parse_timestamp, DbtCloudClient, ListRunsParams, Run, MAX_PAGE_SIZE};

/// Identifies a dbt Cloud account (one budget, one poller).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct AccountKey {
    /// Access host.
    pub host: String,
    /// Account id.
    pub account_id: i64,
}

impl AccountKey {
    /// The account a client talks to.
    pub fn of(client: &DbtCloudClient) -> Self {
        Self {
            host: client.host().as_str().to_string(),
            account_id: client.account_id(),
        }
    }
}

/// Converts an API run into what the lifecycle needs.
pub fn observe(run: &Run) -> ObservedRun {
    ObservedRun {
        id: run.id,
        job_id: run.job_id(),
        status: run.status,
        href: run.href.clone(),
        can_retry: run.can_retry.unwrap_or(false),
        created_at: run.created_at.as_deref().and_then(parse_timestamp),
        started_at: run.started_at.as_deref().and_then(parse_timestamp),
        finished_at: run.finished_at.as_deref().and_then(parse_timestamp),
        status_message: run.status_message.clone(),
    }
}

struct Tracked {
    obj: ObjectRef<DbtCloudJobRun>,
    interval: Duration,
    last_polled: Option<Instant>,
    snapshot: Option<ObservedRun>,
}

struct AccountState {
    client: DbtCloudClient,
    runs: HashMap<i64, Tracked>,
}

struct Inner {
    tick: Duration,
    accounts: Mutex<HashMap<AccountKey, AccountState>>,
    notify: UnboundedSender<ObjectRef<DbtCloudJobRun>>,
    stopped: AtomicBool,
    requests: std::sync::atomic::AtomicU64,
}

/// Shared poller (cheap clone).
#[derive(Clone)]
pub struct RunPoller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RunPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPoller")
            .field("tracked", &self.tracked_count())
            .finish()
    }
}

impl RunPoller {
    /// A poller ticking every `tick`, and the stream of objects to reconcile.
    pub fn new(tick: Duration) -> (Self, UnboundedReceiver<ObjectRef<DbtCloudJobRun>>) {
        let (tx, rx) = unbounded();
        let inner = Inner {
            tick,
            accounts: Mutex::new(HashMap::new()),
            notify: tx,
            stopped: AtomicBool::new(false),
            requests: Default::default(),
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Follows `run_id` for `obj`, polling every `interval`. `known` seeds the cache. The newest
    /// client for an account is used for its polls (so a rotated key takes over).
    pub fn track(
        &self,
        client: &DbtCloudClient,
        run_id: i64,
        obj: ObjectRef<DbtCloudJobRun>,
        interval: Duration,
        known: Option<ObservedRun>,
    ) {
        let key = AccountKey::of(client);
        let mut accounts = self.inner.accounts.lock().expect("poller lock");
        let spawn = !accounts.contains_key(&key);
        let state = accounts.entry(key.clone()).or_insert_with(|| AccountState {
            client: client.clone(),
            runs: HashMap::new(),
        });
        state.client = client.clone();
        let tracked = state.runs.entry(run_id).or_insert_with(|| Tracked {
            obj,
            interval,
            last_polled: known.as_ref().map(|_| Instant::now()),
            snapshot: None,
        });
        tracked.interval = interval;
        if let Some(k) = known {
            tracked.snapshot = Some(k);
        }
        drop(accounts);
        if spawn && !self.inner.stopped.load(Ordering::SeqCst) {
            let inner = self.inner.clone();
            tokio::spawn(poll_account(inner, key));
        }
    }

    /// The latest polled state of a run, if it is tracked and has been polled.
    pub fn snapshot(&self, client: &DbtCloudClient, run_id: i64) -> Option<ObservedRun> {
        let accounts = self.inner.accounts.lock().expect("poller lock");
        accounts
            .get(&AccountKey::of(client))?
            .runs
            .get(&run_id)?
            .snapshot
            .clone()
    }

    /// Stops following a run.
    pub fn untrack(&self, client: &DbtCloudClient, run_id: i64) {
        let mut accounts = self.inner.accounts.lock().expect("poller lock");
        if let Some(state) = accounts.get_mut(&AccountKey::of(client)) {
            state.runs.remove(&run_id);
        }
    }

    /// Number of runs followed.
    pub fn tracked_count(&self) -> usize {
        let accounts = self.inner.accounts.lock().expect("poller lock");
        accounts.values().map(|a| a.runs.len()).sum()
    }

    /// List-runs requests sent so far.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Stops every account loop.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
    }
}

/// Which runs to poll now: none unless one is due; then every run due within half an interval.
fn due_runs(runs: &HashMap<i64, Tracked>, now: Instant) -> Vec<i64> {
    let elapsed = |t: &Tracked| t.last_polled.map(|p| now.saturating_duration_since(p));
    let any_due = runs
        .values()
        .any(|t| elapsed(t).is_none_or(|e| e >= t.interval));
    if !any_due {
        return Vec::new();
    }
    let mut due: Vec<i64> = runs
        .iter()
        .filter(|(_, t)| elapsed(t).is_none_or(|e| e >= t.interval / 2))
        .map(|(id, _)| *id)
        .collect();
    due.sort_unstable();
    due
}

async fn poll_account(inner: Arc<Inner>, key: AccountKey) {
    debug!(account = key.account_id, host = %key.host, "account poller started");
    loop {
        tokio::time::sleep(inner.tick).await;
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let (client, due) = {
            let mut accounts = inner.accounts.lock().expect("poller lock");
            let Some(state) = accounts.get(&key) else {
                break;
            };
            if state.runs.is_empty() {
                accounts.remove(&key);
                break;
            }
            (state.client.clone(), due_runs(&state.runs, Instant::now()))
        };
        for chunk in due.chunks(MAX_PAGE_SIZE as usize) {
            let params = ListRunsParams {
                pk_in: chunk.to_vec(),
                limit: Some(MAX_PAGE_SIZE),
                ..Default::default()
            };
            inner.requests.fetch_add(1, Ordering::Relaxed);
            let result = client.list_runs(&params).await;
            let now = Instant::now();
            let mut accounts = inner.accounts.lock().expect("poller lock");
            let Some(state) = accounts.get_mut(&key) else {
                break;
            };
            for id in chunk {
                if let Some(t) = state.runs.get_mut(id) {
                    t.last_polled = Some(now);
                }
            }
            match result {
                Ok(page) => {
                    for run in page.items {
                        let Some(t) = state.runs.get_mut(&run.id) else {
                            continue;
                        };
                        let observed = observe(&run);
                        let changed = t
                            .snapshot
                            .as_ref()
                            .is_none_or(|s| s.status != observed.status);
                        t.snapshot = Some(observed);
                        if changed {
                            let _ = inner.notify.unbounded_send(t.obj.clone());
                        }
                    }
                }
                Err(e) => {
                    warn!(account = key.account_id, error = %e, "polling runs failed; will retry next interval")
                }
            }
        }
    }
    debug!(account = key.account_id, "account poller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(interval: u64, polled_ago: Option<u64>, now: Instant) -> Tracked {
        Tracked {
            obj: ObjectRef::new("x").within("ns"),
            interval: Duration::from_secs(interval),
            last_polled: polled_ago.map(|s| now - Duration::from_secs(s)),
            snapshot: None,
        }
    }

    #[test]
    fn nothing_is_polled_until_one_run_is_due_then_near_due_runs_join() {
        let now = Instant::now() + Duration::from_secs(100);
        let mut runs = HashMap::new();
        runs.insert(1, tracked(10, Some(9), now));
        runs.insert(2, tracked(10, Some(3), now));
        assert!(due_runs(&runs, now).is_empty());
        runs.insert(3, tracked(10, Some(10), now));
        assert_eq!(
            due_runs(&runs, now),
            vec![1, 3],
            "run 2 was polled 3s ago: < half an interval"
        );
        runs.insert(4, tracked(10, None, now));
        assert_eq!(due_runs(&runs, now), vec![1, 3, 4]);
    }
}
