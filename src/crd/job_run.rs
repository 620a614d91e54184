//! `DbtCloudJobRun`: one run of a dbt Cloud job, triggered exactly once and followed to its end.
// `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `cause` dbt Cloud accepts.
pub const MAX_CAUSE_LEN: usize = 255;
/// Default seconds between status checks of an in-flight run.
pub const DEFAULT_POLL_INTERVAL_SECONDS: i64 = 10;

/// Spec of `DbtCloudJobRun`. Immutable once created, like a Kubernetes Job's template (a new run is a
/// new object), except `suspend`, `cancel`, `cancelOnDelete` and `ttlSecondsAfterFinished`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dbtcloud.io",
    version = "v1alpha1",
    kind = "DbtCloudJobRun",
    plural = "dbtcloudjobruns",
    singular = "dbtcloudjobrun",
    namespaced,
    status = "DbtCloudJobRunStatus",
    shortname = "dbtrun",
    category = "dbtcloud",
    doc = "One run of a dbt Cloud job. The operator triggers it exactly once, follows it to the end, retries and cancels as asked, and writes the outcome into status.",
    printcolumn(name = "Job", type_ = "integer", json_path = ".status.jobId"),
    printcolumn(name = "Run", type_ = "integer", json_path = ".status.runId"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        json_path = ".status.attemptCount"
    ),
    printcolumn(
        name = "Duration",
        type_ = "integer",
        json_path = ".status.durationSeconds",
        description = "Seconds from trigger to finish"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.runUrl",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.statusMessage",
        priority = 1
    )
)]
#[x_kube(validation = Rule::new("self.credentialsRef == oldSelf.credentialsRef && self.job == oldSelf.job && self.pollIntervalSeconds == oldSelf.pollIntervalSeconds && self.cancelOnTimeout == oldSelf.cancelOnTimeout && self.retry == oldSelf.retry && has(self.trigger) == has(oldSelf.trigger) && (!has(self.trigger) || self.trigger == oldSelf.trigger) && has(self.timeoutSeconds) == has(oldSelf.timeoutSeconds) && (!has(self.timeoutSeconds) || self.timeoutSeconds == oldSelf.timeoutSeconds)").message("spec is immutable except suspend, cancel, cancelOnDelete and ttlSecondsAfterFinished: create a new DbtCloudJobRun for a new run"))]
#[serde(rename_all = "camelCase")]
pub struct DbtCloudJobRunSpec {
    /// The credentials to use.
    pub credentials_ref: CredentialsRef,
    /// Which dbt Cloud job to run: `id`, or `projectName` + `environmentName` + `jobName`.
    pub job: JobSelector,
    /// Overrides sent with the trigger request (all optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerOverrides>,
    /// Seconds between status checks while the run is in flight (runs naming the same credentials
    /// are checked together with that key, one request per credentials per interval).
    #[serde(default = "default_poll_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: i64,
    /// Longest time, from the first trigger, to wait for the run (including retries and time in
    /// dbt Cloud's queue). On expiry the phase becomes `TimedOut`. No limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<i64>,
    /// Cancel the dbt Cloud run when `timeoutSeconds` expires (default true).
    #[serde(default = "default_true")]
    pub cancel_on_timeout: bool,
    /// Retries of failed runs.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Cancel the dbt Cloud run when this object is deleted while the run is in flight (default true).
    #[serde(default = "default_true")]
    pub cancel_on_delete: bool,
    /// Hold the run: before the trigger, nothing is triggered until this is false again; while a
    /// run is in flight, it is cancelled and a new attempt starts on resume.
    #[serde(default)]
    pub suspend: bool,
    /// Stop the run: an in-flight dbt Cloud run is cancelled and the phase becomes `Cancelled`.
    #[serde(default)]
    pub cancel: bool,
    /// Delete this object this many seconds after it finished. Kept forever when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Which credentials object a run uses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// Name of the credentials object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `DbtCloudCredentials` (default; same namespace) or `ClusterDbtCloudCredentials`.
    #[serde(default)]
    pub kind: CredentialsKind,
}

