//! Weighted, hierarchical DRF with quota and reservations; offers and refuse filters.
//!
//! A pass walks the candidate agents (all offerable agents on a full pass, otherwise only
//! those whose free resources changed) in two stages, as Mesos' hierarchical allocator does:
//!
//! 1. **guarantees**: only roles whose quota guarantee (or an ancestor's) is not yet met
//!    are offered to, each what its guarantee names up to what is missing, and of the other
//!    scalars only what the other roles' unmet guarantees leave (a cpus-only guarantee
//!    cannot take the memory another role's guarantee needs);
//! 2. **fair sharing**: every role, but the unreserved scalars still needed to meet the
//!    other roles' unmet guarantees (the headroom) are held back, so a guarantee is set
//!    aside even while its role is idle.
//!
//! For one agent, roles are tried in hierarchical weighted-DRF order: at each level of the
//! role tree the child with the lowest dominant share divided by its weight comes first
//! (the frameworks subscribed to a role directly form a virtual child `role/.`, weight 1).
//! Within a role the subscribed, unsuppressed framework with the lowest dominant share in
//! that role whose filters do not refuse the resources gets them. Ties (shares within
//! 10^-12) go round-robin, deterministically: to the role (at each level) or framework
//! offered to least recently (a count of offers made, kept across passes), then to the
//! smaller name or id; `role/.` still comes before its children on equal shares. The offer holds what may be allocated to the role (the unreserved part and
//! what is reserved for it or an ancestor), capped by the quota limits of the role and its
//! ancestors. An agent may hold several offers at once (to different roles), never of the
//! same resources.
//!
//! Invariants: shares are `(allocated + offered) / cluster total` over scalars; a filter
//! refuses an agent's resources only to the role whose offer made it, only while
//! `now < until` and only if they are within the refused resources (Mesos semantics: more
//! than was refused is offered again), and REVIVE naming roles clears only those roles'
//! filters (a re-subscription clears the framework's, a re-registration with other
//! resources or attributes every framework's for that agent); an offer never takes
//! a role (or an ancestor) beyond its quota limit, consumption counting unallocated
//! reservations (see [`roles`]).
//!
//! Cost: a round makes one offer per agent or more, so the per-offer path allocates
//! nothing for plain agents: agents are reached by slot (see `AgentTable`), frameworks by
//! their index in the pass, roles are shared [`Name`](crate::Name)s, the DRF order is kept
//! as packed keys (only the first leaf is looked for unless it cannot take the agent), the
//! frameworks' books take a pass's offers once at its end, and offers leave the core in
//! compact form ([`Command::Offers`](crate::Command::Offers)), their wire form made by the
//! edge.
//!
//! Submodules: `sorter` (the books of a pass: role tree, DRF order, quota), `offers`
//! (making, booking, sending and removing offers) and `filters` (refuse filters); this
//! module runs the pass ([`Core::allocate`]), chooses who gets each agent's resources and
//! keeps the agents' offerable state.

mod filters;
mod offers;
mod sorter;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::resources::ScalarCaps;
use crate::roles::{self, DEFAULT_ROLE};
use crate::{AgentId, AgentMode, Core, Framework, FrameworkId, OfferOut, Resources};
use strata_proto::names::GPUS;

use self::filters::refuses;
pub(crate) use self::filters::retain_filters;
use self::offers::MAX_OFFERS_PER_EVENT;
use self::sorter::{Leaf, Pass, Share, share_of};

/// The roles offered to in a pass, each with its eligible frameworks by share in the role
/// (as indices into the pass's sorted frameworks).
type Demand = BTreeMap<String, BTreeSet<(Share, u64, usize)>>;

/// Which stage of a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Guarantees,
    Fair,
}

impl Core {
    /// A framework's dominant share: the largest fraction of any scalar of the cluster total
    /// that it holds (allocated + offered), over all its roles.
    pub(crate) fn dominant_share(&self, fw: &Framework) -> f64 {
        let mut share: f64 = 0.0;
        for (name, total) in self.cluster_total.scalars() {
            if total > 0 {
                let held = fw.allocated.scalar(name) + fw.offered.scalar(name);
                share = share.max(held as f64 / total as f64);
            }
        }
        share
    }

