//! UPDATE_FRAMEWORK (Mesos' call to change a subscribed framework without re-subscribing):
//! roles added are offered, offers and filters of roles left go, suppression is replaced, and
//! an invalid update (another id, a role the principal may not use) changes nothing.

use std::time::Duration;

use strata_proto::{Call, FrameworkInfo, call};

use super::config::AllocatorConfig;
use super::tests::{Harness, config, errors_in, offers_in, rescinds_in, simple_call};
use super::{Acls, ConnId, FrameworkId, Policy};

fn update(fid: &FrameworkId, name: &str, roles: &[&str], suppressed: &[&str]) -> Call {
    simple_call(
        fid,
        call::Call::UpdateFramework(call::UpdateFramework {
            framework_info: Some(FrameworkInfo {
                id: fid.0.clone(),
                name: name.to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                ..FrameworkInfo::default()
            }),
            suppressed_roles: suppressed.iter().map(|r| (*r).to_owned()).collect(),
        }),
    )
}

fn subscribe(h: &mut Harness, roles: &[&str]) -> (ConnId, FrameworkId) {
    h.subscribe_info(FrameworkInfo {
        name: "f".into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        ..FrameworkInfo::default()
    })
}

#[test]
fn update_framework_changes_roles_and_suppression_in_place() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    let (fconn, fid) = subscribe(&mut h, &["a"]);
    let offers = offers_in(&h.allocate(), fconn);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].allocation_role, "a");

    // Leaving role a for b: the offer made to a is rescinded, and the agent is offered to b
    // (the harness allocates after each call).
    let cmds = h.call(fconn, update(&fid, "renamed", &["b"], &[]));
    assert!(
        errors_in(&cmds, fconn).is_empty(),
        "{:?}",
        errors_in(&cmds, fconn)
    );
    assert_eq!(rescinds_in(&cmds, fconn), vec![offers[0].id.clone()]);
    let offers = offers_in(&cmds, fconn);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].allocation_role, "b");
    let summary = &h.core.framework_summaries()[0];
    assert_eq!(summary.name, "renamed");
    assert_eq!(summary.roles, vec!["b".to_owned()]);

    // Suppressing b through the update: its offer stays, but none comes once it is declined.
    let cmds = h.call(fconn, update(&fid, "renamed", &["b"], &["b"]));
    assert!(errors_in(&cmds, fconn).is_empty());
    let decline = simple_call(
        &fid,
        call::Call::Decline(call::Decline {
            offer_ids: vec![offers[0].id.clone()],
            filters: None,
        }),
    );
    h.call(fconn, decline);
    h.advance(Duration::from_secs(10));
    assert!(
        offers_in(&h.tick(), fconn).is_empty(),
        "suppressed role offered"
    );
    // Unsuppressing it (an update without suppressed roles) brings offers back.
    let cmds = h.call(fconn, update(&fid, "renamed", &["b"], &[]));
    assert_eq!(offers_in(&cmds, fconn).len(), 1);
}

#[test]
fn an_invalid_update_changes_nothing_and_says_why() {
    let mut h = Harness::with(AllocatorConfig {
        policy: Policy::Enforced(
            Acls::parse(
                "[[allow]]\nprincipals = [\"alice\"]\nactions = [\"register_frameworks\"]\nobjects = [\"eng\"]\n",
                "acls",
            )
            .unwrap(),
        ),
        ..config()
    });
    let conn = h.conn();
    let now = h.now;
    let fid = h
        .core
        .framework_subscribe_as(
            now,
            conn,
            FrameworkInfo {
                name: "f".into(),
                roles: vec!["eng".into()],
                ..FrameworkInfo::default()
            },
            Some("alice".into()),
            vec![],
        )
        .expect("alice subscribes to eng");
    h.cmds();
    for (bad, says) in [
        (
            update(&fid, "f", &["eng", "ops"], &[]),
            "may not register_frameworks",
        ),
        (
            update(&fid, "f", &["eng"], &["ops"]),
            "not one of the framework's roles",
        ),
        (
            {
                let mut c = update(&fid, "f", &["eng"], &[]);
                if let Some(call::Call::UpdateFramework(u)) = &mut c.call {
                    u.framework_info.as_mut().unwrap().id = "someone-else".into();
                }
                c
            },
            "is not this framework's id",
        ),
    ] {
        let cmds = h.call(conn, bad);
        let errors = errors_in(&cmds, conn);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("UPDATE_FRAMEWORK refused") && e.contains(says)),
            "{says}: {errors:?}"
        );
        assert_eq!(
            h.core.framework_summaries()[0].roles,
            vec!["eng".to_owned()]
        );
    }
}

