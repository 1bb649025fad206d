//! The web dashboard's endpoints (`/ui/`, docs/ui.md) on a real in-process allocator: the
//! event stream's snapshot and changes, the agent actions, and their refusals (no or wrong
//! credentials, a principal without the permission, cross-site requests, bad ids, oversized
//! bodies, too many streams).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use serde_json::Value;
use strata_allocator::core::{Acls, Policy};
use strata_allocator::mesos::{HttpApi, Leadership};
use strata_allocator::security::Security;
use strata_allocator::store::MemoryStore;
use strata_allocator::{Metrics, serve_secure};
use strata_auth::credentials;
use strata_proto::{TaskState, Workload, allocator_message, call};
use strata_test_support::allocator::Allocator;
use strata_test_support::bounded;
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::framework::{Framework, task};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A whole HTTP/1.1 answer (the request said `Connection: close`).
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Decodes a chunked body (what is complete of it).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else { break };
        let start = end + 2;
        if size == 0 || raw.len() < start + size {
            break;
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer> {
    let mut stream = bounded("connect", TcpStream::connect(addr)).await??;
    bounded(
        "sending",
        stream.write_all(&request(method, path, headers, body)),
    )
    .await??;
    let mut raw = Vec::new();
    bounded("the answer", stream.read_to_end(&mut raw)).await??;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.get(9..12).context("no status")?.parse()?;
    let rest = &raw[end + 4..];
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Result<Answer> {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    send(addr, "GET", path, &headers, b"").await
}

/// A POST as the dashboard makes it (with its header), plus `extra` headers.
async fn action(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer> {
    let mut headers = vec![("X-Strata-UI", "1"), ("Content-Type", "application/json")];
    headers.extend(auth.map(|a| ("Authorization", a)));
    headers.extend_from_slice(extra);
    send(addr, "POST", path, &headers, body).await
}

/// An open `/ui/api/stream`: its events, parsed as they arrive.
struct Events {
    stream: TcpStream,
    raw: Vec<u8>,
    /// Bytes of the decoded body already parsed into events.
    parsed: usize,
}

impl Events {
    async fn open(addr: SocketAddr, auth: Option<&str>) -> Result<Self> {
        let mut stream = bounded("connect", TcpStream::connect(addr)).await??;
        let mut headers = vec![("Accept", "text/event-stream")];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let bytes = request("GET", "/ui/api/stream", &headers, b"");
        bounded("sending", stream.write_all(&bytes)).await??;
        let mut events = Self {
            stream,
            raw: Vec::new(),
            parsed: 0,
        };
        let end = loop {
            if let Some(i) = events.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            events.fill().await?;
        };
        let head = String::from_utf8_lossy(&events.raw[..end]).into_owned();
        ensure!(
            head.starts_with("HTTP/1.1 200"),
            "the stream answered {head}"
        );
        ensure!(
            head.contains("content-type: text/event-stream"),
            "not an event stream: {head}"
        );
        events.raw.drain(..end + 4);
        Ok(events)
    }

    async fn fill(&mut self) -> Result<()> {
        let mut buf = [0u8; 8192];
        let n = bounded("bytes of the event stream", self.stream.read(&mut buf)).await??;
        ensure!(n > 0, "the allocator ended the event stream");
        self.raw.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// The next event: (name, data); heartbeats skipped.
    async fn next(&mut self) -> Result<(String, Value)> {
        loop {
            let body = dechunk(&self.raw);
            let text = String::from_utf8_lossy(&body[self.parsed..]).into_owned();
            if let Some(end) = text.find("\n\n") {
                self.parsed += end + 2;
                let block = &text[..end];
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if name.is_empty() {
                    continue;
                }
                return Ok((name, serde_json::from_str(&data)?));
            }
            self.fill().await?;
        }
    }

    /// The changes of the next `changes` events until one of kind `k` comes.
    async fn change(&mut self, k: &str) -> Result<Value> {
        loop {
            let (name, data) = self.next().await?;
            ensure!(name == "changes", "expected changes, got {name}: {data}");
            for c in data.as_array().context("changes is a list")? {
                if c["k"] == k {
                    return Ok(c.clone());
                }
            }
        }
    }
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_then_changes_and_actions_drain_agents() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let first = FakeAgent::register(&allocator, 2.0, 512.0).await?;

    // The page and its assets, with the headers that keep other sites' content out.
    let page = get(addr, "/ui/", None).await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("/ui/app.js"), "{}", page.body);
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let js = get(addr, "/ui/app.js", None).await?;
    assert_eq!(js.status, 200);
    assert_eq!(js.header("content-type"), Some("text/javascript"));
    assert!(js.body.contains("EventSource"));
    assert_eq!(
        get(addr, "/ui", None).await?.header("location"),
        Some("/ui/")
    );

    let mut events = Events::open(addr, None).await?;
    let (name, snapshot) = events.next().await?;
    assert_eq!(name, "snapshot");
    assert_eq!(
        snapshot["view_tasks"], true,
        "open policy: everything shows"
    );
    let agents = snapshot["agents"].as_array().context("agents")?;
    assert_eq!(agents.len(), 1, "{snapshot}");
    assert_eq!(agents[0]["id"], first.id.as_str());
    assert_eq!(agents[0]["total"]["cpus"], 2.0);
    assert_eq!(agents[0]["mode"], "active");

    // A second agent, a framework and a task: each arrives as a change, in order.
    let mut agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let added = events.change("agent_added").await?;
    assert_eq!(added["agent"]["id"], agent.id.as_str());
    assert!(added["seq"].as_u64() > snapshot["seq"].as_u64());
    let mut fw = Framework::named(&allocator, "watched").await?;
    let c = events.change("framework_added").await?;
    assert_eq!(c["framework"]["name"], "watched");
    let wanted = agent.id.clone();
    let offer = fw
        .wait_for("an offer of the second agent", |e| match e {
            strata_proto::event::Event::Offers(o) => {
                o.offers.into_iter().find(|o| o.agent_id == wanted)
            }
            _ => None,
        })
        .await?;
    fw.launch(&offer, vec![task("t1", 1.0, 64.0)]).await?;
    let allocator_message::Message::LaunchTask(_) = agent.next_launch_or_ack().await? else {
        bail!("expected LaunchTask")
    };
    let c = events.change("task_added").await?;
    assert_eq!(c["task"]["id"], "t1");
    assert_eq!(c["task"]["res"]["cpus"], 1.0);
    assert_eq!(c["task"]["agent"], agent.id.as_str());
    agent
        .update(&fw.id, "t1", TaskState::Running, &[1; 16])
        .await?;
    let c = events.change("task_updated").await?;
    assert_eq!(c["state"], "TASK_RUNNING");

    // Kill from the dashboard: the agent is told, and its TASK_KILLED comes as a change.
    let kill = format!("/ui/api/tasks/{}/t1/kill", fw.id);
    let a = send(addr, "POST", &kill, &[], b"").await?;
    assert_eq!(
        a.status, 403,
        "a kill without the dashboard's header: {}",
        a.body
    );
    let a = action(
        addr,
        &format!("/ui/api/tasks/{}/nope/kill", fw.id),
        None,
        &[],
        b"",
    )
    .await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = action(addr, &kill, None, &[], b"").await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let allocator_message::Message::KillTask(k) = agent.next_launch_or_ack().await? else {
        bail!("expected KillTask")
    };
    assert_eq!(k.task_id, "t1");
    agent
        .update(&fw.id, "t1", TaskState::Killed, &[2; 16])
        .await?;
    let c = events.change("task_updated").await?;
    assert_eq!(c["state"], "TASK_KILLED");
    // Drain from the dashboard: the agent's new mode comes as a change.
    let path = format!("/ui/api/agents/{}/drain", agent.id);
    let done = action(addr, &path, None, &[], br#"{"grace_seconds": 1}"#).await?;
    assert_eq!(done.status, 200, "{}", done.body);
    let c = events.change("agent_updated").await?;
    assert_eq!(c["agent"]["id"], agent.id.as_str());
    assert_eq!(c["agent"]["mode"], "draining");
    let path = format!("/ui/api/agents/{}/reactivate", agent.id);
    assert_eq!(action(addr, &path, None, &[], b"").await?.status, 200);
    assert_eq!(
        events.change("agent_updated").await?["agent"]["mode"],
        "active"
    );

    // Logs and profiles go through the task's agent: this one serves no HTTP endpoint.
    let a = get(addr, &format!("/ui/api/tasks/{}/t1/log", fw.id), None).await?;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(a.body.contains("serves no HTTP endpoint"), "{}", a.body);
    let a = get(
        addr,
        &format!("/ui/api/tasks/{}/t1/log?stream=x", fw.id),
        None,
    )
    .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let profile = format!("/ui/api/tasks/{}/t1/profile", fw.id);
    let a = action(addr, &profile, None, &[], br#"{"seconds": 0}"#).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = action(addr, &profile, None, &[], br#"{"seconds": 5}"#).await?;
    assert_eq!(a.status, 404, "{}", a.body);

    // Roles and usage.
    let roles = get(addr, "/ui/api/roles", None).await?;
    assert_eq!(roles.status, 200, "{}", roles.body);
    let roles: Value = serde_json::from_str(&roles.body)?;
    let star = roles["roles"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "*"))
        .context("role * listed")?;
    assert_eq!(star["weight"], 1.0);
    assert!(
        star["alloc"].get("cpus").is_none(),
        "the task was killed: {star}"
    );
    let usage = get(addr, "/ui/api/usage?task=t1", None).await?;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let usage: Value = serde_json::from_str(&usage.body)?;
    assert_eq!(
        usage["tasks"],
        Value::Array(Vec::new()),
        "no usage reported"
    );
    drop(events);
    allocator.shutdown().await
}

fn app(id: &str, wanted: u32, running: u32) -> Workload {
    Workload {
        kind: "app".into(),
        id: id.into(),
        state: "running".into(),
        instances_wanted: wanted,
        instances_running: running,
        version: "3".into(),
        ..Workload::default()
    }
}

fn report(workloads: Vec<Workload>) -> call::Call {
    call::Call::Workloads(call::Workloads { workloads })
}

/// The ERROR event the allocator answers a refused call with.
async fn error_of(fw: &mut Framework) -> Result<String> {
    fw.wait_for("an ERROR event", |e| match e {
        strata_proto::event::Event::Error(e) => Some(e.message),
        _ => None,
    })
    .await
}

/// Frameworks report what they run (`Call.Workloads`): the latest report of each is in the
/// snapshot and each new one comes as a change; reports over the bounds, or naming another
/// framework, are refused with an ERROR saying why and change nothing; a removed framework's
/// report goes. The framework's webui_url reaches the page.
#[tokio::test]
async fn workload_reports_reach_the_page_within_their_bounds() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let mut services = Framework::subscribe(
        &allocator,
        strata_proto::FrameworkInfo {
            name: "services".into(),
            webui_url: "http://127.0.0.1:9090/".into(),
            ..strata_proto::FrameworkInfo::default()
        },
    )
    .await?;
    let mut other = Framework::named(&allocator, "other").await?;
    let mut events = Events::open(addr, None).await?;
    let (_, snapshot) = events.next().await?;
    assert_eq!(snapshot["workloads"], serde_json::json!({}), "{snapshot}");
    let fws = snapshot["frameworks"].as_array().context("frameworks")?;
    let listed = fws
        .iter()
        .find(|f| f["id"] == services.id.as_str())
        .context("services listed")?;
    assert_eq!(listed["webui"], "http://127.0.0.1:9090/");

    services
        .call(report(vec![app("web", 2, 1), app("api", 1, 1)]))
        .await?;
    let c = events.change("workloads").await?;
    assert_eq!(c["fw"], services.id.as_str());
    assert_eq!(c["workloads"][0]["id"], "web");
    assert_eq!(c["workloads"][0]["wanted"], 2);
    assert_eq!(c["workloads"][0]["running"], 1);
    assert_eq!(c["workloads"][0]["version"], "3");
    // A new stream has it in its snapshot.
    let mut second = Events::open(addr, None).await?;
    let (_, snap) = second.next().await?;
    assert_eq!(snap["workloads"][services.id.as_str()][1]["id"], "api");
    drop(second);

    // Over the bounds: refused whole, saying the limit; the last report stays.
    let many: Vec<Workload> = (0..1001).map(|i| app(&format!("a{i}"), 1, 1)).collect();
    services.call(report(many)).await?;
    let why = error_of(&mut services).await?;
    assert!(why.contains("more than the 1000 allowed"), "{why}");
    let mut long = app("web", 2, 2);
    long.message = "x".repeat(257);
    services.call(report(vec![long])).await?;
    let why = error_of(&mut services).await?;
    assert!(why.contains("more than the 256 allowed"), "{why}");
    services.call(report(vec![app("../x", 1, 1)])).await?;
    let why = error_of(&mut services).await?;
    assert!(why.contains("invalid workload id"), "{why}");
    // Another framework's report naming this one: refused on its own stream.
    other
        .tx
        .send(strata_proto::Call {
            framework_id: services.id.clone(),
            call: Some(report(vec![app("evil", 9, 9)])),
        })
        .await?;
    let why = error_of(&mut other).await?;
    assert!(why.contains("subscribed as framework"), "{why}");
    // None of those reached the page: the next change is the next valid report.
    services.call(report(vec![app("web", 2, 2)])).await?;
    let c = events.change("workloads").await?;
    assert_eq!(c["fw"], services.id.as_str(), "{c}");
    assert_eq!(c["workloads"].as_array().map(Vec::len), Some(1), "{c}");
    assert_eq!(c["workloads"][0]["running"], 2);

    // Removed: its report goes, as an empty list.
    services
        .call(call::Call::Teardown(call::Teardown {}))
        .await?;
    let c = events.change("workloads").await?;
    assert_eq!(c["fw"], services.id.as_str());
    assert_eq!(c["workloads"], serde_json::json!([]));
    drop(events);
    allocator.shutdown().await
}

#[tokio::test]
async fn actions_refuse_cross_site_bad_and_oversized_requests() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let addr = allocator.http();
    let agent = FakeAgent::register(&allocator, 1.0, 64.0).await?;
    let path = format!("/ui/api/agents/{}/deactivate", agent.id);

    // Without the dashboard's header: what a form on another site would send.
    let a = send(addr, "POST", &path, &[], b"").await?;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("x-strata-ui"), "{}", a.body);
    // With it, but from another origin.
    let a = action(addr, &path, None, &[("Origin", "http://evil.example")], b"").await?;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("evil.example"), "{}", a.body);
    // Bad ids, actions and bodies.
    let a = action(addr, "/ui/api/agents/../deactivate", None, &[], b"").await?;
    assert!(
        a.status == 400 || a.status == 404,
        "{}: {}",
        a.status,
        a.body
    );
    let a = action(addr, "/ui/api/agents/%2E%2E/deactivate", None, &[], b"").await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("invalid agent id"), "{}", a.body);
    let a = action(addr, "/ui/api/agents/nobody/deactivate", None, &[], b"").await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = action(
        addr,
        &format!("/ui/api/agents/{}/explode", agent.id),
        None,
        &[],
        b"",
    )
    .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("unknown action"), "{}", a.body);
    let a = action(addr, &path, None, &[], b"{\"grace_seconds\": \"x\"}").await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let drain = format!("/ui/api/agents/{}/drain", agent.id);
    let a = action(addr, &drain, None, &[], b"{\"grace_seconds\": -1}").await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let big = vec![b' '; 64 * 1024];
    let a = action(addr, &path, None, &[], &big).await?;
    assert_eq!(a.status, 413, "{}", a.body);
    // Bad usage queries.
    let a = get(addr, "/ui/api/usage?task=..", None).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let many = vec!["task=x"; 501].join("&");
    let a = get(addr, &format!("/ui/api/usage?{many}"), None).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    // None of it changed the agent; the same-origin action does.
    let a = action(addr, &path, None, &[("Origin", "http://127.0.0.1")], b"").await?;
    assert_eq!(a.status, 200, "{}", a.body);
    allocator.shutdown().await
}

