//! Recovery after an allocator restart: reconciliation waits for agents known from the
//! registry within `agent_reregister_timeout`; the terminal-task history comes back.

use std::time::Duration;

use strata_proto::{
    AgentTask, Call, FrameworkInfo, ListTasksRequest, TaskReason, TaskState, TaskStatus,
    TaskSummary, call,
};

use super::tests::{Harness, config, simple_call, status, task, updates_in};
use super::{AgentId, ConnId, FrameworkId};
use crate::config::{AllocatorConfig, ConfigError};
use crate::registry::{Registry, RegistryOp};

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
fn a_kill_of_a_task_not_known_yet_is_reconciled_not_lost() {
    let (mut h, fconn, fid, a, b) = restarted();
    let kill = |task: &str, agent: &str| {
        simple_call(
            &fid,
            call::Call::Kill(call::Kill {
                task_id: task.into(),
                agent_id: agent.into(),
                ..call::Kill::default()
            }),
        )
    };
    // While agents recover, a kill of a task the allocator does not know is no LOST...
    let cmds = h.call(fconn, kill("t1", &a.0));
    assert!(updates_in(&cmds, fconn).is_empty(), "{cmds:?}");
    let cmds = h.call(fconn, kill("t2", ""));
    assert!(updates_in(&cmds, fconn).is_empty(), "{cmds:?}");
    // ...the framework learns the task's state when its agent is back.
    let conn = h.conn();
    h.register(conn, &a.0, 2.0, 512.0, vec![running(&fid, "t1")]);
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(states(&u), vec![("t1".to_owned(), TaskState::Running)]);
    let conn = h.conn();
    h.register(conn, &b.0, 2.0, 512.0, vec![]);
    let u = updates_in(&h.cmds(), fconn);
    assert_eq!(states(&u), vec![("t2".to_owned(), TaskState::Lost)]);
    // Recovery is over: a kill of an unknown task is LOST at once, as before.
    let u = updates_in(&h.call(fconn, kill("t3", &b.0)), fconn);
    assert_eq!(states(&u), vec![("t3".to_owned(), TaskState::Lost)]);
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
    let finished = TaskStatus {
        exit_code: Some(7),
        ..status(&fid, "t1", TaskState::Finished, 7)
    };
    ended.latest_status = Some(finished.clone());
    h.register(conn, &a.0, 2.0, 512.0, vec![ended]);
    assert!(updates_in(&h.cmds(), fconn).is_empty());
    let u = updates_in(&h.update(conn, finished), fconn);
    assert_eq!(states(&u), vec![("t1".to_owned(), TaskState::Finished)]);
    assert!(!u[0].uuid.is_empty());
    // The allocator keeps how it ended: a kill of it (the framework may not have heard yet)
    // and a reconciliation are answered FINISHED with its exit code, never LOST.
    let kill = simple_call(
        &fid,
        call::Call::Kill(call::Kill {
            task_id: "t1".into(),
            agent_id: a.0.clone(),
            ..call::Kill::default()
        }),
    );
    for answer in [
        h.call(fconn, kill),
        h.call(fconn, reconcile(&fid, &[("t1", &a.0)])),
    ] {
        let u = updates_in(&answer, fconn);
        assert_eq!(states(&u), vec![("t1".to_owned(), TaskState::Finished)]);
        assert_eq!(u[0].exit_code, Some(7), "{u:?}");
        assert_eq!(u[0].reason(), TaskReason::Reconciliation);
    }
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

#[test]
fn finished_tasks_survive_a_restart() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(4.0, 1024.0);
    let info = FrameworkInfo {
        name: "one".into(),
        failover_timeout_seconds: 3600.0,
        ..FrameworkInfo::default()
    };
    let (fconn, fid) = h.subscribe_info(info.clone());
    let offer = h.one_offer(fconn);
    let tasks = vec![
        task("failed", 0.5, 64.0),
        task("finished", 0.5, 64.0),
        task("running", 0.5, 64.0),
    ];
    h.launch(fconn, &fid, aconn, &offer, tasks);
    let mut failed = status(&fid, "failed", TaskState::Failed, 1);
    failed.exit_code = Some(3);
    failed.message = "exited with 3".into();
    h.update(aconn, failed);
    h.advance(Duration::from_secs(1));
    h.update(aconn, status(&fid, "finished", TaskState::Finished, 2));
    let all = ListTasksRequest {
        include_terminal: true,
        ..ListTasksRequest::default()
    };
    let terminal = |h: &Harness| -> Vec<TaskSummary> {
        h.core
            .task_summaries(&all)
            .into_iter()
            .filter(|t| TaskState::try_from(t.state).is_ok_and(|s| s.is_terminal()))
            .collect()
    };
    let before = terminal(&h);
    assert_eq!(before.len(), 2);

    // What the store holds is what the ops made.
    let mut stored = Registry::default();
    for op in h.core.take_registry_ops() {
        stored.apply(&op);
    }
    assert_eq!(stored, h.core.registry());
    assert_eq!(stored.terminal_tasks.len(), 2);

    let mut again = Harness::new();
    again.now = h.now + Duration::from_secs(5);
    let now = again.now;
    again.core.restore(now, stored.clone()).expect("restored");
    assert_eq!(terminal(&again), before, "strata ps --all lists them again");
    assert_eq!(again.core.terminal_task_count(), 2);
    // Reconciliation of an ended task answers its state at once, even while recovering.
    let (fconn, _) = again.subscribe_info(FrameworkInfo {
        id: fid.0.clone(),
        ..info
    });
    let u = updates_in(
        &again.call(fconn, reconcile(&fid, &[("failed", "")])),
        fconn,
    );
    assert_eq!(states(&u), vec![("failed".to_owned(), TaskState::Failed)]);
    assert_eq!(u[0].exit_code, Some(3));
    // Restoring rewrites nothing of the history.
    assert!(!again.core.take_registry_ops().iter().any(|op| matches!(
        op,
        RegistryOp::PutTerminalTask(..) | RegistryOp::RemoveTerminalTask(_)
    )));

    // A smaller history keeps the newest, and the store is told.
    let mut small = Harness::with(AllocatorConfig {
        terminal_task_history: 1,
        ..config()
    });
    small.core.restore(now, stored.clone()).expect("restored");
    let kept = terminal(&small);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].task_id, "finished");
    for op in small.core.take_registry_ops() {
        stored.apply(&op);
    }
    assert_eq!(stored.terminal_tasks, small.core.registry().terminal_tasks);
}

