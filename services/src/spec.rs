//! App definitions: what an app runs, how many instances, with what, where (constraints), how
//! its health is checked, how failed instances are relaunched (backoff) and how a changed
//! definition is rolled out (upgrade strategy); read from TOML or JSON and validated before the
//! core sees them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_framework_kit::definition::{check_name, duration, parse_text};

/// The longest app id: it becomes part of task ids (`APP.VERSION.SEQ`).
pub const MAX_APP_ID_LEN: usize = 63;
/// The most bytes a definition may hold.
pub const MAX_DEFINITION_BYTES: usize = 64 << 10;
/// The most instances of one app.
pub const MAX_INSTANCES: u32 = 10_000;
/// The most environment variables, constraints and host ports of an app.
pub const MAX_ENV: usize = 256;
/// The most constraints.
pub const MAX_CONSTRAINTS: usize = 32;
/// The most host ports one instance takes.
pub const MAX_PORTS: u32 = 16;

/// One app's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Lower-case letters, digits and `-`, at most [`MAX_APP_ID_LEN`] bytes.
    pub id: String,
    /// What each instance runs (`/bin/sh -c`).
    pub command: String,
    /// How many instances to keep running.
    #[serde(default = "one")]
    pub instances: u32,
    /// CPU cores per instance.
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Memory per instance, MiB.
    #[serde(default = "default_mem")]
    pub mem: f64,
    /// Disk per instance, MiB.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk: f64,
    /// Host ports per instance, taken from the offer: `$PORT0`, `$PORT1`, ... in the
    /// environment. In network mode bridge each is forwarded to the instance's namespace (to the
    /// same port, or to the one `container_ports` gives; `$PORT<i>` is then that port and
    /// `$HOST_PORT<i>` the host's).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ports: u32,
    /// Network mode bridge only: the port in the instance's namespace each host port is
    /// forwarded to, by index (one per host port); without it each maps to the same port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_ports: Vec<u16>,
    /// The instances' network (`host`, `bridge` or `none`; see docs/network.md).
    #[serde(default, skip_serializing_if = "Network::is_host")]
    pub network: Network,
    /// The instances' environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where instances may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How the agent checks each instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Relaunching failed instances.
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// Rolling out a changed definition.
    #[serde(default)]
    pub upgrade: UpgradeSpec,
}

fn one() -> u32 {
    1
}

fn default_cpus() -> f64 {
    0.1
}

fn default_mem() -> f64 {
    32.0
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Where instances may run, as Marathon's `[field, operator, value]`: `field` is `hostname` or
/// an agent attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// `hostname` or an attribute's name.
    pub field: String,
    /// The operator.
    pub operator: Operator,
    /// The operator's value (`LIKE`'s pattern, `EQUALS`'s value, `MAX_PER`'s count).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// A constraint's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operator {
    /// At most one instance per value of the field.
    Unique,
    /// The field equals the value.
    Equals,
    /// The field matches the value, a pattern where `*` is any run of characters.
    Like,
    /// At most `value` instances per value of the field.
    MaxPer,
}

/// The agent-side check of each instance (`strata_proto::HealthCheck`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// `http`, `tcp` or `command`.
    pub protocol: Protocol,
    /// Which of the instance's ports an HTTP or TCP check connects to.
    #[serde(default)]
    pub port_index: u32,
    /// The HTTP path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The command (`/bin/sh -c`) of a command check.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Failures this long after the start do not count until a check passes.
    #[serde(default = "grace", with = "duration")]
    pub grace_period: Duration,
    /// Between two checks.
    #[serde(default = "interval", with = "duration")]
    pub interval: Duration,
    /// One check's limit.
    #[serde(default = "timeout", with = "duration")]
    pub timeout: Duration,
    /// Before the first check.
    #[serde(default, with = "duration")]
    pub delay: Duration,
    /// Consecutive failures that make the agent kill the instance.
    #[serde(default = "three")]
    pub max_consecutive_failures: u32,
}

fn grace() -> Duration {
    Duration::from_secs(10)
}

fn interval() -> Duration {
    Duration::from_secs(2)
}

fn timeout() -> Duration {
    Duration::from_secs(5)
}

fn three() -> u32 {
    3
}

/// An app's network mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network (the default).
    #[default]
    Host,
    /// A namespace of its own with an address on the agent's bridge.
    Bridge,
    /// A namespace of its own with loopback only.
    None,
}

impl Network {
    fn is_host(&self) -> bool {
        *self == Self::Host
    }
}

/// A health check's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `GET http://127.0.0.1:PORT/PATH`, 2xx or 3xx.
    Http,
    /// A TCP connection opens.
    Tcp,
    /// A command exits 0.
    Command,
}

