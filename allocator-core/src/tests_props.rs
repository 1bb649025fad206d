//! Property tests (proptest) over random operation sequences: after every step the core's
//! books hold (resources conserved on every agent: allocated + offered + free == total) and
//! no resource is offered to two frameworks at once, as seen from the offers the
//! frameworks actually received.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use strata_proto::names::{CPUS, MEM, PORTS};
use strata_proto::{
    Filters, FrameworkInfo, Offer, Resource, TaskState, agent_message, allocator_message, call,
    event,
};

use super::roles::{Limits, Quota};
use super::tests::{Harness, launch_call, simple_call, status, task};
use super::{Command, ConnId, FrameworkId, Resources};

const ROLES: [&str; 4] = ["a", "b", "eng/ml", "eng/web"];

#[derive(Clone, Debug)]
enum Op {
    Agent {
        cpus: u8,
        mem: u8,
        reserve: Option<usize>,
    },
    Framework {
        roles: Vec<usize>,
    },
    Launch {
        offer: usize,
        tasks: u8,
        cpus: u8,
        mem: u8,
    },
    Decline {
        offer: usize,
        refuse: u8,
    },
    Update {
        task: usize,
        state: u8,
    },
    ToggleAgent {
        agent: usize,
    },
    Advance {
        ms: u16,
    },
    FrameworkGone {
        framework: usize,
    },
    Suppress {
        framework: usize,
        role: usize,
    },
    Revive {
        framework: usize,
    },
    Quota {
        role: usize,
        guarantee: u8,
        limit: u8,
    },
    Weight {
        role: usize,
        weight: u8,
    },
    Reserve {
        agent: usize,
        role: usize,
        cpus: u8,
        undo: bool,
    },
    Mode {
        agent: usize,
        mode: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..5, 1u8..5, proptest::option::of(0usize..4))
            .prop_map(|(cpus, mem, reserve)| Op::Agent { cpus, mem, reserve }),
        proptest::collection::vec(0usize..4, 1..3).prop_map(|roles| Op::Framework { roles }),
        (any::<usize>(), 0u8..3, 0u8..3, 0u8..3).prop_map(|(offer, tasks, cpus, mem)| {
            Op::Launch {
                offer,
                tasks,
                cpus,
                mem,
            }
        }),
        (any::<usize>(), 0u8..3).prop_map(|(offer, refuse)| Op::Decline { offer, refuse }),
        (any::<usize>(), 0u8..3).prop_map(|(task, state)| Op::Update { task, state }),
        any::<usize>().prop_map(|agent| Op::ToggleAgent { agent }),
        (0u16..3000).prop_map(|ms| Op::Advance { ms }),
        any::<usize>().prop_map(|framework| Op::FrameworkGone { framework }),
        (any::<usize>(), 0usize..4).prop_map(|(framework, role)| Op::Suppress { framework, role }),
        any::<usize>().prop_map(|framework| Op::Revive { framework }),
        (0usize..4, 0u8..4, 0u8..6).prop_map(|(role, guarantee, limit)| Op::Quota {
            role,
            guarantee,
            limit
        }),
        (0usize..4, 1u8..4).prop_map(|(role, weight)| Op::Weight { role, weight }),
        (any::<usize>(), 0usize..4, 1u8..3, any::<bool>()).prop_map(|(agent, role, cpus, undo)| {
            Op::Reserve {
                agent,
                role,
                cpus,
                undo,
            }
        }),
        (any::<usize>(), 0u8..3).prop_map(|(agent, mode)| Op::Mode { agent, mode }),
    ]
}

#[derive(Default)]
struct World {
    agents: Vec<(ConnId, String, bool)>,
    frameworks: Vec<(ConnId, FrameworkId)>,
    /// Offers the frameworks hold, as they heard of them.
    offers: Vec<(ConnId, FrameworkId, Offer)>,
    running: Vec<(ConnId, FrameworkId, String)>,
    next_task: u64,
}

