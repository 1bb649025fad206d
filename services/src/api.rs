//! The control API the `strata app` commands talk to: HTTP/1.1 and JSON on loopback by default.
//!
//! - `GET /v1/apps`: the apps, with their version, instances and deployment
//! - `POST /v1/apps`: deploy a definition (the body, TOML or JSON)
//! - `GET /v1/apps/{id}`: one app: its definition, instances and deployment
//! - `DELETE /v1/apps/{id}`: destroy it (its instances are killed)
//! - `POST /v1/apps/{id}/scale`: the body is the new instance count
//! - `POST /v1/apps/{id}/restart`, `POST /v1/apps/{id}/suspend` (scale to zero)
//! - `GET /v1/apps/{id}/plan`: the plan it follows (phases, steps, status)
//! - `GET /health`
//!
//! Bodies are at most [`MAX_BODY`] bytes. With credentials every request but `/health` needs
//! `Authorization: Bearer TOKEN`; without them the API refuses to listen anywhere but loopback
//! ([`check_exposure`]). Both from [`strata_framework_kit::control`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
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

/// Refuses a listener outside loopback unless requests are authenticated.
pub fn check_exposure(addr: SocketAddr, authenticated: bool) -> Result<(), ApiError> {
    control::check_exposure(
        addr,
        authenticated,
        "services API",
        "--services-credentials",
    )
}

/// What a request asks of the core.
#[derive(Debug)]
pub enum Op {
    /// Deploy a definition's text.
    Deploy(String),
    /// The apps.
    List,
    /// One app.
    Show(String),
    /// An app's plan.
    Plan(String),
    /// Set the instance count (the body's text).
    Scale(String, String),
    /// Replace every instance.
    Restart(String),
    /// Scale to zero.
    Suspend(String),
    /// Destroy.
    Destroy(String),
}

/// One request, with where its answer goes.
pub type ApiRequest = strata_framework_kit::edge::Request<Op, Result<Value, CoreError>>;

/// The router: requests go to `requests`, answered by the framework's loop.
pub fn router(requests: mpsc::Sender<ApiRequest>, credentials: Option<Arc<Credentials>>) -> Router {
    let routes = Router::new()
        .route(
            "/v1/apps",
            get(|State(tx): State<mpsc::Sender<ApiRequest>>| async move { ask(&tx, Op::List).await })
                .post(|State(tx): State<mpsc::Sender<ApiRequest>>, body: String| async move {
                    ask(&tx, Op::Deploy(body)).await
                }),
        )
        .route(
            "/v1/apps/{id}",
            get(|State(tx): State<mpsc::Sender<ApiRequest>>, Path(id): Path<String>| async move {
                ask(&tx, Op::Show(id)).await
            })
            .delete(|State(tx): State<mpsc::Sender<ApiRequest>>, Path(id): Path<String>| async move {
                ask(&tx, Op::Destroy(id)).await
            }),
        )
        .route(
            "/v1/apps/{id}/plan",
            get(|State(tx): State<mpsc::Sender<ApiRequest>>, Path(id): Path<String>| async move {
                ask(&tx, Op::Plan(id)).await
            }),
        )
        .route(
            "/v1/apps/{id}/scale",
            post(
                |State(tx): State<mpsc::Sender<ApiRequest>>, Path(id): Path<String>, body: String| async move {
                    ask(&tx, Op::Scale(id, body)).await
                },
            ),
        )
        .route(
            "/v1/apps/{id}/restart",
            post(|State(tx): State<mpsc::Sender<ApiRequest>>, Path(id): Path<String>| async move {
                ask(&tx, Op::Restart(id)).await
            }),
        )
        .route(
            "/v1/apps/{id}/suspend",
            post(|State(tx): State<mpsc::Sender<ApiRequest>>, Path(id): Path<String>| async move {
                ask(&tx, Op::Suspend(id)).await
            }),
        );
    control::guard(routes, credentials)
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(requests)
}

