//! `strata local --secure`: a CA, certificates, an operator token and ACLs for a one-host
//! cluster, made in `WORK_DIR/pki` at the first start and kept for the next ones, so that the
//! allocator, its Mesos API and the agent's HTTP endpoints serve TLS and require
//! authentication as a real deployment does (see docs/security.md).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use strata_auth::{Action, certs, credentials};

/// The operator's principal: every action is allowed to it.
pub const OPERATOR: &str = "operator";
/// The agent's principal (its client certificate's common name): it may register, nothing else.
pub const AGENT: &str = "agent-local";

/// The files of a secure local cluster.
#[derive(Clone, Debug)]
pub struct LocalPki {
    /// `WORK_DIR/pki`.
    pub dir: PathBuf,
    /// The CA certificate clients verify the servers with (`--ca`, `STRATA_CA`).
    pub ca: PathBuf,
    /// The allocator's certificate and key (serves localhost and 127.0.0.1).
    pub allocator: certs::Issued,
    /// The agent's certificate and key: its client identity and its HTTP server's certificate.
    pub agent: certs::Issued,
    /// Principals and the hashes of their tokens.
    pub credentials: PathBuf,
    /// Who may do what; written once, edit it to allow more principals.
    pub acls: PathBuf,
    /// The operator's token (mode 0600).
    pub token_file: PathBuf,
    /// The allocator's audit log.
    pub audit_log: PathBuf,
}

impl LocalPki {
    /// The lines that tell a user how to reach the cluster.
    pub fn usage(&self) -> String {
        format!(
            "strata local: TLS and authentication are on (files in {dir}); as the operator:\n  \
             export STRATA_CA={ca} STRATA_TOKEN=$(cat {token})\n\
             strata local: Mesos frameworks use the same CA and HTTP Basic \"{OPERATOR}\" with \
             that token; other principals: strata token create --principal NAME --file {creds}, \
             then allow them in {acls} and restart\n",
            dir = self.dir.display(),
            ca = self.ca.display(),
            token = self.token_file.display(),
            creds = self.credentials.display(),
            acls = self.acls.display(),
        )
    }
}

/// The ACL file a new secure local cluster starts with.
fn default_acls() -> String {
    let all: Vec<String> = Action::ALL
        .iter()
        .map(|action| format!("\"{}\"", action.name()))
        .collect();
    format!(
        "# Who may do what in this `strata local --secure` cluster (see docs/security.md).\n\
         [[allow]]\nprincipals = [\"{OPERATOR}\"]\nactions = [{}]\n\n\
         [[allow]]\nprincipals = [\"{AGENT}\"]\nactions = [\"{}\"]\n",
        all.join(", "),
        Action::RegisterAgents.name()
    )
}

/// Makes (or reuses) the files of a secure cluster under `work_dir/pki`; `hosts` are the names
/// and addresses the allocator's certificate serves besides localhost and 127.0.0.1.
pub fn prepare(work_dir: &Path, hosts: &[String]) -> anyhow::Result<LocalPki> {
    let dir = work_dir.join("pki");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;

    let ca = certs::ca_files(&dir);
    if !ca.cert.exists() {
        certs::init_ca(&dir)?;
    }
    let mut allocator_hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    allocator_hosts.extend(hosts.iter().cloned());
    let allocator = issue_once(&dir, "allocator", &allocator_hosts)?;
    let agent = issue_once(
        &dir,
        AGENT,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )?;

    let credentials = dir.join("credentials.toml");
    let token_file = dir.join(format!("{OPERATOR}.token"));
    let token = fs::read_to_string(&token_file)
        .ok()
        .map(|t| t.trim().to_owned());
    let known = match (&token, credentials::Credentials::load(&credentials)) {
        (Some(token), Ok(creds)) => creds.principal_of_token(token) == Some(OPERATOR),
        _ => false,
    };
    if !known {
        // A lost token file or credentials file: start both afresh.
        let _ = fs::remove_file(&credentials);
        let token = credentials::create_token(&credentials, OPERATOR)?;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&token_file)
            .with_context(|| format!("cannot write {}", token_file.display()))?;
        writeln!(file, "{token}")
            .with_context(|| format!("cannot write {}", token_file.display()))?;
    }

    let acls = dir.join("acls.toml");
    if !acls.exists() {
        fs::write(&acls, default_acls())
            .with_context(|| format!("cannot write {}", acls.display()))?;
    }
    Ok(LocalPki {
        ca: ca.cert,
        allocator,
        agent,
        credentials,
        acls,
        token_file,
        audit_log: dir.join("audit.log"),
        dir,
    })
}

/// The certificate `name` in `dir`, issued unless both its files exist.
fn issue_once(dir: &Path, name: &str, hosts: &[String]) -> anyhow::Result<certs::Issued> {
    let files = certs::files(dir, name);
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let _ = fs::remove_file(&files.cert);
    let _ = fs::remove_file(&files.key);
    Ok(certs::issue(dir, name, hosts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_acls_parse_and_give_the_agent_registration_only() {
        let acls = strata_auth::Acls::parse(&default_acls(), "default").unwrap();
        for action in Action::ALL {
            assert!(acls.allows(OPERATOR, action, "anything"), "{action}");
        }
        assert!(acls.allows(AGENT, Action::RegisterAgents, "x"));
        assert!(!acls.allows(AGENT, Action::RunTasks, "x"));
        assert!(!acls.allows("someone", Action::ViewTasks, "x"));
    }

    #[test]
    fn prepare_makes_private_files_once_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path(), &[]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.dir), 0o700);
        assert_eq!(mode(&first.token_file), 0o600);
        assert_eq!(mode(&first.agent.key), 0o600);
        let token = fs::read_to_string(&first.token_file).unwrap();
        let creds = credentials::Credentials::load(&first.credentials).unwrap();
        assert_eq!(creds.principal_of_token(token.trim()), Some(OPERATOR));
        let ca = fs::read(&first.ca).unwrap();

        // A restart reuses everything.
        let second = prepare(dir.path(), &[]).unwrap();
        assert_eq!(fs::read(&second.ca).unwrap(), ca);
        assert_eq!(fs::read_to_string(&second.token_file).unwrap(), token);

        // A lost token file gets a new token, and the old one stops working.
        fs::remove_file(&first.token_file).unwrap();
        let third = prepare(dir.path(), &[]).unwrap();
        let new_token = fs::read_to_string(&third.token_file).unwrap();
        assert_ne!(new_token, token);
        let creds = credentials::Credentials::load(&third.credentials).unwrap();
        assert_eq!(creds.principal_of_token(token.trim()), None);
        assert_eq!(creds.principal_of_token(new_token.trim()), Some(OPERATOR));
        assert!(
            third.usage().contains("export STRATA_CA="),
            "{}",
            third.usage()
        );
    }
}
