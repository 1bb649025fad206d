//! `cargo xtask local`: builds Strata and runs `strata local`; with `--demo`, also runs a small
//! demo workload through it, shows its tasks, and stops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

/// Arguments of `cargo xtask local`.
#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Run a demo workload, show the tasks, then stop.
    #[arg(long)]
    pub demo: bool,
    /// Where the allocator listens (the demo picks a free port when this is not given).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Stops `strata local` when dropped, however the demo ends.
struct LocalCluster {
    child: Child,
}

impl LocalCluster {
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        bail!("strata local did not stop within 20 s of SIGTERM and was killed")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Builds, starts `strata local`, and runs the demo or waits for Ctrl-C.
pub fn run(args: &LocalArgs) -> Result<()> {
    util::run(util::cargo().args(["xtask", "setup"]))?;
    util::run(util::cargo().args([
        "build",
        "-p",
        "strata",
        "--bin",
        "strata",
        "-p",
        "strata-framework",
        "--example",
        "batch",
    ]))?;
    let bin = util::target_dir("debug");
    let strata = bin.join("strata");
    let listen = match &args.listen {
        Some(listen) => listen.clone(),
        None if args.demo => util::free_loopback_addr()?,
        None => "127.0.0.1:5050".to_owned(),
    };
    let allocator = format!("http://{listen}");
    let work_dir = util::workspace_root().join("target").join("strata-local");
    let _ = std::fs::remove_dir_all(&work_dir);

    eprintln!(
        "xtask: starting `strata local` on {listen}, work dir {}",
        work_dir.display()
    );
    let child = util::dev_cgroup_placement(&mut Command::new(&strata))
        .args(["local", "--listen", &listen, "--work-dir"])
        .arg(&work_dir)
        .spawn()
        .with_context(|| format!("cannot start {}", strata.display()))?;
    let mut cluster = LocalCluster { child };
    wait_for_agent(&strata, &allocator, &mut cluster)?;

    if !args.demo {
        eprintln!("xtask: strata local is up. In another terminal:");
        eprintln!(
            "  {} --allocator {allocator} run -- echo hello",
            strata.display()
        );
        eprintln!("  {} --allocator {allocator} ps --all", strata.display());
        eprintln!("Ctrl-C stops it.");
        let status = cluster.child.wait()?;
        if !status.success() {
            bail!("strata local exited with {status}");
        }
        return Ok(());
    }

    demo(
        &strata,
        &bin.join("examples").join("batch"),
        &allocator,
        &work_dir,
    )?;
    let status = cluster.stop()?;
    if !status.success() {
        bail!("strata local exited with {status} on SIGTERM");
    }
    eprintln!("xtask: demo done; strata local stopped cleanly");
    Ok(())
}

fn demo(strata: &Path, batch: &Path, allocator: &str, work_dir: &Path) -> Result<()> {
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(strata);
        cmd.arg("--allocator").arg(allocator).args(args);
        cmd
    };
    step("the cluster's one agent");
    util::run(&mut cli(&["agents"]))?;

    step("a one-shot task with `strata run`");
    util::run(&mut cli(&[
        "run",
        "--cpus",
        "0.1",
        "--mem",
        "32",
        "--name",
        "hello",
        "--",
        "echo",
        "hello from a strata task",
    ]))?;
    for stdout in task_outputs(work_dir)? {
        eprintln!(
            "xtask: {}: {}",
            stdout.display(),
            std::fs::read_to_string(&stdout)?.trim()
        );
    }

    step("a task that fails: `strata run` exits with its exit code");
    let status = cli(&[
        "run",
        "--shell",
        "--",
        "echo failing on purpose >&2; exit 3",
    ])
    .status()?;
    if status.code() != Some(3) {
        bail!("expected `strata run` of `exit 3` to exit 3, got {status}");
    }
    eprintln!("xtask: `strata run` exited 3, as the task did");

    step("a batch framework (framework/examples/batch.rs) running 8 tasks");
    util::run(Command::new(batch).args([
        "--allocator",
        allocator,
        "--tasks",
        "8",
        "--cmd",
        "echo task $STRATA_TASK_ID; sleep 1",
        "--cpus",
        "0.2",
        "--mem",
        "32",
    ]))?;

    step("every task the cluster ran");
    util::run(&mut cli(&["ps", "--all"]))?;
    step("frameworks");
    util::run(&mut cli(&["frameworks"]))?;
    Ok(())
}

fn step(title: &str) {
    eprintln!("\n=== {title}");
}

/// The stdout files of every task sandbox under `work_dir`.
fn task_outputs(work_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let sandboxes = work_dir.join("agent").join("sandboxes");
    let root = if sandboxes.is_dir() {
        sandboxes
    } else {
        work_dir.join("sandboxes")
    };
    if let Ok(frameworks) = std::fs::read_dir(&root) {
        for framework in frameworks.flatten() {
            for task in std::fs::read_dir(framework.path())?.flatten() {
                let stdout = task.path().join("stdout");
                if stdout.is_file() {
                    found.push(stdout);
                }
            }
        }
    }
    Ok(found)
}

fn wait_for_agent(strata: &Path, allocator: &str, cluster: &mut LocalCluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = cluster.child.try_wait()? {
            bail!("strata local exited early with {status}; its log is above");
        }
        let out = Command::new(strata)
            .args(["--allocator", allocator, "agents", "--json"])
            .output()?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"id\"") {
            return Ok(());
        }
        sleep(Duration::from_millis(200));
    }
    bail!("no agent registered with strata local within 60 s; its log is above")
}
