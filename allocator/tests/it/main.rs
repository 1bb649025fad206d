//! The allocator's integration tests, one binary (one link) for all: a real allocator in-process
//! on 127.0.0.1 (port 0) or the `strata-allocator` binary as a real process, with this test
//! acting as agents and frameworks over real gRPC and HTTP (strata-test-support's fakes). Every
//! wait is bounded by a timeout so a bug fails a test instead of hanging it.

mod binary;
mod common;
mod grpc;
mod ha;
mod mesos_http;
mod metrics;
mod security;
mod ui;
