//! Types shared by the agent (user space, `strata-agent`) and its eBPF programs (`agent-ebpf`).
//!
//! Everything here is `no_std`, `#[repr(C)]` and made of fixed-size integers, so the kernel-side
//! programs and the loader agree byte for byte on the maps' keys and values. The names of the
//! programs and maps are here too, so the loader never spells them differently from the programs.
//!
//! Keys: every map is keyed by a cgroup v2 id ([`CgroupId`]), the kernfs node id of the cgroup's
//! directory in the unified hierarchy, which is also that directory's inode number.

#![no_std]

/// A cgroup v2 id: the inode number of the cgroup's directory in the unified hierarchy.
pub type CgroupId = u64;

/// The largest number of cgroups each per-cgroup map tracks at once.
pub const MAX_CGROUPS: u32 = 16_384;

/// tp_btf program on `sched_switch`: on-CPU nanoseconds of the task switched out, by its cgroup.
pub const PROG_SCHED_SWITCH: &str = "sched_switch";
/// cgroup_skb ingress program: bytes and packets received, by the receiving socket's cgroup.
pub const PROG_SKB_INGRESS: &str = "cgroup_skb_ingress";
/// cgroup_skb egress program: bytes and packets sent, by the sending socket's cgroup.
pub const PROG_SKB_EGRESS: &str = "cgroup_skb_egress";

/// Per-CPU hash map [`CgroupId`] → `u64` on-CPU nanoseconds (sum the CPUs' values).
pub const MAP_CPU_TIME: &str = "CPU_TIME_NS";
/// Per-CPU array of one `u64`: the time of this CPU's last context switch (internal to the
/// sched_switch program).
pub const MAP_SWITCH_TS: &str = "SWITCH_TS";
/// Per-CPU hash map [`CgroupId`] → [`NetCounters`] for received packets.
pub const MAP_NET_INGRESS: &str = "NET_INGRESS";
/// Per-CPU hash map [`CgroupId`] → [`NetCounters`] for sent packets.
pub const MAP_NET_EGRESS: &str = "NET_EGRESS";

/// cgroup_device program: allows a device access only when [`MAP_DEVICE_RULES`] has a rule for
/// the accessing task's cgroup, the device and the access.
pub const PROG_DEVICE: &str = "device_allowlist";
/// Hash map [`DeviceKey`] words → `u32` allowed accesses ([`DEVICE_ACC_MKNOD`] |
/// [`DEVICE_ACC_READ`] | [`DEVICE_ACC_WRITE`]).
pub const MAP_DEVICE_RULES: &str = "DEVICE_RULES";
/// The most device rules the map holds (for every task together).
pub const MAX_DEVICE_RULES: u32 = 65_536;
/// A rule's minor that matches every minor of its major (e.g. all of /dev/pts).
pub const DEVICE_ANY_MINOR: u32 = u32::MAX;
/// Block devices (the kernel's BPF_DEVCG_DEV_BLOCK).
pub const DEVICE_BLOCK: u32 = 1;
/// Character devices (BPF_DEVCG_DEV_CHAR).
pub const DEVICE_CHAR: u32 = 2;
/// mknod (BPF_DEVCG_ACC_MKNOD).
pub const DEVICE_ACC_MKNOD: u32 = 1;
/// Read (BPF_DEVCG_ACC_READ).
pub const DEVICE_ACC_READ: u32 = 2;
/// Write (BPF_DEVCG_ACC_WRITE).
pub const DEVICE_ACC_WRITE: u32 = 4;

/// The key of [`MAP_DEVICE_RULES`] as three `u64` words (a plain-old-data type on both sides):
/// the cgroup id, then `kind << 32 | major`, then the minor (or [`DEVICE_ANY_MINOR`]).
pub type DeviceKey = [u64; 3];

/// Builds a [`DeviceKey`].
#[must_use]
pub const fn device_key(cgroup: CgroupId, kind: u32, major: u32, minor: u32) -> DeviceKey {
    [cgroup, ((kind as u64) << 32) | major as u64, minor as u64]
}

/// Bytes and packets seen by a cgroup_skb program; the value of [`MAP_NET_INGRESS`] and
/// [`MAP_NET_EGRESS`].
///
/// `bytes` counts whole IP packets as the cgroup_skb hook sees them: payload plus the IP and
/// transport headers (no link-layer header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes of IP packets (headers included).
    pub bytes: u64,
    /// Number of packets.
    pub packets: u64,
}

