//! Authentication, TLS and authorization against a real allocator (`serve_secure`) over real
//! gRPC with TLS and the Mesos HTTP API: each test replays an attack that worked with
//! default flags (fake and impersonating agents, operator actions without credentials, a
//! framework hijacked over the Mesos API) and shows it now fails with a message saying what
//! to supply. Certificates and tokens are made with strata-auth, as `strata certs` and
//! `strata token create` make them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use strata_allocator::core::{Acls, Policy};
use strata_allocator::mesos::HttpApi;
use strata_allocator::security::{Security, ServerTls};
use strata_allocator::store::MemoryStore;
use strata_allocator::{Metrics, serve_secure};
use strata_auth::{certs, credentials};
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{
    AgentInfo, AgentMessage, ListFrameworksRequest, QuotaInfo, Resource, SetQuotaRequest,
    agent_message, allocator_message,
};
use strata_test_support::bounded;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const ACLS: &str = r#"
[[allow]]
principals = ["agent-*"]
actions = ["register_agents"]

[[allow]]
principals = ["ops"]
actions = ["set_quota", "view_frameworks", "view_tasks", "teardown_frameworks"]

[[allow]]
principals = ["alice", "eve"]
actions = ["register_frameworks", "run_tasks"]
"#;

/// A CA, the allocator's and agents' certificates, tokens and an audit log in a temp dir.
struct Cluster {
    dir: tempfile::TempDir,
    ca: PathBuf,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Cluster {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = certs::init_ca(dir.path())?.cert;
        certs::issue(
            dir.path(),
            "allocator",
            &["localhost".into(), "127.0.0.1".into()],
        )?;
        for agent in ["agent-1", "agent-2", "alice"] {
            certs::issue(dir.path(), agent, &[])?;
        }
        let creds = dir.path().join("credentials.toml");
        let mut tokens = std::collections::HashMap::new();
        for principal in ["ops", "alice", "eve"] {
            tokens.insert(principal, credentials::create_token(&creds, principal)?);
        }
        std::fs::write(dir.path().join("acls.toml"), ACLS)?;
        Ok(Self { dir, ca, tokens })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn security(&self, tls: bool) -> Result<Security> {
        let tls = tls.then(|| ServerTls {
            cert: self.path("allocator.pem"),
            key: self.path("allocator-key.pem"),
            client_ca: Some(self.ca.clone()),
        });
        Ok(Security::new(
            self.policy()?,
            credentials::Credentials::load(&self.path("credentials.toml"))?,
            tls,
            Some(&self.path("audit.log")),
        )?)
    }

    fn policy(&self) -> Result<Policy> {
        Ok(Policy::Enforced(Acls::load(&self.path("acls.toml"))?))
    }
}

/// A running allocator with `security`; stopped when dropped.
struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn start(cluster: &Cluster, tls: bool) -> Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let (grpc, http_addr) = (listener.local_addr()?, http.local_addr()?);
    let mut config = strata_test_support::allocator::config();
    config.policy = cluster.policy()?;
    let (stop, mut stopped) = watch::channel(false);
    let server = serve_secure(
        listener,
        config,
        Box::new(MemoryStore::default()),
        Metrics::new(),
        Some(HttpApi::new(http)),
        Arc::new(cluster.security(tls)?),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    );
    tokio::spawn(server);
    Ok(Running {
        grpc,
        http: http_addr,
        _stop: stop,
    })
}

/// A TLS channel to the allocator, verified with the cluster's CA, presenting `identity`'s
/// certificate when given.
async fn tls_channel(
    cluster: &Cluster,
    addr: SocketAddr,
    identity: Option<&str>,
) -> Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&cluster.ca)?))
        .domain_name("localhost");
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cluster.path(&format!("{name}.pem")))?,
            std::fs::read(cluster.path(&format!("{name}-key.pem")))?,
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?;
    Ok(bounded("connect", endpoint.connect()).await??)
}

/// Adds a bearer token to each request.
type AddToken =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Intercepted = tonic::service::interceptor::InterceptedService<Channel, AddToken>;

fn operator(channel: Channel, token: Option<String>) -> OperatorServiceClient<Intercepted> {
    let add: AddToken = Box::new(move |mut request| {
        if let Some(token) = &token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        Ok(request)
    });
    OperatorServiceClient::with_interceptor(channel, add)
}

