//! The agent's wiring: [`run`] checks the configuration, picks the containerizer (the
//! [`LinuxContainerizer`] with its cgroups and device control, or plain processes), and
//! [`start`] loads the agent id, discovers the host, loads the eBPF programs, starts the HTTP
//! server, the connection to the allocator and the usage collector, recovers the checkpointed
//! tasks and runs the core loop until the agent stops.
//!
//! Invariants:
//! - Start-up problems (a bad allocator address, an unusable work dir, a corrupt agent id,
//!   failed discovery, cgroups that are required but cannot be set up) stop the agent with an
//!   error before it connects; an unreachable allocator is retried forever.
//! - Resources offered without isolation carry the attribute `isolation=none`.
//! - eBPF programs that cannot load are a warning: the agent runs on without them.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::{AgentInfo, Attribute, Resource};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tracing::{Instrument, Span};

use super::{Agent, AgentConfig, AgentError, Isolation};
use crate::cgroup::{CgroupBackend, CgroupError, RootPlacement};
use crate::checkpoint;
use crate::connection;
use crate::containerizer::Containerizer;
use crate::containerizer::linux::{LinuxConfig, LinuxContainerizer};
use crate::containerizer::process::ProcessContainerizer;
use crate::discovery::{self, Discovery, HostRoots, Overrides};
use crate::gpu::{GPU_MODEL_ATTRIBUTE, Gpus};
use crate::status::StatusUpdateManager;
use crate::usage::{Collector, LatestUsage, Layout, SharedEbpf, TaskRef, UsageLoop, UsageReport};
use strata_common::parse::GpuSelection;

/// The egress limiter, shared by the containerizer and the usage collector.
type SharedEgress = Arc<std::sync::Mutex<crate::ebpf::EgressControl>>;

/// How long to wait for a TCP connection to the allocator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Loads the eBPF programs, attaching the per-cgroup ones at the task cgroups' unified root
/// (`tasks_root`), or at the agent's own unified cgroup when tasks run without cgroups (they
/// are the agent's children there); logs which attached. Failures are warnings that say what
/// is missing: the agent runs on without them.
async fn load_ebpf(roots: &HostRoots, tasks_root: Option<PathBuf>) -> Option<crate::ebpf::Ebpf> {
    let Some(dir) =
        tasks_root.or_else(|| discovery::unified_cgroup_dir(&roots.proc, &roots.cgroup))
    else {
        tracing::warn!(
            cgroup_root = %roots.cgroup.display(),
            "no unified (v2) cgroup hierarchy: eBPF accounting is off; mount cgroup2 (hybrid or pure v2) to enable it"
        );
        return None;
    };
    let started = Instant::now();
    let loaded = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || crate::ebpf::Ebpf::load(&dir)
    })
    .await;
    match loaded {
        Ok(Ok(ebpf)) => {
            // Ebpf::load logs each program's state itself.
            tracing::info!(
                cgroup = %dir.display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "eBPF accounting loaded"
            );
            Some(ebpf)
        }
        Ok(Err(e)) => {
            tracing::warn!(cgroup = %dir.display(), error = %e,
                "eBPF accounting is off: the programs could not be loaded");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "eBPF accounting is off: the loader panicked");
            None
        }
    }
}

/// Runs an agent until `shutdown` resolves or the allocator tells it to shut down; kills its
/// tasks before returning. Errors only on start-up problems (bad address, unusable work dir,
/// corrupt agent id, failed discovery); an unreachable allocator is retried forever.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    allocator_uris(&config.allocator)?;
    create_work_dir(&config).await?;
    crate::nofile::raise_for_agent();
    let mut config = config;
    let (containerizer, cgroups) = containerizer_for(&mut config)?;
    if cgroups.is_none()
        && !config
            .attributes
            .iter()
            .any(|(name, _)| name == "isolation")
    {
        // Frameworks see that this agent's resources are offered without isolation.
        config
            .attributes
            .push(("isolation".to_owned(), "none".to_owned()));
    }
    let result = run_with_cgroups(config, containerizer.clone(), cgroups, shutdown).await;
    if result.is_err() {
        containerizer.cleanup();
    }
    result
}

