//! Mesos JSON calls to `strata.v1` calls, and `strata.v1` events to Mesos JSON events.
//!
//! Calls are checked as Mesos' master checks them before answering 202 (a missing required
//! field is a [`ConvertError`], answered 400); what is stale (an unknown offer or task) is
//! left to the core, which reports it with UPDATE events as Mesos does.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use strata_proto::{
    CommandInfo, Filters, FrameworkCapability, FrameworkInfo, NetworkMode, Offer, Operation,
    PortMapping, PortProtocol, Resource, ResourceKind, TaskInfo, TaskReason, TaskSource, TaskState,
    TaskStatus, ValueRange, call, event, operation,
};

use super::json;

/// The role of unreserved resources and of frameworks that name none.
const STAR: &str = "*";

/// Why a call could not be turned into a Strata call: Mesos answers these with 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    /// A field Mesos requires is absent.
    #[error("expecting '{field}' to be present: {hint}")]
    Missing {
        /// The field, dotted from the call.
        field: &'static str,
        /// What to send.
        hint: &'static str,
    },
    /// A field holds something Mesos refuses.
    #[error("invalid '{field}': {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What was wrong and what to do.
        why: String,
    },
}

fn missing(field: &'static str, hint: &'static str) -> ConvertError {
    ConvertError::Missing { field, hint }
}

/// The `FrameworkInfo` of a SUBSCRIBE, checked as Mesos checks it.
pub fn framework_info(info: &json::FrameworkInfo) -> Result<FrameworkInfo, ConvertError> {
    let name = info
        .name
        .clone()
        .ok_or_else(|| missing("subscribe.framework_info.name", "name the framework"))?;
    let user = info.user.clone().ok_or_else(|| {
        missing(
            "subscribe.framework_info.user",
            "set the user its tasks run as (an empty string for the agent's default)",
        )
    })?;
    let multi_role = info.capabilities.iter().any(|c| c.kind == "MULTI_ROLE");
    let roles = if multi_role {
        if info.role.is_some() {
            return Err(ConvertError::Invalid {
                field: "subscribe.framework_info.role",
                why: "a MULTI_ROLE framework sets 'roles', not 'role'".to_owned(),
            });
        }
        info.roles.clone()
    } else {
        if !info.roles.is_empty() {
            return Err(ConvertError::Invalid {
                field: "subscribe.framework_info.roles",
                why: "'roles' needs the MULTI_ROLE capability: add it, or set 'role'".to_owned(),
            });
        }
        vec![info.role.clone().unwrap_or_else(|| STAR.to_owned())]
    };
    let mut capabilities = Vec::new();
    for c in &info.capabilities {
        match c.kind.as_str() {
            "PARTITION_AWARE" => capabilities.push(FrameworkCapability::PartitionAware as i32),
            "MULTI_ROLE" => capabilities.push(FrameworkCapability::MultiRole as i32),
            "GPU_RESOURCES" => capabilities.push(FrameworkCapability::GpuResources as i32),
            // Other capabilities change nothing Strata does.
            _ => {}
        }
    }
    Ok(FrameworkInfo {
        id: info
            .id
            .as_ref()
            .map(|i| i.value.clone())
            .unwrap_or_default(),
        name,
        user,
        roles,
        failover_timeout_seconds: info.failover_timeout.unwrap_or(0.0),
        capabilities,
        hostname: info.hostname.clone().unwrap_or_default(),
        webui_url: info.webui_url.clone().unwrap_or_default(),
        offer_filters: info
            .offer_filters
            .iter()
            .filter_map(|(role, f)| {
                let min = f.min_allocatable_resources.as_ref()?;
                let quantities = min
                    .quantities
                    .iter()
                    .map(|q| strata_proto::Quantities {
                        quantities: q
                            .quantities
                            .iter()
                            .map(|(name, v)| (name.clone(), v.value))
                            .collect(),
                    })
                    .collect();
                Some((role.clone(), strata_proto::MinAllocatable { quantities }))
            })
            .collect(),
    })
}

/// Tasks in an ACCEPT that Strata cannot run and reports TASK_ERROR for itself.
#[derive(Debug, Default, PartialEq)]
pub struct Refused {
    /// (task id, agent id, why).
    pub tasks: Vec<(String, String, String)>,
}

