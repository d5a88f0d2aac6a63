//! `RunCtx`: everything host code needs to know about the run it serves.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::limits::Guard;
use super::redact::Redactor;
use crate::error::Limit;
use crate::store::Store;
use crate::store::audit::{AuditEvent, AuditLog};

/// Who started a run, and through which door.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Caller {
    /// User name (OS user for the CLI, account for HTTP).
    pub user: String,
    /// `cli`, `http`, `hook`, `watch`, ...
    pub via: String,
}

impl Caller {
    pub fn cli() -> Caller {
        Caller { user: os_user(), via: "cli".into() }
    }
}

/// The name of the user running this process, from the passwd entry of the effective uid (not
/// from `$USER`, which anyone can set).
pub fn os_user() -> String {
    passwd_name()
}

/// The login name of the effective uid from the passwd database, or `uid:N`.
fn passwd_name() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid returns NULL or a pointer to a static
    // record whose pw_name is a NUL-terminated string, copied out before any other call.
    unsafe {
        let uid = libc::geteuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid:{uid}");
        }
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

/// Severity of an applet log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One line an applet logged.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LogLine {
    pub time: chrono::DateTime<chrono::Utc>,
    pub level: Level,
    pub message: String,
    /// Set on progress events of a module fanning out over hosts; such lines go to the live
    /// sink only (the CLI's progress bar, a job's event stream), not into the run's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// Where a call over many hosts stands.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// The Lua call, like "ssh.run".
    pub call: String,
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
    pub pending: usize,
}

/// Receives log lines as they are written (CLI prints them, HTTP streams them).
pub type LogSink = Arc<dyn Fn(&LogLine) + Send + Sync>;

#[derive(Default)]
pub(crate) struct LogBuf {
    pub lines: Vec<LogLine>,
    pub bytes: u64,
}

/// Per-run state shared by the sandbox and every module.
pub struct RunCtx {
    pub run_id: String,
    pub applet: String,
    pub version: String,
    pub hash: String,
    pub caller: Caller,
    pub dry_run: bool,
    pub guard: Arc<Guard>,
    pub redactor: Redactor,
    pub store: Option<Store>,
    /// The applet's files (scripts and files modules may send to hosts).
    pub package: Option<Arc<crate::applet::AppletPackage>>,
    pub(crate) logs: Mutex<LogBuf>,
    pub(crate) sink: Option<LogSink>,
    /// kv writes of a dry run stay here and are dropped at the end.
    pub(crate) kv_overlay: Mutex<HashMap<String, Option<Vec<u8>>>>,
    pub(crate) kv_limits: (u64, u64),
    /// How the run's calls on many targets went (see [`Targets`]).
    pub(crate) targets: Mutex<Targets>,
    /// A dry run's actions, as [`RunCtx::record_action`] records them (the plan an approver
    /// sees); at most [`MAX_PLAN`] steps, then one that counts the rest.
    pub(crate) plan: Mutex<Vec<serde_json::Value>>,
    /// Environments this run may not publish config to (see `RunRequest::unapproved_envs`).
    pub unapproved_envs: Vec<String>,
    /// Stands in for the outside world (an applet's tests: fakes, a replayed transcript) or
    /// records it (`opslet run --record`); None for a plain run. See [`Exchange`].
    pub exchange: Option<Arc<dyn Exchange>>,
    /// Where secrets the store does not hold come from (see `Runtime::with_secret_source`).
    /// Set on an `opslet worker`, whose store is a cache: state kept in the control plane's
    /// store (kv, config items, device backups) is refused there rather than lost.
    pub secret_source: Option<SecretSource>,
}

impl RunCtx {
    /// The store for state that must outlive the run (kv, config items, device backups): the
    /// run's store, or why there is none to use (no store; a worker's cache).
    pub fn lasting_store(&self, what: &str) -> Result<&Store, String> {
        if self.secret_source.is_some() {
            return Err(format!(
                "{what} lives in the control plane's store, which runs on a worker do not reach yet; run `{}` on the server itself (docs/scale-out.md)",
                self.applet
            ));
        }
        self.store.as_ref().ok_or_else(|| format!("{what}: this run has no data store"))
    }
}

/// Where host modules meet the outside world, for tests and transcripts. Each module calls it
/// (through `kit::exchange::call`) at the one place a call leaves the process: `ssh.run` on a
/// host, a Zabbix API method, ... — after the call's permission and argument checks, so a test
/// refuses what a real run refuses.
pub trait Exchange: Send + Sync {
    /// The answer to `call` on `target` with `args`, instead of making the call: `Some` in a
    /// test (a fake's answer, or an error naming the call no fake or transcript covers), `None`
    /// to make it for real.
    fn answer(&self, call: &str, target: &str, args: &serde_json::Value) -> Option<Result<serde_json::Value, String>>;
    /// A call made for real, with its answer (a recording keeps it).
    fn made(&self, call: &str, target: &str, args: &serde_json::Value, answer: &Result<serde_json::Value, String>);
}

