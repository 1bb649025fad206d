//! Kernel integration tests. They create cgroups and stress the kernel, so they run only inside
//! the qemu guest that `cargo xtask vm-test` boots (cgroup2 as the only hierarchy, 1 GiB of
//! memory, 2 CPUs). On a host they are ignored, and skip with a message under `--ignored`.
//!
//! Each test runs the workload (`strata-vm-helper`) in a cgroup of its own, with a time limit, and
//! checks what the kernel and the agent's eBPF programs report about it.

use std::io::Read as _;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use strata_agent::ebpf::{Ebpf, ProgramState};
use strata_vm_tests::{CGROUP2_ROOT, HelperOutput, TestCgroup, guest_or_skip, run_helper};

/// How long any one helper may run.
const HELPER_LIMIT: Duration = Duration::from_secs(120);

/// The agent's programs, attached once at the cgroup2 root and shared by the tests.
fn ebpf() -> Result<&'static Ebpf> {
    static EBPF: OnceLock<Ebpf> = OnceLock::new();
    if let Some(e) = EBPF.get() {
        return Ok(e);
    }
    let e = Ebpf::load(Path::new(CGROUP2_ROOT)).context("loading the agent's eBPF programs")?;
    Ok(EBPF.get_or_init(|| e))
}

fn ensure_success(out: &HelperOutput) -> Result<()> {
    ensure!(
        out.status.success(),
        "the helper failed ({}): stdout: {} stderr: {}",
        out.status,
        out.stdout.trim(),
        out.stderr.trim()
    );
    Ok(())
}

