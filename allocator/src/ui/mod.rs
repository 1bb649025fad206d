//! The web dashboard, served under `/ui/` on the Mesos HTTP port (docs/ui.md).
//!
//! One static page, a stylesheet and one vanilla-JS file, embedded in the binary
//! (`assets/`), draw everything in the browser from JSON:
//!
//! - `GET /ui/api/stream`: Server-Sent Events. First a `snapshot` event (agents, frameworks
//!   and, for callers allowed `view_tasks`, tasks, in a compact shape), then `changes` events,
//!   each a batch of the core's numbered [`Change`]s made after the snapshot, and a comment as
//!   a heartbeat. A stream that falls behind the changes gets a `reset` event and ends; the
//!   page subscribes again and starts from a fresh snapshot. At most as many streams as
//!   Mesos operator event streams may be open, sharing their limit (429 beyond it).
//! - `GET /ui/api/roles`: roles with weights, quota, allocated and offered resources.
//! - `GET /ui/api/usage?task=ID&...`: the latest usage of the tasks named (or of every
//!   task, up to [`MAX_USAGE_RECORDS`]), for callers allowed `view_tasks`.
//! - `POST /ui/api/agents/{id}/{drain|deactivate|reactivate}`: the operator actions, each
//!   authorized as `drain_agents` on the agent id and audited.
//! - `POST /ui/api/tasks/{framework}/{task}/kill`: kills one task, authorized as
//!   `teardown_frameworks` on the framework's principal (killing one of its tasks is a part
//!   of tearing it down) and audited.
//! - `GET /ui/api/tasks/{framework}/{task}/log?stream=stdout|stderr`: the task's output,
//!   followed live through its agent's `/files/follow` (at most [`MAX_LOG_BYTES`] and
//!   [`MAX_LOG_TIME`] per request, [`MAX_PROXIES`] at once).
//! - `POST /ui/api/tasks/{framework}/{task}/profile` (`{"seconds": N}`, 1 to 60): the agent's
//!   `/profile` of the task, rendered as an SVG flame graph with inferno, as `strata profile`
//!   does.
//!
//! The agent requests carry the caller's own `Authorization` (so the agent decides
//! `view_sandboxes` and `profile_tasks` for the same principal, with the same tokens) and, for
//! `https://` agents, trust the allocator's `--tls-client-ca`, the cluster's CA.
//!
//! Access is the Mesos API's: a client certificate, `Authorization: Bearer`, or HTTP Basic
//! `principal:token` (which a browser asks for after the page's 401). Reads need
//! `view_frameworks` (the views are all or nothing, docs/security.md); tasks and usage also
//! `view_tasks`. POSTs must carry `X-Strata-UI: 1` (a header no cross-site form can send
//! without a CORS preflight, which is never granted) and, when the browser sends `Origin`,
//! come from the page's own origin.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use strata_allocator_core::{Action, Change};
use strata_common::serve::PeerPrincipal;
use strata_proto::{
    AgentMode, AgentState, AgentSummary, FrameworkSummary, GetStateResponse, GetUsageRequest,
    Resource, ResourceKind, TaskSummary, TaskUsage, Workload,
};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::Shared;
use crate::api::actor::{Numbered, Query};
use crate::api::workloads::WorkloadsChanged;
use crate::mesos::Leadership;
use crate::mesos::convert::state_name;
use crate::refusal::Refusal;

/// The page.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// The script that draws it.
const APP_JS: &str = include_str!("assets/app.js");
/// Its style.
const APP_CSS: &str = include_str!("assets/app.css");

/// The custom header every POST must carry (the CSRF guard).
pub const UI_HEADER: &str = "x-strata-ui";
/// The largest body an action accepts.
const MAX_ACTION_BODY: usize = 4096;
/// The most task ids one usage request may name.
pub const MAX_USAGE_TASKS: usize = 500;
/// The most usage records one answer holds.
pub const MAX_USAGE_RECORDS: usize = 2000;
/// How often an idle stream gets a heartbeat comment.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// SSE messages queued per stream before its writer waits for the browser.
const STREAM_QUEUE: usize = 64;
/// The most changes sent in one `changes` event.
const MAX_BATCH: usize = 1024;
/// How long a browser waits before it reconnects a stream that ended.
const RETRY_MS: u64 = 1000;
/// The most bytes of output one log request passes on.
pub const MAX_LOG_BYTES: usize = 16 << 20;
/// The longest one log request follows the output.
pub const MAX_LOG_TIME: Duration = Duration::from_secs(3600);
/// How many log and profile requests to agents may run at once.
pub const MAX_PROXIES: usize = 32;
/// How long an agent has to answer (beyond a profile's own duration).
const AGENT_ANSWER: Duration = Duration::from_secs(15);
/// The most bytes of folded stacks read from an agent.
const MAX_PROFILE_BYTES: usize = 32 << 20;

/// Why a dashboard request was refused.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// Another allocator leads.
    #[error("this allocator is not the leader: open the dashboard at {leader}")]
    NotLeader {
        /// `host:port` of the leader.
        leader: String,
    },
    /// No allocator leads, or this one is stopping.
    #[error("the allocator is not serving now: retry later")]
    Unavailable,
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A POST without the dashboard's header, or from another origin.
    #[error("cross-site request refused: {why}")]
    CrossSite {
        /// What was missing or wrong.
        why: String,
    },
    /// A bad id, query or body.
    #[error("bad request: {why}")]
    BadRequest {
        /// What was wrong.
        why: String,
    },
    /// The task is not known (or not active, for a kill or a profile).
    #[error("{0}")]
    NotFound(String),
    /// The agent could not be reached or refused.
    #[error("{0}")]
    Agent(String),
    /// As many event streams are open as allowed.
    #[error(
        "too many event streams: {max} are open, the most allowed; close a dashboard tab or \
         retry later"
    )]
    TooManySubscribers {
        /// The most allowed.
        max: usize,
    },
    /// The allocator refused the action.
    #[error("{message}")]
    Operator {
        /// The status saying why.
        status: StatusCode,
        /// The allocator's reason.
        message: String,
    },
}

