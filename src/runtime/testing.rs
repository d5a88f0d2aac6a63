//! An applet's own tests (`opslet test`): Lua files beside the applet (`tests/*.lua`, or any
//! `*_test.lua`) that declare cases with `test(name, fn)`. A case declares fakes for module
//! calls (`fake("ssh.run", { host = "web1" }, { stdout = "..." })`) or replays a transcript of a
//! real run (`replay("tests/prod.json")`), runs the applet (`run(params)`: a real run in its
//! sandbox, with its permissions and limits, whose module calls the fakes answer), and checks
//! the result and the calls made (`assert.eq`, `assert.called`, ...). See docs/testing.md.
//!
//! Test code runs in a sandbox of its own, like the applet's, with the same limits.

use std::sync::Arc;
use std::time::Instant;

use mlua::{Function, Lua, Table, Value as LuaValue, chunk::ChunkMode};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use super::context::{Caller, Exchange, RunCtx};
use super::exchange::{Call, Fake, Fakes, Replay, Transcript, diff};
use super::limits::{Guard, RunLimits};
use super::{CancelToken, RunRequest, Runtime, convert, sandbox};
use crate::applet::AppletPackage;

/// How one case went.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// A failed case's log: what its test code printed and its runs logged, in order (the last
    /// [`LOG_KEPT`] lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// Log lines kept for a failed case.
pub const LOG_KEPT: usize = 50;

/// How one test file went: its cases, or why it did not load.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: String,
    pub cases: Vec<CaseResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An applet's tests.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `name@version`.
    pub applet: String,
    pub files: Vec<FileResult>,
    pub passed: usize,
    pub failed: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// Whether a package file is a test file.
pub fn is_test_file(path: &str) -> bool {
    path.ends_with(".lua") && (path.starts_with("tests/") || path.ends_with("_test.lua"))
}

/// The package's test files, in name order.
pub fn test_files(package: &AppletPackage) -> Vec<String> {
    let mut files: Vec<String> = package.bytecode.keys().filter(|p| is_test_file(p)).cloned().collect();
    files.sort();
    files
}

/// What the cases of the file in progress share with the functions the test code calls.
#[derive(Default)]
struct Current {
    /// The exchange of the case in progress: its fakes, or a replay.
    fakes: Option<Arc<Fakes>>,
    replay: Option<Arc<Replay>>,
    /// The runtime the case's runs use: a fresh one per case (its own store: kv and the cmdb
    /// fixture start over).
    runtime: Option<Runtime>,
    /// Log lines of the case's runs (`run()`), as "[level] message".
    log: Vec<String>,
}

/// A test file in a Lua state of its own: the state, its cases (name, function) in order, and
/// the run context its test code logs to.
type Loaded = (Lua, Vec<(String, Function)>, Arc<RunCtx>);

/// Makes the runtime of one test case.
pub type Fresh = Arc<dyn Fn() -> Result<Runtime, crate::error::Error> + Send + Sync>;

impl Current {
    /// The calls no fake or transcript answered.
    fn misses(&self) -> Vec<String> {
        match (&self.replay, &self.fakes) {
            (Some(r), _) => r.misses(),
            (None, Some(f)) => f.misses(),
            _ => Vec::new(),
        }
    }

    fn calls(&self) -> Vec<Call> {
        match (&self.replay, &self.fakes) {
            (Some(r), _) => r.calls(),
            (None, Some(f)) => f.calls(),
            _ => Vec::new(),
        }
    }
}

impl Runtime {
    /// Runs the tests of `package` (its test files, each case with fresh fakes and a runtime
    /// `fresh` makes for it).
    pub async fn test(&self, package: Arc<AppletPackage>, fresh: Fresh) -> Report {
        let mut files = Vec::new();
        for file in test_files(&package) {
            files.push(self.test_file(&package, &file, &fresh).await);
        }
        let passed = files.iter().flat_map(|f| &f.cases).filter(|c| c.ok).count();
        let failed = files.iter().map(|f| f.cases.iter().filter(|c| !c.ok).count() + usize::from(f.error.is_some())).sum();
        Report { applet: package.manifest.id(), files, passed, failed }
    }

