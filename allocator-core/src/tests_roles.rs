//! Table-driven tests of roles, weights, quota, reservations and agent maintenance: each
//! drives the core with an injected clock and checks the invariants after every step.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_proto::names::{CPUS, MEM};
use strata_proto::{
    AgentInfo, Call, Filters, FrameworkInfo, Offer, Operation, Resource, TaskState, agent_message,
    allocator_message, call, operation,
};

use super::registry::Registry;
use super::roles::{Limits, Quota};
use super::tests::{
    Harness, agent_msgs, assert_even_and_bounded, decline_for_ten_seconds, launch_call, offers_in,
    rescinds_in, scalar, simple_call, status, task, turns, updates_in,
};
use super::{AgentId, ConnId, FrameworkId, Resources};

fn res(list: &[Resource]) -> Resources {
    Resources::from_proto(list).expect("valid resources")
}

fn reserved(name: &str, value: f64, role: &str) -> Resource {
    Resource {
        role: role.to_owned(),
        ..Resource::scalar(name, value)
    }
}

impl Harness {
    /// A new agent registering `resources`; returns its stream and id.
    fn agent_with(&mut self, resources: Vec<Resource>) -> (ConnId, AgentId) {
        let conn = self.conn();
        let now = self.now;
        let id = self
            .core
            .agent_register(
                now,
                conn,
                agent_message::Register {
                    info: Some(AgentInfo {
                        hostname: format!("host-{}", conn.0),
                        resources,
                        ..AgentInfo::default()
                    }),
                    tasks: vec![],
                },
            )
            .expect("registered");
        self.cmds();
        (conn, id)
    }

    fn in_roles(&mut self, name: &str, roles: &[&str]) -> (ConnId, FrameworkId) {
        self.subscribe_info(FrameworkInfo {
            name: name.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..FrameworkInfo::default()
        })
    }
}

/// Launches one task using all of `offer`'s cpus and mem (reserved parts included).
fn take_all(h: &mut Harness, fconn: ConnId, fid: &FrameworkId, offer: &Offer, id: &str) {
    let mut t = task(id, 0.0, 0.0);
    t.resources = offer
        .resources
        .iter()
        .filter(|r| r.name == CPUS || r.name == MEM)
        .cloned()
        .collect();
    let now = h.now;
    h.core
        .framework_call(now, fconn, launch_call(fid, &[&offer.id], vec![t]));
    let cmds = h.cmds();
    assert!(
        updates_in(&cmds, fconn).is_empty(),
        "launch failed: {cmds:?}"
    );
}

fn decline(fid: &FrameworkId, offer: &Offer, refuse: f64) -> Call {
    simple_call(
        fid,
        call::Call::Decline(call::Decline {
            offer_ids: vec![offer.id.clone()],
            filters: Some(Filters {
                refuse_seconds: Some(refuse),
            }),
        }),
    )
}

/// Declines `offers` and every offer that follows (filters are per role, so a declined
/// agent goes to the framework's other roles) until none comes.
fn decline_all(h: &mut Harness, fconn: ConnId, fid: &FrameworkId, offers: Vec<Offer>, refuse: f64) {
    let mut pending = offers;
    while let Some(offer) = pending.pop() {
        pending.extend(offers_in(
            &h.call(fconn, decline(fid, &offer, refuse)),
            fconn,
        ));
    }
}

#[test]
fn two_demand_shapes_reach_drf_shares() {
    // Ghodsi et al.'s example: 9 cpus, 18 GiB; A runs <1 cpu, 4 GiB>, B <3 cpus, 1 GiB>.
    // DRF gives A three tasks and B two: both dominant shares are 2/3.
    let mut h = Harness::new();
    let (aconn, _) = h.agent(9.0, 18.0 * 1024.0);
    let shapes = [("a", 1.0, 4096.0), ("b", 3.0, 1024.0)];
    let fws: Vec<(ConnId, FrameworkId)> = shapes.iter().map(|(n, ..)| h.framework(n)).collect();
    let mut launched = [0usize; 2];
    // Offers made by a DECLINE's pass (to the other framework) are handled in the next
    // round.
    let mut cmds = h.allocate();
    for round in 0..50 {
        let mut next = Vec::new();
        let mut any = false;
        for (i, (fconn, fid)) in fws.iter().enumerate() {
            for offer in offers_in(&cmds, *fconn) {
                any = true;
                let (_, cpus, mem) = shapes[i];
                if scalar(&offer.resources, CPUS) >= cpus && scalar(&offer.resources, MEM) >= mem {
                    let id = format!("{}-{round}", shapes[i].0);
                    let now = h.now;
                    h.core.framework_call(
                        now,
                        *fconn,
                        launch_call(fid, &[&offer.id], vec![task(&id, cpus, mem)]),
                    );
                    let cmds = h.cmds();
                    assert_eq!(agent_msgs(&cmds, aconn).len(), 1);
                    launched[i] += 1;
                } else {
                    next.extend(h.call(*fconn, decline(fid, &offer, 1000.0)));
                }
            }
        }
        if !any {
            break;
        }
        next.extend(h.allocate());
        cmds = next;
    }
    assert_eq!(launched, [3, 2]);
    let shares: Vec<f64> = h
        .core
        .framework_summaries()
        .iter()
        .map(|f| f.dominant_share)
        .collect();
    for s in shares {
        assert!((s - 2.0 / 3.0).abs() < 1e-9, "{s}");
    }
}

