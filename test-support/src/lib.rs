//! What the workspace's tests (and the allocator's Mesos benchmark) share, as a dev-dependency:
//!
//! - [`wait`]: bounded futures ([`bounded`], [`wait::within`]), polling until a condition holds
//!   ([`wait::poll_until`]), waiting for a process to be gone or to exit;
//! - [`http`]: a bounded `GET` built on [`strata_common::http::get`];
//! - [`net`]: free loopback ports; [`netns`]: a lab of network namespaces on a bridge, with
//!   real cuts (links down, blackhole routes), for fault injection;
//! - fakes over real gRPC on 127.0.0.1: [`fake_allocator::FakeAllocator`] (the allocator's
//!   AgentService, for an agent under test), [`fake_scheduler::FakeSchedulerService`] (its
//!   SchedulerService, for the SDK under test), [`fake_agent::FakeAgent`] (an agent on a real
//!   allocator) and [`framework::Framework`] (a framework's raw Subscribe stream);
//! - [`cluster`]: `strata-allocator` and `strata-agent` as real processes, killed with their
//!   tasks and cgroups on drop;
//! - [`etcd`]: a real etcd member in a temp dir;
//! - [`history`]: the checker of fault-injection runs (every update a framework received);
//! - [`sim_agent`]: simulated agents on replicated allocators, with faults to inject;
//! - with the `allocator` feature, `allocator`: a real allocator in-process on ephemeral ports.
//!
//! Every wait is bounded, so that a bug fails a test instead of hanging it.

pub mod cluster;
pub mod etcd;
pub mod fake_agent;
pub mod fake_allocator;
pub mod fake_scheduler;
pub mod framework;
pub mod history;
pub mod http;
pub mod net;
pub mod netns;
pub mod sim_agent;
pub mod wait;

#[cfg(feature = "allocator")]
pub mod allocator;

use std::time::Duration;

pub use wait::{STEP, bounded};

/// How a fake peer's stream is opened and read (a [`fake_agent::FakeAgent`]'s or a
/// [`framework::Framework`]'s).
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// The queue of messages to send.
    pub capacity: usize,
    /// The longest any single step may take.
    pub step: Duration,
}

impl Default for StreamOptions {
    /// 64 queued messages, [`STEP`].
    fn default() -> Self {
        Self {
            capacity: 64,
            step: STEP,
        }
    }
}

/// The cgroup placement of every agent the tests start, as the environment variable the agent
/// reads and its value: the development machines are shared, and nothing may be created outside
/// the test's own cgroup. In-process agents take `Placement::parse(CGROUP_PLACEMENT.1)`.
pub const CGROUP_PLACEMENT: (&str, &str) = ("STRATA_AGENT_CGROUP_PLACEMENT", "below-own");

/// Shows the logs of the code under test for failing tests (`RUST_LOG=debug` for more); once per
/// process, later calls do nothing.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
