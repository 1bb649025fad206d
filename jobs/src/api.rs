//! The control API the `strata job` commands talk to: HTTP/1.1 and JSON on loopback by default.
//!
//! - `GET /v1/jobs`: the jobs, with their next time and latest outcome
//! - `POST /v1/jobs`: add or replace a job (the body: its definition, TOML or JSON)
//! - `GET /v1/jobs/{id}`: one job, with its active runs
//! - `DELETE /v1/jobs/{id}`: remove a job and its history, killing its running attempts
//! - `POST /v1/jobs/{id}/runs`: start a run now
//! - `GET /v1/jobs/{id}/history`: its ended attempts and skipped runs, oldest first
//! - `GET /health`
//!
//! Bodies are at most [`MAX_BODY`] bytes. With credentials (the `strata token create` file,
//! as the allocator's), every request but `/health` needs `Authorization: Bearer TOKEN`; without
//! them the API refuses to listen anywhere but loopback ([`check_exposure`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::Value;
use strata_auth::credentials::Credentials;
use strata_framework_kit::control;
pub use strata_framework_kit::control::ApiError;
use tokio::sync::mpsc;

use crate::core::CoreError;

/// The most bytes of a request body.
pub const MAX_BODY: usize = crate::spec::MAX_DEFINITION_BYTES;

/// What a request asks of the scheduler.
#[derive(Debug)]
pub enum Op {
    /// Add or replace a job from its definition's text.
    Put(String),
    /// Remove a job.
    Remove(String),
    /// Run a job now.
    Run(String),
    /// The jobs.
    List,
    /// One job.
    Get(String),
    /// A job's history.
    History(String),
}

/// One request, with where its answer goes.
pub type ApiRequest = strata_framework_kit::edge::Request<Op, Result<Value, CoreError>>;

/// The API's name and credentials flag, for [`check_exposure`].
pub const WHAT: &str = "jobs API";
/// The credentials flag.
pub const CREDENTIALS_FLAG: &str = "--jobs-credentials";

/// Refuses a listener outside loopback unless requests are authenticated.
pub fn check_exposure(addr: SocketAddr, authenticated: bool) -> Result<(), ApiError> {
    control::check_exposure(addr, authenticated, WHAT, CREDENTIALS_FLAG)
}

#[derive(Clone)]
struct Api {
    requests: mpsc::Sender<ApiRequest>,
}

/// The router: requests go to `requests`, answered by the framework's loop.
pub fn router(requests: mpsc::Sender<ApiRequest>, credentials: Option<Arc<Credentials>>) -> Router {
    let api = Api { requests };
    let routes = Router::new()
        .route("/v1/jobs", get(list).post(put))
        .route("/v1/jobs/{id}", get(show).delete(remove))
        .route("/v1/jobs/{id}/runs", post(run))
        .route("/v1/jobs/{id}/history", get(history));
    control::guard(routes, credentials)
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

async fn ask(api: &Api, op: Op) -> Response {
    control::ask(&api.requests, op, "the jobs framework", |e| match e {
        CoreError::NoJob { .. } => StatusCode::NOT_FOUND,
        CoreError::Spec(_) | CoreError::Role { .. } => StatusCode::BAD_REQUEST,
        CoreError::Forbidden { .. } => StatusCode::CONFLICT,
        CoreError::Limit { .. } => StatusCode::TOO_MANY_REQUESTS,
    })
    .await
}

async fn list(State(api): State<Api>) -> Response {
    ask(&api, Op::List).await
}

async fn put(State(api): State<Api>, _headers: HeaderMap, body: String) -> Response {
    ask(&api, Op::Put(body)).await
}

async fn show(State(api): State<Api>, Path(id): Path<String>) -> Response {
    ask(&api, Op::Get(id)).await
}

async fn remove(State(api): State<Api>, Path(id): Path<String>) -> Response {
    ask(&api, Op::Remove(id)).await
}

async fn run(State(api): State<Api>, Path(id): Path<String>) -> Response {
    ask(&api, Op::Run(id)).await
}

async fn history(State(api): State<Api>, Path(id): Path<String>) -> Response {
    ask(&api, Op::History(id)).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::client::{ClientError, JobsClient};

    /// Serves the API on loopback with a scheduler loop over a fresh core; returns its address.
    async fn serve(credentials: Option<Arc<Credentials>>) -> SocketAddr {
        let (tx, mut rx) = mpsc::channel::<ApiRequest>(8);
        tokio::spawn(async move {
            let mut core = crate::core::Core::new(Default::default(), "*");
            while let Some(request) = rx.recv().await {
                let answer =
                    crate::framework::handle(&mut core, jiff::Timestamp::UNIX_EPOCH, request.op);
                let _ = request.reply.send(answer);
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(strata_common::serve::serve(
            listener,
            router(tx, credentials),
            None,
            std::future::pending(),
        ));
        addr
    }

    fn status(result: Result<Value, ClientError>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(ClientError::Refused { status, .. }) => status,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn the_api_adds_runs_lists_and_removes_jobs() {
        let addr = serve(None).await;
        let client = JobsClient::new(&addr.to_string(), None).unwrap();
        let added = client
            .add("id = \"hello\"\ncommand = \"echo hello\"".into())
            .await
            .unwrap();
        assert_eq!(added["id"], "hello");
        let run = client.run("hello").await.unwrap();
        assert_eq!(run["run_id"], 1);
        let list = client.list().await.unwrap();
        assert_eq!(list[0]["id"], "hello");
        assert_eq!(list[0]["active_runs"], 1);
        assert_eq!(client.history("hello").await.unwrap(), json!([]));
        assert_eq!(status(client.run("nope").await), 404);
        assert_eq!(status(client.history("../../etc").await), 404);
        let bad = client.add("id = \"Bad\"\ncommand = \"x\"".into()).await;
        assert_eq!(status(bad), 400);
        client.remove("hello").await.unwrap();
        assert_eq!(client.list().await.unwrap(), json!([]));
    }

    #[tokio::test]
    async fn abuse_unauthenticated_oversized_and_exposed_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials.toml");
        let token = strata_auth::credentials::create_token(&file, "ops").unwrap();
        let credentials = Arc::new(Credentials::load(&file).unwrap());
        let addr = serve(Some(credentials)).await;

        let anonymous = JobsClient::new(&addr.to_string(), None).unwrap();
        let err = anonymous.list().await.unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { status: 401, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("authentication required"), "{err}");
        let wrong = JobsClient::new(&addr.to_string(), Some("not-the-token".into())).unwrap();
        assert_eq!(
            status(wrong.add("id = \"x\"\ncommand = \"x\"".into()).await),
            401
        );
        assert_eq!(status(wrong.run("x").await), 401);

        let client = JobsClient::new(&addr.to_string(), Some(token)).unwrap();
        assert_eq!(client.list().await.unwrap(), json!([]));
        // A body over the bound is refused before it is read whole.
        let huge = format!("id = \"x\"\ncommand = \"{}\"", "y".repeat(MAX_BODY));
        assert_eq!(status(client.add(huge).await), 413);

        // Outside loopback only with credentials.
        let exposed: SocketAddr = "0.0.0.0:5053".parse().unwrap();
        let err = check_exposure(exposed, false).unwrap_err().to_string();
        assert!(err.contains("--jobs-credentials"), "{err}");
    }
}
