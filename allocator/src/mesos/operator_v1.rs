//! Mesos' v1 operator API, `POST /api/v1` with a JSON call, on the Mesos HTTP port: the read
//! calls that tools and dashboards make (GET_HEALTH, GET_VERSION, GET_STATE, GET_AGENTS,
//! GET_FRAMEWORKS, GET_TASKS, GET_ROLES, GET_QUOTA), the event stream (SUBSCRIBE) and the
//! quota, weight and maintenance calls (UPDATE_QUOTA, UPDATE_WEIGHTS, DRAIN_AGENT,
//! DEACTIVATE_AGENT, REACTIVATE_AGENT, TEARDOWN), each authorized as the same action of the
//! gRPC OperatorService. Answers are in Mesos 1.11's JSON shape (ids as `{"value": ...}`,
//! times as `{"nanoseconds": ...}`). The other calls are refused with a 400 that says what
//! is supported.
//!
//! SUBSCRIBE answers a RecordIO stream of JSON events ([`subscribed`], then [`change`] for
//! each change of the cluster the core records, [`strata_allocator_core::Change`], and
//! HEARTBEAT): SUBSCRIBED holds what GET_STATE answers; then TASK_ADDED, TASK_UPDATED,
//! AGENT_ADDED, AGENT_REMOVED, FRAMEWORK_ADDED, FRAMEWORK_UPDATED and FRAMEWORK_REMOVED, with
//! the task, agent and framework objects GET_STATE shows.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use strata_allocator_core::{Action, Change};
use strata_proto::{
    AgentSummary, FrameworkSummary, GetStateResponse, QuotaInfo, Resource, TaskSummary,
};

use super::convert::{resource_json, state_name, status};
use super::state::{MESOS_VERSION, agent_pid, deactivated, offered_as_usual};

/// The calls this API answers.
pub const SUPPORTED: [&str; 15] = [
    "GET_HEALTH",
    "GET_VERSION",
    "GET_STATE",
    "GET_AGENTS",
    "GET_FRAMEWORKS",
    "GET_TASKS",
    "GET_ROLES",
    "GET_QUOTA",
    "SUBSCRIBE",
    "UPDATE_QUOTA",
    "UPDATE_WEIGHTS",
    "DRAIN_AGENT",
    "DEACTIVATE_AGENT",
    "REACTIVATE_AGENT",
    "TEARDOWN",
];

/// Why an operator call could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorCallError {
    /// No `type`, or one this API does not answer.
    #[error("unsupported operator call {kind:?}: Strata answers {supported}")]
    Unsupported {
        /// The `type` given.
        kind: String,
        /// The supported types.
        supported: String,
    },
    /// A field is missing or invalid.
    #[error("invalid {kind} call: {why}")]
    Invalid {
        /// The call.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// An operator call, read from its JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum OperatorCall {
    /// GET_HEALTH.
    Health,
    /// GET_VERSION.
    Version,
    /// GET_STATE, GET_AGENTS, GET_FRAMEWORKS or GET_TASKS: answered from the state.
    State(StateView),
    /// GET_ROLES.
    Roles,
    /// GET_QUOTA.
    Quota,
    /// SUBSCRIBE: the event stream.
    Subscribe,
    /// UPDATE_QUOTA: each role's guarantee and limit.
    UpdateQuota(Vec<QuotaInfo>),
    /// UPDATE_WEIGHTS.
    UpdateWeights(BTreeMap<String, f64>),
    /// DRAIN_AGENT with its grace period in seconds.
    DrainAgent(String, Option<f64>),
    /// DEACTIVATE_AGENT.
    DeactivateAgent(String),
    /// REACTIVATE_AGENT.
    ReactivateAgent(String),
    /// TEARDOWN of a framework.
    Teardown(String),
}

/// Which view of the state a GET call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateView {
    /// GET_STATE: all of them.
    All,
    /// GET_AGENTS.
    Agents,
    /// GET_FRAMEWORKS.
    Frameworks,
    /// GET_TASKS.
    Tasks,
}

