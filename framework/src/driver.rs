//! The background task that owns the Subscribe stream: it sends the client's calls, receives
//! events and hands them to the application, acknowledges updates after handing them over, and
//! re-subscribes with the same framework id when the stream breaks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::connect::Targets;
use futures::StreamExt;
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{Call, FrameworkInfo, call, event};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};

use crate::connect::AuthInterceptor;
use crate::{Error, Event};
use strata_common::Backoff;

/// Events read from the stream but not yet taken by the application; beyond this the driver
/// stops reading (gRPC flow control then pushes back on the allocator).
const MAX_PENDING: usize = 64;

/// How long `teardown()` waits for the allocator to close the stream.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// How long one re-subscription attempt may take before it is abandoned and retried.
const RESUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request from a [`Framework`](crate::Framework) handle to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send this call on the stream; the reply says whether it could be sent.
    Call {
        call: Call,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Send TEARDOWN, close the stream and stop; the reply comes once the allocator closed it.
    Teardown {
        call: Call,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// One open Subscribe stream.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Feeds the request stream; `None` once we half-closed it (teardown).
    calls: Option<mpsc::UnboundedSender<Call>>,
    events: tonic::Streaming<strata_proto::Event>,
    heartbeat_interval: Option<Duration>,
}

impl Connection {
    fn send(&self, call: Call) -> bool {
        self.calls.as_ref().is_some_and(|tx| tx.send(call).is_ok())
    }
}

/// A stream on which SUBSCRIBED has arrived.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) connection: Connection,
    pub(crate) framework_id: String,
    /// Events that came before SUBSCRIBED (normally none), to deliver after it.
    pub(crate) early: Vec<strata_proto::Event>,
}

/// Dials the allocator, sends SUBSCRIBE with `info` (all its roles suppressed when
/// `suppressed`) and waits for SUBSCRIBED.
pub(crate) async fn subscribe_once(
    targets: &Targets,
    auth: &AuthInterceptor,
    info: FrameworkInfo,
    suppressed: bool,
) -> Result<Subscription, Error> {
    // With replicas, a follower's refusal is followed to the leader it names (once per
    // address at most).
    let tries = targets.len();
    let mut attempt = 0;
    let (addr, calls, response) = loop {
        attempt += 1;
        let (channel, addr) = targets
            .connect(crate::connect::DEFAULT_CONNECT_TIMEOUT)
            .await?;
        let (calls, calls_rx) = mpsc::unbounded_channel();
        let suppressed_roles = if suppressed {
            info.roles.clone()
        } else {
            Vec::new()
        };
        let subscribe = Call {
            framework_id: info.id.clone(),
            call: Some(call::Call::Subscribe(call::Subscribe {
                framework_info: Some(info.clone()),
                suppressed_roles,
            })),
        };
        // The receiver is alive: it is right here.
        let _ = calls.send(subscribe);
        let mut client = SchedulerServiceClient::with_interceptor(channel, auth.clone());
        match client
            .subscribe(UnboundedReceiverStream::new(calls_rx))
            .await
        {
            Ok(response) => break (addr, calls, response),
            Err(status) if attempt < tries && targets.redirected(&addr, &status) => {}
            Err(status) => {
                return Err(Error::from_status(
                    &addr,
                    "Subscribe",
                    "SchedulerService",
                    &status,
                ));
            }
        }
    };
    let addr = addr.as_str();
    let mut events = response.into_inner();
    let mut early = Vec::new();
    loop {
        match events.message().await {
            Ok(Some(strata_proto::Event {
                event: Some(event::Event::Subscribed(subscribed)),
            })) => {
                // A leader older than one already subscribed with was deposed and does not
                // know it yet: nothing it says is delivered (the stream drops here).
                if let Err(newest) = targets.accept_epoch(subscribed.leader_epoch) {
                    targets.skip(addr);
                    warn!(%addr, epoch = subscribed.leader_epoch, newest, "refusing a deposed leader");
                    return Err(Error::DeposedLeader {
                        addr: addr.to_owned(),
                        epoch: subscribed.leader_epoch,
                        newest,
                    });
                }
                let heartbeat_interval = (subscribed.heartbeat_interval_seconds.is_finite()
                    && subscribed.heartbeat_interval_seconds > 0.0)
                    .then(|| Duration::from_secs_f64(subscribed.heartbeat_interval_seconds));
                return Ok(Subscription {
                    connection: Connection {
                        calls: Some(calls),
                        events,
                        heartbeat_interval,
                    },
                    framework_id: subscribed.framework_id,
                    early,
                });
            }
            Ok(Some(strata_proto::Event {
                event: Some(event::Event::Error(error)),
            })) => {
                return Err(Error::SubscribeRefused {
                    addr: addr.to_owned(),
                    message: error.message,
                });
            }
            Ok(Some(other)) => early.push(other),
            Ok(None) => {
                return Err(Error::StreamEnded {
                    addr: addr.to_owned(),
                });
            }
            Err(status) => {
                return Err(Error::from_status(
                    addr,
                    "Subscribe",
                    "SchedulerService",
                    &status,
                ));
            }
        }
    }
}

