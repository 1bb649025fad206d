//! Isolation scenarios for the agent's [`LinuxContainerizer`], shared by the host tests
//! (`tests/host_isolation.rs`, hybrid cgroups on the development machines) and the guest tests
//! (`tests/guest.rs`, pure cgroup v2 in qemu).
//!
//! Every scenario runs its workload as a task of a real containerizer whose cgroup root is a
//! fresh directory below the test's own cgroup; the task's limits are written before its first
//! process starts, and [`Env`] removes the whole subtree (killing what is left) when dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use strata_agent::cgroup::{self, CgroupBackend, CpuStats, RootPlacement};
use strata_agent::containerizer::linux::{LinuxConfig, LinuxContainerizer};
use strata_agent::containerizer::{
    Container, Containerizer as _, ContainerizerError, ExitStatus, LaunchSpec,
};
use strata_proto::{CommandInfo, Resource, TaskInfo, names};

/// The longest any task of a scenario may run.
const LIMIT: Duration = Duration::from_secs(60);
/// The framework id [`Env`] launches its tasks under.
pub(crate) const FRAMEWORK: &str = "fw-test";

/// A containerizer with its own cgroup root and work dir, removed when dropped.
pub struct Env {
    /// The containerizer under test.
    pub containerizer: LinuxContainerizer,
    cgroups: Arc<dyn CgroupBackend>,
    work: tempfile::TempDir,
    helper: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("roots", &self.cgroups.roots())
            .finish_non_exhaustive()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Err(e) = self.cgroups.destroy_root() {
            eprintln!("warning: cannot remove the test's cgroups: {e}");
        }
    }
}

/// A task spec: a command and its resources.
#[derive(Debug, Clone)]
pub struct Task {
    /// The TaskInfo launched.
    pub info: TaskInfo,
    /// The GPUs the agent would have assigned it.
    pub gpus: Vec<strata_agent::gpu::GpuDevice>,
}

impl Task {
    /// `helper ARGS...` (the helper stays in the task's cgroup: its first argument is `-`).
    pub fn helper(env: &Env, id: &str, args: &[&str]) -> Self {
        let mut arguments = vec![env.helper.display().to_string(), "-".to_owned()];
        arguments.extend(args.iter().map(|a| (*a).to_owned()));
        Self::command(id, &env.helper.display().to_string(), arguments, false)
    }

    /// `/bin/sh -c SCRIPT`.
    pub fn shell(id: &str, script: &str) -> Self {
        Self::command(id, script, Vec::new(), true)
    }

    fn command(id: &str, value: &str, arguments: Vec<String>, shell: bool) -> Self {
        Self {
            info: TaskInfo {
                task_id: id.to_owned(),
                command: Some(CommandInfo {
                    shell,
                    value: value.to_owned(),
                    arguments,
                    ..CommandInfo::default()
                }),
                ..TaskInfo::default()
            },
            gpus: Vec::new(),
        }
    }

    /// Gives the task these GPUs (as the agent's assignment would).
    #[must_use]
    pub fn gpus(mut self, gpus: Vec<strata_agent::gpu::GpuDevice>) -> Self {
        self.gpus = gpus;
        self
    }

    /// Requested cpus (the share).
    #[must_use]
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.info
            .resources
            .push(Resource::scalar(names::CPUS, cpus));
        self
    }

    /// The hard memory limit, MiB.
    #[must_use]
    pub fn mem(mut self, mib: f64) -> Self {
        self.info.resources.push(Resource::scalar(names::MEM, mib));
        self
    }

    /// A hard cpu limit, cores.
    #[must_use]
    pub fn cpu_limit(mut self, cores: f64) -> Self {
        self.info.cpu_limit = Some(cores);
        self
    }

    /// The user (and optionally group) to run as.
    #[must_use]
    pub fn user(mut self, user: &str) -> Self {
        if let Some(c) = self.info.command.as_mut() {
            c.user = user.to_owned();
        }
        self
    }

    /// Capabilities to keep.
    #[must_use]
    pub fn capabilities(mut self, caps: &[&str]) -> Self {
        if let Some(c) = self.info.command.as_mut() {
            c.capabilities = caps.iter().map(|s| (*s).to_owned()).collect();
        }
        self
    }

    /// An environment variable.
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        if let Some(c) = self.info.command.as_mut() {
            c.environment.insert(name.to_owned(), value.to_owned());
        }
        self
    }

    /// An rlimit.
    #[must_use]
    pub fn rlimit(mut self, name: &str, value: u64) -> Self {
        if let Some(c) = self.info.command.as_mut() {
            c.rlimits.insert(name.to_owned(), value);
        }
        self
    }

    /// A network namespace with only loopback.
    #[must_use]
    pub fn network_isolation(mut self) -> Self {
        self.info.network_isolation = true;
        self
    }

    /// Bridge networking: a namespace of its own on the agent's bridge.
    #[must_use]
    pub fn bridge(mut self) -> Self {
        self.info.network_mode = strata_proto::NetworkMode::Bridge as i32;
        self
    }

    /// The ports resource (closed ranges).
    #[must_use]
    pub fn ports(mut self, ranges: &[(u64, u64)]) -> Self {
        self.info
            .resources
            .push(Resource::ranges(names::PORTS, ranges.iter().copied()));
        self
    }

    /// A TCP port mapping: host port `host` (one of the task's ports) to `container`.
    #[must_use]
    pub fn publish(mut self, host: u32, container: u32) -> Self {
        self.info.port_mappings.push(strata_proto::PortMapping {
            host_port: host,
            container_port: container,
            protocol: strata_proto::PortProtocol::Tcp as i32,
        });
        self
    }

    /// Egress bandwidth (`net_egress_mbps`), Mbit/s.
    #[must_use]
    pub fn egress(mut self, mbps: f64) -> Self {
        self.info
            .resources
            .push(Resource::scalar(names::NET_EGRESS_MBPS, mbps));
        self
    }

    /// A device node the task may use.
    #[must_use]
    pub fn device(mut self, path: &Path) -> Self {
        self.info.devices.push(path.display().to_string());
        self
    }

    /// pids.max.
    #[must_use]
    pub fn pids(mut self, max: u64) -> Self {
        self.info.pids_limit = max;
        self
    }
}

