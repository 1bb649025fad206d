//! The Mesos v1 scheduler HTTP API, served beside the gRPC API as an adapter at the edge:
//! frameworks and client libraries written for Apache Mesos run unchanged against Strata.
//!
//! Routes ([`router`]): `POST /api/v1/scheduler` (JSON calls; SUBSCRIBE answers an endless
//! RecordIO stream of JSON events), `GET /version`, `GET /master/state` and `/state`,
//! `GET /health`; more routes (e.g. `/metrics`) merge in through [`HttpApi::extra`].
//!
//! A SUBSCRIBE takes a fresh [`ConnId`] and enters the actor exactly as a gRPC Subscribe
//! stream does (`Input::FrameworkSubscribe` with the stream's sender); its events are
//! written as Mesos JSON records, each in its own HTTP chunk. Later calls are separate POSTs:
//! they find the subscription by `framework_id` and `Mesos-Stream-Id` and enter the actor as
//! `Input::FrameworkCall` on that ConnId, answered 202 at once. The end of the response body
//! (client gone, or the actor closing the stream) is `Input::FrameworkClosed`. The core does
//! not know which edge a framework came through.
//!
//! Status codes are Mesos 1.11's: 200 (SUBSCRIBE), 202 (other calls), 400 (bad JSON, missing
//! fields, unknown framework, missing or wrong Mesos-Stream-Id), 403 (framework not
//! subscribed here), 405, 406 (SUBSCRIBE not accepting JSON), 415 (a body not JSON), 307 to
//! the leader when this allocator follows ([`Leadership`]), 503 when there is no leader or
//! the allocator is stopping. Stale calls (used offers, unknown tasks) get 202; the core
//! reports them with UPDATE events.

pub mod convert;
pub mod json;
pub mod operator_v1;
pub mod recordio;
pub mod state;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use strata_allocator_core::ConnId;
use strata_proto::{Event, TaskReason, TaskSource, TaskState, TaskStatus, event};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use self::convert::ConvertError;
use crate::api::Shared;
use crate::api::actor::{Input, Query};
use crate::refusal::Refusal;
use crate::security::with_principal;
use strata_allocator_core::Action;
use strata_common::serve::PeerPrincipal;

/// The header naming a subscription's stream.
pub const STREAM_ID: &str = "Mesos-Stream-Id";
/// How long a SUBSCRIBE waits for the allocator's answer.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);
/// The largest call body accepted: the gRPC scheduler API's limit.
const MAX_BODY: usize = crate::api::MAX_SCHEDULER_MESSAGE;
/// How many operator event streams (`POST /api/v1` SUBSCRIBE) may be open at once by
/// default ([`HttpApi::max_operator_subscribers`]).
pub const MAX_OPERATOR_SUBSCRIBERS: usize = 64;
/// How often an operator event stream gets a HEARTBEAT (Mesos' 15 s).
const OPERATOR_HEARTBEAT: Duration = Duration::from_secs(15);
/// Records queued per operator event stream before its writer waits for the client.
const OPERATOR_STREAM_QUEUE: usize = 64;

/// Whether this allocator leads. A single allocator always leads; a replica that does not
/// (`--etcd`) answers with [`crate::follower`], which uses the other values: the redirect
/// (307) and no-leader (503) answers Mesos clients rely on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Leadership {
    /// This allocator serves calls.
    #[default]
    Leader,
    /// Another allocator leads, at `leader` (`host:port` of its HTTP API): calls get 307.
    Follower {
        /// `host:port` of the leader.
        leader: String,
    },
    /// No allocator leads: calls get 503.
    NoLeader,
}

/// The Mesos HTTP API's listener and settings, given to [`crate::serve_with_http`].
#[derive(Debug)]
pub struct HttpApi {
    /// Where it listens (Mesos' masters use port 5050).
    pub listener: TcpListener,
    /// Whether this allocator leads (always, unless set otherwise in tests).
    pub leadership: Leadership,
    /// More routes served on the same listener, e.g. `GET /metrics`.
    pub extra: Option<Router>,
    /// How many operator event streams may be open at once; more SUBSCRIBEs get 429.
    pub max_operator_subscribers: usize,
}

