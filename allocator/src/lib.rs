//! The Strata allocator: admits agents and frameworks, keeps the cluster's books and shares
//! free resources between frameworks with offers (Mesos' two-level scheduling): weighted,
//! hierarchical DRF across roles then across the frameworks of a role, quota guarantees and
//! limits, static and dynamic reservations, offer filters and timeouts, agent maintenance.
//!
//! - [`core`]: the pure, synchronous state machine (no I/O, injected clock), unit-tested
//!   directly; it is its own crate, `strata-allocator-core`, re-exported here;
//! - `api`: the tonic services and the actor task that owns the core; [`serve`] and
//!   [`serve_with_store`] run them;
//! - [`store`]: where the registry (framework and agent ids, weights, quota, dynamic
//!   reservations) survives restarts: [`store::RedbStore`] or [`store::MemoryStore`];
//! - [`config`]: [`AllocatorConfig`] and the duration syntax of the binary's flags (plain
//!   data the core takes, so it lives in the core crate too).
//!
//! The binary `strata-allocator` (src/main.rs) parses flags into an [`AllocatorConfig`],
//! opens the store (`--work-dir`/`--store`), binds the listener and calls
//! [`serve_with_store`] until SIGINT/SIGTERM. The core's benchmark, run by `cargo xtask bench
//! allocator`, is `allocator-core/benches/allocator.rs`.

mod api;
pub mod flags;
pub mod follower;
pub mod ha;
pub mod mesos;
pub mod metrics;
pub mod refusal;
pub mod security;
pub mod store;
pub mod store_etcd;
pub mod ui;

pub use api::{
    ServeError, serve, serve_replica, serve_secure, serve_with_http, serve_with_metrics,
    serve_with_store,
};
pub use metrics::Metrics;
pub use strata_allocator_core as core;
pub use strata_allocator_core::config;
pub use strata_allocator_core::config::{AllocatorConfig, ConfigError};
