//! `strata local`, the README's main job, started in the guest the way a user starts it on a
//! pure cgroup v2 host: from a shell that shares its cgroup, and alone in a fresh top-level
//! cgroup. The real `strata` and `strata-agent` binaries are in the guest's `/bin`; tasks are
//! launched through the framework SDK, which can ask for every limit.
//!
//! These tests run only inside the qemu guest (`cargo xtask vm-test`); on a host they are
//! ignored, and skip with a message under `--ignored`.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_agent::cgroup::RootPlacement;
use strata_framework::proto::{Resource, TaskInfo, TaskReason, TaskState, TaskStatus};
use strata_framework::{Event, FrameworkBuilder, ResourceBudget, task};
use strata_vm_tests::{CGROUP2_ROOT, guest_or_skip};

/// How long `strata local` may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a scenario's tasks may take to end.
const TASKS_LIMIT: Duration = Duration::from_secs(180);

/// How `strata local` is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// By a shell that stays in the same cgroup (a login shell, a terminal).
    SharedShell,
    /// Alone in a fresh top-level cgroup (as a process supervisor without systemd would).
    FreshTopLevel,
}

/// A running `strata local`, stopped (SIGTERM, then SIGKILL) and cleaned up on drop.
struct Local {
    child: Child,
    url: String,
    work_dir: PathBuf,
    /// The cgroup made for the starting shell, removed on drop.
    start_cgroup: PathBuf,
    stderr: mpsc::Receiver<String>,
}

impl Local {
    /// Starts `strata local` with `args`, started as `how` says, logging at `log`; waits for
    /// its banner.
    fn start(name: &str, how: Start, log: &str, args: &[&str]) -> Result<Self> {
        let (mut local, url) = Self::spawn(name, how, log, args)?;
        match url.recv_timeout(START_LIMIT) {
            Ok(url) => {
                local.url = url;
                Ok(local)
            }
            Err(_) => {
                let said = local.wait_for_exit();
                bail!("strata local did not start; it said:\n{said}")
            }
        }
    }

    /// Starts `strata local` as [`Local::start`] does, expecting it to refuse to run; returns
    /// what it said on stderr once it ended, and the cgroups it left in the start cgroup.
    fn refused(name: &str, how: Start, args: &[&str]) -> Result<(String, Vec<PathBuf>)> {
        let (mut local, _url) = Self::spawn(name, how, "info", args)?;
        let said = local.wait_for_exit();
        let left = std::fs::read_dir(&local.start_cgroup)?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        Ok((said, left))
    }