/// Gives a secret's value for a run: `(run id, secret name)` → the value, None when there is
/// no such secret, or why it cannot be had.
pub type SecretSource = Arc<dyn Fn(&str, &str) -> Result<Option<String>, String> + Send + Sync>;

/// The run's calls on many targets (`ssh.run` on a selector, `config.publish`, ...), summed:
/// how many target calls succeeded, failed or were skipped, and whether the applet said it
/// dealt with the failures (`ctx.failures_handled()`). A run that ends well with failed targets
/// it did not handle is a partial or total failure to the CLI (exit codes 9 and 10).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Targets {
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
    /// The calls that had failed or skipped targets, like "ssh.run".
    pub calls: Vec<String>,
    pub handled: bool,
}

impl Targets {
    /// Failed or skipped targets the applet did not say it handled.
    pub fn unhandled(&self) -> usize {
        if self.handled { 0 } else { self.failed + self.skipped }
    }
}

/// Most steps a dry run's plan keeps; further actions are counted in one last step.
pub const MAX_PLAN: usize = 5000;

/// Longest log line kept; the rest is cut (and never built: `log` assembles a line only up to
/// a little past here).
pub const MAX_LINE: usize = 64 * 1024;

impl RunCtx {
    /// Appends a log line, enforcing the output limit. Secrets are redacted first.
    pub fn log(&self, level: Level, message: &str) -> mlua::Result<()> {
        let mut message = self.redactor.apply(message).into_owned();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [line truncated]");
        }
        let line = LogLine { time: chrono::Utc::now(), level, message, progress: None };
        {
            let mut logs = self.logs.lock();
            let limits = &self.guard.limits;
            if logs.lines.len() >= limits.log_lines || logs.bytes + line.message.len() as u64 > limits.log_bytes {
                return Err(self.guard.trip(Limit::Output));
            }
            logs.bytes += line.message.len() as u64;
            logs.lines.push(line.clone());
        }
        if let Some(sink) = &self.sink {
            sink(&line);
        }
        Ok(())
    }

    /// Sends a progress event to the live sink (not stored, not counted against the output limit).
    pub fn progress(&self, progress: Progress) {
        if let Some(sink) = &self.sink {
            let message = format!(
                "{}: {}/{} done (ok {}, failed {}, skipped {}, pending {})",
                progress.call,
                progress.ok + progress.failed + progress.skipped,
                progress.total,
                progress.ok,
                progress.failed,
                progress.skipped,
                progress.pending
            );
            sink(&LogLine { time: chrono::Utc::now(), level: Level::Info, message, progress: Some(progress) });
        }
    }

    /// Adds the end of one call on many targets.
    pub fn record_targets(&self, call: &str, ok: usize, failed: usize, skipped: usize) {
        let mut t = self.targets.lock();
        (t.ok, t.failed, t.skipped) = (t.ok + ok, t.failed + failed, t.skipped + skipped);
        if failed + skipped > 0 && !t.calls.iter().any(|c| c == call) {
            t.calls.push(call.to_string());
        }
    }

    pub fn targets(&self) -> Targets {
        self.targets.lock().clone()
    }

    /// The plan a dry run made (empty unless it is one).
    pub fn take_plan(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.plan.lock())
    }

    pub fn take_logs(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs.lock().lines)
    }

    /// The audit log, when the run has a store.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.store.as_ref().map(Store::audit)
    }

    /// Records one action a module took on a target (a host, a device, an API object).
    pub fn record_action(
        &self,
        module: &str,
        action: &str,
        target: &str,
        ok: bool,
        detail: serde_json::Value,
    ) -> Result<(), crate::error::Error> {
        let detail = self.redactor.apply_json(detail);
        if self.dry_run {
            let mut plan = self.plan.lock();
            match plan.len() {
                n if n < MAX_PLAN => {
                    plan.push(serde_json::json!({ "module": module, "action": action, "target": target, "ok": ok, "detail": detail }))
                }
                n if n == MAX_PLAN => {
                    plan.push(serde_json::json!({ "module": "", "action": "more", "target": "", "ok": true, "detail": { "more": 1 } }))
                }
                _ => {
                    if let Some(more) = plan.last_mut().and_then(|s| s["detail"]["more"].as_u64()) {
                        plan.last_mut().expect("checked")["detail"]["more"] = serde_json::json!(more + 1);
                    }
                }
            }
        }
        let Some(audit) = self.audit() else { return Ok(()) };
        audit
            .append(AuditEvent {
                kind: "action".into(),
                run_id: Some(self.run_id.clone()),
                actor: Some(self.caller.user.clone()),
                via: Some(self.caller.via.clone()),
                applet: Some(format!("{}@{}", self.applet, self.version)),
                status: Some(if ok { "ok" } else { "error" }.into()),
                data: serde_json::json!({ "module": module, "action": action, "target": target, "dry_run": self.dry_run, "detail": detail }),
            })
            .map(|_| ())
    }
}
