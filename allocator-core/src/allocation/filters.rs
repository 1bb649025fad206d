//! Refuse filters: how long a DECLINE or the unused part of an ACCEPT refuses resources,
//! installing a filter, whether one refuses an agent's free resources, and expiry.
//!
//! A DECLINE refuses at least until the next periodic pass ([`Core::tick`], every
//! `allocation_interval`; the refusal ends a tenth of an interval before that pass is due),
//! whatever its refuse_seconds (0 included): as in Mesos, where
//! offers go out per batch and a filter never expires before the next batch, a framework
//! that declines with refuse_seconds 0 is offered the resources again by the next periodic
//! pass, not at once, and its peers get them meanwhile. (The unused part of an ACCEPT with
//! refuse_seconds 0 is still offered again at once.)

use std::time::Duration;

use crate::{AgentId, Core, FastMap, Filter, FrameworkId, Name, Resources};

/// The longest refuse filter honoured (Mesos caps at a year too).
const MAX_REFUSE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Core {
    /// How long a DECLINE or ACCEPT refuses the returned resources: the call's
    /// refuse_seconds, or the default when unset or invalid, capped at a year.
    pub(crate) fn refuse_duration(&self, refuse_seconds: Option<f64>) -> Duration {
        match refuse_seconds {
            None => self.config.default_refuse,
            Some(s) if s.is_finite() && s >= 0.0 => {
                Duration::try_from_secs_f64(s).map_or(MAX_REFUSE, |d| d.min(MAX_REFUSE))
            }
            Some(s) => {
                tracing::warn!(
                    refuse_seconds = s,
                    "invalid refuse_seconds; using the default"
                );
                self.config.default_refuse
            }
        }
    }

    /// The least a DECLINE at `now` refuses: until the next periodic pass is due, an
    /// `allocation_interval` after the latest [`Core::tick`] (after `now` when that is past
    /// or there was none), less a tenth of the interval, so that a tick that comes a little
    /// early by the clock (the edge's timer keeps its period when one tick was late) still
    /// finds the filter expired; a tenth of the interval at least.
    pub(crate) fn until_next_tick(&self, now: Duration) -> Duration {
        let interval = self.config.allocation_interval;
        let due = match self.last_tick {
            Some(t) if t + interval > now => t + interval,
            _ => now + interval,
        };
        let early = interval / 10;
        (due - early).saturating_sub(now).max(early)
    }

    /// Installs a filter: `resources` on `agent_id` are not offered to the framework in
    /// `role` for `refuse` (nothing for a zero duration or empty resources). It replaces the
    /// framework's earlier filter for that agent and role; those of its other roles stay.
    pub(crate) fn add_filter(
        &mut self,
        framework_id: &FrameworkId,
        agent_id: &AgentId,
        role: &Name,
        resources: Resources,
        refuse: Duration,
        now: Duration,
    ) {
        if refuse.is_zero() || resources.is_empty() {
            return;
        }
        if let Some(fw) = self.frameworks.get_mut(framework_id) {
            let filter = Filter {
                role: role.clone(),
                resources,
                until: now + refuse,
            };
            let on_agent = fw.filters.entry(agent_id.clone()).or_default();
            match on_agent.iter_mut().find(|f| f.role == filter.role) {
                Some(old) => *old = filter,
                None => on_agent.push(filter),
            }
        }
    }

    /// Removes every framework's filters for `agent_id` (its resources or attributes
    /// changed).
    pub(crate) fn remove_agent_filters(&mut self, agent_id: &AgentId) {
        for fw in self.frameworks.values_mut() {
            fw.filters.remove(agent_id);
        }
    }

    pub(crate) fn expire_filters(&mut self, now: Duration) {
        for fw in self.frameworks.values_mut() {
            retain_filters(&mut fw.filters, |f| now < f.until);
        }
    }
}

/// Keeps the filters for which `keep` holds, dropping agents left with none.
pub(crate) fn retain_filters(
    filters: &mut FastMap<AgentId, Vec<Filter>>,
    mut keep: impl FnMut(&Filter) -> bool,
) {
    filters.retain(|_, on_agent| {
        on_agent.retain(&mut keep);
        !on_agent.is_empty()
    });
}

/// Whether one of a framework's `filters` refuses `free` on `agent_id` to `role` at `now`
/// (Mesos keeps filters per role: a filter made by an offer to one role does not refuse the
/// agent to the framework's other roles).
pub(super) fn refuses(
    filters: &FastMap<AgentId, Vec<Filter>>,
    agent_id: &AgentId,
    role: &Name,
    free: &Resources,
    now: Duration,
) -> bool {
    filters.get(agent_id).is_some_and(|on_agent| {
        on_agent
            .iter()
            .any(|f| f.role == *role && now < f.until && f.resources.contains(free))
    })
}
