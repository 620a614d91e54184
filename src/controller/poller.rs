//! The shared run poller: the in-flight runs polled with one credentials object's key are followed
//! by one `GET /runs/?pk__in=[…]` per poll interval (up to 100 runs per request), instead of one
//! `GET` per run. When a run's status changes, the owning `DbtCloudJobRun` is queued for
//! reconciliation.
//!
//! Runs due within half an interval are folded into the same request, so a group with N runs in
//! flight costs about `ceil(N / 100)` requests per interval however the runs are staggered.
//!
//! **Each run is polled with the key of the credentials it names.** Runs are grouped by their
//! credentials object ([`CredentialsKey`]), not by account: two credentials objects for the same
//! account and host (say two teams' keys) are two groups, each polled with its own key (one extra
//! list request per extra credentials object). The key is looked up on every tick through a
//! [`ClientSource`] (the credentials registry, checked against the API server), so a rotated key is
//! used at once and a group whose credentials are deleted, replaced or not ready is not polled at
//! all.
//!
//! **The tracked set is exactly the live in-flight runs**: one entry per `DbtCloudJobRun` object,
//! for its current dbt Cloud run. Tracking another run for the same object (a retry) replaces the
//! old one; the run reconciler untracks an object whose run finished, was suspended or lost its
//! credentials, and the run watch untracks deleted objects (and, after a re-list, every object that
//! is gone: [`RunPoller::retain`]). [`RunPoller::tracked`] shows the set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, warn};

use super::lifecycle::ObservedRun;
use super::registry::CredentialsKey;
use crate::crd::{DbtCloudJobRun, DbtCloudJobRunStatus, RunPhase};
use crate::dbt_cloud::{parse_timestamp, DbtCloudClient, ListRunsParams, Run, MAX_PAGE_SIZE};

/// Where the poller gets the client of a group on each tick: the current client of those
/// credentials, or `None` when they are gone or not ready (then the group is not polled).
pub type ClientSource = Arc<dyn Fn(&CredentialsKey) -> Option<DbtCloudClient> + Send + Sync>;

/// What the poller should do for a run after a reconcile wrote `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Poll this dbt Cloud run (it replaces any run tracked for the object before).
    Track(i64),
    /// Stop polling anything for the object.
    Untrack,
}

/// Whether a run with `status` is polled: only while a dbt Cloud run is in flight and the
/// credentials it names are usable. A finished run, a run replaced by a suspend (no run id), a
/// pending trigger, or a run whose credentials are gone is untracked.
pub fn follow_plan(status: &DbtCloudJobRunStatus, credentials_usable: bool) -> Follow {
    match status.run_id {
        Some(run_id)
            if credentials_usable
                && !status.phase.is_terminal()
                && status.phase != RunPhase::Pending =>
        {
            Follow::Track(run_id)
        }
        _ => Follow::Untrack,
    }
}

/// One tracked run, as [`RunPoller::tracked`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedRun {
    /// The credentials whose key polls it.
    pub credentials: CredentialsKey,
    /// The `DbtCloudJobRun`.
    pub object: ObjectRef<DbtCloudJobRun>,
    /// The dbt Cloud run id.
    pub run_id: i64,
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
    run_id: i64,
    interval: Duration,
    last_polled: Option<Instant>,
    snapshot: Option<ObservedRun>,
}

/// The tracked runs by group, then by object (pure; the loops and locking live around it).
#[derive(Default)]
struct Groups {
    groups: HashMap<CredentialsKey, HashMap<ObjectRef<DbtCloudJobRun>, Tracked>>,
}

