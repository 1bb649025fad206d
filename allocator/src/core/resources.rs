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
//! Reservations: every entry is unreserved or reserved for one role (the proto `role` field;
//! empty or `*` means unreserved). Arithmetic and [`Resources::contains`] keep reservations
//! apart (reserved cpus are not unreserved cpus); [`Resources::scalar`] sums over them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

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

/// A resource name, shared: bags are cloned often (every offer) and names are few.
pub type Name = Arc<str>;

/// One role's part of a [`Resources`]: named scalars, ranges and sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bag {
    scalars: BTreeMap<Name, i64>,
    ranges: BTreeMap<Name, RangeSet>,
    sets: BTreeMap<Name, BTreeSet<String>>,
}

impl Bag {
    fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty() && self.sets.is_empty()
    }

    fn scalar(&self, name: &str) -> i64 {
        self.scalars.get(name).copied().unwrap_or(0)
    }

    fn add_scalar(&mut self, name: &str, milli: i64) {
        if milli > 0 {
            match self.scalars.get_mut(name) {
                Some(v) => *v += milli,
                None => {
                    self.scalars.insert(Name::from(name), milli);
                }
            }
        }
    }

    /// [`Bag::add_scalar`] with a shared name (no allocation for a new entry).
    fn add_scalar_named(&mut self, name: &Name, milli: i64) {
        if milli > 0 {
            match self.scalars.get_mut(name) {
                Some(v) => *v += milli,
                None => {
                    self.scalars.insert(name.clone(), milli);
                }
            }
        }
    }

    fn add_ranges(&mut self, name: &str, set: &RangeSet) {
        if set.is_empty() {
            return;
        }
        match self.ranges.get_mut(name) {
            Some(existing) => *existing = existing.union(set),
            None => {
                self.ranges.insert(Name::from(name), set.clone());
            }
        }
    }

    fn add(&mut self, other: &Self) {
        for (name, &milli) in &other.scalars {
            self.add_scalar_named(name, milli);
        }
        for (name, set) in &other.ranges {
            if set.is_empty() {
                continue;
            }
            match self.ranges.get_mut(name) {
                Some(existing) => *existing = existing.union(set),
                None => {
                    self.ranges.insert(name.clone(), set.clone());
                }
            }
        }
        for (name, items) in &other.sets {
            self.sets
                .entry(name.clone())
                .or_default()
                .extend(items.iter().cloned());
        }
    }

    fn subtract_scalars(&mut self, other: &BTreeMap<Name, i64>) {
        for (name, &milli) in other {
            self.subtract_scalar(name, milli);
        }
    }

    fn subtract_scalar(&mut self, name: &str, milli: i64) {
        if let Some(mine) = self.scalars.get_mut(name) {
            *mine -= milli;
            if *mine <= 0 {
                self.scalars.remove(name);
            }
        }
    }

    fn subtract(&mut self, other: &Self) {
        self.subtract_scalars(&other.scalars);
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

    fn contains(&self, other: &Self) -> bool {
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

    fn shortfall(&self, wanted: &Self, suffix: &str, out: &mut Vec<(String, String)>) {
        for (name, &milli) in &wanted.scalars {
            let have = self.scalar(name);
            if have < milli {
                out.push((
                    format!("{name}{suffix}={}", format_milli(milli)),
                    format!("{name}{suffix}={}", format_milli(have)),
                ));
            }
        }
        for (name, set) in &wanted.ranges {
            let have = self.ranges.get(name).cloned().unwrap_or_default();
            if !have.contains(set) {
                out.push((
                    format!("{name}{suffix}={set}"),
                    format!("{name}{suffix}={have}"),
                ));
            }
        }
        for (name, items) in &wanted.sets {
            let empty = BTreeSet::new();
            let have = self.sets.get(name).unwrap_or(&empty);
            if !items.is_subset(have) {
                out.push((
                    format!("{name}{suffix}={{{}}}", join(items)),
                    format!("{name}{suffix}={{{}}}", join(have)),
                ));
            }
        }
    }

    fn to_proto(&self, role: &str, out: &mut Vec<Resource>) {
        for (name, &milli) in &self.scalars {
            out.push(Resource {
                role: role.to_owned(),
                ..Resource::scalar(name, from_milli(milli))
            });
        }
        for (name, set) in &self.ranges {
            out.push(Resource {
                role: role.to_owned(),
                ..Resource::ranges(name, set.ranges().iter().copied())
            });
        }
        for (name, items) in &self.sets {
            out.push(Resource {
                name: name.to_string(),
                kind: ResourceKind::Set as i32,
                set: items.iter().cloned().collect(),
                role: role.to_owned(),
                ..Resource::default()
            });
        }
    }

    fn fmt_parts(&self, suffix: &str, parts: &mut Vec<String>) {
        for (name, &milli) in &self.scalars {
            parts.push(format!("{name}{suffix}={}", format_milli(milli)));
        }
        for (name, set) in &self.ranges {
            parts.push(format!("{name}{suffix}={set}"));
        }
        for (name, items) in &self.sets {
            parts.push(format!("{name}{suffix}={{{}}}", join(items)));
        }
    }
}

/// A bag of named resources with exact arithmetic, each unreserved or reserved for one
/// role; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    unreserved: Bag,
    /// Role to what is reserved for it; never holds an empty bag.
    reserved: BTreeMap<String, Bag>,
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Scalar => "scalar",
        ResourceKind::Ranges => "ranges",
        ResourceKind::Set => "set",
        ResourceKind::Unspecified => "unspecified",
    }
}