#[tokio::test]
async fn operator_calls_need_credentials_and_a_rule_and_are_audited() -> Result<()> {
    let cluster = Cluster::new()?;
    let running = start(&cluster, true).await?;
    let channel = tls_channel(&cluster, running.grpc, None).await?;

    let e = operator(channel.clone(), None)
        .list_frameworks(ListFrameworksRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("bearer token"), "{}", e.message());

    let e = operator(channel.clone(), Some("strata_forged".into()))
        .list_frameworks(ListFrameworksRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    // GetLeader needs authentication but no rule: anonymous and forged callers are refused,
    // any principal of the cluster is answered (a single allocator is term 0).
    for token in [None, Some("strata_forged".to_owned())] {
        let e = operator(channel.clone(), token)
            .get_leader(strata_proto::GetLeaderRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    }
    let leader = operator(channel.clone(), Some(cluster.tokens["eve"].clone()))
        .get_leader(strata_proto::GetLeaderRequest {})
        .await?
        .into_inner();
    assert_eq!(leader.leader_epoch, 0);

    let quota = |role: &str| SetQuotaRequest {
        quota: Some(QuotaInfo {
            role: role.into(),
            guarantee: vec![Resource::scalar("cpus", 1.0)],
            ..QuotaInfo::default()
        }),
    };
    let e = operator(channel.clone(), Some(cluster.tokens["eve"].clone()))
        .set_quota(quota("eng"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message()
            .contains("principal \"eve\" may not set_quota \"eng\""),
        "{}",
        e.message()
    );

    let mut ops = operator(channel.clone(), Some(cluster.tokens["ops"].clone()));
    ops.set_quota(quota("eng")).await?;
    ops.list_frameworks(ListFrameworksRequest {}).await?;

    // A client certificate authenticates as its common name: alice's is not an operator.
    let alice = tls_channel(&cluster, running.grpc, Some("alice")).await?;
    let e = operator(alice, None)
        .set_quota(quota("eng"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    let audit = std::fs::read_to_string(cluster.path("audit.log"))?;
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        lines
            .iter()
            .any(|l| l["principal"] == "ops" && l["action"] == "set_quota" && l["allowed"] == true),
        "{audit}"
    );
    ensure!(
        lines.iter().any(|l| l["principal"] == "eve"
            && l["action"] == "set_quota"
            && l["allowed"] == false),
        "{audit}"
    );
    Ok(())
}

#[tokio::test]
async fn a_tls_allocator_refuses_plain_connections_and_unknown_cas() -> Result<()> {
    let cluster = Cluster::new()?;
    let running = start(&cluster, true).await?;
    let plain = Endpoint::from_shared(format!("http://{}", running.grpc))?;
    let result = match bounded("connect", plain.connect()).await? {
        Ok(channel) => operator(channel, Some(cluster.tokens["ops"].clone()))
            .list_frameworks(ListFrameworksRequest {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(result.is_err(), "a plain HTTP/2 client was served");
    let other = Cluster::new()?;
    let e = tls_channel(&other, running.grpc, None).await;
    assert!(e.is_err(), "a client trusting another CA connected");
    Ok(())
}

/// Registers on a new stream as `identity` (a certificate) with agent id `id`; the first
/// answer.
async fn register(
    cluster: &Cluster,
    addr: SocketAddr,
    identity: Option<&str>,
    id: &str,
) -> Result<Result<String, tonic::Status>> {
    let channel = tls_channel(cluster, addr, identity).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Register(agent_message::Register {
            info: Some(AgentInfo {
                id: id.into(),
                hostname: "h".into(),
                resources: vec![
                    Resource::scalar("cpus", 1000.0),
                    Resource::scalar("mem", 1e6),
                ],
                ..AgentInfo::default()
            }),
            tasks: vec![],
        })),
    })?;
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut client = AgentServiceClient::new(channel);
    let mut inbound = match client.connect(stream).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    // Keep the stream open for the test's life.
    std::mem::forget(tx);
    let first = bounded("the allocator's answer", inbound.message()).await?;
    Ok(match first {
        Ok(Some(m)) => match m.message {
            Some(allocator_message::Message::Registered(r)) => Ok(r.agent_id),
            other => Err(tonic::Status::internal(format!("unexpected {other:?}"))),
        },
        Ok(None) => Err(tonic::Status::internal("stream ended")),
        Err(status) => Err(status),
    })
}

#[tokio::test]
async fn agents_need_a_certificate_and_cannot_take_another_agents_id() -> Result<()> {
    let cluster = Cluster::new()?;
    let running = start(&cluster, true).await?;
    let e = register(&cluster, running.grpc, None, "")
        .await?
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // A framework's certificate is not an agent's.
    let e = register(&cluster, running.grpc, Some("alice"), "")
        .await?
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let id = register(&cluster, running.grpc, Some("agent-1"), "")
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = register(&cluster, running.grpc, Some("agent-2"), &id)
        .await?
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("belongs to another principal"),
        "{}",
        e.message()
    );
    // The real agent re-registers with its id.
    let again = register(&cluster, running.grpc, Some("agent-1"), &id)
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(again, id);
    Ok(())
}

/// One request on `stream`; the status, the head and what of the body came with it.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: String,
) -> Result<(u16, String)> {
    bounded("send", stream.write_all(request.as_bytes())).await??;
    bounded("flush", stream.flush()).await??;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = bounded("read", stream.read(&mut chunk))
            .await
            .with_context(|| format!("after {:?}", String::from_utf8_lossy(&buf)))??;
        ensure!(n > 0, "closed after {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        // Enough once the head and the first record or the body are in.
        if let Some(end) = text.find("\r\n\r\n")
            && (text[end..].contains("framework_id")
                || text[end..].contains("SUBSCRIBED")
                || text[..end].to_ascii_lowercase().contains("content-length")
                || !text.starts_with("HTTP/1.1 200"))
        {
            let status = text[9..12].parse()?;
            return Ok((status, text.into_owned()));
        }
    }
}

fn subscribe_request(framework_id: Option<&str>, authorization: Option<&str>) -> String {
    let info = match framework_id {
        Some(id) => {
            serde_json::json!({ "user": "nobody", "name": "f", "id": { "value": id }, "failover_timeout": 60.0 })
        }
        None => serde_json::json!({ "user": "nobody", "name": "f", "failover_timeout": 60.0 }),
    };
    let body = serde_json::json!({ "type": "SUBSCRIBE", "subscribe": { "framework_info": info } })
        .to_string();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: strata\r\nContent-Type: application/json\r\nAccept: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn basic(principal: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"))
    )
}

async fn tls_stream(
    cluster: &Cluster,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = strata_auth::tls::client_config(&cluster.ca, None, &[b"http/1.1"])?;
    let tcp = bounded("connect", tokio::net::TcpStream::connect(addr)).await??;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(bounded(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await??)
}

/// SUBSCRIBE with another framework's id was accepted and closed the victim's stream.
#[tokio::test]
async fn the_mesos_api_authenticates_with_basic_and_refuses_a_hijack() -> Result<()> {
    let cluster = Cluster::new()?;
    let running = start(&cluster, true).await?;
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe_request(None, None),
    )
    .await?;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("www-authenticate: Basic"), "{text}");
    assert!(
        text.contains("HTTP Basic with the principal and its token"),
        "{text}"
    );

    let alice = basic("alice", &cluster.tokens["alice"]);
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe_request(None, Some(&alice)),
    )
    .await?;
    assert_eq!(status, 200, "{text}");
    let id = text
        .split("\"framework_id\":{\"value\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("framework id in SUBSCRIBED")?
        .to_owned();

    let eve = basic("eve", &cluster.tokens["eve"]);
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe_request(Some(&id), Some(&eve)),
    )
    .await?;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("belongs to another principal"), "{text}");
    // Alice's token under eve's name is not eve.
    let forged = basic("eve", &cluster.tokens["alice"]);
    let (status, _) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe_request(None, Some(&forged)),
    )
    .await?;
    assert_eq!(status, 401);
    // The cluster state needs view_frameworks.
    let get = |auth: &str| {
        format!("GET /master/state HTTP/1.1\r\nHost: s\r\nAuthorization: {auth}\r\n\r\n")
    };
    let (status, _) = exchange(tls_stream(&cluster, running.http).await?, get(&alice)).await?;
    assert_eq!(status, 403);
    let ops = format!("Bearer {}", cluster.tokens["ops"]);
    let (status, _) = exchange(tls_stream(&cluster, running.http).await?, get(&ops)).await?;
    assert_eq!(status, 200);
    Ok(())
}

