//! Framework events: SUBSCRIBE, the scheduler calls, stream ends, failover and teardown.
//!
//! Invariants: a framework is bound to at most one stream; a call whose framework_id is not
//! the stream's framework gets an ERROR event and changes nothing. ACCEPT is validated as a
//! whole before anything changes: on any error every task of the call gets an update with no
//! uuid (TASK_DROPPED/INVALID_OFFERS for bad offers, else TASK_ERROR/TASK_INVALID) and the
//! offers stay outstanding. A disconnected framework holds no offers; it is removed (tasks
//! killed, resources freed) at once with failover_timeout 0, otherwise when the timeout
//! expires without a re-subscription, or at TEARDOWN.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use strata_proto::{
    Call, FrameworkCapability, FrameworkInfo, TaskInfo, TaskReason, TaskState, TaskStatus,
    allocator_message, call, event, operation,
};

use super::resources::Resources;
use super::roles::validate_role;
use super::{
    AgentId, ConnId, Core, CoreError, FastMap, FastSet, Framework, FrameworkId, Name, Offer,
    OfferId, Task, TaskId, TaskKey,
};

/// The longest failover timeout honoured.
const MAX_FAILOVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why an ACCEPT was rejected.
struct Rejection {
    /// The offers were unknown, used, foreign or on several agents.
    bad_offers: bool,
    errors: Vec<String>,
    /// The agent of the offers, when known, for the updates.
    agent_id: String,
}

/// A validated ACCEPT: reservations to make or undo, then tasks with their parsed resources,
/// on one agent, for one role.
struct Launch {
    agent_id: AgentId,
    role: String,
    /// The offered resources after the conversions.
    offered: Resources,
    conversions: Vec<Conversion>,
    tasks: Vec<(TaskInfo, Resources)>,
}

