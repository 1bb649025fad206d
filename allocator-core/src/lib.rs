//! The allocator core: a pure, synchronous state machine with an injected clock.
//!
//! Events go in as method calls ([`Core::agent_register`], [`Core::framework_call`],
//! [`Core::tick`], ...), each given `now`, and the messages to send come out as [`Command`]s
//! collected by [`Core::take_commands`]. There is no I/O, no async and no clock read inside
//! this crate, so every behaviour is unit-tested directly (see `tests.rs`). The crate
//! boundary keeps it so: its dependencies are strata-proto (the messages), serde, thiserror,
//! tracing and foldhash, and `clippy.toml` beside its manifest disallows clock reads and
//! sleeps (`cargo clippy` fails on them). The edge (`strata-allocator`: tonic services, the
//! actor that owns the core, the redb store, metrics) re-exports it as
//! `strata_allocator::core`. `now` is a [`Duration`] since the Unix epoch taken from a
//! monotonic clock by the caller; it must never go backwards.
//!
//! Frameworks and tasks live in maps keyed by id; agents in a table by slot (the order they
//! were first seen; allocation passes reach them by slot) with an index by id; offers, whose
//! ids are numbers (`<prefix>-O<n>` on the wire), in a map by number. Offers leave the core
//! as [`Command::Offers`] in compact form; [`Command::into_wire`] makes the OFFERS event the
//! edge sends. The edge numbers each stream with a [`ConnId`]; the core maps streams to
//! agents and frameworks, so an event from a stream that has been replaced (agent
//! re-registered elsewhere, framework failed over) is ignored.
//!
//! Invariants (checked by [`Core::check_invariants`] in tests):
//! - per agent, `allocated` is the sum of the resources of its active tasks, `offered` is the
//!   sum of its outstanding offers (several at once, to different roles, never sharing a
//!   port or set item), `allocated + offered ⊆ total` and `free` is the remainder: nothing
//!   is created or lost; `dynamic` (its dynamic reservations) is within `total`;
//! - per framework, `allocated` is the sum of its active tasks on reachable agents and
//!   `offered` the sum of its outstanding offers, scalars only (ports of different agents
//!   are different ports, so aggregates over agents hold scalar quantities); `by_role`
//!   splits the two by the role each task or offer is allocated to;
//! - the cluster total (the DRF denominator) is the sum of the scalar totals of reachable
//!   agents;
//! - a task is active (in `tasks`, counted in allocations) until a terminal update arrives or
//!   its framework is removed; then it moves to the bounded terminal history;
//! - only agents that are connected, active (not drained or deactivated by the operator)
//!   and have allocatable free resources are in `offerable`;
//! - every change to what must survive a restart is recorded as a registry op (see
//!   [`registry`]).

mod agents;
mod allocation;
pub mod changes;
pub mod config;
mod frameworks;
pub mod ids;
mod invariants;
pub mod limits;
pub mod operator;
mod recovery;
pub mod registry;
pub mod resources;
pub mod roles;
mod tasks;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_auth;
#[cfg(test)]
mod tests_headroom;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_props;
#[cfg(test)]
mod tests_recovery;
#[cfg(test)]
mod tests_roles;
#[cfg(test)]
mod tests_update;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strata_proto::{
    Attribute, TaskInfo, TaskReason, TaskSource, TaskState, TaskStatus, allocator_message, event,
};

pub use self::changes::Change;
pub use self::config::{AllocatorConfig, ConfigError};
pub use self::ids::{AgentId, ConnId, FrameworkId, OfferId, TaskId, TaskKey};
pub use self::resources::{Name, RangeSet, ResourceError, Resources};
pub use self::roles::{DEFAULT_ROLE, Quota, RoleError};
use self::tasks::History;
pub use strata_auth::{Acls, Action, Policy};

