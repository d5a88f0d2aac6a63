//! The `zabbix` host module: hosts, problems, items and history to read; acknowledgements and
//! maintenance to write; a raw `call` for methods the manifest names.
//!
//! `[permissions] zabbix = ["read"]`, `["read", "ack", "maintenance"]`, `"call:host.update"`.
//! Connections are `[zabbix.NAME]` in opslet.toml; logins come from secrets. Module functions use
//! the default connection; `zabbix.connection(NAME)` gives the same functions for another one.
//! Writes are audited as actions of the run and only planned in a dry run.

pub mod client;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, LuaSerdeExt, Table, Value as LuaValue};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::Error;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use client::{Client, Login, ZabbixError};
use settings::ZabbixConn;

pub struct ZabbixModule {
    conns: Arc<std::collections::BTreeMap<String, ZabbixConn>>,
    /// Clients by connection name, shared by all runs (one login per server, reused).
    clients: Arc<Mutex<HashMap<String, Arc<Client>>>>,
}

impl ZabbixModule {
    pub fn new(conns: std::collections::BTreeMap<String, ZabbixConn>) -> ZabbixModule {
        ZabbixModule { conns: Arc::new(conns), clients: Arc::default() }
    }
}

/// This module's calls, for their errors (`zabbix.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("zabbix");

const SEVERITIES: &[&str] = &["not classified", "information", "warning", "average", "high", "disaster"];

#[derive(Clone)]
struct State {
    conns: Arc<std::collections::BTreeMap<String, ZabbixConn>>,
    clients: Arc<Mutex<HashMap<String, Arc<Client>>>>,
    ctx: Arc<RunCtx>,
    grant: Grant,
}

impl State {
    fn allows(&self, action: &str) -> bool {
        self.grant.actions().iter().any(|a| a == action || a == "*")
    }

    fn require(&self, call: &str, action: &str) -> mlua::Result<()> {
        if self.allows(action) {
            return Ok(());
        }
        Err(LUA.err(
            call,
            format!(
                "permission denied: the applet's manifest does not grant `{action}` (add it: [permissions] zabbix = [..., \"{action}\"]); nothing was sent"
            ),
        ))
    }

    fn conn_name(&self, call: &str, conn: Option<&str>) -> mlua::Result<String> {
        let conns: Vec<(&str, bool)> = self.conns.iter().map(|(n, c)| (n.as_str(), c.default)).collect();
        crate::kit::pick_connection("Zabbix", "zabbix", &conns, conn).map_err(|m| LUA.err(call, m))
    }

    fn client(&self, call: &str, name: &str) -> mlua::Result<Arc<Client>> {
        if let Some(c) = self.clients.lock().get(name) {
            return Ok(Arc::clone(c));
        }
        let owner = format!("[zabbix.{name}]");
        let secret = |s: &str| crate::kit::read_secret(&self.ctx, &owner, s);
        let c = Arc::new(connect(name, &self.conns[name], &secret).map_err(|m| LUA.err(call, m))?);
        self.clients.lock().insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }

    async fn call(&self, call: &str, conn: &str, method: &str, params: Value) -> mlua::Result<Value> {
        let c = self.client(call, conn)?;
        c.call(method, params).await.map_err(|e: ZabbixError| LUA.err(call, format!("{method} on {conn}: {e}")))
    }

    fn audit(&self, action: &str, target: &str, ok: bool, detail: Value) -> mlua::Result<()> {
        self.ctx.record_action("zabbix", action, target, ok, detail).map_err(mlua::Error::external)
    }
}

/// Epoch seconds from a number, an RFC 3339 time, or a duration ago ("1h", "30m").
fn when(call: &str, key: &str, v: &Value) -> mlua::Result<i64> {
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

fn severity(call: &str, v: &Value) -> mlua::Result<u64> {
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

fn iso(clock: &Value) -> Value {
    let secs = clock.as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| clock.as_i64()).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0).map(|t| json!(t.to_rfc3339())).unwrap_or(Value::Null)
}

