//! Per-account client-side rate limiting.
//!
//! A small async token bucket written here rather than pulling in `governor`:
//! we need exactly one feature (await a permit, with counters), and a
//! reservation-based bucket is ~60 lines. Each caller *reserves* a token under
//! a mutex (the balance may go negative) and then sleeps until its token has
//! accrued, so waiters are served in arrival order without polling.
//!
//! [`RateLimiterRegistry`] hands out one [`AccountLimits`] per `(host, account)`
//! so every client of the same dbt Cloud account shares the same budgets. It
//! keeps them only while some client holds them: when the last credentials of an
//! account are deleted (and their clients dropped), the account leaves the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Rate and burst of one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// Sustained requests per minute (0 is treated as 1).
    pub per_minute: u32,
    /// Bucket capacity: requests allowed back to back (0 is treated as 1).
    pub burst: u32,
}

impl LimitSpec {
    /// `per_minute` with a burst of one tenth of it (at least 1).
    pub fn per_minute(per_minute: u32) -> Self {
        LimitSpec {
            per_minute,
            burst: (per_minute / 10).max(1),
        }
    }
}

/// Budgets applied to each account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Administrative (v2/v3 REST) API budget; default 5,000/min.
    pub admin: LimitSpec,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            admin: LimitSpec::per_minute(5_000),
        }
    }
}

/// Counters of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Permits handed out.
    pub permits: u64,
    /// Permits that had to wait.
    pub waits: u64,
    /// Total time spent waiting.
    pub waited: Duration,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct BucketInner {
    state: Mutex<BucketState>,
    capacity: f64,
    per_second: f64,
    permits: AtomicU64,
    waits: AtomicU64,
    waited_nanos: AtomicU64,
}

/// An async token bucket (cheap clone; clones share the budget).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    inner: Arc<BucketInner>,
}

