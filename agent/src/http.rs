//! The agent's own HTTP server (axum): `GET /health`, `GET /usage` (the latest usage record of
//! every running task as JSON; `?task=ID` for one) and `GET /metrics` (Prometheus text, per-task
//! series labelled `task`, `framework` and `role`, plus the agent process's own CPU and memory)
//! and `GET /profile?task=ID&seconds=N` (a CPU profile of a running task as folded stacks, see
//! [`crate::profile::handle_http_request`]), and each task's sandbox: `GET /files/browse`,
//! `/files/read` and `/files/follow` (see [`crate::files`]).
//!
//! [`router`] builds the routes, so more can be added to it; [`bind`] and [`serve`] run it.
//!
//! Bounds (nothing a client sends is trusted): a request line over [`MAX_URI_BYTES`] is
//! answered 414 and headers over [`MAX_HEADER_BYTES`] 431, before any handler runs; at most
//! [`ProfileSlots`] profiles run at once (`--max-concurrent-profiles`), and a profile asked for
//! beyond that is answered 429 with `Retry-After` and a message saying to retry.
//! [`advertised_endpoint`] turns the bound address into the `host:port` the allocator is told
//! (`AgentInfo.endpoint`).

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector as PromCollector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use strata_proto::{Pressure, TaskUsage};

use crate::files::FilesState;
use crate::usage::LatestUsage;

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address cannot be bound.
    #[error(
        "cannot listen for HTTP on {addr}: {source}; pass --http-listen with a free address (or none to serve no HTTP)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

/// The longest request target (path and query) served, in bytes.
pub const MAX_URI_BYTES: usize = 4096;
/// The most header bytes (names and values) a request may carry.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The default of `--max-concurrent-profiles`.
pub const DEFAULT_MAX_CONCURRENT_PROFILES: usize = 2;
/// What a profile refused for want of a slot tells the client to wait, in seconds.
const PROFILE_RETRY_AFTER_SECONDS: u64 = 10;

/// How many requests of one kind may run at once on this agent (profiles, file follows); a
/// request beyond is answered 429.
#[derive(Debug, Clone)]
pub struct Slots {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Slots {
    /// At most `max` at once (0: none).
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// A slot, held until the permit is dropped, or `None` when `max` are taken.
    pub(crate) fn try_take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The most at once.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// The profiles that may run at once on this agent: each holds a slot from before its eBPF
/// program is loaded until its stacks are symbolized, also when its client went away.
pub type ProfileSlots = Slots;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The latest usage records.
    pub usage: LatestUsage,
    /// The GPUs' latest figures (empty without GPUs).
    pub gpus: crate::gpu::usage::LatestDevices,
    /// Where /proc is (the agent reads its own CPU time and memory there).
    pub proc_root: PathBuf,
    /// The profiles that may run at once.
    pub profiles: ProfileSlots,
    /// The task sandboxes (`/files/*`).
    pub files: FilesState,
}

impl axum::extract::FromRef<HttpState> for FilesState {
    fn from_ref(state: &HttpState) -> Self {
        state.files.clone()
    }
}

/// The agent's routes: `/health`, `/usage`, `/metrics`, `/gpus`, `/profile`, `/files/browse`,
/// `/files/read`, `/files/follow`, behind the request bounds.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/usage", get(usage))
        .route("/metrics", get(metrics))
        .route("/gpus", get(gpus))
        .route("/profile", get(profile))
        .route("/files/browse", get(crate::files::browse))
        .route("/files/read", get(crate::files::read))
        .route("/files/follow", get(crate::files::follow))
        .layer(middleware::from_fn(bounded_request))
        .layer(axum::extract::DefaultBodyLimit::max(1024))
        .with_state(state)
}

/// Refuses a request whose target or headers are longer than any of the agent's clients send.
async fn bounded_request(request: Request, next: Next) -> Response {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return (
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {uri_bytes} bytes: at most {MAX_URI_BYTES} are served\n"
            ),
        )
            .into_response();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request has {header_bytes} bytes of headers: at most {MAX_HEADER_BYTES} are served\n"),
        )
            .into_response();
    }
    next.run(request).await
}

/// Binds `addr`; the listener and the address it got (a port of 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Serves `router` on `listener` until the task is aborted; errors are logged.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    serve_with(
        listener,
        router,
        Arc::new(crate::http_auth::HttpAuth::open()),
    )
    .await;
}

