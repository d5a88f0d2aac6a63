//! `opslet test` with fakes for the API modules, end to end through the binary and with no
//! opslet.toml (the zabbix and es modules use a stand-in `default` connection, virt any
//! connection name): for zabbix, es and virt, a faked answer reaches the applet's logic and
//! result, `assert.called` sees the call and its args, a faked failure reaches the applet, and a
//! call outside the manifest's permission fails as in a real run; a call no fake answers fails
//! the case, naming it.

use std::path::{Path, PathBuf};

#[path = "common/applet_test.rs"]
mod applet_test;
use applet_test::{check, run_tests, write};

/// An applet folder `name` under `tmp`: its manifest's permissions, main.lua and tests/t.lua.
fn applet(tmp: &Path, name: &str, permissions: &str, main: &str, tests: &str) -> PathBuf {
    let dir = tmp.join(name);
    let manifest =
        format!("name = \"{name}\"\nversion = \"1.0.0\"\n[params.p]\ntype = \"string\"\ndefault = \"\"\n[permissions]\n{permissions}\n");
    write(&dir, &[("applet.toml", &manifest), ("main.lua", main), ("tests/t.lua", tests)]);
    dir
}

const ZABBIX_MAIN: &str = r#"
-- Problems of a host, as "host: name" lines; p = "ack:EVENTID" acknowledges one,
-- "conn:NAME" reads through a named connection.
return function(params)
  local p = params.p or ""
  local z = zabbix
  if p:sub(1, 5) == "conn:" then z = zabbix.connection(p:sub(6)) end
  if p:sub(1, 4) == "ack:" then return { acked = zabbix.ack(p:sub(5), { message = "on it" }) } end
  local out = {}
  for _, pr in ipairs(z.problems({ host = "web1", severity_min = "high" })) do
    table.insert(out, pr.host .. ": " .. pr.name .. " (" .. pr.severity_name .. ")")
  end
  return { problems = out }
end
"#;

const ZABBIX_TESTS: &str = r#"
local function zbx(suffix)
  suffix = suffix or ""
  fake("zabbix.api", { target = "host.get" .. suffix }, { { hostid = "10084", host = "web1" } })
  fake("zabbix.api", { target = "problem.get" .. suffix }, {
    { eventid = "101", name = "Disk full", severity = "4", clock = "1700000000", acknowledged = "0" },
  })
  fake("zabbix.api", { target = "event.get" .. suffix }, { { eventid = "101", hosts = { { host = "web1" } } } })
end

test("faked problems reach the logic", function()
  zbx()
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r, { problems = { "web1: Disk full (high)" } })
  assert.called("zabbix.api", { target = "host.get", filter = { host = { "web1" } } }, 1)
  assert.called("zabbix.api", { target = "problem.get", hostids = { "10084" }, sortorder = "DESC" }, 1)
  assert.called("zabbix.api", { target = "event.get", eventids = { "101" } }, 1)
  assert.eq(calls("zabbix.api")[2].args.severities, { 4, 5 })
end)

test("a named connection is in the target", function()
  zbx("@ops")
  local r, err = run({ p = "conn:ops" })
  assert.eq(err, nil)
  assert.eq(r.problems, { "web1: Disk full (high)" })
  assert.called("zabbix.api", { target = "problem.get@ops" }, 1)
end)

test("a Zabbix error reaches the applet", function()
  zbx()
  fake("zabbix.api", { target = "problem.get" }, { error = "Zabbix API error -32500: Application error." })
  local r, err = run({})
  assert.fails(err, "zabbix.problems: problem.get on default: Zabbix API error -32500")
  assert.not_called("zabbix.api", { target = "event.get" })
end)

