//! The services framework's decisions, pure and synchronous: the time (`now`, since the Unix
//! epoch), offers, task updates and the operator's requests go in; launches, declines, kills,
//! revives and reconciliations come out of [`Core::take_commands`]. It never reads a clock,
//! sleeps or does I/O (the edge, `framework.rs`, passes the time and ticks every second).
//!
//! Goal-oriented, as DC/OS's SDK: the *target* of each app is its definition and version
//! ([`App::spec`], [`App::version`]); the *current state* is its instances as the allocator
//! reports them (every instance is a task `APP.VERSION.SEQ`, so its app and version are read
//! back from its id after a restart, when reconciliation reports them again); each step,
//! [`Core`] compares the two and issues what closes the gap, within the app's upgrade strategy:
//!
//! - an instance counts as *healthy* while it runs and, if the app has a health check, the
//!   agent last reported it healthy;
//! - instances of another version are replaced in a rolling deploy: new ones are launched while
//!   all instances (killing ones included) stay within `instances + maximum over capacity`, and
//!   old ones are killed only while the healthy ones (of any version) stay at or above
//!   `instances × minimum health capacity`;
//! - failed instances (not killed by the framework) are relaunched after a backoff that grows
//!   with consecutive failures and resets once an instance is healthy; lost ones (agent gone)
//!   are replaced at once;
//! - a deploy whose new instances fail `upgrade.max_failures` times, or that is not done within
//!   `upgrade.rollback_after`, is rolled back to the last definition that completed;
//! - constraints are honoured against the agents' hostnames and attributes (learnt from offers
//!   and kept in the state).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_framework::ResourceBudget;
use strata_framework::proto::{
    CommandInfo, HealthCheck, HttpCheck, NetworkMode, Offer, PortMapping, PortProtocol, Resource,
    TaskInfo, TaskState, TaskStatus, TcpCheck, health_check, names,
};
use tracing::{info, warn};

use crate::spec::{AppSpec, Network, Operator, Protocol, SpecError};

/// The most apps the framework holds.
pub const MAX_APPS: usize = 1000;
/// How long unused offers are refused while nothing waits to launch.
pub const IDLE_REFUSE_SECONDS: f64 = 30.0;
/// How long unused offers are refused while instances wait (for backoff or a fitting offer).
pub const BUSY_REFUSE_SECONDS: f64 = 1.0;
/// The label carrying the app id on each task.
pub const APP_LABEL: &str = "strata-services/app";
/// The label carrying the app version on each task.
pub const VERSION_LABEL: &str = "strata-services/version";

pub use strata_framework_kit::command::Command;

/// A request the core refuses.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The definition is bad.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such app.
    #[error("no app {app_id:?}; `strata app list` shows the apps")]
    NoApp {
        /// The id (shortened).
        app_id: String,
    },
    /// Too many apps.
    #[error("the framework holds at most {limit} apps; destroy some first")]
    Limit {
        /// The bound.
        limit: usize,
    },
    /// The app is being destroyed.
    #[error("app {app_id} is being destroyed; deploy it again once it is gone")]
    Destroying {
        /// The app.
        app_id: String,
    },
}

/// A definition and its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The definition.
    pub spec: AppSpec,
    /// Its version (1, 2, ...: each deploy or restart makes a new one).
    pub version: u64,
}

/// Why a deployment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployKind {
    /// A new or changed definition.
    Deploy,
    /// The same definition, every instance replaced.
    Restart,
    /// Back to the last definition that completed.
    Rollback,
}

/// A rolling change in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Why.
    pub kind: DeployKind,
    /// When it began.
    pub started_at: Duration,
    /// Failed instances of the new version so far.
    pub failures: u32,
    /// Where a failed deploy goes back to (none for a first deploy or a rollback).
    pub rollback_to: Option<Target>,
}

/// An instance's latest known state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched, not yet running.
    Staging,
    /// Running.
    Running,
    /// Reported lost or unreachable (being replaced).
    Unreachable,
}

/// One instance (a task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Its agent.
    pub agent_id: String,
    /// The app version it runs.
    pub version: u64,
    /// Its state.
    pub state: InstanceState,
    /// The agent's latest health check result.
    pub healthy: Option<bool>,
    /// Whether it has a health check.
    pub checked: bool,
    /// Killed by the framework.
    pub killing: bool,
    /// When it was launched (or adopted).
    pub launched_at: Duration,
}

