//! Bearer tokens and HTTP Basic secrets (`--credentials`): a TOML file of principals, each
//! with the SHA-256 of its token, so that the file alone does not give the tokens away.
//!
//! ```toml
//! [[principal]]
//! name = "alice"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! A token is sent as `Authorization: Bearer <token>` (gRPC metadata or HTTP header), or on
//! the Mesos API as HTTP Basic with the principal as user and the token as password (what
//! Mesos frameworks send as `principal` and `secret`).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

/// The longest Authorization header value looked at.
const MAX_HEADER: usize = 4096;

/// Why credentials could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read or written.
    #[error("cannot use the credentials file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid credentials file.
    #[error("the credentials file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A principal name that cannot be used.
    #[error("invalid principal name {name:?}: use 1 to 128 letters, digits, '-', '_', '.' or '@'")]
    BadPrincipal {
        /// The name.
        name: String,
    },
    /// An Authorization header that is neither Bearer nor Basic, or malformed.
    #[error(
        "malformed Authorization header: use \"Bearer <token>\" or \"Basic <base64 of principal:token>\""
    )]
    MalformedHeader,
    /// The token or secret matches no principal.
    #[error("invalid credentials: the token or secret matches no principal")]
    BadCredentials,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token_sha256: String,
}

/// The principals a server knows, by the hash of their tokens.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_hash: HashMap<[u8; 32], String>,
}

/// Checks a principal name: short, and safe to print and to put in a file.
pub fn check_principal(name: &str) -> Result<(), CredentialsError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(CredentialsError::BadPrincipal {
            name: name.chars().take(64).collect(),
        })
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Credentials {
    /// Parses a credentials file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CredentialsError> {
        let invalid = |reason: String| CredentialsError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let file: File =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim().to_owned()))?;
        let mut by_hash = HashMap::new();
        for entry in file.principal {
            check_principal(&entry.name).map_err(|e| invalid(e.to_string()))?;
            let hash = unhex(&entry.token_sha256).ok_or_else(|| {
                invalid(format!(
                    "principal {:?}: token_sha256 must be 64 hex digits",
                    entry.name
                ))
            })?;
            by_hash.insert(hash, entry.name);
        }
        Ok(Self { by_hash })
    }

    /// Loads a credentials file.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = fs::read_to_string(path).map_err(|source| CredentialsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal whose token this is.
    pub fn principal_of_token(&self, token: &str) -> Option<&str> {
        self.by_hash
            .get(&sha256(token.as_bytes()))
            .map(String::as_str)
    }

    /// The principal an `Authorization` header value authenticates: `Bearer <token>`, or
    /// `Basic <base64(principal:token)>` whose principal must be the token's.
    pub fn authenticate_header(&self, value: &str) -> Result<String, CredentialsError> {
        if value.len() > MAX_HEADER {
            return Err(CredentialsError::MalformedHeader);
        }
        let (scheme, rest) = value
            .trim()
            .split_once(' ')
            .ok_or(CredentialsError::MalformedHeader)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .principal_of_token(rest)
                .map(str::to_owned)
                .ok_or(CredentialsError::BadCredentials);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| CredentialsError::MalformedHeader)?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| CredentialsError::MalformedHeader)?;
            let (name, secret) = decoded
                .split_once(':')
                .ok_or(CredentialsError::MalformedHeader)?;
            return match self.principal_of_token(secret) {
                Some(p) if p == name => Ok(p.to_owned()),
                _ => Err(CredentialsError::BadCredentials),
            };
        }
        Err(CredentialsError::MalformedHeader)
    }
}

/// A new random token (32 bytes from the system's CSPRNG, URL-safe base64).
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random number generator works");
    format!(
        "strata_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Makes a token for `principal`, appends its hash to the credentials file at `path`
/// (created readable by its owner only), and returns the token: the only time it is seen.
pub fn create_token(path: &Path, principal: &str) -> Result<String, CredentialsError> {
    check_principal(principal)?;
    let io = |source| CredentialsError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        // Refuse to append to a file the servers would then fail to read.
        Credentials::load(path)?;
    }
    let token = new_token();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    writeln!(
        file,
        "\n[[principal]]\nname = \"{principal}\"\ntoken_sha256 = \"{}\"",
        hex(&sha256(token.as_bytes()))
    )
    .map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_authenticate_their_principal_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        let alice = create_token(&path, "alice").unwrap();
        let bob = create_token(&path, "bob").unwrap();
        assert_ne!(alice, bob);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&alice), "the token itself is never stored");
        let creds = Credentials::load(&path).unwrap();
        assert_eq!(creds.len(), 2);
        assert_eq!(
            creds
                .authenticate_header(&format!("Bearer {alice}"))
                .unwrap(),
            "alice"
        );
        assert_eq!(
            creds
                .authenticate_header(&format!("bearer  {bob} "))
                .unwrap(),
            "bob"
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{alice}"));
        assert_eq!(
            creds
                .authenticate_header(&format!("Basic {basic}"))
                .unwrap(),
            "alice"
        );
        // Alice's token under Bob's name is refused.
        let wrong = base64::engine::general_purpose::STANDARD.encode(format!("bob:{alice}"));
        assert!(matches!(
            creds.authenticate_header(&format!("Basic {wrong}")),
            Err(CredentialsError::BadCredentials)
        ));
        assert!(creds.authenticate_header("Bearer strata_nope").is_err());
        assert!(matches!(
            creds.authenticate_header("Digest x"),
            Err(CredentialsError::MalformedHeader)
        ));
        assert!(creds.authenticate_header(&"Bearer x".repeat(1000)).is_err());
    }

    #[test]
    fn bad_names_and_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for name in ["", "a b", "a\"b", "x\ny", &"a".repeat(129)] {
            assert!(create_token(&path, name).is_err(), "{name:?}");
        }
        let e = Credentials::parse("[[principal]]\nname = \"a\"\ntoken_sha256 = \"zz\"\n", "c")
            .unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        fs::write(&path, "garbage = [").unwrap();
        assert!(
            create_token(&path, "alice").is_err(),
            "never appends to a broken file"
        );
    }
}
