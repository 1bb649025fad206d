//! The fault-injection suite with real agents and real network cuts (issue 17): a network
//! lab (`strata_test_support::netns`) of a switch namespace holding a bridge and one
//! namespace per node, joined to it by veth pairs: three etcd members, three
//! `strata-allocator` replicas and three `strata-agent` processes (their tasks' cgroups below
//! the test's own), each in a namespace of its own. The two frameworks of `chaos.rs` (one
//! partition-aware, one not) run in this test process, in the switch namespace, launching
//! real tasks (`sleep S; exit C`) and killing some, while faults are injected in turn:
//!
//! - `kill -9` of the leader;
//! - the leader partitioned from etcd only (blackhole routes to the etcd members inside its
//!   namespace: agents and frameworks still reach it, so it must stop acting on its own);
//! - an agent partitioned (its link down past the reconnect timeout, then up again): its
//!   tasks UNREACHABLE to the partition-aware framework, LOST to the other, RUNNING again or
//!   ended when it heals;
//! - `kill -9` of an agent, started again 1 s later (recovery re-attaches its tasks);
//! - the loss of one etcd member (killed, started again 3 s later).
//!
//! Every update each framework receives goes through the history checker.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN, to create namespaces), `ip`, `nsenter` and
//! etcd; without the privileges it says so and passes. The test creates the lab, then runs
//! itself again inside the switch namespace (`STRATA_CHAOS_NETNS_LAB` tells that run where
//! it is); whatever happens there, the lab's drop kills every process in its namespaces
//! (agents, their tasks, replicas, etcd) and deletes them, and the agents' cgroups are
//! removed. Bounded in `cargo test` (`STRATA_CHAOS_SECONDS`, 40 s of faults by default;
//! `STRATA_CHAOS_FAULTS` picks some of [`FAULTS`]); `cargo xtask chaos --real --minutes N`
//! runs it longer, in release.

mod chaos_support;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use chaos_support::{
    FAULT_EVERY, RECONNECT_TIMEOUT, Replicas, Rng, all_ended, chosen_faults, frameworks, signal,
    verdict,
};
use strata_test_support::CGROUP_PLACEMENT;
use strata_test_support::cluster::bin;
use strata_test_support::etcd::EtcdCluster;
use strata_test_support::netns::Lab;
use strata_test_support::sim_agent::leader;
use tokio::process::Child;

const AGENTS: usize = 3;
/// The lab's nodes: etcd members, replicas, agents.
const NODES: [&str; 9] = ["e0", "e1", "e2", "r0", "r1", "r2", "a0", "a1", "a2"];
/// The faults, by the names `STRATA_CHAOS_FAULTS` takes, in the order they are injected.
const FAULTS: [&str; 5] = [
    "kill-leader",
    "partition-leader-from-etcd",
    "partition-agent",
    "crash-agent",
    "lose-etcd-member",
];
/// Set: fail instead of skipping without the privileges.
const REQUIRED_ENV: &str = "STRATA_CHAOS_NETNS_REQUIRED";
/// Set in the run inside the lab: the lab's prefix.
const LAB_ENV: &str = "STRATA_CHAOS_NETNS_LAB";
/// Set in the run inside the lab: the run's directory (work dirs and logs).
const DIR_ENV: &str = "STRATA_CHAOS_NETNS_DIR";
/// The gRPC port of every replica (each has an address of its own).
const GRPC_PORT: u16 = 5050;
/// How long a leader cut off from etcd may take to stop: its lease (2 s; a registry write
/// waiting on etcd is given up when the lease is no longer surely held), plus slack for a
/// loaded 2-core machine.
const STEP_DOWN_LIMIT: Duration = Duration::from_secs(8);