impl HttpApi {
    /// The API on `listener`, leading, with no extra routes.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            leadership: Leadership::Leader,
            extra: None,
            max_operator_subscribers: MAX_OPERATOR_SUBSCRIBERS,
        }
    }
}

/// Why a call was refused; each maps to Mesos' status code.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Another allocator leads.
    #[error("this allocator is not the leader: call the leader at {leader}")]
    NotLeader {
        /// `host:port` of the leader.
        leader: String,
        /// The path (and query) asked for, kept in the redirect.
        path: String,
    },
    /// No allocator leads.
    #[error("no allocator is leading: retry later")]
    NoLeader,
    /// The allocator is stopping.
    #[error("the allocator is shutting down: retry later")]
    Unavailable,
    /// The body's media type is not given.
    #[error("expecting 'Content-Type' to be present: send the call as application/json")]
    NoContentType,
    /// The body is not JSON.
    #[error(
        "unsupported 'Content-Type' {content_type:?}: send the call as application/json \
         (protobuf calls are not supported)"
    )]
    UnsupportedMediaType {
        /// The type sent.
        content_type: String,
    },
    /// The client accepts no media type the stream can be written in.
    #[error("cannot answer 'Accept: {accept}': accept application/json")]
    NotAcceptable {
        /// The Accept header sent.
        accept: String,
    },
    /// The body does not parse.
    #[error("failed to parse the body as a JSON call: {reason}")]
    BadJson {
        /// The parser's error.
        reason: String,
    },
    /// A field is missing or invalid.
    #[error(transparent)]
    Invalid(#[from] ConvertError),
    /// A framework the allocator does not know.
    #[error(
        "framework {framework_id:?} cannot be found: SUBSCRIBE without an id to register, or \
         with the id SUBSCRIBED gave"
    )]
    UnknownFramework {
        /// The id named.
        framework_id: String,
    },
    /// A known framework with no HTTP subscription here.
    #[error("framework {framework_id} is not subscribed over HTTP: SUBSCRIBE first")]
    NotSubscribed {
        /// The id named.
        framework_id: String,
    },
    /// A SUBSCRIBE carrying a stream id.
    #[error("subscribe calls should not include the 'Mesos-Stream-Id' header: remove it")]
    StreamIdOnSubscribe,
    /// A call without the stream id.
    #[error(
        "all non-subscribe calls should include the 'Mesos-Stream-Id' header: copy it from \
         the SUBSCRIBE response"
    )]
    MissingStreamId,
    /// A call with another stream's id.
    #[error(
        "the stream id {given:?} does not match framework {framework_id}'s current stream: \
         send the Mesos-Stream-Id of its latest SUBSCRIBE response"
    )]
    WrongStreamId {
        /// The framework.
        framework_id: String,
        /// The id sent.
        given: String,
    },
    /// The allocator refused the subscription.
    #[error("subscription refused: {message}")]
    SubscribeRefused {
        /// The allocator's reason.
        message: String,
    },
    /// The caller did not authenticate, or its credentials are invalid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A query parameter is invalid.
    #[error("invalid query: {0}")]
    BadQuery(String),
    /// An operator call that cannot be read.
    #[error(transparent)]
    OperatorCall(#[from] operator_v1::OperatorCallError),
    /// As many operator event streams are open as allowed.
    #[error(
        "too many operator event subscribers: {max} streams are open, the most allowed; close \
         one or retry later"
    )]
    TooManySubscribers {
        /// The most allowed.
        max: usize,
    },
    /// The allocator refused an operator call.
    #[error("{message}")]
    Operator {
        /// The status that says why.
        status: StatusCode,
        /// The allocator's reason.
        message: String,
    },
}

impl HttpError {
    /// The refusal of an operator action, as its gRPC status says ([`Refusal`]).
    fn operator(status: &Status) -> Self {
        Refusal::from_status(status).into()
    }
}

impl From<Refusal> for HttpError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated(message) => Self::Unauthenticated(message),
            Refusal::Forbidden(message) => Self::Forbidden(message),
            Refusal::Operator { status, message } => Self::Operator { status, message },
        }
    }
}