/// Offers per framework in one pass over `agents` one-cpu agents, roles and weights given.
fn shares_in_one_pass(
    agents: usize,
    frameworks: &[(&str, &[&str])],
    weights: &[(&str, f64)],
) -> Vec<usize> {
    let mut h = Harness::new();
    h.core
        .set_weights(
            &weights
                .iter()
                .map(|(r, w)| ((*r).to_owned(), *w))
                .collect::<BTreeMap<_, _>>(),
        )
        .expect("weights");
    for _ in 0..agents {
        h.agent(1.0, 1024.0);
    }
    let fws: Vec<ConnId> = frameworks
        .iter()
        .map(|(n, roles)| h.in_roles(n, roles).0)
        .collect();
    let cmds = h.allocate();
    fws.iter().map(|c| offers_in(&cmds, *c).len()).collect()
}

#[test]
fn weighted_hierarchical_drf_splits_agents() {
    type Case = (
        &'static str,
        usize,
        &'static [(&'static str, &'static [&'static str])],
        &'static [(&'static str, f64)],
        &'static [usize],
    );
    let cases: &[Case] = &[
        (
            "equal roles",
            30,
            &[("a", &["a"]), ("b", &["b"])],
            &[],
            &[15, 15],
        ),
        (
            "weights 1:2 give 1:2",
            30,
            &[("a", &["a"]), ("b", &["b"])],
            &[("b", 2.0)],
            &[10, 20],
        ),
        (
            "weights 1:3",
            40,
            &[("a", &["a"]), ("b", &["b"])],
            &[("a", 1.0), ("b", 3.0)],
            &[10, 30],
        ),
        (
            "two frameworks of one role share its half",
            40,
            &[("x", &["a"]), ("y", &["a"]), ("z", &["b"])],
            &[],
            &[10, 10, 20],
        ),
        (
            "hierarchy: eng's half is split between its children",
            40,
            &[
                ("ads", &["ads"]),
                ("ml", &["eng/ml"]),
                ("web", &["eng/web"]),
            ],
            &[],
            &[20, 10, 10],
        ),
        (
            "hierarchy with weights inside a subtree",
            60,
            &[
                ("ads", &["ads"]),
                ("ml", &["eng/ml"]),
                ("web", &["eng/web"]),
            ],
            &[("eng/ml", 2.0)],
            &[30, 20, 10],
        ),
    ];
    for (name, agents, frameworks, weights, want) in cases {
        assert_eq!(
            shares_in_one_pass(*agents, frameworks, weights),
            *want,
            "{name}"
        );
    }
}

#[test]
fn offers_carry_their_allocation_role_and_suppress_is_per_role() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    h.agent(1.0, 1024.0);
    let (fconn, fid) = h.in_roles("multi", &["a", "b"]);
    let cmds = h.allocate();
    let offers = offers_in(&cmds, fconn);
    assert_eq!(offers.len(), 2);
    let mut roles: Vec<&str> = offers.iter().map(|o| o.allocation_role.as_str()).collect();
    roles.sort();
    assert_eq!(roles, ["a", "b"], "one offer per role by DRF between roles");
    for o in &offers {
        assert!(
            o.resources
                .iter()
                .all(|r| r.allocation_role == o.allocation_role)
        );
    }
    // Decline everything (each agent in both roles); suppress role a: after the filters
    // expire only role b is offered.
    decline_all(&mut h, fconn, &fid, offers, 1.0);
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Suppress(call::Suppress {
                roles: vec!["a".to_owned()],
            }),
        ),
    );
    assert!(offers_in(&cmds, fconn).is_empty());
    h.advance(Duration::from_secs(2));
    let offers = offers_in(&h.tick(), fconn);
    assert_eq!(offers.len(), 2);
    assert!(offers.iter().all(|o| o.allocation_role == "b"));
    // A role it does not have is an error; REVIVE of role a brings a back.
    let cmds = h.call(
        fconn,
        simple_call(
            &fid,
            call::Call::Suppress(call::Suppress {
                roles: vec!["zzz".to_owned()],
            }),
        ),
    );
    assert!(
        super::tests::errors_in(&cmds, fconn)[0].contains("not subscribed to"),
        "{cmds:?}"
    );
}

#[test]
fn revive_with_roles_clears_only_the_filters_of_those_roles() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    h.agent(1.0, 1024.0);
    let (fconn, fid) = h.in_roles("multi", &["a", "b"]);
    let offers = offers_in(&h.allocate(), fconn);
    assert_eq!(offers.len(), 2);
    // Everything declined for an hour: each agent filtered in both roles.
    decline_all(&mut h, fconn, &fid, offers, 3600.0);
    assert!(offers_in(&h.tick(), fconn).is_empty(), "all filtered");
    let revive = |roles: &[&str]| {
        simple_call(
            &fid,
            call::Call::Revive(call::Revive {
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            }),
        )
    };
    // REVIVE of role b clears role b's filters, not role a's.
    let offers = offers_in(&h.call(fconn, revive(&["b"])), fconn);
    assert_eq!(offers.len(), 2, "{offers:?}");
    assert!(
        offers.iter().all(|o| o.allocation_role == "b"),
        "{offers:?}"
    );
    // Declined again in role b; REVIVE of role a brings both agents back to role a.
    for o in &offers {
        assert!(offers_in(&h.call(fconn, decline(&fid, o, 3600.0)), fconn).is_empty());
    }
    let offers = offers_in(&h.call(fconn, revive(&["a"])), fconn);
    assert_eq!(offers.len(), 2, "{offers:?}");
    assert!(
        offers.iter().all(|o| o.allocation_role == "a"),
        "{offers:?}"
    );
}

