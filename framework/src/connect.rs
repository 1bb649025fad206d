//! Dialling the allocator: its address (`host:port` or a URL, read by
//! `strata_common::parse::endpoint`), a tonic channel with sensible timeouts, and short human
//! descriptions of transport failures (`connection refused` rather than `transport error`).

use std::error::Error as StdError;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// How long dialling the allocator may take before it counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The allocator's address as the URL dialled: `host:port` or `http://host:port[/]` become
/// `http://host:port`; anything else is [`Error::InvalidAddress`] saying what to write.
pub fn allocator_url(addr: &str) -> Result<String, Error> {
    strata_common::parse::endpoint(addr).map_err(|reason| Error::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    })
}

/// A tonic endpoint for the allocator at `addr` (see [`allocator_url`]).
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, Error> {
    let url = allocator_url(addr)?;
    let endpoint = Endpoint::from_shared(url).map_err(|e| Error::InvalidAddress {
        addr: addr.to_owned(),
        reason: format!(
            "invalid allocator address {addr:?}: {}",
            strata_common::error::short(&e)
        ),
    })?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// Dials the allocator at `addr` (a URL such as `http://127.0.0.1:5050`, or `host:port`) and
/// returns a connected channel for any of its services (scheduler or operator).
///
/// Fails with [`Error::Connect`] (`cannot reach the allocator at ADDR: connection refused: is
/// \`strata local\` running?`) when nothing answers.
pub async fn dial(addr: &str) -> Result<Channel, Error> {
    dial_with_timeout(addr, DEFAULT_CONNECT_TIMEOUT).await
}

/// [`dial`] with an explicit connect timeout.
pub async fn dial_with_timeout(addr: &str, connect_timeout: Duration) -> Result<Channel, Error> {
    let endpoint = endpoint(addr, connect_timeout)?;
    let url = allocator_url(addr)?;
    match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(Error::Connect {
            addr: url,
            reason: describe_error(&e),
        }),
        Err(_) => Err(Error::Connect {
            addr: url,
            reason: format!("no answer within {connect_timeout:?}"),
        }),
    }
}

/// A short description of a gRPC status: the I/O error behind it when there is one.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    if let Some(source) = status.source() {
        let described = describe_error(source);
        if !described.is_empty() {
            return described;
        }
    }
    let message = strata_common::error::tidy(status.message());
    if message.is_empty() {
        format!("{:?}", status.code()).to_lowercase()
    } else {
        message
    }
}

/// A short description of `err` for people (see `strata_common::error::short`).
pub(crate) fn describe_error(err: &(dyn StdError + 'static)) -> String {
    strata_common::error::short(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_becomes_a_url() {
        assert_eq!(
            allocator_url("127.0.0.1:5050").unwrap(),
            "http://127.0.0.1:5050"
        );
        assert_eq!(
            allocator_url("http://127.0.0.1:5050/").unwrap(),
            "http://127.0.0.1:5050"
        );
        // TLS is not there yet: an https address is refused at once rather than failing later.
        let e = allocator_url(" https://alloc:5050 ").unwrap_err();
        assert!(
            e.to_string().contains("https:// is not supported yet"),
            "{e}"
        );
    }

    #[test]
    fn io_errors_are_described_by_kind() {
        let io = std::io::Error::from_raw_os_error(libc_econnrefused());
        assert_eq!(describe_error(&io), "connection refused");
        let other = std::io::Error::other("Failed to lookup address information");
        assert_eq!(
            describe_error(&other),
            "failed to lookup address information"
        );
    }

    fn libc_econnrefused() -> i32 {
        // ECONNREFUSED on Linux.
        111
    }

    #[test]
    fn empty_or_garbage_addresses_are_invalid() {
        assert!(matches!(
            endpoint("", DEFAULT_CONNECT_TIMEOUT),
            Err(Error::InvalidAddress { .. })
        ));
        let e = endpoint("http://exa mple:1", DEFAULT_CONNECT_TIMEOUT).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid allocator address"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn dialling_a_closed_port_says_connection_refused() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = dial(&addr.to_string()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the allocator at http://{addr}: connection refused: is `strata local` running?"
            )
        );
    }
}
