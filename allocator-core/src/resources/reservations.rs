//! The reservation views of [`Resources`]: what is reserved, for which roles, what may be
//! allocated to a role, and the same resources reserved for one role or for none.

use super::bag::Bag;
use super::{Name, Resources};

impl Resources {
    /// The reserved scalar `name` in milli-units, summed over roles.
    pub fn reserved_scalar(&self, name: &str) -> i64 {
        self.reserved.iter().map(|(_, b)| b.scalar(name)).sum()
    }

    /// The reserved scalar `name` in milli-units, summed over `role` and its descendants.
    pub fn reserved_scalar_within(&self, role: &str, name: &str) -> i64 {
        self.reserved
            .iter()
            .filter(|(r, _)| crate::roles::is_ancestor_or_self(role, r))
            .map(|(_, b)| b.scalar(name))
            .sum()
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
                .filter(|(r, _)| crate::roles::is_ancestor_or_self(r, role))
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
}