/// A RESERVE (`reserve`: unreserved to reserved) or an UNRESERVE, of `resources` as reserved.
#[derive(Clone, Debug)]
pub(super) struct Conversion {
    pub(super) reserve: bool,
    pub(super) resources: Resources,
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Core {
    /// A framework record with empty books.
    pub(super) fn new_framework(id: FrameworkId, now: Duration) -> Framework {
        Framework {
            id,
            name: String::new(),
            roles: Vec::new(),
            failover_timeout: Duration::ZERO,
            partition_aware: false,
            conn: None,
            disconnected_at: None,
            suppressed: BTreeSet::new(),
            filters: FastMap::default(),
            offers: FastSet::default(),
            allocated: Resources::new(),
            offered: Resources::new(),
            by_role: Default::default(),
            tasks: BTreeSet::new(),
            registered_at: now,
            last_heartbeat: now,
        }
    }

    /// SUBSCRIBE on stream `conn`: registers a new framework (empty id) or re-attaches an
    /// existing one (closing its older stream), then sends SUBSCRIBED. An unknown id is
    /// refused and nothing changes.
    pub fn framework_subscribe(
        &mut self,
        now: Duration,
        conn: ConnId,
        info: FrameworkInfo,
    ) -> Result<FrameworkId, CoreError> {
        if let Some(fid) = self.framework_conns.get(&conn).cloned() {
            self.send_error(
                &fid,
                format!(
                    "this stream is already subscribed as framework {fid}: send SUBSCRIBE once, \
                     as the first call of a stream"
                ),
            );
            return Ok(fid);
        }
        let roles = if info.roles.is_empty() {
            super::allocation::default_roles()
        } else {
            info.roles.clone()
        };
        for role in &roles {
            validate_role(role).map_err(|source| CoreError::InvalidFrameworkRole {
                name: info.name.clone(),
                source,
            })?;
        }
        let id = if info.id.is_empty() {
            let id = FrameworkId(format!("{}-{:04}", self.prefix, self.next_framework));
            self.next_framework += 1;
            self.frameworks
                .insert(id.clone(), Self::new_framework(id.clone(), now));
            tracing::info!(framework_id = %id, name = %info.name, "framework registered");
            id
        } else {
            let id = FrameworkId(info.id.clone());
            let Some(fw) = self.frameworks.get(&id) else {
                return Err(CoreError::UnknownFramework {
                    framework_id: info.id,
                });
            };
            tracing::info!(framework_id = %id, name = %info.name, "framework re-subscribed");
            if let Some(old) = fw.conn {
                self.send_error(
                    &id,
                    format!(
                        "framework {id} subscribed again on another stream; this stream is closed"
                    ),
                );
                self.framework_conns.remove(&old);
                self.outbox.push(super::Command::Close { conn: old });
            }
            // Offers made on the old stream are unknown to the new one.
            self.remove_framework_offers(&id, false);
            id
        };

        let failover = Duration::try_from_secs_f64(info.failover_timeout_seconds.max(0.0))
            .map_or(Duration::ZERO, |d| d.min(MAX_FAILOVER));
        let fw = self.frameworks.get_mut(&id).expect("framework exists");
        fw.name = info.name;
        fw.roles = roles;
        fw.failover_timeout = failover;
        fw.partition_aware = info
            .capabilities
            .contains(&(FrameworkCapability::PartitionAware as i32));
        fw.conn = Some(conn);
        fw.disconnected_at = None;
        fw.suppressed.clear();
        fw.last_heartbeat = now;
        self.framework_conns.insert(conn, id.clone());
        self.record_framework(&id);
        self.send_framework(
            &id,
            event::Event::Subscribed(event::Subscribed {
                framework_id: id.0.clone(),
                heartbeat_interval_seconds: self.config.framework_heartbeat_interval.as_secs_f64(),
            }),
        );
        self.full_allocation = true;
        Ok(id)
    }

    /// A call (other than the stream's first SUBSCRIBE) on stream `conn`.
    pub fn framework_call(&mut self, now: Duration, conn: ConnId, call: Call) {
        let Some(fid) = self.framework_conns.get(&conn).cloned() else {
            tracing::warn!(%conn, "call on a stream that is not subscribed; ignored");
            return;
        };
        let _span = tracing::info_span!("call", framework_id = %fid).entered();
        if call.framework_id != fid.0 {
            self.send_error(
                &fid,
                format!(
                    "call names framework {:?} but this stream is subscribed as framework {fid}: \
                     every call must carry the framework_id from SUBSCRIBED",
                    call.framework_id
                ),
            );
            return;
        }
        match call.call {
            None => self.send_error(
                &fid,
                "call has no type: set one of accept, decline, revive, ...".to_owned(),
            ),
            Some(call::Call::Subscribe(_)) => self.send_error(
                &fid,
                format!(
                    "this stream is already subscribed as framework {fid}: send SUBSCRIBE once, \
                     as the first call of a stream"
                ),
            ),
            Some(call::Call::Accept(accept)) => self.accept(now, &fid, accept),
            Some(call::Call::Decline(decline)) => self.decline(now, &fid, decline),
            Some(call::Call::Revive(revive)) => {
                tracing::info!(roles = ?revive.roles, "revive");
                let fw = self.frameworks.get_mut(&fid).expect("subscribed framework");
                if revive.roles.is_empty() {
                    fw.filters.clear();
                    fw.suppressed.clear();
                } else {
                    // Only the filters made by offers to the roles named.
                    fw.filters
                        .retain(|_, f| !revive.roles.iter().any(|r| **r == *f.role));
                    for role in &revive.roles {
                        fw.suppressed.remove(role);
                    }
                }
                self.full_allocation = true;
            }
            Some(call::Call::Suppress(suppress)) => {
                tracing::info!(roles = ?suppress.roles, "suppress");
                let fw = self.frameworks.get_mut(&fid).expect("subscribed framework");
                let unknown: Vec<String> = suppress
                    .roles
                    .iter()
                    .filter(|r| !fw.roles.contains(r))
                    .cloned()
                    .collect();
                if unknown.is_empty() {
                    let roles = if suppress.roles.is_empty() {
                        fw.roles.clone()
                    } else {
                        suppress.roles
                    };
                    fw.suppressed.extend(roles);
                } else {
                    self.send_error(
                        &fid,
                        format!(
                            "suppress names roles {unknown:?} the framework is not subscribed \
                             to: name some of its roles, or none for all"
                        ),
                    );
                }
            }
            Some(call::Call::Kill(kill)) => self.kill(now, &fid, kill),
            Some(call::Call::Acknowledge(ack)) => self.acknowledge(&fid, ack),
            Some(call::Call::Reconcile(reconcile)) => self.reconcile(now, &fid, reconcile),
            Some(call::Call::Teardown(_)) => {
                self.remove_framework(now, &fid, "the framework tore itself down".to_owned());
            }
        }
    }

    /// The framework's stream ended: its offers go back; it is removed now if its failover
    /// timeout is 0, otherwise it waits that long for a re-subscription.
    pub fn framework_disconnected(&mut self, now: Duration, conn: ConnId) {
        let Some(fid) = self.framework_conns.remove(&conn) else {
            return;
        };
        let fw = self.frameworks.get_mut(&fid).expect("subscribed framework");
        fw.conn = None;
        fw.disconnected_at = Some(now);
        let failover = fw.failover_timeout;
        tracing::info!(framework_id = %fid, failover_timeout_s = failover.as_secs_f64(), "framework disconnected");
        self.remove_framework_offers(&fid, false);
        self.record_framework(&fid);
        if failover.is_zero() {
            self.remove_framework(
                now,
                &fid,
                "its stream ended and its failover timeout is 0".to_owned(),
            );
        }
    }

    pub(super) fn expire_frameworks(&mut self, now: Duration) {
        let expired: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| {
                f.disconnected_at
                    .is_some_and(|at| now.saturating_sub(at) >= f.failover_timeout)
            })
            .map(|f| f.id.clone())
            .collect();
        for fid in expired {
            self.remove_framework(
                now,
                &fid,
                "it did not re-subscribe within its failover timeout".to_owned(),
            );
        }
    }

