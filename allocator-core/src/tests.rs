//! Unit tests of the core state machine, driven directly with an injected clock.
//! Every helper checks the core's invariants (resource conservation and book consistency)
//! after each step.

use std::time::Duration;

use strata_proto::names::{self, CPUS, MEM, PORTS};
use strata_proto::{
    AgentInfo, AgentTask, Attribute, Call, CommandInfo, Filters, FrameworkCapability,
    FrameworkInfo, ListTasksRequest, Offer, Operation, Resource, TaskInfo, TaskReason, TaskSource,
    TaskState, TaskStatus, agent_message, allocator_message, call, event, operation,
};

use super::{AgentId, Command, ConnId, Core, CoreError, FrameworkId};
use crate::config::AllocatorConfig;

pub(super) const EPOCH: Duration = Duration::from_secs(1_700_000_000);

pub(super) struct Harness {
    pub(super) core: Core,
    pub(super) now: Duration,
    next_conn: u64,
}

pub(super) fn config() -> AllocatorConfig {
    AllocatorConfig {
        agent_heartbeat_interval: Duration::from_secs(5),
        agent_timeout: Duration::from_secs(15),
        agent_reconnect_timeout: Duration::from_secs(5),
        agent_reregister_timeout: Duration::from_secs(600),
        framework_heartbeat_interval: Duration::from_secs(15),
        allocation_interval: Duration::from_secs(1),
        default_refuse: Duration::from_secs(5),
        terminal_task_history: 100,
        offer_timeout: None,
        max_frameworks: 1000,
        max_frameworks_per_principal: 100,
        policy: strata_auth::Policy::Open,
        leader_epoch: 0,
    }
}

pub(super) fn agent_resources(cpus: f64, mem: f64) -> Vec<Resource> {
    vec![
        Resource::scalar(CPUS, cpus),
        Resource::scalar(MEM, mem),
        Resource::ranges(PORTS, [(31000, 31009)]),
    ]
}

pub(super) fn task(id: &str, cpus: f64, mem: f64) -> TaskInfo {
    TaskInfo {
        task_id: id.to_owned(),
        name: format!("task {id}"),
        resources: vec![Resource::scalar(CPUS, cpus), Resource::scalar(MEM, mem)],
        command: Some(CommandInfo {
            shell: true,
            value: "true".to_owned(),
            ..CommandInfo::default()
        }),
        ..TaskInfo::default()
    }
}

pub(super) fn launch_call(fid: &FrameworkId, offer_ids: &[&str], tasks: Vec<TaskInfo>) -> Call {
    Call {
        framework_id: fid.0.clone(),
        call: Some(call::Call::Accept(call::Accept {
            offer_ids: offer_ids.iter().map(|s| (*s).to_owned()).collect(),
            operations: vec![Operation {
                operation: Some(operation::Operation::Launch(operation::Launch { tasks })),
            }],
            filters: Some(Filters {
                refuse_seconds: Some(0.0),
            }),
        })),
    }
}

pub(super) fn simple_call(fid: &FrameworkId, c: call::Call) -> Call {
    Call {
        framework_id: fid.0.clone(),
        call: Some(c),
    }
}

pub(super) fn status(fid: &FrameworkId, task_id: &str, state: TaskState, uuid: u8) -> TaskStatus {
    TaskStatus {
        task_id: task_id.to_owned(),
        framework_id: fid.0.clone(),
        state: state as i32,
        source: TaskSource::Agent as i32,
        uuid: vec![uuid; 16],
        ..TaskStatus::default()
    }
}

pub(super) fn offers_in(cmds: &[Command], conn: ConnId) -> Vec<Offer> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ToFramework {
                conn: c,
                event: event::Event::Offers(o),
            } if *c == conn => Some(o.offers.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

pub(super) fn updates_in(cmds: &[Command], conn: ConnId) -> Vec<TaskStatus> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ToFramework {
                conn: c,
                event: event::Event::Update(u),
            } if *c == conn => u.status.clone(),
            _ => None,
        })
        .collect()
}

pub(super) fn errors_in(cmds: &[Command], conn: ConnId) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ToFramework {
                conn: c,
                event: event::Event::Error(e),
            } if *c == conn => Some(e.message.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn rescinds_in(cmds: &[Command], conn: ConnId) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ToFramework {
                conn: c,
                event: event::Event::Rescind(r),
            } if *c == conn => Some(r.offer_id.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn agent_msgs(cmds: &[Command], conn: ConnId) -> Vec<allocator_message::Message> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ToAgent { conn: c, message } if *c == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn closed(cmds: &[Command], conn: ConnId) -> bool {
    cmds.iter()
        .any(|c| matches!(c, Command::Close { conn: c } if *c == conn))
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with(config())
    }

    pub(super) fn with(config: AllocatorConfig) -> Self {
        Self {
            core: Core::new(config, "test"),
            now: EPOCH,
            next_conn: 1,
        }
    }

    pub(super) fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    pub(super) fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// The commands so far, after checking the invariants.
    pub(super) fn cmds(&mut self) -> Vec<Command> {
        if let Err(e) = self.core.check_invariants() {
            panic!("invariant broken: {e}");
        }
        // What the edge sends: offers in their wire form.
        self.core
            .take_commands()
            .into_iter()
            .map(Command::into_wire)
            .collect()
    }

    pub(super) fn register(
        &mut self,
        conn: ConnId,
        id: &str,
        cpus: f64,
        mem: f64,
        tasks: Vec<AgentTask>,
    ) {
        let info = AgentInfo {
            id: id.to_owned(),
            hostname: format!("host-{}", conn.0),
            resources: agent_resources(cpus, mem),
            ..AgentInfo::default()
        };
        let now = self.now;
        self.core
            .agent_register(
                now,
                conn,
                agent_message::Register {
                    info: Some(info),
                    tasks,
                },
            )
            .expect("registration accepted");
    }

    /// A new agent with `cpus` and `mem`; returns its stream and id.
    pub(super) fn agent(&mut self, cpus: f64, mem: f64) -> (ConnId, AgentId) {
        let conn = self.conn();
        self.register(conn, "", cpus, mem, vec![]);
        let cmds = self.cmds();
        let msgs = agent_msgs(&cmds, conn);
        let Some(allocator_message::Message::Registered(r)) = msgs.first() else {
            panic!("no Registered in {cmds:?}");
        };
        (conn, AgentId(r.agent_id.clone()))
    }

    pub(super) fn subscribe_info(&mut self, info: FrameworkInfo) -> (ConnId, FrameworkId) {
        let conn = self.conn();
        let now = self.now;
        let fid = self
            .core
            .framework_subscribe(now, conn, info)
            .expect("subscribed");
        let cmds = self.cmds();
        assert!(
            cmds.iter().any(|c| matches!(c, Command::ToFramework { conn: c, event: event::Event::Subscribed(s) } if *c == conn && s.framework_id == fid.0)),
            "no SUBSCRIBED in {cmds:?}"
        );
        (conn, fid)
    }

    pub(super) fn framework(&mut self, name: &str) -> (ConnId, FrameworkId) {
        self.subscribe_info(FrameworkInfo {
            name: name.to_owned(),
            ..FrameworkInfo::default()
        })
    }

    pub(super) fn call(&mut self, conn: ConnId, call: Call) -> Vec<Command> {
        let now = self.now;
        self.core.framework_call(now, conn, call);
        self.core.allocate(now);
        self.cmds()
    }

    pub(super) fn allocate(&mut self) -> Vec<Command> {
        let now = self.now;
        self.core.allocate(now);
        self.cmds()
    }

    pub(super) fn tick(&mut self) -> Vec<Command> {
        let now = self.now;
        self.core.tick(now);
        self.cmds()
    }

    pub(super) fn update(&mut self, conn: ConnId, status: TaskStatus) -> Vec<Command> {
        let now = self.now;
        self.core.agent_status_update(now, conn, status);
        self.cmds()
    }

    /// The one offer `fconn` gets now.
    pub(super) fn one_offer(&mut self, fconn: ConnId) -> Offer {
        let cmds = self.allocate();
        let offers = offers_in(&cmds, fconn);
        assert_eq!(offers.len(), 1, "expected one offer in {cmds:?}");
        offers.into_iter().next().expect("one offer")
    }

    /// A snapshot of everything an operator can see, to show a call changed nothing.
    pub(super) fn snapshot(&self) -> String {
        format!(
            "{:?}\n{:?}\n{:?}",
            self.core.agent_summaries(),
            self.core.framework_summaries(),
            self.core.task_summaries(&ListTasksRequest {
                include_terminal: true,
                ..ListTasksRequest::default()
            })
        )
    }

    /// Launches `tasks` on `offer` and returns the LaunchTask messages the agent got.
    pub(super) fn launch(
        &mut self,
        fconn: ConnId,
        fid: &FrameworkId,
        aconn: ConnId,
        offer: &Offer,
        tasks: Vec<TaskInfo>,
    ) -> Vec<allocator_message::LaunchTask> {
        let now = self.now;
        self.core
            .framework_call(now, fconn, launch_call(fid, &[&offer.id], tasks));
        let cmds = self.cmds();
        assert!(
            updates_in(&cmds, fconn).is_empty(),
            "launch failed: {cmds:?}"
        );
        agent_msgs(&cmds, aconn)
            .into_iter()
            .filter_map(|m| match m {
                allocator_message::Message::LaunchTask(l) => Some(l),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn scalar(resources: &[Resource], name: &str) -> f64 {
    strata_proto::scalar_sum(resources, name)
}

/// An agent sends an older update again (its acknowledgement was lost in a partition) after
/// a newer one: the framework is not told it, the task's state does not go back, and the
/// agent has its acknowledgement.
#[test]
fn an_older_update_sent_again_is_acknowledged_not_forwarded() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("f");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t", 1.0, 64.0)]);
    let cmds = h.update(aconn, status(&fid, "t", TaskState::Running, 2));
    assert_eq!(updates_in(&cmds, fconn).len(), 1, "{cmds:?}");
    let cmds = h.update(aconn, status(&fid, "t", TaskState::Starting, 1));
    assert!(updates_in(&cmds, fconn).is_empty(), "forwarded: {cmds:?}");
    assert!(
        agent_msgs(&cmds, aconn).iter().any(
            |m| matches!(m, allocator_message::Message::Acknowledge(a) if a.uuid == vec![1; 16])
        ),
        "not acknowledged: {cmds:?}"
    );
    let tasks = h.core.task_summaries(&ListTasksRequest::default());
    assert_eq!(tasks[0].state(), TaskState::Running, "{tasks:?}");
    // The same state again, and newer ones, still go through.
    let cmds = h.update(aconn, status(&fid, "t", TaskState::Running, 3));
    assert_eq!(updates_in(&cmds, fconn).len(), 1, "{cmds:?}");
    let cmds = h.update(aconn, status(&fid, "t", TaskState::Finished, 4));
    assert_eq!(updates_in(&cmds, fconn).len(), 1, "{cmds:?}");
}

/// A replica's term reaches agents (in Registered) and frameworks (in SUBSCRIBED), which
/// refuse an older leader with it.
#[test]
fn agents_and_frameworks_are_told_the_leaders_term() {
    let mut h = Harness::with(AllocatorConfig {
        leader_epoch: 42,
        ..config()
    });
    let conn = h.conn();
    h.register(conn, "", 1.0, 64.0, vec![]);
    let cmds = h.cmds();
    assert!(
        matches!(agent_msgs(&cmds, conn).first(), Some(allocator_message::Message::Registered(r)) if r.leader_epoch == 42),
        "{cmds:?}"
    );
    let conn = h.conn();
    let now = h.now;
    h.core
        .framework_subscribe(now, conn, FrameworkInfo::default())
        .expect("subscribed");
    let cmds = h.cmds();
    assert!(
        cmds.iter().any(|c| matches!(c, Command::ToFramework { conn: c, event: event::Event::Subscribed(s) } if *c == conn && s.leader_epoch == 42)),
        "{cmds:?}"
    );
}

#[test]
fn agents_get_ids_and_heartbeat_interval() {
    let mut h = Harness::new();
    let conn = h.conn();
    h.register(conn, "", 4.0, 1024.0, vec![]);
    let cmds = h.cmds();
    assert_eq!(
        agent_msgs(&cmds, conn),
        vec![allocator_message::Message::Registered(
            allocator_message::Registered {
                agent_id: "test-S0".to_owned(),
                heartbeat_interval_seconds: 5.0,
                warnings: vec![],
                leader_epoch: 0,
            }
        )]
    );
    let (_, second) = h.agent(1.0, 64.0);
    assert_eq!(second.0, "test-S1");
    // An agent that comes back with an id the allocator does not know (it restarted) keeps it.
    let conn = h.conn();
    h.register(conn, "old-S7", 1.0, 64.0, vec![]);
    let agents = h.core.agent_summaries();
    assert_eq!(agents.len(), 3);
    assert!(agents.iter().any(|a| a.id == "old-S7"));
    assert!(
        agents
            .iter()
            .all(|a| a.state == strata_proto::AgentState::Active as i32)
    );
}

#[test]
fn invalid_agent_resources_are_refused() {
    let mut h = Harness::new();
    let conn = h.conn();
    let err = h
        .core
        .agent_register(
            h.now,
            conn,
            agent_message::Register {
                info: Some(AgentInfo {
                    hostname: "bad".into(),
                    resources: vec![Resource::scalar(CPUS, -1.0)],
                    ..AgentInfo::default()
                }),
                tasks: vec![],
            },
        )
        .unwrap_err();
    assert!(matches!(err, CoreError::InvalidAgentResources { .. }));
    assert!(h.core.agent_summaries().is_empty());
    assert!(h.cmds().is_empty());
}

#[test]
fn frameworks_subscribe_new_existing_and_unknown() {
    let mut h = Harness::new();
    let (conn, fid) = h.framework("one");
    assert_eq!(fid.0, "test-0000");
    // Unknown id: refused, nothing changes.
    let before = h.snapshot();
    let err = h
        .core
        .framework_subscribe(
            h.now,
            ConnId(h.next_conn + 100),
            FrameworkInfo {
                id: "nope".into(),
                ..FrameworkInfo::default()
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(
        err,
        Err(
            "unknown framework id nope: subscribe without an id to register a new framework"
                .to_owned()
        )
    );
    assert_eq!(h.snapshot(), before);
    assert!(h.cmds().is_empty());
    // Existing id on a new stream: the old stream is told and closed.
    let (conn2, fid2) = h.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        name: "one".into(),
        ..FrameworkInfo::default()
    });
    assert_eq!(fid2, fid);
    assert_eq!(h.core.framework_summaries().len(), 1);
    // The old stream's late disconnect changes nothing.
    h.core.framework_disconnected(h.now, conn);
    assert!(h.core.framework_summaries()[0].connected);
    assert!(h.cmds().is_empty());
    let _ = conn2;
}

#[test]
fn resubscribing_elsewhere_closes_the_old_stream() {
    let mut h = Harness::new();
    let (old, fid) = h.framework("one");
    let new = h.conn();
    h.core
        .framework_subscribe(
            h.now,
            new,
            FrameworkInfo {
                id: fid.0.clone(),
                ..FrameworkInfo::default()
            },
        )
        .expect("re-subscribed");
    let cmds = h.cmds();
    assert_eq!(errors_in(&cmds, old).len(), 1, "{cmds:?}");
    assert!(closed(&cmds, old));
    assert!(!closed(&cmds, new));
}

#[test]
fn offers_hold_all_free_resources_and_one_per_agent() {
    let mut h = Harness::new();
    let (_, agent) = h.agent(4.0, 1024.0);
    let (fconn, _) = h.framework("one");
    let offer = h.one_offer(fconn);
    assert_eq!(offer.agent_id, agent.0);
    assert_eq!(offer.hostname, "host-2");
    assert_eq!(scalar(&offer.resources, CPUS), 4.0);
    assert_eq!(scalar(&offer.resources, MEM), 1024.0);
    // The agent's resources are in that one offer: nothing more is offered, however often.
    assert!(offers_in(&h.tick(), fconn).is_empty());
    let (fconn2, _) = h.framework("two");
    assert!(offers_in(&h.allocate(), fconn2).is_empty());
    let agents = h.core.agent_summaries();
    assert_eq!(scalar(&agents[0].offered, CPUS), 4.0);
}

#[test]
fn launch_consumes_the_offer_and_returns_the_rest() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let launched = h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.5, 256.0)]);
    assert_eq!(launched.len(), 1);
    assert_eq!(launched[0].framework_id, fid.0);
    let sent = launched[0].task.clone().expect("task");
    assert_eq!(sent.task_id, "t1");
    assert_eq!(
        sent.agent_id, agent.0,
        "the allocator fills in the agent id"
    );

    let tasks = h.core.task_summaries(&ListTasksRequest::default());
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, TaskState::Staging as i32);
    let fw = &h.core.framework_summaries()[0];
    assert_eq!(scalar(&fw.allocated, CPUS), 1.5);
    assert_eq!(fw.active_tasks, 1);
    // refuse_seconds 0: the remainder is offered again at once.
    let rest = h.one_offer(fconn);
    assert_ne!(rest.id, offer.id);
    assert_eq!(scalar(&rest.resources, CPUS), 2.5);
    assert_eq!(scalar(&rest.resources, MEM), 768.0);
}

