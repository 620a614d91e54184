//! Properties of the production packaging that matter: the CRD files against what the Rust types
//! generate, deploy/ (rendered with `kubectl kustomize`), the Helm chart's static parts, examples/
//! against the CRD schemas, the Dockerfile. .ci/check-manifests adds what needs Helm or Kubernetes'
//! own JSON schemas: the Helm render, and validation of the rendered manifests and examples with
//! `kubernetes-validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "e2e/harness.rs"]
mod harness;

use clap::CommandFactory;
use dbt_cloud_operator::cli::run::RunArgs;
use dbt_cloud_operator::cli::{Cli, Command as CliCommand};
use serde_yaml::Value;

const OPERATOR_NAMESPACE: &str = "dbt-cloud-operator";
const SERVICE_ACCOUNT: &str = "dbt-cloud-operator";
const IMAGE_REPOSITORY: &str = "ghcr.io/dbt-cloud-operator/dbt-cloud-operator";
const CHART: &str = "deploy/helm/dbt-cloud-operator";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every non-empty YAML document of a text.
fn docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{what}: bad YAML: {e}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn file_docs(path: impl AsRef<Path>) -> Vec<Value> {
    let path = path.as_ref();
    docs(&read(path), &path.display().to_string())
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root()).unwrap().to_path_buf();
        if path.is_dir() {
            yaml_files(&rel, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(rel);
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn kind(v: &Value) -> &str {
    s(&v["kind"])
}

fn name(v: &Value) -> &str {
    s(&v["metadata"]["name"])
}

fn namespace(v: &Value) -> Option<&str> {
    v["metadata"]["namespace"].as_str()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|seq| seq.iter().map(|x| s(x).to_string()).collect())
        .unwrap_or_default()
}

/// `kubectl kustomize DIR`, with the kubectl of the test control plane (see tests/e2e/harness.rs).
fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new(harness::kubectl_bin())
        .args(["kustomize", dir])
        .current_dir(root())
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    docs(
        &String::from_utf8(out.stdout).unwrap(),
        &format!("kustomize {dir}"),
    )
}

/// The default install, as `kubectl kustomize deploy` renders it.
fn base() -> Vec<Value> {
    kustomize("deploy")
}

fn namespaced_overlay() -> Vec<Value> {
    kustomize("deploy/overlays/namespaced")
}

fn one<'a>(objs: &'a [Value], k: &str) -> &'a Value {
    let found: Vec<_> = objs.iter().filter(|o| kind(o) == k).collect();
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The crds/ files (the generated source of truth) by file name.
fn crd_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root().join("crds")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            out.insert(file, std::fs::read_to_string(&path).unwrap());
        }
    }
    assert!(out.len() >= 3, "crds/ has {} files", out.len());
    out
}

fn crds() -> Vec<Value> {
    crd_files()
        .iter()
        .flat_map(|(f, text)| docs(text, f))
        .collect()
}

/// A YAML value with every number as f64, for comparing meaning rather than spelling.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN).into()),
        Value::Sequence(items) => Value::Sequence(items.iter().map(normalized).collect()),
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| (normalized(k), normalized(v)))
                .collect(),
        ),
        Value::Tagged(t) => normalized(&t.value),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// CRDs
// ---------------------------------------------------------------------------------------------

/// Where the CRD files live: `crds/` (applied by hand and by the tests), and the copies that
/// kustomize and Helm need inside their own directories. One generator writes all three.
const CRD_DIRS: [&str; 3] = ["crds", "deploy/crds", "deploy/helm/dbt-cloud-operator/crds"];
const REGENERATE_CRDS: &str = "cargo run -- crds --out-dir crds --out-dir deploy/crds \
     --out-dir deploy/helm/dbt-cloud-operator/crds (or .ci/check-manifests --sync)";

