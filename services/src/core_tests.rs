//! The core with an injected clock: deploys, replacement with backoff, rolling upgrades within
//! the strategy, rollback, constraints, scale/suspend/destroy, reconstruction after a restart.

use std::collections::VecDeque;
use std::time::Duration;

use strata_framework::proto::{Attribute, Offer, Resource, TaskState, TaskStatus, names};

use super::*;
use crate::spec::AppSpec;

fn secs(s: u64) -> Duration {
    Duration::from_secs(1_800_000_000 + s)
}

fn offer(id: &str, agent: &str, host: &str, rack: &str) -> Offer {
    Offer {
        id: id.to_owned(),
        agent_id: agent.to_owned(),
        hostname: host.to_owned(),
        resources: vec![
            Resource::scalar(names::CPUS, 100.0),
            Resource::scalar(names::MEM, 100_000.0),
            Resource::ranges(names::PORTS, [(31000, 32000)]),
        ],
        attributes: vec![Attribute {
            name: "rack".to_owned(),
            value: rack.to_owned(),
        }],
        ..Offer::default()
    }
}

fn status(task_id: &str, agent: &str, state: TaskState, healthy: Option<bool>) -> TaskStatus {
    TaskStatus {
        task_id: task_id.to_owned(),
        agent_id: agent.to_owned(),
        state: state as i32,
        healthy,
        ..TaskStatus::default()
    }
}

fn spec_of(text: &str) -> AppSpec {
    AppSpec::parse(text).unwrap()
}

const WEB: &str = r#"
id = "web"
command = "serve"
instances = 3
ports = 1
[health_check]
protocol = "http"
interval = "1s"
"#;

