//! `cargo bench -p strata-allocator --bench mesos` (what `cargo xtask bench mesos` runs): the
//! Mesos v1 scheduler HTTP API against the native gRPC SchedulerService, in one run, on one
//! in-process allocator per phase, with fake agents over real gRPC (they answer a launch with
//! TASK_RUNNING then TASK_FINISHED at once, so what is timed is the allocator and its API
//! edge, not a containerizer):
//!
//! - offers per second: `--agents` agents; the framework declines every offer it gets with
//!   refuse_seconds 0 in one DECLINE per OFFERS event, for `--seconds`. A DECLINE refuses
//!   until the next periodic allocation pass (every `allocation_interval`, 1 s here), so
//!   this is about one offer per agent per interval: it checks that a decline loop is
//!   paced by the allocation interval, not the edge's throughput;
//! - ACCEPT-to-TASK_RUNNING latency, median and p99: one agent; `--launches` times, the
//!   framework accepts an offer with one task and waits for its TASK_RUNNING update
//!   (updates are acknowledged, as Mesos frameworks do).
//!
//! The HTTP client is a bare HTTP/1.1 client on a TCP socket (one keep-alive connection
//! for calls, one for the event stream), as Mesos client libraries are.
//!
//! With `--tls`, both are measured again with TLS and authentication on (the allocator's
//! certificate and client CA, ACLs; the fakes and gRPC frameworks present a client
//! certificate, the HTTP frameworks speak TLS and send HTTP Basic), and the table gives each
//! figure's ratio to the plain run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use strata_allocator::AllocatorConfig;
use strata_allocator::mesos::HttpApi;
use strata_allocator::mesos::recordio::Decoder;
use strata_proto::names::{CPUS, MEM};
use strata_proto::{
    AgentInfo, CommandInfo, Filters, FrameworkInfo, Operation, Resource, TaskInfo, TaskState, call,
    event, operation,
};
use strata_test_support::StreamOptions;
use strata_test_support::allocator::{Allocator, Pki};
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::framework::Framework;
use strata_test_support::wait::bounded_for;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const STEP: Duration = Duration::from_secs(20);

/// The fakes' streams: long queues, and [`STEP`] for each step.
const STREAMS: StreamOptions = StreamOptions {
    capacity: 1024,
    step: STEP,
};

struct Args {
    agents: usize,
    seconds: f64,
    launches: usize,
    tls: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        agents: 50,
        seconds: 5.0,
        launches: 1000,
        tls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--launches" => args.launches = value()?.parse()?,
            "--tls" => args.tls = true,
            // `cargo bench` passes --bench.
            "--bench" => {}
            other => {
                bail!("unknown flag {other}: use --agents N, --seconds S, --launches N, --tls")
            }
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
        "mesos bench: {} agents for offers ({:.0} s each API), {} launches for latency{}",
        args.agents,
        args.seconds,
        args.launches,
        if args.tls {
            "; plain, then TLS and authentication"
        } else {
            ""
        }
    );
    let plain = measure(&args, None).await?;
    let secure = if args.tls {
        let pki = Pki::new("bench")?;
        Some(measure(&args, Some(&pki)).await?)
    } else {
        None
    };

    println!();
    println!("| API  | offers/s | ACCEPT->RUNNING median | p99 |");
    println!("|------|----------|------------------------|-----|");
    for row in &plain {
        println!(
            "| {} | {:.0} | {:.3} ms | {:.3} ms |",
            row.name,
            row.offers,
            ms(row.median),
            ms(row.p99)
        );
    }
    if let Some(secure) = &secure {
        for (row, base) in secure.iter().zip(&plain) {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            println!(
                "| {} + TLS, auth | {:.0} ({:.2}x) | {:.3} ms ({:.2}x) | {:.3} ms ({:.2}x) |",
                row.name,
                row.offers,
                ratio(row.offers, base.offers),
                ms(row.median),
                ratio(ms(row.median), ms(base.median)),
                ms(row.p99),
                ratio(ms(row.p99), ms(base.p99)),
            );
        }
    }
    Ok(())
}