impl Groups {
    /// Tracks `run_id` for `obj` in `group`, replacing whatever the object tracked before (in any
    /// group). Returns true when the group is new (its poll loop must be started).
    fn track(
        &mut self,
        group: &CredentialsKey,
        obj: ObjectRef<DbtCloudJobRun>,
        run_id: i64,
        interval: Duration,
        known: Option<ObservedRun>,
        now: Instant,
    ) -> bool {
        for (key, runs) in self.groups.iter_mut() {
            if key != group {
                runs.remove(&obj);
            }
        }
        let new_group = !self.groups.contains_key(group);
        let runs = self.groups.entry(group.clone()).or_default();
        let known = known.filter(|k| k.id == run_id);
        match runs.get_mut(&obj) {
            Some(t) if t.run_id == run_id => {
                t.interval = interval;
                if let Some(k) = known {
                    t.snapshot = Some(k);
                }
            }
            _ => {
                runs.insert(
                    obj,
                    Tracked {
                        run_id,
                        interval,
                        last_polled: known.as_ref().map(|_| now),
                        snapshot: known,
                    },
                );
            }
        }
        new_group
    }

    /// Stops tracking anything for `obj`. Empty groups stay until their loop notices.
    fn untrack(&mut self, obj: &ObjectRef<DbtCloudJobRun>) -> bool {
        let mut removed = false;
        for runs in self.groups.values_mut() {
            removed |= runs.remove(obj).is_some();
        }
        removed
    }

    fn retain(&mut self, keep: impl Fn(&ObjectRef<DbtCloudJobRun>) -> bool) {
        for runs in self.groups.values_mut() {
            runs.retain(|obj, _| keep(obj));
        }
    }

    fn snapshot(&self, obj: &ObjectRef<DbtCloudJobRun>, run_id: i64) -> Option<ObservedRun> {
        self.groups
            .values()
            .filter_map(|runs| runs.get(obj))
            .find(|t| t.run_id == run_id)?
            .snapshot
            .clone()
    }

    fn tracked(&self) -> Vec<TrackedRun> {
        let mut all: Vec<TrackedRun> = self
            .groups
            .iter()
            .flat_map(|(key, runs)| {
                runs.iter().map(|(obj, t)| TrackedRun {
                    credentials: key.clone(),
                    object: obj.clone(),
                    run_id: t.run_id,
                })
            })
            .collect();
        all.sort_by(|a, b| {
            (
                a.credentials.sort_key(),
                &a.object.namespace,
                &a.object.name,
            )
                .cmp(&(
                    b.credentials.sort_key(),
                    &b.object.namespace,
                    &b.object.name,
                ))
        });
        all
    }

    /// Run ids of `group` to poll now (see [`due_runs`]).
    fn due(&self, group: &CredentialsKey, now: Instant) -> Vec<i64> {
        self.groups
            .get(group)
            .map(|runs| due_runs(runs.values(), now))
            .unwrap_or_default()
    }

    /// Records a poll of `polled` in `group` that returned `found`; returns the objects whose run
    /// changed status (to reconcile).
    fn record(
        &mut self,
        group: &CredentialsKey,
        polled: &[i64],
        found: Option<&[ObservedRun]>,
        now: Instant,
    ) -> Vec<ObjectRef<DbtCloudJobRun>> {
        let Some(runs) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        for (obj, t) in runs.iter_mut() {
            if !polled.contains(&t.run_id) {
                continue;
            }
            t.last_polled = Some(now);
            let Some(observed) = found.and_then(|f| f.iter().find(|r| r.id == t.run_id)) else {
                continue;
            };
            if t.snapshot
                .as_ref()
                .is_none_or(|s| s.status != observed.status)
            {
                changed.push(obj.clone());
            }
            t.snapshot = Some(observed.clone());
        }
        changed
    }
}

