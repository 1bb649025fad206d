//! The framework's edge: subscribes through the SDK, feeds the scheduler core the clock (a tick
//! every second), offers, updates and the API's requests, saves its state before carrying out
//! what it decided, and carries it out.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use strata_framework::{ClientSecurity, Event, Framework};
use strata_framework_kit::subscribe::Subscription;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument as _, info, info_span, warn};

use crate::api::{self, ApiRequest, Op};
use crate::core::{Core, CoreError};
use crate::spec::JobSpec;
use crate::store::{Saved, Store, StoreError};
use strata_framework::proto::TaskStatus;
use strata_framework_kit::command::Command;
use strata_framework_kit::edge::{Decide, Ended};

/// How the framework runs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The allocator (`http://127.0.0.1:5050`).
    pub allocator: String,
    /// TLS files and token for the allocator.
    pub security: ClientSecurity,
    /// Where the control API listens.
    pub listen: String,
    /// Where the state file is kept.
    pub state_dir: PathBuf,
    /// The role offers are taken in.
    pub role: String,
    /// The framework's name.
    pub name: String,
    /// How long the allocator keeps the framework's tasks while it is away.
    pub failover_timeout: Duration,
    /// Tokens the API accepts (`strata token create --file`); none: no authentication,
    /// loopback only.
    pub credentials: Option<PathBuf>,
}

