//! A batch framework: runs `--tasks` copies of a shell command, packing as many into each offer
//! as fit, prints progress, and exits 0 when all finished (1 with a summary if any failed).
//!
//! ```text
//! strata local &
//! cargo run -p strata-framework --example batch -- --tasks 10 --cmd 'echo hello; sleep 1' --cpus 0.1 --mem 32
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use strata_framework::proto::{TaskReason, TaskState};
use strata_framework::{Event, FrameworkBuilder, OfferExt, ResourceBudget, task};
use tracing_subscriber::EnvFilter;

/// Runs a shell command many times on a Strata cluster.
#[derive(Debug, Parser)]
struct Args {
    /// The allocator to subscribe to.
    #[arg(
        long,
        env = "STRATA_ALLOCATOR",
        default_value = "http://127.0.0.1:5050"
    )]
    allocator: String,
    /// How many tasks to run.
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// The shell command each task runs (with /bin/sh -c).
    #[arg(long, default_value = "echo hello; sleep 1")]
    cmd: String,
    /// CPU cores per task.
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    /// Memory per task, MiB.
    #[arg(long, default_value_t = 32.0)]
    mem: f64,
    /// The framework's name (also the prefix of task ids).
    #[arg(long, default_value = "batch")]
    name: String,
}

/// How often a task the allocator dropped before it ran (its offer vanished) is tried again.
const MAX_RETRIES: u32 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("batch: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (client, mut events) = FrameworkBuilder::new(&args.allocator)
        .name(&args.name)
        .subscribe()
        .await?;
    println!(
        "batch: subscribed as framework {} to {}; {} tasks of `{}` (cpus {} mem {} MiB each)",
        client.framework_id(),
        client.allocator(),
        args.tasks,
        args.cmd,
        args.cpus,
        args.mem
    );

    let task_id = |i: usize| format!("{}-{i}", args.name);
    let mut queue: VecDeque<usize> = (0..args.tasks).collect();
    let mut retries: BTreeMap<usize, u32> = BTreeMap::new();
    let mut finished = 0usize;
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut suppressed = false;
    let mut subscriptions = 0u32;

    while finished + failed.len() < args.tasks {
        let Some(event) = events.recv().await else {
            anyhow::bail!(
                "the framework stopped before all tasks ended ({finished} finished, {} failed)",
                failed.len()
            );
        };
        match event {
            Event::Subscribed { framework_id } => {
                subscriptions += 1;
                if subscriptions > 1 {
                    println!("batch: re-subscribed as {framework_id}; reconciling");
                    client.reconcile(Vec::new()).await?;
                    if !queue.is_empty() {
                        client.revive().await?;
                        suppressed = false;
                    }
                }
            }
            Event::Offers(offers) => {
                for offer in offers {
                    let mut budget = ResourceBudget::of_offer(&offer);
                    let mut batch = Vec::new();
                    while let Some(&i) = queue.front() {
                        let t = task(task_id(i))
                            .shell(&args.cmd)
                            .cpus(args.cpus)
                            .mem(args.mem)
                            .build();
                        if !budget.take(&t.resources) {
                            break;
                        }
                        queue.pop_front();
                        batch.push((i, t));
                    }
                    if batch.is_empty() {
                        // Too small, or nothing left to launch: give it back for a while.
                        let refuse = if queue.is_empty() { 60.0 } else { 1.0 };
                        client.decline(vec![offer.id.clone()], Some(refuse)).await?;
                        continue;
                    }
                    let indexes: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
                    let tasks = batch.into_iter().map(|(_, t)| t).collect();
                    match client.launch(&offer, tasks).await {
                        Ok(()) => println!(
                            "batch: launching {} task(s) on agent {} ({}), offer had cpus {} mem {} MiB; {} left to launch",
                            indexes.len(),
                            offer.agent_id,
                            offer.hostname,
                            offer.cpus(),
                            offer.mem(),
                            queue.len()
                        ),
                        Err(e) => {
                            eprintln!("batch: launch failed, will retry: {e}");
                            for i in indexes.into_iter().rev() {
                                queue.push_front(i);
                            }
                        }
                    }
                }
                if queue.is_empty() && !suppressed {
                    client.suppress().await?;
                    suppressed = true;
                }
            }
            Event::Update(status) => {
                let state = status.state();
                let mut line = format!("batch: {} {}", status.task_id, state.label());
                if !status.message.is_empty() {
                    line.push_str(&format!(": {}", status.message));
                }
                if state.is_terminal() {
                    let index = status
                        .task_id
                        .rsplit('-')
                        .next()
                        .and_then(|n| n.parse::<usize>().ok());
                    let retry = state == TaskState::Dropped
                        && status.reason() == TaskReason::InvalidOffers
                        && index
                            .is_some_and(|i| retries.get(&i).copied().unwrap_or(0) < MAX_RETRIES);
                    if let (true, Some(i)) = (retry, index) {
                        *retries.entry(i).or_default() += 1;
                        queue.push_back(i);
                        client.revive().await?;
                        suppressed = false;
                        line.push_str(" (retrying)");
                    } else if state == TaskState::Finished {
                        finished += 1;
                    } else {
                        failed.insert(status.task_id.clone(), describe(&status));
                    }
                    line.push_str(&format!(
                        "  [{finished} finished, {} failed, {} total]",
                        failed.len(),
                        args.tasks
                    ));
                }
                println!("{line}");
            }
            Event::Failure { agent_id } => println!("batch: agent {agent_id} was lost"),
            Event::Error { message } => eprintln!("batch: the allocator says: {message}"),
            Event::Disconnected { reason } => {
                eprintln!("batch: disconnected from the allocator ({reason}); reconnecting")
            }
            Event::Rescind { .. } | Event::Heartbeat => {}
        }
    }

    client
        .teardown()
        .await
        .context("cannot tear the framework down")?;
    if failed.is_empty() {
        println!("batch: all {finished} tasks finished");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "batch: {finished} of {} tasks finished, {} failed:",
            args.tasks,
            failed.len()
        );
        for (id, why) in &failed {
            println!("  {id}: {why}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn describe(status: &strata_framework::proto::TaskStatus) -> String {
    let mut parts = vec![status.state().label().to_owned()];
    if let Some(code) = status.exit_code {
        parts.push(format!("exit code {code}"));
    }
    if let Some(signal) = status.signal {
        parts.push(format!("signal {signal}"));
    }
    if !status.message.is_empty() {
        parts.push(status.message.clone());
    }
    parts.join(", ")
}
