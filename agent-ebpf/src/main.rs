//! Strata's kernel-side eBPF programs (see `strata-agent-common` for the maps' layout).
//!
//! - `sched_switch` (tp_btf): at every context switch, adds the time since this CPU's previous
//!   switch to the cgroup of the task being switched out. The tracepoint fires before the switch,
//!   so `current` is still that task and `bpf_get_current_cgroup_id` gives its cgroup v2 id. The
//!   idle tasks (pid 0) are not counted, and neither is each CPU's first interval after loading.
//! - `cgroup_skb_ingress` / `cgroup_skb_egress` (cgroup_skb): count every IP packet's length
//!   (headers included) and one packet against the cgroup of the **socket** the packet belongs to
//!   (`bpf_skb_cgroup_id`: the socket's cgroup, i.e. the cgroup of the task that created the
//!   socket; an accepted connection's socket belongs to the listener's cgroup). Attached at a cgroup
//!   of the unified hierarchy, they run for every socket at or below it. Packets are never dropped.
//!
//! All counters live in per-CPU maps: the BPF target has no 64-bit atomic add, and per-CPU values
//! need none (user space sums the CPUs). A program interrupted on its CPU by a softirq running the
//! same program can, rarely, lose that one update.

#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_skb_cgroup_id,
    },
    macros::{btf_tracepoint, cgroup_skb, map},
    maps::{LruPerCpuHashMap, PerCpuArray},
    programs::{BtfTracePointContext, SkBuffContext},
};
use strata_agent_common::{CgroupId, MAX_CGROUPS, NetCounters};

/// This CPU's time of its last context switch (ns, CLOCK_MONOTONIC); 0 before the first one.
#[map]
static SWITCH_TS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// cgroup id → on-CPU nanoseconds.
#[map]
static CPU_TIME_NS: LruPerCpuHashMap<CgroupId, u64> =
    LruPerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

/// cgroup id → received bytes and packets.
#[map]
static NET_INGRESS: LruPerCpuHashMap<CgroupId, NetCounters> =
    LruPerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

/// cgroup id → sent bytes and packets.
#[map]
static NET_EGRESS: LruPerCpuHashMap<CgroupId, NetCounters> =
    LruPerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(_ctx: BtfTracePointContext) -> i32 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(ts) = SWITCH_TS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: `ts` points at this CPU's slot of a per-CPU array; the scheduler runs this program
    // with preemption disabled, so nothing else touches the slot meanwhile.
    let last = unsafe { core::ptr::replace(ts, now) };
    if last == 0 || now <= last {
        return 0;
    }
    // The low 32 bits are the thread id; 0 only for the idle tasks.
    if bpf_get_current_pid_tgid() as u32 == 0 {
        return 0;
    }
    // SAFETY: no arguments; `current` is the task being switched out.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    add_u64(&CPU_TIME_NS, cgroup, now - last);
    0
}

#[cgroup_skb(ingress)]
pub fn cgroup_skb_ingress(ctx: SkBuffContext) -> i32 {
    count_packet(&NET_INGRESS, &ctx);
    1
}

#[cgroup_skb(egress)]
pub fn cgroup_skb_egress(ctx: SkBuffContext) -> i32 {
    count_packet(&NET_EGRESS, &ctx);
    1
}

#[inline(always)]
fn count_packet(map: &LruPerCpuHashMap<CgroupId, NetCounters>, ctx: &SkBuffContext) {
    // SAFETY: the context pointer is the program's own __sk_buff, valid for the whole run.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast::<__sk_buff>()) };
    let add = NetCounters {
        bytes: u64::from(ctx.len()),
        packets: 1,
    };
    if let Some(v) = map.get_ptr_mut(cgroup) {
        // SAFETY: `v` points at this CPU's value of a per-CPU map entry.
        unsafe { *v = (*v).add(add) };
    } else if map.insert(cgroup, add, u64::from(BPF_NOEXIST)).is_err()
        && let Some(v) = map.get_ptr_mut(cgroup)
    {
        // Another CPU created the entry first: add to this CPU's value of it.
        // SAFETY: as above.
        unsafe { *v = (*v).add(add) };
    }
}

#[inline(always)]
fn add_u64(map: &LruPerCpuHashMap<CgroupId, u64>, key: CgroupId, delta: u64) {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: `v` points at this CPU's value of a per-CPU map entry.
        unsafe { *v += delta };
    } else if map.insert(key, delta, u64::from(BPF_NOEXIST)).is_err()
        && let Some(v) = map.get_ptr_mut(key)
    {
        // Another CPU created the entry first: add to this CPU's value of it.
        // SAFETY: as above.
        unsafe { *v += delta };
    }
}

/// The kernel requires a GPL-compatible license for tracing programs and their helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
