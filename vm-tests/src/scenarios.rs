//! The scenarios that run both in the qemu guest (`tests/guest.rs`, pure cgroup v2) and on the
//! host (`tests/host_isolation.rs`, `tests/host_ebpf.rs`: hybrid cgroups on the development
//! machines), declared once in [`scenarios!`](crate::scenarios!), and what the host tests need to
//! run them.
//!
//! Each test file turns a group of scenarios into `#[test]`s with one line:
//!
//! ```text
//! strata_vm_tests::scenarios!(containerizer => guest_tests); // tests/guest.rs
//! strata_vm_tests::scenarios!(containerizer => host_tests); // tests/host_isolation.rs
//! ```
//!
//! A guest test is `#[ignore]`d on the host and starts with [`guest_or_skip`]; a host test runs
//! the scenarios one at a time ([`one_at_a_time`]) and skips with a message where the host cannot
//! run them ([`host_can_isolate`], [`host_can_trace`]).
//!
//! [`guest_or_skip`]: crate::guest_or_skip

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use strata_agent::discovery::{CgroupMode, btf_available, cgroup_mode};

/// Every scenario shared by the guest and the host, declared once, by group: `containerizer`
/// (the agent's `LinuxContainerizer` and its usage accounting; on the host in
/// `tests/host_isolation.rs`) and `tracing` (eBPF scheduling and profiling; on the host in
/// `tests/host_ebpf.rs`).
///
/// `scenarios!(GROUP => guest_tests)` makes the group's guest tests, `scenarios!(GROUP =>
/// host_tests)` its host tests. One line a scenario:
///
/// ```text
/// GUEST_TEST [as HOST_TEST] => MODULE::FUNCTION [, on the host MODULE::FUNCTION];
/// ```
///
/// The test names are the guest's `GUEST_TEST` and the host's `HOST_TEST` (the same name where
/// `as` is left out); `FUNCTION` (in this crate's `MODULE`) runs the scenario, given the helper
/// binary's path, on the host too unless another function is named for it.
#[macro_export]
macro_rules! scenarios {
    (containerizer => $make:ident) => {
        $crate::__scenarios! { $make host_can_isolate; []
            containerizer_memory_limit_oom_kills_only_the_offender
                as memory_limit_oom_kills_only_the_offender
                => isolation::memory_limit_oom_kills_only_the_offender;
            containerizer_fork_bomb_is_stopped_by_pids_max
                as fork_bomb_is_stopped_by_pids_max
                => isolation::fork_bomb_is_stopped_by_pids_max;
            containerizer_cpu_limit_throttles
                as cpu_limit_throttles
                => isolation::cpu_limit_throttles;
            containerizer_cpu_weights_share_in_proportion
                as cpu_weights_share_in_proportion
                => isolation::cpu_weights_share_in_proportion;
            containerizer_kill_terminates_then_kills_the_whole_cgroup
                as kill_terminates_then_kills_the_whole_cgroup
                => isolation::kill_terminates_then_kills_the_whole_cgroup;
            containerizer_a_task_sees_only_its_processes_and_its_hostname
                as a_task_sees_only_its_processes_and_its_hostname
                => isolation::a_task_sees_only_its_processes_and_its_hostname;
            containerizer_an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox
                as an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox
                => isolation::an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox;
            containerizer_capabilities_asked_for_are_kept
                as capabilities_asked_for_are_kept
                => isolation::capabilities_asked_for_are_kept;
            containerizer_network_isolation_leaves_only_loopback
                as network_isolation_leaves_only_loopback
                => isolation::network_isolation_leaves_only_loopback;
            containerizer_device_control_denies_all_but_the_standard_and_given_devices
                as device_control_denies_all_but_the_standard_and_given_devices
                => isolation::device_control_denies_all_but_the_standard_and_given_devices;
            containerizer_device_control_gives_gpu_tasks_only_their_nvidia_nodes
                as device_control_gives_gpu_tasks_only_their_nvidia_nodes
                => isolation::device_control_gives_gpu_tasks_only_their_nvidia_nodes;
            containerizer_a_capability_the_agent_does_not_allow_is_refused
                as a_capability_the_agent_does_not_allow_is_refused
                => isolation::a_capability_the_agent_does_not_allow_is_refused;
            containerizer_an_allowed_capability_binds_port_80_and_a_task_without_it_cannot
                as an_allowed_capability_binds_port_80_and_a_task_without_it_cannot
                => isolation::an_allowed_capability_binds_port_80_and_a_task_without_it_cannot;
            containerizer_seccomp_denies_mount_and_user_namespaces_even_with_capabilities
                as seccomp_denies_mount_and_user_namespaces_even_with_capabilities
                => isolation::seccomp_denies_mount_and_user_namespaces_even_with_capabilities;
            containerizer_a_task_runs_in_a_user_namespace_mapping_only_its_ids
                as a_task_runs_in_a_user_namespace_mapping_only_its_ids
                => isolation::a_task_runs_in_a_user_namespace_mapping_only_its_ids;
            containerizer_a_task_gets_only_its_own_environment
                as a_task_gets_only_its_own_environment
                => isolation::a_task_gets_only_its_own_environment;
            containerizer_sandboxes_are_private_and_run_files_the_agents_alone
                as sandboxes_are_private_and_run_files_the_agents_alone
                => isolation::sandboxes_are_private_and_run_files_the_agents_alone;
            bridge_tasks_reach_each_other_and_the_host_and_leave_nothing
                => bridge::bridge_tasks_reach_each_other_and_the_host_and_leave_nothing,
                on the host bridge::host_bridge_tasks_reach_each_other_and_the_host_and_leave_nothing;
            bridge_a_restarted_agent_readopts_a_bridge_task
                => bridge::a_restarted_agent_readopts_a_bridge_task,
                on the host bridge::host_a_restarted_agent_readopts_a_bridge_task;
            bridge_tasks_the_agent_cannot_run_are_refused
                => bridge::bridge_tasks_the_agent_cannot_run_are_refused,
                on the host bridge::host_bridge_tasks_the_agent_cannot_run_are_refused;
            bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port
                => bridge::bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port,
                on the host bridge::host_bridge_tasks_are_masqueraded_and_reached_on_their_mapped_port;
            bridge_task_traffic_is_counted
                => bridge::bridge_task_traffic_is_counted,
                on the host bridge::host_bridge_task_traffic_is_counted;
            accounting_cpu_seconds_match_the_task_rusage
                => accounting::cpu_seconds_match_the_task_rusage;
            accounting_network_bytes_match_the_payload
                => accounting::network_bytes_match_the_payload;
            accounting_memory_matches_what_the_task_allocated
                => accounting::memory_matches_what_the_task_allocated;
            accounting_metrics_show_the_values_move
                => accounting::metrics_show_the_values_move;
        }
    };
    (tracing => $make:ident) => {
        $crate::__scenarios! { $make host_can_trace; []
            // Other work may share the host: there the measure that holds under it (the qemu
            // guest runs the strict one on quantiles).
            run_queue_latency_of_two_tasks_on_one_cpu_is_far_above_an_idle_ones
                => profiling::run_queue_latency_of_two_tasks_on_one_cpu_is_far_above_an_idle_ones,
                on the host profiling::run_queue_wait_of_two_tasks_on_one_cpu_is_far_above_an_idle_ones_on_a_busy_host;
            profile_of_a_task_shows_its_hot_function
                => profiling::profile_of_a_task_shows_its_hot_function;
        }
    };
}