/// The core's id-keyed maps: a fast, randomly seeded hasher (ids share a long prefix, so
/// SipHash over them dominated allocation rounds); iteration order is unspecified either way.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A set with the hasher of [`FastMap`]; code that acts on its members in turn sorts them
/// first, so what it does stays deterministic.
pub(crate) type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Why the core refused an agent registration or a framework subscription.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoreError {
    /// SUBSCRIBE named a framework id the allocator does not know.
    #[error(
        "unknown framework id {framework_id}: subscribe without an id to register a new framework"
    )]
    UnknownFramework {
        /// The id given.
        framework_id: String,
    },
    /// SUBSCRIBE described the framework with a field out of bounds.
    #[error("cannot subscribe: {reason}")]
    InvalidFrameworkInfo {
        /// What is out of bounds.
        reason: String,
    },
    /// SUBSCRIBE would register a framework beyond the allocator's limit.
    #[error(
        "cannot register another framework: {max} are registered, the most this allocator \
         allows (--max-frameworks); tear down frameworks that are gone"
    )]
    TooManyFrameworks {
        /// The limit.
        max: usize,
    },
    /// Register named an agent id that breaks the id rule.
    #[error("{reason}")]
    InvalidAgentId {
        /// The rule broken.
        reason: String,
    },
    /// The policy refused the registration or subscription.
    #[error("{0}")]
    Denied(#[from] strata_auth::Denied),
    /// A framework or agent id is bound to another principal.
    #[error(
        "{what} {id} belongs to another principal: only the principal that registered it may \
         use it again (register without an id for a new one)"
    )]
    IdOfAnotherPrincipal {
        /// "framework" or "agent".
        what: &'static str,
        /// The id.
        id: String,
    },
    /// A principal would register more frameworks than allowed.
    #[error(
        "principal {principal:?} has {max} frameworks registered, the most allowed \
         (--max-frameworks-per-principal); tear down frameworks that are gone"
    )]
    TooManyFrameworksOfPrincipal {
        /// The principal.
        principal: String,
        /// The limit.
        max: usize,
    },
    /// An agent registered with resources that cannot be parsed.
    #[error("agent {hostname:?} registered with invalid resources: {source}")]
    InvalidAgentResources {
        /// The agent's hostname.
        hostname: String,
        /// What was wrong.
        source: ResourceError,
    },
    /// SUBSCRIBE named an invalid role.
    #[error("framework {name:?} cannot subscribe: {source}")]
    InvalidFrameworkRole {
        /// The framework's name.
        name: String,
        /// What was wrong.
        source: RoleError,
    },
    /// A second Register on one stream named a different agent id.
    #[error(
        "this stream is registered as agent {registered} but Register names agent {requested}: \
         open a new stream to register another agent"
    )]
    AgentIdChanged {
        /// The agent the stream belongs to.
        registered: AgentId,
        /// The id in the new Register.
        requested: String,
    },
}

/// A message the edge must deliver.
// Commands live only from the core's outbox to the edge, moved once each: boxing the large
// launch message would cost an allocation per task for no gain.
#[expect(clippy::large_enum_variant, reason = "see the comment above")]
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Send a message to the agent on stream `conn`.
    ToAgent {
        /// The agent's stream.
        conn: ConnId,
        /// What to send.
        message: allocator_message::Message,
    },
    /// Send an event to the framework on stream `conn`.
    ToFramework {
        /// The framework's stream.
        conn: ConnId,
        /// What to send.
        event: event::Event,
    },
    /// End stream `conn` (the core has already forgotten it).
    Close {
        /// The stream to end.
        conn: ConnId,
    },
    /// Send offers to the framework on stream `conn`: one OFFERS event, built by
    /// [`Command::into_wire`] when the edge sends it (an allocation round makes many offers,
    /// and their wire form is made once, at the edge).
    Offers {
        /// The framework's stream.
        conn: ConnId,
        /// The offers.
        offers: OfferBatch,
    },
}

impl Command {
    /// The command in the form the edge sends: [`Command::Offers`] becomes a
    /// [`Command::ToFramework`] with an OFFERS event; the others are unchanged.
    pub fn into_wire(self) -> Self {
        match self {
            Self::Offers { conn, offers } => Self::ToFramework {
                conn,
                event: offers.to_event(),
            },
            other => other,
        }
    }
}

/// An agent as its offers show it (id, hostname, attributes), shared by those offers.
#[derive(Debug, Default, PartialEq)]
struct AgentCard {
    agent_id: String,
    hostname: String,
    attributes: Vec<Attribute>,
}

/// One offer of an [`OfferBatch`], in the core's compact form.
#[derive(Clone, Debug, PartialEq)]
struct OfferOut {
    id: OfferId,
    agent: Arc<AgentCard>,
    role: Name,
    resources: Resources,
}

/// Offers made to one framework in one allocation pass (at most one OFFERS event's worth).
#[derive(Clone, Debug, PartialEq)]
pub struct OfferBatch {
    /// Offer ids on the wire are this prefix and the number.
    offer_prefix: Arc<str>,
    framework_id: Arc<FrameworkId>,
    offers: Vec<OfferOut>,
}

