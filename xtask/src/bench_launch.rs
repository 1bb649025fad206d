//! `cargo xtask bench launch`: how fast the agent's containerizer starts and tears down an
//! isolated `/bin/true`, side by side with `crun run` and `runc run` of an equivalent container
//! (same namespaces, user, capabilities and cgroup limits, on the host's root filesystem).
//!
//! The measuring is done by the agent's `launch_bench` example (release build, run as root; see
//! its docs for what each number covers); this prints the table and the ratios.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// One runtime's result, in milliseconds.
#[derive(Debug, Clone)]
struct Row {
    runtime: String,
    running_median: f64,
    running_p99: f64,
    teardown_median: f64,
    teardown_p99: f64,
}

fn parse(line: &str) -> Result<Row> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [runtime, a, b, c, d] = parts.as_slice() else {
        bail!("launch_bench printed {line:?}, not `runtime median p99 median p99`");
    };
    Ok(Row {
        runtime: (*runtime).to_owned(),
        running_median: a.parse()?,
        running_p99: b.parse()?,
        teardown_median: c.parse()?,
        teardown_p99: d.parse()?,
    })
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
    let mut rows = Vec::new();
    for runtime in ["strata", "crun", "runc"] {
        if runtime != "strata" && Command::new(runtime).arg("--version").output().is_err() {
            eprintln!(
                "bench launch: {runtime} is not installed (cargo xtask setup installs it); skipped"
            );
            continue;
        }
        eprintln!("bench launch: {runtime}, {tasks} launches of /bin/true");
        let out = Command::new(&bench)
            .args(["--runtime", runtime, "--tasks", &tasks.to_string()])
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
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        rows.push(parse(line)?);
    }
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
    fn result_lines_are_parsed() {
        let row = parse("crun 1.5 3.25 2 4").unwrap();
        assert_eq!(row.runtime, "crun");
        assert!((row.teardown_p99 - 4.0).abs() < 1e-9);
        assert!(parse("crun 1 2").is_err());
    }
}
