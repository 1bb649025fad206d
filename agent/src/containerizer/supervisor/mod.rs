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
//!
//! Files: `mod.rs` (what the agent and the supervisor share: the [`TaskSpec`] in the run
//! directory, the exit and pid files, checking capabilities and rlimits), `launcher.rs` (the
//! `launcher` and `supervise` modes, and the spares), `init.rs` (the supervisor and init: its
//! namespaces, the steps that start the command, then the loop that forwards signals, reaps and
//! copies the logs).
//!
//! Everything here but the agent's side of the files runs in a single-threaded process (the
//! launcher, or a process it forked) before the command's `exec`: no threads are started, and
//! the order of the steps is part of the contract (cgroups are joined before privileges are
//! dropped, the exit is recorded before the launch pipe says so).

mod init;
mod launcher;
pub mod seccomp;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use nix::sys::wait::WaitStatus;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::containerizer::ExitStatus;
pub use launcher::{launcher_main, supervise_main};

/// The spec file in the run directory.
pub const SPEC_FILE: &str = "spec.json";
/// The command's final status, written by the supervisor and init.
pub const EXIT_FILE: &str = "exit";
/// The supervisor's own pid.
pub const SUPERVISOR_PID_FILE: &str = "supervisor.pid";
/// What the supervisor writes on the launch pipe once it has recorded the exit.
pub const EXITED_LINE: &str = "exited\n";
/// What a bridge task's init writes on the launch pipe once it is in its own network
/// namespace, before it waits for the agent to wire it.
pub const NETNS_LINE: &str = "netns";
/// How long a bridge task's init waits for the agent to wire its network namespace.
pub const NETNS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// A network namespace that the agent wires to its bridge: the init says
    /// [`NETNS_LINE`] once it is in it and waits for the lease file before it goes on (a spec
    /// without the field, from an older agent, means no bridge).
    #[serde(default)]
    pub bridge: bool,
    /// The `cgroup.procs` files of the task's cgroup.
    pub cgroup_procs: Vec<PathBuf>,
    /// Where stdout and stderr go.
    pub stdout: PathBuf,
    /// Where stderr goes.
    pub stderr: PathBuf,
    /// Each log file is rotated (to `<name>.1`) when it would grow past this many bytes.
    pub log_max_bytes: u64,
    /// The seccomp profile the command runs under (a spec without one gets the default).
    #[serde(default)]
    pub seccomp: seccomp::Seccomp,
    /// A user namespace of the command's own, mapping only `uid` and `gid` (a spec without
    /// the field, from an older agent, runs without one).
    #[serde(default)]
    pub user_namespace: bool,
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

/// The capabilities of `asked` (canonical names) that `allowed` lacks, sorted; empty when the
/// allow-list covers them all.
pub fn not_allowed(asked: &caps::CapsHashSet, allowed: &caps::CapsHashSet) -> Vec<String> {
    let mut missing: Vec<String> = asked.difference(allowed).map(ToString::to_string).collect();
    missing.sort();
    missing
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
    fn a_spec_from_an_older_agent_runs_without_a_user_namespace() {
        let spec = serde_json::json!({
            "task_id": "t", "program": "/bin/true", "argv": ["true"], "env": [],
            "cwd": "/", "uid": 65534, "gid": 65534, "groups": [], "capabilities": [],
            "rlimits": [], "network_isolation": false, "cgroup_procs": [],
            "stdout": "/o", "stderr": "/e", "log_max_bytes": 1,
        });
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SPEC_FILE), spec.to_string()).unwrap();
        let spec = TaskSpec::read(dir.path()).unwrap();
        assert!(!spec.user_namespace);
        assert_eq!(spec.seccomp, seccomp::Seccomp::Default);
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
    fn capabilities_outside_the_allow_list_are_named() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let allowed = parse_capabilities(&names(&["NET_BIND_SERVICE"])).unwrap();
        let asked = parse_capabilities(&names(&["net_bind_service"])).unwrap();
        assert!(not_allowed(&asked, &allowed).is_empty());
        let asked =
            parse_capabilities(&names(&["CAP_SYS_ADMIN", "setuid", "NET_BIND_SERVICE"])).unwrap();
        assert_eq!(
            not_allowed(&asked, &allowed),
            names(&["CAP_SETUID", "CAP_SYS_ADMIN"])
        );
        let nothing = caps::CapsHashSet::new();
        assert_eq!(
            not_allowed(&parse_capabilities(&names(&["SETUID"])).unwrap(), &nothing),
            names(&["CAP_SETUID"])
        );
    }
}
