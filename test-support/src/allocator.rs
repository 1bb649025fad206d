//! A real allocator in-process on 127.0.0.1 (port 0), with what the fakes need to reach it
//! (feature `allocator`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use strata_allocator::mesos::{HttpApi, Leadership};
use strata_allocator::security::{Security, ServerTls};
use strata_allocator::store::MemoryStore;
use strata_allocator::{AllocatorConfig, Metrics, metrics, serve_secure};
use strata_proto::names::{CPUS, MEM, PORTS};
use strata_proto::{AgentInfo, Call, Event, FrameworkInfo, Resource};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::StreamOptions;
use crate::fake_agent::FakeAgent;
use crate::framework::Framework;
use crate::wait::{STEP, bounded_for};

/// Fast timers, so that the tests see heartbeats, rounds and filters expire quickly.
pub fn config() -> AllocatorConfig {
    AllocatorConfig {
        agent_heartbeat_interval: Duration::from_secs(1),
        agent_timeout: Duration::from_secs(30),
        agent_reconnect_timeout: Duration::from_millis(200),
        agent_reregister_timeout: Duration::from_secs(600),
        framework_heartbeat_interval: Duration::from_secs(1),
        allocation_interval: Duration::from_millis(50),
        // Short, so that a quiet spell after DECLINE proves the call's own filter, and the rest
        // of an accepted offer comes back soon.
        default_refuse: Duration::from_millis(200),
        terminal_task_history: 100,
        offer_timeout: None,
        max_frameworks: 1000,
        max_frameworks_per_principal: 100,
        policy: strata_allocator::core::Policy::Open,
        leader_epoch: 0,
    }
}

/// A running allocator on ephemeral ports; stopped on drop.
#[derive(Debug)]
pub struct Allocator {
    /// AgentService, SchedulerService and OperatorService.
    pub grpc: SocketAddr,
    /// The Mesos HTTP API or `/metrics`, when started with one.
    http: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Each server with what it is, awaited in order by [`Allocator::shutdown`].
    servers: Vec<(&'static str, JoinHandle<Result<()>>)>,
    step: Duration,
    /// How [`Allocator::channel`] speaks TLS to a secure allocator.
    tls: Option<ClientTlsConfig>,
}

impl Allocator {
    /// gRPC only, with [`config`].
    pub async fn start() -> Result<Self> {
        Self::start_with(config(), None, None).await
    }

    /// gRPC and the Mesos v1 scheduler HTTP API under `leadership` (`serve_with_http`), with
    /// [`config`].
    pub async fn with_mesos(leadership: Leadership) -> Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let api = HttpApi {
            leadership,
            ..HttpApi::new(http)
        };
        Self::start_with(config(), Some(api), None).await
    }

    /// gRPC counting into its metrics, and `/metrics` served by `metrics::serve_http` on a
    /// listener of its own, with [`config`].
    pub async fn with_metrics() -> Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_with(config(), None, Some(http)).await
    }

    /// gRPC with `config`, the Mesos HTTP API when `mesos` is given, and `/metrics` on
    /// `metrics_http` when given; each step of its own bounded by [`STEP`].
    pub async fn start_with(
        config: AllocatorConfig,
        mesos: Option<HttpApi>,
        metrics_http: Option<TcpListener>,
    ) -> Result<Self> {
        Self::start_serving(
            config,
            mesos,
            metrics_http,
            Arc::new(Security::open()),
            None,
        )
        .await
    }

    /// Like [`Allocator::start_with`] with TLS and authentication on, as `pki` makes them:
    /// [`Allocator::channel`] then presents `pki`'s client certificate.
    pub async fn start_secure(
        mut config: AllocatorConfig,
        mesos: Option<HttpApi>,
        pki: &Pki,
    ) -> Result<Self> {
        let security = pki.security()?;
        config.policy = security.policy().clone();
        let tls = pki.grpc_tls()?;
        Self::start_serving(config, mesos, None, Arc::new(security), Some(tls)).await
    }

    async fn start_serving(
        config: AllocatorConfig,
        mesos: Option<HttpApi>,
        metrics_http: Option<TcpListener>,
        security: Arc<Security>,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = listener.local_addr()?;
        let http = match (&mesos, &metrics_http) {
            (Some(api), _) => Some(api.listener.local_addr()?),
            (None, Some(listener)) => Some(listener.local_addr()?),
            (None, None) => None,
        };
        let (stop, stopped) = watch::channel(false);
        let metrics = Metrics::new();
        let server = serve_secure(
            listener,
            config,
            Box::new(MemoryStore::default()),
            metrics.clone(),
            mesos,
            security,
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
            step: STEP,
            tls,
        })
    }

    /// The same allocator, its own steps (connecting, stopping) bounded by `step` instead.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// The Mesos HTTP API's or `/metrics`' address.
    pub fn http(&self) -> SocketAddr {
        self.http
            .expect("an allocator without HTTP: start it with with_mesos or with_metrics")
    }

    /// A channel to its gRPC services.
    pub async fn channel(&self) -> Result<Channel> {
        let endpoint = match &self.tls {
            Some(tls) => {
                Endpoint::from_shared(format!("https://{}", self.grpc))?.tls_config(tls.clone())?
            }
            None => Endpoint::from_shared(format!("http://{}", self.grpc))?,
        };
        Ok(bounded_for(self.step, "connect", endpoint.connect()).await??)
    }

    /// Stops the allocator and waits for each server to return.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.send_replace(true);
        for (what, server) in self.servers.drain(..) {
            bounded_for(self.step, &format!("{what} to return"), server).await???;
        }
        Ok(())
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// TLS and authentication for an in-process allocator, made as `strata certs` and `strata token
/// create` make them, in a temp dir: a CA, the allocator's certificate (localhost, 127.0.0.1),
/// a client certificate and a token for one principal, and ACLs allowing it every action.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    /// Who the client certificate and the token authenticate.
    pub principal: String,
    /// The principal's bearer token (also its HTTP Basic password).
    pub token: String,
}

