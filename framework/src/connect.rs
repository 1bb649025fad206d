//! Dialling the allocator: its address (`host:port` or a URL, read by
//! `strata_common::parse::endpoint`), a tonic channel with sensible timeouts, TLS for
//! `https://` addresses and a bearer token on every call ([`ClientSecurity`], [`dial_secure`],
//! [`AuthInterceptor`]), and short human descriptions of transport failures (`connection
//! refused` rather than `transport error`).

use std::error::Error as StdError;
use std::time::Duration;

use strata_auth::client::ClientTls;
pub use strata_auth::client::{ClientError, ClientSecurity};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::Error;

/// Adds `authorization: Bearer <token>` to every call when a token is set; does nothing
/// otherwise. Its `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct AuthInterceptor {
    authorization: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AuthInterceptor {
    /// The interceptor for `security`'s token (checked: [`ClientError::BadToken`]).
    pub fn new(security: &ClientSecurity) -> Result<Self, ClientError> {
        let authorization = match security.authorization()? {
            Some(value) => {
                let mut value: MetadataValue<Ascii> =
                    value.parse().map_err(|_| ClientError::BadToken {
                        reason: "it is not a valid header value",
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self { authorization })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the token: what [`dial_secure`] returns; make clients with
/// `XxxServiceClient::new(channel)`.
pub type AuthChannel = InterceptedService<Channel, AuthInterceptor>;

/// tonic's TLS configuration for `security` at `url`: `None` for `http://`; for `https://`
/// the CA (required) and the client identity when given.
pub fn tls_config(url: &str, security: &ClientSecurity) -> Result<Option<ClientTlsConfig>, Error> {
    Ok(security.tls_for(url)?.map(ClientTls::tonic_config))
}

/// [`endpoint`] with TLS for an `https://` address, and the interceptor that adds the token.
pub fn secure_endpoint(
    addr: &str,
    connect_timeout: Duration,
    security: &ClientSecurity,
) -> Result<(Endpoint, AuthInterceptor), Error> {
    let url = allocator_url(addr)?;
    let mut endpoint = endpoint(addr, connect_timeout)?;
    if let Some(tls) = tls_config(&url, security)? {
        endpoint = endpoint.tls_config(tls).map_err(|e| Error::Tls {
            addr: url.clone(),
            reason: describe_error(&e),
        })?;
    }
    Ok((endpoint, AuthInterceptor::new(security)?))
}

/// Dials the allocator at `addr` as [`dial`] does, over TLS when it is `https://` (verified
/// against `security.ca`, presenting `security.cert` when given), every call carrying
/// `security.token`. `addr` may name the replicas of a highly available allocator,
/// separated by commas: the first that answers and leads is used (a follower's answer
/// names the leader, which is tried next).
pub async fn dial_secure(addr: &str, security: &ClientSecurity) -> Result<AuthChannel, Error> {
    let (targets, auth) = secure_targets(addr, DEFAULT_CONNECT_TIMEOUT, security)?;
    let tries = targets.len();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (channel, url) = targets.connect(DEFAULT_CONNECT_TIMEOUT).await?;
        let channel = InterceptedService::new(channel, auth.clone());
        if tries == 1 {
            return Ok(channel);
        }
        // Replicas: a follower answers, so ask whether this one leads. Any answer but a
        // follower's (an old allocator's UNIMPLEMENTED, a refusal) is left to the real call.
        let probe =
            strata_proto::operator_service_client::OperatorServiceClient::new(channel.clone())
                .get_leader(strata_proto::GetLeaderRequest {})
                .await;
        match probe {
            Err(status) if attempt < tries && targets.redirected(&url, &status) => {}
            _ => return Ok(channel),
        }
    }
}

/// The allocator's addresses as endpoints (one, or the replicas of one cluster), tried in
/// turn from the one that answered last.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    endpoints: std::sync::Arc<Vec<(Endpoint, String)>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The newest leader term subscribed with (0: none, or a single allocator).
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Targets {
    /// The addresses, for messages (`a or b`).
    pub(crate) fn describe(&self) -> String {
        self.endpoints
            .iter()
            .map(|(_, url)| url.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// How many addresses there are.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Takes a leader's term from its SUBSCRIBED: `Err(newest)` when it is older than the
    /// newest one subscribed with (a deposed leader), else it becomes the newest.
    pub(crate) fn accept_epoch(&self, epoch: u64) -> Result<(), u64> {
        use std::sync::atomic::Ordering;
        let newest = self.epoch.fetch_max(epoch, Ordering::SeqCst);
        if epoch < newest { Err(newest) } else { Ok(()) }
    }

    /// Points the next attempt at the address after `url` (which must not be tried first).
    pub(crate) fn skip(&self, url: &str) {
        use std::sync::atomic::Ordering;
        let n = self.endpoints.len();
        let at = self
            .endpoints
            .iter()
            .position(|(_, u)| u == url)
            .unwrap_or(0);
        self.current.store((at + 1) % n.max(1), Ordering::Relaxed);
    }

    /// After `status` from the allocator at `url`: whether to try again at once, elsewhere.
    /// With several addresses, an `UNAVAILABLE` (a follower replica's answer) points the next
    /// attempt at the leader it names when that is one of the addresses, else at the address
    /// after `url`; anything else is the caller's to report.
    pub(crate) fn redirected(&self, url: &str, status: &tonic::Status) -> bool {
        use std::sync::atomic::Ordering;
        let n = self.endpoints.len();
        if n < 2 || status.code() != tonic::Code::Unavailable {
            return false;
        }
        let at = self
            .endpoints
            .iter()
            .position(|(_, u)| u == url)
            .unwrap_or(0);
        let hinted = strata_proto::leader::leader_among(
            status,
            self.endpoints.iter().map(|(_, u)| u.as_str()),
        )
        .index();
        let next = hinted.unwrap_or((at + 1) % n);
        tracing::debug!(follower = %url, next = %self.endpoints[next].1, hinted = hinted.is_some(), "not the leader; trying another replica");
        self.current.store(next, Ordering::Relaxed);
        true
    }

    /// Connects to the first address that answers, each within `connect_timeout`; the
    /// channel and its URL. Fails with the last address's error when none answers.
    pub(crate) async fn connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<(Channel, String), Error> {
        use std::sync::atomic::Ordering;
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let (endpoint, url) = &self.endpoints[at];
            match connect_endpoint(endpoint, url, connect_timeout).await {
                Ok(channel) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok((channel, url.clone()));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidAddress {
            addr: String::new(),
            reason: "no allocator address".to_owned(),
        }))
    }
}

/// [`secure_endpoint`] for each of the comma-separated addresses in `addrs`.
pub(crate) fn secure_targets(
    addrs: &str,
    connect_timeout: Duration,
    security: &ClientSecurity,
) -> Result<(Targets, AuthInterceptor), Error> {
    let urls = strata_common::parse::endpoints(addrs).map_err(|reason| Error::InvalidAddress {
        addr: addrs.to_owned(),
        reason,
    })?;
    let mut endpoints = Vec::with_capacity(urls.len());
    for url in urls {
        let (endpoint, _) = secure_endpoint(&url, connect_timeout, security)?;
        endpoints.push((endpoint, url));
    }
    Ok((
        Targets {
            endpoints: std::sync::Arc::new(endpoints),
            current: std::sync::Arc::default(),
            epoch: std::sync::Arc::default(),
        },
        AuthInterceptor::new(security)?,
    ))
}

/// Connects `endpoint` (for `url`) within `connect_timeout`.
pub(crate) async fn connect_endpoint(
    endpoint: &Endpoint,
    url: &str,
    connect_timeout: Duration,
) -> Result<Channel, Error> {
    match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(connect_error(url, &e)),
        Err(_) => Err(Error::Connect {
            addr: url.to_owned(),
            reason: format!("no answer within {connect_timeout:?}"),
        }),
    }
}

/// A failed dial: [`Error::Tls`] when the TLS handshake failed, else [`Error::Connect`].
pub(crate) fn connect_error(url: &str, err: &(dyn StdError + 'static)) -> Error {
    if is_tls_failure(err) {
        Error::Tls {
            addr: url.to_owned(),
            reason: describe_error(err),
        }
    } else {
        Error::Connect {
            addr: url.to_owned(),
            reason: describe_error(err),
        }
    }
}

/// Whether a rustls error is somewhere in `err`'s chain.
fn is_tls_failure(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && inner.is::<rustls::Error>()
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// How long dialling the allocator may take before it counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The allocator's address as the URL dialled: `host:port` or `http://host:port[/]` become
/// `http://host:port`, `https://host:port[/]` stays `https://host:port`; anything else is [`Error::InvalidAddress`] saying what to write.
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
    if strata_auth::client::is_https(&url) {
        return Err(ClientError::NoCa { endpoint: url }.into());
    }
    connect_endpoint(&endpoint, &url, connect_timeout).await
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
    fn a_followers_refusal_points_the_next_attempt_at_the_leader() {
        use std::sync::atomic::Ordering;
        let (targets, _) = secure_targets(
            "h1:5050,h2:5050,h3:5050",
            DEFAULT_CONNECT_TIMEOUT,
            &ClientSecurity::none(),
        )
        .unwrap();
        let current = || targets.current.load(Ordering::Relaxed);
        // Named, and one of ours: tried next.
        let named = strata_proto::leader::not_leader("c", Some("h3:5050"));
        assert!(targets.redirected("http://h1:5050", &named));
        assert_eq!(current(), 2);
        // No leader named, or one that is not ours: the address after the follower.
        let unnamed = strata_proto::leader::not_leader("c", None);
        assert!(targets.redirected("http://h3:5050", &unnamed));
        assert_eq!(current(), 0);
        let stranger = strata_proto::leader::not_leader("c", Some("evil:1"));
        assert!(targets.redirected("http://h1:5050", &stranger));
        assert_eq!(current(), 1);
        // Any other refusal is the caller's to report.
        assert!(!targets.redirected("http://h2:5050", &tonic::Status::permission_denied("no")));
        assert_eq!(current(), 1);
        // One address: nowhere else to go.
        let (one, _) =
            secure_targets("h1:5050", DEFAULT_CONNECT_TIMEOUT, &ClientSecurity::none()).unwrap();
        assert!(!one.redirected("http://h1:5050", &named));
    }

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
        assert_eq!(
            allocator_url(" https://alloc:5050/ ").unwrap(),
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
