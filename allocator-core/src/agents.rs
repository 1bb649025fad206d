//! Agent events: registration and re-registration, heartbeats, status updates, stream ends
//! and timeouts.
//!
//! Invariants: an agent id is bound to at most one stream; a newer Register for the same id
//! replaces (and closes) the older stream. A disconnected agent's offer is rescinded at once;
//! a silent one's stream is closed after `agent_timeout`; its tasks are reported
//! (UNREACHABLE to partition-aware frameworks, LOST to others) when it has not been heard of
//! for `agent_reconnect_timeout` (75 s by default, as Mesos' 5 missed 15 s pings); its
//! resources then leave the cluster total. Re-registering within that window changes nothing
//! the frameworks see. Re-registering brings the listed tasks back (RUNNING again after they
//! were reported), ends at once those it lists as ended (the agent's own update tells the
//! framework), ends the tasks it no longer has (without a second LOST to a framework told
//! LOST already), adopts tasks of known frameworks the allocator did not know, and kills
//! tasks of frameworks that are gone.

use std::collections::HashMap;
use std::time::Duration;

use strata_proto::{
    AgentInfo, AgentTask, TaskReason, TaskState, TaskStatus, agent_message, allocator_message,
    event,
};

use super::Change;
use super::allocation::{add_role, sub_role};
use super::{
    Agent, AgentId, AgentMode, ConnId, Core, CoreError, FrameworkId, Link, Resources, Task, TaskId,
    TaskKey,
};

impl Core {
    /// An agent sent `Register` on stream `conn`. Assigns an id when it has none; replies
    /// `Registered`. On error nothing changed and the stream should be ended.
    pub fn agent_register(
        &mut self,
        now: Duration,
        conn: ConnId,
        register: agent_message::Register,
    ) -> Result<AgentId, CoreError> {
        self.agent_register_as(now, conn, register, None)
    }

    /// [`Core::agent_register`] by an authenticated `principal` (none: unauthenticated): the
    /// policy must allow it `register_agents`, and an id already bound to another principal
    /// is refused. A new id is bound to the principal.
    pub fn agent_register_as(
        &mut self,
        now: Duration,
        conn: ConnId,
        register: agent_message::Register,
        principal: Option<String>,
    ) -> Result<AgentId, CoreError> {
        self.config.policy.check(
            principal.as_deref(),
            strata_auth::Action::RegisterAgents,
            principal.as_deref().unwrap_or_default(),
        )?;
        let info = register.info.unwrap_or_default();
        if !info.id.is_empty() {
            strata_proto::ids::check_id("agent id", &info.id).map_err(|e| {
                CoreError::InvalidAgentId {
                    reason: e.to_string(),
                }
            })?;
            self.check_agent_principal(&info.id, principal.as_deref())?;
        }
        let total = Resources::from_proto(&info.resources).map_err(|source| {
            CoreError::InvalidAgentResources {
                hostname: info.hostname.clone(),
                source,
            }
        })?;
        let id = self.registering_id(conn, &info)?;
        let was_unreachable = self.admit_agent(now, conn, &id, &info, &total);
        if let Some(agent) = self.agents.get_mut(&id)
            && agent.principal.is_none()
        {
            agent.principal = principal;
        }
        // Whatever was offered may no longer exist (the total can change).
        self.rescind_agent_offers(&id);
        let mut warnings = self.update_agent(now, conn, &id, &info, total, was_unreachable);
        self.agent_conns.insert(conn, id.clone());
        self.record_agent(&id);

        self.reconcile_agent_tasks(now, &id, conn, register.tasks, was_unreachable);
        self.agent_recovered(now, &id);
        let (shrunk, kills) = self.fit_agent_tasks(now, &id);
        warnings.extend(shrunk);

        self.send_agent(
            conn,
            allocator_message::Message::Registered(allocator_message::Registered {
                agent_id: id.0.clone(),
                heartbeat_interval_seconds: self.config.agent_heartbeat_interval.as_secs_f64(),
                warnings,
                leader_epoch: self.config.leader_epoch,
            }),
        );
        for key in &kills {
            self.send_kill(conn, key, None);
        }
        self.refresh_offerable(&id);
        self.note(|core| {
            core.agents
                .get(&id)
                .map(|a| Change::AgentAdded(crate::view::agent_summary(a)))
        });
        Ok(id)
    }

