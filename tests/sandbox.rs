//! Tries to break every sandbox rule: escapes, each hard limit (also behind pcall, xpcall,
//! coroutines and error handlers), state leaking between runs, and host panics.

mod common;

use common::*;
use opslet::error::{Error, Limit};
use opslet::runtime::RunStatus;
use serde_json::json;

fn assert_limit(main: &str, limit: Limit) {
    let o = run_tight(main);
    match &o.result {
        Err(Error::LimitExceeded { limit: got, message }) => {
            assert_eq!(*got, limit, "wrong limit for:\n{main}\nmessage: {message}");
            assert!(message.contains(limit.name()), "message `{message}` does not name the {} limit", limit.name());
        }
        other => panic!("expected the {} limit for:\n{main}\ngot {other:?}", limit.name()),
    }
    assert_eq!(o.status, RunStatus::LimitExceeded);
}

fn ok_value(main: &str) -> serde_json::Value {
    let o = run_tight(main);
    match o.result {
        Ok(v) => v,
        Err(e) => panic!("expected success for:\n{main}\ngot error: {e}"),
    }
}

// ---- escapes -------------------------------------------------------------------------------

#[test]
fn dangerous_globals_are_absent() {
    let v = ok_value(
        r#"return function()
            local names = {"io", "debug", "package", "dofile", "loadfile", "load", "loadstring",
                "getfenv", "setfenv", "newproxy", "require_fs", "ffi", "jit", "module", "gcinfo"}
            local present = {}
            for _, n in ipairs(names) do
                if _G[n] ~= nil and n ~= "require_fs" then table.insert(present, n) end
            end
            local osfns = {}
            for k in pairs(os) do table.insert(osfns, k) end
            table.sort(osfns)
            return { present = json.array(present), os = osfns, dump = string.dump == nil }
        end"#,
    );
    assert_eq!(v["present"], json!([]), "dangerous globals reachable: {v}");
    // Luau's os has only clocks and dates: no execute, exit, getenv, remove, rename, tmpname.
    assert_eq!(v["os"], json!(["clock", "date", "difftime", "time"]));
    assert_eq!(v["dump"], json!(true));
}

#[test]
fn libraries_and_globals_are_read_only() {
    for code in [
        "string.upper = function() return 'pwned' end",
        "table.insert = nil",
        "json.encode = nil",
        "log.info = nil",
        "kv.set = nil",
        "math.pi = 3",
        "rawset(string, 'x', 1)",
        "setmetatable(string, {})",
        "getmetatable('').__index = {}",
    ] {
        let o = run_tight(&format!("return function() {code} return 'modified' end"));
        let e = err_text(&o);
        assert!(e.contains("readonly") || e.contains("read-only") || e.contains("protected"), "`{code}` was not refused: {e}");
    }
}

#[test]
fn require_reaches_only_the_package_and_stdlib() {
    for (name, expect) in [
        ("/etc/passwd", "not a valid module name"),
        ("../secret", "not a valid module name"),
        ("lib/../../x", "not a valid module name"),
        ("os", "not found"),
        ("opslet.nope", "no stdlib module"),
        ("main", "cannot be required"),
    ] {
        let o = run_tight(&format!("return function() return require({name:?}) end"));
        let e = err_text(&o);
        assert!(e.contains(expect), "require({name}) gave `{e}`, expected `{expect}`");
    }
    let pkg = package_with(
        MANIFEST,
        "local u = require 'lib.util'\nreturn function() return u.twice(21) + require('./lib/util').twice(0) end",
        &[("lib/util.lua", "return { twice = function(x) return x * 2 end }")],
    );
    let o = run(&runtime(TIGHT), pkg);
    assert_eq!(o.result.unwrap(), json!(42));
}

#[test]
fn circular_require_is_an_error() {
    let pkg = package_with(
        MANIFEST,
        "return function() return require('a') end",
        &[("a.lua", "return require('b')"), ("b.lua", "return require('a')")],
    );
    let e = err_text(&run(&runtime(TIGHT), pkg));
    assert!(e.contains("circular require"), "{e}");
}

#[test]
fn bytecode_cannot_be_loaded() {
    // No loader exists at all; string.dump is absent so bytecode cannot even be produced.
    let e = err_text(&run_tight("return function() return loadstring('\\27Lua')() end"));
    assert!(e.contains("loadstring") || e.contains("nil"), "{e}");
}

// ---- CPU -----------------------------------------------------------------------------------

#[test]
fn cpu_busy_loop() {
    assert_limit("return function() while true do end end", Limit::Cpu);
}

