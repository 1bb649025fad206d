//! Launching tasks: the [`Containerizer`] and [`Container`] traits the agent launches, waits
//! for, kills and re-attaches to every task through, what a launch is given ([`LaunchSpec`]),
//! how it ends ([`ExitStatus`], [`ContainerizerError`]), and what the containerizers share: the
//! sandbox and run directories of a task, its command, undoing a failed launch, and removing
//! the sandboxes of tasks that ended long ago ([`gc_sandboxes`]).
//!
//! The containerizers: [`process::ProcessContainerizer`] (a plain child per task) and the
//! isolating [`linux::LinuxContainerizer`] (cgroups, namespaces, a per-task supervisor).
//!
//! Invariants:
//! - A task's sandbox is `<work_dir>/sandboxes/<framework_id>/<task_id>/` (its cwd, with its
//!   `stdout` and `stderr`) and its run directory `<work_dir>/runs/<framework_id>/<task_id>/`,
//!   both built by [`crate::paths`] from ids that passed `strata_proto::ids::check_id`; a
//!   launch with an id that fails it touches nothing.
//! - A launch that fails removes what it made (`undo_launch`) except the agent's own
//!   checkpoint of the task, which goes once the failure is acknowledged.

pub mod linux;
pub mod process;
pub mod supervisor;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use strata_proto::{CommandInfo, TaskInfo};

use crate::checkpoint::{self, CheckpointError};
use crate::paths::{self, TaskIds};

/// The shell used for shell-form commands.
pub const SHELL: &str = "/bin/sh";

/// How a task's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was ended by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Code(c) => Some(c),
            Self::Signal(_) => None,
        }
    }

    /// The signal that ended it, if one did.
    pub fn signal(self) -> Option<i32> {
        match self {
            Self::Code(_) => None,
            Self::Signal(s) => Some(s),
        }
    }

    pub(crate) fn from_std(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            // Stopped/continued statuses are never returned by wait() for a finished child.
            (None, None) => Self::Code(-1),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// `exited with status 3` or `killed by signal 9 (SIGKILL)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exited with status {code}"),
            Self::Signal(signal) => {
                write!(f, "killed by signal {signal} ({})", signal_name(*signal))
            }
        }
    }
}

/// The name of a signal number, e.g. `SIGKILL`.
pub fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("unknown signal", Signal::as_str)
}