impl Env {
    /// A fresh environment named `name` (unique per process), running `helper` as workload.
    pub fn new(name: &str, helper: &Path) -> Result<Self> {
        let placement =
            RootPlacement::BelowOwn(format!("strata-test-{}-{name}", std::process::id()));
        let cgroups: Arc<dyn CgroupBackend> = Arc::from(
            cgroup::detect(Path::new("/proc"), Path::new("/sys/fs/cgroup"), &placement)
                .context("setting up the test's cgroups")?,
        );
        let work = tempfile::tempdir().context("creating a work dir")?;
        let containerizer = LinuxContainerizer::new(LinuxConfig::new(work.path()), cgroups.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        Ok(Self {
            containerizer,
            cgroups,
            work,
            helper: helper.to_path_buf(),
            rt,
        })
    }

    /// Like [`Env::new`], with `helper` also as the tasks' supervisor and init, so tasks get
    /// namespaces, a user and dropped capabilities.
    pub fn supervised(name: &str, helper: &Path) -> Result<Self> {
        Self::supervised_with(name, helper, |_| {})
    }

    /// Like [`Env::supervised`], with the containerizer's settings changed by `configure`
    /// (the capabilities it allows, its seccomp profile).
    pub fn supervised_with(
        name: &str,
        helper: &Path,
        configure: impl FnOnce(&mut LinuxConfig),
    ) -> Result<Self> {
        let mut env = Self::new(name, helper)?;
        let mut config = LinuxConfig::new(env.work.path());
        config.supervisor_exe = Some(helper.to_path_buf());
        // By id: the guest has no user database.
        config.default_user = NOBODY.to_owned();
        configure(&mut config);
        env.containerizer = LinuxContainerizer::new(config, env.cgroups.clone());
        Ok(env)
    }

    /// Like [`Env::supervised`], with device control (the agent's cgroup_device program).
    pub fn with_device_control(name: &str, helper: &Path) -> Result<Self> {
        let mut env = Self::supervised(name, helper)?;
        let devices = strata_agent::ebpf::DeviceControl::load()
            .context("loading the device control program")?;
        let mut config = LinuxConfig::new(env.work.path());
        config.supervisor_exe = Some(helper.to_path_buf());
        env.containerizer =
            LinuxContainerizer::new(config, env.cgroups.clone()).with_device_control(devices);
        Ok(env)
    }

    /// Like [`Env::supervised`], with port enforcement (the agent's bind programs attached at
    /// the environment's cgroup root) for the agent's managed ports `managed`.
    pub fn with_port_control(name: &str, helper: &Path, managed: (u64, u64)) -> Result<Self> {
        let mut env = Self::supervised(name, helper)?;
        let root = env
            .cgroups
            .unified_root()
            .context("the test's cgroups have no unified root")?;
        let ports = strata_agent::ebpf::PortControl::load(&root, &[managed])
            .context("loading the port programs")?;
        let mut config = LinuxConfig::new(env.work.path());
        config.supervisor_exe = Some(helper.to_path_buf());
        config.default_user = NOBODY.to_owned();
        env.containerizer =
            LinuxContainerizer::new(config, env.cgroups.clone()).with_port_control(ports);
        Ok(env)
    }

    /// Simulates an agent restart with port enforcement: the runtime (with the reapers, which
    /// hold the old programs and map) and the containerizer are replaced by new ones, with a
    /// new port map, empty until [`Env::recover`] re-attaches the running tasks.
    pub fn restart_with_port_control(&mut self, managed: (u64, u64)) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        drop(std::mem::replace(&mut self.rt, rt));
        let root = self
            .cgroups
            .unified_root()
            .context("the test's cgroups have no unified root")?;
        let ports = strata_agent::ebpf::PortControl::load(&root, &[managed])
            .context("loading the port programs")?;
        let mut config = LinuxConfig::new(self.work.path());
        config.supervisor_exe = Some(self.helper.clone());
        config.default_user = NOBODY.to_owned();
        self.containerizer =
            LinuxContainerizer::new(config, self.cgroups.clone()).with_port_control(ports);
        Ok(())
    }

    /// Like [`Env::supervised`], with egress limits (fq and the agent's EDT program on
    /// `device`).
    pub fn with_egress_control(name: &str, helper: &Path, device: &str) -> Result<Self> {
        let mut env = Self::supervised(name, helper)?;
        env.containerizer = env.egress_containerizer(device)?;
        Ok(env)
    }

    fn egress_containerizer(&self, device: &str) -> Result<LinuxContainerizer> {
        let egress = strata_agent::ebpf::EgressControl::load(
            device,
            Path::new("/sys"),
            strata_agent::ebpf::DEFAULT_EGRESS_HORIZON,
        )
        .with_context(|| format!("loading the egress limiter on {device}"))?;
        let mut config = LinuxConfig::new(self.work.path());
        config.supervisor_exe = Some(self.helper.clone());
        config.default_user = NOBODY.to_owned();
        Ok(LinuxContainerizer::new(config, self.cgroups.clone()).with_egress_control(egress))
    }

