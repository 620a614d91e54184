//! Reconcile bookkeeping of this replica: one reconcile per object at a time ([`Busy`]), and the
//! resourceVersion each object was last written at, so a reconcile that the
//! watch cache has not caught up with yet (it still holds the object as it was before our own
//! write) waits a moment instead of deciding on stale state: that decision could only be a
//! rejected write (409) or a repeated question to dbt Cloud. An entry lives until the cache
//! shows the written version, or the object is deleted.

use std::collections::HashMap;
use std::sync::Mutex;

/// Last written resourceVersion per object uid.
#[derive(Debug, Default)]
pub struct WrittenVersions {
    versions: Mutex<HashMap<String, u64>>,
}

/// What a reconcile should do with the object it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Freshness {
    /// The object is at least as new as our last write of it.
    Current,
    /// Our last write is newer than what the cache holds: wait for the watch.
    Stale,
}

impl WrittenVersions {
    /// Records that we wrote the object `uid` and it is now at `resource_version`.
    pub fn wrote(&self, uid: &str, resource_version: &str) {
        if let Ok(v) = resource_version.parse::<u64>() {
            let mut m = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            let e = m.entry(uid.to_string()).or_insert(v);
            *e = (*e).max(v);
        }
    }

    /// Whether the cache's copy (at `resource_version`) has caught up with our last write.
    /// resourceVersions are opaque by contract; etcd's are increasing integers, and anything
    /// else is taken as current.
    pub fn check(&self, uid: &str, resource_version: &str) -> Freshness {
        let Ok(seen) = resource_version.parse::<u64>() else {
            return Freshness::Current;
        };
        let mut m = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(uid) {
            Some(&written) if seen < written => Freshness::Stale,
            Some(_) => {
                m.remove(uid);
                Freshness::Current
            }
            None => Freshness::Current,
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, uid: &str) {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Objects with an entry (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Objects being reconciled right now (by the controller or the report lane).
#[derive(Debug, Default)]
pub struct Busy {
    uids: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Held while an object is reconciled; releases it on drop.
#[derive(Debug)]
pub struct BusyGuard {
    uids: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
    uid: String,
}

impl Busy {
    /// Marks `uid` busy, or `None` when it already is.
    pub fn enter(&self, uid: &str) -> Option<BusyGuard> {
        let fresh = self
            .uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string());
        fresh.then(|| BusyGuard {
            uids: self.uids.clone(),
            uid: uid.to_string(),
        })
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_copy_than_our_write_is_stale_until_the_cache_catches_up() {
        let w = WrittenVersions::default();
        assert_eq!(w.check("a", "10"), Freshness::Current, "never written");
        w.wrote("a", "12");
        w.wrote("a", "11");
        assert_eq!(w.check("a", "10"), Freshness::Stale);
        assert_eq!(
            w.check("a", "11"),
            Freshness::Stale,
            "the newest write counts"
        );
        assert_eq!(w.check("a", "12"), Freshness::Current);
        assert!(w.is_empty(), "caught up: the entry is gone");
        w.wrote("b", "5");
        w.forget("b");
        assert!(w.is_empty());
        w.wrote("c", "not-a-number");
        assert_eq!(w.check("c", "x"), Freshness::Current);
    }

    #[test]
    fn one_reconcile_of_an_object_at_a_time() {
        let busy = Busy::default();
        let first = busy.enter("a").expect("free");
        assert!(busy.enter("a").is_none(), "busy while held");
        assert!(busy.enter("b").is_some(), "other objects are free");
        drop(first);
        assert!(busy.enter("a").is_some(), "free again");
    }
}