/// Errors launching or supervising a task.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    /// A framework or task id cannot name a sandbox, run directory or cgroup.
    #[error("{0}")]
    InvalidId(#[from] strata_proto::ids::IdError),
    /// The task has no command to run.
    #[error("task {task_id:?} has no command: set command.value")]
    NoCommand {
        /// The task.
        task_id: String,
    },
    /// The task asks for a user this containerizer cannot switch to.
    #[error(
        "task {task_id:?} asks to run as user {user:?}, but this agent runs as {agent_user:?} and cannot switch users yet: leave command.user empty or run the agent as {user:?}"
    )]
    UserSwitch {
        /// The task.
        task_id: String,
        /// The user asked for.
        user: String,
        /// The agent's own user.
        agent_user: String,
    },
    /// The sandbox, run directory or an output file could not be created.
    #[error("cannot create {path} for task {task_id:?}: {source}")]
    Sandbox {
        /// The task.
        task_id: String,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The command could not be started.
    #[error("cannot start {program:?}: {}", lower_first(&.source.to_string()))]
    Spawn {
        /// The task.
        task_id: String,
        /// The executable.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The task's pid could not be recorded (the process was killed again).
    #[error("cannot record the pid of task {task_id:?}: {source}")]
    PidFile {
        /// The task.
        task_id: String,
        /// The underlying error.
        source: CheckpointError,
    },
    /// The user or group to run as does not exist.
    #[error(
        "task {task_id:?} asks to run as {what} {name:?}, which does not exist on this host: create it or name another"
    )]
    UnknownUser {
        /// The task.
        task_id: String,
        /// "user" or "group".
        what: String,
        /// The name asked for.
        name: String,
    },
    /// The task would run as root and the agent does not allow it.
    #[error(
        "task {task_id:?} would run as root (user {user:?}): name an unprivileged user in command.user, or start the agent with --allow-root-tasks"
    )]
    RootRefused {
        /// The task.
        task_id: String,
        /// The user asked for.
        user: String,
    },
    /// The task asks for something invalid (a capability or rlimit name).
    #[error("task {task_id:?} is invalid: {reason}")]
    InvalidTask {
        /// The task.
        task_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The task asks for a network this agent cannot give it (bridge without a bridge, port
    /// mappings, an egress limit in bridge mode, ...): refused (TASK_ERROR), as a capability
    /// the agent does not allow.
    #[error("task {task_id:?} cannot run on this agent: {reason}")]
    NetworkRefused {
        /// The task.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// The task asks for capabilities the agent's allow-list lacks.
    #[error(
        "task {task_id:?} asks for {} that this agent does not allow: {}; drop {2} from command.capabilities, or the agent's operator can allow {2} with --allowed-capabilities (allowed now: {3})",
        if .capabilities.len() == 1 { "a capability" } else { "capabilities" },
        .capabilities.join(", "),
        if .capabilities.len() == 1 { "it" } else { "them" },
        if .allowed.is_empty() { "none".to_owned() } else { .allowed.join(",") }
    )]
    CapabilityNotAllowed {
        /// The task.
        task_id: String,
        /// The capabilities asked for and not allowed, like `CAP_SETUID`.
        capabilities: Vec<String>,
        /// The agent's allow-list.
        allowed: Vec<String>,
    },
    /// The task's cgroup could not be set up.
    #[error("cannot set up the cgroup of task {task_id:?}: {source}")]
    Cgroup {
        /// The task.
        task_id: String,
        /// The underlying error.
        source: crate::cgroup::CgroupError,
    },
    /// The containerizer lost track of the task's process.
    #[error("lost track of task {task_id:?}: {reason}")]
    Lost {
        /// The task.
        task_id: String,
        /// What happened.
        reason: String,
    },
}

impl ContainerizerError {
    /// Whether the task itself asks for what this agent refuses (reported as `TASK_ERROR`),
    /// rather than a launch that failed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::CapabilityNotAllowed { .. } | Self::NetworkRefused { .. }
        )
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What to launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// The framework the task belongs to.
    pub framework_id: String,
    /// The agent running it.
    pub agent_id: String,
    /// The task, with its command and resources.
    pub task: TaskInfo,
    /// The GPUs the agent assigned to it (none without a `gpus` resource).
    pub gpus: Vec<crate::gpu::GpuDevice>,
}

/// Launches tasks. Implementations must leave no process behind once a container's `wait` or
/// `kill` has returned.
pub trait Containerizer: Send + Sync + fmt::Debug {
    /// Starts the task; returns once its command is running (or failed to start).
    fn launch<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Container>, ContainerizerError>>;

    /// Re-attaches to a task launched before the agent restarted (its run directory is
    /// `<work_dir>/runs/<framework_id>/<task_id>`). The container's `wait` returns the task's
    /// real exit status, also when it ended while the agent was down.
    fn recover(
        &self,
        framework_id: &str,
        task_id: &str,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let _ = framework_id;
        Err(ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the agent restarted and this containerizer cannot re-attach to tasks"
                .to_owned(),
        })
    }

    /// Whether tasks keep running when the agent stops (and [`Containerizer::recover`] can
    /// re-attach to them).
    fn tasks_survive_the_agent(&self) -> bool {
        false
    }

    /// Called when the agent stops: removes what the containerizer set up that no task uses.
    fn cleanup(&self) {}

    /// Called once recovery has re-attached every task it could: removes what earlier agents
    /// set up for tasks that were not recovered (their bridge veths).
    fn recovered(&self) {}

    /// The egress limiter, when this containerizer limits tasks' egress (the usage collector
    /// reads its drops).
    fn egress_control(
        &self,
    ) -> Option<std::sync::Arc<std::sync::Mutex<crate::ebpf::EgressControl>>> {
        None
    }
}