impl From<strata_auth::Denied> for HttpError {
    fn from(denied: strata_auth::Denied) -> Self {
        Refusal::from(denied).into()
    }
}

impl HttpError {
    /// Mesos' status code for the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotLeader { .. } => StatusCode::TEMPORARY_REDIRECT,
            Self::NoLeader | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            Self::NotSubscribed { .. } | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::TooManySubscribers { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NoContentType
            | Self::BadJson { .. }
            | Self::Invalid(_)
            | Self::UnknownFramework { .. }
            | Self::StreamIdOnSubscribe
            | Self::MissingStreamId
            | Self::WrongStreamId { .. }
            | Self::SubscribeRefused { .. }
            | Self::BadQuery(_)
            | Self::OperatorCall(_) => StatusCode::BAD_REQUEST,
            Self::Operator { status, .. } => *status,
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        tracing::debug!(%status, error = %self, "mesos call refused");
        let mut response = (status, self.to_string()).into_response();
        if let Self::NotLeader { leader, path } = &self
            && let Ok(location) = HeaderValue::from_str(&format!("//{leader}{path}"))
        {
            response.headers_mut().insert(header::LOCATION, location);
        }
        if let Self::TooManySubscribers { .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::Unauthenticated(_) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"strata\", Bearer"),
            );
        }
        response
    }
}

/// A framework subscribed over HTTP.
#[derive(Debug)]
struct Subscription {
    stream_id: String,
    conn: ConnId,
    /// Who subscribed: every later call of the framework must come from it.
    principal: Option<String>,
    /// To add events of the adapter's own (TASK_ERROR for tasks Strata cannot run); weak, so
    /// the stream still ends when the actor drops its sender.
    events: mpsc::WeakUnboundedSender<Result<Event, Status>>,
}

type Subscriptions = Arc<Mutex<HashMap<String, Subscription>>>;

/// What the handlers share.
#[derive(Debug, Clone)]
struct Ctx {
    shared: Shared,
    subscriptions: Subscriptions,
    leadership: Leadership,
    addr: SocketAddr,
    /// The allocator's settings, as `/master/state`'s `flags`.
    flags: Arc<serde_json::Value>,
    /// One permit per operator event stream that may open.
    operator_subscribers: Arc<Semaphore>,
    /// How many permits there are.
    max_operator_subscribers: usize,
}

/// Serves `api` until the allocator stops (`shared.stop`).
pub(crate) async fn run(api: HttpApi, shared: Shared, flags: serde_json::Value) {
    let addr = match api.listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the Mesos HTTP listener's address; not serving it");
            return;
        }
    };
    let mut stop = shared.stop.clone();
    let tls = match shared.security.http_tls() {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up TLS for the Mesos HTTP API; not serving it");
            return;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let app = router(
        shared,
        api.leadership,
        addr,
        api.extra,
        flags,
        api.max_operator_subscribers,
    );
    tracing::info!(%addr, scheme, "mesos scheduler HTTP API serving");
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(e) =
        strata_common::serve::serve(api.listener, app, tls.map(with_principal), stopped).await
    {
        tracing::error!(%addr, error = %e, "mesos HTTP API server failed");
    }
    tracing::info!(%addr, "mesos scheduler HTTP API stopped");
}