fn pick<T>(v: &[T], i: usize) -> Option<&T> {
    if v.is_empty() {
        None
    } else {
        v.get(i % v.len())
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    let mut w = World::default();
    for (step, op) in ops.into_iter().enumerate() {
        let now = h.now;
        match op {
            Op::Agent { cpus, mem, reserve } => {
                let conn = h.conn();
                let mut resources = vec![
                    Resource::scalar(CPUS, f64::from(cpus)),
                    Resource::scalar(MEM, 256.0 * f64::from(mem)),
                    Resource::ranges(PORTS, [(31000, 31009)]),
                ];
                if let Some(r) = reserve {
                    resources.push(Resource {
                        role: ROLES[r].to_owned(),
                        ..Resource::scalar(CPUS, 1.0)
                    });
                }
                let id = h
                    .core
                    .agent_register(
                        now,
                        conn,
                        agent_message::Register {
                            info: Some(strata_proto::AgentInfo {
                                resources,
                                ..Default::default()
                            }),
                            tasks: vec![],
                        },
                    )
                    .expect("registered");
                w.agents.push((conn, id.0, true));
            }
            Op::Framework { roles } => {
                let conn = h.conn();
                let fid = h
                    .core
                    .framework_subscribe(
                        now,
                        conn,
                        FrameworkInfo {
                            roles: roles.iter().map(|r| ROLES[*r].to_owned()).collect(),
                            failover_timeout_seconds: 1.0,
                            ..FrameworkInfo::default()
                        },
                    )
                    .expect("subscribed");
                w.frameworks.push((conn, fid));
            }
            Op::Launch {
                offer,
                tasks,
                cpus,
                mem,
            } => {
                if !w.offers.is_empty() {
                    let (fconn, fid, o) = w.offers.remove(offer % w.offers.len());
                    let list = (0..tasks)
                        .map(|_| {
                            w.next_task += 1;
                            task(
                                &format!("t{}", w.next_task),
                                0.5 * f64::from(cpus),
                                64.0 * f64::from(mem),
                            )
                        })
                        .collect();
                    // Valid or rejected, the ACCEPT uses the offer up.
                    h.core
                        .framework_call(now, fconn, launch_call(&fid, &[&o.id], list));
                }
            }
            Op::Decline { offer, refuse } => {
                if !w.offers.is_empty() {
                    let (fconn, fid, o) = w.offers.remove(offer % w.offers.len());
                    h.core.framework_call(
                        now,
                        fconn,
                        simple_call(
                            &fid,
                            call::Call::Decline(call::Decline {
                                offer_ids: vec![o.id],
                                filters: Some(Filters {
                                    refuse_seconds: Some(f64::from(refuse)),
                                }),
                            }),
                        ),
                    );
                }
            }
            Op::Update { task, state } => {
                if !w.running.is_empty() {
                    let (aconn, fid, id) = w.running.remove(task % w.running.len());
                    let state = [TaskState::Running, TaskState::Finished, TaskState::Failed]
                        [usize::from(state)];
                    if !state.is_terminal() {
                        w.running.push((aconn, fid.clone(), id.clone()));
                    }
                    h.core
                        .agent_status_update(now, aconn, status(&fid, &id, state, 1));
                }
            }
            Op::ToggleAgent { agent } => {
                if !w.agents.is_empty() {
                    let i = agent % w.agents.len();
                    let (conn, id, connected) = w.agents[i].clone();
                    if connected {
                        h.core.agent_disconnected(now, conn);
                        w.agents[i].2 = false;
                    } else {
                        let conn = h.conn();
                        h.core
                            .agent_register(
                                now,
                                conn,
                                agent_message::Register {
                                    info: Some(strata_proto::AgentInfo {
                                        id: id.clone(),
                                        resources: vec![
                                            Resource::scalar(CPUS, 4.0),
                                            Resource::scalar(MEM, 1024.0),
                                        ],
                                        ..Default::default()
                                    }),
                                    tasks: vec![],
                                },
                            )
                            .expect("re-registered");
                        w.agents[i] = (conn, id, true);
                    }
                }
            }
            Op::Advance { ms } => {
                h.advance(Duration::from_millis(u64::from(ms)));
                let now = h.now;
                h.core.tick(now);
            }
            Op::FrameworkGone { framework } => {
                if !w.frameworks.is_empty() {
                    let (conn, _) = w.frameworks.remove(framework % w.frameworks.len());
                    h.core.framework_disconnected(now, conn);
                }
            }
            Op::Suppress { framework, role } => {
                if let Some((conn, fid)) = pick(&w.frameworks, framework).cloned() {
                    h.core.framework_call(
                        now,
                        conn,
                        simple_call(
                            &fid,
                            call::Call::Suppress(call::Suppress {
                                roles: vec![ROLES[role].to_owned()],
                            }),
                        ),
                    );
                }
            }
            Op::Revive { framework } => {
                if let Some((conn, fid)) = pick(&w.frameworks, framework).cloned() {
                    h.core.framework_call(
                        now,
                        conn,
                        simple_call(&fid, call::Call::Revive(call::Revive { roles: vec![] })),
                    );
                }
            }
            Op::Quota {
                role,
                guarantee,
                limit,
            } => {
                let limit = guarantee + limit;
                let _ = h.core.set_quota(
                    ROLES[role],
                    Quota {
                        guarantee: Resources::scalar_milli(CPUS, i64::from(guarantee) * 1000),
                        limit: {
                            let mut l = Limits::new();
                            l.set(CPUS, i64::from(limit) * 1000);
                            l
                        },
                    },
                );
            }
            Op::Weight { role, weight } => {
                h.core
                    .set_weights(&BTreeMap::from([(
                        ROLES[role].to_owned(),
                        f64::from(weight),
                    )]))
                    .expect("valid weight");
            }
            Op::Reserve {
                agent,
                role,
                cpus,
                undo,
            } => {
                if let Some((_, id, _)) = pick(&w.agents, agent).cloned() {
                    // Refusals (not enough free) are fine; they must change nothing.
                    let _ = h.core.operator_reserve(
                        &id,
                        &[Resource {
                            role: ROLES[role].to_owned(),
                            ..Resource::scalar(CPUS, f64::from(cpus))
                        }],
                        !undo,
                    );
                }
            }
            Op::Mode { agent, mode } => {
                if let Some((_, id, _)) = pick(&w.agents, agent).cloned() {
                    let _ = match mode {
                        0 => h.core.drain_agent(now, &id, None),
                        1 => h.core.deactivate_agent(&id),
                        _ => h.core.reactivate_agent(&id),
                    };
                }
            }
        }
        let now = h.now;
        h.core.allocate(now);
        let cmds = h.core.take_commands();
        track(&mut w, cmds.into_iter().map(Command::into_wire).collect());
        if let Err(e) = h.core.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step}: {e}")));
        }
        no_double_offers(&h, &w).map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
    }
    Ok(())
}

