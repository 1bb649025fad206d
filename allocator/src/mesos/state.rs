//! `GET /master/state` (and `/state`) and `GET /version` in Mesos 1.11's JSON shape, built
//! from the allocator's operator state, for the tools and dashboards that read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};
use strata_proto::{
    AgentMode, AgentState, AgentSummary, GetStateResponse, Resource, ResourceKind, TaskState,
};

use super::convert::state_name;

/// The Mesos version the adapter speaks.
pub const MESOS_VERSION: &str = "1.11.0";

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "version": MESOS_VERSION,
        "git_tag": MESOS_VERSION,
        "build_date": "",
        "build_time": 0.0,
        "build_user": "strata",
        "strata_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Whether the agent is connected and offered as usual (what Mesos calls active): not
/// unreachable, not drained, not deactivated.
fn offered_as_usual(agent: &AgentSummary) -> bool {
    agent.state() == AgentState::Active
        && matches!(agent.mode(), AgentMode::Active | AgentMode::Unspecified)
}

/// Resources as Mesos' state summaries write them: `{"cpus": 2.0, "ports": "[1-2]"}`.
fn summary(resources: &[Resource]) -> Value {
    let mut scalars: BTreeMap<String, f64> = BTreeMap::new();
    let mut others: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in ["cpus", "mem", "disk", "gpus"] {
        scalars.insert(name.to_owned(), 0.0);
    }
    for r in resources {
        match r.kind() {
            ResourceKind::Scalar | ResourceKind::Unspecified => {
                *scalars.entry(r.name.clone()).or_default() += r.scalar;
            }
            ResourceKind::Ranges => others
                .entry(r.name.clone())
                .or_default()
                .extend(r.ranges.iter().map(|x| format!("{}-{}", x.begin, x.end))),
            ResourceKind::Set => others
                .entry(r.name.clone())
                .or_default()
                .extend(r.set.iter().cloned()),
        }
    }
    let mut out = serde_json::Map::new();
    for (k, v) in scalars {
        out.insert(k, json!((v * 1000.0).round() / 1000.0));
    }
    for (k, v) in others {
        out.insert(k, json!(format!("[{}]", v.join(", "))));
    }
    Value::Object(out)
}

/// `MasterInfo`, sent in SUBSCRIBED (`ip` is the IPv4 address as Mesos packs it: the
/// network-order bytes read as a little-endian integer).
pub fn master_info(addr: SocketAddr) -> Value {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => u32::from_le_bytes(v4.octets()),
        std::net::IpAddr::V6(_) => 0,
    };
    json!({
        "id": format!("strata-{addr}"),
        "ip": ip,
        "port": addr.port(),
        "pid": pid(addr),
        "hostname": addr.ip().to_string(),
        "version": MESOS_VERSION,
        "address": { "ip": addr.ip().to_string(), "hostname": addr.ip().to_string(), "port": addr.port() },
    })
}

fn pid(addr: SocketAddr) -> String {
    format!("master@{addr}")
}

