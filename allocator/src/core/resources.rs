//! Exact resource arithmetic for the allocator core.
//!
//! [`Resources`] is a bag of named resources of three kinds: scalars (`cpus`, `mem`, `disk`,
//! `gpus`, ...) held as integer milli-units (Mesos rounds every scalar to 1/1000, so sums and
//! differences are exact and conservation checks can use `==`), ranges (`ports`) held as a
//! [`RangeSet`], and sets of strings.
//!
//! Invariants:
//! - a scalar entry is always > 0, a range set or string set entry is never empty, so two
//!   equal bags compare equal with `==` and an empty bag is [`Resources::is_empty`];
//! - a name has one kind only (a proto list giving `ports` both as scalar and as ranges is
//!   rejected by [`Resources::from_proto`]);
//! - a [`RangeSet`] is sorted, its ranges are disjoint and never adjacent (they are merged).
//!
//! Reservations (the proto `role` field) are not modelled yet: every resource is unreserved.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use strata_proto::{Resource, ResourceKind, ValueRange};

/// Milli-units per unit: scalars are exact to 1/1000, as in Mesos.
pub const MILLI: i64 = 1000;

/// What was wrong with a resource list coming from the wire.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResourceError {
    /// A resource has no name.
    #[error("a resource has an empty name: every resource needs a name such as \"cpus\"")]
    EmptyName,
    /// A scalar is negative, NaN or infinite.
    #[error("resource {name:?} has invalid value {value}: scalars must be finite and not negative")]
    InvalidScalar {
        /// The resource name.
        name: String,
        /// The value given.
        value: f64,
    },
    /// A scalar is too large to represent in milli-units.
    #[error("resource {name:?} has value {value}, which is too large")]
    ScalarTooLarge {
        /// The resource name.
        name: String,
        /// The value given.
        value: f64,
    },
    /// A range ends before it begins.
    #[error("resource {name:?} has range {begin}-{end}, which ends before it begins")]
    InvalidRange {
        /// The resource name.
        name: String,
        /// First value of the range.
        begin: u64,
        /// Last value of the range.
        end: u64,
    },
    /// The kind field is unspecified or unknown.
    #[error("resource {name:?} has no kind: set kind to SCALAR, RANGES or SET")]
    UnknownKind {
        /// The resource name.
        name: String,
    },
    /// One name is given with two different kinds.
    #[error("resource {name:?} is given both as {first} and as {second}: use one kind per name")]
    MixedKinds {
        /// The resource name.
        name: String,
        /// The kind seen first.
        first: &'static str,
        /// The kind seen later.
        second: &'static str,
    },
}

/// Converts a wire scalar to milli-units, rounding to the nearest 1/1000 as Mesos does.
pub fn to_milli(name: &str, value: f64) -> Result<i64, ResourceError> {
    if !value.is_finite() || value < 0.0 {
        return Err(ResourceError::InvalidScalar {
            name: name.to_owned(),
            value,
        });
    }
    let milli = (value * MILLI as f64).round();
    if milli >= i64::MAX as f64 / 2.0 {
        return Err(ResourceError::ScalarTooLarge {
            name: name.to_owned(),
            value,
        });
    }
    Ok(milli as i64)
}

/// Converts milli-units back to a wire scalar.
pub fn from_milli(milli: i64) -> f64 {
    milli as f64 / MILLI as f64
}

/// Formats milli-units as a short decimal: `4000` -> `4`, `2500` -> `2.5`, `125` -> `0.125`.
pub fn format_milli(milli: i64) -> String {
    let sign = if milli < 0 { "-" } else { "" };
    let abs = milli.unsigned_abs();
    let whole = abs / MILLI as u64;
    let frac = abs % MILLI as u64;
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{frac:03}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A set of integers stored as sorted, disjoint, non-adjacent closed ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set from closed ranges in any order, overlapping or not. Ranges with `begin > end`
    /// must be rejected by the caller.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = ranges.into_iter().collect();
        debug_assert!(v.iter().all(|(b, e)| b <= e));
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (b, e) in v {
            match out.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((b, e)),
            }
        }
        Self { ranges: out }
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many values the set holds.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(b, e)| e - b + 1).sum()
    }

    /// The union of the two sets.
    pub fn union(&self, other: &Self) -> Self {
        Self::from_ranges(self.ranges.iter().chain(other.ranges.iter()).copied())
    }

    /// Whether every value of `other` is in `self`.
    pub fn contains(&self, other: &Self) -> bool {
        let mut i = 0;
        for &(b, e) in &other.ranges {
            while i < self.ranges.len() && self.ranges[i].1 < b {
                i += 1;
            }
            match self.ranges.get(i) {
                Some(&(sb, se)) if sb <= b && e <= se => {}
                _ => return false,
            }
        }
        true
    }

    /// The values of `self` that are not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut j = 0;
        for &(b, e) in &self.ranges {
            let mut cur = b;
            let mut done = false;
            while j < other.ranges.len() && other.ranges[j].1 < cur {
                j += 1;
            }
            let mut k = j;
            while k < other.ranges.len() && other.ranges[k].0 <= e {
                let (ob, oe) = other.ranges[k];
                if ob > cur {
                    out.push((cur, ob - 1));
                }
                if oe >= e {
                    done = true;
                    break;
                }
                cur = oe + 1;
                k += 1;
            }
            if !done {
                out.push((cur, e));
            }
        }
        Self { ranges: out }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (b, e)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{b}-{e}")?;
        }
        f.write_str("]")
    }
}

