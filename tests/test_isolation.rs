//! Attacks on `opslet test` and the tests `opslet publish` runs: in a test nothing an
//! applet's host modules do may leave the process (every module's network I/O goes through
//! `kit::exchange::call`, which a fake or a transcript answers), the test code is sandboxed and
//! limited like an applet, and no stored secret, kv value, cmdb host or config item of the data
//! dir reaches a test.
//!
//! The "outside world" here is a trap on loopback: a TCP listener and a UDP socket in this test
//! process that every host, BMC, device and connection of the test's cmdb and of opslet.toml
//! points at, with real-looking logins whose secrets are stored in the data dir. Any connection
//! or datagram the trap sees is a call that bypassed the exchange.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A TCP and a UDP port on 127.0.0.1 that count (and log) every connection and datagram.
struct Trap {
    tcp: u16,
    udp: u16,
    hits: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tcp, udp) = (listener.local_addr().unwrap().port(), sock.local_addr().unwrap().port());
        let hits = Arc::new(AtomicUsize::new(0));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (h, l) = (Arc::clone(&hits), Arc::clone(&log));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let (h, l) = (Arc::clone(&h), Arc::clone(&l));
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = [0u8; 200];
                    let n = s.read(&mut buf).unwrap_or(0);
                    l.lock().push(format!("tcp from {:?}: {:?}", s.peer_addr().ok(), String::from_utf8_lossy(&buf[..n])));
                    let _ = h;
                });
            }
        });
        let (h, l) = (Arc::clone(&hits), Arc::clone(&log));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                h.fetch_add(1, Ordering::SeqCst);
                l.lock().push(format!("udp from {from}: {n} bytes"));
            }
        });
        Trap { tcp, udp, hits, log }
    }

    fn assert_untouched(&self, during: &str, out: &str) {
        // Give a late connection a moment to show up.
        std::thread::sleep(Duration::from_millis(300));
        let n = self.hits.load(Ordering::SeqCst);
        assert_eq!(n, 0, "{during}: {n} connection(s) left the process: {:#?}\n--- output:\n{out}", self.log.lock());
    }
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

fn opslet(data: &Path, cwd: &Path, args: &[&str]) -> Output {
    opslet_within(data, cwd, args, Duration::from_secs(120))
}

