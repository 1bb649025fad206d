//! Weighted, hierarchical DRF with quota and reservations; offers and refuse filters.
//!
//! A pass walks the candidate agents (all offerable agents on a full pass, otherwise only
//! those whose free resources changed) in two stages, as Mesos' hierarchical allocator does:
//!
//! 1. **guarantees**: only roles whose quota guarantee (or an ancestor's) is not yet met
//!    are offered to;
//! 2. **fair sharing**: every role, but the unreserved scalars still needed to meet the
//!    other roles' unmet guarantees (the headroom) are held back, so a guarantee is set
//!    aside even while its role is idle.
//!
//! For one agent, roles are tried in hierarchical weighted-DRF order: at each level of the
//! role tree the child with the lowest dominant share divided by its weight comes first
//! (the frameworks subscribed to a role directly form a virtual child `role/.`, weight 1).
//! Within a role the subscribed, unsuppressed framework with the lowest dominant share in
//! that role whose filters do not refuse the resources gets them; ties go to the smaller
//! name or id. The offer holds what may be allocated to the role (the unreserved part and
//! what is reserved for it or an ancestor), capped by the quota limits of the role and its
//! ancestors. An agent may hold several offers at once (to different roles), never of the
//! same resources.
//!
//! Invariants: shares are `(allocated + offered) / cluster total` over scalars; a filter
//! refuses an agent's resources only while `now < until` and only if they are within the
//! refused resources (Mesos semantics: more than was refused is offered again), and REVIVE
//! naming roles clears only the filters made by offers to those roles; an offer never takes
//! a role (or an ancestor) beyond its quota limit, consumption counting unallocated
//! reservations (see [`roles`]).
//!
//! Cost: a round makes one offer per agent or more, so the per-offer path allocates
//! nothing for plain agents: agents are reached by slot (see `AgentTable`), frameworks by
//! their index in the pass, roles are shared [`Name`]s, the DRF order is kept as packed
//! keys (only the first leaf is looked for unless it cannot take the agent), the
//! frameworks' books take a pass's offers once at its end, and offers leave the core in
//! compact form ([`Command::Offers`]), their wire form made by the edge.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use strata_proto::event;

use super::resources::ScalarCaps;
use super::roles::{self, DEFAULT_ROLE, Quota};
use super::{
    AgentId, AgentMode, Command, ConnId, Core, FastMap, Filter, Framework, FrameworkId, Name,
    Offer, OfferBatch, OfferId, OfferOut, Resources,
};

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

/// The dominant share of `held` in `total` (scalars).
fn share_of(held: &Resources, total: &Resources) -> f64 {
    held.share_of(total)
}

/// A DRF key entry: a share (finite, not negative, so its bits order as it does) and a name
/// rank.
fn pack(share: f64, rank: u32) -> u128 {
    (u128::from(share.to_bits()) << 32) | u128::from(rank)
}

/// Which stage of a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Guarantees,
    Fair,
}

/// A node of the role tree in a pass: a role with frameworks, quota or usage, or an
/// ancestor of one.
struct Node {
    name: String,
    weight: f64,
    /// Allocated plus offered to the role's subtree, scalars.
    subtree: Resources,
    /// Reserved for the role's subtree and neither allocated nor offered, scalars (only
    /// counted for nodes with a quota): a quota's consumption is `subtree + reserved`.
    reserved: Resources,
    /// Dominant share of `subtree` divided by the weight.
    share: f64,
    quota: Option<Quota>,
    /// The quota's guarantee is not met yet.
    unmet: bool,
    /// Its place among the nodes of the pass by name, from 1.
    rank: u32,
}

/// A role frameworks are offered to in a pass.
struct Leaf {
    role: Name,
    /// Node indices from the top-level ancestor down to the role itself.
    path: Vec<usize>,
    /// What its own frameworks hold (the virtual `role/.` child), scalars.
    own: Resources,
    own_share: f64,
    /// Its eligible frameworks by share in the role, as indices into [`Pass::fids`] (which
    /// is sorted, so ties still go to the smaller id).
    frameworks: BTreeSet<(Share, usize)>,
    /// What each framework offered to in this pass holds in the role, scalars: its books
    /// (`by_role`) plus the offers of the pass, kept here so the pass need not look them up.
    held: FastMap<usize, Resources>,
}

