//! Health checks the agent runs next to its tasks, as Mesos' default executor did: the agent
//! checks (not the framework), so a framework cut off from the agent cannot misjudge a task.
//!
//! - [`validate`] bounds a task's [`HealthCheck`] at launch; the agent refuses a bad one with
//!   TASK_ERROR and the message it returns.
//! - [`Tracker`] is the pure policy (grace period, consecutive failures) driven by results and
//!   the time since the checks began; it says when health changed and when to kill the task.
//! - [`Checker::run`] is the loop, run by the task's watcher beside `Container::wait`: it probes
//!   every interval, reports each change of health to the agent's loop (a TASK_RUNNING update
//!   with `healthy`) and returns why the task must be killed once it failed too often.
//!
//! Where a check runs: HTTP and TCP checks connect to `127.0.0.1:PORT` from the agent, which
//! shares the host's network with tasks on the host network (a task in a network namespace of
//! its own cannot have one: refused at launch). A command check is a child of the agent that
//! joins the task's cgroups before it execs (the same pre-exec hook the task's own command
//! uses), so what it uses counts against the task's limits and dies with the task's cgroup;
//! it runs in the task's sandbox, with the task's environment (the check's variables on top)
//! and, when the agent isolates tasks as root, as the task's user. It does not enter the task's
//! private pid and mount namespaces: entering them would mean a setns path through the task's
//! supervisor, and a check needs the task's files (its sandbox) and ports, which it has.

use std::path::PathBuf;
use std::time::Duration;

use strata_proto::{CommandInfo, HealthCheck, TaskInfo, health_check, names};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The longest HTTP check path.
pub const MAX_PATH_LEN: usize = 1024;
/// The most expected HTTP statuses.
pub const MAX_STATUSES: usize = 32;
/// The longest command check (its value and arguments together).
pub const MAX_COMMAND_LEN: usize = 8 * 1024;
/// The most consecutive failures a check may allow.
pub const MAX_FAILURES: u32 = 1000;
/// The longest grace period, delay, interval or timeout.
pub const MAX_SECONDS: f64 = 24.0 * 3600.0;
/// The shortest interval between two checks.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How often and how patiently a task is checked, with Mesos' defaults for unset fields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    pub grace: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_failures: u32,
    pub delay: Duration,
}

fn secs(value: Option<f64>, default: f64) -> Duration {
    Duration::try_from_secs_f64(value.unwrap_or(default)).unwrap_or(Duration::ZERO)
}

impl Policy {
    /// The policy of a validated check.
    #[must_use]
    pub fn of(check: &HealthCheck) -> Self {
        Self {
            grace: secs(check.grace_period_seconds, 10.0),
            interval: secs(check.interval_seconds, 10.0),
            timeout: secs(check.timeout_seconds, 20.0),
            max_failures: check.max_consecutive_failures.unwrap_or(3),
            delay: secs(check.delay_seconds, 15.0),
        }
    }
}

/// Why `task`'s health check cannot run, if it cannot: the message of its TASK_ERROR.
pub fn validate(task: &TaskInfo) -> Result<(), String> {
    let Some(check) = &task.health_check else {
        return Ok(());
    };
    let id = &task.task_id;
    let bad = |what: String| Err(format!("task {id:?} has an invalid health check: {what}"));
    for (name, value, least) in [
        ("grace_period_seconds", check.grace_period_seconds, 0.0),
        ("delay_seconds", check.delay_seconds, 0.0),
        ("timeout_seconds", check.timeout_seconds, 0.001),
        (
            "interval_seconds",
            check.interval_seconds,
            MIN_INTERVAL.as_secs_f64(),
        ),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && (least..=MAX_SECONDS).contains(&v))
        {
            return bad(format!(
                "{name} is {v}: it must be between {least} and {MAX_SECONDS} seconds"
            ));
        }
    }
    if let Some(n) = check.max_consecutive_failures
        && !(1..=MAX_FAILURES).contains(&n)
    {
        return bad(format!(
            "max_consecutive_failures is {n}: it must be between 1 and {MAX_FAILURES}"
        ));
    }
    let port = match &check.check {
        None => return bad("it names no check: give a command, http or tcp check".to_owned()),
        Some(health_check::Check::Command(command)) => {
            let len =
                command.value.len() + command.arguments.iter().map(String::len).sum::<usize>();
            if command.value.is_empty() {
                return bad("its command is empty".to_owned());
            }
            if len > MAX_COMMAND_LEN {
                return bad(format!(
                    "its command is {len} bytes long: at most {MAX_COMMAND_LEN}"
                ));
            }
            return Ok(());
        }
        Some(health_check::Check::Http(http)) => {
            if http.path.len() > MAX_PATH_LEN {
                return bad(format!(
                    "its path is {} bytes long: at most {MAX_PATH_LEN}",
                    http.path.len()
                ));
            }
            if !http.path.is_empty()
                && (!http.path.starts_with('/')
                    || http.path.chars().any(|c| c.is_control() || c == ' '))
            {
                return bad(format!(
                    "its path {:?} must start with / and hold no spaces or control characters",
                    strata_proto::ids::shorten(&http.path, 64)
                ));
            }
            if http.statuses.len() > MAX_STATUSES {
                return bad(format!(
                    "it expects {} statuses: at most {MAX_STATUSES}",
                    http.statuses.len()
                ));
            }
            if let Some(s) = http.statuses.iter().find(|s| !(100..=599).contains(*s)) {
                return bad(format!("expected status {s} is not an HTTP status"));
            }
            http.port
        }
        Some(health_check::Check::Tcp(tcp)) => tcp.port,
    };
    if task.network_isolation {
        return bad(
            "an http or tcp check reaches the task on the host's loopback, and this task runs \
             in a network namespace of its own: use a command check"
                .to_owned(),
        );
    }
    let in_ports = task
        .resources
        .iter()
        .filter(|r| r.name == names::PORTS)
        .flat_map(|r| &r.ranges)
        .any(|r| (r.begin..=r.end).contains(&u64::from(port)));
    if port == 0 || !in_ports {
        return bad(format!(
            "port {port} is not one of the task's \"{}\" resources",
            names::PORTS
        ));
    }
    Ok(())
}

