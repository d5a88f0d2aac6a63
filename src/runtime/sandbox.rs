//! Builds the Luau state for one run: the library allow-list, host modules, `require`, limits,
//! then `sandbox(true)` so every global and library table is read-only.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use mlua::chunk::ChunkMode;
use mlua::{Lua, LuaOptions, MultiValue, StdLib, Table, Value};

use super::context::{Level, RunCtx};
use super::modules::{LazyTable, ModuleSet};
use crate::applet::AppletPackage;
use crate::error::Limit;
use crate::runtime::builtins;

/// Luau libraries an applet gets. No `debug`; `os` in Luau only has clocks and dates.
pub fn libs() -> StdLib {
    StdLib::COROUTINE | StdLib::TABLE | StdLib::OS | StdLib::STRING | StdLib::UTF8 | StdLib::BIT | StdLib::MATH | StdLib::BUFFER
}

/// Globals removed from the base library: dynamic code loading and environment tampering.
const REMOVED_GLOBALS: &[&str] = &["loadstring", "getfenv", "setfenv", "require", "newproxy", "gcinfo"];

/// Runs before the applet, with the library tables still writable. Makes every limit error
/// survive `pcall`, `xpcall` and `coroutine.resume`, and gives `table.sort` a Lua comparator so
/// the interrupt fires inside long sorts. `check` also receives any host panic caught by `pcall`;
/// converting it resumes the panic, which ends the run as an internal error.
const PRELUDE: &str = r#"
local check, run, plainfind, plainsplit, isliteral = ...
local rawpcall, rawxpcall, rawresume, rawsort = pcall, xpcall, coroutine.resume, table.sort
local rawfind, rawsplit = string.find, string.split
pcall = function(...) return check(rawpcall(...)) end
xpcall = function(...) return check(rawxpcall(...)) end
coroutine.resume = function(...) return check(rawresume(...)) end
local function lt(a, b) return a < b end
table.sort = function(t, comp) return rawsort(t, comp or lt) end
-- Luau searches literal needles with a quadratic loop that never reaches the interrupt; long
-- literal needles go to a linear-time search in the host instead.
string.find = function(s, p, init, plain)
	if type(s) == "string" and type(p) == "string" and #p > 16 and (plain or isliteral(p)) then
		return plainfind(s, p, init)
	end
	return rawfind(s, p, init, plain)
end
string.split = function(s, sep)
	if type(s) == "string" and type(sep) == "string" and #sep > 16 then
		return plainsplit(s, sep)
	end
	return rawsplit(s, sep)
end
-- The launcher: runs main.lua's chunk, then the function it returns.
return function(chunk, params, ctx)
	run.main = coroutine.running()
	local entry = chunk()
	if type(entry) ~= "function" then
		error("opslet:main-returned:" .. type(entry), 0)
	end
	return (entry(params, ctx))
end
"#;

/// The stdlib helpers bundled into the binary: `require "opslet.NAME"`.
pub const STDLIB: &[(&str, &str)] = &[
    ("opslet.strings", include_str!("../../stdlib/opslet/strings.lua")),
    ("opslet.tables", include_str!("../../stdlib/opslet/tables.lua")),
    ("opslet.text", include_str!("../../stdlib/opslet/text.lua")),
    ("opslet.es", include_str!("../../stdlib/opslet/es.lua")),
];

fn compiled_stdlib() -> &'static BTreeMap<&'static str, Vec<u8>> {
    static C: OnceLock<BTreeMap<&'static str, Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| {
        STDLIB
            .iter()
            .map(|(name, src)| (*name, super::compile(&format!("{name}.lua"), src.as_bytes()).expect("bundled stdlib compiles")))
            .collect()
    })
}

fn compiled_prelude() -> &'static [u8] {
    static C: OnceLock<Vec<u8>> = OnceLock::new();
    C.get_or_init(|| super::compile("prelude", PRELUDE.as_bytes()).expect("prelude compiles"))
}

/// A fresh sandboxed state: the array metatable for JSON conversions and the launcher function
/// `launch(chunk, params, ctx)` that runs main.lua and calls the function it returns.
pub struct State {
    pub lua: Lua,
    pub array_mt: Table,
    pub launch: mlua::Function,
}

