//! The allocator's AgentService, faked over real gRPC on 127.0.0.1: what an agent under test
//! dials. It answers Register with Registered and hands every message, with its connection
//! number, to the test, which sends launches, kills and acknowledgements itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use strata_proto::agent_message::Message as AgentMsg;
use strata_proto::agent_service_server::{AgentService, AgentServiceServer};
use strata_proto::allocator_message::{
    AcknowledgeUpdate, KillTask, LaunchTask, Message as AllocMsg, Registered,
};
use strata_proto::{AgentMessage, AllocatorMessage, TaskInfo, TaskStatus};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::STEP;

type Outbound = mpsc::UnboundedSender<Result<AllocatorMessage, Status>>;
type Conns = Arc<Mutex<HashMap<u64, Outbound>>>;

/// What the fake answers and names.
#[derive(Debug, Clone)]
pub struct FakeAllocatorOptions {
    /// The id a new agent (one registering without an id) is given.
    pub assigned_id: String,
    /// The heartbeat interval in Registered.
    pub heartbeat_interval_seconds: f64,
    /// The framework that [`FakeAllocator::launch`] and [`FakeAllocator::kill`] name.
    pub framework_id: String,
    /// The leader term Registered names (0: not a replicated allocator).
    pub leader_epoch: u64,
}

/// The service: answers Register, forwards everything.
struct Service {
    inbound: mpsc::UnboundedSender<(u64, AgentMessage)>,
    conns: Conns,
    next_conn: AtomicU64,
    assigned_id: String,
    heartbeat_interval_seconds: f64,
    leader_epoch: u64,
}

#[tonic::async_trait]
impl AgentService for Service {
    type ConnectStream = UnboundedReceiverStream<Result<AllocatorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let conn = self.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.conns.lock().unwrap().insert(conn, tx.clone());
        let inbound = self.inbound.clone();
        let assigned_id = self.assigned_id.clone();
        let heartbeat_interval_seconds = self.heartbeat_interval_seconds;
        let leader_epoch = self.leader_epoch;
        let mut stream = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                if let Some(AgentMsg::Register(register)) = &message.message {
                    let id = register
                        .info
                        .as_ref()
                        .map(|i| i.id.clone())
                        .filter(|id| !id.is_empty())
                        .unwrap_or_else(|| assigned_id.clone());
                    let _ = tx.send(Ok(AllocatorMessage {
                        message: Some(AllocMsg::Registered(Registered {
                            agent_id: id,
                            heartbeat_interval_seconds,
                            warnings: Vec::new(),
                            leader_epoch,
                        })),
                    }));
                }
                if inbound.send((conn, message)).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A fake allocator serving AgentService; the server stops on drop.
#[derive(Debug)]
pub struct FakeAllocator {
    /// Where it listens.
    pub addr: SocketAddr,
    inbound: mpsc::UnboundedReceiver<(u64, AgentMessage)>,
    conns: Conns,
    framework_id: String,
    server: JoinHandle<()>,
}

impl FakeAllocator {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(opts: FakeAllocatorOptions) -> Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0").await?, opts)
    }

    /// Serves on `listener`.
    pub fn serve(listener: TcpListener, opts: FakeAllocatorOptions) -> Result<Self> {
        let addr = listener.local_addr()?;
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let conns = Conns::default();
        let service = Service {
            inbound: inbound_tx,
            conns: conns.clone(),
            next_conn: AtomicU64::new(0),
            assigned_id: opts.assigned_id,
            heartbeat_interval_seconds: opts.heartbeat_interval_seconds,
            leader_epoch: opts.leader_epoch,
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self {
            addr,
            inbound,
            conns,
            framework_id: opts.framework_id,
            server,
        })
    }

    /// Stops serving (also done on drop).
    pub fn stop(&self) {
        self.server.abort();
    }

    /// The next message the agent sends that `pick` accepts, within [`STEP`].
    pub async fn next<T>(
        &mut self,
        mut pick: impl FnMut(u64, &AgentMessage) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let (conn, message) = tokio::time::timeout_at(deadline, self.inbound.recv())
                .await
                .context("timed out waiting for a message from the agent")?
                .context("the fake allocator stopped")?;
            if let Some(found) = pick(conn, &message) {
                return Ok(found);
            }
        }
    }

    /// The next Register, with its connection number.
    pub async fn next_register(&mut self) -> Result<(u64, strata_proto::agent_message::Register)> {
        self.next(|conn, m| match &m.message {
            Some(AgentMsg::Register(r)) => Some((conn, r.clone())),
            _ => None,
        })
        .await
    }

    /// The next status update.
    pub async fn next_update(&mut self) -> Result<TaskStatus> {
        self.next(|_, m| match &m.message {
            Some(AgentMsg::StatusUpdate(u)) => u.status.clone(),
            _ => None,
        })
        .await
    }

    /// The next update, acknowledged.
    pub async fn next_update_acked(&mut self) -> Result<TaskStatus> {
        let status = self.next_update().await?;
        self.ack(&status)?;
        Ok(status)
    }

    /// Fails if the agent sends a status update within `window`, other than a resend of one of
    /// `seen` (an acknowledgement may still be on its way when the window opens).
    pub async fn expect_no_new_update(
        &mut self,
        window: Duration,
        seen: &[&TaskStatus],
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) => bail!("the fake allocator stopped"),
                Ok(Some((_, m))) => {
                    if let Some(AgentMsg::StatusUpdate(u)) = m.message {
                        let status = u.status.unwrap_or_default();
                        if !seen.iter().any(|s| s.uuid == status.uuid) {
                            bail!("unexpected status update {status:?}");
                        }
                    }
                }
            }
        }
    }

    /// Sends `message` on the latest stream.
    pub fn send(&self, message: AllocMsg) -> Result<()> {
        let conns = self.conns.lock().unwrap();
        let latest = conns.keys().max().context("the agent never connected")?;
        conns[latest]
            .send(Ok(AllocatorMessage {
                message: Some(message),
            }))
            .map_err(|_| anyhow!("the stream to the agent is closed"))
    }

    /// Acknowledges `status`.
    pub fn ack(&self, status: &TaskStatus) -> Result<()> {
        self.send(AllocMsg::Acknowledge(AcknowledgeUpdate {
            framework_id: status.framework_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        }))
    }

    /// Launches `task` for the options' framework.
    pub fn launch(&self, task: TaskInfo) -> Result<()> {
        self.send(AllocMsg::LaunchTask(LaunchTask {
            framework_id: self.framework_id.clone(),
            task: Some(task),
        }))
    }

    /// Kills the options' framework's `task_id` with a grace period.
    pub fn kill(&self, task_id: &str, grace_seconds: f64) -> Result<()> {
        self.send(AllocMsg::KillTask(KillTask {
            framework_id: self.framework_id.clone(),
            task_id: task_id.to_owned(),
            grace_period_seconds: Some(grace_seconds),
        }))
    }

    /// Ends the latest stream from the allocator's side.
    pub fn drop_stream(&self) -> Result<()> {
        let mut conns = self.conns.lock().unwrap();
        let latest = *conns.keys().max().context("the agent never connected")?;
        let tx = conns.remove(&latest).context("no stream")?;
        let _ = tx.send(Err(Status::unavailable(
            "the fake allocator drops the stream",
        )));
        Ok(())
    }
}

impl Drop for FakeAllocator {
    fn drop(&mut self) {
        self.server.abort();
    }
}
