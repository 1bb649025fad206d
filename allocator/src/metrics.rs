//! The allocator's Prometheus metrics, in OpenMetrics text at `GET /metrics`.
//!
//! [`Metrics`] is a cheap, cloneable handle. The actor counts what it does as it does it
//! (offers made, declined and rescinded, tasks launched, task updates by state, the time of
//! each allocation round); the cluster gauges (agents, frameworks, resources) are computed
//! only when someone scrapes: [`Metrics::gather`] asks the actor to refresh them from its
//! books, then encodes. Nothing is computed per round for a scraper that never comes.
//!
//! Names follow Prometheus conventions: counters end in `_total` (the encoder appends it),
//! times are in seconds, memory and disk in bytes. The served families:
//!
//! - `strata_allocator_offers_total`, `strata_allocator_offers_declined_total`,
//!   `strata_allocator_offers_rescinded_total`, `strata_allocator_tasks_launched_total`;
//! - `strata_allocator_task_updates_total{state}`: status updates passed to frameworks, by
//!   state (`TASK_RUNNING`, `TASK_FINISHED`, ...);
//! - `strata_allocator_agents{state="active|unreachable"}`,
//!   `strata_allocator_agents_in_maintenance{mode="draining|deactivated"}`,
//!   `strata_allocator_frameworks{state="connected|disconnected"}`;
//! - `strata_allocator_resources{resource, kind="total|allocated|offered"}`;
//! - `strata_allocator_allocation_round_seconds` (histogram).
//!
//! [`router`] is the axum route for embedding in another HTTP server; [`serve_http`] runs a
//! small server of its own (the binary's `--metrics-listen`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use strata_allocator_core::Command;
use strata_proto::{
    AgentState, AgentSummary, Call, FrameworkSummary, Resource, ResourceKind, allocator_message,
    call, event, names,
};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the actor to refresh the cluster gauges before it encodes
/// what it has.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

const MIB: f64 = 1024.0 * 1024.0;

/// Why the metrics server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The HTTP server failed.
    #[error("the allocator's metrics server on {addr} failed: {source}")]
    Serve {
        /// Where it listened.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
    kind: &'static str,
}

