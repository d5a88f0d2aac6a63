//! The ipmi module against real BMC simulators (tests/common/bmc.rs): OpenIPMI's ipmi_sim over
//! IPMI-over-LAN (RMCP+, cipher suite 3) with ipmitool as the reference client, and
//! sushy-emulator over Redfish (HTTP and HTTPS). Power state and actions, boot device, sensors,
//! the SEL, wrong passwords, a BMC that stops answering, permissions, dry runs, and the
//! hardware-check applet.

mod common;

use common::bmc::{Bmc, NODE2, PASSWORD, USER};
use common::*;
use opslet::cmdb::{Cmdb, Host};
use opslet::runtime::{RunOutcome, Runtime};
use opslet::secrets::Secrets;
use opslet::store::Store;
use serde_json::Value;

struct Lab {
    store: Store,
    rt: Runtime,
}

/// Hosts as (name, tags); logins admin/password (secret `bmc-pass`), and a wrong password for
/// the hosts in group `wrongpw`. `extra` is more config (under [ipmi] first).
/// A host: name, tags, groups.
type HostSpec<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

fn lab(hosts: &[HostSpec], extra: &str) -> Lab {
    let store = Store::temporary().unwrap();
    let cmdb = Cmdb::new(store.clone()).unwrap();
    for (name, tags, groups) in hosts {
        let host = Host {
            name: name.to_string(),
            address: "192.0.2.10".into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        cmdb.put(host, "tester").unwrap();
    }
    let secrets = Secrets::open(store.clone()).unwrap();
    secrets.set("bmc-pass", PASSWORD.as_bytes(), "tester").unwrap();
    secrets.set("wrong-pass", b"not-the-bmc-password", "tester").unwrap();
    let config = format!(
        "[audit]\nsync = false\n[limits]\ntimeout = \"90s\"\n[ipmi]\ntimeout = \"3s\"\n{extra}\n\
         [[ipmi.credentials]]\nhosts = \"group:wrongpw\"\nuser = \"{USER}\"\npassword_secret = \"wrong-pass\"\nallow_http = true\n\
         [[ipmi.credentials]]\nhosts = \"group:plainhttp\"\nuser = \"{USER}\"\npassword_secret = \"bmc-pass\"\n\
         [[ipmi.credentials]]\nhosts = \"group:listed\"\nuser = \"{USER}\"\npassword_secret = \"bmc-pass\"\nbmcs = [\"10.99.*\"]\n\
         [[ipmi.credentials]]\nhosts = \"*\"\nuser = \"{USER}\"\npassword_secret = \"bmc-pass\"\nallow_http = true\n"
    );
    let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    Lab { store, rt }
}

impl Lab {
    fn run(&self, scope: &str, main: &str) -> RunOutcome {
        self.run_with(scope, main, false)
    }

    fn run_with(&self, scope: &str, main: &str, dry_run: bool) -> RunOutcome {
        let manifest = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nipmi = {scope}\n");
        let mut r = req(package_with(&manifest, main, &[]));
        r.dry_run = dry_run;
        run_req(&self.rt, r)
    }
}

const POWER: &str = r#"["read", "power"]"#;
const READ: &str = r#"["read"]"#;

fn ipmi_host(b: &Bmc) -> String {
    format!("127.0.0.1:{}", b.port)
}

#[test]
fn ipmi_over_lan_power_boot_sensors_and_sel_agree_with_ipmitool() {
    let bmc = Bmc::ipmi(false);
    let addr = ipmi_host(&bmc);
    let lab = lab(&[("srv1", &[("bmc", &addr)], &[])], "");
    let o = lab.run(
        POWER,
        r#"return function()
            local out = { first = ipmi.power("srv1") }
            out.off = ipmi.power_off("srv1")
            out.after_off = ipmi.power("srv1")
            out.on = ipmi.power_on("srv1")
            out.after_on = ipmi.power("srv1")
            out.cycle = ipmi.power_cycle("srv1")
            out.reset = ipmi.power_reset("srv1")
            out.boot = ipmi.boot_device("srv1", "pxe", { once = true })
            out.sensors = ipmi.sensors("srv1")
            out.sel = ipmi.sel("srv1")
            return out
        end"#,
    );
    let v = ok(&o);
    assert_eq!(v["first"], "on");
    assert_eq!(v["off"]["before"], "on");
    assert_eq!(v["after_off"], "off");
    assert_eq!(v["on"]["before"], "off");
    assert_eq!(v["after_on"], "on");
    assert_eq!(v["cycle"]["sent"], "chassis control PowerCycle");
    assert_eq!(v["reset"]["sent"], "chassis control HardReset");
    assert_eq!(v["boot"]["device"], "pxe");
    // The simulated chassis saw each action, in order; ipmitool reads the same state.
    let events = bmc.chassis_events();
    let seq: Vec<&str> = events.lines().filter_map(|l| l.split_once(' ').map(|(_, e)| e)).collect();
    assert!(seq.starts_with(&["power=0", "power=1"]), "{events}");
    assert!(events.contains("boot="), "{events}");
    // A cycle turns the power back on after a moment.
    let t0 = std::time::Instant::now();
    while !bmc.ipmitool(&["chassis", "power", "status"]).contains("Chassis Power is on") {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the chassis stayed off after the cycle");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let bootparam = bmc.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(bootparam.contains("Force PXE"), "{bootparam}");
    assert!(!bootparam.contains("Options apply to all future boots"), "once: {bootparam}");
    // Sensors: the same values and thresholds ipmitool shows.
    let sensors = v["sensors"].as_array().unwrap();
    let by = |n: &str| sensors.iter().find(|s| s["name"] == n).unwrap_or_else(|| panic!("no sensor {n}: {sensors:?}"));
    let cpu = by("CPU_Temp");
    assert_eq!(cpu["value"], 48.0);
    assert_eq!(cpu["unit"], "degrees C");
    assert_eq!(cpu["kind"], "temperature");
    assert_eq!(cpu["status"], "ok");
    assert_eq!(cpu["upper_warning"], 80.0);
    assert_eq!(cpu["upper_critical"], 90.0);
    assert_eq!(by("FAN1")["value"], 3200.0);
    assert_eq!(by("FAN1")["unit"], "RPM");
    assert_eq!(by("12V")["value"], 12.0);
    let list = bmc.ipmitool(&["sensor", "list"]);
    for s in sensors {
        let line = list.lines().find(|l| l.split('|').next().unwrap().trim() == s["name"].as_str().unwrap()).unwrap();
        let theirs: f64 = line.split('|').nth(1).unwrap().trim().parse().unwrap();
        assert_eq!(s["value"].as_f64().unwrap(), theirs, "{line}");
    }
    // The SEL: one upper non-critical crossing of CPU_Temp, a warning.
    let sel = v["sel"].as_array().unwrap();
    assert_eq!(sel.len(), 1, "{sel:?}");
    assert_eq!(sel[0]["message"], "Upper Non-critical going high");
    assert_eq!(sel[0]["severity"], "warning");
    assert_eq!(sel[0]["sensor"], "CPU_Temp (Temperature)");
    assert!(bmc.ipmitool(&["sel", "list"]).contains("Upper Non-critical going high"));

    // Every BMC operation is audited; power changes with the state before.
    let acts = actions(&lab.store, &o);
    let names: Vec<&str> = acts.iter().map(|a| a.data["action"].as_str().unwrap()).collect();
    assert_eq!(names, ["power", "power_off", "power", "power_on", "power", "power_cycle", "power_reset", "boot_device", "sensors", "sel"]);
    let off = &acts[1];
    assert_eq!(off.data["detail"]["result"]["before"], "on", "the power state before is recorded");
    assert_eq!(off.data["target"], "srv1");
    assert_eq!(off.data["detail"]["protocol"], "ipmi");
    assert_eq!(off.data["detail"]["bmc"], addr);
}

#[test]
fn power_actions_are_refused_without_the_permission_and_only_planned_in_a_dry_run() {
    let bmc = Bmc::ipmi(false);
    let addr = ipmi_host(&bmc);
    let lab = lab(&[("srv1", &[("bmc", &addr)], &["rack1"]), ("srv2", &[("bmc", &addr)], &["rack2"])], "");
    for call in [
        r#"ipmi.power_off("srv1")"#,
        r#"ipmi.power_cycle("srv1")"#,
        r#"ipmi.power_reset("srv1")"#,
        r#"ipmi.power_on("srv1")"#,
        r#"ipmi.power_shutdown("srv1")"#,
        r#"ipmi.boot_device("srv1", "pxe")"#,
    ] {
        let o = lab.run(READ, &format!("return function() return {call} end"));
        let e = err_text(&o);
        assert!(e.contains("permission denied: the applet's manifest does not grant `power`"), "{call}: {e}");
        assert!(actions(&lab.store, &o).is_empty(), "{call}: refused before any BMC was asked");
    }
    // Hosts outside a table scope are refused; unknown actions and boot devices are named.
    let o =
        lab.run(r#"{ hosts = ["group:rack1"], actions = ["read", "power"] }"#, r#"return function() return ipmi.power_off("srv2") end"#);
    assert!(err_text(&o).contains("srv2 is outside the applet's ipmi hosts (group:rack1)"), "{}", err_text(&o));
    let o = lab.run(r#"["power"]"#, r#"return function() return ipmi.sensors("srv1") end"#);
    assert!(err_text(&o).contains("does not grant `read` (add \"read\" to [permissions] ipmi)"), "{}", err_text(&o));
    let o = lab.run(r#"["read", "reboot"]"#, "return function() end");
    assert!(err_text(&o).contains("unknown action `reboot`"), "{}", err_text(&o));
    let o = lab.run(POWER, r#"return function() return ipmi.boot_device("srv1", "usb-stick") end"#);
    assert!(err_text(&o).contains("`usb-stick` is not a boot device (pxe, disk, cdrom, bios)"), "{}", err_text(&o));
    // A dry run plans the change: audited as planned, the BMC never asked.
    let o = lab.run_with(POWER, r#"return function() return { ipmi.power_off("srv1"), ipmi.boot_device("srv1", "disk") } end"#, true);
    let v = ok(&o);
    assert_eq!(v[0]["planned"], true);
    assert_eq!(v[1]["planned"], true);
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 2);
    assert!(acts.iter().all(|a| a.data["detail"]["planned"] == true));
    assert_eq!(bmc.chassis_events(), "", "nothing reached the chassis");
    assert!(bmc.ipmitool(&["chassis", "power", "status"]).contains("Chassis Power is on"));
}

#[test]
fn a_wrong_password_a_dead_bmc_and_one_that_stops_answering() {
    let bmc = Bmc::ipmi(false);
    let addr = ipmi_host(&bmc);
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lab = lab(
        &[
            ("srv-wrong", &[("bmc", &addr)], &["wrongpw"]),
            ("srv-dead", &[("bmc", &format!("127.0.0.1:{dead}"))], &[]),
            ("srv-ok", &[("bmc", &addr)], &[]),
            ("srv-notag", &[], &[]),
        ],
        "",
    );
    let o = lab.run(READ, r#"return function() return ipmi.power("srv-wrong") end"#);
    let e = err_text(&o);
    assert!(e.contains("ipmi.power: srv-wrong: the BMC refused the login (wrong user or password)"), "{e}");
    assert!(!e.contains("not-the-bmc-password"));
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].status.as_deref(), Some("error"));
    let o = lab.run(READ, r#"return function() return ipmi.power("srv-dead") end"#);
    assert!(err_text(&o).contains("ipmi.power: srv-dead:"), "{}", err_text(&o));
    let o = lab.run(READ, r#"return function() return ipmi.power("srv-notag") end"#);
    assert!(err_text(&o).contains("srv-notag has no `bmc` tag"), "{}", err_text(&o));
    // A BMC that stops answering (SIGSTOP): the call ends within the module's timeout.
    unsafe { libc::kill(bmc.pid(), libc::SIGSTOP) };
    let t0 = std::time::Instant::now();
    let o = lab.run(READ, r#"return function() return ipmi.sensors("srv-ok") end"#);
    let took = t0.elapsed();
    unsafe { libc::kill(bmc.pid(), libc::SIGCONT) };
    let e = err_text(&o);
    assert!(e.contains("ipmi.sensors: srv-ok:") && e.contains("no answer from the BMC"), "{e}");
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    // After it answers again, so does opslet.
    let o = lab.run(READ, r#"return function() return ipmi.power("srv-ok") end"#);
    assert_eq!(ok(&o), "on");
}

#[test]
fn redfish_power_boot_and_sensors_over_http_and_https() {
    let rf = Bmc::redfish(false);
    let url = format!("http://127.0.0.1:{}", rf.port);
    let tls = Bmc::redfish(true);
    let tls_url = format!("https://127.0.0.1:{}", tls.port);
    let ca = tls.ca();
    let lab = lab(
        &[
            ("node1", &[("bmc", &url), ("bmc_system", "node-1")], &[]),
            ("node2", &[("bmc", &url), ("bmc_system", NODE2)], &[]),
            ("node-any", &[("bmc", &url)], &[]),
            ("node-wrong", &[("bmc", &url), ("bmc_system", "node-1")], &["wrongpw"]),
            ("secure1", &[("bmc", &tls_url), ("bmc_system", "node-1")], &["secure"]),
            ("secure-noca", &[("bmc", &tls_url), ("bmc_system", "node-1")], &[]),
        ],
        &format!(
            "[[ipmi.credentials]]\nhosts = \"group:secure\"\nuser = \"{USER}\"\npassword_secret = \"bmc-pass\"\nca_file = \"{}\"\n",
            ca.display()
        ),
    );
    let o = lab.run(
        POWER,
        r#"return function()
            local out = { node1 = ipmi.power("node1"), node2 = ipmi.power("node2") }
            out.on = ipmi.power_on("node1")
            -- The emulator applies power changes 1-11 s after accepting them.
            local t0 = time.now()
            repeat time.sleep(0.5) until ipmi.power("node1") == "on" or time.now() - t0 > 20
            out.after = ipmi.power("node1")
            out.node2_after = ipmi.power("node2")
            out.cycle = ipmi.power_cycle("node1")
            out.boot = ipmi.boot_device("node1", "pxe", { once = true })
            out.sensors = ipmi.sensors("node1")
            out.sel_ok, out.sel_err = pcall(function() return ipmi.sel("node1") end)
            out.sel_err = tostring(out.sel_err)
            out.any_ok, out.any_err = pcall(function() return ipmi.power("node-any") end)
            out.any_err = tostring(out.any_err)
            return out
        end"#,
    );
    let v = ok(&o);
    assert_eq!(v["node1"], "off");
    assert_eq!(v["node2"], "off");
    assert_eq!(v["on"]["sent"], "ResetType On");
    assert_eq!(v["after"], "on");
    assert_eq!(v["node2_after"], "off", "only the named system changed");
    // sushy offers no PowerCycle: the nearest reset type it allows is used.
    assert_eq!(v["cycle"]["sent"], "ResetType ForceRestart");
    let sys: Value = serde_json::from_str(&curl(&format!("{url}/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094"))).unwrap();
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe");
    let thermal: Value =
        serde_json::from_str(&curl(&format!("{url}/redfish/v1/Chassis/15693887-7984-9484-3272-842188918912/Thermal"))).unwrap();
    let sensors = v["sensors"].as_array().unwrap();
    let temps = thermal["Temperatures"].as_array().unwrap();
    let fans = thermal["Fans"].as_array().unwrap();
    assert_eq!(sensors.len(), temps.len() + fans.len(), "{sensors:?}");
    assert_eq!(sensors[0]["value"], temps[0]["ReadingCelsius"]);
    assert_eq!(sensors[0]["upper_critical"], temps[0]["UpperThresholdCritical"]);
    assert_eq!(sensors[0]["kind"], "temperature");
    assert!(sensors.iter().any(|s| s["kind"] == "fan" && s["unit"] == "RPM"));
    assert_eq!(v["sel_ok"], false);
    assert!(v["sel_err"].as_str().unwrap().contains("the BMC offers no log service"), "{}", v["sel_err"]);
    assert!(
        v["any_err"].as_str().unwrap().contains("the BMC manages 2 systems; name one with the host's bmc_system tag"),
        "{}",
        v["any_err"]
    );

    let o = lab.run(READ, r#"return function() return ipmi.power("node-wrong") end"#);
    assert!(err_text(&o).contains("the BMC refused the login as admin (HTTP 401)"), "{}", err_text(&o));
    // HTTPS: trusted through the configured CA, refused without it.
    let o = lab.run(READ, r#"return function() return ipmi.power("secure1") end"#);
    assert_eq!(ok(&o), "off");
    let o = lab.run(READ, r#"return function() return ipmi.power("secure-noca") end"#);
    let e = err_text(&o);
    assert!(e.contains("ipmi.power: secure-noca:") && e.to_lowercase().contains("certificate"), "{e}");
}

fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl").args(["-s", "-u", &format!("{USER}:{PASSWORD}"), url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A "BMC" that answers every request with `body` and counts what it got.
fn evil_bmc(body: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

#[test]
fn the_bmc_password_goes_only_where_it_may() {
    let rf = Bmc::redfish(false);
    let url = format!("http://127.0.0.1:{}", rf.port);
    // A BMC whose links lead elsewhere: the login is not sent there.
    let (evil, _) = evil_bmc(r#"{"Members":[{"@odata.id":"http://127.0.0.1:1/steal"}]}"#);
    let (evil2, _) = evil_bmc(r#"{"Members":[{"@odata.id":"@evil.example/x"}]}"#);
    let lab = lab(
        &[
            ("plain", &[("bmc", &url), ("bmc_system", "node-1")], &["plainhttp"]),
            ("unlisted", &[("bmc", "192.0.2.7:623")], &["listed"]),
            ("evil", &[("bmc", &format!("http://127.0.0.1:{evil}"))], &[]),
            ("evil2", &[("bmc", &format!("http://127.0.0.1:{evil2}"))], &[]),
        ],
        "",
    );
    let o = lab.run(READ, r#"return function() return ipmi.power("plain") end"#);
    assert!(err_text(&o).contains("is plain HTTP, which would send the password readable"), "{}", err_text(&o));
    let o = lab.run(READ, r#"return function() return ipmi.power("unlisted") end"#);
    assert!(
        err_text(&o).contains("its BMC 192.0.2.7 is not one of the BMCs its [[ipmi.credentials]] may log in to (10.99.*)"),
        "{}",
        err_text(&o)
    );
    for h in ["evil", "evil2"] {
        let o = lab.run(READ, &format!("return function() return ipmi.power(\"{h}\") end"));
        let e = err_text(&o);
        assert!(e.contains("leads off the BMC") || e.contains("is not a path on the BMC"), "{h}: {e}");
    }
}

#[test]
fn hardware_check_flags_hot_sensors_and_sel_errors_across_bmcs() {
    let cool = Bmc::ipmi(false);
    let hot = Bmc::ipmi(true);
    let rf = Bmc::redfish(false);
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lab = lab(
        &[
            ("db1", &[("bmc", &ipmi_host(&cool))], &["dc"]),
            ("db2", &[("bmc", &ipmi_host(&hot))], &["dc"]),
            ("web1", &[("bmc", &format!("http://127.0.0.1:{}", rf.port)), ("bmc_system", "node-2")], &["dc"]),
            ("old1", &[("bmc", &format!("127.0.0.1:{dead}"))], &["dc"]),
        ],
        "",
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets/hardware-check");
    let mut r = req(std::sync::Arc::new(opslet::applet::AppletPackage::load_dir(&dir).unwrap()));
    r.params_pairs = vec![("targets".into(), "group:dc".into())];
    let o = run_req(&lab.rt, r);
    let rows = ok(&o).as_array().unwrap().clone();
    let order: Vec<(&str, &str)> = rows.iter().map(|r| (r["host"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(order, [("old1", "unreachable"), ("db2", "critical"), ("db1", "warning"), ("web1", "ok")], "{rows:#?}");
    let db2 = &rows[1];
    let problems = db2["problems"].as_str().unwrap();
    assert!(problems.contains("sensor CPU_Temp is critical (95 degrees C)"), "{problems}");
    assert!(problems.contains("Upper Critical going high"), "{problems}");
    assert_eq!(db2["power"], "on");
    assert_eq!(db2["protocol"], "ipmi");
    assert_eq!(rows[3]["protocol"], "redfish");
    assert_eq!(rows[3]["power"], "off");
    assert!(rows[0]["error"].as_str().is_some());
}