/// The acknowledgement the SDK sends for `event`: only for updates that carry a uuid (updates
/// the allocator makes up itself have none and need none).
pub(crate) fn ack_call(framework_id: &str, event: &Event) -> Option<Call> {
    let Event::Update(status) = event else {
        return None;
    };
    if status.uuid.is_empty() {
        return None;
    }
    Some(Call {
        framework_id: framework_id.to_owned(),
        call: Some(call::Call::Acknowledge(call::Acknowledge {
            agent_id: status.agent_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        })),
    })
}

/// How long without any event (heartbeats included) before the stream counts as dead.
pub(crate) fn silence_limit(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval.saturating_mul(3) + Duration::from_secs(5)
}

/// The state the driver task runs with.
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) addr: String,
    pub(crate) targets: Targets,
    pub(crate) auth: AuthInterceptor,
    /// With the id set.
    pub(crate) info: FrameworkInfo,
    pub(crate) auto_acknowledge: bool,
    pub(crate) connected: Arc<AtomicBool>,
    /// Whether the framework is suppressed (as its last SUPPRESS or REVIVE left it): sent as
    /// SUBSCRIBE's `suppressed_roles` when it re-subscribes.
    pub(crate) suppressed: Arc<AtomicBool>,
    pub(crate) backoff: Backoff,
}

impl Driver {
    fn enqueue(&self, pending: &mut VecDeque<(Event, Option<Call>)>, wire: strata_proto::Event) {
        let Some(event) = Event::from_proto(wire) else {
            return;
        };
        let ack = if self.auto_acknowledge {
            ack_call(&self.info.id, &event)
        } else {
            None
        };
        pending.push_back((event, ack));
    }

    fn refused(&self, stopping: bool) -> Error {
        if stopping {
            Error::Closed {
                framework_id: self.info.id.clone(),
            }
        } else {
            Error::NotConnected {
                framework_id: self.info.id.clone(),
                addr: self.addr.clone(),
            }
        }
    }

