//! cgroups for tasks: one [`CgroupBackend`] trait, two backends.
//!
//! - [`v2::V2Backend`] (pure cgroup v2, the primary target): every controller in one hierarchy.
//! - [`hybrid::HybridBackend`] (v1 controller hierarchies plus the unified v2 hierarchy under
//!   `<cgroup>/unified`): limits are enforced through the v1 `cpu`, `cpuacct`, `memory` and
//!   `pids` controllers (and `freezer` to kill), while the unified hierarchy gives each task its
//!   v2 identity, where eBPF programs attach.
//!
//! [`detect`] picks the backend from the mounts under the cgroup root, places the agent's
//! **root** by its [`RootPlacement`], and logs it.
//!
//! Where the root goes ([`RootPlacement`]), like the tools people already run:
//! - `Auto` (the default): inside the delegated cgroup the agent runs in, when there is one
//!   (a systemd unit or scope with `Delegate=yes`, which systemd marks with a `trusted.delegate`
//!   or `user.delegate` extended attribute); otherwise a top-level cgroup of its own,
//!   `/strata-<hash>`, as Nomad keeps `nomad.slice`. (The agent asks systemd for a delegated
//!   scope first when started from a shell on a systemd host: see [`systemd`].)
//! - `BelowOwn`: below the cgroup the agent was started in (shared development machines, where
//!   nothing may be created elsewhere; the tests pass it).
//! - `TopLevel`, or an explicit path (`--cgroup-root`).
//!
//! Invariants:
//! - The agent manages only its root and never creates, writes or removes anything outside it,
//!   except that it enables controllers in the `cgroup.subtree_control` of the cgroups on the
//!   way down to it from its base (its delegated or own cgroup, or the hierarchy's top) when
//!   they are missing there. It never moves another process, and moves itself only **down**,
//!   into the leaf `<root>/agent`, when its own cgroup is on that way (cgroup v2 enables
//!   controllers only in cgroups without processes of their own).
//! - It never enables a controller in a cgroup that holds processes other than itself; if the
//!   cpu, memory or pids controller cannot reach the task cgroups, setting up fails and says
//!   exactly where and why ([`CgroupError::ControllersUnavailable`]): limits are enforced or
//!   the agent does not isolate with cgroups at all.
//! - A task's cgroup is `<root>/containers/<framework-id>/<task-id>`; its limits are written before
//!   any of its processes is started ([`CgroupBackend::create`]; a cgroup it created is removed
//!   again when writing them fails), and it is removed only once it has no process left
//!   ([`TaskCgroup::destroy`]); the framework level goes with the framework's last task.
//! - Every path is built from the roots given as parameters (the cgroup mount and /proc), so
//!   the code is tested against both real and fake trees.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::discovery::{CgroupMode, cgroup_mode};

pub mod hybrid;
pub mod systemd;
pub mod v2;

pub use hybrid::HybridBackend;
pub use v2::V2Backend;

/// cgroup v2's default cpu.weight; v1's cpu.shares for one cpu.
const V1_SHARES_PER_CPU: f64 = 1024.0;
/// The CFS period used for cpu limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The directory under the root holding the task cgroups (not `tasks`: v1 hierarchies have a
/// `tasks` file in every cgroup).
pub const TASKS_DIR: &str = crate::paths::TASK_CGROUPS_DIR;
/// An empty cgroup under the unified root that never holds a process: the agent keeps its
/// device control program attached there while it runs (see `LinuxContainerizer`).
pub const DEVICE_KEEPER_DIR: &str = "device-keeper";
/// How long [`TaskCgroup::destroy`] waits for the processes to go.
const DESTROY_LIMIT: Duration = Duration::from_secs(10);

