//! The Mesos v1 scheduler HTTP API through real HTTP/1.1 on 127.0.0.1 (port 0), against a
//! real allocator (`serve_with_http`) and a fake agent speaking AgentService over real gRPC
//! (it reports the task states a real agent would; the pymesos test in cli/tests runs real
//! tasks). The client here is written on a bare TCP socket so that the wire is checked
//! exactly: status codes and headers, chunked framing with one RecordIO record per chunk,
//! and records read back through reads of a few bytes, split anywhere. Every wait is
//! bounded.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use strata_allocator::mesos::Leadership;
use strata_allocator::mesos::recordio::Decoder;
use strata_proto::{TaskState, allocator_message};
use strata_test_support::allocator::Allocator;
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::{STEP, bounded};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An HTTP/1.1 response read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: strata\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = bounded("connect", TcpStream::connect(addr)).await??;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Reads more bytes, a few at a time so that reads split records and chunks anywhere.
    async fn fill(&mut self) -> Result<()> {
        let mut small = [0u8; 7];
        let n = bounded("bytes from the allocator", self.stream.read(&mut small)).await??;
        ensure!(n > 0, "the allocator closed the connection");
        self.buf.extend_from_slice(&small[..n]);
        Ok(())
    }

    async fn head(&mut self) -> Result<(u16, Vec<(String, String)>)> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8(self.buf[..end].to_vec())?;
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().context("no status line")?;
        ensure!(
            status_line.starts_with("HTTP/1.1 "),
            "not HTTP/1.1: {status_line}"
        );
        let status = status_line[9..12].parse()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok((status, headers))
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let bytes = request(method, path, headers, body);
        bounded("sending a request", self.stream.write_all(&bytes)).await??;
        let (status, headers) = self.head().await?;
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(Ok(0), |(_, v)| v.parse())?;
        while self.buf.len() < length {
            self.fill().await?;
        }
        let body = self.buf.drain(..length).collect();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn post(&mut self, body: &Value, stream_id: Option<&str>) -> Result<Response> {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(id) = stream_id {
            headers.push(("Mesos-Stream-Id", id));
        }
        self.send(
            "POST",
            "/api/v1/scheduler",
            &headers,
            body.to_string().as_bytes(),
        )
        .await
    }
}

async fn post(addr: SocketAddr, body: &Value, stream_id: Option<&str>) -> Result<Response> {
    Conn::open(addr).await?.post(body, stream_id).await
}

async fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    Conn::open(addr).await?.send("GET", path, &[], b"").await
}

/// Where the chunked decoder is.
#[derive(Debug)]
enum Chunking {
    Size,
    Data(usize),
    DataEnd,
}

/// A SUBSCRIBE response: RecordIO records read through a hand-written chunked decoder.
struct Subscription {
    conn: Conn,
    stream_id: String,
    framework_id: String,
    state: Chunking,
    chunk: Vec<u8>,
    decoder: Decoder,
}

fn info(name: &str) -> Value {
    json!({ "user": "root", "name": name, "failover_timeout": 60.0 })
}

fn subscribe_call(info: Value) -> Value {
    json!({ "type": "SUBSCRIBE", "subscribe": { "framework_info": info } })
}