    /// Runs until the framework is torn down or removed, or the application drops the event
    /// receiver. `first` is the subscription `subscribe()` made; `initial` the events to
    /// deliver first.
    pub(crate) async fn run(
        mut self,
        first: Subscription,
        mut commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) {
        let framework_id = self.info.id.clone();
        let mut pending: VecDeque<(Event, Option<Call>)> = VecDeque::new();
        pending.push_back((
            Event::Subscribed {
                framework_id: framework_id.clone(),
            },
            None,
        ));
        for wire in first.early {
            self.enqueue(&mut pending, wire);
        }
        let mut conn: Option<Connection> = Some(first.connection);
        let mut last_event = Instant::now();
        let mut reconnect_at: Option<Instant> = None;
        let mut connecting: Option<JoinHandle<Result<Subscription, Error>>> = None;
        let mut teardown: Option<(oneshot::Sender<Result<(), Error>>, Instant)> = None;
        let mut stopping = false;
        let mut commands_open = true;
        // Why the stream broke, when it did in this turn of the loop.
        let mut broken: Option<String>;

        loop {
            if stopping && pending.is_empty() {
                break;
            }
            broken = None;
            let silence_deadline = conn
                .as_ref()
                .and_then(|c| c.heartbeat_interval)
                .filter(|_| teardown.is_none())
                .map(|hb| last_event + silence_limit(hb));
            let now = Instant::now();
            tokio::select! {
                permit = events.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else {
                        debug!(framework_id = %framework_id, "event receiver dropped; stopping");
                        break;
                    };
                    if pending.len() >= MAX_PENDING {
                        // We were not reading the stream: silence is ours, not the allocator's.
                        last_event = Instant::now();
                    }
                    let (event, ack) = pending.pop_front().expect("pending is not empty");
                    permit.send(event);
                    if let (Some(ack), Some(c)) = (ack, conn.as_ref()) {
                        c.send(ack);
                    }
                }
                _ = events.closed(), if pending.is_empty() => {
                    debug!(framework_id = %framework_id, "event receiver dropped; stopping");
                    break;
                }
                command = commands.recv(), if commands_open => match command {
                    None => commands_open = false,
                    Some(Command::Call { call, reply }) => {
                        let sent = teardown.is_none() && conn.as_ref().is_some_and(|c| c.send(call));
                        let _ = reply.send(if sent {
                            Ok(())
                        } else {
                            Err(self.refused(stopping || teardown.is_some()))
                        });
                    }
                    Some(Command::Teardown { call, reply }) => {
                        match conn.as_mut() {
                            Some(c) if teardown.is_none() && c.send(call) => {
                                info!(framework_id = %framework_id, "tearing down");
                                // Half-close: the allocator sees TEARDOWN, then the end of our calls.
                                c.calls = None;
                                teardown = Some((reply, Instant::now() + TEARDOWN_WAIT));
                            }
                            _ => {
                                let _ = reply.send(Err(self.refused(stopping || teardown.is_some())));
                            }
                        }
                    }
                },
                message = next_event(&mut conn), if conn.is_some() && pending.len() < MAX_PENDING => {
                    match message {
                        Some(Ok(wire)) => {
                            last_event = Instant::now();
                            self.enqueue(&mut pending, wire);
                        }
                        Some(Err(status)) => {
                            broken = Some(crate::connect::describe_status(&status));
                        }
                        None => broken = Some("the allocator closed the stream".to_owned()),
                    }
                }
                _ = tokio::time::sleep_until(silence_deadline.unwrap_or(now)), if silence_deadline.is_some() => {
                    broken = Some(format!(
                        "no event from the allocator for {:?} (heartbeats included)",
                        last_event.elapsed()
                    ));
                }
                _ = tokio::time::sleep_until(teardown.as_ref().map_or(now, |t| t.1)), if teardown.is_some() => {
                    warn!(framework_id = %framework_id, "the allocator did not close the stream after TEARDOWN; closing it");
                    broken = Some("teardown".to_owned());
                }
                _ = tokio::time::sleep_until(reconnect_at.unwrap_or(now)), if reconnect_at.is_some() => {
                    reconnect_at = None;
                    let mut info = self.info.clone();
                    info.id.clone_from(&framework_id);
                    let targets = self.targets.clone();
                    let auth = self.auth.clone();
                    let addr = self.addr.clone();
                    let suppressed = self.suppressed.load(Ordering::SeqCst);
                    connecting = Some(tokio::spawn(async move {
                        tokio::time::timeout(RESUBSCRIBE_TIMEOUT, subscribe_once(&targets, &auth, info, suppressed))
                            .await
                            .unwrap_or(Err(Error::SubscribeTimeout { addr, timeout: RESUBSCRIBE_TIMEOUT }))
                    }));
                }
                joined = async { connecting.as_mut().expect("guarded by is_some").await }, if connecting.is_some() => {
                    connecting = None;
                    match joined {
                        Ok(Ok(subscription)) => {
                            if subscription.framework_id != framework_id {
                                warn!(framework_id = %framework_id, new_id = %subscription.framework_id,
                                      "the allocator re-subscribed us under another id; keeping ours for calls");
                            }
                            info!(framework_id = %framework_id, "re-subscribed to the allocator");
                            self.backoff.reset();
                            self.connected.store(true, Ordering::SeqCst);
                            last_event = Instant::now();
                            conn = Some(subscription.connection);
                            pending.push_back((Event::Subscribed { framework_id: framework_id.clone() }, None));
                            for wire in subscription.early {
                                self.enqueue(&mut pending, wire);
                            }
                        }
                        Ok(Err(e)) if !e.is_transient() => {
                            warn!(framework_id = %framework_id, error = %e, "cannot re-subscribe; stopping");
                            pending.push_back((
                                Event::Error { message: format!("cannot re-subscribe framework {framework_id}: {e}") },
                                None,
                            ));
                            stopping = true;
                        }
                        Ok(Err(e)) => {
                            // A follower answered: the replicas are up and electing.
                            let delay = if matches!(e, Error::NoLeader { .. } | Error::DeposedLeader { .. }) {
                                strata_proto::leader::FOLLOWER_RETRY
                            } else {
                                self.backoff.next_delay()
                            };
                            debug!(framework_id = %framework_id, error = %e, ?delay, "re-subscribe failed; retrying");
                            reconnect_at = Some(Instant::now() + delay);
                        }
                        Err(join_error) => {
                            let delay = self.backoff.next_delay();
                            warn!(framework_id = %framework_id, error = %join_error, "re-subscribe task failed; retrying");
                            reconnect_at = Some(Instant::now() + delay);
                        }
                    }
                }
            }

            if let Some(reason) = broken.take() {
                conn = None;
                self.connected.store(false, Ordering::SeqCst);
                if let Some((reply, _)) = teardown.take() {
                    let _ = reply.send(Ok(()));
                    stopping = true;
                } else if !stopping {
                    warn!(framework_id = %framework_id, %reason, "lost the stream to the allocator; reconnecting");
                    pending.push_back((Event::Disconnected { reason }, None));
                    reconnect_at = Some(Instant::now() + self.backoff.next_delay());
                }
            }
        }