fn launched(commands: &[Command]) -> Vec<(String, String)> {
    commands
        .iter()
        .flat_map(|c| match c {
            Command::Launch { offer, tasks } => tasks
                .iter()
                .map(|t| (t.task_id.clone(), offer.agent_id.clone()))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn killed(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Kill { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

/// A cluster that answers every command like agents would, one event at a time: launched
/// tasks run and report their health (`healthy(version)`), killed ones end, and the core is
/// offered the agent again after each event. `check` runs after every event.
struct Sim {
    core: Core,
    now: Duration,
    events: VecDeque<TaskStatus>,
    offers: u64,
}

impl Sim {
    fn new() -> Self {
        Self {
            core: Core::new(State::default()),
            now: secs(0),
            events: VecDeque::new(),
            offers: 0,
        }
    }

    fn offer(&mut self) {
        self.offers += 1;
        let o = offer(&format!("o{}", self.offers), "a1", "h1", "r1");
        self.core.offers(self.now, vec![o]);
    }

    /// Turns commands into the events agents would send.
    fn absorb(&mut self, healthy: &dyn Fn(u64) -> bool) {
        for command in self.core.take_commands() {
            match command {
                Command::Launch { offer, tasks } => {
                    for t in tasks {
                        let (_, version) = parse_task_id(&t.task_id).unwrap();
                        self.events.push_back(status(
                            &t.task_id,
                            &offer.agent_id,
                            TaskState::Running,
                            None,
                        ));
                        let ok = healthy(version);
                        self.events.push_back(status(
                            &t.task_id,
                            &offer.agent_id,
                            TaskState::Running,
                            Some(ok),
                        ));
                        if !ok {
                            // The agent kills it after its consecutive failures.
                            self.events.push_back(status(
                                &t.task_id,
                                &offer.agent_id,
                                TaskState::Killed,
                                Some(false),
                            ));
                        }
                    }
                }
                Command::Kill { task_id, agent_id } => {
                    self.events
                        .push_back(status(&task_id, &agent_id, TaskState::Killed, None));
                }
                Command::Decline { .. } | Command::Revive | Command::Reconcile { .. } => {}
            }
        }
    }

    /// Runs until nothing happens for a while; `check` sees the core after every event.
    fn run(&mut self, healthy: &dyn Fn(u64) -> bool, check: &mut dyn FnMut(&Core)) {
        for _ in 0..10_000 {
            self.offer();
            self.absorb(healthy);
            match self.events.pop_front() {
                Some(event) => {
                    self.core.update(self.now, &event);
                    check(&self.core);
                    self.absorb(healthy);
                }
                None => {
                    self.now += Duration::from_secs(1);
                    self.core.tick(self.now);
                    check(&self.core);
                    self.absorb(healthy);
                    let app = self.core.app("web");
                    if app.is_none_or(|a| a.deployment.is_none() && a.not_before <= self.now)
                        && self.events.is_empty()
                    {
                        self.offer();
                        self.absorb(healthy);
                        if self.events.is_empty() {
                            return;
                        }
                    }
                }
            }
        }
        panic!("the simulation did not settle");
    }
}

#[test]
fn an_apps_network_mode_reaches_its_tasks() {
    for (network, mode) in [
        ("", NetworkMode::Host),
        ("network = \"bridge\"\n", NetworkMode::Bridge),
        ("network = \"none\"\n", NetworkMode::None),
    ] {
        let mut core = Core::new(State::default());
        let text = format!("id = \"net\"\ncommand = \"serve\"\n{network}");
        core.deploy(secs(0), spec_of(&text)).unwrap();
        core.offers(secs(0), vec![offer("o1", "a1", "h1", "r1")]);
        let commands = core.take_commands();
        let Some(Command::Launch { tasks, .. }) = commands.first() else {
            panic!("{commands:?}");
        };
        assert_eq!(tasks[0].network_mode(), mode, "{network:?}");
    }
}

#[test]
fn a_bridge_apps_host_ports_are_mapped_to_its_container_ports() {
    let mut core = Core::new(State::default());
    let text = "id = \"web\"\ncommand = \"serve\"\nnetwork = \"bridge\"\nports = 2\n\
                container_ports = [8080, 9090]\n[health_check]\nprotocol = \"tcp\"\n";
    core.deploy(secs(0), spec_of(text)).unwrap();
    core.offers(secs(0), vec![offer("o1", "a1", "h1", "r1")]);
    let commands = core.take_commands();
    let Some(Command::Launch { tasks, .. }) = commands.first() else {
        panic!("{commands:?}");
    };
    let task = &tasks[0];
    let host: Vec<u32> = task.port_mappings.iter().map(|m| m.host_port).collect();
    let inside: Vec<u32> = task
        .port_mappings
        .iter()
        .map(|m| m.container_port)
        .collect();
    assert_eq!(inside, vec![8080, 9090]);
    assert!(host.iter().all(|p| (31000..=32000).contains(p)), "{host:?}");
    // The agent accepts them: each host port is one of the task's ports.
    let checked = strata_framework::proto::network::mappings(task).unwrap();
    assert_eq!(checked.len(), 2);
    let env: HashMap<&str, &str> = task
        .command
        .as_ref()
        .unwrap()
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env["PORT0"], "8080");
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["HOST_PORT1"], host[1].to_string());
    // The TCP check dials the first host port (forwarded to 8080).
    let Some(health_check::Check::Tcp(tcp)) =
        task.health_check.as_ref().and_then(|h| h.check.clone())
    else {
        panic!("no tcp check: {:?}", task.health_check);
    };
    assert_eq!(tcp.port, host[0]);
}

#[test]
fn a_new_app_deploys_its_instances_and_its_plan_completes() {
    let mut core = Core::new(State::default());
    assert_eq!(core.deploy(secs(0), spec_of(WEB)).unwrap(), 1);
    core.offers(secs(0), vec![offer("o1", "a1", "h1", "r1")]);
    let commands = core.take_commands();
    let tasks = launched(&commands);
    assert_eq!(tasks.len(), 3, "{commands:?}");
    let Command::Launch { tasks: infos, .. } = &commands[0] else {
        panic!("{commands:?}");
    };
    // Each instance has its own host port, in its environment and its health check.
    let env = &infos[0].command.as_ref().unwrap().environment;
    assert_eq!(env["PORT0"], "31000");
    let check = infos[0].health_check.as_ref().unwrap();
    assert!(matches!(&check.check, Some(health_check::Check::Http(h)) if h.port == 31000));
    assert_eq!(
        infos[1].command.as_ref().unwrap().environment["PORT0"],
        "31001"
    );
    let plan = core.plan(secs(0), "web").unwrap();
    assert_eq!(
        (plan.strategy.as_str(), plan.status),
        ("deploy", Status::InProgress)
    );
    let w = core.workloads();
    assert_eq!(
        (w[0].state.as_str(), w[0].instances_running),
        ("deploying", 0)
    );
    for (task, agent) in &tasks {
        core.update(secs(1), &status(task, agent, TaskState::Running, None));
    }
    // Running but not yet healthy: not done.
    assert_eq!(core.healthy("web"), 0);
    assert!(core.app("web").unwrap().deployment.is_some());
    for (task, agent) in &tasks {
        core.update(
            secs(2),
            &status(task, agent, TaskState::Running, Some(true)),
        );
    }
    assert_eq!(core.healthy("web"), 3);
    let app = core.app("web").unwrap();
    assert!(app.deployment.is_none());
    assert_eq!(app.last_good.as_ref().unwrap().version, 1);
    let plan = core.plan(secs(2), "web").unwrap();
    assert_eq!(
        (plan.strategy.as_str(), plan.status),
        ("steady", Status::Complete)
    );
    assert_eq!(plan.phases[0].steps.len(), 3);
    // What the dashboard is told: three of three, version 1, deployed.
    let w = core.workloads();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].kind.as_str(), w[0].id.as_str(), w[0].state.as_str()),
        ("app", "web", "running")
    );
    assert_eq!((w[0].instances_wanted, w[0].instances_running), (3, 3));
    assert_eq!(w[0].version, "1");
    // The same definition again changes nothing.
    assert_eq!(core.deploy(secs(3), spec_of(WEB)).unwrap(), 1);
    core.offers(secs(3), vec![offer("o2", "a1", "h1", "r1")]);
    assert!(launched(&core.take_commands()).is_empty());
}

