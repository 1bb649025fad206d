//! [`Framework`]: the cloneable handle through which a framework makes calls (launch, decline,
//! kill, ...). Each call is handed to the driver task, which writes it on the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_proto::{
    Call, Filters, Offer, Operation, TaskInfo, TaskStatus, Workload, call, operation,
};
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::driver::Command;

/// A subscribed framework: cheap to clone, usable from any task.
///
/// Every call returns once it has been written to the stream, or fails with
/// [`Error::NotConnected`] while the SDK is reconnecting and [`Error::Closed`] after the framework
/// stopped. Results of calls arrive as events (`Update`s for launched tasks, `Error` for calls
/// the allocator rejected).
#[derive(Debug, Clone)]
pub struct Framework {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    framework_id: String,
    allocator: String,
    commands: mpsc::Sender<Command>,
    connected: Arc<AtomicBool>,
    /// Whether the last SUPPRESS or REVIVE sent (or the builder) left it suppressed.
    suppressed: Arc<AtomicBool>,
}

impl Framework {
    pub(crate) fn new(
        framework_id: String,
        allocator: String,
        commands: mpsc::Sender<Command>,
        connected: Arc<AtomicBool>,
        suppressed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                framework_id,
                allocator,
                commands,
                connected,
                suppressed,
            }),
        }
    }

    /// The id the allocator gave this framework (kept across reconnects).
    pub fn framework_id(&self) -> String {
        self.inner.framework_id.clone()
    }

    /// The allocator's address, e.g. `http://127.0.0.1:5050`.
    pub fn allocator(&self) -> &str {
        &self.inner.allocator
    }

    /// Whether the stream to the allocator is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// Launches `tasks` into `offer`: ACCEPT of that one offer with one LAUNCH. What the tasks
    /// leave of the offer goes back to the pool at once (refuse_seconds 0). Tasks without an
    /// agent id get the offer's.
    pub async fn launch(&self, offer: &Offer, tasks: Vec<TaskInfo>) -> Result<(), Error> {
        self.send(launch_call(&self.inner.framework_id, offer, tasks))
            .await
    }

    /// ACCEPT: consumes `offer_ids` (all on one agent) with `operations`; what remains unused is
    /// filtered for `filters.refuse_seconds` (the allocator's default when `None`).
    pub async fn accept(
        &self,
        offer_ids: Vec<String>,
        operations: Vec<Operation>,
        filters: Option<Filters>,
    ) -> Result<(), Error> {
        self.send(self.call(call::Call::Accept(call::Accept {
            offer_ids,
            operations,
            filters,
        })))
        .await
    }

    /// DECLINE: gives the offers back; their agents' resources are not offered to this
    /// framework again for `refuse_seconds` (the allocator's default, 5 s, when `None`; 0 = no
    /// filter).
    pub async fn decline(
        &self,
        offer_ids: Vec<String>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), Error> {
        self.send(self.call(call::Call::Decline(call::Decline {
            offer_ids,
            filters: refuse_seconds.map(|s| Filters {
                refuse_seconds: Some(s),
            }),
        })))
        .await
    }

    /// REVIVE: clears this framework's offer filters and resumes offers after a SUPPRESS.
    pub async fn revive(&self) -> Result<(), Error> {
        self.send(self.call(call::Call::Revive(call::Revive::default())))
            .await?;
        self.inner.suppressed.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// SUPPRESS: no more offers until REVIVE (kept across reconnects: the SDK subscribes
    /// again suppressed).
    pub async fn suppress(&self) -> Result<(), Error> {
        self.send(self.call(call::Call::Suppress(call::Suppress::default())))
            .await?;
        self.inner.suppressed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the framework is suppressed, as the builder's
    /// [`suppressed`](crate::FrameworkBuilder::suppressed) and the last
    /// [`suppress`](Self::suppress) or [`revive`](Self::revive) left it.
    pub fn is_suppressed(&self) -> bool {
        self.inner.suppressed.load(Ordering::SeqCst)
    }

    /// KILL: asks the agent to stop the task (SIGTERM, the grace period, SIGKILL); a KILLED
    /// update follows.
    pub async fn kill(
        &self,
        task_id: impl Into<String>,
        agent_id: impl Into<String>,
    ) -> Result<(), Error> {
        self.send(self.call(call::Call::Kill(call::Kill {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            grace_period_seconds: None,
        })))
        .await
    }

    /// KILL with a grace period that overrides the task's own.
    pub async fn kill_with_grace_period(
        &self,
        task_id: impl Into<String>,
        agent_id: impl Into<String>,
        grace_period: Duration,
    ) -> Result<(), Error> {
        self.send(self.call(call::Call::Kill(call::Kill {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            grace_period_seconds: Some(grace_period.as_secs_f64()),
        })))
        .await
    }

    /// ACKNOWLEDGE an update (only needed with auto-acknowledgement off). Updates without a uuid
    /// need no acknowledgement; for those this does nothing and returns `Ok`.
    pub async fn acknowledge(&self, status: &TaskStatus) -> Result<(), Error> {
        if status.uuid.is_empty() {
            return Ok(());
        }
        self.send(self.call(call::Call::Acknowledge(call::Acknowledge {
            agent_id: status.agent_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        })))
        .await
    }

    /// RECONCILE: asks for the latest state of the listed `(task_id, agent_id)` pairs (agent id may
    /// be empty), or of every task of this framework when the list is empty. Answers arrive as
    /// `Update`s with reason RECONCILIATION.
    pub async fn reconcile(&self, tasks: Vec<(String, String)>) -> Result<(), Error> {
        self.send(
            self.call(call::Call::Reconcile(call::Reconcile {
                tasks: tasks
                    .into_iter()
                    .map(|(task_id, agent_id)| call::ReconcileTask { task_id, agent_id })
                    .collect(),
            })),
        )
        .await
    }

    /// WORKLOADS: reports what this framework runs (its apps, its jobs) for the dashboard's
    /// "Apps & jobs" page, replacing the last report. The allocator keeps the latest report in
    /// memory only, so send it again after every `Subscribed` (a new leader knows nothing),
    /// and at most about once a second. At most 1000 workloads, each string at most 256
    /// bytes, ids as task ids; a report over the limits is refused with an `Error` event.
    pub async fn report_workloads(&self, workloads: Vec<Workload>) -> Result<(), Error> {
        self.send(self.call(call::Call::Workloads(call::Workloads { workloads })))
            .await
    }

    /// TEARDOWN: the allocator kills every task of this framework and forgets it. Returns once
    /// the allocator closed the stream (or after 5 s); the event receiver then ends.
    pub async fn teardown(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Teardown {
            call: self.call(call::Call::Teardown(call::Teardown {})),
            reply,
        };
        self.submit(command, answer).await
    }

    fn call(&self, call: call::Call) -> Call {
        Call {
            framework_id: self.inner.framework_id.clone(),
            call: Some(call),
        }
    }

    async fn send(&self, call: Call) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Call { call, reply }, answer).await
    }

    async fn submit(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<(), Error>>,
    ) -> Result<(), Error> {
        let closed = || Error::Closed {
            framework_id: self.inner.framework_id.clone(),
        };
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// The ACCEPT call `Framework::launch` sends.
pub(crate) fn launch_call(framework_id: &str, offer: &Offer, mut tasks: Vec<TaskInfo>) -> Call {
    for task in &mut tasks {
        if task.agent_id.is_empty() {
            task.agent_id.clone_from(&offer.agent_id);
        }
    }
    Call {
        framework_id: framework_id.to_owned(),
        call: Some(call::Call::Accept(call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![Operation {
                operation: Some(operation::Operation::Launch(operation::Launch { tasks })),
            }],
            filters: Some(Filters {
                refuse_seconds: Some(0.0),
            }),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task;

    #[test]
    fn launch_is_one_accept_with_one_launch_and_no_filter() {
        let offer = Offer {
            id: "o1".into(),
            agent_id: "a1".into(),
            ..Offer::default()
        };
        let tasks = vec![
            task("t1").shell("true").build(),
            task("t2").shell("true").agent("a1").build(),
        ];
        let call = launch_call("f1", &offer, tasks);
        assert_eq!(call.framework_id, "f1");
        let Some(call::Call::Accept(accept)) = call.call else {
            panic!("expected an accept");
        };
        assert_eq!(accept.offer_ids, ["o1"]);
        assert_eq!(
            accept.filters,
            Some(Filters {
                refuse_seconds: Some(0.0)
            })
        );
        assert_eq!(accept.operations.len(), 1);
        let Some(operation::Operation::Launch(launch)) = &accept.operations[0].operation else {
            panic!("expected a launch");
        };
        let ids: Vec<_> = launch
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.agent_id.as_str()))
            .collect();
        assert_eq!(ids, [("t1", "a1"), ("t2", "a1")]);
    }
}
