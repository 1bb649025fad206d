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
//! refused resources (Mesos semantics: more than was refused is offered again); an offer
//! never takes a role (or an ancestor) beyond its quota limit.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use strata_proto::{Offer as ProtoOffer, event};

use super::roles::{self, DEFAULT_ROLE, Quota};
use super::{
    AgentId, AgentMode, Core, FastMap, Filter, Framework, FrameworkId, Offer, OfferId, Resources,
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
    let mut share: f64 = 0.0;
    for (name, &t) in total.scalars() {
        if t > 0 {
            share = share.max(held.scalar(name) as f64 / t as f64);
        }
    }
    share
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
    /// Dominant share of `subtree` divided by the weight.
    share: f64,
    quota: Option<Quota>,
    /// The quota's guarantee is not met yet.
    unmet: bool,
}

/// A role frameworks are offered to in a pass.
struct Leaf {
    role: String,
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
    fids: Vec<FrameworkId>,
    /// Whether each of `fids` has refuse filters (none are added during a pass).
    filtered: Vec<bool>,
    nodes: Vec<Node>,
    leaves: Vec<Leaf>,
    /// Leaf indices in hierarchical DRF order, valid unless `dirty`.
    order: Vec<usize>,
    dirty: bool,
    /// Whether any quota is set (limits and guarantees to check).
    quotas: bool,
    /// Unreserved scalars still needed to meet unmet guarantees, summed over roles.
    headroom: Resources,
    /// Unreserved free scalars of the active agents (only computed with a headroom).
    available: Resources,
}

impl Pass {
    /// Orders leaves `a` and `b`: level by level the lower (weighted share, name) first; a
    /// role's own frameworks (`role/.`, weight 1) come before its children on equal shares.
    fn cmp_leaves(&self, a: usize, b: usize) -> Ordering {
        let (la, lb) = (&self.leaves[a], &self.leaves[b]);
        let key = |leaf: &Leaf, level: usize| -> (Share, &str) {
            match leaf.path.get(level) {
                Some(&n) => (Share(self.nodes[n].share), self.nodes[n].name.as_str()),
                None => (Share(leaf.own_share), ""),
            }
        };
        let depth = la.path.len().max(lb.path.len()) + 1;
        for level in 0..depth {
            if la.path.get(level).is_some() && la.path.get(level) == lb.path.get(level) {
                continue;
            }
            return key(la, level).cmp(&key(lb, level));
        }
        Ordering::Equal
    }

    fn sort(&mut self) {
        if self.dirty {
            let mut order = std::mem::take(&mut self.order);
            order.sort_by(|&a, &b| self.cmp_leaves(a, b));
            self.order = order;
            self.dirty = false;
        }
    }

    /// Whether the leaf or an ancestor has a guarantee not yet met.
    fn needs_guarantee(&self, leaf: usize) -> bool {
        self.quotas && self.leaves[leaf].path.iter().any(|&n| self.nodes[n].unmet)
    }

    fn any_unmet(&self) -> bool {
        self.quotas && self.nodes.iter().any(|n| n.unmet)
    }

    /// Caps `resources` by the quota limits of the leaf's role and its ancestors.
    fn apply_limits(&self, leaf: usize, resources: &mut Resources) {
        for &n in &self.leaves[leaf].path {
            if let Some(quota) = &self.nodes[n].quota
                && !quota.limit.is_empty()
            {
                resources.cap_scalars(&quota.headroom(&self.nodes[n].subtree));
            }
        }
    }

