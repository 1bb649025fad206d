//! `/metrics` of a real allocator: served in-process (`serve_with_metrics` and
//! `metrics::serve_http` on 127.0.0.1 port 0) and by the `strata-allocator` binary
//! (`--metrics-listen`), read over plain HTTP; the values move as an agent (this test speaking
//! AgentService) registers and a framework launches a task on it. Every wait is bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use strata_allocator::store::MemoryStore;
use strata_allocator::{AllocatorConfig, Metrics, metrics, serve_with_metrics};
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::names::{CPUS, MEM};
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{
    AgentInfo, AgentMessage, Call, CommandInfo, FrameworkInfo, Operation, Resource, TaskInfo,
    TaskSource, TaskState, TaskStatus, agent_message, allocator_message, call, event, operation,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// The longest any single step may take.
const STEP: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .map_err(|_| anyhow!("timed out after {STEP:?} waiting for {what}"))
}

/// `GET /metrics` over HTTP/1.1: the status line's code and the body.
async fn scrape(addr: SocketAddr) -> Result<(String, String)> {
    bounded("GET /metrics", async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("an HTTP response without a blank line")?;
        let status = head.split(' ').nth(1).unwrap_or_default().to_owned();
        if !head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text")
        {
            bail!("not OpenMetrics text: {head}");
        }
        Ok((status, body.to_owned()))
    })
    .await?
}

