use std::process::ExitCode;

use clap::Parser;
use dbt_cloud_operator::cli::{dispatch, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    // One TLS crypto provider for kube and reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    dispatch(Cli::parse()).await
}
