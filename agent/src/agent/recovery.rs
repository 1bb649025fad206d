//! The agent's checkpoint of each task and recovery from it after a restart.
//!
//! Invariants:
//! - Every launched task is checkpointed in its run directory (`task.pb`, then `updates.pb`
//!   with its latest status and unacknowledged updates, written before each update is sent), so
//!   a restarted agent re-attaches to the tasks still running under their supervisors, reports
//!   the exits that happened while it was down exactly once, and resends what was not
//!   acknowledged. A torn or corrupt checkpoint is logged as a clear error and the task is
//!   recovered from what else is known; it is never dropped while it runs.

use std::time::Instant;

use strata_proto::{CommandInfo, TaskInfo, TaskReason, TaskState, TaskStatus};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::Agent;
use super::Task;
use super::tasks::watch;
use crate::checkpoint;
use crate::containerizer::supervisor::TaskSpec;
use crate::paths;
use crate::status::TaskKey;

impl Agent {
    /// Writes the task's latest status and unacknowledged updates to its run directory.
    pub(super) fn persist(&self, key: &TaskKey) {
        let Some(task) = self.tasks.get(key) else {
            return;
        };
        // A task refused for its ids has no run directory.
        let Ok(run) = paths::run_dir(&self.config.work_dir, &key.framework_id, &key.task_id) else {
            return;
        };
        if !run.join(checkpoint::TASK_FILE).is_file() {
            return;
        }
        let pending = self.updates.pending_updates(key);
        if let Err(e) = checkpoint::save_updates(&run, &task.latest, &pending) {
            tracing::error!(framework_id = %key.framework_id, task_id = %key.task_id, error = %e,
                "cannot checkpoint the task's status updates; after an agent restart they may be lost");
        }
    }

    /// Re-attaches to the tasks checkpointed under the work dir by an earlier agent: restores
    /// their latest status and unacknowledged updates, and watches the ones still running (or
    /// reports how they ended while the agent was down).
    pub(super) fn recover_tasks(&mut self) {
        let now = Instant::now();
        let mut recovered = 0;
        // Only directories named by valid ids: a run directory's path gives its task's ids.
        for (framework_id, task_id) in paths::listed(&self.config.work_dir, paths::RUNS_DIR) {
            let Ok(run) = paths::run_dir(&self.config.work_dir, &framework_id, &task_id) else {
                continue;
            };
            if !run.join(checkpoint::TASK_FILE).exists() {
                continue;
            }
            let key = TaskKey::new(framework_id.clone(), task_id.clone());
            let span = tracing::info_span!(parent: &self.span, "task",
                framework_id = %key.framework_id, task_id = %key.task_id);
            let _entered = span.enter();
            let info = match checkpoint::load_task(&run, &task_id) {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "recovering the task without its launch record, from its run directory");
                    info_from_run_dir(&run, &task_id)
                }
            };
            let (latest, pending) = match checkpoint::load_updates(&run, &framework_id, &task_id) {
                Ok(Some(updates)) => updates,
                Ok(None) => (
                    TaskStatus {
                        task_id: task_id.clone(),
                        framework_id: framework_id.clone(),
                        state: TaskState::Staging as i32,
                        ..TaskStatus::default()
                    },
                    Vec::new(),
                ),
                Err(e) => {
                    // Whether it still runs is for the containerizer to find out below.
                    tracing::error!(error = %e, "recovering the task without its checkpointed updates");
                    (
                        TaskStatus {
                            task_id: task_id.clone(),
                            framework_id: framework_id.clone(),
                            state: TaskState::Running as i32,
                            ..TaskStatus::default()
                        },
                        Vec::new(),
                    )
                }
            };
            for status in pending {
                self.updates.restore(status, now);
            }
            let terminal = latest.state().is_terminal();
            let (kill_tx, kill_rx) = mpsc::unbounded_channel();
            self.tasks.insert(
                key.clone(),
                Task {
                    healthy: latest.healthy,
                    info,
                    latest,
                    kill: (!terminal).then_some(kill_tx),
                    span: span.clone(),
                },
            );
            recovered += 1;
            if terminal {
                continue;
            }
            self.reattach_gpus(&run, &key);
            match self.containerizer.recover(&framework_id, &task_id) {
                Ok(container) => {
                    tracing::info!(pid = ?container.pid(), "re-attached to a running task");
                    let healthy = self.tasks.get(&key).and_then(|t| t.healthy);
                    let checks = self.health_checker(&key, healthy);
                    let grace = self
                        .tasks
                        .get(&key)
                        .map_or(self.config.default_kill_grace_period, |t| {
                            self.grace_period(&t.info, None)
                        });
                    tokio::spawn(
                        watch(
                            container,
                            key,
                            kill_rx,
                            self.task_events.clone(),
                            checks,
                            grace,
                        )
                        .instrument(span.clone()),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-attach to the task");
                    self.update(
                        &key,
                        TaskState::Failed,
                        TaskReason::AgentRestarted,
                        e.to_string(),
                        None,
                    );
                }
            }
        }
        if recovered > 0 {
            tracing::info!(tasks = recovered, "recovered tasks from the checkpoint");
        }
        self.containerizer.recovered();
    }
}

impl Agent {
    /// Gives a recovered task back the GPUs its checkpoint lists; a GPU gone or held by
    /// another task is logged, and the task keeps running without it in the books.
    fn reattach_gpus(&mut self, run: &std::path::Path, key: &TaskKey) {
        let uuids: Vec<String> = match checkpoint::load_gpus(run) {
            Ok(gpus) => gpus.into_iter().map(|g| g.uuid).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the task's GPUs");
                return;
            }
        };
        if uuids.is_empty() {
            return;
        }
        match self.gpus.reattach(&key.framework_id, &key.task_id, &uuids) {
            Ok(_) => tracing::info!(gpus = ?uuids, "GPUs re-attached"),
            Err(e) => tracing::error!(error = %e, "cannot re-attach the task's GPUs"),
        }
    }
}

/// What a run directory says of its task when its launch record is lost: the task id (its
/// directory's name) and the command its supervisor was given (`spec.json`), when there is one.
/// Never a task without an id: the allocator would take it for another task and the real one
/// for lost.
fn info_from_run_dir(run: &std::path::Path, task_id: &str) -> TaskInfo {
    let command = TaskSpec::read(run).ok().map(|spec| CommandInfo {
        value: spec.program,
        arguments: spec.argv,
        ..CommandInfo::default()
    });
    TaskInfo {
        task_id: task_id.to_owned(),
        name: task_id.to_owned(),
        command,
        ..TaskInfo::default()
    }
}
