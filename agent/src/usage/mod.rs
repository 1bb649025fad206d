//! Per-task usage records: every reporting interval (1 s by default) the [`Collector`] reads
//! each running task's cgroup files and the eBPF counters of its unified cgroup and makes one
//! [`TaskUsage`] per task. [`run`] does it on a timer, keeps the latest records in
//! [`LatestUsage`] (served by the agent's HTTP server) and hands them to the agent's core, which
//! streams them to the allocator.
//!
//! Where the figures come from:
//! - cgroup v2 (pure v2 hosts): `cpu.stat`, `cpu.max`, `memory.{current,peak,stat,max,high,events}`,
//!   `pids.{current,max}`, `io.stat`, `{cpu,memory,io}.pressure`.
//! - hybrid hosts: the v1 controllers the agent enforces with (`cpuacct.usage` split by
//!   `cpuacct.usage_user/usage_sys`,
//!   `cpu.stat` throttling, `cpu.cfs_quota_us`, `memory.*` with `memory.oom_control`,
//!   `pids.*`, `blkio.throttle.*` where the task has a blkio cgroup) and PSI from the task's
//!   cgroup in the unified hierarchy (where the kernel has PSI).
//! - eBPF ([`Ebpf`]): on-CPU time (sched_switch), run-queue latency (sched_wakeup to
//!   sched_switch) and network bytes and packets (cgroup_skb), by the id of the task's unified
//!   cgroup; counted since the programs were attached (the agent's
//!   start), so a task that outlived an agent restart counts from then.
//!
//! Overhead: a task whose eBPF on-CPU time did not move since the last interval and that used
//! no CPU in its last full interval cannot have changed its CPU time, run-queue waits,
//! anonymous memory, pids or io, so its previous record stands and costs one eBPF map lookup
//! instead of some fifteen file reads: the [`UsageReport`] shares it (not `fresh`) and whoever
//! reads the report carries it forward to the report's time ([`TaskUsage::carry_forward`]).
//! Every task is still read in full at least every [`Collector::full_every`] intervals (30; and
//! always without eBPF), which also refreshes what can change while a task sleeps (network
//! bytes received for it, page cache reclaimed from it, PSI averages). Limits, which the agent
//! sets at launch, are read once a minute. A task that stays on a CPU without ever being
//! switched out is seen by eBPF only at its next switch; the full read catches it at the latest
//! then. The files of a cgroup directory are opened relative to it, so its long path is walked
//! once per directory, and while the task list stays the same no task is looked up by name.
//!
//! The agent's core streams the first report on each allocator stream in full and later ones
//! as deltas: the fresh records and the tasks that ended (see `AgentMessage.Usage`), so a
//! thousand sleeping tasks cost the stream a few dozen records a second, not a thousand.

mod read;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_agent_common::CgroupId;
use strata_proto::{
    CpuUsage, MemoryUsage, NetworkUsage, PidsUsage, RunQueueLatency, TaskInfo, TaskUsage, names,
};
use tokio::sync::{mpsc, watch};

use crate::cgroup::CgroupBackend;
use crate::discovery::CgroupMode;
use crate::ebpf::{Ebpf, RunQueueHistogram};
use read::Reader;

/// The eBPF programs, shared between the usage collector and whoever else reads their maps.
pub type SharedEbpf = Arc<Mutex<Ebpf>>;

/// The default reporting interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the collector gives the allocator's free memory back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How often a task's limits (set at launch, never changed by the agent) are read again.
const LIMITS_EVERY: Duration = Duration::from_secs(60);

/// How often (in intervals) a quiet task is read in full anyway.
const DEFAULT_FULL_EVERY: u32 = 30;

/// A running task, as the collector needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRef {
    /// The task's framework.
    pub framework_id: String,
    /// The task.
    pub task_id: String,
    /// The role it runs under (for labels).
    pub role: String,
    /// The cpus it asked for (its share).
    pub request_cores: f64,
}

impl TaskRef {
    /// The collector's view of a launched task: its role is the allocation role of its
    /// resources (`*` when they carry none), its request the sum of its `cpus`.
    #[must_use]
    pub fn from_task(framework_id: &str, task: &TaskInfo) -> Self {
        let role = task
            .resources
            .iter()
            .map(|r| r.allocation_role.as_str())
            .find(|r| !r.is_empty())
            .unwrap_or("*")
            .to_owned();
        let request_cores = task
            .resources
            .iter()
            .filter(|r| r.name == names::CPUS)
            .map(|r| r.scalar)
            .sum();
        Self {
            framework_id: framework_id.to_owned(),
            task_id: task.task_id.clone(),
            role,
            request_cores,
        }
    }
}

/// Where the task cgroups are, per hierarchy. A task's cgroup is `<root>/containers/<fw>/<task>`
/// under each root (see [`crate::cgroup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2: one root holds every controller.
    V2 {
        /// The agent's cgroup root.
        root: PathBuf,
    },
    /// A hybrid host: the v1 controllers' roots and the unified one.
    Hybrid(HybridRoots),
}

