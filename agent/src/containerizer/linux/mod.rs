//! [`LinuxContainerizer`]: runs each task isolated in a cgroup of its own, with the limits its
//! resources ask for (see [`crate::cgroup`]), and, with a supervisor binary, in namespaces of
//! its own under a per-task supervisor (see [`super::supervisor`]) that outlives the agent.
//!
//! - `mod.rs`: [`LinuxConfig`], the limits of a task, launching (cgroup, device control, then
//!   the command with or without a supervisor), re-attaching after an agent restart, cleanup.
//! - `supervised.rs`: a launch under a supervisor: the task's spec (user, groups,
//!   capabilities, rlimits, environment), the agent's end of the `strata-agent launcher`
//!   process, and the launch pipe that says the command started.
//! - `container.rs`: `LinuxContainer`, the reaper that waits for a task, records how it ended
//!   and removes its cgroup, and kill (SIGTERM, grace, then the whole cgroup).
//!
//! Invariants:
//! - A task's cgroup `<root>/containers/<framework-id>/<task-id>` exists with its limits written
//!   before the task's first process runs; that process joins it between fork and exec, so
//!   everything the command does and forks is limited from the start.
//! - When the command's main process ends, whatever is left in the cgroup is killed, then the
//!   cgroup is removed. An OOM kill in the cgroup is reported by [`Container::memory_oom`].
//! - Kill = SIGTERM to every process in the cgroup, the grace period, then every process left
//!   is killed at once (`cgroup.kill` on v2, freeze and SIGKILL on v1).
//! - Sandboxes live under `<work_dir>/sandboxes` as with
//!   [`ProcessContainerizer`](super::process::ProcessContainerizer); the agent removes them a
//!   configurable time after the task ended ([`super::gc_sandboxes`]).

mod container;
mod supervised;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use strata_proto::{CommandInfo, TaskInfo, names, scalar_sum};

use crate::bridge::{BridgeControl, Lease};
use crate::cgroup::{self, CgroupBackend, Limits, TaskCgroup};
use crate::checkpoint;
use crate::containerizer::{
    Container, Containerizer, ContainerizerError, ExitStatus, LaunchSpec, Prepared, build_command,
    checked_command, prepare_sandbox, supervisor,
};
use crate::ebpf::{DeviceControl, DeviceRule, EgressControl, PortControl};
use container::{
    BridgeGrant, DeviceGrant, EgressGrant, GoneCgroup, Grants, LinuxContainer, PortGrant,
    pidfd_exited, spawn_reaper,
};
use strata_proto::network::Mode;
use supervised::Launcher;

const MIB: f64 = 1024.0 * 1024.0;

/// Settings of the [`LinuxContainerizer`].
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// Where sandboxes and run files live.
    pub work_dir: PathBuf,
    /// pids.max for tasks that set no `pids_limit`.
    pub default_pids_limit: u64,
    /// The `strata-agent` binary, run as the `launcher` that forks each task's supervisor and
    /// init: tasks then get their own namespaces, user and capabilities. `None` runs
    /// tasks as plain children of the agent in their cgroups only.
    pub supervisor_exe: Option<PathBuf>,
    /// The user tasks run as when their command names none.
    pub default_user: String,
    /// Whether tasks may run as root (uid 0).
    pub allow_root: bool,
    /// stdout and stderr are each rotated when they would pass this size.
    pub log_max_bytes: u64,
    /// The capabilities a task may keep (names like `CAP_NET_BIND_SERVICE`); a task asking
    /// for another is refused.
    pub allowed_capabilities: Vec<String>,
    /// The seccomp profile supervised tasks run under.
    pub seccomp: supervisor::seccomp::Seccomp,
    /// Whether a supervised task that runs as a non-root user and keeps no capabilities gets a
    /// user namespace of its own mapping only its uid and gid (the agent decides at start:
    /// [`UserNamespaces`]).
    pub user_namespaces: bool,
}

/// Whether this host lets a task enter a user namespace of its own: runs `true` as `nobody`
/// (uid and gid 65534) in one, as a task would; the error says what the attempt answered.
pub fn try_user_namespace() -> Result<(), String> {
    let program = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| "no /bin/true to try one with".to_owned())?;
    crate::sys::probe_user_namespace(program, 65534, 65534).map_err(|e| e.to_string())
}