/// [`scenarios!`]'s lines, one at a time, in the form the makers take: `GUEST HOST
/// MODULE::FUNCTION, HOST_MODULE::HOST_FUNCTION;`.
#[doc(hidden)]
#[macro_export]
macro_rules! __scenarios {
    ($make:ident $check:ident; [$($done:tt)*]) => {
        $crate::$make! { $check; $($done)* }
    };
    ($make:ident $check:ident; [$($done:tt)*] $guest:ident as $host:ident => $($rest:tt)*) => {
        $crate::__scenarios! { @run $make $check; [$($done)*] $guest $host => $($rest)* }
    };
    ($make:ident $check:ident; [$($done:tt)*] $guest:ident => $($rest:tt)*) => {
        $crate::__scenarios! { @run $make $check; [$($done)*] $guest $guest => $($rest)* }
    };
    (@run $make:ident $check:ident; [$($done:tt)*] $guest:ident $host:ident
        => $m:ident::$f:ident, on the host $hm:ident::$hf:ident; $($rest:tt)*) => {
        $crate::__scenarios! { $make $check; [$($done)* $guest $host $m::$f, $hm::$hf;] $($rest)* }
    };
    (@run $make:ident $check:ident; [$($done:tt)*] $guest:ident $host:ident
        => $m:ident::$f:ident; $($rest:tt)*) => {
        $crate::__scenarios! { $make $check; [$($done)* $guest $host $m::$f, $m::$f;] $($rest)* }
    };
}

