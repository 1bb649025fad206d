//! Egress limit scenarios (the agent's EDT program and fq on a device, through the
//! `LinuxContainerizer`): guest only (`tests/guest.rs`). Each creates a veth pair, `edt0` in the
//! guest's network namespace (the agent's egress device) and `edt1` in a namespace of its own
//! (the "outside": receivers listen there), and removes both when it ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_agent::containerizer::ExitStatus;

use crate::isolation::{Env, Task};

/// The agent's egress device in these scenarios.
pub const DEVICE: &str = "edt0";
/// The address of the receivers, in the other namespace.
pub const PEER_ADDR: &str = "10.77.0.2";

fn sh(script: &str) -> Result<()> {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .with_context(|| format!("running {script:?}"))?;
    ensure!(
        out.status.success(),
        "{script:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The name of the device whose index is `index`.
fn device_by_index(index: &str) -> Result<String> {
    for entry in fs::read_dir("/sys/class/net").context("reading /sys/class/net")? {
        let entry = entry.context("reading /sys/class/net")?;
        let idx = fs::read_to_string(entry.path().join("ifindex")).unwrap_or_default();
        if idx.trim() == index {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no device has index {index}")
}

/// A veth pair: [`DEVICE`] (10.77.0.1/24) here, `edt1` ([`PEER_ADDR`]/24) in a network namespace
/// held by a sleeping process.
#[derive(Debug)]
pub struct Link {
    holder: Child,
}

impl Link {
    /// Creates the pair and the namespace.
    pub fn create() -> Result<Self> {
        let _ = sh(&format!("ip link del {DEVICE} 2>/dev/null"));
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .spawn()
            .context("starting the namespace's holder (unshare -n sleep)")?;
        let link = Self { holder };
        // Let unshare enter its namespace before the peer moves there.
        thread_sleep(Duration::from_millis(200));
        // busybox's ip names the peer itself (vethN): find it by the pair's link index.
        sh(&format!("ip link add name {DEVICE} type veth peer edt1"))?;
        let peer_index = fs::read_to_string(format!("/sys/class/net/{DEVICE}/iflink"))
            .context("reading the veth's peer index")?;
        let peer = device_by_index(peer_index.trim())?;
        let pid = link.holder.id();
        sh(&format!(
            "ip link set {peer} name edt1 && ip link set edt1 netns {pid} && \
             ip addr add 10.77.0.1/24 dev {DEVICE} && ip link set {DEVICE} up"
        ))?;
        sh(&format!(
            "nsenter -t {pid} -n sh -c 'ip addr add {PEER_ADDR}/24 dev edt1 && ip link set edt1 up && ip link set lo up'"
        ))?;
        Ok(link)
    }

    /// Runs the helper in the other namespace, its output in `out`.
    pub fn spawn_in_peer(&self, helper: &Path, args: &[&str], out: &Path) -> Result<Child> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let child = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-n")
            .arg(helper)
            .arg("-")
            .args(args)
            .stdout(Stdio::from(file))
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the helper in the peer namespace")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(out)
            .unwrap_or_default()
            .contains("listening=1")
        {
            if Instant::now() > deadline {
                bail!("the receiver {args:?} did not start listening");
            }
            thread_sleep(Duration::from_millis(20));
        }
        Ok(child)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = sh(&format!("ip link del {DEVICE} 2>/dev/null"));
    }
}

fn thread_sleep(d: Duration) {
    std::thread::sleep(d);
}

/// A receiver in the peer namespace.
#[derive(Debug)]
pub struct Sink {
    child: Child,
    out: PathBuf,
}

impl Sink {
    /// `tcp-sink PORT` in the peer namespace.
    pub fn start(link: &Link, helper: &Path, port: u16, dir: &Path) -> Result<Self> {
        let out = dir.join(format!("sink-{port}.out"));
        let child = link.spawn_in_peer(helper, &["tcp-sink", &port.to_string()], &out)?;
        Ok(Self { child, out })
    }

    /// Waits (at most 30 s) for the connection to end; the rate it measured, Mbit/s.
    pub fn mbps(self) -> Result<f64> {
        self.rate("mbps=")
    }

    /// Waits (at most 30 s) for the connection to end; its rate from 0.5 s after its first byte
    /// to 0.5 s before its end, Mbit/s.
    pub fn steady_mbps(self) -> Result<f64> {
        self.rate("steady_mbps=")
    }

    /// Waits (at most 30 s) for the connection to end; the rate of its last 2 s, Mbit/s.
    pub fn tail_mbps(self) -> Result<f64> {
        self.rate("tail_mbps=")
    }

    /// Waits (at most 30 s) for the connection to end; its rate between the CLOCK_MONOTONIC
    /// instants `from_ns` and `to_ns` (see [`crate::monotonic_ns`]), Mbit/s, from the first
    /// sample at or after `from_ns` to the last at or before `to_ns`. Fails when the data ended
    /// before `to_ns` (the window was not all measured).
    pub fn mbps_between(mut self, from_ns: u64, to_ns: u64) -> Result<f64> {
        let result = self.rate_inner("bytes=").and_then(|_| {
            let out = fs::read_to_string(&self.out).context("reading the sink's output")?;
            let samples = out
                .lines()
                .find_map(|l| l.strip_prefix("samples="))
                .with_context(|| format!("no samples= in the sink's output {out:?}"))?
                .split(',')
                .map(|s| {
                    let (t, b) = s.split_once(':').context("a sample is not ns:bytes")?;
                    Ok((t.parse::<u64>()?, b.parse::<u64>()?))
                })
                .collect::<Result<Vec<(u64, u64)>>>()?;
            window_mbps(&samples, from_ns, to_ns)
        });
        self.print_series();
        result
    }

    fn rate(mut self, key: &str) -> Result<f64> {
        let result = self.rate_inner(key);
        self.print_series();
        result
    }

    /// Prints the receiver's rate per half second, when it wrote one (for the test's log).
    fn print_series(&self) {
        let out = fs::read_to_string(&self.out).unwrap_or_default();
        if let Some(series) = out.lines().find_map(|l| l.strip_prefix("series_mbps=")) {
            eprintln!(
                "egress: receiver on {}: Mbit/s per 0.5 s: {series}",
                self.out.display()
            );
        }
    }

    fn rate_inner(&mut self, key: &str) -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the sink")? {
                ensure!(status.success(), "the sink failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the sink did not finish");
            }
            thread_sleep(Duration::from_millis(50));
        }
        let out = fs::read_to_string(&self.out).context("reading the sink's output")?;
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in the sink's output {out:?}"))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("the sink's {key} in {out:?}"))
    }
}