    async fn test_file(&self, package: &Arc<AppletPackage>, file: &str, fresh: &Fresh) -> FileResult {
        let mut out = FileResult { file: file.to_string(), cases: Vec::new(), error: None };
        let current: Arc<Mutex<Current>> = Default::default();
        let (limits, _) = RunLimits::resolve(&self.host_limits, &package.manifest.limits);
        // The file is loaded once to learn its cases, then again for each case: every case has
        // a Lua state and limits (CPU, memory, wall time) of its own.
        let names = match self.load_test_file(package, file, &current, &limits) {
            Ok((_, cases, _)) => cases.into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
            Err(e) => {
                out.error = Some(format!("{file}: {}", super::describe_lua_error(&e).0));
                return out;
            }
        };
        if names.is_empty() {
            out.error = Some(format!("{file} declares no test: add test(\"what it checks\", function() ... end)"));
        }
        for (i, name) in names.into_iter().enumerate() {
            let runtime = match fresh() {
                Ok(r) => r,
                Err(e) => {
                    out.cases.push(CaseResult {
                        name,
                        ok: false,
                        error: Some(format!("setting up the case: {e}")),
                        duration_ms: 0,
                        log: Vec::new(),
                    });
                    continue;
                }
            };
            *current.lock() =
                Current { fakes: Some(Arc::new(Fakes::within(limits.memory))), replay: None, runtime: Some(runtime), log: Vec::new() };
            let t0 = Instant::now();
            let loaded = self.load_test_file(package, file, &current, &limits);
            let mut printed = Vec::new();
            let ran = match loaded {
                Err(e) => Ok(Err(e)),
                Ok((lua, cases, ctx)) => {
                    let f = cases.into_iter().nth(i).map(|(_, f)| f);
                    let r = match f {
                        Some(f) => tokio::time::timeout(limits.timeout, f.call_async::<()>(())).await,
                        None => Ok(Err(mlua::Error::runtime("the file declared other cases when loaded again"))),
                    };
                    printed = ctx.take_logs();
                    drop(lua);
                    r
                }
            };
            let misses = current.lock().misses();
            let error = match ran {
                // A call nothing answered fails the case, even when the applet carried on.
                Ok(Ok(())) if !misses.is_empty() => Some(misses.join("\n")),
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(super::describe_lua_error(&e).0),
                Err(_) => Some(format!("did not finish within {}", humantime::format_duration(limits.timeout))),
            };
            let runs_log = std::mem::take(&mut current.lock().log);
            *current.lock() = Current::default();
            // A failed case says what was printed and logged; a passing one stays quiet.
            let mut log: Vec<String> = Vec::new();
            if error.is_some() {
                log.extend(printed.iter().map(|l| format!("[{}] {}", l.level.name(), l.message)));
                log.extend(runs_log);
                let cut = log.len().saturating_sub(LOG_KEPT);
                log.drain(..cut);
            }
            out.cases.push(CaseResult { name, ok: error.is_none(), error, duration_ms: t0.elapsed().as_millis() as u64, log });
        }
        out
    }

    /// A Lua state of its own (with a fresh guard) holding the test file: its cases, in order.
    fn load_test_file(
        &self,
        package: &Arc<AppletPackage>,
        file: &str,
        current: &Arc<Mutex<Current>>,
        limits: &RunLimits,
    ) -> mlua::Result<Loaded> {
        let ctx = Arc::new(RunCtx {
            run_id: format!("test:{file}"),
            applet: package.manifest.name.clone(),
            version: package.manifest.version.to_string(),
            hash: package.hash.clone(),
            caller: Caller { user: "test".into(), via: "test".into() },
            dry_run: false,
            guard: Guard::new(limits.clone(), CancelToken::default()),
            redactor: Default::default(),
            store: None,
            package: Some(Arc::clone(package)),
            logs: Default::default(),
            sink: None,
            kv_overlay: Default::default(),
            kv_limits: self.kv_limits,
            targets: Default::default(),
            plan: Default::default(),
            unapproved_envs: Vec::new(),
            exchange: None,
            secret_source: None,
        });
        let state = sandbox::new_state(&ctx, package, &Default::default())?;
        let env = self.test_env(&state.lua, package, current, &state.array_mt, limits.memory)?;
        let prelude: Table = state.lua.load(PRELUDE).set_name("=opslet-test").set_environment(env.clone()).call(())?;
        let code = package.bytecode.get(file).ok_or_else(|| mlua::Error::runtime(format!("{file} is not compiled")))?;
        state.lua.load(code.as_slice()).set_name(format!("={file}")).set_mode(ChunkMode::Binary).set_environment(env).call::<()>(())?;
        let cases: Vec<(String, Function)> = prelude
            .sequence_values::<Table>()
            .filter_map(Result::ok)
            .filter_map(|c| Some((c.get::<String>("name").ok()?, c.get::<Function>("fn").ok()?)))
            .collect();
        Ok((state.lua, cases, ctx))
    }

