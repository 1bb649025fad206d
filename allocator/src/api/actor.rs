//! The actor: the one tokio task that owns the [`Core`].
//!
//! Stream tasks send [`Input`]s over a bounded mpsc channel; the actor applies them to the
//! core in arrival order, and after draining what is pending (at most [`MAX_BATCH`] inputs)
//! runs one allocation pass (coalescing), then delivers the core's commands to the
//! per-stream senders. A periodic tick (every `allocation_interval`) handles timeouts,
//! heartbeats and filter expiry. The clock is read only here, and handed to the core.
//!
//! Invariants: the core is touched by this task only; a command for a stream that is gone
//! is dropped (the stream task reports the end as a disconnect input); outbound channels are
//! unbounded so a slow stream never blocks the actor (dead peers are cut by HTTP/2
//! keepalive); on shutdown every sender is dropped, which ends every response stream.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_allocator_core::registry::{Registry, RestoreError};
use strata_allocator_core::{AllocatorConfig, Change, Command, ConnId, Core, CoreError};
use strata_proto::{
    AgentSummary, AllocatorMessage, Call, Event, FrameworkInfo, FrameworkSummary, GetStateResponse,
    ListTasksRequest, TaskStatus, TaskSummary, WatchEvent, agent_message, allocator_message, event,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;

use super::workloads::WorkloadBook;
use crate::metrics::Metrics;
use crate::store::Store;

/// Inputs applied per allocation pass at most, so ticks and queries are not starved.
pub(crate) const MAX_BATCH: usize = 1024;

/// The sending half of an agent's response stream.
pub(crate) type AgentTx = mpsc::UnboundedSender<Result<AllocatorMessage, Status>>;
/// The sending half of a framework's response stream.
pub(crate) type FrameworkTx = mpsc::UnboundedSender<Result<Event, Status>>;

/// What stream tasks and operator calls tell the actor.
#[derive(Debug)]
pub(crate) enum Input {
    AgentRegister {
        conn: ConnId,
        register: agent_message::Register,
        /// The stream's sender, with its first Register only.
        sender: Option<AgentTx>,
        /// Who the stream authenticated as.
        principal: Option<String>,
    },
    AgentHeartbeat {
        conn: ConnId,
    },
    AgentStatus {
        conn: ConnId,
        status: TaskStatus,
    },
    AgentClosed {
        conn: ConnId,
    },
    FrameworkSubscribe {
        conn: ConnId,
        info: FrameworkInfo,
        /// SUBSCRIBE's roles to start suppressed.
        suppressed_roles: Vec<String>,
        sender: FrameworkTx,
        /// Who the stream authenticated as.
        principal: Option<String>,
    },
    FrameworkCall {
        conn: ConnId,
        call: Call,
    },
    FrameworkClosed {
        conn: ConnId,
    },
    Query(Query),
    /// An operator action: runs on the core (with `now`) and replies through its own channel.
    Operate(Operation),
}

/// The body of an [`Operation`].
pub(crate) type OperationFn = dyn FnOnce(&mut Core, Duration) + Send;

/// An operator action run by the actor on the core.
pub(crate) struct Operation(pub(crate) Box<OperationFn>);

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Operation")
    }
}

/// Watch events buffered per watcher before a slow one misses some.
pub(crate) const WATCH_BUFFER: usize = 4096;

/// Cluster changes buffered per operator subscriber before a slow one lags (and its stream
/// ends).
pub(crate) const CHANGE_BUFFER: usize = 4096;

/// A change of the cluster as the Mesos operator event stream hears of it, numbered in the
/// order the actor saw them (from 1).
#[derive(Debug, Clone)]
pub(crate) struct Numbered {
    pub(crate) seq: u64,
    pub(crate) change: std::sync::Arc<Change>,
}

/// Operator reads, answered from the actor's state.
#[derive(Debug)]
pub(crate) enum Query {
    State(oneshot::Sender<GetStateResponse>),
    /// The state and the number of the last change it holds, for a subscriber of the
    /// changes: those numbered after it are news. Subscribe to the changes first.
    Snapshot(oneshot::Sender<(GetStateResponse, u64)>),
    /// Agents, and the ids of the draining and of the deactivated ones.
    Agents(oneshot::Sender<(Vec<AgentSummary>, Vec<String>, Vec<String>)>),
    Frameworks(oneshot::Sender<Vec<FrameworkSummary>>),
    Tasks(ListTasksRequest, oneshot::Sender<Vec<TaskSummary>>),
    /// Refresh the cluster gauges of the metrics; replies once done.
    Metrics(oneshot::Sender<()>),
}