    /// The weight of a role (1 unless set).
    pub(crate) fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).copied().unwrap_or(1.0)
    }

    /// Recomputes the agent's free resources (total minus allocated minus offered), then
    /// whether it can be offered, and queues it for the next pass. Called after every
    /// change to an agent's books.
    pub(crate) fn refresh_offerable(&mut self, agent_id: &AgentId) {
        if let Some(slot) = self.agents.slot(agent_id) {
            self.refresh_slot(slot);
        }
    }

    /// [`Core::refresh_offerable`] for the agent in `slot`.
    fn refresh_slot(&mut self, slot: usize) {
        let agent = &mut self.agents.slots[slot];
        let mut free = agent.total.minus(&agent.allocated);
        if !agent.offered.is_empty() {
            free.subtract(&agent.offered);
        }
        agent.free = free;
        let offerable = agent.conn().is_some()
            && agent.mode == AgentMode::Active
            && agent.free.is_allocatable();
        self.offerable[slot] = offerable;
        if offerable && !self.pending[slot] {
            self.pending[slot] = true;
            self.pending_agents.push(slot);
        }
    }

    /// Adds an agent the core has not seen before.
    pub(crate) fn insert_agent(&mut self, agent: crate::Agent) {
        self.agents.insert(agent);
        self.offerable.push(false);
        self.pending.push(false);
        self.unordered.push(self.agents.slots.len() - 1);
    }

    /// Places the agents added since the last pass in the visiting order: one by one when
    /// they are few, else by sorting all again.
    fn order_agents(&mut self) {
        if self.unordered.is_empty() {
            return;
        }
        let slots = &self.agents.slots;
        let (order, rank) = &mut self.agent_order;
        let added = std::mem::take(&mut self.unordered);
        if added.len() * 16 < order.len() {
            for slot in added {
                let at = order.partition_point(|&s| slots[s].id < slots[slot].id);
                order.insert(at, slot);
            }
        } else {
            order.extend(added);
            order.sort_unstable_by(|&a, &b| slots[a].id.cmp(&slots[b].id));
        }
        rank.resize(slots.len(), 0);
        for (i, &slot) in order.iter().enumerate() {
            rank[slot] = i;
        }
    }

    /// Runs one allocation pass if anything changed since the last one (see the module
    /// documentation). The edge calls this once after draining a batch of events.
    pub fn allocate(&mut self, now: Duration) {
        let full = std::mem::take(&mut self.full_allocation);
        let pending = self.take_pending();
        let Some((fids, demand)) = self.demand() else {
            return;
        };
        let Some(pending) = self.still_offerable(full, pending) else {
            return;
        };
        let mut pass = self.start_pass(fids, demand);
        let candidates = self.candidates(full, pending);
        let batches = self.offer_candidates(&mut pass, &candidates, now);
        self.end_pass(&mut pass);
        self.send_offers(&pass.fids, batches);
    }

    /// The agents queued since the last pass, taken off the queue.
    fn take_pending(&mut self) -> Vec<usize> {
        let pending = std::mem::take(&mut self.pending_agents);
        for &slot in &pending {
            self.pending[slot] = false;
        }
        pending
    }

    /// The connected frameworks, sorted by id, and the roles they want offers for (their
    /// unsuppressed roles) with each role's frameworks by share; `None` when no role wants
    /// any.
    fn demand(&self) -> Option<(Vec<Arc<FrameworkId>>, Demand)> {
        let mut demand = Demand::new();
        let empty = Resources::new();
        let mut connected: Vec<&Framework> = self
            .frameworks
            .values()
            .filter(|fw| fw.conn.is_some())
            .collect();
        connected.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        for (index, fw) in connected.iter().enumerate() {
            for role in &fw.roles {
                if fw.suppressed.contains(role) {
                    continue;
                }
                let held = fw.by_role.get(role).unwrap_or(&empty);
                demand.entry(role.clone()).or_default().insert((
                    Share::new(share_of(held, &self.cluster_total)),
                    fw.last_offered,
                    index,
                ));
            }
        }
        if demand.is_empty() {
            return None;
        }
        let fids = connected.iter().map(|fw| Arc::new(fw.id.clone())).collect();
        Some((fids, demand))
    }

    /// Whether there is an agent to offer: on a full pass any offerable agent, otherwise
    /// the pending agents still offerable (returned); `None` when there is none.
    fn still_offerable(&self, full: bool, mut pending: Vec<usize>) -> Option<Vec<usize>> {
        if !full {
            pending.retain(|&slot| self.offerable[slot]);
            if pending.is_empty() {
                return None;
            }
        } else if !self.offerable.contains(&true) {
            return None;
        }
        Some(pending)
    }

    /// Builds the pass's books and takes the frameworks' refuse filters into it (put back
    /// by [`Core::end_pass`]); with a headroom to keep, sums what the offerable agents have
    /// free.
    fn start_pass(&mut self, fids: Vec<Arc<FrameworkId>>, demand: Demand) -> Pass {
        let mut pass = self.build_pass(fids, demand);
        pass.last_offered = pass
            .fids
            .iter()
            .map(|fid| self.frameworks.get(fid).map_or(0, |fw| fw.last_offered))
            .collect();
        pass.serials = pass
            .fids
            .iter()
            .map(|fid| self.frameworks.get(fid).map_or(0, |fw| fw.serial))
            .collect();
        pass.gpu_resources = pass
            .fids
            .iter()
            .map(|fid| self.frameworks.get(fid).is_some_and(|fw| fw.gpu_resources))
            .collect();
        pass.filters = pass
            .fids
            .iter()
            .map(|fid| {
                self.frameworks
                    .get_mut(fid)
                    .map(|fw| std::mem::take(&mut fw.filters))
                    .unwrap_or_default()
            })
            .collect();
        pass.min_allocatable = pass
            .fids
            .iter()
            .map(|fid| {
                self.frameworks
                    .get_mut(fid)
                    .map(|fw| std::mem::take(&mut fw.min_allocatable))
                    .unwrap_or_default()
            })
            .collect();
        if !pass.headroom.is_empty() {
            for (agent, _) in self
                .agents
                .values()
                .zip(&self.offerable)
                .filter(|(_, offerable)| **offerable)
            {
                pass.available.add_unreserved_scalars(&agent.free);
            }
        }
        pass
    }

    /// The agents to visit, by id: every offerable agent on a full pass, else the pending
    /// ones.
    fn candidates(&mut self, full: bool, mut pending: Vec<usize>) -> Vec<usize> {
        self.order_agents();
        let (order, rank) = &self.agent_order;
        if full {
            order
                .iter()
                .copied()
                .filter(|&slot| self.offerable[slot])
                .collect()
        } else {
            pending.sort_unstable_by_key(|&slot| rank[slot]);
            pending
        }
    }

    /// Offers the candidates' free resources, stage by stage; returns the offers by
    /// framework index (sent in index order, which is framework id order).
    fn offer_candidates(
        &mut self,
        pass: &mut Pass,
        candidates: &[usize],
        now: Duration,
    ) -> Vec<Vec<OfferOut>> {
        let mut batches: Vec<Vec<OfferOut>> = vec![Vec::new(); pass.fids.len()];
        // A framework's first offer reserves room for its even share of the candidates.
        let batch_room = (candidates.len() / pass.fids.len().max(1) + 1).min(MAX_OFFERS_PER_EVENT);
        let stages: &[Stage] = if pass.quotas {
            &[Stage::Guarantees, Stage::Fair]
        } else {
            &[Stage::Fair]
        };
        for &stage in stages {
            for &slot in candidates {
                if stage == Stage::Guarantees && !pass.any_unmet() {
                    break;
                }
                while let Some((leaf, fw, resources)) = self.choose(pass, stage, slot, now) {
                    self.record_in_pass(pass, leaf, fw, &resources);
                    let (fid, role) = (&pass.fids[fw], &pass.leaves[leaf].role);
                    let offer = self.make_offer(slot, fid, role, resources, now);
                    let batch = &mut batches[fw];
                    if batch.capacity() == 0 {
                        batch.reserve(batch_room);
                    }
                    batch.push(offer);
                }
            }
        }
        batches
    }

    /// Puts the refuse filters taken by [`Core::start_pass`] back in their frameworks, and
    /// keeps when frameworks and roles were last offered to.
    fn end_pass(&mut self, pass: &mut Pass) {
        let filters = std::mem::take(&mut pass.filters);
        for ((fid, filters), &last) in pass.fids.iter().zip(filters).zip(&pass.last_offered) {
            if let Some(fw) = self.frameworks.get_mut(fid) {
                fw.filters = filters;
                fw.last_offered = last;
            }
        }
        let mins = std::mem::take(&mut pass.min_allocatable);
        for (fid, min) in pass.fids.iter().zip(mins) {
            if let Some(fw) = self.frameworks.get_mut(fid) {
                fw.min_allocatable = min;
            }
        }
        self.offer_seq = pass.seq;
        // Only the roles of this pass are kept, so the map stays as small as the role tree.
        self.role_offered = pass
            .nodes
            .iter()
            .filter(|n| n.last_offered > 0)
            .map(|n| (n.name.clone(), n.last_offered))
            .collect();
    }

    /// The leaf, framework (index into [`Pass::fids`]) and resources of the next offer of
    /// the agent in `slot`, if any.
    fn choose(
        &self,
        pass: &mut Pass,
        stage: Stage,
        slot: usize,
        now: Duration,
    ) -> Option<(usize, usize, Resources)> {
        let agent = &self.agents.slots[slot];
        if agent.conn().is_none() || agent.mode != AgentMode::Active {
            return None;
        }
        let free = &agent.free;
        if !free.is_allocatable() {
            return None;
        }
        // Most often the first leaf takes it: no need to sort the others.
        let first = pass.first()?;
        if let Some(found) = self.try_leaf(pass, stage, first, agent, now) {
            return Some(found);
        }
        pass.sort();
        for i in 0..pass.order.len() {
            let leaf = pass.order[i];
            if leaf == first {
                continue;
            }
            if let Some(found) = self.try_leaf(pass, stage, leaf, agent, now) {
                return Some(found);
            }
        }
        None
    }

    /// Whether `leaf` takes (some of) the agent's free resources in `stage`: the framework
    /// and the resources.
    fn try_leaf(
        &self,
        pass: &Pass,
        stage: Stage,
        leaf: usize,
        agent: &crate::Agent,
        now: Duration,
    ) -> Option<(usize, usize, Resources)> {
        let free = &agent.free;
        let guaranteed = pass.needs_guarantee(leaf);
        if stage == Stage::Guarantees && !guaranteed {
            return None;
        }
        let mut resources = if free.has_reservations() {
            free.allocatable_to(&pass.leaves[leaf].role)
        } else {
            free.clone()
        };
        if pass.quotas {
            pass.apply_limits(leaf, &mut resources);
            if stage == Stage::Guarantees && !pass.headroom.is_empty() {
                // As Mesos: a role below its guarantee gets what its guarantee names up to
                // what is missing, and of other scalars only what the unmet guarantees of
                // other roles leave (a cpus-only guarantee cannot take the memory another
                // role's guarantee needs). Its reservations are its own either way.
                let own = pass.unmet_of(leaf);
                let mut caps = ScalarCaps::new();
                for (name, _) in resources.scalars() {
                    let mine = own.scalar(name);
                    let cap = if mine > 0 {
                        mine
                    } else {
                        let others = pass.headroom.scalar(name) - mine;
                        (pass.available.scalar(name) - others).max(0)
                    };
                    caps.set(name, cap + resources.reserved_scalar(name));
                }
                resources.cap_scalars(&caps);
            } else if stage == Stage::Fair && !guaranteed && !pass.headroom.is_empty() {
                // Hold back what unmet guarantees of other roles still need.
                let mut caps = ScalarCaps::new();
                for (name, need) in pass.headroom.scalars() {
                    let spare = (pass.available.scalar(name) - need).max(0);
                    caps.set(name, spare + resources.reserved_scalar(name));
                }
                resources.cap_scalars(&caps);
            }
        }
        if !resources.is_allocatable() {
            return None;
        }
        // As Mesos' GPU filtering: an agent with GPUs goes only to frameworks that declared
        // GPU_RESOURCES, so that CPU-only work does not strand its GPUs.
        let has_gpus = agent.total.scalar(GPUS) > 0;
        let chosen = pass.leaves[leaf].frameworks.iter().find(|&&(_, _, fw)| {
            let filters = &pass.filters[fw];
            let role = &pass.leaves[leaf].role;
            (pass.gpu_resources[fw] || !has_gpus)
                && holds_minimum(pass.min_allocatable[fw].get(&**role), &resources)
                && (filters.is_empty() || !refuses(filters, &agent.id, role, &resources, now))
                && !agent
                    .declined
                    .refuses(self.tick_generation, pass.serials[fw], role)
        });
        chosen.map(|&(_, _, fw)| (leaf, fw, resources))
    }

    /// Accounts an offer about to be made in the pass's books.
    fn record_in_pass(&self, pass: &mut Pass, leaf: usize, fw: usize, resources: &Resources) {
        let total = &self.cluster_total;
        pass.seq += 1;
        let seq = pass.seq;
        let recency = pass.next_recency;
        pass.next_recency = pass.next_recency.saturating_add(1);
        let l = &mut pass.leaves[leaf];
        l.own.add_scalars(resources);
        l.own_share = share_of(&l.own, total);
        for &n in &l.path {
            let node = &mut pass.nodes[n];
            node.subtree.add_scalars(resources);
            node.share = share_of(&node.subtree, total) / node.weight;
            node.last_offered = seq;
            node.recency = recency;
        }
        // Reservations offered are no longer unallocated (they count in `subtree` now).
        if pass.quotas && resources.has_reservations() {
            for role in resources.reservation_roles() {
                let part = resources.reserved_for(role);
                for name in roles::self_and_ancestors(role) {
                    if let Some(node) = pass.nodes.iter_mut().find(|n| n.name == name) {
                        node.reserved.subtract_scalars(&part);
                    }
                }
            }
        }
        let Leaf {
            role,
            frameworks,
            held,
            ..
        } = l;
        let held = held.entry(fw).or_insert_with(|| {
            self.frameworks[&pass.fids[fw]]
                .by_role
                .get(&**role)
                .cloned()
                .unwrap_or_default()
        });
        let old = Share::new(share_of(held, total));
        held.add_scalars(resources);
        let last = &mut pass.last_offered[fw];
        if frameworks.remove(&(old, *last, fw)) {
            frameworks.insert((Share::new(share_of(held, total)), seq, fw));
        }
        *last = seq;
        pass.dirty = true;
        pass.update_keys(leaf);
        // Once every guarantee is met it stays met for the pass (shares only grow), and
        // there is no headroom left to keep.
        if pass.any_unmet() {
            pass.available.subtract_unreserved_scalars(resources);
            pass.recompute_headroom();
        }
    }
}