/// A non-SUBSCRIBE call. `Ok(None)` is a call accepted and ignored (MESSAGE, REQUEST,
/// SHUTDOWN and the inverse-offer calls: Strata has no executors and no inverse offers).
pub fn call(
    framework_id: &str,
    kind: &str,
    c: json::Call,
) -> Result<Option<(call::Call, Refused)>, ConvertError> {
    let mut refused = Refused::default();
    let out = match kind {
        "ACCEPT" => accept(c.accept, &mut refused)?,
        "DECLINE" => {
            let d = c
                .decline
                .ok_or_else(|| missing("decline", "a DECLINE call carries 'decline'"))?;
            call::Call::Decline(call::Decline {
                offer_ids: d.offer_ids.into_iter().map(|i| i.value).collect(),
                filters: d.filters.map(filters),
            })
        }
        "REVIVE" => call::Call::Revive(call::Revive {
            roles: roles(c.revive),
        }),
        "SUPPRESS" => call::Call::Suppress(call::Suppress {
            roles: roles(c.suppress),
        }),
        "KILL" => kill(c.kill)?,
        "ACKNOWLEDGE" => acknowledge(c.acknowledge)?,
        "RECONCILE" => reconcile(c.reconcile.unwrap_or_default())?,
        "TEARDOWN" => call::Call::Teardown(call::Teardown {}),
        "UPDATE_FRAMEWORK" => {
            let u = c.update_framework.ok_or_else(|| {
                missing(
                    "update_framework",
                    "an UPDATE_FRAMEWORK call carries 'update_framework' with 'framework_info'",
                )
            })?;
            let info = u.framework_info.ok_or_else(|| {
                missing(
                    "update_framework.framework_info",
                    "an UPDATE_FRAMEWORK call carries the framework's whole new FrameworkInfo",
                )
            })?;
            call::Call::UpdateFramework(call::UpdateFramework {
                framework_info: Some(framework_info(&info)?),
                suppressed_roles: u.suppressed_roles,
            })
        }
        "MESSAGE"
        | "REQUEST"
        | "SHUTDOWN"
        | "ACCEPT_INVERSE_OFFERS"
        | "DECLINE_INVERSE_OFFERS"
        | "ACKNOWLEDGE_OPERATION_STATUS"
        | "RECONCILE_OPERATIONS" => {
            tracing::debug!(
                framework_id,
                call = kind,
                "call has no Strata meaning; ignored"
            );
            return Ok(None);
        }
        other => {
            return Err(ConvertError::Invalid {
                field: "type",
                why: format!(
                    "unknown call type {other:?}: send SUBSCRIBE, ACCEPT, DECLINE, REVIVE, \
                     SUPPRESS, KILL, ACKNOWLEDGE, RECONCILE, TEARDOWN, UPDATE_FRAMEWORK, \
                     MESSAGE, REQUEST or SHUTDOWN"
                ),
            });
        }
    };
    Ok(Some((out, refused)))
}

/// ACCEPT: its offer ids, operations (tasks Strata cannot run go to `refused`) and filters.
fn accept(a: Option<json::Accept>, refused: &mut Refused) -> Result<call::Call, ConvertError> {
    let a = a.ok_or_else(|| missing("accept", "an ACCEPT call carries 'accept'"))?;
    let mut operations = Vec::new();
    for op in a.operations {
        operations.push(offer_operation(op, refused)?);
    }
    Ok(call::Call::Accept(call::Accept {
        offer_ids: a.offer_ids.into_iter().map(|i| i.value).collect(),
        operations,
        filters: a.filters.map(filters),
    }))
}

/// KILL: the task, its agent if named, and the kill policy's grace period.
fn kill(k: Option<json::Kill>) -> Result<call::Call, ConvertError> {
    let k = k.ok_or_else(|| missing("kill", "a KILL call carries 'kill'"))?;
    let task_id = k
        .task_id
        .ok_or_else(|| missing("kill.task_id", "name the task to kill"))?;
    let grace = k
        .kill_policy
        .and_then(|p| p.grace_period)
        .map(|g| g.nanoseconds.max(0) as f64 / 1e9);
    Ok(call::Call::Kill(call::Kill {
        task_id: task_id.value,
        agent_id: k.agent_id.map(|i| i.value).unwrap_or_default(),
        grace_period_seconds: grace,
    }))
}