/// Unix time read from a monotonic clock anchored when the allocator started, so it never
/// goes backwards.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_unix: Duration,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn now(&self) -> Duration {
        self.start_unix + self.start.elapsed()
    }
}

#[derive(Debug)]
pub(crate) struct Actor {
    core: Core,
    clock: Clock,
    started_at: Duration,
    agents: HashMap<ConnId, AgentTx>,
    frameworks: HashMap<ConnId, FrameworkTx>,
    watch: broadcast::Sender<WatchEvent>,
    /// Where the core's changes go (Mesos operator subscribers), and the last one's number.
    changes: broadcast::Sender<Numbered>,
    change_seq: u64,
    store: Box<dyn Store>,
    metrics: Metrics,
    /// Where registrations and subscriptions are audited.
    security: std::sync::Arc<crate::security::Security>,
    /// A replica's etcd lease: nothing is acted on once it is not surely held.
    lease: Option<strata_etcd::LeaseGuard>,
    /// What frameworks report they run (kept here, at the edge, not in the core).
    workloads: WorkloadBook,
}

impl Actor {
    /// The actor with the core rebuilt from `registry` (loaded from `store`).
    pub(crate) fn new(
        config: AllocatorConfig,
        watch: broadcast::Sender<WatchEvent>,
        store: Box<dyn Store>,
        registry: Registry,
    ) -> Result<Self, RestoreError> {
        let clock = Clock::new();
        let prefix = uuid::Uuid::new_v4().to_string();
        tracing::info!(
            id_prefix = %prefix,
            agents = registry.agents.len(),
            frameworks = registry.frameworks.len(),
            "allocator state created"
        );
        let mut core = Core::new(config, prefix);
        core.restore(clock.now(), registry)?;
        Ok(Self {
            core,
            clock,
            started_at: clock.now(),
            agents: HashMap::new(),
            frameworks: HashMap::new(),
            watch,
            changes: broadcast::channel(CHANGE_BUFFER).0,
            change_seq: 0,
            store,
            metrics: Metrics::default(),
            security: std::sync::Arc::new(crate::security::Security::open()),
            lease: None,
            workloads: WorkloadBook::default(),
        })
    }

    /// Acts only while `lease` is surely held (a replica that leads).
    pub(crate) fn with_lease(mut self, lease: Option<strata_etcd::LeaseGuard>) -> Self {
        self.lease = lease;
        self
    }

