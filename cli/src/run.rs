//! `strata run`: a one-shot framework. It subscribes, waits for an offer the task fits in
//! (declining others with a short filter), launches the task, prints each state change to
//! stderr, streams the task's stdout and stderr to its own (unless `--detach`: see
//! [`crate::logs::stream_output`]), tears the framework down and exits with the task's exit
//! code once the output is drained.

use std::time::Duration;

use anyhow::{Context as _, bail};
use strata_framework::proto::{
    NetworkMode, Offer, PortProtocol, Resource, TaskInfo, TaskReason, TaskState, TaskStatus, names,
};
use strata_framework::{Event, Framework, FrameworkBuilder, OfferExt, ResourceBudget, task};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::debug;

use crate::args::{NetworkArg, RunArgs};
use crate::render::fmt_scalar;
use strata_common::parse::format_duration;

/// Exit status for a failure on Strata's side (no allocator, no offer, invalid launch, lost).
pub const EXIT_STRATA: u8 = 125;
/// Exit status when the command could not be started.
pub const EXIT_CANNOT_START: u8 = 127;
/// Exit status after Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status after SIGTERM.
pub const EXIT_TERMINATED: u8 = 143;

/// How long declined offers stay away while we still look for one that fits.
const REFUSE_WHILE_WAITING: f64 = 1.0;
/// How long extra offers stay away once the task is launched.
const REFUSE_AFTER_LAUNCH: f64 = 60.0;
/// How long to wait for KILLED after asking for a kill because of Ctrl-C or SIGTERM.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long to keep trying to reconnect to the allocator before giving up.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(30);
/// How long to wait, after the task's terminal update, for the rest of its output.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// How often to retry a launch that the allocator dropped because its offer had just gone.
const MAX_LAUNCH_ATTEMPTS: u32 = 3;

/// Why we asked the agent to kill the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillCause {
    /// `--kill-after` elapsed: the exit status follows the KILLED update.
    Timeout,
    /// Ctrl-C or SIGTERM: exit with this status once the task is gone.
    Signal(u8),
}

/// The exit status for the task's terminal `status`.
pub fn exit_status(status: &TaskStatus, interrupted: Option<u8>) -> u8 {
    if let Some(code) = interrupted {
        return code;
    }
    let by_signal = |signal: i32| (128 + signal).clamp(1, 255) as u8;
    match status.state() {
        TaskState::Finished => status.exit_code.map_or(0, |c| (c & 0xff) as u8),
        TaskState::Failed => {
            if status.reason() == TaskReason::ContainerLaunchFailed {
                EXIT_CANNOT_START
            } else if let Some(signal) = status.signal {
                by_signal(signal)
            } else if let Some(code) = status.exit_code {
                match (code & 0xff) as u8 {
                    0 => 1,
                    c => c,
                }
            } else if status.reason() == TaskReason::CommandFailed {
                1
            } else {
                EXIT_STRATA
            }
        }
        TaskState::Killed => status.signal.map_or(EXIT_TERMINATED, by_signal),
        _ => EXIT_STRATA,
    }
}

/// A signal's name, e.g. `SIGKILL`.
fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
}

/// The stderr line for a state change: `strata: task ID STATE on agent A (host)[: details]`.
pub fn status_line(status: &TaskStatus, hostname: &str) -> String {
    let mut line = format!("strata: task {} {}", status.task_id, status.state().label());
    if !status.agent_id.is_empty() {
        line.push_str(&format!(" on agent {}", status.agent_id));
        if !hostname.is_empty() {
            line.push_str(&format!(" ({hostname})"));
        }
    }
    // The agent's message says what happened; without one, say it from the exit status.
    let details = if !status.message.is_empty() {
        status.message.clone()
    } else if !status.state().is_terminal() {
        String::new()
    } else if let Some(signal) = status.signal {
        format!("killed by {} ({signal})", signal_name(signal))
    } else if let Some(code) = status.exit_code {
        format!("exit code {code}")
    } else {
        String::new()
    };
    if !details.is_empty() {
        line.push_str(": ");
        line.push_str(&details);
    }
    line
}

