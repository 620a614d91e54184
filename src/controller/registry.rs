//! In-memory registry of credentials: the validated state and a ready-to-use dbt Cloud client per
//! credentials object. The credentials reconciler writes it; the run reconciler and the poller read
//! it, so runs never read Secrets themselves and a rotated key reaches every run at once.
//!
//! The registry follows the API server, not only `reconcile` (which never sees deleted objects):
//!
//! * every lookup is checked against the object as the watch currently has it
//!   ([`LiveCredentials`], read from the reflector store): an entry is only used while an object of
//!   that name exists with the same uid and the same validated target (account, host, Secret), so
//!   a deleted, re-created or re-pointed object is never served from an old entry, with no window;
//! * the watch removes entries at once when it sees a deletion, and after a re-list forgets every
//!   entry whose object is gone or was replaced ([`CredentialsRegistry::remove_if`],
//!   [`CredentialsRegistry::retain_live`]), so memory and the per-credentials metric series shrink
//!   with the objects;
//! * a validation finishing after its object was deleted is not stored
//!   ([`CredentialsRegistry::put_if_current`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::crd::credentials::{AllowedNamespaces, CredentialsTarget};
use crate::crd::job_run::CredentialsKind;
use crate::crd::{ClusterDbtCloudCredentials, DbtCloudCredentials, DbtCloudJobRun};
use crate::dbt_cloud::DbtCloudClient;
use crate::metrics::Metrics;

/// Identifies a credentials object.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CredentialsKey {
    /// Kind of the object.
    pub kind: CredentialsKind,
    /// Namespace (`None` for cluster-scoped credentials).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl CredentialsKey {
    /// The credentials a run names in `spec.credentialsRef` (namespaced ones live in the run's
    /// namespace).
    pub fn of_run(run: &DbtCloudJobRun) -> Self {
        let r = &run.spec.credentials_ref;
        CredentialsKey {
            kind: r.kind,
            namespace: (r.kind == CredentialsKind::DbtCloudCredentials)
                .then(|| run.namespace().unwrap_or_default()),
            name: r.name.clone(),
        }
    }

    /// A sort key: kind, namespace, name.
    pub fn sort_key(&self) -> (&'static str, &str, &str) {
        (
            self.kind_name(),
            self.namespace.as_deref().unwrap_or_default(),
            &self.name,
        )
    }

    /// The kind's name, as in metrics labels and messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            CredentialsKind::DbtCloudCredentials => "DbtCloudCredentials",
            CredentialsKind::ClusterDbtCloudCredentials => "ClusterDbtCloudCredentials",
        }
    }
}

impl std::fmt::Display for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?} {ns}/{}", self.kind, self.name),
            None => write!(f, "{:?} {}", self.kind, self.name),
        }
    }
}

/// A credentials object as the API server has it now (from the watch's reflector store).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveCredentials {
    /// The object's uid: a deleted and re-created object has a new one.
    pub uid: String,
    /// What a client is built from (account, host, Secret).
    pub target: CredentialsTarget,
    /// For cluster-scoped credentials, which namespaces may use them, as the object says now.
    pub allowed_namespaces: Option<AllowedNamespaces>,
    /// The object is being deleted (it has a deletionTimestamp).
    pub deleting: bool,
}

/// What the operator validated about one credentials object.
#[derive(Clone, Debug)]
pub struct CredentialsEntry {
    /// Uid of the object that was validated.
    pub uid: String,
    /// The target that was validated; the entry is used only while the object still has it.
    pub target: CredentialsTarget,
    /// Spec generation that was validated.
    pub generation: Option<i64>,
    /// Fingerprint of the key that was validated.
    pub fingerprint: Option<String>,
    /// A client, present when the credentials are ready.
    pub client: Option<DbtCloudClient>,
    /// Reason of the Ready condition.
    pub reason: crate::crd::reasons::Reason,
    /// Message of the Ready condition.
    pub message: String,
    /// Whether only a user change can make them ready (as opposed to an outage).
    pub stalled: bool,
}

impl CredentialsEntry {
    /// True when a client is available.
    pub fn is_ready(&self) -> bool {
        self.client.is_some()
    }

    fn is_for(&self, live: &LiveCredentials) -> bool {
        self.uid == live.uid && self.target == live.target
    }
}

/// Outcome of looking up the credentials a run names.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// No such object (deleted, or never created).
    Missing,
    /// The object exists but is being deleted: it is no longer used.
    Deleting,
    /// The object exists, but this object (uid) with this spec has not been validated yet.
    NotValidated,
    /// The validation of exactly this object and spec.
    Found(Box<CredentialsEntry>),
}

