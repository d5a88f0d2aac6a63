//! The bundled applets in applets/: each one checks clean and does its job.

mod common;

use std::sync::Arc;

use common::*;
use opslet::applet::AppletPackage;

use serde_json::{Value, json};

fn applet(name: &str) -> Arc<AppletPackage> {
    let pkg = AppletPackage::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(name)).unwrap();
    pkg.check_modules(&opslet::modules::builtin()).unwrap();
    Arc::new(pkg)
}

fn run_with(rt: &opslet::runtime::Runtime, name: &str, params: &[(&str, &str)], dry_run: bool) -> Result<Value, opslet::Error> {
    let mut r = req(applet(name));
    r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r.dry_run = dry_run;
    run_req(rt, r).result
}

#[test]
fn every_bundled_applet_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets");
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert!(names.len() >= 3, "at least three bundled applets: {names:?}");
    for n in names {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(&n);
        let pkg = AppletPackage::load_dir(&dir).unwrap();
        // The virt applets need a build with the `virt` feature (scripts/test.sh has it).
        if cfg!(feature = "virt") || !pkg.manifest.permissions.contains_key("virt") {
            pkg.check_modules(&opslet::modules::builtin()).unwrap();
        }
        assert_eq!(pkg.manifest.name, n, "folder name matches the manifest name");
        assert!(!pkg.manifest.description.is_empty());
    }
}

#[test]
fn change_checklist_builds_steps_and_validates() {
    let rt = runtime("[audit]\nsync = false\n");
    // Host-selector params must pick hosts of the cmdb.
    let cmdb = opslet::cmdb::Cmdb::new(rt.store().unwrap().clone()).unwrap();
    let cache =
        opslet::cmdb::Host { name: "cache1".into(), address: "10.0.0.1".into(), groups: ["cache".into()].into(), ..Default::default() };
    cmdb.put(cache, "tester").unwrap();
    for name in ["web1", "db1"] {
        cmdb.put(opslet::cmdb::Host { name: name.into(), address: "10.0.0.2".into(), ..Default::default() }, "tester").unwrap();
    }
    let v = run_with(
        &rt,
        "change-checklist",
        &[("service", "redis"), ("change", "config"), ("hosts", "group:cache"), ("canary", "2"), ("start", "2026-11-25T22:00:00Z")],
        false,
    )
    .unwrap();
    let steps = v.as_array().unwrap();
    assert_eq!(steps[0]["action"], json!("announce config redis on group:cache, 2026-11-25T22:00:00.000Z to 2026-11-25T23:00:00.000Z"));
    assert!(steps.iter().any(|s| s["phase"] == "canary" && s["action"].as_str().unwrap().contains("first 2 hosts")));
    assert!(steps.iter().any(|s| s["phase"] == "rollback" && s["action"].as_str().unwrap().contains("restore the backed-up redis config")));
    assert_eq!(steps.last().unwrap()["phase"], json!("close"));

    let no_rb =
        run_with(&rt, "change-checklist", &[("service", "x"), ("change", "deploy"), ("hosts", "web*"), ("rollback", "false")], false)
            .unwrap();
    assert!(!no_rb.as_array().unwrap().iter().any(|s| s["phase"] == "rollback"));

    let e = run_with(&rt, "change-checklist", &[("service", "x"), ("change", "reboot"), ("hosts", "db*")], false).unwrap_err().to_string();
    assert!(e.contains("main.lua:") && e.contains("needs at least one approver"), "{e}");
    let e = run_with(&rt, "change-checklist", &[("service", "x"), ("change", "nuke"), ("hosts", "db*"), ("window_minutes", "1000")], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`nuke` is not one of") && e.contains("above the maximum 480"), "{e}");
}

#[test]
fn run_report_counts_runs_in_kv() {
    let rt = runtime("[audit]\nsync = false\n");
    run_with(&rt, "run-report", &[("label", "OPS-1")], false).unwrap();
    run_with(&rt, "run-report", &[("label", "OPS-2")], false).unwrap();
    let v = run_with(&rt, "run-report", &[("label", "OPS-2"), ("show", "2")], false).unwrap();
    assert_eq!(v["total_runs"], json!(3));
    assert_eq!(v["by_label"], json!({ "OPS-1": 1, "OPS-2": 2 }));
    assert_eq!(v["by_caller"], json!({ "tester": 3 }));
    assert_eq!(v["recent"].as_array().unwrap().len(), 2);
    let dry = run_with(&rt, "run-report", &[("reset", "true")], true).unwrap();
    assert_eq!(dry["total_runs"], json!(1), "a dry-run reset sees an empty history");
    let after = run_with(&rt, "run-report", &[], false).unwrap();
    assert_eq!(after["total_runs"], json!(4), "the dry run changed nothing");
}

const LOG: &str = "2024-05-01T10:00:00Z ERROR [api] timeout talking to 10.0.0.5 after 3000 ms
2024-05-01T10:00:01Z INFO [api] request ok
2024-05-01 10:00:02,120 WARN [db] slow query 812 ms
2024-05-01T10:00:03Z ERROR [api] timeout talking to 10.0.0.7 after 3100 ms
May  1 10:00:04 web01 sshd[811]: Failed password for root from 192.0.2.4
DEBUG cache miss for key 42

plain line without a level";

#[test]
fn log_excerpt_parses_records_and_summarizes() {
    let rt = runtime("[audit]\nsync = false\n");
    let recs = run_with(&rt, "log-excerpt", &[("text", LOG)], false).unwrap();
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 6, "debug dropped at min_level=info: {recs:?}");
    assert_eq!(
        recs[0],
        json!({ "line": 1, "time": "2024-05-01T10:00:00Z", "level": "error", "source": "api", "message": "timeout talking to 10.0.0.5 after 3000 ms" })
    );
    assert_eq!(recs[2]["source"], json!("db"));
    assert_eq!(recs[2]["level"], json!("warn"));
    assert_eq!(recs[4]["source"], json!("sshd@web01"));
    assert_eq!(recs[5]["message"], json!("plain line without a level"));

    let s = run_with(&rt, "log-excerpt", &[("text", LOG), ("mode", "summary"), ("min_level", "warn"), ("top", "1")], false).unwrap();
    assert_eq!(s["lines"], json!(4));
    assert_eq!(s["by_level"], json!({ "error": 2, "warn": 2 }));
    assert_eq!(s["top"], json!([{ "message": "timeout talking to <ip> after <n> ms", "count": 2, "level": "error", "first_line": 1 }]));

    let e = run_with(&rt, "log-excerpt", &[], false).unwrap_err().to_string();
    assert!(e.contains("param `text`: required string param is missing"), "{e}");
}
