//! The operator's one lock-poisoning policy: a poisoned lock is recovered, never propagated.
//!
//! A `std::sync` lock is poisoned when a thread panics while holding it. The operator's locks guard
//! caches (the credentials registry, the poller's tracked runs, the run-phase gauges, the rate
//! limiters' buckets) whose critical sections are short, never await, and call nothing that
//! panics in normal operation. A panic inside one is a bug, and tokio has already reported it; what
//! it can leave behind is at worst a stale entry that the next watch event or reconcile corrects.
//! Propagating the poison instead would make every later reconcile that touches the lock panic
//! too, taking the whole operator down for one bug. So every lock in the operator is taken through
//! [`lock`], [`read`] or [`write()`], which hand out the guard whether or not the lock is poisoned.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, recovering it if a panic poisoned it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `lock`, recovering it if a panic poisoned it.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, recovering it if a panic poisoned it.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Test helper: poisons `hold`'s lock the way a bug would, by panicking in a thread while `hold`
/// holds it.
#[cfg(test)]
pub(crate) fn poison<G>(hold: impl FnOnce() -> G + Send) {
    std::thread::scope(|s| {
        let _ = s
            .spawn(|| {
                let _guard = hold();
                panic!("poisoning a lock on purpose");
            })
            .join();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_handed_out_after_a_panic() {
        let (mutex, rw) = (Mutex::new(1), RwLock::new(1));
        poison(|| mutex.lock());
        poison(|| rw.write());
        assert!(mutex.is_poisoned() && rw.is_poisoned());
        *lock(&mutex) += 1;
        *write(&rw) += 1;
        assert_eq!((*lock(&mutex), *read(&rw)), (2, 2));
    }
}
