//! The device session handle as Lua sees it (`netdev.open`): `:command`, `:commands`,
//! `:config`, `:expect`, `:save`, `:prompt`, `:close`, each checked against the permission and
//! audited.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Table, UserData, UserDataMethods, Value};
use serde_json::json;

use super::answer::{Configured, Done, Expected, Output, Prompt};
use super::cli::{Cli, CliError, ConfigError};
use super::options::{parse_opts, string_list};
use super::profile::Profile;
use super::{Conn, LUA, RunState, check_printable};
use crate::cmdb::Host;
use crate::kit::io::on_io;

/// A device session as Lua sees it (`netdev.open`). The connection is made on first use, so a
/// dry run that only plans changes never connects.
pub(super) struct Device {
    pub(super) state: Arc<RunState>,
    pub(super) host: Host,
    pub(super) profile: Arc<Profile>,
    pub(super) conn: Arc<tokio::sync::Mutex<Option<Conn>>>,
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
            let real = async {
                this.with_cli(move |cli| Box::pin(async move { cli.config(&ls, save, timeout).await })).await.and_then(Configured::of)
            };
            let args = json!({ "lines": lines, "save": o.save });
            let r = crate::kit::exchange::call(&this.state.ctx, "netdev.config", &name, args, real)
                .await
                .map_err(|m| ConfigError::Cli(CliError::Protocol(m)))
                .and_then(|a| a.into_result(&lines, o.save));
            pending.finish();
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
            let real = async {
                let (output, matched) =
                    this.with_cli(move |cli| Box::pin(async move { cli.expect(&command, &res, timeout).await })).await?.map_err(|e| e.to_string())?;
                Ok(Expected { output, matched: matched.map(|i| i + 1) })
            };
            let args = json!({ "command": shown, "patterns": pats });
            let r = crate::kit::exchange::call(&this.state.ctx, "netdev.expect", &name, args, real).await.and_then(|e: Expected| {
                match e.matched {
                    Some(i) if i == 0 || i > pats.len() => Err(format!("the answer's matched = {i} is not one of the {} patterns", pats.len())),
                    m => Ok((e.output, m.map(|i| i - 1))),
                }
            });
            pending.finish();
            let ms = t0.elapsed().as_millis() as u64;
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
            let real = async {
                this.with_cli(move |cli| Box::pin(async move { cli.save(timeout).await })).await?.map_err(|e| e.to_string())?;
                Ok(Done {})
            };
            let r = crate::kit::exchange::call(&this.state.ctx, "netdev.save", &name, json!({}), real).await.map(|_: Done| ());
            let _ = this.state.audit("save", &name, r.is_ok(), json!({ "error": r.as_ref().err() }));
            r.map_err(|m| cli_err("save", &name, m))
        });

        methods.add_async_method("prompt", |_, this, ()| async move {
            let real = async { this.with_cli(|cli| Box::pin(async move { cli.prompt.clone() })).await.map(|prompt| Prompt { prompt }) };
            let r = crate::kit::exchange::call(&this.state.ctx, "netdev.prompt", &this.host.name, json!({}), real).await;
            r.map(|p| p.prompt).map_err(|m| cli_err("prompt", &this.host.name, m))
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
pub(super) fn config_message(e: &ConfigError, total: usize) -> String {
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
    let sent = command.clone();
    let real = async { this.with_cli(move |cli| Box::pin(async move { cli.command(&sent, timeout).await })).await.and_then(Output::of) };
    let r = crate::kit::exchange::call(&this.state.ctx, "netdev.command", &name, json!({ "command": shown }), real)
        .await
        .and_then(|o| o.into_result(&command).map_err(|e| e.to_string()));
    pending.finish();
    let ms = t0.elapsed().as_millis() as u64;
    this.state
        .audit("command", &name, r.is_ok(), json!({ "command": shown, "error": r.as_ref().err(), "duration_ms": ms }))
        .map_err(|m| LUA.err("command", m))?;
    r.map_err(|m| cli_err("command", &name, m))
}