/// Shared registry (cheap clone).
#[derive(Clone, Debug, Default)]
pub struct CredentialsRegistry {
    entries: Arc<RwLock<HashMap<CredentialsKey, CredentialsEntry>>>,
    metrics: Option<Arc<Metrics>>,
}

impl CredentialsRegistry {
    /// A registry that keeps the `credentials_ready` series of `metrics` in step with its entries.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self {
            entries: Arc::default(),
            metrics: Some(metrics),
        }
    }

    /// The entry for `key` if it belongs to `live`, the object that exists now (`None`: no object).
    pub fn lookup(&self, key: &CredentialsKey, live: Option<&LiveCredentials>) -> Lookup {
        let Some(live) = live else {
            return Lookup::Missing;
        };
        if live.deleting {
            return Lookup::Deleting;
        }
        match crate::sync::read(&self.entries).get(key) {
            Some(entry) if entry.is_for(live) => Lookup::Found(Box::new(entry.clone())),
            _ => Lookup::NotValidated,
        }
    }

    /// The client of `key`, if the object `live` exists and was validated as ready.
    pub fn client(
        &self,
        key: &CredentialsKey,
        live: Option<&LiveCredentials>,
    ) -> Option<DbtCloudClient> {
        match self.lookup(key, live) {
            Lookup::Found(entry) => entry.client,
            _ => None,
        }
    }

    /// Stores the validation of `key` if the object still exists as validated: `live_now` is read
    /// under the registry's lock, so a deletion the watch has applied meanwhile is not undone by a
    /// validation that was still running. Returns whether the entry was stored.
    pub fn put_if_current(
        &self,
        key: CredentialsKey,
        entry: CredentialsEntry,
        live_now: impl FnOnce() -> Option<LiveCredentials>,
    ) -> bool {
        let mut entries = crate::sync::write(&self.entries);
        let current = live_now().is_some_and(|live| !live.deleting && entry.is_for(&live));
        if !current {
            return false;
        }
        self.set_metric(&key, Some(entry.is_ready()));
        entries.insert(key, entry);
        true
    }

    /// Forgets `key` (the object is gone or going). With `uid`, only an entry of that object is
    /// removed, not one of a newer object with the same name. Returns whether one was removed.
    pub fn remove_if(&self, key: &CredentialsKey, uid: Option<&str>) -> bool {
        let mut entries = crate::sync::write(&self.entries);
        let matches = entries
            .get(key)
            .is_some_and(|e| uid.is_none_or(|u| e.uid == u));
        if matches {
            entries.remove(key);
        }
        // The series goes with the object even when no validation was stored.
        if matches || !entries.contains_key(key) {
            self.set_metric(key, None);
        }
        matches
    }

    /// Keeps only entries of `kind` whose object still exists as validated (after a re-list of
    /// that kind's watch, which reports no deletions). Returns the keys removed.
    pub fn retain_live(
        &self,
        kind: CredentialsKind,
        live: impl Fn(&CredentialsKey) -> Option<LiveCredentials>,
    ) -> Vec<CredentialsKey> {
        let mut entries = crate::sync::write(&self.entries);
        let mut removed = Vec::new();
        entries.retain(|key, entry| {
            let keep =
                key.kind != kind || live(key).is_some_and(|l| !l.deleting && l.uid == entry.uid);
            if !keep {
                removed.push(key.clone());
            }
            keep
        });
        for key in &removed {
            self.set_metric(key, None);
        }
        removed.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        removed
    }

    /// Keys of every entry, sorted (for tests and debugging).
    pub fn keys(&self) -> Vec<CredentialsKey> {
        let mut keys: Vec<_> = crate::sync::read(&self.entries).keys().cloned().collect();
        keys.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        keys
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        crate::sync::read(&self.entries).len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set_metric(&self, key: &CredentialsKey, ready: Option<bool>) {
        if let Some(m) = &self.metrics {
            m.set_credentials_ready(
                key.kind_name(),
                key.namespace.as_deref().unwrap_or_default(),
                &key.name,
                ready,
            );
        }
    }
}

/// The reflector stores of both credentials kinds, each filled by the one watch of its kind.
#[derive(Clone)]
pub struct CredentialsStores {
    /// `DbtCloudCredentials`.
    pub namespaced: Store<DbtCloudCredentials>,
    /// `ClusterDbtCloudCredentials`.
    pub cluster: Store<ClusterDbtCloudCredentials>,
    /// Where the Secrets of cluster-scoped credentials live.
    pub operator_namespace: String,
}