/// `GET /master/state`. `addr` is where the HTTP API listens.
pub fn master_state(state: &GetStateResponse, addr: SocketAddr, leading: bool) -> Value {
    let slaves: Vec<Value> = state
        .agents
        .iter()
        .map(|a| {
            let attributes: serde_json::Map<String, Value> = a
                .attributes
                .iter()
                .map(|x| (x.name.clone(), json!(x.value)))
                .collect();
            json!({
                "id": a.id,
                "pid": format!("slave(1)@{}", if a.endpoint.is_empty() { &a.hostname } else { &a.endpoint }),
                "hostname": a.hostname,
                "registered_time": a.registered_at,
                "resources": summary(&a.total),
                "used_resources": summary(&a.allocated),
                "offered_resources": summary(&a.offered),
                "attributes": attributes,
                // As Mesos: an agent drained or deactivated by an operator is not active.
                "active": offered_as_usual(a),
                "version": a.version,
            })
        })
        .collect();
    let mut tasks_by_framework: BTreeMap<&str, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for t in &state.tasks {
        let terminal = matches!(
            t.state(),
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Dropped
                | TaskState::Gone
        );
        let task = json!({
            "id": t.task_id,
            "name": t.name,
            "framework_id": t.framework_id,
            "executor_id": "",
            "slave_id": t.agent_id,
            "state": state_name(t.state()),
            "resources": summary(&t.resources),
            "statuses": [{ "state": state_name(t.state()), "timestamp": t.updated_at }],
        });
        let entry = tasks_by_framework.entry(&t.framework_id).or_default();
        if terminal {
            entry.1.push(task);
        } else {
            entry.0.push(task);
        }
    }
    let frameworks: Vec<Value> = state
        .frameworks
        .iter()
        .map(|f| {
            let (tasks, completed) = tasks_by_framework.remove(f.id.as_str()).unwrap_or_default();
            json!({
                "id": f.id,
                "name": f.name,
                "role": f.roles.first().cloned().unwrap_or_else(|| "*".to_owned()),
                "roles": f.roles,
                "active": f.connected,
                "connected": f.connected,
                "recovered": false,
                "registered_time": f.registered_at,
                "used_resources": summary(&f.allocated),
                "offered_resources": summary(&f.offered),
                "tasks": tasks,
                "completed_tasks": completed,
                "offers": [],
                "executors": [],
            })
        })
        .collect();
    let mut out = json!({
        "version": MESOS_VERSION,
        "strata_version": state.allocator_version,
        "id": format!("strata-{addr}"),
        "pid": pid(addr),
        "hostname": addr.ip().to_string(),
        "start_time": state.started_at,
        "elected_time": state.started_at,
        "activated_slaves": state.agents.iter().filter(|a| offered_as_usual(a)).count(),
        "deactivated_slaves": state.agents.iter().filter(|a| !offered_as_usual(a)).count(),
        "slaves": slaves,
        "frameworks": frameworks,
        "completed_frameworks": [],
        "unregistered_frameworks": [],
        "orphan_tasks": [],
    });
    if leading {
        out["leader"] = json!(pid(addr));
        out["leader_info"] = json!({
            "id": format!("strata-{addr}"),
            "hostname": addr.ip().to_string(),
            "port": addr.port(),
            "pid": pid(addr),
            "version": MESOS_VERSION,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_add_scalars_and_print_ranges() {
        let mut ports = Resource::scalar("ports", 0.0);
        ports.kind = ResourceKind::Ranges as i32;
        ports.ranges = vec![strata_proto::ValueRange {
            begin: 31000,
            end: 31010,
        }];
        let s = summary(&[
            Resource::scalar("cpus", 1.5),
            Resource::scalar("cpus", 0.25),
            ports,
        ]);
        assert_eq!(s["cpus"], 1.75);
        assert_eq!(s["mem"], 0.0);
        assert_eq!(s["ports"], "[31000-31010]");
    }

    #[test]
    fn drained_and_deactivated_agents_are_not_active() {
        let agent = |id: &str, state: AgentState, mode: AgentMode| AgentSummary {
            id: id.to_owned(),
            state: state as i32,
            mode: mode as i32,
            ..AgentSummary::default()
        };
        let state = GetStateResponse {
            agents: vec![
                agent("a", AgentState::Active, AgentMode::Active),
                agent("b", AgentState::Active, AgentMode::Draining),
                agent("c", AgentState::Active, AgentMode::Deactivated),
                agent("d", AgentState::Unreachable, AgentMode::Active),
            ],
            ..GetStateResponse::default()
        };
        let json = master_state(&state, "127.0.0.1:5050".parse().unwrap(), true);
        let active: Vec<bool> = json["slaves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["active"].as_bool().unwrap())
            .collect();
        assert_eq!(active, [true, false, false, false]);
        assert_eq!(json["activated_slaves"], 1);
        assert_eq!(json["deactivated_slaves"], 3);
    }
}