/// Makes the guest tests of a [`scenarios!`] group: `#[ignore]`d on the host, each skips unless
/// it runs in the guest and runs its scenario with the guest's helper.
#[doc(hidden)]
#[macro_export]
macro_rules! guest_tests {
    ($check:ident; $($guest:ident $host:ident $m:ident::$f:ident, $hm:ident::$hf:ident;)*) => {$(
        #[test]
        #[ignore = "runs only inside the qemu guest: cargo xtask vm-test"]
        fn $guest() -> ::anyhow::Result<()> {
            if !$crate::guest_or_skip(stringify!($guest)) {
                return Ok(());
            }
            $crate::$m::$f(&$crate::helper_path())
        }
    )*};
}

/// Makes the host tests of a [`scenarios!`] group: one at a time, each skips with a message
/// where the host cannot run it and runs its scenario with the helper cargo built.
#[doc(hidden)]
#[macro_export]
macro_rules! host_tests {
    ($check:ident; $($guest:ident $host:ident $m:ident::$f:ident, $hm:ident::$hf:ident;)*) => {$(
        #[test]
        fn $host() -> ::anyhow::Result<()> {
            let _one = $crate::scenarios::one_at_a_time();
            if !$crate::scenarios::$check(stringify!($host)) {
                return Ok(());
            }
            $crate::$hm::$hf(::std::path::Path::new(env!("CARGO_BIN_EXE_strata-vm-helper")))
        }
    )*};
}

/// The host scenarios measure cpu shares, limits and scheduling: one at a time, so they do not
/// compete with each other (hold the guard for the whole test).
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True when this host can run the `containerizer` scenarios (root, v2 or hybrid cgroups);
/// otherwise says why `test` is skipped.
#[must_use]
pub fn host_can_isolate(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: creating cgroups needs root");
        return false;
    }
    cgroups_or_skip(test)
}

/// True when this host can run the `tracing` scenarios (root, BTF, v2 or hybrid cgroups);
/// otherwise says why `test` is skipped.
#[must_use]
pub fn host_can_trace(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: cgroups, eBPF and perf events need root");
        return false;
    }
    if !btf_available(Path::new("/sys")) {
        eprintln!("skipped {test}: the kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    cgroups_or_skip(test)
}

/// True on v2 or hybrid cgroups; otherwise says why `test` is skipped.
fn cgroups_or_skip(test: &str) -> bool {
    let mode = cgroup_mode(Path::new("/sys/fs/cgroup"));
    if !matches!(mode, CgroupMode::Hybrid | CgroupMode::V2) {
        eprintln!("skipped {test}: cgroups are {}", mode.as_str());
        return false;
    }
    true
}