impl Subscription {
    /// SUBSCRIBE; checks the 200 response's headers and reads SUBSCRIBED.
    async fn open(addr: SocketAddr, call: &Value) -> Result<Self> {
        let mut conn = Conn::open(addr).await?;
        let body = call.to_string();
        let bytes = request(
            "POST",
            "/api/v1/scheduler",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
            ],
            body.as_bytes(),
        );
        bounded("sending SUBSCRIBE", conn.stream.write_all(&bytes)).await??;
        let (status, headers) = conn.head().await?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        ensure!(status == 200, "SUBSCRIBE answered {status}: {headers:?}");
        ensure!(header("content-type").as_deref() == Some("application/json"));
        ensure!(header("transfer-encoding").as_deref() == Some("chunked"));
        let stream_id = header("mesos-stream-id").context("no Mesos-Stream-Id")?;
        uuid::Uuid::parse_str(&stream_id).context("Mesos-Stream-Id is not a UUID")?;
        let mut sub = Self {
            conn,
            stream_id,
            framework_id: String::new(),
            state: Chunking::Size,
            chunk: Vec::new(),
            decoder: Decoder::new(),
        };
        let subscribed = sub.next().await?;
        ensure!(
            subscribed["type"] == "SUBSCRIBED",
            "first event: {subscribed}"
        );
        sub.framework_id = subscribed["subscribed"]["framework_id"]["value"]
            .as_str()
            .context("SUBSCRIBED without framework_id")?
            .to_owned();
        ensure!(subscribed["subscribed"]["heartbeat_interval_seconds"] == 1.0);
        ensure!(subscribed["subscribed"]["master_info"]["version"] == "1.11.0");
        Ok(sub)
    }

    /// SUBSCRIBE on the operator API (`POST /api/v1`, with `headers`): checks the 200
    /// response's headers and returns the stream with its first event, which must be
    /// SUBSCRIBED.
    async fn operator(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<(Self, Value)> {
        let mut conn = Conn::open(addr).await?;
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let bytes = request("POST", "/api/v1", &all, br#"{"type":"SUBSCRIBE"}"#);
        bounded("sending SUBSCRIBE", conn.stream.write_all(&bytes)).await??;
        let (status, headers) = conn.head().await?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        ensure!(
            status == 200,
            "operator SUBSCRIBE answered {status}: {headers:?}"
        );
        ensure!(header("content-type").as_deref() == Some("application/json"));
        ensure!(header("transfer-encoding").as_deref() == Some("chunked"));
        let mut sub = Self {
            conn,
            stream_id: String::new(),
            framework_id: String::new(),
            state: Chunking::Size,
            chunk: Vec::new(),
            decoder: Decoder::new(),
        };
        let subscribed = sub.next().await?;
        ensure!(
            subscribed["type"] == "SUBSCRIBED",
            "first event: {subscribed}"
        );
        Ok((sub, subscribed))
    }

    /// The next event. Each chunk must hold exactly one whole record.
    async fn next(&mut self) -> Result<Value> {
        loop {
            if let Some(record) = self.decoder.next_record()? {
                return Ok(serde_json::from_slice(&record)?);
            }
            self.advance().await?;
        }
    }

    /// The next event of `kind`, skipping heartbeats and others.
    async fn next_of(&mut self, kind: &str) -> Result<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] == kind {
                return Ok(e);
            }
            ensure!(e["type"] != "ERROR", "ERROR while waiting for {kind}: {e}");
        }
    }

    /// Decodes what is buffered, reading more when nothing can be decoded.
    async fn advance(&mut self) -> Result<()> {
        let buf = &mut self.conn.buf;
        match self.state {
            Chunking::Size => {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    let size = std::str::from_utf8(&buf[..i])?;
                    let size = usize::from_str_radix(size.trim(), 16)?;
                    buf.drain(..i + 2);
                    ensure!(size > 0, "the event stream ended");
                    self.state = Chunking::Data(size);
                    return Ok(());
                }
            }
            Chunking::Data(left) if !buf.is_empty() => {
                let n = left.min(buf.len());
                self.chunk.extend(buf.drain(..n));
                self.state = if n == left {
                    Chunking::DataEnd
                } else {
                    Chunking::Data(left - n)
                };
                return Ok(());
            }
            Chunking::DataEnd if buf.len() >= 2 => {
                ensure!(&buf[..2] == b"\r\n", "chunk not ended by CRLF");
                buf.drain(..2);
                let mut alone = Decoder::new();
                alone.feed(&self.chunk);
                ensure!(
                    alone.next_record()?.is_some() && alone.pending() == 0,
                    "a chunk does not hold exactly one record: {:?}",
                    String::from_utf8_lossy(&self.chunk)
                );
                // Feed the record in small pieces: records split across reads decode.
                for piece in self.chunk.chunks(5) {
                    self.decoder.feed(piece);
                }
                self.chunk.clear();
                self.state = Chunking::Size;
                return Ok(());
            }
            _ => {}
        }
        self.conn.fill().await
    }

    fn call(&self, kind: &str, field: &str, body: Value) -> Value {
        let mut call = json!({ "type": kind, "framework_id": { "value": self.framework_id } });
        if !field.is_empty() {
            call[field] = body;
        }
        call
    }

    async fn post(&self, addr: SocketAddr, call: &Value) -> Result<Response> {
        post(addr, call, Some(&self.stream_id)).await
    }

    /// DECLINEs every offer of an OFFERS `event` for `refuse_seconds`; how many there were.
    async fn decline(&self, addr: SocketAddr, event: &Value, refuse_seconds: f64) -> Result<usize> {
        let ids: Vec<Value> = event["offers"]["offers"]
            .as_array()
            .context("offers")?
            .iter()
            .map(|o| o["id"].clone())
            .collect();
        let n = ids.len();
        let decline = self.call(
            "DECLINE",
            "decline",
            json!({ "offer_ids": ids, "filters": { "refuse_seconds": refuse_seconds } }),
        );
        assert_status(&self.post(addr, &decline).await?, 202, "");
        Ok(n)
    }
}

fn assert_status(r: &Response, status: u16, contains: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert!(
        r.text().contains(contains),
        "expected {contains:?} in {:?}",
        r.text()
    );
}

#[tokio::test]
async fn subscribe_streams_recordio_chunks_with_heartbeats() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let mut sub = Subscription::open(allocator.http(), &subscribe_call(info("hb"))).await?;
    // A HEARTBEAT at once, then one per heartbeat_interval_seconds (1 s here).
    assert_eq!(sub.next().await?["type"], "HEARTBEAT");
    let started = tokio::time::Instant::now();
    assert_eq!(sub.next_of("HEARTBEAT").await?["type"], "HEARTBEAT");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(sub.next_of("HEARTBEAT").await?["type"], "HEARTBEAT");
    allocator.shutdown().await
}