#[test]
fn failed_instances_are_relaunched_with_backoff_and_lost_ones_at_once() {
    let mut sim = Sim::new();
    sim.core.deploy(sim.now, spec_of(WEB)).unwrap();
    sim.run(&|_| true, &mut |_| {});
    assert_eq!(sim.core.healthy("web"), 3);
    let tasks: Vec<String> = sim
        .core
        .app("web")
        .unwrap()
        .instances
        .keys()
        .cloned()
        .collect();
    let now = sim.now;
    // A failure: nothing launches for 1 s, then one instance does.
    sim.core
        .update(now, &status(&tasks[0], "a1", TaskState::Failed, None));
    sim.core.take_commands();
    sim.core.offers(now, vec![offer("x1", "a1", "h1", "r1")]);
    assert!(launched(&sim.core.take_commands()).is_empty());
    let plan = sim.core.plan(now, "web").unwrap();
    assert_eq!(plan.status, Status::Delayed, "{plan:?}");
    sim.core.offers(
        now + Duration::from_secs(1),
        vec![offer("x2", "a1", "h1", "r1")],
    );
    let relaunched = launched(&sim.core.take_commands());
    assert_eq!(relaunched.len(), 1);
    // It fails too: the backoff doubles.
    let at = now + Duration::from_secs(1);
    sim.core
        .update(at, &status(&relaunched[0].0, "a1", TaskState::Failed, None));
    sim.core.offers(
        at + Duration::from_millis(1900),
        vec![offer("x3", "a1", "h1", "r1")],
    );
    assert!(launched(&sim.core.take_commands()).is_empty());
    sim.core.offers(
        at + Duration::from_secs(2),
        vec![offer("x4", "a1", "h1", "r1")],
    );
    let again = launched(&sim.core.take_commands());
    assert_eq!(again.len(), 1);
    // Healthy again: the backoff resets, and a lost instance is replaced at once.
    let at = at + Duration::from_secs(2);
    sim.core.update(
        at,
        &status(&again[0].0, "a1", TaskState::Running, Some(true)),
    );
    assert_eq!(sim.core.app("web").unwrap().failures, 0);
    sim.core
        .update(at, &status(&tasks[1], "a1", TaskState::Lost, None));
    sim.core.offers(at, vec![offer("x5", "a1", "h1", "r1")]);
    assert_eq!(launched(&sim.core.take_commands()).len(), 1);
}

