//! `opslet test` with fakes for the device modules (netdev, ipmi, config), end to end through
//! the binary and with no opslet.toml (no device logins, BMC credentials or SSH keys: nothing is
//! sent, so none is read). For each module: a faked answer reaches the applet's logic and result,
//! `assert.called` sees the call and its args, a faked failure (`{ error = "timeout" }`) reaches
//! the applet, and a call outside the manifest's permission fails in the test as in a real run.

use std::path::{Path, PathBuf};

#[path = "common/applet_test.rs"]
mod applet_test;
use applet_test::{check, run_tests, write};

/// An applet folder `name` under `tmp` with one string param `p`, its permissions, main.lua and
/// more files (tests/t.lua, tests/hosts.csv, ...).
fn applet(tmp: &Path, name: &str, permissions: &str, main: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = tmp.join(name);
    let manifest =
        format!("name = \"{name}\"\nversion = \"1.0.0\"\n[params.p]\ntype = \"string\"\ndefault = \"\"\n[permissions]\n{permissions}\n");
    write(&dir, &[("applet.toml", &manifest), ("main.lua", main)]);
    write(&dir, files);
    dir
}

const NETDEV_MAIN: &str = r#"
return function(p)
  if p.p == "reload" then
    return { n = #netdev.run("group:switches", { "reload" }) }
  elseif p.p == "core" then
    return netdev.run("core1", { "show version" })
  elseif p.p == "backup" then
    local out = {}
    for _, r in ipairs(netdev.backup("group:switches")) do
      out[r.host] = { ok = r.ok, version = r.version, changed = r.changed, error = r.error }
    end
    return out
  elseif p.p == "vlan" or p.p == "interface" then
    local lines = p.p == "vlan" and { "vlan 42", "name users" } or { "interface Gi0/1" }
    local out = {}
    for _, r in ipairs(netdev.configure("group:switches", lines)) do
      out[r.host] = { ok = r.ok, applied = r.applied, rejected = r.rejected, error = r.error }
    end
    return out
  elseif p.p == "open" then
    local d = netdev.open("sw1")
    local v = d:command("show version")
    d:close()
    return { version = v }
  end
  local out = {}
  for _, r in ipairs(netdev.run("group:switches", { "show version" })) do
    out[r.host] = r.ok and r.outputs[1]:match("Version (%S+)") or ("down: " .. r.error)
  end
  return out
end
"#;

const NETDEV_TESTS: &str = r#"
test("a faked version reaches the applet, and a faked timeout too", function()
  fake("netdev.command", { command = "show version" }, { output = "Cisco IOS Software, Version 15.2(4)E8" })
  fake("netdev.command", { target = "sw2" }, { error = "timeout" })
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r, { sw1 = "15.2(4)E8", sw2 = "down: timeout" })
  assert.called("netdev.command", { target = "sw1", command = "show version" }, 1)
  assert.called("netdev.command", { host = "sw2" }, 1)
end)
test("a session handle is answered by the same fakes", function()
  fake("netdev.command", { target = "sw1", command = "show version" }, { output = "Version 1" })
  local r, err = run({ p = "open" })
  assert.eq(err, nil)
  assert.eq(r.version, "Version 1")
  assert.called("netdev.command", { target = "sw1" }, 1)
end)
test("a backup stores the faked configuration as the device's next version", function()
  fake("netdev.backup", { config = "hostname sw\ninterface Gi0/1\n" })
  fake("netdev.backup", { target = "sw2" }, { error = "timeout" })
  local r, err = run({ p = "backup" })
  assert.eq(err, nil)
  assert.eq(r.sw1, { ok = true, version = 1, changed = true })
  assert.eq(r.sw2.ok, false)
  assert.eq(r.sw2.error, "timeout")
  assert.called("netdev.backup", { target = "sw1", command = "show running-config" }, 1)
end)
test("configuration lines go to each device, and a rejected line comes back", function()
  fake("netdev.config", { target = "sw1" }, {})
  fake("netdev.config", { target = "sw2" }, { rejected = "name users", message = "% Invalid input" })
  local r, err = run({ p = "vlan" })
  assert.eq(err, nil)
  assert.eq(r.sw1, { ok = true, applied = 2 })
  assert.eq(r.sw2.ok, false)
  assert.eq(r.sw2.applied, 1)
  assert.eq(r.sw2.rejected, "name users")
  assert.called("netdev.config", { target = "sw1", lines = { "vlan 42", "name users" }, save = false }, 1)
end)
test("a command the permission does not grant is refused before anything is sent", function()
  fake("netdev.command", { output = "" })
  local r, err = run({ p = "reload" })
  assert.fails(err, "permission denied")
  assert.not_called("netdev.command")
end)
test("a configuration line outside the permission's lines is refused", function()
  fake("netdev.config", {})
  local r, err = run({ p = "interface" })
  assert.fails(err, "permission denied")
  assert.not_called("netdev.config")
end)
test("a device outside the permission is refused", function()
  fake("netdev.command", { output = "Version 1" })
  local r, err = run({ p = "core" })
  assert.fails(err, "core1")
  assert.not_called("netdev.command")
end)
test("a call no fake answers fails the case", function()
  run({})
end)
"#;

