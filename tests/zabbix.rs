//! The zabbix module against a real Zabbix 6.0 (scripts/peers/zabbix.sh starts it: PostgreSQL,
//! the PHP API, zabbix_server; values fed with zabbix_sender): problems raised and acknowledged
//! for real, items and history, maintenance, permissions, wrong credentials, API errors, a server
//! that is down, and logging in again after the session ends.

mod common;

use std::time::{Duration, Instant};

use common::zabbix::*;
use common::*;
use opslet::runtime::{RunOutcome, Runtime};
use opslet::secrets::Secrets;
use opslet::store::Store;
use serde_json::{Value, json};

fn runtime_with(conn: &str, password: &str) -> Runtime {
    let store = Store::temporary().unwrap();
    Secrets::open(store.clone()).unwrap().set("zbx-pass", password.as_bytes(), "tester").unwrap();
    let cfg = opslet::config::Config::parse(&format!("[audit]\nsync = false\n{conn}"), "opslet.toml").unwrap();
    opslet::modules::runtime(&cfg, Some(store)).unwrap()
}

fn rt() -> Runtime {
    runtime_with(&format!("[zabbix.main]\nurl = \"{}\"\nuser = \"Admin\"\npassword_secret = \"zbx-pass\"\n", url()), "zabbix")
}

fn applet(rt: &Runtime, actions: &str, main: &str, dry_run: bool) -> RunOutcome {
    let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nzabbix = {actions}\n");
    let mut r = req(package_with(&m, main, &[]));
    r.dry_run = dry_run;
    run_req(rt, r)
}

