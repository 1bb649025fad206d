//! One HTTP/1.1 GET, bounded in time and size, through hyper's client: how the CLI asks an
//! agent for a profile, and how tests and benchmarks read `/metrics`, `/usage` and `/health`.

use std::time::Duration;

use http_body_util::BodyExt as _;

/// The most a response body may hold.
pub const MAX_BODY: usize = 64 << 20;

/// A GET that failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("{url:?} is not an http:// URL: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
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

/// `GET url` (`http://host:port/path`), the whole answer within `limit`.
pub async fn get(url: &str, limit: Duration) -> Result<Response, HttpError> {
    let uri: hyper::Uri =
        url.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| HttpError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(HttpError::Url {
            url: url.to_owned(),
            reason: "write it as http://HOST:PORT/PATH".to_owned(),
        });
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    let request = async {
        let failed = |e: &(dyn std::error::Error + 'static)| HttpError::Request {
            url: url.to_owned(),
            reason: crate::error::short(e),
        };
        let response = client.get(uri).await.map_err(|e| failed(&e))?;
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
                    failed(e.as_ref())
                }
            })?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(limit, request)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_owned(),
            limit,
        })?
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
        let e = get("https://x:1/", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("http://HOST:PORT"), "{e}");
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
}
