//! The registry: what must survive an allocator restart, and the changes the core makes to
//! it. The core stays pure: it records [`RegistryOp`]s as it goes (taken by the edge with
//! [`Core::take_registry_ops`] and written to a `Store`), and [`Core::restore`] rebuilds
//! its books from a loaded [`Registry`] before anything connects.
//!
//! Kept: agent ids with their dynamic reservations and operator mode (drained,
//! deactivated), frameworks (info and the time they
//! disconnected, which fixes their failover deadline), role weights and quotas, and the
//! bounded history of terminal tasks (what `strata ps --all` lists). Not kept: offers,
//! filters, active tasks: agents re-register with their running tasks and frameworks
//! re-subscribe with their ids, which restores the rest.
//!
//! Invariants: every change to a kept thing records an op in the order made; applying the
//! ops in order to the registry loaded at start gives the core's current registry
//! ([`Core::registry`]).

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::{
    FrameworkCapability, FrameworkInfo, Resource, ResourceKind, TaskInfo, TaskReason, TaskState,
    ValueRange,
};

use super::resources::from_milli;
use super::roles::{Limits, Quota};
use super::{AgentId, Core, FastMap, Framework, FrameworkId, Resources, Task, TaskId};

/// A resource in the registry's own (serde) form.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredResource {
    /// Its name.
    pub name: String,
    /// Its reservation role; empty when unreserved.
    #[serde(default)]
    pub role: String,
    /// A scalar's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<f64>,
    /// A ranges resource's closed ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<(u64, u64)>,
    /// A set resource's items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
}

/// Stored form of resources.
pub fn store_resources(r: &Resources) -> Vec<StoredResource> {
    r.to_proto()
        .into_iter()
        .map(|p| StoredResource {
            scalar: (p.kind() == ResourceKind::Scalar).then_some(p.scalar),
            ranges: p.ranges.iter().map(|v| (v.begin, v.end)).collect(),
            set: p.set.clone(),
            name: p.name,
            role: p.role,
        })
        .collect()
}

/// Resources from their stored form.
pub fn load_resources(list: &[StoredResource]) -> Result<Resources, super::ResourceError> {
    let proto: Vec<Resource> = list
        .iter()
        .map(|s| Resource {
            name: s.name.clone(),
            kind: if s.scalar.is_some() {
                ResourceKind::Scalar
            } else if !s.ranges.is_empty() {
                ResourceKind::Ranges
            } else {
                ResourceKind::Set
            } as i32,
            scalar: s.scalar.unwrap_or(0.0),
            ranges: s
                .ranges
                .iter()
                .map(|&(begin, end)| ValueRange { begin, end })
                .collect(),
            set: s.set.clone(),
            role: s.role.clone(),
            ..Resource::default()
        })
        .collect();
    Resources::from_proto(&proto)
}

/// Stored form of a quota's limits (a limit of 0 included).
pub fn store_limits(limits: &Limits) -> Vec<StoredResource> {
    limits
        .iter()
        .map(|(name, milli)| StoredResource {
            name: name.to_owned(),
            role: String::new(),
            scalar: Some(from_milli(milli)),
            ranges: Vec::new(),
            set: Vec::new(),
        })
        .collect()
}

/// A quota's limits from their stored form (a limit of 0 included).
pub fn load_limits(list: &[StoredResource]) -> Result<Limits, super::ResourceError> {
    let parsed = load_resources(list)?;
    let mut limits = Limits::from(&parsed);
    for s in list {
        if s.scalar.is_some() && s.role.is_empty() && limits.get(&s.name).is_none() {
            limits.set(&s.name, 0);
        }
    }
    Ok(limits)
}

/// What is kept of an agent.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    /// Its hostname when it last registered.
    pub hostname: String,
    /// Its dynamic reservations.
    pub dynamic: Vec<StoredResource>,
    /// The operator's mode: empty (active), `draining` or `deactivated`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// The principal its id is bound to (its certificate's); empty when it registered
    /// without authentication.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
}

/// The stored form of an agent mode.
pub(super) fn mode_name(mode: super::AgentMode) -> String {
    match mode {
        super::AgentMode::Active => String::new(),
        super::AgentMode::Draining => "draining".to_owned(),
        super::AgentMode::Deactivated => "deactivated".to_owned(),
    }
}

