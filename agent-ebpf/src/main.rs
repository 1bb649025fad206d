//! Strata's kernel-side eBPF programs (see `strata-agent-common` for the maps' layout).
//!
//! - `sched_switch` (tp_btf) and `sched_stat_runtime` (tp_btf): on-CPU time per cgroup, the
//!   kernel's own count. The scheduler adds a running task's time to
//!   `task_struct.se.sum_exec_runtime` at every update (ticks, switches, wakeups on its CPU)
//!   and charges the same amount to the task's cgroups there and then; `sched_stat_runtime`
//!   fires at each such update. At each update of the task that is `current`, and at its
//!   switch-out, the growth of its count since it was last charged (`TASK_SCHED`, per
//!   task) goes to `current`'s cgroup (`bpf_get_current_cgroup_id`, its cgroup v2 id), so the
//!   figure is the kernel's, charged to the cgroup the task is in when the kernel charges it;
//!   an update made from another CPU is picked up at the task's next one. A task is counted
//!   from when it is first switched in. What is kept per task lives in the task's own local
//!   storage (`TASK_SCHED`, `BPF_MAP_TYPE_TASK_STORAGE`): a lookup follows a pointer from the
//!   `task_struct` with no hashing and no lock, and the entry goes with the task, where the
//!   LRU hash maps used before cost a locked insert and delete per switch (about 500 ns per run
//!   of `sched_switch` here). The count is read at `TASK_RUNTIME_OFFSET`, which the
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
//!   so `bpf_get_current_cgroup_id` is its cgroup), added to its cgroup's log2 histogram. Only
//!   the `prev`/`next` arguments are read, so no field offsets are needed (aya has no CO-RE).
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
    bindings::{
        __sk_buff, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST, bpf_map_type,
        task_struct,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skb_cgroup_id,
        generated::bpf_task_storage_get,
    },
    macros::{btf_map, btf_tracepoint, cgroup_skb, map},
    maps::{LruPerCpuHashMap, PerCpuArray},
    programs::{BtfTracePointContext, SkBuffContext},
};
use strata_agent_common::{CgroupId, MAX_CGROUPS, NetCounters, RunQueueCounters, run_queue_bucket};

/// A task's local storage map (`BPF_MAP_TYPE_TASK_STORAGE`, kernel 5.11+), which aya-ebpf has
/// no type for: a BTF-defined map (`.maps`), as the kernel requires for local storage, laid out
/// as libbpf reads map definitions (each attribute a pointer to an array whose length is the
/// value). Its key is a pidfd from user space; programs reach an entry from its `task_struct`.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; they are never dereferenced,
// and the kernel serialises access to the storage it stands for.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// `task`'s entry, created zeroed if it has none; `None` when the kernel cannot (out of
    /// memory, the task is being freed, or the storage is busy on this CPU).
    #[inline(always)]
    fn get_or_create(&self, task: *mut task_struct) -> Option<*mut T> {
        // SAFETY: `task` is a `task_struct` a BTF tracepoint was given (the verifier checks
        // its type); a null value pointer creates a zeroed entry.
        let value = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task,
                core::ptr::null_mut(),
                u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE),
            )
        };
        (!value.is_null()).then_some(value.cast::<T>())
    }
}

/// What is kept per task (all zero when its entry is created).
#[repr(C)]
pub struct TaskSched {
    /// When it became runnable (ns, CLOCK_MONOTONIC); 0 when it is not waiting for a CPU.
    runnable_since: u64,
    /// Its `sum_exec_runtime` when its time was last charged (valid when `seen` is 1).
    charged_runtime: u64,
    /// 1 once `charged_runtime` holds a count.
    seen: u64,
}

/// Each task's scheduling state ([`TaskSched`]), in its local storage.
#[btf_map]
static TASK_SCHED: TaskStorage<TaskSched> = TaskStorage::new();

/// The offset of `se.sum_exec_runtime` in `struct task_struct`, set by the agent from the
/// kernel's BTF before loading; 0: unknown, time slices on the clock.
#[unsafe(no_mangle)]
static TASK_RUNTIME_OFFSET: u64 = 0;

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
    mark_runnable(ctx.arg::<*mut task_struct>(0));
    0
}

/// `sched_wakeup_new(struct task_struct *p)`: the new task `p` became runnable.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    mark_runnable(ctx.arg::<*mut task_struct>(0));
    0
}

