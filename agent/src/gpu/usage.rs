//! Per-task GPU usage: each interval, per device, NVML's running processes (with their memory)
//! and the process utilisation samples taken since the last poll; each pid is mapped to its
//! task by the unified-hierarchy line of `<proc>/PID/cgroup`, and the figures are summed per
//! task and GPU. Also each device's own figures, for the agent's `/metrics` and `/gpus`.
//!
//! Cost: three backend calls per device per interval (processes, samples, status) and one
//! small file read per GPU process; nothing per task without GPUs.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use strata_proto::GpuUsage;

use super::{DeviceStatus, GpuBackend, GpuDevice};

/// The most bytes of `/proc/PID/cgroup` read (a line per hierarchy).
const MAX_CGROUP_FILE: u64 = 16 * 1024;

/// One device's figures at the last poll.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReading {
    /// The device.
    pub device: GpuDevice,
    /// Its figures (all `None` where NVML could not be read).
    pub status: DeviceStatus,
}

/// The devices' latest figures, shared with the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct LatestDevices(Arc<RwLock<Vec<DeviceReading>>>);

impl LatestDevices {
    /// The latest readings, by index.
    pub fn get(&self) -> Vec<DeviceReading> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, readings: Vec<DeviceReading>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = readings;
    }
}

/// The task `(framework id, task id)` whose cgroup holds `pid`: its unified-hierarchy cgroup
/// (`0::` line of `<proc_root>/PID/cgroup`) is `<tasks_root>/containers/<fw>/<task>` or below
/// it. `tasks_root` is the agent's root as a path of that hierarchy (`/strata-...`); `None`
/// for a process of no task of this agent, or one that is gone.
pub fn task_of_pid(proc_root: &Path, pid: u32, tasks_root: &str) -> Option<(String, String)> {
    let mut text = String::new();
    std::fs::File::open(proc_root.join(pid.to_string()).join("cgroup"))
        .and_then(|f| f.take(MAX_CGROUP_FILE).read_to_string(&mut text))
        .ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = tasks_root.trim_end_matches('/');
    let below = path.strip_prefix(root)?.strip_prefix("/containers/")?;
    let mut parts = below.split('/');
    let (framework, task) = (parts.next()?, parts.next()?);
    if framework.is_empty() || task.is_empty() {
        return None;
    }
    Some((framework.to_owned(), task.to_owned()))
}

/// Polls the backend each interval; see the module docs.
#[derive(Debug)]
pub struct GpuPoller {
    backend: Arc<dyn GpuBackend>,
    devices: Vec<GpuDevice>,
    proc_root: PathBuf,
    tasks_root: String,
    /// Per device index, the newest sample timestamp seen.
    last_sample_us: HashMap<u32, u64>,
    latest: LatestDevices,
}

/// What one poll found: per task, its use of each GPU it has processes on.
pub type TaskGpus = HashMap<(String, String), Vec<GpuUsage>>;

impl GpuPoller {
    /// A poller of `devices` through `backend`, mapping pids under `proc_root` to the tasks
    /// below `tasks_root` (see [`task_of_pid`]); device readings go to `latest`.
    pub fn new(
        backend: Arc<dyn GpuBackend>,
        devices: Vec<GpuDevice>,
        proc_root: PathBuf,
        tasks_root: String,
        latest: LatestDevices,
    ) -> Self {
        Self {
            backend,
            devices,
            proc_root,
            tasks_root,
            last_sample_us: HashMap::new(),
            latest,
        }
    }

