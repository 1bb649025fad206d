//! The gRPC edge: `AgentService.Connect`, `SchedulerService.Subscribe` and
//! `OperatorService`, served by [`serve`].
//!
//! Each stream gets a number ([`ConnId`]) and one reader task that forwards its messages to
//! the [actor](actor) (the one task owning the core) and reports the stream's end as a
//! disconnect input. Responses flow back through a per-stream channel whose receiver is the
//! gRPC response stream. Handlers return the response stream at once, before the first
//! message arrives, so a client may send its Register/SUBSCRIBE before or after the call
//! returns; a refused registration or subscription ends the response stream with an error
//! status (NOT_FOUND for an unknown framework id).
//!
//! Invariants: the first message of a Connect stream must be Register and the first call of
//! a Subscribe stream must be SUBSCRIBE (else FAILED_PRECONDITION); nothing but the actor
//! touches allocator state; shutdown ends every stream so the server can drain.

pub(crate) mod actor;
mod usage;
pub mod workloads;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_allocator_core::operator::OperatorError;
use strata_allocator_core::registry::RestoreError;
use strata_allocator_core::{AllocatorConfig, ConfigError, ConnId, Core};
use strata_proto::agent_service_server::{AgentService, AgentServiceServer};
use strata_proto::operator_service_server::{OperatorService, OperatorServiceServer};
use strata_proto::scheduler_service_server::{SchedulerService, SchedulerServiceServer};
use strata_proto::{
    AgentMessage, AllocatorMessage, Call, DeactivateAgentRequest, DeactivateAgentResponse,
    DrainAgentRequest, DrainAgentResponse, Event, GetLeaderRequest, GetLeaderResponse,
    GetQuotaRequest, GetQuotaResponse, GetStateRequest, GetStateResponse, GetUsageRequest,
    GetUsageResponse, ListAgentsRequest, ListAgentsResponse, ListFrameworksRequest,
    ListFrameworksResponse, ListReservationsRequest, ListReservationsResponse, ListRolesRequest,
    ListRolesResponse, ListTasksRequest, ListTasksResponse, ReactivateAgentRequest,
    ReactivateAgentResponse, ReserveRequest, ReserveResponse, SetQuotaRequest, SetQuotaResponse,
    SetWeightsRequest, SetWeightsResponse, TeardownFrameworkRequest, TeardownFrameworkResponse,
    UnreserveRequest, UnreserveResponse, WatchEvent, WatchRequest, agent_message, call,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use self::actor::{Actor, AgentTx, FrameworkTx, Input, Operation, Query, WATCH_BUFFER};
use self::usage::UsageBook;
use self::workloads::WorkloadBook;
use crate::metrics::Metrics;
use crate::security::{Security, denied_status};
use crate::store::{MemoryStore, Store};
use strata_allocator_core::Action;

/// Inputs queued for the actor before stream readers wait (backpressure to clients).
const INPUT_QUEUE: usize = 8192;
/// The largest message accepted from an agent (one re-registering with many tasks).
const MAX_AGENT_MESSAGE: usize = 64 * 1024 * 1024;
/// The largest call accepted from a framework: an ACCEPT of the most tasks allowed
/// (`core::limits`) of ordinary size fits many times over.
pub(crate) const MAX_SCHEDULER_MESSAGE: usize = 8 * 1024 * 1024;
/// HTTP/2 pings find dead peers whose TCP connection never closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the Mesos HTTP API may take to close its connections on shutdown.
const HTTP_STOP_WAIT: Duration = Duration::from_secs(5);

/// Why the allocator could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error("invalid allocator configuration: {0}")]
    Config(#[from] ConfigError),
    /// The registry store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The registry holds records the allocator cannot use.
    #[error("cannot restore the allocator's registry: {0}")]
    Restore(#[from] RestoreError),
    /// The listener's address could not be read.
    #[error("cannot read the listening socket's address: {0}")]
    LocalAddr(#[source] io::Error),
    /// The TLS or audit settings are unusable.
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    /// tonic refused the TLS settings.
    #[error("invalid TLS settings for the gRPC server: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The gRPC server failed.
    #[error("the allocator's gRPC server on {addr} failed: {source}")]
    Transport {
        /// Where it listened.
        addr: SocketAddr,
        /// What failed.
        source: tonic::transport::Error,
    },
}

/// Serves AgentService, SchedulerService and OperatorService on `listener` until `shutdown`
/// resolves; then every stream is ended and the call returns once connections drained. The
/// registry is kept in memory only: see [`serve_with_store`].
pub async fn serve(
    listener: TcpListener,
    config: AllocatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_store(listener, config, Box::new(MemoryStore::default()), shutdown).await
}

/// [`serve`] with the registry (framework ids and failover deadlines, agent ids, weights,
/// quota, dynamic reservations) loaded from `store` at start and kept in it.
pub async fn serve_with_store(
    listener: TcpListener,
    config: AllocatorConfig,
    store: Box<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_metrics(listener, config, store, Metrics::new(), shutdown).await
}

/// [`serve_with_store`] counting into `metrics` (served by [`crate::metrics::serve_http`] or
/// [`crate::metrics::router`]); the cluster gauges are refreshed by the actor at each scrape.
pub async fn serve_with_metrics(
    listener: TcpListener,
    config: AllocatorConfig,
    store: Box<dyn Store>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_http(listener, config, store, metrics, None, shutdown).await
}

/// [`serve_with_metrics`] also serving the Mesos v1 scheduler HTTP API on `http` (see
/// [`crate::mesos`]); it stops with the allocator.
pub async fn serve_with_http(
    listener: TcpListener,
    config: AllocatorConfig,
    store: Box<dyn Store>,
    metrics: Metrics,
    http: Option<crate::mesos::HttpApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_secure(
        listener,
        config,
        store,
        metrics,
        http,
        Arc::new(Security::open()),
        shutdown,
    )
    .await
}

/// [`serve_with_http`] with `security`: TLS on the gRPC and HTTP listeners, callers
/// authenticated and their actions authorized and audited (see [`crate::security`]). The
/// core decides with `config.policy`, which should be `security`'s policy.
pub async fn serve_secure(
    listener: TcpListener,
    config: AllocatorConfig,
    store: Box<dyn Store>,
    metrics: Metrics,
    http: Option<crate::mesos::HttpApi>,
    security: Arc<Security>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_replica(
        listener, config, store, metrics, http, security, None, shutdown,
    )
    .await
}

/// [`serve_secure`] for a replica that leads its cluster (`--etcd`): nothing is acted on
/// once `lease` is no longer surely held (the allocator stops at once instead; `shutdown`
/// should also complete then).
#[expect(
    clippy::too_many_arguments,
    reason = "serve_secure's arguments and the lease; each is a separate concern of the caller"
)]
pub async fn serve_replica(
    listener: TcpListener,
    config: AllocatorConfig,
    store: Box<dyn Store>,
    metrics: Metrics,
    http: Option<crate::mesos::HttpApi>,
    security: Arc<Security>,
    lease: Option<strata_etcd::LeaseGuard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let grpc_tls = security.grpc_tls()?;
    let registry = store.load()?;
    let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
    let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let (watch_tx, _) = broadcast::channel(WATCH_BUFFER);
    let (changes_tx, _) = broadcast::channel(actor::CHANGE_BUFFER);
    let flags = crate::mesos::state::flags(&config);
    let leader_epoch = config.leader_epoch;
    let workloads = WorkloadBook::default();
    let actor = Actor::new(config, watch_tx.clone(), store, registry)?
        .with_metrics(metrics.clone())
        .with_changes(changes_tx.clone())
        .with_workloads(workloads.clone())
        .with_security(security.clone())
        .with_lease(lease);
    let refresh_inputs = inputs.clone();
    metrics.set_refresh(Box::new(move || {
        let inputs = refresh_inputs.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if inputs.send(Input::Query(Query::Metrics(tx))).await.is_ok() {
                let _ = rx.await;
            }
        })
    }));
    let actor_task = tokio::spawn(
        actor
            .run(input_rx, stop_rx.clone())
            .instrument(tracing::info_span!("allocator", %addr)),
    );

    let shared = Shared {
        inputs,
        watch: watch_tx,
        changes: changes_tx,
        stop: stop_rx,
        next_conn: Arc::new(AtomicU64::new(0)),
        usage: UsageBook::default(),
        workloads,
        security,
        leader_epoch,
    };
    let http_task = http.map(|api| tokio::spawn(crate::mesos::run(api, shared.clone(), flags)));
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        // Small messages (updates, launches) must not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(stream)
    });
    let signal = {
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            tracing::info!(%addr, "shutdown requested");
            let _ = stop_tx.send(true);
        }
    };
    tracing::info!(%addr, "allocator serving");
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc_tls {
        builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
    }
    let result = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(
            AgentServiceServer::new(AgentApi(shared.clone()))
                .max_decoding_message_size(MAX_AGENT_MESSAGE),
        )
        .add_service(
            SchedulerServiceServer::new(SchedulerApi(shared.clone()))
                .max_decoding_message_size(MAX_SCHEDULER_MESSAGE),
        )
        .add_service(OperatorServiceServer::new(OperatorApi(shared)))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    let _ = stop_tx.send(true);
    if let Some(mut task) = http_task
        && tokio::time::timeout(HTTP_STOP_WAIT, &mut task)
            .await
            .is_err()
    {
        tracing::warn!("the Mesos HTTP API did not stop in time; its connections are cut");
        task.abort();
    }
    if let Err(e) = actor_task.await {
        tracing::error!(error = %e, "allocator task failed");
    }
    tracing::info!(%addr, "allocator stopped");
    result.map_err(|source| ServeError::Transport { addr, source })
}

