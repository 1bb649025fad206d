//! `cargo xtask bench accounting`: what per-task accounting costs a real agent.
//!
//! A release `strata-allocator` and `strata-agent` (usage interval 1 s, eBPF on) run with the
//! `skeleton_bench` framework launching idle tasks (`sleep`). The agent runs in a cgroup of the
//! benchmark's own, below this process's cgroup, whose memory and pids limits are set before it
//! starts, so its thousands of processes stay bounded. At 200 and then 1,000 running tasks it
//! measures, over `--seconds` (at least 10):
//!
//! - the agent process's CPU (user + system from `/proc/<pid>/stat`, in % of one core) and its
//!   resident memory (`VmRSS`);
//! - the eBPF programs' own run time, from the kernel's BPF statistics (`kernel.bpf_stats_enabled`
//!   is switched on for the run and restored; `run_time_ns` and `run_cnt` of each program the
//!   agent holds, from `/proc/<pid>/fdinfo`), in % of one core and ns per run;
//! - the precision of the eBPF on-CPU time against the kernel's cgroup CPU counters, both from
//!   the agent's own `/usage` records: for the idle tasks (a few ms each, spent starting) and for
//!   `BUSY_TASKS` CPU-bound tasks run beside them, each held to `BUSY_CORES` by its cgroup's CPU
//!   limit, set before it starts.
//!
//! Targets (issue 16): under 0.6% of one core and under 50 MiB of RSS at 1,000 tasks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::util;

/// The counts of running tasks measured at, in order.
const STEPS: [u32; 2] = [200, 1000];
/// How long launching the tasks of one step may take.
const LAUNCH_LIMIT: Duration = Duration::from_secs(900);
/// The bench cgroup's limits: every process of the agent and its tasks is below it.
const MEMORY_LIMIT: u64 = 12 << 30;
const PIDS_LIMIT: u64 = 20_000;
const SYSCTL_BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// How long the allocator and the agent may take to listen once started.
const PORT_LIMIT: Duration = Duration::from_secs(30);
/// How long one GET of the agent's `/usage` or `/metrics` may take.
const HTTP_LIMIT: Duration = Duration::from_secs(30);
/// CPU-bound tasks run beside the idle ones, each held to BUSY_CORES by its cgroup (cpu.max /
/// CFS quota, set before it starts), for the precision of the CPU figures of busy tasks.
const BUSY_TASKS: u32 = 2;
const BUSY_CORES: f64 = 0.2;
/// Tasks that switch contexts all the time (two processes passing a byte back and forth over
/// pipes), each held to SWITCH_CORES by its cgroup, run at the last step for the scheduler
/// programs' cost under a context-switch-heavy load.
const SWITCH_TASKS: u32 = 2;
const SWITCH_CORES: f64 = 0.5;
const PING_PONG: &str = "exec python3 -c 'import os; r1, w1 = os.pipe(); r2, w2 = os.pipe(); pid = os.fork(); src, dst = (r1, w2) if pid == 0 else (r2, w1); pid and os.write(w1, b\".\")\nwhile os.read(src, 1): os.write(dst, b\".\")'";

/// Runs the benchmark, measuring each step over `seconds`.
pub fn accounting(seconds: u64) -> Result<()> {
    ensure!(
        seconds >= 10,
        "--seconds must be at least 10 (got {seconds})"
    );
    ensure!(
        Path::new("/proc/self/cgroup").is_file(),
        "bench accounting needs Linux cgroups"
    );
    let bin = crate::bench::build_release_binaries()?;
    let work_dir = util::workspace_root()
        .join("target")
        .join("bench-accounting");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir)?;

    let cgroup = BenchCgroup::create()?;
    let stats = BpfStats::enable()?;
    // Each step on a fresh allocator and agent, so every step starts alike.
    let mut result = Ok(());
    for target in STEPS {
        let step_dir = work_dir.join(format!("tasks-{target}"));
        result = run_step(&bin, &step_dir, &cgroup, target, seconds);
        // The agent's own cgroups (its tasks already killed) go with `--remove-cgroups`, run
        // from the bench cgroup so that it finds the same root.
        let removed = cgroup
            .agent(&bin)
            .args(["--remove-cgroups", "--work-dir"])
            .arg(step_dir.join("agent"))
            .status();
        if !removed.is_ok_and(|s| s.success()) {
            eprintln!("bench accounting: warning: strata-agent --remove-cgroups failed");
        }
        if result.is_err() {
            break;
        }
    }
    drop(stats);
    drop(cgroup);
    result
}

