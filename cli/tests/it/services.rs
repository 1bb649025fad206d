//! strata-services against a real allocator and agent (processes on loopback), driven by
//! `strata app ...`: a 3-instance app with a command health check deploys; survives a
//! `kill -9` of one instance (replaced); survives a restart of the framework (no instance
//! killed, its state reconstructed); rolls to a new version without dropping below its minimum
//! health capacity (sampled during the deploy); rolls back a version whose check never passes.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use strata_test_support::cluster::*;
use strata_test_support::net::free_port;
use strata_test_support::wait::{Poll, poll_until};

/// strata-services as a process, killed (SIGKILL) on drop.
struct Services {
    child: Child,
    addr: String,
}

impl Services {
    async fn start(cluster: &Cluster, state_dir: &Path, n: u32) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(cluster.dir.path().join(format!("services-{n}.err")))?;
        let child = Command::new(bin("strata-services"))
            .args(["--allocator", &cluster.addr, "--services-listen", &addr])
            .arg("--services-state-dir")
            .arg(state_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start strata-services (cargo build --workspace --bins first)")?;
        let services = Self { child, addr };
        poll_until(WAIT, Duration::from_millis(100), || async {
            let out = app(cluster, &services, &["list"]);
            Ok(if out.status.success() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!(
                    "strata-services did not answer: {}",
                    text(&out.stderr)
                ))
            })
        })
        .await?;
        Ok(services)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn app(cluster: &Cluster, services: &Services, args: &[&str]) -> std::process::Output {
    let mut all = vec!["app", "--services", &services.addr];
    all.extend_from_slice(args);
    cluster.cli(&all)
}

fn deploy(cluster: &Cluster, services: &Services, definition: &str) -> Result<()> {
    let file = cluster.dir.path().join(format!("app-{}.toml", free_port()));
    std::fs::write(&file, definition)?;
    let out = app(
        cluster,
        services,
        &["deploy", file.to_str().unwrap_or_default()],
    );
    ensure!(
        out.status.success(),
        "strata app deploy: {}",
        text(&out.stderr)
    );
    Ok(())
}

