//! The agent's small syscall layer: what runs in a task's first process between `fork` and
//! `exec` (`pre_exec` hooks), forking and namespaces, pidfds, a loopback ioctl, extended
//! attributes. This is the only module of the agent that does `unsafe` operations; each
//! `unsafe` block says why it is sound (`// SAFETY:`).
//!
//! Code in a `pre_exec` hook runs in the child of a multi-threaded parent, so it may only make
//! async-signal-safe calls: no allocation, no locks, no logging. Everything it needs (open file
//! descriptors, C strings) is prepared by the parent before the fork and moved into the hook.
//!
//! What is sound only in some callers is an `unsafe fn` whose `# Safety` section says what the
//! caller must guarantee: most of them that the process is **single-threaded** (the launcher
//! and the processes it forks, which start no threads), so that a fork copies a process whose
//! every lock is free and process-wide state (namespaces for children, signal dispositions)
//! changes under no other thread's feet.

use std::io;
use std::os::fd::OwnedFd;

/// Makes the child write `0` to each of `procs` (open `cgroup.procs` files) before it execs the
/// command, so the command starts inside its cgroups and every process it forks is accounted
/// and limited from its first instruction. The descriptors are closed on exec (they are opened
/// with `O_CLOEXEC`).
pub fn join_cgroups_before_exec(cmd: &mut tokio::process::Command, procs: Vec<OwnedFd>) {
    let hook = move || -> io::Result<()> {
        for fd in &procs {
            // write(2) is async-signal-safe; "0" means the writing process.
            nix::unistd::write(fd, b"0").map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        }
        Ok(())
    };
    // SAFETY: the hook only calls write(2) on descriptors it owns and builds an io::Error from a
    // raw errno (no allocation), both async-signal-safe; it touches no state shared with the
    // parent's other threads.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Like [`join_cgroups_before_exec`], for a `std` command started by a single-threaded
/// process (the task's init).
pub fn join_cgroups_before_exec_std(cmd: &mut std::process::Command, procs: Vec<OwnedFd>) {
    use std::os::unix::process::CommandExt as _;
    let hook = move || -> io::Result<()> {
        for fd in &procs {
            nix::unistd::write(fd, b"0").map_err(os_err)?;
        }
        Ok(())
    };
    // SAFETY: the hook only calls write(2) on descriptors it owns and builds an io::Error from a
    // raw errno, both async-signal-safe; it touches no state shared with the parent.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Moves the calling process's future children into a new pid namespace (the first becomes
/// its init).
///
/// # Safety
///
/// The calling process must be single-threaded (the launcher, or the `supervise` mode): every
/// child forked from now on, by any thread, lands in the new namespace, whose first child is
/// its init and whose end makes further forks fail.
pub unsafe fn unshare_pid_namespace() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Puts the calling process's future children back into the pid namespace `ns` (an open
/// `/proc/self/ns/pid` of this process), after [`unshare_pid_namespace`] and a fork.
///
/// # Safety
///
/// As for [`unshare_pid_namespace`]: the calling process must be single-threaded, since the
/// namespace of every child it forks from now on, by any thread, changes.
pub unsafe fn set_pid_namespace_for_children(ns: &std::fs::File) -> io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWPID).map_err(os_err)
}

/// Who the task's command runs as and what it keeps.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The capabilities kept; every other one is dropped from every set, bounding included.
    pub keep: caps::CapsHashSet,
    /// Resource limits (soft = hard).
    pub rlimits: Vec<(nix::sys::resource::Resource, u64)>,
    /// A seccomp filter, built before the fork, installed last before exec.
    pub seccomp: Option<seccompiler::BpfProgram>,
    /// Run the command in a user namespace of its own that maps only `uid` and `gid` (to
    /// themselves): root is not mapped in it, and the capabilities it has there are dropped.
    /// Only for a non-root user that keeps no capabilities (those would then apply to the
    /// task's own namespace only).
    pub user_namespace: bool,
}

/// The `uid_map` and `gid_map` lines of a user namespace that maps only `uid` and `gid`.
pub struct IdMaps {
    uid_map: String,
    gid_map: String,
}

impl IdMaps {
    /// Maps `uid` and `gid` to themselves, nothing else.
    pub fn identity(uid: u32, gid: u32) -> Self {
        Self {
            uid_map: format!("{uid} {uid} 1"),
            gid_map: format!("{gid} {gid} 1"),
        }
    }
}