/// Whether supervised tasks get user namespaces, as `mode` asks and the host allows: the agent
/// runs `true` as `nobody` in one, as a task would.
fn user_namespaces(
    mode: crate::containerizer::linux::UserNamespaces,
    supervised: bool,
) -> Result<bool, AgentError> {
    use crate::containerizer::linux::UserNamespaces;
    if mode == UserNamespaces::Off || !supervised {
        return Ok(false);
    }
    match (crate::containerizer::linux::try_user_namespace(), mode) {
        (Ok(()), _) => {
            tracing::info!(
                "tasks run in user namespaces of their own (only their uid and gid mapped)"
            );
            Ok(true)
        }
        (Err(reason), UserNamespaces::On) => Err(AgentError::UserNamespaces { reason }),
        (Err(reason), _) => {
            tracing::warn!(%reason, "this host does not allow user namespaces for tasks: they run without (--user-namespaces auto)");
            Ok(false)
        }
    }
}

/// The binary that supervises tasks; see [`AgentConfig::agent_exe`].
fn supervisor_exe(config: &AgentConfig) -> Option<PathBuf> {
    if let Some(exe) = &config.agent_exe {
        return Some(exe.clone());
    }
    let me = std::env::current_exe().ok()?;
    if me.file_name().is_some_and(|n| n == "strata-agent") {
        return Some(me);
    }
    let sibling = me.with_file_name("strata-agent");
    sibling.is_file().then_some(sibling)
}

/// The containerizer the configuration asks for, and its task cgroups (for usage records).
///
/// Also settles the `net_egress_mbps` the agent offers (in `config.resources`): the EDT limiter
/// must be on for it to be offered at all.
fn containerizer_for(
    config: &mut AgentConfig,
) -> Result<(Arc<dyn Containerizer>, Cgroups), AgentError> {
    let (containerizer, cgroups, egress, ports) = containerizer_and_egress(config)?;
    offer_egress(config, egress);
    if let Err(why) = ports {
        withhold_ports(config, &why);
    }
    Ok((containerizer, cgroups))
}

/// What the egress limiter leaves to offer: the device and rate, or why there is none.
pub(super) type EgressOffer = Result<(String, f64), String>;

/// Puts `net_egress_mbps` into `config.resources` when the limiter is on and a rate is known
/// (an operator's `--resources` entry stays as given); removes it otherwise, saying why once.
pub(super) fn offer_egress(config: &mut AgentConfig, egress: EgressOffer) {
    use strata_common::parse::{ResourceEntry, ResourceValue};
    let name = strata_proto::names::NET_EGRESS_MBPS;
    let given = config.resources.iter().any(|e| e.name == name);
    match egress {
        Ok((device, mbps)) => {
            if !given {
                config.resources.push(ResourceEntry {
                    name: name.to_owned(),
                    role: None,
                    value: ResourceValue::Scalar(mbps),
                });
            }
            tracing::info!(
                device,
                offered_mbps = mbps,
                "egress limits on: tasks given net_egress_mbps are paced to it (EDT with fq)"
            );
        }
        Err(why) => {
            if given {
                config.resources.retain(|e| e.name != name);
            }
            tracing::warn!("egress limits are unavailable, net_egress_mbps is not offered: {why}");
        }
    }
}

/// Stops offering `ports` (the agent cannot enforce them: `why`): the discovered range and any
/// `--resources` entry of it.
pub(super) fn withhold_ports(config: &mut AgentConfig, why: &str) {
    config.withhold_ports = true;
    config
        .resources
        .retain(|e| e.name != strata_proto::names::PORTS);
    tracing::warn!("port enforcement is unavailable, ports are not offered: {why}");
}

/// Whether the agent enforces ports, or why not.
type PortsEnforced = Result<(), String>;

/// The containerizer, its cgroups, what the egress limiter leaves to offer and whether ports
/// are enforced.
type Contained = (Arc<dyn Containerizer>, Cgroups, EgressOffer, PortsEnforced);