#[test]
fn accept_filter_defaults_to_default_refuse() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let mut accept = launch_call(&fid, &[&offer.id], vec![task("t1", 1.0, 64.0)]);
    if let Some(call::Call::Accept(a)) = &mut accept.call {
        a.filters = None;
    }
    let cmds = h.call(fconn, accept);
    assert_eq!(agent_msgs(&cmds, aconn).len(), 1);
    assert!(offers_in(&cmds, fconn).is_empty());
    h.advance(Duration::from_secs(4));
    assert!(offers_in(&h.tick(), fconn).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(offers_in(&h.tick(), fconn).len(), 1);
}

/// One invalid ACCEPT: how to build it from a fresh offer, and what the framework must hear.
struct BadAccept {
    name: &'static str,
    build: fn(&FrameworkId, &Offer) -> Call,
    /// Expected update state and reason for each task; None means an ERROR event instead.
    outcome: Option<(TaskState, TaskReason, usize)>,
    message: fn(&Offer) -> String,
    /// Whether the call names the fresh offer (then it is used up and its resources come
    /// back in a new offer, as the call refuses nothing).
    uses_offer: bool,
}

#[test]
fn invalid_accepts_launch_nothing_and_use_up_their_offers() {
    let cases: Vec<BadAccept> = vec![
        BadAccept {
            name: "launch larger than the offer",
            build: |fid, o| launch_call(fid, &[&o.id], vec![task("t1", 4.0, 64.0)]),
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |o| format!("task \"t1\" asks for cpus=4 but offer {} has cpus=2", o.id),
            uses_offer: true,
        },
        BadAccept {
            name: "tasks larger than the offer together",
            build: |fid, o| {
                launch_call(
                    fid,
                    &[&o.id],
                    vec![task("t1", 1.5, 64.0), task("t2", 1.0, 64.0)],
                )
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 2)),
            message: |o| {
                format!(
                    "tasks \"t1\", \"t2\" ask for cpus=2.5 in total but offer {} has cpus=2",
                    o.id
                )
            },
            uses_offer: true,
        },
        BadAccept {
            name: "duplicate task id of an active task",
            build: |fid, o| launch_call(fid, &[&o.id], vec![task("running", 0.1, 8.0)]),
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |_| {
                "task id \"running\" is already used by an active task of this framework \
                 (on agent test-S0, TASK_STAGING): choose another id"
                    .to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "task id twice in one call",
            build: |fid, o| {
                launch_call(
                    fid,
                    &[&o.id],
                    vec![task("t1", 0.1, 8.0), task("t1", 0.1, 8.0)],
                )
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 2)),
            message: |_| {
                "task id \"t1\" appears more than once in this ACCEPT: task ids must be unique \
                 within the framework"
                    .to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "empty task id",
            build: |fid, o| launch_call(fid, &[&o.id], vec![task("", 0.1, 8.0)]),
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |_| {
                "a task has an empty task_id: give every task an id unique within the framework"
                    .to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "empty command",
            build: |fid, o| {
                let mut t = task("t1", 0.1, 8.0);
                t.command = Some(CommandInfo::default());
                launch_call(fid, &[&o.id], vec![t])
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |_| {
                "task \"t1\" has no command: set command.value to the program or shell command \
                 to run"
                    .to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "no command at all",
            build: |fid, o| {
                let mut t = task("t1", 0.1, 8.0);
                t.command = None;
                launch_call(fid, &[&o.id], vec![t])
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |_| {
                "task \"t1\" has no command: set command.value to the program or shell command \
                 to run"
                    .to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "invalid task resources",
            build: |fid, o| {
                let mut t = task("t1", 0.1, 8.0);
                t.resources.push(Resource::scalar("disk", f64::NAN));
                launch_call(fid, &[&o.id], vec![t])
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |_| {
                "task \"t1\" has invalid resources: resource \"disk\" has invalid value NaN: \
                 scalars must be finite and not negative"
                    .to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "task names another agent",
            build: |fid, o| {
                let mut t = task("t1", 0.1, 8.0);
                t.agent_id = "elsewhere".into();
                launch_call(fid, &[&o.id], vec![t])
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |_| {
                "task \"t1\" names agent elsewhere but the offer is on agent test-S0".to_owned()
            },
            uses_offer: true,
        },
        BadAccept {
            name: "ports outside the offer",
            build: |fid, o| {
                let mut t = task("t1", 0.1, 8.0);
                t.resources.push(Resource::ranges(PORTS, [(31005, 31015)]));
                launch_call(fid, &[&o.id], vec![t])
            },
            outcome: Some((TaskState::Error, TaskReason::TaskInvalid, 1)),
            message: |o| {
                format!(
                    "task \"t1\" asks for ports=[31005-31015] but offer {} has ports=[31000-31009]",
                    o.id
                )
            },
            uses_offer: true,
        },
        BadAccept {
            name: "unknown offer id",
            build: |fid, _| launch_call(fid, &["no-such-offer"], vec![task("t1", 0.1, 8.0)]),
            outcome: Some((TaskState::Dropped, TaskReason::InvalidOffers, 1)),
            message: |_| {
                "offer no-such-offer is unknown: it was never made, or was already used, declined \
                 or rescinded; wait for a new offer"
                    .to_owned()
            },
            uses_offer: false,
        },
        BadAccept {
            name: "already used offer id",
            build: |fid, _| launch_call(fid, &["test-O0"], vec![task("t1", 0.1, 8.0)]),
            outcome: Some((TaskState::Dropped, TaskReason::InvalidOffers, 1)),
            message: |_| {
                "offer test-O0 is unknown: it was never made, or was already used, declined \
                 or rescinded; wait for a new offer"
                    .to_owned()
            },
            uses_offer: false,
        },
        BadAccept {
            name: "offer named twice",
            build: |fid, o| launch_call(fid, &[&o.id, &o.id], vec![task("t1", 0.1, 8.0)]),
            outcome: Some((TaskState::Dropped, TaskReason::InvalidOffers, 1)),
            message: |o| format!("offer {} is named more than once", o.id),
            uses_offer: true,
        },
        BadAccept {
            name: "no offers named",
            build: |fid, _| launch_call(fid, &[], vec![task("t1", 0.1, 8.0)]),
            outcome: Some((TaskState::Dropped, TaskReason::InvalidOffers, 1)),
            message: |_| "the ACCEPT names no offers: give the ids of the offers to use".to_owned(),
            uses_offer: false,
        },
        BadAccept {
            name: "call naming another framework",
            build: |_, o| {
                launch_call(
                    &FrameworkId("someone-else".into()),
                    &[&o.id],
                    vec![task("t1", 0.1, 8.0)],
                )
            },
            outcome: None,
            message: |_| {
                "call names framework \"someone-else\" but this stream is subscribed as \
                 framework test-0000: every call must carry the framework_id from SUBSCRIBED"
                    .to_owned()
            },
            uses_offer: false,
        },
        BadAccept {
            name: "accept without tasks of an unknown offer",
            build: |fid, _| {
                let mut c = launch_call(fid, &["gone"], vec![]);
                if let Some(call::Call::Accept(a)) = &mut c.call {
                    a.operations.clear();
                }
                c
            },
            outcome: None,
            message: |_| {
                "accept rejected: offer gone is unknown: it was never made, or was already used, \
                 declined or rescinded; wait for a new offer"
                    .to_owned()
            },
            uses_offer: false,
        },
    ];

    for case in cases {
        let mut h = Harness::new();
        let (aconn, _) = h.agent(2.01, 1028.0);
        let (fconn, fid) = h.framework("one");
        // A running task "running" (offer test-O0 is used by it), then a fresh offer.
        let first = h.one_offer(fconn);
        assert_eq!(first.id, "test-O0");
        h.launch(fconn, &fid, aconn, &first, vec![task("running", 0.01, 4.0)]);
        let offer = h.one_offer(fconn);

        let before = h.snapshot();
        let cmds = h.call(fconn, (case.build)(&fid, &offer));
        // Nothing launched; an offer used up is not made again to the framework before the
        // next periodic pass (the minimum refusal: a framework whose ACCEPTs are always
        // rejected must not spin), then with no filter, whatever the call asked.
        assert!(
            offers_in(&cmds, fconn).is_empty(),
            "{}: offered again at once: {cmds:?}",
            case.name
        );
        let ticked = h.tick();
        assert_eq!(h.snapshot(), before, "{}: state changed", case.name);
        assert!(
            agent_msgs(&cmds, aconn).is_empty(),
            "{}: agent got {cmds:?}",
            case.name
        );
        let want = (case.message)(&offer);
        match case.outcome {
            Some((state, reason, n)) => {
                let updates = updates_in(&cmds, fconn);
                assert_eq!(updates.len(), n, "{}: {cmds:?}", case.name);
                for u in updates {
                    assert_eq!(u.state(), state, "{}", case.name);
                    assert_eq!(u.reason(), reason, "{}", case.name);
                    assert_eq!(u.source(), TaskSource::Allocator, "{}", case.name);
                    assert!(u.uuid.is_empty(), "{}", case.name);
                    assert_eq!(u.message, want, "{}", case.name);
                }
            }
            None => assert_eq!(errors_in(&cmds, fconn), vec![want], "{}", case.name),
        }
        let again = offers_in(&ticked, fconn);
        let offer = if case.uses_offer {
            // The offer is gone; its resources are offered anew.
            assert_eq!(again.len(), 1, "{}: {ticked:?}", case.name);
            assert_ne!(again[0].id, offer.id, "{}", case.name);
            assert_eq!(again[0].resources, offer.resources, "{}", case.name);
            let cmds = h.call(
                fconn,
                launch_call(&fid, &[&offer.id], vec![task("late", 0.1, 8.0)]),
            );
            let updates = updates_in(&cmds, fconn);
            assert_eq!(updates.len(), 1, "{}: {cmds:?}", case.name);
            assert_eq!(updates[0].state(), TaskState::Dropped, "{}", case.name);
            again.into_iter().next().expect("one offer")
        } else {
            // The offer it did not name is still outstanding.
            assert!(again.is_empty(), "{}: {ticked:?}", case.name);
            offer
        };
        let launched = h.launch(fconn, &fid, aconn, &offer, vec![task("ok", 1.0, 64.0)]);
        assert_eq!(launched.len(), 1, "{}: offer not usable after", case.name);
    }
}

#[test]
fn a_rejected_accept_gives_its_offer_back_to_others() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 1024.0);
    let (fa, fid_a) = h.framework("a");
    let (fb, fid_b) = h.framework("b");
    let offer = h.one_offer(fa);
    // An operation the core does not support (the Mesos edge's LAUNCH_GROUP) beside a
    // LAUNCH, refusing for 10 s: rejected, yet the offer is used up and the agent goes
    // to b at once.
    let mut accept = launch_call(&fid_a, &[&offer.id], vec![task("t1", 1.0, 64.0)]);
    if let Some(call::Call::Accept(a)) = &mut accept.call {
        a.operations.push(Operation { operation: None });
        a.filters = Some(Filters {
            refuse_seconds: Some(10.0),
        });
    }
    let cmds = h.call(fa, accept);
    let updates = updates_in(&cmds, fa);
    assert_eq!(updates.len(), 1, "{cmds:?}");
    assert_eq!(updates[0].state(), TaskState::Error);
    assert!(agent_msgs(&cmds, aconn).is_empty(), "{cmds:?}");
    let offers = offers_in(&cmds, fb);
    assert_eq!(offers.len(), 1, "b gets the agent: {cmds:?}");
    assert_eq!(offers[0].resources, offer.resources);
    // b declines for an hour; a, refused for the call's 10 s, gets it after.
    let decline = simple_call(
        &fid_b,
        call::Call::Decline(call::Decline {
            offer_ids: vec![offers[0].id.clone()],
            filters: Some(Filters {
                refuse_seconds: Some(3600.0),
            }),
        }),
    );
    assert!(
        offers_in(&h.call(fb, decline), fa).is_empty(),
        "a is filtered"
    );
    h.advance(Duration::from_secs(9));
    assert!(offers_in(&h.tick(), fa).is_empty(), "a is still filtered");
    h.advance(Duration::from_secs(1));
    let offer = offers_in(&h.tick(), fa).pop().expect("a's filter expired");
    // Bad offers (one unknown beside a's own): a's offer is used up too, and comes back
    // at the next periodic pass with no filter, whatever the call asked.
    let mut accept = launch_call(&fid_a, &[&offer.id, "gone"], vec![task("t1", 1.0, 64.0)]);
    if let Some(call::Call::Accept(a)) = &mut accept.call {
        a.filters = Some(Filters {
            refuse_seconds: Some(60.0),
        });
    }
    let cmds = h.call(fa, accept);
    assert_eq!(updates_in(&cmds, fa)[0].state(), TaskState::Dropped);
    assert!(offers_in(&cmds, fa).is_empty(), "not at once: {cmds:?}");
    let cmds = h.tick();
    let offers = offers_in(&cmds, fa);
    assert_eq!(offers.len(), 1, "{cmds:?}");
    assert_ne!(offers[0].id, offer.id);
}

#[test]
fn foreign_offers_and_offers_of_two_agents_are_dropped() {
    let mut h = Harness::new();
    let (_, _) = h.agent(1.0, 128.0);
    let (fa, fid_a) = h.framework("a");
    let (fb, _fid_b) = h.framework("b");
    let cmds = h.allocate();
    let offer_a = offers_in(&cmds, fa).pop().expect("a gets the first agent");
    assert!(offers_in(&cmds, fb).is_empty());
    let (_, _) = h.agent(1.0, 128.0);
    let offer_b = offers_in(&h.allocate(), fb)
        .pop()
        .expect("b gets the second");
    // a uses b's offer.
    let before = h.snapshot();
    let cmds = h.call(
        fa,
        launch_call(&fid_a, &[&offer_b.id], vec![task("t", 0.1, 8.0)]),
    );
    assert_eq!(h.snapshot(), before);
    let u = updates_in(&cmds, fa);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].state(), TaskState::Dropped);
    assert_eq!(
        u[0].message,
        format!(
            "offer {} was made to another framework, not to {fid_a}",
            offer_b.id
        )
    );
    // Offers of two agents in one ACCEPT (give a a second offer first).
    let (_, _) = h.agent(1.0, 128.0);
    let cmds = h.allocate();
    let mut second = offers_in(&cmds, fa);
    second.extend(offers_in(&cmds, fb));
    assert_eq!(second.len(), 1);
    assert_eq!(
        second[0].framework_id, fid_a.0,
        "a and b tie at 1/3; a was offered to less recently"
    );
    let cmds = h.call(
        fa,
        launch_call(&fid_a, &[&offer_a.id, &second[0].id], vec![]),
    );
    // Nothing is launched; the offers are used up and made again (now one to b, offered
    // to less recently than a at equal share).
    let tasks = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    });
    assert!(tasks.is_empty(), "{tasks:?}");
    let fws = h.core.framework_summaries();
    assert!(fws.iter().all(|f| f.allocated.is_empty()), "{fws:?}");
    let errors = errors_in(&cmds, fa);
    assert_eq!(errors.len(), 1, "{cmds:?}");
    assert!(
        errors[0].contains("one ACCEPT may only use offers of one agent"),
        "{errors:?}"
    );
}

#[test]
fn status_updates_flow_and_terminal_frees_resources() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 2.0, 512.0)]);
    assert!(offers_in(&h.allocate(), fconn).is_empty(), "agent is full");

    for (state, uuid) in [(TaskState::Starting, 1), (TaskState::Running, 2)] {
        let cmds = h.update(aconn, status(&fid, "t1", state, uuid));
        let u = updates_in(&cmds, fconn);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].state(), state);
        assert_eq!(u[0].uuid, vec![uuid; 16], "the agent's uuid is kept");
        assert_eq!(u[0].agent_id, agent.0, "the allocator fills in the agent");
        let t = &h.core.task_summaries(&ListTasksRequest::default())[0];
        assert_eq!(t.state, state as i32);
    }
    // The framework acknowledges: forwarded to the agent.
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Acknowledge(call::Acknowledge {
                agent_id: agent.0.clone(),
                task_id: "t1".into(),
                uuid: vec![2; 16],
            }),
        ),
    );
    assert_eq!(
        agent_msgs(&cmds, aconn),
        vec![allocator_message::Message::Acknowledge(
            allocator_message::AcknowledgeUpdate {
                framework_id: fid.0.clone(),
                task_id: "t1".into(),
                uuid: vec![2; 16],
            }
        )]
    );
    // FINISHED frees the resources at once (before any ack) and they are offered again.
    let mut finished = status(&fid, "t1", TaskState::Finished, 3);
    finished.exit_code = Some(0);
    let cmds = h.update(aconn, finished.clone());
    assert_eq!(updates_in(&cmds, fconn).len(), 1);
    let cmds = h.allocate();
    let again = offers_in(&cmds, fconn);
    assert_eq!(again.len(), 1, "{cmds:?}");
    assert_eq!(scalar(&again[0].resources, CPUS), 2.0);
    assert!(
        h.core
            .task_summaries(&ListTasksRequest::default())
            .is_empty()
    );
    let all = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    });
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, TaskState::Finished as i32);
    assert_eq!(all[0].exit_code, Some(0));
    // A resend of the terminal update (ack lost) is forwarded again and changes nothing.
    let before = h.snapshot();
    let cmds = h.update(aconn, finished);
    assert_eq!(updates_in(&cmds, fconn).len(), 1);
    assert_eq!(h.snapshot(), before);
    // Acknowledge without agent id: found from the history.
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Acknowledge(call::Acknowledge {
                agent_id: String::new(),
                task_id: "t1".into(),
                uuid: vec![3; 16],
            }),
        ),
    );
    assert_eq!(agent_msgs(&cmds, aconn).len(), 1);
    // Acknowledge without uuid is an error.
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Acknowledge(call::Acknowledge {
                agent_id: agent.0.clone(),
                task_id: "t1".into(),
                uuid: vec![],
            }),
        ),
    );
    assert!(agent_msgs(&cmds, aconn).is_empty());
    assert_eq!(errors_in(&cmds, fconn).len(), 1);
}