#[test]
fn filters_refuse_only_the_role_whose_offer_made_them() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    let (fconn, fid) = h.in_roles("multi", &["a", "b"]);
    let first = h.one_offer(fconn);
    let other = if first.allocation_role == "a" {
        "b"
    } else {
        "a"
    };
    // Declined for an hour in one role: the agent goes to the framework's other role.
    let offers = offers_in(&h.call(fconn, decline(&fid, &first, 3600.0)), fconn);
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].allocation_role, other);
    // Declined there too: nothing until a REVIVE.
    assert!(offers_in(&h.call(fconn, decline(&fid, &offers[0], 3600.0)), fconn).is_empty());
    assert!(offers_in(&h.tick(), fconn).is_empty());
    // REVIVE of the first role lifts its filter, though the other role's stays.
    let revive = simple_call(
        &fid,
        call::Call::Revive(call::Revive {
            roles: vec![first.allocation_role.clone()],
        }),
    );
    let offers = offers_in(&h.call(fconn, revive), fconn);
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].allocation_role, first.allocation_role);
}

#[test]
fn subscribe_suppressed_roles_are_honoured_and_replaced_on_resubscribe() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    h.agent(1.0, 1024.0);
    let info = FrameworkInfo {
        name: "multi".into(),
        roles: vec!["a".into(), "b".into()],
        failover_timeout_seconds: 60.0,
        ..FrameworkInfo::default()
    };
    let subscribe = |h: &mut Harness, info: FrameworkInfo, suppressed: &[&str]| {
        let conn = h.conn();
        let now = h.now;
        let result = h.core.framework_subscribe_as(
            now,
            conn,
            info,
            None,
            suppressed.iter().map(|r| (*r).to_owned()).collect(),
        );
        h.cmds();
        (conn, result)
    };
    let (fconn, fid) = subscribe(&mut h, info.clone(), &["a"]);
    let fid = fid.expect("subscribed");
    let offers = offers_in(&h.allocate(), fconn);
    assert_eq!(offers.len(), 2, "{offers:?}");
    assert!(
        offers.iter().all(|o| o.allocation_role == "b"),
        "{offers:?}"
    );
    // Failover: the new subscription's suppressed roles replace the old ones.
    let now = h.now;
    h.core.framework_disconnected(now, fconn);
    let (fconn, again) = subscribe(
        &mut h,
        FrameworkInfo {
            id: fid.0.clone(),
            ..info.clone()
        },
        &["b"],
    );
    assert_eq!(again.expect("re-subscribed"), fid);
    let offers = offers_in(&h.allocate(), fconn);
    assert_eq!(offers.len(), 2, "{offers:?}");
    assert!(
        offers.iter().all(|o| o.allocation_role == "a"),
        "{offers:?}"
    );
    // A suppressed role the framework does not subscribe with is refused.
    let (_, refused) = subscribe(&mut h, info, &["zzz"]);
    let error = refused.expect_err("refused").to_string();
    assert!(error.contains("suppressed role \"zzz\""), "{error}");
}

#[test]
fn passes_visit_agents_by_id_however_they_were_added() {
    let mut h = Harness::new();
    let (fconn, fid) = h.framework("f");
    let add = |h: &mut Harness, ids: &[&str]| {
        for id in ids {
            let conn = h.conn();
            h.register(conn, id, 1.0, 1024.0, vec![]);
        }
        h.cmds();
    };
    // Many agents then a few (placed one by one), then many again (sorted again).
    let first: Vec<String> = (0..60).map(|i| format!("m{i:02}")).collect();
    add(
        &mut h,
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut expected = first.clone();
    let few = vec!["a".to_owned(), "n".to_owned(), "m05x".to_owned()];
    let many: Vec<String> = (0..30).map(|i| format!("b{i}")).collect();
    for ids in [few, many] {
        let offers = offers_in(&h.tick(), fconn);
        let seen: Vec<&str> = offers.iter().map(|o| o.agent_id.as_str()).collect();
        assert_eq!(seen, expected);
        // Declined without a pass: the next tick, an interval later, offers every agent
        // again (a DECLINE refuses until the next tick).
        let now = h.now;
        for o in &offers {
            h.core.framework_call(now, fconn, decline(&fid, o, 0.0));
        }
        add(&mut h, &ids.iter().map(String::as_str).collect::<Vec<_>>());
        expected.extend(ids);
        expected.sort();
        h.advance(Duration::from_secs(1));
    }
    let offers = offers_in(&h.tick(), fconn);
    let seen: Vec<&str> = offers.iter().map(|o| o.agent_id.as_str()).collect();
    assert_eq!(seen, expected);
}

#[test]
fn only_the_exact_wire_id_names_an_offer() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    let (fconn, fid) = h.framework("f");
    let offers = offers_in(&h.allocate(), fconn);
    assert_eq!(offers.len(), 1);
    let id = offers[0].id.clone();
    let (prefix, number) = id.split_at(id.rfind('O').expect("an offer id") + 1);
    for other in [
        format!("{prefix}0{number}"),
        format!("{prefix}+{number}"),
        format!("{prefix}{number} "),
        format!("x{id}"),
        number.to_owned(),
    ] {
        let mut o = offers[0].clone();
        o.id = other;
        h.call(fconn, decline(&fid, &o, 3600.0));
        assert_eq!(cpus_held(&h, &fid), 1.0, "{} declined {id}", o.id);
    }
    h.call(fconn, decline(&fid, &offers[0], 3600.0));
    assert_eq!(cpus_held(&h, &fid), 0.0);
}

