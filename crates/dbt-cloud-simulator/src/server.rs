//! HTTP serving, routing, authentication and fault injection.

// Handlers return ready-made error responses as `Err` (test-support code: size is irrelevant), and
// pick "the latest run" with `filter(..).last()` over small maps, which reads best.
#![allow(clippy::result_large_err, clippy::double_ended_iterator_last)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::artifacts;
use crate::render::{self, envelope, error_envelope, list_extra};
use crate::{Fault, FaultScope, Inner, Outcome, RequestRecord, State, TriggerRecord};

/// Returned instead of a response to make hyper close the connection without answering.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated lost response")
    }
}

impl std::error::Error for DropConnection {}

pub(crate) async fn serve(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = inner.shutdown.notified() => break,
        }
    }
}

type Reply = Result<Response<Full<Bytes>>, DropConnection>;

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error(status: u16, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &error_envelope(status, message))
}

/// What a fault scope is matched against.
fn scope_matches(scope: &FaultScope, method: &Method, segs: &[&str], path: &str) -> bool {
    let runs_tail = segs
        .iter()
        .position(|s| *s == "runs")
        .map(|i| &segs[i + 1..]);
    match scope {
        FaultScope::Any => true,
        FaultScope::Trigger => method == Method::POST && segs.last() == Some(&"run"),
        FaultScope::ListRuns => method == Method::GET && segs.last() == Some(&"runs"),
        FaultScope::GetRun => method == Method::GET && runs_tail.is_some_and(|t| t.len() == 1),
        FaultScope::Cancel => method == Method::POST && segs.last() == Some(&"cancel"),
        FaultScope::Accounts => {
            method == Method::GET && segs.len() <= 4 && segs.get(2) == Some(&"accounts")
        }
        FaultScope::PathContains(s) => path.contains(s.as_str()),
    }
}

enum Injected {
    None,
    Reply(Response<Full<Bytes>>),
    Delay(Duration),
    SlowResponse(Duration),
    LoseResponse,
    Oversize { bytes: usize, chunked: bool },
}

fn take_fault(state: &mut State, method: &Method, segs: &[&str], path: &str) -> Injected {
    let is_trigger = scope_matches(&FaultScope::Trigger, method, segs, path);
    let mut found = None;
    for (i, f) in state.faults.iter_mut().enumerate() {
        let (count, applies) = match f {
            Fault::RateLimit { count, scope, .. }
            | Fault::ServerError { count, scope, .. }
            | Fault::Delay { count, scope, .. }
            | Fault::SlowResponse { count, scope, .. }
            | Fault::RateLimitRaw { count, scope, .. }
            | Fault::OversizedBody { count, scope, .. }
            | Fault::Unauthorized { count, scope } => {
                let applies = scope_matches(scope, method, segs, path);
                (count, applies)
            }
            Fault::LoseTriggerResponse { count } => (count, is_trigger),
            Fault::HideNewRuns { .. } => continue,
        };
        if applies && *count > 0 {
            *count -= 1;
            let exhausted = *count == 0;
            found = Some((i, exhausted));
            break;
        }
    }
    if let Some((i, exhausted)) = found {
        let fault = if exhausted {
            state.faults.remove(i).expect("index")
        } else {
            state.faults[i].clone()
        };
        return match fault {
            Fault::RateLimit {
                retry_after_secs, ..
            } => {
                let mut r = error(429, "Too many requests. Please slow down.");
                r.headers_mut().insert(
                    "retry-after",
                    retry_after_secs.to_string().parse().expect("header"),
                );
                Injected::Reply(r)
            }
            Fault::RateLimitRaw { retry_after, .. } => {
                let mut r = error(429, "Too many requests. Please slow down.");
                r.headers_mut().insert(
                    "retry-after",
                    retry_after.parse().expect("a valid header value"),
                );
                Injected::Reply(r)
            }
            Fault::OversizedBody { bytes, chunked, .. } => Injected::Oversize { bytes, chunked },
            Fault::ServerError { status, .. } => {
                Injected::Reply(error(status, "Internal server error (simulated)"))
            }
            Fault::Unauthorized { .. } => Injected::Reply(error(401, "Invalid token.")),
            Fault::Delay { delay, .. } => Injected::Delay(delay),
            Fault::SlowResponse { delay, .. } => Injected::SlowResponse(delay),
            Fault::LoseTriggerResponse { .. } => Injected::LoseResponse,
            Fault::HideNewRuns { .. } => Injected::None,
        };
    }
    if let Some((faults, rng)) = state.random.as_mut() {
        let roll: f64 = rng.random();
        if roll < faults.rate_429 {
            let mut r = error(429, "Too many requests. Please slow down.");
            r.headers_mut().insert(
                "retry-after",
                faults.retry_after_secs.to_string().parse().expect("header"),
            );
            return Injected::Reply(r);
        }
        if roll < faults.rate_429 + faults.rate_5xx {
            return Injected::Reply(error(503, "Service unavailable (simulated)"));
        }
        if is_trigger && rng.random::<f64>() < faults.rate_lost_trigger {
            return Injected::LoseResponse;
        }
    }
    Injected::None
}

