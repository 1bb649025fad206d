//! [`FrameworkBuilder`]: describes a framework and subscribes it to the allocator, starting the
//! driver task that owns the stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use strata_proto::{FrameworkCapability, FrameworkInfo};
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span};

use crate::connect::{self, ClientSecurity, DEFAULT_CONNECT_TIMEOUT};
use crate::driver::{Driver, subscribe_once};
use crate::{Error, Framework};
use strata_common::Backoff;

/// Describes a framework and subscribes it; see the [crate docs](crate) for an example.
#[derive(Debug, Clone)]
pub struct FrameworkBuilder {
    allocator: String,
    framework_id: String,
    name: String,
    user: String,
    roles: Vec<String>,
    hostname: String,
    webui_url: String,
    failover_timeout: Duration,
    partition_aware: bool,
    gpu_resources: bool,
    offer_filters: std::collections::HashMap<String, strata_proto::MinAllocatable>,
    auto_acknowledge: bool,
    suppressed: bool,
    subscribe_timeout: Duration,
    event_capacity: usize,
    security: ClientSecurity,
}

impl FrameworkBuilder {
    /// A framework for the allocator at `allocator` (`http://127.0.0.1:5050`, `host:port`, or
    /// `https://host:port` for TLS; or the replicas of a highly available allocator separated
    /// by commas: the one that answers, the leader, is used, and after a failover the SDK
    /// re-subscribes to the one that answers then). The CA, client certificate and key, and token are read
    /// from `STRATA_CA`, `STRATA_CERT`, `STRATA_KEY` and `STRATA_TOKEN` when set (as `$USER`
    /// is for the user); [`tls_ca`](Self::tls_ca), [`identity`](Self::identity),
    /// [`token`](Self::token) and [`security`](Self::security) replace them.
    pub fn new(allocator: impl Into<String>) -> Self {
        Self {
            allocator: allocator.into(),
            framework_id: String::new(),
            name: "strata-framework".to_owned(),
            user: std::env::var("USER").unwrap_or_default(),
            roles: vec!["*".to_owned()],
            hostname: String::new(),
            webui_url: String::new(),
            failover_timeout: Duration::ZERO,
            partition_aware: false,
            gpu_resources: false,
            offer_filters: Default::default(),
            auto_acknowledge: true,
            suppressed: false,
            subscribe_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            security: ClientSecurity::from_env(),
        }
    }

    /// All of the TLS files and the token at once (`ClientSecurity::none()` for a plain,
    /// anonymous connection whatever the environment says).
    pub fn security(mut self, security: ClientSecurity) -> Self {
        self.security = security;
        self
    }