#[test]
fn invalid_roles_are_refused_at_subscribe() {
    let mut h = Harness::new();
    let conn = h.conn();
    let now = h.now;
    let err = h
        .core
        .framework_subscribe(
            now,
            conn,
            FrameworkInfo {
                name: "bad".to_owned(),
                roles: vec!["eng//ml".to_owned()],
                ..FrameworkInfo::default()
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid role \"eng//ml\""),
        "{err}"
    );
    assert!(h.core.framework_summaries().is_empty());
}

fn quota(guarantee: &[Resource], limit: &[Resource]) -> Quota {
    Quota {
        guarantee: res(guarantee),
        limit: Limits::from_parsed(limit, &res(limit)),
    }
}

/// cpus offered (outstanding) plus allocated to `fconn`'s framework.
fn cpus_held(h: &Harness, fid: &FrameworkId) -> f64 {
    let f = h
        .core
        .framework_summaries()
        .into_iter()
        .find(|f| f.id == fid.0)
        .expect("framework");
    scalar(&f.allocated, CPUS) + scalar(&f.offered, CPUS)
}

#[test]
fn a_quota_guarantee_is_met_before_fair_sharing() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.agent(1.0, 1024.0);
    }
    // Without quota the two would split 5:5; q is guaranteed 7 cpus.
    h.core
        .set_quota("q", quota(&[Resource::scalar(CPUS, 7.0)], &[]))
        .expect("quota");
    let (_, fair) = h.in_roles("fair", &["f"]);
    let (_, guaranteed) = h.in_roles("guaranteed", &["q"]);
    h.allocate();
    assert_eq!(cpus_held(&h, &guaranteed), 7.0);
    assert_eq!(cpus_held(&h, &fair), 3.0);
}

#[test]
fn a_guarantee_is_set_aside_while_its_role_is_idle() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.agent(1.0, 1024.0);
    }
    h.core
        .set_quota("idle", quota(&[Resource::scalar(CPUS, 6.0)], &[]))
        .expect("quota");
    let (fconn, fid) = h.in_roles("greedy", &["f"]);
    h.allocate();
    assert_eq!(
        cpus_held(&h, &fid),
        4.0,
        "6 cpus are held back for role idle"
    );
    // Launching on everything offered and ticking does not get it more cpus.
    for _ in 0..3 {
        let cmds = h.tick();
        for (i, o) in offers_in(&cmds, fconn).iter().enumerate() {
            if scalar(&o.resources, CPUS) > 0.0 {
                let id = format!("t{}-{i}", h.now.as_millis());
                take_all(&mut h, fconn, &fid, o, &id);
            }
        }
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(cpus_held(&h, &fid), 4.0);
    // A framework of the idle role gets the 6 set aside.
    let (_, idle) = h.in_roles("idle", &["idle"]);
    h.allocate();
    assert_eq!(cpus_held(&h, &idle), 6.0);
}

#[test]
fn unallocated_reservations_count_toward_a_guarantee() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.agent(1.0, 1024.0);
    }
    // Role idle's 6 cpus guarantee is met by its own reservations, used or not: nothing
    // unreserved is held back for it.
    for _ in 0..6 {
        h.agent_with(vec![
            reserved(CPUS, 1.0, "idle"),
            reserved(MEM, 1024.0, "idle"),
        ]);
    }
    h.core
        .set_quota("idle", quota(&[Resource::scalar(CPUS, 6.0)], &[]))
        .expect("quota");
    let (_, fid) = h.in_roles("greedy", &["f"]);
    h.allocate();
    assert_eq!(cpus_held(&h, &fid), 10.0);
}

#[test]
fn unallocated_reservations_count_toward_a_limit() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.agent(1.0, 1024.0);
    }
    // 2 cpus reserved for eng/other, which no framework uses, count in eng's consumption.
    h.agent_with(vec![
        reserved(CPUS, 2.0, "eng/other"),
        reserved(MEM, 1024.0, "eng/other"),
    ]);
    let (fconn, fid) = h.in_roles("capped", &["eng/ml"]);
    h.core
        .set_quota("eng", quota(&[], &[Resource::scalar(CPUS, 5.0)]))
        .expect("quota");
    for round in 0..4 {
        let cmds = h.tick();
        for (i, o) in offers_in(&cmds, fconn).iter().enumerate() {
            if scalar(&o.resources, CPUS) > 0.0 {
                take_all(&mut h, fconn, &fid, o, &format!("t{round}-{i}"));
            }
        }
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(cpus_held(&h, &fid), 3.0);
    // A framework of eng/other may still use the reservations (counted already).
    let (_, other) = h.in_roles("other", &["eng/other"]);
    h.allocate();
    assert_eq!(cpus_held(&h, &other), 2.0);
}