/// What every service needs: the way to the actor, the stop signal, stream numbering.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) inputs: mpsc::Sender<Input>,
    watch: broadcast::Sender<WatchEvent>,
    /// The core's changes, for the Mesos operator event stream.
    pub(crate) changes: broadcast::Sender<actor::Numbered>,
    pub(crate) stop: watch::Receiver<bool>,
    next_conn: Arc<AtomicU64>,
    usage: UsageBook,
    /// What frameworks report they run (the dashboard's "Apps & jobs").
    pub(crate) workloads: WorkloadBook,
    pub(crate) security: Arc<Security>,
    /// This allocator's term (`AllocatorConfig::leader_epoch`), for `GetLeader`.
    leader_epoch: u64,
}

impl Shared {
    /// The latest usage of running tasks, as their agents report it.
    pub(crate) fn usage(&self) -> &UsageBook {
        &self.usage
    }

    pub(crate) fn conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) async fn query<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let unavailable = || Status::unavailable("the allocator is shutting down");
        self.inputs
            .send(Input::Query(make(tx)))
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())
    }

    /// Authenticates an operator request and decides `action` on each of `objects` (audited);
    /// returns the caller's principal.
    fn allow<T>(
        &self,
        request: &Request<T>,
        action: Action,
        objects: &[&str],
    ) -> Result<Option<String>, Status> {
        let principal = self.security.grpc_principal(request)?;
        for object in objects {
            self.security
                .authorize(principal.as_deref(), action, object)
                .map_err(|d| denied_status(&d))?;
        }
        Ok(principal)
    }

    /// Runs an operator action on the core; its error becomes the call's status.
    pub(crate) async fn operate<T: Send + 'static>(
        &self,
        action: impl FnOnce(&mut Core, Duration) -> Result<T, OperatorError> + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let unavailable = || Status::unavailable("the allocator is shutting down");
        let op = Operation(Box::new(move |core: &mut Core, now: Duration| {
            let _ = tx.send(action(core, now));
        }));
        self.inputs
            .send(Input::Operate(op))
            .await
            .map_err(|_| unavailable())?;
        rx.await
            .map_err(|_| unavailable())?
            .map_err(|e| operator_status(&e))
    }
}