    /// The CA certificate (PEM) that verifies an `https://` allocator.
    pub fn tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.security.ca = Some(ca.into());
        self
    }

    /// The client certificate and key (PEM) presented to the allocator; the certificate's
    /// common name is the framework's principal.
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.security.cert = Some(cert.into());
        self.security.key = Some(key.into());
        self
    }

    /// The bearer token sent with every call (`strata token create`); never logged.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.security.token = Some(token.into());
        self
    }

    /// The framework's name, shown by `strata frameworks`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The user tasks run as by default (`$USER` unless set).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The role the framework takes resources in (default `*`).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles = vec![role.into()];
        self
    }

    /// The host the framework runs on (informational).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// Where the framework serves its own web UI (an `http://` or `https://` URL of at most
    /// 256 bytes; the allocator keeps nothing else): the dashboard links to it.
    pub fn webui_url(mut self, url: impl Into<String>) -> Self {
        self.webui_url = url.into();
        self
    }

    /// Declares PARTITION_AWARE: tasks on an agent that stops answering are reported
    /// TASK_UNREACHABLE instead of TASK_LOST.
    pub fn partition_aware(mut self, partition_aware: bool) -> Self {
        self.partition_aware = partition_aware;
        self
    }

    /// Declares GPU_RESOURCES: the framework can use GPUs, and only such frameworks are
    /// offered agents that have any (so that CPU-only work does not strand them).
    pub fn gpu_resources(mut self, gpu_resources: bool) -> Self {
        self.gpu_resources = gpu_resources;
        self
    }

    /// Offers to `role` must hold at least these quantities (like `[("cpus", 1.0), ("mem",
    /// 512.0)]`); called again for the same role, offers need hold only one of the sets
    /// (Mesos' offer_filters with min_allocatable_resources).
    pub fn min_offer(mut self, role: &str, quantities: &[(&str, f64)]) -> Self {
        self.offer_filters
            .entry(role.to_owned())
            .or_default()
            .quantities
            .push(strata_proto::Quantities {
                quantities: quantities
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), *value))
                    .collect(),
            });
        self
    }

    /// Subscribes suppressed (SUBSCRIBE's `suppressed_roles`): no offers until
    /// [`Framework::revive`], for a framework that has nothing to launch yet. The SDK keeps
    /// the state that [`Framework::suppress`] and [`Framework::revive`] last set and
    /// subscribes with it again after a reconnect, so a suppressed framework stays so.
    pub fn suppressed(mut self, suppressed: bool) -> Self {
        self.suppressed = suppressed;
        self
    }

    /// How long the allocator keeps this framework (and its tasks) after its stream breaks.
    /// Zero (the default) removes it, killing its tasks, as soon as it disconnects.
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

    /// Whether the SDK acknowledges each update (that carries a uuid) right after handing it to
    /// the application (default true). With false, call
    /// [`Framework::acknowledge`](crate::Framework::acknowledge) yourself, or the agent resends.
    pub fn auto_acknowledge(mut self, auto: bool) -> Self {
        self.auto_acknowledge = auto;
        self
    }

    /// Subscribes as an existing framework (after a failover), instead of registering a new one.
    pub fn framework_id(mut self, framework_id: impl Into<String>) -> Self {
        self.framework_id = framework_id.into();
        self
    }

    /// How long [`subscribe`](Self::subscribe) waits for SUBSCRIBED (default 10 s).
    pub fn subscribe_timeout(mut self, timeout: Duration) -> Self {
        self.subscribe_timeout = timeout;
        self
    }

    /// How many events may wait in the receiver before the SDK stops reading the stream
    /// (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// The FrameworkInfo sent in SUBSCRIBE.
    pub fn framework_info(&self) -> FrameworkInfo {
        FrameworkInfo {
            id: self.framework_id.clone(),
            name: self.name.clone(),
            user: self.user.clone(),
            roles: self.roles.clone(),
            failover_timeout_seconds: self.failover_timeout.as_secs_f64(),
            capabilities: [
                (self.partition_aware, FrameworkCapability::PartitionAware),
                (self.gpu_resources, FrameworkCapability::GpuResources),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| c as i32)
            .collect(),
            hostname: self.hostname.clone(),
            webui_url: self.webui_url.clone(),
            offer_filters: self.offer_filters.clone(),
        }
    }

    /// Subscribes and returns once SUBSCRIBED arrived: the [`Framework`] handle for calls, and
    /// the receiver of [`Event`](crate::Event)s, starting with `Subscribed`.
    ///
    /// Fails at once when the allocator cannot be reached ([`Error::Connect`]) or refuses
    /// ([`Error::SubscribeRefused`]), and after the subscribe timeout without SUBSCRIBED.
    pub async fn subscribe(self) -> Result<(Framework, mpsc::Receiver<crate::Event>), Error> {
        let (targets, auth) = connect::secure_targets(
            &self.allocator,
            DEFAULT_CONNECT_TIMEOUT.min(self.subscribe_timeout),
            &self.security,
        )?;
        let addr = targets.describe();
        let mut info = self.framework_info();
        let subscription = match tokio::time::timeout(
            self.subscribe_timeout,
            subscribe_once(&targets, &auth, info.clone(), self.suppressed),
        )
        .await
        {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::SubscribeTimeout {
                    addr,
                    timeout: self.subscribe_timeout,
                });
            }
        };
        info.id.clone_from(&subscription.framework_id);
        let framework_id = subscription.framework_id.clone();
        info!(framework_id = %framework_id, allocator = %addr, name = %info.name, "subscribed");

        let (events_tx, events_rx) = mpsc::channel(self.event_capacity);
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let connected = Arc::new(AtomicBool::new(true));
        let suppressed = Arc::new(AtomicBool::new(self.suppressed));
        let driver = Driver {
            suppressed: Arc::clone(&suppressed),
            addr: addr.clone(),
            targets,
            auth,
            info,
            auto_acknowledge: self.auto_acknowledge,
            connected: Arc::clone(&connected),
            backoff: Backoff::default(),
        };
        let span = info_span!("framework", framework_id = %framework_id);
        tokio::spawn(
            driver
                .run(subscription, commands_rx, events_tx)
                .instrument(span),
        );
        Ok((
            Framework::new(framework_id, addr, commands_tx, connected, suppressed),
            events_rx,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_info_reflects_the_builder() {
        let info = FrameworkBuilder::new("127.0.0.1:5050")
            .name("batch")
            .user("alice")
            .role("analytics")
            .partition_aware(true)
            .failover_timeout(Duration::from_secs(60))
            .framework_id("f-7")
            .framework_info();
        assert_eq!(info.name, "batch");
        assert_eq!(info.user, "alice");
        assert_eq!(info.roles, ["analytics"]);
        assert_eq!(info.failover_timeout_seconds, 60.0);
        assert_eq!(
            info.capabilities,
            [FrameworkCapability::PartitionAware as i32]
        );
        assert_eq!(info.id, "f-7");

        let both = FrameworkBuilder::new("x:1")
            .partition_aware(true)
            .gpu_resources(true)
            .framework_info();
        assert_eq!(
            both.capabilities,
            [
                FrameworkCapability::PartitionAware as i32,
                FrameworkCapability::GpuResources as i32
            ]
        );

        let defaults = FrameworkBuilder::new("x:1").framework_info();
        assert_eq!(defaults.roles, ["*"]);
        assert!(defaults.capabilities.is_empty());
        assert!(defaults.id.is_empty());
        assert_eq!(defaults.failover_timeout_seconds, 0.0);
        assert!(defaults.offer_filters.is_empty());

        let picky = FrameworkBuilder::new("x:1")
            .min_offer("*", &[("cpus", 1.0), ("mem", 512.0)])
            .min_offer("*", &[("gpus", 1.0)])
            .framework_info();
        let sets = &picky.offer_filters["*"].quantities;
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].quantities["mem"], 512.0);
        assert_eq!(sets[1].quantities["gpus"], 1.0);
    }
}
