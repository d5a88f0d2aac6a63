//! Lua assert-scripts for the always-available modules (tests/lua/*.lua). Each script is an
//! applet body that returns "ok" when every assert holds.

mod common;

use common::*;
use serde_json::json;

fn script(name: &str) {
    let path = format!("{}/tests/lua/{name}.lua", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap();
    let o = run(&runtime("[audit]\nsync = false\n"), package(&src));
    match o.result {
        Ok(v) => assert_eq!(v, json!("ok"), "{name}.lua returned {v}"),
        Err(e) => panic!("{name}.lua failed: {e}\n{}", o.traceback.unwrap_or_default()),
    }
}

macro_rules! lua_tests {
    ($($test:ident: $name:literal,)*) => { $( #[test] fn $test() { script($name) } )* };
}

lua_tests! {
    lua_json: "json",
    lua_time: "time",
    lua_kv: "kv",
    lua_stdlib: "stdlib",
}

#[test]
fn kv_persists_per_applet_and_dry_runs_change_nothing() {
    let rt = runtime("[audit]\nsync = false\n");
    let counter = |name: &str| {
        package_with(&format!("name = \"{name}\"\nversion = \"1.0.0\"\n"), "return function() return kv.incr('runs') end", &[])
    };
    assert_eq!(run(&rt, counter("a")).result.unwrap(), json!(1));
    assert_eq!(run(&rt, counter("a")).result.unwrap(), json!(2));
    assert_eq!(run(&rt, counter("b")).result.unwrap(), json!(1), "each applet name has its own store");
    let mut dry = req(counter("a"));
    dry.dry_run = true;
    assert_eq!(run_req(&rt, dry).result.unwrap(), json!(3), "a dry run sees its own writes");
    assert_eq!(run(&rt, counter("a")).result.unwrap(), json!(3), "but they are not stored");
}

#[test]
fn kv_total_size_is_capped() {
    let rt = runtime("[kv]\nmax_bytes = \"10KiB\"\n[audit]\nsync = false\n");
    let o = run(&rt, package("return function() for i = 1, 100 do kv.set('k' .. i, string.rep('x', 500)) end end"));
    let e = err_text(&o);
    assert!(e.contains("kv.set(k") && e.contains("the limit is 10240"), "{e}");
}

#[test]
fn logs_are_captured_in_order_with_levels() {
    let o = run_tight("return function() log.debug('d') log.info('i', 2, true, nil) log.warn({a=1}) log.error('e') print('p') end");
    let lines: Vec<(String, String)> = o.logs.iter().map(|l| (l.level.name().to_string(), l.message.clone())).collect();
    let expect = [("debug", "d"), ("info", "i 2 true nil"), ("warn", "{\"a\":1}"), ("error", "e"), ("info", "p")];
    assert_eq!(lines, expect.map(|(a, b)| (a.to_string(), b.to_string())));
}

#[test]
fn kv_size_accounting_in_dry_runs_counts_each_key_once() {
    let rt = runtime("[kv]\nmax_bytes = \"100B\"\n[audit]\nsync = false\n");
    let pkg = package(
        "return function() kv.set('a', string.rep('x', 60)) kv.set('a', string.rep('y', 60)) kv.delete('a') kv.set('b', string.rep('z', 60)) return 'ok' end",
    );
    assert_eq!(run(&rt, pkg.clone()).result.unwrap(), json!("ok"));
    // The store now holds `b`. A dry run that replaces and deletes it has room for `a`.
    let mut dry = req(package(
        "return function() kv.set('b', string.rep('x', 60)) kv.delete('b') kv.set('a', string.rep('y', 60)) return kv.keys() end",
    ));
    dry.dry_run = true;
    assert_eq!(run_req(&rt, dry).result.unwrap(), json!(["a"]), "the stored `b` is shadowed, deletes free space");
    let real = run(&rt, package("return function() return kv.keys() end"));
    assert_eq!(real.result.unwrap(), json!(["b"]), "the dry run stored nothing");
}