/// An agent mode from its stored form (unknown names read as active).
pub(super) fn mode_from(name: &str) -> super::AgentMode {
    match name {
        "draining" => super::AgentMode::Draining,
        "deactivated" => super::AgentMode::Deactivated,
        _ => super::AgentMode::Active,
    }
}

/// What is kept of a framework.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameworkRecord {
    /// Its name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its failover timeout, seconds.
    pub failover_timeout_seconds: f64,
    /// Whether it is partition aware.
    pub partition_aware: bool,
    /// When it first registered, Unix seconds.
    pub registered_at: f64,
    /// When its stream ended, Unix seconds; none while connected. Its failover deadline is
    /// this plus its failover timeout.
    pub disconnected_at: Option<f64>,
    /// The principal its id is bound to; empty when it subscribed without authentication.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
}

/// What is kept of a role's quota.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuotaRecord {
    /// The guarantee.
    pub guarantee: Vec<StoredResource>,
    /// The limit.
    pub limit: Vec<StoredResource>,
}

/// What is kept of a terminal task.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskRecord {
    /// Its framework's id.
    pub framework_id: String,
    /// Its id.
    pub task_id: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The agent it ran on.
    pub agent_id: String,
    /// The role its resources were allocated to.
    pub role: String,
    /// Its resources.
    pub resources: Vec<StoredResource>,
    /// Its terminal state, by its proto name (`TASK_FINISHED`, ...).
    pub state: String,
    /// Why, by its proto name; empty when unspecified.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Its last message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Its exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether its agent was unreachable when it ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreachable: bool,
    /// When it was launched, Unix seconds.
    pub launched_at: f64,
    /// When it ended, Unix seconds.
    pub updated_at: f64,
}

/// The stored form of a terminal task.
pub(super) fn task_record(task: &Task) -> TaskRecord {
    TaskRecord {
        framework_id: task.framework_id.0.clone(),
        task_id: task.id.0.clone(),
        name: task.info.name.clone(),
        agent_id: task.agent_id.0.clone(),
        role: task.role.clone(),
        resources: store_resources(&task.resources),
        state: task.state.as_str_name().to_owned(),
        reason: match task.reason {
            TaskReason::Unspecified => String::new(),
            reason => reason.as_str_name().to_owned(),
        },
        message: task.message.clone(),
        exit_code: task.exit_code,
        unreachable: task.unreachable,
        launched_at: task.launched_at.as_secs_f64(),
        updated_at: task.updated_at.as_secs_f64(),
    }
}

/// A terminal task from its stored form.
fn task_from_record(r: TaskRecord) -> Result<Task, RestoreError> {
    let what = || {
        format!(
            "terminal task {:?} of framework {}",
            r.task_id, r.framework_id
        )
    };
    let resources = load_resources(&r.resources).map_err(|source| RestoreError::Resources {
        what: what(),
        source,
    })?;
    let state = TaskState::from_str_name(&r.state)
        .filter(|s| s.is_terminal())
        .ok_or_else(|| RestoreError::TaskState {
            what: what(),
            state: r.state.clone(),
        })?;
    let reason = TaskReason::from_str_name(&r.reason).unwrap_or(TaskReason::Unspecified);
    let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
    Ok(Task {
        framework_id: FrameworkId(r.framework_id),
        id: TaskId(r.task_id.clone()),
        agent_id: AgentId(r.agent_id.clone()),
        role: r.role,
        info: TaskInfo {
            task_id: r.task_id,
            name: r.name,
            agent_id: r.agent_id,
            resources: resources.to_proto(),
            ..TaskInfo::default()
        },
        resources,
        state,
        reason,
        message: r.message,
        exit_code: r.exit_code,
        healthy: None,
        unreachable: r.unreachable,
        kill: None,
        launched_at: secs(r.launched_at),
        updated_at: secs(r.updated_at),
    })
}

/// Everything kept, as loaded at start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    /// By agent id.
    pub agents: BTreeMap<String, AgentRecord>,
    /// By framework id.
    pub frameworks: BTreeMap<String, FrameworkRecord>,
    /// Role weights other than 1.
    pub weights: BTreeMap<String, f64>,
    /// Role quotas.
    pub quotas: BTreeMap<String, QuotaRecord>,
    /// The terminal-task history by number, oldest first.
    pub terminal_tasks: BTreeMap<u64, TaskRecord>,
}

