//! The typed dbt Cloud API client.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use super::error::DbtCloudError;
use super::host::{default_allowed_suffixes, AccessHost};
use super::rate_limit::AccountLimits;
use super::types::{
    bracket_list, Account, Envelope, Environment, ErrorEnvelope, Job, ListJobsParams,
    ListRunsParams, Page, Project, Run, TriggerRunRequest,
};

/// `User-Agent` sent with every request.
pub const USER_AGENT_VALUE: &str = concat!("dbt-cloud-operator/", env!("CARGO_PKG_VERSION"));

/// Largest page dbt Cloud serves.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Upper bound on pages fetched by the `list_all_*` helpers (defensive).
const MAX_PAGES: usize = 10_000;

/// Largest error-response body read for its message; the rest is not read (the status decides).
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

const ACCEPT_JSON: &str = "application/json";
const ACCEPT_ARTIFACT: &str = "application/json, */*;q=0.5";

/// Default [`ClientConfig::retry_after_ceiling`]: 10 minutes.
pub const DEFAULT_RETRY_AFTER_CEILING: Duration = Duration::from_secs(600);
/// Default [`ClientConfig::max_response_bytes`]: 16 MiB (a page of 100 runs, or one run with
/// thousands of steps and their logs, is far smaller).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Default [`ClientConfig::max_artifact_bytes`]: 64 MiB (`run_results.json` of a large project).
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;

/// Metrics hook, so this module does not depend on the metrics module.
/// All methods default to doing nothing.
pub trait ApiObserver: Send + Sync {
    /// One HTTP attempt finished: `status` is `None` when no response arrived.
    fn on_response(&self, endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
        let _ = (endpoint, status, elapsed);
    }
    /// The client waited `waited` for a rate-limiter permit.
    fn on_rate_limit_wait(&self, waited: Duration) {
        let _ = waited;
    }
    /// dbt Cloud answered 429.
    fn on_throttled(&self) {}
}

/// An [`ApiObserver`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl ApiObserver for NoopObserver {}

/// Client settings (operator-level configuration, never from a custom resource).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout of one HTTP attempt, from connect to the end of the body.
    pub request_timeout: Duration,
    /// TCP/TLS connect timeout (used by [`http_client`]).
    pub connect_timeout: Duration,
    /// Attempts of an idempotent call (GET, cancel); at least 1.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per retry up to `backoff_max`. Each delay `d` is
    /// jittered to a uniform value in `[d/2, d)`.
    pub backoff_base: Duration,
    /// Largest backoff delay (before jitter, which only shortens it).
    pub backoff_max: Duration,
    /// Longest `Retry-After` waited in-line; longer ones are returned as `RateLimited`.
    pub max_retry_after: Duration,
    /// Longest `Retry-After` believed at all: larger values (`10^20` seconds, a date years
    /// ahead) are clamped to this, so no caller (in-line retry, reconcile requeue) waits longer.
    pub retry_after_ceiling: Duration,
    /// Largest JSON response body read, in bytes. A larger one is refused while it streams in
    /// ([`DbtCloudError::ResponseTooLarge`]); it is never buffered whole.
    pub max_response_bytes: u64,
    /// Largest artifact (`run_results.json`, `manifest.json`, …) read, in bytes; as above.
    pub max_artifact_bytes: u64,
    /// Host suffixes the API key may be sent to.
    pub allowed_host_suffixes: Vec<String>,
    /// Dev/test only: a base URL (e.g. `http://127.0.0.1:PORT`) used instead of
    /// `https://<host>`. Plain HTTP is accepted only here.
    pub insecure_base_url_override: Option<Url>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            retry_after_ceiling: DEFAULT_RETRY_AFTER_CEILING,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            allowed_host_suffixes: default_allowed_suffixes(),
            insecure_base_url_override: None,
        }
    }
}

/// Builds the shared `reqwest::Client`: no redirects, `User-Agent`, connect
/// timeout, connection pooling, HTTPS only unless the insecure override is set.
/// Requires a rustls `CryptoProvider` installed as process default.
pub fn http_client(config: &ClientConfig) -> Result<reqwest::Client, DbtCloudError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT_VALUE)
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .https_only(config.insecure_base_url_override.is_none())
        .build()
        .map_err(|e| DbtCloudError::invalid_request(format!("cannot build HTTP client: {e}")))
}

/// One request's worth of an account's budget, already taken ([`DbtCloudClient::reserve`]).
#[derive(Debug)]
pub struct Reservation(());

struct Call {
    endpoint: &'static str,
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    retry: bool,
    /// Not sent at all once this has passed (checked after the rate limiter).
    send_by: Option<Instant>,
    /// The account's budget was already taken for it ([`Reservation`]).
    prepaid: bool,
    accept: &'static str,
    /// Largest success body read.
    max_body: u64,
}

