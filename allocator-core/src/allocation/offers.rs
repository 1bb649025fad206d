//! Offers: making one (the agent's books at once, the framework's at the end of the pass),
//! sending a pass's offers in OFFERS events, and removing offers (used, declined, rescinded
//! for an agent, a role or a framework, or timed out).

use std::sync::Arc;
use std::time::Duration;

use strata_proto::event;

use crate::roles;
use crate::{
    AgentId, Command, ConnId, Core, FrameworkId, Name, Offer, OfferBatch, OfferId, OfferOut,
    Resources,
};

use super::{add_role, sub_role};

/// Offers per OFFERS event, so one event stays far below gRPC's 4 MiB message limit.
pub(super) const MAX_OFFERS_PER_EVENT: usize = 256;

impl Core {
    /// Books the offers of a pass in their frameworks (`batches[i]` are those of `fids[i]`)
    /// and sends them, at most [`MAX_OFFERS_PER_EVENT`] per OFFERS event.
    pub(super) fn send_offers(&mut self, fids: &[Arc<FrameworkId>], batches: Vec<Vec<OfferOut>>) {
        for (fw, mut offers) in batches.into_iter().enumerate() {
            if offers.is_empty() {
                continue;
            }
            let fid = &fids[fw];
            let Some(conn) = self.book_offers(fid, &offers) else {
                continue;
            };
            while !offers.is_empty() {
                let rest = if offers.len() > MAX_OFFERS_PER_EVENT {
                    offers.split_off(MAX_OFFERS_PER_EVENT)
                } else {
                    Vec::new()
                };
                self.outbox.push(Command::Offers {
                    conn,
                    offers: OfferBatch {
                        offer_prefix: self.offer_prefix.clone(),
                        framework_id: fid.clone(),
                        offers,
                    },
                });
                offers = rest;
            }
        }
    }

    /// Makes an offer of the agent in `slot`. The framework's books take it in
    /// [`Core::book_offers`] at the end of the pass (a pass reads only the books of before it).
    pub(super) fn make_offer(
        &mut self,
        slot: usize,
        framework_id: &Arc<FrameworkId>,
        role: &Name,
        resources: Resources,
        now: Duration,
    ) -> OfferOut {
        let id = OfferId(self.next_offer);
        self.next_offer += 1;
        let agent = &mut self.agents.slots[slot];
        agent.offers.push(id);
        agent.offered.add(&resources);
        agent.free.subtract(&resources);
        let still_offerable = agent.free.is_allocatable();
        let out = OfferOut {
            id,
            agent: agent.card.clone(),
            role: role.clone(),
            resources: resources.clone(),
        };
        tracing::debug!(
            offer_id = %id, agent_id = %self.agents.slots[slot].id, framework_id = %framework_id, role = &**role,
            resources = %resources, "offer made"
        );
        self.offers.insert(
            id,
            Offer {
                framework_id: framework_id.clone(),
                agent: slot,
                role: role.clone(),
                resources,
                made_at: now,
            },
        );
        if !still_offerable {
            self.offerable[slot] = false;
        }
        out
    }

    /// Puts offers made in a pass in their framework's books; returns its stream.
    fn book_offers(&mut self, framework_id: &FrameworkId, offers: &[OfferOut]) -> Option<ConnId> {
        let fw = self
            .frameworks
            .get_mut(framework_id)
            .expect("chosen framework exists");
        fw.offers.reserve(offers.len());
        // Summed first: a pass's offers to one framework are many, its roles few.
        let mut sum = Resources::new();
        let mut by_role: Vec<(&Name, Resources)> = Vec::new();
        for offer in offers {
            fw.offers.insert(offer.id);
            sum.add_scalars(&offer.resources);
            match by_role
                .iter_mut()
                .find(|(role, _)| Arc::ptr_eq(role, &offer.role) || **role == offer.role)
            {
                Some((_, held)) => held.add_scalars(&offer.resources),
                None => {
                    let mut held = Resources::new();
                    held.add_scalars(&offer.resources);
                    by_role.push((&offer.role, held));
                }
            }
        }
        fw.offered.add_scalars(&sum);
        for (role, held) in by_role {
            add_role(&mut fw.by_role, role, &held);
        }
        fw.conn
    }

    /// Removes an offer; its resources become free on its agent again. With `rescind`, the
    /// framework (if connected) is told with a RESCIND event.
    pub(crate) fn remove_offer(&mut self, id: &OfferId, rescind: bool) -> Option<Offer> {
        let offer = self.offers.remove(id)?;
        if let Some(agent) = self.agents.slots.get_mut(offer.agent)
            && let Some(i) = agent.offers.iter().position(|o| o == id)
        {
            agent.offers.swap_remove(i);
            agent.offered.subtract(&offer.resources);
        }
        if let Some(fw) = self.frameworks.get_mut(&*offer.framework_id) {
            fw.offers.remove(id);
            fw.offered.subtract_scalars(&offer.resources);
            sub_role(&mut fw.by_role, &offer.role, &offer.resources);
        }
        if rescind {
            tracing::debug!(offer_id = %id, agent_id = %self.agents.slots[offer.agent].id, framework_id = %offer.framework_id, "offer rescinded");
            self.send_framework(
                &offer.framework_id,
                event::Event::Rescind(event::Rescind {
                    offer_id: self.offer_name(*id),
                }),
            );
        }
        self.refresh_slot(offer.agent);
        Some(offer)
    }

    /// Removes the agent's outstanding offers, if any, telling their frameworks.
    pub(crate) fn rescind_agent_offers(&mut self, agent_id: &AgentId) {
        let mut ids: Vec<OfferId> = self
            .agents
            .get(agent_id)
            .map(|a| a.offers.to_vec())
            .unwrap_or_default();
        ids.sort_unstable();
        for id in ids {
            self.remove_offer(&id, true);
        }
    }

    /// Rescinds every outstanding offer made to `role` or its descendants.
    pub(crate) fn rescind_role_offers(&mut self, role: &str) {
        let ids: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| roles::is_ancestor_or_self(role, &o.role))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove_offer(&id, true);
        }
    }

    /// Removes every outstanding offer of a framework.
    pub(crate) fn remove_framework_offers(&mut self, framework_id: &FrameworkId, rescind: bool) {
        let mut ids: Vec<OfferId> = self
            .frameworks
            .get(framework_id)
            .map(|f| f.offers.iter().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        for id in ids {
            self.remove_offer(&id, rescind);
        }
    }

    /// Rescinds offers older than the offer timeout, if there is one.
    pub(crate) fn expire_offers(&mut self, now: Duration) {
        let Some(timeout) = self.config.offer_timeout else {
            return;
        };
        let expired: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.made_at) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            tracing::info!(offer_id = %id, timeout_s = timeout.as_secs_f64(), "offer timed out");
            self.remove_offer(&id, true);
        }
    }
}
