//! `cargo xtask bench NAME`: benchmarks that run the real binaries, built in release mode.
//!
//! - `skeleton`: tasks launched per second through a real allocator and agent for `true`, and
//!   the latency from ACCEPT to TASK_RUNNING (median, p99), over `--tasks` tasks.
//! - `launch`: an isolated `/bin/true` through the containerizer, against crun and runc.
//! - `allocator`: the allocator core alone (`allocator-core/benches/allocator.rs`).
//! - `accounting`: the agent's own CPU and memory, the eBPF programs' run time and the on-CPU
//!   precision with 200 and 1,000 running tasks (`bench_accounting.rs`).
//! - `mesos`: the Mesos v1 scheduler HTTP API against gRPC: offers per second and
//!   ACCEPT-to-TASK_RUNNING latency (`allocator/benches/mesos.rs`).

use std::net::TcpListener;
use std::process::{Child, Command};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub bench: Bench,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Launch throughput and ACCEPT-to-RUNNING latency through allocator and agent.
    Skeleton {
        /// How many tasks to launch.
        #[arg(long, default_value_t = 2000)]
        tasks: u32,
        /// The command each task runs.
        #[arg(long, default_value = "true")]
        cmd: String,
    },
    /// Launch latency of an isolated /bin/true: strata's containerizer vs crun and runc.
    Launch {
        /// How many launches per runtime.
        #[arg(long, default_value_t = 1000)]
        tasks: u32,
    },
    /// What per-task accounting costs the agent at 200 and 1,000 running tasks: its CPU and
    /// RSS, the eBPF programs' run time, the on-CPU precision.
    Accounting {
        /// How long each step is measured (at least 10 s).
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// The allocator core alone: full rounds at 10,000 and 50,000 agents, adding agents,
    /// tasks placed per second in a simulated cluster.
    Allocator {
        /// Passed to the benchmark, e.g. --agents 10000,50000 --rounds 5 --sim-seconds 3.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Mesos HTTP API against gRPC, in one run: offers/s and ACCEPT-to-RUNNING latency.
    Mesos {
        /// Passed to the benchmark, e.g. --agents 50 --seconds 5 --launches 1000.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Kills the processes it holds when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.0 {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the chosen benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.bench {
        Bench::Skeleton { tasks, cmd } => skeleton(*tasks, cmd),
        Bench::Launch { tasks } => crate::bench_launch::launch(*tasks),
        Bench::Accounting { seconds } => crate::bench_accounting::accounting(*seconds),
        Bench::Allocator { args } => util::run(
            util::cargo()
                .args([
                    "bench",
                    "-p",
                    "strata-allocator-core",
                    "--bench",
                    "allocator",
                    "--",
                ])
                .args(args),
        ),
        Bench::Mesos { args } => util::run(
            util::cargo()
                .args(["bench", "-p", "strata-allocator", "--bench", "mesos", "--"])
                .args(args),
        ),
    }
}

/// Waits until something accepts connections on `addr` (the allocator is up).
fn wait_for_port(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} 20 s after starting strata-allocator");
        }
        sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn skeleton(tasks: u32, cmd: &str) -> Result<()> {
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "strata-allocator",
        "--bin",
        "strata-allocator",
        "-p",
        "strata-agent",
        "--bin",
        "strata-agent",
        "-p",
        "strata-framework",
        "--example",
        "skeleton_bench",
    ]))?;
    let bin = util::target_dir("release");
    let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let allocator = format!("http://{listen}");
    let work_dir = util::workspace_root().join("target").join("bench-skeleton");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;

    let mut procs = Processes(Vec::new());
    procs.0.push(
        Command::new(bin.join("strata-allocator"))
            .args(["--listen", &listen, "--work-dir"])
            .arg(work_dir.join("allocator"))
            .env("RUST_LOG", "warn")
            .spawn()
            .context("cannot start strata-allocator")?,
    );
    wait_for_port(&listen)?;
    procs.0.push(
        util::dev_cgroup_placement(&mut Command::new(bin.join("strata-agent")))
            .args(["--allocator", &allocator, "--work-dir"])
            .arg(work_dir.join("agent"))
            .args(["--http-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .spawn()
            .context("cannot start strata-agent")?,
    );
    // Throughput: as many tasks in flight as offers fit. Latency alone: one task at a time.
    for max_in_flight in ["0", "1"] {
        let status = Command::new(bin.join("examples").join("skeleton_bench"))
            .args([
                "--allocator",
                &allocator,
                "--tasks",
                &tasks.to_string(),
                "--cmd",
                cmd,
            ])
            .args(["--max-in-flight", max_in_flight])
            .status()
            .context("cannot start the skeleton_bench framework")?;
        if !status.success() {
            bail!("the skeleton benchmark failed: {status}");
        }
    }
    drop(procs);
    Ok(())
}