#[tokio::test]
async fn every_status_code() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let sub = Subscription::open(addr, &subscribe_call(info("codes"))).await?;
    let revive = sub.call("REVIVE", "", json!(null));

    // 202, twice on one keep-alive connection, with an empty body.
    let mut conn = Conn::open(addr).await?;
    for _ in 0..2 {
        let r = conn.post(&revive, Some(&sub.stream_id)).await?;
        assert_status(&r, 202, "");
        assert!(r.body.is_empty());
    }
    // 405: a GET on the scheduler endpoint.
    let r = get(addr, "/api/v1/scheduler").await?;
    assert_eq!(r.status, 405);
    // 415: protobuf or any other body type; 400 without one.
    let mut c = Conn::open(addr).await?;
    let r = c
        .send(
            "POST",
            "/api/v1/scheduler",
            &[("Content-Type", "application/x-protobuf")],
            b"\x08\x01",
        )
        .await?;
    assert_status(&r, 415, "application/json");
    let r = c.send("POST", "/api/v1/scheduler", &[], b"{}").await?;
    assert_status(&r, 400, "Content-Type");
    // 406: a SUBSCRIBE that accepts no JSON.
    let body = subscribe_call(info("x")).to_string();
    let r = c
        .send(
            "POST",
            "/api/v1/scheduler",
            &[
                ("Content-Type", "application/json"),
                ("Accept", "text/html"),
            ],
            body.as_bytes(),
        )
        .await?;
    assert_status(&r, 406, "application/json");
    // 400: bad JSON, no type, an unknown type, missing fields.
    let r = c
        .send(
            "POST",
            "/api/v1/scheduler",
            &[("Content-Type", "application/json")],
            b"{not json",
        )
        .await?;
    assert_status(&r, 400, "JSON");
    assert_status(&c.post(&json!({}), None).await?, 400, "'type'");
    let bogus = sub.call("BOGUS", "", json!(null));
    assert_status(
        &c.post(&bogus, Some(&sub.stream_id)).await?,
        400,
        "unknown call type",
    );
    let kill = sub.call("KILL", "kill", json!({}));
    assert_status(
        &c.post(&kill, Some(&sub.stream_id)).await?,
        400,
        "kill.task_id",
    );
    let no_user = subscribe_call(json!({ "name": "n" }));
    assert_status(&c.post(&no_user, None).await?, 400, "user");
    let no_fid = json!({ "type": "REVIVE" });
    assert_status(&c.post(&no_fid, None).await?, 400, "framework_id");
    // 400: an unknown framework, a missing or wrong stream id, a stream id on SUBSCRIBE.
    let unknown = json!({ "type": "REVIVE", "framework_id": { "value": "nope" } });
    assert_status(&c.post(&unknown, Some("x")).await?, 400, "cannot be found");
    assert_status(&c.post(&revive, None).await?, 400, "Mesos-Stream-Id");
    let wrong = uuid::Uuid::new_v4().to_string();
    assert_status(&c.post(&revive, Some(&wrong)).await?, 400, "does not match");
    let resubscribe = subscribe_call(info("codes"));
    assert_status(
        &c.post(&resubscribe, Some(&sub.stream_id)).await?,
        400,
        "should not include",
    );
    let unknown_resubscribe = json!({
        "type": "SUBSCRIBE",
        "framework_id": { "value": "nope" },
        "subscribe": { "framework_info": info("x") },
    });
    assert_status(&c.post(&unknown_resubscribe, None).await?, 400, "nope");
    // 403: a framework the allocator knows whose stream is gone (it has a failover timeout).
    let stream_id = sub.stream_id.clone();
    drop(sub);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let r = post(addr, &revive, Some(&stream_id)).await?;
        if r.status == 403 {
            assert!(r.text().contains("not subscribed"), "{}", r.text());
            break;
        }
        assert_eq!(r.status, 202, "{}", r.text());
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the dropped stream was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // GET /version, /health, /master/state.
    let v: Value = serde_json::from_slice(&get(addr, "/version").await?.body)?;
    assert_eq!(v["version"], "1.11.0");
    assert_eq!(get(addr, "/health").await?.status, 200);
    for path in ["/master/state", "/state"] {
        let r = get(addr, path).await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let s: Value = serde_json::from_slice(&r.body)?;
        assert_eq!(s["version"], "1.11.0");
        assert_eq!(s["frameworks"][0]["name"], "codes");
        assert!(s["slaves"].is_array());
    }
    allocator.shutdown().await?;

    // 307 to the leader, and 503 without one.
    let follower = Allocator::with_mesos(Leadership::Follower {
        leader: "leader.example:5050".to_owned(),
    })
    .await?;
    let r = post(follower.http(), &subscribe_call(info("x")), None).await?;
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some("//leader.example:5050/api/v1/scheduler")
    );
    let r = get(follower.http(), "/master/state").await?;
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some("//leader.example:5050/master/state")
    );
    follower.shutdown().await?;
    let leaderless = Allocator::with_mesos(Leadership::NoLeader).await?;
    let r = post(leaderless.http(), &revive, Some("x")).await?;
    assert_eq!(r.status, 503);
    leaderless.shutdown().await
}

/// What Mesos tooling reads besides /master/state: Mesos' own scheduler library posts to
/// /master/api/v1/scheduler; /master/slaves, /master/frameworks, /master/tasks (paged) and
/// /metrics/snapshot answer in Mesos' shape.
#[tokio::test]
async fn the_endpoints_mesos_tools_read() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;

    let mut conn = Conn::open(addr).await?;
    let body = subscribe_call(info("tooling")).to_string();
    let bytes = request(
        "POST",
        "/master/api/v1/scheduler",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        body.as_bytes(),
    );
    bounded("sending SUBSCRIBE", conn.stream.write_all(&bytes)).await??;
    let (status, _) = conn.head().await?;
    assert_eq!(status, 200, "SUBSCRIBE on /master/api/v1/scheduler");

    let json = |r: Response| -> Result<Value> {
        assert_eq!(r.status, 200, "{}", r.text());
        Ok(serde_json::from_slice(&r.body)?)
    };
    let slaves = json(get(addr, "/master/slaves").await?)?;
    assert_eq!(slaves["slaves"][0]["id"], agent.id.as_str());
    assert_eq!(slaves["slaves"][0]["active"], true);
    assert_eq!(slaves["slaves"][0]["resources"]["cpus"], 4.0);
    assert!(slaves["slaves"][0]["reserved_resources"].is_object());
    let frameworks = json(get(addr, "/master/frameworks").await?)?;
    assert_eq!(frameworks["frameworks"][0]["name"], "tooling");
    assert!(frameworks["frameworks"][0]["resources"].is_object());
    assert!(frameworks["completed_frameworks"].is_array());
    let tasks = json(get(addr, "/master/tasks?limit=10&offset=0&order=asc").await?)?;
    assert!(tasks["tasks"].is_array());
    let bad = get(addr, "/master/tasks?order=sideways").await?;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("order must be asc or des"),
        "{}",
        bad.text()
    );
    // A framework torn down is listed in completed_frameworks; the state has the flags and
    // each framework's user.
    let gone = Subscription::open(addr, &subscribe_call(info("short-lived"))).await?;
    let teardown = gone.call("TEARDOWN", "", json!(null));
    assert_status(&gone.post(addr, &teardown).await?, 202, "");
    let deadline = tokio::time::Instant::now() + STEP;
    let completed = loop {
        let frameworks = json(get(addr, "/master/frameworks").await?)?;
        if let Some(c) = frameworks["completed_frameworks"]
            .as_array()
            .and_then(|c| c.iter().find(|f| f["name"] == "short-lived"))
        {
            break c.clone();
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no completed framework: {frameworks}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        completed["unregistered_time"].as_f64().is_some(),
        "{completed}"
    );
    let state = json(get(addr, "/master/state").await?)?;
    assert_eq!(
        state["flags"]["allocation_interval"], "0.05secs",
        "{}",
        state["flags"]
    );
    assert_eq!(state["frameworks"][0]["user"], info("x")["user"]);
    let metrics = json(get(addr, "/metrics/snapshot").await?)?;
    assert_eq!(metrics["master/slaves_active"], 1.0);
    assert_eq!(metrics["master/cpus_total"], 4.0);
    assert_eq!(metrics["master/frameworks_connected"], 1.0);
    assert_eq!(metrics["master/elected"], 1.0);
    drop(conn);
    allocator.shutdown().await
}

