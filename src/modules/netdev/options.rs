//! The options of the `netdev` calls, from their Lua `opts` table, and the string lists
//! (commands, configuration lines) they take.

use std::time::Duration;

use mlua::{Table, Value};

use super::LUA;
use super::settings::NetdevSettings;
use crate::kit::fanout::{self as batch, Plan};

/// Options of the calls, from the Lua `opts` table.
pub(super) struct Opts {
    pub(super) timeout: Duration,
    pub(super) plan: Plan,
    pub(super) save: bool,
}

pub(super) fn parse_opts(call: &str, opts: Option<Table>, allowed: &[&str], settings: &NetdevSettings) -> mlua::Result<Opts> {
    let mut o = Opts {
        timeout: settings.timeout,
        plan: Plan { concurrency: settings.concurrency, batch: None, canary: 0, stop_after: None },
        save: false,
    };
    let Some(opts) = opts else { return Ok(o) };
    for (key, v) in crate::kit::options::entries(&LUA.call(call), &opts)? {
        if !allowed.contains(&key.as_str()) {
            return Err(LUA.err(call, format!("unknown option `{key}` (known: {})", allowed.join(", "))));
        }
        if batch::plan_option(&format!("netdev.{call}"), &key, v.clone(), &mut o.plan, &mut o.timeout, settings.concurrency)? {
            continue;
        }
        match key.as_str() {
            "save" => {
                o.save = match v {
                    Value::Boolean(b) => b,
                    other => return Err(LUA.err(call, format!("opts.save: expected true or false, got {}", other.type_name()))),
                }
            }
            _ => unreachable!("checked against `allowed`"),
        }
    }
    Ok(o)
}

/// A command list: one string or a list of strings.
pub(super) fn string_list(call: &str, what: &str, v: Value) -> mlua::Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.to_str()?.to_string()]),
        Value::Table(t) => t
            .sequence_values::<Value>()
            .enumerate()
            .map(|(i, v)| match v? {
                Value::String(s) => Ok(s.to_str()?.to_string()),
                other => Err(LUA.err(call, format!("{what}[{}]: expected a string, got {}", i + 1, other.type_name()))),
            })
            .collect(),
        other => Err(LUA.err(call, format!("{what}: expected a string or a list of strings, got {}", other.type_name()))),
    }
}
