//! Running an applet: params, limits, the sandboxed state, the result, and the audit records
//! around it. `Runtime::run` is the one entry point every trigger (CLI, HTTP, watch) goes through.

pub mod builtins;
pub mod context;
pub mod convert;
pub mod exchange;
pub mod lazy_async;
pub mod limits;
pub mod modules;
pub mod redact;
pub mod sandbox;
pub mod testing;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use mlua::Value as LuaValue;
use mlua::chunk::ChunkMode;
use serde_json::{Map, Value, json};

use crate::applet::{AppletPackage, params};
use crate::config::{Config, HostLimits};
use crate::error::{Error, Limit};
use crate::store::Store;
use crate::store::audit::AuditEvent;
use context::{Caller, LogLine, LogSink, RunCtx};
use convert::ConvertError;
pub use limits::CancelToken;
use limits::{Guard, RunLimits};
use modules::{HostModule, ModuleSet};
use redact::Redactor;

pub use crate::applet::compile::compile;

/// What to run, for whom.
pub struct RunRequest {
    /// The run's id (a UUIDv7, made by `new`): known before the run starts, so a trigger can
    /// report or cancel it.
    pub run_id: String,
    pub package: Arc<AppletPackage>,
    /// Typed params (`--params-json`, an HTTP body).
    pub params_json: Option<Map<String, Value>>,
    /// `--param k=v` strings, applied on top of `params_json`.
    pub params_pairs: Vec<(String, String)>,
    /// The params already checked against the manifest and the cmdb (by the run service, before
    /// it accepted the run): the run uses them as they are instead of checking `params_json`
    /// and `params_pairs` again.
    pub validated: Option<Map<String, Value>>,
    pub caller: Caller,
    pub dry_run: bool,
    pub log_sink: Option<LogSink>,
    /// Extra values to redact from logs, errors and results.
    pub secrets: Vec<String>,
    /// Environments the run may not publish config to: approvals were skipped because its plan
    /// showed no publish there (`config.publish` refuses them).
    pub unapproved_envs: Vec<String>,
    /// Fakes or a transcript for the run's module calls, or a recorder (see [`context::Exchange`]).
    pub exchange: Option<Arc<dyn context::Exchange>>,
    pub cancel: CancelToken,
    /// Where the package came from, as `run.start` records it.
    pub origin: Origin,
}

/// Runs of one caller refused in a day for carrying a stored secret's value, before all of
/// that caller's runs are refused for the rest of the day.
pub const GUESSES_PER_DAY: usize = 3;

/// Where a run's package came from: the audit log tells a folder run from a registry run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A package handed in whole (tests, embedders).
    #[default]
    Package,
    /// A published version, by the reference the caller gave.
    Registry { reference: String },
    /// An applet folder, by its path.
    Folder { path: String },
    /// An applet folder a remote CLI (`opslet --server`) sent, by the path its caller wrote.
    Sent { path: String },
    /// The applet's folder under the server's `--dev` folder.
    Dev,
}

