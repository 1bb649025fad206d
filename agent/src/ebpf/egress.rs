//! Egress bandwidth limits with Earliest Departure Time (EDT): the tc program of
//! `agent-ebpf/src/egress.rs` on the egress of the agent's egress device, the `fq` qdisc that
//! paces by the departure times it sets, and the map of each limited task's rate
//! ([`EgressControl`]).
//!
//! The device is the uplink in host mode (the device of the default route, or `--net-egress-device`);
//! bridge tasks get the same program, sharing the map, on their own `eth0` inside their namespace
//! ([`EgressControl::attach_in_namespace`]), where their packets still carry their socket.
//!
//! Attachment: clsact (aya's `qdisc_add_clsact`) and the classifier at its egress hook, through a
//! tcx bpf_link on kernels 6.6 and later (it goes with the agent), else a netlink filter (which
//! outlives a killed agent: [`EgressControl::load`] removes a previous agent's filter first, and
//! dropping the control detaches its own). The map is not pinned: a restarted agent starts with
//! an empty one and writes the recovered tasks' limits again, so nothing stale survives a
//! restart, nor `--remove-cgroups`.
//!
//! The root qdisc: the agent replaces it with fq (mq with fq children on multi-queue devices)
//! and leaves fq there when it stops. fq is a sound general-purpose qdisc that paces nothing
//! without departure times, so leaving it costs nothing, whereas restoring the old root on every
//! stop and replacing it again at each start would flush the device's queues twice per restart
//! while tasks keep running. The kind it replaced is logged at start-up.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::include_bytes_aligned;
use aya::maps::{HashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::tc::{self, TcAttachType, TcError};
use aya::programs::tc::{SchedClassifierLink, SchedClassifierLinkId};
use aya::programs::{ProgramError, SchedClassifier};
use strata_agent_common::{
    CgroupId, EDT_WORDS, EdtState, MAP_EGRESS_DROPS, MAP_EGRESS_EDT, NET_COUNTER_WORDS,
    NetCounters, PROG_EGRESS_EDT,
};

use super::qdisc::{self, QdiscError};
use super::{EbpfError, cgroup_id, embedded, error_chain, permission_hint};

/// The egress object built by `build.rs` from `agent-ebpf/src/egress.rs` (empty when built
/// without it).
pub(super) static EGRESS_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strata-egress-ebpf"));

/// The default horizon: a packet that would leave more than this after it was sent is dropped.
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(2);

/// How far a task's departure timeline may lag behind the clock (see
/// [`strata_agent_common::EdtState::burst_ns`]): a sender that was late (waiting for a CPU, or
/// for TCP's small-queue budget) catches up on at most this much of its rate at once.
pub const BURST: Duration = Duration::from_millis(5);

/// Errors of egress limits.
#[derive(Debug, thiserror::Error)]
pub enum EgressControlError {
    /// The object is missing or cannot be loaded (see [`EbpfError`]).
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The device does not exist or cannot be read.
    #[error("device {device}: {reason}")]
    Device {
        /// The device.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// fq could not be set on the device.
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    /// The program could not be loaded or attached.
    #[error("cannot {action} egress program {PROG_EGRESS_EDT} on device {device}: {reason}")]
    Program {
        /// What failed: "load" or "attach".
        action: &'static str,
        /// The device.
        device: String,
        /// The loader's error and what is missing.
        reason: String,
    },
    /// A task's limit is not a usable rate.
    #[error("task {task_id}: egress limit of {mbps} Mbit/s is not a usable rate")]
    Rate {
        /// The task.
        task_id: String,
        /// The rate asked for.
        mbps: f64,
    },
    /// A map could not be written.
    #[error("cannot write eBPF map {map} for cgroup {cgroup}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The cgroup whose entry was written.
        cgroup: PathBuf,
        /// The loader's error.
        source: MapError,
    },
}

/// The device of the default IPv4 route in `<proc_root>/net/route`, if there is one.
#[must_use]
pub fn default_route_device(proc_root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join("net/route")).ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}