/// Mesos' v1 operator API (`POST /api/v1`): the read calls answer in Mesos' shape, quota and
/// maintenance calls take effect, and what is not supported is refused saying what is.
#[tokio::test]
async fn the_v1_operator_api_reads_and_steers() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let call = |body: Value| async move {
        Conn::open(addr)
            .await?
            .send(
                "POST",
                "/api/v1",
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            )
            .await
    };
    let ok = |r: Response| -> Result<Value> {
        assert_eq!(r.status, 200, "{}", r.text());
        Ok(if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body)?
        })
    };
    let health = ok(call(json!({ "type": "GET_HEALTH" })).await?)?;
    assert_eq!(health["get_health"]["healthy"], true);
    let agents = ok(call(json!({ "type": "GET_AGENTS" })).await?)?;
    let a = &agents["get_agents"]["agents"][0];
    assert_eq!(a["agent_info"]["id"]["value"], agent.id.as_str());
    assert_eq!(a["active"], true);
    let state = ok(call(json!({ "type": "GET_STATE" })).await?)?;
    assert!(state["get_state"]["get_tasks"]["tasks"].is_array());
    assert!(state["get_state"]["get_frameworks"]["frameworks"].is_array());

    ok(call(json!({ "type": "UPDATE_QUOTA", "update_quota": { "quota_configs": [
        { "role": "eng", "guarantees": { "cpus": { "value": 1 } }, "limits": { "cpus": { "value": 2 } } }
    ] } }))
    .await?)?;
    let quota = ok(call(json!({ "type": "GET_QUOTA" })).await?)?;
    let config = &quota["get_quota"]["status"]["configs"][0];
    assert_eq!(config["role"], "eng");
    assert_eq!(config["guarantees"]["cpus"], 1.0);
    assert_eq!(config["limits"]["cpus"], 2.0);
    ok(call(json!({ "type": "UPDATE_WEIGHTS", "update_weights": {
        "weight_infos": [{ "role": "eng", "weight": 3.0 }] } }))
    .await?)?;
    let roles = ok(call(json!({ "type": "GET_ROLES" })).await?)?;
    let eng = roles["get_roles"]["roles"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "eng"))
        .context("role eng")?;
    assert_eq!(eng["weight"], 3.0);

    ok(
        call(json!({ "type": "DEACTIVATE_AGENT", "deactivate_agent": {
        "agent_id": { "value": agent.id } } }))
        .await?,
    )?;
    let agents = ok(call(json!({ "type": "GET_AGENTS" })).await?)?;
    assert_eq!(agents["get_agents"]["agents"][0]["active"], false);
    assert_eq!(agents["get_agents"]["agents"][0]["deactivated"], true);

    let unknown = call(json!({ "type": "REACTIVATE_AGENT", "reactivate_agent": {
        "agent_id": { "value": "no-such-agent" } } }))
    .await?;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let unsupported = call(json!({ "type": "GET_FLAGS" })).await?;
    assert_eq!(unsupported.status, 400);
    assert!(
        unsupported.text().contains("Strata answers GET_HEALTH"),
        "{}",
        unsupported.text()
    );
    let bad = call(json!({ "type": "DRAIN_AGENT", "drain_agent": {} })).await?;
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("agent_id.value is missing"),
        "{}",
        bad.text()
    );
    allocator.shutdown().await
}

/// UPDATE_FRAMEWORK moves a subscribed framework to another role without a new stream: the
/// offer made to the old role is rescinded and the next offers are to the new one.
#[tokio::test]
async fn update_framework_changes_roles_on_the_same_stream() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let _agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let info = json!({ "user": "root", "name": "mover", "roles": ["a"],
        "capabilities": [{ "type": "MULTI_ROLE" }] });
    let mut sub = Subscription::open(addr, &subscribe_call(info)).await?;
    let offers = sub.next_of("OFFERS").await?;
    assert_eq!(
        offers["offers"]["offers"][0]["allocation_info"]["role"],
        "a"
    );
    let update = sub.call(
        "UPDATE_FRAMEWORK",
        "update_framework",
        json!({ "framework_info": { "id": { "value": sub.framework_id }, "user": "root",
            "name": "mover", "roles": ["b"], "capabilities": [{ "type": "MULTI_ROLE" }] } }),
    );
    assert_status(&sub.post(addr, &update).await?, 202, "");
    let rescind = sub.next_of("RESCIND").await?;
    assert_eq!(
        rescind["rescind"]["offer_id"],
        offers["offers"]["offers"][0]["id"]
    );
    let offers = sub.next_of("OFFERS").await?;
    assert_eq!(
        offers["offers"]["offers"][0]["allocation_info"]["role"],
        "b"
    );
    let missing = sub.call("UPDATE_FRAMEWORK", "update_framework", json!({}));
    assert_status(&sub.post(addr, &missing).await?, 400, "framework_info");
    drop(sub);
    allocator.shutdown().await
}