const SWITCHES: &str = "name,address,groups,tags\nsw1,10.1.0.1,switches,platform=cisco_ios\nsw2,10.1.0.2,switches,platform=cisco_ios\ncore1,10.1.0.9,core,platform=cisco_ios\n";

#[test]
fn netdev_calls_are_answered_by_fakes_and_checked_against_the_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = applet(
        tmp.path(),
        "sw-versions",
        r#"netdev = { devices = ["group:switches"], actions = ["read", "config"], lines = ["vlan *", "name *"] }"#,
        NETDEV_MAIN,
        &[("tests/t.lua", NETDEV_TESTS), ("tests/hosts.csv", SWITCHES)],
    );
    let cases = run_tests(tmp.path(), &dir);
    check(&cases, 8, &[("a call no fake answers fails the case", "no fake answers netdev.command on sw1")]);
}

const IPMI_MAIN: &str = r#"
return function(p)
  if p.p == "off" then
    return ipmi.power_off("n1")
  elseif p.p == "check" then
    local out = {}
    for _, c in ipairs(ipmi.check("group:metal")) do
      out[c.host] = { ok = c.ok, power = c.power, problems = c.problems, error = c.error }
    end
    return out
  elseif p.p == "sensors" then
    local hot = {}
    for _, s in ipairs(ipmi.sensors("n1")) do
      if s.status ~= "ok" then table.insert(hot, s.name .. " " .. s.status) end
    end
    return hot
  end
  local out = {}
  for _, h in ipairs({ "n1", "n2" }) do
    local ok, v = pcall(ipmi.power, h)
    out[h] = ok and v or ("unknown: " .. tostring(v))
  end
  return out
end
"#;

const IPMI_TESTS: &str = r#"
test("a faked power state reaches the applet, and a faked timeout too", function()
  fake("ipmi.power", { host = "n1" }, { power = "off" })
  fake("ipmi.power", { host = "n2" }, { error = "timeout" })
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r.n1, "off")
  assert(r.n2:find("timeout"), r.n2)
  assert.called("ipmi.power", { target = "n1" }, 1)
