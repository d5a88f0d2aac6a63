//! `json`: encode and decode, with size and depth limits; cycles are rejected.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use crate::runtime::context::RunCtx;
use crate::runtime::convert::{self, ConvertError};

/// Largest document `json.encode` produces or `json.decode` accepts.
pub const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;

pub fn module(lua: &Lua, _ctx: &Arc<RunCtx>, array_mt: &Table) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 4)?;
    t.set("encode", lua.create_function(json_encode)?)?;
    let mt = array_mt.clone();
    t.set("decode", lua.create_function(move |lua, s: mlua::LuaString| json_decode(lua, s, &mt))?)?;
    let mt = array_mt.clone();
    t.set("array", lua.create_function(move |lua, t: Option<Table>| json_array(lua, t, &mt))?)?;
    t.set("null", Value::NULL)?;
    Ok(t)
}

fn json_encode(_lua: &Lua, (value, opts): (Value, Option<Table>)) -> mlua::Result<String> {
    let pretty = match &opts {
        Some(o) => o.get::<Option<bool>>("pretty")?.unwrap_or(false),
        None => false,
    };
    let v = convert::to_json(&value, MAX_JSON_BYTES).map_err(|e| match e {
        ConvertError::TooLarge(n) => mlua::Error::runtime(format!("json.encode: output would exceed {n} bytes")),
        ConvertError::Invalid(m) => mlua::Error::runtime(format!("json.encode: {m}")),
    })?;
    let out = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
    out.map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
}

fn json_decode(lua: &Lua, s: mlua::LuaString, array_mt: &Table) -> mlua::Result<Value> {
    let bytes = s.as_bytes();
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(mlua::Error::runtime(format!("json.decode: input is larger than {MAX_JSON_BYTES} bytes")));
    }
    // serde_json refuses nesting deeper than 128 levels on its own.
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| mlua::Error::runtime(format!("json.decode: {e}")))?;
    convert::to_lua(lua, &v, array_mt)
}

fn json_array(lua: &Lua, t: Option<Table>, array_mt: &Table) -> mlua::Result<Table> {
    let t = match t {
        Some(t) => t,
        None => lua.create_table()?,
    };
    t.set_metatable(Some(array_mt.clone()))?;
    Ok(t)
}
