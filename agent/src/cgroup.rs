//! cgroups for tasks: one [`CgroupBackend`] trait, two backends.
//!
//! - [`V2Backend`] (pure cgroup v2, the primary target): every controller in one hierarchy.
//! - [`HybridBackend`] (v1 controller hierarchies plus the unified v2 hierarchy under
//!   `<cgroup>/unified`): limits are enforced through the v1 `cpu`, `cpuacct`, `memory` and
//!   `pids` controllers (and `freezer` to kill), while the unified hierarchy gives each task its
//!   v2 identity, where eBPF programs attach.
//!
//! [`detect`] picks the backend from the mounts under the cgroup root and logs it.
//!
//! Invariants:
//! - The agent manages only its **root**: a directory below its own cgroup in each hierarchy
//!   (`<own>/<root_name>`, or a configured path below the hierarchy's mount). It never creates,
//!   writes or removes anything outside that subtree, and never moves a process out of its own
//!   cgroup; on v2, when its own cgroup must have no processes so that controllers can be
//!   enabled below it, it moves itself **down** into the leaf `<root>/agent`.
//! - A task's cgroup is `<root>/containers/<framework-id>/<task-id>`; its limits are written before
//!   any of its processes is started ([`CgroupBackend::create`]), and it is removed only once
//!   it has no process left ([`TaskCgroup::destroy`]).
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

/// cgroup v2's default cpu.weight; v1's cpu.shares for one cpu.
const V1_SHARES_PER_CPU: f64 = 1024.0;
/// The CFS period used for cpu limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The directory under the root holding the task cgroups (not `tasks`: v1 hierarchies have a
/// `tasks` file in every cgroup).
pub const TASKS_DIR: &str = "containers";
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
    /// A name cannot be a cgroup directory.
    #[error(
        "{name:?} cannot name a cgroup: use a name without '/', NUL or newline that is not \".\" or \"..\""
    )]
    InvalidName {
        /// The name.
        name: String,
    },
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
/// cannot be removed now.
fn remove_dirs_now(dirs: impl IntoIterator<Item = PathBuf>) -> bool {
    dirs.into_iter().all(|dir| match fs::remove_dir(&dir) {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    })
}

