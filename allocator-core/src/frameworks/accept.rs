//! ACCEPT: the call's operations sorted into tasks and conversions (RESERVE, UNRESERVE),
//! validation as a whole (the offers, then the conversions, then the tasks), the updates of
//! a rejected call, and carrying out a valid one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use strata_proto::{
    Operation, TaskInfo, TaskReason, TaskState, allocator_message, call, operation,
};

use strata_proto::ids::{check_id, shorten};
use strata_proto::limits::{MIN_TASK_CPUS, MIN_TASK_MEM_MIB};

use crate::limits::{
    MAX_NAMES_LISTED, MAX_OPERATIONS_PER_ACCEPT, MAX_TASKS_PER_ACCEPT, check_task_size, join_errors,
};
use crate::resources::Resources;
use crate::roles::validate_role;
use crate::{AgentId, Core, FrameworkId, Name, Offer, OfferId, Task, TaskId, TaskKey};

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
pub(crate) struct Conversion {
    pub(crate) reserve: bool,
    pub(crate) resources: Resources,
}

/// The names quoted and joined, the first [`MAX_NAMES_LISTED`] of them and how many more.
fn quote_list(items: &[&str]) -> String {
    let mut list = items
        .iter()
        .take(MAX_NAMES_LISTED)
        .map(|s| format!("{:?}", shorten(s, 64)))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_NAMES_LISTED {
        list.push_str(&format!(" and {} more", items.len() - MAX_NAMES_LISTED));
    }
    list
}

impl Core {
    /// ACCEPT: validated as a whole (see the documentation of [`frameworks`](super)), then
    /// carried out: the offers are used, reservations made or undone, the tasks launched, and
    /// what is left of the offers refused for the call's filter.
    pub(super) fn accept(&mut self, now: Duration, fid: &FrameworkId, accept: call::Accept) {
        let Operations {
            tasks,
            conversions,
            errors: op_errors,
        } = Operations::parse(accept.operations);
        let refuse = self.refuse_duration(accept.filters.and_then(|f| f.refuse_seconds));
        let result = self.validate_accept(fid, &accept.offer_ids, &tasks, conversions, op_errors);
        match result {
            Err(rejection) => {
                // Mesos recovers the offers of invalid offers with no filter, else with the
                // call's.
                let refuse = if rejection.bad_offers {
                    Duration::ZERO
                } else {
                    refuse
                };
                self.reject_accept(now, fid, &tasks, rejection);
                self.use_up_offers(now, fid, &accept.offer_ids, refuse);
            }
            Ok(launch) => self.launch(now, fid, &accept.offer_ids, launch, refuse),
        }
    }

    /// A rejected ACCEPT still uses up the offers it names, as in Mesos: those of this
    /// framework are removed and their resources go back to the pool, refused to the
    /// framework's role for `refuse`. Otherwise an agent would stay offered to a framework
    /// that does not use the offer, with no offer timeout, until it declines or leaves.
    fn use_up_offers(
        &mut self,
        now: Duration,
        fid: &FrameworkId,
        offer_ids: &[String],
        refuse: Duration,
    ) {
        // By agent and role (an ACCEPT may name many offers).
        let mut returned: BTreeMap<(AgentId, Name), Resources> = BTreeMap::new();
        for wire in offer_ids {
            let Some(id) = self.parse_offer_id(wire) else {
                continue;
            };
            if self.offers.get(&id).is_none_or(|o| *o.framework_id != *fid) {
                continue;
            }
            let offer = self.remove_offer(&id, false).expect("offer exists");
            self.refuse_until_tick(offer.agent, fid, &offer.role);
            let agent_id = self.agents.slots[offer.agent].id.clone();
            tracing::debug!(offer_id = %id, %agent_id, "offer of a rejected accept returned");
            returned
                .entry((agent_id, offer.role))
                .or_default()
                .add(&offer.resources);
        }
        for ((agent_id, role), resources) in returned {
            self.add_filter(fid, &agent_id, &role, resources, refuse, now);
        }
    }

