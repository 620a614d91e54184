//! The user commands (`login`, `logout`, `accounts`, `status`, `runs`, `open`) run in-process
//! against the real kube-apiserver (a namespace per test) and the dbt Cloud simulator, with
//! scripted terminals.

mod support;

use dbt_cloud_operator::cli::terminal::{Ctx, ScriptedPrompt};
use dbt_cloud_operator::cli::{accounts, inspect, login, logout, Cli, Command};
use http::Method;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use dbt_cloud_simulator::Simulator;

const KEY: &str = "dbtc_cli_test_key_7e3a91";
const MULTI_KEY: &str = "dbtu_personal_token_4b2c";
const CRD: &str = "dbtcloud.io/v1alpha1";

struct World {
    /// This test's namespace.
    ns: String,
    /// The client the commands use: every request it sends is recorded.
    client: kube::Client,
    faults: support::KubeFaults,
    /// The test's own client (set-up and inspection), not recorded.
    admin: kube::Client,
    sim: Simulator,
}

/// The API resource of an object's `apiVersion` and `kind`.
fn resource_of(obj: &Value) -> ApiResource {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let kind = obj["kind"].as_str().expect("kind");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    // Secret → secrets, DbtCloudJobRun → dbtcloudjobruns, *Credentials → *credentials.
    let lower = kind.to_lowercase();
    let plural = if lower.ends_with('s') {
        lower
    } else {
        format!("{lower}s")
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural,
    }
}

