//! Identities in the core: an agent or framework id is bound to the principal that first
//! used it, and the policy decides who may register agents, subscribe with which roles and
//! run tasks as which users. Each test replays an attack that worked without them.

use strata_auth::{Acls, Policy};
use strata_proto::{AgentInfo, CommandInfo, FrameworkInfo, TaskState, agent_message};

use super::config::AllocatorConfig;
use super::tests::{Harness, agent_resources, config, launch_call, offers_in, task, updates_in};
use super::{AgentId, ConnId, CoreError, FrameworkId};

const ACLS: &str = r#"
[[allow]]
principals = ["agent-*"]
actions = ["register_agents"]

[[allow]]
principals = ["alice", "eve"]
actions = ["register_frameworks"]
objects = ["eng"]

[[allow]]
principals = ["alice"]
actions = ["run_tasks"]
objects = ["nobody"]
"#;

fn enforced() -> Harness {
    Harness::with(AllocatorConfig {
        policy: Policy::Enforced(Acls::parse(ACLS, "acls").unwrap()),
        max_frameworks_per_principal: 2,
        ..config()
    })
}

fn register_as(
    h: &mut Harness,
    id: &str,
    principal: Option<&str>,
) -> (ConnId, Result<AgentId, CoreError>) {
    let conn = h.conn();
    let now = h.now;
    let result = h.core.agent_register_as(
        now,
        conn,
        agent_message::Register {
            info: Some(AgentInfo {
                id: id.to_owned(),
                hostname: "h".into(),
                resources: agent_resources(1000.0, 1_000_000.0),
                ..AgentInfo::default()
            }),
            tasks: vec![],
        },
        principal.map(str::to_owned),
    );
    (conn, result)
}

fn subscribe_as(
    h: &mut Harness,
    id: &str,
    role: &str,
    principal: Option<&str>,
) -> (ConnId, Result<FrameworkId, CoreError>) {
    let conn = h.conn();
    let now = h.now;
    let result = h.core.framework_subscribe_as(
        now,
        conn,
        FrameworkInfo {
            id: id.to_owned(),
            name: "f".into(),
            roles: vec![role.to_owned()],
            ..FrameworkInfo::default()
        },
        principal.map(str::to_owned),
        vec![],
    );
    (conn, result)
}

