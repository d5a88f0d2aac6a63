//! The artifact stores (`[s3.NAME]`) as the console lists them: their connections, and the
//! objects of a bucket with sizes, checksums and versions. Reading the list is the registry's
//! right; content and changes go through `opslet artifact` (publish).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::authn::{Authed, require};
use super::error::ApiError;
use crate::auth::Action;
use crate::service::artifacts::Location;

fn artifacts(s: &AppState) -> Result<&crate::service::artifacts::Artifacts, ApiError> {
    s.artifacts
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this server has no artifact store ([s3.NAME] in opslet.toml)"))
}

/// `GET /api/v1/artifacts`: the configured stores.
pub(super) async fn connections(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/artifacts")?;
    let list = s.artifacts.as_deref().map(|a| a.connections()).unwrap_or_default();
    Ok(Json(json!({ "connections": list })))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    bucket: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    versions: bool,
    limit: Option<usize>,
}

/// `GET /api/v1/artifacts/{connection}?bucket=B&prefix=P&versions=true`: the bucket's objects
/// (every version with `versions`), and whether it keeps versions.
pub(super) async fn list(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(connection): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/artifacts")?;
    let a = artifacts(&s)?;
    let at = Location::parse(&format!("{connection}:{}/{}", q.bucket, q.prefix), false)?;
    let listing = a.list(&at, q.versions, q.limit.unwrap_or(1000).clamp(1, 10_000)).await?;
    Ok(Json(serde_json::to_value(listing).unwrap_or_default()))
}