async fn ask(requests: &mpsc::Sender<ApiRequest>, op: Op) -> Response {
    control::ask(requests, op, "the services framework", |e| match e {
        CoreError::NoApp { .. } => StatusCode::NOT_FOUND,
        CoreError::Spec(_) => StatusCode::BAD_REQUEST,
        CoreError::Destroying { .. } => StatusCode::CONFLICT,
        CoreError::Limit { .. } => StatusCode::TOO_MANY_REQUESTS,
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::{ClientError, ServicesClient};

    /// Serves the API on loopback with a loop over a fresh core; returns its address.
    async fn serve(credentials: Option<Arc<Credentials>>) -> SocketAddr {
        let (tx, mut rx) = mpsc::channel::<ApiRequest>(8);
        tokio::spawn(async move {
            let mut core = crate::core::Core::new(Default::default());
            while let Some(request) = rx.recv().await {
                let answer =
                    crate::framework::handle(&mut core, Duration::from_secs(1), request.op);
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
    async fn the_api_deploys_scales_plans_and_destroys_apps() {
        let addr = serve(None).await;
        let client = ServicesClient::new(&addr.to_string(), None).unwrap();
        let deployed = client
            .deploy("id = \"web\"\ncommand = \"sleep 100\"\ninstances = 2".into())
            .await
            .unwrap();
        assert_eq!(
            (deployed["id"].as_str(), deployed["version"].as_u64()),
            (Some("web"), Some(1))
        );
        let list = client.list().await.unwrap();
        assert_eq!(list[0]["id"], "web");
        assert_eq!(list[0]["instances"], 2);
        assert_eq!(list[0]["deployment"], "deploy");
        let plan = client.plan("web").await.unwrap();
        assert_eq!(plan["strategy"], "deploy");
        assert_eq!(plan["phases"][0]["steps"].as_array().unwrap().len(), 2);
        client.scale("web", 3).await.unwrap();
        assert_eq!(client.show("web").await.unwrap()["spec"]["instances"], 3);
        assert_eq!(client.restart("web").await.unwrap()["version"], 2);
        client.suspend("web").await.unwrap();
        assert_eq!(client.show("web").await.unwrap()["spec"]["instances"], 0);
        assert_eq!(status(client.plan("nope").await), 404);
        assert_eq!(status(client.show("../../etc").await), 404);
        let bad = client.deploy("id = \"Bad\"\ncommand = \"x\"".into()).await;
        assert_eq!(status(bad), 400);
        client.destroy("web").await.unwrap();
        assert_eq!(client.list().await.unwrap(), serde_json::json!([]));
    }

    #[tokio::test]
    async fn abuse_unauthenticated_oversized_bad_scale_and_exposed_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials.toml");
        let token = strata_auth::credentials::create_token(&file, "ops").unwrap();
        let credentials = Arc::new(Credentials::load(&file).unwrap());
        let addr = serve(Some(credentials)).await;

        let anonymous = ServicesClient::new(&addr.to_string(), None).unwrap();
        let err = anonymous.list().await.unwrap_err();
        assert!(
            matches!(err, ClientError::Refused { status: 401, .. }),
            "{err}"
        );
        let wrong = ServicesClient::new(&addr.to_string(), Some("not-the-token".into())).unwrap();
        assert_eq!(
            status(wrong.deploy("id = \"x\"\ncommand = \"x\"".into()).await),
            401
        );
        assert_eq!(status(wrong.destroy("x").await), 401);

        let client = ServicesClient::new(&addr.to_string(), Some(token)).unwrap();
        assert_eq!(client.list().await.unwrap(), serde_json::json!([]));
        let huge = format!("id = \"x\"\ncommand = \"{}\"", "y".repeat(MAX_BODY));
        assert_eq!(status(client.deploy(huge).await), 413);
        client
            .deploy("id = \"x\"\ncommand = \"x\"".into())
            .await
            .unwrap();
        assert_eq!(status(client.scale("x", 10_001).await), 400);

        let exposed: SocketAddr = "0.0.0.0:5054".parse().unwrap();
        let err = check_exposure(exposed, false).unwrap_err().to_string();
        assert!(err.contains("--services-credentials"), "{err}");
    }
}
