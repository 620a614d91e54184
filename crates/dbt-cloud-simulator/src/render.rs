//! JSON rendering of simulator state, shaped like dbt Cloud's responses. Run fields with no value
//! are sent as `null` like the live service does, or omitted in the sparse form
//! (`State::live_nulls` off; the OpenAPI schemas declare none of them nullable).

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::{Outcome, RunState, State};

/// Objects with every property the OpenAPI schemas mark required, typed placeholders generated
/// from `shared/dbt-cloud-api` (see `templates/required.json`); the simulator's own values go on top.
fn templates() -> &'static Value {
    static T: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        serde_json::from_str(include_str!("../templates/required.json"))
            .expect("valid template JSON")
    })
}

/// `value` completed with the required properties of template `kind`; `null`s are dropped (the
/// schemas declare no property nullable).
pub fn complete(kind: &str, value: Value) -> Value {
    let mut out = templates()[kind].as_object().cloned().unwrap_or_default();
    if let Value::Object(own) = value {
        for (k, v) in own {
            if !v.is_null() {
                out.insert(k, v);
            }
        }
    }
    out.retain(|_, v| !v.is_null());
    Value::Object(out)
}

/// Status codes.
pub const QUEUED: i64 = 1;
pub const STARTING: i64 = 2;
pub const RUNNING: i64 = 3;
pub const SUCCESS: i64 = 10;
pub const ERROR: i64 = 20;
pub const CANCELLED: i64 = 30;

/// Humanized status.
pub fn humanized(code: i64) -> &'static str {
    match code {
        QUEUED => "Queued",
        STARTING => "Starting",
        RUNNING => "Running",
        SUCCESS => "Success",
        ERROR => "Error",
        CANCELLED => "Cancelled",
        _ => "Unknown",
    }
}

/// The `{status, data, extra}` envelope of a successful answer.
pub fn envelope(data: Value, extra: Option<Value>) -> Value {
    let mut v = json!({
        "status": {"code": 200, "is_success": true, "user_message": "Success!", "developer_message": ""},
        "data": data,
    });
    if let Some(extra) = extra {
        v["extra"] = extra;
    }
    v
}

/// The envelope of an error answer.
pub fn error_envelope(code: u16, message: &str) -> Value {
    json!({
        "status": {"code": code, "is_success": false, "user_message": message, "developer_message": ""},
        "data": null,
    })
}

/// `extra` of a list answer.
pub fn list_extra(
    filters: Value,
    order_by: &str,
    count: usize,
    total: usize,
    limit: usize,
    offset: usize,
) -> Value {
    json!({
        "filters": filters,
        "order_by": order_by,
        "pagination": {"count": count, "total_count": total, "limit": limit, "offset": offset},
    })
}

/// The outcome a run ends with (its own, unless forced).
pub fn final_outcome(run: &RunState) -> Outcome {
    run.forced.map(|(o, _)| o).unwrap_or(run.outcome)
}

/// Index (into `run.commands`) of the command that fails, if the run fails at a command.
pub fn failing_command(run: &RunState) -> Option<usize> {
    match final_outcome(run) {
        Outcome::FailAtStep(k)
            if k >= 1
                && k > run.first_command
                && k - 1 - run.first_command < run.commands.len() =>
        {
            Some(k - 1 - run.first_command)
        }
        _ => None,
    }
}

/// Status code of a run at `now` (the override, when one is set).
pub fn status(run: &RunState, now: Instant) -> i64 {
    if let Some(code) = run.status_override {
        return code;
    }
    if now >= run.finish_at {
        return match final_outcome(run) {
            Outcome::Success => SUCCESS,
            Outcome::Cancelled => CANCELLED,
            Outcome::FailAtStep(_) if failing_command(run).is_some() => ERROR,
            Outcome::FailAtStep(_) => SUCCESS,
        };
    }
    if now < run.dequeue_at {
        QUEUED
    } else if now < run.dequeue_at + run.behavior.starting {
        STARTING
    } else {
        RUNNING
    }
}

