//! An agent faked over a real Connect stream to a real allocator: the test (or a benchmark)
//! registers it, reads what the allocator sends and reports task states itself.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::{
    AgentInfo, AgentMessage, AllocatorMessage, TaskSource, TaskState, TaskStatus, agent_message,
    allocator_message,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::StreamOptions;
use crate::wait::bounded_for;

/// `message` as an [`AgentMessage`].
pub fn agent_msg(message: agent_message::Message) -> AgentMessage {
    AgentMessage {
        message: Some(message),
    }
}

/// An agent over a real Connect stream.
#[derive(Debug)]
pub struct FakeAgent {
    /// What the agent sends.
    pub tx: mpsc::Sender<AgentMessage>,
    /// What the allocator sends.
    pub rx: Streaming<AllocatorMessage>,
    /// The id the allocator gave it.
    pub id: String,
    step: Duration,
}

impl FakeAgent {
    /// Opens the stream on `channel` first, then registers `info` (the allocator must not wait
    /// for Register before answering the call), and returns the agent with the allocator's
    /// answer.
    pub async fn connect(
        channel: Channel,
        info: AgentInfo,
        opts: StreamOptions,
    ) -> Result<(Self, allocator_message::Registered)> {
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(opts.capacity);
        let response = bounded_for(
            opts.step,
            "Connect",
            client.connect(ReceiverStream::new(rx)),
        )
        .await??;
        let mut agent = Self {
            tx,
            rx: response.into_inner(),
            id: String::new(),
            step: opts.step,
        };
        agent
            .send(agent_message::Message::Register(agent_message::Register {
                info: Some(info),
                tasks: vec![],
            }))
            .await?;
        match agent.next().await? {
            allocator_message::Message::Registered(r) => {
                agent.id.clone_from(&r.agent_id);
                Ok((agent, r))
            }
            other => bail!("expected Registered, got {other:?}"),
        }
    }

    /// Sends `message`.
    pub async fn send(&self, message: agent_message::Message) -> Result<()> {
        bounded_for(self.step, "agent send", self.tx.send(agent_msg(message)))
            .await?
            .map_err(|_| anyhow!("agent stream closed"))
    }

    /// The next message from the allocator.
    pub async fn next(&mut self) -> Result<allocator_message::Message> {
        let msg = bounded_for(self.step, "an allocator message", self.rx.message())
            .await??
            .context("allocator ended the agent stream")?;
        msg.message.context("empty allocator message")
    }

    /// The next LaunchTask, Acknowledge or KillTask.
    pub async fn next_launch_or_ack(&mut self) -> Result<allocator_message::Message> {
        loop {
            let m = self.next().await?;
            if matches!(
                m,
                allocator_message::Message::LaunchTask(_)
                    | allocator_message::Message::Acknowledge(_)
                    | allocator_message::Message::KillTask(_)
            ) {
                return Ok(m);
            }
        }
    }

    /// A status update from the agent, with exit code 0 when `state` is terminal.
    pub async fn update(
        &self,
        framework_id: &str,
        task_id: &str,
        state: TaskState,
        uuid: &[u8],
    ) -> Result<()> {
        self.send(agent_message::Message::StatusUpdate(
            agent_message::StatusUpdate {
                status: Some(TaskStatus {
                    task_id: task_id.to_owned(),
                    framework_id: framework_id.to_owned(),
                    agent_id: self.id.clone(),
                    state: state as i32,
                    source: TaskSource::Agent as i32,
                    uuid: uuid.to_vec(),
                    exit_code: state.is_terminal().then_some(0),
                    ..TaskStatus::default()
                }),
            },
        ))
        .await
    }

    /// From now on, answers every launch with TASK_RUNNING and then TASK_FINISHED at once (each
    /// with a fresh uuid, never resent), until either side ends the stream.
    pub fn answer_launches(mut self) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok(Some(m)) = self.rx.message().await {
                let Some(allocator_message::Message::LaunchTask(launch)) = m.message else {
                    continue;
                };
                let Some(task) = launch.task else { continue };
                for state in [TaskState::Running, TaskState::Finished] {
                    let uuid = uuid::Uuid::new_v4();
                    let sent = self
                        .update(&launch.framework_id, &task.task_id, state, uuid.as_bytes())
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
            }
        })
    }
}
