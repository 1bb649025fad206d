//! The agent itself: [`AgentConfig`] and [`run`], which discovers the host, keeps a stream to
//! the allocator (registering, re-registering and heartbeating over it), launches and kills
//! tasks through a [`Containerizer`], and delivers their status updates reliably.
//!
//! One task (the core loop) owns all agent state; the connection, each task's supervisor and
//! the timers talk to it through channels, so no state is shared or locked.
//!
//! Invariants:
//! - The agent id the allocator assigns is persisted (atomically) before the agent counts as
//!   registered, and every later registration, after a reconnect or a restart, uses it.
//! - A task is known by (framework id, task id); a launch of a task the agent already has never
//!   starts a second process.
//! - Each task's updates follow STARTING, RUNNING (once its process is spawned), then exactly one
//!   terminal update (FINISHED, FAILED or KILLED); they go through the status-update manager,
//!   so they are delivered in order and resent until acknowledged, also across reconnects.
//! - A task is forgotten only once its terminal update has been acknowledged; until then it is
//!   listed (with its latest status) in every registration.
//! - Every launched task is checkpointed in its run directory (`task.pb`, then `updates.pb`
//!   with its latest status and unacknowledged updates, written before each update is sent), so
//!   a restarted agent re-attaches to the tasks still running under their supervisors, reports
//!   the exits that happened while it was down exactly once, and resends what was not
//!   acknowledged. A torn or corrupt checkpoint is logged as a clear error and the task is
//!   recovered from what else is known; it is never dropped while it runs.
//! - When the agent stops (its shutdown future resolves) supervised tasks keep running, unless
//!   [`AgentConfig::kill_tasks_on_shutdown`] is set or the containerizer's tasks cannot outlive
//!   the agent; then, as on the allocator's Shutdown, it kills every task (SIGTERM, grace,
//!   SIGKILL) and, while connected, waits a short while for their terminal updates to be
//!   acknowledged.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_proto::agent_message::{self, Heartbeat, Register, StatusUpdate};
use strata_proto::allocator_message::{self, AcknowledgeUpdate, KillTask, LaunchTask, Registered};
use strata_proto::{
    AgentInfo, AgentMessage, AgentTask, Attribute, TaskInfo, TaskReason, TaskSource, TaskState,
    TaskStatus,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use tracing::{Instrument, Span};

use crate::cgroup::{CgroupBackend, CgroupError, MemoryOom, Placement, RootPlacement};
use crate::checkpoint::{self, CheckpointError};
use crate::connection::{self, ConnEvent};
use crate::containerizer::linux::{LinuxConfig, LinuxContainerizer};
use crate::containerizer::process::ProcessContainerizer;
use crate::containerizer::{Containerizer, ExitStatus, LaunchSpec};
use crate::discovery::{self, DiscoveryError, HostRoots, Overrides};
use crate::status::{AckOutcome, StatusUpdateManager, TaskKey};
use crate::usage::{Collector, LatestUsage, Layout, SharedEbpf, TaskRef, UsageLoop, UsageReport};

/// Heartbeat interval used when the allocator does not give a usable one.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long a stopping agent waits for its last updates to be acknowledged.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// How long to wait for a TCP connection to the allocator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The allocator to dial, e.g. `http://127.0.0.1:5050` (a bare `host:port` is accepted).
    pub allocator: String,
    /// Where the agent keeps its id, sandboxes and run files; created if missing.
    pub work_dir: PathBuf,
    /// The host name to register with; default: the host's name.
    pub hostname: Option<String>,
    /// Cpus to offer instead of the discovered ones.
    pub cpus: Option<f64>,
    /// Memory (MiB) to offer instead of the discovered amount.
    pub mem_mib: Option<f64>,
    /// Disk (MiB) to offer instead of the work dir's free space.
    pub disk_mib: Option<f64>,
    /// Ports to offer; default 31000-32000.
    pub ports: Option<(u64, u64)>,
    /// Attributes (name, value) to register with.
    pub attributes: Vec<(String, String)>,
    /// Grace between SIGTERM and SIGKILL for tasks that do not set their own; default 3 s.
    pub default_kill_grace_period: Duration,
    /// The first resend of an unacknowledged status update; doubles up to 10 min; default 10 s.
    pub status_update_retry: Duration,
    /// The longest wait between attempts to reach the allocator; default 5 s.
    pub reconnect_backoff_max: Duration,
    /// Load and attach the eBPF accounting programs at the agent's own unified cgroup; default
    /// true. A program that cannot load is a warning, never fatal.
    pub ebpf: bool,
    /// How tasks are isolated; default [`Isolation::Auto`].
    pub isolation: Isolation,
    /// Where the agent's cgroup subtree is, relative to each hierarchy's mount, e.g.
    /// `/strata`; default: placed by [`AgentConfig::cgroup_placement`].
    pub cgroup_root: Option<PathBuf>,
    /// How the cgroup subtree is placed when [`AgentConfig::cgroup_root`] is unset; default
    /// [`Placement::Auto`]: the delegated cgroup the agent runs in (a systemd unit or scope;
    /// from a shell on a systemd host the agent asks for a scope), else a top-level cgroup.
    /// Tests and shared development machines use [`Placement::BelowOwn`].
    pub cgroup_placement: Placement,
    /// Where the kernel's files are (`/proc`, `/sys/fs/cgroup`, `/sys`, `/run`).
    pub roots: HostRoots,
    /// pids.max of tasks that set no limit; default 4096.
    pub default_pids_limit: u64,
    /// How long the sandbox of an ended task is kept for debugging; default 1 hour.
    pub sandbox_gc_delay: Duration,
    /// The `strata-agent` binary that supervises tasks (`supervise`, `task-init` modes);
    /// default: this process's binary when it is `strata-agent`, else a `strata-agent` next to
    /// it. Without one, tasks get cgroups but no namespaces.
    pub agent_exe: Option<PathBuf>,
    /// The user tasks run as when their command names none; default `nobody`.
    pub task_user: String,
    /// Whether tasks may run as root; default false.
    pub allow_root_tasks: bool,
    /// Kill every task when the agent stops (its shutdown future resolves); default false:
    /// supervised tasks keep running and the next agent re-attaches to them. Tasks that cannot
    /// outlive the agent (no supervisor) are always killed. An allocator's Shutdown always
    /// kills.
    pub kill_tasks_on_shutdown: bool,
    /// How often each running task's usage is measured and reported (and served at /usage and
    /// /metrics); default 1 s.
    pub usage_interval: Duration,
    /// Where the agent serves its own HTTP endpoints (/health, /usage, /metrics); default
    /// `None`: none (the `strata-agent` binary's default is 0.0.0.0:5051). A port of 0 picks a
    /// free one; the address bound is registered as `AgentInfo.endpoint`.
    pub http_listen: Option<std::net::SocketAddr>,
}