/// Whether tasks run in user namespaces of their own (`--user-namespaces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserNamespaces {
    /// When the host allows them (the agent tries one at start).
    #[default]
    Auto,
    /// Always: the agent refuses to start where the host does not allow them.
    On,
    /// Never.
    Off,
}

impl UserNamespaces {
    /// `auto`, `on` or `off`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown --user-namespaces value {other:?}: use auto, on or off"
            )),
        }
    }
}

impl LinuxConfig {
    /// Defaults: 4096 processes per task, no supervisor, user `nobody`, root refused, logs
    /// rotated at 10 MiB, no capabilities allowed, the default seccomp profile, no user
    /// namespaces (the agent turns them on where the host allows them).
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            default_pids_limit: 4096,
            supervisor_exe: None,
            default_user: "nobody".to_owned(),
            allow_root: false,
            log_max_bytes: 10 << 20,
            allowed_capabilities: Vec::new(),
            seccomp: supervisor::seccomp::Seccomp::Default,
            user_namespaces: false,
        }
    }
}

/// The cgroup limits a task asks for.
pub fn limits_for(task: &TaskInfo, default_pids_limit: u64) -> Limits {
    let cpus = scalar_sum(&task.resources, names::CPUS);
    let mem = scalar_sum(&task.resources, names::MEM);
    let positive = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
    Limits {
        cpus: positive(cpus),
        cpu_limit: task.cpu_limit.and_then(positive),
        mem_bytes: positive(mem).map(|m| (m * MIB) as u64),
        mem_soft_bytes: task
            .mem_soft_limit_mib
            .and_then(positive)
            .map(|m| (m * MIB) as u64),
        pids_max: Some(if task.pids_limit > 0 {
            task.pids_limit
        } else {
            default_pids_limit
        }),
    }
}

/// Runs tasks in cgroups of their own; see the module docs.
#[derive(Debug, Clone)]
pub struct LinuxContainerizer {
    config: LinuxConfig,
    cgroups: Arc<dyn CgroupBackend>,
    devices: Option<Arc<Mutex<DeviceControl>>>,
    /// NVIDIA's device majors, for the device rules of tasks given GPUs (`None`: the driver is
    /// not loaded, and a task given GPUs is refused).
    gpu_nodes: Option<crate::gpu::nodes::GpuNodes>,
    /// Port enforcement for host-network tasks (see [`crate::ebpf::PortControl`]).
    ports: Option<Arc<Mutex<PortControl>>>,
    /// Egress bandwidth limits (see [`crate::ebpf::EgressControl`]).
    egress: Option<Arc<Mutex<EgressControl>>>,
    /// Bridge networking (see [`crate::bridge`]), or why this agent has none.
    bridge: Result<Arc<Mutex<BridgeControl>>, String>,
    /// The device program's attachment to an empty cgroup ([`cgroup::DEVICE_KEEPER_DIR`]) that
    /// lives as long as the agent: the kernel enables its cgroup-device hook (a static key,
    /// patched into the code on every cpu) when the first program is attached and disables it
    /// when the last goes; with this one always there, tasks attaching and detaching theirs
    /// do not patch the kernel's code at every launch and teardown.
    device_keeper: Arc<Mutex<Option<(PathBuf, strata_agent_common::CgroupId)>>>,
    /// Forks supervisors ahead of time (started on the first supervised launch).
    launcher: Arc<tokio::sync::Mutex<Option<Launcher>>>,
    agent_user: String,
    agent_uid: String,
}