/// The number of `u64` words in a [`NetCounters`]; user space reads the maps' values as
/// `[u64; NET_COUNTER_WORDS]` (a plain-old-data type) and converts with
/// [`NetCounters::from_words`].
pub const NET_COUNTER_WORDS: usize = 2;

const _: () = assert!(size_of::<NetCounters>() == NET_COUNTER_WORDS * 8);
const _: () = assert!(align_of::<NetCounters>() == 8);

impl NetCounters {
    /// Builds counters from their in-map representation (`bytes`, then `packets`).
    #[must_use]
    pub const fn from_words(words: [u64; NET_COUNTER_WORDS]) -> Self {
        Self {
            bytes: words[0],
            packets: words[1],
        }
    }

    /// The in-map representation (`bytes`, then `packets`).
    #[must_use]
    pub const fn to_words(self) -> [u64; NET_COUNTER_WORDS] {
        [self.bytes, self.packets]
    }

    /// The sum of two counters (wrapping, as the kernel-side counters do).
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.wrapping_add(other.bytes),
            packets: self.packets.wrapping_add(other.packets),
        }
    }
}

/// tp_btf program on `sched_wakeup`: the time a task became runnable.
pub const PROG_SCHED_WAKEUP: &str = "sched_wakeup";
/// tp_btf program on `sched_wakeup_new`: the time a new task became runnable.
pub const PROG_SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";

/// The program at `sched_stat_runtime` (each time the scheduler charges a running task's time,
/// at ticks too): the task's time so far goes to its cgroup then, so a busy task's figure lags
/// the kernel's by no more than the kernel's own does.
pub const PROG_SCHED_STAT_RUNTIME: &str = "sched_stat_runtime";
/// Task local storage (`BPF_MAP_TYPE_TASK_STORAGE`): when each task became runnable and its
/// runtime when last charged (internal to the scheduler programs).
pub const MAP_TASK_SCHED: &str = "TASK_SCHED";
/// Per-CPU array of one `u64`: the run-queue wait of the task now on this CPU, not yet added to
/// its cgroup (internal to the sched_switch program).
pub const MAP_PENDING_WAIT: &str = "PENDING_WAIT";
/// Per-CPU hash map [`CgroupId`] → `[u64; RUN_QUEUE_WORDS]` ([`RunQueueCounters`]).
pub const MAP_RUN_QUEUE: &str = "RUN_QUEUE";
/// The number of log2 buckets of the run-queue latency histogram.
pub const RUN_QUEUE_BUCKETS: usize = 32;
/// The number of `u64` words in a [`RunQueueCounters`]: the buckets, then count, then sum.
pub const RUN_QUEUE_WORDS: usize = RUN_QUEUE_BUCKETS + 2;

/// The log2 histogram bucket of a wait of `ns` nanoseconds: bucket `i` holds waits in
/// `[2^i, 2^(i+1))` ns (bucket 0 also holds 0), the last bucket everything from `2^31` ns (about
/// 2.1 s) up.
#[must_use]
#[inline(always)]
pub const fn run_queue_bucket(ns: u64) -> usize {
    // A branch ladder rather than leading_zeros: it compiles to plain BPF instructions.
    let mut v = ns;
    let mut log = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        log += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        log += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        log += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        log += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        log += 2;
    }
    if v >= 1 << 1 {
        log += 1;
    }
    if log >= RUN_QUEUE_BUCKETS {
        RUN_QUEUE_BUCKETS - 1
    } else {
        log
    }
}

/// A cgroup's run-queue (scheduling) latency: how long its tasks waited, runnable, for a CPU.
/// The value of [`MAP_RUN_QUEUE`] (as `[u64; RUN_QUEUE_WORDS]`, see [`Self::from_words`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunQueueCounters {
    /// Waits per log2 bucket (see [`run_queue_bucket`]).
    pub buckets: [u64; RUN_QUEUE_BUCKETS],
    /// The number of waits.
    pub count: u64,
    /// The sum of the waits, in nanoseconds.
    pub sum_ns: u64,
}

const _: () = assert!(size_of::<RunQueueCounters>() == RUN_QUEUE_WORDS * 8);

impl Default for RunQueueCounters {
    fn default() -> Self {
        Self {
            buckets: [0; RUN_QUEUE_BUCKETS],
            count: 0,
            sum_ns: 0,
        }
    }
}