#[test]
fn updates_for_gone_frameworks_are_acknowledged_by_the_allocator() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    // failover_timeout 0: the framework is removed when its stream ends; its task is killed.
    h.core.framework_disconnected(h.now, fconn);
    let cmds = h.cmds();
    assert!(matches!(
        agent_msgs(&cmds, aconn).as_slice(),
        [allocator_message::Message::KillTask(k)] if k.task_id == "t1" && k.framework_id == fid.0
    ));
    assert!(h.core.framework_summaries().is_empty());
    assert!(
        h.core
            .task_summaries(&ListTasksRequest::default())
            .is_empty()
    );
    let cmds = h.update(aconn, status(&fid, "t1", TaskState::Killed, 9));
    assert_eq!(
        agent_msgs(&cmds, aconn),
        vec![allocator_message::Message::Acknowledge(
            allocator_message::AcknowledgeUpdate {
                framework_id: fid.0.clone(),
                task_id: "t1".into(),
                uuid: vec![9; 16],
            }
        )]
    );
}

#[test]
fn updates_to_a_disconnected_framework_are_dropped() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.subscribe_info(FrameworkInfo {
        name: "patient".into(),
        failover_timeout_seconds: 60.0,
        ..FrameworkInfo::default()
    });
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.core.framework_disconnected(h.now, fconn);
    let cmds = h.update(aconn, status(&fid, "t1", TaskState::Running, 1));
    assert!(cmds.is_empty(), "nothing sent anywhere: {cmds:?}");
    assert_eq!(
        h.core.task_summaries(&ListTasksRequest::default())[0].state,
        TaskState::Running as i32
    );
}

