//! The `ssh` host module: commands, scripts and files on many hosts at once.
//!
//! Lua: `ssh.run(selector, command, opts)`, `ssh.script(selector, script, args, opts)`,
//! `ssh.put(selector, path, source, opts)`, `ssh.get(selector, path, opts)`; each returns one
//! record per host (docs/lua/ssh.md). `ssh.put` also takes a stored object (`kit::objects`,
//! e.g. `s3.object(...)`) which each host streams for itself, and `ssh.get` a destination
//! (`opts.to`) each host's file is streamed into. Targets come from the cmdb, logins from
//! `[[ssh.credentials]]` and secrets, host keys from the cmdb's pins. Connections run on
//! opslet's own I/O threads (not the run's thread, so handshakes do not count as the applet's
//! CPU) and are reused within a run.
//!
//! Layout: `result` is what a call returns per host, `scope` the permission; this file is the
//! Lua boundary and the per-run state. The SSH client, the run's connections (logins, pins,
//! jump hosts) and the fan-out are the kit's (`kit::ssh`, `kit::fanout`), shared with config
//! and netdev.

pub mod result;
pub mod scope;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};
use serde_json::json;

use crate::cmdb::Host;
use crate::config::Config;
use crate::error::Error;
use crate::kit::fanout::{self as batch, Plan};
use crate::kit::objects::{self, Sink, Source};
use crate::kit::ssh::Connections;
use crate::kit::ssh::SshSettings;
use crate::kit::ssh::client::{self, shell_quote};
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use result::{Answer, HostResult};
use scope::Scope;

pub struct SshModule {
    settings: Arc<SshSettings>,
}

impl SshModule {
    pub fn new(settings: SshSettings) -> SshModule {
        SshModule { settings: Arc::new(settings) }
    }
}

/// This module's calls, for their errors (`ssh.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("ssh");

/// One run's view of the module: its permission and the run's SSH connections.
struct RunState {
    conns: Arc<Connections>,
    scope: Scope,
}

impl RunState {
    fn new(settings: Arc<SshSettings>, ctx: Arc<RunCtx>, scope: Scope) -> RunState {
        RunState { conns: Arc::new(Connections::new(settings, ctx, scope.hosts.clone())), scope }
    }
}

impl std::ops::Deref for RunState {
    type Target = Connections;
    fn deref(&self) -> &Connections {
        &self.conns
    }
}

/// Options every call takes, from the Lua `opts` table.
#[derive(Clone)]
struct CallOpts {
    timeout: Duration,
    plan: Plan,
    sudo: Option<String>,
    env: Vec<(String, String)>,
    mode: Option<u32>,
    /// `ssh.get`: stream each host's file here instead of returning it.
    to: Option<Arc<dyn Sink>>,
}

const COMMON_OPTS: &[&str] = &["timeout", "concurrency", "batch", "canary", "stop_after"];