impl std::fmt::Debug for CredentialsStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsStores")
            .field("namespaced", &self.namespaced.state().len())
            .field("cluster", &self.cluster.state().len())
            .finish()
    }
}

impl CredentialsStores {
    /// The object named by `key` as the watch has it now.
    pub fn live(&self, key: &CredentialsKey) -> Option<LiveCredentials> {
        match key.kind {
            CredentialsKind::DbtCloudCredentials => {
                let ns = key.namespace.as_deref()?;
                let obj = self.namespaced.get(&ObjectRef::new(&key.name).within(ns))?;
                Some(live_of(obj.as_ref(), obj.target(), None))
            }
            CredentialsKind::ClusterDbtCloudCredentials => {
                let obj = self.cluster.get(&ObjectRef::new(&key.name))?;
                Some(live_of(
                    obj.as_ref(),
                    obj.target(&self.operator_namespace),
                    Some(obj.spec.allowed_namespaces.clone()),
                ))
            }
        }
    }

    /// Whether both watches have listed their objects once (before that, a missing object may
    /// only not be listed yet).
    pub fn synced(&self) -> bool {
        use futures::FutureExt;
        let ready = |f: Option<Result<(), _>>| f.is_some_and(|r: Result<(), _>| r.is_ok());
        ready(self.namespaced.wait_until_ready().now_or_never())
            && ready(self.cluster.wait_until_ready().now_or_never())
    }
}

