//! The `netdev` host module: switch and router CLIs over SSH.
//!
//! Lua: `netdev.open(device)` gives a session handle (`:command`, `:commands`, `:config`,
//! `:expect`, `:save`, `:close`); `netdev.run(selector, commands)`, `netdev.configure(selector,
//! lines)` and `netdev.backup(selector)` work on many devices at once with one record per device;
//! `netdev.versions`, `netdev.saved` and `netdev.diff` read the stored backups (docs/lua/netdev.md).
//!
//! Devices are cmdb hosts; each one's profile comes from its `platform` tag (or an imported
//! `ansible_network_os`), its login from `[[netdev.credentials]]` and secrets, its SSH host key from
//! the cmdb's pin. Every command and change is audited; a dry run still sends the commands the
//! profile calls reads, and only plans the rest.
//!
//! Layout: `profile` is the vendor data, `cli` the prompt-driven session (plain Rust), `scope` the
//! permission; this file is the Lua boundary and the per-run state.

pub mod cli;
pub mod profile;
pub mod scope;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, UserData, UserDataMethods, Value};
use serde::Serialize;
use serde_json::json;

use crate::cmdb::Host;
use crate::cmdb::device_configs::{DeviceConfigs, unified_diff};
use crate::config::Config;
use crate::error::Error;
use crate::kit::fanout::{self as batch, Plan};
use crate::kit::io::on_io;
use crate::kit::ssh::client::Session;
use crate::kit::targets::Targets;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use cli::{Cli, CliError, ConfigError};
use profile::{Profile, Profiles};
use scope::Scope;
use settings::NetdevSettings;

/// The cmdb tag naming a device's profile.
pub const PLATFORM_TAG: &str = "platform";

pub struct NetdevModule {
    settings: Arc<NetdevSettings>,
    profiles: Arc<Profiles>,
}

impl NetdevModule {
    /// The module with its settings; the device profiles of `profiles_dir` are read now, and a
    /// broken one is an error naming its file and key.
    pub fn new(settings: NetdevSettings) -> Result<NetdevModule, String> {
        let profiles = Profiles::load(settings.profiles_dir.as_deref()).map(Arc::new).map_err(|m| format!("netdev.profiles_dir: {m}"))?;
        Ok(NetdevModule { settings: Arc::new(settings), profiles })
    }
}

/// This module's calls, for their errors (`netdev.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("netdev");

/// One run's view of the module.
struct RunState {
    settings: Arc<NetdevSettings>,
    profiles: Arc<Profiles>,
    ctx: Arc<RunCtx>,
    scope: Scope,
    /// The cmdb as the run started and the devices the permission picks.
    reach: Targets,
    /// Per device, the index of its `[[netdev.credentials]]` entry.
    cred_of: HashMap<String, usize>,
    /// Per credentials entry: the login and the enable secret, read once per run.
    logins: crate::kit::targets::PerEntry<(crate::kit::ssh::client::Auth, Option<String>)>,
}

/// An open device: the SSH connection and the CLI on it.
struct Conn {
    session: Session,
    cli: Cli,
}

impl RunState {
    fn new(settings: Arc<NetdevSettings>, profiles: Arc<Profiles>, ctx: Arc<RunCtx>, scope: Scope) -> RunState {
        let reach = Targets::new(&ctx, "netdev", "devices", scope.devices.clone());
        let cred_of = reach.first_match(settings.credentials.iter().map(|c| c.devices.as_str()));
        RunState { settings, profiles, ctx, scope, reach, cred_of, logins: Default::default() }
    }

    /// The device's profile: its `platform` tag, else an imported `ansible_network_os`.
    fn profile_of(&self, host: &Host) -> Result<Arc<Profile>, String> {
        let named = host
            .tags
            .get(PLATFORM_TAG)
            .cloned()
            .or_else(|| host.attrs.get("ansible_network_os").and_then(|v| v.as_str()).map(str::to_string));
        let Some(name) = named else {
            return Err(format!(
                "{} has no `{PLATFORM_TAG}` tag naming its device profile (known: {}); set one with `opslet cmdb host set {} --tag {PLATFORM_TAG}=...`",
                host.name,
                self.profiles.names().join(", "),
                host.name
            ));
        };
        self.profiles
            .get(&name)
            .ok_or_else(|| format!("{}: no device profile `{name}` (known: {})", host.name, self.profiles.names().join(", ")))
    }

