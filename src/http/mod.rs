//! `opslet serve`: the HTTP API over the registry and the runtime (axum).
//!
//! `app` builds the router from an `AppState`, so tests can drive it over a real socket or
//! directly. Every route but `/healthz` needs a bearer token; a refused request is audited.

pub mod dev;
pub mod hooks;
pub mod jobs;
mod pool;
pub mod session;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub use pool::RunPool;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use jobs::{Job, JobEvent, Jobs};

use crate::runtime::RunOutcome;
use crate::runtime::context::LogLine;

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
    pub jobs: Jobs,
    pub metrics: Arc<Metrics>,
    pub hooks: hooks::Hooks,
    /// `--dev DIR`: applets served from folders, ahead of the registry.
    pub dev: Option<dev::DevApplets>,
    /// Most runs of one applet queued or running at once (0: no limit beyond the queue).
    pub applet_limit: usize,
    /// Most runs of one caller queued or running at once (0: no limit beyond the queue).
    pub user_limit: usize,
    pub per_applet: Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
    /// How long a synchronous run request waits for its run.
    pub sync_timeout: Duration,
    /// Web console sessions.
    pub sessions: Arc<session::Sessions>,
}

/// Server settings (flags of `opslet serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub run_threads: usize,
    pub queue: usize,
    pub body_limit: usize,
    pub sync_timeout: Duration,
    /// How long running jobs may take to finish at shutdown before they are cancelled.
    pub shutdown_grace: Duration,
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

    fn message(&self) -> String {
        self.body["error"].as_str().unwrap_or_default().to_string()
    }
}

/// Param errors with the values of secret params (as given) removed.
fn redact_errors(
    package: &crate::applet::AppletPackage,
    given: &serde_json::Map<String, Value>,
    errs: Vec<crate::error::ParamError>,
) -> Vec<crate::error::ParamError> {
    let secrets: Vec<String> = given
        .iter()
        .filter(|(k, _)| package.manifest.params.get(*k).is_some_and(|s| s.secret))
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    let r = crate::runtime::redact::Redactor::new(secrets);
    errs.into_iter().map(|e| crate::error::ParamError { param: e.param, message: r.apply(&e.message).into_owned() }).collect()
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
        // No bearer token: the web console's session cookie.
        if header.is_none()
            && let Some(sid) = session::cookie(&parts.headers)
        {
            let Some(sess) = state.sessions.get(&sid) else {
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {}", crate::auth::AuthError::NoSession)));
            };
            if let Some(token) = &sess.token
                && let Err(e) = state.auth.token_live(token)
            {
                state.sessions.remove(&sid);
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: the session's token: {e}")));
            }
            let safe = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
            let csrf = parts.headers.get(session::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !safe && !crate::auth::same_secret(csrf, &sess.csrf) {
                let why = crate::auth::AuthError::Csrf.to_string();
                // Rate-limited like anonymous refusals: another page could make a signed-in
                // browser send these in bulk.
                deny(state, None, parts.uri.path(), &format!("{} (session of {})", why, sess.user));
                return Err(ApiError::new(StatusCode::FORBIDDEN, format!("forbidden: {why}")));
            }
            return match state.auth.principal_of(&sess.user, "session") {
                Ok(p) => Ok(Authed(p)),
                Err(e) => {
                    state.sessions.remove(&sid);
                    Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")))
                }
            };
        }
        match state.auth.authenticate(header) {
            Ok(p) => Ok(Authed(p)),
            Err(e) => {
                deny(state, None, parts.uri.path(), &e.to_string());
                Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")))
            }
        }
    }
}