/// The gRPC status of a refused operator action.
fn operator_status(error: &OperatorError) -> Status {
    match error {
        OperatorError::UnknownAgent { .. }
        | OperatorError::UnknownFramework { .. }
        | OperatorError::UnknownTask { .. } => Status::not_found(error.to_string()),
        OperatorError::Unavailable { .. } => Status::failed_precondition(error.to_string()),
        OperatorError::Role(_)
        | OperatorError::Resources(_)
        | OperatorError::InvalidReservation { .. } => Status::invalid_argument(error.to_string()),
    }
}

/// The roles `resources` are reserved for (what RESERVE and UNRESERVE act on).
fn reservation_roles(resources: &[strata_proto::Resource]) -> Vec<String> {
    let mut roles: Vec<String> = resources.iter().map(|r| r.role.clone()).collect();
    roles.sort();
    roles.dedup();
    roles
}

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug)]
struct AgentApi(Shared);

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = ResponseStream<AllocatorMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let principal = self.0.security.grpc_principal(&request)?;
        let conn = self.0.conn();
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!("agent_stream", conn = conn.0, peer = ?peer, principal = ?principal);
        tokio::spawn(read_agent(self.0.clone(), conn, inbound, tx, principal).instrument(span));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Forwards one agent stream to the actor until it ends.
