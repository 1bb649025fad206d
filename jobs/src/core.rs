//! The scheduler's decisions, pure and synchronous: the time (`now`), offers, task updates and
//! the operator's requests go in; launches, declines, kills, revives and reconciliations come out
//! of [`Core::take_commands`]. It never reads a clock, sleeps or does I/O, so cron timing,
//! deadlines, concurrency policies and retries are tested with an injected clock (the edge,
//! `framework.rs`, passes `Timestamp::now()` and a tick every second).
//!
//! A *run* is one execution of a job, triggered by its schedule or by `strata job run`; each
//! try of it is an *attempt*, one task with the id `JOB.RUN.ATTEMPT` (job ids never hold `.`).
//! Every ended attempt, and every run skipped or replaced before it launched, leaves a
//! [`RunRecord`] in the job's history (the latest [`HISTORY_LIMIT`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use strata_framework::proto::{Offer, TaskInfo, TaskState, TaskStatus};
use strata_framework::{ResourceBudget, task};
use tracing::{info, warn};

use crate::schedule::Schedule;
use crate::spec::{ConcurrencyPolicy, JobCommand, JobSpec, SpecError};

/// How many records each job's history keeps (the oldest go first).
pub const HISTORY_LIMIT: usize = 100;
/// The most jobs the framework holds.
pub const MAX_JOBS: usize = 10_000;
/// The most active runs one job may have (waiting, or launched).
pub const MAX_ACTIVE_RUNS: usize = 100;
/// The most jobs reported to the dashboard (the allocator's bound on a report), by id.
pub const MAX_REPORTED_JOBS: usize = 1000;
/// How long unused offers are refused while nothing waits to launch (a new run revives).
pub const IDLE_REFUSE_SECONDS: f64 = 30.0;
/// How long unused offers are refused while a run waits for its backoff or a larger offer.
pub const BUSY_REFUSE_SECONDS: f64 = 1.0;
/// The most scheduled times one tick walks through (after a long stop, the rest are skipped).
const MAX_FIRES_PER_TICK: usize = 10_000;
/// The label that carries the job id on each task.
pub const JOB_LABEL: &str = "strata-jobs/job";

pub use strata_framework_kit::command::Command;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Trigger {
    /// The job's schedule, for its time `at`.
    Scheduled {
        /// The scheduled time.
        at: Timestamp,
    },
    /// `strata job run`.
    Manual,
}

/// Why the framework itself killed an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KillReason {
    /// It ran past the job's timeout (a failure: retried).
    Timeout,
    /// A newer run replaced it (concurrency `replace`).
    Replaced,
}

/// Where an active run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "phase")]
pub enum Phase {
    /// Waiting for its time (a retry's backoff) and an offer.
    Waiting {
        /// Not launched before this.
        not_before: Timestamp,
    },
    /// Launched as a task.
    Launched {
        /// The task.
        task_id: String,
        /// Its agent.
        agent_id: String,
        /// When it was launched.
        launched_at: Timestamp,
        /// When it was first seen running.
        started_at: Option<Timestamp>,
        /// Set once the framework killed it.
        killing: Option<KillReason>,
    },
}

/// A run that has not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The run's number (unique across the framework's jobs and restarts).
    pub run_id: u64,
    /// What started it.
    pub trigger: Trigger,
    /// The attempt (1 = the first try).
    pub attempt: u32,
    /// Where it is.
    pub phase: Phase,
}

/// How an attempt (or a run that never launched) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0.
    Finished,
    /// Non-zero exit, or a signal.
    Failed,
    /// Killed after running past the job's timeout.
    TimedOut,
    /// Killed by someone else than the framework.
    Killed,
    /// Killed, or dropped before launching, for a newer run (concurrency `replace`).
    Replaced,
    /// The task or its agent was lost.
    Lost,
    /// The launch was refused (TASK_ERROR, TASK_DROPPED).
    Error,
    /// Never started: a missed starting deadline, a `forbid` policy, missed times.
    Skipped,
}

impl Outcome {
    /// The lower-case name shown by the CLI.
    pub fn label(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Killed => "killed",
            Self::Replaced => "replaced",
            Self::Lost => "lost",
            Self::Error => "error",
            Self::Skipped => "skipped",
        }
    }
}