impl UiError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotLeader { .. } => StatusCode::TEMPORARY_REDIRECT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::CrossSite { .. } => StatusCode::FORBIDDEN,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Agent(_) => StatusCode::BAD_GATEWAY,
            Self::TooManySubscribers { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Operator { status, .. } => *status,
        }
    }

    /// The refusal of an operator action, as its gRPC status says ([`Refusal`], shared with
    /// the Mesos API).
    fn operator(status: &tonic::Status) -> Self {
        Refusal::from_status(status).into()
    }
}

impl From<Refusal> for UiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated(message) => Self::Unauthenticated(message),
            Refusal::Forbidden(message) => Self::Forbidden(message),
            Refusal::Operator { status, message } => Self::Operator { status, message },
        }
    }
}

impl From<strata_auth::Denied> for UiError {
    fn from(denied: strata_auth::Denied) -> Self {
        Refusal::from(denied).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        tracing::debug!(%status, error = %self, "dashboard request refused");
        let mut response = (status, self.to_string()).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::NotLeader { leader } => {
                if let Ok(location) = HeaderValue::from_str(&format!("//{leader}/ui/")) {
                    headers.insert(header::LOCATION, location);
                }
            }
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"strata\", Bearer"),
                );
            }
            Self::TooManySubscribers { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
struct Ctx {
    shared: Shared,
    leadership: Leadership,
    /// One permit per event stream (shared with the Mesos operator event streams).
    subscribers: Arc<Semaphore>,
    max_subscribers: usize,
    /// One permit per request to an agent (logs, profiles).
    proxies: Arc<Semaphore>,
}

/// The dashboard's routes, merged into the Mesos HTTP API's router.
pub(crate) fn router(
    shared: Shared,
    leadership: Leadership,
    subscribers: Arc<Semaphore>,
    max_subscribers: usize,
) -> Router {
    let ctx = Ctx {
        shared,
        leadership,
        subscribers,
        max_subscribers,
        proxies: Arc::new(Semaphore::new(MAX_PROXIES)),
    };
    Router::new()
        .route("/ui", get(|| async { redirect_to_page() }))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route("/ui/app.css", get(|| async { asset(APP_CSS, "text/css") }))
        .route("/ui/api/stream", get(stream))
        .route("/ui/api/roles", get(roles))
        .route("/ui/api/usage", get(usage))
        .route("/ui/api/agents/{agent_id}/{action}", post(agent_action))
        .route(
            "/ui/api/tasks/{framework_id}/{task_id}/kill",
            post(kill_task),
        )
        .route("/ui/api/tasks/{framework_id}/{task_id}/log", get(task_log))
        .route(
            "/ui/api/tasks/{framework_id}/{task_id}/profile",
            post(task_profile),
        )
        .layer(DefaultBodyLimit::max(MAX_ACTION_BODY))
        .with_state(ctx)
}

fn redirect_to_page() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, "/ui/")],
        "",
    )
        .into_response()
}

/// Headers every dashboard answer carries: nothing runs but the page's own script, and no
/// other site may frame it.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    hardened(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn json_response(value: &Value) -> Response {
    hardened(
        (
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
    )
}

impl Ctx {
    fn leading(&self) -> Result<(), UiError> {
        match &self.leadership {
            Leadership::Leader => Ok(()),
            Leadership::Follower { leader } => Err(UiError::NotLeader {
                leader: leader.clone(),
            }),
            Leadership::NoLeader => Err(UiError::Unavailable),
        }
    }

    /// Who the request authenticated as (certificate, else `Authorization`).
    fn principal(
        &self,
        peer: Option<Extension<PeerPrincipal>>,
        headers: &HeaderMap,
    ) -> Result<Option<String>, UiError> {
        let certificate = peer.and_then(|Extension(p)| p.0);
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.shared
            .security
            .authenticate(certificate, authorization)
            .map_err(|e| UiError::Unauthenticated(e.to_string()))
    }

    /// The principal of a read, once it may view the cluster (not audited: pages read
    /// often; actions are audited).
    fn viewer(
        &self,
        peer: Option<Extension<PeerPrincipal>>,
        headers: &HeaderMap,
    ) -> Result<Option<String>, UiError> {
        self.leading()?;
        let principal = self.principal(peer, headers)?;
        self.shared
            .security
            .policy()
            .check(principal.as_deref(), Action::ViewFrameworks, "*")?;
        Ok(principal)
    }

    fn may_view_tasks(&self, principal: Option<&str>) -> bool {
        self.shared
            .security
            .policy()
            .check(principal, Action::ViewTasks, "*")
            .is_ok()
    }
}

async fn index(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ctx.viewer(peer, &headers)?;
    Ok(asset(INDEX_HTML, "text/html; charset=utf-8"))
}

