//! What the fault-injection suites (`chaos.rs`: simulated agents on loopback;
//! `chaos_netns.rs`: real agents in network namespaces) share: the allocator replicas as
//! processes, the frameworks keeping tasks going and killing some, and the final check of
//! every framework's history.

#![allow(dead_code, reason = "each suite uses part of it")]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_framework::{Event, FrameworkBuilder, ResourceBudget, task};
use strata_test_support::history::History;
use strata_test_support::net::free_port;
use strata_test_support::sim_agent::{LABEL_EXIT, LABEL_SECONDS, leader};
use tokio::process::{Child, Command};

/// Tasks each framework keeps going.
pub const TASKS: usize = 8;
pub const TTL: &str = "2s";
/// How long an agent may be unheard of before its tasks are UNREACHABLE or LOST.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time between faults.
pub const FAULT_EVERY: Duration = Duration::from_secs(5);

/// A tiny deterministic generator (xorshift), so a failing run can be told apart by its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// The allocator replicas, as processes: on loopback, or each in a lab node's namespace.
pub struct Replicas {
    pub etcd: String,
    /// Each replica's `--listen` address, `HOST:PORT`.
    pub listen: Vec<String>,
    /// The namespace each runs in (`nsenter --net=`), when in a lab.
    pub netns: Vec<Option<PathBuf>>,
    pub children: Vec<Option<Child>>,
    pub dir: PathBuf,
}

impl Replicas {
    /// `n` replicas on free loopback ports.
    pub fn on_loopback(etcd: String, n: usize, dir: &Path) -> Self {
        Self {
            etcd,
            listen: (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
            netns: vec![None; n],
            children: (0..n).map(|_| None).collect(),
            dir: dir.to_owned(),
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.listen.iter().map(|a| format!("http://{a}")).collect()
    }

    pub fn start(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{i}.log")))?;
        let bin = env!("CARGO_BIN_EXE_strata-allocator");
        let mut cmd = match &self.netns[i] {
            Some(netns) => {
                let mut cmd = Command::new("nsenter");
                // On the lab's own addresses, which nothing outside the lab reaches.
                cmd.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(bin)
                    .arg("--insecure");
                cmd
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["--listen", &self.listen[i]])
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
    pub fn restart_exited(&mut self) -> Result<()> {
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

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().and_then(Child::id)
    }

    /// Waits (up to 30 s) until one replica leads.
    pub async fn wait_for_leader(&self) -> Result<()> {
        let urls = self.urls();
        let started = Instant::now();
        while leader(&urls).await.is_none() {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no replica leads within 30 s (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

pub async fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// What one framework saw.
pub struct Seen {
    pub history: History,
    /// Tasks launched and not yet seen terminal.
    pub active: BTreeSet<String>,
    pub launched: usize,
    pub killed: usize,
    /// Updates received, by state.
    pub states: std::collections::BTreeMap<&'static str, usize>,
}

/// Runs a framework that keeps [`TASKS`] tasks going until `stop`, killing one now and then.
pub async fn framework(
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
                                        // Simulated agents read the labels; real ones
                                        // run the script.
                                        .shell(format!("sleep {seconds}; exit {exit}"))
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
                        *s.states.entry(state.label()).or_default() += 1;
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

/// A framework's name and what it saw.
pub type Named = (&'static str, Arc<Mutex<Seen>>);

/// The two frameworks (one partition-aware, one not) on `urls`, and what each sees.
pub fn frameworks(
    urls: &[String],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (Vec<tokio::task::JoinHandle<Result<()>>>, Vec<Named>) {
    let mut handles = Vec::new();
    let mut seens = Vec::new();
    for (name, aware) in [("aware", true), ("plain", false)] {
        let seen = Arc::new(Mutex::new(Seen {
            history: History::new(aware),
            active: BTreeSet::new(),
            launched: 0,
            killed: 0,
            states: std::collections::BTreeMap::new(),
        }));
        seens.push((name, seen.clone()));
        handles.push(tokio::spawn(framework(
            urls.join(","),
            name,
            aware,
            seen,
            stop.clone(),
        )));
    }
    (handles, seens)
}

/// Which faults of `all` to inject, from `STRATA_CHAOS_FAULTS` (all by default).
pub fn chosen_faults(all: &[&str]) -> Result<Vec<usize>> {
    match std::env::var("STRATA_CHAOS_FAULTS") {
        Ok(list) => list
            .split(',')
            .map(|k| {
                all.iter()
                    .position(|f| *f == k.trim())
                    .with_context(|| format!("unknown fault {k:?}: use {}", all.join(", ")))
            })
            .collect(),
        Err(_) => Ok((0..all.len()).collect()),
    }
}

/// `STRATA_CHAOS_SECONDS`, else `default`.
pub fn seconds(default: u64) -> u64 {
    std::env::var("STRATA_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Whether every framework saw its tasks end.
pub fn all_ended(seens: &[Named]) -> bool {
    seens
        .iter()
        .all(|(_, s)| s.lock().expect("seen").active.is_empty())
}

/// Prints each framework's counts and the faults, and fails on any violation, any task that
/// never ended, or fewer than `min_faults` faults.
pub fn verdict(
    suite: &str,
    seconds: u64,
    seens: &[Named],
    faults: &HashMap<&str, usize>,
    min_faults: usize,
    logs: &Path,
) -> Result<()> {
    let mut failures = Vec::new();
    let injected: usize = faults.values().sum();
    let mut updates = 0;
    for (name, seen) in seens {
        let s = seen.lock().expect("seen");
        updates += s.history.updates();
        println!(
            "{suite}: framework {name}: {} tasks launched, {} kill requests, {} updates checked, {} tasks never ended, {} ended without an exit (lost by their agent), {} violations; updates by state {:?}",
            s.launched,
            s.killed,
            s.history.updates(),
            s.active.len(),
            s.history.ended_without_exit(),
            s.history.violations().len(),
            s.states
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
    println!(
        "{suite}: {seconds} s, {updates} updates checked, faults injected {injected}: {faults:?}, violations {}",
        failures.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} broken guarantees:\n{}\n(the logs are in {})",
            failures.len(),
            failures.join("\n"),
            logs.display()
        );
    }
    ensure!(injected >= min_faults, "only {injected} faults injected");
    Ok(())
}
