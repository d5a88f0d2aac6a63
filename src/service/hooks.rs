//! Webhooks: `POST /hooks/{name}` turns a signed JSON delivery into a run of one applet.
//!
//! A delivery carries `X-Opslet-Timestamp: <unix seconds>` and
//! `X-Opslet-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. Unsigned,
//! wrongly signed, stale (more than 5 minutes off) and replayed deliveries are refused. Two
//! deliveries with the same body in the same second have the same signature (the second is a
//! replay), unless each carries its own `X-Opslet-Delivery: <id>`, which the signature then
//! covers: `v2=<hex HMAC-SHA256(secret, "opslet-delivery-v2\0<timestamp>\0<id>\0<body>")>`.
//! Params come from the payload through `param=$.json.path` mappings.

use chrono::Utc;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::store::Store;
use crate::util::validate_name;

/// How far a delivery's timestamp may be from now.
pub const WINDOW_SECS: i64 = 300;

/// A webhook definition. The secret is kept to check signatures (it is shown once, at creation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    /// `name`, `name@version` or `name@sha256:...`.
    pub applet: String,
    /// (param, JSON path like `$.event.host` or `$.items[0].value`).
    pub map: Vec<(String, String)>,
    pub secret: String,
    pub created_at: chrono::DateTime<Utc>,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("the delivery is not signed (X-Opslet-Timestamp and X-Opslet-Signature are required)")]
    Unsigned,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the delivery's timestamp is more than {WINDOW_SECS}s away from now")]
    Stale,
    #[error("this delivery was already received (replay)")]
    Replayed,
    /// No hook of that name: answered like a bad signature, so hook names cannot be probed.
    #[error("the signature does not match")]
    NoSuchHook,
}

/// Hooks and the signatures seen recently, in the store.
#[derive(Clone)]
pub struct Hooks {
    store: Store,
    hooks: crate::store::Tree,
    seen: crate::store::Tree,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The signature of a delivery with its own id (`X-Opslet-Delivery`), in `X-Opslet-Signature`.
/// Its prefix and the leading label keep it apart from [`sign`]'s: neither verifies as the other.
pub fn sign_delivery(secret: &str, timestamp: i64, delivery: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"opslet-delivery-v2\0");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b"\0");
    mac.update(delivery.as_bytes());
    mac.update(b"\0");
    mac.update(body);
    format!("v2={}", hex::encode(mac.finalize().into_bytes()))
}

/// Longest delivery id taken.
pub const MAX_DELIVERY_ID: usize = 128;

/// The signature a sender puts in `X-Opslet-Signature`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Follows a `$.a.b[0].c` path into a JSON value.
pub fn extract<'a>(payload: &'a Value, path: &str) -> Option<&'a Value> {
    let rest = path.strip_prefix('$')?;
    let mut cur = payload;
    let mut chars = rest;
    while !chars.is_empty() {
        if let Some(r) = chars.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            chars = &r[end..];
        } else if let Some(r) = chars.strip_prefix('[') {
            let end = r.find(']')?;
            let idx: usize = r[..end].trim().parse().ok()?;
            cur = cur.get(idx)?;
            chars = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(cur)
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('$') {
        return Err(format!("`{path}` must start with `$` (like $.event.host)"));
    }
    if extract(&serde_json::json!({}), path).is_none() && path != "$" {
        // Parsing problems and missing keys look the same on an empty object; check the syntax.
        let ok = path[1..].split(['.', '[']).skip(1).all(|seg| !seg.is_empty());
        if !ok {
            return Err(format!("`{path}` is not a path like $.event.host or $.items[0].value"));
        }
    }
    Ok(())
}

impl Hooks {
    pub fn new(store: Store) -> Result<Hooks, Error> {
        Ok(Hooks { hooks: store.tree(crate::store::keys::HOOKS), seen: store.tree(crate::store::keys::HOOKS_SEEN), store })
    }

