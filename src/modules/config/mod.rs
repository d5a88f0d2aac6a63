//! The `config` host module: publish config items (src/cmdb/config_items.rs) to hosts over SSH,
//! safely, and find and repair drift.
//!
//! Lua: `config.get`, `config.versions`, `config.render`, `config.status` (read);
//! `config.publish(name, selector, opts)` and `config.check(name, selector, {repair=})`
//! (docs/lua/config.md). Publishing one host is one SSH command fed the rendered file on stdin
//! ([`script::publish_script`]): write a temp file beside the target, validate it, keep the
//! current file, move the new one into place (a rename: atomic), reload, check health; on any
//! failure after the move, put the old file back and reload again. Hosts go in batches with a
//! canary and a failure limit, as for `ssh.run`. What each host runs is recorded in the cmdb;
//! every publish, rollback and repair is audited with the file's hashes before and after.
//!
//! Permission: `config = ["read"]`, `["read", "publish"]`, or `{ items = [...], hosts = [...],
//! actions = [...] }`. The commands that run are the item's (validate, reload, health), which
//! only `opslet config set` (audited) can change: `publish` grants running them, nothing else.

mod check;
mod publish;
mod scope;
mod script;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use serde_json::json;

use crate::cmdb::Host;
use crate::cmdb::config_items::{ConfigItems, ItemVersion, SecretFn, placeholder_secrets};
use crate::config::Config;
use crate::error::Error;
use crate::kit::fanout::{self as batch, Plan};
use crate::kit::ssh::Access;
use crate::kit::ssh::SshSettings;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use check::check_host;
pub use publish::HostResult;
use publish::{env_for, publish_host};
use scope::Scope;

pub struct ConfigModule {
    ssh: Arc<SshSettings>,
}

impl ConfigModule {
    pub fn new(ssh: SshSettings) -> ConfigModule {
        ConfigModule { ssh: Arc::new(ssh) }
    }
}

/// This module's calls, for their errors (`config.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("config");

struct RunState {
    ctx: Arc<RunCtx>,
    scope: Scope,
    ssh: Access,
    /// The items and host states, opened once per run.
    items: Result<ConfigItems, String>,
}

impl RunState {
    fn items(&self, call: &str) -> mlua::Result<ConfigItems> {
        self.items.clone().map_err(|m| LUA.err(call, m))
    }

    /// The item's version (the latest when None), if the permission reaches the item.
    fn item(&self, call: &str, name: &str, version: Option<u32>) -> mlua::Result<ItemVersion> {
        if !self.scope.allows_item(name) {
            return Err(LUA.err(
                call,
                format!("permission denied: config item `{name}` is outside the applet's config items ({})", self.scope.items.join(", ")),
            ));
        }
        self.items(call)?.resolve(name, version).map_err(|e| LUA.err(call, e))
    }

    fn hosts(&self, call: &str, selector: &str) -> mlua::Result<Vec<Host>> {
        let snap = self.ssh.snapshot().map_err(|m| LUA.err(call, m))?;
        let hosts = snap.select(selector).map_err(|e| LUA.err(call, e))?;
        if let Some(h) = hosts.iter().find(|h| !self.ssh.allows(&h.name)) {
            return Err(LUA.err(
                call,
                format!(
                    "permission denied: {} is outside the applet's config hosts ({}); nothing was sent",
                    h.name,
                    self.scope.hosts.join(", ")
                ),
            ));
        }
        Ok(hosts)
    }

    fn require_publish(&self, call: &str) -> mlua::Result<()> {
        if self.scope.publish {
            Ok(())
        } else {
            Err(LUA.err(
                call,
                "permission denied: the applet's manifest does not grant `publish` (add it: [permissions] config = [\"read\", \"publish\"])",
            ))
        }
    }