/// Records a refused request. Paths and reasons are cut to 256 bytes, and refusals without a
/// valid caller are limited to 20 records a second (the rest are counted into the next record),
/// so anonymous requests cannot fill the audit log.
fn deny(state: &AppState, who: Option<&str>, path: &str, why: &str) {
    use std::sync::atomic::Ordering;
    static WINDOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    static IN_WINDOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if who.is_none() {
        let now = chrono::Utc::now().timestamp();
        if WINDOW.swap(now, Ordering::Relaxed) != now {
            IN_WINDOW.store(0, Ordering::Relaxed);
        }
        if IN_WINDOW.fetch_add(1, Ordering::Relaxed) >= 20 {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let cut = |s: &str| {
        let mut end = s.len().min(256);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    let _ = state.runtime.store().map(|s| {
        s.audit().append(AuditEvent {
            kind: "http.denied".into(),
            actor: who.map(cut),
            via: Some("http".into()),
            status: Some("denied".into()),
            data: json!({ "path": cut(path), "reason": cut(why), "suppressed_before": suppressed }),
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

/// The OpenAPI document of every route below (tests/openapi.rs keeps the two in step).
pub const OPENAPI: &str = include_str!("openapi.json");

/// API answers are per caller: never cached (a shared browser keeps nothing after sign-out).
async fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    resp
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
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(|_: Authed| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/hooks/{name}", post(deliver_hook))
        .route("/metrics", get(metrics))
        .route("/api/v1/registry/publish", post(publish_bundle))
        .route("/api/v1/applets/{name}/promote", post(promote))
        .route("/api/v1/applets/{name}/rollback", post(rollback))
        .route("/api/v1/applets/{name}/yank", post(yank))
        .route("/api/v1/audit", get(audit_list))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{name}", delete(remove_user))
        .route("/api/v1/users/{name}/tokens", post(create_token))
        .route("/api/v1/tokens", get(list_tokens))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/grants", get(list_grants).post(add_grant).delete(remove_grant))
        .route("/api/v1/hooks", get(list_hooks).post(add_hook))
        .route("/api/v1/hooks/{name}", delete(remove_hook))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/events", get(job_events))
        .route("/api/v1/session", get(session_show).post(session_start).delete(session_end))
        .route("/api/v1/cmdb/hosts", get(cmdb_hosts))
        .layer(axum::middleware::map_response(no_store))
        .merge(ui::router())
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
    /// Answer at once with the job id instead of waiting for the result.
    #[serde(default, rename = "async")]
    is_async: bool,
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
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|mt| mt.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "params must be sent as application/json"));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "the body must be a JSON object of params")),
            Err(e) => return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}"))),
        }
    };
    let dev = match (&s.dev, &r) {
        (Some(dev), Reference::Current(name)) => dev.get(name),
        _ => None,
    };
    let is_dev = matches!(dev, Some(Ok(_)));
    let package = match dev {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            return Err(ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, body: json!({ "error": "invalid applet", "problems": [e] }) });
        }
        None => {
            let meta = s.registry.resolve(&r, q.allow_yanked)?;
            Arc::new(s.registry.package(&meta)?)
        }
    };
    // Bad params are refused before anything is stored.
    let validated = crate::applet::params::resolve(&package.manifest, Some(&params), &[]).map_err(|errs| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({ "error": "invalid params", "fields": redact_errors(&package, &params, errs) }),
    })?;
    // Host selectors must pick hosts: said now, per field, not when the job runs.
    let validated = s.runtime.check_selectors(&package.manifest, validated).map_err(|errs| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({ "error": "invalid params", "fields": redact_errors(&package, &params, errs) }),
    })?;
    let shown = Value::Object(crate::applet::params::redacted(&package.manifest, &validated));
    let mut req = RunRequest::new(Arc::clone(&package), Caller { user: p.user.clone(), via: "http".into() });
    req.dry_run = q.dry_run;
    let mut job = Job::queued(&req, &reference, shown.as_object().cloned().unwrap_or_default());
    (job.allow_yanked, job.dev, job.is_async) = (q.allow_yanked, is_dev, q.is_async);
    let done = accept_and_start(&s, &job, req, params)?;
    if q.is_async {
        let mut resp = (StatusCode::ACCEPTED, Json(json!({ "job_id": job.id, "status": "queued" }))).into_response();
        if let Ok(v) = header::HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    let outcome = match tokio::time::timeout(s.sync_timeout, done).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the run thread stopped")),
        Err(_) => {
            s.jobs.cancel(&job.id);
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the run did not finish within {}s and was cancelled (job {})", s.sync_timeout.as_secs(), job.id),
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

/// A webhook delivery: checked signature, payload mapped onto params, run as a job (202).
async fn deliver_hook(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let path = format!("/hooks/{name}");
    // An unknown hook is refused like a bad signature, so hook names cannot be probed.
    let Some(hook) = s.hooks.get(&name)? else {
        deny(&s, None, &path, "no such hook");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "delivery refused: the signature does not match"));
    };
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Err(e) = s.hooks.verify(&hook, header("x-opslet-timestamp"), header("x-opslet-signature"), &body) {
        deny(&s, Some(&format!("hook:{name}")), &path, &e.to_string());
        let status = if e == hooks::DeliveryError::Replayed { StatusCode::CONFLICT } else { StatusCode::UNAUTHORIZED };
        return Err(ApiError::new(status, format!("delivery refused: {e}")));
    }
    let payload: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the payload is not valid JSON: {e}")))?;
    let params = hooks::Hooks::params(&hook, &payload);
    let r = Reference::parse(&hook.applet)?;
    let meta = s.registry.resolve(&r, false)?;
    let package = Arc::new(s.registry.package(&meta)?);
    let user = format!("hook:{name}");
    let req = RunRequest::new(Arc::clone(&package), Caller { user: user.clone(), via: "hook".into() });
    let shown: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v)| {
            (k.clone(), if package.manifest.params.get(k).is_some_and(|spec| spec.secret) { json!("<redacted>") } else { v.clone() })
        })
        .collect();
    let mut job = Job::queued(&req, &hook.applet, shown);
    job.is_async = true;
    accept_and_start(&s, &job, req, params)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job.id, "status": "queued" }))).into_response())
}

