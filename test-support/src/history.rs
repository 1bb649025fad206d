//! The history checker of fault-injection runs: every status update a framework received,
//! in the order it received them, checked against what must hold whatever failed meanwhile
//! (Mesos' guarantees to frameworks):
//!
//! - a task that was RUNNING is not lost (LOST, GONE, DROPPED, or UNREACHABLE unless the run
//!   partitions agents and the framework is partition-aware);
//! - a task runs on one agent only (launched twice: RUNNING reported from two agents);
//! - nothing follows a terminal update but the same update again (reconciliation repeats it);
//! - a task's states go forward (STAGING, STARTING, RUNNING, KILLING, then terminal; back to
//!   RUNNING only from UNREACHABLE, when its agent comes back);
//! - a task whose exit is known ends as it exited: FINISHED for 0, FAILED with its code.

use std::collections::HashMap;
use std::fmt;

use strata_proto::{TaskState, TaskStatus};

/// One broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The task.
    pub task_id: String,
    /// What went wrong.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {}: {}", self.task_id, self.what)
    }
}

#[derive(Debug, Default)]
struct Task {
    state: Option<TaskState>,
    /// The agent it was RUNNING on.
    agent: Option<String>,
    /// How its command exits, when the run knows.
    exit: Option<i32>,
    was_running: bool,
}

/// The updates of one framework, checked as they arrive.
#[derive(Debug, Default)]
pub struct History {
    tasks: HashMap<String, Task>,
    /// Whether agents may be partitioned and the framework is partition-aware (UNREACHABLE
    /// is then allowed, and RUNNING after it).
    pub partition_aware: bool,
    updates: u64,
    violations: Vec<Violation>,
}

/// The order of non-terminal states (terminal ones rank above all).
fn rank(state: TaskState) -> u8 {
    match state {
        TaskState::Unspecified | TaskState::Unknown => 0,
        TaskState::Staging => 1,
        TaskState::Starting => 2,
        TaskState::Running | TaskState::Unreachable => 3,
        TaskState::Killing => 4,
        _ => 5,
    }
}

impl History {
    /// A history for a framework that is partition-aware or not.
    pub fn new(partition_aware: bool) -> Self {
        Self {
            partition_aware,
            ..Self::default()
        }
    }

    /// The framework launched `task_id`, whose command exits with `exit` when known.
    pub fn launched(&mut self, task_id: &str, exit: Option<i32>) {
        self.tasks.entry(task_id.to_owned()).or_default().exit = exit;
    }

    /// The framework received `status`.
    pub fn update(&mut self, status: &TaskStatus) {
        self.updates += 1;
        let state = status.state();
        let partition_aware = self.partition_aware;
        let task = self.tasks.entry(status.task_id.clone()).or_default();
        let mut broken = Vec::new();
        if let Some(before) = task.state {
            if before.is_terminal() {
                if before != state {
                    broken.push(format!(
                        "{} after the terminal {}",
                        state.label(),
                        before.label()
                    ));
                }
            } else if rank(state) < rank(before) && state != TaskState::Unknown {
                broken.push(format!("{} after {}", state.label(), before.label()));
            }
        }
        match state {
            TaskState::Running => {
                match &task.agent {
                    Some(agent) if *agent != status.agent_id => broken.push(format!(
                        "RUNNING on agent {} and on agent {}: launched twice",
                        agent, status.agent_id
                    )),
                    _ => task.agent = Some(status.agent_id.clone()),
                }
                task.was_running = true;
            }
            TaskState::Lost | TaskState::Gone | TaskState::Dropped if task.was_running => {
                broken.push(format!("lost while RUNNING ({})", state.label()));
            }
            TaskState::Unreachable if task.was_running && !partition_aware => {
                broken.push("UNREACHABLE to a framework that is not partition-aware".to_owned());
            }
            TaskState::Unreachable if task.was_running && partition_aware => {}
            TaskState::Finished | TaskState::Failed => {
                if let Some(exit) = task.exit {
                    let expected = if exit == 0 {
                        TaskState::Finished
                    } else {
                        TaskState::Failed
                    };
                    if state != expected || status.exit_code != Some(exit) {
                        broken.push(format!(
                            "its command exits with {exit} but it ended {} with exit code {:?}",
                            state.label(),
                            status.exit_code
                        ));
                    }
                }
            }
            _ => {}
        }
        if state != TaskState::Unknown {
            task.state = Some(state);
        }
        for what in broken {
            self.violations.push(Violation {
                task_id: status.task_id.clone(),
                what,
            });
        }
    }

