//! The agent itself: [`run`] discovers the host, keeps a stream to the allocator (registering,
//! re-registering and heartbeating over it), launches and kills tasks through a
//! [`Containerizer`], and delivers their status updates reliably.
//!
//! One task (the core loop, [`Agent::run_loop`]) owns all agent state; the connection, each
//! task's supervisor and the timers talk to it through channels, so no state is shared or
//! locked. The loop is here with the state it owns and how the agent stops; its handlers are
//! by concern:
//! - `config.rs`: [`AgentConfig`], [`Isolation`], [`AgentError`].
//! - `start.rs`: the wiring: [`run`], the containerizer the configuration asks for, eBPF, the
//!   HTTP server, the connection and usage tasks, then the loop.
//! - `session.rs`: the stream to the allocator: registration, heartbeats, resends, usage.
//! - `tasks.rs`: launch, kill, acknowledgements and each task's status updates.
//! - `recovery.rs`: the checkpoint of each task and re-attaching to them after a restart.
//!
//! Invariants of the loop (each file above states its own):
//! - Only the loop's task reads or changes the agent's state ([`Agent`]).
//! - When the agent stops (its shutdown future resolves) supervised tasks keep running, unless
//!   [`AgentConfig::kill_tasks_on_shutdown`] is set or the containerizer's tasks cannot outlive
//!   the agent; then, as on the allocator's Shutdown, it kills every task (SIGTERM, grace,
//!   SIGKILL) and, while connected, waits a short while for their terminal updates to be
//!   acknowledged.

mod config;
mod recovery;
mod session;
mod start;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_proto::{AgentInfo, AgentMessage, TaskInfo, TaskStatus};
use tokio::sync::{mpsc, watch};
use tracing::Span;

use crate::cgroup::MemoryOom;
use crate::connection::ConnEvent;
use crate::containerizer::{Containerizer, ExitStatus};
use crate::status::{StatusUpdateManager, TaskKey};
use crate::usage::{LatestUsage, TaskRef, UsageReport};

pub use config::{AgentConfig, AgentError, Isolation};
pub use start::{run, run_with_containerizer};

/// How long a stopping agent waits for its last updates to be acknowledged.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// A request to stop a task.
#[derive(Debug)]
struct KillRequest {
    grace: Duration,
    /// Why, for the KILLED update's message.
    why: String,
}

/// What a task's supervisor reports to the core.
#[derive(Debug)]
enum TaskEvent {
    /// The command is running.
    Started { key: TaskKey, pid: Option<u32> },
    /// The command could not be started; `refused` when the task asked for what the agent
    /// refuses (a `TASK_ERROR`).
    LaunchFailed {
        key: TaskKey,
        error: String,
        refused: bool,
    },
    /// The task was killed before its command was started.
    KilledBeforeLaunch { key: TaskKey, why: String },
    /// The task's health check result changed (or first counted).
    Health {
        key: TaskKey,
        healthy: bool,
        message: String,
    },
    /// The command ended; `killed` says why if it was killed on request.
    Ended {
        key: TaskKey,
        result: Result<ExitStatus, String>,
        killed: Option<String>,
        oom: Option<MemoryOom>,
    },
}

#[derive(Debug)]
struct Task {
    info: TaskInfo,
    latest: TaskStatus,
    /// Its health check's latest result, carried by every later update.
    healthy: Option<bool>,
    /// How to reach the task's supervisor; `None` once the task is terminal.
    kill: Option<mpsc::UnboundedSender<KillRequest>>,
    span: Span,
}

impl Task {
    fn is_terminal(&self) -> bool {
        self.latest.state().is_terminal()
    }
}

#[derive(Debug)]
struct Session {
    id: u64,
    outbound: mpsc::Sender<AgentMessage>,
    registered: bool,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    /// Whether the allocator holds every record of the latest usage report sent on this
    /// stream, so the next report may be a delta.
    usage_synced: bool,
}

#[derive(Debug)]
struct Stopping {
    /// Set once every task is terminal: when to stop waiting for acknowledgements.
    drain_deadline: Option<Instant>,
    /// Whether the tasks are being killed (else they are left running).
    killing: bool,
}