    pub(super) fn heartbeat_frameworks(&mut self, now: Duration) {
        let interval = self.config.framework_heartbeat_interval;
        let due: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.conn.is_some() && now.saturating_sub(f.last_heartbeat) >= interval)
            .map(|f| f.id.clone())
            .collect();
        for fid in due {
            if let Some(fw) = self.frameworks.get_mut(&fid) {
                fw.last_heartbeat = now;
            }
            self.send_framework(&fid, event::Event::Heartbeat(event::Heartbeat {}));
        }
    }

    /// Removes a framework: offers returned, tasks killed on their agents and recorded
    /// KILLED, its stream (if any) closed.
    pub(super) fn remove_framework(&mut self, now: Duration, fid: &FrameworkId, why: String) {
        tracing::info!(framework_id = %fid, reason = %why, "framework removed");
        self.remove_framework_offers(fid, false);
        let task_ids: Vec<TaskId> = self.frameworks[fid].tasks.iter().cloned().collect();
        for task_id in task_ids {
            let key = (fid.clone(), task_id);
            let task = &self.tasks[&key];
            if let Some(conn) = self.agents.get(&task.agent_id).and_then(|a| a.conn()) {
                self.send_kill(conn, &key, None);
            }
            self.end_task(
                &key,
                TaskState::Killed,
                TaskReason::FrameworkRemoved,
                format!("framework {fid} was removed: {why}"),
                None,
                now,
            );
        }
        if let Some(conn) = self.frameworks[fid].conn {
            self.framework_conns.remove(&conn);
            self.outbox.push(super::Command::Close { conn });
        }
        self.frameworks.remove(fid);
        self.record(super::registry::RegistryOp::RemoveFramework(fid.0.clone()));
        self.full_allocation = true;
    }

    fn accept(&mut self, now: Duration, fid: &FrameworkId, accept: call::Accept) {
        let mut tasks: Vec<TaskInfo> = Vec::new();
        let mut conversions = Vec::new();
        let mut op_errors = Vec::new();
        for op in accept.operations {
            match op.operation {
                Some(operation::Operation::Launch(launch)) => tasks.extend(launch.tasks),
                Some(operation::Operation::Reserve(r)) => {
                    match parse_conversion(true, &r.resources) {
                        Ok(c) => conversions.push(c),
                        Err(e) => op_errors.push(e),
                    }
                }
                Some(operation::Operation::Unreserve(r)) => {
                    match parse_conversion(false, &r.resources) {
                        Ok(c) => conversions.push(c),
                        Err(e) => op_errors.push(e),
                    }
                }
                None => op_errors.push(
                    "an operation in this ACCEPT has no type: set launch, reserve or unreserve"
                        .to_owned(),
                ),
            }
        }
        let refuse = self.refuse_duration(accept.filters.and_then(|f| f.refuse_seconds));
        let result = self.validate_accept(fid, &accept.offer_ids, &tasks, conversions, op_errors);
        match result {
            Err(rejection) => {
                let message = rejection.errors.join("; ");
                tracing::warn!(%message, tasks = tasks.len(), "accept rejected");
                if tasks.is_empty() {
                    self.send_error(fid, format!("accept rejected: {message}"));
                    return;
                }
                let (state, reason) = if rejection.bad_offers {
                    (TaskState::Dropped, TaskReason::InvalidOffers)
                } else {
                    (TaskState::Error, TaskReason::TaskInvalid)
                };
                for task in &tasks {
                    let agent_id = if rejection.agent_id.is_empty() {
                        task.agent_id.clone()
                    } else {
                        rejection.agent_id.clone()
                    };
                    let status = Self::allocator_status(
                        now,
                        fid,
                        &task.task_id,
                        &agent_id,
                        state,
                        reason,
                        message.clone(),
                    );
                    self.send_update(fid, status);
                }
            }
            Ok(launch) => {
                let offer_ids: Vec<OfferId> = accept
                    .offer_ids
                    .iter()
                    .filter_map(|s| self.parse_offer_id(s))
                    .collect();
                for id in &offer_ids {
                    self.remove_offer(id, false);
                }
                for c in &launch.conversions {
                    self.convert(&launch.agent_id, c);
                }
                let conn = self
                    .agents
                    .get(&launch.agent_id)
                    .and_then(|a| a.conn())
                    .expect("offers exist only for connected agents");
                let mut used = Resources::new();
                for (mut info, resources) in launch.tasks {
                    info.agent_id = launch.agent_id.0.clone();
                    used.add(&resources);
                    let task_id = TaskId(info.task_id.clone());
                    tracing::info!(task_id = %task_id, agent_id = %launch.agent_id, resources = %resources, "launching task");
                    self.insert_task(
                        Task {
                            framework_id: fid.clone(),
                            id: task_id,
                            agent_id: launch.agent_id.clone(),
                            role: launch.role.clone(),
                            info: info.clone(),
                            resources,
                            state: TaskState::Staging,
                            reason: TaskReason::Unspecified,
                            message: String::new(),
                            exit_code: None,
                            unreachable: false,
                            kill: None,
                            launched_at: now,
                            updated_at: now,
                        },
                        true,
                    );
                    self.send_agent(
                        conn,
                        allocator_message::Message::LaunchTask(allocator_message::LaunchTask {
                            framework_id: fid.0.clone(),
                            task: Some(info),
                        }),
                    );
                }
                let unused = launch.offered.minus(&used);
                let role = Name::from(launch.role.as_str());
                self.add_filter(fid, &launch.agent_id, &role, unused, refuse, now);
            }
        }
    }

    /// Checks an ACCEPT as a whole; see the module documentation.
    fn validate_accept(
        &self,
        fid: &FrameworkId,
        offer_ids: &[String],
        tasks: &[TaskInfo],
        conversions: Vec<Conversion>,
        op_errors: Vec<String>,
    ) -> Result<Launch, Rejection> {
        // The offers.
        let mut errors = Vec::new();
        let mut agent: Option<&AgentId> = None;
        let mut offered = Resources::new();
        let mut role: Option<&str> = None;
        let mut seen = BTreeSet::new();
        let mut valid_offers: Vec<&Offer> = Vec::new();
        if offer_ids.is_empty() {
            errors.push("the ACCEPT names no offers: give the ids of the offers to use".to_owned());
        }
        for id in offer_ids {
            if !seen.insert(id.as_str()) {
                errors.push(format!("offer {id} is named more than once"));
                continue;
            }
            match self.parse_offer_id(id).and_then(|o| self.offers.get(&o)) {
                None => errors.push(format!(
                    "offer {id} is unknown: it was never made, or was already used, declined or \
                     rescinded; wait for a new offer"
                )),
                Some(offer) if *offer.framework_id != *fid => errors.push(format!(
                    "offer {id} was made to another framework, not to {fid}"
                )),
                Some(offer) => {
                    let offer_agent = &self.agents.slots[offer.agent].id;
                    match agent {
                        Some(a) if a != offer_agent => errors.push(format!(
                            "offer {id} is on agent {offer_agent} but the other offers are on \
                             agent {a}: one ACCEPT may only use offers of one agent"
                        )),
                        _ => agent = Some(offer_agent),
                    }
                    match role {
                        Some(r) if *r != *offer.role => errors.push(format!(
                            "offer {id} is made to role {:?} but the other offers to role \
                             {r:?}: one ACCEPT may only use offers made to one role",
                            offer.role
                        )),
                        _ => role = Some(&offer.role),
                    }
                    offered.add(&offer.resources);
                    valid_offers.push(offer);
                }
            }
        }
        let agent_id = agent.map(|a| a.0.clone()).unwrap_or_default();
        if !errors.is_empty() {
            return Err(Rejection {
                bad_offers: true,
                errors,
                agent_id,
            });
        }
        let agent = agent.expect("at least one valid offer").clone();
        let role = role.expect("at least one valid offer").to_owned();
        // Reservations first: LAUNCH may use what a RESERVE of the same ACCEPT made.
        errors = op_errors;
        let dynamic = &self.agents[&agent].dynamic;
        let mut made = Resources::new();
        for c in &conversions {
            let plain = c.resources.flattened();
            if c.reserve {
                if let Some(bad) = c.resources.reservation_roles().find(|r| *r != role) {
                    errors.push(format!(
                        "RESERVE for role {bad:?} but the offer is made to role {role:?}: \
                         reserve for the offer's role"
                    ));
                } else if !offered.unreserved().contains(&plain) {
                    errors.push(format!(
                        "RESERVE of {} but the offers have unreserved {}",
                        c.resources,
                        offered.unreserved()
                    ));
                } else {
                    offered.subtract(&plain);
                    offered.add(&c.resources);
                    made.add(&c.resources);
                }
            } else if !offered.contains(&c.resources) {
                errors.push(format!(
                    "UNRESERVE of {} but the offers hold {offered}",
                    c.resources
                ));
            } else if !dynamic.plus(&made).contains(&c.resources) {
                errors.push(format!(
                    "UNRESERVE of {}: only dynamic reservations can be unreserved; the agent's \
                     configuration makes the others",
                    c.resources
                ));
            } else {
                offered.subtract(&c.resources);
                offered.add(&plain);
            }
        }
        let offer_names: Vec<&str> = offer_ids.iter().map(String::as_str).collect();
        let offers_phrase = if offer_names.len() == 1 {
            format!("offer {} has", offer_names[0])
        } else {
            format!("offers {} have", offer_names.join(", "))
        };

        // The tasks.
        let mut ids_in_call: HashMap<&str, usize> = HashMap::new();
        for t in tasks {
            *ids_in_call.entry(t.task_id.as_str()).or_insert(0) += 1;
        }
        let mut reported_twice = BTreeSet::new();
        let mut parsed = Vec::with_capacity(tasks.len());
        let mut all_parsed = true;
        for t in tasks {
            let name = &t.task_id;
            if name.is_empty() {
                errors.push(
                    "a task has an empty task_id: give every task an id unique within the \
                     framework"
                        .to_owned(),
                );
            } else {
                if ids_in_call[name.as_str()] > 1 && reported_twice.insert(name.as_str()) {
                    errors.push(format!(
                        "task id {name:?} appears more than once in this ACCEPT: task ids must be \
                         unique within the framework"
                    ));
                }
                let key: TaskKey = (fid.clone(), TaskId(name.clone()));
                if let Some(existing) = self.tasks.get(&key) {
                    errors.push(format!(
                        "task id {name:?} is already used by an active task of this framework \
                         (on agent {}, {}): choose another id",
                        existing.agent_id,
                        existing.state.label()
                    ));
                }
            }
            let has_command = t.command.as_ref().is_some_and(|c| !c.value.is_empty());
            if !has_command {
                errors.push(format!(
                    "task {name:?} has no command: set command.value to the program or shell \
                     command to run"
                ));
            }
            if !t.agent_id.is_empty() && t.agent_id != agent.0 {
                errors.push(format!(
                    "task {name:?} names agent {} but the offer is on agent {agent}",
                    t.agent_id
                ));
            }
            match Resources::from_proto(&t.resources) {
                Ok(r) => {
                    if !offered.contains(&r) {
                        errors.push(shortfall_message(
                            &[name.as_str()],
                            &r,
                            &offered,
                            &offers_phrase,
                        ));
                    }
                    parsed.push((t.clone(), r));
                }
                Err(e) => {
                    all_parsed = false;
                    errors.push(format!("task {name:?} has invalid resources: {e}"));
                }
            }
        }
        if errors.is_empty() && all_parsed && parsed.len() > 1 {
            let mut sum = Resources::new();
            for (_, r) in &parsed {
                sum.add(r);
            }
            if !offered.contains(&sum) {
                let names: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
                errors.push(shortfall_message(&names, &sum, &offered, &offers_phrase));
            }
        }
        if !errors.is_empty() {
            return Err(Rejection {
                bad_offers: false,
                errors,
                agent_id: agent.0,
            });
        }
        Ok(Launch {
            agent_id: agent,
            role,
            offered,
            conversions,
            tasks: parsed,
        })
    }

    fn decline(&mut self, now: Duration, fid: &FrameworkId, decline: call::Decline) {
        let refuse = self.refuse_duration(decline.filters.and_then(|f| f.refuse_seconds));
        for wire in decline.offer_ids {
            let Some(id) = self.parse_offer_id(&wire) else {
                tracing::debug!(offer_id = %wire, "decline of an unknown offer; ignored");
                continue;
            };
            match self.offers.get(&id) {
                Some(offer) if *offer.framework_id == *fid => {
                    let offer = self.remove_offer(&id, false).expect("offer exists");
                    let agent_id = self.agents.slots[offer.agent].id.clone();
                    tracing::debug!(offer_id = %id, %agent_id, refuse_s = refuse.as_secs_f64(), "offer declined");
                    self.add_filter(fid, &agent_id, &offer.role, offer.resources, refuse, now);
                }
                // Unknown offers are normal after a rescind; Mesos ignores them too.
                _ => tracing::debug!(offer_id = %id, "decline of an unknown offer; ignored"),
            }
        }
    }

    fn kill(&mut self, now: Duration, fid: &FrameworkId, kill: call::Kill) {
        let key = (fid.clone(), TaskId(kill.task_id.clone()));
        let _span = tracing::info_span!("kill", task_id = %key.1).entered();
        let Some(task) = self.tasks.get_mut(&key) else {
            let status = Self::allocator_status(
                now,
                fid,
                &kill.task_id,
                &kill.agent_id,
                TaskState::Lost,
                TaskReason::TaskUnknown,
                format!(
                    "task {:?} is not known to the allocator as an active task: it may have \
                     ended already; reconcile to learn its last state",
                    kill.task_id
                ),
            );
            self.send_update(fid, status);
            return;
        };
        task.kill = Some(kill.grace_period_seconds);
        let agent_id = task.agent_id.clone();
        match self.agents.get(&agent_id).and_then(|a| a.conn()) {
            Some(conn) => {
                tracing::info!(agent_id = %agent_id, "kill sent to agent");
                self.send_kill(conn, &key, kill.grace_period_seconds);
            }
            None => tracing::info!(
                agent_id = %agent_id,
                "agent not connected; the kill is sent when it re-registers"
            ),
        }
    }

    fn acknowledge(&mut self, fid: &FrameworkId, ack: call::Acknowledge) {
        if ack.uuid.is_empty() {
            self.send_error(
                fid,
                format!(
                    "acknowledge of task {:?} has no uuid: only updates that carry a uuid need \
                     acknowledging",
                    ack.task_id
                ),
            );
            return;
        }
        let key = (fid.clone(), TaskId(ack.task_id.clone()));
        let agent_id = if ack.agent_id.is_empty() {
            self.tasks
                .get(&key)
                .or_else(|| self.history.get(&key))
                .map(|t| t.agent_id.clone())
        } else {
            Some(AgentId(ack.agent_id.clone()))
        };
        let Some(agent_id) = agent_id else {
            self.send_error(
                fid,
                format!(
                    "acknowledge of task {:?} names no agent and the task is unknown: set \
                     agent_id from the update",
                    ack.task_id
                ),
            );
            return;
        };
        let Some(agent) = self.agents.get(&agent_id) else {
            self.send_error(
                fid,
                format!(
                    "acknowledge of task {:?} names unknown agent {agent_id}",
                    ack.task_id
                ),
            );
            return;
        };
        match agent.conn() {
            Some(conn) => self.send_agent(
                conn,
                allocator_message::Message::Acknowledge(allocator_message::AcknowledgeUpdate {
                    framework_id: fid.0.clone(),
                    task_id: ack.task_id,
                    uuid: ack.uuid,
                }),
            ),
            // The agent resends the update when it re-registers; it is acknowledged then.
            None => {
                tracing::debug!(task_id = %ack.task_id, agent_id = %agent_id, "agent not connected; acknowledgement dropped")
            }
        }
    }

    fn reconcile(&mut self, now: Duration, fid: &FrameworkId, reconcile: call::Reconcile) {
        let mut statuses = Vec::new();
        if reconcile.tasks.is_empty() {
            let fw = &self.frameworks[fid];
            for task_id in &fw.tasks {
                let task = &self.tasks[&(fid.clone(), task_id.clone())];
                statuses.push(self.reconcile_status(now, task));
            }
        } else {
            for rt in reconcile.tasks {
                let key = (fid.clone(), TaskId(rt.task_id.clone()));
                let status = match self.tasks.get(&key).or_else(|| self.history.get(&key)) {
                    Some(task) => self.reconcile_status(now, task),
                    None => Self::allocator_status(
                        now,
                        fid,
                        &rt.task_id,
                        &rt.agent_id,
                        TaskState::Lost,
                        TaskReason::Reconciliation,
                        format!("task {:?} is unknown to the allocator", rt.task_id),
                    ),
                };
                statuses.push(status);
            }
        }
        tracing::info!(updates = statuses.len(), "reconcile");
        for status in statuses {
            self.send_update(fid, status);
        }
    }

    fn reconcile_status(&self, now: Duration, task: &Task) -> TaskStatus {
        TaskStatus {
            exit_code: task.exit_code,
            ..Self::allocator_status(
                now,
                &task.framework_id,
                &task.id.0,
                &task.agent_id.0,
                self.visible_state(task),
                TaskReason::Reconciliation,
                task.message.clone(),
            )
        }
    }
}