/// The rate (Mbit/s) of `samples` (CLOCK_MONOTONIC ns, bytes received so far; in time
/// order) from the first at or after `from_ns` to the last at or before `to_ns`.
fn window_mbps(samples: &[(u64, u64)], from_ns: u64, to_ns: u64) -> Result<f64> {
    let last = samples.last().context("no samples")?;
    ensure!(
        last.0 >= to_ns,
        "the data ended {:.2} s before the window did",
        (to_ns - last.0) as f64 / 1e9
    );
    let start = samples
        .iter()
        .find(|(t, _)| *t >= from_ns)
        .context("no sample in the window")?;
    let end = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= to_ns)
        .context("no sample in the window")?;
    ensure!(end.0 > start.0, "fewer than two samples in the window");
    Ok((end.1 - start.1) as f64 * 8.0 / ((end.0 - start.0) as f64 / 1e9) / 1e6)
}

/// Waits (at most 15 s: an ended task's entry stays 5 s, `EGRESS_LINGER`) until the EDT map
/// has `n` entries.
fn wait_for_entries(env: &Env, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = env.containerizer.egress_entries();
        if entries.len() == n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the egress map has {} entries, not {n}: {entries:?}",
                entries.len()
            );
        }
        env.sleep(Duration::from_millis(50));
    }
}

