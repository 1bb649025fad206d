//! The flags of `strata-jobs`, defined once; `strata local --with jobs` takes the same.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use strata_common::parse;

/// Where the control API listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5053";

/// The jobs framework's own flags (the allocator's address and TLS files are the caller's).
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// Where the control API (`strata job ...`) listens; outside loopback only with
    /// --jobs-credentials.
    #[arg(long, env = "STRATA_JOBS_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse::listen, value_name = "ADDR")]
    pub jobs_listen: String,
    /// Where job definitions, run histories and the framework id are kept
    /// [default: $TMPDIR/strata-jobs].
    #[arg(
        long = "jobs-state-dir",
        env = "STRATA_JOBS_STATE_DIR",
        value_name = "DIR"
    )]
    pub jobs_state_dir: Option<PathBuf>,
    /// The role the framework takes offers in.
    #[arg(
        long = "jobs-role",
        env = "STRATA_JOBS_ROLE",
        default_value = "*",
        value_name = "ROLE"
    )]
    pub jobs_role: String,
    /// How long the allocator keeps the framework's running tasks while it is away (a
    /// restarted strata-jobs adopts them).
    #[arg(long, env = "STRATA_JOBS_FAILOVER_TIMEOUT", default_value = "7d", value_parser = parse::duration, value_name = "DURATION")]
    pub jobs_failover_timeout: Duration,
    /// The tokens the control API accepts (a file made by `strata token create --file`);
    /// needed to listen outside loopback.
    #[arg(
        long = "jobs-credentials",
        env = "STRATA_JOBS_CREDENTIALS",
        value_name = "FILE"
    )]
    pub jobs_credentials: Option<PathBuf>,
}

impl JobsArgs {
    /// The configuration for the allocator at `allocator`.
    pub fn config(
        &self,
        allocator: String,
        security: strata_framework::ClientSecurity,
    ) -> crate::framework::JobsConfig {
        crate::framework::JobsConfig {
            allocator,
            security,
            listen: self.jobs_listen.clone(),
            state_dir: self
                .jobs_state_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("strata-jobs")),
            role: self.jobs_role.clone(),
            name: "strata-jobs".into(),
            failover_timeout: self.jobs_failover_timeout,
            credentials: self.jobs_credentials.clone(),
        }
    }
}