struct Seen<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    authorization: Option<String>,
    at: std::time::Instant,
}

fn record(inner: &Inner, seen: &Seen<'_>, status: u16) {
    inner
        .state
        .lock()
        .expect("state")
        .requests
        .push(RequestRecord {
            method: seen.method.to_string(),
            path: seen.path.to_string(),
            query: seen.query.to_string(),
            status,
            authorization: seen.authorization.clone(),
            at: seen.at,
        });
}

/// The `Authorization` header with its secret replaced: `Token <redacted>`.
fn redact(header: &str) -> String {
    match header.split_once(' ') {
        Some((scheme, _)) => format!("{scheme} <redacted>"),
        None => "<redacted>".to_string(),
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Reply {
    let at = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let header = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let token = header
        .as_deref()
        .and_then(|v| {
            v.strip_prefix("Token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .map(|t| t.trim().to_string());
    let form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let seen = Seen {
        method: &method,
        path: &path,
        query: &query,
        authorization: header.as_deref().map(redact),
        at,
    };
    let body = if form { form_to_json(&body) } else { body };

    let injected = take_fault(
        &mut inner.state.lock().expect("state"),
        &method,
        &segs,
        &path,
    );
    let mut hold = None;
    let mut oversize = None;
    let lose = match injected {
        Injected::Reply(r) => {
            record(&inner, &seen, r.status().as_u16());
            return Ok(r);
        }
        Injected::Delay(d) => {
            tokio::time::sleep(d).await;
            false
        }
        Injected::SlowResponse(d) => {
            hold = Some(d);
            false
        }
        Injected::LoseResponse => true,
        Injected::Oversize { bytes, chunked } => {
            oversize = Some((bytes, chunked));
            false
        }
        Injected::None => false,
    };
    let mut response = {
        let mut state = inner.state.lock().expect("state");
        route(&mut state, &method, &segs, &query, token.as_deref(), &body)
    };
    if lose {
        record(&inner, &seen, 0);
        return Err(DropConnection);
    }
    if let Some(d) = hold {
        tokio::time::sleep(d).await;
    }
    if let Some((bytes, chunked)) = oversize {
        response = pad_body(response, bytes, chunked).await;
    }
    record(&inner, &seen, response.status().as_u16());
    Ok(response)
}

/// The response with its body padded by trailing whitespace (valid after any JSON value) to at
/// least `bytes`; with `chunked`, sent without `Content-Length`.
async fn pad_body(
    response: Response<Full<Bytes>>,
    bytes: usize,
    chunked: bool,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = response.into_parts();
    let mut data = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    if data.len() < bytes {
        data.resize(bytes, b' ');
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if chunked {
        parts.headers.insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::from(data)))
}

/// A form-encoded trigger body as the equivalent JSON object (`steps_override` may repeat; numbers
/// and booleans are converted for the fields the schema types so).
fn form_to_json(body: &[u8]) -> Bytes {
    let mut obj = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        let value = match k.as_ref() {
            "steps_override" => {
                let mut steps = obj
                    .remove("steps_override")
                    .and_then(|s| s.as_array().cloned())
                    .unwrap_or_default();
                steps.push(json!(v));
                json!(steps)
            }
            "generate_docs_override" => json!(v == "true" || v == "True" || v == "1"),
            k if INT_FIELDS.contains(&k) => v.parse::<i64>().map(|n| json!(n)).unwrap_or(json!(v)),
            _ => json!(v),
        };
        obj.insert(k.into_owned(), value);
    }
    Bytes::from(Value::Object(obj).to_string())
}

/// Integer fields of `TriggerRunRequestRequest`.
const INT_FIELDS: [&str; 6] = [
    "azure_pull_request_id",
    "github_pull_request_id",
    "gitlab_merge_request_id",
    "non_native_pull_request_id",
    "threads_override",
    "timeout_seconds_override",
];

/// String fields (`minLength: 1`) of `TriggerRunRequestRequest`, besides `cause`.
const STRING_FIELDS: [&str; 5] = [
    "git_sha",
    "git_branch",
    "schema_override",
    "dbt_version_override",
    "target_name_override",
];

/// Checks the optional trigger fields against `TriggerRunRequestRequest`; a DRF-style message.
fn check_trigger_fields(req: &Value) -> Result<(), String> {
    for key in INT_FIELDS {
        match req.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if v.is_i64() => {}
            Some(_) => return Err(format!("{key}: A valid integer is required.")),
        }
    }
    for key in STRING_FIELDS {
        match req.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::String(_)) => return Err(format!("{key}: This field may not be blank.")),
            Some(_) => return Err(format!("{key}: Not a valid string.")),
        }
    }
    match req.get("generate_docs_override") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(_) => return Err("generate_docs_override: Must be a valid boolean.".into()),
    }
    match req.get("steps_override") {
        None | Some(Value::Null) => {}
        Some(Value::Array(steps)) => {
            if steps.iter().any(|s| s.as_str().is_none_or(str::is_empty)) {
                return Err("steps_override: This field may not be blank.".into());
            }
        }
        Some(_) => {
            return Err("steps_override: Expected a list of items but got type \"str\".".into())
        }
    }
    Ok(())
}

