//! Operator actions: weights, quota, dynamic reservations, agent maintenance (drain,
//! deactivate, reactivate) and framework teardown, and the views of roles and reservations.
//!
//! Invariants: every action is validated before anything changes (an error changes
//! nothing); actions that take resources from offers rescind those offers first, so a
//! resource is never both offered and reserved away, and a lowered quota limit is never
//! exceeded by offers made before it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use strata_proto::{QuotaInfo, ReservationSummary, Resource, RoleSummary};

use super::frameworks::Conversion;
use super::registry::{QuotaRecord, RegistryOp, store_limits, store_resources};
use super::roles::{self, Limits, Quota, RoleError, validate_role, validate_weight};
use super::{AgentId, AgentMode, Core, FrameworkId, Link, ResourceError, Resources};

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OperatorError {
    /// The agent id is not known.
    #[error("unknown agent {agent_id}: list agents with `strata agents`")]
    UnknownAgent {
        /// The id given.
        agent_id: String,
    },
    /// The framework id is not known.
    #[error("unknown framework {framework_id}: list frameworks with `strata frameworks`")]
    UnknownFramework {
        /// The id given.
        framework_id: String,
    },
    /// The task is not an active task of the framework.
    #[error(
        "task {task_id} of framework {framework_id} is not active: it ended or never ran; list \
         tasks with `strata ps`"
    )]
    UnknownTask {
        /// The framework given.
        framework_id: String,
        /// The task given.
        task_id: String,
    },
    /// A role, weight or quota is invalid.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// Resources could not be parsed.
    #[error("invalid resources: {0}")]
    Resources(#[from] ResourceError),
    /// A reservation request is malformed.
    #[error("invalid reservation on agent {agent_id}: {why}")]
    InvalidReservation {
        /// The agent.
        agent_id: String,
        /// What is wrong.
        why: String,
    },
    /// The agent does not have the resources free (or reserved) to (un)reserve.
    #[error(
        "agent {agent_id} cannot {action} {wanted}: it has {available}; free them first \
         (kill tasks, or drain the agent)"
    )]
    Unavailable {
        /// The agent.
        agent_id: String,
        /// `reserve` or `unreserve`.
        action: &'static str,
        /// What was asked for.
        wanted: String,
        /// What there is.
        available: String,
    },
}

impl Core {
    /// Sets role weights (each > 0; 1 is the default and removes the entry).
    pub fn set_weights(&mut self, weights: &BTreeMap<String, f64>) -> Result<(), OperatorError> {
        for (role, &w) in weights {
            validate_weight(role, w)?;
        }
        for (role, &w) in weights {
            tracing::info!(role, weight = w, "weight set");
            self.record(RegistryOp::PutWeight(role.clone(), w));
            if w == 1.0 {
                self.weights.remove(role);
            } else {
                self.weights.insert(role.clone(), w);
            }
        }
        self.full_allocation = true;
        Ok(())
    }

    /// The role weights other than 1.
    pub fn weights(&self) -> &BTreeMap<String, f64> {
        &self.weights
    }

    /// Sets (or with an empty quota removes) a role's quota. Offers made to the role's
    /// subtree are rescinded so a lowered limit holds at once.
    pub fn set_quota(&mut self, role: &str, quota: Quota) -> Result<(), OperatorError> {
        quota.validate(role)?;
        tracing::info!(role, guarantee = %quota.guarantee, limit = %quota.limit, "quota set");
        if quota.is_empty() {
            self.quotas.remove(role);
            self.record(RegistryOp::RemoveQuota(role.to_owned()));
        } else {
            self.record(RegistryOp::PutQuota(
                role.to_owned(),
                QuotaRecord {
                    guarantee: store_resources(&quota.guarantee),
                    limit: store_limits(&quota.limit),
                },
            ));
            self.quotas.insert(role.to_owned(), quota);
        }
        self.rescind_role_offers(role);
        self.full_allocation = true;
        Ok(())
    }

