//! Per-task usage records: every reporting interval (1 s by default) the [`Collector`] reads
//! each running task's cgroup files and the eBPF counters of its unified cgroup and makes one
//! [`TaskUsage`](strata_proto::TaskUsage) per task. [`run`] does it on a timer, keeps the
//! latest records in [`LatestUsage`] (served by the agent's HTTP server) and hands them to the
//! agent's core, which streams them to the allocator.
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
//! reads the report carries it forward to the report's time
//! ([`TaskUsage::carry_forward`](strata_proto::TaskUsage::carry_forward)).
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
//!
//! Files: `mod.rs` (what a task is to the collector, and [`run`], the loop), `layout.rs` (where
//! the task cgroups are, per hierarchy), `collect.rs` (the [`Collector`]: one record per task
//! per interval, reused for quiet tasks), `report.rs` ([`UsageReport`], [`LatestUsage`]),
//! `read.rs` (reading one cgroup's files).

mod collect;
mod layout;
pub(crate) mod read;
mod report;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use strata_proto::{TaskInfo, names};
use tokio::sync::{mpsc, watch};

use crate::ebpf::Ebpf;
pub use collect::{Collected, Collector, run_queue_latency};
pub use layout::{HybridRoots, Layout};
pub use report::{LatestUsage, UsageReport};

/// The eBPF programs, shared between the usage collector and whoever else reads their maps.
pub type SharedEbpf = Arc<Mutex<Ebpf>>;

/// The default reporting interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How often the collector gives the allocator's free memory back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

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
    /// The GPUs assigned to it: (NVML index, UUID).
    pub gpus: Vec<(u32, String)>,
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
            gpus: Vec::new(),
        }
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
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::discovery::CgroupMode;
    use crate::ebpf::RunQueueHistogram;

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
            gpus: Vec::new(),
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
