//! The applet market over HTTP: list, search, show, versions, and (publishers) publish,
//! promote, roll back and yank.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::authn::{Authed, require};
use super::error::ApiError;
use crate::auth::Action;
use crate::registry::Reference;

/// An applet with its current version. Answers are serialized from the registry's types (not
/// through `serde_json::Value`, whose objects sort their keys), so params keep the order the
/// manifest declares them in.
#[derive(serde::Serialize)]
pub(super) struct Listed {
    name: String,
    current: crate::registry::VersionMeta,
}

pub(super) async fn list_applets(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Vec<Listed>>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/applets")?;
    let all = s.registry.list()?;
    Ok(Json(all.into_iter().map(|(a, v)| Listed { name: a.name, current: v }).collect()))
}

#[derive(serde::Serialize)]
pub(super) struct Shown {
    version: crate::registry::VersionMeta,
    current: String,
    history: Vec<String>,
    /// Whether its runs wait for approval, and by which rules (`[approvals]`).
    approval: serde_json::Value,
}

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    #[serde(default)]
    q: String,
    tag: Option<String>,
    permission: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn search(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<SearchQuery>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/search")?;
    let hits = s.registry.search(&q.q, q.tag.as_deref(), q.permission.as_deref(), q.limit.unwrap_or(50).min(500))?;
    Ok(Json(json!(hits)))
}

pub(super) async fn show_applet(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Shown>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/applets/{name}")?;
    let r = Reference::parse(&name)?;
    let v = s.registry.resolve(&r, true)?;
    let a = s.registry.applet(r.name())?;
    let approval = s.service.policy().explain(&v.permissions);
    Ok(Json(Shown { version: v, current: a.current, history: a.history, approval }))
}

pub(super) async fn versions(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
) -> Result<Json<Vec<crate::registry::VersionMeta>>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/applets/{name}/versions")?;
    s.registry.applet(&name)?;
    Ok(Json(s.registry.versions(&name)?))
}

#[derive(Deserialize)]
pub(super) struct PublishQuery {
    #[serde(default)]
    allow_downgrade: bool,
    message: Option<String>,
}

/// Publishes an uploaded bundle (as written by `opslet export`) under the caller's name.
pub(super) async fn publish_bundle(
    State(s): State<AppState>,
    Authed(p): Authed,
    Query(q): Query<PublishQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&s, &p, Action::Publish, "/api/v1/registry/publish")?;
    let (claimed, pkg) = crate::registry::bundle::decode(&body)?;
    pkg.check_modules(s.service.runtime().modules())?;
    // Its own tests first (`[publish] tests`), off the async threads.
    let (service, pkg) = (s.service.clone(), std::sync::Arc::new(pkg));
    let tested = std::sync::Arc::clone(&pkg);
    let (tests, warning) = tokio::task::spawn_blocking(move || service.test_before_publish(&tested))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "running the applet's tests stopped"))??;
    let message = q.message.unwrap_or(claimed.message);
    let out = s.registry.publish_tested(&pkg, &p.user, &message, q.allow_downgrade, None, tests)?;
    s.registry.flush()?;
    Ok(match out {
        crate::registry::Published::New(v) => (StatusCode::CREATED, Json(json!({ "published": v, "warning": warning }))).into_response(),
        crate::registry::Published::Unchanged(v) => (StatusCode::OK, Json(json!({ "unchanged": v }))).into_response(),
    })
}

#[derive(Deserialize)]
pub(super) struct VersionQuery {
    version: Option<String>,
    #[serde(default)]
    undo: bool,
}

fn version_of(q: &VersionQuery) -> Result<semver::Version, ApiError> {
    let v = q.version.as_deref().ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "give ?version=X.Y.Z"))?;
    semver::Version::parse(v).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("`{v}` is not a version: {e}")))
}

pub(super) async fn promote(
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

pub(super) async fn rollback(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::Publish, "/api/v1/applets/{name}/rollback")?;
    let (from, to) = s.registry.rollback(&name, &p.user)?;
    s.registry.flush()?;
    Ok(Json(json!({ "from": from, "to": to })))
}

pub(super) async fn yank(
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
