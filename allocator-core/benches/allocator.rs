//! `cargo bench -p strata-allocator-core --bench allocator` (what `cargo xtask bench
//! allocator` runs): the allocator core alone, in one thread, with an injected clock.
//!
//! - a full allocation round (every agent offerable, every framework eligible) with 10,000
//!   and 50,000 agents and 1,000 frameworks in 10 roles, with weights, quota (guarantees
//!   and a limit), static reservations on a tenth of the agents and refuse filters from a
//!   fifth of the frameworks in play. A round is `tick` plus `take_commands`: the core's
//!   work, its offers in compact form ([`Command::Offers`]); the time the edge then takes
//!   to make their wire form (`Command::into_wire`) is reported beside it, and the thread's
//!   CPU time per round too (approximate: the kernel updates it at scheduler ticks), since
//!   wall time on a shared machine follows its load;
//! - registering 50,000 agents;
//! - a simulated cluster (10,000 agents) in which frameworks accept every offer at once
//!   with as many tasks as fit and agents finish the tasks of the round before: tasks
//!   placed per second, everything included (allocation, offers in wire form, ACCEPT
//!   validation, launches, status updates).
//!
//! Flags: `--agents 10000,50000` (round sizes), `--rounds N` (rounds timed per size, the
//! median is reported), `--sim-seconds S`.

// A benchmark times the core with the wall clock; the core itself still reads none (it is
// given `now`, as here).
#![expect(
    clippy::disallowed_methods,
    reason = "the benchmark measures time; clippy.toml bans clock reads in the core"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_allocator_core::roles::{Limits, Quota};
use strata_allocator_core::{AllocatorConfig, Command, ConnId, Core, FrameworkId, Resources};
use strata_proto::names::{CPUS, MEM, PORTS};
use strata_proto::{
    AgentInfo, Call, CommandInfo, Filters, FrameworkInfo, Offer, Operation, Resource, TaskInfo,
    TaskSource, TaskState, TaskStatus, agent_message, allocator_message, call, event, operation,
};

const FRAMEWORKS: usize = 1000;
const ROLES: usize = 10;
const EPOCH: Duration = Duration::from_secs(1_700_000_000);

struct Cluster {
    core: Core,
    now: Duration,
    /// Framework stream to id.
    frameworks: Vec<(ConnId, FrameworkId)>,
    /// Agent stream by agent index.
    agents: Vec<ConnId>,
    next_conn: u64,
}

fn role(i: usize) -> String {
    // Two levels: eng/r0..eng/r4 and ads/r5..ads/r9.
    let parent = if i < ROLES / 2 { "eng" } else { "ads" };
    format!("{parent}/r{i}")
}

fn agent_resources(i: usize) -> Vec<Resource> {
    let mut r = vec![
        Resource::scalar(CPUS, 16.0),
        Resource::scalar(MEM, 65536.0),
        Resource::ranges(PORTS, [(31000, 32000)]),
    ];
    if i.is_multiple_of(10) {
        // A static reservation on a tenth of the agents.
        r[0].scalar = 12.0;
        r.push(Resource {
            role: role(i / 10 % ROLES),
            ..Resource::scalar(CPUS, 4.0)
        });
    }
    r
}

impl Cluster {
    fn new() -> Self {
        Self {
            core: Core::new(AllocatorConfig::default(), "bench"),
            now: EPOCH,
            frameworks: Vec::new(),
            agents: Vec::new(),
            next_conn: 0,
        }
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    fn add_agents(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.agents.len();
            let conn = self.conn();
            self.core
                .agent_register(
                    self.now,
                    conn,
                    agent_message::Register {
                        info: Some(AgentInfo {
                            hostname: format!("host-{i}"),
                            resources: agent_resources(i),
                            attributes: vec![strata_proto::Attribute {
                                name: "rack".to_owned(),
                                value: format!("r{}", i % 64),
                            }],
                            ..AgentInfo::default()
                        }),
                        tasks: vec![],
                    },
                )
                .expect("agent registers");
            self.agents.push(conn);
        }
        self.core.take_commands();
    }

    fn add_frameworks(&mut self, n: usize) {
        for i in 0..n {
            let conn = self.conn();
            let fid = self
                .core
                .framework_subscribe(
                    self.now,
                    conn,
                    FrameworkInfo {
                        name: format!("fw-{i}"),
                        roles: vec![role(i % ROLES)],
                        failover_timeout_seconds: 3600.0,
                        ..FrameworkInfo::default()
                    },
                )
                .expect("framework subscribes");
            self.frameworks.push((conn, fid));
        }
        self.core.take_commands();
    }

