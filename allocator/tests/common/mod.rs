//! The harness of the allocator's integration tests: a real allocator in-process on 127.0.0.1
//! (port 0), this test acting as an agent (AgentService) and as a framework (SchedulerService)
//! over real gRPC, the `strata-allocator` binary as a real process, and `GET` through hyper's
//! HTTP/1.1 client. Every wait is bounded by a timeout so a bug fails a test instead of hanging
//! it.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use strata_allocator::mesos::{HttpApi, Leadership};
use strata_allocator::store::MemoryStore;
use strata_allocator::{AllocatorConfig, Metrics, metrics, serve_with_http};
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::names::{CPUS, MEM, PORTS};
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{
    AgentInfo, AgentMessage, AllocatorMessage, Call, CommandInfo, Event, Filters, FrameworkInfo,
    Offer, Operation, Resource, TaskInfo, TaskSource, TaskState, TaskStatus, agent_message,
    allocator_message, call, event, operation,
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// The longest any single step may take.
pub const STEP: Duration = Duration::from_secs(10);

/// The longest a `strata-allocator` process may take to print its address or to exit.
pub const PROCESS_STEP: Duration = Duration::from_secs(20);

/// `fut`, failing after [`STEP`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .map_err(|_| anyhow!("timed out after {STEP:?} waiting for {what}"))
}

/// Fast timers, so that the tests see heartbeats, rounds and filters expire quickly.
pub fn config() -> AllocatorConfig {
    AllocatorConfig {
        agent_heartbeat_interval: Duration::from_secs(1),
        agent_timeout: Duration::from_secs(30),
        agent_reconnect_timeout: Duration::from_millis(200),
        framework_heartbeat_interval: Duration::from_secs(1),
        allocation_interval: Duration::from_millis(50),
        // Short, so that a quiet spell after DECLINE proves the call's own filter, and the rest
        // of an accepted offer comes back soon.
        default_refuse: Duration::from_millis(200),
        terminal_task_history: 100,
        offer_timeout: None,
    }
}

/// A running allocator (with [`config`]) on ephemeral ports; stopped on drop.
pub struct Allocator {
    /// AgentService, SchedulerService and OperatorService.
    pub grpc: SocketAddr,
    /// The Mesos HTTP API or `/metrics`, when started with one.
    http: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Each server with what it is, awaited in order by [`Allocator::shutdown`].
    servers: Vec<(&'static str, JoinHandle<Result<()>>)>,
}

impl Allocator {
    /// gRPC only.
    pub async fn start() -> Result<Self> {
        Self::start_with(None, None).await
    }

    /// gRPC and the Mesos v1 scheduler HTTP API under `leadership` (`serve_with_http`).
    pub async fn with_mesos(leadership: Leadership) -> Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let api = HttpApi {
            leadership,
            ..HttpApi::new(http)
        };
        Self::start_with(Some(api), None).await
    }