impl RunRequest {
    pub fn new(package: Arc<AppletPackage>, caller: Caller) -> RunRequest {
        RunRequest {
            run_id: uuid::Uuid::now_v7().to_string(),
            package,
            params_json: None,
            params_pairs: Vec::new(),
            validated: None,
            caller,
            dry_run: false,
            log_sink: None,
            secrets: Vec::new(),
            unapproved_envs: Vec::new(),
            exchange: None,
            cancel: CancelToken::default(),
            origin: Origin::Package,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    Error,
    LimitExceeded,
    InvalidParams,
    InvalidApplet,
    Cancelled,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::LimitExceeded => "limit_exceeded",
            RunStatus::InvalidParams => "invalid_params",
            RunStatus::InvalidApplet => "invalid_applet",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// Everything a trigger needs to report a run.
pub struct RunOutcome {
    pub run_id: String,
    pub applet: String,
    pub hash: String,
    pub status: RunStatus,
    pub result: Result<Value, Error>,
    /// Lua stack traceback of an applet error, when there is one.
    pub traceback: Option<String>,
    pub logs: Vec<LogLine>,
    pub duration: Duration,
    pub cpu: Duration,
    pub limits: RunLimits,
    /// Limits the applet asked for that the host capped.
    pub notes: Vec<String>,
    /// How its calls on many targets went.
    pub targets: context::Targets,
    /// A dry run's plan: each action the modules would have taken (module, action, target,
    /// detail), in order; empty for a run that is not a dry run.
    pub plan: Vec<Value>,
}

/// The store's secrets as (name, value), swapped whole when they change.
type SecretValues = Arc<parking_lot::RwLock<Arc<Vec<(String, String)>>>>;

/// The applet runner: config, host modules and the store.
#[derive(Clone)]
pub struct Runtime {
    host_limits: HostLimits,
    kv_limits: (u64, u64),
    audit_sync: bool,
    modules: ModuleSet,
    store: Option<Store>,
    /// Values of the store's secrets, redacted from every run's output.
    /// The store's secrets as (name, value), read when the runtime is made and again after
    /// a change through it ([`Runtime::reload_secrets`]).
    secrets: SecretValues,
    /// Recent refusals of runs whose params carried a stored secret's value, per caller.
    guesses: Arc<parking_lot::Mutex<HashMap<String, Vec<Instant>>>>,
    /// Where secrets the store does not hold come from (an `opslet worker` asks the control
    /// plane, for the run).
    secret_source: Option<context::SecretSource>,
}

impl Runtime {
    /// A runtime with the host modules of `modules` (the built-in set: `modules::from_config`,
    /// or `modules::runtime` for both at once).
    pub fn new(config: &Config, store: Option<Store>, modules: ModuleSet) -> Result<Runtime, Error> {
        prepare_process();
        Ok(Runtime {
            host_limits: config.host_limits().map_err(Error::Config)?,
            kv_limits: config.kv_limits().map_err(Error::Config)?,
            audit_sync: config.audit.sync,
            modules,
            secrets: Arc::new(parking_lot::RwLock::new(Arc::new(match &store {
                Some(s) => crate::secrets::Secrets::named_values_of(s)?,
                None => Vec::new(),
            }))),
            guesses: Default::default(),
            store,
            secret_source: None,
        })
    }

    /// Reads the store's secrets again (after `secret set` or `rm` through a running server), so
    /// the next runs redact and check the values as they are now.
    pub fn reload_secrets(&self) -> Result<(), Error> {
        if let Some(store) = &self.store {
            *self.secrets.write() = Arc::new(crate::secrets::Secrets::named_values_of(store)?);
        }
        Ok(())
    }

    /// Secrets the store does not hold are asked of `source` (with the run's id and the name).
    /// A runtime like this one (its limits and host modules) on `store`, with none of this one's
    /// secrets: what an applet's test case runs on.
    pub fn for_tests(&self, store: Store) -> Runtime {
        let mut rt = self.clone();
        rt.store = Some(store);
        rt.secrets = Default::default();
        rt.guesses = Default::default();
        rt.secret_source = None;
        rt
    }

    pub fn with_secret_source(mut self, source: context::SecretSource) -> Runtime {
        self.secret_source = Some(source);
        self
    }

    /// Adds or replaces a host module.
    pub fn with_module(mut self, module: Arc<dyn HostModule>) -> Runtime {
        self.modules = self.modules.with(module);
        self
    }

    /// Leaves a host module out (an embedding host that must not offer it, e.g. power control):
    /// applets that use it get "not available in this opslet build".
    pub fn without_module(mut self, name: &str) -> Runtime {
        self.modules = self.modules.without(name);
        self
    }

    /// The limits a run of `manifest` gets on this host (its requests, capped by the maxima).
    pub fn limits_for(&self, manifest: &crate::applet::Manifest) -> RunLimits {
        RunLimits::resolve(&self.host_limits, &manifest.limits).0
    }

    pub fn modules(&self) -> &ModuleSet {
        &self.modules
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Runs an applet to the end. Never panics and never returns early without recording the
    /// run's end in the audit log (when there is a store).
    ///
    /// CPU time is read from the clock of the thread that polls this future, and a CPU-bound
    /// applet does not yield: drive each run on a thread of its own (the CLI's main thread, or a
    /// dedicated run thread), not on a shared async worker.
    pub async fn run(&self, req: RunRequest) -> RunOutcome {
        let t0 = Instant::now();
        let run_id = req.run_id.clone();
        let package = Arc::clone(&req.package);
        let manifest = &package.manifest;
        let applet_id = manifest.id();
        let (limits, notes) = RunLimits::resolve(&self.host_limits, &manifest.limits);
        let params = match &req.validated {
            Some(p) => Ok(p.clone()),
            None => self.check_secret_values(manifest, &req.caller, req.params_json.as_ref(), &req.params_pairs).and_then(|()| {
                params::resolve_then(manifest, req.params_json.as_ref(), &req.params_pairs, |p| self.check_selectors(manifest, p))
            }),
        };

        // Secret params are redacted as given (even when invalid) and as validated.
        let mut secrets = req.secrets.clone();
        secrets.extend(self.secrets.read().iter().map(|(_, v)| v.clone()));
        // Booleans are left out: redacting every "true" would hide nothing and garble the text.
        for (name, _) in manifest.params.iter().filter(|(_, s)| s.secret && s.ty != crate::applet::ParamType::Boolean) {
            collect_strings(req.params_json.as_ref().and_then(|j| j.get(name)), &mut secrets);
            secrets.extend(req.params_pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()));
            if let Ok(p) = &params {
                collect_strings(p.get(name), &mut secrets);
            }
        }
        let redactor = Redactor::new(secrets);
        let audit_params = match &params {
            Ok(p) => Value::Object(params::for_audit(params::redacted(manifest, p))),
            Err(_) => Value::Null,
        };

        let outcome = |status: RunStatus, result: Result<Value, Error>, traceback, logs, cpu| RunOutcome {
            run_id: run_id.clone(),
            applet: applet_id.clone(),
            hash: package.hash.clone(),
            status,
            result,
            traceback,
            logs,
            duration: t0.elapsed(),
            cpu,
            limits: limits.clone(),
            notes: notes.clone(),
            targets: Default::default(),
            plan: Vec::new(),
        };

        // `run.start` goes to disk while the sandbox is built; the applet's code runs only once
        // it is there.
        let mut durable = Durable::Done(Ok(()));
        if let Some(store) = &self.store {
            let start = store.audit().append(AuditEvent {
                kind: "run.start".into(),
                run_id: Some(run_id.clone()),
                actor: Some(req.caller.user.clone()),
                via: Some(req.caller.via.clone()),
                applet: Some(applet_id.clone()),
                status: None,
                data: json!({ "hash": package.hash, "params": audit_params, "dry_run": req.dry_run, "limits": limits, "pid": std::process::id(), "source": req.origin }),
            });
            match start {
                Err(e) => return outcome(RunStatus::Error, Err(unrecorded(&applet_id, &e)), None, Vec::new(), Duration::ZERO),
                Ok(_) if self.audit_sync => durable = Durable::start(store),
                Ok(_) => {}
            }
        }

        let guard = Guard::new(limits.clone(), req.cancel.clone());
        let ctx = Arc::new(RunCtx {
            run_id: run_id.clone(),
            applet: manifest.name.clone(),
            version: manifest.version.to_string(),
            hash: package.hash.clone(),
            caller: req.caller.clone(),
            dry_run: req.dry_run,
            guard: Arc::clone(&guard),
            redactor,
            store: self.store.clone(),
            package: Some(Arc::clone(&package)),
            logs: Default::default(),
            sink: req.log_sink.clone(),
            kv_overlay: Default::default(),
            kv_limits: self.kv_limits,
            targets: Default::default(),
            plan: Default::default(),
            unapproved_envs: req.unapproved_envs.clone(),
            exchange: req.exchange.clone(),
            secret_source: self.secret_source.clone(),
        });

        let executed = match params {
            Err(errs) => durable.wait().await.map(|()| (Err(Error::Params(errs)), None)),
            Ok(p) => match package.check_modules(&self.modules) {
                Err(e) => durable.wait().await.map(|()| (Err(e), None)),
                Ok(()) => self.execute(&ctx, &package, p, &req.cancel, durable).await,
            },
        };
        let (result, traceback) = match executed {
            Ok(r) => r,
            Err(e) => return outcome(RunStatus::Error, Err(unrecorded(&applet_id, &e)), None, Vec::new(), Duration::ZERO),
        };
        let cpu = guard.cpu_used();
        let logs = ctx.take_logs();
        let (result, traceback) = match result {
            Ok(v) => (Ok(ctx.redactor.apply_json(v)), None),
            Err(Error::AppletFailed(m)) => {
                (Err(Error::AppletFailed(ctx.redactor.apply(&m).into_owned())), traceback.map(|t| ctx.redactor.apply(&t).into_owned()))
            }
            Err(Error::Params(errs)) => {
                let errs = errs
                    .into_iter()
                    .map(|e| crate::error::ParamError { param: e.param, message: ctx.redactor.apply(&e.message).into_owned() })
                    .collect();
                (Err(Error::Params(errs)), None)
            }
            Err(e) => (Err(e), traceback),
        };
        let status = match &result {
            Ok(_) => RunStatus::Ok,
            Err(Error::Params(_)) => RunStatus::InvalidParams,
            Err(Error::Applet(_)) => RunStatus::InvalidApplet,
            Err(Error::LimitExceeded { .. }) => RunStatus::LimitExceeded,
            Err(Error::Cancelled) => RunStatus::Cancelled,
            Err(_) => RunStatus::Error,
        };
        let mut out = outcome(status, result, traceback, logs, cpu);
        out.targets = ctx.targets();
        out.plan = ctx.take_plan();
        tracing::debug!(run_id = %run_id, applet = %applet_id, status = status.name(), duration_us = out.duration.as_micros() as u64, cpu_us = cpu.as_micros() as u64, "run ended");

        if let Some(store) = &self.store {
            let mut data =
                json!({ "duration_ms": out.duration.as_millis() as u64, "cpu_ms": cpu.as_millis() as u64, "log_lines": out.logs.len() });
            if out.targets != context::Targets::default() {
                data["targets"] = json!(out.targets);
            }
            match &out.result {
                Ok(v) => {
                    let bytes = serde_json::to_vec(v).unwrap_or_default();
                    data["result_sha256"] = json!(hex::encode(sha2::Sha256::digest(&bytes)));
                    data["result_bytes"] = json!(bytes.len());
                }
                Err(e) => {
                    data["error"] = json!(e.to_string());
                    data["error_kind"] = json!(e.kind());
                    if let Error::LimitExceeded { limit, .. } = e {
                        data["limit"] = json!(limit);
                    }
                }
            }
            let end = store.audit().append(AuditEvent {
                kind: "run.end".into(),
                run_id: Some(run_id.clone()),
                actor: Some(req.caller.user.clone()),
                via: Some(req.caller.via.clone()),
                applet: Some(applet_id.clone()),
                status: Some(status.name().into()),
                data,
            });
            if let Err(e) = end {
                out.notes.push(format!("the run's end could not be recorded in the audit log: {e}"));
            }
        }
        out
    }

    /// Records the end of a run that overran its wall-time limit and could not be stopped (the
    /// CLI's watchdog, about to end the process), if the run has not ended by itself meanwhile.
    /// Returns whether it recorded the end.
    pub fn end_overdue(&self, run_id: &str, applet: &str, caller: &Caller, message: &str) -> bool {
        let Some(store) = &self.store else { return true };
        let ev = AuditEvent {
            kind: "run.end".into(),
            run_id: Some(run_id.to_string()),
            actor: Some(caller.user.clone()),
            via: Some(caller.via.clone()),
            applet: Some(applet.to_string()),
            status: Some(RunStatus::LimitExceeded.name().into()),
            data: json!({ "error": message, "error_kind": "limit_exceeded", "limit": "wall-time", "killed": true }),
        };
        match store.audit().end_if_open(run_id, ev) {
            Ok(Some(_)) => {
                let _ = store.flush();
                true
            }
            _ => false,
        }
    }

    /// Host-selector params must pick at least one host of the cmdb (when the run has a store).
    /// Refuses params that carry a stored secret's value, before anything else looks at them.
    ///
    /// Why: output is redacted of secret values, so an applet that echoes a param would tell
    /// its caller which of their guesses is a secret (`<redacted>` comes back in its place),
    /// and so would an error that repeats a bad value. So any text the caller sends (every
    /// key and value, nested ones too, and `k=v` pairs) that contains a stored secret's value
    /// is refused, unless it is the value of a param declared `secret = true` (always redacted,
    /// match or not). The refusal names the param, not the secret or the part, and is audited
    /// as `secret.in_params` (naming the secret, for auditors). A refusal still answers one
    /// yes/no question, so a caller refused [`GUESSES_PER_DAY`] times in a day has every run
    /// refused until the day is over.
    pub fn check_secret_values(
        &self,
        manifest: &crate::applet::Manifest,
        caller: &Caller,
        json: Option<&Map<String, Value>>,
        pairs: &[(String, String)],
    ) -> Result<(), Vec<crate::error::ParamError>> {
        let stored = Arc::clone(&self.secrets.read());
        if stored.iter().all(|(_, v)| v.len() < 4) {
            return Ok(());
        }
        let window = Duration::from_secs(24 * 3600);
        {
            let mut guesses = self.guesses.lock();
            let recent = guesses.entry(caller.user.clone()).or_default();
            recent.retain(|t| t.elapsed() < window);
            if recent.len() >= GUESSES_PER_DAY {
                return Err(vec![crate::error::ParamError {
                    param: "*".into(),
                    message: format!(
                        "{} had {GUESSES_PER_DAY} runs refused for carrying a stored secret's value within a day; its runs are refused until the day is over",
                        caller.user
                    ),
                }]);
            }
        }
        let declared_secret = |k: &str| manifest.params.get(k).is_some_and(|s| s.secret);
        let mut sent: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in json.into_iter().flatten() {
            let mut texts = vec![k.clone()];
            if !declared_secret(k) {
                collect_all_strings(v, &mut texts);
            }
            sent.push((k.clone(), texts));
        }
        for (k, v) in pairs {
            let mut texts = vec![k.clone()];
            if !declared_secret(k) {
                texts.push(v.clone());
            }
            sent.push((k.clone(), texts));
        }
        let mut errs: Vec<crate::error::ParamError> = Vec::new();
        let mut matched = Vec::new();
        for (param, texts) in &sent {
            if let Some((secret, _)) = stored.iter().find(|(_, v)| v.len() >= 4 && texts.iter().any(|t| t.contains(v.as_str()))) {
                let shown = crate::util::truncate(param, 64).to_string();
                matched.push(serde_json::json!({ "param": shown, "secret": secret }));
                if !errs.iter().any(|e| e.param == shown) {
                    errs.push(crate::error::ParamError {
                        param: shown,
                        message: "carries the value of a stored secret: declare the param `secret = true`, or leave the secret in opslet's store for the modules to use by name".into(),
                    });
                }
            }
        }
        if errs.is_empty() {
            return Ok(());
        }
        self.guesses.lock().entry(caller.user.clone()).or_default().push(Instant::now());
        if let Some(store) = &self.store {
            let data = serde_json::json!({ "applet": manifest.id(), "matched": matched });
            let _ = store.audit().record_change("secret.in_params", &caller.user, &caller.via, None, data);
        }
        Err(errs)
    }

    /// Host selectors must pick hosts from the cmdb.
    pub fn check_selectors(
        &self,
        manifest: &crate::applet::Manifest,
        params: Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<crate::error::ParamError>> {
        let Some(store) = &self.store else { return Ok(params) };
        let mut errs = Vec::new();
        let mut cmdb = None;
        for (name, values) in manifest.host_selectors(&params) {
            for sel in values {
                let db = match &cmdb {
                    Some(db) => db,
                    None => match crate::cmdb::Cmdb::new(store.clone()) {
                        Ok(db) => cmdb.insert(db),
                        Err(e) => {
                            errs.push(crate::error::ParamError { param: name.into(), message: format!("cannot read the cmdb: {e}") });
                            break;
                        }
                    },
                };
                if let Err(e) = db.select(sel) {
                    let message = match e {
                        Error::NotFound(m) | Error::Usage(m) => m,
                        other => other.to_string(),
                    };
                    errs.push(crate::error::ParamError { param: name.into(), message });
                }
            }
        }
        if errs.is_empty() { Ok(params) } else { Err(errs) }
    }

    async fn execute(
        &self,
        ctx: &Arc<RunCtx>,
        package: &Arc<AppletPackage>,
        params: Map<String, Value>,
        cancel: &CancelToken,
        durable: Durable,
    ) -> Result<(Result<Value, Error>, Option<String>), Error> {
        let guard = Arc::clone(&ctx.guard);
        guard.start_cpu_clock();
        // CPU-bound Lua sees cancellation in the interrupt; async waits see it here.
        let watcher = cancel.cancelled();
        let body = AssertUnwindSafe(async {
            let state = sandbox::new_state(ctx, package, &self.modules).map_err(|e| Failure::Host(format!("creating the sandbox: {e}")))?;
            let main = package.bytecode.get(crate::applet::MAIN_FILE).ok_or_else(|| Failure::Host("main.lua is not compiled".into()))?;
            let chunk =
                state.lua.load(main.as_slice()).set_name("=main.lua").set_mode(ChunkMode::Binary).into_function().map_err(Failure::Lua)?;
            let params_t = convert::to_lua(&state.lua, &Value::Object(params), &state.array_mt).map_err(Failure::Lua)?;
            let ctx_t = ctx_table(&state.lua, ctx).map_err(Failure::Lua)?;
            durable.wait().await.map_err(Failure::Unrecorded)?;
            let result: LuaValue = state.launch.call_async((chunk, params_t, ctx_t)).await.map_err(|e| match shape_error(&e) {
                Some(ty) => Failure::Shape(format!(
                    "main.lua must return a function (`return function(params, ctx) ... end`), but it returned {ty}"
                )),
                None => Failure::Lua(e),
            })?;
            match convert::to_json(&result, guard.limits.result_bytes) {
                Ok(v) => Ok(v),
                Err(ConvertError::TooLarge(_)) => {
                    guard.trip(Limit::ResultSize);
                    Err(Failure::Limit)
                }
                Err(ConvertError::Invalid(m)) => Err(Failure::Shape(format!("the result cannot be returned: {m}"))),
            }
        })
        .catch_unwind();
        let timed = tokio::time::timeout(guard.limits.timeout, body);
        let res = tokio::select! {
            r = timed => r,
            _ = watcher => return Ok((Err(Error::Cancelled), None)),
        };
        let failure = match res {
            // A single long library call can finish between two clock checks: charge it now.
            Ok(Ok(Ok(_))) if guard.cpu_used() >= guard.limits.cpu => {
                guard.trip(Limit::Cpu);
                Failure::Limit
            }
            Ok(Ok(Ok(_))) if guard.started.elapsed() >= guard.limits.timeout => {
                guard.trip(Limit::WallTime);
                Failure::Limit
            }
            Ok(Ok(Ok(v))) => return Ok((Ok(v), None)),
            Err(_elapsed) => {
                guard.trip(Limit::WallTime);
                Failure::Limit
            }
            Ok(Err(panic)) => Failure::Host(format!("host code panicked: {}", panic_message(&panic))),
            Ok(Ok(Err(f))) => f,
        };
        if let Some(limit) = guard.tripped() {
            return Ok((Err(Error::LimitExceeded { limit, message: guard.limits.describe(limit) }), None));
        }
        if guard.is_cancelled() {
            return Ok((Err(Error::Cancelled), None));
        }
        Ok(match failure {
            Failure::Lua(e) if sandbox::is_out_of_memory(&e) => {
                (Err(Error::LimitExceeded { limit: Limit::Memory, message: guard.limits.describe(Limit::Memory) }), None)
            }
            Failure::Lua(e) => {
                let (msg, tb) = describe_lua_error(&e);
                (Err(Error::AppletFailed(msg)), tb)
            }
            Failure::Shape(m) => (Err(Error::AppletFailed(m)), None),
            Failure::Host(m) => (Err(Error::Internal(m)), None),
            Failure::Limit => (Err(Error::Internal("a limit was reported but not recorded".into())), None),
            Failure::Unrecorded(e) => return Err(e),
        })
    }
}

use sha2::Digest;

enum Failure {
    Lua(mlua::Error),
    Shape(String),
    Host(String),
    Limit,
    /// `run.start` did not reach the disk: the applet did not run.
    Unrecorded(Error),
}

fn unrecorded(applet_id: &str, e: &Error) -> Error {
    Error::Store(format!("refusing to run {applet_id}: cannot record the run in the audit log: {e}"))
}

/// A sync of the store under way (on the async runtime's blocking pool), or its result.
enum Durable {
    Pending(tokio::task::JoinHandle<Result<(), Error>>),
    Done(Result<(), Error>),
}

impl Durable {
    fn start(store: &Store) -> Durable {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let store = store.clone();
                Durable::Pending(rt.spawn_blocking(move || store.flush()))
            }
            Err(_) => Durable::Done(store.flush()),
        }
    }

    async fn wait(self) -> Result<(), Error> {
        match self {
            Durable::Done(r) => r,
            Durable::Pending(h) => h.await.unwrap_or_else(|e| Err(Error::Internal(format!("syncing the audit log: {e}")))),
        }
    }
}

/// Process-wide settings runs depend on, applied once: Luau's table.move fix, and keeping freed
/// heap. Every run builds and frees a Lua state of a few hundred KiB; glibc would hand that
/// memory back to the kernel after each run and fault it in again on the next, which costs more
/// than the run.
fn prepare_process() {
    static FLAGS: std::sync::Once = std::sync::Once::new();
    // Luau's table.move loops without reaching the interrupt unless this fix is on.
    FLAGS.call_once(|| {
        if mlua::Lua::set_fflag("LuauTableMoveTimeoutFix", true).is_err() {
            tracing::warn!("could not enable LuauTableMoveTimeoutFix; table.move may run past the CPU limit");
        }
    });
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts allocator tuning parameters; it is safe to call at any
            // time, and these values are within the documented ranges.
            unsafe {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
                libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
            }
        });
    }
}