    /// Connects, logs in and brings the CLI to its working prompt.
    async fn connect(&self, host: &Host, profile: Arc<Profile>) -> Result<Conn, String> {
        let i = *self.cred_of.get(&host.name).ok_or_else(|| {
            format!("no [[netdev.credentials]] entry picks device {} (add one whose devices selector matches it)", host.name)
        })?;
        let cred = &self.settings.credentials[i];
        let owner = format!("[[netdev.credentials]] for {}", cred.devices);
        let (auth, enable) = self.logins.get(i, || {
            let auth = crate::kit::ssh::login_from_secrets(
                &self.ctx,
                &owner,
                cred.key_secret.as_deref(),
                cred.key_passphrase_secret.as_deref(),
                cred.password_secret.as_deref(),
            )?;
            let enable = cred.enable_secret.as_deref().map(|s| crate::kit::read_secret(&self.ctx, &owner, s)).transpose()?;
            Ok((auth, enable))
        })?;
        let first = self.settings.first_contact;
        let timeout = self.settings.connect_timeout;
        let session = crate::kit::ssh::connect_pinned(&self.ctx, "netdev", host, &cred.user, auth, first, None, timeout).await?;
        let max = self.settings.max_output as usize;
        let pname = profile.name.clone();
        let r = match Cli::open(&session, profile, enable.as_deref(), self.settings.connect_timeout, max).await {
            Ok(cli) => Ok(Conn { session, cli }),
            Err(e) => {
                session.close().await;
                Err(format!("starting the CLI: {e}"))
            }
        };
        // The login, enable and paging set-up, as one record.
        let detail = json!({ "profile": pname, "user": cred.user, "prompt": r.as_ref().ok().map(|c| c.cli.prompt.clone()), "error": r.as_ref().err() });
        let _ = self.audit("login", &host.name, r.is_ok(), detail);
        r
    }

    fn audit(&self, action: &str, device: &str, ok: bool, detail: serde_json::Value) -> Result<(), String> {
        self.ctx
            .record_action("netdev", action, device, ok, detail)
            .map_err(|e| format!("could not record the action in the audit log: {e}"))
    }

    /// Checks that `command` may be sent to a device of `profile`.
    fn check_command(&self, call: &str, profile: &Profile, command: &str) -> mlua::Result<()> {
        if command.contains(['\n', '\r']) {
            return Err(LUA.err(call, "a command is one line; send several with :commands{...}"));
        }
        check_printable(call, "command", command)?;
        self.scope
            .allows_command(command, profile.is_read(command))
            .map_err(|m| LUA.err(call, format!("permission denied: {m}; nothing was sent")))
    }

    fn check_lines(&self, call: &str, lines: &[String]) -> mlua::Result<()> {
        // Even no lines enter configuration mode (and commit, and save): `config` is needed.
        if !self.scope.config {
            return Err(LUA.err(call, "permission denied: the applet's netdev permission does not grant `config`; nothing was sent"));
        }
        for l in lines {
            if l.contains(['\n', '\r']) {
                return Err(LUA.err(call, format!("`{}`: each configuration line is one line", l.lines().next().unwrap_or(""))));
            }
            check_printable(call, "configuration line", l)?;
            self.scope.allows_line(l).map_err(|m| LUA.err(call, format!("permission denied: {m}; nothing was sent")))?;
        }
        Ok(())
    }
}

/// Refuses control characters: a device's line editor acts on them (Ctrl-U erases what came
/// before, so `show \x15reload` would look like a read and run `reload`).
fn check_printable(call: &str, what: &str, text: &str) -> mlua::Result<()> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(LUA.err(
            call,
            format!("permission denied: the {what} holds the control character {:?}; devices act on those, so they are never sent", c),
        )),
        None => Ok(()),
    }
}

