//! Command line: `run` (the controller), `crds` (print the CRDs), and the user commands.

pub mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// dbt-cloud-operator: run dbt Cloud jobs the Kubernetes way.
///
/// Also installed as the kubectl plugin `kubectl-dbtcloud` (`kubectl dbtcloud ...`).
#[derive(Debug, Parser)]
#[command(name = "dbt-cloud-operator", version, about, long_about = None, propagate_version = true)]
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
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Crds { out_dir } => crds(out_dir),
    }
}

fn crds(out_dir: Option<std::path::PathBuf>) -> ExitCode {
    match out_dir {
        None => {
            print!("{}", crate::crd::yaml());
            ExitCode::SUCCESS
        }
        Some(dir) => {
            for (name, yaml) in crate::crd::files() {
                if let Err(e) = std::fs::write(dir.join(&name), yaml) {
                    eprintln!("error: cannot write {}: {e}", dir.join(&name).display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}