    /// Simulates an agent restart with egress limits: the runtime (with the reapers, which hold
    /// the old program and map) and the containerizer are replaced by new ones, with a new,
    /// empty map, until [`Env::recover`] re-attaches the running tasks.
    pub fn restart_with_egress_control(&mut self, device: &str) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        drop(std::mem::replace(&mut self.rt, rt));
        // The old containerizer (and its limiter) goes first, as with a real restart.
        self.containerizer =
            LinuxContainerizer::new(LinuxConfig::new(self.work.path()), self.cgroups.clone());
        self.containerizer = self.egress_containerizer(device)?;
        Ok(())
    }

    /// Like [`Env::supervised`], with bridge networking on bridge `name` with `subnet` (made
    /// in the machine's network namespace: guest only).
    pub fn with_bridge(name: &str, helper: &Path, bridge: &str, subnet: &str) -> Result<Self> {
        let mut env = Self::supervised(name, helper)?;
        env.containerizer = env.bridge_containerizer(bridge, subnet)?;
        Ok(env)
    }

    /// Bridge networking and egress limits on `device` together: a bridge task's limit is
    /// enforced on its own eth0 (guest only: the limiter needs fq).
    pub fn with_bridge_and_egress(
        name: &str,
        helper: &Path,
        device: &str,
        bridge: &str,
        subnet: &str,
    ) -> Result<Self> {
        let mut env = Self::supervised(name, helper)?;
        let egress = strata_agent::ebpf::EgressControl::load(
            device,
            Path::new("/sys"),
            strata_agent::ebpf::DEFAULT_EGRESS_HORIZON,
        )
        .with_context(|| format!("loading the egress limiter on {device}"))?;
        env.containerizer = env
            .bridge_containerizer(bridge, subnet)?
            .with_egress_control(egress);
        Ok(env)
    }

    fn bridge_containerizer(&self, bridge: &str, subnet: &str) -> Result<LinuxContainerizer> {
        let subnet = strata_agent::bridge::Subnet::parse(subnet).map_err(anyhow::Error::msg)?;
        let control =
            strata_agent::bridge::BridgeControl::start(bridge, subnet, Path::new("/proc"))
                .with_context(|| format!("setting up the bridge {bridge}"))?;
        let mut config = LinuxConfig::new(self.work.path());
        config.supervisor_exe = Some(self.helper.clone());
        config.default_user = NOBODY.to_owned();
        Ok(LinuxContainerizer::new(config, self.cgroups.clone()).with_bridge_control(control))
    }

    /// Simulates an agent restart with bridge networking: the runtime (with the reapers, which
    /// hold the old leases) and the containerizer are replaced by new ones, with an empty lease
    /// table until [`Env::recover`] re-attaches the running tasks.
    pub fn restart_with_bridge(&mut self, bridge: &str, subnet: &str) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        drop(std::mem::replace(&mut self.rt, rt));
        self.containerizer = self.bridge_containerizer(bridge, subnet)?;
        Ok(())
    }

    /// Re-attaches to a running task after [`Env::restart_with_port_control`].
    pub fn recover(&self, task_id: &str) -> Result<Box<dyn Container>> {
        let _guard = self.rt.enter();
        self.containerizer
            .recover(FRAMEWORK, task_id)
            .with_context(|| format!("recovering task {task_id}"))
    }

    /// Writes the task's checkpoint, as the agent does before a launch (recovery reads it).
    pub fn checkpoint(&self, task: &Task) -> Result<()> {
        let run =
            strata_agent::containerizer::run_dir(self.work.path(), FRAMEWORK, &task.info.task_id)?;
        std::fs::create_dir_all(&run).context("creating the run dir")?;
        strata_agent::checkpoint::save_task(&run, &task.info).context("saving the task")?;
        Ok(())
    }

    /// The work dir.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Launches a task.
    pub fn launch(&self, task: &Task) -> Result<Box<dyn Container>> {
        let mut info = task.info.clone();
        self.bring_helper_into_sandbox(&mut info)?;
        let spec = LaunchSpec {
            gpus: task.gpus.clone(),
            framework_id: FRAMEWORK.to_owned(),
            agent_id: "agent-test".to_owned(),
            task: info,
        };
        self.rt
            .block_on(self.containerizer.launch(&spec))
            .with_context(|| format!("launching task {}", task.info.task_id))
    }

    /// A task sees the sandbox's `tmp` at `/tmp`, so a helper binary under the host's /tmp (a
    /// checkout there, as CI's may be) is out of its sight: copy it into the task's sandbox,
    /// which stays reachable at its path, and run that copy.
    fn bring_helper_into_sandbox(&self, info: &mut TaskInfo) -> Result<()> {
        let helper = self.helper.display().to_string();
        let Some(command) = info.command.as_mut().filter(|c| c.value == helper) else {
            return Ok(());
        };
        let sandbox =
            strata_agent::containerizer::sandbox_dir(self.work.path(), FRAMEWORK, &info.task_id)?;
        std::fs::create_dir_all(&sandbox)
            .with_context(|| format!("creating the sandbox {}", sandbox.display()))?;
        let copy = sandbox.join("strata-vm-helper");
        std::fs::copy(&self.helper, &copy)
            .with_context(|| format!("copying {helper} into {}", sandbox.display()))?;
        let copy = copy.display().to_string();
        command.value.clone_from(&copy);
        if let Some(argv0) = command.arguments.first_mut() {
            argv0.clone_from(&copy);
        }
        Ok(())
    }

    /// Waits for a task to end (at most [`LIMIT`]).
    pub fn wait(&self, c: &dyn Container) -> Result<ExitStatus> {
        self.rt
            .block_on(async { tokio::time::timeout(LIMIT, c.wait()).await })
            .context("the task did not end in time")?
            .context("waiting for the task")
    }

    /// Kills a task with the given grace period.
    pub fn kill(&self, c: &dyn Container, grace: Duration) -> Result<ExitStatus> {
        self.rt
            .block_on(async { tokio::time::timeout(LIMIT, c.kill(grace)).await })
            .context("the task was not killed in time")?
            .context("killing the task")
    }

    /// Sleeps on the runtime (so the reapers keep running).
    pub fn sleep(&self, d: Duration) {
        self.rt.block_on(async { tokio::time::sleep(d).await });
    }

    /// The cpu stats of a running task's cgroup.
    pub fn cpu_stats(&self, task_id: &str) -> Result<CpuStats> {
        let rel = cgroup::task_rel(FRAMEWORK, task_id)?;
        let cg = self
            .cgroups
            .open(&rel)
            .with_context(|| format!("task {task_id} has no cgroup"))?;
        Ok(cg.cpu_stats()?)
    }

    /// The pids in a running task's cgroup.
    pub fn pids(&self, task_id: &str) -> Result<Vec<i32>> {
        let rel = cgroup::task_rel(FRAMEWORK, task_id)?;
        match self.cgroups.open(&rel) {
            Some(cg) => Ok(cg.pids()?),
            None => Ok(Vec::new()),
        }
    }

    /// A task's stdout.
    pub fn stdout(&self, task_id: &str) -> String {
        std::fs::read_to_string(self.sandbox(task_id).join("stdout")).unwrap_or_default()
    }

    /// The task's sandbox directory.
    pub fn sandbox(&self, task_id: &str) -> PathBuf {
        strata_agent::containerizer::sandbox_dir(self.work.path(), FRAMEWORK, task_id)
            .expect("the scenarios' task ids are valid")
    }

    /// Whether the task's cgroup is gone.
    pub fn cgroup_gone(&self, task_id: &str) -> Result<bool> {
        let rel = cgroup::task_rel(FRAMEWORK, task_id)?;
        Ok(self.cgroups.open(&rel).is_none())
    }
}

