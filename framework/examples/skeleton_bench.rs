//! The framework behind `cargo xtask bench skeleton`: launches `--tasks` copies of a command as
//! fast as offers allow and reports the launch rate and the ACCEPT-to-TASK_RUNNING latency.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use strata_framework::{Event, FrameworkBuilder, offer_cpus, offer_mem, task};
use strata_proto::{Offer, TaskState};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:5050")]
    allocator: String,
    #[arg(long, default_value_t = 1000)]
    tasks: u32,
    #[arg(long, default_value = "true")]
    cmd: String,
    #[arg(long, default_value_t = 0.01)]
    cpus: f64,
    #[arg(long, default_value_t = 4.0)]
    mem: f64,
    /// A hard CPU limit for each task, in cores (cpu.max / CFS quota, set before it starts).
    #[arg(long)]
    cpu_limit: Option<f64>,
    /// At most this many tasks launched and not yet ended (0: as many as offers fit).
    #[arg(long, default_value_t = 0)]
    max_in_flight: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (client, mut events) = FrameworkBuilder::new(&args.allocator)
        .name("skeleton-bench")
        .subscribe()
        .await
        .context("cannot subscribe")?;

    let max_in_flight = if args.max_in_flight == 0 {
        u32::MAX
    } else {
        args.max_in_flight
    };
    let mut next = 0u32;
    let mut held: Vec<Offer> = Vec::new();
    let mut accepted_at: HashMap<String, Instant> = HashMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.tasks as usize);
    let mut finished = 0u32;
    let mut failed = 0u32;
    let mut first_accept: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);

    while finished + failed < args.tasks {
        // Launch into the offers held, as far as the in-flight bound allows.
        while next < args.tasks && next - finished - failed < max_in_flight {
            let Some(offer) = held.pop() else { break };
            let fit = ((offer_cpus(&offer) / args.cpus).floor())
                .min((offer_mem(&offer) / args.mem).floor())
                .max(0.0) as u32;
            let room = max_in_flight - (next - finished - failed);
            let count = fit.min(args.tasks - next).min(room);
            if count == 0 {
                client.decline(vec![offer.id.clone()], Some(0.0)).await?;
                continue;
            }
            let tasks: Vec<_> = (next..next + count)
                .map(|i| {
                    let t = task(format!("t{i}"))
                        .shell(&args.cmd)
                        .cpus(args.cpus)
                        .mem(args.mem);
                    match args.cpu_limit {
                        Some(cores) => t.cpu_limit(cores),
                        None => t,
                    }
                    .build()
                })
                .collect();
            next += count;
            let now = Instant::now();
            first_accept.get_or_insert(now);
            for t in &tasks {
                accepted_at.insert(t.task_id.clone(), now);
            }
            client.launch(&offer, tasks).await?;
        }
        // Every task launched: offers go back (for an hour), so other frameworks get them.
        if next >= args.tasks && !held.is_empty() {
            let ids = held.drain(..).map(|o| o.id).collect();
            client.decline(ids, Some(3600.0)).await?;
        }
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .context("the benchmark did not finish within 10 minutes")?
            .context("the framework's event stream ended")?;
        match event {
            Event::Offers(offers) => held.extend(offers),
            Event::Rescind { offer_id } => held.retain(|o| o.id != offer_id),
            Event::Update(status) => match status.state() {
                TaskState::Running => {
                    if let Some(at) = accepted_at.get(&status.task_id) {
                        latencies.push(at.elapsed());
                    }
                }
                TaskState::Finished => finished += 1,
                state if state.is_terminal() => {
                    failed += 1;
                    eprintln!(
                        "task {} ended {}: {}",
                        status.task_id,
                        state.label(),
                        status.message
                    );
                }
                _ => {}
            },
            Event::Error { message } => bail!("allocator error: {message}"),
            _ => {}
        }
    }
    let wall = first_accept.map(|t| t.elapsed()).unwrap_or_default();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1e3
    };
    let bound = if args.max_in_flight == 0 {
        "as many in flight as offers fit".to_owned()
    } else {
        format!("at most {} in flight", args.max_in_flight)
    };
    println!(
        "skeleton benchmark: {} tasks of `{}`, {bound}",
        args.tasks, args.cmd
    );
    println!(
        "  finished {finished}, failed {failed}, wall {:.2} s",
        wall.as_secs_f64()
    );
    println!(
        "  throughput: {:.0} tasks/s (launched and finished)",
        f64::from(finished + failed) / wall.as_secs_f64()
    );
    println!(
        "  ACCEPT -> TASK_RUNNING: median {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} tasks",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        latencies.len()
    );
    client.teardown().await.ok();
    if failed > 0 {
        bail!("{failed} tasks did not finish");
    }
    Ok(())
}
