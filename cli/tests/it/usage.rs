//! `strata usage` and `strata top` against a real allocator and agent (processes on loopback):
//! what they say when a task has no usage, and the records they print once the agent reports.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strata_framework::task;
use strata_proto::TaskState;
use strata_test_support::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_top_say_why_a_task_has_no_usage() -> Result<()> {
    let cluster = Cluster::start().await?;

    let unknown = cluster.cli(&["usage", "no-such-task"]);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = text(&unknown.stderr);
    assert!(
        stderr.contains("unknown task no-such-task") && stderr.contains("strata ps --all"),
        "{stderr}"
    );

    // No task runs: `top` (stdout is a pipe here) prints one snapshot and exits.
    let top = cluster.cli(&["top", "--interval", "100ms"]);
    assert!(top.status.success(), "{}", text(&top.stderr));
    assert!(
        text(&top.stdout).starts_with("no running task reports usage"),
        "{}",
        text(&top.stdout)
    );

    // A task that ended has no usage, and says so.
    let (fw, mut events) = cluster.framework("usage-errors").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![task("quick").shell("true").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    events.until_terminal("quick").await?;
    let ended = cluster.cli(&["usage", "quick"]);
    assert_eq!(ended.status.code(), Some(1));
    let stderr = text(&ended.stderr);
    assert!(
        stderr.contains("task quick is not running (TASK_FINISHED)"),
        "{stderr}"
    );

    let bad = cluster.cli(&["usage", "quick", "--watch", "--interval", "0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("--interval must be greater than zero"));
    Ok(())
}

/// Runs the CLI for `run`, then stops it with SIGINT (Ctrl-C) and returns what it printed.
fn cli_for(cluster: &Cluster, args: &[&str], run: Duration) -> Result<std::process::Output> {
    let child = cluster
        .strata(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(run);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    Ok(child.wait_with_output()?)
}

/// Waits until `strata usage TASK --json` prints a record, and returns it.
fn usage_json(cluster: &Cluster, task: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = cluster.cli(&["usage", task, "--json"]);
        if out.status.success() {
            return Ok(serde_json::from_slice(&out.stdout)?);
        }
        if Instant::now() > deadline {
            bail!("no usage for {task} within {WAIT:?}: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_shows_in_usage_and_top() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("usage").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![
            task("sleeper")
                .shell("sleep 60")
                .cpus(0.5)
                .mem(64.0)
                .build(),
        ],
    )
    .await?;
    events
        .updates_until("sleeper", |s| s == TaskState::Running)
        .await?;

    let record = usage_json(&cluster, "sleeper")?;
    assert_eq!(record["task_id"], "sleeper");
    assert_eq!(record["framework_id"], fw.framework_id());
    assert_eq!(record["memory"]["limit_bytes"], 64 * 1024 * 1024);
    assert!(record["pids"]["current"].as_u64() >= Some(1), "{record}");

    let readable = cluster.cli(&["usage", "sleeper"]);
    assert!(readable.status.success(), "{}", text(&readable.stderr));
    let stdout = text(&readable.stdout);
    assert!(
        stdout.starts_with("task        sleeper (framework"),
        "{stdout}"
    );
    assert!(
        stdout.contains("memory      ") && stdout.contains("of 64.0 MiB"),
        "{stdout}"
    );

    // `--watch --json` prints one object per line until stopped.
    let watch = cli_for(
        &cluster,
        &[
            "usage",
            "sleeper",
            "--watch",
            "--json",
            "--interval",
            "200ms",
        ],
        Duration::from_secs(3),
    )?;
    let lines: Vec<serde_json::Value> = text(&watch.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(!lines.is_empty(), "{}", text(&watch.stderr));
    assert!(lines.iter().all(|l| l["task_id"] == "sleeper"));

    let top = cluster.cli(&["top", "--interval", "200ms", "--sort", "mem"]);
    assert!(top.status.success(), "{}", text(&top.stderr));
    let table = text(&top.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TASK") && lines[0].contains("MEM/LIMIT"),
        "{table}"
    );
    assert!(lines.iter().any(|l| l.starts_with("sleeper")), "{table}");
    Ok(())
}
