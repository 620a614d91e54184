//! Every operation the simulator serves answers with a body that validates against the response
//! schema dbt Labs documents for it (`shared/dbt-cloud-api/openapi-v{2,3}.yaml`), so the simulator
//! cannot drift from the real API. The artifacts, which the OpenAPI files leave without a schema,
//! validate against dbt's published JSON schemas (`tests/schemas/`, see its README).
//!
//! The validator covers the OpenAPI 3.0 subset these files use (`$ref`, `type`, `nullable`,
//! `properties`, `required`, `items`, `enum`, `allOf`/`oneOf`/`anyOf`, `additionalProperties`) and
//! the JSON Schema 2020-12 keywords of dbt's artifact schemas (`type: "null"`, `const`,
//! `propertyNames`, `prefixItems`, `minItems`/`maxItems`, `pattern`);
//! `the_artifact_schemas_use_only_keywords_the_validator_knows` keeps it that way.

use std::time::Duration;

use dbt_cloud_simulator::{JobBehavior, JobSpec, Outcome, Simulator};
use serde_json::Value;

const TOKEN: &str = "dbtc_conformance";

fn spec(version: &str) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/dbt-cloud-api/"
    );
    let text = std::fs::read_to_string(format!("{path}openapi-{version}.yaml"))
        .expect("OpenAPI file readable");
    serde_yaml::from_str(&text).expect("OpenAPI YAML parses")
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            let target = &root["components"]["schemas"][name];
            assert!(!target.is_null(), "unresolvable $ref {r}");
            resolve(root, target)
        }
        None => schema,
    }
}

/// Validates `value` against `schema` (OpenAPI 3.0 semantics: `nullable` defaults to false, formats
/// are ignored); pushes the violations with their JSON paths.
fn validate(root: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(root, schema);
    let nullable = schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if value.is_null() && nullable {
        return;
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(root, s, value, path, errors);
        }
    }
    let matching = |options: &Vec<Value>| {
        options
            .iter()
            .filter(|s| {
                let mut e = Vec::new();
                validate(root, s, value, path, &mut e);
                e.is_empty()
            })
            .count()
    };
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        if matching(options) == 0 {
            errors.push(format!(
                "{path}: matches none of anyOf; closest: {}",
                closest(root, options, value, path)
            ));
        }
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let n = matching(options);
        if n != 1 {
            errors.push(format!(
                "{path}: {value} matches {n} of oneOf (exactly 1 wanted)"
            ));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(value) {
            errors.push(format!("{path}: {value} not in enum {values:?}"));
        }
    }
    if let Some(expected) = schema.get("const") {
        if value != expected {
            errors.push(format!("{path}: {value} is not the constant {expected}"));
        }
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(ty, value, path) {
            let what = if value.is_null() {
                "null but not nullable".to_string()
            } else {
                format!("expected {ty}, got {value}")
            };
            errors.push(format!("{path}: {what}"));
            return;
        }
    }
    validate_children(root, schema, value, path, errors);
}

fn type_matches(ty: &str, value: &Value, path: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("{path}: unknown type {other} in the schema"),
    }
}

/// The keywords about an object's properties, an array's items and a string's pattern.
fn validate_children(
    root: &Value,
    schema: &Value,
    value: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    if let Some(obj) = value.as_object() {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap_or_default();
            if !obj.contains_key(req) {
                errors.push(format!("{path}: missing required property {req}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            let child = format!("{path}.{k}");
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => validate(root, s, v, &child, errors),
                (None, Some(Value::Bool(false))) => {
                    errors.push(format!("{child}: additional property not allowed"))
                }
                (None, Some(extra @ Value::Object(_))) => validate(root, extra, v, &child, errors),
                (None, _) => {}
            }
            if let Some(names) = schema.get("propertyNames") {
                validate(root, names, &Value::from(k.as_str()), &child, errors);
            }
        }
    }
    if let Some(items) = value.as_array() {
        let prefix = schema
            .get("prefixItems")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match (prefix.get(i), schema.get("items")) {
                (Some(s), _) | (None, Some(s)) => validate(root, s, item, &item_path, errors),
                (None, None) => {}
            }
        }
        let len = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if len < min {
                errors.push(format!("{path}: {len} items, at least {min} wanted"));
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if len > max {
                errors.push(format!("{path}: {len} items, at most {max} wanted"));
            }
        }
    }
    if let (Some(text), Some(pattern)) = (
        value.as_str(),
        schema.get("pattern").and_then(Value::as_str),
    ) {
        let re = regex::Regex::new(pattern).expect("valid pattern in the schema");
        if !re.is_match(text) {
            errors.push(format!("{path}: {value} does not match {pattern}"));
        }
    }
}

