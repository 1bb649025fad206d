//! `strata local`: an allocator and one agent in this process (the two libraries on one tokio
//! runtime), until Ctrl-C or SIGTERM; then the agent stops first (killing its tasks and
//! reporting them) and the allocator after it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tracing::{info, warn};

use crate::args::{DEFAULT_ALLOCATOR, LocalArgs};

/// How long the agent may take to kill its tasks and report them on shutdown.
const AGENT_STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a framework (jobs, services) may take to stop (it saves its state; its tasks stay).
const FRAMEWORK_STOP_WAIT: Duration = Duration::from_secs(10);
/// How long the allocator may take to close its streams on shutdown.
const ALLOCATOR_STOP_WAIT: Duration = Duration::from_secs(10);

/// The default agent work directory: `$TMPDIR/strata-local` (or `/tmp/strata-local`).
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join("strata-local")
}

/// The first lines `strata local` prints: where it listens, and what to try.
pub fn banner(url: &str, work_dir: &std::path::Path) -> String {
    let allocator_flag = if url == DEFAULT_ALLOCATOR {
        String::new()
    } else {
        format!("--allocator {url} ")
    };
    format!(
        "strata local: allocator listening on {url}; agent work dir {}\n\
         try: strata {allocator_flag}run -- echo hello   (then: strata {allocator_flag}ps --all); Ctrl-C stops\n",
        work_dir.display()
    )
}

/// An allocator and an agent running in this process.
struct Running {
    url: String,
    work_dir: PathBuf,
    mesos_url: Option<String>,
    pki: Option<crate::local_secure::LocalPki>,
    agent: JoinHandle<Result<(), strata_agent::AgentError>>,
    allocator: JoinHandle<Result<(), strata_allocator::ServeError>>,
    stop_agent: oneshot::Sender<()>,
    stop_allocator: oneshot::Sender<()>,
    /// The frameworks of `--with`: `jobs`, `services`.
    frameworks: Vec<LocalFramework>,
}

/// A framework inside strata local (strata-jobs, strata-services).
struct LocalFramework {
    /// `jobs` or `services`.
    name: &'static str,
    addr: std::net::SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
    stop: oneshot::Sender<()>,
}

