//! The allocator's flags, defined once: [`AllocatorArgs`] (everything `strata local` shares
//! with `strata-allocator`) and [`AllocatorCommand`] (the `strata-allocator` binary: those plus
//! where it listens and keeps its registry). Each flag has an environment variable
//! (`STRATA_ALLOCATOR_<FLAG>`) and a config file key (its long name in the `[allocator]`
//! table); see `strata_common::config` for the precedence.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory as _;
use strata_allocator_core::config::AllocatorConfig;
use strata_common::config as file;
use strata_common::parse::{self, OrNone};
use tokio::net::TcpListener;

/// The config file table the allocator's flags are read from.
pub const CONFIG_TABLE: &str = "allocator";

/// The allocator's flags that `strata local` shares.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Allocator")]
pub struct AllocatorArgs {
    /// How often agents must send a heartbeat (e.g. 500ms, 5s, 2m).
    #[arg(long, env = "STRATA_ALLOCATOR_AGENT_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse::duration, value_name = "DURATION")]
    pub agent_heartbeat_interval: Duration,
    /// No message from an agent this long: its stream is closed (its tasks are reported once
    /// it has been unheard of for --agent-reconnect-timeout).
    #[arg(long, env = "STRATA_ALLOCATOR_AGENT_TIMEOUT", default_value = "15s", value_parser = parse::duration, value_name = "DURATION")]
    pub agent_timeout: Duration,
    /// How long an agent may be gone (its stream ended, or silent) before its tasks are
    /// reported LOST or UNREACHABLE (Mesos: 15 s pings, 5 missed).
    #[arg(long, env = "STRATA_ALLOCATOR_AGENT_RECONNECT_TIMEOUT", default_value = "75s", value_parser = parse::duration, value_name = "DURATION")]
    pub agent_reconnect_timeout: Duration,
    /// After an allocator restart, how long agents known from its registry have to
    /// re-register; until then, reconciliation of a task the allocator does not know waits
    /// for them instead of answering LOST.
    #[arg(long, env = "STRATA_ALLOCATOR_AGENT_REREGISTER_TIMEOUT", default_value = "10m", value_parser = parse::duration, value_name = "DURATION")]
    pub agent_reregister_timeout: Duration,
    /// How often frameworks get a HEARTBEAT event.
    #[arg(long, env = "STRATA_ALLOCATOR_FRAMEWORK_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse::duration, value_name = "DURATION")]
    pub framework_heartbeat_interval: Duration,
    /// The periodic allocation tick (filter expiry, timeouts).
    #[arg(long, env = "STRATA_ALLOCATOR_ALLOCATION_INTERVAL", default_value = "1s", value_parser = parse::duration, value_name = "DURATION")]
    pub allocation_interval: Duration,
    /// Default refuse_seconds of DECLINE and ACCEPT filters.
    #[arg(long, env = "STRATA_ALLOCATOR_DEFAULT_REFUSE", default_value = "5s", value_parser = parse::duration, value_name = "DURATION")]
    pub default_refuse: Duration,
    /// Terminal tasks kept for `strata ps --all` (in the registry: they survive a restart).
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_TERMINAL_TASK_HISTORY",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub terminal_task_history: usize,
    /// Rescind offers neither accepted nor declined this long (e.g. 30s); none by default.
    #[arg(long, env = "STRATA_ALLOCATOR_OFFER_TIMEOUT", value_parser = parse::duration, value_name = "DURATION")]
    pub offer_timeout: Option<Duration>,
    /// The most frameworks registered at once; a SUBSCRIBE of a new one beyond it is refused.
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_MAX_FRAMEWORKS",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub max_frameworks: usize,
    /// The most frameworks one principal may have registered at once (with authentication).
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_MAX_FRAMEWORKS_PER_PRINCIPAL",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_frameworks_per_principal: usize,
    /// Where Prometheus scrapes `GET /metrics` (HOST:PORT), or `none` [strata-allocator:
    /// 0.0.0.0:9105, skipped with a warning when taken; strata local: none (its metrics are on
    /// the Mesos HTTP port)].
    #[arg(long, env = "STRATA_ALLOCATOR_METRICS_LISTEN", value_name = "ADDR", value_parser = parse::listen_or_none)]
    pub metrics_listen: Option<OrNone<String>>,
    /// Where the Mesos v1 scheduler HTTP API listens (HOST:PORT), for frameworks written for
    /// Apache Mesos, or `none` [default: 127.0.0.1:5052; when taken, strata-allocator skips it
    /// with a warning and strata local picks a free port].
    #[arg(long, env = "STRATA_ALLOCATOR_MESOS_LISTEN", value_name = "ADDR", value_parser = parse::listen_or_none)]
    pub mesos_listen: Option<OrNone<String>>,
}