#[tokio::test]
async fn launch_acknowledge_stale_offer_unknown_task_and_reconcile() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let mut agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let multi_role = json!({
        "user": "root", "name": "launcher", "roles": ["eng"],
        "capabilities": [{ "type": "MULTI_ROLE" }, { "type": "GPU_RESOURCES" }],
    });
    let mut sub = Subscription::open(addr, &subscribe_call(multi_role)).await?;
    let offers = sub.next_of("OFFERS").await?;
    let offer = offers["offers"]["offers"][0].clone();
    assert_eq!(offer["agent_id"]["value"], agent.id.as_str());
    assert_eq!(offer["hostname"], "fake-host");
    assert_eq!(offer["allocation_info"]["role"], "eng");
    let cpus = offer["resources"]
        .as_array()
        .context("resources")?
        .iter()
        .find(|r| r["name"] == "cpus")
        .context("cpus offered")?
        .clone();
    assert_eq!(cpus["type"], "SCALAR");
    assert_eq!(cpus["scalar"]["value"], 4.0);
    assert_eq!(cpus["allocation_info"]["role"], "eng");

    let task = json!({
        "name": "t1", "task_id": { "value": "t1" }, "agent_id": offer["agent_id"],
        "resources": [{ "name": "cpus", "type": "SCALAR", "scalar": { "value": 1.0 },
                        "allocation_info": { "role": "eng" } },
                      { "name": "mem", "type": "SCALAR", "scalar": { "value": 32.0 },
                        "allocation_info": { "role": "eng" } }],
        "command": { "value": "echo hi", "environment": { "variables": [{ "name": "A", "value": "1" }] } },
        "health_check": { "type": "COMMAND" },
    });
    let accept = sub.call(
        "ACCEPT",
        "accept",
        json!({
            "offer_ids": [offer["id"]],
            "operations": [{ "type": "LAUNCH", "launch": { "task_infos": [task] } }],
            "filters": { "refuse_seconds": 0.1 },
        }),
    );
    assert_status(&sub.post(addr, &accept).await?, 202, "");
    let allocator_message::Message::LaunchTask(launch) = agent.next_launch_or_ack().await? else {
        bail!("expected LaunchTask")
    };
    let launched = launch.task.context("task")?;
    let command = launched.command.context("command")?;
    assert!(command.shell);
    assert_eq!(command.value, "echo hi");
    assert_eq!(command.environment["A"], "1");

    // An agent update: UPDATE with the uuid in base64; ACKNOWLEDGE reaches the agent.
    let sent: Vec<u8> = (0..16).collect();
    agent
        .update(&sub.framework_id, "t1", TaskState::Running, &sent)
        .await?;
    let update = sub.next_of("UPDATE").await?;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_RUNNING");
    assert_eq!(status["task_id"]["value"], "t1");
    assert_eq!(status["source"], "SOURCE_SLAVE");
    let uuid = status["uuid"].as_str().context("uuid")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(uuid)?;
    assert_eq!(bytes, sent);
    let ack = sub.call(
        "ACKNOWLEDGE",
        "acknowledge",
        json!({ "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": uuid }),
    );
    assert_status(&sub.post(addr, &ack).await?, 202, "");
    let allocator_message::Message::Acknowledge(a) = agent.next_launch_or_ack().await? else {
        bail!("expected Acknowledge")
    };
    assert_eq!((a.task_id.as_str(), a.uuid), ("t1", bytes));

    // /master/state shows the agent and the running task in Mesos' shape.
    let state: Value = serde_json::from_slice(&get(addr, "/master/state").await?.body)?;
    assert_eq!(state["slaves"][0]["id"], agent.id.as_str());
    assert_eq!(state["slaves"][0]["resources"]["cpus"], 4.0);
    let framework = &state["frameworks"][0];
    assert_eq!(framework["id"], sub.framework_id.as_str());
    assert_eq!(framework["roles"], json!(["eng"]));
    assert_eq!(framework["tasks"][0]["id"], "t1");
    assert_eq!(framework["tasks"][0]["state"], "TASK_RUNNING");
    assert_eq!(framework["tasks"][0]["slave_id"], agent.id.as_str());

    // A stale offer (already used): 202, then TASK_DROPPED through UPDATE.
    let stale = sub.call(
        "ACCEPT",
        "accept",
        json!({
            "offer_ids": [offer["id"]],
            "operations": [{ "type": "LAUNCH", "launch": { "task_infos": [{
                "name": "t2", "task_id": { "value": "t2" }, "agent_id": offer["agent_id"],
                "resources": [], "command": { "value": "true" } }] } }],
        }),
    );
    assert_status(&sub.post(addr, &stale).await?, 202, "");
    let update = sub.next_of("UPDATE").await?;
    let status = &update["update"]["status"];
    assert_eq!(status["task_id"]["value"], "t2");
    assert_eq!(status["state"], "TASK_DROPPED");
    assert_eq!(status["reason"], "REASON_INVALID_OFFERS");
    assert!(status.get("uuid").is_none());

    // A custom executor: 202, then TASK_ERROR (Strata runs command tasks only).
    let offers = sub.next_of("OFFERS").await?;
    let offer = offers["offers"]["offers"][0].clone();
    let executor = sub.call(
        "ACCEPT",
        "accept",
        json!({
            "offer_ids": [offer["id"]],
            "operations": [{ "type": "LAUNCH", "launch": { "task_infos": [{
                "name": "x", "task_id": { "value": "x" }, "agent_id": offer["agent_id"],
                "executor": { "executor_id": { "value": "e" } } }] } }],
        }),
    );
    assert_status(&sub.post(addr, &executor).await?, 202, "");
    let update = sub.next_of("UPDATE").await?;
    assert_eq!(update["update"]["status"]["state"], "TASK_ERROR");
    assert_eq!(update["update"]["status"]["task_id"]["value"], "x");

    // An unknown task: KILL answers 202, then TASK_LOST.
    let kill = sub.call("KILL", "kill", json!({ "task_id": { "value": "ghost" } }));
    assert_status(&sub.post(addr, &kill).await?, 202, "");
    let update = sub.next_of("UPDATE").await?;
    assert_eq!(update["update"]["status"]["task_id"]["value"], "ghost");
    assert_eq!(update["update"]["status"]["state"], "TASK_LOST");

    // Reconciliation: explicit (a known and an unknown task), then implicit; no uuids.
    let explicit = sub.call(
        "RECONCILE",
        "reconcile",
        json!({ "tasks": [{ "task_id": { "value": "t1" } }, { "task_id": { "value": "ghost" } }] }),
    );
    assert_status(&sub.post(addr, &explicit).await?, 202, "");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let u = sub.next_of("UPDATE").await?;
        let s = &u["update"]["status"];
        assert_eq!(s["reason"], "REASON_RECONCILIATION");
        assert!(s.get("uuid").is_none());
        seen.push((
            s["task_id"]["value"].as_str().unwrap_or("").to_owned(),
            s["state"].as_str().unwrap_or("").to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("ghost".to_owned(), "TASK_LOST".to_owned()),
            ("t1".to_owned(), "TASK_RUNNING".to_owned())
        ]
    );
    let implicit = sub.call("RECONCILE", "reconcile", json!({ "tasks": [] }));
    assert_status(&sub.post(addr, &implicit).await?, 202, "");
    let u = sub.next_of("UPDATE").await?;
    assert_eq!(u["update"]["status"]["task_id"]["value"], "t1");
    assert_eq!(u["update"]["status"]["state"], "TASK_RUNNING");

    // KILL of the running task reaches the agent with its grace period.
    let kill = sub.call(
        "KILL",
        "kill",
        json!({ "task_id": { "value": "t1" },
                "kill_policy": { "grace_period": { "nanoseconds": 1500000000 } } }),
    );
    assert_status(&sub.post(addr, &kill).await?, 202, "");
    let allocator_message::Message::KillTask(k) = agent.next_launch_or_ack().await? else {
        bail!("expected KillTask")
    };
    assert_eq!(k.task_id, "t1");
    assert_eq!(k.grace_period_seconds, Some(1.5));
    allocator.shutdown().await
}