fn parse_opts(call: &str, opts: Option<Table>, extra: &[&str], settings: &SshSettings, scope: &Scope) -> mlua::Result<CallOpts> {
    let mut o = CallOpts {
        timeout: settings.timeout,
        plan: Plan { concurrency: settings.concurrency, batch: None, canary: 0, stop_after: None },
        sudo: None,
        env: Vec::new(),
        mode: None,
        to: None,
    };
    let Some(opts) = opts else { return Ok(o) };
    for (key, v) in crate::kit::options::entries(&LUA.call(call), &opts)? {
        if COMMON_OPTS.contains(&key.as_str()) {
            batch::plan_option(&format!("ssh.{call}"), &key, v, &mut o.plan, &mut o.timeout, settings.concurrency)?;
            continue;
        }
        match key.as_str() {
            "sudo" if extra.contains(&"sudo") => {
                let user = match v {
                    Value::Boolean(false) | Value::Nil => None,
                    Value::Boolean(true) => Some("root".to_string()),
                    Value::String(s) => Some(s.to_string_lossy()),
                    other => return Err(LUA.err(call, format!("opts.sudo: expected true or a user name, got {}", other.type_name()))),
                };
                if let Some(u) = &user {
                    if !scope.sudo {
                        return Err(LUA.err(call, "permission denied: opts.sudo needs `sudo = true` in the applet's ssh permission"));
                    }
                    if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                        return Err(LUA.err(call, format!("opts.sudo: `{u}` is not a user name")));
                    }
                }
                o.sudo = user;
            }
            "env" if extra.contains(&"env") => {
                let Value::Table(t) = v else { return Err(LUA.err(call, "opts.env: expected a table of NAME = value")) };
                for pair in t.pairs::<String, Value>() {
                    let (name, value) = pair?;
                    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(LUA.err(call, format!("opts.env: `{name}` is not a variable name")));
                    }
                    if !scope.allows_env(&name) {
                        return Err(LUA.err(
                            call,
                            format!(
                                "permission denied: opts.env may not set `{name}`: the applet's ssh permission lists commands, so env names must be listed in its `env` (loader and shell start-up variables never can be)"
                            ),
                        ));
                    }
                    o.env.push((name, crate::runtime::builtins::log::display(&value)));
                }
                o.env.sort();
            }
            "mode" if extra.contains(&"mode") => {
                o.mode = Some(match v {
                    Value::String(s) => u32::from_str_radix(&s.to_string_lossy(), 8)
                        .map_err(|_| LUA.err(call, "opts.mode: expected an octal string like \"0644\""))?,
                    Value::Integer(i) if (0..=0o7777).contains(&i) => i as u32,
                    _ => return Err(LUA.err(call, "opts.mode: expected an octal string like \"0644\"")),
                });
            }
            "to" if extra.contains(&"to") => {
                let Some(sink) = objects::sink_of(&v) else {
                    return Err(
                        LUA.err(call, format!("opts.to: expected a destination handle (like s3.destination(...)), got {}", what(&v)))
                    );
                };
                o.to = Some(sink.0);
            }
            other => {
                let known: Vec<&str> = COMMON_OPTS.iter().chain(extra).copied().collect();
                return Err(LUA.err(call, format!("unknown option `{other}` (known: {})", known.join(", "))));
            }
        }
    }
    Ok(o)
}

/// The options with secret values taken out of `env`, for what is shown and recorded.
fn redacted(o: &CallOpts, ctx: &RunCtx) -> CallOpts {
    let mut o = o.clone();
    for (_, v) in &mut o.env {
        *v = ctx.redactor.apply(v).into_owned();
    }
    o
}

/// `command` with its environment and sudo applied: what the host's shell gets.
fn wrap(command: &str, o: &CallOpts) -> String {
    let mut body = String::new();
    for (k, v) in &o.env {
        body.push_str(&format!("export {k}={}; ", shell_quote(v)));
    }
    body.push_str(command);
    match &o.sudo {
        None => body,
        Some(user) => format!("sudo -n -H -u {} -- sh -c {}", shell_quote(user), shell_quote(&body)),
    }
}

/// What one call does on each host.
#[derive(Clone)]
enum Work {
    Exec {
        command: String,
        stdin: Option<bytes::Bytes>,
        audit: String,
    },
    /// `sha256` is left out when the content holds a secret (a short secret's hash can be reversed).
    Put {
        path: String,
        data: Arc<Vec<u8>>,
        mode: Option<u32>,
        sha256: Option<String>,
    },
    Get {
        path: String,
    },
    /// `ssh.put` of an object: each host reads its own stream of `source`.
    Stream {
        path: String,
        source: Arc<dyn Source>,
        mode: Option<u32>,
    },
    /// `ssh.get` to a destination: each host's file streamed into `sink`.
    Upload {
        path: String,
        sink: Arc<dyn Sink>,
    },
}

impl Work {
    fn action(&self) -> &'static str {
        match self {
            Work::Exec { stdin: None, .. } => "run",
            Work::Exec { .. } => "script",
            Work::Put { .. } | Work::Stream { .. } => "put",
            Work::Get { .. } | Work::Upload { .. } => "get",
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Work::Exec { audit, .. } => json!({ "command": audit }),
            Work::Put { path, data, mode, sha256 } => {
                json!({ "path": path, "bytes": data.len(), "sha256": sha256, "mode": mode.map(|m| format!("{m:04o}")) })
            }
            Work::Get { path } => json!({ "path": path }),
            Work::Stream { path, source, mode } => json!({
                "path": path,
                "object": source.describe(),
                "bytes": source.size(),
                "sha256": source.sha256(),
                "mode": mode.map(|m| format!("{m:04o}")),
            }),
            Work::Upload { path, sink } => json!({ "path": path, "to": sink.describe() }),
        }
    }
}

