//! The Strata allocator: admits agents and frameworks, keeps the cluster's books and shares
//! free resources between frameworks with plain DRF offers (Mesos' two-level scheduling).
//!
//! - [`core`]: the pure, synchronous state machine (no I/O, injected clock), unit-tested
//!   directly;
//! - `api`: the tonic services and the actor task that owns the core; [`serve`] runs them;
//! - [`config`]: [`AllocatorConfig`] and the duration syntax of the binary's flags.
//!
//! The binary `strata-allocator` (src/main.rs) parses flags into an [`AllocatorConfig`],
//! binds the listener and calls [`serve`] until SIGINT/SIGTERM.

mod api;
pub mod config;
pub mod core;

pub use api::{ServeError, serve};
pub use config::{AllocatorConfig, ConfigError, parse_duration};
