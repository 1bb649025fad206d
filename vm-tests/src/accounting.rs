//! Accounting scenarios: each figure of the agent's usage records ([`strata_agent::usage`]) is
//! compared with an independent measure of a task run by a real [`LinuxContainerizer`], with
//! the agent's eBPF programs attached at the test's cgroup root. They run on the host
//! (`tests/host_isolation.rs`, hybrid cgroups on the development machines) and in the qemu
//! guest (`tests/guest.rs`, pure cgroup v2).
//!
//! - CPU: a task burns 2 s of CPU by its own `getrusage`; the cgroup's user + system and the
//!   eBPF on-CPU time must be within 1% of it.
//! - Network: a task sends 4 MiB over TCP to a listener of the test; the eBPF tx bytes are whole
//!   IP packets, so they must be the payload plus 40 to 60 bytes of IPv4 + TCP headers per
//!   packet (20 + 20, plus 12 of timestamps on Linux's data segments and ACKs, 20 of options on
//!   a SYN), and within 1% of the payload plus 52 bytes per packet. A segment TCP sends again
//!   (a retransmission, seen under the guest's slow emulation) is sent and counted twice, so
//!   the bytes of the retransmitted segments (at most 64 KiB each on loopback, counted by the
//!   network namespace's `RetransSegs`) are allowed on top.
//! - Memory: a task allocates and touches 64 MiB; the cgroup's anonymous memory must hold
//!   them, be within 1 MiB (or 1%) of the process's own `RssAnon`, and `memory.current` at
//!   least that.
//! - /metrics: the agent's HTTP router serves the records of a spinning task and its CPU
//!   seconds move from one scrape to the next.
//!
//! [`LinuxContainerizer`]: strata_agent::containerizer::linux::LinuxContainerizer

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use strata_agent::containerizer::Container;
use strata_agent::ebpf::Ebpf;
use strata_agent::usage::{Collector, LatestUsage, Layout, TaskRef};
use strata_proto::TaskUsage;

use crate::isolation::{Env, FRAMEWORK, Task};

/// How long a task may take to report it is ready.
const READY: Duration = Duration::from_secs(90);
/// How long a holding task sleeps (it is killed once read).
const HOLD_SECS: &str = "120";

/// An [`Env`] with the agent's eBPF programs attached at its unified cgroup root and a usage
/// collector for its tasks.
pub(crate) struct Accounting {
    pub(crate) env: Env,
    collector: Collector,
    ebpf: Ebpf,
}

impl Accounting {
    fn new(name: &str, helper: &Path) -> Result<Self> {
        Self::of(Env::new(name, helper)?)
    }

    /// With the collector and the agent's eBPF programs over `env`'s tasks.
    pub(crate) fn of(env: Env) -> Result<Self> {
        let layout = Layout::of_backend(
            env.containerizer.cgroups().as_ref(),
            Path::new("/sys/fs/cgroup"),
        )
        .context("the test's cgroups have no layout the collector knows")?;
        let unified: PathBuf = match &layout {
            Layout::V2 { root } => root.clone(),
            Layout::Hybrid(h) => h
                .unified
                .clone()
                .context("this hybrid host has no unified cgroup hierarchy for eBPF")?,
        };
        let ebpf = Ebpf::load(&unified).with_context(|| {
            format!("loading the agent's eBPF programs at {}", unified.display())
        })?;
        Ok(Self {
            env,
            collector: Collector::new(layout),
            ebpf,
        })
    }

    /// The task's record now.
    pub(crate) fn record(&mut self, task_id: &str) -> Result<TaskUsage> {
        let task = TaskRef {
            framework_id: FRAMEWORK.to_owned(),
            task_id: task_id.to_owned(),
            role: "*".to_owned(),
            request_cores: 0.0,
            gpus: Vec::new(),
        };
        let collected =
            self.collector
                .collect(&Arc::new(vec![task]), Some(&self.ebpf), "agent-test");
        collected
            .report
            .current()
            .pop()
            .with_context(|| format!("no usage record for task {task_id}: is its cgroup gone?"))
    }

