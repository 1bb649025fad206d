//! The agent's eBPF programs (crate `agent-ebpf`): loading, attaching, and reading their maps.
//!
//! `build.rs` builds `agent-ebpf` for `bpfel-unknown-none` and this module embeds the object. It
//! holds three programs (names and map layouts in [`strata_agent_common`]):
//!
//! - `sched_switch` (tp_btf): on-CPU nanoseconds per cgroup, for every task on the machine. Needs
//!   the kernel's BTF (`/sys/kernel/btf/vmlinux`). The time is the kernel's own count,
//!   `task_struct.se.sum_exec_runtime`, at its offset found in that BTF ([`btf`]), as the
//!   kernel charges cgroups' CPU time; without the offset, the clock between switches.
//! - `sched_stat_runtime` (tp_btf): each time the scheduler charges the running task's time
//!   (ticks included), that time goes to its cgroup, so a busy task is not a slice behind.
//! - `cgroup_skb_ingress` / `cgroup_skb_egress` (cgroup_skb): bytes and packets per cgroup,
//!   counted against the cgroup of the packet's **socket** (the cgroup of the task that created
//!   the socket; an accepted connection inherits the listener's cgroup). Bytes are whole IP
//!   packets, headers included. They are attached at `cgroup_root`, a directory of the unified
//!   (v2) hierarchy, and count every socket at or below it. On hybrid hosts that is a directory
//!   under `/sys/fs/cgroup/unified`; on pure v2 hosts, under `/sys/fs/cgroup`.
//!
//! [`Ebpf::load`] loads and attaches each program on its own: a program the kernel refuses (no
//! BTF, no permission, no cgroup v2 at the root) is logged as a warning that says what is missing
//! and recorded in [`Ebpf::programs`], and the others keep working. It fails only when nothing at
//! all can be loaded. The programs stay attached as long as the [`Ebpf`] value lives; dropping it
//! detaches them.
//!
//! Cgroups are identified by their v2 id, the inode number of their directory ([`cgroup_id`]).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, MapError, PerCpuHashMap};
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError,
};
use aya::{Btf, include_bytes_aligned};
use strata_agent_common::{
    CgroupId, MAP_CPU_TIME, MAP_NET_EGRESS, MAP_NET_INGRESS, MAP_RUN_QUEUE, NET_COUNTER_WORDS,
    NetCounters, PROG_SCHED_STAT_RUNTIME, PROG_SCHED_SWITCH, PROG_SCHED_WAKEUP,
    PROG_SCHED_WAKEUP_NEW, PROG_SKB_EGRESS, PROG_SKB_INGRESS, RUN_QUEUE_BUCKETS, RUN_QUEUE_WORDS,
    RunQueueCounters,
};
use strata_common::error::chain as error_chain;

mod btf;
mod device;
mod egress;
mod ports;
mod qdisc;
pub use device::{DeviceControl, DeviceRule, STANDARD_DEVICES};
pub use egress::{
    DEFAULT_HORIZON as DEFAULT_EGRESS_HORIZON, EgressControl, EgressControlError,
    default_route_device, link_speed_mbps, remove_egress_program, task_egress_state,
};
pub use ports::{PortControl, PortControlError, ephemeral_overlap, task_port_ranges};
pub use qdisc::QdiscError;

/// The eBPF object built by `build.rs` from `agent-ebpf` (empty when built without it: see
/// [`embedded`]).
static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/strata-agent-ebpf"));

/// What the loaders answer when this binary embeds no eBPF programs: `build.rs` leaves empty
/// placeholder objects when the eBPF toolchain is missing (unless `STRATA_REQUIRE_EBPF` is set),
/// so that checks, lints and unit tests build without it.
pub const NOT_BUILT: &str = "this strata-agent was built without its eBPF programs (the eBPF \
                             toolchain was missing at build time): run `cargo xtask setup` and \
                             rebuild";

/// Whether this binary embeds its eBPF programs (false when `build.rs` used empty placeholders
/// because the eBPF toolchain was missing).
#[must_use]
pub fn programs_built() -> bool {
    [
        EBPF_OBJECT,
        device::DEVICE_OBJECT,
        egress::EGRESS_OBJECT,
        ports::PORTS_OBJECT,
        crate::profile::PROFILE_OBJECT,
    ]
    .iter()
    .all(|o| embedded(o).is_ok())
}

/// `object` when it is a real eBPF object; [`EbpfError::NotBuilt`] when it is `build.rs`'s empty
/// placeholder.
pub(crate) fn embedded(object: &[u8]) -> Result<&[u8], EbpfError> {
    if object.is_empty() {
        Err(EbpfError::NotBuilt)
    } else {
        Ok(object)
    }
}

/// Where the kernel publishes its BTF, which tp_btf programs need.
use btf::KERNEL_BTF;

