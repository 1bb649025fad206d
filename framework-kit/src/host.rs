//! A framework binary's life, shared by strata-jobs and strata-services: open the state file,
//! bind the control API (outside loopback only with credentials), subscribe with the saved
//! framework id (retrying while the allocator is away), then [`drive`](crate::edge::drive) the
//! core until shutdown. Tasks keep running after it stops: the allocator keeps them for the
//! failover timeout, and the next start adopts them.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use strata_auth::credentials::{Credentials, CredentialsError};
use strata_framework::ClientSecurity;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument as _, info, info_span};

use crate::control::{self, ApiError};
use crate::edge::{self, Decide, Ended, Request};
use crate::state::{StateFile, StoreError};
use crate::subscribe::{self, Subscription};

/// How a framework runs.
#[derive(Debug, Clone)]
pub struct HostConfig {
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

/// What the state file holds: the framework id and the core's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved<S> {
    /// The framework id the allocator gave (empty before the first subscription).
    #[serde(default)]
    pub framework_id: String,
    /// The core's state.
    #[serde(default)]
    pub state: S,
}

/// The state file's bytes for `state` under `framework_id` (what [`Decide::saved`] returns).
pub fn saved_bytes<S: Serialize>(framework_id: &str, state: &S) -> Vec<u8> {
    let saved = Saved {
        framework_id: framework_id.to_owned(),
        state,
    };
    serde_json::to_vec(&saved).expect("the state serializes")
}

/// A framework's core as its host runs it: its state, its names, its control API.
pub trait Hosted: Decide + Sized {
    /// What the state file keeps of it.
    type State: Serialize + DeserializeOwned + Default;
    /// The program (`strata-jobs`), named in logs and in errors about the state file.
    const PROGRAM: &'static str;
    /// The control API in messages (`jobs API`).
    const API: &'static str;
    /// The flag that moves the API (`--jobs-listen`).
    const LISTEN_FLAG: &'static str;
    /// The flag that gives the API credentials (`--jobs-credentials`).
    const CREDENTIALS_FLAG: &'static str;
    /// The core over a saved state, taking offers in `role`.
    fn new(state: Self::State, role: &str) -> Self;
    /// The control API, sending its requests to the core.
    fn router(
        requests: mpsc::Sender<Request<Self::Op, Self::Answer>>,
        credentials: Option<Arc<Credentials>>,
    ) -> Router;
}

/// The framework cannot run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The state file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API's address.
    #[error("cannot listen on {addr} for the {api}: {source}; pick another {flag}")]
    Bind {
        /// The API.
        api: &'static str,
        /// The address.
        addr: String,
        /// The flag that moves it.
        flag: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Exposure without credentials.
    #[error(transparent)]
    Exposed(#[from] ApiError),
    /// The credentials file.
    #[error("cannot read the credentials for the {api}: {source}")]
    Credentials {
        /// The API.
        api: &'static str,
        /// Why.
        source: CredentialsError,
    },
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
pub struct Bound<C: Hosted> {
    config: HostConfig,
    listener: TcpListener,
    addr: SocketAddr,
    store: StateFile<Saved<C::State>>,
    saved: Saved<C::State>,
    credentials: Option<Arc<Credentials>>,
}

/// Opens the state and binds the API (refusing outside loopback without credentials).
pub async fn bind<C: Hosted>(config: HostConfig) -> Result<Bound<C>, HostError> {
    let store = StateFile::open(&config.state_dir, C::PROGRAM)?;
    let saved = store.load()?;
    let credentials = match &config.credentials {
        Some(path) => Some(Arc::new(Credentials::load(path).map_err(|source| {
            HostError::Credentials {
                api: C::API,
                source,
            }
        })?)),
        None => None,
    };
    let bind_error = |source| HostError::Bind {
        api: C::API,
        addr: config.listen.clone(),
        flag: C::LISTEN_FLAG,
        source,
    };
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    control::check_exposure(addr, credentials.is_some(), C::API, C::CREDENTIALS_FLAG)?;
    Ok(Bound {
        config,
        listener,
        addr,
        store,
        saved,
        credentials,
    })
}

impl<C: Hosted> Bound<C> {
    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Subscribes (retrying while the allocator cannot be reached), serves the API and drives
    /// the core until `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), HostError> {
        let Bound {
            config,
            listener,
            addr,
            store,
            mut saved,
            credentials,
        } = self;
        let mut shutdown = std::pin::pin!(shutdown);
        let (requests_tx, mut requests) = mpsc::channel(64);
        let (stop_api, api_stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(strata_common::serve::serve(
            listener,
            C::router(requests_tx, credentials),
            None,
            async move {
                let _ = api_stopped.await;
            },
        ));
        info!(%addr, api = C::API, state = %store.path().display(), "control API listening");
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
            subscribed = subscribe::subscribe(subscription) => Some(subscribed.map_err(|source| HostError::Subscribe {
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
        let mut core = C::new(std::mem::take(&mut saved.state), &config.role);
        let span =
            info_span!("framework", program = C::PROGRAM, framework_id = %client.framework_id());
        let ended = edge::drive(
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
            Ok(Ended::Removed) => Err(HostError::Stopped {
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
