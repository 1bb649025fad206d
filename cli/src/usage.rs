//! `strata usage TASK [--watch] [--interval 1s] [--json]`: one running task's latest usage
//! record (`OperatorService.GetUsage`), as its agent measured it, in a readable layout or as
//! JSON; `--watch` follows it, one frame (or one JSON line) per new record.
//!
//! The layout and the JSON are pure functions of the records (tested here); the command only
//! fetches. When no record comes back the task's state (`ListTasks`) says why: unknown, ended,
//! not running yet, or running without a report so far.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use strata_agent::http::usage_json;
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::{
    CpuUsage, GetUsageRequest, ListTasksRequest, MemoryUsage, NetworkUsage, Pressure, TaskState,
    TaskSummary, TaskUsage,
};

use crate::duration::format_age;
use crate::operator::{client, rpc_error};
use crate::render::fmt_scalar;
use strata_common::parse;

/// `strata usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The task's id.
    pub task_id: String,
    /// The task's framework, when several frameworks use the same task id.
    #[arg(long, value_name = "ID")]
    pub framework: Option<String>,
    /// Follow the task: print each new record (redrawn in place on a terminal) until Ctrl-C
    /// or the task ends.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// How often --watch asks the allocator for a new record.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration, default_value = "1s")]
    pub interval: Duration,
    /// Print the record as JSON (with --watch: one object per line, per new record).
    #[arg(long)]
    pub json: bool,
}

/// `strata usage TASK ...`.
pub async fn usage(allocator: &crate::security::Allocator, args: UsageArgs) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        bail!("--interval must be greater than zero, e.g. --interval 1s");
    }
    let (mut client, addr) = client(allocator).await?;
    let tty = std::io::stdout().is_terminal();
    let mut previous: Option<TaskUsage> = None;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c(), if args.watch => return Ok(()),
        }
        let record = fetch(&mut client, &addr, &args).await?;
        let Some(record) = record else {
            let task = find_task(&mut client, &addr, &args).await?;
            let why = missing_usage(&args.task_id, task.as_ref());
            match (&previous, why) {
                // Followed until it ended: say so, and stop without an error.
                (Some(_), Missing::Ended(message)) => {
                    eprintln!("strata: {message}");
                    return Ok(());
                }
                // Not reporting yet: --watch waits for the first record.
                (_, Missing::NotYet(message)) if args.watch => {
                    if previous.is_none() && !args.json {
                        eprintln!("strata: {message}; waiting (Ctrl-C stops)");
                    }
                    continue;
                }
                (_, Missing::NotYet(message) | Missing::Ended(message)) => bail!(message),
            }
        };
        if previous
            .as_ref()
            .is_some_and(|p| p.timestamp == record.timestamp)
        {
            continue; // the agent has not reported since
        }
        let now = now();
        if args.json {
            let text = if args.watch {
                serde_json::to_string(&usage_json(&record))
            } else {
                serde_json::to_string_pretty(&usage_json(&record))
            }
            .context("cannot encode the usage record as JSON")?;
            outln!("{text}")?;
        } else {
            let text = usage_text(&record, previous.as_ref(), now);
            if args.watch && tty {
                // Home, clear the screen, then the frame.
                out!("\x1b[H\x1b[2J{text}")?;
            } else if args.watch && previous.is_some() {
                out!("\n{text}")?;
            } else {
                out!("{text}")?;
            }
        }
        if !args.watch {
            return Ok(());
        }
        previous = Some(record);
    }
}