/// The agent's cgroup roots on a hybrid host; `None` for a hierarchy it has none in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HybridRoots {
    /// The v1 memory controller.
    pub memory: Option<PathBuf>,
    /// The v1 cpu controller.
    pub cpu: Option<PathBuf>,
    /// The v1 cpuacct controller (the cpu root when they share a hierarchy).
    pub cpuacct: Option<PathBuf>,
    /// The v1 pids controller.
    pub pids: Option<PathBuf>,
    /// The v1 blkio controller.
    pub blkio: Option<PathBuf>,
    /// The unified (v2) hierarchy: the task's identity for eBPF, and PSI.
    pub unified: Option<PathBuf>,
}

impl Layout {
    /// The layout of a cgroup backend's roots: each root is named after its hierarchy's mount
    /// directory under `cgroup_mount` (`memory`, `cpu,cpuacct`, `unified`, ...).
    #[must_use]
    pub fn of_backend(backend: &dyn CgroupBackend, cgroup_mount: &Path) -> Option<Self> {
        Self::from_roots(backend.mode(), &backend.roots(), cgroup_mount)
    }

    /// See [`Layout::of_backend`].
    #[must_use]
    pub fn from_roots(mode: CgroupMode, roots: &[PathBuf], cgroup_mount: &Path) -> Option<Self> {
        match mode {
            CgroupMode::V2 => roots.first().map(|root| Self::V2 { root: root.clone() }),
            CgroupMode::Hybrid => {
                let mut h = HybridRoots::default();
                for root in roots {
                    let Ok(rel) = root.strip_prefix(cgroup_mount) else {
                        continue;
                    };
                    let Some(mount) = rel.components().next() else {
                        continue;
                    };
                    let mount = mount.as_os_str().to_string_lossy();
                    for controller in mount.split(',') {
                        let slot = match controller {
                            "memory" => &mut h.memory,
                            "cpu" => &mut h.cpu,
                            "cpuacct" => &mut h.cpuacct,
                            "pids" => &mut h.pids,
                            "blkio" => &mut h.blkio,
                            "unified" => &mut h.unified,
                            _ => continue,
                        };
                        *slot = Some(root.clone());
                    }
                }
                if h.cpuacct.is_none() {
                    h.cpuacct.clone_from(&h.cpu);
                }
                Some(Self::Hybrid(h))
            }
            CgroupMode::V1 | CgroupMode::None => None,
        }
    }
}

/// One interval's records: every running task's, the quiet ones shared with earlier reports.
#[derive(Debug, Clone, Default)]
pub struct UsageReport {
    /// When the report was made (Unix seconds).
    pub timestamp: f64,
    /// Every running task's record. A record read anew in this interval is at `timestamp`; a
    /// quiet task's is the record of its last full read, which stands: carried forward to
    /// `timestamp` ([`TaskUsage::carry_forward`]) it is the task's record now.
    pub records: Vec<Arc<TaskUsage>>,
    /// For each record, whether it was read anew in this interval (else it is carried forward).
    pub fresh: Vec<bool>,
    /// The tasks (framework, task) that had a record in the previous report and have none now.
    pub ended: Vec<(String, String)>,
    /// The previous report never reached the agent's core: this one cannot be sent as a delta.
    pub after_a_gap: bool,
}

impl UsageReport {
    /// A report of records all taken now (tests, and tools that make their own records).
    #[must_use]
    pub fn of_records(records: Vec<TaskUsage>) -> Self {
        let timestamp = records.iter().map(|r| r.timestamp).fold(0.0, f64::max);
        Self {
            timestamp,
            fresh: vec![true; records.len()],
            records: records.into_iter().map(Arc::new).collect(),
            ended: Vec::new(),
            after_a_gap: false,
        }
    }

    /// Every record as of the report's time (quiet ones carried forward).
    #[must_use]
    pub fn current(&self) -> Vec<TaskUsage> {
        self.records
            .iter()
            .map(|r| r.carried_forward(self.timestamp))
            .collect()
    }

    /// The records read anew in this interval.
    pub fn fresh_records(&self) -> impl Iterator<Item = &TaskUsage> {
        self.records
            .iter()
            .zip(&self.fresh)
            .filter(|(_, fresh)| **fresh)
            .map(|(r, _)| r.as_ref())
    }
}

/// The latest records, shared with the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct LatestUsage {
    report: Arc<RwLock<Arc<UsageReport>>>,
    agent_id: Arc<RwLock<String>>,
    /// Seconds the last collection took, for the agent's own metrics.
    last_collect_seconds: Arc<RwLock<f64>>,
}

impl LatestUsage {
    /// The latest record of every running task, as of the latest report.
    #[must_use]
    pub fn records(&self) -> Vec<TaskUsage> {
        self.report().current()
    }

