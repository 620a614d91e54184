//! In-memory registry of credentials: the validated state and a ready-to-use dbt Cloud client per
//! credentials object. The credentials reconciler writes it; the run reconciler reads it, so runs
//! never read Secrets themselves and a rotated key reaches every run at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::crd::credentials::AllowedNamespaces;
use crate::crd::job_run::CredentialsKind;
use crate::dbt_cloud::DbtCloudClient;

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

impl std::fmt::Display for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?} {ns}/{}", self.kind, self.name),
            None => write!(f, "{:?} {}", self.kind, self.name),
        }
    }
}

/// What the operator knows about one credentials object.
#[derive(Clone, Debug)]
pub struct CredentialsEntry {
    /// Spec generation that was validated.
    pub generation: Option<i64>,
    /// Fingerprint of the key that was validated.
    pub fingerprint: Option<String>,
    /// dbt Cloud account id.
    pub account_id: i64,
    /// Access host.
    pub host: String,
    /// A client, present when the credentials are ready.
    pub client: Option<DbtCloudClient>,
    /// CamelCase reason of the Ready condition.
    pub reason: String,
    /// Message of the Ready condition.
    pub message: String,
    /// Whether only a user change can make them ready (as opposed to an outage).
    pub stalled: bool,
    /// For cluster-scoped credentials: which namespaces may use them.
    pub allowed_namespaces: Option<AllowedNamespaces>,
}

impl CredentialsEntry {
    /// True when a client is available.
    pub fn is_ready(&self) -> bool {
        self.client.is_some()
    }
}

/// Shared registry (cheap clone).
#[derive(Clone, Debug, Default)]
pub struct CredentialsRegistry {
    entries: Arc<RwLock<HashMap<CredentialsKey, CredentialsEntry>>>,
}

impl CredentialsRegistry {
    /// The entry for a key.
    pub fn get(&self, key: &CredentialsKey) -> Option<CredentialsEntry> {
        self.entries
            .read()
            .expect("registry lock")
            .get(key)
            .cloned()
    }

    /// Stores an entry.
    pub fn put(&self, key: CredentialsKey, entry: CredentialsEntry) {
        self.entries
            .write()
            .expect("registry lock")
            .insert(key, entry);
    }

    /// Forgets an entry (the object was deleted).
    pub fn remove(&self, key: &CredentialsKey) {
        self.entries.write().expect("registry lock").remove(key);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.read().expect("registry lock").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
