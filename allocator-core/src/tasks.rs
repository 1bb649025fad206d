//! Task records: ending a task (freeing its resources) and the bounded terminal history.
//!
//! Invariants: a task is either active (in `Core::tasks`, indexed from its agent and its
//! framework, counted in both allocations) or terminal (in [`History`] only); ending a task
//! removes it from every index and allocation in one step. The history keeps at most
//! `terminal_task_history` tasks, oldest dropped first, and a task id reused after its task
//! ended replaces the older record. The history is in the registry (each entry under its
//! number), so it survives an allocator restart.

use std::collections::VecDeque;
use std::time::Duration;

use strata_proto::{TaskReason, TaskState};

use super::{AgentId, Core, FastMap, Task, TaskKey};

/// Terminal tasks, oldest first, bounded.
#[derive(Debug)]
pub(super) struct History {
    capacity: usize,
    next_seq: u64,
    order: VecDeque<(u64, TaskKey)>,
    entries: FastMap<TaskKey, (u64, Task)>,
}

impl History {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            next_seq: 0,
            order: VecDeque::new(),
            entries: FastMap::default(),
        }
    }

    /// Adds a terminal task; returns its number (none when nothing is kept) and the numbers
    /// of the entries it pushed out (the oldest, or an older record of the same task id).
    pub(super) fn push(&mut self, task: Task) -> (Option<u64>, Vec<u64>) {
        if self.capacity == 0 {
            return (None, Vec::new());
        }
        let seq = self.next_seq;
        let removed = self.insert(seq, task);
        (Some(seq), removed)
    }

    /// Puts back a terminal task numbered `seq` (from the registry; in increasing order);
    /// returns the numbers of the entries it pushed out.
    pub(super) fn restore(&mut self, seq: u64, task: Task) -> Vec<u64> {
        self.insert(seq, task)
    }

    fn insert(&mut self, seq: u64, task: Task) -> Vec<u64> {
        self.next_seq = self.next_seq.max(seq + 1);
        if self.capacity == 0 {
            return vec![seq];
        }
        let mut removed = Vec::new();
        let key = (task.framework_id.clone(), task.id.clone());
        self.order.push_back((seq, key.clone()));
        if let Some((old_seq, _)) = self.entries.insert(key, (seq, task)) {
            removed.push(old_seq);
        }
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some((old_seq, old_key)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&old_key)
                .is_some_and(|(s, _)| *s == old_seq)
            {
                self.entries.remove(&old_key);
                removed.push(old_seq);
            }
        }
        removed
    }

    pub(super) fn get(&self, key: &TaskKey) -> Option<&Task> {
        self.entries.get(key).map(|(_, t)| t)
    }

    /// Terminal tasks, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Task> {
        self.order.iter().filter_map(|(seq, key)| {
            self.entries
                .get(key)
                .filter(|(s, _)| s == seq)
                .map(|(_, t)| t)
        })
    }

    /// Terminal tasks with their numbers, oldest first.
    pub(super) fn numbered(&self) -> impl Iterator<Item = (u64, &Task)> {
        self.order.iter().filter_map(|(seq, key)| {
            self.entries
                .get(key)
                .filter(|(s, _)| s == seq)
                .map(|(_, t)| (*seq, t))
        })
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Core {
    /// Ends an active task in `state`: removes it from its agent and framework, frees its
    /// resources, and records it in the history. Sends nothing; operators hear of it as an
    /// update the allocator made.
    pub(super) fn end_task(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        reason: TaskReason,
        message: String,
        exit_code: Option<i32>,
        now: Duration,
    ) {
        let Some(agent_id) = self.close_task(key, state, reason, message.clone(), exit_code, now)
        else {
            return;
        };
        self.note(|_| {
            let mut status =
                Self::allocator_status(now, &key.0, &key.1.0, &agent_id.0, state, reason, message);
            status.exit_code = exit_code;
            Some(super::Change::TaskUpdated { status, state })
        });
    }

    /// [`Core::end_task`] without telling operators (the caller does, with the agent's own
    /// update): the task's agent, `None` when the task was not active.
    pub(super) fn close_task(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        reason: TaskReason,
        message: String,
        exit_code: Option<i32>,
        now: Duration,
    ) -> Option<AgentId> {
        debug_assert!(state.is_terminal());
        let mut task = self.tasks.remove(key)?;
        if let Some(agent) = self.agents.get_mut(&task.agent_id) {
            agent.tasks.remove(key);
            agent.allocated.subtract(&task.resources);
        }
        if let Some(fw) = self.frameworks.get_mut(&task.framework_id) {
            fw.tasks.remove(&task.id);
            if !task.unreachable {
                fw.allocated.subtract_scalars(&task.resources);
                super::allocation::sub_role(&mut fw.by_role, &task.role, &task.resources);
            }
        }
        tracing::info!(
            task_id = %task.id, framework_id = %task.framework_id, agent_id = %task.agent_id,
            state = state.label(), "task ended"
        );
        task.state = state;
        task.reason = reason;
        task.message = message;
        if exit_code.is_some() {
            task.exit_code = exit_code;
        }
        task.updated_at = now;
        task.kill = None;
        let agent_id = task.agent_id.clone();
        let record =
            (self.config.terminal_task_history > 0).then(|| super::registry::task_record(&task));
        let (seq, removed) = self.history.push(task);
        self.record_history(seq.zip(record), removed);
        self.refresh_offerable(&agent_id);
        Some(agent_id)
    }

    /// The state a framework sees: UNREACHABLE tasks read LOST to frameworks that are not
    /// partition aware.
    pub(super) fn visible_state(&self, task: &Task) -> TaskState {
        if task.unreachable {
            let partition_aware = self
                .frameworks
                .get(&task.framework_id)
                .is_some_and(|f| f.partition_aware);
            if partition_aware {
                TaskState::Unreachable
            } else {
                TaskState::Lost
            }
        } else {
            task.state
        }
    }
}
