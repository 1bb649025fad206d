//! The agent's tasks: launching one (checkpointed, then STARTING, then handed to the
//! containerizer by a task of its own that watches it), killing one, the acknowledgements of
//! their updates, and every status update they make.
//!
//! Invariants:
//! - A task is known by (framework id, task id); a launch of a task the agent already has never
//!   starts a second process.
//! - Each task's updates follow STARTING, RUNNING (once its process is spawned), then exactly one
//!   terminal update (FINISHED, FAILED or KILLED); they go through the status-update manager,
//!   so they are delivered in order and resent until acknowledged, also across reconnects.
//! - A task is forgotten only once its terminal update has been acknowledged.
//! - A launch whose framework or task id fails `strata_proto::ids::check_id`, or that asks for
//!   less than `strata_proto::limits::MIN_TASK_CPUS` cpus or `MIN_TASK_MEM_MIB` MiB of memory,
//!   is refused with TASK_ERROR (reason TASK_INVALID) and touches nothing on disk or in the
//!   cgroups; files are named after ids only through [`crate::paths`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::allocator_message::{AcknowledgeUpdate, KillTask, LaunchTask};
use strata_proto::ids::shorten;
use strata_proto::limits::{MIN_TASK_CPUS, MIN_TASK_MEM_MIB};
use strata_proto::{TaskInfo, TaskReason, TaskSource, TaskState, TaskStatus, names, scalar_sum};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Agent, KillRequest, Task, TaskEvent, unix_now};
use crate::cgroup::MemoryOom;
use crate::checkpoint;
use crate::containerizer::{Container, Containerizer, ExitStatus, LaunchSpec};
use crate::gpu::GpuError;
use crate::health;
use crate::paths;
use crate::status::{AckOutcome, TaskKey};
use crate::usage::TaskRef;

impl Agent {
    pub(super) fn on_launch(&mut self, launch: LaunchTask) {
        let Some(task) = launch.task else {
            tracing::warn!(framework_id = ?shorten(&launch.framework_id, 64), "ignoring a launch without a task");
            return;
        };
        let key = TaskKey::new(launch.framework_id.clone(), task.task_id.clone());
        // Ids that fail the id rule are logged quoted and shortened: they may hold line breaks.
        let span = if paths::TaskIds::new(&key.framework_id, &key.task_id).is_ok() {
            tracing::info_span!(parent: &self.span, "task",
                framework_id = %key.framework_id, task_id = %key.task_id)
        } else {
            tracing::info_span!(parent: &self.span, "task",
                framework_id = ?shorten(&key.framework_id, 64), task_id = ?shorten(&key.task_id, 64))
        };
        let _entered = span.enter();
        if self.tasks.contains_key(&key) {
            tracing::warn!("ignoring a launch of a task this agent already has");
            return;
        }
        let refusal = launch_refusal(&key.framework_id, &task);
        if refusal.is_none() {
            tracing::info!("launching task");
        }
        let stopping = self.stopping.is_some();
        let (kill_tx, kill_rx) = mpsc::unbounded_channel();
        self.tasks.insert(
            key.clone(),
            Task {
                info: task.clone(),
                latest: TaskStatus {
                    task_id: key.task_id.clone(),
                    framework_id: key.framework_id.clone(),
                    state: TaskState::Staging as i32,
                    ..TaskStatus::default()
                },
                healthy: None,
                kill: (!stopping).then_some(kill_tx),
                span: span.clone(),
            },
        );
        if stopping {
            self.update(
                &key,
                TaskState::Dropped,
                TaskReason::AgentDraining,
                "the agent is shutting down".to_owned(),
                None,
            );
            return;
        }
        if let Some(why) = refusal {
            tracing::warn!(error = %why, "refusing the launch");
            self.update(&key, TaskState::Error, TaskReason::TaskInvalid, why, None);
            return;
        }
        let asked = scalar_sum(&task.resources, names::GPUS);
        let gpus = match self.gpus.assign(&key.framework_id, &key.task_id, asked) {
            Ok(gpus) => gpus,
            Err(e) => {
                let (state, reason) = match e {
                    GpuError::NotWhole { .. } => (TaskState::Error, TaskReason::TaskInvalid),
                    _ => (TaskState::Failed, TaskReason::ContainerLaunchFailed),
                };
                tracing::warn!(error = %e, "cannot give the task its GPUs");
                self.update(&key, state, reason, e.to_string(), None);
                return;
            }
        };
        if !gpus.is_empty() {
            let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
            tracing::info!(gpus = ?uuids, "GPUs assigned");
        }
        if let Ok(run) = paths::run_dir(&self.config.work_dir, &key.framework_id, &key.task_id) {
            let saved = std::fs::create_dir_all(&run)
                .map_err(|e| e.to_string())
                .and_then(|()| checkpoint::save_task(&run, &task).map_err(|e| e.to_string()))
                .and_then(|()| checkpoint::save_gpus(&run, &gpus).map_err(|e| e.to_string()));
            if let Err(e) = saved {
                tracing::error!(error = %e, "cannot checkpoint the task; it will not be recovered after an agent restart");
            }
        }
        self.update(
            &key,
            TaskState::Starting,
            TaskReason::Unspecified,
            String::new(),
            None,
        );
        let grace = self.grace_period(&task, None);
        let spec = LaunchSpec {
            gpus,
            framework_id: key.framework_id.clone(),
            agent_id: self.agent_id.clone().unwrap_or_default(),
            task,
        };
        let checks = self.health_checker(&key, None);
        tokio::spawn(
            supervise(
                self.containerizer.clone(),
                spec,
                key,
                kill_rx,
                self.task_events.clone(),
                checks,
                grace,
            )
            .instrument(span.clone()),
        );
    }