/// The API's routes.
fn router(
    shared: Shared,
    leadership: Leadership,
    addr: SocketAddr,
    extra: Option<Router>,
    flags: serde_json::Value,
    max_operator_subscribers: usize,
) -> Router {
    let ctx = Ctx {
        shared,
        subscriptions: Arc::default(),
        flags: Arc::new(flags),
        leadership,
        addr,
        operator_subscribers: Arc::new(Semaphore::new(max_operator_subscribers)),
        max_operator_subscribers,
    };
    let extra = extra.map(|extra| {
        extra.route_layer(axum::middleware::from_fn_with_state(
            ctx.shared.security.clone(),
            crate::security::require_view,
        ))
    });
    let routes = Router::new()
        .route("/api/v1/scheduler", post(scheduler))
        // Where Mesos' own scheduler library (and libmesos clients) post.
        .route("/master/api/v1/scheduler", post(scheduler))
        .route("/version", get(version))
        .route("/master/state", get(master_state))
        .route("/state", get(master_state))
        .route("/master/slaves", get(master_slaves))
        .route("/master/frameworks", get(master_frameworks))
        .route("/master/tasks", get(master_tasks))
        .route("/metrics/snapshot", get(metrics_snapshot))
        .route("/api/v1", post(operator_call))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx.clone())
        .merge(crate::ui::router(
            ctx.shared,
            ctx.leadership,
            ctx.operator_subscribers,
            ctx.max_operator_subscribers,
        ));
    match extra {
        Some(extra) => routes.merge(extra),
        None => routes,
    }
}

async fn health() -> StatusCode {
    StatusCode::OK
}

fn json_response(value: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn version() -> Response {
    json_response(&state::version())
}

/// The allocator's state for a read-only endpoint at `path`, once the caller may view it
/// (`view_frameworks`; the views are all or nothing, see docs/security.md).
async fn viewed_state(
    ctx: &Ctx,
    path: &'static str,
    peer: Option<Extension<PeerPrincipal>>,
    headers: &HeaderMap,
) -> Result<strata_proto::GetStateResponse, HttpError> {
    leading(&ctx.leadership, path)?;
    let principal = caller(ctx, peer, headers)?;
    ctx.shared
        .security
        .authorize(principal.as_deref(), Action::ViewFrameworks, "*")?;
    ctx.shared
        .query(Query::State)
        .await
        .map_err(|_| HttpError::Unavailable)
}

async fn master_state(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let s = viewed_state(&ctx, "/master/state", peer, &headers).await?;
    Ok(json_response(&state::master_state(
        &s, ctx.addr, true, &ctx.flags,
    )))
}

async fn master_slaves(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let s = viewed_state(&ctx, "/master/slaves", peer, &headers).await?;
    Ok(json_response(&state::master_slaves(&s)))
}

async fn master_frameworks(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let s = viewed_state(&ctx, "/master/frameworks", peer, &headers).await?;
    Ok(json_response(&state::master_frameworks(&s)))
}

/// `?limit=N&offset=M&order=asc|des` of `/master/tasks`: (limit, offset, ascending).
fn tasks_query(query: Option<&str>) -> Result<(usize, usize, bool), HttpError> {
    let (mut limit, mut offset, mut ascending) = (state::DEFAULT_TASKS_LIMIT, 0, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value
                .parse::<usize>()
                .map_err(|_| HttpError::BadQuery(format!("{what} must be a number, not {value:?}")))
        };
        match key {
            "limit" => limit = number("limit")?,
            "offset" => offset = number("offset")?,
            "order" => {
                ascending = match value {
                    "asc" => true,
                    "des" => false,
                    _ => {
                        return Err(HttpError::BadQuery("order must be asc or des".to_owned()));
                    }
                }
            }
            // Mesos' other parameters (framework_id, task_id) are not supported; ignored.
            _ => {}
        }
    }
    Ok((limit, offset, ascending))
}