fn opts_json(lua: &Lua, t: Option<Table>) -> mlua::Result<Value> {
    match t {
        None => Ok(json!({})),
        Some(t) => lua.from_value(LuaValue::Table(t)),
    }
}

fn out(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    crate::kit::json_to_lua(lua, v)
}

/// Host ids for host names (an error naming the ones Zabbix does not know).
async fn hostids(st: &State, call: &str, conn: &str, names: &[String]) -> mlua::Result<Vec<String>> {
    // An empty filter means "every host" to Zabbix: never send one.
    if names.is_empty() || names.iter().any(|n| n.is_empty()) {
        return Err(LUA.err(call, "give at least one host name (and no empty ones)"));
    }
    let r = st.call(call, conn, "host.get", json!({ "output": ["hostid", "host"], "filter": { "host": names } })).await?;
    let found: Vec<(String, String)> = r
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| (h["host"].as_str().unwrap_or("").to_string(), h["hostid"].as_str().unwrap_or("").to_string()))
        .collect();
    let missing: Vec<&String> = names.iter().filter(|n| !found.iter().any(|(h, _)| h == *n)).collect();
    if !missing.is_empty() {
        return Err(LUA
            .err(call, format!("no host {} in Zabbix ({conn})", missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "))));
    }
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// `params` with the values of credential-like keys (passwd, password, token, auth, secret)
/// replaced, at any depth: raw calls like `user.update` carry them, the audit log must not.
fn hide_credentials(v: &Value) -> Value {
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

/// The module's functions, bound to connection `conn` (None: the default one).
fn functions(lua: &Lua, st: &State, conn: Option<String>) -> mlua::Result<Table> {
    let t = lua.create_table()?;

    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "hosts",
        lua.create_async_function(move |lua, filter: Option<Table>| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("hosts", "read")?;
                let conn = s.conn_name("hosts", c.as_deref())?;
                let f = opts_json(&lua, filter)?;
                let mut params = json!({ "output": ["hostid", "host", "name", "status"], "selectTags": "extend", "selectGroups": ["name"], "selectInterfaces": ["ip", "dns", "port"] });
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    params["search"] = json!({ "host": n });
                    params["searchWildcardsEnabled"] = json!(true);
                }
                if let Some(g) = f.get("group").and_then(Value::as_str) {
                    let groups = s.call("hosts", &conn, "hostgroup.get", json!({ "output": ["groupid"], "filter": { "name": [g] } })).await?;
                    let ids: Vec<Value> = groups.as_array().into_iter().flatten().map(|g| g["groupid"].clone()).collect();
                    if ids.is_empty() {
                        return out(&lua, &json!([]));
                    }
                    params["groupids"] = json!(ids);
                }
                if let Some(tags) = f.get("tags").and_then(Value::as_object) {
                    params["tags"] = json!(tags.iter().map(|(k, v)| json!({ "tag": k, "value": v, "operator": 1 })).collect::<Vec<_>>());
                }
                let r = s.call("hosts", &conn, "host.get", params).await?;
                let hosts: Vec<Value> = r
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        json!({
                            "hostid": h["hostid"], "host": h["host"], "name": h["name"],
                            "enabled": h["status"] == "0",
                            "groups": h["groups"].as_array().into_iter().flatten().map(|g| g["name"].clone()).collect::<Vec<_>>(),
                            "tags": h["tags"].as_array().into_iter().flatten().map(|t| (t["tag"].as_str().unwrap_or("").to_string(), t["value"].clone())).collect::<serde_json::Map<_, _>>(),
                            "interfaces": h["interfaces"],
                        })
                    })
                    .collect();
                out(&lua, &json!(hosts))
            }
        })?,
    )?;

    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "problems",
        lua.create_async_function(move |lua, filter: Option<Table>| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("problems", "read")?;
                let conn = s.conn_name("problems", c.as_deref())?;
                let f = opts_json(&lua, filter)?;
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
                    params["hostids"] = json!(hostids(&s, "problems", &conn, &names).await?);
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
                let problems = s.call("problems", &conn, "problem.get", params).await?;
                let list = problems.as_array().cloned().unwrap_or_default();
                // Which host each problem is on: problem.get does not say, event.get does.
                let ids: Vec<Value> = list.iter().map(|p| p["eventid"].clone()).collect();
                let mut host_of = HashMap::new();
                if !ids.is_empty() {
                    let ev = s.call("problems", &conn, "event.get", json!({ "eventids": ids, "output": ["eventid"], "selectHosts": ["host"] })).await?;
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
                        json!({
                            "eventid": id, "name": p["name"], "severity": sev, "severity_name": SEVERITIES.get(sev).copied().unwrap_or("?"),
                            "host": hosts.first().cloned().unwrap_or(Value::Null), "hosts": hosts,
                            "clock": iso(&p["clock"]), "acknowledged": p["acknowledged"] == "1",
                            "tags": p["tags"].as_array().into_iter().flatten().map(|t| (t["tag"].as_str().unwrap_or("").to_string(), t["value"].clone())).collect::<serde_json::Map<_, _>>(),
                            "acknowledges": p["acknowledges"],
                        })
                    })
                    .collect();
                out(&lua, &json!(shaped))
            }
        })?,
    )?;

    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "items",
        lua.create_async_function(move |lua, (host, key): (String, Option<String>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("items", "read")?;
                let conn = s.conn_name("items", c.as_deref())?;
                let ids = hostids(&s, "items", &conn, std::slice::from_ref(&host)).await?;
                let mut params = json!({ "hostids": ids, "output": ["itemid", "name", "key_", "lastvalue", "lastclock", "value_type", "units"] });
                if let Some(k) = key {
                    params["search"] = json!({ "key_": k });
                    params["searchWildcardsEnabled"] = json!(true);
                }
                let r = s.call("items", &conn, "item.get", params).await?;
                let items: Vec<Value> = r
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| json!({ "itemid": i["itemid"], "name": i["name"], "key": i["key_"], "lastvalue": i["lastvalue"], "lastclock": iso(&i["lastclock"]), "value_type": i["value_type"], "units": i["units"] }))
                    .collect();
                out(&lua, &json!(items))
            }
        })?,
    )?;

    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "history",
        lua.create_async_function(move |lua, (itemid, from, to): (String, Option<LuaValue>, Option<LuaValue>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("history", "read")?;
                let conn = s.conn_name("history", c.as_deref())?;
                let item = s.call("history", &conn, "item.get", json!({ "itemids": [itemid], "output": ["value_type"] })).await?;
                let vt = item
                    .get(0)
                    .and_then(|i| i["value_type"].as_str())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| LUA.err("history", format!("no item {itemid} in Zabbix ({conn})")))?;
                let mut params = json!({ "itemids": [itemid], "history": vt, "output": "extend", "sortfield": "clock", "sortorder": "ASC", "limit": 100000 });
                if let Some(f) = from {
                    params["time_from"] = json!(when("history", "from", &lua.from_value::<Value>(f)?)?);
                }
                if let Some(t) = to {
                    params["time_till"] = json!(when("history", "to", &lua.from_value::<Value>(t)?)?);
                }
                let r = s.call("history", &conn, "history.get", params).await?;
                let numeric = vt == 0 || vt == 3;
                let rows: Vec<Value> = r
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        let raw = h["value"].as_str().unwrap_or("");
                        let value = if numeric { raw.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(raw)) } else { json!(raw) };
                        json!({ "clock": iso(&h["clock"]), "value": value })
                    })
                    .collect();
                out(&lua, &json!(rows))
            }
        })?,
    )?;

    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "ack",
        lua.create_async_function(move |lua, (eventid, opts): (LuaValue, Option<Table>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("ack", "ack")?;
                let conn = s.conn_name("ack", c.as_deref())?;
                let eventid = match eventid {
                    LuaValue::String(s) => s.to_string_lossy(),
                    LuaValue::Integer(i) => i.to_string(),
                    LuaValue::Number(n) => (n as i64).to_string(),
                    _ => return Err(LUA.err("ack", "eventid: expected the problem's eventid")),
                };
                let o = opts_json(&lua, opts)?;
                for k in o.as_object().into_iter().flatten().map(|(k, _)| k) {
                    if !["message", "close", "severity"].contains(&k.as_str()) {
                        return Err(LUA.err("ack", format!("unknown option `{k}` (known: message, close, severity)")));
                    }
                }
                // Action bits: 1 close, 2 acknowledge, 4 message, 8 severity.
                let mut action = 2;
                let mut params = json!({ "eventids": [eventid] });
                if let Some(m) = o.get("message").and_then(Value::as_str) {
                    action |= 4;
                    params["message"] = json!(m);
                }
                if o.get("close").and_then(Value::as_bool) == Some(true) {
                    action |= 1;
                }
                if let Some(sev) = o.get("severity") {
                    action |= 8;
                    params["severity"] = json!(severity("ack", sev)?);
                }
                params["action"] = json!(action);
                let detail = json!({ "connection": conn, "eventid": eventid, "action": action, "message": o.get("message"), "close": o.get("close"), "severity": o.get("severity") });
                if s.ctx.dry_run {
                    let mut d = detail;
                    d["planned"] = json!(true);
                    s.audit("ack", &eventid, true, d)?;
                    return Ok(false);
                }
                let r = s.call("ack", &conn, "event.acknowledge", params).await;
                s.audit("ack", &eventid, r.is_ok(), match &r {
                    Ok(_) => detail,
                    Err(e) => {
                        let mut d = detail;
                        d["error"] = json!(e.to_string());
                        d
                    }
                })?;
                r.map(|_| true)
            }
        })?,
    )?;

    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "maintenance",
        lua.create_async_function(move |lua, spec: Table| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("maintenance", "maintenance")?;
                let conn = s.conn_name("maintenance", c.as_deref())?;
                let o: Value = lua.from_value(LuaValue::Table(spec))?;
                let hosts: Vec<String> = match o.get("hosts") {
                    Some(Value::String(h)) => vec![h.clone()],
                    Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                        a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
                    }
                    _ => return Err(LUA.err("maintenance", "hosts: a host name or a list of host names")),
                };
                let duration = match o.get("duration") {
                    Some(Value::Number(n)) => n.as_u64().ok_or_else(|| LUA.err("maintenance", "duration: seconds"))?,
                    Some(Value::String(d)) => {
                        crate::util::parse_duration(d).map_err(|m| LUA.err("maintenance", format!("duration: {m}")))?.as_secs()
                    }
                    _ => return Err(LUA.err("maintenance", "duration: seconds or a duration like \"2h\"")),
                };
                if !(300..=30 * 86400).contains(&duration) {
                    return Err(LUA.err("maintenance", "duration: between 5 minutes and 30 days"));
                }
                let name = o
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("opslet {} {}", s.ctx.applet, s.ctx.run_id));
                let ids = hostids(&s, "maintenance", &conn, &hosts).await?;
                let now = chrono::Utc::now().timestamp();
                let detail = json!({ "connection": conn, "name": name, "hosts": hosts, "duration_s": duration });
                if s.ctx.dry_run {
                    let mut d = detail;
                    d["planned"] = json!(true);
                    s.audit("maintenance", &hosts.join(","), true, d)?;
                    return Ok(LuaValue::Nil);
                }
                // 6.2 replaced `hostids` with `hosts: [{hostid}]`.
                let ver = s.client("maintenance", &conn)?.version().await.map_err(|e| LUA.err("maintenance", e))?;
                let mut params = json!({
                    "name": name, "active_since": now, "active_till": now + duration as i64,
                    "timeperiods": [{ "timeperiod_type": 0, "start_date": now, "period": duration }],
                });
                if ver >= (6, 2) {
                    params["hosts"] = json!(ids.iter().map(|i| json!({ "hostid": i })).collect::<Vec<_>>());
                } else {
                    params["hostids"] = json!(ids);
                }
                let r = s.call("maintenance", &conn, "maintenance.create", params).await;
                let id = r.as_ref().ok().and_then(|v| v["maintenanceids"].get(0).cloned());
                s.audit("maintenance", &hosts.join(","), r.is_ok(), {
                    let mut d = detail;
                    d["maintenanceid"] = json!(id);
                    if let Err(e) = &r {
                        d["error"] = json!(e.to_string());
                    }
                    d
                })?;
                r?;
                out(&lua, &id.unwrap_or(Value::Null))
            }
        })?,
    )?;

    let (s, c) = (st.clone(), conn);
    t.set(
        "call",
        lua.create_async_function(move |lua, (method, params): (String, Option<LuaValue>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.require("call", &format!("call:{method}"))?;
                let conn = s.conn_name("call", c.as_deref())?;
                let params: Value = match params {
                    None | Some(LuaValue::Nil) => json!({}),
                    Some(p) => lua.from_value(p)?,
                };
                let read_only = method.ends_with(".get") || method == "apiinfo.version";
                if !read_only && s.ctx.dry_run {
                    s.audit(&method, &conn, true, json!({ "params": hide_credentials(&params), "planned": true }))?;
                    return Ok(LuaValue::Nil);
                }
                let r = s.call("call", &conn, &method, params.clone()).await;
                if !read_only {
                    s.audit(
                        &method,
                        &conn,
                        r.is_ok(),
                        json!({ "params": hide_credentials(&params), "error": r.as_ref().err().map(ToString::to_string) }),
                    )?;
                }
                out(&lua, &r?)
            }
        })?,
    )?;
    Ok(t)
}

