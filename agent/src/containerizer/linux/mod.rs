//! [`LinuxContainerizer`]: runs each task isolated in a cgroup of its own, with the limits its
//! resources ask for (see [`crate::cgroup`]).
//!
//! Invariants:
//! - A task's cgroup `<root>/containers/<framework-id>/<task-id>` exists with its limits written
//!   before the task's first process runs; that process joins it between fork and exec, so
//!   everything the command does and forks is limited from the start.
//! - When the command's main process ends, whatever is left in the cgroup is killed, then the
//!   cgroup is removed. An OOM kill in the cgroup is reported by [`Container::memory_oom`].
//! - Kill = SIGTERM to every process in the cgroup, the grace period, then every process left
//!   is killed at once (`cgroup.kill` on v2, freeze and SIGKILL on v1).
//! - Sandboxes live under `<work_dir>/sandboxes` as with [`ProcessContainerizer`](crate::containerizer::process::ProcessContainerizer); the agent
//!   removes them a configurable time after the task ended ([`gc_sandboxes`]).

use std::fs::OpenOptions;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use strata_proto::{CommandInfo, TaskInfo, names, scalar_sum};
use tokio::sync::watch;

use crate::cgroup::{self, CgroupBackend, Limits, MemoryOom, TaskCgroup};
use crate::checkpoint;
use crate::containerizer::{
    Container, Containerizer, ContainerizerError, ExitStatus, LaunchSpec, Prepared, build_command,
    checked_command, prepare_sandbox,
};
use crate::ebpf::{DeviceControl, DeviceRule};
use crate::supervisor::TaskSpec;

const MIB: f64 = 1024.0 * 1024.0;

/// Settings of the [`LinuxContainerizer`].
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// Where sandboxes and run files live.
    pub work_dir: PathBuf,
    /// pids.max for tasks that set no `pids_limit`.
    pub default_pids_limit: u64,
    /// The `strata-agent` binary, run as the `launcher` that forks each task's supervisor and
    /// init: tasks then get their own namespaces, user and capabilities. `None` runs
    /// tasks as plain children of the agent in their cgroups only.
    pub supervisor_exe: Option<PathBuf>,
    /// The user tasks run as when their command names none.
    pub default_user: String,
    /// Whether tasks may run as root (uid 0).
    pub allow_root: bool,
    /// stdout and stderr are each rotated when they would pass this size.
    pub log_max_bytes: u64,
}

impl LinuxConfig {
    /// Defaults: 4096 processes per task, no supervisor, user `nobody`, root refused, logs
    /// rotated at 10 MiB.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            default_pids_limit: 4096,
            supervisor_exe: None,
            default_user: "nobody".to_owned(),
            allow_root: false,
            log_max_bytes: 10 << 20,
        }
    }
}

/// The cgroup limits a task asks for.
pub fn limits_for(task: &TaskInfo, default_pids_limit: u64) -> Limits {
    let cpus = scalar_sum(&task.resources, names::CPUS);
    let mem = scalar_sum(&task.resources, names::MEM);
    let positive = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
    Limits {
        cpus: positive(cpus),
        cpu_limit: task.cpu_limit.and_then(positive),
        mem_bytes: positive(mem).map(|m| (m * MIB) as u64),
        mem_soft_bytes: task
            .mem_soft_limit_mib
            .and_then(positive)
            .map(|m| (m * MIB) as u64),
        pids_max: Some(if task.pids_limit > 0 {
            task.pids_limit
        } else {
            default_pids_limit
        }),
    }
}

/// Runs tasks in cgroups of their own; see the module docs.
#[derive(Debug, Clone)]
pub struct LinuxContainerizer {
    config: LinuxConfig,
    cgroups: Arc<dyn CgroupBackend>,
    devices: Option<Arc<Mutex<DeviceControl>>>,
    /// The device program's attachment to an empty cgroup ([`cgroup::DEVICE_KEEPER_DIR`]) that
    /// lives as long as the agent: the kernel enables its cgroup-device hook (a static key,
    /// patched into the code on every cpu) when the first program is attached and disables it
    /// when the last goes; with this one always there, tasks attaching and detaching theirs
    /// do not patch the kernel's code at every launch and teardown.
    device_keeper: Arc<Mutex<Option<(PathBuf, strata_agent_common::CgroupId)>>>,
    /// Forks supervisors ahead of time (started on the first supervised launch).
    launcher: Arc<tokio::sync::Mutex<Option<Launcher>>>,
    agent_user: String,
    agent_uid: String,
}

