//! Administration over HTTP (admins only): accounts, tokens, grants and hooks; the audit log
//! (auditors); the cmdb's hosts.

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
use crate::auth::Principal;
use crate::error::Error;

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    applet: Option<String>,
    caller: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    run: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<usize>,
    /// `newest` for newest first (with `before` to page back); default oldest first.
    order: Option<String>,
    /// With `order=newest`: records before this record number (the last of the page before).
    before: Option<u64>,
}

pub(super) async fn audit_list(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    require(&s, &p, Action::ReadAudit, "/api/v1/audit")?;
    let store = s.service.runtime().store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    let filter = crate::store::audit::Filter {
        applet: q.applet,
        actor: q.caller,
        status: q.status,
        kind: q.kind,
        run_id: q.run,
        since: q.since,
        until: q.until,
        limit: Some(q.limit.unwrap_or(100).clamp(1, 10_000)),
    };
    match q.order.as_deref() {
        None | Some("oldest") => Ok(Json(json!(store.audit().list(&filter)?)).into_response()),
        Some("newest") => {
            // One more than the page, to know whether there is a next one.
            let limit = filter.limit.unwrap_or(100);
            let mut page = store.audit().list_newest(&crate::store::audit::Filter { limit: Some(limit + 1), ..filter }, q.before)?;
            let more = page.len() > limit;
            page.truncate(limit);
            let next = more.then(|| page.last().map(|r| r.seq)).flatten();
            Ok(super::paged(json!(page), next.map(|n| n.to_string())))
        }
        Some(other) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("order `{other}` is not `oldest` or `newest`"))),
    }
}

pub(super) async fn audit_verify(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadAudit, "/api/v1/audit/verify")?;
    let store = s.service.runtime().store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    let r = store.audit().verify()?;
    Ok(Json(json!({ "records": r.records, "head": r.head, "intact": r.first_bad.is_none(), "first_bad": r.first_bad, "lost": r.lost })))
}

// ---- administration (admin only): accounts, tokens, grants, hooks -----------------------------

fn admin(s: &AppState, p: &Principal, path: &str) -> Result<(), ApiError> {
    require(s, p, Action::Admin, path)
}

pub(super) fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not what this route takes: {e}")))
}

/// Accounts, each with whether it has a console password (never the password).
pub(super) async fn list_users(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/users")?;
    let mut out = Vec::new();
    for u in s.auth.users()? {
        let password = s.auth.has_password(&u.name)?;
        let mut v = json!(u);
        v["password"] = json!(password);
        out.push(v);
    }
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserChange {
    role: Option<crate::auth::Role>,
    groups: Option<Vec<String>>,
}

/// Changes a user's role and/or groups; it applies to their sessions and tokens at once.
pub(super) async fn change_user(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/users/{name}")?;
    let c: UserChange = body_json(&body)?;
    if c.role.is_none() && c.groups.is_none() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "nothing to change: send `role` and/or `groups`"));
    }
    let user = s.auth.update_user(&name, c.role, c.groups.as_deref(), &p.user)?;
    s.auth.flush()?;
    Ok(Json(json!(user)))
}

#[derive(Deserialize)]
pub(super) struct NewUser {
    name: String,
    role: crate::auth::Role,
    #[serde(default)]
    groups: Vec<String>,
}

pub(super) async fn add_user(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/users")?;
    let u: NewUser = body_json(&body)?;
    let user = s.auth.add_user(&u.name, u.role, &u.groups, &p.user)?;
    s.auth.flush()?;
    Ok((StatusCode::CREATED, Json(json!(user))).into_response())
}

pub(super) async fn remove_user(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/users/{name}")?;
    let revoked = s.auth.remove_user(&name, &p.user)?;
    s.sessions.remove_user(&name);
    s.auth.flush()?;
    Ok(Json(json!({ "removed": name, "tokens_revoked": revoked })))
}

#[derive(Deserialize, Default)]
pub(super) struct NewToken {
    /// Lifetime like "30d".
    expires: Option<String>,
    #[serde(default)]
    label: String,
}

/// Creates a token; the answer is the only time its secret is shown.
pub(super) async fn create_token(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/users/{name}/tokens")?;
    let t: NewToken = if body.is_empty() { NewToken::default() } else { body_json(&body)? };
    let expires_at = match t.expires {
        None => None,
        Some(d) => Some(crate::auth::token_expiry(&d).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("expires: {e}")))?),
    };
    let (secret, rec) = s.auth.create_token(&name, expires_at, &t.label, &p.user)?;
    s.auth.flush()?;
    Ok((StatusCode::CREATED, Json(json!({ "token": secret, "id": rec.id, "user": rec.user, "expires_at": rec.expires_at })))
        .into_response())
}

pub(super) async fn list_tokens(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/tokens")?;
    let tokens = s.auth.tokens(None)?;
    Ok(Json(json!(tokens.iter().map(|t| json!({ "id": t.id, "user": t.user, "label": t.label, "created_at": t.created_at, "expires_at": t.expires_at, "revoked": t.revoked })).collect::<Vec<_>>())))
}