/// How the agent isolates tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// cgroups when the host allows it (root, cgroup2 mounted), else plain processes with a
    /// warning.
    Auto,
    /// cgroups, or the agent does not start.
    Cgroups,
    /// Plain processes in their own process group (no limits).
    None,
}

impl AgentConfig {
    /// A configuration for the allocator at `allocator` with its work dir at `work_dir`, and
    /// defaults for everything else.
    pub fn new(allocator: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            allocator: allocator.into(),
            work_dir: work_dir.into(),
            hostname: None,
            cpus: None,
            mem_mib: None,
            disk_mib: None,
            ports: None,
            attributes: Vec::new(),
            default_kill_grace_period: Duration::from_secs(3),
            status_update_retry: Duration::from_secs(10),
            reconnect_backoff_max: Duration::from_secs(5),
            ebpf: true,
            isolation: Isolation::Auto,
            cgroup_root: None,
            cgroup_placement: Placement::Auto,
            roots: HostRoots::default(),
            default_pids_limit: 4096,
            sandbox_gc_delay: Duration::from_secs(3600),
            agent_exe: None,
            task_user: "nobody".to_owned(),
            allow_root_tasks: false,
            kill_tasks_on_shutdown: false,
            usage_interval: crate::usage::DEFAULT_INTERVAL,
            http_listen: None,
        }
    }
}