    /// Waits (at most [`START_LIMIT`]) for the started process to end and returns everything
    /// it said on stderr.
    fn wait_for_exit(&mut self) -> String {
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            thread::sleep(Duration::from_millis(50));
        }
        let mut said = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            said.push(line);
        }
        said.join("\n")
    }

    /// Starts the shell that starts `strata local`; returns it and where its URL will come.
    fn spawn(
        name: &str,
        how: Start,
        log: &str,
        args: &[&str],
    ) -> Result<(Self, mpsc::Receiver<String>)> {
        let start_cgroup = Path::new(CGROUP2_ROOT).join(format!("vm-local-{name}"));
        std::fs::create_dir_all(&start_cgroup)
            .with_context(|| format!("creating {}", start_cgroup.display()))?;
        let work_dir = PathBuf::from(format!("/tmp/vm-local-{name}"));
        let _ = std::fs::remove_dir_all(&work_dir);
        // The shell joins the cgroup, then runs strata local: as its child (the shell waits,
        // sharing the cgroup), or in its place (exec: alone in it).
        let script = match how {
            Start::SharedShell => {
                "echo $$ > \"$1/cgroup.procs\" || exit 90; shift; /bin/strata local \"$@\"; echo \"strata local exited $?\" >&2"
            }
            Start::FreshTopLevel => {
                "echo $$ > \"$1/cgroup.procs\" || exit 90; shift; exec /bin/strata local \"$@\""
            }
        };
        let mut child = Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(&start_cgroup)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--mesos-listen",
                "none",
                "--work-dir",
            ])
            .arg(&work_dir)
            .args(args)
            .env("RUST_LOG", log)
            // A secret of the agent's that no task may see.
            .env(AGENT_SECRET, "leaked")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting /bin/sh -c strata local")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  strata local: {line}");
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (url_tx, url_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("strata local: allocator listening on ") {
                    let url = rest.split(';').next().unwrap_or_default().to_owned();
                    let _ = url_tx.send(url);
                }
            }
        });
        let local = Local {
            child,
            url: String::new(),
            work_dir,
            start_cgroup,
            stderr: err_rx,
        };
        Ok((local, url_rx))
    }

    /// The agent's cgroup root: with no systemd in the guest, a top-level cgroup named after
    /// the work dir.
    fn agent_root(&self) -> Result<PathBuf> {
        let config = strata_agent::AgentConfig::new(&self.url, &self.work_dir);
        match config.root_placement() {
            RootPlacement::Auto(name) => Ok(Path::new(CGROUP2_ROOT).join(name)),
            other => bail!("unexpected placement {other:?}"),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // SIGTERM to `strata local` itself (the shell's child, or the shell after exec): it
        // kills its tasks and removes its cgroups.
        let procs =
            std::fs::read_to_string(self.start_cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "strata" {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::write(self.start_cgroup.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.start_cgroup).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        // Whatever strata local did not remove: `strata-agent --remove-cgroups` with the same
        // work dir finds the same root.
        let _ = Command::new("/bin/strata-agent")
            .args(["--remove-cgroups", "--work-dir"])
            .arg(&self.work_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// Launches `tasks` (as offers allow) through a framework and returns each task's terminal
/// status. Updates are acknowledged by the SDK.
async fn run_tasks(
    url: &str,
    name: &str,
    tasks: Vec<TaskInfo>,
) -> Result<HashMap<String, TaskStatus>> {
    let (client, mut events) = FrameworkBuilder::new(url)
        .name(name)
        .subscribe()
        .await
        .context("subscribing")?;
    let total = tasks.len();
    let mut queue = std::collections::VecDeque::from(tasks);
    let mut ended = HashMap::new();
    let deadline = tokio::time::Instant::now() + TASKS_LIMIT;
    while ended.len() < total {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .with_context(|| format!("{} of {total} tasks ended in {TASKS_LIMIT:?}", ended.len()))?
            .context("the framework's events ended")?;
        match event {
            Event::Offers(offers) => {
                for offer in offers {
                    let mut budget = ResourceBudget::of_offer(&offer);
                    let mut batch = Vec::new();
                    while let Some(t) = queue.front() {
                        if !budget.take(&t.resources) {
                            break;
                        }
                        batch.extend(queue.pop_front());
                    }
                    if batch.is_empty() {
                        client.decline(vec![offer.id.clone()], Some(0.2)).await?;
                    } else {
                        client.launch(&offer, batch).await?;
                    }
                }
            }
            Event::Update(status) => {
                let state = TaskState::try_from(status.state).unwrap_or(TaskState::Unknown);
                if state.is_terminal() {
                    ended.insert(status.task_id.clone(), status);
                }
            }
            Event::Error { message } => bail!("the allocator said: {message}"),
            _ => {}
        }
    }
    client
        .teardown()
        .await
        .context("tearing the framework down")?;
    Ok(ended)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// The helper's path in the guest.
const HELPER: &str = "/bin/strata-vm-helper";

/// An environment variable of `strata local` (and so of its agent) that tasks must not see.
const AGENT_SECRET: &str = "STRATA_VM_AGENT_SECRET";

/// Runs a task that allocates past its memory limit and one that forks past its pids limit
/// through `local`, and checks that the kernel stopped both, and that `strata run` works.
fn assert_isolated(local: &Local, start_cgroup: &Path) -> Result<()> {
    let run = Command::new("/bin/strata")
        .args([
            "--allocator",
            &local.url,
            "run",
            "--mem",
            "16",
            "--",
            "echo",
            "hello",
        ])
        .output()
        .context("running strata run")?;
    ensure!(
        run.status.success(),
        "strata run failed ({}): {} {}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let tasks = vec![
        task("oom")
            .command([HELPER, "-", "alloc", "256"])
            .cpus(0.1)
            .mem(32.0)
            .build(),
        task("pids")
            .shell(format!(
                "{HELPER} - fork-loop 32 > fork.out; grep -q '^refused=1$' fork.out && grep -q '^spawned=[0-7]$' fork.out"
            ))
            .cpus(0.1)
            .mem(64.0)
            .pids_limit(8)
            .build(),
    ];
    let ended = runtime()?.block_on(run_tasks(&local.url, "vm-limits", tasks))?;
    let oom = &ended["oom"];
    ensure!(
        oom.state == TaskState::Failed as i32
            && oom.reason == TaskReason::ContainerLimitationMemory as i32,
        "the task over its memory limit was not stopped by it: {oom:?}"
    );
    let pids = &ended["pids"];
    ensure!(
        pids.state == TaskState::Finished as i32,
        "the task over its pids limit could fork more than 8 processes (or failed otherwise): {pids:?}"
    );
    // The tasks' cgroups were in the agent's own top-level cgroup, not in the start cgroup.
    let root = local.agent_root()?;
    ensure!(
        root.join("containers").is_dir(),
        "no containers in the agent root {}",
        root.display()
    );
    ensure!(
        !std::fs::read_dir(start_cgroup)?
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir())),
        "the agent made cgroups in the cgroup it was started in"
    );
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn local_started_from_a_shell_sharing_its_cgroup_isolates_every_task() -> Result<()> {
    if !guest_or_skip("local_started_from_a_shell_sharing_its_cgroup_isolates_every_task") {
        return Ok(());
    }
    let local = Local::start("shared", Start::SharedShell, "info", &[])?;
    assert_isolated(&local, &local.start_cgroup)
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn local_started_alone_in_a_fresh_top_level_cgroup_isolates_every_task() -> Result<()> {
    if !guest_or_skip("local_started_alone_in_a_fresh_top_level_cgroup_isolates_every_task") {
        return Ok(());
    }
    let local = Local::start("fresh", Start::FreshTopLevel, "info", &[])?;
    assert_isolated(&local, &local.start_cgroup)
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn below_own_placement_in_a_shared_cgroup_refuses_at_start_up_and_says_why() -> Result<()> {
    if !guest_or_skip("below_own_placement_in_a_shared_cgroup_refuses_at_start_up_and_says_why") {
        return Ok(());
    }
    let (said, left) = Local::refused(
        "refused",
        Start::SharedShell,
        &["--cgroup-placement", "below-own"],
    )?;
    for expected in [
        "cannot enforce task limits",
        "other processes are in it",
        "--cgroup-placement top-level",
        "strata local exited 1",
    ] {
        ensure!(
            said.contains(expected),
            "{expected:?} not in what it said:\n{said}"
        );
    }
    ensure!(
        left.is_empty(),
        "a refused start left cgroups behind: {left:?}"
    );
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn a_thousand_failed_launches_leave_no_cgroup_sandbox_or_run_file() -> Result<()> {
    if !guest_or_skip("a_thousand_failed_launches_leave_no_cgroup_sandbox_or_run_file") {
        return Ok(());
    }
    // Errors only: each failed launch is a warning.
    let local = Local::start("failing", Start::FreshTopLevel, "error", &[])?;
    // Each launch gets as far as its cgroup, sandbox and run files, then fails: the user does
    // not exist.
    let tasks: Vec<TaskInfo> = (0..1000)
        .map(|i| {
            task(format!("bad-{i}"))
                .command(["/bin/true"])
                .user("no-such-user")
                .cpus(strata_proto::limits::MIN_TASK_CPUS)
                .mem(strata_proto::limits::MIN_TASK_MEM_MIB)
                .build()
        })
        .collect();
    let started = Instant::now();
    let ended = runtime()?.block_on(run_tasks(&local.url, "vm-failing", tasks))?;
    eprintln!(
        "  1000 failed launches in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failed = ended
        .values()
        .filter(|s| s.state == TaskState::Failed as i32)
        .count();
    ensure!(
        failed == 1000,
        "{failed} of 1000 launches failed: {:?}",
        ended.values().next()
    );
    // Acknowledged failures are forgotten by the agent: give it a moment, then look.
    let root = local.agent_root()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers(&root, &local.work_dir)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("left behind after 1000 failed launches: {left:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Task cgroups, sandboxes and run files (or directories) left below the agent's cgroup root
/// and work dir: what is two levels down (`<framework>/<task>`), directories only for cgroups
/// (their files are the kernel's).
fn leftovers(root: &Path, work_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut left = Vec::new();
    collect_tasks(&root.join("containers"), true, &mut left);
    collect_tasks(&work_dir.join("sandboxes"), false, &mut left);
    collect_tasks(&work_dir.join("runs"), false, &mut left);
    Ok(left)
}

fn collect_tasks(dir: &Path, dirs_only: bool, out: &mut Vec<PathBuf>) {
    let is_dir = |e: &std::fs::DirEntry| e.file_type().is_ok_and(|t| t.is_dir());
    for framework in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !is_dir(&framework) {
            continue;
        }
        for entry in std::fs::read_dir(framework.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if !dirs_only || is_dir(&entry) {
                out.push(entry.path());
            }
        }
    }
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn local_tasks_get_no_agent_environment_and_only_allowed_capabilities() -> Result<()> {
    if !guest_or_skip("local_tasks_get_no_agent_environment_and_only_allowed_capabilities") {
        return Ok(());
    }
    let local = Local::start(
        "privileges",
        Start::FreshTopLevel,
        "info",
        &["--allowed-capabilities", "NET_BIND_SERVICE"],
    )?;
    let default_path = strata_agent::containerizer::DEFAULT_PATH;
    let tasks = vec![
        // As nobody (the default user), asking for what would make it root.
        task("setuid")
            .shell("id -u")
            .capability("CAP_SETUID")
            .cpus(0.1)
            .mem(16.0)
            .build(),
        task("env")
            .shell(format!(
                "test -z \"${AGENT_SECRET}\" || exit 3; test \"$PATH\" = {default_path} || exit 4; \
                 test \"$HOME\" = \"$STRATA_SANDBOX\" || exit 5; test \"$OWN\" = mine || exit 6"
            ))
            .env("OWN", "mine")
            .cpus(0.1)
            .mem(16.0)
            .build(),
        task("bind")
            .shell(format!("{HELPER} - bind 80 | grep -qx bind=ok"))
            .capability("NET_BIND_SERVICE")
            .network_isolation()
            .cpus(0.1)
            .mem(16.0)
            .build(),
    ];
    let ended = runtime()?.block_on(run_tasks(&local.url, "vm-privileges", tasks))?;
    let setuid = &ended["setuid"];
    ensure!(
        setuid.state == TaskState::Error as i32
            && setuid.reason == TaskReason::TaskInvalid as i32
            && setuid.message.contains("CAP_SETUID")
            && setuid.message.contains("--allowed-capabilities"),
        "a task asking for CAP_SETUID was not refused with TASK_ERROR naming it: {setuid:?}"
    );
    let env = &ended["env"];
    ensure!(
        env.state == TaskState::Finished as i32,
        "the task's environment is wrong (exit 3: it sees the agent's {AGENT_SECRET}, 4: PATH, 5: HOME, 6: its own variable): {env:?}"
    );
    let bind = &ended["bind"];
    ensure!(
        bind.state == TaskState::Finished as i32,
        "a task with the allowed NET_BIND_SERVICE could not bind port 80: {bind:?}"
    );
    Ok(())
}

/// Through the real agent and allocator: the agent says at start-up that it enforces ports; a
/// task given a port (from the offer) binds it over TCP and UDP and is refused any other with
/// EPERM; a task given no ports can bind none (IPv4 or IPv6).
#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn local_tasks_bind_only_the_ports_they_were_given() -> Result<()> {
    if !guest_or_skip("local_tasks_bind_only_the_ports_they_were_given") {
        return Ok(());
    }
    let local = Local::start(
        "ports",
        Start::FreshTopLevel,
        "info",
        &["--ports", "31000-31009"],
    )?;
    let deadline = Instant::now() + START_LIMIT;
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.contains("port enforcement on"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match local.stderr.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => bail!(
                "the agent never said port enforcement is on:\n{}",
                said.join("\n")
            ),
        }
    }
    let tasks = vec![
        task("given")
            .shell(format!(
                "{HELPER} - binds 0 tcp4:31005 udp6:31005 tcp4:31006 udpmapped:31006 > out; cat out; \
                 grep -qx tcp4:31005=ok:31005 out && grep -qx udp6:31005=ok:31005 out && \
                 grep -qx tcp4:31006=EPERM out && grep -qx udpmapped:31006=EPERM out"
            ))
            .resource(Resource::ranges("ports", [(31005, 31005)]))
            .cpus(0.1)
            .mem(16.0)
            .build(),
        task("none")
            .shell(format!(
                "{HELPER} - binds 0 tcp4:31007 tcp6:8080 udp4:8081 > out; cat out; \
                 grep -qx tcp4:31007=EPERM out && grep -qx tcp6:8080=EPERM out && \
                 grep -qx udp4:8081=EPERM out"
            ))
            .cpus(0.1)
            .mem(16.0)
            .build(),
    ];
    let ended = runtime()?.block_on(run_tasks(&local.url, "vm-ports", tasks))?;
    for name in ["given", "none"] {
        let status = &ended[name];
        ensure!(
            status.state == TaskState::Finished as i32,
            "task {name} did not bind as expected (its script checks each bind): {status:?}"
        );
    }
    Ok(())
}

/// Through `strata local` (the real agent, allocator and a framework): with the egress device
/// given by flag (a veth pair into a namespace), the agent says egress limits are on, offers
/// net_egress_mbps, and a task given 30 of it sends within ±5% of 30 Mbit/s.
#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn local_a_task_given_net_egress_mbps_is_limited() -> Result<()> {
    if !guest_or_skip("local_a_task_given_net_egress_mbps_is_limited") {
        return Ok(());
    }
    use strata_vm_tests::egress::{DEVICE, Link, PEER_ADDR, Sink};
    let link = Link::create()?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let sink = Sink::start(&link, Path::new(HELPER), 5201, dir.path())?;
    let local = Local::start(
        "egress",
        Start::FreshTopLevel,
        "info",
        &["--net-egress-device", DEVICE, "--net-egress-mbps", "1000"],
    )?;
    let deadline = Instant::now() + START_LIMIT;
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains("egress limits on")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match local.stderr.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => bail!(
                "the agent never said egress limits are on:\n{}",
                said.join("\n")
            ),
        }
    }
    let tasks = vec![
        task("limited")
            .shell(format!("{HELPER} - tcp-blast {PEER_ADDR}:5201 3000"))
            .resource(Resource::scalar("net_egress_mbps", 30.0))
            .cpus(0.1)
            .mem(16.0)
            .build(),
    ];
    let ended = runtime()?.block_on(run_tasks(&local.url, "vm-egress", tasks))?;
    let status = &ended["limited"];
    ensure!(
        status.state == TaskState::Finished as i32,
        "task limited did not finish: {status:?}"
    );
    let mbps = sink.mbps()?;
    eprintln!("local: a task given 30 Mbit/s sent at {mbps:.2} Mbit/s");
    ensure!(
        (28.5..=31.5).contains(&mbps),
        "the task given 30 Mbit/s sent at {mbps:.2} Mbit/s (not within ±5%)"
    );
    Ok(())
}