impl OperatorCall {
    /// The action it needs (`None`: anyone may call it).
    pub fn action(&self) -> Option<Action> {
        match self {
            Self::Health | Self::Version => None,
            Self::State(_) | Self::Roles | Self::Quota | Self::Subscribe => {
                Some(Action::ViewFrameworks)
            }
            Self::UpdateQuota(_) => Some(Action::SetQuota),
            Self::UpdateWeights(_) => Some(Action::UpdateWeights),
            Self::DrainAgent(..) | Self::DeactivateAgent(_) | Self::ReactivateAgent(_) => {
                Some(Action::DrainAgents)
            }
            Self::Teardown(_) => Some(Action::TeardownFrameworks),
        }
    }
}

/// `{"value": "..."}` at `field` of `body`.
fn id_field(body: &Value, kind: &'static str, field: &str) -> Result<String, OperatorCallError> {
    body.get(field)
        .and_then(|v| v.get("value"))
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| OperatorCallError::Invalid {
            kind,
            why: format!("{field}.value is missing"),
        })
}

/// `{"cpus": {"value": 2}, ...}` (Mesos' quota config maps) as resources.
fn scalar_map(
    value: Option<&Value>,
    kind: &'static str,
    what: &str,
) -> Result<Vec<Resource>, OperatorCallError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let map = value
        .as_object()
        .ok_or_else(|| OperatorCallError::Invalid {
            kind,
            why: format!("{what} must be an object like {{\"cpus\": {{\"value\": 2}}}}"),
        })?;
    map.iter()
        .map(|(name, v)| {
            let n = v
                .get("value")
                .and_then(Value::as_f64)
                .or_else(|| v.as_f64())
                .ok_or_else(|| OperatorCallError::Invalid {
                    kind,
                    why: format!("{what}.{name} must be {{\"value\": NUMBER}}"),
                })?;
            Ok(Resource::scalar(name, n))
        })
        .collect()
}

/// Reads a call.
pub fn parse(body: &Value) -> Result<OperatorCall, OperatorCallError> {
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
    let section = |name: &str| body.get(name).cloned().unwrap_or(Value::Null);
    Ok(match kind {
        "GET_HEALTH" => OperatorCall::Health,
        "GET_VERSION" => OperatorCall::Version,
        "GET_STATE" => OperatorCall::State(StateView::All),
        "GET_AGENTS" => OperatorCall::State(StateView::Agents),
        "GET_FRAMEWORKS" => OperatorCall::State(StateView::Frameworks),
        "GET_TASKS" => OperatorCall::State(StateView::Tasks),
        "GET_ROLES" => OperatorCall::Roles,
        "GET_QUOTA" => OperatorCall::Quota,
        "SUBSCRIBE" => OperatorCall::Subscribe,
        "UPDATE_QUOTA" => {
            const KIND: &str = "UPDATE_QUOTA";
            let configs = section("update_quota")
                .get("quota_configs")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| OperatorCallError::Invalid {
                    kind: KIND,
                    why: "update_quota.quota_configs is missing".to_owned(),
                })?;
            let mut infos = Vec::with_capacity(configs.len());
            for c in &configs {
                let role = c.get("role").and_then(Value::as_str).ok_or_else(|| {
                    OperatorCallError::Invalid {
                        kind: KIND,
                        why: "a quota config has no role".to_owned(),
                    }
                })?;
                infos.push(QuotaInfo {
                    role: role.to_owned(),
                    guarantee: scalar_map(c.get("guarantees"), KIND, "guarantees")?,
                    limit: scalar_map(c.get("limits"), KIND, "limits")?,
                });
            }
            OperatorCall::UpdateQuota(infos)
        }
        "UPDATE_WEIGHTS" => {
            const KIND: &str = "UPDATE_WEIGHTS";
            let infos = section("update_weights")
                .get("weight_infos")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| OperatorCallError::Invalid {
                    kind: KIND,
                    why: "update_weights.weight_infos is missing".to_owned(),
                })?;
            let mut weights = BTreeMap::new();
            for w in &infos {
                let role = w.get("role").and_then(Value::as_str);
                let weight = w.get("weight").and_then(Value::as_f64);
                let (Some(role), Some(weight)) = (role, weight) else {
                    return Err(OperatorCallError::Invalid {
                        kind: KIND,
                        why: "each weight info needs a role and a weight".to_owned(),
                    });
                };
                weights.insert(role.to_owned(), weight);
            }
            OperatorCall::UpdateWeights(weights)
        }
        "DRAIN_AGENT" => {
            let drain = section("drain_agent");
            let grace = drain
                .get("max_grace_period")
                .and_then(|g| g.get("nanoseconds"))
                .and_then(Value::as_f64)
                .map(|ns| ns / 1e9);
            OperatorCall::DrainAgent(id_field(&drain, "DRAIN_AGENT", "agent_id")?, grace)
        }
        "DEACTIVATE_AGENT" => OperatorCall::DeactivateAgent(id_field(
            &section("deactivate_agent"),
            "DEACTIVATE_AGENT",
            "agent_id",
        )?),
        "REACTIVATE_AGENT" => OperatorCall::ReactivateAgent(id_field(
            &section("reactivate_agent"),
            "REACTIVATE_AGENT",
            "agent_id",
        )?),
        "TEARDOWN" => {
            OperatorCall::Teardown(id_field(&section("teardown"), "TEARDOWN", "framework_id")?)
        }
        other => {
            return Err(OperatorCallError::Unsupported {
                kind: strata_proto::ids::shorten(other, 64),
                supported: SUPPORTED.join(", "),
            });
        }
    })
}