impl LinuxContainerizer {
    /// A containerizer creating task cgroups through `cgroups`.
    pub fn new(mut config: LinuxConfig, cgroups: Arc<dyn CgroupBackend>) -> Self {
        // Supervisors run elsewhere than the agent's cwd: every path they get is absolute.
        if let Ok(absolute) = std::path::absolute(&config.work_dir) {
            config.work_dir = absolute;
        }
        let uid = nix::unistd::geteuid();
        let agent_user = match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => uid.to_string(),
        };
        Self {
            config,
            cgroups,
            devices: None,
            gpu_nodes: None,
            ports: None,
            egress: None,
            bridge: Err(
                "bridge networking is off on this agent (start it with --bridge-subnet)".to_owned(),
            ),
            device_keeper: Arc::new(Mutex::new(None)),
            launcher: Arc::new(tokio::sync::Mutex::new(None)),
            agent_user,
            agent_uid: uid.to_string(),
        }
    }

    /// Restricts every task to the standard devices plus the ones it names, with a cgroup_device
    /// program attached to its cgroup.
    #[must_use]
    pub fn with_device_control(mut self, devices: DeviceControl) -> Self {
        self.devices = Some(Arc::new(Mutex::new(devices)));
        self
    }

    /// Lets tasks given GPUs use their device nodes (see [`crate::gpu::nodes`]).
    #[must_use]
    pub fn with_gpu_nodes(mut self, nodes: crate::gpu::nodes::GpuNodes) -> Self {
        self.gpu_nodes = Some(nodes);
        self
    }

    /// Restricts every task in the host's network namespace to binding the ports it was given
    /// (its `ports` resource), with the port programs already attached at the tasks' root.
    #[must_use]
    pub fn with_port_control(mut self, ports: PortControl) -> Self {
        self.ports = Some(Arc::new(Mutex::new(ports)));
        self
    }

    /// Limits the egress of every task given `net_egress_mbps` to that rate, with the EDT
    /// program already on the egress device.
    #[must_use]
    pub fn with_egress_control(mut self, egress: EgressControl) -> Self {
        self.egress = Some(Arc::new(Mutex::new(egress)));
        self
    }

    /// Whether tasks run under per-task supervisors (with namespaces of their own).
    pub fn supervised(&self) -> bool {
        self.config.supervisor_exe.is_some()
    }

    /// Runs bridge tasks on the bridge of `bridge`, already up.
    pub fn with_bridge_control(mut self, bridge: BridgeControl) -> Self {
        self.bridge = Ok(Arc::new(Mutex::new(bridge)));
        self
    }

    /// Says why bridge tasks are refused (the bridge could not be set up).
    pub fn without_bridge(mut self, why: String) -> Self {
        self.bridge = Err(why);
        self
    }

    /// The bridge leases (address and task); empty without a bridge. For tests and diagnostics.
    pub fn bridge_leases(&self) -> Vec<(std::net::Ipv4Addr, String)> {
        self.bridge
            .as_ref()
            .ok()
            .and_then(|b| b.lock().ok().map(|b| b.leased()))
            .unwrap_or_default()
    }

    /// A bridge task's lease (before its supervisor starts); `None` for a task in another mode.
    /// Refused: bridge tasks on an agent without a bridge or without supervisors, with port
    /// mappings on an agent without NAT, or when the subnet is full.
    fn lease_bridge(&self, task: &TaskInfo) -> Result<Option<BridgeGrant>, ContainerizerError> {
        let task_id = task.task_id.as_str();
        let invalid = |reason: String| ContainerizerError::InvalidTask {
            task_id: task_id.to_owned(),
            reason,
        };
        let refuse = |reason: String| ContainerizerError::NetworkRefused {
            task_id: task_id.to_owned(),
            reason,
        };
        let mode = strata_proto::network::mode(task).map_err(invalid)?;
        let mappings = strata_proto::network::mappings(task).map_err(invalid)?;
        if mode != Mode::Bridge {
            return Ok(None);
        }
        let control = self.bridge.as_ref().map_err(|why| refuse(why.clone()))?;
        if self.config.supervisor_exe.is_none() {
            return Err(refuse(
                "bridge networking needs the per-task supervisors, which this agent runs without"
                    .to_owned(),
            ));
        }
        let mut guard = control.lock().map_err(|_| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the bridge control lock is poisoned".to_owned(),
        })?;
        let published = mappings
            .iter()
            .flat_map(|m| {
                let tcp = m.tcp.then_some(crate::bridge::nat::Protocol::Tcp);
                let udp = m.udp.then_some(crate::bridge::nat::Protocol::Udp);
                tcp.into_iter()
                    .chain(udp)
                    .map(|protocol| crate::bridge::Published {
                        protocol,
                        host_port: m.host,
                        container_port: m.container,
                    })
            })
            .collect();
        // A full subnet or an agent without NAT is the agent's limit, not the task's fault:
        // refused (TASK_ERROR), as the other capabilities it lacks.
        let lease = guard
            .lease(task_id, published)
            .map_err(|e| refuse(format!("cannot lease it an address: {e}")))?;
        tracing::debug!(task_id, address = %lease.address, veth = %lease.veth, bridge = guard.name(), "bridge address leased");
        Ok(Some((control.clone(), task_id.to_owned(), lease)))
    }

    /// Writes a task's egress limit (its `net_egress_mbps`) into the EDT map before its first
    /// process starts; returns what the reaper needs to remove it. A task without the resource
    /// gets no entry and is not slowed. A task with it on an agent without egress limits is
    /// refused (the agent does not offer what it cannot enforce).
    fn limit_egress(
        &self,
        task: &TaskInfo,
        cg: &dyn TaskCgroup,
    ) -> Result<Option<EgressGrant>, ContainerizerError> {
        let task_id = task.task_id.as_str();
        let mbps = scalar_sum(&task.resources, names::NET_EGRESS_MBPS);
        if mbps.is_nan() || mbps <= 0.0 {
            return Ok(None);
        }
        let refuse = |reason: String| ContainerizerError::InvalidTask {
            task_id: task_id.to_owned(),
            reason,
        };
        let Some(control) = &self.egress else {
            return Err(refuse(format!(
                "it asks for {mbps} {} but this agent cannot enforce egress limits",
                names::NET_EGRESS_MBPS
            )));
        };
        let Some(dir) = cg.unified_dir() else {
            return Err(refuse(
                "its cgroup has no cgroup v2 (unified) directory to limit its egress by".to_owned(),
            ));
        };
        let mut guard = control.lock().map_err(|_| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the egress control lock is poisoned".to_owned(),
        })?;
        let id = guard
            .limit(task_id, &dir, mbps)
            .map_err(|e| refuse(format!("cannot limit its egress: {e}")))?;
        tracing::debug!(task_id, cgroup = %dir.display(), cgroup_id = id, mbps, device = guard.device(), "task egress limited");
        Ok(Some((control.clone(), id)))
    }

    /// A recovered task's lease, from its run directory, taken back into the lease table.
    fn adopt_lease(&self, task_id: &str, run: &Path) -> Option<BridgeGrant> {
        let lease = match Lease::read(run) {
            Ok(Some(lease)) => lease,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(task_id, error = %e, "cannot read the task's bridge lease");
                return None;
            }
        };
        let Ok(control) = &self.bridge else {
            tracing::warn!(task_id, address = %lease.address, "the task has a bridge lease and this agent has no bridge: its address is not kept");
            return None;
        };
        let adopted = control
            .lock()
            .map_err(|_| "the bridge control lock is poisoned".to_owned())
            .and_then(|mut c| c.adopt(task_id, &lease));
        match adopted {
            Ok(()) => {
                tracing::debug!(task_id, address = %lease.address, "bridge lease adopted");
                Some((control.clone(), task_id.to_owned(), lease))
            }
            Err(e) => {
                tracing::warn!(task_id, error = %e, "cannot adopt the task's bridge lease");
                None
            }
        }
    }

    /// The cgroup ids that have an egress limit (empty without egress limits); for tests and
    /// diagnostics.
    pub fn egress_entries(&self) -> Vec<strata_agent_common::CgroupId> {
        self.egress
            .as_ref()
            .and_then(|p| p.lock().ok().map(|p| p.entries()))
            .unwrap_or_default()
    }

    /// Writes the ports a host-network task may bind into the port map (before its first
    /// process starts); returns what the reaper needs to remove them. A task in a network
    /// namespace of its own binds what it likes there and gets no entry. Too many ranges, or
    /// an invalid one, refuse the task with a message that says so.
    fn allow_ports(
        &self,
        task: &TaskInfo,
        cg: &dyn TaskCgroup,
    ) -> Result<Option<PortGrant>, ContainerizerError> {
        let task_id = task.task_id.as_str();
        let Some(control) = &self.ports else {
            return Ok(None);
        };
        if strata_proto::network::mode(task) != Ok(Mode::Host) {
            return Ok(None);
        }
        let ranges: Vec<(u64, u64)> = task
            .resources
            .iter()
            .filter(|r| r.name == names::PORTS)
            .flat_map(|r| r.ranges.iter().map(|v| (v.begin, v.end)))
            .collect();
        let encoded = crate::ebpf::task_port_ranges(task_id, &ranges).map_err(|e| {
            ContainerizerError::InvalidTask {
                task_id: task_id.to_owned(),
                reason: format!("cannot enforce its ports: {e}"),
            }
        })?;
        let Some(dir) = cg.unified_dir() else {
            return Ok(None);
        };
        let mut guard = control.lock().map_err(|_| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the port control lock is poisoned".to_owned(),
        })?;
        let id = guard
            .allow(&dir, encoded)
            .map_err(|e| ContainerizerError::InvalidTask {
                task_id: task_id.to_owned(),
                reason: format!("cannot set up its port enforcement: {e}"),
            })?;
        tracing::debug!(task_id, cgroup = %dir.display(), cgroup_id = id, ?ranges, "task ports enforced");
        Ok(Some((control.clone(), id)))
    }

    /// The cgroup ids that have an entry in the port map (empty without port enforcement); for
    /// tests and diagnostics.
    pub fn port_entries(&self) -> Vec<strata_agent_common::CgroupId> {
        self.ports
            .as_ref()
            .and_then(|p| p.lock().ok().map(|p| p.entries()))
            .unwrap_or_default()
    }

    /// Attaches the device program to a task's cgroup with its rules (the standard devices,
    /// those it names, and the nodes of the GPUs it was given); returns what the reaper needs
    /// to undo it.
    fn allow_devices(
        &self,
        task: &TaskInfo,
        gpus: &[crate::gpu::GpuDevice],
        cg: &dyn TaskCgroup,
    ) -> Result<Option<DeviceGrant>, ContainerizerError> {
        let task_id = task.task_id.as_str();
        let mut extra = Vec::new();
        for path in &task.devices {
            extra.push(DeviceRule::for_node(Path::new(path)).map_err(|reason| {
                ContainerizerError::InvalidTask {
                    task_id: task_id.to_owned(),
                    reason,
                }
            })?);
        }
        if !gpus.is_empty() {
            let nodes = self.gpu_nodes.ok_or_else(|| ContainerizerError::InvalidTask {
                task_id: task_id.to_owned(),
                reason: "it was given GPUs but this host's /proc/devices lists no nvidia device: load the NVIDIA kernel module and restart the agent".to_owned(),
            })?;
            extra.extend(nodes.rules(gpus));
        }
        let Some(devices) = &self.devices else {
            return Ok(None);
        };
        let Some(dir) = cg.unified_dir() else {
            return Ok(None);
        };
        let mut control = devices.lock().map_err(|_| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason: "the device control lock is poisoned".to_owned(),
        })?;
        self.keep_device_hook(&mut control);
        let id = control
            .allow(&dir, &extra)
            .map_err(|e| ContainerizerError::InvalidTask {
                task_id: task_id.to_owned(),
                reason: format!("cannot set up its device control: {e}"),
            })?;
        Ok(Some((devices.clone(), id)))
    }

    /// Attaches the device program to the empty keeper cgroup once (see `device_keeper`); a
    /// failure only costs speed, and is retried at the next launch.
    fn keep_device_hook(&self, control: &mut DeviceControl) {
        let Ok(mut keeper) = self.device_keeper.lock() else {
            return;
        };
        if keeper.is_some() {
            return;
        }
        let Some(root) = self.cgroups.unified_root() else {
            return;
        };
        let dir = root.join(cgroup::DEVICE_KEEPER_DIR);
        let attached = match std::fs::create_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|()| control.allow(&dir, &[]).map_err(|e| e.to_string()));
        match attached {
            Ok(id) => *keeper = Some((dir, id)),
            Err(error) => {
                tracing::debug!(dir = %dir.display(), %error, "cannot keep the device control hook enabled");
            }
        }
    }

    /// The cgroup backend.
    pub fn cgroups(&self) -> &Arc<dyn CgroupBackend> {
        &self.cgroups
    }

    async fn launch_task(
        &self,
        spec: &LaunchSpec,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let task_id = spec.task.task_id.as_str();
        let command = checked_command(spec)?;
        self.check_capabilities(task_id, command)?;
        if self.config.supervisor_exe.is_none()
            && !command.user.is_empty()
            && command.user != self.agent_user
            && command.user != self.agent_uid
        {
            return Err(ContainerizerError::UserSwitch {
                task_id: task_id.to_owned(),
                user: command.user.clone(),
                agent_user: self.agent_user.clone(),
            });
        }
        let cgroup_err = |source| ContainerizerError::Cgroup {
            task_id: task_id.to_owned(),
            source,
        };
        let rel = cgroup::task_rel(&spec.framework_id, task_id).map_err(cgroup_err)?;
        let Prepared {
            sandbox,
            run,
            stdout,
            stderr,
        } = prepare_sandbox(&self.config.work_dir, spec).await?;
        let limits = limits_for(&spec.task, self.config.default_pids_limit);
        let cg: Arc<dyn TaskCgroup> =
            Arc::from(self.cgroups.create(&rel, &limits).map_err(cgroup_err)?);
        let mut grants = Grants::default();
        let granted = (|| {
            grants.devices = self.allow_devices(&spec.task, &spec.gpus, cg.as_ref())?;
            grants.ports = self.allow_ports(&spec.task, cg.as_ref())?;
            // Before the egress limit: a bridge task asking for one is refused with the reason
            // that holds for bridge tasks on every agent.
            grants.bridge = self.lease_bridge(&spec.task)?;
            grants.egress = self.limit_egress(&spec.task, cg.as_ref())?;
            Ok::<_, ContainerizerError>(())
        })();
        if let Err(e) = granted {
            grants.forget();
            let _ = cg.destroy();
            return Err(e);
        }
        let (pid, waited, exit_file): (u32, BoxFuture<'static, Result<ExitStatus, String>>, _) =
            if self.config.supervisor_exe.is_some() {
                // The supervisor opens the cgroup.procs files itself.
                let bridge = grants
                    .bridge
                    .as_ref()
                    .map(|(c, _, l)| (c, l, grants.egress.as_ref()));
                let result = self
                    .start_supervised(
                        spec,
                        command,
                        &sandbox,
                        &run,
                        cg.as_ref(),
                        (stdout, stderr),
                        bridge,
                    )
                    .await;
                match result {
                    Ok((pid, waited)) => (pid, waited, Some(run.join(supervisor::EXIT_FILE))),
                    Err(e) => {
                        grants.forget();
                        let _ = cg.destroy();
                        return Err(e);
                    }
                }
            } else {
                match self.start_plain(spec, command, &sandbox, cg.as_ref(), stdout, stderr) {
                    Ok((pid, waited)) => (pid, waited, None),
                    Err(e) => {
                        grants.forget();
                        return Err(e);
                    }
                }
            };
        let exit_rx = spawn_reaper(task_id.to_owned(), cg.clone(), grants, exit_file, waited);
        let container = LinuxContainer {
            task_id: task_id.to_owned(),
            pid,
            cgroup: cg,
            exit: exit_rx,
        };
        if let Err(source) =
            checkpoint::write_atomic_volatile(&run.join("pid"), pid.to_string().as_bytes())
        {
            let _ = container.kill_task(Duration::ZERO).await;
            return Err(ContainerizerError::PidFile {
                task_id: task_id.to_owned(),
                source,
            });
        }
        tracing::debug!(pid, sandbox = %sandbox.display(), cgroup = %container.cgroup.path().display(), "task started in its cgroup");
        Ok(Box::new(container))
    }

    /// Without a supervisor: spawns the command as a plain child of the agent that joins the
    /// task's cgroups between fork and exec. Returns its pid and a future that resolves when it
    /// has exited; on a failure the task's cgroup is removed.
    fn start_plain(
        &self,
        spec: &LaunchSpec,
        command: &CommandInfo,
        sandbox: &Path,
        cg: &dyn TaskCgroup,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<(u32, BoxFuture<'static, Result<ExitStatus, String>>), ContainerizerError> {
        let task_id = spec.task.task_id.as_str();
        let cgroup_err = |source| ContainerizerError::Cgroup {
            task_id: task_id.to_owned(),
            source,
        };
        let mut procs: Vec<OwnedFd> = Vec::new();
        for file in cg.procs_files() {
            match OpenOptions::new().write(true).open(&file) {
                Ok(f) => procs.push(f.into()),
                Err(source) => {
                    let _ = cg.destroy();
                    return Err(cgroup_err(cgroup::CgroupError::Io {
                        action: "open".to_owned(),
                        path: file,
                        source,
                    }));
                }
            }
        }
        let (program, mut cmd) = build_command(spec, command, sandbox, stdout, stderr);
        crate::sys::join_cgroups_before_exec(&mut cmd, procs);
        cmd.process_group(0).kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                let _ = cg.destroy();
                return Err(ContainerizerError::Spawn {
                    task_id: task_id.to_owned(),
                    program,
                    source,
                });
            }
        };
        drop(cmd);
        let Some(pid) = child.id() else {
            let _ = cg.destroy();
            return Err(ContainerizerError::Lost {
                task_id: task_id.to_owned(),
                reason: "the process exited before its pid could be read".to_owned(),
            });
        };
        let waited: BoxFuture<'static, Result<ExitStatus, String>> = Box::pin(async move {
            child
                .wait()
                .await
                .map(|s| {
                    use std::os::unix::process::ExitStatusExt as _;
                    match (s.code(), s.signal()) {
                        (Some(code), _) => ExitStatus::Code(code),
                        (None, Some(signal)) => ExitStatus::Signal(signal),
                        (None, None) => ExitStatus::Code(-1),
                    }
                })
                .map_err(|e| e.to_string())
        });
        Ok((pid, waited))
    }
}

