//! `cargo xtask fuzz [--minutes N | --seconds S] [TARGET...]`: the cargo-fuzz targets in
//! `fuzz/` (see `fuzz/README.md`), built once, then run one after the other; a crash, a timeout
//! or an out-of-memory fails the command and leaves the input under `fuzz/artifacts/TARGET/`.
//! `cargo xtask test` runs every target briefly ([`TEST_SECONDS`] each).
//!
//! The targets are built with the eBPF build's nightly (cargo-fuzz needs one; the same
//! toolchain, so nothing new is downloaded), optimized, with debug assertions and overflow
//! checks, and without a sanitizer: the code under test is safe Rust (the one module with
//! `unsafe`, `agent/src/sys.rs`, is not reached), so what is looked for is panics, overflows,
//! unbounded allocations and slow inputs, and AddressSanitizer would only halve the speed.
//! Each run grows the corpus in `fuzz/corpus/TARGET` (ignored by git) from the committed seeds
//! in `fuzz/seeds/TARGET`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

/// The targets and the longest input each is given (libFuzzer's `-max_len`): what its
/// format needs with room to spare, small enough that every input runs in microseconds.
pub const TARGETS: [(&str, usize); 6] = [
    ("mesos_call", 8192),
    ("recordio", 4096),
    ("proto_messages", 8192),
    ("accept", 4096),
    ("agent_checkpoint", 4096),
    ("agent_cgroup_files", 4096),
];

/// Seconds per target when `cargo xtask test` runs them.
pub const TEST_SECONDS: u64 = 25;

/// The memory a target may use before libFuzzer calls it an out-of-memory crash.
const RSS_LIMIT_MB: u32 = 2048;

/// Seconds one input may take before libFuzzer calls it a timeout.
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// The cargo-fuzz project, relative to the workspace root.
pub const FUZZ_DIR: &str = "fuzz";

/// Arguments of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Run each target this many minutes.
    #[arg(long, conflicts_with = "seconds")]
    pub minutes: Option<u64>,
    /// Run each target this many seconds (default 60).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// The targets to run (default: all of them).
    pub targets: Vec<String>,
}

/// What one run reported at its end (libFuzzer's final `cov:`/`ft:` line and its stats).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunStats {
    /// Coverage: the instrumented edges reached.
    pub cov: Option<u64>,
    /// Features: edges with hit counts, compares, ...
    pub ft: Option<u64>,
    /// Inputs in the corpus.
    pub corpus: Option<u64>,
    /// Inputs run.
    pub execs: Option<u64>,
    /// Inputs run per second, on average.
    pub execs_per_sec: Option<u64>,
}

impl RunStats {
    /// Reads one line of libFuzzer's output into the stats.
    fn read(&mut self, line: &str) {
        if let Some(v) = stat(line, "stat::number_of_executed_units:") {
            self.execs = Some(v);
        } else if let Some(v) = stat(line, "stat::average_exec_per_sec:") {
            self.execs_per_sec = Some(v);
        } else if line.starts_with('#') {
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                let slot = match word {
                    "cov:" => &mut self.cov,
                    "ft:" => &mut self.ft,
                    "corp:" => &mut self.corpus,
                    _ => continue,
                };
                if let Some(v) = words
                    .next()
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.parse().ok())
                {
                    *slot = Some(v);
                }
            }
        }
    }
}

fn stat(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?.trim().parse().ok()
}

/// Runs `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let seconds = match (args.minutes, args.seconds) {
        (Some(m), _) => m * 60,
        (None, Some(s)) => s,
        (None, None) => 60,
    };
    let targets = selected(&args.targets)?;
    run_targets(&targets, seconds, true)
}

/// Builds every target and runs each for `seconds`: what `cargo xtask test` does.
pub fn run_all(seconds: u64) -> Result<()> {
    let targets: Vec<_> = TARGETS.to_vec();
    run_targets(&targets, seconds, false)
}