/// One change to the registry.
#[derive(Clone, Debug, PartialEq)]
pub enum RegistryOp {
    /// An agent (re)registered or its dynamic reservations changed.
    PutAgent(String, AgentRecord),
    /// A framework subscribed, re-subscribed or disconnected.
    PutFramework(String, FrameworkRecord),
    /// A framework was removed.
    RemoveFramework(String),
    /// A weight was set (1 removes it).
    PutWeight(String, f64),
    /// A quota was set.
    PutQuota(String, QuotaRecord),
    /// A quota was removed.
    RemoveQuota(String),
    /// A task ended: it joined the terminal-task history under this number.
    PutTerminalTask(u64, TaskRecord),
    /// A terminal task left the history.
    RemoveTerminalTask(u64),
}

impl Registry {
    /// Applies `op` (what a store does).
    pub fn apply(&mut self, op: &RegistryOp) {
        match op {
            RegistryOp::PutAgent(id, r) => {
                self.agents.insert(id.clone(), r.clone());
            }
            RegistryOp::PutFramework(id, r) => {
                self.frameworks.insert(id.clone(), r.clone());
            }
            RegistryOp::RemoveFramework(id) => {
                self.frameworks.remove(id);
            }
            RegistryOp::PutWeight(role, w) => {
                if *w == 1.0 {
                    self.weights.remove(role);
                } else {
                    self.weights.insert(role.clone(), *w);
                }
            }
            RegistryOp::PutQuota(role, q) => {
                self.quotas.insert(role.clone(), q.clone());
            }
            RegistryOp::RemoveQuota(role) => {
                self.quotas.remove(role);
            }
            RegistryOp::PutTerminalTask(seq, r) => {
                self.terminal_tasks.insert(*seq, r.clone());
            }
            RegistryOp::RemoveTerminalTask(seq) => {
                self.terminal_tasks.remove(seq);
            }
        }
    }
}

/// What a loaded registry held that the core could not use.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestoreError {
    /// A record holds resources that cannot be parsed.
    #[error("the registry's record of {what} holds invalid resources: {source}")]
    Resources {
        /// Which record.
        what: String,
        /// What was wrong.
        source: super::ResourceError,
    },
    /// A terminal task's record holds a state that is not a terminal one.
    #[error("the registry's record of {what} holds {state:?}, which is not a terminal task state")]
    TaskState {
        /// Which record.
        what: String,
        /// The state it holds.
        state: String,
    },
}

impl Core {
    /// The registry changes since the last call, in order.
    pub fn take_registry_ops(&mut self) -> Vec<RegistryOp> {
        std::mem::take(&mut self.registry_ops)
    }

    pub(super) fn record(&mut self, op: RegistryOp) {
        self.registry_ops.push(op);
    }

    pub(super) fn framework_record(fw: &Framework) -> FrameworkRecord {
        FrameworkRecord {
            name: fw.name.clone(),
            roles: fw.roles.clone(),
            failover_timeout_seconds: fw.failover_timeout.as_secs_f64(),
            partition_aware: fw.partition_aware,
            registered_at: fw.registered_at.as_secs_f64(),
            disconnected_at: fw.disconnected_at.map(|d| d.as_secs_f64()),
            principal: fw.principal.clone().unwrap_or_default(),
        }
    }

    /// Records a task joining the history and the entries it pushed out.
    pub(super) fn record_history(&mut self, added: Option<(u64, TaskRecord)>, removed: Vec<u64>) {
        for seq in removed {
            self.record(RegistryOp::RemoveTerminalTask(seq));
        }
        if let Some((seq, record)) = added {
            self.record(RegistryOp::PutTerminalTask(seq, record));
        }
    }

    pub(super) fn record_framework(&mut self, id: &FrameworkId) {
        if let Some(fw) = self.frameworks.get(id) {
            let record = Self::framework_record(fw);
            self.record(RegistryOp::PutFramework(id.0.clone(), record));
        }
    }

    pub(super) fn record_agent(&mut self, id: &AgentId) {
        if let Some(agent) = self.agents.get(id) {
            let record = AgentRecord {
                hostname: agent.hostname.clone(),
                dynamic: store_resources(&agent.dynamic),
                mode: mode_name(agent.mode),
                principal: agent.principal.clone().unwrap_or_default(),
            };
            self.record(RegistryOp::PutAgent(id.0.clone(), record));
        }
    }