/// Writes `data` to `path` with open(2) and write(2) (async-signal-safe: the path is short, so
/// nix copies it on the stack).
fn write_proc_file(path: &str, data: &[u8]) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        path,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(os_err)?;
    let written = nix::unistd::write(&fd, data).map_err(os_err)?;
    if written != data.len() {
        return Err(io::Error::from_raw_os_error(nix::libc::EIO));
    }
    Ok(())
}

/// Moves the calling process into a new user namespace that maps only its own uid and gid
/// (`maps`, which must be its effective ids: an unprivileged process may map only those):
/// dumpable again, unshare(2), `setgroups` denied, then the two maps. Async-signal-safe.
fn enter_own_user_namespace(maps: &IdMaps) -> io::Result<()> {
    // setuid(2) away from root made the process non-dumpable, which leaves its /proc files
    // root's: it could not write its own maps. exec makes it dumpable again anyway.
    nix::sys::prctl::set_dumpable(true).map_err(os_err)?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(os_err)?;
    write_proc_file("/proc/self/setgroups", b"deny")?;
    write_proc_file("/proc/self/uid_map", maps.uid_map.as_bytes())?;
    write_proc_file("/proc/self/gid_map", maps.gid_map.as_bytes())
}

/// Whether this host lets a process that dropped to `uid`/`gid` enter a user namespace of its
/// own (kernels or sysctls may forbid it: `user.max_user_namespaces=0`, Debian's
/// `kernel.unprivileged_userns_clone=0`, Ubuntu's AppArmor restriction, a seccomp profile
/// around the agent): runs `program` (like `/bin/true`) as `uid` in one, as a task would.
pub fn probe_user_namespace(program: &std::path::Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let maps = IdMaps::identity(uid, gid);
    let mut cmd = std::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let hook = move || -> io::Result<()> {
        use nix::unistd::{Gid, Uid};
        nix::unistd::setgroups(&[]).map_err(os_err)?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(os_err)?;
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(os_err)?;
        enter_own_user_namespace(&maps)
    };
    // SAFETY: the hook makes only async-signal-safe system calls (setgroups with no groups,
    // setgid, setuid, unshare, open and write of short /proc paths with data prepared before
    // the fork) and allocates nothing; it changes only the child's own credentials.
    unsafe {
        cmd.pre_exec(hook);
    }
    let status = cmd.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} exited with {status}",
            program.display()
        )))
    }
}

fn os_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn caps_err(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Makes the child of `cmd` switch to `creds` before it execs: supplementary groups, group,
/// user; capabilities dropped to `creds.keep` (also in the bounding set, and raised as ambient
/// so a non-root user keeps them across exec); no_new_privs; rlimits; with
/// `creds.user_namespace`, a user namespace of its own mapping only its uid and gid; then the
/// seccomp filter, the last thing before exec (it may deny calls the steps before it make).
///
/// # Safety
///
/// `cmd` must be spawned by a **single-threaded** process (the task's init): the hook
/// allocates and calls into libc between fork and exec, which is sound only when no other
/// thread can have held a lock (the allocator's among them) at the fork.
pub unsafe fn drop_privileges_before_exec(cmd: &mut std::process::Command, creds: Credentials) {
    use std::os::unix::process::CommandExt as _;
    let maps = (creds.user_namespace && creds.uid != 0 && creds.keep.is_empty())
        .then(|| IdMaps::identity(creds.uid, creds.gid));
    let hook = move || -> io::Result<()> {
        use caps::CapSet;
        use nix::sys::signal::{SigHandler, SigSet, Signal, signal};
        use nix::unistd::{Gid, Uid};
        // The init blocks the signals it forwards: the command starts with none blocked, and
        // with SIGPIPE at its default action (Rust ignores it in its own processes).
        SigSet::empty().thread_set_mask().map_err(os_err)?;
        // SAFETY: setting a default disposition installs no handler; async-signal-safe.
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map_err(os_err)?;
        if !creds.keep.is_empty() && creds.uid != 0 {
            nix::sys::prctl::set_keepcaps(true).map_err(os_err)?;
        }
        for cap in caps::all() {
            if !creds.keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
            }
        }
        let groups: Vec<Gid> = creds.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(os_err)?;
        nix::unistd::setgid(Gid::from_raw(creds.gid)).map_err(os_err)?;
        nix::unistd::setuid(Uid::from_raw(creds.uid)).map_err(os_err)?;
        caps::set(None, CapSet::Permitted, &creds.keep).map_err(caps_err)?;
        caps::set(None, CapSet::Effective, &creds.keep).map_err(caps_err)?;
        caps::set(None, CapSet::Inheritable, &creds.keep).map_err(caps_err)?;
        caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
        for cap in &creds.keep {
            caps::raise(None, CapSet::Ambient, *cap).map_err(caps_err)?;
        }
        nix::sys::prctl::set_no_new_privs().map_err(os_err)?;
        for (resource, value) in &creds.rlimits {
            nix::sys::resource::setrlimit(*resource, *value, *value).map_err(os_err)?;
        }
        if let Some(maps) = &maps {
            enter_own_user_namespace(maps)?;
            // The new namespace gave every capability in it: none is kept (the task keeps
            // none), so that nothing, not even a file capability, is had there after exec.
            for cap in caps::all() {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
            }
            for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
                caps::clear(None, set).map_err(caps_err)?;
            }
        }
        if let Some(filter) = &creds.seccomp {
            seccompiler::apply_filter(filter).map_err(|e| match e {
                seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
                other => io::Error::other(other.to_string()),
            })?;
        }
        Ok(())
    };
    // SAFETY: the caller guarantees a single-threaded parent (this function's precondition), so
    // the hook's allocations and libc calls cannot deadlock on a lock held by another thread at
    // fork time; it changes only the child's own credentials.
    unsafe {
        cmd.pre_exec(hook);
    }
}

