//! Keeping credentials out of the audit log: the parameters of raw `zabbix.call`s are recorded
//! with them replaced.

use serde_json::{Value, json};

/// `params` with the values of credential-like keys (passwd, password, token, auth, secret)
/// replaced, at any depth: raw calls like `user.update` carry them, the audit log must not.
pub(super) fn hide_credentials(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let secret = ["passwd", "password", "token", "auth", "secret"].iter().any(|w| k.to_ascii_lowercase().contains(w));
                    (k.clone(), if secret { json!("<redacted>") } else { hide_credentials(v) })
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(hide_credentials).collect()),
        other => other.clone(),
    }
}
