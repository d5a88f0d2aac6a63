//! `time`: clocks and an async `sleep` that counts against the wall-time limit.

use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, Table};

use crate::error::Limit;
use crate::runtime::context::RunCtx;
use crate::runtime::lazy_async::async_function;

pub fn module(lua: &Lua, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 5)?;
    t.set("now", lua.create_function(time_now)?)?;
    let c = Arc::clone(ctx);
    t.set("clock", lua.create_function(move |_, ()| Ok(c.guard.started.elapsed().as_secs_f64()))?)?;
    let c = Arc::clone(ctx);
    t.set("sleep", async_function(lua, "time.sleep", move |_, secs: f64| time_sleep(Arc::clone(&c), secs))?)?;
    t.set("iso", lua.create_function(time_iso)?)?;
    t.set("parse", lua.create_function(time_parse)?)?;
    Ok(t)
}

fn time_now(_: &Lua, (): ()) -> mlua::Result<f64> {
    let now = chrono::Utc::now();
    Ok(now.timestamp_millis() as f64 / 1000.0)
}

async fn time_sleep(ctx: Arc<RunCtx>, secs: f64) -> mlua::Result<()> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(mlua::Error::runtime(format!("time.sleep: seconds must be a non-negative number, got {secs}")));
    }
    let wanted = Duration::from_secs_f64(secs.min(1.0e9));
    let remaining = ctx.guard.remaining();
    if wanted >= remaining {
        tokio::time::sleep(remaining).await;
        return Err(ctx.guard.trip(Limit::WallTime));
    }
    tokio::time::sleep(wanted).await;
    if ctx.guard.is_cancelled() {
        return Err(ctx.guard.raise());
    }
    Ok(())
}

fn time_iso(_: &Lua, ts: Option<f64>) -> mlua::Result<String> {
    let ts = ts.unwrap_or_else(|| chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    let ms = (ts * 1000.0).round() as i64;
    let dt = chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| mlua::Error::runtime(format!("time.iso: {ts} is out of range")))?;
    Ok(dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn time_parse(_: &Lua, s: String) -> mlua::Result<f64> {
    let dt = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| mlua::Error::runtime(format!("time.parse: `{s}` is not an RFC 3339 time: {e}")))?;
    Ok(dt.timestamp_millis() as f64 / 1000.0)
}