/// Errors managing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy the agent can use.
    #[error(
        "cannot isolate tasks with cgroups: {reason}; mount cgroup2 (or the v1 cpu, memory and pids controllers) or run the agent with --isolation none"
    )]
    Unsupported {
        /// What is missing.
        reason: String,
    },
    /// `/proc/self/cgroup` cannot be read or has no line for a hierarchy.
    #[error("cannot find this process's cgroup in {path}: {reason}")]
    OwnCgroup {
        /// The file read.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A cgroup file or directory operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "write 100 to".
        action: String,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Processes were still in a cgroup after the time limit.
    #[error(
        "processes are still in {path} after {limit:?} ({pids:?}): they may be stuck in the kernel; kill them and remove the directory by hand"
    )]
    NotEmpty {
        /// The cgroup.
        path: PathBuf,
        /// How long was waited.
        limit: Duration,
        /// Some of the processes left.
        pids: Vec<i32>,
    },
    /// Controllers a task cgroup needs cannot be enabled down to the agent's root.
    #[error(
        "cannot enforce task limits: the {missing} controller(s) cannot reach {root}: {reasons}; start the agent as a systemd service with Delegate=yes (scripts/install-agent.sh), or with --cgroup-placement top-level to keep tasks in a top-level cgroup of their own, or pass --isolation none to run tasks without limits"
    )]
    ControllersUnavailable {
        /// The agent's root.
        root: PathBuf,
        /// The missing controllers, e.g. "memory, io".
        missing: String,
        /// Where and why enabling them failed.
        reasons: String,
    },
    /// A name cannot be a cgroup directory.
    #[error(
        "{name:?} cannot name a cgroup: use a name without '/', NUL or newline that is not \".\" or \"..\""
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// A framework or task id cannot name a task's cgroup.
    #[error("{0}")]
    InvalidId(#[from] strata_proto::ids::IdError),
}

fn io_err(action: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let action = action.into();
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// The limits of one task's cgroup. `None` leaves the kernel's default (no limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Requested cpus: the task's share of contended cpu (cpu.weight / cpu.shares).
    pub cpus: Option<f64>,
    /// A hard cpu limit in cores (cpu.max / cfs quota).
    pub cpu_limit: Option<f64>,
    /// The hard memory limit in bytes (memory.max / memory.limit_in_bytes); swap is off.
    pub mem_bytes: Option<u64>,
    /// The soft memory limit in bytes (memory.high / memory.soft_limit_in_bytes).
    pub mem_soft_bytes: Option<u64>,
    /// The most processes and threads (pids.max).
    pub pids_max: Option<u64>,
}

/// cpu.shares (v1) for a number of cpus: 1024 per cpu, at least 2 (the kernel's minimum).
pub fn cpu_shares(cpus: f64) -> u64 {
    ((cpus * V1_SHARES_PER_CPU).round() as u64).clamp(2, 262_144)
}

