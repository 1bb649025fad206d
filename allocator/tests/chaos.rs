//! The fault-injection suite (issue 17): a three-member etcd, three allocator replicas
//! (`strata-allocator` processes), simulated agents over real gRPC streams
//! (`strata_test_support::sim_agent`) and two frameworks on the SDK (one partition-aware, one
//! not) launching tasks that end by themselves (with a known exit code) and killing some,
//! while faults are injected in turn: `kill -9` of the leader, the leader paused past its
//! lease (cut off from etcd and everyone, as by a partition or a long pause: it must step
//! down and write nothing when it wakes), an agent partitioned past the reconnect timeout, an
//! agent crashed and restarted with its tasks, and the loss of one etcd member. Every update
//! each framework receives goes through the history checker (`strata_test_support::history`).
//!
//! Bounded in `cargo test` (`STRATA_CHAOS_SECONDS`, 30 s of faults by default;
//! `STRATA_CHAOS_FAULTS` picks some of [`FAULTS`]); `cargo xtask chaos --minutes N` runs it
//! longer, in release.
//!
//! Needs etcd (`cargo xtask setup` installs it). Agents are simulated and share the loopback
//! network: a partition is an agent that stops talking, not a cut link.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_framework::{Event, FrameworkBuilder, ResourceBudget, task};
use strata_test_support::etcd::EtcdCluster;
use strata_test_support::history::History;
use strata_test_support::net::free_port;
use strata_test_support::sim_agent::{
    Fault, LABEL_EXIT, LABEL_SECONDS, Registrations, SimAgent, leader,
};
use tokio::process::{Child, Command};

const AGENTS: usize = 4;
/// Tasks each framework keeps going.
const TASKS: usize = 8;
const TTL: &str = "2s";
/// How long an agent may be unheard of before its tasks are UNREACHABLE or LOST.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The faults, by the names `STRATA_CHAOS_FAULTS` takes, in the order they are injected.
const FAULTS: [&str; 5] = [
    "kill-leader",
    "pause-leader",
    "partition-agent",
    "crash-agent",
    "lose-etcd-member",
];
/// Time between faults.
const FAULT_EVERY: Duration = Duration::from_secs(5);

/// A tiny deterministic generator (xorshift), so a failing run can be told apart by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

struct Replicas {
    etcd: String,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: std::path::PathBuf,
}

