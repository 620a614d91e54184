//! Typed client for the dbt Cloud Administrative API (v2, and v3 for accounts, projects and
//! environments).
//!
//! * [`AccessHost`] validates the host the API key may be sent to (allow-listed
//!   suffixes, no IPs, ports, paths or schemes).
//! * [`DbtCloudClient`] (cheap clone) performs typed calls; idempotent calls
//!   (GET, cancel) are retried (`backon`) with jittered exponential
//!   backoff honouring `Retry-After` (seconds or HTTP-date, clamped); trigger/retry POSTs
//!   never are. Response bodies are read with a byte limit while they stream in.
//! * [`RateLimiterRegistry`] shares one [`AccountLimits`] per account, awaited
//!   before every request.
//! * [`DbtCloudError`] classifies failures for the controller
//!   ([`DbtCloudError::reason`], [`DbtCloudError::is_retryable`],
//!   [`DbtCloudError::is_ambiguous_for_trigger`]).
//! * [`ApiObserver`] is the metrics hook.
//!
//! The API key is never logged nor shown by `Debug`/`Display`; redirects are
//! never followed so the key cannot leave dbt Cloud.

mod client;
mod error;
mod host;
mod rate_limit;
mod types;

pub use client::{
    http_client, ApiObserver, ClientConfig, DbtCloudClient, NoopObserver, Reservation,
    DEFAULT_MAX_ARTIFACT_BYTES, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RETRY_AFTER_CEILING,
    MAX_PAGE_SIZE, USER_AGENT_VALUE,
};
pub use error::DbtCloudError;
pub use host::{
    allowed_suffixes_with, default_allowed_suffixes, AccessHost, DEFAULT_ALLOWED_SUFFIXES,
    DEFAULT_HOST,
};
pub use rate_limit::{
    AccountLimits, LimitSpec, LimiterStats, RateLimitConfig, RateLimiterRegistry, TokenBucket,
};
pub use types::{
    parse_timestamp, truncate_cause, Account, Envelope, Environment, Extra, Job, JobExecution,
    JobSettings, ListJobsParams, ListRunsParams, Page, Pagination, Project, ResponseStatus, Run,
    RunStatus, RunStep, RunTrigger, TriggerRunRequest, MAX_CAUSE_CHARS,
};
