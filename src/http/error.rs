//! The one error answer of the HTTP API: a status and the body
//! `{"error": {"code": "...", "message": "...", "fields": [...]}}` (`fields` only for invalid
//! params: one `{param, message}` per bad field). Every handler's error becomes this here.
//!
//! | code | status | when |
//! |---|---|---|
//! | `unauthenticated` | 401 | no or a bad token or session |
//! | `delivery_refused` | 401 | a webhook delivery that is unsigned, wrongly signed or stale, or names no hook |
//! | `forbidden` | 403 | the caller's role or grants do not allow it; a missing CSRF token |
//! | `not_found` | 404 | no such applet, version, job, user, token, hook or route |
//! | `bad_request` | 400, 415, 422 | a malformed body, query or reference; a body that is not JSON |
//! | `too_large` | 413 | a body over the server's limit |
//! | `method_not_allowed` | 405 | a method the route does not take |
//! | `invalid_params` | 422 | params that do not match the applet's manifest (with `fields`) |
//! | `invalid_applet` | 422 | an applet whose files do not load (a dev folder, a bundle) |
//! | `invalid_schedule` | 422 | a schedule with bad fields (with `fields`: `name`, `applet`, `cron`, `tz`, `owner`, `missed`, `params.NAME`) |
//! | `conflict` | 409 | a job that already ended; a replayed webhook delivery (`replayed`) |
//! | `quota_exceeded` | 429 | one applet or caller has its share of run slots |
//! | `too_many_requests` | 429 | repeated sign-in attempts for one user |
//! | `queue_full` | 503 | the run queue is full (with `Retry-After: 1`) |
//! | `queue_unavailable` | 503 | with workers: NATS is unreachable or did not take the run in time |
//! | `timeout` | 504, 408 | a synchronous run did not end in time and was cancelled; a request body that did not arrive within three header timeouts (30 s) |
//! | `store_error`, `internal_error` | 500 | the store, or a bug |
//!
//! A run that started and failed is not an error of the request: its answer is 200 with the
//! run's `status` and an `error` object of the same shape (see docs/serve.md).

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::{Error, ParamError};
use crate::service::{DeliveryError, ServiceError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Option<Vec<ParamError>>,
}

/// The code a status answers with when nothing more specific is known.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "timeout",
        _ => "internal_error",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, code: code_of(status), message: message.into(), fields: None }
    }

    /// The body's `error` object (also used for a failed run inside a 200 answer).
    pub fn object(code: &str, message: &str, fields: Option<&[ParamError]>) -> Value {
        let mut e = json!({ "code": code, "message": message });
        if let Some(f) = fields {
            e["fields"] = json!(f);
        }
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": ApiError::object(self.code, &self.message, self.fields.as_deref()) });
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::Params(_) | Error::Applet(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound(_) | Error::Yanked { .. } => StatusCode::NOT_FOUND,
            Error::Usage(_) | Error::Config(_) => StatusCode::BAD_REQUEST,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NeedsApproval(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match &e {
            Error::Usage(_) | Error::Config(_) => "bad_request",
            other => other.kind(),
        };
        let fields = match &e {
            Error::Params(f) => Some(f.clone()),
            _ => None,
        };
        let message = match &e {
            Error::Yanked { .. } => format!("{e}; add allow_yanked=true to the request to run it anyway"),
            _ => e.to_string(),
        };
        ApiError { status, code, message, fields }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let e = match e {
            ServiceError::Core(inner) => return inner.into(),
            other => other,
        };
        let status = match &e {
            // Handled above; listed so a new variant cannot be left without a status.
            ServiceError::Core(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Delivery(DeliveryError::Replayed) => StatusCode::CONFLICT,
            ServiceError::Delivery(_) => StatusCode::UNAUTHORIZED,
            ServiceError::Payload(_) => StatusCode::BAD_REQUEST,
            ServiceError::Lost => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::QueueDown(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError { status, code: e.code(), message: e.to_string(), fields: None }
    }
}

/// Gives any error answer not made by [`ApiError`] (an extractor's rejection of a query, path or
/// JSON body, the body size limit, a method a route does not take) the one error body, with its
/// text as the message and its other headers kept.
pub async fn one_body(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut out = ApiError::new(status, message).into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// Requests no route answers.
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {method} {}", uri.path()))
}
