//! The ssh module against real OpenSSH servers on loopback (tests/common/sshd.rs): key and
//! password logins, exit codes, timeouts, unreachable hosts, host-key pinning, permissions,
//! secrets, dry runs, scripts, files, sudo, batches and connection reuse.

mod common;

use std::sync::Arc;

use common::sshd::{Fleet, PASSWORD, USER};
use common::*;
use opslet::cmdb::{Cmdb, Host};
use opslet::runtime::{RunOutcome, RunStatus, Runtime};
use opslet::secrets::Secrets;
use opslet::store::Store;
use opslet::store::audit::Filter;
use serde_json::Value;

struct Lab {
    fleet: Fleet,
    store: Store,
    rt: Runtime,
}

/// Hosts web1..webN in group `web` (pinned keys unless `pin` is false), plus `down1` (group
/// `web`, nothing listening) when `with_down`. Logins per `creds` (a TOML [[ssh.credentials]]
/// list); secrets `ssh-key` (the client key), `ssh-pass` (the password), `stranger-key`.
fn lab(n: usize, pin: bool, with_down: bool, ssh_config: &str) -> Lab {
    let fleet = Fleet::start(n, "web");
    let store = Store::temporary().unwrap();
    let cmdb = Cmdb::new(store.clone()).unwrap();
    for h in &fleet.hosts {
        let host = Host {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            groups: ["web".to_string()].into(),
            host_key: pin.then(|| h.host_key.clone()),
            ..Default::default()
        };
        cmdb.put(host, "tester").unwrap();
    }
    if with_down {
        let down = Host {
            name: "down1".into(),
            address: fleet.dead_address.clone(),
            port: fleet.port,
            groups: ["web".to_string()].into(),
            ..Default::default()
        };
        cmdb.put(down, "tester").unwrap();
    }
    let secrets = Secrets::open(store.clone()).unwrap();
    secrets.set("ssh-key", fleet.client_key.as_bytes(), "tester").unwrap();
    secrets.set("ssh-pass", PASSWORD.as_bytes(), "tester").unwrap();
    secrets.set("stranger-key", fleet.stranger_key.as_bytes(), "tester").unwrap();
    let config = format!("[audit]\nsync = false\n[limits]\ntimeout = \"30s\"\n[ssh]\nconnect_timeout = \"3s\"\n{ssh_config}");
    let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    Lab { fleet, store, rt }
}

const KEY_LOGIN: &str = "[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n";

fn manifest(scope: &str) -> String {
    format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nssh = {scope}\n")
}

impl Lab {
    fn run(&self, scope: &str, main: &str) -> RunOutcome {
        run(&self.rt, package_with(&manifest(scope), main, &[]))
    }

    fn run_with(&self, scope: &str, main: &str, files: &[(&str, &str)], dry_run: bool) -> RunOutcome {
        let mut r = req(package_with(&manifest(scope), main, files));
        r.dry_run = dry_run;
        run_req(&self.rt, r)
    }
}

const ALL: &str = "{ hosts = [\"*\"] }";