/// One API's figures.
struct Row {
    name: &'static str,
    offers: f64,
    median: Duration,
    p99: Duration,
}

/// Both APIs' figures, on allocators secured by `pki` when given.
async fn measure(args: &Args, pki: Option<&Pki>) -> Result<[Row; 2]> {
    let seconds = Duration::from_secs_f64(args.seconds);
    let http = HttpClient::new(pki)?;

    let allocator = start_allocator(pki).await?;
    let mut agents = Vec::new();
    for i in 0..args.agents {
        agents.push(fake_agent(&allocator, i).await?);
    }
    let grpc_offers = offers_grpc(&allocator, args.agents, seconds).await?;
    let http_offers = offers_http(&allocator, &http, args.agents, seconds).await?;
    allocator.shutdown().await?;
    for a in agents {
        a.abort();
    }

    let allocator = start_allocator(pki).await?;
    let agent = fake_agent(&allocator, 0).await?;
    let mut grpc_latency = latency_grpc(&allocator, args.launches).await?;
    let mut http_latency = latency_http(&allocator, &http, args.launches).await?;
    allocator.shutdown().await?;
    agent.abort();
    grpc_latency.sort();
    http_latency.sort();
    let row = |name, offers, lat: &[Duration]| Row {
        name,
        offers,
        median: percentile(lat, 50.0),
        p99: percentile(lat, 99.0),
    };
    Ok([
        row("gRPC", grpc_offers, &grpc_latency),
        row("HTTP", http_offers, &http_latency),
    ])
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
    bounded_for(STEP, what, fut).await
}

/// An allocator with the default configuration (rarer framework heartbeats) and the Mesos HTTP
/// API, secured by `pki` when given.
async fn start_allocator(pki: Option<&Pki>) -> Result<Allocator> {
    let config = AllocatorConfig {
        framework_heartbeat_interval: Duration::from_secs(15),
        ..AllocatorConfig::default()
    };
    let http = HttpApi::new(TcpListener::bind("127.0.0.1:0").await?);
    let allocator = match pki {
        Some(pki) => Allocator::start_secure(config, Some(http), pki).await?,
        None => Allocator::start_with(config, Some(http), None).await?,
    };
    Ok(allocator.with_step(STEP))
}

/// An agent that answers every launch with TASK_RUNNING then TASK_FINISHED.
async fn fake_agent(allocator: &Allocator, i: usize) -> Result<JoinHandle<()>> {
    let info = AgentInfo {
        hostname: format!("agent-{i}"),
        resources: vec![Resource::scalar(CPUS, 16.0), Resource::scalar(MEM, 65536.0)],
        ..AgentInfo::default()
    };
    let (agent, _) = FakeAgent::connect(allocator.channel().await?, info, STREAMS).await?;
    Ok(agent.answer_launches())
}

/// A gRPC framework named `name`.
async fn grpc_framework(allocator: &Allocator, name: &str) -> Result<Framework> {
    let info = FrameworkInfo {
        name: name.to_owned(),
        ..FrameworkInfo::default()
    };
    Framework::subscribe_on(allocator.channel().await?, info, STREAMS).await
}

fn refuse_zero() -> Option<Filters> {
    Some(Filters {
        refuse_seconds: Some(0.0),
    })
}

async fn offers_grpc(allocator: &Allocator, agents: usize, seconds: Duration) -> Result<f64> {
    let mut fw = grpc_framework(allocator, "offers-grpc").await?;
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
            fw.call(call::Call::Decline(call::Decline {
                offer_ids: ids,
                filters: refuse_zero(),
            }))
            .await?;
        }
    }
    let rate = offers as f64 / started.map_or(1.0, |t| t.elapsed().as_secs_f64());
    fw.call(call::Call::Teardown(call::Teardown {})).await?;
    println!("gRPC: {offers} offers of {agents} agents, {rate:.0}/s");
    Ok(rate)
}

