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

#[cfg(test)]
mod tests {
    use super::*;

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