impl World {
    async fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = Simulator::start().await.expect("simulator starts");
        sim.add_account(101, "Acme");
        sim.add_account(102, "Beta Corp");
        sim.add_token(KEY, &[101]);
        sim.add_token(MULTI_KEY, &[101, 102]);
        let cluster = support::harness::cluster();
        let ns = format!("cli-{}", &support::harness::random_token()[..8]);
        let faults = support::KubeFaults::default();
        let client = support::harness::client_with_layer(&cluster.kubeconfig, &ns, &faults).await;
        let admin = support::harness::client_from(&cluster.kubeconfig).await;
        support::create_namespace(&admin, &ns).await;
        World {
            ns,
            client,
            faults,
            admin,
            sim,
        }
    }

    /// Creates `obj` (any kind) as the test's admin, then writes its `status` when it has one
    /// (the API server ignores status on create).
    async fn put_object(&self, obj: Value) {
        let ar = resource_of(&obj);
        let namespaced = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let api: Api<DynamicObject> = match &namespaced {
            Some(ns) => Api::namespaced_with(self.admin.clone(), ns, &ar),
            None => Api::all_with(self.admin.clone(), &ar),
        };
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let status = obj.get("status").cloned();
        let dynamic: DynamicObject = serde_json::from_value(obj).unwrap();
        api.create(&PostParams::default(), &dynamic)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        if let Some(status) = status {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("status of {name}: {e}"));
        }
    }

    /// An object as JSON (None when absent).
    async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let ar = resource_of(&json!({"apiVersion": api_version, "kind": kind}));
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.admin.clone(), ns, &ar),
            None => Api::all_with(self.admin.clone(), &ar),
        };
        api.get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Runs a CLI command line (without the program name) against this world.
    async fn run(&self, args: &[&str], interactive: bool, answers: &[&str]) -> Outcome {
        self.run_with(args, interactive, answers, true).await
    }

    async fn run_with(
        &self,
        args: &[&str],
        interactive: bool,
        answers: &[&str],
        with_kube: bool,
    ) -> Outcome {
        let dev = self.sim.base_url();
        let mut argv = vec!["dbt-cloud-operator"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--dev-dbt-cloud-base-url", &dev]);
        let argv: Vec<&str> = match args[0] {
            // These commands do not talk to dbt Cloud.
            "status" | "runs" | "open" | "logout" => argv[..argv.len() - 2].to_vec(),
            _ => argv,
        };
        let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("valid command line");
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut prompt = ScriptedPrompt::new(answers.iter().copied());
        let kube = if with_kube {
            Ok(self.client.clone())
        } else {
            Err("no kubeconfig".to_string())
        };
        let mut ctx = Ctx {
            out: &mut out,
            err: &mut err,
            prompt: &mut prompt,
            interactive,
        };
        let result = match cli.command {
            Command::Login(a) => {
                let config = a.dbt.client_config();
                login::login(*a, kube, config, &mut ctx).await
            }
            Command::Accounts(a) => {
                let config = a.dbt.client_config();
                accounts::accounts(*a, kube, config, &mut ctx).await
            }
            Command::Status(a) => inspect::status(a, kube.unwrap(), &mut ctx).await,
            Command::Runs(a) => inspect::runs(a, kube.unwrap(), &mut ctx).await,
            Command::Open(a) => inspect::open(a, kube.unwrap(), None, &mut ctx).await,
            Command::Logout(a) => logout::logout(a, kube.unwrap(), &mut ctx).await,
            other => panic!("not a user command: {other:?}"),
        };
        let outcome = Outcome {
            error: result.err().map(|e| e.to_string()),
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
            prompts: prompt.prompts.clone(),
        };
        for key in [KEY, MULTI_KEY, "dbtc_wrong_key_000", "not-a-token-xyz"] {
            let all = format!("{}{}{:?}", outcome.out, outcome.err, outcome.error);
            assert!(
                !all.contains(key),
                "the API key leaked into the output: {all}"
            );
        }
        outcome
    }

    async fn secret(&self, name: &str) -> Option<Value> {
        self.get("v1", "Secret", Some(&self.ns), name).await
    }

    async fn credentials(&self, name: &str) -> Option<Value> {
        self.get(CRD, "DbtCloudCredentials", Some(&self.ns), name)
            .await
    }

    /// Writes the commands sent.
    fn writes(&self) -> Vec<String> {
        self.faults
            .requests()
            .into_iter()
            .filter(|r| r.method != Method::GET)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    async fn put_credentials(&self, name: &str, account: i64, labels: Value) {
        self.put_object(json!({"apiVersion": CRD, "kind": "DbtCloudCredentials",
                "metadata": {"name": name, "namespace": self.ns, "labels": labels},
                "spec": {"accountId": account, "host": "cloud.getdbt.com",
                    "apiKeySecretRef": {"name": format!("{name}-key"), "key": "apiKey"}}}))
            .await;
    }
}

#[derive(Debug)]
struct Outcome {
    error: Option<String>,
    out: String,
    err: String,
    prompts: Vec<String>,
}

impl Outcome {
    fn ok(&self) -> &Self {
        assert!(self.error.is_none(), "unexpected error: {self:?}");
        self
    }

    fn failed(&self) -> &str {
        self.error
            .as_deref()
            .unwrap_or_else(|| panic!("expected an error: {self:?}"))
    }
}

fn b64(s: &str) -> Value {
    serde_json::to_value(ByteString(s.as_bytes().to_vec())).unwrap()
}

fn managed() -> Value {
    json!({"app.kubernetes.io/managed-by": "dbt-cloud-operator-cli"})
}

#[tokio::test]
async fn login_creates_the_secret_and_credentials() {
    let w = World::new().await;
    let o = w
        .run(&["login", "--key", KEY, "-n", w.ns.as_str()], false, &[])
        .await;
    o.ok();
    assert!(o.err.contains("101 (Acme)"), "{}", o.err);

    let secret = w.secret("dbt-cloud-api-key").await.expect("Secret written");
    assert_eq!(secret["data"]["apiKey"], b64(KEY));
    assert!(secret.get("stringData").is_none());
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["labels"], managed());

    let creds = w
        .credentials("dbt-cloud")
        .await
        .expect("credentials written");
    assert_eq!(creds["spec"]["accountId"], 101);
    assert_eq!(creds["spec"]["host"], "cloud.getdbt.com");
    assert_eq!(
        creds["spec"]["apiKeySecretRef"],
        json!({"name": "dbt-cloud-api-key", "key": "apiKey"})
    );
    assert_eq!(creds["metadata"]["labels"], managed());
    assert!(!creds.to_string().contains(KEY));

    // New objects are created (never applied over something that appeared meanwhile).
    let creates: Vec<_> = w
        .faults
        .requests()
        .into_iter()
        .filter(|r| r.method != Method::GET)
        .collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    for r in creates {
        assert_eq!(r.method, Method::POST, "{r:?}");
        assert!(
            r.query.contains("fieldManager=dbt-cloud-operator-cli"),
            "{}",
            r.query
        );
    }
    // Logging in again with --force updates them by server-side apply.
    w.run(
        &["login", "--key", KEY, "-n", w.ns.as_str(), "--force"],
        false,
        &[],
    )
    .await
    .ok();
    let applies: Vec<_> = w
        .faults
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH)
        .collect();
    assert_eq!(applies.len(), 2, "{applies:?}");
    for r in applies {
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert!(
            r.query.contains("fieldManager=dbt-cloud-operator-cli"),
            "{}",
            r.query
        );
    }
}

