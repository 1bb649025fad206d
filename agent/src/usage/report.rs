//! What the collector makes each interval ([`UsageReport`]: every running task's record, the
//! quiet ones shared with earlier reports) and where the latest one is kept for the agent's HTTP
//! server ([`LatestUsage`]).

use std::sync::{Arc, PoisonError, RwLock};

use strata_proto::TaskUsage;

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

    pub(super) fn set_last_collect_seconds(&self, seconds: f64) {
        *self
            .last_collect_seconds
            .write()
            .unwrap_or_else(PoisonError::into_inner) = seconds;
    }
}