impl AllocatorArgs {
    /// The core's configuration.
    pub fn config(&self) -> AllocatorConfig {
        AllocatorConfig {
            agent_heartbeat_interval: self.agent_heartbeat_interval,
            agent_timeout: self.agent_timeout,
            agent_reconnect_timeout: self.agent_reconnect_timeout,
            agent_reregister_timeout: self.agent_reregister_timeout,
            framework_heartbeat_interval: self.framework_heartbeat_interval,
            allocation_interval: self.allocation_interval,
            default_refuse: self.default_refuse,
            terminal_task_history: self.terminal_task_history,
            offer_timeout: self.offer_timeout,
            max_frameworks: self.max_frameworks,
            max_frameworks_per_principal: self.max_frameworks_per_principal,
            // Set from the security flags by the binary that serves (`policy`).
            policy: strata_allocator_core::Policy::Open,
            // Set by the binary once it leads its replicas (`--etcd`).
            leader_epoch: 0,
        }
    }
}

/// The default `--mesos-listen`: beside the gRPC port (Mesos' own 5050 is the default
/// `--listen`).
pub const DEFAULT_MESOS_LISTEN: &str = "127.0.0.1:5052";
/// `strata-allocator`'s default `--metrics-listen`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9105";
/// `strata-allocator`'s default `--work-dir`.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/strata/allocator";
/// The default `--listen` of `strata-allocator` and `strata local`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5050";

/// The Strata allocator: admits agents and frameworks and offers resources with DRF.
///
/// Every flag can also be set by its environment variable, or in the `[allocator]` table of a
/// config file (`--config`), by its long name; a flag beats its variable, which beats the file.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "strata-allocator", version)]
pub struct AllocatorCommand {
    /// A config file (TOML) whose `[allocator]` table sets flags by their long names.
    #[arg(long, env = file::CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective settings (and where each came from) as TOML, then exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on for agents, frameworks and operators.
    #[arg(long, env = "STRATA_ALLOCATOR_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse::listen, value_name = "ADDR")]
    pub listen: String,
    /// The allocator's own directory: its registry store is `registry.redb` in it.
    #[arg(long, env = "STRATA_ALLOCATOR_WORK_DIR", default_value = DEFAULT_WORK_DIR, value_name = "DIR")]
    pub work_dir: PathBuf,
    /// Where the registry (framework ids, agent ids, weights, quota and dynamic reservations)
    /// is kept across restarts: a redb file (default: `registry.redb` in --work-dir), or
    /// `memory` to keep it in memory only and lose it at restart (write `./memory` for a file
    /// of that name).
    #[arg(long, env = "STRATA_ALLOCATOR_STORE", value_parser = parse_store, value_name = "PATH|memory", conflicts_with = "etcd")]
    pub store: Option<StoreArg>,
    #[command(flatten)]
    pub ha: HaArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub allocator: AllocatorArgs,
}