impl OfferBatch {
    /// How many offers it holds.
    pub fn len(&self) -> usize {
        self.offers.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }

    /// The offers in their wire form.
    pub fn to_proto(&self) -> Vec<strata_proto::Offer> {
        self.offers
            .iter()
            .map(|o| strata_proto::Offer {
                id: format!("{}{}", self.offer_prefix, o.id.0),
                framework_id: self.framework_id.0.clone(),
                agent_id: o.agent.agent_id.clone(),
                hostname: o.agent.hostname.clone(),
                resources: o.resources.to_proto_allocated(&o.role),
                attributes: o.agent.attributes.clone(),
                allocation_role: o.role.to_string(),
            })
            .collect()
    }

    /// The OFFERS event the framework receives.
    pub fn to_event(&self) -> event::Event {
        event::Event::Offers(event::Offers {
            offers: self.to_proto(),
        })
    }
}

/// Where an agent's stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Registered on this stream.
    Connected(ConnId),
    /// The stream ended at `since`; tasks are reported lost after the reconnect timeout.
    Disconnected { since: Duration },
    /// Gone long enough that its tasks were reported; its resources left the cluster.
    Unreachable { since: Duration },
}

/// What the operator allows on an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// Offered as usual.
    Active,
    /// Drained: no new offers; its tasks were told to stop.
    Draining,
    /// Deactivated: no new offers; its tasks keep running.
    Deactivated,
}

#[derive(Debug)]
struct Agent {
    id: AgentId,
    /// Its place in [`AgentTable`], set when it is inserted.
    slot: usize,
    hostname: String,
    attributes: Vec<Attribute>,
    /// Its id, hostname and attributes as its offers carry them.
    card: Arc<AgentCard>,
    version: String,
    /// Its own HTTP endpoint ("host:port"), empty when it serves none.
    endpoint: String,
    /// What it registered with, plus the dynamic reservations applied.
    total: Resources,
    /// The dynamic reservations made on it (a part of `total`), kept across its restarts.
    dynamic: Resources,
    /// Sum of the resources of the active tasks on this agent.
    allocated: Resources,
    /// Its outstanding offers (one per role at most in a pass; few) and their sum.
    offers: Vec<OfferId>,
    offered: Resources,
    /// `total - allocated - offered`, kept by `refresh_offerable` after every change.
    free: Resources,
    mode: AgentMode,
    link: Link,
    registered_at: Duration,
    last_seen: Duration,
    tasks: BTreeSet<TaskKey>,
    /// The principal its id is bound to: only it may register with the id again.
    principal: Option<String>,
    /// The minimum refusals of what was given back on it since the last tick.
    declined: Declined,
}

/// Who gave an agent's resources back (a DECLINE, or an ACCEPT that launched nothing or
/// was rejected) since the tick whose generation is `tick`: (framework serial, role)
/// pairs, refused the agent until the next tick whatever their refuse_seconds (see
/// [`allocation`]'s filters). Stale once the tick generation moves on, so a tick forgets
/// them all in O(1) and no refuse filter is made for a refuse-0 DECLINE.
#[derive(Debug, Default)]
struct Declined {
    tick: u64,
    by: Vec<(u64, Name)>,
}

impl Agent {
    fn conn(&self) -> Option<ConnId> {
        match self.link {
            Link::Connected(conn) => Some(conn),
            _ => None,
        }
    }

    /// Whether the agent's resources count in the cluster (connected or within the
    /// reconnect window).
    fn reachable(&self) -> bool {
        !matches!(self.link, Link::Unreachable { .. })
    }
}

/// The agents in the order they were first seen (the core never forgets an agent), with an
/// index by id: allocation passes reach them by slot, without hashing ids.
#[derive(Debug, Default)]
struct AgentTable {
    slots: Vec<Agent>,
    index: FastMap<AgentId, usize>,
}

impl AgentTable {
    fn slot(&self, id: &AgentId) -> Option<usize> {
        self.index.get(id).copied()
    }

    fn get(&self, id: &AgentId) -> Option<&Agent> {
        self.slot(id).map(|s| &self.slots[s])
    }

    fn get_mut(&mut self, id: &AgentId) -> Option<&mut Agent> {
        self.slot(id).map(|s| &mut self.slots[s])
    }

    fn contains_key(&self, id: &AgentId) -> bool {
        self.index.contains_key(id)
    }