/// Errors of the eBPF module.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// This binary was built with empty placeholders instead of the eBPF objects.
    #[error("{NOT_BUILT}")]
    NotBuilt,
    /// The embedded object could not be loaded at all (its maps could not be created).
    #[error("cannot load the agent's eBPF object: {detail}{hint}")]
    LoadObject {
        /// The loader's error and its causes.
        detail: String,
        /// What to do about it, when known.
        hint: String,
    },
    /// Not one program could be loaded and attached.
    #[error("no eBPF program could be loaded: {}", failures.join("; "))]
    NothingLoaded {
        /// One line per program: its name, what failed and what is missing.
        failures: Vec<String>,
    },
    /// The program that feeds the requested counter is not attached.
    #[error("eBPF program {program} is not running ({reason}): its counters are unavailable")]
    NotAttached {
        /// The program's name.
        program: &'static str,
        /// Why it is not running.
        reason: String,
    },
    /// Reading a map failed.
    #[error("cannot read eBPF map {map} for cgroup {cgroup_id}: {source}")]
    ReadMap {
        /// The map's name.
        map: &'static str,
        /// The cgroup whose entry was read.
        cgroup_id: CgroupId,
        /// The loader's error.
        source: MapError,
    },
    /// A batched read of a whole map failed.
    #[error("cannot read eBPF map {map} in batches: {source}")]
    ReadBatch {
        /// The map's name.
        map: &'static str,
        /// The kernel's error (`EINVAL` before Linux 5.6, which has no batched reads).
        source: io::Error,
    },
    /// The device program could not be attached to a task's cgroup.
    #[error("cannot attach the device control program to {cgroup}: {reason}")]
    Device {
        /// The task's cgroup.
        cgroup: PathBuf,
        /// Why.
        reason: String,
    },
    /// A cgroup directory could not be examined.
    #[error("cannot read cgroup directory {path}: {source}")]
    Cgroup {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Whether one program runs, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramState {
    /// Loaded and attached.
    Attached,
    /// Not running; the text says what failed and what is missing.
    Failed(String),
}

/// One program of the object and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStatus {
    /// The program's name (see [`strata_agent_common`]).
    pub name: &'static str,
    /// Where it is attached (`sched_switch`, or the cgroup directory).
    pub attach_point: String,
    /// Whether it runs.
    pub state: ProgramState,
}

/// A cgroup's network counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTraffic {
    /// Packets received by the cgroup's sockets.
    pub ingress: NetCounters,
    /// Packets sent by the cgroup's sockets.
    pub egress: NetCounters,
    /// Sent packets the egress limiter dropped (filled in by the usage collector from
    /// [`EgressControl::dropped`]; zero without a limit).
    pub dropped: NetCounters,
}

/// A cgroup's run-queue (scheduling) latency: a log2 histogram of its tasks' waits for a CPU.
///
/// Bucket `i` counts waits of `[2^i, 2^(i+1))` ns (bucket 0 also 0 ns; the last one everything
/// from about 2.1 s). The counters only grow: take two snapshots and use [`Self::since`] for an
/// interval, then [`Self::quantile_ns`] (or [`Self::p50_ns`], [`Self::p99_ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunQueueHistogram {
    /// Waits per log2 bucket of nanoseconds.
    pub buckets: [u64; RUN_QUEUE_BUCKETS],
    /// The number of waits.
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_ns: u64,
}

impl Default for RunQueueHistogram {
    fn default() -> Self {
        Self {
            buckets: [0; RUN_QUEUE_BUCKETS],
            count: 0,
            sum_ns: 0,
        }
    }
}

impl From<RunQueueCounters> for RunQueueHistogram {
    fn from(c: RunQueueCounters) -> Self {
        Self {
            buckets: c.buckets,
            count: c.count,
            sum_ns: c.sum_ns,
        }
    }
}

impl RunQueueHistogram {
    /// The number of buckets.
    pub const BUCKETS: usize = RUN_QUEUE_BUCKETS;

    /// The waits between the snapshot `earlier` and this one (wrapping, as the counters do).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let mut d = *self;
        for (b, e) in d.buckets.iter_mut().zip(earlier.buckets) {
            *b = b.wrapping_sub(e);
        }
        d.count = self.count.wrapping_sub(earlier.count);
        d.sum_ns = self.sum_ns.wrapping_sub(earlier.sum_ns);
        d
    }

    /// The lower and upper bound (ns) of bucket `i`'s waits.
    #[must_use]
    pub fn bucket_bounds_ns(i: usize) -> (u64, u64) {
        let lo = if i == 0 { 0 } else { 1u64 << i.min(63) };
        (lo, 1u64 << (i + 1).min(63))
    }

    /// The `q`-quantile (0.0..=1.0) of the waits, in nanoseconds, interpolated linearly inside
    /// its log2 bucket (so within a factor of two of the true value); `None` without waits.
    #[must_use]
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        // The rank (1-based) of the wanted wait.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if below + n >= rank {
                let (lo, hi) = Self::bucket_bounds_ns(i);
                let frac = (rank - below) as f64 / n as f64;
                return Some(lo + ((hi - lo) as f64 * frac) as u64);
            }
            below += n;
        }
        None
    }

    /// The median wait (ns); `None` without waits.
    #[must_use]
    pub fn p50_ns(&self) -> Option<u64> {
        self.quantile_ns(0.5)
    }

    /// The 99th-percentile wait (ns); `None` without waits.
    #[must_use]
    pub fn p99_ns(&self) -> Option<u64> {
        self.quantile_ns(0.99)
    }

    /// The mean wait (ns); `None` without waits.
    #[must_use]
    pub fn mean_ns(&self) -> Option<u64> {
        self.sum_ns.checked_div(self.count)
    }
}