/// One line of a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub run_id: u64,
    /// The attempt (0 for a run that was skipped before any attempt).
    pub attempt: u32,
    /// What started the run.
    pub trigger: Trigger,
    /// The attempt's task, if it launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// When it started running (or launched, if never seen running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended (or was skipped).
    pub ended_at: Timestamp,
    /// How it ended.
    pub outcome: Outcome,
    /// The command's exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One job: its definition, when it next fires, its active runs and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The definition.
    pub spec: JobSpec,
    /// When its schedule next fires.
    pub next_fire: Option<Timestamp>,
    /// Runs not ended.
    pub active: Vec<Run>,
    /// Ended attempts and skipped runs, oldest first.
    pub history: VecDeque<RunRecord>,
}

/// Everything that survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The jobs by id.
    pub jobs: BTreeMap<String, Job>,
    /// The next run's number.
    pub next_run: u64,
}

/// A request the scheduler refused.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No such job.
    #[error("no job {job_id}: `strata job list` shows the jobs")]
    NoJob {
        /// The job.
        job_id: String,
    },
    /// The definition is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `forbid` and a run is active.
    #[error(
        "job {job_id} forbids concurrent runs and run {run_id} is still active; wait for it to end"
    )]
    Forbidden {
        /// The job.
        job_id: String,
        /// The active run.
        run_id: u64,
    },
    /// Too many jobs or runs.
    #[error("{what}: at most {limit}")]
    Limit {
        /// What is full.
        what: String,
        /// The bound.
        limit: usize,
    },
    /// The job's role is not one the framework takes offers in.
    #[error(
        "job {job_id} asks for role {role:?} but this framework takes offers in role {framework_role:?}; start strata-jobs with --role {role}, or leave role out"
    )]
    Role {
        /// The job.
        job_id: String,
        /// Its role.
        role: String,
        /// The framework's.
        framework_role: String,
    },
}

/// The scheduler.
#[derive(Debug)]
pub struct Core {
    state: State,
    schedules: HashMap<String, Schedule>,
    commands: Vec<Command>,
    /// Offers were declined for long; a new waiting run revives.
    idle_declined: bool,
    role: String,
}

impl Core {
    /// A scheduler over `state` (empty, or read back after a restart) taking offers in `role`.
    pub fn new(state: State, role: impl Into<String>) -> Self {
        let mut schedules = HashMap::new();
        for (id, job) in &state.jobs {
            match job.spec.validate() {
                Ok(Some(s)) => {
                    schedules.insert(id.clone(), s);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(job_id = %id, error = %e, "the job's schedule no longer parses; it runs only when asked")
                }
            }
        }
        Self {
            state,
            schedules,
            commands: Vec::new(),
            idle_declined: false,
            role: role.into(),
        }
    }

    /// What survives a restart.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The commands made since the last call.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// What the dashboard shows of each job (the first [`MAX_REPORTED_JOBS`] by id): its
    /// schedule, its last run and result, its next run, its runs in flight.
    pub fn workloads(&self) -> Vec<strata_framework::proto::Workload> {
        let short = |s: String| strata_proto::ids::shorten(&s, 200);
        self.state
            .jobs
            .iter()
            .take(MAX_REPORTED_JOBS)
            .map(|(id, job)| {
                let state = if !job.active.is_empty() {
                    "running"
                } else if job.next_fire.is_some() {
                    "scheduled"
                } else {
                    "idle"
                };
                let last_run = job.history.back().map_or_else(String::new, |r| {
                    let exit = r
                        .exit_code
                        .map_or_else(String::new, |c| format!(" (exit {c})"));
                    format!("{} {}{exit}", r.ended_at, r.outcome.label())
                });
                strata_framework::proto::Workload {
                    kind: "job".to_owned(),
                    id: id.clone(),
                    state: state.to_owned(),
                    instances_running: u32::try_from(job.active.len()).unwrap_or(u32::MAX),
                    schedule: job.spec.schedule.as_ref().map_or_else(String::new, |s| {
                        short(format!("{} ({})", s.cron, s.timezone))
                    }),
                    last_run: short(last_run),
                    next_run: job.next_fire.map_or_else(String::new, |t| t.to_string()),
                    message: short(job.spec.description.clone()),
                    ..strata_framework::proto::Workload::default()
                }
            })
            .collect()
    }

