//! `cargo xtask bench services`: the release `strata-allocator`, `strata-agent` and
//! `strata-services` on loopback, driven by the release `strata` CLI: the time from
//! `strata app deploy` of `--instances` instances (1,000 by default) on one agent to all
//! healthy (each with a command health check run by the agent), then the time of a rolling
//! upgrade of all of them to a new version (minimum health capacity 0.5, maximum over capacity
//! 0.5) until every instance of the new version is healthy and the deployment is done. The
//! goal from issue 18: under 30 s for 1,000 instances.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench::Processes;
use crate::util;

/// How long one phase may take before the benchmark gives up.
const LIMIT: Duration = Duration::from_secs(600);

fn definition(instances: u32, version: &str) -> String {
    format!(
        r#"id = "bench"
command = "exec sleep 100000"
instances = {instances}
cpus = 0.01
mem = 4
env = {{ VERSION = "{version}" }}
[health_check]
protocol = "command"
command = "true"
interval = "10s"
timeout = "10s"
grace_period = "30s"
[upgrade]
minimum_health_capacity = 0.5
maximum_over_capacity = 0.5
rollback_after = "10m"
"#
    )
}

/// `strata app --json list`'s entry for the app.
fn status(strata: &Path, services: &str) -> Result<Value> {
    let out = Command::new(strata)
        .args(["app", "--services", services, "--json", "list"])
        .output()
        .context("cannot run strata app list")?;
    if !out.status.success() {
        bail!("strata app list: {}", String::from_utf8_lossy(&out.stderr));
    }
    let list: Value = serde_json::from_slice(&out.stdout)?;
    Ok(list[0].clone())
}

/// Deploys `text` and waits until `version` has `instances` healthy instances and no
/// deployment; the elapsed time.
fn deploy_until_healthy(
    strata: &Path,
    services: &str,
    file: &Path,
    text: &str,
    instances: u32,
    version: u64,
) -> Result<Duration> {
    std::fs::write(file, text)?;
    let start = Instant::now();
    util::run(
        Command::new(strata)
            .args(["app", "--services", services, "deploy"])
            .arg(file)
            .stdout(std::process::Stdio::null()),
    )?;
    let mut last_report = Instant::now();
    loop {
        let s = status(strata, services)?;
        if s["version"] == version && s["healthy"] == instances && s["deployment"].is_null() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > LIMIT {
            bail!("not done within {LIMIT:?}: {s}");
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "   {:>5.1} s: version {}, {} running, {} healthy",
                start.elapsed().as_secs_f64(),
                s["version"],
                s["running"],
                s["healthy"]
            );
            last_report = Instant::now();
        }
        sleep(Duration::from_millis(250));
    }
}

/// Runs the benchmark.
pub fn services(instances: u32) -> Result<()> {
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
        "strata-services",
        "--bin",
        "strata-services",
        "-p",
        "strata",
        "--bin",
        "strata",
    ]))?;
    let bin = util::target_dir("release");
    let work_dir = util::workspace_root().join("target").join("bench-services");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;
    let listen = util::free_loopback_addr()?;
    let allocator = format!("http://{listen}");
    let services = util::free_loopback_addr()?;
    let mut procs = Processes(Vec::new());
    procs.0.push(
        Command::new(bin.join("strata-allocator"))
            .args(["--listen", &listen, "--work-dir"])
            .arg(work_dir.join("allocator"))
            .args(["--mesos-listen", "none", "--metrics-listen", "none"])
            .env("RUST_LOG", "warn")
            .spawn()
            .context("cannot start strata-allocator")?,
    );
    util::wait_for_port(&listen, "strata-allocator", Duration::from_secs(20))?;
    let cpus = (f64::from(instances) * 0.01 * 1.6).max(1.0);
    let mem = (f64::from(instances) * 4.0 * 1.6).max(256.0);
    let mut agent = Command::new(bin.join("strata-agent"));
    util::dev_cgroup_placement(&mut agent)
        .args(["--allocator", &allocator, "--work-dir"])
        .arg(work_dir.join("agent"))
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--cpus", &cpus.to_string(), "--mem", &mem.to_string()])
        .env("RUST_LOG", "warn");
    procs
        .0
        .push(agent.spawn().context("cannot start strata-agent")?);
    procs.0.push(
        Command::new(bin.join("strata-services"))
            .args(["--allocator", &allocator, "--services-listen", &services])
            .arg("--services-state-dir")
            .arg(work_dir.join("services"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start strata-services")?,
    );
    util::wait_for_port(&services, "strata-services", Duration::from_secs(20))?;
    let strata = bin.join("strata");
    let file = work_dir.join("bench.toml");
    eprintln!("== services: {instances} instances on one agent");
    let deployed = deploy_until_healthy(
        &strata,
        &services,
        &file,
        &definition(instances, "1"),
        instances,
        1,
    )?;
    eprintln!(
        "deploy to all healthy: {:.1} s ({:.0} instances/s)",
        deployed.as_secs_f64(),
        f64::from(instances) / deployed.as_secs_f64()
    );
    let upgraded = deploy_until_healthy(
        &strata,
        &services,
        &file,
        &definition(instances, "2"),
        instances,
        2,
    )?;
    eprintln!(
        "rolling upgrade to all healthy at version 2: {:.1} s ({:.0} instances/s)",
        upgraded.as_secs_f64(),
        f64::from(instances) / upgraded.as_secs_f64()
    );
    // Destroy the app so the agent's tasks end before it stops.
    let _ = Command::new(&strata)
        .args(["app", "--services", &services, "destroy", "bench"])
        .stdout(std::process::Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60)
        && status(&strata, &services).is_ok_and(|s| !s.is_null())
    {
        sleep(Duration::from_millis(500));
    }
    drop(procs);
    Ok(())
}