    fn policies(&mut self) {
        let weights: BTreeMap<String, f64> = (0..ROLES)
            .map(|i| (role(i), 1.0 + (i % 3) as f64))
            .collect();
        self.core.set_weights(&weights).expect("weights");
        let total_cpus = self.agents.len() as i64 * 16_000;
        for (r, guarantee) in [(role(0), total_cpus / 20), (role(5), total_cpus / 20)] {
            self.core
                .set_quota(
                    &r,
                    Quota {
                        guarantee: Resources::scalar_milli(CPUS, guarantee),
                        limit: Limits::new(),
                    },
                )
                .expect("quota");
        }
        self.core
            .set_quota(
                "ads",
                Quota {
                    guarantee: Resources::new(),
                    limit: {
                        let mut limit = Limits::new();
                        limit.set(CPUS, total_cpus / 3);
                        limit
                    },
                },
            )
            .expect("limit");
    }

    /// Every framework declines its offers: a fifth of them for an hour (filters), the
    /// others for no time. Returns how many offers there were.
    fn decline_all(&mut self, cmds: &[Command], filters: bool) -> usize {
        let mut by_conn: BTreeMap<ConnId, Vec<String>> = BTreeMap::new();
        for c in cmds {
            if let Command::ToFramework {
                conn,
                event: event::Event::Offers(o),
            } = c
            {
                by_conn
                    .entry(*conn)
                    .or_default()
                    .extend(o.offers.iter().map(|o| o.id.clone()));
            }
        }
        let mut n = 0;
        let index: BTreeMap<ConnId, usize> = self
            .frameworks
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (*c, i))
            .collect();
        for (conn, ids) in by_conn {
            n += ids.len();
            let i = index[&conn];
            let refuse = if filters && i.is_multiple_of(5) {
                3600.0
            } else {
                0.0
            };
            let fid = self.frameworks[i].1.clone();
            self.core.framework_call(
                self.now,
                conn,
                Call {
                    framework_id: fid.0,
                    call: Some(call::Call::Decline(call::Decline {
                        offer_ids: ids,
                        filters: Some(Filters {
                            refuse_seconds: Some(refuse),
                        }),
                    })),
                },
            );
        }
        self.core.take_commands();
        n
    }
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux, updated at
/// scheduler ticks, so approximate for short spans), so figures can be read apart from the
/// load of a shared machine; `None` where it cannot be read.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn round(agents: usize, rounds: usize) {
    let mut c = Cluster::new();
    c.add_agents(agents);
    c.add_frameworks(FRAMEWORKS);
    c.policies();
    // A first round, then filters from a fifth of the frameworks.
    c.now += Duration::from_secs(1);
    c.core.tick(c.now);
    let cmds: Vec<Command> = c
        .core
        .take_commands()
        .into_iter()
        .map(Command::into_wire)
        .collect();
    c.decline_all(&cmds, true);
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    let mut wire_times = Vec::new();
    let mut offers = 0;
    for _ in 0..rounds {
        // One allocation interval on: a DECLINE refuses at least until the next periodic
        // pass (as in Mesos), so the four fifths declined for no time are offered again,
        // and the hour-long filters of the other fifth are still checked.
        c.now += Duration::from_secs(1);
        let start = Instant::now();
        let cpu_start = thread_cpu();
        c.core.tick(c.now);
        let cmds = c.core.take_commands();
        times.push(start.elapsed());
        if let (Some(a), Some(b)) = (cpu_start, thread_cpu()) {
            cpu_times.push(b.saturating_sub(a));
        }
        // What the edge does next: the OFFERS events in their wire form.
        let start = Instant::now();
        let cmds: Vec<Command> = cmds.into_iter().map(Command::into_wire).collect();
        wire_times.push(start.elapsed());
        offers = c.decline_all(&cmds, false);
    }
    let m = median(times.clone());
    let best = times.iter().min().copied().unwrap_or_default();
    let cpu = if cpu_times.is_empty() {
        String::new()
    } else {
        format!(
            " (CPU time: median {:.1} ms)",
            median(cpu_times).as_secs_f64() * 1e3
        )
    };
    println!(
        "round: {agents} agents, {FRAMEWORKS} frameworks, {ROLES} roles: median {:.1} ms, best \
         {:.1} ms over {rounds} rounds{cpu}, {offers} offers per round; wire form of its offers \
         at the edge: median {:.1} ms",
        m.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3,
        median(wire_times).as_secs_f64() * 1e3,
    );
}

fn add_agents(n: usize) {
    let mut c = Cluster::new();
    c.add_frameworks(FRAMEWORKS);
    let start = Instant::now();
    c.add_agents(n);
    let took = start.elapsed();
    println!(
        "add agents: {n} registered in {:.1} ms ({:.0} agents/s)",
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64()
    );
}

