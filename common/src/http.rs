//! One HTTP/1.1 GET, bounded in time and size, on hyper's client connection: how the CLI asks
//! an agent for a profile or a task's file, and how tests and benchmarks read `/metrics`,
//! `/usage` and `/health`; [`get_stream`] reads a body as it comes (`strata logs -f`).
//! `https://` URLs are fetched over TLS with the caller's rustls configuration, and an
//! `Authorization` header (a bearer token) is sent when given ([`get_with`]).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;

/// The most a response body may hold.
pub const MAX_BODY: usize = 64 << 20;

/// A GET that failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://HOST:PORT/PATH` or `https://HOST:PORT/PATH`.
    #[error("{url:?} is not an http:// or https:// URL: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` URL without a TLS configuration to verify the server with.
    #[error(
        "cannot get {url}: it is https:// but no CA certificate was given to verify the server (--ca, STRATA_CA)"
    )]
    NoTls {
        /// The URL.
        url: String,
    },
    /// The Authorization value cannot be sent as a header.
    #[error("cannot get {url}: the token is not a valid header value (printable ASCII only)")]
    BadAuthorization {
        /// The URL.
        url: String,
    },
    /// No answer: the connection failed or the request broke.
    #[error("cannot get {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No complete answer in time.
    #[error("no answer from {url} within {limit:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The time limit.
        limit: Duration,
    },
    /// The body is larger than [`MAX_BODY`].
    #[error("the answer from {url} is larger than {MAX_BODY} bytes")]
    TooLarge {
        /// The URL.
        url: String,
    },
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How to make a GET beyond its URL: TLS for `https://` URLs and an `Authorization` header.
#[derive(Clone, Default)]
pub struct GetOptions {
    /// Verifies `https://` servers (and may present a client certificate); required for them.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The `Authorization` header's value, e.g. `Bearer <token>`; never logged.
    pub authorization: Option<String>,
}

impl std::fmt::Debug for GetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetOptions")
            .field("tls", &self.tls.is_some())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `GET url` (`http://host:port/path`), the whole answer within `limit`.
pub async fn get(url: &str, limit: Duration) -> Result<Response, HttpError> {
    get_with(url, limit, &GetOptions::default()).await
}

/// `GET url` (`http://` or, with `options.tls`, `https://host:port/path`) with the options'
/// `Authorization` header, the whole answer (connecting, the TLS handshake, the body) within
/// `limit`.
pub async fn get_with(
    url: &str,
    limit: Duration,
    options: &GetOptions,
) -> Result<Response, HttpError> {
    let failed = |reason: String| HttpError::Request {
        url: url.to_owned(),
        reason,
    };
    let exchange = async {
        let response = request(url, options).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge {
                        url: url.to_owned(),
                    }
                } else {
                    failed(crate::error::short(e.as_ref()))
                }
            })?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_owned(),
            limit,
        })?
}

/// A response whose body is read as it comes ([`get_stream`]).
#[derive(Debug)]
pub struct Streaming {
    /// The HTTP status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    url: String,
    body: hyper::body::Incoming,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<hyper::body::Bytes>, HttpError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(HttpError::Request {
                        url: self.url.clone(),
                        reason: crate::error::short(&e),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// [`get_with`] whose answer's head must come within `limit`, and whose body is then read
/// piece by piece, for as long as the server sends it (a followed file).
pub async fn get_stream(
    url: &str,
    limit: Duration,
    options: &GetOptions,
) -> Result<Streaming, HttpError> {
    let response = tokio::time::timeout(limit, request(url, options))
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_owned(),
            limit,
        })??;
    Ok(Streaming {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        url: url.to_owned(),
        body: response.into_body(),
    })
}

/// Connects, sends `GET url` and returns the answer's head, its body still to read.
async fn request(
    url: &str,
    options: &GetOptions,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpError> {
    let url_error = |reason: &str| HttpError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| url_error(&e.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => Some(options.tls.clone().ok_or_else(|| HttpError::NoTls {
            url: url.to_owned(),
        })?),
        _ => {
            return Err(url_error(
                "write it as http://HOST:PORT/PATH or https://HOST:PORT/PATH",
            ));
        }
    };
    let Some(authority) = uri.authority().cloned() else {
        return Err(url_error(
            "write it as http://HOST:PORT/PATH or https://HOST:PORT/PATH",
        ));
    };
    let host = authority.host();
    let port = authority
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let mut request = hyper::Request::get(
        uri.path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str),
    )
    .header(hyper::header::HOST, authority.as_str());
    if let Some(value) = &options.authorization {
        let value = hyper::header::HeaderValue::from_str(value).map_err(|_| {
            HttpError::BadAuthorization {
                url: url.to_owned(),
            }
        })?;
        request = request.header(hyper::header::AUTHORIZATION, value);
    }
    let request = request
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| url_error(&e.to_string()))?;
    let failed = |reason: String| HttpError::Request {
        url: url.to_owned(),
        reason,
    };
    // A bracketed IPv6 host connects without its brackets.
    let tcp_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((tcp_host, port))
        .await
        .map_err(|e| failed(crate::error::short_io(&e)))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => send(hyper_util::rt::TokioIo::new(tcp), request, &failed).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(tcp_host.to_owned())
                .map_err(|e| failed(format!("invalid server name {tcp_host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    failed(format!(
                        "TLS handshake failed: {}",
                        crate::error::short_io(&e)
                    ))
                })?;
            send(hyper_util::rt::TokioIo::new(stream), request, &failed).await
        }
    }
}

