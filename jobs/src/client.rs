//! A client of the control API (what `strata job ...` uses): one HTTP/1.1 request per call,
//! bounded in time and size.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::Value;

/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// The most bytes of an answer.
const MAX_ANSWER: usize = 16 << 20;

/// A request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not `host:port` or `http://host:port`.
    #[error("invalid jobs API address {addr:?}: use host:port or http://host:port")]
    Address {
        /// The address.
        addr: String,
    },
    /// No connection or a broken exchange.
    #[error(
        "cannot reach the jobs framework at {addr}: {reason}; is strata-jobs (or strata local --with jobs) running? (--jobs, STRATA_JOBS)"
    )]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The framework answered with an error.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its words.
        message: String,
    },
}

/// The control API at `addr`, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct JobsClient {
    host_port: String,
    token: Option<String>,
}

impl JobsClient {
    /// A client of `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bare = addr
            .strip_prefix("http://")
            .unwrap_or(addr)
            .trim_end_matches('/');
        if bare.is_empty() || bare.contains('/') || !bare.contains(':') {
            return Err(ClientError::Address {
                addr: addr.to_owned(),
            });
        }
        Ok(Self {
            host_port: bare.to_owned(),
            token,
        })
    }

    /// Adds or replaces a job from its definition (TOML or JSON).
    pub async fn add(&self, definition: String) -> Result<Value, ClientError> {
        self.call("POST", "/v1/jobs", definition).await
    }

    /// Starts a run of `id` now.
    pub async fn run(&self, id: &str) -> Result<Value, ClientError> {
        self.call(
            "POST",
            &format!("/v1/jobs/{}/runs", path(id)),
            String::new(),
        )
        .await
    }

    /// The jobs.
    pub async fn list(&self) -> Result<Value, ClientError> {
        self.call("GET", "/v1/jobs", String::new()).await
    }

    /// One job.
    pub async fn show(&self, id: &str) -> Result<Value, ClientError> {
        self.call("GET", &format!("/v1/jobs/{}", path(id)), String::new())
            .await
    }

    /// A job's history.
    pub async fn history(&self, id: &str) -> Result<Value, ClientError> {
        self.call(
            "GET",
            &format!("/v1/jobs/{}/history", path(id)),
            String::new(),
        )
        .await
    }

    /// Removes a job.
    pub async fn remove(&self, id: &str) -> Result<Value, ClientError> {
        self.call("DELETE", &format!("/v1/jobs/{}", path(id)), String::new())
            .await
    }

    async fn call(&self, method: &str, path: &str, body: String) -> Result<Value, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: self.host_port.clone(),
            reason,
        };
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(&self.host_port)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(connection);
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, &self.host_port)
                .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8");
            if let Some(token) = &self.token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| unreachable(format!("cannot make the request: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status().as_u16();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&bytes).trim().to_owned())
            });
            if (200..300).contains(&status) {
                Ok(value)
            } else {
                let message = value
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("the jobs framework answered {status}: {value}"));
                Err(ClientError::Refused { status, message })
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
    }
}

/// A job id for a URL path: ids are `[a-z0-9-]`; anything else is percent-encoded so that the
/// server answers "no job" rather than routing elsewhere.
fn path(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