#[test]
fn cpu_cannot_be_swallowed_by_pcall() {
    assert_limit("return function() while true do pcall(function() while true do end end) end end", Limit::Cpu);
    assert_limit("return function() local ok = pcall(function() while true do end end) return 'survived' end", Limit::Cpu);
}

#[test]
fn cpu_in_xpcall_error_handler() {
    assert_limit("return function() xpcall(function() error('x') end, function() while true do end end) return 'survived' end", Limit::Cpu);
}

#[test]
fn cpu_in_coroutines() {
    assert_limit("return function() coroutine.wrap(function() while true do end end)() end", Limit::Cpu);
    assert_limit(
        "return function() local co = coroutine.create(function() while true do end end) local ok, e = coroutine.resume(co) return 'survived' end",
        Limit::Cpu,
    );
}

#[test]
fn cpu_in_pattern_matching() {
    // Exponential backtracking inside one string.find call.
    assert_limit("return function() return string.find(string.rep('a', 40), '.-.-.-.-.-.-.-.-.-.-.-b') end", Limit::Cpu);
}

#[test]
fn cpu_in_table_sort_comparator_and_recursion_tail_calls() {
    assert_limit(
        "return function() local t = {} for i = 1, 100 do t[i] = i end table.sort(t, function(a, b) while true do end end) end",
        Limit::Cpu,
    );
    // Luau has no proper tail calls, so endless "tail" recursion is a depth problem.
    assert_limit("local function f() return f() end return function() return f() end", Limit::CallDepth);
}

// ---- memory --------------------------------------------------------------------------------

#[test]
fn memory_growth() {
    assert_limit("return function() local t = {} while true do table.insert(t, string.rep('x', 1024) .. #t) end end", Limit::Memory);
}

#[test]
fn memory_cannot_be_swallowed_by_pcall() {
    assert_limit(
        "return function() pcall(function() local t = {} while true do t[#t + 1] = {1, 2, 3} end end) return 'survived' end",
        Limit::Memory,
    );
}

#[test]
fn memory_single_huge_allocation() {
    assert_limit("return function() local s = string.rep('x', 2^30) return #s end", Limit::Memory);
    assert_limit("return function() local ok = pcall(string.rep, 'x', 2^30) return 'survived' end", Limit::Memory);
    assert_limit("return function() return table.create(2^24, 0) end", Limit::Memory);
}

// ---- wall time, depth, output --------------------------------------------------------------

#[test]
fn wall_time_includes_async_waits() {
    assert_limit("return function() time.sleep(30) end", Limit::WallTime);
    assert_limit("return function() pcall(time.sleep, 30) return 'survived' end", Limit::WallTime);
}

#[test]
fn call_depth() {
    assert_limit("local function f(n) return 1 + f(n + 1) end return function() return f(1) end", Limit::CallDepth);
    assert_limit("local function f(n) return 1 + f(n + 1) end return function() pcall(f, 1) return 'survived' end", Limit::CallDepth);
}

#[test]
fn output_floods() {
    assert_limit("return function() for i = 1, 1e6 do log.info('line', i) end end", Limit::Output);
    assert_limit("return function() for i = 1, 1e6 do pcall(print, 'line') end return 'survived' end", Limit::Output);
    assert_limit("return function() log.info(string.rep('x', 60000)) end", Limit::Output);
    assert_limit("return function() return string.rep('x', 200000) end", Limit::ResultSize);
}

#[test]
fn result_must_be_json_shaped() {
    let e = err_text(&run_tight("return function() return { f = function() end } end"));
    assert!(e.contains("function") && e.contains("$.f"), "{e}");
    let e = err_text(&run_tight("return function() local t = {} t.self = t return t end"));
    assert!(e.contains("cycle"), "{e}");
    let e = err_text(&run_tight("return 42"));
    assert!(e.contains("main.lua must return a function"), "{e}");
}

// ---- isolation ------------------------------------------------------------------------------

#[test]
fn nothing_leaks_between_runs() {
    let rt = runtime(TIGHT);
    let first = run(
        &rt,
        package(
            "return function() leaked = 'yes'; shared = shared or {}; shared.x = 1; local ok = pcall(function() _G.other = 1 end) return { leaked, ok } end",
        ),
    );
    assert_eq!(first.result.unwrap(), json!(["yes", false]), "_G must be read-only");
    let second =
        run(&rt, package("return function() return { leaked = leaked == nil, other = _G.other == nil, shared = shared == nil } end"));
    assert_eq!(second.result.unwrap(), json!({ "leaked": true, "other": true, "shared": true }));
}