    /// The latest report.
    #[must_use]
    pub fn report(&self) -> Arc<UsageReport> {
        self.report
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the latest report.
    pub fn set_report(&self, report: Arc<UsageReport>) {
        *self.report.write().unwrap_or_else(PoisonError::into_inner) = report;
    }

    /// Replaces the records with `records`, all taken now.
    pub fn set_records(&self, records: Vec<TaskUsage>) {
        self.set_report(Arc::new(UsageReport::of_records(records)));
    }

    /// The agent id the records carry (empty until the agent has one).
    #[must_use]
    pub fn agent_id(&self) -> String {
        self.agent_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets the agent id the records carry.
    pub fn set_agent_id(&self, id: &str) {
        id.clone_into(
            &mut self
                .agent_id
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// How long the last collection took, in seconds.
    #[must_use]
    pub fn last_collect_seconds(&self) -> f64 {
        *self
            .last_collect_seconds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_last_collect_seconds(&self, seconds: f64) {
        *self
            .last_collect_seconds
            .write()
            .unwrap_or_else(PoisonError::into_inner) = seconds;
    }
}

/// A task's cgroup directories, per hierarchy.
#[derive(Debug, Clone, Default)]
struct TaskDirs {
    /// The directory that decides whether the cgroup exists (v2: its only one; hybrid: memory).
    main: PathBuf,
    /// The unified (v2) directory: the task's eBPF identity, and PSI.
    unified: Option<PathBuf>,
    /// Hybrid hosts' v1 directories (unset on v2 hosts, where `main` holds every controller).
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    blkio: Option<PathBuf>,
}

impl TaskDirs {
    fn of(layout: &Layout, task: &TaskRef) -> Option<Self> {
        let rel = crate::cgroup::task_rel(&task.framework_id, &task.task_id).ok()?;
        let at = |root: &Option<PathBuf>| root.as_ref().map(|r| r.join(&rel));
        Some(match layout {
            Layout::V2 { root } => Self {
                main: root.join(&rel),
                unified: Some(root.join(&rel)),
                ..Self::default()
            },
            Layout::Hybrid(h) => Self {
                main: at(&h.memory).or_else(|| at(&h.unified))?,
                unified: at(&h.unified),
                cpu: at(&h.cpu),
                cpuacct: at(&h.cpuacct),
                memory: at(&h.memory),
                pids: at(&h.pids),
                blkio: at(&h.blkio),
            },
        })
    }
}

/// What the collector remembers of a task between intervals.
#[derive(Debug)]
struct Seen {
    /// When the task was last sampled.
    at: Instant,
    /// user + system at the last full read.
    cpu_ns: u64,
    cgroup_id: Option<CgroupId>,
    oncpu_ns: Option<u64>,
    run_queue: Option<RunQueueHistogram>,
    /// The highest memory.current seen, for kernels without a peak.
    peak: u64,
    /// Intervals since the last full read.
    since_full: u32,
    /// When the limits were last read.
    limits_at: Instant,
    dirs: TaskDirs,
    /// The record of the last full read; a quiet task's stands (see [`UsageReport::records`]).
    record: Arc<TaskUsage>,
}

/// What one [`Collector::collect`] made.
#[derive(Debug, Default)]
pub struct Collected {
    /// The records.
    pub report: UsageReport,
    /// The eBPF cgroup ids of the tasks that had a record and have none now (to drop from the
    /// eBPF maps).
    pub gone: Vec<CgroupId>,
}

/// What a pass of [`Collector::collect`] shares between its tasks.
struct Pass<'a> {
    ebpf: Option<&'a Ebpf>,
    agent_id: &'a str,
    now: Instant,
    timestamp: f64,
    full_every: u32,
}

/// How a task was sampled.
enum Sampled {
    /// Read in full: a new record.
    Full,
    /// Quiet: its last record stands.
    Quiet,
    /// Its cgroup does not exist (any more, or yet): no record.
    Missing,
}

/// Makes the usage records of the running tasks; keeps what it needs between intervals.
#[derive(Debug)]
pub struct Collector {
    layout: Layout,
    /// A quiet task is read in full at least every this many intervals (1: always).
    pub full_every: u32,
    /// The task list of the last [`Collector::collect`] and, in its order, what was seen of each
    /// task (`None`: it got no record). While the list stays the same, no task is looked up.
    tasks: Arc<Vec<TaskRef>>,
    seen: Vec<Option<Seen>>,
    reader: Reader,
    /// Full reads made by the last [`Collector::collect`] (the rest reused a record).
    pub last_full_reads: usize,
}

impl Collector {
    /// A collector for task cgroups laid out as `layout`.
    #[must_use]
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            full_every: DEFAULT_FULL_EVERY,
            tasks: Arc::default(),
            seen: Vec::new(),
            reader: Reader::default(),
            last_full_reads: 0,
        }
    }

    /// One record per task of `tasks` whose cgroup exists, for the agent `agent_id`, reading
    /// the eBPF counters from `ebpf` when given.
    pub fn collect(
        &mut self,
        tasks: &Arc<Vec<TaskRef>>,
        ebpf: Option<&Ebpf>,
        agent_id: &str,
    ) -> Collected {
        let pass = Pass {
            ebpf,
            agent_id,
            now: Instant::now(),
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            full_every: self.full_every,
        };
        let mut report = UsageReport {
            timestamp: pass.timestamp,
            records: Vec::with_capacity(tasks.len()),
            fresh: Vec::with_capacity(tasks.len()),
            ..UsageReport::default()
        };
        let mut gone = Vec::new();
        if !Arc::ptr_eq(tasks, &self.tasks) {
            self.realign(tasks, &mut report.ended, &mut gone);
        }
        self.last_full_reads = 0;
        for (task, slot) in self.tasks.iter().zip(self.seen.iter_mut()) {
            let had = slot.as_ref().map(|s| s.cgroup_id);
            let sampled = sample(&self.layout, &mut self.reader, &pass, task, slot);
            match (sampled, slot.as_ref()) {
                (Sampled::Full, Some(seen)) => {
                    report.records.push(seen.record.clone());
                    report.fresh.push(true);
                    self.last_full_reads += 1;
                }
                (Sampled::Quiet, Some(seen)) => {
                    report.records.push(seen.record.clone());
                    report.fresh.push(false);
                }
                _ => {
                    if let Some(id) = had {
                        report
                            .ended
                            .push((task.framework_id.clone(), task.task_id.clone()));
                        gone.extend(id);
                    }
                }
            }
        }
        self.reader.close_dir();
        Collected { report, gone }
    }

    /// Lines `seen` up with a new task list: what was seen of a task still listed moves to its
    /// new place; a task no longer listed that had a record ends.
    fn realign(
        &mut self,
        tasks: &Arc<Vec<TaskRef>>,
        ended: &mut Vec<(String, String)>,
        gone: &mut Vec<CgroupId>,
    ) {
        let old_tasks = std::mem::replace(&mut self.tasks, tasks.clone());
        let mut old_seen = std::mem::take(&mut self.seen);
        let index: HashMap<(&str, &str), usize> = old_tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| old_seen.get(*i).is_some_and(Option::is_some))
            .map(|(i, t)| ((t.framework_id.as_str(), t.task_id.as_str()), i))
            .collect();
        self.seen = tasks
            .iter()
            .map(|t| {
                let i = index.get(&(t.framework_id.as_str(), t.task_id.as_str()))?;
                old_seen.get_mut(*i)?.take()
            })
            .collect();
        for (task, seen) in old_tasks.iter().zip(old_seen) {
            if let Some(seen) = seen {
                ended.push((task.framework_id.clone(), task.task_id.clone()));
                gone.extend(seen.cgroup_id);
            }
        }
    }
}

/// Samples one task into its `slot`.
fn sample(
    layout: &Layout,
    r: &mut Reader,
    pass: &Pass<'_>,
    task: &TaskRef,
    slot: &mut Option<Seen>,
) -> Sampled {
    let now = pass.now;
    // A task seen before whose on-CPU time has not moved, and that used no CPU in its last
    // full interval, cannot have changed what it uses: its last record stands.
    let mut oncpu_ns = None;
    if let Some(e) = pass.ebpf
        && let Some(seen) = slot.as_mut()
        && let Some(id) = seen.cgroup_id
    {
        oncpu_ns = e.cpu_time_ns(id).ok();
        // (A record made before the agent had its id is made again.)
        let quiet = oncpu_ns.is_some()
            && oncpu_ns == seen.oncpu_ns
            && seen.record.cpu.as_ref().is_some_and(|c| c.cores == 0.0)
            && seen.since_full + 1 < pass.full_every
            && seen.record.agent_id == pass.agent_id;
        if quiet {
            seen.since_full += 1;
            seen.at = now;
            return Sampled::Quiet;
        }
    }

    let mut previous = slot.take();
    let Some(dirs) = previous
        .as_mut()
        .map(|s| std::mem::take(&mut s.dirs))
        .or_else(|| TaskDirs::of(layout, task))
    else {
        return Sampled::Missing;
    };
    let cgroup_id = match previous.as_ref().and_then(|s| s.cgroup_id) {
        Some(id) => Some(id),
        None => dirs
            .unified
            .as_deref()
            .and_then(|d| crate::ebpf::cgroup_id(d).ok()),
    };
    let net = match (pass.ebpf, cgroup_id) {
        (Some(e), Some(id)) => {
            if oncpu_ns.is_none() {
                oncpu_ns = e.cpu_time_ns(id).ok();
            }
            e.net_counters(id).ok()
        }
        _ => None,
    };

    let previous_limits = previous
        .as_ref()
        .filter(|s| now.duration_since(s.limits_at) < LIMITS_EVERY)
        .map(|s| (s.limits_at, limits_of(&s.record)));
    let limits = previous_limits.is_none();
    let (cpu, memory, pids, io) = match layout {
        Layout::V2 { .. } => (
            read::cpu_v2(r, &dirs.main, limits),
            read::memory_v2(r, &dirs.main, limits),
            read::pids(r, &dirs.main, limits),
            read::io_v2(r, &dirs.main),
        ),
        Layout::Hybrid(_) => {
            let cpu = match (&dirs.cpu, &dirs.cpuacct) {
                (Some(cpu), Some(acct)) => read::cpu_v1(r, cpu, acct, limits),
                _ => None,
            };
            let memory = dirs
                .memory
                .as_deref()
                .and_then(|d| read::memory_v1(r, d, limits));
            let pids = dirs.pids.as_deref().and_then(|d| read::pids(r, d, limits));
            let io = dirs
                .blkio
                .as_deref()
                .map(|d| read::io_v1(r, d))
                .unwrap_or_default();
            (cpu, memory, pids, io)
        }
    };
    // No figure at all: the cgroup is gone (or not made yet).
    if cpu.is_none() && memory.is_none() && !dirs.main.is_dir() {
        return Sampled::Missing;
    }
    let mut psi = |name: &str| {
        dirs.unified
            .as_deref()
            .and_then(|d| read::pressure(r, d, name))
    };
    let cpu_pressure = psi("cpu.pressure");
    let memory_pressure = psi("memory.pressure");
    let io_pressure = psi("io.pressure");

    let mut cpu = cpu.unwrap_or_default();
    let mut memory = memory.unwrap_or_default();
    let (pids_current, mut pids_limit) = pids.unwrap_or_default();
    let limits_at = match previous_limits {
        Some((at, l)) => {
            (cpu.limit_cores, memory.limit, memory.high, pids_limit) =
                (l.cpu, l.memory, l.memory_high, l.pids);
            at
        }
        None => now,
    };
    let cpu_ns = cpu.user_ns.saturating_add(cpu.system_ns);
    let interval = previous
        .as_ref()
        .map_or(0.0, |s| now.duration_since(s.at).as_secs_f64());
    let cores = match &previous {
        Some(s) if interval > 0.0 => cpu_ns.saturating_sub(s.cpu_ns) as f64 / 1e9 / interval,
        _ => 0.0,
    };
    let peak = memory
        .peak
        .unwrap_or(0)
        .max(memory.current)
        .max(previous.as_ref().map_or(0, |s| s.peak));
    let run_queue = match (pass.ebpf, cgroup_id) {
        (Some(e), Some(id)) => e.run_queue(id).ok(),
        _ => None,
    };
    let run_queue_record = run_queue
        .as_ref()
        .map(|now| run_queue_latency(now, previous.as_ref().and_then(|s| s.run_queue.as_ref())));
    let record = TaskUsage {
        task_id: task.task_id.clone(),
        framework_id: task.framework_id.clone(),
        agent_id: pass.agent_id.to_owned(),
        role: task.role.clone(),
        timestamp: pass.timestamp,
        interval_seconds: interval,
        cpu: Some(CpuUsage {
            user_seconds_total: cpu.user_ns as f64 / 1e9,
            system_seconds_total: cpu.system_ns as f64 / 1e9,
            oncpu_seconds_total: oncpu_ns.map(|ns| ns as f64 / 1e9),
            cores,
            periods_total: cpu.periods,
            throttled_periods_total: cpu.throttled_periods,
            throttled_seconds_total: cpu.throttled_ns as f64 / 1e9,
            request_cores: task.request_cores,
            limit_cores: cpu.limit_cores,
            run_queue: run_queue_record,
        }),
        memory: Some(MemoryUsage {
            current_bytes: memory.current,
            peak_bytes: peak,
            anon_bytes: memory.anon,
            file_bytes: memory.file,
            kernel_bytes: memory.kernel,
            limit_bytes: memory.limit,
            high_bytes: memory.high,
            oom_events_total: memory.oom,
            oom_kill_events_total: memory.oom_kill,
            high_events_total: memory.high_events,
        }),
        pids: Some(PidsUsage {
            current: pids_current,
            limit: pids_limit,
        }),
        io,
        network: net.map(|n| NetworkUsage {
            rx_bytes_total: n.ingress.bytes,
            tx_bytes_total: n.egress.bytes,
            rx_packets_total: n.ingress.packets,
            tx_packets_total: n.egress.packets,
        }),
        cpu_pressure,
        memory_pressure,
        io_pressure,
    };
    // The first full reads of tasks launched together are spread over the next intervals, so
    // they do not all come due at once again.
    let since_full = if previous.is_some() {
        0
    } else {
        spread(task, pass.full_every)
    };
    *slot = Some(Seen {
        at: now,
        cpu_ns,
        cgroup_id,
        oncpu_ns,
        run_queue,
        peak,
        since_full,
        limits_at,
        dirs,
        record: Arc::new(record),
    });
    Sampled::Full
}

/// A number in `0..n` that depends only on the task (FNV-1a of its ids).
fn spread(task: &TaskRef, n: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let (framework, id) = (task.framework_id.bytes(), task.task_id.bytes());
    for byte in framework.chain([0]).chain(id) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(n.max(1))) as u32
}

