//! Shared helpers: build packages from inline sources, run them on a throwaway store.
#![allow(dead_code)]

pub mod bmc;
pub mod netdev;
pub mod s3;
pub mod serve;
pub mod sshd;
pub mod zabbix;

use std::collections::BTreeMap;
use std::sync::Arc;

use opslet::applet::AppletPackage;
use opslet::config::Config;
use opslet::runtime::context::Caller;
use opslet::runtime::{RunOutcome, RunRequest, Runtime};
use opslet::store::Store;
use opslet::store::audit::{AuditRecord, Filter};
use serde_json::Value;

pub const MANIFEST: &str = "name = \"t\"\nversion = \"1.0.0\"\n";

/// A package with `main.lua` = `main` and the given manifest (plus extra files).
pub fn package_with(manifest: &str, main: &str, extra: &[(&str, &str)]) -> Arc<AppletPackage> {
    let mut files = BTreeMap::new();
    files.insert("applet.toml".to_string(), manifest.as_bytes().to_vec());
    files.insert("main.lua".to_string(), main.as_bytes().to_vec());
    for (p, s) in extra {
        files.insert(p.to_string(), s.as_bytes().to_vec());
    }
    Arc::new(AppletPackage::from_files(files).expect("test package is valid"))
}

pub fn package(main: &str) -> Arc<AppletPackage> {
    package_with(MANIFEST, main, &[])
}

/// A runtime with the given opslet.toml text and a temporary store.
pub fn runtime(config: &str) -> Runtime {
    let cfg = Config::parse(config, "opslet.toml").expect("test config is valid");
    opslet::modules::runtime(&cfg, Some(Store::temporary().expect("temporary store"))).expect("runtime")
}

/// Small limits so limit tests finish fast.
pub const TIGHT: &str = r#"
[limits]
cpu = "400ms"
timeout = "3s"
memory = "16MiB"
log_lines = 100
log_bytes = "16KiB"
result_bytes = "64KiB"
call_depth = 100
[audit]
sync = false
"#;

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

pub fn run(rt: &Runtime, pkg: Arc<AppletPackage>) -> RunOutcome {
    block_on(rt.run(RunRequest::new(pkg, Caller { user: "tester".into(), via: "test".into() })))
}

pub fn run_req(rt: &Runtime, req: RunRequest) -> RunOutcome {
    block_on(rt.run(req))
}

pub fn req(pkg: Arc<AppletPackage>) -> RunRequest {
    RunRequest::new(pkg, Caller { user: "tester".into(), via: "test".into() })
}

/// Runs `main` with tight limits and returns the outcome.
pub fn run_tight(main: &str) -> RunOutcome {
    run(&runtime(TIGHT), package(main))
}

pub fn err_text(o: &RunOutcome) -> String {
    match &o.result {
        Ok(v) => panic!("expected an error, got result {v}"),
        Err(e) => e.to_string(),
    }
}

/// The run's result, or a panic with its error and logs.
pub fn ok(o: &RunOutcome) -> &Value {
    match &o.result {
        Ok(v) => v,
        Err(e) => panic!("run failed: {e}\nlogs: {:?}", o.logs),
    }
}

/// The record of `host` in a list of per-host records.
pub fn by_host<'a>(v: &'a Value, host: &str) -> &'a Value {
    v.as_array().unwrap().iter().find(|r| r["host"] == host).unwrap_or_else(|| panic!("no record for {host} in {v}"))
}

/// The `action` audit records of a run, in the order they were recorded.
pub fn actions(store: &Store, o: &RunOutcome) -> Vec<AuditRecord> {
    let mut v = store.audit().list(&Filter { run_id: Some(o.run_id.clone()), kind: Some("action".into()), ..Default::default() }).unwrap();
    v.sort_by_key(|a| a.seq);
    v
}
