//! The two ways a task's supervisor and init start: the `launcher` mode (one per agent), which
//! keeps a **spare** forked ahead of time in its fresh namespaces and hands it the next
//! request, and the `supervise <run-dir>` mode, which runs one as its own child. See the
//! parent module's docs.
//!
//! Both run single-threaded (the agent binary enters these modes before it starts any thread,
//! and their entry points check that it did), which is what makes their `fork`s, namespace and
//! signal changes sound; the spares they fork start no thread either.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MsFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;

use super::init::{enter_namespaces, init_main, make_mounts_private, task_init};
use super::{
    EXIT_FILE, EXITED_LINE, HostPid, SupervisorError, TaskSpec, format_exit, host_pid, nix_sys,
    read_exit, sys, wait_status,
};
use crate::checkpoint;

/// How long a spare supervisor waits for a request before it retires.
const SPARE_MAX_IDLE: Duration = Duration::from_secs(10);
/// What a spare tells the launcher when it takes a request (then it closes the pipe once the
/// command has started).
const SPARE_TOOK: &[u8] = b"t";
/// What a spare tells the launcher when it retires unused.
const SPARE_RETIRED: &[u8] = b"r";

/// `strata-agent supervise <run-dir>`; see the module docs. Returns the process's exit code.
/// Refuses to run in a process with other threads (it forks).
pub fn supervise_main(run_dir: &Path) -> u8 {
    match only_thread("supervise").and_then(|()| supervise(run_dir)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata-agent supervise: error: {e}");
            // The agent reads a missing exit file as a lost task, with this log.
            1
        }
    }
}

/// Checks that this process has no other thread, for the `mode` that forks and changes
/// process-wide state.
fn only_thread(mode: &str) -> Result<(), SupervisorError> {
    if crate::sys::single_threaded() {
        return Ok(());
    }
    Err(SupervisorError::Sys {
        action: format!("run the {mode} mode"),
        source: io::Error::other(
            "this process has other threads (or /proc is missing); it forks, so it runs only as a process of its own (strata-agent MODE)",
        ),
    })
}

/// Runs the task's supervisor and init as a child in a pid namespace of its own, waits for
/// it, and records its status when it recorded none. Runs single-threaded (checked by
/// [`supervise_main`]).
#[expect(
    unsafe_code,
    reason = "forks and unshares through sys's unsafe fns, sound here: this process has one thread"
)]
fn supervise(run_dir: &Path) -> Result<(), SupervisorError> {
    // SAFETY: single-threaded: supervise_main checked that this process has one thread, and
    // nothing here starts one.
    unsafe { crate::sys::unshare_pid_namespace() }.map_err(sys("unshare a pid namespace"))?;
    // SAFETY: as above, this process has a single thread.
    let forked = unsafe { crate::sys::fork_supervisor() };
    let init = match forked.map_err(sys("start the task's init"))? {
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
/// Refuses to run in a process with other threads (it forks).
pub fn launcher_main() -> u8 {
    match only_thread("launcher").and_then(|()| launcher()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata-agent launcher: error: {e}");
            1
        }
    }
}

/// The launcher's loop: one spare forked ahead of time, replaced once it has taken a request
/// and started its command, or has retired. Runs single-threaded (checked by
/// [`launcher_main`]).
#[expect(
    unsafe_code,
    reason = "forks, unshares and sets SIGCHLD through sys's unsafe fns, sound here: this process has one thread"
)]
fn launcher() -> Result<(), SupervisorError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    // Supervisors are not waited for here (the agent watches them through pidfds): let the
    // kernel reap them.
    // SAFETY: launcher_main checked that this process has one thread; the launcher starts
    // none, and reaps nothing itself.
    unsafe { crate::sys::set_sigchld(true) }.map_err(sys("ignore SIGCHLD"))?;
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
        // SAFETY: single-threaded (checked by launcher_main; the launcher starts no thread).
        unsafe { crate::sys::unshare_pid_namespace() }.map_err(sys("unshare a pid namespace"))?;
        // SAFETY: single-threaded, as above.
        let forked = unsafe { crate::sys::fork_supervisor() };
        if let Ok(None) = forked {
            drop(busy_r);
            drop(own_pid_ns);
            std::process::exit(i32::from(spare_main(busy_w)));
        }
        drop(busy_w);
        // SAFETY: single-threaded, as above.
        unsafe { crate::sys::set_pid_namespace_for_children(&own_pid_ns) }
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
#[expect(
    unsafe_code,
    reason = "restores SIGCHLD and takes a received descriptor through sys's unsafe fns, sound here"
)]
fn spare_main(busy: OwnedFd) -> u8 {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: a fork of the single-threaded launcher has one thread, and this init reaps its
    // children itself (it needs SIGCHLD back at its default for that).
    let _ = unsafe { crate::sys::set_sigchld(false) };
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
        // SAFETY: the kernel installed `fd` in this process for this message (SCM_RIGHTS, with
        // MSG_CMSG_CLOEXEC); nothing else refers to it, and it is taken once.
        let report = unsafe { crate::sys::own_received_fd(fd) };
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
