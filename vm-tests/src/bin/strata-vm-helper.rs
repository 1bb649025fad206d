//! The workload of the VM tests: `strata-vm-helper CGROUP_DIR COMMAND [ARGS]`.
//!
//! It first moves itself into CGROUP_DIR (`-` to stay where it is; `burn-cpu` moves later), so
//! everything it does is accounted to that cgroup, then runs COMMAND and prints `key=value` lines for the test to check:
//!
//! - `burn-cpu MS`: measures the CPU time it spends in CGROUP_DIR by its own rusage (user +
//!   system). It sleeps 1 ms, reads its rusage, moves into the cgroup, burns CPU until its rusage
//!   has grown by MS milliseconds, reads it again, sleeps 1 ms and moves back to the cgroup it
//!   started in. On-CPU time is accounted at context switches, to the cgroup the task is in when
//!   it is switched out, so the sleeps make the cgroup's share start just before the first
//!   reading and end just after the last. Prints `rusage_ns_at_start`, `rusage_ns_at_end` and
//!   `cpu_ns_in_cgroup` (their difference).
//! - `spin MS`: burns CPU for MS milliseconds of wall-clock time.
//! - `spin-on CPU MS`: the same, pinned to cpu number CPU.
//! - `fork-bomb`: every copy starts copies of itself as fast as it can, forever (retrying 10 ms
//!   after a refused start); only ever run it in a cgroup with pids.max set.
//! - `alloc MIB`: allocates and touches MIB MiB, printing `allocated_mib` every 8 MiB;
//!   prints `survived=1` if it gets to the end.
//! - `fork-loop MAX`: starts up to MAX children (`sleep 30`) until the kernel refuses one; prints
//!   `spawned` and `refused` (1 when a start failed), then kills its children.
//! - `udp-send ADDR COUNT SIZE`: sends COUNT datagrams of SIZE bytes to ADDR.
//! - `tcp-send ADDR BYTES`: connects to ADDR, sends BYTES bytes, shuts down its side and reads
//!   until the peer closes. Both print `sent_bytes`.
//! - `sleep SECS`.
//! - `burn-hold MS SECS`: burns CPU until this process's own rusage (user + system, since it
//!   started) reaches MS milliseconds, prints it as `rusage_ns`, then sleeps SECS (so its cgroup
//!   can be read while it lives, with nothing more to account).
//! - `tcp-send-hold ADDR BYTES SECS`: `tcp-send`, then prints `sent_bytes` and sleeps SECS.
//! - `alloc-hold MIB SECS`: allocates and touches MIB MiB, prints `allocated_mib`, then sleeps
//!   SECS holding it.
//! - `hot MS`: burns CPU for MS milliseconds of wall-clock time, nearly all of it inside
//!   `strata_known_hot_function` (never inlined), for the profiler's tests.
//! - `tick MS`: wakes up every millisecond for MS milliseconds, doing almost nothing each time
//!   (a mostly idle task, for the run-queue latency tests).
//! - `bind PORT`: binds a TCP socket to 127.0.0.1:PORT; prints `bind=ok` or `bind=ERRNO`.
//! - `escape`: what a task with CAP_SYS_ADMIN would do to leave its container: mounts a tmpfs
//!   on its cwd, then unshares a user namespace; prints `mount=ok|ERRNO` and
//!   `unshare_user=ok|ERRNO`.
//! - `env`: prints `env:NAME` for each variable of its environment.
//! - `udp-blast ADDR COUNT SIZE`: `udp-send` from an unbound (any address) socket, so it can
//!   reach another host.
//! - `tcp-blast ADDR MS`: connects to ADDR and writes as fast as the socket takes it for MS
//!   milliseconds, then closes; prints `sent_bytes`.
//! - `tcp-sink PORT`: listens on 0.0.0.0:PORT, prints `listening=1`, accepts one connection and
//!   reads it to its end; prints `bytes`, `secs` (first byte to end) and `mbps` (the rate over
//!   that time, 10^6 bits per second), and `tail_mbps`, the rate over the last 2 s or so.
//! - `rr-server PORT`: listens on 0.0.0.0:PORT, prints `listening=1`, and answers every 64-byte
//!   request of every connection with 64 bytes, forever.
//! - `rr-client ADDR MS`: for MS milliseconds, sends a 64-byte request on one connection and
//!   waits for the 64-byte answer, 5 ms apart; prints `count`, `p50_us` and `p99_us` of the
//!   round trips.