/// The outcome on one device, for the many-device calls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceResult {
    pub host: String,
    pub ok: bool,
    /// `netdev.run`: the output of each command, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
    /// `netdev.run`: every output joined, each under its command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub duration: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The command or configuration line the device rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// `netdev.configure`: the lines for this device, lines applied, and saving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub saved: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    /// `netdev.backup`: the version that holds the configuration, and whether it is new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub planned: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

crate::kit::fanout::impl_outcome!(DeviceResult);

/// Options of the calls, from the Lua `opts` table.
struct Opts {
    timeout: Duration,
    plan: Plan,
    save: bool,
}

fn parse_opts(call: &str, opts: Option<Table>, allowed: &[&str], settings: &NetdevSettings) -> mlua::Result<Opts> {
    let mut o = Opts {
        timeout: settings.timeout,
        plan: Plan { concurrency: settings.concurrency, batch: None, canary: 0, stop_after: None },
        save: false,
    };
    let Some(opts) = opts else { return Ok(o) };
    for pair in opts.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let key = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => return Err(LUA.err(call, format!("opts: keys must be names, got {}", other.type_name()))),
        };
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
fn string_list(call: &str, what: &str, v: Value) -> mlua::Result<Vec<String>> {
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

/// A device session as Lua sees it (`netdev.open`). The connection is made on first use, so a
/// dry run that only plans changes never connects.
struct Device {
    state: Arc<RunState>,
    host: Host,
    profile: Arc<Profile>,
    conn: Arc<tokio::sync::Mutex<Option<Conn>>>,
}

impl Device {
    /// Runs `f` with the open CLI (connecting first if needed) on the I/O threads.
    async fn with_cli<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Cli) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> + Send + 'static,
    {
        let (state, host, profile, conn) = (Arc::clone(&self.state), self.host.clone(), Arc::clone(&self.profile), Arc::clone(&self.conn));
        on_io(async move {
            let mut guard = conn.lock().await;
            if let Some(c) = guard.as_ref()
                && c.session.is_closed()
                && c.cli.usable()
            {
                return Err("the device closed the session; open a new one".to_string());
            }
            if guard.is_none() {
                *guard = Some(state.connect(&host, profile).await?);
            }
            let c = guard.as_mut().expect("connected above");
            Ok(f(&mut c.cli).await)
        })
        .await?
    }
}

fn cli_err(call: &str, device: &str, e: impl std::fmt::Display) -> mlua::Error {
    LUA.err(call, format!("{device}: {e}"))
}

