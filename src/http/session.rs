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

/// Longest user name a sign-in is tried with (longer ones are refused before any work).
pub const MAX_USER: usize = 64;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    pub expires: Instant,
    /// The API token the session was started with: it ends when the token is revoked or expires.
    pub token: Option<String>,
}

pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    /// Sign-in attempts per user name in the current minute (counted before the hash check).
    attempts: Mutex<HashMap<String, (Instant, u32)>>,
    /// Password hash checks at once (each takes ~19 MiB and a core for tens of ms).
    pub hashing: tokio::sync::Semaphore,
}

impl Default for Sessions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Sessions { live: Mutex::default(), attempts: Mutex::default(), hashing: tokio::sync::Semaphore::new(cores) }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS gives randomness");
    hex::encode(buf)
}

impl Sessions {
    /// A new session for `user` (started with `token`, if so, and ending no later than
    /// `until`): (session id, CSRF token).
    pub fn create(&self, user: &str, token: Option<String>, until: Option<Duration>) -> (String, String) {
        let (sid, csrf) = (random_hex(32), random_hex(24));
        let mut live = self.live.lock();
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        let ttl = until.map_or(TTL, |u| u.min(TTL));
        live.insert(sid.clone(), Session { user: user.to_string(), csrf: csrf.clone(), expires: now + ttl, token });
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