/// ACKNOWLEDGE: task, agent and the update's uuid (base64 in Mesos JSON), all required.
fn acknowledge(a: Option<json::Acknowledge>) -> Result<call::Call, ConvertError> {
    let a = a.ok_or_else(|| missing("acknowledge", "an ACKNOWLEDGE call carries 'acknowledge'"))?;
    let task_id = a
        .task_id
        .ok_or_else(|| missing("acknowledge.task_id", "copy it from the update"))?;
    let agent_id = a
        .agent_id
        .ok_or_else(|| missing("acknowledge.agent_id", "copy it from the update"))?;
    let uuid = a
        .uuid
        .ok_or_else(|| missing("acknowledge.uuid", "copy it from the update"))?;
    let uuid = BASE64
        .decode(uuid.as_bytes())
        .map_err(|e| ConvertError::Invalid {
            field: "acknowledge.uuid",
            why: format!("not base64 ({e}): copy the uuid from the update as it came"),
        })?;
    Ok(call::Call::Acknowledge(call::Acknowledge {
        agent_id: agent_id.value,
        task_id: task_id.value,
        uuid,
    }))
}

/// RECONCILE: the tasks named (none: all of the framework's).
fn reconcile(r: json::Reconcile) -> Result<call::Call, ConvertError> {
    let mut tasks = Vec::new();
    for t in r.tasks {
        let task_id = t
            .task_id
            .ok_or_else(|| missing("reconcile.tasks.task_id", "name each task"))?;
        tasks.push(call::ReconcileTask {
            task_id: task_id.value,
            agent_id: t.agent_id.map(|i| i.value).unwrap_or_default(),
        });
    }
    Ok(call::Call::Reconcile(call::Reconcile { tasks }))
}

fn filters(f: json::Filters) -> Filters {
    Filters {
        refuse_seconds: f.refuse_seconds,
    }
}

fn roles(r: Option<json::Roles>) -> Vec<String> {
    let Some(r) = r else { return Vec::new() };
    let mut roles = r.roles;
    roles.extend(r.role);
    roles
}

fn offer_operation(
    op: json::OfferOperation,
    refused: &mut Refused,
) -> Result<Operation, ConvertError> {
    let kind = op.kind.as_deref().unwrap_or("UNKNOWN");
    let operation = match kind {
        "LAUNCH" => {
            let launch = op
                .launch
                .ok_or_else(|| missing("accept.operations.launch", "a LAUNCH carries 'launch'"))?;
            let mut tasks = Vec::new();
            for t in launch.task_infos {
                let task_id = t
                    .task_id
                    .clone()
                    .ok_or_else(|| missing("task_infos.task_id", "give each task an id"))?;
                let agent_id = t.agent_id.clone().map(|i| i.value).unwrap_or_default();
                if t.executor.is_some() || t.command.is_none() {
                    refused.tasks.push((
                        task_id.value,
                        agent_id,
                        "Strata runs command tasks only: set 'command' and no 'executor' \
                         (custom executors are not supported)"
                            .to_owned(),
                    ));
                    continue;
                }
                tasks.push(task_info(t, task_id.value, agent_id));
            }
            operation::Operation::Launch(operation::Launch { tasks })
        }
        "RESERVE" => operation::Operation::Reserve(operation::Reserve {
            resources: op
                .reserve
                .map(|r| r.resources.iter().map(resource_from_mesos).collect())
                .unwrap_or_default(),
        }),
        "UNRESERVE" => operation::Operation::Unreserve(operation::Unreserve {
            resources: op
                .unreserve
                .map(|r| r.resources.iter().map(resource_from_mesos).collect())
                .unwrap_or_default(),
        }),
        // LAUNCH_GROUP, CREATE, DESTROY, GROW_VOLUME, ...: the core rejects an ACCEPT with an
        // operation without a type (TASK_ERROR for its tasks, an ERROR event when it has
        // none) and uses up its offers.
        other => {
            tracing::info!(operation = other, "offer operation not supported by Strata");
            return Ok(Operation { operation: None });
        }
    };
    Ok(Operation {
        operation: Some(operation),
    })
}

