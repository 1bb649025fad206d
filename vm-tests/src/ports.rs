//! Port enforcement scenarios (the agent's cgroup/bind4, bind6, post_bind4 and post_bind6
//! programs through the `LinuxContainerizer`): guest only (`tests/guest.rs`), since they bind
//! ports of the machine's network namespace and one of them changes the kernel's ephemeral port
//! range for its duration.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_agent::containerizer::ExitStatus;

use crate::isolation::{Env, Task, line, run_to_end};

/// The agent's managed (offered) ports in these scenarios.
const MANAGED: (u64, u64) = (31000, 31009);

/// Waits (at most 10 s) until the port map has `n` entries.
fn wait_for_entries(env: &Env, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = env.containerizer.port_entries();
        if entries.len() == n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the port map has {} entries, not {n}: {entries:?}",
                entries.len()
            );
        }
        env.sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 30 s) until a running task has printed `binds=done`; its stdout.
fn wait_for_binds(env: &Env, task_id: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.stdout(task_id);
        if out.contains("binds=done") {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            bail!("task {task_id} did not finish binding: {out:?}");
        }
        env.sleep(Duration::from_millis(50));
    }
}

fn result<'a>(out: &'a str, spec: &str) -> Result<&'a str> {
    line(out, &format!("{spec}="))
}

/// A host-network task binds the ports it was given (TCP and UDP, IPv4, IPv6 and IPv4-mapped
/// IPv6), a TCP client reaches its listener, and every other port, managed or not, is refused
/// with EPERM; its map entry is there while it runs and gone once it ended.
pub fn a_task_binds_only_its_ports(helper: &Path) -> Result<()> {
    let env = Env::with_port_control("ports", helper, MANAGED)?;
    let allowed = [
        "tcp4:31000",
        "udp4:31000",
        "tcp6:31001",
        "udp6:31001",
        "tcpmapped:31005",
        "udpmapped:31005",
    ];
    let denied = [
        "tcp4:31002",
        "udp4:31002",
        "tcp6:31002",
        "udp6:31002",
        "tcpmapped:31002",
        "udpmapped:31002",
        "tcp4:8080",
        "udp4:8080",
        "tcp6:8080",
        "udp6:8080",
        "tcpmapped:8080",
        "udpmapped:8080",
    ];
    let mut args = vec!["binds", "30"];
    args.extend(allowed);
    args.extend(denied);
    let task = Task::helper(&env, "web", &args).ports(&[(31000, 31001), (31005, 31005)]);
    let c = env.launch(&task)?;
    let out = wait_for_binds(&env, "web")?;
    eprintln!("{out}");
    wait_for_entries(&env, 1)?;
    for spec in allowed {
        let port = spec.rsplit(':').next().unwrap_or_default();
        ensure!(
            result(&out, spec)? == format!("ok:{port}"),
            "a port the task was given could not be bound ({spec}): {out}"
        );
    }
    for spec in denied {
        ensure!(
            result(&out, spec)? == "EPERM",
            "a port the task was not given was not refused with EPERM ({spec}): {out}"
        );
    }
    // The listener works: the kernel completes a connection to it.
    std::net::TcpStream::connect_timeout(&"127.0.0.1:31000".parse()?, Duration::from_secs(5))
        .context("connecting to the task's listener on its port 31000")?;
    let status = env.kill(c.as_ref(), Duration::from_millis(100))?;
    eprintln!("the task ended: {status}");
    wait_for_entries(&env, 0).context("after the task ended")?;
    Ok(())
}

/// Restores `net.ipv4.ip_local_port_range` when dropped.
struct EphemeralRange(String);

const EPHEMERAL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

impl EphemeralRange {
    fn set(range: &str) -> Result<Self> {
        let old = std::fs::read_to_string(EPHEMERAL).context("reading the ephemeral range")?;
        std::fs::write(EPHEMERAL, range).context("setting the ephemeral range")?;
        Ok(Self(old))
    }
}

impl Drop for EphemeralRange {
    fn drop(&mut self) {
        let _ = std::fs::write(EPHEMERAL, self.0.trim());
    }
}

/// A bind to port 0 works, and never leaves the task holding a managed port it was not given:
/// with the ephemeral range made to overlap the managed ports, every port 0 bind either gets a
/// port outside them (or the task's own), or is refused with EPERM (TCP and UDP).
pub fn port_zero_never_lands_on_a_managed_port_of_another(helper: &Path) -> Result<()> {
    let env = Env::with_port_control("port0", helper, MANAGED)?;
    let _range = EphemeralRange::set("31000 31019")?;
    let mut args = vec!["binds", "0"];
    args.extend(["tcp4:0"; 25]);
    args.extend(["udp4:0"; 25]);
    let out = run_to_end(
        &env,
        &Task::helper(&env, "zero", &args).ports(&[(31000, 31000)]),
    )?;
    eprintln!("{out}");
    let (mut ok, mut refused) = (0, 0);
    for l in out.lines().filter(|l| l.contains(":0=")) {
        let (_, r) = l.split_once('=').context("a result line")?;
        if let Some(port) = r.strip_prefix("ok:") {
            let port: u64 = port.parse()?;
            ensure!(
                port == 31000 || !(MANAGED.0..=MANAGED.1).contains(&port),
                "a port 0 bind landed on managed port {port}, not the task's: {out}"
            );
            ok += 1;
        } else if r == "EPERM" {
            refused += 1;
        } else {
            ensure!(r == "EADDRINUSE", "unexpected port 0 result {r}: {out}");
        }
    }
    ensure!(ok > 0, "no port 0 bind worked: {out}");
    ensure!(
        refused > 0,
        "no port 0 bind landed on a managed port (the post_bind check was not exercised): {out}"
    );
    wait_for_entries(&env, 0)?;
    Ok(())
}

