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
pub mod netlink;

pub use lease::{LEASE_FILE, Lease, LeaseError, Leases, Subnet};
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

/// The agent's bridge and its leases.
#[derive(Debug)]
pub struct BridgeControl {
    name: String,
    index: u32,
    leases: Leases,
}

impl BridgeControl {
    /// Makes the bridge `name` (or takes the one there) with the gateway address of `subnet`
    /// and brings it up.
    pub fn start(name: &str, subnet: Subnet) -> Result<Self, BridgeError> {
        let err = |source| BridgeError::Bridge {
            bridge: name.to_owned(),
            source,
        };
        let mut nl = Rtnl::open().map_err(err)?;
        let index = nl
            .ensure_bridge(name, subnet.gateway(), subnet.prefix)
            .map_err(err)?;
        Ok(Self {
            name: name.to_owned(),
            index,
            leases: Leases::new(subnet, &veth_prefix(name)),
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

    /// Leases an address to `task_id`.
    pub fn lease(&mut self, task_id: &str) -> Result<Lease, BridgeError> {
        self.leases
            .lease(task_id)
            .map_err(|source| BridgeError::Lease {
                task_id: task_id.to_owned(),
                source,
            })
    }

    /// Wires the network namespace of process `pid` (the task's init) for `lease`: the veth
    /// pair, and in the namespace the address, the interface up and the default route; then
    /// writes the lease into `run_dir`, which tells the init to go on. A veth left from an
    /// earlier use of the address is replaced.
    pub fn wire(
        &self,
        task_id: &str,
        lease: &Lease,
        pid: u32,
        run_dir: &std::path::Path,
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
        lease.write(run_dir).map_err(|source| BridgeError::Lease {
            task_id: task_id.to_owned(),
            source,
        })
    }

    /// Takes back the lease of a recovered task.
    pub fn adopt(&mut self, task_id: &str, lease: &Lease) -> Result<(), String> {
        self.leases.adopt(task_id, lease)
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
    }

    /// Removes every veth of this bridge whose address is not leased (left by tasks an earlier
    /// agent ran and this one did not recover); returns their names.
    pub fn sweep(&mut self) -> Vec<String> {
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
    pub fn leased(&self) -> Vec<(std::net::Ipv4Addr, String)> {
        self.leases.leased()
    }
}

/// Removes the bridge `name` and every veth of it (`--remove-cgroups`); returns what was
/// removed.
pub fn remove_all(name: &str) -> Result<Vec<String>, BridgeError> {
    let err = |source| BridgeError::Bridge {
        bridge: name.to_owned(),
        source,
    };
    let mut nl = Rtnl::open().map_err(err)?;
    let prefix = veth_prefix(name);
    let mut removed = Vec::new();
    for (_, link) in nl.links().map_err(err)? {
        let ours = link
            .strip_prefix(&prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if (ours || link == name) && nl.delete(&link).map_err(err)? {
            removed.push(link);
        }
    }
    Ok(removed)
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
        let control =
            host.run(move || BridgeControl::start("stbt0", subnet).map_err(|e| e.to_string()));
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
        let lease_a = control.lease("a").unwrap();
        let lease_b = control.lease("b").unwrap();
        assert_eq!(lease_a.address, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(lease_b.address, Ipv4Addr::new(10, 77, 0, 3));
        let control = std::sync::Arc::new(std::sync::Mutex::new(control));
        for (lease, tid, dir) in [
            (&lease_a, a.tid, dirs.0.path()),
            (&lease_b, b.tid, dirs.1.path()),
        ] {
            let (c, lease, dir) = (control.clone(), lease.clone(), dir.to_path_buf());
            host.run(move || c.lock().unwrap().wire("t", &lease, tid, &dir))
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
        host.run(move || ctl.lock().unwrap().wire("c", &stale, tid, &dir))
            .unwrap();
        let ctl = control.clone();
        let swept = host.run(move || ctl.lock().unwrap().sweep());
        assert_eq!(swept, vec![lease_b.veth.clone()]);
        let removed = host
            .run(|| remove_all("stbt0").map_err(|e| e.to_string()))
            .unwrap();
        assert_eq!(removed, vec!["stbt0".to_owned()]);
        for t in [a, b, c, host] {
            t.end();
        }
    }
}