    /// Reads secrets for a template; every value read is kept in `used` (to mask it in diffs).
    fn secret_fn(&self, used: Arc<parking_lot::Mutex<Vec<(String, String)>>>) -> SecretFn {
        let ctx = Arc::clone(&self.ctx);
        Arc::new(move |name: &str| {
            let v = crate::kit::read_secret(&ctx, "a config item template", name)?;
            used.lock().push((name.to_string(), v.clone()));
            Ok(v)
        })
    }

    fn audit(&self, action: &str, host: &str, ok: bool, detail: serde_json::Value) -> Result<(), String> {
        self.ctx.record_action("config", action, host, ok, detail).map_err(|e| format!("could not record the action in the audit log: {e}"))
    }
}

struct PublishOpts {
    env: Option<String>,
    timeout: Duration,
    plan: Plan,
}

fn parse_publish_opts(
    call: &str,
    opts: Option<Table>,
    settings: &SshSettings,
    extra: &[&str],
) -> mlua::Result<(PublishOpts, HashMap<String, Value>)> {
    // config.check publishes only the recorded environment.
    let takes_env = call != "check";
    let mut o = PublishOpts {
        env: None,
        timeout: settings.timeout,
        plan: Plan { concurrency: settings.concurrency, batch: None, canary: 0, stop_after: None },
    };
    let mut rest = HashMap::new();
    let Some(opts) = opts else { return Ok((o, rest)) };
    for pair in opts.pairs::<String, Value>() {
        let (k, v) = pair?;
        if batch::plan_option(&format!("config.{call}"), &k, v.clone(), &mut o.plan, &mut o.timeout, settings.concurrency)? {
            continue;
        }
        match k.as_str() {
            "env" if takes_env => match v {
                Value::String(s) => o.env = Some(s.to_str()?.to_string()),
                other => return Err(LUA.err(call, format!("opts.env: expected a string, got {}", other.type_name()))),
            },
            other if extra.contains(&other) => {
                rest.insert(other.to_string(), v);
            }
            other => {
                let mut known = if takes_env { vec!["env"] } else { vec![] };
                known.extend(["timeout", "concurrency", "batch", "canary", "stop_after"]);
                known.extend(extra);
                return Err(LUA.err(call, format!("unknown option `{other}` (known: {})", known.join(", "))));
            }
        }
    }
    Ok((o, rest))
}