impl AgentConfig {
    /// Where the agent's cgroup subtree is: the configured root, or `strata-<hash of the work
    /// dir>` placed by [`AgentConfig::cgroup_placement`].
    pub fn root_placement(&self) -> RootPlacement {
        let name = default_cgroup_name(&self.work_dir);
        match (&self.cgroup_root, self.cgroup_placement) {
            (Some(path), _) => RootPlacement::Path(path.clone()),
            (None, Placement::Auto) => RootPlacement::Auto(name),
            (None, Placement::BelowOwn) => RootPlacement::BelowOwn(name),
            (None, Placement::TopLevel) => RootPlacement::TopLevel(name),
        }
    }
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The allocator address cannot be used.
    #[error(
        "invalid allocator address {address:?}: {reason}; use a URL like http://127.0.0.1:5050 or host:port"
    )]
    InvalidAllocatorAddress {
        /// The address as configured.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The work dir could not be created.
    #[error(
        "cannot create the work dir {path}: {source}; pass --work-dir with a directory the agent can write"
    )]
    WorkDir {
        /// The work dir.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The persisted agent id could not be loaded.
    #[error(transparent)]
    AgentId(#[from] CheckpointError),
    /// The host's resources could not be discovered.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Task isolation was required but cannot be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The HTTP listen address cannot be bound.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

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
    allocator_uri(&config.allocator)?;
    tokio::fs::create_dir_all(&config.work_dir)
        .await
        .map_err(|source| AgentError::WorkDir {
            path: config.work_dir.clone(),
            source,
        })?;
    crate::nofile::raise_for_agent();
    let (containerizer, cgroups) = containerizer_for(&config)?;
    let mut config = config;
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

/// `strata-<16 hex digits>`: a cgroup name for the agent with this work dir, stable across its
/// restarts and distinct for agents sharing a cgroup.
fn default_cgroup_name(work_dir: &std::path::Path) -> String {
    let canonical = work_dir
        .canonicalize()
        .unwrap_or_else(|_| work_dir.to_path_buf());
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("strata-{hash:016x}")
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
fn containerizer_for(
    config: &AgentConfig,
) -> Result<(Arc<dyn Containerizer>, Cgroups), AgentError> {
    if config.isolation == Isolation::None {
        tracing::info!("tasks run as plain processes (--isolation none): no limits are enforced");
        return Ok((
            Arc::new(ProcessContainerizer::new(config.work_dir.clone())),
            None,
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
            Ok((Arc::new(containerizer), Some(backend)))
        }
        Err(e) if config.isolation == Isolation::Auto && !cgroups_expected(&e) => {
            tracing::warn!(error = %e, "tasks run as plain processes without limits (offered with the attribute isolation=none): this host gives the agent no cgroups; run it as root on a host with cgroup2 to isolate them");
            Ok((
                Arc::new(ProcessContainerizer::new(config.work_dir.clone())),
                None,
            ))
        }
        Err(e) => Err(e.into()),
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
    let address = allocator_uri(&config.allocator)?;
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|e| AgentError::InvalidAllocatorAddress {
            address: config.allocator.clone(),
            reason: connection::error_chain(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);

    tokio::fs::create_dir_all(&config.work_dir)
        .await
        .map_err(|source| AgentError::WorkDir {
            path: config.work_dir.clone(),
            source,
        })?;
    let agent_id = checkpoint::load_agent_id(&config.work_dir)?;
    if let Some(id) = &agent_id {
        span.record("agent_id", id.as_str());
    }
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
    // Held for the agent's life: dropping it detaches the programs.
    let ebpf: Option<SharedEbpf> = if config.ebpf {
        load_ebpf(
            &config.roots,
            cgroups.as_ref().and_then(|c| c.unified_root()),
        )
        .await
        .map(|e| Arc::new(std::sync::Mutex::new(e)))
    } else {
        tracing::info!("eBPF accounting is off (--no-ebpf)");
        None
    };
    // Loading parsed the kernel's BTF: give the memory that took back.
    crate::sys::release_free_memory();
    let latest_usage = LatestUsage::default();
    if let Some(id) = &agent_id {
        latest_usage.set_agent_id(id);
    }
    let (http_server, http_endpoint) = match config.http_listen {
        Some(addr) => {
            let (listener, bound) = crate::http::bind(addr).await?;
            let allocator = address.trim_start_matches("http://");
            let advertised =
                crate::http::advertised_endpoint(bound, allocator, &found.hostname).await;
            tracing::info!(listen = %bound, endpoint = %advertised, "serving /health, /usage and /metrics");
            let router = crate::http::router(crate::http::HttpState {
                usage: latest_usage.clone(),
                proc_root: config.roots.proc.clone(),
            });
            (
                Some(tokio::spawn(crate::http::serve(listener, router))),
                advertised,
            )
        }
        None => (None, String::new()),
    };
    let base_info = AgentInfo {
        id: String::new(),
        hostname: found.hostname,
        resources: found.resources.to_proto(),
        attributes: config
            .attributes
            .iter()
            .map(|(name, value)| Attribute {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        kernel: Some(found.kernel),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        endpoint: http_endpoint,
    };

    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let connection = tokio::spawn(
        connection::maintain(
            endpoint,
            address.clone(),
            config.reconnect_backoff_max,
            conn_tx,
        )
        .instrument(span.clone()),
    );
    let (task_tx, task_rx) = mpsc::unbounded_channel();
    let (running_tx, running_rx) = watch::channel(Arc::new(Vec::new()));
    let (usage_tx, usage_rx) = mpsc::channel(2);
    let layout = cgroups
        .as_ref()
        .and_then(|c| Layout::of_backend(c.as_ref(), &config.roots.cgroup));
    let usage_loop = match layout {
        Some(layout) => Some(tokio::spawn(
            crate::usage::run(UsageLoop {
                collector: Collector::new(layout),
                interval: config.usage_interval,
                tasks: running_rx,
                ebpf: ebpf.clone(),
                latest: latest_usage.clone(),
                to_core: usage_tx,
            })
            .instrument(span.clone()),
        )),
        None => {
            tracing::info!(
                "no usage records: they are read from the task cgroups, and tasks run without cgroups"
            );
            None
        }
    };
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
    };
    let containerizer = agent.containerizer.clone();
    let mut agent = agent;
    agent.recover_tasks();
    agent.publish_running();
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

/// `http://host:port` from a URL or a bare `host:port`.
fn allocator_uri(address: &str) -> Result<String, AgentError> {
    let invalid = |reason: &str| AgentError::InvalidAllocatorAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let uri = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let parsed: tonic::codegen::http::Uri = uri.parse().map_err(|e| invalid(&format!("{e}")))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some(scheme) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported (only http:// is, TLS is not built in yet)"
            )));
        }
        None => return Err(invalid("it has no scheme")),
    }
    let authority = parsed
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| invalid("it has no host"))?;
    Ok(format!("http://{authority}"))
}

/// A request to stop a task.
#[derive(Debug)]
struct KillRequest {
    grace: Duration,
    /// Why, for the KILLED update's message.
    why: String,
}

/// What a task's supervisor reports to the core.
#[derive(Debug)]
enum TaskEvent {
    /// The command is running.
    Started { key: TaskKey, pid: Option<u32> },
    /// The command could not be started.
    LaunchFailed { key: TaskKey, error: String },
    /// The task was killed before its command was started.
    KilledBeforeLaunch { key: TaskKey, why: String },
    /// The command ended; `killed` says why if it was killed on request.
    Ended {
        key: TaskKey,
        result: Result<ExitStatus, String>,
        killed: Option<String>,
        oom: Option<MemoryOom>,
    },
}

#[derive(Debug)]
struct Task {
    info: TaskInfo,
    latest: TaskStatus,
    /// How to reach the task's supervisor; `None` once the task is terminal.
    kill: Option<mpsc::UnboundedSender<KillRequest>>,
    span: Span,
}

impl Task {
    fn is_terminal(&self) -> bool {
        self.latest.state().is_terminal()
    }
}

#[derive(Debug)]
struct Session {
    id: u64,
    outbound: mpsc::Sender<AgentMessage>,
    registered: bool,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    /// Whether the allocator holds every record of the latest usage report sent on this
    /// stream, so the next report may be a delta.
    usage_synced: bool,
}

#[derive(Debug)]
struct Stopping {
    /// Set once every task is terminal: when to stop waiting for acknowledgements.
    drain_deadline: Option<Instant>,
    /// Whether the tasks are being killed (else they are left running).
    killing: bool,
}

struct Agent {
    config: AgentConfig,
    agent_id: Option<String>,
    /// The registration info, without the id.
    base_info: AgentInfo,
    tasks: HashMap<TaskKey, Task>,
    updates: StatusUpdateManager,
    containerizer: Arc<dyn Containerizer>,
    task_events: mpsc::UnboundedSender<TaskEvent>,
    session: Option<Session>,
    stopping: Option<Stopping>,
    /// When to garbage-collect old sandboxes next.
    next_gc: Instant,
    span: Span,
    /// The running tasks, for the usage collector.
    running: watch::Sender<Arc<Vec<TaskRef>>>,
    /// The latest usage records (the agent id they carry is set here).
    latest_usage: LatestUsage,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Agent {
    async fn run_loop(
        mut self,
        mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
        mut conn_rx: mpsc::UnboundedReceiver<ConnEvent>,
        mut task_rx: mpsc::UnboundedReceiver<TaskEvent>,
        mut usage_rx: mpsc::Receiver<Arc<UsageReport>>,
    ) {
        loop {
            if self.finished_stopping() {
                break;
            }
            let registered = self.registered();
            let retry_at = if registered {
                self.updates.next_deadline()
            } else {
                None
            };
            let heartbeat_at = self
                .session
                .as_ref()
                .filter(|s| s.registered)
                .map(|s| s.next_heartbeat);
            let drain_at = self.stopping.as_ref().and_then(|s| s.drain_deadline);
            tokio::select! {
                () = &mut shutdown, if self.stopping.is_none() => {
                    let kill = self.config.kill_tasks_on_shutdown
                        || !self.containerizer.tasks_survive_the_agent();
                    self.begin_stopping("killed because the agent is shutting down", kill);
                }
                Some(event) = conn_rx.recv() => self.on_connection(event),
                Some(event) = task_rx.recv() => self.on_task_event(event),
                Some(report) = usage_rx.recv() => self.send_usage(&report),
                () = sleep_until(heartbeat_at) => self.heartbeat(),
                () = sleep_until(retry_at) => self.resend_due(),
                () = sleep_until(Some(self.next_gc)) => self.gc_sandboxes(),
                () = sleep_until(drain_at) => {
                    tracing::warn!(
                        pending_tasks = self.tasks.len(),
                        "stopping without acknowledgements for every terminal update"
                    );
                    break;
                }
            }
        }
        tracing::info!("agent stopped");
    }

    /// Removes the sandboxes of tasks that ended more than `sandbox_gc_delay` ago.
    fn gc_sandboxes(&mut self) {
        let delay = self.config.sandbox_gc_delay;
        self.next_gc =
            Instant::now() + (delay / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let live: std::collections::HashSet<TaskKey> = self.tasks.keys().cloned().collect();
        let work_dir = self.config.work_dir.clone();
        tokio::task::spawn_blocking(move || {
            let removed = crate::containerizer::gc_sandboxes(&work_dir, delay, &|fw, task| {
                live.contains(&TaskKey::new(fw.to_owned(), task.to_owned()))
            });
            if removed > 0 {
                tracing::info!(removed, "removed old sandboxes");
            }
        });
    }

    fn registered(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.registered)
    }

    /// Whether a stopping agent may exit now: every task is terminal and its updates are
    /// acknowledged, or cannot be sent (no stream, not even one being registered). Starts the
    /// drain deadline.
    fn finished_stopping(&mut self) -> bool {
        let connected = self.session.is_some();
        let all_terminal = self.tasks.values().all(Task::is_terminal);
        let Some(stopping) = &mut self.stopping else {
            return false;
        };
        if !stopping.killing {
            // Updates are checkpointed: the next agent resends what is unacknowledged.
            return true;
        }
        if !all_terminal {
            return false;
        }
        if self.updates.is_empty() || !connected {
            return true;
        }
        stopping
            .drain_deadline
            .get_or_insert_with(|| Instant::now() + SHUTDOWN_DRAIN);
        false
    }

    // ----- the connection -----

    fn on_connection(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Connected { session, outbound } => {
                self.session = Some(Session {
                    id: session,
                    outbound,
                    registered: false,
                    heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
                    next_heartbeat: Instant::now() + DEFAULT_HEARTBEAT_INTERVAL,
                    usage_synced: false,
                });
                let register = self.register_message();
                tracing::info!(
                    tasks = self.tasks.len(),
                    "connected to the allocator; registering"
                );
                self.send(register);
            }
            ConnEvent::Message { session, message } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    self.on_message(*message);
                }
            }
            ConnEvent::Disconnected { session, reason } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    tracing::debug!(%reason, "session ended");
                    self.session = None;
                }
            }
        }
    }

    fn register_message(&self) -> agent_message::Message {
        let agent_id = self.agent_id.clone().unwrap_or_default();
        let tasks = self
            .tasks
            .iter()
            .map(|(key, task)| AgentTask {
                framework_id: key.framework_id.clone(),
                task: Some(task.info.clone()),
                latest_status: Some(TaskStatus {
                    agent_id: agent_id.clone(),
                    ..task.latest.clone()
                }),
            })
            .collect();
        agent_message::Message::Register(Register {
            info: Some(AgentInfo {
                id: agent_id,
                ..self.base_info.clone()
            }),
            tasks,
        })
    }

    /// Queues a message on the current stream; false if there is none or it is full.
    fn send(&mut self, message: agent_message::Message) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        match session.outbound.try_send(AgentMessage {
            message: Some(message),
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("the stream to the allocator is backed up; dropping a message");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn send_update(&mut self, mut status: TaskStatus) {
        if !self.registered() {
            return;
        }
        status.agent_id = self.agent_id.clone().unwrap_or_default();
        self.send(agent_message::Message::StatusUpdate(StatusUpdate {
            status: Some(status),
        }));
    }

    fn heartbeat(&mut self) {
        if let Some(session) = &mut self.session {
            session.next_heartbeat = Instant::now() + session.heartbeat_interval;
        }
        self.send(agent_message::Message::Heartbeat(Heartbeat {}));
    }

    fn resend_due(&mut self) {
        for status in self.updates.due(Instant::now()) {
            tracing::debug!(
                framework_id = %status.framework_id,
                task_id = %status.task_id,
                state = status.state().label(),
                "resending an unacknowledged status update"
            );
            self.send_update(status);
        }
    }

    fn on_message(&mut self, message: strata_proto::AllocatorMessage) {
        let Some(message) = message.message else {
            tracing::warn!("ignoring an empty message from the allocator");
            return;
        };
        match message {
            allocator_message::Message::Registered(registered) => self.on_registered(registered),
            allocator_message::Message::LaunchTask(launch) => self.on_launch(launch),
            allocator_message::Message::KillTask(kill) => self.on_kill(kill),
            allocator_message::Message::Acknowledge(ack) => self.on_ack(ack),
            allocator_message::Message::Shutdown(shutdown) => {
                tracing::info!(reason = %shutdown.reason, "the allocator asked this agent to shut down");
                self.begin_stopping(
                    &format!(
                        "killed because the allocator shut the agent down: {}",
                        shutdown.reason
                    ),
                    true,
                );
            }
        }
    }

    fn on_registered(&mut self, registered: Registered) {
        let id = registered.agent_id;
        if id.is_empty() {
            tracing::warn!(
                "the allocator answered the registration without an agent id; ignoring it"
            );
            return;
        }
        if self.agent_id.as_deref() != Some(id.as_str()) {
            if let Some(old) = &self.agent_id {
                tracing::warn!(old_agent_id = %old, new_agent_id = %id,
                    "the allocator assigned this agent a new id");
            }
            if let Err(e) = checkpoint::save_agent_id(&self.config.work_dir, &id) {
                tracing::error!(error = %e, "cannot persist the agent id; if the agent restarts it will register as a new agent");
            }
            self.span.record("agent_id", id.as_str());
            self.latest_usage.set_agent_id(&id);
            self.agent_id = Some(id);
        }
        let interval = Duration::try_from_secs_f64(registered.heartbeat_interval_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let now = Instant::now();
        if let Some(session) = &mut self.session {
            session.registered = true;
            session.heartbeat_interval = interval;
            session.next_heartbeat = now + interval;
        }
        tracing::info!(
            heartbeat_interval_ms = interval.as_millis() as u64,
            "registered with the allocator"
        );
        for status in self.updates.resend_all(now) {
            self.send_update(status);
        }
    }

    // ----- tasks -----

    fn on_launch(&mut self, launch: LaunchTask) {
        let Some(task) = launch.task else {
            tracing::warn!(framework_id = %launch.framework_id, "ignoring a launch without a task");
            return;
        };
        let key = TaskKey::new(launch.framework_id.clone(), task.task_id.clone());
        let span = tracing::info_span!(parent: &self.span, "task",
            framework_id = %key.framework_id, task_id = %key.task_id);
        let _entered = span.enter();
        if self.tasks.contains_key(&key) {
            tracing::warn!("ignoring a launch of a task this agent already has");
            return;
        }
        tracing::info!("launching task");
        let stopping = self.stopping.is_some();
        let (kill_tx, kill_rx) = mpsc::unbounded_channel();
        self.tasks.insert(
            key.clone(),
            Task {
                info: task.clone(),
                latest: TaskStatus {
                    task_id: key.task_id.clone(),
                    framework_id: key.framework_id.clone(),
                    state: TaskState::Staging as i32,
                    ..TaskStatus::default()
                },
                kill: (!stopping).then_some(kill_tx),
                span: span.clone(),
            },
        );
        if stopping {
            self.update(
                &key,
                TaskState::Dropped,
                TaskReason::AgentDraining,
                "the agent is shutting down".to_owned(),
                None,
            );
            return;
        }
        if crate::cgroup::check_name(&key.framework_id).is_ok()
            && crate::cgroup::check_name(&key.task_id).is_ok()
        {
            let run = crate::containerizer::run_dir(
                &self.config.work_dir,
                &key.framework_id,
                &key.task_id,
            );
            let saved = std::fs::create_dir_all(&run)
                .map_err(|e| e.to_string())
                .and_then(|()| checkpoint::save_task(&run, &task).map_err(|e| e.to_string()));
            if let Err(e) = saved {
                tracing::error!(error = %e, "cannot checkpoint the task; it will not be recovered after an agent restart");
            }
        }
        self.update(
            &key,
            TaskState::Starting,
            TaskReason::Unspecified,
            String::new(),
            None,
        );
        let spec = LaunchSpec {
            framework_id: key.framework_id.clone(),
            agent_id: self.agent_id.clone().unwrap_or_default(),
            task,
        };
        tokio::spawn(
            supervise(
                self.containerizer.clone(),
                spec,
                key,
                kill_rx,
                self.task_events.clone(),
            )
            .instrument(span.clone()),
        );
    }

    fn on_kill(&mut self, kill: KillTask) {
        let key = TaskKey::new(kill.framework_id, kill.task_id);
        let Some(task) = self.tasks.get(&key) else {
            tracing::warn!(framework_id = %key.framework_id, task_id = %key.task_id,
                "ignoring a kill of a task this agent does not have");
            return;
        };
        let _entered = task.span.enter();
        let Some(kill_tx) = &task.kill else {
            tracing::info!("ignoring a kill of a task that has already ended");
            return;
        };
        let grace = self.grace_period(&task.info, kill.grace_period_seconds);
        tracing::info!(grace_ms = grace.as_millis() as u64, "killing task");
        let _ = kill_tx.send(KillRequest {
            grace,
            why: "killed at the framework's request".to_owned(),
        });
    }

    /// Writes the task's latest status and unacknowledged updates to its run directory.
    fn persist(&self, key: &TaskKey) {
        let Some(task) = self.tasks.get(key) else {
            return;
        };
        if crate::cgroup::check_name(&key.framework_id).is_err()
            || crate::cgroup::check_name(&key.task_id).is_err()
        {
            return;
        }
        let run =
            crate::containerizer::run_dir(&self.config.work_dir, &key.framework_id, &key.task_id);
        if !run.join(checkpoint::TASK_FILE).is_file() {
            return;
        }
        let pending = self.updates.pending_updates(key);
        if let Err(e) = checkpoint::save_updates(&run, &task.latest, &pending) {
            tracing::error!(framework_id = %key.framework_id, task_id = %key.task_id, error = %e,
                "cannot checkpoint the task's status updates; after an agent restart they may be lost");
        }
    }

    /// Re-attaches to the tasks checkpointed under the work dir by an earlier agent: restores
    /// their latest status and unacknowledged updates, and watches the ones still running (or
    /// reports how they ended while the agent was down).
    fn recover_tasks(&mut self) {
        let runs = self.config.work_dir.join("runs");
        let Ok(frameworks) = std::fs::read_dir(&runs) else {
            return;
        };
        let now = Instant::now();
        let mut recovered = 0;
        for fw in frameworks.flatten() {
            let Ok(tasks) = std::fs::read_dir(fw.path()) else {
                continue;
            };
            let framework_id = fw.file_name().to_string_lossy().into_owned();
            for entry in tasks.flatten() {
                let task_id = entry.file_name().to_string_lossy().into_owned();
                let run = entry.path();
                let has_checkpoint = run.join(checkpoint::TASK_FILE).exists();
                if !has_checkpoint {
                    continue;
                }
                let key = TaskKey::new(framework_id.clone(), task_id.clone());
                let span = tracing::info_span!(parent: &self.span, "task",
                    framework_id = %key.framework_id, task_id = %key.task_id);
                let _entered = span.enter();
                let info = match checkpoint::load_task(&run) {
                    Ok(Some(info)) => info,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "recovering the task without its launch record");
                        TaskInfo {
                            task_id: task_id.clone(),
                            ..TaskInfo::default()
                        }
                    }
                };
                let (latest, pending) = match checkpoint::load_updates(&run) {
                    Ok(Some(updates)) => updates,
                    Ok(None) => (
                        TaskStatus {
                            task_id: task_id.clone(),
                            framework_id: framework_id.clone(),
                            state: TaskState::Staging as i32,
                            ..TaskStatus::default()
                        },
                        Vec::new(),
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "recovering the task without its checkpointed updates");
                        (
                            TaskStatus {
                                task_id: task_id.clone(),
                                framework_id: framework_id.clone(),
                                state: TaskState::Running as i32,
                                ..TaskStatus::default()
                            },
                            Vec::new(),
                        )
                    }
                };
                for status in pending {
                    self.updates.restore(status, now);
                }
                let terminal = latest.state().is_terminal();
                let (kill_tx, kill_rx) = mpsc::unbounded_channel();
                self.tasks.insert(
                    key.clone(),
                    Task {
                        info,
                        latest,
                        kill: (!terminal).then_some(kill_tx),
                        span: span.clone(),
                    },
                );
                recovered += 1;
                if terminal {
                    continue;
                }
                match self.containerizer.recover(&framework_id, &task_id) {
                    Ok(container) => {
                        tracing::info!(pid = ?container.pid(), "re-attached to a running task");
                        tokio::spawn(
                            watch(container, key, kill_rx, self.task_events.clone())
                                .instrument(span.clone()),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-attach to the task");
                        self.update(
                            &key,
                            TaskState::Failed,
                            TaskReason::AgentRestarted,
                            e.to_string(),
                            None,
                        );
                    }
                }
            }
        }
        if recovered > 0 {
            tracing::info!(tasks = recovered, "recovered tasks from the checkpoint");
        }
    }

    fn grace_period(&self, task: &TaskInfo, requested: Option<f64>) -> Duration {
        requested
            .or((task.kill_grace_period_seconds > 0.0).then_some(task.kill_grace_period_seconds))
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(self.config.default_kill_grace_period)
    }

    fn on_ack(&mut self, ack: AcknowledgeUpdate) {
        let key = TaskKey::new(ack.framework_id, ack.task_id);
        match self.updates.acknowledge(&key, &ack.uuid, Instant::now()) {
            AckOutcome::Accepted { terminal, next } => {
                if let Some(next) = next {
                    self.send_update(next);
                }
                if terminal && let Some(task) = self.tasks.remove(&key) {
                    let _entered = task.span.enter();
                    checkpoint::forget_task(&crate::containerizer::run_dir(
                        &self.config.work_dir,
                        &key.framework_id,
                        &key.task_id,
                    ));
                    tracing::info!("terminal update acknowledged; task forgotten");
                } else {
                    self.persist(&key);
                }
            }
            AckOutcome::Stale => {
                tracing::debug!(framework_id = %key.framework_id, task_id = %key.task_id,
                    "ignoring a stale acknowledgement");
            }
            AckOutcome::UnknownTask => {
                tracing::debug!(framework_id = %key.framework_id, task_id = %key.task_id,
                    "ignoring an acknowledgement for a task with no pending update");
            }
        }
    }

    fn on_task_event(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::Started { key, pid } => {
                let message = pid
                    .map(|p| format!("running as pid {p}"))
                    .unwrap_or_default();
                self.update(
                    &key,
                    TaskState::Running,
                    TaskReason::Unspecified,
                    message,
                    None,
                );
            }
            TaskEvent::LaunchFailed { key, error } => {
                self.update(
                    &key,
                    TaskState::Failed,
                    TaskReason::ContainerLaunchFailed,
                    error,
                    None,
                );
            }
            TaskEvent::KilledBeforeLaunch { key, why } => {
                self.update(&key, TaskState::Killed, TaskReason::TaskKilled, why, None);
            }
            TaskEvent::Ended {
                key,
                result,
                killed,
                oom,
            } => {
                let (state, reason, message, exit) = match (result, killed) {
                    (Ok(status), None) if !status.success() && oom.is_some() => (
                        TaskState::Failed,
                        TaskReason::ContainerLimitationMemory,
                        oom.map(|o| oom_message(&o, status)).unwrap_or_default(),
                        Some(status),
                    ),
                    (Ok(status), Some(why)) => (
                        TaskState::Killed,
                        TaskReason::TaskKilled,
                        format!("{why} ({status})"),
                        Some(status),
                    ),
                    (Err(e), Some(why)) => (
                        TaskState::Killed,
                        TaskReason::TaskKilled,
                        format!("{why} ({e})"),
                        None,
                    ),
                    (Ok(status), None) if status.success() => (
                        TaskState::Finished,
                        TaskReason::Unspecified,
                        status.to_string(),
                        Some(status),
                    ),
                    (Ok(status), None) => (
                        TaskState::Failed,
                        TaskReason::CommandFailed,
                        status.to_string(),
                        Some(status),
                    ),
                    (Err(e), None) => (TaskState::Failed, TaskReason::Unspecified, e, None),
                };
                self.update(&key, state, reason, message, exit);
            }
        }
    }

    /// Records a new status for a task and queues it for reliable delivery.
    fn update(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        reason: TaskReason,
        message: String,
        exit: Option<ExitStatus>,
    ) {
        let Some(task) = self.tasks.get_mut(key) else {
            tracing::warn!(framework_id = %key.framework_id, task_id = %key.task_id,
                state = state.label(), "dropping an update for a task the agent does not have");
            return;
        };
        if task.is_terminal() {
            tracing::warn!(framework_id = %key.framework_id, task_id = %key.task_id,
                state = state.label(), "dropping an update for a task that has already ended");
            return;
        }
        let status = TaskStatus {
            task_id: key.task_id.clone(),
            framework_id: key.framework_id.clone(),
            agent_id: self.agent_id.clone().unwrap_or_default(),
            state: state as i32,
            reason: reason as i32,
            source: TaskSource::Agent as i32,
            message,
            uuid: Vec::new(),
            timestamp: unix_now(),
            exit_code: exit.and_then(ExitStatus::code),
            signal: exit.and_then(ExitStatus::signal),
        };
        let queued = self.updates.update(status, Instant::now());
        {
            let _entered = task.span.enter();
            tracing::info!(
                state = state.label(),
                message = %queued.status.message,
                "task status update"
            );
        }
        task.latest = queued.status.clone();
        if state.is_terminal() {
            task.kill = None;
        }
        // Checkpointed before it is sent, so an update is never made twice.
        self.persist(key);
        if queued.send_now {
            self.send_update(queued.status);
        }
        if state == TaskState::Running || state.is_terminal() {
            self.publish_running();
        }
    }

    /// Tells the usage collector which tasks run now.
    fn publish_running(&self) {
        let running: Vec<TaskRef> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.latest.state(), TaskState::Running | TaskState::Killing))
            .map(|(key, t)| TaskRef::from_task(&key.framework_id, &t.info))
            .collect();
        self.running.send_replace(Arc::new(running));
    }

    /// Streams the latest usage report to the allocator: in full on a new stream or after a
    /// report was lost, else as a delta of the records read anew and the tasks that ended.
    fn send_usage(&mut self, report: &UsageReport) {
        let Some(session) = &self.session else {
            return;
        };
        if !session.registered {
            return;
        }
        let usage = if session.usage_synced && !report.after_a_gap {
            agent_message::Usage {
                tasks: report.fresh_records().cloned().collect(),
                delta: true,
                ended: report
                    .ended
                    .iter()
                    .map(|(framework_id, task_id)| agent_message::UsageTaskKey {
                        framework_id: framework_id.clone(),
                        task_id: task_id.clone(),
                    })
                    .collect(),
                timestamp: report.timestamp,
            }
        } else {
            agent_message::Usage {
                tasks: report.current(),
                delta: false,
                ended: Vec::new(),
                timestamp: report.timestamp,
            }
        };
        let sent = self.send(agent_message::Message::Usage(usage));
        if let Some(session) = &mut self.session {
            session.usage_synced = sent;
        }
    }

    fn begin_stopping(&mut self, why: &str, kill: bool) {
        if self.stopping.is_some() {
            return;
        }
        let running = self.tasks.values().filter(|t| !t.is_terminal()).count();
        self.stopping = Some(Stopping {
            drain_deadline: None,
            killing: kill,
        });
        if !kill {
            tracing::info!(
                tasks = running,
                "stopping; tasks keep running under their supervisors and the next agent re-attaches to them"
            );
            return;
        }
        tracing::info!(tasks = running, "stopping: killing every task");
        for task in self.tasks.values() {
            if let Some(kill_tx) = &task.kill {
                let _ = kill_tx.send(KillRequest {
                    grace: self.grace_period(&task.info, None),
                    why: why.to_owned(),
                });
            }
        }
    }
}

