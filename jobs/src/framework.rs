//! The framework's edge: the scheduler core as [`strata_framework_kit::host`] runs it (state
//! file, control API, subscription), fed the clock (a tick every second), offers, updates and
//! the API's requests; the state is saved before what the core decided is carried out.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};
use strata_auth::credentials::Credentials;
use strata_framework::Event;
use strata_framework::proto::TaskStatus;
use strata_framework_kit::command::Command;
use strata_framework_kit::edge::Decide;
use strata_framework_kit::host::{self, HostConfig, HostError, Hosted};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{self, ApiRequest, Op};
use crate::core::{Core, CoreError, State};
use crate::spec::JobSpec;
use crate::store::PROGRAM;

/// How the framework runs.
pub type JobsConfig = HostConfig;

/// The framework cannot run.
pub type JobsError = HostError;

/// The framework with its API bound, not yet subscribed.
pub type Bound = host::Bound<Core>;

/// Opens the state and binds the API (refusing outside loopback without credentials).
pub async fn bind(config: JobsConfig) -> Result<Bound, JobsError> {
    host::bind(config).await
}

impl Hosted for Core {
    type State = State;
    const PROGRAM: &'static str = PROGRAM;
    const API: &'static str = "jobs API";
    const LISTEN_FLAG: &'static str = "--jobs-listen";
    const CREDENTIALS_FLAG: &'static str = "--jobs-credentials";

    fn new(state: State, role: &str) -> Self {
        Core::new(state, role.to_owned())
    }

    fn router(
        requests: mpsc::Sender<ApiRequest>,
        credentials: Option<Arc<Credentials>>,
    ) -> axum::Router {
        api::router(requests, credentials)
    }
}

fn on_event(core: &mut Core, event: Event) {
    let now = Timestamp::now();
    match event {
        Event::Subscribed { framework_id } => {
            info!(%framework_id, "subscribed; reconciling active runs");
            core.subscribed();
        }
        Event::Offers(offers) => core.offers(now, offers),
        Event::Update(status) => core.update(now, &status),
        Event::Error { message } => warn!(%message, "the allocator reports an error"),
        Event::Disconnected { reason } => warn!(%reason, "disconnected; reconnecting"),
        Event::Failure { agent_id } => warn!(%agent_id, "agent lost"),
        Event::Rescind { .. } | Event::Heartbeat => {}
    }
}

impl Decide for Core {
    type Op = Op;
    type Answer = Result<Value, CoreError>;

    fn event(&mut self, event: Event) {
        on_event(self, event);
    }

    fn request(&mut self, op: Op) -> Self::Answer {
        handle(self, Timestamp::now(), op)
    }

    fn tick(&mut self) {
        Core::tick(self, Timestamp::now());
    }

    fn update(&mut self, status: &TaskStatus) {
        Core::update(self, Timestamp::now(), status);
    }

    fn take_commands(&mut self) -> Vec<Command> {
        Core::take_commands(self)
    }

    fn saved(&self, framework_id: &str) -> Vec<u8> {
        host::saved_bytes(framework_id, self.state())
    }

    fn workloads(&self) -> Option<Vec<strata_framework::proto::Workload>> {
        Some(Core::workloads(self))
    }
}

/// Answers one API request.
pub fn handle(core: &mut Core, now: Timestamp, op: Op) -> Result<Value, CoreError> {
    let no_job = |id: &str| CoreError::NoJob {
        job_id: strata_proto::ids::shorten(id, 64),
    };
    match op {
        Op::Put(text) => {
            let spec = JobSpec::parse(&text)?;
            let id = spec.id.clone();
            core.put_job(now, spec)?;
            let next = core.job(&id).and_then(|j| j.next_fire);
            Ok(json!({ "id": id, "next_run": next }))
        }
        Op::Remove(id) => {
            core.remove_job(&id)?;
            Ok(json!({ "id": id, "removed": true }))
        }
        Op::Run(id) => {
            let run_id = core.run_now(now, &id)?;
            Ok(json!({ "id": id, "run_id": run_id }))
        }
        Op::List => Ok(Value::Array(
            core.state()
                .jobs
                .iter()
                .map(|(id, job)| {
                    let last = job.history.back();
                    json!({
                        "id": id,
                        "description": job.spec.description,
                        "schedule": job.spec.schedule.as_ref().map(|s| format!("{} ({})", s.cron, s.timezone)),
                        "next_run": job.next_fire,
                        "active_runs": job.active.len(),
                        "last_outcome": last.map(|r| r.outcome.label()),
                        "last_exit_code": last.and_then(|r| r.exit_code),
                    })
                })
                .collect(),
        )),
        Op::Get(id) => {
            let job = core.job(&id).ok_or_else(|| no_job(&id))?;
            Ok(json!({ "spec": job.spec, "next_run": job.next_fire, "active": job.active }))
        }
        Op::History(id) => {
            let job = core.job(&id).ok_or_else(|| no_job(&id))?;
            Ok(serde_json::to_value(&job.history).expect("records serialize"))
        }
    }
}
