//! `cargo xtask bench NAME`: benchmarks that run the real binaries, built in release mode.
//!
//! - `skeleton`: tasks launched per second through a real allocator and agent for `true`, and
//!   the latency from ACCEPT to TASK_RUNNING (median, p99), over `--tasks` tasks.
//! - `launch`: an isolated `/bin/true` through the containerizer, against crun and runc.
//! - `allocator`: the allocator core alone (`allocator-core/benches/allocator.rs`).
//! - `accounting`: the agent's own CPU and memory, the eBPF programs' run time and the on-CPU
//!   precision with 200 and 1,000 running tasks (`bench_accounting.rs`).
//! - `network`: egress limits in the qemu guest (`vm-tests/src/egress.rs`, `bench_network`):
//!   the rate achieved under EDT limits of 10, 100 and 1,000 Mbit/s, and the p50/p99 round trip
//!   of a small request/response flow next to a bulk sender not limited, limited by EDT and by
//!   tc htb. Software emulation (TCG): about a minute, and emulated-machine numbers.
//! - `services`: strata-services deploying `--instances` (1,000) instances on one agent to all
//!   healthy, then a rolling upgrade of them (`bench_services.rs`).
//! - `mesos`: the Mesos v1 scheduler HTTP API against gRPC: offers per second and
//!   ACCEPT-to-TASK_RUNNING latency (`allocator/benches/mesos.rs`); with `--tls`, again with
//!   TLS and authentication on, with the ratios.
//! - `failover`: three allocator replicas on a real etcd, simulated agents with running tasks
//!   and a framework: kill -9 of the leader to the first offer of the next and to every agent
//!   re-registered, median and worst (`allocator/benches/failover.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        /// Run it twice, plain and then with TLS and authentication on everywhere (the
        /// allocator's certificate, client CA, tokens and ACLs; the agent's certificate; the
        /// framework's token), to compare their costs.
        #[arg(long)]
        tls: bool,
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
    /// Egress limits in the qemu guest: the rate achieved under EDT limits of 10, 100 and
    /// 1,000 Mbit/s, and a small request/response flow's latency next to a bulk sender not
    /// limited, limited by EDT and limited by tc htb.
    Network {
        /// The guest kernel (a key of vm-tests/kernels.lock).
        #[arg(long, default_value = "6.12")]
        kernel: String,
    },
    /// strata-services: from `strata app deploy` of N instances on one agent to all healthy,
    /// and a rolling upgrade of them (goal: under 30 s for 1,000).
    Services {
        /// How many instances.
        #[arg(long, default_value_t = 1000)]
        instances: u32,
    },
    /// The web dashboard in chromium with simulated agents and tasks: page load and
    /// per-update times (docs/ui.md).
    Ui {
        /// Passed to the benchmark: AGENTS TASKS (default 1000 10000).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Mesos HTTP API against gRPC, in one run: offers/s and ACCEPT-to-RUNNING latency.
    Mesos {
        /// Passed to the benchmark, e.g. --agents 50 --seconds 5 --launches 1000; --tls
        /// measures again with TLS and authentication on and gives the ratios.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Highly available allocators on a real etcd: kill -9 of the leader to the first offer of
    /// the next and to every agent re-registered, with simulated agents over real gRPC.
    Failover {
        /// Passed to the benchmark, e.g. --agents 100 --tasks 1000 --rounds 10 --ttl 2s.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Kills the processes it holds when dropped.
pub(crate) struct Processes(pub(crate) Vec<Child>);

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
        Bench::Skeleton { tasks, cmd, tls } => {
            skeleton(*tasks, cmd, false)?;
            if *tls {
                skeleton(*tasks, cmd, true)?;
            }
            Ok(())
        }
        Bench::Launch { tasks } => crate::bench_launch::launch(*tasks),
        Bench::Services { instances } => crate::bench_services::services(*instances),
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
        Bench::Network { kernel } => crate::vm::run(&crate::vm::VmTestArgs {
            kernel: Some(kernel.clone()),
            relock: false,
            timeout: 900,
            filters: vec!["egress_bench_network".to_owned()],
        }),
        Bench::Ui { args } => util::run(
            util::cargo()
                .args(["bench", "-p", "strata-allocator", "--bench", "ui", "--"])
                .args(args),
        ),
        Bench::Mesos { args } => util::run(
            util::cargo()
                .args(["bench", "-p", "strata-allocator", "--bench", "mesos", "--"])
                .args(args),
        ),
        Bench::Failover { args } => util::run(
            util::cargo()
                .args([
                    "bench",
                    "-p",
                    "strata-allocator",
                    "--bench",
                    "failover",
                    "--",
                ])
                .args(args),
        ),
    }
}

/// Builds the release `strata-allocator`, `strata-agent` and `skeleton_bench` framework that
/// the skeleton and accounting benchmarks run; their directory.
pub fn build_release_binaries() -> Result<PathBuf> {
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
    Ok(util::target_dir("release"))
}

/// Starts the release `strata-allocator` of `bin` listening on `listen`, with its work dir in
/// `work_dir/allocator`, logging warnings (to stderr) and its standard output to `stdout`.
pub fn spawn_allocator(bin: &Path, listen: &str, work_dir: &Path, stdout: Stdio) -> Result<Child> {
    Command::new(bin.join("strata-allocator"))
        .args(["--listen", listen, "--work-dir"])
        .arg(work_dir.join("allocator"))
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .spawn()
        .context("cannot start strata-allocator")
}

/// The files of a TLS run: a CA, the allocator's and the agent's certificates, the
/// framework's token, ACLs allowing the agent and the framework what they do.
struct TlsFiles {
    ca: PathBuf,
    allocator_flags: Vec<String>,
    agent_flags: Vec<String>,
    token: String,
}

fn tls_files(dir: &Path) -> Result<TlsFiles> {
    use strata_auth::{certs, credentials};
    let pki = dir.join("pki");
    let ca = certs::init_ca(&pki)?.cert;
    let server = certs::issue(&pki, "allocator", &["127.0.0.1".into()])?;
    let agent = certs::issue(&pki, "agent-1", &[])?;
    let creds = dir.join("credentials.toml");
    let token = credentials::create_token(&creds, "bench")?;
    let acls = dir.join("acls.toml");
    std::fs::write(
        &acls,
        "[[allow]]\nprincipals = [\"agent-1\"]\nactions = [\"register_agents\"]\n\n\
         [[allow]]\nprincipals = [\"bench\"]\nactions = [\"register_frameworks\", \"run_tasks\"]\n",
    )?;
    let path = |p: &Path| p.display().to_string();
    Ok(TlsFiles {
        allocator_flags: vec![
            "--tls-cert".into(),
            path(&server.cert),
            "--tls-key".into(),
            path(&server.key),
            "--tls-client-ca".into(),
            path(&ca),
            "--credentials".into(),
            path(&creds),
            "--acls".into(),
            path(&acls),
        ],
        agent_flags: vec![
            "--tls-ca".into(),
            path(&ca),
            "--tls-cert".into(),
            path(&agent.cert),
            "--tls-key".into(),
            path(&agent.key),
        ],
        ca,
        token,
    })
}

fn skeleton(tasks: u32, cmd: &str, tls: bool) -> Result<()> {
    let bin = build_release_binaries()?;
    let listen = util::free_loopback_addr()?;
    let work_dir = util::workspace_root().join("target").join("bench-skeleton");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;
    let tls = tls.then(|| tls_files(&work_dir)).transpose()?;
    let allocator = match tls {
        Some(_) => format!("https://{listen}"),
        None => format!("http://{listen}"),
    };
    eprintln!(
        "== skeleton: {}",
        if tls.is_some() {
            "TLS and authentication on (certificates, token, ACLs)"
        } else {
            "plain gRPC, no authentication"
        }
    );

    let mut procs = Processes(Vec::new());
    let mut allocator_cmd = Command::new(bin.join("strata-allocator"));
    allocator_cmd
        .args(["--listen", &listen, "--work-dir"])
        .arg(work_dir.join("allocator"))
        .args(["--mesos-listen", "none", "--metrics-listen", "none"])
        .env("RUST_LOG", "warn");
    if let Some(tls) = &tls {
        allocator_cmd.args(&tls.allocator_flags);
    }
    procs.0.push(
        allocator_cmd
            .spawn()
            .context("cannot start strata-allocator")?,
    );
    util::wait_for_port(&listen, "strata-allocator", Duration::from_secs(20))?;
    let mut agent_cmd = Command::new(bin.join("strata-agent"));
    util::dev_cgroup_placement(&mut agent_cmd)
        .args(["--allocator", &allocator, "--work-dir"])
        .arg(work_dir.join("agent"))
        .args(["--http-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn");
    if let Some(tls) = &tls {
        agent_cmd.args(&tls.agent_flags);
    }
    procs
        .0
        .push(agent_cmd.spawn().context("cannot start strata-agent")?);
    // Throughput: as many tasks in flight as offers fit. Latency alone: one task at a time.
    for max_in_flight in ["0", "1"] {
        let mut framework = Command::new(bin.join("examples").join("skeleton_bench"));
        for var in ["STRATA_CA", "STRATA_CERT", "STRATA_KEY", "STRATA_TOKEN"] {
            framework.env_remove(var);
        }
        if let Some(tls) = &tls {
            framework
                .env("STRATA_CA", &tls.ca)
                .env("STRATA_TOKEN", &tls.token);
        }
        let status = framework
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