/// Where the agent's cgroup root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPlacement {
    /// `<own cgroup>/<name>` in each hierarchy.
    BelowOwn(String),
    /// This path relative to each hierarchy's mount, e.g. `/strata.slice/agent`: it must be
    /// the agent's own cgroup or below it.
    Path(PathBuf),
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
    let backend: Box<dyn CgroupBackend> = match mode {
        CgroupMode::V2 => Box::new(V2Backend::new(cgroup_root, &own, placement)?),
        CgroupMode::Hybrid => Box::new(HybridBackend::new(cgroup_root, &own, placement)?),
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
    tracing::info!(cgroup_mode = mode.as_str(), roots = ?backend.roots(), "task cgroups set up");
    Ok(backend)
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

/// `containers/<framework-id>/<task-id>`: a task's cgroup below the root.
pub fn task_rel(framework_id: &str, task_id: &str) -> Result<PathBuf, CgroupError> {
    check_name(framework_id)?;
    check_name(task_id)?;
    Ok(Path::new(TASKS_DIR).join(framework_id).join(task_id))
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

/// The root directory in one hierarchy mounted at `mount`, where this process is at `own`.
fn root_in(mount: &Path, own: &str, placement: &RootPlacement) -> Result<PathBuf, CgroupError> {
    let own_dir = under(mount, own);
    match placement {
        RootPlacement::BelowOwn(name) => {
            check_name(name)?;
            Ok(own_dir.join(name))
        }
        RootPlacement::Path(path) => {
            let dir = under(mount, &path.to_string_lossy());
            if !dir.starts_with(&own_dir) {
                return Err(CgroupError::Unsupported {
                    reason: format!(
                        "the configured cgroup root {} is not this agent's own cgroup {} or below it (the agent manages only its own subtree)",
                        dir.display(),
                        own_dir.display()
                    ),
                });
            }
            Ok(dir)
        }
    }
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

// ----- v2 -----

/// The controllers the agent enables for task cgroups on v2, when the kernel offers them.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// Pure cgroup v2: every controller in the hierarchy mounted at the cgroup root.
#[derive(Debug)]
pub struct V2Backend {
    root: PathBuf,
    /// The controllers enabled for the tasks.
    controllers: Vec<String>,
}

impl V2Backend {
    fn new(mount: &Path, own: &OwnCgroups, placement: &RootPlacement) -> Result<Self, CgroupError> {
        let own_path = own.unified().ok_or_else(|| CgroupError::OwnCgroup {
            path: PathBuf::from("/proc/self/cgroup"),
            reason: "it has no unified (0::) line".to_owned(),
        })?;
        let own_dir = under(mount, own_path);
        let root = root_in(mount, own_path, placement)?;
        mkdir_all(&root.join(TASKS_DIR))?;
        let offered = fs::read_to_string(own_dir.join("cgroup.controllers"))
            .map_err(io_err("read", &own_dir.join("cgroup.controllers")))?;
        let wanted: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| offered.split_whitespace().any(|o| o == **c))
            .map(|c| (*c).to_owned())
            .collect();
        let backend = Self {
            root,
            controllers: wanted,
        };
        backend.enable_controllers(&own_dir)?;
        Ok(backend)
    }

    /// Enables the controllers in every `cgroup.subtree_control` from the agent's own cgroup
    /// down to `<root>/containers`. When the own cgroup (or the root) still holds processes (v2's
    /// no-internal-process rule), the agent moves itself down into `<root>/agent` and tries again.
    fn enable_controllers(&self, own_dir: &Path) -> Result<(), CgroupError> {
        let mut chain = vec![self.root.join(TASKS_DIR)];
        let mut dir = self.root.clone();
        loop {
            chain.push(dir.clone());
            if dir == own_dir || !dir.starts_with(own_dir) {
                break;
            }
            if !dir.pop() {
                break;
            }
        }
        chain.reverse();
        let mut moved = false;
        for dir in &chain {
            let control = dir.join("cgroup.subtree_control");
            for c in &self.controllers {
                let value = format!("+{c}");
                match fs::write(&control, &value) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && !moved => {
                        // Processes in this cgroup: move the agent down into its leaf.
                        let leaf = self.root.join("agent");
                        mkdir_all(&leaf)?;
                        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
                        tracing::info!(leaf = %leaf.display(), "moved the agent into its own leaf cgroup");
                        moved = true;
                        if let Err(e) = fs::write(&control, &value) {
                            tracing::warn!(cgroup = %dir.display(), controller = %c, error = %e,
                                "cannot enable a cgroup controller (other processes share the agent's cgroup?): its limits are not enforced");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), controller = %c, error = %e,
                            "cannot enable a cgroup controller: its limits are not enforced");
                    }
                }
            }
        }
        Ok(())
    }
}

impl CgroupBackend for V2Backend {
    fn mode(&self) -> CgroupMode {
        CgroupMode::V2
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }

    fn create(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError> {
        let dir = self.root.join(rel);
        // Intermediate levels (containers/<framework>) pass the controllers down.
        let mut parent = self.root.join(TASKS_DIR);
        if let Some(parent_rel) = rel.parent() {
            for part in parent_rel.components().skip(1) {
                parent.push(part);
                if !parent.is_dir() {
                    mkdir_all(&parent)?;
                    for c in &self.controllers {
                        let _ = fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"));
                    }
                }
            }
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let cg = V2Cgroup { dir };
        cg.apply(limits)?;
        Ok(Box::new(cg))
    }

    fn open(&self, rel: &Path) -> Option<Box<dyn TaskCgroup>> {
        let dir = self.root.join(rel);
        dir.join("cgroup.procs")
            .is_file()
            .then(|| Box::new(V2Cgroup { dir }) as Box<dyn TaskCgroup>)
    }

    fn destroy_root(&self) -> Result<(), CgroupError> {
        // The agent's own leaf is left to the caller: a process cannot leave its cgroup upwards.
        remove_tree(&self.root.join(TASKS_DIR), Some("cgroup.kill"))?;
        remove_tree(&self.root.join(DEVICE_KEEPER_DIR), Some("cgroup.kill"))?;
        let leaf = self.root.join("agent");
        if read_pids(&leaf.join("cgroup.procs"))?.is_empty() {
            let _ = fs::remove_dir(&leaf);
            let _ = fs::remove_dir(&self.root);
        }
        Ok(())
    }

    fn unified_root(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }
}

/// A task's cgroup on a pure v2 host.
#[derive(Debug)]
struct V2Cgroup {
    dir: PathBuf,
}

impl V2Cgroup {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(cpus) = limits.cpus {
            write_optional(&self.file("cpu.weight"), &cpu_weight(cpus).to_string())?;
            // io.weight is 1..=10000 like cpu.weight; 100 is the default.
            write_optional(
                &self.file("io.weight"),
                &format!("default {}", (cpus * 100.0).round().clamp(1.0, 10_000.0)),
            )?;
        }
        let max = limits.cpu_limit.map_or_else(
            || format!("max {CPU_PERIOD_US}"),
            |c| format!("{} {CPU_PERIOD_US}", cpu_quota_us(c)),
        );
        write_optional(&self.file("cpu.max"), &max)?;
        if let Some(soft) = limits.mem_soft_bytes {
            write_optional(&self.file("memory.high"), &soft.to_string())?;
        }
        if let Some(mem) = limits.mem_bytes {
            write_optional(&self.file("memory.max"), &mem.to_string())?;
        }
        write_optional(&self.file("memory.swap.max"), "0")?;
        write_optional(&self.file("memory.oom.group"), "1")?;
        if let Some(pids) = limits.pids_max {
            write_optional(&self.file("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    fn populated(&self) -> bool {
        keyed(&self.file("cgroup.events"), "populated").is_none_or(|p| p != 0)
    }

    fn wait_unpopulated(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + DESTROY_LIMIT;
        let mut attempt = 0;
        while self.populated() {
            if Instant::now() >= deadline {
                return Err(CgroupError::NotEmpty {
                    path: self.dir.clone(),
                    limit: DESTROY_LIMIT,
                    pids: self.pids().unwrap_or_default(),
                });
            }
            backoff(&mut attempt);
        }
        Ok(())
    }
}

impl TaskCgroup for V2Cgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.file("cgroup.procs")]
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.file("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        match fs::write(self.file("cgroup.kill"), "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.dir.is_dir() => {
                // Before Linux 5.14: freeze, kill each process, thaw.
                let _ = fs::write(self.file("cgroup.freeze"), "1");
                for pid in self.pids()? {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = fs::write(self.file("cgroup.freeze"), "0");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("write \"1\" to", &self.file("cgroup.kill"))(e)),
        }
        self.wait_unpopulated()
    }

    fn memory_oom(&self) -> Option<MemoryOom> {
        let events = self.file("memory.events");
        let oom_kills = keyed(&events, "oom_kill")?;
        (oom_kills > 0).then(|| MemoryOom {
            limit_bytes: read_u64(&self.file("memory.max")),
            peak_bytes: read_u64(&self.file("memory.peak")),
            oom_kills,
        })
    }

    fn cpu_stats(&self) -> Result<CpuStats, CgroupError> {
        let stat = self.file("cpu.stat");
        if !stat.is_file() {
            return Err(io_err("read", &stat)(io::ErrorKind::NotFound.into()));
        }
        Ok(CpuStats {
            usage_us: keyed(&stat, "usage_usec").unwrap_or(0),
            nr_throttled: keyed(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: keyed(&stat, "throttled_usec").unwrap_or(0),
        })
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        if !self.dir.exists() {
            return Ok(());
        }
        if self.populated() {
            self.kill_all()?;
        }
        rmdir_when_empty(&self.dir, &self.file("cgroup.procs"))
    }

    fn try_remove(&self) -> bool {
        remove_dirs_now([self.dir.clone()])
    }
}

// ----- hybrid -----

/// The v1 controllers the hybrid backend uses; the first three are required.
const HYBRID_REQUIRED: [&str; 3] = ["memory", "cpu", "pids"];
const HYBRID_OPTIONAL: [&str; 2] = ["cpuacct", "freezer"];

/// Hybrid hosts: v1 controllers enforce, the unified hierarchy identifies.
#[derive(Debug)]
pub struct HybridBackend {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
    /// `None` when cpuacct shares the cpu hierarchy or is missing.
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
    unified: Option<PathBuf>,
}

impl HybridBackend {
    fn new(
        cgroup_root: &Path,
        own: &OwnCgroups,
        placement: &RootPlacement,
    ) -> Result<Self, CgroupError> {
        let mut seen: Vec<String> = Vec::new();
        let mut root_for = |controller: &str| -> Result<Option<PathBuf>, CgroupError> {
            let Some((controllers, path)) = own.v1(controller) else {
                return Ok(None);
            };
            let mount_name = controllers.join(",");
            if seen.contains(&mount_name) {
                return Ok(None);
            }
            seen.push(mount_name.clone());
            let mut mount = cgroup_root.join(&mount_name);
            if !mount.is_dir() {
                mount = cgroup_root.join(controller);
            }
            if !mount.join("cgroup.procs").is_file() {
                return Ok(None);
            }
            let root = root_in(&mount, path, placement)?;
            mkdir_all(&root.join(TASKS_DIR))?;
            Ok(Some(root))
        };
        let mut required = Vec::new();
        for c in HYBRID_REQUIRED {
            required.push(root_for(c)?.ok_or_else(|| CgroupError::Unsupported {
                reason: format!(
                    "the v1 {c} controller is not mounted under {}",
                    cgroup_root.display()
                ),
            })?);
        }
        let cpuacct = root_for(HYBRID_OPTIONAL[0])?;
        let freezer = root_for(HYBRID_OPTIONAL[1])?;
        let unified = match own.unified() {
            Some(path) if cgroup_root.join("unified/cgroup.procs").is_file() => {
                let root = root_in(&cgroup_root.join("unified"), path, placement)?;
                mkdir_all(&root.join(TASKS_DIR))?;
                Some(root)
            }
            _ => None,
        };
        let [memory, cpu, pids] =
            <[PathBuf; 3]>::try_from(required).map_err(|_| CgroupError::Unsupported {
                reason: "internal: controller list".to_owned(),
            })?;
        Ok(Self {
            memory,
            cpu,
            pids,
            cpuacct,
            freezer,
            unified,
        })
    }

    fn all_roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![self.memory.clone(), self.cpu.clone(), self.pids.clone()];
        roots.extend(self.cpuacct.iter().cloned());
        roots.extend(self.freezer.iter().cloned());
        roots.extend(self.unified.iter().cloned());
        roots
    }

    fn at(&self, rel: &Path) -> HybridCgroup {
        HybridCgroup {
            memory: self.memory.join(rel),
            cpu: self.cpu.join(rel),
            pids: self.pids.join(rel),
            cpuacct: self.cpuacct.as_ref().map(|r| r.join(rel)),
            freezer: self.freezer.as_ref().map(|r| r.join(rel)),
            unified: self.unified.as_ref().map(|r| r.join(rel)),
        }
    }
}

impl CgroupBackend for HybridBackend {
    fn mode(&self) -> CgroupMode {
        CgroupMode::Hybrid
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.all_roots()
    }

    fn create(&self, rel: &Path, limits: &Limits) -> Result<Box<dyn TaskCgroup>, CgroupError> {
        let cg = self.at(rel);
        for dir in cg.dirs() {
            mkdir_all(&dir)?;
        }
        cg.apply(limits)?;
        Ok(Box::new(cg))
    }

    fn open(&self, rel: &Path) -> Option<Box<dyn TaskCgroup>> {
        let cg = self.at(rel);
        cg.memory
            .join("cgroup.procs")
            .is_file()
            .then(|| Box::new(cg) as Box<dyn TaskCgroup>)
    }

    fn destroy_root(&self) -> Result<(), CgroupError> {
        for root in self.all_roots() {
            remove_tree(&root, None)?;
        }
        Ok(())
    }

    fn unified_root(&self) -> Option<PathBuf> {
        self.unified.clone()
    }
}

/// A task's cgroup on a hybrid host: one directory per hierarchy.
#[derive(Debug)]
struct HybridCgroup {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
    cpuacct: Option<PathBuf>,
    freezer: Option<PathBuf>,
    unified: Option<PathBuf>,
}

impl HybridCgroup {
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.memory.clone(), self.cpu.clone(), self.pids.clone()];
        dirs.extend(self.cpuacct.iter().cloned());
        dirs.extend(self.freezer.iter().cloned());
        dirs.extend(self.unified.iter().cloned());
        dirs
    }

    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(cpus) = limits.cpus {
            write(&self.cpu.join("cpu.shares"), &cpu_shares(cpus).to_string())?;
        }
        write_optional(
            &self.cpu.join("cpu.cfs_period_us"),
            &CPU_PERIOD_US.to_string(),
        )?;
        let quota = limits
            .cpu_limit
            .map_or_else(|| "-1".to_owned(), |c| cpu_quota_us(c).to_string());
        write_optional(&self.cpu.join("cpu.cfs_quota_us"), &quota)?;
        if let Some(mem) = limits.mem_bytes {
            write(&self.memory.join("memory.limit_in_bytes"), &mem.to_string())?;
            // Swap off: memory+swap limited to memory alone (where swap is accounted).
            write_optional(
                &self.memory.join("memory.memsw.limit_in_bytes"),
                &mem.to_string(),
            )?;
        }
        if let Some(soft) = limits.mem_soft_bytes {
            write_optional(
                &self.memory.join("memory.soft_limit_in_bytes"),
                &soft.to_string(),
            )?;
        }
        // Not every v1 kernel lets a non-root cgroup change swappiness; best effort.
        if let Err(e) = fs::write(self.memory.join("memory.swappiness"), "0") {
            tracing::debug!(error = %e, "cannot set memory.swappiness to 0");
        }
        let pids = limits
            .pids_max
            .map_or_else(|| "max".to_owned(), |p| p.to_string());
        write(&self.pids.join("pids.max"), &pids)?;
        Ok(())
    }

    fn freeze(&self, state: &str) {
        let Some(freezer) = &self.freezer else {
            return;
        };
        if fs::write(freezer.join("freezer.state"), state).is_err() {
            return;
        }
        if state == "FROZEN" {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let now = fs::read_to_string(freezer.join("freezer.state")).unwrap_or_default();
                if now.trim() == "FROZEN" {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl TaskCgroup for HybridCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn unified_dir(&self) -> Option<PathBuf> {
        self.unified.clone()
    }

    fn path(&self) -> PathBuf {
        self.memory.clone()
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.memory.join("cgroup.procs"))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        // Freeze so nothing forks while being killed; SIGKILL reaches frozen tasks.
        for _ in 0..100 {
            self.freeze("FROZEN");
            let pids = self.pids()?;
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            self.freeze("THAWED");
            if pids.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(1));
            if self.pids()?.is_empty() {
                break;
            }
        }
        wait_empty(&self.memory, &self.memory.join("cgroup.procs"))
    }

    fn memory_oom(&self) -> Option<MemoryOom> {
        let oom_kills = keyed(&self.memory.join("memory.oom_control"), "oom_kill")?;
        (oom_kills > 0).then(|| MemoryOom {
            limit_bytes: read_u64(&self.memory.join("memory.limit_in_bytes"))
                .filter(|l| *l < 1 << 60),
            peak_bytes: read_u64(&self.memory.join("memory.max_usage_in_bytes")),
            oom_kills,
        })
    }

    fn cpu_stats(&self) -> Result<CpuStats, CgroupError> {
        let acct = self
            .cpuacct
            .as_ref()
            .unwrap_or(&self.cpu)
            .join("cpuacct.usage");
        let usage_ns = read_u64(&acct)
            .ok_or_else(|| io_err("read", &acct)(io::Error::other("missing or not a number")))?;
        let stat = self.cpu.join("cpu.stat");
        Ok(CpuStats {
            usage_us: usage_ns / 1000,
            nr_throttled: keyed(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: keyed(&stat, "throttled_time").unwrap_or(0) / 1000,
        })
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        if !self.pids()?.is_empty() {
            self.kill_all()?;
        }
        for dir in self.dirs() {
            rmdir_when_empty(&dir, &dir.join("cgroup.procs"))?;
        }
        Ok(())
    }

    fn try_remove(&self) -> bool {
        remove_dirs_now(self.dirs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_configured_root_outside_the_own_cgroup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let cg = dir.path().join("cg");
        write_file(&proc_root.join("self/cgroup"), "0::/agent.service\n");
        write_file(&cg.join("cgroup.controllers"), "cpu memory pids\n");
        write_file(
            &cg.join("agent.service/cgroup.controllers"),
            "cpu memory pids\n",
        );
        let err = detect(
            &proc_root,
            &cg,
            &RootPlacement::Path(PathBuf::from("/other.service")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("own subtree"), "{err}");
        assert!(!cg.join("other.service").exists());
        let backend = detect(
            &proc_root,
            &cg,
            &RootPlacement::Path(PathBuf::from("/agent.service/strata")),
        )
        .unwrap();
        assert_eq!(backend.mode(), CgroupMode::V2);
        assert_eq!(backend.roots(), vec![cg.join("agent.service/strata")]);
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