/// Stores a job as `queued` (durably), then queues its run; a run that cannot be queued leaves
/// the job `rejected` with the reason.
fn accept_and_start(
    s: &AppState,
    job: &Job,
    mut req: RunRequest,
    params: serde_json::Map<String, Value>,
) -> Result<tokio::sync::oneshot::Receiver<RunOutcome>, ApiError> {
    s.jobs.accept(job, &params, req.cancel.clone())?;
    req.params_json = Some(params);
    start_job(s, req).inspect_err(|e| {
        let _ = s.jobs.finish(&job.id, "rejected", None, Some(e.message()), Vec::new());
    })
}

/// Queues a job's run on a run thread; the receiver yields its outcome when it ends.
fn start_job(s: &AppState, mut req: RunRequest) -> Result<tokio::sync::oneshot::Receiver<RunOutcome>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (jobs, runtime, id, applet) = (s.jobs.clone(), s.runtime.clone(), req.run_id.clone(), req.package.id());
    let sink_jobs = jobs.clone();
    let sink_id = id.clone();
    req.log_sink = Some(Arc::new(move |line: &LogLine| sink_jobs.log(&sink_id, line)));
    let name = applet.split('@').next().unwrap_or_default().to_string();
    // Per applet and per caller: one applet or one user cannot take every run slot.
    let keys = [format!("applet:{name}"), format!("user:{}", req.caller.user)];
    {
        let mut per = s.per_applet.lock();
        let limits = [s.applet_limit, s.user_limit];
        for (key, limit) in keys.iter().zip(limits) {
            if limit > 0 && per.get(key).copied().unwrap_or(0) >= limit {
                let what =
                    if key.starts_with("applet:") { format!("{name} already has") } else { format!("{} already has", req.caller.user) };
                let per_what = if key.starts_with("applet:") { "applet" } else { "caller" };
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{what} {limit} runs queued or running (the limit per {per_what}); retry later"),
                ));
            }
        }
        for key in &keys {
            *per.entry(key.clone()).or_default() += 1;
        }
    }
    let per_applet = Arc::clone(&s.per_applet);
    let release = move || {
        let mut per = per_applet.lock();
        for key in &keys {
            if let Some(n) = per.get_mut(key) {
                *n = n.saturating_sub(1);
            }
        }
    };
    let release_on_reject = release.clone();
    let metrics = Arc::clone(&s.metrics);
    let m = Arc::clone(&metrics);
    let work: pool::Work = Box::new(move |rt| {
        use std::sync::atomic::Ordering;
        metrics.queued.fetch_sub(1, Ordering::Relaxed);
        metrics.running.fetch_add(1, Ordering::Relaxed);
        let _ = jobs.started(&id, &applet);
        let outcome = rt.block_on(runtime.run(req));
        metrics.running.fetch_sub(1, Ordering::Relaxed);
        {
            let name = applet.split('@').next().unwrap_or_default().to_string();
            let mut runs = metrics.runs.lock();
            let e = runs.entry((name, outcome.status.name().to_string())).or_default();
            e.0 += 1;
            e.1 += outcome.duration.as_secs_f64();
        }
        let (result, error) = match &outcome.result {
            Ok(v) => (Some(v.clone()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let _ = jobs.finish(&id, outcome.status.name(), result, error, outcome.logs.clone());
        release();
        tracing::info!(job = %id, applet = %applet, status = outcome.status.name(), duration_ms = outcome.duration.as_millis() as u64, "job ended");
        let _ = tx.send(outcome);
    });
    m.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.pool.submit(work).map_err(|_| {
        m.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        release_on_reject();
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many runs waiting; retry later")
    })?;
    Ok(rx)
}

/// Runs the jobs a stopped server left queued; marks the ones it left running interrupted.
pub fn recover_jobs(s: &AppState) -> Result<(usize, usize), Error> {
    let queued = s.jobs.recover()?;
    let mut restarted = 0;
    let grants = s.auth.grants()?;
    for job in &queued {
        if job.dev || !job.is_async {
            let why = if job.dev {
                "a dev applet's job is not re-run after a restart"
            } else {
                "the server stopped before this synchronous run started"
            };
            s.jobs.finish(&job.id, "interrupted", None, Some(why.into()), Vec::new())?;
            continue;
        }
        // The caller must still exist and still be allowed to run it (hooks run as `hook:NAME`).
        let name = job.reference.split('@').next().unwrap_or_default();
        let allowed = match job.user.strip_prefix("hook:") {
            Some(hook) => s.hooks.get(hook)?.is_some(),
            None => s.auth.user(&job.user)?.is_some_and(|u| {
                Principal { user: u.name, role: u.role, groups: u.groups, token_id: String::new() }.allows(&Action::Run(name), &grants)
            }),
        };
        if !allowed {
            s.jobs.finish(&job.id, "rejected", None, Some(format!("{} may no longer run {name}", job.user)), Vec::new())?;
            continue;
        }
        // Exactly the version that was accepted, and only if it may still run.
        let reference =
            if job.hash.is_empty() { Reference::parse(&job.reference)? } else { Reference::Hash(name.to_string(), job.hash.clone()) };
        let started = s.registry.resolve(&reference, job.allow_yanked).and_then(|meta| s.registry.package(&meta));
        let package = match started {
            Ok(p) => Arc::new(p),
            Err(e) => {
                s.jobs.finish(&job.id, "error", None, Some(format!("could not be restarted: {e}")), Vec::new())?;
                continue;
            }
        };
        let mut req = RunRequest::new(package, Caller { user: job.user.clone(), via: "http".into() });
        req.run_id = job.id.clone();
        req.params_json = Some(s.jobs.raw_params(&job.id)?);
        req.dry_run = job.dry_run;
        s.jobs.relive(&job.id, req.cancel.clone());
        if start_job(s, req).is_err() {
            s.jobs.finish(&job.id, "rejected", None, Some("the run queue was full after a restart".into()), Vec::new())?;
        } else {
            restarted += 1;
        }
    }
    Ok((restarted, queued.len()))
}

#[derive(Deserialize)]
struct JobsQuery {
    status: Option<String>,
    applet: Option<String>,
    user: Option<String>,
    limit: Option<usize>,
}

fn may_see(s: &AppState, p: &Principal, job: &Job) -> Result<(), ApiError> {
    if job.user == p.user {
        return Ok(());
    }
    require(s, p, Action::ReadAllJobs, "/api/v1/jobs/{id}")
}

async fn list_jobs(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<JobsQuery>) -> Result<Json<Value>, ApiError> {
    let grants = s.auth.grants()?;
    // Without the right to read all jobs, a caller sees their own.
    let user = if p.allows(&Action::ReadAllJobs, &grants) { q.user.clone() } else { Some(p.user.clone()) };
    let jobs = s.jobs.list(user.as_deref(), q.status.as_deref(), q.applet.as_deref(), q.limit.unwrap_or(100).min(1000))?;
    Ok(Json(json!(jobs)))
}

async fn get_job(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = s.jobs.get(&id)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))?;
    may_see(&s, &p, &job)?;
    Ok(Json(json!(job)))
}