/// A client for connection `name` with its login: the one way both a run and the CLI connect.
/// `secret` reads a secret's text by name.
fn connect(name: &str, conf: &ZabbixConn, secret: &dyn Fn(&str) -> Result<String, String>) -> Result<Client, String> {
    let login = match (&conf.user, &conf.password_secret, &conf.token_secret) {
        (Some(u), Some(p), _) => Login::Password { user: u.clone(), password: secret(p)? },
        (_, _, Some(t)) => Login::Token(secret(t)?),
        _ => return Err(format!("[zabbix.{name}] has no credentials")),
    };
    let timeout = crate::util::parse_duration(&conf.timeout).unwrap_or(Duration::from_secs(30));
    let ca =
        conf.ca_file.as_ref().map(|p| std::fs::read(p).map_err(|e| format!("[zabbix.{name}] ca_file {}: {e}", p.display()))).transpose()?;
    Client::new(name, &conf.url, login, timeout, ca.as_deref())
}

/// A client for connection `name` of `config`, with its login read from `store`'s secrets
/// (for the CLI's `cmdb import --from-zabbix`).
pub fn client_for(config: &crate::config::Config, store: &crate::store::Store, name: &str) -> Result<Client, crate::error::Error> {
    use crate::error::Error;
    let conns = settings::from_config(config)?;
    let conf = conns.get(name).ok_or_else(|| {
        let have: Vec<&String> = conns.keys().collect();
        Error::Usage(format!(
            "no [zabbix.{name}] in the config (configured: {})",
            if have.is_empty() { "none".into() } else { have.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
        ))
    })?;
    let secrets = crate::secrets::Secrets::open(store.clone())?;
    let owner = format!("[zabbix.{name}]");
    connect(name, conf, &|s| secrets.text(s, &owner).map_err(|e| e.to_string())).map_err(Error::Config)
}

/// Zabbix hosts as cmdb hosts: the technical name, the main interface's address, groups and tags
/// made into cmdb names (lowercase, `-` for anything else), the Zabbix host id as an attribute.
/// Returns the hosts and what had to be left out.
pub async fn cmdb_hosts(client: &Client, group: Option<&str>) -> Result<(Vec<crate::cmdb::Host>, Vec<String>), String> {
    let mut params = json!({ "output": ["hostid", "host", "status"], "selectGroups": ["name"], "selectInterfaces": ["ip", "dns", "useip", "main"], "selectTags": "extend" });
    if let Some(g) = group {
        let groups =
            client.call("hostgroup.get", json!({ "output": ["groupid"], "filter": { "name": [g] } })).await.map_err(|e| e.to_string())?;
        let ids: Vec<Value> = groups.as_array().into_iter().flatten().map(|g| g["groupid"].clone()).collect();
        if ids.is_empty() {
            return Err(format!("Zabbix has no host group `{g}`"));
        }
        params["groupids"] = json!(ids);
    }
    let r = client.call("host.get", params).await.map_err(|e| e.to_string())?;
    let slug = |s: &str| -> String {
        let mut out: String =
            s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c.to_ascii_lowercase() } else { '-' }).collect();
        out.truncate(128);
        out
    };
    let mut hosts = Vec::new();
    let mut skipped = Vec::new();
    for h in r.as_array().into_iter().flatten() {
        let name = h["host"].as_str().unwrap_or("").to_string();
        if crate::cmdb::valid("host", &name).is_err() {
            skipped.push(format!("host `{name}` (not a cmdb host name)"));
            continue;
        }
        let iface = h["interfaces"].as_array().into_iter().flatten().find(|i| i["main"] == "1").or_else(|| h["interfaces"].get(0));
        let address = iface
            .map(|i| if i["useip"] == "0" { i["dns"].as_str().unwrap_or("") } else { i["ip"].as_str().unwrap_or("") })
            .filter(|a| !a.is_empty())
            .unwrap_or(&name)
            .to_string();
        let mut host = crate::cmdb::Host { name: name.clone(), address, port: 22, ..Default::default() };
        host.groups = h["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .map(slug)
            .filter(|g| crate::cmdb::valid("group", g).is_ok())
            .collect();
        for t in h["tags"].as_array().into_iter().flatten() {
            let (k, v) = (t["tag"].as_str().unwrap_or(""), t["value"].as_str().unwrap_or(""));
            if crate::cmdb::valid("tag", k).is_ok() && !k.starts_with("ansible_") && !v.chars().any(char::is_control) {
                host.tags.insert(k.to_string(), v.to_string());
            } else {
                skipped.push(format!("tag `{k}` on {name}"));
            }
        }
        host.attrs.insert("zabbix_hostid".into(), h["hostid"].clone());
        host.attrs.insert("zabbix_enabled".into(), json!(h["status"] == "0"));
        hosts.push(host);
    }
    Ok((hosts, skipped))
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    Ok(Arc::new(ZabbixModule::new(settings::from_config(config)?)))
}

impl HostModule for ZabbixModule {
    fn name(&self) -> &'static str {
        "zabbix"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        let Some(list) = scope.as_array().filter(|a| !a.is_empty()) else {
            return Err("expected a list of actions: [\"read\"], [\"read\", \"ack\", \"maintenance\"], \"call:METHOD\"".into());
        };
        for v in list {
            let a = v.as_str().unwrap_or("");
            let ok = ["read", "ack", "maintenance"].contains(&a)
                || a.strip_prefix("call:")
                    .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'));
            if !ok {
                return Err(format!("`{a}` is not an action (read, ack, maintenance, call:METHOD)"));
            }
        }
        Ok(())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let st = State { conns: Arc::clone(&self.conns), clients: Arc::clone(&self.clients), ctx: Arc::clone(ctx), grant };
        let t = functions(lua, &st, None)?;
        let s2 = st.clone();
        t.set(
            "connection",
            lua.create_function(move |lua, name: String| {
                s2.conn_name("connection", Some(&name))?;
                let t = functions(lua, &s2, Some(name))?;
                t.set_readonly(true);
                Ok(t)
            })?,
        )?;
        Ok(t)
    }
}