    pub(super) fn on_kill(&mut self, kill: KillTask) {
        let key = TaskKey::new(kill.framework_id, kill.task_id);
        let Some(task) = self.tasks.get(&key) else {
            tracing::warn!(framework_id = ?shorten(&key.framework_id, 64), task_id = ?shorten(&key.task_id, 64),
                "ignoring a kill of a task this agent does not have");
            return;
        };
        let _entered = task.span.enter();
        let Some(kill_tx) = &task.kill else {
            tracing::info!("ignoring a kill of a task that has already ended");
            return;
        };
        let grace = self.grace_period(&task.info, kill.grace_period_seconds);
        tracing::info!(grace_ms = grace.as_millis() as u64, "killing task");
        let _ = kill_tx.send(KillRequest {
            grace,
            why: "killed at the framework's request".to_owned(),
        });
    }

    /// The health checks of a task the agent has, if it has any: in its sandbox, with its
    /// environment, starting from its last known health.
    pub(super) fn health_checker(
        &self,
        key: &TaskKey,
        healthy: Option<bool>,
    ) -> Option<health::Checker> {
        let task = self.tasks.get(key)?;
        task.info.health_check.as_ref()?;
        let sandbox =
            paths::sandbox_dir(&self.config.work_dir, &key.framework_id, &key.task_id).ok()?;
        let spec = LaunchSpec {
            gpus: self.gpus.of(&key.framework_id, &key.task_id),
            framework_id: key.framework_id.clone(),
            agent_id: self.agent_id.clone().unwrap_or_default(),
            task: task.info.clone(),
        };
        let command = task.info.command.clone().unwrap_or_default();
        let env = crate::containerizer::task_environment(&spec, &command, &sandbox);
        health::Checker::new(&task.info, sandbox, env, &self.config.task_user, healthy)
    }

    pub(super) fn grace_period(&self, task: &TaskInfo, requested: Option<f64>) -> Duration {
        requested
            .or((task.kill_grace_period_seconds > 0.0).then_some(task.kill_grace_period_seconds))
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(self.config.default_kill_grace_period)
    }

    pub(super) fn on_ack(&mut self, ack: AcknowledgeUpdate) {
        let key = TaskKey::new(ack.framework_id, ack.task_id);
        match self.updates.acknowledge(&key, &ack.uuid, Instant::now()) {
            AckOutcome::Accepted { terminal, next } => {
                if let Some(next) = next {
                    self.send_update(next);
                }
                if terminal && let Some(task) = self.tasks.remove(&key) {
                    let _entered = task.span.enter();
                    // A task refused for its ids has no run directory to forget.
                    if let Ok(run) =
                        paths::run_dir(&self.config.work_dir, &key.framework_id, &key.task_id)
                    {
                        checkpoint::forget_task(&run);
                    }
                    tracing::info!("terminal update acknowledged; task forgotten");
                } else {
                    self.persist(&key);
                }
            }
            AckOutcome::Stale => {
                tracing::debug!(framework_id = ?shorten(&key.framework_id, 64), task_id = ?shorten(&key.task_id, 64),
                    "ignoring a stale acknowledgement");
            }
            AckOutcome::UnknownTask => {
                tracing::debug!(framework_id = ?shorten(&key.framework_id, 64), task_id = ?shorten(&key.task_id, 64),
                    "ignoring an acknowledgement for a task with no pending update");
            }
        }
    }

