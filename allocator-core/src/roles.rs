//! Roles, weights and quota: the names resources are shared by, and the rules for them.
//!
//! A role is a path of `/`-separated segments (`eng`, `eng/ml`); `*` is the default role of
//! frameworks that name none. A role's weight (default 1) scales its fair share; its quota
//! holds a guarantee (scalars set aside for the role even when it does not use them) and a
//! limit (scalars it is never allocated beyond, a name not listed being unlimited; a limit of
//! 0 is kept, and the role gets none of that scalar beyond what it holds). Both
//! count the role's whole subtree: what `eng/ml` holds counts for `eng`. As in Mesos, a
//! role's quota consumption is what is allocated or offered to its subtree plus what is
//! reserved for its subtree and not allocated: reservations count whether used or not.
//!
//! Invariants: every role in the core's books passed [`validate_role`]; weights are finite
//! and positive; a quota holds unreserved scalars only.

use std::collections::BTreeMap;
use std::fmt;

use strata_proto::{Resource, ResourceKind};

use super::resources::{Resources, format_milli, from_milli};

/// The role of frameworks that name none.
pub const DEFAULT_ROLE: &str = "*";

/// What is wrong with a role name, a weight or a quota.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoleError {
    /// The role name is not valid.
    #[error(
        "invalid role {role:?}: {why}; use `*` or `/`-separated names such as `eng` or `eng/ml`"
    )]
    InvalidName {
        /// The name given.
        role: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A weight is not a positive finite number.
    #[error("invalid weight {weight} for role {role:?}: weights must be positive numbers")]
    InvalidWeight {
        /// The role.
        role: String,
        /// The weight given.
        weight: f64,
    },
    /// A quota names something other than unreserved scalars.
    #[error("invalid quota for role {role:?}: {why}; give scalars such as cpus=100 mem=524288")]
    InvalidQuota {
        /// The role.
        role: String,
        /// What is wrong.
        why: String,
    },
}

/// Checks a role name: `*`, or non-empty `/`-separated segments without whitespace, `.`,
/// `..` or `*`.
pub fn validate_role(role: &str) -> Result<(), RoleError> {
    let bad = |why| {
        Err(RoleError::InvalidName {
            role: role.to_owned(),
            why,
        })
    };
    if role == DEFAULT_ROLE {
        return Ok(());
    }
    if role.is_empty() {
        return bad("it is empty");
    }
    for segment in role.split('/') {
        if segment.is_empty() {
            return bad("it has an empty segment");
        }
        if segment == "." || segment == ".." {
            return bad("a segment is `.` or `..`");
        }
        if segment.starts_with('-') {
            return bad("a segment starts with `-`");
        }
        if segment
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '\\')
        {
            return bad("it contains whitespace, `*` or `\\`");
        }
    }
    Ok(())
}

/// Whether `ancestor` is `role` or one of its ancestors (`eng` for `eng/ml`).
pub fn is_ancestor_or_self(ancestor: &str, role: &str) -> bool {
    role == ancestor
        || (role.len() > ancestor.len()
            && role.starts_with(ancestor)
            && role.as_bytes()[ancestor.len()] == b'/')
}

/// `role` and its ancestors, nearest first: `eng/ml/x`, `eng/ml`, `eng`.
pub fn self_and_ancestors(role: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(role);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.rfind('/').map(|i| &current[..i]);
        Some(current)
    })
}

/// A role's quota; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quota {
    /// Scalars set aside for the role.
    pub guarantee: Resources,
    /// Scalars the role never exceeds; a name not listed is unlimited.
    pub limit: Limits,
}

/// A quota's limits: milli-units by scalar name. Unlike [`Resources`], which holds no zero
/// scalars, a limit of 0 is kept (the role is capped at nothing); a name not listed has no
/// limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits(BTreeMap<String, i64>);

