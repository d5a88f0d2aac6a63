//! `log`: debug/info/warn/error, captured per run and subject to the output limit.

use std::sync::Arc;

use mlua::{Lua, MultiValue, Table, Value};

use crate::runtime::context::{Level, MAX_LINE, RunCtx};
use crate::runtime::convert;

pub fn module(lua: &Lua, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 4)?;
    for level in [Level::Debug, Level::Info, Level::Warn, Level::Error] {
        t.set(level.name(), logger(lua, ctx, level)?)?;
    }
    Ok(t)
}

/// A function that logs its arguments at `level` (also used as `print`).
pub fn logger(lua: &Lua, ctx: &Arc<RunCtx>, level: Level) -> mlua::Result<mlua::Function> {
    let ctx = Arc::clone(ctx);
    lua.create_function(move |_, args: MultiValue| ctx.log(level, &format_args(&args)))
}

/// Joins values with spaces the way `print` does; tables are shown as compact JSON. Stops a
/// little past `MAX_LINE` bytes without converting the rest: the logger redacts secrets first
/// (so one crossing the cut is still found whole, up to 4 KiB) and then cuts at `MAX_LINE`.
pub fn format_args(args: &MultiValue) -> String {
    const BUILD: usize = MAX_LINE + 4096;
    let mut out = String::new();
    for (i, v) in args.iter().enumerate() {
        if out.len() >= BUILD {
            break;
        }
        if i > 0 {
            out.push(' ');
        }
        match v {
            Value::String(s) => {
                let bytes = s.as_bytes();
                let room = BUILD.saturating_sub(out.len());
                out.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(room)]));
            }
            other => out.push_str(&display(other)),
        }
    }
    out
}

pub fn display(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => format_number(*n),
        Value::String(s) => {
            let bytes = s.as_bytes();
            let cut = bytes.len().min(1024);
            let mut out = String::from_utf8_lossy(&bytes[..cut]).into_owned();
            if cut < bytes.len() {
                out.push_str("...");
            }
            out
        }
        Value::Table(_) => match convert::to_json(v, 16 * 1024) {
            Ok(j) => j.to_string(),
            Err(_) => "<table>".into(),
        },
        Value::LightUserData(p) if p.0.is_null() => "null".into(),
        other => format!("<{}>", other.type_name()),
    }
}

pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { format!("{n}") }
}