/// Parsed query parameters (repeated keys kept). Errors are ready-made 400 responses.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Self(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn int(&self, key: &str) -> Result<Option<i64>, Response<Full<Bytes>>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| error(400, &format!("{key}: A valid integer is required."))),
        }
    }
    /// `k=[1,2]`, `k=1,2` and repeated `k=1&k=2`.
    fn ints(&self, key: &str) -> Result<Vec<i64>, Response<Full<Bytes>>> {
        let mut out = Vec::new();
        for (_, v) in self.0.iter().filter(|(k, _)| k == key) {
            for part in v
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                out.push(
                    part.parse()
                        .map_err(|_| error(400, &format!("{key}: A valid integer is required.")))?,
                );
            }
        }
        Ok(out)
    }
    fn includes(&self) -> Vec<String> {
        self.get("include_related")
            .map(|v| {
                v.trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|s| s.trim().trim_matches('"').to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
    fn page(&self) -> Result<(usize, usize), Response<Full<Bytes>>> {
        let limit = self.int("limit")?.unwrap_or(100);
        let offset = self.int("offset")?.unwrap_or(0);
        if !(1..=100).contains(&limit) {
            return Err(error(400, "limit: Ensure this value is between 1 and 100."));
        }
        if offset < 0 {
            return Err(error(
                400,
                "offset: Ensure this value is greater than or equal to 0.",
            ));
        }
        Ok((limit as usize, offset as usize))
    }
}

fn paginate(items: Vec<Value>, q: &Query, filters: Value, order_by: &str) -> Response<Full<Bytes>> {
    let (limit, offset) = match q.page() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let count = page.len();
    json_response(
        200,
        &envelope(
            json!(page),
            Some(list_extra(filters, order_by, count, total, limit, offset)),
        ),
    )
}

fn icontains(name: &str, q: &Query) -> bool {
    q.get("name__icontains")
        .is_none_or(|n| name.to_lowercase().contains(&n.to_lowercase()))
}

fn account_json(id: i64, name: &str) -> Value {
    render::complete(
        "account_v3",
        json!({
            "id": id, "name": name, "state": 1, "plan": "enterprise", "pending_cancel": false,
            "run_slots": 5, "developer_seats": 10, "read_only_seats": 10, "locked": false,
            "created_at": "2025-01-01 00:00:00.000000+00:00", "updated_at": "2025-01-01 00:00:00.000000+00:00",
            "docs_job_id": null, "freshness_job_id": null, "lock_reason": null, "unlock_if_subscription_renewed": false,
            "billing_email_address": null, "starter_repo_url": null, "sso_reauth": false, "force_sso": false,
            "static_subdomain": format!("act{id}"), "run_duration_limit_seconds": 86400, "enterprise_unlimited_seats": false
        }),
    )
}

fn route(
    state: &mut State,
    method: &Method,
    segs: &[&str],
    query: &str,
    token: Option<&str>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let q = Query::parse(query);
    let Some(allowed) = token.and_then(|t| state.tokens.get(t)).cloned() else {
        return error(401, "Invalid token.");
    };
    if segs == ["graphql"] && method == Method::POST {
        return discovery(state, &allowed, body);
    }
    match segs {
        ["api", "v2" | "v3", "accounts"] if method == Method::GET => {
            let items = state
                .accounts
                .iter()
                .filter(|(id, _)| allowed.contains(id))
                .map(|(id, n)| account_json(*id, n))
                .collect();
            paginate(items, &q, json!({}), "id")
        }
        ["api", _, "accounts", a, rest @ ..] => {
            let Ok(account) = a.parse::<i64>() else {
                return error(404, "Not found.");
            };
            if !state.accounts.contains_key(&account) {
                return error(404, "Not found.");
            }
            if !allowed.contains(&account) {
                return error(403, "You do not have permission to access this account.");
            }
            account_route(state, method, segs[1], account, rest, &q, body)
        }
        _ => error(404, "Not found."),
    }
}

fn account_route(
    state: &mut State,
    method: &Method,
    version: &str,
    account: i64,
    rest: &[&str],
    q: &Query,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match (version, rest) {
        (_, []) if get => json_response(
            200,
            &envelope(account_json(account, &state.accounts[&account]), None),
        ),
        ("v3", ["projects"]) if get => {
            let items = state
                .projects
                .iter()
                .filter(|((a, _), n)| *a == account && icontains(n, q))
                .map(|((_, id), n)| render::complete("project_v3", json!({"id": id, "account_id": account, "name": n, "description": "", "state": 1, "dbt_project_subdirectory": "", "connection_id": 1, "repository_id": 1, "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"})))
                .collect();
            paginate(items, q, json!({"account_id": account}), "id")
        }
        ("v3", ["projects", _, "environments"]) | ("v2", ["environments"]) if get => {
            let project: Option<i64> = match p_of(rest, q) {
                Ok(p) => p,
                Err(e) => return e,
            };
            let items = state
                .environments
                .iter()
                .filter(|((a, _), (proj, n))| *a == account && project.is_none_or(|p| p == *proj) && icontains(n, q))
                .map(|((_, id), (proj, n))| render::complete(if version == "v2" { "environment_v2" } else { "environment_v3" }, json!({"id": id, "account_id": account, "project_id": proj, "name": n, "dbt_version": "1.9.1", "type": "deployment", "deployment_type": "production", "use_custom_branch": false, "state": 1, "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"})))
                .collect();
            paginate(items, q, json!({"account_id": account}), "id")
        }
        ("v2", ["jobs"]) if get => {
            let (project, env) = match (q.int("project_id"), q.int("environment_id")) {
                (Ok(p), Ok(e)) => (p, e),
                (Err(e), _) | (_, Err(e)) => return e,
            };
            let mut items: Vec<(i64, Value)> = state
                .jobs
                .iter()
                .filter(|((a, _), j)| {
                    *a == account
                        && project.is_none_or(|p| p == j.project_id)
                        && env.is_none_or(|e| e == j.environment_id)
                        && icontains(&j.name, q)
                })
                .map(|((_, id), j)| {
                    (
                        *id,
                        render::complete("job_v2", render::job_json(account, j)),
                    )
                })
                .collect();
            let order = q.get("order_by").unwrap_or("id");
            match order.trim_start_matches('-') {
                "id" | "created_at" | "pk" => {}
                "name" => items.sort_by(|a, b| a.1["name"].as_str().cmp(&b.1["name"].as_str())),
                other => {
                    return error(
                        400,
                        &format!("order_by: {other} is not a valid ordering field."),
                    )
                }
            }
            if order.starts_with('-') {
                items.reverse();
            }
            paginate(
                items.into_iter().map(|(_, v)| v).collect(),
                q,
                json!({"account_id": account}),
                q.get("order_by").unwrap_or("id"),
            )
        }
        ("v2", ["jobs", j]) if get => match j
            .parse::<i64>()
            .ok()
            .and_then(|j| state.jobs.get(&(account, j)))
        {
            Some(job) => json_response(
                200,
                &envelope(
                    render::complete("job_v2", render::job_json(account, job)),
                    None,
                ),
            ),
            None => error(404, "Not found."),
        },
        ("v2", ["jobs", j, "run"]) if post => trigger(state, account, j, body),
        ("v2", ["jobs", j, "rerun"]) if post => {
            let Some(job_id) = j
                .parse::<i64>()
                .ok()
                .filter(|j| state.jobs.contains_key(&(account, *j)))
            else {
                return error(404, "Not found.");
            };
            let last = state
                .runs
                .values()
                .filter(|r| r.account == account && r.job_id == job_id)
                .last()
                .map(|r| (r.id, render::status(r, now)));
            match last {
                Some((id, render::ERROR)) => retry(state, account, id),
                _ => {
                    let cause = json!({"cause": "Rerun from the API"}).to_string();
                    trigger(state, account, j, cause.as_bytes())
                }
            }
        }
        ("v2", ["jobs", j, "artifacts", path @ ..]) if get => {
            let Ok(job_id) = j.parse::<i64>() else {
                return error(404, "Not found.");
            };
            let latest = state
                .runs
                .values()
                .filter(|r| {
                    r.account == account
                        && r.job_id == job_id
                        && render::status(r, now) >= render::SUCCESS
                })
                .last()
                .map(|r| r.id);
            match latest {
                Some(id) => artifact(state, id, &path.join("/"), q, now),
                None => error(404, "No completed run for this job."),
            }
        }
        ("v2", ["runs"]) if get => list_runs(state, account, q, now),
        ("v2", ["runs", r, tail @ ..]) => {
            let Some(run_id) = r.parse::<i64>().ok().filter(|id| {
                state.runs.get(id).is_some_and(|run| {
                    run.account == account && run.hidden_until.is_none_or(|h| now >= h)
                })
            }) else {
                return error(404, "Not found.");
            };
            match tail {
                [] if get => {
                    let includes = q.includes();
                    let inc: Vec<&str> = includes.iter().map(String::as_str).collect();
                    json_response(
                        200,
                        &envelope(render::run(&state.runs[&run_id], state, now, &inc), None),
                    )
                }
                ["cancel"] if post => {
                    let run = state.runs.get_mut(&run_id).expect("exists");
                    if render::status(run, now) < render::SUCCESS {
                        run.forced = Some((Outcome::Cancelled, now));
                        let job = run.job_id;
                        state.reschedule(account, job);
                    }
                    json_response(
                        200,
                        &envelope(
                            render::run(&state.runs[&run_id], state, now, &["trigger"]),
                            None,
                        ),
                    )
                }
                ["retry"] if post => retry(state, account, run_id),
                ["retry"] if get => {
                    let run = &state.runs[&run_id];
                    match render::failing_command(run)
                        .filter(|_| render::status(run, now) == render::ERROR)
                    {
                        Some(i) => {
                            let names = render::step_names(run);
                            json_response(
                                200,
                                &envelope(
                                    json!({"failed_step": names[render::SETUP_STEPS + i], "skipped_steps": names[render::SETUP_STEPS + 1 + i..].to_vec()}),
                                    None,
                                ),
                            )
                        }
                        None => error(400, "This run is not retryable: RETRY_NOT_FAILED_RUN"),
                    }
                }
                ["artifacts"] if get => {
                    let run = &state.runs[&run_id];
                    if artifacts::run_results(run, now, None).is_none() {
                        return json_response(200, &envelope(json!([]), None));
                    }
                    json_response(
                        200,
                        &envelope(json!(["manifest.json", "run_results.json"]), None),
                    )
                }
                ["artifacts", path @ ..] if get => artifact(state, run_id, &path.join("/"), q, now),
                _ => error(405, "Method not allowed."),
            }
        }
        _ => error(404, "Not found."),
    }
}

fn p_of(rest: &[&str], q: &Query) -> Result<Option<i64>, Response<Full<Bytes>>> {
    match rest {
        ["projects", p, "environments"] => {
            p.parse().map(Some).map_err(|_| error(404, "Not found."))
        }
        _ => q.int("project_id"),
    }
}

fn list_runs(state: &State, account: i64, q: &Query, now: Instant) -> Response<Full<Bytes>> {
    let parsed = (|| {
        Ok::<_, Response<Full<Bytes>>>((
            [
                q.int("job_definition_id")?,
                q.int("project_id")?,
                q.int("environment_id")?,
                q.int("status")?,
                q.int("id__gt")?,
                q.int("pk")?,
            ],
            q.ints("status__in")?,
            q.ints("pk__in")?,
            q.ints("project_id__in")?,
        ))
    })();
    let ([job, project, env, status, id_gt, pk], status_in, pk_in, project_in) = match parsed {
        Ok(p) => p,
        Err(e) => return e,
    };
    let includes = q.includes();
    let inc: Vec<&str> = includes
        .iter()
        .map(String::as_str)
        .filter(|i| *i != "run_steps")
        .collect();
    let mut runs: Vec<&crate::RunState> = state
        .runs
        .values()
        .filter(|r| r.account == account && r.hidden_until.is_none_or(|h| now >= h))
        .filter(|r| job.is_none_or(|j| r.job_id == j))
        .filter(|r| project.is_none_or(|p| r.project_id == p))
        .filter(|r| project_in.is_empty() || project_in.contains(&r.project_id))
        .filter(|r| env.is_none_or(|e| r.environment_id == e))
        .filter(|r| pk.is_none_or(|p| r.id == p))
        .filter(|r| pk_in.is_empty() || pk_in.contains(&r.id))
        .filter(|r| id_gt.is_none_or(|g| r.id > g))
        .filter(|r| status.is_none_or(|s| render::status(r, now) == s))
        .filter(|r| status_in.is_empty() || status_in.contains(&render::status(r, now)))
        .collect();
    let order = q.get("order_by").unwrap_or("id");
    match order.trim_start_matches('-') {
        // Unfinished runs have no finish time; they sort after finished ones.
        "finished_at" => runs.sort_by_key(|r| {
            let done = render::status(r, now) >= render::SUCCESS;
            (!done, if done { Some(r.finish_at) } else { None }, r.id)
        }),
        // Ids grow with creation time.
        "id" | "created_at" | "pk" => runs.sort_by_key(|r| r.id),
        other => {
            return error(
                400,
                &format!("order_by: {other} is not a valid ordering field."),
            )
        }
    }
    if order.starts_with('-') {
        runs.reverse();
    }
    let items = runs
        .iter()
        .map(|r| render::run(r, state, now, &inc))
        .collect();
    paginate(items, q, json!({"account_id": account}), order)
}

fn trigger(state: &mut State, account: i64, job: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let Some(job) = job
        .parse::<i64>()
        .ok()
        .and_then(|j| state.jobs.get(&(account, j)))
        .cloned()
    else {
        return error(404, "Not found.");
    };
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) if body.iter().all(u8::is_ascii_whitespace) => json!({}),
        Ok(_) => return error(400, "Invalid data. Expected a dictionary."),
        Err(e) => return error(400, &format!("JSON parse error - {e}")),
    };
    let cause = match req.get("cause").and_then(Value::as_str) {
        None => return error(400, "cause: This field is required."),
        Some("") => return error(400, "cause: This field may not be blank."),
        Some(c) if c.chars().count() > 255 => {
            return error(
                400,
                "cause: Ensure this field has no more than 255 characters.",
            )
        }
        Some(c) => c.to_string(),
    };
    if let Err(message) = check_trigger_fields(&req) {
        return error(400, &message);
    }
    if let Some(t) = req.get("threads_override").and_then(Value::as_i64) {
        if t < 1 {
            return error(
                400,
                "threads_override: Ensure this value is greater than or equal to 1.",
            );
        }
    }
    let commands = req
        .get("steps_override")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| job.steps.clone());
    let mut trigger = json!({
        "id": 0, "cause": cause, "job_definition_id": job.id, "cause_category": "api",
        "created_at": render::ts(jiff::Timestamp::now()), "updated_at": render::ts(jiff::Timestamp::now()),
    });
    for key in render::TRIGGER_OPTIONAL {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            trigger[key] = v.clone();
        }
    }
    let id = state.create_run(
        account,
        &job,
        trigger,
        commands,
        0,
        job.behavior.outcome,
        None,
    );
    let trigger_id = state.runs[&id].trigger_id;
    state.runs.get_mut(&id).expect("created").trigger["id"] = json!(trigger_id);
    state.triggers.push(TriggerRecord {
        account,
        job_id: job.id,
        run_id: id,
        cause,
        at: std::time::Instant::now(),
    });
    json_response(
        200,
        &envelope(
            render::run(&state.runs[&id], state, Instant::now(), &["trigger"]),
            None,
        ),
    )
}

