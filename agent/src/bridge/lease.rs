//! Addresses of the agent's bridge subnet: the gateway (the bridge's own, the first host
//! address) and the tasks' leases, each kept in its task's run directory ([`LEASE_FILE`]) so
//! that a restarted agent re-adopts the leases of the tasks it recovers and forgets the others
//! with their run directories.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lease file in a task's run directory; its presence also tells the task's init that its
/// network namespace is wired.
pub const LEASE_FILE: &str = "network.json";

/// The largest lease file read back (a lease with its 64 published ports takes about 6 KiB).
const MAX_LEASE_FILE: usize = 16 * 1024;

/// Errors of the lease table and the lease files.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Every task address of the subnet is leased.
    #[error(
        "no free address in the bridge subnet {subnet} ({leased} leased): run fewer bridge tasks or give the agent a larger --bridge-subnet"
    )]
    Exhausted {
        /// The subnet.
        subnet: String,
        /// How many are leased.
        leased: usize,
    },
    /// A lease file could not be read or written, or says something impossible.
    #[error("lease file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// An IPv4 subnet of the agent's bridge: the network address and the prefix length (16 to 30,
/// checked by the flag's parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// The subnet of `A.B.C.D/LEN` (see [`strata_common::parse::ipv4_subnet`]).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (network, prefix) = strata_common::parse::ipv4_subnet(text)?;
        Ok(Self { network, prefix })
    }

    /// How many addresses it has, network and broadcast included.
    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The address at `offset` from the network address.
    pub fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(offset))
    }

    /// The offset of `addr` if it is a task address of the subnet (not the network, the
    /// gateway or the broadcast address).
    pub fn task_offset(&self, addr: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(addr).checked_sub(u32::from(self.network))?;
        (offset >= 2 && offset < self.size() - 1).then_some(offset)
    }

    /// The bridge's own address, the tasks' default gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.at(1)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A task's lease, as kept in its run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The task's address.
    pub address: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The default gateway (the bridge).
    pub gateway: Ipv4Addr,
    /// The host side of the task's veth pair.
    pub veth: String,
    /// The host ports forwarded to the task (absent in the lease files of earlier agents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<Published>,
}

/// A host port forwarded to one of the task's ports, as kept in its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// `tcp` or `udp`.
    pub protocol: super::nat::Protocol,
    /// The host port.
    pub host_port: u16,
    /// The task's port.
    pub container_port: u16,
}

