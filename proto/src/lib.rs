//! Strata's wire protocol (package `strata.v1`): the agent's Connect stream, the scheduler's
//! Subscribe stream and the operator API, generated at build time from `proto/strata/v1`
//! by protox (no protoc needed), plus a few constructors every side uses.
//!
//! Clients are built with `XxxClient::new(channel)`: the generated `connect` constructor is
//! switched off because `AgentService` has an rpc of that name.

/// The `strata.v1` package.
#[allow(missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

pub use v1::*;

/// Well-known resource names.
pub mod names {
    /// CPU cores (scalar).
    pub const CPUS: &str = "cpus";
    /// Memory in MiB (scalar).
    pub const MEM: &str = "mem";
    /// Disk in MiB (scalar).
    pub const DISK: &str = "disk";
    /// GPU devices (scalar, whole numbers).
    pub const GPUS: &str = "gpus";
    /// TCP/UDP ports (ranges).
    pub const PORTS: &str = "ports";
}

impl Resource {
    /// An unreserved scalar resource.
    pub fn scalar(name: &str, value: f64) -> Self {
        Self {
            name: name.to_owned(),
            kind: ResourceKind::Scalar as i32,
            scalar: value,
            ..Self::default()
        }
    }

    /// An unreserved ranges resource, each range closed at both ends.
    pub fn ranges(name: &str, ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        Self {
            name: name.to_owned(),
            kind: ResourceKind::Ranges as i32,
            ranges: ranges
                .into_iter()
                .map(|(begin, end)| ValueRange { begin, end })
                .collect(),
            ..Self::default()
        }
    }
}

/// The sum of the scalar resources named `name`.
pub fn scalar_sum(resources: &[Resource], name: &str) -> f64 {
    resources
        .iter()
        .filter(|r| r.name == name && r.kind() == ResourceKind::Scalar)
        .map(|r| r.scalar)
        .sum()
}

impl TaskState {
    /// Whether no further update follows this state for the task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished
                | Self::Failed
                | Self::Killed
                | Self::Error
                | Self::Lost
                | Self::Dropped
                | Self::Gone
        )
    }

    /// The short upper-case name used in CLI output and logs, e.g. `TASK_RUNNING`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "TASK_UNSPECIFIED",
            Self::Staging => "TASK_STAGING",
            Self::Starting => "TASK_STARTING",
            Self::Running => "TASK_RUNNING",
            Self::Killing => "TASK_KILLING",
            Self::Finished => "TASK_FINISHED",
            Self::Failed => "TASK_FAILED",
            Self::Killed => "TASK_KILLED",
            Self::Error => "TASK_ERROR",
            Self::Lost => "TASK_LOST",
            Self::Dropped => "TASK_DROPPED",
            Self::Unreachable => "TASK_UNREACHABLE",
            Self::Gone => "TASK_GONE",
            Self::Unknown => "TASK_UNKNOWN",
        }
    }
}

impl TaskUsage {
    /// Carries a record forward to `timestamp`, for a task whose agent found nothing changed
    /// since it was taken (a quiet task: no CPU used in the record's interval and none since).
    /// It then covers `(self.timestamp, timestamp]`: its cumulative figures stand, and what it
    /// says of its interval is that nothing happened in it (no cores, no run-queue waits).
    /// A record already at or after `timestamp` is left alone.
    pub fn carry_forward(&mut self, timestamp: f64) {
        if timestamp <= self.timestamp {
            return;
        }
        self.interval_seconds = timestamp - self.timestamp;
        self.timestamp = timestamp;
        if let Some(cpu) = &mut self.cpu {
            cpu.cores = 0.0;
            if let Some(q) = &mut cpu.run_queue {
                q.count = 0;
                q.p50_seconds = 0.0;
                q.p99_seconds = 0.0;
                q.max_seconds = 0.0;
            }
        }
    }

    /// A copy of the record carried forward to `timestamp` (see [`TaskUsage::carry_forward`]).
    #[must_use]
    pub fn carried_forward(&self, timestamp: f64) -> Self {
        let mut record = self.clone();
        record.carry_forward(timestamp);
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_sum_adds_only_matching_scalars() {
        let rs = vec![
            Resource::scalar(names::CPUS, 1.5),
            Resource::scalar(names::MEM, 128.0),
            Resource::scalar(names::CPUS, 0.5),
            Resource::ranges(names::PORTS, [(31000, 31010)]),
        ];
        assert!((scalar_sum(&rs, names::CPUS) - 2.0).abs() < 1e-9);
        assert!((scalar_sum(&rs, names::MEM) - 128.0).abs() < 1e-9);
        assert_eq!(scalar_sum(&rs, names::PORTS), 0.0);
    }

    #[test]
    fn terminal_states_match_mesos() {
        assert!(TaskState::Finished.is_terminal());
        assert!(TaskState::Lost.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert!(!TaskState::Unreachable.is_terminal());
        assert_eq!(TaskState::Running.label(), "TASK_RUNNING");
    }

    #[test]
    fn a_carried_forward_record_keeps_its_totals_and_reports_an_idle_interval() {
        let mut u = TaskUsage {
            timestamp: 100.0,
            interval_seconds: 1.0,
            cpu: Some(CpuUsage {
                user_seconds_total: 2.5,
                cores: 0.25,
                run_queue: Some(RunQueueLatency {
                    count: 3,
                    p50_seconds: 0.001,
                    p99_seconds: 0.002,
                    max_seconds: 0.004,
                    log2_ns_buckets_total: vec![0, 3],
                    sum_seconds_total: 0.003,
                }),
                ..CpuUsage::default()
            }),
            memory: Some(MemoryUsage {
                current_bytes: 4096,
                ..MemoryUsage::default()
            }),
            ..TaskUsage::default()
        };
        let before = u.clone();
        u.carry_forward(99.0);
        assert_eq!(u, before, "an older timestamp changes nothing");
        u.carry_forward(104.0);
        assert_eq!((u.timestamp, u.interval_seconds), (104.0, 4.0));
        let cpu = u.cpu.as_ref().unwrap();
        assert_eq!((cpu.user_seconds_total, cpu.cores), (2.5, 0.0));
        let q = cpu.run_queue.as_ref().unwrap();
        assert_eq!(
            (q.count, q.p50_seconds, q.p99_seconds, q.max_seconds),
            (0, 0.0, 0.0, 0.0)
        );
        assert_eq!(
            (q.log2_ns_buckets_total.as_slice(), q.sum_seconds_total),
            (&[0, 3][..], 0.003)
        );
        assert_eq!(u.memory, before.memory);
    }
}
