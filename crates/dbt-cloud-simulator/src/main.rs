//! `dbt-cloud-simulator --listen 127.0.0.1:8089 [--sparse]`: serves the demo data for local
//! experiments.

use std::net::SocketAddr;

use dbt_cloud_simulator::{Seed, Simulator};

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:8089".parse().expect("valid default");
    let mut sparse = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next().and_then(|a| a.parse().ok()) {
                Some(addr) => listen = addr,
                None => {
                    eprintln!("--listen needs an address such as 127.0.0.1:8089");
                    std::process::exit(2);
                }
            },
            "--sparse" => sparse = true,
            "-h" | "--help" => {
                println!("dbt-cloud-simulator [--listen ADDR] [--sparse]\n\nA dbt Cloud API simulator for local demos (default 127.0.0.1:8089).\n--sparse omits absent run fields instead of sending null like dbt Cloud.");
                return;
            }
            other => {
                eprintln!("unknown argument {other}; see --help");
                std::process::exit(2);
            }
        }
    }
    let sim = match Simulator::start_with(Seed::demo(), listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    sim.set_live_nulls(!sparse);
    println!("dbt Cloud simulator at {}", sim.base_url());
    println!("  account 1 \"Demo account\", token dbtc_demo_token");
    println!(
        "  jobs: 100 nightly (succeeds), 101 hourly (succeeds), 102 broken (fails, retry succeeds)"
    );
    println!(
        "  operator: cargo run -- run --dev-dbt-cloud-base-url {}",
        sim.base_url()
    );
    let _ = tokio::signal::ctrl_c().await;
}
