//! The agent's flags, defined once: [`AgentArgs`] (everything `strata local` shares with
//! `strata-agent`) and [`AgentCommand`] (the `strata-agent` binary: those plus the allocator to
//! dial and the work dir). Each flag has an environment variable (`STRATA_AGENT_<FLAG>`, but
//! the repeatable `--attribute`) and a config file key (its long name in the `[agent]` table);
//! see `strata_common::config` for the precedence.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory as _;
use strata_common::config as file;
use strata_common::parse::{self, OrNone};

use crate::Isolation;
use crate::cgroup::Placement;
use crate::containerizer::linux::UserNamespaces;
use crate::containerizer::supervisor::seccomp::Seccomp;

/// The config file table the agent's flags are read from.
pub const CONFIG_TABLE: &str = "agent";

/// `strata-agent`'s default `--http-listen`: loopback, as its pages name the host's tasks and
/// a profile costs CPU; serving other hosts is asked for (`--http-listen 0.0.0.0:5051`).
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5051);

/// The agent's flags that `strata local` shares.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Agent")]
pub struct AgentArgs {
    /// The host name to register with (default: this host's name).
    #[arg(long, env = "STRATA_AGENT_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
    /// Cpus to offer (default: the cpus this process may use).
    #[arg(long, env = "STRATA_AGENT_CPUS", value_parser = parse::scalar, value_name = "N")]
    pub cpus: Option<f64>,
    /// Memory to offer, in MiB or with a unit like 8GiB (default: MemTotal minus a reserve,
    /// within the agent's cgroup limit).
    #[arg(long, env = "STRATA_AGENT_MEM", value_name = "SIZE", value_parser = parse::size_mib)]
    pub mem: Option<f64>,
    /// Disk to offer, in MiB or with a unit like 100GiB (default: the free space of the work
    /// dir's file system).
    #[arg(long, env = "STRATA_AGENT_DISK", value_name = "SIZE", value_parser = parse::size_mib)]
    pub disk: Option<f64>,
    /// Ports to offer, as BEGIN-END (default: 31000-32000).
    #[arg(long, env = "STRATA_AGENT_PORTS", value_parser = parse::port_range, value_name = "BEGIN-END")]
    pub ports: Option<(u64, u64)>,
    /// The network device whose egress tasks' `net_egress_mbps` limits apply to (default: the
    /// device of the default route).
    #[arg(long, env = "STRATA_AGENT_NET_EGRESS_DEVICE", value_name = "DEV")]
    pub net_egress_device: Option<String>,
    /// Egress bandwidth to offer as `net_egress_mbps`, in Mbit/s (default: the egress device's
    /// link speed; none when it is unknown).
    #[arg(long, env = "STRATA_AGENT_NET_EGRESS_MBPS", value_parser = parse::scalar, value_name = "MBPS")]
    pub net_egress_mbps: Option<f64>,
    /// Runs bridge-mode tasks: the IPv4 subnet of the agent's bridge, like 172.31.0.0/24 (the
    /// bridge takes the first address, tasks lease the others). Without it, bridge tasks are
    /// refused.
    #[arg(long, env = "STRATA_AGENT_BRIDGE_SUBNET", value_parser = parse::ipv4_subnet, value_name = "A.B.C.D/LEN")]
    pub bridge_subnet: Option<(std::net::Ipv4Addr, u8)>,
    /// The name of the agent's bridge (its veths are named after it: NAMEv<n>).
    #[arg(long, env = "STRATA_AGENT_BRIDGE_NAME", default_value = "strata0", value_parser = parse::bridge_name, value_name = "NAME")]
    pub bridge_name: String,
    /// A packet of a task with an egress limit that would leave later than this after it was
    /// sent is dropped (the limiter's horizon).
    #[arg(long, env = "STRATA_AGENT_NET_EGRESS_HORIZON", default_value = "2s", value_parser = parse::duration, value_name = "DURATION")]
    pub net_egress_horizon: Duration,
    /// Resources in Mesos' agent syntax, `NAME[(ROLE)]:VALUE;...`, like
    /// `cpus:4;cpus(ml):4;mem(ml):8GiB;ports(ml):[31000-31099]`: a `(ROLE)` makes the entry a
    /// static reservation for that role. The names listed replace what --cpus, --mem, --disk
    /// and --ports (or discovery) give; others (`gpus`, ...) are added.
    #[arg(long, env = "STRATA_AGENT_RESOURCES", value_parser = parse_resources, value_name = "SPEC")]
    pub resources: Option<AgentResources>,
    /// GPUs to offer as the scalar `gpus`: `auto` (every GPU NVML finds; none, with one log
    /// line, where the NVIDIA driver is missing), `none` (NVML is not loaded), or NVML indexes
    /// like `0,1` (each must exist).
    #[arg(long, env = "STRATA_AGENT_GPUS", default_value = "auto", value_parser = parse::gpus, value_name = "auto|none|LIST")]
    pub gpus: parse::GpuSelection,
    /// An attribute to register with, as NAME=VALUE (repeatable; a list in a config file).
    #[arg(long = "attribute", value_name = "NAME=VALUE", value_parser = parse::attribute)]
    pub attributes: Vec<(String, String)>,
    /// Grace between SIGTERM and SIGKILL for tasks that set none.
    #[arg(long, env = "STRATA_AGENT_DEFAULT_KILL_GRACE_PERIOD", default_value = "3s", value_parser = parse::duration, value_name = "DURATION")]
    pub default_kill_grace_period: Duration,
    /// First resend of an unacknowledged status update (doubles up to 10 minutes).
    #[arg(long, env = "STRATA_AGENT_STATUS_UPDATE_RETRY", default_value = "10s", value_parser = parse::duration, value_name = "DURATION")]
    pub status_update_retry: Duration,
    /// Longest wait between attempts to reach the allocator.
    #[arg(long, env = "STRATA_AGENT_RECONNECT_BACKOFF_MAX", default_value = "5s", value_parser = parse::duration, value_name = "DURATION")]
    pub reconnect_backoff_max: Duration,
    /// Do not load the eBPF accounting programs.
    #[arg(long, env = "STRATA_AGENT_NO_EBPF")]
    pub no_ebpf: bool,
    /// How to isolate tasks: auto (cgroups when this host gives the agent any; it refuses to
    /// start when they are there but cannot enforce limits), cgroups (required) or none (plain
    /// processes, offered with the attribute isolation=none).
    #[arg(long, env = "STRATA_AGENT_ISOLATION", default_value = "auto", value_parser = parse_isolation, value_name = "auto|cgroups|none")]
    pub isolation: Isolation,
    /// The agent's cgroup subtree, relative to each hierarchy's mount, e.g. /strata (default:
    /// strata-<hash of the work dir>, placed by --cgroup-placement).
    #[arg(long, env = "STRATA_AGENT_CGROUP_ROOT", value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Where the cgroup subtree goes: auto (the delegated cgroup the agent runs in, a systemd
    /// scope asked for when started from a shell, else a top-level cgroup), top-level, or
    /// below-own (below the cgroup the agent was started in: shared development machines).
    #[arg(long, env = "STRATA_AGENT_CGROUP_PLACEMENT", default_value = "auto", value_parser = Placement::parse, value_name = "auto|top-level|below-own")]
    pub cgroup_placement: Placement,
    /// pids.max of tasks that set no pids limit.
    #[arg(
        long,
        env = "STRATA_AGENT_DEFAULT_PIDS_LIMIT",
        default_value_t = 4096,
        value_name = "N"
    )]
    pub default_pids_limit: u64,
    /// How long the sandbox of an ended task is kept before it is removed.
    #[arg(long, env = "STRATA_AGENT_SANDBOX_GC_DELAY", default_value = "1h", value_parser = parse::duration, value_name = "DURATION")]
    pub sandbox_gc_delay: Duration,
    /// The user tasks run as when they name none.
    #[arg(
        long,
        env = "STRATA_AGENT_TASK_USER",
        default_value = "nobody",
        value_name = "USER"
    )]
    pub task_user: String,
    /// Let tasks run as root (uid 0).
    #[arg(long, env = "STRATA_AGENT_ALLOW_ROOT_TASKS")]
    pub allow_root_tasks: bool,
    /// Capabilities tasks may ask to keep, comma-separated, like NET_BIND_SERVICE,NET_RAW
    /// (default: none; a task asking for another is refused with TASK_ERROR).
    #[arg(long, env = "STRATA_AGENT_ALLOWED_CAPABILITIES", value_delimiter = ',', value_parser = parse_capability, value_name = "CAPS")]
    pub allowed_capabilities: Vec<String>,
    /// The seccomp profile of tasks: default (denies mount, namespaces, kernel keyring, bpf,
    /// modules, clock setting and the other calls container runtimes deny) or unconfined.
    #[arg(long, env = "STRATA_AGENT_SECCOMP", default_value = "default", value_parser = Seccomp::parse, value_name = "default|unconfined")]
    pub seccomp: Seccomp,
    /// Run each task that has a non-root user and keeps no capabilities in a user namespace
    /// of its own that maps only its uid and gid (root is not mapped there): auto (when the
    /// host allows it; the agent tries at start), on (refuse to start without) or off.
    #[arg(long, env = "STRATA_AGENT_USER_NAMESPACES", default_value = "auto", value_parser = UserNamespaces::parse, value_name = "auto|on|off")]
    pub user_namespaces: UserNamespaces,
    /// Kill every task when the agent stops (default: tasks keep running and the next agent
    /// re-attaches to them; strata local always kills them).
    #[arg(long, env = "STRATA_AGENT_KILL_TASKS_ON_SHUTDOWN")]
    pub kill_tasks_on_shutdown: bool,
    /// How often each running task's usage is measured and reported.
    #[arg(long, env = "STRATA_AGENT_USAGE_INTERVAL", default_value = "1s", value_parser = parse::duration, value_name = "DURATION")]
    pub usage_interval: Duration,
    /// Where the agent serves /health, /usage, /metrics, /profile and /files, as ADDR:PORT
    /// (port 0 picks a free one; 0.0.0.0:5051 serves other hosts, as `strata usage` and `strata
    /// profile` from another host need), or `none` [strata-agent: 127.0.0.1:5051; strata local: 127.0.0.1:0].
    #[arg(long, env = "STRATA_AGENT_HTTP_LISTEN", value_name = "ADDR", value_parser = parse::socket_addr_or_none)]
    pub http_listen: Option<OrNone<SocketAddr>>,
    /// How many CPU profiles (GET /profile) may run at once; more are answered 429.
    #[arg(long, env = "STRATA_AGENT_MAX_CONCURRENT_PROFILES", default_value_t = crate::http::DEFAULT_MAX_CONCURRENT_PROFILES, value_name = "N")]
    pub max_concurrent_profiles: usize,
    /// How many task files may be followed at once (GET /files/follow, `strata logs -f`,
    /// `strata run`); more are answered 429.
    #[arg(long, env = "STRATA_AGENT_MAX_CONCURRENT_FOLLOWS", default_value_t = crate::files::DEFAULT_MAX_CONCURRENT_FOLLOWS, value_name = "N")]
    pub max_concurrent_follows: usize,
}

