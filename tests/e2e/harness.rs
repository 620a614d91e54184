//! Real-API-server end-to-end harness, following controller-runtime's envtest convention: a real
//! `etcd` and `kube-apiserver` from `KUBEBUILDER_ASSETS` (else `/usr/local/kubebuilder/bin`),
//! started once per test binary on loopback ports, with a CA and serving certificate made here
//! (rcgen), static token authentication (an admin token in `system:masters`),
//! `--authorization-mode=Node,RBAC` (RBAC is enforced for every other identity) and
//! service-account keys (so `TokenRequest` / `kubectl create token` work). Every CRD in `crds/` is
//! installed with server-side apply.
//!
//! Each test gets its own namespace, its own in-process dbt Cloud simulator and its own operator
//! process (the real binary, `--watch-namespaces <its namespace>`), so tests in one binary run in
//! parallel without seeing each other's objects. Every child process is killed and every temporary
//! directory removed when its guard drops, and — for the shared servers, which live in a static —
//! when the test binary exits for any reason (a reaper process waits for our end of a pipe to
//! close, then kills them).
//!
//! The binaries come from `KUBEBUILDER_ASSETS`, `/usr/local/kubebuilder/bin`, or the project's own
//! build (`hack/control-plane/install`); when none gives them, every test here fails with the reason.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dbt_cloud_simulator::Simulator;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::Value;

/// Writes a line to the real stderr, bypassing libtest's capture (which only captures the
/// `print!` family), so figures and skip notices show in `cargo test` output of passing tests.
pub fn say(line: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[e2e] {}", line.as_ref());
    let _ = err.flush();
}

/// Where the control-plane binaries are, in this order: `KUBEBUILDER_ASSETS` (envtest's
/// convention), `/usr/local/kubebuilder/bin` when it holds them, else the project's own build
/// (`hack/control-plane/install`, which builds them once into a versioned cache and prints the
/// folder). Panics with the reason when none of these gives them: this tier is never skipped.
pub fn assets_dir() -> PathBuf {
    static ASSETS: OnceLock<PathBuf> = OnceLock::new();
    ASSETS.get_or_init(resolve_assets).clone()
}

fn has_control_plane(dir: &Path) -> bool {
    dir.join("kube-apiserver").is_file() && dir.join("etcd").is_file()
}

fn resolve_assets() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            has_control_plane(&dir),
            "KUBEBUILDER_ASSETS={} has no kube-apiserver and etcd: unset it to let the tests build \
             them (hack/control-plane/install), or point it at a folder that has them",
            dir.display()
        );
        return dir;
    }
    let system = PathBuf::from("/usr/local/kubebuilder/bin");
    if has_control_plane(&system) {
        return system;
    }
    let script = repo_root().join("hack/control-plane/install");
    say(format!(
        "no KUBEBUILDER_ASSETS: getting the control plane with {} (a cold build takes minutes)",
        script.display()
    ));
    // Its progress goes straight to our stderr; only the folder comes back on stdout.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "the real-API-server tests need kube-apiserver and etcd, and {} could not provide them \
         (exit {:?}; its reason is printed above). Fix that, or set KUBEBUILDER_ASSETS to a folder \
         holding kube-apiserver, kubectl and etcd.",
        script.display(),
        out.status.code()
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        has_control_plane(&dir),
        "{} printed {}, which has no kube-apiserver and etcd",
        script.display(),
        dir.display()
    );
    dir
}