#[tokio::test]
async fn decline_filter_then_revive_reoffers() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let _agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let mut sub = Subscription::open(addr, &subscribe_call(info("decliner"))).await?;
    let offers = sub.next_of("OFFERS").await?;
    sub.decline(addr, &offers, 3600.0).await?;
    // Nothing is offered for a while (only heartbeats come)...
    let quiet = tokio::time::timeout(Duration::from_millis(1500), sub.next_of("OFFERS")).await;
    assert!(quiet.is_err(), "offered despite the filter: {quiet:?}");
    // ...until REVIVE.
    let revive = sub.call("REVIVE", "", json!(null));
    assert_status(&sub.post(addr, &revive).await?, 202, "");
    sub.next_of("OFFERS").await?;
    // SUPPRESS stops offers again (declined resources are filtered only 0.1 s).
    let suppress = sub.call("SUPPRESS", "", json!(null));
    assert_status(&sub.post(addr, &suppress).await?, 202, "");
    allocator.shutdown().await
}

/// Declines every offer with refuse_seconds 0 until `deadline`; how many offers came.
async fn decline_until(
    sub: &mut Subscription,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<usize> {
    let mut offers = 0;
    loop {
        let event = match tokio::time::timeout_at(deadline, sub.next_of("OFFERS")).await {
            Ok(event) => event?,
            Err(_) => return Ok(offers),
        };
        offers += sub.decline(addr, &event, 0.0).await?;
    }
}

#[tokio::test]
async fn two_refuse_0_decliners_share_an_agent_at_the_allocation_interval() -> Result<()> {
    // Before: the first framework was offered the agent again after each DECLINE (about
    // 60,000 offers/s through this API) and the second got nothing. Now a DECLINE refuses
    // the agent to the decliner until the next periodic pass (every 50 ms in the test
    // allocator) and the other gets it meanwhile: each is offered it once per pass.
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let _agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let mut a = Subscription::open(addr, &subscribe_call(info("a"))).await?;
    let mut b = Subscription::open(addr, &subscribe_call(info("b"))).await?;
    let span = Duration::from_secs(2);
    let deadline = tokio::time::Instant::now() + span;
    let (na, nb) = tokio::join!(
        decline_until(&mut a, addr, deadline),
        decline_until(&mut b, addr, deadline)
    );
    let (na, nb) = (na?, nb?);
    let total = na + nb;
    let interval = Duration::from_millis(50);
    let most = 2 * (span.as_millis() / interval.as_millis()) as usize + 4;
    assert!(total <= most, "{na} + {nb} offers in {span:?}: not paced");
    assert!(total >= 6, "{na} + {nb} offers in {span:?}: starved");
    for n in [na, nb] {
        assert!(n * 100 >= total * 35, "{na} and {nb}: not shared");
    }
    allocator.shutdown().await
}

#[tokio::test]
async fn a_gpu_agent_is_offered_only_to_frameworks_with_gpu_resources() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let agent_info = strata_proto::AgentInfo {
        hostname: "gpu-host".to_owned(),
        resources: vec![
            strata_proto::Resource::scalar("cpus", 8.0),
            strata_proto::Resource::scalar("mem", 8192.0),
            strata_proto::Resource::scalar("gpus", 2.0),
        ],
        ..strata_proto::AgentInfo::default()
    };
    let (_agent, _) = FakeAgent::connect(
        allocator.channel().await?,
        agent_info,
        strata_test_support::StreamOptions::default(),
    )
    .await?;
    let mut plain = Subscription::open(addr, &subscribe_call(info("cpu-only"))).await?;
    let quiet = tokio::time::timeout(Duration::from_millis(500), plain.next_of("OFFERS")).await;
    assert!(
        quiet.is_err(),
        "a GPU agent offered without GPU_RESOURCES: {quiet:?}"
    );
    let mut gpu_info = info("trainer");
    gpu_info["capabilities"] = json!([{ "type": "GPU_RESOURCES" }]);
    let mut aware = Subscription::open(addr, &subscribe_call(gpu_info)).await?;
    let offers = aware.next_of("OFFERS").await?;
    let offer = &offers["offers"]["offers"][0];
    assert_eq!(offer["hostname"], "gpu-host");
    let gpus = offer["resources"]
        .as_array()
        .context("resources")?
        .iter()
        .find(|r| r["name"] == "gpus")
        .context("no gpus in the offer")?;
    assert_eq!(gpus["scalar"]["value"], 2.0);
    allocator.shutdown().await
}