/// Several replicas of one cluster (`strata-allocator` only): leader election and the
/// registry in etcd.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "High availability")]
pub struct HaArgs {
    /// etcd endpoints (comma-separated URLs like http://10.0.0.1:2379): run as one of several
    /// replicas of --cluster. The replica elected leader serves; the others wait to take over.
    /// The registry lives in etcd (not in --store).
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_ETCD",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub etcd: Vec<String>,
    /// The cluster's name (its keys in etcd are under /strata/NAME/): 1 to 64 letters,
    /// digits, '-', '_' or '.'.
    #[arg(long, env = "STRATA_ALLOCATOR_CLUSTER", default_value = "strata", value_parser = parse_cluster, value_name = "NAME")]
    pub cluster: String,
    /// How long a leader keeps leadership after it stops refreshing its etcd lease (it died,
    /// or lost etcd): the longest a failover waits (whole seconds, 2s to 5m).
    #[arg(long, env = "STRATA_ALLOCATOR_ETCD_LEASE_TTL", default_value = "10s", value_parser = parse_lease_ttl, value_name = "DURATION")]
    pub etcd_lease_ttl: Duration,
    /// The CA certificate (PEM) that verifies the etcd members, for https:// endpoints
    /// (required with them).
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_ETCD_CA",
        value_name = "PATH",
        requires = "etcd"
    )]
    pub etcd_ca: Option<PathBuf>,
    /// This replica's client certificate (PEM) for etcd members run with
    /// --client-cert-auth; with --etcd-key.
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_ETCD_CERT",
        value_name = "PATH",
        requires = "etcd"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_ETCD_KEY",
        value_name = "PATH",
        requires = "etcd"
    )]
    pub etcd_key: Option<PathBuf>,
    /// The address (host:port of --listen) other replicas and clients are told for this one
    /// when it leads; default: the address it listens on.
    #[arg(long, env = "STRATA_ALLOCATOR_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
}

fn parse_cluster(input: &str) -> Result<String, String> {
    if crate::store_etcd::valid_cluster_name(input) {
        Ok(input.to_owned())
    } else {
        Err("a cluster name is 1 to 64 letters, digits, '-', '_' or '.'".to_owned())
    }
}

fn parse_lease_ttl(input: &str) -> Result<Duration, String> {
    let ttl = parse::duration(input)?;
    if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(300) {
        return Err(format!(
            "{input} is out of range: give 2s to 5m (a short ttl fails over sooner but needs \
             a steady link to etcd)"
        ));
    }
    Ok(Duration::from_secs(ttl.as_secs()))
}

/// TLS, authentication, authorization and the audit log (`strata-allocator` only; `strata
/// local` serves loopback).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Security")]
pub struct SecurityArgs {
    /// The allocator's TLS certificate (PEM; `strata certs issue`): every listener serves TLS.
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The CA whose client certificates authenticate agents, frameworks and operators (their
    /// common name is the principal). Turns authentication on.
    #[arg(
        long,
        env = "STRATA_ALLOCATOR_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Principals and the hashes of their bearer tokens (`strata token create`). Turns
    /// authentication on.
    #[arg(long, env = "STRATA_ALLOCATOR_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Who may do what (TOML `[[allow]]` rules; see docs/security.md); required with
    /// authentication, which denies what no rule allows.
    #[arg(long, env = "STRATA_ALLOCATOR_ACLS", value_name = "FILE")]
    pub acls: Option<PathBuf>,
    /// Append every operator and framework action, with its principal and outcome, to this
    /// file (JSON lines).
    #[arg(long, env = "STRATA_ALLOCATOR_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Listen on non-loopback addresses without TLS and authentication: anyone who reaches
    /// the allocator can then register agents, run tasks and act as an operator.
    #[arg(long, env = "STRATA_ALLOCATOR_INSECURE")]
    pub insecure: bool,
}

/// Why the security flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityFlagsError {
    /// An address outside loopback without TLS.
    #[error(
        "refusing to serve {what} on {addr} without TLS and authentication: anyone who can \
         reach it could register agents, run tasks and act as an operator. Give --tls-cert, \
         --tls-key and --tls-client-ca and/or --credentials (see docs/security.md), listen on \
         127.0.0.1, or pass --insecure to accept the risk"
    )]
    Exposed {
        /// The listener.
        what: &'static str,
        /// Its address.
        addr: String,
    },
    /// Authentication without ACLs.
    #[error(
        "authentication is on (--tls-client-ca or --credentials) but no --acls file says who \
         may do what, so everything would be denied: give --acls (see docs/security.md)"
    )]
    NoAcls,
    /// ACLs without authentication.
    #[error("--acls needs authentication: give --credentials and/or --tls-client-ca")]
    AclsWithoutAuthentication,
    /// A file could not be used.
    #[error("{0}")]
    File(String),
}

