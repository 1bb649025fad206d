//! Bridge networking: the agent's bridge (`--bridge-name`, `strata0` by default) with the first
//! address of its subnet (`--bridge-subnet`), and for each bridge task an address of that subnet
//! leased by the agent ([`lease`], kept in the task's run directory), a veth pair whose host side
//! is on the bridge and whose peer (`eth0`) is created in the task's network namespace, and in
//! there the address, loopback and eth0 up and a default route through the bridge
//! ([`netlink`]). The task's init waits in its namespace until that is done (see
//! `containerizer::supervisor`).
//!
//! What goes when: the veth pair goes with the task's network namespace (the kernel removes a
//! veth pair when either end's namespace is destroyed), and the agent also removes the host side
//! when the task ends; the lease goes from the table then and from disk with the run directory;
//! a restarted agent adopts the leases of the tasks it recovers and removes every veth of its
//! bridge without one ([`BridgeControl::sweep`]); `--remove-cgroups` removes the veths and the
//! bridge ([`remove_all`]).

pub mod lease;
pub mod nat;
pub mod netlink;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

pub use lease::{LEASE_FILE, Lease, LeaseError, Leases, Published, Subnet};
use nat::{Forward, NatError, NatTable};
use netlink::{NetlinkError, Rtnl};

/// The name of a bridge task's interface in its namespace.
pub const TASK_INTERFACE: &str = "eth0";

/// Errors of bridge networking.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The bridge could not be made or set up.
    #[error("bridge {bridge}: {source}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// The netlink error.
        source: NetlinkError,
    },
    /// A task's veth, address or route could not be set up.
    #[error("task {task_id}: cannot wire its network namespace to bridge {bridge}: {source}")]
    Wire {
        /// The task.
        task_id: String,
        /// The bridge.
        bridge: String,
        /// The netlink error.
        source: NetlinkError,
    },
    /// The NAT table (masquerading, port mappings) could not be written.
    #[error("bridge {bridge}: {source}")]
    Nat {
        /// The bridge.
        bridge: String,
        /// The nf_tables error.
        source: NatError,
    },
    /// The task's interface could not be given what it needs (its egress limit).
    #[error("task {task_id}: {reason}")]
    Interface {
        /// The task.
        task_id: String,
        /// What failed.
        reason: String,
    },
    /// A task asks for port mappings on an agent whose kernel cannot forward them.
    #[error("task {task_id}: it maps host ports, and this agent cannot forward them: {reason}")]
    NatUnavailable {
        /// The task.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// No address could be leased, or the lease could not be kept.
    #[error("task {task_id}: {source}")]
    Lease {
        /// The task.
        task_id: String,
        /// The lease error.
        source: LeaseError,
    },
}

/// The prefix of the veths of bridge `name`.
fn veth_prefix(name: &str) -> String {
    format!("{name}v")
}

/// The agent's bridge, its leases and its NAT table.
#[derive(Debug)]
pub struct BridgeControl {
    name: String,
    index: u32,
    leases: Leases,
    /// The NAT table, or why there is none (masquerading and port mappings are then off).
    nat: Result<NatTable, String>,
    /// The published ports of the wired (or recovered) tasks, by task.
    published: BTreeMap<String, (Ipv4Addr, Vec<Published>)>,
}