/// Parses the resources of a RESERVE or UNRESERVE: every one must name its role.
fn parse_conversion(reserve: bool, list: &[strata_proto::Resource]) -> Result<Conversion, String> {
    let what = if reserve { "RESERVE" } else { "UNRESERVE" };
    let resources =
        Resources::from_proto(list).map_err(|e| format!("{what} has invalid resources: {e}"))?;
    if resources.is_empty() {
        return Err(format!(
            "{what} names no resources: list what to (un)reserve"
        ));
    }
    if !resources.unreserved().is_empty() {
        return Err(format!(
            "{what} names resources without a role: set each resource's role to the \
             reservation's role"
        ));
    }
    for role in resources.reservation_roles() {
        validate_role(role).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(Conversion { reserve, resources })
}

/// `task "t1" asks for cpus=4 but offer O has cpus=2`, or for several tasks
/// `tasks "t1", "t2" ask for cpus=4 in total but offers O1, O2 have cpus=2`.
fn shortfall_message(
    names: &[&str],
    wanted: &Resources,
    offered: &Resources,
    offers_phrase: &str,
) -> String {
    let (want, have): (Vec<String>, Vec<String>) = offered.shortfall(wanted).into_iter().unzip();
    let (want, have) = (want.join(", "), have.join(", "));
    if names.len() == 1 {
        format!(
            "task {} asks for {want} but {offers_phrase} {have}",
            quote_list(names)
        )
    } else {
        format!(
            "tasks {} ask for {want} in total but {offers_phrase} {have}",
            quote_list(names)
        )
    }
}