async fn read_agent(
    shared: Shared,
    conn: ConnId,
    mut inbound: Streaming<AgentMessage>,
    tx: AgentTx,
    principal: Option<String>,
) {
    tracing::debug!("agent stream opened");
    let mut stop = shared.stop.clone();
    let mut tx = Some(tx);
    loop {
        let next = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            next = inbound.message() => next,
        };
        let input = match next {
            Ok(Some(AgentMessage { message: Some(m) })) => match m {
                agent_message::Message::Register(register) => Input::AgentRegister {
                    conn,
                    register,
                    sender: tx.take(),
                    principal: principal.clone(),
                },
                _ if tx.is_some() => {
                    tracing::warn!("agent sent a message before Register; closing");
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Err(Status::failed_precondition(
                            "the first message on a Connect stream must be Register",
                        )));
                    }
                    break;
                }
                agent_message::Message::Heartbeat(_) => Input::AgentHeartbeat { conn },
                agent_message::Message::StatusUpdate(update) => match update.status {
                    Some(status) => Input::AgentStatus { conn, status },
                    None => {
                        tracing::warn!("status update without a status; ignored");
                        continue;
                    }
                },
                agent_message::Message::Usage(usage) => {
                    shared.usage.report(conn, usage);
                    continue;
                }
            },
            Ok(Some(AgentMessage { message: None })) => {
                tracing::warn!("empty agent message; ignored");
                continue;
            }
            Ok(None) => {
                tracing::debug!("agent closed its stream");
                break;
            }
            Err(status) => {
                tracing::debug!(error = %status, "agent stream failed");
                break;
            }
        };
        if shared.inputs.send(input).await.is_err() {
            break; // the allocator stopped
        }
    }
    shared.usage.forget(conn);
    let _ = shared.inputs.send(Input::AgentClosed { conn }).await;
}

#[derive(Debug)]
struct SchedulerApi(Shared);

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    type SubscribeStream = ResponseStream<Event>;

    async fn subscribe(
        &self,
        request: Request<Streaming<Call>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = self.0.security.grpc_principal(&request)?;
        let conn = self.0.conn();
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let span = tracing::info_span!("framework_stream", conn = conn.0, peer = ?peer, principal = ?principal);
        tokio::spawn(read_framework(self.0.clone(), conn, inbound, tx, principal).instrument(span));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Records a framework's call in the audit log, by its type (offers and acknowledgements,
/// which are many and change nothing an operator audits, only at debug level).
pub(crate) fn audit_call(security: &Security, principal: Option<&str>, call: &Call) {
    let kind = match &call.call {
        Some(call::Call::Accept(_)) => "accept",
        Some(call::Call::Kill(k)) => {
            let object = format!("{}/{}", call.framework_id, k.task_id);
            security.audit(principal, "kill", &object, None);
            return;
        }
        Some(call::Call::Teardown(_)) => "teardown",
        Some(call::Call::UpdateFramework(_)) => "update_framework",
        // Sent often (every change of what the framework runs); changes nothing audited.
        Some(call::Call::Workloads(_)) => return,
        _ => {
            tracing::debug!(framework_id = %call.framework_id, principal = ?principal, "framework call");
            return;
        }
    };
    security.audit(principal, kind, &call.framework_id, None);
}

/// Forwards one framework stream to the actor until it ends.
async fn read_framework(
    shared: Shared,
    conn: ConnId,
    mut inbound: Streaming<Call>,
    tx: FrameworkTx,
    principal: Option<String>,
) {
    tracing::debug!("framework stream opened");
    let mut stop = shared.stop.clone();
    let mut tx = Some(tx);
    loop {
        let next = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            next = inbound.message() => next,
        };
        let input = match next {
            Ok(Some(call)) => match tx.take() {
                Some(sender) => match call.call {
                    Some(call::Call::Subscribe(subscribe)) => {
                        let info = subscribe.framework_info.unwrap_or_default();
                        Input::FrameworkSubscribe {
                            conn,
                            info,
                            suppressed_roles: subscribe.suppressed_roles,
                            sender,
                            principal: principal.clone(),
                        }
                    }
                    _ => {
                        tracing::warn!("first call was not SUBSCRIBE; closing");
                        let _ = sender.send(Err(Status::failed_precondition(
                            "the first call on a Subscribe stream must be SUBSCRIBE",
                        )));
                        break;
                    }
                },
                None => {
                    audit_call(&shared.security, principal.as_deref(), &call);
                    Input::FrameworkCall { conn, call }
                }
            },
            Ok(None) => {
                tracing::debug!("framework closed its stream");
                break;
            }
            Err(status) => {
                tracing::debug!(error = %status, "framework stream failed");
                break;
            }
        };
        if shared.inputs.send(input).await.is_err() {
            break;
        }
    }
    let _ = shared.inputs.send(Input::FrameworkClosed { conn }).await;
}

