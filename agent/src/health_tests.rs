//! Tests of the health checks: the policy with explicit times, the bounds, and each probe
//! against real listeners and commands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_proto::{
    CommandInfo, HealthCheck, HttpCheck, Resource, TaskInfo, TcpCheck, health_check, names,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use strata_test_support::wait::Poll;

use super::*;

fn policy(grace: u64, max_failures: u32) -> Policy {
    Policy {
        grace: Duration::from_secs(grace),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        max_failures,
        delay: Duration::ZERO,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn fail() -> Result<(), String> {
    Err("refused".to_owned())
}

#[test]
fn failures_in_the_grace_period_do_not_count_until_a_check_passes() {
    let mut t = Tracker::new(policy(10, 2), None);
    assert_eq!(t.record(secs(1), fail()), Verdict::Quiet);
    assert_eq!(t.record(secs(5), fail()), Verdict::Quiet);
    assert_eq!(t.healthy(), None);
    assert!(matches!(
        t.record(secs(6), Ok(())),
        Verdict::Changed { healthy: true, .. }
    ));
    // Passed once: the grace period is over.
    assert!(matches!(
        t.record(secs(7), fail()),
        Verdict::Changed { healthy: false, .. }
    ));
    let Verdict::Kill { why } = t.record(secs(8), fail()) else {
        panic!("the second consecutive failure kills");
    };
    assert!(
        why.contains("unhealthy") && why.contains("2 consecutive"),
        "{why}"
    );
}

#[test]
fn failures_after_the_grace_period_count_and_a_pass_resets_them() {
    let mut t = Tracker::new(policy(2, 3), None);
    assert_eq!(t.record(secs(1), fail()), Verdict::Quiet);
    assert!(matches!(
        t.record(secs(3), fail()),
        Verdict::Changed { healthy: false, .. }
    ));
    assert_eq!(t.record(secs(4), fail()), Verdict::Quiet);
    assert!(matches!(
        t.record(secs(5), Ok(())),
        Verdict::Changed { healthy: true, .. }
    ));
    assert_eq!(t.record(secs(6), Ok(())), Verdict::Quiet);
    // Counted from zero again: two more failures do not kill, the third does.
    assert!(matches!(t.record(secs(7), fail()), Verdict::Changed { .. }));
    assert_eq!(t.record(secs(8), fail()), Verdict::Quiet);
    assert!(matches!(t.record(secs(9), fail()), Verdict::Kill { .. }));
    assert_eq!(t.healthy(), Some(false));
}

#[test]
fn a_recovered_healthy_task_has_no_grace_and_reports_no_repeat() {
    let mut t = Tracker::new(policy(100, 1), Some(true));
    assert_eq!(t.record(secs(0), Ok(())), Verdict::Quiet);
    assert!(matches!(t.record(secs(1), fail()), Verdict::Kill { .. }));
}

#[test]
fn unset_fields_take_mesos_defaults() {
    let p = Policy::of(&HealthCheck::default());
    assert_eq!(
        p,
        Policy {
            grace: secs(10),
            interval: secs(10),
            timeout: secs(20),
            max_failures: 3,
            delay: secs(15),
        }
    );
}

fn task_with(check: health_check::Check) -> TaskInfo {
    TaskInfo {
        task_id: "web".to_owned(),
        resources: vec![Resource::ranges(names::PORTS, [(31000, 31001)])],
        health_check: Some(HealthCheck {
            check: Some(check),
            ..HealthCheck::default()
        }),
        ..TaskInfo::default()
    }
}

fn http(port: u32, path: &str) -> health_check::Check {
    health_check::Check::Http(HttpCheck {
        port,
        path: path.to_owned(),
        statuses: Vec::new(),
    })
}

#[test]
fn checks_are_bounded_with_clear_messages() {
    assert!(validate(&TaskInfo::default()).is_ok());
    assert!(validate(&task_with(http(31001, "/ready"))).is_ok());
    assert!(
        validate(&task_with(health_check::Check::Tcp(TcpCheck {
            port: 31000
        })))
        .is_ok()
    );
    let refused = |task: TaskInfo, needle: &str| {
        let e = validate(&task).expect_err(needle);
        assert!(
            e.contains("invalid health check") && e.contains(needle),
            "{e}"
        );
    };
    refused(
        task_with(http(8080, "/")),
        "port 8080 is not one of the task's",
    );
    refused(task_with(http(0, "/")), "port 0");
    refused(task_with(http(31000, "ready")), "must start with /");
    refused(task_with(http(31000, "/a b")), "no spaces");
    refused(
        task_with(http(31000, &format!("/{}", "a".repeat(MAX_PATH_LEN)))),
        "at most 1024",
    );
    refused(
        task_with(health_check::Check::Http(HttpCheck {
            port: 31000,
            path: "/".to_owned(),
            statuses: vec![200, 42],
        })),
        "42 is not an HTTP status",
    );
    refused(
        task_with(health_check::Check::Command(CommandInfo::default())),
        "command is empty",
    );
    let mut isolated = task_with(http(31000, "/"));
    isolated.network_isolation = true;
    refused(isolated, "network namespace of its own");
    let mut none = task_with(http(31000, "/"));
    none.health_check.as_mut().unwrap().check = None;
    refused(none, "names no check");
    for (field, value, needle) in [
        ("interval", 0.5, "interval_seconds is 0.5"),
        ("interval", f64::NAN, "interval_seconds is NaN"),
        ("timeout", 0.0, "timeout_seconds is 0"),
        ("grace", -1.0, "grace_period_seconds is -1"),
        ("delay", 1e9, "delay_seconds is 1000000000"),
    ] {
        let mut task = task_with(http(31000, "/"));
        let check = task.health_check.as_mut().unwrap();
        match field {
            "interval" => check.interval_seconds = Some(value),
            "timeout" => check.timeout_seconds = Some(value),
            "grace" => check.grace_period_seconds = Some(value),
            _ => check.delay_seconds = Some(value),
        }
        refused(task, needle);
    }
    let mut zero = task_with(http(31000, "/"));
    zero.health_check.as_mut().unwrap().max_consecutive_failures = Some(0);
    refused(zero, "max_consecutive_failures is 0");
}

#[test]
fn http_statuses_default_to_2xx_and_3xx() {
    assert!(status_passes(200, &[]) && status_passes(302, &[]));
    assert!(!status_passes(404, &[]) && !status_passes(503, &[]) && !status_passes(101, &[]));
    assert!(status_passes(503, &[503]) && !status_passes(200, &[503]));
}

/// A checker with a fast policy for a task listening on `port`.
fn fast(check: health_check::Check, dir: &std::path::Path, max_failures: u32) -> Checker {
    let mut task = task_with(check);
    task.resources = vec![Resource::ranges(names::PORTS, [(1, 65535)])];
    let hc = task.health_check.as_mut().unwrap();
    hc.interval_seconds = Some(0.05);
    hc.timeout_seconds = Some(1.0);
    hc.grace_period_seconds = Some(0.0);
    hc.delay_seconds = Some(0.0);
    hc.max_consecutive_failures = Some(max_failures);
    Checker::new(
        &task,
        dir.to_path_buf(),
        vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        "nobody",
        None,
    )
    .expect("a checker")
}

/// Serves HTTP on loopback, answering `status` until `status` is set to 0 (then it closes).
async fn http_server(status: Arc<Mutex<u16>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let code = *status.lock().unwrap();
            if code == 0 {
                return;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /ready HTTP/1.1\r\n"));
                let _ = conn
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_http_check_reports_changes_and_kills_after_consecutive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let status = Arc::new(Mutex::new(200));
    let port = http_server(status.clone()).await;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = changes.clone();
    let checker = fast(http(u32::from(port), "/ready"), dir.path(), 3);
    let run = tokio::spawn(async move {
        checker
            .run(Vec::new(), move |c| seen.lock().unwrap().push(c))
            .await
    });
    strata_test_support::wait::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let found = !changes.lock().unwrap().is_empty();
            async move {
                Ok(if found {
                    Poll::Ready(())
                } else {
                    Poll::Pending("no health change".to_owned())
                })
            }
        },
    )
    .await
    .unwrap();
    *status.lock().unwrap() = 500;
    let why = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("killed within 10 s")
        .unwrap();
    assert!(
        why.contains("3 consecutive") && why.contains("answered 500"),
        "{why}"
    );
    let changes = changes.lock().unwrap();
    assert!(changes[0].healthy);
    assert!(!changes[1].healthy);
    assert!(
        changes[1].message.contains("answered 500"),
        "{:?}",
        changes[1]
    );
    assert_eq!(changes.len(), 2, "{changes:?}");
}

#[tokio::test]
async fn a_tcp_check_passes_while_the_port_listens() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = u32::from(listener.local_addr().unwrap().port());
    let checker = fast(health_check::Check::Tcp(TcpCheck { port }), dir.path(), 2);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move { checker.run(Vec::new(), move |c| drop(tx.send(c))).await });
    assert!(rx.recv().await.unwrap().healthy);
    drop(listener);
    let why = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert!(why.contains("cannot connect"), "{why}");
}

