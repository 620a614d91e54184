//! Behaviour of every served endpoint, the run lifecycle, faults and the request log, over HTTP.
//! Every wait is bounded; nothing asserts on elapsed time.

use std::time::Duration;

use dbt_cloud_simulator::{
    Fault, FaultScope, JobBehavior, JobSpec, Outcome, RandomFaults, Seed, Simulator,
};
use serde_json::{json, Value};

const TOKEN: &str = "dbtc_secret_one";
const OTHER: &str = "dbtc_secret_two";

fn fast(outcome: Outcome) -> JobBehavior {
    JobBehavior {
        queued: Duration::from_millis(1),
        starting: Duration::from_millis(1),
        running: Duration::from_millis(20),
        outcome,
        retry_outcome: Outcome::Success,
    }
}

fn job(id: i64, env: i64, name: &str, steps: &[&str], behavior: JobBehavior) -> JobSpec {
    JobSpec {
        id,
        project_id: 10,
        environment_id: env,
        name: name.into(),
        steps: steps.iter().map(|s| s.to_string()).collect(),
        behavior,
    }
}

/// Account 1 (token `TOKEN`) with project 10, environments 20/21 and jobs 100 (succeeds),
/// 101 (fails at `dbt run`), 102 (runs for ten minutes); account 2 (token `OTHER`).
async fn setup() -> (Simulator, Api) {
    let sim = Simulator::start().await.unwrap();
    sim.add_account(1, "Acme");
    sim.add_account(2, "Other corp");
    sim.add_token(TOKEN, &[1]);
    sim.add_token(OTHER, &[2]);
    sim.add_project(1, 10, "analytics");
    sim.add_project(1, 11, "Marketing");
    sim.add_project(2, 12, "theirs");
    sim.add_environment(1, 10, 20, "production");
    sim.add_environment(1, 10, 21, "staging");
    sim.add_environment(1, 11, 22, "mkt prod");
    let three = ["dbt seed", "dbt run", "dbt test"];
    sim.add_job(
        1,
        job(
            100,
            20,
            "nightly",
            &["dbt seed", "dbt build"],
            fast(Outcome::Success),
        ),
    );
    sim.add_job(
        1,
        job(101, 20, "broken", &three, fast(Outcome::FailAtStep(2))),
    );
    sim.add_job(
        1,
        job(
            102,
            21,
            "slow",
            &["dbt build"],
            JobBehavior {
                running: Duration::from_secs(600),
                ..fast(Outcome::Success)
            },
        ),
    );
    let api = Api {
        http: http_client(),
        base: sim.base_url(),
        auth: Some(format!("Token {TOKEN}")),
    };
    (sim, api)
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    auth: Option<String>,
}

