//! Framework events: SUBSCRIBE, the scheduler calls, stream ends, failover and teardown.
//!
//! Invariants: a framework is bound to at most one stream; a call whose framework_id is not
//! the stream's framework gets an ERROR event and changes nothing. ACCEPT is validated as a
//! whole before anything changes: on any error every task of the call gets an update with no
//! uuid (TASK_DROPPED/INVALID_OFFERS for bad offers, else TASK_ERROR/TASK_INVALID), nothing
//! is launched or converted, and the framework's offers it names are used up all the same
//! (as in Mesos): their resources return to the pool, refused for the call's filter unless
//! the offers themselves were invalid. A disconnected framework holds no offers; it is removed (tasks
//! killed, resources freed) at once with failover_timeout 0, otherwise when the timeout
//! expires without a re-subscription, or at TEARDOWN.
//!
//! Submodules: `accept` (ACCEPT: validation and launch, RESERVE/UNRESERVE) and `calls` (the
//! other scheduler calls); this module holds SUBSCRIBE, the call dispatch, stream ends,
//! failover, heartbeats and removal.

mod accept;
mod calls;

use std::collections::BTreeSet;
use std::time::Duration;

use strata_proto::{Call, FrameworkCapability, FrameworkInfo, TaskReason, TaskState, call, event};

use crate::resources::Resources;
use crate::roles::validate_role;
use crate::{ConnId, Core, CoreError, FastMap, FastSet, Framework, FrameworkId, TaskId};

pub(crate) use self::accept::Conversion;