    pub(super) fn on_task_event(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::Started { key, pid } => {
                let message = pid
                    .map(|p| format!("running as pid {p}"))
                    .unwrap_or_default();
                self.update(
                    &key,
                    TaskState::Running,
                    TaskReason::Unspecified,
                    message,
                    None,
                );
            }
            TaskEvent::LaunchFailed {
                key,
                error,
                refused,
            } => {
                let (state, reason) = if refused {
                    (TaskState::Error, TaskReason::TaskInvalid)
                } else {
                    (TaskState::Failed, TaskReason::ContainerLaunchFailed)
                };
                self.update(&key, state, reason, error, None);
            }
            TaskEvent::Health {
                key,
                healthy,
                message,
            } => {
                let Some(task) = self.tasks.get_mut(&key) else {
                    return;
                };
                task.healthy = Some(healthy);
                if task.latest.state() == TaskState::Running {
                    self.update(
                        &key,
                        TaskState::Running,
                        TaskReason::Unspecified,
                        message,
                        None,
                    );
                }
            }
            TaskEvent::KilledBeforeLaunch { key, why } => {
                self.update(&key, TaskState::Killed, TaskReason::TaskKilled, why, None);
            }
            TaskEvent::Ended {
                key,
                result,
                killed,
                oom,
            } => {
                let (state, reason, message, exit) = match (result, killed) {
                    (Ok(status), None) if !status.success() && oom.is_some() => (
                        TaskState::Failed,
                        TaskReason::ContainerLimitationMemory,
                        oom.map(|o| oom_message(&o, status)).unwrap_or_default(),
                        Some(status),
                    ),
                    (Ok(status), Some(why)) => (
                        TaskState::Killed,
                        TaskReason::TaskKilled,
                        format!("{why} ({status})"),
                        Some(status),
                    ),
                    (Err(e), Some(why)) => (
                        TaskState::Killed,
                        TaskReason::TaskKilled,
                        format!("{why} ({e})"),
                        None,
                    ),
                    (Ok(status), None) if status.success() => (
                        TaskState::Finished,
                        TaskReason::Unspecified,
                        status.to_string(),
                        Some(status),
                    ),
                    (Ok(status), None) => (
                        TaskState::Failed,
                        TaskReason::CommandFailed,
                        status.to_string(),
                        Some(status),
                    ),
                    (Err(e), None) => (TaskState::Failed, TaskReason::Unspecified, e, None),
                };
                self.update(&key, state, reason, message, exit);
            }
        }
    }

    /// Records a new status for a task and queues it for reliable delivery.
    pub(super) fn update(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        reason: TaskReason,
        message: String,
        exit: Option<ExitStatus>,
    ) {
        let Some(task) = self.tasks.get_mut(key) else {
            tracing::warn!(framework_id = %key.framework_id, task_id = %key.task_id,
                state = state.label(), "dropping an update for a task the agent does not have");
            return;
        };
        if task.is_terminal() {
            tracing::warn!(framework_id = %key.framework_id, task_id = %key.task_id,
                state = state.label(), "dropping an update for a task that has already ended");
            return;
        }
        let status = TaskStatus {
            task_id: key.task_id.clone(),
            framework_id: key.framework_id.clone(),
            agent_id: self.agent_id.clone().unwrap_or_default(),
            state: state as i32,
            reason: reason as i32,
            source: TaskSource::Agent as i32,
            message,
            uuid: Vec::new(),
            timestamp: unix_now(),
            exit_code: exit.and_then(ExitStatus::code),
            signal: exit.and_then(ExitStatus::signal),
            healthy: task.healthy,
        };
        let queued = self.updates.update(status, Instant::now());
        {
            let _entered = task.span.enter();
            tracing::info!(
                state = state.label(),
                message = %queued.status.message,
                "task status update"
            );
        }
        task.latest = queued.status.clone();
        if state.is_terminal() {
            task.kill = None;
            let freed = self.gpus.release(&key.framework_id, &key.task_id);
            if freed > 0 {
                let _entered = task.span.enter();
                tracing::info!(gpus = freed, "GPUs freed");
            }
        }
        // Checkpointed before it is sent, so an update is never made twice.
        self.persist(key);
        if queued.send_now {
            self.send_update(queued.status);
        }
        if state == TaskState::Running || state.is_terminal() {
            self.publish_running();
        }
    }

    /// Tells the usage collector which tasks run now.
    pub(super) fn publish_running(&self) {
        let running: Vec<TaskRef> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.latest.state(), TaskState::Running | TaskState::Killing))
            .map(|(key, t)| {
                let mut task = TaskRef::from_task(&key.framework_id, &t.info);
                task.gpus = self
                    .gpus
                    .of(&key.framework_id, &key.task_id)
                    .into_iter()
                    .map(|g| (g.index, g.uuid))
                    .collect();
                task
            })
            .collect();
        self.running.send_replace(Arc::new(running));
    }
}