/// Mesos' v1 operator API on the Mesos port decides as the gRPC OperatorService: without
/// credentials 401, a principal without the rule 403, an operator with `set_quota` 200.
#[tokio::test]
async fn the_mesos_operator_api_needs_credentials_and_a_rule() -> Result<()> {
    let cluster = Cluster::new()?;
    let running = start(&cluster, true).await?;
    let call = |body: String, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /api/v1 HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let update = |auth: Option<&str>| {
        let body = serde_json::json!({ "type": "UPDATE_QUOTA", "update_quota": {
            "quota_configs": [{ "role": "eng", "limits": { "cpus": { "value": 2 } } }] } });
        call(body.to_string(), auth)
    };
    let subscribe = |auth: Option<&str>| call(r#"{"type":"SUBSCRIBE"}"#.to_owned(), auth);
    let (status, text) = exchange(tls_stream(&cluster, running.http).await?, update(None)).await?;
    assert_eq!(status, 401, "{text}");
    let alice = basic("alice", &cluster.tokens["alice"]);
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        update(Some(&alice)),
    )
    .await?;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("may not set_quota"), "{text}");
    let ops = format!("Bearer {}", cluster.tokens["ops"]);
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        update(Some(&ops)),
    )
    .await?;
    assert_eq!(status, 200, "{text}");
    // The event stream is a view: credentials, and a rule allowing view_frameworks.
    let (status, text) =
        exchange(tls_stream(&cluster, running.http).await?, subscribe(None)).await?;
    assert_eq!(status, 401, "{text}");
    assert!(!text.contains("SUBSCRIBED"), "{text}");
    let eve = basic("eve", &cluster.tokens["alice"]);
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe(Some(&eve)),
    )
    .await?;
    assert_eq!(status, 401, "{text}");
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe(Some(&alice)),
    )
    .await?;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("view_frameworks"), "{text}");
    let (status, text) = exchange(
        tls_stream(&cluster, running.http).await?,
        subscribe(Some(&ops)),
    )
    .await?;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"type\":\"SUBSCRIBED\""), "{text}");
    let audit = std::fs::read_to_string(cluster.path("audit.log"))?;
    assert!(
        audit.contains("\"principal\":\"alice\"") && audit.contains("set_quota"),
        "{audit}"
    );
    Ok(())
}