impl LinuxContainerizer {
    /// A containerizer creating task cgroups through `cgroups`.
    pub fn new(mut config: LinuxConfig, cgroups: Arc<dyn CgroupBackend>) -> Self {
        // Supervisors run elsewhere than the agent's cwd: every path they get is absolute.
        if let Ok(absolute) = std::path::absolute(&config.work_dir) {
            config.work_dir = absolute;
        }
        let uid = nix::unistd::geteuid();
        let agent_user = match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => uid.to_string(),
        };
        Self {
            config,
            cgroups,
            devices: None,
            device_keeper: Arc::new(Mutex::new(None)),
            launcher: Arc::new(tokio::sync::Mutex::new(None)),
            agent_user,
            agent_uid: uid.to_string(),
        }
    }

    /// Restricts every task to the standard devices plus the ones it names, with a cgroup_device
    /// program attached to its cgroup.
    #[must_use]
    pub fn with_device_control(mut self, devices: DeviceControl) -> Self {
        self.devices = Some(Arc::new(Mutex::new(devices)));
        self
    }

    /// Attaches the device program to a task's cgroup with its rules; returns what the reaper
    /// needs to undo it.
    fn allow_devices(
        &self,
        task: &TaskInfo,
        cg: &dyn TaskCgroup,
    ) -> Result<Option<DeviceGrant>, ContainerizerError> {
        let task_id = task.task_id.as_str();
        let mut extra = Vec::new();
        for path in &task.devices {
            extra.push(DeviceRule::for_node(Path::new(path)).map_err(|reason| {
                ContainerizerError::InvalidTask {
                    task_id: task_id.to_owned(),
                    reason,
                }
            })?);
        }
        let Some(devices) = &self.devices else {
            return Ok(None);
        };
        let Some(dir) = cg.unified_dir() else {
            return Ok(None);
        };
        let mut control = devices.lock().map_err(|_| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the device control lock is poisoned".to_owned(),
        })?;
        self.keep_device_hook(&mut control);
        let id = control
            .allow(&dir, &extra)
            .map_err(|e| ContainerizerError::InvalidTask {
                task_id: task_id.to_owned(),
                reason: format!("cannot set up its device control: {e}"),
            })?;
        Ok(Some((devices.clone(), id)))
    }

    /// Attaches the device program to the empty keeper cgroup once (see `device_keeper`); a
    /// failure only costs speed, and is retried at the next launch.
    fn keep_device_hook(&self, control: &mut DeviceControl) {
        let Ok(mut keeper) = self.device_keeper.lock() else {
            return;
        };
        if keeper.is_some() {
            return;
        }
        let Some(root) = self.cgroups.unified_root() else {
            return;
        };
        let dir = root.join(cgroup::DEVICE_KEEPER_DIR);
        let attached = match std::fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|()| control.allow(&dir, &[]).map_err(|e| e.to_string()));
        match attached {
            Ok(id) => *keeper = Some((dir, id)),
            Err(error) => {
                tracing::debug!(dir = %dir.display(), %error, "cannot keep the device control hook enabled");
            }
        }
    }

    /// The cgroup backend.
    pub fn cgroups(&self) -> &Arc<dyn CgroupBackend> {
        &self.cgroups
    }

    async fn launch_task(
        &self,
        spec: &LaunchSpec,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let task_id = spec.task.task_id.as_str();
        let command = checked_command(spec)?;
        if self.config.supervisor_exe.is_none()
            && !command.user.is_empty()
            && command.user != self.agent_user
            && command.user != self.agent_uid
        {
            return Err(ContainerizerError::UserSwitch {
                task_id: task_id.to_owned(),
                user: command.user.clone(),
                agent_user: self.agent_user.clone(),
            });
        }
        let cgroup_err = |source| ContainerizerError::Cgroup {
            task_id: task_id.to_owned(),
            source,
        };
        let rel = cgroup::task_rel(&spec.framework_id, task_id).map_err(cgroup_err)?;
        let Prepared {
            sandbox,
            run,
            stdout,
            stderr,
        } = prepare_sandbox(&self.config.work_dir, spec).await?;
        let limits = limits_for(&spec.task, self.config.default_pids_limit);
        let cg: Arc<dyn TaskCgroup> =
            Arc::from(self.cgroups.create(&rel, &limits).map_err(cgroup_err)?);
        let devices = match self.allow_devices(&spec.task, cg.as_ref()) {
            Ok(devices) => devices,
            Err(e) => {
                let _ = cg.destroy();
                return Err(e);
            }
        };
        let (pid, waited, exit_file): (u32, BoxFuture<'static, Result<ExitStatus, String>>, _) =
            if self.config.supervisor_exe.is_some() {
                // The supervisor opens the cgroup.procs files itself.
                let result = self
                    .start_supervised(spec, command, &sandbox, &run, cg.as_ref(), stdout, stderr)
                    .await;
                match result {
                    Ok((pid, waited)) => {
                        (pid, waited, Some(run.join(crate::supervisor::EXIT_FILE)))
                    }
                    Err(e) => {
                        let _ = cg.destroy();
                        return Err(e);
                    }
                }
            } else {
                let mut procs: Vec<OwnedFd> = Vec::new();
                for file in cg.procs_files() {
                    match OpenOptions::new().write(true).open(&file) {
                        Ok(f) => procs.push(f.into()),
                        Err(source) => {
                            let _ = cg.destroy();
                            return Err(cgroup_err(cgroup::CgroupError::Io {
                                action: "open".to_owned(),
                                path: file,
                                source,
                            }));
                        }
                    }
                }
                let (program, mut cmd) = build_command(spec, command, &sandbox, stdout, stderr);
                crate::sys::join_cgroups_before_exec(&mut cmd, procs);
                cmd.process_group(0).kill_on_drop(true);
                let mut child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(source) => {
                        let _ = cg.destroy();
                        return Err(ContainerizerError::Spawn {
                            task_id: task_id.to_owned(),
                            program,
                            source,
                        });
                    }
                };
                drop(cmd);
                let Some(pid) = child.id() else {
                    let _ = cg.destroy();
                    return Err(ContainerizerError::Lost {
                        task_id: task_id.to_owned(),
                        reason: "the process exited before its pid could be read".to_owned(),
                    });
                };
                let waited = Box::pin(async move {
                    child
                        .wait()
                        .await
                        .map(|s| {
                            use std::os::unix::process::ExitStatusExt as _;
                            match (s.code(), s.signal()) {
                                (Some(code), _) => ExitStatus::Code(code),
                                (None, Some(signal)) => ExitStatus::Signal(signal),
                                (None, None) => ExitStatus::Code(-1),
                            }
                        })
                        .map_err(|e| e.to_string())
                });
                (pid, waited, None)
            };
        let exit_rx = spawn_reaper(task_id.to_owned(), cg.clone(), devices, exit_file, waited);
        let container = LinuxContainer {
            task_id: task_id.to_owned(),
            pid,
            cgroup: cg,
            exit: exit_rx,
        };
        if let Err(source) =
            checkpoint::write_atomic_volatile(&run.join("pid"), pid.to_string().as_bytes())
        {
            let _ = container.kill_task(Duration::ZERO).await;
            return Err(ContainerizerError::PidFile {
                task_id: task_id.to_owned(),
                source,
            });
        }
        tracing::debug!(pid, sandbox = %sandbox.display(), cgroup = %container.cgroup.path().display(), "task started in its cgroup");
        Ok(Box::new(container))
    }
}

