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
//! permission, `options` the Lua option tables, `device` the session handle of `netdev.open`,
//! `fanout` the many-device calls, `backup` the stored configurations, `answer` a device's answers
//! as tests fake them and transcripts keep them; this file is the Lua boundary and the per-run state.

mod answer;
mod backup;
pub mod cli;
mod device;
mod fanout;
mod options;
pub mod profile;
pub mod scope;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Lua, Table, Value};
use serde_json::json;

use crate::cmdb::Host;
use crate::cmdb::device_configs::unified_diff;
use crate::config::Config;
use crate::error::Error;
use crate::kit::ssh::client::Session;
use crate::kit::targets::Targets;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use cli::Cli;
use device::Device;
use fanout::{Work, fan};
use options::{parse_opts, string_list};
use profile::{Profile, Profiles};
use scope::Scope;
use settings::NetdevSettings;

pub use fanout::DeviceResult;

/// The cmdb tag naming a device's profile.
pub const PLATFORM_TAG: &str = "platform";

pub struct NetdevModule {
    settings: Arc<NetdevSettings>,
    /// The device profiles, read on first use (compiling their patterns is the costly part of
    /// setting opslet up, and most runs never touch a device).
    profiles: std::sync::OnceLock<Arc<Profiles>>,
}

impl NetdevModule {
    /// The module with its settings. The device profiles of a `profiles_dir` are read now, so a
    /// broken one is an error naming its file and key before anything runs; the built-in ones
    /// (compiled in, checked by the tests) are read on first use.
    pub fn new(settings: NetdevSettings) -> Result<NetdevModule, String> {
        let profiles = std::sync::OnceLock::new();
        if settings.profiles_dir.is_some() {
            let loaded = Profiles::load(settings.profiles_dir.as_deref()).map_err(|m| format!("netdev.profiles_dir: {m}"))?;
            let _ = profiles.set(Arc::new(loaded));
        }
        Ok(NetdevModule { settings: Arc::new(settings), profiles })
    }

    fn profiles(&self) -> Arc<Profiles> {
        let p = self.profiles.get_or_init(|| Arc::new(Profiles::load(None).expect("the built-in device profiles parse (tested)")));
        Arc::clone(p)
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
        let profiles = self.profiles();
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
                let configs = backup::stored(&st, "versions")?;
                let v = configs.versions(&host.name).map_err(|e| LUA.err("versions", e))?;
                crate::kit::to_lua(lua, &v)
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "saved",
            lua.create_function(move |_, (device, version): (String, Option<u32>)| {
                let host = st.reach.one("saved", &device)?;
                let configs = backup::stored(&st, "saved")?;
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
                let configs = backup::stored(&st, "diff")?;
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
