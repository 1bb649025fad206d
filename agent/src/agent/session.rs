//! The agent's side of its stream to the allocator: registering (with every task the agent
//! has, and its latest status), heartbeats, the allocator's messages, resending unacknowledged
//! status updates, and usage reports.
//!
//! Invariants:
//! - The agent id the allocator assigns is persisted (atomically) before the agent counts as
//!   registered, and every later registration, after a reconnect or a restart, uses it.
//! - Every registration lists every task the agent has not forgotten, with its latest status.
//! - Status updates and usage go only on a registered stream; on each new registration every
//!   unacknowledged update is resent, and the first usage report of a stream goes in full.

use std::time::{Duration, Instant};

use strata_proto::agent_message::{self, Heartbeat, Register, StatusUpdate};
use strata_proto::allocator_message::{self, Registered};
use strata_proto::{AgentInfo, AgentMessage, AgentTask, TaskInfo, TaskStatus};
use tokio::sync::mpsc;

use super::{Agent, Session};
use crate::checkpoint;
use crate::connection::ConnEvent;
use crate::usage::UsageReport;

/// Heartbeat interval used when the allocator does not give a usable one.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// The most warnings of one `Registered` logged.
const MAX_REGISTERED_WARNINGS: usize = 32;

impl Agent {
    pub(super) fn on_connection(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Connected { session, outbound } => {
                self.session = Some(Session {
                    id: session,
                    outbound,
                    registered: false,
                    heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
                    next_heartbeat: Instant::now() + DEFAULT_HEARTBEAT_INTERVAL,
                    usage_synced: false,
                });
                let register = self.register_message();
                tracing::info!(
                    tasks = self.tasks.len(),
                    "connected to the allocator; registering"
                );
                self.send(register);
            }
            ConnEvent::Message { session, message } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    self.on_message(*message);
                }
            }
            ConnEvent::Disconnected { session, reason } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    tracing::debug!(%reason, "session ended");
                    self.session = None;
                }
            }
        }
    }

    fn register_message(&self) -> agent_message::Message {
        let agent_id = self.agent_id.clone().unwrap_or_default();
        let tasks = self
            .tasks
            .iter()
            .map(|(key, task)| AgentTask {
                framework_id: key.framework_id.clone(),
                // Always the task's own id, whatever its (possibly recovered) record says.
                task: Some(TaskInfo {
                    task_id: key.task_id.clone(),
                    ..task.info.clone()
                }),
                latest_status: Some(TaskStatus {
                    agent_id: agent_id.clone(),
                    ..task.latest.clone()
                }),
            })
            .collect();
        agent_message::Message::Register(Register {
            info: Some(AgentInfo {
                id: agent_id,
                ..self.base_info.clone()
            }),
            tasks,
        })
    }

    /// Queues a message on the current stream; false if there is none or it is full.
    pub(super) fn send(&mut self, message: agent_message::Message) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        match session.outbound.try_send(AgentMessage {
            message: Some(message),
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("the stream to the allocator is backed up; dropping a message");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(super) fn send_update(&mut self, mut status: TaskStatus) {
        if !self.registered() {
            return;
        }
        status.agent_id = self.agent_id.clone().unwrap_or_default();
        self.send(agent_message::Message::StatusUpdate(StatusUpdate {
            status: Some(status),
        }));
    }

    pub(super) fn heartbeat(&mut self) {
        if let Some(session) = &mut self.session {
            session.next_heartbeat = Instant::now() + session.heartbeat_interval;
        }
        self.send(agent_message::Message::Heartbeat(Heartbeat {}));
    }

    pub(super) fn resend_due(&mut self) {
        for status in self.updates.due(Instant::now()) {
            tracing::debug!(
                framework_id = %status.framework_id,
                task_id = %status.task_id,
                state = status.state().label(),
                "resending an unacknowledged status update"
            );
            self.send_update(status);
        }
    }

    fn on_message(&mut self, message: strata_proto::AllocatorMessage) {
        let Some(message) = message.message else {
            tracing::warn!("ignoring an empty message from the allocator");
            return;
        };
        match message {
            allocator_message::Message::Registered(registered) => self.on_registered(registered),
            allocator_message::Message::LaunchTask(launch) => self.on_launch(launch),
            allocator_message::Message::KillTask(kill) => self.on_kill(kill),
            allocator_message::Message::Acknowledge(ack) => self.on_ack(ack),
            allocator_message::Message::Shutdown(shutdown) => {
                tracing::info!(reason = %shutdown.reason, "the allocator asked this agent to shut down");
                self.begin_stopping(
                    &format!(
                        "killed because the allocator shut the agent down: {}",
                        shutdown.reason
                    ),
                    true,
                );
            }
        }
    }

    fn on_registered(&mut self, registered: Registered) {
        for warning in registered.warnings.iter().take(MAX_REGISTERED_WARNINGS) {
            tracing::warn!(warning = %strata_proto::ids::shorten(warning, 1024), "the allocator changed what this agent registered");
        }
        let id = registered.agent_id;
        if let Err(e) = strata_proto::ids::check_id("agent id", &id) {
            tracing::warn!(error = %e, "the allocator answered the registration without a valid agent id; ignoring it");
            return;
        }
        if self.agent_id.as_deref() != Some(id.as_str()) {
            if let Some(old) = &self.agent_id {
                tracing::warn!(old_agent_id = %old, new_agent_id = %id,
                    "the allocator assigned this agent a new id");
            }
            if let Err(e) = checkpoint::save_agent_id(&self.config.work_dir, &id) {
                tracing::error!(error = %e, "cannot persist the agent id; if the agent restarts it will register as a new agent");
            }
            self.span.record("agent_id", id.as_str());
            self.latest_usage.set_agent_id(&id);
            self.agent_id = Some(id);
        }
        let interval = Duration::try_from_secs_f64(registered.heartbeat_interval_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let now = Instant::now();
        if let Some(session) = &mut self.session {
            session.registered = true;
            session.heartbeat_interval = interval;
            session.next_heartbeat = now + interval;
        }
        tracing::info!(
            heartbeat_interval_ms = interval.as_millis() as u64,
            "registered with the allocator"
        );
        for status in self.updates.resend_all(now) {
            self.send_update(status);
        }
    }

    /// Streams the latest usage report to the allocator: in full on a new stream or after a
    /// report was lost, else as a delta of the records read anew and the tasks that ended.
    pub(super) fn send_usage(&mut self, report: &UsageReport) {
        let Some(session) = &self.session else {
            return;
        };
        if !session.registered {
            return;
        }
        let usage = if session.usage_synced && !report.after_a_gap {
            agent_message::Usage {
                tasks: report.fresh_records().cloned().collect(),
                delta: true,
                ended: report
                    .ended
                    .iter()
                    .map(|(framework_id, task_id)| agent_message::UsageTaskKey {
                        framework_id: framework_id.clone(),
                        task_id: task_id.clone(),
                    })
                    .collect(),
                timestamp: report.timestamp,
            }
        } else {
            agent_message::Usage {
                tasks: report.current(),
                delta: false,
                ended: Vec::new(),
                timestamp: report.timestamp,
            }
        };
        let sent = self.send(agent_message::Message::Usage(usage));
        if let Some(session) = &mut self.session {
            session.usage_synced = sent;
        }
    }
}