impl SecurityArgs {
    /// Whether callers must authenticate.
    pub fn authenticating(&self) -> bool {
        self.credentials.is_some() || self.tls_client_ca.is_some()
    }

    /// The policy the flags set: enforced ACLs with authentication, else open.
    pub fn policy(&self) -> Result<strata_allocator_core::Policy, SecurityFlagsError> {
        use strata_allocator_core::{Acls, Policy};
        match (&self.acls, self.authenticating()) {
            (Some(path), true) => Ok(Policy::Enforced(
                Acls::load(path).map_err(|e| SecurityFlagsError::File(e.to_string()))?,
            )),
            (None, true) => Err(SecurityFlagsError::NoAcls),
            (Some(_), false) => Err(SecurityFlagsError::AclsWithoutAuthentication),
            (None, false) => Ok(Policy::Open),
        }
    }

    /// The servers' security settings.
    pub fn security(&self) -> Result<crate::security::Security, SecurityFlagsError> {
        let credentials = match &self.credentials {
            Some(path) => strata_auth::credentials::Credentials::load(path)
                .map_err(|e| SecurityFlagsError::File(e.to_string()))?,
            None => strata_auth::credentials::Credentials::default(),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::security::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        crate::security::Security::new(self.policy()?, credentials, tls, self.audit_log.as_deref())
            .map_err(|e| SecurityFlagsError::File(e.to_string()))
    }

    /// Refuses to serve `addr` (a bound listener's address) outside loopback unless TLS and
    /// authentication are on, or `--insecure` accepts the risk.
    pub fn check_exposure(
        &self,
        what: &'static str,
        addr: std::net::SocketAddr,
    ) -> Result<(), SecurityFlagsError> {
        let protected = self.tls_cert.is_some() && self.authenticating();
        if protected || self.insecure || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(SecurityFlagsError::Exposed {
            what,
            addr: addr.to_string(),
        })
    }
}

/// Where `--store` says the registry lives.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreArg {
    /// In memory only.
    Memory,
    /// A redb file.
    Redb(PathBuf),
}

fn parse_store(input: &str) -> Result<StoreArg, String> {
    match input {
        "" => Err("give --store a file path, or `memory`".to_owned()),
        "memory" => Ok(StoreArg::Memory),
        path => Ok(StoreArg::Redb(PathBuf::from(path))),
    }
}

pub use strata_common::config::Parsed;

impl AllocatorCommand {
    /// The flag ids (clap argument ids) the `[allocator]` table may set in `strata-allocator`.
    pub fn table_flags(command: &clap::Command) -> Vec<String> {
        let mut flags = file::group_args(command, "AllocatorArgs");
        flags.extend(["listen", "work_dir", "store"].map(str::to_owned));
        flags.extend(file::group_args(command, "HaArgs"));
        flags.extend(file::group_args(command, "SecurityArgs"));
        flags
    }

    /// Parses `argv` (with the program name first) with the config file it names applied.
    pub fn parse_from(argv: Vec<OsString>) -> Result<Parsed<Self>, clap::Error> {
        let command = Self::command()
            // Before `--mesos-listen`, the Mesos API's flag was `--http-listen`.
            .mut_arg("mesos_listen", |a| a.alias("http-listen"));
        let flags = Self::table_flags(&command);
        file::parse(command, argv, CONFIG_TABLE, &flags)
    }

    /// Where the registry is kept: `--store`, else `registry.redb` in `--work-dir`.
    pub fn store(&self) -> StoreArg {
        self.store
            .clone()
            .unwrap_or_else(|| StoreArg::Redb(self.work_dir.join("registry.redb")))
    }
}