    /// Tells the framework why its ACCEPT was rejected: an update with no uuid for each of
    /// its tasks (an ERROR event when it launched none). Nothing is launched or converted.
    fn reject_accept(
        &mut self,
        now: Duration,
        fid: &FrameworkId,
        tasks: &[TaskInfo],
        rejection: Rejection,
    ) {
        let message = join_errors(&rejection.errors);
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
        for task in tasks {
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

    /// Carries out a validated ACCEPT: removes its offers, applies its conversions, launches
    /// its tasks on the agent and refuses the unused rest for `refuse`.
    fn launch(
        &mut self,
        now: Duration,
        fid: &FrameworkId,
        offer_ids: &[String],
        launch: Launch,
        refuse: Duration,
    ) {
        let offer_ids: Vec<OfferId> = offer_ids
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
                    healthy: None,
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
        if used.is_empty() && launch.conversions.is_empty() {
            // An ACCEPT that does nothing is a DECLINE (as Mesos says): the same minimum
            // refusal.
            if let Some(slot) = self.agents.slot(&launch.agent_id) {
                self.refuse_until_tick(slot, fid, &role);
            }
        }
        self.add_filter(fid, &launch.agent_id, &role, unused, refuse, now);
    }

    /// Checks an ACCEPT as a whole (see the documentation of [`frameworks`](super)): the
    /// offers first (any error there rejects the call as bad offers), then the reservations,
    /// then the tasks.
    fn validate_accept(
        &self,
        fid: &FrameworkId,
        offer_ids: &[String],
        tasks: &[TaskInfo],
        conversions: Vec<Conversion>,
        op_errors: Vec<String>,
    ) -> Result<Launch, Rejection> {
        if let Some(error) = op_errors.iter().find(|e| e.starts_with(TOO_MANY)) {
            // Nothing else is checked: the call is refused as a whole, with one short message.
            return Err(Rejection {
                bad_offers: false,
                errors: vec![error.clone()],
                agent_id: String::new(),
            });
        }
        let Offered {
            agent,
            role,
            mut offered,
        } = self.validate_offers(fid, offer_ids)?;
        // Reservations first: LAUNCH may use what a RESERVE of the same ACCEPT made.
        let mut errors = op_errors;
        self.apply_conversions(&agent, &role, &conversions, &mut offered, &mut errors);
        let offers_phrase = offers_phrase(offer_ids);
        let parsed = self.validate_tasks(fid, &agent, tasks, &offered, &offers_phrase, &mut errors);
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

    /// The offers of an ACCEPT: known, this framework's, each named once, all on one agent
    /// and made to one role; what they hold together.
    fn validate_offers(
        &self,
        fid: &FrameworkId,
        offer_ids: &[String],
    ) -> Result<Offered, Rejection> {
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
        Ok(Offered {
            agent: agent.expect("at least one valid offer").clone(),
            role: role.expect("at least one valid offer").to_owned(),
            offered,
        })
    }

    /// Applies the RESERVEs and UNRESERVEs of an ACCEPT to what its offers hold, in order;
    /// what cannot be applied is an error.
    fn apply_conversions(
        &self,
        agent: &AgentId,
        role: &str,
        conversions: &[Conversion],
        offered: &mut Resources,
        errors: &mut Vec<String>,
    ) {
        let dynamic = &self.agents[agent].dynamic;
        let mut made = Resources::new();
        for c in conversions {
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
    }

    /// The tasks of an ACCEPT with their parsed resources: ids unique and unused, a command
    /// each, on the offers' agent, within what the offers hold, one by one and together.
    fn validate_tasks(
        &self,
        fid: &FrameworkId,
        agent: &AgentId,
        tasks: &[TaskInfo],
        offered: &Resources,
        offers_phrase: &str,
        errors: &mut Vec<String>,
    ) -> Vec<(TaskInfo, Resources)> {
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
            } else if let Err(e) = check_id("task id", name) {
                errors.push(e.to_string());
            } else {
                if ids_in_call[name.as_str()] > 1 && reported_twice.insert(name.as_str()) {
                    errors.push(format!(
                        "task id {name:?} appears more than once in this ACCEPT: task ids must be \
                         unique within the framework"
                    ));
                }
                self.check_task_id_unused(fid, name, errors);
            }
            check_task_fields(t, agent, errors);
            errors.extend(check_task_size(t));
            self.check_run_as(fid, t, errors);
            match Resources::from_proto(&t.resources) {
                Ok(r) => {
                    check_minimum(name, &r, errors);
                    if !offered.contains(&r) {
                        errors.push(shortfall_message(
                            &[name.as_str()],
                            &r,
                            offered,
                            offers_phrase,
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
            check_tasks_together(tasks, &parsed, offered, offers_phrase, errors);
        }
        parsed
    }

    /// An error when the framework's principal may not run tasks as the task's user (its
    /// command's; empty: the agent's default user, which rules match with `*`).
    fn check_run_as(&self, fid: &FrameworkId, t: &TaskInfo, errors: &mut Vec<String>) {
        let Some(fw) = self.frameworks.get(fid) else {
            return;
        };
        let user = t.command.as_ref().map_or("", |c| c.user.as_str());
        if let Err(denied) =
            self.config
                .policy
                .check(fw.principal.as_deref(), strata_auth::Action::RunTasks, user)
        {
            errors.push(format!("task {:?}: {denied}", shorten(&t.task_id, 64)));
        }
    }

    /// An error when task id `name` is used by an active task of the framework.
    fn check_task_id_unused(&self, fid: &FrameworkId, name: &str, errors: &mut Vec<String>) {
        let key: TaskKey = (fid.clone(), TaskId(name.to_owned()));
        if let Some(existing) = self.tasks.get(&key) {
            errors.push(format!(
                "task id {name:?} is already used by an active task of this framework \
                 (on agent {}, {}): choose another id",
                existing.agent_id,
                existing.state.label()
            ));
        }
    }
}

/// The operations of an ACCEPT, sorted: the tasks of its LAUNCHes, its RESERVEs and
/// UNRESERVEs, and what was wrong with any.
struct Operations {
    tasks: Vec<TaskInfo>,
    conversions: Vec<Conversion>,
    errors: Vec<String>,
}

impl Operations {
    fn parse(operations: Vec<Operation>) -> Self {
        let mut tasks: Vec<TaskInfo> = Vec::new();
        let mut conversions = Vec::new();
        let mut op_errors = Vec::new();
        if operations.len() > MAX_OPERATIONS_PER_ACCEPT {
            op_errors.push(format!(
                "{TOO_MANY} operations ({}): one ACCEPT may hold at most \
                 {MAX_OPERATIONS_PER_ACCEPT}; split it",
                operations.len()
            ));
        }
        for op in operations {
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
        if tasks.len() > MAX_TASKS_PER_ACCEPT {
            op_errors.push(format!(
                "{TOO_MANY} tasks ({}): one ACCEPT may launch at most {MAX_TASKS_PER_ACCEPT}; \
                 split the launch over several calls",
                tasks.len()
            ));
        }
        Self {
            tasks,
            conversions,
            errors: op_errors,
        }
    }
}

/// How an error that refuses an ACCEPT for its size begins.
const TOO_MANY: &str = "the ACCEPT has too many";

/// What the offers of a valid ACCEPT hold, their agent and their role.
struct Offered {
    agent: AgentId,
    role: String,
    offered: Resources,
}

/// `offer O has` or `offers O1, O2 have`, for error messages.
fn offers_phrase(offer_ids: &[String]) -> String {
    let offer_names: Vec<&str> = offer_ids.iter().map(String::as_str).collect();
    if offer_names.len() == 1 {
        format!("offer {} has", offer_names[0])
    } else {
        format!("offers {} have", offer_names.join(", "))
    }
}

/// Errors for a task without a command or naming an agent other than the offers'.
fn check_task_fields(t: &TaskInfo, agent: &AgentId, errors: &mut Vec<String>) {
    let name = &t.task_id;
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
    if let Err(e) = strata_proto::network::mappings(t) {
        errors.push(format!("task {:?}: {e}", shorten(name, 64)));
    }
}

/// An error when a task asks for less than the least cpus or memory a task may have: every
/// task runs with a memory limit and a CPU share that mean something (as Mesos' minimum
/// allocatable resources).
fn check_minimum(name: &str, resources: &Resources, errors: &mut Vec<String>) {
    // Resources hold scalars in milli-units.
    let cpus = resources.scalar(strata_proto::names::CPUS) as f64 / 1000.0;
    let mem = resources.scalar(strata_proto::names::MEM) as f64 / 1000.0;
    if cpus < MIN_TASK_CPUS || mem < MIN_TASK_MEM_MIB {
        errors.push(format!(
            "task {:?} asks for cpus={cpus} and mem={mem}: every task needs at least \
             cpus={MIN_TASK_CPUS} and mem={MIN_TASK_MEM_MIB} (MiB)",
            shorten(name, 64)
        ));
    }
}

/// An error when the tasks of an ACCEPT, each within the offers, together are not.
fn check_tasks_together(
    tasks: &[TaskInfo],
    parsed: &[(TaskInfo, Resources)],
    offered: &Resources,
    offers_phrase: &str,
    errors: &mut Vec<String>,
) {
    let mut sum = Resources::new();
    for (_, r) in parsed {
        sum.add(r);
    }
    if !offered.contains(&sum) {
        let names: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        errors.push(shortfall_message(&names, &sum, offered, offers_phrase));
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
