//! The scheduler calls other than SUBSCRIBE and ACCEPT: REVIVE, SUPPRESS, DECLINE, KILL,
//! ACKNOWLEDGE and RECONCILE.

use std::time::Duration;

use strata_proto::{TaskReason, TaskState, TaskStatus, allocator_message, call};

use crate::{AgentId, Core, FrameworkId, Task, TaskId};

impl Core {
    /// REVIVE: clears the framework's refuse filters and suppression (only those of the roles
    /// named, if any) and asks for a full pass.
    pub(super) fn revive(&mut self, fid: &FrameworkId, revive: call::Revive) {
        tracing::info!(roles = ?revive.roles, "revive");
        let fw = self.frameworks.get_mut(fid).expect("subscribed framework");
        if revive.roles.is_empty() {
            fw.filters.clear();
            fw.suppressed.clear();
            // A new serial: none of its minimum refusals are its own any more.
            self.next_framework_serial += 1;
            fw.serial = self.next_framework_serial;
        } else {
            // Only the filters of the roles named.
            crate::allocation::retain_filters(&mut fw.filters, |f| {
                !revive.roles.iter().any(|r| **r == *f.role)
            });
            for role in &revive.roles {
                fw.suppressed.remove(role);
            }
            let serial = fw.serial;
            self.forget_declines(serial, &revive.roles);
        }
        self.full_allocation = true;
    }

    /// SUPPRESS: no offers for the roles named (all of the framework's if none) until a
    /// REVIVE; naming a role it is not subscribed to is an error and changes nothing.
    pub(super) fn suppress(&mut self, fid: &FrameworkId, suppress: call::Suppress) {
        tracing::info!(roles = ?suppress.roles, "suppress");
        let fw = self.frameworks.get_mut(fid).expect("subscribed framework");
        let unknown: Vec<String> = suppress
            .roles
            .iter()
            .filter(|r| !fw.roles.contains(r))
            .cloned()
            .collect();
        if unknown.is_empty() {
            let roles = if suppress.roles.is_empty() {
                fw.roles.clone()
            } else {
                suppress.roles
            };
            fw.suppressed.extend(roles);
        } else {
            self.send_error(
                fid,
                format!(
                    "suppress names roles {unknown:?} the framework is not subscribed \
                     to: name some of its roles, or none for all"
                ),
            );
        }
    }

    pub(super) fn decline(&mut self, now: Duration, fid: &FrameworkId, decline: call::Decline) {
        let refuse = self.refuse_duration(decline.filters.and_then(|f| f.refuse_seconds));
        for wire in decline.offer_ids {
            let Some(id) = self.parse_offer_id(&wire) else {
                tracing::debug!(offer_id = %wire, "decline of an unknown offer; ignored");
                continue;
            };
            match self.offers.get(&id) {
                Some(offer) if *offer.framework_id == *fid => {
                    let offer = self.remove_offer(&id, false).expect("offer exists");
                    self.refuse_until_tick(offer.agent, fid, &offer.role);
                    let agent_id = self.agents.slots[offer.agent].id.clone();
                    tracing::debug!(offer_id = %id, %agent_id, refuse_s = refuse.as_secs_f64(), "offer declined");
                    self.add_filter(fid, &agent_id, &offer.role, offer.resources, refuse, now);
                }
                // Unknown offers are normal after a rescind; Mesos ignores them too.
                _ => tracing::debug!(offer_id = %id, "decline of an unknown offer; ignored"),
            }
        }
    }

    pub(super) fn kill(&mut self, now: Duration, fid: &FrameworkId, kill: call::Kill) {
        let key = (fid.clone(), TaskId(kill.task_id.clone()));
        let _span = tracing::info_span!("kill", task_id = %key.1).entered();
        if !self.tasks.contains_key(&key) && self.awaits_agent(now, &kill.agent_id) {
            // After a restart or failover its agent may still be on its way back: as Mesos,
            // the kill is not acted on (frameworks retry kills) and the task is reconciled
            // instead, its state told once its agent is back (LOST only if none comes back
            // within the window), never LOST now for a task that may be running.
            tracing::info!(agent_id = %kill.agent_id, "kill of a task not known yet: its agent may still re-register; reconciling it instead");
            self.pending_reconciles
                .insert(key, AgentId(kill.agent_id.clone()));
            return;
        }
        if !self.tasks.contains_key(&key)
            && let Some(ended) = self.history.get(&key)
        {
            // It ended already: the framework is told how (as a reconciliation would).
            let status = self.reconcile_status(now, ended);
            self.send_update(fid, status);
            return;
        }
        let Some(task) = self.tasks.get_mut(&key) else {
            let status = Self::allocator_status(
                now,
                fid,
                &kill.task_id,
                &kill.agent_id,
                TaskState::Lost,
                TaskReason::TaskUnknown,
                format!(
                    "task {:?} is not known to the allocator as an active task: it may have \
                     ended already; reconcile to learn its last state",
                    kill.task_id
                ),
            );
            self.send_update(fid, status);
            return;
        };
        task.kill = Some(kill.grace_period_seconds);
        let agent_id = task.agent_id.clone();
        match self.agents.get(&agent_id).and_then(|a| a.conn()) {
            Some(conn) => {
                tracing::info!(agent_id = %agent_id, "kill sent to agent");
                self.send_kill(conn, &key, kill.grace_period_seconds);
            }
            None => tracing::info!(
                agent_id = %agent_id,
                "agent not connected; the kill is sent when it re-registers"
            ),
        }
    }

