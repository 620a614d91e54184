//! Every operation the simulator serves answers with a body that validates against the response
//! schema dbt Labs documents for it (`shared/dbt-cloud-api/openapi-v{2,3}.yaml`), so the simulator
//! cannot drift from the real API. The validator covers the OpenAPI 3.0 subset these files use:
//! `$ref`, `type`, `nullable`, `properties`, `required`, `items`, `enum`, `allOf`/`oneOf`/`anyOf`.

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

/// Validates `value` against `schema`; returns the violations with their JSON paths.
fn validate(root: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(root, schema);
    if value.is_null() {
        if !schema
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            && schema.get("type").is_some()
        {
            errors.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(root, s, value, path, errors);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let ok = options.iter().any(|s| {
                let mut e = Vec::new();
                validate(root, s, value, path, &mut e);
                e.is_empty()
            });
            if !ok {
                errors.push(format!("{path}: matches none of {key}"));
            }
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(value) {
            errors.push(format!("{path}: {value} not in enum {values:?}"));
        }
    }
    let Some(ty) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    let ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: expected {ty}, got {value}"));
        return;
    }
    if let (Some(obj), "object") = (value.as_object(), ty) {
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
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in obj {
                if let Some(s) = props.get(k) {
                    validate(root, s, v, &format!("{path}.{k}"), errors);
                }
            }
        }
    }
    if let (Some(items), Some(s)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(root, s, item, &format!("{path}[{i}]"), errors);
        }
    }
}

struct Case {
    method: &'static str,
    template: &'static str,
    url: String,
    body: Option<Value>,
}

#[tokio::test]
async fn every_served_operation_matches_its_documented_response_schema() {
    let v2 = spec("v2");
    let v3 = spec("v3");
    let sim = Simulator::start().await.unwrap();
    sim.add_account(1, "Acme");
    sim.add_token(TOKEN, &[1]);
    sim.add_project(1, 10, "analytics");
    sim.add_environment(1, 10, 20, "production");
    let fast = JobBehavior {
        queued: Duration::from_millis(1),
        starting: Duration::from_millis(1),
        running: Duration::from_millis(30),
        outcome: Outcome::FailAtStep(2),
        retry_outcome: Outcome::Success,
    };
    sim.add_job(
        1,
        JobSpec {
            id: 100,
            project_id: 10,
            environment_id: 20,
            name: "nightly".into(),
            steps: vec!["dbt seed".into(), "dbt build".into()],
            behavior: fast.clone(),
        },
    );
    sim.add_job(
        1,
        JobSpec {
            id: 101,
            project_id: 10,
            environment_id: 20,
            name: "slow".into(),
            steps: vec!["dbt build".into()],
            behavior: JobBehavior {
                running: Duration::from_secs(600),
                ..fast
            },
        },
    );
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let send = |method: &'static str, url: String, body: Option<Value>| {
        let http = http.clone();
        async move {
            let req = match method {
                "POST" => http.post(url).json(&body.unwrap_or(Value::Null)),
                _ => http.get(url),
            };
            let resp = req
                .header("Authorization", format!("Token {TOKEN}"))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Make a failed run and an in-flight run to exercise every state.
    let (_, failed) = send("POST", format!("{base}/api/v2/accounts/1/jobs/100/run/"), Some(serde_json::json!({"cause": "conformance", "git_branch": "main", "threads_override": 4}))).await;
    let failed_id = failed["data"]["id"].as_i64().unwrap();
    let (_, slow) = send(
        "POST",
        format!("{base}/api/v2/accounts/1/jobs/101/run/"),
        Some(serde_json::json!({"cause": "slow"})),
    )
    .await;
    let slow_id = slow["data"]["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let a = "/api/v2/accounts/{account_id}";
    let cases = vec![
        Case {
            method: "GET",
            template: "/api/v3/accounts/",
            url: format!("{base}/api/v3/accounts/"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/",
            url: format!("{base}/api/v2/accounts/1/"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v3/accounts/{account_id}/projects/",
            url: format!("{base}/api/v3/accounts/1/projects/?name__icontains=analytics"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v3/accounts/{account_id}/projects/{project_id}/environments/",
            url: format!("{base}/api/v3/accounts/1/projects/10/environments/"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/jobs/",
            url: format!("{base}/api/v2/accounts/1/jobs/?project_id=10"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/jobs/{id}/",
            url: format!("{base}/api/v2/accounts/1/jobs/100/"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/runs/",
            url: format!("{base}/api/v2/accounts/1/runs/?include_related=trigger,job&order_by=-id"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/runs/{id}/",
            url: format!(
                "{base}/api/v2/accounts/1/runs/{failed_id}/?include_related=trigger,job,run_steps"
            ),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/runs/{id}/",
            url: format!("{base}/api/v2/accounts/1/runs/{slow_id}/?include_related=run_steps"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/runs/{run_id}/retry/",
            url: format!("{base}/api/v2/accounts/1/runs/{failed_id}/retry/"),
            body: None,
        },
        Case {
            method: "GET",
            template: "/api/v2/accounts/{account_id}/runs/{run_id}/artifacts/",
            url: format!("{base}/api/v2/accounts/1/runs/{failed_id}/artifacts/"),
            body: None,
        },
        Case {
            method: "POST",
            template: "/api/v2/accounts/{account_id}/runs/{run_id}/retry/",
            url: format!("{base}/api/v2/accounts/1/runs/{failed_id}/retry/"),
            body: None,
        },
        Case {
            method: "POST",
            template: "/api/v2/accounts/{account_id}/runs/{run_id}/cancel/",
            url: format!("{base}/api/v2/accounts/1/runs/{slow_id}/cancel/"),
            body: None,
        },
        Case {
            method: "POST",
            template: "/api/v2/accounts/{account_id}/jobs/{job_id}/rerun/",
            url: format!("{base}/api/v2/accounts/1/jobs/101/rerun/"),
            body: None,
        },
        Case {
            method: "POST",
            template: "/api/v2/accounts/{account_id}/jobs/{job_id}/run/",
            url: format!("{base}/api/v2/accounts/1/jobs/100/run/"),
            body: Some(
                serde_json::json!({"cause": "again", "steps_override": ["dbt build -s orders"]}),
            ),
        },
    ];
    let _ = a;
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in cases {
        let root = if case.template.starts_with("/api/v3") {
            &v3
        } else {
            &v2
        };
        let op = &root["paths"][case.template][case.method.to_lowercase()];
        assert!(
            !op.is_null(),
            "{} {} is not in the OpenAPI file",
            case.method,
            case.template
        );
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{} {} documents no JSON 200 response",
            case.method,
            case.template
        );
        let (status, body) = send(case.method, case.url.clone(), case.body).await;
        assert_eq!(
            status, 200,
            "{} {} → {status}: {body}",
            case.method, case.url
        );
        let mut errors = Vec::new();
        validate(root, schema, &body, "$", &mut errors);
        if !errors.is_empty() {
            failures.push(format!(
                "{} {}:\n  {}",
                case.method,
                case.template,
                errors.join("\n  ")
            ));
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "responses that do not match the documented schema:\n{}",
        failures.join("\n")
    );
    assert_eq!(checked, 15);
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