/// Checks every step of a rolling upgrade: healthy instances never below the minimum, all
/// instances never above the maximum.
fn rolling(text: &str, min_healthy: usize, max_total: usize) {
    let mut sim = Sim::new();
    sim.core.deploy(sim.now, spec_of(text)).unwrap();
    sim.run(&|_| true, &mut |_| {});
    assert_eq!(sim.core.healthy("web"), 4);
    let v2 = sim
        .core
        .deploy(sim.now, spec_of(&text.replace("serve", "serve --v2")))
        .unwrap();
    assert_eq!(v2, 2);
    let mut lowest = usize::MAX;
    let mut highest = 0;
    sim.run(&|_| true, &mut |core| {
        let app = core.app("web").unwrap();
        lowest = lowest.min(core.healthy("web"));
        highest = highest.max(app.instances.len());
    });
    let app = sim.core.app("web").unwrap();
    assert!(app.deployment.is_none());
    assert!(
        app.instances
            .values()
            .all(|i| i.version == 2 && i.is_healthy())
    );
    assert_eq!(app.instances.len(), 4);
    assert!(lowest >= min_healthy, "healthy fell to {lowest}");
    assert!(highest <= max_total, "{highest} instances at once");
    assert!(lowest < 4 || highest > 4, "the deploy made progress");
}

#[test]
fn a_rolling_upgrade_never_drops_below_minimum_health_capacity() {
    let base = WEB.replace("instances = 3", "instances = 4");
    rolling(&base, 4, 8);
    rolling(
        &format!("{base}[upgrade]\nminimum_health_capacity = 0.5\nmaximum_over_capacity = 0.0\n"),
        2,
        4,
    );
    rolling(
        &format!("{base}[upgrade]\nminimum_health_capacity = 0.75\nmaximum_over_capacity = 0.25\n"),
        3,
        5,
    );
}

#[test]
fn a_deploy_that_never_becomes_healthy_is_rolled_back() {
    let mut sim = Sim::new();
    sim.core.deploy(sim.now, spec_of(WEB)).unwrap();
    sim.run(&|_| true, &mut |_| {});
    sim.core
        .deploy(sim.now, spec_of(&WEB.replace("serve", "broken")))
        .unwrap();
    let mut lowest = usize::MAX;
    let mut v2_failures = 0;
    sim.run(&|v| v != 2, &mut |core| {
        lowest = lowest.min(core.healthy("web"));
        let app = core.app("web").unwrap();
        if let Some(d) = &app.deployment {
            v2_failures = v2_failures.max(d.failures);
        }
    });
    let app = sim.core.app("web").unwrap();
    assert_eq!(v2_failures, 2, "the third failure rolls back");
    assert_eq!(
        (app.version, app.max_version),
        (1, 2),
        "back at the last good version"
    );
    assert_eq!(app.spec.command, "serve");
    assert!(app.deployment.is_none());
    assert!(
        app.instances
            .values()
            .all(|i| i.version == 1 && i.is_healthy())
    );
    assert_eq!(app.instances.len(), 3);
    assert!(
        lowest >= 3,
        "the old instances stayed while the new failed: {lowest}"
    );
    // The next deploy gets a fresh version number.
    assert_eq!(sim.core.deploy(sim.now, app_text("serve --v3")).unwrap(), 3);
}

fn app_text(command: &str) -> AppSpec {
    spec_of(&WEB.replace("serve", command))
}

