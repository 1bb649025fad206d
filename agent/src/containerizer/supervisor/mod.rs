//! The per-task supervisor, which is also the task's init: the agent binary in more modes.
//!
//! ```text
//! agent ──request──> strata-agent launcher      (single-threaded, outside the task's cgroup)
//!                      └─forks─> the task's supervisor and init: pid 1 of the task's
//!                                namespaces, outside its cgroup
//!                                  └─> the command (pid 2), in the task's cgroup
//! ```
//!
//! - **launcher** keeps one **spare** forked ahead of time: pid 1 of a fresh pid namespace
//!   (`unshare(CLONE_NEWPID)` before the fork, the launcher's own namespace for children
//!   restored after it), in a session of its own, that records its host pid, unshares the
//!   mount, uts and ipc namespaces (its mounts slaves of the host's: nothing propagates back),
//!   mounts a fresh `/proc` and a private `/dev/shm`, then waits on the launcher's socket. The
//!   spare that takes a request answers it with its pid, makes its mounts private, takes the
//!   launch pipe as its stdout and becomes that task's supervisor and init; once its command
//!   has started, the launcher makes the next spare (so that happens while tasks run, not while
//!   they start). A spare idle for 10 s retires and is replaced, and a spare dies with its
//!   launcher.
//! - **the supervisor and init** (pid 1) mounts the sandbox's `tmp` on `/tmp` and `/var/tmp`,
//!   sets the hostname to the task id, unshares a network namespace with loopback up when
//!   asked for, then starts the command, which joins the task's cgroups and becomes the task's
//!   user with only the capabilities asked for, no_new_privs and rlimits, in the sandbox,
//!   before it execs. It forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the
//!   command, reaps every process of the namespace, copies stdout and stderr to the sandbox
//!   with size-capped rotation (all in one poll loop, no threads), records the command's status
//!   in `<run-dir>/exit` (atomically), says so on the launch pipe ([`EXITED_LINE`]) and exits
//!   (which kills whatever is left in the namespace). It is the task's parent and does not
//!   depend on the agent: it keeps running when the agent dies. Staying outside the task's
//!   cgroup, it outlives a kill of the whole cgroup (or an OOM kill of the group) and records
//!   how the command ended.
//! - **supervise** `<run-dir>` runs the same supervisor and init as a child of the calling
//!   process (for callers that start it as a program), and records the init's own status if
//!   the init ends without recording one.
//!
//! The exit file holds one line: `exited <code>` or `signal <number>`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::str::FromStr as _;
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::containerizer::ExitStatus;

/// The spec file in the run directory.
pub const SPEC_FILE: &str = "spec.json";
/// The command's final status, written by the supervisor and init.
pub const EXIT_FILE: &str = "exit";
/// How long a spare supervisor waits for a request before it retires.
const SPARE_MAX_IDLE: Duration = Duration::from_secs(10);
/// What a spare tells the launcher when it takes a request (then it closes the pipe once the
/// command has started).
const SPARE_TOOK: &[u8] = b"t";
/// What a spare tells the launcher when it retires unused.
const SPARE_RETIRED: &[u8] = b"r";
/// The supervisor's own pid.
pub const SUPERVISOR_PID_FILE: &str = "supervisor.pid";
/// What the supervisor writes on the launch pipe once it has recorded the exit.
pub const EXITED_LINE: &str = "exited\n";

/// Errors of the supervisor and the task's init.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The spec could not be read or parsed.
    #[error("cannot read the task spec {path}: {reason}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A system call failed.
    #[error("cannot {action}: {source}")]
    Sys {
        /// What was being done.
        action: String,
        /// The error.
        source: io::Error,
    },
}

fn sys(action: impl Into<String>) -> impl FnOnce(io::Error) -> SupervisorError {
    let action = action.into();
    move |source| SupervisorError::Sys { action, source }
}

