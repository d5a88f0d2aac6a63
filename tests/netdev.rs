//! The netdev module against real device simulators (tests/common/netdev.rs): fake-switches (a
//! stateful Cisco IOS CLI) and FakeNOS (Huawei VRP, H3C Comware, Cisco IOS, Junos), with netmiko
//! as the reference client. Covers prompts and modes, paging, configuration changes and a
//! rejected line, backups with versions and diffs, many devices at once, a wrong password, a
//! device that stops answering, permissions and dry runs.

mod common;

use common::netdev::{PASSWORD, Sim, USER, netmiko};
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

/// Devices as (name, port, platform, groups); logins admin/admin for all (secret `sw-pass`),
/// `wrong-pass` for the devices in group `wrongpw`.
fn lab(devices: &[(&str, u16, &str, &[&str])], extra_config: &str) -> Lab {
    let store = Store::temporary().unwrap();
    let cmdb = Cmdb::new(store.clone()).unwrap();
    for (name, port, platform, groups) in devices {
        let host = Host {
            name: name.to_string(),
            address: "127.0.0.1".into(),
            port: *port,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            tags: [("platform".to_string(), platform.to_string())].into(),
            ..Default::default()
        };
        cmdb.put(host, "tester").unwrap();
    }
    let secrets = Secrets::open(store.clone()).unwrap();
    secrets.set("sw-pass", PASSWORD.as_bytes(), "tester").unwrap();
    secrets.set("wrong-pass", b"not-the-password", "tester").unwrap();
    let config = format!(
        "[audit]\nsync = false\n[limits]\ntimeout = \"60s\"\n[netdev]\nconnect_timeout = \"20s\"\nfirst_contact = \"accept-and-pin\"\n\
         [[netdev.credentials]]\ndevices = \"group:wrongpw\"\nuser = \"{USER}\"\npassword_secret = \"wrong-pass\"\n\
         [[netdev.credentials]]\ndevices = \"*\"\nuser = \"{USER}\"\npassword_secret = \"sw-pass\"\n{extra_config}"
    );
    let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    Lab { store, rt }
}

const ALL: &str = r#"{ devices = ["*"], actions = ["read", "exec", "config"] }"#;
const READ: &str = r#"{ devices = ["*"], actions = ["read"] }"#;

impl Lab {
    fn run(&self, scope: &str, main: &str) -> RunOutcome {
        self.run_with(scope, main, false)
    }

    fn run_with(&self, scope: &str, main: &str, dry_run: bool) -> RunOutcome {
        let manifest = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nnetdev = {scope}\n");
        let mut r = req(package_with(&manifest, main, &[]));
        r.dry_run = dry_run;
        run_req(&self.rt, r)
    }
}

fn h3c_after_check(h3c: &Value) -> bool {
    h3c["after"].as_str().unwrap().contains("vlan 42\n name opslet-42") && h3c["applied"] == 3
}

fn run_bundled(lab: &Lab, name: &str, params: &[(&str, &str)], dry_run: bool) -> RunOutcome {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(name);
    let mut r = req(std::sync::Arc::new(opslet::applet::AppletPackage::load_dir(&dir).unwrap()));
    r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r.dry_run = dry_run;
    run_req(&lab.rt, r)
}

