//! Request and response types of the dbt Cloud API (v2 and v3), after dbt Labs'
//! OpenAPI files.
//!
//! Decoding is tolerant: unknown fields are ignored and every field except an
//! object's `id` is optional, since dbt Cloud adds and omits fields freely.
//! Timestamps are kept as the strings dbt Cloud sends (e.g.
//! `2024-05-01 10:00:00.123456+00:00`); [`parse_timestamp`] converts them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::DbtCloudError;

/// The `status` object of dbt Cloud's response envelope.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ResponseStatus {
    /// HTTP status code.
    pub code: Option<i64>,
    /// Whether the request succeeded.
    pub is_success: Option<bool>,
    /// End-user friendly message.
    pub user_message: Option<String>,
    /// Developer friendly message.
    pub developer_message: Option<String>,
}

/// `extra.pagination` of list responses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Pagination {
    /// Records in this response.
    pub count: Option<i64>,
    /// Total records available.
    pub total_count: Option<i64>,
}

/// `extra` of list responses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Extra {
    /// Filters applied.
    pub filters: Option<serde_json::Value>,
    /// Ordering applied.
    pub order_by: Option<String>,
    /// Pagination state.
    pub pagination: Option<Pagination>,
}

/// dbt Cloud's response envelope: `{"data": …, "status": …, "extra": …}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope<T> {
    /// The payload.
    pub data: T,
    /// Status block.
    #[serde(default)]
    pub status: Option<ResponseStatus>,
    /// Pagination etc. (list endpoints).
    #[serde(default)]
    pub extra: Option<Extra>,
}

/// Error envelope: like [`Envelope`] but `data` may be anything or absent.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ErrorEnvelope {
    #[serde(default)]
    pub status: Option<ResponseStatus>,
}

/// One page of a list endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// `extra.pagination.total_count`, when sent.
    pub total_count: Option<i64>,
}

/// Parses a dbt Cloud timestamp (RFC 3339, with `T` or a space as separator).
pub fn parse_timestamp(s: &str) -> Option<jiff::Timestamp> {
    s.trim().parse::<jiff::Timestamp>().ok()
}

/// The status of a run (integer codes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// 1
    Queued,
    /// 2
    Starting,
    /// 3
    Running,
    /// 10
    Success,
    /// 20
    Error,
    /// 30
    Cancelled,
    /// Any other code; kept, and treated as non-terminal.
    Unknown(i64),
}

impl RunStatus {
    /// Maps a wire code.
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => RunStatus::Queued,
            2 => RunStatus::Starting,
            3 => RunStatus::Running,
            10 => RunStatus::Success,
            20 => RunStatus::Error,
            30 => RunStatus::Cancelled,
            other => RunStatus::Unknown(other),
        }
    }

    /// The wire code.
    pub fn code(self) -> i64 {
        match self {
            RunStatus::Queued => 1,
            RunStatus::Starting => 2,
            RunStatus::Running => 3,
            RunStatus::Success => 10,
            RunStatus::Error => 20,
            RunStatus::Cancelled => 30,
            RunStatus::Unknown(c) => c,
        }
    }

    /// Success, Error or Cancelled. Unknown codes are not terminal.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Success | RunStatus::Error | RunStatus::Cancelled
        )
    }

    /// Whether the run succeeded.
    pub fn is_success(self) -> bool {
        self == RunStatus::Success
    }

    /// dbt Cloud's humanized name ("Queued", …, "Unknown").
    pub fn humanized(self) -> &'static str {
        match self {
            RunStatus::Queued => "Queued",
            RunStatus::Starting => "Starting",
            RunStatus::Running => "Running",
            RunStatus::Success => "Success",
            RunStatus::Error => "Error",
            RunStatus::Cancelled => "Cancelled",
            RunStatus::Unknown(_) => "Unknown",
        }
    }
}