#[test]
fn a_quota_limit_is_never_exceeded() {
    let mut h = Harness::new();
    for _ in 0..10 {
        h.agent(1.0, 1024.0);
    }
    let (fconn, fid) = h.in_roles("capped", &["eng/ml"]);
    // The limit is on the parent: the child counts for it.
    h.core
        .set_quota("eng", quota(&[], &[Resource::scalar(CPUS, 2.5)]))
        .expect("quota");
    for round in 0..6 {
        let cmds = h.tick();
        for (i, o) in offers_in(&cmds, fconn).iter().enumerate() {
            if scalar(&o.resources, CPUS) > 0.0 {
                take_all(&mut h, fconn, &fid, o, &format!("t{round}-{i}"));
            }
        }
        assert!(
            cpus_held(&h, &fid) <= 2.5,
            "round {round}: {}",
            cpus_held(&h, &fid)
        );
    }
    assert_eq!(cpus_held(&h, &fid), 2.5);
    // Lowering the limit below what is offered rescinds the offers at once.
    let (gconn, gid) = h.in_roles("other", &["eng/web"]);
    h.allocate();
    assert!(cpus_held(&h, &gid) == 0.0);
    h.core
        .set_quota("eng", quota(&[], &[Resource::scalar(CPUS, 5.0)]))
        .expect("quota");
    h.allocate();
    assert!(cpus_held(&h, &gid) > 0.0);
    h.core
        .set_quota("eng", quota(&[], &[Resource::scalar(CPUS, 2.5)]))
        .expect("quota");
    let cmds = h.cmds();
    assert!(!rescinds_in(&cmds, gconn).is_empty());
    assert_eq!(cpus_held(&h, &gid), 0.0);
}

