//! The `ssh` host module: commands, scripts and files on many hosts at once.
//!
//! Lua: `ssh.run(selector, command, opts)`, `ssh.script(selector, script, args, opts)`,
//! `ssh.put(selector, path, source, opts)`, `ssh.get(selector, path, opts)`; each returns one
//! record per host (docs/lua/ssh.md). Targets come from the cmdb, logins from `[[ssh.credentials]]`
//! and secrets, host keys from the cmdb's pins. Connections run on opslet's own I/O threads (not
//! the run's thread, so handshakes do not count as the applet's CPU) and are reused within a run.
//!
//! Layout: `client` is a plain russh client, `result` what a call returns per host, `scope` the
//! permission; this file is the Lua boundary and the per-run state tying them to the cmdb,
//! secrets and audit. The fan-out is the kit's (`kit::fanout`).

pub mod client;
pub mod result;
pub mod scope;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};
use parking_lot::Mutex;
use serde_json::json;

use crate::cmdb::{Cmdb, Host, Snapshot};
use crate::kit::fanout::{self as batch, Plan};
use crate::kit::targets::Targets;
use crate::kit::{Grant, HostModule, lua_err as call_err, read_secret};
use crate::config::{FirstContact, SshSettings};
use crate::runtime::context::RunCtx;
use result::HostResult;
use client::{Auth, ConnectError, Session, Target, shell_quote};
use scope::Scope;

pub struct SshModule {
    settings: Arc<SshSettings>,
}

impl SshModule {
    pub fn new(settings: SshSettings) -> SshModule {
        SshModule { settings: Arc::new(settings) }
    }
}

fn lua_err(call: &str, m: impl std::fmt::Display) -> mlua::Error {
    call_err(&format!("ssh.{call}"), m)
}

/// One run's view of the module: its permission, its connections, its logins.
struct RunState {
    settings: Arc<SshSettings>,
    ctx: Arc<RunCtx>,
    scope: Scope,
    /// The cmdb as the run started and the hosts the permission's `hosts` pick.
    reach: Targets,
    /// Per host name, the index of its `[[ssh.credentials]]` entry.
    cred_of: HashMap<String, usize>,
    /// Logins by credentials entry, read from secrets on first use.
    auths: crate::kit::targets::PerEntry<Auth>,
    /// Open sessions by host name (one connect per host, even under concurrent calls).
    sessions: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Session>>>>>,
}

impl RunState {
    fn new(settings: Arc<SshSettings>, ctx: Arc<RunCtx>, scope: Scope) -> RunState {
        let reach = Targets::new(&ctx, "ssh", "hosts", scope.hosts.clone());
        let cred_of = reach.first_match(settings.credentials.iter().map(|c| c.hosts.as_str()));
        RunState { settings, ctx, scope, reach, cred_of, auths: Default::default(), sessions: Mutex::default() }
    }

    /// The login of credentials entry `i`, read from secrets once per run.
    fn auth(&self, i: usize) -> Result<Auth, String> {
        let cred = &self.settings.credentials[i];
        self.auths.get(i, || {
            let owner = format!("[[ssh.credentials]] for {}", cred.hosts);
            login_from_secrets(
                &self.ctx,
                &owner,
                cred.key_secret.as_deref(),
                cred.key_passphrase_secret.as_deref(),
                cred.password_secret.as_deref(),
            )
        })
    }

    /// The login for `host` from the first matching `[[ssh.credentials]]`: user, key or
    /// password, and the jump host.
    fn login(&self, host: &Host) -> Result<(String, Auth, Option<String>), String> {
        let i = *self.cred_of.get(&host.name).ok_or_else(|| {
            format!(
                "no [[ssh.credentials]] entry picks host {} (add one whose hosts selector matches it, e.g. hosts = \"group:...\")",
                host.name
            )
        })?;
        let cred = &self.settings.credentials[i];
        Ok((cred.user.clone(), self.auth(i)?, cred.jump.clone()))
    }

    /// The open session to `host`, connecting (and pinning on first contact) when needed.
    async fn session(self: &Arc<Self>, host: &Host, hops: u8) -> Result<Arc<Session>, String> {
        let cell = {
            let mut map = self.sessions.lock();
            let cell = map.entry(host.name.clone()).or_default();
            if cell.get().is_some_and(|s| s.is_closed()) {
                *cell = Arc::default();
            }
            Arc::clone(cell)
        };
        let me = Arc::clone(self);
        let host = host.clone();
        cell.get_or_try_init(|| async move { me.connect(&host, hops).await.map(Arc::new) }).await.cloned()
    }

