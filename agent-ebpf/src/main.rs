//! Strata's kernel-side eBPF programs (see `strata-agent-common` for the maps' layout).
//!
//! - `sched_switch` (tp_btf): at every context switch, adds the time since this CPU's previous
//!   switch to the cgroup of the task being switched out. The tracepoint fires before the switch,
//!   so `current` is still that task and `bpf_get_current_cgroup_id` gives its cgroup v2 id. The
//!   idle tasks (pid 0) are not counted, and neither is each CPU's first interval after loading.
//!   It also measures run-queue (scheduling) latency. `sched_switch` records the time every task
//!   is switched out; `sched_wakeup` and `sched_wakeup_new` record when a task became runnable,
//!   overwriting that for a task that had blocked (a blocked task is always woken, after its
//!   switch-out, before it runs again), so what is recorded is when the task became runnable:
//!   woken, or preempted while still runnable. When the task is switched in, its wait is kept in
//!   this CPU's `PENDING_WAIT` slot and, at this CPU's next switch (when the task is `current`,
//!   so `bpf_get_current_cgroup_id` is its cgroup), added to its cgroup's log2 histogram. Tasks
//!   are keyed by their `task_struct` address and only the `prev`/`next` arguments are read, so
//!   no field offsets are needed (aya has no CO-RE) and every kernel with tp_btf works.
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
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{BtfTracePointContext, SkBuffContext},
};
use strata_agent_common::{CgroupId, MAX_CGROUPS, NetCounters, RunQueueCounters, run_queue_bucket};

/// The most tasks waiting for a CPU that are tracked at once (an LRU map: the oldest go first).
const MAX_RUNNABLE_TASKS: u32 = 65_536;

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

/// Task (`task_struct` address) → when it became runnable (ns, CLOCK_MONOTONIC).
#[map]
static RUNNABLE_SINCE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_RUNNABLE_TASKS, 0);

/// This CPU's current task's run-queue wait plus one, not yet added to its cgroup; 0 for none.
#[map]
static PENDING_WAIT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// cgroup id → run-queue latency histogram, count and sum.
#[map]
static RUN_QUEUE: LruPerCpuHashMap<CgroupId, RunQueueCounters> =
    LruPerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

/// `sched_wakeup(struct task_struct *p)`: `p` became runnable.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    mark_runnable(ctx.arg::<u64>(0));
    0
}

/// `sched_wakeup_new(struct task_struct *p)`: the new task `p` became runnable.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    mark_runnable(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn mark_runnable(task: u64) {
    // SAFETY: no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = RUNNABLE_SINCE.insert(task, now, 0);
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    run_queue_switch(&ctx, now);
    cpu_time_switch(now);
    0
}

/// Run-queue latency at a switch from `prev` (`current`) to `next`.
#[inline(always)]
fn run_queue_switch(ctx: &BtfTracePointContext, now: u64) {
    let Some(pending) = PENDING_WAIT.get_ptr_mut(0) else {
        return;
    };
    // The low 32 bits are the thread id; 0 only for the idle tasks, which never wait.
    let prev_is_idle = bpf_get_current_pid_tgid() as u32 == 0;
    // SAFETY: `pending` is this CPU's slot of a per-CPU array; the scheduler runs this program
    // with preemption disabled, so nothing else touches it meanwhile.
    let waited = unsafe { core::ptr::replace(pending, 0) };
    if waited != 0 && !prev_is_idle {
        // SAFETY: no arguments; `current` is `prev`, the task that waited.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        add_wait(cgroup, waited - 1);
    }
    let prev = ctx.arg::<u64>(1);
    let next = ctx.arg::<u64>(2);
    if !prev_is_idle {
        // Still runnable (preempted), it waits on the run queue from now; blocked, its wakeup
        // overwrites this before it can run again.
        let _ = RUNNABLE_SINCE.insert(prev, now, 0);
    }
    // SAFETY: the value is a plain u64, copied out at once.
    let since = unsafe { RUNNABLE_SINCE.get(next) }.copied();
    if let Some(since) = since {
        let _ = RUNNABLE_SINCE.remove(next);
        if now >= since {
            // SAFETY: as above.
            unsafe { *pending = now - since + 1 };
        }
    }
}

#[inline(always)]
fn add_wait(cgroup: CgroupId, ns: u64) {
    let bucket = run_queue_bucket(ns);
    if RUN_QUEUE.get_ptr_mut(cgroup).is_none() {
        // Zeroed first, then added to like an existing entry (if another CPU inserted it
        // meanwhile, BPF_NOEXIST keeps that one).
        let _ = RUN_QUEUE.insert(cgroup, RunQueueCounters::default(), u64::from(BPF_NOEXIST));
    }
    if let Some(c) = RUN_QUEUE.get_ptr_mut(cgroup) {
        // SAFETY: `c` points at this CPU's value of a per-CPU map entry; preemption is off.
        unsafe {
            if let Some(b) = (*c).buckets.get_mut(bucket) {
                *b += 1;
            }
            (*c).count += 1;
            (*c).sum_ns += ns;
        }
    }
}

/// On-CPU time: the time since this CPU's previous switch goes to `current`'s cgroup.
#[inline(always)]
fn cpu_time_switch(now: u64) {
    let Some(ts) = SWITCH_TS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `ts` points at this CPU's slot of a per-CPU array; the scheduler runs this program
    // with preemption disabled, so nothing else touches the slot meanwhile.
    let last = unsafe { core::ptr::replace(ts, now) };
    if last == 0 || now <= last {
        return;
    }
    // The low 32 bits are the thread id; 0 only for the idle tasks.
    if bpf_get_current_pid_tgid() as u32 == 0 {
        return;
    }
    // SAFETY: no arguments; `current` is the task being switched out.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    add_u64(&CPU_TIME_NS, cgroup, now - last);
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