/// Kills (SIGKILL) the children it holds when dropped, last first.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        while let Some(mut child) = self.0.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_step(
    bin: &Path,
    work_dir: &Path,
    cgroup: &BenchCgroup,
    target: u32,
    seconds: u64,
) -> Result<()> {
    std::fs::create_dir_all(work_dir)?;
    let listen = util::free_loopback_addr()?;
    let allocator_url = format!("http://{listen}");
    let http = util::free_loopback_addr()?;
    let mut children = Children(Vec::new());
    children.0.push(crate::bench::spawn_allocator(
        bin,
        &listen,
        work_dir,
        Stdio::null(),
    )?);
    util::wait_for_port(&listen, "strata-allocator", PORT_LIMIT)?;
    // The shell joins the bench cgroup, then becomes the agent.
    let agent_log = std::fs::File::create(work_dir.join("agent.log"))?;
    let mut agent = cgroup
        .agent(bin)
        .args(["--allocator", &allocator_url, "--work-dir"])
        .arg(work_dir.join("agent"))
        .args(["--cpus", "16", "--mem", "40000", "--disk", "10000"])
        .args(["--http-listen", &http, "--usage-interval", "1s"])
        .arg("--kill-tasks-on-shutdown")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(agent_log)
        .spawn()
        .context("cannot start strata-agent")?;
    let agent_pid = agent.id();
    let outcome = (|| -> Result<()> {
        util::wait_for_port(&http, "strata-agent", PORT_LIMIT)?;
        eprintln!("bench accounting: launching {target} idle tasks");
        children.0.push(skeleton_bench(
            bin,
            &allocator_url,
            target,
            "exec sleep 100000",
            &["--cpus", "0.01"],
        )?);
        let started = Instant::now();
        wait_for_running(&http, target as usize)?;
        eprintln!(
            "bench accounting: {target} idle tasks running after {:.1} s; launching {BUSY_TASKS} CPU-bound tasks",
            started.elapsed().as_secs_f64()
        );
        let cores = BUSY_CORES.to_string();
        children.0.push(skeleton_bench(
            bin,
            &allocator_url,
            BUSY_TASKS,
            "while :; do :; done",
            &["--cpus", &cores, "--cpu-limit", &cores],
        )?);
        wait_for_running(&http, (target + BUSY_TASKS) as usize)?;
        eprintln!(
            "bench accounting: all {} tasks running after {:.1} s",
            target + BUSY_TASKS,
            started.elapsed().as_secs_f64()
        );
        // Let the launch burst settle: full usage passes over every task, then quiet ones.
        sleep(Duration::from_secs(12));
        let m = measure(agent_pid, &http, Duration::from_secs(seconds))?;
        m.print(target, seconds);
        if target == STEPS[STEPS.len() - 1] {
            // The kernel side under many context switches: the scheduler programs run at
            // every switch and wakeup on the host, whoever switches.
            eprintln!("bench accounting: launching {SWITCH_TASKS} context-switch tasks");
            let cores = SWITCH_CORES.to_string();
            children.0.push(skeleton_bench(
                bin,
                &allocator_url,
                SWITCH_TASKS,
                PING_PONG,
                &["--cpus", &cores, "--cpu-limit", &cores],
            )?);
            wait_for_running(&http, (target + BUSY_TASKS + SWITCH_TASKS) as usize)?;
            sleep(Duration::from_secs(5));
            let m = measure(agent_pid, &http, Duration::from_secs(seconds))?;
            m.print_switch_load(seconds);
        }
        Ok(())
    })();
    // SIGTERM: the agent kills its tasks (--kill-tasks-on-shutdown) and exits.
    let _ = Command::new("kill")
        .args(["-TERM", &agent_pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline && matches!(agent.try_wait(), Ok(None)) {
        sleep(Duration::from_millis(100));
    }
    if matches!(agent.try_wait(), Ok(None)) {
        eprintln!("bench accounting: the agent did not stop in 180 s; killing it");
        let _ = agent.kill();
    }
    let _ = agent.wait();
    drop(children);
    outcome
}

/// Starts the `skeleton_bench` framework launching `tasks` copies of `cmd` (32 MiB each, plus
/// `args`).
fn skeleton_bench(
    bin: &Path,
    allocator_url: &str,
    tasks: u32,
    cmd: &str,
    args: &[&str],
) -> Result<Child> {
    Command::new(bin.join("examples").join("skeleton_bench"))
        .args(["--allocator", allocator_url])
        .args(["--tasks", &tasks.to_string(), "--cmd", cmd, "--mem", "32"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the skeleton_bench framework for `{cmd}`"))
}

/// `GET path` on `addr`: the body of a 200 answer, within [`HTTP_LIMIT`].
fn http_get(addr: &str, path: &str) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(strata_common::http::get(
        &format!("http://{addr}{path}"),
        HTTP_LIMIT,
    ))?;
    ensure!(
        response.status == 200,
        "GET {path}: status {}",
        response.status
    );
    Ok(response.text())
}

/// The agent's usage records.
fn usage(http: &str) -> Result<Vec<serde_json::Value>> {
    let body = http_get(http, "/usage")?;
    let json: serde_json::Value = serde_json::from_str(&body).context("/usage is not JSON")?;
    Ok(json["tasks"].as_array().cloned().unwrap_or_default())
}

fn wait_for_running(http: &str, target: usize) -> Result<()> {
    let deadline = Instant::now() + LAUNCH_LIMIT;
    let mut last_report = Instant::now();
    loop {
        let running = usage(http)?.len();
        if running >= target {
            return Ok(());
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!("bench accounting: {running} of {target} tasks running");
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("only {running} of {target} tasks were running after {LAUNCH_LIMIT:?}");
        }
        sleep(Duration::from_millis(500));
    }
}

/// The value of a `KEY:  N kB` line of a `/proc/PID/status`, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `RssAnon` and `RssFile` of a process, in bytes.
fn rss_parts(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bytes = |key| status_bytes(&status, key).unwrap_or(0);
    (bytes("RssAnon"), bytes("RssFile"))
}

/// user + system clock ticks and VmRSS (bytes) of a process.
fn process_cpu_and_rss(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("the agent (pid {pid}) is gone"))?;
    let rest = stat
        .rsplit_once(") ")
        .context("unexpected /proc/PID/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status_bytes(&status, "VmRSS").context("no VmRSS")?;
    Ok((ticks, rss))
}

/// The clock ticks per second of /proc/PID/stat.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One eBPF program the agent holds: its id, run time and run count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProgStats {
    id: u64,
    run_time_ns: u64,
    run_cnt: u64,
}

/// The eBPF programs held by a process, from its fds' fdinfo (one entry per program id).
fn bpf_programs(pid: u32) -> Vec<ProgStats> {
    let mut progs: Vec<ProgStats> = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return progs;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        if !info.contains("prog_tag:") {
            continue;
        }
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(run_time_ns), Some(run_cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        if progs.iter().all(|p| p.id != id) {
            progs.push(ProgStats {
                id,
                run_time_ns,
                run_cnt,
            });
        }
    }
    progs.sort_by_key(|p| p.id);
    progs
}

/// A loaded eBPF program's name (as the kernel keeps it: at most 15 bytes).
fn prog_name(id: u64) -> String {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| u64::from(p.id()) == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("prog {id}"))
}

/// What one step measured.
#[derive(Debug)]
struct Measurement {
    seconds: f64,
    agent_cpu_percent: f64,
    agent_rss: u64,
    agent_rss_max: u64,
    /// RssAnon and RssFile at the end.
    agent_rss_parts: (u64, u64),
    /// (name, % of one core, ns per run, runs per second)
    programs: Vec<(String, f64, f64, f64)>,
    /// eBPF on-CPU time against the cgroup's CPU time, for the CPU-bound and the idle tasks.
    busy: Precision,
    idle: Precision,
    collect_seconds: Option<f64>,
}

/// eBPF on-CPU time against the cgroup's CPU time (user + system) over a group of records.
#[derive(Debug, Default)]
struct Precision {
    records: usize,
    oncpu_total: f64,
    cgroup_total: f64,
    /// The task with the largest difference: its id, on-CPU and cgroup CPU seconds.
    worst: Option<(String, f64, f64)>,
}

impl Precision {
    fn add(&mut self, task_id: &str, oncpu: f64, cgroup: f64) {
        self.records += 1;
        self.oncpu_total += oncpu;
        self.cgroup_total += cgroup;
        let worse = self
            .worst
            .as_ref()
            .is_none_or(|(_, o, c)| (oncpu - cgroup).abs() > (o - c).abs());
        if worse {
            self.worst = Some((task_id.to_owned(), oncpu, cgroup));
        }
    }

    fn print(&self, what: &str) {
        if self.records == 0 {
            println!("  precision, {what}: no records with both figures");
            return;
        }
        let error = (self.oncpu_total - self.cgroup_total).abs() / self.cgroup_total.max(1e-9);
        println!(
            "  precision, {what} ({} records): eBPF on-CPU {:.6} s vs cgroup CPU {:.6} s in all: {:.3}% apart{}",
            self.records,
            self.oncpu_total,
            self.cgroup_total,
            error * 100.0,
            self.worst
                .as_ref()
                .map(|(id, oncpu, cgroup)| format!(
                    "; largest per-task difference {:.3} ms (task {id}: on-CPU {:.3} ms, cgroup {:.3} ms)",
                    (oncpu - cgroup).abs() * 1000.0,
                    oncpu * 1000.0,
                    cgroup * 1000.0
                ))
                .unwrap_or_default()
        );
    }
}

impl Measurement {
    fn print_switch_load(&self, seconds: u64) {
        println!(
            "bench accounting: the same with {SWITCH_TASKS} context-switch tasks added (pipe ping-pong, {SWITCH_CORES} cores each), measured over {seconds} s ({:.1} s)",
            self.seconds
        );
        println!(
            "  agent process: {:.3}% of one core",
            self.agent_cpu_percent
        );
        let bpf_total: f64 = self.programs.iter().map(|p| p.1).sum();
        println!("  eBPF programs (kernel BPF stats): {bpf_total:.3}% of one core in all");
        for (name, percent, ns_per_run, runs) in &self.programs {
            println!(
                "    {name:<24} {percent:.4}% of one core, {ns_per_run:.0} ns per run, {runs:.0} runs/s"
            );
        }
    }

    fn print(&self, tasks: u32, seconds: u64) {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        println!(
            "bench accounting: {tasks} idle and {BUSY_TASKS} CPU-bound running tasks, 1 s usage interval, measured over {seconds} s ({:.1} s)",
            self.seconds
        );
        println!(
            "  agent process: {:.3}% of one core; RSS {:.1} MiB ({:.1} anon + {:.1} file; max {:.1} MiB while measured){}",
            self.agent_cpu_percent,
            mib(self.agent_rss),
            mib(self.agent_rss_parts.0),
            mib(self.agent_rss_parts.1),
            mib(self.agent_rss_max),
            self.collect_seconds
                .map(|s| format!("; last usage pass {:.1} ms", s * 1000.0))
                .unwrap_or_default()
        );
        let bpf_total: f64 = self.programs.iter().map(|p| p.1).sum();
        println!("  eBPF programs (kernel BPF stats): {bpf_total:.3}% of one core in all");
        for (name, percent, ns_per_run, runs) in &self.programs {
            println!(
                "    {name:<24} {percent:.4}% of one core, {ns_per_run:.0} ns per run, {runs:.0} runs/s"
            );
        }
        self.busy.print(&format!(
            "CPU-bound tasks (limited to {BUSY_CORES} cores each)"
        ));
        self.idle.print("idle tasks (their start-up only)");
        let target_met =
            tasks < 1000 || (self.agent_cpu_percent < 0.6 && self.agent_rss < 50 << 20);
        println!(
            "  targets at 1,000 tasks (< 0.6% of one core, < 50 MiB RSS): {}",
            if tasks < 1000 {
                "n/a at this step"
            } else if target_met {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}

fn measure(agent: u32, http: &str, window: Duration) -> Result<Measurement> {
    let ticks_per_second = clock_ticks();
    let progs0 = bpf_programs(agent);
    let (ticks0, _) = process_cpu_and_rss(agent)?;
    let t0 = Instant::now();
    let mut rss_max = 0;
    while t0.elapsed() < window {
        sleep(Duration::from_millis(500));
        rss_max = rss_max.max(process_cpu_and_rss(agent)?.1);
    }
    let (ticks1, rss) = process_cpu_and_rss(agent)?;
    let rss_parts = rss_parts(agent);
    let progs1 = bpf_programs(agent);
    let seconds = t0.elapsed().as_secs_f64();
    let agent_cpu_percent = (ticks1 - ticks0) as f64 / ticks_per_second / seconds * 100.0;
    let programs = progs1
        .iter()
        .filter_map(|p1| {
            let p0 = progs0.iter().find(|p| p.id == p1.id)?;
            let ns = p1.run_time_ns.saturating_sub(p0.run_time_ns) as f64;
            let runs = p1.run_cnt.saturating_sub(p0.run_cnt) as f64;
            Some((
                prog_name(p1.id),
                ns / 1e9 / seconds * 100.0,
                if runs > 0.0 { ns / runs } else { 0.0 },
                runs / seconds,
            ))
        })
        .collect();
    let records = usage(http)?;
    let mut busy = Precision::default();
    let mut idle = Precision::default();
    for r in &records {
        let cpu = &r["cpu"];
        let (Some(oncpu), Some(user), Some(system)) = (
            cpu["oncpu_seconds_total"].as_f64(),
            cpu["user_seconds_total"].as_f64(),
            cpu["system_seconds_total"].as_f64(),
        ) else {
            continue;
        };
        // An idle task uses a few ms to start; a busy one BUSY_CORES for the whole run.
        let group = if user + system > 1.0 {
            &mut busy
        } else {
            &mut idle
        };
        group.add(
            r["task_id"].as_str().unwrap_or_default(),
            oncpu,
            user + system,
        );
    }
    let collect_seconds = http_get(http, "/metrics").ok().and_then(|page| {
        page.lines()
            .find_map(|l| l.strip_prefix("strata_agent_usage_collect_seconds "))
            .and_then(|v| v.trim().parse().ok())
    });
    Ok(Measurement {
        seconds,
        agent_cpu_percent,
        agent_rss: rss,
        agent_rss_max: rss_max.max(rss),
        agent_rss_parts: rss_parts,
        programs,
        busy,
        idle,
        collect_seconds,
    })
}

/// `kernel.bpf_stats_enabled` on for the benchmark's life, restored when dropped.
struct BpfStats {
    before: String,
}

impl BpfStats {
    fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(SYSCTL_BPF_STATS).with_context(|| {
            format!("reading {SYSCTL_BPF_STATS}: the kernel keeps no BPF stats")
        })?;
        std::fs::write(SYSCTL_BPF_STATS, "1")
            .with_context(|| format!("writing 1 to {SYSCTL_BPF_STATS} (needs root)"))?;
        Ok(Self {
            before: before.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL_BPF_STATS, &self.before) {
            eprintln!(
                "bench accounting: warning: cannot restore {SYSCTL_BPF_STATS} to {}: {e}",
                self.before
            );
        }
    }
}

/// The benchmark's cgroup(s), below this process's own, with memory and pids limits; removed
/// when dropped.
struct BenchCgroup {
    /// The `cgroup.procs` files a process writes its pid to, to join.
    procs: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl BenchCgroup {
    fn create() -> Result<Self> {
        let name = format!("strata-bench-accounting-{}", std::process::id());
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let root = Path::new("/sys/fs/cgroup");
        let under = |mount: &Path, path: &str| mount.join(path.trim_start_matches('/')).join(&name);
        let mut dirs = Vec::new();
        let mut limits: Vec<(PathBuf, String)> = Vec::new();
        if root.join("cgroup.controllers").is_file() {
            // Pure v2: one directory; the limits need the controllers enabled above it.
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .context("no cgroup2 line in /proc/self/cgroup")?;
            let parent = root.join(path.trim_start_matches('/'));
            for c in ["+memory", "+pids"] {
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), c);
            }
            let dir = under(root, path);
            limits.push((dir.join("memory.max"), MEMORY_LIMIT.to_string()));
            limits.push((dir.join("pids.max"), PIDS_LIMIT.to_string()));
            dirs.push(dir);
        } else {
            for (controller, file, value) in [
                ("memory", "memory.limit_in_bytes", MEMORY_LIMIT),
                ("pids", "pids.max", PIDS_LIMIT),
            ] {
                let path = own
                    .lines()
                    .find_map(|l| {
                        let mut parts = l.splitn(3, ':');
                        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                        controllers
                            .split(',')
                            .any(|c| c == controller)
                            .then_some(path)
                    })
                    .with_context(|| format!("no v1 {controller} line in /proc/self/cgroup"))?;
                let dir = under(&root.join(controller), path);
                limits.push((dir.join(file), value.to_string()));
                dirs.push(dir);
            }
        }
        let cgroup = Self {
            procs: dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
            dirs,
        };
        for dir in &cgroup.dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the bench cgroup {}", dir.display()))?;
        }
        for (file, value) in &limits {
            std::fs::write(file, value).with_context(|| {
                format!(
                    "writing {value} to {}: the agent and its tasks would be unbounded",
                    file.display()
                )
            })?;
        }
        eprintln!(
            "bench accounting: agent and tasks bounded to {} GiB and {PIDS_LIMIT} processes in {}",
            MEMORY_LIMIT >> 30,
            cgroup
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(cgroup)
    }

    /// `strata-agent` of `bin`, started by a shell that joins the cgroup first (the agent's
    /// cgroups are then below it), with the development machines' cgroup placement.
    fn agent(&self, bin: &Path) -> Command {
        let mut script = String::new();
        for procs in &self.procs {
            script.push_str(&format!("echo $$ > '{}' && ", procs.display()));
        }
        script.push_str("exec \"$@\"");
        let mut cmd = Command::new("/bin/sh");
        util::dev_cgroup_placement(&mut cmd)
            .arg("-c")
            .arg(script)
            .arg("strata-agent")
            .arg(bin.join("strata-agent"));
        cmd
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        eprintln!(
                            "bench accounting: warning: cannot remove {}: {e}",
                            dir.display()
                        );
                        break;
                    }
                    Err(_) => sleep(Duration::from_millis(200)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_bytes() {
        let status = "Name:\tstrata-agent\nVmRSS:\t   20480 kB\nRssAnon:\t    8192 kB\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(20 << 20));
        assert_eq!(status_bytes(status, "RssAnon"), Some(8 << 20));
        assert_eq!(status_bytes(status, "RssFile"), None);
        assert_eq!(status_bytes(status, "Name"), None);
    }
}