/// `auto`, `cgroups` or `none`.
pub fn parse_isolation(text: &str) -> Result<Isolation, String> {
    match text.trim() {
        "auto" => Ok(Isolation::Auto),
        "cgroups" => Ok(Isolation::Cgroups),
        "none" => Ok(Isolation::None),
        other => Err(format!(
            "unknown isolation {other:?}: use auto, cgroups or none"
        )),
    }
}

/// A capability name (`CAP_NET_RAW` or `net_raw`) as its canonical `CAP_NET_RAW`.
pub fn parse_capability(text: &str) -> Result<String, String> {
    let set = crate::containerizer::supervisor::parse_capabilities(&[text.to_owned()])?;
    set.iter()
        .next()
        .map(ToString::to_string)
        .ok_or_else(|| "an empty capability name: use a name like NET_BIND_SERVICE".to_owned())
}

impl AgentArgs {
    /// The configuration of an agent that dials `allocator` and keeps its state in
    /// `work_dir`, serving HTTP on `http_listen` unless the flag says otherwise.
    pub fn config(
        &self,
        allocator: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        http_listen: Option<SocketAddr>,
    ) -> crate::AgentConfig {
        let mut config = crate::AgentConfig::new(allocator, work_dir);
        config.hostname = self.hostname.clone();
        config.cpus = self.cpus;
        config.mem_mib = self.mem;
        config.disk_mib = self.disk;
        config.ports = self.ports;
        config.net_egress_device = self.net_egress_device.clone();
        config.net_egress_mbps = self.net_egress_mbps;
        config.net_egress_horizon = self.net_egress_horizon;
        config.bridge_subnet = self.bridge_subnet;
        config.bridge_name = self.bridge_name.clone();
        config.resources = self.resources.clone().map(|r| r.0).unwrap_or_default();
        config.attributes = self.attributes.clone();
        config.gpus = self.gpus.clone();
        config.default_kill_grace_period = self.default_kill_grace_period;
        config.status_update_retry = self.status_update_retry;
        config.reconnect_backoff_max = self.reconnect_backoff_max;
        config.ebpf = !self.no_ebpf;
        config.isolation = self.isolation;
        config.cgroup_root = self.cgroup_root.clone();
        config.cgroup_placement = self.cgroup_placement;
        config.default_pids_limit = self.default_pids_limit;
        config.sandbox_gc_delay = self.sandbox_gc_delay;
        config.task_user = self.task_user.clone();
        config.allow_root_tasks = self.allow_root_tasks;
        config.allowed_capabilities = self.allowed_capabilities.clone();
        config.seccomp = self.seccomp;
        config.user_namespaces = self.user_namespaces;
        config.kill_tasks_on_shutdown = self.kill_tasks_on_shutdown;
        config.usage_interval = self.usage_interval;
        config.max_concurrent_profiles = self.max_concurrent_profiles;
        config.max_concurrent_follows = self.max_concurrent_follows;
        config.http_listen = match &self.http_listen {
            Some(OrNone(addr)) => *addr,
            None => http_listen,
        };
        config
    }
}