/// Resources as `{"cpus": 1.5, "mem": 256, "ports": "31000-31099"}`: scalars summed by
/// name, ranges and sets as text; zero scalars left out.
pub fn resources(list: &[Resource]) -> Value {
    let mut out = serde_json::Map::new();
    for r in list {
        match r.kind() {
            ResourceKind::Scalar | ResourceKind::Unspecified => {
                if r.scalar == 0.0 {
                    continue;
                }
                let sum = out.get(&r.name).and_then(Value::as_f64).unwrap_or(0.0) + r.scalar;
                out.insert(r.name.clone(), json!((sum * 1000.0).round() / 1000.0));
            }
            ResourceKind::Ranges => {
                let text: Vec<String> = r
                    .ranges
                    .iter()
                    .map(|x| format!("{}-{}", x.begin, x.end))
                    .collect();
                append_text(&mut out, &r.name, &text.join(","));
            }
            ResourceKind::Set => append_text(&mut out, &r.name, &r.set.join(",")),
        }
    }
    Value::Object(out)
}

fn append_text(out: &mut serde_json::Map<String, Value>, name: &str, text: &str) {
    let joined = match out.get(name).and_then(Value::as_str) {
        Some(before) if !before.is_empty() => format!("{before},{text}"),
        _ => text.to_owned(),
    };
    out.insert(name.to_owned(), json!(joined));
}

/// An agent as the page shows it.
pub fn agent_json(a: &AgentSummary) -> Value {
    let attributes: serde_json::Map<String, Value> = a
        .attributes
        .iter()
        .map(|x| (x.name.clone(), json!(x.value)))
        .collect();
    json!({
        "id": a.id,
        "host": a.hostname,
        "state": match a.state() {
            AgentState::Active => "connected",
            AgentState::Unreachable => "unreachable",
            AgentState::Unspecified => "unknown",
        },
        "mode": match a.mode() {
            AgentMode::Draining => "draining",
            AgentMode::Deactivated => "deactivated",
            AgentMode::Active | AgentMode::Unspecified => "active",
        },
        "total": resources(&a.total),
        "alloc": resources(&a.allocated),
        "offered": resources(&a.offered),
        "attrs": attributes,
        "tasks": a.running_tasks,
        "registered": a.registered_at,
        "version": a.version,
        "endpoint": a.endpoint,
    })
}

/// A framework as the page shows it.
pub fn framework_json(f: &FrameworkSummary) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "roles": f.roles,
        "connected": f.connected,
        "alloc": resources(&f.allocated),
        "offered": resources(&f.offered),
        "share": f.dominant_share,
        "tasks": f.active_tasks,
        "registered": f.registered_at,
        "principal": f.principal,
        "user": f.user,
        "webui": f.webui_url,
    })
}

/// A workload as the page shows it (empty strings and zero counts left out).
pub fn workload_json(w: &Workload) -> Value {
    let mut out = json!({ "kind": w.kind, "id": w.id, "state": w.state });
    if w.kind == "app" || w.instances_wanted > 0 || w.instances_running > 0 {
        out["wanted"] = json!(w.instances_wanted);
        out["running"] = json!(w.instances_running);
    }
    for (name, value) in [
        ("version", &w.version),
        ("schedule", &w.schedule),
        ("last_run", &w.last_run),
        ("next_run", &w.next_run),
        ("msg", &w.message),
    ] {
        if !value.is_empty() {
            out[name] = json!(value);
        }
    }
    out
}

/// Each framework's reported workloads, by framework id.
pub fn workloads_json<'a>(
    reports: impl IntoIterator<Item = (&'a String, &'a Vec<Workload>)>,
) -> Value {
    let map: serde_json::Map<String, Value> = reports
        .into_iter()
        .map(|(id, list)| (id.clone(), list.iter().map(workload_json).collect()))
        .collect();
    Value::Object(map)
}

/// A task as the page shows it.
pub fn task_json(t: &TaskSummary) -> Value {
    let mut out = json!({
        "id": t.task_id,
        "name": t.name,
        "fw": t.framework_id,
        "agent": t.agent_id,
        "state": state_name(t.state()),
        "res": resources(&t.resources),
        "launched": t.launched_at,
        "updated": t.updated_at,
    });
    if !t.message.is_empty() {
        out["msg"] = json!(t.message);
    }
    if let Some(code) = t.exit_code {
        out["exit"] = json!(code);
    }
    out
}

/// The first event of a stream: the state as of change `seq`.
pub fn snapshot_json(
    state: &GetStateResponse,
    seq: u64,
    principal: Option<&str>,
    with_tasks: bool,
    workloads: Value,
) -> Value {
    let agents: Vec<Value> = state.agents.iter().map(agent_json).collect();
    let frameworks: Vec<Value> = state.frameworks.iter().map(framework_json).collect();
    let tasks: Vec<Value> = if with_tasks {
        state.tasks.iter().map(task_json).collect()
    } else {
        Vec::new()
    };
    json!({
        "seq": seq,
        "principal": principal,
        "view_tasks": with_tasks,
        "version": state.allocator_version,
        "started": state.started_at,
        "agents": agents,
        "frameworks": frameworks,
        "tasks": tasks,
        "workloads": workloads,
    })
}

