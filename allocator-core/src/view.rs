//! Read-only operator views of the core state, in their wire form (`OperatorService`).
//!
//! Invariants: views never change state; lists are sorted (agents and frameworks by id,
//! active tasks by launch time then framework and task id, terminal tasks oldest first) so
//! output is stable. Tasks on unreachable agents show as TASK_UNREACHABLE to operators
//! whatever their framework was told.

use strata_proto::{
    AgentState, AgentSummary, FrameworkSummary, ListTasksRequest, TaskState, TaskSummary,
};

use super::{Core, Link, Task};

impl Core {
    /// The principal framework `framework_id` is bound to: `None` for an unknown framework,
    /// an empty string for one that subscribed without authentication.
    pub fn framework_principal(&self, framework_id: &str) -> Option<String> {
        self.frameworks
            .get(&crate::FrameworkId(framework_id.to_owned()))
            .map(|f| f.principal.clone().unwrap_or_default())
    }

    /// The framework subscribed on stream `conn`, if any.
    pub fn framework_on(&self, conn: crate::ConnId) -> Option<&str> {
        self.framework_conns.get(&conn).map(|f| f.0.as_str())
    }

    /// Every agent the allocator knows, by id.
    pub fn agent_summaries(&self) -> Vec<AgentSummary> {
        let mut agents: Vec<AgentSummary> = self.agents.values().map(agent_summary).collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        agents
    }

    /// The summary of one framework.
    pub(crate) fn framework_summary(&self, f: &crate::Framework) -> FrameworkSummary {
        FrameworkSummary {
            id: f.id.0.clone(),
            name: f.name.clone(),
            roles: f.roles.clone(),
            connected: f.conn.is_some(),
            allocated: f.allocated.to_proto(),
            offered: f.offered.to_proto(),
            dominant_share: self.dominant_share(f),
            active_tasks: u32::try_from(f.tasks.len()).unwrap_or(u32::MAX),
            registered_at: f.registered_at.as_secs_f64(),
            principal: f.principal.clone().unwrap_or_default(),
            user: f.user.clone(),
            unregistered_at: 0.0,
            webui_url: f.webui_url.clone(),
        }
    }

    /// The latest frameworks removed, oldest first (at most
    /// [`crate::MAX_COMPLETED_FRAMEWORKS`]; not kept across restarts).
    pub fn completed_framework_summaries(&self) -> Vec<FrameworkSummary> {
        self.completed_frameworks.iter().cloned().collect()
    }

    /// Every framework the allocator knows (connected or within its failover timeout), by id.
    pub fn framework_summaries(&self) -> Vec<FrameworkSummary> {
        let mut frameworks: Vec<FrameworkSummary> = self
            .frameworks
            .values()
            .map(|f| self.framework_summary(f))
            .collect();
        frameworks.sort_by(|a, b| a.id.cmp(&b.id));
        frameworks
    }

    /// Tasks matching the request's filters: active ones first, then (with
    /// `include_terminal`) the terminal history, oldest first.
    pub fn task_summaries(&self, request: &ListTasksRequest) -> Vec<TaskSummary> {
        let matches = |t: &Task| {
            (request.framework_id.is_empty() || t.framework_id.0 == request.framework_id)
                && (request.agent_id.is_empty() || t.agent_id.0 == request.agent_id)
        };
        let mut active: Vec<&Task> = self.tasks.values().filter(|t| matches(t)).collect();
        active.sort_by(|a, b| {
            a.launched_at
                .cmp(&b.launched_at)
                .then_with(|| a.framework_id.cmp(&b.framework_id))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut out: Vec<TaskSummary> = active.into_iter().map(task_summary).collect();
        if request.include_terminal {
            out.extend(self.history.iter().filter(|t| matches(t)).map(task_summary));
        }
        out
    }

    /// How many terminal tasks the history holds.
    pub fn terminal_task_count(&self) -> usize {
        self.history.len()
    }
}

/// What operators see of an agent.
pub(crate) fn agent_summary(a: &super::Agent) -> AgentSummary {
    let offered = a.offered.to_proto();
    AgentSummary {
        id: a.id.0.clone(),
        hostname: a.hostname.clone(),
        state: match a.link {
            Link::Connected(_) => AgentState::Active,
            Link::Disconnected { .. } | Link::Unreachable { .. } => AgentState::Unreachable,
        } as i32,
        total: a.total.to_proto(),
        allocated: a.allocated.to_proto(),
        offered,
        attributes: a.attributes.clone(),
        running_tasks: u32::try_from(a.tasks.len()).unwrap_or(u32::MAX),
        registered_at: a.registered_at.as_secs_f64(),
        last_heartbeat_at: a.last_seen.as_secs_f64(),
        version: a.version.clone(),
        endpoint: a.endpoint.clone(),
        mode: match a.mode {
            crate::AgentMode::Active => strata_proto::AgentMode::Active,
            crate::AgentMode::Draining => strata_proto::AgentMode::Draining,
            crate::AgentMode::Deactivated => strata_proto::AgentMode::Deactivated,
        } as i32,
    }
}

/// What operators see of a task.
pub(crate) fn task_summary(t: &Task) -> TaskSummary {
    TaskSummary {
        task_id: t.id.0.clone(),
        name: t.info.name.clone(),
        framework_id: t.framework_id.0.clone(),
        agent_id: t.agent_id.0.clone(),
        state: if t.unreachable {
            TaskState::Unreachable
        } else {
            t.state
        } as i32,
        resources: t.resources.to_proto(),
        message: t.message.clone(),
        launched_at: t.launched_at.as_secs_f64(),
        updated_at: t.updated_at.as_secs_f64(),
        exit_code: t.exit_code,
    }
}
