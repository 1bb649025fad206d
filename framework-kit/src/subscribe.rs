//! Subscribing with the saved framework id (a new one when the allocator no longer knows it),
//! retrying with backoff while the allocator cannot be reached.

use std::time::Duration;

use strata_framework::{Backoff, ClientSecurity, Event, Framework, FrameworkBuilder};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Who subscribes, and how.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    /// The allocator.
    pub allocator: &'a str,
    /// TLS files and token.
    pub security: &'a ClientSecurity,
    /// The framework's name.
    pub name: &'a str,
    /// The role offers are taken in.
    pub role: &'a str,
    /// How long the allocator keeps the framework's tasks while it is away.
    pub failover_timeout: Duration,
    /// The saved framework id (empty: a new framework).
    pub framework_id: &'a str,
}

/// Subscribes; retries while the allocator is unreachable; subscribes anew when the allocator
/// refuses the saved id. Other errors end it.
pub async fn subscribe(
    s: Subscription<'_>,
) -> Result<(Framework, mpsc::Receiver<Event>), strata_framework::Error> {
    let mut id = s.framework_id.to_owned();
    let mut backoff = Backoff::default();
    loop {
        let builder = FrameworkBuilder::new(s.allocator)
            .name(s.name)
            .role(s.role)
            .failover_timeout(s.failover_timeout)
            .security(s.security.clone())
            .framework_id(&id);
        match builder.subscribe().await {
            Ok(subscribed) => {
                info!(framework_id = %subscribed.0.framework_id(), allocator = %s.allocator, "subscribed");
                return Ok(subscribed);
            }
            Err(strata_framework::Error::SubscribeRefused { .. }) if !id.is_empty() => {
                warn!(framework_id = %id, "the allocator no longer knows this framework; subscribing as a new one");
                id.clear();
            }
            Err(
                e @ (strata_framework::Error::Connect { .. }
                | strata_framework::Error::SubscribeTimeout { .. }
                | strata_framework::Error::StreamEnded { .. }),
            ) => {
                let wait = backoff.next_delay();
                warn!(allocator = %s.allocator, error = %e, ?wait, "cannot subscribe yet; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}