/// Where an optional server listens, as its flag says: `Some(OrNone(None))` is `none`, `None`
/// the program's default.
pub type OptionalListen = Option<OrNone<String>>;

/// Binds an optional server's listener as its flag says: `none` serves it not; an address must
/// bind; without the flag, `default` is tried and, when taken, `fallback` decides: `None`
/// skips the server with a warning, `Some(addr)` binds that instead (e.g. a free port).
pub async fn bind_optional(
    flag: &OptionalListen,
    default: Option<&str>,
    fallback: Option<&str>,
    what: &str,
    flag_name: &str,
) -> Result<Option<TcpListener>, ListenError> {
    let explicit = |addr: &str| ListenError::Optional {
        what: what.to_owned(),
        addr: addr.to_owned(),
        flag: flag_name.to_owned(),
    };
    match (flag, default) {
        (Some(OrNone(None)), _) | (None, None) => Ok(None),
        (Some(OrNone(Some(addr))), _) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| explicit(addr).with(e)),
        (None, Some(default)) => match TcpListener::bind(default).await {
            Ok(listener) => Ok(Some(listener)),
            Err(e) => match fallback {
                Some(other) => TcpListener::bind(other)
                    .await
                    .map(Some)
                    .map_err(|e| explicit(other).with(e)),
                None => {
                    tracing::warn!(addr = default, error = %e, "not serving {what}: the default address is not free; pass {flag_name}");
                    Ok(None)
                }
            },
        },
    }
}

/// Binds the allocator's own listener (`--listen`), with errors that say what to do.
pub async fn bind(listen: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(listen).await.map_err(|source| {
        let hint = if source.kind() == ErrorKind::AddrInUse {
            "is another allocator or `strata local` running? stop it, or pass --listen 127.0.0.1:0 for a free port"
        } else {
            "give --listen a local address such as 127.0.0.1:5050"
        };
        ListenError::Main {
            addr: listen.to_owned(),
            reason: strata_common::error::short_io(&source),
            hint,
        }
    })
}

/// A listener that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The main (gRPC) listener.
    #[error("cannot listen on {addr}: {reason}: {hint}")]
    Main {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
        /// What to do.
        hint: &'static str,
    },
    /// An optional server's listener, asked for explicitly.
    #[error(
        "cannot listen for {what} on {addr}: pass {flag} a free HOST:PORT (port 0 picks one), or `none` to serve it not"
    )]
    Optional {
        /// Which server.
        what: String,
        /// The address.
        addr: String,
        /// Its flag.
        flag: String,
    },
    /// [`ListenError::Optional`] with its cause.
    #[error("{inner}: {reason}")]
    WithCause {
        /// What failed.
        inner: Box<ListenError>,
        /// Why.
        reason: String,
    },
}