impl LocalFramework {
    /// Runs a bound framework until told to stop.
    fn spawn<F, E>(
        name: &'static str,
        addr: std::net::SocketAddr,
        run: impl FnOnce(Stop) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let work = run(Box::pin(async move {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move { work.await.map_err(Into::into) });
        Self {
            name,
            addr,
            task,
            stop,
        }
    }
}

/// The future that tells a framework inside strata local to stop.
type Stop = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `strata local` until a signal; errors if either part fails.
pub async fn local(args: LocalArgs) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut running = start(args).await?;
    info!(allocator = %running.url, work_dir = %running.work_dir.display(), "strata local started");
    // A closed stdout does not stop the cluster: it keeps logging to stderr until a signal.
    let mut printed = out!("{}", banner(&running.url, &running.work_dir));
    if let Some(mesos_url) = &running.mesos_url {
        printed = printed.and_then(|()| {
            outln!(
                "strata local: Mesos scheduler HTTP API on {mesos_url} (point Mesos frameworks at it)"
            )
        });
    }
    if let Some(pki) = &running.pki {
        printed = printed.and_then(|()| out!("{}", pki.usage()));
    }
    for framework in &running.frameworks {
        let (default, command) = match framework.name {
            "jobs" => (strata_jobs::flags::DEFAULT_LISTEN, "job"),
            _ => (strata_services::flags::DEFAULT_LISTEN, "app"),
        };
        let flag = if framework.addr.to_string() == default {
            String::new()
        } else {
            format!("--{} {} ", framework.name, framework.addr)
        };
        printed = printed.and_then(|()| {
            outln!(
                "strata local: {} framework API on http://{}; try: strata {command} {flag}list",
                framework.name,
                framework.addr
            )
        });
    }
    if let Err(e) = printed {
        warn!("cannot print the banner: {e:#}");
    }

    // Run until a signal, or until one of the two stops on its own (an error).
    let mut agent_done = None;
    let mut allocator_done = None;
    tokio::select! {
        _ = sigint.recv() => eprintln!("strata local: interrupted; stopping the agent (killing its tasks), then the allocator"),
        _ = sigterm.recv() => eprintln!("strata local: terminated; stopping the agent (killing its tasks), then the allocator"),
        result = &mut running.agent => agent_done = Some(result),
        result = &mut running.allocator => allocator_done = Some(result),
    }
    let stopped_by_signal = agent_done.is_none() && allocator_done.is_none();
    stop(running, agent_done, allocator_done, &mut sigint).await?;
    if stopped_by_signal {
        eprintln!("strata local: stopped");
    }
    Ok(())
}

/// Binds the allocator's listeners and starts the allocator and the agent as `args` say.
async fn start(args: LocalArgs) -> anyhow::Result<Running> {
    let mut config = args.allocator.config();
    config.validate()?;
    let listener = strata_allocator::flags::bind(&args.listen).await?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {}", args.listen))?;
    check_exposure(args.secure, "the allocator (--listen)", bound)?;
    let work_dir = args.work_dir.clone().unwrap_or_else(default_work_dir);
    let pki = if args.secure {
        let ip = bound.ip();
        let hosts: Vec<String> = if ip.is_loopback() || ip.is_unspecified() {
            Vec::new()
        } else {
            vec![ip.to_string()]
        };
        Some(crate::local_secure::prepare(&work_dir, &hosts)?)
    } else {
        None
    };
    let security = std::sync::Arc::new(match &pki {
        Some(pki) => secure_allocator(pki)?,
        None => strata_allocator::security::Security::open(),
    });
    config.policy = security.policy().clone();
    let scheme = if pki.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{bound}");

    // The agent's /health, /usage and /metrics on a free loopback port unless --http-listen
    // says otherwise, so local clusters (and tests running several) never collide; its address
    // is in `strata agents`.
    let mut agent_config = args.agent.config(
        url.clone(),
        work_dir.clone(),
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    // A local cluster goes away whole: its tasks end with it.
    agent_config.kill_tasks_on_shutdown = true;
    if let Some(pki) = &pki {
        agent_config.allocator_tls = strata_auth::client::ClientSecurity {
            ca: Some(pki.ca.clone()),
            cert: Some(pki.agent.cert.clone()),
            key: Some(pki.agent.key.clone()),
            token: None,
        };
        agent_config.http_security = strata_agent::http_auth::HttpSecurityConfig {
            cert: Some(pki.agent.cert.clone()),
            key: Some(pki.agent.key.clone()),
            client_ca: Some(pki.ca.clone()),
            credentials: Some(pki.credentials.clone()),
            acls: Some(pki.acls.clone()),
            insecure: false,
        };
    }

    // The allocator's registry (framework ids, weights, quota, reservations) survives a
    // restart of `strata local` with the same work dir.
    let registry = work_dir.join("allocator").join("registry.redb");
    let store = strata_allocator::store::RedbStore::open(&registry)?;
    let metrics = strata_allocator::Metrics::new();
    // Prometheus' own port only when asked for: the metrics are on the Mesos HTTP port too.
    let metrics_listener = strata_allocator::flags::bind_optional(
        &args.allocator.metrics_listen,
        None,
        None,
        "metrics",
        "--metrics-listen",
    )
    .await?;
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            check_exposure(args.secure, "metrics (--metrics-listen)", addr)?;
        }
        strata_allocator::metrics::spawn_secure(listener, metrics.clone(), security.clone());
    }
    let http = strata_allocator::flags::bind_optional(
        &args.allocator.mesos_listen,
        Some(strata_allocator::flags::DEFAULT_MESOS_LISTEN),
        Some("127.0.0.1:0"),
        "the Mesos HTTP API",
        "--mesos-listen",
    )
    .await?;
    let mesos_url = match &http {
        Some(l) => {
            let addr = l
                .local_addr()
                .context("cannot read the Mesos HTTP API's address")?;
            check_exposure(args.secure, "the Mesos HTTP API (--mesos-listen)", addr)?;
            Some(format!("{scheme}://{addr}"))
        }
        None => None,
    };
    let http = http.map(|listener| strata_allocator::mesos::HttpApi {
        extra: Some(strata_allocator::metrics::router(metrics.clone())),
        ..strata_allocator::mesos::HttpApi::new(listener)
    });
    let (stop_allocator, allocator_stopped) = oneshot::channel::<()>();
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let allocator = tokio::spawn(strata_allocator::serve_secure(
        listener,
        config,
        Box::new(store),
        metrics,
        http,
        security,
        async move {
            let _ = allocator_stopped.await;
        },
    ));
    let agent = tokio::spawn(strata_agent::run(agent_config, async move {
        let _ = agent_stopped.await;
    }));
    // The frameworks take the cluster's CA and operator token, and their APIs its tokens.
    let security = match &pki {
        Some(pki) => strata_framework::ClientSecurity {
            ca: Some(pki.ca.clone()),
            token: Some(
                std::fs::read_to_string(&pki.token_file)
                    .with_context(|| format!("cannot read {}", pki.token_file.display()))?
                    .trim()
                    .to_owned(),
            ),
            ..strata_framework::ClientSecurity::none()
        },
        None => strata_framework::ClientSecurity::none(),
    };
    let credentials = pki.as_ref().map(|p| p.credentials.clone());
    let mut frameworks = Vec::new();
    if args.with.iter().any(|w| w == "jobs") {
        let mut jobs_args = args.jobs.clone();
        jobs_args
            .jobs_state_dir
            .get_or_insert_with(|| work_dir.join("jobs"));
        if jobs_args.jobs_credentials.is_none() {
            jobs_args.jobs_credentials.clone_from(&credentials);
        }
        let bound = strata_jobs::bind(jobs_args.config(url.clone(), security.clone())).await?;
        frameworks.push(LocalFramework::spawn("jobs", bound.addr(), |stop| {
            bound.run(stop)
        }));
    }
    if args.with.iter().any(|w| w == "services") {
        let mut services_args = args.services.clone();
        services_args
            .services_state_dir
            .get_or_insert_with(|| work_dir.join("services"));
        if services_args.services_credentials.is_none() {
            services_args.services_credentials.clone_from(&credentials);
        }
        let bound =
            strata_services::bind(services_args.config(url.clone(), security.clone())).await?;
        frameworks.push(LocalFramework::spawn("services", bound.addr(), |stop| {
            bound.run(stop)
        }));
    }
    Ok(Running {
        frameworks,
        url,
        work_dir,
        mesos_url,
        pki,
        agent,
        allocator,
        stop_agent,
        stop_allocator,
    })
}

