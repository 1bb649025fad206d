//! Arithmetic and comparison of [`Resources`]: adding and subtracting (whole bags, or only
//! their scalars for aggregates over agents), containment, disjointness of range values and
//! set items, capping scalars, and what one bag lacks of another.

use super::bag::Bag;
use super::scalars::ScalarCaps;
use super::{Resources, find};

impl Resources {
    /// Adds everything in `other`.
    pub fn add(&mut self, other: &Self) {
        for (role, bag) in other.bags() {
            if !bag.is_empty() {
                self.bag_mut(role.map(|r| &**r), role).add(bag);
            }
        }
    }

    /// Adds only the scalars of `other`, all as unreserved: aggregates over several agents
    /// (a framework's allocation, the cluster total) hold scalar quantities only, since the
    /// ranges and sets of different agents are not the same ports or items, and do not keep
    /// reservations apart.
    // Inlined, as the optimiser did before the split into submodules: allocation rounds call
    // it for every offer.
    #[inline]
    pub fn add_scalars(&mut self, other: &Self) {
        for (_, bag) in other.bags() {
            self.unreserved.scalars.add_all(&bag.scalars);
        }
    }

    /// Removes only the scalars of `other` from the unreserved part (saturating); see
    /// [`Resources::add_scalars`].
    pub fn subtract_scalars(&mut self, other: &Self) {
        for (_, bag) in other.bags() {
            self.unreserved.scalars.sub_all(&bag.scalars);
        }
    }

    /// Adds the unreserved scalars of `other` (`add_scalars(&other.unreserved())` without
    /// the copy).
    pub fn add_unreserved_scalars(&mut self, other: &Self) {
        self.unreserved.scalars.add_all(&other.unreserved.scalars);
    }

    /// Removes the unreserved scalars of `other` from the unreserved part (saturating).
    pub fn subtract_unreserved_scalars(&mut self, other: &Self) {
        self.unreserved.scalars.sub_all(&other.unreserved.scalars);
    }

    /// `self + other` as a new bag.
    pub fn plus(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.add(other);
        out
    }

    /// Whether every resource of `other` is in `self`, with the same reservation.
    pub fn contains(&self, other: &Self) -> bool {
        self.unreserved.contains(&other.unreserved)
            && other.reserved.iter().all(|(role, bag)| {
                find(&self.reserved, role).is_some_and(|mine| mine.contains(bag))
            })
    }

    /// Removes everything of `other` that is in `self` (saturating: what `self` lacks is
    /// ignored). Callers that keep books check [`Resources::contains`] first.
    pub fn subtract(&mut self, other: &Self) {
        self.unreserved.subtract(&other.unreserved);
        if self.reserved.is_empty() {
            return;
        }
        for (role, bag) in &other.reserved {
            if let Ok(i) = self.reserved.binary_search_by(|(r, _)| (**r).cmp(role)) {
                let mine = &mut self.reserved[i].1;
                mine.subtract(bag);
                if mine.is_empty() {
                    self.reserved.remove(i);
                }
            }
        }
    }

    /// `self - other` as a new bag (saturating).
    pub fn minus(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.subtract(other);
        out
    }

    /// Whether no range value or set item of `other` is also in `self` (same role), so the
    /// two can be held by different owners at once. Scalars are quantities and never clash.
    pub fn items_disjoint(&self, other: &Self) -> bool {
        other.bags().all(|(role, theirs)| {
            let mine = match role {
                None => Some(&self.unreserved),
                Some(r) => find(&self.reserved, r),
            };
            let Some(mine) = mine else { return true };
            theirs
                .ranges()
                .iter()
                .all(|(name, set)| find(mine.ranges(), name).is_none_or(|m| m.is_disjoint(set)))
                && theirs.sets().iter().all(|(name, items)| {
                    find(mine.sets(), name).is_none_or(|m| m.is_disjoint(items))
                })
        })
    }

    /// Lowers each scalar named in `caps` to at most the cap (milli-units, summed over
    /// reservations), taking from the unreserved part first.
    pub fn cap_scalars(&mut self, caps: &ScalarCaps) {
        let mut pruned = false;
        for (name, cap) in caps.iter() {
            let mut excess = self.scalar(name) - cap.max(0);
            if excess <= 0 {
                continue;
            }
            let bags = std::iter::once(&mut self.unreserved)
                .chain(self.reserved.iter_mut().map(|(_, b)| b));
            for bag in bags {
                if excess <= 0 {
                    break;
                }
                let have = bag.scalar(name);
                let take = have.min(excess);
                if take > 0 {
                    bag.scalars.sub(name, take);
                    excess -= take;
                    pruned = true;
                }
            }
        }
        if pruned {
            self.prune();
        }
    }

    /// For each resource `wanted` has more of than `self`: `(wanted part, available part)`,
    /// both formatted like `cpus=4` / `ports=[31000-31002]` (`cpus(eng)=1` when reserved),
    /// for error messages.
    pub fn shortfall(&self, wanted: &Self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.unreserved.shortfall(&wanted.unreserved, "", &mut out);
        let empty = Bag::default();
        for (role, bag) in &wanted.reserved {
            let have = find(&self.reserved, role).unwrap_or(&empty);
            have.shortfall(bag, &format!("({role})"), &mut out);
        }
        out
    }
}