/// How long each sender sends.
const SEND_MS: &str = "4000";

/// A task given 50 Mbit/s sending over TCP measures within ±5% of 50 Mbit/s at the receiver,
/// while a neighbour without a limit, sending at the same time over the same device, is not
/// slowed (well above 50); the limited task's map entry is there while it runs and gone after.
pub fn a_task_is_paced_to_its_limit_and_its_neighbour_is_not(helper: &Path) -> Result<()> {
    let link = Link::create()?;
    let env = Env::with_egress_control("egress", helper, DEVICE)?;
    let limited_sink = Sink::start(&link, helper, 5001, env.work_dir())?;
    let free_sink = Sink::start(&link, helper, 5002, env.work_dir())?;
    let limited = env.launch(
        &Task::helper(
            &env,
            "limited",
            &["tcp-blast", &format!("{PEER_ADDR}:5001"), SEND_MS],
        )
        .egress(50.0),
    )?;
    let free = env.launch(&Task::helper(
        &env,
        "free",
        &["tcp-blast", &format!("{PEER_ADDR}:5002"), SEND_MS],
    ))?;
    wait_for_entries(&env, 1)?;
    for (c, id) in [(&limited, "limited"), (&free, "free")] {
        let status = env.wait(c.as_ref())?;
        ensure!(
            status == ExitStatus::Code(0),
            "task {id} {status}: {} {}",
            env.stdout(id),
            fs::read_to_string(env.sandbox(id).join("stderr")).unwrap_or_default()
        );
    }
    let limited_mbps = limited_sink.mbps()?;
    let free_mbps = free_sink.mbps()?;
    eprintln!(
        "egress: limited to 50 Mbit/s: {limited_mbps:.2} Mbit/s; unlimited neighbour: {free_mbps:.2} Mbit/s"
    );
    ensure!(
        (47.5..=52.5).contains(&limited_mbps),
        "the task limited to 50 Mbit/s sent at {limited_mbps:.2} Mbit/s (not within ±5%)"
    );
    ensure!(
        free_mbps > 75.0,
        "the unlimited neighbour sent at only {free_mbps:.2} Mbit/s: it was slowed"
    );
    wait_for_entries(&env, 0)?;
    Ok(())
}

/// A bridge task given 50 Mbit/s sending over TCP to the peer (routed through the machine's
/// namespace and masqueraded) measures within ±5% of 50 Mbit/s at the receiver: its limit is
/// enforced on its own eth0 (fq there, the EDT program on its egress), where its packets still
/// carry their socket. Its entry goes after it ends, and the bridge with `remove_all`.
pub fn a_bridge_task_is_paced_to_its_limit(helper: &Path) -> Result<()> {
    const BRIDGE: &str = "stvm2";
    let link = Link::create()?;
    let env =
        Env::with_bridge_and_egress("egress-bridge", helper, DEVICE, BRIDGE, "172.31.2.0/24")?;
    let sink = Sink::start(&link, helper, 5004, env.work_dir())?;
    let limited = env.launch(
        &Task::helper(
            &env,
            "limited",
            &["tcp-blast", &format!("{PEER_ADDR}:5004"), SEND_MS],
        )
        .bridge()
        .egress(50.0),
    )?;
    wait_for_entries(&env, 1)?;
    let status = env.wait(limited.as_ref())?;
    ensure!(
        status == ExitStatus::Code(0),
        "task limited {status}: {} {}",
        env.stdout("limited"),
        fs::read_to_string(env.sandbox("limited").join("stderr")).unwrap_or_default()
    );
    // Steady state: a bridge task's pacer sits on its own eth0, whose queue goes with the
    // namespace when the task ends, so the transfer's last packets can wait for a retransmit.
    let mbps = sink.steady_mbps()?;
    eprintln!("egress: a bridge task limited to 50 Mbit/s: {mbps:.2} Mbit/s (steady)");
    ensure!(
        (47.5..=52.5).contains(&mbps),
        "the bridge task limited to 50 Mbit/s sent at {mbps:.2} Mbit/s (not within ±5%)"
    );
    wait_for_entries(&env, 0)?;
    drop(env);
    strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    Ok(())
}