/// Unix seconds now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The record of `args.task_id` (in `args.framework`, if given), if the allocator has one.
async fn fetch(
    client: &mut OperatorServiceClient<strata_framework::AuthChannel>,
    addr: &str,
    args: &UsageArgs,
) -> anyhow::Result<Option<TaskUsage>> {
    let mut tasks = client
        .get_usage(GetUsageRequest {
            task_id: args.task_id.clone(),
            framework_id: args.framework.clone().unwrap_or_default(),
            agent_id: String::new(),
        })
        .await
        .map_err(|s| rpc_error(addr, "GetUsage", &s))?
        .into_inner()
        .tasks;
    if tasks.len() > 1 {
        let frameworks: Vec<&str> = tasks.iter().map(|t| t.framework_id.as_str()).collect();
        bail!(
            "task id {} is used by {} frameworks ({}): pass --framework ID",
            args.task_id,
            tasks.len(),
            frameworks.join(", ")
        );
    }
    Ok(tasks.pop())
}

/// The task as the allocator knows it (active or recently ended), if at all.
async fn find_task(
    client: &mut OperatorServiceClient<strata_framework::AuthChannel>,
    addr: &str,
    args: &UsageArgs,
) -> anyhow::Result<Option<TaskSummary>> {
    let tasks = client
        .list_tasks(ListTasksRequest {
            framework_id: args.framework.clone().unwrap_or_default(),
            agent_id: String::new(),
            include_terminal: true,
        })
        .await
        .map_err(|s| rpc_error(addr, "ListTasks", &s))?
        .into_inner()
        .tasks;
    // An active task wins over an ended one of the same id (a relaunch).
    let mut matching: Vec<TaskSummary> = tasks
        .into_iter()
        .filter(|t| t.task_id == args.task_id)
        .collect();
    matching.sort_by_key(|t| t.state().is_terminal());
    Ok(matching.into_iter().next())
}

/// Why a task has no usage record.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// Unknown, or ended: no record will come.
    Ended(String),
    /// Not running yet, or running without a report so far: one may come.
    NotYet(String),
}

/// Says why `task_id` has no usage record, from what the allocator knows of the task.
pub fn missing_usage(task_id: &str, task: Option<&TaskSummary>) -> Missing {
    let Some(task) = task else {
        return Missing::Ended(format!(
            "unknown task {task_id}: `strata ps --all` lists the tasks the allocator knows"
        ));
    };
    let state = task.state();
    if state.is_terminal() {
        return Missing::Ended(format!(
            "task {task_id} is not running ({}): usage is kept for running tasks only",
            state.label()
        ));
    }
    match state {
        TaskState::Running => Missing::NotYet(format!(
            "no usage for task {task_id} yet: its agent {} reports every interval (1s by \
             default); if none comes, check that the agent runs a version that reports usage \
             (strata agents shows versions) and read its log",
            task.agent_id
        )),
        _ => Missing::NotYet(format!(
            "task {task_id} is {}, not running yet: usage starts once it runs; use --watch to \
             wait for it",
            state.label()
        )),
    }
}

/// Bytes as people read them: `512 B`, `1.5 KiB`, `45.2 MiB`, `3.1 GiB`.
pub fn fmt_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if !bytes.is_finite() || bytes < 1024.0 {
        return format!("{} B", bytes.max(0.0).round());
    }
    let mut value = bytes / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A rate in bytes per second: `12.0 KiB/s`.
pub fn fmt_rate(bytes_per_second: f64) -> String {
    format!("{}/s", fmt_bytes(bytes_per_second))
}

/// A short latency: `0`, `850ns`, `12µs`, `1.2ms`, `3.40s`.
pub fn fmt_latency(seconds: f64) -> String {
    if !seconds.is_finite() || seconds <= 0.0 {
        "0".to_owned()
    } else if seconds < 1e-6 {
        format!("{:.0}ns", seconds * 1e9)
    } else if seconds < 1e-3 {
        format!("{:.0}µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{seconds:.2}s")
    }
}

