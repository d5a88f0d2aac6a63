//! `opslet serve`: the HTTP edge (axum) over the run service, the registry and the stores.
//!
//! Handlers parse a request, check who is calling and what they may do, call the layer below and
//! render the answer; runs go through [`crate::service::RunService`] like every other trigger.
//! `app` builds the router from an `AppState`, so tests can drive it over a real socket or
//! directly. Every route but `/healthz` needs a bearer token or a console session; a refused
//! request is audited. Every error answer has one body, made in `error.rs`.

mod admin;
mod artifacts;
mod authn;
pub mod commands;
mod error;
mod listener;
mod registry;
mod runs;
mod schedules;
pub mod session;
mod signin;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};

pub use authn::Authed;
pub use error::ApiError;

use crate::auth::Auth;
use crate::error::Error;
use crate::registry::Registry;
use crate::service::RunService;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Runs, jobs, hooks and metrics.
    pub service: RunService,
    pub registry: Registry,
    pub auth: Auth,
    /// How long a synchronous run request waits for its run.
    pub sync_timeout: Duration,
    /// Web console sessions.
    pub sessions: Arc<session::Sessions>,
    /// CLI commands from `opslet --server` (none when the server was built without a runner).
    pub commands: commands::Commands,
    /// The artifact stores of opslet.toml (`[s3.NAME]`), for the console's listing.
    pub artifacts: Option<Arc<crate::service::artifacts::Artifacts>>,
}

/// Server settings (flags of `opslet serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub body_limit: usize,
    /// How long running jobs may take to finish at shutdown before they are cancelled.
    pub shutdown_grace: Duration,
    /// Connections open at once, and how long a client may take to send a request's headers.
    pub limits: listener::Limits,
}

pub use listener::Limits;

/// The OpenAPI document of every route below (tests/openapi.rs keeps the two in step).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Reads the whole request body within `deadline` (and the body limit) before any handler runs:
/// 408 when it is too slow, 413 when it is too large. A client that sends a body slowly holds
/// its connection no longer than this (the header timeout covers the headers).
async fn body_within(limit: usize, deadline: Duration, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::StatusCode;
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Err(_)) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than the {limit} bytes this server takes"))
                .into_response()
        }
        Err(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {}s", deadline.as_secs()))
            .into_response(),
    }
}

/// API answers are per caller: never cached (a shared browser keeps nothing after sign-out).
async fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    resp
}

/// The header of a page of a list that has more (jobs, audit records, newest first): the
/// cursor to pass as `before` for the next page.
pub const NEXT: &str = "x-opslet-next";

/// A page of a list as JSON, with the cursor of the next page in [`NEXT`] when there is one.
fn paged(page: serde_json::Value, next: Option<String>) -> Response {
    let mut resp = axum::Json(page).into_response();
    if let Some(v) = next.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert(NEXT, v);
    }
    resp
}

/// The router: every route of the API. A request body must arrive within `body_timeout`.
pub fn app(state: AppState, body_limit: usize, body_timeout: Duration) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/applets", get(registry::list_applets))
        .route("/api/v1/search", get(registry::search))
        .route("/api/v1/applets/{name}", get(registry::show_applet))
        .route("/api/v1/applets/{name}/versions", get(registry::versions))
        .route("/api/v1/applets/{reference}/run", post(runs::run_applet))
        .route("/readyz", get(runs::readyz))
        .route("/api/v1/openapi.json", get(|_: Authed| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response() }))
        .route("/hooks/{name}", post(runs::deliver_hook))
        .route("/metrics", get(runs::metrics))
        .route("/api/v1/registry/publish", post(registry::publish_bundle))
        .route("/api/v1/applets/{name}/promote", post(registry::promote))
        .route("/api/v1/applets/{name}/rollback", post(registry::rollback))
        .route("/api/v1/applets/{name}/yank", post(registry::yank))
        .route("/api/v1/audit", get(admin::audit_list))
        .route("/api/v1/audit/verify", get(admin::audit_verify))
        .route("/api/v1/users", get(admin::list_users).post(admin::add_user))
        .route("/api/v1/users/{name}", delete(admin::remove_user).patch(admin::change_user))
        .route("/api/v1/users/{name}/tokens", post(admin::create_token))
        .route("/api/v1/users/{name}/password", put(commands::set_password))
        .route("/api/v1/secrets", get(admin::list_secrets))
        .route("/api/v1/secrets/{name}", put(admin::set_secret).delete(admin::remove_secret))
        .route("/api/v1/commands", post(commands::run_command))
        .route("/api/v1/commands/{id}/cancel", post(commands::cancel_command))
        .route("/api/v1/tokens", get(admin::list_tokens))
        .route("/api/v1/tokens/{id}", delete(admin::revoke_token))
        .route("/api/v1/grants", get(admin::list_grants).post(admin::add_grant).delete(admin::remove_grant))
        .route("/api/v1/hooks", get(admin::list_hooks).post(admin::add_hook))
        .route("/api/v1/hooks/{name}", delete(admin::remove_hook))
        .route("/api/v1/schedules", get(schedules::list).post(schedules::add))
        .route("/api/v1/schedules/{name}", get(schedules::show).delete(schedules::remove))
        .route("/api/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/api/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/api/v1/schedules/{name}/run", post(schedules::run_now))
        .route("/api/v1/notifications", get(admin::list_notifications))
        .route("/api/v1/artifacts", get(artifacts::connections))
        .route("/api/v1/artifacts/{connection}", get(artifacts::list))
        .route("/api/v1/jobs", get(runs::list_jobs))
        .route("/api/v1/workers", get(runs::list_workers))
        .route("/api/v1/jobs/{id}", get(runs::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(runs::cancel_job))
        .route("/api/v1/jobs/{id}/approve", post(runs::approve_job))
        .route("/api/v1/jobs/{id}/reject", post(runs::reject_job))
        .route("/api/v1/approvals", get(runs::list_approvals))
        .route("/api/v1/jobs/{id}/events", get(runs::job_events))
        .route("/api/v1/session", get(signin::session_show).post(signin::session_start).delete(signin::session_end))
        .route("/api/v1/cmdb/hosts", get(admin::cmdb_hosts))
        .fallback(error::no_route)
        .layer(axum::middleware::map_response(no_store))
        .merge(ui::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req, next| body_within(body_limit, body_timeout, req, next)))
        .layer(axum::middleware::map_response(error::one_body))
        .with_state(state)
}

/// Runs the server until Ctrl-C / SIGTERM, then lets the run service drain. Prints
/// `listening on ADDR` on stderr once bound.
pub async fn serve(state: AppState, cfg: &ServeConfig) -> Result<(), Error> {
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    eprintln!("listening on {addr}");
    // Three header timeouts for a body: 30 s by default.
    let router = app(state.clone(), cfg.body_limit, cfg.limits.header_timeout * 3);
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    };
    listener::run(listener, router, cfg.limits, shutdown, cfg.shutdown_grace).await;
    state.service.drain(cfg.shutdown_grace).await;
    Ok(())
}