#[test]
fn chaos_netns_root() -> Result<()> {
    if let Ok(prefix) = std::env::var(LAB_ENV) {
        let dir = PathBuf::from(std::env::var(DIR_ENV).context("no run directory")?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()?;
        return runtime.block_on(inside(&prefix, &dir));
    }
    if let Some(why) = Lab::unavailable() {
        // `cargo xtask chaos --real` asks for it: a long run that skipped would prove nothing.
        ensure!(
            std::env::var_os(REQUIRED_ENV).is_none(),
            "chaos_netns_root cannot run: {why}"
        );
        eprintln!("skipped chaos_netns_root: {why}");
        return Ok(());
    }
    let seconds = chaos_support::seconds(40);
    let dir = tempfile::tempdir()?;
    let prefix = format!("stc{}", std::process::id());
    let lab = Lab::create(&prefix, &NODES)?;
    let _cgroups = AgentCgroups {
        lab: &lab,
        dir: dir.path().to_owned(),
    };
    let log = dir.path().join("inside.log");
    let mut child = lab_switch_command(&lab)?
        .args([
            "chaos_netns_root",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LAB_ENV, &prefix)
        .env(DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.path().join("inside.err"))?)
        .spawn()
        .context("cannot run the suite inside the lab")?;
    // The faults, up to 30 s of settling, and the start: bounded.
    let limit = Duration::from_secs(seconds + 180);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let summary: Vec<&str> = out
        .lines()
        .filter_map(|l| l.find("chaos-netns:").map(|at| &l[at..]))
        .collect();
    println!("{}", summary.join("\n"));
    let ok = status.is_some_and(|s| s.success());
    if !ok {
        let err = std::fs::read_to_string(dir.path().join("inside.err")).unwrap_or_default();
        let tail: String = err
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        drop(_cgroups);
        drop(lab);
        let kept = dir.keep();
        match status {
            None => bail!(
                "the suite inside the lab ran past {limit:?}; logs in {}\n{tail}",
                kept.display()
            ),
            Some(status) => bail!(
                "the suite inside the lab failed ({status}); logs in {}\n{out}\n{tail}",
                kept.display()
            ),
        }
    }
    Ok(())
}

/// This test executable, run in the lab's switch namespace.
fn lab_switch_command(lab: &Lab) -> Result<std::process::Command> {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", lab.switch_path().display()))
        .arg("--")
        .arg(std::env::current_exe()?);
    Ok(cmd)
}

/// Removes the agents' cgroups on drop, after killing everything in the lab (tasks
/// included: they run in their agent's namespace).
struct AgentCgroups<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl Drop for AgentCgroups<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.lab.kill_all() {
            eprintln!("chaos_netns_root: {e:#}");
        }
        for i in 0..AGENTS {
            let _ = std::process::Command::new(bin("strata-agent"))
                .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
                .args(["--allocator", "http://127.0.0.1:1", "--work-dir"])
                .arg(agent_dir(&self.dir, i))
                .arg("--remove-cgroups")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn agent_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("agent-{i}"))
}