fn nix_sys(action: impl Into<String>) -> impl FnOnce(nix::Error) -> SupervisorError {
    let action = action.into();
    move |e| SupervisorError::Sys {
        action,
        source: io::Error::from_raw_os_error(e as i32),
    }
}

/// Everything the supervisor and the init need to start a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task id (also the hostname, cut to 64 bytes).
    pub task_id: String,
    /// The program to exec.
    pub program: String,
    /// argv, `argv[0]` included.
    pub argv: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// The working directory (the sandbox).
    pub cwd: PathBuf,
    /// User, group and supplementary groups.
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capabilities kept, like `CAP_NET_BIND_SERVICE`.
    pub capabilities: Vec<String>,
    /// rlimits by name (`nofile`, ...), soft = hard.
    pub rlimits: Vec<(String, u64)>,
    /// A network namespace with only loopback.
    pub network_isolation: bool,
    /// The `cgroup.procs` files of the task's cgroup.
    pub cgroup_procs: Vec<PathBuf>,
    /// Where stdout and stderr go.
    pub stdout: PathBuf,
    /// Where stderr goes.
    pub stderr: PathBuf,
    /// Each log file is rotated (to `<name>.1`) when it would grow past this many bytes.
    pub log_max_bytes: u64,
}

impl TaskSpec {
    /// Reads `<run_dir>/spec.json`.
    pub fn read(run_dir: &Path) -> Result<Self, SupervisorError> {
        let path = run_dir.join(SPEC_FILE);
        let text = fs::read(&path).map_err(|e| SupervisorError::Spec {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&text).map_err(|e| SupervisorError::Spec {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes `<run_dir>/spec.json` atomically.
    pub fn write(&self, run_dir: &Path) -> Result<(), checkpoint::CheckpointError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        checkpoint::write_atomic_volatile(&run_dir.join(SPEC_FILE), &bytes)
    }
}

/// When process `pid` started (field 22 of `/proc/<pid>/stat`, in clock ticks after boot):
/// with the pid, it names one process for good (pids are reused, start times with them).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // rest starts at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The supervisor of a run directory, if it is still running: `<pid> <start time>` from its
/// pid file, checked against the live process of that pid.
pub fn running_supervisor(run_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(run_dir.join(SUPERVISOR_PID_FILE)).ok()?;
    let mut parts = text.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let started: u64 = parts.next()?.parse().ok()?;
    (process_start_time(pid) == Some(started)).then_some(pid)
}

/// `exited 3` / `signal 9`.
pub fn format_exit(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exited {c}\n"),
        ExitStatus::Signal(s) => format!("signal {s}\n"),
    }
}

/// Parses [`format_exit`]'s output.
pub fn parse_exit(text: &str) -> Option<ExitStatus> {
    let (kind, value) = text.trim().split_once(' ')?;
    let value: i32 = value.parse().ok()?;
    match kind {
        "exited" => Some(ExitStatus::Code(value)),
        "signal" => Some(ExitStatus::Signal(value)),
        _ => None,
    }
}

/// Reads an exit file; `None` when it is missing or malformed.
pub fn read_exit(path: &Path) -> Option<ExitStatus> {
    parse_exit(&fs::read_to_string(path).ok()?)
}

fn wait_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Code(code)),
        WaitStatus::Signaled(_, signal, _) => Some(ExitStatus::Signal(signal as i32)),
        _ => None,
    }
}

/// `strata-agent supervise <run-dir>`; see the module docs. Returns the process's exit code.
pub fn supervise_main(run_dir: &Path) -> u8 {
    match supervise(run_dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata-agent supervise: error: {e}");
            // The agent reads a missing exit file as a lost task, with this log.
            1
        }
    }
}