#[derive(Debug)]
struct OperatorApi(Shared);

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn get_state(
        &self,
        request: Request<GetStateRequest>,
    ) -> Result<Response<GetStateResponse>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        self.0.allow(&request, Action::ViewTasks, &["*"])?;
        let mut state = self.0.query(Query::State).await?;
        state.usage = self.0.usage.query(&GetUsageRequest::default());
        Ok(Response::new(state))
    }

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        let (agents, draining, deactivated) = self.0.query(Query::Agents).await?;
        Ok(Response::new(ListAgentsResponse {
            agents,
            draining,
            deactivated,
        }))
    }

    async fn list_frameworks(
        &self,
        request: Request<ListFrameworksRequest>,
    ) -> Result<Response<ListFrameworksResponse>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        let frameworks = self.0.query(Query::Frameworks).await?;
        Ok(Response::new(ListFrameworksResponse { frameworks }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.0.allow(&request, Action::ViewTasks, &["*"])?;
        let request = request.into_inner();
        let tasks = self.0.query(|tx| Query::Tasks(request, tx)).await?;
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn list_roles(
        &self,
        request: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        let roles = self.0.operate(|core, _| Ok(core.role_summaries())).await?;
        Ok(Response::new(ListRolesResponse { roles }))
    }

    async fn set_weights(
        &self,
        request: Request<SetWeightsRequest>,
    ) -> Result<Response<SetWeightsResponse>, Status> {
        let roles: Vec<String> = request.get_ref().weights.keys().cloned().collect();
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        self.0.allow(&request, Action::UpdateWeights, &roles)?;
        let weights = request.into_inner().weights.into_iter().collect();
        self.0
            .operate(move |core, _| core.set_weights(&weights))
            .await?;
        Ok(Response::new(SetWeightsResponse {}))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaResponse>, Status> {
        let role = request
            .get_ref()
            .quota
            .as_ref()
            .map(|q| q.role.clone())
            .unwrap_or_default();
        self.0.allow(&request, Action::SetQuota, &[&role])?;
        let info = request.into_inner().quota.unwrap_or_default();
        self.0
            .operate(move |core, _| {
                let quota = Core::quota_from_proto(&info)?;
                core.set_quota(&info.role, quota)
            })
            .await?;
        Ok(Response::new(SetQuotaResponse {}))
    }

    async fn get_quota(
        &self,
        request: Request<GetQuotaRequest>,
    ) -> Result<Response<GetQuotaResponse>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        let quotas = self.0.operate(|core, _| Ok(core.quota_infos())).await?;
        Ok(Response::new(GetQuotaResponse { quotas }))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let roles = reservation_roles(&request.get_ref().resources);
        self.0.allow(
            &request,
            Action::Reserve,
            &roles.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        let r = request.into_inner();
        self.0
            .operate(move |core, _| core.operator_reserve(&r.agent_id, &r.resources, true))
            .await?;
        Ok(Response::new(ReserveResponse {}))
    }

    async fn unreserve(
        &self,
        request: Request<UnreserveRequest>,
    ) -> Result<Response<UnreserveResponse>, Status> {
        let roles = reservation_roles(&request.get_ref().resources);
        self.0.allow(
            &request,
            Action::Unreserve,
            &roles.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        let r = request.into_inner();
        self.0
            .operate(move |core, _| core.operator_reserve(&r.agent_id, &r.resources, false))
            .await?;
        Ok(Response::new(UnreserveResponse {}))
    }

    async fn list_reservations(
        &self,
        request: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        let reservations = self
            .0
            .operate(|core, _| Ok(core.reservation_summaries()))
            .await?;
        Ok(Response::new(ListReservationsResponse { reservations }))
    }

    async fn drain_agent(
        &self,
        request: Request<DrainAgentRequest>,
    ) -> Result<Response<DrainAgentResponse>, Status> {
        let agent_id = request.get_ref().agent_id.clone();
        self.0.allow(&request, Action::DrainAgents, &[&agent_id])?;
        let r = request.into_inner();
        self.0
            .operate(move |core, now| core.drain_agent(now, &r.agent_id, r.grace_period_seconds))
            .await?;
        Ok(Response::new(DrainAgentResponse {}))
    }

    async fn deactivate_agent(
        &self,
        request: Request<DeactivateAgentRequest>,
    ) -> Result<Response<DeactivateAgentResponse>, Status> {
        let agent_id = request.get_ref().agent_id.clone();
        self.0.allow(&request, Action::DrainAgents, &[&agent_id])?;
        let r = request.into_inner();
        self.0
            .operate(move |core, _| core.deactivate_agent(&r.agent_id))
            .await?;
        Ok(Response::new(DeactivateAgentResponse {}))
    }

    async fn reactivate_agent(
        &self,
        request: Request<ReactivateAgentRequest>,
    ) -> Result<Response<ReactivateAgentResponse>, Status> {
        let agent_id = request.get_ref().agent_id.clone();
        self.0.allow(&request, Action::DrainAgents, &[&agent_id])?;
        let r = request.into_inner();
        self.0
            .operate(move |core, _| core.reactivate_agent(&r.agent_id))
            .await?;
        Ok(Response::new(ReactivateAgentResponse {}))
    }

    async fn teardown_framework(
        &self,
        request: Request<TeardownFrameworkRequest>,
    ) -> Result<Response<TeardownFrameworkResponse>, Status> {
        let framework_id = request.get_ref().framework_id.clone();
        let owner = self
            .0
            .operate(move |core, _| Ok(core.framework_principal(&framework_id)))
            .await?
            .unwrap_or_default();
        self.0
            .allow(&request, Action::TeardownFrameworks, &[&owner])?;
        let r = request.into_inner();
        self.0
            .operate(move |core, now| core.teardown_framework(now, &r.framework_id))
            .await?;
        Ok(Response::new(TeardownFrameworkResponse {}))
    }

    type WatchStream = ResponseStream<WatchEvent>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.allow(&request, Action::ViewFrameworks, &["*"])?;
        self.0.allow(&request, Action::ViewTasks, &["*"])?;
        let mut rx = self.0.watch.subscribe();
        let mut stop = self.0.stop.clone();
        let (tx, out) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    e = rx.recv() => e,
                };
                let item = match event {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::RecvError::Lagged(n)) => Ok(WatchEvent {
                        kind: "lagged".to_owned(),
                        message: format!("{n} events were missed: this watcher was too slow"),
                        ..WatchEvent::default()
                    }),
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(out))))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        self.0.allow(&request, Action::ViewTasks, &["*"])?;
        let tasks = self.0.usage.query(request.get_ref());
        Ok(Response::new(GetUsageResponse { tasks }))
    }

    async fn get_leader(
        &self,
        request: Request<GetLeaderRequest>,
    ) -> Result<Response<GetLeaderResponse>, Status> {
        // Who leads is no secret among the cluster's principals: authentication only, no rule.
        let principal = self.0.security.grpc_principal(&request)?;
        if principal.is_none() && self.0.security.policy().enforced() {
            return Err(Status::unauthenticated(
                "authentication required to ask who leads: present a client certificate signed \
                 by the cluster's CA, or a bearer token (strata --token, STRATA_TOKEN)",
            ));
        }
        Ok(Response::new(GetLeaderResponse {
            leader_epoch: self.0.leader_epoch,
        }))
    }
}