    /// Creates a hook; the returned hook holds its new secret.
    pub fn add(&self, name: &str, applet: &str, maps: &[String], actor: &str) -> Result<Hook, Error> {
        validate_name(name).map_err(|m| Error::Usage(format!("hook name {m}")))?;
        crate::registry::Reference::parse(applet)?;
        let mut map = Vec::new();
        for m in maps {
            let (param, path) = m.split_once('=').ok_or_else(|| Error::Usage(format!("--map `{m}`: expected param=$.json.path")))?;
            check_path(path.trim()).map_err(|e| Error::Usage(format!("--map `{m}`: {e}")))?;
            map.push((param.trim().to_string(), path.trim().to_string()));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::Internal(format!("no randomness for a hook secret: {e}")))?;
        let hook = Hook { name: name.into(), applet: applet.into(), map, secret: hex::encode(secret), created_at: Utc::now() };
        let body = serde_json::to_vec(&hook).expect("hooks serialize");
        if !self.hooks.compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(body))? {
            return Err(Error::Usage(format!("hook `{name}` already exists")));
        }
        self.store.audit().record_change("hook.add", actor, "hook", Some(applet), serde_json::json!({ "hook": name, "map": hook.map }))?;
        Ok(hook)
    }

    pub fn remove(&self, name: &str, actor: &str) -> Result<(), Error> {
        if self.hooks.remove(name.as_bytes())?.is_none() {
            return Err(Error::NotFound(format!("no hook `{name}`")));
        }
        self.store.audit().record_change("hook.rm", actor, "hook", None, serde_json::json!({ "hook": name }))
    }

    pub fn get(&self, name: &str) -> Result<Option<Hook>, Error> {
        self.hooks
            .get(name.as_bytes())?
            .map(|b| serde_json::from_slice(&b).map_err(|e| Error::Store(format!("hook {name} is unreadable: {e}"))))
            .transpose()
    }

    pub fn list(&self) -> Result<Vec<Hook>, Error> {
        self.hooks
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| Error::Store(format!("hook record is unreadable: {e}"))))
            .collect()
    }

    /// Checks a delivery's signature, freshness and novelty, in that order: nothing about a
    /// delivery is remembered, or answered as a replay, before its signature is right.
    pub fn verify(
        &self,
        hook: &Hook,
        timestamp: Option<&str>,
        signature: Option<&str>,
        delivery: Option<&str>,
        body: &[u8],
    ) -> Result<(), DeliveryError> {
        let (Some(ts), Some(sig)) = (timestamp, signature) else { return Err(DeliveryError::Unsigned) };
        let ts: i64 = ts.trim().parse().map_err(|_| DeliveryError::Unsigned)?;
        let expected = match delivery.map(str::trim) {
            Some(id) if id.is_empty() || id.len() > MAX_DELIVERY_ID => return Err(DeliveryError::BadSignature),
            Some(id) => sign_delivery(&hook.secret, ts, id, body),
            None => sign(&hook.secret, ts, body),
        };
        let sig = sig.trim();
        if !crate::util::same_secret(&expected, sig) {
            return Err(DeliveryError::BadSignature);
        }
        let now = Utc::now().timestamp();
        if now.checked_sub(ts).is_none_or(|d| d.abs() > WINDOW_SECS) {
            return Err(DeliveryError::Stale);
        }
        // A signature can be used once; it is remembered for as long as it could be accepted.
        let key = format!("{}\0{sig}", hook.name);
        let fresh = self
            .seen
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(&ts.to_be_bytes()))
            .map_err(|_| DeliveryError::Replayed)?;
        if !fresh {
            return Err(DeliveryError::Replayed);
        }
        self.forget_old(now);
        Ok(())
    }

    fn forget_old(&self, now: i64) {
        for (k, v) in self.seen.iter().flatten() {
            let ts = v.as_slice().try_into().map(i64::from_be_bytes).unwrap_or(0);
            if now - ts > 2 * WINDOW_SECS {
                let _ = self.seen.remove(k);
            }
        }
    }

    /// The params a payload maps to (paths that are absent are left out).
    pub fn params(hook: &Hook, payload: &Value) -> Map<String, Value> {
        hook.map.iter().filter_map(|(param, path)| extract(payload, path).map(|v| (param.clone(), v.clone()))).collect()
    }
}