/// A task over its memory limit is OOM-killed, reported with its peak usage, its cgroup is
/// removed, and its neighbour keeps running.
pub fn memory_limit_oom_kills_only_the_offender(helper: &Path) -> Result<()> {
    // Supervised, as the agent runs tasks: the OOM kill takes the task's init with it.
    let env = Env::supervised("oom", helper)?;
    let neighbour = env.launch(&Task::helper(&env, "neighbour", &["sleep", "30"]).mem(32.0))?;
    let hog = env.launch(&Task::helper(&env, "hog", &["alloc", "256"]).mem(32.0))?;
    let status = env.wait(hog.as_ref())?;
    ensure!(
        status == ExitStatus::Signal(9),
        "the hog should be SIGKILLed by the OOM killer, it {status}; stdout: {}",
        env.stdout("hog")
    );
    let oom = hog
        .memory_oom()
        .context("the hog's OOM kill was not reported")?;
    eprintln!("hog: {status}, {oom:?}");
    ensure!(oom.oom_kills >= 1, "{oom:?}");
    ensure!(
        oom.limit_bytes == Some(32 << 20),
        "limit reported as {:?}",
        oom.limit_bytes
    );
    let peak = oom.peak_bytes.context("no peak usage")?;
    ensure!(
        peak > 24 << 20 && peak <= 33 << 20,
        "peak usage {peak} is not close to the 32 MiB limit"
    );
    ensure!(
        !env.stdout("hog").contains("survived"),
        "the hog got all its memory"
    );
    ensure!(env.cgroup_gone("hog")?, "the hog's cgroup was not removed");
    let neighbour_pids = env.pids("neighbour")?;
    ensure!(
        !neighbour_pids.is_empty(),
        "the neighbour was hit by the hog's OOM"
    );
    ensure!(neighbour.memory_oom().is_none());
    let status = env.kill(neighbour.as_ref(), Duration::from_secs(2))?;
    ensure!(status == ExitStatus::Signal(15), "neighbour {status}");
    ensure!(
        env.cgroup_gone("neighbour")?,
        "the neighbour's cgroup was not removed"
    );
    Ok(())
}

/// A fork bomb stops at pids.max, the host stays responsive, and kill ends every process.
pub fn fork_bomb_is_stopped_by_pids_max(helper: &Path) -> Result<()> {
    let env = Env::new("forkbomb", helper)?;
    let limit = 24u64;
    // A real bomb: every copy forks copies of itself as fast as it can, forever; capped in cpu
    // as well.
    let bomb = env.launch(
        &Task::helper(&env, "bomb", &["fork-bomb"])
            .pids(limit)
            .cpu_limit(0.5)
            .mem(64.0),
    )?;
    env.sleep(Duration::from_millis(1500));
    let pids = env.pids("bomb")?;
    ensure!(
        pids.len() as u64 <= limit && pids.len() as u64 >= limit / 2,
        "the bomb has {} processes with pids.max {limit}",
        pids.len()
    );
    // The host still starts processes at once.
    let started = Instant::now();
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "echo alive"])
        .output()
        .context("starting a process next to the bomb")?;
    ensure!(out.status.success() && started.elapsed() < Duration::from_secs(5));
    let status = env.kill(bomb.as_ref(), Duration::from_millis(200))?;
    eprintln!(
        "bomb: {} processes at pids.max {limit}; host process started in {:?}; bomb {status}",
        pids.len(),
        started.elapsed()
    );
    ensure!(
        env.cgroup_gone("bomb")?,
        "the bomb's cgroup was not removed"
    );
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        ensure!(
            stat.is_empty()
                || stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z')),
            "process {pid} of the bomb survived: {stat}"
        );
    }
    Ok(())
}

/// A cpu limit of 0.2 cores holds a spinning task near 20% of a cpu, with throttling.
pub fn cpu_limit_throttles(helper: &Path) -> Result<()> {
    let env = Env::new("cpumax", helper)?;
    let task = env.launch(&Task::helper(&env, "spinner", &["spin", "20000"]).cpu_limit(0.2))?;
    env.sleep(Duration::from_millis(500));
    let (t0, s0) = (Instant::now(), env.cpu_stats("spinner")?);
    env.sleep(Duration::from_secs(2));
    let (t1, s1) = (Instant::now(), env.cpu_stats("spinner")?);
    let _ = env.kill(task.as_ref(), Duration::ZERO)?;
    let wall_us = t1.duration_since(t0).as_micros() as f64;
    let cores = (s1.usage_us - s0.usage_us) as f64 / wall_us;
    eprintln!(
        "cpu limit 0.2: used {cores:.3} cores; throttled {} periods ({} us)",
        s1.nr_throttled - s0.nr_throttled,
        s1.throttled_us - s0.throttled_us
    );
    ensure!(
        (0.1..=0.3).contains(&cores),
        "a task limited to 0.2 cores used {cores:.3}"
    );
    ensure!(
        s1.nr_throttled > s0.nr_throttled,
        "no throttling: {s0:?} {s1:?}"
    );
    Ok(())
}

