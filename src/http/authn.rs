//! Who is calling: the bearer token or the console's session cookie (with its CSRF token for
//! every state-changing request), what they may do, and the audit record of every refusal.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde_json::json;

use super::error::ApiError;
use super::{AppState, session};
use crate::auth::{Action, Principal};
use crate::store::audit::AuditEvent;
use crate::util::truncate;

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
            if !safe && !crate::util::same_secret(csrf, &sess.csrf) {
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
                // The console asks "who am I?" on every visit before anyone signed in: that is
                // not a refusal worth a record (a wrong token or session there still is).
                let whoami = parts.method == axum::http::Method::GET
                    && parts.uri.path() == "/api/v1/session"
                    && e == crate::auth::AuthError::Missing;
                if !whoami {
                    deny(state, None, parts.uri.path(), &e.to_string());
                }
                Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("unauthenticated: {e}")))
            }
        }
    }
}

/// Records a refused request. Paths and reasons are cut to 256 bytes, and refusals without a
/// valid caller are limited to 20 records a second (the rest are counted into the next record),
/// so anonymous requests cannot fill the audit log.
pub(super) fn deny(state: &AppState, who: Option<&str>, path: &str, why: &str) {
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
    let cut = |s: &str| truncate(s, 256).to_string();
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    let _ = state.service.runtime().store().map(|s| {
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

pub(super) fn require(state: &AppState, p: &Principal, action: Action, path: &str) -> Result<(), ApiError> {
    let grants = state.auth.grants().map_err(ApiError::from)?;
    if p.allows(&action, &grants) {
        return Ok(());
    }
    let why = match action {
        Action::Run(name) => format!("{} ({}) may not run `{name}` (no grant matches)", p.user, p.role.name()),
        other => format!("{} ({}) may not {other}", p.user, p.role.name()),
    };
    deny(state, Some(&p.user), path, &why);
    Err(ApiError::new(StatusCode::FORBIDDEN, format!("forbidden: {why}")))
}