pub(super) async fn revoke_token(State(s): State<AppState>, Authed(p): Authed, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/tokens/{id}")?;
    let t = s.auth.revoke_token(&id, &p.user)?;
    s.auth.flush()?;
    Ok(Json(json!({ "revoked": t.id, "user": t.user })))
}

pub(super) async fn list_grants(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/grants")?;
    Ok(Json(json!(s.auth.grants()?)))
}

pub(super) async fn add_grant(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/grants")?;
    let g: crate::auth::Grant = body_json(&body)?;
    let g = s.auth.add_grant(&g.subject, &g.pattern, &p.user)?;
    s.auth.flush()?;
    Ok((StatusCode::CREATED, Json(json!(g))).into_response())
}

pub(super) async fn remove_grant(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/grants")?;
    let g: crate::auth::Grant = body_json(&body)?;
    s.auth.remove_grant(&g.subject, &g.pattern, &p.user)?;
    s.auth.flush()?;
    Ok(Json(json!({ "removed": g })))
}

pub(super) async fn list_hooks(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/hooks")?;
    let hooks = s.service.hooks()?.list()?;
    Ok(Json(json!(
        hooks.iter().map(|h| json!({ "name": h.name, "applet": h.applet, "map": h.map, "created_at": h.created_at })).collect::<Vec<_>>()
    )))
}

#[derive(Deserialize)]
pub(super) struct NotificationsQuery {
    /// `pending`, `delivered` or `failed`.
    status: Option<String>,
    limit: Option<usize>,
}

/// Notification deliveries, newest first (without what they send: a URL may be a credential).
pub(super) async fn list_notifications(
    State(s): State<AppState>,
    Authed(p): Authed,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/notifications")?;
    let store = s.service.runtime().store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    let status = match q.status.as_deref() {
        None => None,
        Some(v) => Some(
            crate::service::notify::DeliveryStatus::parse(v)
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("status `{v}` is not `pending`, `delivered` or `failed`")))?,
        ),
    };
    let list = crate::service::notify::list(store, status, q.limit.unwrap_or(100).clamp(1, 10_000))?;
    Ok(Json(Value::Array(list.iter().map(|d| d.view()).collect())))
}

#[derive(Deserialize)]
pub(super) struct NewHook {
    name: String,
    applet: String,
    /// `param=$.path` entries.
    #[serde(default)]
    map: Vec<String>,
}

/// Creates a hook; the answer is the only time its secret is shown.
pub(super) async fn add_hook(State(s): State<AppState>, Authed(p): Authed, body: axum::body::Bytes) -> Result<Response, ApiError> {
    admin(&s, &p, "/api/v1/hooks")?;
    let h: NewHook = body_json(&body)?;
    let hook = s.service.hooks()?.add(&h.name, &h.applet, &h.map, &p.user)?;
    s.registry.flush()?;
    Ok((StatusCode::CREATED, Json(json!({ "name": hook.name, "applet": hook.applet, "map": hook.map, "secret": hook.secret })))
        .into_response())
}

pub(super) async fn remove_hook(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/hooks/{name}")?;
    s.service.hooks()?.remove(&name, &p.user)?;
    s.registry.flush()?;
    Ok(Json(json!({ "removed": name })))
}

/// Runs the server until Ctrl-C / SIGTERM. Prints `listening on ADDR` on stderr once bound.

#[derive(Deserialize)]
pub(super) struct HostsQuery {
    selector: Option<String>,
}

/// cmdb hosts, all or those a selector picks (an empty list when it picks none).
pub(super) async fn cmdb_hosts(State(s): State<AppState>, Authed(p): Authed, Query(q): Query<HostsQuery>) -> Result<Json<Value>, ApiError> {
    require(&s, &p, Action::ReadRegistry, "/api/v1/cmdb/hosts")?;
    let store = s.service.runtime().store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
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

fn secrets(s: &AppState) -> Result<crate::secrets::Secrets, ApiError> {
    let store = s.service.runtime().store().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no store"))?;
    Ok(crate::secrets::Secrets::open(store.clone())?)
}

/// Secrets by name, when they changed and by whom; never their values.
pub(super) async fn list_secrets(State(s): State<AppState>, Authed(p): Authed) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/secrets")?;
    Ok(Json(json!(secrets(&s)?.list()?)))
}

#[derive(Deserialize)]
pub(super) struct SecretValue {
    value: String,
}

/// Sets a secret (encrypted at rest); the answer does not repeat it.
pub(super) async fn set_secret(
    State(s): State<AppState>,
    Authed(p): Authed,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/secrets/{name}")?;
    let v: SecretValue = body_json(&body)?;
    let secrets = secrets(&s)?;
    secrets.set(&name, v.value.as_bytes(), &p.user)?;
    s.auth.flush()?;
    s.service.runtime().reload_secrets()?;
    Ok(Json(json!({ "set": name })))
}

pub(super) async fn remove_secret(State(s): State<AppState>, Authed(p): Authed, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    admin(&s, &p, "/api/v1/secrets/{name}")?;
    secrets(&s)?.remove(&name, &p.user)?;
    s.auth.flush()?;
    s.service.runtime().reload_secrets()?;
    Ok(Json(json!({ "removed": name })))
}
