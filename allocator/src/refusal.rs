//! How the allocator's HTTP APIs (the Mesos API, [`crate::mesos`], and the dashboard,
//! [`crate::ui`]) answer a refused check or action: one mapping, so both say 401 for a caller
//! that did not authenticate, 403 for one that may not, and the same status for each refusal
//! of the core.

use axum::http::StatusCode;
use strata_auth::Denied;
use tonic::Status;

/// A refusal both HTTP APIs answer alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No or bad credentials (401, with a challenge).
    Unauthenticated(String),
    /// The principal may not do this (403).
    Forbidden(String),
    /// The allocator refused the action, with the status that says why.
    Operator {
        /// The HTTP status.
        status: StatusCode,
        /// The allocator's reason.
        message: String,
    },
}

impl Refusal {
    /// The refusal an operator action's gRPC status says.
    pub fn from_status(status: &Status) -> Self {
        let message = status.message().to_owned();
        let code = match status.code() {
            tonic::Code::Unauthenticated => return Self::Unauthenticated(message),
            tonic::Code::PermissionDenied => return Self::Forbidden(message),
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::Operator {
            status: code,
            message,
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Operator { status, .. } => *status,
        }
    }
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated { .. } => Self::Unauthenticated(denied.to_string()),
            Denied::Forbidden { .. } => Self::Forbidden(denied.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_one_set_of_statuses() {
        let cases = [
            (Status::unauthenticated("who"), StatusCode::UNAUTHORIZED),
            (Status::permission_denied("no"), StatusCode::FORBIDDEN),
            (Status::not_found("gone"), StatusCode::NOT_FOUND),
            (Status::invalid_argument("bad"), StatusCode::BAD_REQUEST),
            (Status::failed_precondition("busy"), StatusCode::CONFLICT),
            (
                Status::unavailable("later"),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (Status::internal("bug"), StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (status, want) in cases {
            let refusal = Refusal::from_status(&status);
            assert_eq!(refusal.status(), want, "{status:?}");
            // Both APIs answer it alike.
            let ui = crate::ui::UiError::from(refusal.clone());
            let mesos = crate::mesos::HttpError::from(refusal);
            assert_eq!(ui.status(), want, "{status:?}");
            assert_eq!(mesos.status(), want, "{status:?}");
            assert_eq!(ui.to_string(), status.message());
            assert_eq!(mesos.to_string(), status.message());
        }
    }
}
