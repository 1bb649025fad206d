//! `cargo xtask bench launch`: how fast the agent's containerizer starts and tears down an
//! isolated `/bin/true`, side by side with `crun run` and `runc run` of an equivalent container
//! (same namespaces, user, capabilities and cgroup limits, on the host's root filesystem).
//!
//! The measuring is done by the agent's `launch_bench` example (release build, run as root; see
//! its docs for what each number covers); this prints the table and the ratios.
//!
//! The runtimes are interleaved: the launches are made in [`ROUNDS`] rounds, each running every
//! runtime in turn (in a rotating order) for its share of the launches after one unmeasured
//! warm-up launch, and the samples are pooled. A load that comes and goes on the machine (other
//! builds) then weighs on every runtime alike, and the ratios compare like with like.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// How many rounds the launches are split into.
const ROUNDS: u32 = 10;

/// The value at quantile `p` of sorted samples (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Median and p99 of `samples`.
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// Parses a samples file: `<launch→running ms> <launch+teardown ms>` per line.
fn parse_samples(text: &str) -> Result<Vec<(f64, f64)>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(a), Some(b)) => Ok((a.parse()?, b.parse()?)),
                _ => bail!("launch_bench wrote {l:?}, not `running teardown`"),
            }
        })
        .collect()
}

/// One runtime's result, in milliseconds.
#[derive(Debug, Clone)]
struct Row {
    runtime: String,
    running_median: f64,
    running_p99: f64,
    teardown_median: f64,
    teardown_p99: f64,
}

/// Runs the benchmark for `tasks` launches per runtime.
pub fn launch(tasks: u32) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("bench launch creates cgroups and namespaces: run it as root");
    }
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "strata-agent",
        "--bin",
        "strata-agent",
        "--example",
        "launch_bench",
    ]))?;
    let release = util::target_dir("release");
    let bench = release.join("examples").join("launch_bench");
    let work = util::workspace_root().join("target").join("bench-launch");
    let mut runtimes = vec!["strata"];
    for runtime in ["crun", "runc"] {
        if Command::new(runtime).arg("--version").output().is_err() {
            eprintln!(
                "bench launch: {runtime} is not installed (cargo xtask setup installs it); skipped"
            );
        } else {
            runtimes.push(runtime);
        }
    }
    let rounds = ROUNDS.min(tasks.max(1));
    eprintln!(
        "bench launch: {tasks} launches of /bin/true per runtime ({}), interleaved in {rounds} rounds",
        runtimes.join(", ")
    );
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); runtimes.len()];
    for round in 0..rounds {
        let share = tasks / rounds + u32::from(round < tasks % rounds);
        for k in 0..runtimes.len() {
            let which = (k + round as usize) % runtimes.len();
            let runtime = runtimes[which];
            let samples_file = work.join(format!("{runtime}.samples"));
            let out = Command::new(&bench)
                .args(["--runtime", runtime, "--tasks", &share.to_string()])
                .args(["--warmup", "1"])
                .arg("--samples")
                .arg(&samples_file)
                .arg("--supervisor")
                .arg(release.join("strata-agent"))
                .arg("--work-dir")
                .arg(work.join(runtime))
                .env("RUST_LOG", "warn")
                .output()
                .with_context(|| format!("running {}", bench.display()))?;
            if !out.status.success() {
                bail!(
                    "launch_bench --runtime {runtime} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = std::fs::read_to_string(&samples_file)
                .with_context(|| format!("reading {}", samples_file.display()))?;
            let _ = std::fs::remove_file(&samples_file);
            samples[which].extend(parse_samples(&text)?);
        }
        eprintln!("bench launch: round {} of {rounds} done", round + 1);
    }
    let rows: Vec<Row> = runtimes
        .iter()
        .zip(samples)
        .map(|(runtime, s)| {
            let (running_median, running_p99) = summary(s.iter().map(|x| x.0).collect());
            let (teardown_median, teardown_p99) = summary(s.iter().map(|x| x.1).collect());
            Row {
                runtime: (*runtime).to_owned(),
                running_median,
                running_p99,
                teardown_median,
                teardown_p99,
            }
        })
        .collect();
    println!(
        "{:<8} {:>22} {:>22}",
        "runtime", "launch→running ms", "launch+teardown ms"
    );
    println!(
        "{:<8} {:>11} {:>10} {:>11} {:>10}",
        "", "median", "p99", "median", "p99"
    );
    for r in &rows {
        println!(
            "{:<8} {:>11.2} {:>10.2} {:>11.2} {:>10.2}",
            r.runtime, r.running_median, r.running_p99, r.teardown_median, r.teardown_p99
        );
    }
    if let Some(ours) = rows.iter().find(|r| r.runtime == "strata") {
        for other in rows.iter().filter(|r| r.runtime != "strata") {
            println!(
                "strata/{}: launch→running median {:.2}x, launch+teardown median {:.2}x (target for crun: <= 0.5x)",
                other.runtime,
                ours.running_median / other.running_median,
                ours.teardown_median / other.teardown_median,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_parsed_and_summarised() {
        let samples = parse_samples("1.5 3.25\n2 4\n\n").unwrap();
        assert_eq!(samples, vec![(1.5, 3.25), (2.0, 4.0)]);
        assert!(parse_samples("1").is_err());
        let (median, p99) = summary((1..=100).map(f64::from).collect());
        assert!(
            (median - 51.0).abs() < 1e-9 && (p99 - 99.0).abs() < 1e-9,
            "{median} {p99}"
        );
    }
}