fn task_info(t: json::TaskInfo, task_id: String, agent_id: String) -> TaskInfo {
    let command = t.command.unwrap_or_default();
    let environment: HashMap<String, String> = command
        .environment
        .map(|e| {
            e.variables
                .into_iter()
                .map(|v| (v.name, v.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let labels: HashMap<String, String> = t
        .labels
        .map(|l| {
            l.labels
                .into_iter()
                .map(|l| (l.key, l.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let (network_mode, port_mappings) = network_from_mesos(t.container.as_ref());
    TaskInfo {
        task_id,
        network_mode: network_mode as i32,
        port_mappings,
        name: t.name,
        agent_id,
        resources: t.resources.iter().map(resource_from_mesos).collect(),
        command: Some(CommandInfo {
            shell: command.shell.unwrap_or(true),
            value: command.value.unwrap_or_default(),
            arguments: command.arguments,
            environment,
            user: command.user.unwrap_or_default(),
            ..CommandInfo::default()
        }),
        labels,
        kill_grace_period_seconds: t
            .kill_policy
            .and_then(|p| p.grace_period)
            .map_or(0.0, |g| g.nanoseconds.max(0) as f64 / 1e9),
        ..TaskInfo::default()
    }
}

/// The network of a Mesos `ContainerInfo`: Docker's `network` (HOST, BRIDGE, NONE; USER is a
/// named network, which is Strata's bridge), else bridge when it names `network_infos` (a CNI
/// network: Strata's agents have one, their bridge), else host; with the port mappings of
/// either. A protocol other than tcp or udp becomes one the core refuses, naming it unknown.
fn network_from_mesos(c: Option<&json::ContainerInfo>) -> (NetworkMode, Vec<PortMapping>) {
    let Some(c) = c else {
        return (NetworkMode::Unspecified, Vec::new());
    };
    let docker_mode = c
        .docker
        .as_ref()
        .and_then(|d| d.network.as_deref())
        .map(|n| match n.to_ascii_uppercase().as_str() {
            "HOST" => NetworkMode::Host,
            "NONE" => NetworkMode::None,
            _ => NetworkMode::Bridge,
        });
    let mode = docker_mode.unwrap_or(if c.network_infos.is_empty() {
        NetworkMode::Unspecified
    } else {
        NetworkMode::Bridge
    });
    let mappings = c
        .network_infos
        .iter()
        .flat_map(|n| n.port_mappings.iter())
        .chain(c.docker.iter().flat_map(|d| d.port_mappings.iter()))
        .map(|m| PortMapping {
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: match m
                .protocol
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None => PortProtocol::Unspecified as i32,
                Some("tcp") => PortProtocol::Tcp as i32,
                Some("udp") => PortProtocol::Udp as i32,
                Some(_) => i32::MAX,
            },
        })
        .collect();
    (mode, mappings)
}

/// A Mesos resource as Strata's: the role is the last reservation's (refinement), else the
/// pre-1.4 `role`; "*" is unreserved.
pub fn resource_from_mesos(r: &json::Resource) -> Resource {
    let kind = match r.kind.as_deref() {
        Some("RANGES") => ResourceKind::Ranges,
        Some("SET") => ResourceKind::Set,
        Some("SCALAR") => ResourceKind::Scalar,
        _ if r.ranges.is_some() => ResourceKind::Ranges,
        _ if r.set.is_some() => ResourceKind::Set,
        _ => ResourceKind::Scalar,
    };
    let role = r
        .reservations
        .last()
        .and_then(|res| res.role.clone())
        .or_else(|| r.role.clone())
        .filter(|role| role != STAR)
        .unwrap_or_default();
    Resource {
        name: r.name.clone(),
        kind: kind as i32,
        scalar: r.scalar.as_ref().map_or(0.0, |s| s.value),
        ranges: r
            .ranges
            .as_ref()
            .map(|rs| {
                rs.range
                    .iter()
                    .map(|x| ValueRange {
                        begin: x.begin,
                        end: x.end,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        set: r.set.as_ref().map(|s| s.item.clone()).unwrap_or_default(),
        role,
        allocation_role: String::new(),
    }
}

/// Borrowed Mesos JSON for what the allocator sends most (offers), serialized without
/// building a `serde_json::Value` first.
mod out {
    use serde::Serialize;

    #[derive(Serialize)]
    pub(super) struct Id<'a> {
        pub value: &'a str,
    }

    #[derive(Serialize)]
    pub(super) struct Role<'a> {
        pub role: &'a str,
    }

    #[derive(Serialize)]
    pub(super) struct Scalar {
        pub value: f64,
    }

    #[derive(Serialize)]
    pub(super) struct Range {
        pub begin: u64,
        pub end: u64,
    }

    #[derive(Serialize)]
    pub(super) struct Ranges {
        pub range: Vec<Range>,
    }

    #[derive(Serialize)]
    pub(super) struct Set<'a> {
        pub item: &'a [String],
    }

    #[derive(Serialize)]
    pub(super) struct Reservation<'a> {
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub role: &'a str,
    }

    #[derive(Serialize)]
    pub(super) struct Resource<'a> {
        pub name: &'a str,
        #[serde(rename = "type")]
        pub kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub scalar: Option<Scalar>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub ranges: Option<Ranges>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub set: Option<Set<'a>>,
        pub role: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub allocation_info: Option<Role<'a>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub reservations: Vec<Reservation<'a>>,
    }

    #[derive(Serialize)]
    pub(super) struct Text<'a> {
        pub value: &'a str,
    }

    #[derive(Serialize)]
    pub(super) struct Attribute<'a> {
        pub name: &'a str,
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub text: Text<'a>,
    }

    #[derive(Serialize)]
    pub(super) struct Offer<'a> {
        pub id: Id<'a>,
        pub framework_id: Id<'a>,
        pub agent_id: Id<'a>,
        pub hostname: &'a str,
        pub resources: Vec<Resource<'a>>,
        pub attributes: Vec<Attribute<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub allocation_info: Option<Role<'a>>,
    }

    #[derive(Serialize)]
    pub(super) struct OfferList<'a> {
        pub offers: Vec<Offer<'a>>,
    }

    #[derive(Serialize)]
    pub(super) struct OffersEvent<'a> {
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub offers: OfferList<'a>,
    }
}

/// A Strata resource in Mesos' shape: reserved resources carry `role` and a STATIC
/// reservation (Strata does not tell static from dynamic in offers), offered ones their
/// `allocation_info`.
fn resource_out(r: &Resource) -> out::Resource<'_> {
    let reserved = !r.role.is_empty() && r.role != STAR;
    let mut o = out::Resource {
        name: &r.name,
        kind: "SCALAR",
        scalar: None,
        ranges: None,
        set: None,
        role: if reserved { &r.role } else { STAR },
        allocation_info: (!r.allocation_role.is_empty()).then_some(out::Role {
            role: &r.allocation_role,
        }),
        reservations: Vec::new(),
    };
    match r.kind() {
        ResourceKind::Ranges => {
            o.kind = "RANGES";
            o.ranges = Some(out::Ranges {
                range: r
                    .ranges
                    .iter()
                    .map(|x| out::Range {
                        begin: x.begin,
                        end: x.end,
                    })
                    .collect(),
            });
        }
        ResourceKind::Set => {
            o.kind = "SET";
            o.set = Some(out::Set { item: &r.set });
        }
        ResourceKind::Scalar | ResourceKind::Unspecified => {
            o.scalar = Some(out::Scalar { value: r.scalar });
        }
    }
    if reserved {
        o.reservations.push(out::Reservation {
            kind: "STATIC",
            role: &r.role,
        });
    }
    o
}