fn selected(names: &[String]) -> Result<Vec<(&'static str, usize)>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            TARGETS
                .iter()
                .find(|(t, _)| t == name)
                .copied()
                .with_context(|| {
                    let known: Vec<_> = TARGETS.iter().map(|(t, _)| *t).collect();
                    format!(
                        "no fuzz target {name:?}: the targets are {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

fn run_targets(targets: &[(&'static str, usize)], seconds: u64, verbose: bool) -> Result<()> {
    setup::ensure_cargo_fuzz(false)?;
    let nightly = nightly()?;
    let started = Instant::now();
    util::run(cargo_fuzz(&nightly).arg("build").args(BUILD_FLAGS))?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let scratch = Scratch::new()?;
    let mut results = Vec::new();
    for &(target, max_len) in targets {
        let stats = run_target(&nightly, target, max_len, seconds, &scratch.0, verbose)?;
        results.push((target, stats));
    }
    eprintln!("xtask: fuzzing: {seconds} s per target, no crash");
    eprintln!(
        "{:<20} {:>10} {:>9} {:>7} {:>7} {:>7}",
        "target", "execs", "execs/s", "cov", "ft", "corpus"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    for (target, s) in results {
        eprintln!(
            "{target:<20} {:>10} {:>9} {:>7} {:>7} {:>7}",
            show(s.execs),
            show(s.execs_per_sec),
            show(s.cov),
            show(s.ft),
            show(s.corpus)
        );
    }
    Ok(())
}

/// How the targets are built: optimized, with debug assertions and overflow checks, no
/// sanitizer (see the module docs).
const BUILD_FLAGS: [&str; 4] = ["--release", "--debug-assertions", "--sanitizer", "none"];

/// The nightly that builds the targets: the eBPF build's (`agent-ebpf/toolchain.toml`).
fn nightly() -> Result<String> {
    let pins = setup::ebpf_pins()?;
    setup::ebpf_nightly(&pins)?.with_context(|| {
        format!(
            "no nightly toolchain with LLVM {} to build the fuzz targets with: run `cargo xtask setup`",
            pins.llvm_major
        )
    })
}

/// `cargo fuzz` with `nightly`, in the fuzz project.
///
/// The agent is built without its eBPF programs (`AYA_BUILD_SKIP`; the targets do not load
/// them), and whatever toolchain runs xtask, the nightly's own cargo and rustc are used.
fn cargo_fuzz(nightly: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(util::workspace_root().join(FUZZ_DIR))
        .args(["run", nightly, "cargo", "fuzz"])
        .env("AYA_BUILD_SKIP", "1")
        .env_remove(crate::ebpf_toolchain::REQUIRE_ENV)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// A scratch directory for the targets that go through files (`$STRATA_FUZZ_SCRATCH`): on
/// tmpfs when there is one, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            util::workspace_root().join(FUZZ_DIR).join("target")
        };
        let dir = base.join(format!("strata-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a libFuzzer line is progress (new coverage, a reduced input, a pulse), which only
/// `cargo xtask fuzz` shows.
fn is_progress(line: &str) -> bool {
    line.starts_with('#')
        && ["NEW", "REDUCE", "pulse", "RELOAD"]
            .iter()
            .any(|w| line.split_whitespace().nth(1) == Some(w))
}

fn run_target(
    nightly: &str,
    target: &str,
    max_len: usize,
    seconds: u64,
    scratch: &Path,
    verbose: bool,
) -> Result<RunStats> {
    let fuzz_dir = util::workspace_root().join(FUZZ_DIR);
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut cmd = cargo_fuzz(nightly);
    cmd.arg("run")
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(&corpus)
        .args(seeds.is_dir().then_some(&seeds))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .env("STRATA_FUZZ_SCRATCH", scratch)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    eprintln!("xtask: $ {}", util::describe(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", util::describe(&cmd)))?;
    let mut stats = RunStats::default();
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading the fuzzer's output")?;
            stats.read(&line);
            if verbose || !is_progress(&line) {
                eprintln!("{line}");
            }
            tail.push(line);
            if tail.len() > 400 {
                tail.drain(..200);
            }
        }
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    if !status.success() {
        if !verbose {
            eprintln!("xtask: the end of {target}'s output:");
            for line in tail.iter().rev().take(60).rev() {
                eprintln!("{line}");
            }
        }
        bail!(
            "fuzz target {target} failed ({status}): the input is under {}; reproduce with \
             `cd fuzz && cargo +{nightly} fuzz run {} {target} ARTIFACT`, fix the bug with a \
             regression test in its crate",
            fuzz_dir.join("artifacts").join(target).display(),
            BUILD_FLAGS.join(" ")
        );
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_are_the_fuzz_projects_binaries() {
        let manifest = util::workspace_root().join(FUZZ_DIR).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("fuzz/Cargo.toml");
        let mut bins: Vec<&str> = text
            .split("[[bin]]")
            .skip(1)
            .filter_map(|bin| {
                bin.lines()
                    .filter_map(|l| l.trim().strip_prefix("name = "))
                    .map(|v| v.trim_matches('"'))
                    .next()
            })
            .collect();
        bins.sort_unstable();
        let mut targets: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
        targets.sort_unstable();
        assert_eq!(bins, targets);
    }

    #[test]
    fn final_stats_are_read() {
        let mut s = RunStats::default();
        for line in [
            "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb",
            "#4096\tpulse  cov: 12 ft: 13 corp: 2/4b lim: 43 exec/s: 2048 rss: 31Mb",
            "#52000\tDONE   cov: 1234 ft: 5678 corp: 321/9Kb lim: 4096 exec/s: 2600 rss: 80Mb",
            "Done 52000 runs in 21 second(s)",
            "stat::number_of_executed_units: 52000",
            "stat::average_exec_per_sec:     2476",
        ] {
            s.read(line);
        }
        assert_eq!(
            s,
            RunStats {
                cov: Some(1234),
                ft: Some(5678),
                corpus: Some(321),
                execs: Some(52000),
                execs_per_sec: Some(2476),
            }
        );
        assert!(is_progress("#4096\tpulse  cov: 12"));
        assert!(is_progress("#17\tNEW    cov: 12"));
        assert!(!is_progress("#52000\tDONE   cov: 1234"));
    }

    #[test]
    fn unknown_targets_are_refused_with_the_list() {
        let err = selected(&["nope".to_owned()]).expect_err("unknown");
        assert!(err.to_string().contains("mesos_call"), "{err}");
        assert_eq!(selected(&[]).expect("all").len(), TARGETS.len());
    }
}
