//! Web console sessions: sign in with a password (or a token) for an HttpOnly, SameSite=Strict
//! cookie; every state-changing request made with the cookie must carry the session's CSRF token
//! in `X-CSRF-Token`. Sessions last 12 hours and are kept in the store (by the SHA-256 of their
//! id, never the id itself), so a restart signs nobody out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use parking_lot::Mutex;

pub const COOKIE: &str = "opslet_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins per user name within a minute before further tries get 429.
const MAX_FAILURES: u32 = 5;

/// Longest user name a sign-in is tried with (longer ones are refused before any work).
pub const MAX_USER: usize = 64;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    pub expires: chrono::DateTime<chrono::Utc>,
    /// The API token the session was started with: it ends when the token is revoked or expires.
    pub token: Option<String>,
}

impl Session {
    fn live(&self) -> bool {
        self.expires > chrono::Utc::now()
    }
}

pub struct Sessions {
    /// Sessions in use, by id (a cache of the store's).
    live: Mutex<HashMap<String, Session>>,
    /// The store's sessions (none in tests that build a bare state).
    stored: Option<crate::store::Tree>,
    /// Sign-in attempts per user name in the current minute (counted before the hash check).
    attempts: Mutex<HashMap<String, (Instant, u32)>>,
    /// Password hash checks at once (each takes ~19 MiB and a core for tens of ms).
    pub hashing: tokio::sync::Semaphore,
}

impl Default for Sessions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Sessions { live: Mutex::default(), stored: None, attempts: Mutex::default(), hashing: tokio::sync::Semaphore::new(cores) }
    }
}

/// A session's key in the store: the SHA-256 of its id, so the store never holds an id that
/// signs anyone in.
fn stored_key(sid: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(sid.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS gives randomness");
    hex::encode(buf)
}

impl Sessions {
    /// Sessions kept in `store` (they outlive a restart).
    pub fn stored(store: &crate::store::Store) -> Sessions {
        Sessions { stored: Some(store.tree(crate::store::keys::HTTP_SESSIONS)), ..Sessions::default() }
    }

    /// A new session for `user` (started with `token`, if so, and ending no later than
    /// `until`): (session id, CSRF token).
    pub fn create(&self, user: &str, token: Option<String>, until: Option<Duration>) -> (String, String) {
        let (sid, csrf) = (random_hex(32), random_hex(24));
        let ttl = until.map_or(TTL, |u| u.min(TTL));
        let expires = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::hours(12));
        let session = Session { user: user.to_string(), csrf: csrf.clone(), expires, token };
        if let Some(t) = &self.stored {
            // Ended ones go as new ones come.
            for (k, v) in t.iter().flatten() {
                if serde_json::from_slice::<Session>(&v).map_or(true, |s| !s.live()) {
                    let _ = t.remove(k);
                }
            }
            if let Ok(body) = serde_json::to_vec(&session) {
                let _ = t.insert(stored_key(&sid).as_bytes(), body);
            }
        }
        let mut live = self.live.lock();
        live.retain(|_, s| s.live());
        live.insert(sid.clone(), session);
        (sid, csrf)
    }

    pub fn get(&self, sid: &str) -> Option<Session> {
        if let Some(s) = self.live.lock().get(sid) {
            return s.live().then(|| s.clone());
        }
        // Made before a restart: from the store.
        let t = self.stored.as_ref()?;
        let s: Session = serde_json::from_slice(&t.get(stored_key(sid).as_bytes()).ok()??).ok()?;
        if !s.live() {
            let _ = t.remove(stored_key(sid).as_bytes());
            return None;
        }
        self.live.lock().insert(sid.to_string(), s.clone());
        Some(s)
    }

    pub fn remove(&self, sid: &str) {
        self.live.lock().remove(sid);
        if let Some(t) = &self.stored {
            let _ = t.remove(stored_key(sid).as_bytes());
        }
    }

    /// Ends every session of `user` (their account was removed or their password changed).
    pub fn remove_user(&self, user: &str) {
        self.live.lock().retain(|_, s| s.user != user);
        if let Some(t) = &self.stored {
            for (k, v) in t.iter().flatten() {
                if serde_json::from_slice::<Session>(&v).is_ok_and(|s| s.user == user) {
                    let _ = t.remove(k);
                }
            }
        }
    }

    /// Counts a sign-in attempt for `user` before its password is checked; false when the user
    /// already had MAX_FAILURES attempts this minute (so parallel guesses cannot slip through).
    pub fn attempt(&self, user: &str) -> bool {
        let mut a = self.attempts.lock();
        if a.len() > 1024 {
            a.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
        let e = a.entry(user.to_string()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        if e.1 >= MAX_FAILURES {
            return false;
        }
        e.1 += 1;
        true
    }

    /// A successful sign-in clears the user's count.
    pub fn succeeded(&self, user: &str) {
        self.attempts.lock().remove(user);
    }
}

/// The session id from the request's cookies.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_string())
    })
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub fn set_cookie(sid: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match sid {
        Some(sid) => format!("{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", TTL.as_secs()),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_malformed_ones_ignored() {
        let mut h = HeaderMap::new();
        let sid = "a".repeat(64);
        h.insert(axum::http::header::COOKIE, format!("x=1; {COOKIE}={sid}; y=2").parse().unwrap());
        assert_eq!(cookie(&h), Some(sid));
        h.insert(axum::http::header::COOKIE, format!("{COOKIE}=short").parse().unwrap());
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn attempts_are_counted_before_checking_and_reset_on_success() {
        let s = Sessions::default();
        for _ in 0..MAX_FAILURES {
            assert!(s.attempt("bob"));
        }
        assert!(!s.attempt("bob"));
        assert!(s.attempt("alice"));
        s.succeeded("bob");
        assert!(s.attempt("bob"));
    }
}