/// Two tasks spinning on the same cpu share it in proportion to their requested cpus (1:3).
pub fn cpu_weights_share_in_proportion(helper: &Path) -> Result<()> {
    let env = Env::new("weights", helper)?;
    let small = env.launch(&Task::helper(&env, "small", &["spin-on", "0", "20000"]).cpus(0.5))?;
    let big = env.launch(&Task::helper(&env, "big", &["spin-on", "0", "20000"]).cpus(1.5))?;
    env.sleep(Duration::from_millis(500));
    let (a0, b0) = (env.cpu_stats("small")?, env.cpu_stats("big")?);
    env.sleep(Duration::from_secs(3));
    let (a1, b1) = (env.cpu_stats("small")?, env.cpu_stats("big")?);
    let _ = env.kill(small.as_ref(), Duration::ZERO)?;
    let _ = env.kill(big.as_ref(), Duration::ZERO)?;
    let small_us = (a1.usage_us - a0.usage_us) as f64;
    let big_us = (b1.usage_us - b0.usage_us) as f64;
    let ratio = big_us / small_us.max(1.0);
    eprintln!(
        "cpu weights 0.5 vs 1.5 on one cpu: {small_us:.0} us vs {big_us:.0} us, ratio {ratio:.2}"
    );
    ensure!(
        (2.0..=4.5).contains(&ratio),
        "cpus 1.5 vs 0.5 should share a cpu about 3:1, got {ratio:.2}"
    );
    Ok(())
}

/// Kill sends SIGTERM to every process in the cgroup, then kills what ignores it.
pub fn kill_terminates_then_kills_the_whole_cgroup(helper: &Path) -> Result<()> {
    let env = Env::supervised("kill", helper)?;
    let task = env.launch(&Task::shell(
        "stubborn",
        "trap '' TERM; (trap '' TERM; sleep 30) & echo ready; sleep 30",
    ))?;
    let deadline = Instant::now() + LIMIT;
    while !env.stdout("stubborn").contains("ready") {
        ensure!(Instant::now() < deadline, "the task never got ready");
        env.sleep(Duration::from_millis(10));
    }
    let pids = env.pids("stubborn")?;
    // busybox sh may run sleep in-process: at least the two shells.
    ensure!(
        pids.len() >= 2,
        "expected the shells and sleeps, got {pids:?}"
    );
    let started = Instant::now();
    let status = env.kill(task.as_ref(), Duration::from_millis(300))?;
    ensure!(status == ExitStatus::Signal(9), "{status}");
    ensure!(started.elapsed() >= Duration::from_millis(300));
    ensure!(env.cgroup_gone("stubborn")?, "the cgroup was not removed");
    Ok(())
}

/// The unprivileged user of the namespace scenarios (by id: the guest has no user database).
pub(crate) const NOBODY: &str = "65534";

pub(crate) fn run_to_end(env: &Env, task: &Task) -> Result<String> {
    let c = env.launch(task)?;
    let status = env.wait(c.as_ref())?;
    let out = env.stdout(&task.info.task_id);
    ensure!(
        status == ExitStatus::Code(0),
        "task {} {status}; stdout: {out}; stderr: {}",
        task.info.task_id,
        std::fs::read_to_string(env.sandbox(&task.info.task_id).join("stderr")).unwrap_or_default()
    );
    Ok(out)
}

pub(crate) fn line<'a>(out: &'a str, key: &str) -> Result<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .with_context(|| format!("no {key:?} line in {out:?}"))
}

/// `ps` in a task shows only its own processes (pid 1 is its init), and its hostname is its id.
pub fn a_task_sees_only_its_processes_and_its_hostname(helper: &Path) -> Result<()> {
    let env = Env::supervised("pidns", helper)?;
    let out = run_to_end(
        &env,
        &Task::shell(
            "ns-task-1",
            "sleep 30 & echo \"pids: $(ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' ')\"; \
             echo \"hostname: $(hostname)\"; echo \"self: $$\"; echo ps:; \
             ps -e -o pid,comm 2>/dev/null || ps -o pid,comm; kill $!",
        )
        .user(NOBODY),
    )?;
    eprintln!("{out}");
    let pids: Vec<u32> = line(&out, "pids:")?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    ensure!(
        pids.first() == Some(&1) && pids.len() <= 12 && pids.iter().all(|p| *p < 50),
        "the task sees processes other than its own: {pids:?}"
    );
    ensure!(
        line(&out, "self:")? == "2",
        "the command is not pid 2 under its init"
    );
    ensure!(
        line(&out, "hostname:")? == "ns-task-1",
        "hostname is not the task id"
    );
    let ps: Vec<&str> = out.lines().skip_while(|l| *l != "ps:").skip(2).collect();
    ensure!(
        !ps.is_empty() && ps.len() <= 6,
        "ps shows {} processes: {ps:?}",
        ps.len()
    );
    Ok(())
}