impl Limits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits `name` to `milli` milli-units (a negative limit is 0).
    pub fn set(&mut self, name: &str, milli: i64) {
        self.0.insert(name.to_owned(), milli.max(0));
    }

    /// The limit of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }

    /// The limits by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(name, milli)| (name.as_str(), *milli))
    }

    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limits of a quota's wire form, already checked by [`Resources::from_proto`] as
    /// `parsed`: its unreserved scalars, and a limit of 0 for each unreserved scalar entry
    /// that `parsed` holds none of (zero).
    pub fn from_parsed(list: &[Resource], parsed: &Resources) -> Self {
        let mut limits = Self::new();
        for (name, milli) in parsed.scalars() {
            limits.set(name, milli);
        }
        for r in list {
            if r.kind() == ResourceKind::Scalar
                && r.role.is_empty()
                && !limits.0.contains_key(&r.name)
            {
                limits.set(&r.name, 0);
            }
        }
        limits
    }

    /// The wire form: one unreserved scalar per limit, zeros included.
    pub fn to_proto(&self) -> Vec<Resource> {
        self.iter()
            .map(|(name, milli)| Resource::scalar(name, from_milli(milli)))
            .collect()
    }
}

impl From<&Resources> for Limits {
    /// The unreserved scalars of `resources` as limits.
    fn from(resources: &Resources) -> Self {
        let mut limits = Self::new();
        for (name, milli) in resources.scalars() {
            limits.set(name, milli);
        }
        limits
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(none)");
        }
        let parts: Vec<String> = self
            .iter()
            .map(|(name, milli)| format!("{name}={}", format_milli(milli)))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// An error when `resources`, the `what` ("guarantee", "limit") of `role`'s quota, are not
/// unreserved scalars only.
pub fn check_quota_resources(role: &str, what: &str, r: &Resources) -> Result<(), RoleError> {
    let bad = |why: String| {
        Err(RoleError::InvalidQuota {
            role: role.to_owned(),
            why,
        })
    };
    if r.has_reservations() {
        return bad(format!("the {what} names reserved resources"));
    }
    let scalars = Resources::new().plus(r);
    let mut only = Resources::new();
    only.add_scalars(r);
    if only != scalars {
        return bad(format!("the {what} names ranges or sets"));
    }
    Ok(())
}

impl Quota {
    /// Checks a quota for `role`: a guarantee of unreserved scalars only, and no guarantee
    /// above a limit (a limit of 0 included).
    pub fn validate(&self, role: &str) -> Result<(), RoleError> {
        validate_role(role)?;
        check_quota_resources(role, "guarantee", &self.guarantee)?;
        for (name, g) in self.guarantee.scalars() {
            if self.limit.get(name).is_some_and(|limit| limit < g) {
                return Err(RoleError::InvalidQuota {
                    role: role.to_owned(),
                    why: format!("the guarantee of {name} is above its limit"),
                });
            }
        }
        Ok(())
    }

    /// Whether the quota sets nothing.
    pub fn is_empty(&self) -> bool {
        self.guarantee.is_empty() && self.limit.is_empty()
    }
}

/// Checks a weight.
pub fn validate_weight(role: &str, weight: f64) -> Result<(), RoleError> {
    validate_role(role)?;
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(RoleError::InvalidWeight {
            role: role.to_owned(),
            weight,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names() {
        for ok in ["*", "eng", "eng/ml", "a-b_c.d", "x/y/z"] {
            assert_eq!(validate_role(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "/eng", "eng/", "eng//ml", ".", "eng/..", "a b", "-x", "eng/*", "a\\b",
        ] {
            assert!(validate_role(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ancestry() {
        assert!(is_ancestor_or_self("eng", "eng"));
        assert!(is_ancestor_or_self("eng", "eng/ml"));
        assert!(!is_ancestor_or_self("eng", "engineering"));
        assert!(!is_ancestor_or_self("eng/ml", "eng"));
        assert_eq!(
            self_and_ancestors("a/b/c").collect::<Vec<_>>(),
            vec!["a/b/c", "a/b", "a"]
        );
        assert_eq!(self_and_ancestors("*").collect::<Vec<_>>(), vec!["*"]);
    }
}
