//! Integration tests of `dbt_cloud_operator::dbt_cloud` over real HTTP on 127.0.0.1:
//! against a small scripted server (exact status/edge-case control) and
//! against the dbt Cloud simulator (stateful behaviour, faults).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::Response;
use dbt_cloud_operator::dbt_cloud::*;
use secrecy::SecretString;
use serde_json::{json, Value};
use url::Url;

const KEY: &str = "dbtc_TopSecretKeyValue_9f8e7d";

// ---------------------------------------------------------------- helpers

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn test_config(base: &str) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(2),
        insecure_base_url_override: Some(Url::parse(base).unwrap()),
        ..Default::default()
    }
}

#[derive(Default)]
struct CountingObserver {
    responses: Mutex<Vec<(&'static str, Option<u16>)>>,
    waits: AtomicU64,
    throttled: AtomicU64,
}

impl ApiObserver for CountingObserver {
    fn on_response(&self, endpoint: &'static str, status: Option<u16>, _elapsed: Duration) {
        self.responses.lock().unwrap().push((endpoint, status));
    }
    fn on_rate_limit_wait(&self, _waited: Duration) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }
    fn on_throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }
}

fn make_client(
    key: &str,
    account: i64,
    config: ClientConfig,
    limits: AccountLimits,
    observer: Arc<dyn ApiObserver>,
) -> DbtCloudClient {
    install_crypto();
    let http = http_client(&config).unwrap();
    DbtCloudClient::new(
        AccessHost::parse("cloud.getdbt.com", DEFAULT_ALLOWED_SUFFIXES).unwrap(),
        account,
        SecretString::from(key.to_string()),
        http,
        limits,
        Arc::new(config),
        observer,
    )
    .unwrap()
}

fn assert_no_key(s: &str) {
    assert!(!s.contains(KEY), "key leaked: {s}");
    assert!(!s.contains("TopSecret"), "key leaked: {s}");
}

fn assert_error_redacted(e: &DbtCloudError) {
    assert_no_key(&e.to_string());
    assert_no_key(&format!("{e:?}"));
}

// ---------------------------------------------------------------- scripted server

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Option<Duration>,
}

fn canned(status: u16, body: Value) -> Canned {
    Canned {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string(),
        delay: None,
    }
}

#[derive(Default)]
struct ScriptState {
    queue: Mutex<VecDeque<Canned>>,
    default: Mutex<Option<Canned>>,
    requests: Mutex<Vec<Recorded>>,
}

