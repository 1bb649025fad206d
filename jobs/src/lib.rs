//! strata-jobs: a framework that runs jobs on a Strata cluster, now or on cron schedules, with
//! retries, starting deadlines, concurrency policies, timeouts and a history of runs (like
//! Metronome on Mesos). See `docs/jobs.md`.
//!
//! - [`spec`]: job definitions (TOML or JSON) and their validation
//! - [`schedule`]: cron expressions in a time zone
//! - [`core`]: the scheduler's decisions, pure, with an injected clock
//! - [`store`]: the state file (atomic writes)
//! - [`api`] and [`client`]: the control API and its client (`strata job ...`)
//! - [`framework`]: the edge: the SDK, the clock, the API, the store
//! - [`flags`]: the flags, shared by `strata-jobs` and `strata local --with jobs`

pub mod api;
pub mod client;
pub mod core;
pub mod flags;
pub mod framework;
pub mod schedule;
pub mod spec;
pub mod store;

pub use framework::{Bound, JobsConfig, JobsError, bind};