/// Asks the actor to refresh the cluster gauges; resolves once it has (or it is gone).
pub(crate) type Refresh = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Inner {
    registry: Registry,
    offers: Counter,
    offers_declined: Counter,
    offers_rescinded: Counter,
    tasks_launched: Counter,
    task_updates: Family<StateLabel, Counter>,
    agents: Family<StateLabel, Gauge>,
    agents_in_maintenance: Family<ModeLabel, Gauge>,
    frameworks: Family<StateLabel, Gauge>,
    resources: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    round_seconds: Histogram,
    refresh: Mutex<Option<Refresh>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// The allocator's metrics: a handle shared by the actor and the HTTP server.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata_allocator");
        let offers = Counter::default();
        registry.register(
            "offers",
            "Resource offers sent to frameworks",
            offers.clone(),
        );
        let offers_declined = Counter::default();
        registry.register(
            "offers_declined",
            "Offers that frameworks declined",
            offers_declined.clone(),
        );
        let offers_rescinded = Counter::default();
        registry.register(
            "offers_rescinded",
            "Offers the allocator rescinded (timeout, agent gone, maintenance)",
            offers_rescinded.clone(),
        );
        let tasks_launched = Counter::default();
        registry.register(
            "tasks_launched",
            "Tasks sent to agents to launch",
            tasks_launched.clone(),
        );
        let task_updates = Family::<StateLabel, Counter>::default();
        registry.register(
            "task_updates",
            "Task status updates passed to frameworks, by task state",
            task_updates.clone(),
        );
        let agents = Family::<StateLabel, Gauge>::default();
        registry.register(
            "agents",
            "Agents the allocator knows, by state (active: connected; unreachable: stream lost)",
            agents.clone(),
        );
        let agents_in_maintenance = Family::<ModeLabel, Gauge>::default();
        registry.register(
            "agents_in_maintenance",
            "Agents being drained or deactivated (no new offers)",
            agents_in_maintenance.clone(),
        );
        let frameworks = Family::<StateLabel, Gauge>::default();
        registry.register(
            "frameworks",
            "Frameworks the allocator knows, connected or within their failover timeout",
            frameworks.clone(),
        );
        let resources = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "resources",
            "Cluster resources by name and kind (total and offered: active agents; allocated: \
             all agents); cpus in cores, mem and disk in bytes, ports and other ranges as counts",
            resources.clone(),
        );
        // 50 µs to about 3.3 s.
        let round_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register_with_unit(
            "allocation_round",
            "Time of one allocation round of the actor (an allocation pass, or a periodic tick \
             with its expiries and full pass)",
            Unit::Seconds,
            round_seconds.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                offers,
                offers_declined,
                offers_rescinded,
                tasks_launched,
                task_updates,
                agents,
                agents_in_maintenance,
                frameworks,
                resources,
                round_seconds,
                refresh: Mutex::new(None),
            }),
        }
    }

    /// The metrics in the OpenMetrics text exposition format, as they are now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Writing to a String cannot fail; a label that cannot be encoded would.
            tracing::error!(error = %e, "cannot encode the allocator's metrics");
        }
        out
    }

    /// Refreshes the cluster gauges from the running allocator (if any), then encodes.
    pub async fn gather(&self) -> String {
        let refresh = {
            let guard = self
                .inner
                .refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().map(|refresh| refresh())
        };
        if let Some(refresh) = refresh
            && tokio::time::timeout(REFRESH_TIMEOUT, refresh)
                .await
                .is_err()
        {
            tracing::warn!(
                timeout = ?REFRESH_TIMEOUT,
                "the allocator did not refresh its gauges in time; serving the last values"
            );
        }
        self.encode()
    }

    /// Installs how [`Metrics::gather`] refreshes the cluster gauges (the allocator's actor).
    pub(crate) fn set_refresh(&self, refresh: Refresh) {
        let mut guard = self
            .inner
            .refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *guard = Some(refresh);
    }

    /// Counts `n` offers sent.
    pub(crate) fn offers_sent(&self, n: usize) {
        self.inner.offers.inc_by(n as u64);
    }

    /// Counts `n` offers declined.
    pub(crate) fn offers_declined(&self, n: usize) {
        self.inner.offers_declined.inc_by(n as u64);
    }

    /// Counts one offer rescinded.
    pub(crate) fn offer_rescinded(&self) {
        self.inner.offers_rescinded.inc();
    }

    /// Counts one task sent to its agent.
    pub(crate) fn task_launched(&self) {
        self.inner.tasks_launched.inc();
    }

    /// Counts one status update passed to a framework.
    pub(crate) fn task_update(&self, state: &'static str) {
        self.inner
            .task_updates
            .get_or_create(&StateLabel { state })
            .inc();
    }

    /// Counts what a command of the core sends: offers, rescinds, launches, status updates.
    pub(crate) fn command(&self, command: &Command) {
        match command {
            Command::ToAgent {
                message: allocator_message::Message::LaunchTask(_),
                ..
            } => self.task_launched(),
            Command::Offers { offers, .. } => self.offers_sent(offers.len()),
            Command::ToFramework { event, .. } => match event {
                event::Event::Offers(offers) => self.offers_sent(offers.offers.len()),
                event::Event::Rescind(_) => self.offer_rescinded(),
                event::Event::Update(update) => {
                    if let Some(status) = &update.status {
                        self.task_update(status.state().label());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Counts what a framework's call does to offers (declines).
    pub(crate) fn framework_call(&self, call: &Call) {
        if let Some(call::Call::Decline(decline)) = &call.call {
            self.offers_declined(decline.offer_ids.len());
        }
    }

    /// Records the time of one allocation round.
    pub(crate) fn allocation_round(&self, took: Duration) {
        self.inner.round_seconds.observe(took.as_secs_f64());
    }

    /// Sets the cluster gauges from the allocator's books.
    pub(crate) fn set_cluster(
        &self,
        agents: &[AgentSummary],
        draining: usize,
        deactivated: usize,
        frameworks: &[FrameworkSummary],
    ) {
        let inner = &self.inner;
        let active = agents
            .iter()
            .filter(|a| a.state() == AgentState::Active)
            .count();
        set(&inner.agents, StateLabel { state: "active" }, active);
        set(
            &inner.agents,
            StateLabel {
                state: "unreachable",
            },
            agents.len() - active,
        );
        set(
            &inner.agents_in_maintenance,
            ModeLabel { mode: "draining" },
            draining,
        );
        set(
            &inner.agents_in_maintenance,
            ModeLabel {
                mode: "deactivated",
            },
            deactivated,
        );
        let connected = frameworks.iter().filter(|f| f.connected).count();
        set(
            &inner.frameworks,
            StateLabel { state: "connected" },
            connected,
        );
        set(
            &inner.frameworks,
            StateLabel {
                state: "disconnected",
            },
            frameworks.len() - connected,
        );

        let mut sums: std::collections::BTreeMap<(String, &'static str), f64> =
            std::collections::BTreeMap::new();
        // The usual resources show (at zero) before any agent has them.
        for name in [names::CPUS, names::MEM, names::DISK] {
            for kind in ["total", "allocated", "offered"] {
                sums.insert((name.to_owned(), kind), 0.0);
            }
        }
        for agent in agents {
            let active = agent.state() == AgentState::Active;
            let mut add = |resources: &[Resource], kind: &'static str| {
                for r in resources {
                    *sums.entry((r.name.clone(), kind)).or_default() += quantity(r);
                }
            };
            if active {
                add(&agent.total, "total");
                add(&agent.offered, "offered");
            }
            add(&agent.allocated, "allocated");
        }
        inner.resources.clear();
        for ((resource, kind), value) in sums {
            inner
                .resources
                .get_or_create(&ResourceLabels { resource, kind })
                .set(value);
        }
    }
}

fn set<L>(family: &Family<L, Gauge>, label: L, value: usize)
where
    L: Clone + std::hash::Hash + Eq,
{
    family
        .get_or_create(&label)
        .set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// A resource's amount in base units: cores, bytes (mem and disk), or a count (ranges, sets).
fn quantity(r: &Resource) -> f64 {
    match r.kind() {
        ResourceKind::Ranges => r
            .ranges
            .iter()
            .map(|v| (v.end.saturating_sub(v.begin) + 1) as f64)
            .sum(),
        ResourceKind::Set => r.set.len() as f64,
        _ if r.name == names::MEM || r.name == names::DISK => r.scalar * MIB,
        _ => r.scalar,
    }
}

/// `GET /metrics` for `metrics`, to merge into an axum server.
pub fn router(metrics: Metrics) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    metrics.gather().await,
                )
            }
        }),
    )
}

