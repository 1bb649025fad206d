//! The allocator's configuration and the duration syntax its flags accept.
//!
//! [`AllocatorConfig`] is plain data shared by the core and the edge; [`AllocatorConfig::validate`]
//! is checked by `serve` before anything starts (intervals must be positive so timers and
//! agents never spin). Durations are written `500ms`, `5s`, `2m`, `1h` or plain (possibly
//! fractional) seconds.

use std::time::Duration;

/// What is wrong with a configuration or a duration flag.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A duration string could not be parsed.
    #[error("invalid duration {input:?}: write it like 500ms, 5s, 2m, 1h or a number of seconds")]
    InvalidDuration {
        /// What was given.
        input: String,
    },
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
    /// No message from an agent this long: it is unreachable.
    pub agent_timeout: Duration,
    /// After an agent's stream ends, how long before its tasks are reported LOST/UNREACHABLE.
    pub agent_reconnect_timeout: Duration,
    /// How often frameworks get a HEARTBEAT event.
    pub framework_heartbeat_interval: Duration,
    /// The periodic allocation tick (filter expiry, timeouts). Allocation also runs promptly
    /// after any event that frees resources or adds demand.
    pub allocation_interval: Duration,
    /// The default refuse_seconds of DECLINE and ACCEPT filters.
    pub default_refuse: Duration,
    /// How many terminal tasks are kept for operators (`strata ps --all`).
    pub terminal_task_history: usize,
    /// An offer neither accepted nor declined this long is rescinded (none: never, as in
    /// Mesos by default).
    pub offer_timeout: Option<Duration>,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            agent_heartbeat_interval: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(15),
            agent_reconnect_timeout: Duration::from_secs(5),
            framework_heartbeat_interval: Duration::from_secs(15),
            allocation_interval: Duration::from_secs(1),
            default_refuse: Duration::from_secs(5),
            terminal_task_history: 1000,
            offer_timeout: None,
        }
    }
}

impl AllocatorConfig {
    /// Checks that every interval that drives a timer is positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let intervals = [
            ("agent_heartbeat_interval", self.agent_heartbeat_interval),
            ("agent_timeout", self.agent_timeout),
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

/// Parses `500ms`, `5s`, `2m`, `1h` or a plain number of seconds (`1.5`).
pub fn parse_duration(input: &str) -> Result<Duration, ConfigError> {
    let err = || ConfigError::InvalidDuration {
        input: input.to_owned(),
    };
    let s = input.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| err())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("500ms", Some(Duration::from_millis(500))),
            ("5s", Some(Duration::from_secs(5))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("3", Some(Duration::from_secs(3))),
            ("0.25", Some(Duration::from_millis(250))),
            ("0", Some(Duration::ZERO)),
            (" 1s ", Some(Duration::from_secs(1))),
            ("", None),
            ("s", None),
            ("-1s", None),
            ("five", None),
            ("5 days", None),
            ("NaN", None),
        ];
        for (input, want) in cases {
            match want {
                Some(d) => assert_eq!(parse_duration(input), Ok(*d), "{input:?}"),
                None => assert_eq!(
                    parse_duration(input),
                    Err(ConfigError::InvalidDuration {
                        input: (*input).to_owned()
                    }),
                    "{input:?}"
                ),
            }
        }
    }

    #[test]
    fn defaults_match_the_contract_and_validate() {
        let c = AllocatorConfig::default();
        assert_eq!(c.agent_heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.agent_timeout, Duration::from_secs(15));
        assert_eq!(c.agent_reconnect_timeout, Duration::from_secs(5));
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