    /// One poll of every device.
    pub fn poll(&mut self) -> TaskGpus {
        let mut tasks: TaskGpus = HashMap::new();
        let mut readings = Vec::with_capacity(self.devices.len());
        let mut owners: HashMap<u32, Option<(String, String)>> = HashMap::new();
        for device in &self.devices {
            let index = device.index;
            let status = self.backend.status(index).unwrap_or_else(|e| {
                tracing::debug!(index, error = %e, "cannot read the GPU's figures");
                DeviceStatus::default()
            });
            readings.push(DeviceReading {
                device: device.clone(),
                status,
            });
            let processes = match self.backend.processes(index) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(index, error = %e, "cannot list the GPU's processes");
                    continue;
                }
            };
            let since = self.last_sample_us.get(&index).copied().unwrap_or(0);
            let samples = self
                .backend
                .process_samples(index, since)
                .unwrap_or_else(|e| {
                    tracing::debug!(index, error = %e, "cannot read the GPU's process samples");
                    Vec::new()
                });
            if let Some(newest) = samples.iter().map(|s| s.timestamp_us).max() {
                self.last_sample_us.insert(index, newest.max(since));
            }
            // Per pid: the mean SM share of its samples in this interval.
            let mut sm: HashMap<u32, (u64, u64)> = HashMap::new();
            for s in &samples {
                let e = sm.entry(s.pid).or_default();
                e.0 += u64::from(s.sm_percent.min(100));
                e.1 += 1;
            }
            let mut pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
            pids.extend(sm.keys().copied());
            pids.sort_unstable();
            pids.dedup();
            for pid in pids {
                let owner = owners
                    .entry(pid)
                    .or_insert_with(|| task_of_pid(&self.proc_root, pid, &self.tasks_root));
                let Some(owner) = owner else {
                    continue;
                };
                let memory: u64 = processes
                    .iter()
                    .filter(|p| p.pid == pid)
                    .filter_map(|p| p.used_memory_bytes)
                    .sum();
                let percent = sm.get(&pid).map_or(0.0, |(sum, n)| *sum as f64 / *n as f64);
                let entries = tasks.entry(owner.clone()).or_default();
                let entry = match entries.iter_mut().position(|g| g.index == index) {
                    Some(i) => &mut entries[i],
                    None => {
                        entries.push(GpuUsage {
                            uuid: device.uuid.clone(),
                            index,
                            ..GpuUsage::default()
                        });
                        entries.last_mut().expect("just pushed")
                    }
                };
                entry.memory_used_bytes = entry.memory_used_bytes.saturating_add(memory);
                entry.sm_utilization_percent = (entry.sm_utilization_percent + percent).min(100.0);
            }
        }
        self.latest.set(readings);
        tasks
    }
}

