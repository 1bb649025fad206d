//! Plain DRF allocation, offers and refuse filters.
//!
//! Each pass walks the candidate agents (all offerable agents on a full pass, otherwise only
//! those whose free resources changed) and offers all of an agent's free resources to the
//! subscribed, unsuppressed framework with the lowest dominant share whose filters do not
//! refuse them; ties go to the smaller framework id. Frameworks are kept in an ordered set
//! keyed by share, so one pass costs O(agents · log frameworks) plus skipped filters.
//!
//! Invariants: an agent is in at most one outstanding offer; a filter refuses an agent's free
//! resources only while `now < until` and only if they are within the refused resources
//! (Mesos semantics: more free resources than were refused are offered again).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use strata_proto::{Offer as ProtoOffer, event};

use super::{AgentId, Core, Filter, Framework, FrameworkId, Offer, OfferId, Resources};

/// Offers per OFFERS event, so one event stays far below gRPC's 4 MiB message limit.
const MAX_OFFERS_PER_EVENT: usize = 256;

/// The longest refuse filter honoured (Mesos caps at a year too).
const MAX_REFUSE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A dominant share ordered totally (shares are finite and non-negative).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Core {
    /// A framework's dominant share: the largest fraction of any scalar of the cluster total
    /// that it holds (allocated + offered).
    pub(super) fn dominant_share(&self, fw: &Framework) -> f64 {
        let mut share: f64 = 0.0;
        for (name, &total) in self.cluster_total.scalars() {
            if total > 0 {
                let held = fw.allocated.scalar(name) + fw.offered.scalar(name);
                share = share.max(held as f64 / total as f64);
            }
        }
        share
    }

    /// The agent's free resources: total minus allocated minus offered.
    pub(super) fn agent_free(&self, agent_id: &AgentId) -> Resources {
        let Some(agent) = self.agents.get(agent_id) else {
            return Resources::new();
        };
        let mut free = agent.total.minus(&agent.allocated);
        if let Some(offer) = agent.offer.as_ref().and_then(|id| self.offers.get(id)) {
            free.subtract(&offer.resources);
        }
        free
    }

    /// Re-evaluates whether `agent_id` can be offered, and queues it for the next pass.
    pub(super) fn refresh_offerable(&mut self, agent_id: &AgentId) {
        let offerable = match self.agents.get(agent_id) {
            Some(agent) if agent.conn().is_some() && agent.offer.is_none() => {
                self.agent_free(agent_id).is_allocatable()
            }
            _ => false,
        };
        if offerable {
            self.offerable.insert(agent_id.clone());
            self.pending_agents.insert(agent_id.clone());
        } else {
            self.offerable.remove(agent_id);
        }
    }

    /// Runs one allocation pass if anything changed since the last one (see the module
    /// documentation). The edge calls this once after draining a batch of events.
    pub fn allocate(&mut self, now: Duration) {
        let full = std::mem::take(&mut self.full_allocation);
        let pending = std::mem::take(&mut self.pending_agents);
        let mut order: BTreeSet<(Share, FrameworkId)> = self
            .frameworks
            .values()
            .filter(|f| f.conn.is_some() && !f.suppressed)
            .map(|f| (Share(self.dominant_share(f)), f.id.clone()))
            .collect();
        if order.is_empty() {
            return;
        }
        let candidates: Vec<AgentId> = if full {
            self.offerable.iter().cloned().collect()
        } else {
            pending
                .into_iter()
                .filter(|a| self.offerable.contains(a))
                .collect()
        };
        let mut batches: BTreeMap<FrameworkId, Vec<ProtoOffer>> = BTreeMap::new();
        for agent_id in candidates {
            let free = self.agent_free(&agent_id);
            let chosen = order
                .iter()
                .find(|(_, fid)| !self.frameworks[fid].refuses(&agent_id, &free, now))
                .cloned();
            let Some((share, fid)) = chosen else {
                continue;
            };
            let offer = self.make_offer(&agent_id, &fid, free);
            batches.entry(fid.clone()).or_default().push(offer);
            order.remove(&(share, fid.clone()));
            let share = Share(self.dominant_share(&self.frameworks[&fid]));
            order.insert((share, fid));
        }
        for (fid, offers) in batches {
            for chunk in offers.chunks(MAX_OFFERS_PER_EVENT) {
                self.send_framework(
                    &fid,
                    event::Event::Offers(event::Offers {
                        offers: chunk.to_vec(),
                    }),
                );
            }
        }
    }

    fn make_offer(
        &mut self,
        agent_id: &AgentId,
        framework_id: &FrameworkId,
        resources: Resources,
    ) -> ProtoOffer {
        let id = OfferId(format!("{}-O{}", self.prefix, self.next_offer));
        self.next_offer += 1;
        let agent = self
            .agents
            .get_mut(agent_id)
            .expect("candidate agent exists");
        agent.offer = Some(id.clone());
        let proto = ProtoOffer {
            id: id.0.clone(),
            framework_id: framework_id.0.clone(),
            agent_id: agent_id.0.clone(),
            hostname: agent.hostname.clone(),
            resources: resources.to_proto(),
            attributes: agent.attributes.clone(),
        };
        self.offerable.remove(agent_id);
        let fw = self
            .frameworks
            .get_mut(framework_id)
            .expect("chosen framework exists");
        fw.offers.insert(id.clone());
        fw.offered.add_scalars(&resources);
        tracing::debug!(
            offer_id = %id, agent_id = %agent_id, framework_id = %framework_id,
            resources = %resources, "offer made"
        );
        self.offers.insert(
            id,
            Offer {
                framework_id: framework_id.clone(),
                agent_id: agent_id.clone(),
                resources,
            },
        );
        proto
    }

    /// Removes an offer; its resources become free on its agent again. With `rescind`, the
    /// framework (if connected) is told with a RESCIND event.
    pub(super) fn remove_offer(&mut self, id: &OfferId, rescind: bool) -> Option<Offer> {
        let offer = self.offers.remove(id)?;
        if let Some(agent) = self.agents.get_mut(&offer.agent_id)
            && agent.offer.as_ref() == Some(id)
        {
            agent.offer = None;
        }
        if let Some(fw) = self.frameworks.get_mut(&offer.framework_id) {
            fw.offers.remove(id);
            fw.offered.subtract_scalars(&offer.resources);
        }
        if rescind {
            tracing::debug!(offer_id = %id, agent_id = %offer.agent_id, framework_id = %offer.framework_id, "offer rescinded");
            self.send_framework(
                &offer.framework_id,
                event::Event::Rescind(event::Rescind {
                    offer_id: id.0.clone(),
                }),
            );
        }
        let agent_id = offer.agent_id.clone();
        self.refresh_offerable(&agent_id);
        Some(offer)
    }

    /// Removes the agent's outstanding offer, if any, telling its framework.
    pub(super) fn rescind_agent_offer(&mut self, agent_id: &AgentId) {
        if let Some(id) = self.agents.get(agent_id).and_then(|a| a.offer.clone()) {
            self.remove_offer(&id, true);
        }
    }

    /// Removes every outstanding offer of a framework.
    pub(super) fn remove_framework_offers(&mut self, framework_id: &FrameworkId, rescind: bool) {
        let ids: Vec<OfferId> = self
            .frameworks
            .get(framework_id)
            .map(|f| f.offers.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            self.remove_offer(&id, rescind);
        }
    }

    /// How long a DECLINE or ACCEPT refuses the returned resources: the call's
    /// refuse_seconds, or the default when unset or invalid, capped at a year.
    pub(super) fn refuse_duration(&self, refuse_seconds: Option<f64>) -> Duration {
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

    /// Installs a filter: `resources` on `agent_id` are not offered to the framework for
    /// `refuse` (nothing for a zero duration or empty resources).
    pub(super) fn add_filter(
        &mut self,
        framework_id: &FrameworkId,
        agent_id: &AgentId,
        resources: Resources,
        refuse: Duration,
        now: Duration,
    ) {
        if refuse.is_zero() || resources.is_empty() {
            return;
        }
        if let Some(fw) = self.frameworks.get_mut(framework_id) {
            fw.filters.insert(
                agent_id.clone(),
                Filter {
                    resources,
                    until: now + refuse,
                },
            );
        }
    }

    pub(super) fn expire_filters(&mut self, now: Duration) {
        for fw in self.frameworks.values_mut() {
            fw.filters.retain(|_, f| now < f.until);
        }
    }
}

impl Framework {
    /// Whether a filter refuses `free` on `agent_id` at `now`.
    fn refuses(&self, agent_id: &AgentId, free: &Resources, now: Duration) -> bool {
        self.filters
            .get(agent_id)
            .is_some_and(|f| now < f.until && f.resources.contains(free))
    }
}
