//! The protobuf messages the allocator and the agent accept, decoded from bytes and run through
//! what is pure on each side.
//!
//! The input is a sequence of `selector byte, length-delimited message`. The selector names the
//! message (an agent's `AgentMessage`, a framework's `Call`, an operator request, an
//! `AllocatorMessage` as the agent receives it, or a clock tick / stream end) and, in its high
//! bits, which of a few streams sent it. Allocator-side messages drive one allocator core the
//! way its gRPC edge does (`allocator/src/api`), and its books are checked after every step
//! (`Core::check_invariants`). Every decoded message must re-encode to bytes that decode and
//! re-encode the same. For `AllocatorMessage`s: ids the shared id rule accepts must name a
//! path below the agent's directories (no traversal).

#![no_main]

use std::path::{Component, Path};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strata_allocator_core::{AllocatorConfig, Command, ConnId, Core};
use strata_proto::{
    AgentMessage, AllocatorMessage, Call, DeactivateAgentRequest, DrainAgentRequest,
    ListTasksRequest, ReactivateAgentRequest, ReserveRequest, SetQuotaRequest, SetWeightsRequest,
    TeardownFrameworkRequest, UnreserveRequest, agent_message, allocator_message, call,
};

fn config() -> AllocatorConfig {
    AllocatorConfig {
        agent_heartbeat_interval: Duration::from_secs(5),
        agent_timeout: Duration::from_secs(15),
        agent_reconnect_timeout: Duration::from_secs(5),
        agent_reregister_timeout: Duration::from_secs(600),
        framework_heartbeat_interval: Duration::from_secs(15),
        allocation_interval: Duration::from_secs(1),
        default_refuse: Duration::from_secs(5),
        terminal_task_history: 20,
        offer_timeout: Some(Duration::from_secs(30)),
        ..AllocatorConfig::default()
    }
}

/// Decodes the next length-delimited `M`, re-encodes it and checks the round trip.
fn next<M: Message + Default>(data: &mut &[u8]) -> Option<M> {
    let m = M::decode_length_delimited(&mut *data).ok()?;
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("a message we encoded decodes");
    // Lengths, not bytes: map fields (labels) encode in hash order.
    assert_eq!(
        back.encoded_len(),
        bytes.len(),
        "re-encoding changed the length"
    );
    Some(m)
}

fn check(core: &Core) {
    if let Err(e) = core.check_invariants() {
        panic!("invariant broken: {e}");
    }
}