end)
test("sensors are judged from the faked readings", function()
  fake("ipmi.sensors", { target = "n1" }, {
    { name = "CPU Temp", value = 95, unit = "C", upper_critical = 90 },
    { name = "Fan 1", value = 5000, unit = "RPM", lower_critical = 500 },
  })
  local r, err = run({ p = "sensors" })
  assert.eq(err, nil)
  assert.eq(r, { "CPU Temp critical" })
end)
test("a check reports the problems in a faked answer, and a faked failure per host", function()
  fake("ipmi.check", { host = "n1" }, {
    power = "on",
    sensors = { { name = "CPU Temp", value = 95, unit = "C", upper_critical = 90 } },
    sel = { { id = "7", message = "Power supply failure", sensor = "PSU1", severity = "critical" } },
  })
  fake("ipmi.check", { host = "n2" }, { error = "timeout" })
  local r, err = run({ p = "check" })
  assert.eq(err, nil)
  assert.eq(r.n1.ok, true)
  assert.eq(r.n1.power, "on")
  assert.eq(#r.n1.problems, 2)
  assert.eq(r.n2.ok, false)
  assert.eq(r.n2.error, "timeout")
  assert.called("ipmi.check", { host = "n2", sel_limit = 50 }, 1)
end)
test("a power action the permission does not grant is refused", function()
  fake("ipmi.power_off", { before = "on", sent = "off" })
  local r, err = run({ p = "off" })
  assert.fails(err, "permission denied")
  assert.not_called("ipmi.power_off")
end)
"#;

#[test]
fn ipmi_calls_are_answered_by_fakes_and_checked_against_the_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = "name,address,groups,tags\nn1,10.0.0.1,metal,bmc=10.9.0.1\nn2,10.0.0.2,metal,bmc=https://10.9.0.2\n";
    let dir = applet(tmp.path(), "bmc-watch", r#"ipmi = ["read"]"#, IPMI_MAIN, &[("tests/t.lua", IPMI_TESTS), ("tests/hosts.csv", hosts)]);
    let cases = run_tests(tmp.path(), &dir);
    check(&cases, 4, &[]);
}

const CONFIG_MAIN: &str = r#"
return function(p)
  local out = {}
  if p.p == "check" then
    for _, r in ipairs(config.check("nginx", "group:web")) do
      out[r.host] = r.status
    end
    return out
  end
  local sel = p.p == "db" and "db1" or "group:web"
  for _, r in ipairs(config.publish("nginx", sel)) do
    out[r.host] = { ok = r.ok, changed = r.changed, failed_at = r.failed_at, error = r.error }
  end
  return out
end
"#;

const CONFIG_TESTS: &str = r#"
test("a faked publish reaches the applet, and a faked timeout too", function()
  fake("config.publish", { host = "web1" }, { changed = true })
  fake("config.publish", { host = "web2" }, { error = "timeout" })
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r.web1, { ok = true, changed = true })
  assert.eq(r.web2.ok, false)
  assert(r.web2.error:find("timeout"), r.web2.error)
  assert.called("config.publish", { host = "web1", item = "nginx", version = 1, env = "prod", path = "/etc/nginx/nginx.conf" }, 1)
end)
test("a failed validation comes back as the step that failed", function()
  fake("config.publish", { failed_at = "validate", restored = "restored", output = "nginx: syntax error" })
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r.web1.ok, false)
  assert.eq(r.web1.failed_at, "validate")
  assert(r.web1.error:find("validate failed on web1"), r.web1.error)
end)
test("a faked check says what drifted", function()
  fake("config.check", { host = "web1" }, { status = "drifted", drift = "the content differs" })
  fake("config.check", { host = "web2" }, { status = "in-sync" })
  local r, err = run({ p = "check" })
  assert.eq(err, nil)
  assert.eq(r, { web1 = "drifted", web2 = "in-sync" })
  assert.called("config.check", { host = "web1", item = "nginx" }, 1)
end)
test("a host outside the permission is refused before anything is sent", function()
  fake("config.publish", {})
  local r, err = run({ p = "db" })
  assert.fails(err, "permission denied")
  assert.not_called("config.publish")
end)
"#;

const NGINX_ITEM: &str = r#"
name = "nginx"
path = "/etc/nginx/nginx.conf"
template_file = "nginx.conf.j2"
validate = "nginx -t -c {file}"
reload = "systemctl reload nginx"
[values]
workers = 4
"#;

#[test]
fn config_calls_are_answered_by_fakes_with_items_from_the_applet_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = "name,address,groups,tags\nweb1,10.0.0.1,web,env=prod\nweb2,10.0.0.2,web,env=prod\ndb1,10.0.0.3,db,env=prod\n";
    let dir = applet(
        tmp.path(),
        "nginx-rollout",
        r#"config = { items = ["nginx"], hosts = ["group:web"], actions = ["read", "publish"] }"#,
        CONFIG_MAIN,
        &[
            ("tests/t.lua", CONFIG_TESTS),
            ("tests/hosts.csv", hosts),
            ("tests/items/nginx.toml", NGINX_ITEM),
            ("tests/items/nginx.conf.j2", "worker_processes {{ workers }};\n"),
        ],
    );
    let cases = run_tests(tmp.path(), &dir);
    check(&cases, 4, &[]);
}

#[test]
fn a_read_only_config_permission_refuses_a_publish_in_a_test() {
    let tmp = tempfile::tempdir().unwrap();
    let tests = r#"
test("publishing needs the publish action", function()
  fake("config.publish", {})
  local r, err = run({})
  assert.fails(err, "does not grant `publish`")
  assert.not_called("config.publish")
end)
"#;
    let dir = applet(
        tmp.path(),
        "nginx-read",
        r#"config = ["read"]"#,
        CONFIG_MAIN,
        &[
            ("tests/t.lua", tests),
            ("tests/hosts.csv", "name,address,groups,tags\nweb1,10.0.0.1,web,env=prod\n"),
            ("tests/items/nginx.toml", NGINX_ITEM),
            ("tests/items/nginx.conf.j2", "worker_processes {{ workers }};\n"),
        ],
    );
    let cases = run_tests(tmp.path(), &dir);
    check(&cases, 1, &[]);
}
