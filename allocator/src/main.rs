//! `strata-allocator`: the allocator as a process. Parses its flags (`strata_allocator::flags`,
//! with their environment variables and config file), opens the registry store (a corrupt or
//! busy store stops it before it listens), binds the listening socket (a clear error when the
//! address is taken), installs the tracing subscriber (`RUST_LOG`, default `info`, to stderr),
//! prints the address it listens on to stdout, and serves until SIGINT or SIGTERM. The
//! registry is persisted by default in `registry.redb` under `--work-dir`
//! (`/var/lib/strata/allocator`); `--store memory` opts out.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use strata_allocator::Metrics;
use strata_allocator::flags::{
    self, AllocatorCommand, DEFAULT_MESOS_LISTEN, DEFAULT_METRICS_LISTEN, StoreArg,
};
use strata_allocator::follower::{self, LeaderAddress};
use strata_allocator::ha::Leader;
use strata_allocator::security::Security;
use strata_allocator::store::{MemoryStore, RedbStore, Store};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = strata_common::config::flags_or_exit(
        AllocatorCommand::parse_from(std::env::args_os().collect()),
        |args| args.print_config,
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Box::pin(run(args)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-allocator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: AllocatorCommand) -> anyhow::Result<()> {
    let mut config = args.allocator.config();
    config.validate()?;
    // Security settings before anything listens: bad files stop the allocator here.
    let security = std::sync::Arc::new(args.security.security()?);
    config.policy = security.policy().clone();
    let scheme = if security.tls_enabled() {
        "https"
    } else {
        "http"
    };
    // Signals from here on: a replica waiting to lead stops on them too.
    let mut shutdown = Box::pin(strata_common::signal::shutdown());
    // A single allocator opens its store before it listens: a corrupt or busy store stops it
    // here.
    let (local, etcd_tls) = if args.ha.etcd.is_empty() {
        (Some(local_store(&args)?), None)
    } else {
        // Bad etcd TLS flags or files stop the replica before it listens.
        (None, strata_allocator::ha::etcd_tls(&args.ha)?)
    };
    let listener = flags::bind(&args.listen).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    args.security
        .check_exposure("the allocator (--listen)", addr)?;
    if !security.policy().enforced() {
        tracing::warn!(%addr, "authentication is off: anyone who can reach the allocator may register agents, run tasks and act as an operator");
    }
    // A reader that took only the first line has closed the pipe: not an error.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "strata-allocator listening on {addr}");
    let _ = out.flush();
    let http = flags::bind_optional(
        &args.allocator.mesos_listen,
        Some(DEFAULT_MESOS_LISTEN),
        None,
        "the Mesos HTTP API",
        "--mesos-listen",
    )
    .await?;
    let mesos_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(addr) = mesos_addr {
        args.security
            .check_exposure("the Mesos HTTP API (--mesos-listen)", addr)?;
        let _ = writeln!(out, "strata-allocator Mesos HTTP API on {scheme}://{addr}");
        let _ = out.flush();
    }
    // With --etcd: lead first (answering as a follower while another replica does); the
    // registry is in etcd.
    let mut leader = None;
    let mut deposed = None;
    let (listener, http, store): (_, _, Box<dyn Store>) = match local {
        Some(store) => (listener, http, store),
        None => {
            let advertise = args
                .ha
                .advertise
                .clone()
                .unwrap_or_else(|| addr.to_string());
            // Clients compare the leader's address with theirs: name the scheme they dial.
            let advertise = if advertise.contains("://") {
                advertise
            } else {
                format!("{scheme}://{advertise}")
            };
            let me = LeaderAddress::of(&advertise, &hostname(), mesos_addr.map(|a| a.port()))
                .map_err(|e| anyhow::anyhow!("--advertise: {e}"))?;
            let (listener, http, elected) = campaign(
                &args,
                etcd_tls,
                &me,
                listener,
                http,
                security.clone(),
                &mut shutdown,
            )
            .await?;
            let Some(elected) = elected else {
                return Ok(());
            };
            let store = elected.store()?;
            config.leader_epoch = elected.epoch();
            deposed = Some(store.deposed());
            leader = Some(elected);
            tracing::info!(cluster = %args.ha.cluster, "registry store: etcd");
            (listener, http, Box::new(store))
        }
    };
    let metrics = Metrics::new();
    let metrics_listener = flags::bind_optional(
        &args.allocator.metrics_listen,
        Some(DEFAULT_METRICS_LISTEN),
        None,
        "metrics",
        "--metrics-listen",
    )
    .await?;
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            args.security
                .check_exposure("metrics (--metrics-listen)", addr)?;
        }
        strata_allocator::metrics::spawn_secure(listener, metrics.clone(), security.clone());
    }
    let http = http.map(|listener| {
        // `GET /metrics` on the Mesos port too, as on a Mesos master's.
        strata_allocator::mesos::HttpApi {
            extra: Some(strata_allocator::metrics::router(metrics.clone())),
            ..strata_allocator::mesos::HttpApi::new(listener)
        }
    });
    let Some(leader) = leader else {
        strata_allocator::serve_secure(listener, config, store, metrics, http, security, shutdown)
            .await?;
        return Ok(());
    };
    // A leader serves until a signal (then resigns) or until it stops leading (then exits with
    // an error: its supervisor starts it again, as a candidate).
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let stop = {
        let deposed = deposed.context("a leader's store has a deposed signal")?;
        let lost = leader.lost(deposed);
        async move {
            tokio::select! {
                () = shutdown => {}
                why = lost => {
                    tracing::error!(%why, "no longer the leader; stopping");
                    let _ = lost_tx.send(why);
                }
            }
        }
    };
    let served = strata_allocator::serve_replica(
        listener,
        config,
        store,
        metrics,
        http,
        security,
        Some(leader.lease()),
        stop,
    )
    .await;
    match lost_rx.await {
        Ok(why) => anyhow::bail!(
            "stopped leading cluster {}: {why}; start this allocator again to campaign",
            args.ha.cluster
        ),
        Err(_) => {
            // A clean stop: another replica takes over at once.
            leader.resign().await;
            served?;
            Ok(())
        }
    }
}