/// A Strata resource as Mesos' JSON `Resource` (operator API answers).
pub fn resource_json(r: &Resource) -> Value {
    serde_json::to_value(resource_out(r)).unwrap_or(Value::Null)
}

fn offer_out(o: &Offer) -> out::Offer<'_> {
    out::Offer {
        id: out::Id { value: &o.id },
        framework_id: out::Id {
            value: &o.framework_id,
        },
        agent_id: out::Id { value: &o.agent_id },
        hostname: &o.hostname,
        resources: o.resources.iter().map(resource_out).collect(),
        attributes: o
            .attributes
            .iter()
            .map(|a| out::Attribute {
                name: &a.name,
                kind: "TEXT",
                text: out::Text { value: &a.value },
            })
            .collect(),
        allocation_info: (!o.allocation_role.is_empty()).then_some(out::Role {
            role: &o.allocation_role,
        }),
    }
}

fn offers_out(offers: &[Offer]) -> out::OffersEvent<'_> {
    out::OffersEvent {
        kind: "OFFERS",
        offers: out::OfferList {
            offers: offers.iter().map(offer_out).collect(),
        },
    }
}

/// A Strata event as compact Mesos JSON: offers serialized straight from the proto, the
/// rest through [`event`].
pub fn event_json(e: &event::Event) -> Vec<u8> {
    let bytes = match e {
        event::Event::Offers(o) => serde_json::to_vec(&offers_out(&o.offers)),
        other => serde_json::to_vec(&event(other)),
    };
    // Serializing these types cannot fail (string keys, finite floats or null).
    bytes.unwrap_or_default()
}

fn id(value: &str) -> Value {
    json!({ "value": value })
}

/// Mesos' name of a task state.
pub fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified | TaskState::Unknown => "TASK_UNKNOWN",
        other => other.label(),
    }
}

