//! The host-module kit: what every module shares, so no module imports another. The plug-in
//! interface (`HostModule`, `Grant`) comes from the runtime and is re-exported here; the kit
//! adds the targets of a run and the fan-out over them, the I/O threads, option parsing, secret
//! access, Lua conversion, error helpers and the audit of actions in flight ([`Pending`]).

pub mod clients;
pub mod exchange;
pub mod fanout;
pub mod http;
pub mod io;
pub mod objects;
pub mod options;
pub mod ssh;
pub mod targets;

use std::sync::Arc;

use mlua::Lua;

use crate::runtime::context::RunCtx;
pub use crate::runtime::modules::{Grant, HostModule};

/// Which named connection a call uses: the one asked for, else the one marked default, the only
/// one, or the one named "default". `label` names the kind in messages ("Zabbix", "es"),
/// `module` the config table and Lua global; `conns` are (name, marked default).
pub fn pick_connection(label: &str, module: &str, conns: &[(&str, bool)], asked: Option<&str>) -> Result<String, String> {
    let names = || conns.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    if let Some(c) = asked {
        return if conns.iter().any(|(n, _)| *n == c) {
            Ok(c.to_string())
        } else {
            Err(format!("no {label} connection `{c}` (configured: {})", names()))
        };
    }
    if let Some((n, _)) = conns.iter().find(|(_, d)| *d) {
        return Ok(n.to_string());
    }
    match conns {
        [] => Err(format!("no {label} connection is configured (add [{module}.NAME] to opslet.toml)")),
        [(only, _)] => Ok(only.to_string()),
        _ if conns.iter().any(|(n, _)| *n == "default") => Ok("default".into()),
        _ => Err(format!("several {label} connections ({}): mark one `default = true` or use {module}.connection(NAME)", names())),
    }
}

/// Whether a run's calls of a module with `configured` connections go to stand-ins: a test
/// (fakes or a transcript answer) with no connection of that module configured has stand-ins,
/// which nothing is ever sent to.
pub fn stand_ins(ctx: &RunCtx, configured: usize) -> bool {
    configured == 0 && ctx.exchange.is_some()
}

/// The connection a run's call uses: [`pick_connection`], or, where [`stand_ins`] holds, the one
/// asked for or "default".
pub fn run_connection(ctx: &RunCtx, label: &str, module: &str, conns: &[(&str, bool)], asked: Option<&str>) -> Result<String, String> {
    if stand_ins(ctx, conns.len()) {
        return Ok(asked.unwrap_or("default").to_string());
    }
    pick_connection(label, module, conns, asked)
}

/// The table of a module with named connections (zabbix, es, s3): `functions(lua, None)` on the
/// default connection, and `connection(NAME)`, the same functions on another one (read-only),
/// once `check(NAME)` accepts it.
pub fn with_connections<F, C>(lua: &Lua, functions: F, check: C) -> mlua::Result<mlua::Table>
where
    F: Fn(&Lua, Option<String>) -> mlua::Result<mlua::Table> + mlua::MaybeSend + 'static,
    C: Fn(&str) -> mlua::Result<()> + mlua::MaybeSend + 'static,
{
    let t = functions(lua, None)?;
    t.set(
        "connection",
        lua.create_function(move |lua, name: String| {
            check(&name)?;
            let t = functions(lua, Some(name))?;
            t.set_readonly(true);
            Ok(t)
        })?,
    )?;
    Ok(t)
}

/// An action sent to a host, device or BMC whose outcome is not known yet. Dropped before
/// [`Pending::finish`] (the run was cancelled or ran out of time mid-call), it records the action
/// as abandoned, so the audit log shows what was in flight where.
pub struct Pending {
    ctx: Arc<RunCtx>,
    module: &'static str,
    action: String,
    target: String,
    detail: serde_json::Value,
    t0: std::time::Instant,
    done: bool,
}

impl Pending {
    pub fn new(ctx: &Arc<RunCtx>, module: &'static str, action: &str, target: &str, detail: serde_json::Value) -> Pending {
        let t0 = std::time::Instant::now();
        Pending { ctx: Arc::clone(ctx), module, action: action.into(), target: target.into(), detail, t0, done: false }
    }

    /// The outcome is being recorded by the caller.
    pub fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let mut d = self.detail.take();
            if !d.is_object() {
                d = serde_json::json!({});
            }
            d["duration_ms"] = serde_json::json!(self.t0.elapsed().as_millis() as u64);
            d["error"] =
                serde_json::json!("abandoned: the run ended (cancelled or out of time) while this was in flight; it may have taken effect");
            let _ = self.ctx.record_action(self.module, &self.action, &self.target, false, d);
        }
    }
}

/// A JSON value as Lua, arrays marked as such (so they come back out as JSON arrays).
pub fn json_to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<mlua::Value> {
    let mt = lua.create_table()?;
    mt.raw_set("__opslet_array", true)?;
    crate::runtime::convert::to_lua(lua, v, &mt)
}

/// Any serializable value (a module's result records) as Lua, through its JSON form.
pub fn to_lua<T: serde::Serialize + ?Sized>(lua: &Lua, v: &T) -> mlua::Result<mlua::Value> {
    let v = serde_json::to_value(v).map_err(mlua::Error::external)?;
    json_to_lua(lua, &v)
}

/// The list of strings under `key` of a table scope (None when absent); anything else there is
/// an error naming the key.
pub fn string_list(t: &toml::map::Map<String, toml::Value>, key: &str) -> Result<Option<Vec<String>>, String> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| format!("`{key}` must be a list of strings")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("`{key}` must be a list of strings")),
    }
}

/// A secret's text for this run; `owner` is the config entry that names it. The store's, or
/// (on a worker) what the run's secret source gives; the run's output hides it from then on.
pub fn read_secret(ctx: &RunCtx, owner: &str, name: &str) -> Result<String, String> {
    if let Some(source) = &ctx.secret_source {
        return match source(&ctx.run_id, name)? {
            Some(v) => {
                ctx.redactor.learn(&v);
                Ok(v)
            }
            None => Err(format!("secret `{name}` (named in {owner}) is not set")),
        };
    }
    let store = ctx.store.clone().ok_or("this run has no data store (no secrets)")?;
    let v = crate::secrets::Secrets::open(store).and_then(|s| s.text(name, owner)).map_err(|e| e.to_string())?;
    // The run's redactor was given the store's secrets when it began; one set since is learned
    // here.
    ctx.redactor.learn(&v);
    Ok(v)
}

/// A host module's name, for the errors of its calls: `SSH.err("run", m)` raises `ssh.run: m`.
#[derive(Debug, Clone, Copy)]
pub struct Calls(pub &'static str);

impl Calls {
    /// A Lua error from `module.call`.
    pub fn err(self, call: &str, m: impl std::fmt::Display) -> mlua::Error {
        mlua::Error::runtime(format!("{}.{call}: {m}", self.0))
    }

    /// `module.call`, as the kit's shared parsers name the call in their errors.
    pub fn call(self, call: &str) -> String {
        format!("{}.{call}", self.0)
    }
}

/// A Lua error from the call `module.call`: `ssh.run: ...` (`call` is `ssh.run`).
pub fn lua_err(call: &str, m: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("{call}: {m}"))
}