/// The longest failover timeout honoured.
const MAX_FAILOVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl Core {
    /// An error when `info` names a framework bound to a principal other than `principal`,
    /// or when a new framework would take `principal` over its limit.
    fn check_framework_principal(
        &self,
        info: &FrameworkInfo,
        principal: Option<&str>,
    ) -> Result<(), CoreError> {
        if info.id.is_empty() {
            let Some(principal) = principal else {
                return Ok(());
            };
            let max = self.config.max_frameworks_per_principal;
            let owned = self
                .frameworks
                .values()
                .filter(|f| f.principal.as_deref() == Some(principal))
                .count();
            if owned >= max {
                return Err(CoreError::TooManyFrameworksOfPrincipal {
                    principal: principal.to_owned(),
                    max,
                });
            }
            return Ok(());
        }
        match self.frameworks.get(&FrameworkId(info.id.clone())) {
            Some(fw) if fw.principal.as_deref() != principal => {
                tracing::warn!(framework_id = %info.id, bound = ?fw.principal, principal = ?principal, "subscription with a framework id of another principal refused");
                Err(CoreError::IdOfAnotherPrincipal {
                    what: "framework",
                    id: info.id.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The roles `info` subscribes with (the default role when none), each valid and allowed
    /// to `principal` (`register_frameworks`), as at SUBSCRIBE and UPDATE_FRAMEWORK.
    fn checked_roles(
        &self,
        info: &FrameworkInfo,
        principal: Option<&str>,
    ) -> Result<Vec<String>, CoreError> {
        let roles = if info.roles.is_empty() {
            crate::allocation::default_roles()
        } else {
            info.roles.clone()
        };
        for role in &roles {
            validate_role(role).map_err(|source| CoreError::InvalidFrameworkRole {
                name: info.name.clone(),
                source,
            })?;
            self.config
                .policy
                .check(principal, strata_auth::Action::RegisterFrameworks, role)?;
        }
        Ok(roles)
    }

    /// A framework record with empty books.
    pub(crate) fn new_framework(&mut self, id: FrameworkId, now: Duration) -> Framework {
        self.next_framework_serial += 1;
        Framework {
            id,
            name: String::new(),
            user: String::new(),
            webui_url: String::new(),
            min_allocatable: Default::default(),
            roles: Vec::new(),
            failover_timeout: Duration::ZERO,
            partition_aware: false,
            gpu_resources: false,
            conn: None,
            disconnected_at: None,
            suppressed: BTreeSet::new(),
            filters: FastMap::default(),
            offers: FastSet::default(),
            allocated: Resources::new(),
            offered: Resources::new(),
            by_role: Default::default(),
            tasks: BTreeSet::new(),
            registered_at: now,
            last_heartbeat: now,
            principal: None,
            last_offered: 0,
            serial: self.next_framework_serial,
        }
    }

    /// SUBSCRIBE on stream `conn`: registers a new framework (empty id) or re-attaches an
    /// existing one (closing its older stream; its refuse filters go, as in Mesos), then
    /// sends SUBSCRIBED. An unknown id is
    /// refused and nothing changes.
    pub fn framework_subscribe(
        &mut self,
        now: Duration,
        conn: ConnId,
        info: FrameworkInfo,
    ) -> Result<FrameworkId, CoreError> {
        self.framework_subscribe_as(now, conn, info, None, Vec::new())
    }

    /// [`Core::framework_subscribe`] by an authenticated `principal` (none: unauthenticated):
    /// the policy must allow it `register_frameworks` with each of its roles; an id bound to
    /// another principal is refused (no framework can take over another's id); a principal
    /// may have at most `max_frameworks_per_principal`. The framework starts with
    /// `suppressed_roles` suppressed (SUBSCRIBE's `suppressed_roles`, which must be among its
    /// roles), in place of what an earlier subscription of it had suppressed.
    pub fn framework_subscribe_as(
        &mut self,
        now: Duration,
        conn: ConnId,
        info: FrameworkInfo,
        principal: Option<String>,
        suppressed_roles: Vec<String>,
    ) -> Result<FrameworkId, CoreError> {
        if let Some(fid) = self.framework_conns.get(&conn).cloned() {
            self.send_error(
                &fid,
                format!(
                    "this stream is already subscribed as framework {fid}: send SUBSCRIBE once, \
                     as the first call of a stream"
                ),
            );
            return Ok(fid);
        }
        if let Some(reason) = crate::limits::check_framework_info(&info) {
            return Err(CoreError::InvalidFrameworkInfo { reason });
        }
        if info.id.is_empty() && self.frameworks.len() >= self.config.max_frameworks {
            return Err(CoreError::TooManyFrameworks {
                max: self.config.max_frameworks,
            });
        }
        self.check_framework_principal(&info, principal.as_deref())?;
        let roles = self.checked_roles(&info, principal.as_deref())?;
        let suppressed = suppressed_set(&roles, suppressed_roles)?;
        let added = info.id.is_empty();
        let id = if added {
            let id = FrameworkId(format!("{}-{:04}", self.prefix, self.next_framework));
            self.next_framework += 1;
            let fw = self.new_framework(id.clone(), now);
            self.frameworks.insert(id.clone(), fw);
            tracing::info!(framework_id = %id, name = %info.name, "framework registered");
            id
        } else {
            let id = FrameworkId(info.id.clone());
            let Some(fw) = self.frameworks.get(&id) else {
                return Err(CoreError::UnknownFramework {
                    framework_id: info.id,
                });
            };
            tracing::info!(framework_id = %id, name = %info.name, "framework re-subscribed");
            if let Some(old) = fw.conn {
                self.send_error(
                    &id,
                    format!(
                        "framework {id} subscribed again on another stream; this stream is closed"
                    ),
                );
                self.framework_conns.remove(&old);
                self.outbox.push(crate::Command::Close { conn: old });
            }
            // Offers made on the old stream are unknown to the new one.
            self.remove_framework_offers(&id, false);
            id
        };

        let fw = self.frameworks.get_mut(&id).expect("framework exists");
        take_info(fw, info);
        fw.principal = principal;
        fw.roles = roles;
        fw.conn = Some(conn);
        fw.disconnected_at = None;
        fw.suppressed = suppressed;
        // As in Mesos, a failed-over framework starts with no filters (a new serial: none
        // of its minimum refusals either).
        fw.filters.clear();
        self.next_framework_serial += 1;
        fw.serial = self.next_framework_serial;
        fw.last_heartbeat = now;
        self.framework_conns.insert(conn, id.clone());
        self.record_framework(&id);
        self.note_framework(&id, added);
        self.send_framework(
            &id,
            event::Event::Subscribed(event::Subscribed {
                framework_id: id.0.clone(),
                heartbeat_interval_seconds: self.config.framework_heartbeat_interval.as_secs_f64(),
                leader_epoch: self.config.leader_epoch,
            }),
        );
        self.full_allocation = true;
        Ok(id)
    }

    /// UPDATE_FRAMEWORK: the framework's new name, roles, capabilities and failover timeout,
    /// checked as at SUBSCRIBE (each new role allowed to its principal); offers made to roles
    /// it leaves are rescinded and their filters go; its tasks keep running. An invalid update
    /// changes nothing and is answered with an ERROR event saying why.
    fn update_framework(&mut self, fid: &FrameworkId, update: call::UpdateFramework) {
        match self.try_update_framework(fid, update) {
            Ok(()) => self.full_allocation = true,
            Err(e) => self.send_error(fid, format!("UPDATE_FRAMEWORK refused: {e}")),
        }
    }

    fn try_update_framework(
        &mut self,
        fid: &FrameworkId,
        update: call::UpdateFramework,
    ) -> Result<(), CoreError> {
        let info = update.framework_info.unwrap_or_default();
        if info.id != fid.0 {
            return Err(CoreError::InvalidFrameworkInfo {
                reason: format!(
                    "framework_info.id {:?} is not this framework's id {fid}",
                    strata_proto::ids::shorten(&info.id, 64)
                ),
            });
        }
        if let Some(reason) = crate::limits::check_framework_info(&info) {
            return Err(CoreError::InvalidFrameworkInfo { reason });
        }
        let principal = self.frameworks[fid].principal.clone();
        let roles = self.checked_roles(&info, principal.as_deref())?;
        let suppressed = suppressed_set(&roles, update.suppressed_roles)?;
        let left: Vec<_> = self.frameworks[fid]
            .offers
            .iter()
            .copied()
            .filter(|id| {
                self.offers
                    .get(id)
                    .is_some_and(|o| !roles.iter().any(|r| **r == *o.role))
            })
            .collect();
        for id in left {
            self.remove_offer(&id, true);
        }
        let fw = self.frameworks.get_mut(fid).expect("framework exists");
        tracing::info!(framework_id = %fid, name = %info.name, roles = ?roles, "framework updated");
        take_info(fw, info);
        for filters in fw.filters.values_mut() {
            filters.retain(|f| roles.iter().any(|r| **r == *f.role));
        }
        fw.filters.retain(|_, filters| !filters.is_empty());
        fw.roles = roles;
        fw.suppressed = suppressed;
        self.record_framework(fid);
        self.note_framework(fid, false);
        Ok(())
    }

    /// A call (other than the stream's first SUBSCRIBE) on stream `conn`.
    pub fn framework_call(&mut self, now: Duration, conn: ConnId, call: Call) {
        let Some(fid) = self.framework_conns.get(&conn).cloned() else {
            tracing::warn!(%conn, "call on a stream that is not subscribed; ignored");
            return;
        };
        let _span = tracing::info_span!("call", framework_id = %fid).entered();
        if call.framework_id != fid.0 {
            self.send_error(
                &fid,
                format!(
                    "call names framework {:?} but this stream is subscribed as framework {fid}: \
                     every call must carry the framework_id from SUBSCRIBED",
                    call.framework_id
                ),
            );
            return;
        }
        match call.call {
            None => self.send_error(
                &fid,
                "call has no type: set one of accept, decline, revive, ...".to_owned(),
            ),
            Some(call::Call::Subscribe(_)) => self.send_error(
                &fid,
                format!(
                    "this stream is already subscribed as framework {fid}: send SUBSCRIBE once, \
                     as the first call of a stream"
                ),
            ),
            Some(call::Call::Accept(accept)) => self.accept(now, &fid, accept),
            Some(call::Call::Decline(decline)) => self.decline(now, &fid, decline),
            Some(call::Call::Revive(revive)) => self.revive(&fid, revive),
            Some(call::Call::Suppress(suppress)) => self.suppress(&fid, suppress),
            Some(call::Call::Kill(kill)) => self.kill(now, &fid, kill),
            Some(call::Call::Acknowledge(ack)) => self.acknowledge(&fid, ack),
            Some(call::Call::Reconcile(reconcile)) => self.reconcile(now, &fid, reconcile),
            Some(call::Call::Teardown(_)) => {
                self.remove_framework(now, &fid, "the framework tore itself down".to_owned());
            }
            Some(call::Call::UpdateFramework(update)) => self.update_framework(&fid, update),
            // The allocator's edge keeps workload reports (the dashboard's, not the
            // allocator's business) and takes them before the core: nothing to do here.
            Some(call::Call::Workloads(_)) => {}
        }
    }

    /// The framework's stream ended: its offers go back; it is removed now if its failover
    /// timeout is 0, otherwise it waits that long for a re-subscription.
    pub fn framework_disconnected(&mut self, now: Duration, conn: ConnId) {
        let Some(fid) = self.framework_conns.remove(&conn) else {
            return;
        };
        let fw = self.frameworks.get_mut(&fid).expect("subscribed framework");
        fw.conn = None;
        fw.disconnected_at = Some(now);
        let failover = fw.failover_timeout;
        tracing::info!(framework_id = %fid, failover_timeout_s = failover.as_secs_f64(), "framework disconnected");
        self.remove_framework_offers(&fid, false);
        self.record_framework(&fid);
        self.note_framework(&fid, false);
        if failover.is_zero() {
            self.remove_framework(
                now,
                &fid,
                "its stream ended and its failover timeout is 0".to_owned(),
            );
        }
    }

    /// Tells operators framework `fid` was added (`added`) or updated.
    fn note_framework(&mut self, fid: &FrameworkId, added: bool) {
        self.note(|core| {
            let summary = core.framework_summary(core.frameworks.get(fid)?);
            Some(if added {
                crate::Change::FrameworkAdded(summary)
            } else {
                crate::Change::FrameworkUpdated(summary)
            })
        });
    }

    pub(crate) fn expire_frameworks(&mut self, now: Duration) {
        let expired: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| {
                f.disconnected_at
                    .is_some_and(|at| now.saturating_sub(at) >= f.failover_timeout)
            })
            .map(|f| f.id.clone())
            .collect();
        for fid in expired {
            self.remove_framework(
                now,
                &fid,
                "it did not re-subscribe within its failover timeout".to_owned(),
            );
        }
    }

    pub(crate) fn heartbeat_frameworks(&mut self, now: Duration) {
        let interval = self.config.framework_heartbeat_interval;
        let due: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.conn.is_some() && now.saturating_sub(f.last_heartbeat) >= interval)
            .map(|f| f.id.clone())
            .collect();
        for fid in due {
            if let Some(fw) = self.frameworks.get_mut(&fid) {
                fw.last_heartbeat = now;
            }
            self.send_framework(&fid, event::Event::Heartbeat(event::Heartbeat {}));
        }
    }

    /// Removes a framework: offers returned, tasks killed on their agents and recorded
    /// KILLED, its stream (if any) closed.
    pub(crate) fn remove_framework(&mut self, now: Duration, fid: &FrameworkId, why: String) {
        tracing::info!(framework_id = %fid, reason = %why, "framework removed");
        self.remove_framework_offers(fid, false);
        let task_ids: Vec<TaskId> = self.frameworks[fid].tasks.iter().cloned().collect();
        for task_id in task_ids {
            let key = (fid.clone(), task_id);
            let task = &self.tasks[&key];
            if let Some(conn) = self.agents.get(&task.agent_id).and_then(|a| a.conn()) {
                self.send_kill(conn, &key, None);
            }
            self.end_task(
                &key,
                TaskState::Killed,
                TaskReason::FrameworkRemoved,
                format!("framework {fid} was removed: {why}"),
                None,
                now,
            );
        }
        if let Some(conn) = self.frameworks[fid].conn {
            self.framework_conns.remove(&conn);
            self.outbox.push(crate::Command::Close { conn });
        }
        let mut summary = self.framework_summary(&self.frameworks[fid]);
        summary.connected = false;
        summary.unregistered_at = now.as_secs_f64();
        self.note(|_| Some(crate::Change::FrameworkRemoved(summary.clone())));
        self.completed_frameworks.push_back(summary);
        while self.completed_frameworks.len() > crate::MAX_COMPLETED_FRAMEWORKS {
            self.completed_frameworks.pop_front();
        }
        self.frameworks.remove(fid);
        self.record(crate::registry::RegistryOp::RemoveFramework(fid.0.clone()));
        self.full_allocation = true;
    }
}

/// What a framework record keeps of its FrameworkInfo at SUBSCRIBE and UPDATE_FRAMEWORK:
/// name, user, failover timeout (bounded), PARTITION_AWARE, GPU_RESOURCES and offer filters.
fn take_info(fw: &mut Framework, info: FrameworkInfo) {
    fw.min_allocatable = crate::min_allocatable_of(&info);
    fw.failover_timeout = Duration::try_from_secs_f64(info.failover_timeout_seconds.max(0.0))
        .map_or(Duration::ZERO, |d| d.min(MAX_FAILOVER));
    fw.partition_aware = info
        .capabilities
        .contains(&(FrameworkCapability::PartitionAware as i32));
    fw.gpu_resources = info
        .capabilities
        .contains(&(FrameworkCapability::GpuResources as i32));
    fw.webui_url = webui_url(&info.webui_url);
    fw.name = info.name;
    fw.user = info.user;
}

/// The most bytes of a FrameworkInfo's `webui_url` kept.
pub(crate) const MAX_WEBUI_URL: usize = 256;

/// A FrameworkInfo's `webui_url` as kept: an `http://` or `https://` URL of at most
/// [`MAX_WEBUI_URL`] bytes without spaces or control characters; anything else is dropped
/// (logged), so no other scheme (`javascript:`) ever reaches a page as a link.
pub(crate) fn webui_url(url: &str) -> String {
    if url.is_empty() {
        return String::new();
    }
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let chars_ok = !url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '<' | '>'));
    if scheme_ok && chars_ok && url.len() <= MAX_WEBUI_URL {
        url.to_owned()
    } else {
        tracing::warn!(
            url = %strata_proto::ids::shorten(url, 64),
            "webui_url ignored: it must be an http:// or https:// URL of at most {MAX_WEBUI_URL} bytes"
        );
        String::new()
    }
}

/// SUBSCRIBE's `suppressed_roles` as a set: each must be one of the framework's `roles`
/// (Mesos refuses the subscription otherwise).
fn suppressed_set(
    roles: &[String],
    suppressed_roles: Vec<String>,
) -> Result<BTreeSet<String>, CoreError> {
    if suppressed_roles.len() > crate::limits::MAX_ROLES_PER_FRAMEWORK {
        return Err(CoreError::InvalidFrameworkInfo {
            reason: format!(
                "the framework subscribes with {} suppressed roles, more than the {} allowed",
                suppressed_roles.len(),
                crate::limits::MAX_ROLES_PER_FRAMEWORK
            ),
        });
    }
    if let Some(unknown) = suppressed_roles.iter().find(|r| !roles.contains(r)) {
        return Err(CoreError::InvalidFrameworkInfo {
            reason: format!(
                "suppressed role {:?} is not one of the framework's roles: suppress only \
                 roles it subscribes with",
                strata_proto::ids::shorten(unknown, 64)
            ),
        });
    }
    Ok(suppressed_roles.into_iter().collect())
}