/// The one check of the CRD files: every copy is exactly what the Rust types generate, no copy has
/// a stale extra file, kustomize lists and installs every CRD unchanged.
#[test]
fn every_crd_file_is_what_the_rust_types_generate_and_is_installed() {
    let generated = dbt_cloud_operator::crd::files();
    assert_eq!(generated.len(), 4, "four kinds");
    for dir in CRD_DIRS {
        for (file, yaml) in &generated {
            let path = format!("{dir}/{file}");
            let on_disk = std::fs::read_to_string(root().join(&path))
                .unwrap_or_else(|e| panic!("{path}: {e}; run {REGENERATE_CRDS}"));
            assert!(
                on_disk == *yaml,
                "{path} is not what the Rust types generate: run {REGENERATE_CRDS}"
            );
        }
        let mut files = Vec::new();
        yaml_files(Path::new(dir), &mut files);
        for f in files {
            let file = f.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                file == "kustomization.yaml" || generated.iter().any(|(g, _)| *g == file),
                "{} is no CRD the Rust types generate: remove it",
                f.display()
            );
        }
    }
    let listed = strings(&file_docs("deploy/crds/kustomization.yaml")[0]["resources"]);
    let want: Vec<String> = generated.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(listed, want, "deploy/crds/kustomization.yaml resources");
    let rendered = base();
    for (file, yaml) in &generated {
        for crd in docs(yaml, file) {
            let installed = rendered
                .iter()
                .find(|o| kind(o) == "CustomResourceDefinition" && name(o) == name(&crd))
                .unwrap_or_else(|| panic!("deploy/ does not install CRD {}", name(&crd)));
            // kustomize may respell numbers (`1` as `1.0`): compare values, not spellings.
            assert!(
                normalized(installed) == normalized(&crd),
                "CRD {} changed on the way through kustomize",
                name(&crd)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment
// ---------------------------------------------------------------------------------------------

/// The `run` arguments the Deployment's args and env amount to, parsed by the real CLI: every env
/// var must be one of its flags' variables, every value must parse.
fn parse_run_args(deployment: &Value) -> RunArgs {
    let cmd = Cli::command();
    let run = cmd
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("run subcommand");
    let env_to_flag: BTreeMap<String, String> = run
        .get_arguments()
        .filter_map(|a| {
            Some((
                a.get_env()?.to_string_lossy().to_string(),
                a.get_long()?.to_string(),
            ))
        })
        .collect();
    let c = container(deployment);
    let mut argv = vec!["dbt-cloud-operator".to_string()];
    argv.extend(strings(&c["args"]));
    for e in c["env"].as_sequence().expect("env") {
        let var = s(&e["name"]);
        let flag = env_to_flag.get(var).unwrap_or_else(|| {
            panic!(
                "env {var} is not a variable of `dbt-cloud-operator run` (known: {:?})",
                env_to_flag.keys().collect::<Vec<_>>()
            )
        });
        let value = if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => "dbt-cloud-operator-7d9f-abcde".to_string(),
                "metadata.namespace" => OPERATOR_NAMESPACE.to_string(),
                other => panic!("unexpected fieldRef {other}"),
            }
        } else {
            s(&e["value"]).to_string()
        };
        argv.push(format!("--{flag}={value}"));
    }
    let cli = <Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the CLI rejects {argv:?}: {e}"));
    match cli.command {
        CliCommand::Run(args) => *args,
        other => panic!("{argv:?} is not `run`: {other:?}"),
    }
}

fn env_of(deployment: &Value) -> BTreeMap<String, Value> {
    container(deployment)["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| (s(&e["name"]).to_string(), e.clone()))
        .collect()
}

fn deployments() -> Vec<(String, Vec<Value>)> {
    vec![
        ("deploy".to_string(), base()),
        (
            "deploy/overlays/namespaced".to_string(),
            namespaced_overlay(),
        ),
    ]
}

#[test]
fn deployment_is_hardened() {
    for (what, objs) in deployments() {
        let d = one(&objs, "Deployment");
        let pod = &d["spec"]["template"]["spec"];
        let c = container(d);
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{what}");
        assert_eq!(sc["runAsUser"].as_i64(), Some(65532), "{what}");
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{what}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}"
        );
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{what}: adds capabilities"
        );
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{what}");
        assert_eq!(
            s(&sc["seccompProfile"]["type"]),
            "RuntimeDefault",
            "{what}: container seccompProfile"
        );
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true), "{what}");
        assert_eq!(psc["runAsUser"].as_i64(), Some(65532), "{what}");
        assert_eq!(
            s(&psc["seccompProfile"]["type"]),
            "RuntimeDefault",
            "{what}"
        );
        assert!(
            pod["hostNetwork"].is_null() && pod["hostPID"].is_null(),
            "{what}"
        );

        // Only the operator pod mounts the token; the ServiceAccount does not by default.
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(true),
            "{what}"
        );
        let sa = one(&objs, "ServiceAccount");
        assert_eq!(
            sa["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{what}"
        );
        assert_eq!(s(&pod["serviceAccountName"]), name(sa), "{what}");
        assert_eq!(name(sa), SERVICE_ACCOUNT);
        assert_eq!(namespace(sa), Some(OPERATOR_NAMESPACE));

        assert_eq!(namespace(d), Some(OPERATOR_NAMESPACE), "{what}");
        assert_eq!(d["spec"]["replicas"].as_i64(), Some(2), "{what}");
        assert_eq!(
            strings(&c["args"]),
            ["run", "--leader-elect"],
            "{what}: args"
        );
        let res = &c["resources"];
        assert_eq!(s(&res["requests"]["cpu"]), "50m", "{what}");
        assert_eq!(s(&res["requests"]["memory"]), "64Mi", "{what}");
        assert_eq!(s(&res["limits"]["memory"]), "256Mi", "{what}");
        assert!(
            res["limits"]["cpu"].is_null(),
            "{what}: no CPU limit (throttling)"
        );
        assert_eq!(
            s(&c["image"]),
            format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
            "{what}: image tag must be the crate version"
        );
    }
}

#[test]
fn deployment_env_and_args_are_flags_the_binary_has() {
    for (what, objs) in deployments() {
        let d = one(&objs, "Deployment");
        let args = parse_run_args(d);
        assert!(args.leader_elect, "{what}: leader election");
        let env = env_of(d);
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            assert_eq!(
                s(&env[var]["valueFrom"]["fieldRef"]["fieldPath"]),
                field,
                "{what}: {var}"
            );
        }
        assert_eq!(s(&env["LOG_FORMAT"]["value"]), "json", "{what}");
        assert_eq!(
            args.pod_name.as_deref(),
            Some("dbt-cloud-operator-7d9f-abcde")
        );
        assert_eq!(args.namespace.as_deref(), Some(OPERATOR_NAMESPACE));

        // Kubernetes waits longer than the operator's own shutdown grace, so in-flight reconciles
        // finish and the Lease is released before SIGKILL.
        let termination = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert_eq!(termination, 30, "{what}");
        assert!(
            termination >= args.shutdown_grace_seconds + 5,
            "{what}: terminationGracePeriodSeconds {termination} leaves no margin over --shutdown-grace-seconds {}",
            args.shutdown_grace_seconds
        );
        assert_eq!(args.shutdown_grace_seconds, 20, "{what}");
    }
}