    async fn connect(self: &Arc<Self>, host: &Host, hops: u8) -> Result<Session, String> {
        let (user, auth, jump) = self.login(host)?;
        let via = match jump {
            None => None,
            Some(j) if j == host.name => {
                return Err(format!("{} would be its own jump host: give its [[ssh.credentials]] entry no `jump`", host.name));
            }
            Some(_) if hops > 0 => {
                return Err(format!("{} is a jump host that needs a jump host itself; opslet goes through one jump host only", host.name));
            }
            Some(j) => {
                let snap = self.reach.snapshot.as_ref().map_err(Clone::clone)?;
                let jh = snap.host(&j).cloned().ok_or_else(|| format!("jump host `{j}` (for {}) is not in the cmdb", host.name))?;
                let s = Box::pin(self.session(&jh, hops + 1)).await.map_err(|m| format!("jump host {j}: {m}"))?;
                Some(s)
            }
        };
        let first = self.settings.first_contact;
        connect_pinned(&self.ctx, "ssh", host, &user, auth, first, via, self.settings.connect_timeout).await
    }
}

/// Connects to a cmdb host and logs in: its key is checked against the cmdb's pin (a refused
/// key is audited), and a first-contact key is pinned when `first_contact` allows trusting it.
/// Shared with the netdev module.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connect_pinned(
    ctx: &RunCtx,
    module: &str,
    host: &Host,
    user: &str,
    auth: Auth,
    first_contact: FirstContact,
    via: Option<Arc<Session>>,
    timeout: Duration,
) -> Result<Session, String> {
    let pinned = match &host.host_key {
        Some(k) => Some(
            russh::keys::PublicKey::from_openssh(k.trim())
                .map_err(|e| format!("the pinned host key of {} is unreadable: {e}", host.name))?,
        ),
        None => None,
    };
    let target = Target {
        name: host.name.clone(),
        address: host.address.clone(),
        port: host.port,
        user: user.to_string(),
        auth,
        pinned,
        accept_new: first_contact == FirstContact::AcceptAndPin,
    };
    match Session::connect(&target, via, timeout).await {
        Ok(s) => {
            if host.host_key.is_none()
                && let Some(k) = &s.host_key
            {
                pin_host_key(ctx, module, host, k);
            }
            Ok(s)
        }
        Err(e) => {
            record_refusal(ctx, module, &host.name, &e);
            Err(e.to_string())
        }
    }
}

/// Reads a login from secrets: a private key (with its passphrase) or a password. `owner` names
/// the config entry in messages. Shared with the netdev module.
pub(crate) fn login_from_secrets(
    ctx: &RunCtx,
    owner: &str,
    key_secret: Option<&str>,
    passphrase_secret: Option<&str>,
    password_secret: Option<&str>,
) -> Result<Auth, String> {
    match (key_secret, password_secret) {
        (Some(k), _) => {
            let pass = passphrase_secret.map(|p| read_secret(ctx, owner, p)).transpose()?;
            let key = client::parse_private_key(&read_secret(ctx, owner, k)?, pass.as_deref()).map_err(|m| format!("secret `{k}`: {m}"))?;
            Ok(Auth::Key(Arc::new(key)))
        }
        (None, Some(p)) => Ok(Auth::Password(read_secret(ctx, owner, p)?)),
        (None, None) => Err(format!("{owner}: no password_secret or key_secret")),
    }
}

/// Records a refused host key (changed, or not pinned) as an action of the run.
fn record_refusal(ctx: &RunCtx, module: &str, host: &str, e: &ConnectError) {
    let detail = match e {
        ConnectError::KeyChanged { pinned, offered, offered_key } => {
            json!({ "reason": "changed", "pinned": pinned, "offered": offered, "offered_key": offered_key })
        }
        ConnectError::KeyUnknown { offered, offered_key } => {
            json!({ "reason": "not pinned", "offered": offered, "offered_key": offered_key })
        }
        _ => return,
    };
    let _ = ctx.record_action(module, "hostkey.refused", host, false, detail);
}