struct Inner {
    tick: Duration,
    groups: Mutex<Groups>,
    source: ClientSource,
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
    /// A poller ticking every `tick` that polls each group with the client `source` gives for its
    /// credentials, and the stream of objects to reconcile.
    pub fn new(
        tick: Duration,
        source: ClientSource,
    ) -> (Self, UnboundedReceiver<ObjectRef<DbtCloudJobRun>>) {
        let (tx, rx) = unbounded();
        let inner = Inner {
            tick,
            groups: Mutex::new(Groups::default()),
            source,
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

    /// Follows `run_id` for `obj` with the key of `credentials`, polling every `interval`; this
    /// replaces any run tracked for `obj` before (a retry's new run replaces the failed one).
    /// `known` seeds the cache.
    pub fn track(
        &self,
        credentials: &CredentialsKey,
        run_id: i64,
        obj: ObjectRef<DbtCloudJobRun>,
        interval: Duration,
        known: Option<ObservedRun>,
    ) {
        let spawn = self
            .lock()
            .track(credentials, obj, run_id, interval, known, Instant::now());
        if spawn && !self.inner.stopped.load(Ordering::SeqCst) {
            let inner = self.inner.clone();
            tokio::spawn(poll_group(inner, credentials.clone()));
        }
    }

    /// The latest polled state of `run_id`, if `obj` tracks it and it has been polled.
    pub fn snapshot(&self, obj: &ObjectRef<DbtCloudJobRun>, run_id: i64) -> Option<ObservedRun> {
        self.lock().snapshot(obj, run_id)
    }

    /// Stops following whatever run `obj` tracked.
    pub fn untrack(&self, obj: &ObjectRef<DbtCloudJobRun>) {
        self.lock().untrack(obj);
    }

    /// Keeps only the objects `keep` accepts (after a re-list of the run watch, which reports no
    /// deletions).
    pub fn retain(&self, keep: impl Fn(&ObjectRef<DbtCloudJobRun>) -> bool) {
        self.lock().retain(keep);
    }

    /// Every tracked run, sorted by credentials then object.
    pub fn tracked(&self) -> Vec<TrackedRun> {
        self.lock().tracked()
    }

    /// Number of runs followed.
    pub fn tracked_count(&self) -> usize {
        self.lock().groups.values().map(|runs| runs.len()).sum()
    }

    /// List-runs requests sent so far.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Stops every poll loop.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        crate::sync::lock(&self.inner.groups)
    }
}

/// Which runs to poll now: none unless one is due; then every run due within half an interval.
fn due_runs<'a>(runs: impl Iterator<Item = &'a Tracked> + Clone, now: Instant) -> Vec<i64> {
    let elapsed = |t: &Tracked| t.last_polled.map(|p| now.saturating_duration_since(p));
    let any_due = runs
        .clone()
        .any(|t| elapsed(t).is_none_or(|e| e >= t.interval));
    if !any_due {
        return Vec::new();
    }
    let mut due: Vec<i64> = runs
        .filter(|t| elapsed(t).is_none_or(|e| e >= t.interval / 2))
        .map(|t| t.run_id)
        .collect();
    due.sort_unstable();
    due.dedup();
    due
}

