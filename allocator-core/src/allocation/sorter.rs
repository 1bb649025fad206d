//! The books of one allocation pass and the order it offers in: the role tree of the pass
//! ([`Node`]s, built by [`Core::build_pass`]), the roles frameworks are offered to
//! ([`Leaf`]s, each with its frameworks by share), the hierarchical weighted-DRF order of
//! the leaves kept as packed keys, and the quota limits and guarantee headroom.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::resources::ScalarCaps;
use crate::roles::{self, Quota};
use crate::{AgentId, Core, FastMap, Filter, FrameworkId, Name, Resources};

use super::Demand;

/// Shares closer than this are equal when ordering (so that rounding in sums and weights
/// does not decide a tie; one milli-unit of 10^9 is still told apart).
const TIE_EPSILON: f64 = 1e-12;

/// `share` rounded to a multiple of [`TIE_EPSILON`].
fn quantize(share: f64) -> f64 {
    (share / TIE_EPSILON).round() * TIE_EPSILON
}

/// A dominant share ordered totally (shares are finite and non-negative), rounded to a
/// multiple of [`TIE_EPSILON`] so that nearly equal shares tie.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Share(f64);

impl Share {
    pub(super) fn new(share: f64) -> Self {
        Self(quantize(share))
    }
}

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
pub(super) fn share_of(held: &Resources, total: &Resources) -> f64 {
    held.share_of(total)
}

/// A DRF key entry: a share (finite, not negative, so its bits order as it does; rounded,
/// so that nearly equal shares tie), then how recently it was offered to (see
/// [`Node::recency`]), then a name rank.
fn pack(share: f64, recency: u32, rank: u32) -> u128 {
    (u128::from(quantize(share).to_bits()) << 64) | (u128::from(recency) << 32) | u128::from(rank)
}

/// A node of the role tree in a pass: a role with frameworks, quota or usage, or an
/// ancestor of one.
pub(super) struct Node {
    pub(super) name: String,
    pub(super) weight: f64,
    /// Allocated plus offered to the role's subtree, scalars.
    pub(super) subtree: Resources,
    /// Reserved for the role's subtree and neither allocated nor offered, scalars (only
    /// counted for nodes with a quota): a quota's consumption is `subtree + reserved`.
    pub(super) reserved: Resources,
    /// Dominant share of `subtree` divided by the weight.
    pub(super) share: f64,
    pub(super) quota: Option<Quota>,
    /// The quota's guarantee is not met yet.
    pub(super) unmet: bool,
    /// When the role's subtree was last offered to, as [`Core::offer_seq`] counts (0:
    /// never or not known).
    pub(super) last_offered: u64,
    /// `last_offered` as a rank among the nodes of the pass (equal values, equal ranks),
    /// raised past every other node's when offered to in the pass: among equal shares, the
    /// least recently offered role comes first.
    pub(super) recency: u32,
    /// Its place among the nodes of the pass by name, from 1.
    pub(super) rank: u32,
}

/// A role frameworks are offered to in a pass.
pub(super) struct Leaf {
    pub(super) role: Name,
    /// Node indices from the top-level ancestor down to the role itself.
    pub(super) path: Vec<usize>,
    /// What its own frameworks hold (the virtual `role/.` child), scalars.
    pub(super) own: Resources,
    pub(super) own_share: f64,
    /// Its eligible frameworks by (share in the role, when last offered to, index into
    /// [`Pass::fids`]): among equal shares the least recently offered comes first (then the
    /// smaller id, as `fids` is sorted).
    pub(super) frameworks: BTreeSet<(Share, u64, usize)>,
    /// What each framework offered to in this pass holds in the role, scalars: its books
    /// (`by_role`) plus the offers of the pass, kept here so the pass need not look them up.
    pub(super) held: FastMap<usize, Resources>,
}

/// The books of one allocation pass.
pub(super) struct Pass {
    /// The connected frameworks of the pass, sorted by id.
    pub(super) fids: Vec<Arc<FrameworkId>>,
    /// The refuse filters of each of `fids`, taken out of the frameworks for the pass (none
    /// are added during a pass) and put back at its end.
    pub(super) filters: Vec<FastMap<AgentId, Vec<Filter>>>,
    /// The offer filters (least an offer must hold, by role) of each of `fids`, taken out
    /// of the frameworks for the pass and put back at its end.
    pub(super) min_allocatable: Vec<std::collections::BTreeMap<String, crate::MinAllocatable>>,
    /// When each of `fids` was last offered to (see [`Core::offer_seq`]), kept up to date
    /// by the pass and put back at its end.
    pub(super) last_offered: Vec<u64>,
    /// The serial of each of `fids` (how minimum refusals name it).
    pub(super) serials: Vec<u64>,
    /// Whether each of `fids` declared GPU_RESOURCES (only those get agents with GPUs).
    pub(super) gpu_resources: Vec<bool>,
    /// [`Core::offer_seq`], counted on by the pass's offers.
    pub(super) seq: u64,
    /// The recency rank the next node offered to in the pass takes.
    pub(super) next_recency: u32,
    pub(super) nodes: Vec<Node>,
    pub(super) leaves: Vec<Leaf>,
    /// Leaf indices in hierarchical DRF order, valid unless `dirty`.
    pub(super) order: Vec<usize>,
    pub(super) dirty: bool,
    /// The DRF keys of the leaves (see [`Pass::refresh_keys`]), `stride` entries each.
    pub(super) keys: Vec<u128>,
    pub(super) stride: usize,
    /// Whether any quota is set (limits and guarantees to check).
    pub(super) quotas: bool,
    /// Unreserved scalars still needed to meet unmet guarantees, summed over roles.
    pub(super) headroom: Resources,
    /// Unreserved free scalars of the active agents (only computed with a headroom).
    pub(super) available: Resources,
}

