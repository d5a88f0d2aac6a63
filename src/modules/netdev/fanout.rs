//! The many-device calls `netdev.run`, `netdev.configure` and `netdev.backup`: the same work on
//! every device a selector picks, connecting to each, with one [`DeviceResult`] per device.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::answer::{self, Configured, Output, Saved};
use super::cli::{CliError, ConfigError};
use super::device::config_message;
use super::options::Opts;
use super::profile::Profile;
use super::{Conn, RunState, backup};
use crate::cmdb::Host;

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

/// What one many-device call does on each device.
#[derive(Clone)]
pub(super) enum Work {
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

/// Does `work` on one device (connecting for it, or only planning in a dry run) and says how it went.
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
    // A real run connects now. A run with an exchange (a test, a recording) connects on the first
    // call the exchange does not answer: a test never connects, nor needs a login.
    let mut conn: Option<Conn> = None;
    if state.ctx.exchange.is_none() {
        match state.connect(&host, Arc::clone(&profile)).await {
            Ok(c) => conn = Some(c),
            Err(m) => {
                pending.finish();
                let _ = state.audit(work.call(), &name, false, json!({ "error": m, "duration_ms": t0.elapsed().as_millis() as u64 }));
                r.error = Some(m);
                r.duration = t0.elapsed().as_secs_f64();
                return r;
            }
        }
    }
    let ctx = Arc::clone(&state.ctx);
    match &work {
        Work::Run(cmds) => {
            let mut outputs = Vec::new();
            let mut joined = String::new();
            r.ok = true;
            for c in cmds {
                let t1 = Instant::now();
                let real = async { Output::of(open(&state, &host, &profile, &mut conn).await?.cli.command(c, timeout).await) };
                let res = crate::kit::exchange::call(&ctx, "netdev.command", &name, json!({ "command": c }), real)
                    .await
                    .map_err(answer::failed)
                    .and_then(|o| o.into_result(c));
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
                        joined.push_str(&format!("{}{c}\n{out}\n", prompt_of(&conn, &name)));
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
            let real = async { Configured::of(open(&state, &host, &profile, &mut conn).await?.cli.config(&lines, *save, timeout).await) };
            let res = crate::kit::exchange::call(&ctx, "netdev.config", &name, json!({ "lines": lines, "save": save }), real)
                .await
                .map_err(|m| ConfigError::Cli(answer::failed(m)))
                .and_then(|a| a.into_result(&lines, *save));
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
            let real = async {
                let text =
                    open(&state, &host, &profile, &mut conn).await?.cli.command(&command, timeout).await.map_err(|e| e.to_string())?;
                Ok(Saved { config: text })
            };
            let res = crate::kit::exchange::call(&ctx, "netdev.backup", &name, json!({ "command": command }), real).await;
            let stored = res.map(|s| s.config).and_then(|text| backup::keep(&state, &name, &profile, &command, &text));
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
    if let Some(mut conn) = conn {
        conn.cli.close().await;
        conn.session.close().await;
    }
    r.duration = t0.elapsed().as_secs_f64();
    r
}

/// The device's connection, made on first use (see `on_device`).
async fn open<'a>(state: &RunState, host: &Host, profile: &Arc<Profile>, conn: &'a mut Option<Conn>) -> Result<&'a mut Conn, String> {
    if conn.is_none() {
        *conn = Some(state.connect(host, Arc::clone(profile)).await?);
    }
    Ok(conn.as_mut().expect("connected above"))
}

/// The device's prompt, for transcripts; a device that a test's fakes answered has a stand-in.
fn prompt_of(conn: &Option<Conn>, name: &str) -> String {
    conn.as_ref().map_or_else(|| format!("{name}#"), |c| c.cli.prompt.clone())
}

/// Does `work` on every device of `hosts`, as the options' plan (concurrency, batches, canary) says.
pub(super) async fn fan(state: Arc<RunState>, hosts: Vec<Host>, work: Work, o: Opts) -> Vec<DeviceResult> {
    let call = format!("netdev.{}", work.call());
    let st = Arc::clone(&state);
    let timeout = o.timeout;
    crate::kit::targets::fan_out_hosts(&state.ctx, call, hosts, &o.plan, move |host| {
        let profile = st.profile_of(&host);
        on_device(Arc::clone(&st), host, profile, work.clone(), timeout)
    })
    .await
}
