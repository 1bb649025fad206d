//! The Strata agent: one per host. It discovers the host's resources, dials the allocator and
//! registers, runs the tasks the allocator launches through a [`containerizer::Containerizer`]
//! (in its own sandbox under the work dir), kills them on request, and delivers their status
//! updates reliably until they are acknowledged.
//!
//! Start one with [`run`]; see `agent` for the invariants it keeps.
//!
//! Modules: [`discovery`] (what the host offers), [`containerizer`] (launching tasks;
//! [`containerizer::linux`] isolates them, [`containerizer::supervisor`] is the per-task
//! supervisor and init that outlive the agent), [`cgroup`] (its cgroup v2 and hybrid
//! backends), `sys` (the small syscall layer, the only module with `unsafe`),
//! [`status`] (reliable status updates), [`checkpoint`] (durable state under the work dir),
//! [`ebpf`] (the kernel-side programs), [`bridge`] (bridge networking: the bridge, leases,
//! veths), [`usage`] (per-task usage records), [`http`] (the
//! agent's own HTTP server: /health, /usage, /metrics, /profile), [`files`] (task sandboxes
//! served over it: browse, read, follow), `connection` (the stream to the
//! allocator) and `agent` (the core that ties them together).

mod agent;
pub mod bridge;
pub mod cgroup;
pub mod checkpoint;
mod connection;
pub mod containerizer;
pub mod discovery;
pub mod ebpf;
pub mod files;
pub mod flags;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod health;
pub mod http;
pub mod http_auth;
pub mod nofile;
pub mod paths;
pub mod profile;
pub mod rtnl;
pub mod status;
#[expect(
    unsafe_code,
    reason = "the syscall layer: the one module that does unsafe operations, each with its SAFETY comment"
)]
mod sys;
pub mod usage;

pub use agent::{AgentConfig, AgentError, Isolation, run, run_with_containerizer};
