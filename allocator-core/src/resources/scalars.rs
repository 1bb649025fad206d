//! Scalars in milli-units: conversion from and to the wire's `f64` and formatting, the
//! scalar store of one bag ([`Scalars`]: fixed slots for `cpus`, `disk`, `gpus` and `mem`,
//! the other names in a short vector sorted by name) and [`ScalarCaps`].

use strata_proto::names::{CPUS, DISK, GPUS, MEM};

use super::{Name, ResourceError, entry, find};

/// Milli-units per unit: scalars are exact to 1/1000, as in Mesos.
pub const MILLI: i64 = 1000;

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

/// The scalars with a fixed slot, in name order.
pub(super) const FIXED: [&str; 4] = [CPUS, DISK, GPUS, MEM];
pub(super) const SLOT_CPUS: usize = 0;
pub(super) const SLOT_MEM: usize = 3;

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

/// Scalars: the fixed slots and the other names (each > 0, sorted by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Scalars {
    pub(super) fixed: [i64; 4],
    pub(super) extra: Vec<(Name, i64)>,
}

impl Scalars {
    pub(super) fn is_empty(&self) -> bool {
        self.fixed == [0; 4] && self.extra.is_empty()
    }

    pub(super) fn get(&self, name: &str) -> i64 {
        match slot(name) {
            Some(i) => self.fixed[i],
            None => find(&self.extra, name).copied().unwrap_or(0),
        }
    }

    pub(super) fn add(&mut self, name: &str, milli: i64, shared: Option<&Name>) {
        if milli <= 0 {
            return;
        }
        match slot(name) {
            Some(i) => self.fixed[i] += milli,
            None => *entry(&mut self.extra, name, shared) += milli,
        }
    }

    /// Removes `milli` of `name`, saturating at nothing.
    pub(super) fn sub(&mut self, name: &str, milli: i64) {
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

    pub(super) fn add_all(&mut self, other: &Self) {
        for (mine, theirs) in self.fixed.iter_mut().zip(other.fixed) {
            *mine += theirs;
        }
        for (name, milli) in &other.extra {
            self.add(name, *milli, Some(name));
        }
    }

    pub(super) fn sub_all(&mut self, other: &Self) {
        for (mine, theirs) in self.fixed.iter_mut().zip(other.fixed) {
            *mine = (*mine - theirs).max(0);
        }
        for (name, milli) in &other.extra {
            self.sub(name, *milli);
        }
    }

    pub(super) fn contains(&self, other: &Self) -> bool {
        self.fixed.iter().zip(other.fixed).all(|(m, t)| *m >= t)
            && other
                .extra
                .iter()
                .all(|(name, milli)| self.get(name) >= *milli)
    }

    /// The scalars present, the fixed slots first, then the others by name.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        FIXED
            .iter()
            .zip(self.fixed)
            .filter(|(_, m)| *m > 0)
            .map(|(n, m)| (*n, m))
            .chain(self.extra.iter().map(|(n, m)| (&**n, *m)))
    }

    /// The scalars present, sorted by name.
    pub(super) fn sorted(&self) -> Vec<(&str, i64)> {
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

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        FIXED
            .iter()
            .zip(self.fixed)
            .filter(|(_, m)| *m != i64::MAX)
            .map(|(n, m)| (*n, m))
            .chain(self.extra.iter().map(|(n, m)| (&**n, *m)))
    }
}