/// Campaigns to lead `args.ha.cluster` while answering as a follower on duplicates of
/// `listener` and `http` (so the ports never close); gives the sockets back with the
/// leadership, or without it when `shutdown` came first.
async fn campaign(
    args: &AllocatorCommand,
    etcd_tls: Option<tonic::transport::ClientTlsConfig>,
    me: &LeaderAddress,
    listener: TcpListener,
    http: Option<TcpListener>,
    security: std::sync::Arc<Security>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<(TcpListener, Option<TcpListener>, Option<Leader>)> {
    let (listener, grpc_dup) = duplicate(listener)?;
    let (http, http_dup) = match http {
        Some(http) => {
            let (http, dup) = duplicate(http)?;
            (Some(http), Some(dup))
        }
        None => (None, None),
    };
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let answers = tokio::spawn(follower::serve(
        grpc_dup,
        http_dup,
        security,
        args.ha.cluster.clone(),
        leader_rx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let elected = tokio::select! {
        elected = strata_allocator::ha::lead(&args.ha, etcd_tls, me, &leader_tx) => Some(elected),
        () = shutdown => None,
    };
    let _ = stop_tx.send(());
    match answers.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the follower's answers failed"),
        Err(e) => tracing::warn!(error = %e, "the follower's answers panicked"),
    }
    let elected = elected.transpose()?;
    Ok((listener, http, elected))
}

/// A listening socket and a duplicate of it (the same socket, another descriptor).
fn duplicate(listener: TcpListener) -> anyhow::Result<(TcpListener, TcpListener)> {
    let std = listener
        .into_std()
        .context("cannot take the listening socket")?;
    let dup = std
        .try_clone()
        .context("cannot duplicate the listening socket")?;
    Ok((TcpListener::from_std(std)?, TcpListener::from_std(dup)?))
}

/// This host's name, for an `--advertise` (or `--listen`) address on every interface.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The registry store of a single allocator: `--store`, else `registry.redb` in `--work-dir`.
fn local_store(args: &AllocatorCommand) -> anyhow::Result<Box<dyn Store>> {
    Ok(match args.store() {
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
    })
}