async fn latency_grpc(allocator: &Allocator, launches: usize) -> Result<Vec<Duration>> {
    let mut fw = grpc_framework(allocator, "latency-grpc").await?;
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
                    fw.call(accept).await?;
                }
                if !ids.is_empty() {
                    fw.call(call::Call::Decline(call::Decline {
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
                    fw.call(call::Call::Acknowledge(call::Acknowledge {
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
    fw.call(call::Call::Teardown(call::Teardown {})).await?;
    Ok(samples)
}

/// A connection: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the HTTP frameworks connect: plain, or TLS (trusting the bench's CA) with HTTP Basic.
struct HttpClient {
    tls: Option<(tokio_rustls::TlsConnector, String)>,
}

impl HttpClient {
    fn new(pki: Option<&Pki>) -> Result<Self> {
        let tls = match pki {
            Some(pki) => Some((
                tokio_rustls::TlsConnector::from(pki.http_tls()?),
                pki.basic_authorization(),
            )),
            None => None,
        };
        Ok(Self { tls })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, _)) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                Ok(Box::new(connector.connect(name, tcp).await?))
            }
        }
    }

    /// The `Authorization` header line, or nothing.
    fn authorization(&self) -> String {
        self.tls
            .as_ref()
            .map_or(String::new(), |(_, a)| format!("Authorization: {a}\r\n"))
    }
}

/// A keep-alive HTTP/1.1 connection for calls.
struct Poster {
    stream: Box<dyn Io>,
    authorization: String,
    buf: Vec<u8>,
    stream_id: String,
}

async fn read_head(stream: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<(u16, String)> {
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

fn request(body: &str, stream_id: Option<&str>, authorization: &str) -> Vec<u8> {
    let stream_id = stream_id.map_or(String::new(), |id| format!("Mesos-Stream-Id: {id}\r\n"));
    format!(
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\n{authorization}{stream_id}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Poster {
    async fn post(&mut self, call: &Value) -> Result<()> {
        let bytes = request(
            &call.to_string(),
            Some(&self.stream_id),
            &self.authorization,
        );
        self.stream.write_all(&bytes).await?;
        let (status, head) = read_head(&mut self.stream, &mut self.buf).await?;
        ensure!(status == 202, "call answered {status}: {head}");
        Ok(())
    }
}

/// A Mesos HTTP framework: the event stream and a connection for calls.
struct HttpFramework {
    events: Box<dyn Io>,
    raw: Vec<u8>,
    chunk_left: usize,
    decoder: Decoder,
    /// The read buffer (on the heap: futures holding it stay small).
    scratch: Vec<u8>,
    poster: Poster,
    id: String,
}

impl HttpFramework {
    async fn subscribe(client: &HttpClient, addr: SocketAddr, name: &str) -> Result<Self> {
        let mut events = client.connect(addr).await?;
        let body = json!({ "type": "SUBSCRIBE",
            "subscribe": { "framework_info": { "user": "", "name": name } } });
        let authorization = client.authorization();
        events
            .write_all(&request(&body.to_string(), None, &authorization))
            .await?;
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
        let post_stream = client.connect(addr).await?;
        let mut fw = Self {
            events,
            raw,
            chunk_left: 0,
            decoder: Decoder::new(),
            scratch: vec![0; 65536],
            poster: Poster {
                stream: post_stream,
                authorization,
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

async fn offers_http(
    allocator: &Allocator,
    client: &HttpClient,
    agents: usize,
    seconds: Duration,
) -> Result<f64> {
    let mut fw = HttpFramework::subscribe(client, allocator.http(), "offers-http").await?;
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

async fn latency_http(
    allocator: &Allocator,
    client: &HttpClient,
    launches: usize,
) -> Result<Vec<Duration>> {
    let mut fw = HttpFramework::subscribe(client, allocator.http(), "latency-http").await?;
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