impl RunStatus {
    /// The status a [`RunStatus::humanized`] text names; `None` for `"Unknown"` (its code is not
    /// in the text) and for any other text.
    pub fn from_humanized(text: &str) -> Option<Self> {
        match text {
            "Queued" => Some(RunStatus::Queued),
            "Starting" => Some(RunStatus::Starting),
            "Running" => Some(RunStatus::Running),
            "Success" => Some(RunStatus::Success),
            "Error" => Some(RunStatus::Error),
            "Cancelled" => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

impl Default for RunStatus {
    /// `Unknown(0)`: used when a run omits its status.
    fn default() -> Self {
        RunStatus::Unknown(0)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunStatus::Unknown(c) => write!(f, "Unknown({c})"),
            s => f.write_str(s.humanized()),
        }
    }
}

impl Serialize for RunStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

impl<'de> Deserialize<'de> for RunStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
            Other(serde::de::IgnoredAny),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(c) => RunStatus::from_code(c),
            Raw::Str(s) => s
                .trim()
                .parse::<i64>()
                .map(RunStatus::from_code)
                .unwrap_or(RunStatus::Unknown(-1)),
            Raw::Other(_) => RunStatus::Unknown(-1),
        })
    }
}

fn status_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<RunStatus, D::Error> {
    Ok(Option::<RunStatus>::deserialize(d)?.unwrap_or_default())
}

/// An account (v2 `AccountResponse` / v3 list item).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Account {
    /// Account id.
    pub id: i64,
    /// Name.
    pub name: Option<String>,
    /// 1 active, 2 deleted.
    pub state: Option<i64>,
    /// Plan (e.g. "enterprise").
    pub plan: Option<String>,
    /// Run slots.
    pub run_slots: Option<i64>,
    /// Whether the account is locked.
    pub locked: Option<bool>,
    /// Why it is locked.
    pub lock_reason: Option<String>,
    /// Globally unique (cross-cell) identifier.
    pub identifier: Option<String>,
    /// Static subdomain (cell-based prefix).
    pub static_subdomain: Option<String>,
    /// Vanity subdomain.
    pub vanity_subdomain: Option<String>,
    /// Maximum run duration.
    pub run_duration_limit_seconds: Option<i64>,
    /// Maximum queued runs.
    pub queue_limit: Option<i64>,
    /// Creation time.
    pub created_at: Option<String>,
    /// Update time.
    pub updated_at: Option<String>,
}

/// A project (v3 `ProjectResponse`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Project {
    /// Project id.
    pub id: i64,
    /// Account id.
    pub account_id: Option<i64>,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// 1 active, 2 deleted.
    pub state: Option<i64>,
    /// Subdirectory of the dbt project in the repository.
    pub dbt_project_subdirectory: Option<String>,
    /// Active connection.
    pub connection_id: Option<i64>,
    /// Active repository.
    pub repository_id: Option<i64>,
    /// Creation time.
    pub created_at: Option<String>,
    /// Update time.
    pub updated_at: Option<String>,
}

/// An environment (v3 `EnvironmentV3Response`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Environment {
    /// Environment id.
    pub id: i64,
    /// Account id.
    pub account_id: Option<i64>,
    /// Project id.
    pub project_id: Option<i64>,
    /// Name.
    pub name: Option<String>,
    /// dbt version.
    pub dbt_version: Option<String>,
    /// `development` or `deployment`.
    #[serde(rename = "type")]
    pub env_type: Option<String>,
    /// `production`, `staging` or null.
    pub deployment_type: Option<String>,
    /// Credentials id.
    pub credentials_id: Option<i64>,
    /// Whether a custom branch is used.
    pub use_custom_branch: Option<bool>,
    /// The custom branch.
    pub custom_branch: Option<String>,
    /// 1 active, 2 deleted.
    pub state: Option<i64>,
    /// Creation time.
    pub created_at: Option<String>,
    /// Update time.
    pub updated_at: Option<String>,
}

/// `settings` of a job.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JobSettings {
    /// Threads.
    pub threads: Option<i64>,
    /// Target name.
    pub target_name: Option<String>,
}

/// `execution` of a job.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct JobExecution {
    /// Job timeout (0 = none).
    pub timeout_seconds: Option<i64>,
}

