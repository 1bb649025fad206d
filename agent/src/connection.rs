//! The agent's link to the allocator: dials it, opens the `AgentService.Connect` stream and
//! reports what happens on it to the agent's core as [`ConnEvent`]s; redials with exponential
//! backoff (100 ms doubling to the configured maximum) whenever the dial fails or the stream
//! ends.
//!
//! Invariants: each stream is a numbered session; events of one session arrive in order
//! (`Connected`, then its messages, then `Disconnected`), and the core ignores events of any
//! session but the latest. The backoff restarts once a stream has delivered a message. The
//! outbound sender is handed to the core *before* the stream is opened, so the core's
//! `Register` is the first message on it whatever the allocator waits for.

use std::error::Error as StdError;
use std::time::Duration;

use strata_common::Backoff;
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::{AgentMessage, AllocatorMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The first reconnect delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Messages the core may queue on a session before sends are dropped (updates are resent).
pub(crate) const OUTBOUND_CAPACITY: usize = 1024;

/// What happened on the link to the allocator.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A new stream is being opened; send `Register` on `outbound`.
    Connected {
        session: u64,
        outbound: mpsc::Sender<AgentMessage>,
    },
    /// The allocator sent a message on the stream.
    Message {
        session: u64,
        message: Box<AllocatorMessage>,
    },
    /// The stream ended.
    Disconnected { session: u64, reason: String },
}

fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = status.source() {
        let chain = strata_common::error::chain(source);
        if !text.contains(&chain) {
            text.push_str(": ");
            text.push_str(&chain);
        }
    }
    text
}

/// Keeps a stream to the allocator open until `events` is closed (the core has stopped).
/// With several `endpoints` (the replicas of one cluster, of which only the leader listens),
/// each attempt tries them in turn from the one that answered last, and backs off only when
/// none answers.
pub(crate) async fn maintain(
    endpoints: Vec<(Endpoint, String)>,
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
    backoff_max: Duration,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let mut backoff = Backoff::new(INITIAL_BACKOFF, backoff_max.max(INITIAL_BACKOFF));
    let mut session = 0u64;
    let mut current = 0;
    loop {
        let Some((channel, at)) = connect_any(&endpoints, current).await else {
            let delay = backoff.next_delay();
            tracing::warn!(
                "cannot reach the allocator at {}; retrying in {delay:?}",
                endpoints
                    .iter()
                    .map(|(_, a)| a.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            tokio::time::sleep(delay).await;
            if events.is_closed() {
                return;
            }
            continue;
        };
        current = at;
        let address = &endpoints[at].1;
        session += 1;
        let (outbound, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        if events
            .send(ConnEvent::Connected { session, outbound })
            .is_err()
        {
            return;
        }
        let mut client = AgentServiceClient::new(channel);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(value) = &authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let reason = match client.connect(request).await {
            Err(status) => describe_status(&status),
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut delivered = false;
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            if !delivered {
                                delivered = true;
                                backoff.reset();
                            }
                            if events
                                .send(ConnEvent::Message {
                                    session,
                                    message: Box::new(message),
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break "the allocator closed the stream".to_owned(),
                        Err(status) => break describe_status(&status),
                    }
                }
            }
        };
        if events
            .send(ConnEvent::Disconnected {
                session,
                reason: reason.clone(),
            })
            .is_err()
        {
            return;
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            "lost the connection to the allocator at {address}: {reason}; reconnecting in {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Connects to the first of `endpoints` that answers, trying them in turn from `start`;
/// the channel and the index of the one that answered.
async fn connect_any(endpoints: &[(Endpoint, String)], start: usize) -> Option<(Channel, usize)> {
    for i in 0..endpoints.len() {
        let at = (start + i) % endpoints.len();
        let (endpoint, address) = &endpoints[at];
        match endpoint.connect().await {
            Ok(channel) => {
                if endpoints.len() > 1 {
                    tracing::info!(allocator = %address, "connected to the allocator");
                }
                return Some((channel, at));
            }
            Err(e) => tracing::debug!(
                allocator = %address,
                "cannot reach the allocator: {}",
                strata_common::error::chain(&e)
            ),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_and_resets() {
        // How `maintain` backs off: from INITIAL_BACKOFF, never above the configured maximum
        // (nor below the initial delay).
        let mut b = Backoff::new(INITIAL_BACKOFF, Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), INITIAL_BACKOFF);
    }
}