#[tokio::test]
async fn a_rejected_launch_group_gives_the_offer_back() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let _agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let mut sub = Subscription::open(addr, &subscribe_call(info("grouper"))).await?;
    let offers = sub.next_of("OFFERS").await?;
    let offer = offers["offers"]["offers"][0].clone();
    // LAUNCH_GROUP is not supported: the ACCEPT is rejected, yet its offer is used up and
    // the agent is offered again (no filter asked), instead of staying locked.
    let accept = sub.call(
        "ACCEPT",
        "accept",
        json!({
            "offer_ids": [offer["id"]],
            "operations": [{ "type": "LAUNCH_GROUP", "launch_group": {} }],
            "filters": { "refuse_seconds": 0 },
        }),
    );
    assert_status(&sub.post(addr, &accept).await?, 202, "");
    let mut error = None;
    let again = loop {
        let e = sub.next().await?;
        match e["type"].as_str() {
            Some("ERROR") => error = Some(e),
            Some("OFFERS") => break e,
            _ => {}
        }
    };
    let error = error.context("no ERROR event before the new offer")?;
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("accept rejected")),
        "{error}"
    );
    let again = &again["offers"]["offers"][0];
    assert_ne!(again["id"], offer["id"]);
    assert_eq!(again["agent_id"], offer["agent_id"]);
    allocator.shutdown().await
}

#[tokio::test]
async fn subscribe_suppressed_roles_get_no_offers() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let _agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let multi_role = json!({
        "user": "root", "name": "quiet", "roles": ["a", "b"],
        "capabilities": [{ "type": "MULTI_ROLE" }],
    });
    let call = json!({
        "type": "SUBSCRIBE",
        "subscribe": { "framework_info": multi_role, "suppressed_roles": ["a"] },
    });
    let mut sub = Subscription::open(addr, &call).await?;
    // Role a would come first (a tie between the roles goes to the smaller name).
    let offers = sub.next_of("OFFERS").await?;
    let offers = offers["offers"]["offers"].as_array().context("offers")?;
    assert!(
        offers.iter().all(|o| o["allocation_info"]["role"] == "b"),
        "{offers:?}"
    );
    // A suppressed role the framework does not subscribe with is refused.
    let call = json!({
        "type": "SUBSCRIBE",
        "subscribe": { "framework_info": info("odd"), "suppressed_roles": ["zzz"] },
    });
    assert_status(&post(addr, &call, None).await?, 400, "suppressed role");
    allocator.shutdown().await
}

#[tokio::test]
async fn resubscribes_with_its_framework_id_after_the_stream_drops() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let _agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let mut sub = Subscription::open(addr, &subscribe_call(info("phoenix"))).await?;
    sub.next_of("OFFERS").await?;
    let (fid, old_stream) = (sub.framework_id.clone(), sub.stream_id.clone());
    drop(sub);

    let mut info = info("phoenix");
    info["id"] = json!({ "value": fid });
    let call = json!({
        "type": "SUBSCRIBE",
        "framework_id": { "value": fid },
        "subscribe": { "framework_info": info },
    });
    let mut sub = Subscription::open(addr, &call).await?;
    assert_eq!(sub.framework_id, fid);
    assert_ne!(sub.stream_id, old_stream);
    // Offers come on the new stream; the old stream id is refused.
    sub.next_of("OFFERS").await?;
    let revive = sub.call("REVIVE", "", json!(null));
    assert_status(&post(addr, &revive, Some(&old_stream)).await?, 400, "");
    assert_status(&sub.post(addr, &revive).await?, 202, "");

    // Subscribing again while subscribed closes the older stream (it ends).
    let mut newer = Subscription::open(addr, &call).await?;
    let ended = async {
        loop {
            if let Err(e) = sub.next().await {
                return e;
            }
        }
    };
    let why = bounded("the older stream to end", ended).await?;
    assert!(
        why.to_string().contains("ended") || why.to_string().contains("closed"),
        "{why}"
    );
    newer.next_of("OFFERS").await?;

    // TEARDOWN ends the stream and forgets the framework.
    let teardown = newer.call("TEARDOWN", "", json!(null));
    assert_status(&newer.post(addr, &teardown).await?, 202, "");
    let ended = async {
        loop {
            if newer.next().await.is_err() {
                return;
            }
        }
    };
    bounded("the torn-down stream to end", ended).await?;
    let r = post(addr, &revive, Some(&newer.stream_id)).await?;
    assert_status(&r, 400, "cannot be found");
    allocator.shutdown().await
}

