//! What the frameworks built on the SDK share (`strata-jobs`, `strata-services`), so that each
//! keeps only its own decisions:
//!
//! - [`definition`]: names, TOML or JSON definitions, durations
//! - [`edge`]: the loop feeding a core events, requests and the clock, saving before acting
//! - [`state`]: the state file (`STATE_DIR/state.json`, written atomically)
//! - [`command`]: what a core asks its edge to do, carried out through the SDK
//! - [`control`]: the control API's guard (loopback unless authenticated, bearer tokens) and
//!   its error answers
//! - [`binary`]: a framework binary's `main` (logs, runtime, exit status)
//! - [`client`]: the control API's client (what `strata job` and `strata app` use)
//! - [`host`]: a framework binary's life: state file, control API, subscription, the edge
//! - [`subscribe`]: subscribing with a saved framework id, retrying while the allocator is away

pub mod binary;
pub mod client;
pub mod command;
pub mod control;
pub mod definition;
pub mod edge;
pub mod host;
pub mod state;
pub mod subscribe;
