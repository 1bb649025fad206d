//! Roles, weights and quota: the names resources are shared by, and the rules for them.
//!
//! A role is a path of `/`-separated segments (`eng`, `eng/ml`); `*` is the default role of
//! frameworks that name none. A role's weight (default 1) scales its fair share; its quota
//! holds a guarantee (scalars set aside for the role even when it does not use them) and a
//! limit (scalars it is never allocated beyond, a name not listed being unlimited). Both
//! count the role's whole subtree: what `eng/ml` holds counts for `eng`. As in Mesos, a
//! role's quota consumption is what is allocated or offered to its subtree plus what is
//! reserved for its subtree and not allocated: reservations count whether used or not.
//!
//! Invariants: every role in the core's books passed [`validate_role`]; weights are finite
//! and positive; a quota holds unreserved scalars only.

use super::resources::Resources;

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
    pub limit: Resources,
}

impl Quota {
    /// Checks a quota for `role`: unreserved scalars only, and no guarantee above a limit.
    pub fn validate(&self, role: &str) -> Result<(), RoleError> {
        validate_role(role)?;
        let bad = |why: String| {
            Err(RoleError::InvalidQuota {
                role: role.to_owned(),
                why,
            })
        };
        for (what, r) in [("guarantee", &self.guarantee), ("limit", &self.limit)] {
            if r.has_reservations() {
                return bad(format!("the {what} names reserved resources"));
            }
            let scalars = Resources::new().plus(r);
            let mut only = Resources::new();
            only.add_scalars(r);
            if only != scalars {
                return bad(format!("the {what} names ranges or sets"));
            }
        }
        for (name, g) in self.guarantee.scalars() {
            if self.limit.scalar(name) > 0 && self.limit.scalar(name) < g {
                return bad(format!("the guarantee of {name} is above its limit"));
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