struct Script {
    base: String,
    state: Arc<ScriptState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Script {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Script {
    async fn start() -> Script {
        let state = Arc::new(ScriptState::default());
        let app = axum::Router::new()
            .fallback(script_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Script {
            base: format!("http://{addr}"),
            state,
            task,
        }
    }
    fn push(&self, c: Canned) -> &Self {
        self.state.queue.lock().unwrap().push_back(c);
        self
    }
    fn set_default(&self, c: Canned) {
        *self.state.default.lock().unwrap() = Some(c);
    }
    fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
    fn client(&self, key: &str) -> DbtCloudClient {
        make_client(
            key,
            1,
            test_config(&self.base),
            AccountLimits::unlimited(),
            Arc::new(NoopObserver),
        )
    }
}

async fn script_handler(
    State(state): State<Arc<ScriptState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    req: Request<Body>,
) -> Response {
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_else(|_| Bytes::new());
    state.requests.lock().unwrap().push(Recorded {
        method,
        uri: uri.to_string(),
        headers,
        body: body.to_vec(),
    });
    let next = state.queue.lock().unwrap().pop_front();
    let c = next
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or_else(|| canned(200, json!({"data": {"id": 1}, "status": {"code": 200}})));
    if let Some(d) = c.delay {
        tokio::time::sleep(d).await;
    }
    let mut b = Response::builder().status(StatusCode::from_u16(c.status).unwrap());
    for (k, v) in &c.headers {
        b = b.header(*k, v);
    }
    b.body(Body::from(c.body)).unwrap()
}

fn run_json(id: i64, status: i64) -> Value {
    json!({"id": id, "status": status, "job_definition_id": 7, "account_id": 1,
           "created_at": "2024-05-01 10:00:00.000000+00:00", "updated_at": "2024-05-01 10:00:00.000000+00:00"})
}

fn ok_env(data: Value) -> Value {
    json!({"data": data, "status": {"code": 200, "is_success": true, "user_message": "Success!", "developer_message": ""}})
}

fn err_env(code: u16, msg: &str) -> Value {
    json!({"data": null, "status": {"code": code, "is_success": false, "user_message": msg, "developer_message": "dev"}})
}

// ---------------------------------------------------------------- scripted tests

#[tokio::test]
async fn sends_expected_headers_and_paths() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(canned(200, ok_env(run_json(5, 1))));
    let mut req = TriggerRunRequest::new("because").unwrap();
    req.git_branch = Some("main".into());
    req.steps_override = Some(vec!["dbt build".into()]);
    let run = c.trigger_run(7, &req).await.unwrap();
    assert_eq!(run.id, 5);
    assert_eq!(run.status, RunStatus::Queued);

    let r = &s.requests()[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri, "/api/v2/accounts/1/jobs/7/run/");
    assert_eq!(r.headers["authorization"], format!("Token {KEY}").as_str());
    assert_eq!(r.headers["accept"], "application/json");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(r.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("dbt-cloud-operator/"));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"cause": "because", "git_branch": "main", "steps_override": ["dbt build"]})
    );
}

#[tokio::test]
async fn maps_each_status() {
    let s = Script::start().await;
    let c = s.client(KEY);
    let cases: Vec<(u16, &str)> = vec![
        (400, "BadRequest"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "NotFound"),
        (409, "BadRequest"),
        (500, "ServerError"),
        (502, "ServerError"),
    ];
    for (code, reason) in cases {
        // Non-retried POST: exactly one answer consumed per case.
        s.push(canned(code, err_env(code, &format!("message for {code}"))));
        let e = c.rerun_job(7).await.unwrap_err();
        assert_eq!(e.reason(), reason, "{code}: {e}");
        assert_eq!(e.http_status(), Some(code));
        assert_eq!(
            e.user_message(),
            Some(format!("message for {code}").as_str())
        );
        assert!(e.to_string().contains(&format!("message for {code}")));
        assert_error_redacted(&e);
    }
    assert_eq!(s.requests().len(), 7);
}

