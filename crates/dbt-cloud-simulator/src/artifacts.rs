//! The dbt artifacts of a run's command steps: `run_results.json` (schema v6) and `manifest.json`
//! (schema v12), with the keys dbt 1.9 writes, so that they validate against dbt's published JSON
//! schemas (checked in `tests/openapi_conformance.rs`) and lineage-aware clients find what they read
//! (`metadata.adapter_type`, `parent_map`, `child_map`, nodes with `depends_on`, results with
//! timing and adapter responses).
//!
//! Every run works on one small Snowflake project, "analytics": the source `raw.orders`, the seed
//! `raw_customers`, the models `stg_orders` → `orders` → `customers` and a `not_null` test on
//! `orders.id`. A command's results cover the nodes its subcommand runs (`dbt seed`: the seed,
//! `dbt run`: the models, `dbt test`: the test, anything else, e.g. `dbt build`: all); in the
//! failing command, `orders` errors (the seed errors under `dbt seed`, the test fails under
//! `dbt test`) and everything downstream of it is skipped.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::render::{self, failing_command, status, SETUP_STEPS};
use crate::RunState;

const PROJECT: &str = "analytics";
const DATABASE: &str = "ANALYTICS";
const SCHEMA: &str = "PROD";
const SOURCE_ID: &str = "source.analytics.raw.orders";
const RUN_RESULTS_SCHEMA: &str = "https://schemas.getdbt.com/dbt/run-results/v6.json";
const MANIFEST_SCHEMA: &str = "https://schemas.getdbt.com/dbt/manifest/v12.json";
const DBT_VERSION: &str = "1.9.1";
/// When the project's files were parsed (`created_at` of its nodes), seconds since the epoch.
const PARSED_AT: f64 = 1_767_225_600.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Seed,
    Model,
    Test,
}

struct Node {
    kind: Kind,
    name: &'static str,
    unique_id: &'static str,
    /// Unique ids of the nodes and sources it reads.
    parents: &'static [&'static str],
    materialized: &'static str,
    raw_code: &'static str,
    compiled_code: &'static str,
}

/// The project's nodes in the order `dbt build` runs them.
const NODES: [Node; 5] = [
    Node {
        kind: Kind::Seed,
        name: "raw_customers",
        unique_id: "seed.analytics.raw_customers",
        parents: &[],
        materialized: "seed",
        raw_code: "",
        compiled_code: "",
    },
    Node {
        kind: Kind::Model,
        name: "stg_orders",
        unique_id: "model.analytics.stg_orders",
        parents: &[SOURCE_ID],
        materialized: "view",
        raw_code: "select * from {{ source('raw', 'orders') }}",
        compiled_code: "select * from ANALYTICS.RAW.orders",
    },
    Node {
        kind: Kind::Model,
        name: "orders",
        unique_id: "model.analytics.orders",
        parents: &["model.analytics.stg_orders"],
        materialized: "table",
        raw_code: "select id, customer_id, amount from {{ ref('stg_orders') }}",
        compiled_code: "select id, customer_id, amount from ANALYTICS.PROD.stg_orders",
    },
    Node {
        kind: Kind::Test,
        name: "not_null_orders_id",
        unique_id: "test.analytics.not_null_orders_id.5f3e5b6c8a",
        parents: &["model.analytics.orders"],
        materialized: "test",
        raw_code: "{{ test_not_null(**_dbt_generic_test_kwargs) }}",
        compiled_code: "select id from ANALYTICS.PROD.orders where id is null",
    },
    Node {
        kind: Kind::Model,
        name: "customers",
        unique_id: "model.analytics.customers",
        parents: &["seed.analytics.raw_customers", "model.analytics.orders"],
        materialized: "table",
        raw_code: "select c.id, sum(o.amount) as lifetime_value from {{ ref('raw_customers') }} c left join {{ ref('orders') }} o on o.customer_id = c.id group by 1",
        compiled_code: "select c.id, sum(o.amount) as lifetime_value from ANALYTICS.PROD.raw_customers c left join ANALYTICS.PROD.orders o on o.customer_id = c.id group by 1",
    },
];