/// [`serve`] with `auth`: over TLS when it has TLS settings, callers checked by
/// [`crate::http_auth::authorize`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    auth: Arc<crate::http_auth::HttpAuth>,
) {
    let tls = auth.tls();
    let router = router.layer(middleware::from_fn_with_state(
        auth,
        crate::http_auth::authorize,
    ));
    if let Err(e) = strata_common::serve::serve(listener, router, tls, std::future::pending()).await
    {
        tracing::error!(error = %e, "the agent's HTTP server stopped");
    }
}

/// The `host:port` to tell the allocator for a server bound at `bound`: the address itself
/// when it is a specific one (127.0.0.1 included); for an unspecified one (0.0.0.0, ::) the
/// local address this host uses to reach the allocator at `allocator` (`host:port`), else
/// `hostname`.
pub async fn advertised_endpoint(bound: SocketAddr, allocator: &str, hostname: &str) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let port = bound.port();
    if let Some(ip) = route_to(allocator).await {
        return SocketAddr::new(ip, port).to_string();
    }
    format!("{hostname}:{port}")
}

/// The local address of a socket "connected" (UDP: no packet is sent) to the first address of
/// `target`.
async fn route_to(target: &str) -> Option<IpAddr> {
    let addr = tokio::net::lookup_host(target).await.ok()?.next()?;
    let any: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(addr).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

async fn health() -> &'static str {
    "ok\n"
}

/// `GET /profile?task=ID&seconds=N`: the task's folded CPU stacks (see
/// [`crate::profile::handle_http_request`]).
/// At most [`ProfileSlots`] at once: beyond, 429 with `Retry-After`. The profile runs in a
/// task of its own holding its slot, so a client that hangs up does not free the slot while
/// the profile still loads, samples or symbolizes.
async fn profile(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let Some(slot) = state.profiles.try_take() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (header::RETRY_AFTER, PROFILE_RETRY_AFTER_SECONDS.to_string()),
            ],
            format!(
                "{} profiles are running on this agent, the most it takes at once \
                 (--max-concurrent-profiles): retry in a few seconds, once one has finished\n",
                state.profiles.max()
            ),
        )
            .into_response();
    };
    let running = state.usage.records();
    let proc_root = state.proc_root.clone();
    let profiled = tokio::spawn(async move {
        let answer = crate::profile::handle_http_request(
            &running,
            &proc_root,
            std::path::Path::new("/sys/fs/cgroup"),
            query.as_deref(),
        )
        .await;
        drop(slot);
        answer
    })
    .await;
    let (status, body) = profiled.unwrap_or_else(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the profile failed: {e}\n"),
        )
    });
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `task=ID` from a query string (percent-decoded).
fn task_filter(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "task").then(|| percent_decode(v))
    })
}