#[test]
fn ctx_is_read_only_and_complete() {
    let v = ok_value(
        "return function(p, ctx) local ok = pcall(function() ctx.caller = 'root' end) return { ok = ok, caller = ctx.caller, via = ctx.via, id = ctx.applet_id, dry = ctx.dry_run, run = #ctx.run_id } end",
    );
    assert_eq!(v, json!({ "ok": false, "caller": "tester", "via": "test", "id": "t@1.0.0", "dry": false, "run": 36 }));
}

#[test]
fn limit_errors_are_reported_even_when_applet_returns_normally() {
    // A limit tripped inside pcall and then "handled": the run still ends with the limit.
    let o = run_tight(
        "return function() local ok, e = pcall(function() for i = 1, 1e6 do log.info(i) end end) return { ok = ok, e = tostring(e) } end",
    );
    assert!(matches!(o.result, Err(Error::LimitExceeded { limit: Limit::Output, .. })), "{:?}", o.result);
}

#[test]
fn runtime_keeps_working_after_many_limit_hits() {
    let rt = runtime(TIGHT);
    for _ in 0..3 {
        let o = run(&rt, package("return function() local t = {} while true do t[#t+1] = {} end end"));
        assert_eq!(o.status, RunStatus::LimitExceeded);
    }
    let o = run(&rt, package("return function() return 'still alive' end"));
    assert_eq!(o.result.unwrap(), json!("still alive"));
}