/// The `strata-agent` processes, each in its node.
struct Agents<'a> {
    lab: &'a Lab,
    allocators: String,
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Agents<'_> {
    fn start(&mut self, i: usize) -> Result<()> {
        let node = format!("a{i}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("agent-{i}.log")))?;
        let child = self
            .lab
            .tokio_command(&node, bin("strata-agent"))?
            .env(CGROUP_PLACEMENT.0, CGROUP_PLACEMENT.1)
            .env("RUST_LOG", "info")
            .args(["--allocator", &self.allocators, "--work-dir"])
            .arg(agent_dir(&self.dir, i))
            .args(["--hostname", &node, "--cpus", "4", "--mem", "4096"])
            .args(["--status-update-retry", "1s"])
            .args(["--default-kill-grace-period", "2s"])
            .args(["--reconnect-backoff-max", "1s"])
            .args(["--http-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start strata-agent")?;
        self.children[i] = Some(child);
        Ok(())
    }

    async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.children[i].take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// The agent's id, once it registered.
    fn id(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(agent_dir(&self.dir, i).join("agent_id"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
}

/// The suite, in the lab's switch namespace.
async fn inside(prefix: &str, dir: &Path) -> Result<()> {
    let seconds = chaos_support::seconds(40);
    let lab = Lab::attach(prefix, &NODES)?;
    let etcd_nodes = [lab.node("e0")?, lab.node("e1")?, lab.node("e2")?];
    let etcd_ips: Vec<Ipv4Addr> = etcd_nodes.iter().map(|n| n.ip).collect();
    let mut etcd = EtcdCluster::start_in_lab(&etcd_nodes)?;
    let mut replicas = Replicas {
        etcd: etcd.urls(),
        listen: Vec::new(),
        netns: Vec::new(),
        children: Vec::new(),
        dir: dir.to_owned(),
    };
    for r in ["r0", "r1", "r2"] {
        let node = lab.node(r)?;
        replicas.listen.push(format!("{}:{GRPC_PORT}", node.ip));
        replicas.netns.push(Some(node.netns_path()));
        replicas.children.push(None);
    }
    for i in 0..3 {
        replicas.start(i)?;
    }
    let urls = replicas.urls();
    replicas.wait_for_leader().await?;
    let mut agents = Agents {
        lab: &lab,
        allocators: urls.join(","),
        dir: dir.to_owned(),
        children: (0..AGENTS).map(|_| None).collect(),
    };
    for i in 0..AGENTS {
        agents.start(i)?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (handles, seens) = frameworks(&urls, &stop_rx);

    let kinds = chosen_faults(&FAULTS)?;
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut faults: HashMap<&str, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut round = 0usize;
    // How long each leader cut off from etcd took to stop.
    let mut step_downs: Vec<Duration> = Vec::new();
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
                let node = format!("r{l}");
                // Agents and frameworks still reach it; etcd does not. It must stop leading
                // on its own, and another replica lead.
                lab.blackhole(&node, &etcd_ips)?;
                let cut = Instant::now();
                let mut stepped_down = false;
                while !stepped_down && cut.elapsed() < STEP_DOWN_LIMIT {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    stepped_down = match replicas.children[l].as_mut() {
                        Some(child) => child.try_wait()?.is_some(),
                        None => true,
                    };
                }
                let took = cut.elapsed();
                lab.unblackhole(&node, &etcd_ips)?;
                ensure!(
                    stepped_down,
                    "replica {l}, cut off from etcd for {STEP_DOWN_LIMIT:?}, still runs: it \
                     should have stopped leading (logs in {})",
                    dir.display()
                );
                step_downs.push(took);
                *faults.entry("leader partitioned from etcd").or_default() += 1;
            }
            2 => {
                let a = rng.next(AGENTS as u64) as usize;
                let Some(agent_id) = agents.id(a) else {
                    continue;
                };
                for (_, seen) in &seens {
                    seen.lock().expect("seen").history.partitioned(&agent_id);
                }
                let node = format!("a{a}");
                lab.cut(&node)?;
                tokio::time::sleep(RECONNECT_TIMEOUT + Duration::from_secs(2)).await;
                lab.heal(&node)?;
                *faults.entry("agent partitioned").or_default() += 1;
            }
            3 => {
                let a = rng.next(AGENTS as u64) as usize;
                // A real agent takes seconds to start again (its eBPF programs, its
                // recovery): past the reconnect timeout, the allocator sees what it sees of a
                // partition, and so do the frameworks.
                if let Some(agent_id) = agents.id(a) {
                    for (_, seen) in &seens {
                        seen.lock().expect("seen").history.partitioned(&agent_id);
                    }
                }
                agents.kill(a).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                agents.start(a)?;
                *faults.entry("agent killed -9 and restarted").or_default() += 1;
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
    // Quiet: no new tasks, every replica up; every task launched must end (they end by
    // themselves within 6 s).
    let _ = stop_tx.send(true);
    replicas.restart_exited()?;
    let settle = Instant::now();
    while !all_ended(&seens) && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas.restart_exited()?;
    }
    for f in &handles {
        f.abort();
    }
    if let Some(worst) = step_downs.iter().max() {
        println!(
            "chaos-netns: leaders cut off from etcd stopped within {worst:?} (worst of {})",
            step_downs.len()
        );
    }
    verdict("chaos-netns", seconds, &seens, &faults, 4, dir)
}
