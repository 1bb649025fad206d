//! [`ProcessContainerizer`]: runs a task's command as a plain child process of the agent
//! (`--isolation none`, and hosts that give the agent no cgroups).
//!
//! Invariants:
//! - Each task runs in its own process group (`process_group(0)`), with its sandbox
//!   `<work_dir>/sandboxes/<framework_id>/<task_id>/` as cwd and `stdout`/`stderr` files
//!   there; its pid is written (atomically, decimal) to `<work_dir>/runs/<framework_id>/<task_id>/pid`.
//! - Every child is reaped by a task that owns it (no zombies); when the command exits, what is
//!   left of its process group is SIGKILLed, so a task leaves nothing running behind it.
//! - Kill = SIGTERM to the group, wait up to the grace period, then SIGKILL to the group.
//! - A command can run only as the agent's own user; another user is refused with an error
//!   (user switching is the [`LinuxContainerizer`](super::linux::LinuxContainerizer)'s).

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::{
    Container, Containerizer, ContainerizerError, ExitStatus, LaunchSpec, Prepared, build_command,
    checked_command, prepare_sandbox, undo_launch,
};
use crate::checkpoint;

/// Runs each task's command as a child process of the agent. See the module docs.
#[derive(Debug, Clone)]
pub struct ProcessContainerizer {
    work_dir: PathBuf,
    agent_user: String,
    agent_uid: String,
}

impl ProcessContainerizer {
    /// A containerizer keeping sandboxes and run files under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        let uid = nix::unistd::geteuid();
        let agent_user = match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => uid.to_string(),
        };
        Self {
            work_dir: work_dir.into(),
            agent_user,
            agent_uid: uid.to_string(),
        }
    }

    /// The user tasks run as.
    pub fn agent_user(&self) -> &str {
        &self.agent_user
    }

    async fn launch_process(
        &self,
        spec: &LaunchSpec,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let task_id = spec.task.task_id.as_str();
        let command = checked_command(spec)?;
        // Plain processes share the agent's network namespace: a task that asks for another
        // network is refused rather than run in the host's.
        match strata_proto::network::mode(&spec.task) {
            Ok(strata_proto::network::Mode::Host) => {}
            Ok(_) => {
                return Err(ContainerizerError::NetworkRefused {
                    task_id: task_id.to_owned(),
                    reason: "it asks for a network namespace of its own (bridge or none), and \
                             this agent runs tasks as plain processes in its own"
                        .to_owned(),
                });
            }
            Err(reason) => {
                return Err(ContainerizerError::InvalidTask {
                    task_id: task_id.to_owned(),
                    reason,
                });
            }
        }
        if !command.user.is_empty()
            && command.user != self.agent_user
            && command.user != self.agent_uid
        {
            return Err(ContainerizerError::UserSwitch {
                task_id: task_id.to_owned(),
                user: command.user.clone(),
                agent_user: self.agent_user.clone(),
            });
        }
        let Prepared {
            sandbox,
            run,
            stdout,
            stderr,
        } = prepare_sandbox(&self.work_dir, spec).await?;
        let (program, mut cmd) = build_command(spec, command, &sandbox, stdout, stderr);
        cmd.process_group(0)
            // A safety net only: the reaper owns the child and always waits for it.
            .kill_on_drop(true);

        let mut child = cmd.spawn().map_err(|source| ContainerizerError::Spawn {
            task_id: task_id.to_owned(),
            program,
            source,
        })?;
        let pid = child.id().ok_or_else(|| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the process exited before its pid could be read".to_owned(),
        })?;
        let group = Pid::from_raw(i32::try_from(pid).map_err(|_| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: format!("pid {pid} is out of range"),
        })?);

        let (exit_tx, exit_rx) = watch::channel(None);
        let reaper_task = task_id.to_owned();
        tokio::spawn(async move {
            let result = child
                .wait()
                .await
                .map(ExitStatus::from_std)
                .map_err(|e| e.to_string());
            // Whatever is left of the task's process group goes with it.
            signal_group(&reaper_task, group, Signal::SIGKILL);
            let _ = exit_tx.send(Some(result));
        });
        let container = ProcessContainer {
            task_id: task_id.to_owned(),
            pid,
            group,
            exit: exit_rx,
        };

        let pid_file = run.join("pid");
        if let Err(source) = checkpoint::write_atomic(&pid_file, pid.to_string().as_bytes()) {
            let _ = container.kill(Duration::ZERO).await;
            return Err(ContainerizerError::PidFile {
                task_id: task_id.to_owned(),
                source,
            });
        }
        tracing::debug!(pid, sandbox = %sandbox.display(), "task process started");
        Ok(Box::new(container))
    }
}