/// A task running as an unprivileged user has no capabilities, no_new_privs, its rlimits,
/// and cannot write outside its sandbox; its /tmp is the sandbox's.
pub fn an_unprivileged_task_has_no_capabilities_and_cannot_write_outside_its_sandbox(
    helper: &Path,
) -> Result<()> {
    let env = Env::supervised("unpriv", helper)?;
    let marker = format!("strata-escape-{}", std::process::id());
    let script = format!(
        "echo \"uid: $(id -u)\"; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status; \
         echo \"nofile: $(ulimit -n)\"; \
         for d in / /etc /root /var /usr; do touch \"$d/{marker}\" 2>/dev/null && echo \"wrote: $d\"; done; \
         touch /tmp/{marker} && echo tmp-ok; touch \"$STRATA_SANDBOX/inside\" && echo sandbox-ok"
    );
    let out = run_to_end(
        &env,
        &Task::shell("unpriv", &script)
            .user(NOBODY)
            .rlimit("nofile", 64),
    )?;
    eprintln!("{out}");
    ensure!(line(&out, "uid:")? == "65534", "not running as 65534");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        ensure!(
            line(&out, cap)?.trim_start_matches('0').is_empty(),
            "{cap} is not empty: {}",
            line(&out, cap)?
        );
    }
    ensure!(line(&out, "NoNewPrivs:")? == "1", "no_new_privs is not set");
    ensure!(
        line(&out, "nofile:")? == "64",
        "the nofile rlimit was not applied"
    );
    ensure!(
        !out.contains("wrote:"),
        "the task wrote outside its sandbox: {out}"
    );
    ensure!(out.contains("sandbox-ok") && out.contains("tmp-ok"));
    ensure!(
        env.sandbox("unpriv").join("tmp").join(&marker).is_file(),
        "the task's /tmp is not its sandbox's tmp"
    );
    ensure!(
        !Path::new("/tmp").join(&marker).exists(),
        "the task wrote into the host's /tmp"
    );
    Ok(())
}

/// Capabilities asked for (and allowed by the agent) are kept (also for a non-root user); the
/// rest are dropped.
pub fn capabilities_asked_for_are_kept(helper: &Path) -> Result<()> {
    let env = Env::supervised_with("caps", helper, |c| {
        c.allowed_capabilities = vec!["CAP_NET_BIND_SERVICE".to_owned()];
    })?;
    let out = run_to_end(
        &env,
        &Task::shell("caps", "grep -E '^(CapEff|CapBnd):' /proc/self/status")
            .user(NOBODY)
            .capabilities(&["CAP_NET_BIND_SERVICE"]),
    )?;
    // CAP_NET_BIND_SERVICE is capability 10.
    for cap in ["CapEff:", "CapBnd:"] {
        let mask = u64::from_str_radix(line(&out, cap)?, 16)?;
        ensure!(
            mask == 1 << 10,
            "{cap} is {mask:#x}, expected only CAP_NET_BIND_SERVICE"
        );
    }
    Ok(())
}

/// A task asking for network isolation sees only loopback, and it is up.
pub fn network_isolation_leaves_only_loopback(helper: &Path) -> Result<()> {
    let env = Env::supervised("netns", helper)?;
    let out = run_to_end(
        &env,
        &Task::shell(
            "netns",
            "echo \"ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\"",
        )
        .user(NOBODY)
        .network_isolation(),
    )?;
    ensure!(line(&out, "ifaces:")? == "lo", "interfaces: {out}");
    Ok(())
}

/// A task cannot open a device it was not given (EPERM from the cgroup_device program), can
/// open one it was given, and always has the standard ones (/dev/null, /dev/zero, ...).
pub fn device_control_denies_all_but_the_standard_and_given_devices(helper: &Path) -> Result<()> {
    let env = Env::with_device_control("devices", helper)?;
    // A character device with no driver behind it (240 is a "local/experimental" major): an
    // allowed open fails with ENXIO in the driver lookup, a denied one with EPERM before it.
    let node_in = |task_id: &str| -> Result<PathBuf> {
        let sandbox = env.sandbox(task_id);
        std::fs::create_dir_all(&sandbox)?;
        let node = sandbox.join("dev240");
        nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(240, 0),
        )
        .context("creating a test device node")?;
        std::fs::set_permissions(
            &node,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
        )?;
        Ok(node)
    };
    let script = "cat \"$STRATA_SANDBOX/dev240\" 2>&1 | head -n 1; \
                  echo \"zero: $(head -c 4 /dev/zero | wc -c)\"; echo x > /dev/null && echo null-ok";
    node_in("nodev")?;
    let denied = run_to_end(&env, &Task::shell("nodev", script).user(NOBODY))?;
    let node = node_in("dev")?;
    let allowed = run_to_end(&env, &Task::shell("dev", script).user(NOBODY).device(&node))?;
    eprintln!("not given: {denied}given: {allowed}");
    for out in [&denied, &allowed] {
        ensure!(
            line(out, "zero:")? == "4" && out.contains("null-ok"),
            "standard devices are not usable: {out}"
        );
    }
    ensure!(
        denied.contains("Operation not permitted"),
        "a device the task was not given could be opened: {denied}"
    );
    ensure!(
        allowed.contains("No such device or address"),
        "a device the task was given could not be opened: {allowed}"
    );
    Ok(())
}