impl Node {
    fn resource_type(&self) -> &'static str {
        match self.kind {
            Kind::Seed => "seed",
            Kind::Model => "model",
            Kind::Test => "test",
        }
    }

    fn relation_name(&self) -> Value {
        match self.kind {
            Kind::Test => Value::Null,
            _ => json!(format!("{DATABASE}.{SCHEMA}.{}", self.name)),
        }
    }

    /// Path relative to its resource directory, e.g. `orders.sql`.
    fn path(&self) -> String {
        match self.kind {
            Kind::Seed => format!("{}.csv", self.name),
            Kind::Model | Kind::Test => format!("{}.sql", self.name),
        }
    }

    fn original_file_path(&self) -> String {
        match self.kind {
            Kind::Seed => format!("seeds/{}.csv", self.name),
            Kind::Model => format!("models/{}.sql", self.name),
            Kind::Test => "models/schema.yml".to_string(),
        }
    }
}

/// The dbt subcommand of a job command (`dbt build -s orders` → `build`).
fn subcommand(command: &str) -> &str {
    command
        .split_whitespace()
        .skip_while(|t| *t == "dbt")
        .find(|t| !t.starts_with('-'))
        .unwrap_or("build")
}

/// Indexes (into [`NODES`]) of the nodes a command runs.
fn selected(command: &str) -> Vec<usize> {
    let kinds: &[Kind] = match subcommand(command) {
        "seed" => &[Kind::Seed],
        "run" => &[Kind::Model],
        "test" => &[Kind::Test],
        _ => &[Kind::Seed, Kind::Model, Kind::Test],
    };
    (0..NODES.len())
        .filter(|i| kinds.contains(&NODES[*i].kind))
        .collect()
}

/// Whether node `i` reads, directly or not, the node with unique id `of`.
fn downstream_of(i: usize, of: &str) -> bool {
    NODES[i].parents.iter().any(|p| {
        *p == of
            || NODES
                .iter()
                .position(|n| n.unique_id == *p)
                .is_some_and(|j| downstream_of(j, of))
    })
}

