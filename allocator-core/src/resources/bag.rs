//! [`Bag`]: one role's part of a [`Resources`](super::Resources), its scalars and its ranges
//! and sets (shared between copies until one changes), with the arithmetic, comparison and
//! formatting the parent builds on.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::scalars::{Scalars, format_milli};
use super::{Name, RangeSet, entry, find};

/// The ranges and sets of a [`Bag`], each sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Items {
    pub(super) ranges: Vec<(Name, RangeSet)>,
    pub(super) sets: Vec<(Name, BTreeSet<String>)>,
}

const NO_ITEMS: &Items = &Items {
    ranges: Vec::new(),
    sets: Vec::new(),
};

/// One role's part of a [`Resources`](super::Resources): named scalars, ranges and sets.
/// The ranges and sets are shared between copies until one changes (copies are made for
/// every offer, changes are rarer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Bag {
    pub(super) scalars: Scalars,
    /// `None` when there are no ranges or sets.
    pub(super) items: Option<Arc<Items>>,
}

impl Bag {
    pub(super) fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.items.is_none()
    }

    pub(super) fn items(&self) -> &Items {
        self.items.as_deref().unwrap_or(NO_ITEMS)
    }

    pub(super) fn ranges(&self) -> &[(Name, RangeSet)] {
        &self.items().ranges
    }

    pub(super) fn sets(&self) -> &[(Name, BTreeSet<String>)] {
        &self.items().sets
    }

    /// The items to change (unshared first); call [`Bag::tidy`] after removing any.
    pub(super) fn items_mut(&mut self) -> &mut Items {
        Arc::make_mut(self.items.get_or_insert_with(Default::default))
    }

    pub(super) fn tidy(&mut self) {
        if self
            .items
            .as_ref()
            .is_some_and(|i| i.ranges.is_empty() && i.sets.is_empty())
        {
            self.items = None;
        }
    }

    pub(super) fn scalar(&self, name: &str) -> i64 {
        self.scalars.get(name)
    }

    pub(super) fn entries(&self) -> usize {
        self.scalars.iter().count() + self.ranges().len() + self.sets().len()
    }

    pub(super) fn add_ranges(&mut self, name: &str, set: &RangeSet, shared: Option<&Name>) {
        if set.is_empty() {
            return;
        }
        let mine = entry(&mut self.items_mut().ranges, name, shared);
        *mine = mine.union(set);
    }

    pub(super) fn add(&mut self, other: &Self) {
        self.scalars.add_all(&other.scalars);
        let Some(theirs) = &other.items else { return };
        if self.items.is_none() {
            self.items = Some(theirs.clone());
            return;
        }
        for (name, set) in &theirs.ranges {
            self.add_ranges(name, set, Some(name));
        }
        for (name, items) in &theirs.sets {
            entry(&mut self.items_mut().sets, name, Some(name)).extend(items.iter().cloned());
        }
    }

    pub(super) fn subtract(&mut self, other: &Self) {
        self.scalars.sub_all(&other.scalars);
        let (Some(theirs), Some(mine)) = (&other.items, &self.items) else {
            return;
        };
        if Arc::ptr_eq(theirs, mine) {
            self.items = None;
            return;
        }
        let theirs = theirs.clone();
        let own = self.items_mut();
        for (name, set) in &theirs.ranges {
            if let Ok(i) = own.ranges.binary_search_by(|(n, _)| (**n).cmp(name)) {
                let mine = &mut own.ranges[i].1;
                *mine = mine.difference(set);
                if mine.is_empty() {
                    own.ranges.remove(i);
                }
            }
        }
        for (name, items) in &theirs.sets {
            if let Ok(i) = own.sets.binary_search_by(|(n, _)| (**n).cmp(name)) {
                let mine = &mut own.sets[i].1;
                mine.retain(|i| !items.contains(i));
                if mine.is_empty() {
                    own.sets.remove(i);
                }
            }
        }
        self.tidy();
    }

    pub(super) fn contains(&self, other: &Self) -> bool {
        self.scalars.contains(&other.scalars)
            && other
                .ranges()
                .iter()
                .all(|(name, set)| find(self.ranges(), name).is_some_and(|mine| mine.contains(set)))
            && other.sets().iter().all(|(name, items)| {
                find(self.sets(), name).is_some_and(|mine| items.is_subset(mine))
            })
    }

    pub(super) fn shortfall(&self, wanted: &Self, suffix: &str, out: &mut Vec<(String, String)>) {
        for (name, milli) in wanted.scalars.sorted() {
            let have = self.scalar(name);
            if have < milli {
                out.push((
                    format!("{name}{suffix}={}", format_milli(milli)),
                    format!("{name}{suffix}={}", format_milli(have)),
                ));
            }
        }
        for (name, set) in wanted.ranges() {
            let have = find(self.ranges(), name).cloned().unwrap_or_default();
            if !have.contains(set) {
                out.push((
                    format!("{name}{suffix}={set}"),
                    format!("{name}{suffix}={have}"),
                ));
            }
        }
        for (name, items) in wanted.sets() {
            let empty = BTreeSet::new();
            let have = find(self.sets(), name).unwrap_or(&empty);
            if !items.is_subset(have) {
                out.push((
                    format!("{name}{suffix}={{{}}}", join(items)),
                    format!("{name}{suffix}={{{}}}", join(have)),
                ));
            }
        }
    }

    pub(super) fn fmt_parts(&self, suffix: &str, parts: &mut Vec<String>) {
        for (name, milli) in self.scalars.sorted() {
            parts.push(format!("{name}{suffix}={}", format_milli(milli)));
        }
        for (name, set) in self.ranges() {
            parts.push(format!("{name}{suffix}={set}"));
        }
        for (name, items) in self.sets() {
            parts.push(format!("{name}{suffix}={{{}}}", join(items)));
        }
    }
}

pub(super) fn join(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(",")
}
