//! Mesos v1 JSON, as Mesos' own JSON mapping of its protobufs writes it: field names in
//! snake_case, enums as their names, ids as `{"value": ...}`, bytes as base64. Only what
//! the adapter reads is declared; unknown fields are ignored, every field is optional at
//! this level (the handlers say which are required, with Mesos' 400).

use serde::{Deserialize, Serialize};

/// An id (`FrameworkID`, `OfferID`, `AgentID`, `TaskID`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Id {
    /// The id.
    pub value: String,
}

/// `mesos.v1.scheduler.Call`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Call {
    /// Every call but the first SUBSCRIBE names its framework.
    pub framework_id: Option<Id>,
    /// SUBSCRIBE, ACCEPT, DECLINE, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub subscribe: Option<Subscribe>,
    pub accept: Option<Accept>,
    pub decline: Option<Decline>,
    pub revive: Option<Roles>,
    pub suppress: Option<Roles>,
    pub kill: Option<Kill>,
    pub acknowledge: Option<Acknowledge>,
    pub reconcile: Option<Reconcile>,
    pub update_framework: Option<UpdateFramework>,
}

/// `Call.UpdateFramework`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateFramework {
    pub framework_info: Option<FrameworkInfo>,
    pub suppressed_roles: Vec<String>,
}

/// `Call.Subscribe`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Subscribe {
    pub framework_info: Option<FrameworkInfo>,
    /// Roles to subscribe suppressed (Mesos 1.9+).
    pub suppressed_roles: Vec<String>,
}

/// `FrameworkInfo`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FrameworkInfo {
    pub user: Option<String>,
    pub name: Option<String>,
    pub id: Option<Id>,
    pub failover_timeout: Option<f64>,
    pub checkpoint: Option<bool>,
    /// The single role of a framework without the MULTI_ROLE capability.
    pub role: Option<String>,
    /// The roles of a MULTI_ROLE framework.
    pub roles: Vec<String>,
    pub hostname: Option<String>,
    pub principal: Option<String>,
    pub webui_url: Option<String>,
    pub capabilities: Vec<Capability>,
    /// Per role: `{"min_allocatable_resources": {"quantities": [{"quantities": {"cpus":
    /// {"value": 1}}}]}}`.
    pub offer_filters: std::collections::BTreeMap<String, OfferFilters>,
}

/// `OfferFilters`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OfferFilters {
    pub min_allocatable_resources: Option<MinAllocatableResources>,
}

/// `OfferFilters.MinAllocatableResources`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MinAllocatableResources {
    pub quantities: Vec<ResourceQuantities>,
}

/// `OfferFilters.ResourceQuantities`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResourceQuantities {
    pub quantities: std::collections::BTreeMap<String, ScalarValue>,
}

/// `Value.Scalar`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ScalarValue {
    pub value: f64,
}

/// `FrameworkInfo.Capability`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Capability {
    #[serde(rename = "type")]
    pub kind: String,
}

/// `Call.Accept`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Accept {
    pub offer_ids: Vec<Id>,
    pub operations: Vec<OfferOperation>,
    pub filters: Option<Filters>,
}

/// `Offer.Operation`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OfferOperation {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub launch: Option<Launch>,
    pub reserve: Option<ResourceList>,
    pub unreserve: Option<ResourceList>,
}

/// `Offer.Operation.Launch`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Launch {
    pub task_infos: Vec<TaskInfo>,
}

/// `Offer.Operation.Reserve` and `.Unreserve`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResourceList {
    pub resources: Vec<Resource>,
}

/// `Filters`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Filters {
    pub refuse_seconds: Option<f64>,
}

/// `Call.Decline`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Decline {
    pub offer_ids: Vec<Id>,
    pub filters: Option<Filters>,
}

/// `Call.Revive` and `Call.Suppress`: `roles` (1.2+), or the older single `role`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Roles {
    pub roles: Vec<String>,
    pub role: Option<String>,
}

/// `Call.Kill`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Kill {
    pub task_id: Option<Id>,
    pub agent_id: Option<Id>,
    pub kill_policy: Option<KillPolicy>,
}