/// Pins a first-contact key in the cmdb (audited there and as an action of this run), only if
/// the host still has the address that was reached and no pin of its own by now.
fn pin_host_key(ctx: &RunCtx, module: &str, host: &Host, key: &russh::keys::PublicKey) {
    let line = client::openssh_line(key);
    let cmdb = ctx.store.clone().map(Cmdb::new);
    let pinned = cmdb.and_then(Result::ok).and_then(|c| {
        let h = c.host(&host.name).ok().flatten()?;
        if h.address != host.address || h.port != host.port || h.host_key.is_some() {
            return None;
        }
        Some(c.put(Host { host_key: Some(line.clone()), ..h }, &ctx.caller.user))
    });
    let ok = matches!(pinned, Some(Ok(_)));
    let _ = ctx.record_action(module, "hostkey.pin", &host.name, ok, json!({ "key": line, "fingerprint": client::fingerprint(key) }));
}

/// SSH to cmdb hosts for other modules (config items): the same logins, host-key pins, jump
/// hosts, connection reuse and I/O threads as `ssh.*`, limited to the hosts `hosts` selects.
/// The caller decides what runs and audits it.
pub(crate) struct Access {
    state: Arc<RunState>,
}

impl Access {
    pub(crate) fn new(settings: Arc<SshSettings>, ctx: Arc<RunCtx>, hosts: Vec<String>) -> Access {
        let scope = Scope { hosts, ..Default::default() };
        Access { state: Arc::new(RunState::new(settings, ctx, scope)) }
    }

    /// The cmdb as the run started.
    pub(crate) fn snapshot(&self) -> Result<Arc<Snapshot>, String> {
        self.state.reach.snapshot.clone()
    }

    /// Whether the scope given to [`Access::new`] picks `host`.
    pub(crate) fn allows(&self, host: &str) -> bool {
        self.state.reach.allows(host)
    }

    pub(crate) fn settings(&self) -> &SshSettings {
        &self.state.settings
    }