    /// Whether this allocator may act: always, unless it is a replica whose lease is no
    /// longer surely held (it was paused, or cut off from etcd, past its lease).
    fn may_act(&self) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        if lease.holds() {
            return true;
        }
        tracing::error!(
            "this replica's etcd lease is no longer surely held (it was paused or cut off from \
             etcd): it may no longer lead, so it stops without acting on anything"
        );
        false
    }

    /// The actor counting into `metrics` (instead of a handle nobody reads).
    pub(crate) fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sends the core's changes to `changes` (observed while it has receivers).
    pub(crate) fn with_changes(mut self, changes: broadcast::Sender<Numbered>) -> Self {
        self.changes = changes;
        self
    }

    /// Keeps the frameworks' workload reports in `workloads`.
    pub(crate) fn with_workloads(mut self, workloads: WorkloadBook) -> Self {
        self.workloads = workloads;
        self
    }

    /// Audits registrations and subscriptions with `security`.
    pub(crate) fn with_security(
        mut self,
        security: std::sync::Arc<crate::security::Security>,
    ) -> Self {
        self.security = security;
        self
    }

    /// Runs until `stop` turns true or every input sender is gone.
    pub(crate) async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut stop: watch::Receiver<bool>,
    ) {
        let interval = self.core.config().allocation_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                _ = ticker.tick() => {
                    if !self.may_act() {
                        break;
                    }
                    let now = self.clock.now();
                    let round = std::time::Instant::now();
                    self.core.tick(now);
                    self.metrics.allocation_round(round.elapsed());
                    if !self.dispatch() {
                        break;
                    }
                }
                input = inputs.recv() => {
                    let Some(input) = input else { break };
                    if !self.may_act() {
                        break;
                    }
                    self.handle(input);
                    for _ in 1..MAX_BATCH {
                        match inputs.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                    let now = self.clock.now();
                    let round = std::time::Instant::now();
                    self.core.allocate(now);
                    self.metrics.allocation_round(round.elapsed());
                    if !self.dispatch() {
                        break;
                    }
                }
            }
        }
        tracing::info!(
            agents = self.agents.len(),
            frameworks = self.frameworks.len(),
            "allocator stopping; closing every stream"
        );
    }

    fn handle(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::AgentRegister {
                conn,
                register,
                sender,
                principal,
            } => {
                if let Some(sender) = sender {
                    self.agents.insert(conn, sender);
                }
                let id = register
                    .info
                    .as_ref()
                    .map(|i| i.id.clone())
                    .unwrap_or_default();
                let result = self
                    .core
                    .agent_register_as(now, conn, register, principal.clone());
                let refused = result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
                let object = result.as_ref().map_or(id, |id| id.0.clone());
                self.security
                    .audit(principal.as_deref(), "register_agent", &object, refused);
                if let Err(e) = result {
                    tracing::warn!(%conn, error = %e, "agent registration refused");
                    if let Some(tx) = self.agents.remove(&conn) {
                        let _ = tx.send(Err(status_for(&e)));
                    }
                }
            }
            Input::AgentHeartbeat { conn } => self.core.agent_heartbeat(now, conn),
            Input::AgentStatus { conn, status } => self.core.agent_status_update(now, conn, status),
            Input::AgentClosed { conn } => {
                self.agents.remove(&conn);
                self.core.agent_disconnected(now, conn);
            }
            Input::FrameworkSubscribe {
                conn,
                info,
                suppressed_roles,
                sender,
                principal,
            } => {
                self.frameworks.insert(conn, sender);
                let id = info.id.clone();
                let result = self.core.framework_subscribe_as(
                    now,
                    conn,
                    info,
                    principal.clone(),
                    suppressed_roles,
                );
                let refused = result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
                let object = result.as_ref().map_or(id, |id| id.0.clone());
                self.security
                    .audit(principal.as_deref(), "subscribe", &object, refused);
                if let Err(e) = result {
                    tracing::warn!(%conn, error = %e, "subscription refused");
                    if let Some(tx) = self.frameworks.remove(&conn) {
                        let _ = tx.send(Err(status_for(&e)));
                    }
                }
            }
            Input::FrameworkCall { conn, call } => {
                self.metrics.framework_call(&call);
                if let Some(strata_proto::call::Call::Workloads(report)) = call.call {
                    self.workloads_report(conn, &call.framework_id, report);
                } else {
                    self.core.framework_call(now, conn, call);
                }
            }
            Input::FrameworkClosed { conn } => {
                self.frameworks.remove(&conn);
                self.core.framework_disconnected(now, conn);
            }
            Input::Query(query) => self.answer(query),
            Input::Operate(op) => (op.0)(&mut self.core, now),
        }
    }

    /// A framework's report of what it runs: kept (replacing its last) when the stream is
    /// subscribed as the framework the call names and the report is within bounds; otherwise
    /// refused with an ERROR event saying why, and nothing is kept.
    fn workloads_report(
        &mut self,
        conn: ConnId,
        framework_id: &str,
        report: strata_proto::call::Workloads,
    ) {
        let Some(subscribed) = self.core.framework_on(conn) else {
            tracing::warn!(%conn, "workloads report on a stream that is not subscribed; ignored");
            return;
        };
        let refusal = if subscribed == framework_id {
            self.workloads
                .report(framework_id, report.workloads)
                .err()
                .map(|e| format!("workloads report refused, nothing of it kept: {e}"))
        } else {
            Some(format!(
                "call names framework {:?} but this stream is subscribed as framework                  {subscribed}: every call must carry the framework_id from SUBSCRIBED",
                strata_proto::ids::shorten(framework_id, 64)
            ))
        };
        if let Some(message) = refusal {
            tracing::warn!(%conn, framework_id = %subscribed, %message, "workloads report refused");
            if let Some(tx) = self.frameworks.get(&conn) {
                let error = Event {
                    event: Some(event::Event::Error(event::Error { message })),
                };
                let _ = tx.send(Ok(error));
            }
        }
    }

    /// The whole state, as GetState and GET_STATE show it.
    fn state(&self) -> GetStateResponse {
        GetStateResponse {
            agents: self.core.agent_summaries(),
            frameworks: self.core.framework_summaries(),
            tasks: self.core.task_summaries(&ListTasksRequest {
                include_terminal: true,
                ..ListTasksRequest::default()
            }),
            allocator_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at.as_secs_f64(),
            // Usage is kept at the edge; the service adds it.
            usage: Vec::new(),
            reservations: self.core.reservation_summaries(),
            completed_frameworks: self.core.completed_framework_summaries(),
        }
    }

    /// Sends the changes the core recorded to the subscribers, numbered; observes on while
    /// anyone listens.
    fn publish_changes(&mut self) {
        for change in self.core.take_changes() {
            self.change_seq += 1;
            // No receiver left: nobody to tell; observing stops below.
            let _ = self.changes.send(Numbered {
                seq: self.change_seq,
                change: std::sync::Arc::new(change),
            });
        }
        self.core.observe(self.changes.receiver_count() > 0);
    }

    fn answer(&mut self, query: Query) {
        // A dropped receiver means the operator call went away; nothing to do.
        match query {
            Query::State(reply) => {
                let _ = reply.send(self.state());
            }
            Query::Snapshot(reply) => {
                // What happened so far is in the state: sent before it, numbered up to it.
                self.publish_changes();
                self.core.observe(true);
                let _ = reply.send((self.state(), self.change_seq));
            }
            Query::Agents(reply) => {
                let (draining, deactivated) = self.core.agent_modes();
                let _ = reply.send((self.core.agent_summaries(), draining, deactivated));
            }
            Query::Frameworks(reply) => {
                let _ = reply.send(self.core.framework_summaries());
            }
            Query::Tasks(request, reply) => {
                let _ = reply.send(self.core.task_summaries(&request));
            }
            Query::Metrics(reply) => {
                let (draining, deactivated) = self.core.agent_modes();
                self.metrics.set_cluster(
                    &self.core.agent_summaries(),
                    draining.len(),
                    deactivated.len(),
                    &self.core.framework_summaries(),
                );
                let _ = reply.send(());
            }
        }
    }

    /// Delivers the core's commands to the streams; false when this replica must stop (its
    /// lease ran out meanwhile: nothing was sent).
    fn dispatch(&mut self) -> bool {
        // The registry first: what frameworks and agents are told is kept.
        let ops = self.core.take_registry_ops();
        if !ops.is_empty()
            && let Err(e) = self.store.apply(&ops)
        {
            tracing::error!(error = %e, changes = ops.len(), "cannot write the registry");
        }
        // Writing waits for etcd until the lease is no longer surely held at most: a
        // replica cut off from etcd meanwhile may have been replaced, so it tells nobody
        // what it decided.
        if !ops.is_empty() && !self.may_act() {
            let dropped = self.core.take_commands().len();
            tracing::warn!(
                dropped,
                "commands not sent: the lease ran out while the registry was being written"
            );
            return false;
        }
        self.publish_changes();
        // Reports of removed frameworks go (a framework in its failover timeout keeps its).
        let core = &self.core;
        self.workloads
            .retain(|id| core.framework_principal(id).is_some());
        let watching = self.watch.receiver_count() > 0;
        let now = self.clock.now();
        for command in self.core.take_commands() {
            // Offers leave the core in compact form; their OFFERS event is made here.
            let command = command.into_wire();
            self.metrics.command(&command);
            if watching && let Some(e) = watch_event(now, &command) {
                let _ = self.watch.send(e);
            }
            match command {
                Command::ToAgent { conn, message } => {
                    if let Some(tx) = self.agents.get(&conn) {
                        let message = AllocatorMessage {
                            message: Some(message),
                        };
                        if tx.send(Ok(message)).is_err() {
                            // The stream is gone; its task reports the end.
                            self.agents.remove(&conn);
                        }
                    }
                }
                Command::ToFramework { conn, event } => {
                    if let Some(tx) = self.frameworks.get(&conn) {
                        let event = Event { event: Some(event) };
                        if tx.send(Ok(event)).is_err() {
                            self.frameworks.remove(&conn);
                        }
                    }
                }
                Command::Close { conn } => {
                    tracing::debug!(%conn, "closing stream");
                    self.agents.remove(&conn);
                    self.frameworks.remove(&conn);
                }
                // Made a ToFramework by `into_wire` above.
                Command::Offers { .. } => {}
            }
        }
        true
    }
}