impl LinuxContainerizer {
    /// The user, group and supplementary groups a command runs as.
    fn credentials(
        &self,
        task_id: &str,
        command: &CommandInfo,
    ) -> Result<(u32, u32, Vec<u32>), ContainerizerError> {
        use nix::unistd::{Group, Uid, User};
        let name = if command.user.is_empty() {
            self.config.default_user.as_str()
        } else {
            command.user.as_str()
        };
        let unknown = |what: &str, name: &str| ContainerizerError::UnknownUser {
            task_id: task_id.to_owned(),
            what: what.to_owned(),
            name: name.to_owned(),
        };
        let user = match name.parse::<u32>() {
            // A numeric id need not be in the user database (minimal hosts, images).
            Ok(uid) => User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .unwrap_or_else(|| numeric_user(uid)),
            Err(_) => User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| unknown("user", name))?,
        };
        let (gid, groups) = if command.group.is_empty() && user.name.is_empty() {
            (user.gid.as_raw(), vec![user.gid.as_raw()])
        } else if command.group.is_empty() {
            (user.gid.as_raw(), crate::supervisor::groups_of(&user))
        } else {
            let gid = match command.group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => Group::from_name(&command.group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| unknown("group", &command.group))?
                    .gid
                    .as_raw(),
            };
            (gid, vec![gid])
        };
        if user.uid.is_root() && !self.config.allow_root {
            return Err(ContainerizerError::RootRefused {
                task_id: task_id.to_owned(),
                user: name.to_owned(),
            });
        }
        Ok((user.uid.as_raw(), gid, groups))
    }

    /// The spec the supervisor and init start the task from; chowns the sandbox to the task's
    /// user.
    fn task_spec(
        &self,
        spec: &LaunchSpec,
        command: &CommandInfo,
        sandbox: &Path,
        cg: &dyn TaskCgroup,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<(String, TaskSpec), ContainerizerError> {
        let task_id = spec.task.task_id.as_str();
        drop((stdout, stderr));
        let (uid, gid, groups) = self.credentials(task_id, command)?;
        let invalid = |reason: String| ContainerizerError::InvalidTask {
            task_id: task_id.to_owned(),
            reason,
        };
        crate::supervisor::parse_capabilities(&command.capabilities).map_err(invalid)?;
        let rlimits = crate::supervisor::rlimits_from(&command.rlimits).map_err(invalid)?;
        // The task's user must be able to reach its sandbox: the agent's own directories on
        // the way are made traversable (not listable) for everyone.
        let mut dir = sandbox.parent();
        while let Some(d) = dir {
            if d == self.config.work_dir.parent().unwrap_or(Path::new("/")) {
                break;
            }
            if let Ok(meta) = std::fs::metadata(d) {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = meta.permissions().mode();
                if mode & 0o111 != 0o111 {
                    let _ = std::fs::set_permissions(
                        d,
                        std::fs::Permissions::from_mode((mode | 0o111) & 0o7777),
                    );
                }
            }
            dir = d.parent();
        }
        nix::unistd::chown(
            sandbox,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| ContainerizerError::Sandbox {
            task_id: task_id.to_owned(),
            path: sandbox.to_path_buf(),
            source: std::io::Error::from_raw_os_error(e as i32),
        })?;
        let (program, argv) = if command.shell {
            (
                crate::containerizer::SHELL.to_owned(),
                vec![
                    crate::containerizer::SHELL.to_owned(),
                    "-c".to_owned(),
                    command.value.clone(),
                ],
            )
        } else if command.arguments.is_empty() {
            (command.value.clone(), vec![command.value.clone()])
        } else {
            (command.value.clone(), command.arguments.clone())
        };
        let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        env.extend(command.environment.clone());
        let sandbox_str = sandbox.display().to_string();
        for (k, v) in [
            ("STRATA_TASK_ID", task_id),
            ("STRATA_FRAMEWORK_ID", spec.framework_id.as_str()),
            ("STRATA_AGENT_ID", spec.agent_id.as_str()),
            ("STRATA_SANDBOX", sandbox_str.as_str()),
            ("MESOS_SANDBOX", sandbox_str.as_str()),
            ("MESOS_TASK_ID", task_id),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        Ok((
            program.clone(),
            TaskSpec {
                task_id: task_id.to_owned(),
                program,
                argv,
                env: env.into_iter().collect(),
                cwd: sandbox.to_path_buf(),
                uid,
                gid,
                groups,
                capabilities: command.capabilities.clone(),
                rlimits,
                network_isolation: spec.task.network_isolation,
                cgroup_procs: cg.procs_files(),
                stdout: sandbox.join("stdout"),
                stderr: sandbox.join("stderr"),
                log_max_bytes: self.config.log_max_bytes,
            },
        ))
    }

    /// Writes the task's spec, has the launcher fork its supervisor, and waits until the init
    /// says the command started. Returns the supervisor's pid and a future that resolves when
    /// it has recorded the task's exit, or is gone.
    #[allow(clippy::too_many_arguments)]
    async fn start_supervised(
        &self,
        spec: &LaunchSpec,
        command: &CommandInfo,
        sandbox: &Path,
        run: &Path,
        cg: &dyn TaskCgroup,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<(u32, BoxFuture<'static, Result<ExitStatus, String>>), ContainerizerError> {
        let task_id = spec.task.task_id.as_str();
        let (program, spec_file) = self.task_spec(spec, command, sandbox, cg, stdout, stderr)?;
        spec_file
            .write(run)
            .map_err(|source| ContainerizerError::PidFile {
                task_id: task_id.to_owned(),
                source,
            })?;
        let lost = |reason: String| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason,
        };
        let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| lost(format!("cannot create the launch pipe: {e}")))?;
        let pid = self
            .launch_supervisor(run, pipe_w)
            .await
            .map_err(|e| lost(format!("cannot start the task's supervisor: {e}")))?;
        let mut out = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe_r)
            .map_err(|e| lost(format!("cannot watch the launch pipe: {e}")))?;
        let rest = self.await_start(task_id, &program, run, &mut out).await?;
        // The supervisor writes a line on the launch pipe once it has recorded the exit, and
        // the pipe ends when it is gone (whatever the way): either one means its exit file
        // says how the task ended.
        let waited: BoxFuture<'static, Result<ExitStatus, String>> = Box::pin(async move {
            use tokio::io::AsyncReadExt as _;
            let mut seen = rest;
            let mut buf = [0u8; 64];
            while !seen.contains('\n') {
                match out.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            // The status itself is in the exit file; this value is never used.
            Ok(ExitStatus::Code(0))
        });
        Ok((pid, waited))
    }

    /// Asks the launcher (started on first use, restarted if it died) to fork a supervisor for
    /// the run directory `run`, with `report` as its stdout; returns the supervisor's pid.
    async fn launch_supervisor(&self, run: &Path, report: OwnedFd) -> Result<u32, String> {
        let exe = self
            .config
            .supervisor_exe
            .clone()
            .ok_or_else(|| "no supervisor binary is configured".to_owned())?;
        let mut guard = self.launcher.lock().await;
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(Launcher::start(&exe)?);
            }
            let Some(l) = guard.as_mut() else {
                continue;
            };
            match l.fork_supervisor(run, &report).await {
                Ok(pid) => return Ok(pid),
                Err(e) if attempt == 0 => {
                    tracing::warn!(error = %e, "the supervisor launcher is gone; starting a new one");
                    *guard = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err("the supervisor launcher keeps failing".to_owned())
    }

    /// Reads the launch pipe: `started <pid>` or `error <errno>`; anything else (the pipe
    /// closed early) is a failed launch with the supervisor's log. Returns what was read after
    /// the `started` line.
    async fn await_start(
        &self,
        task_id: &str,
        program: &str,
        run: &Path,
        mut out: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<String, ContainerizerError> {
        use tokio::io::AsyncReadExt as _;
        let mut text = String::new();
        let read = tokio::time::timeout(START_LIMIT, async {
            let mut buf = [0u8; 128];
            loop {
                match out.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if text.contains('\n') {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        let line = text.lines().next().unwrap_or_default();
        if line.starts_with("started ") {
            // What came after the line (the supervisor's, in a race with this read).
            return Ok(text
                .split_once('\n')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default());
        }
        if let Some(errno) = line.strip_prefix("error ").and_then(|e| e.parse().ok()) {
            return Err(ContainerizerError::Spawn {
                task_id: task_id.to_owned(),
                program: program.to_owned(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        let log = std::fs::read_to_string(run.join("supervisor.log")).unwrap_or_default();
        Err(ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: if read.is_err() {
                format!("the task did not start within {START_LIMIT:?}")
            } else {
                format!(
                    "the task's supervisor failed before the command started: {}",
                    log.trim()
                )
            },
        })
    }
}

/// A user known only by its id: group the same number, no name, no home.
fn numeric_user(uid: u32) -> nix::unistd::User {
    nix::unistd::User {
        name: String::new(),
        passwd: Default::default(),
        uid: nix::unistd::Uid::from_raw(uid),
        gid: nix::unistd::Gid::from_raw(uid),
        gecos: Default::default(),
        dir: PathBuf::from("/"),
        shell: PathBuf::from(crate::containerizer::SHELL),
    }
}

/// A `strata-agent launcher` process: single-threaded, it keeps one supervisor forked ahead of
/// time, with its namespaces set up, that takes the next request (see
/// [`crate::supervisor`]), which saves a program start and the namespace setup per task. It
/// ends when its socket closes (the agent is gone); the supervisors it forked are their own
/// sessions and live on.
#[derive(Debug)]
struct Launcher {
    /// Non-blocking, watched by the runtime.
    socket: tokio::io::unix::AsyncFd<OwnedFd>,
    /// Set while a request waits for its answer: if that wait was cancelled, the answer is
    /// still in the socket and this launcher is not used again.
    in_flight: bool,
    /// Reaped by tokio once dropped.
    _process: tokio::process::Child,
}

impl Launcher {
    fn start(exe: &Path) -> Result<Self, String> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("cannot create the launcher's socket: {e}"))?;
        let mut command = tokio::process::Command::new(exe);
        command.arg("launcher").env_clear();
        if let Some(soft) = crate::nofile::for_tasks() {
            command.env(crate::nofile::TASK_NOFILE_ENV, soft.to_string());
        }
        let process = command
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("cannot start {} launcher: {e}", exe.display()))?;
        // Only our end: the launcher reads its end blocking.
        let flags = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| format!("cannot read the launcher socket's flags: {e}"))?;
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )
        .map_err(|e| format!("cannot make the launcher socket non-blocking: {e}"))?;
        let socket = crate::sys::watch_socket(ours)
            .map_err(|e| format!("cannot watch the launcher socket: {e}"))?;
        Ok(Self {
            socket,
            in_flight: false,
            _process: process,
        })
    }

    async fn fork_supervisor(&mut self, run: &Path, report: &OwnedFd) -> Result<u32, String> {
        use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
        use std::os::fd::AsRawFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        if self.in_flight {
            return Err("an earlier request to the launcher was abandoned".to_owned());
        }
        let fds = [report.as_raw_fd()];
        let request = [std::io::IoSlice::new(run.as_os_str().as_bytes())];
        self.socket
            .async_io(tokio::io::Interest::WRITABLE, |fd| {
                sendmsg::<()>(
                    fd.as_raw_fd(),
                    &request,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await
            .map_err(|e| format!("cannot reach the launcher: {e}"))?;
        self.in_flight = true;
        let mut answer = [0u8; 64];
        let n = tokio::time::timeout(
            ANSWER_LIMIT,
            self.socket.async_io(tokio::io::Interest::READABLE, |fd| {
                recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).map_err(std::io::Error::from)
            }),
        )
        .await
        .map_err(|_| format!("no answer from the launcher in {ANSWER_LIMIT:?}"))?
        .map_err(|e| format!("no answer from the launcher: {e}"))?;
        self.in_flight = false;
        let text = String::from_utf8_lossy(&answer[..n]);
        text.trim()
            .parse()
            .map_err(|_| format!("the launcher answered {text:?} instead of a pid"))
    }
}

/// How long the launcher may take to answer a request with a supervisor's pid.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// How long a supervised launch may take to start the command.
const START_LIMIT: Duration = Duration::from_secs(30);

impl Containerizer for LinuxContainerizer {
    fn launch<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Container>, ContainerizerError>> {
        Box::pin(async move {
            let launched = self.launch_task(spec).await;
            if launched.is_err() {
                crate::containerizer::undo_launch(&self.config.work_dir, spec).await;
            }
            launched
        })
    }

    fn recover(
        &self,
        framework_id: &str,
        task_id: &str,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let lost = |reason: String| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason,
        };
        if self.config.supervisor_exe.is_none() {
            return Err(lost(
                "the agent restarted and tasks without a supervisor do not survive that".to_owned(),
            ));
        }
        let run = crate::containerizer::run_dir(&self.config.work_dir, framework_id, task_id);
        let rel = cgroup::task_rel(framework_id, task_id).map_err(|source| {
            ContainerizerError::Cgroup {
                task_id: task_id.to_owned(),
                source,
            }
        })?;
        let cg: Arc<dyn TaskCgroup> = match self.cgroups.open(&rel) {
            Some(cg) => Arc::from(cg),
            // Already removed: a placeholder whose removal is a no-op.
            None => Arc::new(GoneCgroup(rel.clone())),
        };
        let exit_file = run.join(crate::supervisor::EXIT_FILE);
        let pid = crate::supervisor::running_supervisor(&run).and_then(|p| i32::try_from(p).ok());
        // The pidfd is opened after the check; a supervisor that exits in between leaves its
        // exit file, and a reused pid fails the check at the next recovery.
        let waited: BoxFuture<'static, Result<ExitStatus, String>> =
            match pid.map(|p| (p, crate::sys::pidfd_open(p))) {
                Some((_, Ok(pidfd))) => Box::pin(pidfd_exited(pidfd)),
                _ if exit_file.is_file() => Box::pin(async { Ok(ExitStatus::Code(0)) }),
                _ => {
                    // Nothing to wait for and no status: the task is gone.
                    let _ = cg.destroy();
                    return Err(lost(
                        "its supervisor is gone and recorded no exit status".to_owned(),
                    ));
                }
            };
        let task = checkpoint::load_task(&run)
            .ok()
            .flatten()
            .unwrap_or_default();
        let devices = self.allow_devices(&task, cg.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(task_id, error = %e, "cannot restore the task's device control");
            None
        });
        let exit_rx = spawn_reaper(
            task_id.to_owned(),
            cg.clone(),
            devices,
            Some(exit_file),
            waited,
        );
        tracing::info!(task_id, supervisor_pid = ?pid, "re-attached to the task");
        Ok(Box::new(LinuxContainer {
            task_id: task_id.to_owned(),
            pid: pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            cgroup: cg,
            exit: exit_rx,
        }))
    }

    fn tasks_survive_the_agent(&self) -> bool {
        self.config.supervisor_exe.is_some()
    }

    fn cleanup(&self) {
        // The keeper's lock is let go before the device control's (taken in the other order
        // by launches).
        let kept = self.device_keeper.lock().ok().and_then(|mut k| k.take());
        if let Some((dir, id)) = kept {
            if let Some(devices) = &self.devices
                && let Ok(mut control) = devices.lock()
            {
                control.forget(id);
            }
            let _ = std::fs::remove_dir(dir);
        }
        // Only empty directories go: a task still running keeps its cgroup and the root.
        for root in self.cgroups.roots() {
            let tasks = root.join(cgroup::TASKS_DIR);
            if let Ok(frameworks) = std::fs::read_dir(&tasks) {
                for fw in frameworks.flatten() {
                    if fw.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(fw.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&tasks);
            let _ = std::fs::remove_dir(&root);
        }
    }
}

type Ended = (Result<ExitStatus, String>, Option<MemoryOom>);

/// The device control of a task: to forget its rules when it ends.
type DeviceGrant = (Arc<Mutex<DeviceControl>>, strata_agent_common::CgroupId);

/// Waits for `waited` (the main process or the supervisor), then takes the command's status from
/// `exit_file` when there is a supervisor, reads the OOM kills, kills what is left of the cgroup
/// and removes it; publishes the result on the returned channel.
fn spawn_reaper(
    task_id: String,
    cg: Arc<dyn TaskCgroup>,
    devices: Option<DeviceGrant>,
    exit_file: Option<PathBuf>,
    waited: impl Future<Output = Result<ExitStatus, String>> + Send + 'static,
) -> watch::Receiver<Option<Ended>> {
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let result = waited.await;
        // A supervisor records the command's own status.
        let result = match (&exit_file, result) {
            (Some(file), Ok(_)) => crate::supervisor::read_exit(file).ok_or_else(|| {
                let log = std::fs::read_to_string(file.with_file_name("supervisor.log"))
                    .unwrap_or_default();
                format!(
                    "the task's supervisor ended without recording an exit status: {}",
                    log.trim()
                )
            }),
            (_, result) => result,
        };
        // Whatever is left goes with the main process; then the cgroup is removed. Usually
        // the cgroup is empty by now and a few quick file operations remove it here; when
        // processes are left (or still exiting), a blocking thread kills them and waits.
        let oom = cg.memory_oom();
        let forget = move || {
            if let Some((control, id)) = devices
                && let Ok(mut control) = control.lock()
            {
                control.forget(id);
            }
        };
        if cg.try_remove() {
            let _ = exit_tx.send(Some((result, oom)));
            // The cgroup is gone: its device rules can go after the end is published.
            forget();
        } else {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = cg.destroy() {
                    tracing::warn!(task_id = %task_id, error = %e, "cannot remove the task's cgroup");
                }
                forget();
            })
            .await;
            let _ = exit_tx.send(Some((result, oom)));
        }
    });
    exit_rx
}

/// Resolves when the process behind `pidfd` has exited.
async fn pidfd_exited(pidfd: OwnedFd) -> Result<ExitStatus, String> {
    let fd =
        crate::sys::watch_pidfd(pidfd).map_err(|e| format!("cannot watch the supervisor: {e}"))?;
    let _ = fd.readable().await.map_err(|e| e.to_string())?;
    // The status itself is in the exit file; this value is never used.
    Ok(ExitStatus::Code(0))
}

/// A task run by [`LinuxContainerizer`].
#[derive(Debug)]
struct LinuxContainer {
    task_id: String,
    pid: u32,
    cgroup: Arc<dyn TaskCgroup>,
    /// Set once by the reaper when the process has been waited for and the cgroup removed.
    exit: watch::Receiver<Option<Ended>>,
}

impl LinuxContainer {
    fn lost(&self, reason: impl Into<String>) -> ContainerizerError {
        ContainerizerError::Lost {
            task_id: self.task_id.clone(),
            reason: reason.into(),
        }
    }

    fn to_result(&self, ended: &Ended) -> Result<ExitStatus, ContainerizerError> {
        ended
            .0
            .clone()
            .map_err(|e| self.lost(format!("waiting for the process failed: {e}")))
    }

    async fn wait_exit(&self) -> Result<ExitStatus, ContainerizerError> {
        let mut rx = self.exit.clone();
        let ended = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| self.lost("the process reaper stopped"))?
            .clone();
        match ended {
            Some(ended) => self.to_result(&ended),
            None => Err(self.lost("the process reaper stopped")),
        }
    }

    async fn kill_task(&self, grace: Duration) -> Result<ExitStatus, ContainerizerError> {
        if let Some(ended) = self.exit.borrow().clone() {
            return self.to_result(&ended);
        }
        self.cgroup.signal_all(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::info!(task_id = %self.task_id, grace_ms = grace.as_millis() as u64,
                    "task did not stop within its grace period; killing its cgroup");
                let cg = self.cgroup.clone();
                let killed = tokio::task::spawn_blocking(move || cg.kill_all()).await;
                if let Ok(Err(e)) = killed {
                    tracing::warn!(task_id = %self.task_id, error = %e, "cannot kill the task's cgroup");
                }
                self.wait_exit().await
            }
        }
    }
}