impl RunQueueCounters {
    /// Builds counters from their in-map representation.
    #[must_use]
    pub fn from_words(words: &[u64; RUN_QUEUE_WORDS]) -> Self {
        let mut c = Self::default();
        c.buckets.copy_from_slice(&words[..RUN_QUEUE_BUCKETS]);
        c.count = words[RUN_QUEUE_BUCKETS];
        c.sum_ns = words[RUN_QUEUE_BUCKETS + 1];
        c
    }

    /// Adds another CPU's (or snapshot's) counters, wrapping as the kernel-side counters do.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a = a.wrapping_add(b);
        }
        self.count = self.count.wrapping_add(other.count);
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }
}

/// perf_event program sampling the stacks of the tasks of the target cgroups
/// (object `strata-profile-ebpf`, loaded on demand).
pub const PROG_PROFILE: &str = "profile_cpu";
/// Hash map [`CgroupId`] → `u8` (1): the cgroups whose tasks are sampled.
pub const MAP_PROFILE_TARGETS: &str = "PROFILE_TARGETS";
/// Stack-trace map: stack id → instruction pointers.
pub const MAP_PROFILE_STACKS: &str = "PROFILE_STACKS";
/// Per-CPU hash map [`ProfileKey`] → `u64` samples.
pub const MAP_PROFILE_COUNTS: &str = "PROFILE_COUNTS";
/// Per-CPU array of [`PROFILE_STAT_WORDS`] `u64`s: samples taken, samples whose user stack
/// could not be recorded (a kernel thread's, or an unwinding error), samples lost because the
/// counts map was full.
pub const MAP_PROFILE_STATS: &str = "PROFILE_STATS";
/// The number of words in [`MAP_PROFILE_STATS`].
pub const PROFILE_STAT_WORDS: u32 = 3;
/// The most target cgroups at once.
pub const MAX_PROFILE_TARGETS: u32 = 64;
/// The most distinct stacks one profile holds.
pub const MAX_PROFILE_STACKS: u32 = 8_192;
/// A [`MAP_PROFILE_COUNTS`] key as four `u32` words: the process id (tgid), the user stack id,
/// the kernel stack id (each a stack id, or [`NO_STACK`] when it could not be taken), and 0.
pub type ProfileKey = [u32; 4];
/// The stack id of a stack that could not be taken (e.g. no user stack in a kernel thread).
pub const NO_STACK: u32 = u32::MAX;

/// cgroup/bind4 program: refuses (EPERM) a bind to a port the calling task was not given.
pub const PROG_BIND4: &str = "port_bind4";
/// cgroup/bind6 program: the same for IPv6 sockets (IPv4-mapped addresses included).
pub const PROG_BIND6: &str = "port_bind6";
/// cgroup/post_bind4 program: refuses a port the kernel chose (bind to port 0) that lies in the
/// agent's managed ports but is not the task's.
pub const PROG_POST_BIND4: &str = "port_post_bind4";
/// cgroup/post_bind6 program: the same for IPv6 sockets.
pub const PROG_POST_BIND6: &str = "port_post_bind6";
/// Hash map [`CgroupId`] (a task's cgroup) → [`PortRanges`]: the ports the task may bind.
pub const MAP_TASK_PORTS: &str = "TASK_PORTS";
/// Array of one [`PortRanges`]: the ports the agent manages (offers); a port the kernel picks
/// for a task inside them must be the task's.
pub const MAP_MANAGED_PORTS: &str = "MANAGED_PORTS";
/// The most port ranges one task (or the agent's managed ports) can have.
pub const MAX_PORT_RANGES: usize = 16;
/// The deepest cgroup level the port programs look at for a task's cgroup.
pub const MAX_CGROUP_LEVELS: i32 = 32;

/// Closed port ranges as `first << 16 | last` words; an unused slot is 0 (the range `0..=0`,
/// which never matches: port 0 is never checked). At most [`MAX_PORT_RANGES`].
pub type PortRanges = [u32; MAX_PORT_RANGES];

/// Why a set of port ranges cannot be encoded as [`PortRanges`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRangeError {
    /// A range is empty (`first > last`), includes port 0, or goes past 65535.
    Invalid {
        /// The range's first port.
        first: u64,
        /// The range's last port.
        last: u64,
    },
    /// More ranges than fit, after merging adjacent and overlapping ones.
    TooMany {
        /// How many (merged) ranges there are.
        ranges: usize,
    },
}