/// A change as the page applies it; `None` for a task's change when the viewer may not see
/// tasks.
pub fn change_json(seq: u64, change: &Change, with_tasks: bool) -> Option<Value> {
    let mut out = match change {
        Change::AgentAdded(a) => json!({ "k": "agent_added", "agent": agent_json(a) }),
        Change::AgentUpdated(a) => json!({ "k": "agent_updated", "agent": agent_json(a) }),
        Change::AgentRemoved { agent_id } => json!({ "k": "agent_removed", "id": agent_id }),
        Change::FrameworkAdded(f) => {
            json!({ "k": "framework_added", "framework": framework_json(f) })
        }
        Change::FrameworkUpdated(f) => {
            json!({ "k": "framework_updated", "framework": framework_json(f) })
        }
        Change::FrameworkRemoved(f) => json!({ "k": "framework_removed", "id": f.id }),
        Change::TaskAdded(t) if with_tasks => json!({ "k": "task_added", "task": task_json(t) }),
        Change::TaskUpdated { status, state } if with_tasks => {
            let mut out = json!({
                "k": "task_updated",
                "id": status.task_id,
                "fw": status.framework_id,
                "agent": status.agent_id,
                "state": state_name(*state),
                "time": status.timestamp,
            });
            if !status.message.is_empty() {
                out["msg"] = json!(strata_proto::ids::shorten(&status.message, 512));
            }
            out
        }
        Change::TaskAdded(_) | Change::TaskUpdated { .. } => return None,
    };
    out["seq"] = json!(seq);
    Some(out)
}

fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// `GET /ui/api/stream`.
async fn stream(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let principal = ctx.viewer(peer, &headers)?;
    let with_tasks = ctx.may_view_tasks(principal.as_deref());
    let permit = Arc::clone(&ctx.subscribers)
        .try_acquire_owned()
        .map_err(|_| UiError::TooManySubscribers {
            max: ctx.max_subscribers,
        })?;
    // Subscribed before the snapshot is taken: no change falls between the two.
    let mut changes = ctx.shared.changes.subscribe();
    let mut workload_changes = ctx.shared.workloads.subscribe();
    let (state, last) = ctx
        .shared
        .query(Query::Snapshot)
        .await
        .map_err(|_| UiError::Unavailable)?;
    let reports = ctx.shared.workloads.all();
    let workloads = workloads_json(reports.iter().map(|(id, list)| (id, list.as_ref())));
    let first = Bytes::from(format!(
        "retry: {RETRY_MS}\nevent: snapshot\ndata: {}\n\n",
        snapshot_json(&state, last, principal.as_deref(), with_tasks, workloads)
    ));
    drop(state);
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let mut stop = ctx.shared.stop.clone();
    let who = principal.unwrap_or_default();
    tracing::info!(principal = %who, with_tasks, "dashboard event stream opened");
    tokio::spawn(async move {
        let _permit = permit;
        let mut heartbeats =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let mut queue = VecDeque::from([first]);
        let mut ending = None;
        let why = loop {
            let bytes = match queue.pop_front() {
                Some(bytes) => bytes,
                None if ending.is_some() => break ending.unwrap_or_default(),
                None => {
                    let next = tokio::select! {
                        biased;
                        _ = stop.wait_for(|stopped| *stopped) => Err("the allocator is stopping"),
                        () = tx.closed() => Err("the client went away"),
                        change = changes.recv() => Ok(match change {
                            Ok(change) => batch(change, &mut changes, last, with_tasks),
                            Err(broadcast::error::RecvError::Lagged(_)) => Batch::Lagged,
                            Err(broadcast::error::RecvError::Closed) => Batch::Closed,
                        }),
                        change = workload_changes.recv() => Ok(match change {
                            Ok(change) => Batch::Send(sse("changes", &json!([workloads_change(&change)]))),
                            Err(broadcast::error::RecvError::Lagged(_)) => Batch::Lagged,
                            Err(broadcast::error::RecvError::Closed) => Batch::Closed,
                        }),
                        _ = heartbeats.tick() => Ok(Batch::Send(Bytes::from_static(b": heartbeat\n\n"))),
                    };
                    match next {
                        Err(why) => break why,
                        Ok(Batch::Send(bytes)) => bytes,
                        Ok(Batch::Nothing) => continue,
                        Ok(Batch::Closed) => break "the allocator stopped",
                        Ok(Batch::Lagged) => {
                            tracing::warn!(principal = %who, "dashboard event stream fell behind; ending it so the page starts over");
                            ending = Some("it fell behind");
                            reset()
                        }
                    }
                }
            };
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break "the allocator is stopping",
                sent = tx.send(bytes) => if sent.is_err() {
                    break "the client went away";
                },
            }
        };
        tracing::info!(principal = %who, reason = why, "dashboard event stream ended");
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(hardened(response))
}

/// A framework's new workloads as a change the page applies (it replaces the framework's
/// list; an empty one once the framework is removed). Not numbered: each is whole.
fn workloads_change(change: &WorkloadsChanged) -> Value {
    let list: Vec<Value> = change.workloads.iter().map(workload_json).collect();
    json!({ "k": "workloads", "fw": change.framework_id, "workloads": list, "seq": 0 })
}

/// The event that ends a stream that fell behind: the page starts over from a snapshot.
fn reset() -> Bytes {
    sse(
        "reset",
        &json!({"reason": "the stream fell behind the cluster's changes"}),
    )
}

/// What a batch of changes gives a stream.
#[derive(Debug)]
enum Batch {
    /// A `changes` event.
    Send(Bytes),
    /// None of the changes is news to this viewer.
    Nothing,
    /// Changes were missed: the stream must start over.
    Lagged,
    /// The allocator stopped: no more changes.
    Closed,
}

/// One `changes` event of `first` and the changes already waiting behind it (at most
/// [`MAX_BATCH`]).
fn batch(
    first: Numbered,
    changes: &mut broadcast::Receiver<Numbered>,
    last: u64,
    with_tasks: bool,
) -> Batch {
    let mut out = Vec::new();
    let mut push = |n: &Numbered| {
        if n.seq > last
            && let Some(v) = change_json(n.seq, &n.change, with_tasks)
        {
            out.push(v);
        }
    };
    push(&first);
    for _ in 1..MAX_BATCH {
        match changes.try_recv() {
            Ok(n) => push(&n),
            Err(broadcast::error::TryRecvError::Lagged(_)) => return Batch::Lagged,
            Err(_) => break,
        }
    }
    if out.is_empty() {
        Batch::Nothing
    } else {
        Batch::Send(sse("changes", &Value::Array(out)))
    }
}

/// `GET /ui/api/roles`.
async fn roles(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    ctx.viewer(peer, &headers)?;
    let (roles, quotas) = ctx
        .shared
        .operate(|core, _| Ok((core.role_summaries(), core.quota_infos())))
        .await
        .map_err(|s| UiError::operator(&s))?;
    let roles: Vec<Value> = roles
        .iter()
        .map(|r| {
            let quota = quotas.iter().find(|q| q.role == r.name);
            json!({
                "name": r.name,
                "weight": r.weight,
                "guarantee": resources(quota.map_or(&r.guarantee, |q| &q.guarantee)),
                "limit": resources(quota.map_or(&r.limit, |q| &q.limit)),
                "alloc": resources(&r.allocated),
                "offered": resources(&r.offered),
                "reserved": resources(&r.reserved),
                "frameworks": r.frameworks,
            })
        })
        .collect();
    Ok(json_response(&json!({ "roles": roles })))
}

/// The task ids of `?task=ID&task=ID...`, each checked.
fn usage_query(query: Option<&str>) -> Result<Vec<String>, UiError> {
    let mut ids = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "task" {
            return Err(UiError::BadRequest {
                why: format!(
                    "unknown parameter {:?}: name tasks as task=ID",
                    strata_proto::ids::shorten(key, 32)
                ),
            });
        }
        if ids.len() == MAX_USAGE_TASKS {
            return Err(UiError::BadRequest {
                why: format!("at most {MAX_USAGE_TASKS} tasks per request"),
            });
        }
        let id = percent_decode(value).ok_or_else(|| UiError::BadRequest {
            why: "a task id is not valid percent-encoded UTF-8".to_owned(),
        })?;
        strata_proto::ids::check_id("task id", &id)
            .map_err(|e| UiError::BadRequest { why: e.to_string() })?;
        ids.push(id);
    }
    Ok(ids)
}

