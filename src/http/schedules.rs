//! Schedules over HTTP (docs/schedules.md): every account lists its own (admins all); saving,
//! pausing, resuming, removing and running now a schedule of one's own needs the grant to run
//! its applet, another owner's needs admin. Refusals are audited like every route's.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::admin::body_json;
use super::authn::{Authed, require};
use super::error::ApiError;
use crate::auth::{Action, Principal};
use crate::registry::Reference;
use crate::service::schedule::{self, NewSchedule, Schedule, ScheduleError, Schedules};

fn schedules(s: &AppState) -> Result<Schedules, ApiError> {
    let store = s.service.runtime().store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    Ok(Schedules::new(store.clone())?)
}

/// The schedule called `name`, once `p` may act on it (see `schedule::needed`).
fn acting_on(s: &AppState, p: &Principal, name: &str, path: &str) -> Result<(Schedules, Schedule), ApiError> {
    let all = schedules(s)?;
    let sch = all.require(name)?;
    let applet = sch.applet_name();
    require(s, p, schedule::needed(&p.user, &sch.owner, &applet), path)?;
    Ok((all, sch))
}

/// The schedules the caller sees: their own, or every one for an admin.
pub(super) async fn list(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/schedules")?;
    let list: Vec<Value> = schedules(&s)?.list()?.iter().filter(|sch| schedule::visible(&p, sch)).map(Schedule::view).collect();
    Ok(Json(json!(list)))
}

pub(super) async fn show(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let sch = schedules(&s)?.require(&name)?;
    if sch.owner != p.user {
        require(&s, &p, Action::Admin, "/api/v1/schedules/{name}")?;
    }
    Ok(Json(sch.view()))
}

/// Saves a schedule (`replace: true` replaces one of that name). A bad field is answered 422
/// `invalid_schedule` with every bad field in `fields`.
pub(super) async fn add(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let path = "/api/v1/schedules";
    let new: NewSchedule = body_json(&body)?;
    // Allowed first; an applet that is not a reference saves nothing and is answered by field,
    // but only to whom may name any owner (the answer about the owner tells whether it exists).
    let owner = new.owner.as_deref().map(str::trim).filter(|o| !o.is_empty()).unwrap_or(&p.user);
    match Reference::parse(new.applet.trim()) {
        Ok(r) => require(&s, &p, schedule::needed(&p.user, owner, r.name()), path)?,
        Err(_) if owner != p.user => require(&s, &p, Action::Admin, path)?,
        Err(_) => {}
    }
    let all = schedules(&s)?;
    if new.replace
        && let Some(old) = all.get(new.name.trim())?
    {
        let applet = old.applet_name();
        require(&s, &p, schedule::needed(&p.user, &old.owner, &applet), path)?;
    }
    let sch = all.add(&s.service, new, &p.user, "http").map_err(|e| match e {
        ScheduleError::Invalid(fields) => {
            let message = format!(
                "invalid schedule: {}",
                fields.iter().map(|f| format!("{}: {}", f.param, f.message)).collect::<Vec<_>>().join("; ")
            );
            ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid_schedule", message, fields: Some(fields) }
        }
        ScheduleError::Core(e) => e.into(),
    })?;
    let mut resp = (StatusCode::CREATED, Json(sch.view())).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/api/v1/schedules/{}", sch.name)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub(super) async fn remove(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let (all, _) = acting_on(&s, &p, &name, "/api/v1/schedules/{name}")?;
    all.remove(&name, &p.user, "http")?;
    Ok(Json(json!({ "removed": name })))
}

pub(super) async fn pause(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let (all, _) = acting_on(&s, &p, &name, "/api/v1/schedules/{name}/pause")?;
    Ok(Json(all.pause(&name, &p.user, "http")?.view()))
}

pub(super) async fn resume(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let (all, _) = acting_on(&s, &p, &name, "/api/v1/schedules/{name}/resume")?;
    Ok(Json(all.resume(&name, &p.user, "http")?.view()))
}

/// Runs the schedule's applet now, as its owner: 202 with the job.
pub(super) async fn run_now(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Response, ApiError> {
    let (all, _) = acting_on(&s, &p, &name, "/api/v1/schedules/{name}/run")?;
    let job_id = all.run_now(&s.service, &name, &p.user, "http")?;
    let mut resp = (StatusCode::ACCEPTED, Json(json!({ "job_id": job_id, "schedule": name }))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/api/v1/jobs/{job_id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}