impl BridgeControl {
    /// Makes the bridge `name` (or takes the one there) with the gateway address of `subnet`
    /// and brings it up; turns forwarding on (`<proc_root>/sys/net/ipv4/...`) and writes the NAT
    /// table with masquerading and no mappings yet (recovery's [`Self::sweep`] puts back those
    /// of the recovered tasks). Without NAT the bridge still runs, see [`Self::nat_unavailable`].
    pub fn start(name: &str, subnet: Subnet, proc_root: &Path) -> Result<Self, BridgeError> {
        let err = |source| BridgeError::Bridge {
            bridge: name.to_owned(),
            source,
        };
        let mut nl = Rtnl::open().map_err(err)?;
        let index = nl
            .ensure_bridge(name, subnet.gateway(), subnet.prefix)
            .map_err(err)?;
        let nat = match nat::enable_forwarding(proc_root, name) {
            Ok(turned_on) => {
                if turned_on {
                    tracing::info!(bridge = name, "turned IPv4 forwarding on for bridge tasks");
                }
                let table = NatTable::new(name, subnet);
                table.sync(&[]).map(|()| table).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!(
                "cannot turn IPv4 forwarding on under {}: {e}",
                proc_root.display()
            )),
        };
        Ok(Self {
            name: name.to_owned(),
            index,
            leases: Leases::new(subnet, &veth_prefix(name)),
            nat,
            published: BTreeMap::new(),
        })
    }

    /// Why masquerading and port mappings are off, if they are.
    pub fn nat_unavailable(&self) -> Option<&str> {
        self.nat.as_ref().err().map(String::as_str)
    }

    /// Writes the NAT table for the published ports known now.
    fn sync_nat(&self) -> Result<(), BridgeError> {
        let Ok(table) = &self.nat else {
            return Ok(());
        };
        let mut forwards: Vec<Forward> = self
            .published
            .values()
            .flat_map(|(address, ports)| {
                ports.iter().map(|p| Forward {
                    protocol: p.protocol,
                    host_port: p.host_port,
                    address: *address,
                    container_port: p.container_port,
                })
            })
            .collect();
        forwards.sort();
        table.sync(&forwards).map_err(|source| BridgeError::Nat {
            bridge: self.name.clone(),
            source,
        })
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.leases.subnet()
    }

    /// Leases an address to `task_id`, with the host ports it publishes (refused when this
    /// agent cannot forward them).
    pub fn lease(
        &mut self,
        task_id: &str,
        published: Vec<Published>,
    ) -> Result<Lease, BridgeError> {
        if !published.is_empty()
            && let Err(reason) = &self.nat
        {
            return Err(BridgeError::NatUnavailable {
                task_id: task_id.to_owned(),
                reason: reason.clone(),
            });
        }
        let mut lease = self
            .leases
            .lease(task_id)
            .map_err(|source| BridgeError::Lease {
                task_id: task_id.to_owned(),
                source,
            })?;
        lease.published = published;
        Ok(lease)
    }

    /// Wires the network namespace of process `pid` (the task's init) for `lease`: the veth
    /// pair, and in the namespace the address, the interface up and the default route; then
    /// `then` (what else the task's interface needs: its egress limit); the lease's published
    /// ports into the NAT table; last it writes the lease into `run_dir`, which tells the init
    /// to go on. A veth left from an earlier use of the address is replaced.
    pub fn wire(
        &mut self,
        task_id: &str,
        lease: &Lease,
        pid: u32,
        run_dir: &Path,
        then: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), BridgeError> {
        let err = |source| BridgeError::Wire {
            task_id: task_id.to_owned(),
            bridge: self.name.clone(),
            source,
        };
        let mut nl = Rtnl::open().map_err(err)?;
        nl.delete(&lease.veth).map_err(err)?;
        nl.create_veth(&lease.veth, self.index, TASK_INTERFACE, pid)
            .map_err(err)?;
        let configured = netlink::configure_in_namespace(
            pid,
            TASK_INTERFACE,
            lease.address,
            lease.prefix,
            lease.gateway,
        );
        if let Err(e) = configured {
            let _ = nl.delete(&lease.veth);
            return Err(err(e));
        }
        if let Err(reason) = then() {
            let _ = nl.delete(&lease.veth);
            return Err(BridgeError::Interface {
                task_id: task_id.to_owned(),
                reason,
            });
        }
        if !lease.published.is_empty() {
            self.published
                .insert(task_id.to_owned(), (lease.address, lease.published.clone()));
            if let Err(e) = self.sync_nat() {
                self.published.remove(task_id);
                let _ = nl.delete(&lease.veth);
                return Err(e);
            }
        }
        lease.write(run_dir).map_err(|source| BridgeError::Lease {
            task_id: task_id.to_owned(),
            source,
        })
    }

