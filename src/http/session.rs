//! Web console sessions: sign in with a password (or a token) for an HttpOnly, SameSite=Strict
//! cookie; every state-changing request made with the cookie must carry the session's CSRF token
//! in `X-CSRF-Token`. Sessions live in memory (a restart signs everyone out) for 12 hours.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use parking_lot::Mutex;

pub const COOKIE: &str = "opslet_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins per user name within a minute before further tries get 429.
const MAX_FAILURES: u32 = 5;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS gives randomness");
    hex::encode(buf)
}

impl Sessions {
    /// A new session for `user`: (session id, CSRF token).
    pub fn create(&self, user: &str) -> (String, String) {
        let (sid, csrf) = (random_hex(32), random_hex(24));
        let mut live = self.live.lock();
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        live.insert(sid.clone(), Session { user: user.to_string(), csrf: csrf.clone(), expires: now + TTL });
        (sid, csrf)
    }

    pub fn get(&self, sid: &str) -> Option<Session> {
        let live = self.live.lock();
        live.get(sid).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, sid: &str) {
        self.live.lock().remove(sid);
    }

    /// Ends every session of `user` (their account was removed or their password changed).
    pub fn remove_user(&self, user: &str) {
        self.live.lock().retain(|_, s| s.user != user);
    }

    /// Whether sign-ins for `user` are paused after too many failures.
    pub fn throttled(&self, user: &str) -> bool {
        let f = self.failures.lock();
        f.get(user).is_some_and(|(since, n)| *n >= MAX_FAILURES && since.elapsed() < Duration::from_secs(60))
    }

    pub fn failed(&self, user: &str) {
        let mut f = self.failures.lock();
        if f.len() > 10_000 {
            f.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
        }
        let e = f.entry(user.to_string()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    pub fn succeeded(&self, user: &str) {
        self.failures.lock().remove(user);
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
    fn failures_throttle_then_reset_on_success() {
        let s = Sessions::default();
        for _ in 0..MAX_FAILURES {
            assert!(!s.throttled("bob"));
            s.failed("bob");
        }
        assert!(s.throttled("bob"));
        assert!(!s.throttled("alice"));
        s.succeeded("bob");
        assert!(!s.throttled("bob"));
    }
}