/// A record's limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    cpu: f64,
    memory: u64,
    memory_high: u64,
    pids: u64,
}

fn limits_of(record: &TaskUsage) -> Limits {
    Limits {
        cpu: record.cpu.as_ref().map_or(0.0, |c| c.limit_cores),
        memory: record.memory.as_ref().map_or(0, |m| m.limit_bytes),
        memory_high: record.memory.as_ref().map_or(0, |m| m.high_bytes),
        pids: record.pids.as_ref().map_or(0, |p| p.limit),
    }
}

/// The run-queue record from the histogram `now` and the one at the start of the interval
/// (`None`: since the programs were attached): percentiles of the interval's waits (interpolated
/// inside their log2 bucket), the upper bound of its highest bucket as the max, and the totals.
#[must_use]
pub fn run_queue_latency(
    now: &RunQueueHistogram,
    before: Option<&RunQueueHistogram>,
) -> RunQueueLatency {
    let interval = before.map_or(*now, |b| now.since(b));
    let seconds = |ns: Option<u64>| ns.map_or(0.0, |ns| ns as f64 / 1e9);
    let max = interval
        .buckets
        .iter()
        .rposition(|n| *n > 0)
        .map(|i| RunQueueHistogram::bucket_bounds_ns(i).1);
    RunQueueLatency {
        count: interval.count,
        p50_seconds: seconds(interval.p50_ns()),
        p99_seconds: seconds(interval.p99_ns()),
        max_seconds: seconds(max),
        log2_ns_buckets_total: now.buckets.to_vec(),
        sum_seconds_total: now.sum_ns as f64 / 1e9,
    }
}

