//! The CLI's end-to-end tests, one binary (one link) for all: real `strata-allocator` and
//! `strata-agent` processes on loopback (strata-test-support's `Cluster`), or `strata local`,
//! driven through the framework SDK and the `strata` CLI.

mod e2e;
mod gpu;
mod ha;
mod jobs;
mod local;
mod logs;
mod mesos_pymesos;
mod pipe;
mod profile;
mod secure_cluster;
mod security;
mod services;
mod ui_browser;
mod usage;