/// CPU time: `12.30s`, `2m03s`, `5h07m`.
pub fn fmt_cpu_time(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 60.0 {
        return format!("{:.2}s", seconds.max(0.0));
    }
    let s = seconds as u64;
    if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Network rates between two records of one task, bytes per second (rx, tx); none when they
/// are the same sample or counters went back (the task was relaunched).
pub fn net_rates(previous: &TaskUsage, current: &TaskUsage) -> Option<(f64, f64)> {
    let elapsed = current.timestamp - previous.timestamp;
    if elapsed <= 0.0 {
        return None;
    }
    let p = previous.network.as_ref()?;
    let c = current.network.as_ref()?;
    let rx = c.rx_bytes_total.checked_sub(p.rx_bytes_total)?;
    let tx = c.tx_bytes_total.checked_sub(p.tx_bytes_total)?;
    Some((rx as f64 / elapsed, tx as f64 / elapsed))
}

fn pressure_text(name: &str, p: Option<&Pressure>) -> String {
    match p {
        None => format!("{name} -"),
        Some(p) => format!(
            "{name} some {:.2}% full {}",
            p.some_avg10,
            p.full_avg10
                .map_or_else(|| "-".to_owned(), |f| format!("{f:.2}%"))
        ),
    }
}

fn of_limit(used: u64, limit: u64) -> String {
    if limit == 0 {
        format!("{} (no limit)", fmt_bytes(used as f64))
    } else {
        format!(
            "{} of {} ({:.0}%)",
            fmt_bytes(used as f64),
            fmt_bytes(limit as f64),
            used as f64 * 100.0 / limit as f64
        )
    }
}

/// One record as a readable block of lines; `previous` (an earlier record of the same task)
/// gives the network rates, `now` (Unix seconds) the record's age.
pub fn usage_text(u: &TaskUsage, previous: Option<&TaskUsage>, now: f64) -> String {
    let mut out = Vec::new();
    let role = if u.role.is_empty() { "*" } else { &u.role };
    out.push(format!(
        "task        {} (framework {}, agent {}, role {role})",
        u.task_id, u.framework_id, u.agent_id
    ));
    out.push(format!(
        "sampled     {} ago, over {:.1}s",
        format_age(now - u.timestamp),
        u.interval_seconds
    ));

    let cpu = u.cpu.clone().unwrap_or_default();
    let limit = if cpu.limit_cores > 0.0 {
        format!("limit {}", fmt_scalar(cpu.limit_cores))
    } else {
        "no limit".to_owned()
    };
    out.push(format!(
        "cpu         {:.2} cores (request {}, {limit})   user {}  system {}  on-cpu {}",
        cpu.cores,
        fmt_scalar(cpu.request_cores),
        fmt_cpu_time(cpu.user_seconds_total),
        fmt_cpu_time(cpu.system_seconds_total),
        cpu.oncpu_seconds_total
            .map_or_else(|| "- (no eBPF)".to_owned(), fmt_cpu_time),
    ));
    out.push(throttling(&cpu));
    out.push(match &cpu.run_queue {
        Some(rq) if rq.count == 0 => "run queue   no waits in the interval".to_owned(),
        Some(rq) => format!(
            "run queue   p50 {}  p99 {}  max {}  ({} waits in the interval)",
            fmt_latency(rq.p50_seconds),
            fmt_latency(rq.p99_seconds),
            fmt_latency(rq.max_seconds),
            rq.count
        ),
        None => "run queue   - (no eBPF on this agent)".to_owned(),
    });

    let mem = u.memory.unwrap_or_default();
    out.extend(memory_lines(&mem));

    let pids = u.pids.unwrap_or_default();
    out.push(if pids.limit == 0 {
        format!("pids        {} (no limit)", pids.current)
    } else {
        format!("pids        {} of {}", pids.current, pids.limit)
    });

    if u.io.is_empty() {
        out.push("io          none".to_owned());
    }
    for d in &u.io {
        out.push(format!(
            "io {:<9}read {} ({} ops)  write {} ({} ops)",
            d.device,
            fmt_bytes(d.read_bytes_total as f64),
            d.read_ops_total,
            fmt_bytes(d.write_bytes_total as f64),
            d.write_ops_total
        ));
    }

    for g in &u.gpus {
        out.push(format!(
            "gpu {:<8}{}  memory {}  sm {:.0}%",
            g.index,
            g.uuid,
            fmt_bytes(g.memory_used_bytes as f64),
            g.sm_utilization_percent
        ));
    }
    out.push(network_line(
        u.network.as_ref(),
        previous.and_then(|p| net_rates(p, u)),
    ));
    out.push(format!(
        "pressure    {}   {}   {}",
        pressure_text("cpu", u.cpu_pressure.as_ref()),
        pressure_text("memory", u.memory_pressure.as_ref()),
        pressure_text("io", u.io_pressure.as_ref()),
    ));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn throttling(cpu: &CpuUsage) -> String {
    format!(
        "throttled   {} of {} periods, {}",
        cpu.throttled_periods_total,
        cpu.periods_total,
        fmt_cpu_time(cpu.throttled_seconds_total)
    )
}

fn memory_lines(mem: &MemoryUsage) -> [String; 3] {
    let high = if mem.high_bytes == 0 {
        "none".to_owned()
    } else {
        fmt_bytes(mem.high_bytes as f64)
    };
    [
        format!(
            "memory      {}  peak {}  high {high}",
            of_limit(mem.current_bytes, mem.limit_bytes),
            fmt_bytes(mem.peak_bytes as f64)
        ),
        format!(
            "            anon {}  file {}  kernel {}",
            fmt_bytes(mem.anon_bytes as f64),
            fmt_bytes(mem.file_bytes as f64),
            fmt_bytes(mem.kernel_bytes as f64)
        ),
        format!(
            "mem events  oom {}  oom kills {}  high {}",
            mem.oom_events_total, mem.oom_kill_events_total, mem.high_events_total
        ),
    ]
}

fn network_line(net: Option<&NetworkUsage>, rates: Option<(f64, f64)>) -> String {
    let Some(net) = net else {
        return "network     - (no eBPF on this agent)".to_owned();
    };
    let (rx_rate, tx_rate) = match rates {
        Some((rx, tx)) => (format!(" {}", fmt_rate(rx)), format!(" {}", fmt_rate(tx))),
        None => (String::new(), String::new()),
    };
    let dropped = if net.tx_dropped_bytes_total > 0 {
        format!(
            "   egress limit dropped {} ({} packets)",
            fmt_bytes(net.tx_dropped_bytes_total as f64),
            net.tx_dropped_packets_total
        )
    } else {
        String::new()
    };
    format!(
        "network     rx {} ({} packets){rx_rate}   tx {} ({} packets){tx_rate}{dropped}",
        fmt_bytes(net.rx_bytes_total as f64),
        net.rx_packets_total,
        fmt_bytes(net.tx_bytes_total as f64),
        net.tx_packets_total,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};
    use strata_proto::{IoDeviceUsage, PidsUsage, RunQueueLatency};

    const MIB: u64 = 1024 * 1024;

    /// A full record, as an agent with eBPF and PSI reports it.
    pub(crate) fn record(task: &str, timestamp: f64) -> TaskUsage {
        TaskUsage {
            task_id: task.to_owned(),
            framework_id: "f-1".to_owned(),
            agent_id: "a-1".to_owned(),
            role: "eng".to_owned(),
            timestamp,
            interval_seconds: 1.0,
            cpu: Some(CpuUsage {
                user_seconds_total: 12.3,
                system_seconds_total: 1.2,
                oncpu_seconds_total: Some(13.41),
                cores: 0.52,
                periods_total: 120,
                throttled_periods_total: 3,
                throttled_seconds_total: 0.4,
                request_cores: 1.0,
                limit_cores: 2.0,
                run_queue: Some(RunQueueLatency {
                    count: 430,
                    p50_seconds: 12e-6,
                    p99_seconds: 1.2e-3,
                    max_seconds: 3e-3,
                    log2_ns_buckets_total: vec![0, 1, 2],
                    sum_seconds_total: 0.5,
                }),
            }),
            memory: Some(MemoryUsage {
                current_bytes: 48 * MIB,
                peak_bytes: 50 * MIB,
                anon_bytes: 40 * MIB,
                file_bytes: 5 * MIB,
                kernel_bytes: 212 * 1024,
                limit_bytes: 64 * MIB,
                high_bytes: 0,
                oom_events_total: 0,
                oom_kill_events_total: 0,
                high_events_total: 2,
            }),
            pids: Some(PidsUsage {
                current: 3,
                limit: 100,
            }),
            io: vec![IoDeviceUsage {
                device: "8:0".to_owned(),
                read_bytes_total: 3 * MIB / 2,
                write_bytes_total: 0,
                read_ops_total: 30,
                write_ops_total: 0,
            }],
            network: Some(NetworkUsage {
                rx_bytes_total: 1_000_000,
                tx_bytes_total: 4096,
                rx_packets_total: 800,
                tx_packets_total: 20,
                ..NetworkUsage::default()
            }),
            cpu_pressure: Some(Pressure {
                some_avg10: 0.5,
                some_seconds_total: 1.0,
                full_avg10: None,
                full_seconds_total: None,
            }),
            memory_pressure: None,
            io_pressure: Some(Pressure {
                some_avg10: 0.0,
                some_seconds_total: 0.0,
                full_avg10: Some(0.0),
                full_seconds_total: Some(0.0),
            }),
            gpus: Vec::new(),
        }
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser as _;
        let cli = crate::args::Cli::try_parse_from([
            "strata",
            "usage",
            "t1",
            "--watch",
            "--interval",
            "500ms",
            "--json",
            "--framework",
            "f-1",
        ])
        .expect("parses");
        let crate::args::Command::Usage(args) = cli.command else {
            panic!("expected usage");
        };
        assert_eq!(args.task_id, "t1");
        assert!(args.watch && args.json);
        assert_eq!(args.interval, Duration::from_millis(500));
        assert_eq!(args.framework.as_deref(), Some("f-1"));
        let cli = crate::args::Cli::try_parse_from(["strata", "usage", "t1"]).expect("parses");
        let crate::args::Command::Usage(args) = cli.command else {
            panic!("expected usage");
        };
        assert!(!args.watch && !args.json);
        assert_eq!(args.interval, Duration::from_secs(1));
        assert!(crate::args::Cli::try_parse_from(["strata", "usage"]).is_err());
    }

    #[test]
    fn sizes_rates_and_latencies_are_compact() {
        assert_eq!(fmt_bytes(0.0), "0 B");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(fmt_bytes(48.0 * MIB as f64), "48.0 MiB");
        assert_eq!(fmt_bytes(3.0 * 1024.0 * MIB as f64), "3.0 GiB");
        assert_eq!(fmt_rate(12288.0), "12.0 KiB/s");
        assert_eq!(fmt_latency(0.0), "0");
        assert_eq!(fmt_latency(850e-9), "850ns");
        assert_eq!(fmt_latency(12e-6), "12µs");
        assert_eq!(fmt_latency(1.2e-3), "1.2ms");
        assert_eq!(fmt_latency(3.4), "3.40s");
        assert_eq!(fmt_cpu_time(12.3), "12.30s");
        assert_eq!(fmt_cpu_time(123.0), "2m03s");
        assert_eq!(fmt_cpu_time(5.0 * 3600.0 + 7.0 * 60.0), "5h07m");
    }

    #[test]
    fn the_readable_layout_shows_every_figure() {
        let text = usage_text(&record("t1", 1000.0), None, 1002.0);
        let line = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label:?} line in\n{text}"))
                .to_owned()
        };
        assert_eq!(
            line("task"),
            "task        t1 (framework f-1, agent a-1, role eng)"
        );
        assert_eq!(line("sampled"), "sampled     2s ago, over 1.0s");
        assert_eq!(
            line("cpu"),
            "cpu         0.52 cores (request 1, limit 2)   user 12.30s  system 1.20s  on-cpu 13.41s"
        );
        assert_eq!(line("throttled"), "throttled   3 of 120 periods, 0.40s");
        assert_eq!(
            line("run queue"),
            "run queue   p50 12µs  p99 1.2ms  max 3.0ms  (430 waits in the interval)"
        );
        assert_eq!(
            line("memory"),
            "memory      48.0 MiB of 64.0 MiB (75%)  peak 50.0 MiB  high none"
        );
        assert!(
            text.contains("anon 40.0 MiB  file 5.0 MiB  kernel 212.0 KiB"),
            "{text}"
        );
        assert_eq!(line("mem events"), "mem events  oom 0  oom kills 0  high 2");
        assert_eq!(line("pids"), "pids        3 of 100");
        assert_eq!(
            line("io 8:0"),
            "io 8:0      read 1.5 MiB (30 ops)  write 0 B (0 ops)"
        );
        assert_eq!(
            line("network"),
            "network     rx 976.6 KiB (800 packets)   tx 4.0 KiB (20 packets)"
        );
        assert_eq!(
            line("pressure"),
            "pressure    cpu some 0.50% full -   memory -   io some 0.00% full 0.00%"
        );
        assert!(!text.lines().any(|l| l.ends_with(' ')), "{text}");
    }

    #[test]
    fn each_gpu_of_the_task_has_a_line_and_json_entry() {
        let mut u = record("t1", 1000.0);
        assert!(!usage_text(&u, None, 1001.0).contains("\ngpu "));
        u.gpus = vec![strata_proto::GpuUsage {
            uuid: "GPU-8f3a".to_owned(),
            index: 0,
            memory_used_bytes: 1 << 30,
            sm_utilization_percent: 99.4,
        }];
        let text = usage_text(&u, None, 1001.0);
        let line = text.lines().find(|l| l.starts_with("gpu ")).expect(&text);
        assert_eq!(line, "gpu 0       GPU-8f3a  memory 1.0 GiB  sm 99%");
        let j = usage_json(&u);
        assert_eq!(j["gpus"][0]["uuid"], "GPU-8f3a");
        assert_eq!(j["gpus"][0]["memory_used_bytes"], 1u64 << 30);
        assert_eq!(j["gpus"][0]["sm_utilization_percent"], 99.4);
    }

    #[test]
    fn the_egress_limiters_drops_are_shown_when_there_are_some() {
        let net = NetworkUsage {
            tx_bytes_total: 4096,
            tx_packets_total: 20,
            tx_dropped_bytes_total: 3000,
            tx_dropped_packets_total: 2,
            ..NetworkUsage::default()
        };
        assert_eq!(
            network_line(Some(&net), None),
            "network     rx 0 B (0 packets)   tx 4.0 KiB (20 packets)   egress limit dropped 2.9 KiB (2 packets)"
        );
    }

    #[test]
    fn rates_come_from_two_records_of_the_task() {
        let before = record("t1", 1000.0);
        let mut after = record("t1", 1002.0);
        let net = after.network.as_mut().expect("network");
        net.rx_bytes_total += 20480;
        net.tx_bytes_total += 2048;
        assert_eq!(net_rates(&before, &after), Some((10240.0, 1024.0)));
        assert_eq!(net_rates(&after, &after), None, "the same sample");
        assert_eq!(net_rates(&after, &before), None, "time went back");
        let text = usage_text(&after, Some(&before), 1002.0);
        assert!(
            text.contains(
                "rx 996.6 KiB (800 packets) 10.0 KiB/s   tx 6.0 KiB (20 packets) 1.0 KiB/s"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_record_without_ebpf_or_limits_says_so() {
        let mut u = record("t1", 1000.0);
        let cpu = u.cpu.as_mut().expect("cpu");
        cpu.oncpu_seconds_total = None;
        cpu.run_queue = None;
        cpu.limit_cores = 0.0;
        u.network = None;
        u.memory.as_mut().expect("memory").limit_bytes = 0;
        u.pids.as_mut().expect("pids").limit = 0;
        u.io.clear();
        let text = usage_text(&u, None, 1000.0);
        assert!(text.contains("(request 1, no limit)"), "{text}");
        assert!(text.contains("on-cpu - (no eBPF)"), "{text}");
        assert!(
            text.contains("run queue   - (no eBPF on this agent)"),
            "{text}"
        );
        assert!(
            text.contains("network     - (no eBPF on this agent)"),
            "{text}"
        );
        assert!(text.contains("memory      48.0 MiB (no limit)"), "{text}");
        assert!(text.contains("pids        3 (no limit)"), "{text}");
        assert!(text.contains("io          none"), "{text}");
        let mut idle = record("t1", 1000.0);
        let rq = idle.cpu.as_mut().and_then(|c| c.run_queue.as_mut());
        rq.expect("run queue").count = 0;
        let text = usage_text(&idle, None, 1000.0);
        assert!(
            text.contains("run queue   no waits in the interval"),
            "{text}"
        );
    }

    #[test]
    fn json_uses_the_proto_field_names_and_null_for_unset() {
        let mut u = record("t1", 1000.0);
        u.memory_pressure = None;
        let j = usage_json(&u);
        assert_eq!(j["task_id"], "t1");
        assert_eq!(j["cpu"]["cores"], 0.52);
        assert_eq!(j["cpu"]["oncpu_seconds_total"], 13.41);
        assert_eq!(j["cpu"]["run_queue"]["p99_seconds"], 1.2e-3);
        assert_eq!(
            j["cpu"]["run_queue"]["log2_ns_buckets_total"],
            json!([0, 1, 2])
        );
        assert_eq!(j["memory"]["limit_bytes"], 64 * MIB);
        assert_eq!(j["pids"]["current"], 3);
        assert_eq!(j["io"][0]["device"], "8:0");
        assert_eq!(j["network"]["rx_packets_total"], 800);
        assert_eq!(j["cpu_pressure"]["full_avg10"], Value::Null);
        assert_eq!(j["memory_pressure"], Value::Null);
        assert_eq!(j["io_pressure"]["full_seconds_total"], 0.0);
        let line = serde_json::to_string(&j).expect("encodes");
        assert!(!line.contains('\n'), "one line per record with --watch");
    }

    fn summary(state: TaskState) -> TaskSummary {
        TaskSummary {
            task_id: "t1".to_owned(),
            agent_id: "a-1".to_owned(),
            state: state as i32,
            ..TaskSummary::default()
        }
    }

    #[test]
    fn a_missing_record_says_why_and_what_to_do() {
        let Missing::Ended(unknown) = missing_usage("t1", None) else {
            panic!("an unknown task has no record to wait for");
        };
        assert!(unknown.contains("unknown task t1") && unknown.contains("strata ps --all"));
        let Missing::Ended(ended) = missing_usage("t1", Some(&summary(TaskState::Finished))) else {
            panic!("an ended task has no record to wait for");
        };
        assert!(ended.contains("not running (TASK_FINISHED)"), "{ended}");
        let Missing::NotYet(staging) = missing_usage("t1", Some(&summary(TaskState::Staging)))
        else {
            panic!("a staging task may report later");
        };
        assert!(
            staging.contains("TASK_STAGING") && staging.contains("--watch"),
            "{staging}"
        );
        let Missing::NotYet(running) = missing_usage("t1", Some(&summary(TaskState::Running)))
        else {
            panic!("a running task may report later");
        };
        assert!(running.contains("no usage for task t1 yet") && running.contains("a-1"));
    }
}
