//! `strata`, the operator CLI: `strata local` runs an allocator and an agent in this process;
//! `strata run` runs one task; `strata agents|frameworks|ps` show the cluster.

// First: the out! and outln! macros are used by the modules below.
#[macro_use]
mod out;

mod admin;
mod app;
mod args;
mod duration;
mod job;
mod local;
mod local_secure;
mod logs;
mod operator;
mod profile;
mod render;
mod run;
mod security;
mod top;
mod usage;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let (cli, settings) = match args::parse_command_line(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    if let Command::Local(local) = &cli.command
        && local.print_config
    {
        return match out!("{settings}") {
            Err(e) if !out::is_stdout_closed(&e) => {
                eprintln!("strata: {e:#}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    // `local` shows what the allocator and agent do; other commands keep their output clean
    // (the SDK's reconnect warnings are printed by `strata run` in its own words).
    let default_level = match cli.command {
        Command::Local(_) => "info",
        _ => "warn,strata_framework=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
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
            eprintln!(
                "strata: cannot start the async runtime: {e}: check the process limits (ulimit -u)"
            );
            return ExitCode::from(1);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    let allocator = cli.target();
    let (result, failure_code) = match cli.command {
        Command::Local(args) => (local::local(*args).await.map(|()| 0), 1),
        Command::Run(args) => (run::run(&allocator, args).await, run::EXIT_STRATA),
        Command::Agents(args) => (operator::agents(&allocator, &args).await.map(|()| 0), 1),
        Command::Frameworks(args) => (operator::frameworks(&allocator, &args).await.map(|()| 0), 1),
        Command::Ps(args) => (operator::ps(&allocator, &args).await.map(|()| 0), 1),
        Command::Quota(args) => (admin::quota(&allocator, args).await.map(|()| 0), 1),
        Command::Weights(args) => (admin::weights(&allocator, args).await.map(|()| 0), 1),
        Command::Roles(args) => (admin::roles(&allocator, args).await.map(|()| 0), 1),
        Command::Reservations(args) => (admin::reservations(&allocator, args).await.map(|()| 0), 1),
        Command::Reserve(args) => (admin::reserve(&allocator, args, true).await.map(|()| 0), 1),
        Command::Unreserve(args) => (admin::reserve(&allocator, args, false).await.map(|()| 0), 1),
        Command::Agent(args) => (admin::agent(&allocator, args).await.map(|()| 0), 1),
        Command::Framework(args) => (admin::framework(&allocator, args).await.map(|()| 0), 1),
        Command::Watch => (admin::watch(&allocator).await.map(|()| 0), 1),
        Command::Usage(args) => (usage::usage(&allocator, args).await.map(|()| 0), 1),
        Command::Top(args) => (top::top(&allocator, args).await.map(|()| 0), 1),
        Command::Profile(args) => (profile::profile(&allocator, args).await.map(|()| 0), 1),
        Command::Logs(args) => (logs::logs(&allocator, args).await.map(|()| 0), 1),
        Command::Job(args) => (
            job::job(args, allocator.security.token.clone())
                .await
                .map(|()| 0),
            1,
        ),
        Command::App(args) => (
            app::app(args, allocator.security.token.clone())
                .await
                .map(|()| 0),
            1,
        ),
        Command::Certs(args) => (security::certs(args).map(|()| 0), 1),
        Command::Token(args) => (security::token(args).map(|()| 0), 1),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader of stdout went away (`strata ps | head -1`): it has what it wanted.
        Err(e) if out::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::from(failure_code)
        }
    }
}