/// Kind of credentials object referenced by a run.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CredentialsKind {
    /// A `DbtCloudCredentials` in the run's namespace.
    #[default]
    DbtCloudCredentials,
    /// A `ClusterDbtCloudCredentials` that allows the run's namespace.
    ClusterDbtCloudCredentials,
}

/// The dbt Cloud job to run, by id or by exact names.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != (has(self.projectName) || has(self.environmentName) || has(self.jobName))").message("set either job.id, or job.projectName + job.environmentName + job.jobName"))]
#[x_kube(validation = Rule::new("has(self.id) || (has(self.projectName) && has(self.environmentName) && has(self.jobName))").message("a job by name needs all of projectName, environmentName and jobName"))]
pub struct JobSelector {
    /// dbt Cloud job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub id: Option<i64>,
    /// Exact name of the dbt Cloud project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub project_name: Option<String>,
    /// Exact name of the environment in that project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub environment_name: Option<String>,
    /// Exact name of the job in that environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub job_name: Option<String>,
}

/// Overrides for the trigger request; names are the camelCase of dbt Cloud's.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerOverrides {
    /// Why the run was triggered; shown in dbt Cloud. Defaults to
    /// `Triggered by dbt-cloud-operator: <namespace>/<name>`. The operator appends a short marker
    /// that identifies the attempt and trims the text to fit dbt Cloud's 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub cause: Option<String>,
    /// Git commit to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub git_sha: Option<String>,
    /// Git branch to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub git_branch: Option<String>,
    /// Schema to build into instead of the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub schema_override: Option<String>,
    /// dbt version to use instead of the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub dbt_version_override: Option<String>,
    /// Number of threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub threads_override: Option<i64>,
    /// dbt target name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub target_name_override: Option<String>,
    /// Whether to generate docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_docs_override: Option<bool>,
    /// dbt Cloud's own timeout for the run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 172800))]
    pub timeout_seconds_override: Option<i64>,
    /// dbt commands to run instead of the job's, e.g. `["dbt build -s my_model"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 1024)))]
    pub steps_override: Option<Vec<String>>,
    /// GitHub pull request id (CI jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub github_pull_request_id: Option<i64>,
    /// GitLab merge request id (CI jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub gitlab_merge_request_id: Option<i64>,
    /// Azure DevOps pull request id (CI jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub azure_pull_request_id: Option<i64>,
    /// Pull request id for other git providers (CI jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub non_native_pull_request_id: Option<i64>,
}

/// Retries of failed runs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: u32,
    /// How a failed run is retried.
    #[serde(default)]
    pub strategy: RetryStrategy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            strategy: RetryStrategy::default(),
        }
    }
}

/// How a failed run is retried.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RetryStrategy {
    /// dbt Cloud's native retry: only the failed and skipped steps run again. Used when the failed
    /// run reports `can_retry`; otherwise a full run is triggered and an Event says so.
    #[default]
    RerunFailed,
    /// Trigger the whole job again.
    Full,
}

/// Lifecycle phase of a run.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RunPhase {
    /// Not triggered yet (waiting for credentials, the job lookup, or `suspend`).
    #[default]
    Pending,
    /// Triggered; waiting in dbt Cloud's queue.
    Queued,
    /// dbt Cloud is preparing the run.
    Starting,
    /// dbt is running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error (after all retries) or could not be triggered.
    Failed,
    /// Cancelled (by `spec.cancel`, or in dbt Cloud).
    Cancelled,
    /// `timeoutSeconds` expired.
    TimedOut,
}

impl RunPhase {
    /// True for phases that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    /// The phase name as written to status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Queued => "Queued",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
            Self::TimedOut => "TimedOut",
        }
    }
}

