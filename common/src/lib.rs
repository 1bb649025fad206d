//! What every Strata binary shares, so that each is written once:
//!
//! - [`parse`]: one parser per kind of value that flags, environment variables and config files
//!   take (durations, sizes, attributes, port ranges, listen addresses, the allocator's
//!   address), each with an error that says what to write instead;
//! - [`config`]: config files (TOML) whose keys are the flags' names, with the precedence
//!   flag > environment variable > config file > built-in default;
//! - [`signal`]: waiting for SIGINT or SIGTERM;
//! - [`backoff`]: exponential backoff for reconnecting;
//! - [`error`]: an error and its causes as one line, and a short description for people;
//! - [`http`]: a bounded HTTP/1.1 GET (the CLI asks agents with it; tests and xtask too);
//! - [`serve`]: serving an axum router in plain HTTP/1.1 or over TLS.
//!
//! Only binaries install a tracing subscriber; this crate logs through `tracing` only.

pub mod backoff;
pub mod config;
pub mod error;
pub mod http;
pub mod parse;
pub mod serve;
pub mod signal;

pub use backoff::Backoff;