    /// The job `id`.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.state.jobs.get(id)
    }

    /// Adds a job, or replaces the definition of the job with its id (its active runs and its
    /// history stay; its next time is computed again from `now`).
    pub fn put_job(&mut self, now: Timestamp, spec: JobSpec) -> Result<(), CoreError> {
        let schedule = spec.validate()?;
        if let Some(role) = &spec.role
            && *role != self.role
        {
            return Err(CoreError::Role {
                job_id: spec.id.clone(),
                role: role.clone(),
                framework_role: self.role.clone(),
            });
        }
        if !self.state.jobs.contains_key(&spec.id) && self.state.jobs.len() >= MAX_JOBS {
            return Err(CoreError::Limit {
                what: "jobs".into(),
                limit: MAX_JOBS,
            });
        }
        let next_fire = schedule.as_ref().and_then(|s| s.next_after(now));
        let id = spec.id.clone();
        match schedule {
            Some(s) => self.schedules.insert(id.clone(), s),
            None => self.schedules.remove(&id),
        };
        let job = self.state.jobs.entry(id.clone()).or_insert_with(|| Job {
            spec: spec.clone(),
            next_fire: None,
            active: Vec::new(),
            history: VecDeque::new(),
        });
        job.spec = spec;
        job.next_fire = next_fire;
        info!(job_id = %id, next_fire = ?next_fire, "job defined");
        Ok(())
    }

    /// Removes a job and its history, killing its launched attempts.
    pub fn remove_job(&mut self, id: &str) -> Result<(), CoreError> {
        let job = self.state.jobs.remove(id).ok_or_else(|| CoreError::NoJob {
            job_id: id.to_owned(),
        })?;
        self.schedules.remove(id);
        for run in job.active {
            if let Phase::Launched {
                task_id, agent_id, ..
            } = run.phase
            {
                self.commands.push(Command::Kill { task_id, agent_id });
            }
        }
        info!(job_id = %id, "job removed");
        Ok(())
    }

    /// Starts a run of job `id` now (`strata job run`); returns its number.
    pub fn run_now(&mut self, now: Timestamp, id: &str) -> Result<u64, CoreError> {
        if !self.state.jobs.contains_key(id) {
            return Err(CoreError::NoJob {
                job_id: id.to_owned(),
            });
        }
        self.trigger(now, id, Trigger::Manual)?
            .ok_or_else(|| CoreError::NoJob {
                job_id: id.to_owned(),
            })
    }

    /// The time passes: schedules fire, waiting runs past their starting deadline are skipped,
    /// attempts past their timeout are killed.
    pub fn tick(&mut self, now: Timestamp) {
        let ids: Vec<String> = self.state.jobs.keys().cloned().collect();
        for id in ids {
            self.fire_schedule(now, &id);
            self.enforce_deadlines(now, &id);
            self.enforce_timeouts(now, &id);
        }
    }

    /// After each SUBSCRIBED: reconcile the launched attempts (a restarted framework adopts the
    /// tasks that still run), and revive when runs wait.
    pub fn subscribed(&mut self) {
        let tasks: Vec<(String, String)> = self
            .state
            .jobs
            .values()
            .flat_map(|j| &j.active)
            .filter_map(|r| match &r.phase {
                Phase::Launched {
                    task_id, agent_id, ..
                } => Some((task_id.clone(), agent_id.clone())),
                Phase::Waiting { .. } => None,
            })
            .collect();
        if !tasks.is_empty() {
            self.commands.push(Command::Reconcile { tasks });
        }
        self.idle_declined = false;
        if self.waiting() > 0 {
            self.commands.push(Command::Revive);
        }
    }

    /// Offers: launches the waiting runs that are due and fit, oldest first; declines the rest.
    pub fn offers(&mut self, now: Timestamp, offers: Vec<Offer>) {
        let mut declined = Vec::new();
        for offer in offers {
            let mut budget = ResourceBudget::of_offer(&offer);
            let mut tasks = Vec::new();
            let mut due: Vec<(u64, String)> = self
                .state
                .jobs
                .iter()
                .flat_map(|(id, j)| j.active.iter().map(move |r| (id, r)))
                .filter(
                    |(_, r)| matches!(r.phase, Phase::Waiting { not_before } if not_before <= now),
                )
                .map(|(id, r)| (r.run_id, id.clone()))
                .collect();
            due.sort();
            for (run_id, job_id) in due {
                let Some(job) = self.state.jobs.get_mut(&job_id) else {
                    continue;
                };
                if job.spec.role.as_ref().is_some_and(|r| {
                    !offer.allocation_role.is_empty() && *r != offer.allocation_role
                }) {
                    continue;
                }
                let Some(run) = job.active.iter_mut().find(|r| r.run_id == run_id) else {
                    continue;
                };
                let info = task_info(&job.spec, run.run_id, run.attempt);
                if !budget.take(&info.resources) {
                    continue;
                }
                info!(job_id = %job_id, run_id, attempt = run.attempt, task_id = %info.task_id, agent_id = %offer.agent_id, "launching");
                run.phase = Phase::Launched {
                    task_id: info.task_id.clone(),
                    agent_id: offer.agent_id.clone(),
                    launched_at: now,
                    started_at: None,
                    killing: None,
                };
                tasks.push(info);
            }
            if tasks.is_empty() {
                declined.push(offer.id.clone());
            } else {
                self.commands.push(Command::Launch { offer, tasks });
            }
        }
        if !declined.is_empty() {
            let idle = self.waiting() == 0;
            self.idle_declined |= idle;
            self.commands.push(Command::Decline {
                offer_ids: declined,
                refuse_seconds: if idle {
                    IDLE_REFUSE_SECONDS
                } else {
                    BUSY_REFUSE_SECONDS
                },
            });
        }
    }

    /// A task changed state.
    pub fn update(&mut self, now: Timestamp, status: &TaskStatus) {
        let state = status.state();
        let job_id = status.task_id.split('.').next().unwrap_or_default();
        let found = self.state.jobs.get_mut(job_id).and_then(|job| {
            job.active
                .iter()
                .position(|r| matches!(&r.phase, Phase::Launched { task_id, .. } if *task_id == status.task_id))
                .map(|i| (job, i))
        });
        let Some((job, index)) = found else {
            if !state.is_terminal() {
                // Not ours (any more): a removed job's, or from before a lost state file.
                warn!(task_id = %status.task_id, state = state.label(), "killing a task no active run knows");
                self.commands.push(Command::Kill {
                    task_id: status.task_id.clone(),
                    agent_id: status.agent_id.clone(),
                });
            }
            return;
        };
        if !state.is_terminal() {
            if let Phase::Launched {
                started_at,
                agent_id,
                ..
            } = &mut job.active[index].phase
            {
                if !status.agent_id.is_empty() {
                    agent_id.clone_from(&status.agent_id);
                }
                if state == TaskState::Running && started_at.is_none() {
                    *started_at = Some(now);
                }
            }
            return;
        }
        let run = job.active.remove(index);
        let Phase::Launched {
            task_id,
            launched_at,
            started_at,
            killing,
            ..
        } = run.phase
        else {
            return;
        };
        let outcome = match (state, killing) {
            (TaskState::Finished, _) => Outcome::Finished,
            (_, Some(KillReason::Timeout)) => Outcome::TimedOut,
            (_, Some(KillReason::Replaced)) => Outcome::Replaced,
            (TaskState::Failed, None) => Outcome::Failed,
            (TaskState::Killed | TaskState::Killing, None) => Outcome::Killed,
            (TaskState::Error | TaskState::Dropped, None) => Outcome::Error,
            (_, None) => Outcome::Lost,
        };
        let mut message = status.message.clone();
        if outcome == Outcome::TimedOut {
            message = format!(
                "killed after running longer than its timeout of {}s",
                job.spec.timeout.unwrap_or_default().as_secs()
            );
        }
        let retry = job.spec.retry;
        let retryable = !matches!(outcome, Outcome::Finished | Outcome::Replaced)
            && run.attempt <= retry.max_retries;
        if retryable {
            let wait = retry.backoff(run.attempt);
            message = join(&message, &format!("retrying in {}s", wait.as_secs_f64()));
        }
        info!(job_id, run_id = run.run_id, attempt = run.attempt, %task_id, outcome = outcome.label(), exit_code = ?status.exit_code, "attempt ended");
        push_record(
            job,
            RunRecord {
                run_id: run.run_id,
                attempt: run.attempt,
                trigger: run.trigger,
                task_id: Some(task_id),
                started_at: Some(started_at.unwrap_or(launched_at)),
                ended_at: now,
                outcome,
                exit_code: status.exit_code,
                message,
            },
        );
        if retryable {
            let not_before = add(now, retry.backoff(run.attempt));
            job.active.push(Run {
                run_id: run.run_id,
                trigger: run.trigger,
                attempt: run.attempt + 1,
                phase: Phase::Waiting { not_before },
            });
            self.revive_if_idle();
        }
    }

    /// How many runs wait for an offer.
    pub fn waiting(&self) -> usize {
        self.state
            .jobs
            .values()
            .flat_map(|j| &j.active)
            .filter(|r| matches!(r.phase, Phase::Waiting { .. }))
            .count()
    }

    fn revive_if_idle(&mut self) {
        if self.idle_declined {
            self.idle_declined = false;
            self.commands.push(Command::Revive);
        }
    }

    fn next_run(&mut self) -> u64 {
        self.state.next_run += 1;
        self.state.next_run
    }

    /// Starts a run of `id` as its concurrency policy says: `Ok(None)` when a scheduled run is
    /// skipped (and recorded), `Err(Forbidden)` for a manual one.
    fn trigger(
        &mut self,
        now: Timestamp,
        id: &str,
        trigger: Trigger,
    ) -> Result<Option<u64>, CoreError> {
        let run_id = self.next_run();
        let Some(job) = self.state.jobs.get_mut(id) else {
            return Ok(None);
        };
        let policy = job
            .spec
            .schedule
            .as_ref()
            .map(|s| s.concurrency)
            .unwrap_or_default();
        if let Some(active) = job.active.first() {
            match policy {
                ConcurrencyPolicy::Allow => {}
                ConcurrencyPolicy::Forbid => {
                    let active_run = active.run_id;
                    if trigger == Trigger::Manual {
                        return Err(CoreError::Forbidden {
                            job_id: id.to_owned(),
                            run_id: active_run,
                        });
                    }
                    info!(job_id = %id, run_id, active_run, "skipped: concurrency forbid");
                    push_record(
                        job,
                        skipped(
                            run_id,
                            trigger,
                            now,
                            format!("concurrency forbid: run {active_run} was still active"),
                        ),
                    );
                    return Ok(None);
                }
                ConcurrencyPolicy::Replace => {
                    let mut kept = Vec::new();
                    for mut run in std::mem::take(&mut job.active) {
                        match &mut run.phase {
                            Phase::Waiting { .. } => {
                                let mut record = skipped(
                                    run.run_id,
                                    run.trigger,
                                    now,
                                    format!("replaced by run {run_id} before it launched"),
                                );
                                record.outcome = Outcome::Replaced;
                                record.attempt = run.attempt;
                                push_record(job, record);
                            }
                            Phase::Launched {
                                task_id,
                                agent_id,
                                killing,
                                ..
                            } => {
                                if killing.is_none() {
                                    info!(job_id = %id, run_id = run.run_id, %task_id, "killing: replaced by a new run");
                                    self.commands.push(Command::Kill {
                                        task_id: task_id.clone(),
                                        agent_id: agent_id.clone(),
                                    });
                                }
                                *killing = Some(KillReason::Replaced);
                                kept.push(run);
                            }
                        }
                    }
                    job.active = kept;
                }
            }
        }
        if job.active.len() >= MAX_ACTIVE_RUNS {
            let message = format!("job {id} has {MAX_ACTIVE_RUNS} active runs");
            if trigger == Trigger::Manual {
                return Err(CoreError::Limit {
                    what: message,
                    limit: MAX_ACTIVE_RUNS,
                });
            }
            push_record(job, skipped(run_id, trigger, now, message));
            return Ok(None);
        }
        info!(job_id = %id, run_id, ?trigger, "run triggered");
        job.active.push(Run {
            run_id,
            trigger,
            attempt: 1,
            phase: Phase::Waiting { not_before: now },
        });
        self.revive_if_idle();
        Ok(Some(run_id))
    }

    fn fire_schedule(&mut self, now: Timestamp, id: &str) {
        let Some(schedule) = self.schedules.get(id) else {
            return;
        };
        let Some(job) = self.state.jobs.get_mut(id) else {
            return;
        };
        let mut due = Vec::new();
        let mut next = job.next_fire;
        while let Some(at) = next
            && at <= now
        {
            due.push(at);
            if due.len() >= MAX_FIRES_PER_TICK {
                next = schedule.next_after(now);
                break;
            }
            next = schedule.next_after(at);
        }
        job.next_fire = next;
        let Some(&latest) = due.last() else {
            return;
        };
        let deadline = job.spec.schedule.as_ref().and_then(|s| s.starting_deadline);
        let missed = &due[..due.len() - 1];
        if let (Some(first), Some(last)) = (missed.first(), missed.last()) {
            let run_id = {
                self.state.next_run += 1;
                self.state.next_run
            };
            let job = self.state.jobs.get_mut(id).expect("the job is there");
            warn!(job_id = %id, missed = missed.len(), "scheduled times missed");
            push_record(
                job,
                skipped(
                    run_id,
                    Trigger::Scheduled { at: *first },
                    now,
                    format!(
                        "{} scheduled time(s) from {first} to {last} were missed (the framework was not running); only the latest runs",
                        missed.len()
                    ),
                ),
            );
        }
        if let Some(deadline) = deadline
            && now > add(latest, deadline)
        {
            let run_id = self.next_run();
            let job = self.state.jobs.get_mut(id).expect("the job is there");
            warn!(job_id = %id, run_id, scheduled = %latest, "skipped: missed its starting deadline");
            push_record(
                job,
                skipped(
                    run_id,
                    Trigger::Scheduled { at: latest },
                    now,
                    format!(
                        "missed its starting deadline of {}s",
                        deadline.as_secs_f64()
                    ),
                ),
            );
            return;
        }
        // Errors are for manual runs only: a scheduled one is skipped and recorded.
        let _ = self.trigger(now, id, Trigger::Scheduled { at: latest });
    }

    fn enforce_deadlines(&mut self, now: Timestamp, id: &str) {
        let Some(job) = self.state.jobs.get_mut(id) else {
            return;
        };
        let Some(deadline) = job.spec.schedule.as_ref().and_then(|s| s.starting_deadline) else {
            return;
        };
        let (late, kept): (Vec<Run>, Vec<Run>) =
            std::mem::take(&mut job.active).into_iter().partition(|r| {
                matches!(
                    (r.trigger, &r.phase, r.attempt),
                    (Trigger::Scheduled { at }, Phase::Waiting { .. }, 1) if now > add(at, deadline)
                )
            });
        job.active = kept;
        for run in late {
            warn!(job_id = %id, run_id = run.run_id, "skipped: no offer before its starting deadline");
            push_record(
                job,
                skipped(
                    run.run_id,
                    run.trigger,
                    now,
                    format!(
                        "no offer fitted before its starting deadline of {}s",
                        deadline.as_secs_f64()
                    ),
                ),
            );
        }
    }

    fn enforce_timeouts(&mut self, now: Timestamp, id: &str) {
        let Some(job) = self.state.jobs.get_mut(id) else {
            return;
        };
        let Some(timeout) = job.spec.timeout else {
            return;
        };
        for run in &mut job.active {
            if let Phase::Launched {
                task_id,
                agent_id,
                launched_at,
                started_at,
                killing: killing @ None,
            } = &mut run.phase
                && now >= add(started_at.unwrap_or(*launched_at), timeout)
            {
                warn!(job_id = %id, run_id = run.run_id, %task_id, "killing: past its timeout");
                *killing = Some(KillReason::Timeout);
                self.commands.push(Command::Kill {
                    task_id: task_id.clone(),
                    agent_id: agent_id.clone(),
                });
            }
        }
    }
}

