//! How host modules plug into a run: the [`HostModule`] trait each module implements, the
//! [`Grant`] a manifest gives it, and the [`ModuleSet`] a runtime injects into each Luau state.
//!
//! The runtime knows modules only through this interface; the modules themselves, and the kit
//! they share, sit above the runtime (`kit`, `modules`). A module is injected only when the
//! manifest grants it; otherwise its global is a stub whose every field raises an error naming
//! the missing permission. Modules check their scope on every call through [`Grant`].

use std::sync::Arc;

use mlua::{Lua, Table};

use crate::runtime::context::RunCtx;

/// One host module.
pub trait HostModule: Send + Sync {
    /// The Lua global and the `[permissions]` key.
    fn name(&self) -> &'static str;
    /// Checks the manifest's scope value (`ssh = { hosts = [...] }`, `zabbix = ["read"]`).
    fn check_scope(&self, scope: &toml::Value) -> Result<(), String>;
    /// Builds the module table for one run.
    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table>;
}

/// Builds a global's table on first use (see [`ModuleSet::inject`]).
pub type LazyTable = Box<dyn Fn(&Lua) -> mlua::Result<Table> + Send + Sync>;

/// The permission an applet holds for one module, checked on each call.
#[derive(Debug, Clone)]
pub struct Grant {
    pub module: &'static str,
    pub scope: toml::Value,
}

impl Grant {
    /// The listed actions: `["read", "ack"]`, the `actions` key of a table scope, or those of a
    /// list of tables (each table's `actions`).
    pub fn actions(&self) -> Vec<String> {
        let of_table = |t: &toml::map::Map<String, toml::Value>| -> Vec<String> {
            t.get("actions").and_then(toml::Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
        };
        match &self.scope {
            // A list of actions, or (s3) a list of tables that each grant some.
            toml::Value::Array(a) => {
                let mut out: Vec<String> = Vec::new();
                for v in a {
                    let more = match v {
                        toml::Value::String(s) => vec![s.clone()],
                        toml::Value::Table(t) => of_table(t),
                        _ => Vec::new(),
                    };
                    for m in more {
                        if !out.contains(&m) {
                            out.push(m);
                        }
                    }
                }
                out
            }
            toml::Value::Table(t) => of_table(t),
            _ => Vec::new(),
        }
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

/// A set of host modules (the built-in ones come from `modules::builtin`).
#[derive(Clone, Default)]
pub struct ModuleSet {
    modules: Vec<Arc<dyn HostModule>>,
    /// Every module name opslet knows, built into this set or not: an applet naming one that is
    /// missing is told it is not available in this build (not that it does not exist).
    known: Vec<&'static str>,
}

impl ModuleSet {
    pub fn new(modules: Vec<Arc<dyn HostModule>>) -> ModuleSet {
        ModuleSet { modules, known: Vec::new() }
    }

    /// Sets the names opslet knows (`modules::BUILTIN`), including those this build leaves out.
    pub fn knowing(mut self, known: Vec<&'static str>) -> ModuleSet {
        self.known = known;
        self
    }

    /// Adds a module (embedding hosts and tests use this to plug in their own).
    pub fn with(mut self, module: Arc<dyn HostModule>) -> ModuleSet {
        self.modules.retain(|m| m.name() != module.name());
        self.modules.push(module);
        self
    }

    /// Leaves the module called `name` out.
    pub fn without(mut self, name: &str) -> ModuleSet {
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
        if self.known.contains(&name) {
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
        for name in self.known.iter().filter(|n| self.get(n).is_none()) {
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

impl crate::applet::PermissionCheck for ModuleSet {
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

/// A table whose every field access raises `module.field: why`.
fn stub(lua: &Lua, module: &'static str, why: &str) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let mt = lua.create_table()?;
    let why = why.to_string();
    mt.raw_set(
        "__index",
        lua.create_function(move |_, (_t, key): (Table, mlua::Value)| -> mlua::Result<()> {
            let key = super::builtins::log::display(&key);
            Err(mlua::Error::runtime(format!("{module}.{key}: {why}")))
        })?,
    )?;
    mt.raw_set("__metatable", false)?;
    mt.set_readonly(true);
    t.set_metatable(Some(mt))?;
    t.set_readonly(true);
    Ok(t)
}
