//! Strata's per-task device control (cgroup_device).
//!
//! `device_allowlist` runs at every device access (open, mknod) of a task in a cgroup it is
//! attached to. It allows the access only if `DEVICE_RULES` has an entry for the accessing
//! task's cgroup (`bpf_get_current_cgroup_id`), the device's type and major, and its minor (or
//! any minor), whose access mask covers the access. Everything else is denied (EPERM). The
//! agent writes a task's rules before the task's first process starts.

#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{cgroup_device, map},
    maps::HashMap,
    programs::DeviceContext,
};
use strata_agent_common::{DEVICE_ANY_MINOR, DeviceKey, MAX_DEVICE_RULES, device_key};

/// Device key (cgroup, kind << 32 | major, minor) → allowed accesses.
#[map]
static DEVICE_RULES: HashMap<DeviceKey, u32> = HashMap::with_max_entries(MAX_DEVICE_RULES, 0);

#[cgroup_device]
pub fn device_allowlist(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the whole run of the program.
    let dev = unsafe { &*ctx.device };
    let kind = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    // SAFETY: no arguments; the cgroup of the task making the access.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let exact = device_key(cgroup, kind, dev.major, dev.minor);
    let any = device_key(cgroup, kind, dev.major, DEVICE_ANY_MINOR);
    // SAFETY: the values are plain u32s read once; the map outlives the program run.
    let allowed = unsafe { DEVICE_RULES.get(exact).or_else(|| DEVICE_RULES.get(any)) };
    match allowed {
        Some(mask) if *mask & access == access => 1,
        _ => 0,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