/// What [`run`] needs.
#[derive(Debug)]
pub struct UsageLoop {
    /// The collector.
    pub collector: Collector,
    /// The interval.
    pub interval: Duration,
    /// The running tasks, as the agent's core publishes them.
    pub tasks: watch::Receiver<Arc<Vec<TaskRef>>>,
    /// The eBPF programs, if loaded.
    pub ebpf: Option<SharedEbpf>,
    /// Where the latest report goes (and the agent id comes from).
    pub latest: LatestUsage,
    /// The agent's core, which sends the reports to the allocator.
    pub to_core: mpsc::Sender<Arc<UsageReport>>,
}

/// Collects every interval until the core goes away.
pub async fn run(usage: UsageLoop) {
    let mut ticker = tokio::time::interval(usage.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut collector = Some(usage.collector);
    let mut next_trim = Instant::now() + TRIM_EVERY;
    let mut after_a_gap = false;
    loop {
        ticker.tick().await;
        if Instant::now() >= next_trim {
            // Launch bursts and large reports leave free heap behind; keep the RSS small.
            crate::sys::release_free_memory();
            next_trim = Instant::now() + TRIM_EVERY;
        }
        let tasks = usage.tasks.borrow().clone();
        let agent_id = usage.latest.agent_id();
        let ebpf = usage.ebpf.clone();
        let Some(mut c) = collector.take() else {
            return;
        };
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let guard = ebpf
                .as_ref()
                .map(|e| e.lock().unwrap_or_else(PoisonError::into_inner));
            let collected = c.collect(&tasks, guard.as_deref(), &agent_id);
            drop(guard);
            if !collected.gone.is_empty()
                && let Some(e) = &ebpf
            {
                let mut e = e.lock().unwrap_or_else(PoisonError::into_inner);
                for &id in &collected.gone {
                    e.forget(id);
                }
            }
            (c, collected.report)
        })
        .await;
        let (c, mut report) = match joined {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "the usage collector panicked; usage reports stop");
                return;
            }
        };
        collector = Some(c);
        usage
            .latest
            .set_last_collect_seconds(started.elapsed().as_secs_f64());
        report.after_a_gap = after_a_gap;
        let report = Arc::new(report);
        usage.latest.set_report(report.clone());
        match usage.to_core.try_send(report) {
            Ok(()) => after_a_gap = false,
            // The core is busy: the next report goes in full.
            Err(mpsc::error::TrySendError::Full(_)) => after_a_gap = true,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn task(fw: &str, id: &str) -> TaskRef {
        TaskRef {
            framework_id: fw.to_owned(),
            task_id: id.to_owned(),
            role: "eng".to_owned(),
            request_cores: 0.5,
        }
    }

    #[test]
    fn hybrid_roots_are_told_apart_by_their_mount() {
        let mount = Path::new("/sys/fs/cgroup");
        let roots: Vec<PathBuf> = [
            "memory/a/strata-x",
            "cpu,cpuacct/strata-x",
            "pids/strata-x",
            "freezer/strata-x",
            "unified/strata-x",
        ]
        .iter()
        .map(|r| mount.join(r))
        .collect();
        let layout = Layout::from_roots(CgroupMode::Hybrid, &roots, mount).unwrap();
        assert_eq!(
            layout,
            Layout::Hybrid(HybridRoots {
                memory: Some(mount.join("memory/a/strata-x")),
                cpu: Some(mount.join("cpu,cpuacct/strata-x")),
                cpuacct: Some(mount.join("cpu,cpuacct/strata-x")),
                pids: Some(mount.join("pids/strata-x")),
                blkio: None,
                unified: Some(mount.join("unified/strata-x")),
            })
        );
        assert_eq!(
            Layout::from_roots(CgroupMode::V2, &[mount.join("a/strata")], mount),
            Some(Layout::V2 {
                root: mount.join("a/strata")
            })
        );
        assert_eq!(Layout::from_roots(CgroupMode::V1, &roots, mount), None);
    }

    #[test]
    fn a_v2_task_gets_a_record_with_rates_from_consecutive_samples() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("containers/fw/t1");
        write(
            &cg.join("cpu.stat"),
            "usage_usec 1000000\nuser_usec 800000\nsystem_usec 200000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        );
        write(&cg.join("cpu.max"), "max 100000\n");
        write(&cg.join("memory.current"), "4096\n");
        write(
            &cg.join("memory.stat"),
            "anon 1024\nfile 2048\nkernel 512\n",
        );
        write(&cg.join("memory.max"), "1048576\n");
        write(&cg.join("pids.current"), "2\n");
        write(&cg.join("pids.max"), "100\n");
        write(
            &cg.join("cpu.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
        );
        let mut c = Collector::new(Layout::V2 {
            root: dir.path().to_path_buf(),
        });
        let tasks = Arc::new(vec![task("fw", "t1"), task("fw", "not-started")]);
        let Collected { report, gone } = c.collect(&tasks, None, "agent-1");
        assert!(gone.is_empty() && report.ended.is_empty());
        assert_eq!(report.fresh, [true]);
        let records = report.current();
        assert_eq!(records.len(), 1, "only the task with a cgroup");
        let r = &records[0];
        assert_eq!(
            (r.task_id.as_str(), r.agent_id.as_str(), r.role.as_str()),
            ("t1", "agent-1", "eng")
        );
        let cpu = r.cpu.as_ref().unwrap();
        assert_eq!(cpu.user_seconds_total, 0.8);
        assert_eq!(cpu.system_seconds_total, 0.2);
        assert_eq!(cpu.cores, 0.0, "no rate from one sample");
        assert_eq!(cpu.oncpu_seconds_total, None, "no eBPF");
        assert_eq!(cpu.request_cores, 0.5);
        let mem = r.memory.as_ref().unwrap();
        assert_eq!(
            (mem.current_bytes, mem.anon_bytes, mem.limit_bytes),
            (4096, 1024, 1 << 20)
        );
        assert_eq!(mem.peak_bytes, 4096, "the highest current seen");
        assert_eq!(r.pids.as_ref().unwrap().limit, 100);
        assert!(r.cpu_pressure.is_some() && r.memory_pressure.is_none());

        std::thread::sleep(Duration::from_millis(100));
        write(
            &cg.join("cpu.stat"),
            "usage_usec 1100000\nuser_usec 900000\nsystem_usec 200000\n",
        );
        let records = c.collect(&tasks, None, "agent-1").report.current();
        let cpu = records[0].cpu.as_ref().unwrap();
        let interval = records[0].interval_seconds;
        assert!(interval >= 0.1, "{interval}");
        assert!(
            (cpu.cores - 0.1 / interval).abs() < 1e-6,
            "{} cores over {interval} s",
            cpu.cores
        );

        fs::remove_dir_all(&cg).unwrap();
        let Collected { report, gone } = c.collect(&tasks, None, "agent-1");
        assert!(report.records.is_empty());
        assert_eq!(
            report.ended,
            [("fw".to_owned(), "t1".to_owned())],
            "a task whose cgroup went ends"
        );
        assert!(gone.len() <= 1, "its id, where one was known: {gone:?}");
        assert!(c.seen.iter().all(Option::is_none));
    }

    #[test]
    fn a_new_task_list_keeps_what_was_seen_of_the_tasks_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let cpu_stat = |id: &str, usec: u64| {
            write(
                &dir.path().join("containers/fw").join(id).join("cpu.stat"),
                &format!("usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n"),
            );
        };
        for id in ["t1", "t2", "t3", "t4"] {
            cpu_stat(id, 1_000_000);
        }
        let mut c = Collector::new(Layout::V2 {
            root: dir.path().to_path_buf(),
        });
        let first = Arc::new(vec![task("fw", "t1"), task("fw", "t2"), task("fw", "t3")]);
        assert_eq!(c.collect(&first, None, "a").report.records.len(), 3);
        let same = c.collect(&first, None, "a").report;
        assert!(same.ended.is_empty() && same.fresh == [true, true, true]);

        std::thread::sleep(Duration::from_millis(50));
        cpu_stat("t1", 1_050_000);
        cpu_stat("t3", 1_100_000);
        let second = Arc::new(vec![task("fw", "t3"), task("fw", "t4"), task("fw", "t1")]);
        let report = c.collect(&second, None, "a").report;
        assert_eq!(report.ended, [("fw".to_owned(), "t2".to_owned())]);
        let ids: Vec<&str> = report.records.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["t3", "t4", "t1"]);
        let cores: Vec<f64> = report
            .records
            .iter()
            .map(|r| r.cpu.as_ref().unwrap().cores)
            .collect();
        assert!(
            cores[0] > cores[2] && cores[2] > 0.0,
            "t3 and t1 keep their previous samples: {cores:?}"
        );
        assert_eq!(cores[1], 0.0, "t4 is new: no rate from one sample");
    }

    #[test]
    fn a_hybrid_task_is_read_from_its_v1_controllers_and_unified_psi() {
        let dir = tempfile::tempdir().unwrap();
        let rel = "containers/fw/t";
        let roots = HybridRoots {
            memory: Some(dir.path().join("memory/r")),
            cpu: Some(dir.path().join("cpu/r")),
            cpuacct: Some(dir.path().join("cpuacct/r")),
            pids: Some(dir.path().join("pids/r")),
            blkio: None,
            unified: Some(dir.path().join("unified/r")),
        };
        let at = |root: &Option<PathBuf>, file: &str| root.as_ref().unwrap().join(rel).join(file);
        write(&at(&roots.cpuacct, "cpuacct.usage"), "4000000000\n");
        write(&at(&roots.cpuacct, "cpuacct.usage_user"), "3000000000\n");
        write(&at(&roots.cpuacct, "cpuacct.usage_sys"), "1000000000\n");
        write(
            &at(&roots.cpu, "cpu.stat"),
            "nr_periods 5\nnr_throttled 2\nthrottled_time 7000000\n",
        );
        write(&at(&roots.cpu, "cpu.cfs_quota_us"), "200000\n");
        write(&at(&roots.cpu, "cpu.cfs_period_us"), "100000\n");
        write(&at(&roots.memory, "memory.usage_in_bytes"), "8192\n");
        write(&at(&roots.memory, "memory.max_usage_in_bytes"), "16384\n");
        write(&at(&roots.memory, "memory.stat"), "total_rss 4096\n");
        write(&at(&roots.pids, "pids.current"), "3\n");
        write(&at(&roots.pids, "pids.max"), "max\n");
        write(
            &at(&roots.unified, "io.pressure"),
            "some avg10=2.00 avg60=0.00 avg300=0.00 total=3000000\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1000000\n",
        );
        let mut c = Collector::new(Layout::Hybrid(roots));
        let records = c
            .collect(&Arc::new(vec![task("fw", "t")]), None, "a")
            .report
            .current();
        let r = &records[0];
        let cpu = r.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.user_seconds_total, cpu.system_seconds_total),
            (3.0, 1.0)
        );
        assert_eq!(
            (
                cpu.periods_total,
                cpu.throttled_periods_total,
                cpu.limit_cores
            ),
            (5, 2, 2.0)
        );
        assert!((cpu.throttled_seconds_total - 0.007).abs() < 1e-12);
        let mem = r.memory.as_ref().unwrap();
        assert_eq!(
            (mem.current_bytes, mem.peak_bytes, mem.anon_bytes),
            (8192, 16384, 4096)
        );
        assert_eq!(r.pids.as_ref().unwrap().current, 3);
        let io = r.io_pressure.as_ref().unwrap();
        assert_eq!(
            (io.some_seconds_total, io.full_seconds_total),
            (3.0, Some(1.0))
        );
    }

    #[test]
    fn run_queue_percentiles_come_from_the_interval_histogram() {
        // 100 waits: 50 in [1024, 2048) ns, 49 in [4096, 8192), 1 in [2^20, 2^21).
        let mut before = RunQueueHistogram::default();
        before.buckets[10] = 7;
        before.count = 7;
        let mut now = before;
        now.buckets[10] += 50;
        now.buckets[12] += 49;
        now.buckets[20] += 1;
        now.count += 100;
        now.sum_ns = 123_000;
        let l = run_queue_latency(&now, Some(&before));
        assert_eq!(l.count, 100);
        assert!(
            (1024e-9..=2048e-9).contains(&l.p50_seconds),
            "p50 {}",
            l.p50_seconds
        );
        assert!(
            (4096e-9..=8192e-9).contains(&l.p99_seconds),
            "p99 {}",
            l.p99_seconds
        );
        assert_eq!(l.max_seconds, (1u64 << 21) as f64 / 1e9);
        assert_eq!(l.log2_ns_buckets_total, now.buckets.to_vec());
        assert_eq!(l.sum_seconds_total, 123e-6);
        let idle = run_queue_latency(&now, Some(&now));
        assert_eq!(
            (idle.count, idle.p99_seconds, idle.max_seconds),
            (0, 0.0, 0.0)
        );
    }

    #[test]
    fn task_refs_take_role_and_request_from_the_task() {
        let info = TaskInfo {
            task_id: "t".to_owned(),
            resources: vec![
                strata_proto::Resource {
                    allocation_role: "eng/ml".to_owned(),
                    ..strata_proto::Resource::scalar(names::CPUS, 1.5)
                },
                strata_proto::Resource::scalar(names::MEM, 64.0),
            ],
            ..TaskInfo::default()
        };
        let t = TaskRef::from_task("fw", &info);
        assert_eq!((t.role.as_str(), t.request_cores), ("eng/ml", 1.5));
        assert_eq!(TaskRef::from_task("fw", &TaskInfo::default()).role, "*");
    }
}
