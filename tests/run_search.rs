//! The search for the dbt Cloud run of a trigger whose outcome is unknown, with a real client
//! against the simulator: the run is found however many newer runs of the job exist, the search
//! reads only runs newer than the bound recorded with the intent, and a run that was never created
//! is reported missing only after every newer run was read.

use std::sync::Arc;
use std::time::Duration;

use dbt_cloud_operator::controller::lifecycle::{attempt_token, PendingSearch, RunSearch};
use dbt_cloud_operator::controller::search::{find_pending_run, find_pending_run_within};
use dbt_cloud_operator::dbt_cloud::*;
use dbt_cloud_simulator::{Fault, JobBehavior, JobSpec, Outcome, Simulator};
use jiff::Timestamp;
use secrecy::SecretString;
use url::Url;

const KEY: &str = "dbtc_run_search_key_0a1b2c";
const ACCOUNT: i64 = 1;
const JOB: i64 = 100;
const FLAKY: i64 = 101;
const UID: &str = "5d9a3c1e-0000-4000-8000-000000000001";

fn fast(outcome: Outcome) -> JobBehavior {
    JobBehavior {
        queued: Duration::from_millis(1),
        starting: Duration::from_millis(1),
        running: Duration::from_millis(1),
        outcome,
        retry_outcome: Outcome::Success,
    }
}

async fn setup() -> (Simulator, DbtCloudClient) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start().await.unwrap();
    sim.add_account(ACCOUNT, "Acme");
    sim.add_token(KEY, &[ACCOUNT]);
    sim.add_project(ACCOUNT, 10, "analytics");
    sim.add_environment(ACCOUNT, 10, 20, "production");
    for (id, outcome) in [(JOB, Outcome::Success), (FLAKY, Outcome::FailAtStep(2))] {
        sim.add_job(
            ACCOUNT,
            JobSpec {
                id,
                project_id: 10,
                environment_id: 20,
                name: format!("job {id}"),
                steps: vec!["dbt seed".into(), "dbt build".into()],
                behavior: fast(outcome),
            },
        );
    }
    let config = ClientConfig {
        request_timeout: Duration::from_secs(10),
        max_attempts: 2,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        insecure_base_url_override: Some(Url::parse(&sim.base_url()).unwrap()),
        ..Default::default()
    };
    let client = DbtCloudClient::new(
        AccessHost::parse("cloud.getdbt.com", DEFAULT_ALLOWED_SUFFIXES).unwrap(),
        ACCOUNT,
        SecretString::from(KEY.to_string()),
        http_client(&config).unwrap(),
        AccountLimits::unlimited(),
        Arc::new(config),
        Arc::new(NoopObserver),
    )
    .unwrap();
    (sim, client)
}