/// The wall-clock time of instant `at` in `run`'s life.
pub(crate) fn wall(run: &RunState, at: Instant) -> jiff::Timestamp {
    let offset = at.saturating_duration_since(run.created);
    run.created_wall + jiff::SignedDuration::try_from(offset).unwrap_or_default()
}

/// dbt Cloud's timestamp format: `2026-11-25 08:30:01.123456+00:00`.
pub fn ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
}

fn hms(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// How many setup steps precede a run's dbt commands: dbt Cloud clones the repository, creates
/// the profile and runs `dbt deps` before every run (including retries), so a run's first own
/// command is step `SETUP_STEPS + 1`.
pub const SETUP_STEPS: usize = 3;

/// Step names of a run: the [`SETUP_STEPS`] setup steps, then one per dbt command.
pub fn step_names(run: &RunState) -> Vec<String> {
    let mut names = vec![
        "Clone git repository".to_string(),
        "Create profile from connection Snowflake".to_string(),
        "Invoke dbt with `dbt deps`".to_string(),
    ];
    names.extend(
        run.commands
            .iter()
            .map(|c| format!("Invoke dbt with `{c}`")),
    );
    names
}

/// Steps that have started by `now`, with statuses.
fn steps(run: &RunState, now: Instant, log_bytes: usize) -> Vec<Value> {
    let code = status(run, now);
    if code == QUEUED {
        return Vec::new();
    }
    let names = step_names(run);
    let started = run.dequeue_at + run.behavior.starting;
    let total = names.len();
    // How many steps have started: all when finished, else in proportion to the running time.
    let (reached, last_code) = match code {
        STARTING => (1, RUNNING),
        RUNNING => {
            let frac = now.saturating_duration_since(started).as_secs_f64()
                / run.behavior.running.as_secs_f64().max(1e-9);
            (
                ((frac * total as f64) as usize + 1).clamp(1, total),
                RUNNING,
            )
        }
        ERROR => (SETUP_STEPS + failing_command(run).unwrap_or(0) + 1, ERROR),
        CANCELLED => {
            let frac = run
                .finish_at
                .saturating_duration_since(started)
                .as_secs_f64()
                / run.behavior.running.as_secs_f64().max(1e-9);
            (
                ((frac * total as f64) as usize + 1).clamp(1, total),
                CANCELLED,
            )
        }
        _ => (total, SUCCESS),
    };
    let step_len = run.behavior.running / total.max(1) as u32;
    (0..reached.min(total))
        .map(|i| {
            let is_last = i + 1 == reached;
            let code = if is_last { last_code } else { SUCCESS };
            let begin = started + step_len * i as u32;
            let end = if code == SUCCESS || code == ERROR || code == CANCELLED { Some(if is_last { run.finish_at } else { begin + step_len }) } else { None };
            let mut logs = if code == ERROR {
                "Running with dbt=1.9.1\nFound 3 models, 4 tests\n\nDatabase Error in model orders (models/orders.sql)\n  relation \"raw.orders\" does not exist\n\nDone. PASS=2 WARN=0 ERROR=1 SKIP=1 TOTAL=4".to_string()
            } else if i + 1 == SETUP_STEPS {
                "Running with dbt=1.9.1\nInstalling dbt-labs/dbt_utils\nInstalled from version 1.3.0".to_string()
            } else {
                format!("{} finished", names[i])
            };
            if logs.len() < log_bytes {
                // Padding goes first, so the end of the log (what matters) stays the same.
                let pad = "log line\n".repeat((log_bytes - logs.len()) / 9 + 1);
                logs = format!("{pad}{logs}");
            }
            let mut s = json!({
                "id": run.id * 100 + i as i64 + 1,
                "run_id": run.id,
                "account_id": run.account,
                "index": i + 1,
                "status": code,
                "status_humanized": humanized(code),
                "name": names[i],
                "logs": logs,
                "truncated_debug_logs": "",
                "started_at": ts(wall(run, begin)),
                "created_at": ts(wall(run, begin)),
                "updated_at": ts(wall(run, end.unwrap_or(now))),
            });
            if let Some(end) = end {
                s["finished_at"] = json!(ts(wall(run, end)));
                s["duration"] = json!(hms(end.saturating_duration_since(begin)));
                s["duration_humanized"] = json!(format!("{} seconds", end.saturating_duration_since(begin).as_secs()));
            }
            s
        })
        .collect()
}

/// Run properties the live service sends as `null` when they have no value.
const RUN_OPTIONAL: [&str; 15] = [
    "owner_thread_id",
    "executed_by_thread_id",
    "deferring_run_id",
    "artifact_s3_path",
    "dequeued_at",
    "started_at",
    "finished_at",
    "last_checked_at",
    "last_heartbeat_at",
    "finished_at_humanized",
    "retrying_run_id",
    "retry_not_supported_reason",
    "trigger",
    "job",
    "environment",
];

/// Optional trigger properties (the trigger request's overrides); the live service sends them as
/// `null` when not set.
pub(crate) const TRIGGER_OPTIONAL: [&str; 13] = [
    "git_sha",
    "git_branch",
    "azure_pull_request_id",
    "github_pull_request_id",
    "gitlab_merge_request_id",
    "non_native_pull_request_id",
    "schema_override",
    "dbt_version_override",
    "threads_override",
    "target_name_override",
    "generate_docs_override",
    "timeout_seconds_override",
    "steps_override",
];

/// A run object; `include` lists `include_related` values.
pub fn run(run: &RunState, state: &State, now: Instant, include: &[&str]) -> Value {
    let code = status(run, now);
    let terminal = code >= SUCCESS;
    let started = run.dequeue_at + run.behavior.starting;
    let mut v = Map::new();
    let mut put = |k: &str, val: Value| {
        v.insert(k.to_string(), val);
    };
    put("id", json!(run.id));
    put("trigger_id", json!(run.trigger_id));
    put("account_id", json!(run.account));
    put("environment_id", json!(run.environment_id));
    put("project_id", json!(run.project_id));
    put("job_definition_id", json!(run.job_id));
    put("job_id", json!(run.job_id));
    put("status", json!(code));
    put("status_humanized", json!(humanized(code)));
    put("dbt_version", json!("1.9.1"));
    put(
        "git_branch",
        run.trigger
            .get("git_branch")
            .cloned()
            .filter(|b| !b.is_null())
            .unwrap_or(json!("main")),
    );
    put(
        "git_sha",
        run.trigger
            .get("git_sha")
            .cloned()
            .filter(|b| !b.is_null())
            .unwrap_or(json!("a1b2c3d4e5f6")),
    );
    put(
        "status_message",
        json!(if code == ERROR {
            "Database Error in model orders (models/orders.sql)"
        } else {
            ""
        }),
    );
    put("blocked_by", json!([]));
    put("artifacts_saved", json!(terminal && code != CANCELLED));
    put("has_docs_generated", json!(false));
    put("has_sources_generated", json!(false));
    put("notifications_sent", json!(terminal));
    put("created_at", json!(ts(run.created_wall)));
    put(
        "updated_at",
        json!(ts(wall(run, now.min(run.finish_at.max(run.created))))),
    );
    put("should_start_at", json!(ts(run.created_wall)));
    if now >= run.dequeue_at || terminal {
        put("dequeued_at", json!(ts(wall(run, run.dequeue_at))));
    }
    if now >= started || (terminal && run.finish_at >= started) {
        put(
            "started_at",
            json!(ts(wall(run, started.min(run.finish_at)))),
        );
    }
    if terminal {
        put("finished_at", json!(ts(wall(run, run.finish_at))));
        put("finished_at_humanized", json!("just now"));
    }
    let end = if terminal { run.finish_at } else { now };
    put(
        "duration",
        json!(hms(end.saturating_duration_since(run.created))),
    );
    put(
        "queued_duration",
        json!(hms(run
            .dequeue_at
            .min(end)
            .saturating_duration_since(run.created))),
    );
    put(
        "run_duration",
        json!(hms(end.saturating_duration_since(started))),
    );
    put(
        "duration_humanized",
        json!(format!(
            "{} seconds",
            end.saturating_duration_since(run.created).as_secs()
        )),
    );
    put(
        "queued_duration_humanized",
        json!(format!(
            "{} seconds",
            run.dequeue_at
                .min(end)
                .saturating_duration_since(run.created)
                .as_secs()
        )),
    );
    put(
        "run_duration_humanized",
        json!(format!(
            "{} seconds",
            end.saturating_duration_since(started).as_secs()
        )),
    );
    put("created_at_humanized", json!("just now"));
    put("in_progress", json!(!terminal));
    put("is_running", json!(code == RUNNING));
    put("is_complete", json!(terminal));
    put("is_success", json!(code == SUCCESS));
    put("is_error", json!(code == ERROR));
    put("is_cancelled", json!(code == CANCELLED));
    let latest_of_job = state
        .runs
        .values()
        .filter(|r| r.account == run.account && r.job_id == run.job_id)
        .map(|r| r.id)
        .max()
        == Some(run.id);
    let can_retry = code == ERROR && latest_of_job;
    put("can_retry", json!(can_retry));
    if !can_retry && terminal {
        put(
            "retry_not_supported_reason",
            json!(if code != ERROR {
                "RETRY_NOT_FAILED_RUN"
            } else {
                "RETRY_NOT_LATEST_RUN"
            }),
        );
    }
    if let Some(of) = run.retrying_run_id {
        put("retrying_run_id", json!(of));
    }
    put(
        "href",
        json!(format!(
            "https://cloud.getdbt.com/deploy/{}/projects/{}/runs/{}/",
            run.account, run.project_id, run.id
        )),
    );
    if include.contains(&"trigger") {
        let mut trigger = run.trigger.clone();
        if state.live_nulls {
            for key in TRIGGER_OPTIONAL {
                if trigger.get(key).is_none() {
                    trigger[key] = Value::Null;
                }
            }
        }
        put("trigger", trigger);
    }
    if include.contains(&"job") {
        if let Some(job) = state.jobs.get(&(run.account, run.job_id)) {
            let mut j = job_json(run.account, job);
            // The run's embedded job documents schedule date/time as strings.
            j["schedule"] = json!({"cron": "0 * * * *", "date": "every_day", "time": "every_hour"});
            put("job", complete("run_job_v2", j));
        }
    }
    if include.contains(&"run_steps") {
        put("run_steps", json!(steps(run, now, state.step_log_bytes)));
    }
    if state.live_nulls {
        for key in RUN_OPTIONAL {
            v.entry(key).or_insert(Value::Null);
        }
        v.entry("run_steps").or_insert(json!([]));
    }
    Value::Object(v)
}

/// A job definition object.
pub fn job_json(account: i64, job: &crate::JobSpec) -> Value {
    json!({
        "id": job.id,
        "account_id": account,
        "project_id": job.project_id,
        "environment_id": job.environment_id,
        "name": job.name,
        "description": "",
        "dbt_version": "1.9.1",
        "execute_steps": job.steps,
        "generate_docs": false,
        "run_generate_sources": false,
        "job_type": "scheduled",
        "state": 1,
        "triggers": {"github_webhook": false, "git_provider_webhook": false, "schedule": false, "on_merge": false},
        "settings": {"threads": 4, "target_name": "default"},
        "execution": {"timeout_seconds": 0},
        "schedule": {"cron": "0 * * * *", "date": {"type": "every_day"}, "time": {"type": "every_hour", "interval": 1}},
        "created_at": "2026-01-01 00:00:00.000000+00:00",
        "updated_at": "2026-01-01 00:00:00.000000+00:00",
    })
}