async fn cancel_job(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = s.jobs.get(&id)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))?;
    if job.user != p.user {
        require(&s, &p, Action::Admin, "/api/v1/jobs/{id}/cancel")?;
    }
    if job.finished() || !s.jobs.cancel(&id) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("job {id} already ended ({})", job.status)));
    }
    Ok(Json(json!({ "job_id": id, "cancelling": true })))
}

/// Server-sent events: `status`, `log` and a final `end` with the whole job.
async fn job_events(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    let job = s.jobs.get(&id)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))?;
    may_see(&s, &p, &job)?;
    let to_sse = |ev: &JobEvent| {
        let name = match ev {
            JobEvent::Status { .. } => "status",
            JobEvent::Log { .. } => "log",
            JobEvent::End { .. } => "end",
        };
        SseEvent::default().event(name).json_data(ev).unwrap_or_default()
    };
    // Subscribe first, then read the stored job, so no event falls between the two.
    let live = s.jobs.subscribe(&id);
    let job = s.jobs.get(&id)?.unwrap_or(job);
    let (so_far, live) = match live {
        Some((lines, rx)) => (lines, Some(rx)),
        None => (job.logs.clone(), None),
    };
    let mut backlog: Vec<SseEvent> = so_far.iter().map(|l| to_sse(&JobEvent::Log { line: l.clone() })).collect();
    let rx = match live {
        Some(rx) if !job.finished() => {
            // A late subscriber first learns where the job stands.
            backlog.insert(0, to_sse(&JobEvent::Status { status: job.status.clone() }));
            Some(rx)
        }
        _ => {
            backlog.push(to_sse(&JobEvent::End { job: Box::new(job) }));
            None
        }
    };
    let backlog = futures_util::stream::iter(backlog.into_iter().map(Ok));
    let live = futures_util::stream::unfold(rx, move |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let end = matches!(ev, JobEvent::End { .. });
                    let item = Ok(to_sse(&ev));
                    return Some((item, if end { None } else { Some(rx) }));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(futures_util::StreamExt::chain(backlog, live)).keep_alive(KeepAlive::default()))
}