impl ListenError {
    fn with(self, e: std::io::Error) -> Self {
        Self::WithCause {
            reason: strata_common::error::short_io(&e),
            inner: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<AllocatorCommand, clap::Error> {
        let argv = std::iter::once("strata-allocator")
            .chain(flags.iter().copied())
            .map(OsString::from)
            .collect();
        AllocatorCommand::parse_from(argv).map(|p| p.args)
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let args = parse(&[]).expect("no flags parse");
        assert_eq!(args.listen, "127.0.0.1:5050");
        assert_eq!(args.allocator.config(), AllocatorConfig::default());
        assert_eq!(
            args.store(),
            StoreArg::Redb(PathBuf::from("/var/lib/strata/allocator/registry.redb"))
        );
    }

    #[test]
    fn http_listen_flag_is_optional_and_accepts_none() {
        let args = parse(&[]).expect("no flags parse");
        assert_eq!(args.allocator.mesos_listen, None);
        // `--http-listen` is the Mesos API's flag's old name.
        for flag in ["--mesos-listen", "--http-listen"] {
            let args = parse(&[flag, "none"]).expect("flags parse");
            assert_eq!(args.allocator.mesos_listen, Some(OrNone(None)));
        }
        let args = parse(&["--mesos-listen", "http://127.0.0.1:0/"]).expect("flags parse");
        assert_eq!(
            args.allocator.mesos_listen,
            Some(OrNone(Some("127.0.0.1:0".to_owned())))
        );
    }

    #[test]
    fn replication_flags_refuse_unsafe_cluster_names_odd_ttls_and_a_second_store() {
        let ha = parse(&[
            "--etcd",
            "http://a:2379,http://b:2379",
            "--cluster",
            "prod-1",
        ])
        .expect("flags parse")
        .ha;
        assert_eq!(ha.etcd, ["http://a:2379", "http://b:2379"]);
        assert_eq!(ha.cluster, "prod-1");
        assert_eq!(ha.etcd_lease_ttl, Duration::from_secs(10));
        // The name becomes part of etcd keys: nothing that would name other keys.
        for bad in ["../x", "a/b", "", &"x".repeat(65)] {
            let err = parse(&["--etcd", "http://a:2379", "--cluster", bad]).unwrap_err();
            assert!(err.to_string().contains("cluster name"), "{bad:?}: {err}");
        }
        for bad in ["1s", "10m", "soon"] {
            assert!(parse(&["--etcd-lease-ttl", bad]).is_err(), "{bad}");
        }
        let err = parse(&["--etcd", "http://a:2379", "--store", "memory"]).unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
        // etcd's TLS files mean nothing without --etcd.
        for flag in ["--etcd-ca", "--etcd-cert", "--etcd-key"] {
            let err = parse(&[flag, "/x.pem"]).unwrap_err();
            assert!(err.to_string().contains("--etcd <URLS>"), "{flag}: {err}");
        }
    }

    #[test]
    fn store_flag_picks_memory_a_file_or_the_work_dir() {
        let store = |flags: &[&str]| parse(flags).expect("flags parse").store();
        assert_eq!(store(&["--store", "memory"]), StoreArg::Memory);
        assert_eq!(
            store(&["--store", "./memory"]),
            StoreArg::Redb(PathBuf::from("./memory"))
        );
        assert_eq!(
            store(&["--store", "/tmp/r.redb", "--work-dir", "/w"]),
            StoreArg::Redb(PathBuf::from("/tmp/r.redb"))
        );
        assert_eq!(
            store(&["--work-dir", "/w"]),
            StoreArg::Redb(PathBuf::from("/w/registry.redb"))
        );
        assert!(parse(&["--store", ""]).is_err());
    }

    #[test]
    fn flags_set_every_field() {
        let args = parse(&[
            "--listen",
            "0.0.0.0:6060",
            "--agent-heartbeat-interval",
            "1s",
            "--agent-timeout",
            "3",
            "--agent-reconnect-timeout",
            "500ms",
            "--agent-reregister-timeout",
            "1m",
            "--framework-heartbeat-interval",
            "2m",
            "--allocation-interval",
            "100ms",
            "--default-refuse",
            "0",
            "--terminal-task-history",
            "7",
            "--offer-timeout",
            "30s",
            "--max-frameworks",
            "3",
        ])
        .expect("flags parse");
        assert_eq!(args.listen, "0.0.0.0:6060");
        assert_eq!(
            args.allocator.config(),
            AllocatorConfig {
                agent_heartbeat_interval: Duration::from_secs(1),
                agent_timeout: Duration::from_secs(3),
                agent_reconnect_timeout: Duration::from_millis(500),
                agent_reregister_timeout: Duration::from_secs(60),
                framework_heartbeat_interval: Duration::from_secs(120),
                allocation_interval: Duration::from_millis(100),
                default_refuse: Duration::ZERO,
                terminal_task_history: 7,
                offer_timeout: Some(Duration::from_secs(30)),
                max_frameworks: 3,
                max_frameworks_per_principal: 100,
                policy: strata_allocator_core::Policy::Open,
                leader_epoch: 0,
            }
        );
        let err = parse(&["--agent-timeout", "soon"]).expect_err("bad duration");
        assert!(
            err.to_string().contains("invalid duration \"soon\""),
            "{err}"
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        AllocatorCommand::command().debug_assert();
    }
}
