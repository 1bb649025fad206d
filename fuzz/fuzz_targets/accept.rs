//! ACCEPT validation in the allocator core (`allocator-core/src/frameworks/accept.rs`): a core
//! with agents and a framework built from the input, allocated so the framework holds offers,
//! then arbitrary ACCEPTs (LAUNCH, RESERVE, UNRESERVE and unknown operations with arbitrary
//! resources, real, repeated and bogus offer ids), the agents' status updates for what was
//! launched, and further allocation rounds. After every step the core's books must hold
//! (`Core::check_invariants`) and a launch must only ever reach an agent that exists.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata_allocator_core::{AllocatorConfig, Command, ConnId, Core};
use strata_proto::{
    AgentInfo, CommandInfo, Filters, FrameworkCapability, FrameworkInfo, Offer, Operation,
    Resource, ResourceKind, TaskInfo, TaskSource, TaskState, TaskStatus, ValueRange, agent_message,
    allocator_message, call, event, operation,
};

const ROLES: [&str; 5] = ["*", "a", "b", "eng/ml", ""];
const NAMES: [&str; 6] = ["cpus", "mem", "ports", "disk", "gpus", "bogus"];

#[derive(Arbitrary, Debug)]
enum Role {
    Known(u8),
    Raw(String),
}