/// The books of one allocation pass.
struct Pass {
    /// The connected frameworks of the pass, sorted by id.
    fids: Vec<Arc<FrameworkId>>,
    /// Whether each of `fids` has refuse filters (none are added during a pass).
    /// The refuse filters of each of `fids`, taken out of the frameworks for the pass (none
    /// are added during a pass) and put back at its end.
    filters: Vec<FastMap<AgentId, Filter>>,
    nodes: Vec<Node>,
    leaves: Vec<Leaf>,
    /// Leaf indices in hierarchical DRF order, valid unless `dirty`.
    order: Vec<usize>,
    dirty: bool,
    /// The DRF keys of the leaves (see [`Pass::refresh_keys`]), `stride` entries each.
    keys: Vec<u128>,
    stride: usize,
    /// Whether any quota is set (limits and guarantees to check).
    quotas: bool,
    /// Unreserved scalars still needed to meet unmet guarantees, summed over roles.
    headroom: Resources,
    /// Unreserved free scalars of the active agents (only computed with a headroom).
    available: Resources,
}

impl Pass {
    /// Recomputes the leaves' DRF keys after shares changed. Leaves go in hierarchical DRF
    /// order: level by level the lower (weighted share, name) first; a role's own frameworks
    /// (`role/.`, weight 1) come before its children on equal shares. A leaf's key is the
    /// (share, name rank) of the nodes on its path, then (its own share, rank 0), each
    /// packed in a `u128` (shares are finite and not negative, so their bits order as they
    /// do): comparing keys as sequences compares the first level where two paths part, as the
    /// hierarchy does (rank 0 is the empty name of `role/.`).
    fn refresh_keys(&mut self) {
        let stride = self.stride;
        let mut keys = std::mem::take(&mut self.keys);
        // Entries after a leaf's own share are never reached: two keys that agree up to
        // there belong to one leaf.
        keys.resize(self.leaves.len() * stride, 0);
        for (leaf, key) in self.leaves.iter().zip(keys.chunks_exact_mut(stride)) {
            for (entry, &n) in key.iter_mut().zip(&leaf.path) {
                *entry = pack(self.nodes[n].share, self.nodes[n].rank);
            }
            key[leaf.path.len()] = pack(leaf.own_share, 0);
        }
        self.keys = keys;
    }

    /// Updates the keys after the shares of `leaf` and its ancestors changed: those
    /// ancestors' entries in every leaf below them, and the leaf's own share.
    fn update_keys(&mut self, leaf: usize) {
        let stride = self.stride;
        let path = &self.leaves[leaf].path;
        for (other, key) in self.leaves.iter().zip(self.keys.chunks_exact_mut(stride)) {
            for ((entry, &a), &b) in key.iter_mut().zip(path).zip(&other.path) {
                if a != b {
                    break;
                }
                *entry = pack(self.nodes[a].share, self.nodes[a].rank);
            }
        }
        self.keys[leaf * stride + path.len()] = pack(self.leaves[leaf].own_share, 0);
    }

    fn key(&self, leaf: usize) -> &[u128] {
        &self.keys[leaf * self.stride..(leaf + 1) * self.stride]
    }

    /// The first leaf in DRF order.
    fn first(&self) -> Option<usize> {
        (0..self.leaves.len()).min_by(|&a, &b| self.key(a).cmp(self.key(b)))
    }

    /// Puts `order` in DRF order.
    fn sort(&mut self) {
        if !self.dirty {
            return;
        }
        let mut order = std::mem::take(&mut self.order);
        order.sort_by(|&a, &b| self.key(a).cmp(self.key(b)));
        self.order = order;
        self.dirty = false;
    }

