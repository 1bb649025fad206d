//! Hostile input: ids that would name paths on agents, tasks below the minimum, calls and
//! descriptions beyond the limits. Each is refused with a bounded message and changes
//! nothing.

use strata_proto::{FrameworkInfo, Operation, call, operation};

use super::config::AllocatorConfig;
use super::limits::{MAX_NAME_LEN, MAX_TASKS_PER_ACCEPT};
use super::tests::{Harness, agent_msgs, launch_call, task, updates_in};
use super::{CoreError, FrameworkId};

/// The updates an ACCEPT of `tasks` on a fresh offer gets, after checking it changed
/// nothing and launched nothing.
fn rejected(tasks: Vec<strata_proto::TaskInfo>) -> Vec<strata_proto::TaskStatus> {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(4.0, 4096.0);
    let (fconn, fid) = h.framework("hostile");
    let offer = h.one_offer(fconn);
    let before = h.snapshot();
    let cmds = h.call(fconn, launch_call(&fid, &[&offer.id], tasks));
    // The offer, used up, is made again by the next periodic pass.
    h.tick();
    assert_eq!(
        h.snapshot(),
        before,
        "the call changed the allocator's state"
    );
    assert!(
        agent_msgs(&cmds, aconn).is_empty(),
        "the agent got {cmds:?}"
    );
    h.core.check_invariants().expect("invariants hold");
    updates_in(&cmds, fconn)
}

#[test]
fn task_ids_that_would_name_other_paths_are_refused() {
    for id in ["../../../x", "/abs/path", "..", ".", "a/b", "a\0b", "a\nb"] {
        let updates = rejected(vec![task(id, 0.1, 32.0)]);
        assert_eq!(updates.len(), 1, "{id:?}");
        assert_eq!(updates[0].state(), strata_proto::TaskState::Error, "{id:?}");
        assert!(
            updates[0].message.contains("invalid task id"),
            "{id:?}: {}",
            updates[0].message
        );
    }
    let long = "x".repeat(201);
    let updates = rejected(vec![task(&long, 0.1, 32.0)]);
    assert!(
        updates[0].message.contains("it is too long"),
        "{}",
        updates[0].message
    );
}

#[test]
fn tasks_below_the_minimum_resources_are_refused() {
    for (cpus, mem) in [
        (0.0, 0.0),
        (0.0, 64.0),
        (0.5, 0.0),
        (0.005, 64.0),
        (0.5, 3.0),
    ] {
        let updates = rejected(vec![task("small", cpus, mem)]);
        assert_eq!(updates.len(), 1);
        assert!(
            updates[0]
                .message
                .contains("every task needs at least cpus=0.01 and mem=4"),
            "{cpus} {mem}: {}",
            updates[0].message
        );
    }
    let mut no_resources = task("none", 0.1, 32.0);
    no_resources.resources.clear();
    let updates = rejected(vec![no_resources]);
    assert!(
        updates[0].message.contains("asks for cpus=0 and mem=0"),
        "{}",
        updates[0].message
    );
}

/// The 10,000 invalid tasks of one ACCEPT took the allocator from 26 MB to 1.3 GB: every
/// update's message listed every task id. Now the call is refused for its size with one short
/// message per task.
#[test]
fn an_accept_of_ten_thousand_invalid_tasks_gets_short_messages() {
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let mut t = task(&format!("task-{i:05}-{}", "x".repeat(180)), 0.0, 0.0);
            t.command = None;
            t
        })
        .collect();
    let updates = rejected(tasks);
    assert_eq!(updates.len(), 10_000);
    let total: usize = updates.iter().map(|u| u.message.len()).sum();
    assert!(total < 10_000 * 200, "{total} bytes of messages");
    assert!(
        updates[0]
            .message
            .contains("too many tasks (10000): one ACCEPT may launch at most 1000"),
        "{}",
        updates[0].message
    );
}

/// Within the task limit, the errors of many invalid tasks are listed a few at a time, and
/// each list of names is cut.
#[test]
fn the_errors_of_many_invalid_tasks_are_bounded() {
    let tasks: Vec<_> = (0..MAX_TASKS_PER_ACCEPT)
        .map(|i| task(&format!("t{i}"), 1.0, 1024.0))
        .collect();
    let updates = rejected(tasks);
    assert_eq!(updates.len(), MAX_TASKS_PER_ACCEPT);
    let message = &updates[0].message;
    assert!(message.len() < 2048, "{} bytes: {message}", message.len());
    assert!(message.contains(" and 990 more"), "{message}");
}