impl Lease {
    /// Writes it to `<run_dir>/network.json` atomically.
    pub fn write(&self, run_dir: &Path) -> Result<(), LeaseError> {
        let path = run_dir.join(LEASE_FILE);
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::checkpoint::write_atomic_volatile(&path, &bytes).map_err(|e| LeaseError::File {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads `<run_dir>/network.json`: `None` when there is none.
    pub fn read(run_dir: &Path) -> Result<Option<Self>, LeaseError> {
        let path = run_dir.join(LEASE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LeaseError::File {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        if bytes.len() > MAX_LEASE_FILE {
            return Err(LeaseError::File {
                path,
                reason: format!("{} bytes, more than a lease ever takes", bytes.len()),
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LeaseError::File {
                path,
                reason: e.to_string(),
            })
    }
}

/// The leased addresses of one subnet, by offset, with the task each is leased to.
#[derive(Debug)]
pub struct Leases {
    subnet: Subnet,
    veth_prefix: String,
    leased: BTreeMap<u32, String>,
    /// Where the next search starts: addresses are reused as late as possible, so that a task
    /// that just ended does not hand its address to the next one at once.
    next: u32,
}

impl Leases {
    /// An empty table for `subnet`; veths are named `<veth_prefix><offset>`.
    pub fn new(subnet: Subnet, veth_prefix: &str) -> Self {
        Self {
            subnet,
            veth_prefix: veth_prefix.to_owned(),
            leased: BTreeMap::new(),
            next: 2,
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The name of the host side of the veth of the task at `offset`.
    pub fn veth_name(&self, offset: u32) -> String {
        format!("{}{offset}", self.veth_prefix)
    }

    /// Whether `name` is one of this table's veth names (leased or not): the name of a task
    /// address of the subnet.
    pub fn is_ours(&self, name: &str) -> bool {
        name.strip_prefix(&self.veth_prefix)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|o| {
                self.veth_name(o) == name && self.subnet.task_offset(self.subnet.at(o)) == Some(o)
            })
    }

    /// Leases a free address to `task_id`.
    pub fn lease(&mut self, task_id: &str) -> Result<Lease, LeaseError> {
        let size = self.subnet.size();
        let first = 2;
        let last = size - 2;
        let span = last - first + 1;
        for i in 0..span {
            let offset = first + (self.next - first + i) % span;
            if let std::collections::btree_map::Entry::Vacant(free) = self.leased.entry(offset) {
                free.insert(task_id.to_owned());
                self.next = if offset == last { first } else { offset + 1 };
                return Ok(self.lease_at(offset));
            }
        }
        Err(LeaseError::Exhausted {
            subnet: self.subnet.to_string(),
            leased: self.leased.len(),
        })
    }

    fn lease_at(&self, offset: u32) -> Lease {
        Lease {
            address: self.subnet.at(offset),
            prefix: self.subnet.prefix,
            gateway: self.subnet.gateway(),
            veth: self.veth_name(offset),
            published: Vec::new(),
        }
    }

    /// Takes back a lease read from a recovered task's run directory; refused when it is not of
    /// this subnet (the agent restarted with another --bridge-subnet) or is leased already.
    pub fn adopt(&mut self, task_id: &str, lease: &Lease) -> Result<(), String> {
        let offset = self
            .subnet
            .task_offset(lease.address)
            .filter(|_| lease.prefix == self.subnet.prefix)
            .ok_or_else(|| {
                format!(
                    "its address {}/{} is not a task address of the bridge subnet {}",
                    lease.address, lease.prefix, self.subnet
                )
            })?;
        if lease.veth != self.veth_name(offset) {
            return Err(format!(
                "its veth {} is not the one of address {} ({})",
                lease.veth,
                lease.address,
                self.veth_name(offset)
            ));
        }
        if let Some(other) = self.leased.get(&offset) {
            return Err(format!(
                "its address {} is leased to task {other} already",
                lease.address
            ));
        }
        self.leased.insert(offset, task_id.to_owned());
        Ok(())
    }

    /// Releases `lease` (no-op when it is not leased).
    pub fn release(&mut self, lease: &Lease) {
        if let Some(offset) = self.subnet.task_offset(lease.address) {
            self.leased.remove(&offset);
        }
    }

    /// The leased addresses with their tasks.
    pub fn leased(&self) -> Vec<(Ipv4Addr, String)> {
        self.leased
            .iter()
            .map(|(o, t)| (self.subnet.at(*o), t.clone()))
            .collect()
    }

    /// Whether the veth `name` belongs to a leased address.
    pub fn is_leased_veth(&self, name: &str) -> bool {
        self.leased.keys().any(|o| self.veth_name(*o) == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> Subnet {
        Subnet::parse(text).expect("a valid subnet")
    }

    #[test]
    fn a_subnet_has_a_gateway_and_task_addresses_between_it_and_the_broadcast() {
        let s = subnet("172.31.0.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 31, 0, 1));
        assert_eq!(s.task_offset(Ipv4Addr::new(172, 31, 0, 2)), Some(2));
        assert_eq!(s.task_offset(Ipv4Addr::new(172, 31, 0, 254)), Some(254));
        for not_a_task in [
            [172, 31, 0, 0],
            [172, 31, 0, 1],
            [172, 31, 0, 255],
            [172, 31, 1, 2],
            [10, 0, 0, 2],
        ] {
            assert_eq!(
                s.task_offset(Ipv4Addr::from(not_a_task)),
                None,
                "{not_a_task:?}"
            );
        }
        assert_eq!(s.to_string(), "172.31.0.0/24");
    }

    #[test]
    fn abuse_bad_subnets_are_refused() {
        for bad in [
            "172.31.0.1/24",
            "172.31.0.0/31",
            "172.31.0.0/8",
            "x/24",
            "172.31.0.0",
            "::/64",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn leases_are_unique_until_the_subnet_is_full_and_reused_late() {
        // A /29: 8 addresses, network, gateway and broadcast taken: 5 for tasks.
        let mut l = Leases::new(subnet("10.9.0.0/29"), "strata0v");
        let got: Vec<Lease> = (0..5).map(|i| l.lease(&format!("t{i}")).unwrap()).collect();
        let addrs: Vec<Ipv4Addr> = got.iter().map(|l| l.address).collect();
        assert_eq!(
            addrs,
            (2..=6)
                .map(|o| Ipv4Addr::new(10, 9, 0, o))
                .collect::<Vec<_>>()
        );
        assert_eq!(got[0].veth, "strata0v2");
        assert_eq!(got[0].gateway, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(got[0].prefix, 29);
        let full = l.lease("t5").unwrap_err();
        assert!(full.to_string().contains("no free address"), "{full}");
        l.release(&got[1]);
        assert_eq!(l.lease("t6").unwrap().address, Ipv4Addr::new(10, 9, 0, 3));
        // The search goes on from the last lease: .6 (after .3) before .2.
        l.release(&got[0]);
        l.release(&got[4]);
        assert_eq!(l.lease("t7").unwrap().address, Ipv4Addr::new(10, 9, 0, 6));
        assert_eq!(l.lease("t8").unwrap().address, Ipv4Addr::new(10, 9, 0, 2));
    }

    #[test]
    fn leases_survive_in_the_run_directory_and_are_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Leases::new(subnet("172.31.0.0/24"), "strata0v");
        let lease = l.lease("t1").unwrap();
        lease.write(dir.path()).unwrap();
        assert_eq!(Lease::read(dir.path()).unwrap(), Some(lease.clone()));
        // A restarted agent: an empty table adopts the lease, and does not give it again.
        let mut after = Leases::new(subnet("172.31.0.0/24"), "strata0v");
        after.adopt("t1", &lease).unwrap();
        assert!(after.is_leased_veth("strata0v2"));
        assert_ne!(after.lease("t2").unwrap().address, lease.address);
        assert!(
            after
                .adopt("t3", &lease)
                .unwrap_err()
                .contains("leased to task t1")
        );
        // Another subnet after a restart: the lease is not ours.
        let mut other = Leases::new(subnet("10.1.0.0/24"), "strata0v");
        assert!(
            other
                .adopt("t1", &lease)
                .unwrap_err()
                .contains("not a task address")
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Lease::read(empty.path()).unwrap(), None);
    }

    #[test]
    fn abuse_a_tampered_lease_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEASE_FILE), "{\"address\":1}").unwrap();
        assert!(Lease::read(dir.path()).is_err());
        std::fs::write(dir.path().join(LEASE_FILE), vec![b' '; 20_000]).unwrap();
        assert!(
            Lease::read(dir.path())
                .unwrap_err()
                .to_string()
                .contains("more than a lease")
        );
        let mut l = Leases::new(subnet("172.31.0.0/24"), "strata0v");
        let forged = Lease {
            address: Ipv4Addr::new(172, 31, 0, 9),
            prefix: 24,
            gateway: Ipv4Addr::new(172, 31, 0, 1),
            veth: "eth0".to_owned(),
            published: Vec::new(),
        };
        assert!(
            l.adopt("t", &forged)
                .unwrap_err()
                .contains("is not the one of address")
        );
    }

    #[test]
    fn veth_names_are_recognised_exactly() {
        let l = Leases::new(subnet("172.31.0.0/24"), "strata0v");
        assert!(l.is_ours("strata0v17"));
        assert!(!l.is_ours("strata0v017"));
        assert!(!l.is_ours("strata0"));
        assert!(!l.is_ours("strata0vx"));
        // Not a task address of the /24: the gateway's offset, the broadcast's, beyond.
        for other in ["strata0v1", "strata0v255", "strata0v300"] {
            assert!(!l.is_ours(other), "{other}");
        }
    }
}