/// dbt's timestamp format in artifacts: `2026-11-25T08:30:01.123456Z`.
fn iso(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A run step's command, if `step` (1-based, setup steps included; `None`: the last command that
/// ran) is a command that ran to its end in a finished, not cancelled run.
fn command_step(run: &RunState, now: Instant, step: Option<usize>) -> Option<usize> {
    let code = status(run, now);
    if code < render::SUCCESS || code == render::CANCELLED {
        return None;
    }
    let last = SETUP_STEPS
        + failing_command(run)
            .map(|c| c + 1)
            .unwrap_or(run.commands.len());
    let index = step.unwrap_or(last);
    (index > SETUP_STEPS && index <= last).then_some(index)
}

fn invocation_id(run: &RunState, step: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", run.id, step)
}

/// `args` of the invocation: what dbt records of its command line and settings.
fn args(run: &RunState, command: &str) -> Value {
    let tokens: Vec<&str> = command.split_whitespace().collect();
    let values_of = |flags: &[&str]| -> Vec<&str> {
        let mut out = Vec::new();
        let mut taking = false;
        for t in &tokens {
            if t.starts_with('-') {
                taking = flags.contains(t);
            } else if taking {
                out.push(*t);
            }
        }
        out
    };
    let has = |flags: &[&str]| tokens.iter().any(|t| flags.contains(t));
    let which = subcommand(command);
    let threads = run
        .trigger
        .get("threads_override")
        .and_then(Value::as_i64)
        .unwrap_or(4);
    let target = run
        .trigger
        .get("target_name_override")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let dir = format!("/tmp/jobs/{}/target", run.id);
    json!({
        "which": which,
        "rpc_method": which,
        "invocation_command": command,
        "select": values_of(&["-s", "--select", "-m", "--models"]),
        "exclude": values_of(&["--exclude"]),
        "selector": values_of(&["--selector"]).first(),
        "indirect_selection": "eager",
        "full_refresh": has(&["--full-refresh", "-f"]),
        "fail_fast": has(&["--fail-fast", "-x"]),
        "threads": threads,
        "target": target,
        "vars": {},
        "defer": false,
        "favor_state": false,
        "project_dir": dir,
        "profiles_dir": format!("/tmp/jobs/{}/.dbt", run.id),
        "log_path": format!("{dir}/logs"),
        "log_level": "info",
        "log_level_file": "debug",
        "log_format": "json",
        "log_format_file": "json",
        "write_json": true,
        "partial_parse": true,
        "static_parser": true,
        "use_colors": false,
        "print": true,
        "quiet": false,
        "introspect": true,
        "populate_cache": true,
        "cache_selected_only": false,
        "macro_debugging": false,
        "version_check": true,
        "send_anonymous_usage_stats": false,
        "empty": false,
        "strict_mode": false,
        "show_resource_report": false,
        "printer_width": 80,
        "warn_error_options": {"include": [], "exclude": []},
    })
}

/// `run_results.json` of a command step of a finished run (see [`command_step`]).
pub fn run_results(run: &RunState, now: Instant, step: Option<usize>) -> Option<Value> {
    let index = command_step(run, now, step)?;
    let command = run.commands.get(index - SETUP_STEPS - 1)?;
    let failing = failing_command(run).is_some_and(|c| c + SETUP_STEPS + 1 == index);
    let nodes = selected(command);
    // The node that fails in a failing command: `orders` when the command runs models.
    let failed = if failing {
        nodes
            .iter()
            .copied()
            .find(|i| NODES[*i].name == "orders")
            .or(nodes.first().copied())
    } else {
        None
    };
    let elapsed = run.behavior.running.as_secs_f64();
    let per_node = elapsed / nodes.len().max(1) as f64;
    let started = render::wall(run, run.dequeue_at + run.behavior.starting);
    let offset =
        |secs: f64| started + jiff::SignedDuration::try_from_secs_f64(secs).unwrap_or_default();
    let results: Vec<Value> = nodes
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let node = &NODES[i];
            let skipped = failed.is_some_and(|f| downstream_of(i, NODES[f].unique_id));
            let errored = failed == Some(i);
            let status = match (node.kind, errored, skipped) {
                (_, _, true) => "skipped",
                (Kind::Test, true, _) => "fail",
                (_, true, _) => "error",
                (Kind::Test, false, _) => "pass",
                _ => "success",
            };
            let begin = k as f64 * per_node;
            let timing = if skipped {
                json!([])
            } else {
                json!([
                    {"name": "compile", "started_at": iso(offset(begin)), "completed_at": iso(offset(begin + per_node / 4.0))},
                    {"name": "execute", "started_at": iso(offset(begin + per_node / 4.0)), "completed_at": iso(offset(begin + per_node))},
                ])
            };
            let query_id = format!("01b{:013x}-0000-{:04x}-0000-{:012x}", run.id, index, k + 1);
            let (message, adapter_response, failures) = match (status, node.kind) {
                ("skipped", _) => (Value::Null, json!({}), Value::Null),
                ("error", Kind::Seed) => (
                    json!(format!("Database Error in seed {} ({})\n  Number of columns in file does not match the table", node.name, node.original_file_path())),
                    json!({}),
                    Value::Null,
                ),
                ("error", _) => (
                    json!(format!("Database Error in model {} ({})\n  relation \"raw.orders\" does not exist\n  compiled code at target/run/{PROJECT}/{}", node.name, node.original_file_path(), node.original_file_path())),
                    json!({}),
                    Value::Null,
                ),
                ("fail", _) => (
                    json!("Got 3 results, configured to fail if != 0"),
                    json!({"_message": "SUCCESS 1", "code": "SUCCESS", "rows_affected": 1, "query_id": query_id}),
                    json!(3),
                ),
                ("pass", _) => (
                    Value::Null,
                    json!({"_message": "SUCCESS 1", "code": "SUCCESS", "rows_affected": 1, "query_id": query_id}),
                    json!(0),
                ),
                (_, Kind::Seed) => (
                    json!("INSERT 100"),
                    json!({"_message": "INSERT 100", "code": "INSERT", "rows_affected": 100, "query_id": query_id}),
                    Value::Null,
                ),
                _ => (
                    json!("SUCCESS 1"),
                    json!({"_message": "SUCCESS 1", "code": "SUCCESS", "rows_affected": 1, "query_id": query_id}),
                    Value::Null,
                ),
            };
            let compiled = !skipped && node.kind != Kind::Seed;
            json!({
                "status": status,
                "timing": timing,
                "thread_id": format!("Thread-{} (worker)", k % 4 + 1),
                "execution_time": if skipped { 0.0 } else { per_node },
                "adapter_response": adapter_response,
                "message": message,
                "failures": failures,
                "unique_id": node.unique_id,
                "compiled": compiled,
                "compiled_code": if compiled { json!(node.compiled_code) } else { Value::Null },
                "relation_name": node.relation_name(),
                "batch_results": null,
            })
        })
        .collect();
    Some(json!({
        "metadata": {
            "dbt_schema_version": RUN_RESULTS_SCHEMA,
            "dbt_version": DBT_VERSION,
            "generated_at": iso(render::wall(run, run.finish_at)),
            "invocation_id": invocation_id(run, index),
            "env": {},
        },
        "results": results,
        "elapsed_time": elapsed,
        "args": args(run, command),
    }))
}

