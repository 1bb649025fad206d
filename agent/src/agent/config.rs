//! The agent's configuration ([`AgentConfig`], [`Isolation`]) and the errors that stop it
//! ([`AgentError`]). The `strata-agent` binary's flags map onto [`AgentConfig`] one to one.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::cgroup::{CgroupError, Placement, RootPlacement};
use crate::checkpoint::CheckpointError;
use crate::containerizer::supervisor::seccomp::Seccomp;
use crate::discovery::{DiscoveryError, HostRoots};
use strata_common::parse::GpuSelection;

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The allocator to dial, e.g. `http://127.0.0.1:5050` (a bare `host:port` is accepted).
    pub allocator: String,
    /// For an `https://` allocator: the CA that verifies it and this agent's certificate and
    /// key (its principal); the token is unused. Not read for `http://`.
    pub allocator_tls: strata_auth::client::ClientSecurity,
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
    /// The device whose egress is limited (default: the device of the default route).
    pub net_egress_device: Option<String>,
    /// Egress bandwidth to offer as `net_egress_mbps` (default: the device's link speed).
    pub net_egress_mbps: Option<f64>,
    /// A limited task's packet that would leave later than this after it was sent is dropped.
    pub net_egress_horizon: Duration,
    /// The subnet of the agent's bridge (network address, prefix length): `None` refuses bridge
    /// tasks.
    pub bridge_subnet: Option<(std::net::Ipv4Addr, u8)>,
    /// The name of the agent's bridge.
    pub bridge_name: String,
    /// Set at start-up when the agent cannot enforce ports (no cgroup bind hooks): it then
    /// offers none.
    pub withhold_ports: bool,
    /// `--resources`: each name listed replaces the discovered (or overridden) resource of
    /// that name; entries with a role are static reservations. Empty: none.
    pub resources: Vec<strata_common::parse::ResourceEntry>,
    /// Attributes (name, value) to register with.
    pub attributes: Vec<(String, String)>,
    /// Which GPUs to offer (`--gpus`); default [`GpuSelection::Auto`].
    pub gpus: GpuSelection,
    /// The GPU backend to use instead of loading NVML (tests: a [`crate::gpu::fake::FakeBackend`]).
    pub gpu_backend: Option<std::sync::Arc<dyn crate::gpu::GpuBackend>>,
    /// NVIDIA's device majors to use instead of reading them from `/proc/devices` (tests
    /// with a fake GPU backend on hosts without the driver).
    pub gpu_nodes: Option<crate::gpu::nodes::GpuNodes>,
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
    /// The capabilities tasks may keep (`CAP_NET_BIND_SERVICE`, ...); default none: a task
    /// asking for one not listed is refused with `TASK_ERROR`.
    pub allowed_capabilities: Vec<String>,
    /// The seccomp profile of supervised tasks; default [`Seccomp::Default`].
    pub seccomp: Seccomp,
    /// Whether supervised tasks run in user namespaces of their own; default
    /// [`UserNamespaces::Auto`]: where the host allows them.
    pub user_namespaces: crate::containerizer::linux::UserNamespaces,
    /// Kill every task when the agent stops (its shutdown future resolves); default false:
    /// supervised tasks keep running and the next agent re-attaches to them. Tasks that cannot
    /// outlive the agent (no supervisor) are always killed. An allocator's Shutdown always
    /// kills.
    pub kill_tasks_on_shutdown: bool,
    /// How often each running task's usage is measured and reported (and served at /usage and
    /// /metrics); default 1 s.
    pub usage_interval: Duration,
    /// Where the agent serves its own HTTP endpoints (/health, /usage, /metrics, /profile);
    /// default `None`: none (the `strata-agent` binary's default is 127.0.0.1:5051). A port of
    /// 0 picks a free one; the address bound is registered as `AgentInfo.endpoint`.
    pub http_listen: Option<std::net::SocketAddr>,
    /// How many CPU profiles (`GET /profile`) may run at once; default
    /// [`crate::http::DEFAULT_MAX_CONCURRENT_PROFILES`].
    pub max_concurrent_profiles: usize,
    /// How many task files may be followed at once (`GET /files/follow`); default
    /// [`crate::files::DEFAULT_MAX_CONCURRENT_FOLLOWS`].
    pub max_concurrent_follows: usize,
    /// TLS and access rules of the HTTP server; default: plain, open, loopback only.
    pub http_security: crate::http_auth::HttpSecurityConfig,
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
            allocator_tls: strata_auth::client::ClientSecurity::none(),
            work_dir: work_dir.into(),
            hostname: None,
            cpus: None,
            mem_mib: None,
            disk_mib: None,
            ports: None,
            net_egress_device: None,
            net_egress_mbps: None,
            net_egress_horizon: crate::ebpf::DEFAULT_EGRESS_HORIZON,
            bridge_subnet: None,
            bridge_name: "strata0".to_owned(),
            withhold_ports: false,
            resources: Vec::new(),
            attributes: Vec::new(),
            gpus: GpuSelection::Auto,
            gpu_backend: None,
            gpu_nodes: None,
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
            allowed_capabilities: Vec::new(),
            seccomp: Seccomp::Default,
            user_namespaces: crate::containerizer::linux::UserNamespaces::Auto,
            kill_tasks_on_shutdown: false,
            usage_interval: crate::usage::DEFAULT_INTERVAL,
            http_listen: None,
            max_concurrent_profiles: crate::http::DEFAULT_MAX_CONCURRENT_PROFILES,
            max_concurrent_follows: crate::files::DEFAULT_MAX_CONCURRENT_FOLLOWS,
            http_security: crate::http_auth::HttpSecurityConfig::default(),
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
    #[error("{reason}")]
    InvalidAllocatorAddress {
        /// The address as configured.
        address: String,
        /// What is wrong with it and what to write instead.
        reason: String,
    },
    /// The TLS files for an `https://` allocator are missing or unusable.
    #[error("cannot use TLS with the allocator at {address}: {reason}")]
    AllocatorTls {
        /// The allocator address.
        address: String,
        /// What is wrong and which flag fixes it.
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
    /// The GPUs `--gpus` names could not be found.
    #[error(transparent)]
    Gpus(#[from] crate::gpu::GpuError),
    /// Task isolation was required but cannot be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The HTTP listen address cannot be bound.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// The HTTP server's security settings cannot be used.
    #[error(transparent)]
    HttpAuth(#[from] crate::http_auth::HttpAuthError),
    /// `--user-namespaces on` on a host that does not allow them.
    #[error(
        "--user-namespaces on, but this host does not let a task enter a user namespace of its \
         own: {reason}; allow unprivileged user namespaces (sysctl user.max_user_namespaces, \
         kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns) or \
         start the agent with --user-namespaces auto or off"
    )]
    UserNamespaces {
        /// What the attempt answered.
        reason: String,
    },
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