/// The task of attempt `attempt` of run `run_id` of `spec`.
pub fn task_info(spec: &JobSpec, run_id: u64, attempt: u32) -> TaskInfo {
    let mut t = task(format!("{}.{run_id}.{attempt}", spec.id))
        .name(spec.id.clone())
        .cpus(spec.cpus)
        .mem(spec.mem)
        .label(JOB_LABEL, spec.id.clone());
    t = match &spec.command {
        JobCommand::Shell(script) => t.shell(script.clone()),
        JobCommand::Argv(argv) => t.command(argv.iter().cloned()),
    };
    if spec.disk > 0.0 {
        t = t.disk(spec.disk);
    }
    if spec.gpus > 0.0 {
        t = t.gpus(spec.gpus);
    }
    for (k, v) in &spec.env {
        t = t.env(k.clone(), v.clone());
    }
    t.build()
}

fn skipped(run_id: u64, trigger: Trigger, now: Timestamp, message: String) -> RunRecord {
    RunRecord {
        run_id,
        attempt: 0,
        trigger,
        task_id: None,
        started_at: None,
        ended_at: now,
        outcome: Outcome::Skipped,
        exit_code: None,
        message,
    }
}

fn push_record(job: &mut Job, record: RunRecord) {
    job.history.push_back(record);
    while job.history.len() > HISTORY_LIMIT {
        job.history.pop_front();
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}; {b}")
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
