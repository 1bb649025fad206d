//! The latest usage of running tasks, as their agents report it (`AgentMessage.Usage`).
//!
//! Kept at the edge, beside the core: usage does not change what is allocated, so it never
//! enters the actor. An agent stream's full report replaces what the stream reported before; a
//! delta replaces the records it lists and drops the tasks it says ended, and every other record
//! of the stream stands, carried forward to the report's time when asked for. A stream's
//! records go when the stream ends, so a task that ended or an agent that went away stops
//! showing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use strata_allocator_core::ConnId;
use strata_proto::agent_message::Usage;
use strata_proto::{GetUsageRequest, TaskUsage};

/// What one agent stream reported.
#[derive(Debug, Default)]
struct StreamUsage {
    /// When its latest report was made (Unix seconds; 0 from agents that do not say).
    timestamp: f64,
    /// By framework and task.
    tasks: BTreeMap<(String, String), TaskUsage>,
}

/// Usage records by agent stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsageBook {
    by_conn: Arc<Mutex<HashMap<ConnId, StreamUsage>>>,
}

impl UsageBook {
    /// Takes in a report from the agent on `conn`.
    pub(crate) fn report(&self, conn: ConnId, usage: Usage) {
        let mut book = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        let stream = book.entry(conn).or_default();
        if !usage.delta {
            stream.tasks.clear();
        }
        for key in usage.ended {
            stream.tasks.remove(&(key.framework_id, key.task_id));
        }
        for task in usage.tasks {
            stream
                .tasks
                .insert((task.framework_id.clone(), task.task_id.clone()), task);
        }
        stream.timestamp = usage.timestamp;
    }

    /// Forgets the records of a stream that ended.
    pub(crate) fn forget(&self, conn: ConnId) {
        let mut book = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        book.remove(&conn);
    }

    /// The records matching every non-empty filter of `request`, by agent, framework and task,
    /// each as of its stream's latest report.
    pub(crate) fn query(&self, request: &GetUsageRequest) -> Vec<TaskUsage> {
        let book = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        let matches = |field: &str, filter: &str| filter.is_empty() || field == filter;
        let mut tasks: Vec<TaskUsage> = book
            .values()
            .flat_map(|stream| {
                stream
                    .tasks
                    .values()
                    .filter(|u| {
                        matches(&u.task_id, &request.task_id)
                            && matches(&u.framework_id, &request.framework_id)
                            && matches(&u.agent_id, &request.agent_id)
                    })
                    .map(|u| u.carried_forward(stream.timestamp))
            })
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
    use strata_proto::CpuUsage;
    use strata_proto::agent_message::UsageTaskKey;

    use super::*;

    fn usage(agent: &str, framework: &str, task: &str) -> TaskUsage {
        TaskUsage {
            agent_id: agent.to_owned(),
            framework_id: framework.to_owned(),
            task_id: task.to_owned(),
            ..TaskUsage::default()
        }
    }

    fn full(tasks: Vec<TaskUsage>) -> Usage {
        Usage {
            tasks,
            ..Usage::default()
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
            full(vec![usage("a1", "f1", "t1"), usage("a1", "f2", "t2")]),
        );
        book.report(ConnId(2), full(vec![usage("a2", "f1", "t3")]));
        let all = book.query(&GetUsageRequest::default());
        assert_eq!(ids(&all), ["t1", "t2", "t3"]);
        let f1 = book.query(&GetUsageRequest {
            framework_id: "f1".to_owned(),
            ..GetUsageRequest::default()
        });
        assert_eq!(ids(&f1), ["t1", "t3"]);
        // t1 ended: the next full report no longer lists it.
        book.report(ConnId(1), full(vec![usage("a1", "f2", "t2")]));
        let one = book.query(&GetUsageRequest {
            task_id: "t1".to_owned(),
            ..GetUsageRequest::default()
        });
        assert!(one.is_empty());
    }

    #[test]
    fn a_delta_updates_what_it_lists_drops_what_ended_and_carries_the_rest_forward() {
        let book = UsageBook::default();
        let at = |mut u: TaskUsage, t: f64, cores: f64| {
            u.timestamp = t;
            u.interval_seconds = 1.0;
            u.cpu = Some(CpuUsage {
                user_seconds_total: 7.0,
                cores,
                ..CpuUsage::default()
            });
            u
        };
        book.report(
            ConnId(1),
            Usage {
                tasks: vec![
                    at(usage("a1", "f", "busy"), 100.0, 0.5),
                    at(usage("a1", "f", "idle"), 100.0, 0.0),
                    at(usage("a1", "f", "ends"), 100.0, 0.0),
                ],
                timestamp: 100.0,
                ..Usage::default()
            },
        );
        book.report(
            ConnId(1),
            Usage {
                tasks: vec![at(usage("a1", "f", "busy"), 103.0, 0.75)],
                delta: true,
                ended: vec![UsageTaskKey {
                    framework_id: "f".to_owned(),
                    task_id: "ends".to_owned(),
                }],
                timestamp: 103.0,
            },
        );
        let all = book.query(&GetUsageRequest::default());
        assert_eq!(ids(&all), ["busy", "idle"]);
        let busy = &all[0];
        assert_eq!(
            (busy.timestamp, busy.cpu.as_ref().unwrap().cores),
            (103.0, 0.75)
        );
        let idle = &all[1];
        assert_eq!(
            (idle.timestamp, idle.interval_seconds),
            (103.0, 3.0),
            "the idle task's record stands, carried forward to the report"
        );
        assert_eq!(idle.cpu.as_ref().unwrap().user_seconds_total, 7.0);

        // A full report starts over.
        book.report(
            ConnId(1),
            Usage {
                tasks: vec![at(usage("a1", "f", "new"), 104.0, 0.0)],
                timestamp: 104.0,
                ..Usage::default()
            },
        );
        assert_eq!(ids(&book.query(&GetUsageRequest::default())), ["new"]);
    }

    #[test]
    fn a_closed_stream_takes_its_records_away() {
        let book = UsageBook::default();
        book.report(ConnId(7), full(vec![usage("a1", "f1", "t1")]));
        book.forget(ConnId(7));
        assert!(book.query(&GetUsageRequest::default()).is_empty());
    }
}