async fn fan<F, Fut>(st: &Arc<RunState>, call: &'static str, hosts: Vec<Host>, plan: &Plan, work: F) -> Vec<HostResult>
where
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = HostResult> + Send + 'static,
{
    crate::kit::targets::fan_out_hosts(&st.ctx, format!("config.{call}"), hosts, plan, work).await
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    // Config items are published over the hosts' SSH logins: `[ssh]`.
    Ok(Arc::new(ConfigModule::new(SshSettings::from_config(config)?)))
}

impl HostModule for ConfigModule {
    fn name(&self) -> &'static str {
        "config"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(&Grant { module: "config", scope: scope.clone() }).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant).map_err(|m| LUA.err("permission", m))?;
        let ssh = Access::new(Arc::clone(&self.ssh), Arc::clone(ctx), scope.hosts.clone());
        let items = ctx.lasting_store("config items").and_then(|store| ConfigItems::open(store).map_err(|e| e.to_string()));
        let state = Arc::new(RunState { ctx: Arc::clone(ctx), scope, ssh, items });
        let t = lua.create_table()?;

        let st = Arc::clone(&state);
        t.set(
            "get",
            lua.create_function(move |lua, (name, opts): (String, Option<Table>)| {
                let version = match &opts {
                    Some(o) => o.get::<Option<u32>>("version")?,
                    None => None,
                };
                let v = st.item("get", &name, version)?;
                let mut j = serde_json::to_value(&v.spec).map_err(mlua::Error::external)?;
                j["version"] = json!(v.version);
                j["author"] = json!(v.author);
                j["message"] = json!(v.message);
                j["created_at"] = json!(v.created_at);
                crate::kit::json_to_lua(lua, &j)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "versions",
            lua.create_function(move |lua, name: String| {
                st.item("versions", &name, None)?;
                let h = st.items("versions")?.history(&name).map_err(|e| LUA.err("versions", e))?;
                let list: Vec<_> = h
                    .iter()
                    .map(|v| json!({ "version": v.version, "author": v.author, "message": v.message, "created_at": v.created_at, "diff": v.diff }))
                    .collect();
                crate::kit::to_lua(lua, &list)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "render",
            lua.create_function(move |_, (name, host, opts): (String, String, Option<Table>)| {
                let (mut env, mut version) = (None, None);
                if let Some(o) = opts {
                    env = o.get::<Option<String>>("env")?;
                    version = o.get::<Option<u32>>("version")?;
                }
                let item = st.item("render", &name, version)?;
                let snap = st.ssh.snapshot().map_err(|m| LUA.err("render", m))?;
                let h = snap.host(&host).cloned().ok_or_else(|| LUA.err("render", format!("no host `{host}` in the cmdb")))?;
                if !st.ssh.allows(&h.name) {
                    return Err(LUA.err(
                        "render",
                        format!("permission denied: {host} is outside the applet's config hosts ({})", st.scope.hosts.join(", ")),
                    ));
                }
                let env = env_for(&h, env.as_deref()).map_err(|m| LUA.err("render", m))?;
                // Secrets stay out of the applet: they render as <secret:NAME>.
                item.spec
                    .render(&env, &h, &snap.inherited_groups(&h), placeholder_secrets())
                    .map_err(|m| LUA.err("render", format!("{name} v{} for {host} ({env}): {m}", item.version)))
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "status",
            lua.create_function(move |lua, name: String| {
                st.item("status", &name, None)?;
                let mut s = st.items("status")?.states(&name).map_err(|e| LUA.err("status", e))?;
                s.retain(|x| st.ssh.allows(&x.host));
                crate::kit::to_lua(lua, &s)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "publish",
            lua.create_async_function(move |lua, (name, selector, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    st.require_publish("publish")?;
                    let (o, rest) = parse_publish_opts("publish", opts, st.ssh.settings(), &["version"])?;
                    let version = match rest.get("version") {
                        None | Some(Value::Nil) => None,
                        Some(Value::Integer(i)) if *i > 0 && *i <= i64::from(u32::MAX) => Some(*i as u32),
                        Some(other) => {
                            return Err(LUA.err(
                                "publish",
                                format!("opts.version: expected a version number, got {}", crate::runtime::builtins::log::display(other)),
                            ));
                        }
                    };
                    let item = Arc::new(st.item("publish", &name, version)?);
                    let hosts = st.hosts("publish", &selector)?;
                    let timeout = o.timeout;
                    let env = o.env.clone();
                    let st2 = Arc::clone(&st);
                    let results = fan(&st, "publish", hosts, &o.plan, move |h| {
                        let e = env_for(&h, env.as_deref());
                        publish_host(Arc::clone(&st2), Arc::clone(&item), h, e, None, timeout)
                    })
                    .await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "check",
            lua.create_async_function(move |lua, (name, selector, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let (o, rest) = parse_publish_opts("check", opts, st.ssh.settings(), &["repair"])?;
                    let repair = match rest.get("repair") {
                        None | Some(Value::Nil) => false,
                        Some(Value::Boolean(b)) => *b,
                        Some(other) => {
                            return Err(LUA.err("check", format!("opts.repair: expected true or false, got {}", other.type_name())));
                        }
                    };
                    if repair {
                        st.require_publish("check")?;
                    }
                    st.item("check", &name, None)?;
                    let hosts = st.hosts("check", &selector)?;
                    let timeout = o.timeout;
                    let st2 = Arc::clone(&st);
                    let results =
                        fan(&st, "check", hosts, &o.plan, move |h| check_host(Arc::clone(&st2), name.clone(), h, repair, timeout)).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;
        Ok(t)
    }
}