/// Launches one task and reports its life to the core; owns the container while it runs.
async fn supervise(
    containerizer: Arc<dyn Containerizer>,
    spec: LaunchSpec,
    key: TaskKey,
    mut kills: mpsc::UnboundedReceiver<KillRequest>,
    events: mpsc::UnboundedSender<TaskEvent>,
) {
    if let Ok(kill) = kills.try_recv() {
        let _ = events.send(TaskEvent::KilledBeforeLaunch { key, why: kill.why });
        return;
    }
    let container = match containerizer.launch(&spec).await {
        Ok(container) => container,
        Err(e) => {
            tracing::warn!(error = %e, "task could not be launched");
            let _ = events.send(TaskEvent::LaunchFailed {
                key,
                error: e.to_string(),
            });
            return;
        }
    };
    let _ = events.send(TaskEvent::Started {
        key: key.clone(),
        pid: container.pid(),
    });
    watch(container, key, kills, events).await;
}

/// Watches a running task until it ends (or is killed on request) and reports how it ended.
async fn watch(
    container: Box<dyn crate::containerizer::Container>,
    key: TaskKey,
    mut kills: mpsc::UnboundedReceiver<KillRequest>,
    events: mpsc::UnboundedSender<TaskEvent>,
) {
    let (result, killed) = tokio::select! {
        result = container.wait() => (result, None),
        Some(kill) = kills.recv() => (container.kill(kill.grace).await, Some(kill.why)),
    };
    let _ = events.send(TaskEvent::Ended {
        key,
        result: result.map_err(|e| e.to_string()),
        killed,
        oom: container.memory_oom(),
    });
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `memory limit of 64.0 MiB reached: the kernel's OOM killer ended the task (peak usage
/// 64.0 MiB, 1 process killed; killed by signal 9 (SIGKILL))`.
fn oom_message(oom: &MemoryOom, status: ExitStatus) -> String {
    let limit = oom.limit_bytes.map_or_else(
        || "memory limit".to_owned(),
        |l| format!("memory limit of {}", mib(l)),
    );
    let peak = oom.peak_bytes.map_or_else(
        || "peak usage unknown".to_owned(),
        |p| format!("peak usage {}", mib(p)),
    );
    format!(
        "{limit} reached: the kernel's OOM killer ended the task ({peak}, {} process{} killed; {status})",
        oom.oom_kills,
        if oom.oom_kills == 1 { "" } else { "es" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_addresses_are_normalized() {
        assert_eq!(
            allocator_uri("http://127.0.0.1:5050").unwrap(),
            "http://127.0.0.1:5050"
        );
        assert_eq!(
            allocator_uri("127.0.0.1:5050").unwrap(),
            "http://127.0.0.1:5050"
        );
        assert_eq!(
            allocator_uri(" http://alloc:5050/ ").unwrap(),
            "http://alloc:5050"
        );
        let err = allocator_uri("https://alloc:5050").unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
        assert!(allocator_uri("").is_err());
        assert!(allocator_uri("http://").is_err());
    }

    #[test]
    fn config_defaults_match_the_contract() {
        let c = AgentConfig::new("http://127.0.0.1:5050", "/tmp/w");
        assert_eq!(c.default_kill_grace_period, Duration::from_secs(3));
        assert_eq!(c.status_update_retry, Duration::from_secs(10));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(5));
        assert_eq!(c.ports, None);
        assert!(c.attributes.is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_agent_id_stops_the_agent_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(checkpoint::AGENT_ID_FILE), "").unwrap();
        let config = AgentConfig::new("127.0.0.1:1", dir.path());
        let err =
            tokio::time::timeout(Duration::from_secs(10), run(config, std::future::pending()))
                .await
                .expect("run returns at once")
                .unwrap_err();
        assert!(matches!(err, AgentError::AgentId(_)), "{err:?}");
        assert!(err.to_string().contains("agent_id"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_allocator_address_stops_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::new("ftp://x", dir.path());
        let err = run(config, std::future::pending()).await.unwrap_err();
        assert!(
            matches!(err, AgentError::InvalidAllocatorAddress { .. }),
            "{err:?}"
        );
    }
}