/// The entries of `--resources`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentResources(pub Vec<parse::ResourceEntry>);

fn parse_resources(text: &str) -> Result<AgentResources, String> {
    parse::agent_resources(text).map(AgentResources)
}

/// The Strata agent: registers this host's resources with the allocator and runs the tasks it
/// is given.
///
/// Every flag can also be set by its environment variable, or in the `[agent]` table of a
/// config file (`--config`), by its long name; a flag beats its variable, which beats the file.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "strata-agent", version)]
pub struct AgentCommand {
    /// A config file (TOML) whose `[agent]` table sets flags by their long names.
    #[arg(long, env = file::CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (and where each came from) as TOML, then exit.
    #[arg(long)]
    pub print_config: bool,
    /// The allocator to dial (a URL or host:port), or the replicas of a highly available
    /// allocator separated by commas: the agent tries them in turn and stays with the leader (a
    /// follower's answer names it).
    #[arg(long, env = "STRATA_ALLOCATOR", default_value = "http://127.0.0.1:5050", value_parser = parse::endpoint_list, value_name = "ADDR[,ADDR...]")]
    pub allocator: String,
    /// The cluster's CA certificate (PEM) that verifies an https:// --allocator.
    #[arg(long, env = "STRATA_AGENT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM) for an https:// allocator; its common name is the
    /// agent's principal. Needs --tls-key.
    #[arg(long, env = "STRATA_AGENT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "STRATA_AGENT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A file holding a bearer token to authenticate to the allocator with (`strata token
    /// create`), instead of or besides the client certificate.
    #[arg(long, env = "STRATA_AGENT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where the agent keeps its id, task sandboxes and run files (created if missing).
    #[arg(long, env = "STRATA_AGENT_WORK_DIR", value_name = "DIR")]
    pub work_dir: PathBuf,
    /// Instead of running: kill every task this agent (same work dir and cgroup root) left
    /// running, remove its cgroups, and exit.
    #[arg(long)]
    pub remove_cgroups: bool,
    #[command(flatten)]
    pub http_security: HttpSecurityArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// TLS and access rules of the agent's HTTP endpoints (`strata-agent` only: `strata local`
/// serves loopback).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "HTTP security")]
pub struct HttpSecurityArgs {
    /// The HTTP server's TLS certificate (PEM; `strata certs issue`).
    #[arg(
        long,
        env = "STRATA_AGENT_HTTP_TLS_CERT",
        value_name = "FILE",
        requires = "http_tls_key"
    )]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key of --http-tls-cert (PEM).
    #[arg(
        long,
        env = "STRATA_AGENT_HTTP_TLS_KEY",
        value_name = "FILE",
        requires = "http_tls_cert"
    )]
    pub http_tls_key: Option<PathBuf>,
    /// The CA whose client certificates authenticate callers. Turns authentication on.
    #[arg(
        long,
        env = "STRATA_AGENT_HTTP_CLIENT_CA",
        value_name = "FILE",
        requires = "http_tls_cert"
    )]
    pub http_client_ca: Option<PathBuf>,
    /// Principals and their token hashes (`strata token create`). Turns authentication on.
    #[arg(long, env = "STRATA_AGENT_HTTP_CREDENTIALS", value_name = "FILE")]
    pub http_credentials: Option<PathBuf>,
    /// Who may read /usage and /metrics (`view_tasks`), /profile (`profile_tasks`) and the
    /// task sandboxes under /files (`view_sandboxes`).
    #[arg(long, env = "STRATA_AGENT_HTTP_ACLS", value_name = "FILE")]
    pub http_acls: Option<PathBuf>,
    /// Serve HTTP outside loopback without TLS and authentication.
    #[arg(long, env = "STRATA_AGENT_INSECURE")]
    pub insecure: bool,
}