/// `s` with `%XX` escapes and `+` decoded; `None` when that is not UTF-8 or an escape is bad.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A usage record as the page draws it: rates are made in the browser from the totals.
pub fn usage_json(u: &TaskUsage) -> Value {
    let cpu = u.cpu.as_ref();
    let mem = u.memory.as_ref();
    let net = u.network.as_ref();
    let mut out = json!({
        "id": u.task_id,
        "fw": u.framework_id,
        "agent": u.agent_id,
        "time": u.timestamp,
        "cpu": cpu.map_or(0.0, |c| c.cores),
        "cpu_limit": cpu.map_or(0.0, |c| c.limit_cores),
        "mem": mem.map_or(0, |m| m.current_bytes),
        "mem_limit": mem.map_or(0, |m| m.limit_bytes),
        "rx": net.map_or(0, |n| n.rx_bytes_total),
        "tx": net.map_or(0, |n| n.tx_bytes_total),
    });
    if let Some(rq) = cpu.and_then(|c| c.run_queue.as_ref()) {
        out["rq_p99"] = json!(rq.p99_seconds);
    }
    if !u.gpus.is_empty() {
        let n = u.gpus.len() as f64;
        out["gpu"] = json!(u.gpus.iter().map(|g| g.sm_utilization_percent).sum::<f64>() / n);
        out["gpu_mem"] = json!(u.gpus.iter().map(|g| g.memory_used_bytes).sum::<u64>());
    }
    out
}

/// `GET /ui/api/usage`.
async fn usage(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, UiError> {
    let principal = ctx.viewer(peer, &headers)?;
    ctx.shared
        .security
        .policy()
        .check(principal.as_deref(), Action::ViewTasks, "*")?;
    let ids = usage_query(query.as_deref())?;
    let book = ctx.shared.usage();
    let mut records: Vec<TaskUsage> = if ids.is_empty() {
        book.query(&GetUsageRequest::default())
    } else {
        ids.iter()
            .flat_map(|id| {
                book.query(&GetUsageRequest {
                    task_id: id.clone(),
                    ..GetUsageRequest::default()
                })
            })
            .collect()
    };
    let truncated = records.len() > MAX_USAGE_RECORDS;
    records.truncate(MAX_USAGE_RECORDS);
    let tasks: Vec<Value> = records.iter().map(usage_json).collect();
    Ok(json_response(
        &json!({ "tasks": tasks, "truncated": truncated }),
    ))
}

/// Refuses a POST that a page of another site could have made: it must carry
/// [`UI_HEADER`], and its `Origin`, when sent, must be this server (`Host`).
fn same_site(headers: &HeaderMap) -> Result<(), UiError> {
    if headers.get(UI_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err(UiError::CrossSite {
            why: format!("the {UI_HEADER}: 1 header is missing; actions come from the dashboard"),
        });
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || origin_host != host {
            return Err(UiError::CrossSite {
                why: format!(
                    "origin {:?} is not this dashboard's",
                    strata_proto::ids::shorten(origin, 128)
                ),
            });
        }
    }
    Ok(())
}

/// An action's optional body: `{"grace_seconds": N}` for a drain.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    grace_seconds: Option<f64>,
}