/// Why the agent refuses to launch `task` of `framework_id`, if it does: an id that cannot
/// name the task's directories and cgroup, or less cpu or memory than any task needs (a task
/// with no memory limit and the full cpu weight is not what anybody asked for).
fn launch_refusal(framework_id: &str, task: &TaskInfo) -> Option<String> {
    if let Err(e) = paths::TaskIds::new(framework_id, &task.task_id) {
        return Some(e.to_string());
    }
    if let Err(why) = health::validate(task) {
        return Some(why);
    }
    let cpus = scalar_sum(&task.resources, names::CPUS);
    let mem = scalar_sum(&task.resources, names::MEM);
    let enough = |asked: f64, least: f64| asked.is_finite() && asked >= least;
    if !enough(cpus, MIN_TASK_CPUS) || !enough(mem, MIN_TASK_MEM_MIB) {
        return Some(format!(
            "task {:?} asks for {cpus} cpus and {mem} MiB of memory: a task needs at least \
             {MIN_TASK_CPUS} cpus and {MIN_TASK_MEM_MIB} MiB of memory (resources \"{}\" and \"{}\")",
            task.task_id,
            names::CPUS,
            names::MEM,
        ));
    }
    None
}

/// Launches one task and reports its life to the core; owns the container while it runs.
async fn supervise(
    containerizer: Arc<dyn Containerizer>,
    spec: LaunchSpec,
    key: TaskKey,
    mut kills: mpsc::UnboundedReceiver<KillRequest>,
    events: mpsc::UnboundedSender<TaskEvent>,
    checks: Option<health::Checker>,
    grace: Duration,
) {
    if let Ok(kill) = kills.try_recv() {
        let _ = events.send(TaskEvent::KilledBeforeLaunch { key, why: kill.why });
        return;
    }
    let container = match containerizer.launch(&spec).await {
        Ok(container) => container,
        Err(e) => {
            tracing::warn!(error = %e, "task could not be launched");
            let _ = events.send(TaskEvent::LaunchFailed {
                key,
                error: e.to_string(),
                refused: e.is_refusal(),
            });
            return;
        }
    };
    let _ = events.send(TaskEvent::Started {
        key: key.clone(),
        pid: container.pid(),
    });
    watch(container, key, kills, events, checks, grace).await;
}

/// Watches a running task until it ends (or is killed on request, or for failing its health
/// checks, which run here beside it) and reports how it ended.
pub(super) async fn watch(
    container: Box<dyn Container>,
    key: TaskKey,
    mut kills: mpsc::UnboundedReceiver<KillRequest>,
    events: mpsc::UnboundedSender<TaskEvent>,
    checks: Option<health::Checker>,
    grace: Duration,
) {
    let procs = container.cgroup_procs();
    let checks = async {
        match checks {
            Some(checker) => {
                checker
                    .run(procs, |change| {
                        let _ = events.send(TaskEvent::Health {
                            key: key.clone(),
                            healthy: change.healthy,
                            message: change.message,
                        });
                    })
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let (result, killed) = tokio::select! {
        result = container.wait() => (result, None),
        Some(kill) = kills.recv() => (container.kill(kill.grace).await, Some(kill.why)),
        why = checks => (container.kill(grace).await, Some(why)),
    };
    let _ = events.send(TaskEvent::Ended {
        key,
        result: result.map_err(|e| e.to_string()),
        killed,
        oom: container.memory_oom(),
    });
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `memory limit of 64.0 MiB reached: the kernel's OOM killer ended the task (peak usage
/// 64.0 MiB, 1 process killed; killed by signal 9 (SIGKILL))`.
fn oom_message(oom: &MemoryOom, status: ExitStatus) -> String {
    let limit = oom.limit_bytes.map_or_else(
        || "memory limit".to_owned(),
        |l| format!("memory limit of {}", mib(l)),
    );
    let peak = oom.peak_bytes.map_or_else(
        || "peak usage unknown".to_owned(),
        |p| format!("peak usage {}", mib(p)),
    );
    format!(
        "{limit} reached: the kernel's OOM killer ended the task ({peak}, {} process{} killed; {status})",
        oom.oom_kills,
        if oom.oom_kills == 1 { "" } else { "es" }
    )
}
