//! `strata-services`: the services framework. Subscribes to the allocator, serves the control
//! API that `strata app ...` uses, and keeps apps until SIGINT or SIGTERM (their instances keep
//! running; the next start reconciles them).

use std::process::ExitCode;

use clap::Parser;

/// Keeps long-running apps on a Strata cluster at their instance count with healthy instances.
#[derive(Debug, Parser)]
#[command(name = "strata-services", version)]
struct Cli {
    /// The allocator to subscribe to (a URL or host:port).
    #[arg(long, env = "STRATA_ALLOCATOR", default_value = "http://127.0.0.1:5050", value_name = "ADDR", value_parser = strata_common::parse::endpoint)]
    allocator: String,
    #[command(flatten)]
    services: strata_services::flags::ServicesArgs,
}

fn main() -> ExitCode {
    strata_framework_kit::binary::main("strata-services", run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli
        .services
        .config(cli.allocator, strata_framework::ClientSecurity::from_env());
    let bound = strata_services::bind(config).await?;
    println!("strata-services: API listening on http://{}", bound.addr());
    bound.run(strata_common::signal::shutdown()).await?;
    Ok(())
}
