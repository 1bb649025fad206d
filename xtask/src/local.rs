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
    /// Run `strata local --secure`: TLS and authentication everywhere; the demo's commands
    /// present the local CA and the operator's token, and it shows that callers without them
    /// are refused.
    #[arg(long)]
    pub secure: bool,
}

/// The variables that tell the CLI and the SDK what to present.
const CLIENT_VARS: [&str; 4] = ["STRATA_CA", "STRATA_CERT", "STRATA_KEY", "STRATA_TOKEN"];

/// How the demo's clients reach the cluster: the CLI, the batch framework.
struct Client {
    strata: PathBuf,
    allocator: String,
    /// `WORK_DIR/pki` of a secure cluster.
    pki: Option<PathBuf>,
}

impl Client {
    /// `program` with the cluster's CA and the operator's token in its environment (none of the
    /// developer's), once a secure cluster has made them.
    fn command(&self, program: &Path) -> Result<Command> {
        let mut cmd = Command::new(program);
        for var in CLIENT_VARS {
            cmd.env_remove(var);
        }
        if let Some(pki) = &self.pki {
            let token_file = pki.join("operator.token");
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("cannot read {}", token_file.display()))?;
            cmd.env("STRATA_CA", pki.join("ca.pem"))
                .env("STRATA_TOKEN", token.trim());
        }
        Ok(cmd)
    }

    /// `strata --allocator URL ARGS`.
    fn cli(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = self.command(&self.strata)?;
        cmd.arg("--allocator").arg(&self.allocator).args(args);
        Ok(cmd)
    }
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
    let scheme = if args.secure { "https" } else { "http" };
    let allocator = format!("{scheme}://{listen}");
    let work_dir = util::workspace_root().join("target").join("strata-local");
    let _ = std::fs::remove_dir_all(&work_dir);
    let client = Client {
        strata: strata.clone(),
        allocator: allocator.clone(),
        pki: args.secure.then(|| work_dir.join("pki")),
    };

    eprintln!(
        "xtask: starting `strata local` on {listen}, work dir {}",
        work_dir.display()
    );
    let mut local = Command::new(&strata);
    local
        .args(["local", "--listen", &listen, "--work-dir"])
        .arg(&work_dir);
    if args.secure {
        local.arg("--secure");
    }
    let child = util::dev_cgroup_placement(&mut local)
        .spawn()
        .with_context(|| format!("cannot start {}", strata.display()))?;
    let mut cluster = LocalCluster { child };
    wait_for_agent(&client, &mut cluster)?;

    if !args.demo {
        eprintln!("xtask: strata local is up. In another terminal:");
        if let Some(pki) = &client.pki {
            eprintln!(
                "  export STRATA_CA={} STRATA_TOKEN=$(cat {})",
                pki.join("ca.pem").display(),
                pki.join("operator.token").display()
            );
        }
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

    demo(&client, &bin.join("examples").join("batch"), &work_dir)?;
    let status = cluster.stop()?;
    if !status.success() {
        bail!("strata local exited with {status} on SIGTERM");
    }
    eprintln!("xtask: demo done; strata local stopped cleanly");
    Ok(())
}

fn demo(client: &Client, batch: &Path, work_dir: &Path) -> Result<()> {
    let cli = |args: &[&str]| client.cli(args);
    if client.pki.is_some() {
        step("without credentials, the secure cluster refuses");
        let mut anonymous = cli(&["ps", "--all"])?;
        anonymous.env_remove("STRATA_TOKEN");
        let out = anonymous.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains("authentication required") {
            bail!("`strata ps` without a token was not refused: {stderr}");
        }
        eprintln!("xtask: `strata ps` without a token: {}", stderr.trim());
    }
    step("the cluster's one agent");
    util::run(&mut cli(&["agents"])?)?;

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
    ])?)?;
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
    ])?
    .status()?;
    if status.code() != Some(3) {
        bail!("expected `strata run` of `exit 3` to exit 3, got {status}");
    }
    eprintln!("xtask: `strata run` exited 3, as the task did");

    step("a batch framework (framework/examples/batch.rs) running 8 tasks");
    util::run(client.command(batch)?.args([
        "--allocator",
        &client.allocator,
        "--tasks",
        "8",
        "--cmd",
        "echo task $STRATA_TASK_ID; sleep 1",
        "--cpus",
        "0.2",
        "--mem",
        "32",
    ]))?;

    step("a running task's usage, as the agent measures it");
    usage_of_a_running_task(client)?;

    step("every task the cluster ran");
    util::run(&mut cli(&["ps", "--all"])?)?;
    step("frameworks");
    util::run(&mut cli(&["frameworks"])?)?;
    Ok(())
}

/// `strata profile busy` (eBPF and perf events: as root only), through the agent's HTTP
/// endpoint.
fn profile_busy(client: &Client) -> Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        eprintln!(
            "xtask: not profiling the busy task: `strata profile` needs the agent to run as root"
        );
        return Ok(());
    }
    step("a profile of the busy task (`strata profile`, from the agent's /profile)");
    let out_dir = util::workspace_root().join("target").join("strata-local");
    let out_dir = out_dir.display().to_string();
    util::run(&mut client.cli(&[
        "profile",
        "busy",
        "--seconds",
        "2",
        "--top",
        "5",
        "--out",
        &out_dir,
    ])?)
}

/// Runs a short busy task in the background and prints `strata usage` of it once the agent
/// has measured it.
fn usage_of_a_running_task(client: &Client) -> Result<()> {
    let mut busy = client
        .cli(&[
            "run",
            "--task-id",
            "busy",
            "--cpus",
            "0.5",
            "--mem",
            "32",
            "--shell",
            "--",
            "end=$(($(date +%s) + 6)); while [ $(date +%s) -lt $end ]; do :; done",
        ])?
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start `strata run`")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        let out = client.cli(&["usage", "busy"])?.output()?;
        if out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
            break profile_busy(client);
        }
        if Instant::now() > deadline || busy.try_wait()?.is_some() {
            break Err(anyhow::anyhow!(
                "no usage of the running task `busy`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        sleep(Duration::from_millis(300));
    };
    let status = busy.wait()?;
    result?;
    if !status.success() {
        bail!("the busy task's `strata run` exited with {status}");
    }
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

fn wait_for_agent(client: &Client, cluster: &mut LocalCluster) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = cluster.child.try_wait()? {
            bail!("strata local exited early with {status}; its log is above");
        }
        // A secure cluster's token exists once `strata local` made it.
        let Ok(mut agents) = client.cli(&["agents", "--json"]) else {
            sleep(Duration::from_millis(200));
            continue;
        };
        let out = agents.output()?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"id\"") {
            return Ok(());
        }
        sleep(Duration::from_millis(200));
    }
    bail!("no agent registered with strata local within 60 s; its log is above")
}