struct Inner {
    host: AccessHost,
    account_id: i64,
    auth: HeaderValue,
    key_looks_like_token: bool,
    http: reqwest::Client,
    limits: AccountLimits,
    config: Arc<ClientConfig>,
    observer: Arc<dyn ApiObserver>,
    base_url: String,
}

/// A dbt Cloud API client for one account. Cheap to clone (shared inside).
///
/// Idempotent calls are retried with backoff; trigger, rerun and retry POSTs
/// never are. Each attempt first awaits a permit from the account's limiter.
#[derive(Clone)]
pub struct DbtCloudClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for DbtCloudClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbtCloudClient")
            .field("host", &self.inner.host.as_str())
            .field("account_id", &self.inner.account_id)
            .field("base_url", &self.inner.base_url)
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

impl DbtCloudClient {
    /// Creates a client. `http` should come from [`http_client`] (it must not
    /// follow redirects). The key is trimmed of surrounding whitespace.
    pub fn new(
        host: AccessHost,
        account_id: i64,
        api_key: secrecy::SecretString,
        http: reqwest::Client,
        limits: AccountLimits,
        config: Arc<ClientConfig>,
        observer: Arc<dyn ApiObserver>,
    ) -> Result<Self, DbtCloudError> {
        use secrecy::ExposeSecret;
        if account_id <= 0 {
            return Err(DbtCloudError::invalid_request(format!(
                "account id must be positive, got {account_id}"
            )));
        }
        let key = api_key.expose_secret().trim();
        if key.is_empty() {
            return Err(DbtCloudError::invalid_request("the API key is empty"));
        }
        let key_looks_like_token = key.starts_with("dbtc_") || key.starts_with("dbtu_");
        let mut auth = HeaderValue::from_str(&format!("Token {key}")).map_err(|_| {
            DbtCloudError::invalid_request(
                "the API key contains characters not allowed in an HTTP header (e.g. a line break inside it)",
            )
        })?;
        auth.set_sensitive(true);

        let base_url = match &config.insecure_base_url_override {
            Some(u) => {
                check_plain_url(u, "insecure_base_url_override", &["http", "https"])?;
                u.as_str().trim_end_matches('/').to_string()
            }
            None => host.base_url(),
        };
        Ok(DbtCloudClient {
            inner: Arc::new(Inner {
                host,
                account_id,
                auth,
                key_looks_like_token,
                http,
                limits,
                config,
                observer,
                base_url,
            }),
        })
    }

    fn account_id(&self) -> i64 {
        self.inner.account_id
    }

    /// Takes one request's worth of the account's budget now, waiting for the rate limiter as
    /// long as it takes, for a request sent soon after (a trigger: its send deadline then counts
    /// from after the wait, not from before it).
    pub async fn reserve(&self) -> Reservation {
        self.take_budget().await;
        Reservation(())
    }

    async fn take_budget(&self) -> Duration {
        let waited = self.inner.limits.admin().acquire().await;
        if !waited.is_zero() {
            self.inner.observer.on_rate_limit_wait(waited);
        }
        waited
    }

    /// The dbt Cloud deployment and account this client calls: `(access host, account id)`.
    pub fn account(&self) -> (&str, i64) {
        (self.inner.host.as_str(), self.inner.account_id)
    }

    // ----- accounts, projects, environments, jobs -----

