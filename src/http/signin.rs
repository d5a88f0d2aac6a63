//! Web console sign-in: a session cookie and its CSRF token, from a password or a token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::authn::{Authed, deny};
use super::error::ApiError;
use super::{AppState, session};
use crate::auth::Principal;
use crate::store::audit::AuditEvent;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignIn {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

fn session_body(p: &Principal, csrf: &str) -> Value {
    json!({ "user": p.user, "role": p.role.name(), "groups": p.groups, "csrf": csrf })
}

/// Signs in with `{user, password}` or `{token}`; answers with the CSRF token and sets the cookie.
pub(super) async fn session_start(State(s): State<AppState>, headers: HeaderMap, Json(body): Json<SignIn>) -> Result<Response, ApiError> {
    let principal = match (&body.user, &body.password, &body.token) {
        (Some(user), Some(password), None) => {
            if user.is_empty() || user.len() > session::MAX_USER || password.len() > crate::auth::MAX_PASSWORD {
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
    if let Some(store) = s.service.runtime().store() {
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
pub(super) async fn session_show(State(s): State<AppState>, Authed(p): Authed, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let csrf = session::cookie(&headers).and_then(|sid| s.sessions.get(&sid)).map(|sess| sess.csrf).unwrap_or_default();
    Ok(Json(session_body(&p, &csrf)))
}

pub(super) async fn session_end(State(s): State<AppState>, Authed(_p): Authed, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(sid) = session::cookie(&headers) {
        s.sessions.remove(&sid);
    }
    let mut resp = Json(json!({ "signed_out": true })).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&session::set_cookie(None, false)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}