fn reason_name(reason: TaskReason) -> Option<&'static str> {
    Some(match reason {
        TaskReason::Unspecified | TaskReason::TaskKilled => return None,
        TaskReason::CommandFailed => "REASON_COMMAND_EXECUTOR_FAILED",
        TaskReason::ContainerLaunchFailed => "REASON_CONTAINER_LAUNCH_FAILED",
        TaskReason::ContainerLimitationMemory => "REASON_CONTAINER_LIMITATION_MEMORY",
        TaskReason::ContainerLimitationDisk => "REASON_CONTAINER_LIMITATION_DISK",
        TaskReason::TaskInvalid => "REASON_TASK_INVALID",
        TaskReason::InvalidOffers => "REASON_INVALID_OFFERS",
        TaskReason::AgentDisconnected => "REASON_SLAVE_DISCONNECTED",
        TaskReason::AgentRemoved => "REASON_SLAVE_REMOVED",
        TaskReason::AgentRestarted => "REASON_SLAVE_RESTARTED",
        TaskReason::FrameworkRemoved => "REASON_FRAMEWORK_REMOVED",
        TaskReason::Reconciliation => "REASON_RECONCILIATION",
        TaskReason::TaskUnknown => "REASON_TASK_UNKNOWN",
        TaskReason::AgentDraining => "REASON_SLAVE_DRAINING",
    })
}

fn source_name(source: TaskSource) -> &'static str {
    match source {
        TaskSource::Agent | TaskSource::Unspecified => "SOURCE_SLAVE",
        TaskSource::Allocator => "SOURCE_MASTER",
        TaskSource::Executor => "SOURCE_EXECUTOR",
    }
}

/// A `TaskStatus` in Mesos' shape; `uuid` only when the update must be acknowledged.
pub fn status(s: &TaskStatus) -> Value {
    let mut v = json!({
        "task_id": id(&s.task_id),
        "state": state_name(s.state()),
        "source": source_name(s.source()),
        "timestamp": s.timestamp,
    });
    if !s.agent_id.is_empty() {
        v["agent_id"] = id(&s.agent_id);
    }
    if !s.message.is_empty() {
        v["message"] = json!(s.message);
    }
    if let Some(reason) = reason_name(s.reason()) {
        v["reason"] = json!(reason);
    }
    if !s.uuid.is_empty() {
        v["uuid"] = json!(BASE64.encode(&s.uuid));
    }
    if let Some(healthy) = s.healthy {
        v["healthy"] = json!(healthy);
    }
    v
}

/// A Mesos TASK_ERROR update the adapter makes itself (no uuid: nothing to acknowledge).
pub fn refused_update(task_id: &str, agent_id: &str, why: &str, now: f64) -> Value {
    let mut s = json!({
        "task_id": id(task_id),
        "state": "TASK_ERROR",
        "reason": "REASON_TASK_INVALID",
        "source": "SOURCE_MASTER",
        "message": why,
        "timestamp": now,
    });
    if !agent_id.is_empty() {
        s["agent_id"] = id(agent_id);
    }
    json!({ "type": "UPDATE", "update": { "status": s } })
}

/// A HEARTBEAT event.
pub fn heartbeat() -> Value {
    json!({ "type": "HEARTBEAT" })
}