    /// Runs `command` on `host` (connecting on first use), `stdin` sent and closed, all within
    /// `timeout`; on opslet's I/O threads.
    pub(crate) async fn exec(
        &self,
        host: &Host,
        command: String,
        stdin: Option<bytes::Bytes>,
        timeout: Duration,
    ) -> Result<client::Exec, String> {
        let state = Arc::clone(&self.state);
        let host = host.clone();
        let max = state.settings.max_output as usize;
        let work = async move {
            let s = state.session(&host, 0).await?;
            let budget = client::Budget::new(state.ctx.guard.limits.memory);
            s.exec(&command, stdin, max, &budget).await
        };
        crate::kit::io::on_io(async move {
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {}", humantime::format_duration(timeout))))
        })
        .await?
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
}

const COMMON_OPTS: &[&str] = &["timeout", "concurrency", "batch", "canary", "stop_after"];

fn parse_opts(call: &str, opts: Option<Table>, extra: &[&str], settings: &SshSettings, scope: &Scope) -> mlua::Result<CallOpts> {
    let mut o = CallOpts {
        timeout: settings.timeout,
        plan: Plan { concurrency: settings.concurrency, batch: None, canary: 0, stop_after: None },
        sudo: None,
        env: Vec::new(),
        mode: None,
    };
    let Some(opts) = opts else { return Ok(o) };
    for pair in opts.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let key = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => return Err(lua_err(call, format!("opts: keys must be names, got {}", other.type_name()))),
        };
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
                    other => return Err(lua_err(call, format!("opts.sudo: expected true or a user name, got {}", other.type_name()))),
                };
                if let Some(u) = &user {
                    if !scope.sudo {
                        return Err(lua_err(call, "permission denied: opts.sudo needs `sudo = true` in the applet's ssh permission"));
                    }
                    if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                        return Err(lua_err(call, format!("opts.sudo: `{u}` is not a user name")));
                    }
                }
                o.sudo = user;
            }
            "env" if extra.contains(&"env") => {
                let Value::Table(t) = v else { return Err(lua_err(call, "opts.env: expected a table of NAME = value")) };
                for pair in t.pairs::<String, Value>() {
                    let (name, value) = pair?;
                    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(lua_err(call, format!("opts.env: `{name}` is not a variable name")));
                    }
                    if !scope.allows_env(&name) {
                        return Err(lua_err(
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
                        .map_err(|_| lua_err(call, "opts.mode: expected an octal string like \"0644\""))?,
                    Value::Integer(i) if (0..=0o7777).contains(&i) => i as u32,
                    _ => return Err(lua_err(call, "opts.mode: expected an octal string like \"0644\"")),
                });
            }
            other => {
                let known: Vec<&str> = COMMON_OPTS.iter().chain(extra).copied().collect();
                return Err(lua_err(call, format!("unknown option `{other}` (known: {})", known.join(", "))));
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

fn results_to_lua(lua: &Lua, results: &[HostResult]) -> mlua::Result<Value> {
    let v = serde_json::to_value(results).map_err(mlua::Error::external)?;
    crate::kit::json_to_lua(lua, &v)
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
}

impl Work {
    fn action(&self) -> &'static str {
        match self {
            Work::Exec { stdin: None, .. } => "run",
            Work::Exec { .. } => "script",
            Work::Put { .. } => "put",
            Work::Get { .. } => "get",
        }
    }

    fn describe(&self) -> serde_json::Value {
        match self {
            Work::Exec { audit, .. } => json!({ "command": audit }),
            Work::Put { path, data, mode, sha256 } => {
                json!({ "path": path, "bytes": data.len(), "sha256": sha256, "mode": mode.map(|m| format!("{m:04o}")) })
            }
            Work::Get { path } => json!({ "path": path }),
        }
    }
}

async fn one_host(state: Arc<RunState>, host: Host, work: Work, timeout: Duration, budget: Arc<client::Budget>) -> HostResult {
    let t0 = Instant::now();
    let pending = crate::kit::Pending::new(&state.ctx, "ssh", work.action(), &host.name, work.describe());
    let max_output = state.settings.max_output as usize;
    let max_file = state.settings.max_file;
    let attempt = async {
        let s = state.session(&host, 0).await?;
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
        }
        Ok::<HostResult, String>(r)
    };
    let mut r = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(r)) => r,
        Ok(Err(m)) => HostResult::failed(&host.name, m),
        Err(_) => HostResult::failed(&host.name, format!("timed out after {}", humantime::format_duration(timeout))),
    };
    r.duration = t0.elapsed().as_secs_f64();
    let mut detail = work.describe();
    detail["duration_ms"] = json!(t0.elapsed().as_millis() as u64);
    detail["exit_code"] = json!(r.exit_code);
    if let Some(e) = &r.error {
        detail["error"] = json!(e);
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

impl HostModule for SshModule {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(scope).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant.scope).map_err(|m| lua_err("permission", m))?;
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
                        return Err(lua_err(
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
                    results_to_lua(&lua, &results)
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
                            return Err(lua_err(
                                "script",
                                format!("permission denied: `{}` is not a file of this applet, and its ssh permission lists commands, so only the applet's own script files may run", short(&script)),
                            ));
                        }
                        None => (script.clone().into_bytes(), "(inline script)".to_string()),
                    };
                    if body.len() as u64 > st.settings.max_file {
                        return Err(lua_err("script", format!("the script is {} bytes, over the {}-byte limit ([ssh] max_file)", body.len(), st.settings.max_file)));
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
                    results_to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "put",
            lua.create_async_function(move |lua, (selector, path, source, opts): (String, String, Table, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("put", opts, &["mode"], &st.settings, &st.scope)?;
                    check_path("put", &st.scope, &path)?;
                    let content: Option<mlua::LuaString> = source.get("content")?;
                    let file: Option<String> = source.get("file")?;
                    let data = match (content, file) {
                        (Some(c), None) => c.as_bytes().to_vec(),
                        (None, Some(f)) => st
                            .ctx
                            .package
                            .as_ref()
                            .and_then(|p| p.files.get(f.trim_start_matches("./")).cloned())
                            .ok_or_else(|| lua_err("put", format!("source.file: `{f}` is not a file of this applet")))?,
                        _ => {
                            return Err(lua_err(
                                "put",
                                "source: give exactly one of { content = \"...\" } or { file = \"path/in/applet\" }",
                            ));
                        }
                    };
                    if data.len() as u64 > st.settings.max_file {
                        return Err(lua_err(
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
                    results_to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "get",
            lua.create_async_function(move |lua, (selector, path, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("get", opts, &[], &st.settings, &st.scope)?;
                    check_path("get", &st.scope, &path)?;
                    let hosts = st.reach.select("get", &selector)?;
                    let shown = format!("get {path}");
                    let results = fan(st, "get", hosts, Work::Get { path }, o, Some(shown)).await;
                    results_to_lua(&lua, &results)
                }
            })?,
        )?;
        Ok(t)
    }
}

fn check_path(call: &str, scope: &Scope, path: &str) -> mlua::Result<()> {
    if !path.starts_with('/') {
        return Err(lua_err(call, format!("`{path}`: give an absolute path")));
    }
    if !scope.allows_file(path) {
        return Err(lua_err(
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
