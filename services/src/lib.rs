//! strata-services: a framework that keeps long-running apps on a Strata cluster at their
//! instance count with healthy instances (like Marathon on Mesos), goal-oriented as DC/OS's
//! SDK: it persists each app's target (definition and version), reconstructs the current state
//! from reconciliation after a restart, and shows the plan it follows. See `docs/services.md`.
//!
//! - [`spec`]: app definitions (TOML or JSON) and their validation
//! - [`core`]: the decisions, pure, with an injected clock
//! - [`store`]: the state file
//! - [`api`] and [`client`]: the control API and its client (`strata app ...`)
//! - [`framework`]: the edge: the SDK, the clock, the API, the store
//! - [`flags`]: the flags, shared by `strata-services` and `strata local --with services`

pub mod api;
pub mod client;
pub mod core;
pub mod flags;
pub mod framework;
pub mod spec;
pub mod store;

pub use framework::{Bound, ServicesConfig, ServicesError, bind};
