//! A launch under a supervisor: the spec the task's supervisor and init start it from
//! ([`TaskSpec`]: user, groups, capabilities, rlimits, environment), the agent's end of the
//! `strata-agent launcher` process that forks the supervisors, and the launch pipe on which the
//! init says whether the command started.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use strata_proto::CommandInfo;

use super::LinuxContainerizer;
use super::container::EgressGrant;

/// What wiring a bridge task takes: the bridge, its lease, and its egress limit if it has one.
pub(super) type BridgeWiring<'a> = (
    &'a Arc<Mutex<BridgeControl>>,
    &'a Lease,
    Option<&'a EgressGrant>,
);
use crate::bridge::{BridgeControl, Lease};
use crate::cgroup::TaskCgroup;
use crate::containerizer::supervisor::{self, TaskSpec};
use crate::containerizer::{ContainerizerError, ExitStatus, LaunchSpec};

/// How long the launcher may take to answer a request with a supervisor's pid.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// How long a supervised launch may take to start the command.
const START_LIMIT: Duration = Duration::from_secs(30);

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
            (user.gid.as_raw(), supervisor::groups_of(&user))
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

    /// Refuses a task that asks for an unknown capability or one the agent's allow-list
    /// (`--allowed-capabilities`) lacks, before anything is made for it.
    pub(super) fn check_capabilities(
        &self,
        task_id: &str,
        command: &CommandInfo,
    ) -> Result<(), ContainerizerError> {
        let invalid = |reason: String| ContainerizerError::InvalidTask {
            task_id: task_id.to_owned(),
            reason,
        };
        let asked = supervisor::parse_capabilities(&command.capabilities).map_err(invalid)?;
        let allowed = supervisor::parse_capabilities(&self.config.allowed_capabilities)
            .map_err(|reason| invalid(format!("the agent's --allowed-capabilities: {reason}")))?;
        let capabilities = supervisor::not_allowed(&asked, &allowed);
        if capabilities.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            task_id,
            ?capabilities,
            "refusing a task that asks for capabilities this agent does not allow"
        );
        Err(ContainerizerError::CapabilityNotAllowed {
            task_id: task_id.to_owned(),
            capabilities,
            allowed: self.config.allowed_capabilities.clone(),
        })
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
        let rlimits = supervisor::rlimits_from(&command.rlimits).map_err(invalid)?;
        // The sandbox is the task user's alone (see containerizer::SANDBOX_MODE); the
        // directories above it are traversable by everyone, not listable.
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
        Ok((
            program.clone(),
            TaskSpec {
                task_id: task_id.to_owned(),
                program,
                argv,
                env: crate::containerizer::task_environment(spec, command, sandbox),
                cwd: sandbox.to_path_buf(),
                uid,
                gid,
                groups,
                capabilities: command.capabilities.clone(),
                rlimits,
                network_isolation: strata_proto::network::mode(&spec.task)
                    == Ok(strata_proto::network::Mode::None),
                bridge: strata_proto::network::mode(&spec.task)
                    == Ok(strata_proto::network::Mode::Bridge),
                cgroup_procs: cg.procs_files(),
                stdout: sandbox.join("stdout"),
                stderr: sandbox.join("stderr"),
                log_max_bytes: self.config.log_max_bytes,
                seccomp: self.config.seccomp,
                // Capabilities in a namespace of the task's own would apply to nothing of the
                // host's (its network namespace included): a task keeping some runs without.
                user_namespace: self.config.user_namespaces
                    && uid != 0
                    && command.capabilities.is_empty(),
            },
        ))
    }

    /// Writes the task's spec, has the launcher fork its supervisor, wires a bridge task's
    /// network namespace once the init is in it (`bridge`: the bridge and the task's lease), and
    /// waits until the init says the command started. Returns the supervisor's pid and a future
    /// that resolves when it has recorded the task's exit, or is gone.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one launch, each used once; a struct for them would only be unpacked here"
    )]
    pub(super) async fn start_supervised(
        &self,
        spec: &LaunchSpec,
        command: &CommandInfo,
        sandbox: &Path,
        run: &Path,
        cg: &dyn TaskCgroup,
        (stdout, stderr): (std::fs::File, std::fs::File),
        bridge: Option<BridgeWiring<'_>>,
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
        if let Some((control, lease, egress)) = bridge
            && let Err(e) = self
                .wire_bridge(
                    task_id,
                    &program,
                    run,
                    &mut out,
                    pid,
                    (control, lease, egress),
                )
                .await
        {
            // The init waits for its network: it and its namespace (with the veth) go.
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(e);
        }
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

    /// Waits for the init's [`supervisor::NETNS_LINE`] on the launch pipe, then wires its
    /// network namespace to the bridge and writes the lease, which lets the init go on.
    async fn wire_bridge(
        &self,
        task_id: &str,
        program: &str,
        run: &Path,
        out: &mut (impl tokio::io::AsyncRead + Unpin),
        pid: u32,
        (control, lease, egress): BridgeWiring<'_>,
    ) -> Result<(), ContainerizerError> {
        let line = self.read_line(out).await;
        if line.as_deref() != Some(supervisor::NETNS_LINE) {
            let text = line.unwrap_or_default();
            return Err(self.launch_failure(task_id, program, run, &text, text.is_empty()));
        }
        let control = control.clone();
        let egress = egress.cloned();
        let (task_id_owned, lease_owned, run_owned) =
            (task_id.to_owned(), lease.clone(), run.to_path_buf());
        let wired = tokio::task::spawn_blocking(move || {
            let mut guard = control
                .lock()
                .map_err(|_| "the bridge control lock is poisoned".to_owned())?;
            // An egress limit is enforced on the task's eth0, where its packets still carry
            // their socket, before the lease lets the command start.
            let mut limit_egress = || -> Result<(), String> {
                let Some((egress, id)) = &egress else {
                    return Ok(());
                };
                egress
                    .lock()
                    .map_err(|_| "the egress control lock is poisoned".to_owned())?
                    .attach_in_namespace(pid, crate::bridge::TASK_INTERFACE, *id)
                    .map_err(|e| format!("cannot limit its egress on its interface: {e}"))
            };
            guard
                .wire(
                    &task_id_owned,
                    &lease_owned,
                    pid,
                    &run_owned,
                    &mut limit_egress,
                )
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the wiring thread failed: {e}")));
        wired.map_err(|reason| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason,
        })?;
        tracing::debug!(task_id, address = %lease.address, veth = %lease.veth, "task's network namespace wired to the bridge");
        Ok(())
    }

    /// One line of the launch pipe (without its newline), within [`START_LIMIT`]; `None` when
    /// the pipe ended or the time ran out first. Reads byte by byte so that nothing after the
    /// line is taken.
    async fn read_line(&self, out: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
        use tokio::io::AsyncReadExt as _;
        let mut line = Vec::new();
        let read = tokio::time::timeout(START_LIMIT, async {
            let mut byte = [0u8; 1];
            loop {
                match out.read(&mut byte).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) if byte[0] == b'\n' => return true,
                    Ok(_) if line.len() < 256 => line.push(byte[0]),
                    Ok(_) => return false,
                }
            }
        })
        .await;
        (read == Ok(true)).then(|| String::from_utf8_lossy(&line).into_owned())
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
        Err(self.launch_failure(task_id, program, run, line, read.is_err()))
    }

    /// The error of a launch whose init said `line` (`error <errno>`, or anything else: then
    /// the supervisor's log says why), or nothing in time (`timed_out`).
    fn launch_failure(
        &self,
        task_id: &str,
        program: &str,
        run: &Path,
        line: &str,
        timed_out: bool,
    ) -> ContainerizerError {
        if let Some(errno) = line.strip_prefix("error ").and_then(|e| e.parse().ok()) {
            return ContainerizerError::Spawn {
                task_id: task_id.to_owned(),
                program: program.to_owned(),
                source: std::io::Error::from_raw_os_error(errno),
            };
        }
        let log = std::fs::read_to_string(run.join("supervisor.log")).unwrap_or_default();
        ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: if timed_out {
                format!("the task did not start within {START_LIMIT:?}")
            } else {
                format!(
                    "the task's supervisor failed before the command started: {}",
                    log.trim()
                )
            },
        }
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
/// time, with its namespaces set up, that takes the next request (see [`supervisor`]), which
/// saves a program start and the namespace setup per task. It ends when its socket closes (the
/// agent is gone); the supervisors it forked are their own sessions and live on.
#[derive(Debug)]
pub(super) struct Launcher {
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