/// Reads a counter until two reads 50 ms apart agree (a task's last interval is accounted at its
/// final context switch, just after its parent has been told it exited), at most 2 s.
fn settled(mut read: impl FnMut() -> Result<u64>) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = read()?;
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = read()?;
        if now == last || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn ebpf_programs_load_and_attach() -> Result<()> {
    if !guest_or_skip("ebpf_programs_load_and_attach") {
        return Ok(());
    }
    let started = Instant::now();
    let e = Ebpf::load(Path::new(CGROUP2_ROOT)).context("loading the agent's eBPF programs")?;
    eprintln!(
        "loaded and attached {} programs in {:.0?}",
        e.programs().len(),
        started.elapsed()
    );
    // sched_switch, sched_wakeup, sched_wakeup_new, sched_stat_runtime and the two
    // cgroup_skb programs.
    ensure!(
        e.programs().len() == 6,
        "expected 6 programs, got {:?}",
        e.programs()
    );
    for p in e.programs() {
        ensure!(
            p.state == ProgramState::Attached,
            "program {} at {} is not attached: {:?}",
            p.name,
            p.attach_point,
            p.state
        );
    }
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn cpu_time_per_cgroup_matches_the_process_rusage() -> Result<()> {
    if !guest_or_skip("cpu_time_per_cgroup_matches_the_process_rusage") {
        return Ok(());
    }
    let e = ebpf()?;
    let cg = TestCgroup::create("cpu-time")?;
    let id = cg.id()?;
    let out = run_helper(&cg, &["burn-cpu", "1000"], HELPER_LIMIT)?;
    ensure_success(&out)?;
    let own_ns = out.report.get("cpu_ns_in_cgroup")?;
    let ebpf_ns = settled(|| Ok(e.cpu_time_ns(id)?))?;
    let usage_usec = cg.flat_keyed("cpu.stat")?.get("usage_usec")?;
    let diff = ebpf_ns.abs_diff(own_ns) as f64 / own_ns as f64;
    eprintln!(
        "on-CPU time: eBPF {ebpf_ns} ns, the process's own rusage {own_ns} ns ({:.3}% apart), \
         cpu.stat usage_usec {usage_usec}",
        diff * 100.0
    );
    ensure!(
        diff <= 0.01,
        "eBPF on-CPU time of cgroup {id} ({ebpf_ns} ns) is {:.2}% away from the process's own \
         rusage ({own_ns} ns): more than 1%",
        diff * 100.0
    );
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn egress_bytes_per_cgroup_match_payload_plus_headers() -> Result<()> {
    if !guest_or_skip("egress_bytes_per_cgroup_match_payload_plus_headers") {
        return Ok(());
    }
    let e = ebpf()?;

    // UDP: every datagram is one packet with a 20-byte IPv4 and an 8-byte UDP header.
    let udp = TestCgroup::create("net-udp")?;
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let addr = receiver.local_addr()?.to_string();
    let (count, size) = (50u64, 1000u64);
    let out = run_helper(
        &udp,
        &["udp-send", &addr, &count.to_string(), &size.to_string()],
        HELPER_LIMIT,
    )?;
    ensure_success(&out)?;
    let sent = e.net_counters(udp.id()?)?.egress;
    eprintln!("UDP: {count} datagrams of {size} bytes; eBPF egress {sent:?}");
    ensure!(
        sent.packets == count && sent.bytes == count * (size + 28),
        "UDP egress of cgroup {}: expected {count} packets and {} bytes (payload plus 28 bytes of \
         IPv4 and UDP headers each), eBPF counted {sent:?}",
        udp.path().display(),
        count * (size + 28)
    );

    // TCP: every segment the sender sends carries 20 bytes of IPv4 header and 32 of TCP header
    // (timestamps on), and its SYN 8 more bytes of options (MSS, SACK, window scale). A segment
    // sent again (a retransmission: the guest's emulation is slow enough for a timer to fire)
    // is counted twice, so its payload (at most one loopback segment each, counted by the
    // guest's RetransSegs) is allowed on top; without one the count must be exact.
    let tcp = TestCgroup::create("net-tcp")?;
    let retransmitted_before = strata_vm_tests::accounting::tcp_retransmitted_segments()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = thread::spawn(move || -> std::io::Result<usize> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(got.len())
    });
    let payload = 300_000u64;
    let out = run_helper(
        &tcp,
        &["tcp-send", &addr, &payload.to_string()],
        HELPER_LIMIT,
    )?;
    ensure_success(&out)?;
    let received = server
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP server thread panicked"))??;
    ensure!(
        received as u64 == payload,
        "the server received {received} bytes of {payload}"
    );
    let sent = settled(|| Ok(e.net_counters(tcp.id()?)?.egress.bytes))?;
    let traffic = e.net_counters(tcp.id()?)?;
    let headers = 52 * traffic.egress.packets + 8;
    let retransmitted =
        strata_vm_tests::accounting::tcp_retransmitted_segments()? - retransmitted_before;
    eprintln!(
        "TCP: {payload} bytes sent; eBPF egress {:?}, ingress {:?}; {retransmitted} segments \
         retransmitted",
        traffic.egress, traffic.ingress
    );
    let resent = sent.saturating_sub(payload + headers);
    ensure!(
        sent >= payload + headers
            && resent <= retransmitted * strata_vm_tests::accounting::LOOPBACK_SEGMENT,
        "TCP egress of cgroup {}: expected {payload} bytes of payload plus {headers} of headers \
         (52 per packet for {} packets, plus 8 of SYN options) = {}, plus at most {} of \
         {retransmitted} retransmitted segments; eBPF counted {sent}",
        tcp.path().display(),
        traffic.egress.packets,
        payload + headers,
        retransmitted * strata_vm_tests::accounting::LOOPBACK_SEGMENT
    );
    ensure!(
        traffic.ingress.packets > 0,
        "the sender's cgroup received no packets (no ACKs?): {:?}",
        traffic.ingress
    );
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn memory_max_oom_kills_the_process_and_memory_events_counts_it() -> Result<()> {
    if !guest_or_skip("memory_max_oom_kills_the_process_and_memory_events_counts_it") {
        return Ok(());
    }
    let cg = TestCgroup::create("memory")?;
    cg.write("memory.max", "64M")?;
    if cg.path().join("memory.swap.max").exists() {
        cg.write("memory.swap.max", "0")?;
    }
    let out = run_helper(&cg, &["alloc", "512"], HELPER_LIMIT)?;
    let events = cg.flat_keyed("memory.events")?;
    let allocated = out.report.values.get("allocated_mib").copied().unwrap_or(0);
    eprintln!(
        "alloc 512 MiB under memory.max=64M: {}, got to {allocated} MiB; memory.events {:?}",
        out.status, events.values
    );
    ensure!(
        out.status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32),
        "the process was not OOM-killed: {} (stdout: {})",
        out.status,
        out.stdout.trim()
    );
    ensure!(
        !out.report.values.contains_key("survived"),
        "the process allocated everything"
    );
    ensure!(
        allocated <= 64,
        "the process got to {allocated} MiB under a 64M limit"
    );
    ensure!(
        events.get("oom_kill")? >= 1,
        "memory.events counts no oom_kill: {:?}",
        events.values
    );
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn cpu_max_throttles() -> Result<()> {
    if !guest_or_skip("cpu_max_throttles") {
        return Ok(());
    }
    let cg = TestCgroup::create("cpu-max")?;
    cg.write("cpu.max", "10000 100000")?;
    let wall = Duration::from_millis(600);
    let out = run_helper(&cg, &["spin", "600"], HELPER_LIMIT)?;
    ensure_success(&out)?;
    let stat = cg.flat_keyed("cpu.stat")?;
    eprintln!(
        "spin 600 ms under cpu.max=10000/100000: cpu.stat {:?}",
        stat.values
    );
    ensure!(
        stat.get("nr_throttled")? > 0,
        "cpu.max did not throttle: {:?}",
        stat.values
    );
    let usage = Duration::from_micros(stat.get("usage_usec")?);
    ensure!(
        usage < wall / 2,
        "the cgroup used {usage:?} of CPU in {wall:?} under a 10% quota"
    );
    Ok(())
}

#[test]
#[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
fn pids_max_stops_a_fork_loop() -> Result<()> {
    if !guest_or_skip("pids_max_stops_a_fork_loop") {
        return Ok(());
    }
    let cg = TestCgroup::create("pids")?;
    cg.write("pids.max", "8")?;
    let out = run_helper(&cg, &["fork-loop", "64"], HELPER_LIMIT)?;
    ensure_success(&out)?;
    let spawned = out.report.get("spawned")?;
    let events = cg.flat_keyed("pids.events")?;
    eprintln!(
        "fork loop under pids.max=8: {spawned} children started; pids.events {:?}",
        events.values
    );
    ensure!(
        out.report.get("refused")? == 1,
        "the fork loop was never refused"
    );
    ensure!(
        spawned == 7,
        "pids.max=8 should allow the helper and 7 children, {spawned} children started"
    );
    ensure!(
        events.get("max")? >= 1,
        "pids.events counts no refused fork: {:?}",
        events.values
    );
    Ok(())
}

// ----- the scenarios shared with the host, declared once in `strata_vm_tests::scenarios!`: the
// agent's containerizer and its accounting (on the host: tests/host_isolation.rs), eBPF
// scheduling and profiling (on the host: tests/host_ebpf.rs) -----

strata_vm_tests::scenarios!(containerizer => guest_tests);
strata_vm_tests::scenarios!(tracing => guest_tests);

/// Egress limits (guest only: the scenarios create veth pairs and network namespaces).
mod egress {
    use anyhow::Result;
    use strata_vm_tests::{egress, guest_or_skip, helper_path};

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn egress_a_task_is_paced_to_its_limit_and_its_neighbour_is_not() -> Result<()> {
        if !guest_or_skip("egress_a_task_is_paced_to_its_limit_and_its_neighbour_is_not") {
            return Ok(());
        }
        egress::a_task_is_paced_to_its_limit_and_its_neighbour_is_not(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn egress_a_bridge_task_is_paced_to_its_limit() -> Result<()> {
        if !guest_or_skip("egress_a_bridge_task_is_paced_to_its_limit") {
            return Ok(());
        }
        egress::a_bridge_task_is_paced_to_its_limit(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn egress_recovery_limits_a_running_task_again() -> Result<()> {
        if !guest_or_skip("egress_recovery_limits_a_running_task_again") {
            return Ok(());
        }
        egress::recovery_limits_a_running_task_again(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn egress_udp_past_the_horizon_is_dropped_and_counted() -> Result<()> {
        if !guest_or_skip("egress_udp_past_the_horizon_is_dropped_and_counted") {
            return Ok(());
        }
        egress::udp_past_the_horizon_is_dropped_and_counted(&helper_path())
    }

    /// `cargo xtask bench network` (runs only when named: it is a benchmark, not a check).
    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask bench network"]
    fn egress_bench_network() -> Result<()> {
        if !guest_or_skip("egress_bench_network") {
            return Ok(());
        }
        if !std::env::args().any(|a| a.contains("bench_network")) {
            eprintln!("skipped egress_bench_network: run it with `cargo xtask bench network`");
            return Ok(());
        }
        egress::bench_network(&helper_path())
    }
}

/// Port enforcement (guest only: the scenarios bind the machine's ports and one changes its
/// ephemeral port range).
mod ports {
    use anyhow::Result;
    use strata_vm_tests::{guest_or_skip, helper_path, ports};

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn ports_a_task_binds_only_its_ports() -> Result<()> {
        if !guest_or_skip("ports_a_task_binds_only_its_ports") {
            return Ok(());
        }
        ports::a_task_binds_only_its_ports(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn ports_port_zero_never_lands_on_a_managed_port_of_another() -> Result<()> {
        if !guest_or_skip("ports_port_zero_never_lands_on_a_managed_port_of_another") {
            return Ok(());
        }
        ports::port_zero_never_lands_on_a_managed_port_of_another(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn ports_two_tasks_cannot_both_bind_one_port() -> Result<()> {
        if !guest_or_skip("ports_two_tasks_cannot_both_bind_one_port") {
            return Ok(());
        }
        ports::two_tasks_cannot_both_bind_one_port(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn ports_too_many_port_ranges_refuse_the_task() -> Result<()> {
        if !guest_or_skip("ports_too_many_port_ranges_refuse_the_task") {
            return Ok(());
        }
        ports::too_many_port_ranges_refuse_the_task(&helper_path())
    }

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn ports_a_restarted_agent_enforces_the_recovered_tasks_ports() -> Result<()> {
        if !guest_or_skip("ports_a_restarted_agent_enforces_the_recovered_tasks_ports") {
            return Ok(());
        }
        ports::a_restarted_agent_enforces_the_recovered_tasks_ports(&helper_path())
    }
}

/// The real `strata-agent` binary with bridge tasks, killed with -9, restarted and cleaned up
/// with `--remove-cgroups` (guest only: it makes the machine's `strata0`, and needs the
/// binary in the guest's /bin).
mod kill_9 {
    use anyhow::Result;
    use strata_vm_tests::{guest_or_skip, restart};

    #[test]
    #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
    fn kill_9_bridge_tasks_are_recovered_and_remove_cgroups_leaves_nothing() -> Result<()> {
        if !guest_or_skip("kill_9_bridge_tasks_are_recovered_and_remove_cgroups_leaves_nothing") {
            return Ok(());
        }
        restart::a_killed_agent_recovers_bridge_tasks_and_leaves_nothing()
    }
}