fn task(id: u64, agent_id: &str) -> TaskInfo {
    TaskInfo {
        task_id: format!("t{id}"),
        agent_id: agent_id.to_owned(),
        resources: vec![Resource::scalar(CPUS, 1.0), Resource::scalar(MEM, 1024.0)],
        command: Some(CommandInfo {
            shell: true,
            value: "true".to_owned(),
            ..CommandInfo::default()
        }),
        ..TaskInfo::default()
    }
}

/// How many 1 cpu / 1 GiB tasks fit in the offer.
fn fits(offer: &Offer) -> u64 {
    let cpus = strata_proto::scalar_sum(&offer.resources, CPUS);
    let mem = strata_proto::scalar_sum(&offer.resources, MEM) / 1024.0;
    cpus.min(mem).max(0.0) as u64
}

fn simulate(agents: usize, seconds: f64) {
    let mut c = Cluster::new();
    c.add_agents(agents);
    c.add_frameworks(FRAMEWORKS);
    let fw_of: BTreeMap<ConnId, FrameworkId> = c.frameworks.iter().cloned().collect();
    let mut next_task = 0u64;
    let mut placed = 0u64;
    // Tasks launched in the previous round: (agent conn, framework, task id).
    let mut running: Vec<(ConnId, FrameworkId, String)> = Vec::new();
    let start = Instant::now();
    let mut rounds = 0;
    c.core.tick(c.now);
    while start.elapsed().as_secs_f64() < seconds {
        rounds += 1;
        // As the edge sends them: offers in their wire form.
        let cmds: Vec<Command> = c
            .core
            .take_commands()
            .into_iter()
            .map(Command::into_wire)
            .collect();
        // Agents finish the previous round's tasks.
        for (aconn, fid, id) in running.drain(..) {
            c.core.agent_status_update(
                c.now,
                aconn,
                TaskStatus {
                    task_id: id,
                    framework_id: fid.0,
                    state: TaskState::Finished as i32,
                    source: TaskSource::Agent as i32,
                    ..TaskStatus::default()
                },
            );
        }
        // Frameworks accept every offer with as many tasks as fit.
        for cmd in &cmds {
            match cmd {
                Command::ToFramework {
                    conn,
                    event: event::Event::Offers(o),
                } => {
                    let fid = &fw_of[conn];
                    for offer in &o.offers {
                        let n = fits(offer);
                        let tasks: Vec<TaskInfo> = (0..n)
                            .map(|k| task(next_task + k, &offer.agent_id))
                            .collect();
                        next_task += n;
                        c.core.framework_call(
                            c.now,
                            *conn,
                            Call {
                                framework_id: fid.0.clone(),
                                call: Some(call::Call::Accept(call::Accept {
                                    offer_ids: vec![offer.id.clone()],
                                    operations: vec![Operation {
                                        operation: Some(operation::Operation::Launch(
                                            operation::Launch { tasks },
                                        )),
                                    }],
                                    filters: Some(Filters {
                                        refuse_seconds: Some(0.0),
                                    }),
                                })),
                            },
                        );
                    }
                }
                Command::ToAgent {
                    conn,
                    message: allocator_message::Message::LaunchTask(l),
                } => {
                    let t = l.task.as_ref().expect("task");
                    running.push((
                        *conn,
                        FrameworkId(l.framework_id.clone()),
                        t.task_id.clone(),
                    ));
                    placed += 1;
                }
                _ => {}
            }
        }
        c.now += Duration::from_millis(10);
        c.core.allocate(c.now);
    }
    let took = start.elapsed().as_secs_f64();
    println!(
        "simulated cluster: {agents} agents, {FRAMEWORKS} frameworks: {placed} tasks placed in \
         {took:.2} s over {rounds} rounds: {:.0} tasks/s",
        placed as f64 / took
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = flag("--agents")
        .unwrap_or_else(|| "10000,50000".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("--agents takes numbers like 10000,50000")
        })
        .collect();
    let rounds: usize = flag("--rounds")
        .map(|s| s.parse().expect("--rounds takes a number"))
        .unwrap_or(5);
    let sim: f64 = flag("--sim-seconds")
        .map(|s| s.parse().expect("--sim-seconds takes a number"))
        .unwrap_or(3.0);
    if cfg!(debug_assertions) {
        println!("(debug build: figures are not meaningful; use cargo bench or --release)");
    }
    for n in sizes {
        round(n, rounds);
    }
    add_agents(50_000);
    simulate(10_000, sim);
}
