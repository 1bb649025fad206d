//! Bridge networking scenarios (the agent's bridge, leases and veths through the
//! `LinuxContainerizer`). In the guest they make the bridge in the machine's network namespace;
//! on the host (`host_*`) in a network namespace of the test's own, made for the scenario's
//! thread (the launcher and the tasks' inits are forked from it and start there too).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_agent::bridge::netlink::Rtnl;
use strata_agent::containerizer::Containerizer as _;

use crate::isolation::{Env, Task, line, run_to_end};

const BRIDGE: &str = "stvm0";
const SUBNET: &str = "172.31.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);

/// The links of the machine's namespace whose name starts with `prefix`.
fn links(prefix: &str) -> Result<Vec<String>> {
    let mut nl = Rtnl::open().context("opening rtnetlink")?;
    Ok(nl
        .links()
        .context("listing links")?
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Waits (at most 10 s) until the bridge has `n` veths and the table `n` leases.
fn wait_for_leases(env: &Env, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leases = env.containerizer.bridge_leases();
        let veths = links(&format!("{BRIDGE}v"))?;
        if leases.len() == n && veths.len() == n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not {n} leases and veths: leases {leases:?}, veths {veths:?}");
        }
        env.sleep(Duration::from_millis(50));
    }
}

/// A 64-byte round trip to `addr` (an `rr-server`), from the machine's namespace.
pub(crate) fn round_trip(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [7u8; 64];
    stream.write_all(&buf).context("sending")?;
    stream.read_exact(&mut buf).context("reading the echo")?;
    Ok(())
}