/// Serves `/metrics` on `listener` in a task of its own for the life of the process; a server
/// that stops is logged as an error.
pub fn spawn_http(listener: tokio::net::TcpListener, metrics: Metrics) {
    spawn_secure(
        listener,
        metrics,
        Arc::new(crate::security::Security::open()),
    );
}

/// [`spawn_http`] with `security`: over TLS when it has TLS files, and callers must be
/// allowed `view_frameworks` when its policy is enforced (Prometheus sends a bearer token or
/// a client certificate).
pub fn spawn_secure(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    security: Arc<crate::security::Security>,
) {
    tokio::spawn(async move {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let tls = match security.http_tls() {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot set up TLS for /metrics; not serving it");
                return;
            }
        };
        let app = router(metrics).route_layer(axum::middleware::from_fn_with_state(
            security,
            crate::security::require_view,
        ));
        tracing::info!(%addr, tls = tls.is_some(), "metrics served at /metrics");
        if let Err(e) = strata_common::serve::serve(
            listener,
            app,
            tls.map(crate::security::with_principal),
            std::future::pending(),
        )
        .await
        {
            tracing::error!(%addr, error = %e, "metrics server stopped");
        }
    });
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    tracing::info!(%addr, "metrics served at /metrics");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| MetricsError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::{AgentState, ValueRange};

    fn agent(state: AgentState, cpus: f64, mem: f64, allocated_cpus: f64) -> AgentSummary {
        AgentSummary {
            id: format!("a-{cpus}"),
            state: state as i32,
            total: vec![
                Resource::scalar(names::CPUS, cpus),
                Resource::scalar(names::MEM, mem),
                Resource {
                    name: names::PORTS.to_owned(),
                    kind: ResourceKind::Ranges as i32,
                    ranges: vec![ValueRange {
                        begin: 31000,
                        end: 31009,
                    }],
                    ..Resource::default()
                },
            ],
            allocated: vec![Resource::scalar(names::CPUS, allocated_cpus)],
            ..AgentSummary::default()
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn counters_and_the_histogram_encode_with_conventional_names() {
        let m = Metrics::new();
        m.offers_sent(3);
        m.offers_declined(2);
        m.offer_rescinded();
        m.task_launched();
        m.task_update("TASK_RUNNING");
        m.task_update("TASK_RUNNING");
        m.allocation_round(Duration::from_micros(120));
        let text = m.encode();
        assert_eq!(
            line(&text, "strata_allocator_offers_total "),
            "strata_allocator_offers_total 3"
        );
        assert_eq!(
            line(&text, "strata_allocator_offers_declined_total "),
            "strata_allocator_offers_declined_total 2"
        );
        assert_eq!(
            line(&text, "strata_allocator_offers_rescinded_total "),
            "strata_allocator_offers_rescinded_total 1"
        );
        assert_eq!(
            line(&text, "strata_allocator_tasks_launched_total "),
            "strata_allocator_tasks_launched_total 1"
        );
        assert_eq!(
            line(&text, "strata_allocator_task_updates_total{"),
            "strata_allocator_task_updates_total{state=\"TASK_RUNNING\"} 2"
        );
        assert_eq!(
            line(&text, "strata_allocator_allocation_round_seconds_count "),
            "strata_allocator_allocation_round_seconds_count 1"
        );
        assert!(text.contains("# TYPE strata_allocator_allocation_round_seconds histogram"));
        assert!(text.contains("# UNIT strata_allocator_allocation_round_seconds seconds"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn cluster_gauges_count_agents_frameworks_and_resources_in_base_units() {
        let m = Metrics::new();
        let agents = [
            agent(AgentState::Active, 4.0, 1024.0, 1.5),
            agent(AgentState::Active, 2.0, 512.0, 0.0),
            agent(AgentState::Unreachable, 8.0, 2048.0, 0.5),
        ];
        let frameworks = [
            FrameworkSummary {
                connected: true,
                ..FrameworkSummary::default()
            },
            FrameworkSummary::default(),
            FrameworkSummary::default(),
        ];
        m.set_cluster(&agents, 1, 0, &frameworks);
        let text = m.encode();
        let value = |prefix: &str| line(&text, prefix).rsplit(' ').next().map(str::to_owned);
        let get = |labels: &str| value(&format!("strata_allocator_{labels} "));
        assert_eq!(get("agents{state=\"active\"}").as_deref(), Some("2"));
        assert_eq!(get("agents{state=\"unreachable\"}").as_deref(), Some("1"));
        assert_eq!(
            get("agents_in_maintenance{mode=\"draining\"}").as_deref(),
            Some("1")
        );
        assert_eq!(get("frameworks{state=\"connected\"}").as_deref(), Some("1"));
        assert_eq!(
            get("frameworks{state=\"disconnected\"}").as_deref(),
            Some("2")
        );
        // Total over active agents only; allocated over all of them.
        assert_eq!(
            get("resources{resource=\"cpus\",kind=\"total\"}").as_deref(),
            Some("6.0")
        );
        assert_eq!(
            get("resources{resource=\"cpus\",kind=\"allocated\"}").as_deref(),
            Some("2.0")
        );
        assert_eq!(
            get("resources{resource=\"mem\",kind=\"total\"}").as_deref(),
            Some(format!("{:?}", 1536.0 * MIB).as_str())
        );
        assert_eq!(
            get("resources{resource=\"ports\",kind=\"total\"}").as_deref(),
            Some("20.0")
        );
        assert_eq!(
            get("resources{resource=\"disk\",kind=\"total\"}").as_deref(),
            Some("0.0")
        );
        // A resource that went away stops showing.
        m.set_cluster(&[], 0, 0, &[]);
        let text = m.encode();
        assert!(!text.contains("resource=\"ports\""), "{text}");
        assert!(
            text.contains("strata_allocator_agents{state=\"active\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn gather_refreshes_through_the_installed_hook() {
        let m = Metrics::new();
        assert!(m.gather().await.contains("strata_allocator_offers_total 0"));
        let hooked = m.clone();
        m.set_refresh(Box::new(move || {
            let hooked = hooked.clone();
            Box::pin(async move { hooked.offers_sent(5) })
        }));
        assert!(m.gather().await.contains("strata_allocator_offers_total 5"));
    }
}