    /// The registry as the core holds it now.
    pub fn registry(&self) -> Registry {
        let mut agents: BTreeMap<String, AgentRecord> = self
            .known_agents
            .iter()
            .map(|(id, r)| (id.0.clone(), r.clone()))
            .collect();
        for agent in self.agents.values() {
            agents.insert(
                agent.id.0.clone(),
                AgentRecord {
                    hostname: agent.hostname.clone(),
                    dynamic: store_resources(&agent.dynamic),
                    mode: mode_name(agent.mode),
                    principal: agent.principal.clone().unwrap_or_default(),
                },
            );
        }
        Registry {
            agents,
            frameworks: self
                .frameworks
                .values()
                .map(|f| (f.id.0.clone(), Self::framework_record(f)))
                .collect(),
            weights: self.weights.clone(),
            quotas: self
                .quotas
                .iter()
                .map(|(role, q)| {
                    (
                        role.clone(),
                        QuotaRecord {
                            guarantee: store_resources(&q.guarantee),
                            limit: store_limits(&q.limit),
                        },
                    )
                })
                .collect(),
            terminal_tasks: self
                .history
                .numbered()
                .map(|(seq, task)| (seq, task_record(task)))
                .collect(),
        }
    }

    /// Rebuilds the kept books from `registry` (call before anything connects). Frameworks
    /// come back disconnected: each has its failover timeout from when it disconnected, or
    /// from `now` if it was connected when the allocator stopped, to re-subscribe with its id.
    /// Agents come back when they re-register with their ids and tasks; until they all have,
    /// or `agent_reregister_timeout` from `now`, the allocator is recovering.
    pub fn restore(&mut self, now: Duration, registry: Registry) -> Result<(), RestoreError> {
        let mut known = FastMap::default();
        for (id, record) in registry.agents {
            load_resources(&record.dynamic).map_err(|source| RestoreError::Resources {
                what: format!("agent {id}"),
                source,
            })?;
            known.insert(AgentId(id), record);
        }
        let mut quotas = BTreeMap::new();
        for (role, q) in registry.quotas {
            let what = || format!("the quota of role {role}");
            let guarantee =
                load_resources(&q.guarantee).map_err(|source| RestoreError::Resources {
                    what: what(),
                    source,
                })?;
            let limit = load_limits(&q.limit).map_err(|source| RestoreError::Resources {
                what: what(),
                source,
            })?;
            quotas.insert(role, Quota { guarantee, limit });
        }
        let mut history = Vec::with_capacity(registry.terminal_tasks.len());
        for (seq, record) in registry.terminal_tasks {
            history.push((seq, task_from_record(record)?));
        }
        let mut dropped = Vec::new();
        for (seq, task) in history {
            dropped.extend(self.history.restore(seq, task));
        }
        // A smaller --terminal-task-history keeps the newest.
        self.record_history(None, dropped);
        self.known_agents = known;
        self.recovery_until =
            (!self.known_agents.is_empty()).then(|| now + self.config.agent_reregister_timeout);
        self.quotas = quotas;
        self.weights = registry.weights;
        for (id, r) in registry.frameworks {
            let fid = FrameworkId(id);
            let disconnected_at = r
                .disconnected_at
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map_or(now, |d| d.min(now));
            let mut fw = self.new_framework(fid.clone(), now);
            fw.name = r.name;
            fw.roles = r.roles;
            fw.failover_timeout = Duration::try_from_secs_f64(r.failover_timeout_seconds.max(0.0))
                .unwrap_or_default();
            fw.partition_aware = r.partition_aware;
            fw.principal = Some(r.principal).filter(|p| !p.is_empty());
            fw.registered_at = Duration::try_from_secs_f64(r.registered_at).unwrap_or(now);
            fw.disconnected_at = Some(disconnected_at);
            tracing::info!(framework_id = %fid, name = %fw.name, "framework restored; waiting for it to re-subscribe");
            self.frameworks.insert(fid, fw);
        }
        Ok(())
    }
}

/// A framework's info as the registry would rebuild it (for tests and the operator).
pub fn framework_info(id: &str, r: &FrameworkRecord) -> FrameworkInfo {
    FrameworkInfo {
        id: id.to_owned(),
        name: r.name.clone(),
        roles: r.roles.clone(),
        failover_timeout_seconds: r.failover_timeout_seconds,
        capabilities: if r.partition_aware {
            vec![FrameworkCapability::PartitionAware as i32]
        } else {
            vec![]
        },
        ..FrameworkInfo::default()
    }
}
