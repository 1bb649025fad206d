//! `cargo bench -p strata-allocator --bench mesos` (what `cargo xtask bench mesos` runs): the
//! Mesos v1 scheduler HTTP API against the native gRPC SchedulerService, in one run, on one
//! in-process allocator per phase, with fake agents over real gRPC (they answer a launch with
//! TASK_RUNNING then TASK_FINISHED at once, so what is timed is the allocator and its API
//! edge, not a containerizer):
//!
//! - offers per second: `--agents` agents; the framework declines every offer it gets with
//!   refuse_seconds 0 in one DECLINE per OFFERS event, for `--seconds`;
//! - ACCEPT-to-TASK_RUNNING latency, median and p99: one agent; `--launches` times, the
//!   framework accepts an offer with one task and waits for its TASK_RUNNING update
//!   (updates are acknowledged, as Mesos frameworks do).
//!
//! The HTTP client is a bare HTTP/1.1 client on a TCP socket (one keep-alive connection
//! for calls, one for the event stream), as Mesos client libraries are.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use strata_allocator::mesos::HttpApi;
use strata_allocator::mesos::recordio::Decoder;
use strata_allocator::store::MemoryStore;
use strata_allocator::{AllocatorConfig, Metrics, ServeError, serve_with_http};
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::names::{CPUS, MEM};
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{
    AgentInfo, AgentMessage, Call, CommandInfo, Event, Filters, FrameworkInfo, Operation, Resource,
    TaskInfo, TaskSource, TaskState, TaskStatus, agent_message, allocator_message, call, event,
    operation,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

const STEP: Duration = Duration::from_secs(20);

struct Args {
    agents: usize,
    seconds: f64,
    launches: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        agents: 50,
        seconds: 5.0,
        launches: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--launches" => args.launches = value()?.parse()?,
            // `cargo bench` passes --bench.
            "--bench" => {}
            other => bail!("unknown flag {other}: use --agents N, --seconds S, --launches N"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    println!(
        "mesos bench: {} agents for offers ({:.0} s each API), {} launches for latency",
        args.agents, args.seconds, args.launches
    );
    let seconds = Duration::from_secs_f64(args.seconds);

    let allocator = Allocator::start().await?;
    let mut agents = Vec::new();
    for i in 0..args.agents {
        agents.push(fake_agent(allocator.grpc, i).await?);
    }
    let grpc_offers = offers_grpc(&allocator, args.agents, seconds).await?;
    let http_offers = offers_http(&allocator, args.agents, seconds).await?;
    allocator.shutdown().await?;
    for a in agents {
        a.abort();
    }

    let allocator = Allocator::start().await?;
    let agent = fake_agent(allocator.grpc, 0).await?;
    let grpc_latency = latency_grpc(&allocator, args.launches).await?;
    let http_latency = latency_http(&allocator, args.launches).await?;
    allocator.shutdown().await?;
    agent.abort();

    println!();
    println!("| API  | offers/s | ACCEPT->RUNNING median | p99 |");
    println!("|------|----------|------------------------|-----|");
    for (name, offers, mut lat) in [
        ("gRPC", grpc_offers, grpc_latency),
        ("HTTP", http_offers, http_latency),
    ] {
        lat.sort();
        println!(
            "| {name} | {offers:.0} | {:.3} ms | {:.3} ms |",
            ms(percentile(&lat, 50.0)),
            ms(percentile(&lat, 99.0))
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .map_err(|_| anyhow!("timed out after {STEP:?} waiting for {what}"))
}

struct Allocator {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), ServeError>>,
}

impl Allocator {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = listener.local_addr()?;
        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let config = AllocatorConfig {
            framework_heartbeat_interval: Duration::from_secs(15),
            ..AllocatorConfig::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_http(
            listener,
            config,
            Box::new(MemoryStore::default()),
            Metrics::new(),
            Some(HttpApi::new(http_listener)),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            grpc,
            http,
            stop,
            server,
        })
    }

    async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        bounded("the allocator to stop", self.server).await???;
        Ok(())
    }
}

async fn channel(addr: SocketAddr) -> Result<Channel> {
    Ok(bounded(
        "connect",
        Endpoint::from_shared(format!("http://{addr}"))?.connect(),
    )
    .await??)
}

/// An agent that answers every launch with TASK_RUNNING then TASK_FINISHED.
async fn fake_agent(addr: SocketAddr, i: usize) -> Result<JoinHandle<()>> {
    let mut client = AgentServiceClient::new(channel(addr).await?);
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let register = agent_message::Message::Register(agent_message::Register {
        info: Some(AgentInfo {
            hostname: format!("agent-{i}"),
            resources: vec![Resource::scalar(CPUS, 16.0), Resource::scalar(MEM, 65536.0)],
            ..AgentInfo::default()
        }),
        tasks: vec![],
    });
    tx.send(AgentMessage {
        message: Some(register),
    })
    .await?;
    let agent_id = match bounded("Registered", inbound.message())
        .await??
        .and_then(|m| m.message)
    {
        Some(allocator_message::Message::Registered(r)) => r.agent_id,
        other => bail!("expected Registered, got {other:?}"),
    };
    Ok(tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            let Some(allocator_message::Message::LaunchTask(launch)) = m.message else {
                continue;
            };
            let Some(task) = launch.task else { continue };
            for state in [TaskState::Running, TaskState::Finished] {
                let status = TaskStatus {
                    task_id: task.task_id.clone(),
                    framework_id: launch.framework_id.clone(),
                    agent_id: agent_id.clone(),
                    state: state as i32,
                    source: TaskSource::Agent as i32,
                    uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
                    exit_code: (state == TaskState::Finished).then_some(0),
                    ..TaskStatus::default()
                };
                let update = agent_message::Message::StatusUpdate(agent_message::StatusUpdate {
                    status: Some(status),
                });
                if tx
                    .send(AgentMessage {
                        message: Some(update),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }))
}

/// A gRPC framework.
struct GrpcFramework {
    tx: mpsc::Sender<Call>,
    rx: Streaming<Event>,
    id: String,
}

impl GrpcFramework {
    async fn subscribe(addr: SocketAddr, name: &str) -> Result<Self> {
        let mut client = SchedulerServiceClient::new(channel(addr).await?);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(Call {
            framework_id: String::new(),
            call: Some(call::Call::Subscribe(call::Subscribe {
                framework_info: Some(FrameworkInfo {
                    name: name.to_owned(),
                    ..FrameworkInfo::default()
                }),
            })),
        })
        .await?;
        let rx = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
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

    async fn next(&mut self) -> Result<event::Event> {
        bounded("an event", self.rx.message())
            .await??
            .and_then(|e| e.event)
            .context("the event stream ended")
    }

    async fn send(&self, c: call::Call) -> Result<()> {
        self.tx
            .send(Call {
                framework_id: self.id.clone(),
                call: Some(c),
            })
            .await
            .map_err(|_| anyhow!("the call stream closed"))
    }
}

fn refuse_zero() -> Option<Filters> {
    Some(Filters {
        refuse_seconds: Some(0.0),
    })
}

async fn offers_grpc(allocator: &Allocator, agents: usize, seconds: Duration) -> Result<f64> {
    let mut fw = GrpcFramework::subscribe(allocator.grpc, "offers-grpc").await?;
    let mut offers = 0usize;
    let mut started = None;
    loop {
        if let event::Event::Offers(o) = fw.next().await? {
            // The clock starts once every agent is offered, so both APIs time the same loop.
            let t = *started.get_or_insert_with(Instant::now);
            if t.elapsed() >= seconds {
                break;
            }
            offers += o.offers.len();
            let ids = o.offers.into_iter().map(|o| o.id).collect();
            fw.send(call::Call::Decline(call::Decline {
                offer_ids: ids,
                filters: refuse_zero(),
            }))
            .await?;
        }
    }
    let rate = offers as f64 / started.map_or(1.0, |t| t.elapsed().as_secs_f64());
    fw.send(call::Call::Teardown(call::Teardown {})).await?;
    println!("gRPC: {offers} offers of {agents} agents, {rate:.0}/s");
    Ok(rate)
}

async fn latency_grpc(allocator: &Allocator, launches: usize) -> Result<Vec<Duration>> {
    let mut fw = GrpcFramework::subscribe(allocator.grpc, "latency-grpc").await?;
    let mut samples = Vec::with_capacity(launches);
    let mut pending: Option<(String, Instant)> = None;
    let mut n = 0;
    while samples.len() < launches {
        match fw.next().await? {
            event::Event::Offers(o) => {
                let mut ids: Vec<String> = o.offers.iter().map(|o| o.id.clone()).collect();
                if pending.is_none() {
                    let offer = &o.offers[0];
                    let task_id = format!("t{n}");
                    n += 1;
                    let task = TaskInfo {
                        task_id: task_id.clone(),
                        name: task_id.clone(),
                        agent_id: offer.agent_id.clone(),
                        resources: vec![Resource::scalar(CPUS, 0.1), Resource::scalar(MEM, 16.0)],
                        command: Some(CommandInfo {
                            shell: true,
                            value: "true".to_owned(),
                            ..CommandInfo::default()
                        }),
                        ..TaskInfo::default()
                    };
                    let accept = call::Call::Accept(call::Accept {
                        offer_ids: vec![ids.remove(0)],
                        operations: vec![Operation {
                            operation: Some(operation::Operation::Launch(operation::Launch {
                                tasks: vec![task],
                            })),
                        }],
                        filters: refuse_zero(),
                    });
                    pending = Some((task_id, Instant::now()));
                    fw.send(accept).await?;
                }
                if !ids.is_empty() {
                    fw.send(call::Call::Decline(call::Decline {
                        offer_ids: ids,
                        filters: refuse_zero(),
                    }))
                    .await?;
                }
            }
            event::Event::Update(u) => {
                let s = u.status.context("update without status")?;
                if s.state() == TaskState::Running
                    && let Some((id, t)) = &pending
                    && *id == s.task_id
                {
                    samples.push(t.elapsed());
                    pending = None;
                }
                if !s.uuid.is_empty() {
                    fw.send(call::Call::Acknowledge(call::Acknowledge {
                        agent_id: s.agent_id,
                        task_id: s.task_id,
                        uuid: s.uuid,
                    }))
                    .await?;
                }
            }
            _ => {}
        }
    }
    fw.send(call::Call::Teardown(call::Teardown {})).await?;
    Ok(samples)
}

/// A keep-alive HTTP/1.1 connection for calls.
struct Poster {
    stream: TcpStream,
    buf: Vec<u8>,
    stream_id: String,
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, String)> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 4);
            let status = head.get(9..12).context("short status line")?.parse()?;
            return Ok((status, head));
        }
        let mut more = vec![0u8; 4096];
        let n = bounded("an HTTP response", stream.read(&mut more)).await??;
        ensure!(n > 0, "the allocator closed the connection");
        buf.extend_from_slice(&more[..n]);
    }
}