type CpuTimeMap = PerCpuHashMap<MapData, CgroupId, u64>;
type RunQueueMap = PerCpuHashMap<MapData, CgroupId, [u64; RUN_QUEUE_WORDS]>;
type NetMap = PerCpuHashMap<MapData, CgroupId, [u64; NET_COUNTER_WORDS]>;

/// The loaded programs and their maps. Dropping it detaches and unloads the programs.
pub struct Ebpf {
    /// Owns the programs and their links; kept alive so the programs stay attached.
    _object: aya::Ebpf,
    cgroup_root: PathBuf,
    programs: Vec<ProgramStatus>,
    cpu_time: Option<CpuTimeMap>,
    run_queue: Option<RunQueueMap>,
    net_ingress: Option<NetMap>,
    net_egress: Option<NetMap>,
}

impl fmt::Debug for Ebpf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ebpf")
            .field("cgroup_root", &self.cgroup_root)
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

impl Ebpf {
    /// Loads the object, attaches `sched_switch`, `sched_wakeup` and `sched_wakeup_new`, and
    /// attaches the cgroup_skb programs at
    /// `cgroup_root` (a directory of the cgroup v2 hierarchy).
    ///
    /// Each program that cannot be loaded or attached is logged (`warn`) with what is missing and
    /// left out; see [`Ebpf::programs`]. Fails only when the object cannot be loaded at all or no
    /// program runs; the caller can then carry on without eBPF accounting.
    pub fn load(cgroup_root: &Path) -> Result<Self, EbpfError> {
        // The on-CPU time is the kernel's own count when its offset is known, else the clock.
        let runtime_offset = match btf::task_runtime_offset(Path::new(KERNEL_BTF)) {
            Ok(offset) => {
                tracing::info!(offset, "on-CPU time from task_struct.se.sum_exec_runtime");
                offset
            }
            Err(e) => {
                tracing::warn!(
                    "on-CPU time on the clock, which also counts stolen and interrupt time: {e}"
                );
                0
            }
        };
        let mut object = aya::EbpfLoader::new()
            .override_global("TASK_RUNTIME_OFFSET", &runtime_offset, true)
            // TASK_SCHED is task local storage, which aya has no typed wrapper for: only the
            // programs use it, so the untyped map it gives is all that is needed.
            .allow_unsupported_maps()
            .load(embedded(EBPF_OBJECT)?)
            .map_err(|e| EbpfError::LoadObject {
                detail: error_chain(&e),
                hint: permission_hint(&e),
            })?;

        let mut programs = Vec::with_capacity(6);
        let btf = kernel_btf();
        for (name, tracepoint) in [
            (PROG_SCHED_SWITCH, "sched_switch"),
            (PROG_SCHED_WAKEUP, "sched_wakeup"),
            (PROG_SCHED_WAKEUP_NEW, "sched_wakeup_new"),
            (PROG_SCHED_STAT_RUNTIME, "sched_stat_runtime"),
        ] {
            let result = btf
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|btf| attach_tp_btf(&mut object, btf, name, tracepoint));
            programs.push(ProgramStatus {
                name,
                attach_point: format!("tp_btf/{tracepoint}"),
                state: to_state(result),
            });
        }
        let cgroup = open_cgroup2(cgroup_root);
        for (name, attach_type) in [
            (PROG_SKB_INGRESS, CgroupSkbAttachType::Ingress),
            (PROG_SKB_EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let result = cgroup
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|file| attach_cgroup_skb(&mut object, name, file, attach_type));
            programs.push(ProgramStatus {
                name,
                attach_point: cgroup_root.display().to_string(),
                state: to_state(result),
            });
        }

        for p in &programs {
            match &p.state {
                ProgramState::Attached => {
                    tracing::info!(program = p.name, attach_point = %p.attach_point, "eBPF program attached");
                }
                ProgramState::Failed(why) => {
                    tracing::warn!(program = p.name, attach_point = %p.attach_point, "eBPF program not running, its counters are unavailable: {why}");
                }
            }
        }
        if programs.iter().all(|p| p.state != ProgramState::Attached) {
            return Err(EbpfError::NothingLoaded {
                failures: programs
                    .iter()
                    .filter_map(|p| match &p.state {
                        ProgramState::Failed(why) => Some(format!("{}: {why}", p.name)),
                        ProgramState::Attached => None,
                    })
                    .collect(),
            });
        }