impl Pass {
    /// Recomputes the leaves' DRF keys after shares changed. Leaves go in hierarchical DRF
    /// order: level by level the lower (weighted share, recency, name) first; a role's own
    /// frameworks (`role/.`, weight 1) come before its children on equal shares. A leaf's
    /// key is the (share, recency, name rank) of the nodes on its path, then (its own
    /// share, 0, rank 0), each packed in a `u128` (shares are finite and not negative, so their bits order as they
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
                let node = &self.nodes[n];
                *entry = pack(node.share, node.recency, node.rank);
            }
            key[leaf.path.len()] = pack(leaf.own_share, 0, 0);
        }
        self.keys = keys;
    }

    /// Updates the keys after the shares of `leaf` and its ancestors changed: those
    /// ancestors' entries in every leaf below them, and the leaf's own share.
    pub(super) fn update_keys(&mut self, leaf: usize) {
        let stride = self.stride;
        let path = &self.leaves[leaf].path;
        for (other, key) in self.leaves.iter().zip(self.keys.chunks_exact_mut(stride)) {
            for ((entry, &a), &b) in key.iter_mut().zip(path).zip(&other.path) {
                if a != b {
                    break;
                }
                let node = &self.nodes[a];
                *entry = pack(node.share, node.recency, node.rank);
            }
        }
        self.keys[leaf * stride + path.len()] = pack(self.leaves[leaf].own_share, 0, 0);
    }

    fn key(&self, leaf: usize) -> &[u128] {
        &self.keys[leaf * self.stride..(leaf + 1) * self.stride]
    }

    /// The first leaf in DRF order.
    pub(super) fn first(&self) -> Option<usize> {
        (0..self.leaves.len()).min_by(|&a, &b| self.key(a).cmp(self.key(b)))
    }

    /// Puts `order` in DRF order.
    pub(super) fn sort(&mut self) {
        if !self.dirty {
            return;
        }
        let mut order = std::mem::take(&mut self.order);
        order.sort_by(|&a, &b| self.key(a).cmp(self.key(b)));
        self.order = order;
        self.dirty = false;
    }

    /// Whether the leaf or an ancestor has a guarantee not yet met.
    pub(super) fn needs_guarantee(&self, leaf: usize) -> bool {
        self.quotas && self.leaves[leaf].path.iter().any(|&n| self.nodes[n].unmet)
    }

    /// What is still missing of the guarantees of the leaf's role and its ancestors (the
    /// largest missing amount of each scalar along its path).
    pub(super) fn unmet_of(&self, leaf: usize) -> Resources {
        let mut missing = Resources::new();
        for &n in &self.leaves[leaf].path {
            let node = &self.nodes[n];
            if let Some(quota) = node.quota.as_ref().filter(|_| node.unmet) {
                for (name, g) in quota.guarantee.scalars() {
                    let short = g - node.subtree.scalar(name) - node.reserved.scalar(name);
                    let had = missing.scalar(name);
                    if short > had {
                        missing.add_scalar(name, short - had);
                    }
                }
            }
        }
        missing
    }

    pub(super) fn any_unmet(&self) -> bool {
        self.quotas && self.nodes.iter().any(|n| n.unmet)
    }

    /// Caps `resources` by the quota limits of the leaf's role and its ancestors: what is
    /// left of a limit after the consumption (allocated, offered and unallocated
    /// reservations), plus the reservations of the node's subtree in `resources` (counted
    /// already).
    pub(super) fn apply_limits(&self, leaf: usize, resources: &mut Resources) {
        for &n in &self.leaves[leaf].path {
            let node = &self.nodes[n];
            if let Some(quota) = &node.quota
                && !quota.limit.is_empty()
            {
                let mut caps = ScalarCaps::new();
                for (name, limit) in quota.limit.iter() {
                    let consumed = node.subtree.scalar(name) + node.reserved.scalar(name);
                    let counted = resources.reserved_scalar_within(&node.name, name);
                    caps.set(name, (limit - consumed).max(0) + counted);
                }
                resources.cap_scalars(&caps);
            }
        }
    }

    pub(super) fn recompute_headroom(&mut self) {
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
    /// The role tree of a pass: every role with eligible frameworks, usage or quota, and
    /// their ancestors.
    pub(super) fn build_pass(&self, fids: Vec<Arc<FrameworkId>>, frameworks: Demand) -> Pass {
        let mut pass = Pass {
            fids,
            filters: Vec::new(),
            min_allocatable: Vec::new(),
            last_offered: Vec::new(),
            serials: Vec::new(),
            gpu_resources: Vec::new(),
            seq: self.offer_seq,
            next_recency: 0,
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
                last_offered: self.role_offered.get(name).copied().unwrap_or(0),
                recency: 0,
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
        let mut seen: Vec<u64> = pass.nodes.iter().map(|n| n.last_offered).collect();
        seen.sort_unstable();
        seen.dedup();
        for n in &mut pass.nodes {
            let rank = seen.partition_point(|&s| s < n.last_offered);
            n.recency = u32::try_from(rank).unwrap_or(u32::MAX);
        }
        pass.next_recency = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        pass.stride = pass.leaves.iter().map(|l| l.path.len()).max().unwrap_or(0) + 1;
        pass.refresh_keys();
        if pass.quotas {
            pass.recompute_headroom();
        }
        pass
    }
}