fn supervise(run_dir: &Path) -> Result<(), SupervisorError> {
    crate::sys::unshare_pid_namespace().map_err(sys("unshare a pid namespace"))?;
    let init = match crate::sys::fork_supervisor().map_err(sys("start the task's init"))? {
        None => std::process::exit(i32::from(init_main(run_dir))),
        Some(pid) => pid,
    };
    let init_status = loop {
        match waitpid(init, None) {
            Ok(status) => {
                if let Some(status) = wait_status(status) {
                    break status;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(nix_sys("wait for the task's init")(e)),
        }
    };
    // The init records the command's status and says so; if it could not (it was killed),
    // its own status stands for the task's.
    if read_exit(&run_dir.join(EXIT_FILE)).is_none() {
        checkpoint::write_atomic_volatile(
            &run_dir.join(EXIT_FILE),
            format_exit(init_status).as_bytes(),
        )
        .map_err(|e| SupervisorError::Sys {
            action: "record the task's exit status".to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut out = io::stdout().lock();
        let _ = out.write_all(EXITED_LINE.as_bytes());
        let _ = out.flush();
    }
    Ok(())
}

/// `strata-agent launcher`: reads requests from the seqpacket socket on stdin (a run directory,
/// with the launch pipe as an `SCM_RIGHTS` descriptor), forks the task's supervisor and init
/// for each (pid 1 of a new pid namespace, in a session of its own, stdout the launch pipe,
/// stderr `<run-dir>/supervisor.log`) and answers with its pid. Ends when the socket closes.
/// Returns the process's exit code.
pub fn launcher_main() -> u8 {
    match launcher() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata-agent launcher: error: {e}");
            1
        }
    }
}

fn launcher() -> Result<(), SupervisorError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    // Supervisors are not waited for here (the agent watches them through pidfds): let the
    // kernel reap them.
    crate::sys::set_sigchld(true).map_err(sys("ignore SIGCHLD"))?;
    // The agent raised its own open-file limit; supervisors and tasks get the host's.
    crate::nofile::restore_for_tasks().map_err(nix_sys("restore the tasks' open-file limit"))?;
    // Each supervisor is pid 1 of a pid namespace of its own, made just before its fork; this
    // one is restored after it for the next.
    let own_pid_ns = File::open("/proc/self/ns/pid").map_err(sys("open /proc/self/ns/pid"))?;
    let socket = io::stdin();
    let mut buf = [0u8; 16];
    loop {
        // The spare writes a byte on this pipe when it takes a request and closes it once the
        // command has started (or it failed, or died): then the next spare is made, while the
        // task runs rather than while it starts.
        let (busy_r, busy_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(nix_sys("create the launcher's pipe"))?;
        crate::sys::unshare_pid_namespace().map_err(sys("unshare a pid namespace"))?;
        let forked = crate::sys::fork_supervisor();
        if let Ok(None) = forked {
            drop(busy_r);
            drop(own_pid_ns);
            std::process::exit(i32::from(spare_main(busy_w)));
        }
        drop(busy_w);
        crate::sys::set_pid_namespace_for_children(&own_pid_ns)
            .map_err(sys("restore the launcher's pid namespace for its children"))?;
        forked.map_err(sys("fork a supervisor"))?;
        let mut said: Option<u8> = None;
        loop {
            let mut fds = [
                PollFd::new(busy_r.as_fd(), PollFlags::POLLIN),
                PollFd::new(socket.as_fd(), PollFlags::empty()),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(nix_sys("wait for the spare supervisor")(e)),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                match nix::unistd::read(&busy_r, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => said = Some(buf[n - 1]),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            } else if said.is_none() && ready(&fds[1]) {
                // The agent is gone (the spare sees it too and ends).
                return Ok(());
            }
        }
        if said.is_none() {
            // Gone without taking a request or retiring: not in a loop faster than this.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A spare supervisor and init, forked ahead of time by the launcher: pid 1 of a fresh pid
/// namespace, it enters its other namespaces, then takes the next request from the launcher's
/// socket (stdin), answers it with its pid and becomes that task's supervisor and init.
/// Returns the process's exit code.
fn spare_main(busy: OwnedFd) -> u8 {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};
    use std::os::unix::ffi::OsStrExt as _;
    let _ = crate::sys::set_sigchld(false);
    let _ = nix::unistd::setsid();
    // A spare goes with its launcher (else it would keep the socket open, and the agent would
    // not see that the launcher is gone); a task's supervisor outlives both.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Ahead of the request: a failure is reported to the task that takes this spare. The
    // mounts stay slaves of the host's until then, so that mounts made on the host in the
    // meantime reach the task where the host's mounts are shared.
    let prepared = HostPid::read().and_then(|me| enter_namespaces(MsFlags::MS_SLAVE).map(|()| me));
    let socket = 0;
    let (run_dir, report) = loop {
        // A spare idle for long retires (the launcher makes a fresh one): the view of the host
        // a task starts from is never older than this.
        {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            use std::os::fd::AsFd as _;
            let stdin = io::stdin();
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(SPARE_MAX_IDLE).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) => {
                    let _ = nix::unistd::write(&busy, SPARE_RETIRED);
                    return 0;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return 1,
            }
        }
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        let n = msg.bytes;
        if n == 0 {
            // The agent is gone.
            return 0;
        }
        let fd = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
        });
        let Some(fd) = fd else {
            let _ = send(socket, b"error: no launch pipe", MsgFlags::MSG_NOSIGNAL);
            continue;
        };
        let report = crate::sys::own_received_fd(fd);
        break (
            PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..n])),
            report,
        );
    };
    let _ = nix::sys::prctl::set_pdeathsig(None);
    let _ = nix::unistd::write(&busy, SPARE_TOOK);
    let answer = match &prepared {
        Ok(me) => me.pid.to_string(),
        Err(_) => host_pid().map_or_else(|_| "0".to_owned(), |p| p.to_string()),
    };
    let _ = send(socket, answer.as_bytes(), MsgFlags::MSG_NOSIGNAL);
    let _ = nix::unistd::dup2_stdout(&report);
    drop(report);
    if let Ok(log) = File::create(run_dir.join("supervisor.log")) {
        let _ = nix::unistd::dup2_stderr(&log);
    }
    // The launcher's socket (fd 0) is not the task's business.
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    let result = prepared.and_then(|me| {
        make_mounts_private()?;
        let spec = TaskSpec::read(&run_dir)?;
        me.record(&run_dir)?;
        task_init(&run_dir, &spec, Some(busy))
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata-agent task init: error: {e}");
            127
        }
    }
}

