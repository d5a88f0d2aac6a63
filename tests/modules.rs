//! The host-module framework: injection by permission, scope checks on every call, audit of
//! actions, stubs for undeclared modules, and host panics turned into run errors.

mod common;

use std::sync::Arc;

use common::*;
use mlua::{Lua, Table};
use opslet::error::Error;
use opslet::kit::{Grant, HostModule};
use opslet::runtime::RunStatus;
use opslet::runtime::context::RunCtx;
use opslet::store::audit::Filter;
use serde_json::json;

/// A module with a read action, a write action that is audited, and a function that panics.
struct Demo;

impl HostModule for Demo {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        let ok = scope.as_array().is_some_and(|a| a.iter().all(|v| matches!(v.as_str(), Some("read" | "write"))));
        if ok { Ok(()) } else { Err("expected a list of \"read\" and \"write\"".into()) }
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let t = lua.create_table()?;
        let g = grant.clone();
        t.set(
            "read",
            lua.create_function(move |_, key: String| {
                g.require("read", "read")?;
                Ok(format!("value of {key}"))
            })?,
        )?;
        let (g, c) = (grant.clone(), Arc::clone(ctx));
        t.set(
            "write",
            lua.create_function(move |_, target: String| {
                g.require("write", "write")?;
                c.record_action("demo", "write", &target, true, json!({ "bytes": 3 })).map_err(mlua::Error::external)?;
                Ok(true)
            })?,
        )?;
        t.set("boom", lua.create_function(|_, ()| -> mlua::Result<()> { panic!("demo module bug") })?)?;
        Ok(t)
    }
}

fn demo_runtime() -> opslet::runtime::Runtime {
    runtime(TIGHT).with_module(Arc::new(Demo))
}

fn manifest(perms: &str) -> String {
    format!("{MANIFEST}\n[permissions]\n{perms}\n")
}

#[test]
fn granted_module_works_and_scope_is_checked_per_call() {
    let rt = demo_runtime();
    let o = run(&rt, package_with(&manifest("demo = [\"read\"]"), "return function() return demo.read('x') end", &[]));
    assert_eq!(o.result.unwrap(), json!("value of x"));

    let o = run(&rt, package_with(&manifest("demo = [\"read\"]"), "return function() return demo.write('db1') end", &[]));
    let e = err_text(&o);
    assert!(e.contains("demo.write") && e.contains("permission denied") && e.contains("`write`"), "{e}");
}

#[test]
fn undeclared_module_names_the_missing_permission() {
    let rt = demo_runtime();
    let o = run(&rt, package("return function() return demo.read('x') end"));
    let e = err_text(&o);
    assert!(e.contains("demo.read") && e.contains("does not declare the `demo` permission"), "{e}");
    assert!(e.starts_with("main.lua:1:"), "error should point at the applet line: {e}");
}

#[test]
fn known_but_unbuilt_modules_say_so() {
    let o = run(&demo_runtime().without_module("ipmi"), package("return function() return ipmi.power('x') end"));
    let e = err_text(&o);
    assert!(e.contains("ipmi.power") && e.contains("not available in this opslet build"), "{e}");
}

#[test]
fn bad_scope_and_unknown_module_are_rejected_before_running() {
    let rt = demo_runtime();
    let o = run(&rt, package_with(&manifest("demo = [\"delete\"]"), "return function() return 1 end", &[]));
    assert_eq!(o.status, RunStatus::InvalidApplet);
    let e = err_text(&o);
    assert!(e.contains("applet.toml:5") && e.contains("permissions.demo"), "{e}");

    let o = run(&rt, package_with(&manifest("teleport = true"), "return function() return 1 end", &[]));
    let e = err_text(&o);
    assert!(e.contains("unknown module `teleport`"), "{e}");
}

#[test]
fn actions_are_audited_with_the_run() {
    let rt = demo_runtime();
    let o = run(
        &rt,
        package_with(
            &manifest("demo = [\"read\", \"write\"]"),
            "return function() demo.write('db1') demo.write('db2') return 'done' end",
            &[],
        ),
    );
    assert_eq!(o.result.unwrap(), json!("done"));
    let audit = rt.store().unwrap().audit();
    let recs = audit.list(&Filter { run_id: Some(o.run_id.clone()), ..Filter::default() }).unwrap();
    let kinds: Vec<&str> = recs.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["run.start", "action", "action", "run.end"]);
    assert_eq!(recs[1].data["target"], json!("db1"));
    assert_eq!(recs[2].data["module"], json!("demo"));
    assert!(audit.verify().unwrap().first_bad.is_none());
}

#[test]
fn host_panic_is_a_run_error_even_under_pcall() {
    let rt = demo_runtime();
    for main in ["return function() demo.boom() end", "return function() local ok = pcall(demo.boom) return 'survived' end"] {
        let o = run(&rt, package_with(&manifest("demo = [\"read\"]"), main, &[]));
        match &o.result {
            Err(Error::Internal(m)) => assert!(m.contains("panicked") && m.contains("demo module bug"), "{m}"),
            other => panic!("expected an internal error for {main}, got {other:?}"),
        }
        assert_eq!(o.status, RunStatus::Error);
    }
    // The runtime is still usable.
    let o = run(&rt, package("return function() return 'alive' end"));
    assert_eq!(o.result.unwrap(), json!("alive"));
}
