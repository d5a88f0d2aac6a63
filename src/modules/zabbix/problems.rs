//! Problems and their events: `zabbix.problems`' filter as `problem.get` parameters, the hosts
//! of each problem from `event.get`, and severities by number or name.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::time::{iso, when};
use super::{LUA, State, hostids};

/// Zabbix's severities, by number.
const SEVERITIES: &[&str] = &["not classified", "information", "warning", "average", "high", "disaster"];

/// A severity as its number: 0 to 5, or a name from [`SEVERITIES`].
pub(super) fn severity(call: &str, v: &Value) -> mlua::Result<u64> {
    match v {
        Value::Number(n) => n.as_u64().filter(|s| *s <= 5).ok_or_else(|| LUA.err(call, "severity_min: 0 to 5")),
        Value::String(s) => SEVERITIES
            .iter()
            .position(|x| x.eq_ignore_ascii_case(s))
            .map(|p| p as u64)
            .ok_or_else(|| LUA.err(call, format!("severity_min: `{s}` is not one of: {}", SEVERITIES.join(", ")))),
        _ => Err(LUA.err(call, "severity_min: a number 0-5 or a name like \"high\"")),
    }
}

/// The problems filter `f` picks on connection `conn`, newest first, each with its hosts and its
/// severity by number and name.
pub(super) async fn problems(s: &State, conn: &str, f: &Value) -> mlua::Result<Value> {
    let mut params = json!({ "output": "extend", "selectTags": "extend", "selectAcknowledges": ["clock", "message", "action"], "sortfield": ["eventid"], "sortorder": "DESC", "recent": false });
    if let Some(min) = f.get("severity_min") {
        let min = severity("problems", min)?;
        params["severities"] = json!((min..=5).collect::<Vec<_>>());
    }
    if let Some(h) = f.get("host") {
        let names: Vec<String> = match h {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) if a.iter().all(Value::is_string) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => return Err(LUA.err("problems", "host: a host name or a list of host names")),
        };
        params["hostids"] = json!(hostids(s, "problems", conn, &names).await?);
    }
    if let Some(tags) = f.get("tags").and_then(Value::as_object) {
        params["tags"] = json!(tags.iter().map(|(k, v)| json!({ "tag": k, "value": v, "operator": 1 })).collect::<Vec<_>>());
    }
    if let Some(since) = f.get("since") {
        params["time_from"] = json!(when("problems", "since", since)?);
    }
    if let Some(l) = f.get("limit").and_then(Value::as_u64) {
        params["limit"] = json!(l);
    }
    let problems = s.call("problems", conn, "problem.get", params).await?;
    let list = problems.as_array().cloned().unwrap_or_default();
    // Which host each problem is on: problem.get does not say, event.get does.
    let ids: Vec<Value> = list.iter().map(|p| p["eventid"].clone()).collect();
    let mut host_of = HashMap::new();
    if !ids.is_empty() {
        let ev = s.call("problems", conn, "event.get", json!({ "eventids": ids, "output": ["eventid"], "selectHosts": ["host"] })).await?;
        for e in ev.as_array().into_iter().flatten() {
            let h: Vec<Value> = e["hosts"].as_array().into_iter().flatten().map(|h| h["host"].clone()).collect();
            host_of.insert(e["eventid"].as_str().unwrap_or("").to_string(), h);
        }
    }
    let shaped: Vec<Value> = list
        .iter()
        .map(|p| {
            let sev = p["severity"].as_str().and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
            let id = p["eventid"].as_str().unwrap_or("").to_string();
            let hosts = host_of.remove(&id).unwrap_or_default();
            // A problem without a host has no `host` (nil in Lua, not json.null, which is true).
            let mut row = json!({
                "eventid": id, "name": p["name"], "severity": sev, "severity_name": SEVERITIES.get(sev).copied().unwrap_or("?"),
                "host": hosts.first().cloned().unwrap_or(Value::Null), "hosts": hosts,
                "clock": iso(&p["clock"]), "acknowledged": p["acknowledged"] == "1",
                "tags": p["tags"].as_array().into_iter().flatten().map(|t| (t["tag"].as_str().unwrap_or("").to_string(), t["value"].clone())).collect::<serde_json::Map<_, _>>(),
                "acknowledges": p["acknowledges"],
            });
            if row["host"].is_null()
                && let Some(o) = row.as_object_mut()
            {
                o.remove("host");
            }
            row
        })
        .collect();
    Ok(json!(shaped))
}