    /// The functions test code calls, in its environment (whose other names are the sandbox's).
    fn test_env(
        &self,
        lua: &Lua,
        package: &Arc<AppletPackage>,
        current: &Arc<Mutex<Current>>,
        array_mt: &Table,
        memory: u64,
    ) -> mlua::Result<Table> {
        let env = lua.create_table()?;
        let meta = lua.create_table()?;
        meta.raw_set("__index", lua.globals())?;
        env.set_metatable(Some(meta))?;
        // Values test code hands to the host are bounded by the applet's memory limit.
        let json_of = move |v: &LuaValue| convert::to_json(v, memory).map_err(|e| mlua::Error::runtime(format!("{e:?}")));

        let cur = Arc::clone(current);
        env.raw_set(
            "__fake",
            lua.create_function(move |_, (call, matching, answer): (String, LuaValue, LuaValue)| {
                let matching = match convert::to_json(&matching, memory) {
                    Ok(Value::Object(m)) => m,
                    Ok(Value::Array(a)) if a.is_empty() => Default::default(),
                    Ok(Value::Null) => Default::default(),
                    _ => {
                        return Err(mlua::Error::runtime("fake(call, match, answer): `match` must be a table such as { host = \"web1\" }"));
                    }
                };
                let answer = convert::to_json(&answer, memory).map_err(|e| mlua::Error::runtime(format!("fake: the answer: {e:?}")))?;
                let c = cur.lock();
                let Some(f) = &c.fakes else { return Err(mlua::Error::runtime("fake() is for inside a test(...) case")) };
                f.add(Fake { call, matching, answer }).map_err(mlua::Error::runtime)
            })?,
        )?;

        let (cur, pkg) = (Arc::clone(current), Arc::clone(package));
        env.raw_set(
            "__replay",
            lua.create_function(move |_, path: String| {
                let text = pkg.files.get(&path).ok_or_else(|| {
                    mlua::Error::runtime(format!(
                        "replay: the applet has no file `{path}` (transcripts live in the applet folder, e.g. tests/prod.json)"
                    ))
                })?;
                let t: Transcript = serde_json::from_slice(text)
                    .map_err(|e| mlua::Error::runtime(format!("replay: `{path}` is not a transcript `opslet run --record` wrote: {e}")))?;
                let mut c = cur.lock();
                c.replay = Some(Arc::new(Replay::new(&t)));
                Ok(())
            })?,
        )?;

        let (cur, pkg, mt) = (Arc::clone(current), Arc::clone(package), array_mt.clone());
        env.raw_set(
            "__run",
            lua.create_async_function(move |lua, (params, opts): (LuaValue, Option<Table>)| {
                let (cur, pkg, mt) = (Arc::clone(&cur), Arc::clone(&pkg), mt.clone());
                async move {
                    let Some(rt) = cur.lock().runtime.clone() else {
                        return Err(mlua::Error::runtime("run() is for inside a test(...) case"));
                    };
                    let params = match convert::to_json(&params, memory) {
                        Ok(Value::Object(m)) => m,
                        Ok(Value::Null) => Default::default(),
                        Ok(Value::Array(a)) if a.is_empty() => Default::default(),
                        _ => return Err(mlua::Error::runtime("run(params): params must be a table of the applet's params")),
                    };
                    let exchange: Arc<dyn Exchange> = {
                        let c = cur.lock();
                        match (&c.replay, &c.fakes) {
                            (Some(r), _) => Arc::clone(r) as Arc<dyn Exchange>,
                            (None, Some(f)) => Arc::clone(f) as Arc<dyn Exchange>,
                            _ => return Err(mlua::Error::runtime("run() is for inside a test(...) case")),
                        }
                    };
                    let mut req = RunRequest::new(pkg, Caller { user: "test".into(), via: "test".into() });
                    req.params_json = Some(params);
                    req.exchange = Some(exchange);
                    req.dry_run = opts.as_ref().and_then(|o| o.get::<Option<bool>>("dry_run").ok().flatten()).unwrap_or(false);
                    let outcome = Box::pin(rt.run(req)).await;
                    cur.lock().log.extend(outcome.logs.iter().map(|l| format!("[{}] {}", l.level.name(), l.message)));
                    match outcome.result {
                        Ok(v) => Ok((convert::to_lua(&lua, &v, &mt)?, LuaValue::Nil)),
                        Err(e) => Ok((LuaValue::Nil, LuaValue::String(lua.create_string(e.to_string())?))),
                    }
                }
            })?,
        )?;

        let cur = Arc::clone(current);
        let mt = array_mt.clone();
        env.raw_set(
            "__calls",
            lua.create_function(move |lua, call: Option<String>| {
                let calls: Vec<Value> = cur
                    .lock()
                    .calls()
                    .into_iter()
                    .filter(|c| call.as_deref().is_none_or(|x| x == c.call))
                    .map(|c| json!({ "call": c.call, "target": c.target, "args": c.args }))
                    .collect();
                convert::to_lua(lua, &Value::Array(calls), &mt)
            })?,
        )?;

        let cur = Arc::clone(current);
        env.raw_set(
            "__called",
            lua.create_function(move |_, (call, matching): (String, LuaValue)| {
                let matching = match json_of(&matching)? {
                    Value::Object(m) => m,
                    _ => Default::default(),
                };
                let f = Fake { call: call.clone(), matching, answer: Value::Null };
                Ok(cur.lock().calls().iter().filter(|c| f.matches_call(c)).count())
            })?,
        )?;

        env.raw_set(
            "__diff",
            lua.create_function(move |_, (want, got): (LuaValue, LuaValue)| {
                let (want, got) = (json_of(&want)?, json_of(&got)?);
                let d = diff(&want, &got);
                Ok(if d.is_empty() { None } else { Some(d.join("\n")) })
            })?,
        )?;
        env.raw_set(
            "__show",
            lua.create_function(move |_, v: LuaValue| Ok(json_of(&v).map(|v| v.to_string()).unwrap_or_else(|_| format!("{v:?}"))))?,
        )?;
        Ok(env)
    }
}