/// Counters for `/metrics` (Prometheus text format).
#[derive(Default)]
pub struct Metrics {
    /// (applet, status) -> (runs, total seconds).
    runs: parking_lot::Mutex<std::collections::BTreeMap<(String, String), (u64, f64)>>,
    queued: std::sync::atomic::AtomicI64,
    running: std::sync::atomic::AtomicI64,
}

impl Metrics {
    fn render(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering;
        let mut out = String::new();
        out.push_str("# HELP opslet_runs_total Runs finished, by applet and status.\n# TYPE opslet_runs_total counter\n");
        let runs = self.runs.lock();
        for ((applet, status), (n, _)) in runs.iter() {
            let _ = writeln!(out, "opslet_runs_total{{applet=\"{applet}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP opslet_run_duration_seconds Time runs took, by applet.\n# TYPE opslet_run_duration_seconds summary\n");
        let mut by_applet: std::collections::BTreeMap<&str, (u64, f64)> = std::collections::BTreeMap::new();
        for ((applet, _), (n, secs)) in runs.iter() {
            let e = by_applet.entry(applet).or_default();
            e.0 += n;
            e.1 += secs;
        }
        for (applet, (n, secs)) in by_applet {
            let _ = writeln!(out, "opslet_run_duration_seconds_sum{{applet=\"{applet}\"}} {secs:.6}");
            let _ = writeln!(out, "opslet_run_duration_seconds_count{{applet=\"{applet}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP opslet_queue_depth Runs waiting for a run thread.\n# TYPE opslet_queue_depth gauge\nopslet_queue_depth {}",
            self.queued.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP opslet_runs_in_progress Runs executing now.\n# TYPE opslet_runs_in_progress gauge\nopslet_runs_in_progress {}",
            self.running.load(Ordering::Relaxed)
        );
        out
    }
}

async fn readyz(State(s): State<AppState>, _: Authed) -> Result<&'static str, ApiError> {
    s.registry.list().map(|_| "ready").map_err(ApiError::from)
}

async fn metrics(State(s): State<AppState>, Authed(_p): Authed) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

#[derive(Deserialize)]
struct PublishQuery {
    #[serde(default)]
    allow_downgrade: bool,
    message: Option<String>,
}

/// Publishes an uploaded bundle (as written by `opslet export`) under the caller's name.
async fn publish_bundle(
    State(s): State<AppState>,
    Authed(p): Authed,
    Query(q): Query<PublishQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&s, &p, Action::Publish, "/api/v1/registry/publish")?;
    let (claimed, pkg) = crate::registry::bundle::decode(&body)?;
    pkg.check_modules(&crate::modules::ModuleRegistry::builtin())?;
    let message = q.message.unwrap_or(claimed.message);
    let out = s.registry.publish(&pkg, &p.user, &message, q.allow_downgrade)?;
    s.registry.flush()?;
    Ok(match out {
        crate::registry::Published::New(v) => (StatusCode::CREATED, Json(json!({ "published": v }))).into_response(),
        crate::registry::Published::Unchanged(v) => (StatusCode::OK, Json(json!({ "unchanged": v }))).into_response(),
    })
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<String>,
    #[serde(default)]
    undo: bool,
}