/// The launcher's "main.lua did not return a function" error carries the type it got.
fn shape_error(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => shape_error(cause),
        mlua::Error::RuntimeError(m) => {
            m.strip_prefix(sandbox::MAIN_RETURNED).map(|rest| rest.split_whitespace().next().unwrap_or("nothing").to_string())
        }
        _ => None,
    }
}

fn ctx_table(lua: &mlua::Lua, ctx: &Arc<RunCtx>) -> mlua::Result<mlua::Table> {
    let t = lua.create_table_with_capacity(0, 8)?;
    t.raw_set("run_id", ctx.run_id.as_str())?;
    t.raw_set("applet", ctx.applet.as_str())?;
    t.raw_set("version", ctx.version.as_str())?;
    t.raw_set("applet_id", format!("{}@{}", ctx.applet, ctx.version))?;
    t.raw_set("hash", ctx.hash.as_str())?;
    t.raw_set("caller", ctx.caller.user.as_str())?;
    t.raw_set("via", ctx.caller.via.as_str())?;
    t.raw_set("dry_run", ctx.dry_run)?;
    // The applet dealt with failed targets itself (retried, reported, escalated): the run is
    // not a partial failure because of them.
    let targets = Arc::clone(ctx);
    t.raw_set(
        "failures_handled",
        lua.create_function(move |_, ()| {
            targets.targets.lock().handled = true;
            Ok(())
        })?,
    )?;
    t.set_readonly(true);
    Ok(t)
}