impl TokenBucket {
    /// A full bucket for `spec`.
    pub fn new(spec: LimitSpec) -> Self {
        let capacity = f64::from(spec.burst.max(1));
        TokenBucket {
            inner: Arc::new(BucketInner {
                state: Mutex::new(BucketState {
                    tokens: capacity,
                    last: Instant::now(),
                }),
                capacity,
                per_second: f64::from(spec.per_minute.max(1)) / 60.0,
                permits: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                waited_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Reserves one token; returns how long the caller must wait for it.
    fn reserve(&self, commit_if_waiting: bool) -> Option<Duration> {
        let inner = &self.inner;
        let mut st = crate::sync::lock(&inner.state);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
        st.tokens = (st.tokens + elapsed * inner.per_second).min(inner.capacity);
        st.last = now;
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            return Some(Duration::ZERO);
        }
        if !commit_if_waiting {
            return None;
        }
        let deficit = 1.0 - st.tokens;
        st.tokens -= 1.0;
        Some(Duration::from_secs_f64(deficit / inner.per_second))
    }

    /// Waits for a permit; returns the time waited (zero when none was needed).
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve(true).unwrap_or_default();
        self.inner.permits.fetch_add(1, Ordering::Relaxed);
        if wait.is_zero() {
            return Duration::ZERO;
        }
        self.inner.waits.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(wait).await;
        let waited = started.elapsed();
        self.inner
            .waited_nanos
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        waited
    }

    /// Takes a permit if one is available now, without waiting.
    pub fn try_acquire(&self) -> bool {
        let ok = self.reserve(false).is_some();
        if ok {
            self.inner.permits.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Counters so far.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            permits: self.inner.permits.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.inner.waited_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Whether two handles share one bucket.
    pub fn same_bucket(&self, other: &TokenBucket) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// The budgets of one account (cheap clone, shared).
#[derive(Debug, Clone)]
pub struct AccountLimits {
    inner: Arc<Budgets>,
}

#[derive(Debug)]
struct Budgets {
    admin: TokenBucket,
}

impl AccountLimits {
    /// Fresh, unshared budgets (tests, or a single client).
    pub fn new(config: RateLimitConfig) -> Self {
        AccountLimits {
            inner: Arc::new(Budgets {
                admin: TokenBucket::new(config.admin),
            }),
        }
    }

    /// Effectively unlimited budgets.
    pub fn unlimited() -> Self {
        let spec = LimitSpec {
            per_minute: u32::MAX,
            burst: u32::MAX,
        };
        AccountLimits::new(RateLimitConfig { admin: spec })
    }

    /// The administrative API budget.
    pub fn admin(&self) -> &TokenBucket {
        &self.inner.admin
    }
}

/// Hands out one shared [`AccountLimits`] per `(host, account id)`. Cheap clone.
///
/// The map holds the budgets weakly: they live as long as a client (of any credentials for that
/// account) holds them, so the map follows the credentials that exist instead of growing with
/// every account ever seen. A budget re-created after a gap starts full, like a fresh operator.
#[derive(Debug, Clone, Default)]
pub struct RateLimiterRegistry {
    config: RateLimitConfig,
    accounts: Arc<Mutex<BudgetMap>>,
}

/// Budgets by `(lower-cased host, account id)`, held weakly.
type BudgetMap = HashMap<(String, i64), Weak<Budgets>>;

impl RateLimiterRegistry {
    /// A registry applying `config` to every account.
    pub fn new(config: RateLimitConfig) -> Self {
        RateLimiterRegistry {
            config,
            accounts: Arc::default(),
        }
    }

    /// The budgets of `account_id` on `host` (created on first use; host is case-insensitive).
    pub fn for_account(&self, host: &str, account_id: i64) -> AccountLimits {
        let key = (host.trim().to_ascii_lowercase(), account_id);
        let mut map = crate::sync::lock(&self.accounts);
        map.retain(|_, budgets| budgets.strong_count() > 0);
        if let Some(inner) = map.get(&key).and_then(Weak::upgrade) {
            return AccountLimits { inner };
        }
        let limits = AccountLimits::new(self.config);
        map.insert(key, Arc::downgrade(&limits.inner));
        limits
    }

    /// Number of accounts whose budgets some client still holds.
    pub fn len(&self) -> usize {
        let mut map = crate::sync::lock(&self.accounts);
        map.retain(|_, budgets| budgets.strong_count() > 0);
        map.len()
    }

    /// Whether no client holds any budget.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuses_without_waiting() {
        let b = TokenBucket::new(LimitSpec {
            per_minute: 1,
            burst: 3,
        });
        assert!(b.try_acquire());
        assert!(b.try_acquire());
        assert!(b.try_acquire());
        assert!(!b.try_acquire());
        assert_eq!(b.stats().permits, 3);
        assert_eq!(b.stats().waits, 0);
    }

    #[tokio::test]
    async fn acquire_waits_once_burst_is_spent() {
        // 600/min = one token per 100 ms; burst 1.
        let b = TokenBucket::new(LimitSpec {
            per_minute: 600,
            burst: 1,
        });
        assert_eq!(b.acquire().await, Duration::ZERO);
        assert_eq!(b.stats().waits, 0);
        b.acquire().await;
        b.acquire().await;
        let s = b.stats();
        assert_eq!(s.permits, 3);
        assert!(s.waits >= 1, "{s:?}");
    }

    #[test]
    fn registry_shares_per_account() {
        let r = RateLimiterRegistry::new(RateLimitConfig::default());
        let a = r.for_account("cloud.getdbt.com", 1);
        let b = r.clone().for_account("Cloud.GetDBT.com", 1);
        let c = r.for_account("cloud.getdbt.com", 2);
        let d = r.for_account("emea.dbt.com", 1);
        assert!(a.admin().same_bucket(b.admin()));
        assert!(!a.admin().same_bucket(c.admin()));
        assert!(!a.admin().same_bucket(d.admin()));
        assert_eq!(r.len(), 3);
        assert!(a.admin().try_acquire());
        assert_eq!(b.admin().stats().permits, 1);
    }

    #[test]
    fn registry_forgets_accounts_no_client_holds() {
        let r = RateLimiterRegistry::new(RateLimitConfig::default());
        let a = r.for_account("cloud.getdbt.com", 1);
        let b = r.for_account("cloud.getdbt.com", 2);
        assert_eq!(r.len(), 2);
        drop(a);
        assert_eq!(
            r.len(),
            1,
            "account 1 has no client left: its budget must go"
        );
        // Still shared while held.
        let b2 = r.for_account("cloud.getdbt.com", 2);
        assert!(b.admin().same_bucket(b2.admin()));
        drop((b, b2));
        assert!(r.is_empty());
    }

    #[test]
    fn defaults() {
        let c = RateLimitConfig::default();
        assert_eq!(c.admin.per_minute, 5_000);
    }
}