fn containerizer_and_egress(config: &AgentConfig) -> Result<Contained, AgentError> {
    let no_cgroups = || "tasks do not run in cgroups, by which the limiter finds them".to_owned();
    if config.isolation == Isolation::None {
        tracing::info!("tasks run as plain processes (--isolation none): no limits are enforced");
        return Ok((
            Arc::new(ProcessContainerizer::new(config.work_dir.clone())),
            None,
            Err(no_cgroups()),
            Ok(()),
        ));
    }
    let placement = config.root_placement();
    let roots = &config.roots;
    if let RootPlacement::Auto(name) = &placement {
        ask_systemd_for_a_scope(roots, name);
    }
    match crate::cgroup::detect(&roots.proc, &roots.cgroup, &placement) {
        Ok(backend) => {
            let mut linux = LinuxConfig::new(config.work_dir.clone());
            linux.default_pids_limit = config.default_pids_limit;
            linux.supervisor_exe = supervisor_exe(config);
            linux.default_user = config.task_user.clone();
            linux.allow_root = config.allow_root_tasks;
            linux.allowed_capabilities = config.allowed_capabilities.clone();
            linux.seccomp = config.seccomp;
            linux.user_namespaces =
                user_namespaces(config.user_namespaces, linux.supervisor_exe.is_some())?;
            match &linux.supervisor_exe {
                Some(exe) => {
                    tracing::info!(supervisor = %exe.display(), user = %linux.default_user,
                    "tasks run under per-task supervisors with their own namespaces")
                }
                None => tracing::warn!(
                    "no strata-agent binary to supervise tasks: tasks get cgroups but no namespaces; set AgentConfig::agent_exe"
                ),
            }
            let backend: Arc<dyn CgroupBackend> = Arc::from(backend);
            let mut containerizer = LinuxContainerizer::new(linux, backend.clone());
            match crate::ebpf::DeviceControl::load() {
                Ok(devices) => {
                    tracing::info!(
                        "device control on: tasks may use only the standard devices and the ones they name"
                    );
                    containerizer = containerizer.with_device_control(devices);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "device control is off: tasks can use every device node they can reach");
                }
            }
            if config.gpus != GpuSelection::None {
                match config
                    .gpu_nodes
                    .map_or_else(|| crate::gpu::nodes::GpuNodes::read(&roots.proc), Ok)
                {
                    Ok(nodes) => containerizer = containerizer.with_gpu_nodes(nodes),
                    Err(e) => tracing::debug!(error = %e, "no NVIDIA device nodes"),
                }
            }
            let (containerizer, ports) = with_port_control(config, containerizer, backend.as_ref());
            let (containerizer, egress) = with_egress_control(config, containerizer);
            let containerizer = with_bridge(config, containerizer);
            Ok((Arc::new(containerizer), Some(backend), egress, ports))
        }
        Err(e) if config.isolation == Isolation::Auto && !cgroups_expected(&e) => {
            tracing::warn!(error = %e, "tasks run as plain processes without limits (offered with the attribute isolation=none): this host gives the agent no cgroups; run it as root on a host with cgroup2 to isolate them");
            Ok((
                Arc::new(ProcessContainerizer::new(config.work_dir.clone())),
                None,
                Err(no_cgroups()),
                Ok(()),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Egress limits (see [`crate::ebpf::EgressControl`]): fq and the EDT program on the egress
/// device (`--net-egress-device`, else the default route's), and the rate to offer
/// (`--net-egress-mbps` or a `--resources` entry, else the device's link speed). No device, an
/// unknown rate, or a kernel without fq, clsact or tc BPF: the reason, and nothing is offered.
fn with_egress_control(
    config: &AgentConfig,
    containerizer: LinuxContainerizer,
) -> (LinuxContainerizer, EgressOffer) {
    let Some(device) = config
        .net_egress_device
        .clone()
        .or_else(|| crate::ebpf::default_route_device(&config.roots.proc))
    else {
        return (
            containerizer,
            Err(
                "no egress device: there is no default route; name one with --net-egress-device"
                    .to_owned(),
            ),
        );
    };
    let mbps = match egress_rate(config, &device) {
        Ok(mbps) => mbps,
        Err(why) => return (containerizer, Err(why)),
    };
    match crate::ebpf::EgressControl::load(&device, &config.roots.sys, config.net_egress_horizon) {
        Ok(control) => {
            tracing::info!(device, replaced_root_qdisc = ?control.replaced_qdisc(),
                horizon = ?control.horizon(), "egress limiter on: fq at the root of the device, EDT program on its egress");
            (
                containerizer.with_egress_control(control),
                Ok((device, mbps)),
            )
        }
        Err(e) => (containerizer, Err(e.to_string())),
    }
}

/// Bridge networking (see [`crate::bridge`]) with `--bridge-subnet`: the bridge made (or taken)
/// and up. A kernel without bridges or veths, or an agent without CAP_NET_ADMIN: one warning
/// saying so, and bridge tasks are refused with that reason.
fn with_bridge(config: &AgentConfig, containerizer: LinuxContainerizer) -> LinuxContainerizer {
    let Some((network, prefix)) = config.bridge_subnet else {
        tracing::info!("bridge networking is off (no --bridge-subnet): bridge tasks are refused");
        return containerizer;
    };
    let subnet = crate::bridge::Subnet { network, prefix };
    if containerizer.supervised() {
        match crate::bridge::BridgeControl::start(&config.bridge_name, subnet, &config.roots.proc) {
            Ok(control) => {
                if let Some(why) = control.nat_unavailable() {
                    tracing::warn!(bridge = %config.bridge_name, reason = why,
                        "bridge masquerading and port mappings are unavailable: bridge tasks reach the host and each other only, and bridge tasks with port mappings are refused");
                }
                tracing::info!(bridge = %config.bridge_name, %subnet, gateway = %subnet.gateway(),
                    "bridge networking on: bridge tasks get an address of the subnet on the bridge");
                containerizer.with_bridge_control(control)
            }
            Err(e) => {
                tracing::warn!(bridge = %config.bridge_name, %subnet, error = %e,
                    "bridge networking is unavailable: bridge tasks are refused");
                containerizer.without_bridge(format!(
                    "bridge networking is unavailable on this agent: {e}"
                ))
            }
        }
    } else {
        tracing::warn!(
            "bridge networking is unavailable: it needs the per-task supervisors (the strata-agent binary); bridge tasks are refused"
        );
        containerizer.without_bridge(
            "bridge networking is unavailable on this agent: it runs tasks without supervisors"
                .to_owned(),
        )
    }
}

/// The egress bandwidth the agent offers on `device`: the sum of the `net_egress_mbps` entries
/// of `--resources` (all roles), else `--net-egress-mbps`, else the device's link speed; the
/// reason when none is known.
pub(super) fn egress_rate(config: &AgentConfig, device: &str) -> Result<f64, String> {
    let given = config
        .resources
        .iter()
        .filter(|e| e.name == strata_proto::names::NET_EGRESS_MBPS)
        .map(|e| match e.value {
            strata_common::parse::ResourceValue::Scalar(v) => v,
            strata_common::parse::ResourceValue::Ranges(_) => 0.0,
        })
        .reduce(|a, b| a + b);
    given
        .or(config.net_egress_mbps)
        .or_else(|| crate::ebpf::link_speed_mbps(&config.roots.sys, device).map(|s| s as f64))
        .ok_or_else(|| {
            format!(
                "the link speed of {device} is unknown (no {}/class/net/{device}/speed); give the \
                 rate with --net-egress-mbps",
                config.roots.sys.display()
            )
        })
}

/// Port enforcement for host-network tasks (see [`crate::ebpf::PortControl`]): the bind
/// programs at the tasks' root on the unified hierarchy, with the agent's managed ports. A
/// kernel without cgroup bind hooks (or an agent without the rights to attach them): the reason,
/// and the agent does not offer ports ([`withhold_ports`]). Also warns when the kernel's
/// ephemeral range overlaps the managed ports (autobind does not pass the hooks).
fn with_port_control(
    config: &AgentConfig,
    containerizer: LinuxContainerizer,
    backend: &dyn CgroupBackend,
) -> (LinuxContainerizer, PortsEnforced) {
    let managed = managed_ports(config);
    if let Some((first, last)) = crate::ebpf::ephemeral_overlap(&config.roots.proc, &managed) {
        tracing::warn!(
            managed_ports = ?managed,
            ephemeral_first = first,
            ephemeral_last = last,
            "the kernel's ephemeral port range (net.ipv4.ip_local_port_range) overlaps the ports \
             this agent offers: a connect() or sendto() on an unbound socket may take an offered \
             port without a bind, so a task can fail to bind a port it was given; move either \
             range (sysctl net.ipv4.ip_local_port_range, or --ports)"
        );
    }
    let Some(root) = backend.unified_root() else {
        return (
            containerizer,
            Err(
                "the task cgroups have no cgroup v2 (unified) directory to attach the bind \
                 programs to"
                    .to_owned(),
            ),
        );
    };
    match crate::ebpf::PortControl::load(&root, &managed) {
        Ok(control) => {
            tracing::info!(cgroup = %root.display(), managed_ports = ?managed,
                "port enforcement on: host-network tasks may bind only the ports they were given");
            (containerizer.with_port_control(control), Ok(()))
        }
        Err(e) => (
            containerizer,
            Err(format!(
                "this kernel has no cgroup bind hooks, or the agent cannot attach them at {}: {e}",
                root.display()
            )),
        ),
    }
}

/// The ports this agent offers: those of its `--resources` entries named `ports` (all roles),
/// else `--ports`, else the default range.
pub(super) fn managed_ports(config: &AgentConfig) -> Vec<(u64, u64)> {
    use strata_common::parse::ResourceValue;
    let given: Vec<(u64, u64)> = config
        .resources
        .iter()
        .filter(|e| e.name == strata_proto::names::PORTS)
        .flat_map(|e| match &e.value {
            ResourceValue::Ranges(r) => r.clone(),
            ResourceValue::Scalar(_) => Vec::new(),
        })
        .collect();
    if given.is_empty() {
        vec![config.ports.unwrap_or(discovery::DEFAULT_PORTS)]
    } else {
        given
    }
}

/// Whether a failure to set up cgroups is a problem to fix rather than a host without them:
/// the agent runs as root and a cgroup hierarchy is there. With `--isolation auto` the agent
/// then refuses to start instead of offering resources it cannot isolate.
fn cgroups_expected(e: &CgroupError) -> bool {
    nix::unistd::geteuid().is_root() && !matches!(e, CgroupError::Unsupported { .. })
}

/// From a shell on a systemd host, with pure cgroup v2 and root, the agent asks systemd for a
/// delegated scope of its own before it places its cgroups (see [`crate::cgroup::systemd`]);
/// when it runs in a delegated cgroup already, or systemd cannot oblige, nothing changes and
/// the cgroups go into a top-level cgroup instead.
fn ask_systemd_for_a_scope(roots: &HostRoots, root_name: &str) {
    use crate::cgroup::systemd;
    if !systemd::running(&roots.run)
        || !nix::unistd::geteuid().is_root()
        || discovery::cgroup_mode(&roots.cgroup) != discovery::CgroupMode::V2
    {
        return;
    }
    let own = std::fs::read_to_string(roots.proc.join("self/cgroup")).unwrap_or_default();
    let Some(own) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return;
    };
    if systemd::delegated_ancestor(&roots.cgroup, own).is_some() {
        return;
    }
    match systemd::enter_scope(&roots.cgroup, &roots.proc, root_name) {
        Ok(outcome) => {
            tracing::info!(unit = %systemd::scope_unit(root_name), ?outcome, "the agent runs in a delegated systemd scope")
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot get a delegated scope from systemd: task cgroups go into a top-level cgroup instead")
        }
    }
}

/// The task cgroups of a containerizer that has them.
type Cgroups = Option<Arc<dyn CgroupBackend>>;

/// [`run`] with another containerizer (its tasks get no usage records: they are read from the
/// task cgroups of the containerizer [`run`] makes).
pub async fn run_with_containerizer(
    config: AgentConfig,
    containerizer: Arc<dyn Containerizer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    run_with_cgroups(config, containerizer, None, shutdown).await
}

async fn run_with_cgroups(
    config: AgentConfig,
    containerizer: Arc<dyn Containerizer>,
    cgroups: Cgroups,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let span = tracing::info_span!("agent", agent_id = tracing::field::Empty);
    let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
    Box::pin(start(config, containerizer, cgroups, shutdown, span.clone()).instrument(span)).await
}

async fn start(
    config: AgentConfig,
    containerizer: Arc<dyn Containerizer>,
    cgroups: Cgroups,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    span: Span,
) -> Result<(), AgentError> {
    // One address, or the replicas of a cluster: the link tries them in turn.
    let addresses = allocator_uris(&config.allocator)?;
    let endpoints = addresses
        .iter()
        .map(|a| Ok((allocator_endpoint(&config, a)?, a.clone())))
        .collect::<Result<Vec<_>, AgentError>>()?;
    let address = addresses[0].clone();

    create_work_dir(&config).await?;
    let agent_id = checkpoint::load_agent_id(&config.work_dir)?;
    if let Some(id) = &agent_id {
        span.record("agent_id", id.as_str());
    }
    let found = discover_host(&config)?;
    let gpus = discover_gpus(&config)?;
    let latest_usage = LatestUsage::default();
    if let Some(id) = &agent_id {
        latest_usage.set_agent_id(id);
    }
    let (running_tx, running_rx) = watch::channel(Arc::new(Vec::new()));
    let latest_gpus = crate::gpu::usage::LatestDevices::default();
    let (http_server, http_endpoint) = start_http(
        &config,
        &address,
        &found.hostname,
        (&latest_usage, &latest_gpus),
        running_rx.clone(),
    )
    .await?;
    let base_info = agent_info(&config, found, &gpus, http_endpoint);

    let authorization = allocator_authorization(&config)?;
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let connection = tokio::spawn(
        connection::maintain(
            endpoints,
            authorization,
            config.reconnect_backoff_max,
            connection::LeaderEpoch::load(&config.work_dir),
            conn_tx,
        )
        .instrument(span.clone()),
    );
    let (task_tx, task_rx) = mpsc::unbounded_channel();
    let (usage_tx, usage_rx) = mpsc::channel(2);
    let agent = Agent {
        updates: StatusUpdateManager::new(config.status_update_retry),
        config,
        agent_id,
        base_info,
        tasks: HashMap::new(),
        containerizer,
        task_events: task_tx,
        session: None,
        stopping: None,
        next_gc: Instant::now() + Duration::from_secs(60),
        span,
        running: running_tx,
        latest_usage,
        gpus: crate::gpu::Assignments::new(gpus.devices.clone()),
    };
    let containerizer = agent.containerizer.clone();
    let mut agent = agent;
    // Recovery first: it writes the running tasks' egress limits and ports again, which are not
    // enforced from the previous agent's death (or, for a netlink EDT filter, from this agent's
    // replacing it at start-up) until then; loading the accounting programs below takes
    // seconds on a slow machine and nothing in recovery needs them.
    agent.recover_tasks();
    agent.publish_running();
    // Held for the agent's life: dropping it detaches the programs.
    let ebpf = start_ebpf(&agent.config, cgroups.as_ref()).await;
    // Loading parsed the kernel's BTF: give the memory that took back.
    crate::sys::release_free_memory();
    let usage_loop = start_usage(
        &agent.config,
        (
            cgroups.as_ref(),
            containerizer.egress_control(),
            (&gpus, latest_gpus),
        ),
        running_rx,
        ebpf.clone(),
        agent.latest_usage.clone(),
        usage_tx,
        &agent.span,
    );
    agent.run_loop(shutdown, conn_rx, task_rx, usage_rx).await;
    connection.abort();
    if let Some(task) = usage_loop {
        task.abort();
    }
    if let Some(task) = http_server {
        task.abort();
    }
    containerizer.cleanup();
    Ok(())
}

/// The allocator's endpoint at `address` (see [`allocator_uris`]): connect timeout, no Nagle,
/// HTTP/2 keep-alives.
pub(super) fn allocator_endpoint(
    config: &AgentConfig,
    address: &str,
) -> Result<Endpoint, AgentError> {
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| AgentError::InvalidAllocatorAddress {
            address: config.allocator.clone(),
            reason: strata_common::error::chain(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let tls_error = |reason: String| AgentError::AllocatorTls {
        address: address.to_owned(),
        reason,
    };
    use strata_auth::client::ClientError;
    let tls = config.allocator_tls.tls_for(address).map_err(|e| match e {
        ClientError::NoCa { .. } => tls_error(
            "it is https:// but no CA certificate was given: pass the cluster's ca.pem with \
                 --tls-ca (STRATA_AGENT_TLS_CA)"
                .to_owned(),
        ),
        ClientError::HalfIdentity {
            given,
            path,
            missing,
        } => tls_error(format!(
            "the {given} {} was given without its {missing}: pass both --tls-cert and \
                 --tls-key",
            path.display()
        )),
        other => tls_error(other.to_string()),
    })?;
    let Some(tls) = tls else {
        return Ok(endpoint);
    };
    if tls.identity.is_none() {
        tracing::warn!(
            "no client certificate for the allocator at {address}: an allocator with \
             authentication on refuses agents without one (--tls-cert, --tls-key)"
        );
    }
    endpoint
        .tls_config(tls.tonic_config())
        .map_err(|e| tls_error(strata_common::error::chain(&e)))
}

/// Discovers what this host offers (with the configuration's overrides) and logs it.
fn discover_host(config: &AgentConfig) -> Result<Discovery, AgentError> {
    let overrides = Overrides {
        hostname: config.hostname.clone(),
        cpus: config.cpus,
        mem_mib: config.mem_mib,
        disk_mib: config.disk_mib,
        ports: config.ports,
    };
    let found = discovery::discover(&config.roots, &config.work_dir, &overrides)?;
    tracing::info!(
        hostname = %found.hostname,
        cpus = found.resources.cpus,
        mem_mib = found.resources.mem_mib,
        disk_mib = found.resources.disk_mib,
        ports = ?found.resources.ports,
        cgroup_mode = %found.kernel.cgroup_mode,
        btf = found.kernel.btf,
        kernel = %found.kernel.kernel_release,
        work_dir = %config.work_dir.display(),
        "discovered this host",
    );
    Ok(found)
}

/// The GPUs `--gpus` asks for, through the configured backend or NVML (loaded here).
fn discover_gpus(config: &AgentConfig) -> Result<Gpus, AgentError> {
    let injected = config.gpu_backend.clone();
    Ok(crate::gpu::discover(&config.gpus, || match injected {
        Some(backend) => Ok(backend),
        None => crate::gpu::nvml::NvmlBackend::load()
            .map(|b| Arc::new(b) as Arc<dyn crate::gpu::GpuBackend>),
    })?)
}

/// The eBPF programs, unless the configuration turns them off (see [`load_ebpf`]).
async fn start_ebpf(
    config: &AgentConfig,
    cgroups: Option<&Arc<dyn CgroupBackend>>,
) -> Option<SharedEbpf> {
    if config.ebpf {
        load_ebpf(&config.roots, cgroups.and_then(|c| c.unified_root()))
            .await
            .map(|e| Arc::new(std::sync::Mutex::new(e)))
    } else {
        tracing::info!("eBPF accounting is off (--no-ebpf)");
        None
    }
}

/// The bearer token the agent authenticates to the allocator with (`--token-file`), as a
/// metadata value; `None` without one (the client certificate is then the credential).
fn allocator_authorization(
    config: &AgentConfig,
) -> Result<Option<tonic::metadata::AsciiMetadataValue>, AgentError> {
    let invalid = |reason: String| AgentError::AllocatorTls {
        address: config.allocator.clone(),
        reason,
    };
    let Some(value) = config
        .allocator_tls
        .authorization()
        .map_err(|e| invalid(format!("the token of --token-file is unusable: {e}")))?
    else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| invalid("the token of --token-file is not printable ASCII".to_owned()))
}

/// With an HTTP listen address: binds it and serves /health, /usage and /metrics from a task
/// of its own. Returns that task and the endpoint to register (empty without one).
async fn start_http(
    config: &AgentConfig,
    address: &str,
    hostname: &str,
    (latest_usage, latest_gpus): (&LatestUsage, &crate::gpu::usage::LatestDevices),
    running: watch::Receiver<Arc<Vec<TaskRef>>>,
) -> Result<(Option<JoinHandle<()>>, String), AgentError> {
    let Some(addr) = config.http_listen else {
        return Ok((None, String::new()));
    };
    let (listener, bound) = crate::http::bind(addr).await?;
    let auth = Arc::new(crate::http_auth::HttpAuth::load(
        &config.http_security,
        bound,
    )?);
    let allocator = address
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let mut advertised = crate::http::advertised_endpoint(bound, allocator, hostname).await;
    if auth.tls_enabled() {
        // Clients (strata profile) then know to speak TLS to it.
        advertised = format!("https://{advertised}");
    }
    tracing::info!(listen = %bound, endpoint = %advertised, "serving /health, /usage, /metrics, /gpus, /profile and /files");
    let router = crate::http::router(crate::http::HttpState {
        usage: latest_usage.clone(),
        gpus: latest_gpus.clone(),
        proc_root: config.roots.proc.clone(),
        profiles: crate::http::ProfileSlots::new(config.max_concurrent_profiles),
        files: crate::files::FilesState {
            work_dir: config.work_dir.clone(),
            running,
            follows: crate::files::FollowSlots::new(config.max_concurrent_follows),
        },
    });
    Ok((
        Some(tokio::spawn(crate::http::serve_with(
            listener, router, auth,
        ))),
        advertised,
    ))
}

/// The resources the agent registers: what was found (or given by --cpus, ...), with each name
/// `--resources` lists replaced by its entries (static reservations for those with a role).
fn registered_resources(
    found: &discovery::HostResources,
    gpus: usize,
    given: &[strata_common::parse::ResourceEntry],
) -> Vec<Resource> {
    use strata_common::parse::ResourceValue;
    let mut resources = found.to_proto();
    if gpus > 0 {
        resources.push(Resource::scalar(strata_proto::names::GPUS, gpus as f64));
    }
    resources.retain(|r| !given.iter().any(|e| e.name == r.name));
    resources.extend(given.iter().map(|e| {
        let mut r = match &e.value {
            ResourceValue::Scalar(v) => Resource::scalar(&e.name, *v),
            ResourceValue::Ranges(ranges) => Resource::ranges(&e.name, ranges.iter().copied()),
        };
        r.role = e.role.clone().unwrap_or_default();
        r
    }));
    resources
}

/// What the agent registers with, without its id.
fn agent_info(
    config: &AgentConfig,
    found: Discovery,
    gpus: &Gpus,
    http_endpoint: String,
) -> AgentInfo {
    let mut attributes: Vec<Attribute> = config
        .attributes
        .iter()
        .map(|(name, value)| Attribute {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    // An operator's own `gpu_model` attribute stays as given.
    if let Some(model) = gpus.model_attribute()
        && !attributes.iter().any(|a| a.name == GPU_MODEL_ATTRIBUTE)
    {
        attributes.push(Attribute {
            name: GPU_MODEL_ATTRIBUTE.to_owned(),
            value: model,
        });
    }
    AgentInfo {
        id: String::new(),
        hostname: found.hostname.clone(),
        resources: registered_resources(&found.resources, gpus.devices.len(), &config.resources)
            .into_iter()
            .filter(|r| !(config.withhold_ports && r.name == strata_proto::names::PORTS))
            .collect(),
        attributes,
        kernel: Some(found.kernel),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        endpoint: http_endpoint,
    }
}

/// The GPUs whose use the usage collector records, and where their own figures go.
type GpuSources<'a> = (&'a Gpus, crate::gpu::usage::LatestDevices);

/// Starts the usage collector on a task of its own, when tasks run in cgroups (the records are
/// read from them).
fn start_usage(
    config: &AgentConfig,
    (cgroups, egress, (gpus, latest_gpus)): (
        Option<&Arc<dyn CgroupBackend>>,
        Option<SharedEgress>,
        GpuSources<'_>,
    ),
    tasks: watch::Receiver<Arc<Vec<TaskRef>>>,
    ebpf: Option<SharedEbpf>,
    latest: LatestUsage,
    to_core: mpsc::Sender<Arc<UsageReport>>,
    span: &Span,
) -> Option<JoinHandle<()>> {
    let layout = cgroups.and_then(|c| Layout::of_backend(c.as_ref(), &config.roots.cgroup));
    match layout {
        Some(layout) => Some(tokio::spawn({
            let gpu_poller = match (&gpus.backend, layout.tasks_root(&config.roots.cgroup)) {
                (Some(backend), Some(tasks_root)) if !gpus.devices.is_empty() => {
                    Some(crate::gpu::usage::GpuPoller::new(
                        backend.clone(),
                        gpus.devices.clone(),
                        config.roots.proc.clone(),
                        tasks_root,
                        latest_gpus,
                    ))
                }
                _ => None,
            };
            let mut collector = Collector::new(layout);
            crate::usage::run(UsageLoop {
                collector: {
                    collector.egress = egress;
                    collector.gpus = gpu_poller;
                    collector
                },
                interval: config.usage_interval,
                tasks,
                ebpf,
                latest,
                to_core,
            })
            .instrument(span.clone())
        })),
        None => {
            tracing::info!(
                "no usage records: they are read from the task cgroups, and tasks run without cgroups"
            );
            None
        }
    }
}

/// Creates the work dir if it is missing.
/// Creates the work dir if it is missing, with its `sandboxes` and `runs` private (see
/// `containerizer::SANDBOXES_MODE`).
async fn create_work_dir(config: &AgentConfig) -> Result<(), AgentError> {
    let work_dir = &config.work_dir;
    let err = |source| AgentError::WorkDir {
        path: work_dir.clone(),
        source,
    };
    tokio::fs::create_dir_all(work_dir).await.map_err(err)?;
    crate::containerizer::secure_work_dir(work_dir).map_err(err)
}

/// `--allocator` as a list: one address, or several separated by commas (the replicas of
/// one cluster).
pub(super) fn allocator_uris(address: &str) -> Result<Vec<String>, AgentError> {
    strata_common::parse::endpoints(address).map_err(|reason| AgentError::InvalidAllocatorAddress {
        address: address.to_owned(),
        reason,
    })
}