/// Encodes closed port ranges: sorted, overlapping and adjacent ones merged, then at most
/// [`MAX_PORT_RANGES`] of them.
pub fn encode_port_ranges(ranges: &[(u64, u64)]) -> Result<PortRanges, PortRangeError> {
    let mut out: PortRanges = [0; MAX_PORT_RANGES];
    let mut used = 0usize;
    for &(first, last) in ranges {
        if first == 0 || first > last || last > u64::from(u16::MAX) {
            return Err(PortRangeError::Invalid { first, last });
        }
    }
    // Merge in order of first port without allocating: take the lowest range not yet covered,
    // grow it over every range that overlaps or touches it, repeat (a task has few ranges).
    let mut next_from = 1u64;
    let mut total = 0usize;
    while let Some(&(first, last)) = ranges
        .iter()
        .filter(|r| r.1 >= next_from)
        .min_by_key(|r| r.0)
    {
        let lo = first.max(next_from);
        let mut hi = last;
        let mut grown = true;
        while grown {
            grown = false;
            for &(f, l) in ranges {
                if f <= hi + 1 && l > hi {
                    hi = l;
                    grown = true;
                }
            }
        }
        if used < MAX_PORT_RANGES {
            out[used] = ((lo as u32) << 16) | hi as u32;
            used += 1;
        }
        total += 1;
        next_from = hi + 1;
    }
    if total > MAX_PORT_RANGES {
        return Err(PortRangeError::TooMany { ranges: total });
    }
    Ok(out)
}

/// Whether `port` lies in one of `ranges` (never for port 0).
#[must_use]
#[inline(always)]
pub fn port_in(ranges: &PortRanges, port: u16) -> bool {
    let port = u32::from(port);
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        let r = ranges[i];
        if port != 0 && port >= r >> 16 && port <= (r & 0xffff) {
            return true;
        }
        i += 1;
    }
    false
}

/// tc (classifier) program on the egress of the agent's egress device: Earliest Departure
/// Time pacing of the packets of tasks given an egress limit.
pub const PROG_EGRESS_EDT: &str = "egress_edt";
/// Hash map [`CgroupId`] (a task's cgroup) → `[u64; EDT_WORDS]` ([`EdtState`]): the task's
/// rate, horizon and last departure time.
pub const MAP_EGRESS_EDT: &str = "EGRESS_EDT";
/// Per-CPU hash map [`CgroupId`] → `[u64; NET_COUNTER_WORDS]` ([`NetCounters`]): the bytes and
/// packets the limiter dropped (their departure was past the horizon).
pub const MAP_EGRESS_DROPS: &str = "EGRESS_DROPS";
/// The number of `u64` words in an [`EdtState`].
pub const EDT_WORDS: usize = 4;
/// Nanoseconds per second.
pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// A task's egress pacing state, the value of [`MAP_EGRESS_EDT`] (as `[u64; EDT_WORDS]`).
///
/// The agent writes it with `last_departure_ns` 0; the program updates `last_departure_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdtState {
    /// The task's rate in bytes per second (never 0 in the map: no limit means no entry).
    pub rate_bytes_per_sec: u64,
    /// Packets whose departure would be more than this many nanoseconds from now are dropped.
    pub horizon_ns: u64,
    /// Where the task's departure timeline stands (CLOCK_MONOTONIC ns): the last packet's
    /// earliest departure at the task's rate. It may lag `now` by up to `burst_ns`.
    pub last_departure_ns: u64,
    /// How far the timeline may lag behind `now`: after a pause shorter than this (the sender
    /// was late, e.g. waiting for a CPU), the task may catch up on up to this much of its rate
    /// at once (a token bucket of depth rate × burst). Its long-run rate stays at most the
    /// limit: over any time T it sends at most rate × (T + burst).
    pub burst_ns: u64,
}

const _: () = assert!(size_of::<EdtState>() == EDT_WORDS * 8);

impl EdtState {
    /// The state of a new limit of `mbps` megabits (10^6 bits) per second; `None` for a rate
    /// under one byte per second.
    #[must_use]
    pub const fn new(mbps: f64, horizon_ns: u64, burst_ns: u64) -> Option<Self> {
        let rate = mbps_to_bytes_per_sec(mbps);
        if rate == 0 {
            return None;
        }
        Some(Self {
            rate_bytes_per_sec: rate,
            horizon_ns,
            last_departure_ns: 0,
            burst_ns,
        })
    }