impl Containerizer for LinuxContainerizer {
    fn launch<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Container>, ContainerizerError>> {
        Box::pin(async move {
            let launched = self.launch_task(spec).await;
            if launched.is_err() {
                crate::containerizer::undo_launch(&self.config.work_dir, spec).await;
            }
            launched
        })
    }

    fn recover(
        &self,
        framework_id: &str,
        task_id: &str,
    ) -> Result<Box<dyn Container>, ContainerizerError> {
        let lost = |reason: String| ContainerizerError::Lost {
            task_id: task_id.to_owned(),
            reason,
        };
        if self.config.supervisor_exe.is_none() {
            return Err(lost(
                "the agent restarted and tasks without a supervisor do not survive that".to_owned(),
            ));
        }
        let run = crate::containerizer::run_dir(&self.config.work_dir, framework_id, task_id)?;
        let rel = cgroup::task_rel(framework_id, task_id).map_err(|source| {
            ContainerizerError::Cgroup {
                task_id: task_id.to_owned(),
                source,
            }
        })?;
        let cg: Arc<dyn TaskCgroup> = match self.cgroups.open(&rel) {
            Some(cg) => Arc::from(cg),
            // Already removed: a placeholder whose removal is a no-op.
            None => Arc::new(GoneCgroup(rel.clone())),
        };
        let exit_file = run.join(supervisor::EXIT_FILE);
        let pid = supervisor::running_supervisor(&run).and_then(|p| i32::try_from(p).ok());
        // The pidfd is opened after the check; a supervisor that exits in between leaves its
        // exit file, and a reused pid fails the check at the next recovery.
        let waited: BoxFuture<'static, Result<ExitStatus, String>> =
            match pid.map(|p| (p, crate::sys::pidfd_open(p))) {
                Some((_, Ok(pidfd))) => Box::pin(pidfd_exited(pidfd)),
                _ if exit_file.is_file() => Box::pin(async { Ok(ExitStatus::Code(0)) }),
                _ => {
                    // Nothing to wait for and no status: the task is gone.
                    let _ = cg.destroy();
                    return Err(lost(
                        "its supervisor is gone and recorded no exit status".to_owned(),
                    ));
                }
            };
        let task = checkpoint::load_task(&run, task_id)
            .ok()
            .flatten()
            .unwrap_or_default();
        let gpus = checkpoint::load_gpus(&run).unwrap_or_else(|e| {
            tracing::warn!(task_id, error = %e, "cannot read the task's GPUs: it keeps none of their device nodes");
            Vec::new()
        });
        let devices = self
            .allow_devices(&task, &gpus, cg.as_ref())
            .unwrap_or_else(|e| {
                tracing::warn!(task_id, error = %e, "cannot restore the task's device control");
                None
            });
        let ports = self.allow_ports(&task, cg.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(task_id, error = %e, "cannot restore the task's port enforcement: its ports are not enforced");
            None
        });
        let egress = self.limit_egress(&task, cg.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(task_id, error = %e, "cannot restore the task's egress limit: its egress is not limited");
            None
        });
        let bridge = self.adopt_lease(task_id, &run);
        // A bridge task's limit is enforced on its eth0: the program goes there again (a tcx
        // link went with the previous agent; a netlink filter of it is replaced).
        if bridge.is_some()
            && let (Some((control, id)), Some(p)) =
                (&egress, pid.and_then(|p| u32::try_from(p).ok()))
            && let Ok(mut control) = control.lock()
            && let Err(e) = control.attach_in_namespace(p, crate::bridge::TASK_INTERFACE, *id)
        {
            tracing::warn!(task_id, error = %e, "cannot restore the bridge task's egress limit on its interface: its egress is not limited");
        }
        let exit_rx = spawn_reaper(
            task_id.to_owned(),
            cg.clone(),
            Grants {
                devices,
                ports,
                egress,
                bridge,
            },
            Some(exit_file),
            waited,
        );
        tracing::info!(task_id, supervisor_pid = ?pid, "re-attached to the task");
        Ok(Box::new(LinuxContainer {
            task_id: task_id.to_owned(),
            pid: pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            cgroup: cg,
            exit: exit_rx,
        }))
    }

    fn tasks_survive_the_agent(&self) -> bool {
        self.config.supervisor_exe.is_some()
    }

    fn egress_control(&self) -> Option<Arc<Mutex<EgressControl>>> {
        self.egress.clone()
    }

    fn recovered(&self) {
        if let Ok(bridge) = &self.bridge
            && let Ok(mut control) = bridge.lock()
        {
            let removed = control.sweep();
            if !removed.is_empty() {
                tracing::info!(
                    ?removed,
                    bridge = control.name(),
                    "removed the veths of tasks that were not recovered"
                );
            }
        }
    }

    fn cleanup(&self) {
        // The EDT program goes with the agent (running tasks are not limited until the next
        // agent recovers them), as a tcx link would; fq stays (see crate::ebpf::EgressControl).
        if let Some(egress) = &self.egress
            && let Ok(control) = egress.lock()
        {
            control.detach();
        }
        // The keeper's lock is let go before the device control's (taken in the other order
        // by launches).
        let kept = self.device_keeper.lock().ok().and_then(|mut k| k.take());
        if let Some((dir, id)) = kept {
            if let Some(devices) = &self.devices
                && let Ok(mut control) = devices.lock()
            {
                control.forget(id);
            }
            let _ = std::fs::remove_dir(dir);
        }
        // Only empty directories go: a task still running keeps its cgroup and the root.
        for root in self.cgroups.roots() {
            let tasks = root.join(cgroup::TASKS_DIR);
            if let Ok(frameworks) = std::fs::read_dir(&tasks) {
                for fw in frameworks.flatten() {
                    if fw.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(fw.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&tasks);
            let _ = std::fs::remove_dir(&root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::Resource;

    #[test]
    fn limits_follow_the_resources_and_the_task() {
        let task = TaskInfo {
            resources: vec![
                Resource::scalar(names::CPUS, 0.5),
                Resource::scalar(names::MEM, 64.0),
            ],
            cpu_limit: Some(1.0),
            mem_soft_limit_mib: Some(32.0),
            ..TaskInfo::default()
        };
        let l = limits_for(&task, 100);
        assert_eq!(l.cpus, Some(0.5));
        assert_eq!(l.cpu_limit, Some(1.0));
        assert_eq!(l.mem_bytes, Some(64 << 20));
        assert_eq!(l.mem_soft_bytes, Some(32 << 20));
        assert_eq!(l.pids_max, Some(100));
        let none = limits_for(
            &TaskInfo {
                pids_limit: 7,
                ..TaskInfo::default()
            },
            100,
        );
        assert_eq!(none.cpus, None);
        assert_eq!(none.mem_bytes, None);
        assert_eq!(none.pids_max, Some(7));
    }
}