/// The job's newest run id (0 without runs): the bound the operator records before a trigger.
async fn newest_run_id(c: &DbtCloudClient, job: i64) -> i64 {
    let page = c
        .list_runs(&ListRunsParams {
            job_definition_id: Some(job),
            order_by: Some("-id".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    page.items.first().map_or(0, |r| r.id)
}

/// Runs of the same job made by others (CI, schedules, other objects).
async fn others_trigger(c: &DbtCloudClient, job: i64, n: usize) {
    for i in 0..n {
        c.trigger_run(job, &TriggerRunRequest::new(format!("CI run {i}")).unwrap())
            .await
            .unwrap();
    }
}

fn list_requests(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/runs/"))
        .count()
}

fn search(token: &str, after_run_id: Option<i64>, retry_of: Option<i64>, job: i64) -> RunSearch {
    RunSearch {
        job_id: job,
        token: token.into(),
        retry_of_run_id: retry_of,
        after_run_id,
        requested_at: Timestamp::now(),
    }
}

#[tokio::test]
async fn lost_trigger_is_found_behind_more_than_a_page_of_newer_runs() {
    let (sim, c) = setup().await;
    others_trigger(&c, JOB, 5).await;
    let after = newest_run_id(&c, JOB).await;
    let token = attempt_token(UID, 1);
    sim.inject(Fault::LoseTriggerResponse { count: 1 });
    let lost = c
        .trigger_run(
            JOB,
            &TriggerRunRequest::new(format!("Triggered by dbt-cloud-operator {token}")).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(lost.is_ambiguous_for_trigger(), "{lost}");
    let lost_run = sim.triggers().last().unwrap().run_id;
    others_trigger(&c, JOB, 150).await;

    sim.clear_requests();
    let found = find_pending_run(&c, &search(&token, Some(after), None, JOB))
        .await
        .unwrap();
    match &found.outcome {
        PendingSearch::Found(run) => assert_eq!(run.id, lost_run),
        other => panic!("the lost trigger's run {lost_run} was not found: {other:?}"),
    }
    assert!(found.duplicates.is_empty());
    // 151 runs are newer than the bound: two pages, and nothing older is read.
    assert_eq!(list_requests(&sim), 2, "{:?}", sim.requests());
    assert!(sim
        .requests()
        .iter()
        .all(|r| r.query.contains(&format!("id__gt={after}"))));
    assert_eq!(
        sim.trigger_count(ACCOUNT, JOB),
        5 + 1 + 150,
        "no new trigger"
    );
}

#[tokio::test]
async fn trigger_that_never_arrived_is_missing_after_every_newer_run_was_read() {
    let (sim, c) = setup().await;
    others_trigger(&c, JOB, 30).await;
    let after = newest_run_id(&c, JOB).await;
    let token = attempt_token(UID, 1);
    // The POST never reached dbt Cloud; meanwhile others trigger 250 runs.
    others_trigger(&c, JOB, 250).await;
    sim.clear_requests();
    let found = find_pending_run(&c, &search(&token, Some(after), None, JOB))
        .await
        .unwrap();
    assert_eq!(found.outcome, PendingSearch::NotFound);
    assert_eq!(list_requests(&sim), 3, "250 newer runs: three pages");
}

#[tokio::test]
async fn lost_native_retry_is_found_behind_more_than_a_page_of_newer_runs() {
    let (sim, c) = setup().await;
    let failed = c
        .trigger_run(
            FLAKY,
            &TriggerRunRequest::new(format!("first {}", attempt_token(UID, 1))).unwrap(),
        )
        .await
        .unwrap()
        .id;
    sim.finish_run(ACCOUNT, failed, Outcome::FailAtStep(2));
    let f = c.get_run(failed, &[]).await.unwrap();
    assert_eq!(f.status, RunStatus::Error);
    // The retry is created; its answer is dropped on the floor (as a lost response would be).
    let retry = c.retry_run(failed).await.unwrap().id;
    // The retry run names the run it retries (and keeps the failed run's trigger and cause).
    let r = c.get_run(retry, &["trigger"]).await.unwrap();
    assert_eq!(r.retrying_run_id, Some(failed));
    others_trigger(&c, FLAKY, 150).await;

    sim.clear_requests();
    let token = attempt_token(UID, 2);
    let found = find_pending_run(&c, &search(&token, Some(failed), Some(failed), FLAKY))
        .await
        .unwrap();
    match &found.outcome {
        PendingSearch::Found(run) => assert_eq!(run.id, retry),
        other => panic!("the native retry {retry} was not found: {other:?}"),
    }
    assert_eq!(list_requests(&sim), 2);
}

#[tokio::test]
async fn past_the_page_cap_the_runs_right_after_the_bound_are_read_then_it_gives_up() {
    let (sim, c) = setup().await;
    let after = newest_run_id(&c, JOB).await;
    let token = attempt_token(UID, 1);
    sim.inject(Fault::LoseTriggerResponse { count: 1 });
    c.trigger_run(JOB, &TriggerRunRequest::new(format!("x {token}")).unwrap())
        .await
        .unwrap_err();
    let lost_run = sim.triggers().last().unwrap().run_id;
    others_trigger(&c, JOB, 250).await;

    // Two pages (newest first) do not reach it; the oldest runs after the bound do.
    sim.clear_requests();
    let found = find_pending_run_within(&c, &search(&token, Some(after), None, JOB), 2)
        .await
        .unwrap();
    assert!(
        matches!(&found.outcome, PendingSearch::Found(r) if r.id == lost_run),
        "{found:?}"
    );
    assert_eq!((found.pages, list_requests(&sim)), (3, 3));

    // A trigger that never arrived: past the cap its outcome stays unknown (never "not found").
    let other = attempt_token(UID, 2);
    let found = find_pending_run_within(&c, &search(&other, Some(after), None, JOB), 2)
        .await
        .unwrap();
    assert_eq!(found.outcome, PendingSearch::Incomplete { runs_read: 200 });
}

#[tokio::test]
async fn intent_without_a_bound_from_an_earlier_version_is_still_found() {
    let (sim, c) = setup().await;
    let token = attempt_token(UID, 1);
    sim.inject(Fault::LoseTriggerResponse { count: 1 });
    c.trigger_run(JOB, &TriggerRunRequest::new(format!("x {token}")).unwrap())
        .await
        .unwrap_err();
    let lost_run = sim.triggers().last().unwrap().run_id;
    others_trigger(&c, JOB, 150).await;
    let found = find_pending_run(&c, &search(&token, None, None, JOB))
        .await
        .unwrap();
    assert!(
        matches!(&found.outcome, PendingSearch::Found(r) if r.id == lost_run),
        "{found:?}"
    );
}