impl Container for LinuxContainer {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>> {
        Box::pin(self.wait_exit())
    }

    fn kill(&self, grace: Duration) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>> {
        Box::pin(self.kill_task(grace))
    }

    fn memory_oom(&self) -> Option<MemoryOom> {
        self.exit.borrow().as_ref().and_then(|(_, oom)| *oom)
    }
}

/// Removes sandboxes (and run directories) under `work_dir` whose task is not in `live` and
/// that were last modified more than `keep` ago. Returns how many were removed.
pub fn gc_sandboxes(work_dir: &Path, keep: Duration, live: &dyn Fn(&str, &str) -> bool) -> usize {
    let mut removed = 0;
    let now = SystemTime::now();
    let Ok(frameworks) = std::fs::read_dir(work_dir.join("sandboxes")) else {
        return 0;
    };
    for fw in frameworks.flatten() {
        let fw_name = fw.file_name().to_string_lossy().into_owned();
        let Ok(tasks) = std::fs::read_dir(fw.path()) else {
            continue;
        };
        for task in tasks.flatten() {
            let task_name = task.file_name().to_string_lossy().into_owned();
            let run = crate::containerizer::run_dir(work_dir, &fw_name, &task_name);
            if live(&fw_name, &task_name)
                || pid_alive(&run.join("pid"))
                || crate::supervisor::running_supervisor(&run).is_some()
            {
                continue;
            }
            let old = task
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= keep);
            if !old {
                continue;
            }
            match std::fs::remove_dir_all(task.path()) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&run);
                    removed += 1;
                    tracing::debug!(framework_id = %fw_name, task_id = %task_name, "sandbox garbage-collected");
                }
                Err(e) => {
                    tracing::warn!(path = %task.path().display(), error = %e, "cannot remove an old sandbox");
                }
            }
        }
        let _ = std::fs::remove_dir(fw.path());
    }
    removed
}