impl HttpSecurityArgs {
    /// The settings these flags give.
    pub fn config(&self) -> crate::http_auth::HttpSecurityConfig {
        crate::http_auth::HttpSecurityConfig {
            cert: self.http_tls_cert.clone(),
            key: self.http_tls_key.clone(),
            client_ca: self.http_client_ca.clone(),
            credentials: self.http_credentials.clone(),
            acls: self.http_acls.clone(),
            insecure: self.insecure,
        }
    }
}

pub use strata_common::config::Parsed;

impl AgentCommand {
    /// The flag ids (clap argument ids) the `[agent]` table may set in `strata-agent`.
    pub fn table_flags(command: &clap::Command) -> Vec<String> {
        let mut flags = file::group_args(command, "AgentArgs");
        flags.extend(
            [
                "allocator",
                "tls_ca",
                "tls_cert",
                "tls_key",
                "token_file",
                "work_dir",
            ]
            .map(str::to_owned),
        );
        flags.extend(file::group_args(command, "HttpSecurityArgs"));
        flags
    }

    /// Parses `argv` (with the program name first) with the config file it names applied.
    pub fn parse_from(argv: Vec<OsString>) -> Result<Parsed<Self>, clap::Error> {
        let command = Self::command();
        let flags = Self::table_flags(&command);
        file::parse(command, argv, CONFIG_TABLE, &flags)
    }

