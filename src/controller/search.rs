//! Finding the dbt Cloud run of a recorded trigger whose outcome is unknown (lost response, crash
//! between the request and the status write): IO around the pure [`RunSearch`] query, used by the
//! reconciler before deciding whether to send a trigger again, and by the deletion path before
//! cancelling.
//!
//! The run of a trigger is newer than the lower bound recorded with its intent
//! ([`RunSearch::lower_bound`]: the job's newest run before the trigger, or the failed run a native
//! retry retries), because dbt Cloud run ids only grow. The search lists the job's runs newer than
//! the bound (`id__gt`), newest first (`order_by=-id`), page after page (`limit`/`offset`, as the
//! OpenAPI list-runs operation describes), until it has read all of them, however many other runs
//! (CI, schedules, other objects) were created since. It reads nothing older: it also stops at a
//! page holding a run at or below the bound, should `id__gt` ever be ignored.
//!
//! Cost: one request per 100 runs created since the trigger was recorded, at most
//! [`MAX_SEARCH_PAGES`]. Past that, one more page reads the runs right after the bound (oldest
//! first), where the trigger's run was created; if it is not there either, the search is
//! [`PendingSearch::Incomplete`] and the trigger is never sent again (see the lifecycle).

use std::time::Duration;

use super::lifecycle::{PendingSearch, RunSearch};
use super::poller::observe;
use crate::dbt_cloud::{
    parse_timestamp, DbtCloudClient, DbtCloudError, ListRunsParams, Run, MAX_PAGE_SIZE,
};

/// Most pages (of 100 runs, newest first) one search reads: 5,000 runs of the job created since
/// the trigger was recorded.
pub const MAX_SEARCH_PAGES: u32 = 50;

/// Intents recorded by earlier operator versions have no bound: their search ends at runs created
/// this long before the recorded trigger time (room for clock skew between operator and dbt Cloud).
pub const UNBOUNDED_SEARCH_MARGIN: Duration = Duration::from_secs(15 * 60);

/// What a search found.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// The run of the trigger (the oldest match), or why there is none.
    pub outcome: PendingSearch,
    /// Further in-flight runs carrying the same token: duplicates made by a mistake elsewhere,
    /// to be cancelled.
    pub duplicates: Vec<i64>,
    /// List requests made.
    pub pages: u32,
}

/// Looks for the run a pending trigger may have created among every run of its job newer than the
/// recorded bound: the run carrying the token in its cause (or, for native retries, retrying the
/// failed run). Several runs with the same token are duplicates made by someone else's mistake:
/// the oldest is adopted, the others are returned to be cancelled.
pub async fn find_pending_run(
    client: &DbtCloudClient,
    search: &RunSearch,
) -> Result<SearchResult, DbtCloudError> {
    find_pending_run_within(client, search, MAX_SEARCH_PAGES).await
}

/// [`find_pending_run`] reading at most `max_pages` pages newest first (tests use a small cap).
pub async fn find_pending_run_within(
    client: &DbtCloudClient,
    search: &RunSearch,
    max_pages: u32,
) -> Result<SearchResult, DbtCloudError> {
    let bound = search.lower_bound();
    let mut matches = Vec::new();
    let mut read: u32 = 0;
    let mut offset: u32 = 0;
    let mut pages: u32 = 0;
    while pages < max_pages {
        let page = client
            .list_runs(&page_params(search, bound, "-id", offset))
            .await?;
        pages += 1;
        let n = page.items.len() as u32;
        read += n;
        let done = covers_the_rest(&page.items, search, offset, page.total_count);
        matches.extend(page.items.into_iter().filter(|r| is_match(r, search)));
        if done {
            return Ok(choose(matches, pages));
        }
        offset += n;
    }
    if matches.is_empty() && bound.is_some() {
        // Not all newer runs were read. The trigger's run was created right after the bound was
        // taken: read the oldest runs after it too.
        let page = client
            .list_runs(&page_params(search, bound, "id", 0))
            .await?;
        pages += 1;
        matches.extend(page.items.into_iter().filter(|r| is_match(r, search)));
    }
    if matches.is_empty() {
        tracing::warn!(
            job_id = search.job_id,
            runs_read = read,
            "gave up looking for the run of a recorded trigger: too many newer runs"
        );
        return Ok(SearchResult {
            outcome: PendingSearch::Incomplete { runs_read: read },
            duplicates: Vec::new(),
            pages,
        });
    }
    Ok(choose(matches, pages))
}

fn page_params(search: &RunSearch, bound: Option<i64>, order: &str, offset: u32) -> ListRunsParams {
    ListRunsParams {
        job_definition_id: Some(search.job_id),
        id_gt: bound,
        order_by: Some(order.into()),
        include_related: vec!["trigger".into()],
        limit: Some(MAX_PAGE_SIZE),
        offset: Some(offset),
        ..Default::default()
    }
}

/// Whether the runs read so far (this page, newest first, at `offset`) include every run that may
/// be the trigger's: the list is exhausted, or the page reaches the bound (or, without one, runs
/// created well before the trigger was recorded).
fn covers_the_rest(page: &[Run], search: &RunSearch, offset: u32, total: Option<i64>) -> bool {
    let n = page.len() as u32;
    if n == 0 {
        return true;
    }
    let exhausted = match total {
        Some(total) => i64::from(offset + n) >= total,
        None => n < MAX_PAGE_SIZE,
    };
    let reached_bound = match search.lower_bound() {
        Some(bound) => page.iter().any(|r| r.id <= bound),
        None => {
            let horizon = search
                .requested_at
                .checked_sub(UNBOUNDED_SEARCH_MARGIN)
                .unwrap_or(search.requested_at);
            page.iter().any(|r| {
                r.created_at
                    .as_deref()
                    .and_then(parse_timestamp)
                    .is_some_and(|created| created < horizon)
            })
        }
    };
    exhausted || reached_bound
}