fn id(value: &str) -> Value {
    json!({ "value": value })
}

fn nanos(seconds: f64) -> Value {
    json!({ "nanoseconds": (seconds * 1e9) as i64 })
}

fn resources(list: &[Resource]) -> Vec<Value> {
    list.iter().map(resource_json).collect()
}

/// An agent as GET_AGENTS and AGENT_ADDED show it.
fn agent(a: &AgentSummary) -> Value {
    let attributes: Vec<Value> = a
        .attributes
        .iter()
        .map(|x| json!({ "name": x.name, "type": "TEXT", "text": { "value": x.value } }))
        .collect();
    json!({
        "agent_info": {
            "id": id(&a.id),
            "hostname": a.hostname,
            "resources": resources(&a.total),
            "attributes": attributes,
        },
        "active": offered_as_usual(a),
        "deactivated": deactivated(a),
        "pid": agent_pid(a),
        "version": a.version,
        "registered_time": nanos(a.registered_at),
        "total_resources": resources(&a.total),
        "allocated_resources": resources(&a.allocated),
        "offered_resources": resources(&a.offered),
    })
}

fn agents(state: &GetStateResponse) -> Value {
    let agents: Vec<Value> = state.agents.iter().map(agent).collect();
    json!({ "agents": agents, "recovered_agents": [] })
}

/// A framework's FrameworkInfo, as GET_FRAMEWORKS and FRAMEWORK_REMOVED show it.
fn framework_info(f: &FrameworkSummary) -> Value {
    json!({
        "id": id(&f.id),
        "name": f.name,
        "user": f.user,
        "roles": f.roles,
        "principal": f.principal,
        "webui_url": f.webui_url,
    })
}

/// A framework as GET_FRAMEWORKS, FRAMEWORK_ADDED and FRAMEWORK_UPDATED show it.
fn framework(f: &FrameworkSummary) -> Value {
    let mut out = json!({
        "framework_info": framework_info(f),
        "active": f.connected,
        "connected": f.connected,
        "recovered": false,
        "registered_time": nanos(f.registered_at),
        "allocated_resources": resources(&f.allocated),
        "offered_resources": resources(&f.offered),
    });
    if f.unregistered_at > 0.0 {
        out["unregistered_time"] = nanos(f.unregistered_at);
    }
    out
}

fn frameworks(state: &GetStateResponse) -> Value {
    let frameworks: Vec<Value> = state.frameworks.iter().map(framework).collect();
    let completed: Vec<Value> = state.completed_frameworks.iter().map(framework).collect();
    json!({ "frameworks": frameworks, "completed_frameworks": completed })
}

