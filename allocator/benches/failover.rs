//! `cargo bench -p strata-allocator --bench failover` (what `cargo xtask bench failover` runs):
//! how long a highly available allocator is without a leader when its leader dies.
//!
//! A real etcd member, three `strata-allocator` replicas (release processes, `--etcd`,
//! `--etcd-lease-ttl` from `--ttl`), `--agents` simulated agents over real gRPC streams and one
//! framework on the SDK, all given the three addresses. The agents
//! (`strata_test_support::sim_agent`) reconnect as `strata-agent` does (a follower's answer
//! naming the leader followed at once, another follower's answer retried after 250 ms, else
//! 100 ms doubling to 5 s) and re-register with their running tasks; the framework keeps the
//! SDK's own reconnection and declines every offer with refuse 0. The framework launches `--tasks` tasks, which the
//! agents report RUNNING; then, `--rounds` times: `kill -9` of the leader, and the time from
//! the kill to the first offer the framework gets from the new leader and to every agent
//! registered with the new leader's term; then the killed replica starts again (as a
//! follower). Every update the framework gets goes through the history checker
//! (`strata_test_support::history`): nothing lost, launched twice, out of order or after a
//! terminal update.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_framework::{Event, FrameworkBuilder, ResourceBudget, task};
use strata_proto::TaskState;
use strata_test_support::etcd::Etcd;
use strata_test_support::history::History;
use strata_test_support::net::free_port;
use strata_test_support::sim_agent::{Registrations, SimAgent, leader};
use tokio::process::{Child, Command};

/// The longest any step may take before the run fails.
const STEP: Duration = Duration::from_secs(60);

struct Args {
    agents: usize,
    tasks: usize,
    rounds: usize,
    ttl: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        agents: 100,
        tasks: 1000,
        rounds: 10,
        ttl: "2s".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse()?,
            "--tasks" => args.tasks = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--ttl" => args.ttl = value()?,
            // `cargo bench` passes --bench.
            "--bench" => {}
            other => {
                bail!("unknown flag {other}: use --agents N, --tasks N, --rounds N, --ttl DURATION")
            }
        }
    }
    ensure!(
        args.agents > 0 && args.tasks > 0 && args.rounds > 0,
        "--agents, --tasks and --rounds must be at least 1"
    );
    Ok(args)
}

/// One replica's process and port.
struct Replica {
    child: Child,
    port: u16,
}

fn start_replica(etcd: &str, port: u16, ttl: &str, log: &Path) -> Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_strata-allocator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--mesos-listen", "none", "--metrics-listen", "none"])
        .args([
            "--etcd",
            etcd,
            "--cluster",
            "bench",
            "--etcd-lease-ttl",
            ttl,
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        )
        .kill_on_drop(true)
        .spawn()
        .context("cannot start strata-allocator")
}

