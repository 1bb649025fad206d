//! The latest usage of running tasks, as their agents report it (`AgentMessage.Usage`).
//!
//! Kept at the edge, beside the core: usage does not change what is allocated, so it never
//! enters the actor. Each agent stream's latest report replaces its previous one (a report
//! lists every task the agent runs), and a stream's records go when the stream ends, so a
//! task that ended or an agent that went away stops showing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use strata_proto::{GetUsageRequest, TaskUsage};

use crate::core::ConnId;

/// Usage records by agent stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsageBook {
    by_conn: Arc<Mutex<HashMap<ConnId, Vec<TaskUsage>>>>,
}

impl UsageBook {
    /// Replaces what the agent on `conn` reported before.
    pub(crate) fn report(&self, conn: ConnId, tasks: Vec<TaskUsage>) {
        let mut book = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        book.insert(conn, tasks);
    }

    /// Forgets the records of a stream that ended.
    pub(crate) fn forget(&self, conn: ConnId) {
        let mut book = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        book.remove(&conn);
    }

    /// The records matching every non-empty filter of `request`, by agent, framework and task.
    pub(crate) fn query(&self, request: &GetUsageRequest) -> Vec<TaskUsage> {
        let book = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        let matches = |field: &str, filter: &str| filter.is_empty() || field == filter;
        let mut tasks: Vec<TaskUsage> = book
            .values()
            .flatten()
            .filter(|u| {
                matches(&u.task_id, &request.task_id)
                    && matches(&u.framework_id, &request.framework_id)
                    && matches(&u.agent_id, &request.agent_id)
            })
            .cloned()
            .collect();
        drop(book);
        tasks.sort_by(|a, b| {
            (&a.agent_id, &a.framework_id, &a.task_id).cmp(&(
                &b.agent_id,
                &b.framework_id,
                &b.task_id,
            ))
        });
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(agent: &str, framework: &str, task: &str) -> TaskUsage {
        TaskUsage {
            agent_id: agent.to_owned(),
            framework_id: framework.to_owned(),
            task_id: task.to_owned(),
            ..TaskUsage::default()
        }
    }

    fn ids(tasks: &[TaskUsage]) -> Vec<&str> {
        tasks.iter().map(|t| t.task_id.as_str()).collect()
    }

    #[test]
    fn a_report_replaces_the_previous_one_and_filters_apply() {
        let book = UsageBook::default();
        book.report(
            ConnId(1),
            vec![usage("a1", "f1", "t1"), usage("a1", "f2", "t2")],
        );
        book.report(ConnId(2), vec![usage("a2", "f1", "t3")]);
        let all = book.query(&GetUsageRequest::default());
        assert_eq!(ids(&all), ["t1", "t2", "t3"]);
        let f1 = book.query(&GetUsageRequest {
            framework_id: "f1".to_owned(),
            ..GetUsageRequest::default()
        });
        assert_eq!(ids(&f1), ["t1", "t3"]);
        // t1 ended: the next report no longer lists it.
        book.report(ConnId(1), vec![usage("a1", "f2", "t2")]);
        let one = book.query(&GetUsageRequest {
            task_id: "t1".to_owned(),
            ..GetUsageRequest::default()
        });
        assert!(one.is_empty());
    }

    #[test]
    fn a_closed_stream_takes_its_records_away() {
        let book = UsageBook::default();
        book.report(ConnId(7), vec![usage("a1", "f1", "t1")]);
        book.forget(ConnId(7));
        assert!(book.query(&GetUsageRequest::default()).is_empty());
    }
}