/// The value of the sample `series` (name and labels, as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` reaches `want` (gauges refresh at scrape time; counters move as the
/// actor sends), then returns the whole text.
async fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> Result<String> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, text) = scrape(addr).await?;
        assert_eq!(status, "200");
        if sample(&text, series) == Some(want) {
            return Ok(text);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{series} did not reach {want} within {STEP:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_config() -> AllocatorConfig {
    AllocatorConfig {
        agent_heartbeat_interval: Duration::from_secs(1),
        allocation_interval: Duration::from_millis(50),
        // The rest of an accepted offer comes back soon, to be declined.
        default_refuse: Duration::from_millis(100),
        ..AllocatorConfig::default()
    }
}

#[tokio::test]
async fn metrics_move_as_an_agent_registers_and_a_task_launches() -> Result<()> {
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = http.local_addr()?;
    let metrics = Metrics::new();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_metrics(
        grpc,
        fast_config(),
        Box::new(MemoryStore::default()),
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let http_server = tokio::spawn(metrics::serve_http(http, metrics, async move {
        let _ = http_stopped.await;
    }));

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
    let channel = bounded(
        "connect",
        Endpoint::from_shared(format!("http://{grpc_addr}"))?.connect(),
    )
    .await??;
    let mut agents = AgentServiceClient::new(channel.clone());
    let (agent_tx, agent_rx) = mpsc::channel(16);
    let mut agent_stream = bounded("Connect", agents.connect(ReceiverStream::new(agent_rx)))
        .await??
        .into_inner();
    agent_tx
        .send(AgentMessage {
            message: Some(agent_message::Message::Register(agent_message::Register {
                info: Some(AgentInfo {
                    hostname: "metrics-host".to_owned(),
                    resources: vec![Resource::scalar(CPUS, 4.0), Resource::scalar(MEM, 1024.0)],
                    ..AgentInfo::default()
                }),
                tasks: vec![],
            })),
        })
        .await?;
    let agent_id = match next_agent_message(&mut agent_stream).await? {
        allocator_message::Message::Registered(r) => r.agent_id,
        other => bail!("expected Registered, got {other:?}"),
    };
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
    let mut scheduler = SchedulerServiceClient::new(channel);
    let (fw_tx, fw_rx) = mpsc::channel(16);
    fw_tx
        .send(Call {
            framework_id: String::new(),
            call: Some(call::Call::Subscribe(call::Subscribe {
                framework_info: Some(FrameworkInfo {
                    name: "metrics".to_owned(),
                    ..FrameworkInfo::default()
                }),
            })),
        })
        .await?;
    let mut events = bounded("Subscribe", scheduler.subscribe(ReceiverStream::new(fw_rx)))
        .await??
        .into_inner();
    let mut framework_id = String::new();
    let offer = loop {
        let e = bounded("an event", events.message())
            .await??
            .context("the allocator ended the framework stream")?;
        match e.event {
            Some(event::Event::Subscribed(s)) => framework_id = s.framework_id,
            Some(event::Event::Offers(o)) => break o.offers.into_iter().next().context("offer")?,
            _ => {}
        }
    };
    scrape_until(
        metrics_addr,
        "strata_allocator_frameworks{state=\"connected\"}",
        1.0,
    )
    .await?;
    let text = scrape(metrics_addr).await?.1;
    assert!(
        sample(&text, "strata_allocator_offers_total") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "strata_allocator_allocation_round_seconds_count") >= Some(1.0),
        "{text}"
    );
    fw_tx
        .send(Call {
            framework_id: framework_id.clone(),
            call: Some(call::Call::Accept(call::Accept {
                offer_ids: vec![offer.id.clone()],
                operations: vec![Operation {
                    operation: Some(operation::Operation::Launch(operation::Launch {
                        tasks: vec![TaskInfo {
                            task_id: "t1".to_owned(),
                            name: "t1".to_owned(),
                            resources: vec![
                                Resource::scalar(CPUS, 1.5),
                                Resource::scalar(MEM, 64.0),
                            ],
                            command: Some(CommandInfo {
                                shell: true,
                                value: "sleep 1".to_owned(),
                                ..CommandInfo::default()
                            }),
                            ..TaskInfo::default()
                        }],
                    })),
                }],
                filters: None,
            })),
        })
        .await?;
    match next_agent_message(&mut agent_stream).await? {
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
    agent_tx
        .send(AgentMessage {
            message: Some(agent_message::Message::StatusUpdate(
                agent_message::StatusUpdate {
                    status: Some(TaskStatus {
                        task_id: "t1".to_owned(),
                        framework_id: framework_id.clone(),
                        agent_id: agent_id.clone(),
                        state: TaskState::Running as i32,
                        source: TaskSource::Agent as i32,
                        uuid: vec![1; 16],
                        ..TaskStatus::default()
                    }),
                },
            )),
        })
        .await?;
    scrape_until(
        metrics_addr,
        "strata_allocator_task_updates_total{state=\"TASK_RUNNING\"}",
        1.0,
    )
    .await?;

    // The framework declines what is left when it is offered again.
    let offer = loop {
        let e = bounded("an event", events.message())
            .await??
            .context("the allocator ended the framework stream")?;
        if let Some(event::Event::Offers(o)) = e.event
            && let Some(offer) = o.offers.into_iter().next()
        {
            break offer;
        }
    };
    fw_tx
        .send(Call {
            framework_id,
            call: Some(call::Call::Decline(call::Decline {
                offer_ids: vec![offer.id],
                filters: None,
            })),
        })
        .await?;
    scrape_until(metrics_addr, "strata_allocator_offers_declined_total", 1.0).await?;

    drop(agent_tx);
    drop(fw_tx);
    let _ = stop.send(());
    bounded("serve to return", server).await???;
    let _ = http_stop.send(());
    bounded("the metrics server to return", http_server).await???;
    Ok(())
}

async fn next_agent_message(
    stream: &mut tonic::Streaming<strata_proto::AllocatorMessage>,
) -> Result<allocator_message::Message> {
    bounded("an allocator message", stream.message())
        .await??
        .context("the allocator ended the agent stream")?
        .message
        .context("an empty allocator message")
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The binary serves `/metrics` on `--metrics-listen` and on the Mesos HTTP API's port, and
/// refuses a metrics address it cannot bind.
#[tokio::test]
async fn the_binary_serves_metrics_on_metrics_listen() -> Result<()> {
    let (grpc, http, mesos) = (free_port()?, free_port()?, free_port()?);
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-allocator"))
        .args(["--listen", &grpc.to_string()])
        .args(["--metrics-listen", &http.to_string()])
        .args(["--http-listen", &mesos.to_string()])
        .args(["--store", "memory"])
        .arg("--work-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start strata-allocator")?;
    let result = async {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match scrape(http).await {
                Ok((status, text)) => {
                    assert_eq!(status, "200");
                    assert_eq!(sample(&text, "strata_allocator_offers_total"), Some(0.0));
                    assert_eq!(
                        sample(&text, "strata_allocator_agents{state=\"active\"}"),
                        Some(0.0),
                        "the gauges are refreshed by the running allocator:\n{text}"
                    );
                    // The Mesos HTTP API's port serves the same metrics.
                    let (status, text) = scrape(mesos).await?;
                    assert_eq!(status, "200");
                    assert_eq!(sample(&text, "strata_allocator_offers_total"), Some(0.0));
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result?;

    // An explicit address that is taken stops the allocator with advice.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let output = Command::new(env!("CARGO_BIN_EXE_strata-allocator"))
        .args(["--listen", &free_port()?.to_string()])
        .args(["--metrics-listen", &taken.local_addr()?.to_string()])
        .args(["--http-listen", "none"])
        .args(["--store", "memory"])
        .stdin(Stdio::null())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen for metrics") && stderr.contains("--metrics-listen"),
        "{stderr}"
    );
    Ok(())
}