/// Relaunching failed instances: `initial`, then doubling (`factor`) up to `max` while
/// instances keep failing; reset once an instance is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    /// The first delay.
    #[serde(default = "initial", with = "duration")]
    pub initial: Duration,
    /// The growth per failure.
    #[serde(default = "factor")]
    pub factor: f64,
    /// The longest delay.
    #[serde(default = "max_backoff", with = "duration")]
    pub max: Duration,
}

fn initial() -> Duration {
    Duration::from_secs(1)
}

fn factor() -> f64 {
    2.0
}

fn max_backoff() -> Duration {
    Duration::from_secs(300)
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial: initial(),
            factor: factor(),
            max: max_backoff(),
        }
    }
}

impl BackoffSpec {
    /// The delay after `failures` consecutive failures (none after none).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(failures - 1).unwrap_or(i32::MAX).min(64);
        let secs = self.initial.as_secs_f64() * self.factor.powi(exponent);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Rolling out a changed definition (Marathon's upgrade strategy).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSpec {
    /// The share of `instances` that stays healthy throughout (0 to 1).
    #[serde(default = "one_f")]
    pub minimum_health_capacity: f64,
    /// The share of `instances` that may run on top of them (0 to 1).
    #[serde(default = "one_f")]
    pub maximum_over_capacity: f64,
    /// A deploy not done by then is rolled back to the previous definition.
    #[serde(default = "rollback_after", with = "duration")]
    pub rollback_after: Duration,
    /// A deploy whose new instances fail this many times is rolled back.
    #[serde(default = "three")]
    pub max_failures: u32,
}

fn one_f() -> f64 {
    1.0
}

fn rollback_after() -> Duration {
    Duration::from_secs(600)
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        Self {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0,
            rollback_after: rollback_after(),
            max_failures: 3,
        }
    }
}

impl UpgradeSpec {
    /// During a deploy of `n` instances: the fewest healthy ones, and the most in all.
    #[must_use]
    pub fn bounds(&self, n: u32) -> (u32, u32) {
        let n_f = f64::from(n);
        let min_healthy = (n_f * self.minimum_health_capacity).ceil() as u32;
        let mut max_total = n + (n_f * self.maximum_over_capacity).floor() as u32;
        // Something must give: with every instance kept healthy, one may run on top.
        if max_total == n && min_healthy >= n && n > 0 {
            max_total = n + 1;
        }
        (min_healthy.min(n), max_total)
    }
}