#[test]
fn probes_and_service_use_the_http_port() {
    let probes_rs = read("src/probes.rs");
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(
            probes_rs.contains(&format!(".route(\"{path}\"")),
            "src/probes.rs serves no {path}"
        );
    }
    for (what, objs) in deployments() {
        let d = one(&objs, "Deployment");
        let args = parse_run_args(d);
        let c = container(d);
        let ports = c["ports"].as_sequence().expect("ports");
        let http = ports
            .iter()
            .find(|p| s(&p["name"]) == "http")
            .unwrap_or_else(|| panic!("{what}: no port named http"));
        assert_eq!(
            http["containerPort"].as_u64(),
            Some(u64::from(args.http_addr.port())),
            "{what}: the http port must be where the binary listens"
        );
        assert_eq!(http["containerPort"].as_u64(), Some(8080));
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(s(&get["path"]), path, "{what}: {probe}");
            assert!(
                s(&get["port"]) == "http" || get["port"].as_u64() == Some(8080),
                "{what}: {probe} port"
            );
        }

        let svc = one(&objs, "Service");
        let sp = &svc["spec"]["ports"][0];
        assert_eq!(s(&sp["name"]), "http", "{what}");
        assert_eq!(sp["port"].as_u64(), Some(8080), "{what}");
        assert_eq!(s(&sp["targetPort"]), "http", "{what}");
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        for (selector, owner) in [
            (&svc["spec"]["selector"], "Service"),
            (&d["spec"]["selector"]["matchLabels"], "Deployment"),
            (
                &one(&objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                "PodDisruptionBudget",
            ),
        ] {
            let selector = selector.as_mapping().expect("selector");
            assert!(!selector.is_empty(), "{what}: {owner} selector is empty");
            for (k, v) in selector {
                assert_eq!(
                    &labels[k.as_str().unwrap()],
                    v,
                    "{what}: {owner} selector {k:?} does not match the pod"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------------------------

/// One permission: (role kind, role namespace, apiGroup, resource, verb, resourceName).
type Grant = (String, String, String, String, String, String);

fn grants(objs: &[Value]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for role in objs
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        for rule in role["rules"].as_sequence().expect("rules") {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|x| x.contains('*')),
                    "{} {} uses a wildcard in {field}",
                    kind(role),
                    name(role)
                );
            }
            assert!(
                rule["nonResourceURLs"].is_null(),
                "{} grants nonResourceURLs",
                name(role)
            );
            let mut names = strings(&rule["resourceNames"]);
            if names.is_empty() {
                names.push(String::new());
            }
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        for n in &names {
                            out.insert((
                                kind(role).to_string(),
                                namespace(role).unwrap_or("").to_string(),
                                g.clone(),
                                r.clone(),
                                v.clone(),
                                n.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn expand(kind: &str, ns: &str, group: &str, resources: &[&str], verbs: &[&str]) -> Vec<Grant> {
    expand_named(kind, ns, group, resources, verbs, "")
}

fn expand_named(
    kind: &str,
    ns: &str,
    group: &str,
    resources: &[&str],
    verbs: &[&str],
    resource_name: &str,
) -> Vec<Grant> {
    let mut out = Vec::new();
    for r in resources {
        for v in verbs {
            out.push((
                kind.into(),
                ns.into(),
                group.into(),
                (*r).into(),
                (*v).into(),
                resource_name.into(),
            ));
        }
    }
    out
}

/// What the controllers and leader election use (src/controller/*.rs, src/leader.rs), and nothing
/// more; Secrets are added per variant.
fn expected_operator_grants(lease_name: &str) -> BTreeSet<Grant> {
    let kinds = [
        "dbtcloudjobruns",
        "dbtcloudcredentials",
        "clusterdbtcloudcredentials",
    ];
    let status: Vec<String> = kinds.iter().map(|k| format!("{k}/status")).collect();
    let finalizers: Vec<String> = kinds.iter().map(|k| format!("{k}/finalizers")).collect();
    let status: Vec<&str> = status.iter().map(String::as_str).collect();
    let finalizers: Vec<&str> = finalizers.iter().map(String::as_str).collect();
    let cr = "ClusterRole";
    let mut out: BTreeSet<Grant> = BTreeSet::new();
    out.extend(expand(
        cr,
        "",
        "dbtcloud.io",
        &kinds,
        &["get", "list", "watch", "patch", "update"],
    ));
    out.extend(expand(
        cr,
        "",
        "dbtcloud.io",
        &["dbtcloudjobruns"],
        &["create", "delete"],
    ));
    // DbtCloudJobTrigger (src/controller/job_trigger.rs): watched, status written, and its runs
    // carry an owner reference with blockOwnerDeletion (the finalizers subresource).
    out.extend(expand(
        cr,
        "",
        "dbtcloud.io",
        &["dbtcloudjobtriggers"],
        &["get", "list", "watch", "patch"],
    ));
    out.extend(expand(
        cr,
        "",
        "dbtcloud.io",
        &["dbtcloudjobtriggers/status"],
        &["get", "patch"],
    ));
    out.extend(expand(
        cr,
        "",
        "dbtcloud.io",
        &["dbtcloudjobtriggers/finalizers"],
        &["update"],
    ));
    out.extend(expand(
        cr,
        "",
        "dbtcloud.io",
        &status,
        &["get", "patch", "update"],
    ));
    out.extend(expand(cr, "", "dbtcloud.io", &finalizers, &["update"]));
    out.extend(expand(
        cr,
        "",
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
    ));
    out.extend(expand(cr, "", "", &["events"], &["create", "patch"]));
    out.extend(expand(cr, "", "", &["namespaces"], &["get"]));
    out.extend(expand(
        "Role",
        OPERATOR_NAMESPACE,
        "coordination.k8s.io",
        &["leases"],
        &["create"],
    ));
    out.extend(expand_named(
        "Role",
        OPERATOR_NAMESPACE,
        "coordination.k8s.io",
        &["leases"],
        &["get", "update", "patch"],
        lease_name,
    ));
    out
}

/// Every binding binds an existing role to the operator's ServiceAccount only.
fn check_bindings(what: &str, objs: &[Value]) {
    for b in objs
        .iter()
        .filter(|o| matches!(kind(o), "RoleBinding" | "ClusterRoleBinding"))
    {
        let subjects = b["subjects"].as_sequence().expect("subjects");
        assert_eq!(subjects.len(), 1, "{what}: {}", name(b));
        assert_eq!(s(&subjects[0]["kind"]), "ServiceAccount");
        assert_eq!(s(&subjects[0]["name"]), SERVICE_ACCOUNT, "{what}");
        assert_eq!(s(&subjects[0]["namespace"]), OPERATOR_NAMESPACE, "{what}");
        let role_kind = s(&b["roleRef"]["kind"]);
        let role_ns = if role_kind == "Role" {
            namespace(b)
        } else {
            None
        };
        assert!(
            objs.iter().any(|o| kind(o) == role_kind
                && name(o) == s(&b["roleRef"]["name"])
                && namespace(o) == role_ns),
            "{what}: {} {} refers to a missing {role_kind} {}",
            kind(b),
            name(b),
            s(&b["roleRef"]["name"])
        );
    }
    // And every role is bound (an unbound role is dead weight or a forgotten binding).
    for r in objs
        .iter()
        .filter(|o| matches!(kind(o), "Role" | "ClusterRole"))
    {
        assert!(
            objs.iter()
                .any(|b| matches!(kind(b), "RoleBinding" | "ClusterRoleBinding")
                    && s(&b["roleRef"]["kind"]) == kind(r)
                    && s(&b["roleRef"]["name"]) == name(r)
                    && (kind(r) == "ClusterRole" || namespace(b) == namespace(r))),
            "{what}: {} {} is not bound",
            kind(r),
            name(r)
        );
    }
}

fn secret_grants(g: &BTreeSet<Grant>) -> BTreeSet<Grant> {
    g.iter().filter(|x| x.3 == "secrets").cloned().collect()
}

#[test]
fn rbac_is_least_privilege() {
    let objs = base();
    let args = parse_run_args(one(&objs, "Deployment"));
    let got = grants(&objs);
    let secrets = secret_grants(&got);
    // The default install: Secret `get`, cluster-wide, by a ClusterRole of its own.
    assert_eq!(
        secrets,
        expand("ClusterRole", "", "", &["secrets"], &["get"])
            .into_iter()
            .collect(),
        "Secrets: get only (list/watch would expose every Secret)"
    );
    let secret_roles: Vec<_> = objs
        .iter()
        .filter(|o| kind(o) == "ClusterRole" && o["rules"].as_sequence().is_some())
        .filter(|o| {
            grants(std::slice::from_ref(o))
                .iter()
                .any(|g| g.3 == "secrets")
        })
        .collect();
    assert_eq!(secret_roles.len(), 1);
    assert_eq!(
        grants(&[secret_roles[0].clone()]).len(),
        1,
        "the Secret ClusterRole grants only Secret get, so the namespaced variant can drop it"
    );
    let rest: BTreeSet<Grant> = got.difference(&secrets).cloned().collect();
    let want = expected_operator_grants(&args.lease_name);
    assert_eq!(
        rest.difference(&want).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "granted but not needed"
    );
    assert_eq!(
        want.difference(&rest).collect::<Vec<_>>(),
        Vec::<&Grant>::new(),
        "needed but not granted"
    );
    assert_eq!(args.lease_name, "dbt-cloud-operator-leader");
    check_bindings("deploy", &objs);
}

#[test]
fn namespaced_overlay_confines_secrets_to_the_watched_namespaces() {
    let objs = namespaced_overlay();
    let d = one(&objs, "Deployment");
    let args = parse_run_args(d);
    let watched: BTreeSet<String> = args.watch_namespaces.iter().cloned().collect();
    assert!(
        !watched.is_empty(),
        "WATCH_NAMESPACES must be set in the namespaced variant"
    );
    let got = grants(&objs);
    let secrets = secret_grants(&got);
    let mut want_secrets: BTreeSet<Grant> = BTreeSet::new();
    for ns in watched
        .iter()
        .map(String::as_str)
        .chain([OPERATOR_NAMESPACE])
    {
        want_secrets.extend(expand("Role", ns, "", &["secrets"], &["get"]));
    }
    assert_eq!(
        secrets, want_secrets,
        "Secret get exactly in WATCH_NAMESPACES and the operator's namespace, never cluster-wide"
    );
    let rest: BTreeSet<Grant> = got.difference(&secrets).cloned().collect();
    assert_eq!(rest, expected_operator_grants(&args.lease_name));
    check_bindings("deploy/overlays/namespaced", &objs);
}

#[test]
fn helm_chart_static_parts_match_the_kustomize_install() {
    // The templates are Go templates (rendered and checked by .ci/check-manifests); their env
    // names, probe paths and RBAC verbs can still be checked as text.
    let cmd = Cli::command();
    let run = cmd
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .unwrap();
    let envs: BTreeSet<String> = run
        .get_arguments()
        .filter_map(|a| Some(a.get_env()?.to_string_lossy().to_string()))
        .collect();
    let deployment = read(format!("{CHART}/templates/deployment.yaml"));
    let mut seen = 0;
    for line in deployment.lines() {
        let t = line.trim();
        if let Some(var) = t.strip_prefix("- name: ") {
            if var.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                assert!(envs.contains(var), "chart sets {var}, not a flag of `run`");
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "found only {seen} env vars in the chart");
    for needle in [
        "path: /healthz",
        "path: /readyz",
        "port: http",
        "- --leader-elect",
        "automountServiceAccountToken: true",
    ] {
        assert!(
            deployment.contains(needle),
            "chart deployment lacks {needle}"
        );
    }
    let secret_reader = read(format!("{CHART}/templates/secret-reader.yaml"));
    assert_eq!(
        secret_reader.matches("resources: [\"secrets\"]").count(),
        2,
        "a ClusterRole (all namespaces) and a Role (watchNamespaces)"
    );
    for line in secret_reader.lines().filter(|l| l.contains("verbs:")) {
        assert_eq!(line.trim(), "verbs: [\"get\"]", "chart Secret verbs");
    }
    let chart = &file_docs(format!("{CHART}/Chart.yaml"))[0];
    assert_eq!(s(&chart["appVersion"]), env!("CARGO_PKG_VERSION"));
    let values = &file_docs(format!("{CHART}/values.yaml"))[0];
    assert_eq!(s(&values["image"]["repository"]), IMAGE_REPOSITORY);
    assert_eq!(values["replicas"].as_i64(), Some(2));
    assert_eq!(
        s(&values["leaderElection"]["leaseName"]),
        "dbt-cloud-operator-leader"
    );
    // Every value has a schema entry (values.schema.json refuses unknown keys).
    let schema: serde_json::Value =
        serde_json::from_str(&read(format!("{CHART}/values.schema.json"))).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for (k, v) in values.as_mapping().unwrap() {
        let k = k.as_str().unwrap();
        let p = props
            .get(k)
            .unwrap_or_else(|| panic!("values.yaml key {k} not in values.schema.json"));
        if let (Some(inner), Some(sub)) = (v.as_mapping(), p["properties"].as_object()) {
            for ik in inner.keys() {
                assert!(
                    sub.contains_key(ik.as_str().unwrap()),
                    "values.yaml {k}.{ik:?} not in values.schema.json"
                );
            }
        }
    }
    let sm = read(format!("{CHART}/templates/servicemonitor.yaml"));
    assert!(sm.starts_with("{{- if .Values.serviceMonitor.enabled }}"));
    assert!(sm.contains("kind: ServiceMonitor") && sm.contains("path: /metrics"));
}

#[test]
fn every_yaml_under_deploy_parses_and_every_base_file_is_installed() {
    let mut files = Vec::new();
    yaml_files(Path::new("deploy"), &mut files);
    let templates = Path::new(CHART).join("templates");
    let mut parsed = 0;
    for f in &files {
        if f.starts_with(&templates) {
            continue;
        }
        let objs = file_docs(f);
        assert!(!objs.is_empty(), "{} is empty", f.display());
        parsed += 1;
        if f.starts_with(Path::new(CHART)) && !f.starts_with(Path::new(CHART).join("crds")) {
            continue; // Chart.yaml, values.yaml
        }
        for o in &objs {
            assert!(
                !s(&o["apiVersion"]).is_empty() && !kind(o).is_empty(),
                "{}: a document without apiVersion/kind",
                f.display()
            );
        }
    }
    assert!(parsed >= 15, "parsed only {parsed} files");

    // A file in deploy/base that the kustomization forgets would silently not be installed.
    {
        let rendered = kustomize("deploy");
        let mut base_files = Vec::new();
        yaml_files(Path::new("deploy/base"), &mut base_files);
        for f in base_files
            .iter()
            .filter(|f| !f.ends_with("kustomization.yaml"))
        {
            for o in file_docs(f) {
                assert!(
                    rendered
                        .iter()
                        .any(|r| kind(r) == kind(&o) && name(r) == name(&o)),
                    "{} {} of {} is not in `kubectl kustomize deploy`",
                    kind(&o),
                    name(&o),
                    f.display()
                );
            }
        }
        assert_eq!(
            one(&rendered, "Namespace")["metadata"]["name"],
            OPERATOR_NAMESPACE
        );
        for o in &rendered {
            let cluster_scoped = matches!(
                kind(o),
                "Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
            );
            assert_eq!(
                namespace(o).is_none(),
                cluster_scoped,
                "{} {}: namespace {:?}",
                kind(o),
                name(o),
                namespace(o)
            );
            if !cluster_scoped {
                assert_eq!(namespace(o), Some(OPERATOR_NAMESPACE), "{}", name(o));
            }
        }
    }
}

#[test]
fn flux_examples_wait_for_the_operator_and_check_runs() {
    let operator = file_docs("deploy/flux/operator.yaml");
    let ks = operator
        .iter()
        .find(|o| kind(o) == "Kustomization")
        .expect("Flux Kustomization for the operator");
    assert_eq!(ks["spec"]["wait"].as_bool(), Some(true));
    let path = s(&ks["spec"]["path"]).trim_start_matches("./");
    assert!(
        root().join(path).join("kustomization.yaml").is_file(),
        "Flux path {path} is not a kustomization"
    );
    let runs = &file_docs("deploy/flux/dbt-runs.yaml")[0];
    assert_eq!(s(&runs["spec"]["dependsOn"][0]["name"]), name(ks));
    let checks = runs["spec"]["healthChecks"]
        .as_sequence()
        .expect("healthChecks");
    let run_crd = crds()
        .into_iter()
        .find(|c| s(&c["spec"]["names"]["kind"]) == "DbtCloudJobRun")
        .unwrap();
    let version = format!(
        "{}/{}",
        s(&run_crd["spec"]["group"]),
        s(&run_crd["spec"]["versions"][0]["name"])
    );
    assert!(checks
        .iter()
        .any(|c| kind(c) == "DbtCloudJobRun" && s(&c["apiVersion"]) == version));
}

// ---------------------------------------------------------------------------------------------
// Examples against the CRD schemas
// ---------------------------------------------------------------------------------------------

/// Checks `value` against a CRD openAPIV3Schema (types, unknown fields, required fields, enums,
/// bounds, patterns). CEL rules (`x-kubernetes-validations`) are not evaluated: the API server
/// does that, in the tests that apply manifests (tests/e2e_bad_input.rs).
fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            errors.push(format!("{path}: null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!("{path}: want int or string"));
        }
        return;
    }
    if let Some(options) = schema["enum"].as_sequence() {
        if !options.contains(value) {
            errors.push(format!("{path}: {value:?} not one of {options:?}"));
        }
    }
    match s(&schema["type"]) {
        "object" => {
            let Some(map) = value.as_mapping() else {
                errors.push(format!("{path}: want an object"));
                return;
            };
            for req in strings(&schema["required"]) {
                if !map.contains_key(req.as_str()) {
                    errors.push(format!("{path}: missing required {req}"));
                }
            }
            if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true) {
                return;
            }
            for (k, v) in map {
                let k = k.as_str().unwrap_or("?");
                let sub = &schema["properties"][k];
                if !sub.is_null() {
                    check_schema(sub, v, &format!("{path}.{k}"), errors);
                } else if schema["additionalProperties"].is_mapping() {
                    check_schema(
                        &schema["additionalProperties"],
                        v,
                        &format!("{path}.{k}"),
                        errors,
                    );
                } else {
                    errors.push(format!("{path}: unknown field {k}"));
                }
            }
        }
        "array" => {
            let Some(items) = value.as_sequence() else {
                errors.push(format!("{path}: want an array"));
                return;
            };
            bounds(schema, items.len() as f64, "Items", path, errors);
            for (i, item) in items.iter().enumerate() {
                check_schema(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        "string" => match value.as_str() {
            Some(text) => {
                bounds(schema, text.chars().count() as f64, "Length", path, errors);
                if let Some(pattern) = schema["pattern"].as_str() {
                    let re = regex::Regex::new(pattern)
                        .unwrap_or_else(|e| panic!("{path}: bad pattern {pattern}: {e}"));
                    if !re.is_match(text) {
                        errors.push(format!("{path}: {text:?} does not match {pattern}"));
                    }
                }
            }
            None => errors.push(format!("{path}: want a string, got {value:?}")),
        },
        "integer" => match value.as_i64() {
            Some(n) => {
                if let Some(min) = schema["minimum"].as_f64() {
                    if (n as f64) < min {
                        errors.push(format!("{path}: {n} < minimum {min}"));
                    }
                }
                if let Some(max) = schema["maximum"].as_f64() {
                    if (n as f64) > max {
                        errors.push(format!("{path}: {n} > maximum {max}"));
                    }
                }
            }
            None => errors.push(format!("{path}: want an integer, got {value:?}")),
        },
        "boolean" => {
            if !value.is_bool() {
                errors.push(format!("{path}: want a boolean, got {value:?}"));
            }
        }
        "number" => {
            if !value.is_number() {
                errors.push(format!("{path}: want a number"));
            }
        }
        "" => {}
        other => errors.push(format!("{path}: unsupported schema type {other}")),
    }
}

fn bounds(schema: &Value, n: f64, what: &str, path: &str, errors: &mut Vec<String>) {
    if let Some(min) = schema[format!("min{what}").as_str()].as_f64() {
        if n < min {
            errors.push(format!("{path}: {what} {n} < {min}"));
        }
    }
    if let Some(max) = schema[format!("max{what}").as_str()].as_f64() {
        if n > max {
            errors.push(format!("{path}: {what} {n} > {max}"));
        }
    }
}

/// Validates one dbtcloud.io object against its CRD; returns the errors.
fn validate_against_crds(obj: &Value, crds: &[Value]) -> Vec<String> {
    let api_version = s(&obj["apiVersion"]);
    let Some(crd) = crds
        .iter()
        .find(|c| s(&c["spec"]["names"]["kind"]) == kind(obj))
    else {
        return vec![format!("no CRD for kind {}", kind(obj))];
    };
    let group = s(&crd["spec"]["group"]);
    let Some(version) = crd["spec"]["versions"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| format!("{group}/{}", s(&v["name"])) == api_version)
    else {
        return vec![format!("{api_version} is not a version of {}", kind(obj))];
    };
    let mut errors = Vec::new();
    if version["served"].as_bool() != Some(true) {
        errors.push(format!("{api_version} is not served"));
    }
    let namespaced = s(&crd["spec"]["scope"]) == "Namespaced";
    if namespace(obj).is_some() != namespaced {
        errors.push(format!(
            "{} is {}: metadata.namespace {:?}",
            kind(obj),
            s(&crd["spec"]["scope"]),
            namespace(obj)
        ));
    }
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut body = obj.as_mapping().unwrap().clone();
    for k in ["apiVersion", "kind", "metadata"] {
        body.remove(k);
    }
    check_schema(schema, &Value::Mapping(body), kind(obj), &mut errors);
    errors
}

fn examples() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(Path::new("examples"), &mut files);
    files
        .into_iter()
        .flat_map(|f| file_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

#[test]
fn examples_validate_against_the_crds() {
    let crds = crds();
    let mut kinds_seen = BTreeSet::new();
    for (file, obj) in examples() {
        if !s(&obj["apiVersion"]).starts_with("dbtcloud.io/") {
            continue;
        }
        let errors = validate_against_crds(&obj, &crds);
        assert!(
            errors.is_empty(),
            "{} {}/{}: {errors:#?}",
            file.display(),
            kind(&obj),
            name(&obj)
        );
        kinds_seen.insert(kind(&obj).to_string());
    }
    let all: BTreeSet<String> = crds
        .iter()
        .map(|c| s(&c["spec"]["names"]["kind"]).to_string())
        .collect();
    assert_eq!(kinds_seen, all, "every CRD kind has an example");
}

#[test]
fn examples_fit_together() {
    let all = examples();
    let files: BTreeSet<String> = all
        .iter()
        .map(|(f, _)| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for f in [
        "secret.yaml",
        "credentials.yaml",
        "run-by-id.yaml",
        "run-by-name-with-retry.yaml",
        "cluster-credentials.yaml",
        "trigger-nightly.yaml",
        "trigger-revision-flux.yaml",
        "trigger-revision-argocd.yaml",
        "argocd-postsync-run.yaml",
    ] {
        assert!(files.contains(f), "examples/{f} is missing");
    }
    let find = |k: &str, n: &str| {
        all.iter()
            .map(|(_, o)| o)
            .find(|o| kind(o) == k && name(o) == n)
            .unwrap_or_else(|| panic!("no example {k} {n}"))
    };
    // Each run's credentials exist; namespaced credentials' Secret is in their namespace; the
    // cluster credentials allow the run's namespace.
    // Runs, and the runs of triggers (their template's spec).
    let runs = all.iter().filter_map(|(_, o)| match kind(o) {
        "DbtCloudJobRun" => Some((o, &o["spec"])),
        "DbtCloudJobTrigger" => Some((o, &o["spec"]["runTemplate"]["spec"])),
        _ => None,
    });
    for (run, spec) in runs {
        let r = &spec["credentialsRef"];
        let cred_kind = r["kind"].as_str().unwrap_or("DbtCloudCredentials");
        let cred = find(cred_kind, s(&r["name"]));
        if cred_kind == "DbtCloudCredentials" {
            assert_eq!(namespace(cred), namespace(run));
            let secret = find("Secret", s(&cred["spec"]["apiKeySecretRef"]["name"]));
            assert_eq!(namespace(secret), namespace(cred));
            let key = cred["spec"]["apiKeySecretRef"]["key"]
                .as_str()
                .unwrap_or("apiKey");
            assert!(!secret["stringData"][key].is_null(), "Secret lacks {key}");
        } else {
            assert!(
                strings(&cred["spec"]["allowedNamespaces"]["names"])
                    .contains(&namespace(run).unwrap().to_string()),
                "{} does not allow {:?}",
                name(cred),
                namespace(run)
            );
        }
    }
    let job = &find("DbtCloudJobRun", "marts-refresh")["spec"]["job"];
    assert!(job["id"].is_null() && !job["jobName"].is_null());
    assert!(
        find("DbtCloudJobRun", "marts-refresh")["spec"]["retry"]["maxAttempts"]
            .as_i64()
            .is_some_and(|n| n > 1)
    );
    let secret = find("Secret", "dbt-cloud-api-key");
    assert!(
        s(&secret["stringData"]["apiKey"]).contains("REPLACE_ME"),
        "the example Secret must hold a placeholder, never a key"
    );
}

#[test]
fn schema_check_catches_mistakes() {
    // The validator above must not be vacuous: each mutation of a valid example is refused.
    let crds = crds();
    let (_, run) = examples()
        .into_iter()
        .find(|(_, o)| kind(o) == "DbtCloudJobRun" && name(o) == "marts-refresh")
        .unwrap();
    assert!(validate_against_crds(&run, &crds).is_empty());
    type Mutation = (&'static str, Box<dyn Fn(&mut Value)>);
    let mutations: Vec<Mutation> = vec![
        (
            "unknown field",
            Box::new(|v| v["spec"]["retry"]["maxAttempt"] = 3.into()),
        ),
        (
            "wrong type",
            Box::new(|v| v["spec"]["pollIntervalSeconds"] = "10".into()),
        ),
        (
            "bad enum",
            Box::new(|v| v["spec"]["retry"]["strategy"] = "Sometimes".into()),
        ),
        (
            "below minimum",
            Box::new(|v| v["spec"]["retry"]["maxAttempts"] = 0.into()),
        ),
        (
            "missing required",
            Box::new(|v| {
                v["spec"].as_mapping_mut().unwrap().remove("job");
            }),
        ),
        ("wrong kind", Box::new(|v| v["kind"] = "DbtCloudJob".into())),
        (
            "wrong version",
            Box::new(|v| v["apiVersion"] = "dbtcloud.io/v1".into()),
        ),
        (
            "no namespace",
            Box::new(|v| {
                v["metadata"].as_mapping_mut().unwrap().remove("namespace");
            }),
        ),
    ];
    for (what, mutate) in mutations {
        let mut bad = run.clone();
        mutate(&mut bad);
        assert!(
            !validate_against_crds(&bad, &crds).is_empty(),
            "{what} was not caught"
        );
    }
    // Patterns (the credentials' host).
    let (_, creds) = examples()
        .into_iter()
        .find(|(_, o)| kind(o) == "DbtCloudCredentials")
        .unwrap();
    assert!(validate_against_crds(&creds, &crds).is_empty());
    for host in [
        "10.0.0.1",
        "Cloud.GetDbt.com",
        "cloud.getdbt.com:443",
        "https://x.dbt.com",
    ] {
        let mut bad = creds.clone();
        bad["spec"]["host"] = host.into();
        let errors = validate_against_crds(&bad, &crds);
        assert!(
            errors.iter().any(|e| e.contains("does not match")),
            "host {host} was not caught: {errors:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

#[test]
fn dockerfile_builds_every_member_and_runs_non_root() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("ARG RUST_VERSION=1.95"));
    assert!(dockerfile.contains("FROM rust:${RUST_VERSION}-bookworm AS builder"));
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(dockerfile.contains("\nUSER 65532:65532\n"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/dbt-cloud-operator\"]"));
    assert!(dockerfile.contains("ln -s dbt-cloud-operator /out/kubectl-dbtcloud"));
    assert!(dockerfile.contains("--locked --bin dbt-cloud-operator"));
    for label in [
        "title",
        "source",
        "licenses",
        "version",
        "revision",
        "description",
    ] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "OCI label {label}"
        );
    }
    // The dependency layer needs every workspace member's manifest, or Cargo cannot load the
    // workspace: a new member must be added to the Dockerfile.
    let manifest: toml_lite::Members = toml_lite::members(&read("Cargo.toml"));
    for member in manifest.0.iter().filter(|m| m.as_str() != ".") {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/Cargo.toml")),
            "Dockerfile does not copy {member}/Cargo.toml"
        );
        assert!(
            dockerfile.contains(&format!("{member}/src")),
            "Dockerfile has no stub for {member}"
        );
    }
    // Rust in the image is at least the crate's rust-version.
    let msrv = read("Cargo.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("rust-version = \"")?
                .strip_suffix('"')
                .map(String::from)
        })
        .expect("rust-version");
    let minor = |v: &str| v.split('.').nth(1).unwrap().parse::<u32>().unwrap();
    assert!(
        minor("1.95") >= minor(&msrv),
        "rust 1.95 < rust-version {msrv}"
    );
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    assert!(
        !ignore
            .lines()
            .any(|l| matches!(l.trim(), "src/" | "crates/" | "Cargo.lock")),
        ".dockerignore drops build inputs"
    );
}

/// The workspace members from Cargo.toml, without a TOML parser dependency.
mod toml_lite {
    pub struct Members(pub Vec<String>);

    pub fn members(cargo_toml: &str) -> Members {
        let start = cargo_toml.find("members = [").expect("workspace members") + 11;
        let end = start + cargo_toml[start..].find(']').unwrap();
        Members(
            cargo_toml[start..end]
                .split(',')
                .map(|m| m.trim().trim_matches('"').to_string())
                .filter(|m| !m.is_empty())
                .collect(),
        )
    }
}