#[test]
fn decline_filters_and_revive() {
    // (refuse_seconds, re-offered after 1 s (the next tick)?, re-offered after refuse?)
    let cases: &[(Option<f64>, bool, bool)] = &[
        (Some(0.0), true, true),
        (Some(3.0), false, true),
        (None, false, true), // default_refuse, 5 s
        (Some(-1.0), false, true),
    ];
    for &(refuse, after_one, after_refuse) in cases {
        let mut h = Harness::new();
        let (_, agent) = h.agent(2.0, 512.0);
        let (fconn, fid) = h.framework("one");
        let offer = h.one_offer(fconn);
        let cmds = h.call(
            fconn,
            simple_call(
                &fid,
                call::Call::Decline(call::Decline {
                    offer_ids: vec![offer.id.clone()],
                    filters: Some(Filters {
                        refuse_seconds: refuse,
                    }),
                }),
            ),
        );
        // Not even refuse 0 is offered again before the next tick.
        assert!(
            offers_in(&cmds, fconn).is_empty(),
            "{refuse:?}: re-offered at once"
        );
        h.advance(Duration::from_millis(1000));
        assert_eq!(!offers_in(&h.tick(), fconn).is_empty(), after_one);
        if refuse == Some(0.0) {
            continue;
        }
        let wait_ms = refuse
            .filter(|s| *s >= 0.0)
            .map_or(5000, |s| (s * 1000.0) as u64);
        h.advance(Duration::from_millis(wait_ms - 1001));
        assert!(
            offers_in(&h.tick(), fconn).is_empty(),
            "{refuse:?}: re-offered before refuse_seconds"
        );
        h.advance(Duration::from_millis(1));
        let later = offers_in(&h.tick(), fconn);
        assert_eq!(!later.is_empty(), after_refuse, "{refuse:?}");
        assert_eq!(later[0].agent_id, agent.0);
    }
}

fn decline_for_an_hour(h: &mut Harness, fconn: ConnId, fid: &FrameworkId, offer: &Offer) {
    let cmds = h.call(
        fconn,
        simple_call(
            fid,
            call::Call::Decline(call::Decline {
                offer_ids: vec![offer.id.clone()],
                filters: Some(Filters {
                    refuse_seconds: Some(3600.0),
                }),
            }),
        ),
    );
    assert!(offers_in(&cmds, fconn).is_empty(), "{cmds:?}");
}

#[test]
fn a_framework_failing_over_starts_without_filters() {
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let info = FrameworkInfo {
        name: "phoenix".into(),
        failover_timeout_seconds: 60.0,
        ..FrameworkInfo::default()
    };
    let (fconn, fid) = h.subscribe_info(info.clone());
    let offer = h.one_offer(fconn);
    decline_for_an_hour(&mut h, fconn, &fid, &offer);
    let now = h.now;
    h.core.framework_disconnected(now, fconn);
    h.cmds();
    // Its new subscription is offered the declined agent at once.
    let (fconn, again) = h.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        ..info
    });
    assert_eq!(again, fid);
    assert_eq!(offers_in(&h.allocate(), fconn).len(), 1);
}

#[test]
fn filters_go_when_an_agent_re_registers_with_other_resources_or_attributes() {
    let mut h = Harness::new();
    let (fconn, fid) = h.framework("f");
    let register = |h: &mut Harness, cpus: f64, attributes: &[(&str, &str)]| {
        let conn = h.conn();
        let now = h.now;
        h.core
            .agent_register(
                now,
                conn,
                agent_message::Register {
                    info: Some(AgentInfo {
                        id: "a1".into(),
                        hostname: "host".into(),
                        resources: agent_resources(cpus, 512.0),
                        attributes: attributes
                            .iter()
                            .map(|(name, value)| Attribute {
                                name: (*name).to_owned(),
                                value: (*value).to_owned(),
                            })
                            .collect(),
                        ..AgentInfo::default()
                    }),
                    tasks: vec![],
                },
            )
            .expect("registered");
        offers_in(&h.allocate(), fconn)
    };
    let offers = register(&mut h, 1.0, &[]);
    assert_eq!(offers.len(), 1);
    decline_for_an_hour(&mut h, fconn, &fid, &offers[0]);
    // The same agent again: the filter stays.
    assert!(register(&mut h, 1.0, &[]).is_empty());
    // Other resources: the filter goes.
    let offers = register(&mut h, 2.0, &[]);
    assert_eq!(offers.len(), 1);
    decline_for_an_hour(&mut h, fconn, &fid, &offers[0]);
    // Other attributes: the filter goes.
    assert_eq!(register(&mut h, 2.0, &[("rack", "r1")]).len(), 1);
}

#[test]
fn revive_clears_filters_at_once_and_suppress_stops_offers() {
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Decline(call::Decline {
                offer_ids: vec![offer.id.clone()],
                filters: Some(Filters {
                    refuse_seconds: Some(3600.0),
                }),
            }),
        ),
    );
    assert!(offers_in(&h.tick(), fconn).is_empty());
    let cmds = h.call(
        fconn,
        simple_call(&fid, call::Call::Revive(call::Revive::default())),
    );
    let offers = offers_in(&cmds, fconn);
    assert_eq!(offers.len(), 1, "revive re-offers at once");
    // Suppress: once this offer is declined with no filter, nothing more is offered.
    h.call(
        fconn,
        simple_call(&fid, call::Call::Suppress(call::Suppress::default())),
    );
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Decline(call::Decline {
                offer_ids: vec![offers[0].id.clone()],
                filters: Some(Filters {
                    refuse_seconds: Some(0.0),
                }),
            }),
        ),
    );
    assert!(offers_in(&cmds, fconn).is_empty());
    h.advance(Duration::from_secs(10));
    assert!(offers_in(&h.tick(), fconn).is_empty());
    let cmds = h.call(
        fconn,
        simple_call(&fid, call::Call::Revive(call::Revive::default())),
    );
    assert_eq!(offers_in(&cmds, fconn).len(), 1);
}