/// A bag of named resources with exact arithmetic; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    scalars: BTreeMap<String, i64>,
    ranges: BTreeMap<String, RangeSet>,
    sets: BTreeMap<String, BTreeSet<String>>,
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Scalar => "scalar",
        ResourceKind::Ranges => "ranges",
        ResourceKind::Set => "set",
        ResourceKind::Unspecified => "unspecified",
    }
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a wire resource list, merging entries of the same name and kind. Zero scalars
    /// and empty ranges or sets are dropped.
    pub fn from_proto(list: &[Resource]) -> Result<Self, ResourceError> {
        let mut out = Self::new();
        let mut kinds: BTreeMap<&str, ResourceKind> = BTreeMap::new();
        for r in list {
            if r.name.is_empty() {
                return Err(ResourceError::EmptyName);
            }
            let kind = ResourceKind::try_from(r.kind).unwrap_or(ResourceKind::Unspecified);
            if kind == ResourceKind::Unspecified {
                return Err(ResourceError::UnknownKind {
                    name: r.name.clone(),
                });
            }
            if let Some(&first) = kinds.get(r.name.as_str())
                && first != kind
            {
                return Err(ResourceError::MixedKinds {
                    name: r.name.clone(),
                    first: kind_name(first),
                    second: kind_name(kind),
                });
            }
            kinds.insert(&r.name, kind);
            match kind {
                ResourceKind::Scalar => {
                    let milli = to_milli(&r.name, r.scalar)?;
                    out.add_scalar(&r.name, milli);
                }
                ResourceKind::Ranges => {
                    let mut ranges = Vec::with_capacity(r.ranges.len());
                    for ValueRange { begin, end } in &r.ranges {
                        if begin > end {
                            return Err(ResourceError::InvalidRange {
                                name: r.name.clone(),
                                begin: *begin,
                                end: *end,
                            });
                        }
                        ranges.push((*begin, *end));
                    }
                    out.add_ranges(&r.name, &RangeSet::from_ranges(ranges));
                }
                ResourceKind::Set => {
                    for item in &r.set {
                        out.add_set_item(&r.name, item);
                    }
                }
                ResourceKind::Unspecified => unreachable!("rejected above"),
            }
        }
        Ok(out)
    }

    /// The wire form, one entry per name, sorted by kind then name.
    pub fn to_proto(&self) -> Vec<Resource> {
        let mut out = Vec::with_capacity(self.scalars.len() + self.ranges.len() + self.sets.len());
        for (name, &milli) in &self.scalars {
            out.push(Resource::scalar(name, from_milli(milli)));
        }
        for (name, set) in &self.ranges {
            out.push(Resource::ranges(name, set.ranges().iter().copied()));
        }
        for (name, items) in &self.sets {
            out.push(Resource {
                name: name.clone(),
                kind: ResourceKind::Set as i32,
                set: items.iter().cloned().collect(),
                ..Resource::default()
            });
        }
        out
    }

    /// A bag holding one scalar, given in milli-units.
    pub fn scalar_milli(name: &str, milli: i64) -> Self {
        let mut r = Self::new();
        r.add_scalar(name, milli);
        r
    }

    /// Adds `milli` milli-units of scalar `name` (nothing if `milli <= 0`).
    pub fn add_scalar(&mut self, name: &str, milli: i64) {
        if milli > 0 {
            *self.scalars.entry(name.to_owned()).or_insert(0) += milli;
        }
    }

    /// Adds the values of `set` to ranges resource `name`.
    pub fn add_ranges(&mut self, name: &str, set: &RangeSet) {
        if set.is_empty() {
            return;
        }
        match self.ranges.get_mut(name) {
            Some(existing) => *existing = existing.union(set),
            None => {
                self.ranges.insert(name.to_owned(), set.clone());
            }
        }
    }

    /// Adds `item` to set resource `name`.
    pub fn add_set_item(&mut self, name: &str, item: &str) {
        self.sets
            .entry(name.to_owned())
            .or_default()
            .insert(item.to_owned());
    }

    /// The scalar `name` in milli-units (0 if absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalars.get(name).copied().unwrap_or(0)
    }

    /// The scalars, name to milli-units.
    pub fn scalars(&self) -> &BTreeMap<String, i64> {
        &self.scalars
    }

    /// The ranges resource `name`, if any.
    pub fn range_set(&self, name: &str) -> Option<&RangeSet> {
        self.ranges.get(name)
    }

    /// Whether the bag holds nothing.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty() && self.sets.is_empty()
    }

    /// Adds everything in `other`.
    pub fn add(&mut self, other: &Self) {
        for (name, &milli) in &other.scalars {
            self.add_scalar(name, milli);
        }
        for (name, set) in &other.ranges {
            self.add_ranges(name, set);
        }
        for (name, items) in &other.sets {
            self.sets
                .entry(name.clone())
                .or_default()
                .extend(items.iter().cloned());
        }
    }

    /// Adds only the scalars of `other`: aggregates over several agents (a framework's
    /// allocation, the cluster total) hold scalar quantities only, since the ranges and sets
    /// of different agents are not the same ports or items.
    pub fn add_scalars(&mut self, other: &Self) {
        for (name, &milli) in &other.scalars {
            self.add_scalar(name, milli);
        }
    }

    /// Removes only the scalars of `other` (saturating); see [`Resources::add_scalars`].
    pub fn subtract_scalars(&mut self, other: &Self) {
        for (name, &milli) in &other.scalars {
            if let Some(mine) = self.scalars.get_mut(name) {
                *mine -= milli;
                if *mine <= 0 {
                    self.scalars.remove(name);
                }
            }
        }
    }

    /// `self + other` as a new bag.
    pub fn plus(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.add(other);
        out
    }

    /// Whether every resource of `other` is in `self`.
    pub fn contains(&self, other: &Self) -> bool {
        other
            .scalars
            .iter()
            .all(|(name, &milli)| self.scalar(name) >= milli)
            && other
                .ranges
                .iter()
                .all(|(name, set)| self.ranges.get(name).is_some_and(|mine| mine.contains(set)))
            && other.sets.iter().all(|(name, items)| {
                self.sets
                    .get(name)
                    .is_some_and(|mine| items.is_subset(mine))
            })
    }

    /// Removes everything of `other` that is in `self` (saturating: what `self` lacks is
    /// ignored). Callers that keep books check [`Resources::contains`] first.
    pub fn subtract(&mut self, other: &Self) {
        for (name, &milli) in &other.scalars {
            if let Some(mine) = self.scalars.get_mut(name) {
                *mine -= milli;
                if *mine <= 0 {
                    self.scalars.remove(name);
                }
            }
        }
        for (name, set) in &other.ranges {
            if let Some(mine) = self.ranges.get_mut(name) {
                *mine = mine.difference(set);
                if mine.is_empty() {
                    self.ranges.remove(name);
                }
            }
        }
        for (name, items) in &other.sets {
            if let Some(mine) = self.sets.get_mut(name) {
                mine.retain(|i| !items.contains(i));
                if mine.is_empty() {
                    self.sets.remove(name);
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

    /// For each resource `wanted` has more of than `self`: `(wanted part, available part)`,
    /// both formatted like `cpus=4` / `ports=[31000-31002]`, for error messages.
    pub fn shortfall(&self, wanted: &Self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, &milli) in &wanted.scalars {
            let have = self.scalar(name);
            if have < milli {
                out.push((
                    format!("{name}={}", format_milli(milli)),
                    format!("{name}={}", format_milli(have)),
                ));
            }
        }
        for (name, set) in &wanted.ranges {
            let have = self.ranges.get(name).cloned().unwrap_or_default();
            if !have.contains(set) {
                out.push((format!("{name}={set}"), format!("{name}={have}")));
            }
        }
        for (name, items) in &wanted.sets {
            let empty = BTreeSet::new();
            let have = self.sets.get(name).unwrap_or(&empty);
            if !items.is_subset(have) {
                out.push((
                    format!("{name}={{{}}}", join(items)),
                    format!("{name}={{{}}}", join(have)),
                ));
            }
        }
        out
    }

    /// Whether the bag is worth offering: Mesos' default minimum allocatable resources,
    /// at least 0.01 cpus or 32 MiB of memory.
    pub fn is_allocatable(&self) -> bool {
        self.scalar(strata_proto::names::CPUS) >= 10
            || self.scalar(strata_proto::names::MEM) >= 32 * MILLI
    }
}

fn join(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(",")
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, &milli) in &self.scalars {
            parts.push(format!("{name}={}", format_milli(milli)));
        }
        for (name, set) in &self.ranges {
            parts.push(format!("{name}={set}"));
        }
        for (name, items) in &self.sets {
            parts.push(format!("{name}={{{}}}", join(items)));
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
    fn allocatable_minimums() {
        assert!(!Resources::new().is_allocatable());
        assert!(!Resources::scalar_milli(CPUS, 9).is_allocatable());
        assert!(Resources::scalar_milli(CPUS, 10).is_allocatable());
        assert!(Resources::scalar_milli(MEM, 32_000).is_allocatable());
        assert!(!Resources::scalar_milli(MEM, 31_999).is_allocatable());
    }
}
