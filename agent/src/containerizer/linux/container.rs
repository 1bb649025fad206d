//! [`LinuxContainer`]: a running task of the [`super::LinuxContainerizer`], and its reaper,
//! which waits for the task's main process (or its supervisor), takes how it ended, reads the
//! OOM kills, kills what is left of its cgroup and removes it.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::bridge::{BridgeControl, Lease};
use crate::cgroup::{self, MemoryOom, TaskCgroup};
use crate::containerizer::{Container, ContainerizerError, ExitStatus, supervisor};
use crate::ebpf::{DeviceControl, EgressControl, PortControl};

type Ended = (Result<ExitStatus, String>, Option<MemoryOom>);

/// The device control of a task: to forget its rules when it ends.
pub(super) type DeviceGrant = (Arc<Mutex<DeviceControl>>, strata_agent_common::CgroupId);

/// The port enforcement of a task: to remove its map entry when it ends.
pub(super) type PortGrant = (Arc<Mutex<PortControl>>, strata_agent_common::CgroupId);

/// The egress limit of a task: to remove its map entry when it ends.
pub(super) type EgressGrant = (Arc<Mutex<EgressControl>>, strata_agent_common::CgroupId);

/// The bridge lease of a task: to remove its veth and free its address when it ends.
pub(super) type BridgeGrant = (Arc<Mutex<BridgeControl>>, String, Lease);

/// How long a task's egress limit outlives its cgroup: data its sockets still hold when its
/// processes are gone (a send buffer being drained after `close()`) leaves at its rate for this
/// long, unlimited after.
pub(super) const EGRESS_LINGER: Duration = Duration::from_secs(5);

/// What a task was given in the agent's eBPF maps, removed when it ends.
#[derive(Default)]
pub(super) struct Grants {
    pub devices: Option<DeviceGrant>,
    pub ports: Option<PortGrant>,
    pub egress: Option<EgressGrant>,
    pub bridge: Option<BridgeGrant>,
}

impl Grants {
    /// Removes every entry (the task ended, or its launch failed).
    pub fn forget(self) {
        if let Some((control, id)) = self.devices
            && let Ok(mut control) = control.lock()
        {
            control.forget(id);
        }
        if let Some((control, id)) = self.ports
            && let Ok(mut control) = control.lock()
        {
            control.forget(id);
        }
        if let Some((control, id)) = self.egress
            && let Ok(mut control) = control.lock()
        {
            control.forget(id);
        }
        if let Some((control, task_id, lease)) = self.bridge
            && let Ok(mut control) = control.lock()
        {
            control.release(&task_id, &lease);
        }
    }
}

/// Waits for `waited` (the main process or the supervisor), then takes the command's status from
/// `exit_file` when there is a supervisor, reads the OOM kills, kills what is left of the cgroup
/// and removes it; publishes the result on the returned channel.
pub(super) fn spawn_reaper(
    task_id: String,
    cg: Arc<dyn TaskCgroup>,
    mut grants: Grants,
    exit_file: Option<PathBuf>,
    waited: impl Future<Output = Result<ExitStatus, String>> + Send + 'static,
) -> watch::Receiver<Option<Ended>> {
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let result = waited.await;
        // A supervisor records the command's own status.
        let result = match (&exit_file, result) {
            (Some(file), Ok(_)) => supervisor::read_exit(file).ok_or_else(|| {
                let log = std::fs::read_to_string(file.with_file_name("supervisor.log"))
                    .unwrap_or_default();
                format!(
                    "the task's supervisor ended without recording an exit status: {}",
                    log.trim()
                )
            }),
            (_, result) => result,
        };
        // Whatever is left goes with the main process; then the cgroup is removed. Usually
        // the cgroup is empty by now and a few quick file operations remove it here; when
        // processes are left (or still exiting), a blocking thread kills them and waits.
        let oom = cg.memory_oom();
        // The egress limit goes EGRESS_LINGER after the rest (see there).
        let egress = grants.egress.take();
        let forget = move || grants.forget();
        if let Some((control, id)) = egress {
            tokio::spawn(async move {
                tokio::time::sleep(EGRESS_LINGER).await;
                if let Ok(mut control) = control.lock() {
                    control.forget(id);
                }
            });
        }
        if cg.try_remove() {
            let _ = exit_tx.send(Some((result, oom)));
            // The cgroup is gone: its device rules, ports, egress limit and bridge lease can go
            // after the end is published.
            forget();
        } else {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = cg.destroy() {
                    tracing::warn!(task_id = %task_id, error = %e, "cannot remove the task's cgroup");
                }
                forget();
            })
            .await;
            let _ = exit_tx.send(Some((result, oom)));
        }
    });
    exit_rx
}

