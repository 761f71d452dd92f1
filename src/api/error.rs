//! The API's one error type: a status, a stable `error` code and a safe human message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::refresh::KeeperError;
use crate::store::StoreError;

/// Every error response: a stable code and a human sentence.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `invalid_request`, `unauthorized`, `forbidden`, `unknown_connector_type`,
    /// `not_connected`, `reauthorization_required`, `rate_limited`, `provider_error`,
    /// `provider_unavailable`, ...
    pub error: String,
    pub message: String,
    /// `insufficient_scope` only: the required scopes the connection was not granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_scopes: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid service-account token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidCredentials(String),
    #[error("{0}")]
    UnknownConnectorType(String),
    #[error("{0}")]
    NotConnected(String),
    #[error("{0}")]
    ConnectorNotConfigured(String),
    #[error("no such route")]
    NotFound,
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    ReauthorizationRequired(String),
    #[error("{message}")]
    InsufficientScope {
        message: String,
        missing: Vec<String>,
    },
    #[error("{message}")]
    ProviderError {
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{message}")]
    ProviderUnavailable { message: String, retry_after: u64 },
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("an internal error occurred; the server log has the details")]
    Internal,
}

/// The `error` code of a response, kept in its extensions for the access log.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidCredentials(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnknownConnectorType(_) | Self::NotConnected(_) | Self::NotFound => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ReauthorizationRequired(_)
            | Self::ConnectorNotConfigured(_)
            | Self::InsufficientScope { .. } => StatusCode::CONFLICT,
            Self::ProviderError { .. } => StatusCode::BAD_GATEWAY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ProviderUnavailable { .. } | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidCredentials(_) => "invalid_credentials",
            Self::UnknownConnectorType(_) => "unknown_connector_type",
            Self::NotConnected(_) => "not_connected",
            Self::ConnectorNotConfigured(_) => "connector_not_configured",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ReauthorizationRequired(_) => "reauthorization_required",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::ProviderError { .. } => "provider_error",
            Self::RateLimited { .. } => "rate_limited",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
            missing_scopes: match &self {
                Self::InsufficientScope { missing, .. } => Some(missing.clone()),
                _ => None,
            },
        };
        let mut response = (self.status_code(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokenbox\""),
                );
            }
            Self::ProviderUnavailable { retry_after, .. }
            | Self::RateLimited { retry_after, .. }
            | Self::ProviderError {
                retry_after: Some(retry_after),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) if is_unavailable(&e) => {
                tracing::error!(error = %e, "database unavailable");
                Self::Unavailable
            }
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::Internal
            }
        }
    }
}

/// Whether the database is unreachable or restarting (a retry later may succeed), as opposed
/// to a query or data problem.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08xxx), operator intervention such as a shutdown
        // (57Pxx), insufficient resources (53xxx).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        _ => false,
    }
}

impl From<KeeperError> for ApiError {
    fn from(error: KeeperError) -> Self {
        match error {
            KeeperError::UnknownConnectorType(_) => Self::UnknownConnectorType(error.to_string()),
            KeeperError::NotConnected(..) => Self::NotConnected(error.to_string()),
            KeeperError::ReauthorizationRequired(m) => Self::ReauthorizationRequired(m),
            KeeperError::ProviderUnavailable {
                message,
                retry_after,
            } => Self::ProviderUnavailable {
                message,
                retry_after,
            },
            KeeperError::ProviderError {
                message,
                retry_after,
            } => Self::ProviderError {
                message,
                retry_after,
            },
            KeeperError::InvalidRequest(m) | KeeperError::AccountMismatch(m) => {
                Self::InvalidRequest(m)
            }
            KeeperError::InvalidCredentials(m) => Self::InvalidCredentials(m),
            KeeperError::ConnectorNotConfigured(_) => {
                Self::ConnectorNotConfigured(error.to_string())
            }
            KeeperError::Store(e) => e.into(),
            KeeperError::Internal => Self::Internal,
        }
    }
}