fn request(body: &str, stream_id: Option<&str>) -> Vec<u8> {
    let stream_id = stream_id.map_or(String::new(), |id| format!("Mesos-Stream-Id: {id}\r\n"));
    format!(
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\n{stream_id}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Poster {
    async fn post(&mut self, call: &Value) -> Result<()> {
        let bytes = request(&call.to_string(), Some(&self.stream_id));
        self.stream.write_all(&bytes).await?;
        let (status, head) = read_head(&mut self.stream, &mut self.buf).await?;
        ensure!(status == 202, "call answered {status}: {head}");
        Ok(())
    }
}

/// A Mesos HTTP framework: the event stream and a connection for calls.
struct HttpFramework {
    events: TcpStream,
    raw: Vec<u8>,
    chunk_left: usize,
    decoder: Decoder,
    /// The read buffer (on the heap: futures holding it stay small).
    scratch: Vec<u8>,
    poster: Poster,
    id: String,
}

impl HttpFramework {
    async fn subscribe(addr: SocketAddr, name: &str) -> Result<Self> {
        let mut events = TcpStream::connect(addr).await?;
        events.set_nodelay(true)?;
        let body = json!({ "type": "SUBSCRIBE",
            "subscribe": { "framework_info": { "user": "", "name": name } } });
        events.write_all(&request(&body.to_string(), None)).await?;
        let mut raw = Vec::new();
        let (status, head) = read_head(&mut events, &mut raw).await?;
        ensure!(status == 200, "SUBSCRIBE answered {status}: {head}");
        let stream_id = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("mesos-stream-id:")
                    .then(|| l[16..].trim().to_owned())
            })
            .context("no Mesos-Stream-Id")?;
        let post_stream = TcpStream::connect(addr).await?;
        post_stream.set_nodelay(true)?;
        let mut fw = Self {
            events,
            raw,
            chunk_left: 0,
            decoder: Decoder::new(),
            scratch: vec![0; 65536],
            poster: Poster {
                stream: post_stream,
                buf: Vec::new(),
                stream_id,
            },
            id: String::new(),
        };
        let subscribed = fw.next().await?;
        fw.id = subscribed["subscribed"]["framework_id"]["value"]
            .as_str()
            .context("no framework id")?
            .to_owned();
        Ok(fw)
    }

    /// The next event, decoding the chunked body.
    async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(record) = self.decoder.next_record()? {
                return Ok(serde_json::from_slice(&record)?);
            }
            if self.chunk_left > 0 && !self.raw.is_empty() {
                let n = self.chunk_left.min(self.raw.len());
                self.decoder.feed(&self.raw[..n]);
                self.raw.drain(..n);
                self.chunk_left -= n;
                continue;
            }
            if self.chunk_left == 0
                && let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n")
            {
                if i == 0 {
                    self.raw.drain(..2); // the CRLF after a chunk's data
                    continue;
                }
                let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..i])?.trim(), 16)?;
                ensure!(size > 0, "the event stream ended");
                self.raw.drain(..i + 2);
                self.chunk_left = size;
                continue;
            }
            let n = bounded("events", self.events.read(&mut self.scratch)).await??;
            ensure!(n > 0, "the allocator closed the event stream");
            self.raw.extend_from_slice(&self.scratch[..n]);
        }
    }

    async fn post(&mut self, kind: &str, field: &str, body: Value) -> Result<()> {
        let mut call = json!({ "type": kind, "framework_id": { "value": self.id } });
        if !field.is_empty() {
            call[field] = body;
        }
        self.poster.post(&call).await
    }
}