/// Echoes 64-byte requests on `listener` (the machine's root namespace), for tasks to reach.
fn echo_server(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while stream.read_exact(&mut buf).is_ok() {
                    if stream.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Bridge tasks get an address of the subnet (eth0, a default route through the bridge), reach
/// each other by address and a listener in the machine's namespace on the bridge's address, and
/// are reached from there; once they end, their veths and leases are gone; the bridge goes with
/// `remove_all` (what `--remove-cgroups` runs).
pub fn bridge_tasks_reach_each_other_and_the_host_and_leave_nothing(helper: &Path) -> Result<()> {
    let env = Env::with_bridge("bridge", helper, BRIDGE, SUBNET)?;
    let host = TcpListener::bind((GATEWAY, 0)).context("listening on the bridge's address")?;
    let host_port = host.local_addr()?.port();
    echo_server(host);
    let server = env.launch(&Task::helper(&env, "server", &["rr-server", "8080"]).bridge())?;
    wait_for_leases(&env, 1)?;
    let leases = env.containerizer.bridge_leases();
    let server_addr = leases[0].0;
    ensure!(
        server_addr == Ipv4Addr::new(172, 31, 0, 2),
        "the first task's address: {leases:?}"
    );
    round_trip(SocketAddr::from((server_addr, 8080)))
        .context("reaching the bridge task from the machine's namespace")?;
    let info = run_to_end(&env, &Task::helper(&env, "info", &["net-info"]).bridge())?;
    eprintln!("{info}");
    ensure!(
        line(&info, "addr=")? == "172.31.0.3",
        "the second task's address on its default route: {info}"
    );
    ensure!(
        line(&info, "ifaces=")?.split(',').any(|i| i == "eth0"),
        "no eth0 in the task's namespace: {info}"
    );
    let to_server = format!("{server_addr}:8080");
    let out = run_to_end(
        &env,
        &Task::helper(&env, "client", &["rr-client", &to_server, "300"]).bridge(),
    )?;
    eprintln!("to the other task: {out}");
    ensure!(
        line(&out, "count=")?.parse::<u64>()? > 0,
        "no round trip to the other bridge task: {out}"
    );
    let to_host = format!("{GATEWAY}:{host_port}");
    let out = run_to_end(
        &env,
        &Task::helper(&env, "outbound", &["rr-client", &to_host, "300"]).bridge(),
    )?;
    eprintln!("to the machine's namespace: {out}");
    ensure!(
        line(&out, "count=")?.parse::<u64>()? > 0,
        "no round trip to the listener in the machine's namespace: {out}"
    );
    wait_for_leases(&env, 1).context("after the short tasks ended")?;
    let _ = env.kill(server.as_ref(), Duration::from_millis(100))?;
    wait_for_leases(&env, 0).context("after the server ended")?;
    drop(env);
    let removed = strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    ensure!(
        removed == vec![format!("nf_tables table ip {BRIDGE}"), BRIDGE.to_owned()],
        "removed {removed:?}"
    );
    ensure!(links(BRIDGE)?.is_empty(), "the bridge is still there");
    Ok(())
}

/// After an agent restart (a new, empty lease table), recovery adopts the running bridge task's
/// lease: its address is not leased again, it is still reached, and its veth and lease go when
/// it ends; a veth no recovered task owns is swept.
pub fn a_restarted_agent_readopts_a_bridge_task(helper: &Path) -> Result<()> {
    let mut env = Env::with_bridge("bridge-restart", helper, BRIDGE, SUBNET)?;
    let task = Task::helper(&env, "kept", &["rr-server", "8080"]).bridge();
    env.checkpoint(&task)?;
    let first = env.launch(&task)?;
    wait_for_leases(&env, 1)?;
    let addr = env.containerizer.bridge_leases()[0].0;
    drop(first);
    env.restart_with_bridge(BRIDGE, SUBNET)?;
    ensure!(
        env.containerizer.bridge_leases().is_empty(),
        "a new lease table is not empty"
    );
    let c = env.recover("kept")?;
    env.containerizer.recovered();
    wait_for_leases(&env, 1).context("after recovery")?;
    ensure!(
        env.containerizer.bridge_leases()[0].0 == addr,
        "the recovered task's lease changed"
    );
    round_trip(SocketAddr::from((addr, 8080))).context("reaching the recovered task")?;
    let info = run_to_end(&env, &Task::helper(&env, "after", &["net-info"]).bridge())?;
    ensure!(
        line(&info, "addr=")? != addr.to_string(),
        "a new task got the recovered task's address: {info}"
    );
    let _ = env.kill(c.as_ref(), Duration::from_millis(100))?;
    wait_for_leases(&env, 0).context("after the recovered task ended")?;
    drop(env);
    strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    ensure!(
        links(BRIDGE)?.is_empty(),
        "the bridge or a veth is still there"
    );
    Ok(())
}

/// Bridge tasks are refused with a message saying why where the agent cannot run them as asked:
/// an egress limit on an agent without the limiter, a full subnet (a refusal, TASK_ERROR); and on
/// an agent without a bridge.
pub fn bridge_tasks_the_agent_cannot_run_are_refused(helper: &Path) -> Result<()> {
    let plain = Env::supervised("no-bridge", helper)?;
    let refused = |env: &Env, task: &Task| -> Result<String> {
        match env.launch(task) {
            Ok(c) => {
                let status = env.wait(c.as_ref())?;
                bail!("the task was launched ({status})")
            }
            Err(e) => Ok(format!("{e:#}")),
        }
    };
    let err = refused(&plain, &Task::helper(&plain, "b", &["net-info"]).bridge())?;
    ensure!(err.contains("bridge networking is off"), "{err}");
    drop(plain);
    let env = Env::with_bridge("bridge-refuse", helper, BRIDGE, SUBNET)?;
    // This agent has no egress limiter: a bridge task asking for a limit is refused.
    let err = refused(
        &env,
        &Task::helper(&env, "limited", &["net-info"])
            .bridge()
            .egress(10.0),
    )?;
    ensure!(err.contains("cannot enforce egress limits"), "{err}");
    ensure!(
        env.cgroup_gone("limited")?,
        "a refused task kept its cgroup"
    );
    wait_for_leases(&env, 0)?;
    drop(env);
    strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    // A full subnet (a /30 has one task address) is the agent's limit: refused (TASK_ERROR).
    let env = Env::with_bridge("bridge-full", helper, BRIDGE, "172.31.1.0/30")?;
    let first = env.launch(&Task::helper(&env, "first", &["sleep", "60"]).bridge())?;
    wait_for_leases(&env, 1)?;
    match env.launch(&Task::helper(&env, "second", &["net-info"]).bridge()) {
        Ok(_) => bail!("a second task got an address of a full /30"),
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(text.contains("no free address"), "{text}");
            let refusal = e
                .downcast_ref::<strata_agent::containerizer::ContainerizerError>()
                .is_some_and(strata_agent::containerizer::ContainerizerError::is_refusal);
            ensure!(
                refusal,
                "a full subnet is not a refusal (TASK_ERROR): {text}"
            );
        }
    }
    let _ = env.kill(first.as_ref(), Duration::from_millis(100))?;
    wait_for_leases(&env, 0)?;
    drop(env);
    strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    Ok(())
}

/// A bridge task's traffic is counted like any task's (the cgroup_skb programs hang on cgroups,
/// not namespaces): a task that sends 4 MiB over TCP to a listener on the bridge's address has at
/// least that many bytes out, at most 5% more (headers), and packets in (the acknowledgements).
pub fn bridge_task_traffic_is_counted(helper: &Path) -> Result<()> {
    const PAYLOAD: u64 = 4 << 20;
    let mut acc = crate::accounting::Accounting::of(Env::with_bridge(
        "bridge-acct",
        helper,
        BRIDGE,
        SUBNET,
    )?)?;
    let listener = TcpListener::bind((GATEWAY, 0)).context("listening on the bridge's address")?;
    let addr = listener.local_addr()?.to_string();
    let receiver = std::thread::spawn(move || -> Result<u64> {
        let (mut stream, _) = listener
            .accept()
            .context("accepting the task's connection")?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
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
            &["tcp-send-hold", &addr, &PAYLOAD.to_string(), "120"],
        )
        .bridge(),
    )?;
    let sent = acc.wait_for("sender", "sent_bytes")?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    acc.env.sleep(Duration::from_millis(200));
    let record = acc.record("sender")?;
    acc.end(task.as_ref())?;
    let net = record.network.context("no network figures")?;
    eprintln!(
        "bridge task: payload {PAYLOAD} B (sent {sent}, received {received}); eBPF tx {} B in {} \
         packets, rx {} B in {} packets",
        net.tx_bytes_total, net.tx_packets_total, net.rx_bytes_total, net.rx_packets_total
    );
    ensure!(
        sent == PAYLOAD && received == PAYLOAD,
        "sent {sent}, received {received}"
    );
    ensure!(
        net.tx_bytes_total >= PAYLOAD && net.tx_bytes_total <= PAYLOAD + PAYLOAD / 20,
        "tx bytes {} are not the payload {PAYLOAD} plus at most 5% of headers",
        net.tx_bytes_total
    );
    ensure!(
        net.rx_packets_total > 0,
        "no packets in (acknowledgements) counted"
    );
    wait_for_leases(&acc.env, 0)?;
    drop(acc);
    strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    Ok(())
}

/// A namespace standing for a machine outside the agent's: a thread in a network namespace of
/// its own with `eth0` at [`OUTSIDE`], routed through the machine's namespace (on a second
/// bridge, [`OUTSIDE_BRIDGE`], at [`OUTSIDE_GATEWAY`]). It listens on [`OUTSIDE`]:9000 and
/// sends each client's address down `peers`, and makes the round trips it is sent.
struct Outside {
    peers: std::sync::mpsc::Receiver<Ipv4Addr>,
    jobs: std::sync::mpsc::Sender<(SocketAddr, std::sync::mpsc::Sender<Result<()>>)>,
}

impl Outside {
    fn start() -> Result<Self> {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (wired_tx, wired_rx) = std::sync::mpsc::channel::<bool>();
        let (peers_tx, peers) = std::sync::mpsc::channel();
        let (jobs, jobs_rx) =
            std::sync::mpsc::channel::<(SocketAddr, std::sync::mpsc::Sender<Result<()>>)>();
        std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = tid_tx.send(Err(e));
                return;
            }
            let _ = tid_tx.send(Ok(nix::unistd::gettid().as_raw() as u32));
            if wired_rx.recv() != Ok(true) {
                return;
            }
            let Ok(listener) = TcpListener::bind((OUTSIDE, 9000)) else {
                return;
            };
            // Threads made here are in this namespace too.
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    if let Ok(SocketAddr::V4(peer)) = stream.peer_addr()
                        && peers_tx.send(*peer.ip()).is_err()
                    {
                        return;
                    }
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64];
                        while stream.read_exact(&mut buf).is_ok() {
                            if stream.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            for (addr, done) in jobs_rx {
                let _ = done.send(round_trip(addr));
            }
            // Wakes the listener's thread, which ends on finding no one to tell: the namespace
            // (and the outside's veth pair) goes with the last of its threads.
            let _ = TcpStream::connect_timeout(&(OUTSIDE, 9000).into(), Duration::from_secs(1));
        });
        let tid = tid_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the outside's thread did not start")?
            .context("making the outside's network namespace")?;
        let wired = (|| -> Result<()> {
            let mut nl = Rtnl::open()?;
            let index = nl.ensure_bridge(OUTSIDE_BRIDGE, OUTSIDE_GATEWAY, 24)?;
            nl.create_veth(&format!("{OUTSIDE_BRIDGE}x"), index, "eth0", tid)?;
            strata_agent::bridge::netlink::configure_in_namespace(
                tid,
                "eth0",
                OUTSIDE,
                24,
                OUTSIDE_GATEWAY,
            )?;
            Ok(())
        })();
        let _ = wired_tx.send(wired.is_ok());
        wired.context("wiring the outside's namespace")?;
        Ok(Self { peers, jobs })
    }

    /// A round trip from the outside to `addr`.
    fn round_trip(&self, addr: SocketAddr) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send((addr, tx))
            .context("the outside's thread is gone")?;
        rx.recv_timeout(Duration::from_secs(15))
            .context("the outside's round trip did not end in 15 s")?
    }
}