extern "C" fn forward_marker(_: nix::libc::c_int) {}

/// Installs a (never-run) handler for each signal so that a pid namespace's init is not immune
/// to them (the kernel drops signals with a default action sent to a namespace's init), and
/// blocks them, so the caller collects them with `sigwait`.
pub fn catch_for_sigwait(signals: &nix::sys::signal::SigSet) -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(forward_marker),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in signals.iter() {
        // SAFETY: the handler does nothing (it is async-signal-safe), and the signals are
        // blocked right after, so it never even runs.
        unsafe { sigaction(signal, &action) }.map_err(os_err)?;
    }
    signals.thread_block().map_err(os_err)
}

/// Brings the loopback interface up (in a fresh network namespace it starts down).
pub fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd as _;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(os_err)?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as nix::libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`, which lives across
    // the call; the socket is open.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS reads `req`.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited, and immune to pid
/// reuse once open.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nothing is
    // borrowed.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with the tokio reactor, to await the process's exit.
pub fn watch_pidfd(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same pidfd for the AsyncFd's whole life, and as_raw_fd never changes.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| io::Error::other(e.to_string()))
}

/// Registers a non-blocking socket with the tokio reactor, for reading and writing.
pub fn watch_socket(socket: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same socket for the AsyncFd's whole life, and as_raw_fd never changes.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            socket,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }
    .map_err(|e| io::Error::other(e.to_string()))
}

/// Takes ownership of a descriptor received with `SCM_RIGHTS`.
///
/// # Safety
///
/// `fd` must be open and owned by nothing else in this process (a descriptor the kernel just
/// installed for a received message is), and must not be closed elsewhere afterwards.
pub unsafe fn own_received_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: the caller guarantees that `fd` is open and that nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether the calling process has exactly one thread (`Threads:` in `/proc/self/status`);
/// false when that cannot be read.
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

/// Forks the (single-threaded) launcher: `None` in the child, the child's pid in the parent.
///
/// # Safety
///
/// The calling process must be single-threaded (the launcher, or the `supervise` mode): the
/// child, a copy of the calling thread only, goes on to run any code (allocating, taking
/// locks), which is sound only when no other thread can have held a lock at the fork.
pub unsafe fn fork_supervisor() -> io::Result<Option<nix::unistd::Pid>> {
    // SAFETY: the caller guarantees a single thread (this function's precondition), so the
    // child is a complete copy that may run any code.
    match unsafe { nix::unistd::fork() }.map_err(os_err)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}

/// Ignores SIGCHLD (children are reaped by the kernel) or restores its default.
///
/// # Safety
///
/// The disposition is the whole process's: the calling process must be single-threaded, and
/// nothing else in it may rely on SIGCHLD (while it is ignored, `wait` finds no children: a
/// runtime that reaps its children through SIGCHLD, like tokio's, would break). The launcher
/// and the spares it forks are such processes.
pub unsafe fn set_sigchld(ignore: bool) -> io::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    let handler = if ignore {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    // SAFETY: installs no handler function, only a disposition.
    unsafe { signal(Signal::SIGCHLD, handler) }
        .map(drop)
        .map_err(os_err)
}

/// Gives the memory free in the C allocator's heap back to the kernel (glibc's `malloc_trim`).
/// The agent's one-off work (parsing the kernel's BTF to load its eBPF programs, a burst of
/// launches) leaves tens of MiB free in the heap that would otherwise stay resident. Does
/// nothing with other C libraries (the static musl builds of the tests).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns the allocator's own free pages to the kernel; it takes
    // the allocator's locks as malloc does and has no preconditions.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// The value of the extended attribute `name` of `path`; `None` when it has none (or the file
/// system keeps no extended attributes).
pub fn get_xattr(path: &std::path::Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut value = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel writes at
    // most `value.len()` bytes into `value`, which we own.
    let len = unsafe {
        nix::libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if len < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(nix::libc::ENODATA | nix::libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(value[..len.unsigned_abs()].to_vec()))
}

/// Sets the extended attribute `name` of `path` to `value` (tests mark fake cgroups delegated
/// with it).
#[cfg(test)]
pub fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel reads
    // `value.len()` bytes from `value`, which is borrowed for the call.
    let r = unsafe {
        nix::libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `bpf(2)`'s `BPF_MAP_LOOKUP_BATCH` command (`enum bpf_cmd` in `linux/bpf.h`; Linux 5.6+).
const BPF_MAP_LOOKUP_BATCH: nix::libc::c_long = 24;

/// The `batch` member of `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C, align(8))]
#[derive(Default)]
struct BpfBatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One `BPF_MAP_LOOKUP_BATCH` call on the hash map `map`: reads up to `keys.len() / key_size`
/// entries after `cursor` (`None`: from the start) into `keys` and `values` (`value_stride`
/// bytes each: a per-CPU map's value size rounded up to 8, times the possible CPUs), and
/// writes the next cursor into `next`. Returns how many entries it read and whether the map
/// has more. Buffers too small for one entry are refused (`EINVAL`) before the kernel is
/// called.
pub fn bpf_map_lookup_batch(
    map: std::os::fd::BorrowedFd<'_>,
    cursor: Option<&[u8; 8]>,
    next: &mut [u8; 8],
    (keys, key_size): (&mut [u8], usize),
    (values, value_stride): (&mut [u8], usize),
) -> io::Result<(usize, bool)> {
    use std::os::fd::AsRawFd as _;
    if key_size == 0 || value_stride == 0 {
        return Err(io::Error::from_raw_os_error(nix::libc::EINVAL));
    }
    let capacity = (keys.len() / key_size).min(values.len() / value_stride);
    let count =
        u32::try_from(capacity).map_err(|_| io::Error::from_raw_os_error(nix::libc::EINVAL))?;
    if count == 0 {
        return Err(io::Error::from_raw_os_error(nix::libc::EINVAL));
    }
    let mut attr = BpfBatchAttr {
        in_batch: cursor.map_or(0, |c| c.as_ptr() as u64),
        out_batch: next.as_mut_ptr() as u64,
        map_fd: u32::try_from(map.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(nix::libc::EBADF))?,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        ..BpfBatchAttr::default()
    };
    // SAFETY: `attr` is a properly aligned `bpf_attr` batch member of the size passed; every
    // pointer in it points into a live buffer borrowed for this call (`in_batch` and
    // `out_batch` 8 bytes each, at least the 4 a hash map's cursor takes; `keys` and `values`
    // large enough for `count` entries of the sizes the caller gave, checked above), and the
    // kernel writes no more than `count` entries.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            std::ptr::addr_of_mut!(attr),
            size_of::<BpfBatchAttr>(),
        )
    };
    let read = attr.count.min(count) as usize;
    if ret == 0 {
        return Ok((read, true));
    }
    let err = io::Error::last_os_error();
    // ENOENT: the end of the map, with the last entries (if any) read.
    if err.raw_os_error() == Some(nix::libc::ENOENT) {
        Ok((read, false))
    } else {
        Err(err)
    }
}