/// Observed state of a `DbtCloudJobRun`. Kept compact: it is cached for every object.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbtCloudJobRunStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: RunPhase,
    /// `Ready`, `Complete`, `Failed` (as for a batch Job), `Reconciling`, `Stalled` (kstatus), and
    /// `CredentialsReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// dbt Cloud account id the run belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<i64>,
    /// Resolved dbt Cloud job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
    /// Id of the current (latest) dbt Cloud run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
    /// Link to the current run in dbt Cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    /// Number of attempts made so far.
    #[serde(default)]
    pub attempt_count: u32,
    /// One entry per dbt Cloud run triggered for this object, oldest first. At most 20 are kept:
    /// every failed one, the latest, and the most recent others (see `attemptsOmitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<RunAttempt>,
    /// Attempts made but no longer listed in `attempts` (status stays small however many there are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_omitted: Option<u32>,
    /// A trigger that was recorded before it was sent: the crash-safety record that makes triggers
    /// exactly-once. Cleared once the run is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_trigger: Option<PendingTrigger>,
    /// Id of the last trigger intent (annotation `dbtcloud.io/trigger-intent`) whose outcome this
    /// status records; an intent with another id is still pending. Operator-owned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_intent: Option<String>,
    /// Human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// When the first attempt was triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run reached a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Seconds from `startedAt` to `finishedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Steps of the last run (name, status, duration). A run with more than 50 steps keeps its first
    /// 10 and last 40 here (see `stepsOmitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSummary>,
    /// Steps of the last run not listed in `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_omitted: Option<u32>,
    /// Summary of `run_results.json` of the last run, once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSummary>,
}

/// One dbt Cloud run triggered for this object.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAttempt {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// dbt Cloud run id.
    pub run_id: i64,
    /// Link to the run in dbt Cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How the attempt was started.
    pub kind: AttemptKind,
    /// dbt Cloud status of the run (`Queued`, `Starting`, `Running`, `Success`, `Error`, `Cancelled`).
    pub status: String,
    /// When the run was created in dbt Cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// When dbt started executing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// How an attempt was started.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AttemptKind {
    /// A full trigger of the job.
    Full,
    /// dbt Cloud's native retry of the previous failed run.
    RerunFailed,
}

/// A trigger recorded before it was sent (see `pendingTrigger`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingTrigger {
    /// Attempt number being started.
    pub attempt: u32,
    /// Marker put into the run's `cause` that identifies this attempt.
    pub token: String,
    /// How the attempt is started.
    pub kind: AttemptKind,
    /// For `RerunFailed`: the failed run being retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of_run_id: Option<i64>,
    /// Id of the job's newest dbt Cloud run just before the trigger was sent (0 when the job had no
    /// run; for `RerunFailed`, the failed run). Run ids only grow, so the run of this trigger has a
    /// larger id: the search for it reads every run of the job newer than this, however many there
    /// are, and nothing older. Absent in intents recorded by earlier operator versions (their
    /// search is bounded by the recorded time instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_run_id: Option<i64>,
    /// When the trigger was recorded.
    pub requested_at: Time,
}

/// One step of a dbt Cloud run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    /// Step index, from 1.
    pub index: i64,
    /// Step name, e.g. ``Invoke dbt with `dbt build` `` (long names are cut, ending with `…`).
    pub name: String,
    /// Step status (`Success`, `Error`, `Skipped`, ...).
    pub status: String,
    /// Duration in seconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
}

/// Counts from `run_results.json`, and the failing nodes (capped).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultsSummary {
    /// Nodes that succeeded (`success` and `pass`).
    pub pass: u32,
    /// Nodes that errored.
    pub error: u32,
    /// Tests that failed.
    pub fail: u32,
    /// Nodes skipped.
    pub skip: u32,
    /// Tests that warned.
    pub warn: u32,
    /// Unique ids of failing nodes (at most 20; see `failedNodesOmitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// Failing nodes not listed in `failedNodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_nodes_omitted: Option<u32>,
}

fn default_poll_interval() -> i64 {
    DEFAULT_POLL_INTERVAL_SECONDS
}
fn default_true() -> bool {
    true
}
fn default_max_attempts() -> u32 {
    1
}