async fn one_host(state: Arc<RunState>, host: Host, work: Work, timeout: Duration, budget: Arc<client::Budget>) -> HostResult {
    let t0 = Instant::now();
    let pending = crate::kit::Pending::new(&state.ctx, "ssh", work.action(), &host.name, work.describe());
    let max_output = state.settings.max_output as usize;
    let max_file = state.settings.max_file;
    let attempt = async {
        let s = state.conns.session(&host, 0).await?;
        let mut r = HostResult { host: host.name.clone(), ..Default::default() };
        match &work {
            Work::Exec { command, stdin, .. } => {
                let e = s.exec(command, stdin.clone(), max_output, &budget).await?;
                r.exit_code = e.exit_code;
                r.ok = e.exit_code == Some(0);
                r.stdout = String::from_utf8_lossy(&e.stdout).into_owned();
                r.stderr = String::from_utf8_lossy(&e.stderr).into_owned();
                r.truncated = e.truncated;
                if let Some(sig) = e.signal {
                    r.error = Some(format!("killed by signal {sig}"));
                } else if e.exit_code.is_none() {
                    r.error = Some("the command ended without an exit status".into());
                }
            }
            Work::Put { path, data, mode, .. } => {
                s.put(path, data, *mode).await?;
                r.ok = true;
            }
            Work::Get { path } => {
                let data = s.get(path, max_file, &budget).await?;
                r.content = Some(String::from_utf8_lossy(&data).into_owned());
                r.ok = true;
            }
            Work::Stream { path, source, mode } => {
                let chunks = source.open().await.map_err(|e| format!("opening {}: {e}", source.label()))?;
                let (bytes, sha256) = s.put_stream(path, chunks, *mode, source.sha256().as_deref()).await?;
                r.bytes = Some(bytes);
                r.sha256 = Some(sha256);
                r.ok = true;
            }
            Work::Upload { path, sink } => {
                let name = format!("{}/{}", host.name, client::basename(path)?);
                let (bytes, sha256, object) = s.get_stream(path, sink.as_ref(), &name).await?;
                r.bytes = Some(bytes);
                r.sha256 = Some(sha256);
                r.object = Some(object);
                r.ok = true;
            }
        }
        Ok::<HostResult, String>(r)
    };
    // What the host answered: from the host itself, or in a test from a fake or a transcript.
    let real = async {
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(r)) => Ok(Answer::of(&r)),
            Ok(Err(m)) => Err(m),
            Err(_) => Err(format!("timed out after {}", humantime::format_duration(timeout))),
        }
    };
    let call = format!("ssh.{}", work.action());
    let mut r = match crate::kit::exchange::call(&state.ctx, &call, &host.name, work.describe(), real).await {
        Ok(a) => a.into_result(&host.name, matches!(work, Work::Exec { .. })),
        Err(m) => HostResult::failed(&host.name, m),
    };
    r.duration = t0.elapsed().as_secs_f64();
    let mut detail = work.describe();
    detail["duration_ms"] = json!(t0.elapsed().as_millis() as u64);
    detail["exit_code"] = json!(r.exit_code);
    if let Some(e) = &r.error {
        detail["error"] = json!(e);
    }
    // What was checked on the host, and where a host's file was stored.
    if let Some(h) = r.sha256.as_ref().filter(|_| r.ok) {
        detail["verified_sha256"] = json!(h);
    }
    if let Some(o) = r.object.as_ref().filter(|_| r.ok) {
        detail["stored"] = o.clone();
    }
    pending.finish();
    if let Err(e) = state.ctx.record_action("ssh", work.action(), &host.name, r.ok, detail) {
        r.ok = false;
        r.error = Some(format!("could not record the action in the audit log: {e}"));
    }
    r
}

/// Runs `work` on every host `selector` picks (or plans it, in a dry run).
async fn fan(
    state: Arc<RunState>,
    call: &'static str,
    hosts: Vec<Host>,
    work: Work,
    o: CallOpts,
    shown: Option<String>,
) -> Vec<HostResult> {
    if state.ctx.dry_run {
        return hosts
            .iter()
            .map(|h| {
                let mut detail = work.describe();
                detail["planned"] = json!(true);
                let _ = state.ctx.record_action("ssh", work.action(), &h.name, true, detail);
                HostResult { host: h.name.clone(), ok: true, planned: true, command: shown.clone(), ..Default::default() }
            })
            .collect();
    }
    let timeout = o.timeout;
    let budget = Arc::new(client::Budget::new(state.ctx.guard.limits.memory));
    let st = Arc::clone(&state);
    crate::kit::targets::fan_out_hosts(&state.ctx, format!("ssh.{call}"), hosts, &o.plan, move |host| {
        one_host(Arc::clone(&st), host, work.clone(), timeout, Arc::clone(&budget))
    })
    .await
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    Ok(Arc::new(SshModule::new(SshSettings::from_config(config)?)))
}

