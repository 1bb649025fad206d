//! The task's supervisor and init: pid 1 of the task's pid namespace, outside its cgroup. It
//! enters the task's other namespaces, then starts the command in steps that read top to
//! bottom in [`task_init`], and stays as its init until it ends: it forwards signals, reaps
//! every process of the namespace, copies stdout and stderr to the sandbox with rotation, and
//! records the command's exit. See the parent module's docs.
//!
//! This runs in a single-threaded process forked by the launcher (or by `supervise`): the
//! order of the steps and their error handling are part of the contract.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::seccomp::{self, Seccomp};
use super::{
    EXIT_FILE, EXITED_LINE, HostPid, NETNS_LINE, NETNS_WAIT, SPEC_FILE, SupervisorError, TaskSpec,
    format_exit, nix_sys, parse_capabilities, rlimit_resource, sys, wait_status,
};
use crate::checkpoint;
use crate::containerizer::ExitStatus;

/// The task's supervisor and init: pid 1 of a fresh pid namespace, stdout the launch pipe,
/// stderr its log; see the module docs. Returns the process's exit code.
pub(super) fn init_main(run_dir: &Path) -> u8 {
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

const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The namespaces of a task's init that do not depend on the task (pid 1 of a fresh pid
/// namespace calls it): new mount, uts and ipc namespaces, every mount with `propagation`
/// (nothing propagates back to the host; `MS_SLAVE` until [`make_mounts_private`] in a spare),
/// a `/proc` of this pid namespace and a private `/dev/shm`.
pub(super) fn enter_namespaces(propagation: MsFlags) -> Result<(), SupervisorError> {
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
pub(super) fn make_mounts_private() -> Result<(), SupervisorError> {
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
/// see the module docs. Runs after [`enter_namespaces`], single-threaded; each step runs only
/// when the ones before it succeeded, in this order.
///
/// `busy` (a spare's pipe to the launcher) is closed once the command has started or failed to.
#[expect(
    unsafe_code,
    reason = "sets up the command's privileges through sys's unsafe fn, sound here: the init has one thread"
)]
pub(super) fn task_init(
    run_dir: &Path,
    spec: &TaskSpec,
    busy: Option<OwnedFd>,
) -> Result<u8, SupervisorError> {
    let run_fd = open_run_dir(run_dir)?;
    private_tmp(spec)?;
    set_hostname(spec)?;
    isolate_network(spec, &run_fd)?;
    let creds = credentials(run_dir, spec)?;
    let waited = catch_signals()?;
    let procs = open_cgroup_procs(spec)?;
    let (mut cmd, outputs) = command(spec)?;
    // The cgroups first: joining them needs the privileges dropped next.
    crate::sys::join_cgroups_before_exec_std(&mut cmd, procs);
    // SAFETY: single-threaded: this init is a fork of the single-threaded launcher (or of the
    // `supervise` mode, checked to have one thread) and starts no thread, and `cmd` is spawned
    // here, by this thread.
    unsafe { crate::sys::drop_privileges_before_exec(&mut cmd, creds) };
    let Some(main) = start(cmd, busy) else {
        return Ok(127);
    };
    let status = supervise_command(&run_fd, main, &waited, outputs, spec)?;
    // The exit is recorded and the logs are complete: tell the agent (it may be gone, a
    // broken pipe: then it reads the exit file when it recovers).
    if status.is_some() {
        report_launch(EXITED_LINE.trim_end());
    }
    Ok(exit_code(status))
}

/// Opens `dir` as an `O_PATH` descriptor (closed on exec).
fn open_path(dir: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// The run directory may be covered by the mounts below (a work dir in /tmp): it is kept open
/// and reached through /proc/self/fd (this pid namespace's /proc).
fn open_run_dir(run_dir: &Path) -> Result<OwnedFd, SupervisorError> {
    open_path(run_dir).map_err(nix_sys(format!(
        "open the run directory {}",
        run_dir.display()
    )))
}

/// Mounts the sandbox's `tmp` (made, and owned by the task's user) on `/tmp` and `/var/tmp`;
/// when that covers the sandbox itself (a work dir in /tmp), binds it back on its path.
fn private_tmp(spec: &TaskSpec) -> Result<(), SupervisorError> {
    let tmp = spec.cwd.join("tmp");
    // The sandbox is the task user's: whatever an earlier task of this id left at `tmp` that is
    // not a directory (a link to /etc, say) goes, and the chown never follows a link.
    if fs::symlink_metadata(&tmp).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(&tmp).map_err(sys(format!("remove {}", tmp.display())))?;
    }
    match fs::create_dir(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(sys(format!("create {}", tmp.display()))(e)),
    }
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &tmp,
        Some(nix::unistd::Uid::from_raw(spec.uid)),
        Some(nix::unistd::Gid::from_raw(spec.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(nix_sys(format!("chown {}", tmp.display())))?;
    // The sandbox stays reachable at its path even when /tmp is covered (a work dir in /tmp).
    let sandbox_fd = open_path(&spec.cwd)
        .map_err(nix_sys(format!("open the sandbox {}", spec.cwd.display())))?;
    bind_tmp(&tmp)?;
    if !spec.cwd.is_dir() {
        bind_sandbox_back(spec, &sandbox_fd)?;
    }
    drop(sandbox_fd);
    Ok(())
}

/// Binds `tmp` on `/tmp` (required) and `/var/tmp` (a warning when it fails).
fn bind_tmp(tmp: &Path) -> Result<(), SupervisorError> {
    for target in ["/tmp", "/var/tmp"] {
        // Only real directories (not symlinks); a host without one just lacks it.
        if fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
            let bound = mount(
                Some(tmp),
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
    Ok(())
}

/// Makes the sandbox's path again and binds the sandbox (open as `sandbox_fd`) on it.
fn bind_sandbox_back(spec: &TaskSpec, sandbox_fd: &OwnedFd) -> Result<(), SupervisorError> {
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
    )))
}

/// The task's hostname: its id, cut to 64 bytes.
fn set_hostname(spec: &TaskSpec) -> Result<(), SupervisorError> {
    let hostname: String = spec.task_id.chars().take(64).collect();
    nix::unistd::sethostname(&hostname).map_err(nix_sys("set the hostname"))
}

/// With network isolation: a network namespace of its own, with loopback up. In bridge mode,
/// says so on the launch pipe ([`NETNS_LINE`]) and waits until the agent has wired the
/// namespace (its veth, address and route), which it tells by writing the task's lease file in
/// the run directory (open as `run_fd`), for at most [`NETNS_WAIT`].
fn isolate_network(spec: &TaskSpec, run_fd: &OwnedFd) -> Result<(), SupervisorError> {
    use std::os::fd::AsRawFd as _;
    if !spec.network_isolation && !spec.bridge {
        return Ok(());
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(nix_sys("unshare a network namespace"))?;
    crate::sys::loopback_up().map_err(sys("bring up loopback"))?;
    if spec.bridge {
        report_launch(NETNS_LINE);
        let lease = Path::new("/proc/self/fd")
            .join(run_fd.as_raw_fd().to_string())
            .join(crate::bridge::LEASE_FILE);
        let deadline = std::time::Instant::now() + NETNS_WAIT;
        while !lease.exists() {
            if std::time::Instant::now() > deadline {
                return Err(SupervisorError::Sys {
                    action: format!(
                        "wait for the agent to wire the task's network namespace (no {} after {NETNS_WAIT:?})",
                        crate::bridge::LEASE_FILE
                    ),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Who the command runs as and what it keeps: user, groups, capabilities and rlimits of the
/// spec, and its seccomp filter (built here, before the fork); an unknown capability or rlimit
/// is an error naming the spec.
fn credentials(
    run_dir: &Path,
    spec: &TaskSpec,
) -> Result<crate::sys::Credentials, SupervisorError> {
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
    let seccomp = match spec.seccomp {
        Seccomp::Default => Some(seccomp::build().map_err(|e| SupervisorError::Sys {
            action: "build the task's seccomp filter".to_owned(),
            source: io::Error::other(e.to_string()),
        })?),
        Seccomp::Unconfined => None,
    };
    Ok(crate::sys::Credentials {
        uid: spec.uid,
        gid: spec.gid,
        groups: spec.groups.clone(),
        keep,
        rlimits,
        seccomp,
        user_namespace: spec.user_namespace,
    })
}

/// Blocks the signals the init forwards to the command, and SIGCHLD, to read them from a
/// signalfd; returns that set.
fn catch_signals() -> Result<SigSet, SupervisorError> {
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    let mut waited = forwarded;
    waited.add(Signal::SIGCHLD);
    crate::sys::catch_for_sigwait(&waited).map_err(sys("set up signal forwarding"))?;
    Ok(waited)
}

/// The task's `cgroup.procs` files, open for the command to join before it runs (this init
/// stays outside them).
fn open_cgroup_procs(spec: &TaskSpec) -> Result<Vec<OwnedFd>, SupervisorError> {
    let mut procs: Vec<OwnedFd> = Vec::with_capacity(spec.cgroup_procs.len());
    for file in &spec.cgroup_procs {
        let f = OpenOptions::new()
            .write(true)
            .open(file)
            .map_err(sys(format!("open {}", file.display())))?;
        procs.push(f.into());
    }
    Ok(procs)
}

/// The command: argv, the whole environment, the sandbox as cwd, no stdin, stdout and stderr
/// into pipes whose read ends (stdout's, stderr's) come with it.
fn command(spec: &TaskSpec) -> Result<(Command, [File; 2]), SupervisorError> {
    use std::os::unix::process::CommandExt as _;
    let (stdout_r, stdout_w) = nix::unistd::pipe().map_err(nix_sys("create a pipe"))?;
    let (stderr_r, stderr_w) = nix::unistd::pipe().map_err(nix_sys("create a pipe"))?;
    let mut cmd = Command::new(&spec.program);
    if let Some(argv0) = spec.argv.first() {
        cmd.arg0(argv0);
    }
    cmd.args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout_w))
        .stderr(Stdio::from(stderr_w));
    Ok((cmd, [File::from(stdout_r), File::from(stderr_r)]))
}

/// Starts the command and says so on the launch pipe (`started <pid>`, or `error <errno>`
/// when it cannot start: the agent turns that into a launch failure naming the program and
/// the error); then closes `busy`. Returns the command's pid.
fn start(mut cmd: Command, busy: Option<OwnedFd>) -> Option<Pid> {
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            report_launch(&format!("error {}", e.raw_os_error().unwrap_or(0)));
            drop(busy);
            return None;
        }
    };
    drop(cmd);
    let main = Pid::from_raw(child.id() as i32);
    // Not waited through std: this init reaps every process of the namespace itself.
    drop(child);
    report_launch(&format!("started {}", main.as_raw()));
    drop(busy);
    Some(main)
}

/// The init's one loop, no threads, until the command has ended and its output is drained:
/// forwards signals to the command (`main`), reaps the namespace's processes, copies the
/// command's stdout and stderr (`outputs`) to the sandbox, and records the command's exit in
/// the run directory (`run_fd`). Returns how the command ended.
fn supervise_command(
    run_fd: &OwnedFd,
    main: Pid,
    waited: &SigSet,
    outputs: [File; 2],
    spec: &TaskSpec,
) -> Result<Option<ExitStatus>, SupervisorError> {
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        waited,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(nix_sys("watch signals"))?;
    let [stdout_r, stderr_r] = outputs;
    let mut copiers = [
        Some(LogCopier::new(
            stdout_r,
            spec.stdout.clone(),
            spec.log_max_bytes,
        )),
        Some(LogCopier::new(
            stderr_r,
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
        let Some(timeout) = poll_timeout(drain_until) else {
            break;
        };
        let watch_signals = status.is_none().then_some(&signals);
        let ready = match wait_ready(watch_signals, &copiers, timeout) {
            Ok(ready) => ready,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(nix_sys("wait for signals and output")(e)),
        };
        for (i, copier) in copiers.iter_mut().enumerate() {
            if ready[i + 1] && copier.as_mut().is_some_and(|c| !c.copy_some(&mut buf)) {
                *copier = None;
            }
        }
        if !ready[0] {
            continue;
        }
        if !forward_signals(&signals, main) {
            continue;
        }
        reap(main, &mut status);
        if let Some(status) = status {
            record_exit(run_fd, status)?;
            drain_until = Some(std::time::Instant::now() + Duration::from_millis(500));
        }
    }
    Ok(status)
}

/// How long the loop may wait: forever until the command has ended, then what is left of the
/// drain (rounded up: never a busy loop over the last fraction of a millisecond); `None` once
/// the drain is over.
fn poll_timeout(drain_until: Option<std::time::Instant>) -> Option<nix::poll::PollTimeout> {
    match drain_until {
        None => Some(nix::poll::PollTimeout::NONE),
        Some(until) => {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            Some(
                nix::poll::PollTimeout::try_from(left + Duration::from_millis(1))
                    .unwrap_or(nix::poll::PollTimeout::MAX),
            )
        }
    }
}

/// Polls the signalfd (when given) and the open log pipes; returns which are ready: the
/// signalfd first, then stdout's and stderr's pipes.
fn wait_ready(
    signals: Option<&nix::sys::signalfd::SignalFd>,
    copiers: &[Option<LogCopier>; 2],
    timeout: nix::poll::PollTimeout,
) -> nix::Result<[bool; 3]> {
    use nix::poll::{PollFd, PollFlags};
    use std::os::fd::AsFd as _;
    let mut ready = [false; 3];
    let mut fds = Vec::with_capacity(3);
    let mut which = Vec::with_capacity(3);
    if let Some(signals) = signals {
        fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
        which.push(0);
    }
    for (i, copier) in copiers.iter().enumerate() {
        if let Some(c) = copier {
            fds.push(PollFd::new(c.from.as_fd(), PollFlags::POLLIN));
            which.push(i + 1);
        }
    }
    nix::poll::poll(&mut fds, timeout)?;
    for (fd, i) in fds.iter().zip(which) {
        ready[i] = fd.revents().is_some_and(|r| !r.is_empty());
    }
    Ok(ready)
}

/// Reads the pending signals: forwards each forwarded one to the command (`main`); returns
/// whether a SIGCHLD came (children to reap).
fn forward_signals(signals: &nix::sys::signalfd::SignalFd, main: Pid) -> bool {
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
    reap
}

/// Reaps every process of the namespace that has ended; the command's (`main`) status goes
/// into `status`.
fn reap(main: Pid, status: &mut Option<ExitStatus>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(waited) => {
                if waited.pid() == Some(main) {
                    *status = wait_status(waited);
                }
            }
        }
    }
}

/// Records the command's exit in `<run-dir>/exit`, atomically; the run directory is reached
/// through `run_fd` (it may be covered by the task's mounts).
fn record_exit(run_fd: &OwnedFd, status: ExitStatus) -> Result<(), SupervisorError> {
    let run_dir_now = {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", run_fd.as_raw_fd()))
    };
    checkpoint::write_atomic_volatile(&run_dir_now.join(EXIT_FILE), format_exit(status).as_bytes())
        .map_err(|e| SupervisorError::Sys {
            action: "record the task's exit status".to_owned(),
            source: io::Error::other(e.to_string()),
        })
}

/// The init's own exit code: the command's code, or 128 + its signal; 1 when it has none.
fn exit_code(status: Option<ExitStatus>) -> u8 {
    match status {
        Some(ExitStatus::Code(c)) => u8::try_from(c & 0xff).unwrap_or(1),
        Some(ExitStatus::Signal(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        None => 1,
    }
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
    /// Never through a link: the sandbox is the task user's, who could plant one.
    fn open(path: &Path) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .ok()
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

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