        let cpu_time = take_map(&mut object, MAP_CPU_TIME);
        let run_queue = take_map(&mut object, MAP_RUN_QUEUE);
        let net_ingress = take_map(&mut object, MAP_NET_INGRESS);
        let net_egress = take_map(&mut object, MAP_NET_EGRESS);
        Ok(Self {
            _object: object,
            cgroup_root: cgroup_root.to_path_buf(),
            programs,
            cpu_time,
            run_queue,
            net_ingress,
            net_egress,
        })
    }

    /// Each program's state.
    #[must_use]
    pub fn programs(&self) -> &[ProgramStatus] {
        &self.programs
    }

    /// The cgroup directory the cgroup_skb programs are attached at.
    #[must_use]
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Nanoseconds the cgroup's tasks (the cgroup itself, not its descendants) spent on a CPU
    /// since the program was attached; 0 for a cgroup that has not run since.
    pub fn cpu_time_ns(&self, cgroup_id: CgroupId) -> Result<u64, EbpfError> {
        let map = self.map_of(PROG_SCHED_SWITCH, self.cpu_time.as_ref())?;
        match map.get(&cgroup_id, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v))),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(EbpfError::ReadMap {
                map: MAP_CPU_TIME,
                cgroup_id,
                source,
            }),
        }
    }

    /// Every cgroup's on-CPU nanoseconds (as [`Ebpf::cpu_time_ns`]), read with a few batched
    /// lookups (`BPF_MAP_LOOKUP_BATCH`, 256 entries each) instead of one system call per
    /// cgroup: the usage collector reads this once per interval.
    pub fn cpu_times(&self) -> Result<std::collections::HashMap<CgroupId, u64>, EbpfError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        const BATCH: usize = 256;
        let map = self.map_of(PROG_SCHED_SWITCH, self.cpu_time.as_ref())?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| EbpfError::ReadBatch {
            map: MAP_CPU_TIME,
            source,
        })?;
        let key_size = size_of::<CgroupId>();
        // A per-CPU value is 8-byte aligned per CPU; u64 already is.
        let stride = 8 * cpus;
        let mut keys = vec![0u8; BATCH * key_size];
        let mut values = vec![0u8; BATCH * stride];
        let mut times = std::collections::HashMap::new();
        let (mut cursor, mut next) = ([0u8; 8], [0u8; 8]);
        let mut first = true;
        // Bounded: the map holds at most MAX_CGROUPS entries.
        for _ in 0..=(strata_agent_common::MAX_CGROUPS as usize / BATCH + 1) {
            let (read, more) = crate::sys::bpf_map_lookup_batch(
                map.map().fd().as_fd(),
                (!first).then_some(&cursor),
                &mut next,
                (&mut keys, key_size),
                (&mut values, stride),
            )
            .map_err(|source| EbpfError::ReadBatch {
                map: MAP_CPU_TIME,
                source,
            })?;
            for i in 0..read {
                let key = &keys[i * key_size..(i + 1) * key_size];
                let id = CgroupId::from_ne_bytes(key.try_into().expect("key size"));
                let total = values[i * stride..(i + 1) * stride]
                    .chunks_exact(8)
                    .map(|v| u64::from_ne_bytes(v.try_into().expect("8 bytes")))
                    .fold(0u64, u64::wrapping_add);
                times.insert(id, total);
            }
            if !more {
                break;
            }
            cursor = next;
            first = false;
        }
        Ok(times)
    }

    /// The run-queue latency histogram of the cgroup's tasks (the cgroup itself, not its
    /// descendants) since the programs were attached: every wait for a CPU after a wakeup or a
    /// preemption, added when the task is next switched out. Empty for a cgroup with none since.
    pub fn run_queue(&self, cgroup_id: CgroupId) -> Result<RunQueueHistogram, EbpfError> {
        // The waits start at the wakeup programs and end at sched_switch: both must run.
        self.map_of(PROG_SCHED_WAKEUP, Some(&()))?;
        let map = self.map_of(PROG_SCHED_SWITCH, self.run_queue.as_ref())?;
        match map.get(&cgroup_id, 0) {
            Ok(per_cpu) => {
                let mut sum = RunQueueCounters::default();
                for words in per_cpu.iter() {
                    sum.add(&RunQueueCounters::from_words(words));
                }
                Ok(sum.into())
            }
            Err(MapError::KeyNotFound) => Ok(RunQueueHistogram::default()),
            Err(source) => Err(EbpfError::ReadMap {
                map: MAP_RUN_QUEUE,
                cgroup_id,
                source,
            }),
        }
    }

    /// Bytes and packets sent and received by the cgroup's sockets (the cgroup itself, not its
    /// descendants) since the programs were attached; zeros for a cgroup with no traffic since.
    pub fn net_counters(&self, cgroup_id: CgroupId) -> Result<NetTraffic, EbpfError> {
        let ingress = self.map_of(PROG_SKB_INGRESS, self.net_ingress.as_ref())?;
        let egress = self.map_of(PROG_SKB_EGRESS, self.net_egress.as_ref())?;
        Ok(NetTraffic {
            ingress: read_net(ingress, MAP_NET_INGRESS, cgroup_id)?,
            egress: read_net(egress, MAP_NET_EGRESS, cgroup_id)?,
            dropped: NetCounters::default(),
        })
    }

    /// Drops a cgroup's entries (call it when the cgroup is removed, so the maps do not fill up
    /// with dead cgroups; they are LRU maps, so forgetting is an optimisation, not a must).
    pub fn forget(&mut self, cgroup_id: CgroupId) {
        if let Some(m) = self.cpu_time.as_mut() {
            let _ = m.remove(&cgroup_id);
        }
        if let Some(m) = self.run_queue.as_mut() {
            let _ = m.remove(&cgroup_id);
        }
        for m in [self.net_ingress.as_mut(), self.net_egress.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = m.remove(&cgroup_id);
        }
    }

    fn map_of<'a, M>(&self, program: &'static str, map: Option<&'a M>) -> Result<&'a M, EbpfError> {
        let reason = self
            .programs
            .iter()
            .find(|p| p.name == program)
            .and_then(|p| match &p.state {
                ProgramState::Failed(why) => Some(why.clone()),
                ProgramState::Attached => None,
            });
        match (reason, map) {
            (None, Some(map)) => Ok(map),
            (Some(reason), _) => Err(EbpfError::NotAttached { program, reason }),
            (None, None) => Err(EbpfError::NotAttached {
                program,
                reason: "its map is missing from the eBPF object".to_owned(),
            }),
        }
    }
}

