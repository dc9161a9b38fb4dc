//! Errors: what stops the app from starting, and what a request gets back
//! (`application/problem+json`, RFC 9457, never a bare 500 for bad input).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database URL names neither SQLite nor PostgreSQL.
    #[error("DATABASE_URL must start with sqlite: or postgres:, got {0:?}")]
    DatabaseUrl(String),
    /// The database did not answer, or refused.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A perfkit component refused its configuration.
    #[error("configuration: {0}")]
    Component(String),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
}

/// A request's failure, answered as `application/problem+json`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl AppError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Unsupported(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Content too large",
            ),
            Self::Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Unprocessable content",
            ),
            Self::Unavailable(_) | Self::Database(sqlx::Error::PoolTimedOut) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Database(_) | Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

/// A problem+json response.
pub(crate) fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("urn:perfkit:reference-app:{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let detail = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
            "the server failed; the error is logged".to_owned()
        } else {
            self.to_string()
        };
        let mut response = problem(status, kind, title, &detail);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                Self::Unsupported("send the body as Content-Type: application/json".to_owned())
            }
            JsonRejection::JsonSyntaxError(error) => {
                Self::BadRequest(format!("the body is not valid JSON: {}", error.body_text()))
            }
            JsonRejection::JsonDataError(error) => Self::Unprocessable(format!(
                "the JSON does not have the expected shape: {}",
                error.body_text()
            )),
            JsonRejection::BytesRejection(error)
                if error.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Self::TooLarge("the body is larger than the server accepts".to_owned())
            }
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}