/// A job definition (v2 `HumanReadableJobDefinitionResponse`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Job {
    /// Job id.
    pub id: i64,
    /// Account id.
    pub account_id: Option<i64>,
    /// Project id.
    pub project_id: Option<i64>,
    /// Environment id.
    pub environment_id: Option<i64>,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// dbt version override.
    pub dbt_version: Option<String>,
    /// dbt commands.
    pub execute_steps: Option<Vec<String>>,
    /// Whether docs are generated.
    pub generate_docs: Option<bool>,
    /// Whether source freshness runs.
    pub run_generate_sources: Option<bool>,
    /// `ci`, `scheduled`, `other`, `merge`, …
    pub job_type: Option<String>,
    /// 1 active, 2 deleted.
    pub state: Option<i64>,
    /// Settings.
    pub settings: Option<JobSettings>,
    /// Execution settings.
    pub execution: Option<JobExecution>,
    /// Triggers (kept raw).
    pub triggers: Option<serde_json::Value>,
    /// Creation time.
    pub created_at: Option<String>,
    /// Update time.
    pub updated_at: Option<String>,
}

/// The trigger of a run (`RunTrigger`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RunTrigger {
    /// Trigger id.
    pub id: Option<i64>,
    /// The cause given when triggering.
    pub cause: Option<String>,
    /// Job id.
    pub job_definition_id: Option<i64>,
    /// Git branch override.
    pub git_branch: Option<String>,
    /// Git sha override.
    pub git_sha: Option<String>,
    /// Azure PR id.
    pub azure_pull_request_id: Option<i64>,
    /// GitHub PR id.
    pub github_pull_request_id: Option<i64>,
    /// GitLab MR id.
    pub gitlab_merge_request_id: Option<i64>,
    /// Other PR id.
    pub non_native_pull_request_id: Option<i64>,
    /// Schema override.
    pub schema_override: Option<String>,
    /// dbt version override.
    pub dbt_version_override: Option<String>,
    /// Threads override.
    pub threads_override: Option<i64>,
    /// Target name override.
    pub target_name_override: Option<String>,
    /// Generate docs override.
    pub generate_docs_override: Option<bool>,
    /// Timeout override.
    pub timeout_seconds_override: Option<i64>,
    /// Steps override.
    pub steps_override: Option<Vec<String>>,
    /// `api`, `ci`, `scheduled`, …
    pub cause_category: Option<String>,
    /// Creation time.
    pub created_at: Option<String>,
}

/// A step of a run (`RunStep`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RunStep {
    /// Step id.
    pub id: Option<i64>,
    /// Run id.
    pub run_id: Option<i64>,
    /// Account id.
    pub account_id: Option<i64>,
    /// 1-based index.
    pub index: Option<i64>,
    /// Status.
    #[serde(default, deserialize_with = "status_or_default")]
    pub status: RunStatus,
    /// Humanized status.
    pub status_humanized: Option<String>,
    /// Step name (the command).
    pub name: Option<String>,
    /// High level logs.
    pub logs: Option<String>,
    /// Debug logs.
    pub debug_logs: Option<String>,
    /// Truncated debug logs.
    pub truncated_debug_logs: Option<String>,
    /// Start time.
    pub started_at: Option<String>,
    /// End time.
    pub finished_at: Option<String>,
    /// Duration (e.g. "00:01:02").
    pub duration: Option<String>,
}