    /// How many updates were checked.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The tasks whose latest update is `state`.
    pub fn count(&self, state: TaskState) -> usize {
        self.tasks
            .values()
            .filter(|t| t.state == Some(state))
            .count()
    }

    /// What was broken, in the order it was seen.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(task: &str, agent: &str, state: TaskState, exit: Option<i32>) -> TaskStatus {
        TaskStatus {
            task_id: task.to_owned(),
            agent_id: agent.to_owned(),
            state: state as i32,
            exit_code: exit,
            ..TaskStatus::default()
        }
    }

    fn run(partition_aware: bool, updates: &[TaskStatus]) -> Vec<String> {
        let mut h = History::new(partition_aware);
        h.launched("ok", Some(0));
        h.launched("bad", Some(3));
        for u in updates {
            h.update(u);
        }
        assert_eq!(h.updates(), updates.len() as u64);
        h.violations().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_clean_history_passes_with_repeats_from_reconciliation() {
        let v = run(
            false,
            &[
                status("ok", "a1", TaskState::Staging, None),
                status("ok", "a1", TaskState::Running, None),
                status("ok", "a1", TaskState::Running, None),
                status("ok", "a1", TaskState::Finished, Some(0)),
                status("ok", "a1", TaskState::Finished, Some(0)),
                status("bad", "a2", TaskState::Running, None),
                status("bad", "a2", TaskState::Failed, Some(3)),
                status("never-ran", "a2", TaskState::Lost, None),
            ],
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn each_broken_guarantee_is_reported() {
        let v = run(
            false,
            &[
                // Lost while running.
                status("t1", "a1", TaskState::Running, None),
                status("t1", "a1", TaskState::Lost, None),
                // Launched twice.
                status("t2", "a1", TaskState::Running, None),
                status("t2", "a2", TaskState::Running, None),
                // An update after a terminal one.
                status("t3", "a1", TaskState::Killed, None),
                status("t3", "a1", TaskState::Running, None),
                // Out of order.
                status("t4", "a1", TaskState::Running, None),
                status("t4", "a1", TaskState::Staging, None),
                // A wrong exit.
                status("ok", "a1", TaskState::Failed, Some(1)),
                status("bad", "a1", TaskState::Finished, Some(0)),
                // UNREACHABLE to a framework that is not partition-aware.
                status("t5", "a1", TaskState::Running, None),
                status("t5", "a1", TaskState::Unreachable, None),
            ],
        );
        assert_eq!(v.len(), 7, "{v:#?}");
        for (i, needle) in [
            "lost while RUNNING",
            "launched twice",
            "after the terminal TASK_KILLED",
            "TASK_STAGING after TASK_RUNNING",
            "exits with 0",
            "exits with 3",
            "not partition-aware",
        ]
        .iter()
        .enumerate()
        {
            assert!(v[i].contains(needle), "{i}: {} lacks {needle}", v[i]);
        }
    }

    #[test]
    fn a_partition_aware_framework_may_see_unreachable_then_running() {
        let updates = [
            status("t", "a1", TaskState::Running, None),
            status("t", "a1", TaskState::Unreachable, None),
            status("t", "a1", TaskState::Running, None),
        ];
        assert!(run(true, &updates).is_empty());
        let mut h = History::new(true);
        for u in &updates {
            h.update(u);
        }
        assert_eq!(h.count(TaskState::Running), 1);
    }
}