impl Instance {
    /// Running and, if checked, last reported healthy.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        !self.killing
            && self.state == InstanceState::Running
            && (!self.checked || self.healthy == Some(true))
    }
}

/// One app: its target and what runs of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// The target definition.
    pub spec: AppSpec,
    /// The target version.
    pub version: u64,
    /// The latest definition whose deployment completed.
    pub last_good: Option<Target>,
    /// The rolling change in progress.
    pub deployment: Option<Deployment>,
    /// The instances, by task id.
    pub instances: BTreeMap<String, Instance>,
    /// Consecutive failures (for the backoff).
    pub failures: u32,
    /// No launch before this (backoff).
    pub not_before: Duration,
    /// Being destroyed: every instance is killed, then the app goes.
    pub destroying: bool,
    /// The newest version ever used (versions are never reused).
    pub max_version: u64,
}

/// An agent as offers describe it, for constraints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentFacts {
    /// Its hostname.
    pub hostname: String,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The apps, by id.
    pub apps: BTreeMap<String, App>,
    /// The next instance number.
    pub next_seq: u64,
    /// Agents seen in offers.
    pub agents: BTreeMap<String, AgentFacts>,
}

/// The status of a plan, phase or step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Not started.
    Pending,
    /// Under way.
    InProgress,
    /// Waiting for a backoff.
    Delayed,
    /// Done.
    Complete,
}

/// One step of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What it does.
    pub name: String,
    /// Where it is.
    pub status: Status,
}

/// A phase of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// What it does.
    pub name: String,
    /// Where it is.
    pub status: Status,
    /// Its steps.
    pub steps: Vec<Step>,
}

/// What the core is doing to reach an app's target (`strata app plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The app.
    pub app: String,
    /// The target version.
    pub version: u64,
    /// `deploy`, `restart`, `rollback`, `scale`, `destroy` or `steady`.
    pub strategy: String,
    /// Where it is.
    pub status: Status,
    /// The phases.
    pub phases: Vec<Phase>,
}

/// The core; see the module documentation.
#[derive(Debug)]
pub struct Core {
    state: State,
    commands: Vec<Command>,
    idle_declined: bool,
}