async fn offers_http(allocator: &Allocator, agents: usize, seconds: Duration) -> Result<f64> {
    let mut fw = HttpFramework::subscribe(allocator.http, "offers-http").await?;
    let mut offers = 0usize;
    let mut started = None;
    loop {
        let e = fw.next().await?;
        if e["type"] == "OFFERS" {
            let t = *started.get_or_insert_with(Instant::now);
            if t.elapsed() >= seconds {
                break;
            }
            let list = e["offers"]["offers"].as_array().context("offers")?;
            offers += list.len();
            let ids: Vec<Value> = list.iter().map(|o| o["id"].clone()).collect();
            fw.post(
                "DECLINE",
                "decline",
                json!({ "offer_ids": ids, "filters": { "refuse_seconds": 0.0 } }),
            )
            .await?;
        }
    }
    let rate = offers as f64 / started.map_or(1.0, |t| t.elapsed().as_secs_f64());
    fw.post("TEARDOWN", "", json!(null)).await?;
    println!("HTTP: {offers} offers of {agents} agents, {rate:.0}/s");
    Ok(rate)
}

async fn latency_http(allocator: &Allocator, launches: usize) -> Result<Vec<Duration>> {
    let mut fw = HttpFramework::subscribe(allocator.http, "latency-http").await?;
    let mut samples = Vec::with_capacity(launches);
    let mut pending: Option<(String, Instant)> = None;
    let mut n = 0;
    while samples.len() < launches {
        let e = fw.next().await?;
        if e["type"] == "OFFERS" {
            let list = e["offers"]["offers"].as_array().context("offers")?.clone();
            let mut ids: Vec<Value> = list.iter().map(|o| o["id"].clone()).collect();
            if pending.is_none() {
                let task_id = format!("t{n}");
                n += 1;
                let task = json!({
                    "name": task_id, "task_id": { "value": task_id },
                    "agent_id": list[0]["agent_id"],
                    "resources": [
                        { "name": "cpus", "type": "SCALAR", "scalar": { "value": 0.1 } },
                        { "name": "mem", "type": "SCALAR", "scalar": { "value": 16.0 } },
                    ],
                    "command": { "value": "true" },
                });
                let offer_id = ids.remove(0);
                pending = Some((task_id, Instant::now()));
                fw.post(
                    "ACCEPT",
                    "accept",
                    json!({
                        "offer_ids": [offer_id],
                        "operations": [{ "type": "LAUNCH", "launch": { "task_infos": [task] } }],
                        "filters": { "refuse_seconds": 0.0 },
                    }),
                )
                .await?;
            }
            if !ids.is_empty() {
                fw.post(
                    "DECLINE",
                    "decline",
                    json!({ "offer_ids": ids, "filters": { "refuse_seconds": 0.0 } }),
                )
                .await?;
            }
        } else if e["type"] == "UPDATE" {
            let s = &e["update"]["status"];
            if s["state"] == "TASK_RUNNING"
                && let Some((id, t)) = &pending
                && s["task_id"]["value"] == id.as_str()
            {
                samples.push(t.elapsed());
                pending = None;
            }
            if s.get("uuid").is_some() {
                let ack = json!({ "agent_id": s["agent_id"], "task_id": s["task_id"], "uuid": s["uuid"] });
                fw.post("ACKNOWLEDGE", "acknowledge", ack).await?;
            }
        }
    }
    fw.post("TEARDOWN", "", json!(null)).await?;
    Ok(samples)
}