use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::resource::{UsageWho, getrusage};
use strata_vm_tests::CGROUP2_ROOT;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The agent's per-task modes, so tests can use this binary as the tasks' supervisor.
    match args.as_slice() {
        [mode, run_dir] if mode == "supervise" => {
            std::process::exit(i32::from(
                strata_agent::containerizer::supervisor::supervise_main(Path::new(run_dir)),
            ));
        }
        [mode] if mode == "launcher" => {
            std::process::exit(i32::from(
                strata_agent::containerizer::supervisor::launcher_main(),
            ));
        }
        _ => {}
    }
    let [cgroup, command, rest @ ..] = args.as_slice() else {
        bail!("usage: strata-vm-helper CGROUP_DIR|- COMMAND [ARGS] (see the source for commands)");
    };
    let home = own_cgroup()?;
    let arg = |i: usize| -> Result<&str> {
        rest.get(i)
            .map(String::as_str)
            .with_context(|| format!("{command}: argument {} is missing", i + 1))
    };
    let num = |i: usize| -> Result<u64> {
        let a = arg(i)?;
        a.parse()
            .with_context(|| format!("{command}: argument {} ({a}) is not a number", i + 1))
    };
    if command == "burn-cpu" {
        return burn_cpu(Path::new(cgroup), &home, Duration::from_millis(num(0)?));
    }
    if cgroup != "-" {
        move_to(Path::new(cgroup))?;
    }
    match command.as_str() {
        "spin" => {
            spin(Duration::from_millis(num(0)?));
            Ok(())
        }
        "spin-on" => {
            let mut set = nix::sched::CpuSet::new();
            set.set(usize::try_from(num(0)?)?)
                .context("spin-on: no such cpu")?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .context("spin-on: sched_setaffinity")?;
            spin(Duration::from_millis(num(1)?));
            Ok(())
        }
        "fork-bomb" => fork_bomb(),
        "alloc" => alloc(num(0)?),
        "fork-loop" => fork_loop(num(0)?),
        "udp-send" => udp_send("127.0.0.1:0", arg(0)?, num(1)?, num(2)?),
        "udp-blast" => udp_send("0.0.0.0:0", arg(0)?, num(1)?, num(2)?),
        "tcp-send" => tcp_send(arg(0)?, num(1)?),
        "sleep" => {
            thread::sleep(Duration::from_secs(num(0)?));
            Ok(())
        }
        "hot" => {
            hot(Duration::from_millis(num(0)?));
            Ok(())
        }
        "tick" => {
            let wall = Duration::from_millis(num(0)?);
            let start = Instant::now();
            while start.elapsed() < wall {
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
        "burn-hold" => {
            let target = num(0)?.saturating_mul(1_000_000);
            let mut x = 0u64;
            let mut used = rusage_ns()?;
            while used < target {
                for i in 0..100_000u64 {
                    x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
                }
                used = rusage_ns()?;
            }
            println!("rusage_ns={used}");
            hold(num(1)?)
        }
        "tcp-send-hold" => {
            tcp_send(arg(0)?, num(1)?)?;
            hold(num(2)?)
        }
        "alloc-hold" => {
            let mib = num(0)?;
            let chunks: Vec<Vec<u8>> = (0..mib).map(|_| vec![0xa5; 1 << 20]).collect();
            println!("allocated_mib={mib}");
            hold(num(1)?)?;
            black_box(&chunks);
            Ok(())
        }
        "bind" => {
            let port = u16::try_from(num(0)?).context("bind: the port is too big")?;
            let bound = std::net::TcpListener::bind(("127.0.0.1", port));
            println!("bind={}", errno_of(bound.map(drop)));
            Ok(())
        }
        "binds" => {
            // binds HOLD_SECS SPEC...: SPEC is tcp4|udp4|tcp6|udp6|tcpmapped|udpmapped:PORT
            // (the any address; `mapped` = an IPv6 socket on ::ffff:127.0.0.1), or sleep:SECS
            // to wait before the next. Prints
            // `SPEC=ok:PORT` (the port bound) or `SPEC=ERRNO`, keeps what it bound, and holds.
            let hold_secs = num(0)?;
            let mut held = Vec::new();
            for spec in &rest[1..] {
                let (kind, port) = spec
                    .split_once(':')
                    .with_context(|| format!("binds: {spec:?} is not KIND:PORT"))?;
                let port: u16 = port
                    .parse()
                    .with_context(|| format!("binds: bad port in {spec:?}"))?;
                if kind == "sleep" {
                    // `sleep:SECS` waits before the next bind.
                    thread::sleep(Duration::from_secs(port.into()));
                    continue;
                }
                let result = bind_one(kind, port)?;
                match result {
                    Ok((sock, bound)) => {
                        println!("{spec}=ok:{bound}");
                        held.push(sock);
                    }
                    Err(e) => println!("{spec}={}", errno_of(Err(e))),
                }
            }
            println!("binds=done");
            hold(hold_secs)?;
            black_box(&held);
            Ok(())
        }
        "escape" => {
            // On a directory of its own: over the sandbox itself it would hide the output
            // files the supervisor writes by path from inside the task's mount namespace.
            let target = std::env::current_dir()
                .context("reading the cwd")?
                .join("mnt");
            std::fs::create_dir_all(&target).context("creating the mount point")?;
            let mounted = nix::mount::mount(
                Some("none"),
                &target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
            println!("mount={}", errno_of(mounted.map_err(std::io::Error::from)));
            let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
            println!(
                "unshare_user={}",
                errno_of(unshared.map_err(std::io::Error::from))
            );
            Ok(())
        }
        "env" => {
            for (name, _) in std::env::vars_os() {
                println!("env:{}", name.to_string_lossy());
            }
            Ok(())
        }
        "tcp-blast" => tcp_blast(arg(0)?, num(1)?),
        "tcp-sink" => tcp_sink(num(0)?),
        "rr-server" => rr_server(num(0)?),
        "rr-client" => rr_client(arg(0)?, num(1)?),
        "net-info" => net_info(),
        other => bail!("unknown command {other:?}"),
    }
}

/// A socket kept open by `binds`.
#[expect(dead_code, reason = "the sockets are only held open, never read")]
enum Held {
    Tcp(std::net::TcpListener),
    Udp(UdpSocket),
}

/// Binds one socket of `kind` to `port` on the any address (or ::ffff:127.0.0.1); the socket
/// and the port it got.
fn bind_one(kind: &str, port: u16) -> Result<std::io::Result<(Held, u16)>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
    let ip: IpAddr = match kind {
        "tcp4" | "udp4" => Ipv4Addr::UNSPECIFIED.into(),
        "tcp6" | "udp6" => Ipv6Addr::UNSPECIFIED.into(),
        "tcpmapped" | "udpmapped" => Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
        other => bail!("binds: unknown kind {other:?}"),
    };
    let addr = SocketAddr::new(ip, port);
    Ok(if kind.starts_with("tcp") {
        TcpListener::bind(addr).and_then(|l| {
            let bound = l.local_addr()?.port();
            Ok((Held::Tcp(l), bound))
        })
    } else {
        UdpSocket::bind(addr).and_then(|u| {
            let bound = u.local_addr()?.port();
            Ok((Held::Udp(u), bound))
        })
    })
}

/// `ok`, or the error's errno name (`EPERM`).
fn errno_of(result: std::io::Result<()>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.raw_os_error().map_or_else(
            || e.to_string(),
            |n| format!("{:?}", nix::errno::Errno::from_raw(n)),
        ),
    }
}

