//! strata-services: a framework that keeps long-running apps on a Strata cluster at their
//! instance count with healthy instances (like Marathon on Mesos), goal-oriented as DC/OS's
//! SDK: it persists each app's target (definition and version), reconstructs the current state
//! from reconciliation after a restart, and shows the plan it follows. See `docs/services.md`.
//!
//! - [`spec`]: app definitions (TOML or JSON) and their validation
//! - [`core`]: the decisions, pure, with an injected clock

pub mod core;
pub mod spec;
