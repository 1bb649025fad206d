//! Strata's port enforcement for tasks in the host's network namespace.
//!
//! Attached once, with multi-attach, at the cgroup that holds every task cgroup (the agent's
//! tasks root), so they run for every inet `bind()` made below it. A task is found by its
//! cgroup id in `TASK_PORTS`: the programs look at each ancestor of the calling thread's cgroup
//! (`bpf_get_current_ancestor_cgroup_id`, level 1 down to the thread's own cgroup), so a thread
//! in a cgroup nested below its task's cgroup is still that task's. A thread none of whose
//! cgroups is in the map (the agent, its supervisors, anything the agent does not manage) is
//! never refused.
//!
//! - `port_bind4` / `port_bind6` (cgroup/bind4, cgroup/bind6) see the address a task asked for,
//!   before the kernel takes the port: a port other than 0 that is not one of the task's ranges
//!   is refused, and `bind()` fails with EPERM. Every inet bind goes through them: TCP and UDP
//!   (and any other inet protocol), and IPv6 sockets bound to IPv4-mapped addresses
//!   (`::ffff:a.b.c.d`), which take the bind6 path.
//! - `port_post_bind4` / `port_post_bind6` (cgroup/post_bind4, post_bind6) see the port the
//!   socket got: after a bind to port 0 the kernel has picked one, which is refused (EPERM, the
//!   kernel undoes the bind) when it lies in the agent's managed ports (`MANAGED_PORTS`, what it
//!   offers) and is not the task's, so a task never holds a port offered to another.
//!
//! Not seen: the implicit bind of `connect()` or `sendto()` on an unbound socket (autobind),
//! which picks a port from `ip_local_port_range` without these hooks; the agent warns when that
//! range overlaps its managed ports.

#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_ancestor_cgroup_id,
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, HashMap},
    programs::{SockAddrContext, SockContext},
};
use strata_agent_common::{CgroupId, MAX_CGROUP_LEVELS, MAX_CGROUPS, PortRanges, port_in};

/// A task's cgroup id → the ports it may bind.
#[map]
static TASK_PORTS: HashMap<CgroupId, PortRanges> = HashMap::with_max_entries(MAX_CGROUPS, 0);

/// The agent's managed (offered) ports.
#[map]
static MANAGED_PORTS: Array<PortRanges> = Array::with_max_entries(1, 0);

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// The port ranges of the calling thread's task, if it is a task's.
#[inline(always)]
fn task_ports() -> Option<&'static PortRanges> {
    let mut level = 1;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: takes a level, no pointers; 0 when the thread's cgroup is not that deep.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return None;
        }
        // SAFETY: the value is a plain array read in this run; the map outlives the program.
        if let Some(ports) = unsafe { TASK_PORTS.get(id) } {
            return Some(ports);
        }
        level += 1;
    }
    None
}

/// An explicit bind: a port other than 0 must be one of the task's.
#[inline(always)]
fn check_bind(ctx: &SockAddrContext) -> i32 {
    let Some(ports) = task_ports() else {
        return ALLOW;
    };
    // SAFETY: the kernel passes a valid bpf_sock_addr for the whole run of the program.
    let user_port = unsafe { (*ctx.sock_addr).user_port };
    // The port is in network byte order in the low 16 bits.
    let port = u16::from_be(user_port as u16);
    if port == 0 || port_in(ports, port) {
        ALLOW
    } else {
        DENY
    }
}

/// After the bind: a port the kernel picked in the managed ports must be the task's.
#[inline(always)]
fn check_post_bind(ctx: &SockContext) -> i32 {
    let Some(ports) = task_ports() else {
        return ALLOW;
    };
    // SAFETY: the kernel passes a valid bpf_sock for the whole run of the program.
    let src_port = unsafe { (*ctx.sock).src_port };
    // In host byte order.
    let port = src_port as u16;
    let Some(managed) = MANAGED_PORTS.get(0) else {
        return ALLOW;
    };
    if port_in(managed, port) && !port_in(ports, port) {
        DENY
    } else {
        ALLOW
    }
}

#[cgroup_sock_addr(bind4)]
pub fn port_bind4(ctx: SockAddrContext) -> i32 {
    check_bind(&ctx)
}

/// Also IPv4-mapped IPv6 addresses: an AF_INET6 socket's bind always comes here.
#[cgroup_sock_addr(bind6)]
pub fn port_bind6(ctx: SockAddrContext) -> i32 {
    check_bind(&ctx)
}

#[cgroup_sock(post_bind4)]
pub fn port_post_bind4(ctx: SockContext) -> i32 {
    check_post_bind(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn port_post_bind6(ctx: SockContext) -> i32 {
    check_post_bind(&ctx)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