#[test]
fn cancellation_stops_a_busy_run() {
    let rt = runtime("[limits]\ncpu = \"30s\"\ntimeout = \"30s\"\n[audit]\nsync = false\n");
    let r = req(package("return function() while true do end end"));
    let cancel = r.cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let o = run_req(&rt, r);
    assert!(matches!(o.result, Err(Error::Cancelled)), "{:?}", o.result);
    assert_eq!(o.status, RunStatus::Cancelled);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

// ---- edge cases found in review --------------------------------------------------------------

#[test]
fn waiting_inside_an_applet_coroutine_is_an_error_not_a_hang() {
    let e = err_text(&run_tight("return function() local co = coroutine.wrap(function() time.sleep(0.01) return 1 end) return co() end"));
    assert!(e.contains("time.sleep: cannot wait inside a coroutine"), "{e}");
    let v = ok_value(
        "return function() local co = coroutine.create(function() time.sleep(0.01) end) local ok, e = coroutine.resume(co) return { ok = ok, e = e } end",
    );
    assert_eq!(v["ok"], json!(false));
    assert!(v["e"].as_str().unwrap().contains("cannot wait inside a coroutine"), "{v}");
}

#[test]
fn waiting_in_module_top_level_is_a_clear_error() {
    let pkg = package_with(MANIFEST, "return function() return require('slow') end", &[("slow.lua", "time.sleep(0.01)\nreturn 1")]);
    let e = err_text(&run(&runtime(TIGHT), pkg));
    assert!(e.contains("time.sleep: cannot wait here"), "{e}");
}

#[test]
fn require_caches_by_file() {
    let pkg = package_with(
        MANIFEST,
        "return function() return require('lib.util') == require('./lib/util') and require('lib/util.lua') == require('lib.util') end",
        &[("lib/util.lua", "return {}")],
    );
    assert_eq!(run(&runtime(TIGHT), pkg).result.unwrap(), json!(true));
}

#[test]
fn globals_metatable_is_locked() {
    let v =
        ok_value("return function() local mt = getmetatable(_G) local ok = pcall(setmetatable, _G, {}) return { mt = mt, ok = ok } end");
    assert_eq!(v, json!({ "mt": false, "ok": false }));
}

#[test]
fn memory_error_through_coroutine_wrap_still_ends_the_run() {
    assert_limit(
        "return function() pcall(coroutine.wrap(function() return string.rep('x', 2^30) end)) return 'survived' end",
        Limit::Memory,
    );
}

#[test]
fn memory_error_inside_a_host_function_ends_the_run() {
    // The memory limit of TIGHT, with CPU time to spare: on a busy machine the CPU limit could
    // otherwise end the run first, and this is about memory.
    let main =
        "return function() local s = '[' .. string.rep('1,', 2000000) .. '1]' local ok, e = pcall(json.decode, s) return 'survived' end";
    let o = run(&runtime(&TIGHT.replace("cpu = \"400ms\"\ntimeout = \"3s\"", "cpu = \"20s\"\ntimeout = \"30s\"")), package(main));
    match &o.result {
        Err(Error::LimitExceeded { limit, message }) => assert_eq!(*limit, Limit::Memory, "{message}"),
        other => panic!("expected the memory limit, got {other:?}"),
    }
}

// ---- attacks on long-running library calls ----------------------------------------------------

#[test]
fn long_literal_searches_are_linear_and_keep_lua_semantics() {
    // Luau's own literal search is quadratic here and never reaches the interrupt.
    let v = ok_value(
        "return function()
            local hay = string.rep('a', 4 * 1024 * 1024)
            local needle = string.rep('a', 2 * 1024 * 1024) .. 'b'
            local long = string.rep('x', 20)
            local s = 'abc' .. long .. 'def' .. long
            local parts = string.split('a' .. long .. 'b' .. long .. long .. 'c', long)
            return {
                plain = string.find(hay, needle, 1, true) == nil,
                literal = string.find(hay, needle) == nil,
                method = hay:find(needle, 1, true) == nil,
                at = { string.find(s, long, 1, true) },
                again = { string.find(s, long, 5, true) },
                from_end = { string.find(s, long, -20, true) },
                past = string.find(s, long, 100, true) == nil,
                parts = parts,
                short = { string.find('hello', 'l', 1, true) },
            }
        end",
    );
    assert_eq!(
        v,
        json!({
            "plain": true, "literal": true, "method": true,
            "at": [4, 23], "again": [27, 46], "from_end": [27, 46], "past": true,
            "parts": ["a", "b", "", "c"], "short": [3, 3],
        })
    );
}

#[test]
fn table_move_over_huge_ranges() {
    // Sparse moves walk only the keys that exist (Luau's LuauTableMoveTimeoutFix, switched on at
    // start); without it these loop 2^31 times with no interrupt.
    assert_eq!(ok_value("return function() table.move({}, 1, 0x7ffffff0, 2, {}) return 'done' end"), json!("done"));
    assert_eq!(
        ok_value("return function() local s, d = {}, {} for i = 1, 100000 do table.move(s, 1, 2^20, 2, d) end return 'done' end"),
        json!("done")
    );
    // Dense moves are linear in the table size; the clocks are checked between calls.
    assert_limit("return function() local s, d = table.create(100000, 1), {} while true do table.move(s, 1, #s, 1, d) end end", Limit::Cpu);
}

#[test]
fn logging_huge_arguments_is_cut_before_it_is_built() {
    let rt = runtime("[limits]\nmemory = \"16MiB\"\n[audit]\nsync = false\n");
    let o = run(
        &rt,
        package(
            "return function() local s = string.rep('x', 4 * 1024 * 1024) local t = {} for i = 1, 200 do t[i] = s end log.info(table.unpack(t)) return 'ok' end",
        ),
    );
    assert_eq!(o.result.unwrap(), json!("ok"));
    assert!(o.logs[0].message.len() <= 64 * 1024 + 32, "line of {} bytes", o.logs[0].message.len());
    assert!(o.logs[0].message.ends_with("[line truncated]"));
}

#[test]
fn pretty_json_of_shared_tables_stays_bounded() {
    let v = ok_value(
        "return function()
            local leaf = {} for i = 1, 1000 do leaf[i] = true end
            local t = leaf for d = 1, 120 do t = { t } end
            local w = {} for i = 1, 2000 do w[i] = t end
            local ok, e = pcall(json.encode, w, { pretty = true })
            return { ok = ok, e = e }
        end",
    );
    assert_eq!(v["ok"], json!(false));
    assert!(v["e"].as_str().unwrap().contains("json.encode: output would exceed"), "{v}");
}

#[test]
fn result_size_counts_escaped_bytes() {
    // 100k control characters are 600k bytes of JSON: over the 64KiB result limit.
    assert_limit("return function() return string.rep('\\1', 100000) end", Limit::ResultSize);
}

#[test]
fn out_of_memory_in_an_unprotected_coroutine_is_the_memory_limit() {
    assert_limit("return function() return coroutine.wrap(function() return string.rep('x', 2^30) end)() end", Limit::Memory);
}

#[test]
fn json_decode_builds_lua_values_directly() {
    let v = ok_value(
        "return function() local t = json.decode('{\"a\":[1,2,{\"b\":null}],\"big\":9007199254740993}') return { n = #t.a, null = t.a[3].b == json.null, big = t.big > 9e15 } end",
    );
    assert_eq!(v, json!({ "n": 3, "null": true, "big": true }));
    // A decode larger than the run's heap fails with the memory limit, not host memory growth.
    assert_limit("return function() local s = '[' .. string.rep('0,', 2000000) .. '0]' return #json.decode(s) end", Limit::Memory);
}