/// What an operator watching the cluster hears about a command, if anything.
fn watch_event(now: Duration, command: &Command) -> Option<WatchEvent> {
    let base = WatchEvent {
        timestamp: now.as_secs_f64(),
        ..WatchEvent::default()
    };
    match command {
        Command::ToAgent { message, .. } => match message {
            allocator_message::Message::Registered(r) => Some(WatchEvent {
                kind: "agent_registered".to_owned(),
                agent_id: r.agent_id.clone(),
                ..base
            }),
            allocator_message::Message::LaunchTask(l) => {
                let task = l.task.as_ref()?;
                Some(WatchEvent {
                    kind: "task_launched".to_owned(),
                    agent_id: task.agent_id.clone(),
                    framework_id: l.framework_id.clone(),
                    task_id: task.task_id.clone(),
                    ..base
                })
            }
            allocator_message::Message::KillTask(k) => Some(WatchEvent {
                kind: "task_kill".to_owned(),
                framework_id: k.framework_id.clone(),
                task_id: k.task_id.clone(),
                ..base
            }),
            _ => None,
        },
        Command::ToFramework { event, .. } => match event {
            event::Event::Subscribed(s) => Some(WatchEvent {
                kind: "framework_subscribed".to_owned(),
                framework_id: s.framework_id.clone(),
                ..base
            }),
            event::Event::Update(u) => {
                let s = u.status.as_ref()?;
                Some(WatchEvent {
                    kind: "task_state".to_owned(),
                    agent_id: s.agent_id.clone(),
                    framework_id: s.framework_id.clone(),
                    task_id: s.task_id.clone(),
                    message: format!("{} {}", s.state().label(), s.message),
                    ..base
                })
            }
            event::Event::Failure(f) => Some(WatchEvent {
                kind: "agent_unreachable".to_owned(),
                agent_id: f.agent_id.clone(),
                ..base
            }),
            _ => None,
        },
        Command::Close { .. } | Command::Offers { .. } => None,
    }
}