/// A task as GET_TASKS and TASK_ADDED show it.
fn task(t: &TaskSummary) -> Value {
    json!({
        "name": t.name,
        "task_id": id(&t.task_id),
        "framework_id": id(&t.framework_id),
        "agent_id": id(&t.agent_id),
        "state": state_name(t.state()),
        "resources": resources(&t.resources),
        "statuses": [{
            "task_id": id(&t.task_id),
            "state": state_name(t.state()),
            "timestamp": t.updated_at,
        }],
    })
}

fn tasks(state: &GetStateResponse) -> Value {
    let mut active = Vec::new();
    let mut completed = Vec::new();
    for t in &state.tasks {
        let task = task(t);
        if t.state().is_terminal() {
            completed.push(task);
        } else {
            active.push(task);
        }
    }
    json!({
        "tasks": active,
        "completed_tasks": completed,
        "pending_tasks": [],
        "orphan_tasks": [],
        "unreachable_tasks": [],
    })
}

/// The answer to GET_HEALTH.
pub fn health() -> Value {
    json!({ "type": "GET_HEALTH", "get_health": { "healthy": true } })
}

/// The answer to GET_VERSION.
pub fn version() -> Value {
    json!({
        "type": "GET_VERSION",
        "get_version": { "version_info": {
            "version": MESOS_VERSION,
            "build_user": "strata",
            "build_time": 0.0,
        } }
    })
}

/// The answer to a GET call on the state.
pub fn state_view(view: StateView, state: &GetStateResponse) -> Value {
    match view {
        StateView::Agents => json!({ "type": "GET_AGENTS", "get_agents": agents(state) }),
        StateView::Frameworks => {
            json!({ "type": "GET_FRAMEWORKS", "get_frameworks": frameworks(state) })
        }
        StateView::Tasks => json!({ "type": "GET_TASKS", "get_tasks": tasks(state) }),
        StateView::All => json!({ "type": "GET_STATE", "get_state": get_state(state) }),
    }
}

/// GET_STATE's `get_state`, which SUBSCRIBED holds too.
fn get_state(state: &GetStateResponse) -> Value {
    json!({
        "get_agents": agents(state),
        "get_frameworks": frameworks(state),
        "get_tasks": tasks(state),
        "get_executors": { "executors": [], "orphan_executors": [] },
    })
}

/// The first event of SUBSCRIBE's stream: the state, and how often HEARTBEAT follows.
pub fn subscribed(state: &GetStateResponse, heartbeat_interval_seconds: f64) -> Value {
    json!({
        "type": "SUBSCRIBED",
        "subscribed": {
            "get_state": get_state(state),
            "heartbeat_interval_seconds": heartbeat_interval_seconds,
        }
    })
}

/// The event of SUBSCRIBE's stream telling of `change`.
pub fn change(change: &Change) -> Value {
    match change {
        Change::TaskAdded(t) => json!({ "type": "TASK_ADDED", "task_added": { "task": task(t) } }),
        Change::TaskUpdated { status: s, state } => json!({
            "type": "TASK_UPDATED",
            "task_updated": {
                "framework_id": id(&s.framework_id),
                "status": status(s),
                "state": state_name(*state),
            }
        }),
        // Mesos 1.11 has no AGENT_UPDATED: an agent whose mode an operator changed is told
        // again as AGENT_ADDED, which Mesos' own clients take as "this agent, as it is now"
        // (as after a re-registration), with `active`/`deactivated` saying the new mode.
        Change::AgentAdded(a) | Change::AgentUpdated(a) => {
            json!({ "type": "AGENT_ADDED", "agent_added": { "agent": agent(a) } })
        }
        Change::AgentRemoved { agent_id } => json!({
            "type": "AGENT_REMOVED",
            "agent_removed": { "agent_id": id(agent_id) }
        }),
        Change::FrameworkAdded(f) => json!({
            "type": "FRAMEWORK_ADDED",
            "framework_added": { "framework": framework(f) }
        }),
        Change::FrameworkUpdated(f) => json!({
            "type": "FRAMEWORK_UPDATED",
            "framework_updated": { "framework": framework(f) }
        }),
        Change::FrameworkRemoved(f) => json!({
            "type": "FRAMEWORK_REMOVED",
            "framework_removed": { "framework_info": framework_info(f) }
        }),
    }
}