/// The task `strata run` launches.
pub fn build_task(args: &RunArgs, task_id: &str) -> TaskInfo {
    let builder = task(task_id);
    let builder = if args.shell {
        builder.shell(args.command.join(" "))
    } else {
        builder.command(args.command.iter().cloned())
    };
    let default_name = args
        .command
        .first()
        .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
        .unwrap_or_else(|| task_id.to_owned());
    let mut builder = builder
        .name(args.name.clone().unwrap_or(default_name))
        .cpus(args.cpus)
        .mem(args.mem)
        .disk(args.disk)
        .gpus(f64::from(args.gpus))
        .network_mode(match args.network {
            NetworkArg::Host => NetworkMode::Host,
            NetworkArg::Bridge => NetworkMode::Bridge,
            NetworkArg::None => NetworkMode::None,
        });
    if !args.publish.is_empty() {
        let ports: Vec<(u64, u64)> = args
            .publish
            .iter()
            .map(|(host, _, _)| (u64::from(*host), u64::from(*host)))
            .collect();
        builder = builder.resource(Resource::ranges(names::PORTS, ports));
    }
    for (host, container, protocol) in &args.publish {
        let protocol = match *protocol {
            "tcp" => PortProtocol::Tcp,
            "udp" => PortProtocol::Udp,
            _ => PortProtocol::Unspecified,
        };
        builder = builder.port_mapping(*host, *container, protocol);
    }
    builder.build()
}

fn describe_request(task: &TaskInfo) -> String {
    let r = crate::render::ResourcesJson::new(&task.resources);
    let gpus = if r.gpus > 0.0 {
        format!(" gpus {}", fmt_scalar(r.gpus))
    } else {
        String::new()
    };
    format!(
        "cpus {} mem {} MiB disk {} MiB{gpus}",
        fmt_scalar(r.cpus),
        fmt_scalar(r.mem),
        fmt_scalar(r.disk)
    )
}

fn describe_offer(offer: &Offer) -> String {
    format!(
        "cpus {} mem {} MiB disk {} MiB on {}",
        fmt_scalar(offer.cpus()),
        fmt_scalar(offer.mem()),
        fmt_scalar(offer.disk()),
        if offer.hostname.is_empty() {
            &offer.agent_id
        } else {
            &offer.hostname
        }
    )
}

/// Where the task is.
#[derive(Debug)]
struct Launched {
    agent_id: String,
    hostname: String,
}

