//! `cargo xtask`: the project's automation, so every machine runs the same steps.
//!
//! - `setup`: installs what the build and the tests need (idempotent).
//! - `test`: set-up, lints, the whole test suite (what CI runs).
//! - `vm-test`: kernel integration tests inside a qemu guest.
//! - `fuzz`: the cargo-fuzz targets in `fuzz/`.
//! - `bench`: benchmarks (`skeleton`, ...).
//! - `chaos`: the fault-injection suite of replicated allocators, for N minutes.
//! - `local`: builds and runs `strata local`, optionally with a demo workload.
//! - `gpu-check`: the check on a GPU machine (`--prepare` builds what to carry there).

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bench_accounting;
mod bench_launch;
mod bench_services;
mod chaos;
/// The eBPF build's toolchain pins (`agent-ebpf/toolchain.toml`): the module agent/build.rs reads
/// them with.
#[path = "../../agent-ebpf/toolchain.rs"]
mod ebpf_toolchain;
mod fuzz;
mod gpu_check;
mod local;
mod setup;
mod test;
mod util;
mod vm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Strata's project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and the tests need (apt packages, rustup components, bpf-linker).
    Setup(setup::SetupArgs),
    /// Run the whole test suite: set-up, fmt, clippy, cargo test, the qemu kernel tests.
    Test(test::TestArgs),
    /// Kernel integration tests in a qemu guest.
    VmTest(vm::VmTestArgs),
    /// Run the fuzz targets in fuzz/ (each for a minute unless told otherwise).
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks that run the real binaries in release mode.
    Bench(bench::BenchArgs),
    /// The fault-injection suite of replicated allocators, for longer (`--minutes`).
    Chaos(chaos::ChaosArgs),
    /// Build and run `strata local` (with `--demo`: run a demo workload, show it, stop).
    Local(local::LocalArgs),
    /// The check on a GPU machine (with `--prepare`: build what to carry there into .gpu-check/).
    GpuCheck(gpu_check::GpuCheckArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Test(args) => test::run(&args),
        Command::VmTest(args) => vm::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Chaos(args) => chaos::run(&args),
        Command::Local(args) => local::run(&args),
        Command::GpuCheck(args) => gpu_check::run(&args),
    }
}