/// Prefix of the launcher's error when main.lua does not return a function.
pub const MAIN_RETURNED: &str = "opslet:main-returned:";

/// Creates the sandboxed state for `package`.
pub fn new_state(ctx: &Arc<RunCtx>, package: &Arc<AppletPackage>, modules: &ModuleSet) -> mlua::Result<State> {
    let lua = Lua::new_with(libs(), LuaOptions::new())?;
    let guard = Arc::clone(&ctx.guard);
    guard.install(&lua)?;
    let run_info = super::lazy_async::install(&lua)?;
    let globals = lua.globals();
    for name in REMOVED_GLOBALS {
        globals.raw_set(*name, Value::Nil)?;
    }

    let array_mt = lua.create_table()?;
    array_mt.raw_set("__opslet_array", true)?;
    array_mt.set_readonly(true);

    // The always-available modules are built when the applet first uses them: most applets use
    // a few, and building all of them would cost more than a short run.
    let (c, mt) = (Arc::clone(ctx), array_mt.clone());
    let json: LazyTable = Box::new(move |lua| builtins::json::module(lua, &c, &mt));
    let c = Arc::clone(ctx);
    let log: LazyTable = Box::new(move |lua| builtins::log::module(lua, &c));
    let c = Arc::clone(ctx);
    let time: LazyTable = Box::new(move |lua| builtins::time::module(lua, &c));
    let (c, mt) = (Arc::clone(ctx), array_mt.clone());
    let kv: LazyTable = Box::new(move |lua| builtins::kv::module(lua, &c, &mt));
    globals.raw_set("print", builtins::log::logger(&lua, ctx, Level::Info)?)?;
    globals.raw_set("require", require_fn(&lua, package)?)?;
    modules.inject(&lua, &globals, &package.manifest, ctx, vec![("json", json), ("log", log), ("time", time), ("kv", kv)])?;

    let g = Arc::clone(&guard);
    let check = lua.create_function(move |lua, results: MultiValue| {
        if matches!(results.front(), Some(Value::Boolean(false))) {
            // Luau's allocation failure message, possibly with a position or context prefixed
            // and a traceback appended; or mlua's memory error from a host function.
            let out_of_memory = match results.get(1) {
                Some(Value::String(s)) => s.to_string_lossy().lines().next().is_some_and(|l| l.ends_with("not enough memory")),
                Some(Value::Error(e)) => is_memory_error(e),
                _ => false,
            };
            if out_of_memory {
                return Err(g.trip(Limit::Memory));
            }
        }
        if g.tripped().is_some() || g.is_cancelled() {
            return Err(g.raise());
        }
        // Errors raised by host functions reach Lua as userdata; applets get the message text.
        let mut results = results;
        if let Some(Value::Error(e)) = results.get(1) {
            let (msg, _) = super::describe_lua_error(e);
            results[1] = Value::String(lua.create_string(&msg)?);
        }
        Ok(results)
    })?;
    let plainfind = lua.create_function(plain_find)?;
    let plainsplit = lua.create_function(plain_split)?;
    // Luau's own test for "no pattern characters" (`nospecials`), without running the matcher
    // (and its interrupt) once per byte of a long needle.
    let isliteral = lua.create_function(|_, p: mlua::LuaString| Ok(!p.as_bytes().iter().any(|b| b"^$*+?.([%-".contains(b))))?;
    let launch: mlua::Function = lua
        .load(compiled_prelude())
        .set_name("=prelude")
        .set_mode(ChunkMode::Binary)
        .call((check, run_info, plainfind, plainsplit, isliteral))?;
    lua.sandbox(true)?;
    Ok(State { lua, array_mt, launch })
}

/// `string.find(s, p, init, true)` in linear time: returns start and end (1-based) or nil.
fn plain_find(_: &Lua, (s, p, init): (mlua::LuaString, mlua::LuaString, Option<i64>)) -> mlua::Result<(Option<i64>, Option<i64>)> {
    let (s, p) = (s.as_bytes(), p.as_bytes());
    let len = s.len() as i64;
    let init = match init.unwrap_or(1) {
        i if i < 0 => (len + i + 1).max(1),
        0 => 1,
        i => i,
    };
    if init > len + 1 {
        return Ok((None, None));
    }
    let from = (init - 1) as usize;
    Ok(match memchr::memmem::find(&s[from..], &p) {
        Some(pos) => {
            let start = init + pos as i64;
            (Some(start), Some(start + p.len() as i64 - 1))
        }
        None => (None, None),
    })
}

