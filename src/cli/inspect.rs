//! Read-only commands: `status` (credentials), `runs` (job runs), `open` (a run's dbt Cloud page;
//! only an https URL on an allowed dbt Cloud host is printed or opened).

use clap::Args;
use kube::api::{Api, ListParams};

use super::error::{is_not_found, CliError, CliResult};
use super::table::{ellipsize, Table};
use super::terminal::Ctx;
use crate::crd::conditions::READY;
use crate::crd::{
    ClusterDbtCloudCredentials, CredentialsStatus, DbtCloudCredentials, DbtCloudJobRun,
};
use crate::dbt_cloud::{allowed_suffixes_with, AccessHost};

/// Namespace selection of the listing commands.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Namespace to list (default: the kubeconfig context's).
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// List every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
}

impl ScopeArgs {
    fn api<K>(&self, client: &kube::Client) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        if self.all_namespaces {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &self.namespace_or(client))
        }
    }

    fn namespace_or(&self, client: &kube::Client) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string())
    }
}

/// Flags of `open`.
#[derive(Debug, Clone, Args)]
pub struct OpenArgs {
    /// Name of the DbtCloudJobRun.
    pub run: String,
    /// Namespace of the run (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only print the URL; do not start a browser.
    #[arg(long)]
    pub print: bool,
    /// Extra host suffixes (single-tenant dbt Cloud) the URL may point to, besides getdbt.com and
    /// dbt.com. Repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub allowed_host_suffix: Vec<String>,
}

/// `url` parsed, if it is an https URL on an allowed dbt Cloud host (no user info, no port).
/// A run's URL comes from dbt Cloud through the object's status, so anything else is refused
/// before it reaches the terminal or a browser.
pub fn check_run_url(url: &str, allowed_suffixes: &[String]) -> CliResult<url::Url> {
    let refuse = || {
        CliError::new(format!(
            "the run's URL {} is not an https URL on a dbt Cloud host (allowed host suffixes: \
             {}); not opening it. For a single-tenant host, pass --allowed-host-suffix",
            ellipsize(&format!("{url:?}"), 120),
            allowed_suffixes.join(", ")
        ))
    };
    let parsed = url::Url::parse(url).map_err(|_| refuse())?;
    if parsed.scheme() != "https"
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.port().is_some()
    {
        return Err(refuse());
    }
    let host = parsed.host_str().ok_or_else(refuse)?;
    AccessHost::parse(host, allowed_suffixes).map_err(|_| refuse())?;
    Ok(parsed)
}

fn ready_cells(status: Option<&CredentialsStatus>) -> [String; 3] {
    match status.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY)) {
        Some(c) => [
            c.status.clone(),
            c.reason.clone(),
            ellipsize(&c.message, 80),
        ],
        None => ["Unknown".into(), String::new(), String::new()],
    }
}

/// Runs `status`: a table of DbtCloudCredentials (in scope) and ClusterDbtCloudCredentials.
pub async fn status(args: ScopeArgs, client: kube::Client, ctx: &mut Ctx<'_>) -> CliResult {
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "KIND",
        "ACCOUNT",
        "HOST",
        "READY",
        "REASON",
        "MESSAGE",
    ]);
    let namespaced = args
        .api::<DbtCloudCredentials>(&client)
        .list(&ListParams::default())
        .await?;
    for c in namespaced.items {
        let [ready, reason, message] = ready_cells(c.status.as_ref());
        table.row(vec![
            c.metadata.namespace.clone().unwrap_or_default(),
            c.metadata.name.clone().unwrap_or_default(),
            "DbtCloudCredentials".into(),
            c.spec.account_id.to_string(),
            c.spec.host.clone(),
            ready,
            reason,
            message,
        ]);
    }
    match Api::<ClusterDbtCloudCredentials>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for c in list.items {
                let [ready, reason, message] = ready_cells(c.status.as_ref());
                table.row(vec![
                    "(cluster)".into(),
                    c.metadata.name.clone().unwrap_or_default(),
                    "ClusterDbtCloudCredentials".into(),
                    c.spec.account_id.to_string(),
                    c.spec.host.clone(),
                    ready,
                    reason,
                    message,
                ]);
            }
        }
        Err(e) => ctx.note(format!(
            "note: cannot list ClusterDbtCloudCredentials: {}",
            CliError::from(e)
        ))?,
    }
    if table.is_empty() {
        let scope = if args.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", args.namespace_or(&client))
        };
        ctx.note(format!(
            "No dbt Cloud credentials in {scope}. Create some with `login`."
        ))?;
    } else {
        table.write(ctx.out)?;
    }
    Ok(())
}

/// Runs `runs`: a table of DbtCloudJobRuns.
pub async fn runs(args: ScopeArgs, client: kube::Client, ctx: &mut Ctx<'_>) -> CliResult {
    let list = args
        .api::<DbtCloudJobRun>(&client)
        .list(&ListParams::default())
        .await?;
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "JOB",
        "RUN",
        "PHASE",
        "ATTEMPTS",
        "URL",
    ]);
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for r in list.items {
        let s = r.status.clone().unwrap_or_default();
        table.row(vec![
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone().unwrap_or_default(),
            opt(s.job_id.or(r.spec.job.id)),
            opt(s.run_id),
            s.phase.as_str().into(),
            s.attempt_count.to_string(),
            s.run_url.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    if table.is_empty() {
        let scope = if args.all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", args.namespace_or(&client))
        };
        ctx.note(format!("No DbtCloudJobRuns in {scope}."))?;
    } else {
        table.write(ctx.out)?;
    }
    Ok(())
}

/// Runs `open`: prints the run's dbt Cloud URL, and opens it with `launch` when given; a URL that is
/// not https on an allowed dbt Cloud host is refused ([`check_run_url`]) and nothing is launched.
pub async fn open(
    args: OpenArgs,
    client: kube::Client,
    launch: Option<Launcher>,
    ctx: &mut Ctx<'_>,
) -> CliResult {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<DbtCloudJobRun> = Api::namespaced(client, &ns);
    let run = match api.get(&args.run).await {
        Ok(r) => r,
        Err(e) if is_not_found(&e) => {
            return Err(CliError::new(format!(
                "DbtCloudJobRun {ns}/{} not found",
                args.run
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let status = run.status.unwrap_or_default();
    let Some(url) = status.run_url.filter(|u| !u.is_empty()) else {
        return Err(CliError::new(format!(
            "DbtCloudJobRun {ns}/{} has no dbt Cloud URL yet (phase {}{}); it gets one once the \
             run is triggered",
            args.run,
            status.phase.as_str(),
            status
                .status_message
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )));
    };
    let url = check_run_url(&url, &allowed_suffixes_with(&args.allowed_host_suffix))?;
    writeln!(ctx.out, "{url}")?;
    if let (false, Some(launch)) = (args.print, launch) {
        if let Err(e) = launch(url.as_str()) {
            ctx.note(format!(
                "note: could not open a browser ({e}); open the URL above."
            ))?;
        }
    }
    Ok(())
}

/// A function opening a URL in a browser.
pub type Launcher = fn(&str) -> std::io::Result<()>;

/// Opens URLs in the desktop's browser (`open` on macOS, `xdg-open` elsewhere), if there is a
/// desktop; `None` when there is none (e.g. over SSH).
pub fn desktop_opener() -> Option<Launcher> {
    if cfg!(target_os = "macos") {
        Some(|url| spawn("open", url))
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some(|url| spawn("xdg-open", url))
    } else {
        None
    }
}

fn spawn(program: &str, url: &str) -> std::io::Result<()> {
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|_| ())
}
