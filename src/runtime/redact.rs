//! Removes known secret values from everything an applet emits.

use std::borrow::Cow;

pub const REDACTED: &str = "<redacted>";

/// A set of secret strings to hide. Values shorter than 4 bytes are not tracked (they would
/// blank out ordinary text). Clones share the set, so a value learned during a run (a secret a
/// worker fetched when a module asked for it) is hidden from then on by every clone.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: std::sync::Arc<parking_lot::RwLock<Vec<String>>>,
}

fn ordered(mut secrets: Vec<String>) -> Vec<String> {
    secrets.retain(|s| s.len() >= 4);
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        Redactor { secrets: std::sync::Arc::new(parking_lot::RwLock::new(ordered(secrets.into_iter().collect()))) }
    }

    /// Hides `value` too from now on.
    pub fn learn(&self, value: &str) {
        let mut s = self.secrets.write();
        if value.len() >= 4 && !s.iter().any(|x| x == value) {
            s.push(value.to_string());
            *s = ordered(std::mem::take(&mut *s));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.read().is_empty()
    }

    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        apply(&self.secrets.read(), text)
    }

    /// Redacts every string (keys included) inside a JSON value.
    pub fn apply_json(&self, v: serde_json::Value) -> serde_json::Value {
        let secrets = self.secrets.read();
        if secrets.is_empty() {
            return v;
        }
        apply_json(&secrets, v)
    }
}

fn apply<'a>(secrets: &[String], text: &'a str) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for s in secrets {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), REDACTED));
        }
    }
    out
}

fn apply_json(secrets: &[String], v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(apply(secrets, &s).into_owned()),
        // A numeric secret (a PIN) in a result is a number, not text.
        Value::Number(n) if secrets.iter().any(|s| *s == n.to_string()) => Value::String(REDACTED.into()),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| apply_json(secrets, x)).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, x)| (apply(secrets, &k).into_owned(), apply_json(secrets, x))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_value_is_hidden_by_every_clone_from_then_on() {
        let r = Redactor::new(vec!["known-secret".to_string()]);
        let clone = r.clone();
        assert_eq!(clone.apply("key fetched-later-value"), "key fetched-later-value");
        r.learn("fetched-later-value");
        r.learn("abc"); // too short to track
        assert_eq!(clone.apply("key fetched-later-value and known-secret"), "key <redacted> and <redacted>");
        assert_eq!(clone.apply_json(serde_json::json!({ "k": "fetched-later-value" })), serde_json::json!({ "k": "<redacted>" }));
        assert_eq!(clone.apply("abc"), "abc");
    }
}
