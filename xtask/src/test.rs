//! `cargo xtask test`: the whole suite, exactly what CI runs: set-up, formatting, clippy, the
//! workspace's unit, integration and end-to-end tests, then the kernel tests in qemu.

use std::time::Instant;

use anyhow::Result;

use crate::util;

/// The guest kernels the suite boots, by Debian package series.
pub const KERNELS: [&str; 2] = ["6.1", "6.12"];

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the qemu kernel test suite.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
}

/// Runs every stage, stopping at the first failure.
pub fn run(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    if !args.no_setup {
        util::run(util::cargo().args(["xtask", "setup"]))?;
    }
    util::run(util::cargo().args(["fmt", "--all", "--check"]))?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests start the real binaries as processes: build them all first.
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::run(util::cargo().args(["test", "--workspace"]))?;
    if !args.no_vm {
        for kernel in KERNELS {
            util::run(util::cargo().args(["xtask", "vm-test", "--kernel", kernel]))?;
        }
    }
    eprintln!(
        "xtask: the whole suite passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
