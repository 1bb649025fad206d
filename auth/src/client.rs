//! What a client (the CLI, a framework, an agent) presents to the allocator and its agents:
//! the cluster's CA certificate that verifies an `https://` server, an optional client
//! certificate and key (its principal is the certificate's common name), and an optional bearer
//! token. This module reads and checks the files; the gRPC channel is made by the SDK
//! (`strata_framework::dial_secure`), the agent and the allocator, which turn the files into
//! tonic's configuration with [`ClientTls::tonic_config`] (feature `tonic`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tls::{self, TlsError};

/// The environment variables [`ClientSecurity::from_env`] reads.
pub const CA_ENV: &str = "STRATA_CA";
/// See [`CA_ENV`].
pub const CERT_ENV: &str = "STRATA_CERT";
/// See [`CA_ENV`].
pub const KEY_ENV: &str = "STRATA_KEY";
/// See [`CA_ENV`].
pub const TOKEN_ENV: &str = "STRATA_TOKEN";

/// The longest token accepted.
pub const MAX_TOKEN: usize = 1024;

/// Why a client's security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An `https://` endpoint without a CA certificate to verify it with.
    #[error(
        "{endpoint} is https:// but no CA certificate was given to verify it: give the cluster's ca.pem (--ca or STRATA_CA)"
    )]
    NoCa {
        /// The endpoint.
        endpoint: String,
    },
    /// A certificate without its key, or a key without its certificate.
    #[error(
        "the client {given} {path} was given without its {missing}: give both (--cert and --key)"
    )]
    HalfIdentity {
        /// "certificate" or "private key".
        given: &'static str,
        /// The file given.
        path: PathBuf,
        /// What is missing.
        missing: &'static str,
    },
    /// The token cannot be sent as a header value (the token itself is never shown).
    #[error(
        "the token is not usable: {reason} (a token from `strata token create` is one line of letters, digits, '_' and '-')"
    )]
    BadToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A PEM file is missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A client's TLS files and token. Paths are read when a connection is made; the token is never
/// logged (`Debug` hides it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSecurity {
    /// The CA certificate (PEM) that verifies `https://` servers.
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), presented when the server asks.
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    pub key: Option<PathBuf>,
    /// A bearer token, sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The PEM bytes a TLS connection needs (checked to parse), for APIs that take PEM such as
/// tonic's `ClientTlsConfig`.
#[derive(Clone)]
pub struct ClientTls {
    /// The CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and key, when given.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

#[cfg(feature = "tonic")]
impl ClientTls {
    /// tonic's TLS configuration: these CA certificates, and the client identity when given.
    pub fn tonic_config(self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem));
        match self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl ClientSecurity {
    /// Nothing: plain connections, no token.
    pub fn none() -> Self {
        Self::default()
    }

    /// From `STRATA_CA`, `STRATA_CERT`, `STRATA_KEY` and `STRATA_TOKEN` (empty means unset).
    pub fn from_env() -> Self {
        Self {
            ca: non_empty_env(CA_ENV).map(PathBuf::from),
            cert: non_empty_env(CERT_ENV).map(PathBuf::from),
            key: non_empty_env(KEY_ENV).map(PathBuf::from),
            token: non_empty_env(TOKEN_ENV).map(|t| t.trim().to_owned()),
        }
    }

    /// Whether anything is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The certificate and key, both or neither.
    pub fn identity(&self) -> Result<Option<(&Path, &Path)>, ClientError> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(ClientError::HalfIdentity {
                given: "certificate",
                path: cert.clone(),
                missing: "private key",
            }),
            (None, Some(key)) => Err(ClientError::HalfIdentity {
                given: "private key",
                path: key.clone(),
                missing: "certificate",
            }),
        }
    }

    /// Checks everything that can be checked without a connection for `endpoint`: the
    /// identity is whole, the files parse (for `https://`), the token can be a header.
    pub fn check(&self, endpoint: &str) -> Result<(), ClientError> {
        self.authorization()?;
        self.tls_for(endpoint).map(|_| ())
    }

    /// The TLS material for `endpoint`: `None` for `http://` (TLS files are not read then),
    /// the CA and identity for `https://` (the CA required).
    pub fn tls_for(&self, endpoint: &str) -> Result<Option<ClientTls>, ClientError> {
        let identity = self.identity()?;
        if !is_https(endpoint) {
            return Ok(None);
        }
        let ca = self.ca.as_deref().ok_or_else(|| ClientError::NoCa {
            endpoint: endpoint.to_owned(),
        })?;
        let ca_pem = tls::read_pem("CA certificate", ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((
                tls::read_pem("certificate", cert)?,
                tls::read_pem("private key", key)?,
            )),
            None => None,
        };
        Ok(Some(ClientTls { ca_pem, identity }))
    }

    /// A rustls client configuration for `https://` URLs (`None` without a CA), offering
    /// `alpn`.
    pub fn rustls_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Option<Arc<rustls::ClientConfig>>, ClientError> {
        let identity = self.identity()?;
        match &self.ca {
            Some(ca) => Ok(Some(tls::client_config(ca, identity, alpn)?)),
            None => Ok(None),
        }
    }

    /// The `authorization` value to send: `Bearer <token>`, when a token is set.
    pub fn authorization(&self) -> Result<Option<String>, ClientError> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::BadToken {
                reason: "it is empty",
            });
        }
        if token.len() > MAX_TOKEN {
            return Err(ClientError::BadToken {
                reason: "it is longer than 1024 bytes",
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::BadToken {
                reason: "it holds spaces, control characters or non-ASCII characters",
            });
        }
        Ok(Some(format!("Bearer {token}")))
    }
}

