//! A real agent (`strata_agent::run` in-process) against a small fake allocator served over
//! real gRPC on 127.0.0.1:0: registration and the persisted id, the task life cycle with
//! reliable (resent until acknowledged) status updates, kill, launch failure, duplicate
//! launches, re-registration after the stream drops, and shutdown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use strata_agent::cgroup::Placement;
use strata_agent::{AgentConfig, AgentError};
use strata_proto::agent_message::Message as AgentMsg;
use strata_proto::allocator_message::{
    AcknowledgeUpdate, KillTask, LaunchTask, Message as AllocMsg, Shutdown,
};
use strata_proto::{
    CommandInfo, HealthCheck, Resource, TaskInfo, TaskReason, TaskState, TaskStatus, TaskUsage,
    TcpCheck, health_check, names,
};
use strata_test_support::fake_allocator::{FakeAllocator, FakeAllocatorOptions};
use strata_test_support::http::get;
use strata_test_support::net::free_addr;
use strata_test_support::wait::{gone_soon, process_gone};
use strata_test_support::{CGROUP_PLACEMENT, STEP, init_tracing};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const FRAMEWORK: &str = "fw-1";
const ASSIGNED_ID: &str = "agent-1";

/// The fake allocator: assigns ASSIGNED_ID to a new agent, asks for heartbeats every 200 ms, and
/// launches and kills FRAMEWORK's tasks.
fn fake_options() -> FakeAllocatorOptions {
    FakeAllocatorOptions {
        assigned_id: ASSIGNED_ID.to_owned(),
        heartbeat_interval_seconds: 0.2,
        framework_id: FRAMEWORK.to_owned(),
        leader_epoch: 0,
    }
}

/// A fake allocator (what the tests drive, through `Deref`) and the agent under test.
struct Harness {
    fake: FakeAllocator,
    work_dir: PathBuf,
    status_update_retry: Duration,
    agent: Option<JoinHandle<Result<(), AgentError>>>,
    stop: Option<oneshot::Sender<()>>,
    /// An agent run as a separate `strata-agent` process (to be SIGKILLed).
    process: Option<std::process::Child>,
    /// A fake NVML for the agent, and NVIDIA's majors (none: the host's, no GPUs here).
    gpus: Option<strata_agent::gpu::fake::FakeBackend>,
}

impl Deref for Harness {
    type Target = FakeAllocator;

    fn deref(&self) -> &FakeAllocator {
        &self.fake
    }
}

impl DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut FakeAllocator {
        &mut self.fake
    }
}

fn config(addr: SocketAddr, work_dir: &Path, status_update_retry: Duration) -> AgentConfig {
    let mut config = AgentConfig::new(format!("http://{addr}"), work_dir);
    config.cpus = Some(2.0);
    config.mem_mib = Some(1024.0);
    config.disk_mib = Some(4096.0);
    config.attributes = vec![("rack".to_owned(), "r1".to_owned())];
    config.status_update_retry = status_update_retry;
    config.default_kill_grace_period = Duration::from_secs(2);
    config.reconnect_backoff_max = Duration::from_millis(500);
    // Real isolation (this machine runs the tests as root); a host that cannot is an error.
    config.isolation = strata_agent::Isolation::Cgroups;
    // A shared development machine: the agent's cgroups stay below the test's own cgroup.
    config.cgroup_placement =
        Placement::parse(CGROUP_PLACEMENT.1).expect("the tests' cgroup placement");
    config.agent_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_strata-agent")));
    // Usage records every 200 ms, served on a free loopback port.
    config.usage_interval = Duration::from_millis(200);
    config.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config
}

impl Harness {
    /// A fake allocator and an agent resending unacknowledged updates every 200 ms.
    async fn start(work_dir: &Path) -> Result<Self> {
        Self::start_with_retry(work_dir, Duration::from_millis(200)).await
    }

    async fn start_with_retry(work_dir: &Path, status_update_retry: Duration) -> Result<Self> {
        let mut harness = Self::start_server(work_dir, status_update_retry).await?;
        harness.start_agent();
        Ok(harness)
    }

    /// The fake allocator alone.
    async fn start_server(work_dir: &Path, status_update_retry: Duration) -> Result<Self> {
        init_tracing();
        let harness = Self {
            fake: FakeAllocator::start(fake_options()).await?,
            work_dir: work_dir.to_path_buf(),
            status_update_retry,
            agent: None,
            stop: None,
            process: None,
            gpus: None,
        };
        Ok(harness)
    }

    /// Starts the agent as a `strata-agent` process with the same configuration.
    fn start_agent_process(&mut self) -> Result<()> {
        self.start_agent_process_with(&[])
    }

    /// [`Self::start_agent_process`] with more flags.
    fn start_agent_process_with(&mut self, more: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work_dir.join("agent-process.log"))?;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_strata-agent"))
            .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
            .arg("--allocator")
            .arg(format!("http://{}", self.addr))
            .arg("--work-dir")
            .arg(&self.work_dir)
            .args(["--cpus", "2", "--mem", "1024", "--disk", "4096"])
            .args([
                "--status-update-retry",
                "200ms",
                "--isolation",
                "cgroups",
                "--no-ebpf",
            ])
            // Its HTTP endpoints on a free port: tests run agents side by side.
            .args(["--http-listen", "127.0.0.1:0"])
            .args(more)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting strata-agent")?;
        self.process = Some(child);
        Ok(())
    }

    /// SIGKILLs the agent process and reaps it; its tasks are left as they are.
    fn kill_agent_process(&mut self) -> Result<()> {
        let mut child = self.process.take().context("no agent process")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn start_agent(&mut self) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut config = config(self.addr, &self.work_dir, self.status_update_retry);
        if let Some(fake) = &self.gpus {
            config.gpu_backend = Some(std::sync::Arc::new(fake.clone()));
            config.gpu_nodes = Some(strata_agent::gpu::nodes::GpuNodes {
                nvidia: 195,
                uvm: Some(238),
            });
        }
        self.agent = Some(tokio::spawn(strata_agent::run(config, async move {
            let _ = stop_rx.await;
        })));
        self.stop = Some(stop_tx);
    }

    /// Stops the agent and waits for `run` to return.
    async fn stop_agent(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let agent = self.agent.take().context("no agent running")?;
        tokio::time::timeout(STEP, agent)
            .await
            .context("the agent did not stop in time")??
            .context("the agent failed")
    }

    fn pid_of(&self, task_id: &str) -> Result<u32> {
        let path = self
            .work_dir
            .join("runs")
            .join(FRAMEWORK)
            .join(task_id)
            .join("pid");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
        Ok(text.parse()?)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // On a failed test: stopping the agent kills its tasks; the runtime's end reaps them.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.fake.stop();
        // The agent may be cancelled mid-way with the runtime: remove its cgroups here.
        let config = config(self.addr, &self.work_dir, self.status_update_retry);
        if let Ok(cgroups) = strata_agent::cgroup::detect(
            Path::new("/proc"),
            Path::new("/sys/fs/cgroup"),
            &config.root_placement(),
        ) {
            let _ = cgroups.destroy_root();
        }
    }
}