/// Follows offers, rescinds and launches in the commands.
fn track(w: &mut World, cmds: Vec<Command>) {
    for c in cmds {
        match c {
            Command::ToFramework {
                conn,
                event: event::Event::Offers(o),
            } => {
                if let Some((_, fid)) = w.frameworks.iter().find(|(c, _)| *c == conn) {
                    for offer in o.offers {
                        w.offers.push((conn, fid.clone(), offer));
                    }
                }
            }
            Command::ToFramework {
                event: event::Event::Rescind(r),
                ..
            } => w.offers.retain(|(_, _, o)| o.id != r.offer_id),
            Command::ToAgent {
                conn,
                message: allocator_message::Message::LaunchTask(l),
            } => {
                let t = l.task.expect("task");
                w.running
                    .push((conn, FrameworkId(l.framework_id), t.task_id));
            }
            _ => {}
        }
    }
    // Offers of frameworks that went away are gone silently.
    let frameworks = &w.frameworks;
    w.offers
        .retain(|(c, _, _)| frameworks.iter().any(|(fc, _)| fc == c));
}

/// The offers frameworks hold never share a resource: per agent they fit in what is not
/// allocated, and their ports never overlap.
fn no_double_offers(h: &Harness, w: &World) -> Result<(), String> {
    let mut by_agent: BTreeMap<&str, Vec<Resources>> = BTreeMap::new();
    for (_, _, o) in &w.offers {
        let r = Resources::from_proto(&o.resources).map_err(|e| e.to_string())?;
        by_agent.entry(o.agent_id.as_str()).or_default().push(r);
    }
    let agents = h.core.agent_summaries();
    for (agent_id, offers) in by_agent {
        let a = agents
            .iter()
            .find(|a| a.id == agent_id)
            .ok_or_else(|| format!("offer on unknown agent {agent_id}"))?;
        let total = Resources::from_proto(&a.total).map_err(|e| e.to_string())?;
        let allocated = Resources::from_proto(&a.allocated).map_err(|e| e.to_string())?;
        let mut sum = Resources::new();
        for r in &offers {
            if !sum.items_disjoint(r) || !allocated.items_disjoint(r) {
                return Err(format!("agent {agent_id}: {r} offered twice"));
            }
            sum.add(r);
        }
        if !total.contains(&allocated.plus(&sum)) {
            return Err(format!(
                "agent {agent_id}: offers {sum} + allocated {allocated} exceed total {total}"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn books_hold_and_nothing_is_offered_twice(ops in proptest::collection::vec(op(), 1..150)) {
        run(ops)?;
    }
}