    /// Adds an agent not yet in the table; returns its slot.
    fn insert(&mut self, mut agent: Agent) -> usize {
        debug_assert!(!self.index.contains_key(&agent.id), "agent inserted twice");
        let slot = self.slots.len();
        agent.slot = slot;
        self.index.insert(agent.id.clone(), slot);
        self.slots.push(agent);
        slot
    }

    fn keys(&self) -> impl Iterator<Item = &AgentId> {
        self.slots.iter().map(|a| &a.id)
    }

    fn values(&self) -> std::slice::Iter<'_, Agent> {
        self.slots.iter()
    }
}

impl std::ops::Index<&AgentId> for AgentTable {
    type Output = Agent;

    fn index(&self, id: &AgentId) -> &Agent {
        self.get(id).expect("agent exists")
    }
}

/// A (framework, role, agent) refusal: resources within `resources` on the agent are not
/// offered to the framework in `role` before `until`. `role` is the role of the offer
/// declined (or accepted): the filter refuses only that role, and a REVIVE naming roles
/// clears only those roles' filters.
#[derive(Debug)]
struct Filter {
    role: Name,
    resources: Resources,
    until: Duration,
}

/// Sets of quantities (scalar name, milli-units), at least one of which an offer must hold.
pub(crate) type MinAllocatable = Vec<Vec<(String, i64)>>;

/// FrameworkInfo.offer_filters as the core keeps them.
pub(crate) fn min_allocatable_of(
    info: &strata_proto::FrameworkInfo,
) -> BTreeMap<String, MinAllocatable> {
    info.offer_filters
        .iter()
        .map(|(role, min)| {
            let sets = min
                .quantities
                .iter()
                .map(|set| {
                    set.quantities
                        .iter()
                        .map(|(name, value)| (name.clone(), (value * 1000.0).round() as i64))
                        .collect()
                })
                .collect();
            (role.clone(), sets)
        })
        .filter(|(_, sets): &(String, MinAllocatable)| !sets.is_empty())
        .collect()
}

/// How many removed frameworks are remembered (Mesos' `--max_completed_frameworks`).
pub const MAX_COMPLETED_FRAMEWORKS: usize = 50;

#[derive(Debug)]
struct Framework {
    id: FrameworkId,
    name: String,
    /// The user its FrameworkInfo names (shown in the state; tasks name their own).
    user: String,
    /// Where it serves its web UI (FrameworkInfo.webui_url, checked by `webui_url`).
    webui_url: String,
    /// Per role, the least an offer must hold (FrameworkInfo.offer_filters).
    min_allocatable: BTreeMap<String, MinAllocatable>,
    roles: Vec<String>,
    failover_timeout: Duration,
    partition_aware: bool,
    /// It declared GPU_RESOURCES: it may be offered agents that have GPUs.
    gpu_resources: bool,
    conn: Option<ConnId>,
    disconnected_at: Option<Duration>,
    /// Roles for which it asked for no offers (SUPPRESS).
    suppressed: BTreeSet<String>,
    /// Its refuse filters by agent (the latest refusal of each agent and role).
    filters: FastMap<AgentId, Vec<Filter>>,
    offers: FastSet<OfferId>,
    /// Sum of the resources of its active tasks on reachable agents.
    allocated: Resources,
    /// Sum of its outstanding offers.
    offered: Resources,
    /// Per role: allocated plus offered (scalars), what its share in the role is made of.
    by_role: BTreeMap<String, Resources>,
    /// Its active tasks (including those on unreachable agents).
    tasks: BTreeSet<TaskId>,
    registered_at: Duration,
    last_heartbeat: Duration,
    /// The principal its id is bound to: only it may subscribe with the id again.
    principal: Option<String>,
    /// When it was last offered to, as [`Core::offer_seq`] counts (0: never): among
    /// frameworks of a role at equal share, the least recently offered goes first.
    last_offered: u64,
    /// A number no other framework record of this core has: how minimum refusals
    /// ([`Declined`]) name it.
    serial: u64,
}

#[derive(Debug)]
struct Offer {
    /// Shared by the offers of one pass to the framework.
    framework_id: Arc<FrameworkId>,
    /// Its agent's slot in [`AgentTable`].
    agent: usize,
    /// The role it is made to.
    role: Name,
    resources: Resources,
    /// When it was made (for the offer timeout).
    made_at: Duration,
}

