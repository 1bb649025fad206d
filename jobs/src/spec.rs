//! Job definitions: what a job runs, with what, when, and what happens when a run fails; read
//! from TOML or JSON and validated before the scheduler sees them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::{Schedule, ScheduleError};

/// The longest job id: it becomes part of task ids (`JOB.RUN.ATTEMPT`), which the agent turns
/// into paths.
pub const MAX_JOB_ID_LEN: usize = 63;
/// The most bytes a definition may hold (TOML or JSON).
pub const MAX_DEFINITION_BYTES: usize = 64 << 10;
/// The most environment variables of a job.
pub const MAX_ENV: usize = 256;
/// The most retries of one run.
pub const MAX_RETRIES: u32 = 100;

/// One job's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's id: lower-case letters, digits and `-`, starting with a letter or digit, at
    /// most [`MAX_JOB_ID_LEN`] bytes.
    pub id: String,
    /// A description, shown by `strata job list`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What to run.
    pub command: JobCommand,
    /// CPU cores per run.
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Memory per run, MiB.
    #[serde(default = "default_mem")]
    pub mem: f64,
    /// Disk per run, MiB.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk: f64,
    /// GPUs per run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: f64,
    /// The task's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The role whose offers the job's runs take (the framework's `--role`; unset: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// When the job runs by itself (unset: only `strata job run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Retries of a failed run.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Kill a run's task once it has been running this long (e.g. `"10m"`).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

fn default_cpus() -> f64 {
    0.1
}

fn default_mem() -> f64 {
    32.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// What a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobCommand {
    /// A script for `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
}

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression of 5 fields (minute hour day-of-month month day-of-week).
    pub cron: String,
    /// The IANA time zone the expression is read in (default `UTC`).
    #[serde(default = "default_zone")]
    pub timezone: String,
    /// What to do when a run is due while an earlier one is still active.
    #[serde(default)]
    pub concurrency: ConcurrencyPolicy,
    /// A scheduled run that cannot start within this long of its time is skipped and recorded
    /// as such (unset: it starts however late, but of several missed times only the latest
    /// runs).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub starting_deadline: Option<Duration>,
}

fn default_zone() -> String {
    "UTC".to_owned()
}

/// What to do with a new run while earlier runs of the job are active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicy {
    /// Start it beside them.
    #[default]
    Allow,
    /// Skip it (a manual run is refused).
    Forbid,
    /// Kill them and start it.
    Replace,
}

/// Retries of a failed run: attempt `n + 1` starts `min(initial * 2^(n-1), max)` after attempt
/// `n` failed, up to `max_retries` retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// How many times a failed run is tried again (0: never).
    #[serde(default)]
    pub max_retries: u32,
    /// The wait before the first retry.
    #[serde(default = "default_initial_backoff", with = "duration")]
    pub initial_backoff: Duration,
    /// The longest wait between retries.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
}

fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_retries: 0,
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetrySpec {
    /// The wait before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// A definition that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither valid TOML nor valid JSON.
    #[error("cannot read the job definition: {reason}")]
    Parse {
        /// The parser's words.
        reason: String,
    },
    /// Larger than [`MAX_DEFINITION_BYTES`].
    #[error("the job definition is {len} bytes, more than the {MAX_DEFINITION_BYTES} allowed")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The id is not usable.
    #[error(
        "invalid job id {id:?}: {reason}; use lower-case letters, digits and '-', at most {MAX_JOB_ID_LEN} bytes"
    )]
    Id {
        /// The id (shortened).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A field has a value that cannot work.
    #[error("job {id}: {field}: {reason}")]
    Field {
        /// The job.
        id: String,
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The schedule does not parse.
    #[error("job {id}: {source}")]
    Schedule {
        /// The job.
        id: String,
        /// Why.
        source: ScheduleError,
    },
}

/// Checks a job id: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most [`MAX_JOB_ID_LEN`] bytes. It never
/// holds `.`, which separates the parts of task ids.
pub fn check_job_id(id: &str) -> Result<(), SpecError> {
    strata_framework_kit::definition::check_name(id, MAX_JOB_ID_LEN).map_err(|reason| {
        SpecError::Id {
            id: strata_proto::ids::shorten(id, 64),
            reason,
        }
    })
}

impl JobSpec {
    /// Reads a definition from TOML or JSON (JSON when it starts with `{`), and validates it.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(SpecError::TooLarge { len: text.len() });
        }
        let spec: Self = strata_framework_kit::definition::parse_text(text)
            .map_err(|reason| SpecError::Parse { reason })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; returns the parsed schedule, if any.
    pub fn validate(&self) -> Result<Option<Schedule>, SpecError> {
        check_job_id(&self.id)?;
        let field = |field: &'static str, reason: String| SpecError::Field {
            id: self.id.clone(),
            field,
            reason,
        };
        match &self.command {
            JobCommand::Shell(script) if script.trim().is_empty() => {
                return Err(field("command", "it is empty".into()));
            }
            JobCommand::Argv(argv) if argv.is_empty() || argv[0].is_empty() => {
                return Err(field("command", "it names no program".into()));
            }
            JobCommand::Shell(s) if s.contains('\0') => {
                return Err(field("command", "it holds a NUL byte".into()));
            }
            JobCommand::Argv(argv) if argv.iter().any(|a| a.contains('\0')) => {
                return Err(field("command", "it holds a NUL byte".into()));
            }
            _ => {}
        }
        let min = strata_proto::limits::MIN_TASK_CPUS;
        if !self.cpus.is_finite() || self.cpus < min {
            return Err(field("cpus", format!("must be at least {min}")));
        }
        let min = strata_proto::limits::MIN_TASK_MEM_MIB;
        if !self.mem.is_finite() || self.mem < min {
            return Err(field("mem", format!("must be at least {min} MiB")));
        }
        for (name, v) in [("disk", self.disk), ("gpus", self.gpus)] {
            if !v.is_finite() || v < 0.0 {
                return Err(field(
                    if name == "disk" { "disk" } else { "gpus" },
                    "must be zero or more".into(),
                ));
            }
        }
        if self.env.len() > MAX_ENV {
            return Err(field("env", format!("more than {MAX_ENV} variables")));
        }
        if let Some((k, _)) = self
            .env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(field(
                "env",
                format!(
                    "{:?} is not a valid variable",
                    strata_proto::ids::shorten(k, 64)
                ),
            ));
        }
        if let Some(role) = &self.role
            && role.is_empty()
        {
            return Err(field("role", "is empty; leave it out for any role".into()));
        }
        if self.retry.max_retries > MAX_RETRIES {
            return Err(field("retry.max_retries", format!("at most {MAX_RETRIES}")));
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            return Err(field(
                "retry.initial_backoff",
                "is longer than retry.max_backoff".into(),
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(field("timeout", "must be longer than zero".into()));
        }
        match &self.schedule {
            None => Ok(None),
            Some(s) => Schedule::new(&s.cron, &s.timezone)
                .map(Some)
                .map_err(|source| SpecError::Schedule {
                    id: self.id.clone(),
                    source,
                }),
        }
    }
}

