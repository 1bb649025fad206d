//! The eBPF scheduling and profiling scenarios of `strata_vm_tests::profiling` on this host
//! (hybrid cgroups on the development machines; v2 elsewhere). The workloads run as tasks of a
//! real containerizer in cgroups below the test's own, with cpu limits set before they start;
//! the same scenarios run in the qemu guest (`tests/guest.rs`).
//!
//! They need root (cgroups, eBPF, perf events) and a kernel with BTF; elsewhere they skip with
//! a message.

use std::path::Path;

use anyhow::Result;
use strata_vm_tests::profiling;

const HELPER: &str = env!("CARGO_BIN_EXE_strata-vm-helper");

/// The scenarios measure scheduling: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// True when this host can run the scenarios; otherwise says why they are skipped.
fn host_can_trace(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: cgroups, eBPF and perf events need root");
        return false;
    }
    if !strata_agent::discovery::btf_available(Path::new("/sys")) {
        eprintln!("skipped {test}: the kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    let mode = strata_agent::discovery::cgroup_mode(Path::new("/sys/fs/cgroup"));
    if !matches!(
        mode,
        strata_agent::discovery::CgroupMode::Hybrid | strata_agent::discovery::CgroupMode::V2
    ) {
        eprintln!("skipped {test}: cgroups are {}", mode.as_str());
        return false;
    }
    true
}

#[test]
fn run_queue_latency_of_two_tasks_on_one_cpu_is_far_above_an_idle_ones() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_trace("run_queue_latency_of_two_tasks_on_one_cpu_is_far_above_an_idle_ones") {
        return Ok(());
    }
    // Other work may share this machine: the measure that holds under it (the qemu guest runs
    // the strict one on quantiles).
    profiling::run_queue_wait_of_two_tasks_on_one_cpu_is_far_above_an_idle_ones_on_a_busy_host(
        Path::new(HELPER),
    )
}

#[test]
fn profile_of_a_task_shows_its_hot_function() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_trace("profile_of_a_task_shows_its_hot_function") {
        return Ok(());
    }
    profiling::profile_of_a_task_shows_its_hot_function(Path::new(HELPER))
}