impl Pki {
    /// Makes the files for `principal`.
    pub fn new(principal: &str) -> Result<Self> {
        use strata_auth::{certs, credentials};
        let dir = tempfile::tempdir()?;
        certs::init_ca(dir.path())?;
        certs::issue(
            dir.path(),
            "allocator",
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
        )?;
        certs::issue(dir.path(), principal, &[])?;
        let token = credentials::create_token(&dir.path().join("credentials.toml"), principal)?;
        Ok(Self {
            dir,
            principal: principal.to_owned(),
            token,
        })
    }

    /// The CA certificate.
    pub fn ca(&self) -> std::path::PathBuf {
        strata_auth::certs::ca_files(self.dir.path()).cert
    }

    /// The allocator's settings: TLS with client certificates from the CA, the token, and the
    /// ACLs.
    pub fn security(&self) -> Result<Security> {
        let server = strata_auth::certs::files(self.dir.path(), "allocator");
        let tls = ServerTls {
            cert: server.cert,
            key: server.key,
            client_ca: Some(self.ca()),
        };
        let credentials =
            strata_auth::credentials::Credentials::load(&self.dir.path().join("credentials.toml"))?;
        let policy =
            strata_auth::Policy::Enforced(strata_auth::Acls::allow_all(&[&self.principal]));
        Ok(Security::new(policy, credentials, Some(tls), None)?)
    }

    /// tonic's client TLS: the CA and the principal's certificate.
    fn grpc_tls(&self) -> Result<ClientTlsConfig> {
        let me = strata_auth::certs::files(self.dir.path(), &self.principal);
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(self.ca())?))
            .identity(Identity::from_pem(
                std::fs::read(&me.cert)?,
                std::fs::read(&me.key)?,
            ))
            .domain_name("localhost"))
    }

    /// A rustls client configuration for HTTP/1.1 that trusts the CA (no client certificate:
    /// HTTP callers authenticate with [`Pki::basic_authorization`]).
    pub fn http_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        Ok(strata_auth::tls::client_config(
            &self.ca(),
            None,
            &[b"http/1.1"],
        )?)
    }

    /// `Basic base64(principal:token)`, as Mesos frameworks authenticate.
    pub fn basic_authorization(&self) -> String {
        use base64::Engine as _;
        let pair = format!("{}:{}", self.principal, self.token);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
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

impl FakeAgent {
    /// Registers `cpus`, `mem` and ports 31000-31099 on "fake-host" with `allocator` (started
    /// with [`config`]: the answer must carry an id and a 1 s heartbeat interval).
    pub async fn register(allocator: &Allocator, cpus: f64, mem: f64) -> Result<Self> {
        let info = AgentInfo {
            hostname: "fake-host".to_owned(),
            resources: vec![
                Resource::scalar(CPUS, cpus),
                Resource::scalar(MEM, mem),
                Resource::ranges(PORTS, [(31000, 31099)]),
            ],
            ..AgentInfo::default()
        };
        let (agent, r) =
            Self::connect(allocator.channel().await?, info, StreamOptions::default()).await?;
        assert!(!r.agent_id.is_empty());
        assert_eq!(r.heartbeat_interval_seconds, 1.0);
        Ok(agent)
    }
}

impl Framework {
    /// Queues SUBSCRIBE and opens the stream, without reading from it.
    pub async fn open(
        allocator: &Allocator,
        info: FrameworkInfo,
    ) -> Result<(mpsc::Sender<Call>, Streaming<Event>)> {
        Self::open_on(allocator.channel().await?, info, StreamOptions::default()).await
    }

    /// Subscribes and reads SUBSCRIBED.
    pub async fn subscribe(allocator: &Allocator, info: FrameworkInfo) -> Result<Self> {
        Self::subscribe_on(allocator.channel().await?, info, StreamOptions::default()).await
    }

    /// Subscribes as `name`.
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
}