use strata_framework_kit::definition::{duration, opt_duration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_definitions_parse_alike() {
        let toml = r#"
            id = "nightly-report"
            command = "echo report"
            cpus = 0.5
            mem = 64
            env = { A = "1" }
            timeout = "10m"
            [schedule]
            cron = "30 2 * * *"
            timezone = "Europe/Berlin"
            concurrency = "forbid"
            starting_deadline = "5m"
            [retry]
            max_retries = 2
            initial_backoff = "10s"
            max_backoff = "1m"
        "#;
        let spec = JobSpec::parse(toml).unwrap();
        assert_eq!(spec.command, JobCommand::Shell("echo report".into()));
        assert_eq!(spec.timeout, Some(Duration::from_secs(600)));
        let schedule = spec.schedule.as_ref().unwrap();
        assert_eq!(schedule.concurrency, ConcurrencyPolicy::Forbid);
        assert_eq!(schedule.starting_deadline, Some(Duration::from_secs(300)));
        assert_eq!(spec.retry.max_retries, 2);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(JobSpec::parse(&json).unwrap(), spec);

        let argv = JobSpec::parse(r#"{"id": "a", "command": ["ls", "-l"]}"#).unwrap();
        assert_eq!(
            argv.command,
            JobCommand::Argv(vec!["ls".into(), "-l".into()])
        );
        assert_eq!(argv.cpus, 0.1);
        assert_eq!(argv.retry, RetrySpec::default());
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let cases = [
            (
                r#"id = "A" 
command = "x""#,
                "invalid job id",
            ),
            (
                r#"id = "a.b" 
command = "x""#,
                "other than a-z",
            ),
            (
                r#"id = "../x" 
command = "x""#,
                "other than a-z",
            ),
            (
                r#"id = "-a" 
command = "x""#,
                "starts or ends",
            ),
            (
                r#"id = "a" 
command = """#,
                "command: it is empty",
            ),
            (
                r#"id = "a" 
command = []"#,
                "names no program",
            ),
            (
                r#"id = "a" 
command = "x"
cpus = 0"#,
                "cpus: must be at least",
            ),
            (
                r#"id = "a" 
command = "x"
timeout = "0s""#,
                "timeout",
            ),
            (
                r#"id = "a" 
command = "x"
[schedule]
cron = "61 * * * *""#,
                "cron",
            ),
            (
                r#"id = "a" 
command = "x"
[schedule]
cron = "* * * * *"
timezone = "Mars/Olympus""#,
                "time zone",
            ),
            (
                r#"id = "a" 
command = "x"
[retry]
initial_backoff = "2m"
max_backoff = "1m""#,
                "longer than retry.max_backoff",
            ),
            (
                r#"id = "a" 
command = "x"
colour = "red""#,
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let err = JobSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let long = format!("id = \"{}\"\ncommand = \"x\"", "a".repeat(64));
        assert!(
            JobSpec::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        let huge = " ".repeat(MAX_DEFINITION_BYTES + 1);
        assert!(matches!(
            JobSpec::parse(&huge),
            Err(SpecError::TooLarge { .. })
        ));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let retry = RetrySpec {
            max_retries: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        };
        let waits: Vec<u64> = (1..=6).map(|a| retry.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(retry.backoff(1000).as_secs(), 10);
    }
}