/// The framework cannot run.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The state file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API's address.
    #[error("cannot listen on {addr} for the jobs API: {source}; pick another --listen")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Exposure without credentials.
    #[error(transparent)]
    Exposed(#[from] api::ApiError),
    /// The credentials file.
    #[error("cannot read the credentials for the jobs API: {0}")]
    Credentials(#[from] strata_auth::credentials::CredentialsError),
    /// The allocator refused or went away for good.
    #[error("the framework {framework_id} stopped: {reason}")]
    Stopped {
        /// The framework.
        framework_id: String,
        /// Why.
        reason: String,
    },
    /// The subscription cannot be made.
    #[error("cannot subscribe to the allocator at {allocator}: {source}")]
    Subscribe {
        /// The allocator.
        allocator: String,
        /// Why.
        source: strata_framework::Error,
    },
}

/// The framework with its API bound, not yet subscribed.
#[derive(Debug)]
pub struct Bound {
    config: JobsConfig,
    listener: TcpListener,
    addr: SocketAddr,
    store: Store,
    saved: Saved,
    credentials: Option<Arc<strata_auth::credentials::Credentials>>,
}

/// Opens the state and binds the API (refusing outside loopback without credentials).
pub async fn bind(config: JobsConfig) -> Result<Bound, JobsError> {
    let store = Store::open(&config.state_dir, crate::store::PROGRAM)?;
    let saved = store.load()?;
    let credentials = match &config.credentials {
        Some(path) => Some(Arc::new(strata_auth::credentials::Credentials::load(path)?)),
        None => None,
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| JobsError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| JobsError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    api::check_exposure(addr, credentials.is_some())?;
    Ok(Bound {
        config,
        listener,
        addr,
        store,
        saved,
        credentials,
    })
}

impl Bound {
    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Subscribes (retrying while the allocator cannot be reached), serves the API and runs
    /// jobs until `shutdown`. Tasks keep running after it stops: the allocator keeps them for
    /// the failover timeout, and the next start adopts them.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), JobsError> {
        let Bound {
            config,
            listener,
            addr,
            store,
            mut saved,
            credentials,
        } = self;
        let mut shutdown = std::pin::pin!(shutdown);
        let (requests_tx, mut requests) = mpsc::channel::<ApiRequest>(64);
        let (stop_api, api_stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(strata_common::serve::serve(
            listener,
            api::router(requests_tx, credentials),
            None,
            async move {
                let _ = api_stopped.await;
            },
        ));
        info!(%addr, state = %store.path().display(), "jobs API listening");

        let subscribed = tokio::select! {
            () = &mut shutdown => None,
            subscribed = subscribe(&config, &saved.framework_id) => Some(subscribed?),
        };
        let Some((client, mut events)) = subscribed else {
            let _ = stop_api.send(());
            return Ok(());
        };
        saved.framework_id = client.framework_id();
        store.save(&saved)?;
        let mut core = Core::new(std::mem::take(&mut saved.state), config.role.clone());
        let span = info_span!("jobs", framework_id = %client.framework_id());
        let ended = strata_framework_kit::edge::drive(
            &mut core,
            &client,
            &mut events,
            &mut requests,
            &mut shutdown,
            |bytes| store.save_bytes(bytes),
        )
        .instrument(span)
        .await;
        let result = match ended {
            Ok(Ended::Shutdown) => Ok(()),
            Ok(Ended::Removed) => Err(JobsError::Stopped {
                framework_id: client.framework_id(),
                reason:
                    "the allocator removed it (torn down, or away longer than its failover timeout)"
                        .into(),
            }),
            Err(e) => Err(e.into()),
        };
        let _ = stop_api.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        result
    }
}

/// Subscribes with the saved framework id (see [`strata_framework_kit::subscribe`]).
async fn subscribe(
    config: &JobsConfig,
    framework_id: &str,
) -> Result<(Framework, mpsc::Receiver<Event>), JobsError> {
    strata_framework_kit::subscribe::subscribe(Subscription {
        allocator: &config.allocator,
        security: &config.security,
        name: &config.name,
        role: &config.role,
        failover_timeout: config.failover_timeout,
        framework_id,
    })
    .await
    .map_err(|source| JobsError::Subscribe {
        allocator: config.allocator.clone(),
        source,
    })
}

fn on_event(core: &mut Core, event: Event) {
    let now = Timestamp::now();
    match event {
        Event::Subscribed { framework_id } => {
            info!(%framework_id, "subscribed; reconciling active runs");
            core.subscribed();
        }
        Event::Offers(offers) => core.offers(now, offers),
        Event::Update(status) => core.update(now, &status),
        Event::Error { message } => warn!(%message, "the allocator reports an error"),
        Event::Disconnected { reason } => warn!(%reason, "disconnected; reconnecting"),
        Event::Failure { agent_id } => warn!(%agent_id, "agent lost"),
        Event::Rescind { .. } | Event::Heartbeat => {}
    }
}

impl Decide for Core {
    type Op = Op;
    type Answer = Result<Value, CoreError>;

    fn event(&mut self, event: Event) {
        on_event(self, event);
    }

    fn request(&mut self, op: Op) -> Self::Answer {
        handle(self, Timestamp::now(), op)
    }

    fn tick(&mut self) {
        Core::tick(self, Timestamp::now());
    }

    fn update(&mut self, status: &TaskStatus) {
        Core::update(self, Timestamp::now(), status);
    }

    fn take_commands(&mut self) -> Vec<Command> {
        Core::take_commands(self)
    }

    fn saved(&self, framework_id: &str) -> Vec<u8> {
        let saved = Saved {
            framework_id: framework_id.to_owned(),
            state: self.state().clone(),
        };
        serde_json::to_vec(&saved).expect("the state serializes")
    }
}

/// Answers one API request.
pub fn handle(core: &mut Core, now: Timestamp, op: Op) -> Result<Value, CoreError> {
    let no_job = |id: &str| CoreError::NoJob {
        job_id: strata_proto::ids::shorten(id, 64),
    };
    match op {
        Op::Put(text) => {
            let spec = JobSpec::parse(&text)?;
            let id = spec.id.clone();
            core.put_job(now, spec)?;
            let next = core.job(&id).and_then(|j| j.next_fire);
            Ok(json!({ "id": id, "next_run": next }))
        }
        Op::Remove(id) => {
            core.remove_job(&id)?;
            Ok(json!({ "id": id, "removed": true }))
        }
        Op::Run(id) => {
            let run_id = core.run_now(now, &id)?;
            Ok(json!({ "id": id, "run_id": run_id }))
        }
        Op::List => Ok(Value::Array(
            core.state()
                .jobs
                .iter()
                .map(|(id, job)| {
                    let last = job.history.back();
                    json!({
                        "id": id,
                        "description": job.spec.description,
                        "schedule": job.spec.schedule.as_ref().map(|s| format!("{} ({})", s.cron, s.timezone)),
                        "next_run": job.next_fire,
                        "active_runs": job.active.len(),
                        "last_outcome": last.map(|r| r.outcome.label()),
                        "last_exit_code": last.and_then(|r| r.exit_code),
                    })
                })
                .collect(),
        )),
        Op::Get(id) => {
            let job = core.job(&id).ok_or_else(|| no_job(&id))?;
            Ok(json!({ "spec": job.spec, "next_run": job.next_fire, "active": job.active }))
        }
        Op::History(id) => {
            let job = core.job(&id).ok_or_else(|| no_job(&id))?;
            Ok(serde_json::to_value(&job.history).expect("records serialize"))
        }
    }
}