/// Anyone reaching the gRPC port could register a fake agent with 1,000 cpus (and receive
/// other frameworks' launches), or take a real agent's id.
#[test]
fn only_allowed_principals_register_agents_and_an_agent_id_is_its_principals() {
    let mut h = enforced();
    let (_, anonymous) = register_as(&mut h, "", None);
    assert!(
        anonymous
            .unwrap_err()
            .to_string()
            .starts_with("authentication required to register_agents"),
    );
    let (_, framework_cert) = register_as(&mut h, "", Some("alice"));
    assert!(matches!(framework_cert, Err(CoreError::Denied(_))));
    let (_, real) = register_as(&mut h, "", Some("agent-1"));
    let id = real.expect("the real agent registers");
    h.cmds();
    let (_, impostor) = register_as(&mut h, &id.0, Some("agent-2"));
    let e = impostor.unwrap_err();
    assert!(
        matches!(e, CoreError::IdOfAnotherPrincipal { what: "agent", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("belongs to another principal"),
        "{e}"
    );
    // The real agent keeps its stream: nothing was closed or reported.
    assert!(h.cmds().is_empty());
    // The real agent may re-register.
    let (_, again) = register_as(&mut h, &id.0, Some("agent-1"));
    assert_eq!(again.unwrap(), id);
    // After an allocator restart the binding is kept by the registry.
    let registry = h.core.registry();
    let mut restarted = enforced();
    let now = restarted.now;
    restarted.core.restore(now, registry).unwrap();
    let (_, impostor) = register_as(&mut restarted, &id.0, Some("agent-2"));
    assert!(matches!(
        impostor,
        Err(CoreError::IdOfAnotherPrincipal { .. })
    ));
    let (_, ids) = register_as(&mut restarted, "../../x", Some("agent-1"));
    assert!(ids.unwrap_err().to_string().contains("invalid agent id"));
}

/// SUBSCRIBE with another framework's id was accepted: the victim's stream closed and the
/// newcomer could kill its tasks and tear it down.
#[test]
fn a_framework_id_cannot_be_taken_by_another_principal() {
    let mut h = enforced();
    let (victim_conn, alice) = subscribe_as(&mut h, "", "eng", Some("alice"));
    let alice = alice.expect("alice subscribes");
    h.cmds();
    let (_, hijack) = subscribe_as(&mut h, &alice.0, "eng", Some("eve"));
    assert!(matches!(
        hijack,
        Err(CoreError::IdOfAnotherPrincipal {
            what: "framework",
            ..
        })
    ));
    let (_, anonymous) = subscribe_as(&mut h, &alice.0, "eng", None);
    assert!(anonymous.is_err());
    // The victim's stream is untouched.
    assert!(!super::tests::closed(&h.cmds(), victim_conn));
    // Alice may fail over to a new stream.
    let (_, again) = subscribe_as(&mut h, &alice.0, "eng", Some("alice"));
    assert_eq!(again.unwrap(), alice);
}

#[test]
fn roles_and_framework_counts_are_per_principal() {
    let mut h = enforced();
    let (_, denied) = subscribe_as(&mut h, "", "prod", Some("alice"));
    let e = denied.unwrap_err();
    assert!(
        e.to_string()
            .contains("may not register_frameworks \"prod\""),
        "{e}"
    );
    subscribe_as(&mut h, "", "eng", Some("alice")).1.unwrap();
    subscribe_as(&mut h, "", "eng", Some("alice")).1.unwrap();
    let (_, third) = subscribe_as(&mut h, "", "eng", Some("alice"));
    assert!(matches!(
        third,
        Err(CoreError::TooManyFrameworksOfPrincipal { max: 2, .. })
    ));
    // Another principal is not held back by alice's count.
    subscribe_as(&mut h, "", "eng", Some("eve")).1.unwrap();
}

#[test]
fn tasks_run_only_as_users_the_principal_may_use() {
    let mut h = enforced();
    let (_aconn, agent) = register_as(&mut h, "", Some("agent-1"));
    agent.unwrap();
    let (fconn, fid) = subscribe_as(&mut h, "", "eng", Some("alice"));
    let fid = fid.unwrap();
    h.cmds();
    let offer = h.one_offer(fconn);
    let as_user = |id: &str, user: &str| {
        let mut t = task(id, 0.1, 32.0);
        t.command = Some(CommandInfo {
            shell: true,
            value: "id".into(),
            user: user.into(),
            ..CommandInfo::default()
        });
        t
    };
    let cmds = h.call(
        fconn,
        launch_call(&fid, &[&offer.id], vec![as_user("t1", "root")]),
    );
    let updates = updates_in(&cmds, fconn);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].state(), TaskState::Error);
    assert!(
        updates[0]
            .message
            .contains("principal \"alice\" may not run_tasks \"root\""),
        "{}",
        updates[0].message
    );
    // The rejected ACCEPT used the offer up; its resources are offered again by the next
    // periodic pass.
    assert!(offers_in(&cmds, fconn).is_empty(), "{cmds:?}");
    let offer = offers_in(&h.tick(), fconn).pop().expect("offered again");
    let cmds = h.call(
        fconn,
        launch_call(&fid, &[&offer.id], vec![as_user("t2", "nobody")]),
    );
    assert!(updates_in(&cmds, fconn).is_empty(), "{cmds:?}");
}

#[test]
fn an_open_policy_keeps_the_old_behaviour() {
    let mut h = Harness::new();
    let (_, agent) = register_as(&mut h, "", None);
    agent.unwrap();
    let (_, f) = subscribe_as(&mut h, "", "anything", None);
    let f = f.unwrap();
    // Unauthenticated frameworks may still fail over to their id.
    subscribe_as(&mut h, &f.0, "anything", None).1.unwrap();
}