    /// An error when agent id `id` is bound to a principal other than `principal` (live or
    /// as the registry kept it).
    fn check_agent_principal(&self, id: &str, principal: Option<&str>) -> Result<(), CoreError> {
        let key = AgentId(id.to_owned());
        let bound = match self.agents.get(&key) {
            Some(agent) => agent.principal.clone(),
            None => self
                .known_agents
                .get(&key)
                .map(|r| r.principal.clone())
                .filter(|p| !p.is_empty()),
        };
        match bound {
            Some(bound) if Some(bound.as_str()) != principal => {
                tracing::warn!(agent_id = %id, bound = %bound, principal = ?principal, "registration with an agent id of another principal refused");
                Err(CoreError::IdOfAnotherPrincipal {
                    what: "agent",
                    id: id.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The id a Register on `conn` registers: the stream's agent (a Register naming another
    /// is an error), the id it names, or a new one.
    fn registering_id(&mut self, conn: ConnId, info: &AgentInfo) -> Result<AgentId, CoreError> {
        Ok(match self.agent_conns.get(&conn) {
            Some(existing) if !info.id.is_empty() && info.id != existing.0 => {
                return Err(CoreError::AgentIdChanged {
                    registered: existing.clone(),
                    requested: info.id.clone(),
                });
            }
            Some(existing) => existing.clone(),
            None if info.id.is_empty() => {
                let id = AgentId(format!("{}-S{}", self.prefix, self.next_agent));
                self.next_agent += 1;
                id
            }
            None => AgentId(info.id.clone()),
        })
    }

    /// Adds an agent seen for the first time (with what the registry kept of it), or closes
    /// the older stream of a known one; returns whether it was unreachable.
    fn admit_agent(
        &mut self,
        now: Duration,
        conn: ConnId,
        id: &AgentId,
        info: &AgentInfo,
        total: &Resources,
    ) -> bool {
        match self.agents.get(id) {
            None => {
                tracing::info!(agent_id = %id, hostname = %info.hostname, resources = %total, "agent registered");
                // Dynamic reservations and the operator's mode, kept across an allocator
                // restart.
                let known = self.known_agents.remove(id);
                let mode = known
                    .as_ref()
                    .map_or(AgentMode::Active, |r| super::registry::mode_from(&r.mode));
                let principal = known
                    .as_ref()
                    .map(|r| r.principal.clone())
                    .filter(|p| !p.is_empty());
                let dynamic = known
                    .and_then(|r| super::registry::load_resources(&r.dynamic).ok())
                    .unwrap_or_default();
                let mut agent = new_agent(id.clone(), mode, dynamic, now);
                agent.principal = principal;
                self.insert_agent(agent);
                false
            }
            Some(agent) => {
                tracing::info!(agent_id = %id, hostname = %info.hostname, resources = %total, "agent re-registered");
                if let Link::Connected(old) = agent.link
                    && old != conn
                {
                    self.agent_conns.remove(&old);
                    self.outbox.push(super::Command::Close { conn: old });
                }
                matches!(agent.link, Link::Unreachable { .. })
            }
        }
    }

    /// Takes what the agent registered with: its description, its total (with the dynamic
    /// reservations kept for it applied) in the cluster total, its stream; every framework's
    /// filters for the agent go when its total or attributes changed. Returns what it had to
    /// drop (reservations the new total cannot hold), for the agent's log.
    fn update_agent(
        &mut self,
        now: Duration,
        conn: ConnId,
        id: &AgentId,
        info: &AgentInfo,
        total: Resources,
        was_unreachable: bool,
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        // Old books out of the cluster total; the new total goes in below.
        let agent = self.agents.get_mut(id).expect("inserted above");
        if !was_unreachable {
            self.cluster_total.subtract_scalars(&agent.total);
        }
        agent.hostname = info.hostname.clone();
        let old_attributes = std::mem::replace(&mut agent.attributes, info.attributes.clone());
        agent.card = std::sync::Arc::new(super::AgentCard {
            agent_id: id.0.clone(),
            hostname: info.hostname.clone(),
            attributes: info.attributes.clone(),
        });
        agent.version = info.version.clone();
        agent.endpoint = info.endpoint.clone();
        let old_total = std::mem::replace(&mut agent.total, total);
        agent.total.share_items_with(&self.last_total);
        self.last_total.clone_from(&agent.total);
        // The dynamic reservations the allocator keeps for it apply to what it has.
        let dynamic = std::mem::take(&mut agent.dynamic);
        for role in dynamic.reservation_roles() {
            let part = dynamic.reserved_for(role);
            let plain = part.flattened();
            if agent.total.unreserved().contains(&plain) {
                agent.total.subtract(&plain);
                agent.total.add(&part);
                agent.dynamic.add(&part);
            } else {
                tracing::warn!(agent_id = %id, role, reservation = %part, "agent re-registered without the resources of a dynamic reservation; dropped");
                warnings.push(format!(
                    "the dynamic reservation {part} for role {role:?} was dropped: this agent \
                     registered with {}, which cannot hold it",
                    agent.total
                ));
            }
        }
        agent.last_seen = now;
        agent.link = Link::Connected(conn);
        self.cluster_total.add_scalars(&agent.total);
        // An agent that had nothing (new) was never offered, so has no filters.
        if !old_total.is_empty() && (old_total != agent.total || old_attributes != agent.attributes)
        {
            // As in Mesos: what was refused on the agent is not what it has now.
            self.remove_agent_filters(id);
        }
        warnings
    }

    /// An agent that registered with less than its tasks hold (restarted with smaller
    /// `--resources`): the newest tasks are killed until the rest fit, so that the agent is
    /// never over-committed. Each ends at once in the books (TASK_KILLED, reason
    /// AGENT_RESTARTED, telling its framework why). Returns a warning per task for the
    /// agent's log, and the tasks the agent must be asked to kill (after `Registered`).
    fn fit_agent_tasks(&mut self, now: Duration, id: &AgentId) -> (Vec<String>, Vec<TaskKey>) {
        let agent = &self.agents[id];
        if agent.total.contains(&agent.allocated) {
            return (Vec::new(), Vec::new());
        }
        let (total, held) = (agent.total.clone(), agent.allocated.clone());
        let mut newest_first: Vec<(Duration, TaskKey)> = agent
            .tasks
            .iter()
            .filter_map(|k| self.tasks.get(k).map(|t| (t.launched_at, k.clone())))
            .collect();
        newest_first.sort_by(|a, b| b.cmp(a));
        let (mut warnings, mut kills) = (Vec::new(), Vec::new());
        for (_, key) in newest_first {
            if self.agents[id].total.contains(&self.agents[id].allocated) {
                break;
            }
            let message = format!(
                "agent {id} re-registered with {total}, less than its tasks hold ({held}): the \
                 task was killed so that the rest fit"
            );
            tracing::warn!(task_id = %key.1, framework_id = %key.0, agent_id = %id, "agent shrank below its tasks; killing task");
            let status = Self::allocator_status(
                now,
                &key.0,
                &key.1.0,
                &id.0,
                TaskState::Killed,
                TaskReason::AgentRestarted,
                message.clone(),
            );
            self.end_task(
                &key,
                TaskState::Killed,
                TaskReason::AgentRestarted,
                message,
                None,
                now,
            );
            if self.frameworks.contains_key(&key.0) {
                self.send_update(&key.0, status);
            }
            warnings.push(format!(
                "task {} of framework {} was killed: this agent registered with {total}, less \
                 than its tasks hold ({held})",
                key.1, key.0
            ));
            kills.push(key);
        }
        (warnings, kills)
    }

    /// Brings the allocator's view of an agent's tasks in line with the list it registered.
    fn reconcile_agent_tasks(
        &mut self,
        now: Duration,
        agent_id: &AgentId,
        conn: ConnId,
        listed: Vec<AgentTask>,
        was_unreachable: bool,
    ) {
        let mut listed: HashMap<TaskKey, AgentTask> = listed
            .into_iter()
            .filter_map(|t| {
                let task_id = t.task.as_ref()?.task_id.clone();
                Some(((FrameworkId(t.framework_id.clone()), TaskId(task_id)), t))
            })
            .collect();
        let known: Vec<(TaskKey, bool)> = self.agents[agent_id]
            .tasks
            .iter()
            .map(|key| (key.clone(), self.tasks[key].unreachable))
            .collect();

        // Reachable again: the tasks count in their frameworks' allocations again.
        if was_unreachable {
            let keys: Vec<TaskKey> = known.iter().map(|(key, _)| key.clone()).collect();
            self.count_tasks_again(&keys);
        }

        for (key, was_reported) in known {
            match listed.remove(&key) {
                None => self.end_unlisted_task(now, agent_id, key, was_reported),
                Some(agent_task) => {
                    self.refresh_listed_task(
                        now,
                        agent_id,
                        conn,
                        &key,
                        agent_task,
                        was_unreachable,
                    );
                }
            }
        }

        // Tasks the allocator did not know of (it restarted, or the launch raced).
        for (key, agent_task) in listed {
            self.adopt_task(now, agent_id, conn, key, agent_task);
        }
    }

    /// The tasks of an agent reachable again count in their frameworks' allocations again.
    fn count_tasks_again(&mut self, known: &[TaskKey]) {
        for key in known {
            let task = self.tasks.get_mut(key).expect("agent task exists");
            if task.unreachable {
                task.unreachable = false;
                if let Some(fw) = self.frameworks.get_mut(&key.0) {
                    fw.allocated.add_scalars(&task.resources);
                    add_role(&mut fw.by_role, &task.role, &task.resources);
                }
            }
        }
    }

    /// A task the re-registering agent does not have: it is gone (LOST, DROPPED to
    /// partition-aware frameworks). A framework that was told LOST when the agent became
    /// unreachable is told nothing more.
    fn end_unlisted_task(
        &mut self,
        now: Duration,
        agent_id: &AgentId,
        key: TaskKey,
        was_reported: bool,
    ) {
        let partition_aware = self
            .frameworks
            .get(&key.0)
            .is_some_and(|f| f.partition_aware);
        let told_lost = was_reported && !partition_aware;
        let state = if partition_aware {
            TaskState::Dropped
        } else {
            TaskState::Lost
        };
        let message = format!(
            "agent {agent_id} re-registered without task {:?}: the task is lost",
            key.1.0
        );
        let status = Self::allocator_status(
            now,
            &key.0,
            &key.1.0,
            &agent_id.0,
            state,
            TaskReason::AgentRestarted,
            message.clone(),
        );
        self.end_task(&key, state, TaskReason::AgentRestarted, message, None, now);
        if !told_lost {
            self.send_update(&key.0, status);
        }
    }

    /// A known task the re-registering agent lists: takes its latest state (telling the
    /// framework when the agent was unreachable) and resends a pending kill.
    fn refresh_listed_task(
        &mut self,
        now: Duration,
        agent_id: &AgentId,
        conn: ConnId,
        key: &TaskKey,
        agent_task: AgentTask,
        was_unreachable: bool,
    ) {
        let latest = agent_task.latest_status.unwrap_or_default();
        let latest_state = latest.state();
        if latest_state.is_terminal() {
            // It ended (perhaps while the agent was away): it is terminal here at once, never
            // RUNNING again; the framework learns it from the agent's own update, which
            // follows and is acknowledged.
            tracing::info!(task_id = %key.1, framework_id = %key.0, agent_id = %agent_id, state = latest_state.label(), "re-registering agent lists the task as ended");
            let message = if latest.message.is_empty() {
                format!("agent {agent_id} re-registered with the task ended")
            } else {
                latest.message.clone()
            };
            self.end_task(
                key,
                latest_state,
                latest.reason(),
                message,
                latest.exit_code,
                now,
            );
            return;
        }
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        // The agent's latest state (its own if it sent none).
        let state = match latest_state {
            TaskState::Unspecified => task.state,
            s => s,
        };
        let changed = task.state != state || was_unreachable;
        task.state = state;
        task.updated_at = now;
        if latest.healthy.is_some() {
            task.healthy = latest.healthy;
        }
        let message = format!("agent {agent_id} re-registered with the task");
        if was_unreachable {
            task.message.clone_from(&message);
        }
        if changed {
            let status = Self::allocator_status(
                now,
                &key.0,
                &key.1.0,
                &agent_id.0,
                state,
                TaskReason::Unspecified,
                message,
            );
            if was_unreachable {
                tracing::info!(task_id = %key.1, framework_id = %key.0, agent_id = %agent_id, "task reachable again");
                self.send_update(&key.0, status.clone());
            }
            self.note(|_| Some(Change::TaskUpdated { status, state }));
        }
        if let Some(grace) = self.tasks.get(key).and_then(|t| t.kill) {
            self.send_kill(conn, key, grace);
        }
    }

    /// A task the re-registering agent lists that the allocator does not know: adopted when
    /// its framework is known, killed when not. One that ended (its terminal update not yet
    /// acknowledged: it ended while no allocator heard, as during a failover) goes straight
    /// to the terminal history with the state the agent gives, so that a reconciliation or a
    /// kill of it is answered with how it really ended; its update follows from the agent.
    fn adopt_task(
        &mut self,
        now: Duration,
        agent_id: &AgentId,
        conn: ConnId,
        key: TaskKey,
        agent_task: AgentTask,
    ) {
        let latest = agent_task.latest_status.clone().unwrap_or_default();
        let ended = latest.state().is_terminal();
        if ended {
            self.task_reported_by_agent(&key);
            if !self.frameworks.contains_key(&key.0)
                || self.tasks.contains_key(&key)
                || self.history.get(&key).is_some()
            {
                return; // its terminal update follows
            }
        } else if !self.frameworks.contains_key(&key.0) {
            tracing::info!(task_id = %key.1, framework_id = %key.0, agent_id = %agent_id, "killing task of unknown framework");
            self.send_kill(conn, &key, None);
            return;
        }
        if self.tasks.contains_key(&key) {
            tracing::warn!(task_id = %key.1, framework_id = %key.0, agent_id = %agent_id, "agent lists a task the allocator places on another agent; ignored");
            return;
        }
        let mut info = agent_task.task.unwrap_or_default();
        let resources = match Resources::from_proto(&info.resources) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(task_id = %key.1, agent_id = %agent_id, error = %e, "agent lists a task with invalid resources; ignored");
                return;
            }
        };
        info.agent_id = agent_id.0.clone();
        // The role it was launched for: its resources say, else its framework's first.
        let role = info
            .resources
            .iter()
            .map(|r| r.allocation_role.as_str())
            .find(|r| !r.is_empty())
            .map(str::to_owned)
            .or_else(|| self.frameworks[&key.0].roles.first().cloned())
            .unwrap_or_else(|| super::DEFAULT_ROLE.to_owned());
        let state = match latest.state() {
            TaskState::Unspecified => TaskState::Staging,
            s => s,
        };
        tracing::info!(task_id = %key.1, framework_id = %key.0, agent_id = %agent_id, "adopted task from re-registering agent");
        let recovered = key.clone();
        self.insert_task(
            Task {
                framework_id: key.0.clone(),
                id: key.1.clone(),
                agent_id: agent_id.clone(),
                role,
                info,
                resources,
                state,
                reason: TaskReason::Unspecified,
                message: latest.message.clone(),
                exit_code: None,
                healthy: latest.healthy,
                unreachable: false,
                kill: None,
                launched_at: now,
                updated_at: now,
            },
            false,
        );
        if ended {
            self.close_task(
                &key,
                latest.state(),
                latest.reason(),
                latest.message.clone(),
                latest.exit_code,
                now,
            );
            return;
        }
        self.task_recovered(now, &recovered);
    }

    /// Adds an active task to every index and allocation. With `from_free`, the caller has
    /// checked that the agent's free resources hold it.
    pub(super) fn insert_task(&mut self, task: Task, from_free: bool) {
        let key = (task.framework_id.clone(), task.id.clone());
        let agent = self
            .agents
            .get_mut(&task.agent_id)
            .expect("task agent exists");
        debug_assert!(!from_free || agent.total.contains(&agent.allocated.plus(&task.resources)));
        agent.allocated.add(&task.resources);
        agent.tasks.insert(key.clone());
        let fw = self
            .frameworks
            .get_mut(&task.framework_id)
            .expect("task framework exists");
        fw.tasks.insert(task.id.clone());
        if !task.unreachable {
            fw.allocated.add_scalars(&task.resources);
            add_role(&mut fw.by_role, &task.role, &task.resources);
        }
        let agent_id = task.agent_id.clone();
        self.note(|_| Some(Change::TaskAdded(crate::view::task_summary(&task))));
        self.tasks.insert(key, task);
        self.refresh_offerable(&agent_id);
    }

    pub(super) fn send_kill(&mut self, conn: ConnId, key: &TaskKey, grace: Option<f64>) {
        self.send_agent(
            conn,
            allocator_message::Message::KillTask(allocator_message::KillTask {
                framework_id: key.0.0.clone(),
                task_id: key.1.0.clone(),
                grace_period_seconds: grace,
            }),
        );
    }

    /// An agent's heartbeat.
    pub fn agent_heartbeat(&mut self, now: Duration, conn: ConnId) {
        if let Some(agent) = self
            .agent_conns
            .get(&conn)
            .and_then(|id| self.agents.get_mut(id))
        {
            agent.last_seen = now;
        }
    }

    /// A status update from the agent on `conn`: recorded (a terminal one frees the task's
    /// resources at once) and forwarded to the framework; dropped if the framework is
    /// disconnected (the agent resends), acknowledged by the allocator itself if the
    /// framework no longer exists (so the agent stops resending).
    pub fn agent_status_update(&mut self, now: Duration, conn: ConnId, mut status: TaskStatus) {
        let Some(agent_id) = self.agent_conns.get(&conn).cloned() else {
            tracing::warn!(%conn, "status update from a stream that is not registered; ignored");
            return;
        };
        let state = status.state();
        if state == TaskState::Unspecified || status.task_id.is_empty() {
            tracing::warn!(agent_id = %agent_id, task_id = %status.task_id, "status update without task id or state; ignored");
            return;
        }
        let agent = self
            .agents
            .get_mut(&agent_id)
            .expect("connected agent exists");
        agent.last_seen = now;
        if status.framework_id.is_empty()
            && let Some((fid, _)) = agent.tasks.iter().find(|(_, t)| t.0 == status.task_id)
        {
            status.framework_id = fid.0.clone();
        }
        status.agent_id = agent_id.0.clone();
        let key = (
            FrameworkId(status.framework_id.clone()),
            TaskId(status.task_id.clone()),
        );
        let _span = tracing::info_span!("status_update", task_id = %key.1, framework_id = %key.0, agent_id = %agent_id).entered();

        // An update older than what the framework was already told (the agent sends it again
        // because its acknowledgement was lost, e.g. in a partition, while its re-registration
        // told the task's newer state): acknowledged for the agent, neither forwarded nor
        // applied, so that a task's states only go forward.
        if !state.is_terminal()
            && let Some(task) = self.tasks.get(&key)
            && task.agent_id == agent_id
            && progress(state) < progress(task.state)
        {
            tracing::info!(
                state = state.label(),
                current = task.state.label(),
                "an older update sent again; acknowledged, not forwarded"
            );
            if !status.uuid.is_empty() {
                self.send_agent(
                    conn,
                    allocator_message::Message::Acknowledge(allocator_message::AcknowledgeUpdate {
                        framework_id: status.framework_id,
                        task_id: status.task_id,
                        uuid: status.uuid,
                    }),
                );
            }
            return;
        }

        match self.tasks.get_mut(&key) {
            Some(task) if task.agent_id == agent_id => {
                tracing::debug!(state = state.label(), "task status");
                let changed = task.state != state || task.unreachable;
                if state.is_terminal() {
                    let message = status.message.clone();
                    self.close_task(&key, state, status.reason(), message, status.exit_code, now);
                } else {
                    task.state = state;
                    task.reason = status.reason();
                    task.message = status.message.clone();
                    if status.healthy.is_some() {
                        task.healthy = status.healthy;
                    }
                    task.updated_at = now;
                }
                if changed {
                    self.note(|_| {
                        Some(Change::TaskUpdated {
                            status: status.clone(),
                            state,
                        })
                    });
                }
            }
            Some(_) => {
                tracing::warn!("update from an agent that does not run the task; forwarded only");
            }
            None => {
                tracing::debug!(
                    state = state.label(),
                    "update for a task that is not active (a resend?); forwarded only"
                );
            }
        }

        if self.frameworks.contains_key(&key.0) {
            self.send_update(&key.0, status);
        } else if !status.uuid.is_empty() {
            tracing::info!("framework is gone; acknowledging the update on its behalf");
            self.send_agent(
                conn,
                allocator_message::Message::Acknowledge(allocator_message::AcknowledgeUpdate {
                    framework_id: status.framework_id,
                    task_id: status.task_id,
                    uuid: status.uuid,
                }),
            );
        }
    }

    /// The agent's stream ended. Its offer is rescinded; its tasks are reported after
    /// `agent_reconnect_timeout` unless it re-registers first.
    pub fn agent_disconnected(&mut self, now: Duration, conn: ConnId) {
        let Some(id) = self.agent_conns.remove(&conn) else {
            return;
        };
        tracing::info!(agent_id = %id, "agent disconnected");
        if let Some(agent) = self.agents.get_mut(&id) {
            agent.link = Link::Disconnected { since: now };
        }
        self.rescind_agent_offers(&id);
        self.refresh_offerable(&id);
        if self.config.agent_reconnect_timeout.is_zero() {
            self.mark_unreachable(now, &id, "its stream ended".to_owned());
        }
    }

    /// Agents silent for `agent_timeout` are closed; agents gone (disconnected, or silent)
    /// for `agent_reconnect_timeout`, counted from when they were last heard of, become
    /// unreachable.
    pub(super) fn expire_agents(&mut self, now: Duration) {
        let mut silent = Vec::new();
        for agent in self.agents.values() {
            if let Link::Connected(conn) = agent.link
                && now.saturating_sub(agent.last_seen) >= self.config.agent_timeout
            {
                silent.push((agent.id.clone(), conn, agent.last_seen));
            }
        }
        for (id, conn, last_seen) in silent {
            tracing::warn!(agent_id = %id, "agent sent nothing for the agent timeout; closing its stream");
            self.agent_conns.remove(&conn);
            self.outbox.push(super::Command::Close { conn });
            if let Some(agent) = self.agents.get_mut(&id) {
                agent.link = Link::Disconnected { since: last_seen };
            }
            self.rescind_agent_offers(&id);
            self.refresh_offerable(&id);
        }
        let gone: Vec<AgentId> = self
            .agents
            .values()
            .filter(|agent| {
                matches!(agent.link, Link::Disconnected { since }
                    if now.saturating_sub(since) >= self.config.agent_reconnect_timeout)
            })
            .map(|agent| agent.id.clone())
            .collect();
        for id in gone {
            let why = format!(
                "it was not heard of for {}s",
                self.config.agent_reconnect_timeout.as_secs_f64()
            );
            self.mark_unreachable(now, &id, why);
        }
    }

    /// Reports the agent's tasks UNREACHABLE (LOST to frameworks that are not partition
    /// aware), takes its resources out of the cluster, and tells frameworks it failed.
    fn mark_unreachable(&mut self, now: Duration, id: &AgentId, why: String) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if matches!(agent.link, Link::Unreachable { .. }) {
            return;
        }
        agent.link = Link::Unreachable { since: now };
        tracing::warn!(agent_id = %id, hostname = %agent.hostname, reason = %why, "agent unreachable");
        self.cluster_total.subtract_scalars(&agent.total);
        let message = format!("agent {id} ({}) is unreachable: {why}", agent.hostname);
        let keys: Vec<TaskKey> = agent.tasks.iter().cloned().collect();
        for key in keys {
            let task = self.tasks.get_mut(&key).expect("agent task exists");
            if task.unreachable {
                continue;
            }
            task.unreachable = true;
            task.updated_at = now;
            task.message = message.clone();
            let resources = task.resources.clone();
            let role = task.role.clone();
            if let Some(fw) = self.frameworks.get_mut(&key.0) {
                fw.allocated.subtract_scalars(&resources);
                sub_role(&mut fw.by_role, &role, &resources);
            }
            let task = &self.tasks[&key];
            let state = self.visible_state(task);
            let status = Self::allocator_status(
                now,
                &key.0,
                &key.1.0,
                &id.0,
                state,
                TaskReason::AgentDisconnected,
                message.clone(),
            );
            tracing::info!(task_id = %key.1, framework_id = %key.0, agent_id = %id, state = state.label(), "task unreachable");
            self.note(|_| {
                let mut status = status.clone();
                status.state = TaskState::Unreachable as i32;
                Some(Change::TaskUpdated {
                    status,
                    state: TaskState::Unreachable,
                })
            });
            self.send_update(&key.0, status);
        }
        let connected: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.conn.is_some())
            .map(|f| f.id.clone())
            .collect();
        for fid in connected {
            self.send_framework(
                &fid,
                event::Event::Failure(event::Failure {
                    agent_id: id.0.clone(),
                }),
            );
        }
        self.note(|_| {
            Some(Change::AgentRemoved {
                agent_id: id.0.clone(),
            })
        });
    }
}

/// A new agent's record: empty books, not yet connected.
// Inlined into its one caller, where it was written before (it is large, returned by value).
#[inline]
fn new_agent(id: AgentId, mode: AgentMode, dynamic: Resources, now: Duration) -> Agent {
    Agent {
        id,
        slot: 0,
        hostname: String::new(),
        attributes: Vec::new(),
        card: Default::default(),
        version: String::new(),
        endpoint: String::new(),
        total: Resources::new(),
        dynamic,
        allocated: Resources::new(),
        offers: Default::default(),
        offered: Resources::new(),
        free: Resources::new(),
        mode,
        link: Link::Disconnected { since: now },
        registered_at: now,
        last_seen: now,
        tasks: Default::default(),
        principal: None,
        declined: Default::default(),
    }
}

/// How far a task that has not ended has got: its non-terminal states in order.
fn progress(state: TaskState) -> u8 {
    match state {
        TaskState::Staging => 1,
        TaskState::Starting => 2,
        TaskState::Running => 3,
        TaskState::Killing => 4,
        _ => 0,
    }
}