#[tokio::test]
async fn bad_request_includes_field_errors() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(canned(
        400,
        json!({"status": {"code": 400, "is_success": false, "user_message": "The request was invalid.", "developer_message": ""},
               "data": {"threads_override": ["A valid integer is required."]}}),
    ));
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    match &e {
        DbtCloudError::BadRequest {
            status: 400,
            user_message: Some(m),
            ..
        } => assert!(m.contains("threads_override: A valid integer"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!e.is_retryable() && !e.is_ambiguous_for_trigger());
}

#[tokio::test]
async fn unauthorized_hint_depends_on_key_shape() {
    let s = Script::start().await;
    s.set_default(canned(401, err_env(401, "Invalid token.")));
    for (key, hint) in [
        (KEY, false),
        ("dbtu_personal_token_value", false),
        ("Token dbtc_with_prefix", true),
        ("plainsecret", true),
    ] {
        let e = s.client(key).get_account().await.unwrap_err();
        match &e {
            DbtCloudError::Unauthorized {
                token_shape_hint, ..
            } => assert_eq!(*token_shape_hint, hint, "{key}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.to_string().contains("dbtc_…"), hint, "{e}");
        assert!(!e.to_string().contains(key));
        assert!(!e.is_retryable());
    }
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(Canned {
        status: 302,
        headers: vec![("location", "https://evil.example.com/steal".into())],
        body: String::new(),
        delay: None,
    });
    let e = c.get_run(1, &[]).await.unwrap_err();
    match &e {
        DbtCloudError::Redirect {
            location_host,
            status,
            ..
        } => {
            assert_eq!(location_host.as_deref(), Some("evil.example.com"));
            assert_eq!(*status, 302);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("evil.example.com"));
    assert_eq!(e.reason(), "Redirect");
    assert_eq!(
        s.requests().len(),
        1,
        "redirect must not be followed nor retried"
    );
}

#[tokio::test]
async fn retries_429_honouring_retry_after_then_succeeds() {
    let s = Script::start().await;
    let obs = Arc::new(CountingObserver::default());
    let c = make_client(
        KEY,
        1,
        test_config(&s.base),
        AccountLimits::unlimited(),
        obs.clone(),
    );
    let mut c429 = canned(429, err_env(429, "slow down"));
    c429.headers.push(("retry-after", "1".into()));
    s.push(c429);
    s.push(canned(200, ok_env(run_json(9, 10))));
    let run = c.get_run(9, &["trigger", "run_steps"]).await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    let reqs = s.requests();
    assert_eq!(reqs.len(), 2);
    let q: Vec<(String, String)> = Url::parse(&format!("http://x{}", reqs[0].uri))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(
        q,
        vec![("include_related".into(), "trigger,run_steps".into())]
    );
    assert_eq!(obs.throttled.load(Ordering::Relaxed), 1);
    assert_eq!(
        *obs.responses.lock().unwrap(),
        vec![("get_run", Some(429)), ("get_run", Some(200))]
    );
}

#[tokio::test]
async fn long_retry_after_is_returned_not_slept() {
    let s = Script::start().await;
    let c = s.client(KEY);
    let mut c429 = canned(429, err_env(429, "slow down"));
    c429.headers.push(("retry-after", "3600".into()));
    s.push(c429);
    let e = c.get_job(3).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
    assert!(e.is_retryable());
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn idempotent_calls_retry_5xx_up_to_max_attempts() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.set_default(canned(503, err_env(503, "down")));
    let e = c.get_job(3).await.unwrap_err();
    assert_eq!(e.reason(), "ServerError");
    assert_eq!(s.requests().len(), 3, "max_attempts = 3");

    // cancel is idempotent: retried too.
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(canned(500, err_env(500, "boom")));
    s.push(canned(200, ok_env(run_json(4, 30))));
    let run = c.cancel_run(4).await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn trigger_rerun_retry_posts_are_never_retried() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.set_default(canned(503, err_env(503, "down")));
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert!(e.is_ambiguous_for_trigger());
    assert_eq!(s.requests().len(), 1);
    c.rerun_job(7).await.unwrap_err();
    assert_eq!(s.requests().len(), 2);
    c.retry_run(8).await.unwrap_err();
    assert_eq!(s.requests().len(), 3);
    s.set_default(canned(429, err_env(429, "slow")));
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RateLimited");
    assert!(!e.is_ambiguous_for_trigger());
    assert_eq!(s.requests().len(), 4);
}

#[tokio::test]
async fn timeout_is_ambiguous() {
    let s = Script::start().await;
    let mut cfg = test_config(&s.base);
    cfg.request_timeout = Duration::from_millis(200);
    let c = make_client(
        KEY,
        1,
        cfg,
        AccountLimits::unlimited(),
        Arc::new(NoopObserver),
    );
    let mut slow = canned(200, ok_env(run_json(1, 1)));
    slow.delay = Some(Duration::from_secs(3));
    s.push(slow);
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "Timeout");
    assert!(e.is_ambiguous_for_trigger() && e.is_retryable());
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_not_ambiguous() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let base = format!("http://{addr}");
    let mut cfg = test_config(&base);
    cfg.max_attempts = 2;
    let obs = Arc::new(CountingObserver::default());
    let c = make_client(KEY, 1, cfg, AccountLimits::unlimited(), obs.clone());
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "TransportError");
    assert!(!e.is_ambiguous_for_trigger(), "{e:?}");
    assert_error_redacted(&e);
    // GET is retried: 2 attempts, both without a response.
    let e = c.get_account().await.unwrap_err();
    assert!(e.is_retryable());
    let responses = obs.responses.lock().unwrap().clone();
    assert_eq!(
        responses,
        vec![
            ("trigger_run", None),
            ("get_account", None),
            ("get_account", None)
        ]
    );
}

#[tokio::test]
async fn dropped_connection_after_send_is_ambiguous() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let acc = accepted.clone();
    let task = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            drop(sock); // close without answering
        }
    });
    let base = format!("http://{addr}");
    let c = make_client(
        KEY,
        1,
        test_config(&base),
        AccountLimits::unlimited(),
        Arc::new(NoopObserver),
    );
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "TransportError");
    assert!(e.is_ambiguous_for_trigger(), "{e:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "trigger must not be retried"
    );
    task.abort();
}