/// The gRPC status a refused registration or subscription ends its stream with.
fn status_for(error: &CoreError) -> Status {
    match error {
        CoreError::UnknownFramework { .. } => Status::not_found(error.to_string()),
        CoreError::TooManyFrameworks { .. } | CoreError::TooManyFrameworksOfPrincipal { .. } => {
            Status::resource_exhausted(error.to_string())
        }
        CoreError::Denied(denied) => crate::security::denied_status(denied),
        CoreError::IdOfAnotherPrincipal { .. } => Status::permission_denied(error.to_string()),
        CoreError::InvalidAgentResources { .. }
        | CoreError::AgentIdChanged { .. }
        | CoreError::InvalidFrameworkRole { .. }
        | CoreError::InvalidFrameworkInfo { .. }
        | CoreError::InvalidAgentId { .. } => Status::invalid_argument(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use strata_allocator_core::registry::RegistryOp;
    use strata_proto::FrameworkInfo;

    use super::*;
    use crate::store::StoreError;

    /// A store whose writes take `0` (as an etcd write waits on a cluster it is cut off from).
    #[derive(Debug)]
    struct SlowStore(Duration);

    impl Store for SlowStore {
        fn load(&self) -> Result<Registry, StoreError> {
            Ok(Registry::default())
        }

        fn apply(&mut self, _ops: &[RegistryOp]) -> Result<(), StoreError> {
            std::thread::sleep(self.0);
            Ok(())
        }
    }

    /// A subscription writes the framework to the registry, then answers SUBSCRIBED: a
    /// replica whose lease ran out during the write answers nothing and stops; with the write
    /// quick, it answers.
    #[tokio::test]
    async fn a_replica_whose_lease_ran_out_during_a_registry_write_sends_nothing() {
        for (write, answers) in [(Duration::ZERO, true), (Duration::from_millis(400), false)] {
            let (watch, _) = broadcast::channel(16);
            let store = Box::new(SlowStore(write));
            let mut actor = Actor::new(
                AllocatorConfig::default(),
                watch,
                store,
                Registry::default(),
            )
            .expect("actor")
            .with_lease(Some(strata_etcd::LeaseGuard::granted_now(
                Duration::from_millis(200),
            )));
            let mut rx = subscribe_f(&mut actor);
            assert_eq!(actor.dispatch(), answers, "write of {write:?}");
            assert_eq!(rx.try_recv().is_ok(), answers, "write of {write:?}");
        }
    }

    /// Subscribes a framework named "f" on connection 1; its stream's receiver.
    fn subscribe_f(actor: &mut Actor) -> mpsc::UnboundedReceiver<Result<Event, Status>> {
        let (tx, rx) = mpsc::unbounded_channel();
        actor.handle(Input::FrameworkSubscribe {
            conn: ConnId(1),
            info: FrameworkInfo {
                name: "f".to_owned(),
                ..FrameworkInfo::default()
            },
            suppressed_roles: Vec::new(),
            sender: tx,
            principal: None,
        });
        rx
    }

    fn report(framework_id: &str, n: usize) -> Input {
        let workloads = (0..n)
            .map(|i| strata_proto::Workload {
                kind: "job".to_owned(),
                id: format!("j{i}"),
                ..strata_proto::Workload::default()
            })
            .collect();
        Input::FrameworkCall {
            conn: ConnId(1),
            call: Call {
                framework_id: framework_id.to_owned(),
                call: Some(strata_proto::call::Call::Workloads(
                    strata_proto::call::Workloads { workloads },
                )),
            },
        }
    }

    /// A workload report is kept only from a stream subscribed as the framework it names and
    /// within the bounds; a refused one is answered with an ERROR and keeps nothing; a report
    /// on a stream that never subscribed is dropped.
    #[tokio::test]
    async fn workload_reports_are_kept_only_from_their_subscribed_framework() {
        let (watch, _) = broadcast::channel(16);
        let mut actor = Actor::new(
            AllocatorConfig::default(),
            watch,
            Box::new(crate::store::MemoryStore::default()),
            Registry::default(),
        )
        .expect("actor");
        let book = actor.workloads.clone();
        // Not subscribed: dropped, nothing kept, nobody to answer.
        actor.handle(report("f-none", 1));
        assert!(book.all().is_empty());

        let mut rx = subscribe_f(&mut actor);
        assert!(actor.dispatch());
        let Ok(Ok(Event {
            event: Some(event::Event::Subscribed(s)),
        })) = rx.try_recv()
        else {
            panic!("SUBSCRIBED first")
        };
        let id = s.framework_id;
        actor.handle(report(&id, 2));
        assert_eq!(book.all()[&id].len(), 2);
        // Over the bound: an ERROR saying the limit, the last report kept.
        actor.handle(report(&id, super::super::workloads::MAX_WORKLOADS + 1));
        let Ok(Ok(Event {
            event: Some(event::Event::Error(e)),
        })) = rx.try_recv()
        else {
            panic!("an ERROR")
        };
        assert!(e.message.contains("at most 1000"), "{}", e.message);
        assert_eq!(book.all()[&id].len(), 2);
        // Naming another framework: refused.
        actor.handle(report("someone-else", 1));
        assert!(matches!(
            rx.try_recv(),
            Ok(Ok(Event {
                event: Some(event::Event::Error(_))
            }))
        ));
        assert!(!book.all().contains_key("someone-else"));
        // The framework goes (failover timeout 0): so does its report.
        actor.handle(Input::FrameworkClosed { conn: ConnId(1) });
        assert!(actor.dispatch());
        assert!(book.all().is_empty());
    }
}