    /// The in-map representation, in field order.
    #[must_use]
    pub const fn to_words(self) -> [u64; EDT_WORDS] {
        [
            self.rate_bytes_per_sec,
            self.horizon_ns,
            self.last_departure_ns,
            self.burst_ns,
        ]
    }

    /// Builds a state from its in-map representation.
    #[must_use]
    pub const fn from_words(words: [u64; EDT_WORDS]) -> Self {
        Self {
            rate_bytes_per_sec: words[0],
            horizon_ns: words[1],
            last_departure_ns: words[2],
            burst_ns: words[3],
        }
    }
}

/// Megabits (10^6 bits) per second as whole bytes per second (rounded down; negative or NaN
/// rates are 0).
#[must_use]
pub const fn mbps_to_bytes_per_sec(mbps: f64) -> u64 {
    // NaN and anything not above 0 are no rate.
    if mbps.is_nan() || mbps <= 0.0 {
        return 0;
    }
    let bytes = mbps * 125_000.0;
    if bytes >= u64::MAX as f64 {
        u64::MAX
    } else {
        bytes as u64
    }
}

/// How long `len` bytes take at `rate` bytes per second, in nanoseconds (rate 0: never, u64::MAX).
#[must_use]
#[inline(always)]
pub const fn edt_delay_ns(len: u64, rate: u64) -> u64 {
    if rate == 0 {
        return u64::MAX;
    }
    // len is at most a 64 KiB GSO packet and rate at least 1: no overflow for len < 2^34.
    len.saturating_mul(NSEC_PER_SEC) / rate
}

/// What the EDT program does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdtVerdict {
    /// Send it at (not before) `at` (CLOCK_MONOTONIC); the task's timeline moves to `last`.
    Depart {
        /// The packet's departure time, for `skb->tstamp`.
        at: u64,
        /// The state's new `last_departure_ns`.
        last: u64,
    },
    /// Its departure would be past the horizon: drop it (the state is unchanged).
    Drop,
}