#[tokio::test]
async fn tolerant_decoding_of_unknown_and_missing_fields() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(canned(
        200,
        json!({
            "data": {"id": 77, "status": 15, "brand_new_field": {"x": [1, 2]}, "git_sha": null,
                     "trigger": {"cause": "c", "future": true}},
            "status": {"code": 200, "is_success": true, "user_message": "Success!", "developer_message": "", "new": 1},
            "unexpected_top_level": 1
        }),
    ));
    let run = c.get_run(77, &[]).await.unwrap();
    assert_eq!(run.status, RunStatus::Unknown(15));
    assert!(!run.status.is_terminal());
    assert_eq!(run.cause(), Some("c"));
    assert_eq!(run.finished_at, None);

    // A job with almost nothing in it.
    s.push(canned(200, json!({"data": {"id": 3}})));
    let job = c.get_job(3).await.unwrap();
    assert_eq!(job.id, 3);
    assert_eq!(job.name, None);

    // Garbage yields Decode (and counts as ambiguous for a trigger).
    s.push(Canned {
        status: 200,
        headers: vec![],
        body: "<html>not json</html>".into(),
        delay: None,
    });
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "DecodeError");
    assert!(e.is_ambiguous_for_trigger());
}

#[tokio::test]
async fn discovery_errors_surface_and_data_is_returned() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(canned(
        200,
        json!({"data": null, "errors": [{"message": "Field 'x' not found"}]}),
    ));
    let e = c
        .discovery_query("{ x }", json!({"jobId": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "GraphQLError");
    assert!(e.to_string().contains("Field 'x' not found"));
    s.push(canned(200, json!({"data": {"job": {"id": 1}}})));
    let d = c
        .discovery_query("{ job { id } }", json!({}))
        .await
        .unwrap();
    assert_eq!(d, json!({"job": {"id": 1}}));
    let reqs = s.requests();
    assert_eq!(reqs[0].uri, "/graphql");
    assert_eq!(reqs[0].method, Method::POST);
    let body: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body, json!({"query": "{ x }", "variables": {"jobId": 1}}));
}