impl Role {
    fn name(&self) -> String {
        match self {
            Self::Known(i) => ROLES[usize::from(*i) % ROLES.len()].to_owned(),
            Self::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Res {
    name: u8,
    raw_name: Option<String>,
    kind: u8,
    scalar: f64,
    ranges: Vec<(u64, u64)>,
    set: Vec<String>,
    role: Role,
    allocation_role: Option<Role>,
}

impl Res {
    fn proto(&self) -> Resource {
        Resource {
            name: self
                .raw_name
                .clone()
                .unwrap_or_else(|| NAMES[usize::from(self.name) % NAMES.len()].to_owned()),
            kind: i32::from(self.kind % 4),
            scalar: self.scalar,
            ranges: self
                .ranges
                .iter()
                .map(|&(begin, end)| ValueRange { begin, end })
                .collect(),
            set: self.set.clone(),
            role: self.role.name(),
            allocation_role: self
                .allocation_role
                .as_ref()
                .map(Role::name)
                .unwrap_or_default(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct AgentSpec {
    cpus: u8,
    mem: u16,
    ports: Vec<(u16, u16)>,
    extra: Vec<Res>,
}

/// An offer id: one the framework received (by index), or made up.
#[derive(Arbitrary, Debug)]
enum OfferRef {
    Held(u8),
    Raw(String),
}

/// An agent id: the one of a held offer, or made up.
#[derive(Arbitrary, Debug)]
enum AgentRef {
    OfHeld(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct TaskSpec {
    id: String,
    agent: AgentRef,
    /// The first `n` resources of the offer the agent ref names, then `extra`.
    from_offer: u8,
    extra: Vec<Res>,
    command: Option<String>,
    grace: f64,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Launch(Vec<TaskSpec>),
    Reserve {
        from_offer: u8,
        role: Role,
        extra: Vec<Res>,
    },
    Unreserve {
        from_offer: u8,
        extra: Vec<Res>,
    },
    Unknown,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Accept {
        offers: Vec<OfferRef>,
        operations: Vec<Op>,
        refuse_seconds: Option<f64>,
    },
    /// The agent reports launched task `task` (by index) in `state`.
    Update {
        task: u8,
        state: u8,
        uuid: bool,
    },
    Decline {
        offer: OfferRef,
    },
    Tick {
        ms: u16,
    },
    Revive,
}

#[derive(Arbitrary, Debug)]
struct Input {
    agents: Vec<AgentSpec>,
    roles: Vec<Role>,
    multi_role: bool,
    steps: Vec<Step>,
}

struct World {
    core: Core,
    now: Duration,
    fw: ConnId,
    framework_id: String,
    held: Vec<Offer>,
    /// (agent stream, task id) of every task launched.
    launched: Vec<(ConnId, String)>,
    agents: Vec<(ConnId, String)>,
}

impl World {
    fn settle(&mut self) {
        if let Err(e) = self.core.check_invariants() {
            panic!("invariant broken: {e}");
        }
        for command in self.core.take_commands() {
            match command.into_wire() {
                Command::ToFramework {
                    conn,
                    event: event::Event::Offers(offers),
                } if conn == self.fw => self.held.extend(offers.offers),
                Command::ToFramework {
                    conn,
                    event: event::Event::Rescind(r),
                } if conn == self.fw => self.held.retain(|o| o.id != r.offer_id),
                Command::ToAgent {
                    conn,
                    message: allocator_message::Message::LaunchTask(l),
                } => {
                    assert!(
                        self.agents.iter().any(|(c, _)| *c == conn),
                        "a launch went to stream {conn}, which is no agent's"
                    );
                    let task = l.task.expect("a launch carries its task");
                    self.launched.push((conn, task.task_id));
                }
                _ => {}
            }
        }
    }

    fn offer_id(&self, r: &OfferRef) -> String {
        match r {
            OfferRef::Held(i) if !self.held.is_empty() => {
                self.held[usize::from(*i) % self.held.len()].id.clone()
            }
            OfferRef::Held(i) => format!("f-O{i}"),
            OfferRef::Raw(s) => s.clone(),
        }
    }

    fn held_offer(&self, i: u8) -> Option<&Offer> {
        (!self.held.is_empty()).then(|| &self.held[usize::from(i) % self.held.len()])
    }

    fn agent_id(&self, r: &AgentRef) -> (String, Option<&Offer>) {
        match r {
            AgentRef::OfHeld(i) => match self.held_offer(*i) {
                Some(o) => (o.agent_id.clone(), Some(o)),
                None => (String::new(), None),
            },
            AgentRef::Raw(s) => (s.clone(), None),
        }
    }

    fn resources(offer: Option<&Offer>, n: u8, extra: &[Res]) -> Vec<Resource> {
        offer
            .map(|o| {
                o.resources
                    .iter()
                    .take(usize::from(n))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain(extra.iter().map(Res::proto))
            .collect()
    }

    fn operation(&self, op: &Op) -> Operation {
        let operation = match op {
            Op::Launch(tasks) => operation::Operation::Launch(operation::Launch {
                tasks: tasks
                    .iter()
                    .map(|t| {
                        let (agent_id, offer) = self.agent_id(&t.agent);
                        TaskInfo {
                            task_id: t.id.clone(),
                            name: t.id.clone(),
                            agent_id,
                            resources: Self::resources(offer, t.from_offer, &t.extra),
                            command: t.command.as_ref().map(|c| CommandInfo {
                                shell: true,
                                value: c.clone(),
                                ..CommandInfo::default()
                            }),
                            kill_grace_period_seconds: t.grace,
                            ..TaskInfo::default()
                        }
                    })
                    .collect(),
            }),
            Op::Reserve {
                from_offer,
                role,
                extra,
            } => {
                let mut resources =
                    Self::resources(self.held_offer(*from_offer), *from_offer, extra);
                for r in resources.iter_mut().take(usize::from(*from_offer)) {
                    r.role = role.name();
                }
                operation::Operation::Reserve(operation::Reserve { resources })
            }
            Op::Unreserve { from_offer, extra } => {
                operation::Operation::Unreserve(operation::Unreserve {
                    resources: Self::resources(self.held_offer(*from_offer), *from_offer, extra),
                })
            }
            Op::Unknown => return Operation { operation: None },
        };
        Operation {
            operation: Some(operation),
        }
    }

    fn call(&mut self, c: call::Call) {
        let call = strata_proto::Call {
            framework_id: self.framework_id.clone(),
            call: Some(c),
        };
        self.core.framework_call(self.now, self.fw, call);
    }
}

fuzz_target!(|input: Input| {
    let config = AllocatorConfig {
        agent_heartbeat_interval: Duration::from_secs(5),
        agent_timeout: Duration::from_secs(15),
        agent_reconnect_timeout: Duration::from_secs(5),
        agent_reregister_timeout: Duration::from_secs(600),
        framework_heartbeat_interval: Duration::from_secs(15),
        allocation_interval: Duration::from_secs(1),
        default_refuse: Duration::from_secs(5),
        terminal_task_history: 20,
        offer_timeout: None,
        ..AllocatorConfig::default()
    };
    let mut w = World {
        core: Core::new(config, "f"),
        now: Duration::from_secs(1000),
        fw: ConnId(100),
        framework_id: String::new(),
        held: Vec::new(),
        launched: Vec::new(),
        agents: Vec::new(),
    };
    for (i, a) in input.agents.iter().take(4).enumerate() {
        let conn = ConnId(1 + i as u64);
        let mut resources = vec![
            Resource::scalar("cpus", f64::from(a.cpus.max(1))),
            Resource::scalar("mem", f64::from(a.mem.max(32))),
        ];
        if !a.ports.is_empty() {
            resources.push(Resource {
                name: "ports".to_owned(),
                kind: ResourceKind::Ranges as i32,
                ranges: a
                    .ports
                    .iter()
                    .map(|&(b, e)| ValueRange {
                        begin: u64::from(b.min(e)),
                        end: u64::from(b.max(e)),
                    })
                    .collect(),
                ..Resource::default()
            });
        }
        resources.extend(a.extra.iter().map(Res::proto));
        let info = AgentInfo {
            hostname: format!("host-{i}"),
            resources,
            ..AgentInfo::default()
        };
        let register = agent_message::Register {
            info: Some(info),
            tasks: Vec::new(),
        };
        if let Ok(id) = w.core.agent_register(w.now, conn, register) {
            w.agents.push((conn, id.0.clone()));
        }
        w.settle();
    }
    let roles: Vec<String> = input.roles.iter().take(4).map(Role::name).collect();
    let info = FrameworkInfo {
        name: "fuzz".to_owned(),
        roles,
        capabilities: if input.multi_role {
            vec![FrameworkCapability::MultiRole as i32]
        } else {
            Vec::new()
        },
        ..FrameworkInfo::default()
    };
    let Ok(fid) = w.core.framework_subscribe(w.now, w.fw, info) else {
        w.settle();
        return;
    };
    w.framework_id = fid.0.clone();
    w.settle();
    w.now += Duration::from_secs(1);
    w.core.tick(w.now);
    w.settle();

    for step in input.steps.iter().take(16) {
        match step {
            Step::Accept {
                offers,
                operations,
                refuse_seconds,
            } => {
                let offer_ids: Vec<String> = offers.iter().take(4).map(|o| w.offer_id(o)).collect();
                let operations = operations.iter().take(4).map(|o| w.operation(o)).collect();
                w.held.retain(|o| !offer_ids.contains(&o.id));
                w.call(call::Call::Accept(call::Accept {
                    offer_ids,
                    operations,
                    filters: refuse_seconds.map(|s| Filters {
                        refuse_seconds: Some(s),
                    }),
                }));
            }
            Step::Update { task, state, uuid } => {
                if w.launched.is_empty() {
                    continue;
                }
                let (conn, task_id) = w.launched[usize::from(*task) % w.launched.len()].clone();
                let status = TaskStatus {
                    task_id,
                    framework_id: w.framework_id.clone(),
                    state: i32::from(*state % 14),
                    source: TaskSource::Agent as i32,
                    uuid: if *uuid { vec![*state; 16] } else { Vec::new() },
                    ..TaskStatus::default()
                };
                w.core.agent_status_update(w.now, conn, status);
                // Acknowledge as a framework does.
                if *uuid && TaskState::try_from(i32::from(*state % 14)).is_ok() {
                    let (agent_conn, task_id) =
                        w.launched[usize::from(*task) % w.launched.len()].clone();
                    let agent_id = w
                        .agents
                        .iter()
                        .find(|(c, _)| *c == agent_conn)
                        .map(|(_, id)| id.clone())
                        .unwrap_or_default();
                    w.call(call::Call::Acknowledge(call::Acknowledge {
                        agent_id,
                        task_id,
                        uuid: vec![*state; 16],
                    }));
                }
            }
            Step::Decline { offer } => {
                let id = w.offer_id(offer);
                w.held.retain(|o| o.id != id);
                w.call(call::Call::Decline(call::Decline {
                    offer_ids: vec![id],
                    filters: None,
                }));
            }
            Step::Tick { ms } => {
                w.now += Duration::from_millis(u64::from(*ms));
                w.core.tick(w.now);
            }
            Step::Revive => w.call(call::Call::Revive(call::Revive { roles: Vec::new() })),
        }
        w.settle();
    }
});