/// A Strata event as a Mesos event.
pub fn event(e: &event::Event) -> Value {
    match e {
        event::Event::Subscribed(s) => json!({
            "type": "SUBSCRIBED",
            "subscribed": {
                "framework_id": id(&s.framework_id),
                "heartbeat_interval_seconds": s.heartbeat_interval_seconds,
            }
        }),
        event::Event::Offers(o) => {
            serde_json::to_value(offers_out(&o.offers)).unwrap_or(Value::Null)
        }
        event::Event::Rescind(r) => json!({
            "type": "RESCIND",
            "rescind": { "offer_id": id(&r.offer_id) }
        }),
        event::Event::Update(u) => json!({
            "type": "UPDATE",
            "update": { "status": u.status.as_ref().map(status).unwrap_or_else(|| json!({})) }
        }),
        event::Event::Failure(f) => json!({
            "type": "FAILURE",
            "failure": { "agent_id": id(&f.agent_id) }
        }),
        event::Event::Error(err) => json!({
            "type": "ERROR",
            "error": { "message": err.message }
        }),
        event::Event::Heartbeat(_) => heartbeat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> json::Call {
        serde_json::from_str(body).expect("valid json")
    }

    #[test]
    fn offer_filters_are_read_from_framework_info() {
        let info: json::FrameworkInfo = serde_json::from_str(
            r#"{"user":"u","name":"n","offer_filters":{"*":{"min_allocatable_resources":
                {"quantities":[{"quantities":{"cpus":{"value":1.5},"mem":{"value":256}}}]}}}}"#,
        )
        .unwrap();
        let info = framework_info(&info).unwrap();
        let set = &info.offer_filters["*"].quantities[0].quantities;
        assert_eq!(set["cpus"], 1.5);
        assert_eq!(set["mem"], 256.0);
    }

    #[test]
    fn launch_maps_command_tasks_and_refuses_executors() {
        let c = parse(
            r#"{"type":"ACCEPT","framework_id":{"value":"f"},"accept":{
                "offer_ids":[{"value":"o1"}],"filters":{"refuse_seconds":1},
                "operations":[{"type":"LAUNCH","launch":{"task_infos":[
                  {"name":"t","task_id":{"value":"t1"},"agent_id":{"value":"a"},
                   "resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.5},"role":"*"},
                                {"name":"ports","type":"RANGES","ranges":{"range":[{"begin":31000,"end":31001}]}}],
                   "command":{"value":"echo hi","environment":{"variables":[{"name":"A","value":"1"}]}},
                   "labels":{"labels":[{"key":"k","value":"v"}]},
                   "kill_policy":{"grace_period":{"nanoseconds":2000000000}}},
                  {"name":"e","task_id":{"value":"t2"},"executor":{"executor_id":{"value":"x"}}}
                ]}}]}}"#,
        );
        let (out, refused) = call("f", "ACCEPT", c).expect("valid").expect("a call");
        let call::Call::Accept(a) = out else {
            panic!("not an accept")
        };
        assert_eq!(a.offer_ids, vec!["o1"]);
        assert_eq!(a.filters.and_then(|f| f.refuse_seconds), Some(1.0));
        let Some(operation::Operation::Launch(l)) = &a.operations[0].operation else {
            panic!("not a launch")
        };
        let t = &l.tasks[0];
        assert_eq!((t.task_id.as_str(), t.agent_id.as_str()), ("t1", "a"));
        let cmd = t.command.as_ref().expect("command");
        assert!(cmd.shell);
        assert_eq!(cmd.value, "echo hi");
        assert_eq!(cmd.environment["A"], "1");
        assert_eq!(t.labels["k"], "v");
        assert_eq!(t.kill_grace_period_seconds, 2.0);
        assert_eq!(t.resources[0].role, "");
        assert_eq!(t.resources[1].kind(), ResourceKind::Ranges);
        assert_eq!(refused.tasks.len(), 1);
        assert_eq!(refused.tasks[0].0, "t2");
    }

    #[test]
    fn container_network_infos_map_to_bridge_mode_with_port_mappings() {
        let net = |container: &str| {
            let c = parse(&format!(
                r#"{{"type":"ACCEPT","framework_id":{{"value":"f"}},"accept":{{
                "offer_ids":[{{"value":"o1"}}],
                "operations":[{{"type":"LAUNCH","launch":{{"task_infos":[
                  {{"name":"t","task_id":{{"value":"t1"}},"agent_id":{{"value":"a"}},
                   "command":{{"value":"true"}}{container}}}]}}}}]}}}}"#
            ));
            let (out, _) = call("f", "ACCEPT", c).expect("valid").expect("a call");
            let call::Call::Accept(a) = out else {
                panic!("not an accept")
            };
            let Some(operation::Operation::Launch(l)) = &a.operations[0].operation else {
                panic!("not a launch")
            };
            l.tasks[0].clone()
        };
        assert_eq!(net("").network_mode(), NetworkMode::Unspecified);
        let cni = net(
            r#","container":{"type":"MESOS","network_infos":[{"name":"net",
                "port_mappings":[{"host_port":31000,"container_port":80,"protocol":"tcp"},
                                 {"host_port":31001,"container_port":53,"protocol":"sctp"}]}]}"#,
        );
        assert_eq!(cni.network_mode(), NetworkMode::Bridge);
        assert_eq!(cni.port_mappings[0].host_port, 31000);
        assert_eq!(cni.port_mappings[0].container_port, 80);
        assert_eq!(cni.port_mappings[0].protocol(), PortProtocol::Tcp);
        assert_eq!(
            cni.port_mappings[1].protocol,
            i32::MAX,
            "an unknown protocol stays unknown, for the core to refuse"
        );
        let docker = net(r#","container":{"type":"DOCKER","docker":{"network":"NONE"}}"#);
        assert_eq!(docker.network_mode(), NetworkMode::None);
        let docker = net(r#","container":{"type":"DOCKER","docker":{"network":"HOST"}}"#);
        assert_eq!(docker.network_mode(), NetworkMode::Host);
    }

    #[test]
    fn acknowledge_decodes_base64_and_requires_fields() {
        let c = parse(
            r#"{"type":"ACKNOWLEDGE","acknowledge":{"agent_id":{"value":"a"},
                "task_id":{"value":"t"},"uuid":"AAECAwQFBgcICQoLDA0ODw=="}}"#,
        );
        let (out, _) = call("f", "ACKNOWLEDGE", c).expect("valid").expect("a call");
        let call::Call::Acknowledge(a) = out else {
            panic!("not an ack")
        };
        assert_eq!(a.uuid, (0u8..16).collect::<Vec<_>>());
        let c = parse(r#"{"type":"ACKNOWLEDGE","acknowledge":{"task_id":{"value":"t"}}}"#);
        assert!(matches!(
            call("f", "ACKNOWLEDGE", c),
            Err(ConvertError::Missing { .. })
        ));
        assert!(matches!(
            call("f", "BOGUS", json::Call::default()),
            Err(ConvertError::Invalid { .. })
        ));
        assert_eq!(call("f", "MESSAGE", json::Call::default()), Ok(None));
    }

    #[test]
    fn roles_need_multi_role() {
        let info = |s: &str| -> json::FrameworkInfo { serde_json::from_str(s).expect("json") };
        let f = framework_info(&info(r#"{"user":"u","name":"n"}"#)).expect("valid");
        assert_eq!(f.roles, vec!["*"]);
        let f = framework_info(&info(
            r#"{"user":"u","name":"n","roles":["a","b"],"capabilities":[{"type":"MULTI_ROLE"}],"failover_timeout":60}"#,
        ))
        .expect("valid");
        assert_eq!(f.roles, vec!["a", "b"]);
        assert_eq!(f.failover_timeout_seconds, 60.0);
        let f = framework_info(&info(
            r#"{"user":"u","name":"n","webui_url":"http://h:8080/ui"}"#,
        ))
        .expect("valid");
        assert_eq!(f.webui_url, "http://h:8080/ui");
        assert!(framework_info(&info(r#"{"user":"u","name":"n","roles":["a"]}"#)).is_err());
        assert!(framework_info(&info(r#"{"name":"n"}"#)).is_err());
    }

    #[test]
    fn updates_carry_base64_uuid_only_when_set() {
        let mut s = TaskStatus {
            task_id: "t".into(),
            agent_id: "a".into(),
            state: TaskState::Running as i32,
            source: TaskSource::Agent as i32,
            uuid: vec![0xff; 16],
            ..TaskStatus::default()
        };
        let v = status(&s);
        assert_eq!(v["state"], "TASK_RUNNING");
        assert_eq!(v["uuid"], "/////////////////////w==");
        s.uuid.clear();
        s.reason = TaskReason::Reconciliation as i32;
        let v = status(&s);
        assert!(v.get("uuid").is_none());
        assert_eq!(v["reason"], "REASON_RECONCILIATION");
    }

    #[test]
    fn updates_carry_healthy_only_when_checked() {
        let mut s = TaskStatus {
            task_id: "t".into(),
            state: TaskState::Running as i32,
            ..TaskStatus::default()
        };
        assert!(status(&s).get("healthy").is_none());
        s.healthy = Some(false);
        assert_eq!(status(&s)["healthy"], false);
        s.healthy = Some(true);
        assert_eq!(status(&s)["healthy"], true);
    }

    #[test]
    fn resources_round_trip() {
        let r = Resource {
            name: "ports".into(),
            kind: ResourceKind::Ranges as i32,
            ranges: vec![ValueRange { begin: 1, end: 2 }],
            role: "eng".into(),
            allocation_role: "eng".into(),
            ..Resource::default()
        };
        let m: json::Resource =
            serde_json::from_value(serde_json::to_value(resource_out(&r)).expect("serializes"))
                .expect("reads back");
        assert_eq!(m.reservations[0].role.as_deref(), Some("eng"));
        let back = resource_from_mesos(&m);
        assert_eq!(back.ranges, r.ranges);
        assert_eq!(back.role, "eng");
    }
}