/// The violations of the option of `options` that `value` comes closest to (fewest violations), for
/// a readable message when none matches (e.g. which property a manifest node lacks).
fn closest(root: &Value, options: &[Value], value: &Value, path: &str) -> String {
    options
        .iter()
        .map(|s| {
            let mut e = Vec::new();
            validate(root, s, value, path, &mut e);
            e
        })
        .min_by_key(Vec::len)
        .map(|e| e.join("; "))
        .unwrap_or_default()
}

/// Keywords `validate` checks, and annotations it may ignore.
const KNOWN_KEYWORDS: [&str; 24] = [
    "$ref",
    "type",
    "nullable",
    "properties",
    "required",
    "items",
    "enum",
    "allOf",
    "oneOf",
    "anyOf",
    "additionalProperties",
    "const",
    "propertyNames",
    "prefixItems",
    "minItems",
    "maxItems",
    "pattern",
    // Annotations: no effect on validity.
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "format",
    "examples",
];

/// The documented schema of an operation's 200 answer.
fn documented<'a>(root: &'a Value, method: &str, template: &str) -> &'a Value {
    let op = &root["paths"][template][method.to_lowercase()];
    assert!(
        !op.is_null(),
        "{method} {template} is not in the OpenAPI file"
    );
    &op["responses"]["200"]["content"]["application/json"]["schema"]
}

/// Neither file documents error bodies for these operations (only `200`), so errors are checked
/// against the envelope every documented answer uses, built from the file's own `ResponseStatus`:
/// `{status: ResponseStatus, data: null}` with `is_success: false`.
fn error_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "required": ["status", "data"],
        "properties": {
            "status": {"allOf": [
                {"$ref": "#/components/schemas/ResponseStatus"},
                {"type": "object", "required": ["code"], "properties": {"is_success": {"enum": [false]}}}
            ]},
            "data": {"nullable": true, "enum": [null]}
        }
    })
}

struct Fixture {
    sim: Simulator,
    http: reqwest::Client,
    base: String,
    failed_id: i64,
    slow_id: i64,
    queued_id: i64,
    success_id: i64,
}

