//! `opslet serve`: the HTTP API over the registry and the runtime (axum).
//!
//! `app` builds the router from an `AppState`, so tests can drive it over a real socket or
//! directly. Every route but `/healthz` needs a bearer token; a refused request is audited.

mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub use pool::RunPool;

use crate::auth::{Action, Auth, Principal};
use crate::error::Error;
use crate::registry::{Reference, Registry};
use crate::runtime::context::Caller;
use crate::runtime::{RunRequest, RunStatus, Runtime};
use crate::store::audit::AuditEvent;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub registry: Registry,
    pub auth: Auth,
    pub pool: Arc<RunPool>,
    /// How long a synchronous run request waits for its run.
    pub sync_timeout: Duration,
}

/// Server settings (flags of `opslet serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub run_threads: usize,
    pub queue: usize,
    pub body_limit: usize,
    pub sync_timeout: Duration,
}

/// The one error type at the HTTP edge: a status and a JSON body `{ "error": ..., ... }`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, body: json!({ "error": message.into() }) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::Params(errs) => {
                ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, body: json!({ "error": "invalid params", "fields": errs }) }
            }
            Error::Applet(diags) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: json!({ "error": "invalid applet", "problems": diags.iter().map(ToString::to_string).collect::<Vec<_>>() }),
            },
            Error::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            Error::Usage(m) | Error::Config(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// The authenticated caller of a request.
pub struct Authed(pub Principal);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match state.auth.authenticate(header) {
            Ok(p) => Ok(Authed(p)),
            Err(e) => {
                deny(state, None, parts.uri.path(), &e.to_string());
                Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")))
            }
        }
    }
}

fn deny(state: &AppState, who: Option<&str>, path: &str, why: &str) {
    let _ = state.runtime.store().map(|s| {
        s.audit().append(AuditEvent {
            kind: "http.denied".into(),
            actor: who.map(str::to_string),
            via: Some("http".into()),
            status: Some("denied".into()),
            data: json!({ "path": path, "reason": why }),
            ..AuditEvent::default()
        })
    });
}

fn require(state: &AppState, p: &Principal, action: Action, path: &str) -> Result<(), ApiError> {
    let grants = state.auth.grants().map_err(ApiError::from)?;
    if p.allows(&action, &grants) {
        return Ok(());
    }
    let why = match action {
        Action::Run(name) => format!("{} ({}) may not run `{name}` (no grant matches)", p.user, p.role.name()),
        other => format!("{} ({}) may not {other:?}", p.user, p.role.name()),
    };
    deny(state, Some(&p.user), path, &why);
    Err(ApiError::new(StatusCode::FORBIDDEN, format!("forbidden: {why}")))
}

/// The router: every route of the API.
pub fn app(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/applets", get(list_applets))
        .route("/api/v1/search", get(search))
        .route("/api/v1/applets/{name}", get(show_applet))
        .route("/api/v1/applets/{name}/versions", get(versions))
        .route("/api/v1/applets/{reference}/run", post(run_applet))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn list_applets(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/applets")?;
    let all = s.registry.list()?;
    Ok(Json(json!(all.into_iter().map(|(a, v)| json!({ "name": a.name, "current": v })).collect::<Vec<_>>())))
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    tag: Option<String>,
    permission: Option<String>,
    limit: Option<usize>,
}

async fn search(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<SearchQuery>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/search")?;
    let hits = s.registry.search(&q.q, q.tag.as_deref(), q.permission.as_deref(), q.limit.unwrap_or(50).min(500))?;
    Ok(Json(json!(hits)))
}

async fn show_applet(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/applets/{name}")?;
    let r = Reference::parse(&name)?;
    let v = s.registry.resolve(&r, true)?;
    let a = s.registry.applet(r.name())?;
    Ok(Json(json!({ "version": v, "current": a.current, "history": a.history })))
}

async fn versions(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/applets/{name}/versions")?;
    s.registry.applet(&name)?;
    Ok(Json(json!(s.registry.versions(&name)?)))
}

#[derive(Deserialize)]
struct RunQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    allow_yanked: bool,
}

async fn run_applet(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(reference): Path<String>,
    Query(q): Query<RunQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let r = Reference::parse(&reference)?;
    require(&s, &p, Action::Run(r.name()), "/api/v1/applets/{reference}/run")?;
    let params = if body.is_empty() {
        serde_json::Map::new()
    } else {
        let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_none_or(|ct| ct.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "params must be sent as application/json"));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "the body must be a JSON object of params")),
            Err(e) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}"))),
        }
    };
    let meta = s.registry.resolve(&r, q.allow_yanked)?;
    let package = Arc::new(s.registry.package(&meta)?);
    let mut req = RunRequest::new(package, Caller { user: p.user.clone(), via: "http".into() });
    req.params_json = Some(params);
    req.dry_run = q.dry_run;
    let cancel = req.cancel.clone();
    let rx = s.pool.submit(req).map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many runs waiting; retry later"))?;
    let outcome = match tokio::time::timeout(s.sync_timeout, rx).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the run thread stopped")),
        Err(_) => {
            cancel.cancel();
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the run did not finish within {}s and was cancelled", s.sync_timeout.as_secs()),
            ));
        }
    };
    let logs: Vec<Value> = outcome.logs.iter().map(|l| json!({ "time": l.time, "level": l.level, "message": l.message })).collect();
    let mut body = json!({
        "run_id": outcome.run_id,
        "applet": outcome.applet,
        "hash": outcome.hash,
        "status": outcome.status.name(),
        "duration_ms": outcome.duration.as_millis() as u64,
        "logs": logs,
    });
    match outcome.result {
        Ok(v) => body["result"] = v,
        Err(Error::Params(errs)) => {
            let body = json!({ "error": "invalid params", "fields": errs, "run_id": outcome.run_id });
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
        Err(e) => {
            body["error"] = json!(e.to_string());
            if outcome.status == RunStatus::InvalidApplet {
                return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
            }
        }
    }
    Ok(Json(body).into_response())
}

/// Runs the server until Ctrl-C / SIGTERM. Prints `listening on ADDR` on stderr once bound.
pub async fn serve(state: AppState, cfg: &ServeConfig) -> Result<(), Error> {
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    eprintln!("listening on {addr}");
    let router = app(state, cfg.body_limit);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let ctrl_c = tokio::signal::ctrl_c();
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        })
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")))
}
