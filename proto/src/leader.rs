//! Following the leader of replicated allocators: a follower replica answers every gRPC call
//! with `UNAVAILABLE` and the leader's address in the [`METADATA`] key (as a Mesos master
//! that does not lead redirects to the one that does); clients read it with [`hint`] and,
//! with [`leader_among`], find it among the addresses they were given (the agent, the SDK,
//! the test's simulated agents: one rule for all), and try that address next.

use tonic::Status;
use tonic::metadata::MetadataValue;

/// The metadata key naming the leader's gRPC address in a follower's answer.
pub const METADATA: &str = "strata-leader";

/// The metadata key every follower's answer carries (the cluster's name), whether or not it
/// knows the leader: an election is under way or done, and the cluster is reachable.
pub const FOLLOWER_METADATA: &str = "strata-follower";

/// The longest leader address a client accepts from a follower.
pub const MAX_ADDRESS: usize = 256;

/// How soon a client tries again after a follower's answer that did not lead it to the
/// leader: the replicas answer, so an election is at most a lease away and retrying is cheap
/// for them.
pub const FOLLOWER_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// A follower's answer: `UNAVAILABLE`, naming the leader of `cluster` when one is known.
pub fn not_leader(cluster: &str, leader: Option<&str>) -> Status {
    let mut status = match leader {
        Some(leader) => {
            let mut status = Status::unavailable(format!(
                "this allocator does not lead cluster {cluster}: the leader is at {leader}"
            ));
            if let Ok(value) = MetadataValue::try_from(leader) {
                status.metadata_mut().insert(METADATA, value);
            }
            status
        }
        None => Status::unavailable(format!(
            "this allocator does not lead cluster {cluster} and no replica leads it now: \
             try again in a few seconds"
        )),
    };
    if let Ok(value) = MetadataValue::try_from(cluster) {
        status.metadata_mut().insert(FOLLOWER_METADATA, value);
    }
    status
}

/// Whether `status` is a follower replica's answer ([`not_leader`]).
pub fn is_follower(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.metadata().contains_key(FOLLOWER_METADATA)
}

/// The leader's address a follower named in `status`, if any: only from an `UNAVAILABLE`
/// status, printable ASCII without spaces or commas, at most [`MAX_ADDRESS`] bytes (anything
/// else is ignored: the client goes on trying its addresses in turn).
pub fn hint(status: &Status) -> Option<&str> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let value = status.metadata().get(METADATA)?.to_str().ok()?;
    let ok = !value.is_empty()
        && value.len() <= MAX_ADDRESS
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    ok.then_some(value)
}

/// Where a follower's answer points a client that was given `addresses` (normalised as
/// [`strata_common::parse::endpoints`] gives them: `http://HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The leader it names is `addresses[i]`.
    Among(usize),
    /// It names a leader that is not one of `addresses`: a client dials no address it was
    /// not given, so it goes on trying its own in turn (and should say so).
    Elsewhere(String),
    /// It names none (no leader is known, the answer is not a follower's, or the hint is not
    /// an address).
    Unnamed,
}

/// The leader a follower's `status` names, looked for among `addresses`: the hint ([`hint`])
/// normalised as the clients' own addresses are (`h2:5050` and `http://h2:5050/` are
/// `http://h2:5050`), then compared.
pub fn leader_among<'a>(status: &Status, addresses: impl IntoIterator<Item = &'a str>) -> Redirect {
    let Some(named) = hint(status).and_then(|h| strata_common::parse::endpoint(h).ok()) else {
        return Redirect::Unnamed;
    };
    match addresses.into_iter().position(|a| a == named) {
        Some(i) => Redirect::Among(i),
        None => Redirect::Elsewhere(named),
    }
}

impl Redirect {
    /// The index of the leader among the addresses, when it is one of them.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::Among(i) => Some(*i),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followers_answer_names_the_leader() {
        let status = not_leader("prod", Some("http://h2:5050"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("http://h2:5050"), "{status:?}");
        assert_eq!(hint(&status), Some("http://h2:5050"));
        let none = not_leader("prod", None);
        assert_eq!(hint(&none), None);
        assert!(none.message().contains("no replica leads"), "{none:?}");
        assert!(is_follower(&status) && is_follower(&none));
        assert!(!is_follower(&Status::unavailable("shutting down")));
    }

    #[test]
    fn hints_that_are_not_addresses_are_ignored() {
        let with = |code: tonic::Code, value: &str| {
            let mut status = Status::new(code, "x");
            status
                .metadata_mut()
                .insert(METADATA, MetadataValue::try_from(value).unwrap());
            status
        };
        assert_eq!(hint(&with(tonic::Code::Unavailable, "h:1")), Some("h:1"));
        // Only a follower's UNAVAILABLE carries a hint worth following.
        assert_eq!(hint(&with(tonic::Code::PermissionDenied, "h:1")), None);
        assert_eq!(hint(&with(tonic::Code::Unavailable, "a:1,b:2")), None);
        assert_eq!(hint(&with(tonic::Code::Unavailable, "a b:1")), None);
        assert_eq!(hint(&with(tonic::Code::Unavailable, "")), None);
        let long = format!("h{}:1", "x".repeat(MAX_ADDRESS));
        assert_eq!(hint(&with(tonic::Code::Unavailable, &long)), None);
    }

    #[test]
    fn only_a_leader_among_the_clients_addresses_is_followed() {
        let ours = ["http://h1:5050", "http://h2:5050"];
        let named = |leader: &str| leader_among(&not_leader("c", Some(leader)), ours);
        // Normalised as the clients' addresses are.
        assert_eq!(named("h2:5050"), Redirect::Among(1));
        assert_eq!(named("http://h1:5050/"), Redirect::Among(0));
        assert_eq!(named("http://h1:5050/").index(), Some(0));
        // Not one of ours: never dialled.
        assert_eq!(
            named("evil:1"),
            Redirect::Elsewhere("http://evil:1".to_owned())
        );
        assert_eq!(named("evil:1").index(), None);
        // Not an address, or no leader named, or not a follower's answer.
        assert_eq!(named("ftp://h1:5050"), Redirect::Unnamed);
        assert_eq!(named("h1"), Redirect::Unnamed);
        assert_eq!(
            leader_among(&not_leader("c", None), ours),
            Redirect::Unnamed
        );
        let mut other = Status::permission_denied("no");
        other
            .metadata_mut()
            .insert(METADATA, MetadataValue::from_static("h1:5050"));
        assert_eq!(leader_among(&other, ours), Redirect::Unnamed);
    }
}
