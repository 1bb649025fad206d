//! End to end: a real `strata-allocator` and `strata-agent` as processes on loopback, driven
//! through the framework SDK and the `strata` CLI.

use std::time::Duration;

use anyhow::{Context as _, Result};
use strata_framework::task;
use strata_proto::{TaskReason, TaskState};
use strata_test_support::cluster::*;
use strata_test_support::net::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_through_every_state_and_its_output_is_captured() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("e2e-states").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![
            task("hello")
                .shell("echo hello; echo oops >&2")
                .cpus(0.5)
                .mem(64.0)
                .build(),
        ],
    )
    .await?;
    let updates = events.until_terminal("hello").await?;
    assert_eq!(
        states(&updates),
        ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    );
    let last = updates.last().expect("a terminal update");
    assert_eq!(last.exit_code, Some(0));
    assert_eq!(last.agent_id, offer.agent_id);
    assert!(
        !last.uuid.is_empty(),
        "agent updates carry a uuid to acknowledge"
    );

    let sandbox = cluster
        .agent_work_dir()
        .join("sandboxes")
        .join(fw.framework_id())
        .join("hello");
    assert_eq!(std::fs::read_to_string(sandbox.join("stdout"))?, "hello\n");
    assert_eq!(std::fs::read_to_string(sandbox.join("stderr"))?, "oops\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_are_reported_faithfully() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("e2e-exits").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![
            task("exit3").shell("exit 3").cpus(0.1).mem(16.0).build(),
            task("sigterm")
                .shell("kill -TERM $$")
                .cpus(0.1)
                .mem(16.0)
                .build(),
            task("argv")
                .command(["/bin/sh", "-c", "exit 0"])
                .cpus(0.1)
                .mem(16.0)
                .build(),
        ],
    )
    .await?;
    let exit3 = events.until_terminal("exit3").await?;
    let last = exit3.last().expect("terminal");
    assert_eq!(last.state(), TaskState::Failed);
    assert_eq!(last.exit_code, Some(3));
    assert_eq!(last.reason(), TaskReason::CommandFailed);

    let sig = events.until_terminal("sigterm").await?;
    let last = sig.last().expect("terminal");
    assert_eq!(last.state(), TaskState::Failed);
    assert_eq!(last.signal, Some(15), "{last:?}");

    let argv = events.until_terminal("argv").await?;
    assert_eq!(argv.last().expect("terminal").state(), TaskState::Finished);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_running_task_with_task_killed() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("e2e-kill").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![
            task("sleeper")
                .shell("sleep 60")
                .cpus(0.1)
                .mem(16.0)
                .build(),
        ],
    )
    .await?;
    events
        .updates_until("sleeper", |s| s == TaskState::Running)
        .await?;
    fw.kill("sleeper", &offer.agent_id).await?;
    let updates = events.until_terminal("sleeper").await?;
    let last = updates.last().expect("terminal");
    assert_eq!(last.state(), TaskState::Killed, "{updates:?}");
    assert_eq!(last.reason(), TaskReason::TaskKilled);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_fails_with_the_reason() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("e2e-nostart").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![
            task("ghost")
                .command(["/no/such/binary"])
                .cpus(0.1)
                .mem(16.0)
                .build(),
        ],
    )
    .await?;
    let updates = events.until_terminal("ghost").await?;
    let last = updates.last().expect("terminal");
    assert_eq!(last.state(), TaskState::Failed, "{updates:?}");
    assert_eq!(last.reason(), TaskReason::ContainerLaunchFailed);
    assert!(last.message.contains("/no/such/binary"), "{}", last.message);
    assert!(
        last.message.to_lowercase().contains("no such file"),
        "{}",
        last.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_agent_is_offered_again_after_the_filter_or_a_revive() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("e2e-decline").await?;
    let offer = events.next_offer().await?;

    // A short filter: offered again once it expires.
    fw.decline(vec![offer.id.clone()], Some(0.5)).await?;
    let again = events.next_offer().await?;
    assert_eq!(again.agent_id, offer.agent_id);
    assert_ne!(again.id, offer.id, "a new offer, not the declined one");

    // A long filter: not offered again, until REVIVE clears it.
    fw.decline(vec![again.id.clone()], Some(3600.0)).await?;
    events.no_offer_within(Duration::from_secs(2)).await?;
    fw.revive().await?;
    let revived = events.next_offer().await?;
    assert_eq!(revived.agent_id, offer.agent_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_killed_agent_are_reported_lost() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.framework("e2e-lost").await?;
    let offer = events.next_offer().await?;
    let ids = ["a", "b", "c"];
    fw.launch(
        &offer,
        ids.iter()
            .map(|id| task(*id).shell("sleep 60").cpus(0.1).mem(16.0).build())
            .collect(),
    )
    .await?;
    for id in ids {
        events
            .updates_until(id, |s| s == TaskState::Running)
            .await?;
    }
    cluster.kill_agent();
    for id in ids {
        let updates = events.until_terminal(id).await?;
        let last = updates.last().expect("terminal");
        assert_eq!(last.state(), TaskState::Lost, "{updates:?}");
        assert_eq!(last.reason(), TaskReason::AgentDisconnected);
        assert!(
            last.uuid.is_empty(),
            "allocator-made updates need no acknowledgement"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_aware_frameworks_see_unreachable_instead_of_lost() -> Result<()> {
    let mut cluster = Cluster::start().await?;
    let (fw, mut events) = cluster.partition_aware_framework("e2e-unreachable").await?;
    let offer = events.next_offer().await?;
    fw.launch(
        &offer,
        vec![task("p").shell("sleep 60").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    events
        .updates_until("p", |s| s == TaskState::Running)
        .await?;
    cluster.kill_agent();
    let updates = events
        .updates_until("p", |s| s == TaskState::Unreachable || s.is_terminal())
        .await?;
    assert_eq!(
        updates.last().expect("update").state(),
        TaskState::Unreachable,
        "{updates:?}"
    );
    Ok(())
}

/// The validation cases: each is rejected with a clear message and launches nothing; as in
/// Mesos, a rejected ACCEPT uses up its offer, whose resources are offered again at once (the
/// SDK's launches refuse nothing), and a valid task launches on that new offer afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_launches_are_rejected_and_launch_nothing() -> Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        cpus: 2.0,
        ..Default::default()
    })
    .await?;
    let (fw, mut events) = cluster.framework("e2e-validation").await?;
    let mut offer = events.next_offer().await?;

    // Larger than the offer.
    fw.launch(
        &offer,
        vec![task("big").shell("true").cpus(64.0).mem(16.0).build()],
    )
    .await?;
    let big = events.until_terminal("big").await?;
    let last = big.last().expect("terminal");
    assert_eq!(last.state(), TaskState::Error);
    assert_eq!(last.reason(), TaskReason::TaskInvalid);
    assert!(last.message.contains("cpus"), "{}", last.message);
    offer = events.next_offer().await?;

    // An empty command.
    fw.launch(
        &offer,
        vec![task("empty").shell("").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    let empty = events.until_terminal("empty").await?;
    assert_eq!(empty.last().expect("terminal").state(), TaskState::Error);
    assert!(
        empty.last().expect("terminal").message.contains("command"),
        "{:?}",
        empty
    );
    offer = events.next_offer().await?;

    // Two tasks with one id in one call.
    fw.launch(
        &offer,
        vec![
            task("dup").shell("true").cpus(0.1).mem(16.0).build(),
            task("dup").shell("true").cpus(0.1).mem(16.0).build(),
        ],
    )
    .await?;
    let dup = events.until_terminal("dup").await?;
    assert_eq!(dup.last().expect("terminal").state(), TaskState::Error);
    offer = events.next_offer().await?;

    // An unknown offer id: the real offer, not named, stays outstanding.
    let mut forged = offer.clone();
    forged.id = "no-such-offer".into();
    fw.launch(
        &forged,
        vec![task("forged").shell("true").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    let f = events.until_terminal("forged").await?;
    assert_eq!(f.last().expect("terminal").state(), TaskState::Dropped);
    assert_eq!(
        f.last().expect("terminal").reason(),
        TaskReason::InvalidOffers
    );

    // Nothing was launched: the latest offer launches a task.
    fw.launch(
        &offer,
        vec![task("ok").shell("sleep 30").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    events
        .updates_until("ok", |s| s == TaskState::Running)
        .await?;

    // The offer is used now: using it again is refused.
    fw.launch(
        &offer,
        vec![task("reuse").shell("true").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    let r = events.until_terminal("reuse").await?;
    assert_eq!(r.last().expect("terminal").state(), TaskState::Dropped);

    // A task id that is already running, in a fresh offer.
    let fresh = events.next_offer().await?;
    fw.launch(
        &fresh,
        vec![task("ok").shell("true").cpus(0.1).mem(16.0).build()],
    )
    .await?;
    let d = events
        .updates_until("ok", |s| s == TaskState::Error || s.is_terminal())
        .await?;
    let last = d.last().expect("update");
    assert_eq!(last.state(), TaskState::Error, "{d:?}");
    assert!(last.message.contains("ok"), "{}", last.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_with_an_unknown_framework_id_is_refused() -> Result<()> {
    let cluster = Cluster::start().await?;
    let result = tokio::time::timeout(
        WAIT,
        strata_framework::FrameworkBuilder::new(&cluster.addr)
            .name("e2e-unknown")
            .framework_id("no-such-framework")
            .subscribe(),
    )
    .await?;
    let err = result.expect_err("an unknown framework id must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("no-such-framework"), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_run_reports_states_and_exits_with_the_task_exit_code() -> Result<()> {
    let cluster = Cluster::start().await?;
    let ok = cluster.cli(&["run", "--cpus", "0.5", "--mem", "64", "--", "echo", "hi"]);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert_eq!(ok.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("TASK_RUNNING"), "{stderr}");
    assert!(stderr.contains("TASK_FINISHED"), "{stderr}");

    let seven = cluster.cli(&["run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        seven.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&seven.stderr)
    );

    let sig = cluster.cli(&["run", "--shell", "--", "kill -KILL $$"]);
    assert_eq!(
        sig.status.code(),
        Some(128 + 9),
        "{}",
        String::from_utf8_lossy(&sig.stderr)
    );

    let missing = cluster.cli(&["run", "--", "/no/such/binary"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("/no/such/binary"), "{stderr}");

    // The finished tasks are listed, as a table and as JSON.
    let ps = cluster.cli(&["ps", "--all", "--json"]);
    assert!(ps.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&ps.stdout)?;
    let rows = rows.as_array().expect("an array of tasks");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().any(|r| r["state"] == "TASK_FINISHED"));
    let table = cluster.cli(&["ps", "--all"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("TASK_FAILED"));

    let agents = cluster.cli(&["agents", "--json"]);
    let agents: serde_json::Value = serde_json::from_slice(&agents.stdout)?;
    assert_eq!(agents.as_array().map(Vec::len), Some(1));
    let frameworks = cluster.cli(&["frameworks"]);
    assert!(frameworks.status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_run_too_big_for_any_agent_says_so() -> Result<()> {
    let cluster = Cluster::start().await?;
    let out = cluster.cli(&[
        "run",
        "--cpus",
        "1000",
        "--offer-timeout",
        "2s",
        "--",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("cpus"), "{stderr}");
    Ok(())
}

#[test]
fn the_cli_says_what_to_do_when_no_allocator_answers() {
    let port = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--allocator", &format!("http://127.0.0.1:{port}"), "ps"])
        .output()
        .expect("strata runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("strata local"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_resources_go_to_the_framework_with_the_lowest_dominant_share() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (a, mut ea) = cluster.framework("e2e-drf-a").await?;
    let offer = ea.next_offer().await?;
    a.launch(
        &offer,
        vec![task("hog").shell("sleep 30").cpus(1.0).mem(64.0).build()],
    )
    .await?;
    ea.updates_until("hog", |s| s == TaskState::Running).await?;
    // The rest of the agent comes back to a, the only framework so far.
    let rest = ea.next_offer().await?;
    let (b, mut eb) = cluster.framework("e2e-drf-b").await?;
    assert_ne!(a.framework_id(), b.framework_id());
    // Once a declines it, b (dominant share 0) gets it, not a (which holds 1 of 4 cpus).
    a.decline(vec![rest.id.clone()], Some(0.0)).await?;
    let offer_b = eb.next_offer().await?;
    assert_eq!(offer_b.agent_id, offer.agent_id);
    ea.no_offer_within(Duration::from_secs(1)).await?;
    Ok(())
}

/// An agent started with Mesos' `--resources` syntax registers its static reservations: the
/// allocator lists them as static, and the agent's totals are what the flag says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_static_reservations_from_its_resources_flag() -> Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        agent_args: vec!["--resources", "cpus:1;cpus(ml):2;mem(ml):256"],
        ..Default::default()
    })
    .await?;
    let out = cluster.cli(&["reservations", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reservations: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ml = reservations
        .as_array()
        .and_then(|list| list.iter().find(|r| r["role"] == "ml"))
        .with_context(|| format!("no reservation for ml: {reservations}"))?;
    assert_eq!(ml["dynamic"], false, "{ml}");
    assert_eq!(ml["resources"], "cpus(ml)=2 mem(ml)=256", "{ml}");
    let out = cluster.cli(&["agents", "--json"]);
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(agents[0]["total"]["cpus"], 3.0, "{agents}");
    Ok(())
}

/// A limit of 0 caps a role and is kept; a guarantee of 0 with no limit is refused rather than
/// answered "set" (it would be no quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_quota_limit_is_kept_and_a_zero_guarantee_alone_is_refused() -> Result<()> {
    let cluster = Cluster::start().await?;
    let out = cluster.cli(&["quota", "set", "eng", "cpus=0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("a guarantee of 0 with no limit is no quota"),
        "{}",
        text(&out.stderr)
    );
    let out = cluster.cli(&["quota", "set", "eng", "--limit", "cpus=0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cluster.cli(&["quota", "get", "--json"]);
    let quotas: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let eng = quotas
        .as_array()
        .and_then(|q| q.iter().find(|q| q["role"] == "eng"))
        .with_context(|| format!("no quota for eng: {quotas}"))?;
    assert_eq!(eng["limit"], "cpus=0", "{eng}");
    Ok(())
}