fn retry(state: &mut State, account: i64, run_id: i64) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let run = state.runs[&run_id].clone();
    let latest = state
        .runs
        .values()
        .filter(|r| r.account == account && r.job_id == run.job_id)
        .map(|r| r.id)
        .max()
        == Some(run_id);
    if render::status(&run, now) != render::ERROR {
        return error(400, "This run cannot be retried: RETRY_NOT_FAILED_RUN");
    }
    if !latest {
        return error(400, "This run cannot be retried: RETRY_NOT_LATEST_RUN");
    }
    let Some(job) = state.jobs.get(&(account, run.job_id)).cloned() else {
        return error(404, "Not found.");
    };
    let failed = render::failing_command(&run).unwrap_or(0);
    let commands = run.commands[failed..].to_vec();
    let first = run.first_command + failed;
    let mut trigger = run.trigger.clone();
    trigger["created_at"] = json!(render::ts(jiff::Timestamp::now()));
    let id = state.create_run(
        account,
        &job,
        trigger,
        commands,
        first,
        job.behavior.retry_outcome,
        Some(run_id),
    );
    let trigger_id = state.runs[&id].trigger_id;
    state.runs.get_mut(&id).expect("created").trigger["id"] = json!(trigger_id);
    json_response(
        200,
        &envelope(
            render::run(&state.runs[&id], state, now, &["trigger"]),
            None,
        ),
    )
}

