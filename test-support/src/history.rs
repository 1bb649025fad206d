//! The history checker of fault-injection runs: every status update a framework received,
//! in the order it received them, checked against what must hold whatever failed meanwhile
//! (Mesos' guarantees to frameworks):
//!
//! - a task that was RUNNING is not lost: not LOST, GONE, DROPPED or UNREACHABLE; except that
//!   a task on an agent the run partitioned (or crashed for longer than the reconnect
//!   timeout) may be UNREACHABLE to a partition-aware framework and LOST to the others, and
//!   then go on when the agent is back (Mesos >= 1.5: such a LOST is not final): the agent's
//!   updates resume, including those it sends again because their acknowledgement was lost
//!   in the partition (a STARTING after UNREACHABLE), until a terminal one;
//! - a task runs on one agent only (launched twice: RUNNING reported from two agents);
//! - nothing follows a terminal update but the same update again (reconciliation repeats it);
//! - a task's states go forward (STAGING, STARTING, RUNNING, KILLING, then terminal; back to
//!   RUNNING only from UNREACHABLE, when its agent comes back);
//! - a task whose exit is known ends as it exited: FINISHED for 0, FAILED with its code (a
//!   FAILED without an exit code is not an exit: the agent lost the task before it exited,
//!   e.g. it crashed while launching it; those are counted, [`History::ended_without_exit`]).

use std::collections::{HashMap, HashSet};
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
    /// Agents the run partitioned: their running tasks may be LOST to a framework that is
    /// not partition-aware (Mesos >= 1.5).
    partitioned: HashSet<String>,
    updates: u64,
    ended_without_exit: u64,
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

    /// The run partitioned agent `agent_id` from the allocator.
    pub fn partitioned(&mut self, agent_id: &str) {
        self.partitioned.insert(agent_id.to_owned());
    }

    /// The framework received `status`.
    pub fn update(&mut self, status: &TaskStatus) {
        self.updates += 1;
        let partition_aware = self.partition_aware;
        let task = self.tasks.entry(status.task_id.clone()).or_default();
        // The agent it was RUNNING on, or the one this update comes from (a task not yet
        // RUNNING is on it too).
        let on_partitioned = task
            .agent
            .iter()
            .chain(std::iter::once(&status.agent_id))
            .any(|a| self.partitioned.contains(a));
        // A LOST for a task of a partitioned agent is what UNREACHABLE is to a
        // partition-aware framework: the task may be RUNNING again when its agent comes back
        // (Mesos >= 1.5 no longer kills it), or end.
        let state = match status.state() {
            TaskState::Lost
                if !partition_aware
                    && !task.state.is_some_and(TaskState::is_terminal)
                    && on_partitioned =>
            {
                TaskState::Unreachable
            }
            state => state,
        };
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
            } else if rank(state) < rank(before)
                && state != TaskState::Unknown
                && before != TaskState::Unreachable
            {
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
            TaskState::Unreachable if task.was_running && on_partitioned => {}
            TaskState::Lost | TaskState::Gone | TaskState::Dropped if task.was_running => {
                broken.push(format!("lost while RUNNING ({})", state.label()));
            }
            TaskState::Unreachable if task.was_running && !partition_aware => {
                broken.push("UNREACHABLE to a framework that is not partition-aware".to_owned());
            }
            TaskState::Unreachable if task.was_running => {
                broken.push("UNREACHABLE though its agent was not partitioned".to_owned());
            }
            TaskState::Failed if status.exit_code.is_none() => self.ended_without_exit += 1,
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

    /// How many tasks ended FAILED without an exit code (lost by their agent before they
    /// exited).
    pub fn ended_without_exit(&self) -> u64 {
        self.ended_without_exit
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
    fn tasks_of_a_partitioned_agent_may_be_lost_then_back_to_frameworks_not_partition_aware() {
        let mut h = History::new(false);
        h.partitioned("a1");
        for u in [
            status("t", "a1", TaskState::Running, None),
            status("t", "a1", TaskState::Lost, None),
            status("t", "a1", TaskState::Running, None),
            status("t", "a1", TaskState::Finished, Some(0)),
            status("u", "a2", TaskState::Running, None),
            status("u", "a2", TaskState::Lost, None),
        ] {
            h.update(&u);
        }
        let v: Vec<String> = h.violations().iter().map(ToString::to_string).collect();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("task u: lost while RUNNING"), "{v:?}");
    }

    /// What the real-agent suite saw: a task STARTING when its agent was cut off (its
    /// acknowledgement lost), then the agent's updates again once it is back; a task whose
    /// launch its crashed agent lost, FAILED without an exit code.
    #[test]
    fn updates_resume_after_a_partition_and_a_lost_launch_is_no_exit() {
        for aware in [true, false] {
            let mut h = History::new(aware);
            h.launched("t", Some(0));
            h.launched("l", Some(3));
            h.partitioned("a1");
            let cut = if aware {
                TaskState::Unreachable
            } else {
                TaskState::Lost
            };
            for u in [
                status("t", "a1", TaskState::Starting, None),
                status("t", "a1", cut, None),
                status("t", "a1", TaskState::Starting, None),
                status("t", "a1", TaskState::Running, None),
                status("t", "a1", TaskState::Finished, Some(0)),
                status("l", "a1", TaskState::Starting, None),
                status("l", "a1", cut, None),
                status("l", "a1", TaskState::Failed, None),
            ] {
                h.update(&u);
            }
            assert!(h.violations().is_empty(), "{:?}", h.violations());
            assert_eq!(h.ended_without_exit(), 1);
            // Not on a partitioned agent: still out of order, and still after a terminal LOST.
            h.update(&status("x", "a2", TaskState::Running, None));
            h.update(&status("x", "a2", TaskState::Starting, None));
            h.update(&status("y", "a2", TaskState::Lost, None));
            h.update(&status("y", "a2", TaskState::Starting, None));
            // FINISHED is an exit: without a code for a command exiting 3 it is wrong.
            h.update(&status("l2", "a1", TaskState::Running, None));
            h.launched("l2", Some(3));
            h.update(&status("l2", "a1", TaskState::Finished, None));
            let v: Vec<String> = h.violations().iter().map(ToString::to_string).collect();
            assert_eq!(v.len(), 3, "{v:?}");
            assert!(
                v[0].contains("task x: TASK_STARTING after TASK_RUNNING"),
                "{v:?}"
            );
            assert!(
                v[1].contains("task y: TASK_STARTING after the terminal TASK_LOST"),
                "{v:?}"
            );
            assert!(v[2].contains("task l2: its command exits with 3"), "{v:?}");
        }
    }

    #[test]
    fn a_partition_aware_framework_may_see_unreachable_then_running() {
        let mut h = History::new(true);
        h.partitioned("a1");
        for u in [
            status("t", "a1", TaskState::Running, None),
            status("t", "a1", TaskState::Unreachable, None),
            status("t", "a1", TaskState::Running, None),
            status("u", "a2", TaskState::Running, None),
            status("u", "a2", TaskState::Unreachable, None),
        ] {
            h.update(&u);
        }
        assert_eq!(h.count(TaskState::Running), 1);
        let v: Vec<String> = h.violations().iter().map(ToString::to_string).collect();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("task u: UNREACHABLE though"), "{v:?}");
    }
}