#[test]
fn a_declined_agent_goes_to_the_other_framework() {
    let mut h = Harness::new();
    let (_, agent) = h.agent(2.0, 512.0);
    let (fa, fid_a) = h.framework("a");
    let (fb, _) = h.framework("b");
    let cmds = h.allocate();
    let offer = offers_in(&cmds, fa)
        .pop()
        .expect("tie goes to the smaller id");
    let cmds = h.call(
        fa,
        simple_call(
            &fid_a,
            call::Call::Decline(call::Decline {
                offer_ids: vec![offer.id],
                filters: None,
            }),
        ),
    );
    let to_b = offers_in(&cmds, fb);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_b[0].agent_id, agent.0);
}

/// `rounds` times: the framework of `fws` offered the agent of `aconn` launches a task on
/// all of it, which ends at once; which of `fws` got each offer.
pub(super) fn turns(
    h: &mut Harness,
    aconn: ConnId,
    fws: &[(ConnId, FrameworkId)],
    rounds: u8,
) -> Vec<usize> {
    let mut got = Vec::new();
    for i in 0..rounds {
        let cmds = h.allocate();
        let (k, offer) = fws
            .iter()
            .enumerate()
            .find_map(|(k, (fconn, _))| offers_in(&cmds, *fconn).pop().map(|o| (k, o)))
            .unwrap_or_else(|| panic!("no offer in {cmds:?}"));
        let (fconn, fid) = &fws[k];
        let id = format!("t{i}");
        let (cpus, mem) = (
            scalar(&offer.resources, CPUS),
            scalar(&offer.resources, MEM),
        );
        h.launch(*fconn, fid, aconn, &offer, vec![task(&id, cpus, mem)]);
        h.update(aconn, status(fid, &id, TaskState::Finished, i));
        got.push(k);
    }
    got
}

#[test]
fn equal_shares_take_turns() {
    // Two frameworks at equal share (nothing held, their tasks end at once): the one
    // offered least recently goes first, not always the smaller id.
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 512.0);
    let fws = [h.framework("a"), h.framework("b")];
    assert_eq!(turns(&mut h, aconn, &fws, 6), [0, 1, 0, 1, 0, 1]);
}

/// For 10 simulated seconds (steps of 10 ms, a tick every second as the edge's timer does),
/// each of `fws` declines every offer it gets with refuse_seconds 0, and so does each offer
/// a DECLINE's pass makes (20 in a row per step at most, the rest in the next step, so that
/// a loop of re-offers ends);
/// how many offers each got.
pub(super) fn decline_for_ten_seconds(
    h: &mut Harness,
    fws: &[(ConnId, FrameworkId)],
) -> Vec<usize> {
    let mut counts = vec![0; fws.len()];
    let step = Duration::from_millis(10);
    let per_tick = (h.core.config().allocation_interval.as_millis() / step.as_millis()) as u32;
    let mut cmds = h.allocate();
    for i in 1..=1000u32 {
        for _ in 0..20 {
            let mut next = Vec::new();
            for (k, (fconn, fid)) in fws.iter().enumerate() {
                for offer in offers_in(&cmds, *fconn) {
                    counts[k] += 1;
                    let decline = call::Decline {
                        offer_ids: vec![offer.id],
                        filters: Some(Filters {
                            refuse_seconds: Some(0.0),
                        }),
                    };
                    next.extend(h.call(*fconn, simple_call(fid, call::Call::Decline(decline))));
                }
            }
            cmds = next;
            if fws
                .iter()
                .all(|(fconn, _)| offers_in(&cmds, *fconn).is_empty())
            {
                break;
            }
        }
        h.advance(step);
        // Offers left by the cap are declined in the next step.
        cmds.extend(if i % per_tick == 0 {
            h.tick()
        } else {
            h.allocate()
        });
    }
    counts
}

/// Each of `counts` is within 10% of an even part of their sum, and the sum is at most
/// four offers per simulated second (two per periodic pass, and the first pass).
pub(super) fn assert_even_and_bounded(counts: &[usize]) {
    let total: usize = counts.iter().sum();
    assert!(total <= 40, "{counts:?}: {total} offers in 10 s");
    let even = total as f64 / counts.len() as f64;
    for &c in counts {
        assert!((c as f64 - even).abs() <= 0.1 * even, "{counts:?}");
    }
}

#[test]
fn declines_with_refuse_0_share_an_agent_at_a_bounded_rate() {
    // Two frameworks at equal share on one agent decline every offer with refuse_seconds
    // 0: each gets about half the offers, one per periodic pass, not one per DECLINE.
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let fws = [h.framework("a"), h.framework("b")];
    let counts = decline_for_ten_seconds(&mut h, &fws);
    assert_even_and_bounded(&counts);
}

#[test]
fn two_frameworks_get_offers_in_drf_order() {
    let mut h = Harness::new();
    let (a1, _) = h.agent(4.0, 4096.0);
    let (fa, fid_a) = h.framework("a");
    let offer = h.one_offer(fa);
    // a runs 3 of 4 cpus and 3 GiB of 4: share 3/4.
    h.launch(fa, &fid_a, a1, &offer, vec![task("big", 3.0, 3072.0)]);
    let rest = h.one_offer(fa);
    let (fb, _) = h.framework("b");
    // a declines; b (share 0 < 3/4) gets the remainder, not a.
    let cmds = h.call(
        fa,
        simple_call(
            &fid_a,
            call::Call::Decline(call::Decline {
                offer_ids: vec![rest.id],
                filters: Some(Filters {
                    refuse_seconds: Some(0.0),
                }),
            }),
        ),
    );
    assert!(offers_in(&cmds, fa).is_empty());
    let b_offer = offers_in(&cmds, fb).pop().expect("b gets the remainder");
    assert_eq!(scalar(&b_offer.resources, CPUS), 1.0);
    let shares: Vec<f64> = h
        .core
        .framework_summaries()
        .iter()
        .map(|f| f.dominant_share)
        .collect();
    assert_eq!(shares, vec![0.75, 0.25]);
    // Three more agents like the first: the cluster has 16 cpus; a holds 3, b holds 1.
    // Agents are visited in id order: S1 -> b (1/16 < 3/16; b becomes 5/16),
    // S2 -> a (3/16 < 5/16; a becomes 7/16), S3 -> b (5/16 < 7/16).
    h.agent(4.0, 4096.0);
    h.agent(4.0, 4096.0);
    h.agent(4.0, 4096.0);
    let cmds = h.allocate();
    let to_a: Vec<String> = offers_in(&cmds, fa)
        .into_iter()
        .map(|o| o.agent_id)
        .collect();
    let to_b: Vec<String> = offers_in(&cmds, fb)
        .into_iter()
        .map(|o| o.agent_id)
        .collect();
    assert_eq!(to_b, vec!["test-S1".to_owned(), "test-S3".to_owned()]);
    assert_eq!(to_a, vec!["test-S2".to_owned()]);
}

#[test]
fn kill_is_forwarded_or_reported_unknown() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Kill(call::Kill {
                task_id: "t1".into(),
                agent_id: agent.0.clone(),
                grace_period_seconds: Some(2.0),
            }),
        ),
    );
    assert_eq!(
        agent_msgs(&cmds, aconn),
        vec![allocator_message::Message::KillTask(
            allocator_message::KillTask {
                framework_id: fid.0.clone(),
                task_id: "t1".into(),
                grace_period_seconds: Some(2.0),
            }
        )]
    );
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Kill(call::Kill {
                task_id: "nope".into(),
                agent_id: String::new(),
                grace_period_seconds: None,
            }),
        ),
    );
    let u = updates_in(&cmds, fconn);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].state(), TaskState::Lost);
    assert_eq!(u[0].reason(), TaskReason::TaskUnknown);
    assert!(u[0].uuid.is_empty());
    assert!(agent_msgs(&cmds, aconn).is_empty());
}

#[test]
fn an_operator_kills_an_active_task_and_is_told_of_unknown_ones() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    let _ = h.core.take_commands();
    let now = h.now;
    h.core
        .operator_kill_task(now, &fid.0, "t1")
        .expect("an active task is killed");
    let cmds = h.core.take_commands();
    assert_eq!(
        agent_msgs(&cmds, aconn),
        vec![allocator_message::Message::KillTask(
            allocator_message::KillTask {
                framework_id: fid.0.clone(),
                task_id: "t1".into(),
                grace_period_seconds: None,
            }
        )],
        "one kill to the task's agent {}",
        agent.0
    );
    let err = h
        .core
        .operator_kill_task(now, &fid.0, "nope")
        .expect_err("unknown task");
    assert!(err.to_string().contains("task nope of framework"), "{err}");
}

#[test]
fn kill_of_a_task_on_a_disconnected_agent_is_sent_on_reregistration() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let launched = h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.core.agent_disconnected(h.now, aconn);
    h.cmds();
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Kill(call::Kill {
                task_id: "t1".into(),
                agent_id: agent.0.clone(),
                grace_period_seconds: None,
            }),
        ),
    );
    assert!(cmds.is_empty(), "{cmds:?}");
    let new_conn = h.conn();
    let running = AgentTask {
        framework_id: fid.0.clone(),
        task: launched[0].task.clone(),
        latest_status: Some(status(&fid, "t1", TaskState::Running, 1)),
    };
    h.register(new_conn, &agent.0, 2.0, 512.0, vec![running]);
    let msgs = agent_msgs(&h.cmds(), new_conn);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, allocator_message::Message::KillTask(k) if k.task_id == "t1")),
        "{msgs:?}"
    );
}