/// The cgroup of a recovered task that was already removed.
#[derive(Debug)]
struct GoneCgroup(PathBuf);

impl TaskCgroup for GoneCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn unified_dir(&self) -> Option<PathBuf> {
        None
    }
    fn path(&self) -> PathBuf {
        self.0.clone()
    }
    fn pids(&self) -> Result<Vec<i32>, cgroup::CgroupError> {
        Ok(Vec::new())
    }
    fn kill_all(&self) -> Result<(), cgroup::CgroupError> {
        Ok(())
    }
    fn memory_oom(&self) -> Option<MemoryOom> {
        None
    }
    fn cpu_stats(&self) -> Result<cgroup::CpuStats, cgroup::CgroupError> {
        Ok(cgroup::CpuStats::default())
    }
    fn destroy(&self) -> Result<(), cgroup::CgroupError> {
        Ok(())
    }
}

/// Whether the pid in `pid_file` names a running process.
fn pid_alive(pid_file: &Path) -> bool {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::Resource;

    #[test]
    fn limits_follow_the_resources_and_the_task() {
        let task = TaskInfo {
            resources: vec![
                Resource::scalar(names::CPUS, 0.5),
                Resource::scalar(names::MEM, 64.0),
            ],
            cpu_limit: Some(1.0),
            mem_soft_limit_mib: Some(32.0),
            ..TaskInfo::default()
        };
        let l = limits_for(&task, 100);
        assert_eq!(l.cpus, Some(0.5));
        assert_eq!(l.cpu_limit, Some(1.0));
        assert_eq!(l.mem_bytes, Some(64 << 20));
        assert_eq!(l.mem_soft_bytes, Some(32 << 20));
        assert_eq!(l.pids_max, Some(100));
        let none = limits_for(
            &TaskInfo {
                pids_limit: 7,
                ..TaskInfo::default()
            },
            100,
        );
        assert_eq!(none.cpus, None);
        assert_eq!(none.mem_bytes, None);
        assert_eq!(none.pids_max, Some(7));
    }

    #[test]
    fn old_sandboxes_of_ended_tasks_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        for t in ["old", "live"] {
            std::fs::create_dir_all(crate::containerizer::sandbox_dir(work, "fw", t)).unwrap();
            std::fs::create_dir_all(crate::containerizer::run_dir(work, "fw", t)).unwrap();
        }
        let live = |_: &str, t: &str| t == "live";
        assert_eq!(gc_sandboxes(work, Duration::from_secs(3600), &live), 0);
        assert_eq!(gc_sandboxes(work, Duration::ZERO, &live), 1);
        assert!(!crate::containerizer::sandbox_dir(work, "fw", "old").exists());
        assert!(!crate::containerizer::run_dir(work, "fw", "old").exists());
        assert!(crate::containerizer::sandbox_dir(work, "fw", "live").exists());
    }
}