/// `kubectl`: `KUBECTL` if set, else from the assets directory, else `/usr/bin/kubectl`, else PATH.
pub fn kubectl_bin() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL").filter(|v| !v.is_empty()) {
        return PathBuf::from(k);
    }
    for p in [
        assets_dir().join("kubectl"),
        PathBuf::from("/usr/bin/kubectl"),
    ] {
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("kubectl")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound and released; the servers bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// Kills `pids` (SIGKILL) and removes `dir` when the returned pipe closes — when it is dropped, or
/// when this process ends in any way. The pids must be unreaped children, so they cannot be reused.
struct Reaper {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Reaper {
    fn new(pids: &[u32], dir: Option<&Path>) -> Reaper {
        let mut script = String::from("cat >/dev/null; kill -9");
        for p in pids {
            script.push_str(&format!(" {p}"));
        }
        script.push_str(" 2>/dev/null");
        if let Some(d) = dir {
            script.push_str(&format!("; sleep 0.2; rm -rf '{}'", d.display()));
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn reaper");
        Reaper {
            stdin: child.stdin.take(),
            child,
        }
    }

    /// Fires now and waits for it.
    fn fire(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.fire();
    }
}

fn run_cmd(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The shared etcd + kube-apiserver of this test binary.
pub struct Cluster {
    /// Temporary directory of certificates, tokens, kubeconfigs and data (removed at exit).
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Admin kubeconfig (token in `system:masters`).
    pub kubeconfig: PathBuf,
    /// CA certificate file.
    pub ca_file: PathBuf,
    /// Admin bearer token.
    pub admin_token: String,
    /// Seconds from the first process start to `/readyz` and Established CRDs.
    pub startup_secs: f64,
    _reaper: Mutex<Reaper>,
    _children: Mutex<Vec<Child>>,
}

impl Cluster {
    /// Process ids of the control plane (etcd and kube-apiserver), for profiles.
    pub fn pids(&self) -> Vec<u32> {
        self._children
            .lock()
            .map(|c| c.iter().map(Child::id).collect())
            .unwrap_or_default()
    }
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared cluster of this test binary, started on first use. Panics (failing the test) when
/// the binaries cannot be had or do not start.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| start_cluster(&assets_dir()))
}

fn tmp_base() -> PathBuf {
    // etcd fsyncs a lot; tmpfs makes that free when available.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && std::fs::metadata(&shm).is_ok_and(|m| !m.permissions().readonly()) {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// A random lowercase alphanumeric token (40 characters).
pub fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..40)
        .map(|_| {
            let i = rng.random_range(0..36u32);
            std::char::from_digit(i, 36).unwrap()
        })
        .collect()
}

/// Writes the CA, the serving certificate and key, and the service-account key pair; returns
/// (CA, serving cert, serving key, service-account private key, service-account public key).
fn write_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "dbt-cloud-operator e2e CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().expect("serving key");
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "10.0.0.1".to_string(),
    ])
    .expect("serving params");
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&key, &issuer).expect("serving cert");

    let sa_key = KeyPair::generate().expect("service-account key");

    let ca_file = dir.join("ca.crt");
    let crt = dir.join("apiserver.crt");
    let key_file = dir.join("apiserver.key");
    let sa_file = dir.join("sa.key");
    let sa_pub = dir.join("sa.pub");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&crt, serving_cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&sa_file, sa_key.serialize_pem()).unwrap();
    std::fs::write(&sa_pub, sa_key.public_key_pem()).unwrap();
    (ca_file, crt, key_file, sa_file, sa_pub)
}