/// Every string in a value, object keys included, and numbers as text.
fn collect_all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                collect_all_strings(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_all_strings(x, out)),
        other => collect_strings(Some(other), out),
    }
}

fn collect_strings(v: Option<&Value>, out: &mut Vec<String>) {
    match v {
        Some(Value::String(s)) => out.push(s.clone()),
        Some(Value::Number(n)) => {
            out.push(n.to_string());
            // 1000.0 prints as 1000 in Lua.
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                out.push((f as i64).to_string());
            }
        }
        Some(Value::Array(a)) => a.iter().for_each(|x| collect_strings(Some(x), out)),
        _ => {}
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Turns an mlua error into the message a user sees (`main.lua:12: boom`) and a traceback.
pub fn describe_lua_error(e: &mlua::Error) -> (String, Option<String>) {
    match e {
        mlua::Error::CallbackError { traceback, cause } => {
            let (msg, inner_tb) = describe_lua_error(cause);
            let tb = inner_tb.or_else(|| Some(traceback.clone()));
            let located = if has_location(&msg) {
                msg
            } else {
                match tb.as_deref().and_then(first_location) {
                    Some(loc) => format!("{loc}: {msg}"),
                    None => msg,
                }
            };
            (located, tb)
        }
        mlua::Error::RuntimeError(m) => match m.split_once("\nstack traceback:") {
            Some((msg, tb)) => (msg.trim().to_string(), Some(format!("stack traceback:{tb}"))),
            None => (m.trim().to_string(), None),
        },
        mlua::Error::WithContext { context, cause } => {
            let (msg, tb) = describe_lua_error(cause);
            (format!("{context}: {msg}"), tb)
        }
        mlua::Error::SyntaxError { message, .. } => (message.clone(), None),
        mlua::Error::ExternalError(err) => (err.to_string(), None),
        other => (other.to_string(), None),
    }
}

fn has_location(msg: &str) -> bool {
    first_location(msg).is_some_and(|loc| msg.starts_with(&loc))
}

/// The first `file.lua:LINE` in a message or traceback.
fn first_location(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if let Some(idx) = line.find(".lua:") {
            let start = line[..idx].rfind(|c: char| c.is_whitespace() || c == '[' || c == '"').map_or(0, |i| i + 1);
            let rest = &line[idx + 5..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() {
                return Some(format!("{}:{digits}", &line[start..idx + 4]));
            }
        }
    }
    None
}
