//! Host modules: the capabilities an applet must ask for in `[permissions]`.
//!
//! Each module implements [`HostModule`] and is listed once in [`ModuleRegistry::builtin`]. A
//! module is injected only when the manifest grants it; otherwise its global is a stub whose
//! every field raises an error naming the missing permission. Modules check their scope on every
//! call through [`Grant`].

pub mod cmdb;
pub mod config;
pub mod es;
pub mod ipmi;
pub mod netdev;
pub mod ssh;
pub mod targets;
#[cfg(feature = "virt")]
pub mod virt;
pub mod zabbix;

use std::sync::Arc;

use mlua::{Lua, Table};

use crate::runtime::context::RunCtx;

/// Every host module opslet knows by name (some arrive in later versions).
pub const KNOWN: &[&str] = &["ssh", "zabbix", "es", "netdev", "virt", "ipmi", "cmdb", "config"];

/// One host module.
pub trait HostModule: Send + Sync {
    /// The Lua global and the `[permissions]` key.
    fn name(&self) -> &'static str;
    /// Checks the manifest's scope value (`ssh = { hosts = [...] }`, `zabbix = ["read"]`).
    fn check_scope(&self, scope: &toml::Value) -> Result<(), String>;
    /// Builds the module table for one run.
    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table>;
}

/// Builds a global's table on first use (see [`ModuleRegistry::inject`]).
pub type LazyTable = Box<dyn Fn(&Lua) -> mlua::Result<Table> + Send + Sync>;

/// The permission an applet holds for one module, checked on each call.
#[derive(Debug, Clone)]
pub struct Grant {
    pub module: &'static str,
    pub scope: toml::Value,
}