impl UserData for Device {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |_, this| Ok(this.host.name.clone()));
        fields.add_field_method_get("address", |_, this| Ok(this.host.address.clone()));
        fields.add_field_method_get("profile", |_, this| Ok(this.profile.name.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("command", |_, this, (command, opts): (String, Option<Table>)| async move {
            let o = parse_opts("command", opts, &["timeout"], &this.state.settings)?;
            this.state.check_command("command", &this.profile, &command)?;
            one_command(&this, command, o.timeout).await
        });

        methods.add_async_method("commands", |lua, this, (list, opts): (Value, Option<Table>)| async move {
            let o = parse_opts("commands", opts, &["timeout"], &this.state.settings)?;
            let list = string_list("commands", "commands", list)?;
            for c in &list {
                this.state.check_command("commands", &this.profile, c)?;
            }
            let out = lua.create_table()?;
            for c in list {
                out.raw_push(one_command(&this, c, o.timeout).await?)?;
            }
            Ok(out)
        });

        methods.add_async_method("config", |lua, this, (lines, opts): (Value, Option<Table>)| async move {
            let o = parse_opts("config", opts, &["timeout", "save"], &this.state.settings)?;
            let lines = string_list("config", "lines", lines)?;
            this.state.check_lines("config", &lines)?;
            let name = this.host.name.clone();
            if this.state.ctx.dry_run {
                this.state
                    .audit("config", &name, true, json!({ "lines": lines, "save": o.save, "planned": true }))
                    .map_err(|m| LUA.err("config", m))?;
                return crate::kit::to_lua(&lua, &json!({ "planned": true, "lines": lines, "applied": 0, "saved": false }));
            }
            let t0 = Instant::now();
            let pending = crate::kit::Pending::new(&this.state.ctx, "netdev", "config", &name, json!({ "lines": lines, "save": o.save }));
            let (ls, save, timeout) = (lines.clone(), o.save, o.timeout);
            let r = this.with_cli(move |cli| Box::pin(async move { cli.config(&ls, save, timeout).await })).await;
            pending.finish();
            let r = match r {
                Ok(r) => r,
                Err(m) => Err(ConfigError::Cli(CliError::Protocol(m))),
            };
            let ms = t0.elapsed().as_millis() as u64;
            match r {
                Ok(a) => {
                    this.state
                        .audit("config", &name, true, json!({ "lines": lines, "applied": a.lines, "saved": a.saved, "duration_ms": ms }))
                        .map_err(|m| LUA.err("config", m))?;
                    crate::kit::to_lua(&lua, &json!({ "applied": a.lines, "saved": a.saved, "transcript": a.transcript, "lines": lines }))
                }
                Err(e) => {
                    let applied = match &e {
                        ConfigError::Line(l) => l.index.min(lines.len()),
                        ConfigError::Cli(_) => 0,
                    };
                    let _ = this.state.audit(
                        "config",
                        &name,
                        false,
                        json!({ "lines": lines, "applied": applied, "error": e.to_string(), "duration_ms": ms }),
                    );
                    Err(cli_err("config", &name, config_message(&e, lines.len())))
                }
            }
        });

        methods.add_async_method("expect", |lua, this, (command, patterns, opts): (String, Value, Option<Table>)| async move {
            let o = parse_opts("expect", opts, &["timeout"], &this.state.settings)?;
            if !this.state.scope.exec {
                return Err(LUA.err("expect", "permission denied: expect needs the `exec` action in the applet's netdev permission"));
            }
            // An empty line (just Enter) answers a prompt; anything else is a command.
            if command.is_empty() {
                check_printable("expect", "command", &command)?;
            } else {
                this.state.check_command("expect", &this.profile, &command)?;
            }
            let pats = string_list("expect", "patterns", patterns)?;
            let res = pats
                .iter()
                .map(|p| regex::Regex::new(p).map_err(|e| LUA.err("expect", format!("pattern `{p}`: {e}"))))
                .collect::<mlua::Result<Vec<_>>>()?;
            let name = this.host.name.clone();
            let shown = this.state.ctx.redactor.apply(&command).into_owned();
            if this.state.ctx.dry_run {
                this.state.audit("expect", &name, true, json!({ "command": shown, "planned": true })).map_err(|m| LUA.err("expect", m))?;
                return crate::kit::to_lua(&lua, &json!({ "planned": true, "output": "" }));
            }
            let t0 = Instant::now();
            let timeout = o.timeout;
            let pending = crate::kit::Pending::new(&this.state.ctx, "netdev", "expect", &name, json!({ "command": shown }));
            let r = this.with_cli(move |cli| Box::pin(async move { cli.expect(&command, &res, timeout).await })).await;
            pending.finish();
            let ms = t0.elapsed().as_millis() as u64;
            let r = r.and_then(|r| r.map_err(|e| e.to_string()));
            let _ = this.state.audit(
                "expect",
                &name,
                r.is_ok(),
                json!({ "command": shown, "matched": r.as_ref().ok().and_then(|(_, m)| *m).map(|i| &pats[i]), "error": r.as_ref().err(), "duration_ms": ms }),
            );
            let (output, matched) = r.map_err(|m| cli_err("expect", &name, m))?;
            crate::kit::to_lua(&lua, &json!({ "output": output, "matched": matched.map(|i| i + 1), "pattern": matched.map(|i| &pats[i]) }))
        });

        methods.add_async_method("save", |_, this, ()| async move {
            if !this.state.scope.config {
                return Err(LUA.err("save", "permission denied: saving needs the `config` action in the applet's netdev permission"));
            }
            let name = this.host.name.clone();
            if this.state.ctx.dry_run {
                this.state.audit("save", &name, true, json!({ "planned": true })).map_err(|m| LUA.err("save", m))?;
                return Ok(());
            }
            let timeout = this.state.settings.timeout;
            let r = this.with_cli(move |cli| Box::pin(async move { cli.save(timeout).await })).await;
            let r = r.and_then(|r| r.map_err(|e| e.to_string()));
            let _ = this.state.audit("save", &name, r.is_ok(), json!({ "error": r.as_ref().err() }));
            r.map_err(|m| cli_err("save", &name, m))
        });

        methods.add_async_method("prompt", |_, this, ()| async move {
            let r = this.with_cli(|cli| Box::pin(async move { cli.prompt.clone() })).await;
            r.map_err(|m| cli_err("prompt", &this.host.name, m))
        });

        methods.add_async_method("close", |_, this, ()| async move {
            let conn = Arc::clone(&this.conn);
            let _ = on_io(async move {
                if let Some(mut c) = conn.lock().await.take() {
                    c.cli.close().await;
                    c.session.close().await;
                }
            })
            .await;
            Ok(())
        });
    }
}