        self.connected.store(false, Ordering::SeqCst);
        if let Some(handle) = connecting {
            handle.abort();
        }
        if let Some((reply, _)) = teardown {
            let _ = reply.send(Ok(()));
        }
        debug!(framework_id = %framework_id, "framework driver stopped");
    }
}

async fn next_event(
    conn: &mut Option<Connection>,
) -> Option<Result<strata_proto::Event, tonic::Status>> {
    match conn {
        Some(c) => c.events.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::TaskStatus;

    #[test]
    fn only_updates_with_a_uuid_are_acknowledged() {
        let with_uuid = Event::Update(TaskStatus {
            task_id: "t1".into(),
            agent_id: "a1".into(),
            uuid: vec![7; 16],
            ..TaskStatus::default()
        });
        let call = ack_call("f1", &with_uuid).expect("an ack");
        assert_eq!(call.framework_id, "f1");
        match call.call {
            Some(call::Call::Acknowledge(ack)) => {
                assert_eq!(ack.task_id, "t1");
                assert_eq!(ack.agent_id, "a1");
                assert_eq!(ack.uuid, vec![7; 16]);
            }
            other => panic!("expected an acknowledge, got {other:?}"),
        }
        let without = Event::Update(TaskStatus {
            task_id: "t1".into(),
            ..TaskStatus::default()
        });
        assert!(ack_call("f1", &without).is_none());
        assert!(ack_call("f1", &Event::Heartbeat).is_none());
    }

    #[test]
    fn silence_limit_allows_three_missed_heartbeats() {
        assert_eq!(
            silence_limit(Duration::from_secs(15)),
            Duration::from_secs(50)
        );
        assert_eq!(
            silence_limit(Duration::from_millis(100)),
            Duration::from_millis(5300)
        );
    }
}