/// Runs `strata run` and returns the exit status. Errors are Strata-side failures (exit 125).
pub async fn run(allocator: &crate::security::Allocator, args: RunArgs) -> anyhow::Result<u8> {
    let task_id = args
        .task_id
        .clone()
        .unwrap_or_else(|| format!("run-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let task = build_task(&args, &task_id);
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let subscribe = FrameworkBuilder::new(&allocator.url)
        .security(allocator.security.clone())
        .name("strata-run")
        .gpu_resources(args.gpus > 0 || args.gpu_resources)
        .subscribe();
    let (client, mut events) = tokio::select! {
        subscribed = subscribe => subscribed?,
        _ = sigint.recv() => {
            eprintln!("strata: interrupted before the task was launched");
            return Ok(EXIT_INTERRUPTED);
        }
        _ = sigterm.recv() => {
            eprintln!("strata: terminated before the task was launched");
            return Ok(EXIT_TERMINATED);
        }
    };
    debug!(framework_id = %client.framework_id(), task_id = %task_id, "subscribed");

    let mut output = None;
    let streaming = (!args.detach).then(|| (allocator, client.framework_id().to_owned()));
    let result = drive(
        &client,
        &mut events,
        &args,
        task,
        (&mut sigint, &mut sigterm),
        streaming,
        &mut output,
    )
    .await;
    // What the task wrote just before it ended: the agent's stream ends once it is drained.
    if let Some(output) = output
        && tokio::time::timeout(OUTPUT_DRAIN, output).await.is_err()
    {
        eprintln!(
            "strata: the task's output did not end within {} of the task; not waiting for the rest",
            format_duration(OUTPUT_DRAIN)
        );
    }
    // Best effort: the framework goes away with the process anyway.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.teardown())
        .await
        .unwrap_or(Ok(()))
    {
        debug!(error = %e, "teardown failed");
    }
    result
}

async fn drive(
    client: &Framework,
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    args: &RunArgs,
    task: TaskInfo,
    (sigint, sigterm): (
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
    ),
    streaming: Option<(&crate::security::Allocator, String)>,
    output: &mut Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<u8> {
    let task_id = task.task_id.clone();
    let offer_deadline = Instant::now() + args.offer_timeout;
    let mut launched: Option<Launched> = None;
    let mut attempts = 0u32;
    let mut last_state: Option<TaskState> = None;
    let mut largest_offer: Option<Offer> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killing: Option<KillCause> = None;
    let mut kill_deadline: Option<Instant> = None;
    let mut subscriptions = 0u32;
    let mut disconnected_since: Option<Instant> = None;

    loop {
        let now = Instant::now();
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    bail!("lost the framework: the allocator removed it or cannot be reached again; check `strata ps --all` for task {task_id}");
                };
                match event {
                    Event::Subscribed { .. } => {
                        subscriptions += 1;
                        disconnected_since = None;
                        if subscriptions > 1 {
                            eprintln!("strata: reconnected to the allocator");
                            match &launched {
                                Some(l) => client.reconcile(vec![(task_id.clone(), l.agent_id.clone())]).await?,
                                None => client.revive().await?,
                            }
                        }
                    }
                    Event::Offers(offers) => {
                        for offer in offers {
                            let fits = ResourceBudget::of_offer(&offer).fits(&task.resources);
                            if launched.is_none() && fits {
                                attempts += 1;
                                match client.launch(&offer, vec![task.clone()]).await {
                                    Ok(()) => {
                                        eprintln!(
                                            "strata: task {task_id} {} on agent {} ({})",
                                            TaskState::Staging.label(), offer.agent_id, offer.hostname
                                        );
                                        last_state = Some(TaskState::Staging);
                                        launched = Some(Launched {
                                            agent_id: offer.agent_id.clone(),
                                            hostname: offer.hostname.clone(),
                                        });
                                        let _ = client.suppress().await;
                                    }
                                    Err(e) => eprintln!("strata: cannot launch yet ({e}); waiting for another offer"),
                                }
                            } else {
                                if !fits && largest_offer.as_ref().is_none_or(|l| offer.cpus() + offer.mem() / 1024.0 > l.cpus() + l.mem() / 1024.0) {
                                    largest_offer = Some(offer.clone());
                                }
                                let refuse = if launched.is_some() { REFUSE_AFTER_LAUNCH } else { REFUSE_WHILE_WAITING };
                                let _ = client.decline(vec![offer.id.clone()], Some(refuse)).await;
                            }
                        }
                    }
                    Event::Update(status) if status.task_id == task_id => {
                        let state = status.state();
                        let hostname = launched.as_ref().map_or("", |l| l.hostname.as_str());
                        if last_state != Some(state) || state.is_terminal() {
                            eprintln!("{}", status_line(&status, hostname));
                        }
                        last_state = Some(state);
                        // Once it runs (every update is delivered: RUNNING comes before the end
                        // of a task that ran; one that never ran has no output).
                        let started = state == TaskState::Running;
                        if started
                            && output.is_none()
                            && let (Some((allocator, framework_id)), Some(l)) = (&streaming, &launched)
                        {
                            *output = Some(crate::logs::stream_output(
                                (*allocator).clone(),
                                l.agent_id.clone(),
                                framework_id.clone(),
                                task_id.clone(),
                            ));
                        }
                        if state == TaskState::Running
                            && let (Some(after), None) = (args.kill_after, kill_at)
                        {
                            kill_at = Some(Instant::now() + after);
                        }
                        if state.is_terminal() {
                            if state == TaskState::Dropped
                                && status.reason() == TaskReason::InvalidOffers
                                && attempts < MAX_LAUNCH_ATTEMPTS
                                && killing.is_none()
                            {
                                eprintln!("strata: the offer was gone before the launch; waiting for another");
                                launched = None;
                                client.revive().await?;
                                continue;
                            }
                            let interrupted = match killing {
                                Some(KillCause::Signal(code)) => Some(code),
                                _ => None,
                            };
                            return Ok(exit_status(&status, interrupted));
                        }
                    }
                    Event::Update(_) | Event::Rescind { .. } | Event::Heartbeat => {}
                    Event::Failure { agent_id } => {
                        if launched.as_ref().is_some_and(|l| l.agent_id == agent_id) {
                            eprintln!("strata: agent {agent_id} running task {task_id} was lost");
                        }
                    }
                    Event::Error { message } => eprintln!("strata: the allocator says: {message}"),
                    Event::Disconnected { reason } => {
                        eprintln!("strata: lost the connection to the allocator ({reason}); reconnecting");
                        disconnected_since.get_or_insert_with(Instant::now);
                    }
                }
            }
            _ = tokio::time::sleep_until(offer_deadline), if launched.is_none() && killing.is_none() => {
                let largest = largest_offer
                    .as_ref()
                    .map(|o| format!("the largest offer was {}", describe_offer(o)))
                    .unwrap_or_else(|| "no offers at all: is an agent registered? (`strata agents`)".to_owned());
                bail!(
                    "no offer large enough for {} within {}: {largest}: ask for less (--cpus, --mem, --disk) or add an agent",
                    describe_request(&task),
                    format_duration(args.offer_timeout)
                );
            }
            _ = tokio::time::sleep_until(disconnected_since.map_or(now, |t| t + RECONNECT_GIVE_UP)), if disconnected_since.is_some() => {
                bail!(
                    "lost the connection to the allocator at {} for {}: task {task_id} may still be running; check `strata ps --all` once the allocator is back",
                    client.allocator(),
                    format_duration(RECONNECT_GIVE_UP)
                );
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(now)), if kill_at.is_some() && killing.is_none() => {
                let l = launched.as_ref().context("a task to kill")?;
                eprintln!(
                    "strata: task {task_id} ran for {}; killing it (--kill-after)",
                    format_duration(args.kill_after.unwrap_or_default())
                );
                client.kill(task_id.clone(), l.agent_id.clone()).await?;
                killing = Some(KillCause::Timeout);
            }
            _ = tokio::time::sleep_until(kill_deadline.unwrap_or(now)), if kill_deadline.is_some() => {
                eprintln!("strata: task {task_id} did not report KILLED within {}; exiting (check `strata ps --all`)", format_duration(KILL_WAIT));
                return Ok(match killing { Some(KillCause::Signal(code)) => code, _ => EXIT_STRATA });
            }
            _ = sigint.recv() => {
                if let Some(code) = interrupt(client, &task_id, launched.as_ref(), &mut killing, EXIT_INTERRUPTED, "interrupted").await {
                    return Ok(code);
                }
                kill_deadline = Some(Instant::now() + KILL_WAIT);
            }
            _ = sigterm.recv() => {
                if let Some(code) = interrupt(client, &task_id, launched.as_ref(), &mut killing, EXIT_TERMINATED, "terminated").await {
                    return Ok(code);
                }
                kill_deadline = Some(Instant::now() + KILL_WAIT);
            }
        }
    }
}