    /// gRPC counting into its metrics, and `/metrics` served by `metrics::serve_http` on a
    /// listener of its own.
    pub async fn with_metrics() -> Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_with(None, Some(http)).await
    }

    async fn start_with(mesos: Option<HttpApi>, metrics_http: Option<TcpListener>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = listener.local_addr()?;
        let http = match (&mesos, &metrics_http) {
            (Some(api), _) => Some(api.listener.local_addr()?),
            (None, Some(listener)) => Some(listener.local_addr()?),
            (None, None) => None,
        };
        let (stop, stopped) = watch::channel(false);
        let metrics = Metrics::new();
        let server = serve_with_http(
            listener,
            config(),
            Box::new(MemoryStore::default()),
            metrics.clone(),
            mesos,
            until(stopped.clone()),
        );
        let mut servers = vec![("serve", spawn(server))];
        if let Some(listener) = metrics_http {
            let server = metrics::serve_http(listener, metrics, until(stopped));
            servers.push(("the metrics server", spawn(server)));
        }
        Ok(Self {
            grpc,
            http,
            stop,
            servers,
        })
    }

    /// The Mesos HTTP API's or `/metrics`' address.
    pub fn http(&self) -> SocketAddr {
        self.http
            .expect("an allocator without HTTP: start it with with_mesos or with_metrics")
    }

    pub async fn channel(&self) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.grpc))?;
        Ok(bounded("connect", endpoint.connect()).await??)
    }

    /// Stops the allocator and waits for each server to return.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.send_replace(true);
        for (what, server) in self.servers.drain(..) {
            bounded(&format!("{what} to return"), server).await???;
        }
        Ok(())
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn until(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn spawn<E>(server: impl Future<Output = Result<(), E>> + Send + 'static) -> JoinHandle<Result<()>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::spawn(async move { Ok(server.await?) })
}

pub fn agent_msg(message: agent_message::Message) -> AgentMessage {
    AgentMessage {
        message: Some(message),
    }
}

/// This test acting as an agent over a real Connect stream.
pub struct FakeAgent {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: Streaming<AllocatorMessage>,
    pub id: String,
}

impl FakeAgent {
    /// Opens the stream first, then registers (the allocator must not wait for Register
    /// before answering the call) `cpus`, `mem` and ports 31000-31099 on "fake-host".
    pub async fn register(allocator: &Allocator, cpus: f64, mem: f64) -> Result<Self> {
        let mut client = AgentServiceClient::new(allocator.channel().await?);
        let (tx, rx) = mpsc::channel(64);
        let response = bounded("Connect", client.connect(ReceiverStream::new(rx))).await??;
        let mut agent = Self {
            tx,
            rx: response.into_inner(),
            id: String::new(),
        };
        agent
            .send(agent_message::Message::Register(agent_message::Register {
                info: Some(AgentInfo {
                    hostname: "fake-host".to_owned(),
                    resources: vec![
                        Resource::scalar(CPUS, cpus),
                        Resource::scalar(MEM, mem),
                        Resource::ranges(PORTS, [(31000, 31099)]),
                    ],
                    ..AgentInfo::default()
                }),
                tasks: vec![],
            }))
            .await?;
        match agent.next().await? {
            allocator_message::Message::Registered(r) => {
                assert!(!r.agent_id.is_empty());
                assert_eq!(r.heartbeat_interval_seconds, 1.0);
                agent.id = r.agent_id;
            }
            other => bail!("expected Registered, got {other:?}"),
        }
        Ok(agent)
    }

    pub async fn send(&self, message: agent_message::Message) -> Result<()> {
        bounded("agent send", self.tx.send(agent_msg(message)))
            .await?
            .map_err(|_| anyhow!("agent stream closed"))
    }

    pub async fn next(&mut self) -> Result<allocator_message::Message> {
        let msg = bounded("an allocator message", self.rx.message())
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
}

/// A framework over a real Subscribe stream.
pub struct Framework {
    pub tx: mpsc::Sender<Call>,
    pub rx: Streaming<Event>,
    pub id: String,
}

impl Framework {
    /// Queues SUBSCRIBE and opens the stream, without reading from it.
    pub async fn open(
        allocator: &Allocator,
        info: FrameworkInfo,
    ) -> Result<(mpsc::Sender<Call>, Streaming<Event>)> {
        let mut client = SchedulerServiceClient::new(allocator.channel().await?);
        let (tx, rx) = mpsc::channel(64);
        let subscribe = Call {
            framework_id: String::new(),
            call: Some(call::Call::Subscribe(call::Subscribe {
                framework_info: Some(info),
            })),
        };
        bounded("queueing SUBSCRIBE", tx.send(subscribe)).await??;
        let response = bounded("Subscribe", client.subscribe(ReceiverStream::new(rx))).await??;
        Ok((tx, response.into_inner()))
    }

    pub async fn subscribe(allocator: &Allocator, info: FrameworkInfo) -> Result<Self> {
        let (tx, rx) = Self::open(allocator, info).await?;
        let mut fw = Self {
            tx,
            rx,
            id: String::new(),
        };
        match fw.next().await? {
            event::Event::Subscribed(s) => fw.id = s.framework_id,
            other => bail!("expected SUBSCRIBED, got {other:?}"),
        }
        Ok(fw)
    }

    pub async fn named(allocator: &Allocator, name: &str) -> Result<Self> {
        Self::subscribe(
            allocator,
            FrameworkInfo {
                name: name.to_owned(),
                ..FrameworkInfo::default()
            },
        )
        .await
    }

    /// The next event other than HEARTBEAT.
    pub async fn next(&mut self) -> Result<event::Event> {
        loop {
            let event = bounded("an event", self.rx.message())
                .await??
                .context("allocator ended the framework stream")?;
            match event.event.context("empty event")? {
                event::Event::Heartbeat(_) => continue,
                other => return Ok(other),
            }
        }
    }

    /// The next event `pick` accepts, skipping the others.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(event::Event) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for {what}"))??;
            if let Some(found) = pick(event) {
                return Ok(found);
            }
        }
    }

    pub async fn offer(&mut self) -> Result<Offer> {
        self.wait_for("an offer", |e| match e {
            event::Event::Offers(o) => o.offers.into_iter().next(),
            _ => None,
        })
        .await
    }

    pub async fn update(&mut self) -> Result<TaskStatus> {
        self.wait_for("an update", |e| match e {
            event::Event::Update(u) => u.status,
            _ => None,
        })
        .await
    }

    pub async fn call(&self, c: call::Call) -> Result<()> {
        bounded(
            "framework send",
            self.tx.send(Call {
                framework_id: self.id.clone(),
                call: Some(c),
            }),
        )
        .await??;
        Ok(())
    }

    /// Accepts `offer` with `tasks`, refusing nothing of what is left.
    pub async fn launch(&self, offer: &Offer, tasks: Vec<TaskInfo>) -> Result<()> {
        self.call(call::Call::Accept(call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![Operation {
                operation: Some(operation::Operation::Launch(operation::Launch { tasks })),
            }],
            filters: Some(Filters {
                refuse_seconds: Some(0.0),
            }),
        }))
        .await
    }
}