/// The test functions, in Lua over the host functions above; returns the cases `test` collects.
const PRELUDE: &str = r#"
local cases = {}
local builtin_assert = assert

function test(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then
    error("test(name, function() ... end): give the case a name and a function", 2)
  end
  table.insert(cases, { name = name, fn = fn })
end

-- fake(call, match, answer), or fake(call, answer) for every call of that kind
function fake(call, match, answer)
  if answer == nil then match, answer = {}, match end
  __fake(call, match, answer)
end

function replay(path) __replay(path) end

-- run(params [, { dry_run = true }]): the applet's result, or nil and its error
function run(params, opts) return __run(params or {}, opts) end

function calls(call) return __calls(call) end

local A = {}
local function fail(msg, prefix) error((prefix and (prefix .. ": ") or "") .. msg, 3) end

function A.eq(got, want, msg)
  local d = __diff(want, got)
  if d then fail("not equal:\n" .. d, msg) end
end
function A.ne(got, other, msg)
  if not __diff(other, got) then fail("both are " .. __show(got), msg) end
end
function A.truthy(v, msg) if not v then fail("expected a true value, got " .. __show(v), msg) end end
function A.falsy(v, msg) if v then fail("expected false or nil, got " .. __show(v), msg) end end
function A.match(s, pattern, msg)
  if type(s) ~= "string" or not string.find(s, pattern) then fail(__show(s) .. " does not match " .. __show(pattern), msg) end
end
function A.contains(s, text, msg)
  if type(s) ~= "string" or not string.find(s, text, 1, true) then fail(__show(s) .. " does not contain " .. __show(text), msg) end
end
-- assert.called(call, match [, times]): a call matching `match` was made (exactly `times` times)
function A.called(call, match, times, msg)
  local n = __called(call, match or {})
  if (times == nil and n == 0) or (times ~= nil and n ~= times) then
    local want = times == nil and "at least once" or (tostring(times) .. " times")
    fail(call .. " " .. __show(match or {}) .. " was called " .. n .. " times, expected " .. want .. "; the calls were:\n" .. __show(__calls()), msg)
  end
end
function A.not_called(call, match, msg)
  local n = __called(call, match or {})
  if n > 0 then fail(call .. " " .. __show(match or {}) .. " was called " .. n .. " times; the calls were:\n" .. __show(__calls()), msg) end
end
-- assert.fails(err, text): run() failed, with an error containing `text`
function A.fails(err, text, msg)
  if err == nil then fail("the run did not fail", msg) end
  if text and not string.find(err, text, 1, true) then fail("the run failed with " .. __show(err) .. ", not with " .. __show(text), msg) end
end

assert = setmetatable(A, { __call = function(_, ...) return builtin_assert(...) end })
return cases
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_files_are_found_by_place_or_name() {
        assert!(is_test_file("tests/restart.lua"));
        assert!(is_test_file("lib/parse_test.lua"));
        assert!(!is_test_file("main.lua"));
        assert!(!is_test_file("tests/fixture.json"));
    }
}