/// Whether `endpoint` (a URL) is `https://`.
pub fn is_https(endpoint: &str) -> bool {
    endpoint.trim_start().starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn plain_endpoints_read_no_files_and_https_needs_the_ca() {
        let none = ClientSecurity::none();
        assert!(none.is_empty());
        assert!(none.tls_for("http://a:1").unwrap().is_none());
        let e = none.tls_for("https://a:1").unwrap_err();
        assert!(matches!(e, ClientError::NoCa { .. }), "{e}");
        assert!(e.to_string().contains("https://a:1"), "{e}");
        assert!(e.to_string().contains("--ca"), "{e}");
        assert_eq!(none.authorization().unwrap(), None);
    }

    #[test]
    fn files_are_checked_and_named_when_bad() {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::init_ca(dir.path()).unwrap();
        let me = certs::issue(dir.path(), "alice", &[]).unwrap();
        let good = ClientSecurity {
            ca: Some(ca.cert.clone()),
            cert: Some(me.cert.clone()),
            key: Some(me.key.clone()),
            token: None,
        };
        let tls = good.tls_for("https://a:1").unwrap().unwrap();
        assert!(tls.identity.is_some());
        assert!(good.rustls_config(&[]).unwrap().is_some());

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let bad_ca = ClientSecurity {
            ca: Some(garbage.clone()),
            ..ClientSecurity::none()
        };
        let e = bad_ca.tls_for("https://a:1").unwrap_err();
        assert!(e.to_string().contains("garbage.pem"), "{e}");
        assert!(e.to_string().contains("CA certificate"), "{e}");
        // Not read for a plain endpoint.
        assert!(bad_ca.tls_for("http://a:1").unwrap().is_none());

        let half = ClientSecurity {
            cert: Some(me.cert.clone()),
            ..good.clone()
        };
        let half = ClientSecurity { key: None, ..half };
        let e = half.tls_for("https://a:1").unwrap_err();
        assert!(e.to_string().contains("without its private key"), "{e}");
        assert!(e.to_string().contains("alice.pem"), "{e}");
        // Also for plain endpoints: a half identity is a mistake wherever it is used.
        assert!(half.tls_for("http://a:1").is_err());

        let wrong_key = ClientSecurity {
            key: Some(ca.cert.clone()),
            ..good
        };
        let e = wrong_key.tls_for("https://a:1").unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
    }

    #[test]
    fn tokens_become_bearer_headers_and_are_never_shown() {
        let with = |t: &str| ClientSecurity {
            token: Some(t.to_owned()),
            ..ClientSecurity::none()
        };
        assert_eq!(
            with(" strata_abc-1 ").authorization().unwrap().as_deref(),
            Some("Bearer strata_abc-1")
        );
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(2000)] {
            let e = with(bad).authorization().unwrap_err();
            assert!(bad.is_empty() || !e.to_string().contains(bad), "{e}");
        }
        let debug = format!("{:?}", with("strata_secret"));
        assert!(!debug.contains("strata_secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
