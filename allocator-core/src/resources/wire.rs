//! The wire form of [`Resources`]: parsing a `strata.v1` resource list (and what can be
//! wrong with one, [`ResourceError`]) and making one.

use std::collections::BTreeMap;

use strata_proto::{Resource, ResourceKind, ValueRange};

use super::bag::Bag;
use super::scalars::{from_milli, to_milli};
use super::{RangeSet, Resources, entry};

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
}

impl Bag {
    /// Appends the wire entries of the bag, each reserved for `role` (empty: unreserved).
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
}