    /// Parses a wire quota; a limit of 0 is kept (the role is capped at nothing).
    pub fn quota_from_proto(info: &QuotaInfo) -> Result<Quota, OperatorError> {
        let limit = Resources::from_proto(&info.limit)?;
        roles::check_quota_resources(&info.role, "limit", &limit)?;
        Ok(Quota {
            guarantee: Resources::from_proto(&info.guarantee)?,
            limit: Limits::from_parsed(&info.limit, &limit),
        })
    }

    /// The role quotas.
    pub fn quotas(&self) -> &BTreeMap<String, Quota> {
        &self.quotas
    }

    /// Every quota in wire form, by role.
    pub fn quota_infos(&self) -> Vec<QuotaInfo> {
        self.quotas
            .iter()
            .map(|(role, q)| QuotaInfo {
                role: role.clone(),
                guarantee: q.guarantee.to_proto(),
                limit: q.limit.to_proto(),
            })
            .collect()
    }

    /// Reserves (or unreserves) resources of an agent for the roles they name. The
    /// resources must be free; the agent's offers are rescinded first.
    pub fn operator_reserve(
        &mut self,
        agent_id: &str,
        resources: &[Resource],
        reserve: bool,
    ) -> Result<(), OperatorError> {
        let id = AgentId(agent_id.to_owned());
        if !self.agents.contains_key(&id) {
            return Err(OperatorError::UnknownAgent {
                agent_id: agent_id.to_owned(),
            });
        }
        let invalid = |why: String| OperatorError::InvalidReservation {
            agent_id: agent_id.to_owned(),
            why,
        };
        let resources = Resources::from_proto(resources)?;
        if resources.is_empty() {
            return Err(invalid("no resources given".to_owned()));
        }
        if !resources.unreserved().is_empty() {
            return Err(invalid(
                "a resource names no role: set the role each resource is reserved for".to_owned(),
            ));
        }
        for role in resources.reservation_roles() {
            validate_role(role)?;
            if role == roles::DEFAULT_ROLE {
                return Err(invalid("resources cannot be reserved for `*`".to_owned()));
            }
        }
        // What the agent's offers hold is free again for this check.
        let agent = &self.agents[&id];
        let free = agent.total.minus(&agent.allocated);
        let unavailable = |available: String| OperatorError::Unavailable {
            agent_id: agent_id.to_owned(),
            action: if reserve { "reserve" } else { "unreserve" },
            wanted: resources.to_string(),
            available,
        };
        if reserve {
            if !free.unreserved().contains(&resources.flattened()) {
                return Err(unavailable(format!(
                    "unreserved free {}",
                    free.unreserved()
                )));
            }
        } else {
            if !agent.dynamic.contains(&resources) {
                return Err(unavailable(format!(
                    "dynamic reservations {} (reservations of its configuration cannot be \
                     unreserved)",
                    agent.dynamic
                )));
            }
            if !free.contains(&resources) {
                return Err(unavailable(format!("free {free}")));
            }
        }
        self.rescind_agent_offers(&id);
        tracing::info!(agent_id, reserve, resources = %resources, "operator reservation");
        self.convert(&id, &Conversion { reserve, resources });
        Ok(())
    }

    /// Applies a validated RESERVE or UNRESERVE to an agent's total and dynamic books.
    pub(super) fn convert(&mut self, agent_id: &AgentId, c: &Conversion) {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        let plain = c.resources.flattened();
        if c.reserve {
            agent.total.subtract(&plain);
            agent.total.add(&c.resources);
            agent.dynamic.add(&c.resources);
        } else {
            agent.total.subtract(&c.resources);
            agent.total.add(&plain);
            agent.dynamic.subtract(&c.resources);
        }
        self.record_agent(agent_id);
        self.refresh_offerable(agent_id);
        self.full_allocation = true;
    }