async fn master_tasks(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, HttpError> {
    let (limit, offset, ascending) = tasks_query(query.as_deref())?;
    let s = viewed_state(&ctx, "/master/tasks", peer, &headers).await?;
    Ok(json_response(&state::master_tasks(
        &s, limit, offset, ascending,
    )))
}

/// `POST /api/v1`: Mesos' v1 operator API ([`operator_v1`]).
async fn operator_call(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    use operator_v1::OperatorCall;
    leading(&ctx.leadership, "/api/v1")?;
    let principal = caller(&ctx, peer, &headers)?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| HttpError::BadJson {
            reason: e.to_string(),
        })?;
    let call = operator_v1::parse(&value)?;
    let shared = &ctx.shared;
    let authorize = |objects: &[&str]| -> Result<(), HttpError> {
        if let Some(action) = call.action() {
            for object in objects {
                shared
                    .security
                    .authorize(principal.as_deref(), action, object)?;
            }
        }
        Ok(())
    };
    let operator = |s: Status| HttpError::operator(&s);
    let done = || StatusCode::OK.into_response();
    Ok(match call.clone() {
        OperatorCall::Health => json_response(&operator_v1::health()),
        OperatorCall::Version => json_response(&operator_v1::version()),
        OperatorCall::State(view) => {
            authorize(&["*"])?;
            let s = shared
                .query(Query::State)
                .await
                .map_err(|_| HttpError::Unavailable)?;
            json_response(&operator_v1::state_view(view, &s))
        }
        OperatorCall::Roles => {
            authorize(&["*"])?;
            let roles = shared
                .operate(|core, _| Ok(core.role_summaries()))
                .await
                .map_err(operator)?;
            json_response(&operator_v1::roles(&roles))
        }
        OperatorCall::Subscribe => {
            authorize(&["*"])?;
            if let Some(accept) = header_str(&headers, header::ACCEPT)
                && !accepts_json(accept)
            {
                return Err(HttpError::NotAcceptable {
                    accept: accept.to_owned(),
                });
            }
            operator_subscribe(&ctx, principal.clone()).await?
        }
        OperatorCall::Quota => {
            authorize(&["*"])?;
            let quotas = shared
                .operate(|core, _| Ok(core.quota_infos()))
                .await
                .map_err(operator)?;
            json_response(&operator_v1::quota(&quotas))
        }
        OperatorCall::UpdateQuota(infos) => {
            let roles: Vec<&str> = infos.iter().map(|q| q.role.as_str()).collect();
            authorize(&roles)?;
            shared
                .operate(move |core, _| {
                    for info in &infos {
                        let quota = strata_allocator_core::Core::quota_from_proto(info)?;
                        core.set_quota(&info.role, quota)?;
                    }
                    Ok(())
                })
                .await
                .map_err(operator)?;
            done()
        }
        OperatorCall::UpdateWeights(weights) => {
            let roles: Vec<&str> = weights.keys().map(String::as_str).collect();
            authorize(&roles)?;
            shared
                .operate(move |core, _| core.set_weights(&weights))
                .await
                .map_err(operator)?;
            done()
        }
        OperatorCall::DrainAgent(agent_id, grace) => {
            authorize(&[&agent_id])?;
            shared
                .operate(move |core, now| core.drain_agent(now, &agent_id, grace))
                .await
                .map_err(operator)?;
            done()
        }
        OperatorCall::DeactivateAgent(agent_id) => {
            authorize(&[&agent_id])?;
            shared
                .operate(move |core, _| core.deactivate_agent(&agent_id))
                .await
                .map_err(operator)?;
            done()
        }
        OperatorCall::ReactivateAgent(agent_id) => {
            authorize(&[&agent_id])?;
            shared
                .operate(move |core, _| core.reactivate_agent(&agent_id))
                .await
                .map_err(operator)?;
            done()
        }
        OperatorCall::Teardown(framework_id) => {
            let id = framework_id.clone();
            let owner = shared
                .operate(move |core, _| Ok(core.framework_principal(&id)))
                .await
                .map_err(operator)?
                .unwrap_or_default();
            authorize(&[&owner])?;
            shared
                .operate(move |core, now| core.teardown_framework(now, &framework_id))
                .await
                .map_err(operator)?;
            done()
        }
    })
}