/// A definition that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not TOML or JSON of a definition.
    #[error("cannot read the app definition: {reason}")]
    Parse {
        /// The parser's words.
        reason: String,
    },
    /// Too large.
    #[error("the app definition is {len} bytes, more than the {MAX_DEFINITION_BYTES} allowed")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// A bad id.
    #[error(
        "invalid app id {id:?}: {reason}; use lower-case letters, digits and '-', at most {MAX_APP_ID_LEN} bytes"
    )]
    Id {
        /// The id (shortened).
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A bad field.
    #[error("app {id}: {field}: {reason}")]
    Field {
        /// The app.
        id: String,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Checks an app id.
pub fn check_app_id(id: &str) -> Result<(), SpecError> {
    check_name(id, MAX_APP_ID_LEN).map_err(|reason| SpecError::Id {
        id: strata_proto::ids::shorten(id, 64),
        reason,
    })
}

impl AppSpec {
    /// Parses and validates a definition (JSON when it starts with `{`, else TOML).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(SpecError::TooLarge { len: text.len() });
        }
        let spec: Self = parse_text(text).map_err(|reason| SpecError::Parse { reason })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_app_id(&self.id)?;
        let field = |field: &'static str, reason: String| SpecError::Field {
            id: self.id.clone(),
            field,
            reason,
        };
        if self.command.trim().is_empty() {
            return Err(field("command", "is empty".into()));
        }
        if self.command.len() > 16 << 10 {
            return Err(field("command", "is longer than 16 KiB".into()));
        }
        if self.instances > MAX_INSTANCES {
            return Err(field(
                "instances",
                format!("{} is more than {MAX_INSTANCES}", self.instances),
            ));
        }
        for (name, v, least) in [
            ("cpus", self.cpus, strata_proto::limits::MIN_TASK_CPUS),
            ("mem", self.mem, strata_proto::limits::MIN_TASK_MEM_MIB),
            ("disk", self.disk, 0.0),
        ] {
            if !(v.is_finite() && v >= least && v <= 1e7) {
                return Err(field(name, format!("{v} is not between {least} and 1e7")));
            }
        }
        if self.ports > MAX_PORTS {
            return Err(field("ports", format!("at most {MAX_PORTS}")));
        }
        if self.env.len() > MAX_ENV
            || self
                .env
                .iter()
                .any(|(k, v)| k.is_empty() || k.contains('=') || k.len() + v.len() > 4096)
        {
            return Err(field(
                "env",
                format!(
                    "at most {MAX_ENV} variables, names without '=', name and value within 4 KiB"
                ),
            ));
        }
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(field("constraints", format!("at most {MAX_CONSTRAINTS}")));
        }
        for c in &self.constraints {
            if c.field.is_empty() || c.field.len() > 128 || c.value.len() > 256 {
                return Err(field(
                    "constraints",
                    "a field is 1 to 128 bytes and a value at most 256".into(),
                ));
            }
            let needs_value = matches!(c.operator, Operator::Equals | Operator::Like);
            if needs_value && c.value.is_empty() {
                return Err(field(
                    "constraints",
                    format!("{:?} on {:?} needs a value", c.operator, c.field),
                ));
            }
            if c.operator == Operator::MaxPer && c.value.parse::<u32>().map_or(true, |n| n == 0) {
                return Err(field(
                    "constraints",
                    format!("MAX_PER on {:?} needs a count of at least 1", c.field),
                ));
            }
        }
        if !self.container_ports.is_empty() {
            if self.network != Network::Bridge {
                return Err(field(
                    "container_ports",
                    format!(
                        "container_ports are for network bridge, and this app's is {:?}",
                        self.network
                    ),
                ));
            }
            if self.container_ports.len() != self.ports as usize
                || self.container_ports.contains(&0)
            {
                return Err(field(
                    "container_ports",
                    format!(
                        "one port (1 to 65535) per host port: {} given for ports = {}",
                        self.container_ports.len(),
                        self.ports
                    ),
                ));
            }
        }
        if self.network == Network::None {
            // No host port reaches an instance with loopback only; HTTP and TCP checks dial
            // its host ports.
            if self.ports > 0 {
                return Err(field(
                    "ports",
                    "network None takes no host ports (nothing reaches its namespace); use \
                     network bridge or host"
                        .into(),
                ));
            }
            if self
                .health_check
                .as_ref()
                .is_some_and(|h| h.protocol != Protocol::Command)
            {
                return Err(field(
                    "health_check",
                    "network None allows command checks only (HTTP and TCP checks dial host \
                     ports)"
                        .into(),
                ));
            }
        }
        if let Some(h) = &self.health_check {
            match h.protocol {
                Protocol::Http | Protocol::Tcp if h.port_index >= self.ports => {
                    return Err(field(
                        "health_check",
                        format!(
                            "port_index {} needs ports = {} or more",
                            h.port_index,
                            h.port_index + 1
                        ),
                    ));
                }
                Protocol::Command if h.command.trim().is_empty() => {
                    return Err(field(
                        "health_check",
                        "a command check needs a command".into(),
                    ));
                }
                _ => {}
            }
            if h.path.len() > 1024 || (!h.path.is_empty() && !h.path.starts_with('/')) {
                return Err(field(
                    "health_check",
                    "path starts with / and is at most 1024 bytes".into(),
                ));
            }
            if h.interval < Duration::from_secs(1) || h.timeout.is_zero() {
                return Err(field(
                    "health_check",
                    "interval is at least 1s and timeout longer than zero".into(),
                ));
            }
            if !(1..=1000).contains(&h.max_consecutive_failures) {
                return Err(field(
                    "health_check",
                    "max_consecutive_failures is 1 to 1000".into(),
                ));
            }
        }
        let b = &self.backoff;
        if !(b.factor.is_finite() && (1.0..=100.0).contains(&b.factor)) || b.initial > b.max {
            return Err(field(
                "backoff",
                "factor is 1 to 100 and initial at most max".into(),
            ));
        }
        let u = &self.upgrade;
        for (name, v) in [
            ("minimum_health_capacity", u.minimum_health_capacity),
            ("maximum_over_capacity", u.maximum_over_capacity),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(field("upgrade", format!("{name} is {v}: it is 0 to 1")));
            }
        }
        if u.max_failures == 0 || u.rollback_after.is_zero() {
            return Err(field(
                "upgrade",
                "max_failures is at least 1 and rollback_after longer than zero".into(),
            ));
        }
        Ok(())
    }
}