#[derive(Clone, Debug)]
struct Task {
    framework_id: FrameworkId,
    id: TaskId,
    agent_id: AgentId,
    /// The role its resources are allocated to (its offer's role).
    role: String,
    info: TaskInfo,
    resources: Resources,
    /// The latest state the agent reported (STAGING until the first update), or the terminal
    /// state the allocator decided.
    state: TaskState,
    reason: TaskReason,
    message: String,
    exit_code: Option<i32>,
    /// The latest health check result its agent reported, if the task has a check.
    healthy: Option<bool>,
    /// Its agent is unreachable; frameworks were told UNREACHABLE (or LOST).
    unreachable: bool,
    /// A KILL is pending for an agent that is not connected; resent when it re-registers.
    kill: Option<Option<f64>>,
    launched_at: Duration,
    updated_at: Duration,
}

/// The allocator's whole state; see the module documentation.
#[derive(Debug)]
pub struct Core {
    config: AllocatorConfig,
    prefix: String,
    /// `<prefix>-O`: offer ids on the wire are this and the offer's number.
    offer_prefix: Arc<str>,
    next_agent: u64,
    next_framework: u64,
    /// The serial the next framework record gets.
    next_framework_serial: u64,
    /// Counts ticks: the generation of the minimum refusals ([`Declined`]) still in force.
    tick_generation: u64,
    next_offer: u64,
    agents: AgentTable,
    agent_conns: FastMap<ConnId, AgentId>,
    frameworks: FastMap<FrameworkId, Framework>,
    framework_conns: FastMap<ConnId, FrameworkId>,
    /// By id: new offers go in at the end (ids only grow), so a pass's many inserts stay in
    /// the few nodes last touched.
    offers: BTreeMap<OfferId, Offer>,
    tasks: FastMap<TaskKey, Task>,
    history: History,
    /// Sum of the totals of reachable agents: the DRF denominator.
    cluster_total: Resources,
    /// Connected agents with allocatable free resources and no outstanding offer.
    offerable: Vec<bool>,
    /// Slots by agent id, the order passes visit agents in, and each slot's place in it.
    agent_order: (Vec<usize>, Vec<usize>),
    /// Slots added since, placed in `agent_order` by the next pass.
    unordered: Vec<usize>,
    /// Agents whose free resources changed since the last allocation.
    pending_agents: Vec<usize>,
    /// Which slots are in `pending_agents`.
    pending: Vec<bool>,
    /// Demand changed (a framework subscribed or revived, a tick): consider every agent.
    full_allocation: bool,
    /// The latest frameworks removed (torn down, or gone past their failover timeout), at
    /// most [`MAX_COMPLETED_FRAMEWORKS`], oldest first: Mesos' `completed_frameworks`.
    completed_frameworks: std::collections::VecDeque<strata_proto::FrameworkSummary>,
    /// Role weights other than 1.
    weights: BTreeMap<String, f64>,
    /// Role quotas.
    quotas: BTreeMap<String, Quota>,
    /// When [`Core::tick`] last ran: refusals last at least until the next one.
    last_tick: Option<Duration>,
    /// Counts offers made (one step per offer): when frameworks and roles were last
    /// offered to, for breaking ties between equal shares.
    offer_seq: u64,
    /// When each role (or an ancestor of one) with demand in the latest pass was last
    /// offered to, as [`Core::offer_seq`] counts: among roles at equal share, the least
    /// recently offered goes first.
    role_offered: BTreeMap<String, u64>,
    /// The total of the agent registered last: the next one shares its ports' storage when
    /// they are the same (see [`Resources::share_items_with`]).
    last_total: Resources,
    /// Agents restored from the registry that have not re-registered yet.
    known_agents: FastMap<AgentId, registry::AgentRecord>,
    /// After a restore: until when `known_agents` may re-register (none: not recovering).
    recovery_until: Option<Duration>,
    /// Explicit reconciliations of tasks the allocator does not know, waiting for recovering
    /// agents, with the agent the framework named (empty: any).
    pending_reconciles: BTreeMap<TaskKey, AgentId>,
    /// Registry changes not yet taken by the edge.
    registry_ops: Vec<registry::RegistryOp>,
    outbox: Vec<Command>,
    /// Whether changes are recorded (someone listens to the cluster's events).
    observing: bool,
    /// Changes operators hear of, not yet taken by the edge ([`changes`]).
    changes: Vec<Change>,
}

