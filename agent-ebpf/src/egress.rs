//! Strata's egress bandwidth limits: Earliest Departure Time (EDT) pacing.
//!
//! `egress_edt` is a tc classifier (direct action) on the egress of the agent's egress device
//! (the uplink in host mode). For each packet it finds the task of the packet's socket by cgroup
//! id in `EGRESS_EDT`, walking the socket's cgroup ancestors (`bpf_skb_ancestor_cgroup_id`, level
//! 1 down to the socket's own cgroup) as the port programs do, so a socket created in a cgroup
//! nested below the task's is still the task's. A packet of such a task gets the departure time
//! `max(its own tstamp, now, timeline + len / rate)` in `skb->tstamp`, where the task's timeline
//! is its last packet's departure, or `now - burst` if that is earlier (see
//! `strata_agent_common::edt_departure`); the `fq` qdisc on the device holds it until then. A packet that would leave more than the task's horizon from
//! now is dropped and counted in `EGRESS_DROPS`. Packets without a socket, or whose socket is in
//! no limited task's cgroup, pass untouched.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_skb_ancestor_cgroup_id},
    macros::{classifier, map},
    maps::{HashMap, PerCpuHashMap},
    programs::TcContext,
};
use strata_agent_common::{
    CgroupId, EDT_WORDS, EdtState, EdtVerdict, MAX_CGROUP_LEVELS, MAX_CGROUPS, NET_COUNTER_WORDS,
    edt_departure,
};

/// A limited task's cgroup id → its pacing state ([`EdtState`] words).
#[map]
static EGRESS_EDT: HashMap<CgroupId, [u64; EDT_WORDS]> = HashMap::with_max_entries(MAX_CGROUPS, 0);

/// A limited task's cgroup id → bytes and packets dropped past the horizon, per CPU.
#[map]
static EGRESS_DROPS: PerCpuHashMap<CgroupId, [u64; NET_COUNTER_WORDS]> =
    PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

/// The limited task of the packet's socket: its cgroup id and state, if any.
#[inline(always)]
fn task_state(ctx: &TcContext) -> Option<(CgroupId, *mut [u64; EDT_WORDS])> {
    let mut level = 1;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: the skb pointer is the one the kernel passed to this run; the helper reads the
        // cgroup of its socket (0 without a full socket, or past the socket's own level).
        let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb as *mut _, level) };
        if id == 0 {
            return None;
        }
        if let Some(state) = EGRESS_EDT.get_ptr_mut(id) {
            return Some((id, state));
        }
        level += 1;
    }
    None
}

#[classifier]
pub fn egress_edt(ctx: TcContext) -> i32 {
    let Some((id, state)) = task_state(&ctx) else {
        return TC_ACT_OK;
    };
    let len = u64::from(ctx.len());
    // SAFETY: takes no pointers.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the kernel passes a valid __sk_buff for the whole run; tstamp is readable here.
    let tstamp = unsafe { (*ctx.skb.skb).tstamp };
    // SAFETY: a value pointer of the map, valid for this run; the words are plain integers
    // (another CPU may update them at the same time: a lost update only shifts one departure,
    // as in Cilium's EDT).
    let words = unsafe { *state };
    match edt_departure(&EdtState::from_words(words), len, tstamp, now) {
        EdtVerdict::Depart { at, last } => {
            // SAFETY: as above; the timeline word is the state's third.
            unsafe { (*state)[2] = last };
            if at != tstamp {
                // SAFETY: tc programs may write __sk_buff->tstamp; fq reads it as the
                // packet's earliest departure (CLOCK_MONOTONIC, like bpf_ktime_get_ns).
                unsafe { (*ctx.skb.skb).tstamp = at };
            }
            TC_ACT_OK
        }
        EdtVerdict::Drop => {
            match EGRESS_DROPS.get_ptr_mut(id) {
                Some(drops) => {
                    // SAFETY: this CPU's value of a per-CPU map, valid for this run.
                    unsafe {
                        (*drops)[0] = (*drops)[0].wrapping_add(len);
                        (*drops)[1] = (*drops)[1].wrapping_add(1);
                    }
                }
                None => {
                    let _ = EGRESS_DROPS.insert(id, [len, 1], 0);
                }
            }
            TC_ACT_SHOT
        }
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
