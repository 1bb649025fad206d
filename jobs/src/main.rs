//! `strata-jobs`: the jobs framework. Subscribes to the allocator, serves the control API that
//! `strata job ...` uses, and runs jobs until SIGINT or SIGTERM (their tasks keep running; the
//! next start adopts them).

use std::process::ExitCode;

use clap::Parser;

/// Runs jobs on a Strata cluster, now or on cron schedules.
#[derive(Debug, Parser)]
#[command(name = "strata-jobs", version)]
struct Cli {
    /// The allocator to subscribe to (a URL or host:port).
    #[arg(long, env = "STRATA_ALLOCATOR", default_value = "http://127.0.0.1:5050", value_name = "ADDR", value_parser = strata_common::parse::endpoint)]
    allocator: String,
    #[command(flatten)]
    jobs: strata_jobs::flags::JobsArgs,
}

fn main() -> ExitCode {
    strata_framework_kit::binary::main("strata-jobs", run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli
        .jobs
        .config(cli.allocator, strata_framework::ClientSecurity::from_env());
    let bound = strata_jobs::bind(config).await?;
    println!("strata-jobs: API listening on http://{}", bound.addr());
    bound.run(strata_common::signal::shutdown()).await?;
    Ok(())
}
