//! A real cluster: `strata-allocator` and `strata-agent` started as processes on loopback, each
//! in a temp dir, killed (with every task they started, and the agent's cgroups) on drop; the
//! `strata` CLI run against it; a framework's events as a test reads them.
//!
//! The binaries are the workspace's, next to the test executable: `cargo build --workspace
//! --bins` first (`cargo xtask test` does).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use strata_framework::{Event, Framework, FrameworkBuilder};
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{ListAgentsRequest, Offer, TaskState, TaskStatus};
use tokio::sync::mpsc::Receiver;

use crate::CGROUP_PLACEMENT;
use crate::net::free_port;
use crate::wait::{Poll, poll_until};

/// How long any single wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A built binary of this workspace: in the directory cargo builds binaries into, which holds
/// the running test executable (in its `deps/`, or `examples/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().expect("the target profile directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// Lossy UTF-8 text of a process's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The agent's `--cpus`.
    pub cpus: f64,
    /// The agent's `--mem` (MiB).
    pub mem: f64,
    /// The allocator's `--agent-reconnect-timeout`.
    pub agent_reconnect_timeout: &'static str,
    /// More flags for the agent.
    pub agent_args: Vec<&'static str>,
}

impl Default for ClusterOptions {
    /// 4 cpus, 4096 MiB, 500 ms.
    fn default() -> Self {
        Self {
            cpus: 4.0,
            mem: 4096.0,
            agent_reconnect_timeout: "500ms",
            agent_args: Vec::new(),
        }
    }
}

/// An allocator and one agent, as real processes.
#[derive(Debug)]
pub struct Cluster {
    /// The processes' work dirs and logs (`allocator.log`, `agent.err`, ...).
    pub dir: tempfile::TempDir,
    /// The allocator's gRPC address, `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The `strata-allocator` process.
    pub allocator: Option<Child>,
    /// The `strata-agent` process.
    pub agent: Option<Child>,
}

impl Cluster {
    /// With [`ClusterOptions::default`].
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts the allocator, then the agent, and waits for the agent to register.
    pub async fn start_with(opts: ClusterOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let addr = format!("http://127.0.0.1:{port}");
        let allocator = Command::new(bin("strata-allocator"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--agent-reconnect-timeout", opts.agent_reconnect_timeout])
            .arg("--work-dir")
            .arg(dir.path().join("allocator"))
            .stdout(log_file(dir.path(), "allocator.log")?)
            .stderr(log_file(dir.path(), "allocator.err")?)
            .spawn()
            .context("cannot start strata-allocator")?;
        let mut cluster = Self {
            dir,
            addr,
            allocator: Some(allocator),
            agent: None,
        };
        cluster.start_agent(&opts)?;
        cluster.wait_for_agents(1).await?;
        Ok(cluster)
    }

    /// The agent's `--work-dir`.
    pub fn agent_work_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// Starts the agent (again, after [`Cluster::kill_agent`]).
    pub fn start_agent(&mut self, opts: &ClusterOptions) -> Result<()> {
        let agent = Command::new(bin("strata-agent"))
            .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
            .args(["--allocator", &self.addr, "--work-dir"])
            .arg(self.agent_work_dir())
            .args([
                "--cpus",
                &opts.cpus.to_string(),
                "--mem",
                &opts.mem.to_string(),
            ])
            .args([
                "--status-update-retry",
                "1s",
                "--default-kill-grace-period",
                "2s",
            ])
            // Its HTTP endpoints on a free port: tests run clusters side by side.
            .args(["--http-listen", "127.0.0.1:0"])
            .args(&opts.agent_args)
            .stdout(log_file(self.dir.path(), "agent.log")?)
            .stderr(log_file(self.dir.path(), "agent.err")?)
            .spawn()
            .context("cannot start strata-agent")?;
        self.agent = Some(agent);
        Ok(())
    }

    /// SIGKILLs the agent process (its tasks are left running, as after a crash).
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// Waits until the allocator answers and lists `n` agents, asking every 50 ms for at most
    /// [`WAIT`].
    pub async fn wait_for_agents(&self, n: usize) -> Result<()> {
        poll_until(WAIT, Duration::from_millis(50), || async {
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(self.addr.clone())?
                .connect()
                .await
            {
                let mut client = OperatorServiceClient::new(channel);
                if let Ok(resp) = client.list_agents(ListAgentsRequest {}).await
                    && resp.into_inner().agents.len() >= n
                {
                    return Ok(Poll::Ready(()));
                }
            }
            Ok(Poll::Pending(format!(
                "{n} agent(s) did not register within {WAIT:?}; logs in {}",
                self.dir.path().display()
            )))
        })
        .await
    }

    /// Subscribes a framework named `name` through the SDK, within [`WAIT`].
    pub async fn framework(&self, name: &str) -> Result<(Framework, Events)> {
        self.subscribe(FrameworkBuilder::new(&self.addr).name(name))
            .await
    }

    /// [`Cluster::framework`], partition-aware.
    pub async fn partition_aware_framework(&self, name: &str) -> Result<(Framework, Events)> {
        self.subscribe(
            FrameworkBuilder::new(&self.addr)
                .name(name)
                .partition_aware(true),
        )
        .await
    }

    async fn subscribe(&self, builder: FrameworkBuilder) -> Result<(Framework, Events)> {
        let (fw, rx) = tokio::time::timeout(WAIT, builder.subscribe())
            .await
            .context("subscribe timed out")??;
        Ok((fw, Events::new(rx)))
    }

    /// `strata --allocator ADDR ARGS`, not started.
    pub fn strata(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("strata"));
        cmd.arg("--allocator").arg(&self.addr).args(args);
        cmd
    }

    /// Runs the `strata` CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.strata(args)
            .stdin(Stdio::null())
            .output()
            .expect("the strata binary runs")
    }

