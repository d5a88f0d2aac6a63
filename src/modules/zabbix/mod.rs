//! The `zabbix` host module: hosts, problems, items and history to read; acknowledgements and
//! maintenance to write; a raw `call` for methods the manifest names.
//!
//! `[permissions] zabbix = ["read"]`, `["read", "ack", "maintenance"]`, `"call:host.update"`.
//! Connections are `[zabbix.NAME]` in opslet.toml; logins come from secrets. Module functions use
//! the default connection; `zabbix.connection(NAME)` gives the same functions for another one.
//! Writes are audited as actions of the run and only planned in a dry run.
//!
//! Layout: `client` is the JSON-RPC client, `problems`, `maintenance`, `time` and `redact` the
//! larger pieces of the calls, `cmdb_import` the CLI's `cmdb import --from-zabbix`; this file is
//! the Lua boundary and the per-run state.

pub mod client;
mod cmdb_import;
mod maintenance;
mod problems;
mod redact;
pub mod settings;
mod time;

use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, Table, Value as LuaValue};
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::Error;
use crate::kit::clients::{Clients, RunClients};
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use client::{Client, ZabbixError};
use cmdb_import::connect;
use problems::severity;
use redact::hide_credentials;
use settings::ZabbixConn;
use time::{iso, when};

pub use cmdb_import::{client_for, cmdb_hosts};

pub struct ZabbixModule {
    conns: Arc<std::collections::BTreeMap<String, ZabbixConn>>,
    /// Clients by connection name, kept from run to run (a login reused by the later runs of
    /// its run thread; see `kit::clients`).
    clients: Arc<Clients<Client>>,
}

impl ZabbixModule {
    pub fn new(conns: std::collections::BTreeMap<String, ZabbixConn>) -> ZabbixModule {
        ZabbixModule { conns: Arc::new(conns), clients: Arc::default() }
    }
}

/// This module's calls, for their errors (`zabbix.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("zabbix");

#[derive(Clone)]
struct State {
    conns: Arc<std::collections::BTreeMap<String, ZabbixConn>>,
    clients: RunClients<Client>,
    ctx: Arc<RunCtx>,
    grant: Grant,
    /// The applet named the connection (`zabbix.connection(NAME)`): its calls' targets say so.
    named: bool,
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

    /// The connection a call uses (a stand-in in a test with no [zabbix.*]: `kit::run_connection`).
    fn conn_name(&self, call: &str, conn: Option<&str>) -> mlua::Result<String> {
        let conns: Vec<(&str, bool)> = self.conns.iter().map(|(n, c)| (n.as_str(), c.default)).collect();
        crate::kit::run_connection(&self.ctx, "Zabbix", "zabbix", &conns, conn).map_err(|m| LUA.err(call, m))
    }

    /// The client of connection `name`, logged in on first use. Only the real call (not a
    /// test's fake) asks for it, so a test needs neither the connection's secrets nor its server.
    fn client(&self, name: &str) -> Result<Arc<Client>, String> {
        let conf = self.conns.get(name).ok_or("no Zabbix connection is configured (add [zabbix.NAME] to opslet.toml)")?;
        self.clients.get(&self.ctx, &format!("[zabbix.{name}]"), name, conf.ca_file.as_deref(), |secret| connect(name, conf, secret))
    }

    /// What a test sees as the target of `method`: the method, and `@CONN` when the applet
    /// named the connection.
    fn target(&self, conn: &str, method: &str) -> String {
        if self.named { format!("{method}@{conn}") } else { method.to_string() }
    }

    /// Calls `method` with `params` on connection `conn`: where the module's calls leave the
    /// process, as `zabbix.api` on the method (a test's fakes answer it instead). Lua call
    /// `call` names the errors.
    async fn call(&self, call: &str, conn: &str, method: &str, params: Value) -> mlua::Result<Value> {
        let real = async {
            let c = self.client(conn)?;
            c.call(method, params.clone()).await.map_err(|e: ZabbixError| e.to_string())
        };
        crate::kit::exchange::call(&self.ctx, "zabbix.api", &self.target(conn, method), params.clone(), real)
            .await
            .map_err(|e| LUA.err(call, format!("{method} on {conn}: {e}")))
    }

    /// The server's API version (`zabbix.api` on `apiinfo.version`, answered like "7.0.0").
    async fn version(&self, call: &str, conn: &str) -> mlua::Result<(u32, u32)> {
        let real = async {
            let (major, minor) = self.client(conn)?.version().await.map_err(|e| e.to_string())?;
            Ok(format!("{major}.{minor}"))
        };
        let text: String = crate::kit::exchange::call(&self.ctx, "zabbix.api", &self.target(conn, "apiinfo.version"), json!({}), real)
            .await
            .map_err(|e| LUA.err(call, format!("apiinfo.version on {conn}: {e}")))?;
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }

    fn audit(&self, action: &str, target: &str, ok: bool, detail: Value) -> mlua::Result<()> {
        self.ctx.record_action("zabbix", action, target, ok, detail).map_err(mlua::Error::external)
    }
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

/// The module's functions, bound to connection `conn` (None: the default one).
fn functions(lua: &Lua, st: &State, conn: Option<String>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let st = &State { named: conn.is_some(), ..st.clone() };

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
                out(&lua, &problems::problems(&s, &conn, &f).await?)
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
                match maintenance::create(&s, &conn, &o).await? {
                    Some(id) => out(&lua, &id),
                    None => Ok(LuaValue::Nil),
                }
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
        let st =
            State { conns: Arc::clone(&self.conns), clients: RunClients::new(&self.clients), ctx: Arc::clone(ctx), grant, named: false };
        let check = st.clone();
        crate::kit::with_connections(
            lua,
            move |lua, conn| functions(lua, &st, conn),
            move |name| check.conn_name("connection", Some(name)).map(drop),
        )
    }
}