#[test]
fn a_deploy_not_done_in_time_is_rolled_back() {
    let mut core = Core::new(State::default());
    let text = format!("{WEB}[upgrade]\nrollback_after = \"60s\"\n");
    core.deploy(secs(0), spec_of(&text)).unwrap();
    core.offers(secs(0), vec![offer("o1", "a1", "h1", "r1")]);
    for (t, a) in launched(&core.take_commands()) {
        core.update(secs(1), &status(&t, "a1", TaskState::Running, Some(true)));
        let _ = a;
    }
    core.deploy(secs(10), spec_of(&text.replace("serve", "slow")))
        .unwrap();
    core.offers(secs(10), vec![offer("o2", "a1", "h1", "r1")]);
    let new = launched(&core.take_commands());
    assert_eq!(new.len(), 3);
    // Running, never healthy (still in its grace period on the agent).
    for (t, _) in &new {
        core.update(secs(11), &status(t, "a1", TaskState::Running, None));
    }
    core.tick(secs(69));
    assert_eq!(core.app("web").unwrap().version, 2);
    core.tick(secs(70));
    let app = core.app("web").unwrap();
    assert_eq!(app.version, 1);
    let kills = killed(&core.take_commands());
    assert_eq!(kills.len(), 3);
    assert!(kills.iter().all(|t| t.starts_with("web.2.")), "{kills:?}");
}

#[test]
fn constraints_are_honoured() {
    let agents = [("a1", "h1", "r1"), ("a2", "h2", "r1"), ("a3", "h3", "r2")];
    let offers = |round: u32| {
        agents
            .iter()
            .map(|(a, h, r)| offer(&format!("{a}-{round}"), a, h, r))
            .collect::<Vec<_>>()
    };
    let deploy = |constraints: &str, instances: u32| {
        let mut core = Core::new(State::default());
        let text = format!(
            "id = \"web\"\ncommand = \"x\"\ninstances = {instances}\nconstraints = [{constraints}]\n"
        );
        core.deploy(secs(0), spec_of(&text)).unwrap();
        core.offers(secs(0), offers(0));
        core.offers(secs(0), offers(1));
        let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
        for (_, agent) in launched(&core.take_commands()) {
            *per_agent.entry(agent).or_default() += 1;
        }
        per_agent
    };
    let unique = deploy("{ field = \"hostname\", operator = \"UNIQUE\" }", 5);
    assert_eq!(unique.values().copied().collect::<Vec<_>>(), [1, 1, 1]);
    let rack = deploy(
        "{ field = \"rack\", operator = \"EQUALS\", value = \"r2\" }",
        2,
    );
    assert_eq!(rack.into_iter().collect::<Vec<_>>(), [("a3".to_owned(), 2)]);
    let like = deploy(
        "{ field = \"hostname\", operator = \"LIKE\", value = \"h[12]*\" }",
        2,
    );
    assert!(like.is_empty(), "'[' is literal: {like:?}");
    let like = deploy(
        "{ field = \"hostname\", operator = \"LIKE\", value = \"h*\" }",
        2,
    );
    assert_eq!(like.values().sum::<usize>(), 2);
    let max_per = deploy(
        "{ field = \"rack\", operator = \"MAX_PER\", value = \"2\" }",
        10,
    );
    let r1 = max_per.get("a1").copied().unwrap_or(0) + max_per.get("a2").copied().unwrap_or(0);
    assert_eq!((r1, max_per.get("a3").copied()), (2, Some(2)));
    let missing = deploy("{ field = \"zone\", operator = \"UNIQUE\" }", 1);
    assert!(
        missing.is_empty(),
        "an agent without the attribute does not qualify"
    );
}