/// Writes a kubeconfig for `server` authenticating with `token`.
pub fn write_kubeconfig(path: &Path, server: &str, ca_file: &Path, user: &str, token: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n    namespace: default\ncurrent-context: e2e\n",
        ca = ca_file.display()
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

fn help_has(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(flag)
                || String::from_utf8_lossy(&o.stderr).contains(flag)
        })
        .unwrap_or(false)
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn start_cluster(assets: &Path) -> Cluster {
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("dco-e2e-")
        .tempdir_in(tmp_base())
        .expect("temp dir")
        .keep();
    let (ca_file, crt, key, sa_key, sa_pub) = write_certs(&dir);
    let admin_token = random_token();
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{admin_token},e2e-admin,e2e-admin-uid,\"system:masters\"\n"),
    )
    .unwrap();

    let mut children = Vec::new();
    let mut pids = Vec::new();
    let mut last_err = String::new();
    let mut server = String::new();
    for attempt in 0..3 {
        // Ports are picked free then bound by the servers: retry on the rare race.
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_dir = dir.join(format!("etcd-{attempt}"));
        let etcd_log = dir.join(format!("etcd-{attempt}.log"));
        let etcd_bin = assets.join("etcd");
        let mut etcd = Command::new(&etcd_bin);
        etcd.args([
            "--name=e2e".to_string(),
            format!("--data-dir={}", etcd_dir.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
            "--log-level=warn".to_string(),
        ]);
        if help_has(&etcd_bin, "unsafe-no-fsync") {
            etcd.arg("--unsafe-no-fsync");
        }
        let etcd_child = etcd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&etcd_log).unwrap())
            .stderr(std::fs::File::create(&etcd_log).unwrap())
            .spawn()
            .expect("spawn etcd");
        pids.push(etcd_child.id());
        children.push(etcd_child);

        let api_log = dir.join(format!("kube-apiserver-{attempt}.log"));
        let api_child = Command::new(assets.join("kube-apiserver"))
            .args([
                "--advertise-address=127.0.0.1".to_string(),
                "--bind-address=127.0.0.1".to_string(),
                format!("--secure-port={api_port}"),
                format!("--etcd-servers=http://127.0.0.1:{client_port}"),
                format!("--cert-dir={}", dir.join("cert-dir").display()),
                format!("--tls-cert-file={}", crt.display()),
                format!("--tls-private-key-file={}", key.display()),
                format!("--client-ca-file={}", ca_file.display()),
                format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                "--authorization-mode=Node,RBAC".to_string(),
                "--service-account-issuer=https://kubernetes.default.svc".to_string(),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-cluster-ip-range=10.0.0.0/24".to_string(),
                "--allow-privileged=true".to_string(),
                "--disable-admission-plugins=ServiceAccount".to_string(),
                "--profiling=false".to_string(),
                "--v=0".to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&api_log).unwrap())
            .stderr(std::fs::File::create(&api_log).unwrap())
            .spawn()
            .expect("spawn kube-apiserver");
        pids.push(api_child.id());
        children.push(api_child);

        server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &ca_file, "e2e-admin", &admin_token);

        // /readyz, bounded (60 s).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ready = false;
        while Instant::now() < deadline {
            let n = children.len();
            if children[n - 1].try_wait().ok().flatten().is_some()
                || children[n - 2].try_wait().ok().flatten().is_some()
            {
                break;
            }
            let out = run_cmd(
                Command::new(kubectl_bin())
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .args(["get", "--raw=/readyz", "--request-timeout=2s"]),
            );
            if out.status.success() {
                ready = true;
                break;
            }
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(250));
        }
        if ready {
            break;
        }
        last_err = format!(
            "{last_err}\n--- etcd log ---\n{}\n--- kube-apiserver log ---\n{}",
            tail(&etcd_log, 3000),
            tail(&api_log, 6000)
        );
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        children.clear();
        pids.clear();
        server.clear();
    }
    if server.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        panic!("kube-apiserver did not become ready (3 attempts): {last_err}");
    }
    let reaper = Reaper::new(&pids, Some(&dir));
    let kubeconfig = dir.join("admin.kubeconfig");
    let api_ready = t0.elapsed().as_secs_f64();

    // Every CRD, server-side applied, then Established.
    let out = run_cmd(
        Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["apply", "--server-side", "--field-manager=e2e", "-f"])
            .arg(repo_root().join("crds")),
    );
    assert!(
        out.status.success(),
        "CRDs apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cmd(
        Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ]),
    );
    assert!(
        out.status.success(),
        "CRDs Established: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let startup_secs = t0.elapsed().as_secs_f64();
    say(format!(
        "cluster up: kube-apiserver ready in {api_ready:.1}s, CRDs Established at {startup_secs:.1}s ({server}, assets {})",
        assets.display()
    ));
    Cluster {
        dir,
        server,
        kubeconfig,
        ca_file,
        admin_token,
        startup_secs,
        _reaper: Mutex::new(reaper),
        _children: Mutex::new(children),
    }
}