#[inline(always)]
fn mark_runnable(task: *mut task_struct) {
    if let Some(s) = TASK_SCHED.get_or_create(task) {
        // SAFETY: no arguments, no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: `s` is `task`'s entry, valid for this run.
        unsafe { (*s).runnable_since = now };
    }
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let prev = ctx.arg::<*mut task_struct>(1);
    let next = ctx.arg::<*mut task_struct>(2);
    // The low 32 bits are the thread id; 0 only for the idle tasks, which are not counted.
    let prev_sched = if bpf_get_current_pid_tgid() as u32 == 0 {
        None
    } else {
        TASK_SCHED.get_or_create(prev)
    };
    let next_sched = TASK_SCHED.get_or_create(next);
    run_queue_switch(prev_sched, next_sched, now);
    // SAFETY: a global of this object, set before loading and never written after.
    let offset = unsafe { core::ptr::read_volatile(&TASK_RUNTIME_OFFSET) };
    if offset == 0 {
        cpu_time_switch(now);
    } else {
        if let Some(s) = prev_sched {
            charge_current(s, prev as u64, offset);
        }
        if let Some(s) = next_sched {
            start_counting(s, next as u64, offset);
        }
    }
    0
}

/// Run-queue latency at a switch from `prev` (`current`; its entry, `None` for an idle task)
/// to `next` (its entry).
#[inline(always)]
fn run_queue_switch(prev: Option<*mut TaskSched>, next: Option<*mut TaskSched>, now: u64) {
    let Some(pending) = PENDING_WAIT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `pending` is this CPU's slot of a per-CPU array; the scheduler runs this program
    // with preemption disabled, so nothing else touches it meanwhile.
    let waited = unsafe { core::ptr::replace(pending, 0) };
    if let Some(prev) = prev {
        if waited != 0 {
            // SAFETY: no arguments; `current` is `prev`, the task that waited.
            let cgroup = unsafe { bpf_get_current_cgroup_id() };
            add_wait(cgroup, waited - 1);
        }
        // Still runnable (preempted), it waits on the run queue from now; blocked, its wakeup
        // overwrites this before it can run again.
        // SAFETY: `prev`'s entry, valid for this run.
        unsafe { (*prev).runnable_since = now };
    }
    if let Some(next) = next {
        // SAFETY: `next`'s entry, valid for this run.
        let since = unsafe { core::ptr::replace(&raw mut (*next).runnable_since, 0) };
        if since != 0 && now >= since {
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
    let task = ctx.arg::<*mut task_struct>(0);
    // SAFETY: no arguments, no preconditions.
    let current = unsafe { bpf_get_current_task() };
    // The low 32 bits are the thread id; 0 only for the idle tasks.
    if offset != 0
        && task as u64 == current
        && bpf_get_current_pid_tgid() as u32 != 0
        && let Some(s) = TASK_SCHED.get_or_create(task)
    {
        charge_current(s, task as u64, offset);
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

/// Charges `task` (`current`, not an idle task; `sched` its entry) its runtime since it was
/// last charged, to its cgroup (`current`'s), and remembers where it got to; a task not seen
/// before is counted from now.
#[inline(always)]
fn charge_current(sched: *mut TaskSched, task: u64, offset: u64) {
    let Some(runtime) = runtime_of(task, offset) else {
        return;
    };
    // SAFETY: the task's entry; only the CPU the task runs on touches it, with preemption
    // disabled.
    unsafe {
        if (*sched).seen != 0 && runtime > (*sched).charged_runtime {
            // SAFETY: no arguments; `current` is `task`.
            let cgroup = bpf_get_current_cgroup_id();
            add_u64(&CPU_TIME_NS, cgroup, runtime - (*sched).charged_runtime);
        }
        (*sched).charged_runtime = runtime;
        (*sched).seen = 1;
    }
}

/// `next`, about to run, is counted from now if it was not seen before.
#[inline(always)]
fn start_counting(sched: *mut TaskSched, next: u64, offset: u64) {
    // SAFETY: `next`'s entry; it is not running anywhere yet.
    if unsafe { (*sched).seen } != 0 {
        return;
    }
    if let Some(runtime) = runtime_of(next, offset) {
        // SAFETY: as above.
        unsafe {
            (*sched).charged_runtime = runtime;
            (*sched).seen = 1;
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
