//! A small cluster's certificate authority (`strata certs init`) and the certificates it
//! issues (`strata certs issue NAME`): ECDSA P-256 keys, files readable by their owner only.
//! Each issued certificate serves both ends (server and client authentication), its common
//! name is the principal it authenticates, and its subject alternative names are the host
//! names and addresses it serves. Operators may bring certificates from their own CA instead.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long the CA is valid.
const CA_DAYS: i64 = 10 * 365;
/// How long an issued certificate is valid.
const LEAF_DAYS: i64 = 365;

/// A certificate and its key, as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file could not be read or written.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that would be replaced exists.
    #[error("{path} exists: remove it first, or use another directory (nothing was changed)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// rcgen failed, or the CA files are not a usable CA.
    #[error("cannot make the certificate {name}: {reason}")]
    Generate {
        /// What was being made.
        name: String,
        /// Why.
        reason: String,
    },
}

/// `<dir>/ca.pem` and `<dir>/ca-key.pem`.
pub fn ca_files(dir: &Path) -> Issued {
    Issued {
        cert: dir.join("ca.pem"),
        key: dir.join("ca-key.pem"),
    }
}

/// `<dir>/<name>.pem` and `<dir>/<name>-key.pem`.
pub fn files(dir: &Path, name: &str) -> Issued {
    Issued {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CertsError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn refuse_existing(files: &Issued) -> Result<(), CertsError> {
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(CertsError::Exists { path: path.clone() });
        }
    }
    Ok(())
}

fn generate_error(name: &str) -> impl Fn(rcgen::Error) -> CertsError + '_ {
    move |e| CertsError::Generate {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    // A day of slack for clocks that are behind.
    let now = time_now();
    params.not_before = now - std::time::Duration::from_secs(86_400);
    params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Makes a new CA in `dir` (created if missing); refuses to replace one.
pub fn init_ca(dir: &Path) -> Result<Issued, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let out = ca_files(dir);
    refuse_existing(&out)?;
    let err = generate_error("ca");
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(&err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Strata cluster CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Strata");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS);
    let key = KeyPair::generate().map_err(&err)?;
    let cert = params.self_signed(&key).map_err(&err)?;
    write_new(&out.key, &key.serialize_pem(), 0o600)?;
    write_new(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

/// Issues a certificate for principal `name` with the CA in `dir`, valid for `hosts` (DNS
/// names or IP addresses) as a server; refuses to replace existing files.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<Issued, CertsError> {
    let err = generate_error(name);
    crate::credentials::check_principal(name).map_err(|e| CertsError::Generate {
        name: name.chars().take(64).collect(),
        reason: e.to_string(),
    })?;
    let ca = ca_files(dir);
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertsError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca.key)?).map_err(&err)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca.cert)?, ca_key).map_err(&err)?;
    let out = files(dir, name);
    refuse_existing(&out)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(&err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Strata");
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(&err)?),
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    let key = KeyPair::generate().map_err(&err)?;
    let cert = params.signed_by(&key, &issuer).map_err(&err)?;
    write_new(&out.key, &key.serialize_pem(), 0o600)?;
    write_new(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_and_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path()).unwrap();
        assert!(matches!(
            init_ca(dir.path()),
            Err(CertsError::Exists { .. })
        ));
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(&ca.key), 0o600);
        let issued = issue(dir.path(), "web", &["localhost".into(), "::1".into()]).unwrap();
        assert_eq!(mode(&issued.key), 0o600);
        assert!(matches!(
            issue(dir.path(), "web", &[]),
            Err(CertsError::Exists { .. })
        ));
        assert!(issue(dir.path(), "../evil", &[]).is_err());
        let other = tempfile::tempdir().unwrap();
        let e = issue(other.path(), "x", &[]).unwrap_err();
        assert!(e.to_string().contains("ca-key.pem"), "{e}");
    }
}