impl Core {
    /// An empty allocator. `id_prefix` makes its ids unique across restarts (a UUID).
    pub fn new(config: AllocatorConfig, id_prefix: impl Into<String>) -> Self {
        let history = History::new(config.terminal_task_history);
        let prefix: String = id_prefix.into();
        Self {
            config,
            offer_prefix: Arc::from(format!("{prefix}-O")),
            prefix,
            next_agent: 0,
            next_framework: 0,
            next_framework_serial: 0,
            tick_generation: 0,
            next_offer: 0,
            agents: AgentTable::default(),
            agent_conns: FastMap::default(),
            frameworks: FastMap::default(),
            framework_conns: FastMap::default(),
            offers: BTreeMap::new(),
            tasks: FastMap::default(),
            history,
            cluster_total: Resources::new(),
            offerable: Vec::new(),
            agent_order: (Vec::new(), Vec::new()),
            unordered: Vec::new(),
            pending_agents: Vec::new(),
            pending: Vec::new(),
            full_allocation: false,
            completed_frameworks: std::collections::VecDeque::new(),
            weights: BTreeMap::new(),
            quotas: BTreeMap::new(),
            last_tick: None,
            offer_seq: 0,
            role_offered: BTreeMap::new(),
            last_total: Resources::new(),
            known_agents: FastMap::default(),
            recovery_until: None,
            pending_reconciles: BTreeMap::new(),
            registry_ops: Vec::new(),
            outbox: Vec::new(),
            observing: false,
            changes: Vec::new(),
        }
    }

    /// The configuration the core runs with.
    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    /// The commands produced since the last call, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.outbox)
    }

    /// Periodic work: agent and framework timeouts, framework heartbeats, filter expiry,
    /// then a full allocation pass.
    pub fn tick(&mut self, now: Duration) {
        self.last_tick = Some(now);
        self.expire_agents(now);
        self.expire_recovery(now);
        self.expire_frameworks(now);
        self.heartbeat_frameworks(now);
        self.expire_filters(now);
        self.expire_offers(now);
        // What was given back since the last tick may be offered to anyone again.
        self.tick_generation += 1;
        self.full_allocation = true;
        self.allocate(now);
    }

    /// Offer `id` as the wire names it.
    fn offer_name(&self, id: OfferId) -> String {
        format!("{}{}", self.offer_prefix, id.0)
    }

    /// The offer a wire id names, if it is one of this allocator's form (`<prefix>-O<n>`).
    fn parse_offer_id(&self, wire: &str) -> Option<OfferId> {
        let digits = wire.strip_prefix(&*self.offer_prefix)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if canonical {
            digits.parse().ok().map(OfferId)
        } else {
            None
        }
    }

    fn send_agent(&mut self, conn: ConnId, message: allocator_message::Message) {
        self.outbox.push(Command::ToAgent { conn, message });
    }

    /// Sends `event` to framework `id` if it is connected; returns whether it was.
    fn send_framework(&mut self, id: &FrameworkId, event: event::Event) -> bool {
        match self.frameworks.get(id).and_then(|f| f.conn) {
            Some(conn) => {
                self.outbox.push(Command::ToFramework { conn, event });
                true
            }
            None => false,
        }
    }

    fn send_error(&mut self, id: &FrameworkId, message: String) {
        tracing::warn!(framework_id = %id, %message, "error sent to framework");
        self.send_framework(id, event::Event::Error(event::Error { message }));
    }

    /// An update the allocator makes up: no uuid, source ALLOCATOR.
    fn allocator_status(
        now: Duration,
        framework_id: &FrameworkId,
        task_id: &str,
        agent_id: &str,
        state: TaskState,
        reason: TaskReason,
        message: String,
    ) -> TaskStatus {
        TaskStatus {
            task_id: task_id.to_owned(),
            framework_id: framework_id.0.clone(),
            agent_id: agent_id.to_owned(),
            state: state as i32,
            reason: reason as i32,
            source: TaskSource::Allocator as i32,
            message,
            uuid: Vec::new(),
            timestamp: now.as_secs_f64(),
            exit_code: None,
            signal: None,
            healthy: None,
        }
    }

    fn send_update(&mut self, framework_id: &FrameworkId, status: TaskStatus) {
        let delivered = self.send_framework(
            framework_id,
            event::Event::Update(event::Update {
                status: Some(status),
            }),
        );
        if !delivered {
            tracing::debug!(%framework_id, "framework not connected; update dropped");
        }
    }
}