    /// Waits until the task's stdout has a `key=` line; its value.
    pub(crate) fn wait_for(&self, task_id: &str, key: &str) -> Result<u64> {
        let deadline = Instant::now() + READY;
        let prefix = format!("{key}=");
        loop {
            let out = self.env.stdout(task_id);
            if let Some(value) = out.lines().find_map(|l| l.strip_prefix(&prefix)) {
                return value
                    .trim()
                    .parse()
                    .with_context(|| format!("{key}={value} is not a number"));
            }
            ensure!(
                Instant::now() < deadline,
                "task {task_id} printed no {key} within {READY:?}; stdout: {out:?}; stderr: {:?}",
                std::fs::read_to_string(self.env.sandbox(task_id).join("stderr"))
                    .unwrap_or_default()
            );
            self.env.sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn end(&self, task: &dyn Container) -> Result<()> {
        self.env.kill(task, Duration::ZERO)?;
        Ok(())
    }
}

fn percent_apart(a: f64, b: f64) -> f64 {
    (a - b).abs() / b * 100.0
}

/// A task burns 2 s of CPU (by its own rusage): user + system and on-CPU within 1%.
pub fn cpu_seconds_match_the_task_rusage(helper: &Path) -> Result<()> {
    let mut acc = Accounting::new("acct-cpu", helper)?;
    let task = acc.env.launch(
        &Task::helper(&acc.env, "burner", &["burn-hold", "2000", HOLD_SECS])
            .cpu_limit(1.0)
            .mem(64.0),
    )?;
    let rusage_ns = acc.wait_for("burner", "rusage_ns")?;
    // Sleeping now: its last stretch on the CPU has been switched out and counted.
    acc.env.sleep(Duration::from_millis(100));
    let record = acc.record("burner")?;
    acc.end(task.as_ref())?;
    let cpu = record.cpu.context("no cpu figures")?;
    let rusage = rusage_ns as f64 / 1e9;
    let cgroup = cpu.user_seconds_total + cpu.system_seconds_total;
    let oncpu = cpu.oncpu_seconds_total.context("no eBPF on-CPU figure")?;
    eprintln!(
        "cpu: the task's rusage {rusage:.6} s; cgroup user {:.6} + system {:.6} = {cgroup:.6} s \
         ({:.3}% apart); eBPF on-CPU {oncpu:.6} s ({:.3}% apart)",
        cpu.user_seconds_total,
        cpu.system_seconds_total,
        percent_apart(cgroup, rusage),
        percent_apart(oncpu, rusage)
    );
    ensure!(
        percent_apart(cgroup, rusage) <= 1.0,
        "cgroup user + system {cgroup} s is more than 1% away from the task's rusage {rusage} s"
    );
    ensure!(
        percent_apart(oncpu, rusage) <= 1.0,
        "eBPF on-CPU {oncpu} s is more than 1% away from the task's rusage {rusage} s"
    );
    Ok(())
}

/// The network namespace's count of retransmitted TCP segments (`Tcp: RetransSegs` in
/// /proc/net/snmp).
pub fn tcp_retransmitted_segments() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("no Tcp: header")?,
        tcp.next().context("no Tcp: values")?,
    );
    let index = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .context("no RetransSegs")?;
    values
        .split_whitespace()
        .nth(index)
        .context("no RetransSegs value")?
        .parse()
        .context("RetransSegs is not a number")
}

/// The largest TCP segment on loopback (its MTU is 64 KiB).
pub const LOOPBACK_SEGMENT: u64 = 64 << 10;

