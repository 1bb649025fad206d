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

use super::{
    EXIT_FILE, EXITED_LINE, HostPid, SPEC_FILE, SupervisorError, TaskSpec, format_exit, nix_sys,
    parse_capabilities, rlimit_resource, sys, wait_status,
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
/// see the module docs. Runs after [`enter_namespaces`].
///
/// `busy` (a spare's pipe to the launcher) is closed once the command has started or failed to.
pub(super) fn task_init(
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
