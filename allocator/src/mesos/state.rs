//! `GET /master/state` (and `/state`) and `GET /version` in Mesos 1.11's JSON shape, built
//! from the allocator's operator state, for the tools and dashboards that read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};
use strata_proto::{
    AgentMode, AgentState, AgentSummary, FrameworkSummary, GetStateResponse, Resource,
    ResourceKind, TaskState,
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
pub(super) fn offered_as_usual(agent: &AgentSummary) -> bool {
    agent.state() == AgentState::Active && !deactivated(agent)
}

/// Whether an operator drained or deactivated the agent (Mesos' `deactivated`).
pub(super) fn deactivated(agent: &AgentSummary) -> bool {
    matches!(agent.mode(), AgentMode::Draining | AgentMode::Deactivated)
}

/// The agent's libprocess-style pid, as Mesos' views name agents.
pub(super) fn agent_pid(agent: &AgentSummary) -> String {
    let at = if agent.endpoint.is_empty() {
        &agent.hostname
    } else {
        &agent.endpoint
    };
    format!("slave(1)@{at}")
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

/// The agents as Mesos' `slaves` (`/master/state`, `/master/slaves`), with their reserved
/// resources by role.
fn slaves(state: &GetStateResponse) -> Vec<Value> {
    state
        .agents
        .iter()
        .map(|a| {
            let attributes: serde_json::Map<String, Value> = a
                .attributes
                .iter()
                .map(|x| (x.name.clone(), json!(x.value)))
                .collect();
            let mut reserved: BTreeMap<&str, Vec<Resource>> = BTreeMap::new();
            for r in state.reservations.iter().filter(|r| r.agent_id == a.id) {
                reserved
                    .entry(r.role.as_str())
                    .or_default()
                    .extend(r.resources.iter().cloned());
            }
            let reserved: serde_json::Map<String, Value> = reserved
                .into_iter()
                .map(|(role, resources)| (role.to_owned(), summary(&resources)))
                .collect();
            json!({
                "id": a.id,
                "pid": agent_pid(a),
                "hostname": a.hostname,
                "registered_time": a.registered_at,
                "resources": summary(&a.total),
                "used_resources": summary(&a.allocated),
                "offered_resources": summary(&a.offered),
                "reserved_resources": reserved,
                "unreserved_resources": summary(&a.total.iter().filter(|r| r.role.is_empty() || r.role == "*").cloned().collect::<Vec<_>>()),
                "attributes": attributes,
                // As Mesos: an agent drained or deactivated by an operator is not active.
                "active": offered_as_usual(a),
                "deactivated": deactivated(a),
                "version": a.version,
            })
        })
        .collect()
}

/// A task as Mesos' views write it.
fn task_json(t: &strata_proto::TaskSummary) -> Value {
    json!({
        "id": t.task_id,
        "name": t.name,
        "framework_id": t.framework_id,
        "executor_id": "",
        "slave_id": t.agent_id,
        "state": state_name(t.state()),
        "resources": summary(&t.resources),
        "statuses": [{ "state": state_name(t.state()), "timestamp": t.updated_at }],
    })
}

/// The frameworks as Mesos' `frameworks` (`/master/state`, `/master/frameworks`), each with
/// its tasks and completed tasks.
fn frameworks(state: &GetStateResponse) -> Vec<Value> {
    let mut tasks_by_framework: BTreeMap<&str, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for t in &state.tasks {
        let entry = tasks_by_framework.entry(&t.framework_id).or_default();
        if t.state().is_terminal() {
            entry.1.push(task_json(t));
        } else {
            entry.0.push(task_json(t));
        }
    }
    state
        .frameworks
        .iter()
        .map(|f| {
            let (tasks, completed) = tasks_by_framework.remove(f.id.as_str()).unwrap_or_default();
            framework_json(f, tasks, completed)
        })
        .collect()
}

/// A framework as Mesos' views write it, with its tasks.
fn framework_json(f: &FrameworkSummary, tasks: Vec<Value>, completed: Vec<Value>) -> Value {
    let mut resources = f.allocated.clone();
    resources.extend(f.offered.iter().cloned());
    let mut out = json!({
        "id": f.id,
        "name": f.name,
        "user": f.user,
        "principal": f.principal,
        "webui_url": f.webui_url,
        "role": f.roles.first().cloned().unwrap_or_else(|| "*".to_owned()),
        "roles": f.roles,
        "active": f.connected,
        "connected": f.connected,
        "recovered": false,
        "registered_time": f.registered_at,
        "resources": summary(&resources),
        "used_resources": summary(&f.allocated),
        "offered_resources": summary(&f.offered),
        "tasks": tasks,
        "completed_tasks": completed,
        "offers": [],
        "executors": [],
    });
    if f.unregistered_at > 0.0 {
        out["unregistered_time"] = json!(f.unregistered_at);
    }
    out
}

/// The frameworks removed lately, as Mesos' `completed_frameworks`.
fn completed_frameworks(state: &GetStateResponse) -> Vec<Value> {
    state
        .completed_frameworks
        .iter()
        .map(|f| framework_json(f, Vec::new(), Vec::new()))
        .collect()
}

/// The allocator's settings as Mesos' `flags` (strings; durations in seconds, as
/// `15secs`), for the tools that show them.
pub fn flags(config: &strata_allocator_core::AllocatorConfig) -> Value {
    let secs = |d: std::time::Duration| format!("{}secs", d.as_secs_f64());
    json!({
        "agent_ping_timeout": secs(config.agent_heartbeat_interval),
        "agent_timeout": secs(config.agent_timeout),
        "agent_reconnect_timeout": secs(config.agent_reconnect_timeout),
        "allocation_interval": secs(config.allocation_interval),
        "framework_heartbeat_interval": secs(config.framework_heartbeat_interval),
        "default_refuse_seconds": secs(config.default_refuse),
        "offer_timeout": config.offer_timeout.map_or_else(|| "none".to_owned(), secs),
        "max_completed_tasks": config.terminal_task_history.to_string(),
        "max_completed_frameworks": strata_allocator_core::MAX_COMPLETED_FRAMEWORKS.to_string(),
        "max_frameworks": config.max_frameworks.to_string(),
        "max_frameworks_per_principal": config.max_frameworks_per_principal.to_string(),
        "authenticate_frameworks": config.policy.enforced().to_string(),
        "authenticate_agents": config.policy.enforced().to_string(),
        "authenticate_http_readonly": config.policy.enforced().to_string(),
        "authenticate_http_readwrite": config.policy.enforced().to_string(),
    })
}

/// `GET /master/state`: the whole state in Mesos' shape.
pub fn master_state(
    state: &GetStateResponse,
    addr: SocketAddr,
    leading: bool,
    flags: &Value,
) -> Value {
    let mut out = json!({
        "flags": flags,
        "version": MESOS_VERSION,
        "strata_version": state.allocator_version,
        "id": format!("strata-{addr}"),
        "pid": pid(addr),
        "hostname": addr.ip().to_string(),
        "start_time": state.started_at,
        "elected_time": state.started_at,
        "activated_slaves": state.agents.iter().filter(|a| offered_as_usual(a)).count(),
        "deactivated_slaves": state.agents.iter().filter(|a| !offered_as_usual(a)).count(),
        "slaves": slaves(state),
        "frameworks": frameworks(state),
        "completed_frameworks": completed_frameworks(state),
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

/// `GET /master/slaves`.
pub fn master_slaves(state: &GetStateResponse) -> Value {
    json!({ "slaves": slaves(state), "recovered_slaves": [] })
}

/// `GET /master/frameworks`.
pub fn master_frameworks(state: &GetStateResponse) -> Value {
    json!({
        "frameworks": frameworks(state),
        "completed_frameworks": completed_frameworks(state),
        "unregistered_frameworks": [],
    })
}

/// The most tasks `/master/tasks` lists by default, as Mesos.
pub const DEFAULT_TASKS_LIMIT: usize = 100;

/// `GET /master/tasks?limit=N&offset=M&order=asc|des`: tasks by launch time (`des`, the
/// default, newest first), as Mesos pages them.
pub fn master_tasks(
    state: &GetStateResponse,
    limit: usize,
    offset: usize,
    ascending: bool,
) -> Value {
    let mut tasks: Vec<&strata_proto::TaskSummary> = state.tasks.iter().collect();
    tasks.sort_by(|a, b| {
        a.launched_at
            .total_cmp(&b.launched_at)
            .then_with(|| a.task_id.cmp(&b.task_id))
    });
    if !ascending {
        tasks.reverse();
    }
    let page: Vec<Value> = tasks
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(task_json)
        .collect();
    json!({ "tasks": page })
}

/// `GET /metrics/snapshot`: the master's figures under Mesos' names.
pub fn metrics_snapshot(state: &GetStateResponse, uptime_secs: f64) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |name: &str, value: f64| {
        out.insert(format!("master/{name}"), json!(value));
    };
    let count =
        |f: &dyn Fn(&AgentSummary) -> bool| state.agents.iter().filter(|a| f(a)).count() as f64;
    put("elected", 1.0);
    put("uptime_secs", uptime_secs);
    put("slaves_active", count(&|a| offered_as_usual(a)));
    put("slaves_inactive", count(&|a| !offered_as_usual(a)));
    put(
        "slaves_connected",
        count(&|a| a.state() == AgentState::Active),
    );
    put(
        "slaves_disconnected",
        count(&|a| a.state() != AgentState::Active),
    );
    let connected = state.frameworks.iter().filter(|f| f.connected).count() as f64;
    put("frameworks_active", connected);
    put("frameworks_connected", connected);
    put(
        "frameworks_disconnected",
        state.frameworks.len() as f64 - connected,
    );
    for (name, task_state) in [
        ("staging", TaskState::Staging),
        ("starting", TaskState::Starting),
        ("running", TaskState::Running),
        ("killing", TaskState::Killing),
        ("finished", TaskState::Finished),
        ("failed", TaskState::Failed),
        ("killed", TaskState::Killed),
        ("lost", TaskState::Lost),
        ("error", TaskState::Error),
        ("dropped", TaskState::Dropped),
        ("unreachable", TaskState::Unreachable),
        ("gone", TaskState::Gone),
    ] {
        let n = state
            .tasks
            .iter()
            .filter(|t| t.state() == task_state)
            .count();
        put(&format!("tasks_{name}"), n as f64);
    }
    for resource in ["cpus", "mem", "disk", "gpus"] {
        let sum = |list: &mut dyn Iterator<Item = &Resource>| {
            list.filter(|r| r.name == resource)
                .map(|r| r.scalar)
                .sum::<f64>()
        };
        let total = sum(&mut state.agents.iter().flat_map(|a| a.total.iter()));
        let used = sum(&mut state.agents.iter().flat_map(|a| a.allocated.iter()));
        put(&format!("{resource}_total"), total);
        put(&format!("{resource}_used"), used);
        put(
            &format!("{resource}_percent"),
            if total > 0.0 { used / total } else { 0.0 },
        );
    }
    Value::Object(out)
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
    fn tasks_are_paged_newest_first_unless_asked() {
        let task = |id: &str, launched_at: f64| strata_proto::TaskSummary {
            task_id: id.to_owned(),
            launched_at,
            ..strata_proto::TaskSummary::default()
        };
        let state = GetStateResponse {
            tasks: vec![task("b", 2.0), task("a", 1.0), task("c", 3.0)],
            ..GetStateResponse::default()
        };
        let ids = |v: Value| -> Vec<String> {
            v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(master_tasks(&state, 100, 0, false)), ["c", "b", "a"]);
        assert_eq!(ids(master_tasks(&state, 100, 0, true)), ["a", "b", "c"]);
        assert_eq!(ids(master_tasks(&state, 1, 1, true)), ["b"]);
        assert!(ids(master_tasks(&state, 10, 5, true)).is_empty());
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
        let json = master_state(&state, "127.0.0.1:5050".parse().unwrap(), true, &json!({}));
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
