//! Reading an offer's resources (`offer_cpus(&offer)`, or `offer.cpus()` with [`OfferExt`]) and
//! packing tasks into it with [`ResourceBudget`].

use std::collections::BTreeMap;

use strata_proto::{Offer, Resource, ResourceKind, names, scalar_sum};

/// Scalars are exact to 1/1000, as in the allocator (and Mesos).
const SCALE: f64 = 1000.0;

/// Rounds a scalar to the allocator's precision of 1/1000.
pub fn round_scalar(value: f64) -> f64 {
    (value * SCALE).round() / SCALE
}

// The getters add 0.0 so that an absent resource reads 0.0, not the -0.0 of an empty float sum.

/// CPU cores in the offer.
pub fn offer_cpus(offer: &Offer) -> f64 {
    scalar_sum(&offer.resources, names::CPUS) + 0.0
}

/// Memory in the offer, MiB.
pub fn offer_mem(offer: &Offer) -> f64 {
    scalar_sum(&offer.resources, names::MEM) + 0.0
}

/// Disk in the offer, MiB.
pub fn offer_disk(offer: &Offer) -> f64 {
    scalar_sum(&offer.resources, names::DISK) + 0.0
}

/// GPUs in the offer.
pub fn offer_gpus(offer: &Offer) -> f64 {
    scalar_sum(&offer.resources, names::GPUS) + 0.0
}

/// Port ranges in the offer, each closed at both ends.
pub fn offer_ports(offer: &Offer) -> Vec<(u64, u64)> {
    ranges(&offer.resources, names::PORTS)
}

/// All ranges of the ranges resources named `name`.
pub fn ranges(resources: &[Resource], name: &str) -> Vec<(u64, u64)> {
    resources
        .iter()
        .filter(|r| r.name == name && r.kind() == ResourceKind::Ranges)
        .flat_map(|r| r.ranges.iter().map(|v| (v.begin, v.end)))
        .collect()
}

/// Resource getters on [`Offer`]: `offer.cpus()`, `offer.mem()`, ...
pub trait OfferExt {
    /// CPU cores.
    fn cpus(&self) -> f64;
    /// Memory, MiB.
    fn mem(&self) -> f64;
    /// Disk, MiB.
    fn disk(&self) -> f64;
    /// GPUs.
    fn gpus(&self) -> f64;
    /// Port ranges.
    fn ports(&self) -> Vec<(u64, u64)>;
    /// The sum of the scalar resources named `name`.
    fn scalar(&self, name: &str) -> f64;
}

impl OfferExt for Offer {
    fn cpus(&self) -> f64 {
        offer_cpus(self)
    }
    fn mem(&self) -> f64 {
        offer_mem(self)
    }
    fn disk(&self) -> f64 {
        offer_disk(self)
    }
    fn gpus(&self) -> f64 {
        offer_gpus(self)
    }
    fn ports(&self) -> Vec<(u64, u64)> {
        offer_ports(self)
    }
    fn scalar(&self, name: &str) -> f64 {
        scalar_sum(&self.resources, name) + 0.0
    }
}

/// What is left of an offer's scalar resources while tasks are packed into it.
///
/// ```
/// use strata_framework::{ResourceBudget, task};
/// use strata_proto::{Offer, Resource};
///
/// let offer = Offer {
///     resources: vec![Resource::scalar("cpus", 1.0), Resource::scalar("mem", 100.0)],
///     ..Offer::default()
/// };
/// let mut budget = ResourceBudget::of_offer(&offer);
/// let t = task("t").shell("true").cpus(0.4).mem(40.0).build();
/// assert!(budget.take(&t.resources));
/// assert!(budget.take(&t.resources));
/// assert!(!budget.take(&t.resources)); // 0.2 cpus and 20 MiB left
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceBudget {
    scalars: BTreeMap<String, f64>,
}

impl ResourceBudget {
    /// The scalar resources of `resources`.
    pub fn new(resources: &[Resource]) -> Self {
        let mut scalars = BTreeMap::new();
        for r in resources {
            if r.kind() == ResourceKind::Scalar {
                *scalars.entry(r.name.clone()).or_insert(0.0) += r.scalar;
            }
        }
        for value in scalars.values_mut() {
            *value = round_scalar(*value);
        }
        Self { scalars }
    }

    /// The scalar resources of `offer`.
    pub fn of_offer(offer: &Offer) -> Self {
        Self::new(&offer.resources)
    }

    /// How much of `name` is left.
    pub fn get(&self, name: &str) -> f64 {
        self.scalars.get(name).copied().unwrap_or(0.0)
    }

    /// Whether every scalar in `resources` fits in what is left. Non-scalar resources (ports)
    /// are not checked.
    pub fn fits(&self, resources: &[Resource]) -> bool {
        ResourceBudget::new(resources)
            .scalars
            .iter()
            .all(|(name, want)| *want <= 0.0 || *want <= self.get(name))
    }

    /// Subtracts `resources` if they fit (see [`fits`](Self::fits)) and says whether they did.
    pub fn take(&mut self, resources: &[Resource]) -> bool {
        if !self.fits(resources) {
            return false;
        }
        for (name, want) in ResourceBudget::new(resources).scalars {
            if let Some(left) = self.scalars.get_mut(&name) {
                *left = round_scalar(*left - want);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task;

    fn offer() -> Offer {
        Offer {
            id: "o1".into(),
            resources: vec![
                Resource::scalar(names::CPUS, 0.3),
                Resource::scalar(names::MEM, 96.0),
                Resource::scalar(names::DISK, 1000.0),
                Resource::ranges(names::PORTS, [(31000, 31009), (31020, 31029)]),
            ],
            ..Offer::default()
        }
    }

    #[test]
    fn getters_read_the_offer() {
        let o = offer();
        assert_eq!(offer_cpus(&o), 0.3);
        assert_eq!(offer_mem(&o), 96.0);
        assert_eq!(offer_disk(&o), 1000.0);
        assert_eq!(offer_gpus(&o), 0.0);
        assert!(
            offer_gpus(&o).is_sign_positive(),
            "an absent resource is +0.0"
        );
        assert_eq!(offer_ports(&o), vec![(31000, 31009), (31020, 31029)]);
        assert_eq!(o.cpus(), 0.3);
        assert_eq!(o.mem(), 96.0);
        assert_eq!(o.scalar("disk"), 1000.0);
    }

    #[test]
    fn budget_packs_exactly_as_many_tasks_as_fit_despite_float_error() {
        // 0.1 + 0.1 + 0.1 > 0.3 in binary floating point; rounding to 1/1000 keeps three tasks.
        let mut budget = ResourceBudget::of_offer(&offer());
        let t = task("t").shell("true").cpus(0.1).mem(32.0).build();
        let packed = (0..10).take_while(|_| budget.take(&t.resources)).count();
        assert_eq!(packed, 3);
        assert_eq!(budget.get(names::CPUS), 0.0);
        assert_eq!(budget.get(names::MEM), 0.0);
        assert_eq!(budget.get(names::DISK), 1000.0);
    }

    #[test]
    fn budget_rejects_unknown_or_too_large_resources_without_changing() {
        let mut budget = ResourceBudget::of_offer(&offer());
        let before = budget.clone();
        assert!(!budget.take(&task("t").cpus(0.1).gpus(1.0).build().resources));
        assert!(!budget.take(&task("t").cpus(0.4).build().resources));
        assert_eq!(budget, before);
        assert!(budget.fits(&[]));
    }
}
