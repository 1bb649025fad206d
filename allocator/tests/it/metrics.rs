//! `/metrics` of a real allocator: served in-process (`serve_with_metrics` and
//! `metrics::serve_http` on 127.0.0.1 port 0) and by the `strata-allocator` binary
//! (`--metrics-listen`), read through hyper's HTTP/1.1 client; the values move as an agent (this
//! test speaking AgentService) registers and a framework launches a task on it. Every wait is
//! bounded.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use strata_proto::{Operation, TaskState, allocator_message, call, operation};
use strata_test_support::STEP;
use strata_test_support::allocator::Allocator;
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::framework::{Framework, task};
use strata_test_support::http::{Page, get};
use strata_test_support::net::free_addr;
use strata_test_support::wait::{Poll, poll_until};

use crate::common::{allocator_command, allocator_fails, wait_exit};

/// `GET /metrics`: the body, which must be OpenMetrics text answered with 200.
async fn scrape(addr: SocketAddr) -> Result<String> {
    openmetrics(get(addr, "/metrics").await?)
}

/// The body of a 200 answer with OpenMetrics text.
fn openmetrics(response: Page) -> Result<String> {
    ensure!(
        response.status == 200,
        "GET /metrics answered {}: {}",
        response.status,
        response.body
    );
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "not OpenMetrics text but {content_type:?}: {:?}",
        response.headers
    );
    Ok(response.body)
}

/// The value of the sample `series` (name and labels, as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` reaches `want` (gauges refresh at scrape time; counters move as the
/// actor sends), then returns the whole text.
async fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> Result<String> {
    poll_until(STEP, Duration::from_millis(20), || async {
        let text = scrape(addr).await?;
        Ok(if sample(&text, series) == Some(want) {
            Poll::Ready(text)
        } else {
            Poll::Pending(format!(
                "{series} did not reach {want} within {STEP:?}:\n{text}"
            ))
        })
    })
    .await
}

#[tokio::test]
async fn metrics_move_as_an_agent_registers_and_a_task_launches() -> Result<()> {
    let allocator = Allocator::with_metrics().await?;
    let metrics_addr = allocator.http();

    // Nothing yet.
    let text = scrape_until(
        metrics_addr,
        "strata_allocator_agents{state=\"active\"}",
        0.0,
    )
    .await?;
    for family in [
        "strata_allocator_offers_total",
        "strata_allocator_offers_declined_total",
        "strata_allocator_offers_rescinded_total",
        "strata_allocator_tasks_launched_total",
    ] {
        assert_eq!(sample(&text, family), Some(0.0), "{family}:\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            "strata_allocator_resources{resource=\"cpus\",kind=\"total\"}"
        ),
        Some(0.0)
    );

    // An agent registers: the agent and resource gauges move.
    let mut agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;
    let text = scrape_until(
        metrics_addr,
        "strata_allocator_agents{state=\"active\"}",
        1.0,
    )
    .await?;
    assert_eq!(
        sample(
            &text,
            "strata_allocator_resources{resource=\"cpus\",kind=\"total\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            "strata_allocator_resources{resource=\"mem\",kind=\"total\"}"
        ),
        Some(1024.0 * 1024.0 * 1024.0),
        "memory in bytes"
    );

    // A framework subscribes, gets an offer and launches a task with part of it.
    let mut fw = Framework::named(&allocator, "metrics").await?;
    let offer = fw.offer().await?;
    scrape_until(
        metrics_addr,
        "strata_allocator_frameworks{state=\"connected\"}",
        1.0,
    )
    .await?;
    let text = scrape(metrics_addr).await?;
    assert!(
        sample(&text, "strata_allocator_offers_total") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "strata_allocator_allocation_round_seconds_count") >= Some(1.0),
        "{text}"
    );
    // No filters: the rest of the offer comes back after the default refusal, to be declined.
    fw.call(call::Call::Accept(call::Accept {
        offer_ids: vec![offer.id.clone()],
        operations: vec![Operation {
            operation: Some(operation::Operation::Launch(operation::Launch {
                tasks: vec![task("t1", 1.5, 64.0)],
            })),
        }],
        filters: None,
    }))
    .await?;
    match agent.next().await? {
        allocator_message::Message::LaunchTask(l) => {
            assert_eq!(l.task.context("task")?.task_id, "t1");
        }
        other => bail!("expected LaunchTask, got {other:?}"),
    }
    let text = scrape_until(metrics_addr, "strata_allocator_tasks_launched_total", 1.0).await?;
    assert_eq!(
        sample(
            &text,
            "strata_allocator_resources{resource=\"cpus\",kind=\"allocated\"}"
        ),
        Some(1.5),
        "{text}"
    );

    // The agent reports the task running: the update is counted by state.
    agent
        .update(&fw.id, "t1", TaskState::Running, &[1; 16])
        .await?;
    scrape_until(
        metrics_addr,
        "strata_allocator_task_updates_total{state=\"TASK_RUNNING\"}",
        1.0,
    )
    .await?;

    // The framework declines what is left when it is offered again.
    let offer = fw.offer().await?;
    fw.call(call::Call::Decline(call::Decline {
        offer_ids: vec![offer.id],
        filters: None,
    }))
    .await?;
    scrape_until(metrics_addr, "strata_allocator_offers_declined_total", 1.0).await?;

    drop(agent);
    drop(fw);
    allocator.shutdown().await
}

/// The binary serves `/metrics` on `--metrics-listen` and on the Mesos HTTP API's port, and
/// refuses a metrics address it cannot bind.
#[tokio::test]
async fn the_binary_serves_metrics_on_metrics_listen() -> Result<()> {
    let (grpc, http, mesos) = (free_addr(), free_addr(), free_addr());
    let dir = tempfile::tempdir()?;
    let work_dir = dir.path().display().to_string();
    let mut child = allocator_command(&[
        "--listen",
        &grpc.to_string(),
        "--metrics-listen",
        &http.to_string(),
        "--mesos-listen",
        &mesos.to_string(),
        "--store",
        "memory",
        "--work-dir",
        &work_dir,
    ])
    .spawn()
    .context("cannot start strata-allocator")?;
    let result: Result<()> = async {
        // Retried until it answers; then the first answer must be right.
        let response = poll_until(STEP, Duration::from_millis(50), || async {
            Ok(match get(http, "/metrics").await {
                Ok(response) => Poll::Ready(response),
                Err(e) => Poll::Pending(format!("{e:#}")),
            })
        })
        .await?;
        let text = openmetrics(response)?;
        assert_eq!(sample(&text, "strata_allocator_offers_total"), Some(0.0));
        assert_eq!(
            sample(&text, "strata_allocator_agents{state=\"active\"}"),
            Some(0.0),
            "the gauges are refreshed by the running allocator:\n{text}"
        );
        // The Mesos HTTP API's port serves the same metrics.
        let text = scrape(mesos).await?;
        assert_eq!(sample(&text, "strata_allocator_offers_total"), Some(0.0));
        Ok(())
    }
    .await;
    child.start_kill()?;
    wait_exit(&mut child).await?;
    result?;

    // An explicit address that is taken stops the allocator with advice.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let stderr = allocator_fails(&[
        "--listen",
        &free_addr().to_string(),
        "--metrics-listen",
        &taken.local_addr()?.to_string(),
        "--mesos-listen",
        "none",
        "--store",
        "memory",
    ])
    .await?;
    assert!(
        stderr.contains("cannot listen for metrics") && stderr.contains("--metrics-listen"),
        "{stderr}"
    );
    Ok(())
}