struct Agent {
    config: AgentConfig,
    agent_id: Option<String>,
    /// The registration info, without the id.
    base_info: AgentInfo,
    tasks: HashMap<TaskKey, Task>,
    updates: StatusUpdateManager,
    containerizer: Arc<dyn Containerizer>,
    task_events: mpsc::UnboundedSender<TaskEvent>,
    session: Option<Session>,
    stopping: Option<Stopping>,
    /// When to garbage-collect old sandboxes next.
    next_gc: Instant,
    span: Span,
    /// The running tasks, for the usage collector.
    running: watch::Sender<Arc<Vec<TaskRef>>>,
    /// The latest usage records (the agent id they carry is set here).
    latest_usage: LatestUsage,
    /// Which task holds each of the agent's GPUs.
    gpus: crate::gpu::Assignments,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Agent {
    async fn run_loop(
        mut self,
        mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
        mut conn_rx: mpsc::UnboundedReceiver<ConnEvent>,
        mut task_rx: mpsc::UnboundedReceiver<TaskEvent>,
        mut usage_rx: mpsc::Receiver<Arc<UsageReport>>,
    ) {
        loop {
            if self.finished_stopping() {
                break;
            }
            let registered = self.registered();
            let retry_at = if registered {
                self.updates.next_deadline()
            } else {
                None
            };
            let heartbeat_at = self
                .session
                .as_ref()
                .filter(|s| s.registered)
                .map(|s| s.next_heartbeat);
            let drain_at = self.stopping.as_ref().and_then(|s| s.drain_deadline);
            tokio::select! {
                () = &mut shutdown, if self.stopping.is_none() => {
                    let kill = self.config.kill_tasks_on_shutdown
                        || !self.containerizer.tasks_survive_the_agent();
                    self.begin_stopping("killed because the agent is shutting down", kill);
                }
                Some(event) = conn_rx.recv() => self.on_connection(event),
                Some(event) = task_rx.recv() => self.on_task_event(event),
                Some(report) = usage_rx.recv() => self.send_usage(&report),
                () = sleep_until(heartbeat_at) => self.heartbeat(),
                () = sleep_until(retry_at) => self.resend_due(),
                () = sleep_until(Some(self.next_gc)) => self.gc_sandboxes(),
                () = sleep_until(drain_at) => {
                    tracing::warn!(
                        pending_tasks = self.tasks.len(),
                        "stopping without acknowledgements for every terminal update"
                    );
                    break;
                }
            }
        }
        tracing::info!("agent stopped");
    }

    /// Removes the sandboxes of tasks that ended more than `sandbox_gc_delay` ago.
    fn gc_sandboxes(&mut self) {
        let delay = self.config.sandbox_gc_delay;
        self.next_gc =
            Instant::now() + (delay / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let live: std::collections::HashSet<TaskKey> = self.tasks.keys().cloned().collect();
        let work_dir = self.config.work_dir.clone();
        tokio::task::spawn_blocking(move || {
            let removed = crate::containerizer::gc_sandboxes(&work_dir, delay, &|fw, task| {
                live.contains(&TaskKey::new(fw.to_owned(), task.to_owned()))
            });
            if removed > 0 {
                tracing::info!(removed, "removed old sandboxes");
            }
        });
    }

    fn registered(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.registered)
    }

    /// Whether a stopping agent may exit now: every task is terminal and its updates are
    /// acknowledged, or cannot be sent (no stream, not even one being registered). Starts the
    /// drain deadline.
    fn finished_stopping(&mut self) -> bool {
        let connected = self.session.is_some();
        let all_terminal = self.tasks.values().all(Task::is_terminal);
        let Some(stopping) = &mut self.stopping else {
            return false;
        };
        if !stopping.killing {
            // Updates are checkpointed: the next agent resends what is unacknowledged.
            return true;
        }
        if !all_terminal {
            return false;
        }
        if self.updates.is_empty() || !connected {
            return true;
        }
        stopping
            .drain_deadline
            .get_or_insert_with(|| Instant::now() + SHUTDOWN_DRAIN);
        false
    }

    fn begin_stopping(&mut self, why: &str, kill: bool) {
        if self.stopping.is_some() {
            return;
        }
        let running = self.tasks.values().filter(|t| !t.is_terminal()).count();
        self.stopping = Some(Stopping {
            drain_deadline: None,
            killing: kill,
        });
        if !kill {
            tracing::info!(
                tasks = running,
                "stopping; tasks keep running under their supervisors and the next agent re-attaches to them"
            );
            return;
        }
        tracing::info!(tasks = running, "stopping: killing every task");
        for task in self.tasks.values() {
            if let Some(kill_tx) = &task.kill {
                let _ = kill_tx.send(KillRequest {
                    grace: self.grace_period(&task.info, None),
                    why: why.to_owned(),
                });
            }
        }
    }
}