/// The operator event stream: SUBSCRIBED with what GET_STATE answers, a HEARTBEAT, then
/// AGENT_ADDED, FRAMEWORK_ADDED, TASK_ADDED and TASK_UPDATED as an agent registers, a
/// framework subscribes and launches a task that starts running; FRAMEWORK_REMOVED and the
/// task KILLED at teardown; the stream ends when the allocator stops.
#[tokio::test]
async fn the_operator_event_stream_tells_what_happens_in_order() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let before = FakeAgent::register(&allocator, 1.0, 64.0).await?;
    let (mut events, subscribed) =
        Subscription::operator(addr, &[("Accept", "application/json")]).await?;
    let s = &subscribed["subscribed"];
    assert_eq!(s["heartbeat_interval_seconds"], 15.0);
    let agents = &s["get_state"]["get_agents"]["agents"];
    assert_eq!(agents.as_array().map(Vec::len), Some(1), "{subscribed}");
    assert_eq!(agents[0]["agent_info"]["id"]["value"], before.id.as_str());
    assert!(s["get_state"]["get_frameworks"]["frameworks"].is_array());
    assert!(s["get_state"]["get_tasks"]["tasks"].is_array());
    assert_eq!(events.next().await?["type"], "HEARTBEAT");

    let mut agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let mut sub = Subscription::open(addr, &subscribe_call(info("watched"))).await?;
    let offer = loop {
        let offers = sub.next_of("OFFERS").await?;
        let found = offers["offers"]["offers"]
            .as_array()
            .and_then(|o| {
                o.iter()
                    .find(|o| o["agent_id"]["value"] == agent.id.as_str())
            })
            .cloned();
        if let Some(offer) = found {
            break offer;
        }
    };
    let task = json!({
        "name": "t1", "task_id": { "value": "t1" }, "agent_id": offer["agent_id"],
        "resources": [{ "name": "cpus", "type": "SCALAR", "scalar": { "value": 1.0 } },
                      { "name": "mem", "type": "SCALAR", "scalar": { "value": 32.0 } }],
        "command": { "value": "sleep 1" },
    });
    let accept = sub.call(
        "ACCEPT",
        "accept",
        json!({
            "offer_ids": [offer["id"]],
            "operations": [{ "type": "LAUNCH", "launch": { "task_infos": [task] } }],
        }),
    );
    assert_status(&sub.post(addr, &accept).await?, 202, "");
    let allocator_message::Message::LaunchTask(_) = agent.next_launch_or_ack().await? else {
        bail!("expected LaunchTask")
    };
    agent
        .update(&sub.framework_id, "t1", TaskState::Running, &[1; 16])
        .await?;

    // In order, heartbeats aside.
    let mut next = async || -> Result<Value> {
        loop {
            let e = events.next().await?;
            if e["type"] != "HEARTBEAT" {
                return Ok(e);
            }
        }
    };
    let e = next().await?;
    assert_eq!(e["type"], "AGENT_ADDED", "{e}");
    let added = &e["agent_added"]["agent"];
    assert_eq!(added["agent_info"]["id"]["value"], agent.id.as_str());
    assert_eq!(added["agent_info"]["hostname"], "fake-host");
    assert_eq!(added["active"], true);
    let e = next().await?;
    assert_eq!(e["type"], "FRAMEWORK_ADDED", "{e}");
    let fw = &e["framework_added"]["framework"];
    assert_eq!(
        fw["framework_info"]["id"]["value"],
        sub.framework_id.as_str()
    );
    assert_eq!(fw["framework_info"]["name"], "watched");
    assert_eq!(fw["connected"], true);
    let e = next().await?;
    assert_eq!(e["type"], "TASK_ADDED", "{e}");
    let t = &e["task_added"]["task"];
    assert_eq!(t["task_id"]["value"], "t1");
    assert_eq!(t["framework_id"]["value"], sub.framework_id.as_str());
    assert_eq!(t["agent_id"]["value"], agent.id.as_str());
    assert_eq!(t["state"], "TASK_STAGING");
    let e = next().await?;
    assert_eq!(e["type"], "TASK_UPDATED", "{e}");
    let u = &e["task_updated"];
    assert_eq!(u["framework_id"]["value"], sub.framework_id.as_str());
    assert_eq!(u["state"], "TASK_RUNNING");
    assert_eq!(u["status"]["task_id"]["value"], "t1");
    assert_eq!(u["status"]["source"], "SOURCE_SLAVE");

    // Teardown: the task is killed, the framework removed.
    let teardown = sub.call("TEARDOWN", "", Value::Null);
    assert_status(&sub.post(addr, &teardown).await?, 202, "");
    let e = next().await?;
    assert_eq!(e["type"], "TASK_UPDATED", "{e}");
    assert_eq!(e["task_updated"]["state"], "TASK_KILLED");
    let e = next().await?;
    assert_eq!(e["type"], "FRAMEWORK_REMOVED", "{e}");
    assert_eq!(
        e["framework_removed"]["framework_info"]["id"]["value"],
        sub.framework_id.as_str()
    );

    // The stream ends with the allocator.
    let stop = tokio::spawn(allocator.shutdown());
    let end = loop {
        match events.next().await {
            Ok(e) if e["type"] == "HEARTBEAT" => {}
            Ok(e) => bail!("an event after teardown: {e}"),
            Err(e) => break e,
        }
    };
    assert!(
        format!("{end:#}").contains("the event stream ended")
            || format!("{end:#}").contains("closed the connection"),
        "{end:#}"
    );
    bounded("the allocator to stop", stop).await???;
    Ok(())
}

/// At most `max_operator_subscribers` operator event streams: the next SUBSCRIBE gets 429
/// saying so, and one more may open once one closes.
#[tokio::test]
async fn operator_subscribers_are_bounded() -> Result<()> {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = strata_allocator::mesos::HttpApi {
        max_operator_subscribers: 2,
        ..strata_allocator::mesos::HttpApi::new(http)
    };
    let allocator =
        Allocator::start_with(strata_test_support::allocator::config(), Some(api), None).await?;
    let addr = allocator.http();
    let (first, _) = Subscription::operator(addr, &[]).await?;
    let (_second, _) = Subscription::operator(addr, &[]).await?;
    let subscribe = || async {
        Conn::open(addr)
            .await?
            .send(
                "POST",
                "/api/v1",
                &[("Content-Type", "application/json")],
                br#"{"type":"SUBSCRIBE"}"#,
            )
            .await
    };
    let refused = subscribe().await?;
    assert_status(
        &refused,
        429,
        "too many operator event subscribers: 2 streams",
    );
    assert_eq!(refused.header("retry-after"), Some("5"));
    // Other calls are not limited.
    let state = Conn::open(addr)
        .await?
        .send(
            "POST",
            "/api/v1",
            &[("Content-Type", "application/json")],
            br#"{"type":"GET_STATE"}"#,
        )
        .await?;
    assert_eq!(state.status, 200, "{}", state.text());
    // A stream that closes frees its place (noticed when its writer next writes or polls).
    drop(first);
    strata_test_support::wait::poll_until(STEP, Duration::from_millis(50), || async {
        Ok(match Subscription::operator(addr, &[]).await {
            Ok(third) => strata_test_support::wait::Poll::Ready(third),
            Err(e) => strata_test_support::wait::Poll::Pending(format!(
                "a closed stream's place is not free: {e:#}"
            )),
        })
    })
    .await?;
    allocator.shutdown().await
}
