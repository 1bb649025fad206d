//! `cargo xtask chaos`: the fault-injection suite of highly available allocators
//! (`allocator/tests/chaos.rs`) for longer than `cargo test` runs it, in release: a
//! three-member etcd, three replicas, simulated agents and two frameworks, with the leader
//! killed and paused, agents partitioned and crashed, and an etcd member lost in turn, every
//! update the frameworks receive checked by the history checker. With `--real`, the suite of
//! real `strata-agent` processes, each node in a network namespace of its own with real cuts
//! (`allocator/tests/chaos_netns.rs`; root only).

use anyhow::{Result, ensure};

use crate::util;

/// Arguments of `cargo xtask chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults, in minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Only these faults (comma-separated): kill-leader, pause-leader (simulated agents
    /// only), partition-leader-from-etcd (--real only), partition-agent, crash-agent,
    /// lose-etcd-member.
    #[arg(long)]
    faults: Option<String>,
    /// Real agents and etcd members and replicas in network namespaces of their own, with
    /// real network cuts (needs root).
    #[arg(long)]
    real: bool,
}

/// Runs the suite for `args.minutes`.
pub fn run(args: &ChaosArgs) -> Result<()> {
    ensure!(
        (1..=24 * 60).contains(&args.minutes),
        "--minutes must be 1 to 1440"
    );
    let mut cmd = util::cargo();
    if args.real {
        // The suite runs the agent's binary, which `cargo test -p strata-allocator` does not
        // build.
        util::run(util::cargo().args(["build", "--release", "-p", "strata-agent", "--bins"]))?;
    }
    let suite = if args.real { "chaos_netns" } else { "chaos" };
    cmd.args([
        "test",
        "--release",
        "-p",
        "strata-allocator",
        "--test",
        suite,
        "--",
        "--nocapture",
    ])
    .env("STRATA_CHAOS_SECONDS", (args.minutes * 60).to_string());
    if args.real {
        cmd.env("STRATA_CHAOS_NETNS_REQUIRED", "1");
    }
    if let Some(faults) = &args.faults {
        cmd.env("STRATA_CHAOS_FAULTS", faults);
    }
    util::run(&mut cmd)
}