/// What the framework saw.
#[derive(Default)]
struct Seen {
    history: History,
    last_offer: Option<Instant>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let ports = [free_port(), free_port(), free_port()];
    let urls: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    );
    let addresses = urls.join(",");
    let mut replicas = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let log = dir.path().join(format!("replica-{i}.log"));
        replicas.push(Replica {
            child: start_replica(&etcd.url, port, &args.ttl, &log)?,
            port,
        });
    }
    let started = Instant::now();
    while leader(&urls).await.is_none() {
        ensure!(started.elapsed() < STEP, "no replica leads after {STEP:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let book: Registrations = Arc::new(Mutex::new(vec![(0, started, String::new()); args.agents]));
    let _agents: Vec<SimAgent> = (0..args.agents)
        .map(|i| SimAgent::spawn(i, urls.clone(), 16.0, 65536.0, book.clone()))
        .collect();
    let launching = Instant::now();
    let (framework, mut events) = FrameworkBuilder::new(&addresses)
        .name("failover-bench")
        .failover_timeout(Duration::from_secs(600))
        .subscribe()
        .await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The framework: launches `tasks` tasks of 0.1 cpu and 32 MiB, then declines everything.
    let to_launch = args.tasks;
    let events_task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            while let Some(event) = events.recv().await {
                match event {
                    Event::Offers(offers) => {
                        seen.lock().expect("seen").last_offer = Some(Instant::now());
                        for offer in offers {
                            let mut budget = ResourceBudget::of_offer(&offer);
                            let mut batch = Vec::new();
                            while next < to_launch {
                                let t = task(format!("t{next}"))
                                    .shell("sleep 3600")
                                    .cpus(0.1)
                                    .mem(32.0)
                                    .build();
                                if !budget.take(&t.resources) || batch.len() >= 50 {
                                    break;
                                }
                                batch.push(t);
                                next += 1;
                            }
                            if batch.is_empty() {
                                let _ = framework.decline(vec![offer.id.clone()], Some(0.0)).await;
                            } else {
                                let ids: Vec<String> =
                                    batch.iter().map(|t| t.task_id.clone()).collect();
                                if framework.launch(&offer, batch).await.is_err() {
                                    next -= ids.len();
                                } else {
                                    let mut seen = seen.lock().expect("seen");
                                    for id in &ids {
                                        seen.history.launched(id, None);
                                    }
                                }
                            }
                        }
                    }
                    Event::Update(status) => seen.lock().expect("seen").history.update(&status),
                    Event::Subscribed { .. } => {
                        let _ = framework.reconcile(Vec::new()).await;
                    }
                    _ => {}
                }
            }
        })
    };
    let running = |seen: &Mutex<Seen>| seen.lock().expect("seen").history.count(TaskState::Running);
    while running(&seen) < args.tasks {
        ensure!(
            launching.elapsed() < STEP,
            "only {} of {} tasks running after {STEP:?}",
            running(&seen),
            args.tasks
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "failover: {} agents, {} tasks RUNNING {:.2} s after the framework subscribed; {} rounds, etcd lease ttl {}",
        args.agents,
        args.tasks,
        launching.elapsed().as_secs_f64(),
        args.rounds,
        args.ttl
    );

    let mut to_elected = Vec::new();
    let mut to_offer = Vec::new();
    let mut to_agents = Vec::new();
    for round in 0..args.rounds {
        // Let the cluster settle (every agent registered with the current leader).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let old = leader(&urls).await.context("no leader before the kill")?;
        let old_epoch = book
            .lock()
            .expect("book")
            .iter()
            .map(|r| r.0)
            .max()
            .unwrap_or(0);
        let killed_at = Instant::now();
        replicas[old].child.start_kill()?;
        let _ = replicas[old].child.wait().await;
        let mut elected = None;
        let mut offer = None;
        let mut agents = None;
        while elected.is_none() || offer.is_none() || agents.is_none() {
            if elected.is_none() && leader(&urls).await.is_some() {
                elected = Some(killed_at.elapsed());
            }
            ensure!(
                killed_at.elapsed() < STEP,
                "round {round}: no failover after {STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            if offer.is_none()
                && let Some(at) = seen.lock().expect("seen").last_offer
                && at > killed_at
            {
                offer = Some(at - killed_at);
            }
            let book = book.lock().expect("book");
            if agents.is_none() && book.iter().all(|r| r.0 > old_epoch) {
                agents = book.iter().map(|r| r.1 - killed_at).max();
            }
        }
        let (elected, offer, agents) = (
            elected.unwrap_or_default(),
            offer.unwrap_or_default(),
            agents.unwrap_or_default(),
        );
        println!(
            "failover: round {}: replica {old} killed; a new leader answered after {:.3} s, its first offer after {:.3} s, every agent re-registered after {:.3} s",
            round + 1,
            elected.as_secs_f64(),
            offer.as_secs_f64(),
            agents.as_secs_f64()
        );
        to_elected.push(elected);
        to_offer.push(offer);
        to_agents.push(agents);
        let log = dir.path().join(format!("replica-{old}.log"));
        replicas[old].child = start_replica(&etcd.url, replicas[old].port, &args.ttl, &log)?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().expect("seen");
    let summary = |name: &str, mut times: Vec<Duration>| {
        times.sort();
        let median = times[times.len() / 2];
        let worst = times[times.len() - 1];
        println!(
            "failover: {name}: median {:.3} s, worst {:.3} s",
            median.as_secs_f64(),
            worst.as_secs_f64()
        );
    };
    summary("kill -9 to a new leader answering", to_elected);
    summary("kill -9 to the first offer", to_offer);
    summary("kill -9 to every agent re-registered", to_agents);
    let history = &seen.history;
    println!(
        "failover: tasks RUNNING at the end {} of {}; history checker: {} updates checked, {} faults injected, {} violations",
        history.count(TaskState::Running),
        args.tasks,
        history.updates(),
        args.rounds,
        history.violations().len()
    );
    events_task.abort();
    ensure!(
        history.violations().is_empty() && history.count(TaskState::Running) == args.tasks,
        "broken guarantees: {:?}",
        &history.violations()[..history.violations().len().min(10)]
    );
    Ok(())
}