/// `POST /ui/api/agents/{id}/{drain|deactivate|reactivate}`.
async fn agent_action(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    Path((agent_id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, UiError> {
    ctx.leading()?;
    same_site(&headers)?;
    let principal = ctx.principal(peer, &headers)?;
    strata_proto::ids::check_id("agent id", &agent_id)
        .map_err(|e| UiError::BadRequest { why: e.to_string() })?;
    let body: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| UiError::BadRequest {
            why: format!("the body is not {{\"grace_seconds\": N}}: {e}"),
        })?
    };
    if let Some(g) = body.grace_seconds
        && !(g.is_finite() && (0.0..=86_400.0).contains(&g))
    {
        return Err(UiError::BadRequest {
            why: "grace_seconds must be between 0 and 86400".to_owned(),
        });
    }
    if !matches!(action.as_str(), "drain" | "deactivate" | "reactivate") {
        return Err(UiError::BadRequest {
            why: format!(
                "unknown action {:?}: drain, deactivate or reactivate",
                strata_proto::ids::shorten(&action, 32)
            ),
        });
    }
    ctx.shared
        .security
        .authorize(principal.as_deref(), Action::DrainAgents, &agent_id)?;
    let id = agent_id.clone();
    let done = match action.as_str() {
        "drain" => {
            ctx.shared
                .operate(move |core, now| core.drain_agent(now, &id, body.grace_seconds))
                .await
        }
        "deactivate" => {
            ctx.shared
                .operate(move |core, _| core.deactivate_agent(&id))
                .await
        }
        _ => {
            ctx.shared
                .operate(move |core, _| core.reactivate_agent(&id))
                .await
        }
    };
    done.map_err(|s| UiError::operator(&s))?;
    Ok(json_response(&json!({ "agent": agent_id, "done": action })))
}

/// Checks the ids of a task's route.
fn task_ids(framework_id: &str, task_id: &str) -> Result<(), UiError> {
    let bad = |e: strata_proto::ids::IdError| UiError::BadRequest { why: e.to_string() };
    strata_proto::ids::check_id("framework id", framework_id).map_err(bad)?;
    strata_proto::ids::check_id("task id", task_id).map_err(bad)
}

/// `POST /ui/api/tasks/{framework}/{task}/kill`.
async fn kill_task(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    Path((framework_id, task_id)): Path<(String, String)>,
) -> Result<Response, UiError> {
    ctx.leading()?;
    same_site(&headers)?;
    let principal = ctx.principal(peer, &headers)?;
    task_ids(&framework_id, &task_id)?;
    let id = framework_id.clone();
    let owner = ctx
        .shared
        .operate(move |core, _| Ok(core.framework_principal(&id)))
        .await
        .map_err(|s| UiError::operator(&s))?
        .unwrap_or_default();
    ctx.shared
        .security
        .authorize(principal.as_deref(), Action::TeardownFrameworks, &owner)?;
    let (fw, task) = (framework_id.clone(), task_id.clone());
    ctx.shared
        .operate(move |core, now| core.operator_kill_task(now, &fw, &task))
        .await
        .map_err(|s| UiError::operator(&s))?;
    Ok(json_response(
        &json!({ "framework": framework_id, "task": task_id, "done": "kill" }),
    ))
}

/// The URL of `path` on an agent whose endpoint is `endpoint` (`host:port` or a URL).
fn agent_url(endpoint: &str, path: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        format!("{}{path}", endpoint.trim_end_matches('/'))
    } else {
        format!("http://{endpoint}{path}")
    }
}

/// A query value, percent-encoded.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Ctx {
    /// The endpoint of the agent running the task (its last one, for an ended task), once
    /// the caller may view tasks; with the options to call it as the caller.
    async fn task_agent(
        &self,
        peer: Option<Extension<PeerPrincipal>>,
        headers: &HeaderMap,
        framework_id: &str,
        task_id: &str,
    ) -> Result<(TaskSummary, String, strata_common::http::GetOptions), UiError> {
        let principal = self.viewer(peer, headers)?;
        self.shared
            .security
            .policy()
            .check(principal.as_deref(), Action::ViewTasks, "*")?;
        task_ids(framework_id, task_id)?;
        let request = strata_proto::ListTasksRequest {
            framework_id: framework_id.to_owned(),
            agent_id: String::new(),
            include_terminal: true,
        };
        let tasks = self
            .shared
            .query(|tx| Query::Tasks(request, tx))
            .await
            .map_err(|_| UiError::Unavailable)?;
        let task = tasks
            .into_iter()
            .find(|t| t.task_id == task_id)
            .ok_or_else(|| {
                UiError::NotFound(format!(
                    "task {task_id} of framework {framework_id} is not known to the allocator"
                ))
            })?;
        let (agents, _, _) = self
            .shared
            .query(Query::Agents)
            .await
            .map_err(|_| UiError::Unavailable)?;
        let endpoint = agents
            .into_iter()
            .find(|a| a.id == task.agent_id)
            .map(|a| a.endpoint)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                UiError::NotFound(format!(
                    "agent {} of task {task_id} is not known or serves no HTTP endpoint \
                     (--http-listen)",
                    task.agent_id
                ))
            })?;
        let options = strata_common::http::GetOptions {
            tls: self
                .shared
                .security
                .agent_client_tls()
                .map_err(|e| UiError::Agent(e.to_string()))?,
            authorization: headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        Ok((task, endpoint, options))
    }
}

/// The agent's refusal, with a bounded part of its body.
async fn agent_refusal(mut answer: strata_common::http::Streaming, what: &str) -> UiError {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 4096 {
            break;
        }
    }
    UiError::Agent(format!(
        "the agent refused {what} (HTTP {}): {}",
        answer.status,
        strata_proto::ids::shorten(String::from_utf8_lossy(&body).trim(), 1024)
    ))
}