#[test]
fn reconcile_explicit_and_implicit() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(
        fconn,
        &fid,
        aconn,
        &offer,
        vec![task("a", 1.0, 64.0), task("b", 1.0, 64.0)],
    );
    h.update(aconn, status(&fid, "a", TaskState::Running, 1));
    let mut done = status(&fid, "b", TaskState::Failed, 2);
    done.exit_code = Some(3);
    h.update(aconn, done);

    let reconcile = |tasks: Vec<(&str, &str)>| {
        simple_call(
            &fid,
            call::Call::Reconcile(call::Reconcile {
                tasks: tasks
                    .into_iter()
                    .map(|(t, a)| call::ReconcileTask {
                        task_id: t.into(),
                        agent_id: a.into(),
                    })
                    .collect(),
            }),
        )
    };
    // Implicit: every active task, with its latest state.
    let u = updates_in(&h.call(fconn, reconcile(vec![])), fconn);
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].task_id.as_str(), u[0].state()),
        ("a", TaskState::Running)
    );
    // Explicit: known, terminal and unknown tasks.
    let u = updates_in(
        &h.call(
            fconn,
            reconcile(vec![("a", &agent.0), ("b", &agent.0), ("zzz", "")]),
        ),
        fconn,
    );
    let got: Vec<(String, TaskState)> = u.iter().map(|s| (s.task_id.clone(), s.state())).collect();
    assert_eq!(
        got,
        vec![
            ("a".to_owned(), TaskState::Running),
            ("b".to_owned(), TaskState::Failed),
            ("zzz".to_owned(), TaskState::Lost),
        ]
    );
    for s in &u {
        assert_eq!(s.reason(), TaskReason::Reconciliation);
        assert!(s.uuid.is_empty());
        assert_eq!(s.source(), TaskSource::Allocator);
    }
    assert_eq!(u[1].exit_code, Some(3));
}

/// (partition aware, expected state reported when the agent is lost)
#[test]
fn lost_agents_report_tasks_lost_or_unreachable_and_come_back() {
    for (partition_aware, lost_state) in [(false, TaskState::Lost), (true, TaskState::Unreachable)]
    {
        let mut h = Harness::new();
        let (aconn, agent) = h.agent(2.0, 512.0);
        let capabilities = if partition_aware {
            vec![FrameworkCapability::PartitionAware as i32]
        } else {
            vec![]
        };
        let (fconn, fid) = h.subscribe_info(FrameworkInfo {
            name: "one".into(),
            capabilities,
            ..FrameworkInfo::default()
        });
        let offer = h.one_offer(fconn);
        let launched = h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
        h.update(aconn, status(&fid, "t1", TaskState::Running, 1));
        let remainder = h.one_offer(fconn);

        // Stream ends: the offer is rescinded at once, the tasks are not reported yet.
        h.core.agent_disconnected(h.now, aconn);
        let cmds = h.cmds();
        assert_eq!(rescinds_in(&cmds, fconn), vec![remainder.id.clone()]);
        assert!(updates_in(&cmds, fconn).is_empty());
        assert_eq!(
            h.core.agent_summaries()[0].state,
            strata_proto::AgentState::Unreachable as i32
        );
        h.advance(Duration::from_secs(4));
        assert!(updates_in(&h.tick(), fconn).is_empty());
        h.advance(Duration::from_secs(1));
        let cmds = h.tick();
        let u = updates_in(&cmds, fconn);
        assert_eq!(u.len(), 1, "{cmds:?}");
        assert_eq!(u[0].state(), lost_state);
        assert_eq!(u[0].reason(), TaskReason::AgentDisconnected);
        assert_eq!(u[0].source(), TaskSource::Allocator);
        assert!(u[0].uuid.is_empty());
        assert!(cmds.iter().any(|c| matches!(c, Command::ToFramework { event: event::Event::Failure(f), .. } if f.agent_id == agent.0)));
        // Its resources left the cluster and the framework's allocation.
        let fw = &h.core.framework_summaries()[0];
        assert_eq!(scalar(&fw.allocated, CPUS), 0.0);
        assert_eq!(fw.active_tasks, 1);
        assert_eq!(
            h.core.task_summaries(&ListTasksRequest::default())[0].state,
            TaskState::Unreachable as i32
        );
        // Nothing more is reported on later ticks.
        h.advance(Duration::from_secs(10));
        assert!(updates_in(&h.tick(), fconn).is_empty());

        // It comes back with the task: RUNNING again, no uuid; books restored.
        let conn2 = h.conn();
        h.register(
            conn2,
            &agent.0,
            2.0,
            512.0,
            vec![AgentTask {
                framework_id: fid.0.clone(),
                task: launched[0].task.clone(),
                latest_status: Some(status(&fid, "t1", TaskState::Running, 1)),
            }],
        );
        let cmds = h.cmds();
        let u = updates_in(&cmds, fconn);
        assert_eq!(u.len(), 1, "{cmds:?}");
        assert_eq!(u[0].state(), TaskState::Running);
        assert!(u[0].uuid.is_empty());
        let fw = &h.core.framework_summaries()[0];
        assert_eq!(scalar(&fw.allocated, CPUS), 1.0);
        assert_eq!(
            h.core.agent_summaries()[0].state,
            strata_proto::AgentState::Active as i32
        );
        let again = h.one_offer(fconn);
        assert_eq!(scalar(&again.resources, CPUS), 1.0);
    }
}

#[test]
fn reconnect_timeout_zero_reports_at_once() {
    let mut h = Harness::with(AllocatorConfig {
        agent_reconnect_timeout: Duration::ZERO,
        ..config()
    });
    let (aconn, _) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.core.agent_disconnected(h.now, aconn);
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].state(), TaskState::Lost);
}

#[test]
fn reregistering_within_the_window_reports_nothing_and_drops_unlisted_tasks() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let launched = h.launch(
        fconn,
        &fid,
        aconn,
        &offer,
        vec![task("kept", 0.5, 64.0), task("forgotten", 0.5, 64.0)],
    );
    h.core.agent_disconnected(h.now, aconn);
    h.cmds();
    h.advance(Duration::from_secs(2));
    let conn2 = h.conn();
    let kept = launched
        .iter()
        .find(|l| l.task.as_ref().is_some_and(|t| t.task_id == "kept"))
        .and_then(|l| l.task.clone());
    h.register(
        conn2,
        &agent.0,
        2.0,
        512.0,
        vec![AgentTask {
            framework_id: fid.0.clone(),
            task: kept,
            latest_status: Some(status(&fid, "kept", TaskState::Running, 1)),
        }],
    );
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(u[0].task_id, "forgotten");
    assert_eq!(u[0].state(), TaskState::Lost);
    assert_eq!(u[0].reason(), TaskReason::AgentRestarted);
    let active = h.core.task_summaries(&ListTasksRequest::default());
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].state, TaskState::Running as i32);
    // Later ticks report nothing.
    h.advance(Duration::from_secs(10));
    assert!(updates_in(&h.tick(), fconn).is_empty());
}

/// The task `id` of `launched`, as the agent lists it with `state`.
fn listed(
    fid: &FrameworkId,
    launched: &[allocator_message::LaunchTask],
    id: &str,
    state: TaskState,
) -> AgentTask {
    AgentTask {
        framework_id: fid.0.clone(),
        task: launched
            .iter()
            .filter_map(|l| l.task.clone())
            .find(|t| t.task_id == id),
        latest_status: Some(status(fid, id, state, 1)),
    }
}

#[test]
fn re_registration_after_lost_brings_back_only_running_tasks() {
    // Cases: (what the agent lists the task as, the update the framework gets, whether it is
    // still active). A task that ended, or vanished, while its agent was away is never
    // RUNNING again; one the agent lists as ended is terminal at once (the agent's own
    // update tells the framework); one it no longer has gets no second LOST.
    let cases: &[(&str, Option<TaskState>, Option<TaskState>, bool)] = &[
        (
            "running",
            Some(TaskState::Running),
            Some(TaskState::Running),
            true,
        ),
        ("exited", Some(TaskState::Failed), None, false),
        ("finished", Some(TaskState::Finished), None, false),
        ("vanished", None, None, false),
    ];
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let tasks = cases.iter().map(|c| task(c.0, 0.5, 64.0)).collect();
    let launched = h.launch(fconn, &fid, aconn, &offer, tasks);
    h.core.agent_disconnected(h.now, aconn);
    h.advance(config().agent_reconnect_timeout);
    let lost = updates_in(&h.tick(), fconn);
    assert_eq!(lost.len(), cases.len(), "{lost:?}");
    assert!(lost.iter().all(|u| u.state() == TaskState::Lost));

    let conn = h.conn();
    let list = cases
        .iter()
        .filter_map(|c| c.1.map(|state| listed(&fid, &launched, c.0, state)))
        .collect();
    h.register(conn, &agent.0, 4.0, 1024.0, list);
    let updates = updates_in(&h.cmds(), fconn);
    let all = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    });
    for &(id, _, update, active) in cases {
        let got: Vec<TaskState> = updates
            .iter()
            .filter(|u| u.task_id == id)
            .map(TaskStatus::state)
            .collect();
        assert_eq!(
            got,
            update.into_iter().collect::<Vec<_>>(),
            "updates of {id}"
        );
        let summary = all.iter().find(|t| t.task_id == id).expect("task known");
        let state = TaskState::try_from(summary.state).expect("a state");
        assert_eq!(!state.is_terminal(), active, "{id} is {state:?}");
    }
    let ended = |id: &str| {
        let t = all.iter().find(|t| t.task_id == id).expect("task known");
        TaskState::try_from(t.state).expect("a state")
    };
    assert_eq!(ended("exited"), TaskState::Failed);
    assert_eq!(ended("finished"), TaskState::Finished);
    assert_eq!(ended("vanished"), TaskState::Lost);
    // The agent's own terminal update is forwarded (to be acknowledged), once.
    h.core
        .agent_status_update(h.now, conn, status(&fid, "exited", TaskState::Failed, 2));
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].state(), TaskState::Failed);
    assert!(!u[0].uuid.is_empty());
}

#[test]
fn re_registration_within_the_window_ends_listed_ended_tasks_without_running() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let launched = h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.core.agent_disconnected(h.now, aconn);
    h.advance(Duration::from_secs(2));
    assert!(updates_in(&h.tick(), fconn).is_empty());
    let conn = h.conn();
    h.register(
        conn,
        &agent.0,
        2.0,
        512.0,
        vec![listed(&fid, &launched, "t1", TaskState::Finished)],
    );
    assert!(updates_in(&h.cmds(), fconn).is_empty());
    assert!(
        h.core
            .task_summaries(&ListTasksRequest::default())
            .is_empty(),
        "the ended task is no longer active"
    );
    assert_eq!(
        scalar(&h.core.framework_summaries()[0].allocated, CPUS),
        0.0
    );
}

#[test]
fn silent_agents_get_the_rest_of_the_window_from_their_last_message() {
    let mut h = Harness::with(AllocatorConfig {
        agent_timeout: Duration::from_secs(15),
        agent_reconnect_timeout: Duration::from_secs(75),
        ..config()
    });
    let (aconn, _) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.advance(Duration::from_secs(15));
    let cmds = h.tick();
    assert!(closed(&cmds, aconn), "the silent agent's stream is closed");
    assert!(updates_in(&cmds, fconn).is_empty(), "{cmds:?}");
    h.advance(Duration::from_secs(59));
    assert!(updates_in(&h.tick(), fconn).is_empty());
    h.advance(Duration::from_secs(1));
    let u = updates_in(&h.tick(), fconn);
    assert_eq!(u.len(), 1, "75 s after its last message");
    assert_eq!(u[0].state(), TaskState::Lost);
}