/// One request on a fresh HTTP/1.1 connection over `io`; the connection is driven by a task
/// that ends with it.
async fn send<T>(
    io: T,
    request: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
    failed: &impl Fn(String) -> HttpError,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| failed(crate::error::short(&e)))?;
    tokio::spawn(async move {
        // Its errors reach the request or the body being read.
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| failed(crate::error::short(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn serve_once(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(answer).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_get_returns_status_and_body() {
        let addr =
            serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                .await;
        let r = get(&format!("http://{addr}/health"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    }

    #[tokio::test]
    async fn bad_urls_silence_and_refusals_are_errors_that_say_so() {
        let e = get("ftp://x:1/", Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("http://HOST:PORT"), "{e}");
        // https without a CA to verify the server with is refused before any connection.
        let e = get("https://x:1/", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::NoTls { .. }), "{e}");
        assert!(e.to_string().contains("--ca"), "{e}");
        // Accepts, reads, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(conn);
        });
        let e = get(&format!("http://{addr}/"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = get(&format!("http://{addr}/"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    /// A TLS server on 127.0.0.1 that answers one request with the request's head as body.
    async fn serve_tls_once(
        server: Arc<rustls::ServerConfig>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    continue;
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                    head.len()
                );
                tls.write_all(answer.as_bytes()).await.unwrap();
                let _ = tls.shutdown().await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn an_https_get_verifies_the_server_against_the_ca_and_sends_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = strata_auth::certs::init_ca(dir.path()).unwrap();
        let server =
            strata_auth::certs::issue(dir.path(), "agent-1", &["127.0.0.1".into()]).unwrap();
        let config =
            strata_auth::tls::server_config(&server.cert, &server.key, None, &[b"http/1.1"])
                .unwrap();
        let (addr, task) = serve_tls_once(config).await;
        let url = format!("https://{addr}/usage?task=t");
        let options = GetOptions {
            tls: Some(strata_auth::tls::client_config(&ca.cert, None, &[b"http/1.1"]).unwrap()),
            authorization: Some("Bearer strata_secret".to_owned()),
        };
        assert!(!format!("{options:?}").contains("strata_secret"));
        let r = get_with(&url, Duration::from_secs(10), &options)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let head = r.text();
        assert!(head.starts_with("GET /usage?task=t HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains("authorization: Bearer strata_secret\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");

        // Another CA does not vouch for the server: the handshake fails and says why.
        let other = tempfile::tempdir().unwrap();
        let other_ca = strata_auth::certs::init_ca(other.path()).unwrap();
        let options = GetOptions {
            tls: Some(strata_auth::tls::client_config(&other_ca.cert, None, &[]).unwrap()),
            authorization: None,
        };
        let e = get_with(&url, Duration::from_secs(10), &options)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TLS handshake failed"), "{e}");
        assert!(e.to_string().contains("certificate"), "{e}");
        // A token that cannot be a header is refused, without echoing it.
        let options = GetOptions {
            tls: None,
            authorization: Some("Bearer a\nb".to_owned()),
        };
        let e = get_with(&format!("http://{addr}/"), Duration::from_secs(1), &options)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::BadAuthorization { .. }), "{e}");
        task.abort();
    }
}