/// What the agent's loop is told after a check result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to report.
    Quiet,
    /// Health changed (or was first known): send TASK_RUNNING with `healthy`.
    Changed { healthy: bool, message: String },
    /// Too many consecutive failures past the grace period: kill the task.
    Kill { why: String },
}

/// The pure policy: which results count and what they change.
#[derive(Clone, Debug)]
pub struct Tracker {
    policy: Policy,
    healthy: Option<bool>,
    passed_once: bool,
    failures: u32,
}

impl Tracker {
    /// A tracker for a task whose last known health was `healthy` (a recovered task keeps it).
    #[must_use]
    pub fn new(policy: Policy, healthy: Option<bool>) -> Self {
        Self {
            policy,
            healthy,
            passed_once: healthy == Some(true),
            failures: 0,
        }
    }

    /// The latest health, once a result has counted.
    #[must_use]
    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }

    /// Records one check's result, `since_start` after the checks began (the task started).
    pub fn record(&mut self, since_start: Duration, result: Result<(), String>) -> Verdict {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.passed_once = true;
                if self.healthy == Some(true) {
                    return Verdict::Quiet;
                }
                self.healthy = Some(true);
                Verdict::Changed {
                    healthy: true,
                    message: "health check passed".to_owned(),
                }
            }
            Err(_) if !self.passed_once && since_start < self.policy.grace => Verdict::Quiet,
            Err(e) => {
                self.failures += 1;
                if self.failures >= self.policy.max_failures {
                    self.healthy = Some(false);
                    return Verdict::Kill {
                        why: format!(
                            "killed because the task is unhealthy: {} consecutive health check \
                             failures (last: {e})",
                            self.failures
                        ),
                    };
                }
                if self.healthy == Some(false) {
                    return Verdict::Quiet;
                }
                self.healthy = Some(false);
                Verdict::Changed {
                    healthy: false,
                    message: format!("health check failed: {e}"),
                }
            }
        }
    }
}

/// One probe.
#[derive(Clone, Debug)]
enum Probe {
    Command {
        command: Box<CommandInfo>,
        sandbox: PathBuf,
        env: Vec<(String, String)>,
        /// The user to run as when the task runs in cgroups as another user.
        user: String,
    },
    Http {
        port: u16,
        path: String,
        statuses: Vec<u32>,
    },
    Tcp {
        port: u16,
    },
}

/// A task's checks, ready to run beside its container.
#[derive(Clone, Debug)]
pub struct Checker {
    probe: Probe,
    tracker: Tracker,
}

/// A health change for the agent's loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub healthy: bool,
    pub message: String,
}

impl Checker {
    /// The checker of a validated task, or `None` when it has no check. `env` is the task's
    /// environment (the check's own variables are put on top); `default_user` the user tasks
    /// run as when they name none (`--task-user`).
    #[must_use]
    pub fn new(
        task: &TaskInfo,
        sandbox: PathBuf,
        env: Vec<(String, String)>,
        default_user: &str,
        healthy: Option<bool>,
    ) -> Option<Self> {
        let check = task.health_check.as_ref()?;
        let port = |p: u32| u16::try_from(p).unwrap_or(0);
        let probe = match check.check.as_ref()? {
            health_check::Check::Command(command) => {
                let mut env: std::collections::BTreeMap<String, String> = env.into_iter().collect();
                env.extend(command.environment.clone());
                let task_user = task.command.as_ref().map_or("", |c| c.user.as_str());
                let user = [command.user.as_str(), task_user, default_user]
                    .into_iter()
                    .find(|u| !u.is_empty())
                    .unwrap_or_default()
                    .to_owned();
                Probe::Command {
                    command: Box::new(command.clone()),
                    sandbox,
                    env: env.into_iter().collect(),
                    user,
                }
            }
            health_check::Check::Http(http) => Probe::Http {
                port: port(http.port),
                path: if http.path.is_empty() {
                    "/".to_owned()
                } else {
                    http.path.clone()
                },
                statuses: http.statuses.clone(),
            },
            health_check::Check::Tcp(tcp) => Probe::Tcp {
                port: port(tcp.port),
            },
        };
        Some(Self {
            probe,
            tracker: Tracker::new(Policy::of(check), healthy),
        })
    }