impl Api {
    fn with_auth(&self, auth: Option<&str>) -> Api {
        Api {
            auth: auth.map(str::to_string),
            ..self.clone()
        }
    }
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let req = match &self.auth {
            Some(a) => req.header("Authorization", a),
            None => req,
        };
        let resp = req.send().await.expect("response");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
    async fn trigger(&self, job: i64, cause: &str) -> i64 {
        let (status, body) = self
            .post(
                &format!("/api/v2/accounts/1/jobs/{job}/run/"),
                json!({ "cause": cause }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["id"].as_i64().unwrap()
    }
    /// Polls the run until `done` holds (bounded).
    async fn wait_for(&self, run: i64, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/api/v2/accounts/1/runs/{run}/?include_related=trigger,run_steps");
        let poll = async {
            loop {
                let (status, body) = self.get(&path).await;
                if status == 200 && done(&body["data"]) {
                    return body["data"].clone();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), poll)
            .await
            .expect("run reached the expected state in time")
    }
    async fn wait_complete(&self, run: i64) -> Value {
        self.wait_for(run, |r| r["is_complete"] == true).await
    }
}

fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["status"]["is_success"], false, "{body}");
    assert_eq!(body["status"]["code"], expected, "{body}");
    assert!(body["status"]["user_message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["status"]["developer_message"].is_string());
    assert!(body["data"].is_null());
}

fn step_names(run: &Value) -> Vec<String> {
    run["run_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn accounts_are_those_of_the_token() {
    let (_sim, api) = setup().await;
    let (status, body) = api.get("/api/v3/accounts/").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"]["is_success"], true);
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Acme"]);
    assert_eq!(body["extra"]["pagination"]["total_count"], 1);
    let (status, body) = api.get("/api/v2/accounts/1/").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["id"], 1);
    assert_eq!(body["data"]["name"], "Acme");
    // Bearer works as well as Token.
    let (status, _) = api
        .with_auth(Some(&format!("Bearer {TOKEN}")))
        .get("/api/v2/accounts/1/")
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn authentication_and_authorization_errors() {
    let (_sim, api) = setup().await;
    let (s, b) = api.with_auth(None).get("/api/v3/accounts/").await;
    assert_error(s, &b, 401);
    let (s, b) = api
        .with_auth(Some("Token nope"))
        .get("/api/v2/accounts/1/runs/")
        .await;
    assert_error(s, &b, 401);
    let (s, b) = api.with_auth(Some(TOKEN)).get("/api/v2/accounts/1/").await;
    assert_error(s, &b, 401);
    // A valid token for another account: 403.
    let (s, b) = api
        .with_auth(Some(&format!("Token {OTHER}")))
        .get("/api/v2/accounts/1/jobs/")
        .await;
    assert_error(s, &b, 403);
    let (s, b) = api.get("/api/v2/accounts/999/").await;
    assert_error(s, &b, 404);
    let (s, b) = api.get("/api/v2/accounts/1/runs/123/").await;
    assert_error(s, &b, 404);
    let (s, b) = api.get("/api/v2/accounts/1/jobs/999/").await;
    assert_error(s, &b, 404);
    let (s, b) = api
        .post("/api/v2/accounts/1/jobs/999/run/", json!({"cause": "x"}))
        .await;
    assert_error(s, &b, 404);
    let (s, b) = api.get("/api/v2/nothing/").await;
    assert_error(s, &b, 404);
}

#[tokio::test]
async fn projects_and_environments_with_filters() {
    let (_sim, api) = setup().await;
    let (s, b) = api.get("/api/v3/accounts/1/projects/").await;
    assert_eq!(s, 200);
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    let (_, b) = api
        .get("/api/v3/accounts/1/projects/?name__icontains=MARKET")
        .await;
    assert_eq!(b["data"][0]["id"], 11);
    assert_eq!(b["extra"]["pagination"]["total_count"], 1);
    let (_, b) = api
        .get("/api/v3/accounts/1/projects/?limit=1&offset=1")
        .await;
    assert_eq!(b["data"][0]["id"], 11);
    assert_eq!(b["extra"]["pagination"]["count"], 1);
    assert_eq!(b["extra"]["pagination"]["total_count"], 2);

    let (s, b) = api
        .get("/api/v3/accounts/1/projects/10/environments/")
        .await;
    assert_eq!(s, 200);
    let ids: Vec<i64> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [20, 21]);
    let (_, b) = api
        .get("/api/v3/accounts/1/projects/10/environments/?name__icontains=stag")
        .await;
    assert_eq!(b["data"][0]["name"], "staging");
    assert_eq!(b["data"][0]["project_id"], 10);
    let (s, b) = api.get("/api/v2/accounts/1/environments/").await;
    assert_eq!(s, 200);
    assert_eq!(b["data"].as_array().unwrap().len(), 3);
    let (_, b) = api
        .get("/api/v2/accounts/1/environments/?project_id=11")
        .await;
    assert_eq!(b["data"][0]["id"], 22);
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn jobs_list_and_get() {
    let (_sim, api) = setup().await;
    let (s, b) = api.get("/api/v2/accounts/1/jobs/").await;
    assert_eq!(s, 200);
    assert_eq!(b["data"].as_array().unwrap().len(), 3);
    let (_, b) = api.get("/api/v2/accounts/1/jobs/?environment_id=21").await;
    assert_eq!(b["data"][0]["id"], 102);
    let (_, b) = api
        .get("/api/v2/accounts/1/jobs/?project_id=10&name__icontains=BROK")
        .await;
    assert_eq!(b["data"][0]["id"], 101);
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
    let (_, b) = api
        .get("/api/v2/accounts/1/jobs/?order_by=-id&limit=2")
        .await;
    let ids: Vec<i64> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [102, 101]);
    assert_eq!(b["extra"]["pagination"]["total_count"], 3);
    let (s, b) = api.get("/api/v2/accounts/1/jobs/101/").await;
    assert_eq!(s, 200);
    assert_eq!(b["data"]["name"], "broken");
    assert_eq!(
        b["data"]["execute_steps"],
        json!(["dbt seed", "dbt run", "dbt test"])
    );
    assert_eq!(b["data"]["environment_id"], 20);
}

#[tokio::test]
async fn trigger_validates_cause_and_stores_overrides() {
    let (sim, api) = setup().await;
    let path = "/api/v2/accounts/1/jobs/100/run/";
    let (s, b) = api.post(path, json!({})).await;
    assert_error(s, &b, 400);
    let (s, b) = api.post(path, json!({"cause": "x".repeat(256)})).await;
    assert_error(s, &b, 400);
    assert!(b["status"]["user_message"]
        .as_str()
        .unwrap()
        .contains("255"));
    let (s, b) = api
        .post(path, json!({"cause": "c", "git_branch": ""}))
        .await;
    assert_error(s, &b, 400);
    let (s, b) = api
        .post(path, json!({"cause": "c", "threads_override": "four"}))
        .await;
    assert_error(s, &b, 400);
    assert_eq!(
        sim.trigger_count(1, 100),
        0,
        "rejected triggers create no run"
    );

    let (s, b) = api.post(path, json!({"cause": "x".repeat(255)})).await;
    assert_eq!(s, 200, "{b}");
    let overrides = json!({
        "cause": "Triggered by the operator",
        "git_sha": "abc123", "git_branch": "feature/x", "azure_pull_request_id": 1,
        "github_pull_request_id": 2, "gitlab_merge_request_id": 3, "non_native_pull_request_id": 4,
        "schema_override": "pr_42", "dbt_version_override": "1.8.0", "threads_override": 8,
        "target_name_override": "ci", "generate_docs_override": true, "timeout_seconds_override": 600,
        "steps_override": ["dbt build -s orders"],
    });
    let (s, b) = api.post(path, overrides.clone()).await;
    assert_eq!(s, 200, "{b}");
    let run = &b["data"];
    assert_eq!(run["status"], 1);
    assert_eq!(run["status_humanized"], "Queued");
    assert_eq!(run["job_definition_id"], 100);
    assert_eq!(run["job_id"], 100);
    assert_eq!(run["in_progress"], true);
    assert_eq!(run["git_branch"], "feature/x");
    let trigger = &run["trigger"];
    for (k, v) in overrides.as_object().unwrap() {
        assert_eq!(&trigger[k], v, "trigger.{k}");
    }
    let id = run["id"].as_i64().unwrap();
    assert_eq!(
        run["href"],
        format!("https://cloud.getdbt.com/deploy/1/projects/10/runs/{id}/")
    );
    let done = api.wait_complete(id).await;
    assert_eq!(
        step_names(&done),
        [
            "Clone git repository",
            "Create profile from connection Snowflake",
            "Invoke dbt with `dbt deps`",
            "Invoke dbt with `dbt build -s orders`"
        ]
    );
    assert_eq!(sim.trigger_count(1, 100), 2);
    let triggers = sim.triggers();
    assert_eq!(triggers.last().unwrap().run_id, id);
    assert_eq!(triggers.last().unwrap().cause, "Triggered by the operator");

    // The form-encoded body the OpenAPI file also documents.
    let resp = api
        .http
        .post(format!("{}{path}", api.base))
        .header("Authorization", format!("Token {TOKEN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("cause=form+cause&threads_override=2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["data"]["trigger"]["cause"], "form cause");
    assert_eq!(b["data"]["trigger"]["threads_override"], 2);
}

#[tokio::test]
async fn a_run_goes_through_its_lifecycle_and_succeeds() {
    let (sim, api) = setup().await;
    let id = api.trigger(100, "lifecycle").await;
    let done = api.wait_complete(id).await;
    assert_eq!(done["status"], 10);
    assert_eq!(done["status_humanized"], "Success");
    assert_eq!(
        (
            done["is_success"].clone(),
            done["is_error"].clone(),
            done["is_cancelled"].clone(),
            done["in_progress"].clone()
        ),
        (json!(true), json!(false), json!(false), json!(false))
    );
    for key in [
        "created_at",
        "updated_at",
        "dequeued_at",
        "started_at",
        "finished_at",
        "duration",
        "queued_duration",
        "run_duration",
        "duration_humanized",
    ] {
        assert!(done[key].is_string(), "{key}: {done}");
    }
    assert_eq!(done["can_retry"], false);
    assert_eq!(done["retry_not_supported_reason"], "RETRY_NOT_FAILED_RUN");
    let steps = done["run_steps"].as_array().unwrap();
    assert_eq!(
        step_names(&done),
        [
            "Clone git repository",
            "Create profile from connection Snowflake",
            "Invoke dbt with `dbt deps`",
            "Invoke dbt with `dbt seed`",
            "Invoke dbt with `dbt build`"
        ]
    );
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["index"], i + 1);
        assert_eq!(s["run_id"], id);
        assert_eq!(s["account_id"], 1);
        assert_eq!(s["status"], 10);
        assert_eq!(s["status_humanized"], "Success");
        assert!(s["logs"].is_string() && s["finished_at"].is_string());
    }
    // Steps and trigger only when asked for: `[]` and `null` otherwise, as dbt Cloud answers.
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!(b["data"]["run_steps"], json!([]));
    assert!(b["data"].get("trigger").is_some_and(Value::is_null));
    let (_, b) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{id}/?include_related=job"
        ))
        .await;
    assert_eq!(b["data"]["job"]["id"], 100);
    assert_eq!(sim.run(1, id).unwrap()["status"], 10);
    assert_eq!(sim.runs(1).len(), 1);
    assert!(sim.run(2, id).is_none());
}