/// A launched task.
pub trait Container: Send + Sync + fmt::Debug {
    /// The pid of the task's main process, if it has one.
    fn pid(&self) -> Option<u32>;

    /// Waits until the task has ended. May be called any number of times, concurrently.
    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>>;

    /// Asks the task to stop (SIGTERM), waits up to `grace`, then forces it (SIGKILL); returns
    /// how it ended. Returns at once if it has already ended.
    fn kill(&self, grace: Duration) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>>;

    /// After `wait` or `kill` has returned: the kernel's OOM kills in the task's cgroup, if a
    /// memory limit ended it. Containerizers without cgroups never report one.
    fn memory_oom(&self) -> Option<crate::cgroup::MemoryOom> {
        None
    }

    /// The `cgroup.procs` files a process writes to join the task's cgroups (a command health
    /// check runs there); none for containerizers without cgroups.
    fn cgroup_procs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// `<work_dir>/sandboxes/<framework_id>/<task_id>` (the task's cwd and log files) and
/// `<work_dir>/runs/<framework_id>/<task_id>` (its checkpoint and its supervisor's files),
/// after checking both ids.
pub use crate::paths::{run_dir, sandbox_dir};

/// The task's command, after checking its ids and that it has one.
pub(crate) fn checked_command(spec: &LaunchSpec) -> Result<&CommandInfo, ContainerizerError> {
    let task_id = spec.task.task_id.as_str();
    TaskIds::new(&spec.framework_id, task_id)?;
    spec.task
        .command
        .as_ref()
        .filter(|c| !c.value.is_empty())
        .ok_or_else(|| ContainerizerError::NoCommand {
            task_id: task_id.to_owned(),
        })
}

/// Removes what a launch that failed left behind: the task's sandbox, and the files of its run
/// directory (the directory too when nothing else is left) except the agent's own checkpoint
/// of the task and its updates, which the agent forgets once the failure is acknowledged.
/// Nothing is touched unless both ids are valid names.
pub(crate) async fn undo_launch(work_dir: &Path, spec: &LaunchSpec) {
    let Ok(ids) = TaskIds::new(&spec.framework_id, &spec.task.task_id) else {
        return;
    };
    let sandbox = ids.sandbox_dir(work_dir);
    let run = ids.run_dir(work_dir);
    let undone = tokio::task::spawn_blocking(move || {
        match std::fs::remove_dir_all(&sandbox) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(sandbox = %sandbox.display(), error = %e, "cannot remove the sandbox of a failed launch"),
        }
        let keep = [checkpoint::TASK_FILE, checkpoint::UPDATES_FILE];
        if let Ok(entries) = std::fs::read_dir(&run) {
            for entry in entries.flatten() {
                if !keep.iter().any(|k| entry.file_name() == *k) {
                    let path = entry.path();
                    let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    if let Err(e) = removed {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove a run file of a failed launch");
                    }
                }
            }
        }
        // Fails while the checkpoint is there; the agent's forget_task removes it then.
        let _ = std::fs::remove_dir(&run);
    })
    .await;
    if let Err(e) = undone {
        tracing::warn!(error = %e, "removing what a failed launch left panicked");
    }
}

/// A task's sandbox and run directory, created, with its output files open.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) sandbox: PathBuf,
    pub(crate) run: PathBuf,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
}

