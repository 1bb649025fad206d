//! What happened in the cluster, as operators subscribed to its events hear of it (Mesos'
//! v1 operator SUBSCRIBE): agents added (registered or re-registered) and removed
//! (unreachable), agents updated (an operator drained, deactivated or reactivated them),
//! frameworks added, updated (re-subscribed, disconnected, UPDATE_FRAMEWORK)
//! and removed, tasks added and each change of a task's state.
//!
//! Invariants: changes are recorded only while [`Core::observe`] is on (the edge turns it on
//! while someone listens), in the order they happened, and each carries what operators see
//! at that moment (the operator views), so the edge needs no second look at the
//! core. A task's change is recorded only when the state operators see changes (as Mesos'
//! TASK_UPDATED), not for resent updates or reconciliation.

use strata_proto::{AgentSummary, FrameworkSummary, TaskState, TaskStatus, TaskSummary};

use super::Core;

/// One change operators hear of.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An agent registered, or re-registered.
    AgentAdded(AgentSummary),
    /// An agent became unreachable: its resources left the cluster.
    AgentRemoved {
        /// The agent.
        agent_id: String,
    },
    /// An operator drained, deactivated or reactivated an agent: its mode changed.
    AgentUpdated(AgentSummary),
    /// A framework subscribed for the first time.
    FrameworkAdded(FrameworkSummary),
    /// A framework re-subscribed, disconnected or was updated.
    FrameworkUpdated(FrameworkSummary),
    /// A framework was removed (teardown, or its failover timeout passed).
    FrameworkRemoved(FrameworkSummary),
    /// A task was launched (or adopted from a re-registering agent).
    TaskAdded(TaskSummary),
    /// A task's state changed.
    TaskUpdated {
        /// The update that changed it (the agent's, or one the allocator made).
        status: TaskStatus,
        /// The task's state as operators see it now.
        state: TaskState,
    },
}

impl Core {
    /// Whether to record [`Change`]s; off by default, and turning it off drops those not
    /// yet taken.
    pub fn observe(&mut self, on: bool) {
        self.observing = on;
        if !on {
            self.changes.clear();
        }
    }

    /// The changes recorded since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Records the change `make` builds, if observed.
    pub(crate) fn note(&mut self, make: impl FnOnce(&Self) -> Option<Change>) {
        if self.observing
            && let Some(change) = make(self)
        {
            self.changes.push(change);
        }
    }
}