async fn fixture() -> Fixture {
    let sim = Simulator::start().await.unwrap();
    sim.add_account(1, "Acme");
    sim.add_account(2, "Other");
    sim.add_token(TOKEN, &[1]);
    sim.add_token("dbtc_other", &[2]);
    sim.add_project(1, 10, "analytics");
    sim.add_environment(1, 10, 20, "production");
    sim.add_environment(1, 10, 21, "staging");
    let fast = JobBehavior {
        queued: Duration::from_millis(1),
        starting: Duration::from_millis(1),
        running: Duration::from_millis(30),
        outcome: Outcome::FailAtStep(2),
        retry_outcome: Outcome::Success,
    };
    let job = |id: i64, name: &str, steps: &[&str], behavior: JobBehavior| JobSpec {
        id,
        project_id: 10,
        environment_id: 20,
        name: name.into(),
        steps: steps.iter().map(|s| s.to_string()).collect(),
        behavior,
    };
    sim.add_job(
        1,
        job(100, "nightly", &["dbt seed", "dbt build"], fast.clone()),
    );
    let slow = JobBehavior {
        running: Duration::from_secs(600),
        ..fast.clone()
    };
    sim.add_job(1, job(101, "slow", &["dbt build"], slow));
    let ok = JobBehavior {
        outcome: Outcome::Success,
        ..fast
    };
    sim.add_job(1, job(102, "fine", &["dbt build"], ok));
    let mut f = Fixture {
        http: http_client(),
        base: sim.base_url(),
        sim,
        failed_id: 0,
        slow_id: 0,
        queued_id: 0,
        success_id: 0,
    };
    let trigger = |job: i64, body: Value| {
        let f = &f;
        async move {
            let (status, v) = f
                .send(
                    "POST",
                    &format!("/api/v2/accounts/1/jobs/{job}/run/"),
                    Some(body),
                    TOKEN,
                )
                .await;
            assert_eq!(status, 200, "{v}");
            v["data"]["id"].as_i64().unwrap()
        }
    };
    let failed_id = trigger(
        100,
        serde_json::json!({"cause": "conformance", "git_branch": "main", "threads_override": 4}),
    )
    .await;
    let slow_id = trigger(101, serde_json::json!({"cause": "slow"})).await;
    let queued_id = trigger(101, serde_json::json!({"cause": "queued behind slow"})).await;
    let success_id = trigger(102, serde_json::json!({"cause": "fine"})).await;
    let done = async {
        while [failed_id, success_id]
            .iter()
            .any(|id| f.sim.run(1, *id).unwrap()["is_complete"] != true)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("runs finish");
    f.failed_id = failed_id;
    f.slow_id = slow_id;
    f.queued_id = queued_id;
    f.success_id = success_id;
    f
}

impl Fixture {
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self
                .http
                .post(url)
                .json(&body.unwrap_or(serde_json::json!({}))),
            _ => self.http.get(url),
        };
        let resp = req
            .header("Authorization", format!("Token {token}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn every_served_operation_matches_its_documented_response_schema() {
    let v2 = spec("v2");
    let v3 = spec("v3");
    let f = fixture().await;
    // The sparse form (absent values omitted) is what the OpenAPI files describe; the default live
    // form sends undeclared `null`s (see `live_nulls_violate_the_schema_only_by_undeclared_nullability`).
    f.sim.set_live_nulls(false);
    let (failed, slow, queued, success) = (f.failed_id, f.slow_id, f.queued_id, f.success_id);
    // (method, documented path, request path, body). Order matters: the retry and cancel come last.
    let cases: Vec<(&str, &str, String, Option<Value>)> = vec![
        ("GET", "/api/v3/accounts/", "/api/v3/accounts/".into(), None),
        ("GET", "/api/v2/accounts/", "/api/v2/accounts/".into(), None),
        (
            "GET",
            "/api/v2/accounts/{account_id}/",
            "/api/v2/accounts/1/".into(),
            None,
        ),
        (
            "GET",
            "/api/v3/accounts/{account_id}/projects/",
            "/api/v3/accounts/1/projects/?name__icontains=analytics&limit=10".into(),
            None,
        ),
        (
            "GET",
            "/api/v3/accounts/{account_id}/projects/{project_id}/environments/",
            "/api/v3/accounts/1/projects/10/environments/".into(),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/environments/",
            "/api/v2/accounts/1/environments/?project_id=10".into(),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/jobs/",
            "/api/v2/accounts/1/jobs/?project_id=10&order_by=-id".into(),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/jobs/{id}/",
            "/api/v2/accounts/1/jobs/100/".into(),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/",
            "/api/v2/accounts/1/runs/?include_related=trigger,job&order_by=-id".into(),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/",
            "/api/v2/accounts/1/runs/?status__in=[1,2,3]&limit=1".into(),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{id}/",
            format!("/api/v2/accounts/1/runs/{failed}/?include_related=trigger,job,run_steps"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{id}/",
            format!("/api/v2/accounts/1/runs/{success}/?include_related=run_steps"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{id}/",
            format!("/api/v2/accounts/1/runs/{slow}/?include_related=run_steps,trigger"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{id}/",
            format!("/api/v2/accounts/1/runs/{queued}/?include_related=run_steps"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{run_id}/retry/",
            format!("/api/v2/accounts/1/runs/{failed}/retry/"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{run_id}/artifacts/",
            format!("/api/v2/accounts/1/runs/{failed}/artifacts/"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{run_id}/artifacts/",
            format!("/api/v2/accounts/1/runs/{slow}/artifacts/"),
            None,
        ),
        (
            "POST",
            "/api/v2/accounts/{account_id}/runs/{run_id}/retry/",
            format!("/api/v2/accounts/1/runs/{failed}/retry/"),
            None,
        ),
        (
            "POST",
            "/api/v2/accounts/{account_id}/runs/{run_id}/cancel/",
            format!("/api/v2/accounts/1/runs/{queued}/cancel/"),
            None,
        ),
        (
            "POST",
            "/api/v2/accounts/{account_id}/runs/{run_id}/cancel/",
            format!("/api/v2/accounts/1/runs/{slow}/cancel/"),
            None,
        ),
        (
            "POST",
            "/api/v2/accounts/{account_id}/runs/{run_id}/cancel/",
            format!("/api/v2/accounts/1/runs/{success}/cancel/"),
            None,
        ),
        (
            "GET",
            "/api/v2/accounts/{account_id}/runs/{id}/",
            format!("/api/v2/accounts/1/runs/{slow}/?include_related=run_steps,job"),
            None,
        ),
        (
            "POST",
            "/api/v2/accounts/{account_id}/jobs/{job_id}/rerun/",
            "/api/v2/accounts/1/jobs/101/rerun/".into(),
            None,
        ),
        (
            "POST",
            "/api/v2/accounts/{account_id}/jobs/{job_id}/run/",
            "/api/v2/accounts/1/jobs/100/run/".into(),
            Some(
                serde_json::json!({"cause": "again", "git_sha": "abc", "schema_override": "pr_1", "generate_docs_override": false, "timeout_seconds_override": 60, "steps_override": ["dbt build -s orders"]}),
            ),
        ),
    ];
    let mut failures = Vec::new();
    let mut operations = std::collections::BTreeSet::new();
    for (method, template, path, body) in &cases {
        let root = if template.starts_with("/api/v3") {
            &v3
        } else {
            &v2
        };
        let schema = documented(root, method, template);
        assert!(
            !schema.is_null(),
            "{method} {template} documents no JSON 200 response"
        );
        let (status, body) = f.send(method, path, body.clone(), TOKEN).await;
        assert_eq!(status, 200, "{method} {path} → {status}: {body}");
        let mut errors = Vec::new();
        validate(root, schema, &body, "$", &mut errors);
        if !errors.is_empty() {
            failures.push(format!("{method} {path}:\n  {}", errors.join("\n  ")));
        }
        operations.insert((*method, *template));
    }
    assert!(
        failures.is_empty(),
        "responses that do not match the documented schema:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        operations.len(),
        16,
        "every served JSON operation is covered"
    );

    // Artifacts are documented as "A run artifact file" without a schema: raw JSON, no envelope.
    for (template, path) in [
        (
            "/api/v2/accounts/{account_id}/runs/{run_id}/artifacts/{remainder}",
            format!("/api/v2/accounts/1/runs/{failed}/artifacts/run_results.json?step=4"),
        ),
        (
            "/api/v2/accounts/{account_id}/runs/{run_id}/artifacts/{remainder}",
            format!("/api/v2/accounts/1/runs/{failed}/artifacts/manifest.json"),
        ),
        (
            "/api/v2/accounts/{account_id}/jobs/{job_id}/artifacts/{remainder}",
            "/api/v2/accounts/1/jobs/102/artifacts/run_results.json".to_string(),
        ),
    ] {
        let op = &v2["paths"][template]["get"];
        assert!(
            op["responses"]["200"]["content"].is_null(),
            "{template} now documents a schema"
        );
        let (status, body) = f.send("GET", &path, None, TOKEN).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            body.get("metadata").is_some() && body.get("status").is_none(),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn error_answers_use_the_documented_envelope() {
    let v2 = spec("v2");
    let f = fixture().await;
    let schema = error_schema();
    let long = "x".repeat(256);
    let cases: Vec<(u16, &str, String, Option<Value>, &str)> = vec![
        (401, "GET", "/api/v2/accounts/1/runs/".into(), None, "wrong"),
        (403, "GET", "/api/v2/accounts/2/".into(), None, TOKEN),
        (404, "GET", "/api/v2/accounts/1/runs/1/".into(), None, TOKEN),
        (404, "GET", "/api/v2/accounts/1/jobs/9/".into(), None, TOKEN),
        (
            400,
            "POST",
            "/api/v2/accounts/1/jobs/100/run/".into(),
            Some(serde_json::json!({"cause": long})),
            TOKEN,
        ),
        (
            400,
            "POST",
            "/api/v2/accounts/1/jobs/100/run/".into(),
            Some(serde_json::json!({})),
            TOKEN,
        ),
        (
            400,
            "GET",
            "/api/v2/accounts/1/runs/?limit=500".into(),
            None,
            TOKEN,
        ),
        (
            400,
            "POST",
            format!("/api/v2/accounts/1/runs/{}/retry/", f.success_id),
            None,
            TOKEN,
        ),
        (
            404,
            "GET",
            format!(
                "/api/v2/accounts/1/runs/{}/artifacts/run_results.json",
                f.slow_id
            ),
            None,
            TOKEN,
        ),
    ];
    f.sim.inject(dbt_cloud_simulator::Fault::RateLimit {
        count: 1,
        retry_after_secs: 1,
        scope: dbt_cloud_simulator::FaultScope::PathContains("/limited/".into()),
    });
    f.sim.inject(dbt_cloud_simulator::Fault::ServerError {
        count: 1,
        status: 503,
        scope: dbt_cloud_simulator::FaultScope::PathContains("/unavailable/".into()),
    });
    let cases = cases.into_iter().chain([
        (
            429,
            "GET",
            "/api/v2/accounts/1/limited/".to_string(),
            None,
            TOKEN,
        ),
        (
            503,
            "GET",
            "/api/v2/accounts/1/unavailable/".to_string(),
            None,
            TOKEN,
        ),
    ]);
    for (expected, method, path, body, token) in cases {
        let (status, body) = f.send(method, &path, body, token).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        let mut errors = Vec::new();
        validate(&v2, &schema, &body, "$", &mut errors);
        assert!(errors.is_empty(), "{method} {path}: {errors:?}\n{body}");
        assert_eq!(body["status"]["code"], expected);
    }
}

/// The live service sends `null` for absent values (`finished_at` of a running run, …), which the
/// OpenAPI files do not declare nullable: in the simulator's default (live) form the only
/// violations are those.
#[tokio::test]
async fn live_nulls_violate_the_schema_only_by_undeclared_nullability() {
    let v2 = spec("v2");
    let f = fixture().await;
    let schema = documented(&v2, "GET", "/api/v2/accounts/{account_id}/runs/{id}/");
    let (_, body) = f
        .send(
            "GET",
            &format!(
                "/api/v2/accounts/1/runs/{}/?include_related=trigger",
                f.slow_id
            ),
            None,
            TOKEN,
        )
        .await;
    let mut errors = Vec::new();
    validate(&v2, schema, &body, "$", &mut errors);
    assert!(!errors.is_empty(), "nulls are present");
    // `retry_not_supported_reason: null` also falls outside its enum.
    assert!(
        errors
            .iter()
            .all(|e| e.ends_with("null but not nullable") || e.contains(": null not in enum")),
        "{errors:?}"
    );
}

#[test]
fn the_validator_catches_mismatches() {
    let root = spec("v2");
    let run_schema = serde_json::json!({"$ref": "#/components/schemas/RunResponse"});
    let mut errors = Vec::new();
    validate(
        &root,
        &run_schema,
        &serde_json::json!({"id": "not-a-number", "created_at": "x"}),
        "$",
        &mut errors,
    );
    assert!(errors.iter().any(|e| e.contains("$.id")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("updated_at")),
        "{errors:?}"
    );
    let mut errors = Vec::new();
    validate(
        &root,
        &run_schema,
        &serde_json::json!({"id": 1, "created_at": "x", "updated_at": "y", "status": null}),
        "$",
        &mut errors,
    );
    assert!(
        errors.iter().any(|e| e.contains("not nullable")),
        "{errors:?}"
    );
}

#[test]
fn the_validator_handles_additional_properties_and_one_of() {
    let root = serde_json::json!({"components": {"schemas": {}}});
    let closed = serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false});
    let mut errors = Vec::new();
    validate(
        &root,
        &closed,
        &serde_json::json!({"a": 1, "b": 2}),
        "$",
        &mut errors,
    );
    assert_eq!(errors, ["$.b: additional property not allowed"]);
    let map = serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}});
    let mut errors = Vec::new();
    validate(
        &root,
        &map,
        &serde_json::json!({"x": "ok", "y": 3}),
        "$",
        &mut errors,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let one = serde_json::json!({"oneOf": [{"type": "integer"}, {"type": "number"}]});
    let mut errors = Vec::new();
    validate(&root, &one, &serde_json::json!(1), "$", &mut errors);
    assert!(errors[0].contains("matches 2 of oneOf"), "{errors:?}");
    let mut errors = Vec::new();
    validate(&root, &one, &serde_json::json!(1.5), "$", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let nullable = serde_json::json!({"type": "string", "nullable": true});
    let mut errors = Vec::new();
    validate(&root, &nullable, &Value::Null, "$", &mut errors);
    assert!(errors.is_empty());
}

/// One of dbt's published artifact schemas in `tests/schemas/`.
fn artifact_schema(file: &str) -> Value {
    let path = format!("{}/tests/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("schema JSON parses")
}

/// Every keyword used in schema position anywhere in `schema` (property names excluded).
fn keywords(schema: &Value, out: &mut std::collections::BTreeSet<String>) {
    let Some(obj) = schema.as_object() else {
        if let Some(list) = schema.as_array() {
            list.iter().for_each(|s| keywords(s, out));
        }
        return;
    };
    for (k, v) in obj {
        out.insert(k.clone());
        match k.as_str() {
            "properties" | "$defs" | "definitions" => {
                v.as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                    .for_each(|s| keywords(s, out));
            }
            "items"
            | "additionalProperties"
            | "propertyNames"
            | "anyOf"
            | "allOf"
            | "oneOf"
            | "prefixItems" => keywords(v, out),
            _ => {}
        }
    }
}

#[test]
fn the_artifact_schemas_use_only_keywords_the_validator_knows() {
    for file in ["manifest-v12.json", "run-results-v6.json"] {
        let mut used = std::collections::BTreeSet::new();
        keywords(&artifact_schema(file), &mut used);
        let unknown: Vec<_> = used
            .iter()
            .filter(|k| !KNOWN_KEYWORDS.contains(&k.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file}: unsupported keywords {unknown:?}"
        );
    }
}

#[test]
fn the_validator_handles_json_schema_keywords() {
    let root = Value::Null;
    let check = |schema: Value, value: Value| {
        let mut errors = Vec::new();
        validate(&root, &schema, &value, "$", &mut errors);
        errors
    };
    let nullable = serde_json::json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
    assert!(check(nullable.clone(), Value::Null).is_empty());
    assert_eq!(check(nullable, serde_json::json!(1)).len(), 1);
    assert!(check(
        serde_json::json!({"const": "model"}),
        serde_json::json!("model")
    )
    .is_empty());
    assert_eq!(
        check(
            serde_json::json!({"const": "model"}),
            serde_json::json!("seed")
        )
        .len(),
        1
    );
    let pair = serde_json::json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 2, "maxItems": 2});
    assert!(check(pair.clone(), serde_json::json!(["a", 1])).is_empty());
    assert_eq!(check(pair.clone(), serde_json::json!(["a", "b"])).len(), 1);
    assert_eq!(check(pair.clone(), serde_json::json!(["a"])).len(), 1);
    assert_eq!(check(pair, serde_json::json!(["a", 1, 2])).len(), 1);
    let keys = serde_json::json!({"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}});
    assert!(check(keys.clone(), serde_json::json!({"ok": 1})).is_empty());
    assert_eq!(check(keys, serde_json::json!({"Not OK": 1})).len(), 1);
    let severity = serde_json::json!({"type": "string", "pattern": "^([Ww][Aa][Rr][Nn]|[Ee][Rr][Rr][Oo][Rr])$"});
    assert!(check(severity.clone(), serde_json::json!("ERROR")).is_empty());
    assert_eq!(check(severity, serde_json::json!("fatal")).len(), 1);
    // A manifest missing a required top-level key fails, and says which.
    let errors = check(
        artifact_schema("manifest-v12.json"),
        serde_json::json!({"metadata": {}, "nodes": {}}),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("missing required property parent_map")),
        "{errors:?}"
    );
}

/// Every run starts with dbt Cloud's three setup steps (clone, profile, `dbt deps`), so a job's own
/// command `k` is run step `3 + k`; `FailAtStep(k)` counts the job's own commands.
#[tokio::test]
async fn runs_start_with_the_three_setup_steps() {
    let f = fixture().await;
    let (_, failed) = f
        .send(
            "GET",
            &format!(
                "/api/v2/accounts/1/runs/{}/?include_related=run_steps",
                f.failed_id
            ),
            None,
            TOKEN,
        )
        .await;
    let steps = failed["data"]["run_steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "Clone git repository",
            "Create profile from connection Snowflake",
            "Invoke dbt with `dbt deps`",
            "Invoke dbt with `dbt seed`",
            "Invoke dbt with `dbt build`",
        ]
    );
    let indexes: Vec<i64> = steps.iter().map(|s| s["index"].as_i64().unwrap()).collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5]);
    // FailAtStep(2): the job's second command, run step 3 + 2.
    let statuses: Vec<i64> = steps
        .iter()
        .map(|s| s["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [10, 10, 10, 10, 20]);
    let (_, retry) = f
        .send(
            "GET",
            &format!("/api/v2/accounts/1/runs/{}/retry/", f.failed_id),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(retry["data"]["failed_step"], "Invoke dbt with `dbt build`");
    assert_eq!(retry["data"]["skipped_steps"], serde_json::json!([]));
    // `dbt deps` writes no run_results.json; the job's commands do.
    for (step, expected) in [(3, 404), (4, 200), (5, 200), (6, 404)] {
        let (status, _) = f
            .send(
                "GET",
                &format!(
                    "/api/v2/accounts/1/runs/{}/artifacts/run_results.json?step={step}",
                    f.failed_id
                ),
                None,
                TOKEN,
            )
            .await;
        assert_eq!(status, expected, "step {step}");
    }
    // A native retry runs the setup steps again, then the failed command.
    let (_, retried) = f
        .send(
            "POST",
            &format!("/api/v2/accounts/1/runs/{}/retry/", f.failed_id),
            None,
            TOKEN,
        )
        .await;
    let id = retried["data"]["id"].as_i64().unwrap();
    let done = async {
        loop {
            let run = f.sim.run(1, id).unwrap();
            if run["is_complete"] == true {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let run = tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("retry finishes");
    let names: Vec<&str> = run["run_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Clone git repository",
            "Create profile from connection Snowflake",
            "Invoke dbt with `dbt deps`",
            "Invoke dbt with `dbt build`",
        ]
    );
}

/// By default the simulator answers like the live service: relations that `include_related` does
/// not ask for are `null`, and `run_steps` is `[]`; the sparse form omits them.
#[tokio::test]
async fn unrequested_relations_are_null_and_run_steps_empty_by_default() {
    let f = fixture().await;
    let one = format!("/api/v2/accounts/1/runs/{}/", f.success_id);
    let list = "/api/v2/accounts/1/runs/?include_related=trigger,run_steps".to_string();
    let (_, body) = f.send("GET", &one, None, TOKEN).await;
    let run = &body["data"];
    assert_eq!(run["run_steps"], serde_json::json!([]), "{run}");
    for key in ["trigger", "job", "environment"] {
        assert!(run.get(key).is_some_and(Value::is_null), "{key}: {run}");
    }
    // Lists never embed steps, even when asked.
    let (_, body) = f.send("GET", &list, None, TOKEN).await;
    for run in body["data"].as_array().unwrap() {
        assert_eq!(run["run_steps"], serde_json::json!([]), "{run}");
        assert!(run["trigger"].is_object(), "{run}");
    }
    let (_, body) = f
        .send(
            "GET",
            &format!("{one}?include_related=run_steps"),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(body["data"]["run_steps"].as_array().unwrap().len(), 4);

    f.sim.set_live_nulls(false);
    let (_, body) = f.send("GET", &one, None, TOKEN).await;
    for key in [
        "run_steps",
        "trigger",
        "job",
        "environment",
        "retrying_run_id",
    ] {
        assert!(body["data"].get(key).is_none(), "sparse form: {key}");
    }
    let (_, body) = f.send("GET", &list, None, TOKEN).await;
    assert!(body["data"][0].get("run_steps").is_none());
}

/// `manifest.json` and `run_results.json` validate against dbt's published schemas (manifest v12,
/// run_results v6) and agree with each other: every result is a manifest node, and `parent_map` /
/// `child_map` mirror the nodes' `depends_on`.
#[tokio::test]
async fn artifacts_match_dbts_published_schemas() {
    let manifest_schema = artifact_schema("manifest-v12.json");
    let results_schema = artifact_schema("run-results-v6.json");
    let f = fixture().await;
    let run_path = |id: i64, file: &str| format!("/api/v2/accounts/1/runs/{id}/artifacts/{file}");
    let documents = [
        (f.failed_id, "run_results.json", None),
        (f.failed_id, "run_results.json", Some(4)),
        (f.failed_id, "run_results.json", Some(5)),
        (f.success_id, "run_results.json", None),
        (f.failed_id, "manifest.json", None),
        (f.success_id, "manifest.json", Some(4)),
    ];
    let mut failures = Vec::new();
    let mut manifest = Value::Null;
    let mut results = Vec::new();
    for (id, file, step) in documents {
        let path = match step {
            Some(s) => format!("{}?step={s}", run_path(id, file)),
            None => run_path(id, file),
        };
        let (status, doc) = f.send("GET", &path, None, TOKEN).await;
        assert_eq!(status, 200, "{path}: {doc}");
        let schema = if file == "manifest.json" {
            manifest = doc.clone();
            &manifest_schema
        } else {
            results.push(doc.clone());
            &results_schema
        };
        assert_eq!(
            doc["metadata"]["dbt_schema_version"], schema["$id"],
            "{path}"
        );
        let mut errors = Vec::new();
        validate(schema, schema, &doc, "$", &mut errors);
        if !errors.is_empty() {
            failures.push(format!("{path}:\n  {}", errors.join("\n  ")));
        }
    }
    let job_path = "/api/v2/accounts/1/jobs/102/artifacts/manifest.json";
    let (status, job_doc) = f.send("GET", job_path, None, TOKEN).await;
    assert_eq!(status, 200, "{job_path}: {job_doc}");
    let mut errors = Vec::new();
    validate(
        &manifest_schema,
        &manifest_schema,
        &job_doc,
        "$",
        &mut errors,
    );
    if !errors.is_empty() {
        failures.push(format!("{job_path}:\n  {}", errors.join("\n  ")));
    }
    assert!(
        failures.is_empty(),
        "artifacts that do not match dbt's schemas:\n{}",
        failures.join("\n")
    );

    // What lineage-aware clients read.
    assert_eq!(manifest["metadata"]["adapter_type"], "snowflake");
    assert_eq!(manifest["metadata"]["project_name"], "analytics");
    let nodes = manifest["nodes"].as_object().unwrap();
    let sources = manifest["sources"].as_object().unwrap();
    for doc in &results {
        assert!(doc["elapsed_time"].is_number() && doc["args"]["which"].is_string());
        for r in doc["results"].as_array().unwrap() {
            let id = r["unique_id"].as_str().unwrap();
            assert!(nodes.contains_key(id), "{id} is not a manifest node");
            if r["status"] != "skipped" {
                assert!(!r["timing"].as_array().unwrap().is_empty(), "{r}");
            }
        }
    }
    let parent_map = manifest["parent_map"].as_object().unwrap();
    let child_map = manifest["child_map"].as_object().unwrap();
    for (id, node) in nodes {
        // Seeds depend on macros only (`depends_on` without `nodes`).
        let parents = node["depends_on"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // dbt sorts the maps' lists.
        let mut sorted = parents.clone();
        sorted.sort_by_key(|p| p.as_str().unwrap().to_string());
        assert_eq!(&parent_map[id], &Value::from(sorted), "{id}");
        for parent in &parents {
            let parent = parent.as_str().unwrap();
            assert!(
                nodes.contains_key(parent) || sources.contains_key(parent),
                "{parent}"
            );
            assert!(
                child_map[parent]
                    .as_array()
                    .unwrap()
                    .contains(&Value::from(id.as_str())),
                "{parent} → {id}"
            );
        }
    }
    for id in sources.keys() {
        assert_eq!(parent_map[id], serde_json::json!([]), "{id}");
    }
    assert!(
        nodes.values().any(|n| n["depends_on"]["nodes"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| sources.contains_key(p.as_str().unwrap())))),
        "some model reads a source"
    );
}

/// A plain-http client. In a workspace build reqwest is compiled with the operator's
/// `rustls-no-provider` feature, which needs a process-wide crypto provider even for http.
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