/// A `sleep 1` shell task asking for `cpus` and `mem`.
pub fn task(id: &str, cpus: f64, mem: f64) -> TaskInfo {
    TaskInfo {
        task_id: id.to_owned(),
        name: id.to_owned(),
        resources: vec![Resource::scalar(CPUS, cpus), Resource::scalar(MEM, mem)],
        command: Some(CommandInfo {
            shell: true,
            value: "sleep 1".to_owned(),
            ..CommandInfo::default()
        }),
        ..TaskInfo::default()
    }
}

/// An HTTP/1.1 answer as hyper parsed it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// `GET path` on `addr` through hyper's HTTP/1.1 client, bounded by [`STEP`].
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    use http_body_util::BodyExt as _;
    let uri: hyper::Uri = format!("http://{addr}{path}").parse()?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    bounded(&format!("GET {path}"), async {
        let response = client
            .get(uri)
            .await
            .with_context(|| format!("GET {path} on {addr}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the body of GET {path} on {addr}"))?
            .to_bytes();
        Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).context("a body that is not UTF-8")?,
        })
    })
    .await?
}

/// `strata-allocator ARGS` with piped output, killed on drop; a command that names neither
/// `--work-dir` nor `--store` gets `--store memory`, so no test writes to the default work dir
/// under /var/lib.
pub fn allocator_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-allocator"));
    cmd.args(args);
    if !args.iter().any(|a| *a == "--work-dir" || *a == "--store") {
        cmd.args(["--store", "memory"]);
    }
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `strata-allocator ARGS` and returns it with `http://ADDR` from its listening line.
pub async fn start_allocator(args: &[&str]) -> Result<(Child, String)> {
    let mut child = allocator_command(args)
        .spawn()
        .context("starting strata-allocator")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PROCESS_STEP, lines.next_line())
        .await
        .map_err(|_| anyhow!("no listening line within {PROCESS_STEP:?}"))??
        .context("stdout closed before the listening line")?;
    let addr = line
        .strip_prefix("strata-allocator listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    Ok((child, format!("http://{addr}")))
}

pub async fn wait_exit(child: &mut Child) -> Result<ExitStatus> {
    tokio::time::timeout(PROCESS_STEP, child.wait())
        .await
        .map_err(|_| anyhow!("the allocator did not exit within {PROCESS_STEP:?}"))?
        .context("waiting for the allocator")
}

/// Runs `strata-allocator ARGS`, which must fail, and returns what it wrote to stderr.
pub async fn allocator_fails(args: &[&str]) -> Result<String> {
    let mut child = allocator_command(args)
        .spawn()
        .context("starting strata-allocator")?;
    let status = wait_exit(&mut child).await?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)
        .await?;
    if status.success() {
        bail!("strata-allocator {args:?} succeeded; stderr: {stderr}");
    }
    Ok(stderr)
}