/// The cgroup v2 id of a cgroup directory (its inode number): the key of every eBPF map.
pub fn cgroup_id(path: &Path) -> Result<CgroupId, EbpfError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| EbpfError::Cgroup {
            path: path.to_path_buf(),
            source,
        })
}

fn read_net(
    map: &NetMap,
    name: &'static str,
    cgroup_id: CgroupId,
) -> Result<NetCounters, EbpfError> {
    match map.get(&cgroup_id, 0) {
        Ok(per_cpu) => Ok(per_cpu.iter().fold(NetCounters::default(), |sum, v| {
            sum.add(NetCounters::from_words(*v))
        })),
        Err(MapError::KeyNotFound) => Ok(NetCounters::default()),
        Err(source) => Err(EbpfError::ReadMap {
            map: name,
            cgroup_id,
            source,
        }),
    }
}

fn take_map<V: aya::Pod>(
    object: &mut aya::Ebpf,
    name: &str,
) -> Option<PerCpuHashMap<MapData, CgroupId, V>> {
    let map = object.take_map(name)?;
    match PerCpuHashMap::try_from(map) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(map = name, "eBPF map has an unexpected type or layout: {e}");
            None
        }
    }
}

fn to_state(result: Result<(), String>) -> ProgramState {
    match result {
        Ok(()) => ProgramState::Attached,
        Err(why) => ProgramState::Failed(why),
    }
}

/// The kernel's BTF, which tp_btf programs need; the error says what is missing.
fn kernel_btf() -> Result<Btf, String> {
    Btf::from_sys_fs().map_err(|e| {
        if Path::new(KERNEL_BTF).exists() {
            format!(
                "cannot read the kernel's BTF at {KERNEL_BTF}: {}",
                error_chain(&e)
            )
        } else {
            format!(
                "the kernel has no BTF ({KERNEL_BTF} is missing; tp_btf programs need a kernel \
                 built with CONFIG_DEBUG_INFO_BTF=y)"
            )
        }
    })
}

fn attach_tp_btf(
    object: &mut aya::Ebpf,
    btf: &Btf,
    name: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let program: &mut BtfTracePoint = object
        .program_mut(name)
        .ok_or_else(|| "the program is missing from the eBPF object".to_owned())?
        .try_into()
        .map_err(|e: ProgramError| format!("unexpected program type: {e}"))?;
    program
        .load(tracepoint, btf)
        .map_err(|e| format!("cannot load: {}{}", error_chain(&e), permission_hint(&e)))?;
    program.attach().map_err(|e| {
        format!(
            "cannot attach to {tracepoint}: {}{}",
            error_chain(&e),
            permission_hint(&e)
        )
    })?;
    Ok(())
}

fn attach_cgroup_skb(
    object: &mut aya::Ebpf,
    name: &str,
    cgroup: &File,
    attach_type: CgroupSkbAttachType,
) -> Result<(), String> {
    let program: &mut CgroupSkb = object
        .program_mut(name)
        .ok_or_else(|| "the program is missing from the eBPF object".to_owned())?
        .try_into()
        .map_err(|e: ProgramError| format!("unexpected program type: {e}"))?;
    program
        .load()
        .map_err(|e| format!("cannot load: {}{}", error_chain(&e), permission_hint(&e)))?;
    // On kernels >= 5.7 aya attaches through a bpf_link, which runs alongside any other program
    // attached at the same cgroup (the attach mode applies to the legacy attach only).
    program
        .attach(cgroup, attach_type, CgroupAttachMode::Single)
        .map_err(|e| format!("cannot attach: {}{}", error_chain(&e), permission_hint(&e)))?;
    Ok(())
}

