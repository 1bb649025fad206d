//! The allocator's configuration.
//!
//! [`AllocatorConfig`] is plain data shared by the core and the edge; [`AllocatorConfig::validate`]
//! is checked by `serve` before anything starts (intervals must be positive so timers and
//! agents never spin). The flags that set it are the edge's (`strata_allocator::flags`).

use std::time::Duration;

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// An interval that drives a timer is zero.
    #[error("{field} must be greater than zero")]
    ZeroInterval {
        /// The config field name.
        field: &'static str,
    },
}

/// How the allocator behaves; see the contract in the workspace notes for each default.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocatorConfig {
    /// Told to agents in `Registered`: how often they must send a heartbeat.
    pub agent_heartbeat_interval: Duration,
    /// No message from an agent this long: its stream is closed (and it has the rest of
    /// `agent_reconnect_timeout`, counted from its last message, to come back).
    pub agent_timeout: Duration,
    /// How long an agent may be gone (its stream ended, or silent) before its tasks are
    /// reported LOST/UNREACHABLE; Mesos-like by default (15 s pings, 5 missed).
    pub agent_reconnect_timeout: Duration,
    /// After an allocator restart, how long agents known from the registry have to
    /// re-register; meanwhile explicit reconciliation of a task the allocator does not know
    /// waits for them instead of answering LOST (Mesos' `agent_reregister_timeout`).
    pub agent_reregister_timeout: Duration,
    /// How often frameworks get a HEARTBEAT event.
    pub framework_heartbeat_interval: Duration,
    /// The periodic allocation tick (filter expiry, timeouts, a full pass). Allocation also
    /// runs promptly after any event that frees resources or adds demand, but a DECLINE (or
    /// an ACCEPT that does nothing or is rejected) refuses its resources to the framework in
    /// that role until the next tick, whatever its refuse_seconds (0 included): the
    /// effective minimum refusal, as in Mesos.
    pub allocation_interval: Duration,
    /// The default refuse_seconds of DECLINE and ACCEPT filters.
    pub default_refuse: Duration,
    /// How many terminal tasks are kept for operators (`strata ps --all`).
    pub terminal_task_history: usize,
    /// An offer neither accepted nor declined this long is rescinded (none: never, as in
    /// Mesos by default).
    pub offer_timeout: Option<Duration>,
    /// This allocator's term as the leader of replicas (`--etcd`), told to agents in
    /// `Registered` so that they refuse an older leader; 0 when not replicated.
    pub leader_epoch: u64,
    /// The most frameworks registered at once (connected or within their failover timeout);
    /// a SUBSCRIBE of a new one beyond it is refused.
    pub max_frameworks: usize,
    /// The most frameworks one principal may have registered at once.
    pub max_frameworks_per_principal: usize,
    /// Who may do what: open (authentication off) or the ACLs enforced. The core decides
    /// `register_agents`, `register_frameworks` (per role) and `run_tasks` (per user); the
    /// edge the operator actions.
    pub policy: strata_auth::Policy,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            agent_heartbeat_interval: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(15),
            agent_reconnect_timeout: Duration::from_secs(75),
            agent_reregister_timeout: Duration::from_secs(600),
            framework_heartbeat_interval: Duration::from_secs(15),
            allocation_interval: Duration::from_secs(1),
            default_refuse: Duration::from_secs(5),
            terminal_task_history: 1000,
            offer_timeout: None,
            leader_epoch: 0,
            max_frameworks: 1000,
            max_frameworks_per_principal: 100,
            policy: strata_auth::Policy::Open,
        }
    }
}

impl AllocatorConfig {
    /// Checks that every interval that drives a timer is positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let intervals = [
            ("agent_heartbeat_interval", self.agent_heartbeat_interval),
            ("agent_timeout", self.agent_timeout),
            ("agent_reregister_timeout", self.agent_reregister_timeout),
            (
                "framework_heartbeat_interval",
                self.framework_heartbeat_interval,
            ),
            ("allocation_interval", self.allocation_interval),
        ];
        for (field, value) in intervals {
            if value.is_zero() {
                return Err(ConfigError::ZeroInterval { field });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract_and_validate() {
        let c = AllocatorConfig::default();
        assert_eq!(c.agent_heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.agent_timeout, Duration::from_secs(15));
        assert_eq!(c.agent_reconnect_timeout, Duration::from_secs(75));
        assert_eq!(c.agent_reregister_timeout, Duration::from_secs(600));
        assert_eq!(c.framework_heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.allocation_interval, Duration::from_secs(1));
        assert_eq!(c.default_refuse, Duration::from_secs(5));
        assert_eq!(c.terminal_task_history, 1000);
        assert_eq!(c.validate(), Ok(()));
        let zero = AllocatorConfig {
            allocation_interval: Duration::ZERO,
            ..c
        };
        assert_eq!(
            zero.validate().unwrap_err().to_string(),
            "allocation_interval must be greater than zero"
        );
    }
}