/// `string.split(s, sep)` in linear time for a non-empty separator.
fn plain_split(lua: &Lua, (s, sep): (mlua::LuaString, mlua::LuaString)) -> mlua::Result<Table> {
    let (s, sep) = (s.as_bytes(), sep.as_bytes());
    let out = lua.create_table()?;
    let mut start = 0;
    let mut n = 0;
    for pos in memchr::memmem::find_iter(&s, &sep) {
        n += 1;
        out.raw_set(n, lua.create_string(&s[start..pos])?)?;
        start = pos + sep.len();
    }
    out.raw_set(n + 1, lua.create_string(&s[start..])?)?;
    Ok(out)
}

/// Whether an error is (or wraps) a failed allocation.
pub fn is_out_of_memory(e: &mlua::Error) -> bool {
    is_memory_error(e)
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        other => other.to_string().lines().next().is_some_and(|l| l.ends_with("not enough memory")),
    }
}

/// `require(name)`: `opslet.*` from the bundled stdlib, anything else from the applet's own
/// files (`require "lib.util"` loads `lib/util.lua`). Never touches the filesystem.
fn require_fn(lua: &Lua, package: &Arc<AppletPackage>) -> mlua::Result<mlua::Function> {
    let package = Arc::clone(package);
    let loaded = lua.create_table()?;
    lua.create_function(move |lua, name: String| {
        // Resolve first, so `lib.util` and `./lib/util` share one cache entry (the file path).
        let (key, chunk_name, bytecode): (String, String, &[u8]) = if name.starts_with("opslet.") {
            match compiled_stdlib().get(name.as_str()) {
                Some(b) => (name.clone(), format!("={name}"), b.as_slice()),
                None => {
                    let have: Vec<&str> = STDLIB.iter().map(|(n, _)| *n).collect();
                    return Err(mlua::Error::runtime(format!("require: no stdlib module `{name}` (have: {})", have.join(", "))));
                }
            }
        } else {
            let path = module_path(&name).map_err(mlua::Error::runtime)?;
            match package.bytecode.get(&path) {
                Some(b) => (path.clone(), format!("={path}"), b.as_slice()),
                None => {
                    return Err(mlua::Error::runtime(format!(
                        "require: module `{name}` not found: looked for {path} in the applet (modules load only from the applet's own files or opslet.* stdlib)"
                    )));
                }
            }
        };
        if let Some(v) = loaded.raw_get::<Option<Value>>(key.as_str())? {
            if v == Value::Boolean(false) {
                return Err(mlua::Error::runtime(format!("require: `{name}` is being loaded already (circular require)")));
            }
            return Ok(v);
        }
        loaded.raw_set(key.as_str(), false)?;
        let result = lua.load(bytecode).set_name(chunk_name).set_mode(ChunkMode::Binary).call::<Value>(());
        let value = match result {
            Ok(Value::Nil) => Value::Boolean(true),
            Ok(v) => v,
            Err(e) => {
                loaded.raw_set(key.as_str(), Value::Nil)?;
                return Err(e);
            }
        };
        loaded.raw_set(key.as_str(), value.clone())?;
        Ok(value)
    })
}

/// Maps a module name to a package path: `lib.util` and `./lib/util` both mean `lib/util.lua`.
pub fn module_path(name: &str) -> Result<String, String> {
    let trimmed = name.strip_prefix("./").unwrap_or(name);
    let base = trimmed.strip_suffix(".lua").unwrap_or(trimmed);
    let path = if base.contains('/') { format!("{base}.lua") } else { format!("{}.lua", base.replace('.', "/")) };
    crate::applet::check_rel_path(&path).map_err(|m| format!("require: `{name}` is not a valid module name: {m}"))?;
    if path == crate::applet::MAIN_FILE {
        return Err("require: main.lua cannot be required".into());
    }
    Ok(path)
}