#[tokio::test]
async fn a_job_runs_one_run_at_a_time() {
    let (sim, api) = setup().await;
    let first = api.trigger(102, "first").await;
    let second = api.trigger(102, "second").await;
    api.wait_for(first, |r| r["status"] == 3).await;
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{second}/")).await;
    assert_eq!(b["data"]["status"], 1, "queued behind the running run");
    assert!(b["data"]["dequeued_at"].is_null());
    // Another job is not blocked.
    let other = api.trigger(100, "other job").await;
    assert_eq!(api.wait_complete(other).await["status"], 10);
    sim.finish_run(1, first, Outcome::Success);
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{first}/")).await;
    assert_eq!(b["data"]["status"], 10);
    let running = api.wait_for(second, |r| r["status"] == 3).await;
    assert!(running["dequeued_at"].is_string());
    sim.finish_run(1, second, Outcome::FailAtStep(1));
    let failed = api.wait_complete(second).await;
    assert_eq!(failed["status"], 20);
    assert_eq!(failed["is_error"], true);
}

#[tokio::test]
async fn failure_at_a_chosen_step_and_native_retry() {
    let (sim, api) = setup().await;
    let id = api.trigger(101, "will fail").await;
    let failed = api.wait_complete(id).await;
    assert_eq!(failed["status"], 20);
    assert_eq!(failed["status_humanized"], "Error");
    assert_eq!(failed["can_retry"], true);
    let steps = failed["run_steps"].as_array().unwrap();
    // Clone, profile, `dbt deps`, then the job's commands: FailAtStep(2) is step 3 + 2.
    assert_eq!(steps.len(), 5, "later steps do not run: {steps:?}");
    assert_eq!(steps[4]["index"], 5);
    assert_eq!(steps[4]["name"], "Invoke dbt with `dbt run`");
    assert_eq!(steps[4]["status"], 20);
    assert_eq!(steps[4]["status_humanized"], "Error");
    assert!(steps[4]["logs"]
        .as_str()
        .unwrap()
        .contains("Database Error in model orders"));
    assert_eq!(steps[3]["status"], 10);

    let (s, b) = api
        .get(&format!("/api/v2/accounts/1/runs/{id}/retry/"))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["failed_step"], "Invoke dbt with `dbt run`");
    assert_eq!(
        b["data"]["skipped_steps"],
        json!(["Invoke dbt with `dbt test`"])
    );

    let (s, b) = api
        .post(&format!("/api/v2/accounts/1/runs/{id}/retry/"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let retry = b["data"]["id"].as_i64().unwrap();
    assert_ne!(retry, id);
    let done = api.wait_complete(retry).await;
    assert_eq!(done["status"], 10, "retry_outcome defaults to success");
    assert_eq!(done["retrying_run_id"], id);
    assert_eq!(
        step_names(&done)[3..],
        ["Invoke dbt with `dbt run`", "Invoke dbt with `dbt test`"]
    );
    assert_eq!(sim.trigger_count(1, 101), 1, "retries are not triggers");
    // The failed run is no longer the latest: not retryable.
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!(b["data"]["can_retry"], false);
    assert_eq!(
        b["data"]["retry_not_supported_reason"],
        "RETRY_NOT_LATEST_RUN"
    );
    // Retrying a successful run: 400.
    let (s, b) = api
        .post(
            &format!("/api/v2/accounts/1/runs/{retry}/retry/"),
            json!({}),
        )
        .await;
    assert_error(s, &b, 400);
    assert!(b["status"]["user_message"]
        .as_str()
        .unwrap()
        .contains("RETRY_NOT_FAILED_RUN"));
    let (s, b) = api
        .get(&format!("/api/v2/accounts/1/runs/{retry}/retry/"))
        .await;
    assert_error(s, &b, 400);
}

#[tokio::test]
async fn rerun_retries_the_failed_run_or_triggers_a_new_one() {
    let (sim, api) = setup().await;
    sim.set_job_behavior(
        1,
        101,
        JobBehavior {
            retry_outcome: Outcome::FailAtStep(3),
            ..fast(Outcome::FailAtStep(2))
        },
    );
    let id = api.trigger(101, "will fail").await;
    api.wait_complete(id).await;
    let (s, b) = api
        .post("/api/v2/accounts/1/jobs/101/rerun/", json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let rerun = b["data"]["id"].as_i64().unwrap();
    let done = api.wait_complete(rerun).await;
    assert_eq!(done["retrying_run_id"], id);
    assert_eq!(done["status"], 20, "the configured retry outcome");
    assert_eq!(
        step_names(&done)[3..],
        ["Invoke dbt with `dbt run`", "Invoke dbt with `dbt test`"]
    );
    assert_eq!(done["run_steps"][4]["status"], 20, "fails at `dbt test`");
    // After a success, rerun triggers the whole job.
    let ok = api.trigger(100, "fine").await;
    api.wait_complete(ok).await;
    let (s, b) = api
        .post("/api/v2/accounts/1/jobs/100/rerun/", json!({}))
        .await;
    assert_eq!(s, 200);
    let full = api.wait_complete(b["data"]["id"].as_i64().unwrap()).await;
    assert_eq!(full["run_steps"].as_array().unwrap().len(), 5);
    let (s, b) = api
        .post("/api/v2/accounts/1/jobs/999/rerun/", json!({}))
        .await;
    assert_error(s, &b, 404);
}

#[tokio::test]
async fn cancel_stops_a_run_and_leaves_finished_runs_alone() {
    let (_sim, api) = setup().await;
    let id = api.trigger(102, "to cancel").await;
    api.wait_for(id, |r| r["status"] == 3).await;
    let (s, b) = api
        .post(&format!("/api/v2/accounts/1/runs/{id}/cancel/"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["status"], 30);
    assert_eq!(b["data"]["status_humanized"], "Cancelled");
    assert_eq!(b["data"]["is_cancelled"], true);
    assert_eq!(b["data"]["is_complete"], true);
    let run = api.wait_complete(id).await;
    let last = run["run_steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], 30);
    // A queued run can be cancelled too.
    let a = api.trigger(102, "a").await;
    let queued = api.trigger(102, "b").await;
    let (_, b) = api
        .post(
            &format!("/api/v2/accounts/1/runs/{queued}/cancel/"),
            json!({}),
        )
        .await;
    assert_eq!(b["data"]["status"], 30);
    // Cancelling a finished run returns it unchanged.
    let done = api.trigger(100, "done").await;
    api.wait_complete(done).await;
    let (s, b) = api
        .post(
            &format!("/api/v2/accounts/1/runs/{done}/cancel/"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["data"]["status"], 10);
    let (s, b) = api
        .post("/api/v2/accounts/1/runs/5/cancel/", json!({}))
        .await;
    assert_error(s, &b, 404);
    let _ = a;
}

#[tokio::test]
async fn a_run_can_be_made_to_report_a_status_code_the_openapi_file_does_not_list() {
    let (sim, api) = setup().await;
    let id = api.trigger(102, "odd").await;
    api.wait_for(id, |r| r["status"] == 3).await;
    sim.set_run_status(1, id, Some(7));
    let (s, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["status"], 7);
    assert_eq!(b["data"]["status_humanized"], "Unknown");
    let (_, b) = api
        .get(&format!("/api/v2/accounts/1/runs/?pk__in=[{id}]"))
        .await;
    assert_eq!(b["data"][0]["status"], 7, "lists report it too");
    sim.set_run_status(1, id, None);
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!(b["data"]["status"], 3, "cleared: its own status again");
}

#[tokio::test]
async fn run_list_filters_ordering_and_pagination() {
    let (sim, api) = setup().await;
    sim.set_job_behavior(
        1,
        100,
        JobBehavior {
            queued: Duration::ZERO,
            starting: Duration::ZERO,
            running: Duration::ZERO,
            ..fast(Outcome::Success)
        },
    );
    let mut ids = Vec::new();
    for i in 0..130 {
        ids.push(api.trigger(100, &format!("bulk {i}")).await);
    }
    let slow = api.trigger(102, "slow").await;
    let (s, b) = api.get("/api/v2/accounts/1/runs/").await;
    assert_eq!(s, 200);
    assert_eq!(b["data"].as_array().unwrap().len(), 100, "default limit");
    assert_eq!(b["extra"]["pagination"]["count"], 100);
    assert_eq!(b["extra"]["pagination"]["total_count"], 131);
    assert!(b["extra"]["filters"].is_object() && b["extra"]["order_by"].is_string());
    assert_eq!(b["data"][0]["run_steps"], json!([]), "lists embed no steps");
    let (_, b) = api.get("/api/v2/accounts/1/runs/?offset=100").await;
    assert_eq!(b["data"].as_array().unwrap().len(), 31);
    assert_eq!(b["data"][0]["id"], ids[100]);
    let (s, b) = api.get("/api/v2/accounts/1/runs/?limit=101").await;
    assert_error(s, &b, 400);
    let (s, b) = api.get("/api/v2/accounts/1/runs/?limit=abc").await;
    assert_error(s, &b, 400);

    let (_, b) = api
        .get("/api/v2/accounts/1/runs/?order_by=-id&limit=2")
        .await;
    assert_eq!(b["data"][0]["id"], slow);
    assert_eq!(b["data"][1]["id"], ids[129]);
    let (_, b) = api
        .get("/api/v2/accounts/1/runs/?order_by=-created_at&limit=1")
        .await;
    assert_eq!(b["data"][0]["id"], slow);
    let (_, b) = api
        .get("/api/v2/accounts/1/runs/?order_by=finished_at&limit=1")
        .await;
    assert_eq!(b["data"][0]["id"], ids[0]);
    let (_, b) = api
        .get("/api/v2/accounts/1/runs/?job_definition_id=102")
        .await;
    assert_eq!(b["extra"]["pagination"]["total_count"], 1);
    let (_, b) = api
        .get(&format!("/api/v2/accounts/1/runs/?id__gt={}", ids[127]))
        .await;
    assert_eq!(b["extra"]["pagination"]["total_count"], 3);
    let (_, b) = api.get("/api/v2/accounts/1/runs/?environment_id=21").await;
    assert_eq!(b["data"][0]["id"], slow);

    // Array parameters in the three spellings clients use.
    let (a, c) = (ids[3], ids[7]);
    for query in [
        format!("pk__in=[{a},{c}]"),
        format!("pk__in={a},{c}"),
        format!("pk__in={a}&pk__in={c}"),
        format!("pk__in=%5B{a}%2C{c}%5D"),
    ] {
        let (s, b) = api.get(&format!("/api/v2/accounts/1/runs/?{query}")).await;
        assert_eq!(s, 200, "{query}");
        let got: Vec<i64> = b["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(got, [a, c], "{query}");
    }
    api.wait_for(slow, |r| r["status"] == 3).await;
    for query in [
        "status__in=[1,2,3]",
        "status__in=1,2,3",
        "status__in=1&status__in=3",
        "status=3",
    ] {
        let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/?{query}")).await;
        let got: Vec<i64> = b["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(got, [slow], "{query}");
    }
    let (_, b) = api.get("/api/v2/accounts/1/runs/?status=10&limit=1").await;
    assert_eq!(b["extra"]["pagination"]["total_count"], 130);
    let (_, b) = api
        .get("/api/v2/accounts/1/runs/?status__in=[10,20]&include_related=trigger,job&limit=1")
        .await;
    assert_eq!(b["data"][0]["trigger"]["cause"], "bulk 0");
    assert_eq!(b["data"][0]["job"]["id"], 100);
    let (s, b) = api.get("/api/v2/accounts/1/runs/?pk__in=[1,x]").await;
    assert_error(s, &b, 400);
    // Another account's token sees none of these.
    let (s, b) = api
        .with_auth(Some(&format!("Token {OTHER}")))
        .get("/api/v2/accounts/2/runs/")
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["data"], json!([]));
}

#[tokio::test]
async fn artifacts_per_step() {
    let (_sim, api) = setup().await;
    let slow = api.trigger(102, "slow").await;
    let (s, b) = api
        .get(&format!("/api/v2/accounts/1/runs/{slow}/artifacts/"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["data"], json!([]), "nothing before the run completes");
    let (s, b) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{slow}/artifacts/run_results.json"
        ))
        .await;
    assert_error(s, &b, 404);

    let id = api.trigger(101, "fails at dbt run").await;
    api.wait_complete(id).await;
    let (s, b) = api
        .get(&format!("/api/v2/accounts/1/runs/{id}/artifacts/"))
        .await;
    assert_eq!(s, 200);
    let names = b["data"].as_array().unwrap();
    assert!(names.contains(&json!("run_results.json")) && names.contains(&json!("manifest.json")));

    // Default: the last step, which failed. Served raw, not enveloped.
    let (s, rr) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{id}/artifacts/run_results.json"
        ))
        .await;
    assert_eq!(s, 200);
    assert!(rr.get("status").is_none() && rr.get("data").is_none());
    assert!(rr["metadata"]["dbt_schema_version"]
        .as_str()
        .unwrap()
        .contains("run-results"));
    assert!(rr["elapsed_time"].is_number());
    // `dbt run` runs the models: `orders` errors, what reads it is skipped.
    let statuses: Vec<(&str, &str)> = rr["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["unique_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("model.analytics.stg_orders", "success"),
            ("model.analytics.orders", "error"),
            ("model.analytics.customers", "skipped"),
        ]
    );
    assert_eq!(rr["args"]["which"], "run");
    assert_eq!(rr["args"]["invocation_command"], "dbt run");
    for r in rr["results"].as_array().unwrap() {
        assert!(r["unique_id"].is_string() && r["execution_time"].is_number());
        assert!(r.get("message").is_some());
    }
    // Step 4 (`dbt seed`) succeeded.
    let (s, rr) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{id}/artifacts/run_results.json?step=4"
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(rr["args"]["which"], "seed");
    let seeded: Vec<(&str, &str)> = rr["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["unique_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seeded, [("seed.analytics.raw_customers", "success")]);
    // Setup steps (`dbt deps` included) and steps that never ran have no artifacts.
    for step in [1, 3, 6] {
        let (s, _) = api
            .get(&format!(
                "/api/v2/accounts/1/runs/{id}/artifacts/run_results.json?step={step}"
            ))
            .await;
        assert_eq!(s, 404, "step {step}");
    }
    let (s, m) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{id}/artifacts/manifest.json?step=4"
        ))
        .await;
    assert_eq!(s, 200);
    assert!(m["nodes"].is_object());
    let (s, _) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{id}/artifacts/catalog.json"
        ))
        .await;
    assert_eq!(s, 404);

    // The job's latest completed run.
    let (s, rr) = api
        .get("/api/v2/accounts/1/jobs/101/artifacts/run_results.json")
        .await;
    assert_eq!(s, 200);
    assert!(rr["results"].is_array());
    let (s, b) = api
        .get("/api/v2/accounts/1/jobs/100/artifacts/run_results.json")
        .await;
    assert_error(s, &b, 404);
}