/// cpu.weight (v2) for a number of cpus, converted from [`cpu_shares`] as Kubernetes does
/// (1..=10000), so that weights keep the shares' proportions.
pub fn cpu_weight(cpus: f64) -> u64 {
    let shares = cpu_shares(cpus);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The cfs quota in microseconds per [`CPU_PERIOD_US`] for a cpu limit in cores (at least
/// 1 ms, the kernel's minimum).
pub fn cpu_quota_us(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// Why the kernel ended a task, when a limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOom {
    /// The hard limit in bytes, if one was set.
    pub limit_bytes: Option<u64>,
    /// The peak usage in bytes, if the kernel reports it.
    pub peak_bytes: Option<u64>,
    /// How many processes the OOM killer ended.
    pub oom_kills: u64,
}

/// Cpu accounting of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Total cpu time, microseconds.
    pub usage_us: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time spent throttled, microseconds.
    pub throttled_us: u64,
}

/// A cgroup backend: creates, finds and removes task cgroups below the agent's root.
pub trait CgroupBackend: Send + Sync + fmt::Debug {
    /// Which layout this backend drives.
    fn mode(&self) -> CgroupMode;

    /// The root directories managed, one per hierarchy, for logs.
    fn roots(&self) -> Vec<PathBuf>;

    /// Creates the cgroup `<root>/<rel>` with `limits` written. An existing cgroup of that
    /// name is reused (its limits rewritten).
    fn create(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError>;

    /// The cgroup `<root>/<rel>` if it exists (to re-attach to a task).
    fn open(&self, rel: &Path) -> Option<Box<dyn TaskCgroup>>;

    /// Removes the whole managed subtree after killing whatever runs in it (tests, uninstall).
    fn destroy_root(&self) -> Result<(), CgroupError>;

    /// The root in the unified (v2) hierarchy, if there is one (where eBPF programs attach).
    fn unified_root(&self) -> Option<PathBuf> {
        None
    }
}

/// One task's cgroup (in one or several hierarchies).
pub trait TaskCgroup: Send + Sync + fmt::Debug {
    /// The `cgroup.procs` files a process must write `0` to, to join this cgroup in every
    /// hierarchy (done by the task's first process before it runs the command).
    fn procs_files(&self) -> Vec<PathBuf>;

    /// The cgroup's directory in the unified (v2) hierarchy, if there is one: its identity for
    /// eBPF programs.
    fn unified_dir(&self) -> Option<PathBuf>;

    /// The main directory (the memory hierarchy's on hybrid hosts), for logs.
    fn path(&self) -> PathBuf;

    /// The processes in the cgroup.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;

    /// Sends `signal` to every process in the cgroup.
    fn signal_all(&self, signal: Signal) {
        if let Ok(pids) = self.pids() {
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Kills every process in the cgroup at once (`cgroup.kill`, or freeze and SIGKILL), and
    /// waits until none is left.
    fn kill_all(&self) -> Result<(), CgroupError>;

    /// The OOM kills the kernel made in the cgroup, with its limit and peak usage; `None` when
    /// there were none.
    fn memory_oom(&self) -> Option<MemoryOom>;

    /// Cpu usage and throttling.
    fn cpu_stats(&self) -> Result<CpuStats, CgroupError>;

    /// Kills what is left and removes the cgroup's directories.
    fn destroy(&self) -> Result<(), CgroupError>;

    /// Removes the cgroup's directories at once, without killing or waiting: true when they
    /// are gone, false when one is still busy (processes left or still exiting), and then
    /// [`TaskCgroup::destroy`] finishes the job.
    fn try_remove(&self) -> bool {
        false
    }
}

/// Removes each directory in turn (a missing one counts as removed); false at the first that
/// cannot be removed now. Each removed task directory's framework level goes too once it is
/// empty ([`remove_framework_level`]).
fn remove_dirs_now(dirs: impl IntoIterator<Item = PathBuf>) -> bool {
    dirs.into_iter().all(|dir| match fs::remove_dir(&dir) {
        Ok(()) => {
            remove_framework_level(&dir);
            true
        }
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    })
}

/// Removes the framework level (`<root>/containers/<framework-id>`) above the removed task
/// cgroup `task_dir` when no other task's cgroup is below it, so that no cgroup of a finished
/// framework is left behind. The kernel refuses to remove a cgroup that has children (EBUSY),
/// so this is tried after every task's removal and fails harmlessly while other tasks of the
/// framework exist; a launch that finds the level removed under it makes it again
/// ([`create_again_if_level_removed`]).
fn remove_framework_level(task_dir: &Path) {
    let Some(level) = task_dir.parent() else {
        return;
    };
    if level.parent().and_then(Path::file_name) != Some(std::ffi::OsStr::new(TASKS_DIR)) {
        return;
    }
    match fs::remove_dir(level) {
        Ok(()) => {
            tracing::debug!(cgroup = %level.display(), "framework cgroup level removed with its last task")
        }
        Err(e) => {
            tracing::trace!(cgroup = %level.display(), error = %e, "framework cgroup level kept")
        }
    }
}

/// Runs `create` (a task cgroup's creation) and, when it failed because the framework level
/// above one of `task_dirs` was removed meanwhile by the teardown of the framework's last
/// other task, runs it again (at most twice more).
fn create_again_if_level_removed<T>(
    task_dirs: &[PathBuf],
    mut create: impl FnMut() -> Result<T, CgroupError>,
) -> Result<T, CgroupError> {
    let mut tries = 0;
    loop {
        match create() {
            Err(e)
                if tries < 2
                    && task_dirs
                        .iter()
                        .any(|dir| dir.parent().is_some_and(|level| !level.is_dir())) =>
            {
                tracing::debug!(error = %e, "a task cgroup's framework level was removed while it was made; making it again");
                tries += 1;
            }
            other => return other,
        }
    }
}

/// How the agent places its root when no path is configured (`--cgroup-placement`); see the
/// module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The delegated cgroup the agent runs in, else a top-level cgroup.
    #[default]
    Auto,
    /// Below the cgroup the agent was started in.
    BelowOwn,
    /// A top-level cgroup.
    TopLevel,
}

impl Placement {
    /// The flag's values.
    pub const NAMES: [&'static str; 3] = ["auto", "below-own", "top-level"];

    /// `auto`, `below-own` or `top-level`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "below-own" => Ok(Self::BelowOwn),
            "top-level" => Ok(Self::TopLevel),
            other => Err(format!(
                "unknown cgroup placement {other:?}: use auto, below-own or top-level"
            )),
        }
    }

    /// The flag's value for this placement.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Where the agent's cgroup root is; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPlacement {
    /// `<delegated cgroup>/<name>` when the agent runs in (or below) a delegated cgroup, else
    /// `/<name>` at the top of each hierarchy.
    Auto(String),
    /// `<own cgroup>/<name>` in each hierarchy.
    BelowOwn(String),
    /// `/<name>` at the top of each hierarchy.
    TopLevel(String),
    /// This path relative to each hierarchy's mount, e.g. `/strata.slice/agent` (not the
    /// hierarchy's root itself).
    Path(PathBuf),
}

impl RootPlacement {
    /// The placement's name in flags and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auto(_) => "auto",
            Self::BelowOwn(_) => "below-own",
            Self::TopLevel(_) => "top-level",
            Self::Path(_) => "path",
        }
    }
}