async fn poll_group(inner: Arc<Inner>, key: CredentialsKey) {
    debug!(credentials = %key, "poll loop started");
    loop {
        tokio::time::sleep(inner.tick).await;
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let due = {
            let mut groups = crate::sync::lock(&inner.groups);
            match groups.groups.get(&key) {
                None => break,
                Some(runs) if runs.is_empty() => {
                    groups.groups.remove(&key);
                    break;
                }
                Some(_) => groups.due(&key, Instant::now()),
            }
        };
        if due.is_empty() {
            continue;
        }
        // The key of these credentials as it is now; none when they are gone or not ready.
        let Some(client) = (inner.source)(&key) else {
            debug!(credentials = %key, "credentials not usable; not polling their runs");
            continue;
        };
        for chunk in due.chunks(MAX_PAGE_SIZE as usize) {
            let params = ListRunsParams {
                pk_in: chunk.to_vec(),
                limit: Some(MAX_PAGE_SIZE),
                ..Default::default()
            };
            inner.requests.fetch_add(1, Ordering::Relaxed);
            let result = client.list_runs(&params).await;
            let found: Option<Vec<ObservedRun>> = match result {
                Ok(page) => Some(page.items.iter().map(observe).collect()),
                Err(e) => {
                    warn!(credentials = %key, error = %e, "polling runs failed; will retry next interval");
                    None
                }
            };
            let changed = crate::sync::lock(&inner.groups).record(
                &key,
                chunk,
                found.as_deref(),
                Instant::now(),
            );
            for obj in changed {
                let _ = inner.notify.unbounded_send(obj);
            }
        }
    }
    debug!(credentials = %key, "poll loop stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::job_run::CredentialsKind;
    use crate::dbt_cloud::RunStatus;

    fn tracked(interval: u64, polled_ago: Option<u64>, now: Instant) -> Tracked {
        Tracked {
            run_id: 0,
            interval: Duration::from_secs(interval),
            last_polled: polled_ago.map(|s| now - Duration::from_secs(s)),
            snapshot: None,
        }
    }

    fn due_of(runs: &HashMap<i64, Tracked>, now: Instant) -> Vec<i64> {
        let runs: Vec<Tracked> = runs
            .iter()
            .map(|(id, t)| Tracked {
                run_id: *id,
                interval: t.interval,
                last_polled: t.last_polled,
                snapshot: None,
            })
            .collect();
        due_runs(runs.iter(), now)
    }

    #[test]
    fn nothing_is_polled_until_one_run_is_due_then_near_due_runs_join() {
        let now = Instant::now() + Duration::from_secs(100);
        let mut runs = HashMap::new();
        runs.insert(1, tracked(10, Some(9), now));
        runs.insert(2, tracked(10, Some(3), now));
        assert!(due_of(&runs, now).is_empty());
        runs.insert(3, tracked(10, Some(10), now));
        assert_eq!(
            due_of(&runs, now),
            vec![1, 3],
            "run 2 was polled 3s ago: < half an interval"
        );
        runs.insert(4, tracked(10, None, now));
        assert_eq!(due_of(&runs, now), vec![1, 3, 4]);
    }

    fn creds(ns: &str, name: &str) -> CredentialsKey {
        CredentialsKey {
            kind: CredentialsKind::DbtCloudCredentials,
            namespace: Some(ns.into()),
            name: name.into(),
        }
    }

    fn obj(name: &str) -> ObjectRef<DbtCloudJobRun> {
        ObjectRef::new(name).within("ns")
    }

    fn observed(id: i64, status: RunStatus) -> ObservedRun {
        ObservedRun {
            id,
            job_id: Some(1),
            status,
            href: None,
            can_retry: false,
            created_at: None,
            started_at: None,
            finished_at: None,
            status_message: None,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn two_credentials_for_one_account_are_two_groups_each_polled_with_its_own_key() {
        // `a` and `b` are two teams' credentials for the same dbt Cloud account and host.
        let (a, b) = (creds("team-a", "dbt"), creds("team-b", "dbt"));
        let mut g = Groups::default();
        let now = Instant::now();
        assert!(g.track(&a, obj("x"), 1, SECOND, None, now));
        assert!(g.track(&b, obj("y"), 2, SECOND, None, now));
        assert!(!g.track(&a, obj("z"), 3, SECOND, None, now));
        assert_eq!(g.due(&a, now), vec![1, 3]);
        assert_eq!(
            g.due(&b, now),
            vec![2],
            "b's run is never polled with a's key"
        );
        // A poll answer only reaches the group that asked.
        let changed = g.record(&a, &[1, 3], Some(&[observed(1, RunStatus::Running)]), now);
        assert_eq!(changed, vec![obj("x")]);
        assert_eq!(g.snapshot(&obj("x"), 1).unwrap().status, RunStatus::Running);
        assert!(g.snapshot(&obj("y"), 2).is_none());
    }

    #[test]
    fn a_retry_replaces_the_tracked_run_and_suspend_finish_or_delete_untrack_it() {
        let a = creds("team-a", "dbt");
        let mut g = Groups::default();
        let now = Instant::now();
        g.track(&a, obj("x"), 1, SECOND, None, now);
        g.track(&a, obj("y"), 5, SECOND, None, now);
        // Attempt 2 (a retry) of `x` runs as dbt Cloud run 2: run 1 is no longer polled.
        g.track(&a, obj("x"), 2, SECOND, None, now);
        let ids: Vec<(String, i64)> = g
            .tracked()
            .into_iter()
            .map(|t| (t.object.name, t.run_id))
            .collect();
        assert_eq!(ids, vec![("x".into(), 2), ("y".into(), 5)]);
        assert_eq!(g.due(&a, now), vec![2, 5]);
        // Suspended (or finished, or its credentials went away): nothing is tracked for `x`.
        assert!(g.untrack(&obj("x")));
        // `y` was deleted: the watch keeps only the objects that exist.
        g.retain(|o| o.name != "y");
        assert!(g.tracked().is_empty());
        assert!(g.due(&a, now).is_empty());
    }

    #[test]
    fn a_run_moved_to_other_credentials_leaves_its_old_group() {
        let (a, b) = (creds("team-a", "old"), creds("team-a", "new"));
        let mut g = Groups::default();
        let now = Instant::now();
        g.track(&a, obj("x"), 1, SECOND, None, now);
        g.track(&b, obj("x"), 1, SECOND, None, now);
        assert_eq!(g.tracked().len(), 1);
        assert_eq!(g.tracked()[0].credentials, b);
        assert!(g.due(&a, now).is_empty());
    }

    fn status(phase: RunPhase, run_id: Option<i64>) -> DbtCloudJobRunStatus {
        DbtCloudJobRunStatus {
            phase,
            run_id,
            ..Default::default()
        }
    }

    #[test]
    fn only_in_flight_runs_with_usable_credentials_are_followed() {
        assert_eq!(
            follow_plan(&status(RunPhase::Running, Some(9)), true),
            Follow::Track(9)
        );
        assert_eq!(
            follow_plan(&status(RunPhase::Queued, Some(9)), true),
            Follow::Track(9)
        );
        // Suspended: the run was cancelled and replaced by nothing.
        assert_eq!(
            follow_plan(&status(RunPhase::Pending, None), true),
            Follow::Untrack
        );
        assert_eq!(
            follow_plan(&status(RunPhase::Succeeded, Some(9)), true),
            Follow::Untrack
        );
        // Credentials deleted while the run is in flight: it is not polled any more.
        assert_eq!(
            follow_plan(&status(RunPhase::Running, Some(9)), false),
            Follow::Untrack
        );
    }

    #[tokio::test]
    async fn a_group_whose_credentials_are_gone_is_not_polled() {
        let asked = Arc::new(Mutex::new(Vec::<CredentialsKey>::new()));
        let seen = asked.clone();
        let source: ClientSource = Arc::new(move |key: &CredentialsKey| {
            crate::sync::lock(&seen).push(key.clone());
            None
        });
        let tick = Duration::from_millis(5);
        let (poller, _changes) = RunPoller::new(tick, source);
        let a = creds("team-a", "dbt");
        poller.track(&a, 1, obj("x"), tick, None);
        // Wait until the loop asked for the key of the group twice (so it was due and looked).
        for _ in 0..1000 {
            if crate::sync::lock(&asked).len() >= 2 {
                break;
            }
            tokio::time::sleep(tick).await;
        }
        assert!(
            crate::sync::lock(&asked).len() >= 2,
            "the poll loop never ran"
        );
        assert!(crate::sync::lock(&asked).iter().all(|k| k == &a));
        assert_eq!(poller.requests_sent(), 0, "no request without a usable key");
        assert_eq!(poller.tracked_count(), 1);
        poller.stop();
    }

    /// A panic while the lock was held (a bug) does not take every later reconcile down with it.
    #[tokio::test]
    async fn a_poisoned_lock_is_recovered() {
        let source: ClientSource = Arc::new(|_: &CredentialsKey| None);
        let (poller, _changes) = RunPoller::new(Duration::from_secs(3600), source);
        crate::sync::poison(|| poller.inner.groups.lock());
        assert!(poller.inner.groups.is_poisoned());
        let a = creds("team-a", "dbt");
        poller.track(&a, 1, obj("x"), Duration::from_secs(3600), None);
        assert_eq!(poller.tracked_count(), 1);
        poller.untrack(&obj("x"));
        assert!(poller.tracked().is_empty());
        poller.stop();
    }
}
