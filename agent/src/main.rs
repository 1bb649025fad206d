//! `strata-agent`: runs the Strata agent on this host until SIGINT or SIGTERM.
//!
//! Flags map one to one onto [`strata_agent::AgentConfig`]; durations accept `500ms`, `5s`,
//! `2m`, `1h` or plain seconds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use strata_agent::{AgentConfig, Isolation};
use tracing_subscriber::EnvFilter;

/// Runs the Strata agent: registers this host's resources with the allocator and runs the
/// tasks it is given.
#[derive(Debug, Parser)]
#[command(name = "strata-agent", version)]
struct Args {
    /// The allocator to dial (a URL or host:port).
    #[arg(
        long,
        env = "STRATA_ALLOCATOR",
        default_value = "http://127.0.0.1:5050"
    )]
    allocator: String,
    /// Where the agent keeps its id, task sandboxes and run files (created if missing).
    #[arg(long, env = "STRATA_AGENT_WORK_DIR")]
    work_dir: PathBuf,
    /// The host name to register with (default: this host's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Cpus to offer (default: the cpus this process may use).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory to offer, in MiB (default: MemTotal minus a reserve, within the agent's cgroup limit).
    #[arg(long = "mem")]
    mem_mib: Option<f64>,
    /// Disk to offer, in MiB (default: the free space of the work dir's filesystem).
    #[arg(long = "disk")]
    disk_mib: Option<f64>,
    /// Ports to offer, as BEGIN-END (default: 31000-32000).
    #[arg(long, value_parser = parse_ports)]
    ports: Option<(u64, u64)>,
    /// An attribute to register with, as NAME=VALUE (repeatable).
    #[arg(long = "attribute", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// Grace between SIGTERM and SIGKILL for tasks that set none.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    default_kill_grace_period: Duration,
    /// First resend of an unacknowledged status update (doubles up to 10 minutes).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    status_update_retry: Duration,
    /// Longest wait between attempts to reach the allocator.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    reconnect_backoff_max: Duration,

    /// Do not load the eBPF accounting programs.
    #[arg(long)]
    no_ebpf: bool,
    /// How to isolate tasks: auto (cgroups when possible), cgroups (required) or none.
    #[arg(long, default_value = "auto", value_parser = parse_isolation)]
    isolation: Isolation,
    /// The agent's cgroup subtree, relative to each hierarchy's mount, e.g. /strata (default:
    /// strata-<hash of the work dir>, placed by --cgroup-placement).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Where the cgroup subtree goes: auto (the delegated cgroup the agent runs in, a systemd
    /// scope asked for when started from a shell, else a top-level cgroup), top-level, or
    /// below-own (below the cgroup the agent was started in: shared development machines).
    #[arg(long, env = "STRATA_CGROUP_PLACEMENT", default_value = "auto", value_parser = strata_agent::cgroup::Placement::parse)]
    cgroup_placement: strata_agent::cgroup::Placement,
    /// pids.max of tasks that set no pids limit.
    #[arg(long, default_value_t = 4096)]
    default_pids_limit: u64,
    /// How long the sandbox of an ended task is kept before it is removed.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    sandbox_gc_delay: Duration,
    /// The user tasks run as when they name none.
    #[arg(long, default_value = "nobody")]
    task_user: String,
    /// Let tasks run as root (uid 0).
    #[arg(long)]
    allow_root_tasks: bool,
    /// Kill every task when the agent stops (default: tasks keep running and the next agent
    /// re-attaches to them).
    #[arg(long)]
    kill_tasks_on_shutdown: bool,
    /// Instead of running: kill every task this agent (same work dir and cgroup root) left
    /// running, remove its cgroups, and exit.
    #[arg(long)]
    remove_cgroups: bool,
    /// How often each running task's usage is measured and reported.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    usage_interval: Duration,
    /// Where to serve /health, /usage and /metrics, as ADDR:PORT (port 0 picks a free one), or
    /// `none`.
    #[arg(long, default_value = "0.0.0.0:5051", value_parser = parse_listen)]
    http_listen: Listen,
}

/// `--http-listen`: an address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.trim() == "none" {
        return Ok(Listen(None));
    }
    text.trim().parse().map(|a| Listen(Some(a))).map_err(|_| {
        format!(
            "{text:?} is not an address: use ADDR:PORT, like 0.0.0.0:5051 or 127.0.0.1:0, or none"
        )
    })
}

fn parse_isolation(text: &str) -> Result<Isolation, String> {
    match text {
        "auto" => Ok(Isolation::Auto),
        "cgroups" => Ok(Isolation::Cgroups),
        "none" => Ok(Isolation::None),
        other => Err(format!(
            "unknown isolation {other:?}: use auto, cgroups or none"
        )),
    }
}