/// Detects the cgroup layout under `cgroup_root` (usually `/sys/fs/cgroup`), reading this
/// process's cgroups from `<proc_root>/self/cgroup`, and sets up the agent's root there.
pub fn detect(
    proc_root: &Path,
    cgroup_root: &Path,
    placement: &RootPlacement,
) -> Result<Box<dyn CgroupBackend>, CgroupError> {
    let mode = cgroup_mode(cgroup_root);
    let own = OwnCgroups::read(proc_root)?;
    let unified_mount = match mode {
        CgroupMode::Hybrid => cgroup_root.join("unified"),
        _ => cgroup_root.to_path_buf(),
    };
    let delegated = own
        .unified()
        .and_then(|own| systemd::delegated_ancestor(&unified_mount, own));
    if let Some(path) = &delegated {
        tracing::debug!(delegated = %path, "the agent runs in a delegated cgroup");
    }
    let host = Host {
        proc_root,
        own: &own,
        delegated: delegated.as_deref(),
    };
    let backend: Box<dyn CgroupBackend> = match mode {
        CgroupMode::V2 => Box::new(V2Backend::new(cgroup_root, &host, placement)?),
        CgroupMode::Hybrid => Box::new(HybridBackend::new(cgroup_root, &host, placement)?),
        CgroupMode::V1 => {
            return Err(CgroupError::Unsupported {
                reason: format!(
                    "{} has only cgroup v1 hierarchies, no unified (v2) one",
                    cgroup_root.display()
                ),
            });
        }
        CgroupMode::None => {
            return Err(CgroupError::Unsupported {
                reason: format!(
                    "no cgroup hierarchy is mounted at {}",
                    cgroup_root.display()
                ),
            });
        }
    };
    tracing::info!(cgroup_mode = mode.as_str(), placement = placement.kind(), roots = ?backend.roots(), "task cgroups set up");
    Ok(backend)
}

