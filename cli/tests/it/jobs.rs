//! strata-jobs against a real allocator and agent (processes on loopback), driven by
//! `strata job ...`: a job run now finishes with exit code 0 in its history; a failing job with
//! 2 retries leaves 3 attempts; a restarted framework keeps its jobs and history; a job
//! scheduled every minute runs within the real next minute (that test waits up to 75 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use strata_test_support::cluster::*;
use strata_test_support::net::free_port;
use strata_test_support::wait::{Poll, poll_until};

/// strata-jobs as a process, killed on drop.
struct Jobs {
    child: Child,
    addr: String,
    state_dir: PathBuf,
}

impl Jobs {
    async fn start(cluster: &Cluster, state_dir: &Path) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(cluster.dir.path().join("jobs.err"))?;
        let child = Command::new(bin("strata-jobs"))
            .args(["--allocator", &cluster.addr, "--jobs-listen", &addr])
            .arg("--jobs-state-dir")
            .arg(state_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start strata-jobs (cargo build --workspace --bins first)")?;
        let jobs = Self {
            child,
            addr,
            state_dir: state_dir.to_owned(),
        };
        poll_until(WAIT, Duration::from_millis(100), || async {
            let out = job(cluster, &jobs, &["list"]);
            Ok(if out.status.success() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("strata-jobs did not answer: {}", text(&out.stderr)))
            })
        })
        .await?;
        Ok(jobs)
    }

    fn framework_id(&self) -> Result<String> {
        let saved: Value =
            serde_json::from_slice(&std::fs::read(self.state_dir.join("state.json"))?)?;
        Ok(saved["framework_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job(cluster: &Cluster, jobs: &Jobs, args: &[&str]) -> std::process::Output {
    let mut all = vec!["job", "--jobs", &jobs.addr];
    all.extend_from_slice(args);
    cluster.cli(&all)
}

fn add(cluster: &Cluster, jobs: &Jobs, definition: &str) -> Result<()> {
    let file = cluster.dir.path().join(format!("job-{}.toml", free_port()));
    std::fs::write(&file, definition)?;
    let out = job(cluster, jobs, &["add", file.to_str().unwrap_or_default()]);
    ensure!(
        out.status.success(),
        "strata job add: {}",
        text(&out.stderr)
    );
    Ok(())
}

fn history(cluster: &Cluster, jobs: &Jobs, id: &str) -> Result<Vec<Value>> {
    let out = job(cluster, jobs, &["--json", "history", id]);
    ensure!(
        out.status.success(),
        "strata job history: {}",
        text(&out.stderr)
    );
    Ok(serde_json::from_slice::<Value>(&out.stdout)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn history_of_len(
    cluster: &Cluster,
    jobs: &Jobs,
    id: &str,
    n: usize,
    limit: Duration,
) -> Result<Vec<Value>> {
    poll_until(limit, Duration::from_millis(200), || async {
        let h = history(cluster, jobs, id)?;
        Ok(if h.len() >= n {
            Poll::Ready(h)
        } else {
            Poll::Pending(format!("job {id} has {} of {n} records: {h:?}", h.len()))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_retry_and_survive_a_restart_of_the_framework() -> Result<()> {
    let cluster = Cluster::start().await?;
    let state_dir = cluster.dir.path().join("jobs-state");
    let jobs = Jobs::start(&cluster, &state_dir).await?;

    add(
        &cluster,
        &jobs,
        "id = \"hello\"\ncommand = \"echo hello\"\n",
    )?;
    let run = job(&cluster, &jobs, &["run", "hello"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("run 1 started"),
        "{}",
        text(&run.stdout)
    );
    let h = history_of_len(&cluster, &jobs, "hello", 1, WAIT).await?;
    assert_eq!(h[0]["outcome"], "finished", "{h:?}");
    assert_eq!(h[0]["exit_code"], 0, "{h:?}");
    assert_eq!(h[0]["attempt"], 1, "{h:?}");
    let table = job(&cluster, &jobs, &["history", "hello"]);
    assert!(
        text(&table.stdout).contains("finished"),
        "{}",
        text(&table.stdout)
    );

    add(
        &cluster,
        &jobs,
        "id = \"flaky\"\ncommand = \"exit 1\"\n[retry]\nmax_retries = 2\ninitial_backoff = \"1s\"\n",
    )?;
    let run = job(&cluster, &jobs, &["run", "flaky"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let h = history_of_len(&cluster, &jobs, "flaky", 3, WAIT * 2).await?;
    let attempts: Vec<(i64, &str, i64)> = h
        .iter()
        .map(|r| {
            (
                r["attempt"].as_i64().unwrap_or(-1),
                r["outcome"].as_str().unwrap_or_default(),
                r["exit_code"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [(1, "failed", 1), (2, "failed", 1), (3, "failed", 1)]
    );
    // No fourth attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(history(&cluster, &jobs, "flaky")?.len(), 3);

    // A restarted framework keeps its id, its jobs and their histories.
    let framework_id = jobs.framework_id()?;
    assert!(!framework_id.is_empty());
    let addr_before = jobs.addr.clone();
    drop(jobs);
    let jobs = Jobs::start(&cluster, &state_dir).await?;
    assert_ne!(jobs.addr, addr_before);
    let list = job(&cluster, &jobs, &["--json", "list"]);
    let list: Value = serde_json::from_slice(&list.stdout)?;
    let ids: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, ["flaky", "hello"]);
    assert_eq!(history(&cluster, &jobs, "hello")?.len(), 1);
    assert_eq!(history(&cluster, &jobs, "flaky")?.len(), 3);
    assert_eq!(jobs.framework_id()?, framework_id);
    // It still runs jobs.
    let run = job(&cluster, &jobs, &["run", "hello"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let h = history_of_len(&cluster, &jobs, "hello", 2, WAIT).await?;
    assert_eq!(h[1]["outcome"], "finished", "{h:?}");

    let removed = job(&cluster, &jobs, &["remove", "hello"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let gone = job(&cluster, &jobs, &["history", "hello"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        text(&gone.stderr).contains("no job hello"),
        "{}",
        text(&gone.stderr)
    );
    Ok(())
}

/// Waits a real minute: a job scheduled `* * * * *` runs within 75 s of being added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_scheduled_every_minute_runs_within_the_real_next_minute_waits_up_to_75s()
-> Result<()> {
    let cluster = Cluster::start().await?;
    let jobs = Jobs::start(&cluster, &cluster.dir.path().join("jobs-state")).await?;
    add(
        &cluster,
        &jobs,
        "id = \"minutely\"\ncommand = \"true\"\n[schedule]\ncron = \"* * * * *\"\nstarting_deadline = \"30s\"\n",
    )?;
    let h = history_of_len(&cluster, &jobs, "minutely", 1, Duration::from_secs(75)).await?;
    assert_eq!(h[0]["outcome"], "finished", "{h:?}");
    assert_eq!(h[0]["trigger"]["kind"], "scheduled", "{h:?}");
    Ok(())
}