/// After a simulated agent restart (new program, empty map), recovery writes the running task's
/// limit again: its entry is back and its sending is limited again from then on, and nothing
/// stale is left after it ends. Between the old program's detachment and recovery the task is
/// not limited, so the rate is measured over a window that starts when recovery is reported
/// (plus [`SETTLE`] for what was sent unlimited before it: at most TCP's small-queue budget
/// in the qdisc and a round trip in flight), never over one that includes the restart: its
/// length under TCG on a loaded machine varies by seconds. The rate of [`WINDOW`] must be
/// within ±5% of the limit.
pub fn recovery_limits_a_running_task_again(helper: &Path) -> Result<()> {
    const SETTLE: Duration = Duration::from_millis(500);
    const WINDOW: Duration = Duration::from_secs(3);
    let link = Link::create()?;
    let mut env = Env::with_egress_control("egress-recover", helper, DEVICE)?;
    let sink = Sink::start(&link, helper, 5003, env.work_dir())?;
    // It sends until it is killed once the window is over (a minute at most).
    let task = Task::helper(
        &env,
        "recovered",
        &["tcp-blast", &format!("{PEER_ADDR}:5003"), "60000"],
    )
    .egress(20.0);
    env.checkpoint(&task)?;
    let _first = env.launch(&task)?;
    wait_for_entries(&env, 1)?;
    let restart = Instant::now();
    env.restart_with_egress_control(DEVICE)?;
    ensure!(
        env.containerizer.egress_entries().is_empty(),
        "a restarted agent's map is not empty"
    );
    let restarted = restart.elapsed();
    let recovered = env.recover("recovered")?;
    // Recovery wrote the entry before it returned: the limit holds from here.
    let entries = env.containerizer.egress_entries();
    ensure!(
        entries.len() == 1,
        "recovery did not write the task's entry: {entries:?}"
    );
    let reported = crate::monotonic_ns()?;
    let recovery = restart.elapsed();
    let from = reported + u64::try_from(SETTLE.as_nanos())?;
    let to = from + u64::try_from(WINDOW.as_nanos())?;
    // However long the restart took, the window is all in the transfer: the task is ended
    // (its socket then drains at the limit and closes) only once the window is over.
    while crate::monotonic_ns()? < to + 200_000_000 {
        env.sleep(Duration::from_millis(50));
    }
    let status = env.kill(recovered.as_ref(), Duration::from_millis(500))?;
    ensure!(
        !matches!(status, ExitStatus::Code(c) if c != 0),
        "the task failed before it was killed: {status}: {}",
        fs::read_to_string(env.sandbox("recovered").join("stderr")).unwrap_or_default()
    );
    let mbps = sink.mbps_between(from, to)?;
    eprintln!(
        "egress: limited to 20 Mbit/s; restart {:.2} s, recovery reported {:.2} s after the old \
         program went; from {:.1} s after that, over {:.0} s: {mbps:.2} Mbit/s",
        restarted.as_secs_f64(),
        recovery.as_secs_f64(),
        SETTLE.as_secs_f64(),
        WINDOW.as_secs_f64()
    );
    ensure!(
        (19.0..=21.0).contains(&mbps),
        "the task limited to 20 Mbit/s sent at {mbps:.2} Mbit/s after recovery (not within ±5%)"
    );
    wait_for_entries(&env, 0)?;
    Ok(())
}

/// The rates under each limit (limit, achieved), the unlimited rate, and the latency scenarios
/// (not limited, EDT, htb).
type BenchResults = (Vec<(f64, f64)>, f64, [Latency; 3]);