/// What [`detect`] learned about this process's place in the hierarchies.
#[derive(Debug, Clone, Copy)]
struct Host<'a> {
    proc_root: &'a Path,
    own: &'a OwnCgroups,
    /// The nearest delegated cgroup at or above the agent's own (a unified-hierarchy path).
    delegated: Option<&'a str>,
}

/// Checks that `name` can be one cgroup directory name.
pub fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0', '\n']) {
        return Err(CgroupError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// `containers/<framework-id>/<task-id>`: a task's cgroup below the root, built by
/// [`crate::paths`] after checking both ids.
pub fn task_rel(framework_id: &str, task_id: &str) -> Result<PathBuf, CgroupError> {
    Ok(crate::paths::task_cgroup(framework_id, task_id)?)
}

/// This process's cgroups, from `/proc/self/cgroup`.
#[derive(Debug, Clone)]
struct OwnCgroups {
    /// (controllers, path) per line; the unified line has no controllers.
    lines: Vec<(Vec<String>, String)>,
}

impl OwnCgroups {
    fn read(proc_root: &Path) -> Result<Self, CgroupError> {
        let path = proc_root.join("self").join("cgroup");
        let text = fs::read_to_string(&path).map_err(|e| CgroupError::OwnCgroup {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut lines = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(cg)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            lines.push((controllers, cg.to_owned()));
        }
        Ok(Self { lines })
    }

    fn unified(&self) -> Option<&str> {
        self.lines
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.as_str())
    }

    /// The path and the full controller list of the v1 hierarchy holding `controller`.
    fn v1(&self, controller: &str) -> Option<(&[String], &str)> {
        self.lines
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(c, p)| (c.as_slice(), p.as_str()))
    }
}

/// `<mount>/<relative>` for a cgroup path like `/a/b`.
fn under(mount: &Path, cgroup_path: &str) -> PathBuf {
    let mut dir = mount.to_path_buf();
    for part in cgroup_path.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
    }
    dir
}

/// Where the agent's root is in one hierarchy mounted at `mount`, where this process is at
/// `own`: the root, and its **base**, the cgroup from which controllers are enabled down to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    base: PathBuf,
    root: PathBuf,
}

fn root_in(
    mount: &Path,
    own: &str,
    delegated: Option<&str>,
    placement: &RootPlacement,
) -> Result<Placed, CgroupError> {
    let placed = |base: PathBuf, name: &str| -> Result<Placed, CgroupError> {
        check_name(name)?;
        Ok(Placed {
            root: base.join(name),
            base,
        })
    };
    match placement {
        RootPlacement::Auto(name) => match delegated {
            Some(delegated) => placed(under(mount, delegated), name),
            None => placed(mount.to_path_buf(), name),
        },
        RootPlacement::BelowOwn(name) => placed(under(mount, own), name),
        RootPlacement::TopLevel(name) => placed(mount.to_path_buf(), name),
        RootPlacement::Path(path) => {
            let root = under(mount, &path.to_string_lossy());
            let base = root.parent().map(Path::to_path_buf);
            match base {
                Some(base) if root != mount && base.starts_with(mount) => Ok(Placed { base, root }),
                _ => Err(CgroupError::Unsupported {
                    reason: format!(
                        "the configured cgroup root {} is the hierarchy's root: name a cgroup below it, like /strata",
                        root.display()
                    ),
                }),
            }
        }
    }
}