/// `text` with `%XX` escapes and `+` decoded (invalid UTF-8 replaced).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn usage(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let records = state.usage.records();
    let filter = task_filter(query.as_deref());
    let tasks: Vec<Value> = records
        .iter()
        .filter(|u| filter.as_ref().is_none_or(|t| &u.task_id == t))
        .map(usage_json)
        .collect();
    if let Some(task) = &filter
        && tasks.is_empty()
    {
        let body = json!({ "error": format!("no running task {task:?} on this agent") });
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let body = json!({ "tasks": tasks });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /gpus`: the agent's GPUs and their figures at the last usage interval, as JSON
/// `{"gpus": [{"index", "uuid", "model", "memory_total_bytes", "minor", ...figures}]}`.
async fn gpus(State(state): State<HttpState>) -> Response {
    let body = json!({ "gpus": state.gpus.get().iter().map(gpu_json).collect::<Vec<_>>() });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One GPU's reading as JSON (a figure the device does not give is null).
pub fn gpu_json(r: &crate::gpu::usage::DeviceReading) -> Value {
    let (d, s) = (&r.device, &r.status);
    json!({
        "index": d.index,
        "uuid": d.uuid,
        "model": d.model,
        "memory_total_bytes": d.memory_bytes,
        "minor": d.minor,
        "utilization_percent": s.gpu_percent,
        "memory_utilization_percent": s.memory_percent,
        "memory_used_bytes": s.memory_used_bytes,
        "power_watts": s.power_milliwatts.map(|mw| f64::from(mw) / 1000.0),
        "temperature_celsius": s.temperature_celsius,
        "sm_clock_mhz": s.sm_clock_mhz,
        "memory_clock_mhz": s.memory_clock_mhz,
        "throttle_reasons": s.throttle_reasons,
        "ecc_corrected_errors_total": s.ecc_corrected_total,
        "ecc_uncorrected_errors_total": s.ecc_uncorrected_total,
    })
}

fn pressure_json(p: Option<&Pressure>) -> Value {
    p.map_or(Value::Null, |p| {
        json!({
            "some_avg10": p.some_avg10,
            "some_seconds_total": p.some_seconds_total,
            "full_avg10": p.full_avg10,
            "full_seconds_total": p.full_seconds_total,
        })
    })
}

/// One record as JSON, with the proto's field names.
#[must_use]
pub fn usage_json(u: &TaskUsage) -> Value {
    let cpu = u.cpu.as_ref().map_or(Value::Null, |c| {
        json!({
            "user_seconds_total": c.user_seconds_total,
            "system_seconds_total": c.system_seconds_total,
            "oncpu_seconds_total": c.oncpu_seconds_total,
            "cores": c.cores,
            "periods_total": c.periods_total,
            "throttled_periods_total": c.throttled_periods_total,
            "throttled_seconds_total": c.throttled_seconds_total,
            "request_cores": c.request_cores,
            "limit_cores": c.limit_cores,
            "run_queue": c.run_queue.as_ref().map(|q| json!({
                "count": q.count,
                "p50_seconds": q.p50_seconds,
                "p99_seconds": q.p99_seconds,
                "max_seconds": q.max_seconds,
                "log2_ns_buckets_total": q.log2_ns_buckets_total,
                "sum_seconds_total": q.sum_seconds_total,
            })),
        })
    });
    let memory = u.memory.as_ref().map_or(Value::Null, |m| {
        json!({
            "current_bytes": m.current_bytes,
            "peak_bytes": m.peak_bytes,
            "anon_bytes": m.anon_bytes,
            "file_bytes": m.file_bytes,
            "kernel_bytes": m.kernel_bytes,
            "limit_bytes": m.limit_bytes,
            "high_bytes": m.high_bytes,
            "oom_events_total": m.oom_events_total,
            "oom_kill_events_total": m.oom_kill_events_total,
            "high_events_total": m.high_events_total,
        })
    });
    json!({
        "task_id": u.task_id,
        "framework_id": u.framework_id,
        "agent_id": u.agent_id,
        "role": u.role,
        "timestamp": u.timestamp,
        "interval_seconds": u.interval_seconds,
        "cpu": cpu,
        "memory": memory,
        "pids": u.pids.as_ref().map(|p| json!({ "current": p.current, "limit": p.limit })),
        "io": u.io.iter().map(|d| json!({
            "device": d.device,
            "read_bytes_total": d.read_bytes_total,
            "write_bytes_total": d.write_bytes_total,
            "read_ops_total": d.read_ops_total,
            "write_ops_total": d.write_ops_total,
        })).collect::<Vec<_>>(),
        "network": u.network.as_ref().map(|n| json!({
            "rx_bytes_total": n.rx_bytes_total,
            "tx_bytes_total": n.tx_bytes_total,
            "rx_packets_total": n.rx_packets_total,
            "tx_packets_total": n.tx_packets_total,
        })),
        "cpu_pressure": pressure_json(u.cpu_pressure.as_ref()),
        "memory_pressure": pressure_json(u.memory_pressure.as_ref()),
        "io_pressure": pressure_json(u.io_pressure.as_ref()),
        "gpus": u.gpus.iter().map(|g| json!({
            "uuid": g.uuid,
            "index": g.index,
            "memory_used_bytes": g.memory_used_bytes,
            "sm_utilization_percent": g.sm_utilization_percent,
        })).collect::<Vec<_>>(),
    })
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match render_metrics(&state) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// The metrics page (OpenMetrics text).
pub fn render_metrics(state: &HttpState) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TaskMetrics {
        records: state.usage.records(),
    }));
    registry.register_collector(Box::new(GpuMetrics {
        devices: state.gpus.get(),
    }));
    registry.register_collector(Box::new(ProcessMetrics {
        proc_root: state.proc_root.clone(),
        collect_seconds: state.usage.last_collect_seconds(),
    }));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

/// How a figure is exposed.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

type Figure = fn(&TaskUsage) -> Option<f64>;

/// Per-task series: name (counters without `_total`, which the encoder appends), help, kind and
/// how to get the figure (none: the series is left out for that task).
const TASK_SERIES: &[(&str, &str, Kind, Figure)] = &[
    (
        "strata_task_cpu_user_seconds",
        "CPU time in user mode (cgroup)",
        Kind::Counter,
        |u| u.cpu.as_ref().map(|c| c.user_seconds_total),
    ),
    (
        "strata_task_cpu_system_seconds",
        "CPU time in kernel mode (cgroup)",
        Kind::Counter,
        |u| u.cpu.as_ref().map(|c| c.system_seconds_total),
    ),
    (
        "strata_task_cpu_oncpu_seconds",
        "On-CPU time counted at context switches by eBPF, since the agent started",
        Kind::Counter,
        |u| u.cpu.as_ref().and_then(|c| c.oncpu_seconds_total),
    ),
    (
        "strata_task_cpu_cores",
        "Cores used over the last interval",
        Kind::Gauge,
        |u| u.cpu.as_ref().map(|c| c.cores),
    ),
    (
        "strata_task_cpu_request_cores",
        "Cpus the task asked for (its share)",
        Kind::Gauge,
        |u| u.cpu.as_ref().map(|c| c.request_cores),
    ),
    (
        "strata_task_cpu_limit_cores",
        "Hard CPU limit in cores (0: none)",
        Kind::Gauge,
        |u| u.cpu.as_ref().map(|c| c.limit_cores),
    ),
    (
        "strata_task_cpu_periods",
        "CFS enforcement periods",
        Kind::Counter,
        |u| u.cpu.as_ref().map(|c| c.periods_total as f64),
    ),
    (
        "strata_task_cpu_throttled_periods",
        "CFS periods in which the task was throttled",
        Kind::Counter,
        |u| u.cpu.as_ref().map(|c| c.throttled_periods_total as f64),
    ),
    (
        "strata_task_cpu_throttled_seconds",
        "Time the task was throttled",
        Kind::Counter,
        |u| u.cpu.as_ref().map(|c| c.throttled_seconds_total),
    ),
    (
        "strata_task_run_queue_wait_seconds",
        "Time the task's threads waited runnable for a CPU, since the agent started",
        Kind::Counter,
        |u| {
            u.cpu
                .as_ref()
                .and_then(|c| c.run_queue.as_ref())
                .map(|q| q.sum_seconds_total)
        },
    ),
    (
        "strata_task_run_queue_p99_seconds",
        "99th percentile of run-queue waits over the last interval",
        Kind::Gauge,
        |u| {
            u.cpu
                .as_ref()
                .and_then(|c| c.run_queue.as_ref())
                .map(|q| q.p99_seconds)
        },
    ),
    (
        "strata_task_memory_current_bytes",
        "Memory charged to the task",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.current_bytes as f64),
    ),
    (
        "strata_task_memory_peak_bytes",
        "Highest memory charged to the task",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.peak_bytes as f64),
    ),
    (
        "strata_task_memory_anon_bytes",
        "Anonymous memory",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.anon_bytes as f64),
    ),
    (
        "strata_task_memory_file_bytes",
        "Page cache",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.file_bytes as f64),
    ),
    (
        "strata_task_memory_kernel_bytes",
        "Kernel memory",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.kernel_bytes as f64),
    ),
    (
        "strata_task_memory_limit_bytes",
        "Hard memory limit (0: none)",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.limit_bytes as f64),
    ),
    (
        "strata_task_memory_high_bytes",
        "Soft memory limit (0: none)",
        Kind::Gauge,
        |u| u.memory.as_ref().map(|m| m.high_bytes as f64),
    ),
    (
        "strata_task_memory_oom_events",
        "Times the task hit its memory limit and the OOM killer was invoked",
        Kind::Counter,
        |u| u.memory.as_ref().map(|m| m.oom_events_total as f64),
    ),
    (
        "strata_task_memory_oom_kills",
        "Processes of the task killed by the OOM killer",
        Kind::Counter,
        |u| u.memory.as_ref().map(|m| m.oom_kill_events_total as f64),
    ),
    (
        "strata_task_memory_high_events",
        "Times the task went over its soft memory limit",
        Kind::Counter,
        |u| u.memory.as_ref().map(|m| m.high_events_total as f64),
    ),
    (
        "strata_task_pids",
        "Processes and threads of the task",
        Kind::Gauge,
        |u| u.pids.as_ref().map(|p| p.current as f64),
    ),
    (
        "strata_task_pids_limit",
        "Most processes and threads (0: none)",
        Kind::Gauge,
        |u| u.pids.as_ref().map(|p| p.limit as f64),
    ),
    (
        "strata_task_network_rx_bytes",
        "Bytes received by the task's sockets (IP packets, headers included)",
        Kind::Counter,
        |u| u.network.as_ref().map(|n| n.rx_bytes_total as f64),
    ),
    (
        "strata_task_network_tx_bytes",
        "Bytes sent by the task's sockets (IP packets, headers included)",
        Kind::Counter,
        |u| u.network.as_ref().map(|n| n.tx_bytes_total as f64),
    ),
    (
        "strata_task_network_rx_packets",
        "Packets received by the task's sockets",
        Kind::Counter,
        |u| u.network.as_ref().map(|n| n.rx_packets_total as f64),
    ),
    (
        "strata_task_network_tx_packets",
        "Packets sent by the task's sockets",
        Kind::Counter,
        |u| u.network.as_ref().map(|n| n.tx_packets_total as f64),
    ),
    (
        "strata_task_cpu_pressure_some_seconds",
        "Time some of the task's threads stalled waiting for a CPU (PSI)",
        Kind::Counter,
        |u| u.cpu_pressure.as_ref().map(|p| p.some_seconds_total),
    ),
    (
        "strata_task_memory_pressure_some_seconds",
        "Time some of the task's threads stalled on memory (PSI)",
        Kind::Counter,
        |u| u.memory_pressure.as_ref().map(|p| p.some_seconds_total),
    ),
    (
        "strata_task_memory_pressure_full_seconds",
        "Time all of the task's threads stalled on memory (PSI)",
        Kind::Counter,
        |u| {
            u.memory_pressure
                .as_ref()
                .and_then(|p| p.full_seconds_total)
        },
    ),
    (
        "strata_task_io_pressure_some_seconds",
        "Time some of the task's threads stalled on io (PSI)",
        Kind::Counter,
        |u| u.io_pressure.as_ref().map(|p| p.some_seconds_total),
    ),
    (
        "strata_task_io_pressure_full_seconds",
        "Time all of the task's threads stalled on io (PSI)",
        Kind::Counter,
        |u| u.io_pressure.as_ref().and_then(|p| p.full_seconds_total),
    ),
];

type IoFigure = fn(&strata_proto::IoDeviceUsage) -> u64;

/// Per-device io series: name, help, figure.
const IO_SERIES: &[(&str, &str, IoFigure)] = &[
    (
        "strata_task_io_read_bytes",
        "Bytes read from the device",
        |d| d.read_bytes_total,
    ),
    (
        "strata_task_io_write_bytes",
        "Bytes written to the device",
        |d| d.write_bytes_total,
    ),
    (
        "strata_task_io_read_ops",
        "Read operations on the device",
        |d| d.read_ops_total,
    ),
    (
        "strata_task_io_write_ops",
        "Write operations on the device",
        |d| d.write_ops_total,
    ),
];

#[derive(Debug)]
struct TaskMetrics {
    records: Vec<TaskUsage>,
}

impl PromCollector for TaskMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (name, help, kind, figure) in TASK_SERIES {
            let values: Vec<(&TaskUsage, f64)> = self
                .records
                .iter()
                .filter_map(|u| figure(u).map(|v| (u, v)))
                .collect();
            if values.is_empty() {
                continue;
            }
            let metric_type = match kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (u, v) in values {
                let labels = [
                    ("task", u.task_id.as_str()),
                    ("framework", u.framework_id.as_str()),
                    ("role", u.role.as_str()),
                ];
                let family = metric.encode_family(&labels)?;
                match kind {
                    Kind::Counter => ConstCounter::new(v).encode(family)?,
                    Kind::Gauge => ConstGauge::new(v).encode(family)?,
                }
            }
        }
        for (name, help, figure) in IO_SERIES {
            if self.records.iter().all(|u| u.io.is_empty()) {
                break;
            }
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for u in self.records.iter() {
                for d in &u.io {
                    let labels = [
                        ("task", u.task_id.as_str()),
                        ("framework", u.framework_id.as_str()),
                        ("role", u.role.as_str()),
                        ("device", d.device.as_str()),
                    ];
                    ConstCounter::new(figure(d)).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, figure) in TASK_GPU_SERIES {
            if self.records.iter().all(|u| u.gpus.is_empty()) {
                break;
            }
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for u in &self.records {
                for g in &u.gpus {
                    let index = g.index.to_string();
                    let labels = [
                        ("task", u.task_id.as_str()),
                        ("framework", u.framework_id.as_str()),
                        ("role", u.role.as_str()),
                        ("gpu", index.as_str()),
                        ("uuid", g.uuid.as_str()),
                    ];
                    ConstGauge::new(figure(g)).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

type TaskGpuFigure = fn(&strata_proto::GpuUsage) -> f64;

/// Per-task, per-GPU series (gauges): name, help, figure.
const TASK_GPU_SERIES: &[(&str, &str, TaskGpuFigure)] = &[
    (
        "strata_task_gpu_memory_used_bytes",
        "GPU memory held by the task's processes",
        |g| g.memory_used_bytes as f64,
    ),
    (
        "strata_task_gpu_sm_utilization_percent",
        "Percent of the last interval a kernel of the task's processes ran on the GPU",
        |g| g.sm_utilization_percent,
    ),
];

type GpuFigure = fn(&crate::gpu::DeviceStatus) -> Option<f64>;

/// Per-GPU series, the DCGM exporter's figures under Strata's names: name, help, kind, figure
/// (none: left out for that GPU).
const GPU_SERIES: &[(&str, &str, Kind, GpuFigure)] = &[
    (
        "strata_gpu_utilization_percent",
        "Percent of the last sample period a kernel ran on the GPU (DCGM_FI_DEV_GPU_UTIL)",
        Kind::Gauge,
        |s| s.gpu_percent.map(f64::from),
    ),
    (
        "strata_gpu_memory_utilization_percent",
        "Percent of the last sample period the GPU's memory was read or written (DCGM_FI_DEV_MEM_COPY_UTIL)",
        Kind::Gauge,
        |s| s.memory_percent.map(f64::from),
    ),
    (
        "strata_gpu_memory_used_bytes",
        "GPU memory in use (DCGM_FI_DEV_FB_USED)",
        Kind::Gauge,
        |s| s.memory_used_bytes.map(|b| b as f64),
    ),
    (
        "strata_gpu_power_watts",
        "Power draw (DCGM_FI_DEV_POWER_USAGE)",
        Kind::Gauge,
        |s| s.power_milliwatts.map(|mw| f64::from(mw) / 1000.0),
    ),
    (
        "strata_gpu_temperature_celsius",
        "GPU die temperature (DCGM_FI_DEV_GPU_TEMP)",
        Kind::Gauge,
        |s| s.temperature_celsius.map(f64::from),
    ),
    (
        "strata_gpu_sm_clock_hertz",
        "SM clock (DCGM_FI_DEV_SM_CLOCK)",
        Kind::Gauge,
        |s| s.sm_clock_mhz.map(|m| f64::from(m) * 1e6),
    ),
    (
        "strata_gpu_memory_clock_hertz",
        "Memory clock (DCGM_FI_DEV_MEM_CLOCK)",
        Kind::Gauge,
        |s| s.memory_clock_mhz.map(|m| f64::from(m) * 1e6),
    ),
    (
        "strata_gpu_throttle_reasons",
        "NVML's clock throttle reasons bit mask, 0 when not throttled (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS)",
        Kind::Gauge,
        |s| s.throttle_reasons.map(|r| r as f64),
    ),
    (
        "strata_gpu_ecc_corrected_errors",
        "Corrected ECC errors since the driver loaded (DCGM_FI_DEV_ECC_SBE_VOL_TOTAL)",
        Kind::Counter,
        |s| s.ecc_corrected_total.map(|n| n as f64),
    ),
    (
        "strata_gpu_ecc_uncorrected_errors",
        "Uncorrected ECC errors since the driver loaded (DCGM_FI_DEV_ECC_DBE_VOL_TOTAL)",
        Kind::Counter,
        |s| s.ecc_uncorrected_total.map(|n| n as f64),
    ),
];

/// The GPUs' own figures, labelled `gpu` (NVML index), `uuid` and `model`.
#[derive(Debug)]
struct GpuMetrics {
    devices: Vec<crate::gpu::usage::DeviceReading>,
}

impl PromCollector for GpuMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if self.devices.is_empty() {
            return Ok(());
        }
        let total = ConstGauge::new(0.0);
        let mut metric = encoder.encode_descriptor(
            "strata_gpu_memory_total_bytes",
            "GPU memory in all (DCGM_FI_DEV_FB_TOTAL)",
            None,
            total.metric_type(),
        )?;
        for r in &self.devices {
            let index = r.device.index.to_string();
            let labels = [
                ("gpu", index.as_str()),
                ("uuid", r.device.uuid.as_str()),
                ("model", r.device.model.as_str()),
            ];
            ConstGauge::new(r.device.memory_bytes as f64).encode(metric.encode_family(&labels)?)?;
        }
        for (name, help, kind, figure) in GPU_SERIES {
            let values: Vec<_> = self
                .devices
                .iter()
                .filter_map(|r| figure(&r.status).map(|v| (r, v)))
                .collect();
            if values.is_empty() {
                continue;
            }
            let metric_type = match kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (r, v) in values {
                let index = r.device.index.to_string();
                let labels = [
                    ("gpu", index.as_str()),
                    ("uuid", r.device.uuid.as_str()),
                    ("model", r.device.model.as_str()),
                ];
                let family = metric.encode_family(&labels)?;
                match kind {
                    Kind::Counter => ConstCounter::new(v).encode(family)?,
                    Kind::Gauge => ConstGauge::new(v).encode(family)?,
                }
            }
        }
        Ok(())
    }
}

/// The agent process's own figures, from `<proc>/self`.
#[derive(Debug)]
struct ProcessMetrics {
    proc_root: PathBuf,
    collect_seconds: f64,
}

/// user + system CPU seconds and resident bytes of `<proc>/self`.
pub(crate) fn own_usage(proc_root: &std::path::Path) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(proc_root.join("self/stat")).ok()?;
    // Fields after the command (which may hold spaces), from field 3 (state) on.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let status = std::fs::read_to_string(proc_root.join("self/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((
        (utime as f64 + stime as f64) / ticks,
        rss_kib.saturating_mul(1024),
    ))
}

impl PromCollector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some((cpu_seconds, rss)) = own_usage(&self.proc_root) {
            let counter = ConstCounter::new(cpu_seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time of the agent process (user + system)",
                None,
                counter.metric_type(),
            )?)?;
            let gauge = ConstGauge::new(rss as f64);
            gauge.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the agent process",
                None,
                gauge.metric_type(),
            )?)?;
        }
        let gauge = ConstGauge::new(self.collect_seconds);
        gauge.encode(encoder.encode_descriptor(
            "strata_agent_usage_collect_seconds",
            "How long the agent's last usage collection took",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The value of the series `name` with `task="ID"` in a metrics page, for tests and tools.
#[must_use]
pub fn metric_value(page: &str, name: &str, task: &str) -> Option<f64> {
    let mut label = String::new();
    let _ = write!(label, "task=\"{task}\"");
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        labels
            .split(',')
            .any(|l| l == label)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use strata_proto::{CpuUsage, IoDeviceUsage, MemoryUsage, NetworkUsage};

    use super::*;

    fn record(task: &str, user: f64) -> TaskUsage {
        TaskUsage {
            task_id: task.to_owned(),
            framework_id: "fw".to_owned(),
            role: "eng".to_owned(),
            cpu: Some(CpuUsage {
                user_seconds_total: user,
                oncpu_seconds_total: Some(user),
                ..CpuUsage::default()
            }),
            memory: Some(MemoryUsage {
                current_bytes: 4096,
                ..MemoryUsage::default()
            }),
            network: Some(NetworkUsage {
                rx_bytes_total: 10,
                tx_bytes_total: 20,
                ..NetworkUsage::default()
            }),
            io: vec![IoDeviceUsage {
                device: "8:0".to_owned(),
                read_bytes_total: 512,
                ..IoDeviceUsage::default()
            }],
            ..TaskUsage::default()
        }
    }

    fn state() -> HttpState {
        HttpState {
            usage: LatestUsage::default(),
            gpus: crate::gpu::usage::LatestDevices::default(),
            proc_root: PathBuf::from("/proc"),
            profiles: ProfileSlots::new(DEFAULT_MAX_CONCURRENT_PROFILES),
            files: FilesState {
                work_dir: PathBuf::from("/nonexistent"),
                running: tokio::sync::watch::channel(Arc::new(Vec::new())).1,
                follows: crate::files::FollowSlots::new(
                    crate::files::DEFAULT_MAX_CONCURRENT_FOLLOWS,
                ),
            },
        }
    }

    async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
        let page = strata_test_support::http::get(addr, path).await.unwrap();
        (page.status, page.body)
    }

    #[test]
    fn metrics_follow_prometheus_names_and_labels() {
        let s = state();
        s.usage
            .set_records(vec![record("t1", 1.5), record("t2", 0.25)]);
        let page = render_metrics(&s).unwrap();
        assert!(
            page.contains("# TYPE strata_task_cpu_user_seconds counter"),
            "{page}"
        );
        assert_eq!(
            metric_value(&page, "strata_task_cpu_user_seconds_total", "t1"),
            Some(1.5),
            "{page}"
        );
        assert_eq!(
            metric_value(&page, "strata_task_cpu_oncpu_seconds_total", "t2"),
            Some(0.25)
        );
        assert_eq!(
            metric_value(&page, "strata_task_memory_current_bytes", "t1"),
            Some(4096.0)
        );
        assert_eq!(
            metric_value(&page, "strata_task_network_tx_bytes_total", "t2"),
            Some(20.0)
        );
        assert!(page.contains(
            "strata_task_io_read_bytes_total{task=\"t1\",framework=\"fw\",role=\"eng\",device=\"8:0\"} 512"
        ));
        assert!(page.contains("process_cpu_seconds_total "), "{page}");
        assert!(page.contains("process_resident_memory_bytes "), "{page}");
        assert!(page.ends_with("# EOF\n"));
        // Unset figures leave their series out.
        assert!(!page.contains("strata_task_run_queue"), "{page}");
    }

    #[test]
    fn the_task_filter_is_percent_decoded() {
        assert_eq!(task_filter(Some("task=a%2Fb&x=1")), Some("a/b".to_owned()));
        assert_eq!(task_filter(Some("x=1")), None);
        assert_eq!(task_filter(None), None);
        assert_eq!(percent_decode("50%"), "50%");
    }

    /// The status line's code of a raw request.
    async fn raw_status(addr: SocketAddr, request: &str) -> u16 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn long_targets_and_headers_are_refused_and_profiles_beyond_the_slots_get_429() {
        let s = HttpState {
            gpus: Default::default(),
            profiles: ProfileSlots::new(0),
            ..state()
        };
        let (listener, bound) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let server = tokio::spawn(serve(listener, router(s)));
        let long = format!("/health?{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(get_text(bound, &long).await.0, 414);
        let big_header = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES + 1)
        );
        assert_eq!(raw_status(bound, &big_header).await, 431);
        assert_eq!(
            raw_status(bound, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await,
            200
        );
        // No slot: refused before the task is even looked up, with a hint to retry.
        let page = strata_test_support::http::get(bound, "/profile?task=t1&seconds=1")
            .await
            .unwrap();
        assert_eq!(page.status, 429, "{}", page.body);
        assert!(page.body.contains("retry"), "{}", page.body);
        assert_eq!(
            page.header("retry-after"),
            Some(PROFILE_RETRY_AFTER_SECONDS.to_string().as_str())
        );
        server.abort();
    }

    #[test]
    fn own_usage_saturates_on_absurd_proc_figures() {
        // Found by the agent_cgroup_files fuzz target: VmRSS in bytes overflowed.
        let proc_root = tempfile::tempdir().unwrap();
        let own = proc_root.path().join("self");
        std::fs::create_dir(&own).unwrap();
        let max = u64::MAX;
        std::fs::write(
            own.join("stat"),
            format!("1 (a) b) S 0 0 0 0 0 0 0 0 0 0 {max} {max} 0\n"),
        )
        .unwrap();
        std::fs::write(own.join("status"), format!("VmRSS:\t{max} kB\n")).unwrap();
        let (cpu, rss) = own_usage(proc_root.path()).expect("read");
        assert!(cpu > 0.0);
        assert_eq!(rss, u64::MAX);
    }

    #[tokio::test]
    async fn the_server_answers_health_usage_and_metrics() {
        let s = state();
        s.usage.set_records(vec![record("t1", 1.0)]);
        let (listener, bound) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let server = tokio::spawn(serve(listener, router(s.clone())));
        assert_eq!(get_text(bound, "/health").await, (200, "ok\n".to_owned()));
        let (status, body) = get_text(bound, "/usage").await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["tasks"][0]["task_id"], "t1");
        assert_eq!(v["tasks"][0]["cpu"]["user_seconds_total"], 1.0);
        let (status, body) = get_text(bound, "/usage?task=t1").await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = get_text(bound, "/usage?task=nope").await;
        assert_eq!(status, 404);
        assert!(body.contains("no running task"), "{body}");
        let (status, page) = get_text(bound, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            metric_value(&page, "strata_task_cpu_user_seconds_total", "t1"),
            Some(1.0)
        );
        s.usage.set_records(vec![record("t1", 2.0)]);
        let (_, page) = get_text(bound, "/metrics").await;
        assert_eq!(
            metric_value(&page, "strata_task_cpu_user_seconds_total", "t1"),
            Some(2.0)
        );
        server.abort();
    }

    #[tokio::test]
    async fn the_advertised_endpoint_is_reachable_from_the_allocator() {
        let loopback: SocketAddr = ([127, 0, 0, 1], 5051).into();
        assert_eq!(
            advertised_endpoint(loopback, "10.0.0.1:5050", "h").await,
            "127.0.0.1:5051"
        );
        let any: SocketAddr = ([0, 0, 0, 0], 5051).into();
        assert_eq!(
            advertised_endpoint(any, "127.0.0.1:5050", "h").await,
            "127.0.0.1:5051"
        );
        assert_eq!(
            advertised_endpoint(any, "no-such-host.invalid:5050", "h").await,
            "h:5051"
        );
    }
}