fn artifact(
    state: &State,
    run_id: i64,
    path: &str,
    q: &Query,
    now: Instant,
) -> Response<Full<Bytes>> {
    let run = &state.runs[&run_id];
    let step = match q.int("step") {
        Ok(s) => s.map(|s| s.max(0) as usize),
        Err(e) => return e,
    };
    let doc = match path {
        "run_results.json" => artifacts::run_results(run, now, step),
        "manifest.json" => artifacts::manifest(run, now, step),
        _ => None,
    };
    match doc {
        // Artifacts are served raw, not in the envelope.
        Some(doc) => json_response(200, &doc),
        None => error(404, &format!("No artifact {path} for run {run_id}.")),
    }
}

fn discovery(state: &State, allowed: &[i64], body: &[u8]) -> Response<Full<Bytes>> {
    use crate::discovery as gql;
    let ok = |v: Value| json_response(200, &v);
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return ok(gql::errors("POST body sent invalid JSON."));
    };
    let Some(query) = req.get("query").and_then(Value::as_str) else {
        return ok(gql::errors("Must provide query string."));
    };
    let vars = req.get("variables").cloned().unwrap_or(Value::Null);
    let fields = match gql::parse(query).and_then(|f| gql::check(&f, "Query").map(|_| f)) {
        Ok(f) => f,
        Err(e) => return ok(gql::errors(&e)),
    };
    let now = Instant::now();
    let resolve_query = |f: &gql::Field| -> Value {
        match f.name() {
            "__typename" => json!("Query"),
            "job" => {
                let job_id = gql::int_arg(f, "id", &vars);
                let run_id = gql::int_arg(f, "runId", &vars);
                let run = state
                    .runs
                    .values()
                    .filter(|r| {
                        allowed.contains(&r.account)
                            && Some(r.job_id) == job_id
                            && run_id.is_none_or(|id| id == r.id)
                            && render::status(r, now) >= render::SUCCESS
                    })
                    .last();
                let Some(run) = run else { return Value::Null };
                let results = artifacts::run_results(run, now, None)
                    .and_then(|rr| rr.get("results").and_then(Value::as_array).cloned())
                    .unwrap_or_default();
                gql::render(f.selection(), &|jf| match jf.name() {
                    "__typename" => json!("JobNode"),
                    "id" => json!(run.job_id),
                    "runId" => json!(run.id),
                    _ => json!(results
                        .iter()
                        .filter(|n| n["unique_id"]
                            .as_str()
                            .is_some_and(|u| u.starts_with("model.")))
                        .map(|n| {
                            let id = n["unique_id"].as_str().unwrap_or_default();
                            gql::render(jf.selection(), &|mf| match mf.name() {
                                "__typename" => json!("ModelNode"),
                                "uniqueId" => json!(id),
                                "name" => json!(id.rsplit('.').next()),
                                "status" => n["status"].clone(),
                                "executionTime" => n["execution_time"].clone(),
                                "error" => {
                                    if n["status"] == "error" {
                                        n["message"].clone()
                                    } else {
                                        Value::Null
                                    }
                                }
                                "runId" => json!(run.id),
                                "jobId" => json!(run.job_id),
                                _ => json!("model"),
                            })
                        })
                        .collect::<Vec<_>>()),
                })
            }
            _ => Value::Null,
        }
    };
    ok(json!({"data": gql::render(&fields, &resolve_query)}))
}
