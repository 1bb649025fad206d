//! `strata profile` against a real allocator and agent (processes on loopback): the errors it
//! gives, and, as root (eBPF and perf events), a profile of a CPU-bound task written as folded
//! stacks and a flame graph.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use strata_framework::task;
use strata_proto::TaskState;
use strata_test_support::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_refuses_unknown_and_ended_tasks_and_bad_durations() -> Result<()> {
    let cluster = Cluster::start().await?;
    let unknown = cluster.cli(&["profile", "no-such-task", "--seconds", "1"]);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = text(&unknown.stderr);
    assert!(
        stderr.contains("knows no task no-such-task") && stderr.contains("strata ps --all"),
        "{stderr}"
    );

    let (fw, mut events) = cluster.framework("profile-errors").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![task("quick").shell("true").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    events.until_terminal("quick").await?;
    let ended = cluster.cli(&["profile", "quick", "--seconds", "1"]);
    assert_eq!(ended.status.code(), Some(1));
    let stderr = text(&ended.stderr);
    assert!(stderr.contains("not running"), "{stderr}");

    for bad in ["0", "301", "x"] {
        let out = cluster.cli(&["profile", "quick", "--seconds", bad]);
        assert_eq!(out.status.code(), Some(2), "--seconds {bad}");
        assert!(
            text(&out.stderr).contains("--seconds"),
            "{}",
            text(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_of_a_busy_task_writes_folded_stacks_and_a_flame_graph() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: profiling needs root (eBPF and perf events)");
        return Ok(());
    }
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("profile").await?;
    let offer = events.next_offer().await?;
    // A CPU burner, limited to half a core before it starts.
    fw.launch(
        &offer,
        vec![
            task("burner")
                .shell("while :; do :; done")
                .cpus(0.5)
                .cpu_limit(0.5)
                .mem(32.0)
                .build(),
        ],
    )
    .await?;
    events
        .updates_until("burner", |s| s == TaskState::Running)
        .await?;
    let out_dir = tempfile::tempdir()?;
    let out_arg = out_dir.path().display().to_string();
    // The agent knows a task once it has a usage record (after one interval).
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let out = cluster.cli(&["profile", "burner", "--seconds", "2", "--out", &out_arg]);
        let stderr = text(&out.stderr);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        if stderr.contains("eBPF is off") {
            eprintln!("skipped: the agent could not load eBPF here: {stderr}");
            return Ok(());
        }
        if !stderr.contains("no usage record yet") {
            bail!("strata profile failed: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let stdout = text(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("samples; top functions"), "{stdout}");
    let folded = std::fs::read_to_string(out_dir.path().join("burner.folded"))?;
    let samples: u64 = strata_agent::profile::parse_folded(&folded).values().sum();
    // 2 s at 99 Hz of a task using half a core: about 100 samples.
    assert!(samples >= 20, "{samples} samples:\n{folded}");
    // Only the task's own processes (the shell) are sampled: every stack's root is `sh` (a
    // sample whose user stack could not be taken is `sh` alone).
    let others: Vec<&str> = folded
        .lines()
        .filter(|l| l.split([';', ' ']).next() != Some("sh"))
        .collect();
    assert!(others.is_empty(), "samples of other processes: {others:?}");
    let svg = std::fs::read_to_string(out_dir.path().join("burner.svg"))?;
    assert!(svg.contains("<svg") && svg.contains("strata profile burner"));
    Ok(())
}