/// A task sends 4 MiB over TCP: tx bytes are the payload plus the IP and TCP headers.
pub fn network_bytes_match_the_payload(helper: &Path) -> Result<()> {
    const PAYLOAD: u64 = 4 << 20;
    let mut acc = Accounting::new("acct-net", helper)?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a listener")?;
    let addr = listener.local_addr()?.to_string();
    let retransmitted_before = tcp_retransmitted_segments()?;
    let receiver = thread::spawn(move || -> Result<u64> {
        let (mut stream, _) = listener
            .accept()
            .context("accepting the task's connection")?;
        stream.set_read_timeout(Some(READY))?;
        let mut received = Vec::new();
        stream
            .read_to_end(&mut received)
            .context("reading the task's bytes")?;
        Ok(received.len() as u64)
    });
    let task = acc.env.launch(
        &Task::helper(
            &acc.env,
            "sender",
            &["tcp-send-hold", &addr, &PAYLOAD.to_string(), HOLD_SECS],
        )
        .cpu_limit(1.0)
        .mem(64.0),
    )?;
    let sent = acc.wait_for("sender", "sent_bytes")?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    // The last ACKs and FINs are on their way.
    acc.env.sleep(Duration::from_millis(200));
    let record = acc.record("sender")?;
    acc.end(task.as_ref())?;
    let retransmitted = tcp_retransmitted_segments()? - retransmitted_before;
    let net = record.network.context("no network figures")?;
    let headers = net.tx_bytes_total.saturating_sub(PAYLOAD);
    let expected = PAYLOAD + 52 * net.tx_packets_total;
    eprintln!(
        "network: payload {PAYLOAD} B (sent {sent}, received {received}); eBPF tx {} B in {} \
         packets ({headers} B over the payload, {:.1} per packet; {:.4}% from payload + 52 B per \
         packet); rx {} B in {} packets; {retransmitted} segments retransmitted",
        net.tx_bytes_total,
        net.tx_packets_total,
        headers as f64 / net.tx_packets_total.max(1) as f64,
        percent_apart(net.tx_bytes_total as f64, expected as f64),
        net.rx_bytes_total,
        net.rx_packets_total
    );
    ensure!(
        sent == PAYLOAD && received == PAYLOAD,
        "sent {sent}, received {received}"
    );
    ensure!(
        net.tx_bytes_total >= PAYLOAD,
        "tx bytes {} are fewer than the payload {PAYLOAD}",
        net.tx_bytes_total
    );
    let resent = retransmitted * LOOPBACK_SEGMENT;
    ensure!(
        (40 * net.tx_packets_total..=60 * net.tx_packets_total + resent).contains(&headers),
        "{headers} bytes over the payload in {} packets ({retransmitted} retransmitted): not 40 \
         to 60 bytes of headers each",
        net.tx_packets_total
    );
    let slack = PAYLOAD / 100;
    ensure!(
        net.tx_bytes_total + slack >= expected && net.tx_bytes_total <= expected + slack + resent,
        "tx bytes {} are more than 1% of the payload away from payload + 52 B per packet \
         ({expected}, plus up to {resent} B for {retransmitted} retransmitted segments)",
        net.tx_bytes_total
    );
    ensure!(
        net.rx_packets_total > 0 && net.rx_bytes_total >= 40 * net.rx_packets_total,
        "the task's received ACKs were not counted: {net:?}"
    );
    Ok(())
}