#[test]
fn accepts_with_too_many_operations_are_refused() {
    let mut h = Harness::new();
    let (_aconn, _) = h.agent(4.0, 4096.0);
    let (fconn, fid) = h.framework("hostile");
    let offer = h.one_offer(fconn);
    let mut c = launch_call(&fid, &[&offer.id], vec![]);
    if let Some(call::Call::Accept(a)) = &mut c.call {
        a.operations = vec![
            Operation {
                operation: Some(operation::Operation::Launch(operation::Launch {
                    tasks: vec![]
                })),
            };
            1001
        ];
    }
    let before = h.snapshot();
    let cmds = h.call(fconn, c);
    h.tick();
    assert_eq!(h.snapshot(), before);
    assert!(
        format!("{cmds:?}").contains("too many operations (1001)"),
        "{cmds:?}"
    );
}

/// A 5 MB framework name broke `strata frameworks` for every operator (the CLI's 4 MiB
/// decode limit).
#[test]
fn oversized_framework_descriptions_are_refused_at_subscribe() {
    let mut h = Harness::new();
    let conn = h.conn();
    let now = h.now;
    let err = h
        .core
        .framework_subscribe(
            now,
            conn,
            FrameworkInfo {
                name: "x".repeat(5 * 1024 * 1024),
                ..FrameworkInfo::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, CoreError::InvalidFrameworkInfo { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("more than the {MAX_NAME_LEN} allowed")),
        "{err}"
    );
    assert!(h.core.framework_summaries().is_empty());
}

#[test]
fn registered_frameworks_are_capped() {
    let mut h = Harness::with(AllocatorConfig {
        max_frameworks: 2,
        ..super::tests::config()
    });
    let (_, first) = h.framework("one");
    h.framework("two");
    let conn = h.conn();
    let now = h.now;
    let err = h
        .core
        .framework_subscribe(now, conn, FrameworkInfo::default())
        .unwrap_err();
    assert!(err.to_string().contains("2 are registered"), "{err}");
    // Re-subscribing an existing framework is not a new registration.
    let conn = h.conn();
    let again = h
        .core
        .framework_subscribe(
            now,
            conn,
            FrameworkInfo {
                id: first.0.clone(),
                ..FrameworkInfo::default()
            },
        )
        .expect("re-subscribe");
    assert_eq!(again, FrameworkId(first.0));
}

/// An agent restarted with fewer resources than its tasks hold was accepted with allocated
/// above total. Now the newest tasks are killed until the rest fit, their frameworks and the
/// agent are told why, and nothing is offered beyond the new total.
#[test]
fn an_agent_that_shrank_below_its_tasks_is_never_over_committed() {
    use strata_proto::{AgentTask, ListTasksRequest, TaskReason, TaskState, allocator_message};

    use super::tests::status;

    let mut h = Harness::new();
    let (aconn, agent) = h.agent(3.0, 3072.0);
    let (fconn, fid) = h.framework("one");
    let mut launched = Vec::new();
    for name in ["oldest", "middle", "newest"] {
        let offer = h.one_offer(fconn);
        launched.extend(h.launch(fconn, &fid, aconn, &offer, vec![task(name, 1.0, 1024.0)]));
        h.advance(std::time::Duration::from_secs(1));
    }
    h.core.agent_disconnected(h.now, aconn);
    h.cmds();
    let conn2 = h.conn();
    let listed = launched
        .iter()
        .map(|l| AgentTask {
            framework_id: fid.0.clone(),
            latest_status: Some(status(
                &fid,
                &l.task.as_ref().unwrap().task_id,
                TaskState::Running,
                1,
            )),
            task: l.task.clone(),
        })
        .collect();
    h.register(conn2, &agent.0, 2.0, 2048.0, listed);
    h.core.check_invariants().expect("invariants hold");
    let cmds = h.cmds();
    let updates = updates_in(&cmds, fconn);
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].task_id, "newest");
    assert_eq!(updates[0].state(), TaskState::Killed);
    assert_eq!(updates[0].reason(), TaskReason::AgentRestarted);
    assert!(
        updates[0].message.contains("less than its tasks hold"),
        "{}",
        updates[0].message
    );
    let msgs = agent_msgs(&cmds, conn2);
    let Some(allocator_message::Message::Registered(r)) = msgs.first() else {
        panic!("Registered first: {msgs:?}");
    };
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("task newest"), "{:?}", r.warnings);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, allocator_message::Message::KillTask(k) if k.task_id == "newest")),
        "{msgs:?}"
    );
    let active: Vec<_> = h
        .core
        .task_summaries(&ListTasksRequest::default())
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(active.len(), 2, "{active:?}");
    assert!(!active.contains(&"newest".to_owned()));
    // No offer beyond the new total: the agent is full.
    assert!(super::tests::offers_in(&h.allocate(), fconn).is_empty());
}