    fn recompute_headroom(&mut self) {
        let mut need = Resources::new();
        for node in &mut self.nodes {
            if let Some(quota) = &node.quota {
                node.unmet = false;
                for (name, &g) in quota.guarantee.scalars() {
                    let missing = g - node.subtree.scalar(name);
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
        for (name, &total) in self.cluster_total.scalars() {
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
        let offerable = match self.agents.get_mut(agent_id) {
            Some(agent) => {
                let mut free = agent.total.minus(&agent.allocated);
                if !agent.offered.is_empty() {
                    free.subtract(&agent.offered);
                }
                agent.free = free;
                agent.conn().is_some()
                    && agent.mode == AgentMode::Active
                    && agent.free.is_allocatable()
            }
            None => false,
        };
        if offerable {
            self.offerable.insert(agent_id.clone());
            self.pending_agents.insert(agent_id.clone());
        } else {
            self.offerable.remove(agent_id);
        }
    }

    /// The role tree of a pass: every role with eligible frameworks, usage or quota, and
    /// their ancestors.
    fn build_pass(
        &self,
        fids: Vec<FrameworkId>,
        filtered: Vec<bool>,
        frameworks: BTreeMap<String, BTreeSet<(Share, usize)>>,
    ) -> Pass {
        let mut pass = Pass {
            fids,
            filtered,
            nodes: Vec::new(),
            leaves: Vec::new(),
            order: Vec::new(),
            dirty: true,
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
                share: 0.0,
                quota: self.quotas.get(name).cloned(),
                unmet: false,
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
                role,
                path,
                frameworks: set,
                held: FastMap::default(),
            });
        }
        for n in &mut pass.nodes {
            n.share = share_of(&n.subtree, &self.cluster_total) / n.weight;
        }
        pass.order = (0..pass.leaves.len()).collect();
        if pass.quotas {
            pass.recompute_headroom();
        }
        pass
    }

    /// Runs one allocation pass if anything changed since the last one (see the module
    /// documentation). The edge calls this once after draining a batch of events.
    pub fn allocate(&mut self, now: Duration) {
        let full = std::mem::take(&mut self.full_allocation);
        let pending = std::mem::take(&mut self.pending_agents);
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
        let fids: Vec<FrameworkId> = connected.iter().map(|fw| fw.id.clone()).collect();
        let filtered: Vec<bool> = connected.iter().map(|fw| !fw.filters.is_empty()).collect();
        drop(connected);
        let mut pending = pending;
        if !full {
            pending.retain(|a| self.offerable.contains(a));
            if pending.is_empty() {
                return;
            }
        } else if self.offerable.is_empty() {
            return;
        }
        let mut pass = self.build_pass(fids, filtered, frameworks);
        if !pass.headroom.is_empty() {
            for id in self.offerable.iter() {
                if let Some(agent) = self.agents.get(id) {
                    pass.available.add_unreserved_scalars(&agent.free);
                }
            }
        }
        // A full pass walks the offerable set itself, taken out of the core for the pass (no
        // copy of every id): offers only ever remove agents from it, and those are removed
        // again when it is put back below.
        let candidates = if full {
            std::mem::take(&mut self.offerable)
        } else {
            pending
        };
        // In a full pass, the candidates (by position) that can be offered no more.
        let mut exhausted = vec![false; if full { candidates.len() } else { 0 }];
        // Offers by framework index; sent in index order, which is framework id order.
        let mut batches: Vec<Vec<ProtoOffer>> = vec![Vec::new(); pass.fids.len()];
        // A framework's first offer reserves room for its even share of the candidates.
        let batch_room = (candidates.len() / pass.fids.len().max(1) + 1).min(MAX_OFFERS_PER_EVENT);
        let stages: &[Stage] = if pass.quotas {
            &[Stage::Guarantees, Stage::Fair]
        } else {
            &[Stage::Fair]
        };
        for &stage in stages {
            for (position, agent_id) in candidates.iter().enumerate() {
                if stage == Stage::Guarantees && !pass.any_unmet() {
                    break;
                }
                while let Some((leaf, fw, resources)) = self.choose(&mut pass, stage, agent_id, now)
                {
                    self.record_in_pass(&mut pass, leaf, fw, &resources);
                    let (fid, role) = (&pass.fids[fw], pass.leaves[leaf].role.as_str());
                    let (offer, still_offerable) =
                        self.make_offer(agent_id, fid, role, resources, now);
                    let batch = &mut batches[fw];
                    if batch.capacity() == 0 {
                        batch.reserve(batch_room);
                    }
                    batch.push(offer);
                    if full && !still_offerable {
                        exhausted[position] = true;
                    }
                }
            }
        }
        if full {
            debug_assert!(
                self.offerable.is_empty(),
                "nothing is made offerable in a pass"
            );
            self.offerable = candidates
                .into_iter()
                .zip(exhausted)
                .filter_map(|(agent_id, gone)| (!gone).then_some(agent_id))
                .collect();
        }
        for (fw, mut offers) in batches.into_iter().enumerate() {
            if offers.is_empty() {
                continue;
            }
            let fid = &pass.fids[fw];
            while !offers.is_empty() {
                let rest = if offers.len() > MAX_OFFERS_PER_EVENT {
                    offers.split_off(MAX_OFFERS_PER_EVENT)
                } else {
                    Vec::new()
                };
                self.send_framework(fid, event::Event::Offers(event::Offers { offers }));
                offers = rest;
            }
        }
    }

    /// The leaf, framework (index into [`Pass::fids`]) and resources of the next offer of
    /// `agent_id`, if any.
    fn choose(
        &self,
        pass: &mut Pass,
        stage: Stage,
        agent_id: &AgentId,
        now: Duration,
    ) -> Option<(usize, usize, Resources)> {
        let agent = self.agents.get(agent_id)?;
        if agent.conn().is_none() || agent.mode != AgentMode::Active {
            return None;
        }
        let free = &agent.free;
        if !free.is_allocatable() {
            return None;
        }
        pass.sort();
        for &leaf in &pass.order {
            let guaranteed = pass.needs_guarantee(leaf);
            if stage == Stage::Guarantees && !guaranteed {
                continue;
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
                    let mut caps = BTreeMap::new();
                    for (name, &need) in pass.headroom.scalars() {
                        let spare = (pass.available.scalar(name) - need).max(0);
                        caps.insert(name.clone(), spare + resources.reserved().scalar(name));
                    }
                    resources.cap_scalars(&caps);
                }
            }
            if !resources.is_allocatable() {
                continue;
            }
            let chosen = pass.leaves[leaf].frameworks.iter().find(|&&(_, fw)| {
                !pass.filtered[fw]
                    || !self.frameworks[&pass.fids[fw]].refuses(agent_id, &resources, now)
            });
            if let Some(&(_, fw)) = chosen {
                return Some((leaf, fw, resources));
            }
        }
        None
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
        let Leaf {
            role,
            frameworks,
            held,
            ..
        } = l;
        let held = held.entry(fw).or_insert_with(|| {
            self.frameworks[&pass.fids[fw]]
                .by_role
                .get(role.as_str())
                .cloned()
                .unwrap_or_default()
        });
        let old = Share(share_of(held, total));
        held.add_scalars(resources);
        if frameworks.remove(&(old, fw)) {
            frameworks.insert((Share(share_of(held, total)), fw));
        }
        pass.dirty = true;
        if pass.quotas {
            pass.available.subtract_unreserved_scalars(resources);
            pass.recompute_headroom();
        }
    }

    /// Makes an offer; also returns whether the agent can still be offered more.
    fn make_offer(
        &mut self,
        agent_id: &AgentId,
        framework_id: &FrameworkId,
        role: &str,
        resources: Resources,
        now: Duration,
    ) -> (ProtoOffer, bool) {
        let id = OfferId(format!("{}-O{}", self.prefix, self.next_offer));
        self.next_offer += 1;
        let agent = self
            .agents
            .get_mut(agent_id)
            .expect("candidate agent exists");
        agent.offers.insert(id.clone());
        agent.offered.add(&resources);
        agent.free.subtract(&resources);
        let still_offerable = agent.free.is_allocatable();
        let proto = ProtoOffer {
            id: id.0.clone(),
            framework_id: framework_id.0.clone(),
            agent_id: agent_id.0.clone(),
            hostname: agent.hostname.clone(),
            resources: resources.to_proto_allocated(role),
            attributes: agent.attributes.clone(),
            allocation_role: role.to_owned(),
        };
        let fw = self
            .frameworks
            .get_mut(framework_id)
            .expect("chosen framework exists");
        fw.offers.insert(id.clone());
        fw.offered.add_scalars(&resources);
        add_role(&mut fw.by_role, role, &resources);
        tracing::debug!(
            offer_id = %id, agent_id = %agent_id, framework_id = %framework_id, role,
            resources = %resources, "offer made"
        );
        self.offers.insert(
            id,
            Offer {
                framework_id: framework_id.clone(),
                agent_id: agent_id.clone(),
                role: role.to_owned(),
                resources,
                made_at: now,
            },
        );
        if !still_offerable {
            self.offerable.remove(agent_id);
        }
        (proto, still_offerable)
    }

    /// Removes an offer; its resources become free on its agent again. With `rescind`, the
    /// framework (if connected) is told with a RESCIND event.
    pub(super) fn remove_offer(&mut self, id: &OfferId, rescind: bool) -> Option<Offer> {
        let offer = self.offers.remove(id)?;
        if let Some(agent) = self.agents.get_mut(&offer.agent_id)
            && agent.offers.remove(id)
        {
            agent.offered.subtract(&offer.resources);
        }
        if let Some(fw) = self.frameworks.get_mut(&offer.framework_id) {
            fw.offers.remove(id);
            fw.offered.subtract_scalars(&offer.resources);
            sub_role(&mut fw.by_role, &offer.role, &offer.resources);
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

    /// Removes the agent's outstanding offers, if any, telling their frameworks.
    pub(super) fn rescind_agent_offers(&mut self, agent_id: &AgentId) {
        let mut ids: Vec<OfferId> = self
            .agents
            .get(agent_id)
            .map(|a| a.offers.iter().cloned().collect())
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
            .map(|(id, _)| id.clone())
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
            .map(|f| f.offers.iter().cloned().collect())
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

    /// Rescinds offers older than the offer timeout, if there is one.
    pub(super) fn expire_offers(&mut self, now: Duration) {
        let Some(timeout) = self.config.offer_timeout else {
            return;
        };
        let expired: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.made_at) >= timeout)
            .map(|(id, _)| id.clone())
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

impl Framework {
    /// Whether a filter refuses `free` on `agent_id` at `now`.
    fn refuses(&self, agent_id: &AgentId, free: &Resources, now: Duration) -> bool {
        self.filters
            .get(agent_id)
            .is_some_and(|f| now < f.until && f.resources.contains(free))
    }
}