/// `500ms`, `5s`, `2m`, `1h` or plain (possibly fractional) seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: use a number with an optional unit, like 500ms, 5s, 2m or 1h")
    })?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// `BEGIN-END`, with BEGIN <= END.
fn parse_ports(text: &str) -> Result<(u64, u64), String> {
    let err = || format!("{text:?} is not a ports range: use BEGIN-END, like 31000-32000");
    let (begin, end) = text.split_once('-').ok_or_else(err)?;
    let begin: u64 = begin.trim().parse().map_err(|_| err())?;
    let end: u64 = end.trim().parse().map_err(|_| err())?;
    if begin > end || end > 65535 {
        return Err(err());
    }
    Ok((begin, end))
}

/// `NAME=VALUE` with a non-empty name.
fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not an attribute: use NAME=VALUE, like rack=r1"
        )),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
    }
}

fn main() -> ExitCode {
    // The supervisor and launcher modes run before any thread exists (they fork and unshare
    // namespaces).
    let mut raw = std::env::args_os().skip(1);
    match (raw.next().as_deref().and_then(|a| a.to_str()), raw.next()) {
        (Some("supervise"), Some(run_dir)) => {
            return ExitCode::from(strata_agent::containerizer::supervisor::supervise_main(
                std::path::Path::new(&run_dir),
            ));
        }
        (Some("launcher"), None) => {
            return ExitCode::from(strata_agent::containerizer::supervisor::launcher_main());
        }
        _ => {}
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(agent_main()),
        Err(e) => {
            eprintln!("strata-agent: error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn agent_main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut config = AgentConfig::new(args.allocator, args.work_dir);
    config.hostname = args.hostname;
    config.cpus = args.cpus;
    config.mem_mib = args.mem_mib;
    config.disk_mib = args.disk_mib;
    config.ports = args.ports;
    config.attributes = args.attributes;
    config.default_kill_grace_period = args.default_kill_grace_period;
    config.status_update_retry = args.status_update_retry;
    config.reconnect_backoff_max = args.reconnect_backoff_max;
    config.ebpf = !args.no_ebpf;
    config.isolation = args.isolation;
    config.cgroup_root = args.cgroup_root;
    config.cgroup_placement = args.cgroup_placement;
    config.default_pids_limit = args.default_pids_limit;
    config.sandbox_gc_delay = args.sandbox_gc_delay;
    config.task_user = args.task_user;
    config.allow_root_tasks = args.allow_root_tasks;
    config.kill_tasks_on_shutdown = args.kill_tasks_on_shutdown;
    config.usage_interval = args.usage_interval;
    config.http_listen = args.http_listen.0;
    if args.remove_cgroups {
        let roots = &config.roots;
        let removed =
            strata_agent::cgroup::detect(&roots.proc, &roots.cgroup, &config.root_placement())
                .and_then(|cgroups| cgroups.destroy_root());
        return match removed {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strata-agent: error: {e}");
                ExitCode::FAILURE
            }
        };
    }

    match strata_agent::run(config, termination()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ports_and_attributes_are_parsed() {
        assert_eq!(parse_ports("31000-32000"), Ok((31000, 32000)));
        assert!(parse_ports("32000-31000").is_err());
        assert!(parse_ports("31000").is_err());
        assert_eq!(
            parse_attribute("rack=r1"),
            Ok(("rack".to_owned(), "r1".to_owned()))
        );
        assert_eq!(
            parse_attribute("k=a=b"),
            Ok(("k".to_owned(), "a=b".to_owned()))
        );
        assert!(parse_attribute("=x").is_err());
        assert!(parse_attribute("novalue").is_err());
    }

    #[test]
    fn flags_fill_the_config() {
        let args = Args::try_parse_from([
            "strata-agent",
            "--work-dir",
            "/tmp/w",
            "--cpus",
            "2",
            "--ports",
            "40000-40010",
            "--attribute",
            "rack=r1",
            "--status-update-retry",
            "500ms",
        ])
        .unwrap();
        assert_eq!(args.cpus, Some(2.0));
        assert_eq!(args.ports, Some((40000, 40010)));
        assert_eq!(args.attributes, vec![("rack".to_owned(), "r1".to_owned())]);
        assert_eq!(args.status_update_retry, Duration::from_millis(500));
        assert_eq!(args.default_kill_grace_period, Duration::from_secs(3));
        assert_eq!(args.usage_interval, Duration::from_secs(1));
        assert_eq!(args.http_listen, Listen(Some(([0, 0, 0, 0], 5051).into())));
    }

    #[test]
    fn the_http_listen_address_can_be_none_or_ephemeral() {
        assert_eq!(parse_listen("none"), Ok(Listen(None)));
        assert_eq!(
            parse_listen("127.0.0.1:0"),
            Ok(Listen(Some(([127, 0, 0, 1], 0).into())))
        );
        assert!(parse_listen("localhost").unwrap_err().contains("ADDR:PORT"));
    }
}