/// The link speed of `device` in Mbit/s from `<sys_root>/class/net/<device>/speed`; `None`
/// when unknown (virtual devices report -1 or nothing).
#[must_use]
pub fn link_speed_mbps(sys_root: &Path, device: &str) -> Option<u64> {
    let text =
        std::fs::read_to_string(sys_root.join("class/net").join(device).join("speed")).ok()?;
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|&s| s > 0)
        .map(|s| s as u64)
}

/// The number of transmit queues of `device` (`<sys_root>/class/net/<device>/queues/tx-*`).
#[must_use]
pub fn tx_queues(sys_root: &Path, device: &str) -> u32 {
    std::fs::read_dir(sys_root.join("class/net").join(device).join("queues"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("tx-"))
                .count()
        })
        .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX).max(1))
}

/// A task's EDT state for `mbps`; `task_id` gives the error its context.
pub fn task_egress_state(
    task_id: &str,
    mbps: f64,
    horizon: Duration,
) -> Result<EdtState, EgressControlError> {
    let horizon_ns = u64::try_from(horizon.as_nanos()).unwrap_or(u64::MAX);
    let burst_ns = u64::try_from(BURST.as_nanos()).unwrap_or(u64::MAX);
    EdtState::new(mbps, horizon_ns, burst_ns).ok_or_else(|| EgressControlError::Rate {
        task_id: task_id.to_owned(),
        mbps,
    })
}

/// Removes the EDT program a previous agent left on `device`'s egress as a netlink filter (tcx
/// links go with their agent); true when there was one. For `--remove-cgroups` and shutdown.
pub fn remove_egress_program(device: &str) -> Result<bool, EgressControlError> {
    match tc::qdisc_detach_program(device, TcAttachType::Egress, PROG_EGRESS_EDT) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(EgressControlError::Program {
            action: "detach",
            device: device.to_owned(),
            reason: error_chain(&e),
        }),
    }
}

type LimitMap = HashMap<MapData, CgroupId, [u64; EDT_WORDS]>;
type DropMap = PerCpuHashMap<MapData, CgroupId, [u64; NET_COUNTER_WORDS]>;

/// The EDT program on a device's egress, fq on the device, and the map of the tasks' limits.
pub struct EgressControl {
    /// Owns the program and its link; dropping it detaches the program.
    object: aya::Ebpf,
    device: String,
    replaced: Option<String>,
    horizon: Duration,
    limits: LimitMap,
    drops: DropMap,
    /// The program's tcx links on bridge tasks' `eth0` (inside their namespaces), by cgroup;
    /// dropping one detaches it. (A netlink filter is not kept: it lives with the namespace,
    /// and detaching it from the agent's namespace would name another device by its index.)
    task_links: std::collections::HashMap<CgroupId, SchedClassifierLink>,
}

impl fmt::Debug for EgressControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressControl")
            .field("device", &self.device)
            .field("horizon", &self.horizon)
            .finish_non_exhaustive()
    }
}

