//! The [`Collector`]: one usage record per running task per interval, from its cgroup files
//! and the eBPF maps. A quiet task (eBPF saw it not run and it used no CPU in its last full
//! interval) keeps its last record instead of being read again, up to
//! [`Collector::full_every`] intervals; its limits are read once a minute. See the parent
//! module's docs for where each figure comes from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_agent_common::CgroupId;
use strata_proto::{
    CpuUsage, IoDeviceUsage, MemoryUsage, NetworkUsage, PidsUsage, Pressure, RunQueueLatency,
    TaskUsage,
};

use super::layout::{Layout, TaskDirs};
use super::read::{self, Reader};
use super::{TaskRef, UsageReport};
use crate::ebpf::{Ebpf, EgressControl, NetTraffic, RunQueueHistogram};

/// How often a task's limits (set at launch, never changed by the agent) are read again.
const LIMITS_EVERY: Duration = Duration::from_secs(60);

/// How often (in intervals) a quiet task is read in full anyway.
const DEFAULT_FULL_EVERY: u32 = 30;

/// What the collector remembers of a task between intervals.
#[derive(Debug)]
pub(super) struct Seen {
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
    /// Every cgroup's eBPF on-CPU time, read in batches at the start of the pass (for the
    /// quiet check; a task that moved is read again on its own); `None` when batches fail.
    cpu_times: Option<HashMap<CgroupId, u64>>,
    egress: Option<&'a std::sync::Mutex<EgressControl>>,
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
    pub(super) seen: Vec<Option<Seen>>,
    reader: Reader,
    /// Full reads made by the last [`Collector::collect`] (the rest reused a record).
    pub last_full_reads: usize,
    /// The egress limiter, whose drops go into the records' network usage.
    pub egress: Option<Arc<std::sync::Mutex<EgressControl>>>,
    /// The GPU poller (an agent with GPUs): the records of tasks given GPUs, or using one, get
    /// their `gpus` from it.
    pub gpus: Option<crate::gpu::usage::GpuPoller>,
    /// Whether a failed batched read of the eBPF CPU map was logged (once).
    batch_warned: bool,
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
            gpus: None,
            egress: None,
            batch_warned: false,
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
        let egress = self.egress.clone();
        let cpu_times = ebpf.and_then(|e| match e.cpu_times() {
            Ok(times) => Some(times),
            Err(err) => {
                if !self.batch_warned {
                    self.batch_warned = true;
                    tracing::warn!("one eBPF map lookup per task instead: {err}");
                }
                None
            }
        });
        let pass = Pass {
            ebpf,
            cpu_times,
            egress: egress.as_deref(),
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
        if let Some(poller) = &mut self.gpus {
            let found = poller.poll();
            apply_gpus(&mut report, &self.tasks, &found);
        }
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
    let mut oncpu_ns = match check_quiet(pass, slot) {
        Quietness::Quiet => return Sampled::Quiet,
        Quietness::Moved { oncpu_ns } => oncpu_ns,
    };

    let mut previous = slot.take();
    let Some(dirs) = previous
        .as_mut()
        .map(|s| std::mem::take(&mut s.dirs))
        .or_else(|| TaskDirs::of(layout, task))
    else {
        return Sampled::Missing;
    };
    let (cgroup_id, net) = ebpf_figures(pass, previous.as_ref(), &dirs, &mut oncpu_ns);

    let previous_limits = previous
        .as_ref()
        .filter(|s| now.duration_since(s.limits_at) < LIMITS_EVERY)
        .map(|s| (s.limits_at, limits_of(&s.record)));
    let Some(files) = read_cgroup(layout, r, &dirs, previous_limits.is_none()) else {
        return Sampled::Missing;
    };
    let mut cpu = files.cpu.unwrap_or_default();
    let mut memory = files.memory.unwrap_or_default();
    let (pids_current, mut pids_limit) = files.pids.unwrap_or_default();
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
    let record = make_record(
        pass,
        task,
        Figures {
            interval,
            cores,
            oncpu_ns,
            cpu,
            run_queue: run_queue_record,
            memory,
            peak,
            pids: (pids_current, pids_limit),
            io: files.io,
            net,
            pressure: files.pressure,
        },
    );
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

/// Whether a task's last record stands (see [`check_quiet`]).
enum Quietness {
    /// It does: the task is quiet.
    Quiet,
    /// It must be read; its eBPF on-CPU time if it was read.
    Moved { oncpu_ns: Option<u64> },
}

/// A task seen before whose on-CPU time has not moved, and that used no CPU in its last full
/// interval, cannot have changed what it uses: its last record stands (unless it is due for a
/// full read, or the record was made before the agent had its id). A quiet task is marked seen
/// now.
fn check_quiet(pass: &Pass<'_>, slot: &mut Option<Seen>) -> Quietness {
    let mut oncpu_ns = None;
    if let Some(e) = pass.ebpf
        && let Some(seen) = slot.as_mut()
        && let Some(id) = seen.cgroup_id
    {
        oncpu_ns = match &pass.cpu_times {
            Some(times) => Some(times.get(&id).copied().unwrap_or(0)),
            None => e.cpu_time_ns(id).ok(),
        };
        // (A record made before the agent had its id is made again.)
        let quiet = oncpu_ns.is_some()
            && oncpu_ns == seen.oncpu_ns
            && seen.record.cpu.as_ref().is_some_and(|c| c.cores == 0.0)
            && seen.since_full + 1 < pass.full_every
            && seen.record.agent_id == pass.agent_id;
        if quiet {
            seen.since_full += 1;
            seen.at = pass.now;
            return Quietness::Quiet;
        }
        if pass.cpu_times.is_some() {
            // Read again next to the cgroup's files, so both figures are of the same moment
            // (the batch was read at the start of the pass).
            oncpu_ns = None;
        }
    }
    Quietness::Moved { oncpu_ns }
}

/// The task's eBPF identity (the id of its unified cgroup, kept from its previous sample) and
/// its network counters; its on-CPU time too, when the quiet check did not read it.
fn ebpf_figures(
    pass: &Pass<'_>,
    previous: Option<&Seen>,
    dirs: &TaskDirs,
    oncpu_ns: &mut Option<u64>,
) -> (Option<CgroupId>, Option<NetTraffic>) {
    let cgroup_id = match previous.and_then(|s| s.cgroup_id) {
        Some(id) => Some(id),
        None => dirs
            .unified
            .as_deref()
            .and_then(|d| crate::ebpf::cgroup_id(d).ok()),
    };
    let net = match (pass.ebpf, cgroup_id) {
        (Some(e), Some(id)) => {
            if oncpu_ns.is_none() {
                *oncpu_ns = e.cpu_time_ns(id).ok();
            }
            e.net_counters(id).ok().map(|mut n| {
                // What the egress limiter dropped (counted as sent by cgroup_skb, which runs
                // before it).
                if let Some(Ok(control)) = pass.egress.map(std::sync::Mutex::lock) {
                    n.dropped = control.dropped(id);
                }
                n
            })
        }
        _ => None,
    };
    (cgroup_id, net)
}

/// What a task's cgroup files say.
struct CgroupFiles {
    cpu: Option<read::Cpu>,
    memory: Option<read::Memory>,
    /// Current, limit.
    pids: Option<(u64, u64)>,
    io: Vec<IoDeviceUsage>,
    /// cpu, memory, io (from the unified cgroup).
    pressure: [Option<Pressure>; 3],
}

/// Reads a task's cgroup files: cpu, memory, pids (their limits too when `limits`) and io,
/// then, unless the cgroup is gone (or not made yet: no figure at all, and `None`), its PSI.
fn read_cgroup(
    layout: &Layout,
    r: &mut Reader,
    dirs: &TaskDirs,
    limits: bool,
) -> Option<CgroupFiles> {
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
        return None;
    }
    let mut psi = |name: &str| {
        dirs.unified
            .as_deref()
            .and_then(|d| read::pressure(r, d, name))
    };
    let pressure = [
        psi("cpu.pressure"),
        psi("memory.pressure"),
        psi("io.pressure"),
    ];
    Some(CgroupFiles {
        cpu,
        memory,
        pids,
        io,
        pressure,
    })
}

/// What a full read of a task found, for its record.
struct Figures {
    /// Seconds since the task's previous sample (0 for its first).
    interval: f64,
    cores: f64,
    oncpu_ns: Option<u64>,
    cpu: read::Cpu,
    run_queue: Option<RunQueueLatency>,
    memory: read::Memory,
    peak: u64,
    /// Current, limit.
    pids: (u64, u64),
    io: Vec<IoDeviceUsage>,
    net: Option<NetTraffic>,
    /// cpu, memory, io.
    pressure: [Option<Pressure>; 3],
}

/// Puts each task's GPU usage into its record: the GPUs it was given (zero where its processes
/// hold none) and any other its processes use. Such a record is read anew every interval (a
/// quiet task's is carried forward first), as its GPU figures move while its CPU may not.
fn apply_gpus(report: &mut UsageReport, tasks: &[TaskRef], found: &crate::gpu::usage::TaskGpus) {
    let assigned: HashMap<(&str, &str), &[(u32, String)]> = tasks
        .iter()
        .filter(|t| !t.gpus.is_empty())
        .map(|t| {
            (
                (t.framework_id.as_str(), t.task_id.as_str()),
                t.gpus.as_slice(),
            )
        })
        .collect();
    if assigned.is_empty() && found.is_empty() {
        return;
    }
    for i in 0..report.records.len() {
        let r = &report.records[i];
        let given = assigned
            .get(&(r.framework_id.as_str(), r.task_id.as_str()))
            .copied()
            .unwrap_or_default();
        let used = found.get(&(r.framework_id.clone(), r.task_id.clone()));
        if given.is_empty() && used.is_none() {
            continue;
        }
        let mut record = if report.fresh[i] {
            (**r).clone()
        } else {
            r.carried_forward(report.timestamp)
        };
        record.gpus = crate::gpu::usage::task_record(given, used);
        report.records[i] = Arc::new(record);
        report.fresh[i] = true;
    }
}

/// A task's record from what a full read found.
fn make_record(pass: &Pass<'_>, task: &TaskRef, f: Figures) -> TaskUsage {
    let [cpu_pressure, memory_pressure, io_pressure] = f.pressure;
    let (cpu, memory) = (f.cpu, f.memory);
    TaskUsage {
        task_id: task.task_id.clone(),
        framework_id: task.framework_id.clone(),
        agent_id: pass.agent_id.to_owned(),
        role: task.role.clone(),
        timestamp: pass.timestamp,
        interval_seconds: f.interval,
        cpu: Some(CpuUsage {
            user_seconds_total: cpu.user_ns as f64 / 1e9,
            system_seconds_total: cpu.system_ns as f64 / 1e9,
            oncpu_seconds_total: f.oncpu_ns.map(|ns| ns as f64 / 1e9),
            cores: f.cores,
            periods_total: cpu.periods,
            throttled_periods_total: cpu.throttled_periods,
            throttled_seconds_total: cpu.throttled_ns as f64 / 1e9,
            request_cores: task.request_cores,
            limit_cores: cpu.limit_cores,
            run_queue: f.run_queue,
        }),
        memory: Some(MemoryUsage {
            current_bytes: memory.current,
            peak_bytes: f.peak,
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
            current: f.pids.0,
            limit: f.pids.1,
        }),
        io: f.io,
        network: f.net.map(|n| NetworkUsage {
            rx_bytes_total: n.ingress.bytes,
            tx_bytes_total: n.egress.bytes,
            rx_packets_total: n.ingress.packets,
            tx_packets_total: n.egress.packets,
            tx_dropped_bytes_total: n.dropped.bytes,
            tx_dropped_packets_total: n.dropped.packets,
        }),
        cpu_pressure,
        memory_pressure,
        io_pressure,
        // Filled by the GPU poller (`crate::gpu::usage`) after the cgroup read.
        gpus: Vec::new(),
    }
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

#[cfg(test)]
mod gpu_tests {
    use strata_proto::GpuUsage;

    use super::*;

    fn record(task: &str, timestamp: f64) -> Arc<TaskUsage> {
        Arc::new(TaskUsage {
            task_id: task.to_owned(),
            framework_id: "fw".to_owned(),
            timestamp,
            interval_seconds: 1.0,
            ..TaskUsage::default()
        })
    }

    fn task(id: &str, gpus: &[(u32, &str)]) -> TaskRef {
        TaskRef {
            framework_id: "fw".to_owned(),
            task_id: id.to_owned(),
            role: "*".to_owned(),
            request_cores: 0.1,
            gpus: gpus.iter().map(|(i, u)| (*i, (*u).to_owned())).collect(),
        }
    }

    #[test]
    fn gpu_figures_go_into_the_records_of_tasks_given_or_using_gpus() {
        let mut report = UsageReport {
            timestamp: 10.0,
            records: vec![
                record("given", 10.0),
                record("quiet", 5.0),
                record("cpu", 5.0),
            ],
            fresh: vec![true, false, false],
            ..UsageReport::default()
        };
        let tasks = [
            task("given", &[(0, "GPU-0")]),
            task("quiet", &[(1, "GPU-1")]),
            task("cpu", &[]),
        ];
        let mut found = crate::gpu::usage::TaskGpus::new();
        found.insert(
            ("fw".to_owned(), "quiet".to_owned()),
            vec![GpuUsage {
                uuid: "GPU-1".to_owned(),
                index: 1,
                memory_used_bytes: 1 << 30,
                sm_utilization_percent: 75.0,
            }],
        );
        apply_gpus(&mut report, &tasks, &found);
        // Given a GPU its processes do not use yet: listed at zero.
        let given = &report.records[0];
        assert_eq!(given.gpus.len(), 1);
        assert_eq!(
            (given.gpus[0].index, given.gpus[0].memory_used_bytes),
            (0, 0)
        );
        // A quiet task's record is carried forward to the report's time with its GPU figures,
        // and sent as read anew (its GPU use moves while its CPU does not).
        let quiet = &report.records[1];
        assert_eq!(quiet.timestamp, 10.0);
        assert_eq!(quiet.gpus[0].memory_used_bytes, 1 << 30);
        assert_eq!(quiet.gpus[0].sm_utilization_percent, 75.0);
        assert_eq!(report.fresh, [true, true, false]);
        // A task without GPUs is left as it was.
        assert!(report.records[2].gpus.is_empty());
        assert_eq!(report.records[2].timestamp, 5.0);
    }
}