fn live_of<K: kube::Resource>(
    obj: &K,
    target: CredentialsTarget,
    allowed_namespaces: Option<AllowedNamespaces>,
) -> LiveCredentials {
    LiveCredentials {
        uid: obj.meta().uid.clone().unwrap_or_default(),
        target,
        allowed_namespaces,
        deleting: obj.meta().deletion_timestamp.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::credentials::on_watch_event;
    use crate::crd::{ClusterDbtCloudCredentialsSpec, DbtCloudCredentialsSpec, SecretKeyRef};
    use kube::api::ObjectMeta;
    use kube::runtime::{reflector, watcher};

    fn creds(ns: &str, name: &str, uid: &str, account: i64) -> DbtCloudCredentials {
        DbtCloudCredentials {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: DbtCloudCredentialsSpec {
                account_id: account,
                host: "cloud.getdbt.com".into(),
                api_key_secret_ref: SecretKeyRef {
                    name: "dbt".into(),
                    key: "apiKey".into(),
                },
            },
            status: None,
        }
    }

    fn cluster(name: &str, uid: &str, allowed: &[&str]) -> ClusterDbtCloudCredentials {
        ClusterDbtCloudCredentials {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: ClusterDbtCloudCredentialsSpec {
                account_id: 7,
                host: "cloud.getdbt.com".into(),
                api_key_secret_ref: SecretKeyRef {
                    name: "dbt".into(),
                    key: "apiKey".into(),
                },
                allowed_namespaces: AllowedNamespaces {
                    names: allowed.iter().map(|s| s.to_string()).collect(),
                    selector: None,
                },
            },
            status: None,
        }
    }

    struct World {
        stores: CredentialsStores,
        namespaced: reflector::store::Writer<DbtCloudCredentials>,
        cluster: reflector::store::Writer<ClusterDbtCloudCredentials>,
        registry: CredentialsRegistry,
        metrics: Arc<Metrics>,
    }

    impl World {
        fn new() -> Self {
            let (ns_store, mut namespaced) = reflector::store();
            let (cl_store, mut cluster) = reflector::store();
            namespaced.apply_watcher_event(&watcher::Event::InitDone);
            cluster.apply_watcher_event(&watcher::Event::InitDone);
            let metrics = Arc::new(Metrics::new());
            World {
                stores: CredentialsStores {
                    namespaced: ns_store,
                    cluster: cl_store,
                    operator_namespace: "dbt-cloud-operator".into(),
                },
                namespaced,
                cluster,
                registry: CredentialsRegistry::with_metrics(metrics.clone()),
                metrics,
            }
        }

        /// What the namespaced watch does with an event: store first, then the registry. Returns
        /// the credentials whose runs are reconciled.
        fn watch(&mut self, event: watcher::Event<DbtCloudCredentials>) -> Vec<CredentialsKey> {
            self.namespaced.apply_watcher_event(&event);
            let stores = self.stores.clone();
            on_watch_event(&self.registry, |k| stores.live(k), &event)
        }

        /// The same for the cluster-scoped watch.
        fn watch_cluster(
            &mut self,
            event: watcher::Event<ClusterDbtCloudCredentials>,
        ) -> Vec<CredentialsKey> {
            self.cluster.apply_watcher_event(&event);
            let stores = self.stores.clone();
            on_watch_event(&self.registry, |k| stores.live(k), &event)
        }

        /// What the credentials reconciler does after validating the object `key` names.
        fn validate(&self, key: &CredentialsKey, ready: bool) -> bool {
            let live = self.stores.live(key).expect("object in the store");
            self.validated(key, live, ready)
        }

        /// Stores a validation of `live` (an earlier read of the object).
        fn validated(&self, key: &CredentialsKey, live: LiveCredentials, ready: bool) -> bool {
            let entry = CredentialsEntry {
                uid: live.uid,
                target: live.target,
                generation: None,
                fingerprint: None,
                client: ready.then(test_client),
                reason: if ready {
                    crate::crd::reasons::Reason::Valid
                } else {
                    crate::crd::reasons::Reason::Unauthorized
                },
                message: String::new(),
                stalled: !ready,
            };
            self.registry
                .put_if_current(key.clone(), entry, || self.stores.live(key))
        }

        fn lookup(&self, key: &CredentialsKey) -> Lookup {
            self.registry.lookup(key, self.stores.live(key).as_ref())
        }

        fn has_series(&self, name: &str) -> bool {
            self.metrics.encode().contains(&format!("name=\"{name}\""))
        }
    }

    fn test_client() -> DbtCloudClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = crate::dbt_cloud::ClientConfig::default();
        DbtCloudClient::new(
            crate::dbt_cloud::AccessHost::parse("cloud.getdbt.com", &config.allowed_host_suffixes)
                .unwrap(),
            7,
            secrecy::SecretString::from("dbtc_test".to_string()),
            crate::dbt_cloud::http_client(&config).unwrap(),
            crate::dbt_cloud::AccountLimits::unlimited(),
            Arc::new(config),
            Arc::new(crate::dbt_cloud::NoopObserver),
        )
        .unwrap()
    }

    fn key(ns: &str, name: &str) -> CredentialsKey {
        CredentialsKey {
            kind: CredentialsKind::DbtCloudCredentials,
            namespace: Some(ns.into()),
            name: name.into(),
        }
    }

    fn cluster_key(name: &str) -> CredentialsKey {
        CredentialsKey {
            kind: CredentialsKind::ClusterDbtCloudCredentials,
            namespace: None,
            name: name.into(),
        }
    }

    #[test]
    fn deleted_credentials_are_not_found_and_leave_the_registry_and_metrics() {
        let mut w = World::new();
        let acme = creds("team-a", "acme", "uid-1", 7);
        let k = key("team-a", "acme");
        assert_eq!(
            w.watch(watcher::Event::Apply(acme.clone())),
            vec![k.clone()]
        );
        assert!(w.validate(&k, true));
        assert!(matches!(w.lookup(&k), Lookup::Found(e) if e.is_ready()));
        assert!(w.has_series("acme"));

        // `kubectl delete dbtcred acme`: its runs are reconciled, and find nothing.
        assert_eq!(w.watch(watcher::Event::Delete(acme)), vec![k.clone()]);
        assert!(
            matches!(w.lookup(&k), Lookup::Missing),
            "{:?}",
            w.lookup(&k)
        );
        assert!(w.registry.client(&k, w.stores.live(&k).as_ref()).is_none());
        assert!(w.registry.is_empty(), "{:?}", w.registry.keys());
        assert!(!w.has_series("acme"));
    }

    #[test]
    fn deleted_cluster_credentials_serve_no_namespace() {
        let mut w = World::new();
        let k = cluster_key("shared");
        w.watch_cluster(watcher::Event::Apply(cluster(
            "shared",
            "uid-1",
            &["a", "b"],
        )));
        assert!(w.validate(&k, true));
        w.watch_cluster(watcher::Event::Delete(cluster(
            "shared",
            "uid-1",
            &["a", "b"],
        )));
        assert!(matches!(w.lookup(&k), Lookup::Missing));
        assert!(w.registry.is_empty());
    }

    #[test]
    fn recreated_credentials_are_not_served_from_the_old_validation() {
        let mut w = World::new();
        let k = key("team-a", "acme");
        w.watch(watcher::Event::Apply(creds("team-a", "acme", "uid-1", 7)));
        assert!(w.validate(&k, true));
        // Deleted and re-created (the watch may even miss the deletion): a new uid.
        w.watch(watcher::Event::Apply(creds("team-a", "acme", "uid-2", 7)));
        assert!(
            matches!(w.lookup(&k), Lookup::NotValidated),
            "{:?}",
            w.lookup(&k)
        );
        // A late deletion event of the old object does not remove the new object's validation.
        assert!(w.validate(&k, true));
        assert!(!w.registry.remove_if(&k, Some("uid-1")));
        assert!(matches!(w.lookup(&k), Lookup::Found(e) if e.uid == "uid-2"));
        // A changed account or Secret needs a new validation before it is used.
        w.watch(watcher::Event::Apply(creds("team-a", "acme", "uid-2", 8)));
        assert!(matches!(w.lookup(&k), Lookup::NotValidated));
    }

    #[test]
    fn a_validation_finishing_after_the_deletion_is_not_stored() {
        let mut w = World::new();
        let k = key("team-a", "acme");
        let acme = creds("team-a", "acme", "uid-1", 7);
        w.watch(watcher::Event::Apply(acme.clone()));
        let read = w.stores.live(&k).unwrap();
        // Deleted while the key was being checked against dbt Cloud.
        w.watch(watcher::Event::Delete(acme));
        assert!(!w.validated(&k, read, true));
        assert!(w.registry.is_empty());
        assert!(!w.has_series("acme"));
    }

    #[test]
    fn a_relist_forgets_objects_deleted_while_the_watch_was_down() {
        let mut w = World::new();
        let (a, b) = (key("team-a", "acme"), key("team-b", "beta"));
        w.watch(watcher::Event::Apply(creds("team-a", "acme", "uid-1", 7)));
        w.watch(watcher::Event::Apply(creds("team-b", "beta", "uid-2", 7)));
        w.watch_cluster(watcher::Event::Apply(cluster("shared", "uid-3", &["x"])));
        assert!(w.validate(&a, true) && w.validate(&b, false));
        assert!(w.validate(&cluster_key("shared"), true));
        // Re-list of the namespaced kind: only `beta` is left; `acme`'s runs are reconciled.
        w.watch(watcher::Event::Init);
        w.watch(watcher::Event::InitApply(creds(
            "team-b", "beta", "uid-2", 7,
        )));
        assert_eq!(w.watch(watcher::Event::InitDone), vec![a]);
        assert_eq!(w.registry.keys(), vec![cluster_key("shared"), b.clone()]);
        // Re-list of the cluster kind: the cluster credentials are gone too.
        w.watch_cluster(watcher::Event::Init);
        assert_eq!(
            w.watch_cluster(watcher::Event::InitDone),
            vec![cluster_key("shared")]
        );
        assert_eq!(w.registry.keys(), vec![b]);
        assert!(!w.has_series("acme") && !w.has_series("shared"));
    }

    #[test]
    fn cluster_credentials_report_their_current_allowed_namespaces() {
        let mut w = World::new();
        let k = cluster_key("shared");
        w.watch_cluster(watcher::Event::Apply(cluster(
            "shared",
            "uid-1",
            &["a", "b"],
        )));
        assert!(w.validate(&k, true));
        w.watch_cluster(watcher::Event::Apply(cluster("shared", "uid-1", &["b"])));
        let live = w.stores.live(&k).unwrap();
        assert_eq!(live.allowed_namespaces.unwrap().names, vec!["b"]);
        // Allowed namespaces are not part of the validation: the entry stays usable.
        assert!(matches!(w.lookup(&k), Lookup::Found(_)));
    }

    #[test]
    fn credentials_being_deleted_are_not_used() {
        let mut w = World::new();
        let k = key("team-a", "acme");
        let mut acme = creds("team-a", "acme", "uid-1", 7);
        w.watch(watcher::Event::Apply(acme.clone()));
        assert!(w.validate(&k, true));
        acme.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        w.watch(watcher::Event::Apply(acme));
        assert!(matches!(w.lookup(&k), Lookup::Deleting));
    }

    /// A panic while the lock was held (a bug) does not take every later reconcile down with it.
    #[test]
    fn a_poisoned_lock_is_recovered() {
        let registry = CredentialsRegistry::default();
        crate::sync::poison(|| registry.entries.write());
        assert!(registry.entries.is_poisoned());
        let obj = creds("ns", "dbt", "uid-1", 1);
        let key = crate::controller::credentials::key_of(&obj);
        assert_eq!(registry.len(), 0);
        assert!(registry.keys().is_empty());
        assert!(!registry.remove_if(&key, None));
        let live = live_of(&obj, obj.target(), None);
        assert!(matches!(
            registry.lookup(&key, Some(&live)),
            Lookup::NotValidated
        ));
    }
}