#[test]
fn a_zero_limit_is_kept_and_caps_the_role_at_what_it_holds() {
    let mut h = Harness::new();
    h.agent(4.0, 1024.0);
    let (fconn, fid) = h.in_roles("capped", &["eng"]);
    // It runs a task of 1 cpu first.
    let offer = h.one_offer(fconn);
    let mut t = task("t1", 1.0, 64.0);
    t.resources = vec![Resource::scalar(CPUS, 1.0), Resource::scalar(MEM, 64.0)];
    let now = h.now;
    h.core
        .framework_call(now, fconn, launch_call(&fid, &[&offer.id], vec![t]));
    h.cmds();
    // A limit of 0 cpus, as the operator API sends it: kept, not taken for no quota.
    let info = strata_proto::QuotaInfo {
        role: "eng".into(),
        limit: vec![Resource::scalar(CPUS, 0.0)],
        ..strata_proto::QuotaInfo::default()
    };
    let q = super::Core::quota_from_proto(&info).expect("valid quota");
    h.core.set_quota("eng", q).expect("quota set");
    assert_eq!(
        h.core.quota_infos(),
        vec![strata_proto::QuotaInfo {
            role: "eng".into(),
            limit: vec![Resource::scalar(CPUS, 0.0)],
            guarantee: vec![],
        }]
    );
    // It keeps its task, and is offered none of the agent's 3 other cpus (the memory only).
    let mut offered = Vec::new();
    for _ in 0..3 {
        offered.extend(offers_in(&h.tick(), fconn));
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(scalar(&offered[0].resources, CPUS), 0.0);
    assert_eq!(scalar(&offered[0].resources, MEM), 960.0);
    assert_eq!(cpus_held(&h, &fid), 1.0);
    // The limit survives a restart.
    let registry = h.core.registry();
    let mut again = Harness::new();
    let now = again.now;
    again.core.restore(now, registry).expect("restored");
    assert_eq!(again.core.quota_infos(), h.core.quota_infos());
}

#[test]
fn invalid_quotas_and_weights_change_nothing() {
    let mut h = Harness::new();
    let cases: Vec<(&str, Quota, &str)> = vec![
        (
            "",
            quota(&[Resource::scalar(CPUS, 1.0)], &[]),
            "invalid role \"\"",
        ),
        (
            "eng",
            quota(
                &[Resource::scalar(CPUS, 2.0)],
                &[Resource::scalar(CPUS, 1.0)],
            ),
            "guarantee of cpus is above its limit",
        ),
        (
            "eng",
            quota(
                &[Resource::scalar(CPUS, 1.0)],
                &[Resource::scalar(CPUS, 0.0)],
            ),
            "guarantee of cpus is above its limit",
        ),
        (
            "eng",
            quota(&[reserved(CPUS, 1.0, "eng")], &[]),
            "names reserved resources",
        ),
        (
            "eng",
            quota(&[Resource::ranges("ports", [(1, 2)])], &[]),
            "names ranges or sets",
        ),
    ];
    for (role, q, want) in cases {
        let err = h.core.set_quota(role, q).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(h.core.quotas().is_empty());
    for w in [0.0, -1.0, f64::NAN] {
        let err = h
            .core
            .set_weights(&BTreeMap::from([("eng".to_owned(), w)]))
            .unwrap_err();
        assert!(err.to_string().contains("invalid weight"), "{err}");
    }
    assert!(h.core.weights().is_empty());
}

#[test]
fn reserved_resources_never_reach_another_role() {
    let mut h = Harness::new();
    // A static reservation from the agent's configuration: 2 of its 4 cpus for eng.
    let (_, agent) = h.agent_with(vec![
        Resource::scalar(CPUS, 2.0),
        reserved(CPUS, 2.0, "eng"),
        Resource::scalar(MEM, 1024.0),
    ]);
    let (aconn, ads) = h.in_roles("ads", &["ads"]);
    let offers = offers_in(&h.allocate(), aconn);
    assert_eq!(offers.len(), 1);
    assert_eq!(scalar(&offers[0].resources, CPUS), 2.0);
    assert!(offers[0].resources.iter().all(|r| r.role.is_empty()));
    // eng gets the reserved part in an offer of its own.
    let (econn, eng) = h.in_roles("eng", &["eng/ml"]);
    let offers_eng = offers_in(&h.allocate(), econn);
    assert_eq!(offers_eng.len(), 1);
    assert_eq!(offers_eng[0].allocation_role, "eng/ml");
    assert_eq!(
        res(&offers_eng[0].resources),
        res(&[reserved(CPUS, 2.0, "eng")])
    );
    // ads declines for long; eng then gets the unreserved part too, and reserves one cpu of
    // it dynamically (for its role) while launching on the other.
    let cmds = h.call(aconn, decline(&ads, &offers[0], 1000.0));
    let mut offers_eng = offers_eng;
    offers_eng.extend(offers_in(&cmds, econn));
    assert_eq!(offers_eng.len(), 2, "the reserved and the unreserved part");
    let ids: Vec<&str> = offers_eng.iter().map(|o| o.id.as_str()).collect();
    let cpus: f64 = offers_eng.iter().map(|o| scalar(&o.resources, CPUS)).sum();
    assert_eq!(cpus, 4.0);
    let reserve = Operation {
        operation: Some(operation::Operation::Reserve(operation::Reserve {
            resources: vec![reserved(CPUS, 1.0, "eng/ml")],
        })),
    };
    let mut accept = launch_call(
        &eng,
        &ids,
        vec![{
            let mut t = task("uses-reservation", 0.0, 64.0);
            t.resources.push(reserved(CPUS, 1.0, "eng/ml"));
            t
        }],
    );
    if let Some(call::Call::Accept(a)) = &mut accept.call {
        a.operations.insert(0, reserve);
        a.filters = Some(Filters {
            refuse_seconds: Some(1000.0),
        });
    }
    let cmds = h.call(econn, accept);
    assert!(updates_in(&cmds, econn).is_empty(), "{cmds:?}");
    let reservations = h.core.reservation_summaries();
    assert_eq!(reservations.len(), 2, "{reservations:?}");
    assert!(
        reservations
            .iter()
            .any(|r| r.dynamic && r.role == "eng/ml" && r.agent_id == agent.0)
    );
    // ads, revived, sees only the unreserved cpu, whatever happens.
    h.call(
        aconn,
        simple_call(&ads, call::Call::Revive(call::Revive { roles: vec![] })),
    );
    h.advance(Duration::from_secs(2000));
    for _ in 0..3 {
        let cmds = h.tick();
        for o in offers_in(&cmds, aconn) {
            assert!(o.resources.iter().all(|r| r.role.is_empty()), "{o:?}");
            assert_eq!(scalar(&o.resources, CPUS), 1.0);
            h.call(aconn, decline(&ads, &o, 0.0));
        }
    }
}

#[test]
fn operator_reservations_and_unreserve() {
    let mut h = Harness::new();
    let (_, agent) = h.agent(4.0, 1024.0);
    let (fconn, _) = h.in_roles("ads", &["ads"]);
    let offer = h.one_offer(fconn);
    // Reserving rescinds the offer; the reserved cpus are not offered to ads again.
    h.core
        .operator_reserve(&agent.0, &[reserved(CPUS, 3.0, "eng")], true)
        .expect("reserve");
    let cmds = h.allocate();
    assert_eq!(rescinds_in(&cmds, fconn), vec![offer.id.clone()]);
    let offers = offers_in(&cmds, fconn);
    assert_eq!(offers.len(), 1);
    assert_eq!(scalar(&offers[0].resources, CPUS), 1.0);
    // Errors change nothing.
    let errs = [
        (reserved(CPUS, 5.0, "eng"), true, "cannot reserve"),
        (Resource::scalar(CPUS, 1.0), true, "names no role"),
        (reserved(CPUS, 4.0, "eng"), false, "cannot unreserve"),
        (reserved(CPUS, 1.0, "*"), true, "names no role"),
    ];
    for (r, reserve, want) in errs {
        let err = h
            .core
            .operator_reserve(&agent.0, &[r], reserve)
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(h.core.operator_reserve("nope", &[], true).is_err());
    h.core
        .operator_reserve(&agent.0, &[reserved(CPUS, 3.0, "eng")], false)
        .expect("unreserve");
    assert!(h.core.reservation_summaries().is_empty());
    h.cmds();
}

#[test]
fn drain_deactivate_reactivate_and_teardown() {
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("f");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    // Deactivate: no offers, the task keeps running.
    h.core.deactivate_agent(&agent.0).expect("deactivate");
    h.advance(Duration::from_secs(10));
    assert!(offers_in(&h.tick(), fconn).is_empty());
    assert_eq!(h.core.agent_modes().1, vec![agent.0.clone()]);
    let mode = |h: &Harness| h.core.agent_summaries()[0].mode();
    assert_eq!(mode(&h), strata_proto::AgentMode::Deactivated);
    assert_eq!(h.core.task_summaries(&Default::default()).len(), 1);
    // Reactivate: offered again.
    h.core.reactivate_agent(&agent.0).expect("reactivate");
    assert_eq!(mode(&h), strata_proto::AgentMode::Active);
    assert_eq!(offers_in(&h.allocate(), fconn).len(), 1);
    // Drain: the offer is rescinded and the task is killed with the grace period given.
    h.core
        .drain_agent(h.now, &agent.0, Some(7.0))
        .expect("drain");
    let cmds = h.allocate();
    assert_eq!(rescinds_in(&cmds, fconn).len(), 1);
    let kills: Vec<_> = agent_msgs(&cmds, aconn)
        .into_iter()
        .filter_map(|m| match m {
            allocator_message::Message::KillTask(k) => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0].grace_period_seconds, Some(7.0));
    h.update(aconn, status(&fid, "t1", TaskState::Killed, 1));
    assert!(offers_in(&h.tick(), fconn).is_empty(), "drained: no offers");
    assert_eq!(h.core.agent_modes().0, vec![agent.0.clone()]);
    assert_eq!(mode(&h), strata_proto::AgentMode::Draining);
    assert!(h.core.drain_agent(h.now, "nope", None).is_err());
    // Teardown by the operator: the framework is gone, its stream closed.
    h.core.reactivate_agent(&agent.0).expect("reactivate");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t2", 1.0, 64.0)]);
    h.core.teardown_framework(h.now, &fid.0).expect("teardown");
    let cmds = h.cmds();
    assert!(super::tests::closed(&cmds, fconn));
    assert!(h.core.framework_summaries().is_empty());
    assert!(h.core.teardown_framework(h.now, &fid.0).is_err());
}

/// Applies the core's registry changes to `stored`, as the actor does after each batch (a
/// `Store` applies them the same way: `strata-allocator`'s store tests check that what redb
/// keeps across a reopen is what [`Registry::apply`] makes).
fn persist(h: &mut Harness, stored: &mut Registry) {
    for op in h.core.take_registry_ops() {
        stored.apply(&op);
    }
}

#[test]
fn a_restarted_allocator_keeps_its_registry_and_reconciles_tasks() {
    let mut store = Registry::default();

    // Before: a framework with a failover timeout running a task, a framework that left
    // (its failover deadline runs), weights, a quota, a dynamic reservation.
    let mut h = Harness::new();
    let (aconn, agent) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.subscribe_info(FrameworkInfo {
        name: "keeper".to_owned(),
        roles: vec!["eng".to_owned()],
        failover_timeout_seconds: 3600.0,
        ..FrameworkInfo::default()
    });
    let offer = h.one_offer(fconn);
    let launched = h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    let (gconn, gid) = h.subscribe_info(FrameworkInfo {
        name: "leaver".to_owned(),
        failover_timeout_seconds: 100.0,
        ..FrameworkInfo::default()
    });
    h.core.framework_disconnected(h.now, gconn);
    h.core
        .set_weights(&BTreeMap::from([("eng".to_owned(), 2.5)]))
        .expect("weights");
    h.core
        .set_quota(
            "eng",
            quota(
                &[Resource::scalar(CPUS, 1.0)],
                &[Resource::scalar(CPUS, 3.0)],
            ),
        )
        .expect("quota");
    h.core
        .operator_reserve(&agent.0, &[reserved(CPUS, 2.0, "eng")], true)
        .expect("reserve");
    let (_, parked) = h.agent(2.0, 512.0);
    h.core.deactivate_agent(&parked.0).expect("deactivate");
    h.cmds();
    persist(&mut h, &mut store);
    let before = h.core.registry();
    let left_at = h.now;

    // The allocator is killed; a new one starts on the same store 60 s later.
    let registry = store;
    assert_eq!(registry, before);
    let mut h2 = Harness::new();
    h2.now = left_at + Duration::from_secs(60);
    h2.core.restore(h2.now, registry).expect("restore");
    assert_eq!(h2.core.weights().get("eng"), Some(&2.5));
    assert_eq!(h2.core.quotas().len(), 1);
    let fws = h2.core.framework_summaries();
    assert_eq!(fws.len(), 2);
    assert!(fws.iter().all(|f| !f.connected));

    // The agent re-registers with its id and running task: the task is adopted and the
    // dynamic reservation applies again.
    let conn = h2.conn();
    let now = h2.now;
    let running = strata_proto::AgentTask {
        framework_id: fid.0.clone(),
        task: launched[0].task.clone(),
        latest_status: Some(status(&fid, "t1", TaskState::Running, 1)),
    };
    h2.core
        .agent_register(
            now,
            conn,
            agent_message::Register {
                info: Some(AgentInfo {
                    id: agent.0.clone(),
                    hostname: "host".to_owned(),
                    resources: super::tests::agent_resources(4.0, 1024.0),
                    ..AgentInfo::default()
                }),
                tasks: vec![running],
            },
        )
        .expect("re-registered");
    h2.cmds();
    // The deactivated agent stays deactivated when it comes back.
    let conn = h2.conn();
    h2.register(conn, &parked.0, 2.0, 512.0, vec![]);
    h2.cmds();
    assert_eq!(h2.core.agent_modes().1, vec![parked.0.clone()]);
    let reservations = h2.core.reservation_summaries();
    assert_eq!(reservations.len(), 1);
    assert!(reservations[0].dynamic && reservations[0].role == "eng");
    // The framework re-subscribes with its id and reconciles: its task is RUNNING.
    let (fconn2, fid2) = h2.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        name: "keeper".to_owned(),
        roles: vec!["eng".to_owned()],
        failover_timeout_seconds: 3600.0,
        ..FrameworkInfo::default()
    });
    assert_eq!(fid2, fid);
    let cmds = h2.call(
        fconn2,
        simple_call(
            &fid,
            call::Call::Reconcile(call::Reconcile { tasks: vec![] }),
        ),
    );
    let updates = updates_in(&cmds, fconn2);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].task_id, "t1");
    assert_eq!(updates[0].state(), TaskState::Running);
    // The framework that left keeps its deadline: 100 s from when it left, not from now.
    h2.advance(Duration::from_secs(39));
    h2.tick();
    assert!(h2.core.framework_summaries().iter().any(|f| f.id == gid.0));
    h2.advance(Duration::from_secs(2));
    h2.tick();
    assert!(!h2.core.framework_summaries().iter().any(|f| f.id == gid.0));
}