/// `KillPolicy`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KillPolicy {
    pub grace_period: Option<DurationInfo>,
}

/// `DurationInfo`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DurationInfo {
    pub nanoseconds: i64,
}

/// `Call.Acknowledge`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Acknowledge {
    pub agent_id: Option<Id>,
    pub task_id: Option<Id>,
    /// base64 of the update's 16-byte uuid.
    pub uuid: Option<String>,
}

/// `Call.Reconcile`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reconcile {
    pub tasks: Vec<ReconcileTask>,
}

/// `Call.Reconcile.Task`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReconcileTask {
    pub task_id: Option<Id>,
    pub agent_id: Option<Id>,
}

/// `TaskInfo`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TaskInfo {
    pub name: String,
    pub task_id: Option<Id>,
    pub agent_id: Option<Id>,
    pub resources: Vec<Resource>,
    pub command: Option<CommandInfo>,
    /// A custom executor: not supported (Strata runs command tasks only).
    pub executor: Option<serde_json::Value>,
    pub labels: Option<Labels>,
    pub kill_policy: Option<KillPolicy>,
    /// Only its network is used: `network_infos` (a task on a CNI network runs in bridge mode,
    /// the one network Strata's agents have) or the Docker `network`, and the port mappings.
    pub container: Option<ContainerInfo>,
}

/// `ContainerInfo`: the parts that map to Strata's network modes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ContainerInfo {
    pub network_infos: Vec<NetworkInfo>,
    pub docker: Option<DockerInfo>,
}

/// `NetworkInfo`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NetworkInfo {
    pub name: Option<String>,
    pub port_mappings: Vec<PortMapping>,
}

/// `ContainerInfo.DockerInfo`: `network` is HOST, BRIDGE, NONE or USER.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DockerInfo {
    pub network: Option<String>,
    pub port_mappings: Vec<PortMapping>,
}

/// `NetworkInfo.PortMapping`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PortMapping {
    pub host_port: u32,
    pub container_port: u32,
    pub protocol: Option<String>,
}

/// `CommandInfo`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommandInfo {
    /// Mesos' default is true.
    pub shell: Option<bool>,
    pub value: Option<String>,
    pub arguments: Vec<String>,
    pub environment: Option<Environment>,
    pub user: Option<String>,
}

/// `Environment`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Environment {
    pub variables: Vec<Variable>,
}

/// `Environment.Variable`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Variable {
    pub name: String,
    pub value: Option<String>,
}

/// `Labels`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Labels {
    pub labels: Vec<Label>,
}

/// `Label`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Label {
    pub key: String,
    pub value: Option<String>,
}

/// `Resource`, as calls carry it (offers are written by `convert` straight from the proto).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Resource {
    pub name: String,
    /// SCALAR, RANGES or SET.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scalar: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Ranges>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<Set>,
    /// The pre-reservation-refinement role: "*" when unreserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<AllocationInfo>,
    /// The reservation stack (Mesos 1.4+); the last one is the resource's role.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<Reservation>,
}

/// `Value.Scalar`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Scalar {
    pub value: f64,
}

/// `Value.Ranges`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Ranges {
    pub range: Vec<Range>,
}

/// `Value.Range`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Range {
    pub begin: u64,
    pub end: u64,
}

/// `Value.Set`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Set {
    pub item: Vec<String>,
}

/// `Resource.AllocationInfo`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AllocationInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `Resource.ReservationInfo`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Reservation {
    /// STATIC or DYNAMIC.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored() {
        let call: Call = serde_json::from_str(
            r#"{"type":"DECLINE","framework_id":{"value":"f"},"future":[1,2],
                "decline":{"offer_ids":[{"value":"o1"}],"filters":{"refuse_seconds":60,"x":1}}}"#,
        )
        .expect("parses");
        assert_eq!(call.kind.as_deref(), Some("DECLINE"));
        let decline = call.decline.expect("decline");
        assert_eq!(decline.offer_ids[0].value, "o1");
        assert_eq!(decline.filters.and_then(|f| f.refuse_seconds), Some(60.0));
    }
}
