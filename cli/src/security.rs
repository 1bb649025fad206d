//! `strata certs init|issue` (a small cluster's CA and certificates, with strata-auth) and
//! `strata token create` (a bearer token whose hash goes to the allocator's credentials file),
//! and the TLS and token settings every connection of the CLI uses (`--ca`, `--cert`, `--key`,
//! `--token`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use strata_framework::ClientSecurity;

/// `strata certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// `strata certs init|issue`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make the cluster's CA: DIR/ca.pem (give it to every client and server as --ca) and
    /// DIR/ca-key.pem (keep it secret, mode 0600). Never replaces existing files.
    Init {
        /// Where the CA's files go (created if missing).
        #[arg(
            long,
            env = "STRATA_CERTS_DIR",
            default_value = "strata-certs",
            value_name = "DIR"
        )]
        dir: PathBuf,
    },
    /// Issue a certificate for principal NAME with the CA in DIR: DIR/NAME.pem and
    /// DIR/NAME-key.pem (mode 0600). It serves as a server certificate for the --host names and
    /// as a client certificate whose principal is NAME. Never replaces existing files.
    Issue {
        /// The principal: the certificate's common name (letters, digits, '-', '_', '.', '@').
        name: String,
        /// Where the CA is and the certificate goes.
        #[arg(
            long,
            env = "STRATA_CERTS_DIR",
            default_value = "strata-certs",
            value_name = "DIR"
        )]
        dir: PathBuf,
        /// A DNS name or IP address the certificate serves (repeat for more), e.g. the
        /// allocator's host name and address.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
}

/// `strata token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// `strata token create`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a bearer token for a principal: its hash is added to the credentials FILE (created
    /// with mode 0600; give it to the allocator), the token itself is printed once.
    Create {
        /// Who the token authenticates.
        #[arg(long, value_name = "NAME")]
        principal: String,
        /// The credentials file the allocator reads.
        #[arg(long, default_value = "credentials.toml", value_name = "FILE")]
        file: PathBuf,
    },
}

/// `strata certs ...`: prints the files written.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init { dir } => {
            let ca = strata_auth::certs::init_ca(&dir)?;
            outln!(
                "wrote {} (the CA certificate: --ca for clients and servers)",
                ca.cert.display()
            )?;
            outln!("wrote {} (the CA's key: keep it secret)", ca.key.display())?;
            outln!(
                "next: strata certs issue allocator --dir {} --host HOSTNAME --host ADDRESS",
                dir.display()
            )?;
        }
        CertsCommand::Issue { name, dir, hosts } => {
            let issued = strata_auth::certs::issue(&dir, &name, &hosts)?;
            outln!(
                "wrote {} (the certificate of {name})",
                issued.cert.display()
            )?;
            outln!("wrote {} (its key: keep it secret)", issued.key.display())?;
        }
    }
    Ok(())
}

/// `strata token create ...`: prints the token once, as the `export STRATA_TOKEN=...` line.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create { principal, file } => {
            let token = strata_auth::credentials::create_token(&file, &principal)?;
            // The one line on stdout, and the only time the token is shown: `eval "$(strata
            // token create ...)"` sets it.
            outln!("export STRATA_TOKEN={token}")?;
            eprintln!(
                "strata: added a token for {principal} to {} (only its hash is stored, the token \
                 is shown this once): run the export line above where `strata` or a framework \
                 runs; the allocator reads {} as its credentials file",
                file.display(),
                file.display()
            );
        }
    }
    Ok(())
}

/// The allocator to talk to and what to present to it (and to agents).
#[derive(Debug, Clone)]
pub struct Allocator {
    /// `http://HOST:PORT` or `https://HOST:PORT`, or several separated by commas (the
    /// replicas of one cluster).
    pub url: String,
    /// `--ca`, `--cert`, `--key`, `--token`.
    pub security: ClientSecurity,
}

impl Allocator {
    /// How to GET from an agent's HTTP endpoint: the CA (for https:// agents) and the token.
    pub fn get_options(&self) -> anyhow::Result<strata_common::http::GetOptions> {
        let tls = self
            .security
            .rustls_config(&[b"http/1.1"])
            .context("cannot use the TLS settings for the agent")?;
        Ok(strata_common::http::GetOptions {
            tls,
            authorization: self.security.authorization()?,
        })
    }
}

/// The URL of `path` on an agent whose endpoint is `endpoint` (`host:port`, or a URL when the
/// agent registered one with its scheme).
pub fn agent_url(endpoint: &str, path: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        format!("{}{path}", endpoint.trim_end_matches('/'))
    } else {
        format!("http://{endpoint}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_gets_carry_the_token_and_the_ca() {
        let plain = Allocator {
            url: "http://a:1".into(),
            security: ClientSecurity::none(),
        };
        let options = plain.get_options().unwrap();
        assert!(options.tls.is_none() && options.authorization.is_none());
        let dir = tempfile::tempdir().unwrap();
        let ca = strata_auth::certs::init_ca(dir.path()).unwrap();
        let secured = Allocator {
            url: "https://a:1".into(),
            security: ClientSecurity {
                ca: Some(ca.cert),
                token: Some("strata_t".into()),
                ..ClientSecurity::none()
            },
        };
        let options = secured.get_options().unwrap();
        assert!(options.tls.is_some());
        assert_eq!(options.authorization.as_deref(), Some("Bearer strata_t"));
    }

    #[test]
    fn agent_urls_keep_a_registered_scheme() {
        assert_eq!(agent_url("10.0.0.1:5051", "/x"), "http://10.0.0.1:5051/x");
        assert_eq!(
            agent_url("https://h:5051/", "/profile?task=t"),
            "https://h:5051/profile?task=t"
        );
    }
}