    /// Whether the leaf or an ancestor has a guarantee not yet met.
    fn needs_guarantee(&self, leaf: usize) -> bool {
        self.quotas && self.leaves[leaf].path.iter().any(|&n| self.nodes[n].unmet)
    }

    fn any_unmet(&self) -> bool {
        self.quotas && self.nodes.iter().any(|n| n.unmet)
    }

    /// Caps `resources` by the quota limits of the leaf's role and its ancestors: what is
    /// left of a limit after the consumption (allocated, offered and unallocated
    /// reservations), plus the reservations of the node's subtree in `resources` (counted
    /// already).
    fn apply_limits(&self, leaf: usize, resources: &mut Resources) {
        for &n in &self.leaves[leaf].path {
            let node = &self.nodes[n];
            if let Some(quota) = &node.quota
                && !quota.limit.is_empty()
            {
                let mut caps = ScalarCaps::new();
                for (name, limit) in quota.limit.scalars() {
                    let consumed = node.subtree.scalar(name) + node.reserved.scalar(name);
                    let counted = resources.reserved_scalar_within(&node.name, name);
                    caps.set(name, (limit - consumed).max(0) + counted);
                }
                resources.cap_scalars(&caps);
            }
        }
    }

    fn recompute_headroom(&mut self) {
        let mut need = Resources::new();
        for node in &mut self.nodes {
            if let Some(quota) = &node.quota {
                node.unmet = false;
                for (name, g) in quota.guarantee.scalars() {
                    let consumed = node.subtree.scalar(name) + node.reserved.scalar(name);
                    let missing = g - consumed;
                    if missing > 0 {
                        node.unmet = true;
                        need.add_scalar(name, missing);
                    }
                }
            }
        }
        self.headroom = need;
    }
}

