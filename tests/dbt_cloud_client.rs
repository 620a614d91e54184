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
        let e = c.retry_run(7).await.unwrap_err();
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
    // Returned at once, clamped to `retry_after_ceiling` (10 minutes by default).
    assert_eq!(e.retry_after(), Some(Duration::from_secs(600)));
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
async fn trigger_and_retry_posts_are_never_retried() {
    let s = Script::start().await;
    let c = s.client(KEY);
    s.set_default(canned(503, err_env(503, "down")));
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert!(e.is_ambiguous_for_trigger());
    assert_eq!(s.requests().len(), 1);
    c.retry_run(8).await.unwrap_err();
    assert_eq!(s.requests().len(), 2);
    s.set_default(canned(429, err_env(429, "slow")));
    let e = c
        .trigger_run(7, &TriggerRunRequest::new("x").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "RateLimited");
    assert!(!e.is_ambiguous_for_trigger());
    assert_eq!(s.requests().len(), 3);
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
    let reqs = s.requests();
    assert_eq!(
        reqs[0].uri,
        "/api/v2/accounts/1/runs/5/artifacts/run/my%20project/model.sql?step=2"
    );
    assert!(c.get_run_artifact(5, "../secrets", None).await.is_err());
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn pagination_stops_on_total_count_and_empty_page() {
    // Server that pages 250 items and records offsets.
    let s = Script::start().await;
    let c = s.client(KEY);
    let page = |from: i64, n: i64, total: Option<i64>| {
        let data: Vec<Value> = (from..from + n)
            .map(|i| json!({"id": i, "name": format!("job {i}")}))
            .collect();
        let mut v = json!({"data": data, "status": {"code": 200}});
        if let Some(t) = total {
            v["extra"] = json!({"pagination": {"count": n, "total_count": t}, "order_by": "id", "filters": {}});
        }
        canned(200, v)
    };
    s.push(page(0, 100, Some(250)));
    s.push(page(100, 100, Some(250)));
    s.push(page(200, 50, Some(250)));
    let jobs = c
        .list_all_jobs(&ListJobsParams {
            project_id: Some(7),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 250);
    assert_eq!(jobs[249].id, 249);
    let offsets: Vec<String> = s.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(offsets.len(), 3);
    assert!(offsets[2].contains("limit=100") && offsets[2].contains("offset=200"));
    assert!(offsets[0].contains("project_id=7"));

    // Defensive: total_count lies (says 1000) but the server runs dry.
    let s = Script::start().await;
    let c = s.client(KEY);
    s.push(page(0, 100, Some(1000)));
    s.push(page(100, 0, Some(1000)));
    let jobs = c.list_all_jobs(&ListJobsParams::default()).await.unwrap();
    assert_eq!(jobs.len(), 100);
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn rate_limiter_counts_permits_and_waits() {
    let s = Script::start().await;
    let registry = RateLimiterRegistry::new(RateLimitConfig {
        // One token per 100 ms, burst 2: the 3rd and later requests must wait.
        admin: LimitSpec {
            per_minute: 600,
            burst: 2,
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

/// A trigger held back by the account's rate limit past its send deadline is not sent at all
/// (so whoever waits for its run knows when it can no longer appear); in time, it is sent.
#[tokio::test]
async fn a_trigger_is_not_sent_after_its_deadline() {
    let s = Script::start().await;
    let registry = RateLimiterRegistry::new(RateLimitConfig {
        // Burst 1, then one token per 200 ms.
        admin: LimitSpec {
            per_minute: 300,
            burst: 1,
        },
    });
    let obs = Arc::new(CountingObserver::default());
    let c = make_client(
        KEY,
        1,
        test_config(&s.base),
        registry.for_account("cloud.getdbt.com", 1),
        obs.clone(),
    );
    s.set_default(canned(200, ok_env(run_json(1, 1))));
    let req = TriggerRunRequest::new("x").unwrap();
    let far = std::time::Instant::now() + Duration::from_secs(60);
    c.trigger_run_by(7, &req, Some(far), None).await.unwrap();
    assert_eq!(s.requests().len(), 1);
    // The bucket is empty: the next token comes after the deadline below.
    let soon = std::time::Instant::now() + Duration::from_millis(20);
    let e = c
        .trigger_run_by(7, &req, Some(soon), None)
        .await
        .unwrap_err();
    assert!(matches!(e, DbtCloudError::NotSent { .. }), "{e:?}");
    assert_eq!(e.reason(), "NotSent");
    assert!(!e.is_ambiguous_for_trigger(), "nothing left: not ambiguous");
    assert!(e.to_string().contains("rate limit"), "{e}");
    assert_eq!(s.requests().len(), 1, "nothing reached dbt Cloud");
    // A retry's POST keeps the same rule.
    let past = std::time::Instant::now();
    let e = c.retry_run_by(8, Some(past), None).await.unwrap_err();
    assert!(matches!(e, DbtCloudError::NotSent { .. }), "{e:?}");
    assert_eq!(s.requests().len(), 1);
    // The operator takes the budget first (waiting as long as the account needs), then records
    // the intent: the send is then not held back again, and its deadline is not missed.
    let stats = registry.for_account("cloud.getdbt.com", 1).admin().stats();
    let reserved = c.reserve().await;
    let soon = std::time::Instant::now() + Duration::from_millis(20);
    c.trigger_run_by(7, &req, Some(soon), Some(reserved))
        .await
        .expect("sent at once with the budget already taken");
    assert_eq!(s.requests().len(), 2);
    let after = registry.for_account("cloud.getdbt.com", 1).admin().stats();
    assert_eq!(
        after.permits,
        stats.permits + 1,
        "one permit for the reserved send"
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

// ---------------------------------------------------------------- simulator tests

mod sim {
    use super::*;
    use dbt_cloud_simulator::{Fault, FaultScope, JobBehavior, JobSpec, Outcome, Simulator};

    const ACCOUNT: i64 = 1;
    const OTHER_ACCOUNT: i64 = 2;
    const JOB_OK: i64 = 1000;
    const JOB_FAILS: i64 = 1001;

    fn fast(outcome: Outcome) -> JobBehavior {
        JobBehavior {
            queued: Duration::from_millis(1),
            starting: Duration::from_millis(1),
            running: Duration::from_millis(20),
            outcome,
            retry_outcome: Outcome::Success,
        }
    }

    async fn setup() -> Simulator {
        let sim = Simulator::start().await.unwrap();
        sim.add_account(ACCOUNT, "Acme");
        sim.add_account(OTHER_ACCOUNT, "Other");
        sim.add_token(KEY, &[ACCOUNT]);
        sim.add_project(ACCOUNT, 10, "Analytics");
        sim.add_project(ACCOUNT, 11, "Marketing");
        sim.add_environment(ACCOUNT, 10, 100, "Production");
        sim.add_environment(ACCOUNT, 10, 101, "Staging");
        for (id, name, outcome) in [
            (JOB_OK, "Nightly build", Outcome::Success),
            (JOB_FAILS, "Flaky build", Outcome::FailAtStep(2)),
        ] {
            sim.add_job(
                ACCOUNT,
                JobSpec {
                    id,
                    project_id: 10,
                    environment_id: 100,
                    name: name.into(),
                    steps: vec!["dbt seed".into(), "dbt build".into()],
                    behavior: fast(outcome),
                },
            );
        }
        sim
    }

    fn client(sim: &Simulator, key: &str, account: i64) -> DbtCloudClient {
        make_client(
            key,
            account,
            test_config(&sim.base_url()),
            AccountLimits::unlimited(),
            Arc::new(NoopObserver),
        )
    }

    /// Polls until terminal (bounded: at most ~10 s).
    async fn wait_terminal(c: &DbtCloudClient, run_id: i64) -> Run {
        for _ in 0..400 {
            let run = c.get_run(run_id, &["trigger", "run_steps"]).await.unwrap();
            if run.status.is_terminal() {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {run_id} did not finish");
    }

    fn count(sim: &Simulator, method: &str, path_suffix: &str) -> usize {
        sim.requests()
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(path_suffix))
            .count()
    }

    #[tokio::test]
    async fn lookup_endpoints() {
        let sim = setup().await;
        let c = client(&sim, KEY, ACCOUNT);

        let accounts = c.list_accounts().await.unwrap();
        assert_eq!(
            accounts.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![ACCOUNT]
        );
        let account = c.get_account().await.unwrap();
        assert_eq!(
            (account.id, account.name.as_deref()),
            (ACCOUNT, Some("Acme"))
        );

        let projects = c.list_all_projects(Some("ANALY")).await.unwrap();
        assert_eq!(projects.iter().map(|p| p.id).collect::<Vec<_>>(), vec![10]);
        assert_eq!(c.list_all_projects(None).await.unwrap().len(), 2);

        let envs = c.list_all_environments(10, Some("prod")).await.unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!((envs[0].id, envs[0].project_id), (100, Some(10)));
        assert_eq!(c.list_all_environments(10, None).await.unwrap().len(), 2);

        let jobs = c
            .list_all_jobs(&ListJobsParams {
                project_id: Some(10),
                environment_id: Some(100),
                name_icontains: Some("nightly".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![JOB_OK]);
        let job = c.get_job(JOB_FAILS).await.unwrap();
        assert_eq!(job.name.as_deref(), Some("Flaky build"));
        assert_eq!(job.environment_id, Some(100));

        // The simulator redacts the header in its log; the scheme is `Token`.
        assert!(sim
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Token <redacted>")));
    }

    #[tokio::test]
    async fn trigger_poll_list_and_artifacts() {
        let sim = setup().await;
        let c = client(&sim, KEY, ACCOUNT);
        let mut req = TriggerRunRequest::new("operator: default/nightly").unwrap();
        req.git_branch = Some("main".into());
        req.threads_override = Some(4);
        req.generate_docs_override = Some(false);
        req.timeout_seconds_override = Some(600);
        req.github_pull_request_id = Some(12);
        req.steps_override = Some(vec!["dbt seed".into(), "dbt build".into()]);
        let run = c.trigger_run(JOB_OK, &req).await.unwrap();
        assert!(!run.status.is_terminal());
        assert_eq!(sim.trigger_count(ACCOUNT, JOB_OK), 1);
        assert_eq!(sim.triggers()[0].cause, "operator: default/nightly");

        let done = wait_terminal(&c, run.id).await;
        assert_eq!(done.status, RunStatus::Success);
        assert_eq!(done.cause(), Some("operator: default/nightly"));
        assert!(done.run_steps.as_ref().is_some_and(|s| !s.is_empty()));
        assert_eq!(done.job_id(), Some(JOB_OK));

        let runs = c
            .list_runs(&ListRunsParams {
                job_definition_id: Some(JOB_OK),
                status_in: vec![RunStatus::Success, RunStatus::Error],
                pk_in: vec![run.id, 999_999],
                order_by: Some("-id".into()),
                include_related: vec!["trigger".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(runs.items.len(), 1);
        assert_eq!(runs.items[0].cause(), Some("operator: default/nightly"));
        let none = c
            .list_runs(&ListRunsParams {
                job_definition_id: Some(JOB_OK),
                id_gt: Some(run.id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.items.is_empty());
        assert_eq!(none.total_count, Some(0));

        let rr = c
            .get_run_artifact(run.id, "run_results.json", None)
            .await
            .unwrap();
        let rr: Value = serde_json::from_slice(&rr).unwrap();
        assert!(rr.get("results").is_some(), "{rr}");
        // Step 4: `dbt seed`, after clone, profile and `dbt deps`.
        let seed = c
            .get_run_artifact(run.id, "run_results.json", Some(4))
            .await
            .unwrap();
        assert!(serde_json::from_slice::<Value>(&seed).is_ok());
        let e = c
            .get_run_artifact(run.id, "nope.json", None)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "NotFound");
    }

    #[tokio::test]
    async fn retry_and_cancel() {
        let sim = setup().await;
        let c = client(&sim, KEY, ACCOUNT);
        let run = c
            .trigger_run(JOB_FAILS, &TriggerRunRequest::new("try").unwrap())
            .await
            .unwrap();
        let failed = wait_terminal(&c, run.id).await;
        assert_eq!(failed.status, RunStatus::Error);

        let retried = c.retry_run(run.id).await.unwrap();
        assert_ne!(retried.id, run.id);
        let retried = wait_terminal(&c, retried.id).await;
        assert_eq!(retried.status, RunStatus::Success);
        // Now the last run succeeded: a retry is refused with dbt Cloud's reason.
        let e = c.retry_run(retried.id).await.unwrap_err();
        assert_eq!(e.reason(), "BadRequest");

        // Cancel a long-running run.
        sim.set_job_behavior(
            ACCOUNT,
            JOB_OK,
            JobBehavior {
                running: Duration::from_secs(600),
                ..fast(Outcome::Success)
            },
        );
        let long = c
            .trigger_run(JOB_OK, &TriggerRunRequest::new("long").unwrap())
            .await
            .unwrap();
        let cancelled = c.cancel_run(long.id).await.unwrap();
        assert_eq!(cancelled.status, RunStatus::Cancelled);
        assert!(cancelled.status.is_terminal());
    }

    /// What the operator reads of a failed run (`status.steps`, the failing step's name and log,
    /// the failing command's `run_results.json`) names the job's failing command behind dbt
    /// Cloud's three setup steps (clone, profile, `dbt deps`), in the simulator's default (live)
    /// form and in its sparse form alike.
    #[tokio::test]
    async fn failed_run_names_the_failing_command_after_the_setup_steps() {
        use dbt_cloud_operator::controller::job_run::summarize_run_results;
        for live in [true, false] {
            let sim = setup().await;
            sim.set_live_nulls(live);
            let c = client(&sim, KEY, ACCOUNT);
            let run = c
                .trigger_run(JOB_FAILS, &TriggerRunRequest::new("numbering").unwrap())
                .await
                .unwrap();
            let failed = wait_terminal(&c, run.id).await;
            assert_eq!(failed.status, RunStatus::Error);
            let steps = failed.run_steps.clone().unwrap_or_default();
            let seen: Vec<(i64, &str, RunStatus)> = steps
                .iter()
                .map(|s| (s.index.unwrap(), s.name.as_deref().unwrap(), s.status))
                .collect();
            assert_eq!(
                seen,
                [
                    (1, "Clone git repository", RunStatus::Success),
                    (
                        2,
                        "Create profile from connection Snowflake",
                        RunStatus::Success
                    ),
                    (3, "Invoke dbt with `dbt deps`", RunStatus::Success),
                    (4, "Invoke dbt with `dbt seed`", RunStatus::Success),
                    (5, "Invoke dbt with `dbt build`", RunStatus::Error),
                ],
                "live form: {live}"
            );
            // The operator reports the first step in error, with its log.
            let error = steps.iter().find(|s| s.status == RunStatus::Error).unwrap();
            assert!(error
                .logs
                .as_deref()
                .is_some_and(|l| l.contains("Database Error in model orders")));
            // The default artifact is the failing command's; step 4 is `dbt seed`; `dbt deps`
            // (step 3) writes none.
            let rr = c
                .get_run_artifact(run.id, "run_results.json", None)
                .await
                .unwrap();
            let summary = summarize_run_results(&rr).unwrap();
            assert_eq!(summary.failed_nodes, ["model.analytics.orders"]);
            let seed = c
                .get_run_artifact(run.id, "run_results.json", Some(4))
                .await
                .unwrap();
            let summary = summarize_run_results(&seed).unwrap();
            assert_eq!((summary.error, summary.fail), (0, 0));
            let deps = c
                .get_run_artifact(run.id, "run_results.json", Some(3))
                .await
                .unwrap_err();
            assert_eq!(deps.reason(), "NotFound");
        }
    }

    #[tokio::test]
    async fn error_mapping() {
        let sim = setup().await;
        let mut errors = Vec::new();

        // 401 without and with the token-shape hint.
        let e = client(&sim, "dbtc_unknown_token", ACCOUNT)
            .get_account()
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            DbtCloudError::Unauthorized {
                token_shape_hint: false,
                ..
            }
        ));
        assert_eq!(e.user_message(), Some("Invalid token."));
        errors.push(e);
        let e = client(&sim, "not-a-dbt-token", ACCOUNT)
            .get_account()
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            DbtCloudError::Unauthorized {
                token_shape_hint: true,
                ..
            }
        ));
        assert!(e.to_string().contains("dbtu_"));
        errors.push(e);
        // An injected 401 with the right token (no hint: the key looks fine).
        sim.inject(Fault::Unauthorized {
            count: 1,
            scope: FaultScope::Any,
        });
        let e = client(&sim, KEY, ACCOUNT)
            .get_job(JOB_OK)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "Unauthorized");
        errors.push(e);

        // 403: an account the token may not access.
        let e = client(&sim, KEY, OTHER_ACCOUNT)
            .get_account()
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "Forbidden");
        assert!(e.user_message().is_some_and(|m| m.contains("permission")));
        errors.push(e);

        let c = client(&sim, KEY, ACCOUNT);
        // 404.
        let e = c.get_job(424_242).await.unwrap_err();
        assert_eq!(e.reason(), "NotFound");
        assert!(e.to_string().contains("cannot see"));
        errors.push(e);

        // 400 with the envelope's message.
        let e = c
            .list_all_jobs(&ListJobsParams {
                order_by: Some("bogus".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "BadRequest");
        assert!(e.to_string().contains("bogus"), "{e}");
        errors.push(e);

        // 5xx, exhausted retries on a GET (max_attempts 3).
        sim.clear_requests();
        sim.inject(Fault::ServerError {
            count: 5,
            status: 502,
            scope: FaultScope::Accounts,
        });
        let e = c.get_account().await.unwrap_err();
        assert_eq!((e.reason(), e.http_status()), ("ServerError", Some(502)));
        assert!(e.is_retryable());
        assert_eq!(count(&sim, "GET", "/accounts/1/"), 3);
        sim.clear_faults();
        errors.push(e);

        // 429 with a Retry-After beyond max_retry_after is returned (no in-line sleep).
        sim.inject(Fault::RateLimit {
            count: 1,
            retry_after_secs: 30,
            scope: FaultScope::Any,
        });
        let e = c.get_account().await.unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        errors.push(e);

        for e in &errors {
            assert_error_redacted(e);
            assert!(!e.reason().is_empty());
        }
    }

    #[tokio::test]
    async fn retries_honour_retry_after_and_5xx_on_get() {
        let sim = setup().await;
        let obs = Arc::new(CountingObserver::default());
        let c = make_client(
            KEY,
            ACCOUNT,
            test_config(&sim.base_url()),
            AccountLimits::unlimited(),
            obs.clone(),
        );
        let run = c
            .trigger_run(JOB_OK, &TriggerRunRequest::new("x").unwrap())
            .await
            .unwrap();

        sim.clear_requests();
        sim.inject(Fault::RateLimit {
            count: 1,
            retry_after_secs: 1,
            scope: FaultScope::GetRun,
        });
        let got = c.get_run(run.id, &[]).await.unwrap();
        assert_eq!(got.id, run.id);
        let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![429, 200]);
        assert_eq!(obs.throttled.load(Ordering::Relaxed), 1);

        sim.clear_requests();
        sim.inject(Fault::ServerError {
            count: 2,
            status: 500,
            scope: FaultScope::ListRuns,
        });
        let runs = c.list_runs(&ListRunsParams::default()).await.unwrap();
        assert_eq!(runs.items.len(), 1);
        let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![500, 500, 200]);

        // Cancel is idempotent and retried.
        sim.clear_requests();
        sim.inject(Fault::ServerError {
            count: 1,
            status: 503,
            scope: FaultScope::Cancel,
        });
        c.cancel_run(run.id).await.unwrap();
        assert_eq!(count(&sim, "POST", "/cancel/"), 2);
    }

    #[tokio::test]
    async fn trigger_is_never_retried() {
        let sim = setup().await;
        let c = client(&sim, KEY, ACCOUNT);

        // 5xx on the trigger POST: one request, no run, ambiguous for the caller.
        sim.inject(Fault::ServerError {
            count: 1,
            status: 503,
            scope: FaultScope::Trigger,
        });
        let e = c
            .trigger_run(JOB_OK, &TriggerRunRequest::new("x").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), Some(503));
        assert!(e.is_ambiguous_for_trigger());
        assert_eq!(count(&sim, "POST", "/jobs/1000/run/"), 1);
        assert_eq!(sim.trigger_count(ACCOUNT, JOB_OK), 0);

        // 429 on the trigger: not retried either (the caller decides).
        sim.inject(Fault::RateLimit {
            count: 1,
            retry_after_secs: 1,
            scope: FaultScope::Trigger,
        });
        let e = c
            .trigger_run(JOB_OK, &TriggerRunRequest::new("x").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "RateLimited");
        assert!(!e.is_ambiguous_for_trigger());
        assert_eq!(count(&sim, "POST", "/jobs/1000/run/"), 2);

        // Lost response: the run exists, the client reports an ambiguous transport error.
        sim.inject(Fault::LoseTriggerResponse { count: 1 });
        let e = c
            .trigger_run(JOB_OK, &TriggerRunRequest::new("lost").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "TransportError");
        assert!(e.is_ambiguous_for_trigger());
        assert_eq!(count(&sim, "POST", "/jobs/1000/run/"), 3);
        assert_eq!(sim.trigger_count(ACCOUNT, JOB_OK), 1);
        assert_error_redacted(&e);

        // The caller can find it by listing runs of the job.
        let runs = c
            .list_runs(&ListRunsParams {
                job_definition_id: Some(JOB_OK),
                include_related: vec!["trigger".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].cause(), Some("lost"));
    }

    #[tokio::test]
    async fn pagination_over_more_than_100_items() {
        let sim = setup().await;
        for i in 0..150 {
            sim.add_job(
                ACCOUNT,
                JobSpec {
                    id: 5000 + i,
                    project_id: 11,
                    environment_id: 100,
                    name: format!("bulk job {i}"),
                    steps: vec!["dbt build".into()],
                    behavior: JobBehavior::default(),
                },
            );
        }
        let c = client(&sim, KEY, ACCOUNT);
        sim.clear_requests();
        let jobs = c
            .list_all_jobs(&ListJobsParams {
                project_id: Some(11),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 150);
        let mut ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 150);
        assert_eq!(count(&sim, "GET", "/jobs/"), 2);

        // Runs too: 120 triggers, read in two pages as the run search reads them.
        for _ in 0..120 {
            c.trigger_run(JOB_OK, &TriggerRunRequest::new("bulk").unwrap())
                .await
                .unwrap();
        }
        let page = |offset| ListRunsParams {
            job_definition_id: Some(JOB_OK),
            order_by: Some("-id".into()),
            limit: Some(MAX_PAGE_SIZE),
            offset: Some(offset),
            ..Default::default()
        };
        let first = c.list_runs(&page(0)).await.unwrap();
        let second = c.list_runs(&page(100)).await.unwrap();
        assert_eq!((first.items.len(), first.total_count), (100, Some(120)));
        assert_eq!((second.items.len(), second.total_count), (20, Some(120)));
        let mut ids: Vec<i64> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|r| r.id)
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), 120);
        assert!(
            ids.windows(2).all(|w| w[0] > w[1]),
            "newest first, no overlap"
        );
    }

    /// The client decodes the live service's form (the simulator's default: absent values and
    /// unrequested relations as `null`, `run_steps: []`) and the sparse form (absent values
    /// omitted, as the OpenAPI files describe) alike.
    #[tokio::test]
    async fn tolerant_decoding_of_the_live_and_the_sparse_form() {
        for live in [true, false] {
            let sim = setup().await;
            if !live {
                sim.set_live_nulls(false);
            }
            sim.set_job_behavior(
                ACCOUNT,
                JOB_OK,
                JobBehavior {
                    running: Duration::from_secs(600),
                    ..fast(Outcome::Success)
                },
            );
            let c = client(&sim, KEY, ACCOUNT);
            let run = c
                .trigger_run(JOB_OK, &TriggerRunRequest::new("nulls").unwrap())
                .await
                .unwrap();
            let raw = sim.runs(ACCOUNT)[0].clone();
            assert_eq!(
                raw.get("finished_at").is_some(),
                live,
                "live form: {live}: {raw}"
            );
            let got = c.get_run(run.id, &[]).await.unwrap();
            assert_eq!(got.finished_at, None);
            assert!(!got.status.is_terminal());
            // Not asked for: `[]` in the live form, absent in the sparse one.
            assert!(got.run_steps.unwrap_or_default().is_empty());
            assert!(got.trigger.is_none());
            let listed = c.list_runs(&ListRunsParams::default()).await.unwrap();
            assert_eq!(listed.items.len(), 1);
            assert!(c.get_job(JOB_OK).await.is_ok());
            assert!(c.list_accounts().await.is_ok());
            sim.finish_run(ACCOUNT, run.id, Outcome::FailAtStep(1));
            let got = c.get_run(run.id, &["run_steps"]).await.unwrap();
            assert_eq!(got.status, RunStatus::Error);
            assert!(got.finished_at.is_some());
            assert!(got
                .run_steps
                .is_some_and(|s| s.iter().any(|s| s.status == RunStatus::Error)));
        }
    }

    #[tokio::test]
    async fn rate_limiter_limits_requests_to_the_simulator() {
        let sim = setup().await;
        let registry = RateLimiterRegistry::new(RateLimitConfig {
            admin: LimitSpec {
                per_minute: 300, // one per 200 ms
                burst: 1,
            },
        });
        let obs = Arc::new(CountingObserver::default());
        let mk = || {
            make_client(
                KEY,
                ACCOUNT,
                test_config(&sim.base_url()),
                registry.for_account("cloud.getdbt.com", ACCOUNT),
                obs.clone(),
            )
        };
        let (a, b) = (mk(), mk());
        sim.clear_requests();
        let (ra, rb) = tokio::join!(
            async {
                for _ in 0..3 {
                    a.get_job(JOB_OK).await.unwrap();
                }
            },
            async {
                for _ in 0..3 {
                    b.get_job(JOB_OK).await.unwrap();
                }
            }
        );
        let _ = (ra, rb);
        let stats = registry
            .for_account("cloud.getdbt.com", ACCOUNT)
            .admin()
            .stats();
        assert_eq!(stats.permits, 6);
        assert_eq!(sim.requests().len(), 6);
        // Burst 1: every request after the first had to wait for a token.
        assert!(stats.waits >= 3, "{stats:?}");
        assert_eq!(obs.waits.load(Ordering::Relaxed), stats.waits);
    }

    // ------------------------------------------------------------ hostile responses

    /// The default `ClientConfig::retry_after_ceiling`.
    const CEILING: Duration = Duration::from_secs(600);

    async fn rate_limited_by(
        sim: &Simulator,
        c: &DbtCloudClient,
        retry_after: &str,
    ) -> DbtCloudError {
        sim.clear_requests();
        sim.clear_faults();
        sim.inject(Fault::RateLimitRaw {
            count: 5,
            retry_after: retry_after.into(),
            scope: FaultScope::Accounts,
        });
        let e = c.get_account().await.unwrap_err();
        assert_eq!(e.reason(), "RateLimited", "{retry_after}: {e}");
        assert_error_redacted(&e);
        e
    }

    #[tokio::test]
    async fn hostile_retry_after_values_never_panic_nor_stall() {
        let sim = setup().await;
        let c = client(&sim, KEY, ACCOUNT);
        // Huge numbers (beyond u64, and u64::MAX) are clamped to the ceiling and returned at once.
        for huge in [
            "100000000000000000000",
            "18446744073709551615",
            "99999999999",
        ] {
            let e = rate_limited_by(&sim, &c, huge).await;
            assert_eq!(e.retry_after(), Some(CEILING), "{huge}");
            assert_eq!(
                count(&sim, "GET", "/accounts/1/"),
                1,
                "{huge}: not slept in-line"
            );
        }
        // HTTP-dates (RFC 9110): five minutes ahead, and far in the future.
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(300));
        let e = rate_limited_by(&sim, &c, &soon).await;
        let ra = e.retry_after().expect("an HTTP-date is understood");
        assert!(
            ra > Duration::from_secs(200) && ra <= Duration::from_secs(300),
            "{soon}: {ra:?}"
        );
        let e = rate_limited_by(&sim, &c, "Fri, 31 Dec 9999 23:59:59 GMT").await;
        assert_eq!(e.retry_after(), Some(CEILING));
        // Negative, fractional and garbage values are ignored: ordinary backoff, bounded attempts.
        for bad in ["-5", "1.5", "soon", "Tue, 99 Foo 2025 99:99:99 GMT", "0x10"] {
            let e = rate_limited_by(&sim, &c, bad).await;
            assert_eq!(e.retry_after(), None, "{bad}");
            assert_eq!(count(&sim, "GET", "/accounts/1/"), 3, "{bad}: max_attempts");
        }
        // A date in the past means "now": retried in-line, then it works.
        sim.clear_faults();
        sim.inject(Fault::RateLimitRaw {
            count: 1,
            retry_after: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
            scope: FaultScope::Accounts,
        });
        assert!(c.get_account().await.is_ok());
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_while_streaming() {
        let sim = setup().await;
        let c = client(&sim, KEY, ACCOUNT);
        // 20 MiB of valid JSON (the envelope, then whitespace) against the default 16 MiB limit,
        // with and without a Content-Length.
        for chunked in [true, false] {
            sim.clear_requests();
            sim.inject(Fault::OversizedBody {
                count: 1,
                bytes: 20 * 1024 * 1024,
                chunked,
                scope: FaultScope::Accounts,
            });
            let e = c.get_account().await.unwrap_err();
            assert_eq!(e.reason(), "ResponseTooLarge", "chunked={chunked}: {e}");
            assert!(e.to_string().contains("16777216-byte limit"), "{e}");
            assert!(!e.is_retryable());
            assert!(e.is_ambiguous_for_trigger(), "a trigger's run may exist");
            assert_eq!(count(&sim, "GET", "/accounts/1/"), 1, "not retried");
            assert_error_redacted(&e);
        }
        // Under the limit, padding is harmless.
        sim.inject(Fault::OversizedBody {
            count: 1,
            bytes: 1024 * 1024,
            chunked: true,
            scope: FaultScope::Accounts,
        });
        assert_eq!(c.get_account().await.unwrap().id, ACCOUNT);
        // A huge error body only loses its message: the status still decides.
        sim.inject(Fault::OversizedBody {
            count: 1,
            bytes: 20 * 1024 * 1024,
            chunked: true,
            scope: FaultScope::Accounts,
        });
        let wrong = client(&sim, "dbtc_wrong_key_000", ACCOUNT);
        assert_eq!(
            wrong.get_account().await.unwrap_err().reason(),
            "Unauthorized"
        );
    }

    #[tokio::test]
    async fn thousands_of_steps_and_huge_logs_stay_bounded_in_status() {
        use dbt_cloud_operator::controller::job_run::run_details;
        use dbt_cloud_operator::controller::lifecycle::{bound_status, MAX_STATUS_STEPS};
        use dbt_cloud_operator::crd::DbtCloudJobRunStatus;

        let sim = setup().await;
        let steps: Vec<String> = (0..3_000)
            .map(|i| format!("dbt run -s model_{i}"))
            .collect();
        sim.add_job(
            ACCOUNT,
            JobSpec {
                id: 2000,
                project_id: 10,
                environment_id: 100,
                name: "Huge".into(),
                steps,
                behavior: fast(Outcome::FailAtStep(3_000)),
            },
        );
        sim.set_step_log_bytes(2_000);
        let c = client(&sim, KEY, ACCOUNT);
        let run = c
            .trigger_run(2000, &TriggerRunRequest::new("huge").unwrap())
            .await
            .unwrap();
        wait_terminal(&c, run.id).await;
        // ~7 MB of steps: under the response limit, decoded, then bounded for status.
        let full = c.get_run(run.id, &["run_steps"]).await.unwrap();
        let details = run_details(&full);
        assert_eq!(
            details.steps.len(),
            3_003,
            "three setup steps + the job's 3,000 commands"
        );
        let failed = details.failed_step.clone().expect("the failing step");
        let (name, log) = (failed.name, failed.log_tail);
        assert!(name.contains("model_2999"), "{name}");
        assert!(
            log.ends_with("TOTAL=4") && log.len() < 400,
            "only the tail: {log}"
        );
        let mut status = DbtCloudJobRunStatus {
            steps: details.steps,
            ..Default::default()
        };
        bound_status(&mut status);
        assert_eq!(status.steps.len(), MAX_STATUS_STEPS);
        assert_eq!(status.steps_omitted, Some(3_003 - 50));
        assert_eq!(status.steps.last().unwrap().status, "Error");
        assert!(serde_json::to_vec(&status).unwrap().len() < 64 * 1024);

        // ~30 MB of logs: over the limit, refused with a clear error (the shell keeps no steps).
        sim.set_step_log_bytes(10_000);
        let e = c.get_run(run.id, &["run_steps"]).await.unwrap_err();
        assert_eq!(e.reason(), "ResponseTooLarge", "{e}");
        assert!(e.to_string().contains("get_run"), "{e}");
    }
}
