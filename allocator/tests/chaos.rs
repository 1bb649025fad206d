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

mod chaos_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use chaos_support::{
    FAULT_EVERY, RECONNECT_TIMEOUT, Replicas, Rng, all_ended, chosen_faults, frameworks, signal,
    verdict,
};
use strata_test_support::etcd::EtcdCluster;
use strata_test_support::sim_agent::{Fault, Registrations, SimAgent, leader};

const AGENTS: usize = 4;
/// The faults, by the names `STRATA_CHAOS_FAULTS` takes, in the order they are injected.
const FAULTS: [&str; 5] = [
    "kill-leader",
    "pause-leader",
    "partition-agent",
    "crash-agent",
    "lose-etcd-member",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_no_update_breaks_a_guarantee() -> Result<()> {
    let seconds = chaos_support::seconds(30);
    let mut etcd = EtcdCluster::start(3)?;
    let dir = tempfile::tempdir()?;
    let mut replicas = Replicas::on_loopback(etcd.urls(), 3, dir.path());
    for i in 0..3 {
        replicas.start(i)?;
    }
    let urls = replicas.urls();
    replicas.wait_for_leader().await?;
    let book: Registrations =
        Arc::new(Mutex::new(vec![(0, Instant::now(), String::new()); AGENTS]));
    let shared_urls = Arc::new(urls.clone());
    let agents: Vec<SimAgent> = (0..AGENTS)
        .map(|i| SimAgent::spawn(i, shared_urls.clone(), 4.0, 4096.0, book.clone()))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (handles, seens) = frameworks(&urls, &stop_rx);

    // Faults, in turn (`STRATA_CHAOS_FAULTS` may name some of them).
    let kinds = chosen_faults(&FAULTS)?;
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
    while !all_ended(&seens) && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas.restart_exited()?;
    }
    for f in &handles {
        f.abort();
    }
    drop(agents);
    let result = verdict("chaos", seconds, &seens, &faults, 4, dir.path());
    if result.is_err() {
        // The replicas' logs stay for whoever looks into it.
        let _ = dir.keep();
    }
    result
}