#[test]
fn removed_frameworks_are_remembered_up_to_a_bound() {
    let mut h = Harness::new();
    let total = crate::MAX_COMPLETED_FRAMEWORKS + 5;
    for i in 0..total {
        let (conn, fid) = h.subscribe_info(FrameworkInfo {
            name: format!("f{i}"),
            user: "alice".into(),
            ..FrameworkInfo::default()
        });
        h.call(
            conn,
            simple_call(&fid, call::Call::Teardown(call::Teardown {})),
        );
    }
    let completed = h.core.completed_framework_summaries();
    assert_eq!(completed.len(), crate::MAX_COMPLETED_FRAMEWORKS);
    assert_eq!(completed[0].name, "f5", "the oldest are dropped first");
    assert_eq!(
        completed.last().map(|f| f.name.as_str()),
        Some(&*format!("f{}", total - 1))
    );
    assert!(completed.iter().all(|f| !f.connected && f.user == "alice"));
    assert!(h.core.framework_summaries().is_empty());
}

fn min_filter(role: &str, sets: &[&[(&str, f64)]]) -> FrameworkInfo {
    let quantities = sets
        .iter()
        .map(|set| strata_proto::Quantities {
            quantities: set.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        })
        .collect();
    FrameworkInfo {
        name: "picky".into(),
        offer_filters: [(role.to_owned(), strata_proto::MinAllocatable { quantities })]
            .into_iter()
            .collect(),
        ..FrameworkInfo::default()
    }
}

#[test]
fn offer_filters_keep_offers_below_a_framework_minimum_away() {
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    // Wants 2 cpus, or a gpu: this agent is never offered to it; another framework gets it.
    let (picky, _) = h.subscribe_info(min_filter("*", &[&[("cpus", 2.0)], &[("gpus", 1.0)]]));
    assert!(offers_in(&h.allocate(), picky).is_empty());
    let (other, _) = subscribe(&mut h, &["*"]);
    let cmds = h.allocate();
    assert!(offers_in(&cmds, picky).is_empty());
    assert_eq!(offers_in(&cmds, other).len(), 1);

    // Half a cpu and 512 MiB: offered.
    let mut h = Harness::new();
    h.agent(1.0, 1024.0);
    let (fine, _) = h.subscribe_info(min_filter("*", &[&[("cpus", 0.5), ("mem", 512.0)]]));
    assert_eq!(offers_in(&h.allocate(), fine).len(), 1);

    // Unbounded filters are refused at SUBSCRIBE.
    let mut h = Harness::new();
    let too_many: Vec<&[(&str, f64)]> = vec![&[("cpus", 1.0)]; 17];
    let conn = h.conn();
    let now = h.now;
    let err = h
        .core
        .framework_subscribe(now, conn, min_filter("*", &too_many))
        .unwrap_err();
    assert!(err.to_string().contains("sets of quantities"), "{err}");
}

/// FrameworkInfo.webui_url is kept when it is an http(s) URL of at most 256 bytes, and
/// dropped otherwise (no `javascript:` link ever reaches the dashboard); an update replaces it.
#[test]
fn webui_urls_are_kept_only_when_http_and_short() {
    let mut h = Harness::new();
    let (fconn, fid) = h.subscribe_info(FrameworkInfo {
        name: "f".into(),
        webui_url: "http://host:8080/ui".into(),
        ..FrameworkInfo::default()
    });
    assert_eq!(
        h.core.framework_summaries()[0].webui_url,
        "http://host:8080/ui"
    );
    assert_eq!(h.core.framework_on(fconn), Some(fid.0.as_str()));
    for bad in [
        "javascript:alert(1)".to_owned(),
        format!("https://h/{}", "a".repeat(300)),
        "http://h/a b".to_owned(),
    ] {
        let mut call = update(&fid, "f", &["*"], &[]);
        if let Some(call::Call::UpdateFramework(u)) = &mut call.call
            && let Some(info) = &mut u.framework_info
        {
            info.webui_url = bad.clone();
        }
        let cmds = h.call(fconn, call);
        assert!(errors_in(&cmds, fconn).is_empty(), "{bad}");
        assert_eq!(h.core.framework_summaries()[0].webui_url, "", "{bad}");
    }
    assert_eq!(h.core.framework_on(ConnId(999_999)), None);
}