/// Handles Ctrl-C or SIGTERM: kills a launched task and waits for it (`None`), or exits now
/// (`Some(code)`) when nothing runs or this is the second signal.
async fn interrupt(
    client: &Framework,
    task_id: &str,
    launched: Option<&Launched>,
    killing: &mut Option<KillCause>,
    code: u8,
    what: &str,
) -> Option<u8> {
    if matches!(killing, Some(KillCause::Signal(_))) {
        eprintln!("strata: {what} again; exiting without waiting for task {task_id}");
        return Some(code);
    }
    let Some(l) = launched else {
        eprintln!("strata: {what} before the task was launched");
        return Some(code);
    };
    eprintln!("strata: {what}; killing task {task_id} (press Ctrl-C again to exit at once)");
    *killing = Some(KillCause::Signal(code));
    if let Err(e) = client.kill(task_id.to_owned(), l.agent_id.clone()).await {
        eprintln!("strata: cannot kill task {task_id}: {e}");
        return Some(code);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: "run-1".into(),
            agent_id: "a-1".into(),
            state: state as i32,
            ..TaskStatus::default()
        }
    }

    #[test]
    fn exit_status_follows_the_task() {
        let mut finished = status(TaskState::Finished);
        finished.exit_code = Some(0);
        assert_eq!(exit_status(&finished, None), 0);

        let mut failed = status(TaskState::Failed);
        failed.reason = TaskReason::CommandFailed as i32;
        failed.exit_code = Some(3);
        assert_eq!(exit_status(&failed, None), 3);

        let mut signalled = status(TaskState::Failed);
        signalled.reason = TaskReason::CommandFailed as i32;
        signalled.signal = Some(9);
        assert_eq!(exit_status(&signalled, None), 137);

        let mut cannot_start = status(TaskState::Failed);
        cannot_start.reason = TaskReason::ContainerLaunchFailed as i32;
        assert_eq!(exit_status(&cannot_start, None), EXIT_CANNOT_START);

        let mut killed = status(TaskState::Killed);
        killed.signal = Some(15);
        assert_eq!(exit_status(&killed, None), 143);
        assert_eq!(exit_status(&killed, Some(EXIT_INTERRUPTED)), 130);
        assert_eq!(exit_status(&status(TaskState::Killed), None), 143);

        for strata_side in [
            TaskState::Lost,
            TaskState::Error,
            TaskState::Dropped,
            TaskState::Gone,
        ] {
            assert_eq!(
                exit_status(&status(strata_side), None),
                EXIT_STRATA,
                "{strata_side:?}"
            );
        }
    }

    #[test]
    fn status_lines_name_state_agent_and_why() {
        assert_eq!(
            status_line(&status(TaskState::Running), "node1"),
            "strata: task run-1 TASK_RUNNING on agent a-1 (node1)"
        );
        let mut failed = status(TaskState::Failed);
        failed.exit_code = Some(3);
        assert_eq!(
            status_line(&failed, ""),
            "strata: task run-1 TASK_FAILED on agent a-1: exit code 3"
        );
        let mut killed = status(TaskState::Killed);
        killed.signal = Some(9);
        assert_eq!(
            status_line(&killed, "n"),
            "strata: task run-1 TASK_KILLED on agent a-1 (n): killed by SIGKILL (9)"
        );
        let mut with_message = status(TaskState::Failed);
        with_message.exit_code = Some(3);
        with_message.message = "exited with status 3".into();
        assert_eq!(
            status_line(&with_message, "n"),
            "strata: task run-1 TASK_FAILED on agent a-1 (n): exited with status 3"
        );
        let mut cannot = status(TaskState::Failed);
        cannot.message = "cannot start \"/no/such\": no such file or directory (os error 2)".into();
        assert!(
            status_line(&cannot, "n")
                .ends_with(": cannot start \"/no/such\": no such file or directory (os error 2)")
        );
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let cli =
            crate::args::Cli::try_parse_from(["strata", "run"].iter().chain(args.iter()).copied())
                .expect("parses");
        match cli.command {
            crate::args::Command::Run(run) => run,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn gpus_are_whole_and_asked_for_in_the_task() {
        let t = build_task(&run_args(&["--gpus", "1", "--", "nvidia-smi"]), "run-g");
        assert_eq!(
            describe_request(&t),
            "cpus 0.1 mem 32 MiB disk 0 MiB gpus 1"
        );
        let t = build_task(&run_args(&["--gpu-resources", "--", "true"]), "run-n");
        assert_eq!(
            describe_request(&t),
            "cpus 0.1 mem 32 MiB disk 0 MiB",
            "asks for none"
        );
        for bad in ["0.5", "-1", "1000"] {
            let flag = format!("--gpus={bad}");
            let e = crate::args::Cli::try_parse_from(["strata", "run", &flag, "true"])
                .expect_err("refused");
            assert!(e.to_string().contains("whole number"), "{bad}: {e}");
        }
    }

    #[test]
    fn network_and_publish_reach_the_task() {
        let t = build_task(&run_args(&["--", "true"]), "run-h");
        assert_eq!(t.network_mode, NetworkMode::Host as i32);
        let t = build_task(
            &run_args(&[
                "--network",
                "bridge",
                "--publish",
                "31000:80/tcp",
                "--publish",
                "31001:53",
                "--",
                "true",
            ]),
            "run-b",
        );
        assert_eq!(t.network_mode, NetworkMode::Bridge as i32);
        let maps = strata_framework::proto::network::mappings(&t).expect("valid mappings");
        assert_eq!(
            maps.iter()
                .map(|m| (m.host, m.container, m.tcp, m.udp))
                .collect::<Vec<_>>(),
            vec![(31000, 80, true, false), (31001, 53, true, true)]
        );
    }

    #[test]
    fn abuse_publish_without_bridge_and_bad_mappings_are_refused() {
        let t = build_task(&run_args(&["--publish", "31000:80", "--", "true"]), "run-p");
        assert!(
            strata_framework::proto::network::mappings(&t)
                .unwrap_err()
                .contains("bridge mode only")
        );
        for bad in ["0:80", "31000:99999", "31000", "31000:80/icmp"] {
            assert!(
                crate::args::Cli::try_parse_from(["strata", "run", "--publish", bad, "--", "true"])
                    .is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(
            crate::args::Cli::try_parse_from([
                "strata",
                "run",
                "--network",
                "overlay",
                "--",
                "true"
            ])
            .is_err()
        );
    }

    #[test]
    fn task_is_built_from_the_arguments() {
        let t = build_task(
            &run_args(&["--cpus", "0.5", "--mem", "64", "--", "/bin/echo", "hi"]),
            "run-x",
        );
        let command = t.command.clone().expect("a command");
        assert!(!command.shell);
        assert_eq!(command.arguments, ["/bin/echo", "hi"]);
        assert_eq!(t.name, "echo");
        assert_eq!(t.task_id, "run-x");
        assert_eq!(describe_request(&t), "cpus 0.5 mem 64 MiB disk 0 MiB");

        let t = build_task(
            &run_args(&[
                "--shell", "--name", "greet", "--", "echo", "hello;", "exit 3",
            ]),
            "run-y",
        );
        let command = t.command.expect("a command");
        assert!(command.shell);
        assert_eq!(command.value, "echo hello; exit 3");
        assert_eq!(t.name, "greet");
    }
}