const OUTSIDE_BRIDGE: &str = "stout0";
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const OUTSIDE_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

/// The agent's NAT table's rules (`None`: no table).
fn nat_rules() -> Result<Option<usize>> {
    strata_agent::bridge::nat::rule_count(BRIDGE).context("reading the agent's nf_tables table")
}

/// A bridge task with host port 31000 mapped to its 8080 is reached there from the machine's
/// namespace (at 127.0.0.1 and at the bridge's address) and from an outside namespace routed
/// through the machine (at the machine's address there); a bridge task reaches that outside,
/// which sees the machine's address (masquerading). The agent's table holds the two
/// masquerading rules and two per mapping while the task runs, the masquerading rules only
/// after it ends, nothing after `remove_all` (what `--remove-cgroups` runs).
pub fn bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port(helper: &Path) -> Result<()> {
    let env = Env::with_bridge("bridge-nat", helper, BRIDGE, SUBNET)?;
    // The machine's loopback (the guest's init brings it up; a test's namespace has it down).
    let mut nl = Rtnl::open()?;
    let lo = nl.index("lo")?.unwrap_or(1);
    nl.set_up(lo, "loopback")?;
    ensure!(
        nat_rules()? == Some(2),
        "the table at start: {:?}",
        nat_rules()?
    );
    let outside = Outside::start()?;
    let server = env.launch(
        &Task::helper(&env, "server", &["rr-server", "8080"])
            .bridge()
            .ports(&[(31000, 31000)])
            .publish(31000, 8080),
    )?;
    wait_for_leases(&env, 1)?;
    ensure!(
        nat_rules()? == Some(4),
        "with one mapping: {:?}",
        nat_rules()?
    );
    round_trip(SocketAddr::from(([127, 0, 0, 1], 31000)))
        .context("reaching the task's mapped port at 127.0.0.1")?;
    round_trip(SocketAddr::from((GATEWAY, 31000)))
        .context("reaching the task's mapped port at the bridge's address")?;
    outside
        .round_trip(SocketAddr::from((OUTSIDE_GATEWAY, 31000)))
        .context("reaching the task's mapped port from the outside")?;
    let seen = outside.peers.try_iter().count();
    ensure!(
        seen == 0,
        "the outside's listener saw {seen} clients before any"
    );
    let client = run_to_end(
        &env,
        &Task::helper(
            &env,
            "out",
            &["rr-client", &format!("{OUTSIDE}:9000"), "300"],
        )
        .bridge(),
    )?;
    ensure!(
        line(&client, "count=")?.parse::<u64>()? > 0,
        "no round trip from a bridge task to the outside: {client}"
    );
    let peer = outside
        .peers
        .recv_timeout(Duration::from_secs(5))
        .context("the outside saw no client")?;
    ensure!(
        peer == OUTSIDE_GATEWAY,
        "the outside saw {peer}, not the machine's address (no masquerading)"
    );
    let _ = env.kill(server.as_ref(), Duration::from_millis(100))?;
    wait_for_leases(&env, 0).context("after the server ended")?;
    ensure!(
        nat_rules()? == Some(2),
        "after teardown: {:?}",
        nat_rules()?
    );
    drop(env);
    strata_agent::bridge::remove_all(BRIDGE).context("removing the bridge")?;
    strata_agent::bridge::remove_all(OUTSIDE_BRIDGE).context("removing the outside's bridge")?;
    ensure!(nat_rules()?.is_none(), "the table is still there");
    ensure!(
        links(BRIDGE)?.is_empty(),
        "the bridge or a veth is still there"
    );
    Ok(())
}

