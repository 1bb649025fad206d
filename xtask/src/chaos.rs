//! `cargo xtask chaos`: the fault-injection suite of highly available allocators
//! (`allocator/tests/chaos.rs`) for longer than `cargo test` runs it, in release: a
//! three-member etcd, three replicas, simulated agents and two frameworks, with the leader
//! killed and paused, agents partitioned and crashed, and an etcd member lost in turn, every
//! update the frameworks receive checked by the history checker.

use anyhow::{Result, ensure};

use crate::util;

/// Arguments of `cargo xtask chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults, in minutes.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Only these faults (comma-separated): kill-leader, pause-leader, partition-agent,
    /// crash-agent, lose-etcd-member.
    #[arg(long)]
    faults: Option<String>,
}

/// Runs the suite for `args.minutes`.
pub fn run(args: &ChaosArgs) -> Result<()> {
    ensure!(
        (1..=24 * 60).contains(&args.minutes),
        "--minutes must be 1 to 1440"
    );
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "strata-allocator",
        "--test",
        "chaos",
        "--",
        "--nocapture",
    ])
    .env("STRATA_CHAOS_SECONDS", (args.minutes * 60).to_string());
    if let Some(faults) = &args.faults {
        cmd.env("STRATA_CHAOS_FAULTS", faults);
    }
    util::run(&mut cmd)
}