/// Flushes what was printed, then sleeps `secs` seconds.
fn hold(secs: u64) -> Result<()> {
    std::io::stdout().flush().context("flushing stdout")?;
    thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// This process's user + system CPU time, in nanoseconds.
fn rusage_ns() -> Result<u64> {
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let ns = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_usec()).unwrap_or(0) * 1_000
    };
    Ok(ns(u.user_time()) + ns(u.system_time()))
}

/// The directory of the cgroup this process is in (from /proc/self/cgroup).
fn own_cgroup() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("/proc/self/cgroup has no cgroup2 line")?;
    Ok(Path::new(CGROUP2_ROOT).join(rel.trim_start_matches('/')))
}

fn move_to(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, "0").with_context(|| format!("moving into {}", procs.display()))
}

fn burn_cpu(cgroup: &Path, home: &Path, target: Duration) -> Result<()> {
    // Switch out, so the time run so far is accounted to the first cgroup; the new cgroup's
    // share starts when this task gets the CPU back, just before `start` is read.
    thread::sleep(Duration::from_millis(1));
    let start = rusage_ns()?;
    move_to(cgroup)?;
    let target = u64::try_from(target.as_nanos()).unwrap_or(u64::MAX);
    let mut end = start;
    let mut x = 0u64;
    while end - start < target {
        for i in 0..100_000u64 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        end = rusage_ns()?;
    }
    // Switch out in the cgroup, then leave it: the rest is accounted elsewhere.
    thread::sleep(Duration::from_millis(1));
    move_to(home)?;
    println!("rusage_ns_at_start={start}");
    println!("rusage_ns_at_end={end}");
    println!("cpu_ns_in_cgroup={}", end - start);
    Ok(())
}