#[tokio::test]
async fn a_command_check_runs_in_the_sandbox_with_the_task_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ready"), "").unwrap();
    let check = health_check::Check::Command(CommandInfo {
        shell: true,
        value: "test -f ready && test \"$PATH\" = /usr/bin:/bin".to_owned(),
        ..CommandInfo::default()
    });
    let checker = fast(check, dir.path(), 2);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(async move { checker.run(Vec::new(), move |c| drop(tx.send(c))).await });
    assert!(rx.recv().await.unwrap().healthy);
    std::fs::remove_file(dir.path().join("ready")).unwrap();
    let why = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert!(why.contains("ended with exit status: 1"), "{why}");
}

#[tokio::test]
async fn a_command_check_past_its_timeout_fails_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let check = health_check::Check::Command(CommandInfo {
        shell: true,
        value: "sleep 30 & echo $! > pid; wait".to_owned(),
        ..CommandInfo::default()
    });
    let mut checker = fast(check, dir.path(), 1);
    checker.tracker.policy.timeout = Duration::from_millis(300);
    let why = tokio::time::timeout(Duration::from_secs(10), checker.run(Vec::new(), drop))
        .await
        .unwrap();
    assert!(why.contains("no answer within the timeout"), "{why}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        strata_test_support::wait::gone_soon(pid).await,
        "the check's background child is killed with its process group"
    );
}