/// This process's pid as the host sees it: `/proc` is still the host's when the supervisor
/// starts, and its `self` names this process in the host's pid namespace.
fn host_pid() -> Result<u32, SupervisorError> {
    let link = fs::read_link("/proc/self").map_err(sys("read /proc/self"))?;
    link.to_string_lossy()
        .parse()
        .map_err(|_| SupervisorError::Sys {
            action: "read this process's pid from /proc/self".to_owned(),
            source: io::Error::other(format!("{} is not a pid", link.display())),
        })
}

/// The task's supervisor and init: pid 1 of a fresh pid namespace, stdout the launch pipe,
/// stderr its log; see the module docs. Returns the process's exit code.
fn init_main(run_dir: &Path) -> u8 {
    match init(run_dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata-agent task init: error: {e}");
            let _ = OpenOptions::new()
                .append(true)
                .create(true)
                .open(run_dir.join("init.log"))
                .and_then(|mut f| writeln!(f, "{e}"));
            127
        }
    }
}

fn init(run_dir: &Path) -> Result<u8, SupervisorError> {
    let spec = TaskSpec::read(run_dir)?;
    let me = HostPid::read()?;
    me.record(run_dir)?;
    enter_namespaces(MsFlags::MS_PRIVATE)?;
    task_init(run_dir, &spec, None)
}