#[tokio::test]
async fn login_with_custom_names_and_account() {
    let w = World::new().await;
    w.run(
        &[
            "login",
            "--key",
            MULTI_KEY,
            "--account",
            "102",
            "-n",
            w.ns.as_str(),
            "--name",
            "beta",
            "--secret-name",
            "beta-token",
        ],
        false,
        &[],
    )
    .await
    .ok();
    assert_eq!(
        w.secret("beta-token").await.unwrap()["data"]["apiKey"],
        b64(MULTI_KEY)
    );
    let creds = w.credentials("beta").await.unwrap();
    assert_eq!(creds["spec"]["accountId"], 102);
    assert_eq!(creds["spec"]["apiKeySecretRef"]["name"], "beta-token");
}

#[tokio::test]
async fn cluster_login_puts_the_secret_in_the_operator_namespace() {
    let w = World::new().await;
    // The operator's namespace (the control plane has no controller-manager to make any).
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(w.admin.clone());
    if namespaces
        .get_opt("dbt-cloud-operator")
        .await
        .unwrap()
        .is_none()
    {
        support::create_namespace(&w.admin, "dbt-cloud-operator").await;
    }
    w.run(
        &[
            "login",
            "--key",
            KEY,
            "--cluster",
            "--allow-namespace",
            "team-a",
            "--allow-namespace",
            "team-b",
        ],
        false,
        &[],
    )
    .await
    .ok();
    let secret = w
        .get(
            "v1",
            "Secret",
            Some("dbt-cloud-operator"),
            "dbt-cloud-api-key",
        )
        .await
        .expect("Secret in the operator namespace");
    assert_eq!(secret["data"]["apiKey"], b64(KEY));
    let creds = w
        .get(CRD, "ClusterDbtCloudCredentials", None, "dbt-cloud")
        .await
        .expect("cluster credentials");
    assert_eq!(creds["spec"]["accountId"], 101);
    assert_eq!(
        creds["spec"]["allowedNamespaces"]["names"],
        json!(["team-a", "team-b"])
    );
    assert!(w.credentials("dbt-cloud").await.is_none());
}

#[tokio::test]
async fn a_bad_key_is_explained_and_nothing_is_written() {
    let w = World::new().await;
    // Wrong shape: a hint about dbtc_/dbtu_ tokens.
    let o = w
        .run(
            &["login", "--key", "not-a-token-xyz", "-n", w.ns.as_str()],
            false,
            &[],
        )
        .await;
    let e = o.failed();
    assert!(e.contains("correct and unexpired"), "{e}");
    assert!(e.contains("dbtc_") && e.contains("dbtu_"), "{e}");
    // Right shape, but rejected: no shape hint.
    let o = w
        .run(
            &["login", "--key", "dbtc_wrong_key_000", "-n", w.ns.as_str()],
            false,
            &[],
        )
        .await;
    let e = o.failed();
    assert!(e.contains("401") && e.contains("unexpired"), "{e}");
    assert!(!e.contains("does not look like"), "{e}");
    assert!(w.faults.requests().is_empty(), "{:?}", w.faults.requests());
    assert!(w.secret("dbt-cloud-api-key").await.is_none());
}