#[test]
fn offers_time_out_with_a_rescind_and_carry_agent_attributes() {
    let mut h = Harness::with(crate::config::AllocatorConfig {
        offer_timeout: Some(Duration::from_secs(10)),
        ..super::tests::config()
    });
    let conn = h.conn();
    let now = h.now;
    h.core
        .agent_register(
            now,
            conn,
            agent_message::Register {
                info: Some(AgentInfo {
                    hostname: "gpu-1".to_owned(),
                    resources: super::tests::agent_resources(4.0, 1024.0),
                    attributes: vec![
                        strata_proto::Attribute {
                            name: "zone".to_owned(),
                            value: "eu-1a".to_owned(),
                        },
                        strata_proto::Attribute {
                            name: "gpu_model".to_owned(),
                            value: "h100".to_owned(),
                        },
                    ],
                    ..AgentInfo::default()
                }),
                tasks: vec![],
            },
        )
        .expect("registered");
    h.cmds();
    let (fconn, _) = h.framework("slow");
    let offer = h.one_offer(fconn);
    assert_eq!(offer.attributes.len(), 2);
    assert_eq!(offer.attributes[1].value, "h100");
    h.advance(Duration::from_secs(9));
    let cmds = h.tick();
    assert!(rescinds_in(&cmds, fconn).is_empty());
    h.advance(Duration::from_secs(1));
    let cmds = h.tick();
    assert_eq!(rescinds_in(&cmds, fconn), vec![offer.id.clone()]);
    // Offered again (a new offer) in the same tick.
    let again = offers_in(&cmds, fconn);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, offer.id);
}

