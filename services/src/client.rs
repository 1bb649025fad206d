//! A client of the control API (what `strata app ...` uses), on
//! [`strata_framework_kit::client`].

use serde_json::Value;
pub use strata_framework_kit::client::{ClientError, TIMEOUT};
use strata_framework_kit::client::{ControlClient, path_segment as path};

/// What to check when the API cannot be reached.
const HINT: &str =
    "is strata-services (or strata local --with services) running? (--services, STRATA_SERVICES)";

/// The control API at `addr`, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct ServicesClient(ControlClient);

impl ServicesClient {
    /// A client of `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, ClientError> {
        ControlClient::new(addr, token, "services", HINT).map(Self)
    }

    /// Deploys a definition (TOML or JSON).
    pub async fn deploy(&self, definition: String) -> Result<Value, ClientError> {
        self.0.call("POST", "/v1/apps", definition).await
    }

    /// The apps.
    pub async fn list(&self) -> Result<Value, ClientError> {
        self.0.call("GET", "/v1/apps", String::new()).await
    }

    /// One app.
    pub async fn show(&self, id: &str) -> Result<Value, ClientError> {
        self.get(id, "").await
    }

    /// An app's plan.
    pub async fn plan(&self, id: &str) -> Result<Value, ClientError> {
        self.get(id, "/plan").await
    }

    /// Sets an app's instance count.
    pub async fn scale(&self, id: &str, instances: u32) -> Result<Value, ClientError> {
        self.post(id, "/scale", instances.to_string()).await
    }

    /// Replaces every instance of an app.
    pub async fn restart(&self, id: &str) -> Result<Value, ClientError> {
        self.post(id, "/restart", String::new()).await
    }

    /// Scales an app to zero.
    pub async fn suspend(&self, id: &str) -> Result<Value, ClientError> {
        self.post(id, "/suspend", String::new()).await
    }

    /// Destroys an app.
    pub async fn destroy(&self, id: &str) -> Result<Value, ClientError> {
        self.0
            .call("DELETE", &format!("/v1/apps/{}", path(id)), String::new())
            .await
    }

    async fn get(&self, id: &str, what: &str) -> Result<Value, ClientError> {
        self.0
            .call(
                "GET",
                &format!("/v1/apps/{}{what}", path(id)),
                String::new(),
            )
            .await
    }

    async fn post(&self, id: &str, what: &str, body: String) -> Result<Value, ClientError> {
        self.0
            .call("POST", &format!("/v1/apps/{}{what}", path(id)), body)
            .await
    }
}