/// This process's pid and start time as the host sees them, read while `/proc` is still the
/// host's: what recovery checks a supervisor by.
struct HostPid {
    pid: u32,
    started: u64,
}

impl HostPid {
    fn read() -> Result<Self, SupervisorError> {
        let pid = host_pid()?;
        Ok(Self {
            pid,
            started: process_start_time(pid).unwrap_or(0),
        })
    }

    /// Writes `<run-dir>/supervisor.pid`.
    fn record(&self, run_dir: &Path) -> Result<(), SupervisorError> {
        checkpoint::write_atomic_volatile(
            &run_dir.join(SUPERVISOR_PID_FILE),
            format!("{} {}\n", self.pid, self.started).as_bytes(),
        )
        .map_err(|e| SupervisorError::Sys {
            action: "record the supervisor's pid".to_owned(),
            source: io::Error::other(e.to_string()),
        })
    }
}

const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "nofile" => R::RLIMIT_NOFILE,
        "nproc" => R::RLIMIT_NPROC,
        "core" => R::RLIMIT_CORE,
        "stack" => R::RLIMIT_STACK,
        "as" => R::RLIMIT_AS,
        "cpu" => R::RLIMIT_CPU,
        "fsize" => R::RLIMIT_FSIZE,
        "memlock" => R::RLIMIT_MEMLOCK,
        "data" => R::RLIMIT_DATA,
        _ => return None,
    })
}

/// The rlimit names a task may set.
pub const RLIMIT_NAMES: [&str; 9] = [
    "nofile", "nproc", "core", "stack", "as", "cpu", "fsize", "memlock", "data",
];

/// Parses capability names (`CAP_X` or `x`); unknown names are an error naming them.
pub fn parse_capabilities(names: &[String]) -> Result<caps::CapsHashSet, String> {
    let mut set = caps::CapsHashSet::new();
    for name in names {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let cap = caps::Capability::from_str(&full).map_err(|_| {
            format!("unknown capability {name:?}: use a name like CAP_NET_BIND_SERVICE")
        })?;
        set.insert(cap);
    }
    Ok(set)
}