/// A UDP sender faster than its limit gets the packets past the horizon dropped, and the limiter
/// counts them for the task: whole packets at the device (1000 bytes of payload, 8 of UDP, 20
/// of IPv4, 14 of Ethernet). The limit, 0.2 Mbit/s, makes the 2 s horizon (50 kB, 48 packets)
/// shorter than what would stop the sender first: fq's per-flow limit (100 packets, which fq
/// drops itself, uncounted) and the socket's send buffer.
pub fn udp_past_the_horizon_is_dropped_and_counted(helper: &Path) -> Result<()> {
    use strata_agent::containerizer::Containerizer as _;
    let _link = Link::create()?;
    let env = Env::with_egress_control("egress-drop", helper, DEVICE)?;
    let c = env.launch(
        &Task::helper(
            &env,
            "udp",
            &["udp-blast", &format!("{PEER_ADDR}:9"), "600", "1000"],
        )
        .egress(0.2),
    )?;
    wait_for_entries(&env, 1)?;
    let id = env.containerizer.egress_entries()[0];
    let status = env.wait(c.as_ref())?;
    ensure!(
        status == ExitStatus::Code(0),
        "task udp {status}: {}",
        fs::read_to_string(env.sandbox("udp").join("stderr")).unwrap_or_default()
    );
    let control = env
        .containerizer
        .egress_control()
        .context("the containerizer has no egress control")?;
    let dropped = control
        .lock()
        .map_err(|_| anyhow::anyhow!("the egress control lock is poisoned"))?
        .dropped(id);
    eprintln!("egress: 600 datagrams of 1000 bytes at 0.2 Mbit/s: dropped {dropped:?}");
    ensure!(
        dropped.packets > 0,
        "nothing was dropped past the horizon: {dropped:?}"
    );
    ensure!(
        dropped.packets < 600 && dropped.bytes == dropped.packets * 1042,
        "the drops are not whole datagrams of 1042 bytes at the device: {dropped:?}"
    );
    Ok(())
}

/// One latency scenario's result.
#[derive(Debug)]
struct Latency {
    bulk_mbps: f64,
    count: u64,
    p50_us: u64,
    p99_us: u64,
}

/// A bulk sender task (to `bulk_port`, limited to `egress` if given) and a request/response
/// task (to the rr server, unlimited) at the same time: the bulk rate and the round trips.
fn latency_scenario(
    env: &Env,
    link: &Link,
    helper: &Path,
    name: &str,
    bulk_port: u16,
    egress: Option<f64>,
) -> Result<Latency> {
    let sink = Sink::start(link, helper, bulk_port, env.work_dir())?;
    let mut bulk = Task::helper(
        env,
        &format!("bulk-{name}"),
        &["tcp-blast", &format!("{PEER_ADDR}:{bulk_port}"), "4000"],
    );
    if let Some(mbps) = egress {
        bulk = bulk.egress(mbps);
    }
    let bulk_c = env.launch(&bulk)?;
    env.sleep(Duration::from_millis(500));
    let rr_id = format!("rr-{name}");
    let rr = env.launch(&Task::helper(
        env,
        &rr_id,
        &["rr-client", &format!("{PEER_ADDR}:6000"), "3000"],
    ))?;
    for (c, id) in [(&rr, rr_id.clone()), (&bulk_c, format!("bulk-{name}"))] {
        let status = env.wait(c.as_ref())?;
        ensure!(
            status == ExitStatus::Code(0),
            "task {id} {status}: {}",
            fs::read_to_string(env.sandbox(&id).join("stderr")).unwrap_or_default()
        );
    }
    let out = env.stdout(&rr_id);
    let get = |key: &str| -> Result<u64> {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in {out:?}"))?
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{key} in {out:?}"))
    };
    Ok(Latency {
        bulk_mbps: sink.mbps()?,
        count: get("count=")?,
        p50_us: get("p50_us=")?,
        p99_us: get("p99_us=")?,
    })
}

