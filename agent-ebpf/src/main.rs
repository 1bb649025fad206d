//! Strata's kernel-side eBPF programs (see `strata-agent-common` for the maps' layout).
//!
//! - `sched_switch` (tp_btf) and `sched_stat_runtime` (tp_btf): on-CPU time per cgroup, the
//!   kernel's own count. The scheduler adds a running task's time to
//!   `task_struct.se.sum_exec_runtime` at every update (ticks, switches, wakeups on its CPU)
//!   and charges the same amount to the task's cgroups there and then; `sched_stat_runtime`
//!   fires at each such update. At each update of the task that is `current`, and at its
//!   switch-out, the growth of its count since it was last charged (`CHARGED_RUNTIME`, per
//!   task) goes to `current`'s cgroup (`bpf_get_current_cgroup_id`, its cgroup v2 id), so the
//!   figure is the kernel's, charged to the cgroup the task is in when the kernel charges it;
//!   an update made from another CPU is picked up at the task's next one. A task is counted
//!   from when it is first switched in. The count is read at `TASK_RUNTIME_OFFSET`, which the
//!   agent finds in the kernel's BTF and sets before loading (aya has no CO-RE). When it could
//!   not (0), `sched_switch` adds the clock's time since this CPU's previous switch instead,
//!   which also counts time a hypervisor steals and interrupts and charges a whole slice to the
//!   cgroup at its end. The idle tasks (pid 0) are not counted.
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
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skb_cgroup_id,
    },
    macros::{btf_tracepoint, cgroup_skb, map},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{BtfTracePointContext, SkBuffContext},
};
use strata_agent_common::{CgroupId, MAX_CGROUPS, NetCounters, RunQueueCounters, run_queue_bucket};

/// The most tasks waiting for a CPU that are tracked at once (an LRU map: the oldest go first).
const MAX_RUNNABLE_TASKS: u32 = 65_536;

/// The offset of `se.sum_exec_runtime` in `struct task_struct`, set by the agent from the
/// kernel's BTF before loading; 0: unknown, time slices on the clock.
#[unsafe(no_mangle)]
static TASK_RUNTIME_OFFSET: u64 = 0;

/// This CPU's time of its last context switch (ns, CLOCK_MONOTONIC); 0 before the first one.
#[map]
static SWITCH_TS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Task (`task_struct` address) → its `sum_exec_runtime` when its time was last charged.
#[map]
static CHARGED_RUNTIME: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_RUNNABLE_TASKS, 0);

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
    // SAFETY: a global of this object, set before loading and never written after.
    let offset = unsafe { core::ptr::read_volatile(&TASK_RUNTIME_OFFSET) };
    if offset == 0 {
        cpu_time_switch(now);
    } else {
        cpu_runtime_switch(&ctx, offset);
    }
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

/// `sched_stat_runtime(struct task_struct *tsk, u64 runtime, ...)`: the scheduler charged
/// `tsk` the time it ran since its last update (at a tick, at a switch, at a wakeup on its
/// CPU). When `tsk` is the task running on this CPU, its time so far goes to its cgroup now,
/// as the kernel's cgroup counters get it now; an update made from another CPU is picked up at
/// the next one made here, or at the switch-out.
#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: as in sched_switch.
    let offset = unsafe { core::ptr::read_volatile(&TASK_RUNTIME_OFFSET) };
    let task = ctx.arg::<u64>(0);
    // SAFETY: no arguments, no preconditions.
    if offset != 0 && task == unsafe { bpf_get_current_task() } {
        charge_current(task, offset);
    }
    0
}

/// `task`'s count of nanoseconds on a CPU (`se.sum_exec_runtime`), or `None` if unreadable.
#[inline(always)]
fn runtime_of(task: u64, offset: u64) -> Option<u64> {
    // SAFETY: `task` is a task_struct a tracepoint was given; the helper checks the read and
    // fails rather than fault.
    unsafe { bpf_probe_read_kernel((task + offset) as *const u64) }.ok()
}

/// Charges `task` (`current`, not an idle task) its runtime since it was last charged, to its
/// cgroup (`current`'s), and remembers where it got to.
#[inline(always)]
fn charge_current(task: u64, offset: u64) {
    // The low 32 bits are the thread id; 0 only for the idle tasks.
    if task == 0 || bpf_get_current_pid_tgid() as u32 == 0 {
        return;
    }
    let Some(runtime) = runtime_of(task, offset) else {
        return;
    };
    match CHARGED_RUNTIME.get_ptr_mut(task) {
        Some(last) => {
            // SAFETY: the task's entry; only the CPU the task runs on touches it, with
            // preemption disabled.
            let charged = unsafe { core::ptr::replace(last, runtime) };
            if runtime > charged {
                // SAFETY: no arguments; `current` is `task`.
                let cgroup = unsafe { bpf_get_current_cgroup_id() };
                add_u64(&CPU_TIME_NS, cgroup, runtime - charged);
            }
        }
        // First seen: counted from now.
        None => {
            let _ = CHARGED_RUNTIME.insert(task, runtime, 0);
        }
    }
}

/// On-CPU time from the kernel's count: `prev`'s runtime not charged yet goes to its cgroup
/// (`current` is still `prev`); `next` is counted from now if it was not seen before (or its
/// address belonged to an ended task with a larger count).
#[inline(always)]
fn cpu_runtime_switch(ctx: &BtfTracePointContext, offset: u64) {
    let prev = ctx.arg::<u64>(1);
    let next = ctx.arg::<u64>(2);
    charge_current(prev, offset);
    let Some(runtime) = runtime_of(next, offset) else {
        return;
    };
    match CHARGED_RUNTIME.get_ptr_mut(next) {
        // SAFETY: `next`'s entry; it is not running anywhere yet.
        Some(last) if unsafe { *last } > runtime => unsafe { *last = runtime },
        Some(_) => {}
        None => {
            let _ = CHARGED_RUNTIME.insert(next, runtime, 0);
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