#[tokio::test]
async fn rate_limit_server_error_and_unauthorized_faults_are_counted_and_scoped() {
    let (sim, api) = setup().await;
    sim.inject(Fault::RateLimit {
        count: 2,
        retry_after_secs: 7,
        scope: FaultScope::ListRuns,
    });
    // Other operations are unaffected.
    let (s, _) = api.get("/api/v2/accounts/1/jobs/").await;
    assert_eq!(s, 200);
    for _ in 0..2 {
        let resp = api
            .http
            .get(format!("{}/api/v2/accounts/1/runs/", api.base))
            .header("Authorization", format!("Token {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["status"]["is_success"], false);
    }
    let (s, _) = api.get("/api/v2/accounts/1/runs/").await;
    assert_eq!(s, 200, "the fault is used up");

    sim.inject(Fault::ServerError {
        count: 1,
        status: 502,
        scope: FaultScope::Trigger,
    });
    let (s, b) = api
        .post("/api/v2/accounts/1/jobs/100/run/", json!({"cause": "x"}))
        .await;
    assert_error(s, &b, 502);
    assert_eq!(
        sim.trigger_count(1, 100),
        0,
        "a 5xx trigger creates nothing"
    );
    api.trigger(100, "x").await;

    sim.inject(Fault::Unauthorized {
        count: 1,
        scope: FaultScope::Accounts,
    });
    let (s, b) = api.get("/api/v3/accounts/").await;
    assert_error(s, &b, 401);
    let (s, _) = api.get("/api/v3/accounts/").await;
    assert_eq!(s, 200);

    sim.inject(Fault::ServerError {
        count: 1,
        status: 500,
        scope: FaultScope::PathContains("/jobs/101/".into()),
    });
    let (s, _) = api.get("/api/v2/accounts/1/jobs/100/").await;
    assert_eq!(s, 200);
    let (s, _) = api.get("/api/v2/accounts/1/jobs/101/").await;
    assert_eq!(s, 500);

    let id = api.trigger(102, "c").await;
    sim.inject(Fault::ServerError {
        count: 1,
        status: 503,
        scope: FaultScope::GetRun,
    });
    sim.inject(Fault::RateLimit {
        count: 1,
        retry_after_secs: 1,
        scope: FaultScope::Cancel,
    });
    let (s, _) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!(s, 503);
    let (s, _) = api
        .post(&format!("/api/v2/accounts/1/runs/{id}/cancel/"), json!({}))
        .await;
    assert_eq!(s, 429);
    let (s, b) = api
        .post(&format!("/api/v2/accounts/1/runs/{id}/cancel/"), json!({}))
        .await;
    assert_eq!((s, b["data"]["status"].clone()), (200, json!(30)));

    // FIFO: the first matching fault applies first.
    sim.inject(Fault::ServerError {
        count: 1,
        status: 500,
        scope: FaultScope::Any,
    });
    sim.inject(Fault::ServerError {
        count: 1,
        status: 503,
        scope: FaultScope::Any,
    });
    assert_eq!(api.get("/api/v3/accounts/").await.0, 500);
    assert_eq!(api.get("/api/v3/accounts/").await.0, 503);
    sim.inject(Fault::ServerError {
        count: 5,
        status: 500,
        scope: FaultScope::Any,
    });
    sim.clear_faults();
    assert_eq!(api.get("/api/v3/accounts/").await.0, 200);
}

#[tokio::test]
async fn hostile_faults_raw_retry_after_oversized_bodies_and_huge_logs() {
    let (sim, api) = setup().await;
    let get = |path: &str| {
        api.http
            .get(format!("{}{path}", api.base))
            .header("Authorization", format!("Token {TOKEN}"))
            .send()
    };
    // Retry-After is sent verbatim.
    for raw in [
        "Wed, 21 Oct 2099 07:28:00 GMT",
        "100000000000000000000",
        "soon",
    ] {
        sim.inject(Fault::RateLimitRaw {
            count: 1,
            retry_after: raw.into(),
            scope: FaultScope::Accounts,
        });
        let resp = get("/api/v3/accounts/").await.unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], raw);
    }
    // Oversized: valid JSON padded with whitespace; chunked means no Content-Length.
    for chunked in [false, true] {
        sim.inject(Fault::OversizedBody {
            count: 1,
            bytes: 3 * 1024 * 1024,
            chunked,
            scope: FaultScope::Accounts,
        });
        let resp = get("/api/v3/accounts/").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("content-length").is_none(),
            chunked,
            "{:?}",
            resp.headers()
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), 3 * 1024 * 1024);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"][0]["id"], 1);
    }
    // Huge step logs keep their real end.
    sim.set_step_log_bytes(100_000);
    let run = api.trigger(101, "huge logs").await;
    api.wait_complete(run).await;
    let (_, body) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{run}/?include_related=run_steps"
        ))
        .await;
    let steps = body["data"]["run_steps"].as_array().unwrap();
    let last = steps.last().unwrap()["logs"].as_str().unwrap();
    assert!(
        last.len() >= 100_000 && last.ends_with("TOTAL=4"),
        "{}",
        &last[last.len() - 80..]
    );
}