impl EgressControl {
    /// Sets fq on `device` (transmit queues read under `sys_root`), adds clsact, removes a
    /// previous agent's program from its egress and attaches the EDT program there. Fails,
    /// saying why, when the device is missing or the kernel has no fq, clsact or tc BPF: egress
    /// limits are then unavailable.
    pub fn load(
        device: &str,
        sys_root: &Path,
        horizon: Duration,
    ) -> Result<Self, EgressControlError> {
        let index =
            nix::net::if_::if_nametoindex(device).map_err(|e| EgressControlError::Device {
                device: device.to_owned(),
                reason: format!("no such network device ({e})"),
            })?;
        let object_bytes = embedded(EGRESS_OBJECT)?;
        let replaced = qdisc::root_kind(device, index)?;
        qdisc::set_fq(device, index, tx_queues(sys_root, device))?;
        let mut object = aya::Ebpf::load(object_bytes).map_err(|e| EbpfError::LoadObject {
            detail: error_chain(&e),
            hint: permission_hint(&e),
        })?;
        let map_err = |map, source| EgressControlError::Map {
            map,
            cgroup: PathBuf::from(device),
            source,
        };
        let missing = |map: &'static str| MapError::InvalidName {
            name: map.to_owned(),
        };
        let limits: LimitMap = object
            .take_map(MAP_EGRESS_EDT)
            .ok_or_else(|| map_err(MAP_EGRESS_EDT, missing(MAP_EGRESS_EDT)))?
            .try_into()
            .map_err(|e| map_err(MAP_EGRESS_EDT, e))?;
        let drops: DropMap = object
            .take_map(MAP_EGRESS_DROPS)
            .ok_or_else(|| map_err(MAP_EGRESS_DROPS, missing(MAP_EGRESS_DROPS)))?
            .try_into()
            .map_err(|e| map_err(MAP_EGRESS_DROPS, e))?;
        let program_err =
            |action, e: &(dyn std::error::Error + 'static)| EgressControlError::Program {
                action,
                device: device.to_owned(),
                reason: format!("{}{}", error_chain(e), permission_hint(e)),
            };
        // clsact: needed for a netlink filter (kernels before 6.6); harmless with tcx.
        let clsact = match tc::qdisc_add_clsact(device) {
            Ok(()) => None,
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(nix::libc::EEXIST) => None,
            Err(e) => Some(error_chain(&e)),
        };
        // A previous agent's netlink filter (it outlives a killed agent); none is fine.
        match tc::qdisc_detach_program(device, TcAttachType::Egress, PROG_EGRESS_EDT) {
            Ok(()) => tracing::info!(device, "removed a previous agent's egress program"),
            Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(device, error = %error_chain(&e), "no previous egress program to remove")
            }
        }
        let program: &mut SchedClassifier = object
            .program_mut(PROG_EGRESS_EDT)
            .ok_or_else(|| program_err("find", &io::Error::other("not in the object")))?
            .try_into()
            .map_err(|e: ProgramError| program_err("load", &e))?;
        program.load().map_err(|e| program_err("load", &e))?;
        program
            .attach(device, TcAttachType::Egress)
            .map_err(|e| match &clsact {
                Some(why) => EgressControlError::Program {
                    action: "attach",
                    device: device.to_owned(),
                    reason: format!(
                        "{}; the clsact qdisc could not be added either ({why}: this kernel \
                         needs CONFIG_NET_SCH_INGRESS, or the sch_ingress module, and \
                         CONFIG_NET_CLS_BPF or cls_bpf)",
                        error_chain(&e)
                    ),
                },
                None => program_err("attach", &e),
            })?;
        Ok(Self {
            object,
            device: device.to_owned(),
            replaced,
            horizon,
            limits,
            drops,
            task_links: std::collections::HashMap::new(),
        })
    }

    /// Limits a bridge task's egress where its packets still carry their socket: fq at the root
    /// of `interface` in the network namespace of process `pid` (the task's init) and the EDT
    /// program on that interface's egress (a previous agent's filter there is replaced), from a
    /// thread that joins the namespace. The task's entry (cgroup `id`, [`Self::limit`]) is the
    /// one the program finds; a tcx link (kernels 6.6 and later) goes at [`Self::forget`], a
    /// netlink filter with the namespace.
    pub fn attach_in_namespace(
        &mut self,
        pid: u32,
        interface: &str,
        id: CgroupId,
    ) -> Result<(), EgressControlError> {
        let where_ = format!("{interface} in the network namespace of process {pid}");
        let program_err = |action, reason: String| EgressControlError::Program {
            action,
            device: where_.clone(),
            reason,
        };
        let program: &mut SchedClassifier = self
            .object
            .program_mut(PROG_EGRESS_EDT)
            .ok_or_else(|| program_err("find", "not in the object".to_owned()))?
            .try_into()
            .map_err(|e: ProgramError| program_err("find", error_chain(&e)))?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| {
            EgressControlError::Device {
                device: where_.clone(),
                reason: format!("cannot open the namespace: {e}"),
            }
        })?;
        let attached = std::thread::scope(|s| {
            s.spawn(|| -> Result<SchedClassifierLinkId, EgressControlError> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    EgressControlError::Device {
                        device: where_.clone(),
                        reason: format!("cannot join the namespace: {e}"),
                    }
                })?;
                let index = nix::net::if_::if_nametoindex(interface).map_err(|e| {
                    EgressControlError::Device {
                        device: where_.clone(),
                        reason: format!("no such network device ({e})"),
                    }
                })?;
                qdisc::set_fq(interface, index, 1)?;
                match tc::qdisc_add_clsact(interface) {
                    Ok(()) => {}
                    Err(TcError::NetlinkError(e))
                        if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
                    Err(e) => return Err(program_err("attach", error_chain(&e))),
                }
                // A previous agent's netlink filter (kernels before 6.6) would run first.
                let _ = tc::qdisc_detach_program(interface, TcAttachType::Egress, PROG_EGRESS_EDT);
                program
                    .attach(interface, TcAttachType::Egress)
                    .map_err(|e| program_err("attach", error_chain(&e)))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(program_err(
                    "attach",
                    "the attaching thread panicked".to_owned(),
                ))
            })
        })?;
        let link = self
            .object
            .program_mut(PROG_EGRESS_EDT)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .and_then(|p| p.take_link(attached).ok());
        match link {
            // A netlink filter (kernels before 6.6): nothing to hold; dropping the link would
            // detach by an interface index of the wrong namespace.
            Some(link) if link.priority().is_ok() => std::mem::forget(link),
            Some(link) => {
                self.task_links.insert(id, link);
            }
            None => {}
        }
        Ok(())
    }

    /// Detaches the program from the device now (the agent is stopping; a netlink filter would
    /// otherwise outlive the process when the control is never dropped).
    pub fn detach(&self) {
        if let Err(e) = remove_egress_program(&self.device) {
            tracing::warn!(device = %self.device, error = %e, "cannot remove the egress program");
        }
    }

    /// The device the program is on.
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The kind of root qdisc that fq replaced, if the kernel reported one.
    #[must_use]
    pub fn replaced_qdisc(&self) -> Option<&str> {
        self.replaced.as_deref()
    }

    /// The horizon past which packets are dropped.
    #[must_use]
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    /// Limits the egress of the task in `cgroup_dir` to `mbps` (writes its entry; call it before
    /// the task's first process starts). Clears its drop counters.
    pub fn limit(
        &mut self,
        task_id: &str,
        cgroup_dir: &Path,
        mbps: f64,
    ) -> Result<CgroupId, EgressControlError> {
        let state = task_egress_state(task_id, mbps, self.horizon)?;
        let id = cgroup_id(cgroup_dir)?;
        let _ = self.drops.remove(&id);
        self.limits
            .insert(id, state.to_words(), 0)
            .map_err(|source| EgressControlError::Map {
                map: MAP_EGRESS_EDT,
                cgroup: cgroup_dir.to_path_buf(),
                source,
            })?;
        Ok(id)
    }

    /// What the limiter dropped of the cgroup `id`'s packets (all CPUs).
    #[must_use]
    pub fn dropped(&self, id: CgroupId) -> NetCounters {
        self.drops.get(&id, 0).map_or_else(
            |_| NetCounters::default(),
            |values| {
                values.iter().fold(NetCounters::default(), |sum, w| {
                    sum.add(NetCounters::from_words(*w))
                })
            },
        )
    }

    /// Removes the cgroup `id`'s entries (its task ended), and the program's link on its
    /// namespace's interface (bridge tasks; it is defunct once the namespace is gone).
    pub fn forget(&mut self, id: CgroupId) {
        let _ = self.limits.remove(&id);
        let _ = self.drops.remove(&id);
        // A tcx link is detached by closing it (defunct already if the namespace is gone).
        drop(self.task_links.remove(&id));
    }

    /// The cgroup ids that have a limit (for tests and diagnostics).
    #[must_use]
    pub fn entries(&self) -> Vec<CgroupId> {
        self.limits.keys().filter_map(Result::ok).collect()
    }

    /// The state of the cgroup `id`, if it has a limit (for tests and diagnostics).
    #[must_use]
    pub fn state(&self, id: CgroupId) -> Option<EdtState> {
        self.limits.get(&id, 0).ok().map(EdtState::from_words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uplink_is_the_default_routes_device() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(proc_root.path().join("net")).expect("mkdir");
        std::fs::write(
            proc_root.path().join("net/route"),
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
        )
        .expect("write");
        assert_eq!(
            default_route_device(proc_root.path()).as_deref(),
            Some("eth0")
        );
        assert_eq!(default_route_device(Path::new("/nonexistent")), None);
    }

    #[test]
    fn link_speed_and_queues_come_from_sysfs() {
        let sys = tempfile::tempdir().expect("tempdir");
        let dev = sys.path().join("class/net/eth0");
        std::fs::create_dir_all(dev.join("queues/tx-0")).expect("mkdir");
        std::fs::create_dir_all(dev.join("queues/tx-1")).expect("mkdir");
        std::fs::create_dir_all(dev.join("queues/rx-0")).expect("mkdir");
        std::fs::write(dev.join("speed"), "10000\n").expect("write");
        assert_eq!(link_speed_mbps(sys.path(), "eth0"), Some(10_000));
        assert_eq!(tx_queues(sys.path(), "eth0"), 2);
        std::fs::write(dev.join("speed"), "-1\n").expect("write");
        assert_eq!(link_speed_mbps(sys.path(), "eth0"), None);
        assert_eq!(link_speed_mbps(sys.path(), "veth9"), None);
        assert_eq!(tx_queues(sys.path(), "veth9"), 1);
    }

    /// In a network namespace of its own (never the host's devices): on a kernel without fq
    /// (the development machines) loading fails with a message naming the missing qdisc; on one
    /// with fq, loading on the namespace's loopback puts fq at its root and attaches, with no
    /// entries. Skipped without root or without the eBPF objects.
    #[test]
    fn loading_in_a_private_netns_says_what_is_missing_or_sets_fq() {
        let handle = std::thread::spawn(|| {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: cannot create a network namespace ({e})");
                return;
            }
            match EgressControl::load("lo", Path::new("/sys"), DEFAULT_HORIZON) {
                Ok(control) => {
                    let index = nix::net::if_::if_nametoindex("lo").expect("lo");
                    let root = qdisc::root_kind("lo", index).expect("list qdiscs");
                    assert_eq!(root.as_deref(), Some("fq"), "the root qdisc of lo");
                    assert!(control.entries().is_empty());
                }
                Err(EgressControlError::Ebpf(EbpfError::NotBuilt)) => {
                    eprintln!("skipped: built without the eBPF objects");
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains("device lo"), "{text}");
                    assert!(
                        text.contains("fq") && text.contains("CONFIG_NET_SCH_FQ"),
                        "{text}"
                    );
                }
            }
        });
        handle.join().expect("the namespace thread");
    }

    #[test]
    fn a_task_state_holds_its_rate_and_the_horizon() {
        let s = task_egress_state("web-1", 50.0, DEFAULT_HORIZON).expect("50 Mbit/s");
        assert_eq!(s.rate_bytes_per_sec, 6_250_000);
        assert_eq!(s.horizon_ns, 2_000_000_000);
        assert_eq!(s.last_departure_ns, 0);
        assert_eq!(s.burst_ns, 5_000_000);
        let err = task_egress_state("web-1", 0.0, DEFAULT_HORIZON).expect_err("0 is no rate");
        assert!(err.to_string().contains("web-1"), "{err}");
    }
}