test("an ack outside the permission is refused, as in a real run", function()
  fake("zabbix.api", { target = "event.acknowledge" }, { eventids = { "101" } })
  local r, err = run({ p = "ack:101" })
  assert.fails(err, "does not grant `ack`")
  assert.eq(#calls(), 0)
end)

test("a call no fake answers", function()
  fake("zabbix.api", { target = "host.get" }, { { hostid = "10084", host = "web1" } })
  run({})
end)
"#;

#[test]
fn zabbix_calls_are_answered_by_fakes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = applet(tmp.path(), "zbx-problems", "zabbix = [\"read\"]", ZABBIX_MAIN, ZABBIX_TESTS);
    let cases = run_tests(tmp.path(), &dir);
    check(&cases, 5, &[("a call no fake answers", "no fake answers zabbix.api on problem.get with {")]);
}

/// An applet with `ack` granted acknowledges through the fake (a write: audited, answered).
#[test]
fn a_granted_zabbix_write_is_faked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let tests = r#"
test("an ack is sent with its message", function()
  fake("zabbix.api", { target = "event.acknowledge" }, { eventids = { "101" } })
  local r, err = run({ p = "ack:101" })
  assert.eq(err, nil)
  assert.eq(r, { acked = true })
  assert.called("zabbix.api", { target = "event.acknowledge", eventids = { "101" }, message = "on it" }, 1)
  assert.eq(calls()[1].args.action, 6)
end)
"#;
    let dir = applet(tmp.path(), "zbx-ack", "zabbix = [\"read\", \"ack\"]", ZABBIX_MAIN, tests);
    check(&run_tests(tmp.path(), &dir), 1, &[]);
}

const ES_MAIN: &str = r#"
-- Error logs: how many, the first message, and every id a scan sees.
return function(params)
  local r = es.search("logs-*", { match = { level = "ERROR" } }, { size = 5 })
  local seen = {}
  local n = es.scan("logs-*", nil, function(h) table.insert(seen, h.id) end, { size = 2 })
  return {
    total = r.total,
    first = r.hits[1] and r.hits[1].source.msg,
    count = es.count("logs-*"),
    scanned = seen,
    n = n,
  }
end
"#;

const ES_TESTS: &str = r#"
local function hit(id, msg) return { _id = id, _index = "logs-1", _source = { msg = msg }, sort = { id } } end

local function cluster()
  fake("es.search", { target = "logs-*" }, { hits = { total = { value = 7 }, hits = { hit("a", "disk full") } } })
  fake("es.count", { count = 42 })
  -- The scan's first page, then the page after its last sort value (short: the last one).
  fake("es.scan", { target = "logs-*" }, { hits = { hits = { hit("s1"), hit("s2") } } })
  fake("es.scan", { target = "logs-*", search_after = { "s2" } }, { hits = { hits = { hit("s3") } } })
end

test("faked answers reach the logic", function()
  cluster()
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r, { total = 7, first = "disk full", count = 42, scanned = { "s1", "s2", "s3" }, n = 3 })
  assert.called("es.search", { target = "logs-*", query = { match = { level = "ERROR" } } }, 1)
  assert.eq(calls("es.search")[1].args.size, 5)
  assert.called("es.count", { target = "logs-*" }, 1)
  assert.called("es.scan", { target = "logs-*" }, 2)
  assert.eq(calls("es.scan")[1].args, { query = { match_all = {} }, size = 2 })
end)

test("an Elasticsearch error reaches the applet", function()
  cluster()
  fake("es.search", { error = "logs answered HTTP 400: parsing_exception: unknown query" })
  local r, err = run({})
  assert.fails(err, "es.search: logs answered HTTP 400: parsing_exception")
  assert.not_called("es.scan")
end)

test("a call no fake answers", function()
  fake("es.search", { hits = { total = { value = 0 }, hits = {} } })
  run({})
end)
"#;

#[test]
fn es_requests_are_answered_by_fakes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = applet(tmp.path(), "es-errors", "es = [\"read\"]", ES_MAIN, ES_TESTS);
    check(&run_tests(tmp.path(), &dir), 3, &[("a call no fake answers", "no fake answers es.scan on logs-* with {")]);

    // es has one action, `read`: an applet without the es permission is refused before
    // anything is asked, as in a real run; so is an index name that is not one.
    let refused = r#"