/// The reservation role of a wire resource: `None` when unreserved (empty or `*`).
fn wire_role(role: &str) -> Option<&str> {
    match role {
        "" | "*" => None,
        r => Some(r),
    }
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    fn bag_mut(&mut self, role: Option<&str>) -> &mut Bag {
        match role {
            None => &mut self.unreserved,
            Some(r) => self.reserved.entry(r.to_owned()).or_default(),
        }
    }

    fn bags(&self) -> impl Iterator<Item = (Option<&str>, &Bag)> {
        std::iter::once((None, &self.unreserved))
            .chain(self.reserved.iter().map(|(r, b)| (Some(r.as_str()), b)))
    }

    fn prune(&mut self) {
        self.reserved.retain(|_, b| !b.is_empty());
    }

    /// Parses a wire resource list, merging entries of the same name, kind and role. Zero
    /// scalars and empty ranges or sets are dropped. A `role` other than empty or `*` is a
    /// reservation for that role.
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
            let role = wire_role(&r.role);
            match kind {
                ResourceKind::Scalar => {
                    let milli = to_milli(&r.name, r.scalar)?;
                    out.bag_mut(role).add_scalar(&r.name, milli);
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
                    out.bag_mut(role)
                        .add_ranges(&r.name, &RangeSet::from_ranges(ranges));
                }
                ResourceKind::Set => {
                    let bag = out.bag_mut(role);
                    for item in &r.set {
                        bag.sets
                            .entry(Name::from(r.name.as_str()))
                            .or_default()
                            .insert(item.clone());
                    }
                }
                ResourceKind::Unspecified => unreachable!("rejected above"),
            }
        }
        out.prune();
        Ok(out)
    }

    /// The wire form, one entry per name and role: unreserved first, then by role; within
    /// one role sorted by kind then name.
    pub fn to_proto(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        for (role, bag) in self.bags() {
            bag.to_proto(role.unwrap_or(""), &mut out);
        }
        out
    }

    /// The wire form with every entry's `allocation_role` set (resources in an offer).
    pub fn to_proto_allocated(&self, allocation_role: &str) -> Vec<Resource> {
        let entries = self
            .bags()
            .map(|(_, b)| b.scalars.len() + b.ranges.len() + b.sets.len())
            .sum();
        let mut out = Vec::with_capacity(entries);
        for (role, bag) in self.bags() {
            bag.to_proto(role.unwrap_or(""), &mut out);
        }
        for r in &mut out {
            r.allocation_role = allocation_role.to_owned();
        }
        out
    }

    /// A bag holding one unreserved scalar, given in milli-units.
    pub fn scalar_milli(name: &str, milli: i64) -> Self {
        let mut r = Self::new();
        r.add_scalar(name, milli);
        r
    }

    /// Adds `milli` milli-units of unreserved scalar `name` (nothing if `milli <= 0`).
    pub fn add_scalar(&mut self, name: &str, milli: i64) {
        self.unreserved.add_scalar(name, milli);
    }

    /// Adds the values of `set` to unreserved ranges resource `name`.
    pub fn add_ranges(&mut self, name: &str, set: &RangeSet) {
        self.unreserved.add_ranges(name, set);
    }

    /// Adds `item` to unreserved set resource `name`.
    pub fn add_set_item(&mut self, name: &str, item: &str) {
        self.unreserved
            .sets
            .entry(Name::from(name))
            .or_default()
            .insert(item.to_owned());
    }

    /// The scalar `name` in milli-units, reserved or not (0 if absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.unreserved.scalar(name) + self.reserved.values().map(|b| b.scalar(name)).sum::<i64>()
    }

    /// The unreserved scalars, name to milli-units. For an aggregate built with
    /// [`Resources::add_scalars`] these are all of its scalars.
    pub fn scalars(&self) -> &BTreeMap<Name, i64> {
        &self.unreserved.scalars
    }

    /// The unreserved ranges resource `name`, if any.
    pub fn range_set(&self, name: &str) -> Option<&RangeSet> {
        self.unreserved.ranges.get(name)
    }

    /// Whether the bag holds nothing.
    pub fn is_empty(&self) -> bool {
        self.unreserved.is_empty() && self.reserved.is_empty()
    }

    /// Whether the bag holds any scalar, reserved or not.
    pub fn has_scalars(&self) -> bool {
        self.bags().any(|(_, bag)| !bag.scalars.is_empty())
    }

    /// Whether some of the bag is reserved.
    pub fn has_reservations(&self) -> bool {
        !self.reserved.is_empty()
    }

    /// The roles something is reserved for.
    pub fn reservation_roles(&self) -> impl Iterator<Item = &str> {
        self.reserved.keys().map(String::as_str)
    }

    /// The unreserved part.
    pub fn unreserved(&self) -> Self {
        Self {
            unreserved: self.unreserved.clone(),
            reserved: BTreeMap::new(),
        }
    }

    /// The reserved part (every role).
    pub fn reserved(&self) -> Self {
        Self {
            unreserved: Bag::default(),
            reserved: self.reserved.clone(),
        }
    }

    /// The part reserved for exactly `role`.
    pub fn reserved_for(&self, role: &str) -> Self {
        let mut out = Self::new();
        if let Some(b) = self.reserved.get(role) {
            out.reserved.insert(role.to_owned(), b.clone());
        }
        out
    }

    /// What may be allocated to `role`: the unreserved part and what is reserved for `role`
    /// or one of its ancestors (a reservation for `eng` serves `eng/ml` too).
    pub fn allocatable_to(&self, role: &str) -> Self {
        let mut out = Self {
            unreserved: self.unreserved.clone(),
            reserved: BTreeMap::new(),
        };
        for (r, b) in &self.reserved {
            if super::roles::is_ancestor_or_self(r, role) {
                out.reserved.insert(r.clone(), b.clone());
            }
        }
        out
    }

    /// The same resources, every part reserved for `role`.
    pub fn reserved_as(&self, role: &str) -> Self {
        let mut bag = self.unreserved.clone();
        for b in self.reserved.values() {
            bag.add(b);
        }
        let mut out = Self::new();
        if !bag.is_empty() {
            out.reserved.insert(role.to_owned(), bag);
        }
        out
    }

    /// The same resources, all unreserved.
    pub fn flattened(&self) -> Self {
        let mut bag = self.unreserved.clone();
        for b in self.reserved.values() {
            bag.add(b);
        }
        Self {
            unreserved: bag,
            reserved: BTreeMap::new(),
        }
    }

    /// Adds everything in `other`.
    pub fn add(&mut self, other: &Self) {
        for (role, bag) in other.bags() {
            if !bag.is_empty() {
                self.bag_mut(role).add(bag);
            }
        }
    }

    /// Adds only the scalars of `other`, all as unreserved: aggregates over several agents
    /// (a framework's allocation, the cluster total) hold scalar quantities only, since the
    /// ranges and sets of different agents are not the same ports or items, and do not keep
    /// reservations apart.
    pub fn add_scalars(&mut self, other: &Self) {
        for (_, bag) in other.bags() {
            for (name, &milli) in &bag.scalars {
                self.unreserved.add_scalar_named(name, milli);
            }
        }
    }

    /// Removes only the scalars of `other` from the unreserved part (saturating); see
    /// [`Resources::add_scalars`].
    pub fn subtract_scalars(&mut self, other: &Self) {
        for (_, bag) in other.bags() {
            self.unreserved.subtract_scalars(&bag.scalars);
        }
    }

    /// Adds the unreserved scalars of `other` (`add_scalars(&other.unreserved())` without
    /// the copy).
    pub fn add_unreserved_scalars(&mut self, other: &Self) {
        for (name, &milli) in &other.unreserved.scalars {
            self.unreserved.add_scalar_named(name, milli);
        }
    }

    /// Removes the unreserved scalars of `other` from the unreserved part (saturating).
    pub fn subtract_unreserved_scalars(&mut self, other: &Self) {
        self.unreserved.subtract_scalars(&other.unreserved.scalars);
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
                self.reserved
                    .get(role)
                    .is_some_and(|mine| mine.contains(bag))
            })
    }

    /// Removes everything of `other` that is in `self` (saturating: what `self` lacks is
    /// ignored). Callers that keep books check [`Resources::contains`] first.
    pub fn subtract(&mut self, other: &Self) {
        self.unreserved.subtract(&other.unreserved);
        for (role, bag) in &other.reserved {
            if let Some(mine) = self.reserved.get_mut(role) {
                mine.subtract(bag);
                if mine.is_empty() {
                    self.reserved.remove(role);
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
                Some(r) => self.reserved.get(r),
            };
            let Some(mine) = mine else { return true };
            theirs.ranges.iter().all(|(name, set)| {
                mine.ranges
                    .get(name)
                    .is_none_or(|m| m.difference(set) == *m)
            }) && theirs
                .sets
                .iter()
                .all(|(name, items)| mine.sets.get(name).is_none_or(|m| m.is_disjoint(items)))
        })
    }

    /// Lowers each scalar named in `caps` to at most the cap (milli-units, summed over
    /// reservations), taking from the unreserved part first.
    pub fn cap_scalars(&mut self, caps: &BTreeMap<Name, i64>) {
        for (name, &cap) in caps {
            let mut excess = self.scalar(name) - cap.max(0);
            if excess <= 0 {
                continue;
            }
            let bags = std::iter::once(&mut self.unreserved).chain(self.reserved.values_mut());
            for bag in bags {
                if excess <= 0 {
                    break;
                }
                let have = bag.scalar(name);
                let take = have.min(excess);
                if take > 0 {
                    bag.subtract_scalar(name, take);
                    excess -= take;
                }
            }
        }
        self.prune();
    }

    /// For each resource `wanted` has more of than `self`: `(wanted part, available part)`,
    /// both formatted like `cpus=4` / `ports=[31000-31002]` (`cpus(eng)=1` when reserved),
    /// for error messages.
    pub fn shortfall(&self, wanted: &Self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.unreserved.shortfall(&wanted.unreserved, "", &mut out);
        let empty = Bag::default();
        for (role, bag) in &wanted.reserved {
            let have = self.reserved.get(role).unwrap_or(&empty);
            have.shortfall(bag, &format!("({role})"), &mut out);
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
