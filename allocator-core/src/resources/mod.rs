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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use strata_proto::names::{CPUS, DISK, GPUS, MEM};
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
        if self.is_empty() {
            return other.clone();
        }
        if other.is_empty() {
            return self.clone();
        }
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

    /// Whether no value of `other` is in `self`.
    pub fn is_disjoint(&self, other: &Self) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            if a.1 < b.0 {
                i += 1;
            } else if b.1 < a.0 {
                j += 1;
            } else {
                return false;
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

/// A resource name (or a reservation role), shared: bags are copied often (every offer)
/// and names are few.
pub type Name = Arc<str>;

/// The scalars with a fixed slot, in name order.
const FIXED: [&str; 4] = [CPUS, DISK, GPUS, MEM];
const SLOT_CPUS: usize = 0;
const SLOT_MEM: usize = 3;

/// The fixed slot of scalar `name`, if it has one.
fn slot(name: &str) -> Option<usize> {
    match name {
        CPUS => Some(0),
        DISK => Some(1),
        GPUS => Some(2),
        MEM => Some(3),
        _ => None,
    }
}

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

/// Scalars: the fixed slots and the other names (each > 0, sorted by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Scalars {
    fixed: [i64; 4],
    extra: Vec<(Name, i64)>,
}

impl Scalars {
    fn is_empty(&self) -> bool {
        self.fixed == [0; 4] && self.extra.is_empty()
    }

    fn get(&self, name: &str) -> i64 {
        match slot(name) {
            Some(i) => self.fixed[i],
            None => find(&self.extra, name).copied().unwrap_or(0),
        }
    }

    fn add(&mut self, name: &str, milli: i64, shared: Option<&Name>) {
        if milli <= 0 {
            return;
        }
        match slot(name) {
            Some(i) => self.fixed[i] += milli,
            None => *entry(&mut self.extra, name, shared) += milli,
        }
    }

    /// Removes `milli` of `name`, saturating at nothing.
    fn sub(&mut self, name: &str, milli: i64) {
        match slot(name) {
            Some(i) => {
                if self.fixed[i] > 0 {
                    self.fixed[i] = (self.fixed[i] - milli).max(0);
                }
            }
            None => {
                if let Ok(i) = self.extra.binary_search_by(|(n, _)| (**n).cmp(name)) {
                    self.extra[i].1 -= milli;
                    if self.extra[i].1 <= 0 {
                        self.extra.remove(i);
                    }
                }
            }
        }
    }

    fn add_all(&mut self, other: &Self) {
        for (mine, theirs) in self.fixed.iter_mut().zip(other.fixed) {
            *mine += theirs;
        }
        for (name, milli) in &other.extra {
            self.add(name, *milli, Some(name));
        }
    }

    fn sub_all(&mut self, other: &Self) {
        for (mine, theirs) in self.fixed.iter_mut().zip(other.fixed) {
            *mine = (*mine - theirs).max(0);
        }
        for (name, milli) in &other.extra {
            self.sub(name, *milli);
        }
    }

    fn contains(&self, other: &Self) -> bool {
        self.fixed.iter().zip(other.fixed).all(|(m, t)| *m >= t)
            && other
                .extra
                .iter()
                .all(|(name, milli)| self.get(name) >= *milli)
    }

    /// The scalars present, the fixed slots first, then the others by name.
    fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        FIXED
            .iter()
            .zip(self.fixed)
            .filter(|(_, m)| *m > 0)
            .map(|(n, m)| (*n, m))
            .chain(self.extra.iter().map(|(n, m)| (&**n, *m)))
    }

    /// The scalars present, sorted by name.
    fn sorted(&self) -> Vec<(&str, i64)> {
        let mut v: Vec<(&str, i64)> = self.iter().collect();
        if !self.extra.is_empty() {
            v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        v
    }
}

/// Upper bounds for scalars (milli-units), by name; a name without one is not capped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalarCaps {
    fixed: [i64; 4],
    extra: Vec<(Name, i64)>,
}