#[test]
fn equal_role_shares_take_turns() {
    // Two roles at equal share (nothing held, their tasks end at once), one framework each,
    // and two sibling roles below a parent: the role offered least recently goes first, not
    // always the smaller name.
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 512.0);
    let fws = [h.in_roles("a", &["a"]), h.in_roles("b", &["b"])];
    assert_eq!(turns(&mut h, aconn, &fws, 6), [0, 1, 0, 1, 0, 1]);
    let mut h = Harness::new();
    let (aconn, _) = h.agent(2.0, 512.0);
    let fws = [h.in_roles("c", &["eng/c"]), h.in_roles("d", &["eng/d"])];
    assert_eq!(turns(&mut h, aconn, &fws, 4), [0, 1, 0, 1]);
}

#[test]
fn role_declines_with_refuse_0_share_an_agent_at_a_bounded_rate() {
    // The same between two roles at equal share, one framework each.
    let mut h = Harness::new();
    h.agent(2.0, 512.0);
    let fws = [h.in_roles("a", &["a"]), h.in_roles("b", &["b"])];
    let counts = decline_for_ten_seconds(&mut h, &fws);
    assert_even_and_bounded(&counts);
}

#[test]
fn the_minimum_refusal_is_per_role_and_a_revive_of_a_role_lifts_only_it() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    let (fconn, fid) = h.in_roles("multi", &["a", "b"]);
    let first = h.one_offer(fconn);
    // Declined with refuse 0 in one role: the agent goes to its other role at once.
    let offers = offers_in(&h.call(fconn, decline(&fid, &first, 0.0)), fconn);
    assert_eq!(offers.len(), 1, "{offers:?}");
    let second = offers[0].clone();
    assert_ne!(second.allocation_role, first.allocation_role);
    // Declined in both roles: nothing until the next tick, even in a prompt pass.
    assert!(offers_in(&h.call(fconn, decline(&fid, &second, 0.0)), fconn).is_empty());
    assert!(offers_in(&h.allocate(), fconn).is_empty());
    // A REVIVE of the second role offers the agent again at once, in that role only.
    let revive = simple_call(
        &fid,
        call::Call::Revive(call::Revive {
            roles: vec![second.allocation_role.clone()],
        }),
    );
    let offers = offers_in(&h.call(fconn, revive), fconn);
    assert_eq!(offers.len(), 1, "{offers:?}");
    assert_eq!(offers[0].allocation_role, second.allocation_role);
}