impl HostModule for SshModule {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(scope).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant.scope).map_err(|m| LUA.err("permission", m))?;
        let state = Arc::new(RunState::new(Arc::clone(&self.settings), Arc::clone(ctx), scope));
        let t = lua.create_table()?;

        let st = Arc::clone(&state);
        t.set(
            "run",
            lua.create_async_function(move |lua, (selector, command, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("run", opts, &["sudo", "env"], &st.settings, &st.scope)?;
                    if !st.scope.allows_command(&command) {
                        return Err(LUA.err(
                            "run",
                            format!(
                                "permission denied: `{command}` matches none of the applet's ssh commands ({}); nothing was run",
                                st.scope.commands.as_deref().unwrap_or_default().join(", ")
                            ),
                        ));
                    }
                    let hosts = st.reach.select("run", &selector)?;
                    let full = wrap(&command, &o);
                    let shown = wrap(&command, &redacted(&o, &st.ctx));
                    let work = Work::Exec { command: full, stdin: None, audit: shown.clone() };
                    let results = fan(st, "run", hosts, work, o, Some(shown)).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "script",
            lua.create_async_function(move |lua, (selector, script, args, opts): (String, String, Option<Vec<String>>, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("script", opts, &["sudo", "env"], &st.settings, &st.scope)?;
                    let from_package = st.ctx.package.as_ref().and_then(|p| p.files.get(script.trim_start_matches("./")).cloned());
                    let (body, label) = match from_package {
                        Some(b) => (b, script.clone()),
                        None if st.scope.commands.is_some() => {
                            return Err(LUA.err(
                                "script",
                                format!("permission denied: `{}` is not a file of this applet, and its ssh permission lists commands, so only the applet's own script files may run", short(&script)),
                            ));
                        }
                        None => (script.clone().into_bytes(), "(inline script)".to_string()),
                    };
                    if body.len() as u64 > st.settings.max_file {
                        return Err(LUA.err("script", format!("the script is {} bytes, over the {}-byte limit ([ssh] max_file)", body.len(), st.settings.max_file)));
                    }
                    let args = args.unwrap_or_default();
                    // What the audit log and a dry run show: secrets taken out before quoting.
                    let shown_args: Vec<String> = args.iter().map(|a| shell_quote(&st.ctx.redactor.apply(a))).collect();
                    let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
                    let hosts = st.reach.select("script", &selector)?;
                    let runner = format!(
                        "t=$(mktemp) && cat >\"$t\" && chmod 700 \"$t\" && \"$t\"{}{}; rc=$?; rm -f \"$t\"; exit $rc",
                        if args.is_empty() { "" } else { " " },
                        args.join(" ")
                    );
                    let full = wrap(&runner, &o);
                    let shown_env: String = redacted(&o, &st.ctx).env.iter().map(|(k, v)| format!("{k}={} ", shell_quote(v))).collect();
                    let audit = format!("{shown_env}script {label}{}{}", if args.is_empty() { "" } else { " " }, shown_args.join(" "));
                    let work = Work::Exec { command: full, stdin: Some(bytes::Bytes::from(body)), audit: audit.clone() };
                    let results = fan(st, "script", hosts, work, o, Some(audit)).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "put",
            lua.create_async_function(move |lua, (selector, path, source, opts): (String, String, Value, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("put", opts, &["mode"], &st.settings, &st.scope)?;
                    check_path("put", &st.scope, &path)?;
                    let data = match put_source(&source)? {
                        PutSource::Object(source) => {
                            client::basename(&path).map_err(|m| LUA.err("put", m))?;
                            let hosts = st.reach.select("put", &selector)?;
                            let shown = format!("put {path} (object {}, {} bytes)", source.label(), source.size());
                            let work = Work::Stream { path, source, mode: o.mode };
                            let results = fan(st, "put", hosts, work, o, Some(shown)).await;
                            return crate::kit::to_lua(&lua, &results);
                        }
                        PutSource::Content(c) => c,
                        PutSource::File(f) => st
                            .ctx
                            .package
                            .as_ref()
                            .and_then(|p| p.files.get(f.trim_start_matches("./")).cloned())
                            .ok_or_else(|| LUA.err("put", format!("source.file: `{f}` is not a file of this applet")))?,
                    };
                    if data.len() as u64 > st.settings.max_file {
                        return Err(LUA.err(
                            "put",
                            format!("the content is {} bytes, over the {}-byte limit ([ssh] max_file)", data.len(), st.settings.max_file),
                        ));
                    }
                    let hosts = st.reach.select("put", &selector)?;
                    let shown = format!("put {path} ({} bytes)", data.len());
                    let text = String::from_utf8_lossy(&data);
                    let sha256 = (st.ctx.redactor.apply(&text) == text).then(|| {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(&data))
                    });
                    let work = Work::Put { path, data: Arc::new(data), mode: o.mode, sha256 };
                    let results = fan(st, "put", hosts, work, o, Some(shown)).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "get",
            lua.create_async_function(move |lua, (selector, path, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("get", opts, &["to"], &st.settings, &st.scope)?;
                    check_path("get", &st.scope, &path)?;
                    if o.to.is_some() {
                        client::basename(&path).map_err(|m| LUA.err("get", m))?;
                    }
                    let hosts = st.reach.select("get", &selector)?;
                    let (work, shown) = match &o.to {
                        None => (Work::Get { path: path.clone() }, format!("get {path}")),
                        Some(sink) => {
                            let shown = format!("get {path} to {}", sink.label());
                            (Work::Upload { path, sink: Arc::clone(sink) }, shown)
                        }
                    };
                    let results = fan(st, "get", hosts, work, o, Some(shown)).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;
        Ok(t)
    }
}

/// What `ssh.put` writes.
enum PutSource {
    Content(Vec<u8>),
    /// A file of the applet package.
    File(String),
    /// A stored object another module handed over (`s3.object(...)`).
    Object(Arc<dyn Source>),
}

const PUT_SOURCES: &str =
    "give { content = \"...\" }, { file = \"path/in/applet\" }, or an object handle (like s3.object(...)), alone or as { object = handle }";

/// Reads `ssh.put`'s `source` argument.
fn put_source(source: &Value) -> mlua::Result<PutSource> {
    if let Some(h) = objects::object_of(source) {
        return Ok(PutSource::Object(h.0));
    }
    let Value::Table(t) = source else {
        return Err(LUA.err("put", format!("source: {PUT_SOURCES}; got {}", what(source))));
    };
    let content: Option<mlua::LuaString> = t.get("content")?;
    let file: Option<String> = t.get("file")?;
    let object: Value = t.get("object")?;
    match (content, file, object) {
        (Some(c), None, Value::Nil) => Ok(PutSource::Content(c.as_bytes().to_vec())),
        (None, Some(f), Value::Nil) => Ok(PutSource::File(f)),
        (None, None, v) if !v.is_nil() => match objects::object_of(&v) {
            Some(h) => Ok(PutSource::Object(h.0)),
            None => Err(LUA.err("put", format!("source.object: expected an object handle (like s3.object(...)), got {}", what(&v)))),
        },
        _ => Err(LUA.err("put", format!("source: {PUT_SOURCES}; exactly one of content, file and object"))),
    }
}

/// How a value is named in an error: its type, or which handle it is.
fn what(v: &Value) -> String {
    if objects::sink_of(v).is_some() {
        "a destination handle".to_string()
    } else if objects::object_of(v).is_some() {
        "an object handle".to_string()
    } else {
        v.type_name().to_string()
    }
}

fn check_path(call: &str, scope: &Scope, path: &str) -> mlua::Result<()> {
    if !path.starts_with('/') {
        return Err(LUA.err(call, format!("`{path}`: give an absolute path")));
    }
    if !scope.allows_file(path) {
        return Err(LUA.err(
            call,
            format!(
                "permission denied: `{path}` matches none of the applet's ssh files ({})",
                scope.files.as_deref().map(|f| f.join(", ")).unwrap_or_else(|| "none: the permission lists commands but no files".into())
            ),
        ));
    }
    Ok(())
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 60 || s.contains('\n') {
        format!("{}...", line.chars().take(60).collect::<String>())
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::objects::{Chunks, ObjectHandle, SinkHandle, Writer};
    use futures_util::future::BoxFuture;

    struct Fake;

    impl Source for Fake {
        fn label(&self) -> String {
            "s3://artifacts/agent.tgz".into()
        }
        fn size(&self) -> u64 {
            42
        }
        fn sha256(&self) -> Option<String> {
            Some("ab".repeat(32))
        }
        fn describe(&self) -> serde_json::Value {
            json!({ "bucket": "artifacts", "key": "agent.tgz" })
        }
        fn open(&self) -> BoxFuture<'static, Result<Box<dyn Chunks>, String>> {
            Box::pin(async { Err("not in a unit test".to_string()) })
        }
    }

    impl Sink for Fake {
        fn label(&self) -> String {
            "s3://logs/fleet/".into()
        }
        fn describe(&self) -> serde_json::Value {
            json!({ "bucket": "logs", "prefix": "fleet/" })
        }
        fn begin(&self, _: &str, _: Option<String>) -> BoxFuture<'static, Result<Box<dyn Writer>, String>> {
            Box::pin(async { Err("not in a unit test".to_string()) })
        }
    }

    fn err(r: mlua::Result<PutSource>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn put_takes_content_a_file_or_an_object_handle() {
        let lua = Lua::new();
        let object = Value::UserData(lua.create_userdata(ObjectHandle(Arc::new(Fake))).unwrap());
        let sink = Value::UserData(lua.create_userdata(SinkHandle(Arc::new(Fake))).unwrap());
        let table = |code: &str| lua.load(code).eval::<Value>().unwrap();

        assert!(matches!(put_source(&object).unwrap(), PutSource::Object(s) if s.size() == 42));
        let wrapped = lua.create_table().unwrap();
        wrapped.set("object", object.clone()).unwrap();
        assert!(matches!(put_source(&Value::Table(wrapped)).unwrap(), PutSource::Object(_)));
        assert!(matches!(put_source(&table("return { content = 'hi' }")).unwrap(), PutSource::Content(c) if c == b"hi"));
        assert!(matches!(put_source(&table("return { file = 'files/motd' }")).unwrap(), PutSource::File(f) if f == "files/motd"));

        let e = err(put_source(&Value::Integer(7)));
        assert!(e.contains("or an object handle") && e.contains("got integer"), "{e}");
        let e = err(put_source(&sink));
        assert!(e.contains("got a destination handle"), "{e}");
        let e = err(put_source(&table("return { object = 'agent.tgz' }")));
        assert!(e.contains("source.object: expected an object handle") && e.contains("got string"), "{e}");
        let both = lua.create_table().unwrap();
        both.set("object", object).unwrap();
        both.set("content", "x").unwrap();
        let e = err(put_source(&Value::Table(both)));
        assert!(e.contains("exactly one of content, file and object"), "{e}");
        assert!(err(put_source(&table("return {}"))).contains("exactly one"));
    }

    #[test]
    fn streamed_work_keeps_the_put_and_get_action_names() {
        let stream = Work::Stream { path: "/opt/agent.tgz".into(), source: Arc::new(Fake), mode: Some(0o644) };
        assert_eq!(stream.action(), "put");
        assert_eq!(
            stream.describe(),
            json!({
                "path": "/opt/agent.tgz",
                "object": { "bucket": "artifacts", "key": "agent.tgz" },
                "bytes": 42,
                "sha256": "ab".repeat(32),
                "mode": "0644",
            })
        );
        let upload = Work::Upload { path: "/var/log/syslog".into(), sink: Arc::new(Fake) };
        assert_eq!(upload.action(), "get");
        assert_eq!(upload.describe(), json!({ "path": "/var/log/syslog", "to": { "bucket": "logs", "prefix": "fleet/" } }));
    }

    #[test]
    fn to_is_a_get_option_taking_a_destination() {
        let lua = Lua::new();
        let settings = SshSettings::from_config(&Config::default()).unwrap();
        let scope = Scope::parse(&toml::from_str("hosts = [\"*\"]").unwrap()).unwrap();
        let opts = |v: Value| {
            let t = lua.create_table().unwrap();
            t.set("to", v).unwrap();
            Some(t)
        };
        let sink = Value::UserData(lua.create_userdata(SinkHandle(Arc::new(Fake))).unwrap());
        let object = Value::UserData(lua.create_userdata(ObjectHandle(Arc::new(Fake))).unwrap());
        let o = parse_opts("get", opts(sink.clone()), &["to"], &settings, &scope).unwrap();
        assert_eq!(o.to.unwrap().label(), "s3://logs/fleet/");
        let e = parse_opts("get", opts(object), &["to"], &settings, &scope).err().unwrap().to_string();
        assert!(e.contains("opts.to: expected a destination handle") && e.contains("got an object handle"), "{e}");
        let e = parse_opts("put", opts(sink), &["mode"], &settings, &scope).err().unwrap().to_string();
        assert!(e.contains("unknown option `to`"), "{e}");
    }
}