/// SUBSCRIBE on `/api/v1`: SUBSCRIBED with the state, a HEARTBEAT, then an event per change
/// of the cluster and a HEARTBEAT every [`OPERATOR_HEARTBEAT`], as RecordIO, until the
/// client goes, the allocator stops, or the stream lags behind the changes (it ends then, so
/// that the client subscribes again and starts from a fresh state rather than miss events).
async fn operator_subscribe(ctx: &Ctx, principal: Option<String>) -> Result<Response, HttpError> {
    let permit = Arc::clone(&ctx.operator_subscribers)
        .try_acquire_owned()
        .map_err(|_| HttpError::TooManySubscribers {
            max: ctx.max_operator_subscribers,
        })?;
    // Subscribed before the snapshot is taken: no change falls between the two.
    let mut changes = ctx.shared.changes.subscribe();
    let (state, last) = ctx
        .shared
        .query(Query::Snapshot)
        .await
        .map_err(|_| HttpError::Unavailable)?;
    let first = record(&operator_v1::subscribed(
        &state,
        OPERATOR_HEARTBEAT.as_secs_f64(),
    ));
    let (tx, rx) = mpsc::channel::<Bytes>(OPERATOR_STREAM_QUEUE);
    let mut stop = ctx.shared.stop.clone();
    let open = ctx.max_operator_subscribers - ctx.operator_subscribers.available_permits();
    let principal = principal.unwrap_or_default();
    tracing::info!(%principal, open, "mesos operator event stream subscribed");
    tokio::spawn(async move {
        let _permit = permit;
        let mut heartbeats = tokio::time::interval_at(
            tokio::time::Instant::now() + OPERATOR_HEARTBEAT,
            OPERATOR_HEARTBEAT,
        );
        let mut queue = VecDeque::from([first, record(&convert::heartbeat())]);
        let why = loop {
            let bytes = match queue.pop_front() {
                Some(bytes) => bytes,
                None => tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopped| *stopped) => break "the allocator is stopping",
                    () = tx.closed() => break "the client went away",
                    change = changes.recv() => match change {
                        Ok(change) if change.seq <= last => continue,
                        Ok(change) => record(&operator_v1::change(&change.change)),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(%principal, missed, "mesos operator event stream fell behind; ending it so the client subscribes again");
                            break "it fell behind";
                        }
                        Err(broadcast::error::RecvError::Closed) => break "the allocator stopped",
                    },
                    _ = heartbeats.tick() => record(&convert::heartbeat()),
                },
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break "the allocator is stopping",
                sent = tx.send(bytes) => if sent.is_err() {
                    break "the client went away";
                },
            }
        };
        tracing::info!(%principal, reason = why, "mesos operator event stream ended");
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn metrics_snapshot(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let s = viewed_state(&ctx, "/metrics/snapshot", peer, &headers).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let uptime = (now - s.started_at).max(0.0);
    Ok(json_response(&state::metrics_snapshot(&s, uptime)))
}

fn leading(leadership: &Leadership, path: &'static str) -> Result<(), HttpError> {
    match leadership {
        Leadership::Leader => Ok(()),
        Leadership::Follower { leader } => Err(HttpError::NotLeader {
            leader: leader.clone(),
            path: path.to_owned(),
        }),
        Leadership::NoLeader => Err(HttpError::NoLeader),
    }
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap_or("<not ascii>"))
}

/// Whether `accept` admits application/json.
fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim();
        matches!(media, "application/json" | "application/*" | "*/*")
    })
}

/// Who a request authenticated as: its TLS client certificate, else its `Authorization`
/// header (Bearer token, or Basic principal:token as Mesos frameworks send `principal` and
/// `secret`).
fn caller(
    ctx: &Ctx,
    peer: Option<Extension<PeerPrincipal>>,
    headers: &HeaderMap,
) -> Result<Option<String>, HttpError> {
    let certificate = peer.and_then(|Extension(p)| p.0);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    ctx.shared
        .security
        .authenticate(certificate, authorization)
        .map_err(|e| HttpError::Unauthenticated(e.to_string()))
}