    /// The pids the agent recorded for its tasks.
    pub fn task_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let runs = self.agent_work_dir().join("runs");
        for fw in std::fs::read_dir(runs).into_iter().flatten().flatten() {
            for task in std::fs::read_dir(fw.path()).into_iter().flatten().flatten() {
                if let Ok(text) = std::fs::read_to_string(task.path().join("pid"))
                    && let Ok(pid) = text.trim().parse()
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Task processes this test started through the agent; kill their process groups
        // if still there (an agent killed with SIGKILL leaves them behind).
        let pids = self.task_pids();
        for child in [self.agent.take(), self.allocator.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // Tasks run under supervisors in the agent's cgroup subtree and outlive the agent:
        // remove the subtree, killing whatever still runs in it.
        let _ = Command::new(bin("strata-agent"))
            .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
            .args(["--allocator", &self.addr, "--work-dir"])
            .arg(self.agent_work_dir())
            .arg("--remove-cgroups")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    Ok(std::fs::File::create(dir.join(name))?)
}

/// A framework's events as a test reads them: waits take the first matching event and keep
/// every other one, in order, for later waits (an offer skipped while waiting for an update is
/// still there for the next `next_offer`).
#[derive(Debug)]
pub struct Events {
    rx: Receiver<Event>,
    backlog: VecDeque<Event>,
}

impl Events {
    /// The events of `rx`.
    pub fn new(rx: Receiver<Event>) -> Self {
        Self {
            rx,
            backlog: VecDeque::new(),
        }
    }

    /// The first event for which `pick` returns `Some`, within `within`; `None` on time-out.
    pub async fn take<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<Option<T>> {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let event = self.backlog.remove(i).expect("the position just found");
            return Ok(pick(&event));
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(event)) => match pick(&event) {
                    Some(found) => return Ok(Some(found)),
                    None => self.backlog.push_back(event),
                },
                Ok(None) => bail!("the event stream ended; unread events: {:?}", self.backlog),
                Err(_) => return Ok(None),
            }
        }
    }

    /// The next offer (of any agent).
    pub async fn next_offer(&mut self) -> Result<Offer> {
        let found = self
            .take(WAIT, |e| match e {
                Event::Offers(offers) if !offers.is_empty() => Some(offers[0].clone()),
                _ => None,
            })
            .await?;
        found.with_context(|| format!("no offer within {WAIT:?}; other events: {:?}", self.backlog))
    }

    /// Fails if an offer arrives within `window`.
    pub async fn no_offer_within(&mut self, window: Duration) -> Result<()> {
        let found = self
            .take(window, |e| match e {
                Event::Offers(offers) if !offers.is_empty() => Some(offers.clone()),
                _ => None,
            })
            .await?;
        match found {
            Some(offers) => bail!("an offer arrived within {window:?}: {offers:?}"),
            None => Ok(()),
        }
    }

    /// The updates of `task_id`, in order, up to and including the first whose state satisfies
    /// `until`.
    pub async fn updates_until(
        &mut self,
        task_id: &str,
        until: impl Fn(TaskState) -> bool,
    ) -> Result<Vec<TaskStatus>> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let update = self
                .take(left, |e| match e {
                    Event::Update(status) if status.task_id == task_id => Some(status.clone()),
                    _ => None,
                })
                .await?;
            let Some(status) = update else {
                bail!(
                    "task {task_id}: no matching update within {WAIT:?}; so far {:?}",
                    states(&seen)
                );
            };
            let state = status.state();
            seen.push(status);
            if until(state) {
                return Ok(seen);
            }
        }
    }

    /// The updates of `task_id` up to and including its terminal one.
    pub async fn until_terminal(&mut self, task_id: &str) -> Result<Vec<TaskStatus>> {
        self.updates_until(task_id, TaskState::is_terminal).await
    }
}

/// The states of `updates`, as their labels.
pub fn states(updates: &[TaskStatus]) -> Vec<&'static str> {
    updates.iter().map(|s| s.state().label()).collect()
}