#[tokio::test]
async fn an_unreachable_host_is_explained() {
    let w = World::new().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cli = <Cli as clap::Parser>::try_parse_from([
        "dbt-cloud-operator",
        "login",
        "--key",
        KEY,
        "--dev-dbt-cloud-base-url",
        &closed,
    ])
    .unwrap();
    let Command::Login(args) = cli.command else {
        unreachable!()
    };
    let config = args.dbt.client_config();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut prompt = ScriptedPrompt::default();
    let mut ctx = Ctx {
        out: &mut out,
        err: &mut err,
        prompt: &mut prompt,
        interactive: false,
    };
    let e = login::login(*args, Ok(w.client.clone()), config, &mut ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot reach dbt Cloud"), "{e}");
    assert!(w.writes().is_empty());
}

#[tokio::test]
async fn a_host_outside_the_allow_list_is_refused_before_any_request() {
    let w = World::new().await;
    let o = w
        .run(
            &["login", "--key", KEY, "--host", "evil.example.com"],
            false,
            &[],
        )
        .await;
    assert!(o.failed().contains("not a dbt Cloud host"), "{o:?}");
    assert_eq!(w.sim.requests().len(), 0);
}

#[tokio::test]
async fn non_interactive_login_needs_key_and_account() {
    let w = World::new().await;
    let o = w.run(&["login", "-n", w.ns.as_str()], false, &[]).await;
    let e = o.failed();
    assert!(e.contains("--key") && e.contains("--account"), "{e}");
    assert!(o.prompts.is_empty());

    // Several accounts and no --account: name them and ask for --account.
    let o = w
        .run(
            &["login", "--key", MULTI_KEY, "-n", w.ns.as_str()],
            false,
            &[],
        )
        .await;
    let e = o.failed();
    assert!(e.contains("--key") && e.contains("--account"), "{e}");
    assert!(
        e.contains("101  Acme") && e.contains("102  Beta Corp"),
        "{e}"
    );
    assert!(w.writes().is_empty());
}

#[tokio::test]
async fn an_inaccessible_account_lists_the_accessible_ones() {
    let w = World::new().await;
    let o = w
        .run(
            &[
                "login",
                "--key",
                MULTI_KEY,
                "--account",
                "999",
                "-n",
                w.ns.as_str(),
            ],
            false,
            &[],
        )
        .await;
    let e = o.failed();
    assert!(e.contains("999"), "{e}");
    assert!(
        e.contains("101  Acme") && e.contains("102  Beta Corp"),
        "{e}"
    );
    assert!(w.writes().is_empty());
}

#[tokio::test]
async fn existing_credentials_need_force() {
    let w = World::new().await;
    w.run(&["login", "--key", KEY, "-n", w.ns.as_str()], false, &[])
        .await
        .ok();
    let before = w.writes();

    // Same name, non-interactive, no --force: refused, nothing changed.
    let o = w
        .run(
            &[
                "login",
                "--key",
                MULTI_KEY,
                "--account",
                "101",
                "-n",
                w.ns.as_str(),
            ],
            false,
            &[],
        )
        .await;
    assert!(o.failed().contains("--force"), "{o:?}");
    assert!(o.err.contains("already exists"), "{}", o.err);
    assert_eq!(w.writes(), before, "nothing was written");
    assert_eq!(
        w.secret("dbt-cloud-api-key").await.unwrap()["data"]["apiKey"],
        b64(KEY)
    );

    // Other credentials for the same account and host count too.
    let o = w
        .run(
            &[
                "login",
                "--key",
                KEY,
                "-n",
                w.ns.as_str(),
                "--name",
                "second",
            ],
            false,
            &[],
        )
        .await;
    assert!(o.failed().contains("--force"), "{o:?}");
    assert!(
        o.err
            .contains("dbt-cloud already holds credentials for account 101"),
        "{}",
        o.err
    );
    assert!(w.credentials("second").await.is_none());

    // --force replaces.
    w.run(
        &[
            "login",
            "--key",
            MULTI_KEY,
            "--account",
            "101",
            "-n",
            w.ns.as_str(),
            "--force",
        ],
        false,
        &[],
    )
    .await
    .ok();
    assert_eq!(
        w.secret("dbt-cloud-api-key").await.unwrap()["data"]["apiKey"],
        b64(MULTI_KEY)
    );
}

#[tokio::test]
async fn an_unmanaged_secret_of_the_same_name_counts_as_existing() {
    let w = World::new().await;
    w.put_object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "dbt-cloud-api-key", "namespace": w.ns.as_str()},
            "data": {"apiKey": b64("dbtc_someone_elses")}}))
        .await;
    let o = w
        .run(&["login", "--key", KEY, "-n", w.ns.as_str()], false, &[])
        .await;
    assert!(o.failed().contains("--force"));
    assert!(o.err.contains("not created by this CLI"), "{}", o.err);
    assert!(w.credentials("dbt-cloud").await.is_none());
}

