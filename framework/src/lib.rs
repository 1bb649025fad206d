//! The Strata framework SDK: write a scheduler that takes resource offers from the Strata
//! allocator and runs tasks on its agents, in the style of the Mesos v1 scheduler API.
//!
//! [`FrameworkBuilder::subscribe`] opens the Subscribe stream and returns a [`Framework`] handle
//! (cloneable; for calls) and a receiver of [`Event`]s. A background task owns the stream: it
//! writes calls, reads events, acknowledges status updates right after handing them to you (unless
//! [`FrameworkBuilder::auto_acknowledge`] is off), and when the stream breaks it sends
//! [`Event::Disconnected`], re-subscribes with the same framework id (backoff 100 ms doubling to
//! 5 s) and sends [`Event::Subscribed`] again. Calls made meanwhile fail with
//! [`Error::NotConnected`].
//!
//! ```no_run
//! use strata_framework::{Event, FrameworkBuilder, OfferExt, task};
//!
//! # async fn example() -> Result<(), strata_framework::Error> {
//! let (client, mut events) = FrameworkBuilder::new("http://127.0.0.1:5050")
//!     .name("hello")
//!     .subscribe()
//!     .await?;
//! let mut launched = false;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Offers(offers) => {
//!             for offer in offers {
//!                 if !launched && offer.cpus() >= 0.1 && offer.mem() >= 32.0 {
//!                     let t = task("hello-1").shell("echo hello").cpus(0.1).mem(32.0).build();
//!                     client.launch(&offer, vec![t]).await?;
//!                     launched = true;
//!                 } else {
//!                     client.decline(vec![offer.id.clone()], None).await?;
//!                 }
//!             }
//!         }
//!         Event::Update(status) => {
//!             println!("{} {}", status.task_id, status.state().label());
//!             if status.state().is_terminal() {
//!                 client.teardown().await?;
//!             }
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A fuller example that packs many tasks into offers is `examples/batch.rs`
//! (`cargo run -p strata-framework --example batch -- --tasks 10`).

mod builder;
mod client;
mod connect;
mod driver;
mod error;
mod event;
mod resources;
mod task;

#[cfg(test)]
mod fake_allocator_tests;

pub use builder::FrameworkBuilder;
pub use client::Framework;
pub use connect::{
    AuthChannel, AuthInterceptor, ClientError, ClientSecurity, allocator_url, dial, dial_secure,
    dial_with_timeout, secure_endpoint, tls_config,
};
pub use error::Error;
pub use event::Event;
pub use resources::{
    OfferExt, ResourceBudget, offer_cpus, offer_disk, offer_gpus, offer_mem, offer_ports, ranges,
    round_scalar,
};
pub use strata_common::Backoff;
pub use task::{TaskBuilder, task};

/// The wire types frameworks work with (`Offer`, `TaskInfo`, `TaskStatus`, `TaskState`, ...).
pub use strata_proto as proto;
