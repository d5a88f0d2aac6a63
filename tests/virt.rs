//! The virt module against libvirt's test driver (test:///default, inside this process; the
//! library comes from scripts/peers/virt.sh): listing, describing, the power actions, creating
//! a VM from a spec and deleting it, dry runs and permissions; and the CLI's watchdog ending a
//! run stuck in a libvirt call to a server that never answers. Built with `--features virt`.
#![cfg(feature = "virt")]

mod common;

use common::*;
use opslet::runtime::{RunOutcome, Runtime};
use opslet::store::audit::Filter;

fn rt() -> Runtime {
    let cfg = opslet::config::Config::parse("[audit]\nsync = false\n[virt.lab]\nuri = \"test:///default\"\n", "opslet.toml").unwrap();
    opslet::modules::runtime(&cfg, Some(opslet::store::Store::temporary().unwrap())).unwrap()
}

fn applet(rt: &Runtime, scope: &str, main: &str, dry_run: bool) -> RunOutcome {
    let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nvirt = {scope}\n");
    let mut r = req(package_with(&m, main, &[]));
    r.dry_run = dry_run;
    run_req(rt, r)
}

#[test]
fn lists_creates_powers_and_deletes_vms() {
    let rt = rt();
    let main = r#"return function()
        local before = virt.list("lab")
        virt.create("lab", { name = "web-vm1", vcpus = 2, memory = 2048 })
        local created = virt.info("lab", "web-vm1")
        virt.shutdown("lab", "web-vm1")
        local off = virt.list("lab", { state = "shutoff" })
        virt.start("lab", "web-vm1")
        virt.reboot("lab", "web-vm1")
        local on = virt.info("lab", "web-vm1").state
        virt.delete("lab", "web-vm1")
        local after = virt.list("lab")
        return { before = before, created = created, off = off, on = on, after = after }
    end"#;
    let o = applet(&rt, "[\"read\", \"write\"]", main, false);
    let v = ok(&o);
    assert!(v["before"].as_array().unwrap().iter().any(|d| d["name"] == "test" && d["state"] == "running"), "{}", v["before"]);
    assert_eq!(v["created"]["state"], "running");
    assert_eq!((v["created"]["vcpus"].as_u64(), v["created"]["memory_mib"].as_u64()), (Some(2), Some(2048)));
    assert!(v["created"]["xml"].as_str().unwrap().contains("<name>web-vm1</name>"));
    assert!(v["off"].as_array().unwrap().iter().any(|d| d["name"] == "web-vm1"));
    assert_eq!(v["on"], "running");
    assert!(!v["after"].as_array().unwrap().iter().any(|d| d["name"] == "web-vm1"));
    let acts = rt
        .store()
        .unwrap()
        .audit()
        .list(&Filter { run_id: Some(o.run_id.clone()), kind: Some("action".into()), ..Default::default() })
        .unwrap();
    let names: Vec<String> = acts.iter().map(|a| a.data["action"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["create", "shutdown", "start", "reboot", "delete"]);
}

#[test]
fn dry_runs_plan_and_permissions_refuse() {
    let rt = rt();
    let o = applet(
        &rt,
        "[\"read\", \"write\"]",
        r#"return function() return { made = virt.create("lab", { name = "planned-vm" }), list = virt.list("lab") } end"#,
        true,
    );
    let v = ok(&o);
    assert_eq!(v["made"], false);
    assert!(!v["list"].as_array().unwrap().iter().any(|d| d["name"] == "planned-vm"), "a dry run creates nothing");
    for (scope, call, want) in [
        ("[\"read\"]", r#"virt.destroy("lab", "test")"#, "does not grant `write`"),
        ("[\"read\", \"write\"]", r#"virt.create("lab", { name = "x", cpus = 2 })"#, "unknown key `cpus`"),
        ("[\"read\", \"write\"]", r#"virt.create("lab", { name = "test" })"#, "already exists"),
        ("[\"read\"]", r#"virt.info("lab", "nope")"#, "no VM `nope` on lab"),
        ("[\"read\"]", r#"virt.info("lab", "../x")"#, "is not a VM name"),
        ("[\"read\"]", r#"virt.list("other")"#, "no virt connection `other`"),
    ] {
        let o = applet(&rt, scope, &format!("return function() return {call} end"), false);
        assert!(err_text(&o).contains(want), "{call}: {}", err_text(&o));
    }
    let o = applet(&rt, "[\"read\"]", r#"return function() return virt.info("lab", "test").state end"#, false);
    assert_eq!(ok(&o), "running", "the stock domain is untouched");
}

#[test]
fn the_vm_applets_inventory_and_provision() {
    let rt = rt();
    let dir = |n: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(n);
    let run_applet = |name: &str, params: &[(&str, &str)], dry_run: bool| {
        let mut r = req(std::sync::Arc::new(opslet::applet::AppletPackage::load_dir(&dir(name)).unwrap()));
        r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r.dry_run = dry_run;
        run_req(&rt, r)
    };
    let o = run_applet("vm-provision", &[("connection", "lab"), ("name", "db-vm7"), ("vcpus", "4"), ("memory_mib", "4096")], true);
    assert_eq!(ok(&o)["planned"], true);
    assert_eq!(ok(&o)["spec"]["vcpus"], 4);
    let o = run_applet("vm-provision", &[("connection", "lab"), ("name", "db-vm7"), ("vcpus", "4"), ("memory_mib", "4096")], false);
    assert_eq!((ok(&o)["state"].as_str(), ok(&o)["vcpus"].as_u64()), (Some("running"), Some(4)));
    // The test driver gives every connection (so every run) a fresh copy of its stock domain.
    let o = run_applet("vm-inventory", &[("connection", "lab")], false);
    let rows = ok(&o).as_array().unwrap();
    assert!(rows.iter().any(|r| r["name"] == "test" && r["memory_mib"].as_u64() > Some(0) && r["state"] == "running"), "{rows:?}");
    let o = run_applet("vm-inventory", &[("connection", "lab"), ("state", "shutoff")], false);
    assert!(ok(&o).as_array().unwrap().iter().all(|r| r["state"] == "shutoff"));
}

/// A host call that never returns (a libvirt server that accepts the connection and never
/// answers: the call blocks inside libvirt, past every limit check) cannot hold `opslet run`
/// forever: the watchdog records the run's end and ends the process 5 s after the wall-time
/// limit, with the limit's exit code.
#[test]
fn the_watchdog_ends_a_cli_run_stuck_in_a_host_call() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, never writing a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let applet = dir.path().join("stuck");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(
        applet.join("applet.toml"),
        "name = \"stuck\"\nversion = \"1.0.0\"\n[permissions]\nvirt = [\"read\"]\n[limits]\ntimeout = \"1s\"\n",
    )
    .unwrap();
    std::fs::write(applet.join("main.lua"), "return function() return virt.list('hung') end").unwrap();
    let config = dir.path().join("opslet.toml");
    std::fs::write(&config, format!("[virt.hung]\nuri = \"qemu+tcp://127.0.0.1:{port}/system\"\n")).unwrap();
    let data = dir.path().join("data");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["run", applet.to_str().unwrap()])
        .env("OPSLET_DATA_DIR", &data)
        .env("OPSLET_CONFIG", &config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("did not stop within 5s of its wall-time limit; opslet ended the process"), "{err}");
    // Not before the limit and its grace were up.
    assert!(started.elapsed() >= std::time::Duration::from_secs(6), "{:?}", started.elapsed());
    let audit = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["audit", "list", "--format", "json"])
        .env("OPSLET_DATA_DIR", &data)
        .output()
        .unwrap();
    let records: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let end = records.as_array().unwrap().iter().find(|r| r["kind"] == "run.end").expect("the run's end is recorded");
    assert_eq!(end["status"], "limit_exceeded", "{end}");
    assert_eq!(end["data"]["killed"], true, "{end}");
    assert_eq!(end["data"]["limit"], "wall-time", "{end}");
}
