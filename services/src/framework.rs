//! The framework's edge: subscribes through the SDK (keeping its framework id and a failover
//! timeout, so instances keep running while it is away), feeds the core the clock (a tick every
//! second), offers, updates and the API's requests, saves the state before carrying out what
//! the core decided, and carries it out.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use strata_framework::{ClientSecurity, Event};
use strata_framework_kit::subscribe::Subscription;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument as _, info, info_span, warn};

use crate::api::{self, ApiRequest, Op};
use crate::core::{Core, CoreError};
use crate::spec::{AppSpec, SpecError};
use crate::store::{PROGRAM, Saved, Store, StoreError};
use strata_framework::proto::TaskStatus;
use strata_framework_kit::command::Command;
use strata_framework_kit::edge::{Decide, Ended};

/// How the framework runs.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
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
    /// Tokens the API accepts; none: no authentication, loopback only.
    pub credentials: Option<PathBuf>,
}

/// The framework cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The state file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API's address.
    #[error(
        "cannot listen on {addr} for the services API: {source}; pick another --services-listen"
    )]
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
    #[error("cannot read the credentials for the services API: {0}")]
    Credentials(#[from] strata_auth::credentials::CredentialsError),
    /// The allocator removed the framework.
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
    config: ServicesConfig,
    listener: TcpListener,
    addr: SocketAddr,
    store: Store,
    saved: Saved,
    credentials: Option<Arc<strata_auth::credentials::Credentials>>,
}

/// Opens the state and binds the API (refusing outside loopback without credentials).
pub async fn bind(config: ServicesConfig) -> Result<Bound, ServicesError> {
    let store = Store::open(&config.state_dir, PROGRAM)?;
    let saved = store.load()?;
    let credentials = match &config.credentials {
        Some(path) => Some(Arc::new(strata_auth::credentials::Credentials::load(path)?)),
        None => None,
    };
    let bind_error = |source| ServicesError::Bind {
        addr: config.listen.clone(),
        source,
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
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

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Bound {
    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Subscribes (retrying while the allocator cannot be reached), serves the API and keeps
    /// the apps until `shutdown`. Instances keep running after it stops.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServicesError> {
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
        info!(%addr, state = %store.path().display(), "services API listening");
        let subscription = Subscription {
            allocator: &config.allocator,
            security: &config.security,
            name: &config.name,
            role: &config.role,
            failover_timeout: config.failover_timeout,
            framework_id: &saved.framework_id,
        };
        let subscribed = tokio::select! {
            () = &mut shutdown => None,
            subscribed = strata_framework_kit::subscribe::subscribe(subscription) => Some(subscribed.map_err(|source| ServicesError::Subscribe {
                allocator: config.allocator.clone(),
                source,
            })?),
        };
        let Some((client, mut events)) = subscribed else {
            let _ = stop_api.send(());
            return Ok(());
        };
        saved.framework_id = client.framework_id();
        store.save(&saved)?;
        let mut core = Core::new(std::mem::take(&mut saved.state));
        let span = info_span!("services", framework_id = %client.framework_id());
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
            Ok(Ended::Removed) => Err(ServicesError::Stopped {
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

fn on_event(core: &mut Core, event: Event) {
    let now = now();
    match event {
        Event::Subscribed { framework_id } => {
            info!(%framework_id, "subscribed; reconciling instances");
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
        handle(self, now(), op)
    }

    fn tick(&mut self) {
        Core::tick(self, now());
    }

    fn update(&mut self, status: &TaskStatus) {
        Core::update(self, now(), status);
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
pub fn handle(core: &mut Core, now: Duration, op: Op) -> Result<Value, CoreError> {
    let summary = |core: &Core, id: &str| -> Result<Value, CoreError> {
        let app = core.app(id).ok_or_else(|| CoreError::NoApp {
            app_id: strata_proto::ids::shorten(id, 64),
        })?;
        let running = app
            .instances
            .values()
            .filter(|i| i.state == crate::core::InstanceState::Running)
            .count();
        Ok(json!({
            "id": id,
            "version": app.version,
            "instances": app.spec.instances,
            "running": running,
            "healthy": core.healthy(id),
            "deployment": app.deployment.as_ref().map(|d| d.kind),
            "last_good_version": app.last_good.as_ref().map(|t| t.version),
            "destroying": app.destroying,
        }))
    };
    match op {
        Op::Deploy(text) => {
            let spec = AppSpec::parse(&text)?;
            let id = spec.id.clone();
            let version = core.deploy(now, spec)?;
            Ok(json!({ "id": id, "version": version }))
        }
        Op::List => Ok(Value::Array(
            core.state()
                .apps
                .keys()
                .filter_map(|id| summary(core, id).ok())
                .collect(),
        )),
        Op::Show(id) => {
            let mut value = summary(core, &id)?;
            let app = core.app(&id).expect("summarized above");
            value["spec"] = serde_json::to_value(&app.spec).expect("specs serialize");
            value["instance_list"] =
                serde_json::to_value(&app.instances).expect("instances serialize");
            Ok(value)
        }
        Op::Plan(id) => Ok(serde_json::to_value(core.plan(now, &id)?).expect("plans serialize")),
        Op::Scale(id, body) => {
            let instances = body.trim().parse::<u32>().map_err(|_| {
                CoreError::Spec(SpecError::Field {
                    id: strata_proto::ids::shorten(&id, 64),
                    field: "instances",
                    reason: format!(
                        "{:?} is not a count",
                        strata_proto::ids::shorten(body.trim(), 32)
                    ),
                })
            })?;
            let version = core.scale(now, &id, instances)?;
            Ok(json!({ "id": id, "version": version, "instances": instances }))
        }
        Op::Restart(id) => {
            let version = core.restart(now, &id)?;
            Ok(json!({ "id": id, "version": version }))
        }
        Op::Suspend(id) => {
            let version = core.scale(now, &id, 0)?;
            Ok(json!({ "id": id, "version": version, "instances": 0 }))
        }
        Op::Destroy(id) => {
            core.destroy(now, &id)?;
            Ok(json!({ "id": id, "destroyed": true }))
        }
    }
}