#[test]
fn silent_agents_time_out() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    for _ in 0..3 {
        h.advance(Duration::from_secs(10));
        h.core.agent_heartbeat(h.now, aconn);
        let cmds = h.tick();
        assert!(!closed(&cmds, aconn));
        assert!(updates_in(&cmds, fconn).is_empty());
    }
    h.advance(Duration::from_secs(15));
    let cmds = h.tick();
    assert!(closed(&cmds, aconn), "the silent agent's stream is closed");
    let u = updates_in(&cmds, fconn);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].state(), TaskState::Lost);
    // Its late stream end changes nothing.
    h.core.agent_disconnected(h.now, aconn);
    assert!(h.cmds().is_empty());
}

#[test]
fn replacing_an_agent_stream_closes_the_old_one() {
    let mut h = Harness::new();
    let (old, agent) = h.agent(2.0, 512.0);
    let (fconn, _) = h.framework("one");
    let offer = h.one_offer(fconn);
    let new = h.conn();
    h.register(new, &agent.0, 3.0, 512.0, vec![]);
    let cmds = h.cmds();
    assert!(closed(&cmds, old));
    assert_eq!(rescinds_in(&cmds, fconn), vec![offer.id]);
    let again = h.one_offer(fconn);
    assert_eq!(scalar(&again.resources, CPUS), 3.0, "the new total is used");
    h.core.agent_disconnected(h.now, old);
    assert!(h.cmds().is_empty(), "the old stream's end is ignored");
}

#[test]
fn reregistration_adopts_known_framework_tasks_and_kills_orphans() {
    let mut h = Harness::new();
    let (fconn, fid) = h.framework("one");
    let conn = h.conn();
    let adopted = AgentTask {
        framework_id: fid.0.clone(),
        task: Some(task("adopted", 1.0, 64.0)),
        latest_status: Some(status(&fid, "adopted", TaskState::Running, 1)),
    };
    let orphan = AgentTask {
        framework_id: "gone-framework".into(),
        task: Some(task("orphan", 1.0, 64.0)),
        latest_status: Some(status(
            &FrameworkId("gone-framework".into()),
            "orphan",
            TaskState::Running,
            1,
        )),
    };
    h.register(conn, "old-S3", 4.0, 1024.0, vec![adopted, orphan]);
    let cmds = h.cmds();
    let kills: Vec<String> = agent_msgs(&cmds, conn)
        .into_iter()
        .filter_map(|m| match m {
            allocator_message::Message::KillTask(k) => Some(k.task_id),
            _ => None,
        })
        .collect();
    assert_eq!(kills, vec!["orphan".to_owned()]);
    let tasks = h.core.task_summaries(&ListTasksRequest::default());
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, "adopted");
    assert_eq!(tasks[0].agent_id, "old-S3");
    let offer = h.one_offer(fconn);
    assert_eq!(scalar(&offer.resources, CPUS), 3.0);
}

#[test]
fn framework_failover_and_teardown() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.subscribe_info(FrameworkInfo {
        name: "patient".into(),
        failover_timeout_seconds: 10.0,
        ..FrameworkInfo::default()
    });
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    let rest = h.one_offer(fconn);

    // Disconnect: offers go back, tasks keep running, the framework stays.
    h.core.framework_disconnected(h.now, fconn);
    let cmds = h.cmds();
    assert!(agent_msgs(&cmds, aconn).is_empty());
    let fw = &h.core.framework_summaries()[0];
    assert!(!fw.connected);
    assert!(fw.offered.is_empty());
    assert_eq!(h.core.agent_summaries()[0].offered, vec![]);
    let _ = rest;
    // Re-subscribe in time: still there with its task, and gets offers again.
    h.advance(Duration::from_secs(9));
    h.core.agent_heartbeat(h.now, aconn);
    assert!(agent_msgs(&h.tick(), aconn).is_empty());
    let (fconn2, fid2) = h.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        failover_timeout_seconds: 10.0,
        ..FrameworkInfo::default()
    });
    assert_eq!(fid2, fid);
    assert_eq!(h.core.framework_summaries()[0].active_tasks, 1);
    assert_eq!(h.one_offer(fconn2).agent_id, offer.agent_id);

    // Disconnect again and let the timeout expire: removed, task killed, resources free.
    h.core.framework_disconnected(h.now, fconn2);
    h.cmds();
    h.advance(Duration::from_secs(10));
    h.core.agent_heartbeat(h.now, aconn);
    let cmds = h.tick();
    assert!(
        matches!(
            agent_msgs(&cmds, aconn).as_slice(),
            [allocator_message::Message::KillTask(k)] if k.task_id == "t1"
        ),
        "{cmds:?}"
    );
    assert!(h.core.framework_summaries().is_empty());
    assert!(h.core.agent_summaries()[0].allocated.is_empty());
    let all = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    });
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, TaskState::Killed as i32);

    // Teardown of a connected framework: removed at once, its stream closed.
    let (fconn3, fid3) = h.framework("short");
    let offer = h.one_offer(fconn3);
    h.launch(fconn3, &fid3, aconn, &offer, vec![task("t2", 1.0, 64.0)]);
    let cmds = h.call(
        fconn3,
        simple_call(&fid3, call::Call::Teardown(call::Teardown {})),
    );
    assert!(closed(&cmds, fconn3));
    assert!(
        agent_msgs(&cmds, aconn)
            .iter()
            .any(|m| matches!(m, allocator_message::Message::KillTask(k) if k.task_id == "t2"))
    );
    assert!(h.core.framework_summaries().is_empty());
    // A removed framework's id is unknown afterwards.
    let err = h.core.framework_subscribe(
        h.now,
        ConnId(999),
        FrameworkInfo {
            id: fid3.0.clone(),
            ..FrameworkInfo::default()
        },
    );
    assert!(matches!(err, Err(CoreError::UnknownFramework { .. })));
}

#[test]
fn framework_disconnect_returns_offers_to_others() {
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let (fa, _) = h.framework("a");
    let (fb, _) = h.framework("b");
    let cmds = h.allocate();
    assert_eq!(offers_in(&cmds, fa).len(), 1);
    h.core.framework_disconnected(h.now, fa);
    let cmds = h.allocate();
    assert_eq!(offers_in(&cmds, fb).len(), 1, "{cmds:?}");
}

#[test]
fn frameworks_get_heartbeats() {
    let mut h = Harness::new();
    let (fconn, _) = h.framework("one");
    let heartbeats = |cmds: &[Command]| {
        cmds.iter()
            .filter(|c| matches!(c, Command::ToFramework { conn, event: event::Event::Heartbeat(_) } if *conn == fconn))
            .count()
    };
    h.advance(Duration::from_secs(14));
    assert_eq!(heartbeats(&h.tick()), 0);
    h.advance(Duration::from_secs(1));
    assert_eq!(heartbeats(&h.tick()), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(heartbeats(&h.tick()), 0);
}

#[test]
fn calls_with_another_framework_id_change_nothing() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    let remainder = h.one_offer(fconn);
    let other = FrameworkId("other".into());
    let calls = vec![
        call::Call::Kill(call::Kill {
            task_id: "t1".into(),
            agent_id: agent.0.clone(),
            grace_period_seconds: None,
        }),
        call::Call::Teardown(call::Teardown {}),
        call::Call::Suppress(call::Suppress::default()),
        call::Call::Reconcile(call::Reconcile::default()),
        call::Call::Decline(call::Decline {
            offer_ids: vec![remainder.id.clone()],
            filters: None,
        }),
    ];
    for c in calls {
        let before = h.snapshot();
        let cmds = h.call(fconn, simple_call(&other, c.clone()));
        assert_eq!(h.snapshot(), before, "{c:?}");
        assert_eq!(errors_in(&cmds, fconn).len(), 1, "{c:?}");
        assert_eq!(cmds.len(), 1, "{c:?}: {cmds:?}");
    }
}

#[test]
fn terminal_history_is_bounded_and_filterable() {
    let mut h = Harness::with(AllocatorConfig {
        terminal_task_history: 2,
        ..config()
    });
    let (aconn, agent) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("one");
    for i in 0..4 {
        let offer = h.one_offer(fconn);
        let id = format!("t{i}");
        h.launch(fconn, &fid, aconn, &offer, vec![task(&id, 1.0, 64.0)]);
        h.update(aconn, status(&fid, &id, TaskState::Finished, i as u8));
    }
    let all = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    });
    let ids: Vec<&str> = all.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, vec!["t2", "t3"]);
    assert_eq!(h.core.terminal_task_count(), 2);
    let none = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        framework_id: "other".into(),
        ..ListTasksRequest::default()
    });
    assert!(none.is_empty());
    let by_agent = h.core.task_summaries(&ListTasksRequest {
        include_terminal: true,
        agent_id: agent.0.clone(),
        ..ListTasksRequest::default()
    });
    assert_eq!(by_agent.len(), 2);
    // A task id can be reused once its task ended.
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t3", 1.0, 64.0)]);
}