#[tokio::test]
async fn interactive_login_prompts_for_key_account_and_replacement() {
    let w = World::new().await;
    w.put_credentials("dbt-cloud", 7, managed()).await;

    // Declining leaves everything as it was.
    let o = w
        .run(
            &["login", "-n", w.ns.as_str()],
            true,
            &[MULTI_KEY, "2", "n"],
        )
        .await;
    assert!(o.failed().contains("not replaced"), "{o:?}");
    assert_eq!(
        w.credentials("dbt-cloud").await.unwrap()["spec"]["accountId"],
        7
    );
    assert!(w.writes().is_empty(), "{:?}", w.writes());

    // An invalid choice is asked again; accepting replaces.
    let o = w
        .run(
            &["login", "-n", w.ns.as_str()],
            true,
            &[MULTI_KEY, "5", "2", "y"],
        )
        .await;
    o.ok();
    assert!(o.prompts[0].contains("API key") && o.prompts[0].contains("hidden"));
    assert!(o.prompts[1].contains("Select an account [1-2]"));
    assert!(o.prompts[3].contains("Replace them?"), "{:?}", o.prompts);
    assert!(o.err.contains("102  Beta Corp"), "{}", o.err);
    assert_eq!(
        w.credentials("dbt-cloud").await.unwrap()["spec"]["accountId"],
        102
    );
    assert_eq!(
        w.secret("dbt-cloud-api-key").await.unwrap()["data"]["apiKey"],
        b64(MULTI_KEY)
    );
}

#[tokio::test]
async fn dry_run_prints_yaml_and_writes_nothing() {
    let w = World::new().await;
    // Without any cluster.
    let o = w
        .run_with(
            &["login", "--key", KEY, "-n", w.ns.as_str(), "--dry-run"],
            false,
            &[],
            false,
        )
        .await;
    o.ok();
    let docs: Vec<Value> = o
        .out
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{}", o.out);
    assert_eq!(docs[0]["kind"], "Secret");
    assert_eq!(docs[0]["data"]["apiKey"], b64(KEY));
    assert_eq!(docs[0]["metadata"]["namespace"], w.ns.as_str());
    assert_eq!(docs[1]["kind"], "DbtCloudCredentials");
    assert_eq!(docs[1]["spec"]["accountId"], 101);
    assert!(o.err.contains("nothing was written"), "{}", o.err);

    // With a cluster: read to warn about existing credentials, but never written.
    w.put_credentials("dbt-cloud", 101, managed()).await;
    let o = w
        .run(
            &[
                "login",
                "--key",
                KEY,
                "-n",
                w.ns.as_str(),
                "--dry-run",
                "--force",
            ],
            false,
            &[],
        )
        .await;
    o.ok();
    assert!(o.err.contains("already exists"), "{}", o.err);
    assert!(o.out.contains("kind: Secret"));
    assert!(w.writes().is_empty(), "{:?}", w.writes());
    assert!(w.secret("dbt-cloud-api-key").await.is_none());
}