fn version_of(q: &VersionQuery) -> Result<semver::Version, ApiError> {
    let v = q.version.as_deref().ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "give ?version=X.Y.Z"))?;
    semver::Version::parse(v).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("`{v}` is not a version: {e}")))
}

async fn promote(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::Publish, "/api/v1/applets/{name}/promote")?;
    let a = s.registry.promote(&name, &version_of(&q)?, &p.user)?;
    s.registry.flush()?;
    Ok(Json(json!(a)))
}

async fn rollback(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::Publish, "/api/v1/applets/{name}/rollback")?;
    let (from, to) = s.registry.rollback(&name, &p.user)?;
    s.registry.flush()?;
    Ok(Json(json!({ "from": from, "to": to })))
}

async fn yank(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::Publish, "/api/v1/applets/{name}/yank")?;
    let v = s.registry.yank(&name, &version_of(&q)?, q.undo, &p.user)?;
    s.registry.flush()?;
    Ok(Json(json!(v)))
}

#[derive(Deserialize)]
struct AuditQuery {
    applet: Option<String>,
    caller: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    run: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<usize>,
}

async fn audit_list(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<AuditQuery>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadAudit, "/api/v1/audit")?;
    let store = s.runtime.store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    let filter = crate::store::audit::Filter {
        applet: q.applet,
        actor: q.caller,
        status: q.status,
        kind: q.kind,
        run_id: q.run,
        since: q.since,
        until: q.until,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
    };
    Ok(Json(json!(store.audit().list(&filter)?)))
}

async fn audit_verify(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadAudit, "/api/v1/audit/verify")?;
    let store = s.runtime.store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    let r = store.audit().verify()?;
    Ok(Json(json!({ "records": r.records, "head": r.head, "intact": r.first_bad.is_none(), "first_bad": r.first_bad })))
}

// ---- administration (admin only): accounts, tokens, grants, hooks -----------------------------

fn admin(s: &AppState, p: &Principal, path: &str) -> Result<(), ApiError> {
    require(s, p, Action::Admin, path)
}

fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not what this route takes: {e}")))
}

async fn list_users(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/users")?;
    Ok(Json(json!(s.auth.users()?)))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    role: crate::auth::Role,
    #[serde(default)]
    groups: Vec<String>,
}

async fn add_user(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/users")?;
    let u: NewUser = body_json(&body)?;
    let user = s.auth.add_user(&u.name, u.role, &u.groups, &p.user)?;
    s.auth.flush()?;
    Ok((StatusCode::CREATED, Json(json!(user))).into_response())
}

async fn remove_user(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/users/{name}")?;
    let revoked = s.auth.remove_user(&name, &p.user)?;
    s.sessions.remove_user(&name);
    s.auth.flush()?;
    Ok(Json(json!({ "removed": name, "tokens_revoked": revoked })))
}

#[derive(Deserialize, Default)]
struct NewToken {
    /// Lifetime like "30d".
    expires: Option<String>,
    #[serde(default)]
    label: String,
}

