//! Runs over HTTP: run an applet (synchronously or as a job), webhook deliveries, jobs and
//! their events, `/metrics`. Everything here parses, calls the run service and renders.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::authn::{Authed, deny, require};
use super::error::ApiError;
use crate::auth::{Action, Principal};
use crate::registry::Reference;
use crate::runtime::RunStatus;
use crate::runtime::context::Caller;
use crate::service::{Accepted, DeliveryError, Job, JobEvent, JobStatus, ServiceError, Source, Submission};

#[derive(Deserialize)]
pub(super) struct RunQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    allow_yanked: bool,
    /// Answer at once with the job id instead of waiting for the result.
    #[serde(default, rename = "async")]
    is_async: bool,
    /// With workers: run on a worker with this tag.
    #[serde(default)]
    tag: Option<String>,
}

/// The params of a run request: a JSON object, or nothing.
fn params_of(headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mt| mt.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "params must be sent as application/json"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(StatusCode::BAD_REQUEST, "the body must be a JSON object of params")),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}"))),
    }
}

/// `202 Accepted` with the job's id and where to follow it.
fn accepted(job_id: &str) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(json!({ "job_id": job_id, "status": JobStatus::Queued }))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/api/v1/jobs/{job_id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(super) async fn run_applet(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(reference): Path<String>,
    Query(q): Query<RunQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let r = Reference::parse(&reference)?;
    require(&s, &p, Action::Run(r.name()), "/api/v1/applets/{reference}/run")?;
    let mut sub = Submission::new(Source::Served(r), Caller { user: p.user.clone(), via: "http".into() });
    sub.params.json = Some(params_of(&headers, &body)?);
    (sub.dry_run, sub.allow_yanked) = (q.dry_run, q.allow_yanked);
    if let Some(tag) = q.tag.filter(|t| !t.is_empty()) {
        crate::util::validate_name(&tag).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, format!("tag `{tag}` {m}")))?;
        sub.worker_tag = Some(tag);
    }
    // Bad params are refused before anything is stored.
    let prepared = s.service.prepare(sub)?;
    let Accepted { job_id, done, awaiting } = s.service.submit(prepared, q.is_async)?;
    if let Some(a) = awaiting {
        // Risky: it waits for approval, however it was asked for.
        let mut resp = accepted(&job_id);
        *resp.body_mut() =
            axum::body::Body::from(json!({ "job_id": job_id, "status": JobStatus::AwaitingApproval, "approval": a }).to_string());
        return Ok(resp);
    }
    if q.is_async {
        return Ok(accepted(&job_id));
    }
    let outcome = match tokio::time::timeout(s.sync_timeout, done).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => return Err(ServiceError::Lost.into()),
        Err(_) => {
            s.service.cancel(&job_id);
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the run did not finish within {}s and was cancelled (job {job_id})", s.sync_timeout.as_secs()),
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
        Err(e) => {
            let fields = match &e {
                crate::error::Error::Params(f) => Some(f.as_slice()),
                _ => None,
            };
            body["error"] = ApiError::object(e.kind(), &e.to_string(), fields);
        }
    }
    // An applet that cannot run here (a module this build lacks) never started: 422, with the
    // run's record, like an applet that does not load.
    let status = if outcome.status == RunStatus::InvalidApplet { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    Ok((status, Json(body)).into_response())
}

/// A webhook delivery: checked signature, payload mapped onto params, run as a job (202).
pub(super) async fn deliver_hook(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let path = format!("/hooks/{name}");
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    match s.service.deliver(&name, header("x-opslet-timestamp"), header("x-opslet-signature"), header("x-opslet-delivery"), &body) {
        Ok(a) => Ok(accepted(&a.job_id)),
        Err(e) => {
            match &e {
                ServiceError::Delivery(DeliveryError::NoSuchHook) => deny(&s, None, &path, "no such hook"),
                ServiceError::Delivery(why) => deny(&s, Some(&format!("hook:{name}")), &path, &why.to_string()),
                _ => {}
            }
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
pub(super) struct JobsQuery {
    status: Option<String>,
    applet: Option<String>,
    user: Option<String>,
    limit: Option<usize>,
    /// Jobs older than this job id (the last of the page before; see the `X-Opslet-Next` header).
    before: Option<String>,
}

/// The job `id`, or `not_found`.
fn job_of(s: &AppState, id: &str) -> Result<Job, ApiError> {
    s.service.jobs()?.get(id)?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))
}

fn may_see(s: &AppState, p: &Principal, job: &Job) -> Result<(), ApiError> {
    if job.user == p.user {
        return Ok(());
    }
    // Those who may decide on a job's approval see it (its plan, its end).
    if let Some(a) = &job.approval
        && s.auth.user(&p.user)?.is_some_and(|u| a.approver(&u))
    {
        return Ok(());
    }
    require(s, p, Action::ReadAllJobs, "/api/v1/jobs/{id}")
}

/// `GET /api/v1/approvals`: the runs waiting for approval, oldest first, each saying whether
/// the caller may decide on it (and why not).
pub(super) async fn list_approvals(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    let service = s.service.clone();
    let user = p.user.clone();
    let pending = tokio::task::spawn_blocking(move || service.pending_approvals(&user))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "listing approvals stopped"))??;
    let items: Vec<Value> =
        pending.into_iter().map(|(job, why)| json!({ "job": job, "may_decide": why.is_none(), "why_not": why })).collect();
    Ok(Json(json!({ "approvals": items })))
}

#[derive(Deserialize, Default)]
pub(super) struct DecisionBody {
    #[serde(default)]
    message: String,
}