/// What a failed configuration says about what was applied.
fn config_message(e: &ConfigError, total: usize) -> String {
    match e {
        ConfigError::Line(l) if l.index >= total => format!("committing was rejected: {} (configuration mode was left)", l.message),
        ConfigError::Line(l) => {
            let before = match l.index {
                0 => "no line before it was applied".to_string(),
                1 => "line 1 was applied before it".to_string(),
                n => format!("lines 1-{n} were applied before it"),
            };
            format!("{e}; {before}, nothing after it was sent, and configuration mode was left")
        }
        ConfigError::Cli(c) => c.to_string(),
    }
}

async fn one_command(this: &Device, command: String, timeout: Duration) -> mlua::Result<String> {
    let name = this.host.name.clone();
    let shown = this.state.ctx.redactor.apply(&command).into_owned();
    if this.state.ctx.dry_run && !this.profile.is_read(&command) {
        this.state.audit("command", &name, true, json!({ "command": shown, "planned": true })).map_err(|m| LUA.err("command", m))?;
        return Ok(String::new());
    }
    let t0 = Instant::now();
    let pending = crate::kit::Pending::new(&this.state.ctx, "netdev", "command", &name, json!({ "command": shown }));
    let r = this.with_cli(move |cli| Box::pin(async move { cli.command(&command, timeout).await })).await;
    pending.finish();
    let ms = t0.elapsed().as_millis() as u64;
    let r = r.and_then(|r| r.map_err(|e| e.to_string()));
    this.state
        .audit("command", &name, r.is_ok(), json!({ "command": shown, "error": r.as_ref().err(), "duration_ms": ms }))
        .map_err(|m| LUA.err("command", m))?;
    r.map_err(|m| cli_err("command", &name, m))
}

/// What one many-device call does on each device.
#[derive(Clone)]
enum Work {
    Run(Vec<String>),
    Configure { by_profile: Arc<HashMap<String, Vec<String>>>, all: Option<Vec<String>>, save: bool },
    Backup,
}

impl Work {
    fn call(&self) -> &'static str {
        match self {
            Work::Run(_) => "run",
            Work::Configure { .. } => "configure",
            Work::Backup => "backup",
        }
    }

    fn lines_for(&self, profile: &Profile) -> Result<Vec<String>, String> {
        match self {
            Work::Configure { by_profile, all, .. } => match all {
                Some(l) => Ok(l.clone()),
                None => by_profile.get(&profile.name).cloned().ok_or_else(|| {
                    let mut have: Vec<&String> = by_profile.keys().collect();
                    have.sort();
                    format!(
                        "no lines for its profile `{}` (lines are given for: {})",
                        profile.name,
                        have.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )
                }),
            },
            _ => Ok(Vec::new()),
        }
    }
}