/// Lines of `s` with trailing blanks removed, blank lines dropped (what two clients may differ in).
fn norm(s: &str) -> Vec<String> {
    s.lines().map(|l| l.trim_end().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn cisco_commands_match_netmiko_and_config_changes_stick() {
    let sw = Sim::cisco("sw-core1");
    let lab = lab(&[("sw-core1", sw.port, "cisco_ios", &["switches"])], "");
    // netmiko's view of the device before the change.
    let reference = netmiko("cisco_ios", sw.port, &["show version", "show vlan brief"]);
    let o = lab.run(
        ALL,
        r#"return function()
            local s = netdev.open("sw-core1")
            local out = {
                profile = s.profile,
                version = s:command("show version"),
                prompt = s:prompt(),
                several = s:commands({ "show vlan brief", "show running-config" }),
            }
            out.config = s:config({ "vlan 42", "name opslet-users", "exit" }, { save = true })
            out.after = s:command("show running-config")
            out.prompt_after = s:prompt()
            s:close()
            return out
        end"#,
    );
    let v = ok(&o);
    assert_eq!(v["profile"], "cisco_ios");
    assert_eq!(v["prompt"], "sw-core1#", "enable reached privileged mode");
    assert_eq!(reference["prompt"], "sw-core1#");
    assert_eq!(norm(v["version"].as_str().unwrap()), norm(reference["outputs"]["show version"].as_str().unwrap()));
    assert_eq!(norm(v["several"][0].as_str().unwrap()), norm(reference["outputs"]["show vlan brief"].as_str().unwrap()));
    assert!(v["version"].as_str().unwrap().contains("Cisco IOS Software"), "{}", v["version"]);
    // The echo and the prompt are not part of the output.
    assert!(!v["version"].as_str().unwrap().contains("show version"));
    assert!(!v["version"].as_str().unwrap().contains("sw-core1#"));
    assert_eq!(v["config"]["applied"], 3);
    assert_eq!(v["config"]["saved"], true);
    assert!(v["config"]["transcript"].as_str().unwrap().contains("sw-core1(config)#vlan 42"), "{}", v["config"]["transcript"]);
    assert!(!v["several"][1].as_str().unwrap().contains("vlan 42"));
    let after = v["after"].as_str().unwrap();
    assert!(after.contains("vlan 42") && after.contains("name opslet-users"), "{after}");
    assert_eq!(v["prompt_after"], "sw-core1#", "configuration mode was left");
    // netmiko, a second client, sees the change on the device.
    let seen = netmiko("cisco_ios", sw.port, &["show running-config"]);
    assert!(seen["outputs"]["show running-config"].as_str().unwrap().contains("name opslet-users"));

    // Every command and the change are in the audit log.
    let acts = actions(&lab.store, &o);
    let cmds: Vec<&str> =
        acts.iter().filter(|a| a.data["action"] == "command").map(|a| a.data["detail"]["command"].as_str().unwrap()).collect();
    assert_eq!(cmds, ["show version", "show vlan brief", "show running-config", "show running-config"]);
    let conf = acts.iter().find(|a| a.data["action"] == "config").unwrap();
    assert_eq!(conf.data["target"], "sw-core1");
    assert_eq!(conf.data["detail"]["lines"], serde_json::json!(["vlan 42", "name opslet-users", "exit"]));
    assert_eq!(conf.data["detail"]["saved"], true);
    // First contact pinned the device's key in the cmdb.
    assert!(acts.iter().any(|a| a.data["action"] == "hostkey.pin"));
    assert!(Cmdb::new(lab.store.clone()).unwrap().host("sw-core1").unwrap().unwrap().host_key.is_some());
}

#[test]
fn a_rejected_config_line_stops_the_change_and_leaves_config_mode() {
    let sw = Sim::cisco("sw2");
    let lab = lab(&[("sw2", sw.port, "cisco_ios", &[])], "");
    let o = lab.run(
        ALL,
        r#"return function()
            local s = netdev.open("sw2")
            local ok, err = pcall(function()
                return s:config({ "vlan 77", "exit", "vlan 5000", "vlan 78" })
            end)
            return { ok = ok, err = tostring(err), prompt = s:prompt(), config = s:command("show running-config") }
        end"#,
    );
    let v = ok(&o);
    assert_eq!(v["ok"], false);
    let err = v["err"].as_str().unwrap();
    assert!(err.contains("netdev.config: sw2: line 3 `vlan 5000` was rejected: Command rejected: Bad VLAN list"), "{err}");
    assert!(err.contains("lines 1-2 were applied") && err.contains("configuration mode was left"), "{err}");
    assert_eq!(v["prompt"], "sw2#");
    let cfg = v["config"].as_str().unwrap();
    assert!(cfg.contains("vlan 77") && !cfg.contains("vlan 78"), "{cfg}");
    let conf = actions(&lab.store, &o).into_iter().find(|a| a.data["action"] == "config").unwrap();
    assert_eq!(conf.status.as_deref(), Some("error"));
    assert_eq!(conf.data["detail"]["applied"], 2);

    // A rejected command is an error naming the device and the device's message.
    let o = lab.run(ALL, r#"return function() return netdev.open("sw2"):command("frobnicate now") end"#);
    let e = err_text(&o);
    assert!(e.contains("netdev.command: sw2: the device rejected `frobnicate now`: No such command"), "{e}");
}

#[test]
fn backups_keep_versions_and_diff_them() {
    let sw = Sim::cisco("sw3");
    let lab = lab(&[("sw3", sw.port, "cisco_ios", &["switches"])], "");
    let backup = r#"return function() return netdev.backup("group:switches") end"#;
    let v1 = ok(&lab.run(READ, backup)).clone();
    let r = by_host(&v1, "sw3");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["version"], 1);
    assert_eq!(r["changed"], true);
    // Unchanged: no new version.
    let v = ok(&lab.run(READ, backup)).clone();
    assert_eq!(by_host(&v, "sw3")["version"], 1);
    // A dry run reads and compares, and stores nothing.
    ok(&lab.run(ALL, r#"return function() return netdev.open("sw3"):config({ "vlan 299", "exit" }) end"#));
    let dry = ok(&lab.run_with(READ, backup, true)).clone();
    assert_eq!(by_host(&dry, "sw3")["planned"], true);
    assert_eq!(by_host(&dry, "sw3")["changed"], true);
    assert_eq!(by_host(&dry, "sw3")["version"], 2, "the version it would become");
    let o = lab.run(READ, r#"return function() return #netdev.versions("sw3") end"#);
    assert_eq!(ok(&o), 1, "nothing stored by the dry run");
    ok(&lab.run(ALL, r#"return function() return netdev.open("sw3"):config({ "no vlan 299" }) end"#));
    let v = ok(&lab.run(READ, backup)).clone();
    assert_eq!(by_host(&v, "sw3")["version"], 1);
    assert_eq!(by_host(&v, "sw3")["changed"], false);
    // Change the device, back up again, diff.
    ok(&lab.run(ALL, r#"return function() return netdev.open("sw3"):config({ "vlan 300", "name backup-test", "exit" }) end"#));
    let v = ok(&lab.run(READ, backup)).clone();
    assert_eq!(by_host(&v, "sw3")["version"], 2);
    let o = lab.run(
        READ,
        r#"return function()
            return { diff = netdev.diff("sw3"), versions = netdev.versions("sw3"), v1 = netdev.saved("sw3", 1), latest = netdev.saved("sw3") }
        end"#,
    );
    let v = ok(&o);
    let diff = v["diff"].as_str().unwrap();
    assert!(diff.contains("--- sw3 v1") && diff.contains("+++ sw3 v2"), "{diff}");
    assert!(diff.contains("+vlan 300") && diff.contains("+ name backup-test"), "{diff}");
    assert!(!diff.contains("-vlan"), "{diff}");
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(v["versions"][1]["user"], "tester");
    assert!(v["latest"].as_str().unwrap().contains("vlan 300"));
    assert!(!v["v1"].as_str().unwrap().contains("vlan 300"));
    // The stored text is what netmiko reads from the device (volatile header lines left out).
    let seen = netmiko("cisco_ios", sw.port, &["show running-config"]);
    let device = seen["outputs"]["show running-config"].as_str().unwrap();
    let stored = v["latest"].as_str().unwrap();
    for line in norm(stored) {
        assert!(device.lines().any(|l| l.trim_end() == line), "stored line {line:?} is not in netmiko's view:\n{device}");
    }
    // The switch-backup applet shows the diff of a changed device.
    ok(&lab.run(ALL, r#"return function() return netdev.open("sw3"):config({ "vlan 301", "exit" }) end"#));
    let o = run_bundled(&lab, "switch-backup", &[("devices", "group:switches")], false);
    let rows = ok(&o);
    let row = by_host(rows, "sw3");
    assert_eq!(row["status"], "changed", "{row}");
    assert_eq!(row["version"], 3);
    assert!(row["diff"].as_str().unwrap().contains("+vlan 301"), "{row}");
}

#[test]
fn huawei_and_h3c_prompts_paging_and_errors() {
    let nos = Sim::fakenos();
    let lab = lab(&[("HUAWEI", nos.port, "huawei_vrp", &["campus"]), ("H3C", nos.port + 1, "hp_comware", &["campus"])], "");
    // netmiko's view of both devices before any change.
    let references: Vec<(&str, Value)> = [("HUAWEI", "huawei", nos.port), ("H3C", "hp_comware", nos.port + 1)]
        .into_iter()
        .map(|(name, dt, port)| (name, netmiko(dt, port, &["display version", "display current-configuration"])))
        .collect();
    let o = lab.run(
        ALL,
        r#"return function()
            local out = {}
            for _, name in ipairs({ "HUAWEI", "H3C" }) do
                local s = netdev.open(name)
                local version = s:command("display version")
                local cur = s:command("display current-configuration")
                local cfg = s:config({ "vlan 42", (name == "H3C" and "name" or "description") .. " opslet-42", "quit" })
                local after = s:command("display current-configuration")
                local bad_ok, bad = pcall(function() return s:config({ "vlan 43", "quit", "vlan 5000", "vlan 44" }) end)
                local ok, err = pcall(function() return s:command("display nonsense-thing") end)
                out[name] = { version = version, cur = cur, after = after, prompt = s:prompt(), applied = cfg.applied, err = tostring(err), bad = tostring(bad) }
                s:close()
            end
            return out
        end"#,
    );
    let v = ok(&o);
    let hw = &v["HUAWEI"];
    assert_eq!(hw["prompt"], "<HUAWEI>");
    assert!(hw["version"].as_str().unwrap().contains("Huawei Versatile Routing Platform"), "{}", hw["version"]);
    assert_eq!(hw["applied"], 3);
    assert!(hw["after"].as_str().unwrap().contains("vlan 42\n description opslet-42"), "{}", hw["after"]);
    assert!(h3c_after_check(&v["H3C"]));
    let bad = hw["bad"].as_str().unwrap();
    assert!(bad.contains("HUAWEI: line 3 `vlan 5000` was rejected: Error: Wrong parameter found at '^' position."), "{bad}");
    assert!(hw["err"].as_str().unwrap().contains("Error: Unrecognized command"), "{}", hw["err"]);
    let h3c = &v["H3C"];
    assert!(h3c["bad"].as_str().unwrap().contains("H3C: line 3 `vlan 5000` was rejected: % Wrong parameter"), "{}", h3c["bad"]);
    assert_eq!(h3c["prompt"], "<H3C>");
    assert!(h3c["err"].as_str().unwrap().contains("% Unrecognized command"), "{}", h3c["err"]);
    for (name, reference) in &references {
        assert_eq!(
            norm(v[name]["version"].as_str().unwrap()),
            norm(reference["outputs"]["display version"].as_str().unwrap()),
            "{name}: display version"
        );
        assert_eq!(
            norm(v[name]["cur"].as_str().unwrap()),
            norm(reference["outputs"]["display current-configuration"].as_str().unwrap()),
            "{name}: display current-configuration"
        );
    }
}

#[test]
fn paging_prompts_are_answered_when_paging_stays_on() {
    let nos = Sim::fakenos();
    // The same Huawei profile with paging left on: the device stops every 24 lines.
    let dir = tempfile::tempdir().unwrap();
    let builtin = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/stdlib/netdev/huawei_vrp.toml")).unwrap();
    let paged = builtin
        .replace("name = \"huawei_vrp\"", "name = \"vrp_paged\"")
        .replace("aliases = [", "aliases = [\"x-paged\", ")
        .replace("disable = [\"screen-length 0 temporary\"]", "disable = []");
    std::fs::write(dir.path().join("vrp_paged.toml"), paged).unwrap();
    // profiles_dir lives under [netdev], before the credentials tables.
    let lab = {
        let store = Store::temporary().unwrap();
        let cmdb = Cmdb::new(store.clone()).unwrap();
        for (name, platform) in [("HUAWEI", "vrp_paged"), ("HUAWEI-flat", "huawei_vrp")] {
            let host = Host {
                name: name.into(),
                address: "127.0.0.1".into(),
                port: nos.port,
                tags: [("platform".to_string(), platform.to_string())].into(),
                ..Default::default()
            };
            cmdb.put(host, "tester").unwrap();
        }
        Secrets::open(store.clone()).unwrap().set("sw-pass", PASSWORD.as_bytes(), "tester").unwrap();
        let config = format!(
            "[audit]\nsync = false\n[netdev]\nfirst_contact = \"accept-and-pin\"\nprofiles_dir = \"{}\"\n[[netdev.credentials]]\ndevices = \"*\"\nuser = \"{USER}\"\npassword_secret = \"sw-pass\"\n",
            dir.path().display()
        );
        let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
        Lab { rt: opslet::modules::runtime(&cfg, Some(store.clone())).unwrap(), store }
    };
    let o = lab.run(
        READ,
        r#"return function()
            local paged = netdev.open("HUAWEI"):command("display current-configuration")
            local flat = netdev.open("HUAWEI-flat"):command("display current-configuration")
            return { paged = paged, flat = flat, profiles = netdev.profiles() }
        end"#,
    );
    let v = ok(&o);
    let (paged, flat) = (v["paged"].as_str().unwrap(), v["flat"].as_str().unwrap());
    assert!(flat.lines().count() > 24, "the output is long enough to be paged: {} lines", flat.lines().count());
    assert!(!paged.contains("More"), "the More prompts are removed:\n{paged}");
    assert_eq!(norm(paged), norm(flat), "paged and unpaged outputs are the same text");
    assert!(v["profiles"].as_array().unwrap().iter().any(|p| p == "vrp_paged"));
}

#[test]
fn many_devices_at_once_with_a_wrong_password_and_a_dead_device() {
    let sw = Sim::cisco("sw-a");
    let sw2 = Sim::cisco("sw-b");
    let nos = Sim::fakenos();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lab = lab(
        &[
            ("sw-a", sw.port, "cisco_ios", &["dc"]),
            ("sw-b", sw2.port, "cisco_ios", &["dc"]),
            ("R-IOS", nos.port + 2, "cisco_ios", &["dc"]),
            ("R-JUNOS", nos.port + 3, "juniper_junos", &["dc"]),
            ("sw-wrongpw", sw.port, "cisco_ios", &["dc", "wrongpw"]),
            ("sw-dead", dead, "cisco_ios", &["dc"]),
        ],
        "",
    );
    let o = lab.run(READ, r#"return function() return netdev.run("group:dc", { "show version", "show clock" }) end"#);
    let v = ok(&o);
    assert_eq!(v.as_array().unwrap().len(), 6);
    for h in ["sw-a", "sw-b", "R-IOS"] {
        let r = by_host(v, h);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["outputs"].as_array().unwrap().len(), 2);
        assert!(r["outputs"][0].as_str().unwrap().contains("Cisco"), "{r}");
    }
    let junos = by_host(v, "R-JUNOS");
    assert_eq!(junos["ok"], true, "{junos}");
    let reference = netmiko("juniper_junos", nos.port + 3, &["show version"]);
    assert_eq!(norm(junos["outputs"][0].as_str().unwrap()), norm(reference["outputs"]["show version"].as_str().unwrap()));
    let reference = netmiko("cisco_ios", nos.port + 2, &["show version"]);
    assert_eq!(norm(by_host(v, "R-IOS")["outputs"][0].as_str().unwrap()), norm(reference["outputs"]["show version"].as_str().unwrap()));
    let wrong = by_host(v, "sw-wrongpw");
    assert_eq!(wrong["ok"], false);
    assert!(wrong["error"].as_str().unwrap().contains("login as admin (password) refused"), "{wrong}");
    assert!(!wrong.to_string().contains("not-the-password"));
    let d = by_host(v, "sw-dead");
    assert!(d["error"].as_str().unwrap().contains("refused"), "{d}");
    // Every device's failure is in the audit log, the password nowhere.
    let acts = actions(&lab.store, &o);
    assert!(acts.iter().any(|a| a.data["target"] == "sw-wrongpw" && a.status.as_deref() == Some("error")));
    assert!(!serde_json::to_string(&acts.iter().map(|a| &a.data).collect::<Vec<_>>()).unwrap().contains("not-the-password"));
}

#[test]
fn a_device_that_stops_answering_mid_command_times_out() {
    let sw = Sim::cisco("sw-hang");
    let lab = lab(&[("sw-hang", sw.port, "cisco_ios", &[])], "");
    let manifest = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nnetdev = {ALL}\n");
    let mut r = req(package_with(
        &manifest,
        r#"return function()
            local s = netdev.open("sw-hang")
            local v = s:command("show version")
            log.info("stop the device")
            time.sleep(0.5)
            local ok, err = pcall(function() return s:command("show running-config", { timeout = 3 }) end)
            local _, again = pcall(function() return s:command("show version") end)
            return { first = #v, ok = ok, err = tostring(err), again = tostring(again) }
        end"#,
        &[],
    ));
    // The device stops (SIGSTOP) when the applet says so, between two commands.
    let pid = sw.pid();
    r.log_sink = Some(std::sync::Arc::new(move |line: &opslet::runtime::context::LogLine| {
        if line.message == "stop the device" {
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    }));
    let o = run_req(&lab.rt, r);
    sw.resume();
    let v = ok(&o);
    assert!(v["first"].as_u64().unwrap() > 0);
    assert_eq!(v["ok"], false);
    let err = v["err"].as_str().unwrap();
    assert!(err.contains("netdev.command: sw-hang: no answer within 3s waiting for `show running-config`"), "{err}");
    assert!(v["again"].as_str().unwrap().contains("unusable after an earlier failure"), "{}", v["again"]);
    let failed = actions(&lab.store, &o).into_iter().find(|a| a.status.as_deref() == Some("error")).unwrap();
    assert_eq!(failed.data["detail"]["command"], "show running-config");
}

#[test]
fn permissions_are_checked_before_anything_is_sent() {
    let sw = Sim::cisco("sw-p");
    let lab = lab(&[("sw-p", sw.port, "cisco_ios", &["access"]), ("core-1", sw.port, "cisco_ios", &["core"])], "");
    let cases: &[(&str, &str, &str)] = &[
        // A read-only applet: no exec commands, no changes, no expect.
        (
            READ,
            r#"netdev.open("sw-p"):command("reload")"#,
            "`reload` is not a read-only command of this device's profile, and the applet's netdev permission grants only `read`",
        ),
        (READ, r#"netdev.open("sw-p"):command("show run | redirect tftp://10.0.0.1/x")"#, "grants only `read`"),
        (READ, r#"netdev.open("sw-p"):config({ "vlan 9" })"#, "does not grant `config`"),
        (READ, r#"netdev.open("sw-p"):config({}, { save = true })"#, "does not grant `config`"),
        (READ, r#"netdev.configure("*", {}, { save = true })"#, "does not grant `config`"),
        (READ, r#"netdev.open("sw-p"):expect("reload", { "confirm" })"#, "expect needs the `exec` action"),
        (READ, r#"netdev.open("sw-p"):save()"#, "saving needs the `config` action"),
        (READ, r#"netdev.run("*", "configure terminal")"#, "permission denied"),
        (READ, r#"netdev.open("sw-p"):command("show version\nreload")"#, "a command is one line"),
        // Ctrl-U erases the line on the device: "show " would vanish and `reload` remain.
        (READ, r#"netdev.open("sw-p"):command("show \21reload")"#, "control character"),
        (
            r#"{ devices = ["*"], actions = ["config"], lines = ["description **"] }"#,
            r#"netdev.open("sw-p"):config({ "description \21shutdown" })"#,
            "control character",
        ),
        // Devices outside the scope.
        (
            r#"{ devices = ["group:access"], actions = ["read"] }"#,
            r#"netdev.open("core-1")"#,
            "core-1 is outside the applet's netdev devices (group:access)",
        ),
        (
            r#"{ devices = ["group:access"], actions = ["read"] }"#,
            r#"netdev.run("*", "show version")"#,
            "core-1 is outside the applet's netdev devices",
        ),
        // Lines limited by pattern, commands by pattern.
        (
            r#"{ devices = ["*"], actions = ["config"], lines = ["vlan *", "name *", "exit"] }"#,
            r#"netdev.open("sw-p"):config({ "vlan 9", "interface Gi0/1", "shutdown" })"#,
            "configuration line `interface Gi0/1` matches none of the applet's netdev lines",
        ),
        (
            r#"{ devices = ["*"], actions = ["config"], lines = ["vlan *"] }"#,
            r#"netdev.configure("*", { "vlan 9", "name x; reload" })"#,
            "matches none of the applet's netdev lines",
        ),
        (
            r#"{ devices = ["*"], actions = ["exec"], commands = ["clear counters *"] }"#,
            r#"netdev.open("sw-p"):command("clear logging")"#,
            "`clear logging` matches none of the applet's netdev commands (clear counters *)",
        ),
    ];
    for (scope, call, want) in cases {
        let o = lab.run(scope, &format!("return function() return {call} end"));
        let e = err_text(&o);
        assert!(e.contains(want), "{call} under {scope}: {e}");
        // Refused before anything was sent: no command or change in the audit log, no login.
        let acts = actions(&lab.store, &o);
        assert!(acts.iter().all(|a| a.data["action"] != "command" && a.data["action"] != "config"), "{call}: {acts:?}");
        assert!(acts.iter().all(|a| a.data["action"] != "hostkey.pin"), "{call} connected: {acts:?}");
    }
    // The running configuration never changed.
    let seen = netmiko("cisco_ios", sw.port, &["show running-config"]);
    assert!(!seen["outputs"]["show running-config"].as_str().unwrap().contains("vlan 9"));
    // A manifest with a bad netdev scope is refused when the applet is loaded.
    let o = lab.run(r#"{ devices = ["*"], actions = ["write"] }"#, "return function() end");
    assert!(err_text(&o).contains("unknown action `write`"), "{}", err_text(&o));
}

#[test]
fn vlan_provision_plans_exact_lines_per_vendor_then_applies_them() {
    let sw = Sim::cisco("sw-v");
    let nos = Sim::fakenos();
    let lab = lab(
        &[
            ("sw-v", sw.port, "cisco_ios", &["access"]),
            ("HUAWEI", nos.port, "huawei_vrp", &["access"]),
            ("H3C", nos.port + 1, "hp_comware", &["access"]),
        ],
        "",
    );
    let params = [("devices", "group:access"), ("vlan", "120"), ("name", "cameras")];
    // Dry run: the exact lines per device, nothing sent.
    let o = run_bundled(&lab, "vlan-provision", &params, true);
    let rows = ok(&o);
    assert_eq!(by_host(rows, "sw-v")["lines"], "vlan 120\nname cameras\nexit");
    assert_eq!(by_host(rows, "HUAWEI")["lines"], "vlan 120\ndescription cameras\nquit");
    assert_eq!(by_host(rows, "H3C")["lines"], "vlan 120\nname cameras\nquit");
    assert!(rows.as_array().unwrap().iter().all(|r| r["status"] == "planned"), "{rows}");
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 3, "one planned change per device: {acts:?}");
    assert!(acts.iter().all(|a| a.data["detail"]["planned"] == true && a.data["dry_run"] == true));
    let before = netmiko("cisco_ios", sw.port, &["show running-config"]);
    assert!(!before["outputs"]["show running-config"].as_str().unwrap().contains("vlan 120"));
    // For real: canary first, every device changed and saved.
    let o = run_bundled(&lab, "vlan-provision", &params, false);
    let rows = ok(&o);
    for h in ["sw-v", "HUAWEI", "H3C"] {
        let r = by_host(rows, h);
        assert_eq!(r["status"], "done", "{r}");
        assert_eq!(r["saved"], true, "{r}");
    }
    let after = netmiko("cisco_ios", sw.port, &["show running-config"]);
    let cfg = after["outputs"]["show running-config"].as_str().unwrap();
    assert!(cfg.contains("vlan 120") && cfg.contains("name cameras"), "{cfg}");
    // A bad VLAN name never reaches a device.
    let o = run_bundled(&lab, "vlan-provision", &[("devices", "group:access"), ("vlan", "121"), ("name", "x; reload")], false);
    assert!(err_text(&o).contains("use up to 32 letters"), "{}", err_text(&o));
}

#[test]
fn a_run_that_ends_mid_command_audits_it_as_abandoned() {
    let sw = Sim::cisco("sw-slow");
    let lab = lab(&[("sw-slow", sw.port, "cisco_ios", &[])], "");
    sw.pause();
    let manifest = format!("name = \"t\"\nversion = \"1.0.0\"\n[limits]\ntimeout = \"2s\"\n[permissions]\nnetdev = {ALL}\n");
    let o = run_req(
        &lab.rt,
        req(package_with(
            &manifest,
            r#"return function() return netdev.open("sw-slow"):command("show version", { timeout = 60 }) end"#,
            &[],
        )),
    );
    sw.resume();
    assert!(o.result.is_err(), "the run ran out of time");
    let t0 = std::time::Instant::now();
    while !actions(&lab.store, &o).iter().any(|a| a.data["action"] == "command") && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let acts = actions(&lab.store, &o);
    let a = acts.iter().find(|a| a.data["action"] == "command").expect("the command is in the audit log");
    assert_eq!(a.status.as_deref(), Some("error"));
    assert!(a.data["detail"]["error"].as_str().unwrap().starts_with("abandoned:"), "{:?}", a.data);
    assert_eq!(a.data["detail"]["command"], "show version");
}
