//! Dialling the allocator: address normalisation (`host:port` or a URL), a tonic channel with
//! sensible timeouts, and short human descriptions of transport failures
//! (`connection refused` rather than `transport error`).

use std::error::Error as StdError;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// How long dialling the allocator may take before it counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns `host:port` into `http://host:port`; URLs are kept as they are (without a trailing `/`).
pub fn normalize_address(addr: &str) -> String {
    let addr = addr.trim();
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A tonic endpoint for the allocator at `addr` (normalised with [`normalize_address`]).
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, Error> {
    let url = normalize_address(addr);
    if url.len() <= "http://".len() {
        return Err(Error::InvalidAddress {
            addr: addr.to_owned(),
            reason: "it is empty".to_owned(),
        });
    }
    let endpoint = Endpoint::from_shared(url).map_err(|e| Error::InvalidAddress {
        addr: addr.to_owned(),
        reason: describe_error(&e),
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
    let url = normalize_address(addr);
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

/// A short description of `err` for people: the innermost I/O error's kind when there is one
/// (`connection refused`), otherwise the innermost message.
pub(crate) fn describe_error(err: &(dyn StdError + 'static)) -> String {
    let mut innermost: &(dyn StdError + 'static) = err;
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        innermost = e;
        current = e.source();
    }
    tidy(&innermost.to_string())
}

/// A short description of a gRPC status: the I/O error behind it when there is one.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    if let Some(source) = status.source() {
        let described = describe_error(source);
        if !described.is_empty() {
            return described;
        }
    }
    let message = tidy(status.message());
    if message.is_empty() {
        format!("{:?}", status.code()).to_lowercase()
    } else {
        message
    }
}

fn describe_io(io: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable | TimedOut | BrokenPipe | HostUnreachable | NetworkUnreachable
        | NetworkDown => io.kind().to_string(),
        _ => tidy(&io.to_string()),
    }
}

/// Lower-cases the first letter and drops an ` (os error N)` suffix.
fn tidy(message: &str) -> String {
    let message = match message.find(" (os error") {
        Some(i) => &message[..i],
        None => message,
    };
    let mut chars = message.trim().chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_becomes_a_url() {
        assert_eq!(normalize_address("127.0.0.1:5050"), "http://127.0.0.1:5050");
        assert_eq!(
            normalize_address("http://127.0.0.1:5050/"),
            "http://127.0.0.1:5050"
        );
        assert_eq!(
            normalize_address(" https://alloc:5050 "),
            "https://alloc:5050"
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