/// The names of the processes `pids` (from `<proc>/<pid>/comm`), for messages.
fn describe_pids(proc_root: &Path, pids: &[i32]) -> String {
    pids.iter()
        .take(8)
        .map(|pid| {
            let comm = fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_default();
            if comm.is_empty() {
                pid.to_string()
            } else {
                format!("{pid} ({comm})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
        + if pids.len() > 8 { ", ..." } else { "" }
}

fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(format!("write {value:?} to"), path))
}

/// Writes a value the kernel may not offer (no such file); other errors are errors.
fn write_optional(path: &Path, value: &str) -> Result<(), CgroupError> {
    match fs::write(path, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "cgroup file not offered by this kernel; skipped");
            Ok(())
        }
        other => other.map_err(io_err(format!("write {value:?} to"), path)),
    }
}

fn read_pids(procs: &Path) -> Result<Vec<i32>, CgroupError> {
    match fs::read_to_string(procs) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", procs)(e)),
    }
}

/// A flat-keyed value (`key value` lines) of a cgroup file.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sleeps a little longer at each call: 50 µs, doubling up to 5 ms (waits for the kernel to
/// finish with exiting processes are usually short).
fn backoff(attempt: &mut u32) {
    let micros = (50u64 << (*attempt).min(7)).min(5000);
    *attempt += 1;
    thread::sleep(Duration::from_micros(micros));
}

/// Removes a cgroup directory, retrying while the kernel still counts exiting processes.
fn rmdir_when_empty(dir: &Path, procs: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + DESTROY_LIMIT;
    let mut attempt = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                let pids = read_pids(procs).unwrap_or_default();
                if pids.is_empty() {
                    return Err(io_err("remove", dir)(e));
                }
                return Err(CgroupError::NotEmpty {
                    path: dir.to_path_buf(),
                    limit: DESTROY_LIMIT,
                    pids,
                });
            }
            Err(_) => backoff(&mut attempt),
        }
    }
}

