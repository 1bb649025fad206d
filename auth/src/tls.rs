//! rustls configurations from PEM files, and the principal of a client certificate.
//!
//! Servers ask for a client certificate signed by the cluster's CA but do not require one
//! (frameworks and operators may use tokens instead); agents must present one. A verified
//! certificate's principal is its subject's common name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot use {what} {path}: {reason}")]
    Pem {
        /// "certificate", "private key", "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match its certificate, ...).
    #[error("invalid TLS configuration with {path}: {reason}")]
    Config {
        /// The certificate or CA file involved.
        path: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

fn pem_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (a chain, leaf first).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error("private key", path, e))
}

/// A file's bytes, for APIs that take PEM (tonic's `Identity` and `Certificate`).
pub fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    // Parsing first gives the same clear error as the rustls paths for a bad file.
    if what == "private key" {
        load_key(path)?;
    } else {
        load_certs(what, path)?;
    }
    std::fs::read(path).map_err(|e| pem_error(what, path, e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", ca)? {
        roots
            .add(cert)
            .map_err(|e| pem_error("CA certificate", ca, e))?;
    }
    Ok(roots)
}

/// A server configuration: this certificate and key, client certificates signed by
/// `client_ca` verified when presented (optional: tokens are the alternative), `alpn` the
/// protocols offered.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let config_error = |e: rustls::Error| TlsError::Config {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Config {
                        path: ca.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs("certificate", cert)?, load_key(key)?)
        .map_err(config_error)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration: servers verified against `ca`, this client's certificate and key
/// presented when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs("certificate", cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config {
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The principal a (verified) client certificate names: its subject's common name.
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    let name = cn.as_str().ok()?;
    crate::credentials::check_principal(name).ok()?;
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn configs_build_from_issued_files_and_certificates_name_their_principal() {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::init_ca(dir.path()).unwrap();
        let server = certs::issue(
            dir.path(),
            "allocator",
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let client = certs::issue(dir.path(), "agent-1", &[]).unwrap();
        server_config(&server.cert, &server.key, Some(&ca.cert), &[b"h2"]).unwrap();
        server_config(&server.cert, &server.key, None, &[]).unwrap();
        client_config(&ca.cert, Some((&client.cert, &client.key)), &[]).unwrap();
        let leaf = &load_certs("certificate", &client.cert).unwrap()[0];
        assert_eq!(principal_of(leaf).as_deref(), Some("agent-1"));
        // A key that is not the certificate's is refused.
        let e = server_config(&server.cert, &client.key, None, &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid TLS configuration"),
            "{e}"
        );
        let e = load_certs("certificate", &dir.path().join("missing.pem")).unwrap_err();
        assert!(e.to_string().starts_with("cannot use certificate"), "{e}");
    }
}
