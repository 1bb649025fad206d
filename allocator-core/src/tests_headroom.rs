//! Quota headroom for every guaranteed resource: a role below its guarantee is offered what
//! its guarantee names up to what is missing, and of the other resources only what the unmet
//! guarantees of other roles leave (as Mesos' allocator does since 1.6); a role with a
//! cpus-only guarantee cannot take the memory another role's guarantee needs.

use strata_proto::names::{CPUS, MEM};
use strata_proto::{FrameworkInfo, Offer, Resource};

use super::roles::{Limits, Quota};
use super::tests::{Harness, offers_in, scalar};
use super::{ConnId, FrameworkId, Resources};

fn guarantee(list: &[Resource]) -> Quota {
    Quota {
        guarantee: Resources::from_proto(list).expect("valid"),
        limit: Limits::new(),
    }
}

fn in_role(h: &mut Harness, name: &str, role: &str) -> (ConnId, FrameworkId) {
    h.subscribe_info(FrameworkInfo {
        name: name.to_owned(),
        roles: vec![role.to_owned()],
        ..FrameworkInfo::default()
    })
}

fn total(offers: &[Offer], name: &str) -> f64 {
    offers.iter().map(|o| scalar(&o.resources, name)).sum()
}

#[test]
fn a_cpus_guarantee_leaves_the_memory_another_guarantee_needs() {
    let mut h = Harness::new();
    h.agent(4.0, 4096.0);
    h.core
        .set_quota("a", guarantee(&[Resource::scalar(CPUS, 1.0)]))
        .expect("quota a");
    h.core
        .set_quota("b", guarantee(&[Resource::scalar(MEM, 2048.0)]))
        .expect("quota b");
    let (aconn, _) = in_role(&mut h, "fa", "a");
    let (bconn, _) = in_role(&mut h, "fb", "b");
    let cmds = h.allocate();
    let (a, b) = (offers_in(&cmds, aconn), offers_in(&cmds, bconn));
    assert!(
        total(&a, MEM) <= 2048.0,
        "role a (cpus guarantee) took memory b's guarantee needs: {a:?}"
    );
    assert!(
        total(&b, MEM) >= 2048.0,
        "role b's memory guarantee was not met: {b:?}"
    );
    assert!(total(&a, CPUS) >= 1.0, "role a's cpus guarantee: {a:?}");
}