/// [`bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port`] in a network namespace
/// of the test's own.
pub fn host_bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port(
    helper: &Path,
) -> Result<()> {
    in_own_network_namespace(|| {
        bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port(helper)
    })
}

/// [`bridge_task_traffic_is_counted`] in a network namespace of the test's own.
pub fn host_bridge_task_traffic_is_counted(helper: &Path) -> Result<()> {
    in_own_network_namespace(|| bridge_task_traffic_is_counted(helper))
}

/// Runs `scenario` on a thread in a network namespace of its own (removed when the thread
/// ends), so that the host's namespace gets no bridge, veth or address.
fn in_own_network_namespace(scenario: impl FnOnce() -> Result<()> + Send) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .context("making a network namespace for the scenario")?;
            scenario()
        })
        .join()
        .unwrap_or_else(|_| bail!("the scenario's thread panicked"))
    })
}

/// [`bridge_tasks_reach_each_other_and_the_host_and_leave_nothing`] in a network namespace of
/// the test's own.
pub fn host_bridge_tasks_reach_each_other_and_the_host_and_leave_nothing(
    helper: &Path,
) -> Result<()> {
    in_own_network_namespace(|| {
        bridge_tasks_reach_each_other_and_the_host_and_leave_nothing(helper)
    })
}

/// [`a_restarted_agent_readopts_a_bridge_task`] in a network namespace of the test's own.
pub fn host_a_restarted_agent_readopts_a_bridge_task(helper: &Path) -> Result<()> {
    in_own_network_namespace(|| a_restarted_agent_readopts_a_bridge_task(helper))
}

/// [`bridge_tasks_the_agent_cannot_run_are_refused`] in a network namespace of the test's own.
pub fn host_bridge_tasks_the_agent_cannot_run_are_refused(helper: &Path) -> Result<()> {
    in_own_network_namespace(|| bridge_tasks_the_agent_cannot_run_are_refused(helper))
}
