//! `DbtCloudJobTrigger`: starts `DbtCloudJobRun`s from a template on a cron schedule and whenever
//! a revision string changes, keeps a bounded history of them, and never starts one twice (the
//! CronJob → Job pattern for dbt Cloud runs).
// `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::job_run::DbtCloudJobRunSpec;

/// Longest trigger name: the longest child name suffix (`-r-<hash8>`, `-<unix minutes>`,
/// `-manual-<5>`) must still fit the 253 characters of an object name.
pub const MAX_TRIGGER_NAME_LEN: usize = 240;
/// Default `successfulRunsHistoryLimit`.
pub const DEFAULT_SUCCESSFUL_HISTORY: i32 = 3;
/// Default `failedRunsHistoryLimit`.
pub const DEFAULT_FAILED_HISTORY: i32 = 1;
/// Longest `spec.revision`.
pub const MAX_REVISION_LEN: usize = 1024;

/// Shape of `spec.schedule` accepted at admission: a macro (`@daily`, …) or five fields of the
/// characters cron uses. The operator parses it fully (ranges, steps, names) and reports anything
/// else in the `Ready`/`Stalled` conditions.
pub const SCHEDULE_PATTERN: &str = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*/,?#-]+( +[0-9A-Za-z*/,?#-]+){4})$";
/// Shape of `spec.timeZone` accepted at admission: an IANA name such as `Europe/Berlin` or `UTC`.
pub const TIME_ZONE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$";

/// Spec of `DbtCloudJobTrigger`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dbtcloud.io",
    version = "v1alpha1",
    kind = "DbtCloudJobTrigger",
    plural = "dbtcloudjobtriggers",
    singular = "dbtcloudjobtrigger",
    namespaced,
    status = "DbtCloudJobTriggerStatus",
    shortname = "dbttrigger",
    category = "dbtcloud",
    doc = "Starts DbtCloudJobRuns from a template: on a cron schedule, whenever spec.revision changes, or on demand (`kubectl dbtcloud trigger NAME`). Each schedule slot and each revision change starts at most one run (run names are derived from them), concurrent runs follow concurrencyPolicy, and finished runs beyond the history limits are deleted.",
    validation = Rule::new("size(self.metadata.name) <= 240").message("the name of a DbtCloudJobTrigger is at most 240 characters (its runs' names add a suffix)"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCount"),
    printcolumn(name = "Last Run", type_ = "string", json_path = ".status.lastRunName"),
    printcolumn(
        name = "Next",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        description = "When the schedule starts the next run"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = 1
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.lastRevision",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.schedule) || !has(self.timeZone)").message("spec.timeZone needs spec.schedule"))]
#[x_kube(validation = Rule::new("!self.revisionAsGitSha || !has(self.runTemplate.spec.trigger) || !has(self.runTemplate.spec.trigger.gitSha)").message("set either spec.revisionAsGitSha or spec.runTemplate.spec.trigger.gitSha, not both"))]
#[x_kube(validation = Rule::new("!self.revisionAsGitSha || !has(self.revision) || size(self.revision) <= 255").message("with spec.revisionAsGitSha the revision is a git SHA: at most 255 characters"))]
#[serde(rename_all = "camelCase")]
pub struct DbtCloudJobTriggerSpec {
    /// The runs to start: labels, annotations and a full `DbtCloudJobRun` spec (credentials, job,
    /// trigger overrides, poll/retry/timeout policy). A change applies to runs started afterwards.
    pub run_template: RunTemplate,
    /// When to start runs, in cron format: five fields (minute hour day-of-month month
    /// day-of-week, e.g. `0 2 * * *` for 02:00 every day, `*/15 * * * 1-5` every 15 minutes on
    /// weekdays) or a macro (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`). Names
    /// (`MON`, `JAN`), `L`, `W` and `#` work as in Vixie cron. No runs on a schedule when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = SCHEDULE_PATTERN))]
    pub schedule: Option<String>,
    /// IANA time zone of `schedule`, e.g. `Europe/Berlin` or `America/New_York` (default `UTC`).
    /// Daylight-saving changes follow cron practice: a time skipped by the clock change runs right
    /// after it, a time that happens twice runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,
    /// Any string identifying what should be run, typically the git revision of your dbt
    /// project as deployed by Flux or Argo CD. Each change to a new non-empty value starts one
    /// run (the first value too); applying an unchanged value starts none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub revision: Option<String>,
    /// Pass `revision` to dbt Cloud as the run's git SHA (`trigger.gitSha`), for every run this
    /// trigger starts while `revision` is set.
    #[serde(default)]
    pub revision_as_git_sha: bool,
    /// What to do when a run is due while an earlier one is still active: `Allow` (default) runs
    /// them side by side, `Forbid` skips the new one (recorded in `status.lastSkipped` and an
    /// Event), `Replace` cancels the active runs (sets their `spec.cancel`) and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Latest a scheduled run may start after its time, in seconds. After the operator was down,
    /// at most one missed run is started: the most recent one, and only if it is within this
    /// deadline (without a deadline, the most recent missed run is always started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub starting_deadline_seconds: Option<i64>,
    /// Start nothing (by schedule or revision) while true; running runs are not affected. On
    /// resume, a revision changed meanwhile starts its run, and a missed schedule is caught up
    /// as after an outage (see `startingDeadlineSeconds`).
    #[serde(default)]
    pub suspend: bool,
    /// How many finished successful runs to keep (older ones are deleted), default 3.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_runs_history_limit: i32,
    /// How many finished unsuccessful runs (`Failed`, `TimedOut`, `Cancelled`) to keep, default 1.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_runs_history_limit: i32,
}