/// `GET /ui/api/tasks/{framework}/{task}/log?stream=stdout|stderr`.
async fn task_log(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    Path((framework_id, task_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, UiError> {
    let file = match query.as_deref().unwrap_or("stream=stdout") {
        "" | "stream=stdout" => "stdout",
        "stream=stderr" => "stderr",
        other => {
            return Err(UiError::BadRequest {
                why: format!(
                    "unknown query {:?}: stream=stdout or stream=stderr",
                    strata_proto::ids::shorten(other, 64)
                ),
            });
        }
    };
    let (task, endpoint, options) = ctx
        .task_agent(peer, &headers, &framework_id, &task_id)
        .await?;
    let permit = Arc::clone(&ctx.proxies)
        .try_acquire_owned()
        .map_err(|_| UiError::TooManySubscribers { max: MAX_PROXIES })?;
    let url = agent_url(
        &endpoint,
        &format!(
            "/files/follow?framework={}&task={}&path={file}&offset=0",
            encode(&task.framework_id),
            encode(&task.task_id)
        ),
    );
    let mut answer = strata_common::http::get_stream(&url, AGENT_ANSWER, &options)
        .await
        .map_err(|e| UiError::Agent(format!("cannot follow the task's {file}: {e}")))?;
    if answer.status != 200 {
        return Err(agent_refusal(answer, &format!("to follow the task's {file}")).await);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut stop = ctx.shared.stop.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let deadline = tokio::time::Instant::now() + MAX_LOG_TIME;
        let mut sent = 0usize;
        loop {
            let chunk = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break,
                () = tx.closed() => break,
                () = tokio::time::sleep_until(deadline) => break,
                chunk = answer.chunk() => chunk,
            };
            let Ok(Some(mut chunk)) = chunk else { break };
            let left = MAX_LOG_BYTES - sent;
            let last = chunk.len() >= left;
            if last {
                chunk.truncate(left);
            }
            sent += chunk.len();
            if tx.send(chunk).await.is_err() || last {
                break;
            }
        }
        tracing::debug!(task_id = %task.task_id, sent, "dashboard log follow ended");
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(hardened(response))
}

/// A profile's body: how long to sample.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    seconds: u64,
}

/// `POST /ui/api/tasks/{framework}/{task}/profile`.
async fn task_profile(
    State(ctx): State<Ctx>,
    peer: Option<Extension<PeerPrincipal>>,
    headers: HeaderMap,
    Path((framework_id, task_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, UiError> {
    same_site(&headers)?;
    let body: ProfileBody = serde_json::from_slice(&body).map_err(|e| UiError::BadRequest {
        why: format!("the body is not {{\"seconds\": N}}: {e}"),
    })?;
    if !(1..=60).contains(&body.seconds) {
        return Err(UiError::BadRequest {
            why: "seconds must be between 1 and 60".to_owned(),
        });
    }
    let (task, endpoint, options) = ctx
        .task_agent(peer, &headers, &framework_id, &task_id)
        .await?;
    let _permit = Arc::clone(&ctx.proxies)
        .try_acquire_owned()
        .map_err(|_| UiError::TooManySubscribers { max: MAX_PROXIES })?;
    let url = agent_url(
        &endpoint,
        &format!(
            "/profile?task={}&seconds={}&framework={}",
            encode(&task.task_id),
            body.seconds,
            encode(&task.framework_id)
        ),
    );
    let limit = Duration::from_secs(body.seconds) + AGENT_ANSWER * 2;
    let mut answer = strata_common::http::get_stream(&url, limit, &options)
        .await
        .map_err(|e| UiError::Agent(format!("cannot profile the task: {e}")))?;
    if answer.status != 200 {
        return Err(agent_refusal(answer, "the profile").await);
    }
    let mut folded = Vec::new();
    let read = tokio::time::timeout(AGENT_ANSWER, async {
        while let Some(chunk) = answer.chunk().await? {
            folded.extend_from_slice(&chunk);
            if folded.len() > MAX_PROFILE_BYTES {
                break;
            }
        }
        Ok::<_, strata_common::http::HttpError>(())
    })
    .await;
    match read {
        Ok(Ok(())) if folded.len() <= MAX_PROFILE_BYTES => {}
        Ok(Ok(())) => {
            return Err(UiError::Agent(format!(
                "the profile is larger than {MAX_PROFILE_BYTES} bytes"
            )));
        }
        Ok(Err(e)) => return Err(UiError::Agent(format!("reading the profile: {e}"))),
        Err(_) => {
            return Err(UiError::Agent(
                "the agent sent the profile too slowly".into(),
            ));
        }
    }
    let folded = String::from_utf8_lossy(&folded);
    if folded.trim().is_empty() {
        return Err(UiError::NotFound(format!(
            "no samples: task {task_id} did not run on a CPU during the {} s (idle or \
             sleeping)",
            body.seconds
        )));
    }
    let svg = flame_graph(&folded, &format!("{task_id} ({} s)", body.seconds))?;
    Ok(hardened(
        ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
    ))
}

/// The flame graph of folded stacks, as `strata profile` draws it.
fn flame_graph(folded: &str, title: &str) -> Result<Vec<u8>, UiError> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .map_err(|e| UiError::Agent(format!("the agent's folded stacks cannot be drawn: {e}")))?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flame_graphs_are_svg() {
        let svg = flame_graph("main;work 30\nmain;idle 10\n", "t1 (5 s)").expect("drawn");
        let svg = String::from_utf8(svg).expect("utf-8");
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("work"), "{svg}");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(agent_url("h:1", "/x"), "http://h:1/x");
        assert_eq!(agent_url("https://h:1/", "/x"), "https://h:1/x");
    }

    #[test]
    fn resources_sum_scalars_and_print_ranges() {
        let mut ports = Resource::scalar("ports", 0.0);
        ports.kind = ResourceKind::Ranges as i32;
        ports.ranges = vec![strata_proto::ValueRange {
            begin: 31000,
            end: 31099,
        }];
        let v = resources(&[
            Resource::scalar("cpus", 1.5),
            Resource::scalar("cpus", 0.25),
            Resource::scalar("gpus", 0.0),
            ports,
        ]);
        assert_eq!(v, json!({"cpus": 1.75, "ports": "31000-31099"}));
    }

    #[test]
    fn task_changes_are_left_out_for_viewers_without_view_tasks() {
        let task = TaskSummary {
            task_id: "t1".into(),
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            state: strata_proto::TaskState::Running as i32,
            ..TaskSummary::default()
        };
        let added = Change::TaskAdded(task);
        let shown = change_json(7, &added, true).expect("shown with view_tasks");
        assert_eq!(shown["k"], "task_added");
        assert_eq!(shown["seq"], 7);
        assert_eq!(shown["task"]["state"], "TASK_RUNNING");
        assert_eq!(change_json(7, &added, false), None);
        let removed = Change::AgentRemoved {
            agent_id: "a1".into(),
        };
        assert_eq!(
            change_json(8, &removed, false),
            Some(json!({"k": "agent_removed", "id": "a1", "seq": 8}))
        );
    }

    #[test]
    fn snapshots_hold_tasks_only_for_viewers_of_tasks() {
        let state = GetStateResponse {
            agents: vec![AgentSummary {
                id: "a1".into(),
                state: AgentState::Active as i32,
                mode: AgentMode::Draining as i32,
                ..AgentSummary::default()
            }],
            tasks: vec![TaskSummary {
                task_id: "t1".into(),
                exit_code: Some(3),
                message: "bye".into(),
                ..TaskSummary::default()
            }],
            ..GetStateResponse::default()
        };
        let full = snapshot_json(&state, 4, Some("ops"), true, json!({}));
        assert_eq!(full["seq"], 4);
        assert_eq!(full["principal"], "ops");
        assert_eq!(full["agents"][0]["state"], "connected");
        assert_eq!(full["agents"][0]["mode"], "draining");
        assert_eq!(full["tasks"][0]["id"], "t1");
        assert_eq!(full["tasks"][0]["exit"], 3);
        assert_eq!(full["tasks"][0]["msg"], "bye");
        let viewer = snapshot_json(&state, 4, Some("viewer"), false, json!({}));
        assert_eq!(viewer["tasks"], json!([]));
        assert_eq!(viewer["view_tasks"], false);
        assert_eq!(viewer["agents"], full["agents"]);
    }

    #[test]
    fn batches_skip_what_the_snapshot_holds_and_report_a_lag() {
        let numbered = |seq: u64| Numbered {
            seq,
            change: Arc::new(Change::AgentRemoved {
                agent_id: format!("a{seq}"),
            }),
        };
        let (tx, mut rx) = broadcast::channel(4);
        for seq in 2..=4 {
            tx.send(numbered(seq)).expect("a receiver");
        }
        let first = rx.try_recv().expect("a change");
        let Batch::Send(bytes) = batch(first, &mut rx, 2, false) else {
            panic!("changes after the snapshot are sent")
        };
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        assert!(text.starts_with("event: changes\ndata: ["), "{text}");
        assert!(!text.contains("\"a2\""), "seq 2 is in the snapshot: {text}");
        assert!(text.contains("\"a3\"") && text.contains("\"a4\""), "{text}");
        // Seven more than the channel holds: the receiver has missed some.
        for seq in 5..=11 {
            tx.send(numbered(seq)).expect("a receiver");
        }
        assert!(matches!(
            batch(numbered(4), &mut rx, 2, true),
            Batch::Lagged
        ));
        assert!(
            String::from_utf8(reset().to_vec())
                .expect("utf-8")
                .starts_with("event: reset\n")
        );
    }

    #[test]
    fn usage_queries_are_bounded_and_checked() {
        assert_eq!(usage_query(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            usage_query(Some("task=a%20b&task=c")).unwrap(),
            vec!["a b".to_owned(), "c".to_owned()]
        );
        let err = usage_query(Some("task=..")).unwrap_err();
        assert!(err.to_string().contains("invalid task id"), "{err}");
        assert!(usage_query(Some("task=%zz")).is_err());
        assert!(usage_query(Some("other=1")).is_err());
        let many = vec!["task=x"; MAX_USAGE_TASKS + 1].join("&");
        let err = usage_query(Some(&many)).unwrap_err();
        assert!(err.to_string().contains("at most 500 tasks"), "{err}");
    }

    #[test]
    fn posts_need_the_header_and_the_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5050"));
        let err = same_site(&h).unwrap_err();
        assert!(err.to_string().contains("x-strata-ui"), "{err}");
        h.insert(UI_HEADER, HeaderValue::from_static("1"));
        same_site(&h).expect("no Origin: a same-site fetch or a tool");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:5050"),
        );
        same_site(&h).expect("the page's own origin");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let err = same_site(&h).unwrap_err();
        assert!(err.to_string().contains("evil.example"), "{err}");
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
    }
}