impl Containerizer for ProcessContainerizer {
    fn launch<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Container>, ContainerizerError>> {
        Box::pin(async move {
            let launched = self.launch_process(spec).await;
            if launched.is_err() {
                undo_launch(&self.work_dir, spec).await;
            }
            launched
        })
    }
}

/// Sends `signal` to a process group; a group that is already gone is not an error.
fn signal_group(task_id: &str, group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(task_id, pgid = group.as_raw(), signal = signal.as_str(), error = %e,
                "cannot signal the task's process group");
        }
    }
}

/// A task run by [`ProcessContainerizer`].
#[derive(Debug)]
struct ProcessContainer {
    task_id: String,
    pid: u32,
    group: Pid,
    /// Set once by the reaper when the process has been waited for.
    exit: watch::Receiver<Option<Result<ExitStatus, String>>>,
}

impl ProcessContainer {
    fn lost(&self, reason: impl Into<String>) -> ContainerizerError {
        ContainerizerError::Lost {
            task_id: self.task_id.clone(),
            reason: reason.into(),
        }
    }

    fn finished(&self) -> Option<Result<ExitStatus, ContainerizerError>> {
        self.exit
            .borrow()
            .clone()
            .map(|r| r.map_err(|e| self.lost(format!("waiting for the process failed: {e}"))))
    }

    async fn wait_exit(&self) -> Result<ExitStatus, ContainerizerError> {
        let mut rx = self.exit.clone();
        let result = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| self.lost("the process reaper stopped"))?
            .clone();
        match result {
            Some(Ok(status)) => Ok(status),
            Some(Err(e)) => Err(self.lost(format!("waiting for the process failed: {e}"))),
            None => Err(self.lost("the process reaper stopped")),
        }
    }

    async fn kill_group(&self, grace: Duration) -> Result<ExitStatus, ContainerizerError> {
        if let Some(done) = self.finished() {
            return done;
        }
        signal_group(&self.task_id, self.group, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::info!(
                    task_id = %self.task_id,
                    grace_ms = grace.as_millis() as u64,
                    "task did not stop within its grace period; sending SIGKILL"
                );
                signal_group(&self.task_id, self.group, Signal::SIGKILL);
                self.wait_exit().await
            }
        }
    }
}

impl Container for ProcessContainer {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>> {
        Box::pin(self.wait_exit())
    }

