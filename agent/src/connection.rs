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
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_common::Backoff;
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::allocator_message;
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
/// With several `endpoints` (the replicas of one cluster), each attempt tries them in turn
/// from the one that answered last; a follower's refusal naming the leader
/// ([`strata_proto::leader::leader_among`]) is followed at once, any other refusal moves on to the
/// next address after the backoff.
pub(crate) async fn maintain(
    endpoints: Vec<(Endpoint, String)>,
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
    backoff_max: Duration,
    mut epoch: LeaderEpoch,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let mut backoff = Backoff::new(INITIAL_BACKOFF, backoff_max.max(INITIAL_BACKOFF));
    let mut session = 0u64;
    let mut current = 0;
    // Redirects followed since a stream last delivered a message.
    let mut redirects = 0;
    // Whether the last refusal was a follower's.
    let mut follower = false;
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
            Err(status) => {
                // A follower replica names the leader: try it next, at once (at most once
                // per address before backing off). Any other refusal: the next address.
                let hinted = find_endpoint(&endpoints, &status);
                current = hinted.unwrap_or((at + 1) % endpoints.len());
                if hinted.is_some() && redirects < endpoints.len() {
                    redirects += 1;
                    tracing::info!(follower = %address, leader = %endpoints[current].1, "redirected to the leader");
                    if events
                        .send(ConnEvent::Disconnected {
                            session,
                            reason: describe_status(&status),
                        })
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                follower |= strata_proto::leader::is_follower(&status);
                describe_status(&status)
            }
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut delivered = false;
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            if let Some(allocator_message::Message::Registered(r)) =
                                &message.message
                                && !epoch.admit(r.leader_epoch)
                            {
                                // A deposed leader that does not know it yet: nothing it
                                // says is acted on, and the others are tried first.
                                current = (at + 1) % endpoints.len();
                                break format!(
                                    "it is a deposed leader (term {}; this agent registered \
                                     with term {}): refused",
                                    r.leader_epoch, epoch.seen
                                );
                            }
                            if !delivered {
                                delivered = true;
                                backoff.reset();
                                redirects = 0;
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
        // A follower answered: the replicas are up and electing; no need to back off far.
        let delay = if std::mem::take(&mut follower) {
            strata_proto::leader::FOLLOWER_RETRY
        } else {
            backoff.next_delay()
        };
        tracing::warn!(
            "lost the connection to the allocator at {address}: {reason}; reconnecting in {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The newest leader term this agent has registered with, kept in `<work_dir>/leader_epoch`
/// across its restarts: a replicated allocator's `Registered` names its term, and an older
/// one is a deposed leader (agents refuse commands from it, the fence beside the registry's).
#[derive(Debug)]
pub(crate) struct LeaderEpoch {
    path: PathBuf,
    seen: u64,
}

/// The file that keeps [`LeaderEpoch`].
pub(crate) const LEADER_EPOCH_FILE: &str = "leader_epoch";

impl LeaderEpoch {
    /// What `work_dir` remembers (0 when nothing, or what is there is unreadable: logged).
    pub(crate) fn load(work_dir: &Path) -> Self {
        let path = work_dir.join(LEADER_EPOCH_FILE);
        let seen = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(path = %path.display(), "unreadable leader term; starting from none");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the leader term; starting from none");
                0
            }
        };
        Self { path, seen }
    }

    /// Whether a leader of term `epoch` may be followed (0: not replicated, always); a newer
    /// one is remembered.
    pub(crate) fn admit(&mut self, epoch: u64) -> bool {
        if epoch == 0 || epoch == self.seen {
            return true;
        }
        if epoch < self.seen {
            return false;
        }
        self.seen = epoch;
        if let Err(e) = crate::checkpoint::write_atomic(&self.path, epoch.to_string().as_bytes()) {
            tracing::warn!(error = %e, "cannot keep the leader term; it is remembered until the agent restarts");
        }
        true
    }
}

/// The index of the endpoint of the leader a follower's answer names, if it is one of the
/// agent's `--allocator` addresses: an agent dials no address it was not given.
fn find_endpoint(endpoints: &[(Endpoint, String)], status: &tonic::Status) -> Option<usize> {
    use strata_proto::leader::{Redirect, leader_among};
    match leader_among(status, endpoints.iter().map(|(_, a)| a.as_str())) {
        Redirect::Among(i) => Some(i),
        Redirect::Elsewhere(leader) => {
            tracing::warn!(%leader, "a follower named a leader that is not among the --allocator addresses; trying those in turn");
            None
        }
        Redirect::Unnamed => None,
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

    #[test]
    fn only_a_leader_among_the_agents_addresses_is_followed() {
        let endpoints: Vec<_> = ["http://h1:5050", "http://h2:5050"]
            .into_iter()
            .map(|a| (Endpoint::from_static(a), a.to_owned()))
            .collect();
        let named = |leader: &str| strata_proto::leader::not_leader("c", Some(leader));
        assert_eq!(find_endpoint(&endpoints, &named("h2:5050")), Some(1));
        assert_eq!(
            find_endpoint(&endpoints, &named("http://h1:5050/")),
            Some(0)
        );
        assert_eq!(
            find_endpoint(&endpoints, &named("http://elsewhere:5050")),
            None
        );
        assert_eq!(find_endpoint(&endpoints, &named("not an address")), None);
    }

    #[test]
    fn leader_terms_only_go_forward_and_are_kept_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut epoch = LeaderEpoch::load(dir.path());
        // Not replicated: always followed, nothing kept.
        assert!(epoch.admit(0));
        assert!(!dir.path().join(LEADER_EPOCH_FILE).exists());
        assert!(epoch.admit(7));
        assert!(epoch.admit(7), "the same leader again");
        assert!(epoch.admit(12), "a newer leader");
        assert!(!epoch.admit(7), "a deposed leader");
        assert!(epoch.admit(0));
        // A restarted agent remembers the newest term.
        let mut again = LeaderEpoch::load(dir.path());
        assert!(!again.admit(11));
        assert!(again.admit(12));
        std::fs::write(dir.path().join(LEADER_EPOCH_FILE), b"garbage").expect("write");
        assert!(
            LeaderEpoch::load(dir.path()).admit(1),
            "unreadable: starts from none"
        );
    }
}