    /// Takes back the lease of a recovered task (its published ports go back into the NAT
    /// table at [`Self::sweep`]).
    pub fn adopt(&mut self, task_id: &str, lease: &Lease) -> Result<(), String> {
        self.leases.adopt(task_id, lease)?;
        if !lease.published.is_empty() {
            self.published
                .insert(task_id.to_owned(), (lease.address, lease.published.clone()));
        }
        Ok(())
    }

    /// Ends a task's lease: removes its veth (if its namespace has not taken it already) and
    /// frees its address.
    pub fn release(&mut self, task_id: &str, lease: &Lease) {
        match Rtnl::open().and_then(|mut nl| nl.delete(&lease.veth)) {
            Ok(removed) => {
                tracing::debug!(task_id, veth = %lease.veth, address = %lease.address, removed, "bridge lease released")
            }
            Err(e) => {
                tracing::warn!(task_id, veth = %lease.veth, error = %e, "cannot remove the task's veth")
            }
        }
        self.leases.release(lease);
        if self.published.remove(task_id).is_some()
            && let Err(e) = self.sync_nat()
        {
            tracing::warn!(task_id, error = %e, "cannot remove the task's port mappings");
        }
    }

    /// Removes every veth of this bridge whose address is not leased (left by tasks an earlier
    /// agent ran and this one did not recover) and rewrites the NAT table with the published
    /// ports of the tasks recovered; returns the veths removed.
    pub fn sweep(&mut self) -> Vec<String> {
        if let Err(e) = self.sync_nat() {
            tracing::warn!(bridge = %self.name, error = %e, "cannot write the port mappings of the recovered tasks");
        }
        let mut removed = Vec::new();
        let Ok(mut nl) = Rtnl::open() else {
            return removed;
        };
        let links = nl.links().unwrap_or_default();
        for (_, name) in links {
            if self.leases.is_ours(&name) && !self.leases.is_leased_veth(&name) {
                match nl.delete(&name) {
                    Ok(true) => removed.push(name),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(veth = %name, error = %e, "cannot remove a stale veth")
                    }
                }
            }
        }
        removed
    }

    /// The leased addresses and their tasks; for tests and diagnostics.
    pub fn leased(&self) -> Vec<(Ipv4Addr, String)> {
        self.leases.leased()
    }
}