/// `POST /api/v1/scheduler`.
async fn scheduler(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    leading(&ctx.leadership, "/api/v1/scheduler")?;
    let principal = caller(&ctx, peer, &headers)?;
    match header_str(&headers, header::CONTENT_TYPE) {
        None => return Err(HttpError::NoContentType),
        Some(ct) if ct.split(';').next().unwrap_or("").trim() == "application/json" => {}
        Some(ct) => {
            return Err(HttpError::UnsupportedMediaType {
                content_type: ct.to_owned(),
            });
        }
    }
    let call: json::Call = serde_json::from_slice(&body).map_err(|e| HttpError::BadJson {
        reason: e.to_string(),
    })?;
    let kind = call.kind.clone().ok_or(ConvertError::Missing {
        field: "type",
        hint: "say which call it is: SUBSCRIBE, ACCEPT, DECLINE, ...",
    })?;
    if kind == "SUBSCRIBE" {
        if let Some(accept) = header_str(&headers, header::ACCEPT)
            && !accepts_json(accept)
        {
            return Err(HttpError::NotAcceptable {
                accept: accept.to_owned(),
            });
        }
        if headers.contains_key(STREAM_ID) {
            return Err(HttpError::StreamIdOnSubscribe);
        }
        return subscribe(ctx, call, principal).await;
    }
    let framework_id = call
        .framework_id
        .clone()
        .map(|f| f.value)
        .ok_or(ConvertError::Missing {
            field: "framework_id",
            hint: "every call but SUBSCRIBE names the framework SUBSCRIBED gave",
        })?;
    let converted = convert::call(&framework_id, &kind, call)?;
    let found = {
        let subscriptions = ctx.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        match subscriptions.get(&framework_id) {
            Some(sub) => {
                if sub.principal != principal {
                    return Err(HttpError::Forbidden(format!(
                        "framework {framework_id} was subscribed by another principal: only \
                         it may call for the framework"
                    )));
                }
                let given = header_str(&headers, STREAM_ID).ok_or(HttpError::MissingStreamId)?;
                if given != sub.stream_id {
                    return Err(HttpError::WrongStreamId {
                        framework_id,
                        given: given.to_owned(),
                    });
                }
                Some((sub.conn, sub.events.clone()))
            }
            None => None,
        }
    };
    let Some((conn, events)) = found else {
        return Err(not_subscribed(&ctx, framework_id).await);
    };
    let Some((call, refused)) = converted else {
        return Ok(StatusCode::ACCEPTED.into_response());
    };
    if !refused.tasks.is_empty()
        && let Some(events) = events.upgrade()
    {
        let now = unix_now();
        for (task_id, agent_id, why) in refused.tasks {
            let status = TaskStatus {
                task_id,
                framework_id: framework_id.clone(),
                agent_id,
                state: TaskState::Error as i32,
                reason: TaskReason::TaskInvalid as i32,
                source: TaskSource::Allocator as i32,
                message: why,
                timestamp: now,
                ..TaskStatus::default()
            };
            let _ = events.send(Ok(Event {
                event: Some(event::Event::Update(event::Update {
                    status: Some(status),
                })),
            }));
        }
    }
    let call = strata_proto::Call {
        framework_id,
        call: Some(call),
    };
    ctx.shared
        .inputs
        .send(Input::FrameworkCall { conn, call })
        .await
        .map_err(|_| HttpError::Unavailable)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// 403 for a framework the allocator knows (subscribed elsewhere, or not at all), else 400.
async fn not_subscribed(ctx: &Ctx, framework_id: String) -> HttpError {
    match ctx.shared.query(Query::Frameworks).await {
        Ok(frameworks) if frameworks.iter().any(|f| f.id == framework_id) => {
            HttpError::NotSubscribed { framework_id }
        }
        Ok(_) => HttpError::UnknownFramework { framework_id },
        Err(_) => HttpError::Unavailable,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn record(value: &serde_json::Value) -> Bytes {
    Bytes::from(recordio::encode(value.to_string().as_bytes()))
}

fn event_record(e: &event::Event) -> Bytes {
    Bytes::from(recordio::encode(&convert::event_json(e)))
}

/// SUBSCRIBE: waits for the allocator's SUBSCRIBED (or refusal), then streams events.
async fn subscribe(
    ctx: Ctx,
    call: json::Call,
    principal: Option<String>,
) -> Result<Response, HttpError> {
    let info = call
        .subscribe
        .as_ref()
        .and_then(|s| s.framework_info.as_ref())
        .ok_or(ConvertError::Missing {
            field: "subscribe.framework_info",
            hint: "a SUBSCRIBE carries 'subscribe' with the framework's 'framework_info'",
        })?;
    let mut info = convert::framework_info(info)?;
    if let Some(id) = &call.framework_id {
        if info.id.is_empty() {
            info.id = id.value.clone();
        } else if info.id != id.value {
            return Err(ConvertError::Invalid {
                field: "framework_id",
                why: "'framework_id' differs from 'subscribe.framework_info.id': set both to \
                      the same id"
                    .to_owned(),
            }
            .into());
        }
    }
    let suppressed_roles = call
        .subscribe
        .as_ref()
        .map(|s| s.suppressed_roles.clone())
        .unwrap_or_default();
    let conn = ctx.shared.conn();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let weak = tx.downgrade();
    tracing::info!(conn = conn.0, name = %info.name, framework_id = %info.id, "mesos SUBSCRIBE");
    ctx.shared
        .inputs
        .send(Input::FrameworkSubscribe {
            conn,
            info,
            suppressed_roles,
            sender: tx,
            principal: principal.clone(),
        })
        .await
        .map_err(|_| HttpError::Unavailable)?;
    let guard = CloseGuard {
        inputs: ctx.shared.inputs.clone(),
        subscriptions: ctx.subscriptions.clone(),
        conn,
        framework_id: None,
    };
    let first = tokio::time::timeout(SUBSCRIBE_WAIT, rx.recv())
        .await
        .map_err(|_| HttpError::Unavailable)?;
    let subscribed = match first {
        Some(Ok(Event {
            event: Some(event::Event::Subscribed(s)),
        })) => s,
        Some(Err(status)) => {
            return Err(match Refusal::from_status(&status) {
                refusal @ (Refusal::Unauthenticated(_) | Refusal::Forbidden(_)) => refusal.into(),
                Refusal::Operator { message, .. } => HttpError::SubscribeRefused { message },
            });
        }
        Some(Ok(other)) => {
            return Err(HttpError::SubscribeRefused {
                message: format!("the allocator answered {other:?} instead of SUBSCRIBED"),
            });
        }
        None => return Err(HttpError::Unavailable),
    };
    let framework_id = subscribed.framework_id.clone();
    let stream_id = uuid::Uuid::new_v4().to_string();
    ctx.subscriptions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            framework_id.clone(),
            Subscription {
                stream_id: stream_id.clone(),
                conn,
                principal,
                events: weak,
            },
        );
    let mut guard = guard;
    guard.framework_id = Some(framework_id.clone());
    let mut subscribed = convert::event(&event::Event::Subscribed(subscribed));
    subscribed["subscribed"]["master_info"] = state::master_info(ctx.addr);
    let first = VecDeque::from([record(&subscribed), record(&convert::heartbeat())]);
    let body = Body::from_stream(EventStream {
        first,
        rx,
        _guard: guard,
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&stream_id) {
        headers.insert(STREAM_ID, v);
    }
    Ok(response)
}

/// A subscription's events as RecordIO records, one per chunk.
struct EventStream {
    first: VecDeque<Bytes>,
    rx: mpsc::UnboundedReceiver<Result<Event, Status>>,
    _guard: CloseGuard,
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(b) = this.first.pop_front() {
            return Poll::Ready(Some(Ok(b)));
        }
        loop {
            return match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(Event { event: Some(e) }))) => {
                    Poll::Ready(Some(Ok(event_record(&e))))
                }
                Poll::Ready(Some(Ok(Event { event: None }))) => continue,
                Poll::Ready(Some(Err(status))) => {
                    tracing::info!(error = %status, "mesos event stream ended by the allocator");
                    Poll::Ready(None)
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// When a subscription's body is dropped (the client went away or the stream ended), the
/// actor hears `FrameworkClosed` and the subscription is forgotten (unless a newer one
/// replaced it).
struct CloseGuard {
    inputs: mpsc::Sender<Input>,
    subscriptions: Subscriptions,
    conn: ConnId,
    framework_id: Option<String>,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(fid) = &self.framework_id {
            let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
            if subs.get(fid).is_some_and(|s| s.conn == self.conn) {
                subs.remove(fid);
            }
        }
        tracing::debug!(conn = self.conn.0, "mesos event stream closed");
        let inputs = self.inputs.clone();
        let conn = self.conn;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = inputs.send(Input::FrameworkClosed { conn }).await;
            });
        }
    }
}