#[tokio::test]
async fn delayed_and_slow_responses_still_answer() {
    let (sim, api) = setup().await;
    sim.inject(Fault::Delay {
        count: 1,
        delay: Duration::from_millis(50),
        scope: FaultScope::Trigger,
    });
    let id = api.trigger(100, "delayed").await;
    sim.inject(Fault::SlowResponse {
        count: 1,
        delay: Duration::from_millis(50),
        scope: FaultScope::GetRun,
    });
    let (s, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!((s, b["data"]["id"].as_i64()), (200, Some(id)));
    // A client that gives up early sees a timeout while the trigger still happened.
    sim.inject(Fault::SlowResponse {
        count: 1,
        delay: Duration::from_secs(5),
        scope: FaultScope::Trigger,
    });
    let result = api
        .http
        .post(format!("{}/api/v2/accounts/1/jobs/100/run/", api.base))
        .header("Authorization", format!("Token {TOKEN}"))
        .json(&json!({"cause": "impatient"}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.is_err());
    assert_eq!(sim.trigger_count(1, 100), 2);
}

#[tokio::test]
async fn a_lost_trigger_response_drops_the_connection_but_creates_the_run() {
    let (sim, api) = setup().await;
    sim.inject(Fault::LoseTriggerResponse { count: 1 });
    // Other requests are unaffected.
    assert_eq!(api.get("/api/v2/accounts/1/runs/").await.0, 200);
    let result = api
        .http
        .post(format!("{}/api/v2/accounts/1/jobs/100/run/", api.base))
        .header("Authorization", format!("Token {TOKEN}"))
        .json(&json!({"cause": "lost"}))
        .send()
        .await;
    assert!(
        result.is_err(),
        "connection error, not a response: {result:?}"
    );
    assert_eq!(sim.trigger_count(1, 100), 1);
    let runs = sim.runs(1);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["trigger"]["cause"], "lost");
    let log = sim.requests();
    assert_eq!(log.last().unwrap().status, 0);

    // On the wire: the server closes the connection without a single byte.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sim.inject(Fault::LoseTriggerResponse { count: 1 });
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"cause":"raw"}"#;
    let req = format!(
        "POST /api/v2/accounts/1/jobs/100/run/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        read.is_err() || buf.is_empty(),
        "no response bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(sim.trigger_count(1, 100), 2);
    assert_eq!(sim.triggers().last().unwrap().cause, "raw");
}

#[tokio::test]
async fn hidden_new_runs_answer_404_and_are_absent_from_lists_for_a_while() {
    let (sim, api) = setup().await;
    sim.inject(Fault::HideNewRuns {
        duration: Duration::from_secs(2),
    });
    let id = api.trigger(100, "hidden").await;
    assert!(sim.run(1, id).is_some(), "the run exists");
    let (s, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_error(s, &b, 404);
    let (_, list) = api.get("/api/v2/accounts/1/runs/").await;
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["id"] != id));
    // It appears afterwards.
    api.wait_complete(id).await;
    let (_, list) = api.get("/api/v2/accounts/1/runs/").await;
    assert_eq!(list["data"][0]["id"], id);
    // Only the next trigger's run was hidden.
    let next = api.trigger(100, "visible").await;
    assert_eq!(
        api.get(&format!("/api/v2/accounts/1/runs/{next}/")).await.0,
        200
    );
}

