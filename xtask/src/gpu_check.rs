//! `cargo xtask gpu-check`: the check on a real GPU host (docs/gpu.md).
//!
//! - `--prepare` (here, on a machine without a GPU): builds the release `strata-allocator`,
//!   `strata-agent` and `strata`, strips them into `.gpu-check/` (ignored by git), compiles
//!   `cuda-burn` (a CUDA driver-API workload that needs only the driver: libcuda is opened with
//!   dlopen and its kernel is PTX text) and copies `gpu-check.sh` beside them, then checks the
//!   script's syntax and that the folder is under the 64 MiB a GPU machine is carried.
//! - without it (on the GPU machine, as root): runs `.gpu-check/gpu-check.sh`, which starts
//!   the allocator and agent from there as a user would and checks discovery, isolation,
//!   accounting and that a second GPU task waits for the first.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Where `--prepare` puts what is carried to the GPU machine, relative to the workspace root.
pub const DIR: &str = ".gpu-check";

/// The most a GPU machine is carried.
const MAX_BYTES: u64 = 64 << 20;

/// The scripts and the workload's source, kept in `xtask/gpu-check/`.
const SCRIPT: &str = "gpu-check.sh";
const SCALE_SCRIPT: &str = "scale-check.sh";
/// What both scripts source.
const COMMON_SCRIPT: &str = "common.sh";
const BURN_SOURCE: &str = "cuda-burn.c";

/// The libraries crun needs beyond glibc (the GPU machine has no crun): carried beside it.
const CRUN: &str = "/usr/bin/crun";

/// Arguments of `cargo xtask gpu-check`.
#[derive(Debug, clap::Args)]
pub struct GpuCheckArgs {
    /// Build what the GPU machine needs into .gpu-check/ instead of running the check.
    #[arg(long)]
    pub prepare: bool,
    /// Where the run writes its logs (default /tmp/strata-gpu-check).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &GpuCheckArgs) -> Result<()> {
    let dir = util::workspace_root().join(DIR);
    if args.prepare {
        return prepare(&dir);
    }
    let script = dir.join(SCRIPT);
    if !script.is_file() {
        bail!(
            "{} is missing: run `cargo xtask gpu-check --prepare` on a build machine and carry {DIR}/ here",
            script.display()
        );
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if let Some(out) = &args.out {
        cmd.arg(out);
    }
    util::run(&mut cmd)
}

fn prepare(dir: &Path) -> Result<()> {
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
        "strata",
        "--bin",
        "strata",
        "-p",
        "strata-framework",
        "--example",
        "launch_bench",
        "--example",
        "skeleton_bench",
    ]))?;
    let release = util::target_dir("release");
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for bin in [
        "strata-allocator",
        "strata-agent",
        "strata",
        "examples/launch_bench",
        "examples/skeleton_bench",
    ] {
        let name = bin.trim_start_matches("examples/");
        util::run(
            Command::new("strip")
                .arg("-o")
                .arg(dir.join(name))
                .arg(release.join(bin)),
        )?;
    }
    carry_crun(dir)?;
    let sources = util::workspace_root().join("xtask").join("gpu-check");
    util::run(
        Command::new("cc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-s", "-o"])
            .arg(dir.join("cuda-burn"))
            .arg(sources.join(BURN_SOURCE))
            .arg("-ldl"),
    )?;
    for name in [COMMON_SCRIPT, SCRIPT, SCALE_SCRIPT] {
        let script = dir.join(name);
        std::fs::copy(sources.join(name), &script)
            .with_context(|| format!("cannot copy {name}"))?;
        util::run(Command::new("bash").arg("-n").arg(&script))?;
    }
    util::run(Command::new(dir.join("cuda-burn")).arg("probe"))?;
    let total = report_sizes(dir, dir)?;
    if total > MAX_BYTES {
        bail!(
            "{DIR}/ holds {:.1} MiB, more than the 64 MiB a GPU machine is carried",
            total as f64 / (1024.0 * 1024.0)
        );
    }
    eprintln!(
        "xtask: {DIR}/ is ready ({:.1} MiB): carry it to the GPU machine and run `bash {DIR}/{SCRIPT}` and `bash {DIR}/{SCALE_SCRIPT}` there as root",
        total as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Copies crun into `dir/crun-bin` and the libraries it links beyond glibc (as `ldd` lists
/// them) into `dir/crun-libs`, for launch_bench's comparison on a host without crun. Skipped,
/// with a line saying so, where crun is not installed.
fn carry_crun(dir: &Path) -> Result<()> {
    if !Path::new(CRUN).is_file() {
        eprintln!(
            "xtask: {CRUN} is not installed (cargo xtask setup installs it): scale-check.sh will not compare with crun"
        );
        return Ok(());
    }
    let (bin, libs) = (dir.join("crun-bin"), dir.join("crun-libs"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&libs)?;
    std::fs::copy(CRUN, bin.join("crun")).with_context(|| format!("cannot copy {CRUN}"))?;
    let ldd = Command::new("ldd")
        .arg(CRUN)
        .output()
        .context("cannot run ldd")?;
    let listing = String::from_utf8_lossy(&ldd.stdout);
    for line in listing.lines() {
        // `libyajl.so.2 => /lib/x86_64-linux-gnu/libyajl.so.2 (0x...)`
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        let Some(path) = rest.split_whitespace().next() else {
            continue;
        };
        // glibc's own libraries come from the host: mixing them breaks the loader.
        if [
            "libc.so",
            "libm.so",
            "libpthread.so",
            "libdl.so",
            "librt.so",
        ]
        .iter()
        .any(|glibc| name.starts_with(glibc))
        {
            continue;
        }
        std::fs::copy(path, libs.join(name)).with_context(|| format!("cannot copy {path}"))?;
    }
    Ok(())
}

/// Prints each file's size below `dir` (named from `root`) and returns their sum.
fn report_sizes(root: &Path, dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += report_sizes(root, &entry.path())?;
            continue;
        }
        let len = meta.len();
        eprintln!(
            "xtask: {DIR}/{} {:.1} MiB",
            entry
                .path()
                .strip_prefix(root)
                .unwrap_or(&entry.path())
                .display(),
            len as f64 / (1024.0 * 1024.0)
        );
        total += len;
    }
    Ok(total)
}