/// Creates a token; the answer is the only time its secret is shown.
async fn create_token(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/users/{name}/tokens")?;
    let t: NewToken = if body.is_empty() { NewToken::default() } else { body_json(&body)? };
    let expires_at = match t.expires {
        None => None,
        Some(d) => {
            let d = humantime::parse_duration(&d).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("expires `{d}`: {e}")))?;
            Some(chrono::Utc::now() + chrono::Duration::from_std(d).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?)
        }
    };
    let (secret, rec) = s.auth.create_token(&name, expires_at, &t.label, &p.user)?;
    s.auth.flush()?;
    Ok((StatusCode::CREATED, Json(json!({ "token": secret, "id": rec.id, "user": rec.user, "expires_at": rec.expires_at })))
        .into_response())
}

async fn list_tokens(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/tokens")?;
    let tokens = s.auth.tokens(None)?;
    Ok(Json(json!(tokens.iter().map(|t| json!({ "id": t.id, "user": t.user, "label": t.label, "created_at": t.created_at, "expires_at": t.expires_at, "revoked": t.revoked })).collect::<Vec<_>>())))
}

async fn revoke_token(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/tokens/{id}")?;
    let t = s.auth.revoke_token(&id, &p.user)?;
    s.auth.flush()?;
    Ok(Json(json!({ "revoked": t.id, "user": t.user })))
}

async fn list_grants(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/grants")?;
    Ok(Json(json!(s.auth.grants()?)))
}

async fn add_grant(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/grants")?;
    let g: crate::auth::Grant = body_json(&body)?;
    let g = s.auth.add_grant(&g.subject, &g.pattern, &p.user)?;
    s.auth.flush()?;
    Ok((StatusCode::CREATED, Json(json!(g))).into_response())
}

async fn remove_grant(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/grants")?;
    let g: crate::auth::Grant = body_json(&body)?;
    s.auth.remove_grant(&g.subject, &g.pattern, &p.user)?;
    s.auth.flush()?;
    Ok(Json(json!({ "removed": g })))
}

async fn list_hooks(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/hooks")?;
    let hooks = s.hooks.list()?;
    Ok(Json(json!(
        hooks.iter().map(|h| json!({ "name": h.name, "applet": h.applet, "map": h.map, "created_at": h.created_at })).collect::<Vec<_>>()
    )))
}

#[derive(Deserialize)]
struct NewHook {
    name: String,
    applet: String,
    /// `param=$.path` entries.
    #[serde(default)]
    map: Vec<String>,
}

/// Creates a hook; the answer is the only time its secret is shown.
async fn add_hook(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/hooks")?;
    let h: NewHook = body_json(&body)?;
    let hook = s.hooks.add(&h.name, &h.applet, &h.map, &p.user)?;
    s.registry.flush()?;
    Ok((StatusCode::CREATED, Json(json!({ "name": hook.name, "applet": hook.applet, "map": hook.map, "secret": hook.secret })))
        .into_response())
}

async fn remove_hook(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/hooks/{name}")?;
    s.hooks.remove(&name, &p.user)?;
    s.registry.flush()?;
    Ok(Json(json!({ "removed": name })))
}

/// Runs the server until Ctrl-C / SIGTERM. Prints `listening on ADDR` on stderr once bound.
pub async fn serve(state: AppState, cfg: &ServeConfig) -> Result<(), Error> {
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    eprintln!("listening on {addr}");
    let router = app(state.clone(), cfg.body_limit);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let ctrl_c = tokio::signal::ctrl_c();
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        })
        .await
        .map_err(|e| Error::Internal(format!("server: {e}")));
    drain(&state, cfg.shutdown_grace).await;
    served
}