fn shell_task(task_id: &str, script: &str) -> TaskInfo {
    TaskInfo {
        task_id: task_id.to_owned(),
        name: task_id.to_owned(),
        resources: vec![
            Resource::scalar(names::CPUS, 0.1),
            Resource::scalar(names::MEM, 32.0),
        ],
        command: Some(CommandInfo {
            shell: true,
            value: script.to_owned(),
            ..CommandInfo::default()
        }),
        ..TaskInfo::default()
    }
}

fn assert_update(status: &TaskStatus, task_id: &str, state: TaskState) -> Result<()> {
    ensure!(
        status.task_id == task_id && status.state() == state,
        "expected {} for {task_id}, got {} for {} ({:?})",
        state.label(),
        status.state().label(),
        status.task_id,
        status.message
    );
    ensure!(
        status.framework_id == FRAMEWORK,
        "framework id {:?}",
        status.framework_id
    );
    ensure!(
        status.agent_id == ASSIGNED_ID,
        "agent id {:?}",
        status.agent_id
    );
    ensure!(status.uuid.len() == 16, "uuid {:?}", status.uuid);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_persists_its_id_and_keeps_it_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;

    let (_, register) = h.next_register().await?;
    let info = register.info.context("register without info")?;
    assert_eq!(info.id, "", "a new agent registers without an id");
    assert!(!info.hostname.is_empty());
    assert_eq!(strata_proto::scalar_sum(&info.resources, names::CPUS), 2.0);
    assert_eq!(
        strata_proto::scalar_sum(&info.resources, names::MEM),
        1024.0
    );
    assert_eq!(
        strata_proto::scalar_sum(&info.resources, names::DISK),
        4096.0
    );
    let ports = info
        .resources
        .iter()
        .find(|r| r.name == names::PORTS)
        .context("no ports")?;
    assert_eq!((ports.ranges[0].begin, ports.ranges[0].end), (31000, 32000));
    assert_eq!(info.attributes[0].name, "rack");
    assert!(
        !info
            .kernel
            .context("no kernel features")?
            .cgroup_mode
            .is_empty()
    );
    assert!(register.tasks.is_empty());

    // Heartbeats follow the registration.
    h.next(|_, m| matches!(m.message, Some(AgentMsg::Heartbeat(_))).then_some(()))
        .await?;
    let id_file = dir.path().join("agent_id");
    assert_eq!(std::fs::read_to_string(&id_file)?, ASSIGNED_ID);

    // A restarted agent registers with the persisted id.
    h.stop_agent().await?;
    h.start_agent();
    let (_, register) = h.next_register().await?;
    assert_eq!(register.info.context("no info")?.id, ASSIGNED_ID);
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_is_refused_and_its_commands_never_run() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    // The leader of term 9, and a replica that led at term 5 and does not know it was
    // deposed.
    let mut new = FakeAllocator::start(FakeAllocatorOptions {
        leader_epoch: 9,
        ..fake_options()
    })
    .await?;
    let mut stale = FakeAllocator::start(FakeAllocatorOptions {
        leader_epoch: 5,
        ..fake_options()
    })
    .await?;
    let mut config = config(new.addr, dir.path(), Duration::from_millis(200));
    config.allocator = format!("http://{},http://{}", new.addr, stale.addr);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(strata_agent::run(config, async move {
        let _ = stop_rx.await;
    }));
    new.next_register().await?;
    // The agent keeps the term it registered with.
    strata_test_support::wait::poll_until(STEP, Duration::from_millis(50), || async {
        let kept = std::fs::read_to_string(dir.path().join("leader_epoch")).unwrap_or_default();
        Ok(if kept == "9" {
            strata_test_support::wait::Poll::Ready(())
        } else {
            strata_test_support::wait::Poll::Pending(format!("leader_epoch is {kept:?}"))
        })
    })
    .await?;
    // The leader goes away: the agent reaches the stale one, which answers Registered with its
    // old term and launches a task at once. The agent refuses it: the task never runs.
    new.stop();
    new.drop_stream()?;
    drop(new);
    stale.next_register().await?;
    stale.launch(shell_task("from-a-deposed-leader", "sleep 30"))?;
    stale
        .expect_no_new_update(Duration::from_secs(2), &[])
        .await?;
    assert!(
        !dir.path()
            .join("runs")
            .join(FRAMEWORK)
            .join("from-a-deposed-leader")
            .exists(),
        "the agent acted on a deposed leader's launch"
    );
    let _ = stop_tx.send(());
    tokio::time::timeout(STEP, agent).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_to_finished_with_updates_resent_until_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Resends 500 ms, then 1 s, ... after a send: time enough for an acknowledgement to land.
    let mut h = Harness::start_with_retry(dir.path(), Duration::from_millis(500)).await?;
    h.next_register().await?;
    h.launch(shell_task("echo", "echo hi"))?;

    let starting = h.next_update().await?;
    assert_update(&starting, "echo", TaskState::Starting)?;
    // Not acknowledged: the same update (same uuid) comes again, and nothing overtakes it.
    let again = h.next_update().await?;
    assert_eq!(again.state(), TaskState::Starting);
    assert_eq!(again.uuid, starting.uuid);
    h.ack(&starting)?;

    let running = h.next_update().await?;
    assert_update(&running, "echo", TaskState::Running)?;
    assert_ne!(running.uuid, starting.uuid);
    h.ack(&running)?;

    let finished = h.next_update().await?;
    assert_update(&finished, "echo", TaskState::Finished)?;
    assert_eq!(finished.exit_code, Some(0));
    assert_eq!(finished.signal, None);
    assert_eq!(finished.message, "exited with status 0");
    let stdout = dir
        .path()
        .join("sandboxes")
        .join(FRAMEWORK)
        .join("echo")
        .join("stdout");
    assert_eq!(std::fs::read_to_string(stdout)?, "hi\n");

    // A stale acknowledgement changes nothing: FINISHED is still resent.
    h.ack(&running)?;
    let finished_again = h.next_update().await?;
    assert_eq!(finished_again.uuid, finished.uuid);
    h.ack(&finished)?;
    // Acknowledged: no more resends (the next one would have come 1 s after the last).
    h.expect_no_new_update(Duration::from_millis(1500), &[])
        .await?;
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commands_report_their_exit_code_or_signal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    h.launch(shell_task("three", "exit 3"))?;
    h.launch(shell_task("nine", "kill -9 $$"))?;
    let mut terminal = HashMap::new();
    while terminal.len() < 2 {
        let status = h.next_update_acked().await?;
        if status.state().is_terminal() {
            terminal.insert(status.task_id.clone(), status);
        }
    }
    let three = &terminal["three"];
    assert_update(three, "three", TaskState::Failed)?;
    assert_eq!(three.reason(), TaskReason::CommandFailed);
    assert_eq!(three.exit_code, Some(3));
    assert_eq!(three.message, "exited with status 3");
    let nine = &terminal["nine"];
    assert_update(nine, "nine", TaskState::Failed)?;
    assert_eq!(nine.reason(), TaskReason::CommandFailed);
    assert_eq!(nine.signal, Some(9));
    assert_eq!(nine.exit_code, None);
    assert_eq!(nine.message, "killed by signal 9 (SIGKILL)");
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_health_check_runs_in_the_task_cgroup_reports_health_and_kills_when_unhealthy()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    // A bad check is refused before anything is made for the task.
    let mut bad = shell_task("bad-check", "sleep 60");
    bad.health_check = Some(HealthCheck {
        check: Some(health_check::Check::Tcp(TcpCheck { port: 8080 })),
        ..HealthCheck::default()
    });
    h.launch(bad)?;
    let refused = h.next_update_acked().await?;
    assert_update(&refused, "bad-check", TaskState::Error)?;
    ensure!(
        refused
            .message
            .contains("port 8080 is not one of the task's"),
        "{refused:?}"
    );

    // Ready for 2 s, then not: the check (in the sandbox, in the task's cgroup, as the task's
    // user) passes, fails, and after 2 consecutive failures the task is killed.
    let mut task = shell_task("web", "touch ready; sleep 2; rm ready; sleep 60");
    task.health_check = Some(HealthCheck {
        check: Some(health_check::Check::Command(CommandInfo {
            shell: true,
            value: format!(
                "grep -q containers/{FRAMEWORK}/web /proc/self/cgroup && test -f ready && \
                 test \"$(id -u)\" = \"$(stat -c %u .)\""
            ),
            ..CommandInfo::default()
        })),
        interval_seconds: Some(1.0),
        timeout_seconds: Some(5.0),
        grace_period_seconds: Some(0.0),
        delay_seconds: Some(0.0),
        max_consecutive_failures: Some(2),
    });
    h.launch(task)?;
    let mut seen = Vec::new();
    loop {
        let status = h.next_update_acked().await?;
        let terminal = status.state().is_terminal();
        seen.push(status);
        if terminal {
            break;
        }
    }
    let summary: Vec<_> = seen
        .iter()
        .map(|s| (s.state().label(), s.healthy))
        .collect();
    ensure!(
        summary
            == [
                ("TASK_STARTING", None),
                ("TASK_RUNNING", None),
                ("TASK_RUNNING", Some(true)),
                ("TASK_RUNNING", Some(false)),
                ("TASK_KILLED", Some(false)),
            ],
        "{seen:#?}"
    );
    let killed = seen.last().context("a terminal update")?;
    ensure!(
        killed.message.contains("unhealthy") && killed.message.contains("2 consecutive"),
        "{killed:?}"
    );
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_task_stops_the_process_and_reports_killed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    h.launch(shell_task("sleeper", "sleep 30"))?;
    assert_update(
        &h.next_update_acked().await?,
        "sleeper",
        TaskState::Starting,
    )?;
    assert_update(&h.next_update_acked().await?, "sleeper", TaskState::Running)?;
    let pid = h.pid_of("sleeper")?;
    assert!(!process_gone(pid), "the task is running");

    h.kill("sleeper", 5.0)?;
    let killed = h.next_update_acked().await?;
    assert_update(&killed, "sleeper", TaskState::Killed)?;
    assert_eq!(killed.reason(), TaskReason::TaskKilled);
    assert_eq!(killed.signal, Some(15));
    assert!(
        killed.message.contains("framework's request"),
        "{}",
        killed.message
    );
    assert!(gone_soon(pid).await, "the process is gone and reaped");

    // A kill of a task that has ended changes nothing.
    h.kill("sleeper", 5.0)?;
    h.expect_no_new_update(Duration::from_millis(500), &[&killed])
        .await?;
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstartable_command_fails_with_container_launch_failed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    let mut task = shell_task("nosuch", "");
    task.command = Some(CommandInfo {
        shell: false,
        value: "/no/such/command".to_owned(),
        arguments: vec!["/no/such/command".to_owned(), "--flag".to_owned()],
        ..CommandInfo::default()
    });
    h.launch(task)?;
    assert_update(&h.next_update_acked().await?, "nosuch", TaskState::Starting)?;
    let failed = h.next_update_acked().await?;
    assert_update(&failed, "nosuch", TaskState::Failed)?;
    assert_eq!(failed.reason(), TaskReason::ContainerLaunchFailed);
    assert_eq!(
        failed.message,
        "cannot start \"/no/such/command\": no such file or directory (os error 2)"
    );
    assert_eq!(failed.exit_code, None);
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_launch_does_not_start_a_second_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    h.launch(shell_task("once", "sleep 30"))?;
    let starting = h.next_update_acked().await?;
    assert_update(&starting, "once", TaskState::Starting)?;
    let running = h.next_update_acked().await?;
    assert_update(&running, "once", TaskState::Running)?;
    let pid = h.pid_of("once")?;

    h.launch(shell_task("once", "sleep 30"))?;
    h.expect_no_new_update(Duration::from_millis(600), &[&starting, &running])
        .await?;
    assert_eq!(h.pid_of("once")?, pid, "no second process was started");

    h.kill("once", 0.0)?;
    let killed = h.next_update_acked().await?;
    assert_update(&killed, "once", TaskState::Killed)?;
    assert!(gone_soon(pid).await, "the task's process is gone");
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reregisters_with_its_id_and_tasks_after_the_stream_drops() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    let (first_conn, _) = h.next_register().await?;

    // One finished task (acknowledged, so forgotten) and one running task.
    h.launch(shell_task("done", "true"))?;
    h.launch(shell_task("long", "sleep 30"))?;
    let mut states: HashMap<String, TaskState> = HashMap::new();
    while states.get("done") != Some(&TaskState::Finished)
        || states.get("long") != Some(&TaskState::Running)
    {
        let status = h.next_update_acked().await?;
        states.insert(status.task_id.clone(), status.state());
    }
    let pid = h.pid_of("long")?;

    h.drop_stream()?;
    let (conn, register) = h.next_register().await?;
    assert!(conn > first_conn, "a new stream");
    assert_eq!(register.info.context("no info")?.id, ASSIGNED_ID);
    let listed: Vec<_> = register
        .tasks
        .iter()
        .map(|t| {
            (
                t.framework_id.clone(),
                t.task.as_ref().map(|t| t.task_id.clone()),
                t.latest_status.as_ref().map(TaskStatus::state),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![(
            FRAMEWORK.to_owned(),
            Some("long".to_owned()),
            Some(TaskState::Running)
        )]
    );
    assert!(!process_gone(pid), "the task kept running");

    // Stopping the agent leaves the task running under its supervisor; the next agent
    // re-attaches to it, lists it as running, and can still kill it.
    h.stop_agent().await?;
    assert!(!process_gone(pid), "the task outlived the agent");
    h.start_agent();
    let (_, register) = h.next_register().await?;
    let listed: Vec<_> = register
        .tasks
        .iter()
        .map(|t| {
            (
                t.task.as_ref().map(|t| t.task_id.clone()),
                t.latest_status.as_ref().map(TaskStatus::state),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![(Some("long".to_owned()), Some(TaskState::Running))]
    );
    h.kill("long", 0.5)?;
    let killed = h.next_update_acked().await?;
    assert_update(&killed, "long", TaskState::Killed)?;
    h.stop_agent().await?;
    assert!(gone_soon(pid).await, "the task's process is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_made_while_disconnected_are_sent_after_reregistering() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    h.launch(shell_task("short", "sleep 0.3"))?;
    assert_update(&h.next_update_acked().await?, "short", TaskState::Starting)?;
    assert_update(&h.next_update_acked().await?, "short", TaskState::Running)?;
    h.drop_stream()?;
    // The task ends around the time the agent reconnects; FINISHED arrives on the new stream
    // whichever came first, and the registration lists the task until it is acknowledged.
    let (_, register) = h.next_register().await?;
    assert_eq!(register.tasks.len(), 1);
    // RUNNING comes again first if its acknowledgement was lost with the stream.
    let finished = loop {
        let status = h.next_update_acked().await?;
        if status.state() != TaskState::Running {
            break status;
        }
    };
    assert_update(&finished, "short", TaskState::Finished)?;
    h.expect_no_new_update(Duration::from_millis(600), &[&finished])
        .await?;
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_from_the_allocator_kills_tasks_and_stops_the_agent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    h.launch(shell_task("victim", "sleep 30"))?;
    assert_update(&h.next_update_acked().await?, "victim", TaskState::Starting)?;
    assert_update(&h.next_update_acked().await?, "victim", TaskState::Running)?;
    let pid = h.pid_of("victim")?;
    h.send(AllocMsg::Shutdown(Shutdown {
        reason: "test".to_owned(),
    }))?;
    let killed = h.next_update_acked().await?;
    assert_update(&killed, "victim", TaskState::Killed)?;
    let agent = h.agent.take().context("no agent")?;
    tokio::time::timeout(STEP, agent).await???;
    assert!(gone_soon(pid).await, "the task's process is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_allocator_is_retried_until_it_appears() -> Result<()> {
    init_tracing();
    // Reserve a port, free it, start the agent against it, then start the allocator there.
    let addr = free_addr();
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let config = config(addr, dir.path(), Duration::from_millis(200));
    let agent = tokio::spawn(strata_agent::run(config, async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(700)).await;
    ensure!(!agent.is_finished(), "the agent keeps retrying");

    let listener = TcpListener::bind(addr).await?;
    let mut fake = FakeAllocator::serve(listener, fake_options())?;
    let first = fake
        .next(|_, m| Some(m.clone()))
        .await
        .context("no message")?;
    ensure!(
        matches!(first.message, Some(AgentMsg::Register(_))),
        "{first:?}"
    );
    let _ = stop_tx.send(());
    tokio::time::timeout(STEP, agent).await???;
    fake.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tasks_survive_a_kill_9_of_the_agent_and_each_exit_is_reported_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start_server(dir.path(), Duration::from_millis(200)).await?;
    h.start_agent_process()?;
    h.next_register().await?;
    // Ten end while the agent is down, ten after it is back.
    let script = |i: usize| {
        if i < 10 {
            "sleep 2; exit 3"
        } else {
            "sleep 7; exit 4"
        }
    };
    for i in 0..20 {
        h.launch(shell_task(&format!("t{i}"), script(i)))?;
    }
    let mut running = HashSet::new();
    while running.len() < 20 {
        let status = h.next_update_acked().await?;
        if status.state() == TaskState::Running {
            running.insert(status.task_id.clone());
        }
    }
    let pids: Vec<u32> = (0..20)
        .map(|i| h.pid_of(&format!("t{i}")))
        .collect::<Result<_>>()?;

    h.kill_agent_process()?;
    for pid in &pids {
        ensure!(!process_gone(*pid), "supervisor {pid} died with the agent");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.start_agent_process()?;
    let (_, register) = h.next_register().await?;
    ensure!(
        register.tasks.len() == 20,
        "the restarted agent lists {} tasks",
        register.tasks.len()
    );
    for pid in &pids[10..] {
        ensure!(
            !process_gone(*pid),
            "task supervisor {pid} was lost across the restart"
        );
    }

    let mut terminal: HashMap<String, Vec<TaskStatus>> = HashMap::new();
    while terminal.len() < 20 {
        let status = h.next_update_acked().await?;
        if status.state().is_terminal() {
            let seen = terminal.entry(status.task_id.clone()).or_default();
            if !seen.iter().any(|s| s.uuid == status.uuid) {
                seen.push(status);
            }
        }
    }
    let all: Vec<TaskStatus> = terminal.values().flatten().cloned().collect();
    h.expect_no_new_update(Duration::from_secs(1), &all.iter().collect::<Vec<_>>())
        .await?;
    for i in 0..20 {
        let id = format!("t{i}");
        let updates = &terminal[&id];
        ensure!(
            updates.len() == 1,
            "{id} ended {} times: {updates:?}",
            updates.len()
        );
        let status = &updates[0];
        ensure!(status.state() == TaskState::Failed, "{id}: {status:?}");
        ensure!(
            status.exit_code == Some(if i < 10 { 3 } else { 4 }),
            "{id} exit code: {status:?}"
        );
    }
    for pid in &pids {
        ensure!(process_gone(*pid), "supervisor {pid} is still there");
    }
    Ok(())
}

const BRIDGE: &str = "stk9";
const BRIDGE_FLAGS: [&str; 4] = ["--bridge-subnet", "10.79.0.0/24", "--bridge-name", BRIDGE];

/// The links of the calling thread's network namespace named `BRIDGE...`.
fn bridge_links() -> Result<Vec<String>> {
    let mut nl = strata_agent::bridge::netlink::Rtnl::open()?;
    Ok(nl
        .links()?
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| n.starts_with(BRIDGE))
        .collect())
}

/// Waits (at most 10 s) until the agent's NAT table holds `rules` rules.
async fn wait_for_rules(rules: Option<usize>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = strata_agent::bridge::nat::rule_count(BRIDGE)?;
        if now == rules {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the table holds {now:?} rules, not {rules:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A bridge task with a mapped host port, as launched by a framework (without explicit
/// mappings: the port maps to itself, TCP and UDP, two rules each).
fn bridge_task(task_id: &str, port: u64) -> TaskInfo {
    let mut task = shell_task(task_id, "sleep 300");
    task.network_mode = strata_proto::NetworkMode::Bridge as i32;
    task.resources
        .push(Resource::ranges(names::PORTS, [(port, port)]));
    task
}

/// Needs root. A `strata-agent` process with bridge networking, in a network namespace of the
/// test's own (the fake allocator too): a bridge task's port mapping is in the agent's table;
/// it stays through a kill -9 of the agent (the data path does not need the agent) and is
/// there again after the restarted agent recovered the task; it goes when the task ends (the
/// masquerading rules stay); after a second task and another kill -9, `--remove-cgroups`
/// leaves no table, bridge or veth.
#[test]
fn bridge_rules_survive_a_kill_9_are_reconciled_by_recovery_and_removed_by_remove_cgroups()
-> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    std::thread::spawn(|| -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("making a network namespace")?;
        let mut nl = strata_agent::bridge::netlink::Rtnl::open()?;
        let lo = nl.index("lo")?.unwrap_or(1);
        nl.set_up(lo, "loopback")?;
        // The runtime's threads start from this one, in its namespace, as does the agent.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(bridge_kill_9_scenario())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the scenario's thread panicked"))?
}

async fn bridge_kill_9_scenario() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start_server(dir.path(), Duration::from_millis(200)).await?;
    h.start_agent_process_with(&BRIDGE_FLAGS)?;
    h.next_register().await?;
    wait_for_rules(Some(2)).await.context("at start")?;
    h.launch(bridge_task("b1", 31000))?;
    while h.next_update_acked().await?.state() != TaskState::Running {}
    wait_for_rules(Some(6)).await.context("with b1 running")?;
    ensure!(
        bridge_links()?.contains(&format!("{BRIDGE}v2")),
        "no veth for b1: {:?}",
        bridge_links()?
    );

    h.kill_agent_process()?;
    ensure!(
        strata_agent::bridge::nat::rule_count(BRIDGE)? == Some(6),
        "the mapping went with the agent"
    );
    h.start_agent_process_with(&BRIDGE_FLAGS)?;
    let (_, register) = h.next_register().await?;
    ensure!(register.tasks.len() == 1, "{register:?}");
    wait_for_rules(Some(6)).await.context("after recovery")?;

    h.kill("b1", 1.0)?;
    while !h.next_update_acked().await?.state().is_terminal() {}
    wait_for_rules(Some(2)).await.context("after b1 ended")?;
    ensure!(
        bridge_links()? == vec![BRIDGE.to_owned()],
        "b1's veth is left: {:?}",
        bridge_links()?
    );

    h.launch(bridge_task("b2", 31001))?;
    while h.next_update_acked().await?.state() != TaskState::Running {}
    wait_for_rules(Some(6)).await.context("with b2 running")?;
    h.kill_agent_process()?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
        .args(["--allocator", "http://127.0.0.1:1", "--work-dir"])
        .arg(dir.path())
        .args(["--isolation", "cgroups", "--no-ebpf", "--remove-cgroups"])
        .args(BRIDGE_FLAGS)
        .output()?;
    ensure!(
        out.status.success(),
        "--remove-cgroups: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        strata_agent::bridge::nat::rule_count(BRIDGE)?.is_none(),
        "the table is left after --remove-cgroups"
    );
    // b2's namespace went with its cgroup; its veth with the namespace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !bridge_links()?.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        bridge_links()?.is_empty(),
        "left after --remove-cgroups: {:?}",
        bridge_links()?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_task_checkpoint_is_an_error_and_loses_no_running_task() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    h.launch(shell_task("survivor", "sleep 30"))?;
    while h.next_update_acked().await?.state() != TaskState::Running {}
    let pid = h.pid_of("survivor")?;
    h.stop_agent().await?;
    // A torn updates file (as after a crash in the middle of a write without rename).
    let run = dir.path().join("runs").join(FRAMEWORK).join("survivor");
    std::fs::write(run.join("updates.pb"), [0x0a, 0xff, 0x01])?;
    h.start_agent();
    let (_, register) = h.next_register().await?;
    ensure!(
        register.tasks.len() == 1 && !process_gone(pid),
        "the running task was lost: {:?}",
        register.tasks
    );
    h.kill("survivor", 0.5)?;
    let killed = h.next_update_acked().await?;
    assert_update(&killed, "survivor", TaskState::Killed)?;
    h.stop_agent().await
}

/// Every file below `dir` but in `skip`, with its content (directories as "dir").
fn tree(dir: &Path, skip: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.path() == skip {
                continue;
            }
            if entry.file_type()?.is_dir() {
                out.insert(entry.path(), b"dir".to_vec());
                todo.push(entry.path());
            } else {
                out.insert(entry.path(), std::fs::read(entry.path())?);
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_kills_and_acks_with_hostile_ids_touch_nothing_outside_the_work_dir() -> Result<()>
{
    let root = tempfile::tempdir()?;
    let work = root.path().join("a/b/work");
    std::fs::create_dir_all(&work)?;
    // What `runs/fw-1/../../../x` names, and an absolute path: each looks like a run directory
    // with a checkpoint (which forgetting a task would delete), next to a sentinel file.
    let outside = [root.path().join("a/b/x"), root.path().join("abs/path")];
    for dir in &outside {
        std::fs::create_dir_all(dir)?;
        for file in ["task.pb", "updates.pb", "sentinel"] {
            std::fs::write(dir.join(file), b"not the agent's")?;
        }
    }
    std::fs::write(root.path().join("sentinel"), b"keep")?;
    let mut h = Harness::start(&work).await?;
    h.next_register().await?;
    // Another framework's task, which `runs/fw-evil/../fw-1/victim` would name.
    h.launch(shell_task("victim", "sleep 60"))?;
    while h.next_update_acked().await?.state() != TaskState::Running {}
    let victim_pid = h.pid_of("victim")?;
    let victim_run = work.join("runs").join(FRAMEWORK).join("victim");
    let before = tree(root.path(), &work)?;

    let abs = outside[1].display().to_string();
    let hostile: Vec<(&str, &str)> = vec![
        (FRAMEWORK, "../../../x"),
        (FRAMEWORK, &abs),
        ("fw-evil", "../fw-1/victim"),
        ("..", ".."),
        ("..", "runs"),
        (FRAMEWORK, "a\0b"),
        ("a\0b", "victim"),
        ("", "t"),
        (FRAMEWORK, ""),
    ];
    for &(framework_id, task_id) in &hostile {
        let mut task = shell_task(task_id, "touch /tmp/strata-hostile-id-ran");
        task.task_id = task_id.to_owned();
        h.send(AllocMsg::LaunchTask(LaunchTask {
            framework_id: framework_id.to_owned(),
            task: Some(task),
        }))?;
        let refused = h.next_update_acked().await?;
        ensure!(
            refused.task_id == task_id
                && refused.framework_id == framework_id
                && refused.state() == TaskState::Error
                && refused.reason() == TaskReason::TaskInvalid
                && refused.message.starts_with("invalid "),
            "{framework_id:?}/{task_id:?}: {refused:?}"
        );
        // A kill and a stray acknowledgement of the same ids change nothing either.
        h.send(AllocMsg::KillTask(KillTask {
            framework_id: framework_id.to_owned(),
            task_id: task_id.to_owned(),
            grace_period_seconds: Some(0.1),
        }))?;
        h.send(AllocMsg::Acknowledge(AcknowledgeUpdate {
            framework_id: framework_id.to_owned(),
            task_id: task_id.to_owned(),
            uuid: refused.uuid.clone(),
        }))?;
    }
    h.expect_no_new_update(Duration::from_millis(500), &[])
        .await?;
    ensure!(
        tree(root.path(), &work)? == before,
        "the hostile ids changed files outside the work dir: before {:?}, after {:?}",
        before.keys().collect::<Vec<_>>(),
        tree(root.path(), &work)?.keys().collect::<Vec<_>>()
    );

    // The other framework's task is still known, after a restart too.
    h.stop_agent().await?;
    let task = strata_agent::checkpoint::load_task(&victim_run, "victim")?;
    ensure!(
        task.is_some_and(|t| t.command.is_some()),
        "the victim's launch record is gone"
    );
    let updates = strata_agent::checkpoint::load_updates(&victim_run, FRAMEWORK, "victim")?;
    ensure!(
        updates.is_some_and(|(latest, _)| latest.state() == TaskState::Running),
        "the victim's updates are gone"
    );
    h.start_agent();
    let (_, register) = h.next_register().await?;
    let listed: Vec<(String, String, TaskState)> = register
        .tasks
        .iter()
        .map(|t| {
            (
                t.framework_id.clone(),
                t.task
                    .as_ref()
                    .map(|i| i.task_id.clone())
                    .unwrap_or_default(),
                t.latest_status
                    .as_ref()
                    .map_or(TaskState::Unspecified, TaskStatus::state),
            )
        })
        .collect();
    ensure!(
        listed
            == [(
                FRAMEWORK.to_owned(),
                "victim".to_owned(),
                TaskState::Running
            )],
        "the restarted agent lists {listed:?}"
    );
    ensure!(!process_gone(victim_pid), "the victim was lost");
    for dir in &outside {
        for file in ["task.pb", "updates.pb", "sentinel"] {
            ensure!(
                dir.join(file).is_file(),
                "{} is gone",
                dir.join(file).display()
            );
        }
    }
    h.kill("victim", 0.5)?;
    assert_update(&h.next_update_acked().await?, "victim", TaskState::Killed)?;
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_below_the_minimum_cpus_or_memory_is_refused_with_task_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    for (task_id, cpus, mem) in [
        ("nothing", 0.0, 0.0),
        ("no-cpu", 0.0, 64.0),
        ("too-little-cpu", 0.001, 64.0),
        ("no-mem", 0.5, 0.0),
        ("too-little-mem", 0.5, 1.0),
        ("nan", f64::NAN, 64.0),
    ] {
        let mut task = shell_task(task_id, "true");
        task.resources = vec![
            Resource::scalar(names::CPUS, cpus),
            Resource::scalar(names::MEM, mem),
        ];
        h.launch(task)?;
        let refused = h.next_update_acked().await?;
        assert_update(&refused, task_id, TaskState::Error)?;
        ensure!(
            refused.reason() == TaskReason::TaskInvalid
                && refused
                    .message
                    .contains("at least 0.01 cpus and 4 MiB of memory"),
            "{refused:?}"
        );
        ensure!(
            !dir.path()
                .join("runs")
                .join(FRAMEWORK)
                .join(task_id)
                .exists()
                && !dir
                    .path()
                    .join("sandboxes")
                    .join(FRAMEWORK)
                    .join(task_id)
                    .exists(),
            "the refused task {task_id} left files"
        );
    }
    h.expect_no_new_update(Duration::from_millis(300), &[])
        .await?;
    // The least a task may ask for runs.
    let mut task = shell_task("least", "true");
    task.resources = vec![
        Resource::scalar(names::CPUS, strata_proto::limits::MIN_TASK_CPUS),
        Resource::scalar(names::MEM, strata_proto::limits::MIN_TASK_MEM_MIB),
    ];
    h.launch(task)?;
    loop {
        let status = h.next_update_acked().await?;
        if status.state().is_terminal() {
            assert_update(&status, "least", TaskState::Finished)?;
            break;
        }
    }
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_truncated_task_checkpoint_loses_no_task_and_makes_no_phantom() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    for id in ["emptied", "truncated"] {
        h.launch(shell_task(id, "sleep 60"))?;
    }
    let mut running = HashSet::new();
    while running.len() < 2 {
        let status = h.next_update_acked().await?;
        if status.state() == TaskState::Running {
            running.insert(status.task_id);
        }
    }
    let pids = [h.pid_of("emptied")?, h.pid_of("truncated")?];
    h.stop_agent().await?;
    let run = |id: &str| dir.path().join("runs").join(FRAMEWORK).join(id);
    std::fs::write(run("emptied").join("task.pb"), b"")?;
    let whole = std::fs::read(run("truncated").join("task.pb"))?;
    std::fs::write(run("truncated").join("task.pb"), &whole[..whole.len() / 2])?;
    std::fs::write(run("truncated").join("updates.pb"), b"")?;
    h.start_agent();
    let (_, register) = h.next_register().await?;
    let mut listed: Vec<(String, String)> = register
        .tasks
        .iter()
        .map(|t| {
            let info = t.task.clone().unwrap_or_default();
            (
                info.task_id,
                info.command.map(|c| c.value).unwrap_or_default(),
            )
        })
        .collect();
    listed.sort();
    // Both real tasks, by their ids, with the command their supervisors were given; no task
    // without an id.
    ensure!(
        listed.len() == 2
            && listed[0].0 == "emptied"
            && listed[1].0 == "truncated"
            && listed.iter().all(|(_, command)| !command.is_empty()),
        "the restarted agent lists {listed:?}"
    );
    for pid in pids {
        ensure!(!process_gone(pid), "task supervisor {pid} was lost");
    }
    for id in ["emptied", "truncated"] {
        h.kill(id, 0.5)?;
    }
    let mut killed = HashSet::new();
    while killed.len() < 2 {
        let status = h.next_update_acked().await?;
        if status.state().is_terminal() {
            assert_update(&status, &status.task_id.clone(), TaskState::Killed)?;
            killed.insert(status.task_id);
        }
    }
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_memory_limit_fails_with_the_memory_reason_and_its_peak() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    // 32 MiB limit (shell_task); tail keeps all 200 MB of a line-less stream in memory.
    h.launch(shell_task("hog", "head -c 200000000 /dev/zero | tail"))?;
    let failed = loop {
        let status = h.next_update_acked().await?;
        if status.state().is_terminal() {
            break status;
        }
    };
    assert_update(&failed, "hog", TaskState::Failed)?;
    assert_eq!(
        failed.reason(),
        TaskReason::ContainerLimitationMemory,
        "{failed:?}"
    );
    ensure!(
        failed.message.contains("memory limit of 32.0 MiB")
            && failed.message.contains("peak usage"),
        "{}",
        failed.message
    );
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_asking_for_root_is_refused_unless_the_agent_allows_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    h.next_register().await?;
    let mut task = shell_task("rooted", "id -u");
    if let Some(command) = task.command.as_mut() {
        command.user = "root".to_owned();
    }
    h.launch(task)?;
    let failed = loop {
        let status = h.next_update_acked().await?;
        if status.state().is_terminal() {
            break status;
        }
    };
    assert_update(&failed, "rooted", TaskState::Failed)?;
    assert_eq!(failed.reason(), TaskReason::ContainerLaunchFailed);
    ensure!(
        failed.message.contains("would run as root")
            && failed.message.contains("--allow-root-tasks"),
        "{}",
        failed.message
    );
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_update_is_resent_with_its_uuid_after_an_agent_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A long retry interval: only the restart makes the agent send RUNNING again.
    let mut h = Harness::start_with_retry(dir.path(), Duration::from_secs(600)).await?;
    h.next_register().await?;
    h.launch(shell_task("pending", "sleep 30"))?;
    assert_update(
        &h.next_update_acked().await?,
        "pending",
        TaskState::Starting,
    )?;
    let running = h.next_update().await?;
    assert_update(&running, "pending", TaskState::Running)?;
    // Not acknowledged. The agent stops (the task keeps running) and comes back.
    h.stop_agent().await?;
    h.start_agent();
    h.next_register().await?;
    let resent = h.next_update().await?;
    ensure!(
        resent.uuid == running.uuid && resent.state() == TaskState::Running,
        "expected RUNNING resent with uuid {:?}, got {resent:?}",
        running.uuid
    );
    h.ack(&resent)?;
    h.kill("pending", 0.5)?;
    assert_update(&h.next_update_acked().await?, "pending", TaskState::Killed)?;
    h.stop_agent().await
}

/// `GET path` on the agent's `endpoint` (`host:port`): the status and the body.
async fn http_get(endpoint: &str, path: &str) -> Result<(u16, String)> {
    let page = get(endpoint, path).await?;
    Ok((page.status, page.body))
}

/// user + system CPU seconds of `task` on the agent's /metrics page.
async fn metrics_cpu_seconds(endpoint: &str, task: &str) -> Result<f64> {
    let (status, page) = http_get(endpoint, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}: {page}");
    let value = |name: &str| {
        strata_agent::http::metric_value(&page, name, task)
            .with_context(|| format!("no {name} for task {task} in {page}"))
    };
    Ok(value("strata_task_cpu_user_seconds_total")?
        + value("strata_task_cpu_system_seconds_total")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_streams_usage_and_its_metrics_move() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    let (_, register) = h.next_register().await?;
    let endpoint = register.info.context("no info")?.endpoint;
    ensure!(
        endpoint.starts_with("127.0.0.1:") && !endpoint.ends_with(":0"),
        "the agent registered the HTTP endpoint {endpoint:?}"
    );
    assert_eq!(
        http_get(&endpoint, "/health").await?,
        (200, "ok\n".to_owned())
    );
    // A CPU burner, held to half a core before it starts.
    let mut task = shell_task("spin", "while :; do :; done");
    task.cpu_limit = Some(0.5);
    h.launch(task)?;
    assert_update(&h.next_update_acked().await?, "spin", TaskState::Starting)?;
    assert_update(&h.next_update_acked().await?, "spin", TaskState::Running)?;

    // The usage stream reports the task with its limits, memory and processes, and the CPU it
    // burns.
    let record = h
        .next(|_, m| match &m.message {
            Some(AgentMsg::Usage(u)) => u
                .tasks
                .iter()
                .find(|t| t.task_id == "spin" && t.cpu.as_ref().is_some_and(|c| c.cores > 0.1))
                .cloned(),
            _ => None,
        })
        .await
        .context("no usage record showed the task burning CPU")?;
    eprintln!("usage record: {record:?}");
    assert_eq!(record.agent_id, ASSIGNED_ID);
    assert_eq!(record.framework_id, FRAMEWORK);
    let cpu = record.cpu.context("no cpu")?;
    // Over 200 ms the 100 ms CFS periods let it run a little more or less than half the time.
    ensure!(
        cpu.cores <= 0.8,
        "a task limited to 0.5 cores used {}",
        cpu.cores
    );
    assert_eq!(cpu.limit_cores, 0.5);
    assert_eq!(cpu.request_cores, 0.1);
    let memory = record.memory.context("no memory")?;
    ensure!(memory.current_bytes > 0, "{memory:?}");
    assert_eq!(memory.limit_bytes, 32 << 20);
    ensure!(record.pids.context("no pids")?.current >= 1);

    // /usage serves the same record, /metrics shows the CPU time grow.
    let (status, body) = http_get(&endpoint, "/usage?task=spin").await?;
    ensure!(status == 200, "/usage answered {status}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(json["tasks"][0]["task_id"], "spin");
    let first = metrics_cpu_seconds(&endpoint, "spin").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = metrics_cpu_seconds(&endpoint, "spin").await?;
    eprintln!("/metrics: cpu {first:.3} s, then {second:.3} s a second later");
    ensure!(
        second - first > 0.2,
        "the task's CPU seconds on /metrics did not move: {first} then {second}"
    );

    // Once it is killed, the task leaves the reports.
    h.kill("spin", 0.2)?;
    assert_update(&h.next_update_acked().await?, "spin", TaskState::Killed)?;
    h.next(|_, m| match &m.message {
        Some(AgentMsg::Usage(u))
            if u.tasks.iter().all(|t| t.task_id != "spin")
                && (!u.delta || u.ended.iter().any(|k| k.task_id == "spin")) =>
        {
            Some(())
        }
        _ => None,
    })
    .await
    .context("the killed task stayed in the usage reports")?;
    let (status, _) = http_get(&endpoint, "/usage?task=spin").await?;
    assert_eq!(status, 404);
    h.stop_agent().await
}

/// Rebuilds the allocator's view of an agent stream's usage from its reports, as the
/// allocator's `UsageBook` does: a full report replaces it, a delta updates it.
fn replay(book: &mut BTreeMap<String, TaskUsage>, usage: &strata_proto::agent_message::Usage) {
    if !usage.delta {
        book.clear();
    }
    for key in &usage.ended {
        book.remove(&key.task_id);
    }
    for task in &usage.tasks {
        book.insert(task.task_id.clone(), task.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_goes_in_full_once_per_stream_then_as_deltas_of_what_changed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    let (conn, _) = h.next_register().await?;
    let mut spin = shell_task("spin", "while :; do :; done");
    spin.cpu_limit = Some(0.2);
    h.launch(spin)?;
    h.launch(shell_task("idle", "exec sleep 30"))?;

    // Every message of the stream, in order: updates are acknowledged, reports replayed.
    let mut book = BTreeMap::new();
    let mut running = HashSet::new();
    let (mut reports, mut deltas, mut with_spin, mut with_idle) = (0, 0, 0, 0);
    while deltas < 15 {
        let (c, message) = h.next(|c, m| Some((c, m.message.clone()))).await?;
        ensure!(c == conn, "the stream changed");
        match message {
            Some(AgentMsg::StatusUpdate(update)) => {
                let status = update.status.context("an update without a status")?;
                h.ack(&status)?;
                if status.state() == TaskState::Running {
                    running.insert(status.task_id.clone());
                }
            }
            Some(AgentMsg::Usage(usage)) => {
                reports += 1;
                ensure!(
                    usage.delta == (reports > 1),
                    "report {reports} on the stream has delta {}: only the first is full",
                    usage.delta
                );
                replay(&mut book, &usage);
                if running.len() == 2 && book.len() == 2 {
                    deltas += 1;
                    with_spin += usize::from(usage.tasks.iter().any(|t| t.task_id == "spin"));
                    with_idle += usize::from(usage.tasks.iter().any(|t| t.task_id == "idle"));
                }
            }
            _ => {}
        }
    }
    eprintln!(
        "{deltas} deltas: spin in {with_spin}, idle in {with_idle}; idle's record: {:?}",
        book["idle"]
    );
    assert_eq!(with_spin, deltas, "a busy task changes every interval");
    let idle = &book["idle"];
    ensure!(
        idle.memory.as_ref().is_some_and(|m| m.current_bytes > 0),
        "the idle task's record stands in the allocator's view: {idle:?}"
    );
    if idle
        .cpu
        .as_ref()
        .is_some_and(|c| c.oncpu_seconds_total.is_some())
    {
        // eBPF shows it has not run: it is read in full (and resent) only now and then.
        ensure!(
            with_idle <= 3,
            "a sleeping task was resent in {with_idle} of {deltas} deltas"
        );
    } else {
        eprintln!("eBPF is not loaded here: every task is read in full, and resent, each interval");
        assert_eq!(with_idle, deltas);
    }

    // A task that ends is named in the next delta.
    h.kill("idle", 0.0)?;
    loop {
        let message = h.next(|_, m| Some(m.message.clone())).await?;
        match message {
            Some(AgentMsg::StatusUpdate(update)) => {
                h.ack(&update.status.context("an update without a status")?)?;
            }
            Some(AgentMsg::Usage(usage)) => {
                ensure!(usage.delta, "a delta, on the same stream");
                replay(&mut book, &usage);
                if usage.ended.iter().any(|k| k.task_id == "idle") {
                    break;
                }
                ensure!(
                    usage.tasks.iter().all(|t| t.task_id != "idle"),
                    "the killed task was reported again"
                );
            }
            _ => {}
        }
    }
    assert_eq!(book.keys().collect::<Vec<_>>(), ["spin"]);

    // A new stream starts with a full report.
    h.drop_stream()?;
    let (second, _) = h.next_register().await?;
    let usage = h
        .next(|c, m| match &m.message {
            Some(AgentMsg::Usage(u)) if c == second => Some(u.clone()),
            _ => None,
        })
        .await?;
    ensure!(!usage.delta, "the first report on a new stream is full");
    let ids: Vec<&str> = usage.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["spin"]);
    h.kill("spin", 0.0)?;
    h.stop_agent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_profiles_run_two_at_a_time_and_the_rest_are_told_to_retry() -> Result<()>
{
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: profiling needs root (eBPF and perf events)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start(dir.path()).await?;
    let (_, register) = h.next_register().await?;
    let endpoint = register.info.context("no info")?.endpoint;
    let mut task = shell_task("spin", "while :; do :; done");
    task.cpu_limit = Some(0.5);
    h.launch(task)?;
    while h.next_update_acked().await?.state() != TaskState::Running {}
    // The agent knows the task once it has a usage record (after one interval).
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, body) = http_get(&endpoint, "/profile?task=spin&seconds=1").await?;
        if status == 200 {
            break;
        }
        if body.contains("eBPF is off") {
            eprintln!("skipped: the agent could not load eBPF here: {body}");
            return h.stop_agent().await;
        }
        ensure!(
            body.contains("no usage record yet") && tokio::time::Instant::now() < deadline,
            "GET /profile answered {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pages =
        futures::future::join_all((0..30).map(|_| get(&endpoint, "/profile?task=spin&seconds=3")))
            .await;
    let mut profiled = 0;
    let mut told_to_retry = 0;
    for page in pages {
        let page = page?;
        match page.status {
            200 => {
                ensure!(
                    page.body.contains("sh"),
                    "a profile without the task: {}",
                    page.body
                );
                profiled += 1;
            }
            429 => {
                ensure!(
                    page.body.contains("retry") && page.header("retry-after").is_some(),
                    "429 without a retry hint: {:?} {}",
                    page.headers,
                    page.body
                );
                told_to_retry += 1;
            }
            other => bail!("GET /profile answered {other}: {}", page.body),
        }
    }
    ensure!(
        profiled == strata_agent::http::DEFAULT_MAX_CONCURRENT_PROFILES && told_to_retry == 28,
        "{profiled} profiles ran and {told_to_retry} were told to retry"
    );
    // The slots are free again.
    let (status, body) = http_get(&endpoint, "/profile?task=spin&seconds=1").await?;
    ensure!(status == 200, "GET /profile answered {status}: {body}");
    h.stop_agent().await
}

/// A task asking for `gpus` GPUs that writes the GPUs it was given to `gpus.txt` in its
/// sandbox and sleeps.
fn gpu_task(task_id: &str, gpus: f64) -> TaskInfo {
    let mut task = shell_task(
        task_id,
        "echo \"$CUDA_VISIBLE_DEVICES\" > gpus.txt; sleep 60",
    );
    task.resources.push(Resource::scalar(names::GPUS, gpus));
    task
}

/// Acknowledges updates until task `task_id` reaches `state`; returns that update.
async fn until_state(h: &mut Harness, task_id: &str, state: TaskState) -> Result<TaskStatus> {
    loop {
        let status = h.next_update_acked().await?;
        if status.task_id == task_id && status.state() == state {
            return Ok(status);
        }
        ensure!(
            status.task_id != task_id || !status.state().is_terminal(),
            "{task_id} ended {} ({:?}) instead of reaching {}",
            status.state().label(),
            status.message,
            state.label()
        );
    }
}

/// What the task wrote of its GPUs (`CUDA_VISIBLE_DEVICES`), once it has.
async fn visible_gpus(dir: &Path, task_id: &str) -> Result<String> {
    let path = dir
        .join("sandboxes")
        .join(FRAMEWORK)
        .join(task_id)
        .join("gpus.txt");
    use strata_test_support::wait::{Poll, poll_until};
    let text = poll_until(STEP, Duration::from_millis(50), || async {
        Ok(match std::fs::read_to_string(&path) {
            Ok(text) if text.ends_with('\n') => Poll::Ready(text),
            _ => Poll::Pending(format!("{task_id} wrote no {}", path.display())),
        })
    })
    .await?;
    Ok(text.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_are_offered_assigned_lowest_first_and_reattached_after_a_restart() -> Result<()> {
    use strata_agent::gpu::fake::{FakeBackend, fake_device};
    let dir = tempfile::tempdir()?;
    let mut h = Harness::start_server(dir.path(), Duration::from_millis(200)).await?;
    h.gpus = Some(FakeBackend::new(vec![fake_device(0), fake_device(1)]));
    h.start_agent();

    let (_, register) = h.next_register().await?;
    let info = register.info.context("register without info")?;
    assert_eq!(strata_proto::scalar_sum(&info.resources, names::GPUS), 2.0);
    let model = info.attributes.iter().find(|a| a.name == "gpu_model");
    assert_eq!(model.map(|a| a.value.as_str()), Some("Fake GPU 80GB"));

    // The lowest free index, named by UUID; checkpointed beside the task.
    h.launch(gpu_task("g1", 1.0))?;
    until_state(&mut h, "g1", TaskState::Running).await?;
    assert_eq!(visible_gpus(dir.path(), "g1").await?, "GPU-fake-0");
    let checkpoint = dir.path().join("runs").join(FRAMEWORK).join("g1");
    let saved = strata_agent::checkpoint::load_gpus(&checkpoint)?;
    assert_eq!(saved, [fake_device(0)]);

    // Fractions and more than is free are refused, with what to do.
    h.launch(gpu_task("half", 0.5))?;
    let refused = until_state(&mut h, "half", TaskState::Error).await?;
    assert!(
        refused.message.contains("only whole GPUs"),
        "{}",
        refused.message
    );
    h.launch(gpu_task("two", 2.0))?;
    let failed = until_state(&mut h, "two", TaskState::Failed).await?;
    assert_eq!(
        failed.message,
        "task \"two\" asks for 2 GPU(s) but only 1 of this agent's 2 are free: GPU 0 is task \"g1\"'s"
    );

    // A restarted agent re-attaches g1 with its GPU: the next task gets the other one.
    h.stop_agent().await?;
    h.start_agent();
    let (_, register) = h.next_register().await?;
    assert!(
        register
            .tasks
            .iter()
            .any(|t| t.task.as_ref().is_some_and(|t| t.task_id == "g1")),
        "g1 is re-registered running"
    );
    h.launch(gpu_task("g2", 1.0))?;
    until_state(&mut h, "g2", TaskState::Running).await?;
    assert_eq!(visible_gpus(dir.path(), "g2").await?, "GPU-fake-1");
    h.launch(gpu_task("g3", 1.0))?;
    let failed = until_state(&mut h, "g3", TaskState::Failed).await?;
    assert!(
        failed.message.contains("only 0 of this agent's 2 are free"),
        "{}",
        failed.message
    );

    // g1's end frees its GPU for the next task.
    h.kill("g1", 0.0)?;
    until_state(&mut h, "g1", TaskState::Killed).await?;
    h.launch(gpu_task("g4", 1.0))?;
    until_state(&mut h, "g4", TaskState::Running).await?;
    assert_eq!(visible_gpus(dir.path(), "g4").await?, "GPU-fake-0");
    h.kill("g2", 0.0)?;
    until_state(&mut h, "g2", TaskState::Killed).await?;
    h.kill("g4", 0.0)?;
    until_state(&mut h, "g4", TaskState::Killed).await?;
    h.stop_agent().await
}