    /// The agent's configuration.
    pub fn config(&self) -> crate::AgentConfig {
        let mut config = self.agent.config(
            self.allocator.clone(),
            self.work_dir.clone(),
            Some(DEFAULT_HTTP_LISTEN),
        );
        config.http_security = self.http_security.config();
        config.allocator_tls = strata_auth::client::ClientSecurity {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            // A token file that cannot be read leaves the token empty, which the agent refuses
            // at start with the file's name.
            token: self
                .token_file
                .as_ref()
                .map(|path| std::fs::read_to_string(path).unwrap_or_default()),
        };
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<AgentCommand, clap::Error> {
        let argv = ["strata-agent", "--work-dir", "/tmp/w"]
            .into_iter()
            .chain(flags.iter().copied())
            .map(OsString::from)
            .collect();
        AgentCommand::parse_from(argv).map(|p| p.args)
    }

    #[test]
    fn flags_fill_the_config() {
        let args = parse(&[
            "--cpus",
            "2",
            "--mem",
            "4GiB",
            "--ports",
            "40000-40010",
            "--attribute",
            "rack = r1",
            "--status-update-retry",
            "500ms",
        ])
        .unwrap();
        let config = args.config();
        assert_eq!(config.cpus, Some(2.0));
        assert_eq!(config.mem_mib, Some(4096.0));
        assert_eq!(config.ports, Some((40000, 40010)));
        assert_eq!(
            config.attributes,
            vec![("rack".to_owned(), "r1".to_owned())]
        );
        assert_eq!(config.status_update_retry, Duration::from_millis(500));
        assert_eq!(config.default_kill_grace_period, Duration::from_secs(3));
        assert_eq!(config.usage_interval, Duration::from_secs(1));
        assert_eq!(config.http_listen, Some(DEFAULT_HTTP_LISTEN));
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let parsed = parse(&[]).unwrap().config();
        let library = crate::AgentConfig::new("http://127.0.0.1:5050", "/tmp/w");
        // The binary serves HTTP by default; the library does not.
        let library = crate::AgentConfig {
            http_listen: Some(DEFAULT_HTTP_LISTEN),
            ..library
        };
        assert_eq!(format!("{parsed:?}"), format!("{library:?}"));
    }

    #[test]
    fn gpus_are_auto_by_default_and_take_none_or_indexes() {
        use strata_common::parse::GpuSelection;
        let gpus = |args: &[&str]| parse(args).map(|a| a.config().gpus);
        assert_eq!(gpus(&[]).unwrap(), GpuSelection::Auto);
        assert_eq!(gpus(&["--gpus", "none"]).unwrap(), GpuSelection::None);
        assert_eq!(
            gpus(&["--gpus", "1,0"]).unwrap(),
            GpuSelection::List(vec![1, 0])
        );
        // Abuse: repeated, negative, fractional and endless lists are refused before start.
        let many = (0..10_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for bad in ["0,0", "-1", "0.5", "all", many.as_str()] {
            let flag = format!("--gpus={bad}");
            let e = gpus(&[&flag]).unwrap_err().to_string();
            assert!(e.contains("invalid GPU selection"), "{bad:.20}: {e:.200}");
        }
    }

    #[test]
    fn the_http_listen_address_can_be_none_or_ephemeral() {
        let listen = |value: &str| parse(&["--http-listen", value]).map(|a| a.config().http_listen);
        assert_eq!(listen("none").unwrap(), None);
        assert_eq!(
            listen("127.0.0.1:0").unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert!(
            listen("localhost")
                .unwrap_err()
                .to_string()
                .contains("ADDR:PORT")
        );
    }

    #[test]
    fn the_allocator_address_is_checked_before_anything_starts() {
        let err = parse(&["--allocator", "ftp://alloc:5050"]).unwrap_err();
        assert!(err.to_string().contains("unknown scheme"), "{err}");
        let args = parse(&["--allocator", "alloc:5050"]).unwrap();
        assert_eq!(args.allocator, "http://alloc:5050");
    }

    #[test]
    fn allowed_capabilities_and_seccomp_fill_the_config() {
        let config = parse(&[
            "--allowed-capabilities",
            "net_bind_service,CAP_NET_RAW",
            "--seccomp",
            "unconfined",
        ])
        .unwrap()
        .config();
        assert_eq!(
            config.allowed_capabilities,
            vec!["CAP_NET_BIND_SERVICE".to_owned(), "CAP_NET_RAW".to_owned()]
        );
        assert_eq!(config.seccomp, Seccomp::Unconfined);
        let defaults = parse(&[]).unwrap().config();
        assert!(defaults.allowed_capabilities.is_empty());
        assert_eq!(defaults.seccomp, Seccomp::Default);
        let err = parse(&["--allowed-capabilities", "NET_BIND_SERVICE,FLY"]).unwrap_err();
        assert!(err.to_string().contains("unknown capability"), "{err}");
    }

    #[test]
    fn resources_take_mesos_syntax() {
        let config = parse(&["--resources", "cpus(ml):2;mem:512"])
            .unwrap()
            .config();
        assert_eq!(config.resources.len(), 2);
        assert_eq!(config.resources[0].role.as_deref(), Some("ml"));
        assert!(parse(&[]).unwrap().config().resources.is_empty());
        let err = parse(&["--resources", "cpus(ml:2"]).unwrap_err();
        assert!(err.to_string().contains("not closed"), "{err}");
    }

    #[test]
    fn user_namespaces_default_to_auto_and_take_on_and_off() {
        assert_eq!(
            parse(&[]).unwrap().config().user_namespaces,
            UserNamespaces::Auto
        );
        for (flag, mode) in [("on", UserNamespaces::On), ("off", UserNamespaces::Off)] {
            let config = parse(&["--user-namespaces", flag]).unwrap().config();
            assert_eq!(config.user_namespaces, mode);
        }
        let err = parse(&["--user-namespaces", "maybe"]).unwrap_err();
        assert!(err.to_string().contains("use auto, on or off"), "{err}");
    }

    #[test]
    fn tls_flags_reach_the_config() {
        let args = parse(&[
            "--allocator",
            "https://alloc:5050",
            "--tls-ca",
            "/etc/strata/ca.pem",
            "--tls-cert",
            "/etc/strata/agent.pem",
            "--tls-key",
            "/etc/strata/agent-key.pem",
        ])
        .unwrap();
        let config = args.config();
        assert_eq!(config.allocator, "https://alloc:5050");
        let tls = config.allocator_tls;
        assert_eq!(
            tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/strata/ca.pem"))
        );
        assert_eq!(
            tls.identity().unwrap().map(|(c, _)| c.to_path_buf()),
            Some(PathBuf::from("/etc/strata/agent.pem"))
        );
        assert_eq!(tls.token, None);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        AgentCommand::command().debug_assert();
    }
}
