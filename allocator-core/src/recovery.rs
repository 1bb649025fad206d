//! Recovery after an allocator restart: agents known from the registry have
//! `agent_reregister_timeout` to re-register (as Mesos' agent re-registration window after
//! a master failover). Tasks are not in the registry, so while any of them is still away,
//! explicit reconciliation of a task the allocator does not know (on the agent named, or on
//! any when none is named) answers nothing at once: the framework is answered when the task
//! comes back with its agent (its state), when the agent it named comes back without it, or
//! when every agent has come back or the window has ended (LOST, as before).
//!
//! Invariants: a reconciliation waits only while `recovery_until` is set, not passed, and
//! some known agent has not re-registered; every waiting one is answered exactly once (or
//! dropped with its framework).

use std::time::Duration;

use strata_proto::{TaskReason, TaskState};

use super::{AgentId, Core, TaskKey};

impl Core {
    /// Whether explicit reconciliation of an unknown task on `agent_id` (empty: not named)
    /// waits for recovering agents.
    pub(super) fn awaits_agent(&self, now: Duration, agent_id: &str) -> bool {
        self.recovery_until.is_some_and(|until| now < until)
            && if agent_id.is_empty() {
                !self.known_agents.is_empty()
            } else {
                self.known_agents
                    .contains_key(&AgentId(agent_id.to_owned()))
            }
    }

    /// A task came back with a re-registering agent: a waiting reconciliation of it gets
    /// its state.
    pub(super) fn task_recovered(&mut self, now: Duration, key: &TaskKey) {
        if self.pending_reconciles.remove(key).is_none() {
            return;
        }
        if let Some(task) = self.tasks.get(key) {
            let status = self.reconcile_status(now, task);
            self.send_update(&key.0, status);
        }
    }

    /// A re-registering agent listed the task as ended: the framework learns its state from
    /// the agent's own update, which follows.
    pub(super) fn task_reported_by_agent(&mut self, key: &TaskKey) {
        self.pending_reconciles.remove(key);
    }

    /// Agent `id` re-registered: waiting reconciliations that named it, and all of them once
    /// every known agent is back, answer LOST.
    pub(super) fn agent_recovered(&mut self, now: Duration, id: &AgentId) {
        if self.recovery_until.is_none() {
            return;
        }
        let all_back = self.known_agents.is_empty();
        if all_back {
            tracing::info!("every agent known from the registry re-registered; recovery done");
            self.recovery_until = None;
        }
        let done: Vec<TaskKey> = self
            .pending_reconciles
            .iter()
            .filter(|(_, agent)| all_back || *agent == id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in done {
            self.answer_lost(now, key, "its agent re-registered without it");
        }
    }

    /// The re-registration window ended: waiting reconciliations answer LOST.
    pub(super) fn expire_recovery(&mut self, now: Duration) {
        if self.recovery_until.is_none_or(|until| now < until) {
            return;
        }
        tracing::info!(
            missing = self.known_agents.len(),
            "agent re-registration window ended"
        );
        self.recovery_until = None;
        let keys: Vec<TaskKey> = self.pending_reconciles.keys().cloned().collect();
        for key in keys {
            self.answer_lost(now, key, "no agent re-registered with it in time");
        }
    }

    fn answer_lost(&mut self, now: Duration, key: TaskKey, why: &str) {
        let Some(agent_id) = self.pending_reconciles.remove(&key) else {
            return;
        };
        if !self.frameworks.contains_key(&key.0) {
            return;
        }
        let status = match self.tasks.get(&key).or_else(|| self.history.get(&key)) {
            Some(task) => self.reconcile_status(now, task),
            None => Self::allocator_status(
                now,
                &key.0,
                &key.1.0,
                &agent_id.0,
                TaskState::Lost,
                TaskReason::Reconciliation,
                format!("task {:?} is unknown to the allocator: {why}", key.1.0),
            ),
        };
        self.send_update(&key.0, status);
    }
}
