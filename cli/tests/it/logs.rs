//! Task output against a real allocator and agent (processes on loopback): `strata run`
//! streams the task's stdout and stderr and exits with its code; `strata logs` reads, tails and
//! follows a task's files from its agent.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use strata_framework::task;
use strata_proto::TaskState;
use strata_test_support::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_run_streams_the_task_output_to_the_right_streams() -> Result<()> {
    let cluster = Cluster::start().await?;

    let hello = cluster.cli(&["run", "--", "echo", "hello"]);
    assert_eq!(hello.status.code(), Some(0), "{}", text(&hello.stderr));
    assert_eq!(text(&hello.stdout), "hello\n", "{}", text(&hello.stderr));

    let both = cluster.cli(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    let stderr = text(&both.stderr);
    assert_eq!(both.status.code(), Some(3), "{stderr}");
    assert_eq!(text(&both.stdout), "out\n", "{stderr}");
    assert!(stderr.lines().any(|l| l == "err"), "{stderr}");
    assert!(!text(&both.stdout).contains("err"));

    // Everything written just before the end is there.
    let many = cluster.cli(&[
        "run",
        "--shell",
        "--",
        "i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo line $i; done; echo last",
    ]);
    assert_eq!(many.status.code(), Some(0), "{}", text(&many.stderr));
    let lines: Vec<String> = text(&many.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 501, "{}", text(&many.stderr));
    assert_eq!(lines[0], "line 1");
    assert_eq!(lines[500], "last");

    // --detach prints no output, and still exits with the task's code.
    let detached = cluster.cli(&["run", "--detach", "--", "sh", "-c", "echo quiet; exit 4"]);
    assert_eq!(
        detached.status.code(),
        Some(4),
        "{}",
        text(&detached.stderr)
    );
    assert_eq!(text(&detached.stdout), "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_logs_follows_a_task_until_it_ends_and_tails() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("logs").await?;
    let offer = events.next_offer().await?;
    // A line every 0.3 s for 3 s, then one line on stderr.
    let script = "i=0; while [ $i -lt 10 ]; do i=$((i+1)); echo tick $i; sleep 0.3; done; \
                  echo done >&2";
    fw.launch(
        &offer,
        vec![task("ticker").shell(script).cpus(0.1).mem(32.0).build()],
    )
    .await?;
    let updates = events
        .updates_until("ticker", |s| s == TaskState::Running)
        .await?;
    ensure!(
        updates.last().map(|s| s.state()) == Some(TaskState::Running),
        "{updates:?}"
    );

    let started = Instant::now();
    let follower = cluster
        .strata(&["logs", "-f", "ticker"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let waiting = tokio::task::spawn_blocking(move || follower.wait_with_output());
    // Mid-task (it runs for 3 s): the follow is still going.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "strata logs -f ended while the task ran"
    );
    let ended = events.until_terminal("ticker").await?;
    let task_ended = started.elapsed();
    assert_eq!(
        ended.last().map(|s| s.state()),
        Some(TaskState::Finished),
        "{ended:?}"
    );
    let followed = tokio::time::timeout(WAIT, waiting).await???;
    let stdout = text(&followed.stdout);
    assert!(followed.status.success(), "{}", text(&followed.stderr));
    let expected: Vec<String> = (1..=10).map(|i| format!("tick {i}")).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
    assert!(
        task_ended > Duration::from_secs(1),
        "the task ended {task_ended:?} after the follow started: too soon to show a follow"
    );

    let tail = cluster.cli(&["logs", "--tail", "3", "ticker"]);
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    assert_eq!(text(&tail.stdout), "tick 8\ntick 9\ntick 10\n");
    let all = cluster.cli(&["logs", "--tail", "100", "ticker"]);
    assert_eq!(text(&all.stdout).lines().count(), 10);
    let stderr = cluster.cli(&["logs", "--stderr", "ticker"]);
    assert_eq!(text(&stderr.stdout), "done\n", "{}", text(&stderr.stderr));
    // -f of an ended task prints what it wrote and ends.
    let after = cluster.cli(&["logs", "-f", "--tail", "1", "ticker"]);
    assert_eq!(text(&after.stdout), "tick 10\n", "{}", text(&after.stderr));

    let unknown = cluster.cli(&["logs", "no-such-task"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("knows no task no-such-task"),
        "{}",
        text(&unknown.stderr)
    );
    Ok(())
}