/// A run (v2 `RunResponse`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Run {
    /// Run id.
    pub id: i64,
    /// Trigger id.
    pub trigger_id: Option<i64>,
    /// Account id.
    pub account_id: Option<i64>,
    /// Environment id.
    pub environment_id: Option<i64>,
    /// Project id.
    pub project_id: Option<i64>,
    /// Job id.
    pub job_definition_id: Option<i64>,
    /// Job id (alias sent by dbt Cloud).
    pub job_id: Option<i64>,
    /// Status; `Unknown(0)` when absent.
    #[serde(default, deserialize_with = "status_or_default")]
    pub status: RunStatus,
    /// Humanized status.
    pub status_humanized: Option<String>,
    /// Status message (e.g. the error).
    pub status_message: Option<String>,
    /// dbt version.
    pub dbt_version: Option<String>,
    /// Branch checked out.
    pub git_branch: Option<String>,
    /// Sha checked out.
    pub git_sha: Option<String>,
    /// Run this one defers to.
    pub deferring_run_id: Option<i64>,
    /// Whether artifacts were saved.
    pub artifacts_saved: Option<bool>,
    /// Whether docs were generated.
    pub has_docs_generated: Option<bool>,
    /// Whether sources were generated.
    pub has_sources_generated: Option<bool>,
    /// In progress.
    pub in_progress: Option<bool>,
    /// Complete.
    pub is_complete: Option<bool>,
    /// Succeeded.
    pub is_success: Option<bool>,
    /// Errored.
    pub is_error: Option<bool>,
    /// Cancelled.
    pub is_cancelled: Option<bool>,
    /// Running.
    pub is_running: Option<bool>,
    /// Whether it can be retried.
    pub can_retry: Option<bool>,
    /// Why it cannot be retried.
    pub retry_not_supported_reason: Option<String>,
    /// The run retrying this one.
    pub retrying_run_id: Option<i64>,
    /// Web URL of the run.
    pub href: Option<String>,
    /// Creation time.
    pub created_at: Option<String>,
    /// Update time.
    pub updated_at: Option<String>,
    /// Dequeue time.
    pub dequeued_at: Option<String>,
    /// Start time.
    pub started_at: Option<String>,
    /// End time.
    pub finished_at: Option<String>,
    /// Total duration (e.g. "00:01:02").
    pub duration: Option<String>,
    /// Queued duration.
    pub queued_duration: Option<String>,
    /// Run duration.
    pub run_duration: Option<String>,
    /// Humanized duration.
    pub duration_humanized: Option<String>,
    /// The trigger (`include_related=trigger`).
    pub trigger: Option<RunTrigger>,
    /// The steps (`include_related=run_steps`).
    pub run_steps: Option<Vec<RunStep>>,
    /// The job (`include_related=job`), raw.
    pub job: Option<serde_json::Value>,
}

impl Run {
    /// `job_definition_id`, falling back to `job_id`.
    pub fn job_id(&self) -> Option<i64> {
        self.job_definition_id.or(self.job_id)
    }
    /// The trigger's cause, when the trigger was included.
    pub fn cause(&self) -> Option<&str> {
        self.trigger.as_ref().and_then(|t| t.cause.as_deref())
    }
}

/// Longest accepted `cause` of a trigger, in characters.
pub const MAX_CAUSE_CHARS: usize = 255;

/// Body of `POST /api/v2/accounts/{a}/jobs/{j}/run/`. `None` fields are not sent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TriggerRunRequest {
    cause: String,
    /// Git sha to check out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
    /// Git branch to check out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_branch: Option<String>,
    /// Azure DevOps pull request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_pull_request_id: Option<i64>,
    /// GitHub pull request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_pull_request_id: Option<i64>,
    /// GitLab merge request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_merge_request_id: Option<i64>,
    /// Other git provider pull request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_native_pull_request_id: Option<i64>,
    /// Destination schema override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_override: Option<String>,
    /// dbt version override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbt_version_override: Option<String>,
    /// Threads override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads_override: Option<i64>,
    /// `target.name` override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_name_override: Option<String>,
    /// Generate docs override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_docs_override: Option<bool>,
    /// Timeout override in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds_override: Option<i64>,
    /// dbt commands override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_override: Option<Vec<String>>,
}

impl TriggerRunRequest {
    /// A request with the given cause. Errors (`InvalidRequest`) when the cause is
    /// empty or longer than [`MAX_CAUSE_CHARS`] characters — use [`truncate_cause`].
    pub fn new(cause: impl Into<String>) -> Result<Self, DbtCloudError> {
        let cause = cause.into();
        check_cause(&cause)?;
        Ok(TriggerRunRequest {
            cause,
            git_sha: None,
            git_branch: None,
            azure_pull_request_id: None,
            github_pull_request_id: None,
            gitlab_merge_request_id: None,
            non_native_pull_request_id: None,
            schema_override: None,
            dbt_version_override: None,
            threads_override: None,
            target_name_override: None,
            generate_docs_override: None,
            timeout_seconds_override: None,
            steps_override: None,
        })
    }

    /// The cause.
    pub fn cause(&self) -> &str {
        &self.cause
    }