#[test]
fn a_task_ended_after_a_restart_does_not_replace_a_restored_one() {
    let mut h = Harness::new();
    let (aconn, _) = h.agent(4.0, 1024.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("old", 0.5, 64.0)]);
    h.update(aconn, status(&fid, "old", TaskState::Finished, 1));
    let stored = h.core.registry();

    let mut again = Harness::new();
    let now = again.now;
    again.core.restore(now, stored.clone()).expect("restored");
    let (aconn, _) = again.agent(4.0, 1024.0);
    let (fconn, fid) = again.framework("two");
    let offer = again.one_offer(fconn);
    again.launch(fconn, &fid, aconn, &offer, vec![task("new", 0.5, 64.0)]);
    again.update(aconn, status(&fid, "new", TaskState::Finished, 1));
    let numbers: Vec<u64> = again.core.registry().terminal_tasks.into_keys().collect();
    assert_eq!(numbers.len(), 2, "{numbers:?}");
    assert!(stored.terminal_tasks.keys().all(|n| *n < numbers[1]));
}

#[test]
fn with_the_default_window_an_agent_back_within_75_s_changes_nothing() {
    let mut h = Harness::with(AllocatorConfig::default());
    let (aconn, agent) = h.agent(2.0, 512.0);
    let (fconn, fid) = h.framework("one");
    let offer = h.one_offer(fconn);
    h.launch(fconn, &fid, aconn, &offer, vec![task("t1", 1.0, 64.0)]);
    h.core.agent_disconnected(h.now, aconn);
    h.advance(Duration::from_secs(74));
    assert!(
        updates_in(&h.tick(), fconn).is_empty(),
        "a restart is not a loss"
    );
    let conn = h.conn();
    h.register(conn, &agent.0, 2.0, 512.0, vec![running(&fid, "t1")]);
    assert!(updates_in(&h.cmds(), fconn).is_empty(), "no extra RUNNING");
    // Gone for the whole window: LOST.
    h.core.agent_disconnected(h.now, conn);
    h.advance(Duration::from_secs(75));
    let u = updates_in(&h.tick(), fconn);
    assert_eq!(states(&u), vec![("t1".to_owned(), TaskState::Lost)]);
}