/// Shutdown: queued jobs stay queued for the next start; running ones get `grace` to finish,
/// then are cancelled (and recorded as such).
async fn drain(s: &AppState, grace: Duration) {
    use std::sync::atomic::Ordering;
    s.pool.drain();
    let deadline = tokio::time::Instant::now() + grace;
    while s.metrics.running.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if s.metrics.running.load(Ordering::Relaxed) > 0 {
        let n = s.jobs.cancel_all();
        tracing::warn!(jobs = n, "shutdown: cancelling runs that did not finish in time");
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while s.metrics.running.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---- web console sessions, cmdb -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

fn session_body(p: &Principal, csrf: &str) -> Value {
    json!({ "user": p.user, "role": p.role.name(), "groups": p.groups, "csrf": csrf })
}

/// Signs in with `{user, password}` or `{token}`; answers with the CSRF token and sets the cookie.
async fn session_start(State(s): State<AppState>, headers: HeaderMap, Json(body): Json<SignIn>) -> Result<Response, ApiError> {
    let principal = match (&body.user, &body.password, &body.token) {
        (Some(user), Some(password), None) => {
            if user.is_empty() || user.len() > session::MAX_USER || password.len() > 1024 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "the user name (up to 64 bytes) or the password (up to 1024) is too long or empty",
                ));
            }
            if !s.sessions.attempt(user) {
                deny(&s, None, "/api/v1/session", &format!("sign-in for {user} throttled after repeated attempts"));
                return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many sign-in attempts for this user; wait a minute"));
            }
            // Hash checks are slow and large on purpose: a few at a time, off the async workers.
            let _permit =
                s.sessions.hashing.acquire().await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let (auth, user2, password) = (s.auth.clone(), user.clone(), password.clone());
            let checked = tokio::task::spawn_blocking(move || auth.check_password(&user2, &password))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            match checked {
                Ok(p) => {
                    s.sessions.succeeded(user);
                    p
                }
                Err(e) => {
                    deny(&s, None, "/api/v1/session", &format!("sign-in as {user}: {e}"));
                    return Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")));
                }
            }
        }
        (None, None, Some(token)) => match s.auth.authenticate(Some(&format!("Bearer {token}"))) {
            Ok(p) => p,
            Err(e) => {
                deny(&s, None, "/api/v1/session", &e.to_string());
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")));
            }
        },
        _ => return Err(ApiError::new(StatusCode::BAD_REQUEST, "send {\"user\": ..., \"password\": ...} or {\"token\": ...}")),
    };
    // A token's session ends with the token (revoked: at the next request; expiring: then).
    let token = (!principal.token_id.is_empty() && principal.token_id != "password").then(|| principal.token_id.clone());
    let until = token.as_deref().and_then(|t| s.auth.token_expiry(t)).map(|exp| (exp - chrono::Utc::now()).to_std().unwrap_or_default());
    let (sid, csrf) = s.sessions.create(&principal.user, token, until);
    if let Some(store) = s.runtime.store() {
        let _ = store.audit().append(AuditEvent {
            kind: "http.signin".into(),
            actor: Some(principal.user.clone()),
            via: Some("http".into()),
            status: Some("ok".into()),
            data: json!({ "with": if body.token.is_some() { "token" } else { "password" } }),
            ..AuditEvent::default()
        });
    }
    let secure = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let mut resp = Json(session_body(&principal, &csrf)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&session::set_cookie(Some(&sid), secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Who is signed in (and, for a cookie session, its CSRF token, so a reloaded page can go on).
async fn session_show(State(s): State<AppState>, Authed(p): Authed, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let csrf = session::cookie(&headers).and_then(|sid| s.sessions.get(&sid)).map(|sess| sess.csrf).unwrap_or_default();
    Ok(Json(session_body(&p, &csrf)))
}

async fn session_end(State(s): State<AppState>, Authed(_p): Authed, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(sid) = session::cookie(&headers) {
        s.sessions.remove(&sid);
    }
    let mut resp = Json(json!({ "signed_out": true })).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&session::set_cookie(None, false)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct HostsQuery {
    selector: Option<String>,
}

/// cmdb hosts, all or those a selector picks (an empty list when it picks none).
async fn cmdb_hosts(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<HostsQuery>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/cmdb/hosts")?;
    let store = s.runtime.store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    let cmdb = crate::cmdb::Cmdb::new(store.clone())?;
    let hosts = match q.selector.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => cmdb.hosts()?,
        Some(sel) => match cmdb.select(sel) {
            Ok(h) => h,
            Err(Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        },
    };
    // Free attributes stay out: imported inventories can carry anything in them.
    let shown: Vec<Value> = hosts
        .into_iter()
        .map(|h| json!({ "name": h.name, "address": h.address, "port": h.port, "groups": h.groups, "tags": h.tags, "pinned": h.host_key.is_some() }))
        .collect();
    Ok(Json(json!(shown)))
}
