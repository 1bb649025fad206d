//! Refuse filters: how long a DECLINE or the unused part of an ACCEPT refuses resources,
//! installing a filter, whether one refuses an agent's free resources, and expiry; and the
//! minimum refusal.
//!
//! Whatever its refuse_seconds (0 included), a DECLINE (or an ACCEPT rejected, whose offers
//! are used up as declined) refuses the agent to the framework in that role until the next
//! periodic pass ([`Core::tick`], every `allocation_interval`): as in Mesos, where offers
//! go out per batch and recovered resources wait for the next one, a framework that
//! declines with refuse_seconds 0 is offered the resources again by the next periodic
//! pass, not at once, and its peers get them meanwhile. That minimum refusal is kept on the
//! agent ([`Declined`]), not as a filter: a refuse-0 DECLINE makes no filter, and a tick
//! forgets them all by moving the generation on. (The unused part of an ACCEPT that
//! launched tasks, with refuse_seconds 0, is still offered again at once: each round of it
//! uses resources up, so it cannot spin.)

use std::time::Duration;

use crate::{AgentId, Core, Declined, FastMap, Filter, FrameworkId, Name, Resources};

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

    /// Refuses the free resources of the agent in `slot` to framework `fid` in `role` until
    /// the next tick (the minimum refusal of what it gave back, whatever the
    /// refuse_seconds): kept on the agent ([`Declined`]), not as a filter, so that it costs
    /// no allocation once the agent's list has room and the tick forgets it in O(1).
    pub(crate) fn refuse_until_tick(&mut self, slot: usize, fid: &FrameworkId, role: &Name) {
        let Some(serial) = self.frameworks.get(fid).map(|fw| fw.serial) else {
            return;
        };
        let generation = self.tick_generation;
        let Some(agent) = self.agents.slots.get_mut(slot) else {
            return;
        };
        let declined = &mut agent.declined;
        if declined.tick != generation {
            declined.by.clear();
            declined.tick = generation;
        }
        if !declined.by.iter().any(|(s, r)| *s == serial && r == role) {
            declined.by.push((serial, role.clone()));
        }
    }

    /// Drops the minimum refusals of framework `serial` in `roles` (a REVIVE naming them).
    pub(crate) fn forget_declines(&mut self, serial: u64, roles: &[String]) {
        let generation = self.tick_generation;
        for agent in &mut self.agents.slots {
            if agent.declined.tick == generation {
                agent
                    .declined
                    .by
                    .retain(|(s, r)| *s != serial || !roles.iter().any(|role| **role == **r));
            }
        }
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
        if let Some(slot) = self.agents.slot(agent_id) {
            self.agents.slots[slot].declined.by.clear();
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

impl Declined {
    /// Whether framework `serial` gave the agent back in `role` since the tick of
    /// `generation` (the current one).
    pub(super) fn refuses(&self, generation: u64, serial: u64, role: &Name) -> bool {
        self.tick == generation && self.by.iter().any(|(s, r)| *s == serial && r == role)
    }
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