/// Whether `resources` hold at least one of the sets of quantities a framework's offer
/// filter asks for its role (no filter: anything allocatable will do).
fn holds_minimum(min: Option<&crate::MinAllocatable>, resources: &Resources) -> bool {
    min.is_none_or(|sets| {
        sets.iter().any(|set| {
            set.iter()
                .all(|(name, milli)| resources.scalar(name) >= *milli)
        })
    })
}

/// Adds `resources` (scalars) to a framework's books for `role`.
pub(crate) fn add_role(by_role: &mut BTreeMap<String, Resources>, role: &str, r: &Resources) {
    if !r.has_scalars() {
        return;
    }
    match by_role.get_mut(role) {
        Some(held) => held.add_scalars(r),
        None => {
            let mut held = Resources::new();
            held.add_scalars(r);
            by_role.insert(role.to_owned(), held);
        }
    }
}

/// Removes `resources` (scalars) from a framework's books for `role`.
pub(crate) fn sub_role(by_role: &mut BTreeMap<String, Resources>, role: &str, r: &Resources) {
    if let Some(held) = by_role.get_mut(role) {
        held.subtract_scalars(r);
        if held.is_empty() {
            by_role.remove(role);
        }
    }
}

/// The role of a framework that names none.
pub(crate) fn default_roles() -> Vec<String> {
    vec![DEFAULT_ROLE.to_owned()]
}