impl Grant {
    /// The listed actions: `["read", "ack"]`, or the `actions` key of a table scope.
    pub fn actions(&self) -> Vec<String> {
        let list = match &self.scope {
            toml::Value::Array(a) => Some(a),
            toml::Value::Table(t) => t.get("actions").and_then(toml::Value::as_array),
            _ => None,
        };
        list.map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    /// Fails unless `action` is granted; `function` names the Lua call for the message.
    pub fn require(&self, function: &str, action: &str) -> mlua::Result<()> {
        if self.actions().iter().any(|a| a == action || a == "*") {
            Ok(())
        } else {
            Err(mlua::Error::runtime(format!(
                "{}.{function}: permission denied: the applet's manifest does not grant `{action}` (add it: [permissions] {} = [\"{action}\"])",
                self.module, self.module
            )))
        }
    }

    /// A list-valued key of a table scope (`hosts`, `commands`, ...).
    pub fn list(&self, key: &str) -> Vec<String> {
        match &self.scope {
            toml::Value::Table(t) => t
                .get(key)
                .and_then(toml::Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// The set of host modules available in this build.
#[derive(Clone, Default)]
pub struct ModuleRegistry {
    modules: Vec<Arc<dyn HostModule>>,
}

impl ModuleRegistry {
    /// The modules compiled into this opslet, with default settings (enough to check
    /// manifests; runs use [`ModuleRegistry::from_config`]).
    pub fn builtin() -> ModuleRegistry {
        ModuleRegistry::from_config(&crate::config::Config::default()).expect("the default config is valid")
    }

    /// The modules compiled into this opslet, set up from `config`.
    pub fn from_config(config: &crate::config::Config) -> Result<ModuleRegistry, String> {
        #[allow(unused_mut)]
        let mut modules: Vec<Arc<dyn HostModule>> = vec![
            Arc::new(cmdb::CmdbModule),
            Arc::new(ssh::SshModule::new(config.ssh_settings()?)),
            Arc::new(self::config::ConfigModule::new(config.ssh_settings()?)),
            Arc::new(zabbix::ZabbixModule::new(config.zabbix.clone())),
            Arc::new(es::EsModule::new(config.es.clone())),
            Arc::new(netdev::NetdevModule::new(config.netdev_settings()?)),
            Arc::new(ipmi::IpmiModule::new(config.ipmi.clone())?),
        ];
        #[cfg(feature = "virt")]
        modules.push(Arc::new(virt::VirtModule::new(config.virt.clone())));
        Ok(ModuleRegistry { modules })
    }

    /// Adds a module (embedding hosts and tests use this to plug in their own).
    pub fn with(mut self, module: Arc<dyn HostModule>) -> ModuleRegistry {
        self.modules.retain(|m| m.name() != module.name());
        self.modules.push(module);
        self
    }

    /// Leaves the module called `name` out.
    pub fn without(mut self, name: &str) -> ModuleRegistry {
        self.modules.retain(|m| m.name() != name);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn HostModule>> {
        self.modules.iter().find(|m| m.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name()).collect()
    }

    fn unavailable(&self, name: &str) -> String {
        let have = self.names();
        let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
        if KNOWN.contains(&name) {
            format!("the `{name}` module is not available in this opslet build (available: {have})")
        } else {
            format!("unknown module `{name}` (available: {have})")
        }
    }

    /// Sets each granted module's global. Every other module name resolves, through a metatable
    /// on the globals, to a stub whose fields raise an error naming the missing permission; the
    /// stubs, and the `lazy` tables (the always-available modules), are only built when an
    /// applet first touches them, and are read-only.
    pub fn inject(
        &self,
        lua: &Lua,
        globals: &Table,
        manifest: &crate::applet::Manifest,
        ctx: &Arc<RunCtx>,
        lazy: Vec<(&'static str, LazyTable)>,
    ) -> mlua::Result<()> {
        let mut missing: Vec<(&'static str, String)> = Vec::new();
        for m in &self.modules {
            match manifest.permissions.get(m.name()) {
                Some(scope) => globals.raw_set(m.name(), m.register(lua, Grant { module: m.name(), scope: scope.clone() }, ctx)?)?,
                None => missing.push((m.name(), format!("permission denied: this applet does not declare the `{0}` permission (add `{0} = ...` under [permissions] in applet.toml)", m.name()))),
            }
        }
        for name in KNOWN.iter().filter(|n| self.get(n).is_none()) {
            missing.push((name, self.unavailable(name)));
        }
        let mt = lua.create_table()?;
        let built = lua.create_table()?;
        mt.raw_set(
            "__index",
            lua.create_function(move |lua, (_g, key): (Table, mlua::Value)| -> mlua::Result<mlua::Value> {
                let mlua::Value::String(key) = key else { return Ok(mlua::Value::Nil) };
                let key = key.as_bytes();
                if let Some((name, make)) = lazy.iter().find(|(n, _)| key.as_ref() == n.as_bytes()) {
                    if let Some(t) = built.raw_get::<Option<Table>>(*name)? {
                        return Ok(mlua::Value::Table(t));
                    }
                    let t = make(lua)?;
                    t.set_readonly(true);
                    built.raw_set(*name, t.clone())?;
                    return Ok(mlua::Value::Table(t));
                }
                let Some((module, why)) = missing.iter().find(|(m, _)| key.as_ref() == m.as_bytes()) else {
                    return Ok(mlua::Value::Nil);
                };
                if let Some(t) = built.raw_get::<Option<Table>>(*module)? {
                    return Ok(mlua::Value::Table(t));
                }
                let t = stub(lua, module, why)?;
                built.raw_set(*module, t.clone())?;
                Ok(mlua::Value::Table(t))
            })?,
        )?;
        mt.raw_set("__metatable", false)?;
        mt.set_readonly(true);
        globals.set_metatable(Some(mt))?;
        Ok(())
    }
}

impl crate::applet::PermissionCheck for ModuleRegistry {
    /// Every permission must name a module of this build with a scope it accepts.
    fn check_permissions(&self, manifest: &crate::applet::Manifest) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        for (name, scope) in &manifest.permissions {
            match self.get(name) {
                Some(m) => {
                    if let Err(msg) = m.check_scope(scope) {
                        errs.push((name.clone(), msg));
                    }
                }
                None => errs.push((name.clone(), self.unavailable(name))),
            }
        }
        errs
    }
}

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

/// An option error from a shared parser (`ssh.NAME: ...`) as the calling module's
/// (`config.NAME: ...`).
pub fn rename_error(e: mlua::Error, from: &str, to: &str) -> mlua::Error {
    let m = match &e {
        mlua::Error::RuntimeError(m) => m.clone(),
        other => other.to_string(),
    };
    match m.strip_prefix(&format!("{from}: ")) {
        Some(rest) => mlua::Error::runtime(format!("{to}: {rest}")),
        None => mlua::Error::runtime(m),
    }
}

/// A JSON value as Lua, arrays marked as such (so they come back out as JSON arrays).
pub fn json_to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<mlua::Value> {
    let mt = lua.create_table()?;
    mt.raw_set("__opslet_array", true)?;
    crate::runtime::convert::to_lua(lua, v, &mt)
}

/// A table whose every field access raises `module.field: why`.
fn stub(lua: &Lua, module: &'static str, why: &str) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let mt = lua.create_table()?;
    let why = why.to_string();
    mt.raw_set(
        "__index",
        lua.create_function(move |_, (_t, key): (Table, mlua::Value)| -> mlua::Result<()> {
            let key = crate::runtime::builtins::log::display(&key);
            Err(mlua::Error::runtime(format!("{module}.{key}: {why}")))
        })?,
    )?;
    mt.raw_set("__metatable", false)?;
    mt.set_readonly(true);
    t.set_metatable(Some(mt))?;
    t.set_readonly(true);
    Ok(t)
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