/// Opens a cgroup v2 directory; the error says what is wrong with it.
fn open_cgroup2(path: &Path) -> Result<File, String> {
    let fs = nix::sys::statfs::statfs(path)
        .map_err(|e| format!("cannot open cgroup directory {}: {e}", path.display()))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{} is not in a cgroup v2 hierarchy (cgroup_skb programs attach to the unified \
             hierarchy: /sys/fs/cgroup/unified/... on hybrid hosts, /sys/fs/cgroup/... on pure v2)",
            path.display()
        ));
    }
    File::open(path).map_err(|e| format!("cannot open cgroup directory {}: {e}", path.display()))
}

/// The error, its causes and, for a permission error, what rights are needed.
pub(crate) fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    format!("{}{}", error_chain(e), permission_hint(e))
}

/// A hint when the error chain holds a permission error.
fn permission_hint(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.raw_os_error().map(nix::errno::Errno::from_raw),
                Some(nix::errno::Errno::EPERM | nix::errno::Errno::EACCES)
            )
        {
            return " (permission denied: the agent needs root, or CAP_BPF, CAP_PERFMON and \
                    CAP_NET_ADMIN, to load eBPF programs)"
                .to_owned();
        }
        cur = err.source();
    }
    String::new()
}

/// This process's own cgroup v2 directory (tests that make cgroups below it).
#[cfg(test)]
pub(crate) fn own_unified_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel.trim_start_matches('/');
    [
        Path::new("/sys/fs/cgroup/unified"),
        Path::new("/sys/fs/cgroup"),
    ]
    .into_iter()
    .map(|m| m.join(rel))
    .find(|p| {
        nix::sys::statfs::statfs(p.as_path())
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_placeholder_object_is_refused_with_what_to_do() {
        let err = embedded(&[]).expect_err("an empty placeholder");
        assert!(matches!(err, EbpfError::NotBuilt), "{err}");
        let text = err.to_string();
        assert!(text.contains("built without its eBPF programs"), "{text}");
        assert!(
            text.contains("run `cargo xtask setup` and rebuild"),
            "{text}"
        );
        let object = b"\x7fELF".as_slice();
        assert_eq!(embedded(object).expect("a real object"), object);
        // Built with the placeholders, both loaders say so before touching the kernel.
        if !programs_built() {
            let err = Ebpf::load(Path::new("/nonexistent")).expect_err("no programs");
            assert!(matches!(err, EbpfError::NotBuilt), "{err}");
            let err = DeviceControl::load().expect_err("no programs");
            assert!(matches!(err, EbpfError::NotBuilt), "{err}");
        }
    }

    #[test]
    fn cgroup_id_is_the_directory_inode_and_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = cgroup_id(dir.path()).expect("a directory has an id");
        assert_eq!(id, std::fs::metadata(dir.path()).expect("stat").ino());
        let missing = dir.path().join("gone");
        let err = cgroup_id(&missing).expect_err("no such directory");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn a_directory_outside_cgroup2_is_refused_with_what_to_use_instead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open_cgroup2(dir.path()).expect_err("a tmp dir is not a cgroup");
        assert!(err.contains("not in a cgroup v2 hierarchy"), "{err}");
        assert!(err.contains("/sys/fs/cgroup/unified"), "{err}");
    }

    #[test]
    fn error_chain_joins_causes_and_permission_errors_get_a_hint() {
        let err = MapError::CreateError {
            name: "CPU_TIME_NS".to_owned(),
            io_error: io::Error::from_raw_os_error(nix::errno::Errno::EPERM as i32),
        };
        let text = error_chain(&err);
        assert!(text.contains("CPU_TIME_NS"), "{text}");
        assert!(text.contains("not permitted"), "{text}");
        assert!(permission_hint(&err).contains("CAP_BPF"));
        let other = MapError::KeyNotFound;
        assert_eq!(permission_hint(&other), "");
    }

    /// Loading with a root that is not a cgroup2 directory: the cgroup_skb programs are reported
    /// as not running, with the reason, and the rest still loads. Needs the rights to load eBPF
    /// programs (root); skips with a message without them.
    #[test]
    fn programs_that_cannot_attach_are_reported_and_the_rest_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ebpf = match Ebpf::load(dir.path()) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("skipped: this process cannot load eBPF programs here: {e}");
                return;
            }
        };
        let states: Vec<_> = ebpf.programs().iter().map(|p| (p.name, &p.state)).collect();
        assert_eq!(states.len(), 6, "{states:?}");
        for p in ebpf.programs() {
            if p.attach_point.starts_with("tp_btf/") {
                assert_eq!(p.state, ProgramState::Attached, "{p:?}");
            } else {
                assert!(
                    matches!(&p.state, ProgramState::Failed(why) if why.contains("cgroup v2")),
                    "{p:?}"
                );
            }
        }
        let err = ebpf
            .net_counters(1)
            .expect_err("the skb programs are not running");
        assert!(err.to_string().contains("not running"), "{err}");
        ebpf.cpu_time_ns(1).expect("sched_switch runs");
        ebpf.run_queue(1).expect("the run-queue programs run");
    }

    /// As root: a shell counts a while, moves itself into a cgroup of the test's own (below
    /// this process's v2 cgroup), counts for a few hundred milliseconds of CPU and exits. The eBPF on-CPU figure
    /// is the kernel's count of the same time: the cgroup's `cpu.stat` `usage_usec`, to within
    /// 0.01% and its microsecond rounding (the figure used to be the clock between switches, which also counted stolen and
    /// interrupt time and the slice's part before the move). Skips without the rights.
    #[test]
    fn on_cpu_time_is_the_kernels_count_for_a_task_that_joined_root() {
        let Some(own) = own_unified_cgroup() else {
            eprintln!("skipped: no cgroup v2 directory of this process's own");
            return;
        };
        let dir = own.join(format!("strata-oncpu-test-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            eprintln!("skipped: cannot create a cgroup below {}", own.display());
            return;
        }
        struct RemoveDir(PathBuf);
        impl Drop for RemoveDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _guard = RemoveDir(dir.clone());
        let ebpf = match Ebpf::load(&dir) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("skipped: this process cannot load eBPF programs here: {e}");
                return;
            }
        };
        // A bounded loop of one process, not a burner: about a second of one core.
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            // Some work before it joins (not the cgroup's), then the loop in the cgroup.
            .arg(
                "j=0 && while [ $j -lt 30000 ]; do j=$((j+1)); done && echo $$ > cgroup.procs \
                 && i=0 && while [ $i -lt 400000 ]; do i=$((i+1)); done",
            )
            .current_dir(&dir)
            .spawn()
            .expect("sh runs");
        let id = cgroup_id(&dir).expect("id");
        let usage = || -> u64 {
            let stat = std::fs::read_to_string(dir.join("cpu.stat")).expect("cpu.stat");
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("usage_usec")
                * 1000
        };
        // While it runs, eBPF has what the kernel charged so far, not a slice behind (a task
        // alone on a CPU may not be switched out at all for its whole run).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while usage() < 100_000_000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (before, running, after) = (usage(), ebpf.cpu_time_ns(id).expect("runs"), usage());
        eprintln!("while running: cgroup {before}..{after} ns, eBPF {running} ns");
        if child.try_wait().expect("wait").is_none() {
            // Within a tick or two of either read (HZ 100 at the coarsest: 10 ms ticks).
            assert!(
                running + 20_000_000 >= before && running <= after + 20_000_000,
                "eBPF {running} ns while the cgroup had {before}..{after} ns"
            );
        }
        let status = child.wait().expect("sh ends");
        assert!(status.success(), "{status}");
        let usage_ns = usage();
        let oncpu_ns = ebpf.cpu_time_ns(id).expect("sched_switch runs");
        // The batched read of every cgroup (the collector's) has the same figure, among the
        // others that ran on the machine.
        let all = ebpf.cpu_times().expect("batched reads (Linux 5.6+)");
        assert_eq!(all.get(&id).copied(), Some(oncpu_ns));
        assert!(all.len() > 1, "{all:?}");
        let apart = oncpu_ns.abs_diff(usage_ns);
        eprintln!(
            "cgroup {usage_ns} ns, eBPF {oncpu_ns} ns: {apart} ns apart ({:.4}%)",
            apart as f64 / usage_ns.max(1) as f64 * 100.0
        );
        assert!(usage_ns > 50_000_000, "the loop ran only {usage_ns} ns");
        // usage_usec is in whole microseconds. The clock between switches was 0.05-0.15% apart
        // here (measured on the 2-core development VM); the kernel's count is within 1 us.
        assert!(apart <= usage_ns / 10_000 + 2_000, "{apart} ns apart");
    }

    /// As root, on hybrid hosts (v1 `cpu` and `cpuacct` beside the unified hierarchy, as on the
    /// development machines): three shells move themselves into cgroups of the test's own and
    /// count, two held to 0.2 cores by CFS quotas, so they are throttled again and again while
    /// competing for the CPUs. Once they end, each one's eBPF on-CPU time is its cpuacct usage
    /// (equal to the nanosecond on a quiet machine; within 0.1% under load, see below). (Keeping the count per CPU rather than per task lost 3-6 ms each few
    /// throttles on 6.18.) Skips elsewhere.
    #[test]
    fn on_cpu_time_stays_exact_under_cpu_throttling_root() {
        let (Some(own), true, true) = (
            own_unified_cgroup(),
            Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists(),
            Path::new("/sys/fs/cgroup/cpuacct/cgroup.procs").exists(),
        ) else {
            eprintln!(
                "skipped: needs a hybrid host (v1 cpu and cpuacct) and a cgroup v2 of our own"
            );
            return;
        };
        let pid = std::process::id();
        let root = own.join(format!("strata-throttle-test-{pid}"));
        if std::fs::create_dir(&root).is_err() {
            eprintln!("skipped: cannot create a cgroup below {}", own.display());
            return;
        }
        struct Cleanup(Vec<PathBuf>, Vec<std::process::Child>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                for child in &mut self.1 {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                for dir in self.0.iter().rev() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
        let mut cleanup = Cleanup(vec![root.clone()], Vec::new());
        let ebpf = match Ebpf::load(&root) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("skipped: this process cannot load eBPF programs here: {e}");
                return;
            }
        };
        let mut groups = Vec::new();
        for k in 0..3 {
            let v2 = root.join(format!("t{k}"));
            let cpu = PathBuf::from(format!("/sys/fs/cgroup/cpu/strata-throttle-test-{pid}-{k}"));
            let acct = PathBuf::from(format!(
                "/sys/fs/cgroup/cpuacct/strata-throttle-test-{pid}-{k}"
            ));
            for dir in [&v2, &cpu, &acct] {
                std::fs::create_dir(dir).expect("cgroup");
                cleanup.0.push(dir.clone());
            }
            // Limits first: at most 0.2 cores each for the two throttled ones.
            let rounds = if k < 2 {
                std::fs::write(cpu.join("cpu.cfs_period_us"), "100000").expect("period");
                std::fs::write(cpu.join("cpu.cfs_quota_us"), "20000").expect("quota");
                600_000
            } else {
                150_000
            };
            let script = format!(
                "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs \
                 && i=0 && while [ $i -lt {rounds} ]; do i=$((i+1)); done",
                cpu.display(),
                acct.display(),
                v2.display()
            );
            let child = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .spawn()
                .expect("sh runs");
            cleanup.1.push(child);
            groups.push((v2, cpu, acct));
        }
        for child in &mut cleanup.1 {
            assert!(child.wait().expect("sh ends").success());
        }
        for (v2, cpu, acct) in &groups {
            let usage: u64 = std::fs::read_to_string(acct.join("cpuacct.usage"))
                .expect("cpuacct.usage")
                .trim()
                .parse()
                .expect("a number");
            let oncpu = ebpf.cpu_time_ns(cgroup_id(v2).expect("id")).expect("runs");
            let throttled = std::fs::read_to_string(cpu.join("cpu.stat"))
                .expect("cpu.stat")
                .lines()
                .find_map(|l| l.strip_prefix("nr_throttled ").map(str::to_owned))
                .unwrap_or_default();
            eprintln!(
                "{}: cpuacct {usage} ns, eBPF {oncpu} ns, throttled {throttled} times",
                v2.display()
            );
            assert!(usage > 50_000_000, "only {usage} ns ran");
            // Within 0.1%: the shells join cpuacct and then the unified cgroup, and what the
            // kernel charges between the two writes (up to 57 us seen on the loaded 2-core
            // machine) is cpuacct's and not yet the unified cgroup's. Losses like the per-CPU
            // count's (3-6 ms) are well past it.
            assert!(
                oncpu.abs_diff(usage) <= usage / 1000,
                "eBPF {oncpu} ns, cpuacct {usage} ns"
            );
        }
    }

    fn histogram(waits: &[(usize, u64)]) -> RunQueueHistogram {
        let mut h = RunQueueHistogram::default();
        for &(bucket, n) in waits {
            h.buckets[bucket] += n;
            h.count += n;
            h.sum_ns += n * RunQueueHistogram::bucket_bounds_ns(bucket).0;
        }
        h
    }

    #[test]
    fn quantiles_come_from_the_bucket_holding_the_rank() {
        assert_eq!(RunQueueHistogram::default().p50_ns(), None);
        assert_eq!(RunQueueHistogram::default().mean_ns(), None);
        // 98 waits of ~1 us (bucket 10) and 2 of ~1 ms (bucket 20).
        let h = histogram(&[(10, 98), (20, 2)]);
        let p50 = h.p50_ns().expect("waits");
        assert!((1024..2048).contains(&p50), "{p50}");
        let p99 = h.p99_ns().expect("waits");
        assert!((1 << 20..1 << 21).contains(&p99), "{p99}");
        assert_eq!(h.quantile_ns(0.0), h.quantile_ns(-1.0));
        assert_eq!(h.quantile_ns(1.0), Some(1 << 21));
        assert_eq!(RunQueueHistogram::bucket_bounds_ns(0), (0, 2));
    }

    #[test]
    fn since_is_the_difference_of_two_snapshots() {
        let earlier = histogram(&[(10, 5)]);
        let later = histogram(&[(10, 5), (25, 4)]);
        let d = later.since(&earlier);
        assert_eq!(d.count, 4);
        assert_eq!(d.buckets[10], 0);
        assert_eq!(d.buckets[25], 4);
        assert_eq!(d.sum_ns, 4 << 25);
        assert!(d.p50_ns().expect("waits") >= 1 << 25);
    }
}
