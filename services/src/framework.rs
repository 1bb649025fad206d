//! The framework's edge: the services core as [`strata_framework_kit::host`] runs it (state
//! file, control API, subscription with a failover timeout, so instances keep running while it
//! is away), fed the clock (a tick every second), offers, updates and the API's requests; the
//! state is saved before what the core decided is carried out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
use crate::spec::{AppSpec, SpecError};
use crate::store::PROGRAM;

/// How the framework runs.
pub type ServicesConfig = HostConfig;

/// The framework cannot run.
pub type ServicesError = HostError;

/// The framework with its API bound, not yet subscribed.
pub type Bound = host::Bound<Core>;

/// Opens the state and binds the API (refusing outside loopback without credentials).
pub async fn bind(config: ServicesConfig) -> Result<Bound, ServicesError> {
    host::bind(config).await
}

impl Hosted for Core {
    type State = State;
    const PROGRAM: &'static str = PROGRAM;
    const API: &'static str = "services API";
    const LISTEN_FLAG: &'static str = "--services-listen";
    const CREDENTIALS_FLAG: &'static str = "--services-credentials";

    /// The role is the subscription's; every offer comes in it.
    fn new(state: State, _role: &str) -> Self {
        Core::new(state)
    }

    fn router(
        requests: mpsc::Sender<ApiRequest>,
        credentials: Option<Arc<Credentials>>,
    ) -> axum::Router {
        api::router(requests, credentials)
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn on_event(core: &mut Core, event: Event) {
    let now = now();
    match event {
        Event::Subscribed { framework_id } => {
            info!(%framework_id, "subscribed; reconciling instances");
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
        handle(self, now(), op)
    }

    fn tick(&mut self) {
        Core::tick(self, now());
    }

    fn update(&mut self, status: &TaskStatus) {
        Core::update(self, now(), status);
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
pub fn handle(core: &mut Core, now: Duration, op: Op) -> Result<Value, CoreError> {
    let summary = |core: &Core, id: &str| -> Result<Value, CoreError> {
        let app = core.app(id).ok_or_else(|| CoreError::NoApp {
            app_id: strata_proto::ids::shorten(id, 64),
        })?;
        let running = app
            .instances
            .values()
            .filter(|i| i.state == crate::core::InstanceState::Running)
            .count();
        Ok(json!({
            "id": id,
            "version": app.version,
            "instances": app.spec.instances,
            "running": running,
            "healthy": core.healthy(id),
            "deployment": app.deployment.as_ref().map(|d| d.kind),
            "last_good_version": app.last_good.as_ref().map(|t| t.version),
            "destroying": app.destroying,
        }))
    };
    match op {
        Op::Deploy(text) => {
            let spec = AppSpec::parse(&text)?;
            let id = spec.id.clone();
            let version = core.deploy(now, spec)?;
            Ok(json!({ "id": id, "version": version }))
        }
        Op::List => Ok(Value::Array(
            core.state()
                .apps
                .keys()
                .filter_map(|id| summary(core, id).ok())
                .collect(),
        )),
        Op::Show(id) => {
            let mut value = summary(core, &id)?;
            let app = core.app(&id).expect("summarized above");
            value["spec"] = serde_json::to_value(&app.spec).expect("specs serialize");
            value["instance_list"] =
                serde_json::to_value(&app.instances).expect("instances serialize");
            Ok(value)
        }
        Op::Plan(id) => Ok(serde_json::to_value(core.plan(now, &id)?).expect("plans serialize")),
        Op::Scale(id, body) => {
            let instances = body.trim().parse::<u32>().map_err(|_| {
                CoreError::Spec(SpecError::Field {
                    id: strata_proto::ids::shorten(&id, 64),
                    field: "instances",
                    reason: format!(
                        "{:?} is not a count",
                        strata_proto::ids::shorten(body.trim(), 32)
                    ),
                })
            })?;
            let version = core.scale(now, &id, instances)?;
            Ok(json!({ "id": id, "version": version, "instances": instances }))
        }
        Op::Restart(id) => {
            let version = core.restart(now, &id)?;
            Ok(json!({ "id": id, "version": version }))
        }
        Op::Suspend(id) => {
            let version = core.scale(now, &id, 0)?;
            Ok(json!({ "id": id, "version": version, "instances": 0 }))
        }
        Op::Destroy(id) => {
            core.destroy(now, &id)?;
            Ok(json!({ "id": id, "destroyed": true }))
        }
    }
}