impl Default for ScalarCaps {
    fn default() -> Self {
        Self {
            fixed: [i64::MAX; 4],
            extra: Vec::new(),
        }
    }
}

impl ScalarCaps {
    /// No caps.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps `name` at `milli` (a negative cap is 0), replacing any cap it had.
    pub fn set(&mut self, name: &str, milli: i64) {
        let milli = milli.max(0);
        match slot(name) {
            Some(i) => self.fixed[i] = milli,
            None => match self.extra.binary_search_by(|(n, _)| (**n).cmp(name)) {
                Ok(i) => self.extra[i].1 = milli,
                Err(i) => self.extra.insert(i, (Name::from(name), milli)),
            },
        }
    }

    /// Whether nothing is capped.
    pub fn is_empty(&self) -> bool {
        self.fixed == [i64::MAX; 4] && self.extra.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        FIXED
            .iter()
            .zip(self.fixed)
            .filter(|(_, m)| *m != i64::MAX)
            .map(|(n, m)| (*n, m))
            .chain(self.extra.iter().map(|(n, m)| (&**n, *m)))
    }
}

/// The ranges and sets of a [`Bag`], each sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Items {
    ranges: Vec<(Name, RangeSet)>,
    sets: Vec<(Name, BTreeSet<String>)>,
}

const NO_ITEMS: &Items = &Items {
    ranges: Vec::new(),
    sets: Vec::new(),
};

/// One role's part of a [`Resources`]: named scalars, ranges and sets. The ranges and sets
/// are shared between copies until one changes (copies are made for every offer, changes
/// are rarer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bag {
    scalars: Scalars,
    /// `None` when there are no ranges or sets.
    items: Option<Arc<Items>>,
}