#[tokio::test]
async fn random_faults_are_deterministic_for_a_seed() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let (sim, api) = setup().await;
        sim.set_random_faults(RandomFaults {
            seed,
            rate_429: 0.3,
            rate_5xx: 0.2,
            rate_lost_trigger: 0.0,
            retry_after_secs: 1,
        });
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(api.get("/api/v2/accounts/1/jobs/").await.0);
        }
        out
    }
    let a = statuses(42).await;
    assert_eq!(a, statuses(42).await);
    assert!(
        a.contains(&429) && a.contains(&503) && a.contains(&200),
        "{a:?}"
    );

    let (sim, api) = setup().await;
    sim.set_random_faults(RandomFaults {
        seed: 1,
        rate_429: 0.0,
        rate_5xx: 0.0,
        rate_lost_trigger: 1.0,
        retry_after_secs: 1,
    });
    let lost = api
        .http
        .post(format!("{}/api/v2/accounts/1/jobs/100/run/", api.base))
        .header("Authorization", format!("Token {TOKEN}"))
        .json(&json!({"cause": "chaos"}))
        .send()
        .await;
    assert!(lost.is_err());
    assert_eq!(sim.trigger_count(1, 100), 1);
    sim.set_random_faults(RandomFaults::default());
    api.trigger(100, "calm").await;
}