#[tokio::test]
async fn streams_are_bounded_with_the_operator_streams() -> Result<()> {
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let api = HttpApi {
        max_operator_subscribers: 2,
        ..HttpApi::new(http)
    };
    let allocator =
        Allocator::start_with(strata_test_support::allocator::config(), Some(api), None).await?;
    let addr = allocator.http();
    let _one = Events::open(addr, None).await?;
    let _two = Events::open(addr, None).await?;
    let refused = get(addr, "/ui/api/stream", None).await?;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("too many event streams"));
    assert_eq!(refused.header("retry-after"), Some("5"));
    allocator.shutdown().await
}

const ACLS: &str = r#"
[[allow]]
principals = ["ops"]
actions = ["view_frameworks", "view_tasks", "drain_agents"]

[[allow]]
principals = ["viewer"]
actions = ["view_frameworks"]
"#;

fn basic(principal: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{token}"))
    )
}

/// With authentication on (tokens and ACLs, plain HTTP for brevity): the page asks a browser
/// for Basic credentials, a viewer sees no tasks and may not act, a stranger sees nothing.
#[tokio::test]
async fn the_dashboard_follows_the_acls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("credentials.toml");
    let mut tokens = std::collections::HashMap::new();
    for p in ["ops", "viewer", "stranger"] {
        tokens.insert(p, credentials::create_token(&creds, p)?);
    }
    let acls = dir.path().join("acls.toml");
    std::fs::write(&acls, ACLS)?;
    let policy = Policy::Enforced(Acls::load(&acls)?);
    let audit = dir.path().join("audit.log");
    let security = Security::new(
        policy.clone(),
        credentials::Credentials::load(&creds)?,
        None,
        Some(&audit),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let addr = http.local_addr()?;
    let mut config = strata_test_support::allocator::config();
    config.policy = policy;
    let (_stop, mut stopped) = watch::channel(false);
    tokio::spawn(serve_secure(
        listener,
        config,
        Box::new(MemoryStore::default()),
        Metrics::new(),
        Some(HttpApi::new(http)),
        Arc::new(security),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let ops = basic("ops", &tokens["ops"]);
    let viewer = basic("viewer", &tokens["viewer"]);
    let stranger = basic("stranger", &tokens["stranger"]);

    // No credentials: 401 with the Basic challenge a browser answers with a login prompt.
    let a = strata_test_support::wait::poll_until(
        strata_test_support::STEP,
        std::time::Duration::from_millis(50),
        || async {
            Ok(match get(addr, "/ui/", None).await {
                Ok(a) => strata_test_support::wait::Poll::Ready(a),
                Err(e) => strata_test_support::wait::Poll::Pending(format!("{e:#}")),
            })
        },
    )
    .await?;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.header("www-authenticate")
            .is_some_and(|v| v.contains("Basic realm=\"strata\"")),
        "{}",
        a.head
    );
    for path in ["/ui/api/stream", "/ui/api/roles", "/ui/api/usage"] {
        assert_eq!(get(addr, path, None).await?.status, 401, "{path}");
    }
    let wrong = basic("ops", "not-the-token");
    assert_eq!(get(addr, "/ui/", Some(&wrong)).await?.status, 401);
    // A principal without view_frameworks.
    for path in ["/ui/", "/ui/api/stream", "/ui/api/roles"] {
        let a = get(addr, path, Some(&stranger)).await?;
        assert_eq!(a.status, 403, "{path}: {}", a.body);
    }
    // A viewer: the page and the stream, without tasks; no usage; no actions.
    assert_eq!(get(addr, "/ui/", Some(&viewer)).await?.status, 200);
    let mut events = Events::open(addr, Some(&viewer)).await?;
    let (_, snapshot) = events.next().await?;
    assert_eq!(snapshot["principal"], "viewer");
    assert_eq!(snapshot["view_tasks"], false);
    let a = get(addr, "/ui/api/usage", Some(&viewer)).await?;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = action(addr, "/ui/api/agents/a1/drain", Some(&viewer), &[], b"").await?;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("drain_agents"), "{}", a.body);
    let a = action(addr, "/ui/api/agents/a1/drain", None, &[], b"").await?;
    assert_eq!(a.status, 401, "{}", a.body);
    // Killing a task: 401 without credentials, 403 for a principal that may not (the one
    // mapping the dashboard shares with the Mesos API).
    let kill = "/ui/api/tasks/f1/t1/kill";
    let a = action(addr, kill, None, &[], b"").await?;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.header("www-authenticate").is_some(), "{}", a.head);
    let a = action(addr, kill, Some(&viewer), &[], b"").await?;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("teardown_frameworks"), "{}", a.body);
    // ops may act: the agent is unknown, so 404, after the decision was audited.
    let a = action(addr, "/ui/api/agents/a1/drain", Some(&ops), &[], b"").await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let log = std::fs::read_to_string(&audit)?;
    let decisions: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["action"] == "drain_agents")
        .collect();
    assert!(
        decisions
            .iter()
            .any(|d| d["principal"] == "viewer" && d["allowed"] == false),
        "{log}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d["principal"] == "ops" && d["allowed"] == true && d["object"] == "a1"),
        "{log}"
    );
    Ok(())
}
