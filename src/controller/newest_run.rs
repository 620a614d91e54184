//! The newest dbt Cloud run each account is known to have, from the operator's own triggers: a
//! lower bound for the search of a trigger whose answer is lost, without asking dbt Cloud first.
//!
//! Run ids grow with creation across a dbt Cloud deployment (the search by `afterRunId` relies on
//! it in any case), so a run this operator created a moment ago has a smaller id than any run a
//! trigger sent after it creates: it is a valid bound for every job of the account. A bound
//! observed recently keeps the search short (only runs created since); an older one is not used,
//! and the job's newest run is asked for instead, as before. In a burst of triggers this halves the
//! dbt Cloud calls per trigger, whose account budget is the bound of the burst (see BENCHMARKS.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a created run's id serves as the bound of later triggers of the same account.
pub const FRESH_FOR: Duration = Duration::from_secs(30);

/// Newest run created per `(access host, account)`, with when it was created.
#[derive(Debug, Default)]
pub struct NewestRuns {
    by_account: Mutex<HashMap<(String, i64), (i64, Instant)>>,
}

impl NewestRuns {
    /// Records that `run_id` was just created in `account` (a trigger's answer).
    pub fn created(&self, account: (&str, i64), run_id: i64, now: Instant) {
        let mut map = crate::sync::lock(&self.by_account);
        // Entries past their use are dropped here, so the map holds only active accounts.
        map.retain(|_, (_, at)| now.saturating_duration_since(*at) < FRESH_FOR);
        let entry = map
            .entry((account.0.to_string(), account.1))
            .or_insert((run_id, now));
        if run_id >= entry.0 {
            *entry = (run_id, now);
        }
    }

    /// A run id of `account` created within [`FRESH_FOR`] of `now`, the newest known.
    pub fn recent(&self, account: (&str, i64), now: Instant) -> Option<i64> {
        let map = crate::sync::lock(&self.by_account);
        map.get(&(account.0.to_string(), account.1))
            .filter(|(_, at)| now.saturating_duration_since(*at) < FRESH_FOR)
            .map(|(id, _)| *id)
    }

    /// Accounts remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.by_account).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_trigger_bounds_the_account_and_an_old_one_does_not() {
        let runs = NewestRuns::default();
        let t0 = Instant::now();
        let acme = ("cloud.getdbt.com", 1);
        assert_eq!(runs.recent(acme, t0), None, "nothing known: ask dbt Cloud");
        runs.created(acme, 100, t0);
        assert_eq!(runs.recent(acme, t0 + Duration::from_secs(1)), Some(100));
        // Another account, or the same id on another deployment, is not bounded by it.
        assert_eq!(runs.recent(("cloud.getdbt.com", 2), t0), None);
        assert_eq!(runs.recent(("emea.dbt.com", 1), t0), None);
        // Answers arriving out of order never lower the bound's id.
        runs.created(acme, 90, t0 + Duration::from_secs(2));
        assert_eq!(runs.recent(acme, t0 + Duration::from_secs(2)), Some(100));
        runs.created(acme, 120, t0 + Duration::from_secs(3));
        assert_eq!(runs.recent(acme, t0 + Duration::from_secs(3)), Some(120));
        // Too old to keep the search short: not used, and dropped with the next record.
        let later = t0 + Duration::from_secs(3) + FRESH_FOR;
        assert_eq!(runs.recent(acme, later), None);
        runs.created(("cloud.getdbt.com", 2), 7, later);
        assert_eq!(runs.len(), 1);
    }
}