/// The modes of the work dir's task directories: `sandboxes` and `sandboxes/<framework>` are
/// traversable by everyone (a task's user must reach its sandbox) but listable by the agent
/// only, so a task cannot find its neighbours; a sandbox is its task's alone (0700, owned by
/// the task's user where the task runs as another); `runs` and everything below it (the task
/// specs, with their environment, and the agent's checkpoints) are the agent's alone.
pub const SANDBOXES_MODE: u32 = 0o711;
/// See [`SANDBOXES_MODE`].
pub const SANDBOX_MODE: u32 = 0o700;
/// See [`SANDBOXES_MODE`].
pub const RUNS_MODE: u32 = 0o700;

/// Makes `dir` (and what is missing above it) with `mode`, and gives an existing one that mode.
fn dir_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Gives the work dir's `sandboxes` and `runs` their modes (see [`SANDBOXES_MODE`]) and makes
/// the work dir itself traversable by everyone (tasks' users reach their sandboxes through it),
/// without making it listable when it was not.
pub fn secure_work_dir(work_dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(work_dir)?.permissions().mode() & 0o7777;
    if mode & 0o111 != 0o111 {
        std::fs::set_permissions(work_dir, std::fs::Permissions::from_mode(mode | 0o111))?;
    }
    dir_with_mode(&work_dir.join("sandboxes"), SANDBOXES_MODE)?;
    dir_with_mode(&work_dir.join("runs"), RUNS_MODE)
}

/// Creates a fresh file for the task's output: whatever is at `path` goes first (a sandbox kept
/// from an earlier task of the same id is the task user's: a link planted there must not make
/// the agent truncate what it points to).
fn fresh_output(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Creates the sandbox and run directories, with their modes (see [`SANDBOXES_MODE`]), and
/// the `stdout`/`stderr` files.
pub(crate) async fn prepare_sandbox(
    work_dir: &Path,
    spec: &LaunchSpec,
) -> Result<Prepared, ContainerizerError> {
    let task_id = spec.task.task_id.as_str();
    let ids = TaskIds::new(&spec.framework_id, task_id)?;
    let sandbox = ids.sandbox_dir(work_dir);
    let run = ids.run_dir(work_dir);
    let sandbox_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerizerError::Sandbox {
            task_id: task_id.to_owned(),
            path,
            source,
        }
    };
    // A few mkdirs and chmods on a local filesystem: not worth a hop to the blocking pool.
    secure_work_dir(work_dir).map_err(sandbox_err(work_dir))?;
    for (dir, mode) in [
        (sandbox.parent().unwrap_or(work_dir), SANDBOXES_MODE),
        (sandbox.as_path(), SANDBOX_MODE),
        (run.parent().unwrap_or(work_dir), RUNS_MODE),
        (run.as_path(), RUNS_MODE),
    ] {
        dir_with_mode(dir, mode).map_err(sandbox_err(dir))?;
    }
    let stdout_path = sandbox.join("stdout");
    let stderr_path = sandbox.join("stderr");
    let stdout = fresh_output(&stdout_path).map_err(sandbox_err(&stdout_path))?;
    let stderr = fresh_output(&stderr_path).map_err(sandbox_err(&stderr_path))?;
    Ok(Prepared {
        sandbox,
        run,
        stdout,
        stderr,
    })
}

