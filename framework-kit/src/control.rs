//! The control API's guard, shared by the frameworks' axum routers: it listens outside
//! loopback only with credentials ([`check_exposure`]), and with credentials (the
//! `strata token create` file, as the allocator's) every guarded route needs
//! `Authorization: Bearer TOKEN` ([`guard`]). Errors are answered as `{"error": MESSAGE}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use strata_auth::credentials::Credentials;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::edge;

/// The API cannot be served as asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Outside loopback without credentials.
    #[error(
        "refusing to serve the {what} on {addr} without authentication: anyone who can reach it could run commands on the cluster. Listen on 127.0.0.1, or pass {flag} FILE (strata token create --file FILE)"
    )]
    Exposed {
        /// The API (`jobs API`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The credentials flag (`--jobs-credentials`).
        flag: &'static str,
    },
}

/// Refuses a listener outside loopback unless requests are authenticated.
pub fn check_exposure(
    addr: SocketAddr,
    authenticated: bool,
    what: &'static str,
    flag: &'static str,
) -> Result<(), ApiError> {
    if authenticated || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ApiError::Exposed { what, addr, flag })
    }
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Sends `op` to the framework's loop and answers with its JSON, or with its error and the
/// status `status_of` gives it; 503 naming `program` when the loop has stopped.
pub async fn ask<Op, E: std::fmt::Display>(
    requests: &mpsc::Sender<edge::Request<Op, Result<Value, E>>>,
    op: Op,
    program: &str,
    status_of: impl FnOnce(&E) -> StatusCode,
) -> Response {
    let (reply, answer) = oneshot::channel();
    let gone = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{program} is stopping"),
        )
    };
    if requests.send(edge::Request { op, reply }).await.is_err() {
        return gone();
    }
    match answer.await {
        Err(_) => gone(),
        Ok(Ok(value)) => axum::Json(value).into_response(),
        Ok(Err(e)) => error(status_of(&e), e.to_string()),
    }
}

/// Makes every route of `router` so far need a valid bearer token, when there are credentials.
pub fn guard<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    credentials: Option<Arc<Credentials>>,
) -> Router<S> {
    router.route_layer(middleware::from_fn(move |request: Request, next: Next| {
        let credentials = credentials.clone();
        async move {
            if let Some(credentials) = &credentials {
                let header = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match header.map(|h| credentials.authenticate_header(h)) {
                    Some(Ok(_principal)) => {}
                    Some(Err(e)) => {
                        warn!(path = %request.uri().path(), error = %e, "refused a request");
                        return error(StatusCode::UNAUTHORIZED, "the token is not valid".into());
                    }
                    None => {
                        return error(
                            StatusCode::UNAUTHORIZED,
                            "authentication required: send Authorization: Bearer TOKEN (strata --token, STRATA_TOKEN)".into(),
                        );
                    }
                }
            }
            next.run(request).await
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_without_credentials() {
        let exposed: SocketAddr = "0.0.0.0:5053".parse().unwrap();
        let err = check_exposure(exposed, false, "x API", "--x-credentials")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--x-credentials") && err.contains("x API"),
            "{err}"
        );
        assert!(check_exposure(exposed, true, "x", "y").is_ok());
        assert!(check_exposure("127.0.0.1:5053".parse().unwrap(), false, "x", "y").is_ok());
        assert!(check_exposure("[::1]:5053".parse().unwrap(), false, "x", "y").is_ok());
    }
}
