//! Rows for `strata agents`, `strata frameworks` and `strata ps`: serializable structs with
//! stable snake_case keys (for `--json`), built from the operator API's summaries, and their
//! rendering as plain, column-aligned tables.

use std::collections::BTreeMap;

use comfy_table::{Cell, ContentArrangement, Table, presets};
use serde::Serialize;
use strata_proto::{
    AgentMode, AgentState, AgentSummary, FrameworkSummary, Resource, TaskState, TaskSummary, names,
    scalar_sum,
};

use crate::duration::format_age;

/// Resources as JSON: scalars by name (mem and disk in MiB) and port ranges as `[begin, end]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourcesJson {
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub gpus: f64,
    pub ports: Vec<[u64; 2]>,
}

impl ResourcesJson {
    pub fn new(resources: &[Resource]) -> Self {
        // `+ 0.0` turns the -0.0 that an empty float sum gives into 0.0.
        Self {
            cpus: scalar_sum(resources, names::CPUS) + 0.0,
            mem: scalar_sum(resources, names::MEM) + 0.0,
            disk: scalar_sum(resources, names::DISK) + 0.0,
            gpus: scalar_sum(resources, names::GPUS) + 0.0,
            ports: strata_framework::ranges(resources, names::PORTS)
                .into_iter()
                .map(|(b, e)| [b, e])
                .collect(),
        }
    }
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    pub id: String,
    pub hostname: String,
    /// [`agent_state_label`]: `ACTIVE`, `DRAINING`, `DEACTIVATED`, `UNREACHABLE`, ...
    pub state: String,
    pub running_tasks: u32,
    pub total: ResourcesJson,
    pub allocated: ResourcesJson,
    pub offered: ResourcesJson,
    pub attributes: BTreeMap<String, String>,
    /// Unix seconds.
    pub registered_at: f64,
    pub last_heartbeat_at: f64,
    pub version: String,
}

impl AgentRow {
    pub fn new(agent: &AgentSummary) -> Self {
        Self {
            id: agent.id.clone(),
            hostname: agent.hostname.clone(),
            state: agent_state_label(agent.state(), agent.mode()).to_owned(),
            running_tasks: agent.running_tasks,
            total: ResourcesJson::new(&agent.total),
            allocated: ResourcesJson::new(&agent.allocated),
            offered: ResourcesJson::new(&agent.offered),
            attributes: agent
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect(),
            registered_at: agent.registered_at,
            last_heartbeat_at: agent.last_heartbeat_at,
            version: agent.version.clone(),
        }
    }
}

/// One framework.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameworkRow {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub connected: bool,
    pub active_tasks: u32,
    pub allocated: ResourcesJson,
    pub offered: ResourcesJson,
    /// Allocated and offered over the cluster total, of the resource where that is largest.
    pub dominant_share: f64,
    /// Unix seconds.
    pub registered_at: f64,
}

impl FrameworkRow {
    pub fn new(framework: &FrameworkSummary) -> Self {
        Self {
            id: framework.id.clone(),
            name: framework.name.clone(),
            roles: framework.roles.clone(),
            connected: framework.connected,
            active_tasks: framework.active_tasks,
            allocated: ResourcesJson::new(&framework.allocated),
            offered: ResourcesJson::new(&framework.offered),
            dominant_share: framework.dominant_share,
            registered_at: framework.registered_at,
        }
    }
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub task_id: String,
    pub name: String,
    pub framework_id: String,
    pub agent_id: String,
    /// E.g. `TASK_RUNNING`.
    pub state: String,
    pub resources: ResourcesJson,
    pub exit_code: Option<i32>,
    pub message: String,
    /// Unix seconds.
    pub launched_at: f64,
    pub updated_at: f64,
}

impl TaskRow {
    pub fn new(task: &TaskSummary) -> Self {
        Self {
            task_id: task.task_id.clone(),
            name: task.name.clone(),
            framework_id: task.framework_id.clone(),
            agent_id: task.agent_id.clone(),
            state: task.state().label().to_owned(),
            resources: ResourcesJson::new(&task.resources),
            exit_code: task.exit_code,
            message: task.message.clone(),
            launched_at: task.launched_at,
            updated_at: task.updated_at,
        }
    }
}