/// Template of the runs a trigger starts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTemplate {
    /// Labels and annotations given to every run (the operator adds its own under `dbtcloud.io/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Spec of every run, exactly as in a `DbtCloudJobRun`.
    #[schemars(schema_with = "run_spec_schema")]
    pub spec: DbtCloudJobRunSpec,
}

/// Labels and annotations of the runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels of every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The `DbtCloudJobRun` spec schema without its immutability rule (`oldSelf`): a run's spec
/// never changes, a template's may.
fn run_spec_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<DbtCloudJobRunSpec>();
    if let Some(obj) = schema.as_object_mut() {
        let rules = obj
            .get_mut("x-kubernetes-validations")
            .and_then(|v| v.as_array_mut());
        if let Some(rules) = rules {
            rules.retain(|r| {
                !r.get("rule")
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r.contains("oldSelf"))
            });
            if rules.is_empty() {
                obj.remove("x-kubernetes-validations");
            }
        }
        obj.insert(
            "description".into(),
            "Spec of every run, exactly as in a `DbtCloudJobRun`.".into(),
        );
    }
    schema
}

/// What to do with a due run while another is active.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start it; runs may overlap.
    #[default]
    Allow,
    /// Skip it (recorded in status and an Event).
    Forbid,
    /// Cancel the active runs, then start it.
    Replace,
}

impl ConcurrencyPolicy {
    /// The policy name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "Allow",
            Self::Forbid => "Forbid",
            Self::Replace => "Replace",
        }
    }
}

/// Observed state of a `DbtCloudJobTrigger`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbtCloudJobTriggerStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the trigger works: schedule and time zone valid, template accepted),
    /// `Reconciling` and `Stalled` (kstatus: `Stalled=True` needs a change of the spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Runs of this trigger that have not finished yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveRun>,
    /// Number of entries in `active`.
    #[serde(default)]
    pub active_count: i32,
    /// The latest schedule slot handled: its run was started, or it was skipped (see
    /// `lastSkipped`). Only later slots are due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The latest `spec.revision` handled (its run started, or skipped under `Forbid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_revision: Option<String>,
    /// Revision changes handled so far (part of each revision run's name, so that returning to an
    /// earlier revision starts a new run).
    #[serde(default)]
    pub revision_changes: i64,
    /// Name of the newest run of this trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_name: Option<String>,
    /// When the latest successful run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// When the schedule starts the next run (unset without a schedule or while suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The latest run that was due but not started, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<SkippedRun>,
}

/// A run of the trigger that has not finished.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRun {
    /// Name of the `DbtCloudJobRun`.
    pub name: String,
}

/// A due run that was not started.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedRun {
    /// When it was skipped.
    pub time: Time,
    /// For a scheduled run: its scheduled time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_time: Option<Time>,
    /// For a revision run: the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `Forbidden` (an earlier run was active under `Forbid`), `MissedDeadline` (later than
    /// `startingDeadlineSeconds`), or `Superseded` (a revision run started at the same moment
    /// under `Replace`).
    pub reason: String,
    /// Details.
    pub message: String,
}

fn default_successful_history() -> i32 {
    DEFAULT_SUCCESSFUL_HISTORY
}
fn default_failed_history() -> i32 {
    DEFAULT_FAILED_HISTORY
}