/// `APP.VERSION.SEQ` back into its parts.
#[must_use]
pub fn parse_task_id(task_id: &str) -> Option<(&str, u64)> {
    let mut parts = task_id.split('.');
    let (app, version, seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || seq.parse::<u64>().is_err() {
        return None;
    }
    Some((app, version.parse().ok()?))
}

fn status_of(done: usize, started: usize, k: usize) -> Status {
    if k < done {
        Status::Complete
    } else if k < started {
        Status::InProgress
    } else {
        Status::Pending
    }
}

impl Core {
    /// A core over `state` (empty, or read back after a restart).
    #[must_use]
    pub fn new(state: State) -> Self {
        Self {
            state,
            commands: Vec::new(),
            idle_declined: false,
        }
    }

    /// What survives a restart.
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The commands made since the last call.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// The app `id`.
    #[must_use]
    pub fn app(&self, id: &str) -> Option<&App> {
        self.state.apps.get(id)
    }

    fn app_mut(&mut self, id: &str) -> Result<&mut App, CoreError> {
        self.state.apps.get_mut(id).ok_or_else(|| CoreError::NoApp {
            app_id: strata_proto::ids::shorten(id, 64),
        })
    }

    /// Deploys a definition: a new app, or a rolling deploy of a changed one (an unchanged one
    /// changes nothing). Returns the target version.
    pub fn deploy(&mut self, now: Duration, spec: AppSpec) -> Result<u64, CoreError> {
        spec.validate()?;
        let id = spec.id.clone();
        match self.state.apps.get_mut(&id) {
            Some(app) if app.destroying => return Err(CoreError::Destroying { app_id: id }),
            Some(app) if app.spec == spec => return Ok(app.version),
            Some(app) => {
                let rollback_to = app.last_good.clone();
                app.spec = spec;
                app.max_version += 1;
                app.version = app.max_version;
                app.failures = 0;
                app.not_before = now;
                app.deployment = Some(Deployment {
                    kind: DeployKind::Deploy,
                    started_at: now,
                    failures: 0,
                    rollback_to,
                });
                info!(app_id = %id, version = app.version, "deploying a new version");
            }
            None => {
                if self.state.apps.len() >= MAX_APPS {
                    return Err(CoreError::Limit { limit: MAX_APPS });
                }
                info!(app_id = %id, "deploying a new app");
                self.state.apps.insert(
                    id.clone(),
                    App {
                        spec,
                        version: 1,
                        last_good: None,
                        deployment: Some(Deployment {
                            kind: DeployKind::Deploy,
                            started_at: now,
                            failures: 0,
                            rollback_to: None,
                        }),
                        instances: BTreeMap::new(),
                        failures: 0,
                        not_before: now,
                        destroying: false,
                        max_version: 1,
                    },
                );
            }
        }
        self.converge(now, &id);
        Ok(self.state.apps[&id].version)
    }

    /// Sets an app's instance count (no new version: instances are added or the newest,
    /// unhealthy first, are killed).
    pub fn scale(&mut self, now: Duration, id: &str, instances: u32) -> Result<u64, CoreError> {
        if instances > crate::spec::MAX_INSTANCES {
            return Err(CoreError::Spec(SpecError::Field {
                id: id.to_owned(),
                field: "instances",
                reason: format!("{instances} is more than {}", crate::spec::MAX_INSTANCES),
            }));
        }
        let app = self.app_mut(id)?;
        if app.destroying {
            return Err(CoreError::Destroying {
                app_id: id.to_owned(),
            });
        }
        app.spec.instances = instances;
        if let Some(good) = &mut app.last_good
            && good.version == app.version
        {
            good.spec.instances = instances;
        }
        let version = app.version;
        info!(app_id = %id, instances, "scaling");
        self.converge(now, id);
        Ok(version)
    }

    /// Replaces every instance in a rolling deploy of the same definition.
    pub fn restart(&mut self, now: Duration, id: &str) -> Result<u64, CoreError> {
        let app = self.app_mut(id)?;
        if app.destroying {
            return Err(CoreError::Destroying {
                app_id: id.to_owned(),
            });
        }
        app.max_version += 1;
        app.version = app.max_version;
        app.deployment = Some(Deployment {
            kind: DeployKind::Restart,
            started_at: now,
            failures: 0,
            rollback_to: app.last_good.clone(),
        });
        let version = app.version;
        info!(app_id = %id, version, "restarting");
        self.converge(now, id);
        Ok(version)
    }

    /// Kills every instance and removes the app once they are gone.
    pub fn destroy(&mut self, now: Duration, id: &str) -> Result<(), CoreError> {
        let app = self.app_mut(id)?;
        app.destroying = true;
        app.deployment = None;
        info!(app_id = %id, "destroying");
        self.converge(now, id);
        Ok(())
    }

    /// The time passes: rollbacks are decided, backoffs end.
    pub fn tick(&mut self, now: Duration) {
        let ids: Vec<String> = self.state.apps.keys().cloned().collect();
        for id in ids {
            self.converge(now, &id);
        }
        if self.idle_declined && self.wants_offers(now) {
            self.idle_declined = false;
            self.commands.push(Command::Revive);
        }
    }

    /// After each SUBSCRIBED: reconcile every known instance (a restarted framework learns
    /// their state and health again), re-send pending kills, revive.
    pub fn subscribed(&mut self) {
        let mut tasks = Vec::new();
        for app in self.state.apps.values_mut() {
            for (task_id, instance) in &mut app.instances {
                tasks.push((task_id.clone(), instance.agent_id.clone()));
                if instance.killing {
                    self.commands.push(Command::Kill {
                        task_id: task_id.clone(),
                        agent_id: instance.agent_id.clone(),
                    });
                }
            }
        }
        // Explicit first (the instances it knows), then implicit: any task of this framework
        // the state lacks (launched just before a crash) is reported and adopted.
        if !tasks.is_empty() {
            self.commands.push(Command::Reconcile { tasks });
        }
        self.commands.push(Command::Reconcile { tasks: Vec::new() });
        self.idle_declined = false;
        self.commands.push(Command::Revive);
    }

    /// How many instances of `app` should be launched now.
    fn wanted(app: &App, now: Duration) -> u32 {
        if app.destroying || now < app.not_before {
            return 0;
        }
        let n = app.spec.instances;
        let live = |i: &&Instance| !i.killing && i.state != InstanceState::Unreachable;
        let current = app
            .instances
            .values()
            .filter(|i| i.version == app.version)
            .filter(live)
            .count() as u32;
        let missing = n.saturating_sub(current);
        if app.deployment.is_none() {
            return missing;
        }
        let (_, max_total) = app.spec.upgrade.bounds(n);
        let total = app
            .instances
            .values()
            .filter(|i| i.state != InstanceState::Unreachable)
            .count() as u32;
        missing.min(max_total.saturating_sub(total))
    }

    fn wants_offers(&self, now: Duration) -> bool {
        self.state.apps.values().any(|a| Self::wanted(a, now) > 0)
    }

    /// Compares an app's target with its instances and kills what must go; finishes, rolls
    /// back or removes.
    fn converge(&mut self, now: Duration, id: &str) {
        let Some(app) = self.state.apps.get_mut(id) else {
            return;
        };
        let mut kills: Vec<String> = Vec::new();
        if app.destroying {
            kills.extend(
                app.instances
                    .iter()
                    .filter(|(_, i)| !i.killing)
                    .map(|(t, _)| t.clone()),
            );
        } else {
            // A deploy that never becomes healthy goes back to the last good definition.
            if let Some(d) = &app.deployment
                && let Some(back) = &d.rollback_to
                && (d.failures >= app.spec.upgrade.max_failures
                    || now.saturating_sub(d.started_at) >= app.spec.upgrade.rollback_after)
            {
                warn!(app_id = %id, from = app.version, to = back.version, failures = d.failures,
                    "the deploy did not become healthy; rolling back");
                let back = back.clone();
                app.spec = back.spec;
                app.version = back.version;
                app.failures = 0;
                app.not_before = now;
                app.deployment = Some(Deployment {
                    kind: DeployKind::Rollback,
                    started_at: now,
                    failures: 0,
                    rollback_to: None,
                });
            }
            let n = app.spec.instances as usize;
            let version = app.version;
            let healthy_total = app.instances.values().filter(|i| i.is_healthy()).count();
            let (min_healthy, _) = app.spec.upgrade.bounds(app.spec.instances);
            let mut old: Vec<(&String, &Instance)> = app
                .instances
                .iter()
                .filter(|(_, i)| i.version != version && !i.killing)
                .collect();
            // Unhealthy ones first (they cost no health), then the oldest.
            old.sort_by_key(|(t, i)| (i.is_healthy(), i.launched_at, (*t).clone()));
            let mut healthy_left = healthy_total;
            for (task_id, instance) in old {
                if !instance.is_healthy() {
                    kills.push(task_id.clone());
                } else if app.deployment.is_none() || healthy_left > min_healthy as usize {
                    kills.push(task_id.clone());
                    healthy_left -= 1;
                }
            }
            // More current instances than wanted (a scale down): the newest, unhealthy first.
            let mut current: Vec<(&String, &Instance)> = app
                .instances
                .iter()
                .filter(|(_, i)| {
                    i.version == version && !i.killing && i.state != InstanceState::Unreachable
                })
                .collect();
            if current.len() > n {
                current.sort_by_key(|(t, i)| {
                    (
                        i.is_healthy(),
                        std::cmp::Reverse(i.launched_at),
                        (*t).clone(),
                    )
                });
                let extra = current.len() - n;
                kills.extend(current.iter().take(extra).map(|(t, _)| (*t).clone()));
            }
        }
        for task_id in kills {
            if let Some(instance) = app.instances.get_mut(&task_id) {
                info!(app_id = %id, %task_id, "killing instance");
                instance.killing = true;
                self.commands.push(Command::Kill {
                    task_id,
                    agent_id: instance.agent_id.clone(),
                });
            }
        }
        if app.destroying {
            if app.instances.is_empty() {
                info!(app_id = %id, "app destroyed");
                self.state.apps.remove(id);
            }
            return;
        }
        // Done: every wanted instance of the target is healthy and nothing else runs.
        let version = app.version;
        let healthy_current = app
            .instances
            .values()
            .filter(|i| i.version == version && i.is_healthy())
            .count();
        if app.deployment.is_some()
            && app.instances.values().all(|i| i.version == version)
            && healthy_current == app.spec.instances as usize
        {
            info!(app_id = %id, version, "deployment complete");
            app.deployment = None;
        }
        if app.deployment.is_none() && healthy_current == app.spec.instances as usize {
            app.last_good = Some(Target {
                spec: app.spec.clone(),
                version,
            });
        }
    }

    /// Offers: launches the instances apps want where they fit and their constraints allow;
    /// declines the rest.
    pub fn offers(&mut self, now: Duration, offers: Vec<Offer>) {
        let mut declined = Vec::new();
        for offer in offers {
            self.state.agents.insert(
                offer.agent_id.clone(),
                AgentFacts {
                    hostname: offer.hostname.clone(),
                    attributes: offer
                        .attributes
                        .iter()
                        .map(|a| (a.name.clone(), a.value.clone()))
                        .collect(),
                },
            );
            let mut budget = ResourceBudget::of_offer(&offer);
            let mut ports: Vec<u64> = strata_framework::offer_ports(&offer)
                .into_iter()
                .flat_map(|(b, e)| b..=e.min(b + 100_000))
                .collect();
            ports.reverse();
            let mut tasks = Vec::new();
            let ids: Vec<String> = self.state.apps.keys().cloned().collect();
            for id in ids {
                let mut wanted = Self::wanted(&self.state.apps[&id], now);
                while wanted > 0 {
                    let app = &self.state.apps[&id];
                    if !self.fits_constraints(app, &offer) || ports.len() < app.spec.ports as usize
                    {
                        break;
                    }
                    let taken: Vec<u64> = (0..app.spec.ports).filter_map(|_| ports.pop()).collect();
                    let seq = self.state.next_seq;
                    let info = task_info(app, seq, &taken);
                    if !budget.take(&info.resources) {
                        ports.extend(taken.into_iter().rev());
                        break;
                    }
                    self.state.next_seq += 1;
                    let app = self.state.apps.get_mut(&id).expect("app exists");
                    info!(app_id = %id, task_id = %info.task_id, agent_id = %offer.agent_id, "launching instance");
                    app.instances.insert(
                        info.task_id.clone(),
                        Instance {
                            agent_id: offer.agent_id.clone(),
                            version: app.version,
                            state: InstanceState::Staging,
                            healthy: None,
                            checked: app.spec.health_check.is_some(),
                            killing: false,
                            launched_at: now,
                        },
                    );
                    tasks.push(info);
                    wanted -= 1;
                }
            }
            if tasks.is_empty() {
                declined.push(offer.id.clone());
            } else {
                self.commands.push(Command::Launch { offer, tasks });
            }
        }
        if !declined.is_empty() {
            let busy = self.wants_offers(now);
            self.idle_declined |= !busy;
            self.commands.push(Command::Decline {
                offer_ids: declined,
                refuse_seconds: if busy {
                    BUSY_REFUSE_SECONDS
                } else {
                    IDLE_REFUSE_SECONDS
                },
            });
        }
    }

    fn fits_constraints(&self, app: &App, offer: &Offer) -> bool {
        let facts = |agent_id: &str| self.state.agents.get(agent_id);
        let field_of = |f: &AgentFacts, field: &str| -> Option<String> {
            if field == "hostname" {
                Some(f.hostname.clone())
            } else {
                f.attributes.get(field).cloned()
            }
        };
        let Some(here) = facts(&offer.agent_id) else {
            return false;
        };
        let others: Vec<&AgentFacts> = app
            .instances
            .values()
            .filter(|i| !i.killing && i.state != InstanceState::Unreachable)
            .filter_map(|i| facts(&i.agent_id))
            .collect();
        app.spec.constraints.iter().all(|c| {
            let value = field_of(here, &c.field);
            let same = || {
                others
                    .iter()
                    .filter(|o| field_of(o, &c.field) == value)
                    .count()
            };
            match c.operator {
                Operator::Equals => value.as_deref() == Some(c.value.as_str()),
                Operator::Like => value.is_some_and(|v| crate::spec::like(&c.value, &v)),
                Operator::Unique => value.is_some() && same() == 0,
                Operator::MaxPer => {
                    value.is_some() && same() < c.value.parse::<usize>().unwrap_or(0)
                }
            }
        })
    }

    /// A task update: the instance's state and health; a failure relaunches with backoff, a
    /// lost instance is replaced.
    pub fn update(&mut self, now: Duration, status: &TaskStatus) {
        let Some((app_id, version)) = parse_task_id(&status.task_id) else {
            warn!(task_id = %status.task_id, "an update for a task that is not an app instance");
            return;
        };
        let app_id = app_id.to_owned();
        let state = status.state();
        let Some(app) = self.state.apps.get_mut(&app_id) else {
            if !state.is_terminal() && state != TaskState::Unreachable {
                // An instance of an app destroyed while the framework was away.
                self.commands.push(Command::Kill {
                    task_id: status.task_id.clone(),
                    agent_id: status.agent_id.clone(),
                });
            }
            return;
        };
        let lost = matches!(
            state,
            TaskState::Lost | TaskState::Unreachable | TaskState::Gone | TaskState::Unknown
        ) || (state == TaskState::Dropped);
        if !app.instances.contains_key(&status.task_id) {
            if state.is_terminal() || lost {
                return;
            }
            // Reported by reconciliation but not in the state: adopt it (converge decides).
            info!(app_id = %app_id, task_id = %status.task_id, "adopting a running instance");
            let checked = version == app.version && app.spec.health_check.is_some()
                || status.healthy.is_some();
            app.instances.insert(
                status.task_id.clone(),
                Instance {
                    agent_id: status.agent_id.clone(),
                    version,
                    state: InstanceState::Staging,
                    healthy: None,
                    checked,
                    killing: false,
                    launched_at: now,
                },
            );
        }
        let instance = app
            .instances
            .get_mut(&status.task_id)
            .expect("inserted above");
        if !status.agent_id.is_empty() {
            instance.agent_id.clone_from(&status.agent_id);
        }
        if state.is_terminal() || lost {
            let instance = app
                .instances
                .remove(&status.task_id)
                .expect("present above");
            if instance.killing {
                info!(app_id = %app_id, task_id = %status.task_id, state = state.label(), "instance gone");
            } else if lost {
                warn!(app_id = %app_id, task_id = %status.task_id, state = state.label(), "instance lost; replacing it");
            } else {
                app.failures += 1;
                app.not_before = now + app.spec.backoff.delay(app.failures);
                if instance.version == app.version
                    && let Some(d) = &mut app.deployment
                {
                    d.failures += 1;
                }
                warn!(app_id = %app_id, task_id = %status.task_id, state = state.label(),
                    message = %status.message, failures = app.failures,
                    backoff_ms = app.spec.backoff.delay(app.failures).as_millis() as u64,
                    "instance failed; relaunching after the backoff");
            }
        } else {
            instance.state = match state {
                TaskState::Running | TaskState::Killing => InstanceState::Running,
                _ => InstanceState::Staging,
            };
            if status.healthy.is_some() {
                instance.healthy = status.healthy;
                instance.checked = true;
            }
            if instance.is_healthy() && instance.version == app.version {
                app.failures = 0;
            }
        }
        self.converge(now, &app_id);
        if self.idle_declined && self.wants_offers(now) {
            self.idle_declined = false;
            self.commands.push(Command::Revive);
        }
    }

    /// The plan an app is following.
    pub fn plan(&self, now: Duration, id: &str) -> Result<Plan, CoreError> {
        let app = self.state.apps.get(id).ok_or_else(|| CoreError::NoApp {
            app_id: strata_proto::ids::shorten(id, 64),
        })?;
        let n = app.spec.instances as usize;
        let version = app.version;
        let current: Vec<&Instance> = app
            .instances
            .values()
            .filter(|i| i.version == version && !i.killing)
            .collect();
        let healthy = current.iter().filter(|i| i.is_healthy()).count();
        let delayed = now < app.not_before && current.len() < n;
        let mut launch_steps: Vec<Step> = (0..n)
            .map(|k| Step {
                name: format!("instance {} of {n} at version {version}", k + 1),
                status: status_of(healthy, current.len(), k),
            })
            .collect();
        if delayed && let Some(step) = launch_steps.get_mut(current.len()) {
            step.status = Status::Delayed;
        }
        let retire: Vec<Step> = app
            .instances
            .iter()
            .filter(|(_, i)| i.version != version || (i.killing && app.destroying))
            .chain(
                app.instances
                    .iter()
                    .filter(|(_, i)| i.version == version && i.killing && !app.destroying),
            )
            .map(|(t, i)| Step {
                name: format!("retire {t} (version {})", i.version),
                status: if i.killing {
                    Status::InProgress
                } else {
                    Status::Pending
                },
            })
            .collect();
        let phase_status = |steps: &[Step]| {
            if steps.iter().all(|s| s.status == Status::Complete) {
                Status::Complete
            } else if steps.iter().all(|s| s.status == Status::Pending) {
                Status::Pending
            } else if steps.iter().any(|s| s.status == Status::Delayed) {
                Status::Delayed
            } else {
                Status::InProgress
            }
        };
        let strategy = if app.destroying {
            "destroy"
        } else {
            match app.deployment.as_ref().map(|d| d.kind) {
                Some(DeployKind::Deploy) => "deploy",
                Some(DeployKind::Restart) => "restart",
                Some(DeployKind::Rollback) => "rollback",
                None if healthy == n && retire.is_empty() => "steady",
                None => "recover",
            }
        };
        let mut phases = Vec::new();
        if !app.destroying {
            phases.push(Phase {
                name: format!("run {n} healthy instances of version {version}"),
                status: phase_status(&launch_steps),
                steps: launch_steps,
            });
        }
        if !retire.is_empty() {
            phases.push(Phase {
                name: "retire other instances".to_owned(),
                status: phase_status(&retire),
                steps: retire,
            });
        }
        let status = if phases.iter().all(|p| p.status == Status::Complete) {
            Status::Complete
        } else if phases.iter().any(|p| p.status == Status::Delayed) {
            Status::Delayed
        } else {
            Status::InProgress
        };
        Ok(Plan {
            app: id.to_owned(),
            version,
            strategy: strategy.to_owned(),
            status,
            phases,
        })
    }

    /// What the dashboard shows of each app (by id; at most [`MAX_APPS`], within the
    /// allocator's bound on a report): its instances wanted and running, its version and a
    /// word for where its deployment stands.
    pub fn workloads(&self) -> Vec<strata_framework::proto::Workload> {
        self.state
            .apps
            .iter()
            .take(MAX_APPS)
            .map(|(id, app)| {
                let running = app
                    .instances
                    .values()
                    .filter(|i| i.state == InstanceState::Running)
                    .count();
                let state = if app.destroying {
                    "destroying"
                } else if let Some(d) = &app.deployment {
                    match d.kind {
                        DeployKind::Deploy => "deploying",
                        DeployKind::Restart => "restarting",
                        DeployKind::Rollback => "rolling-back",
                    }
                } else if app.spec.instances == 0 {
                    "suspended"
                } else if running < app.spec.instances as usize {
                    "scaling"
                } else {
                    "running"
                };
                let message = match &app.deployment {
                    Some(d) if d.failures > 0 => {
                        format!(
                            "{} failed instance(s) of version {} so far",
                            d.failures, app.version
                        )
                    }
                    _ if app.failures > 0 => format!("{} consecutive failure(s)", app.failures),
                    _ => String::new(),
                };
                strata_framework::proto::Workload {
                    kind: "app".to_owned(),
                    id: id.clone(),
                    state: state.to_owned(),
                    instances_wanted: app.spec.instances,
                    instances_running: u32::try_from(running).unwrap_or(u32::MAX),
                    version: app.version.to_string(),
                    message,
                    ..strata_framework::proto::Workload::default()
                }
            })
            .collect()
    }

    /// Healthy instances of an app, of any version (for tests and `strata app list`).
    #[must_use]
    pub fn healthy(&self, id: &str) -> usize {
        self.state.apps.get(id).map_or(0, |a| {
            a.instances.values().filter(|i| i.is_healthy()).count()
        })
    }

    /// Every app's instance counts, for listings: (running, healthy) by app id.
    #[must_use]
    pub fn counts(&self) -> HashMap<String, (usize, usize)> {
        self.state
            .apps
            .iter()
            .map(|(id, a)| {
                let running = a
                    .instances
                    .values()
                    .filter(|i| i.state == InstanceState::Running)
                    .count();
                (id.clone(), (running, self.healthy(id)))
            })
            .collect()
    }
}

/// The task of instance `seq` of `app`'s target, on host ports `ports`.
#[must_use]
pub fn task_info(app: &App, seq: u64, ports: &[u64]) -> TaskInfo {
    let spec = &app.spec;
    let task_id = format!("{}.{}.{seq}", spec.id, app.version);
    let mut env: HashMap<String, String> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // In bridge mode an instance binds its container ports, each forwarded from a host port.
    let bridged = spec.network == Network::Bridge;
    let inside: Vec<u64> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| match spec.container_ports.get(i) {
            Some(&c) if bridged => u64::from(c),
            _ => p,
        })
        .collect();
    for (i, (port, host)) in inside.iter().zip(ports).enumerate() {
        env.insert(format!("PORT{i}"), port.to_string());
        if bridged {
            env.insert(format!("HOST_PORT{i}"), host.to_string());
        }
    }
    if let Some(first) = inside.first() {
        env.insert("PORT".to_owned(), first.to_string());
    }
    let port_mappings = if bridged {
        ports
            .iter()
            .zip(&inside)
            .filter_map(|(&h, &c)| {
                Some(PortMapping {
                    host_port: u32::try_from(h).ok()?,
                    container_port: u32::try_from(c).ok()?,
                    protocol: PortProtocol::Tcp as i32,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    env.insert("STRATA_APP_ID".to_owned(), spec.id.clone());
    env.insert("STRATA_APP_VERSION".to_owned(), app.version.to_string());
    let mut resources = vec![
        Resource::scalar(names::CPUS, spec.cpus),
        Resource::scalar(names::MEM, spec.mem),
    ];
    if spec.disk > 0.0 {
        resources.push(Resource::scalar(names::DISK, spec.disk));
    }
    if !ports.is_empty() {
        resources.push(Resource::ranges(
            names::PORTS,
            ports.iter().map(|&p| (p, p)),
        ));
    }
    let health_check = spec.health_check.as_ref().map(|h| {
        let port = ports
            .get(h.port_index as usize)
            .and_then(|p| u32::try_from(*p).ok())
            .unwrap_or(0);
        HealthCheck {
            check: Some(match h.protocol {
                Protocol::Http => health_check::Check::Http(HttpCheck {
                    port,
                    path: h.path.clone(),
                    statuses: Vec::new(),
                }),
                Protocol::Tcp => health_check::Check::Tcp(TcpCheck { port }),
                Protocol::Command => health_check::Check::Command(CommandInfo {
                    shell: true,
                    value: h.command.clone(),
                    ..CommandInfo::default()
                }),
            }),
            grace_period_seconds: Some(h.grace_period.as_secs_f64()),
            interval_seconds: Some(h.interval.as_secs_f64()),
            timeout_seconds: Some(h.timeout.as_secs_f64()),
            max_consecutive_failures: Some(h.max_consecutive_failures),
            delay_seconds: Some(h.delay.as_secs_f64()),
        }
    });
    TaskInfo {
        task_id: task_id.clone(),
        name: task_id,
        resources,
        command: Some(CommandInfo {
            shell: true,
            value: spec.command.clone(),
            environment: env,
            ..CommandInfo::default()
        }),
        labels: [
            (APP_LABEL.to_owned(), spec.id.clone()),
            (VERSION_LABEL.to_owned(), app.version.to_string()),
        ]
        .into_iter()
        .collect(),
        health_check,
        network_mode: match spec.network {
            Network::Host => NetworkMode::Host,
            Network::Bridge => NetworkMode::Bridge,
            Network::None => NetworkMode::None,
        } as i32,
        port_mappings,
        ..TaskInfo::default()
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