/// Whether a run is the one a search looks for: newer than the bound, and carrying the token (or,
/// for native retries, naming the failed run in `retrying_run_id`: dbt Cloud sets it on the retry
/// run, which keeps the failed run's trigger and so its older token).
fn is_match(run: &Run, search: &RunSearch) -> bool {
    if search.lower_bound().is_some_and(|bound| run.id <= bound) {
        return false;
    }
    let token = run
        .cause()
        .is_some_and(|c| c.contains(search.token.as_str()));
    match search.retry_of_run_id {
        Some(of) => run.retrying_run_id == Some(of) || token,
        None => token,
    }
}

/// The oldest match is the run; later in-flight matches are duplicates.
fn choose(mut matches: Vec<Run>, pages: u32) -> SearchResult {
    matches.sort_by_key(|r| r.id);
    matches.dedup_by_key(|r| r.id);
    let Some(first) = matches.first() else {
        return SearchResult {
            outcome: PendingSearch::NotFound,
            duplicates: Vec::new(),
            pages,
        };
    };
    SearchResult {
        outcome: PendingSearch::Found(observe(first)),
        duplicates: matches
            .iter()
            .skip(1)
            .filter(|r| !r.status.is_terminal())
            .map(|r| r.id)
            .collect(),
        pages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbt_cloud::RunStatus;
    use jiff::Timestamp;

    fn run(id: i64, cause: &str, retrying: Option<i64>, created: &str) -> Run {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "status": RunStatus::Running.code(),
            "job_definition_id": 7,
            "trigger": {"cause": cause},
            "retrying_run_id": retrying,
            "created_at": created,
        }))
        .unwrap()
    }

    fn query(after: Option<i64>, retry_of: Option<i64>) -> RunSearch {
        RunSearch {
            job_id: 7,
            token: "[dco:u#2]".into(),
            retry_of_run_id: retry_of,
            after_run_id: after,
            requested_at: "2030-01-01T12:00:00Z".parse::<Timestamp>().unwrap(),
        }
    }

    const T: &str = "2030-01-01 12:00:01+00:00";

    #[test]
    fn matches_by_token_or_retried_run_and_never_at_or_below_the_bound() {
        let q = query(Some(100), None);
        assert!(is_match(&run(101, "x [dco:u#2]", None, T), &q));
        assert!(!is_match(&run(101, "x [dco:u#1]", None, T), &q));
        assert!(!is_match(&run(101, "x [dco:u#22]", None, T), &q));
        assert!(
            !is_match(&run(100, "x [dco:u#2]", None, T), &q),
            "not newer"
        );
        let retry = query(Some(100), Some(100));
        assert!(is_match(&run(105, "x [dco:u#1]", Some(100), T), &retry));
        assert!(!is_match(&run(105, "x [dco:u#1]", Some(99), T), &retry));
        // The bound is the larger of the two.
        assert_eq!(query(Some(90), Some(100)).lower_bound(), Some(100));
        assert_eq!(query(Some(120), Some(100)).lower_bound(), Some(120));
        assert_eq!(query(None, None).lower_bound(), None);
    }

    #[test]
    fn paging_stops_when_the_list_is_exhausted_or_the_bound_is_reached() {
        let q = query(Some(100), None);
        let full: Vec<Run> = (0..100).map(|i| run(1000 - i, "", None, T)).collect();
        assert!(!covers_the_rest(&full, &q, 0, Some(250)));
        assert!(
            covers_the_rest(&full, &q, 200, Some(250)),
            "offset+n ≥ total"
        );
        assert!(!covers_the_rest(&full, &q, 0, None), "full page, no total");
        assert!(covers_the_rest(&full[..40], &q, 0, None), "short page");
        assert!(covers_the_rest(&[], &q, 0, Some(250)));
        // `id__gt` ignored by the server: a page reaching the bound ends the search.
        let mut reaching = full.clone();
        reaching.push(run(100, "", None, T));
        assert!(covers_the_rest(&reaching, &q, 0, Some(10_000)));
    }

    #[test]
    fn without_a_bound_paging_stops_at_runs_created_well_before_the_trigger() {
        let q = query(None, None);
        let recent: Vec<Run> = (0..100)
            .map(|i| run(1000 - i, "", None, "2030-01-01 11:50:00+00:00"))
            .collect();
        assert!(
            !covers_the_rest(&recent, &q, 0, Some(10_000)),
            "within the margin"
        );
        let mut old = recent.clone();
        old.push(run(5, "", None, "2030-01-01 11:40:00+00:00"));
        assert!(covers_the_rest(&old, &q, 0, Some(10_000)));
    }

    #[test]
    fn oldest_match_is_adopted_and_in_flight_later_ones_are_duplicates() {
        let a = run(101, "[dco:u#2]", None, T);
        let b = run(150, "[dco:u#2]", None, T);
        let r = choose(vec![b.clone(), a.clone(), b], 3);
        assert!(matches!(&r.outcome, PendingSearch::Found(f) if f.id == 101));
        assert_eq!(r.duplicates, vec![150]);
        assert_eq!(r.pages, 3);
        assert_eq!(choose(Vec::new(), 1).outcome, PendingSearch::NotFound);
    }
}
