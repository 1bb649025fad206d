//! The flags of `strata-services`, defined once; `strata local --with services` takes the same.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use strata_common::parse;

/// Where the control API listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5054";

/// The services framework's own flags (the allocator's address and TLS files are the caller's).
#[derive(Debug, Clone, Args)]
pub struct ServicesArgs {
    /// Where the control API (`strata app ...`) listens; outside loopback only with
    /// --services-credentials.
    #[arg(long, env = "STRATA_SERVICES_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse::listen, value_name = "ADDR")]
    pub services_listen: String,
    /// Where app definitions, their versions and the framework id are kept
    /// [default: $TMPDIR/strata-services].
    #[arg(
        long = "services-state-dir",
        env = "STRATA_SERVICES_STATE_DIR",
        value_name = "DIR"
    )]
    pub services_state_dir: Option<PathBuf>,
    /// The role the framework takes offers in.
    #[arg(
        long = "services-role",
        env = "STRATA_SERVICES_ROLE",
        default_value = "*",
        value_name = "ROLE"
    )]
    pub services_role: String,
    /// How long the allocator keeps the framework's instances running while it is away (a
    /// restarted strata-services reconciles and keeps them).
    #[arg(long, env = "STRATA_SERVICES_FAILOVER_TIMEOUT", default_value = "7d", value_parser = parse::duration, value_name = "DURATION")]
    pub services_failover_timeout: Duration,
    /// The tokens the control API accepts (a file made by `strata token create --file`);
    /// needed to listen outside loopback.
    #[arg(
        long = "services-credentials",
        env = "STRATA_SERVICES_CREDENTIALS",
        value_name = "FILE"
    )]
    pub services_credentials: Option<PathBuf>,
}

impl ServicesArgs {
    /// The configuration for the allocator at `allocator`.
    pub fn config(
        &self,
        allocator: String,
        security: strata_framework::ClientSecurity,
    ) -> crate::framework::ServicesConfig {
        crate::framework::ServicesConfig {
            allocator,
            security,
            listen: self.services_listen.clone(),
            state_dir: self
                .services_state_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("strata-services")),
            role: self.services_role.clone(),
            name: "strata-services".into(),
            failover_timeout: self.services_failover_timeout,
            credentials: self.services_credentials.clone(),
        }
    }
}
