//! Exact resource arithmetic for the allocator core.
//!
//! [`Resources`] is a bag of named resources of three kinds: scalars (`cpus`, `mem`, `disk`,
//! `gpus`, ...) held as integer milli-units (Mesos rounds every scalar to 1/1000, so sums and
//! differences are exact and conservation checks can use `==`), ranges (`ports`) held as a
//! [`RangeSet`], and sets of strings.
//!
//! Layout: allocation rounds add, subtract, compare and copy bags for every offer, so a bag
//! is compact. The four common scalars (`cpus`, `disk`, `gpus`, `mem`) have fixed slots (a
//! bag of only those is copied without allocating); other scalars, ranges and sets are kept
//! in short vectors sorted by name (names are shared [`Name`]s); reservations are a short
//! vector of (role, part) sorted by role.
//!
//! Invariants:
//! - a scalar slot is >= 0 (0 is absent); any other scalar entry is always > 0, a range set
//!   or string set entry is never empty, so two equal bags compare equal with `==` and an
//!   empty bag is [`Resources::is_empty`];
//! - a name has one kind only (a proto list giving `ports` both as scalar and as ranges is
//!   rejected by [`Resources::from_proto`]);
//! - a [`RangeSet`] is sorted, its ranges are disjoint and never adjacent (they are merged).
//!
//! Reservations: every entry is unreserved or reserved for one role (the proto `role` field;
//! empty or `*` means unreserved). Arithmetic and [`Resources::contains`] keep reservations
//! apart (reserved cpus are not unreserved cpus); [`Resources::scalar`] sums over them.
//!
//! Submodules: `scalars` (milli-units, the scalar store, [`ScalarCaps`]), `ranges`
//! ([`RangeSet`]), `bag` (one role's part), `wire` (the `strata.v1` form, [`ResourceError`]),
//! `arithmetic` (sums, differences, containment, caps) and `reservations` (views by role);
//! this module holds [`Resources`] itself, its builders and queries.

mod arithmetic;
mod bag;
mod ranges;
mod reservations;
mod scalars;
mod wire;

use std::fmt;
use std::sync::Arc;

use self::bag::Bag;
use self::scalars::{SLOT_CPUS, SLOT_MEM};

pub use self::ranges::RangeSet;
pub use self::scalars::{MILLI, ScalarCaps, format_milli, from_milli, to_milli};
pub use self::wire::ResourceError;

/// A resource name (or a reservation role), shared: bags are copied often (every offer)
/// and names are few.
pub type Name = Arc<str>;

/// The entry `name` of a vector sorted by name.
fn find<'a, V>(v: &'a [(Name, V)], name: &str) -> Option<&'a V> {
    v.iter().find(|(n, _)| &**n == name).map(|(_, x)| x)
}

/// The entry `name` of a vector sorted by name, made (empty) if missing.
fn entry<'a, V: Default>(
    v: &'a mut Vec<(Name, V)>,
    name: &str,
    shared: Option<&Name>,
) -> &'a mut V {
    let i = match v.binary_search_by(|(n, _)| (**n).cmp(name)) {
        Ok(i) => i,
        Err(i) => {
            let key = shared.cloned().unwrap_or_else(|| Name::from(name));
            v.insert(i, (key, V::default()));
            i
        }
    };
    &mut v[i].1
}