#[test]
fn scale_suspend_restart_and_destroy() {
    let mut sim = Sim::new();
    sim.core.deploy(sim.now, spec_of(WEB)).unwrap();
    sim.run(&|_| true, &mut |_| {});
    sim.core.scale(sim.now, "web", 5).unwrap();
    sim.run(&|_| true, &mut |_| {});
    assert_eq!(sim.core.healthy("web"), 5);
    sim.core.scale(sim.now, "web", 2).unwrap();
    sim.run(&|_| true, &mut |_| {});
    let app = sim.core.app("web").unwrap();
    assert_eq!((app.instances.len(), app.version), (2, 1));
    // Suspend: no instance, the app stays.
    sim.core.scale(sim.now, "web", 0).unwrap();
    sim.run(&|_| true, &mut |_| {});
    assert!(sim.core.app("web").unwrap().instances.is_empty());
    assert_eq!(
        sim.core.plan(sim.now, "web").unwrap().status,
        Status::Complete
    );
    sim.core.scale(sim.now, "web", 3).unwrap();
    sim.run(&|_| true, &mut |_| {});
    // Restart: every instance replaced, never below the minimum.
    let before: Vec<String> = sim
        .core
        .app("web")
        .unwrap()
        .instances
        .keys()
        .cloned()
        .collect();
    assert_eq!(sim.core.restart(sim.now, "web").unwrap(), 2);
    let mut lowest = usize::MAX;
    sim.run(&|_| true, &mut |core| {
        lowest = lowest.min(core.healthy("web"))
    });
    let after: Vec<String> = sim
        .core
        .app("web")
        .unwrap()
        .instances
        .keys()
        .cloned()
        .collect();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|t| !before.contains(t)));
    assert!(lowest >= 3);
    // Destroy: killed, then gone.
    sim.core.destroy(sim.now, "web").unwrap();
    assert_eq!(sim.core.plan(sim.now, "web").unwrap().strategy, "destroy");
    let err = sim.core.deploy(sim.now, spec_of(WEB)).unwrap_err();
    assert!(err.to_string().contains("being destroyed"), "{err}");
    sim.run(&|_| true, &mut |_| {});
    assert!(sim.core.app("web").is_none());
    let err = sim.core.scale(sim.now, "web", 1).unwrap_err();
    assert!(err.to_string().contains("no app \"web\""), "{err}");
}

#[test]
fn a_restarted_core_reconciles_and_kills_nothing_that_runs() {
    let mut sim = Sim::new();
    sim.core.deploy(sim.now, spec_of(WEB)).unwrap();
    sim.run(&|_| true, &mut |_| {});
    let tasks: Vec<String> = sim
        .core
        .app("web")
        .unwrap()
        .instances
        .keys()
        .cloned()
        .collect();
    // What the edge saves, read back by a new core.
    let saved = serde_json::to_vec(sim.core.state()).unwrap();
    let mut state: State = serde_json::from_slice(&saved).unwrap();
    // The state lacks one instance (launched just before a crash): reconciliation adopts it.
    let lacking = tasks[2].clone();
    state
        .apps
        .get_mut("web")
        .unwrap()
        .instances
        .remove(&lacking);
    let mut core = Core::new(state);
    core.subscribed();
    let commands = core.take_commands();
    let explicit: Vec<&(String, String)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Reconcile { tasks } => Some(tasks),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(explicit.len(), 2);
    assert!(
        commands.contains(&Command::Reconcile { tasks: Vec::new() }),
        "implicit too"
    );
    let now = sim.now + Duration::from_secs(30);
    for t in &tasks {
        core.update(now, &status(t, "a1", TaskState::Running, Some(true)));
    }
    assert!(killed(&core.take_commands()).is_empty());
    assert_eq!(core.healthy("web"), 3);
    core.offers(now, vec![offer("o9", "a1", "h1", "r1")]);
    assert!(
        launched(&core.take_commands()).is_empty(),
        "nothing launched twice"
    );
    // A task of an app that no longer exists is killed.
    core.update(now, &status("gone.1.99", "a1", TaskState::Running, None));
    assert_eq!(killed(&core.take_commands()), ["gone.1.99"]);
}

#[test]
fn task_ids_name_app_and_version() {
    assert_eq!(parse_task_id("web.3.17"), Some(("web", 3)));
    assert_eq!(parse_task_id("web.3"), None);
    assert_eq!(parse_task_id("web.x.1"), None);
    assert_eq!(parse_task_id("web.1.2.3"), None);
}