/// Resolves when the process behind `pidfd` has exited.
pub(super) async fn pidfd_exited(pidfd: OwnedFd) -> Result<ExitStatus, String> {
    let fd =
        crate::sys::watch_pidfd(pidfd).map_err(|e| format!("cannot watch the supervisor: {e}"))?;
    let _ = fd.readable().await.map_err(|e| e.to_string())?;
    // The status itself is in the exit file; this value is never used.
    Ok(ExitStatus::Code(0))
}

/// A task run by [`super::LinuxContainerizer`].
#[derive(Debug)]
pub(super) struct LinuxContainer {
    pub(super) task_id: String,
    pub(super) pid: u32,
    pub(super) cgroup: Arc<dyn TaskCgroup>,
    /// Set once by the reaper when the process has been waited for and the cgroup removed.
    pub(super) exit: watch::Receiver<Option<Ended>>,
}

impl LinuxContainer {
    fn lost(&self, reason: impl Into<String>) -> ContainerizerError {
        ContainerizerError::Lost {
            task_id: self.task_id.clone(),
            reason: reason.into(),
        }
    }

    fn to_result(&self, ended: &Ended) -> Result<ExitStatus, ContainerizerError> {
        ended
            .0
            .clone()
            .map_err(|e| self.lost(format!("waiting for the process failed: {e}")))
    }

    async fn wait_exit(&self) -> Result<ExitStatus, ContainerizerError> {
        let mut rx = self.exit.clone();
        let ended = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| self.lost("the process reaper stopped"))?
            .clone();
        match ended {
            Some(ended) => self.to_result(&ended),
            None => Err(self.lost("the process reaper stopped")),
        }
    }

    pub(super) async fn kill_task(
        &self,
        grace: Duration,
    ) -> Result<ExitStatus, ContainerizerError> {
        if let Some(ended) = self.exit.borrow().clone() {
            return self.to_result(&ended);
        }
        self.cgroup.signal_all(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::info!(task_id = %self.task_id, grace_ms = grace.as_millis() as u64,
                    "task did not stop within its grace period; killing its cgroup");
                let cg = self.cgroup.clone();
                let killed = tokio::task::spawn_blocking(move || cg.kill_all()).await;
                if let Ok(Err(e)) = killed {
                    tracing::warn!(task_id = %self.task_id, error = %e, "cannot kill the task's cgroup");
                }
                self.wait_exit().await
            }
        }
    }
}

impl Container for LinuxContainer {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>> {
        Box::pin(self.wait_exit())
    }

    fn kill(&self, grace: Duration) -> BoxFuture<'_, Result<ExitStatus, ContainerizerError>> {
        Box::pin(self.kill_task(grace))
    }

    fn memory_oom(&self) -> Option<MemoryOom> {
        self.exit.borrow().as_ref().and_then(|(_, oom)| *oom)
    }

    fn cgroup_procs(&self) -> Vec<PathBuf> {
        self.cgroup.procs_files()
    }
}

/// The cgroup of a recovered task that was already removed.
#[derive(Debug)]
pub(super) struct GoneCgroup(pub(super) PathBuf);

impl TaskCgroup for GoneCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn unified_dir(&self) -> Option<PathBuf> {
        None
    }
    fn path(&self) -> PathBuf {
        self.0.clone()
    }
    fn pids(&self) -> Result<Vec<i32>, cgroup::CgroupError> {
        Ok(Vec::new())
    }
    fn kill_all(&self) -> Result<(), cgroup::CgroupError> {
        Ok(())
    }
    fn memory_oom(&self) -> Option<MemoryOom> {
        None
    }
    fn cpu_stats(&self) -> Result<cgroup::CpuStats, cgroup::CgroupError> {
        Ok(cgroup::CpuStats::default())
    }
    fn destroy(&self) -> Result<(), cgroup::CgroupError> {
        Ok(())
    }
}