/// The task's record of its assigned GPUs (`uuids`, with their indexes): what `found` says of
/// each, zero where its processes hold none of it yet.
pub fn task_record(assigned: &[(u32, String)], found: Option<&Vec<GpuUsage>>) -> Vec<GpuUsage> {
    let mut out: Vec<GpuUsage> = assigned
        .iter()
        .map(|(index, uuid)| {
            found
                .and_then(|f| f.iter().find(|g| &g.uuid == uuid))
                .cloned()
                .unwrap_or_else(|| GpuUsage {
                    uuid: uuid.clone(),
                    index: *index,
                    ..GpuUsage::default()
                })
        })
        .collect();
    // A GPU the task was not given but uses anyway (it cannot with device control on).
    if let Some(found) = found {
        out.extend(
            found
                .iter()
                .filter(|g| !assigned.iter().any(|(_, u)| u == &g.uuid))
                .cloned(),
        );
    }
    out.sort_by_key(|g| g.index);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::{FakeBackend, fake_device};
    use crate::gpu::{GpuProcess, ProcessSample};

    fn proc_with(dir: &Path, pid: u32, cgroup: &str) {
        let d = dir.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup"), cgroup).unwrap();
    }

    #[test]
    fn pids_map_to_tasks_by_their_unified_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // Pure v2, and a hybrid host's lines (v1 controllers first).
        proc_with(p, 10, "0::/strata-ab/containers/fw/t1\n");
        proc_with(
            p,
            11,
            "12:memory:/x/strata-ab/containers/fw/t2\n0::/strata-ab/containers/fw/t2/sub\n",
        );
        proc_with(p, 12, "0::/other-agent/containers/fw/t1\n");
        proc_with(p, 13, "0::/strata-ab/agent\n");
        proc_with(p, 14, "0::/strata-abc/containers/fw/t1\n");
        let of = |pid| task_of_pid(p, pid, "/strata-ab");
        assert_eq!(of(10), Some(("fw".to_owned(), "t1".to_owned())));
        assert_eq!(of(11), Some(("fw".to_owned(), "t2".to_owned())));
        assert_eq!(of(12), None, "another agent's task");
        assert_eq!(of(13), None, "the agent itself");
        assert_eq!(of(14), None, "a root that only starts the same");
        assert_eq!(of(99), None, "gone");
    }

    #[test]
    fn usage_is_summed_per_task_and_gpu_with_three_calls_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        proc_with(p, 100, "0::/root/containers/fw/a\n");
        proc_with(p, 101, "0::/root/containers/fw/a\n");
        proc_with(p, 200, "0::/root/containers/fw/b\n");
        proc_with(p, 300, "0::/user.slice/someone\n");
        let fake = FakeBackend::new(vec![fake_device(0), fake_device(1)]);
        let proc = |pid, mib: u64| GpuProcess {
            pid,
            used_memory_bytes: Some(mib << 20),
        };
        let sample = |pid, t, sm| ProcessSample {
            pid,
            timestamp_us: t,
            sm_percent: sm,
            memory_percent: 0,
        };
        fake.set_processes(
            0,
            vec![proc(100, 512), proc(101, 256), proc(300, 64)],
            vec![
                sample(100, 1, 40),
                sample(100, 2, 60),
                sample(101, 2, 30),
                sample(300, 2, 90),
            ],
        );
        fake.set_processes(1, vec![proc(200, 1024)], vec![]);
        let latest = LatestDevices::default();
        let mut poller = GpuPoller::new(
            Arc::new(fake.clone()),
            vec![fake_device(0), fake_device(1)],
            p.to_path_buf(),
            "/root".to_owned(),
            latest.clone(),
        );
        let calls = fake.calls();
        let found = poller.poll();
        assert_eq!(fake.calls() - calls, 6, "three calls per device");
        let a = &found[&("fw".to_owned(), "a".to_owned())];
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].uuid, "GPU-fake-0");
        assert_eq!(a[0].memory_used_bytes, 768 << 20);
        // pid 100: mean of 40 and 60; pid 101: 30.
        assert!((a[0].sm_utilization_percent - 80.0).abs() < 1e-9, "{a:?}");
        let b = &found[&("fw".to_owned(), "b".to_owned())];
        assert_eq!((b[0].index, b[0].memory_used_bytes), (1, 1024 << 20));
        assert_eq!(b[0].sm_utilization_percent, 0.0);
        assert_eq!(found.len(), 2, "pid 300 is nobody's task");
        assert_eq!(latest.get().len(), 2);
        // The next poll sees only newer samples: none, so no utilisation.
        let again = poller.poll();
        assert_eq!(
            again[&("fw".to_owned(), "a".to_owned())][0].sm_utilization_percent,
            0.0
        );
    }

    #[test]
    fn a_task_record_lists_its_assigned_gpus_even_unused() {
        let assigned = vec![(0, "GPU-fake-0".to_owned()), (1, "GPU-fake-1".to_owned())];
        let found = vec![GpuUsage {
            uuid: "GPU-fake-1".to_owned(),
            index: 1,
            memory_used_bytes: 5,
            sm_utilization_percent: 50.0,
        }];
        let record = task_record(&assigned, Some(&found));
        assert_eq!(record.len(), 2);
        assert_eq!((record[0].index, record[0].memory_used_bytes), (0, 0));
        assert_eq!(record[1], found[0]);
        assert!(task_record(&[], None).is_empty());
    }
}
