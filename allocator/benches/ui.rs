//! `cargo xtask bench ui [-- AGENTS TASKS]`: the dashboard at scale, measured in the browser.
//!
//! An in-process allocator with its Mesos HTTP port, AGENTS simulated agents (default 1,000;
//! strata-test-support's `FakeAgent`s over real gRPC, each answering launches with
//! TASK_RUNNING and kills with TASK_KILLED, heartbeating) and one framework running TASKS
//! tasks (default 10,000) on them. Then `allocator/benches/ui_bench.py` (Playwright for
//! Python from target/ui-venv, Debian's chromium, both from `cargo xtask setup`) loads the
//! overview and tasks pages several times (time from navigation to the snapshot drawn) and
//! makes changes from the page's own endpoints (kills of tasks, a drain and reactivation of
//! an agent), timing each from its POST until the page shows it. Prints the figures as JSON.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use strata_allocator::mesos::HttpApi;
use strata_proto::{
    AgentInfo, FrameworkInfo, Resource, TaskState, agent_message, allocator_message, event,
};
use strata_test_support::StreamOptions;
use strata_test_support::allocator::Allocator;
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::framework::{Framework, task};
use tokio::net::TcpListener;

/// One simulated agent, answering until its stream ends.
fn answer(mut agent: FakeAgent) {
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        loop {
            let message = tokio::select! {
                m = agent.rx.message() => m,
                _ = heartbeat.tick() => {
                    let beat = agent_message::Message::Heartbeat(agent_message::Heartbeat {});
                    if agent.send(beat).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(Some(m)) = message else { return };
            let (framework_id, task_id, state) = match m.message {
                Some(allocator_message::Message::LaunchTask(launch)) => {
                    let Some(task) = launch.task else { continue };
                    (launch.framework_id, task.task_id, TaskState::Running)
                }
                Some(allocator_message::Message::KillTask(kill)) => {
                    (kill.framework_id, kill.task_id, TaskState::Killed)
                }
                _ => continue,
            };
            let uuid = uuid::Uuid::new_v4();
            if agent
                .update(&framework_id, &task_id, state, uuid.as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let agents = numbers.first().copied().unwrap_or(1000);
    let tasks = numbers.get(1).copied().unwrap_or(10_000);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("allocator/ has a parent")?
        .to_path_buf();
    let python = workspace.join("target/ui-venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run `cargo xtask setup` (Playwright for Python)",
            python.display()
        );
    }

    let mut config = strata_test_support::allocator::config();
    config.allocation_interval = Duration::from_millis(250);
    config.terminal_task_history = 1000;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let allocator = Allocator::start_with(config, Some(HttpApi::new(http)), None).await?;
    let channel = allocator.channel().await?;
    let started = Instant::now();
    for i in 0..agents {
        let info = AgentInfo {
            hostname: format!("sim-{i:04}"),
            resources: vec![
                Resource::scalar("cpus", 16.0),
                Resource::scalar("mem", 65_536.0),
            ],
            attributes: vec![strata_proto::Attribute {
                name: "rack".into(),
                value: format!("r{}", i % 20),
            }],
            ..AgentInfo::default()
        };
        let (agent, _) = FakeAgent::connect(channel.clone(), info, StreamOptions::default())
            .await
            .with_context(|| format!("registering simulated agent {i}"))?;
        answer(agent);
    }
    eprintln!(
        "bench ui: {agents} agents registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut fw = Framework::subscribe(
        &allocator,
        FrameworkInfo {
            name: "bench-ui".into(),
            ..FrameworkInfo::default()
        },
    )
    .await?;
    let per_agent = tasks.div_ceil(agents).max(1);
    let (mut launched, mut running) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    while running < tasks {
        if Instant::now() > deadline {
            bail!("only {running} of {tasks} tasks running after 10 minutes");
        }
        match fw.next().await? {
            event::Event::Offers(offers) => {
                for offer in offers.offers {
                    let n = per_agent.min(tasks - launched);
                    if n == 0 {
                        break;
                    }
                    let batch = (launched..launched + n)
                        .map(|i| task(&format!("t{i:05}"), 0.1, 32.0))
                        .collect();
                    fw.launch(&offer, batch).await?;
                    launched += n;
                }
            }
            event::Event::Update(u)
                if u.status
                    .as_ref()
                    .is_some_and(|s| s.state() == TaskState::Running) =>
            {
                running += 1;
            }
            _ => {}
        }
    }
    eprintln!(
        "bench ui: {tasks} tasks running in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let framework_id = fw.id.clone();
    // The framework's updates keep coming (kills): read them so its stream never backs up.
    tokio::spawn(async move { while fw.next().await.is_ok() {} });

    let script = workspace.join("allocator/benches/ui_bench.py");
    let url = format!("http://{}", allocator.http());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("STRATA_UI_URL", url)
            .env("STRATA_UI_FRAMEWORK", framework_id)
            .env("STRATA_UI_TASKS", tasks.to_string())
            .env("STRATA_UI_AGENTS", agents.to_string())
            .env("STRATA_CHROMIUM", "/usr/bin/chromium")
            .output()
    })
    .await??;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("the browser script failed ({})", out.status);
    }
    allocator.shutdown().await
}
