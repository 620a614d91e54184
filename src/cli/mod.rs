//! Command line: `run` (the controller), `crds` (print the CRDs), and the user commands.
//!
//! The user commands (`login`, `accounts`, `status`, `runs`, `open`, `logout`, `trigger`) take
//! their dependencies as parameters (a `kube::Client`, a dbt Cloud client configuration, a
//! [`terminal::Ctx`]), so tests drive them against a real API server and the dbt Cloud simulator.
//! What they share: [`error`] (their error type), [`terminal`] (where they print and how they
//! ask), [`access`] (how they reach dbt Cloud: API key and host flags, account listing),
//! [`objects`] (what they write to Kubernetes), [`table`] (text tables).

pub mod access;
pub mod accounts;
pub mod error;
pub mod inspect;
pub mod login;
pub mod logout;
pub mod objects;
pub mod run;
pub mod table;
pub mod terminal;
pub mod trigger;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// dbt-cloud-operator: run dbt Cloud jobs the Kubernetes way.
///
/// Also installed as the kubectl plugin `kubectl-dbtcloud` (`kubectl dbtcloud ...`).
#[derive(Debug, Parser)]
#[command(
    name = "dbt-cloud-operator",
    bin_name = invoked_name(),
    version,
    about,
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (in-cluster, or against the current kubeconfig context).
    Run(Box<run::RunArgs>),
    /// Print the CustomResourceDefinitions (YAML), or write one file per CRD with --out-dir.
    ///
    /// The repository keeps three copies, all written by one call:
    /// `crds --out-dir crds --out-dir deploy/crds --out-dir deploy/helm/dbt-cloud-operator/crds`.
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing (repeat it to write
        /// the same files into several directories).
        #[arg(long)]
        out_dir: Vec<std::path::PathBuf>,
    },
    /// Log in to dbt Cloud: validate an API key, pick the account, and store the key as a
    /// Secret plus DbtCloudCredentials (or ClusterDbtCloudCredentials) in the cluster.
    Login(Box<login::LoginArgs>),
    /// List the dbt Cloud accounts an API key can access.
    Accounts(Box<accounts::AccountsArgs>),
    /// Show DbtCloudCredentials and ClusterDbtCloudCredentials and whether they are Ready.
    Status(inspect::ScopeArgs),
    /// List DbtCloudJobRuns: job, run id, phase, attempts, dbt Cloud URL.
    Runs(inspect::ScopeArgs),
    /// Print (and open in a browser) the dbt Cloud page of a DbtCloudJobRun.
    Open(inspect::OpenArgs),
    /// Delete credentials created by `login`, and their Secret.
    Logout(logout::LogoutArgs),
    /// Start a run of a DbtCloudJobTrigger now, from its template (like `kubectl create job
    /// --from=cronjob/NAME`); prints the new DbtCloudJobRun's name.
    Trigger(trigger::TriggerArgs),
}

/// The name shown in usage lines: `kubectl dbtcloud` when run as the kubectl plugin
/// `kubectl-dbtcloud`, else `dbt-cloud-operator`.
pub fn invoked_name() -> String {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    bin_name_for(&argv0.to_string_lossy())
}

/// [`invoked_name`] for a given `argv[0]`.
pub fn bin_name_for(argv0: &str) -> String {
    let file = std::path::Path::new(argv0)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = file.strip_suffix(".exe").unwrap_or(&file);
    match file.strip_prefix("kubectl-") {
        Some(plugin) if !plugin.is_empty() => format!("kubectl {}", plugin.replace('_', "-")),
        _ => "dbt-cloud-operator".to_string(),
    }
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Crds { out_dir } => crds(out_dir),
        user => user_command(user).await,
    }
}

/// Runs a user command on the real terminal and kubeconfig.
async fn user_command(command: Command) -> ExitCode {
    use std::io::IsTerminal;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut prompt = terminal::TerminalPrompt;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let mut ctx = terminal::Ctx {
        out: &mut out,
        err: &mut err,
        prompt: &mut prompt,
        interactive,
    };
    let kube = || async {
        kube::Client::try_default().await.map_err(|e| {
            format!(
                "cannot build a Kubernetes client from the kubeconfig (or in-cluster config): {e}"
            )
        })
    };
    let result = match command {
        Command::Login(args) => {
            let config = args.dbt.client_config();
            login::login(*args, kube().await, config, &mut ctx).await
        }
        Command::Accounts(args) => {
            let config = args.dbt.client_config();
            accounts::accounts(*args, kube().await, config, &mut ctx).await
        }
        Command::Status(args) => match kube().await {
            Ok(client) => inspect::status(args, client, &mut ctx).await,
            Err(e) => Err(error::CliError(e)),
        },
        Command::Runs(args) => match kube().await {
            Ok(client) => inspect::runs(args, client, &mut ctx).await,
            Err(e) => Err(error::CliError(e)),
        },
        Command::Open(args) => match kube().await {
            Ok(client) => inspect::open(args, client, inspect::desktop_opener(), &mut ctx).await,
            Err(e) => Err(error::CliError(e)),
        },
        Command::Logout(args) => match kube().await {
            Ok(client) => logout::logout(args, client, &mut ctx).await,
            Err(e) => Err(error::CliError(e)),
        },
        Command::Trigger(args) => match kube().await {
            Ok(client) => trigger::trigger(args, client, &mut ctx).await,
            Err(e) => Err(error::CliError(e)),
        },
        Command::Run(_) | Command::Crds { .. } => unreachable!("handled by dispatch"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn crds(out_dirs: Vec<std::path::PathBuf>) -> ExitCode {
    if out_dirs.is_empty() {
        print!("{}", crate::crd::yaml());
        return ExitCode::SUCCESS;
    }
    let files = crate::crd::files();
    for dir in &out_dirs {
        for (name, yaml) in &files {
            if let Err(e) = std::fs::write(dir.join(name), yaml) {
                eprintln!("error: cannot write {}: {e}", dir.join(name).display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