#[tokio::test]
async fn wait_reports_the_ready_condition() {
    let w = World::new().await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        w.admin.clone(),
        &w.ns,
        &resource_of(&json!({"apiVersion": CRD, "kind": "DbtCloudCredentials"})),
    );
    let marker = tokio::spawn(async move {
        for _ in 0..1500 {
            if let Some(c) = api.get_opt("dbt-cloud").await.unwrap() {
                let status = json!({"status": {"observedGeneration": c.metadata.generation,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Valid",
                        "message": "Account 101 (Acme) is accessible",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
                api.patch_status("dbt-cloud", &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .unwrap();
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let o = w
        .run(
            &[
                "login",
                "--key",
                KEY,
                "-n",
                w.ns.as_str(),
                "--wait",
                "--wait-timeout-seconds",
                "30",
            ],
            false,
            &[],
        )
        .await;
    marker.await.unwrap();
    o.ok();
    assert!(
        o.err
            .contains("Ready=True (Valid): Account 101 (Acme) is accessible"),
        "{}",
        o.err
    );
}

#[tokio::test]
async fn logout_deletes_what_login_created() {
    let w = World::new().await;
    w.run(&["login", "--key", KEY, "-n", w.ns.as_str()], false, &[])
        .await
        .ok();

    // No terminal and no --yes: refused.
    let o = w.run(&["logout", "-n", w.ns.as_str()], false, &[]).await;
    assert!(o.failed().contains("--yes"), "{o:?}");
    assert!(w.credentials("dbt-cloud").await.is_some());

    // Declined at the prompt.
    let o = w.run(&["logout", "-n", w.ns.as_str()], true, &["n"]).await;
    o.failed();
    assert!(w.credentials("dbt-cloud").await.is_some());

    let o = w.run(&["logout", "-n", w.ns.as_str()], true, &["y"]).await;
    o.ok();
    assert!(w.credentials("dbt-cloud").await.is_none());
    assert!(w.secret("dbt-cloud-api-key").await.is_none());
    assert!(o.err.contains("Deleted Secret"), "{}", o.err);
}

#[tokio::test]
async fn logout_refuses_what_it_did_not_create() {
    let w = World::new().await;
    w.put_credentials("handmade", 101, json!({})).await;
    let o = w
        .run(
            &["logout", "-n", w.ns.as_str(), "--name", "handmade", "--yes"],
            false,
            &[],
        )
        .await;
    assert!(o.failed().contains("not created by this CLI"), "{o:?}");
    assert!(w.credentials("handmade").await.is_some());

    // Managed credentials pointing at a hand-made Secret: the Secret stays.
    w.put_credentials("mixed", 101, managed()).await;
    w.put_object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "mixed-key", "namespace": w.ns.as_str()},
            "data": {"apiKey": b64("dbtc_handmade")}}))
        .await;
    let o = w
        .run(
            &["logout", "-n", w.ns.as_str(), "--name", "mixed", "--yes"],
            false,
            &[],
        )
        .await;
    o.ok();
    assert!(w.credentials("mixed").await.is_none());
    assert!(w.secret("mixed-key").await.is_some());
    assert!(
        o.err.contains(&format!("Kept Secret {}/mixed-key", w.ns)),
        "{}",
        o.err
    );
}

#[tokio::test]
async fn accounts_marks_the_current_credentials() {
    let w = World::new().await;
    let o = w.run(&["accounts", "--key", MULTI_KEY], false, &[]).await;
    o.ok();
    assert!(
        o.out.contains("101   Acme") && o.out.contains("102   Beta Corp"),
        "{}",
        o.out
    );
    assert!(!o.out.contains('*'));

    // From stored credentials: their key and account.
    w.run(
        &[
            "login",
            "--key",
            MULTI_KEY,
            "--account",
            "102",
            "-n",
            w.ns.as_str(),
        ],
        false,
        &[],
    )
    .await
    .ok();
    let o = w
        .run(
            &["accounts", "-n", w.ns.as_str(), "--name", "dbt-cloud"],
            false,
            &[],
        )
        .await;
    o.ok();
    let marked: Vec<&str> = o.out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 1, "{}", o.out);
    assert!(marked[0].contains("102"), "{}", o.out);
}

#[tokio::test]
async fn status_runs_and_open() {
    let w = World::new().await;
    w.put_object(json!({"apiVersion": CRD, "kind": "DbtCloudCredentials",
            "metadata": {"name": "creds", "namespace": w.ns.as_str()},
            "spec": {"accountId": 101, "host": "emea.dbt.com", "apiKeySecretRef": {"name": "k"}},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Unauthorized",
                "message": "dbt Cloud rejected the API token", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})).await;
    w.put_object(json!({"apiVersion": CRD, "kind": "ClusterDbtCloudCredentials",
            "metadata": {"name": "shared"},
            "spec": {"accountId": 102, "host": "cloud.getdbt.com", "apiKeySecretRef": {"name": "k"}}})).await;
    let o = w.run(&["status", "-n", w.ns.as_str()], false, &[]).await;
    o.ok();
    let line = o.out.lines().find(|l| l.contains("creds")).unwrap();
    for cell in [
        w.ns.as_str(),
        "DbtCloudCredentials",
        "101",
        "emea.dbt.com",
        "False",
        "Unauthorized",
        "rejected",
    ] {
        assert!(line.contains(cell), "{cell} missing: {line}");
    }
    let line = o.out.lines().find(|l| l.contains("shared")).unwrap();
    assert!(
        line.contains("(cluster)") && line.contains("102") && line.contains("Unknown"),
        "{line}"
    );

    let url = "https://cloud.getdbt.com/deploy/101/projects/10/runs/555/";
    w.put_object(json!({"apiVersion": CRD, "kind": "DbtCloudJobRun",
            "metadata": {"name": "nightly", "namespace": w.ns.as_str()},
            "spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 100}},
            "status": {"phase": "Running", "jobId": 100, "runId": 555, "attemptCount": 1, "runUrl": url}})).await;
    w.put_object(json!({"apiVersion": CRD, "kind": "DbtCloudJobRun",
            "metadata": {"name": "waiting", "namespace": w.ns.as_str()},
            "spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 100}}}))
        .await;
    let o = w.run(&["runs", "-A"], false, &[]).await;
    o.ok();
    let line = o.out.lines().find(|l| l.contains("nightly")).unwrap();
    for cell in ["100", "555", "Running", "1", url] {
        assert!(line.contains(cell), "{cell} missing: {line}");
    }
    assert!(o
        .out
        .lines()
        .any(|l| l.contains("waiting") && l.contains("Pending")));

    let o = w
        .run(
            &["open", "nightly", "-n", w.ns.as_str(), "--print"],
            false,
            &[],
        )
        .await;
    o.ok();
    assert_eq!(o.out.trim(), url);
    let o = w
        .run(&["open", "waiting", "-n", w.ns.as_str()], false, &[])
        .await;
    assert!(o.failed().contains("no dbt Cloud URL yet"), "{o:?}");
    let o = w
        .run(&["open", "missing", "-n", w.ns.as_str()], false, &[])
        .await;
    assert!(o.failed().contains("not found"), "{o:?}");
}

#[tokio::test]
async fn force_never_overwrites_what_login_did_not_create() {
    let w = World::new().await;
    w.put_object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "dbt-cloud-api-key", "namespace": w.ns.as_str()},
            "data": {"apiKey": b64("dbtc_someone_elses")}}))
        .await;
    let o = w
        .run(
            &["login", "--key", KEY, "-n", w.ns.as_str(), "--force"],
            false,
            &[],
        )
        .await;
    assert!(o.failed().contains("not created by this CLI"), "{o:?}");
    assert_eq!(
        w.secret("dbt-cloud-api-key").await.unwrap()["data"]["apiKey"],
        b64("dbtc_someone_elses")
    );
    assert!(w.credentials("dbt-cloud").await.is_none());
    assert!(w.writes().is_empty(), "{:?}", w.writes());

    // Hand-made credentials of the same name: not replaced, with --force or when confirmed.
    w.put_credentials("handmade", 7, json!({})).await;
    let o = w
        .run(
            &[
                "login",
                "--key",
                KEY,
                "-n",
                w.ns.as_str(),
                "--name",
                "handmade",
                "--force",
            ],
            false,
            &[],
        )
        .await;
    assert!(o.failed().contains("not created by this CLI"), "{o:?}");
    let o = w
        .run(
            &["login", "-n", w.ns.as_str(), "--name", "handmade"],
            true,
            &[KEY, "y"],
        )
        .await;
    assert!(o.failed().contains("not created by this CLI"), "{o:?}");
    assert!(!o.prompts.iter().any(|p| p.contains("Replace")), "{o:?}");
    assert_eq!(
        w.credentials("handmade").await.unwrap()["spec"]["accountId"],
        7
    );
    assert!(w.writes().is_empty(), "{:?}", w.writes());
}

#[tokio::test]
async fn logout_keeps_secret_keys_it_did_not_write() {
    let w = World::new().await;
    w.run(&["login", "--key", KEY, "-n", w.ns.as_str()], false, &[])
        .await
        .ok();
    // Someone adds their own key to the Secret login created.
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.admin.clone(), &w.ns)
        .patch(
            "dbt-cloud-api-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"theirs": b64("keep me")}})),
        )
        .await
        .unwrap();

    let o = w
        .run(&["logout", "-n", w.ns.as_str(), "--yes"], false, &[])
        .await;
    o.ok();
    assert!(w.credentials("dbt-cloud").await.is_none());
    let secret = w
        .secret("dbt-cloud-api-key")
        .await
        .expect("the Secret is kept");
    assert_eq!(secret["data"]["theirs"], b64("keep me"));
    assert!(secret["data"].get("apiKey").is_none(), "{secret}");
    assert!(o.err.contains("Removed key apiKey"), "{}", o.err);
}