/// A bag of named resources with exact arithmetic, each unreserved or reserved for one
/// role; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    unreserved: Bag,
    /// Role to what is reserved for it, sorted by role; never holds an empty bag.
    reserved: Vec<(Name, Bag)>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    fn bag_mut(&mut self, role: Option<&str>, shared: Option<&Name>) -> &mut Bag {
        match role {
            None => &mut self.unreserved,
            Some(r) => entry(&mut self.reserved, r, shared),
        }
    }

    fn bags(&self) -> impl Iterator<Item = (Option<&Name>, &Bag)> {
        std::iter::once((None, &self.unreserved))
            .chain(self.reserved.iter().map(|(r, b)| (Some(r), b)))
    }

    fn prune(&mut self) {
        self.reserved.retain(|(_, b)| !b.is_empty());
    }

    /// A bag holding one unreserved scalar, given in milli-units.
    pub fn scalar_milli(name: &str, milli: i64) -> Self {
        let mut r = Self::new();
        r.add_scalar(name, milli);
        r
    }

    /// Adds `milli` milli-units of unreserved scalar `name` (nothing if `milli <= 0`).
    pub fn add_scalar(&mut self, name: &str, milli: i64) {
        self.unreserved.scalars.add(name, milli, None);
    }

    /// Adds the values of `set` to unreserved ranges resource `name`.
    pub fn add_ranges(&mut self, name: &str, set: &RangeSet) {
        self.unreserved.add_ranges(name, set, None);
    }

    /// Adds `item` to unreserved set resource `name`.
    pub fn add_set_item(&mut self, name: &str, item: &str) {
        entry(&mut self.unreserved.items_mut().sets, name, None).insert(item.to_owned());
    }

    /// The scalar `name` in milli-units, reserved or not (0 if absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.unreserved.scalar(name) + self.reserved_scalar(name)
    }

    /// The sum of fixed slot `i` over every bag.
    fn fixed(&self, i: usize) -> i64 {
        self.unreserved.scalars.fixed[i]
            + self
                .reserved
                .iter()
                .map(|(_, b)| b.scalars.fixed[i])
                .sum::<i64>()
    }

    /// The unreserved scalars, name and milli-units, in no particular order. For an
    /// aggregate built with [`Resources::add_scalars`] these are all of its scalars.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, i64)> {
        self.unreserved.scalars.iter()
    }

    /// The largest fraction `self` holds of any unreserved scalar of `total` (scalars of
    /// `self` summed over reservations): a dominant share.
    pub fn share_of(&self, total: &Self) -> f64 {
        let mut share: f64 = 0.0;
        let t = &total.unreserved.scalars;
        for (i, &all) in t.fixed.iter().enumerate() {
            if all > 0 {
                share = share.max(self.fixed(i) as f64 / all as f64);
            }
        }
        for (name, all) in &t.extra {
            share = share.max(self.scalar(name) as f64 / *all as f64);
        }
        share
    }

    /// The unreserved ranges resource `name`, if any.
    pub fn range_set(&self, name: &str) -> Option<&RangeSet> {
        find(self.unreserved.ranges(), name)
    }

    /// Whether the bag holds nothing.
    pub fn is_empty(&self) -> bool {
        self.unreserved.is_empty() && self.reserved.is_empty()
    }

    /// Makes the unreserved ranges and sets share `other`'s storage when they are equal
    /// (agents of a cluster mostly have the same ports): copies of either then touch one
    /// shared block. Changes nothing else.
    pub fn share_items_with(&mut self, other: &Self) {
        if let (Some(mine), Some(theirs)) = (&self.unreserved.items, &other.unreserved.items)
            && !Arc::ptr_eq(mine, theirs)
            && mine == theirs
        {
            self.unreserved.items = Some(theirs.clone());
        }
    }

    /// Whether the bag holds any scalar, reserved or not.
    pub fn has_scalars(&self) -> bool {
        self.bags().any(|(_, bag)| !bag.scalars.is_empty())
    }

    /// Whether the bag is worth offering: Mesos' default minimum allocatable resources,
    /// at least 0.01 cpus or 32 MiB of memory.
    pub fn is_allocatable(&self) -> bool {
        self.fixed(SLOT_CPUS) >= 10 || self.fixed(SLOT_MEM) >= 32 * MILLI
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (role, bag) in self.bags() {
            let suffix = role.map(|r| format!("({r})")).unwrap_or_default();
            bag.fmt_parts(&suffix, &mut parts);
        }
        if parts.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::Resource;
    use strata_proto::names::{CPUS, MEM, PORTS};

    fn res(list: &[Resource]) -> Resources {
        Resources::from_proto(list).expect("valid resources")
    }

    #[test]
    fn milli_rounding_and_formatting() {
        let cases: &[(f64, i64, &str)] = &[
            (0.0, 0, "0"),
            (0.1, 100, "0.1"),
            (0.0004, 0, "0"),
            (0.0005, 1, "0.001"),
            (1.25, 1250, "1.25"),
            (4.0, 4000, "4"),
            (0.1 + 0.2, 300, "0.3"),
            (2048.0, 2_048_000, "2048"),
        ];
        for &(value, milli, text) in cases {
            assert_eq!(to_milli("cpus", value), Ok(milli), "value {value}");
            assert_eq!(format_milli(milli), text, "value {value}");
        }
        assert_eq!(from_milli(1250), 1.25);
    }

    #[test]
    fn invalid_scalars_are_rejected() {
        for value in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            let err = Resources::from_proto(&[Resource::scalar(CPUS, value)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ResourceError::InvalidScalar { .. } | ResourceError::ScalarTooLarge { .. }
                ),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn invalid_lists_are_rejected() {
        let bad_range = Resources::from_proto(&[Resource::ranges(PORTS, [(10, 5)])]).unwrap_err();
        assert_eq!(
            bad_range.to_string(),
            "resource \"ports\" has range 10-5, which ends before it begins"
        );
        let mixed = Resources::from_proto(&[
            Resource::scalar(PORTS, 1.0),
            Resource::ranges(PORTS, [(1, 2)]),
        ])
        .unwrap_err();
        assert!(matches!(mixed, ResourceError::MixedKinds { .. }));
        let unnamed = Resources::from_proto(&[Resource::scalar("", 1.0)]).unwrap_err();
        assert_eq!(unnamed, ResourceError::EmptyName);
        let kindless = Resources::from_proto(&[Resource {
            name: "x".into(),
            ..Resource::default()
        }])
        .unwrap_err();
        assert!(matches!(kindless, ResourceError::UnknownKind { .. }));
    }

    #[test]
    fn same_name_entries_merge_and_round_trip() {
        let r = res(&[
            Resource::scalar(CPUS, 1.5),
            Resource::scalar(CPUS, 0.5),
            Resource::scalar(MEM, 0.0),
            Resource::ranges(PORTS, [(31000, 31004)]),
            Resource::ranges(PORTS, [(31005, 31010), (20, 30)]),
        ]);
        assert_eq!(r.scalar(CPUS), 2000);
        assert_eq!(r.scalar(MEM), 0);
        assert_eq!(
            r.range_set(PORTS).map(RangeSet::ranges),
            Some(&[(20, 30), (31000, 31010)][..])
        );
        assert_eq!(res(&r.to_proto()), r);
        assert_eq!(r.to_string(), "cpus=2, ports=[20-30,31000-31010]");
    }

    #[test]
    fn range_set_operations() {
        // (a, b, a ∪ b, a \ b, a ⊇ b)
        type Case = (
            &'static [(u64, u64)],
            &'static [(u64, u64)],
            &'static [(u64, u64)],
            &'static [(u64, u64)],
            bool,
        );
        let cases: &[Case] = &[
            (&[(1, 10)], &[(3, 4)], &[(1, 10)], &[(1, 2), (5, 10)], true),
            (&[(1, 10)], &[(1, 10)], &[(1, 10)], &[], true),
            (&[(1, 10)], &[(5, 15)], &[(1, 15)], &[(1, 4)], false),
            (
                &[(1, 3), (7, 9)],
                &[(4, 6)],
                &[(1, 9)],
                &[(1, 3), (7, 9)],
                false,
            ),
            (
                &[(1, 3), (7, 9)],
                &[(2, 8)],
                &[(1, 9)],
                &[(1, 1), (9, 9)],
                false,
            ),
            (
                &[(1, 3), (7, 9)],
                &[(1, 1), (9, 9)],
                &[(1, 3), (7, 9)],
                &[(2, 3), (7, 8)],
                true,
            ),
            (&[], &[], &[], &[], true),
            (&[(5, 5)], &[], &[(5, 5)], &[(5, 5)], true),
            (&[], &[(5, 5)], &[(5, 5)], &[], false),
            (
                &[(0, u64::MAX)],
                &[(0, 0)],
                &[(0, u64::MAX)],
                &[(1, u64::MAX)],
                true,
            ),
            (
                &[(1, 10), (20, 30)],
                &[(5, 25)],
                &[(1, 30)],
                &[(1, 4), (26, 30)],
                false,
            ),
        ];
        for (a, b, union, diff, contains) in cases {
            let sa = RangeSet::from_ranges(a.iter().copied());
            let sb = RangeSet::from_ranges(b.iter().copied());
            assert_eq!(sa.union(&sb).ranges(), *union, "{a:?} ∪ {b:?}");
            assert_eq!(sa.difference(&sb).ranges(), *diff, "{a:?} \\ {b:?}");
            assert_eq!(sa.contains(&sb), *contains, "{a:?} ⊇ {b:?}");
            // (a \ b) ∪ (a ∩ b) == a, and a \ b never meets b.
            let d = sa.difference(&sb);
            assert!(sa.contains(&d));
            assert_eq!(d.difference(&sb), d);
        }
        assert_eq!(RangeSet::from_ranges([(1, 2), (3, 4)]).ranges(), &[(1, 4)]);
        assert_eq!(RangeSet::from_ranges([(1, 5), (3, 4)]).count(), 5);
    }

    #[test]
    fn add_subtract_contains() {
        let total = res(&[
            Resource::scalar(CPUS, 4.0),
            Resource::scalar(MEM, 1024.0),
            Resource::ranges(PORTS, [(31000, 31010)]),
        ]);
        let part = res(&[
            Resource::scalar(CPUS, 1.5),
            Resource::ranges(PORTS, [(31002, 31003)]),
        ]);
        assert!(total.contains(&part));
        assert!(!part.contains(&total));
        let rest = total.minus(&part);
        assert_eq!(rest.scalar(CPUS), 2500);
        assert_eq!(
            rest.range_set(PORTS).map(RangeSet::ranges),
            Some(&[(31000, 31001), (31004, 31010)][..])
        );
        assert_eq!(rest.plus(&part), total);
        assert!(total.minus(&total).is_empty());
        // Saturating: subtracting more than there is leaves nothing, not a negative.
        assert!(part.minus(&total).is_empty());
    }

    #[test]
    fn shortfall_names_what_is_missing() {
        let offer = res(&[
            Resource::scalar(CPUS, 2.0),
            Resource::scalar(MEM, 128.0),
            Resource::ranges(PORTS, [(31000, 31002)]),
        ]);
        let want = res(&[
            Resource::scalar(CPUS, 4.0),
            Resource::scalar(MEM, 64.0),
            Resource::ranges(PORTS, [(31000, 31005)]),
            Resource::scalar("gpus", 1.0),
        ]);
        assert_eq!(
            offer.shortfall(&want),
            vec![
                ("cpus=4".to_owned(), "cpus=2".to_owned()),
                ("gpus=1".to_owned(), "gpus=0".to_owned()),
                (
                    "ports=[31000-31005]".to_owned(),
                    "ports=[31000-31002]".to_owned()
                ),
            ]
        );
        assert!(offer.shortfall(&offer).is_empty());
    }

    #[test]
    fn shared_items_change_no_value() {
        let ports = || Resource::ranges(PORTS, [(31000, 32000)]);
        let a = res(&[Resource::scalar(CPUS, 1.0), ports()]);
        let mut b = res(&[Resource::scalar(CPUS, 2.0), ports()]);
        let before = b.clone();
        b.share_items_with(&a);
        assert_eq!(b, before);
        // Changing one copy leaves the other as it was.
        let taken = res(&[Resource::ranges(PORTS, [(31000, 31000)])]);
        let mut c = b.clone();
        c.subtract(&taken);
        assert_eq!(b, before);
        assert_eq!(a.range_set(PORTS).map(RangeSet::count), Some(1001));
        assert_eq!(c.range_set(PORTS).map(RangeSet::count), Some(1000));
        assert_eq!(c.plus(&taken), b);
    }

    #[test]
    fn allocatable_minimums() {
        assert!(!Resources::new().is_allocatable());
        assert!(!Resources::scalar_milli(CPUS, 9).is_allocatable());
        assert!(Resources::scalar_milli(CPUS, 10).is_allocatable());
        assert!(Resources::scalar_milli(MEM, 32_000).is_allocatable());
        assert!(!Resources::scalar_milli(MEM, 31_999).is_allocatable());
    }
}