/// Removes `dir` and every cgroup below it, deepest first, killing what runs there.
fn remove_tree(dir: &Path, kill_file: Option<&str>) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path(), kill_file)?;
        }
    }
    let procs = dir.join("cgroup.procs");
    if let Some(kill_file) = kill_file
        && fs::write(dir.join(kill_file), "1").is_ok()
    {
    } else {
        for pid in read_pids(&procs)? {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    rmdir_when_empty(dir, &procs)
}

/// Waits until `procs` lists no process, at most [`DESTROY_LIMIT`].
fn wait_empty(dir: &Path, procs: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + DESTROY_LIMIT;
    let mut attempt = 0;
    loop {
        let pids = read_pids(procs)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::NotEmpty {
                path: dir.to_path_buf(),
                limit: DESTROY_LIMIT,
                pids,
            });
        }
        backoff(&mut attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framework_level_goes_with_its_last_task_and_a_launch_makes_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let containers = dir.path().join("root").join(TASKS_DIR);
        let (t1, t2) = (containers.join("fw/t1"), containers.join("fw/t2"));
        fs::create_dir_all(&t1).unwrap();
        fs::create_dir_all(&t2).unwrap();
        // Another task of the framework is there: the level stays.
        assert!(remove_dirs_now([t1.clone()]));
        assert!(containers.join("fw").is_dir());
        // The last one: the level goes, the tasks' directory stays.
        assert!(remove_dirs_now([t2.clone()]));
        assert!(!containers.join("fw").exists());
        assert!(containers.is_dir());
        // Nothing above a directory that is not a task's is touched.
        let other = dir.path().join("root/elsewhere/x");
        fs::create_dir_all(&other).unwrap();
        fs::remove_dir(&other).unwrap();
        remove_framework_level(&other);
        assert!(dir.path().join("root/elsewhere").is_dir());

        // A launch whose level was removed under it tries again; other failures are final.
        let mut calls = 0;
        let made = create_again_if_level_removed(std::slice::from_ref(&t1), || {
            calls += 1;
            if calls == 1 {
                return Err(io_err("create", &t1)(io::ErrorKind::NotFound.into()));
            }
            fs::create_dir_all(&t1).map_err(io_err("create", &t1))
        });
        assert!(made.is_ok());
        assert_eq!(calls, 2);
        let mut calls = 0;
        let failed: Result<(), _> =
            create_again_if_level_removed(std::slice::from_ref(&t1), || {
                calls += 1;
                Err(io_err("write", &t1)(io::ErrorKind::PermissionDenied.into()))
            });
        assert!(failed.is_err());
        assert_eq!(calls, 1, "the level is there: no second try");
    }

    fn write_file(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn cpu_conversions_keep_proportions() {
        assert_eq!(cpu_shares(1.0), 1024);
        assert_eq!(cpu_shares(0.0), 2);
        assert_eq!(cpu_weight(0.0), 1);
        assert_eq!(cpu_weight(256.0), 10_000);
        let (w1, w3) = (cpu_weight(1.0) as f64, cpu_weight(3.0) as f64);
        assert!((w3 / w1 - 3.0).abs() < 0.1, "{w1} {w3}");
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(0.0), 1000);
    }

    #[test]
    fn names_that_are_not_directories_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            task_rel("fw", "t-1").unwrap(),
            Path::new("containers/fw/t-1").to_path_buf()
        );
    }

    #[test]
    fn a_hybrid_tree_gets_limits_under_the_own_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let cg = dir.path().join("cg");
        write_file(
            &proc_root.join("self/cgroup"),
            "4:memory:/m/x\n3:pids:/\n2:cpu,cpuacct:/\n6:freezer:/\n0::/\n",
        );
        for c in ["memory", "pids", "cpu,cpuacct", "freezer", "unified"] {
            write_file(&cg.join(c).join("cgroup.procs"), "");
        }
        write_file(&cg.join("unified/cgroup.controllers"), "");
        let backend = detect(
            &proc_root,
            &cg,
            &RootPlacement::BelowOwn("strata-t".to_owned()),
        )
        .unwrap();
        assert_eq!(backend.mode(), CgroupMode::Hybrid);
        assert!(cg.join("memory/m/x/strata-t/containers").is_dir());
        assert!(cg.join("cpu,cpuacct/strata-t/containers").is_dir());
        let limits = Limits {
            cpus: Some(0.5),
            cpu_limit: Some(1.5),
            mem_bytes: Some(64 << 20),
            mem_soft_bytes: None,
            pids_max: Some(100),
        };
        let task = backend
            .create(Path::new("containers/fw/t"), &limits)
            .unwrap();
        let t = cg.join("cpu,cpuacct/strata-t/containers/fw/t");
        assert_eq!(fs::read_to_string(t.join("cpu.shares")).unwrap(), "512");
        assert_eq!(
            fs::read_to_string(t.join("cpu.cfs_quota_us")).unwrap(),
            "150000"
        );
        let m = cg.join("memory/m/x/strata-t/containers/fw/t");
        assert_eq!(
            fs::read_to_string(m.join("memory.limit_in_bytes")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(cg.join("pids/strata-t/containers/fw/t/pids.max")).unwrap(),
            "100"
        );
        assert_eq!(task.procs_files().len(), 5);
        assert_eq!(
            task.unified_dir(),
            Some(cg.join("unified/strata-t/containers/fw/t"))
        );
        write_file(
            &m.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        write_file(&m.join("memory.max_usage_in_bytes"), "67108864\n");
        let oom = task.memory_oom().unwrap();
        assert_eq!(oom.peak_bytes, Some(64 << 20));
        assert_eq!(oom.oom_kills, 1);
    }

    /// A fake v2 hierarchy at `<dir>/cg` where this process is at `own`; every cgroup in
    /// `ready` already passes every controller down (a fake tree cannot enable them).
    fn fake_v2(dir: &Path, own: &str, ready: &[&str]) -> (PathBuf, PathBuf) {
        let proc_root = dir.join("proc");
        let cg = dir.join("cg");
        write_file(&proc_root.join("self/cgroup"), &format!("0::{own}\n"));
        write_file(&cg.join("cgroup.controllers"), "cpu memory pids io\n");
        for path in ready {
            write_file(
                &under(&cg, path).join("cgroup.subtree_control"),
                "cpu memory pids io\n",
            );
        }
        (proc_root, cg)
    }

    #[test]
    fn a_configured_root_is_any_cgroup_below_the_hierarchy_root() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, cg) = fake_v2(
            dir.path(),
            "/agent.service",
            &["/", "/other.service", "/other.service/containers"],
        );
        let err = detect(&proc_root, &cg, &RootPlacement::Path(PathBuf::from("/"))).unwrap_err();
        assert!(err.to_string().contains("hierarchy's root"), "{err}");
        let backend = detect(
            &proc_root,
            &cg,
            &RootPlacement::Path(PathBuf::from("/other.service")),
        )
        .unwrap();
        assert_eq!(backend.mode(), CgroupMode::V2);
        assert_eq!(backend.roots(), vec![cg.join("other.service")]);
    }

    #[test]
    fn without_delegation_auto_places_the_root_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, cg) = fake_v2(
            dir.path(),
            "/user.slice/session-1.scope",
            &["/", "/strata-x", "/strata-x/containers"],
        );
        let backend = detect(&proc_root, &cg, &RootPlacement::Auto("strata-x".to_owned())).unwrap();
        assert_eq!(backend.roots(), vec![cg.join("strata-x")]);
        // The agent stays where it was started: its cgroup is not on the way.
        assert!(!cg.join("strata-x/agent").exists());
    }

    #[test]
    fn a_cgroup_shared_with_other_processes_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, cg) = fake_v2(dir.path(), "/shell", &["/"]);
        write_file(&cg.join("shell/cgroup.type"), "domain\n");
        write_file(
            &cg.join("shell/cgroup.procs"),
            &format!("4242\n{}\n", std::process::id()),
        );
        write_file(&proc_root.join("4242/comm"), "bash\n");
        let err = detect(
            &proc_root,
            &cg,
            &RootPlacement::BelowOwn("strata-x".to_owned()),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CgroupError::ControllersUnavailable { .. }),
            "{text}"
        );
        assert!(text.contains("4242 (bash)"), "{text}");
        assert!(text.contains("--cgroup-placement top-level"), "{text}");
        assert!(!cg.join("shell/strata-x").exists(), "left behind");
        assert_eq!(
            fs::read_to_string(cg.join("shell/cgroup.subtree_control")).unwrap_or_default(),
            "",
            "no controller was enabled in a cgroup with other processes"
        );
    }

    #[test]
    fn an_agent_alone_in_its_cgroup_moves_down_into_its_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let (proc_root, cg) = fake_v2(
            dir.path(),
            "/agent.service",
            &[
                "/",
                "/agent.service/strata-x",
                "/agent.service/strata-x/containers",
            ],
        );
        write_file(&cg.join("agent.service/cgroup.type"), "domain\n");
        write_file(&cg.join("agent.service/cgroup.procs"), &format!("{me}\n"));
        let backend = detect(
            &proc_root,
            &cg,
            &RootPlacement::BelowOwn("strata-x".to_owned()),
        )
        .unwrap();
        assert_eq!(backend.roots(), vec![cg.join("agent.service/strata-x")]);
        assert_eq!(
            fs::read_to_string(cg.join("agent.service/strata-x/agent/cgroup.procs")).unwrap(),
            me.to_string()
        );
    }

    #[test]
    fn v1_only_or_nothing_is_unsupported_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        write_file(&proc_root.join("self/cgroup"), "0::/\n");
        let err = detect(
            &proc_root,
            &dir.path().join("none"),
            &RootPlacement::BelowOwn("x".to_owned()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--isolation none"), "{err}");
    }
}