/// Whether `value` matches `pattern`, where `*` is any run of characters.
#[must_use]
pub fn like(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &value[first.len()..];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_definitions_parse_alike() {
        let toml = r#"
id = "web"
command = "python3 -m http.server $PORT0"
instances = 3
ports = 1
constraints = [{ field = "hostname", operator = "UNIQUE" }]
[health_check]
protocol = "http"
path = "/"
interval = "1s"
[upgrade]
minimum_health_capacity = 0.5
"#;
        let json = r#"{"id": "web", "command": "python3 -m http.server $PORT0", "instances": 3,
            "ports": 1, "constraints": [{"field": "hostname", "operator": "UNIQUE"}],
            "health_check": {"protocol": "http", "path": "/", "interval": 1},
            "upgrade": {"minimum_health_capacity": 0.5}}"#;
        let a = AppSpec::parse(toml).unwrap();
        assert_eq!(a, AppSpec::parse(json).unwrap());
        assert_eq!(a.upgrade.bounds(3), (2, 6));
        assert_eq!(a.health_check.unwrap().timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_network_mode_is_host_unless_given_and_bridge_maps_its_host_ports() {
        let host = AppSpec::parse("id = \"a\"\ncommand = \"true\"\n").unwrap();
        assert_eq!(host.network, Network::Host);
        let bridge = AppSpec::parse(
            "id = \"a\"\ncommand = \"true\"\nnetwork = \"bridge\"\nports = 2\n\
             container_ports = [80, 443]\n[health_check]\nprotocol = \"http\"\n",
        )
        .unwrap();
        assert_eq!(bridge.network, Network::Bridge);
        assert_eq!(bridge.container_ports, vec![80, 443]);
        for (text, needle) in [
            ("network = \"overlay\"\n", "overlay"),
            ("network = \"none\"\nports = 1\n", "takes no host ports"),
            (
                "network = \"none\"\n[health_check]\nprotocol = \"tcp\"\n",
                "command checks only",
            ),
            ("ports = 1\ncontainer_ports = [80]\n", "for network bridge"),
            (
                "network = \"bridge\"\nports = 2\ncontainer_ports = [80]\n",
                "one port (1 to 65535) per host port",
            ),
            (
                "network = \"bridge\"\nports = 1\ncontainer_ports = [0]\n",
                "one port (1 to 65535) per host port",
            ),
            (
                "network = \"bridge\"\nports = 1\ncontainer_ports = [70000]\n",
                "container_ports",
            ),
        ] {
            let e = AppSpec::parse(&format!("id = \"a\"\ncommand = \"true\"\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let bad = |text: &str, needle: &str| {
            let e = AppSpec::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        };
        bad("id = \"Web\"\ncommand = \"x\"", "invalid app id");
        bad("id = \"a.b\"\ncommand = \"x\"", "invalid app id");
        bad("id = \"w\"\ncommand = \" \"", "command: is empty");
        bad(
            "id = \"w\"\ncommand = \"x\"\ninstances = 10001",
            "more than 10000",
        );
        bad("id = \"w\"\ncommand = \"x\"\ncpus = 0", "cpus");
        bad("id = \"w\"\ncommand = \"x\"\nnope = 1", "unknown field");
        bad(
            "id = \"w\"\ncommand = \"x\"\n[health_check]\nprotocol = \"http\"",
            "port_index 0 needs ports = 1",
        );
        bad(
            "id = \"w\"\ncommand = \"x\"\n[health_check]\nprotocol = \"command\"\ncommand = \"true\"\ninterval = \"100ms\"",
            "interval is at least 1s",
        );
        bad(
            "id = \"w\"\ncommand = \"x\"\n[upgrade]\nminimum_health_capacity = 1.5",
            "minimum_health_capacity is 1.5",
        );
        bad(
            "id = \"w\"\ncommand = \"x\"\nconstraints = [{ field = \"rack\", operator = \"MAX_PER\", value = \"0\" }]",
            "MAX_PER",
        );
        bad(
            &format!(
                "id = \"w\"\ncommand = \"{}\"",
                "x".repeat(MAX_DEFINITION_BYTES)
            ),
            "more than the 65536 allowed",
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_and_bounds_leave_room() {
        let b = BackoffSpec::default();
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(4));
        assert_eq!(b.delay(100), Duration::from_secs(300));
        let strict = UpgradeSpec {
            maximum_over_capacity: 0.0,
            ..UpgradeSpec::default()
        };
        assert_eq!(strict.bounds(3), (3, 4));
        assert_eq!(UpgradeSpec::default().bounds(0), (0, 0));
    }

    #[test]
    fn like_patterns() {
        assert!(like("rack-*", "rack-1"));
        assert!(like("*a*b*", "xaxbx"));
        assert!(like("r1", "r1"));
        assert!(!like("r1", "r10"));
        assert!(!like("rack-*-x", "rack-x"));
    }
}