    fn kill(&self, grace: Duration) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>> {
        Box::pin(self.kill_group(grace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Instant;
    use strata_proto::{CommandInfo, TaskInfo};

    use crate::containerizer::{run_dir, sandbox_dir};

    const LIMIT: Duration = Duration::from_secs(10);

    fn spec(task_id: &str, command: CommandInfo) -> LaunchSpec {
        LaunchSpec {
            gpus: Vec::new(),
            framework_id: "fw-1".to_owned(),
            agent_id: "agent-1".to_owned(),
            task: TaskInfo {
                task_id: task_id.to_owned(),
                command: Some(command),
                ..TaskInfo::default()
            },
        }
    }

    fn shell(script: &str) -> CommandInfo {
        CommandInfo {
            shell: true,
            value: script.to_owned(),
            ..CommandInfo::default()
        }
    }

    fn argv(value: &str, arguments: &[&str]) -> CommandInfo {
        CommandInfo {
            shell: false,
            value: value.to_owned(),
            arguments: arguments.iter().map(|s| s.to_string()).collect(),
            ..CommandInfo::default()
        }
    }

    async fn run_to_end(c: &ProcessContainerizer, spec: &LaunchSpec) -> ExitStatus {
        let container = c.launch(spec).await.expect("launch");
        tokio::time::timeout(LIMIT, container.wait())
            .await
            .expect("the task ends in time")
            .expect("wait")
    }

    async fn wait_for_file_content(path: &Path, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        loop {
            if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared in {path:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn exit_codes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        assert_eq!(
            run_to_end(&c, &spec("ok", shell("true"))).await,
            ExitStatus::Code(0)
        );
        assert_eq!(
            run_to_end(&c, &spec("three", shell("exit 3"))).await,
            ExitStatus::Code(3)
        );
        let status = run_to_end(&c, &spec("three", shell("exit 3"))).await;
        assert!(!status.success());
        assert_eq!(status.to_string(), "exited with status 3");
    }

    #[tokio::test]
    async fn a_signal_death_is_reported_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let status = run_to_end(&c, &spec("sig", shell("kill -9 $$"))).await;
        assert_eq!(status, ExitStatus::Signal(9));
        assert_eq!(status.signal(), Some(9));
        assert_eq!(status.to_string(), "killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn output_goes_to_files_in_the_sandbox_which_is_the_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let mut command = shell(
            "echo hi; echo oops >&2; pwd; echo \"$STRATA_TASK_ID $STRATA_FRAMEWORK_ID $STRATA_AGENT_ID $MESOS_TASK_ID $GREETING\"; \
             test \"$STRATA_SANDBOX\" = \"$MESOS_SANDBOX\" && test \"$STRATA_SANDBOX\" = \"$(pwd)\" && echo sandbox-ok",
        );
        command.environment = HashMap::from([("GREETING".to_owned(), "hello".to_owned())]);
        let status = run_to_end(&c, &spec("out", command)).await;
        assert_eq!(status, ExitStatus::Code(0));
        let sandbox = sandbox_dir(dir.path(), "fw-1", "out").unwrap();
        let stdout = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
        let stderr = std::fs::read_to_string(sandbox.join("stderr")).unwrap();
        let real_sandbox = sandbox.canonicalize().unwrap();
        assert_eq!(
            stdout,
            format!(
                "hi\n{}\nout fw-1 agent-1 out hello\nsandbox-ok\n",
                real_sandbox.display()
            )
        );
        assert_eq!(stderr, "oops\n");
    }

    #[tokio::test]
    async fn argv_form_passes_argv0_and_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let cmd = argv(
            "/bin/sh",
            &[
                "my-name",
                "-c",
                "tr '\\0' ' ' < /proc/$$/cmdline; echo; echo $0 $1; exit 4",
                "zero",
                "one",
            ],
        );
        assert_eq!(
            run_to_end(&c, &spec("argv", cmd)).await,
            ExitStatus::Code(4)
        );
        let stdout = std::fs::read_to_string(
            sandbox_dir(dir.path(), "fw-1", "argv")
                .unwrap()
                .join("stdout"),
        )
        .unwrap();
        let mut lines = stdout.lines();
        let cmdline = lines.next().unwrap();
        assert!(
            cmdline.starts_with("my-name -c "),
            "argv[0] is the first argument: {cmdline:?}"
        );
        assert_eq!(lines.next(), Some("zero one"));
        // With no arguments, argv is just [value]; the executable is looked up in PATH.
        assert_eq!(
            run_to_end(&c, &spec("plain", argv("true", &[]))).await,
            ExitStatus::Code(0)
        );
    }

    #[tokio::test]
    async fn the_pid_file_holds_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let container = c.launch(&spec("pid", shell("exit 0"))).await.unwrap();
        let pid_file = run_dir(dir.path(), "fw-1", "pid").unwrap().join("pid");
        let recorded: u32 = std::fs::read_to_string(pid_file).unwrap().parse().unwrap();
        assert_eq!(Some(recorded), container.pid());
        tokio::time::timeout(LIMIT, container.wait())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_names_the_command_and_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let err = c
            .launch(&spec("nosuch", argv("/no/such", &[])))
            .await
            .unwrap_err();
        assert!(matches!(err, ContainerizerError::Spawn { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot start \"/no/such\": no such file or directory (os error 2)"
        );
        let err = c.launch(&spec("nocmd", argv("", &[]))).await.unwrap_err();
        assert!(
            matches!(err, ContainerizerError::NoCommand { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn ids_that_are_not_directory_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        for id in ["..", "a/b", "", "../../../x", "/abs/path", "a\0b"] {
            let err = c.launch(&spec(id, shell("true"))).await.unwrap_err();
            assert!(
                matches!(err, ContainerizerError::InvalidId { .. }),
                "{err:?}"
            );
        }
        assert!(!dir.path().join("sandboxes").exists());
    }

    #[tokio::test]
    async fn another_user_is_refused_but_the_agents_own_user_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let mut cmd = shell("true");
        cmd.user = "strata-no-such-user".to_owned();
        let err = c.launch(&spec("other", cmd)).await.unwrap_err();
        assert!(
            matches!(err, ContainerizerError::UserSwitch { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("strata-no-such-user"), "{err}");
        assert!(
            err.to_string().contains("leave command.user empty"),
            "{err}"
        );

        let mut cmd = shell("true");
        cmd.user = c.agent_user().to_owned();
        assert_eq!(run_to_end(&c, &spec("own", cmd)).await, ExitStatus::Code(0));
    }

    #[tokio::test]
    async fn kill_stops_the_group_with_sigterm_and_reaps_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let container = c.launch(&spec("sleepy", shell("sleep 30"))).await.unwrap();
        let pid = container.pid().unwrap();
        let started = Instant::now();
        let status = tokio::time::timeout(LIMIT, container.kill(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, ExitStatus::Signal(15));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM was enough"
        );
        assert!(!process_exists(pid), "the process was reaped");
        // A second kill or wait returns the same status at once.
        assert_eq!(
            container.kill(Duration::from_secs(5)).await.unwrap(),
            status
        );
        assert_eq!(container.wait().await.unwrap(), status);
    }

    #[tokio::test]
    async fn a_task_ignoring_sigterm_is_sigkilled_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let container = c
            .launch(&spec(
                "stubborn",
                shell("trap '' TERM; echo ready; sleep 30"),
            ))
            .await
            .unwrap();
        let pid = container.pid().unwrap();
        wait_for_file_content(
            &sandbox_dir(dir.path(), "fw-1", "stubborn")
                .unwrap()
                .join("stdout"),
            "ready",
        )
        .await;
        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let status = tokio::time::timeout(LIMIT, container.kill(grace))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, ExitStatus::Signal(9));
        assert!(
            started.elapsed() >= grace,
            "SIGKILL came only after the grace period"
        );
        assert!(!process_exists(pid), "the process was reaped");
    }

    #[tokio::test]
    async fn leftovers_of_the_group_are_killed_when_the_command_exits() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProcessContainerizer::new(dir.path());
        let status = run_to_end(
            &c,
            &spec("bg", shell("sleep 30 & echo $! > child.pid; exit 0")),
        )
        .await;
        assert_eq!(status, ExitStatus::Code(0));
        let child: u32 = std::fs::read_to_string(
            sandbox_dir(dir.path(), "fw-1", "bg")
                .unwrap()
                .join("child.pid"),
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        // The background sleep got SIGKILL; whoever adopted it reaps it, so wait until it
        // is gone or at least dead (a zombie awaiting its new parent).
        let deadline = Instant::now() + LIMIT;
        loop {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat")).ok();
            let dead = state.as_deref().is_none_or(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            });
            if dead {
                break;
            }
            assert!(Instant::now() < deadline, "the background process survived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