impl Replicas {
    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{i}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_strata-allocator"))
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--mesos-listen", "none", "--metrics-listen", "none"])
            .args(["--etcd", &self.etcd, "--cluster", "chaos"])
            .args(["--etcd-lease-ttl", TTL])
            .args(["--allocation-interval", "200ms"])
            .args(["--agent-heartbeat-interval", "500ms"])
            .args(["--agent-timeout", "2s"])
            .args(["--agent-reconnect-timeout", "3s"])
            .args(["--agent-reregister-timeout", "30s"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start strata-allocator")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Starts again every replica that exited (one that stepped down exits, for its
    /// supervisor to start it again as a candidate).
    fn restart_exited(&mut self) -> Result<()> {
        for i in 0..self.children.len() {
            let exited = match self.children[i].as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited {
                self.start(i)?;
            }
        }
        Ok(())
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().and_then(Child::id)
    }
}

async fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// What one framework saw.
struct Seen {
    history: History,
    /// Tasks launched and not yet seen terminal.
    active: BTreeSet<String>,
    launched: usize,
    killed: usize,
}

/// Runs a framework that keeps [`TASKS`] tasks going until `stop`, killing one now and then.
async fn framework(
    urls: String,
    name: &'static str,
    partition_aware: bool,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let (client, mut events) = FrameworkBuilder::new(&urls)
        .name(name)
        .partition_aware(partition_aware)
        .failover_timeout(Duration::from_secs(600))
        .subscribe()
        .await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(partition_aware));
    let mut next = 0u64;
    let mut kill_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { bail!("{name}: the SDK stopped") };
                match event {
                    Event::Offers(offers) => {
                        let launching = !*stop.borrow();
                        for offer in offers {
                            let mut budget = ResourceBudget::of_offer(&offer);
                            let mut batch = Vec::new();
                            {
                                let mut s = seen.lock().expect("seen");
                                while launching && s.active.len() + batch.len() < TASKS {
                                    let exit = if rng.next(4) == 0 { 3 } else { 0 };
                                    let seconds = 1 + rng.next(6);
                                    let t = task(format!("{name}-{next}"))
                                        .shell("true")
                                        .cpus(0.1)
                                        .mem(16.0)
                                        .label(LABEL_SECONDS, seconds.to_string())
                                        .label(LABEL_EXIT, exit.to_string())
                                        .build();
                                    if !budget.take(&t.resources) {
                                        break;
                                    }
                                    next += 1;
                                    s.history.launched(&t.task_id, Some(exit));
                                    batch.push(t);
                                }
                                for t in &batch {
                                    s.active.insert(t.task_id.clone());
                                }
                                s.launched += batch.len();
                            }
                            if batch.is_empty() {
                                let _ = client.decline(vec![offer.id.clone()], Some(1.0)).await;
                            } else {
                                // A launch lost in a failover is reconciled as LOST (never ran).
                                let _ = client.launch(&offer, batch).await;
                            }
                        }
                    }
                    Event::Update(status) => {
                        let mut s = seen.lock().expect("seen");
                        s.history.update(&status);
                        let state = status.state();
                        if state.is_terminal() {
                            s.active.remove(&status.task_id);
                        }
                    }
                    Event::Subscribed { .. } => {
                        let _ = client.reconcile(Vec::new()).await;
                    }
                    _ => {}
                }
            }
            _ = kill_tick.tick() => {
                let victim = {
                    let s = seen.lock().expect("seen");
                    let n = s.active.len() as u64;
                    (n > 0).then(|| s.active.iter().nth(rng.next(n) as usize).cloned()).flatten()
                };
                if let Some(victim) = victim
                    && client.kill(&victim, "").await.is_ok()
                {
                    seen.lock().expect("seen").killed += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_no_update_breaks_a_guarantee() -> Result<()> {
    let seconds: u64 = std::env::var("STRATA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut etcd = EtcdCluster::start(3)?;
    let dir = tempfile::tempdir()?;
    let mut replicas = Replicas {
        etcd: etcd.urls(),
        ports: (0..3).map(|_| free_port()).collect(),
        children: (0..3).map(|_| None).collect(),
        dir: dir.path().to_owned(),
    };
    for i in 0..3 {
        replicas.start(i)?;
    }
    let urls = replicas.urls();
    let started = Instant::now();
    while leader(&urls).await.is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no replica leads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let book: Registrations =
        Arc::new(Mutex::new(vec![(0, Instant::now(), String::new()); AGENTS]));
    let shared_urls = Arc::new(urls.clone());
    let agents: Vec<SimAgent> = (0..AGENTS)
        .map(|i| SimAgent::spawn(i, shared_urls.clone(), 4.0, 4096.0, book.clone()))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut frameworks = Vec::new();
    let mut seens = Vec::new();
    for (name, aware) in [("aware", true), ("plain", false)] {
        let seen = Arc::new(Mutex::new(Seen {
            history: History::new(aware),
            active: BTreeSet::new(),
            launched: 0,
            killed: 0,
        }));
        seens.push((name, seen.clone()));
        frameworks.push(tokio::spawn(framework(
            urls.join(","),
            name,
            aware,
            seen,
            stop_rx.clone(),
        )));
    }

    // Faults, in turn (`STRATA_CHAOS_FAULTS` may name some of them).
    let kinds: Vec<usize> = match std::env::var("STRATA_CHAOS_FAULTS") {
        Ok(list) => list
            .split(',')
            .map(|k| {
                FAULTS
                    .iter()
                    .position(|f| *f == k.trim())
                    .with_context(|| format!("unknown fault {k:?}: use {}", FAULTS.join(", ")))
            })
            .collect::<Result<_>>()?,
        Err(_) => (0..FAULTS.len()).collect(),
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut faults: HashMap<&str, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut round = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(FAULT_EVERY).await;
        replicas.restart_exited()?;
        let kind = kinds[round % kinds.len()];
        round += 1;
        match kind {
            0 => {
                let Some(l) = leader(&urls).await else {
                    continue;
                };
                if let Some(pid) = replicas.pid(l) {
                    signal(pid, "-KILL").await?;
                    *faults.entry("kill -9 of the leader").or_default() += 1;
                }
            }
            1 => {
                let Some(l) = leader(&urls).await else {
                    continue;
                };
                if let Some(pid) = replicas.pid(l) {
                    // Cut off past its lease: another leads; woken, it must step down.
                    signal(pid, "-STOP").await?;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    signal(pid, "-CONT").await?;
                    *faults.entry("leader paused past its lease").or_default() += 1;
                }
            }
            2 => {
                let a = rng.next(AGENTS as u64) as usize;
                let agent_id = book.lock().expect("book")[a].2.clone();
                for (_, seen) in &seens {
                    seen.lock().expect("seen").history.partitioned(&agent_id);
                }
                agents[a].inject(Fault::Partition(RECONNECT_TIMEOUT + Duration::from_secs(2)));
                *faults.entry("agent partitioned").or_default() += 1;
            }
            3 => {
                let a = rng.next(AGENTS as u64) as usize;
                agents[a].inject(Fault::Crash(Duration::from_secs(1)));
                *faults.entry("agent crashed and restarted").or_default() += 1;
            }
            _ => {
                let m = rng.next(3) as usize;
                etcd.kill(m);
                tokio::time::sleep(Duration::from_secs(3)).await;
                etcd.restart(m)?;
                *faults.entry("etcd member lost").or_default() += 1;
            }
        }
    }
    // Quiet: no new tasks, every replica up; every task launched must end (they all end by
    // themselves within seconds).
    let _ = stop_tx.send(true);
    replicas.restart_exited()?;
    let settle = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas.restart_exited()?;
        let active: usize = seens
            .iter()
            .map(|(_, s)| s.lock().expect("seen").active.len())
            .sum();
        if active == 0 || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    for f in &frameworks {
        f.abort();
    }
    drop(agents);
    let mut failures = Vec::new();
    let injected: usize = faults.values().sum();
    for (name, seen) in &seens {
        let s = seen.lock().expect("seen");
        println!(
            "chaos: framework {name}: {} tasks launched, {} kill requests, {} updates checked, {} tasks never ended, {} violations",
            s.launched,
            s.killed,
            s.history.updates(),
            s.active.len(),
            s.history.violations().len()
        );
        for v in s.history.violations() {
            failures.push(format!("{name}: {v}"));
        }
        if !s.active.is_empty() {
            failures.push(format!(
                "{name}: tasks never ended after the faults stopped: {:?}",
                s.active.iter().take(10).collect::<Vec<_>>()
            ));
        }
    }
    println!("chaos: {seconds} s, faults injected {injected}: {faults:?}");
    if !failures.is_empty() {
        // The replicas' logs stay for whoever looks into it.
        let logs = dir.keep();
        bail!(
            "{} broken guarantees:\n{}\n(the replicas' logs are in {})",
            failures.len(),
            failures.join("\n"),
            logs.display()
        );
    }
    ensure!(injected >= 4, "only {injected} faults injected");
    Ok(())
}
