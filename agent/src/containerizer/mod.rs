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

/// Creates the sandbox and run directories and the `stdout`/`stderr` files.
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
    // Two mkdirs on a local filesystem: not worth a hop to the blocking pool.
    for dir in [&sandbox, &run] {
        std::fs::create_dir_all(dir).map_err(sandbox_err(dir))?;
    }
    let stdout_path = sandbox.join("stdout");
    let stderr_path = sandbox.join("stderr");
    let stdout = File::create(&stdout_path).map_err(sandbox_err(&stdout_path))?;
    let stderr = File::create(&stderr_path).map_err(sandbox_err(&stderr_path))?;
    Ok(Prepared {
        sandbox,
        run,
        stdout,
        stderr,
    })
}

/// The command to spawn (and the program's name for errors): shell or argv form, the sandbox
/// as cwd, output to the given files, the task's environment plus the `STRATA_*`/`MESOS_*`
/// variables.
pub(crate) fn build_command(
    spec: &LaunchSpec,
    command: &CommandInfo,
    sandbox: &Path,
    stdout: File,
    stderr: File,
) -> (String, tokio::process::Command) {
    let task_id = spec.task.task_id.as_str();
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
        .envs(&command.environment)
        .env("STRATA_TASK_ID", task_id)
        .env("STRATA_FRAMEWORK_ID", &spec.framework_id)
        .env("STRATA_AGENT_ID", &spec.agent_id)
        .env("STRATA_SANDBOX", sandbox)
        .env("MESOS_SANDBOX", sandbox)
        .env("MESOS_TASK_ID", task_id);
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
