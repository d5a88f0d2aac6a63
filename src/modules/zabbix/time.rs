//! Times between Lua and Zabbix: what a filter's `since` or `from` may be, and Zabbix's epoch
//! clocks as RFC 3339 times.

use serde_json::{Value, json};

use super::LUA;

/// Epoch seconds from a number, an RFC 3339 time, or a duration ago ("1h", "30m").
pub(super) fn when(call: &str, key: &str, v: &Value) -> mlua::Result<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or_else(|| LUA.err(call, format!("{key}: not a time"))),
        Value::String(s) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Ok(t.timestamp());
            }
            let d = crate::util::parse_duration(s)
                .map_err(|_| LUA.err(call, format!("{key}: `{s}` is neither an RFC 3339 time nor a duration ago like \"1h\"")))?;
            Ok(chrono::Utc::now().timestamp() - d.as_secs() as i64)
        }
        _ => Err(LUA.err(call, format!("{key}: expected epoch seconds, an RFC 3339 time or a duration like \"1h\""))),
    }
}

/// A Zabbix clock (epoch seconds, as a string or a number) as an RFC 3339 time.
pub(super) fn iso(clock: &Value) -> Value {
    let secs = clock.as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| clock.as_i64()).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0).map(|t| json!(t.to_rfc3339())).unwrap_or(Value::Null)
}