    /// Checks the documented constraints (cause length, non-empty strings).
    pub fn validate(&self) -> Result<(), DbtCloudError> {
        check_cause(&self.cause)?;
        let strings = [
            ("git_sha", &self.git_sha),
            ("git_branch", &self.git_branch),
            ("schema_override", &self.schema_override),
            ("dbt_version_override", &self.dbt_version_override),
            ("target_name_override", &self.target_name_override),
        ];
        for (name, v) in strings {
            if matches!(v, Some(s) if s.is_empty()) {
                return Err(DbtCloudError::invalid_request(format!(
                    "{name} must not be empty when set"
                )));
            }
        }
        if let Some(steps) = &self.steps_override {
            if steps.iter().any(|s| s.trim().is_empty()) {
                return Err(DbtCloudError::invalid_request(
                    "steps_override must not contain empty commands",
                ));
            }
        }
        Ok(())
    }
}

fn check_cause(cause: &str) -> Result<(), DbtCloudError> {
    if cause.is_empty() {
        return Err(DbtCloudError::invalid_request("cause must not be empty"));
    }
    let n = cause.chars().count();
    if n > MAX_CAUSE_CHARS {
        return Err(DbtCloudError::invalid_request(format!(
            "cause is {n} characters long; dbt Cloud accepts at most {MAX_CAUSE_CHARS}"
        )));
    }
    Ok(())
}

/// Truncates a cause to at most [`MAX_CAUSE_CHARS`] characters (ending in `…` when cut).
pub fn truncate_cause(cause: &str) -> String {
    if cause.chars().count() <= MAX_CAUSE_CHARS {
        return cause.to_string();
    }
    let mut s: String = cause.chars().take(MAX_CAUSE_CHARS - 1).collect();
    s.push('…');
    s
}

/// Filters of the v2 job list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListJobsParams {
    /// `project_id`.
    pub project_id: Option<i64>,
    /// `environment_id`.
    pub environment_id: Option<i64>,
    /// `name__icontains`.
    pub name_icontains: Option<String>,
    /// `order_by`.
    pub order_by: Option<String>,
}

/// Filters of the v2 run list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListRunsParams {
    /// `job_definition_id`.
    pub job_definition_id: Option<i64>,
    /// `environment_id`.
    pub environment_id: Option<i64>,
    /// `project_id`.
    pub project_id: Option<i64>,
    /// `status__in` (sent as `[1,2]`).
    pub status_in: Vec<RunStatus>,
    /// `pk__in` (sent as `[1,2]`).
    pub pk_in: Vec<i64>,
    /// `id__gt`.
    pub id_gt: Option<i64>,
    /// `order_by` (e.g. `-id`).
    pub order_by: Option<String>,
    /// `include_related` (comma-joined).
    pub include_related: Vec<String>,
    /// Page size (≤ 100).
    pub limit: Option<u32>,
    /// Offset.
    pub offset: Option<u32>,
}