    /// `GET /api/v3/accounts/`: accounts the token can access.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, DbtCloudError> {
        let url = self.url("/api/v3/accounts/", &[])?;
        self.get_json::<Vec<Account>>("list_accounts", url)
            .await
            .map(|e| e.data)
    }

    /// `GET /api/v2/accounts/{a}/`.
    pub async fn get_account(&self) -> Result<Account, DbtCloudError> {
        let url = self.v2_url("", &[])?;
        self.get_json("get_account", url).await.map(|e| e.data)
    }

    /// All projects matching `name__icontains` (`GET /api/v3/accounts/{a}/projects/`), across
    /// pages.
    pub async fn list_all_projects(
        &self,
        name_icontains: Option<&str>,
    ) -> Result<Vec<Project>, DbtCloudError> {
        let mut query = Vec::new();
        push_opt(&mut query, "name__icontains", &name_icontains);
        let path = format!("/api/v3/accounts/{}/projects/", self.account_id());
        self.paginate("list_projects", &path, query).await
    }

    /// All environments of a project matching `name__icontains`
    /// (`GET /api/v3/accounts/{a}/projects/{p}/environments/`), across pages.
    pub async fn list_all_environments(
        &self,
        project_id: i64,
        name_icontains: Option<&str>,
    ) -> Result<Vec<Environment>, DbtCloudError> {
        let mut query = Vec::new();
        push_opt(&mut query, "name__icontains", &name_icontains);
        let path = format!(
            "/api/v3/accounts/{}/projects/{project_id}/environments/",
            self.account_id()
        );
        self.paginate("list_environments", &path, query).await
    }

    /// All jobs matching the filters (`GET /api/v2/accounts/{a}/jobs/`), across pages.
    pub async fn list_all_jobs(&self, p: &ListJobsParams) -> Result<Vec<Job>, DbtCloudError> {
        let mut query = Vec::new();
        push_opt(&mut query, "project_id", &p.project_id);
        push_opt(&mut query, "environment_id", &p.environment_id);
        push_opt(&mut query, "name__icontains", &p.name_icontains);
        push_opt(&mut query, "order_by", &p.order_by);
        let path = format!("/api/v2/accounts/{}/jobs/", self.account_id());
        self.paginate("list_jobs", &path, query).await
    }

    /// `GET /api/v2/accounts/{a}/jobs/{j}/`.
    pub async fn get_job(&self, job_id: i64) -> Result<Job, DbtCloudError> {
        let url = self.v2_url(&format!("jobs/{job_id}/"), &[])?;
        self.get_json("get_job", url).await.map(|e| e.data)
    }

    // ----- runs -----

    /// `POST /api/v2/accounts/{a}/jobs/{j}/run/`. Never retried: on an error for
    /// which [`DbtCloudError::is_ambiguous_for_trigger`] is true, a run may exist.
    pub async fn trigger_run(
        &self,
        job_id: i64,
        request: &TriggerRunRequest,
    ) -> Result<Run, DbtCloudError> {
        self.trigger_run_by(job_id, request, None, None).await
    }

    /// [`Self::trigger_run`], sent only if it can leave before `send_by` (after waiting for the
    /// account's rate limit, unless `reserved` already paid it); otherwise nothing is sent and the
    /// error is [`DbtCloudError::NotSent`]. Together with the request timeout this bounds when
    /// dbt Cloud can receive a trigger recorded at a known time.
    pub async fn trigger_run_by(
        &self,
        job_id: i64,
        request: &TriggerRunRequest,
        send_by: Option<Instant>,
        reserved: Option<Reservation>,
    ) -> Result<Run, DbtCloudError> {
        request.validate()?;
        let body = serde_json::to_vec(request)
            .map_err(|e| DbtCloudError::invalid_request(format!("cannot encode request: {e}")))?;
        let url = self.v2_url(&format!("jobs/{job_id}/run/"), &[])?;
        self.post_json("trigger_run", url, body, false, send_by, reserved)
            .await
    }

    /// `GET /api/v2/accounts/{a}/runs/{r}/` with `include_related` (e.g. `["trigger", "run_steps"]`).
    pub async fn get_run(
        &self,
        run_id: i64,
        include_related: &[&str],
    ) -> Result<Run, DbtCloudError> {
        let mut q = Vec::new();
        if !include_related.is_empty() {
            q.push(("include_related", include_related.join(",")));
        }
        let url = self.v2_url(&format!("runs/{run_id}/"), &q)?;
        self.get_json("get_run", url).await.map(|e| e.data)
    }

    /// `GET /api/v2/accounts/{a}/runs/` (one page).
    pub async fn list_runs(&self, params: &ListRunsParams) -> Result<Page<Run>, DbtCloudError> {
        let (path, query) = self.runs_query(params);
        self.list_page("list_runs", &path, query, params.limit, params.offset)
            .await
    }

    fn runs_query(&self, p: &ListRunsParams) -> (String, Vec<(&'static str, String)>) {
        let mut q = Vec::new();
        push_opt(&mut q, "job_definition_id", &p.job_definition_id);
        push_opt(&mut q, "environment_id", &p.environment_id);
        push_opt(&mut q, "project_id", &p.project_id);
        if !p.status_in.is_empty() {
            let codes: Vec<i64> = p.status_in.iter().map(|s| s.code()).collect();
            q.push(("status__in", bracket_list(&codes)));
        }
        if !p.pk_in.is_empty() {
            q.push(("pk__in", bracket_list(&p.pk_in)));
        }
        push_opt(&mut q, "id__gt", &p.id_gt);
        push_opt(&mut q, "order_by", &p.order_by);
        if !p.include_related.is_empty() {
            q.push(("include_related", p.include_related.join(",")));
        }
        (format!("/api/v2/accounts/{}/runs/", self.account_id()), q)
    }

    /// `POST /api/v2/accounts/{a}/runs/{r}/cancel/` (idempotent: retried).
    pub async fn cancel_run(&self, run_id: i64) -> Result<Run, DbtCloudError> {
        let url = self.v2_url(&format!("runs/{run_id}/cancel/"), &[])?;
        self.post_json("cancel_run", url, b"{}".to_vec(), true, None, None)
            .await
    }

    /// `POST /api/v2/accounts/{a}/runs/{r}/retry/`: retry a failed run. Never retried.
    pub async fn retry_run(&self, run_id: i64) -> Result<Run, DbtCloudError> {
        self.retry_run_by(run_id, None, None).await
    }

    /// [`Self::retry_run`] with a send deadline, as [`Self::trigger_run_by`].
    pub async fn retry_run_by(
        &self,
        run_id: i64,
        send_by: Option<Instant>,
        reserved: Option<Reservation>,
    ) -> Result<Run, DbtCloudError> {
        let url = self.v2_url(&format!("runs/{run_id}/retry/"), &[])?;
        self.post_json("retry_run", url, b"{}".to_vec(), false, send_by, reserved)
            .await
    }

    // ----- artifacts -----

    /// `GET /api/v2/accounts/{a}/runs/{r}/artifacts/{path}` (optionally of a 1-based
    /// `step`): the raw file bytes.
    pub async fn get_run_artifact(
        &self,
        run_id: i64,
        path: &str,
        step: Option<u32>,
    ) -> Result<Vec<u8>, DbtCloudError> {
        let path = encode_artifact_path(path)?;
        let mut q = Vec::new();
        push_opt(&mut q, "step", &step);
        let url = self.v2_url(&format!("runs/{run_id}/artifacts/{path}"), &q)?;
        self.raw_get("get_run_artifact", url).await
    }

    // ----- plumbing -----

    /// `<base>/api/v2/accounts/<this account>/<tail>` with a query.
    fn v2_url(&self, tail: &str, query: &[(&'static str, String)]) -> Result<Url, DbtCloudError> {
        self.url(
            &format!("/api/v2/accounts/{}/{tail}", self.account_id()),
            query,
        )
    }

    fn url(&self, path: &str, query: &[(&'static str, String)]) -> Result<Url, DbtCloudError> {
        let mut url = parse_url(&format!("{}{path}", self.inner.base_url))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
    ) -> Result<Envelope<T>, DbtCloudError> {
        let bytes = self
            .execute(Call {
                endpoint,
                method: Method::GET,
                url,
                body: None,
                retry: true,
                send_by: None,
                prepaid: false,
                accept: ACCEPT_JSON,
                max_body: self.inner.config.max_response_bytes,
            })
            .await?;
        decode(endpoint, &bytes)
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
        body: Vec<u8>,
        retry: bool,
        send_by: Option<Instant>,
        reserved: Option<Reservation>,
    ) -> Result<T, DbtCloudError> {
        let bytes = self
            .execute(Call {
                endpoint,
                method: Method::POST,
                url,
                body: Some(body),
                retry,
                send_by,
                prepaid: reserved.is_some(),
                accept: ACCEPT_JSON,
                max_body: self.inner.config.max_response_bytes,
            })
            .await?;
        decode::<T>(endpoint, &bytes).map(|e| e.data)
    }

    async fn raw_get(&self, endpoint: &'static str, url: Url) -> Result<Vec<u8>, DbtCloudError> {
        self.execute(Call {
            endpoint,
            method: Method::GET,
            url,
            body: None,
            retry: true,
            send_by: None,
            prepaid: false,
            accept: ACCEPT_ARTIFACT,
            max_body: self.inner.config.max_artifact_bytes,
        })
        .await
    }

    async fn list_page<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        mut query: Vec<(&'static str, String)>,
        limit: Option<u32>,
        offset: Option<u32>,
    ) -> Result<Page<T>, DbtCloudError> {
        let limit = limit.unwrap_or(MAX_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        query.push(("limit", limit.to_string()));
        query.push(("offset", offset.unwrap_or(0).to_string()));
        let url = self.url(path, &query)?;
        let env = self.get_json::<Vec<T>>(endpoint, url).await?;
        Ok(Page {
            items: env.data,
            total_count: env
                .extra
                .and_then(|e| e.pagination)
                .and_then(|p| p.total_count),
        })
    }

    /// Fetches pages of [`MAX_PAGE_SIZE`] until `total_count` is reached, a page is
    /// empty, or (without `total_count`) a page comes back short.
    async fn paginate<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: Vec<(&'static str, String)>,
    ) -> Result<Vec<T>, DbtCloudError> {
        let mut out = Vec::new();
        let mut offset: u32 = 0;
        for _ in 0..MAX_PAGES {
            let page: Page<T> = self
                .list_page(
                    endpoint,
                    path,
                    query.clone(),
                    Some(MAX_PAGE_SIZE),
                    Some(offset),
                )
                .await?;
            let n = page.items.len();
            out.extend(page.items);
            if n == 0 {
                break;
            }
            offset = offset.saturating_add(n as u32);
            let done = match page.total_count {
                Some(total) => i64::from(offset) >= total,
                None => n < MAX_PAGE_SIZE as usize,
            };
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Runs a call with rate limiting and (when `call.retry`) bounded retries (`backon`): retried
    /// while the error [is retryable](DbtCloudError::is_retryable), up to `max_attempts`
    /// attempts, after the [`retry_backoff`] delay or the `Retry-After` dbt Cloud asked for
    /// (see [`retry_delay`]).
    async fn execute(&self, call: Call) -> Result<Vec<u8>, DbtCloudError> {
        if !call.retry {
            return self.attempt(&call).await;
        }
        let cfg = &self.inner.config;
        let mut attempt = 1;
        (|| self.attempt(&call))
            .retry(retry_backoff(cfg))
            .sleep(tokio::time::sleep)
            .when(DbtCloudError::is_retryable)
            .adjust(|err, backoff| retry_delay(err, backoff, cfg.max_retry_after))
            .notify(|err, delay| {
                tracing::debug!(
                    endpoint = call.endpoint,
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    error = %err,
                    "retrying dbt Cloud request"
                );
                attempt += 1;
            })
            .await
    }

    async fn attempt(&self, call: &Call) -> Result<Vec<u8>, DbtCloudError> {
        let inner = &self.inner;
        let waited = if call.prepaid {
            Duration::ZERO
        } else {
            self.take_budget().await
        };
        if call.send_by.is_some_and(|by| Instant::now() >= by) {
            tracing::debug!(
                endpoint = call.endpoint,
                "not sent: its send deadline passed"
            );
            return Err(DbtCloudError::NotSent {
                endpoint: call.endpoint,
                waited,
            });
        }
        let mut req = inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header(AUTHORIZATION, inner.auth.clone())
            .header(ACCEPT, call.accept)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .timeout(inner.config.request_timeout);
        if let Some(body) = &call.body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let started = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                inner
                    .observer
                    .on_response(call.endpoint, None, started.elapsed());
                let err = map_reqwest(call.endpoint, &e);
                tracing::debug!(endpoint = call.endpoint, error = %err, "dbt Cloud request failed");
                return Err(err);
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        // Success bodies are read up to the call's limit; error bodies only for their message.
        let limit = if status.is_success() {
            call.max_body
        } else {
            MAX_ERROR_BODY_BYTES.min(call.max_body)
        };
        let body = read_capped(resp, limit).await;
        inner
            .observer
            .on_response(call.endpoint, Some(status.as_u16()), started.elapsed());
        tracing::debug!(
            endpoint = call.endpoint,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dbt Cloud response"
        );
        if status.is_success() {
            return body.map_err(|e| match e {
                BodyError::TooLarge => DbtCloudError::ResponseTooLarge {
                    endpoint: call.endpoint,
                    limit,
                },
                BodyError::Read(e) => map_reqwest(call.endpoint, &e),
            });
        }
        // An unreadable or oversized error body only loses the message.
        let body = body.unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS {
            inner.observer.on_throttled();
        }
        Err(self.map_status(call.endpoint, status, &headers, &body))
    }

    fn map_status(
        &self,
        endpoint: &'static str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> DbtCloudError {
        let code = status.as_u16();
        if status.is_redirection() {
            let location_host = headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| {
                    let base = Url::parse(&self.inner.base_url).ok();
                    Url::options()
                        .base_url(base.as_ref())
                        .parse(loc)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                });
            return DbtCloudError::Redirect {
                endpoint,
                status: code,
                location_host,
            };
        }
        let user_message = envelope_message(body, code == 400);
        match code {
            401 => DbtCloudError::Unauthorized {
                token_shape_hint: !self.inner.key_looks_like_token,
                user_message,
            },
            403 => DbtCloudError::Forbidden {
                endpoint,
                user_message,
            },
            404 => DbtCloudError::NotFound {
                endpoint,
                user_message,
            },
            429 => DbtCloudError::RateLimited {
                endpoint,
                retry_after: headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        parse_retry_after(
                            v,
                            SystemTime::now(),
                            self.inner.config.retry_after_ceiling,
                        )
                    }),
                user_message,
            },
            500..=599 => DbtCloudError::Server {
                endpoint,
                status: code,
                user_message,
            },
            _ => DbtCloudError::BadRequest {
                endpoint,
                status: code,
                user_message,
            },
        }
    }
}

/// Why a body was not read whole.
enum BodyError {
    /// More than the limit (declared by `Content-Length`, or counted while streaming).
    TooLarge,
    /// The connection failed or timed out while reading.
    Read(reqwest::Error),
}

/// Reads a response body chunk by chunk, stopping as soon as it would exceed `limit` bytes (a
/// declared `Content-Length` over the limit is refused before reading anything).
async fn read_capped(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    let declared = resp.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let initial = declared.unwrap_or(0).min(limit).min(1024 * 1024);
    let mut buf = Vec::with_capacity(usize::try_from(initial).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if (buf.len() as u64).saturating_add(chunk.len() as u64) > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): `delay-seconds` (digits only) or an HTTP-date
/// (IMF-fixdate, and the obsolete RFC 850 and asctime forms), relative to `now`. Never panics and
/// never overflows: more digits than a `u64` holds saturate, a date in the past means zero, and the
/// result is clamped to `ceiling`. Anything else (negative, fractional, garbage) is `None`, and the
/// caller falls back to its own backoff.
fn parse_retry_after(value: &str, now: SystemTime, ceiling: Duration) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let delay = if v.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(ceiling))
}

fn decode<T: DeserializeOwned>(
    endpoint: &'static str,
    bytes: &[u8],
) -> Result<Envelope<T>, DbtCloudError> {
    serde_json::from_slice(bytes).map_err(|e| DbtCloudError::Decode {
        endpoint,
        message: e.to_string(),
    })
}

/// The delays between the attempts of an idempotent call: `max_attempts - 1` of them, the n-th
/// uniform in `[d/2, d)` with `d = min(backoff_max, backoff_base · 2^(n-1))` ("equal jitter":
/// spread out, never longer than `backoff_max`). `backon`'s jitter adds up to the delay again, so
/// the builder starts from half the delays.
pub(crate) fn retry_backoff(cfg: &ClientConfig) -> impl BackoffBuilder {
    let max = cfg.backoff_max;
    ExponentialBuilder::new()
        .with_min_delay(cfg.backoff_base.min(max) / 2)
        .with_max_delay(max / 2)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(cfg.max_attempts.saturating_sub(1) as usize)
}

/// The delay before retrying after `err`, given the backoff's next delay (`None`: attempts are
/// used up). dbt Cloud's `Retry-After` replaces the backoff; one longer than `max_retry_after` is
/// not waited in-line: the error goes to the caller, who requeues for that long.
pub(crate) fn retry_delay(
    err: &DbtCloudError,
    backoff: Option<Duration>,
    max_retry_after: Duration,
) -> Option<Duration> {
    let backoff = backoff?;
    match err.retry_after() {
        Some(wait) if wait > max_retry_after => None,
        Some(wait) => Some(wait),
        None => Some(backoff),
    }
}

/// The envelope's `status.user_message` (or `developer_message`, or DRF's
/// `detail`); for 400s also field errors from `data`. Truncated to 500 chars.
fn envelope_message(body: &[u8], with_field_errors: bool) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let env: ErrorEnvelope = serde_json::from_value(value.clone()).unwrap_or_default();
    let status = env.status.unwrap_or_default();
    let mut msg = [status.user_message, status.developer_message]
        .into_iter()
        .flatten()
        .find(|m| !m.trim().is_empty())
        .or_else(|| {
            value
                .get("detail")
                .and_then(|d| d.as_str())
                .map(str::to_string)
        });
    if with_field_errors {
        if let Some(obj) = value.get("data").and_then(|d| d.as_object()) {
            let fields: Vec<String> = obj
                .iter()
                .filter_map(|(k, v)| {
                    let texts: Vec<&str> = match v {
                        serde_json::Value::String(s) => vec![s.as_str()],
                        serde_json::Value::Array(a) => {
                            a.iter().filter_map(|x| x.as_str()).collect()
                        }
                        _ => vec![],
                    };
                    (!texts.is_empty()).then(|| format!("{k}: {}", texts.join(" ")))
                })
                .collect();
            if !fields.is_empty() {
                let f = fields.join("; ");
                msg = Some(match msg {
                    Some(m) => format!("{m} ({f})"),
                    None => f,
                });
            }
        }
    }
    msg.map(|m| {
        if m.chars().count() > 500 {
            let mut t: String = m.chars().take(500).collect();
            t.push('…');
            t
        } else {
            m
        }
    })
}

fn map_reqwest(endpoint: &'static str, e: &reqwest::Error) -> DbtCloudError {
    let message = error_chain(e);
    if e.is_builder() {
        return DbtCloudError::InvalidRequest { message };
    }
    if e.is_connect() {
        return DbtCloudError::Transport {
            endpoint,
            message,
            request_sent: false,
        };
    }
    if e.is_timeout() {
        return DbtCloudError::Timeout { endpoint };
    }
    DbtCloudError::Transport {
        endpoint,
        message,
        request_sent: true,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

fn push_opt<T: ToString>(q: &mut Vec<(&'static str, String)>, key: &'static str, v: &Option<T>) {
    if let Some(v) = v {
        q.push((key, v.to_string()));
    }
}

fn parse_url(s: &str) -> Result<Url, DbtCloudError> {
    Url::parse(s).map_err(|e| DbtCloudError::invalid_request(format!("invalid URL `{s}`: {e}")))
}

fn check_plain_url(u: &Url, what: &str, schemes: &[&str]) -> Result<(), DbtCloudError> {
    if !schemes.contains(&u.scheme()) {
        return Err(DbtCloudError::invalid_request(format!(
            "{what} must use {}",
            schemes.join(" or ")
        )));
    }
    if u.host_str().is_none() {
        return Err(DbtCloudError::invalid_request(format!(
            "{what} has no host"
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(DbtCloudError::invalid_request(format!(
            "{what} must not contain user info"
        )));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(DbtCloudError::invalid_request(format!(
            "{what} must not contain a query or fragment"
        )));
    }
    Ok(())
}

/// Percent-encodes each segment of an artifact path (`/` kept); refuses empty,
/// `.` and `..` segments.
fn encode_artifact_path(path: &str) -> Result<String, DbtCloudError> {
    let path = path.trim().trim_start_matches('/');
    if path.is_empty() {
        return Err(DbtCloudError::invalid_request("artifact path is empty"));
    }
    let mut out = Vec::new();
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(DbtCloudError::invalid_request(format!(
                "artifact path `{path}` has an empty, `.` or `..` segment"
            )));
        }
        out.push(urlencoding::encode(seg).into_owned());
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbt_cloud::types::RunStatus;
    use secrecy::SecretString;

    fn client_with(
        key: &str,
        config: ClientConfig,
        host: &str,
    ) -> Result<DbtCloudClient, DbtCloudError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = http_client(&config)?;
        DbtCloudClient::new(
            AccessHost::parse(host, &config.allowed_host_suffixes)?,
            42,
            SecretString::from(key.to_string()),
            http,
            AccountLimits::unlimited(),
            Arc::new(config),
            Arc::new(NoopObserver),
        )
    }

    #[test]
    fn debug_redacts_key() {
        let key = "dbtc_supersecretvalue123";
        let c = client_with(key, ClientConfig::default(), "cloud.getdbt.com").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert!(dbg.contains("REDACTED"));
        assert_eq!(c.inner.base_url, "https://cloud.getdbt.com");
        assert_eq!(c.account_id(), 42);
    }

    #[test]
    fn new_validates_key_and_overrides() {
        let e = client_with("  ", ClientConfig::default(), "cloud.getdbt.com").unwrap_err();
        assert_eq!(e.reason(), "InvalidRequest");
        let e = client_with("dbtc_a\nb", ClientConfig::default(), "cloud.getdbt.com").unwrap_err();
        assert!(!e.to_string().contains("dbtc_a"));
        // Trailing newline (common in Secrets) is trimmed.
        client_with("dbtc_abc\n", ClientConfig::default(), "cloud.getdbt.com").unwrap();

        let cfg = ClientConfig {
            insecure_base_url_override: Some(Url::parse("http://127.0.0.1:8080/").unwrap()),
            ..Default::default()
        };
        let c = client_with("dbtc_x", cfg, "ab1.us1.dbt.com").unwrap();
        assert_eq!(c.inner.base_url, "http://127.0.0.1:8080");
        let cfg = ClientConfig {
            insecure_base_url_override: Some(Url::parse("ftp://127.0.0.1/").unwrap()),
            ..Default::default()
        };
        assert!(client_with("dbtc_x", cfg, "cloud.getdbt.com").is_err());
    }

    #[test]
    fn query_encoding() {
        let c = client_with("dbtc_x", ClientConfig::default(), "cloud.getdbt.com").unwrap();
        let (path, q) = c.runs_query(&ListRunsParams {
            job_definition_id: Some(5),
            status_in: vec![RunStatus::Queued, RunStatus::Running],
            pk_in: vec![1, 2, 3],
            id_gt: Some(9),
            order_by: Some("-id".into()),
            include_related: vec!["trigger".into(), "job".into()],
            ..Default::default()
        });
        let url = c.url(&path, &q).unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("pk__in"), Some("[1,2,3]"));
        assert_eq!(get("status__in"), Some("[1,3]"));
        assert_eq!(get("include_related"), Some("trigger,job"));
        assert_eq!(get("id__gt"), Some("9"));
        assert_eq!(get("order_by"), Some("-id"));
        assert_eq!(url.path(), "/api/v2/accounts/42/runs/");
    }

    #[test]
    fn artifact_paths() {
        assert_eq!(
            encode_artifact_path("manifest.json").unwrap(),
            "manifest.json"
        );
        assert_eq!(
            encode_artifact_path("/run/my proj/a.sql").unwrap(),
            "run/my%20proj/a.sql"
        );
        assert!(encode_artifact_path("../x").is_err());
        assert!(encode_artifact_path("a//b").is_err());
        assert!(encode_artifact_path("").is_err());
    }

    #[test]
    fn envelope_messages() {
        let body = br#"{"status": {"code": 400, "is_success": false, "user_message": "The request was invalid.", "developer_message": ""},
                        "data": {"cause": ["Ensure this field has no more than 255 characters."]}}"#;
        let m = envelope_message(body, true).unwrap();
        assert!(
            m.contains("The request was invalid.") && m.contains("cause: Ensure"),
            "{m}"
        );
        assert_eq!(envelope_message(b"<html>oops</html>", true), None);
        assert_eq!(
            envelope_message(br#"{"detail": "Invalid token."}"#, false).as_deref(),
            Some("Invalid token.")
        );
    }

    #[test]
    fn retry_after_forms_and_hostile_values() {
        let ceiling = Duration::from_secs(600);
        // 1994-11-06T08:49:37Z, the RFC's example date.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let p = |v: &str| parse_retry_after(v, now, ceiling);
        assert_eq!(p("7"), Some(Duration::from_secs(7)));
        assert_eq!(p(" 0 "), Some(Duration::ZERO));
        assert_eq!(p("18446744073709551615"), Some(ceiling));
        assert_eq!(
            p(&"9".repeat(400)),
            Some(ceiling),
            "more digits than u64 saturate"
        );
        // The three HTTP-date forms of RFC 9110, 2 minutes ahead.
        for date in [
            "Sun, 06 Nov 1994 08:51:37 GMT",
            "Sunday, 06-Nov-94 08:51:37 GMT",
            "Sun Nov  6 08:51:37 1994",
        ] {
            assert_eq!(p(date), Some(Duration::from_secs(120)), "{date}");
        }
        assert_eq!(
            p("Sat, 05 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "past"
        );
        assert_eq!(p("Fri, 31 Dec 9999 23:59:59 GMT"), Some(ceiling));
        for bad in [
            "",
            "-5",
            "+5",
            "1.5",
            "1e9",
            "soon",
            "Sun, 99 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_has_max_attempts_minus_one_delays_with_equal_jitter() {
        let cfg = ClientConfig {
            max_attempts: 8,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
            ..Default::default()
        };
        for _ in 0..50 {
            let delays: Vec<Duration> = retry_backoff(&cfg).build().collect();
            assert_eq!(delays.len(), 7, "max_attempts - 1 retries");
            for (n, delay) in delays.iter().enumerate() {
                // d = min(max, base·2^n): 100, 200, then 250 ms.
                let d = Duration::from_millis((100u64 << n).min(250));
                assert!(
                    *delay >= d / 2 && *delay < d,
                    "retry {}: {delay:?} not in [{:?}, {d:?})",
                    n + 1,
                    d / 2
                );
            }
        }
        // A base above the maximum is capped too; one attempt means no retry.
        let cfg = ClientConfig {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(retry_backoff(&cfg)
            .build()
            .all(|d| d < Duration::from_secs(1)));
        for max_attempts in [0, 1] {
            let cfg = ClientConfig {
                max_attempts,
                ..Default::default()
            };
            assert_eq!(retry_backoff(&cfg).build().count(), 0);
        }
    }

    #[test]
    fn retry_after_replaces_the_backoff_up_to_max_retry_after() {
        let limited = |after: u64| DbtCloudError::RateLimited {
            endpoint: "get_run",
            retry_after: Some(Duration::from_secs(after)),
            user_message: None,
        };
        let backoff = Some(Duration::from_millis(300));
        let max = Duration::from_secs(60);
        assert_eq!(
            retry_delay(&limited(7), backoff, max),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_delay(&limited(60), backoff, max),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_delay(&limited(61), backoff, max), None, "returned");
        assert_eq!(
            retry_delay(&limited(7), None, max),
            None,
            "attempts used up"
        );
        let server = DbtCloudError::Server {
            endpoint: "get_run",
            status: 503,
            user_message: None,
        };
        assert_eq!(retry_delay(&server, backoff, max), backoff);
        assert_eq!(retry_delay(&server, None, max), None);
    }
}
