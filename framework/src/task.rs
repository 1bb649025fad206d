//! A builder for [`TaskInfo`]: `task("t1").shell("echo hi").cpus(0.1).mem(32.0).build()`.

use std::time::Duration;

use strata_proto::{CommandInfo, Resource, TaskInfo, names};

/// Starts building the task `task_id` (unique within the framework).
///
/// ```
/// let t = strata_framework::task("t1").shell("echo hi").cpus(0.1).mem(32.0).build();
/// assert_eq!(t.command.unwrap().value, "echo hi");
/// ```
pub fn task(task_id: impl Into<String>) -> TaskBuilder {
    TaskBuilder {
        info: TaskInfo {
            task_id: task_id.into(),
            ..TaskInfo::default()
        },
    }
}

/// Builds a [`TaskInfo`]; see [`task`].
#[derive(Debug, Clone)]
pub struct TaskBuilder {
    info: TaskInfo,
}

impl TaskBuilder {
    /// Runs `script` with `/bin/sh -c`.
    pub fn shell(mut self, script: impl Into<String>) -> Self {
        let command = self.command_mut();
        command.shell = true;
        command.value = script.into();
        command.arguments.clear();
        self
    }

    /// Runs `argv` directly (no shell): `argv[0]` is the executable, looked up in PATH, and
    /// the whole of `argv` (including `argv[0]`) is its argument vector.
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let arguments: Vec<String> = argv.into_iter().map(Into::into).collect();
        let command = self.command_mut();
        command.shell = false;
        command.value = arguments.first().cloned().unwrap_or_default();
        command.arguments = arguments;
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.command_mut()
            .environment
            .insert(key.into(), value.into());
        self
    }

    /// Runs the command as `user` (the agent's default when unset).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.command_mut().user = user.into();
        self
    }

    /// A human-readable name (defaults to the task id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.info.name = name.into();
        self
    }

    /// Pins the task to an agent (must be the agent of the offer it is launched with).
    pub fn agent(mut self, agent_id: impl Into<String>) -> Self {
        self.info.agent_id = agent_id.into();
        self
    }

    /// CPU cores (replaces an earlier value).
    pub fn cpus(self, cpus: f64) -> Self {
        self.scalar(names::CPUS, cpus)
    }

    /// Memory in MiB (replaces an earlier value).
    pub fn mem(self, mib: f64) -> Self {
        self.scalar(names::MEM, mib)
    }

    /// Disk in MiB (replaces an earlier value).
    pub fn disk(self, mib: f64) -> Self {
        self.scalar(names::DISK, mib)
    }

    /// Whole GPUs (replaces an earlier value).
    pub fn gpus(self, gpus: f64) -> Self {
        self.scalar(names::GPUS, gpus)
    }

    /// A scalar resource `name` (replaces an earlier value of the same name; 0 removes it).
    pub fn scalar(mut self, name: &str, value: f64) -> Self {
        self.info.resources.retain(|r| r.name != name);
        if value > 0.0 {
            self.info.resources.push(Resource::scalar(name, value));
        }
        self
    }

    /// Adds any resource as it is (for ranges such as ports).
    pub fn resource(mut self, resource: Resource) -> Self {
        self.info.resources.push(resource);
        self
    }

    /// A label (free-form key and value kept with the task).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.info.labels.insert(key.into(), value.into());
        self
    }

    /// How long the agent waits between SIGTERM and SIGKILL when killing the task.
    pub fn kill_grace_period(mut self, grace: Duration) -> Self {
        self.info.kill_grace_period_seconds = grace.as_secs_f64();
        self
    }

    /// Runs the command with `group` as its primary group (the user's own when unset).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.command_mut().group = group.into();
        self
    }

    /// Keeps a capability, like `CAP_NET_BIND_SERVICE` (all others are dropped).
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.command_mut().capabilities.push(capability.into());
        self
    }

    /// A resource limit, soft = hard: `nofile`, `nproc`, `core`, `stack`, `as`, `cpu`, `fsize`,
    /// `memlock` or `data`.
    pub fn rlimit(mut self, name: impl Into<String>, value: u64) -> Self {
        self.command_mut().rlimits.insert(name.into(), value);
        self
    }

    /// A hard cpu limit in cores (cpu.max); [`cpus`](Self::cpus) is the guaranteed share.
    pub fn cpu_limit(mut self, cores: f64) -> Self {
        self.info.cpu_limit = Some(cores);
        self
    }

    /// A soft memory limit in MiB (memory.high); [`mem`](Self::mem) is the hard limit.
    pub fn mem_soft_limit(mut self, mib: f64) -> Self {
        self.info.mem_soft_limit_mib = Some(mib);
        self
    }

    /// The most processes and threads the task may have (the agent's default when unset).
    pub fn pids_limit(mut self, max: u64) -> Self {
        self.info.pids_limit = max;
        self
    }

    /// A device node the task may use, like `/dev/fuse` (beyond null, zero, full, random,
    /// urandom, tty, ptmx and pts, which every task has).
    pub fn device(mut self, path: impl Into<String>) -> Self {
        self.info.devices.push(path.into());
        self
    }

    /// Runs the task in a network namespace of its own with only loopback.
    pub fn network_isolation(mut self) -> Self {
        self.info.network_isolation = true;
        self
    }

    /// The task's network mode: host (the default), bridge (a namespace of its own on the
    /// agent's bridge, with an address the agent leases) or none (loopback only).
    pub fn network_mode(mut self, mode: strata_proto::NetworkMode) -> Self {
        self.info.network_mode = mode as i32;
        self
    }

    /// In bridge mode: forwards `host_port` (one of the task's ports) to `container_port` in
    /// the task's namespace, for `protocol` (unspecified: tcp and udp). Without any mapping a
    /// bridge task's ports are forwarded each to the same port.
    pub fn port_mapping(
        mut self,
        host_port: u16,
        container_port: u16,
        protocol: strata_proto::PortProtocol,
    ) -> Self {
        self.info.port_mappings.push(strata_proto::PortMapping {
            host_port: u32::from(host_port),
            container_port: u32::from(container_port),
            protocol: protocol as i32,
        });
        self
    }

    /// The finished [`TaskInfo`]. A task without a command is rejected by the allocator
    /// (TASK_ERROR), so call [`shell`](Self::shell) or [`command`](Self::command) first.
    pub fn build(mut self) -> TaskInfo {
        if self.info.name.is_empty() {
            self.info.name = self.info.task_id.clone();
        }
        self.info
    }

    fn command_mut(&mut self) -> &mut CommandInfo {
        self.info.command.get_or_insert_with(CommandInfo::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::scalar_sum;

    #[test]
    fn isolation_settings_reach_the_task_info() {
        let t = task("iso")
            .shell("true")
            .user("nobody")
            .group("nogroup")
            .capability("CAP_NET_BIND_SERVICE")
            .rlimit("nofile", 1024)
            .cpu_limit(1.5)
            .mem_soft_limit(48.0)
            .pids_limit(64)
            .device("/dev/fuse")
            .network_isolation()
            .build();
        let command = t.command.expect("a command");
        assert_eq!(command.group, "nogroup");
        assert_eq!(
            command.capabilities,
            vec!["CAP_NET_BIND_SERVICE".to_owned()]
        );
        assert_eq!(command.rlimits.get("nofile"), Some(&1024));
        assert_eq!(t.cpu_limit, Some(1.5));
        assert_eq!(t.mem_soft_limit_mib, Some(48.0));
        assert_eq!(t.pids_limit, 64);
        assert_eq!(t.devices, vec!["/dev/fuse".to_owned()]);
        assert!(t.network_isolation);
    }

    #[test]
    fn bridge_mode_and_mappings_reach_the_task_info() {
        let t = task("br")
            .shell("true")
            .resource(Resource::ranges(names::PORTS, [(31000, 31000)]))
            .network_mode(strata_proto::NetworkMode::Bridge)
            .port_mapping(31000, 80, strata_proto::PortProtocol::Tcp)
            .build();
        assert_eq!(t.network_mode, strata_proto::NetworkMode::Bridge as i32);
        assert_eq!(
            strata_proto::network::mappings(&t),
            Ok(vec![strata_proto::network::Mapping {
                host: 31000,
                container: 80,
                tcp: true,
                udp: false
            }])
        );
    }

    #[test]
    fn shell_task_has_script_and_resources() {
        let t = task("t1").shell("echo hi").cpus(0.1).mem(32.0).build();
        assert_eq!(t.task_id, "t1");
        assert_eq!(t.name, "t1", "name defaults to the id");
        let command = t.command.expect("a command");
        assert!(command.shell);
        assert_eq!(command.value, "echo hi");
        assert!(command.arguments.is_empty());
        assert_eq!(scalar_sum(&t.resources, names::CPUS), 0.1);
        assert_eq!(scalar_sum(&t.resources, names::MEM), 32.0);
        assert_eq!(t.resources.len(), 2);
    }

    #[test]
    fn argv_task_keeps_argv0_in_arguments() {
        let t = task("t2")
            .command(["/bin/echo", "a", "b"])
            .env("K", "V")
            .name("echo")
            .agent("a-1")
            .build();
        let command = t.command.expect("a command");
        assert!(!command.shell);
        assert_eq!(command.value, "/bin/echo");
        assert_eq!(command.arguments, ["/bin/echo", "a", "b"]);
        assert_eq!(command.environment.get("K").map(String::as_str), Some("V"));
        assert_eq!(t.name, "echo");
        assert_eq!(t.agent_id, "a-1");
    }

    #[test]
    fn setting_a_scalar_twice_replaces_it_and_zero_removes_it() {
        let t = task("t3")
            .shell("true")
            .cpus(1.0)
            .cpus(0.5)
            .mem(10.0)
            .mem(0.0)
            .build();
        assert_eq!(t.resources.len(), 1);
        assert_eq!(scalar_sum(&t.resources, names::CPUS), 0.5);
        assert_eq!(scalar_sum(&t.resources, names::MEM), 0.0);
    }

    #[test]
    fn later_command_form_wins() {
        let t = task("t4").command(["ls"]).shell("ls -l").build();
        let command = t.command.expect("a command");
        assert!(command.shell);
        assert_eq!(command.value, "ls -l");
        assert!(command.arguments.is_empty());
        let t = task("t5")
            .kill_grace_period(Duration::from_millis(1500))
            .build();
        assert!(t.command.is_none());
        assert_eq!(t.kill_grace_period_seconds, 1.5);
    }
}
