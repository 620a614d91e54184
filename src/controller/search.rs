//! Finding the dbt Cloud run of a recorded trigger whose outcome is unknown (lost response, crash
//! between the request and the status write): IO around the pure [`RunSearch`] query, used by the
//! reconciler before deciding whether to send a trigger again, and by the deletion path before
//! cancelling.

use super::lifecycle::{PendingSearch, RunSearch};
use super::poller::observe;
use crate::dbt_cloud::{DbtCloudClient, DbtCloudError, ListRunsParams, Run};

/// What a search found.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// The run of the trigger (the oldest match), or why there is none.
    pub outcome: PendingSearch,
    /// Further in-flight runs carrying the same token: duplicates made by a mistake elsewhere,
    /// to be cancelled.
    pub duplicates: Vec<i64>,
}

/// Looks for the run a pending trigger may have created: the newest runs of the job carrying the
/// token in their cause (or, for native retries, retrying the failed run). Several runs with the
/// same token are duplicates made by someone else's mistake: the oldest is adopted, the others are
/// returned to be cancelled.
pub async fn find_pending_run(
    client: &DbtCloudClient,
    search: &RunSearch,
) -> Result<SearchResult, DbtCloudError> {
    let params = ListRunsParams {
        job_definition_id: Some(search.job_id),
        order_by: Some("-id".into()),
        include_related: vec!["trigger".into()],
        limit: Some(100),
        id_gt: search.retry_of_run_id,
        ..Default::default()
    };
    let page = client.list_runs(&params).await?;
    let matches: Vec<Run> = page
        .items
        .into_iter()
        .filter(|r| is_match(r, search))
        .collect();
    Ok(choose(matches))
}

/// Whether a run is the one a search looks for.
fn is_match(run: &Run, search: &RunSearch) -> bool {
    let token = run
        .cause()
        .is_some_and(|c| c.contains(search.token.as_str()));
    match search.retry_of_run_id {
        Some(of) => run.retrying_run_id == Some(of) || token,
        None => token,
    }
}

/// The oldest match is the run; later in-flight matches are duplicates.
fn choose(mut matches: Vec<Run>) -> SearchResult {
    matches.sort_by_key(|r| r.id);
    matches.dedup_by_key(|r| r.id);
    let Some(first) = matches.first() else {
        return SearchResult {
            outcome: PendingSearch::NotFound,
            duplicates: Vec::new(),
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
    }
}
