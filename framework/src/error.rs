//! The SDK's error type: every variant names the allocator address or framework it concerns
//! and says what to do about it.

use std::time::Duration;

/// Why an SDK operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The allocator address cannot be parsed.
    #[error("{reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it and what to write instead.
        reason: String,
    },

    /// No connection to the allocator could be made.
    #[error("cannot reach the allocator at {addr}: {reason}: is `strata local` running?")]
    Connect {
        /// The allocator address.
        addr: String,
        /// Why, e.g. `connection refused`.
        reason: String,
    },

    /// The TLS or token settings cannot be used (a missing CA for an `https://` address, a
    /// certificate without its key, an unreadable PEM file, a token that cannot be a header).
    #[error(transparent)]
    Security(#[from] strata_auth::client::ClientError),

    /// The TLS handshake with the allocator failed (its certificate is not signed by the CA
    /// given, names another host, or the allocator refused the client certificate).
    #[error(
        "TLS with the allocator at {addr} failed: {reason}: check that --ca (STRATA_CA) is the cluster's CA and that the allocator's certificate names this address"
    )]
    Tls {
        /// The allocator address.
        addr: String,
        /// What the handshake said.
        reason: String,
    },

    /// The allocator refused the call: no credentials, unknown ones, or not allowed
    /// (UNAUTHENTICATED or PERMISSION_DENIED); its message says what to supply.
    #[error("the allocator at {addr} refused {rpc}: {}: {message}", denied_label(*code))]
    Denied {
        /// The allocator address.
        addr: String,
        /// The rpc that was refused.
        rpc: &'static str,
        /// UNAUTHENTICATED or PERMISSION_DENIED.
        code: tonic::Code,
        /// The allocator's explanation.
        message: String,
    },

    /// The allocator answered the subscription with a refusal.
    #[error("the allocator at {addr} refused the subscription: {message}")]
    SubscribeRefused {
        /// The allocator address.
        addr: String,
        /// The allocator's own explanation.
        message: String,
    },

    /// SUBSCRIBED did not arrive in time.
    #[error(
        "no SUBSCRIBED from the allocator at {addr} within {timeout:?}: check that it is a strata allocator and look at its log"
    )]
    SubscribeTimeout {
        /// The allocator address.
        addr: String,
        /// How long the SDK waited.
        timeout: Duration,
    },

    /// The allocator closed the stream before it said SUBSCRIBED.
    #[error(
        "the allocator at {addr} closed the stream before SUBSCRIBED: look at the allocator's log"
    )]
    StreamEnded {
        /// The allocator address.
        addr: String,
    },

    /// The server does not speak the Strata scheduler API.
    #[error(
        "the server at {addr} does not serve strata.v1.{service}: is it a strata allocator (started by `strata local` or strata-allocator)?"
    )]
    NotAnAllocator {
        /// The address dialled.
        addr: String,
        /// The service that was missing.
        service: &'static str,
    },

    /// A gRPC call failed for another reason.
    /// The allocator is a replica that does not lead its cluster (and did not name a leader
    /// among the addresses given); an election is under way or the addresses miss the leader.
    #[error("the allocator at {addr} does not lead: {message}")]
    NoLeader {
        /// The address dialled.
        addr: String,
        /// The replica's answer.
        message: String,
    },
    /// The allocator at `addr` leads with an older term than one this framework subscribed
    /// with: a deposed leader that does not know it yet. Its stream is dropped before anything
    /// it says is delivered, and the SDK tries the other addresses.
    #[error(
        "the allocator at {addr} is a deposed leader (term {epoch}; this framework subscribed with term {newest}): trying the other replicas"
    )]
    DeposedLeader {
        /// The address dialled.
        addr: String,
        /// Its term.
        epoch: u64,
        /// The newest term this framework subscribed with.
        newest: u64,
    },
    #[error("the allocator at {addr} failed {rpc}: {code:?}: {message}")]
    Rpc {
        /// The allocator address.
        addr: String,
        /// The rpc that failed.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },

    /// A call was made while the stream to the allocator is down and being re-established.
    #[error(
        "framework {framework_id} is not connected to the allocator at {addr} (reconnecting): retry after the next Subscribed event"
    )]
    NotConnected {
        /// The framework whose stream is down.
        framework_id: String,
        /// The allocator address.
        addr: String,
    },

    /// The SDK's background task has stopped: the framework was torn down or removed, or its
    /// event receiver was dropped.
    #[error(
        "framework {framework_id} has stopped (torn down, removed by the allocator, or its event receiver was dropped): subscribe again to continue"
    )]
    Closed {
        /// The framework that stopped.
        framework_id: String,
    },
}