/// A deterministic hex digest of `text`, `len` characters (stands in for dbt's file checksums).
fn digest(text: &str, len: usize) -> String {
    let mut out = String::new();
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    while out.len() < len {
        for b in text.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{seed:016x}"));
    }
    out.truncate(len);
    out
}

fn node_json(node: &Node) -> Value {
    let mut v = json!({
        "database": DATABASE,
        "schema": if node.kind == Kind::Test { format!("{SCHEMA}_dbt_test__audit") } else { SCHEMA.to_string() },
        "name": node.name,
        "resource_type": node.resource_type(),
        "package_name": PROJECT,
        "path": node.path(),
        "original_file_path": node.original_file_path(),
        "unique_id": node.unique_id,
        "fqn": [PROJECT, node.name],
        "alias": node.name,
        "checksum": if node.kind == Kind::Test { json!({"name": "none", "checksum": ""}) } else { json!({"name": "sha256", "checksum": digest(node.raw_code, 64)}) },
        "tags": [],
        "description": "",
        "columns": {},
        "meta": {},
        "group": null,
        "docs": {"show": true, "node_color": null},
        "patch_path": null,
        "build_path": null,
        "unrendered_config": {},
        "created_at": PARSED_AT,
        "config_call_dict": {},
        "unrendered_config_call_dict": {},
        "relation_name": node.relation_name(),
        "raw_code": node.raw_code,
        "doc_blocks": [],
    });
    let mut config = json!({
        "enabled": true,
        "alias": null,
        "schema": null,
        "database": null,
        "tags": [],
        "meta": {},
        "group": null,
        "materialized": node.materialized,
    });
    let extra = match node.kind {
        Kind::Test => {
            config["schema"] = json!("dbt_test__audit");
            json!({"severity": "ERROR", "store_failures": null, "store_failures_as": null, "where": null,
                   "limit": null, "fail_calc": "count(*)", "warn_if": "!= 0", "error_if": "!= 0"})
        }
        Kind::Seed | Kind::Model => json!({
            "incremental_strategy": null, "batch_size": null, "lookback": 1, "begin": null,
            "persist_docs": {}, "post-hook": [], "pre-hook": [], "quoting": {}, "column_types": {},
            "full_refresh": null, "unique_key": null, "on_schema_change": "ignore",
            "on_configuration_change": "apply", "grants": {}, "packages": [],
            "docs": {"show": true, "node_color": null},
            "contract": {"enforced": false, "alias_types": true},
            "event_time": null, "concurrent_batches": null,
        }),
    };
    merge(&mut config, extra);
    match node.kind {
        Kind::Seed => merge(
            &mut config,
            json!({"delimiter": ",", "quote_columns": null}),
        ),
        Kind::Model => merge(&mut config, json!({"access": "protected"})),
        Kind::Test => {}
    }
    v["config"] = config;
    if node.kind == Kind::Seed {
        merge(
            &mut v,
            json!({"root_path": "/tmp/jobs/analytics", "depends_on": {"macros": []}, "defer_relation": null}),
        );
        return v;
    }
    let refs: Vec<Value> = node
        .parents
        .iter()
        .filter_map(|p| NODES.iter().find(|n| n.unique_id == *p))
        .map(|n| json!({"name": n.name, "package": null, "version": null}))
        .collect();
    let sources: Vec<Value> = node
        .parents
        .iter()
        .filter(|p| **p == SOURCE_ID)
        .map(|_| json!(["raw", "orders"]))
        .collect();
    let macros = if node.kind == Kind::Test {
        json!(["macro.dbt.test_not_null", "macro.dbt.get_where_subquery"])
    } else {
        json!([])
    };
    merge(
        &mut v,
        json!({
            "language": "sql",
            "refs": refs,
            "sources": sources,
            "metrics": [],
            "depends_on": {"macros": macros, "nodes": node.parents},
            "compiled_path": format!("target/compiled/{PROJECT}/{}", node.original_file_path()),
            "compiled": true,
            "compiled_code": node.compiled_code,
            "extra_ctes_injected": true,
            "extra_ctes": [],
            "contract": {"enforced": false, "alias_types": true, "checksum": null},
        }),
    );
    match node.kind {
        Kind::Model => merge(
            &mut v,
            json!({"access": "protected", "constraints": [], "version": null, "latest_version": null,
                   "deprecation_date": null, "primary_key": [], "time_spine": null}),
        ),
        _ => merge(
            &mut v,
            json!({
                "column_name": "id",
                "file_key_name": "models.orders",
                "attached_node": "model.analytics.orders",
                "test_metadata": {"name": "not_null", "kwargs": {"column_name": "id", "model": "{{ get_where_subquery(ref('orders')) }}"}, "namespace": null},
            }),
        ),
    }
    v
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

fn source_json() -> Value {
    json!({
        "database": DATABASE,
        "schema": "RAW",
        "name": "orders",
        "resource_type": "source",
        "package_name": PROJECT,
        "path": "models/sources.yml",
        "original_file_path": "models/sources.yml",
        "unique_id": SOURCE_ID,
        "fqn": [PROJECT, "raw", "orders"],
        "source_name": "raw",
        "source_description": "",
        "loader": "fivetran",
        "identifier": "orders",
        "quoting": {"database": null, "schema": null, "identifier": null, "column": null},
        "loaded_at_field": null,
        "freshness": {"warn_after": {"count": null, "period": null}, "error_after": {"count": null, "period": null}, "filter": null},
        "external": null,
        "description": "",
        "columns": {},
        "meta": {},
        "source_meta": {},
        "tags": [],
        "config": {"enabled": true, "event_time": null},
        "patch_path": null,
        "unrendered_config": {},
        "relation_name": format!("{DATABASE}.RAW.orders"),
        "created_at": PARSED_AT,
        "unrendered_database": null,
        "unrendered_schema": null,
        "doc_blocks": [],
    })
}

/// `manifest.json` of a command step of a finished run (see [`command_step`]): the whole project,
/// with `parent_map` and `child_map` built from the nodes' dependencies.
pub fn manifest(run: &RunState, now: Instant, step: Option<usize>) -> Option<Value> {
    let index = command_step(run, now, step)?;
    let nodes: serde_json::Map<String, Value> = NODES
        .iter()
        .map(|n| (n.unique_id.to_string(), node_json(n)))
        .collect();
    let children_of = |id: &str| {
        let mut children: Vec<&str> = NODES
            .iter()
            .filter(|c| c.parents.contains(&id))
            .map(|c| c.unique_id)
            .collect();
        children.sort_unstable();
        json!(children)
    };
    let mut parent_map = serde_json::Map::new();
    let mut child_map = serde_json::Map::new();
    parent_map.insert(SOURCE_ID.into(), json!([]));
    child_map.insert(SOURCE_ID.into(), children_of(SOURCE_ID));
    for n in &NODES {
        let mut parents = n.parents.to_vec();
        parents.sort_unstable();
        parent_map.insert(n.unique_id.into(), json!(parents));
        child_map.insert(n.unique_id.into(), children_of(n.unique_id));
    }
    Some(json!({
        "metadata": {
            "dbt_schema_version": MANIFEST_SCHEMA,
            "dbt_version": DBT_VERSION,
            "generated_at": iso(render::wall(run, run.finish_at)),
            "invocation_id": invocation_id(run, index),
            "env": {},
            "project_name": PROJECT,
            "project_id": "68c4283db8074b12df1660b31c0220a9",
            "user_id": null,
            "send_anonymous_usage_stats": false,
            "adapter_type": "snowflake",
        },
        "nodes": nodes,
        "sources": {SOURCE_ID: source_json()},
        "macros": {},
        "docs": {},
        "exposures": {},
        "metrics": {},
        "groups": {},
        "selectors": {},
        "disabled": {},
        "parent_map": parent_map,
        "child_map": child_map,
        "group_map": {},
        "saved_queries": {},
        "semantic_models": {},
        "unit_tests": {},
    }))
}