/// A deterministic pseudo-random sequence (no extra crates).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn resources_are_conserved_under_random_operations() {
    let mut launches = 0;
    let mut rejections = 0;
    let mut unreachable_agents = 0;
    for seed in 0..20 {
        let mut rng = Lcg(seed);
        let mut h = Harness::new();
        let mut agents: Vec<(ConnId, AgentId, bool)> = Vec::new();
        let mut frameworks: Vec<(ConnId, FrameworkId)> = Vec::new();
        let mut offers: Vec<(ConnId, FrameworkId, Offer)> = Vec::new();
        let mut running: Vec<(ConnId, FrameworkId, String)> = Vec::new();
        let mut next_task = 0;
        for step in 0..400 {
            let cmds = match rng.next(10) {
                0 if agents.len() < 6 => {
                    let (c, id) =
                        h.agent(1.0 + rng.next(4) as f64, 256.0 * (1 + rng.next(4)) as f64);
                    agents.push((c, id, true));
                    h.allocate()
                }
                1 if frameworks.len() < 3 => {
                    frameworks.push(h.framework("f"));
                    h.allocate()
                }
                2 | 3 if !offers.is_empty() => {
                    let (fconn, fid, offer) = offers.remove(rng.next(offers.len() as u64) as usize);
                    let n = rng.next(3);
                    let tasks = (0..n)
                        .map(|_| {
                            next_task += 1;
                            task(
                                &format!("t{next_task}"),
                                0.5 * rng.next(3) as f64,
                                64.0 * rng.next(3) as f64,
                            )
                        })
                        .collect();
                    let cmds = h.call(fconn, launch_call(&fid, &[&offer.id], tasks));
                    // Rejected or not, the offer is used up (its resources come back in new
                    // offers).
                    if n > 0 && !updates_in(&cmds, fconn).is_empty() {
                        rejections += 1;
                    }
                    cmds
                }
                4 if !offers.is_empty() => {
                    let (fconn, fid, offer) = offers.remove(rng.next(offers.len() as u64) as usize);
                    h.call(
                        fconn,
                        simple_call(
                            &fid,
                            call::Call::Decline(call::Decline {
                                offer_ids: vec![offer.id],
                                filters: Some(Filters {
                                    refuse_seconds: Some(rng.next(3) as f64),
                                }),
                            }),
                        ),
                    )
                }
                5 if !running.is_empty() => {
                    let (aconn, fid, id) = running.remove(rng.next(running.len() as u64) as usize);
                    let state = [TaskState::Running, TaskState::Finished, TaskState::Failed]
                        [rng.next(3) as usize];
                    if !state.is_terminal() {
                        running.push((aconn, fid.clone(), id.clone()));
                    }
                    h.update(aconn, status(&fid, &id, state, 1))
                }
                6 if !agents.is_empty() => {
                    let i = rng.next(agents.len() as u64) as usize;
                    let (conn, id, connected) = agents[i].clone();
                    if connected {
                        h.core.agent_disconnected(h.now, conn);
                        agents[i].2 = false;
                    } else {
                        let conn = h.conn();
                        h.register(conn, &id.0, 4.0, 1024.0, vec![]);
                        agents[i] = (conn, id, true);
                    }
                    h.allocate()
                }
                7 => {
                    h.advance(Duration::from_millis(700 * rng.next(4)));
                    h.tick()
                }
                8 if !frameworks.is_empty() && rng.next(5) == 0 => {
                    let (conn, _) = frameworks.remove(rng.next(frameworks.len() as u64) as usize);
                    h.core.framework_disconnected(h.now, conn);
                    h.allocate()
                }
                _ => h.allocate(),
            };
            // Track what the commands tell us.
            for c in &cmds {
                match c {
                    Command::ToFramework {
                        conn,
                        event: event::Event::Offers(o),
                    } => {
                        let fid = frameworks
                            .iter()
                            .find(|(c, _)| c == conn)
                            .map(|(_, f)| f.clone());
                        if let Some(fid) = fid {
                            for offer in &o.offers {
                                offers.push((*conn, fid.clone(), offer.clone()));
                            }
                        }
                    }
                    Command::ToFramework {
                        event: event::Event::Failure(_),
                        ..
                    } => {
                        unreachable_agents += 1;
                    }
                    Command::ToFramework {
                        event: event::Event::Rescind(r),
                        ..
                    } => {
                        offers.retain(|(_, _, o)| o.id != r.offer_id);
                    }
                    Command::ToAgent {
                        conn,
                        message: allocator_message::Message::LaunchTask(l),
                    } => {
                        let t = l.task.as_ref().expect("task");
                        launches += 1;
                        running.push((
                            *conn,
                            FrameworkId(l.framework_id.clone()),
                            t.task_id.clone(),
                        ));
                    }
                    _ => {}
                }
            }
            // Offers of frameworks that disconnected are gone silently.
            offers.retain(|(c, _, _)| frameworks.iter().any(|(fc, _)| fc == c));
            if let Err(e) = h.core.check_invariants() {
                panic!("seed {seed} step {step}: {e}");
            }
            // Per agent, the books add up.
            for a in h.core.agent_summaries() {
                let used = scalar(&a.allocated, CPUS) + scalar(&a.offered, CPUS);
                assert!(
                    used <= scalar(&a.total, CPUS) + 1e-9,
                    "seed {seed} step {step}: {a:?}"
                );
            }
        }
    }
    // The sequences did exercise launches, rejections and lost agents.
    assert!(launches > 100, "{launches} launches");
    assert!(rejections > 10, "{rejections} rejections");
    assert!(unreachable_agents > 5, "{unreachable_agents} failures");
}

#[test]
fn an_accept_that_does_nothing_refuses_until_the_next_tick_like_a_decline() {
    // Mesos frameworks decline with an ACCEPT of no operations; with refuse_seconds 0 it
    // must not get the agent back at once (a re-offer loop), only at the next tick.
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    let mut accept = launch_call(&fid, &[&offer.id], vec![]);
    if let Some(call::Call::Accept(a)) = &mut accept.call {
        a.operations.clear();
        a.filters = Some(Filters {
            refuse_seconds: Some(0.0),
        });
    }
    let cmds = h.call(fconn, accept);
    assert!(offers_in(&cmds, fconn).is_empty(), "at once: {cmds:?}");
    assert!(
        offers_in(&h.allocate(), fconn).is_empty(),
        "in a prompt pass"
    );
    let again = offers_in(&h.tick(), fconn);
    assert_eq!(again.len(), 1, "at the next tick");
    assert_eq!(again[0].resources, offer.resources);
}

#[test]
fn a_failed_over_framework_keeps_no_minimum_refusal() {
    // As its filters, what it declined before failing over is offered to it at once.
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let info = FrameworkInfo {
        name: "patient".into(),
        failover_timeout_seconds: 60.0,
        ..FrameworkInfo::default()
    };
    let (fconn, fid) = h.subscribe_info(info.clone());
    let offer = h.one_offer(fconn);
    let decline = call::Decline {
        offer_ids: vec![offer.id],
        filters: Some(Filters {
            refuse_seconds: Some(0.0),
        }),
    };
    let cmds = h.call(fconn, simple_call(&fid, call::Call::Decline(decline)));
    assert!(offers_in(&cmds, fconn).is_empty(), "{cmds:?}");
    h.core.framework_disconnected(h.now, fconn);
    h.cmds();
    let (fconn2, fid2) = h.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        ..info
    });
    assert_eq!(fid2, fid);
    assert_eq!(offers_in(&h.allocate(), fconn2).len(), 1);
}

/// What operators subscribed to events hear of, as the core records it.
fn change_kinds(core: &mut Core) -> Vec<String> {
    core.take_changes()
        .into_iter()
        .map(|c| match c {
            crate::Change::AgentAdded(a) => format!("agent_added {}", a.id),
            crate::Change::AgentRemoved { agent_id } => format!("agent_removed {agent_id}"),
            crate::Change::AgentUpdated(a) => format!("agent_updated {} {:?}", a.id, a.mode()),
            crate::Change::FrameworkAdded(f) => format!("framework_added {}", f.name),
            crate::Change::FrameworkUpdated(f) => {
                format!("framework_updated {} connected={}", f.name, f.connected)
            }
            crate::Change::FrameworkRemoved(f) => format!("framework_removed {}", f.name),
            crate::Change::TaskAdded(t) => {
                format!("task_added {} {}", t.task_id, t.state().label())
            }
            crate::Change::TaskUpdated { status, state } => {
                format!("task_updated {} {}", status.task_id, state.label())
            }
        })
        .collect()
}

#[test]
fn changes_are_recorded_only_while_observed_and_once_per_state() {
    let mut h = Harness::with(AllocatorConfig {
        agent_reconnect_timeout: Duration::ZERO,
        ..config()
    });
    let _ = h.agent(1.0, 64.0);
    assert!(h.core.take_changes().is_empty(), "not observed");
    h.core.observe(true);
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = offers_in(&h.allocate(), fconn)
        .into_iter()
        .find(|o| o.agent_id == agent.0)
        .expect("an offer of the observed agent");
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.update(aconn, status(&fid, "t1", TaskState::Running, 1));
    // A resent update changes no state: nothing to tell.
    h.update(aconn, status(&fid, "t1", TaskState::Running, 1));
    assert_eq!(
        change_kinds(&mut h.core),
        vec![
            format!("agent_added {}", agent.0),
            "framework_added one".to_owned(),
            "task_added t1 TASK_STAGING".to_owned(),
            "task_updated t1 TASK_RUNNING".to_owned(),
        ]
    );
    // An operator's drain and reactivation change the agent's mode.
    h.core
        .drain_agent(h.now, &agent.0, Some(0.0))
        .expect("the agent drains");
    h.core.reactivate_agent(&agent.0).expect("it reactivates");
    assert_eq!(
        change_kinds(&mut h.core),
        vec![
            format!("agent_updated {} Draining", agent.0),
            format!("agent_updated {} Active", agent.0),
        ]
    );
    // The agent goes (reconnect timeout 0): its task unreachable, the agent removed.
    h.core.agent_disconnected(h.now, aconn);
    assert_eq!(
        change_kinds(&mut h.core),
        vec![
            "task_updated t1 TASK_UNREACHABLE".to_owned(),
            format!("agent_removed {}", agent.0),
        ]
    );
    // The framework disconnects (failover timeout 0): updated, its task killed, removed.
    h.core.framework_disconnected(h.now, fconn);
    assert_eq!(
        change_kinds(&mut h.core),
        vec![
            "framework_updated one connected=false".to_owned(),
            "task_updated t1 TASK_KILLED".to_owned(),
            "framework_removed one".to_owned(),
        ]
    );
    h.core.observe(false);
    let _ = h.framework("two");
    assert!(h.core.take_changes().is_empty());
}

#[test]
fn agents_with_gpus_go_only_to_frameworks_that_declare_gpu_resources() {
    let mut h = Harness::new();
    // A GPU agent and a CPU-only one.
    let gpu_conn = h.conn();
    let mut resources = agent_resources(8.0, 8192.0);
    resources.push(Resource::scalar(names::GPUS, 1.0));
    let now = h.now;
    h.core
        .agent_register(
            now,
            gpu_conn,
            agent_message::Register {
                info: Some(AgentInfo {
                    hostname: "gpu-host".into(),
                    resources,
                    ..AgentInfo::default()
                }),
                tasks: vec![],
            },
        )
        .expect("registered");
    h.cmds();
    let (_, cpu_agent) = h.agent(2.0, 1024.0);
    // Without GPU_RESOURCES: only the CPU-only agent is offered, whatever the shares.
    let (plain, _) = h.framework("cpu-only");
    let offers = offers_in(&h.allocate(), plain);
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].agent_id, cpu_agent.0);
    h.advance(Duration::from_secs(1));
    assert!(
        offers_in(&h.tick(), plain).is_empty(),
        "the GPU agent stays"
    );
    // With it: the GPU agent, GPUs included.
    let (aware, _) = h.subscribe_info(FrameworkInfo {
        name: "trainer".into(),
        capabilities: vec![FrameworkCapability::GpuResources as i32],
        ..FrameworkInfo::default()
    });
    let offers = offers_in(&h.allocate(), aware);
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].hostname, "gpu-host");
    assert_eq!(scalar(&offers[0].resources, names::GPUS), 1.0);
}
