//! A client of the control API (what `strata job ...` uses), on
//! [`strata_framework_kit::client`].

use serde_json::Value;
pub use strata_framework_kit::client::{ClientError, TIMEOUT};
use strata_framework_kit::client::{ControlClient, path_segment as path};

/// What to check when the API cannot be reached.
const HINT: &str = "is strata-jobs (or strata local --with jobs) running? (--jobs, STRATA_JOBS)";

/// The control API at `addr`, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct JobsClient(ControlClient);

impl JobsClient {
    /// A client of `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, ClientError> {
        ControlClient::new(addr, token, "jobs", HINT).map(Self)
    }

    /// Adds or replaces a job from its definition (TOML or JSON).
    pub async fn add(&self, definition: String) -> Result<Value, ClientError> {
        self.0.call("POST", "/v1/jobs", definition).await
    }

    /// Starts a run of `id` now.
    pub async fn run(&self, id: &str) -> Result<Value, ClientError> {
        self.0
            .call(
                "POST",
                &format!("/v1/jobs/{}/runs", path(id)),
                String::new(),
            )
            .await
    }

    /// The jobs.
    pub async fn list(&self) -> Result<Value, ClientError> {
        self.0.call("GET", "/v1/jobs", String::new()).await
    }

    /// One job.
    pub async fn show(&self, id: &str) -> Result<Value, ClientError> {
        self.0
            .call("GET", &format!("/v1/jobs/{}", path(id)), String::new())
            .await
    }

    /// A job's history.
    pub async fn history(&self, id: &str) -> Result<Value, ClientError> {
        self.0
            .call(
                "GET",
                &format!("/v1/jobs/{}/history", path(id)),
                String::new(),
            )
            .await
    }

    /// Removes a job.
    pub async fn remove(&self, id: &str) -> Result<Value, ClientError> {
        self.0
            .call("DELETE", &format!("/v1/jobs/{}", path(id)), String::new())
            .await
    }
}