fn spin(wall: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < wall {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_add(i));
        }
    }
}

fn hot(wall: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < wall {
        x = strata_known_hot_function(x);
    }
    black_box(x);
}

/// The function the profiler tests expect to dominate a profile of `hot`: a few milliseconds of
/// arithmetic per call, so the caller's clock reads are a negligible share. It calls nothing,
/// also in a debug build (plain operators only), so every sample in it has it as its leaf.
#[inline(never)]
fn strata_known_hot_function(seed: u64) -> u64 {
    let rounds = black_box(2_000_000u64);
    let mut x = seed | 1;
    let mut i = 0u64;
    while i < rounds {
        // xorshift64: shifts and xors, no calls and no overflow checks.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i += 1;
    }
    x
}

fn alloc(mib: u64) -> Result<()> {
    const MIB: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 1..=mib {
        // Non-zero bytes on every page, so every page is really allocated.
        chunks.push(vec![0xa5; MIB]);
        if i % 8 == 0 {
            println!("allocated_mib={i}");
            std::io::stdout().flush().context("flushing stdout")?;
        }
    }
    println!("survived=1");
    black_box(&chunks);
    Ok(())
}

fn fork_bomb() -> Result<()> {
    let me = std::env::current_exe().context("finding my own path")?;
    loop {
        let started = Command::new(&me)
            .args(["-", "fork-bomb"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match started {
            // Never waited for: the bomb only grows.
            Ok(child) => std::mem::forget(child),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn fork_loop(max: u64) -> Result<()> {
    let me = std::env::current_exe().context("finding my own path")?;
    let mut children: Vec<Child> = Vec::new();
    let mut refused = 0;
    for _ in 0..max {
        match Command::new(&me)
            .args(["-", "sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => children.push(c),
            Err(e) => {
                println!("# start refused: {e}");
                refused = 1;
                break;
            }
        }
    }
    println!("spawned={}", children.len());
    println!("refused={refused}");
    for c in &mut children {
        let _ = c.kill();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    Ok(())
}

/// Sends `count` datagrams of `size` bytes to `addr` from a socket bound to `from` (port 0).
fn udp_send(from: &str, addr: &str, count: u64, size: u64) -> Result<()> {
    let socket = UdpSocket::bind(from).context("binding a UDP socket")?;
    let payload = vec![0x5a_u8; usize::try_from(size)?];
    let mut sent = 0u64;
    for _ in 0..count {
        let n = socket
            .send_to(&payload, addr)
            .with_context(|| format!("sending to {addr}"))?;
        sent += n as u64;
    }
    println!("sent_bytes={sent}");
    Ok(())
}

fn tcp_blast(addr: &str, ms: u64) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let payload = vec![0x5a_u8; 64 << 10];
    let end = Instant::now() + Duration::from_millis(ms);
    let mut sent = 0u64;
    while Instant::now() < end {
        let n = stream.write(&payload).context("sending")?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write).context("shutting down")?;
    println!("sent_bytes={sent}");
    // Stays until the receiver has it all (it closes at the end of the data): the bytes still
    // queued, paced, would otherwise go with a bridge task's interface when the task ends.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rest = [0u8; 64];
    while stream.read(&mut rest).is_ok_and(|n| n > 0) {}
    Ok(())
}

fn listen(port: u64) -> Result<std::net::TcpListener> {
    let port = u16::try_from(port).context("the port is too big")?;
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("listening on port {port}"))?;
    println!("listening=1");
    std::io::stdout().flush().context("flushing stdout")?;
    Ok(listener)
}

fn tcp_sink(port: u64) -> Result<()> {
    let listener = listen(port)?;
    let (mut stream, _) = listener.accept().context("accepting")?;
    // CLOCK_MONOTONIC (system-wide, as the tests' own clock) at one Instant: the samples'
    // times for `samples=`.
    let reference = (Instant::now(), strata_vm_tests::monotonic_ns()?);
    let mut buf = vec![0u8; 256 << 10];
    let mut first = None;
    let mut bytes = 0u64;
    // (time, bytes so far), every 10 ms or so: for the rate of the last TAIL.
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    loop {
        let n = stream.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        bytes += n as u64;
        let now = Instant::now();
        if samples
            .last()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_millis(10))
        {
            samples.push((now, bytes));
        }
    }
    let end = Instant::now();
    let secs = first.map_or(0.0, |t| end.duration_since(t).as_secs_f64());
    let rate = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        }
    };
    println!("bytes={bytes}");
    println!("secs={secs:.3}");
    println!("mbps={:.2}", rate(bytes, secs));
    // The rate of each half second, for the record.
    if let Some(start) = first {
        let mut series = Vec::new();
        let mut prev = 0u64;
        let mut edge = start + Duration::from_millis(500);
        for (t, b) in &samples {
            while *t >= edge {
                series.push(format!("{:.1}", rate(*b - prev, 0.5)));
                prev = *b;
                edge += Duration::from_millis(500);
            }
        }
        println!("series_mbps={}", series.join(","));
    }
    // The steady rate: from 0.5 s after the first byte to 0.5 s before the end, leaving out
    // the start (slow start, the pacer's first horizon) and the end (the sender's close, its
    // queue drained or dropped as its task ends).
    const EDGE: Duration = Duration::from_millis(500);
    if let Some(start) = first {
        let from = samples.iter().find(|(t, _)| *t >= start + EDGE);
        let to = samples.iter().rev().find(|(t, _)| *t + EDGE <= end);
        if let (Some((t0, b0)), Some((t1, b1))) = (from, to)
            && t1 > t0
        {
            println!(
                "steady_mbps={:.2}",
                rate(b1 - b0, t1.duration_since(*t0).as_secs_f64())
            );
        }
    }
    // Every sample (at least 50 ms apart) as CLOCK_MONOTONIC ns:bytes, for a rate over a
    // window the test chooses (e.g. from when the agent's recovery was reported).
    let mut kept: Vec<String> = Vec::new();
    let mut last_kept: Option<Instant> = None;
    for (t, b) in samples.iter().chain(std::iter::once(&(end, bytes))) {
        if last_kept.is_none_or(|k| t.duration_since(k) >= Duration::from_millis(50)) || *t == end {
            let ns = reference.1 + u64::try_from(t.duration_since(reference.0).as_nanos())?;
            kept.push(format!("{ns}:{b}"));
            last_kept = Some(*t);
        }
    }
    println!("samples={}", kept.join(","));
    // The rate over the last 2 s (from the last sample at least 2 s before the end).
    const TAIL: Duration = Duration::from_secs(2);
    if let Some((t, b)) = samples
        .iter()
        .rev()
        .find(|(t, _)| end.duration_since(*t) >= TAIL)
    {
        println!(
            "tail_mbps={:.2}",
            rate(bytes - b, end.duration_since(*t).as_secs_f64())
        );
    }
    Ok(())
}

fn rr_server(port: u64) -> Result<()> {
    let listener = listen(port)?;
    for stream in listener.incoming() {
        let mut stream = stream.context("accepting")?;
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 64];
            while stream.read_exact(&mut buf).is_ok() {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// The task's IPv4 address on its default route (`addr=`, from a UDP socket connected to an
/// outside address: no packet is sent) and its interfaces (`ifaces=`, from /proc/net/dev).
fn net_info() -> Result<()> {
    let ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .context("reading /proc/net/dev")?
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect();
    println!("ifaces={}", ifaces.join(","));
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    match socket.connect("192.0.2.1:9") {
        Ok(()) => println!(
            "addr={}",
            socket.local_addr().context("the local address")?.ip()
        ),
        Err(e) => println!("addr=none ({e})"),
    }
    Ok(())
}

fn rr_client(addr: &str, ms: u64) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let end = Instant::now() + Duration::from_millis(ms);
    let mut rtts = Vec::new();
    let mut buf = [0x42u8; 64];
    while Instant::now() < end {
        let t = Instant::now();
        stream.write_all(&buf).context("sending a request")?;
        stream.read_exact(&mut buf).context("reading an answer")?;
        rtts.push(t.elapsed().as_micros() as u64);
        thread::sleep(Duration::from_millis(5));
    }
    rtts.sort_unstable();
    let q = |f: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * f).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!("count={}", rtts.len());
    println!("p50_us={}", q(0.5));
    println!("p99_us={}", q(0.99));
    Ok(())
}

fn tcp_send(addr: &str, bytes: u64) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let payload = vec![0x5a_u8; usize::try_from(bytes)?];
    stream.write_all(&payload).context("sending")?;
    stream.shutdown(Shutdown::Write).context("shutting down")?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .context("waiting for the peer to close")?;
    println!("sent_bytes={bytes}");
    Ok(())
}