/// A task given GPU 1 may open its own `/dev/nvidia1`, `/dev/nvidiactl`, `/dev/nvidia-uvm` and
/// `/dev/nvidia-uvm-tools`, and no other NVIDIA node (another GPU, modeset, caps); a task
/// without GPUs opens none. The majors come from a fake `/proc/devices` (nvidia 195, uvm 240,
/// caps 241, as a driver registers them); the nodes are synthetic character devices made with
/// mknod, with no driver behind them: an allowed open fails with ENXIO in the driver lookup, a
/// denied one with EPERM before it.
pub fn device_control_gives_gpu_tasks_only_their_nvidia_nodes(helper: &Path) -> Result<()> {
    let proc = tempfile::tempdir()?;
    std::fs::write(
        proc.path().join("devices"),
        "Character devices:\n  1 mem\n195 nvidia\n240 nvidia-uvm\n241 nvidia-caps\n\nBlock devices:\n  8 sd\n",
    )?;
    let nodes = strata_agent::gpu::nodes::GpuNodes::read(proc.path())?;
    let mut env = Env::with_device_control("gpudevices", helper)?;
    env.containerizer = env.containerizer.clone().with_gpu_nodes(nodes);
    const NODES: [(&str, u64, u64); 7] = [
        ("nvidia0", 195, 0),
        ("nvidia1", 195, 1),
        ("nvidiactl", 195, 255),
        ("nvidia-modeset", 195, 254),
        ("nvidia-uvm", 240, 0),
        ("nvidia-uvm-tools", 240, 1),
        ("nvidia-cap1", 241, 1),
    ];
    let make_nodes = |task_id: &str| -> Result<()> {
        let dir = env.sandbox(task_id).join("dev");
        std::fs::create_dir_all(&dir)?;
        for (name, major, minor) in NODES {
            let node = dir.join(name);
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .with_context(|| format!("creating {}", node.display()))?;
            std::fs::set_permissions(
                &node,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
            )?;
        }
        Ok(())
    };
    let script = "for n in nvidia0 nvidia1 nvidiactl nvidia-modeset nvidia-uvm nvidia-uvm-tools nvidia-cap1; do \
                  printf '%s: ' $n; (cat \"$STRATA_SANDBOX/dev/$n\" 2>&1 || true) | head -n 1; done; \
                  echo \"visible: $CUDA_VISIBLE_DEVICES\"";
    let mut gpu1 = strata_agent::gpu::fake::fake_device(1);
    gpu1.uuid = "GPU-vm-1".to_owned();
    make_nodes("gpu")?;
    let given = run_to_end(
        &env,
        &Task::shell("gpu", script).user(NOBODY).gpus(vec![gpu1]),
    )?;
    make_nodes("nogpu")?;
    let none = run_to_end(&env, &Task::shell("nogpu", script).user(NOBODY))?;
    eprintln!("given GPU 1:\n{given}without GPUs:\n{none}");
    let opened = |out: &str, name: &str| -> Result<bool> {
        let result = line(out, &format!("{name}:"))?;
        match (
            result.contains("No such device or address"),
            result.contains("Operation not permitted"),
        ) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            _ => bail!("{name}: neither allowed (ENXIO) nor denied (EPERM): {result:?}"),
        }
    };
    for (name, _, _) in NODES {
        let allowed = matches!(
            name,
            "nvidia1" | "nvidiactl" | "nvidia-uvm" | "nvidia-uvm-tools"
        );
        ensure!(
            opened(&given, name)? == allowed,
            "the task given GPU 1 {} {name}: {given}",
            if allowed {
                "could not open"
            } else {
                "could open"
            }
        );
        ensure!(
            !opened(&none, name)?,
            "a task without GPUs could open {name}: {none}"
        );
    }
    ensure!(
        line(&given, "visible:")? == "GPU-vm-1",
        "CUDA_VISIBLE_DEVICES does not name the task's GPU: {given}"
    );
    ensure!(
        line(&none, "visible:")?.is_empty(),
        "a task without GPUs was named one: {none}"
    );
    Ok(())
}

/// A task run as nobody that asks for CAP_SETUID (which would make it uid 0) is refused before
/// anything is made for it, with an error that names the capability and the flag that allows
/// it; the agent allows no capability unless told.
pub fn a_capability_the_agent_does_not_allow_is_refused(helper: &Path) -> Result<()> {
    let env = Env::supervised("capsrefused", helper)?;
    let task = Task::shell("setuid", "id -u")
        .user(NOBODY)
        .capabilities(&["CAP_SETUID"]);
    let Err(err) = env.launch(&task) else {
        bail!("a task asking for CAP_SETUID was launched by an agent that allows no capability");
    };
    let refusal = err
        .downcast_ref::<ContainerizerError>()
        .with_context(|| format!("not a containerizer error: {err:#}"))?;
    let message = refusal.to_string();
    eprintln!("refused: {message}");
    ensure!(
        refusal.is_refusal(),
        "not reported as a refusal (TASK_ERROR): {message}"
    );
    ensure!(
        message.contains("CAP_SETUID") && message.contains("--allowed-capabilities"),
        "the refusal does not name the capability and the flag: {message}"
    );
    ensure!(
        !env.sandbox("setuid").exists(),
        "the refused task got a sandbox"
    );
    ensure!(env.cgroup_gone("setuid")?, "the refused task got a cgroup");
    Ok(())
}

/// With CAP_NET_BIND_SERVICE allowed by the agent, a task (nobody) that asks for it binds port
/// 80; one that does not ask cannot.
pub fn an_allowed_capability_binds_port_80_and_a_task_without_it_cannot(
    helper: &Path,
) -> Result<()> {
    let env = Env::supervised_with("bind80", helper, |c| {
        c.allowed_capabilities = vec!["CAP_NET_BIND_SERVICE".to_owned()];
    })?;
    // Each in a network namespace of its own: port 80 of the host is none of the test's.
    let with = run_to_end(
        &env,
        &Task::helper(&env, "with-cap", &["bind", "80"])
            .capabilities(&["NET_BIND_SERVICE"])
            .network_isolation(),
    )?;
    let without = run_to_end(
        &env,
        &Task::helper(&env, "without-cap", &["bind", "80"]).network_isolation(),
    )?;
    eprintln!("with the capability: {with}without: {without}");
    ensure!(
        line(&with, "bind=")? == "ok",
        "a task with NET_BIND_SERVICE cannot bind port 80: {with}"
    );
    ensure!(
        line(&without, "bind=")? == "EACCES",
        "a task without NET_BIND_SERVICE could bind port 80: {without}"
    );
    Ok(())
}

/// The default seccomp profile denies mount and a user namespace with EPERM even to a task
/// that kept CAP_SYS_ADMIN (which the agent allowed); the same task unconfined mounts, which
/// shows it is the profile that stops it.
pub fn seccomp_denies_mount_and_user_namespaces_even_with_capabilities(
    helper: &Path,
) -> Result<()> {
    let allow_sys_admin = |c: &mut LinuxConfig| {
        c.allowed_capabilities = vec!["CAP_SYS_ADMIN".to_owned()];
    };
    let escape = |env: &Env, id: &str| {
        run_to_end(
            env,
            &Task::helper(env, id, &["escape"]).capabilities(&["CAP_SYS_ADMIN"]),
        )
    };
    let env = Env::supervised_with("seccomp", helper, allow_sys_admin)?;
    let confined = escape(&env, "confined")?;
    let env = Env::supervised_with("unconfined", helper, |c| {
        allow_sys_admin(c);
        c.seccomp = strata_agent::containerizer::supervisor::seccomp::Seccomp::Unconfined;
    })?;
    let unconfined = escape(&env, "unconfined")?;
    eprintln!("default profile: {confined}unconfined: {unconfined}");
    ensure!(
        line(&confined, "mount=")? == "EPERM",
        "a confined task could mount: {confined}"
    );
    ensure!(
        line(&confined, "unshare_user=")? == "EPERM",
        "a confined task could unshare a user namespace: {confined}"
    );
    ensure!(
        line(&unconfined, "mount=")? == "ok",
        "the same task unconfined could not mount, so the check above proves nothing: {unconfined}"
    );
    Ok(())
}