impl Core {
    /// A framework's dominant share: the largest fraction of any scalar of the cluster total
    /// that it holds (allocated + offered), over all its roles.
    pub(super) fn dominant_share(&self, fw: &Framework) -> f64 {
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
    pub(super) fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).copied().unwrap_or(1.0)
    }

    /// Recomputes the agent's free resources (total minus allocated minus offered), then
    /// whether it can be offered, and queues it for the next pass. Called after every
    /// change to an agent's books.
    pub(super) fn refresh_offerable(&mut self, agent_id: &AgentId) {
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
    pub(super) fn insert_agent(&mut self, agent: super::Agent) {
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

    /// The role tree of a pass: every role with eligible frameworks, usage or quota, and
    /// their ancestors.
    fn build_pass(
        &self,
        fids: Vec<Arc<FrameworkId>>,
        frameworks: BTreeMap<String, BTreeSet<(Share, usize)>>,
    ) -> Pass {
        let mut pass = Pass {
            fids,
            filters: Vec::new(),
            nodes: Vec::new(),
            leaves: Vec::new(),
            order: Vec::new(),
            dirty: true,
            keys: Vec::new(),
            stride: 1,
            quotas: !self.quotas.is_empty(),
            headroom: Resources::new(),
            available: Resources::new(),
        };
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut node = |pass: &mut Pass, name: &str| -> usize {
            if let Some(&i) = index.get(name) {
                return i;
            }
            let i = pass.nodes.len();
            pass.nodes.push(Node {
                name: name.to_owned(),
                weight: self.weight(name),
                subtree: Resources::new(),
                reserved: Resources::new(),
                share: 0.0,
                quota: self.quotas.get(name).cloned(),
                unmet: false,
                rank: 0,
            });
            index.insert(name.to_owned(), i);
            i
        };
        let mut own: HashMap<&str, Resources> = HashMap::new();
        for fw in self.frameworks.values() {
            for (role, held) in &fw.by_role {
                own.entry(role).or_default().add_scalars(held);
            }
        }
        for (role, held) in &own {
            for name in roles::self_and_ancestors(role) {
                let n = node(&mut pass, name);
                pass.nodes[n].subtree.add_scalars(held);
            }
        }
        for role in self.quotas.keys() {
            for name in roles::self_and_ancestors(role) {
                node(&mut pass, name);
            }
        }
        for (role, set) in frameworks {
            let mut path: Vec<usize> = roles::self_and_ancestors(&role)
                .map(|name| node(&mut pass, name))
                .collect();
            path.reverse();
            let own = own.get(role.as_str()).cloned().unwrap_or_default();
            pass.leaves.push(Leaf {
                own_share: share_of(&own, &self.cluster_total),
                own,
                role: Name::from(role),
                path,
                frameworks: set,
                held: FastMap::default(),
            });
        }
        // Unallocated reservations count in the quota consumption of their role and its
        // ancestors.
        if pass.quotas {
            for agent in self.agents.values().filter(|a| a.reachable()) {
                for role in agent.free.reservation_roles() {
                    let part = agent.free.reserved_for(role);
                    for name in roles::self_and_ancestors(role) {
                        if let Some(&n) = index.get(name)
                            && pass.nodes[n].quota.is_some()
                        {
                            pass.nodes[n].reserved.add_scalars(&part);
                        }
                    }
                }
            }
        }
        for n in &mut pass.nodes {
            n.share = share_of(&n.subtree, &self.cluster_total) / n.weight;
        }
        pass.order = (0..pass.leaves.len()).collect();
        let mut by_name: Vec<usize> = (0..pass.nodes.len()).collect();
        by_name.sort_by(|&a, &b| pass.nodes[a].name.cmp(&pass.nodes[b].name));
        for (rank, n) in (1..).zip(by_name) {
            pass.nodes[n].rank = rank;
        }
        pass.stride = pass.leaves.iter().map(|l| l.path.len()).max().unwrap_or(0) + 1;
        pass.refresh_keys();
        if pass.quotas {
            pass.recompute_headroom();
        }
        pass
    }

    /// Runs one allocation pass if anything changed since the last one (see the module
    /// documentation). The edge calls this once after draining a batch of events.
    pub fn allocate(&mut self, now: Duration) {
        let full = std::mem::take(&mut self.full_allocation);
        let mut pending = std::mem::take(&mut self.pending_agents);
        for &slot in &pending {
            self.pending[slot] = false;
        }
        let mut frameworks: BTreeMap<String, BTreeSet<(Share, usize)>> = BTreeMap::new();
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
                frameworks
                    .entry(role.clone())
                    .or_default()
                    .insert((Share(share_of(held, &self.cluster_total)), index));
            }
        }
        if frameworks.is_empty() {
            return;
        }
        let fids: Vec<Arc<FrameworkId>> =
            connected.iter().map(|fw| Arc::new(fw.id.clone())).collect();
        drop(connected);
        if !full {
            pending.retain(|&slot| self.offerable[slot]);
            if pending.is_empty() {
                return;
            }
        } else if !self.offerable.contains(&true) {
            return;
        }
        let mut pass = self.build_pass(fids, frameworks);
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
        // The agents to visit, by id.
        self.order_agents();
        let (order, rank) = &self.agent_order;
        let candidates: Vec<usize> = if full {
            order
                .iter()
                .copied()
                .filter(|&slot| self.offerable[slot])
                .collect()
        } else {
            pending.sort_unstable_by_key(|&slot| rank[slot]);
            pending
        };
        // Offers by framework index; sent in index order, which is framework id order.
        let mut batches: Vec<Vec<OfferOut>> = vec![Vec::new(); pass.fids.len()];
        // A framework's first offer reserves room for its even share of the candidates.
        let batch_room = (candidates.len() / pass.fids.len().max(1) + 1).min(MAX_OFFERS_PER_EVENT);
        let stages: &[Stage] = if pass.quotas {
            &[Stage::Guarantees, Stage::Fair]
        } else {
            &[Stage::Fair]
        };
        for &stage in stages {
            for &slot in &candidates {
                if stage == Stage::Guarantees && !pass.any_unmet() {
                    break;
                }
                while let Some((leaf, fw, resources)) = self.choose(&mut pass, stage, slot, now) {
                    self.record_in_pass(&mut pass, leaf, fw, &resources);
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
        for (fid, filters) in pass.fids.iter().zip(std::mem::take(&mut pass.filters)) {
            if let Some(fw) = self.frameworks.get_mut(fid) {
                fw.filters = filters;
            }
        }
        for (fw, mut offers) in batches.into_iter().enumerate() {
            if offers.is_empty() {
                continue;
            }
            let fid = &pass.fids[fw];
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
        agent: &super::Agent,
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
            if stage == Stage::Fair && !guaranteed && !pass.headroom.is_empty() {
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
        let chosen = pass.leaves[leaf].frameworks.iter().find(|&&(_, fw)| {
            let filters = &pass.filters[fw];
            filters.is_empty() || !refuses(filters, &agent.id, &resources, now)
        });
        chosen.map(|&(_, fw)| (leaf, fw, resources))
    }

    /// Accounts an offer about to be made in the pass's books.
    fn record_in_pass(&self, pass: &mut Pass, leaf: usize, fw: usize, resources: &Resources) {
        let total = &self.cluster_total;
        let l = &mut pass.leaves[leaf];
        l.own.add_scalars(resources);
        l.own_share = share_of(&l.own, total);
        for &n in &l.path {
            let node = &mut pass.nodes[n];
            node.subtree.add_scalars(resources);
            node.share = share_of(&node.subtree, total) / node.weight;
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
        let old = Share(share_of(held, total));
        held.add_scalars(resources);
        if frameworks.remove(&(old, fw)) {
            frameworks.insert((Share(share_of(held, total)), fw));
        }
        pass.dirty = true;
        pass.update_keys(leaf);
        // Once every guarantee is met it stays met for the pass (shares only grow), and
        // there is no headroom left to keep.
        if pass.any_unmet() {
            pass.available.subtract_unreserved_scalars(resources);
            pass.recompute_headroom();
        }
    }

    /// Makes an offer of the agent in `slot`. The framework's books take it in
    /// [`Core::book_offers`] at the end of the pass (a pass reads only the books of before it).
    fn make_offer(
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
    pub(super) fn remove_offer(&mut self, id: &OfferId, rescind: bool) -> Option<Offer> {
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
    pub(super) fn rescind_agent_offers(&mut self, agent_id: &AgentId) {
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
    pub(super) fn rescind_role_offers(&mut self, role: &str) {
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
    pub(super) fn remove_framework_offers(&mut self, framework_id: &FrameworkId, rescind: bool) {
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
        role: &Name,
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
                    role: role.clone(),
                    resources,
                    until: now + refuse,
                },
            );
        }
    }

    /// Rescinds offers older than the offer timeout, if there is one.
    pub(super) fn expire_offers(&mut self, now: Duration) {
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

    pub(super) fn expire_filters(&mut self, now: Duration) {
        for fw in self.frameworks.values_mut() {
            fw.filters.retain(|_, f| now < f.until);
        }
    }
}

/// Adds `resources` (scalars) to a framework's books for `role`.
pub(super) fn add_role(by_role: &mut BTreeMap<String, Resources>, role: &str, r: &Resources) {
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
pub(super) fn sub_role(by_role: &mut BTreeMap<String, Resources>, role: &str, r: &Resources) {
    if let Some(held) = by_role.get_mut(role) {
        held.subtract_scalars(r);
        if held.is_empty() {
            by_role.remove(role);
        }
    }
}

/// The role of a framework that names none.
pub(super) fn default_roles() -> Vec<String> {
    vec![DEFAULT_ROLE.to_owned()]
}

/// Whether one of a framework's `filters` refuses `free` on `agent_id` at `now`.
fn refuses(
    filters: &FastMap<AgentId, Filter>,
    agent_id: &AgentId,
    free: &Resources,
    now: Duration,
) -> bool {
    filters
        .get(agent_id)
        .is_some_and(|f| now < f.until && f.resources.contains(free))
}
