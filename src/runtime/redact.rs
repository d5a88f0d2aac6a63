//! Removes known secret values from everything an applet emits.

use std::borrow::Cow;

pub const REDACTED: &str = "<redacted>";

/// A set of secret strings to hide. Values shorter than 4 bytes are not tracked (they would
/// blank out ordinary text).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        out
    }

    /// Redacts every string (keys included) inside a JSON value.
    pub fn apply_json(&self, v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.secrets.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.apply(&s).into_owned()),
            // A numeric secret (a PIN) in a result is a number, not text.
            Value::Number(n) if self.secrets.iter().any(|s| *s == n.to_string()) => Value::String(REDACTED.into()),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| self.apply_json(x)).collect()),
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, x)| (self.apply(&k).into_owned(), self.apply_json(x))).collect()),
            other => other,
        }
    }
}
