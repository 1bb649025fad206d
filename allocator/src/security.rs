//! Authentication, authorization and the audit log at the allocator's edges.
//!
//! A caller is authenticated by the verified client certificate of its TLS connection (its
//! common name is the principal), else by an `Authorization` header or gRPC metadata:
//! `Bearer <token>`, or on the Mesos API HTTP Basic `principal:token`
//! ([`strata_auth::credentials`]). With the open policy (no `--credentials`, no client CA:
//! `strata local` on loopback, or `--insecure`) every caller may do everything; otherwise
//! the ACLs decide ([`strata_auth::Policy`]): the core for agent registration, framework
//! subscription (per role) and the users tasks run as, this module for operator actions and
//! views. Every decision on an operator or framework action is written to the audit log.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use strata_auth::credentials::{Credentials, CredentialsError};
use strata_auth::{Action, Denied, Policy};
use tonic::{Request, Status};

/// The TLS files of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// Its certificate (chain), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The CA whose client certificates authenticate callers (agents must present one).
    pub client_ca: Option<PathBuf>,
}

/// Why the security settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A TLS file is unusable.
    #[error(transparent)]
    Tls(#[from] strata_auth::tls::TlsError),
    /// The audit log cannot be opened.
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Who may call, how callers prove who they are, and where decisions are recorded.
#[derive(Debug, Default)]
pub struct Security {
    policy: Policy,
    credentials: Credentials,
    tls: Option<ServerTls>,
    audit: Option<Mutex<File>>,
}

use strata_common::serve::PeerPrincipal;

/// A TLS server configuration with how its listeners read a client certificate's principal.
pub(crate) fn with_principal(
    tls: Arc<rustls::ServerConfig>,
) -> (Arc<rustls::ServerConfig>, strata_common::serve::PrincipalOf) {
    (tls, strata_auth::tls::principal_of)
}

impl Security {
    /// Authentication off, no TLS: what `strata local` on loopback runs with.
    pub fn open() -> Self {
        Self::default()
    }

    /// The settings of a server: `policy` (the core must be given the same), the tokens it
    /// accepts, its TLS files, and the audit log file (appended to; created 0600).
    pub fn new(
        policy: Policy,
        credentials: Credentials,
        tls: Option<ServerTls>,
        audit_log: Option<&Path>,
    ) -> Result<Self, SecurityError> {
        let audit = audit_log
            .map(|path| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map(Mutex::new)
                    .map_err(|source| SecurityError::Audit {
                        path: path.to_path_buf(),
                        source,
                    })
            })
            .transpose()?;
        let security = Self {
            policy,
            credentials,
            tls,
            audit,
        };
        // Bad TLS files stop the server before it listens.
        security.http_tls()?;
        Ok(security)
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether connections are encrypted.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// tonic's server TLS settings, when TLS is on.
    pub(crate) fn grpc_tls(
        &self,
    ) -> Result<Option<tonic::transport::ServerTlsConfig>, SecurityError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let read = strata_auth::tls::read_pem;
        let identity = tonic::transport::Identity::from_pem(
            read("certificate", &tls.cert)?,
            read("private key", &tls.key)?,
        );
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(read(
                    "CA certificate",
                    ca,
                )?))
                .client_auth_optional(true);
        }
        Ok(Some(config))
    }

    /// The rustls settings of the HTTP listeners (HTTP/1.1), when TLS is on.
    pub(crate) fn http_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, SecurityError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        Ok(Some(strata_auth::tls::server_config(
            &tls.cert,
            &tls.key,
            tls.client_ca.as_deref(),
            &[b"http/1.1"],
        )?))
    }

    /// The TLS client settings for calling agents' `https://` endpoints: the cluster's CA
    /// (`--tls-client-ca`) as the trust root, no client certificate (callers' own
    /// credentials go with each request). `None` without a client CA.
    pub(crate) fn agent_client_tls(
        &self,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, SecurityError> {
        let Some(ca) = self.tls.as_ref().and_then(|t| t.client_ca.as_deref()) else {
            return Ok(None);
        };
        Ok(Some(strata_auth::tls::client_config(
            ca,
            None,
            &[b"http/1.1"],
        )?))
    }

    /// The principal a caller authenticated as: its certificate's, else its
    /// `Authorization` value's. With the open policy bad credentials are ignored; otherwise
    /// they are an error.
    pub(crate) fn authenticate(
        &self,
        certificate: Option<String>,
        authorization: Option<&str>,
    ) -> Result<Option<String>, CredentialsError> {
        if certificate.is_some() {
            return Ok(certificate);
        }
        let Some(value) = authorization else {
            return Ok(None);
        };
        match self.credentials.authenticate_header(value) {
            Ok(principal) => Ok(Some(principal)),
            Err(_) if !self.policy.enforced() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Security::authenticate`] for a gRPC request: its peer certificate, its
    /// `authorization` metadata.
    pub(crate) fn grpc_principal<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let certificate = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(strata_auth::tls::principal_of));
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.authenticate(certificate, authorization)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Decides an action at the edge and records the decision.
    pub(crate) fn authorize(
        &self,
        principal: Option<&str>,
        action: Action,
        object: &str,
    ) -> Result<(), Denied> {
        let decision = self.policy.check(principal, action, object);
        let refused = decision.as_ref().err().map(|d| d as &dyn std::fmt::Display);
        self.audit(principal, action.name(), object, refused);
        decision
    }

    /// Records an action and its outcome: a structured log line (target `strata::audit`),
    /// and a JSON line in the audit log file when there is one.
    pub(crate) fn audit(
        &self,
        principal: Option<&str>,
        action: &str,
        object: &str,
        refused: Option<&dyn std::fmt::Display>,
    ) {
        let principal = principal.unwrap_or("(anonymous)");
        let object = strata_proto::ids::shorten(object, 256);
        match refused {
            None => tracing::info!(target: "strata::audit", principal, action, object, "allowed"),
            Some(why) => {
                tracing::warn!(target: "strata::audit", principal, action, object, reason = %why, "refused");
            }
        }
        let Some(file) = &self.audit else {
            return;
        };
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let line = serde_json::json!({
            "time": time,
            "principal": principal,
            "action": action,
            "object": object,
            "allowed": refused.is_none(),
            "reason": refused.map(ToString::to_string),
        });
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(file, "{line}") {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

/// Middleware for HTTP routes that show cluster state (`/metrics`): the caller must be
/// allowed `view_frameworks`.
pub(crate) async fn require_view(
    axum::extract::State(security): axum::extract::State<Arc<Security>>,
    peer: Option<axum::Extension<PeerPrincipal>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let certificate = peer.and_then(|axum::Extension(p)| p.0);
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match security.authenticate(certificate, authorization) {
        Ok(p) => p,
        Err(e) => return (axum::http::StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    match security
        .policy
        .check(principal.as_deref(), Action::ViewFrameworks, "*")
    {
        Ok(()) => next.run(request).await,
        Err(denied @ Denied::Unauthenticated { .. }) => {
            (axum::http::StatusCode::UNAUTHORIZED, denied.to_string()).into_response()
        }
        Err(denied) => (axum::http::StatusCode::FORBIDDEN, denied.to_string()).into_response(),
    }
}

/// The gRPC status of a refused action.
pub(crate) fn denied_status(denied: &Denied) -> Status {
    match denied {
        Denied::Unauthenticated { .. } => Status::unauthenticated(denied.to_string()),
        Denied::Forbidden { .. } => Status::permission_denied(denied.to_string()),
    }
}
