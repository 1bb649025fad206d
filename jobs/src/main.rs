//! `strata-jobs`: the jobs framework. Subscribes to the allocator, serves the control API that
//! `strata job ...` uses, and runs jobs until SIGINT or SIGTERM (their tasks keep running; the
//! next start adopts them).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strata-jobs: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-jobs: {e:#}");
            ExitCode::FAILURE
        }
    }
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