    /// Checks until the task must be killed; returns why. Each change of health goes to
    /// `on_change`. `procs` are the task's `cgroup.procs` files a command check joins (none
    /// for tasks without cgroups, whose checks run as the agent, as the tasks do).
    pub async fn run(mut self, procs: Vec<PathBuf>, on_change: impl Fn(Change)) -> String {
        let policy = self.tracker.policy;
        let start = tokio::time::Instant::now();
        tokio::time::sleep(policy.delay).await;
        loop {
            let began = tokio::time::Instant::now();
            let result = match tokio::time::timeout(policy.timeout, self.probe_once(&procs)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no answer within the timeout of {:?}",
                    policy.timeout
                )),
            };
            if let Err(e) = &result {
                tracing::debug!(error = %e, "health check failed");
            }
            let was = self.tracker.healthy();
            match self.tracker.record(began - start, result) {
                Verdict::Quiet => {}
                Verdict::Changed { healthy, message } => {
                    tracing::info!(healthy, %message, "task health changed");
                    on_change(Change { healthy, message });
                }
                Verdict::Kill { why } => {
                    tracing::warn!(%why, "killing an unhealthy task");
                    if was != Some(false) {
                        on_change(Change {
                            healthy: false,
                            message: why.clone(),
                        });
                    }
                    return why;
                }
            }
            tokio::time::sleep_until(began + policy.interval).await;
        }
    }

    async fn probe_once(&self, procs: &[PathBuf]) -> Result<(), String> {
        match &self.probe {
            Probe::Tcp { port } => tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}")),
            Probe::Http {
                port,
                path,
                statuses,
            } => http_probe(*port, path, statuses).await,
            Probe::Command {
                command,
                sandbox,
                env,
                user,
            } => {
                // Tasks in cgroups run as their user; so do their checks. Without cgroups
                // tasks run as the agent, and so do theirs.
                let creds = if !procs.is_empty() && nix::unistd::geteuid().is_root() {
                    Some(
                        resolve_user(user)
                            .ok_or_else(|| format!("unknown user {user:?} for the check"))?,
                    )
                } else {
                    None
                };
                command_probe(command, sandbox, env, creds, procs).await
            }
        }
    }
}

/// Whether `status` is what an HTTP check expects.
#[must_use]
pub fn status_passes(status: u16, expected: &[u32]) -> bool {
    if expected.is_empty() {
        (200..400).contains(&status)
    } else {
        expected.contains(&u32::from(status))
    }
}

async fn http_probe(port: u16, path: &str, statuses: &[u32]) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: strata-health-check\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request to 127.0.0.1:{port}: {e}"))?;
    // The status line is all a check reads: at most 256 bytes of it.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 256 {
        let n = stream
            .read(&mut buf[..256 - head.len()])
            .await
            .map_err(|e| format!("cannot read the answer of 127.0.0.1:{port}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("GET http://127.0.0.1:{port}{path} answered no HTTP status line"))?;
    if status_passes(status, statuses) {
        Ok(())
    } else {
        Err(format!(
            "GET http://127.0.0.1:{port}{path} answered {status}"
        ))
    }
}

async fn command_probe(
    command: &CommandInfo,
    sandbox: &std::path::Path,
    env: &[(String, String)],
    user: Option<(u32, u32)>,
    procs: &[PathBuf],
) -> Result<(), String> {
    let mut cmd = if command.shell {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(&command.value);
        cmd
    } else {
        let mut cmd = tokio::process::Command::new(&command.value);
        cmd.args(command.arguments.iter().skip(1));
        cmd
    };
    cmd.current_dir(sandbox)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let mut files = Vec::with_capacity(procs.len());
    for path in procs {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "cannot open {} to join the task's cgroup: {e}",
                    path.display()
                )
            })?;
        files.push(file.into());
    }
    if !files.is_empty() {
        crate::sys::join_cgroups_before_exec(&mut cmd, files);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command.value))?;
    // Dropped on timeout: the whole process group goes with it.
    let mut group = KillGroup(child.id());
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the check failed: {e}"))?;
    group.0 = None;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the check command ended with {status}"))
    }
}

/// Kills a check's process group when dropped (a timed-out check leaves nothing behind).
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The uid and gid of `name` (a user name or a numeric id).
#[must_use]
pub fn resolve_user(name: &str) -> Option<(u32, u32)> {
    use nix::unistd::{Uid, User};
    match name.parse::<u32>() {
        Ok(uid) => Some(
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or((uid, uid), |u| (u.uid.as_raw(), u.gid.as_raw())),
        ),
        Err(_) => User::from_name(name)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw())),
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
