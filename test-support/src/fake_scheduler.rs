//! The allocator's SchedulerService, faked over real gRPC on 127.0.0.1: what a framework (the
//! SDK) under test subscribes to. Each accepted subscription is handed to the test as a
//! [`Session`] to script: the calls it reads, the events it sends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use strata_proto::scheduler_service_server::{SchedulerService, SchedulerServiceServer};
use strata_proto::{Call, FrameworkInfo, call, event};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::wait::within;

/// One accepted subscription, handed to the test to script.
#[derive(Debug)]
pub struct Session {
    /// The FrameworkInfo of its SUBSCRIBE (with the id the fake gave a new framework).
    pub info: FrameworkInfo,
    /// The `suppressed_roles` of its SUBSCRIBE.
    pub suppressed_roles: Vec<String>,
    /// The calls after SUBSCRIBE.
    pub calls: Streaming<Call>,
    /// The events to send, after the SUBSCRIBED the fake sent.
    pub events: mpsc::UnboundedSender<Result<strata_proto::Event, Status>>,
    /// The `authorization` metadata of the Subscribe call, if any.
    pub authorization: Option<String>,
    /// How many certificates the client presented (TLS only; verified against the CA).
    pub client_certs: usize,
}

impl Session {
    /// Sends `event`.
    pub fn send(&self, event: event::Event) {
        self.events
            .send(Ok(strata_proto::Event { event: Some(event) }))
            .expect("the SDK is reading the stream");
    }

    /// The next call, within [`STEP`](crate::STEP).
    pub async fn next_call(&mut self) -> call::Call {
        within("a call", self.calls.message())
            .await
            .expect("a call, not a stream error")
            .expect("a call, not the end of the stream")
            .call
            .expect("a call with a body")
    }
}

/// The service: new frameworks get ids `f-1`, `f-2`, ...; a known id re-subscribes once
/// `accept_resubscribe` is true; an unknown one is refused with NOT_FOUND, as the allocator does.
struct Service {
    sessions: mpsc::UnboundedSender<Session>,
    known: Arc<Mutex<HashSet<String>>>,
    accept_resubscribe: watch::Receiver<bool>,
    leader_epoch: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl SchedulerService for Service {
    type SubscribeStream = UnboundedReceiverStream<Result<strata_proto::Event, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<Call>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let client_certs = request.peer_certs().map_or(0, |certs| certs.len());
        let mut calls = request.into_inner();
        let first = calls
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no SUBSCRIBE"))?;
        let Some(call::Call::Subscribe(subscribe)) = first.call else {
            return Err(Status::invalid_argument("the first call must be SUBSCRIBE"));
        };
        let suppressed_roles = subscribe.suppressed_roles;
        let mut info = subscribe.framework_info.unwrap_or_default();
        if info.id.is_empty() {
            let mut known = self.known.lock().expect("lock");
            info.id = format!("f-{}", known.len() + 1);
            known.insert(info.id.clone());
        } else {
            let mut gate = self.accept_resubscribe.clone();
            gate.wait_for(|open| *open)
                .await
                .map_err(|_| Status::unavailable("fake stopped"))?;
            if !self.known.lock().expect("lock").contains(&info.id) {
                return Err(Status::not_found(format!(
                    "unknown framework id {}: subscribe without an id to register a new framework",
                    info.id
                )));
            }
        }
        let (events, rx) = mpsc::unbounded_channel();
        let _ = events.send(Ok(strata_proto::Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: info.id.clone(),
                heartbeat_interval_seconds: 15.0,
                leader_epoch: self.leader_epoch.load(std::sync::atomic::Ordering::SeqCst),
            })),
        }));
        let _ = self.sessions.send(Session {
            info,
            suppressed_roles,
            calls,
            events,
            authorization,
            client_certs,
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A fake allocator serving SchedulerService; the server stops on drop.
#[derive(Debug)]
pub struct FakeSchedulerService {
    /// `http://127.0.0.1:PORT` (`https://` when served with TLS).
    pub addr: String,
    /// Accepted subscriptions, in order.
    pub sessions: mpsc::UnboundedReceiver<Session>,
    /// The framework ids it knows; clearing it makes it refuse re-subscriptions.
    pub known: Arc<Mutex<HashSet<String>>>,
    /// Re-subscriptions (with an id) wait until this is true (it starts true).
    pub accept_resubscribe: watch::Sender<bool>,
    /// The leader term its SUBSCRIBED carries (0 at first: a single allocator); set it to
    /// play a replica elected at that term, or a deposed one.
    pub leader_epoch: Arc<std::sync::atomic::AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeSchedulerService {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Serves on a free port of 127.0.0.1, over TLS with `tls` when given.
    pub async fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = format!("{scheme}://{}", listener.local_addr().expect("local addr"));
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let known = Arc::new(Mutex::new(HashSet::new()));
        let (accept_resubscribe, gate) = watch::channel(true);
        let leader_epoch = Arc::default();
        let service = Service {
            sessions: sessions_tx,
            known: Arc::clone(&known),
            accept_resubscribe: gate,
            leader_epoch: Arc::clone(&leader_epoch),
        };
        let server = tokio::spawn(async move {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).expect("a valid TLS configuration");
            }
            builder
                .add_service(SchedulerServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("fake allocator serves");
        });
        Self {
            addr,
            sessions,
            known,
            accept_resubscribe,
            leader_epoch,
            server,
        }
    }

    /// The next accepted subscription, within [`STEP`](crate::STEP).
    pub async fn session(&mut self) -> Session {
        within("a subscription", self.sessions.recv())
            .await
            .expect("the fake is running")
    }
}

impl Drop for FakeSchedulerService {
    fn drop(&mut self) {
        self.server.abort();
    }
}