/// Encodes a list the way dbt Cloud documents it: `[1,2,3]`.
pub(crate) fn bracket_list<T: fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("[{}]", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_status_codes() {
        for (code, status, terminal) in [
            (1, RunStatus::Queued, false),
            (2, RunStatus::Starting, false),
            (3, RunStatus::Running, false),
            (10, RunStatus::Success, true),
            (20, RunStatus::Error, true),
            (30, RunStatus::Cancelled, true),
            (42, RunStatus::Unknown(42), false),
        ] {
            let s: RunStatus = serde_json::from_value(json!(code)).unwrap();
            assert_eq!(s, status);
            assert_eq!(s.is_terminal(), terminal);
            assert_eq!(s.code(), code);
            assert_eq!(serde_json::to_value(s).unwrap(), json!(code));
        }
        assert_eq!(RunStatus::Unknown(42).humanized(), "Unknown");
        assert_eq!(RunStatus::Unknown(42).to_string(), "Unknown(42)");
        assert_eq!(RunStatus::Error.humanized(), "Error");
        let s: RunStatus = serde_json::from_value(json!("10")).unwrap();
        assert_eq!(s, RunStatus::Success);
    }

    #[test]
    fn decodes_run_from_spec_shape_with_unknown_and_missing_fields() {
        let body = json!({
            "data": {
                "id": 70403103,
                "trigger_id": 5,
                "account_id": 1,
                "environment_id": 2,
                "project_id": 3,
                "job_definition_id": 4,
                "status": 99,
                "git_branch": null,
                "git_sha": "abc",
                "created_at": "2024-05-01 10:00:00.123456+00:00",
                "updated_at": "2024-05-01 10:00:05.000000+00:00",
                "finished_at": null,
                "some_new_field": {"nested": [1, 2, 3]},
                "trigger": {"id": 5, "cause": "because", "job_definition_id": 4, "cause_category": "api", "new": 1},
                "run_steps": [{"id": 1, "index": 1, "status": 10, "name": "dbt build", "surprise": true}],
                "retry_not_supported_reason": "RETRY_NOT_FAILED_RUN"
            },
            "status": {"code": 200, "is_success": true, "user_message": "Success!", "developer_message": ""},
        });
        let env: Envelope<Run> = serde_json::from_value(body).unwrap();
        let run = env.data;
        assert_eq!(run.id, 70403103);
        assert_eq!(run.status, RunStatus::Unknown(99));
        assert!(!run.status.is_terminal());
        assert_eq!(run.git_branch, None);
        assert_eq!(run.cause(), Some("because"));
        assert_eq!(run.job_id(), Some(4));
        assert_eq!(
            run.run_steps.as_ref().unwrap()[0].status,
            RunStatus::Success
        );
        assert_eq!(
            parse_timestamp(run.created_at.as_deref().unwrap())
                .unwrap()
                .as_second(),
            1714557600
        );
        assert_eq!(
            env.status.unwrap().user_message.as_deref(),
            Some("Success!")
        );
    }

    #[test]
    fn decodes_minimal_objects() {
        let run: Run = serde_json::from_value(json!({"id": 1})).unwrap();
        assert_eq!(run.status, RunStatus::Unknown(0));
        let run: Run = serde_json::from_value(json!({"id": 1, "status": null})).unwrap();
        assert_eq!(run.status, RunStatus::Unknown(0));
        let _: Job = serde_json::from_value(json!({"id": 1, "settings": {"threads": 4}})).unwrap();
        let _: Project = serde_json::from_value(json!({"id": 1})).unwrap();
        let env: Environment = serde_json::from_value(
            json!({"id": 1, "type": "deployment", "deployment_type": "production"}),
        )
        .unwrap();
        assert_eq!(env.env_type.as_deref(), Some("deployment"));
        let _: Account =
            serde_json::from_value(json!({"id": 1, "plan": "enterprise", "groups": []})).unwrap();
    }

    #[test]
    fn list_envelope_pagination() {
        let env: Envelope<Vec<Project>> = serde_json::from_value(json!({
            "data": [{"id": 1, "name": "a"}, {"id": 2}],
            "extra": {"filters": {"limit": 2}, "order_by": "id", "pagination": {"count": 2, "total_count": 9}},
            "status": {"code": 200, "is_success": true}
        }))
        .unwrap();
        assert_eq!(env.data.len(), 2);
        assert_eq!(env.extra.unwrap().pagination.unwrap().total_count, Some(9));
    }

    #[test]
    fn trigger_request_serialisation_skips_none() {
        let mut r = TriggerRunRequest::new("deploy").unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"cause": "deploy"})
        );
        r.git_branch = Some("main".into());
        r.threads_override = Some(8);
        r.generate_docs_override = Some(false);
        r.steps_override = Some(vec!["dbt build".into()]);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"cause": "deploy", "git_branch": "main", "threads_override": 8,
                   "generate_docs_override": false, "steps_override": ["dbt build"]})
        );
        r.git_sha = Some(String::new());
        assert!(r.validate().is_err());
    }

    #[test]
    fn trigger_cause_limits() {
        assert!(TriggerRunRequest::new("").is_err());
        let ok = "é".repeat(MAX_CAUSE_CHARS);
        assert!(TriggerRunRequest::new(ok.clone()).is_ok());
        let long = format!("{ok}x");
        let err = TriggerRunRequest::new(long.clone()).unwrap_err();
        assert_eq!(err.reason(), "InvalidRequest");
        let t = truncate_cause(&long);
        assert_eq!(t.chars().count(), MAX_CAUSE_CHARS);
        assert!(TriggerRunRequest::new(t).is_ok());
        assert_eq!(truncate_cause("short"), "short");
    }

    #[test]
    fn bracket_lists() {
        assert_eq!(bracket_list(&[1, 2, 3]), "[1,2,3]");
        assert_eq!(bracket_list::<i64>(&[]), "[]");
    }
}