/// `RssAnon` of a process, in bytes.
fn rss_anon(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .context("no RssAnon line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// A task allocates and touches 64 MiB: its anonymous memory holds them.
pub fn memory_matches_what_the_task_allocated(helper: &Path) -> Result<()> {
    const MIB: u64 = 1 << 20;
    let mut acc = Accounting::new("acct-mem", helper)?;
    let task = acc.env.launch(
        &Task::helper(&acc.env, "allocator", &["alloc-hold", "64", HOLD_SECS])
            .cpu_limit(1.0)
            .mem(256.0),
    )?;
    acc.wait_for("allocator", "allocated_mib")?;
    let pid = task.pid().context("the task has no pid")?;
    let rss = rss_anon(pid)?;
    let record = acc.record("allocator")?;
    acc.end(task.as_ref())?;
    let m = record.memory.context("no memory figures")?;
    eprintln!(
        "memory: allocated 64 MiB; process RssAnon {:.2} MiB; cgroup anon {:.2} MiB, current \
         {:.2} MiB, peak {:.2} MiB, file {:.2} MiB, kernel {:.2} MiB, limit {:.0} MiB",
        rss as f64 / MIB as f64,
        m.anon_bytes as f64 / MIB as f64,
        m.current_bytes as f64 / MIB as f64,
        m.peak_bytes as f64 / MIB as f64,
        m.file_bytes as f64 / MIB as f64,
        m.kernel_bytes as f64 / MIB as f64,
        m.limit_bytes as f64 / MIB as f64,
    );
    ensure!(
        m.anon_bytes >= 64 * MIB && m.anon_bytes <= 72 * MIB,
        "anon {} B does not hold the 64 MiB allocated (and little more)",
        m.anon_bytes
    );
    ensure!(
        m.anon_bytes.abs_diff(rss) <= (rss / 100).max(MIB),
        "anon {} B is more than 1 MiB (or 1%) away from the process's RssAnon {rss} B",
        m.anon_bytes
    );
    ensure!(m.current_bytes >= m.anon_bytes && m.peak_bytes >= m.current_bytes);
    ensure!(m.limit_bytes == 256 * MIB, "limit {}", m.limit_bytes);
    Ok(())
}

/// How long one scrape of the agent's `/metrics` may take.
const SCRAPE_LIMIT: Duration = Duration::from_secs(30);

/// `GET path` on `addr`: the body of a 200 answer.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let response = strata_common::http::get(&format!("http://{addr}{path}"), SCRAPE_LIMIT).await?;
    ensure!(
        response.status == 200,
        "GET {path}: status {}: {}",
        response.status,
        response.text()
    );
    Ok(response.text())
}

/// A spinning task's CPU seconds on /metrics move from one scrape to the next.
pub fn metrics_show_the_values_move(helper: &Path) -> Result<()> {
    let mut acc = Accounting::new("acct-metrics", helper)?;
    let task = acc
        .env
        .launch(&Task::helper(&acc.env, "spinner", &["spin", "30000"]).cpu_limit(0.5))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let latest = LatestUsage::default();
    let router = strata_agent::http::router(strata_agent::http::HttpState {
        gpus: Default::default(),
        usage: latest.clone(),
        proc_root: PathBuf::from("/proc"),
        profiles: strata_agent::http::ProfileSlots::new(
            strata_agent::http::DEFAULT_MAX_CONCURRENT_PROFILES,
        ),
        // No sandboxes served here: only /metrics is scraped.
        files: strata_agent::files::FilesState {
            work_dir: PathBuf::from("/nonexistent"),
            running: tokio::sync::watch::channel(Arc::new(Vec::new())).1,
            follows: strata_agent::files::FollowSlots::new(
                strata_agent::files::DEFAULT_MAX_CONCURRENT_FOLLOWS,
            ),
        },
    });
    let (listener, addr) = rt.block_on(strata_agent::http::bind(([127, 0, 0, 1], 0).into()))?;
    let server = rt.spawn(strata_agent::http::serve(listener, router));
    let scrape = |acc: &mut Accounting| -> Result<(f64, f64)> {
        latest.set_records(vec![acc.record("spinner")?]);
        let page = rt.block_on(http_get(addr, "/metrics"))?;
        let value = |name: &str| {
            strata_agent::http::metric_value(&page, name, "spinner")
                .with_context(|| format!("no {name} for the spinner in {page}"))
        };
        Ok((
            value("strata_task_cpu_user_seconds_total")?
                + value("strata_task_cpu_system_seconds_total")?,
            value("strata_task_memory_current_bytes")?,
        ))
    };
    acc.env.sleep(Duration::from_millis(300));
    let (cpu0, mem0) = scrape(&mut acc)?;
    acc.env.sleep(Duration::from_secs(1));
    let (cpu1, mem1) = scrape(&mut acc)?;
    server.abort();
    acc.end(task.as_ref())?;
    eprintln!(
        "/metrics: cpu {cpu0:.3} s, then {cpu1:.3} s a second later; memory {mem0} B, {mem1} B"
    );
    ensure!(
        cpu1 - cpu0 >= 0.2,
        "the spinner's CPU seconds on /metrics did not move: {cpu0} then {cpu1}"
    );
    ensure!(mem1 > 0.0, "no memory on /metrics");
    Ok(())
}
