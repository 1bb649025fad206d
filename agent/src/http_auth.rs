//! Who may read the agent's HTTP endpoints (`--http-credentials`, `--http-acls`, TLS with
//! `--http-tls-cert`): `/usage`, `/metrics` and `/gpus` need `view_tasks`, `/profile` needs
//! `profile_tasks`, the sandboxes (`/files/browse`, `/files/read`, `/files/follow`) need
//! `view_sandboxes` (Mesos' VIEW_SANDBOXES: files may hold more than the task views show);
//! `/health` is open. A caller authenticates with a client certificate of
//! the cluster's CA (`--http-client-ca`) or a bearer token. Without credentials the policy is
//! open, and the agent serves loopback only unless `--insecure` is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use strata_auth::credentials::Credentials;
use strata_auth::{Acls, Action, Denied, Policy};
use strata_common::serve::PeerPrincipal;

/// The agent HTTP server's TLS files and access rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSecurityConfig {
    /// Its certificate (PEM); with `key`, the server speaks TLS.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA whose client certificates authenticate callers.
    pub client_ca: Option<PathBuf>,
    /// Principals and their token hashes (`strata token create`).
    pub credentials: Option<PathBuf>,
    /// Who may do what (`view_tasks`, `profile_tasks`, `view_sandboxes`).
    pub acls: Option<PathBuf>,
    /// Serve outside loopback without TLS and authentication.
    pub insecure: bool,
}

/// Why the HTTP security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HttpAuthError {
    /// A file is unusable.
    #[error("{0}")]
    File(String),
    /// Authentication without ACLs, or ACLs without authentication.
    #[error("{0}")]
    Inconsistent(&'static str),
    /// An address outside loopback without protection.
    #[error(
        "refusing to serve the agent's HTTP endpoints on {addr} without TLS and authentication: \
         anyone who can reach it could read task usage and profile tasks. Give --http-tls-cert, \
         --http-tls-key and --http-credentials or --http-client-ca with --http-acls, listen on \
         127.0.0.1, or pass --insecure to accept the risk"
    )]
    Exposed {
        /// The address.
        addr: SocketAddr,
    },
}

/// The decided settings.
#[derive(Debug)]
pub struct HttpAuth {
    policy: Policy,
    credentials: Credentials,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpAuth {
    /// Open, plain HTTP.
    pub fn open() -> Self {
        Self {
            policy: Policy::Open,
            credentials: Credentials::default(),
            tls: None,
        }
    }

    /// Loads the files of `config`; checks that a server on `bound` is protected or loopback.
    pub fn load(config: &HttpSecurityConfig, bound: SocketAddr) -> Result<Self, HttpAuthError> {
        let file = |e: &dyn std::fmt::Display| HttpAuthError::File(e.to_string());
        let authenticating = config.credentials.is_some() || config.client_ca.is_some();
        let policy = match (&config.acls, authenticating) {
            (Some(path), true) => Policy::Enforced(Acls::load(path).map_err(|e| file(&e))?),
            (None, true) => {
                return Err(HttpAuthError::Inconsistent(
                    "--http-credentials or --http-client-ca turn authentication on, which \
                     denies what no rule allows: give --http-acls",
                ));
            }
            (Some(_), false) => {
                return Err(HttpAuthError::Inconsistent(
                    "--http-acls needs --http-credentials and/or --http-client-ca",
                ));
            }
            (None, false) => Policy::Open,
        };
        let credentials = match &config.credentials {
            Some(path) => Credentials::load(path).map_err(|e| file(&e))?,
            None => Credentials::default(),
        };
        let tls = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Some(
                strata_auth::tls::server_config(
                    cert,
                    key,
                    config.client_ca.as_deref(),
                    &[b"http/1.1"],
                )
                .map_err(|e| file(&e))?,
            ),
            (None, None) => None,
            _ => {
                return Err(HttpAuthError::Inconsistent(
                    "give both --http-tls-cert and --http-tls-key",
                ));
            }
        };
        let protected = tls.is_some() && policy.enforced();
        if !(protected || config.insecure || bound.ip().is_loopback()) {
            return Err(HttpAuthError::Exposed { addr: bound });
        }
        Ok(Self {
            policy,
            credentials,
            tls,
        })
    }

    /// The TLS settings for [`strata_common::serve::serve`].
    pub fn tls(&self) -> Option<(Arc<rustls::ServerConfig>, strata_common::serve::PrincipalOf)> {
        self.tls.clone().map(|tls| {
            (
                tls,
                strata_auth::tls::principal_of as strata_common::serve::PrincipalOf,
            )
        })
    }

    /// Whether the server speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }
}

/// What a path needs.
fn action_of(path: &str) -> Option<Action> {
    match path {
        "/usage" | "/metrics" | "/gpus" => Some(Action::ViewTasks),
        "/profile" => Some(Action::ProfileTasks),
        p if p.starts_with("/files") => Some(Action::ViewSandboxes),
        _ => None,
    }
}

/// Middleware: authenticates the caller and checks the route's action.
pub async fn authorize(
    State(auth): State<Arc<HttpAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(action) = action_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let certificate = request
        .extensions()
        .get::<PeerPrincipal>()
        .and_then(|p| p.0.clone());
    let principal = match certificate {
        Some(p) => Some(p),
        None => match request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            None => None,
            Some(value) => match auth.credentials.authenticate_header(value) {
                Ok(p) => Some(p),
                Err(_) if !auth.policy.enforced() => None,
                Err(e) => return (StatusCode::UNAUTHORIZED, format!("{e}\n")).into_response(),
            },
        },
    };
    match auth.policy.check(principal.as_deref(), action, "*") {
        Ok(()) => {
            if auth.policy.enforced() {
                tracing::info!(target: "strata::audit", principal = principal.as_deref().unwrap_or_default(), action = action.name(), path = request.uri().path(), "allowed");
            }
            next.run(request).await
        }
        Err(denied) => {
            tracing::warn!(target: "strata::audit", principal = ?principal, action = action.name(), reason = %denied, "refused");
            let status = match denied {
                Denied::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
                Denied::Forbidden { .. } => StatusCode::FORBIDDEN,
            };
            (status, format!("{denied}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_page_needs_view_tasks_like_usage() {
        for path in ["/usage", "/metrics", "/gpus"] {
            assert!(matches!(action_of(path), Some(Action::ViewTasks)), "{path}");
        }
        assert!(action_of("/gpus/../files").is_none());
        assert!(action_of("/health").is_none());
    }
}