/// `ACTIVE`, `DRAINING`, `DEACTIVATED`, `UNREACHABLE` (with `,DRAINING` or `,DEACTIVATED`
/// when an operator also took it out of offers), or `UNKNOWN`.
pub fn agent_state_label(state: AgentState, mode: AgentMode) -> &'static str {
    match (state, mode) {
        (AgentState::Active, AgentMode::Active | AgentMode::Unspecified) => "ACTIVE",
        (AgentState::Active, AgentMode::Draining) => "DRAINING",
        (AgentState::Active, AgentMode::Deactivated) => "DEACTIVATED",
        (AgentState::Unreachable, AgentMode::Active | AgentMode::Unspecified) => "UNREACHABLE",
        (AgentState::Unreachable, AgentMode::Draining) => "UNREACHABLE,DRAINING",
        (AgentState::Unreachable, AgentMode::Deactivated) => "UNREACHABLE,DEACTIVATED",
        (AgentState::Unspecified, _) => "UNKNOWN",
    }
}

/// A scalar as people read it: at most three decimals, no trailing zeros (`0.5`, `2`, `15872`).
pub fn fmt_scalar(value: f64) -> String {
    let rounded = (value * 1000.0).round() / 1000.0;
    let text = format!("{rounded:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// `cpus 0.5/2  mem 64/15872 MiB  disk 0/100000 MiB` (gpus only when there are any).
pub fn fmt_used_of_total(used: &ResourcesJson, total: &ResourcesJson) -> String {
    let mut parts = vec![
        format!("cpus {}/{}", fmt_scalar(used.cpus), fmt_scalar(total.cpus)),
        format!("mem {}/{} MiB", fmt_scalar(used.mem), fmt_scalar(total.mem)),
        format!(
            "disk {}/{} MiB",
            fmt_scalar(used.disk),
            fmt_scalar(total.disk)
        ),
    ];
    if total.gpus > 0.0 || used.gpus > 0.0 {
        parts.push(format!(
            "gpus {}/{}",
            fmt_scalar(used.gpus),
            fmt_scalar(total.gpus)
        ));
    }
    parts.join("  ")
}

/// `cpus 0.1  mem 32 MiB` (disk and gpus only when non-zero).
pub fn fmt_resources(r: &ResourcesJson) -> String {
    let mut parts = vec![
        format!("cpus {}", fmt_scalar(r.cpus)),
        format!("mem {} MiB", fmt_scalar(r.mem)),
    ];
    if r.disk > 0.0 {
        parts.push(format!("disk {} MiB", fmt_scalar(r.disk)));
    }
    if r.gpus > 0.0 {
        parts.push(format!("gpus {}", fmt_scalar(r.gpus)));
    }
    parts.join("  ")
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(Cell::new));
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
}

pub(crate) fn finish(table: &Table) -> String {
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `strata agents` as a table.
pub fn agents_table(rows: &[AgentRow]) -> String {
    if rows.is_empty() {
        return "no agents are registered: start one with `strata local` (or strata-agent --allocator ADDR)\n"
            .to_owned();
    }
    let mut t = table(&[
        "ID",
        "HOSTNAME",
        "STATE",
        "TASKS",
        "RESOURCES (ALLOCATED/TOTAL)",
    ]);
    for r in rows {
        t.add_row(vec![
            r.id.clone(),
            r.hostname.clone(),
            r.state.clone(),
            r.running_tasks.to_string(),
            fmt_used_of_total(&r.allocated, &r.total),
        ]);
    }
    finish(&t)
}

/// `strata frameworks` as a table.
pub fn frameworks_table(rows: &[FrameworkRow]) -> String {
    if rows.is_empty() {
        return "no frameworks are subscribed\n".to_owned();
    }
    let mut t = table(&[
        "ID",
        "NAME",
        "ROLES",
        "CONNECTED",
        "TASKS",
        "ALLOCATED",
        "SHARE",
    ]);
    for r in rows {
        t.add_row(vec![
            r.id.clone(),
            r.name.clone(),
            r.roles.join(","),
            if r.connected { "yes" } else { "no" }.to_owned(),
            r.active_tasks.to_string(),
            fmt_resources(&r.allocated),
            format!("{:.1}%", r.dominant_share * 100.0),
        ]);
    }
    finish(&t)
}

/// The longest message shown in the `ps` table (the JSON has it whole).
const MESSAGE_WIDTH: usize = 60;

/// `strata ps` as a table; `now` (Unix seconds) is for the AGE column.
pub fn tasks_table(rows: &[TaskRow], all: bool, now: f64) -> String {
    if rows.is_empty() {
        return if all {
            "no tasks\n".to_owned()
        } else {
            "no active tasks (--all shows those that ended)\n".to_owned()
        };
    }
    let mut t = table(&[
        "TASK",
        "FRAMEWORK",
        "AGENT",
        "STATE",
        "RESOURCES",
        "EXIT",
        "AGE",
        "MESSAGE",
    ]);
    for r in rows {
        t.add_row(vec![
            r.task_id.clone(),
            r.framework_id.clone(),
            r.agent_id.clone(),
            r.state.clone(),
            fmt_resources(&r.resources),
            r.exit_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            if r.launched_at > 0.0 {
                format_age(now - r.launched_at)
            } else {
                "-".to_owned()
            },
            shorten(&r.message, MESSAGE_WIDTH),
        ]);
    }
    finish(&t)
}

fn shorten(text: &str, width: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= width && line.len() == text.len() {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(width.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

/// Sorts tasks: active first (by launch time), then ended ones (by last update).
pub fn sort_tasks(rows: &mut [TaskRow]) {
    let terminal = |r: &TaskRow| state_from_label(&r.state).is_some_and(TaskState::is_terminal);
    rows.sort_by(|a, b| {
        terminal(a)
            .cmp(&terminal(b))
            .then(a.launched_at.total_cmp(&b.launched_at))
            .then_with(|| a.task_id.cmp(&b.task_id))
    });
}

fn state_from_label(label: &str) -> Option<TaskState> {
    TaskState::from_str_name(&label.replacen("TASK_", "TASK_STATE_", 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::Attribute;

    fn agent() -> AgentSummary {
        AgentSummary {
            id: "a-1".into(),
            hostname: "node1".into(),
            state: AgentState::Active as i32,
            total: vec![
                Resource::scalar(names::CPUS, 2.0),
                Resource::scalar(names::MEM, 15872.0),
                Resource::scalar(names::DISK, 100000.0),
                Resource::ranges(names::PORTS, [(31000, 32000)]),
            ],
            allocated: vec![
                Resource::scalar(names::CPUS, 0.5),
                Resource::scalar(names::MEM, 64.0),
            ],
            offered: vec![],
            attributes: vec![Attribute {
                name: "rack".into(),
                value: "r1".into(),
            }],
            running_tasks: 1,
            registered_at: 1700000000.0,
            last_heartbeat_at: 1700000010.0,
            version: "0.1.0".into(),
            endpoint: String::new(),
            mode: AgentMode::Active as i32,
        }
    }

    fn task(id: &str, state: TaskState, launched_at: f64) -> TaskSummary {
        TaskSummary {
            task_id: id.into(),
            name: id.into(),
            framework_id: "f-1".into(),
            agent_id: "a-1".into(),
            state: state as i32,
            resources: vec![
                Resource::scalar(names::CPUS, 0.1),
                Resource::scalar(names::MEM, 32.0),
            ],
            message: String::new(),
            launched_at,
            updated_at: launched_at + 1.0,
            exit_code: None,
        }
    }

    #[test]
    fn scalars_are_compact() {
        assert_eq!(fmt_scalar(2.0), "2");
        assert_eq!(fmt_scalar(0.5), "0.5");
        assert_eq!(fmt_scalar(0.1 + 0.2), "0.3");
        assert_eq!(fmt_scalar(15872.0), "15872");
        assert_eq!(fmt_scalar(0.0), "0");
        assert_eq!(fmt_scalar(1.23456), "1.235");
    }

    #[test]
    fn agents_table_shows_used_over_total() {
        let out = agents_table(&[AgentRow::new(&agent())]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("ID"), "{out}");
        assert!(lines[0].contains("RESOURCES (ALLOCATED/TOTAL)"), "{out}");
        assert!(
            lines[1].contains("cpus 0.5/2  mem 64/15872 MiB  disk 0/100000 MiB"),
            "{out}"
        );
        assert!(lines[1].starts_with("a-1"), "{out}");
        assert!(
            lines[1].contains("node1") && lines[1].contains("ACTIVE"),
            "{out}"
        );
        // Columns line up: the STATE header sits above the state.
        assert_eq!(lines[0].find("STATE"), lines[1].find("ACTIVE"), "{out}");
        assert!(!out.lines().any(|l| l.ends_with(' ')), "no trailing spaces");
    }

    #[test]
    fn drained_and_deactivated_agents_are_not_shown_active() {
        let label = |state, mode| agent_state_label(state, mode);
        assert_eq!(label(AgentState::Active, AgentMode::Active), "ACTIVE");
        assert_eq!(label(AgentState::Active, AgentMode::Unspecified), "ACTIVE");
        assert_eq!(label(AgentState::Active, AgentMode::Draining), "DRAINING");
        assert_eq!(
            label(AgentState::Active, AgentMode::Deactivated),
            "DEACTIVATED"
        );
        assert_eq!(
            label(AgentState::Unreachable, AgentMode::Draining),
            "UNREACHABLE,DRAINING"
        );
        let mut drained = agent();
        drained.mode = AgentMode::Draining as i32;
        assert_eq!(AgentRow::new(&drained).state, "DRAINING");
    }

    #[test]
    fn agents_json_has_stable_snake_case_keys() {
        let json = serde_json::to_value([AgentRow::new(&agent())]).expect("serializes");
        let a = &json[0];
        assert_eq!(a["id"], "a-1");
        assert_eq!(a["state"], "ACTIVE");
        assert_eq!(a["running_tasks"], 1);
        assert_eq!(a["total"]["cpus"], 2.0);
        assert_eq!(a["total"]["mem"], 15872.0);
        assert_eq!(a["total"]["ports"], serde_json::json!([[31000, 32000]]));
        assert_eq!(a["allocated"]["cpus"], 0.5);
        assert_eq!(
            serde_json::to_string(&a["allocated"]["disk"]).expect("a number"),
            "0.0",
            "no negative zero for absent resources"
        );
        assert_eq!(a["attributes"]["rack"], "r1");
        assert_eq!(a["last_heartbeat_at"], 1700000010.0);
    }

    #[test]
    fn tasks_table_and_json_name_states_like_mesos() {
        let mut failed = task("t2", TaskState::Failed, 1000.0);
        failed.exit_code = Some(3);
        failed.message = "exited with code 3".into();
        let rows = vec![
            TaskRow::new(&task("t1", TaskState::Running, 1090.0)),
            TaskRow::new(&failed),
        ];
        let out = tasks_table(&rows, true, 1100.0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TASK"), "{out}");
        assert!(
            lines[1].contains("TASK_RUNNING") && lines[1].contains("cpus 0.1  mem 32 MiB"),
            "{out}"
        );
        assert!(lines[1].contains("10s"), "{out}");
        assert!(
            lines[2].contains("TASK_FAILED") && lines[2].contains("exited with code 3"),
            "{out}"
        );
        assert!(lines[2].contains("1m"), "{out}");

        let json = serde_json::to_value(&rows).expect("serializes");
        assert_eq!(json[0]["state"], "TASK_RUNNING");
        assert_eq!(json[0]["exit_code"], serde_json::Value::Null);
        assert_eq!(json[1]["state"], "TASK_FAILED");
        assert_eq!(json[1]["exit_code"], 3);
        assert_eq!(json[1]["framework_id"], "f-1");
        assert_eq!(json[1]["resources"]["mem"], 32.0);
    }

    #[test]
    fn active_tasks_sort_before_ended_ones() {
        let mut rows = vec![
            TaskRow::new(&task("old-done", TaskState::Finished, 10.0)),
            TaskRow::new(&task("new-running", TaskState::Running, 30.0)),
            TaskRow::new(&task("old-running", TaskState::Running, 20.0)),
        ];
        sort_tasks(&mut rows);
        let ids: Vec<&str> = rows.iter().map(|r| r.task_id.as_str()).collect();
        assert_eq!(ids, ["old-running", "new-running", "old-done"]);
    }

    #[test]
    fn frameworks_table_shows_share_and_connection() {
        let fw = FrameworkSummary {
            id: "f-1".into(),
            name: "strata-run".into(),
            roles: vec!["*".into()],
            connected: true,
            allocated: vec![
                Resource::scalar(names::CPUS, 0.5),
                Resource::scalar(names::MEM, 64.0),
            ],
            offered: vec![],
            dominant_share: 0.25,
            active_tasks: 1,
            registered_at: 0.0,
            ..FrameworkSummary::default()
        };
        let out = frameworks_table(&[FrameworkRow::new(&fw)]);
        let row = out.lines().nth(1).expect("a row");
        assert!(row.contains("strata-run") && row.contains("yes"), "{out}");
        assert!(row.contains("cpus 0.5  mem 64 MiB"), "{out}");
        assert!(row.contains("25.0%"), "{out}");
        let json = serde_json::to_value([FrameworkRow::new(&fw)]).expect("serializes");
        assert_eq!(json[0]["connected"], true);
        assert_eq!(json[0]["dominant_share"], 0.25);
        assert_eq!(json[0]["roles"], serde_json::json!(["*"]));
    }

    #[test]
    fn empty_lists_say_so() {
        assert!(agents_table(&[]).contains("strata local"));
        assert!(tasks_table(&[], false, 0.0).contains("--all"));
        assert_eq!(frameworks_table(&[]), "no frameworks are subscribed\n");
    }

    #[test]
    fn long_messages_are_shortened_in_tables() {
        let long = "x".repeat(100);
        assert_eq!(shorten(&long, 10), "xxxxxxx...");
        assert_eq!(shorten("a\nb", 10), "a...");
        assert_eq!(shorten("short", 10), "short");
    }
}