/// `cargo xtask bench network`: the rate achieved under limits of 10, 100 and 1,000 Mbit/s,
/// and the round-trip latency of a small request/response flow next to a bulk sender that is
/// not limited, limited to 100 Mbit/s by EDT, and limited to 100 Mbit/s by an htb class (the
/// `tc` binary, on the test's own veth). Prints a table. In the qemu guest (TCG): absolute
/// numbers are those of an emulated machine.
pub fn bench_network(helper: &Path) -> Result<()> {
    let link = Link::create()?;
    let tc = "/usr/sbin/tc";
    ensure!(Path::new(tc).is_file(), "{tc} is not in the guest");
    let rr_out = std::env::temp_dir().join("rr-server.out");
    let mut rr_server = link.spawn_in_peer(helper, &["rr-server", "6000"], &rr_out)?;
    let result = (|| -> Result<BenchResults> {
        // Not limited, nothing configured on the device (veth: noqueue).
        let plain = Env::supervised("bench-plain", helper)?;
        let unlimited_sink = Sink::start(&link, helper, 5100, plain.work_dir())?;
        let c = plain.launch(&Task::helper(
            &plain,
            "blast-free",
            &["tcp-blast", &format!("{PEER_ADDR}:5100"), "3000"],
        ))?;
        plain.wait(c.as_ref())?;
        let ceiling = unlimited_sink.mbps()?;
        let none = latency_scenario(&plain, &link, helper, "none", 5101, None)?;
        drop(plain);
        // EDT.
        let env = Env::with_egress_control("bench-edt", helper, DEVICE)?;
        let mut rates = Vec::new();
        for (i, limit) in [10.0, 100.0, 1000.0].into_iter().enumerate() {
            let port = 5110 + i as u16;
            let sink = Sink::start(&link, helper, port, env.work_dir())?;
            let id = format!("blast-{i}");
            let c = env.launch(
                &Task::helper(
                    &env,
                    &id,
                    &["tcp-blast", &format!("{PEER_ADDR}:{port}"), "3000"],
                )
                .egress(limit),
            )?;
            env.wait(c.as_ref())?;
            rates.push((limit, sink.mbps()?));
        }
        let edt = latency_scenario(&env, &link, helper, "edt", 5120, Some(100.0))?;
        drop(env);
        // htb: the bulk sender's port in a 100 Mbit/s class, everything else in a 10 Gbit/s one.
        sh(&format!(
            "{tc} qdisc replace dev {DEVICE} root handle 1: htb default 20 && \
             {tc} class add dev {DEVICE} parent 1: classid 1:10 htb rate 100mbit ceil 100mbit && \
             {tc} class add dev {DEVICE} parent 1: classid 1:20 htb rate 10gbit && \
             {tc} filter add dev {DEVICE} parent 1: protocol ip u32 match ip dport 5130 0xffff flowid 1:10"
        ))?;
        let plain = Env::supervised("bench-htb", helper)?;
        let htb = latency_scenario(&plain, &link, helper, "htb", 5130, None)?;
        let _ = sh(&format!("{tc} qdisc del dev {DEVICE} root"));
        Ok((rates, ceiling, [none, edt, htb]))
    })();
    let _ = rr_server.kill();
    let _ = rr_server.wait();
    let (rates, ceiling, [none, edt, htb]) = result?;
    println!();
    println!("egress limit (EDT)   achieved     of the limit");
    for (limit, got) in &rates {
        println!(
            "{:>10} Mbit/s   {:>8.1} Mbit/s   {:>6.1}%",
            limit,
            got,
            got / limit * 100.0
        );
    }
    println!("(unlimited, this guest's veth: {ceiling:.1} Mbit/s)");
    println!();
    println!("bulk sender               bulk rate      rr p50     rr p99   round trips");
    for (name, l) in [
        ("not limited", &none),
        ("EDT 100 Mbit/s (fq)", &edt),
        ("htb 100 Mbit/s", &htb),
    ] {
        println!(
            "{name:<22} {:>8.1} Mbit/s {:>7} us {:>8} us {:>8}",
            l.bulk_mbps, l.p50_us, l.p99_us, l.count
        );
    }
    Ok(())
}