test("a search without the es permission is refused", function()
  fake("es.search", { hits = { total = { value = 1 }, hits = {} } })
  local r, err = run({})
  assert.fails(err, "es.search: permission denied: this applet does not declare the `es` permission")
  assert.eq(#calls(), 0)
end)
"#;
    let dir = applet(tmp.path(), "es-none", "ssh = { hosts = [\"web1\"], commands = [\"true\"] }", ES_MAIN, refused);
    check(&run_tests(tmp.path(), &dir), 1, &[]);
    let bad_index = r#"
test("an index that is not one is refused before sending", function()
  fake("es.search", { hits = { total = { value = 1 }, hits = {} } })
  local r, err = run({})
  assert.fails(err, "`../etc` is not an index name")
  assert.eq(#calls(), 0)
end)
"#;
    let main = r#"return function() return es.search("../etc") end"#;
    let dir = applet(tmp.path(), "es-bad-index", "es = [\"read\"]", main, bad_index);
    check(&run_tests(tmp.path(), &dir), 1, &[]);
}

const VIRT_MAIN: &str = r#"
-- Starts the crashed VMs of kvm01; returns them and the memory of the first.
return function(params)
  local started = {}
  for _, vm in ipairs(virt.list("kvm01", { state = "crashed" })) do
    if virt.start("kvm01", vm.name) then table.insert(started, vm.name) end
  end
  local first = started[1] and virt.info("kvm01", started[1])
  return { started = started, memory_mib = first and first.memory_mib }
end
"#;

const VIRT_TESTS: &str = r#"
local function hypervisor()
  fake("virt.list", { target = "kvm01" }, {
    { name = "vm1", state = "running", memory_mib = 1024 },
    { name = "vm2", state = "crashed", memory_mib = 2048 },
  })
  fake("virt.info", { target = "kvm01", name = "vm2" }, { name = "vm2", state = "running", memory_mib = 2048, xml = "<domain/>" })
  fake("virt.start", { target = "kvm01" }, true)
end

test("faked VMs reach the logic", function()
  hypervisor()
  local r, err = run({})
  assert.eq(err, nil)
  assert.eq(r, { started = { "vm2" }, memory_mib = 2048 })
  assert.called("virt.start", { target = "kvm01", name = "vm2" }, 1)
  assert.not_called("virt.start", { name = "vm1" })
  assert.called("virt.list", { target = "kvm01" }, 1)
end)

test("a libvirt failure reaches the applet", function()
  hypervisor()
  fake("virt.start", { name = "vm2" }, { error = "vm2 on kvm01: Requested operation is not valid: domain is already running" })
  local r, err = run({})
  assert.fails(err, "virt.start: vm2 on kvm01: Requested operation is not valid")
end)

test("a dry run plans and asks nothing to change", function()
  hypervisor()
  local r, err = run({}, { dry_run = true })
  assert.eq(err, nil)
  assert.eq(r.started, {})
  assert.not_called("virt.start")
end)

test("a call no fake answers", function()
  fake("virt.list", { { name = "vm2", state = "crashed" } })
  run({})
end)
"#;

#[test]
fn virt_operations_are_answered_by_fakes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = applet(tmp.path(), "vm-restarter", "virt = [\"read\", \"write\"]", VIRT_MAIN, VIRT_TESTS);
    check(&run_tests(tmp.path(), &dir), 4, &[("a call no fake answers", "no fake answers virt.start on kvm01 with {\"name\":\"vm2\"}")]);

    let refused = r#"
test("a start without write is refused, as in a real run", function()
  fake("virt.list", { { name = "vm2", state = "crashed" } })
  fake("virt.start", true)
  local r, err = run({})
  assert.fails(err, "does not grant `write`")
  assert.called("virt.list", {}, 1)
  assert.not_called("virt.start")
end)
"#;
    let dir = applet(tmp.path(), "vm-reader", "virt = [\"read\"]", VIRT_MAIN, refused);
    check(&run_tests(tmp.path(), &dir), 1, &[]);
}