impl Bag {
    fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.items.is_none()
    }

    fn items(&self) -> &Items {
        self.items.as_deref().unwrap_or(NO_ITEMS)
    }

    fn ranges(&self) -> &[(Name, RangeSet)] {
        &self.items().ranges
    }

    fn sets(&self) -> &[(Name, BTreeSet<String>)] {
        &self.items().sets
    }

    /// The items to change (unshared first); call [`Bag::tidy`] after removing any.
    fn items_mut(&mut self) -> &mut Items {
        Arc::make_mut(self.items.get_or_insert_with(Default::default))
    }

    fn tidy(&mut self) {
        if self
            .items
            .as_ref()
            .is_some_and(|i| i.ranges.is_empty() && i.sets.is_empty())
        {
            self.items = None;
        }
    }

    fn scalar(&self, name: &str) -> i64 {
        self.scalars.get(name)
    }

    fn entries(&self) -> usize {
        self.scalars.iter().count() + self.ranges().len() + self.sets().len()
    }

    fn add_ranges(&mut self, name: &str, set: &RangeSet, shared: Option<&Name>) {
        if set.is_empty() {
            return;
        }
        let mine = entry(&mut self.items_mut().ranges, name, shared);
        *mine = mine.union(set);
    }

    fn add(&mut self, other: &Self) {
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

    fn subtract(&mut self, other: &Self) {
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

    fn contains(&self, other: &Self) -> bool {
        self.scalars.contains(&other.scalars)
            && other
                .ranges()
                .iter()
                .all(|(name, set)| find(self.ranges(), name).is_some_and(|mine| mine.contains(set)))
            && other.sets().iter().all(|(name, items)| {
                find(self.sets(), name).is_some_and(|mine| items.is_subset(mine))
            })
    }

    fn shortfall(&self, wanted: &Self, suffix: &str, out: &mut Vec<(String, String)>) {
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

    fn to_proto(&self, role: &str, out: &mut Vec<Resource>) {
        for (name, milli) in self.scalars.sorted() {
            out.push(Resource {
                role: role.to_owned(),
                ..Resource::scalar(name, from_milli(milli))
            });
        }
        for (name, set) in self.ranges() {
            out.push(Resource {
                role: role.to_owned(),
                ..Resource::ranges(name, set.ranges().iter().copied())
            });
        }
        for (name, items) in self.sets() {
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

/// A bag of named resources with exact arithmetic, each unreserved or reserved for one
/// role; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    unreserved: Bag,
    /// Role to what is reserved for it, sorted by role; never holds an empty bag.
    reserved: Vec<(Name, Bag)>,
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
                    out.bag_mut(role, None).scalars.add(&r.name, milli, None);
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
                    out.bag_mut(role, None).add_ranges(
                        &r.name,
                        &RangeSet::from_ranges(ranges),
                        None,
                    );
                }
                ResourceKind::Set => {
                    if !r.set.is_empty() {
                        let bag = out.bag_mut(role, None);
                        entry(&mut bag.items_mut().sets, &r.name, None)
                            .extend(r.set.iter().cloned());
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
            bag.to_proto(role.map_or("", |r| r), &mut out);
        }
        out
    }

    /// The wire form with every entry's `allocation_role` set (resources in an offer).
    pub fn to_proto_allocated(&self, allocation_role: &str) -> Vec<Resource> {
        let entries = self.bags().map(|(_, b)| b.entries()).sum();
        let mut out = Vec::with_capacity(entries);
        for (role, bag) in self.bags() {
            bag.to_proto(role.map_or("", |r| r), &mut out);
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

    /// The reserved scalar `name` in milli-units, summed over roles.
    pub fn reserved_scalar(&self, name: &str) -> i64 {
        self.reserved.iter().map(|(_, b)| b.scalar(name)).sum()
    }

    /// The reserved scalar `name` in milli-units, summed over `role` and its descendants.
    pub fn reserved_scalar_within(&self, role: &str, name: &str) -> i64 {
        self.reserved
            .iter()
            .filter(|(r, _)| super::roles::is_ancestor_or_self(role, r))
            .map(|(_, b)| b.scalar(name))
            .sum()
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

    /// Whether some of the bag is reserved.
    pub fn has_reservations(&self) -> bool {
        !self.reserved.is_empty()
    }

    /// The roles something is reserved for.
    pub fn reservation_roles(&self) -> impl Iterator<Item = &str> {
        self.reserved.iter().map(|(r, _)| &**r)
    }

    /// The unreserved part.
    pub fn unreserved(&self) -> Self {
        Self {
            unreserved: self.unreserved.clone(),
            reserved: Vec::new(),
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
        Self {
            unreserved: Bag::default(),
            reserved: self
                .reserved
                .iter()
                .filter(|(r, _)| &**r == role)
                .cloned()
                .collect(),
        }
    }

    /// What may be allocated to `role`: the unreserved part and what is reserved for `role`
    /// or one of its ancestors (a reservation for `eng` serves `eng/ml` too).
    pub fn allocatable_to(&self, role: &str) -> Self {
        Self {
            unreserved: self.unreserved.clone(),
            reserved: self
                .reserved
                .iter()
                .filter(|(r, _)| super::roles::is_ancestor_or_self(r, role))
                .cloned()
                .collect(),
        }
    }

    /// The same resources, every part reserved for `role`.
    pub fn reserved_as(&self, role: &str) -> Self {
        let mut bag = self.unreserved.clone();
        for (_, b) in &self.reserved {
            bag.add(b);
        }
        let mut out = Self::new();
        if !bag.is_empty() {
            out.reserved.push((Name::from(role), bag));
        }
        out
    }

    /// The same resources, all unreserved.
    pub fn flattened(&self) -> Self {
        let mut bag = self.unreserved.clone();
        for (_, b) in &self.reserved {
            bag.add(b);
        }
        Self {
            unreserved: bag,
            reserved: Vec::new(),
        }
    }

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

    /// Whether the bag is worth offering: Mesos' default minimum allocatable resources,
    /// at least 0.01 cpus or 32 MiB of memory.
    pub fn is_allocatable(&self) -> bool {
        self.fixed(SLOT_CPUS) >= 10 || self.fixed(SLOT_MEM) >= 32 * MILLI
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