/// Removes the bridge `name`, every veth of it and its NAT table (`--remove-cgroups`); returns
/// what was removed.
pub fn remove_all(name: &str) -> Result<Vec<String>, BridgeError> {
    let mut removed = Vec::new();
    // The links go even when the table cannot (a kernel without nf_tables has none).
    let table = nat::remove_table(name);
    if let Ok(true) = table {
        removed.push(format!("nf_tables table ip {name}"));
    }
    let err = |source| BridgeError::Bridge {
        bridge: name.to_owned(),
        source,
    };
    let mut nl = Rtnl::open().map_err(err)?;
    let prefix = veth_prefix(name);
    for (_, link) in nl.links().map_err(err)? {
        let ours = link
            .strip_prefix(&prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if (ours || link == name) && nl.delete(&link).map_err(err)? {
            removed.push(link);
        }
    }
    match table {
        Ok(_) | Err(NatError::Socket(_)) => Ok(removed),
        Err(source) => Err(BridgeError::Nat {
            bridge: name.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A thread in a network namespace of its own (a task's stand-in): its tid names the
    /// namespace; it runs what it is sent there, and the namespace goes when it ends.
    struct NsThread {
        tid: u32,
        jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
        handle: std::thread::JoinHandle<()>,
    }

    impl NsThread {
        fn start() -> Option<Self> {
            let (tid_tx, tid_rx) = mpsc::channel();
            let (jobs, jobs_rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
            let handle = std::thread::spawn(move || {
                if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    let _ = tid_tx.send(None);
                    return;
                }
                let _ = tid_tx.send(Some(nix::unistd::gettid().as_raw() as u32));
                for job in jobs_rx {
                    job();
                }
            });
            let tid = tid_rx.recv().ok().flatten()?;
            Some(Self { tid, jobs, handle })
        }

        fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let (tx, rx) = mpsc::channel();
            self.jobs
                .send(Box::new(move || {
                    let _ = tx.send(f());
                }))
                .expect("the namespace thread runs");
            rx.recv().expect("the job ran")
        }

        fn end(self) {
            drop(self.jobs);
            let _ = self.handle.join();
        }
    }

    fn echo_once(listener: TcpListener) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            }
        })
    }

    fn ping(addr: std::net::SocketAddr) -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        (&buf == b"ping")
            .then_some(())
            .ok_or("wrong echo".to_owned())
    }

    /// Needs root. Everything happens in namespaces the test makes: a "host" namespace with the
    /// bridge, and two "task" namespaces wired to it as the agent wires a task's.
    #[test]
    fn root_bridge_tasks_get_addresses_reach_each_other_and_the_host_and_leave_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make network namespaces");
            return;
        }
        let Some(host) = NsThread::start() else {
            eprintln!("skipped: cannot make a network namespace here");
            return;
        };
        let subnet = Subnet::parse("10.77.0.0/24").unwrap();
        let control = host.run(move || {
            BridgeControl::start("stbt0", subnet, Path::new("/proc")).map_err(|e| e.to_string())
        });
        let mut control = match control {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: no bridge in this kernel: {e}");
                host.end();
                return;
            }
        };
        let (a, b) = (NsThread::start().unwrap(), NsThread::start().unwrap());
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let lease_a = control.lease("a", Vec::new()).unwrap();
        let lease_b = control.lease("b", Vec::new()).unwrap();
        assert_eq!(lease_a.address, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(lease_b.address, Ipv4Addr::new(10, 77, 0, 3));
        let control = std::sync::Arc::new(std::sync::Mutex::new(control));
        for (lease, tid, dir) in [
            (&lease_a, a.tid, dirs.0.path()),
            (&lease_b, b.tid, dirs.1.path()),
        ] {
            let (c, lease, dir) = (control.clone(), lease.clone(), dir.to_path_buf());
            host.run(move || {
                c.lock()
                    .unwrap()
                    .wire("t", &lease, tid, &dir, &mut || Ok(()))
            })
            .expect("the task's namespace is wired");
        }
        assert_eq!(Lease::read(dirs.0.path()).unwrap(), Some(lease_a.clone()));

        // A listens on its address; B reaches it; both reach a listener on the host's side.
        let listener_a = a.run(|| TcpListener::bind("0.0.0.0:8080")).unwrap();
        let served_a = echo_once(listener_a);
        let gateway = subnet.gateway();
        let listener_host = host.run(move || TcpListener::bind((gateway, 0))).unwrap();
        let host_port = listener_host.local_addr().unwrap().port();
        let served_host = echo_once(listener_host);
        let to_a = std::net::SocketAddr::from((lease_a.address, 8080));
        b.run(move || ping(to_a))
            .expect("task b reaches task a by address");
        b.run(move || ping((gateway, host_port).into()))
            .expect("task b reaches a listener on the host's side of the bridge");
        served_a.join().unwrap();
        served_host.join().unwrap();
        // The task's namespace has its address and a default route through the bridge.
        let routes = b.run(|| std::fs::read_to_string("/proc/self/net/route").unwrap_or_default());
        assert!(
            routes.lines().any(|l| l.starts_with("eth0\t00000000\t")),
            "a default route on eth0: {routes}"
        );

        // Teardown: the veths go, the addresses are free again.
        for (task, lease) in [("a", lease_a.clone()), ("b", lease_b.clone())] {
            let c = control.clone();
            host.run(move || c.lock().unwrap().release(task, &lease));
        }
        assert!(control.lock().unwrap().leased().is_empty());
        let links = host.run(|| {
            Rtnl::open()
                .and_then(|mut nl| nl.links())
                .map_err(|e| e.to_string())
        });
        let names: Vec<String> = links.unwrap().into_iter().map(|(_, n)| n).collect();
        assert!(
            !names.iter().any(|n| n.starts_with("stbt0v")),
            "no veth left: {names:?}"
        );
        // A veth whose task was not recovered is swept; then the bridge goes with remove_all.
        let c = NsThread::start().unwrap();
        let stale = lease_b.clone();
        let (ctl, dir, tid) = (control.clone(), dirs.1.path().to_path_buf(), c.tid);
        host.run(move || {
            ctl.lock()
                .unwrap()
                .wire("c", &stale, tid, &dir, &mut || Ok(()))
        })
        .unwrap();
        let ctl = control.clone();
        let swept = host.run(move || ctl.lock().unwrap().sweep());
        assert_eq!(swept, vec![lease_b.veth.clone()]);
        let removed = host
            .run(|| remove_all("stbt0").map_err(|e| e.to_string()))
            .unwrap();
        assert_eq!(
            removed,
            vec!["nf_tables table ip stbt0".to_owned(), "stbt0".to_owned()]
        );
        for t in [a, b, c, host] {
            t.end();
        }
    }

    /// Echoes `n` connections; sends back each client's address as the listener saw it.
    fn serve_peers(listener: TcpListener, n: usize) -> std::thread::JoinHandle<Vec<Ipv4Addr>> {
        std::thread::spawn(move || {
            let mut peers = Vec::new();
            for _ in 0..n {
                let Ok((mut s, peer)) = listener.accept() else {
                    break;
                };
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
                if let std::net::IpAddr::V4(a) = peer.ip() {
                    peers.push(a);
                }
            }
            peers
        })
    }

    /// Needs root. A "host" namespace with the bridge and its NAT table; an "outside" namespace
    /// routed through the host (on a second bridge, as a machine of the datacenter would be);
    /// a task namespace with host port 31000 mapped to its 8080.
    #[test]
    fn root_bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make network namespaces");
            return;
        }
        let Some(host) = NsThread::start() else {
            eprintln!("skipped: cannot make a network namespace here");
            return;
        };
        let subnet = Subnet::parse("10.78.0.0/24").unwrap();
        let started = host.run(move || {
            BridgeControl::start("stnat0", subnet, Path::new("/proc")).map_err(|e| e.to_string())
        });
        let control = match started {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: no bridge in this kernel: {e}");
                host.end();
                return;
            }
        };
        if let Some(why) = control.nat_unavailable() {
            eprintln!("skipped: no nf_tables NAT in this kernel: {why}");
            host.end();
            return;
        }
        assert_eq!(host.run(|| nat::rule_count("stnat0").unwrap()), Some(2));
        // The outside: 192.168.99.2, routed through the host's 192.168.99.1.
        let outside = NsThread::start().unwrap();
        let outside_tid = outside.tid;
        host.run(move || -> Result<(), NetlinkError> {
            let mut nl = Rtnl::open()?;
            let lo = nl.index("lo")?.unwrap_or(1);
            nl.set_up(lo, "loopback")?;
            let index = nl.ensure_bridge("stout0", Ipv4Addr::new(192, 168, 99, 1), 24)?;
            nl.create_veth("stoutv1", index, TASK_INTERFACE, outside_tid)?;
            netlink::configure_in_namespace(
                outside_tid,
                TASK_INTERFACE,
                Ipv4Addr::new(192, 168, 99, 2),
                24,
                Ipv4Addr::new(192, 168, 99, 1),
            )
        })
        .expect("the outside namespace is wired");

        let task = NsThread::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut control = control;
        let published = vec![Published {
            protocol: nat::Protocol::Tcp,
            host_port: 31000,
            container_port: 8080,
        }];
        let lease = control.lease("t", published).unwrap();
        let control = std::sync::Arc::new(std::sync::Mutex::new(control));
        let (c, l, d, tid) = (
            control.clone(),
            lease.clone(),
            dir.path().to_path_buf(),
            task.tid,
        );
        host.run(move || c.lock().unwrap().wire("t", &l, tid, &d, &mut || Ok(())))
            .expect("the task's namespace is wired with its mapping");
        assert_eq!(host.run(|| nat::rule_count("stnat0").unwrap()), Some(4));
        assert_eq!(Lease::read(dir.path()).unwrap(), Some(lease.clone()));

        // The mapped port, from the outside, from the host's own address and from 127.0.0.1.
        let listener = task.run(|| TcpListener::bind("0.0.0.0:8080")).unwrap();
        let served = serve_peers(listener, 3);
        let outside_to = std::net::SocketAddr::from(([192, 168, 99, 1], 31000));
        outside
            .run(move || ping(outside_to))
            .expect("the outside reaches the task on its mapped host port");
        let gateway = subnet.gateway();
        host.run(move || ping((gateway, 31000).into()))
            .expect("the host reaches the task on its mapped port at its own address");
        host.run(|| ping(([127, 0, 0, 1], 31000).into()))
            .expect("the host reaches the task on its mapped port at 127.0.0.1");
        let peers = served.join().unwrap();
        assert_eq!(
            peers,
            vec![Ipv4Addr::new(192, 168, 99, 2), gateway, gateway],
            "the outside's address is kept; the host's loopback source is masqueraded"
        );

        // Masquerading: the task reaches the outside, which sees the host's address.
        let out_listener = outside.run(|| TcpListener::bind("0.0.0.0:9000")).unwrap();
        let out_served = serve_peers(out_listener, 1);
        let to_outside = std::net::SocketAddr::from(([192, 168, 99, 2], 9000));
        task.run(move || ping(to_outside))
            .expect("the task reaches the outside through the host");
        assert_eq!(
            out_served.join().unwrap(),
            vec![Ipv4Addr::new(192, 168, 99, 1)],
            "the task's address is masqueraded"
        );

        // A restarted agent: its table has no mapping until recovery adopts the task.
        let restarted = host
            .run(move || {
                BridgeControl::start("stnat0", subnet, Path::new("/proc"))
                    .map_err(|e| e.to_string())
            })
            .unwrap();
        assert_eq!(host.run(|| nat::rule_count("stnat0").unwrap()), Some(2));
        let restarted = std::sync::Arc::new(std::sync::Mutex::new(restarted));
        let (c, l) = (restarted.clone(), lease.clone());
        host.run(move || {
            let mut c = c.lock().unwrap();
            c.adopt("t", &l).unwrap();
            c.sweep()
        });
        assert_eq!(host.run(|| nat::rule_count("stnat0").unwrap()), Some(4));
        let listener = task.run(|| TcpListener::bind("0.0.0.0:8080")).unwrap();
        let served = serve_peers(listener, 1);
        outside
            .run(move || ping(outside_to))
            .expect("the mapping holds again after recovery");
        served.join().unwrap();

        // Teardown: the mapping goes, masquerading stays; remove_all takes the table.
        let (c, l) = (restarted.clone(), lease.clone());
        host.run(move || c.lock().unwrap().release("t", &l));
        assert_eq!(host.run(|| nat::rule_count("stnat0").unwrap()), Some(2));
        let refused = outside.run(move || ping(outside_to));
        assert!(refused.is_err(), "no forward after teardown");
        let removed = host
            .run(|| remove_all("stnat0").map_err(|e| e.to_string()))
            .unwrap();
        assert!(
            removed.contains(&"nf_tables table ip stnat0".to_owned()),
            "{removed:?}"
        );
        assert_eq!(host.run(|| nat::rule_count("stnat0").unwrap()), None);
        for t in [task, outside, host] {
            t.end();
        }
    }
}