#[test]
fn runs_on_every_host_with_exit_codes_output_and_an_unreachable_host() {
    let lab = lab(3, true, true, KEY_LOGIN);
    let o = lab.run(ALL, r#"return function() return ssh.run("group:web", "echo out-$(whoami); echo err >&2; exit 3") end"#);
    let v = ok(&o);
    assert_eq!(v.as_array().unwrap().len(), 4);
    for h in ["web1", "web2", "web3"] {
        let r = by_host(v, h);
        assert_eq!(r["exit_code"], 3, "{r}");
        assert_eq!(r["ok"], false);
        assert_eq!(r["stdout"], format!("out-{USER}\n"));
        assert_eq!(r["stderr"], "err\n");
        assert!(r["duration"].as_f64().unwrap() > 0.0);
        assert!(r.get("error").is_none(), "{r}");
    }
    let down = by_host(v, "down1");
    assert_eq!(down["ok"], false);
    assert!(down.get("exit_code").is_none());
    let err = down["error"].as_str().unwrap();
    assert!(err.contains(&lab.fleet.dead_address) && err.contains("refused"), "{err}");

    let o = lab.run(ALL, r#"return function() return ssh.run("web*", "true") end"#);
    assert!(ok(&o).as_array().unwrap().iter().all(|r| r["ok"] == true && r["exit_code"] == 0));

    // Every command on every host is in the audit log: host, command, exit code, duration.
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 3);
    for a in &acts {
        assert_eq!(a.data["module"], "ssh");
        assert_eq!(a.data["action"], "run");
        assert_eq!(a.data["detail"]["command"], "true");
        assert_eq!(a.data["detail"]["exit_code"], 0);
        assert!(a.data["detail"]["duration_ms"].is_u64());
        assert_eq!(a.actor.as_deref(), Some("tester"));
    }
}

#[test]
fn password_login_and_a_refused_key() {
    let creds = "[[ssh.credentials]]\nhosts = \"web1\"\nuser = \"opsuser\"\npassword_secret = \"ssh-pass\"\n\
                 [[ssh.credentials]]\nhosts = \"web2\"\nuser = \"opsuser\"\nkey_secret = \"stranger-key\"\n";
    let lab = lab(3, true, false, creds);
    let o = lab.run(ALL, r#"return function() return ssh.run("group:web", "echo hi") end"#);
    let v = ok(&o);
    assert_eq!(by_host(v, "web1")["stdout"], "hi\n");
    let web2 = by_host(v, "web2")["error"].as_str().unwrap().to_string();
    assert!(web2.contains("login as opsuser (key) refused"), "{web2}");
    let web3 = by_host(v, "web3")["error"].as_str().unwrap().to_string();
    assert!(web3.contains("no [[ssh.credentials]] entry picks host web3"), "{web3}");
}

#[test]
fn a_slow_host_times_out_alone() {
    let lab = lab(3, true, false, KEY_LOGIN);
    let slow = lab.fleet.hosts[1].address.clone();
    let main = format!(
        r#"return function() return ssh.run("group:web", 'case "$SSH_CONNECTION" in *" {slow} "*) sleep 20;; esac; echo done', {{ timeout = 1 }}) end"#
    );
    let t0 = std::time::Instant::now();
    let o = lab.run(ALL, &main);
    let v = ok(&o);
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(by_host(v, "web1")["stdout"], "done\n");
    assert_eq!(by_host(v, "web3")["stdout"], "done\n");
    let e = by_host(v, "web2")["error"].as_str().unwrap().to_string();
    assert!(e.contains("timed out after 1s"), "{e}");
}

#[test]
fn host_keys_are_pinned_checked_and_changes_refused() {
    // first_contact = refuse (the default): an unpinned host is refused and audited.
    let lab1 = lab(1, false, false, KEY_LOGIN);
    let o = lab1.run(ALL, r#"return function() return ssh.run("web1", "true") end"#);
    let e = ok(&o)[0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("not pinned") && e.contains("SHA256:"), "{e}");
    let acts = actions(&lab1.store, &o);
    assert!(acts.iter().any(|a| a.data["action"] == "hostkey.refused" && a.data["detail"]["reason"] == "not pinned"));
    drop(lab1);

    // accept-and-pin: the first contact pins the key in the cmdb.
    let lab = lab(1, false, false, &format!("first_contact = \"accept-and-pin\"\n{KEY_LOGIN}"));
    let o = lab.run(ALL, r#"return function() return ssh.run("web1", "true") end"#);
    assert_eq!(ok(&o)[0]["ok"], true, "{:?}", o.result);
    let cmdb = Cmdb::new(lab.store.clone()).unwrap();
    let pinned = cmdb.host("web1").unwrap().unwrap().host_key.expect("pinned on first contact");
    assert_eq!(pinned, lab.fleet.hosts[0].host_key);
    assert!(actions(&lab.store, &o).iter().any(|a| a.data["action"] == "hostkey.pin"));

    // A changed key (the pin no longer matches) is refused even under accept-and-pin.
    let mut h = cmdb.host("web1").unwrap().unwrap();
    let other = std::fs::read_to_string(lab.fleet.dir.path().join("stranger.pub")).unwrap();
    h.host_key = Some(other.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    cmdb.put(h, "tester").unwrap();
    let logins = lab.fleet.logins();
    let o = lab.run(ALL, r#"return function() return ssh.run("web1", "touch /tmp/should-not-run") end"#);
    let e = ok(&o)[0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("host key changed"), "{e}");
    assert_eq!(lab.fleet.logins(), logins, "no login after a changed key");
    let refused = actions(&lab.store, &o).into_iter().find(|a| a.data["action"] == "hostkey.refused").expect("the refusal is audited");
    assert_eq!(refused.data["detail"]["reason"], "changed");
    assert_eq!(refused.status.as_deref(), Some("error"));
}

#[test]
fn permissions_refuse_before_any_connection() {
    let lab = lab(2, true, false, KEY_LOGIN);
    let cases = [
        ("{ hosts = [\"web1\"] }", r#"ssh.run("group:web", "true")"#, "web2 is outside the applet's ssh hosts (web1)"),
        ("{ hosts = [\"*\"], commands = [\"uptime\", \"systemctl restart *\"] }", r#"ssh.run("web1", "id")"#, "`id` matches none"),
        (
            "{ hosts = [\"*\"], commands = [\"systemctl restart *\"] }",
            r#"ssh.run("web1", "systemctl restart x; touch /tmp/pwned")"#,
            "matches none",
        ),
        ("{ hosts = [\"*\"] }", r#"ssh.run("web1", "id", { sudo = true })"#, "needs `sudo = true`"),
        ("{ hosts = [\"*\"], commands = [\"uptime\"] }", r#"ssh.script("web1", "touch /tmp/x")"#, "only the applet's own script files"),
        ("{ hosts = [\"*\"], files = [\"/tmp/*\"] }", r#"ssh.get("web1", "/etc/shadow")"#, "matches none of the applet's ssh files"),
        ("{ hosts = [\"*\"], files = [\"/tmp/*\"] }", r#"ssh.get("web1", "/tmp/../etc/shadow")"#, "matches none of the applet's ssh files"),
        ("{ hosts = [\"*\"] }", r#"ssh.run("nomatch*", "true")"#, "matches no host in the cmdb"),
        ("{ hosts = [\"*\"] }", r#"ssh.run("web1", "true", { timout = 3 })"#, "unknown option `timout`"),
        ("{ hosts = [\"*\"] }", r#"ssh.run("web1", "true", { timeout = 1e20 })"#, "at most 24h"),
        ("{ hosts = [\"*\"] }", r#"ssh.run("web1", "true", { timeout = "0s" })"#, "more than 0"),
        // Restricted (commands listed): env only by name, never PATH; files only when listed.
        ("{ hosts = [\"*\"], commands = [\"uptime\"] }", r#"ssh.run("web1", "uptime", { env = { PATH = "/tmp" } })"#, "may not set `PATH`"),
        (
            "{ hosts = [\"*\"], commands = [\"uptime\"], env = [\"LANG\"] }",
            r#"ssh.run("web1", "uptime", { env = { LC_ALL = "C" } })"#,
            "may not set `LC_ALL`",
        ),
        ("{ hosts = [\"*\"], commands = [] }", r#"ssh.get("web1", "/etc/passwd")"#, "lists commands but no files"),
        ("{ hosts = [\"*\"], commands = [] }", r#"ssh.put("web1", "/tmp/x", { content = "x" })"#, "lists commands but no files"),
        (
            "{ hosts = [\"*\"], commands = [\"find /tmp -name *\"] }",
            r#"ssh.run("web1", "find /tmp -name x -o -fprint /tmp/y")"#,
            "matches none",
        ),
    ];
    let logins = lab.fleet.logins();
    for (scope, call, want) in cases {
        let o = lab.run(scope, &format!("return function() return {call} end"));
        let e = err_text(&o);
        assert!(e.contains(want), "{call}: {e}");
        assert!(actions(&lab.store, &o).is_empty(), "{call}: nothing may be audited as done");
    }
    assert_eq!(lab.fleet.logins(), logins, "no connection was made");

    // Without the permission the module is not there at all.
    let o = run(&lab.rt, package(r#"return function() return ssh.run("web1", "true") end"#));
    assert!(err_text(&o).contains("does not declare the `ssh` permission"));
}

#[test]
fn manifests_with_a_bad_ssh_scope_are_rejected() {
    let files = |scope: &str| {
        let mut f = std::collections::BTreeMap::new();
        f.insert("applet.toml".to_string(), manifest(scope).into_bytes());
        f.insert("main.lua".to_string(), b"return function() end".to_vec());
        f
    };
    for (scope, want) in [
        ("true", "expected a table"),
        ("{ commands = [\"uptime\"] }", "`hosts` is required"),
        ("{ hosts = [\"group:\"] }", "hosts: `group:`"),
        ("{ hosts = [\"*\"], sudo = \"yes\" }", "`sudo` must be true or false"),
    ] {
        let pkg = opslet::applet::AppletPackage::from_files(files(scope)).unwrap();
        let e = pkg.check_modules(&opslet::modules::builtin()).unwrap_err().to_string();
        assert!(e.contains(want), "{scope}: {e}");
    }
}

#[test]
fn secrets_never_leak_into_results_logs_audit_or_errors() {
    let creds = "[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\npassword_secret = \"ssh-pass\"\n";
    let lab = lab(2, true, false, creds);
    let main = format!(
        r#"return function()
            local r = ssh.run("group:web", "echo {PASSWORD}; echo {PASSWORD} >&2; exit 1")
            log.info(r[1].stdout .. r[1].stderr)
            error("failed with " .. r[2].stdout)
        end"#
    );
    // The applet cannot read the secret itself; the test writes it into the command to see
    // that whatever comes back is redacted.
    let o = lab.run(ALL, &main);
    let e = err_text(&o);
    assert!(!e.contains(PASSWORD) && e.contains("<redacted>"), "{e}");
    for l in &o.logs {
        assert!(!l.message.contains(PASSWORD), "{}", l.message);
    }
    let all = serde_json::to_string(&lab.store.audit().list(&Filter::default()).unwrap()).unwrap();
    assert!(!all.contains(PASSWORD), "the audit log holds the password");
    assert!(all.contains("<redacted>"));
    // The stored secret is encrypted: its value is nowhere in the store's files.
    lab.store.flush().unwrap();
}

#[test]
fn dry_run_plans_without_connecting() {
    let lab = lab(2, true, true, KEY_LOGIN);
    let logins = lab.fleet.logins();
    let main = r#"return function()
        return { run = ssh.run("group:web", "systemctl restart nginx", { env = { MODE = "a b" }, canary = true }),
                 put = ssh.put("web1", "/tmp/x", { content = "hello" }) }
    end"#;
    let o = lab.run_with(ALL, main, &[], true);
    let v = ok(&o);
    let run = v["run"].as_array().unwrap();
    assert_eq!(run.len(), 3, "down1 is planned too: nothing connects");
    for r in run {
        assert_eq!(r["planned"], true);
        assert_eq!(r["command"], "export MODE='a b'; systemctl restart nginx");
    }
    assert_eq!(v["put"][0]["command"], "put /tmp/x (5 bytes)");
    assert_eq!(lab.fleet.logins(), logins);
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 4);
    assert!(acts.iter().all(|a| a.data["dry_run"] == true && a.data["detail"]["planned"] == true));
}

#[test]
fn scripts_files_sudo_and_env() {
    let lab = lab(2, true, false, KEY_LOGIN);
    let scope = "{ hosts = [\"*\"], sudo = true }";
    let main = r##"return function()
        local script = ssh.script("group:web", "scripts/facts.sh", { "one arg", "it's" })
        local inline = ssh.script("web1", "#!/bin/sh\necho inline $1", { "x" })
        local put = ssh.put("group:web", "/tmp/opslet-test-put", { content = "line1\nline2\n" }, { mode = "0600" })
        local get = ssh.get("web2", "/tmp/opslet-test-put")
        local mode = ssh.run("web1", "stat -c %a /tmp/opslet-test-put; rm -f /tmp/opslet-test-put")
        local who = ssh.run("web1", "whoami", { sudo = "nobody" })
        local root = ssh.run("web1", "whoami", { sudo = true })
        local env = ssh.run("web1", 'echo "$A|$B"', { env = { A = "x y", B = "$(id)" } })
        return { script = script, inline = inline, put = put, get = get, mode = mode, who = who, root = root, env = env }
    end"##;
    let facts = "#!/bin/sh\necho \"args: $1 / $2\"\necho \"kernel: $(uname -s)\"\n";
    let o = lab.run_with(scope, main, &[("scripts/facts.sh", facts)], false);
    let v = ok(&o);
    for r in v["script"].as_array().unwrap() {
        assert_eq!(r["stdout"], "args: one arg / it's\nkernel: Linux\n", "{r}");
    }
    assert_eq!(v["inline"][0]["stdout"], "inline x\n");
    assert!(v["put"].as_array().unwrap().iter().all(|r| r["ok"] == true), "{}", v["put"]);
    assert_eq!(v["get"][0]["content"], "line1\nline2\n");
    assert_eq!(v["mode"][0]["stdout"], "600\n");
    assert_eq!(v["who"][0]["stdout"], "nobody\n", "{}", v["who"]);
    // The test account may only become nobody: sudo to root fails on the host, reported as data.
    assert_eq!(v["root"][0]["ok"], false);
    assert!(v["root"][0]["stderr"].as_str().unwrap().contains("sudo"), "{}", v["root"]);
    assert_eq!(v["env"][0]["stdout"], "x y|$(id)\n");
    let acts = actions(&lab.store, &o);
    assert!(
        acts.iter().any(|a| a.data["action"] == "script" && a.data["detail"]["command"] == "script scripts/facts.sh 'one arg' 'it'\\''s'")
    );
    assert!(acts.iter().any(|a| a.data["action"] == "put" && a.data["detail"]["bytes"] == 12 && a.data["detail"]["mode"] == "0600"));
}

#[test]
fn get_refuses_files_over_the_limit() {
    let lab = lab(1, true, false, &format!("max_file = \"1KiB\"\nmax_output = \"100B\"\n{KEY_LOGIN}"));
    let main = r#"return function()
        local big = ssh.run("web1", "head -c 5000 /dev/zero | tr '\\0' a > /tmp/opslet-big; head -c 500 /dev/zero | tr '\\0' b")
        local got = ssh.get("web1", "/tmp/opslet-big")
        ssh.run("web1", "rm -f /tmp/opslet-big")
        return { big = big, got = got }
    end"#;
    let o = lab.run(ALL, main);
    let v = ok(&o);
    assert_eq!(v["big"][0]["stdout"].as_str().unwrap().len(), 100);
    assert_eq!(v["big"][0]["truncated"], true);
    let e = v["got"][0]["error"].as_str().unwrap();
    assert!(e.contains("5000 bytes, over the 1024-byte limit"), "{e}");
}

#[test]
fn canary_and_stop_after_on_real_hosts() {
    let lab = lab(4, true, true, KEY_LOGIN);
    // down1 sorts first: as the canary it fails, and nothing else is started.
    let o = lab.run(ALL, r#"return function() return ssh.run("group:web", "true", { canary = 1 }) end"#);
    let v = ok(&o);
    assert_eq!(v[0]["host"], "down1");
    assert_eq!(v[0]["ok"], false);
    assert!(v.as_array().unwrap()[1..].iter().all(|r| r["skipped"] == true), "{v}");
    assert_eq!(actions(&lab.store, &o).len(), 1);

    // One host at a time, stop after the first failure.
    let o = lab.run(
        ALL,
        r#"return function() return ssh.run("group:web & !down1", "test $(hostname) = nope", { batch = 1, stop_after = 2 }) end"#,
    );
    let v = ok(&o);
    let ran = v.as_array().unwrap().iter().filter(|r| r["skipped"] != true).count();
    assert_eq!(ran, 2, "{v}");
}

#[test]
fn connections_are_reused_within_a_run_and_go_through_a_jump_host() {
    let lab = lab(3, true, false, KEY_LOGIN);
    let before = lab.fleet.logins();
    let o = lab.run(
        ALL,
        r#"return function()
        for i = 1, 5 do ssh.run("group:web", "true") end
        return ssh.run("group:web", "echo ok")
    end"#,
    );
    assert!(ok(&o).as_array().unwrap().iter().all(|r| r["stdout"] == "ok\n"));
    assert_eq!(lab.fleet.logins() - before, 3, "one login per host for six calls");

    // web2 and web3 through web1.
    let creds = "[[ssh.credentials]]\nhosts = \"web1\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n\
         [[ssh.credentials]]\nhosts = \"web2,web3\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\njump = \"web1\"\n";
    let lab = self::lab(3, true, false, creds);
    let o = lab.run(ALL, r#"return function() return ssh.run("web2,web3", 'echo "$SSH_CONNECTION"') end"#);
    let v = ok(&o);
    for r in v.as_array().unwrap() {
        // Tunnelled: the connection reaches the target from the jump host's side, not ours.
        let conn = r["stdout"].as_str().unwrap();
        assert!(conn.starts_with("127."), "{r}");
        assert_eq!(r["ok"], true);
    }
    // sshd logs the address each connection came in on: web1 got one login (the jump), web2 and
    // web3 one each (through the tunnel). Port probes made while starting never log in.
    let log = lab.fleet.sshd_log();
    let port_of = |l: &str| l.split(" port ").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
    let logged_in: Vec<String> = log.lines().filter(|l| l.contains("Accepted publickey for")).filter_map(port_of).collect();
    for h in &lab.fleet.hosts {
        let on = format!(" on {} port {}", h.address, h.port);
        let n = log
            .lines()
            .filter(|l| l.contains("Connection from") && l.contains(&on) && port_of(l).is_some_and(|p| logged_in.contains(&p)))
            .count();
        assert_eq!(n, 1, "{}: {log}", h.name);
    }
}

#[test]
fn selector_params_resolve_through_the_cmdb() {
    let lab = lab(1, true, false, KEY_LOGIN);
    let m = format!("{}[params.targets]\ntype = \"host-selector\"\nrequired = true\n", manifest(ALL));
    let pkg = package_with(&m, r#"return function(p) return #ssh.run(p.targets, "true") end"#, &[]);
    let mut r = req(Arc::clone(&pkg));
    r.params_pairs = vec![("targets".into(), "group:nosuch".into())];
    let o = run_req(&lab.rt, r);
    assert_eq!(o.status, RunStatus::InvalidParams);
    assert!(err_text(&o).contains("matches no host in the cmdb"), "{}", err_text(&o));
    let mut r = req(pkg);
    r.params_pairs = vec![("targets".into(), "group:web".into())];
    assert_eq!(ok(&run_req(&lab.rt, r)), &Value::from(1));
}

// ---- the bundled ssh applets against the fleet ----------------------------------------------

fn bundled(name: &str) -> Arc<opslet::applet::AppletPackage> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets").join(name);
    Arc::new(opslet::applet::AppletPackage::load_dir(&dir).unwrap())
}

fn run_bundled(lab: &Lab, name: &str, params: &[(&str, &str)], dry_run: bool) -> RunOutcome {
    let mut r = req(bundled(name));
    r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r.dry_run = dry_run;
    run_req(&lab.rt, r)
}

#[test]
fn host_facts_reports_each_host_and_the_unreachable_one() {
    let lab = lab(3, true, true, KEY_LOGIN);
    let o = run_bundled(&lab, "host-facts", &[("targets", "group:web")], false);
    let v = ok(&o);
    assert_eq!(v.as_array().unwrap().len(), 4);
    let kernel = String::from_utf8(std::process::Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    for h in ["web1", "web2", "web3"] {
        let r = by_host(v, h);
        assert_eq!(r["kernel"], kernel.trim(), "{r}");
        assert!(r["load1"].is_number() && r["cpus"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["disks"].as_u64().unwrap() >= 1 && r["fullest_pct"].is_number(), "{r}");
        assert!(r.get("error").is_none());
    }
    assert!(by_host(v, "down1")["error"].as_str().unwrap().contains("refused"));
    // Only the packaged script ran: the applet may not run any command of its own.
    let acts = actions(&lab.store, &o);
    assert!(acts.iter().all(|a| a.data["detail"]["command"] == "script facts.sh"), "{acts:?}");
}

#[test]
fn disk_usage_lists_file_systems_over_the_threshold() {
    let lab = lab(2, true, false, KEY_LOGIN);
    let o = run_bundled(&lab, "disk-usage", &[("targets", "group:web"), ("threshold", "0")], false);
    let v = ok(&o);
    let rows = v.as_array().unwrap();
    assert!(rows.iter().any(|r| r["host"] == "web1" && r["mount"] == "/"), "{v}");
    assert!(rows.iter().any(|r| r["host"] == "web2"));
    assert!(rows.windows(2).all(|w| w[0]["used_pct"].as_u64() >= w[1]["used_pct"].as_u64()), "fullest first");
    let o = run_bundled(&lab, "disk-usage", &[("targets", "group:web"), ("threshold", "100")], false);
    assert!(ok(&o).as_array().unwrap().iter().all(|r| r["used_pct"] == 100), "{:?}", o.result);
}

#[test]
fn service_restart_plans_then_stops_at_a_failing_canary() {
    let lab = lab(3, true, false, KEY_LOGIN);
    let o = run_bundled(&lab, "service-restart", &[("targets", "group:web"), ("unit", "nginx")], true);
    let v = ok(&o);
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|r| r["planned"] == true && r["command"] == "sudo -n -H -u root -- sh -c 'systemctl restart nginx'")
    );

    // The test account may not sudo to root: the canary fails and no other host is touched.
    let before = lab.fleet.logins();
    let o = run_bundled(&lab, "service-restart", &[("targets", "group:web"), ("unit", "nginx")], false);
    let v = ok(&o);
    assert_eq!(by_host(v, "web1")["status"], "failed");
    assert!(by_host(v, "web1")["error"].as_str().unwrap().contains("sudo"), "{v}");
    assert_eq!(by_host(v, "web2")["status"], "skipped");
    assert_eq!(by_host(v, "web3")["status"], "skipped");
    assert_eq!(lab.fleet.logins() - before, 1, "only the canary connected");

    let o = run_bundled(&lab, "service-restart", &[("targets", "group:web"), ("unit", "x; reboot")], false);
    assert!(err_text(&o).contains("is not a systemd unit name"));
}

#[test]
fn a_run_out_of_wall_time_ends_during_ssh_calls() {
    let lab = lab(2, true, false, KEY_LOGIN);
    let m = format!("{}[limits]\ntimeout = \"2s\"\n", manifest(ALL));
    let t0 = std::time::Instant::now();
    let o = run(&lab.rt, package_with(&m, r#"return function() return ssh.run("group:web", "sleep 30") end"#, &[]));
    assert_eq!(o.status, RunStatus::LimitExceeded, "{:?}", o.result);
    assert!(t0.elapsed() < std::time::Duration::from_secs(6), "{:?}", t0.elapsed());
    // Both commands were in flight: the audit log says so (the tasks are aborted just after).
    let t0 = std::time::Instant::now();
    while actions(&lab.store, &o).len() < 2 && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 2, "{acts:?}");
    for a in acts {
        assert_eq!(a.status.as_deref(), Some("error"));
        assert!(a.data["detail"]["error"].as_str().unwrap().starts_with("abandoned"), "{:?}", a.data);
        assert_eq!(a.data["detail"]["command"], "sleep 30");
    }
}

#[test]
fn secrets_with_quotes_stay_redacted_in_commands_shown_and_audited() {
    let lab = lab(1, true, false, KEY_LOGIN);
    let m = format!("{}[params.pw]\ntype = \"string\"\nsecret = true\nrequired = true\n", manifest(ALL));
    let main = r#"return function(p)
        return { run = ssh.run("web1", "true", { env = { PW = p.pw } }), script = ssh.script("web1", "echo ok", { p.pw }, { env = { PW = p.pw } }) }
    end"#;
    let pw = "S3cr'tPw";
    for dry in [true, false] {
        let mut r = req(package_with(&m, main, &[]));
        r.params_pairs = vec![("pw".into(), pw.into())];
        r.dry_run = dry;
        let o = run_req(&lab.rt, r);
        let v = ok(&o);
        let all = serde_json::to_string(&lab.store.audit().list(&Filter::default()).unwrap()).unwrap() + &v.to_string();
        for leak in ["S3cr", "tPw"] {
            assert!(!all.contains(leak), "dry_run={dry}: {leak} leaked: {all}");
        }
    }
}

#[test]
fn an_applet_that_writes_the_cmdb_cannot_move_hosts_into_its_ssh_scope() {
    let lab = lab(2, true, false, KEY_LOGIN);
    let m = "name = \"t\"\nversion = \"1.0.0\"\n[permissions]\ncmdb = [\"read\", \"write\"]\nssh = { hosts = [\"tag:team=a\"] }\n";
    let main = r#"return function()
        cmdb.set("web2", { tags = { team = "a" } })
        return ssh.run("web2", "true")
    end"#;
    let o = run(&lab.rt, package_with(m, main, &[]));
    assert!(err_text(&o).contains("web2 is outside the applet's ssh hosts"), "{}", err_text(&o));
}

#[test]
fn a_host_cannot_be_its_own_jump_host() {
    let creds = "[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\njump = \"web1\"\n";
    let lab = lab(1, true, false, creds);
    let t0 = std::time::Instant::now();
    let o = lab.run(ALL, r#"return function() return ssh.run("web1", "true") end"#);
    let e = ok(&o)[0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("its own jump host"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
}

/// `opslet run` ends with a code a script can trust when hosts fail: 9 when some of a run's
/// host calls failed, 10 when all did, unless the applet says it handled them.
#[test]
fn a_cli_run_whose_hosts_fail_exits_with_the_partial_or_total_failure_code() {
    let fleet = Fleet::start(1, "web");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
        let cmdb = Cmdb::new(store.clone()).unwrap();
        let web = ["web".to_string()].into();
        let h = &fleet.hosts[0];
        cmdb.put(
            Host {
                name: h.name.clone(),
                address: h.address.clone(),
                port: h.port,
                groups: web,
                host_key: Some(h.host_key.clone()),
                ..Default::default()
            },
            "tester",
        )
        .unwrap();
        // Nothing listens there: the connection is refused.
        let down = Host {
            name: "down1".into(),
            address: fleet.dead_address.clone(),
            port: fleet.port,
            groups: ["web".to_string()].into(),
            ..Default::default()
        };
        cmdb.put(down, "tester").unwrap();
        Secrets::open(store.clone()).unwrap().set("ssh-key", fleet.client_key.as_bytes(), "tester").unwrap();
        store.flush().unwrap();
    }
    std::fs::write(data.join("opslet.toml"), format!("[ssh]\nconnect_timeout = \"3s\"\n{KEY_LOGIN}")).unwrap();
    let applet = dir.path().join("fleet-check");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(
        applet.join("applet.toml"),
        "name = \"fleet-check\"\nversion = \"1.0.0\"\n[permissions]\nssh = { hosts = [\"*\"] }\n\
         [params.sel]\ntype = \"string\"\n[params.handle]\ntype = \"boolean\"\ndefault = false\n",
    )
    .unwrap();
    std::fs::write(
        applet.join("main.lua"),
        "return function(p, ctx) local r = ssh.run(p.sel, 'true') if p.handle then ctx.failures_handled() end return #r end",
    )
    .unwrap();
    let run = |params: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.args(["run", applet.to_str().unwrap(), "-q", "--format", "json"]).env("OPSLET_DATA_DIR", &data).env_remove("OPSLET_CONFIG");
        for p in params {
            c.args(["-p", p]);
        }
        let o = c.output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).trim().to_string(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, out, err) = run(&["sel=web1"]);
    assert_eq!((code, out.as_str()), (Some(0), "1"), "{err}");
    // One host up, one refusing: the result is printed, and the code says part of it failed.
    let (code, out, err) = run(&["sel=group:web"]);
    assert_eq!((code, out.as_str()), (Some(9), "2"), "{err}");
    assert!(err.contains("some of its target calls failed: 1 failed, 0 skipped, 1 ok (ssh.run)"), "{err}");
    let (code, _, err) = run(&["sel=down1"]);
    assert_eq!(code, Some(10), "{err}");
    assert!(err.contains("all of its target calls failed"), "{err}");
    // The applet that deals with its failed hosts says so, and the run is a success.
    let (code, _, err) = run(&["sel=group:web", "handle=true"]);
    assert_eq!(code, Some(0), "{err}");
    // The audit log keeps the tally either way.
    let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
    let ends = store.audit().list(&Filter { kind: Some("run.end".into()), ..Default::default() }).unwrap();
    let tallies: Vec<(Value, Value, Value)> = ends
        .iter()
        .map(|r| (r.data["targets"]["ok"].clone(), r.data["targets"]["failed"].clone(), r.data["targets"]["handled"].clone()))
        .collect();
    assert_eq!(
        tallies,
        [
            (1.into(), 0.into(), false.into()),
            (1.into(), 1.into(), false.into()),
            (0.into(), 1.into(), false.into()),
            (1.into(), 1.into(), true.into())
        ]
    );
}