/// `POST /api/v1/jobs/{id}/approve` and `/reject`, body `{"message": "why"}`.
pub(super) async fn approve_job(s: State<AppState>, a: Authed, id: Path<String>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    decide(s, a, id, body, true).await
}

pub(super) async fn reject_job(s: State<AppState>, a: Authed, id: Path<String>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    decide(s, a, id, body, false).await
}

async fn decide(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(id): Path<String>,
    body: axum::body::Bytes,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    let b: DecisionBody = if body.is_empty() {
        DecisionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body must be {{\"message\": \"...\"}}: {e}")))?
    };
    let service = s.service.clone();
    let user = p.user.clone();
    let decided = tokio::task::spawn_blocking(move || service.decide(&id, &user, approve, &b.message))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the decision stopped"))?;
    // A refusal is audited by the service (`approval.denied`), for every edge alike.
    Ok(Json(json!(decided?)))
}

pub(super) async fn list_jobs(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<JobsQuery>) -> Result<Response, ApiError> {
    let grants = s.auth.grants()?;
    // Without the right to read all jobs, a caller sees their own.
    let user = if p.allows(&Action::ReadAllJobs, &grants) { q.user.clone() } else { Some(p.user.clone()) };
    let status = match q.status.as_deref().filter(|st| !st.is_empty()) {
        None => None,
        Some(st) => Some(JobStatus::parse(st).ok_or_else(|| {
            let all: Vec<&str> = JobStatus::ALL.iter().map(|s| s.name()).collect();
            ApiError::new(StatusCode::BAD_REQUEST, format!("status `{st}` is not one of {}", all.join(", ")))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    // One more than the page, to know whether there is a next one.
    let mut jobs = s.service.jobs()?.list_before(user.as_deref(), status, q.applet.as_deref(), q.before.as_deref(), limit + 1)?;
    let more = jobs.len() > limit;
    jobs.truncate(limit);
    let next = more.then(|| jobs.last().map(|j| j.id.clone())).flatten();
    Ok(super::paged(json!(jobs), next))
}

pub(super) async fn get_job(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = job_of(&s, &id)?;
    may_see(&s, &p, &job)?;
    Ok(Json(json!(job)))
}

pub(super) async fn cancel_job(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = job_of(&s, &id)?;
    if job.user != p.user {
        require(&s, &p, Action::Admin, "/api/v1/jobs/{id}/cancel")?;
    }
    if job.finished() || !s.service.cancel(&id) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("job {id} already ended ({})", job.status)));
    }
    Ok(Json(json!({ "job_id": id, "cancelling": true })))
}

/// Server-sent events: `status`, `log` and a final `end` with the whole job.
pub(super) async fn job_events(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    // A stream a console session opened ends when that session does (signed out, its account
    // removed, its token revoked), checked every 2 s.
    let session = match headers.get(header::AUTHORIZATION) {
        Some(_) => None,
        None => super::session::cookie(&headers),
    };
    let job = job_of(&s, &id)?;
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
    let live = s.service.jobs()?.subscribe(&id);
    let job = s.service.jobs()?.get(&id)?.unwrap_or(job);
    let (so_far, live) = match live {
        Some((lines, rx)) => (lines, Some(rx)),
        None => (job.logs.clone(), None),
    };
    let mut backlog: Vec<SseEvent> = so_far.iter().map(|l| to_sse(&JobEvent::Log { line: l.clone() })).collect();
    let rx = match live {
        Some(rx) if !job.finished() => {
            // A late subscriber first learns where the job stands.
            backlog.insert(0, to_sse(&JobEvent::Status { status: job.status }));
            Some(rx)
        }
        _ => {
            backlog.push(to_sse(&JobEvent::End { job: Box::new(job) }));
            None
        }
    };
    let backlog = futures_util::stream::iter(backlog.into_iter().map(Ok));
    let sessions = s.sessions.clone();
    let auth = s.auth.clone();
    let live = futures_util::stream::unfold(rx, move |rx| {
        let (session, sessions, auth) = (session.clone(), sessions.clone(), auth.clone());
        async move {
            let mut rx = rx?;
            let still_signed_in = || {
                session.as_ref().is_none_or(|sid| {
                    sessions.get(sid).is_some_and(|sess| {
                        sess.token.as_ref().is_none_or(|t| auth.token_live(t).is_ok()) && auth.user(&sess.user).ok().flatten().is_some()
                    })
                })
            };
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Ok(ev) => {
                            let end = matches!(ev, JobEvent::End { .. });
                            let item = Ok(to_sse(&ev));
                            return Some((item, if end { None } else { Some(rx) }));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                        if !still_signed_in() {
                            return None;
                        }
                    }
                }
            }
        }
    });
    Ok(Sse::new(futures_util::StreamExt::chain(backlog, live)).keep_alive(KeepAlive::default()))
}

pub(super) async fn readyz(State(s): State<AppState>, _: Authed) -> Result<&'static str, ApiError> {
    s.registry.list().map(|_| "ready").map_err(ApiError::from)
}

/// The workers the control plane hears from (`serve --queue nats://…`): `{"workers": null}`
/// when runs execute on this server itself.
pub(super) async fn list_workers(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    super::authn::require(&s, &p, Action::ReadRegistry, "/api/v1/workers")?;
    Ok(Json(json!({ "workers": s.service.workers() })))
}

pub(super) async fn metrics(State(s): State<AppState>, Authed(_p): Authed) -> Result<Response, ApiError> {
    let mut text = s.service.metrics()?.render();
    if let Some(workers) = s.service.workers() {
        text.push_str(&crate::service::queue::control::render_workers(&workers));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
