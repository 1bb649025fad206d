//! Recovery after an allocator restart: reconciliation waits for agents known from the
//! registry within `agent_reregister_timeout`.

use std::time::Duration;

use strata_proto::{AgentTask, Call, FrameworkInfo, TaskReason, TaskState, TaskStatus, call};

use super::tests::{Harness, config, simple_call, status, task, updates_in};
use super::{AgentId, ConnId, FrameworkId};
use crate::config::{AllocatorConfig, ConfigError};

const WINDOW: Duration = Duration::from_secs(600);

fn reconcile(fid: &FrameworkId, tasks: &[(&str, &str)]) -> Call {
    simple_call(
        fid,
        call::Call::Reconcile(call::Reconcile {
            tasks: tasks
                .iter()
                .map(|(t, a)| call::ReconcileTask {
                    task_id: (*t).into(),
                    agent_id: (*a).into(),
                })
                .collect(),
        }),
    )
}

fn running(fid: &FrameworkId, id: &str) -> AgentTask {
    AgentTask {
        framework_id: fid.0.clone(),
        task: Some(task(id, 0.5, 64.0)),
        latest_status: Some(status(fid, id, TaskState::Running, 1)),
    }
}

/// A restarted allocator that knew agents `a` and `b` and a framework, which has
/// re-subscribed.
fn restarted() -> (Harness, ConnId, FrameworkId, AgentId, AgentId) {
    let mut before = Harness::with(AllocatorConfig {
        agent_reregister_timeout: WINDOW,
        ..config()
    });
    let (_, a) = before.agent(2.0, 512.0);
    let (_, b) = before.agent(2.0, 512.0);
    let info = FrameworkInfo {
        name: "one".into(),
        failover_timeout_seconds: 3600.0,
        ..FrameworkInfo::default()
    };
    let (_, fid) = before.subscribe_info(info.clone());
    let registry = before.core.registry();

    let mut h = Harness::with(before.core.config().clone());
    h.now = before.now + Duration::from_secs(1);
    let now = h.now;
    h.core.restore(now, registry).expect("restored");
    let (fconn, again) = h.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        ..info
    });
    assert_eq!(again, fid);
    (h, fconn, fid, a, b)
}

fn states(updates: &[TaskStatus]) -> Vec<(String, TaskState)> {
    let mut out: Vec<_> = updates
        .iter()
        .map(|u| (u.task_id.clone(), u.state()))
        .collect();
    out.sort();
    out
}

#[test]
fn reconciliation_waits_for_recovering_agents_and_learns_the_real_state() {
    let (mut h, fconn, fid, a, b) = restarted();
    // Tasks the allocator does not know yet: on agent a, on no agent named, and on a.
    let cmds = h.call(
        fconn,
        reconcile(&fid, &[("t1", &a.0), ("t2", ""), ("t3", &a.0)]),
    );
    assert!(
        updates_in(&cmds, fconn).is_empty(),
        "no LOST while agents recover: {cmds:?}"
    );

    // Agent a comes back running t1, without t3: t1 is RUNNING, t3 LOST; t2 waits for b.
    let conn = h.conn();
    h.register(conn, &a.0, 2.0, 512.0, vec![running(&fid, "t1")]);
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(
        states(&u),
        vec![
            ("t1".to_owned(), TaskState::Running),
            ("t3".to_owned(), TaskState::Lost)
        ]
    );
    assert!(u.iter().all(|s| s.reason() == TaskReason::Reconciliation));
    assert!(u.iter().all(|s| s.uuid.is_empty()));

    // The window ends with b still away: t2 is LOST (agent a, silent since, is too).
    let of_t2 = |u: Vec<TaskStatus>| -> Vec<TaskStatus> {
        u.into_iter().filter(|s| s.task_id == "t2").collect()
    };
    h.advance(WINDOW / 2);
    assert!(of_t2(updates_in(&h.tick(), fconn)).is_empty());
    h.advance(WINDOW / 2);
    let u = of_t2(updates_in(&h.tick(), fconn));
    assert_eq!(states(&u), vec![("t2".to_owned(), TaskState::Lost)]);
    assert!(u[0].message.contains("no agent re-registered"), "{u:?}");
    // Later: LOST at once, as before.
    let u = updates_in(&h.call(fconn, reconcile(&fid, &[("t4", &b.0)])), fconn);
    assert_eq!(states(&u), vec![("t4".to_owned(), TaskState::Lost)]);
}

#[test]
fn reconciliation_is_answered_when_every_agent_is_back() {
    let (mut h, fconn, fid, a, b) = restarted();
    let cmds = h.call(fconn, reconcile(&fid, &[("t1", ""), ("t2", "")]));
    assert!(updates_in(&cmds, fconn).is_empty());
    let conn = h.conn();
    h.register(conn, &a.0, 2.0, 512.0, vec![]);
    assert!(updates_in(&h.cmds(), fconn).is_empty(), "b is still away");
    let conn = h.conn();
    h.register(conn, &b.0, 2.0, 512.0, vec![running(&fid, "t2")]);
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(
        states(&u),
        vec![
            ("t1".to_owned(), TaskState::Lost),
            ("t2".to_owned(), TaskState::Running)
        ]
    );
    // Recovery is over: an unknown task is LOST at once.
    let u = updates_in(&h.call(fconn, reconcile(&fid, &[("t3", "")])), fconn);
    assert_eq!(states(&u), vec![("t3".to_owned(), TaskState::Lost)]);
}

#[test]
fn a_task_its_agent_lists_as_ended_is_told_by_the_agent_update_alone() {
    let (mut h, fconn, fid, a, _) = restarted();
    let cmds = h.call(fconn, reconcile(&fid, &[("t1", &a.0)]));
    assert!(updates_in(&cmds, fconn).is_empty());
    let conn = h.conn();
    let mut ended = running(&fid, "t1");
    ended.latest_status = Some(status(&fid, "t1", TaskState::Finished, 7));
    h.register(conn, &a.0, 2.0, 512.0, vec![ended]);
    assert!(updates_in(&h.cmds(), fconn).is_empty());
    let u = updates_in(
        &h.update(conn, status(&fid, "t1", TaskState::Finished, 7)),
        fconn,
    );
    assert_eq!(states(&u), vec![("t1".to_owned(), TaskState::Finished)]);
    assert!(!u[0].uuid.is_empty());
}

#[test]
fn an_agent_that_is_not_recovering_gets_lost_at_once() {
    let (mut h, fconn, fid, _, _) = restarted();
    let u = updates_in(
        &h.call(fconn, reconcile(&fid, &[("t1", "never-registered")])),
        fconn,
    );
    assert_eq!(states(&u), vec![("t1".to_owned(), TaskState::Lost)]);
}

#[test]
fn the_window_must_be_positive() {
    let zero = AllocatorConfig {
        agent_reregister_timeout: Duration::ZERO,
        ..config()
    };
    assert_eq!(
        zero.validate(),
        Err(ConfigError::ZeroInterval {
            field: "agent_reregister_timeout"
        })
    );
}