/// The namespaces of a task's init that do not depend on the task (pid 1 of a fresh pid
/// namespace calls it): new mount, uts and ipc namespaces, every mount with `propagation`
/// (nothing propagates back to the host; `MS_SLAVE` until [`make_mounts_private`] in a spare),
/// a `/proc` of this pid namespace and a private `/dev/shm`.
fn enter_namespaces(propagation: MsFlags) -> Result<(), SupervisorError> {
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC,
    )
    .map_err(nix_sys("unshare the task's namespaces"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .map_err(nix_sys("set the propagation of the mounts"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(nix_sys("mount /proc"))?;
    if Path::new("/dev/shm").is_dir() {
        mount(
            Some("tmpfs"),
            "/dev/shm",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777,size=64m"),
        )
        .map_err(nix_sys("mount /dev/shm"))?;
    }
    Ok(())
}

/// Makes every mount of this mount namespace private: nothing propagates in or out.
fn make_mounts_private() -> Result<(), SupervisorError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(nix_sys("make the mounts private"))
}

/// The rest of the init, for one task: its sandbox's tmp, hostname, network, then the command;
/// see the module docs. Runs after [`enter_namespaces`].
///
/// `busy` (a spare's pipe to the launcher) is closed once the command has started or failed to.
fn task_init(
    run_dir: &Path,
    spec: &TaskSpec,
    busy: Option<OwnedFd>,
) -> Result<u8, SupervisorError> {
    // The run directory may be covered by the mounts below (a work dir in /tmp): keep it open
    // and reach it through /proc/self/fd (this pid namespace's /proc).
    let run_fd = nix::fcntl::open(
        run_dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nix_sys(format!(
        "open the run directory {}",
        run_dir.display()
    )))?;
    let tmp = spec.cwd.join("tmp");
    fs::create_dir_all(&tmp).map_err(sys(format!("create {}", tmp.display())))?;
    nix::unistd::chown(
        &tmp,
        Some(nix::unistd::Uid::from_raw(spec.uid)),
        Some(nix::unistd::Gid::from_raw(spec.gid)),
    )
    .map_err(nix_sys(format!("chown {}", tmp.display())))?;
    // The sandbox stays reachable at its path even when /tmp is covered (a work dir in /tmp).
    let sandbox_fd = nix::fcntl::open(
        &spec.cwd,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nix_sys(format!("open the sandbox {}", spec.cwd.display())))?;
    for target in ["/tmp", "/var/tmp"] {
        // Only real directories (not symlinks); a host without one just lacks it.
        if fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
            let bound = mount(
                Some(&tmp),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
            if let Err(e) = bound {
                if target == "/tmp" {
                    return Err(nix_sys(format!("bind the sandbox's tmp on {target}"))(e));
                }
                eprintln!(
                    "strata-agent task-init: warning: cannot bind the sandbox's tmp on {target}: {e}"
                );
            }
        }
    }
    if !spec.cwd.is_dir() {
        use std::os::fd::AsRawFd as _;
        fs::create_dir_all(&spec.cwd).map_err(sys(format!("recreate {}", spec.cwd.display())))?;
        let source = format!("/proc/self/fd/{}", sandbox_fd.as_raw_fd());
        mount(
            Some(source.as_str()),
            &spec.cwd,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_sys(format!(
            "bind the sandbox back on {}",
            spec.cwd.display()
        )))?;
    }
    drop(sandbox_fd);
    let hostname: String = spec.task_id.chars().take(64).collect();
    nix::unistd::sethostname(&hostname).map_err(nix_sys("set the hostname"))?;
    if spec.network_isolation {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(nix_sys("unshare a network namespace"))?;
        crate::sys::loopback_up().map_err(sys("bring up loopback"))?;
    }

    let keep = parse_capabilities(&spec.capabilities).map_err(|reason| SupervisorError::Spec {
        path: run_dir.join(SPEC_FILE),
        reason,
    })?;
    let mut rlimits = Vec::new();
    for (name, value) in &spec.rlimits {
        let resource = rlimit_resource(name).ok_or_else(|| SupervisorError::Spec {
            path: run_dir.join(SPEC_FILE),
            reason: format!("unknown rlimit {name:?}"),
        })?;
        rlimits.push((resource, *value));
    }

    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    let mut waited = forwarded;
    waited.add(Signal::SIGCHLD);
    crate::sys::catch_for_sigwait(&waited).map_err(sys("set up signal forwarding"))?;

    // The command joins the task's cgroups before it runs (this init stays outside them).
    let mut procs: Vec<OwnedFd> = Vec::with_capacity(spec.cgroup_procs.len());
    for file in &spec.cgroup_procs {
        let f = OpenOptions::new()
            .write(true)
            .open(file)
            .map_err(sys(format!("open {}", file.display())))?;
        procs.push(f.into());
    }
    let (stdout_r, stdout_w) = nix::unistd::pipe().map_err(nix_sys("create a pipe"))?;
    let (stderr_r, stderr_w) = nix::unistd::pipe().map_err(nix_sys("create a pipe"))?;
    let mut cmd = Command::new(&spec.program);
    {
        use std::os::unix::process::CommandExt as _;
        if let Some(argv0) = spec.argv.first() {
            cmd.arg0(argv0);
        }
    }
    cmd.args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout_w))
        .stderr(Stdio::from(stderr_w));
    // Single-threaded here (the init starts no threads). The cgroups first: joining them
    // needs the privileges dropped next.
    crate::sys::join_cgroups_before_exec_std(&mut cmd, procs);
    crate::sys::drop_privileges_before_exec(
        &mut cmd,
        crate::sys::Credentials {
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.clone(),
            keep,
            rlimits,
        },
    );
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // The agent turns this into a launch failure naming the program and the error.
            report_launch(&format!("error {}", e.raw_os_error().unwrap_or(0)));
            drop(busy);
            return Ok(127);
        }
    };
    drop(cmd);
    let main = Pid::from_raw(child.id() as i32);
    // Not waited through std: this init reaps every process of the namespace itself.
    drop(child);
    report_launch(&format!("started {}", main.as_raw()));
    drop(busy);
    // One loop, no threads: forwards signals, reaps the namespace's processes and copies the
    // command's stdout and stderr to the sandbox.
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        &waited,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(nix_sys("watch signals"))?;
    let mut copiers = [
        Some(LogCopier::new(
            File::from(stdout_r),
            spec.stdout.clone(),
            spec.log_max_bytes,
        )),
        Some(LogCopier::new(
            File::from(stderr_r),
            spec.stderr.clone(),
            spec.log_max_bytes,
        )),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    let mut status = None;
    // Once the command has ended, what it wrote is drained for at most 500 ms (its
    // descendants may hold the pipes open).
    let mut drain_until: Option<std::time::Instant> = None;
    loop {
        if status.is_some() && copiers.iter().all(Option::is_none) {
            break;
        }
        let timeout = match drain_until {
            None => nix::poll::PollTimeout::NONE,
            Some(until) => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                // Rounded up: never a busy loop over the last fraction of a millisecond.
                nix::poll::PollTimeout::try_from(left + Duration::from_millis(1))
                    .unwrap_or(nix::poll::PollTimeout::MAX)
            }
        };
        let mut ready = [false; 3];
        {
            use nix::poll::{PollFd, PollFlags};
            use std::os::fd::AsFd as _;
            let mut fds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            if status.is_none() {
                fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
                which.push(0);
            }
            for (i, copier) in copiers.iter().enumerate() {
                if let Some(c) = copier {
                    fds.push(PollFd::new(c.from.as_fd(), PollFlags::POLLIN));
                    which.push(i + 1);
                }
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(nix_sys("wait for signals and output")(e)),
            }
            for (fd, i) in fds.iter().zip(which) {
                ready[i] = fd.revents().is_some_and(|r| !r.is_empty());
            }
        }
        for (i, copier) in copiers.iter_mut().enumerate() {
            if ready[i + 1] && copier.as_mut().is_some_and(|c| !c.copy_some(&mut buf)) {
                *copier = None;
            }
        }
        if !ready[0] {
            continue;
        }
        let mut reap = false;
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => reap = true,
                Ok(signal) => {
                    let _ = kill(main, signal);
                }
                Err(_) => {}
            }
        }
        if !reap {
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(waited) => {
                    if waited.pid() == Some(main) {
                        status = wait_status(waited);
                    }
                }
            }
        }
        if let Some(status) = status {
            let run_dir_now = {
                use std::os::fd::AsRawFd as _;
                PathBuf::from(format!("/proc/self/fd/{}", run_fd.as_raw_fd()))
            };
            if let Err(e) = checkpoint::write_atomic_volatile(
                &run_dir_now.join(EXIT_FILE),
                format_exit(status).as_bytes(),
            ) {
                return Err(SupervisorError::Sys {
                    action: "record the task's exit status".to_owned(),
                    source: io::Error::other(e.to_string()),
                });
            }
            drain_until = Some(std::time::Instant::now() + Duration::from_millis(500));
        }
    }
    // The exit is recorded and the logs are complete: tell the agent (it may be gone, a
    // broken pipe: then it reads the exit file when it recovers).
    if status.is_some() {
        report_launch(EXITED_LINE.trim_end());
    }
    Ok(match status {
        Some(ExitStatus::Code(c)) => u8::try_from(c & 0xff).unwrap_or(1),
        Some(ExitStatus::Signal(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        None => 1,
    })
}

/// Tells the agent a line through the launch pipe on stdout: whether the command started
/// (`started <pid>`) or not (`error <errno>`), and later that its exit is recorded.
fn report_launch(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Copies what a pipe brings to `path`, rotating `path` to `path.1` when it would pass `max`
/// bytes (0: no cap).
struct LogCopier {
    from: File,
    path: PathBuf,
    max: u64,
    out: Option<File>,
    size: u64,
}

impl LogCopier {
    fn open(path: &Path) -> Option<File> {
        OpenOptions::new().create(true).append(true).open(path).ok()
    }

    fn new(from: File, path: PathBuf, max: u64) -> Self {
        let out = Self::open(&path);
        let size = out
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Self {
            from,
            path,
            max,
            out,
            size,
        }
    }

    /// Copies one read's worth; false at the end of the pipe (or on an error reading it).
    fn copy_some(&mut self, buf: &mut [u8]) -> bool {
        let n = loop {
            match self.from.read(buf) {
                Ok(0) => return false,
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        };
        if self.max > 0 && self.size + n as u64 > self.max && self.size > 0 {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = fs::rename(&self.path, PathBuf::from(rotated));
            self.out = Self::open(&self.path);
            self.size = 0;
        }
        if let Some(f) = self.out.as_mut() {
            let _ = f.write_all(&buf[..n]);
        }
        self.size += n as u64;
        true
    }
}

/// The supplementary groups of a user, by name.
pub fn groups_of(user: &nix::unistd::User) -> Vec<u32> {
    let Ok(name) = std::ffi::CString::new(user.name.clone()) else {
        return vec![user.gid.as_raw()];
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()])
}

/// A rlimits map from the proto as a sorted list, refusing unknown names.
pub fn rlimits_from(map: &HashMap<String, u64>) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    for (name, value) in map {
        if !RLIMIT_NAMES.contains(&name.as_str()) {
            return Err(format!(
                "unknown rlimit {name:?}: use one of {}",
                RLIMIT_NAMES.join(", ")
            ));
        }
        out.push((name.clone(), *value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_files_round_trip() {
        for s in [
            ExitStatus::Code(0),
            ExitStatus::Code(3),
            ExitStatus::Signal(9),
        ] {
            assert_eq!(parse_exit(&format_exit(s)), Some(s));
        }
        assert_eq!(parse_exit("garbage"), None);
        assert_eq!(parse_exit(""), None);
    }

    #[test]
    fn capabilities_and_rlimits_are_checked() {
        let set =
            parse_capabilities(&["net_bind_service".to_owned(), "CAP_CHOWN".to_owned()]).unwrap();
        assert!(set.contains(&caps::Capability::CAP_NET_BIND_SERVICE));
        assert!(set.contains(&caps::Capability::CAP_CHOWN));
        assert!(parse_capabilities(&["CAP_FLY".to_owned()]).is_err());
        let ok = rlimits_from(&HashMap::from([("nofile".to_owned(), 64)])).unwrap();
        assert_eq!(ok, vec![("nofile".to_owned(), 64)]);
        assert!(rlimits_from(&HashMap::from([("x".to_owned(), 1)])).is_err());
    }

    #[test]
    fn logs_rotate_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let path = dir.path().join("stdout");
        let mut copier = LogCopier::new(File::from(r), path.clone(), 100);
        let mut w = File::from(w);
        let mut buf = vec![0u8; 4096];
        for _ in 0..5 {
            w.write_all(&[b'x'; 60]).unwrap();
            assert!(copier.copy_some(&mut buf));
        }
        drop(w);
        assert!(!copier.copy_some(&mut buf));
        let current = fs::metadata(&path).unwrap().len();
        let old = fs::metadata(dir.path().join("stdout.1")).unwrap().len();
        assert!(current <= 100 && old <= 100, "{current} {old}");
        assert_eq!(current + old, 120);
    }
}
