//! Async host functions created on first call.
//!
//! mlua compiles a small Lua wrapper the first time a state creates an async function, which
//! costs more than creating the whole state. Every run gets a fresh state, so host modules
//! register async functions through [`async_function`]: the applet sees a plain Lua stub, and the
//! real async function is only built if the applet calls it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;

use mlua::chunk::ChunkMode;
use mlua::{FromLuaMulti, Function, IntoLuaMulti, Lua, MaybeSend, Table};
use parking_lot::Mutex;

type Ctor = Box<dyn FnOnce(&Lua) -> mlua::Result<Function> + Send>;

/// Per-state bookkeeping, kept in the state's app data.
pub(crate) struct LazyAsync {
    make_stub: Function,
    getter: Function,
    /// `run.main` is the run's own coroutine, set by the launcher.
    run: Table,
    pending: std::sync::Arc<Mutex<HashMap<&'static str, Ctor>>>,
}

const STUB: &str = r#"
local getter, name, run = ...
return function(...)
	if coroutine.running() ~= run.main then
		error(name .. ": cannot wait inside a coroutine the applet created; call it from the applet's own flow", 2)
	end
	if not coroutine.isyieldable() then
		error(name .. ": cannot wait here (in a module's top-level code, a metamethod or a sort comparator); call it from a function", 2)
	end
	return getter(name)(...)
end
"#;

fn stub_bytecode() -> &'static [u8] {
    static C: OnceLock<Vec<u8>> = OnceLock::new();
    C.get_or_init(|| super::compile("async-stub", STUB.as_bytes()).expect("stub compiles"))
}

/// Prepares `lua` for [`async_function`]. Called once per state, before modules register.
/// Returns the table whose `main` field the launcher sets to the run's coroutine.
pub(crate) fn install(lua: &Lua) -> mlua::Result<Table> {
    let pending: std::sync::Arc<Mutex<HashMap<&'static str, Ctor>>> = Default::default();
    let cache: Table = lua.create_table()?;
    let p = std::sync::Arc::clone(&pending);
    let getter = lua.create_function(move |lua, name: String| {
        if let Some(f) = cache.raw_get::<Option<Function>>(name.as_str())? {
            return Ok(f);
        }
        let ctor =
            p.lock().remove(name.as_str()).ok_or_else(|| mlua::Error::runtime(format!("{name}: host function is not registered")))?;
        let f = ctor(lua)?;
        cache.raw_set(name.as_str(), f.clone())?;
        Ok(f)
    })?;
    let make_stub = lua.load(stub_bytecode()).set_name("=[host]").set_mode(ChunkMode::Binary).into_function()?;
    let run = lua.create_table()?;
    lua.set_app_data(LazyAsync { make_stub, getter, run: run.clone(), pending });
    Ok(run)
}

/// An async host function named `name` (like `time.sleep`), built on its first call.
pub fn async_function<F, A, FR, R>(lua: &Lua, name: &'static str, func: F) -> mlua::Result<Function>
where
    F: Fn(Lua, A) -> FR + MaybeSend + 'static,
    A: FromLuaMulti,
    FR: Future<Output = mlua::Result<R>> + MaybeSend + 'static,
    R: IntoLuaMulti,
{
    let (make_stub, getter, run, pending) = {
        let lazy =
            lua.app_data_ref::<LazyAsync>().ok_or_else(|| mlua::Error::runtime("async host functions are not set up in this state"))?;
        (lazy.make_stub.clone(), lazy.getter.clone(), lazy.run.clone(), std::sync::Arc::clone(&lazy.pending))
    };
    pending.lock().insert(name, Box::new(move |lua: &Lua| lua.create_async_function(func)));
    make_stub.call((getter, name, run))
}
