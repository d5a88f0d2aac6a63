//! End-to-end tests of the `opslet` binary: output contracts, exit codes, errors, audit, watch.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.env("OPSLET_DATA_DIR", self.data()).env_remove("OPSLET_CONFIG").current_dir(self.dir.path());
        c
    }

    fn opslet(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Writes an applet folder and returns its path.
    fn applet(&self, name: &str, manifest_extra: &str, main: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest_extra}")).unwrap();
        std::fs::write(dir.join("main.lua"), main).unwrap();
        dir
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn new_check_run_roundtrip() {
    let env = Env::new();
    let o = env.opslet(&["new", "hello-world"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.opslet(&["check", "hello-world"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok: hello-world@0.1.0"), "{}", stdout(&o));
    let o = env.opslet(&["run", "hello-world", "--param", "target=ops"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("hello, ops"), "{}", stdout(&o));
    assert!(stderr(&o).contains("[info] hello from hello-world@0.1.0"), "logs go to stderr: {}", stderr(&o));
    let o = env.opslet(&["new", "hello-world"]);
    assert_eq!(o.status.code(), Some(3), "refuses to overwrite");
    let o = env.opslet(&["new", "Bad_Name"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("lowercase"), "{}", stderr(&o));
}

#[test]
fn json_format_prints_exactly_one_document() {
    let env = Env::new();
    let dir = env.applet("rec", "", "return function() log.info('to stderr') print('also stderr') return { { host = 'web01', ok = true }, { host = 'web02', ok = false } } end");
    let o = env.opslet(&["run", s(&dir), "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    assert_eq!(v, json!([{ "host": "web01", "ok": true }, { "host": "web02", "ok": false }]));
    assert!(stderr(&o).contains("also stderr"));

    let o = env.opslet(&["run", s(&dir), "--format", "yaml", "-q"]);
    assert!(stdout(&o).contains("- host: web01"), "{}", stdout(&o));
    assert!(stderr(&o).is_empty(), "--quiet hides logs: {}", stderr(&o));

    let o = env.opslet(&["run", s(&dir)]);
    let table = stdout(&o);
    assert!(table.contains("host") && table.contains("web02") && table.contains("false"), "{table}");

    let failing = env.applet("fails", "", "return function() error('nope') end");
    let o = env.opslet(&["run", s(&failing), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    // A failed run prints what went wrong as one JSON document (it printed `null` before).
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&err["error"]["kind"], &err["error"]["exit_code"], &err["error"]["status"]),
        (&json!("applet_error"), &json!(1), &json!("error"))
    );
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"), "{err}");
    // So does one that never started, and bad params name each field.
    let o = env.opslet(&["run", "no-such-applet", "--format", "json"]);
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((o.status.code(), &err["error"]["kind"]), (Some(3), &json!("not_found")), "{err}");
    let typed =
        env.applet("typed", "[params.n]\ntype = \"integer\"\n[params.m]\ntype = \"integer\"\n", "return function(p) return p.n end");
    let o = env.opslet(&["run", s(&typed), "--format", "json", "-p", "n=x", "-p", "m=y"]);
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    let fields: Vec<&str> = err["error"]["params"].as_array().unwrap().iter().map(|f| f["param"].as_str().unwrap()).collect();
    assert_eq!((o.status.code(), fields), (Some(3), vec!["n", "m"]), "{err}");
}

#[test]
fn exit_codes_and_errors_point_at_applet_files() {
    let env = Env::new();
    let dir = env.applet(
        "boom",
        "[params.n]\ntype = \"integer\"\nrequired = true\n",
        "local util = 1\n\nreturn function(p)\n  if p.n > 1 then\n    error('too big: ' .. p.n)\n  end\n  while true do end\nend\n",
    );
    let o = env.opslet(&["run", s(&dir), "-p", "n=5"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("main.lua:5: too big: 5"), "{err}");
    assert!(!err.contains(s(env.dir.path())), "errors never show host paths: {err}");

    let o = env.opslet(&["run", s(&dir), "-p", "n=abc"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("param `n`: `abc` is not an integer"), "{}", stderr(&o));
    let o = env.opslet(&["run", s(&dir), "--params-json", "[1]"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("`--params-json`: must be a JSON object"));

    std::fs::write(env.data().join("opslet.toml"), "[limits]\ncpu = \"200ms\"\n").unwrap();
    let o = env.opslet(&["run", s(&dir), "-p", "n=1"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("cpu limit of 200ms exceeded"), "{}", stderr(&o));

    std::fs::write(dir.join("main.lua"), "return function()\n  local = 1\nend\n").unwrap();
    let o = env.opslet(&["check", s(&dir)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("main.lua:2:"), "{}", stderr(&o));

    std::fs::write(dir.join("applet.toml"), "name = \"boom\"\nversion = \"1.0.0\"\ntimeout = \"5s\"\n").unwrap();
    let o = env.opslet(&["check", s(&dir)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("applet.toml:3:1: unknown field `timeout`"), "{}", stderr(&o));

    let o = env.opslet(&["run", "/nonexistent/applet"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("cannot open applet folder"), "{}", stderr(&o));
    let o = env.opslet(&["run"]);
    assert_eq!(o.status.code(), Some(2), "usage errors");
}

#[test]
fn bad_config_is_named_with_line() {
    let env = Env::new();
    let dir = env.applet("cfg", "", "return function() return 1 end");
    let cfg = env.dir.path().join("bad.toml");
    std::fs::write(&cfg, "[limits]\ncpu = \"30s\"\nmemroy = \"1GiB\"\n").unwrap();
    let o = env.opslet(&["--config", s(&cfg), "run", s(&dir)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("bad.toml:3:1") && stderr(&o).contains("memroy"), "{}", stderr(&o));
    std::fs::write(&cfg, "[limits]\ncpu = \"fast\"\n").unwrap();
    let o = env.opslet(&["--config", s(&cfg), "run", s(&dir)]);
    assert!(stderr(&o).contains("limits.cpu"), "{}", stderr(&o));
}

#[test]
fn audit_list_show_verify_and_tamper() {
    let env = Env::new();
    let dir = env.applet("audited", "[params.who]\ntype = \"string\"\ndefault = \"x\"\n", "return function(p) return p.who end");
    for who in ["a", "b"] {
        assert!(env.opslet(&["run", s(&dir), "-p", &format!("who={who}")]).status.success());
    }
    let o = env.opslet(&["audit", "list", "--format", "json"]);
    let recs: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[1]["status"], json!("ok"));
    assert_eq!(recs[0]["data"]["params"], json!({ "who": "a" }));
    let run_id = recs[2]["run_id"].as_str().unwrap().to_string();

    let o = env.opslet(&["audit", "show", &run_id]);
    let shown: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown.len(), 2);
    let o = env.opslet(&["audit", "list", "--status", "ok", "--applet", "audited", "--since", "1h", "--format", "json"]);
    assert_eq!(serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap().len(), 2);

    let o = env.opslet(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("intact: 4 records"), "{}", stdout(&o));

    // Edit record 1 behind opslet's back.
    {
        let store = opslet::store::Store::open(&env.data(), Duration::from_secs(5)).unwrap();
        let tree = store.audit().raw_tree();
        let mut rec: Value = serde_json::from_slice(&tree.get(opslet::store::audit::record_key(1)).unwrap().unwrap()).unwrap();
        rec["status"] = json!("error");
        tree.insert(opslet::store::audit::record_key(1), serde_json::to_vec(&rec).unwrap()).unwrap();
        store.flush().unwrap();
    }
    let o = env.opslet(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(7));
    assert!(stdout(&o).contains("BROKEN at record 1") && stdout(&o).contains("edited"), "{}", stdout(&o));
}

#[test]
fn killed_run_shows_as_interrupted() {
    let env = Env::new();
    let dir = env.applet("hang", "", "return function() log.info('started') while true do end end");
    let mut child = env.cmd().args(["run", s(&dir)]).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("started"), "{first}");
    child.kill().unwrap(); // SIGKILL: no chance to record the end
    child.wait().unwrap();
    let o = env.opslet(&["audit", "list", "--format", "json"]);
    let recs: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["kind"], json!("run.start"));
    assert_eq!(recs[1]["kind"], json!("run.end"));
    assert_eq!(recs[1]["status"], json!("interrupted"));
    assert_eq!(recs[1]["run_id"], recs[0]["run_id"]);
    assert!(env.opslet(&["audit", "verify"]).status.success());
}

#[test]
fn watch_reruns_on_change() {
    let env = Env::new();
    let dir = env.applet("watched", "", "return function() return 'first' end");
    let mut child =
        env.cmd().args(["run", s(&dir), "--watch", "--format", "json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |seen: &mut String, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; saw {seen}");
            if let Ok(chunk) = rx.recv_timeout(left) {
                seen.push_str(&chunk);
            }
        }
    };
    wait_for(&mut seen, "\"first\"");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("main.lua"), "return function() return 'second' end").unwrap();
    wait_for(&mut seen, "\"second\"");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn meta_writes_type_definitions() {
    let env = Env::new();
    let out = env.dir.path().join("meta");
    let o = env.opslet(&["meta", "--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(out.join("opslet.d.luau")).unwrap();
    assert!(text.contains("declare json"));
}

#[test]
fn config_is_only_read_by_commands_that_use_it_and_actor_is_not_from_env() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    std::fs::write(env.data().join("opslet.toml"), "this is not toml").unwrap();
    assert!(env.opslet(&["new", "fine"]).status.success(), "a broken config does not stop `new`");
    let o = env.opslet(&["run", "fine"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("invalid config"), "{}", stderr(&o));
    std::fs::remove_file(env.data().join("opslet.toml")).unwrap();

    let o = env.cmd().args(["run", "fine", "-q"]).env("USER", "mallory").env("LOGNAME", "mallory").output().unwrap();
    assert!(o.status.success());
    let o = env.opslet(&["audit", "list", "--format", "json"]);
    let recs: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(recs[0]["actor"], json!("mallory"), "the caller comes from the uid, not $USER");

    let o = env.opslet(&["audit", "show", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.opslet(&["audit", "show", "01a2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least its first 8 characters"), "{}", stderr(&o));
    let o = env.opslet(&["audit", "show", "ffffffff-none"]);
    assert_eq!(o.status.code(), Some(3));
    let o = env.opslet(&["run", "fine", "-p", "novalue"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn applet_text_cannot_drive_the_terminal() {
    let env = Env::new();
    let dir = env.applet(
        "ansi",
        "",
        "return function() log.info('ok\\n\\27[1A\\27[2K\\rerror: fake host message') return { note = '\\27]0;title\\7x' } end",
    );
    let o = env.opslet(&["run", s(&dir)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(!err.contains('\u{1b}') && !out.contains('\u{1b}'), "raw escape sequences reached the terminal");
    assert!(err.contains("[info] ok\\n\\u{1b}[1A"), "{err}");
    assert!(!err.lines().any(|l| l.starts_with("error: fake")), "{err}");
}

#[test]
fn every_run_end_reaches_disk_before_the_process_exits() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    std::fs::write(env.data().join("opslet.toml"), "[audit]\nsync = false\n").unwrap();
    let dir = env.applet("quick", "", "return function() return 1 end");
    for _ in 0..5 {
        assert!(env.opslet(&["run", s(&dir), "-q"]).status.success());
    }
    let o = env.opslet(&["audit", "list", "--kind", "run.end", "--format", "json"]);
    let ends: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let statuses: Vec<&str> = ends.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ok"; 5], "a run's end was lost: {statuses:?}");
}

#[test]
fn registry_publish_search_run_yank_rollback_export_import() {
    let env = Env::new();
    let v1 = env.applet("greeter", "description = \"Say hello to a team\"\ntags = [\"demo\"]\n", "return function() return 'v1' end");
    let o = env.opslet(&["publish", s(&v1), "-m", "first cut"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("published greeter@1.0.0"));
    std::fs::write(v1.join("applet.toml"), "name = \"greeter\"\nversion = \"1.1.0\"\ndescription = \"Say hello to a team\"\ntags = [\"demo\"]\n[permissions]\nsnmp = [\"read\"]\n").unwrap();
    std::fs::write(v1.join("main.lua"), "return function() return 'v2' end").unwrap();
    let o = env.opslet(&["publish", s(&v1)]);
    assert_eq!(o.status.code(), Some(3), "snmp is no module of opslet: {}", stderr(&o));
    std::fs::write(
        v1.join("applet.toml"),
        "name = \"greeter\"\nversion = \"1.1.0\"\ndescription = \"Say hello to a team\"\ntags = [\"demo\"]\n",
    )
    .unwrap();
    assert!(env.opslet(&["publish", s(&v1)]).status.success());

    let o = env.opslet(&["search", "helo", "--format", "json"]);
    let hits: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hits[0]["name"], json!("greeter"));

    // Run from the registry (from another directory, so no folder shadows the name).
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = |args: &[&str]| env.cmd().current_dir(&elsewhere).args(args).output().unwrap();
    let o = run(&["run", "greeter", "--format", "json", "-q"]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!("v2"));
    let o = run(&["run", "greeter@1.0.0", "--format", "json", "-q"]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!("v1"));

    assert!(env.opslet(&["yank", "greeter@1.1.0"]).status.success());
    let o = run(&["run", "greeter", "-q"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("yanked") && stderr(&o).contains("pass --allow-yanked"), "{}", stderr(&o));
    let o = run(&["run", "greeter", "--allow-yanked", "--format", "json", "-q"]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!("v2"));
    let o = env.opslet(&["rollback", "greeter"]);
    assert!(stdout(&o).contains("rolled back from 1.1.0 to 1.0.0"), "{}", stdout(&o));
    let o = run(&["run", "greeter", "--format", "json", "-q"]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!("v1"));

    // Runs record the exact hash they ran.
    let o = env.opslet(&["audit", "list", "--kind", "run.start", "--format", "json"]);
    let starts: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let o = env.opslet(&["versions", "greeter", "--format", "json"]);
    let versions: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(starts.last().unwrap()["data"]["hash"], versions[0]["hash"]);

    let o = env.opslet(&["show", "greeter@1.1.0"]);
    assert!(stdout(&o).contains("YANKED") && stdout(&o).contains("sha256:"), "{}", stdout(&o));

    let bundle = env.dir.path().join("greeter.bundle");
    assert!(env.opslet(&["export", "greeter@1.0.0", "-o", s(&bundle)]).status.success());
    let other = Env::new();
    let o = other.opslet(&["import", s(&bundle), "--allow-unsigned"]);
    assert!(stdout(&o).contains("imported greeter@1.0.0"), "{}", stderr(&o));
    let o = other.opslet(&["list", "--format", "json"]);
    assert_eq!(serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()[0]["name"], json!("greeter"));

    for (args, code) in
        [(vec!["run", "nope"], 3), (vec!["run", "Bad_Name"], 2), (vec!["promote", "greeter"], 2), (vec!["versions", "nope"], 3)]
    {
        assert_eq!(run(&args).status.code(), Some(code), "{args:?}: {}", stderr(&run(&args)));
    }
}

#[test]
fn netdev_lists_profiles_and_shows_and_diffs_stored_backups() {
    let env = Env::new();
    {
        let store = opslet::store::Store::open(&env.data(), Duration::from_secs(5)).unwrap();
        let c = opslet::cmdb::device_configs::DeviceConfigs::open(&store).unwrap();
        c.put("sw1", "hostname sw1\n!\nvlan 10\n", Some("run-1"), "alice").unwrap();
        c.put("sw1", "hostname sw1\n!\nvlan 10\nvlan 20\n", Some("run-2"), "bob").unwrap();
    }
    let out = env.opslet(&["netdev", "profiles"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for p in ["cisco_ios", "huawei_vrp", "hp_comware", "juniper_junos", "display current-configuration"] {
        assert!(text.contains(p), "{text}");
    }
    let out = env.opslet(&["netdev", "backups", "sw1", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().iter().map(|b| b["version"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(v[1]["user"], "bob");
    let out = env.opslet(&["netdev", "show", "sw1", "--version", "1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hostname sw1\n!\nvlan 10\n");
    let out = env.opslet(&["netdev", "diff", "sw1"]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("--- sw1 v1") && diff.contains("+vlan 20"), "{diff}");
    let out = env.opslet(&["netdev", "show", "sw9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stored configuration of `sw9`"));
    let out = env.opslet(&["netdev", "diff", "sw1", "1", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`sw1` has no version 7 (versions 1-2)"));
}

#[test]
fn config_items_set_show_diff_history_list_and_status() {
    let env = Env::new();
    let dir = env.dir.path().join("items");
    std::fs::create_dir_all(&dir).unwrap();
    let item = |port: u32| {
        format!(
            "name = \"redis\"\npath = \"/etc/redis/redis.conf\"\nmode = \"0640\"\nowner = \"redis\"\nvalidate = \"redis-server --test-config {{file}}\"\n\
             reload = \"systemctl restart redis\"\ntemplate = \"port {{{{ port }}}}\\nmaxmemory {{{{ maxmemory }}}}\\n\"\n\
             [values]\nport = {port}\nmaxmemory = \"256mb\"\n[values.env.prod]\nmaxmemory = \"8gb\"\n"
        )
    };
    std::fs::write(dir.join("redis.toml"), item(6379)).unwrap();
    let f = dir.join("redis.toml");
    let out = env.opslet(&["config", "set", f.to_str().unwrap(), "-m", "redis for everyone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("redis v1 stored"));
    let out = env.opslet(&["config", "set", f.to_str().unwrap(), "-m", "again"]);
    assert!(stderr(&out).contains("redis is unchanged (still v1)"));
    std::fs::write(&f, item(6380)).unwrap();
    let out = env.opslet(&["config", "set", f.to_str().unwrap(), "-m", "move the port"]);
    assert!(stdout(&out).contains("-port = 6379") && stdout(&out).contains("+port = 6380"), "{}", stdout(&out));
    let out = env.opslet(&["config", "diff", "redis"]);
    assert!(stdout(&out).contains("--- redis v1") && stdout(&out).contains("+port = 6380"), "{}", stdout(&out));
    let out = env.opslet(&["config", "history", "redis", "--format", "json"]);
    let h: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[1]["message"], "move the port");
    let out = env.opslet(&["config", "show", "redis", "--version", "1"]);
    assert!(stdout(&out).contains("# redis v1 by") && stdout(&out).contains("port = 6379"), "{}", stdout(&out));
    let out = env.opslet(&["config", "list", "--format", "json"]);
    let l: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(l[0]["name"], "redis");
    assert_eq!(l[0]["version"], 2);
    // Rendered for a host and an environment.
    assert!(env.opslet(&["cmdb", "host", "add", "cache1", "--address", "10.0.0.5", "--tag", "env=prod"]).status.success());
    let out = env.opslet(&["config", "show", "redis", "--host", "cache1"]);
    assert_eq!(stdout(&out), "port 6380\nmaxmemory 8gb\n");
    let out = env.opslet(&["config", "show", "redis", "--host", "cache1", "--env", "dev"]);
    assert_eq!(stdout(&out), "port 6380\nmaxmemory 256mb\n");
    // Nothing published yet: status lists no hosts and succeeds.
    let out = env.opslet(&["config", "status", "redis", "--format", "json"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "[]");
    // Bad input names the file and the field.
    std::fs::write(&f, item(1).replace("/etc/redis/redis.conf", "redis.conf")).unwrap();
    let out = env.opslet(&["config", "set", f.to_str().unwrap(), "-m", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("redis.toml: path `redis.conf`: give an absolute file path"), "{}", stderr(&out));
    let out = env.opslet(&["config", "diff", "redis", "1", "9"]);
    assert!(stderr(&out).contains("config item `redis` has no version 9 (versions 1-2)"), "{}", stderr(&out));
    let out = env.opslet(&["config", "show", "nginx"]);
    assert!(stderr(&out).contains("no config item `nginx`"), "{}", stderr(&out));
}

#[test]
fn an_undefined_template_value_is_named_by_config_set_and_config_show() {
    let env = Env::new();
    let items = env.dir.path().join("items");
    std::fs::create_dir_all(&items).unwrap();
    std::fs::write(
        items.join("app.toml"),
        "name = \"app\"\npath = \"/etc/app.conf\"\ntemplate = \"\"\"\nport = {{ port }}\nname = {{ nope }}\n\"\"\"\n[values]\nport = 80\n",
    )
    .unwrap();
    // Before any host is involved: a value no layer defines.
    let o = env.opslet(&["config", "set", "items/app.toml", "-m", "first"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: `nope` (used at items/app.toml, template line 2) is defined by no layer of [values]"),
        "{}",
        stderr(&o)
    );
    // For a host: the value, the item's template and line, and the layers searched.
    let o = env.opslet(&["cmdb", "host", "add", "web1", "--address", "192.0.2.1", "--group", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.opslet(&["config", "show", "app", "--host", "web1", "--env", "dev"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "app v1 for web1 (dev): undefined value `nope` at items/app.toml, template line 2 (for web1 in dev, searched [values], \
             [values.env.dev] (not in the item), [values.group.web] (not in the item))"
        ),
        "{}",
        stderr(&o)
    );
    // Defined for dev only: no warning, and the render works there.
    std::fs::write(
        items.join("app.toml"),
        "name = \"app\"\npath = \"/etc/app.conf\"\ntemplate = \"\"\"\nport = {{ port }}\nname = {{ nope }}\n\"\"\"\n[values]\nport = 80\n[values.env.dev]\nnope = \"x\"\n",
    )
    .unwrap();
    let o = env.opslet(&["config", "set", "items/app.toml", "-m", "define it for dev"]);
    assert!(o.status.success() && !stderr(&o).contains("warning"), "{}", stderr(&o));
    let o = env.opslet(&["config", "show", "app", "--host", "web1", "--env", "dev"]);
    assert_eq!(stdout(&o), "port = 80\nname = x\n", "{}", stderr(&o));
}

#[test]
fn a_folder_that_shadows_a_published_applet_is_named_and_the_audit_log_tells_them_apart() {
    let env = Env::new();
    let dir = env.applet("greeter", "", "return function() return 'folder' end");
    assert!(env.opslet(&["publish", s(&dir)]).status.success());
    // `greeter` is both the folder here and the published applet: the folder runs, and says so.
    let o = env.opslet(&["run", "greeter", "--format", "json"]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!("folder"));
    assert!(stderr(&o).contains("note: running the folder ./greeter, not the published applet greeter"), "{}", stderr(&o));
    // Named as a path, or by version, nothing is shadowed and nothing is said.
    let o = env.opslet(&["run", "./greeter", "-q"]);
    assert!(o.status.success() && !stderr(&o).contains("note:"), "{}", stderr(&o));
    let o = env.opslet(&["run", "greeter@1.0.0", "-q"]);
    assert!(o.status.success() && !stderr(&o).contains("note:"), "{}", stderr(&o));
    let audit: Value = serde_json::from_slice(&env.opslet(&["audit", "list", "--kind", "run.start", "--format", "json"]).stdout).unwrap();
    let sources: Vec<Value> = audit.as_array().unwrap().iter().map(|r| r["data"]["source"].clone()).collect();
    let folder = std::fs::canonicalize(&dir).unwrap().display().to_string();
    assert_eq!(
        sources,
        [
            json!({"kind": "folder", "path": folder}),
            json!({"kind": "folder", "path": folder}),
            json!({"kind": "registry", "reference": "greeter@1.0.0"}),
        ]
    );
}

#[test]
fn completions_complete_in_a_real_bash_and_the_man_page_names_every_command() {
    let env = Env::new();
    let o = env.opslet(&["completions", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let script = env.dir.path().join("opslet.bash");
    std::fs::write(&script, &o.stdout).unwrap();
    // What bash offers after `opslet pub<TAB>` and `opslet cmdb host <TAB>`.
    let complete = |words: &str, cword: usize| {
        let prog = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _opslet opslet \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let o = Command::new("bash").args(["-c", &prog]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).split_whitespace().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(complete("opslet pub", 1), ["publish"]);
    let host = complete("opslet cmdb host ''", 3);
    assert!(["add", "set", "rm", "list", "show"].iter().all(|c| host.contains(&c.to_string())), "{host:?}");
    let o = env.opslet(&["completions", "zsh"]);
    assert!(stdout(&o).starts_with("#compdef opslet"), "{}", stdout(&o));

    let o = env.opslet(&["man"]);
    let man = stdout(&o);
    assert!(o.status.success() && man.contains(".TH opslet 1"), "{man}");
    for command in ["run", "publish", "serve", "audit", "cmdb", "completions"] {
        assert!(
            man.contains(&format!("opslet\\-{command}")) || man.contains(&format!("\\fB{command}\\fR")),
            "{command} missing from the man page"
        );
    }
    // Neither needs a data dir.
    assert!(!env.data().exists());
}

/// Runs `opslet ARGS` on a terminal of its own (a pseudo-terminal it controls), typing `input`
/// line by line after each prompt; returns everything the terminal showed.
fn on_a_terminal(env: &Env, args: &[&str], input: &[&str]) -> (i32, String) {
    on_a_terminal_of(env, args, input, 80)
}

/// `on_a_terminal` on a terminal `cols` columns wide (0: one that reports no width).
fn on_a_terminal_of(env: &Env, args: &[&str], input: &[&str], cols: u16) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize { ws_row: 24, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty fills in two descriptors it opens.
    assert_eq!(unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) }, 0);
    let fd = |n| {
        // SAFETY: a descriptor openpty opened, duplicated for each stream.
        Stdio::from(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(libc::dup(n)) })
    };
    let mut cmd = env.cmd();
    cmd.args(args).stdin(fd(slave)).stdout(fd(slave)).stderr(fd(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The command holds copies of the slave: gone, the master reads EOF when the child ends.
    drop(cmd);
    // SAFETY: closing our copy of the slave; the child has its own.
    unsafe { libc::close(slave) };
    // SAFETY: the master descriptor is ours alone from here on.
    let mut term = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master) };
    let mut shown = Vec::new();
    let mut buf = [0u8; 1024];
    let read_until = |term: &mut std::fs::File, shown: &mut Vec<u8>, buf: &mut [u8], want: &str| {
        while !String::from_utf8_lossy(shown).ends_with(want) {
            match term.read(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => shown.extend_from_slice(&buf[..n]),
            }
        }
    };
    for line in input {
        read_until(&mut term, &mut shown, &mut buf, ": ");
        // Type once the program has turned echo off, as a person would after the prompt.
        let t0 = std::time::Instant::now();
        loop {
            // SAFETY: termios is plain data that tcgetattr fills in.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: master is an open terminal descriptor.
            unsafe { libc::tcgetattr(master, &mut t) };
            if t.c_lflag & libc::ECHO == 0 || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::io::Write::write_all(&mut term, format!("{line}\n").as_bytes()).unwrap();
        // The next prompt comes after the line is taken.
        shown.extend_from_slice(b"|");
    }
    let status = child.wait().unwrap();
    loop {
        match term.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => shown.extend_from_slice(&buf[..n]),
        }
    }
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&shown).into_owned())
}

#[test]
fn a_password_typed_at_a_terminal_is_not_shown_and_must_be_typed_twice() {
    let env = Env::new();
    assert!(env.opslet(&["user", "add", "ada", "--role", "admin"]).status.success());
    let (code, shown) = on_a_terminal(&env, &["user", "passwd", "ada"], &["correct horse battery", "correct horse battery"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("new password for ada: ") && shown.contains("again: ") && shown.contains("password set for ada"), "{shown}");
    assert!(!shown.contains("horse"), "the password was echoed: {shown}");
    let (code, shown) = on_a_terminal(&env, &["user", "passwd", "ada"], &["correct horse battery", "correct horse battery!"]);
    assert_eq!(code, 2, "{shown}");
    assert!(shown.contains("the two passwords differ; nothing changed"), "{shown}");
    let audit = stdout(&env.opslet(&["audit", "list", "--kind", "auth.password.set", "--format", "json"]));
    assert_eq!(serde_json::from_str::<Value>(&audit).unwrap().as_array().unwrap().len(), 1, "{audit}");
}

#[test]
fn every_bad_param_is_reported_at_once_host_selectors_included() {
    let env = Env::new();
    assert!(env.opslet(&["cmdb", "host", "add", "web01", "--address", "192.0.2.10", "--group", "web"]).status.success());
    let dir = env.applet(
        "restart",
        "[params.hosts]\ntype = \"host-selector\"\n[params.count]\ntype = \"integer\"\n",
        "return function(p) return p.count end",
    );
    // A selector that picks nothing and a count that is not a number: both, in one answer.
    let o = env.opslet(&["run", s(&dir), "-p", "hosts=group:db", "-p", "count=many", "--format", "json"]);
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    let fields: Vec<(&str, &str)> =
        err["error"]["params"].as_array().unwrap().iter().map(|f| (f["param"].as_str().unwrap(), f["message"].as_str().unwrap())).collect();
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(fields.iter().any(|(p, m)| *p == "count" && m.contains("not an integer")), "{fields:?}");
    assert!(fields.iter().any(|(p, m)| *p == "hosts" && m.contains("matches no host")), "{fields:?}");
}

#[test]
fn tables_fit_the_terminal_and_stay_whole_on_one_that_reports_no_width() {
    let env = Env::new();
    let dir = env.applet(
        "wide",
        "",
        "return function() return { { host = 'web01', message = 'a long message that goes on and on about the disks of web01' } } end",
    );
    let longest = |shown: &str| shown.lines().map(|l| l.trim_end().chars().count()).max().unwrap_or(0);
    // 0 columns (a serial console, some CI runners): whole cells, not a letter per line.
    let (code, shown) = on_a_terminal_of(&env, &["run", s(&dir), "-q"], &[], 0);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("a long message that goes on and on about the disks of web01"), "{shown}");
    assert!(shown.lines().count() < 8, "{shown}");
    // 50 columns: the table wraps to fit.
    let (code, shown) = on_a_terminal_of(&env, &["run", s(&dir), "-q"], &[], 50);
    assert_eq!(code, 0, "{shown}");
    assert!(longest(&shown) <= 50 && shown.contains("web01"), "{shown}");
}

#[test]
fn listing_commands_take_format_json_and_yaml() {
    let env = Env::new();
    let greeter = env.applet("greeter", "", "return function() return 1 end");
    assert!(env.opslet(&["publish", s(&greeter)]).status.success());
    assert!(env.opslet(&["user", "add", "ola", "--role", "operator"]).status.success());
    assert!(env.opslet(&["grant", "add", "ola", "greet*"]).status.success());
    assert!(env.opslet(&["hook", "add", "on-alert", "--applet", "greeter"]).status.success());
    assert!(
        env.cmd()
            .args(["secret", "set", "db"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"hunter22")?;
                drop(c.stdin.take());
                c.wait()
            })
            .unwrap()
            .success()
    );
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let o = env.opslet(&all);
        assert!(o.status.success(), "{:?}: {}", args, stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&o)))
    };
    assert_eq!(json(&["grant", "list"]), json!([{ "subject": "ola", "pattern": "greet*" }]));
    let hooks = json(&["hook", "list"]);
    assert_eq!((&hooks[0]["name"], &hooks[0]["applet"]), (&json!("on-alert"), &json!("greeter")));
    assert!(hooks[0].get("secret").is_none(), "a hook's secret is never listed: {hooks}");
    let secrets = json(&["secret", "list"]);
    assert_eq!(secrets[0]["name"], "db");
    assert!(!secrets.to_string().contains("hunter22"));
    let verify = json(&["audit", "verify"]);
    assert_eq!((&verify["intact"], &verify["first_bad"]), (&json!(true), &Value::Null));
    assert!(verify["records"].as_u64().unwrap() >= 4, "{verify}");
    let profiles = json(&["netdev", "profiles"]);
    assert!(profiles.as_array().unwrap().iter().any(|p| p["profile"] == "cisco_ios"), "{profiles}");
    let o = env.opslet(&["grant", "list", "--format", "yaml"]);
    assert!(stdout(&o).contains("subject: ola"), "{}", stdout(&o));

    // check and publish too, a failed check included.
    let other = env.applet("other", "", "return function() return 2 end");
    let checked = json(&["check", s(&other)]);
    assert_eq!((&checked["ok"], &checked["applet"]), (&json!(true), &json!("other@1.0.0")));
    let published = json(&["publish", s(&other)]);
    assert_eq!((&published["applet"], &published["new"]), (&json!("other"), &json!(true)));
    assert_eq!(json(&["publish", s(&other)])["new"], json!(false));
    let broken = env.applet("broken", "", "return function( end");
    let o = env.opslet(&["check", s(&broken), "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((o.status.code(), &v["ok"], &v["error"]["kind"]), (Some(3), &json!(false), &json!("invalid_applet")), "{v}");
    assert_eq!(v["error"]["diagnostics"][0]["file"], "main.lua", "{v}");
}