/// What the agent does with ids before they become paths: an id the rule accepts is one
/// plain path component.
fn check_ids(framework_id: &str, task_id: &str) {
    let ok = strata_proto::ids::check_id("framework id", framework_id).is_ok()
        && strata_proto::ids::check_id("task id", task_id).is_ok();
    if !ok {
        return;
    }
    let rel = strata_agent::cgroup::task_rel(framework_id, task_id)
        .expect("ids the id rule accepts make a cgroup name");
    let run = strata_agent::containerizer::run_dir(Path::new(""), framework_id, task_id)
        .expect("ids the id rule accepts make a run dir");
    for path in [rel.as_path(), run.as_path()] {
        assert_eq!(path.components().count(), 3, "{path:?}");
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{path:?} leaves its directory"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut core = Core::new(config(), "f");
    let mut now = Duration::from_secs(1000);
    let mut data = data;
    let mut steps = 0;
    while let Some((&selector, rest)) = data.split_first() {
        data = rest;
        steps += 1;
        if steps > 64 {
            break;
        }
        // Agents on streams 1..=3, frameworks on 11..=13.
        let lane = u64::from(selector >> 5) % 3;
        let agent = ConnId(1 + lane);
        let framework = ConnId(11 + lane);
        match selector & 0x1f {
            0 => {
                let Some(m) = next::<AgentMessage>(&mut data) else {
                    break;
                };
                match m.message {
                    Some(agent_message::Message::Register(r)) => {
                        let _ = core.agent_register(now, agent, r);
                    }
                    Some(agent_message::Message::Heartbeat(_)) => core.agent_heartbeat(now, agent),
                    Some(agent_message::Message::StatusUpdate(u)) => {
                        if let Some(status) = u.status {
                            core.agent_status_update(now, agent, status);
                        }
                    }
                    // Usage never enters the core.
                    Some(agent_message::Message::Usage(_)) | None => {}
                }
            }
            1 => {
                let Some(c) = next::<Call>(&mut data) else {
                    break;
                };
                match c.call {
                    Some(call::Call::Subscribe(s)) => {
                        let _ = core.framework_subscribe(
                            now,
                            framework,
                            s.framework_info.unwrap_or_default(),
                        );
                    }
                    _ => core.framework_call(now, framework, c),
                }
            }
            2 => {
                let Some(r) = next::<SetWeightsRequest>(&mut data) else {
                    break;
                };
                let _ = core.set_weights(&r.weights.into_iter().collect());
            }
            3 => {
                let Some(r) = next::<SetQuotaRequest>(&mut data) else {
                    break;
                };
                let info = r.quota.unwrap_or_default();
                if let Ok(quota) = Core::quota_from_proto(&info) {
                    let _ = core.set_quota(&info.role, quota);
                }
            }
            4 => {
                let Some(r) = next::<ReserveRequest>(&mut data) else {
                    break;
                };
                let _ = core.operator_reserve(&r.agent_id, &r.resources, true);
            }
            5 => {
                let Some(r) = next::<UnreserveRequest>(&mut data) else {
                    break;
                };
                let _ = core.operator_reserve(&r.agent_id, &r.resources, false);
            }
            6 => {
                let Some(r) = next::<DrainAgentRequest>(&mut data) else {
                    break;
                };
                let _ = core.drain_agent(now, &r.agent_id, r.grace_period_seconds);
            }
            7 => {
                let Some(r) = next::<DeactivateAgentRequest>(&mut data) else {
                    break;
                };
                let _ = core.deactivate_agent(&r.agent_id);
            }
            8 => {
                let Some(r) = next::<ReactivateAgentRequest>(&mut data) else {
                    break;
                };
                let _ = core.reactivate_agent(&r.agent_id);
            }
            9 => {
                let Some(r) = next::<TeardownFrameworkRequest>(&mut data) else {
                    break;
                };
                let _ = core.teardown_framework(now, &r.framework_id);
            }
            10 => {
                let Some(r) = next::<ListTasksRequest>(&mut data) else {
                    break;
                };
                let _ = core.task_summaries(&r);
            }
            11 => {
                let Some(m) = next::<AllocatorMessage>(&mut data) else {
                    break;
                };
                match m.message {
                    Some(allocator_message::Message::LaunchTask(l)) => {
                        check_ids(&l.framework_id, &l.task.unwrap_or_default().task_id);
                    }
                    Some(allocator_message::Message::KillTask(k)) => {
                        check_ids(&k.framework_id, &k.task_id);
                    }
                    Some(allocator_message::Message::Acknowledge(a)) => {
                        check_ids(&a.framework_id, &a.task_id);
                    }
                    _ => {}
                }
            }
            12 => {
                now += Duration::from_millis(u64::from(selector >> 5) * 4000 + 500);
                core.tick(now);
            }
            13 => core.agent_disconnected(now, agent),
            14 => core.framework_disconnected(now, framework),
            _ => {
                let _ = core.agent_summaries();
                let _ = core.framework_summaries();
                let _ = core.role_summaries();
                let _ = core.reservation_summaries();
                let _ = core.quota_infos();
            }
        }
        check(&core);
        for command in core.take_commands() {
            if let Command::ToFramework { event, .. } = command.into_wire() {
                let _ = strata_allocator::mesos::convert::event_json(&event);
            }
        }
    }
});