/// The allocator's security settings for a secure local cluster: its certificate, client
/// certificates from the local CA, the operator's token, the ACL file, the audit log.
fn secure_allocator(
    pki: &crate::local_secure::LocalPki,
) -> anyhow::Result<strata_allocator::security::Security> {
    let credentials = strata_auth::credentials::Credentials::load(&pki.credentials)?;
    let policy = strata_auth::Policy::Enforced(strata_auth::Acls::load(&pki.acls)?);
    let tls = strata_allocator::security::ServerTls {
        cert: pki.allocator.cert.clone(),
        key: pki.allocator.key.clone(),
        client_ca: Some(pki.ca.clone()),
    };
    Ok(strata_allocator::security::Security::new(
        policy,
        credentials,
        Some(tls),
        Some(&pki.audit_log),
    )?)
}

/// Refuses a listener outside loopback unless `--secure` gives it TLS and authentication.
fn check_exposure(secure: bool, what: &str, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    if secure || addr.ip().is_loopback() {
        return Ok(());
    }
    bail!(
        "refusing to serve {what} on {addr} without TLS and authentication: anyone who can \
         reach it could run tasks and act as an operator. Listen on 127.0.0.1, or pass --secure"
    )
}

/// Stops the agent (so that its tasks are killed and their updates reach the allocator), then
/// the allocator, each within its time limit (a second Ctrl-C stops waiting for the agent);
/// errors when either failed. `agent_done` and `allocator_done` are the ones that ended already.
async fn stop(
    mut running: Running,
    agent_done: Option<Result<Result<(), strata_agent::AgentError>, JoinError>>,
    allocator_done: Option<Result<Result<(), strata_allocator::ServeError>, JoinError>>,
    sigint: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    for framework in std::mem::take(&mut running.frameworks) {
        let name = framework.name;
        let _ = framework.stop.send(());
        match tokio::time::timeout(FRAMEWORK_STOP_WAIT, framework.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!("the {name} framework failed: {e:#}"),
            Ok(Err(e)) => warn!("the {name} framework task failed: {e}"),
            Err(_) => warn!("the {name} framework did not stop in time"),
        }
    }
    let _ = running.stop_agent.send(());
    let agent_result = match agent_done {
        Some(result) => Some(result),
        None => {
            tokio::select! {
                result = tokio::time::timeout(AGENT_STOP_WAIT, &mut running.agent) => result.ok(),
                _ = sigint.recv() => {
                    eprintln!("strata local: interrupted again; not waiting for the agent");
                    None
                }
            }
        }
    };
    if agent_result.is_none() {
        running.agent.abort();
        warn!("the agent did not stop in time; its tasks may still be running");
    }

    let _ = running.stop_allocator.send(());
    let allocator_result = match allocator_done {
        Some(result) => Some(result),
        None => tokio::time::timeout(ALLOCATOR_STOP_WAIT, &mut running.allocator)
            .await
            .ok(),
    };
    if allocator_result.is_none() {
        running.allocator.abort();
        warn!("the allocator did not stop in time");
    }

    let mut failures = Vec::new();
    match agent_result {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => failures.push(format!("the agent failed: {e}")),
        Some(Err(e)) => failures.push(format!("the agent task failed: {e}")),
    }
    match allocator_result {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => failures.push(format!("the allocator failed: {e}")),
        Some(Err(e)) => failures.push(format!("the allocator task failed: {e}")),
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_says_where_and_what_to_try() {
        let b = banner(
            "http://127.0.0.1:5050",
            std::path::Path::new("/tmp/strata-local"),
        );
        assert!(b.starts_with(
            "strata local: allocator listening on http://127.0.0.1:5050; agent work dir /tmp/strata-local\n"
        ));
        assert!(b.contains("try: strata run -- echo hello"), "{b}");
        let other = banner("http://127.0.0.1:41234", std::path::Path::new("/w"));
        assert!(
            other.contains("try: strata --allocator http://127.0.0.1:41234 run -- echo hello"),
            "{other}"
        );
    }

    #[test]
    fn exposed_listeners_need_secure() {
        let exposed: std::net::SocketAddr = "0.0.0.0:5050".parse().unwrap();
        let err = check_exposure(false, "the allocator (--listen)", exposed).unwrap_err();
        assert!(err.to_string().contains("pass --secure"), "{err}");
        assert!(check_exposure(true, "x", exposed).is_ok());
        assert!(check_exposure(false, "x", "127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(check_exposure(false, "x", "[::1]:1".parse().unwrap()).is_ok());
    }

    #[test]
    fn default_work_dir_is_under_tmp() {
        assert!(default_work_dir().ends_with("strata-local"));
    }
}
