//! The `cmdb` host module: read hosts by selector or name; with the `write` action, change
//! them. `[permissions] cmdb = ["read"]` or `["read", "write"]`.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use crate::cmdb::Cmdb;
use crate::config::Config;
use crate::error::Error;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;

pub struct CmdbModule;

fn cmdb_of(ctx: &RunCtx, call: &str) -> mlua::Result<Cmdb> {
    let store = ctx.store.clone().ok_or_else(|| mlua::Error::runtime(format!("cmdb.{call}: this run has no data store")))?;
    Cmdb::new(store).map_err(|e| mlua::Error::runtime(format!("cmdb.{call}: {e}")))
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    let _ = config;
    Ok(Arc::new(CmdbModule))
}

impl HostModule for CmdbModule {
    fn name(&self) -> &'static str {
        "cmdb"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        let ok = scope.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(|v| matches!(v.as_str(), Some("read" | "write"))));
        if ok { Ok(()) } else { Err("expected a list of actions: [\"read\"] or [\"read\", \"write\"]".into()) }
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let t = lua.create_table()?;
        let (g, c) = (grant.clone(), Arc::clone(ctx));
        t.set(
            "hosts",
            lua.create_function(move |lua, selector: String| {
                g.require("hosts", "read")?;
                let hosts = cmdb_of(&c, "hosts")?.select(&selector).map_err(|e| mlua::Error::runtime(format!("cmdb.hosts: {e}")))?;
                let out = lua.create_table()?;
                for (i, h) in hosts.iter().enumerate() {
                    out.raw_set(i + 1, crate::kit::to_lua(lua, h)?)?;
                }
                Ok(out)
            })?,
        )?;
        let (g, c) = (grant.clone(), Arc::clone(ctx));
        t.set(
            "host",
            lua.create_function(move |lua, name: String| {
                g.require("host", "read")?;
                match cmdb_of(&c, "host")?.host(&name).map_err(|e| mlua::Error::runtime(format!("cmdb.host: {e}")))? {
                    Some(h) => crate::kit::to_lua(lua, &h),
                    None => Ok(Value::Nil),
                }
            })?,
        )?;
        let (g, c) = (grant, Arc::clone(ctx));
        t.set(
            "set",
            lua.create_function(move |_, (name, fields): (String, Table)| {
                g.require("set", "write")?;
                let db = cmdb_of(&c, "set")?;
                let mut h = db
                    .host(&name)
                    .map_err(|e| mlua::Error::runtime(format!("cmdb.set: {e}")))?
                    .ok_or_else(|| mlua::Error::runtime(format!("cmdb.set: no host `{name}`")))?;
                let before = h.clone();
                if let Some(a) = fields.get::<Option<String>>("address")? {
                    h.address = a;
                }
                if let Some(p) = fields.get::<Option<u16>>("port")? {
                    h.port = p;
                }
                if let Some(tags) = fields.get::<Option<Table>>("tags")? {
                    for pair in tags.pairs::<String, Value>() {
                        let (k, v) = pair?;
                        match v {
                            Value::Nil | Value::Boolean(false) => {
                                h.tags.remove(&k);
                            }
                            other => {
                                h.tags.insert(k, crate::runtime::builtins::log::display(&other));
                            }
                        }
                    }
                }
                if c.dry_run {
                    c.record_action("cmdb", "set", &name, true, serde_json::json!({ "planned": true, "before": before, "after": h }))
                        .map_err(mlua::Error::external)?;
                    return Ok(false);
                }
                db.put(h.clone(), &c.caller.user).map_err(|e| mlua::Error::runtime(format!("cmdb.set: {e}")))?;
                c.record_action("cmdb", "set", &name, true, serde_json::json!({ "before": before, "after": h }))
                    .map_err(mlua::Error::external)?;
                Ok(true)
            })?,
        )?;
        Ok(t)
    }
}