/// The answer to GET_ROLES.
pub fn roles(roles: &[strata_proto::RoleSummary]) -> Value {
    let roles: Vec<Value> = roles
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "weight": r.weight,
                "frameworks": r.frameworks.iter().map(|f| id(f)).collect::<Vec<_>>(),
                "resources": resources(&r.allocated),
                "allocated": resources(&r.allocated),
                "offered": resources(&r.offered),
                "reserved": resources(&r.reserved),
            })
        })
        .collect();
    json!({ "type": "GET_ROLES", "get_roles": { "roles": roles } })
}

/// `{"cpus": 2.0, ...}` of scalars.
fn scalars(list: &[Resource]) -> Value {
    let map: serde_json::Map<String, Value> = list
        .iter()
        .map(|r| (r.name.clone(), json!(r.scalar)))
        .collect();
    Value::Object(map)
}

/// The answer to GET_QUOTA (Mesos 1.9's `configs` with guarantees and limits, and the older
/// `infos`).
pub fn quota(quotas: &[QuotaInfo]) -> Value {
    let configs: Vec<Value> = quotas
        .iter()
        .map(|q| json!({ "role": q.role, "guarantees": scalars(&q.guarantee), "limits": scalars(&q.limit) }))
        .collect();
    let infos: Vec<Value> = quotas
        .iter()
        .map(|q| json!({ "role": q.role, "guarantee": resources(&q.guarantee) }))
        .collect();
    json!({ "type": "GET_QUOTA", "get_quota": { "status": { "configs": configs, "infos": infos } } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_with_their_fields() {
        let call = |v: Value| parse(&v);
        assert_eq!(
            call(json!({"type": "GET_AGENTS"})),
            Ok(OperatorCall::State(StateView::Agents))
        );
        assert_eq!(
            call(json!({"type": "DRAIN_AGENT", "drain_agent": {
                "agent_id": {"value": "a1"}, "max_grace_period": {"nanoseconds": 5_000_000_000_i64}}})),
            Ok(OperatorCall::DrainAgent("a1".into(), Some(5.0)))
        );
        let Ok(OperatorCall::UpdateQuota(q)) =
            call(json!({"type": "UPDATE_QUOTA", "update_quota": {
            "quota_configs": [{"role": "eng", "guarantees": {"cpus": {"value": 1}},
                               "limits": {"cpus": {"value": 2}, "mem": {"value": 0}}}]}}))
        else {
            panic!("UPDATE_QUOTA not read")
        };
        assert_eq!(q[0].role, "eng");
        assert_eq!(q[0].guarantee, vec![Resource::scalar("cpus", 1.0)]);
        assert_eq!(q[0].limit.len(), 2);
        assert_eq!(
            call(
                json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [{"role": "eng", "weight": 2.0}]}})
            ),
            Ok(OperatorCall::UpdateWeights(BTreeMap::from([(
                "eng".to_owned(),
                2.0
            )])))
        );
        assert_eq!(
            call(json!({"type": "SUBSCRIBE"})),
            Ok(OperatorCall::Subscribe)
        );
        assert_eq!(
            OperatorCall::Subscribe.action(),
            Some(Action::ViewFrameworks)
        );
        let err = call(json!({"type": "GET_FLAGS"})).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported operator call \"GET_FLAGS\""),
            "{err}"
        );
        assert!(err.to_string().contains("GET_STATE"), "{err}");
        assert!(err.to_string().contains("SUBSCRIBE"), "{err}");
        let err = call(json!({"type": "TEARDOWN", "teardown": {}})).unwrap_err();
        assert!(
            err.to_string().contains("framework_id.value is missing"),
            "{err}"
        );
        assert!(call(json!({"type": "UPDATE_QUOTA"})).is_err());
        assert_eq!(OperatorCall::Health.action(), None);
        assert_eq!(OperatorCall::Quota.action(), Some(Action::ViewFrameworks));
    }

    #[test]
    fn events_have_mesos_shapes_with_the_objects_of_get_state() {
        use strata_proto::{AgentState, TaskState, TaskStatus};
        let agent = AgentSummary {
            id: "a1".into(),
            hostname: "h1".into(),
            state: AgentState::Active as i32,
            total: vec![Resource::scalar("cpus", 2.0)],
            ..AgentSummary::default()
        };
        let fw = FrameworkSummary {
            id: "f1".into(),
            name: "one".into(),
            user: "u".into(),
            roles: vec!["*".into()],
            connected: true,
            ..FrameworkSummary::default()
        };
        let task_summary = TaskSummary {
            task_id: "t1".into(),
            name: "sleep".into(),
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            state: TaskState::Staging as i32,
            ..TaskSummary::default()
        };
        let state = GetStateResponse {
            agents: vec![agent.clone()],
            frameworks: vec![fw.clone()],
            tasks: vec![task_summary.clone()],
            ..GetStateResponse::default()
        };
        let s = subscribed(&state, 15.0);
        assert_eq!(s["type"], "SUBSCRIBED");
        assert_eq!(s["subscribed"]["heartbeat_interval_seconds"], 15.0);
        assert_eq!(
            s["subscribed"]["get_state"],
            state_view(StateView::All, &state)["get_state"],
            "SUBSCRIBED holds what GET_STATE answers"
        );

        let e = change(&Change::AgentAdded(agent.clone()));
        assert_eq!(e["type"], "AGENT_ADDED");
        assert_eq!(
            e["agent_added"]["agent"],
            state_view(StateView::Agents, &state)["get_agents"]["agents"][0]
        );
        assert_eq!(e["agent_added"]["agent"]["agent_info"]["id"]["value"], "a1");
        let e = change(&Change::AgentRemoved {
            agent_id: "a1".into(),
        });
        assert_eq!(
            e,
            json!({"type": "AGENT_REMOVED", "agent_removed": {"agent_id": {"value": "a1"}}})
        );

        let frameworks = state_view(StateView::Frameworks, &state);
        let e = change(&Change::FrameworkAdded(fw.clone()));
        assert_eq!(e["type"], "FRAMEWORK_ADDED");
        assert_eq!(
            e["framework_added"]["framework"],
            frameworks["get_frameworks"]["frameworks"][0]
        );
        let e = change(&Change::FrameworkUpdated(fw.clone()));
        assert_eq!(e["type"], "FRAMEWORK_UPDATED");
        assert_eq!(e["framework_updated"]["framework"]["active"], true);
        let e = change(&Change::FrameworkRemoved(fw));
        assert_eq!(e["type"], "FRAMEWORK_REMOVED");
        assert_eq!(
            e["framework_removed"]["framework_info"],
            frameworks["get_frameworks"]["frameworks"][0]["framework_info"]
        );

        let e = change(&Change::TaskAdded(task_summary));
        assert_eq!(e["type"], "TASK_ADDED");
        assert_eq!(
            e["task_added"]["task"],
            state_view(StateView::Tasks, &state)["get_tasks"]["tasks"][0]
        );
        assert_eq!(e["task_added"]["task"]["state"], "TASK_STAGING");
        let status = TaskStatus {
            task_id: "t1".into(),
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            state: TaskState::Running as i32,
            uuid: vec![7; 16],
            timestamp: 1.5,
            ..TaskStatus::default()
        };
        let e = change(&Change::TaskUpdated {
            status,
            state: TaskState::Running,
        });
        assert_eq!(e["type"], "TASK_UPDATED");
        let u = &e["task_updated"];
        assert_eq!(u["framework_id"], json!({"value": "f1"}));
        assert_eq!(u["state"], "TASK_RUNNING");
        assert_eq!(u["status"]["task_id"], json!({"value": "t1"}));
        assert_eq!(u["status"]["agent_id"], json!({"value": "a1"}));
        assert_eq!(u["status"]["state"], "TASK_RUNNING");
        assert_eq!(u["status"]["source"], "SOURCE_SLAVE");
        assert_eq!(u["status"]["timestamp"], 1.5);
    }
}
