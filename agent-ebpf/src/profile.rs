//! Strata's CPU profiler (perf_event), loaded by the agent on demand for `strata profile`.
//!
//! `profile_cpu` is attached to a software CPU-clock perf event on every online CPU (sampling at
//! a fixed frequency). At each sample it looks up the cgroup of the task on the CPU
//! (`bpf_get_current_cgroup_id`) in `PROFILE_TARGETS` and, only for a target cgroup, records the
//! task's user and kernel stacks in `PROFILE_STACKS` and counts the (process, user stack, kernel
//! stack) triple in `PROFILE_COUNTS`. Everything else costs one hash lookup.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext as _},
};
use strata_agent_common::{
    CgroupId, MAX_PROFILE_STACKS, MAX_PROFILE_TARGETS, NO_STACK, PROFILE_STAT_WORDS, ProfileKey,
};

/// cgroup id → 1 for each cgroup to sample.
#[map]
static PROFILE_TARGETS: HashMap<CgroupId, u8> = HashMap::with_max_entries(MAX_PROFILE_TARGETS, 0);

/// Stack id → instruction pointers.
#[map]
static PROFILE_STACKS: StackTrace = StackTrace::with_max_entries(MAX_PROFILE_STACKS, 0);

/// (tgid, user stack id, kernel stack id, 0) → samples.
#[map]
static PROFILE_COUNTS: PerCpuHashMap<ProfileKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_PROFILE_STACKS, 0);

/// Samples taken; samples with a stack that could not be recorded; samples not counted.
#[map]
static PROFILE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROFILE_STAT_WORDS, 0);

const STAT_SAMPLES: u32 = 0;
const STAT_STACK_ERRORS: u32 = 1;
const STAT_LOST: u32 = 2;

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    // SAFETY: no arguments; the cgroup of the task that was interrupted.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is a u8, copied out at once.
    if unsafe { PROFILE_TARGETS.get(cgroup) }.is_none() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    bump(STAT_SAMPLES);
    let user = stack_id(&ctx, u64::from(BPF_F_USER_STACK));
    let kernel = stack_id(&ctx, 0);
    // A sample taken in user mode has no kernel stack: only a missing user stack is an error.
    if user == NO_STACK {
        bump(STAT_STACK_ERRORS);
    }
    let key: ProfileKey = [tgid, user, kernel, 0];
    if let Some(v) = PROFILE_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU map entry; perf_event programs do not nest.
        unsafe { *v += 1 };
    } else if PROFILE_COUNTS
        .insert(key, 1, u64::from(BPF_NOEXIST))
        .is_err()
    {
        if let Some(v) = PROFILE_COUNTS.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { *v += 1 };
        } else {
            bump(STAT_LOST);
        }
    }
    0
}

#[inline(always)]
fn stack_id(ctx: &PerfEventContext, flags: u64) -> u32 {
    match ctx.get_stackid(&PROFILE_STACKS, flags) {
        Ok(id) if id >= 0 && id < i64::from(u32::MAX) => id as u32,
        _ => NO_STACK,
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(v) = PROFILE_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; perf_event programs do not nest.
        unsafe { *v += 1 };
    }
}

/// The kernel requires a GPL-compatible license for perf_event programs' helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
