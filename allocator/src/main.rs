//! `strata-allocator`: the allocator as a process. Parses flags into an `AllocatorConfig`,
//! binds the listening socket (a clear error when the address is taken), installs the
//! tracing subscriber (`RUST_LOG`, default `info`, to stderr), prints the address it listens
//! on to stdout, and serves until SIGINT or SIGTERM. The registry is persisted by default in
//! `registry.redb` under `--work-dir` (`/var/lib/strata/allocator`); `--store memory` opts out.

use std::io::{ErrorKind, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use strata_allocator::store::{MemoryStore, RedbStore, Store};
use strata_allocator::{AllocatorConfig, Metrics, parse_duration};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The Strata allocator: admits agents and frameworks and offers resources with DRF.
#[derive(Debug, Parser)]
#[command(name = "strata-allocator", version, about)]
struct Args {
    /// Address to listen on for agents, frameworks and operators.
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: String,
    /// How often agents must send a heartbeat (e.g. 500ms, 5s, 2m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    agent_heartbeat_interval: Duration,
    /// No message from an agent this long: it is unreachable.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    agent_timeout: Duration,
    /// How long an agent whose stream ended may take to reconnect before its tasks are
    /// reported LOST or UNREACHABLE.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    agent_reconnect_timeout: Duration,
    /// How often frameworks get a HEARTBEAT event.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    framework_heartbeat_interval: Duration,
    /// The periodic allocation tick (filter expiry, timeouts).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    allocation_interval: Duration,
    /// Default refuse_seconds of DECLINE and ACCEPT filters.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    default_refuse: Duration,
    /// Terminal tasks kept for `strata ps --all`.
    #[arg(long, default_value_t = 1000)]
    terminal_task_history: usize,
    /// Rescind offers neither accepted nor declined this long (e.g. 30s); none by default.
    #[arg(long, value_parser = parse_duration)]
    offer_timeout: Option<Duration>,
    /// The allocator's own directory: its registry store is `registry.redb` in it.
    #[arg(long, default_value = DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    /// Where the registry (framework ids, agent ids, weights, quota and dynamic
    /// reservations) is kept across restarts: a redb file (default: `registry.redb` in
    /// --work-dir), or `memory` to keep it in memory only and lose it at restart (write
    /// `./memory` for a file of that name).
    #[arg(long, value_parser = parse_store)]
    store: Option<StoreArg>,
    /// Where Prometheus scrapes `GET /metrics` (HOST:PORT), or `none` for no metrics server
    /// [default: 0.0.0.0:9105, skipped with a warning when that port is taken].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Where the Mesos v1 scheduler HTTP API listens (HOST:PORT), for frameworks written for
    /// Apache Mesos, or `none` to serve it not [default: 127.0.0.1:5052, skipped with a
    /// warning when that port is taken].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
}

/// The default `--http-listen`: beside the gRPC port (Mesos' own 5050 is the default
/// `--listen`).
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:5052";

/// The default `--metrics-listen`.
const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9105";

/// The default `--work-dir`.
const DEFAULT_WORK_DIR: &str = "/var/lib/strata/allocator";

/// Where `--store` says the registry lives.
#[derive(Clone, Debug, PartialEq)]
enum StoreArg {
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

impl Args {
    /// Where the registry is kept: `--store`, else `registry.redb` in `--work-dir`.
    fn store(&self) -> StoreArg {
        self.store
            .clone()
            .unwrap_or_else(|| StoreArg::Redb(self.work_dir.join("registry.redb")))
    }

    fn config(&self) -> AllocatorConfig {
        AllocatorConfig {
            agent_heartbeat_interval: self.agent_heartbeat_interval,
            agent_timeout: self.agent_timeout,
            agent_reconnect_timeout: self.agent_reconnect_timeout,
            framework_heartbeat_interval: self.framework_heartbeat_interval,
            allocation_interval: self.allocation_interval,
            default_refuse: self.default_refuse,
            terminal_task_history: self.terminal_task_history,
            offer_timeout: self.offer_timeout,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-allocator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config();
    config.validate()?;
    // The store first: a corrupt or busy store stops the allocator before it listens.
    let store: Box<dyn Store> = match args.store() {
        StoreArg::Redb(path) => {
            if args.store.is_none() {
                std::fs::create_dir_all(&args.work_dir).with_context(|| {
                    format!(
                        "cannot create the allocator's work dir {}: pass --work-dir a writable \
                         directory (or --store memory to keep the registry in memory only)",
                        args.work_dir.display()
                    )
                })?;
            }
            let store = RedbStore::open(&path)?;
            tracing::info!(store = %path.display(), "registry store opened");
            Box::new(store)
        }
        StoreArg::Memory => {
            tracing::warn!("--store memory: the registry is kept in memory and lost at restart");
            Box::new(MemoryStore::default())
        }
    };
    let listener = bind(&args.listen).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    println!("strata-allocator listening on {addr}");
    let _ = std::io::stdout().flush();
    let metrics = Metrics::new();
    if let Some(listener) = bind_optional(
        args.metrics_listen.as_deref(),
        DEFAULT_METRICS_LISTEN,
        "metrics",
        "--metrics-listen",
    )
    .await?
    {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) =
                strata_allocator::metrics::serve_http(listener, metrics, std::future::pending())
                    .await
            {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    let http = bind_optional(
        args.http_listen.as_deref(),
        DEFAULT_HTTP_LISTEN,
        "the Mesos HTTP API",
        "--http-listen",
    )
    .await?
    .map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            // A reader that took only the first line has closed the pipe: not an error.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "strata-allocator Mesos HTTP API on http://{addr}");
            let _ = out.flush();
        }
        // `GET /metrics` on the Mesos port too, as on a Mesos master's.
        strata_allocator::mesos::HttpApi {
            extra: Some(strata_allocator::metrics::router(metrics.clone())),
            ..strata_allocator::mesos::HttpApi::new(listener)
        }
    });
    strata_allocator::serve_with_http(listener, config, store, metrics, http, shutdown_signal())
        .await?;
    Ok(())
}

/// A listener for an optional server: `flag` must bind (unless `none`); the default is
/// skipped with a warning when taken.
async fn bind_optional(
    flag: Option<&str>,
    default: &str,
    what: &str,
    flag_name: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match flag {
        Some("none") => Ok(None),
        Some(addr) => TcpListener::bind(addr).await.map(Some).with_context(|| {
            format!(
                "cannot listen for {what} on {addr}: pass {flag_name} a free HOST:PORT, or \
                 `none` to serve it not"
            )
        }),
        None => match TcpListener::bind(default).await {
            Ok(listener) => Ok(Some(listener)),
            Err(e) => {
                tracing::warn!(addr = default, error = %e, "not serving {what}: the default address is not free; pass {flag_name}");
                Ok(None)
            }
        },
    }
}

async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(listen).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {listen}: address already in use: is another allocator or \
             `strata local` running?"
        ),
        Err(e) => Err(anyhow::anyhow!(e).context(format!(
            "cannot listen on {listen}: give --listen a local address such as 127.0.0.1:5050"
        ))),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received; shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let args = Args::try_parse_from(["strata-allocator"]).expect("no flags parse");
        assert_eq!(args.listen, "127.0.0.1:5050");
        assert_eq!(args.config(), AllocatorConfig::default());
        assert_eq!(
            args.store(),
            StoreArg::Redb(PathBuf::from("/var/lib/strata/allocator/registry.redb"))
        );
    }

    #[test]
    fn http_listen_flag_is_optional_and_accepts_none() {
        let args = Args::try_parse_from(["strata-allocator"]).expect("no flags parse");
        assert_eq!(args.http_listen, None);
        let args = Args::try_parse_from(["strata-allocator", "--http-listen", "none"])
            .expect("flags parse");
        assert_eq!(args.http_listen.as_deref(), Some("none"));
    }

    #[test]
    fn store_flag_picks_memory_a_file_or_the_work_dir() {
        let parse = |flags: &[&str]| {
            let argv = std::iter::once("strata-allocator").chain(flags.iter().copied());
            Args::try_parse_from(argv).expect("flags parse").store()
        };
        assert_eq!(parse(&["--store", "memory"]), StoreArg::Memory);
        assert_eq!(
            parse(&["--store", "./memory"]),
            StoreArg::Redb(PathBuf::from("./memory"))
        );
        assert_eq!(
            parse(&["--store", "/tmp/r.redb", "--work-dir", "/w"]),
            StoreArg::Redb(PathBuf::from("/tmp/r.redb"))
        );
        assert_eq!(
            parse(&["--work-dir", "/w"]),
            StoreArg::Redb(PathBuf::from("/w/registry.redb"))
        );
        assert!(Args::try_parse_from(["strata-allocator", "--store", ""]).is_err());
    }

    #[test]
    fn flags_set_every_field() {
        let args = Args::try_parse_from([
            "strata-allocator",
            "--listen",
            "0.0.0.0:6060",
            "--agent-heartbeat-interval",
            "1s",
            "--agent-timeout",
            "3",
            "--agent-reconnect-timeout",
            "500ms",
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
        ])
        .expect("flags parse");
        assert_eq!(args.listen, "0.0.0.0:6060");
        assert_eq!(
            args.config(),
            AllocatorConfig {
                agent_heartbeat_interval: Duration::from_secs(1),
                agent_timeout: Duration::from_secs(3),
                agent_reconnect_timeout: Duration::from_millis(500),
                framework_heartbeat_interval: Duration::from_secs(120),
                allocation_interval: Duration::from_millis(100),
                default_refuse: Duration::ZERO,
                terminal_task_history: 7,
                offer_timeout: Some(Duration::from_secs(30)),
            }
        );
        let err = Args::try_parse_from(["strata-allocator", "--agent-timeout", "soon"])
            .expect_err("bad duration");
        assert!(
            err.to_string().contains("invalid duration \"soon\""),
            "{err}"
        );
    }
}
