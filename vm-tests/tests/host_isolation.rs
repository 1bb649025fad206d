//! The isolation scenarios of `strata_vm_tests::isolation` on this host (hybrid cgroups on the
//! development machines; v2 elsewhere). Each creates its cgroups below the test's own cgroup and
//! sets every limit before the workload starts; the same scenarios run in the qemu guest
//! (`tests/guest.rs`, pure cgroup v2).
//!
//! They need root (to create cgroups); elsewhere they skip with a message.

use std::path::Path;

use anyhow::Result;
use strata_vm_tests::{accounting, isolation};

const HELPER: &str = env!("CARGO_BIN_EXE_strata-vm-helper");

/// The scenarios measure cpu shares and limits: one at a time, so they do not compete with
/// each other (the guard is held for the whole test).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// True when this host can run the scenarios; otherwise says why they are skipped.
fn host_can_isolate(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: creating cgroups needs root");
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
fn memory_limit_oom_kills_only_the_offender() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("memory_limit_oom_kills_only_the_offender") {
        return Ok(());
    }
    isolation::memory_limit_oom_kills_only_the_offender(Path::new(HELPER))
}

#[test]
fn fork_bomb_is_stopped_by_pids_max() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("fork_bomb_is_stopped_by_pids_max") {
        return Ok(());
    }
    isolation::fork_bomb_is_stopped_by_pids_max(Path::new(HELPER))
}

#[test]
fn cpu_limit_throttles() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("cpu_limit_throttles") {
        return Ok(());
    }
    isolation::cpu_limit_throttles(Path::new(HELPER))
}

#[test]
fn cpu_weights_share_in_proportion() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("cpu_weights_share_in_proportion") {
        return Ok(());
    }
    isolation::cpu_weights_share_in_proportion(Path::new(HELPER))
}

#[test]
fn kill_terminates_then_kills_the_whole_cgroup() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("kill_terminates_then_kills_the_whole_cgroup") {
        return Ok(());
    }
    isolation::kill_terminates_then_kills_the_whole_cgroup(Path::new(HELPER))
}

#[test]
fn a_task_sees_only_its_processes_and_its_hostname() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("a_task_sees_only_its_processes_and_its_hostname") {
        return Ok(());
    }
    isolation::a_task_sees_only_its_processes_and_its_hostname(Path::new(HELPER))
}

#[test]
fn an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate(
        "an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox",
    ) {
        return Ok(());
    }
    isolation::an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox(
        Path::new(HELPER),
    )
}

#[test]
fn capabilities_asked_for_are_kept() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("capabilities_asked_for_are_kept") {
        return Ok(());
    }
    isolation::capabilities_asked_for_are_kept(Path::new(HELPER))
}

#[test]
fn network_isolation_leaves_only_loopback() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("network_isolation_leaves_only_loopback") {
        return Ok(());
    }
    isolation::network_isolation_leaves_only_loopback(Path::new(HELPER))
}

#[test]
fn device_control_denies_all_but_the_standard_and_given_devices() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("device_control_denies_all_but_the_standard_and_given_devices") {
        return Ok(());
    }
    isolation::device_control_denies_all_but_the_standard_and_given_devices(Path::new(HELPER))
}

#[test]
fn accounting_cpu_seconds_match_the_task_rusage() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("accounting_cpu_seconds_match_the_task_rusage") {
        return Ok(());
    }
    accounting::cpu_seconds_match_the_task_rusage(Path::new(HELPER))
}

#[test]
fn accounting_network_bytes_match_the_payload() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("accounting_network_bytes_match_the_payload") {
        return Ok(());
    }
    accounting::network_bytes_match_the_payload(Path::new(HELPER))
}

#[test]
fn accounting_memory_matches_what_the_task_allocated() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("accounting_memory_matches_what_the_task_allocated") {
        return Ok(());
    }
    accounting::memory_matches_what_the_task_allocated(Path::new(HELPER))
}

#[test]
fn accounting_metrics_show_the_values_move() -> Result<()> {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !host_can_isolate("accounting_metrics_show_the_values_move") {
        return Ok(());
    }
    accounting::metrics_show_the_values_move(Path::new(HELPER))
}