/// With user namespaces on (the agent turns them on where the host allows it), a task with a
/// non-root user and no capabilities runs in a user namespace of its own that maps only its
/// uid and gid, with setgroups denied and no capability in it: root is not mapped there. A
/// task that keeps a capability runs in the host's (where the capability applies).
pub fn a_task_runs_in_a_user_namespace_mapping_only_its_ids(helper: &Path) -> Result<()> {
    if let Err(reason) = strata_agent::containerizer::linux::try_user_namespace() {
        ensure!(
            !crate::in_guest(),
            "the guest does not allow user namespaces: {reason}"
        );
        eprintln!("skipped: this host does not allow user namespaces for tasks: {reason}");
        return Ok(());
    }
    let env = Env::supervised_with("userns", helper, |c| {
        c.user_namespaces = true;
        c.allowed_capabilities = vec!["CAP_NET_BIND_SERVICE".to_owned()];
    })?;
    let script = "echo \"uid_map: $(cat /proc/self/uid_map)\"; \
                  echo \"gid_map: $(cat /proc/self/gid_map)\"; \
                  echo \"setgroups: $(cat /proc/self/setgroups)\"; \
                  grep -E '^(CapEff|CapBnd):' /proc/self/status; \
                  if echo x > /etc/strata-userns 2>/dev/null; then echo 'etc: written'; \
                  else echo 'etc: denied'; fi";
    let own = run_to_end(&env, &Task::shell("own", script).user(NOBODY))?;
    let with_cap = run_to_end(
        &env,
        &Task::shell("with-cap", script)
            .user(NOBODY)
            .capabilities(&["CAP_NET_BIND_SERVICE"]),
    )?;
    eprintln!("own namespace:\n{own}with a capability:\n{with_cap}");
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure!(
        words(line(&own, "uid_map:")?) == "65534 65534 1",
        "the task's uid map is not its uid alone: {own}"
    );
    ensure!(
        words(line(&own, "gid_map:")?) == "65534 65534 1",
        "the task's gid map is not its gid alone: {own}"
    );
    ensure!(
        line(&own, "setgroups:")? == "deny",
        "setgroups allowed: {own}"
    );
    for cap in ["CapEff:", "CapBnd:"] {
        ensure!(
            u64::from_str_radix(line(&own, cap)?, 16)? == 0,
            "{cap} is not empty in the task's namespace: {own}"
        );
    }
    ensure!(
        line(&own, "etc:")? == "denied",
        "the task wrote /etc: {own}"
    );
    ensure!(
        words(line(&with_cap, "uid_map:")?) == "0 0 4294967295",
        "a task keeping a capability is not in the host's user namespace: {with_cap}"
    );
    Ok(())
}

/// A task's environment is what it asked for, the agent's STRATA_*/MESOS_* variables, and a
/// PATH and HOME (its sandbox): nothing of the agent's (this test process's) own.
pub fn a_task_gets_only_its_own_environment(helper: &Path) -> Result<()> {
    let env = Env::supervised("env", helper)?;
    let out = run_to_end(
        &env,
        &Task::helper(&env, "env", &["env"]).env("TASK_GREETING", "hi"),
    )?;
    let mut names: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("env:")).collect();
    names.sort_unstable();
    eprintln!("the task's environment: {names:?}");
    ensure!(
        names
            == [
                "HOME",
                "MESOS_SANDBOX",
                "MESOS_TASK_ID",
                "PATH",
                "STRATA_AGENT_ID",
                "STRATA_FRAMEWORK_ID",
                "STRATA_SANDBOX",
                "STRATA_TASK_ID",
                "TASK_GREETING",
            ],
        "the task's environment is not only its own: {names:?}"
    );
    Ok(())
}

/// A task's sandbox is its user's alone (0700, owned by it), the directories above it are
/// traversable but not listable, and the run files (the spec holds the environment) are the
/// agent's alone.
pub fn sandboxes_are_private_and_run_files_the_agents_alone(helper: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let env = Env::supervised("modes", helper)?;
    let task = env.launch(&Task::shell("modes", "sleep 30").user(NOBODY))?;
    let work = env.work_dir();
    let run = strata_agent::containerizer::run_dir(work, FRAMEWORK, "modes")?;
    let spec = run.join(strata_agent::containerizer::supervisor::SPEC_FILE);
    let sandbox = env.sandbox("modes");
    let checks = [
        (work.join("sandboxes"), 0o711, 0),
        (work.join("sandboxes").join(FRAMEWORK), 0o711, 0),
        (sandbox.clone(), 0o700, 65534),
        (work.join("runs"), 0o700, 0),
        (work.join("runs").join(FRAMEWORK), 0o700, 0),
        (run.clone(), 0o700, 0),
    ];
    let mut wrong = Vec::new();
    for (path, mode, uid) in &checks {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        let (m, u) = (meta.mode() & 0o7777, meta.uid());
        if m != *mode || u != *uid {
            wrong.push(format!(
                "{} is {m:o} uid {u}, not {mode:o} uid {uid}",
                path.display()
            ));
        }
    }
    ensure!(spec.is_file(), "no spec at {}", spec.display());
    let _ = env.kill(task.as_ref(), Duration::ZERO)?;
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}