    pub(super) fn acknowledge(&mut self, fid: &FrameworkId, ack: call::Acknowledge) {
        if ack.uuid.is_empty() {
            self.send_error(
                fid,
                format!(
                    "acknowledge of task {:?} has no uuid: only updates that carry a uuid need \
                     acknowledging",
                    ack.task_id
                ),
            );
            return;
        }
        let key = (fid.clone(), TaskId(ack.task_id.clone()));
        let agent_id = if ack.agent_id.is_empty() {
            self.tasks
                .get(&key)
                .or_else(|| self.history.get(&key))
                .map(|t| t.agent_id.clone())
        } else {
            Some(AgentId(ack.agent_id.clone()))
        };
        let Some(agent_id) = agent_id else {
            self.send_error(
                fid,
                format!(
                    "acknowledge of task {:?} names no agent and the task is unknown: set \
                     agent_id from the update",
                    ack.task_id
                ),
            );
            return;
        };
        let Some(agent) = self.agents.get(&agent_id) else {
            self.send_error(
                fid,
                format!(
                    "acknowledge of task {:?} names unknown agent {agent_id}",
                    ack.task_id
                ),
            );
            return;
        };
        match agent.conn() {
            Some(conn) => self.send_agent(
                conn,
                allocator_message::Message::Acknowledge(allocator_message::AcknowledgeUpdate {
                    framework_id: fid.0.clone(),
                    task_id: ack.task_id,
                    uuid: ack.uuid,
                }),
            ),
            // The agent resends the update when it re-registers; it is acknowledged then.
            None => {
                tracing::debug!(task_id = %ack.task_id, agent_id = %agent_id, "agent not connected; acknowledgement dropped")
            }
        }
    }

    pub(super) fn reconcile(
        &mut self,
        now: Duration,
        fid: &FrameworkId,
        reconcile: call::Reconcile,
    ) {
        let mut statuses = Vec::new();
        if reconcile.tasks.is_empty() {
            let fw = &self.frameworks[fid];
            for task_id in &fw.tasks {
                let task = &self.tasks[&(fid.clone(), task_id.clone())];
                statuses.push(self.reconcile_status(now, task));
            }
        } else {
            for rt in reconcile.tasks {
                let key = (fid.clone(), TaskId(rt.task_id.clone()));
                let status = match self.tasks.get(&key).or_else(|| self.history.get(&key)) {
                    Some(task) => self.reconcile_status(now, task),
                    // Its agent may still be on its way back (Mesos waits too).
                    None if self.awaits_agent(now, &rt.agent_id) => {
                        tracing::debug!(task_id = %rt.task_id, "reconciliation waits for recovering agents");
                        self.pending_reconciles
                            .insert(key, AgentId(rt.agent_id.clone()));
                        continue;
                    }
                    None => Self::allocator_status(
                        now,
                        fid,
                        &rt.task_id,
                        &rt.agent_id,
                        TaskState::Lost,
                        TaskReason::Reconciliation,
                        format!("task {:?} is unknown to the allocator", rt.task_id),
                    ),
                };
                statuses.push(status);
            }
        }
        tracing::info!(updates = statuses.len(), "reconcile");
        for status in statuses {
            self.send_update(fid, status);
        }
    }

    pub(crate) fn reconcile_status(&self, now: Duration, task: &Task) -> TaskStatus {
        TaskStatus {
            exit_code: task.exit_code,
            healthy: task.healthy,
            ..Self::allocator_status(
                now,
                &task.framework_id,
                &task.id.0,
                &task.agent_id.0,
                self.visible_state(task),
                TaskReason::Reconciliation,
                task.message.clone(),
            )
        }
    }
}