    /// Every reservation on known agents, by agent then role.
    pub fn reservation_summaries(&self) -> Vec<ReservationSummary> {
        let mut ids: Vec<&AgentId> = self.agents.keys().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let agent = &self.agents[id];
            for role in agent.total.reservation_roles() {
                let all = agent.total.reserved_for(role);
                let dynamic = agent.dynamic.reserved_for(role);
                let fixed = all.minus(&dynamic);
                for (part, is_dynamic) in [(fixed, false), (dynamic, true)] {
                    if !part.is_empty() {
                        out.push(ReservationSummary {
                            agent_id: id.0.clone(),
                            role: role.to_owned(),
                            resources: part.to_proto(),
                            dynamic: is_dynamic,
                        });
                    }
                }
            }
        }
        out
    }

    /// Every role the allocator knows of: of frameworks, weights, quota, reservations and
    /// their ancestors, by name.
    pub fn role_summaries(&self) -> Vec<RoleSummary> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut frameworks: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for fw in self.frameworks.values() {
            for role in &fw.roles {
                frameworks.entry(role).or_default().push(fw.id.0.clone());
            }
            names.extend(fw.roles.iter().cloned());
            names.extend(fw.by_role.keys().cloned());
        }
        names.extend(self.weights.keys().cloned());
        names.extend(self.quotas.keys().cloned());
        let mut reserved: BTreeMap<String, Resources> = BTreeMap::new();
        for agent in self.agents.values() {
            if !agent.reachable() {
                continue;
            }
            for role in agent.total.reservation_roles() {
                names.insert(role.to_owned());
                reserved
                    .entry(role.to_owned())
                    .or_default()
                    .add_scalars(&agent.total.reserved_for(role));
            }
        }
        let all: Vec<String> = names
            .iter()
            .flat_map(|r| {
                roles::self_and_ancestors(r)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        names.extend(all);
        // Subtree allocations and offers.
        let mut allocated: BTreeMap<&str, Resources> = BTreeMap::new();
        let mut offered: BTreeMap<&str, Resources> = BTreeMap::new();
        for task in self.tasks.values().filter(|t| !t.unreachable) {
            for node in roles::self_and_ancestors(&task.role) {
                allocated
                    .entry(node)
                    .or_default()
                    .add_scalars(&task.resources);
            }
        }
        for offer in self.offers.values() {
            for node in roles::self_and_ancestors(&offer.role) {
                offered
                    .entry(node)
                    .or_default()
                    .add_scalars(&offer.resources);
            }
        }
        let empty = Resources::new();
        names
            .iter()
            .map(|name| {
                let quota = self.quotas.get(name);
                let mut fws = frameworks.get(name.as_str()).cloned().unwrap_or_default();
                fws.sort();
                RoleSummary {
                    name: name.clone(),
                    weight: self.weight(name),
                    guarantee: quota.map(|q| q.guarantee.to_proto()).unwrap_or_default(),
                    limit: quota.map(|q| q.limit.to_proto()).unwrap_or_default(),
                    allocated: allocated.get(name.as_str()).unwrap_or(&empty).to_proto(),
                    offered: offered.get(name.as_str()).unwrap_or(&empty).to_proto(),
                    reserved: reserved.get(name).unwrap_or(&empty).to_proto(),
                    frameworks: fws,
                }
            })
            .collect()
    }

    /// Drains an agent: its offers are rescinded, it gets no new ones, and each of its
    /// tasks is killed with `grace` (or the task's own grace period).
    pub fn drain_agent(
        &mut self,
        now: Duration,
        agent_id: &str,
        grace: Option<f64>,
    ) -> Result<(), OperatorError> {
        let id = self.set_mode(agent_id, AgentMode::Draining)?;
        let keys: Vec<_> = self.agents[&id].tasks.iter().cloned().collect();
        let conn = self.agents[&id].conn();
        tracing::info!(agent_id, tasks = keys.len(), "agent draining");
        for key in keys {
            let Some(task) = self.tasks.get_mut(&key) else {
                continue;
            };
            let own = task.info.kill_grace_period_seconds;
            let g = grace.or((own > 0.0).then_some(own));
            task.kill = Some(g);
            task.updated_at = now;
            if let Some(conn) = conn {
                self.send_kill(conn, &key, g);
            }
        }
        Ok(())
    }

    /// Deactivates an agent: its offers are rescinded and it gets no new ones; its tasks
    /// keep running.
    pub fn deactivate_agent(&mut self, agent_id: &str) -> Result<(), OperatorError> {
        self.set_mode(agent_id, AgentMode::Deactivated)?;
        tracing::info!(agent_id, "agent deactivated");
        Ok(())
    }

    /// Makes a drained or deactivated agent offerable again.
    pub fn reactivate_agent(&mut self, agent_id: &str) -> Result<(), OperatorError> {
        self.set_mode(agent_id, AgentMode::Active)?;
        tracing::info!(agent_id, "agent reactivated");
        Ok(())
    }

    fn set_mode(&mut self, agent_id: &str, mode: AgentMode) -> Result<AgentId, OperatorError> {
        let id = AgentId(agent_id.to_owned());
        let Some(agent) = self.agents.get_mut(&id) else {
            return Err(OperatorError::UnknownAgent {
                agent_id: agent_id.to_owned(),
            });
        };
        agent.mode = mode;
        if mode != AgentMode::Active {
            self.rescind_agent_offers(&id);
        }
        self.record_agent(&id);
        self.refresh_offerable(&id);
        self.note(|core| {
            core.agents
                .get(&id)
                .map(|a| crate::Change::AgentUpdated(crate::view::agent_summary(a)))
        });
        Ok(id)
    }

    /// The operator's mode of every agent that is not active: (draining, deactivated) ids.
    pub fn agent_modes(&self) -> (Vec<String>, Vec<String>) {
        let mut draining = Vec::new();
        let mut deactivated = Vec::new();
        for agent in self.agents.values() {
            match agent.mode {
                AgentMode::Draining => draining.push(agent.id.0.clone()),
                AgentMode::Deactivated => deactivated.push(agent.id.0.clone()),
                AgentMode::Active => {}
            }
        }
        draining.sort();
        deactivated.sort();
        (draining, deactivated)
    }

    /// Kills one task at an operator's request (the dashboard), as its framework's KILL
    /// would, with the task's own grace period; the framework hears the outcome as usual.
    pub fn operator_kill_task(
        &mut self,
        now: Duration,
        framework_id: &str,
        task_id: &str,
    ) -> Result<(), OperatorError> {
        let key = (
            FrameworkId(framework_id.to_owned()),
            super::TaskId(task_id.to_owned()),
        );
        let Some(task) = self.tasks.get_mut(&key) else {
            return Err(OperatorError::UnknownTask {
                framework_id: framework_id.to_owned(),
                task_id: task_id.to_owned(),
            });
        };
        let own = task.info.kill_grace_period_seconds;
        let grace = (own > 0.0).then_some(own);
        task.kill = Some(grace);
        task.updated_at = now;
        let agent_id = task.agent_id.clone();
        match self.agents.get(&agent_id).and_then(|a| a.conn()) {
            Some(conn) => {
                tracing::info!(framework_id, task_id, agent_id = %agent_id, "an operator killed the task");
                self.send_kill(conn, &key, grace);
            }
            None => tracing::info!(
                framework_id,
                task_id,
                agent_id = %agent_id,
                "an operator killed the task; its agent is not connected, the kill is sent when it re-registers"
            ),
        }
        Ok(())
    }

    /// Removes a framework at the operator's request: its tasks are killed.
    pub fn teardown_framework(
        &mut self,
        now: Duration,
        framework_id: &str,
    ) -> Result<(), OperatorError> {
        let fid = FrameworkId(framework_id.to_owned());
        if !self.frameworks.contains_key(&fid) {
            return Err(OperatorError::UnknownFramework {
                framework_id: framework_id.to_owned(),
            });
        }
        self.remove_framework(now, &fid, "the operator tore it down".to_owned());
        Ok(())
    }

    /// Whether the agent is reachable and active (for tests and views).
    pub fn agent_is_offerable(&self, agent_id: &str) -> bool {
        self.agents
            .get(&AgentId(agent_id.to_owned()))
            .is_some_and(|a| a.mode == AgentMode::Active && matches!(a.link, Link::Connected(_)))
    }
}
