//! `cargo xtask test`: the whole suite, exactly what CI runs: set-up, formatting, clippy (of the
//! workspace and of the eBPF crate), the workspace's unit, integration and end-to-end tests, a
//! short run of every fuzz target, then the kernel tests in qemu.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::{fuzz, setup, util};

/// The target the eBPF crate is built for (by agent/build.rs through aya-build) and linted for.
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// The guest kernels the suite boots, by Debian package series.
pub const KERNELS: [&str; 2] = ["6.1", "6.12"];

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the qemu kernel test suite.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the short run of the fuzz targets.
    #[arg(long)]
    pub no_fuzz: bool,
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
    util::run(util::cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
    util::run(util::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    lint_ebpf_crate()?;
    // The end-to-end tests start the real binaries as processes: build them all first.
    util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
    util::run(util::cargo().args(["test", "--workspace"]))?;
    if !args.no_fuzz {
        fuzz::run_all(fuzz::TEST_SECONDS)?;
    }
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

/// `cargo fmt --check` and clippy `-D warnings` on `agent-ebpf`, which the workspace excludes:
/// clippy checks it as agent/build.rs builds it, for [`EBPF_TARGET`] with the eBPF nightly and
/// `-Z build-std=core`, in its own target directory (`target/agent-ebpf-lint`; never under
/// `agent-ebpf/`, whose every change reruns the agent's build script).
fn lint_ebpf_crate() -> Result<()> {
    let manifest = Path::new(setup::EBPF_DIR).join("Cargo.toml");
    util::run(
        util::cargo()
            .arg("fmt")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--check"),
    )?;
    let pins = setup::ebpf_pins()?;
    let nightly = setup::ebpf_nightly(&pins)?.with_context(|| {
        format!(
            "no nightly toolchain with LLVM {} to lint the eBPF crate with: run `cargo xtask setup`",
            pins.llvm_major
        )
    })?;
    let mut clippy = Command::new("rustup");
    clippy
        .current_dir(util::workspace_root())
        .args(["run", &nightly, "cargo", "clippy", "--manifest-path"])
        .arg(&manifest)
        .args([
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(util::target_dir("agent-ebpf-lint"))
        .args(["--", "-D", "warnings"])
        // The nightly's own rustc and clippy, whatever cargo runs us (as aya-build does).
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    util::run(&mut clippy)
}