#[tokio::test]
async fn artifacts_are_raw_bytes() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(Canned {
        status: 200,
        headers: vec![("content-type", "application/octet-stream".into())],
        body: "PAR1raw".into(),
        delay: None,
    });
    let bytes = c
        .get_run_artifact(5, "run/my project/model.sql", Some(2))
        .await
        .unwrap();
    assert_eq!(bytes, b"PAR1raw");
    s.push(canned(200, json!({"metadata": {"dbt_version": "1.9"}})));
    let bytes = c.get_job_artifact(7, "manifest.json").await.unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["metadata"]["dbt_version"], "1.9");
    let reqs = s.requests();
    assert_eq!(
        reqs[0].uri,
        "/api/v2/accounts/1/runs/5/artifacts/run/my%20project/model.sql?step=2"
    );
    assert_eq!(
        reqs[1].uri,
        "/api/v2/accounts/1/jobs/7/artifacts/manifest.json"
    );
    assert!(c.get_run_artifact(5, "../secrets", None).await.is_err());
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn pagination_stops_on_total_count_and_empty_page() {
    // Server that pages 250 items and records offsets.
    let s = Script::start().await;
    let c = s.client(KEY);
    let page = |from: i64, n: i64, total: Option<i64>| {
        let data: Vec<Value> = (from..from + n).map(|i| run_json(i, 10)).collect();
        let mut v = json!({"data": data, "status": {"code": 200}});
        if let Some(t) = total {
            v["extra"] = json!({"pagination": {"count": n, "total_count": t}, "order_by": "id", "filters": {}});
        }
        canned(200, v)
    };
    s.push(page(0, 100, Some(250)));
    s.push(page(100, 100, Some(250)));
    s.push(page(200, 50, Some(250)));
    let runs = c
        .list_all_runs(&ListRunsParams {
            job_definition_id: Some(7),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 250);
    assert_eq!(runs[249].id, 249);
    let offsets: Vec<String> = s.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(offsets.len(), 3);
    assert!(offsets[2].contains("limit=100") && offsets[2].contains("offset=200"));
    assert!(offsets[0].contains("job_definition_id=7"));

    // Defensive: total_count lies (says 1000) but the server runs dry.
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(page(0, 100, Some(1000)));
    s.push(page(100, 0, Some(1000)));
    let runs = c.list_all_runs(&ListRunsParams::default()).await.unwrap();
    assert_eq!(runs.len(), 100);
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn rate_limiter_counts_permits_and_waits() {
    let s = Script::start().await;
    let registry = RateLimiterRegistry::new(RateLimitConfig {
        // One token per 50 ms, burst 2: the 3rd and later requests must wait.
        admin: LimitSpec {
            per_minute: 1200,
            burst: 2,
        },
        discovery: LimitSpec {
            per_minute: 1,
            burst: 1,
        },
    });
    let obs = Arc::new(CountingObserver::default());
    let c1 = make_client(
        KEY,
        1,
        test_config(&s.base),
        registry.for_account("cloud.getdbt.com", 1),
        obs.clone(),
    );
    // A second client of the same account shares the budget.
    let c2 = make_client(
        KEY,
        1,
        test_config(&s.base),
        registry.for_account("cloud.getdbt.com", 1),
        obs.clone(),
    );
    s.set_default(canned(200, ok_env(run_json(1, 10))));
    for i in 0..3 {
        c1.get_run(i, &[]).await.unwrap();
        c2.get_run(i, &[]).await.unwrap();
    }
    let stats = registry.for_account("cloud.getdbt.com", 1).admin().stats();
    assert_eq!(stats.permits, 6);
    assert!(stats.waits >= 1, "{stats:?}");
    assert_eq!(obs.waits.load(Ordering::Relaxed), stats.waits);
    // Discovery has its own budget: its single token is still there.
    assert!(registry
        .for_account("cloud.getdbt.com", 1)
        .discovery()
        .try_acquire());
    assert!(!registry
        .for_account("cloud.getdbt.com", 1)
        .discovery()
        .try_acquire());
    // Other accounts are independent.
    assert_eq!(
        registry
            .for_account("cloud.getdbt.com", 2)
            .admin()
            .stats()
            .permits,
        0
    );
}

#[tokio::test]
async fn trigger_cause_too_long_is_rejected_before_sending() {
    let s = Script::start().await;
    let _c = s.client(KEY);
    let long = "x".repeat(MAX_CAUSE_CHARS + 1);
    let e = TriggerRunRequest::new(long.clone()).unwrap_err();
    assert_eq!(e.reason(), "InvalidRequest");
    let req = TriggerRunRequest::new(truncate_cause(&long)).unwrap();
    assert_eq!(req.cause().chars().count(), MAX_CAUSE_CHARS);
    assert!(s.requests().is_empty());
}

#[tokio::test]
async fn client_debug_never_shows_key() {
    let s = Script::start().await;
    let c = s.client(KEY);
    assert_no_key(&format!("{c:?}"));
    assert_no_key(&format!("{:?}", c.clone()));
}