/// The `PATH` of a task that sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A task's whole environment, sorted by name: what its command sets, `PATH` ([`DEFAULT_PATH`])
/// and `HOME` (its sandbox: the one directory the task may write that outlives its command)
/// when it sets none, and the variables the agent sets (`STRATA_TASK_ID`,
/// `STRATA_FRAMEWORK_ID`, `STRATA_AGENT_ID`, `STRATA_SANDBOX`, `MESOS_SANDBOX`,
/// `MESOS_TASK_ID`), which win. Nothing comes from the agent's own environment (its settings,
/// its credentials).
pub fn task_environment(
    spec: &LaunchSpec,
    command: &CommandInfo,
    sandbox: &Path,
) -> Vec<(String, String)> {
    let task_id = spec.task.task_id.as_str();
    let sandbox = sandbox.display().to_string();
    let mut env: std::collections::BTreeMap<String, String> = command
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env.entry("HOME".to_owned())
        .or_insert_with(|| sandbox.clone());
    for (k, v) in [
        ("STRATA_TASK_ID", task_id),
        ("STRATA_FRAMEWORK_ID", spec.framework_id.as_str()),
        ("STRATA_AGENT_ID", spec.agent_id.as_str()),
        ("STRATA_SANDBOX", sandbox.as_str()),
        ("MESOS_SANDBOX", sandbox.as_str()),
        ("MESOS_TASK_ID", task_id),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    // The agent's names of the task's GPUs win over any the task set.
    env.extend(crate::gpu::nodes::environment(&spec.gpus));
    env.into_iter().collect()
}

/// The command to spawn (and the program's name for errors): shell or argv form, the sandbox
/// as cwd, output to the given files, the environment of [`task_environment`] alone.
pub(crate) fn build_command(
    spec: &LaunchSpec,
    command: &CommandInfo,
    sandbox: &Path,
    stdout: File,
    stderr: File,
) -> (String, tokio::process::Command) {
    let (program, mut cmd) = if command.shell {
        let mut cmd = tokio::process::Command::new(SHELL);
        cmd.arg("-c").arg(&command.value);
        (SHELL.to_owned(), cmd)
    } else {
        let mut cmd = tokio::process::Command::new(&command.value);
        match command.arguments.split_first() {
            Some((argv0, rest)) => {
                cmd.arg0(argv0).args(rest);
            }
            None => {
                cmd.arg0(&command.value);
            }
        }
        (command.value.clone(), cmd)
    };
    cmd.current_dir(sandbox)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .env_clear()
        .envs(task_environment(spec, command, sandbox));
    (program, cmd)
}

/// Removes sandboxes (and run directories) under `work_dir` whose task is not in `live` and
/// that were last modified more than `keep` ago. Returns how many were removed.
pub fn gc_sandboxes(work_dir: &Path, keep: Duration, live: &dyn Fn(&str, &str) -> bool) -> usize {
    let mut removed = 0;
    let now = std::time::SystemTime::now();
    for (fw_name, task_name) in paths::listed(work_dir, paths::SANDBOXES_DIR) {
        let Ok(ids) = TaskIds::new(&fw_name, &task_name) else {
            continue;
        };
        let sandbox = ids.sandbox_dir(work_dir);
        let run = ids.run_dir(work_dir);
        if live(&fw_name, &task_name)
            || pid_alive(&run.join("pid"))
            || supervisor::running_supervisor(&run).is_some()
        {
            continue;
        }
        let old = std::fs::metadata(&sandbox)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= keep);
        if !old {
            continue;
        }
        match std::fs::remove_dir_all(&sandbox) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&run);
                removed += 1;
                tracing::debug!(framework_id = %fw_name, task_id = %task_name, "sandbox garbage-collected");
            }
            Err(e) => {
                tracing::warn!(path = %sandbox.display(), error = %e, "cannot remove an old sandbox");
            }
        }
        if let Some(fw_dir) = sandbox.parent() {
            // Gone once its last sandbox is.
            let _ = std::fs::remove_dir(fw_dir);
        }
    }
    removed
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

    #[test]
    fn a_task_environment_is_its_own_plus_the_agents_variables() {
        let spec = LaunchSpec {
            gpus: Vec::new(),
            framework_id: "fw".to_owned(),
            agent_id: "a1".to_owned(),
            task: TaskInfo {
                task_id: "t1".to_owned(),
                ..TaskInfo::default()
            },
        };
        let sandbox = Path::new("/w/sandboxes/fw/t1");
        let command = CommandInfo {
            environment: [("GREETING", "hi"), ("STRATA_TASK_ID", "forged")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..CommandInfo::default()
        };
        let env = task_environment(&spec, &command, sandbox);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "GREETING",
                "HOME",
                "MESOS_SANDBOX",
                "MESOS_TASK_ID",
                "PATH",
                "STRATA_AGENT_ID",
                "STRATA_FRAMEWORK_ID",
                "STRATA_SANDBOX",
                "STRATA_TASK_ID"
            ],
            "nothing of the agent's own environment, whatever it holds"
        );
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(get("HOME"), Some("/w/sandboxes/fw/t1"));
        assert_eq!(
            get("STRATA_TASK_ID"),
            Some("t1"),
            "the agent's variables win"
        );
        // A task's own PATH and HOME are kept.
        let command = CommandInfo {
            environment: [("PATH", "/opt/bin"), ("HOME", "/home/t")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..CommandInfo::default()
        };
        let env = task_environment(&spec, &command, sandbox);
        assert!(env.contains(&("PATH".to_owned(), "/opt/bin".to_owned())));
        assert!(env.contains(&("HOME".to_owned(), "/home/t".to_owned())));
    }

    #[test]
    fn sandboxes_are_private_and_run_files_the_agents_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        // Left by an older agent, listable by everyone.
        std::fs::create_dir_all(run_dir(work, "fw", "t1").unwrap()).unwrap();
        let spec = LaunchSpec {
            gpus: Vec::new(),
            framework_id: "fw".to_owned(),
            agent_id: "a1".to_owned(),
            task: TaskInfo {
                task_id: "t1".to_owned(),
                ..TaskInfo::default()
            },
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let prepared = rt.block_on(prepare_sandbox(work, &spec)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(work) & 0o111, 0o111, "the work dir is not traversable");
        assert_eq!(mode(&work.join("sandboxes")), 0o711);
        assert_eq!(mode(&work.join("sandboxes").join("fw")), 0o711);
        assert_eq!(mode(&prepared.sandbox), 0o700);
        assert_eq!(mode(&work.join("runs")), 0o700);
        assert_eq!(mode(&work.join("runs").join("fw")), 0o700);
        assert_eq!(mode(&prepared.run), 0o700);
    }

    #[test]
    fn a_capability_refusal_names_the_capability_and_the_flag() {
        let one = ContainerizerError::CapabilityNotAllowed {
            task_id: "t".to_owned(),
            capabilities: vec!["CAP_SETUID".to_owned()],
            allowed: Vec::new(),
        };
        assert!(one.is_refusal());
        assert_eq!(
            one.to_string(),
            "task \"t\" asks for a capability that this agent does not allow: CAP_SETUID; drop it from command.capabilities, or the agent's operator can allow it with --allowed-capabilities (allowed now: none)"
        );
        let two = ContainerizerError::CapabilityNotAllowed {
            task_id: "t".to_owned(),
            capabilities: vec!["CAP_SETUID".to_owned(), "CAP_SYS_ADMIN".to_owned()],
            allowed: vec!["CAP_NET_RAW".to_owned()],
        };
        let text = two.to_string();
        assert!(
            text.contains(
                "capabilities that this agent does not allow: CAP_SETUID, CAP_SYS_ADMIN; drop them"
            ) && text.ends_with("(allowed now: CAP_NET_RAW)"),
            "{text}"
        );
    }

    #[test]
    fn output_files_never_follow_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("stdout");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        fresh_output(&link).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }

    #[test]
    fn old_sandboxes_of_ended_tasks_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        for t in ["old", "live"] {
            std::fs::create_dir_all(sandbox_dir(work, "fw", t).unwrap()).unwrap();
            std::fs::create_dir_all(run_dir(work, "fw", t).unwrap()).unwrap();
        }
        let live = |_: &str, t: &str| t == "live";
        assert_eq!(gc_sandboxes(work, Duration::from_secs(3600), &live), 0);
        assert_eq!(gc_sandboxes(work, Duration::ZERO, &live), 1);
        assert!(!sandbox_dir(work, "fw", "old").unwrap().exists());
        assert!(!run_dir(work, "fw", "old").unwrap().exists());
        assert!(sandbox_dir(work, "fw", "live").unwrap().exists());
    }
}