/// Runs the binary, killing it (by its pid) when it takes longer than `limit`: a hang is a
/// finding, not a stuck test run.
fn opslet_within(data: &Path, cwd: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(args)
        .current_dir(cwd)
        .env("OPSLET_DATA_DIR", data)
        .env_remove("OPSLET_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "opslet {args:?} did not finish within {limit:?} (killed): {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn set_secret(data: &Path, name: &str, value: &str) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["secret", "set", name])
        .env("OPSLET_DATA_DIR", data)
        .env_remove("OPSLET_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), value.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "secret set {name}: {}", text(&o));
}

/// The value of each stored secret: nothing a test prints may hold it.
fn secret_value(name: &str) -> String {
    format!("TOPSECRET-{name}-7f3a9c")
}

const SECRETS: [&str; 6] = ["ssh-pass", "net-pass", "bmc-pass", "zbx-pass", "es-pass", "tpl-secret"];

/// A data dir whose opslet.toml has a real-looking login or connection for every module, all
/// pointing at the trap, and whose secrets are stored.
fn data_dir(tmp: &Path, trap: &Trap, extra: &str) -> PathBuf {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (t, u) = (trap.tcp, trap.udp);
    let toml = format!(
        r#"
[ssh]
first_contact = "accept-and-pin"
connect_timeout = "2s"

[[ssh.credentials]]
hosts = "*"
user = "root"
password_secret = "ssh-pass"

[netdev]
first_contact = "accept-and-pin"
connect_timeout = "2s"

[[netdev.credentials]]
devices = "*"
user = "netops"
password_secret = "net-pass"

[ipmi]
timeout = "2s"

[[ipmi.credentials]]
hosts = "*"
user = "ADMIN"
password_secret = "bmc-pass"
allow_http = true

[zabbix.main]
url = "http://127.0.0.1:{t}/api_jsonrpc.php"
user = "opslet"
password_secret = "zbx-pass"
timeout = "2s"
default = true

[es.logs]
url = "http://127.0.0.1:{t}"
user = "opslet"
password_secret = "es-pass"
timeout = "2s"
default = true

[virt.kvm01]
uri = "qemu+tcp://127.0.0.1:{t}/system"
disk_dirs = ["/tmp"]

[publish]
tests = "warn"
{extra}
"#
    );
    let _ = u;
    std::fs::write(data.join("opslet.toml"), toml).unwrap();
    for s in SECRETS {
        set_secret(&data, s, &secret_value(s));
    }
    data
}

/// hosts.csv: every host, device and BMC at the trap.
fn hosts_csv(trap: &Trap) -> String {
    let (t, u) = (trap.tcp, trap.udp);
    format!(
        "name,address,port,groups,tags\n\
         web1,127.0.0.1,{t},lab,env=prod\n\
         sw1,127.0.0.1,{t},lab,platform=cisco_ios\n\
         n1,127.0.0.1,{t},lab,bmc=127.0.0.1:{u}\n\
         n2,127.0.0.1,{t},lab,bmc=http://127.0.0.1:{t}\n\
         n3,127.0.0.1,{t},lab,bmc=127.0.0.1:{t};bmc_protocol=redfish\n"
    )
}

const PERMISSIONS: &str = r#"
[permissions]
ssh = { hosts = ["*"], files = ["/tmp/*"] }
netdev = { devices = ["*"], actions = ["read", "exec", "config"] }
ipmi = ["read", "power"]
zabbix = ["read", "ack", "maintenance", "call:host.get"]
es = ["read"]
virt = ["read", "write"]
config = ["read", "publish"]
cmdb = ["read"]
"#;

const ITEM: &str = r#"
name = "motd"
path = "/tmp/motd"
template_file = "motd.j2"
reload = "true"
[values]
who = "lab"
"#;

/// Every module call an applet can make, each in a pcall; what failed, by call.
const EVERYTHING: &str = r##"
return function(p)
  local out = {}
  local function try(name, f, ...)
    local ok, r = pcall(f, ...)
    out[name] = ok and "ok" or tostring(r)
  end
  try("ssh.run", ssh.run, "web1", "uname -a")
  try("ssh.script", ssh.script, "web1", "#!/bin/sh\necho hi\n")
  try("ssh.put", ssh.put, "web1", "/tmp/x", "content")
  try("ssh.get", ssh.get, "web1", "/tmp/x")
  try("netdev.run", netdev.run, "sw1", { "show version" })
  try("netdev.configure", netdev.configure, "sw1", { "vlan 42" })
  try("netdev.backup", netdev.backup, "sw1")
  try("netdev.open", function()
    local d = netdev.open("sw1")
    pcall(function() d:prompt() end)
    pcall(function() d:command("show clock") end)
    pcall(function() d:commands({ "show clock" }) end)
    pcall(function() d:config({ "vlan 43" }) end)
    pcall(function() d:expect("show clock", { "#" }) end)
    pcall(function() d:save() end)
    pcall(function() d:close() end)
  end)
  try("netdev.versions", netdev.versions, "sw1")
  for _, h in ipairs({ "n1", "n2", "n3" }) do
    try("ipmi.power " .. h, ipmi.power, h)
    try("ipmi.power_on " .. h, ipmi.power_on, h)
    try("ipmi.sensors " .. h, ipmi.sensors, h)
    try("ipmi.sel " .. h, ipmi.sel, h)
    try("ipmi.boot_device " .. h, ipmi.boot_device, h, "pxe", { once = true })
  end
  try("ipmi.check", ipmi.check, "n*")
  try("zabbix.hosts", zabbix.hosts)
  try("zabbix.problems", zabbix.problems)
  try("zabbix.items", zabbix.items, "web1")
  try("zabbix.history", zabbix.history, "1")
  try("zabbix.ack", zabbix.ack, "1", { message = "x" })
  try("zabbix.maintenance", zabbix.maintenance, { hosts = { "web1" }, duration = "1h" })
  try("zabbix.call", zabbix.call, "host.get", {})
  try("zabbix.connection", function() return zabbix.connection("main").hosts() end)
  try("es.search", es.search, "logs-*")
  try("es.count", es.count, "logs-*")
  try("es.aggs", es.aggs, "logs-*", { a = { terms = { field = "x" } } })
  try("es.scan", es.scan, "logs-*", nil, function() return true end)
  try("es.connection", function() return es.connection("logs").count("logs-*") end)
  try("virt.list", virt.list, "kvm01")
  try("virt.info", virt.info, "kvm01", "vm1")
  try("virt.start", virt.start, "kvm01", "vm1")
  try("virt.create", virt.create, "kvm01", { name = "vm9", disk = "/tmp/vm9.qcow2" })
  try("config.render", config.render, "motd", "web1")
  try("config.publish", config.publish, "motd", "web1")
  try("config.check", config.check, "motd", "web1")
  try("config.publish dry", config.publish, "motd", "web1", { dry_run = true })
  return out
end
"##;

/// The same calls, answered by fakes of every call (so the code after each answer runs too).
const EVERY_FAKE: &str = r#"
local function fake_all()
  fake("ssh.run", { stdout = "Linux" })
  fake("ssh.script", { stdout = "hi" })
  fake("ssh.put", {})
  fake("ssh.get", { content = "x" })
  fake("netdev.command", { output = "Cisco IOS" })
  fake("netdev.config", {})
  fake("netdev.backup", { config = "hostname sw1\n" })
  fake("netdev.expect", { output = "x", matched = 1 })
  fake("netdev.save", {})
  fake("netdev.prompt", { prompt = "sw1#" })
  for _, c in ipairs({ "power", "power_on", "boot_device" }) do fake("ipmi." .. c, { power = "on", before = "off", sent = "on" }) end
  fake("ipmi.sensors", {})
  fake("ipmi.sel", {})
  fake("ipmi.check", { power = "on", sensors = {}, sel = {} })
  fake("zabbix.api", {})
  fake("zabbix.api", { target = "apiinfo.version" }, "7.0.0")
  fake("zabbix.api", { target = "host.get" }, { { hostid = "1", host = "web1", name = "web1" } })
  fake("zabbix.api", { target = "maintenance.create" }, { maintenanceids = { "5" } })
  fake("es.search", { hits = { total = { value = 0 }, hits = {} } })
  fake("es.count", { count = 1 })
  fake("es.aggs", { aggregations = {} })
  fake("es.scan", { hits = { hits = {} } })
  fake("virt.list", {})
  fake("virt.info", { name = "vm1", state = "running" })
  fake("virt.start", true)
  fake("virt.create", true)
  fake("config.publish", { changed = true })
  fake("config.current", { content = "old" })
  fake("config.check", { status = "in-sync" })
end

test("every call, no fakes", function()
  local r, err = run({})
  __result = r
end)

test("every call, all faked", function()
  fake_all()
  run({})
end)

test("every call, replayed from an empty transcript", function()
  replay("tests/empty.json")
  run({})
end)

test("a dry run of every call", function()
  fake_all()
  run({}, { dry_run = true })
end)
"#;

fn everything_applet(tmp: &Path, trap: &Trap) -> PathBuf {
    let dir = tmp.join("everything");
    let manifest = format!("name = \"everything\"\nversion = \"1.0.0\"\n{PERMISSIONS}");
    write(
        &dir,
        &[
            ("applet.toml", &manifest),
            ("main.lua", EVERYTHING),
            ("tests/hosts.csv", &hosts_csv(trap)),
            ("tests/items/motd.toml", ITEM),
            ("tests/items/motd.j2", "hello {{ who }}\n"),
            ("tests/empty.json", r#"{"applet":"everything@1.0.0","hash":"x","params":{},"calls":[]}"#),
            ("tests/all.lua", EVERY_FAKE),
        ],
    );
    dir
}

/// `opslet test` of an applet calling every function of every host module, with no fakes, with
/// fakes of everything, with an empty transcript and in a dry run: not one connection or
/// datagram reaches the hosts, devices, BMCs and servers that opslet.toml and the test's cmdb
/// point at (all at a listener of this test), though their logins and secrets are there.
#[test]
fn no_module_call_leaves_the_process_during_opslet_test() {
    let trap = Trap::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path(), &trap, "");
    let dir = everything_applet(tmp.path(), &trap);
    let o = opslet(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"]);
    let out = text(&o);
    trap.assert_untouched("opslet test", &out);
    // The run happened: the cases ran (they fail on unanswered calls, which is expected).
    assert!(out.contains("every call, all faked"), "{out}");
    for s in SECRETS {
        assert!(!out.contains(&secret_value(s)), "a stored secret reached the test's output: {out}");
    }
}

/// The same applet through `opslet publish` (its tests run first): nothing leaves the process.
#[test]
fn no_module_call_leaves_the_process_during_opslet_publish() {
    let trap = Trap::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path(), &trap, "");
    let dir = everything_applet(tmp.path(), &trap);
    let o = opslet(&data, tmp.path(), &["publish", dir.to_str().unwrap(), "-m", "x"]);
    let out = text(&o);
    trap.assert_untouched("opslet publish", &out);
    assert!(out.contains("tests failed; published anyway"), "{out}");
    for s in SECRETS {
        assert!(!out.contains(&secret_value(s)), "a stored secret reached the publish output: {out}");
    }
}

/// An applet folder named `name` with a trivial main.lua and the test file given.
fn plain_applet(tmp: &Path, name: &str, manifest_extra: &str, main: &str, tests: &str, more: &[(&str, &str)]) -> PathBuf {
    let dir = tmp.join(name);
    let manifest = format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest_extra}");
    write(&dir, &[("applet.toml", &manifest), ("main.lua", main), ("tests/t.lua", tests)]);
    write(&dir, more);
    dir
}

/// `opslet test DIR --format json`: each case's error (None when it passed), and file errors
/// under the file's name.
fn cases(o: &Output) -> std::collections::BTreeMap<String, Option<String>> {
    let out = text(o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut m = std::collections::BTreeMap::new();
    for a in summary["applets"].as_array().unwrap() {
        if !a["error"].is_null() {
            m.insert("<applet>".into(), Some(a["error"].to_string()));
            continue;
        }
        for f in a["report"]["files"].as_array().unwrap() {
            if let Some(e) = f["error"].as_str() {
                m.insert(f["file"].as_str().unwrap().to_string(), Some(e.to_string()));
            }
            for c in f["cases"].as_array().unwrap() {
                m.insert(c["name"].as_str().unwrap().to_string(), c["error"].as_str().map(str::to_string));
            }
        }
    }
    m
}

/// Test code reaching for what an applet may not have: the standard library's escapes, files
/// outside the package, the real store. Each case asserts the escape is not there; every case
/// must pass.
#[test]
fn test_code_has_no_escape_hatch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    set_secret(&data, "db-pass", &secret_value("db-pass"));
    // A kv value and a cmdb host in the real store.
    let o = opslet(&data, tmp.path(), &["cmdb", "host", "add", "realhost", "--address", "10.66.0.1"]);
    assert!(o.status.success(), "{}", text(&o));
    let outside = tmp.path().join("outside.lua");
    std::fs::write(&outside, "return { escaped = true }").unwrap();
    let tests = format!(
        r#"
test("no io, os.execute, debug, loadstring, load, dofile, getfenv, setfenv", function()
  assert.eq(io, nil)
  assert.eq(debug, nil)
  assert.eq(loadstring, nil)
  assert.eq(load, nil)
  assert.eq(dofile, nil)
  assert.eq(loadfile, nil)
  assert.eq(getfenv, nil)
  assert.eq(setfenv, nil)
  assert.eq(package, nil)
  -- test code gets no host module: it cannot make a call that no exchange sees
  for _, m in ipairs({{ "ssh", "netdev", "ipmi", "zabbix", "es", "virt", "config", "cmdb" }}) do
    assert.eq(rawget(_G, m), nil, m)
  end
  if os then
    assert.eq(os.execute, nil)
    assert.eq(os.remove, nil)
    assert.eq(os.getenv, nil)
    assert.eq(os.exit, nil)
  end
end)

test("require of paths outside the package fails", function()
  for _, path in ipairs({{ "{outside}", "../outside", "../../outside", "/etc/passwd", "..%2foutside", "tests/../../outside" }}) do
    local ok, r = pcall(require, path)
    assert.falsy(ok and type(r) == "table" and r.escaped, "require " .. path .. " escaped the package")
  end
end)

test("the real store's kv is not the test's", function()
  local ok, v = pcall(function() return kv.get("anything") end)
  assert.truthy(not ok or v == nil)
  pcall(function() kv.set("written-by-test-code", "x") end)
end)

test("a run sees the fixture cmdb, not the real one", function()
  local r = run({{}})
  assert.eq(r.real, nil)
end)

test("secret params are not the stored secrets", function()
  local r = run({{}})
  assert.eq(r.secret, nil)
end)
"#,
        outside = outside.with_extension("").display()
    );
    let main = r#"
return function(p)
  local out = {}
  local ok, h = pcall(cmdb.host, "realhost")
  if ok and h then out.real = h end
  local ok2, s = pcall(function() return kv.get("written-by-test-code") end)
  if ok2 and s then out.kv = s end
  return out
end
"#;
    let dir = plain_applet(
        tmp.path(),
        "escape",
        "[permissions]\ncmdb = [\"read\"]\n",
        main,
        &tests,
        &[("tests/hosts.csv", "name,address\nweb1,10.0.0.1\n")],
    );
    let o = opslet(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"]);
    let got = cases(&o);
    let failed: Vec<_> = got.iter().filter(|(_, e)| e.is_some()).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", text(&o));
    assert_eq!(got.len(), 5, "{got:#?}");
}

/// Limits in test code itself and in the applet a case runs: an endless loop, a memory bomb, a
/// string bomb, a recursion bomb each fail their case within the applet's limits, and `opslet
/// test` itself carries on (each bomb in a file of its own, so one cannot hide another).
#[test]
fn limits_fail_the_case_without_hanging_opslet_test() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bombs = [
        ("loop_code", "while true do end"),
        ("mem_code", "local t = {} for i = 1, 1e9 do t[i] = string.rep(\"y\", 1024) .. i end"),
        ("rep_code", "local s = string.rep(\"z\", 2^30)"),
        ("recursion_code", "local function f() return 1 + f() end f()"),
        ("coroutine_code", "coroutine.wrap(function() while true do end end)()"),
        ("loop_run", "local r, err = run({ mode = \"loop\" }) assert.eq(err, nil)"),
        ("mem_run", "local r, err = run({ mode = \"mem\" }) assert.eq(err, nil)"),
        ("rep_run", "local r, err = run({ mode = \"rep\" }) assert.eq(err, nil)"),
    ];
    let files: Vec<(String, String)> =
        bombs.iter().map(|(n, body)| (format!("tests/{n}.lua"), format!("test(\"{n}\", function() {body} end)\n"))).collect();
    let main = r#"
return function(p)
  if p.mode == "loop" then while true do end end
  if p.mode == "mem" then local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end end
  if p.mode == "rep" then return string.rep("x", 2^30) end
  return "fine"
end
"#;
    let manifest = "[params.mode]\ntype = \"string\"\ndefault = \"ok\"\n[limits]\ntimeout = \"3s\"\nmemory = \"64MiB\"\n";
    let more: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let dir = plain_applet(tmp.path(), "bombs", manifest, main, "test(\"fine\", function() assert.eq(run({}), \"fine\") end)\n", &more);
    let t0 = Instant::now();
    let o = opslet_within(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"], Duration::from_secs(90));
    let got = cases(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(got.len(), bombs.len() + 1, "{got:#?}\n{}", text(&o));
    for (name, e) in &got {
        if name == "fine" {
            assert_eq!(e, &None, "{got:#?}");
        } else {
            assert!(e.is_some(), "{name} passed: {got:#?}");
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
}

/// The test code's limits are per case: a case that trips them (an endless loop) fails alone,
/// not every later case of its file (each case runs in a Lua state with a guard of its own).
#[test]
fn a_limit_hit_by_one_case_does_not_fail_the_next_cases_of_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tests = r#"
test("an endless loop", function() while true do end end)
test("a healthy case after it", function() assert.eq(run({}), "fine") end)
"#;
    let manifest = "[limits]\ntimeout = \"2s\"\n";
    let dir = plain_applet(tmp.path(), "poison", manifest, "return function() return \"fine\" end", tests, &[]);
    let o = opslet_within(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"], Duration::from_secs(60));
    let got = cases(&o);
    assert!(got["an endless loop"].is_some(), "{got:#?}");
    assert_eq!(got["a healthy case after it"], None, "{got:#?}");
}

/// Cases that each take well under the applet's timeout pass, however long the file's cases
/// take together.
#[test]
fn the_wall_time_limit_is_per_case_not_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut tests = String::new();
    for i in 1..=4 {
        tests.push_str(&format!(
            "test(\"case {i}\", function() local t0 = os.clock() while os.clock() - t0 < 0.8 do end assert.eq(run({{}}), \"fine\") end)\n"
        ));
    }
    let manifest = "[limits]\ntimeout = \"2s\"\n";
    let dir = plain_applet(tmp.path(), "slowish", manifest, "return function() return \"fine\" end", &tests, &[]);
    let o = opslet_within(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"], Duration::from_secs(60));
    let got = cases(&o);
    let failed: Vec<_> = got.iter().filter(|(_, e)| e.is_some()).collect();
    assert!(failed.is_empty(), "each case took ~0.8 s of a 2 s limit: {failed:#?}");
}

/// The same bombs through `opslet publish`: refused, not hung or crashed.
#[test]
fn limits_in_tests_do_not_hang_opslet_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tests = r#"
test("an endless loop in test code", function() while true do end end)
test("a memory bomb in test code", function() local t = {} for i = 1, 1e9 do t[i] = string.rep("y", 1024) .. i end end)
"#;
    let manifest = "[limits]\ntimeout = \"3s\"\nmemory = \"64MiB\"\n";
    let dir = plain_applet(tmp.path(), "pbombs", manifest, "return function() return 1 end", tests, &[]);
    let o = opslet_within(&data, tmp.path(), &["publish", dir.to_str().unwrap(), "-m", "x"], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("nothing was published"), "{}", text(&o));
}

/// Crafted transcripts and fakes: a huge one, malformed ones, answers of the wrong shape. Each
/// fails its case with a message; none crashes `opslet test`.
#[test]
fn crafted_transcripts_and_wrong_shaped_fakes_fail_the_case() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let main = r#"
return function(p)
  local r = ssh.run("web1", "uptime")
  return r[1]
end
"#;
    // 40 MB of calls, and deeply nested JSON.
    let mut huge = String::from(r#"{"applet":"a@1.0.0","hash":"x","params":{},"calls":["#);
    let entry = r#"{"call":"ssh.run","target":"web9","args":{"command":"uptime"},"answer":{"stdout":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}},"#;
    for _ in 0..35_000 {
        huge.push_str(entry);
    }
    huge.push_str(r#"{"call":"ssh.run","target":"web1","args":{"command":"uptime"},"answer":{"stdout":"up"}}]}"#);
    let deep = format!(
        r#"{{"applet":"a@1.0.0","hash":"x","params":{{}},"calls":[{{"call":"ssh.run","target":"web1","args":{{"command":"uptime"}},"answer":{}1{}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let wrong = r#"{"applet":"a@1.0.0","hash":"x","params":{},"calls":[{"call":"ssh.run","target":"web1","args":{"command":"uptime"},"answer":"not an object"}]}"#;
    let tests = r#"
test("a huge transcript", function()
  replay("tests/huge.json")
  local r, err = run({})
  assert.eq(err, nil)
end)
test("a deeply nested transcript", function()
  replay("tests/deep.json")
  run({})
end)
test("a malformed transcript", function() replay("tests/bad.json") end)
test("a transcript outside the package", function() replay("../../../etc/passwd") end)
test("a wrong-shaped transcript answer", function()
  replay("tests/wrong.json")
  local r, err = run({})
  assert.eq(r and r.ok, true)
end)
test("a wrong-shaped fake answer", function()
  fake("ssh.run", "a string, not a result")
  local r, err = run({})
  assert.eq(r and r.ok, true)
end)
test("a fake answer with a huge exit code", function()
  fake("ssh.run", { exit_code = 1e300, stdout = 5 })
  local r, err = run({})
  assert.eq(r and r.ok, true)
end)
test("a fake answer that is a deep table", function()
  local t = {} local c = t for i = 1, 100000 do c.x = {} c = c.x end
  fake("ssh.run", t)
  run({})
end)
test("a cyclic fake answer", function()
  local t = {} t.self = t
  fake("ssh.run", t)
  run({})
end)
test("a fake match that is not a table", function() fake("ssh.run", 5, {}) end)
test("control: a correct fake passes", function()
  fake("ssh.run", { stdout = "up" })
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r.stdout, "up")
end)
"#;
    let dir = plain_applet(
        tmp.path(),
        "crafted",
        "[permissions]\nssh = { hosts = [\"*\"] }\n",
        main,
        tests,
        &[
            ("tests/hosts.csv", "name,address\nweb1,10.0.0.1\n"),
            ("tests/huge.json", &huge),
            ("tests/deep.json", &deep),
            ("tests/bad.json", "{\"calls\": [ {\"call\": 5 "),
            ("tests/wrong.json", wrong),
        ],
    );
    let o = opslet_within(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"], Duration::from_secs(120));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let got = cases(&o);
    assert_eq!(got.len(), 11, "{got:#?}");
    for (name, e) in &got {
        match name.as_str() {
            "control: a correct fake passes" | "a huge transcript" => assert_eq!(e, &None, "{name}: {got:#?}"),
            _ => assert!(e.is_some(), "{name} passed: {got:#?}"),
        }
    }
}

/// Stored secrets never reach a test: a module whose login is a stored secret is answered by a
/// fake before the secret is read, and a config template that names a stored secret renders
/// without it (the test's store has none), so neither `calls()` nor the output holds it.
#[test]
fn stored_secrets_do_not_reach_a_test() {
    let trap = Trap::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = data_dir(tmp.path(), &trap, "");
    let item = "name = \"motd\"\npath = \"/tmp/motd\"\ntemplate = \"key={{ secret('tpl-secret') }}\\n\"\nreload = \"true\"\n";
    let main = r#"
return function(p)
  local out = {}
  local ok, r = pcall(config.render, "motd", "web1")
  out.render = ok and r or tostring(r)
  local ok2, r2 = pcall(config.publish, "motd", "web1")
  out.publish = ok2 and r2 or tostring(r2)
  return out
end
"#;
    let tests = r#"
test("what the applet and the fakes see", function()
  fake("config.publish", {})
  fake("config.current", {})
  local r, err = run({})
  print(__show(r), err, __show(calls()))
  error("DUMP " .. __show(r) .. " " .. tostring(err) .. " " .. __show(calls()))
end)
"#;
    let dir = plain_applet(
        tmp.path(),
        "secrets",
        "[permissions]\nconfig = [\"read\", \"publish\"]\n",
        main,
        tests,
        &[("tests/hosts.csv", &hosts_csv(&trap)), ("tests/items/motd.toml", item)],
    );
    let o = opslet(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"]);
    let out = text(&o);
    assert!(out.contains("DUMP"), "{out}");
    if std::env::var_os("SHOW_DUMP").is_some() {
        eprintln!("{out}");
    }
    for s in SECRETS {
        assert!(!out.contains(&secret_value(s)), "stored secret {s} reached the test: {out}");
    }
    trap.assert_untouched("opslet test", &out);
}

/// The peak resident memory of a child while it runs, sampled from /proc.
fn peak_rss_kib(data: &Path, cwd: &Path, args: &[&str]) -> (u64, Output) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(args)
        .current_dir(cwd)
        .env("OPSLET_DATA_DIR", data)
        .env_remove("OPSLET_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let (mut peak, t0) = (0u64, Instant::now());
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(&status) {
            for l in s.lines().filter(|l| l.starts_with("VmHWM:") || l.starts_with("VmRSS:")) {
                let kib: u64 = l.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                peak = peak.max(kib);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (peak, child.wait_with_output().unwrap())
}

/// What `fake()` keeps lives outside the Lua heap (a JSON copy in the case's `Fakes`), so it is
/// counted against the applet's memory limit on its own: test code holding one 8 MiB string
/// (well within its 64 MiB) that declares it as the answer of 48 fakes fails the case, rather
/// than growing the process (the server's, for a publish through `opslet serve`) by 400 MiB.
#[test]
fn fakes_are_bounded_by_the_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tests = r#"
test("fakes hoard memory outside the Lua heap", function()
  local big = string.rep("x", 8 * 1024 * 1024)
  for i = 1, 48 do fake("ssh.run", { host = "h" .. i }, { stdout = big }) end
end)
"#;
    let manifest = "[limits]\ntimeout = \"20s\"\nmemory = \"64MiB\"\n";
    let dir = plain_applet(tmp.path(), "hoard", manifest, "return function() return 1 end", tests, &[]);
    let (peak, o) = peak_rss_kib(&data, tmp.path(), &["test", dir.to_str().unwrap(), "--format", "json"]);
    let got = cases(&o);
    let mib = peak / 1024;
    // The applet may use 64 MiB; allow the binary and the runtime 128 MiB on top.
    assert!(
        mib < 192 || got.values().all(|e| e.is_some()),
        "opslet test grew to {mib} MiB for test code with a 64 MiB limit, and the case passed: {got:#?}"
    );
}