/// The departure of a `len`-byte packet stamped `tstamp` (0, or a departure time the stack set,
/// e.g. TCP's own pacing) at time `now`, for a task in `state`: Cilium's `edt_sched_departure`
/// with a burst allowance. The task's timeline advances by this packet's transmission time at
/// the task's rate, from where it stood, or from `now - burst` if it stood earlier (an idle
/// task banks no more than `burst`); the packet leaves at that time, or at its own stamp or
/// `now` if later. A packet that would depart more than the horizon after `now` is dropped.
#[must_use]
#[inline(always)]
pub const fn edt_departure(state: &EdtState, len: u64, tstamp: u64, now: u64) -> EdtVerdict {
    let t = if tstamp < now { now } else { tstamp };
    let floor = now.saturating_sub(state.burst_ns);
    let base = if state.last_departure_ns > floor {
        state.last_departure_ns
    } else {
        floor
    };
    let next = base.saturating_add(edt_delay_ns(len, state.rate_bytes_per_sec));
    if next > now && next - now > state.horizon_ns {
        return EdtVerdict::Drop;
    }
    EdtVerdict::Depart {
        at: if next > t { next } else { t },
        last: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_merge_sort_and_match() {
        let r = encode_port_ranges(&[(31005, 31010), (31000, 31000), (31001, 31004), (80, 80)])
            .expect("fits");
        assert_eq!(r[0], (80 << 16) | 80);
        assert_eq!(r[1], (31000 << 16) | 31010);
        assert_eq!(r[2], 0);
        for p in [80, 31000, 31004, 31010] {
            assert!(port_in(&r, p), "{p}");
        }
        for p in [0, 79, 81, 30999, 31011, 65535] {
            assert!(!port_in(&r, p), "{p}");
        }
        let none = encode_port_ranges(&[]).expect("no ports");
        assert!(!port_in(&none, 0) && !port_in(&none, 1) && !port_in(&none, 31000));
        let all = encode_port_ranges(&[(1, 65535), (10, 20)]).expect("all ports");
        assert_eq!(all[0], (1 << 16) | 65535);
        assert!(port_in(&all, 65535) && port_in(&all, 1));
    }

    #[test]
    fn port_ranges_refuse_invalid_and_too_many() {
        assert_eq!(
            encode_port_ranges(&[(0, 10)]),
            Err(PortRangeError::Invalid { first: 0, last: 10 })
        );
        assert_eq!(
            encode_port_ranges(&[(20, 10)]),
            Err(PortRangeError::Invalid {
                first: 20,
                last: 10
            })
        );
        assert_eq!(
            encode_port_ranges(&[(65535, 65536)]),
            Err(PortRangeError::Invalid {
                first: 65535,
                last: 65536
            })
        );
        let single_ports: [(u64, u64); 17] = core::array::from_fn(|i| {
            let p = 31000 + 2 * i as u64;
            (p, p)
        });
        assert_eq!(
            encode_port_ranges(&single_ports),
            Err(PortRangeError::TooMany { ranges: 17 })
        );
        let sixteen = encode_port_ranges(&single_ports[..16]).expect("sixteen fit");
        assert!(port_in(&sixteen, 31030) && !port_in(&sixteen, 31031));
        // Seventeen single ports that touch merge into one range.
        let touching: [(u64, u64); 17] =
            core::array::from_fn(|i| (31000 + i as u64, 31000 + i as u64));
        let merged = encode_port_ranges(&touching).expect("merged");
        assert_eq!(merged[0], (31000 << 16) | 31016);
    }

    #[test]
    fn edt_rate_math() {
        assert_eq!(mbps_to_bytes_per_sec(50.0), 6_250_000);
        assert_eq!(mbps_to_bytes_per_sec(1000.0), 125_000_000);
        assert_eq!(mbps_to_bytes_per_sec(0.0), 0);
        assert_eq!(mbps_to_bytes_per_sec(-1.0), 0);
        assert_eq!(mbps_to_bytes_per_sec(f64::NAN), 0);
        assert_eq!(mbps_to_bytes_per_sec(0.000_004), 0);
        assert!(EdtState::new(0.0, 1, 0).is_none());
        // 1500 bytes at 50 Mbit/s: 240 us; a 64 KiB GSO packet at 10 Mbit/s: 52.4 ms.
        assert_eq!(edt_delay_ns(1500, 6_250_000), 240_000);
        assert_eq!(edt_delay_ns(65_536, 1_250_000), 52_428_800);
        assert_eq!(edt_delay_ns(1, 0), u64::MAX);
        // No overflow at the largest rate and a large packet.
        assert_eq!(edt_delay_ns(65_536, u64::MAX), 0);
    }

    #[test]
    fn edt_departures_pace_at_the_rate_and_drop_past_the_horizon() {
        // 8 Mbit/s is 1 MB/s: 1 ms per 1000 bytes; no burst allowance.
        let mut s = EdtState::new(8.0, 2 * NSEC_PER_SEC, 0).expect("rate");
        assert_eq!(s.rate_bytes_per_sec, 1_000_000);
        let now = 10 * NSEC_PER_SEC;
        // Without a burst allowance an idle task's first packet leaves once its transmission
        // time at the rate has passed.
        assert_eq!(
            edt_departure(&s, 1000, 0, now),
            EdtVerdict::Depart {
                at: now + 1_000_000,
                last: now + 1_000_000
            }
        );
        s.last_departure_ns = now + 1_000_000;
        // The next one 1000 bytes later: 1 ms after the last.
        assert_eq!(
            edt_departure(&s, 1000, 0, now),
            EdtVerdict::Depart {
                at: now + 2_000_000,
                last: now + 2_000_000
            }
        );
        // A packet the stack stamped later than that keeps its own time.
        assert_eq!(
            edt_departure(&s, 1000, now + 5_000_000, now),
            EdtVerdict::Depart {
                at: now + 5_000_000,
                last: now + 2_000_000
            }
        );
        // A sustained burst: packets of 1000 bytes leave 1 ms apart, so the rate holds.
        s.last_departure_ns = now;
        for i in 1..=1000u64 {
            match edt_departure(&s, 1000, 0, now) {
                EdtVerdict::Depart { at, last } => {
                    assert_eq!(at, now + i * 1_000_000);
                    s.last_departure_ns = last;
                }
                EdtVerdict::Drop => panic!("dropped within the horizon"),
            }
        }
        // Past the 2 s horizon: dropped, state unchanged.
        s.last_departure_ns = now + 2 * NSEC_PER_SEC;
        assert_eq!(edt_departure(&s, 1000, 0, now), EdtVerdict::Drop);
        assert_eq!(s.last_departure_ns, now + 2 * NSEC_PER_SEC);
    }

    #[test]
    fn edt_burst_allowance_catches_up_on_a_short_lag_only() {
        // 1 MB/s with 5 ms of burst: a sender 3 ms late sends 3 packets at once, then paces.
        let mut s = EdtState::new(8.0, 2 * NSEC_PER_SEC, 5_000_000).expect("rate");
        let now = 10 * NSEC_PER_SEC;
        s.last_departure_ns = now - 3_000_000;
        let mut at = [0u64; 5];
        for slot in &mut at {
            match edt_departure(&s, 1000, 0, now) {
                EdtVerdict::Depart { at: a, last } => {
                    *slot = a;
                    s.last_departure_ns = last;
                }
                EdtVerdict::Drop => panic!("dropped"),
            }
        }
        assert_eq!(at, [now, now, now, now + 1_000_000, now + 2_000_000]);
        // After a long pause, no more than the 5 ms are banked.
        s.last_departure_ns = now - NSEC_PER_SEC;
        let mut immediate = 0;
        loop {
            match edt_departure(&s, 1000, 0, now) {
                EdtVerdict::Depart { at, last } if at == now => {
                    immediate += 1;
                    s.last_departure_ns = last;
                }
                _ => break,
            }
        }
        assert_eq!(immediate, 5);
        // The five banked packets brought the timeline up to now: the next one waits 1 ms.
        assert_eq!(s.last_departure_ns, now);
    }

    #[test]
    fn edt_state_words_in_field_order() {
        let s = EdtState::new(100.0, 7, 9).expect("rate");
        assert_eq!(s.to_words(), [12_500_000, 7, 0, 9]);
        assert_eq!(EdtState::from_words(s.to_words()), s);
    }

    #[test]
    fn run_queue_buckets_are_log2_and_clamped() {
        assert_eq!(run_queue_bucket(0), 0);
        assert_eq!(run_queue_bucket(1), 0);
        assert_eq!(run_queue_bucket(2), 1);
        assert_eq!(run_queue_bucket(3), 1);
        assert_eq!(run_queue_bucket(1023), 9);
        assert_eq!(run_queue_bucket(1024), 10);
        assert_eq!(run_queue_bucket(1 << 31), 31);
        assert_eq!(run_queue_bucket(u64::MAX), RUN_QUEUE_BUCKETS - 1);
        for shift in 0..31 {
            assert_eq!(run_queue_bucket(1u64 << shift), shift);
            assert_eq!(run_queue_bucket((1u64 << (shift + 1)) - 1), shift);
        }
    }

    #[test]
    fn run_queue_words_round_trip_and_add() {
        let mut words = [0u64; RUN_QUEUE_WORDS];
        words[3] = 5;
        words[RUN_QUEUE_BUCKETS] = 5;
        words[RUN_QUEUE_BUCKETS + 1] = 60;
        let mut c = RunQueueCounters::from_words(&words);
        assert_eq!((c.buckets[3], c.count, c.sum_ns), (5, 5, 60));
        c.add(&RunQueueCounters::from_words(&words));
        assert_eq!((c.buckets[3], c.count, c.sum_ns), (10, 10, 120));
    }

    #[test]
    fn device_keys_pack_kind_and_major() {
        assert_eq!(device_key(7, DEVICE_CHAR, 1, 5), [7, (2u64 << 32) | 1, 5]);
        assert_eq!(
            device_key(7, DEVICE_CHAR, 136, DEVICE_ANY_MINOR)[2],
            u64::from(u32::MAX)
        );
    }

    #[test]
    fn words_round_trip_in_field_order() {
        let c = NetCounters {
            bytes: 1500,
            packets: 3,
        };
        assert_eq!(c.to_words(), [1500, 3]);
        assert_eq!(NetCounters::from_words([1500, 3]), c);
    }

    #[test]
    fn add_sums_fieldwise_and_wraps() {
        let a = NetCounters {
            bytes: u64::MAX,
            packets: 1,
        };
        let b = NetCounters {
            bytes: 2,
            packets: 2,
        };
        assert_eq!(
            a.add(b),
            NetCounters {
                bytes: 1,
                packets: 3
            }
        );
    }
}
