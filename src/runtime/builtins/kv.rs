//! `kv`: a small persistent key-value store private to each applet name, size-capped.
//! In a dry run, writes are visible to the run but never stored.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use crate::runtime::context::RunCtx;
use crate::runtime::convert::{self, ConvertError};

const MAX_KEY: usize = 256;

pub fn module(lua: &Lua, ctx: &Arc<RunCtx>, array_mt: &Table) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 5)?;
    let (c, mt) = (Arc::clone(ctx), array_mt.clone());
    t.set("get", lua.create_function(move |lua, key: String| polled(lua, &c, || kv_get(lua, &c, &mt, key)))?)?;
    let c = Arc::clone(ctx);
    t.set("set", lua.create_function(move |lua, (key, value): (String, Value)| polled(lua, &c, || kv_set(&c, key, value)))?)?;
    let c = Arc::clone(ctx);
    t.set("delete", lua.create_function(move |lua, key: String| polled(lua, &c, || kv_delete(&c, key)))?)?;
    let (c, mt) = (Arc::clone(ctx), array_mt.clone());
    t.set("keys", lua.create_function(move |lua, prefix: Option<String>| polled(lua, &c, || kv_keys(lua, &c, &mt, prefix)))?)?;
    let c = Arc::clone(ctx);
    t.set(
        "incr",
        lua.create_function(move |lua, (key, by): (String, Option<f64>)| polled(lua, &c, || kv_incr(&c, key, by.unwrap_or(1.0))))?,
    )?;
    Ok(t)
}

/// Runs a kv operation between two looks at the run's clocks (a write scans the whole store).
fn polled<T>(lua: &Lua, ctx: &RunCtx, f: impl FnOnce() -> mlua::Result<T>) -> mlua::Result<T> {
    ctx.guard.poll(lua)?;
    let out = f()?;
    ctx.guard.poll(lua)?;
    Ok(out)
}

fn tree(ctx: &RunCtx) -> mlua::Result<crate::store::Tree> {
    let store = ctx.lasting_store("kv").map_err(mlua::Error::runtime)?;
    Ok(store.kv_tree(&ctx.applet))
}

fn check_key(op: &str, key: &str) -> mlua::Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(mlua::Error::runtime(format!("kv.{op}: key must be 1 to {MAX_KEY} bytes")));
    }
    Ok(())
}

fn read(ctx: &RunCtx, key: &str) -> mlua::Result<Option<Vec<u8>>> {
    if let Some(v) = ctx.kv_overlay.lock().get(key) {
        return Ok(v.clone());
    }
    let got = tree(ctx)?.get(key).map_err(|e| mlua::Error::runtime(format!("kv.get({key}): {e}")))?;
    Ok(got.map(|v| v.to_vec()))
}

fn kv_get(lua: &Lua, ctx: &RunCtx, array_mt: &Table, key: String) -> mlua::Result<Value> {
    check_key("get", &key)?;
    match read(ctx, &key)? {
        None => Ok(Value::Nil),
        Some(bytes) => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| mlua::Error::runtime(format!("kv.get({key}): stored value is corrupt: {e}")))?;
            convert::to_lua(lua, &v, array_mt)
        }
    }
}

fn write(ctx: &RunCtx, op: &str, key: &str, value: Option<Vec<u8>>) -> mlua::Result<()> {
    let (max_total, max_value) = ctx.kv_limits;
    if let Some(v) = &value {
        if v.len() as u64 > max_value {
            return Err(mlua::Error::runtime(format!("kv.{op}({key}): value is {} bytes, the limit is {max_value}", v.len())));
        }
        // The store as this run sees it: stored entries, overridden by the dry-run overlay.
        let tree = tree(ctx)?;
        let overlay = ctx.kv_overlay.lock();
        let mut total: u64 = 0;
        for item in tree.iter() {
            let (k, val) = item.map_err(|e| mlua::Error::runtime(format!("kv.{op}({key}): {e}")))?;
            let shadowed = std::str::from_utf8(&k).is_ok_and(|k| overlay.contains_key(k));
            if k.as_slice() != key.as_bytes() && !shadowed {
                total += (k.len() + val.len()) as u64;
            }
        }
        for (k, v) in overlay.iter() {
            if k != key {
                total += v.as_ref().map_or(0, |v| (k.len() + v.len()) as u64);
            }
        }
        drop(overlay);
        total += (key.len() + v.len()) as u64;
        if total > max_total {
            return Err(mlua::Error::runtime(format!(
                "kv.{op}({key}): this applet's store would grow to {total} bytes, the limit is {max_total}"
            )));
        }
    }
    if ctx.dry_run {
        ctx.kv_overlay.lock().insert(key.to_string(), value);
        return Ok(());
    }
    let tree = tree(ctx)?;
    let res = match value {
        Some(v) => tree.insert(key, v).map(|_| ()),
        None => tree.remove(key).map(|_| ()),
    };
    res.map_err(|e| mlua::Error::runtime(format!("kv.{op}({key}): {e}")))
}

fn encode(op: &str, key: &str, value: &Value) -> mlua::Result<Vec<u8>> {
    let j = convert::to_json(value, 1 << 30).map_err(|e| match e {
        ConvertError::TooLarge(_) => mlua::Error::runtime(format!("kv.{op}({key}): value too large")),
        ConvertError::Invalid(m) => mlua::Error::runtime(format!("kv.{op}({key}): {m}")),
    })?;
    serde_json::to_vec(&j).map_err(|e| mlua::Error::runtime(format!("kv.{op}({key}): {e}")))
}

fn kv_set(ctx: &RunCtx, key: String, value: Value) -> mlua::Result<()> {
    check_key("set", &key)?;
    if value.is_nil() {
        return write(ctx, "set", &key, None);
    }
    let bytes = encode("set", &key, &value)?;
    write(ctx, "set", &key, Some(bytes))
}

fn kv_delete(ctx: &RunCtx, key: String) -> mlua::Result<bool> {
    check_key("delete", &key)?;
    let existed = read(ctx, &key)?.is_some();
    write(ctx, "delete", &key, None)?;
    Ok(existed)
}

fn kv_keys(lua: &Lua, ctx: &RunCtx, array_mt: &Table, prefix: Option<String>) -> mlua::Result<Table> {
    let prefix = prefix.unwrap_or_default();
    let mut keys: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for item in tree(ctx)?.scan_prefix(prefix.as_bytes()) {
        let (k, _) = item.map_err(|e| mlua::Error::runtime(format!("kv.keys: {e}")))?;
        keys.insert(String::from_utf8_lossy(&k).into_owned());
    }
    for (k, v) in ctx.kv_overlay.lock().iter() {
        if k.starts_with(&prefix) {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
    }
    let t = lua.create_sequence_from(keys)?;
    t.set_metatable(Some(array_mt.clone()))?;
    Ok(t)
}

fn kv_incr(ctx: &RunCtx, key: String, by: f64) -> mlua::Result<f64> {
    check_key("incr", &key)?;
    let current = match read(ctx, &key)? {
        None => 0.0,
        Some(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            _ => return Err(mlua::Error::runtime(format!("kv.incr({key}): the stored value is not a number"))),
        },
    };
    let next = current + by;
    let bytes = serde_json::to_vec(&serde_json::json!(if next.fract() == 0.0 && next.abs() < 9e15 {
        serde_json::json!(next as i64)
    } else {
        serde_json::json!(next)
    }))
    .map_err(|e| mlua::Error::runtime(format!("kv.incr({key}): {e}")))?;
    write(ctx, "incr", &key, Some(bytes))?;
    Ok(next)
}