fn show(cluster: &Cluster, services: &Services) -> Result<Value> {
    let out = app(cluster, services, &["--json", "show", "web"]);
    ensure!(
        out.status.success(),
        "strata app show: {}",
        text(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The app's instances as (task id, version, healthy).
fn instances(shown: &Value) -> Vec<(String, u64, bool)> {
    shown["instance_list"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(t, i)| {
            (
                t.clone(),
                i["version"].as_u64().unwrap_or(0),
                i["healthy"].as_bool().unwrap_or(false) && i["state"] == "running",
            )
        })
        .collect()
}

/// Waits until the app is at `version` with `n` healthy instances of it and nothing else.
async fn settled(
    cluster: &Cluster,
    services: &Services,
    version: u64,
    n: usize,
    limit: Duration,
) -> Result<Vec<String>> {
    poll_until(limit, Duration::from_millis(250), || async {
        let shown = show(cluster, services)?;
        let all = instances(&shown);
        let good = all.iter().filter(|(_, v, h)| *v == version && *h).count();
        Ok(
            if shown["version"] == version && good == n && all.len() == n {
                Poll::Ready(all.into_iter().map(|(t, _, _)| t).collect())
            } else {
                Poll::Pending(format!("not settled at version {version}: {shown}"))
            },
        )
    })
    .await
}

fn task_pid(cluster: &Cluster, task_id: &str) -> Result<i32> {
    let runs = cluster.agent_work_dir().join("runs");
    for fw in std::fs::read_dir(&runs)?.flatten() {
        let file: PathBuf = fw.path().join(task_id).join("pid");
        if let Ok(text) = std::fs::read_to_string(&file) {
            return Ok(text.trim().parse()?);
        }
    }
    anyhow::bail!("no pid file for {task_id} under {}", runs.display())
}

fn alive(pid: i32) -> bool {
    !strata_test_support::wait::process_gone(pid as u32)
}

/// A version: `ready` makes its check pass (the file it tests exists), else it never does.
fn definition(command: &str) -> String {
    format!(
        r#"id = "web"
command = "{command}"
instances = 3
cpus = 0.05
mem = 16
[health_check]
protocol = "command"
command = "test -f ready"
interval = "1s"
timeout = "2s"
grace_period = "1s"
delay = "1s"
max_consecutive_failures = 2
[backoff]
initial = "1s"
max = "2s"
[upgrade]
minimum_health_capacity = 0.6
maximum_over_capacity = 0.34
max_failures = 3
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_survives_kill_9_a_framework_restart_rolls_forward_and_rolls_back() -> Result<()> {
    let cluster = Cluster::start().await?;
    let state_dir = cluster.dir.path().join("services-state");
    let services = Services::start(&cluster, &state_dir, 1).await?;

    // Deploys: 3 healthy instances of version 1.
    deploy(
        &cluster,
        &services,
        &definition("touch ready; exec sleep 1000"),
    )?;
    let v1 = settled(&cluster, &services, 1, 3, WAIT * 2).await?;
    let plan = app(&cluster, &services, &["plan", "web"]);
    ensure!(
        text(&plan.stdout).contains("steady (COMPLETE)"),
        "{}",
        text(&plan.stdout)
    );

    // kill -9 of one instance: it is replaced by a new one.
    let victim = &v1[0];
    let pid = task_pid(&cluster, victim)?;
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    let after_kill = poll_until(WAIT * 2, Duration::from_millis(250), || async {
        let ids = settled(&cluster, &services, 1, 3, Duration::ZERO).await;
        Ok(match ids {
            Ok(ids) if !ids.contains(victim) => Poll::Ready(ids),
            other => Poll::Pending(format!("{victim} not replaced yet: {other:?}")),
        })
    })
    .await?;
    ensure!(after_kill.iter().filter(|t| v1.contains(t)).count() == 2);

    // A restart of the framework (SIGKILL): no instance killed, the state reconstructed.
    let pids: Vec<i32> = after_kill
        .iter()
        .map(|t| task_pid(&cluster, t))
        .collect::<Result<_>>()?;
    drop(services);
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        pids.iter().all(|p| alive(*p)),
        "the instances run while it is away"
    );
    let services = Services::start(&cluster, &state_dir, 2).await?;
    let reconstructed = settled(&cluster, &services, 1, 3, WAIT).await?;
    ensure!(
        reconstructed == after_kill,
        "{reconstructed:?} != {after_kill:?}"
    );
    ensure!(pids.iter().all(|p| alive(*p)), "no instance was killed");

    // A rolling deploy of version 2, never below 2 healthy (0.6 of 3), never above 4 in all.
    deploy(
        &cluster,
        &services,
        &definition("touch ready; exec sleep 1001"),
    )?;
    let (lowest, highest, samples) = (Cell::new(usize::MAX), Cell::new(0), Cell::new(0));
    poll_until(WAIT * 3, Duration::from_millis(200), || {
        let shown = show(&cluster, &services);
        let (lowest, highest, samples) = (&lowest, &highest, &samples);
        async move {
            let shown = shown?;
            let all = instances(&shown);
            let healthy = all.iter().filter(|(_, _, h)| *h).count();
            lowest.set(lowest.get().min(healthy));
            highest.set(highest.get().max(all.len()));
            samples.set(samples.get() + 1);
            let done = shown["deployment"].is_null()
                && all.len() == 3
                && all.iter().all(|(_, v, h)| *v == 2 && *h);
            Ok(if done {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("version 2 not rolled out: {shown}"))
            })
        }
    })
    .await?;
    let (lowest, highest, samples) = (lowest.get(), highest.get(), samples.get());
    ensure!(samples >= 5, "sampled {samples} times");
    ensure!(
        lowest >= 2,
        "healthy instances fell to {lowest} during the deploy"
    );
    ensure!(highest <= 4, "{highest} instances at once");
    let v2 = settled(&cluster, &services, 2, 3, WAIT).await?;

    // Version 3's check never passes: its instances are killed by their agent, and after 3
    // failures the deploy is rolled back to version 2.
    deploy(&cluster, &services, &definition("exec sleep 1002"))?;
    let lowest = Cell::new(usize::MAX);
    poll_until(WAIT * 4, Duration::from_millis(250), || {
        let shown = show(&cluster, &services);
        let lowest = &lowest;
        async move {
            let shown = shown?;
            let all = instances(&shown);
            lowest.set(lowest.get().min(all.iter().filter(|(_, _, h)| *h).count()));
            let back = shown["version"] == 2
                && shown["deployment"].is_null()
                && all.len() == 3
                && all.iter().all(|(_, v, h)| *v == 2 && *h);
            Ok(if back {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("not rolled back: {shown}"))
            })
        }
    })
    .await?;
    let lowest = lowest.get();
    ensure!(
        lowest >= 2,
        "healthy instances fell to {lowest} during the failed deploy"
    );
    let after = settled(&cluster, &services, 2, 3, WAIT).await?;
    // The strategy let one version 2 instance go (3 x 0.6 = 2 stay healthy); it was
    // replaced at version 2 after the rollback.
    let kept = after.iter().filter(|t| v2.contains(t)).count();
    ensure!(kept >= 2, "only {kept} of {v2:?} stayed: {after:?}");
    let shown = show(&cluster, &services)?;
    ensure!(
        shown["spec"]["command"] == "touch ready; exec sleep 1001",
        "{shown}"
    );

    // Destroy: every instance killed, the app gone.
    let out = app(&cluster, &services, &["destroy", "web"]);
    ensure!(out.status.success(), "{}", text(&out.stderr));
    poll_until(WAIT, Duration::from_millis(250), || async {
        let out = app(&cluster, &services, &["--json", "list"]);
        let list: Value = serde_json::from_slice(&out.stdout)?;
        Ok(if list == serde_json::json!([]) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("still listed: {list}"))
        })
    })
    .await?;
    Ok(())
}