#[tokio::test]
async fn the_request_log_never_holds_the_token() {
    let (sim, api) = setup().await;
    api.get("/api/v2/accounts/1/runs/?limit=5&offset=0").await;
    api.with_auth(Some(&format!("Bearer {OTHER}")))
        .get("/api/v2/accounts/1/")
        .await;
    api.with_auth(None).get("/api/v3/accounts/").await;
    let log = sim.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, "/api/v2/accounts/1/runs/");
    assert_eq!(log[0].query, "limit=5&offset=0");
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].authorization.as_deref(), Some("Token <redacted>"));
    assert_eq!(log[1].status, 403);
    assert_eq!(log[1].authorization.as_deref(), Some("Bearer <redacted>"));
    assert_eq!(log[2].status, 401);
    assert_eq!(log[2].authorization, None);
    assert!(log[0].at <= log[1].at);
    let dump = format!("{log:?}");
    assert!(!dump.contains(TOKEN) && !dump.contains(OTHER));
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn discovery_graphql() {
    let (_sim, api) = setup().await;
    let gql = |q: &str, vars: Value| {
        let api = api.clone();
        let body = json!({"query": q, "variables": vars});
        async move { api.post("/graphql", body).await }
    };
    let (s, b) = gql("{ __typename }", Value::Null).await;
    assert_eq!((s, b["data"]["__typename"].clone()), (200, json!("Query")));
    let (s, b) = gql("garbage", Value::Null).await;
    assert_eq!(s, 200);
    assert!(b["errors"][0]["message"].is_string());
    let (s, b) = gql("{ jobs { id } }", Value::Null).await;
    assert_eq!(s, 200);
    assert!(b["errors"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("Cannot query field \"jobs\""));
    let (_, b) = gql(
        "{ job(id: 101) { models { uniqueId bogus } } }",
        Value::Null,
    )
    .await;
    assert!(b["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("Cannot query field \"bogus\""));
    let (_, b) = gql("{ job(id: 101 { models }", Value::Null).await;
    assert!(b["errors"].is_array());

    let (_, b) = gql("{ job(id: 101) { models { name } } }", Value::Null).await;
    assert_eq!(b["data"]["job"], Value::Null, "no completed run yet");
    let id = api.trigger(101, "for discovery").await;
    api.wait_complete(id).await;
    let q = "query Models($jobId: Int!, $runId: Int) {\n  job(id: $jobId, runId: $runId) {\n    models { uniqueId name status executionTime }\n  }\n}";
    let (s, b) = gql(q, json!({"jobId": 101, "runId": id})).await;
    assert_eq!(s, 200);
    assert!(b.get("errors").is_none(), "{b}");
    let models = b["data"]["job"]["models"].as_array().unwrap();
    assert!(!models.is_empty());
    let orders = models.iter().find(|m| m["name"] == "orders").unwrap();
    assert_eq!(orders["uniqueId"], "model.analytics.orders");
    assert_eq!(orders["status"], "error");
    assert!(orders["executionTime"].is_number());
    assert!(models
        .iter()
        .all(|m| m["uniqueId"].as_str().unwrap().starts_with("model.")));
    let (_, b) = gql(
        &format!("{{ j: job(id: 101, runId: {id}) {{ runId models {{ uniqueId }} }} }}"),
        Value::Null,
    )
    .await;
    assert_eq!(b["data"]["j"]["runId"], id);
    let (s, b) = api
        .with_auth(None)
        .post("/graphql", json!({"query": "{ __typename }"}))
        .await;
    assert_eq!(s, 401, "{b}");
}

#[tokio::test]
async fn live_nulls_by_default_and_the_sparse_form_on_request() {
    let (sim, api) = setup().await;
    let id = api.trigger(102, "nulls").await;
    sim.set_live_nulls(false);
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert!(b["data"].get("finished_at").is_none());
    assert!(b["data"].get("run_steps").is_none());
    sim.set_live_nulls(true);
    let (_, b) = api
        .get(&format!(
            "/api/v2/accounts/1/runs/{id}/?include_related=trigger"
        ))
        .await;
    assert!(b["data"]["finished_at"].is_null() && b["data"].get("finished_at").is_some());
    assert!(b["data"]["job"].is_null() && b["data"].get("job").is_some());
    assert_eq!(b["data"]["run_steps"], json!([]));
    assert!(b["data"]["trigger"]
        .get("git_sha")
        .is_some_and(Value::is_null));
}

#[tokio::test]
async fn finish_run_forces_an_outcome() {
    let (sim, api) = setup().await;
    let id = api.trigger(102, "forced").await;
    sim.finish_run(1, id, Outcome::Cancelled);
    let (_, b) = api.get(&format!("/api/v2/accounts/1/runs/{id}/")).await;
    assert_eq!(b["data"]["status"], 30);
    sim.finish_run(1, id, Outcome::Success);
    assert_eq!(
        sim.run(1, id).unwrap()["status"],
        30,
        "finished runs stay finished"
    );
}

#[tokio::test]
async fn demo_seed_and_seed_builder() {
    let sim = Simulator::start_with(Seed::demo(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = Api {
        http: http_client(),
        base: sim.base_url(),
        auth: Some("Token dbtc_demo_token".into()),
    };
    let (_, b) = api.get("/api/v3/accounts/").await;
    assert_eq!(b["data"][0]["name"], "Demo account");
    let (_, b) = api.get("/api/v3/accounts/1/projects/").await;
    assert_eq!(b["data"][0]["name"], "analytics");
    let (_, b) = api
        .get("/api/v3/accounts/1/projects/10/environments/")
        .await;
    let envs: Vec<&str> = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(envs, ["production", "staging"]);
    let (_, b) = api.get("/api/v2/accounts/1/jobs/").await;
    assert_eq!(b["data"].as_array().unwrap().len(), 3);
    sim.shutdown();

    let seed = Seed::new()
        .account(5, "Built")
        .token("t", &[5])
        .project(5, 1, "p")
        .environment(5, 1, 2, "e")
        .job(
            5,
            JobSpec {
                id: 3,
                project_id: 1,
                environment_id: 2,
                name: "j".into(),
                steps: vec!["dbt build".into()],
                behavior: JobBehavior::default(),
            },
        );
    let sim = Simulator::start_with(seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = Api {
        base: sim.base_url(),
        auth: Some("Token t".into()),
        ..api
    };
    let (s, b) = api.get("/api/v2/accounts/5/jobs/3/").await;
    assert_eq!((s, b["data"]["name"].clone()), (200, json!("j")));
}

#[tokio::test]
async fn the_binary_serves_the_demo_data() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dbt-cloud-simulator"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("base URL printed")
        .to_string();
    let api = Api {
        http: http_client(),
        base,
        auth: Some("Token dbtc_demo_token".into()),
    };
    let (s, b) = api.get("/api/v3/accounts/").await;
    assert_eq!((s, b["data"][0]["id"].clone()), (200, json!(1)));
    let mut rest = String::new();
    while let Ok(Ok(Some(l))) =
        tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
    {
        rest.push_str(&l);
    }
    assert!(
        rest.contains("dbtc_demo_token"),
        "the token is printed: {rest}"
    );
    child.kill().await.unwrap();
}

/// A plain-http client. In a workspace build reqwest is compiled with the operator's
/// `rustls-no-provider` feature, which needs a process-wide crypto provider even for http.
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