async fn on_device(state: Arc<RunState>, host: Host, profile: Result<Arc<Profile>, String>, work: Work, timeout: Duration) -> DeviceResult {
    let t0 = Instant::now();
    let name = host.name.clone();
    let mut r = DeviceResult { host: name.clone(), ..Default::default() };
    let profile = match profile {
        Ok(p) => p,
        Err(m) => {
            r.error = Some(m);
            return r;
        }
    };
    r.profile = Some(profile.name.clone());
    let lines = match work.lines_for(&profile) {
        Ok(l) => l,
        Err(m) => {
            r.error = Some(m);
            return r;
        }
    };
    if let Work::Configure { .. } = &work {
        r.lines = Some(lines.clone());
    }
    let shown = |c: &str| state.ctx.redactor.apply(c).into_owned();
    // A dry run plans changes without connecting; reads still happen.
    if state.ctx.dry_run && !matches!(&work, Work::Run(cmds) if cmds.iter().all(|c| profile.is_read(c))) && !matches!(work, Work::Backup) {
        r.ok = true;
        r.planned = true;
        let detail = match &work {
            Work::Run(cmds) => json!({ "commands": cmds.iter().map(|c| shown(c)).collect::<Vec<_>>(), "planned": true }),
            Work::Configure { save, .. } => json!({ "lines": lines, "save": save, "planned": true }),
            Work::Backup => json!({ "planned": true }),
        };
        if let Err(m) = state.audit(work.call(), &name, true, detail) {
            r.ok = false;
            r.error = Some(m);
        }
        return r;
    }
    let pending = crate::kit::Pending::new(&state.ctx, "netdev", work.call(), &name, json!({ "lines": lines }));
    let mut conn = match state.connect(&host, Arc::clone(&profile)).await {
        Ok(c) => c,
        Err(m) => {
            pending.finish();
            let _ = state.audit(work.call(), &name, false, json!({ "error": m, "duration_ms": t0.elapsed().as_millis() as u64 }));
            r.error = Some(m);
            r.duration = t0.elapsed().as_secs_f64();
            return r;
        }
    };
    match &work {
        Work::Run(cmds) => {
            let mut outputs = Vec::new();
            let mut joined = String::new();
            r.ok = true;
            for c in cmds {
                let t1 = Instant::now();
                let res = conn.cli.command(c, timeout).await;
                let ms = t1.elapsed().as_millis() as u64;
                let err = res.as_ref().err().map(ToString::to_string);
                if let Err(m) = state.audit("command", &name, res.is_ok(), json!({ "command": shown(c), "error": err, "duration_ms": ms }))
                {
                    r.ok = false;
                    r.error = Some(m);
                    break;
                }
                match res {
                    Ok(out) => {
                        joined.push_str(&format!("{}{c}\n{out}\n", conn.cli.prompt));
                        outputs.push(out);
                    }
                    Err(e) => {
                        if let CliError::Rejected { output, .. } = &e {
                            outputs.push(output.clone());
                            r.rejected = Some(c.clone());
                        }
                        r.ok = false;
                        r.error = Some(e.to_string());
                        break;
                    }
                }
            }
            r.outputs = Some(outputs);
            r.output = Some(joined);
        }
        Work::Configure { save, .. } => {
            let res = conn.cli.config(&lines, *save, timeout).await;
            let ms = t0.elapsed().as_millis() as u64;
            match res {
                Ok(a) => {
                    r.ok = true;
                    r.applied = Some(a.lines);
                    r.saved = a.saved;
                    r.transcript = Some(a.transcript);
                }
                Err(e) => {
                    if let ConfigError::Line(l) = &e {
                        r.rejected = Some(l.line.clone());
                        r.applied = Some(l.index.min(lines.len()));
                        r.transcript = Some(l.transcript.clone());
                    }
                    r.error = Some(config_message(&e, lines.len()));
                }
            }
            if let Err(m) = state.audit(
                "config",
                &name,
                r.ok,
                json!({ "lines": lines, "applied": r.applied, "saved": r.saved, "error": r.error, "duration_ms": ms }),
            ) {
                r.ok = false;
                r.error = Some(m);
            }
        }
        Work::Backup => {
            let command = profile.backup.clone();
            let res = conn.cli.command(&command, timeout).await;
            let stored = res.map_err(|e| e.to_string()).and_then(|text| {
                let text = profile.stable(&text);
                if text.trim().is_empty() {
                    return Err(format!("`{command}` printed nothing"));
                }
                let store = state.ctx.store.as_ref().ok_or("no data store")?;
                let configs = DeviceConfigs::open(store).map_err(|e| e.to_string())?;
                if state.ctx.dry_run {
                    // Read, compare, store nothing: the version it would become.
                    let latest = configs.latest(&name).map_err(|e| e.to_string())?;
                    let sha = {
                        use sha2::Digest;
                        hex::encode(sha2::Sha256::digest(text.as_bytes()))
                    };
                    let changed = latest.as_ref().is_none_or(|l| l.sha256 != sha);
                    let version = latest.as_ref().map_or(1, |l| if changed { l.version + 1 } else { l.version });
                    let b = crate::cmdb::device_configs::Backup {
                        device: name.clone(),
                        version,
                        taken_at: chrono::Utc::now(),
                        sha256: sha,
                        bytes: text.len(),
                        run: None,
                        user: String::new(),
                        text: String::new(),
                    };
                    return Ok((b, changed));
                }
                configs.put(&name, &text, Some(&state.ctx.run_id), &state.ctx.caller.user).map_err(|e| e.to_string())
            });
            let ms = t0.elapsed().as_millis() as u64;
            match stored {
                Ok((b, changed)) => {
                    r.ok = true;
                    r.planned = state.ctx.dry_run;
                    r.version = Some(b.version);
                    r.changed = Some(changed);
                    r.bytes = Some(b.bytes);
                    r.sha256 = Some(b.sha256);
                }
                Err(m) => r.error = Some(m),
            }
            if let Err(m) = state.audit(
                "backup",
                &name,
                r.ok,
                json!({ "command": command, "version": r.version, "changed": r.changed, "sha256": r.sha256, "planned": state.ctx.dry_run, "error": r.error, "duration_ms": ms }),
            ) {
                r.ok = false;
                r.error = Some(m);
            }
        }
    }
    pending.finish();
    conn.cli.close().await;
    conn.session.close().await;
    r.duration = t0.elapsed().as_secs_f64();
    r
}