fn denied_label(code: tonic::Code) -> &'static str {
    if code == tonic::Code::PermissionDenied {
        "permission denied"
    } else {
        "not authenticated"
    }
}

impl Error {
    /// Whether retrying the same operation later can succeed (the allocator was unreachable or
    /// the stream was down), as opposed to a refusal or a stopped framework.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::SubscribeTimeout { .. }
                | Self::StreamEnded { .. }
                | Self::NotConnected { .. }
                | Self::NoLeader { .. }
                | Self::DeposedLeader { .. }
        ) || matches!(self, Self::Rpc { code, .. } if matches!(code, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled | tonic::Code::ResourceExhausted))
    }

    /// Turns a gRPC status that `rpc` of `service` (e.g. `"ListTasks"`, `"OperatorService"`)
    /// got from the allocator at `addr` into an error with advice: UNAVAILABLE becomes
    /// [`Error::Connect`], UNIMPLEMENTED [`Error::NotAnAllocator`], UNAUTHENTICATED and
    /// PERMISSION_DENIED [`Error::Denied`], a refused `Subscribe`
    /// [`Error::SubscribeRefused`], anything else [`Error::Rpc`].
    pub fn from_status(
        addr: &str,
        rpc: &'static str,
        service: &'static str,
        status: &tonic::Status,
    ) -> Self {
        match status.code() {
            code @ (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => Self::Denied {
                addr: addr.to_owned(),
                rpc,
                code,
                message: strata_common::error::tidy(status.message()),
            },
            tonic::Code::NotFound
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
                if rpc == "Subscribe" =>
            {
                Self::SubscribeRefused {
                    addr: addr.to_owned(),
                    message: status.message().to_owned(),
                }
            }
            tonic::Code::Unimplemented => Self::NotAnAllocator {
                addr: addr.to_owned(),
                service,
            },
            tonic::Code::Unavailable if strata_proto::leader::is_follower(status) => {
                Self::NoLeader {
                    addr: addr.to_owned(),
                    message: status.message().to_owned(),
                }
            }
            tonic::Code::Unavailable => Self::Connect {
                addr: addr.to_owned(),
                reason: crate::connect::describe_status(status),
            },
            code => Self::Rpc {
                addr: addr.to_owned(),
                rpc,
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_says_what_to_do() {
        let e = Error::Connect {
            addr: "http://127.0.0.1:5050".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the allocator at http://127.0.0.1:5050: connection refused: is `strata local` running?"
        );
        assert!(e.is_transient());
    }

    #[test]
    fn not_found_on_subscribe_is_a_refusal_with_the_allocators_message() {
        let status = tonic::Status::not_found(
            "unknown framework id f-1: subscribe without an id to register a new framework",
        );
        let e = Error::from_status("http://a:1", "Subscribe", "SchedulerService", &status);
        assert!(matches!(e, Error::SubscribeRefused { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the allocator at http://a:1 refused the subscription: unknown framework id f-1: subscribe without an id to register a new framework"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn refusals_for_credentials_are_one_line_with_the_allocators_advice() {
        let status = tonic::Status::unauthenticated(
            "no credentials: present a client certificate or send authorization: Bearer TOKEN",
        );
        let e = Error::from_status("https://a:1", "ListTasks", "OperatorService", &status);
        assert_eq!(
            e.to_string(),
            "the allocator at https://a:1 refused ListTasks: not authenticated: no credentials: present a client certificate or send authorization: Bearer TOKEN"
        );
        assert!(!e.is_transient());
        let status =
            tonic::Status::permission_denied("principal bob may not subscribe as role eng");
        let e = Error::from_status("https://a:1", "Subscribe", "SchedulerService", &status);
        assert!(matches!(e, Error::Denied { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("refused Subscribe: permission denied: principal bob"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn unimplemented_means_not_an_allocator() {
        let e = Error::from_status(
            "http://a:1",
            "ListTasks",
            "OperatorService",
            &tonic::Status::unimplemented(""),
        );
        assert!(
            e.to_string()
                .contains("does not serve strata.v1.OperatorService"),
            "{e}"
        );
        let unavailable = Error::from_status(
            "http://a:1",
            "ListTasks",
            "OperatorService",
            &tonic::Status::unavailable("tcp connect error"),
        );
        assert!(
            matches!(unavailable, Error::Connect { .. }),
            "{unavailable:?}"
        );
    }
}
