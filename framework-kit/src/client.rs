//! A client of a framework's control API (what `strata job ...` and `strata app ...` use): one
//! HTTP/1.1 request per call, bounded in time and size, JSON answers.

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
    #[error("invalid {program} API address {addr:?}: use host:port or http://host:port")]
    Address {
        /// The framework.
        program: &'static str,
        /// The address.
        addr: String,
    },
    /// No connection or a broken exchange.
    #[error("cannot reach the {program} framework at {addr}: {reason}; {hint}")]
    Unreachable {
        /// The framework.
        program: &'static str,
        /// The address.
        addr: String,
        /// Why.
        reason: String,
        /// What to check.
        hint: &'static str,
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
pub struct ControlClient {
    host_port: String,
    token: Option<String>,
    program: &'static str,
    hint: &'static str,
}

impl ControlClient {
    /// A client of `program`'s API at `addr` (`host:port` or `http://host:port`); `hint` says
    /// what to check when it cannot be reached.
    pub fn new(
        addr: &str,
        token: Option<String>,
        program: &'static str,
        hint: &'static str,
    ) -> Result<Self, ClientError> {
        let bare = addr
            .strip_prefix("http://")
            .unwrap_or(addr)
            .trim_end_matches('/');
        if bare.is_empty() || bare.contains('/') || !bare.contains(':') {
            return Err(ClientError::Address {
                program,
                addr: addr.to_owned(),
            });
        }
        Ok(Self {
            host_port: bare.to_owned(),
            token,
            program,
            hint,
        })
    }

    /// One request; the answer's JSON (or its text as a JSON string).
    pub async fn call(&self, method: &str, path: &str, body: String) -> Result<Value, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            program: self.program,
            addr: self.host_port.clone(),
            reason,
            hint: self.hint,
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
                    .unwrap_or_else(|| {
                        format!("the {} framework answered {status}: {value}", self.program)
                    });
                Err(ClientError::Refused { status, message })
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
    }
}

/// An id for a URL path: ids are `[a-z0-9-]`; anything else is percent-encoded so that the
/// server answers "no such id" rather than routing elsewhere.
pub fn path_segment(id: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_path_segments() {
        assert!(ControlClient::new("127.0.0.1:1", None, "x", "h").is_ok());
        assert!(ControlClient::new("http://127.0.0.1:1/", None, "x", "h").is_ok());
        for bad in ["", "host", "http://h:1/x"] {
            let e = ControlClient::new(bad, None, "x", "h").unwrap_err();
            assert!(e.to_string().contains("invalid x API address"), "{e}");
        }
        assert_eq!(path_segment("web-1"), "web-1");
        assert_eq!(path_segment("../a"), "%2E%2E%2Fa");
    }
}
