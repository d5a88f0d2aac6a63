//! `json`: encode and decode, with size and depth limits; cycles are rejected.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use crate::runtime::context::RunCtx;
use crate::runtime::convert::{self, ConvertError};

/// Largest document `json.encode` produces or `json.decode` accepts.
pub const MAX_JSON_BYTES: u64 = 8 * 1024 * 1024;

pub fn module(lua: &Lua, ctx: &Arc<RunCtx>, array_mt: &Table) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 4)?;
    // Both can take a while on large input: look at the clocks before and after.
    let c = Arc::clone(ctx);
    t.set(
        "encode",
        lua.create_function(move |lua, args| {
            c.guard.poll(lua)?;
            let out = json_encode(lua, args);
            c.guard.poll(lua)?;
            out
        })?,
    )?;
    let (c, mt) = (Arc::clone(ctx), array_mt.clone());
    t.set(
        "decode",
        lua.create_function(move |lua, s: mlua::LuaString| {
            c.guard.poll(lua)?;
            let out = json_decode(lua, s, &mt);
            c.guard.poll(lua)?;
            out
        })?,
    )?;
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
    let mut out = convert::CappedWriter { buf: Vec::new(), max: MAX_JSON_BYTES as usize };
    let written = if pretty { serde_json::to_writer_pretty(&mut out, &v) } else { serde_json::to_writer(&mut out, &v) };
    written.map_err(|_| mlua::Error::runtime(format!("json.encode: output would exceed {MAX_JSON_BYTES} bytes")))?;
    String::from_utf8(out.buf).map_err(|e| mlua::Error::runtime(format!("json.encode: {e}")))
}

fn json_decode(lua: &Lua, s: mlua::LuaString, array_mt: &Table) -> mlua::Result<Value> {
    let bytes = s.as_bytes();
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(mlua::Error::runtime(format!("json.decode: input is larger than {MAX_JSON_BYTES} bytes")));
    }
    // serde_json refuses nesting deeper than 128 levels on its own.
    convert::decode_to_lua(lua, &bytes, array_mt).map_err(|e| match e {
        convert::DecodeError::Json(m) => mlua::Error::runtime(format!("json.decode: {m}")),
        convert::DecodeError::Lua(e) => e,
    })
}

fn json_array(lua: &Lua, t: Option<Table>, array_mt: &Table) -> mlua::Result<Table> {
    let t = match t {
        Some(t) => t,
        None => lua.create_table()?,
    };
    t.set_metatable(Some(array_mt.clone()))?;
    Ok(t)
}