static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn record_launch(_url: &str) -> std::io::Result<()> {
    LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn open_launches_only_https_urls_on_dbt_cloud_hosts() {
    let w = World::new().await;
    let open = |name: &str| {
        let cli = <Cli as clap::Parser>::try_parse_from([
            "dbt-cloud-operator",
            "open",
            name,
            "-n",
            w.ns.as_str(),
        ])
        .unwrap();
        let Command::Open(args) = cli.command else {
            unreachable!()
        };
        let client = w.client.clone();
        async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut prompt = ScriptedPrompt::default();
            let mut ctx = Ctx {
                out: &mut out,
                err: &mut err,
                prompt: &mut prompt,
                interactive: false,
            };
            let r = inspect::open(args, client, Some(record_launch), &mut ctx).await;
            (
                r.err().map(|e| e.to_string()),
                String::from_utf8(out).unwrap(),
            )
        }
    };
    let bad = [
        "https://evil.example.com/deploy/1/projects/1/runs/1/",
        "http://cloud.getdbt.com/deploy/1/projects/1/runs/1/",
        "https://cloud.getdbt.com.evil.example.com/",
        "https://user:pw@cloud.getdbt.com/",
        "https://cloud.getdbt.com:8443/",
        "https://127.0.0.1/",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "\u{1b}]8;;https://evil.example.com\u{7}x",
    ];
    let good = "https://ab123.us1.dbt.com/deploy/1/projects/1/runs/1/";
    for (i, url) in bad.iter().chain([&good]).enumerate() {
        w.put_object(json!({"apiVersion": CRD, "kind": "DbtCloudJobRun",
                "metadata": {"name": format!("r{i}"), "namespace": w.ns.as_str()},
                "spec": {"credentialsRef": {"name": "creds"}, "job": {"id": 100}},
                "status": {"phase": "Running", "runId": 1, "runUrl": url}}))
            .await;
    }
    for (i, url) in bad.iter().enumerate() {
        let (error, out) = open(&format!("r{i}")).await;
        let e = error.unwrap_or_else(|| panic!("{url:?} was accepted"));
        assert!(
            e.contains("not an https URL on a dbt Cloud host"),
            "{url:?}: {e}"
        );
        assert!(
            !out.contains(url) && !e.contains('\u{1b}'),
            "{url:?}: {out} {e}"
        );
    }
    assert_eq!(LAUNCHED.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (error, out) = open(&format!("r{}", bad.len())).await;
    assert_eq!(error, None);
    assert_eq!(out.trim(), good);
    assert_eq!(LAUNCHED.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn the_kubectl_plugin_name_is_shown_in_usage() {
    use dbt_cloud_operator::cli::bin_name_for;
    assert_eq!(
        bin_name_for("/usr/local/bin/kubectl-dbtcloud"),
        "kubectl dbtcloud"
    );
    assert_eq!(
        bin_name_for("target/debug/dbt-cloud-operator"),
        "dbt-cloud-operator"
    );
}