/// Installs the ring crypto provider (kube 5 needs one) once.
pub fn crypto() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A `kube::Client` from a kubeconfig file (built in the calling test's runtime).
pub async fn client_from(kubeconfig: &Path) -> Client {
    crypto();
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// The default service stack of a `kube::Client` (kube's `GenericService`, which it does not export).
pub type KubeStack = tower::util::BoxService<
    http::Request<kube::client::Body>,
    http::Response<Box<kube::client::DynBody>>,
    tower::BoxError,
>;

/// A `kube::Client` from a kubeconfig file with `layer` around its stack and `namespace` as its
/// default namespace.
pub async fn client_with_layer<L, B>(kubeconfig: &Path, namespace: &str, layer: &L) -> Client
where
    L: tower::Layer<KubeStack>,
    L::Service: tower::Service<
            http::Request<kube::client::Body>,
            Response = http::Response<B>,
            Error = tower::BoxError,
        > + Send
        + 'static,
    <L::Service as tower::Service<http::Request<kube::client::Body>>>::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    crypto();
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    config.default_namespace = namespace.to_string();
    kube::client::ClientBuilder::try_from(config)
        .expect("kube client builder")
        .with_layer(layer)
        .build()
}

/// Result of a `kubectl` call.
#[derive(Debug)]
pub struct Kubectl {
    /// Exit success.
    pub ok: bool,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl Kubectl {
    /// Stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the output unless it succeeded; returns stdout.
    pub fn expect_ok(&self, what: &str) -> &str {
        assert!(
            self.ok,
            "{what} failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Panics unless it failed with `fragment` in its output.
    pub fn expect_err(&self, what: &str, fragment: &str) {
        assert!(!self.ok, "{what} unexpectedly succeeded:\n{}", self.stdout);
        assert!(
            self.stderr.contains(fragment) || self.stdout.contains(fragment),
            "{what}: expected {fragment:?} in the error, got:\n{}",
            self.all()
        );
    }
}

/// Runs kubectl with `kubeconfig`, optional stdin, bounded by `--request-timeout` for API calls.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Kubectl {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = if let Some(input) = stdin {
        let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn kubectl");
        let mut si = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            let _ = si.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("kubectl output");
        let _ = writer.join();
        out
    } else {
        cmd.stdin(Stdio::null()).output().expect("kubectl output")
    };
    Kubectl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Options of an operator process.
#[derive(Clone, Debug)]
pub struct OperatorOpts {
    /// Kubeconfig it uses (admin by default).
    pub kubeconfig: PathBuf,
    /// `--watch-namespaces` (empty: all).
    pub watch_namespaces: Vec<String>,
    /// `--namespace` (operator namespace).
    pub namespace: String,
    /// `--leader-elect` with this `POD_NAME`.
    pub leader: Option<String>,
    /// Lease timings (duration, grace) when electing.
    pub lease: (u64, u64),
    /// Extra arguments.
    pub extra_args: Vec<String>,
    /// `RUST_LOG`, when set.
    pub rust_log: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// An operator process (the real binary). SIGKILLed on drop.
pub struct Operator {
    child: Option<Child>,
    reaper: Option<Reaper>,
    /// Where stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    opts: OperatorOpts,
    sim_url: String,
    /// Processes started so far.
    pub starts: u32,
}

impl Operator {
    /// Starts the operator.
    pub fn start(sim_url: &str, log: PathBuf, opts: OperatorOpts) -> Operator {
        let mut op = Operator {
            child: None,
            reaper: None,
            log,
            opts,
            sim_url: sim_url.to_string(),
            starts: 0,
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbt-cloud-operator"));
        cmd.arg("run")
            .args(["--dev-dbt-cloud-base-url", &self.sim_url])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--poll-tick-millis", "50"])
            // Above twice the 2 s request timeout, as the operator requires: a trigger the loaded
            // simulator answers late is still found by the search rather than sent again
            // (production: 90 s vs 30 s).
            .args(["--trigger-confirm-window-seconds", "8"])
            .args(["--request-timeout-seconds", "2"])
            .args(["--secret-refresh-seconds", "1"])
            .args(["--shutdown-grace-seconds", "3"]);
        if !self.opts.namespace.is_empty() {
            cmd.args(["--namespace", &self.opts.namespace]);
        }
        if !self.opts.watch_namespaces.is_empty() {
            cmd.arg(format!(
                "--watch-namespaces={}",
                self.opts.watch_namespaces.join(",")
            ));
        }
        if let Some(pod) = &self.opts.leader {
            cmd.arg("--leader-elect")
                .arg(format!("--lease-duration-seconds={}", self.opts.lease.0))
                .arg(format!("--lease-grace-seconds={}", self.opts.lease.1))
                .env("POD_NAME", pod);
        }
        cmd.args(&self.opts.extra_args);
        for var in [
            "POD_NAME",
            "POD_NAMESPACE",
            "WATCH_NAMESPACES",
            "LEADER_ELECT",
            "HTTP_ADDR",
            "DEV_DBT_CLOUD_BASE_URL",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "RUST_LOG",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "ALL_PROXY",
        ] {
            if var == "POD_NAME" && self.opts.leader.is_some() {
                continue;
            }
            cmd.env_remove(var);
        }
        if let Some(l) = &self.opts.rust_log {
            cmd.env("RUST_LOG", l);
        } else if let Some(l) = std::env::var_os("E2E_RUST_LOG") {
            // For a post-mortem (with E2E_KEEP=1): the operators' log level.
            cmd.env("RUST_LOG", l);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.env("KUBECONFIG", &self.opts.kubeconfig)
            .env("LOG_FORMAT", "json")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("spawn operator");
        self.reaper = Some(Reaper::new(&[child.id()], None));
        self.child = Some(child);
        self.starts += 1;
    }

    /// Process id of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL (a crash): no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut r) = self.reaper.take() {
            r.fire();
        }
    }

    /// SIGTERM, then waits (bounded: SIGKILL after `wait`); returns the exit status if it exited.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + wait;
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if status.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut r) = self.reaper.take() {
            r.fire();
        }
        status
    }

    /// Starts it again (after [`kill`](Self::kill) or [`terminate`](Self::terminate)).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a simulator on a runtime of its own (two worker threads), so it keeps answering while
/// the test blocks on kubectl.
pub fn start_simulator() -> (tokio::runtime::Runtime, Simulator) {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dbt-cloud-simulator")
            .enable_all()
            .build()
            .expect("simulator runtime");
        let sim = rt.block_on(Simulator::start()).expect("simulator");
        (rt, sim)
    })
    .join()
    .expect("simulator thread")
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.sim.shutdown();
        if let Some(rt) = self.sim_rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Per-test environment: a fresh namespace, a simulator, a client and a temp directory.
pub struct TestEnv {
    /// The shared cluster.
    pub cluster: &'static Cluster,
    /// This test's namespace.
    pub ns: String,
    /// Admin client.
    pub client: Client,
    /// In-process dbt Cloud simulator (on its own runtime, so it answers while the test blocks).
    pub sim: Simulator,
    sim_rt: Option<tokio::runtime::Runtime>,
    /// Temporary directory (operator logs, manifests), removed on drop.
    pub dir: tempfile::TempDir,
    t0: Instant,
}

impl TestEnv {
    /// Sets up a test (a fresh namespace on the shared cluster, a simulator, a temp folder).
    pub async fn new(name: &str) -> TestEnv {
        let cluster = cluster();
        let client = client_from(&cluster.kubeconfig).await;
        let ns = format!("{name}-{}", &random_token()[..6]);
        let out = kubectl_with(&cluster.kubeconfig, &["create", "namespace", &ns], None);
        out.expect_ok("create namespace");
        let (sim_rt, sim) = start_simulator();
        // E2E_KEEP=1 keeps the folder (operator logs, manifests) for a post-mortem.
        let dir = tempfile::Builder::new()
            .prefix(&format!("dco-{name}-"))
            .disable_cleanup(std::env::var_os("E2E_KEEP").is_some())
            .tempdir()
            .expect("temp dir");
        TestEnv {
            cluster,
            ns,
            client,
            sim,
            sim_rt: Some(sim_rt),
            dir,
            t0: Instant::now(),
        }
    }

    /// Seconds since setup.
    pub fn elapsed(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// kubectl as admin, in this test's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Kubectl {
        let mut a = vec!["-n", self.ns.as_str()];
        a.extend_from_slice(args);
        kubectl_with(&self.cluster.kubeconfig, &a, None)
    }

    /// kubectl as admin, in this namespace, with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Kubectl {
        let mut a = vec!["-n", self.ns.as_str()];
        a.extend_from_slice(args);
        kubectl_with(&self.cluster.kubeconfig, &a, Some(input))
    }

    /// `kubectl apply -f -` of YAML (one or more documents) in this namespace.
    pub fn apply(&self, yaml: &str) -> Kubectl {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    /// `kubectl wait --for=condition=<cond> <what> --timeout=<secs>s`.
    pub fn wait_for(&self, what: &str, cond: &str, secs: u64) -> Kubectl {
        self.kubectl(&[
            "wait",
            &format!("--for=condition={cond}"),
            what,
            &format!("--timeout={secs}s"),
        ])
    }

    /// `kubectl get <what> -o json` as JSON.
    pub fn get_json(&self, what: &str) -> Value {
        let out = self.kubectl(&["get", what, "-o", "json"]);
        serde_json::from_str(out.expect_ok(&format!("get {what}"))).expect("json")
    }

    /// Operator options for this test (admin, watching only this namespace).
    pub fn operator_opts(&self) -> OperatorOpts {
        OperatorOpts {
            kubeconfig: self.cluster.kubeconfig.clone(),
            watch_namespaces: vec![self.ns.clone()],
            namespace: self.ns.clone(),
            leader: None,
            lease: (15, 5),
            extra_args: Vec::new(),
            rust_log: None,
            env: Vec::new(),
        }
    }

    /// Starts an operator with `opts`, logging to `<dir>/<log_name>`.
    pub fn operator(&self, log_name: &str, opts: OperatorOpts) -> Operator {
        Operator::start(&self.sim.base_url(), self.dir.path().join(log_name), opts)
    }

    /// A Secret with `apiKey`, and `DbtCloudCredentials` `name` for `account` using it.
    pub fn credentials_yaml(name: &str, secret: &str, account: i64, key: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\ntype: Opaque\nstringData:\n  apiKey: {key}\n---\napiVersion: dbtcloud.io/v1alpha1\nkind: DbtCloudCredentials\nmetadata:\n  name: {name}\nspec:\n  accountId: {account}\n  apiKeySecretRef:\n    name: {secret}\n"
        )
    }

    /// Polls `cond` (bounded by `secs`), panicking with `what` on timeout.
    pub async fn wait_until<F: FnMut() -> bool>(&self, what: &str, secs: u64, mut cond: F) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out after {secs}s waiting for {what}");
    }
}

/// Attempt markers `[dco:<uid>#<n>]` in a trigger cause.
pub fn marker(cause: &str) -> Option<(String, u32)> {
    let start = cause.rfind("[dco:")?;
    let rest = &cause[start + 5..];
    let end = rest.find(']')?;
    let (uid, n) = rest[..end].rsplit_once('#')?;
    Some((uid.to_string(), n.parse().ok()?))
}

/// A condition of an object (`status.conditions[type == t]`).
pub fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

/// Lines of the log that look like a panic.
pub fn panics(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE"))
        .collect()
}
