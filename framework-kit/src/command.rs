//! What a framework's pure core asks its edge to do ([`Command`]), and carrying it out through
//! the SDK ([`execute`]).

use strata_framework::Framework;
use strata_framework::proto::{Offer, TaskInfo, TaskState, TaskStatus};
use tracing::warn;

/// What a core asks the edge to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// ACCEPT `offer` with these tasks.
    Launch {
        /// The offer.
        offer: Offer,
        /// The tasks.
        tasks: Vec<TaskInfo>,
    },
    /// DECLINE these offers for `refuse_seconds`.
    Decline {
        /// The offers.
        offer_ids: Vec<String>,
        /// The filter.
        refuse_seconds: f64,
    },
    /// KILL a task.
    Kill {
        /// The task.
        task_id: String,
        /// Its agent.
        agent_id: String,
    },
    /// REVIVE offers.
    Revive,
    /// RECONCILE these `(task, agent)` pairs; none: every task of the framework (implicit).
    Reconcile {
        /// The tasks.
        tasks: Vec<(String, String)>,
    },
}

/// Carries out one command; for a launch that could not be sent, the updates that end its
/// tasks (TASK_ERROR) for the core. Other failed calls are logged: while reconnecting, the next
/// SUBSCRIBED reconciles and revives.
pub async fn execute(client: &Framework, command: Command) -> Vec<TaskStatus> {
    let result = match command {
        Command::Launch { offer, tasks } => {
            let ids: Vec<(String, String)> = tasks
                .iter()
                .map(|t| (t.task_id.clone(), offer.agent_id.clone()))
                .collect();
            if let Err(e) = client.launch(&offer, tasks).await {
                warn!(error = %e, "cannot launch");
                return ids
                    .into_iter()
                    .map(|(task_id, agent_id)| TaskStatus {
                        task_id,
                        agent_id,
                        state: TaskState::Error as i32,
                        message: format!("the launch could not be sent: {e}"),
                        ..TaskStatus::default()
                    })
                    .collect();
            }
            Ok(())
        }
        Command::Decline {
            offer_ids,
            refuse_seconds,
        } => client.decline(offer_ids, Some(refuse_seconds)).await,
        Command::Kill { task_id, agent_id } => client.kill(task_id, agent_id).await,
        Command::Revive => client.revive().await,
        Command::Reconcile { tasks } => client.reconcile(tasks).await,
    };
    if let Err(e) = result {
        warn!(error = %e, "a call to the allocator failed");
    }
    Vec::new()
}