#[test]
fn reads_problems_items_and_history_from_a_real_server() {
    let (host, itemid, eventid) = problem_host("read");
    let rt = rt();
    let main = format!(
        r#"return function()
            local p = zabbix.problems({{ host = "{host}", severity_min = "high", since = "1h" }})
            local none = zabbix.problems({{ host = "{host}", severity_min = "disaster" }})
            local items = zabbix.items("{host}", "app.*")
            local hist = zabbix.history(items[1].itemid, "1h")
            local hosts = zabbix.hosts({{ name = "{host}" }})
            return {{ p = p, none = #none, items = items, hist = hist, hosts = hosts }}
        end"#
    );
    let o = applet(&rt, "[\"read\"]", &main, false);
    let v = ok(&o);
    assert_eq!(v["p"][0]["eventid"], eventid.as_str());
    assert_eq!(v["p"][0]["host"], host.as_str());
    assert_eq!(v["p"][0]["severity_name"], "high");
    assert_eq!(v["p"][0]["acknowledged"], false);
    assert_eq!(v["p"][0]["tags"]["service"], "api");
    assert_eq!(v["none"], 0);
    assert_eq!(v["items"][0]["itemid"], itemid.as_str());
    assert_eq!(v["items"][0]["key"], "app.load");
    assert_eq!(v["hist"][0]["value"], 9.0);
    assert_eq!(v["hosts"][0]["groups"][0], "Linux servers");
    assert!(actions(rt.store().unwrap(), &o).is_empty(), "reads are not actions");
}

#[test]
fn acknowledges_and_closes_a_problem_for_real_and_audits_it() {
    let (_, _, eventid) = problem_host("ack");
    let rt = rt();
    // A dry run plans and changes nothing.
    let main = format!(r#"return function() return zabbix.ack("{eventid}", {{ message = "restarting api", close = true }}) end"#);
    let o = applet(&rt, "[\"read\", \"ack\"]", &main, true);
    assert_eq!(ok(&o), &json!(false));
    assert_eq!(actions(rt.store().unwrap(), &o)[0].data["detail"]["planned"], true);
    let still = block(admin().call("problem.get", json!({ "eventids": [eventid], "output": ["acknowledged"] }))).unwrap();
    assert_eq!(still[0]["acknowledged"], "0");

    let o = applet(&rt, "[\"read\", \"ack\"]", &main, false);
    assert_eq!(ok(&o), &json!(true));
    let acts = actions(rt.store().unwrap(), &o);
    assert_eq!(acts[0].data["action"], "ack");
    assert_eq!(acts[0].data["detail"]["action"], 7, "close + acknowledge + message");
    // Zabbix's task manager closes it: r_eventid appears.
    let t0 = Instant::now();
    loop {
        let e =
            block(admin().call("event.get", json!({ "eventids": [eventid], "output": ["r_eventid"], "select_acknowledges": ["message"] })))
                .unwrap();
        if e[0]["r_eventid"] != "0" {
            assert_eq!(e[0]["acknowledges"][0]["message"], "restarting api");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the problem was not closed: {e}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn maintenance_is_created_for_real() {
    let (host, _, _) = problem_host("mnt");
    let rt = rt();
    let main = format!(
        r#"return function() return zabbix.maintenance({{ hosts = {{ "{host}" }}, duration = "2h", name = "{host} patching" }}) end"#
    );
    let o = applet(&rt, "[\"read\", \"maintenance\"]", &main, false);
    let id = ok(&o).as_str().unwrap().to_string();
    let m = block(admin().call("maintenance.get", json!({ "maintenanceids": [id], "selectHosts": ["host"] }))).unwrap();
    assert_eq!(m[0]["name"], format!("{host} patching"));
    assert_eq!(m[0]["hosts"][0]["host"], host.as_str());
    assert_eq!(actions(rt.store().unwrap(), &o)[0].data["action"], "maintenance");
}

#[test]
fn permissions_refuse_before_anything_is_sent() {
    let rt = rt();
    for (actions_, call, want) in [
        ("[\"read\"]", r#"zabbix.ack("1", { message = "x" })"#, "does not grant `ack`"),
        ("[\"read\"]", r#"zabbix.maintenance({ hosts = "x", duration = 600 })"#, "does not grant `maintenance`"),
        ("[\"read\"]", r#"zabbix.call("host.delete", { "1" })"#, "does not grant `call:host.delete`"),
        ("[\"ack\"]", r#"zabbix.problems()"#, "does not grant `read`"),
        ("[\"read\"]", r#"zabbix.connection("other")"#, "no Zabbix connection `other`"),
        ("[\"read\", \"ack\"]", r#"zabbix.ack("1", { mesage = "x" })"#, "unknown option `mesage`"),
        // An empty host list would mean every host to Zabbix.
        ("[\"read\", \"maintenance\"]", r#"zabbix.maintenance({ hosts = {}, duration = 600 })"#, "host name"),
        ("[\"read\", \"maintenance\"]", r#"zabbix.maintenance({ hosts = { 1 }, duration = 600 })"#, "host names"),
        ("[\"read\"]", r#"zabbix.problems({ host = {} })"#, "host name"),
    ] {
        let o = applet(&rt, actions_, &format!("return function() return {call} end"), false);
        let e = err_text(&o);
        assert!(e.contains(want), "{call}: {e}");
        assert!(actions(rt.store().unwrap(), &o).is_empty());
    }
    let bad = opslet::applet::AppletPackage::from_files(
        [
            ("applet.toml".to_string(), b"name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nzabbix = [\"write\"]\n".to_vec()),
            ("main.lua".to_string(), b"return function() end".to_vec()),
        ]
        .into(),
    )
    .unwrap();
    let e = bad.check_modules(rt.modules()).unwrap_err().to_string();
    assert!(e.contains("`write` is not an action"), "{e}");
}

#[test]
fn api_errors_wrong_credentials_and_a_dead_server_are_clear() {
    // Zabbix's own code and message come back.
    let rt = rt();
    let o = applet(
        &rt,
        "[\"call:host.create\"]",
        r#"return function() return zabbix.call("host.create", { host = "", groups = { { groupid = "2" } } }) end"#,
        false,
    );
    let e = err_text(&o);
    assert!(e.contains("Zabbix API error -32602: Invalid params. Incorrect characters used for host name"), "{e}");
    // The failed write is audited as such.
    let acts = actions(rt.store().unwrap(), &o);
    assert_eq!((acts[0].data["action"].as_str(), acts[0].status.as_deref()), (Some("host.create"), Some("error")));
    // Credentials in raw calls are kept out of the audit log, even when the call fails.
    let o = applet(
        &rt,
        "[\"call:user.update\"]",
        r#"return function() return zabbix.call("user.update", { userid = "999999", passwd = "Hidden-Pass-42" }) end"#,
        false,
    );
    assert!(o.result.is_err());
    let acts = actions(rt.store().unwrap(), &o);
    assert_eq!(acts[0].data["detail"]["params"]["passwd"], "<redacted>");
    assert!(!serde_json::to_string(&acts).unwrap().contains("Hidden-Pass-42"));
    let o = applet(&rt, "[\"call:host.nosuch\"]", r#"return function() return zabbix.call("host.nosuch") end"#, false);
    assert!(err_text(&o).contains("Zabbix API error -32601: Method not found."), "{}", err_text(&o));

    // A user that does not exist (Admin would be locked out after a few wrong passwords).
    let wrong =
        runtime_with(&format!("[zabbix.main]\nurl = \"{}\"\nuser = \"opslet-nobody\"\npassword_secret = \"zbx-pass\"\n", url()), "nope");
    let o = applet(&wrong, "[\"read\"]", "return function() return zabbix.problems() end", false);
    let e = err_text(&o);
    assert!(e.contains("Incorrect user name or password"), "{e}");
    assert!(!e.contains("nope"), "the password never shows");

    let dead = runtime_with(
        "[zabbix.main]\nurl = \"http://127.0.0.1:1/api_jsonrpc.php\"\nuser = \"Admin\"\npassword_secret = \"zbx-pass\"\n",
        "zabbix",
    );
    let o = applet(&dead, "[\"read\"]", "return function() return zabbix.hosts() end", false);
    let e = err_text(&o);
    assert!(e.contains("127.0.0.1:1") && e.to_lowercase().contains("connect"), "{e}");
}

#[test]
fn a_rotated_token_is_used_from_the_next_run_on() {
    // An API token of Admin's, made for this test.
    let admin = admin();
    let name = format!("opslet-rotate-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let (id, token) = block(async {
        let made = admin.call("token.create", json!({ "name": name, "userid": "1" })).await.unwrap();
        let id = made["tokenids"][0].as_str().unwrap().to_string();
        let generated = admin.call("token.generate", json!([id])).await.unwrap();
        (id, generated[0]["token"].as_str().unwrap().to_string())
    });
    // One runtime, as a server keeps it: its logged-in client outlives a run, but not a change
    // of the secret it logged in with.
    let rt = runtime_with(&format!("[zabbix.main]\nurl = \"{}\"\ntoken_secret = \"zbx-pass\"\n", url()), &token);
    let secrets = Secrets::open(rt.store().unwrap().clone()).unwrap();
    let main = r#"return function() return #zabbix.hosts({ name = "Zabbix server" }) end"#;
    assert_eq!(ok(&applet(&rt, "[\"read\"]", main, false)), &json!(1));
    let revoked = "0".repeat(64);
    secrets.set("zbx-pass", revoked.as_bytes(), "tester").unwrap();
    let e = err_text(&applet(&rt, "[\"read\"]", main, false));
    assert!(e.contains("Not authorized") || e.contains("re-login"), "the new token is used, and refused: {e}");
    assert!(!e.contains(&revoked) && !e.contains(&token), "{e}");
    secrets.set("zbx-pass", token.as_bytes(), "tester").unwrap();
    assert_eq!(ok(&applet(&rt, "[\"read\"]", main, false)), &json!(1), "the restored token works at once");
    block(admin.call("token.delete", json!([id]))).unwrap();
}

#[test]
fn a_lost_session_is_renewed_once() {
    let rt = rt();
    let main = r#"return function()
        local before = #zabbix.hosts({ name = "Zabbix server" })
        zabbix.call("user.logout", {})
        local after = #zabbix.hosts({ name = "Zabbix server" })
        return { before = before, after = after }
    end"#;
    let o = applet(&rt, "[\"read\", \"call:user.logout\"]", main, false);
    assert_eq!(ok(&o), &json!({ "before": 1, "after": 1 }));
}

#[test]
fn the_cmdb_imports_hosts_from_zabbix() {
    let (host, _, _) = problem_host("import");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("opslet.toml"), format!("[zabbix.main]\nurl = \"{}\"\nuser = \"Admin\"\npassword_secret = \"zbx\"\n", url()))
        .unwrap();
    let opslet = |args: &[&str], stdin: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(args)
            .env("OPSLET_DATA_DIR", &data)
            .env_remove("OPSLET_CONFIG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), stdin.unwrap_or("").as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(opslet(&["secret", "set", "zbx"], Some("zabbix")).status.success());
    let o = opslet(&["cmdb", "import", "--from-zabbix", "main", "--group", "Linux servers"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = opslet(&["cmdb", "host", "show", &host], None);
    let h: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(h["address"], "127.0.0.1");
    assert!(h["groups"].as_array().unwrap().contains(&json!("linux-servers")), "{h}");
    assert_eq!(h["tags"]["service"], "api");
    assert!(h["attrs"]["zabbix_hostid"].is_string());
    // Selectors work on what came in.
    let o = opslet(&["cmdb", "host", "list", "group:linux-servers & tag:service=api", "--format", "json"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&host));
    // A group Zabbix does not have is an error naming it; a connection not configured too.
    let o = opslet(&["cmdb", "import", "--from-zabbix", "main", "--group", "No such group"], None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no host group `No such group`"));
    let o = opslet(&["cmdb", "import", "--from-zabbix", "other"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no [zabbix.other]"), "{}", String::from_utf8_lossy(&o.stderr));
}
