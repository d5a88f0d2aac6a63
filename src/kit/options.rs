//! Options of a call's `opts` table that several modules take, parsed alike and named in
//! errors as the calling module's (`ssh.run: opts.timeout: ...`).

use std::time::Duration;

use mlua::Value;

/// A duration given as seconds or as text like "30s" (more than 0, at most 24h).
pub fn duration_opt(call: &str, key: &str, v: Value) -> mlua::Result<Duration> {
    const MAX: Duration = Duration::from_secs(24 * 3600);
    let d = match v {
        Value::Integer(i) => Duration::from_secs(i.max(0) as u64),
        Value::Number(n) => Duration::try_from_secs_f64(n).unwrap_or(Duration::MAX),
        Value::String(s) => {
            crate::util::parse_duration(&s.to_string_lossy()).map_err(|m| super::lua_err(call, format!("opts.{key}: {m}")))?
        }
        other => {
            return Err(super::lua_err(
                call,
                format!("opts.{key}: expected seconds or a duration like \"30s\", got {}", other.type_name()),
            ));
        }
    };
    if d.is_zero() || d > MAX {
        return Err(super::lua_err(call, format!("opts.{key}: must be more than 0 and at most 24h")));
    }
    Ok(d)
}

/// A count (a whole number, 0 or more).
pub fn count_opt(call: &str, key: &str, v: Value) -> mlua::Result<usize> {
    match v {
        Value::Integer(i) if i >= 0 => Ok(i as usize),
        Value::Number(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as usize),
        other => Err(super::lua_err(
            call,
            format!("opts.{key}: expected a whole number >= 0, got {}", crate::runtime::builtins::log::display(&other)),
        )),
    }
}

/// The entries of an `opts` table, each key a name; another key is an error naming `call`
/// (`ssh.run: opts: keys must be names, got number`).
pub fn entries(call: &str, opts: &mlua::Table) -> mlua::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for pair in opts.pairs::<Value, Value>() {
        let (k, v) = pair?;
        match &k {
            Value::String(s) => out.push((s.to_string_lossy(), v)),
            other => return Err(super::lua_err(call, format!("opts: keys must be names, got {}", other.type_name()))),
        }
    }
    Ok(out)
}