/// Two tasks given the same port cannot both hold it: the allocator never gives a port twice,
/// and when a test forces it, the second task's bind fails (EADDRINUSE: the first holds it); a
/// third task not given the port gets EPERM.
pub fn two_tasks_cannot_both_bind_one_port(helper: &Path) -> Result<()> {
    let env = Env::with_port_control("twice", helper, MANAGED)?;
    let first = env.launch(
        &Task::helper(&env, "first", &["binds", "30", "tcp4:31003", "udp4:31003"])
            .ports(&[(31003, 31003)]),
    )?;
    let out = wait_for_binds(&env, "first")?;
    ensure!(
        result(&out, "tcp4:31003")? == "ok:31003" && result(&out, "udp4:31003")? == "ok:31003",
        "the first task could not bind its port: {out}"
    );
    let second = run_to_end(
        &env,
        &Task::helper(&env, "second", &["binds", "0", "tcp4:31003", "udp4:31003"])
            .ports(&[(31003, 31003)]),
    )?;
    let third = run_to_end(
        &env,
        &Task::helper(&env, "third", &["binds", "0", "tcp4:31003", "udp4:31003"])
            .ports(&[(31004, 31004)]),
    )?;
    eprintln!("first: {out}second: {second}third: {third}");
    for spec in ["tcp4:31003", "udp4:31003"] {
        ensure!(
            result(&second, spec)? == "EADDRINUSE",
            "a second task bound a port another task holds: {second}"
        );
        ensure!(
            result(&third, spec)? == "EPERM",
            "a task bound a port it was not given: {third}"
        );
    }
    let _ = env.kill(first.as_ref(), Duration::from_millis(100))?;
    wait_for_entries(&env, 0)?;
    Ok(())
}

/// A task whose ports are more ranges than the map holds is refused at launch with a message
/// that says so, and gets no cgroup and no entry.
pub fn too_many_port_ranges_refuse_the_task(helper: &Path) -> Result<()> {
    let env = Env::with_port_control("ranges", helper, MANAGED)?;
    let ranges: Vec<(u64, u64)> = (0..17).map(|i| (40000 + 2 * i, 40000 + 2 * i)).collect();
    let launched = env.launch(&Task::helper(&env, "many", &["binds", "0"]).ports(&ranges));
    let err = match launched {
        Ok(c) => {
            let status: ExitStatus = env.wait(c.as_ref())?;
            bail!("a task with 17 port ranges was launched ({status})");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("at most 16"), "unexpected refusal: {err}");
    ensure!(env.cgroup_gone("many")?, "the refused task kept a cgroup");
    ensure!(
        env.containerizer.port_entries().is_empty(),
        "the refused task has an entry"
    );
    Ok(())
}

/// After an agent restart (new programs, an empty map), recovery writes the running task's ports
/// again: a bind the task makes after the restart is still refused for a port it was not given
/// and allowed for its own; the entry goes when the task ends.
pub fn a_restarted_agent_enforces_the_recovered_tasks_ports(helper: &Path) -> Result<()> {
    let mut env = Env::with_port_control("restart", helper, MANAGED)?;
    let task = Task::helper(
        &env,
        "late",
        &["binds", "0", "sleep:4", "tcp4:31002", "tcp4:31000"],
    )
    .ports(&[(31000, 31000)]);
    env.checkpoint(&task)?;
    let first = env.launch(&task)?;
    wait_for_entries(&env, 1)?;
    drop(first);
    env.restart_with_port_control(MANAGED)?;
    ensure!(
        env.containerizer.port_entries().is_empty(),
        "a new port map is not empty"
    );
    let c = env.recover("late")?;
    wait_for_entries(&env, 1).context("after recovery")?;
    let status = env.wait(c.as_ref())?;
    let out = env.stdout("late");
    eprintln!("{out}");
    ensure!(status == ExitStatus::Code(0), "the task {status}: {out}");
    ensure!(
        result(&out, "tcp4:31002")? == "EPERM",
        "after the restart a port the task was not given was bound: {out}"
    );
    ensure!(
        result(&out, "tcp4:31000")? == "ok:31000",
        "after the restart the task could not bind its port: {out}"
    );
    wait_for_entries(&env, 0).context("after the recovered task ended")?;
    Ok(())
}