async fn fan(state: Arc<RunState>, hosts: Vec<Host>, work: Work, o: Opts) -> Vec<DeviceResult> {
    let call = format!("netdev.{}", work.call());
    let st = Arc::clone(&state);
    let timeout = o.timeout;
    crate::kit::targets::fan_out_hosts(&state.ctx, call, hosts, &o.plan, move |host| {
        let profile = st.profile_of(&host);
        on_device(Arc::clone(&st), host, profile, work.clone(), timeout)
    })
    .await
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    Ok(Arc::new(NetdevModule::new(NetdevSettings::from_config(config)?).map_err(|m| config.invalid(m))?))
}

impl HostModule for NetdevModule {
    fn name(&self) -> &'static str {
        "netdev"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(scope).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant.scope).map_err(|m| LUA.err("permission", m))?;
        let profiles = Arc::clone(&self.profiles);
        let state = Arc::new(RunState::new(Arc::clone(&self.settings), profiles, Arc::clone(ctx), scope));
        let t = lua.create_table()?;

        let st = Arc::clone(&state);
        t.set(
            "open",
            lua.create_function(move |_, device: String| {
                let host = st.reach.one("open", &device)?;
                let profile = st.profile_of(&host).map_err(|m| LUA.err("open", m))?;
                Ok(Device { state: Arc::clone(&st), host, profile, conn: Arc::default() })
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "run",
            lua.create_async_function(move |lua, (selector, commands, opts): (String, Value, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("run", opts, &["timeout", "concurrency", "batch", "canary", "stop_after"], &st.settings)?;
                    let commands = string_list("run", "commands", commands)?;
                    if commands.is_empty() {
                        return Err(LUA.err("run", "commands: give at least one command"));
                    }
                    let hosts = st.reach.select("run", &selector)?;
                    // Every command is checked against every device's profile before anything is sent.
                    for h in &hosts {
                        if let Ok(p) = st.profile_of(h) {
                            for c in &commands {
                                st.check_command("run", &p, c).map_err(|e| {
                                    LUA.err("run", format!("{}: {}", h.name, e.to_string().trim_start_matches("netdev.run: ")))
                                })?;
                            }
                        }
                    }
                    let results = fan(st, hosts, Work::Run(commands), o).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "configure",
            lua.create_async_function(move |lua, (selector, lines, opts): (String, Table, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o =
                        parse_opts("configure", opts, &["timeout", "concurrency", "batch", "canary", "stop_after", "save"], &st.settings)?;
                    // A list of lines for every device, or { profile = { lines } }.
                    let (all, by_profile) = if lines.raw_len() > 0 || lines.is_empty() {
                        (Some(string_list("configure", "lines", Value::Table(lines))?), HashMap::new())
                    } else {
                        let mut m = HashMap::new();
                        for pair in lines.pairs::<String, Value>() {
                            let (k, v) = pair?;
                            if st.profiles.get(&k).is_none() {
                                return Err(LUA.err(
                                    "configure",
                                    format!("lines.{k}: no device profile `{k}` (known: {})", st.profiles.names().join(", ")),
                                ));
                            }
                            let name = st.profiles.get(&k).map(|p| p.name.clone()).unwrap_or(k.clone());
                            m.insert(name, string_list("configure", &format!("lines.{k}"), v)?);
                        }
                        (None, m)
                    };
                    for l in all.iter().chain(by_profile.values()) {
                        st.check_lines("configure", l)?;
                    }
                    let hosts = st.reach.select("configure", &selector)?;
                    let work = Work::Configure { by_profile: Arc::new(by_profile), all, save: o.save };
                    let results = fan(st, hosts, work, o).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "backup",
            lua.create_async_function(move |lua, (selector, opts): (String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    let o = parse_opts("backup", opts, &["timeout", "concurrency", "batch", "stop_after"], &st.settings)?;
                    if !st.scope.read {
                        return Err(
                            LUA.err("backup", "permission denied: backup needs the `read` action in the applet's netdev permission")
                        );
                    }
                    let hosts = st.reach.select("backup", &selector)?;
                    let results = fan(st, hosts, Work::Backup, o).await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "versions",
            lua.create_function(move |lua, device: String| {
                let host = st.reach.one("versions", &device)?;
                let configs = stored(&st, "versions")?;
                let v = configs.versions(&host.name).map_err(|e| LUA.err("versions", e))?;
                crate::kit::to_lua(lua, &v)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "saved",
            lua.create_function(move |_, (device, version): (String, Option<u32>)| {
                let host = st.reach.one("saved", &device)?;
                let configs = stored(&st, "saved")?;
                let b = match version {
                    Some(v) => configs.get(&host.name, v),
                    None => configs.latest(&host.name),
                }
                .map_err(|e| LUA.err("saved", e))?;
                Ok(b.map(|b| b.text))
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "diff",
            lua.create_function(move |_, (device, a, b): (String, Option<u32>, Option<u32>)| {
                let host = st.reach.one("diff", &device)?;
                let configs = stored(&st, "diff")?;
                let versions = configs.versions(&host.name).map_err(|e| LUA.err("diff", e))?;
                let latest = versions
                    .last()
                    .map(|b| b.version)
                    .ok_or_else(|| LUA.err("diff", format!("{device} has no stored configuration (run netdev.backup first)")))?;
                let b = b.unwrap_or(latest);
                let a = a.unwrap_or(b.saturating_sub(1).max(1));
                let text = |v: u32| -> mlua::Result<String> {
                    configs
                        .get(&host.name, v)
                        .map_err(|e| LUA.err("diff", e))?
                        .map(|b| b.text)
                        .ok_or_else(|| LUA.err("diff", format!("{device} has no version {v} (versions 1-{latest})")))
                };
                Ok(unified_diff(&text(a)?, &text(b)?, &format!("{device} v{a}"), &format!("{device} v{b}")))
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set("profiles", lua.create_function(move |_, ()| Ok(st.profiles.names().into_iter().map(str::to_string).collect::<Vec<_>>()))?)?;
        Ok(t)
    }
}

fn stored(st: &RunState, call: &str) -> mlua::Result<DeviceConfigs> {
    if !st.scope.read {
        return Err(LUA.err(call, "permission denied: stored configurations need the `read` action in the applet's netdev permission"));
    }
    let store = st.ctx.store.as_ref().ok_or_else(|| LUA.err(call, "this run has no data store"))?;
    DeviceConfigs::open(store).map_err(|e| LUA.err(call, e))
}
