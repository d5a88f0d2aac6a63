//! `opslet test`, end to end through the binary: an applet's tests with fakes (its logic, the
//! calls it made, failures, a permission refusal, a call no fake answers), a transcript recorded
//! from a run against real OpenSSH hosts (`opslet run --record`) replayed as a test, a replay
//! whose applet makes a call the transcript lacks, and `--format json`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sshd::Fleet;
use serde_json::Value;

fn opslet(data: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(args)
        .current_dir(cwd)
        .env("OPSLET_DATA_DIR", data)
        .env_remove("OPSLET_CONFIG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

const MANIFEST: &str = r#"name = "os-report"
version = "1.0.0"
[params.hosts]
type = "host-selector"
required = true
[params.token]
type = "string"
secret = true
default = "none"
[permissions]
ssh = { hosts = ["group:fleet"], commands = ["uname -s", "echo *"] }
"#;

/// Which OS each host runs; a host whose `uname` fails is listed apart.
const MAIN: &str = r#"
return function(p)
  local os, failed = {}, {}
  for _, r in ipairs(ssh.run(p.hosts, "uname -s")) do
    if r.ok then os[r.host] = (r.stdout:gsub("%s+$", "")) else table.insert(failed, r.host) end
  end
  ssh.run(p.hosts, "echo " .. p.token)
  return { os = os, failed = failed }
end
"#;

/// An applet's tests with fakes, in a folder of its own: the result of each case and the report.
#[test]
fn fakes_drive_the_applets_logic_and_its_calls_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let app = tmp.path().join("os-report");
    write(
        &app,
        &[
            ("applet.toml", MANIFEST),
            ("main.lua", MAIN),
            ("tests/hosts.csv", "name,address,groups\nweb1,10.0.0.1,fleet\nweb2,10.0.0.2,fleet\ndb1,10.0.0.3,db\n"),
            (
                "tests/report.lua",
                r#"
test("each host's OS, and hosts that fail apart", function()
  fake("ssh.run", { command = "uname -s" }, { stdout = "Linux\n" })
  fake("ssh.run", { host = "web2", command = "uname -s" }, { error = "connection refused" })
  fake("ssh.run", { command = "echo *" }, {})
  local r, err = run({ hosts = "group:fleet", token = "t0k3n" })
  assert.eq(err, nil)
  assert.eq(r, { os = { web1 = "Linux" }, failed = { "web2" } })
  assert.called("ssh.run", { host = "web1", command = "uname -s" }, 1)
  assert.eq(#calls("ssh.run"), 4)
end)

test("a secret param reaches fakes redacted", function()
  fake("ssh.run", {})
  run({ hosts = "web1", token = "t0k3n" })
  assert.called("ssh.run", { command = "echo <redacted>" })
  assert.not_called("ssh.run", { command = "echo t0k3n" })
end)

test("hosts outside its permission are refused, as in a real run", function()
  fake("ssh.run", {})
  local r, err = run({ hosts = "db1" })
  assert.fails(err, "permission denied")
  assert.eq(#calls(), 0)
end)

test("a dry run plans, and calls nothing", function()
  local r, err = run({ hosts = "group:fleet" }, { dry_run = true })
  assert.eq(err, nil)
  assert.eq(#calls(), 0)
end)

test("wrong params are the run's error", function()
  local _, err = run({})
  assert.fails(err, "hosts")
end)
"#,
            ),
            (
                "tests/broken.lua",
                r#"
test("a diff names what differs", function()
  fake("ssh.run", { stdout = "Linux" }) print("checking web1")
  local r = run({ hosts = "web1" })
  assert.eq(r.os, { web1 = "BSD" })
end)

test("a call no fake answers fails the case, naming it", function()
  fake("ssh.run", { command = "uname -s" }, { stdout = "Linux" })
  run({ hosts = "web1" })
end)
"#,
            ),
        ],
    );
    let o = opslet(&data, tmp.path(), &["test", "os-report", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((report["passed"].as_u64(), report["failed"].as_u64()), (Some(5), Some(2)), "{report:#}");
    let files = report["applets"][0]["report"]["files"].as_array().unwrap();
    let broken = files.iter().find(|f| f["file"] == "tests/broken.lua").unwrap();
    let diff = broken["cases"][0]["error"].as_str().unwrap();
    assert!(diff.contains("tests/broken.lua:5: not equal:\nweb1: expected \"BSD\", got \"Linux\""), "{diff}");
    // A failed case shows what its test code printed; a passing one keeps quiet.
    assert_eq!(broken["cases"][0]["log"], serde_json::json!(["[info] checking web1"]), "{broken}");
    assert!(files.iter().flat_map(|f| f["cases"].as_array().unwrap()).filter(|c| c["ok"] == true).all(|c| c.get("log").is_none()));
    let miss = broken["cases"][1]["error"].as_str().unwrap();
    assert!(miss.contains("no fake answers ssh.run on web1 with {\"command\":\"echo <redacted>\"}"), "{miss}");
    // The table form: one line per case, the summary, exit code 1.
    let o = opslet(&data, &app, &["test"]);
    let out = text(&o);
    assert!(out.contains("ok    tests/report.lua › each host's OS, and hosts that fail apart"), "{out}");
    assert!(out.contains("FAIL  tests/broken.lua › a diff names what differs"), "{out}");
    assert!(out.contains("1 applet: 5 passed, 2 failed"), "{out}");
    // Nothing was written into the applet's folder.
    let mut files: Vec<String> = walk(&app).into_iter().map(|p| p.strip_prefix(&app).unwrap().display().to_string()).collect();
    files.sort();
    assert_eq!(files, ["applet.toml", "main.lua", "tests/broken.lua", "tests/hosts.csv", "tests/report.lua"]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A run against real OpenSSH hosts, recorded, becomes a test; the same test of an applet
/// that now makes a call the transcript lacks fails, naming it.
#[test]
fn a_recorded_run_against_real_sshd_replays_as_a_test() {
    let fleet = Fleet::start(2, "fleet");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let app = tmp.path().join("os-report");
    write(&app, &[("applet.toml", MANIFEST), ("main.lua", MAIN)]);
    // The inventory and the credentials of the real hosts, as an operator would have them.
    let mut csv = String::from("name,address,port,groups,host_key\n");
    for h in &fleet.hosts {
        csv.push_str(&format!("{},{},{},fleet,{}\n", h.name, h.address, h.port, h.host_key));
    }
    std::fs::write(tmp.path().join("fleet.csv"), &csv).unwrap();
    let ok = |o: Output| {
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    ok(opslet(&data, tmp.path(), &["cmdb", "import", "fleet.csv"]));
    std::fs::write(tmp.path().join("key"), &fleet.client_key).unwrap();
    ok(opslet(&data, tmp.path(), &["secret", "set", "ssh-key", "--file", "key"]));
    std::fs::write(data.join("opslet.toml"), "[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n").unwrap();

    let o = ok(opslet(
        &data,
        tmp.path(),
        &["run", "./os-report", "-p", "hosts=group:fleet", "-p", "token=S3cret-T0ken", "--record", "prod.json", "--format", "json"],
    ));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (a, b) = (&fleet.hosts[0].name, &fleet.hosts[1].name);
    assert_eq!(result["os"][a.as_str()], "Linux", "{result}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("recorded 4 module calls to prod.json"), "{}", text(&o));
    let transcript = std::fs::read_to_string(tmp.path().join("prod.json")).unwrap();
    assert!(!transcript.contains("S3cret-T0ken") && transcript.contains("echo <redacted>"), "secrets redacted:\n{transcript}");
    assert!(!transcript.contains("PRIVATE KEY"), "no key in the transcript");
    let t: Value = serde_json::from_str(&transcript).unwrap();
    assert_eq!(t["applet"], "os-report@1.0.0");
    assert_eq!(t["calls"].as_array().unwrap().len(), 4);
    let uname = t["calls"].as_array().unwrap().iter().find(|c| c["target"] == a.as_str() && c["args"]["command"] == "uname -s").unwrap();
    assert_eq!(uname["answer"]["stdout"], "Linux\n", "{uname}");

    // The transcript becomes the applet's test, with the hosts it ran on.
    std::fs::create_dir_all(app.join("tests")).unwrap();
    std::fs::copy(tmp.path().join("prod.json"), app.join("tests/prod.json")).unwrap();
    write(
        &app,
        &[
            ("tests/hosts.csv", &format!("name,address,groups\n{a},10.0.0.1,fleet\n{b},10.0.0.2,fleet\n")),
            (
                "tests/prod.lua",
                &format!(
                    r#"
test("what production answered", function()
  replay("tests/prod.json")
  local r, err = run({{ hosts = "group:fleet", token = "S3cret-T0ken" }})
  assert.eq(err, nil)
  assert.eq(r, {{ os = {{ ["{a}"] = "Linux", ["{b}"] = "Linux" }}, failed = {{}} }})
end)
"#
                ),
            ),
        ],
    );
    let o = opslet(&data, tmp.path(), &["test", "./os-report"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 applet: 1 passed, 0 failed"), "{}", text(&o));

    // The applet changes: it now asks each host for its kernel too. The replay names the call
    // production never answered.
    std::fs::write(
        app.join("main.lua"),
        MAIN.replace(
            "ssh.run(p.hosts, \"echo \" .. p.token)",
            "ssh.run(p.hosts, \"echo \" .. p.token)\n  ssh.run(p.hosts, \"echo kernel\")",
        ),
    )
    .unwrap();
    let o = opslet(&data, tmp.path(), &["test", "./os-report"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(&format!("the transcript has no ssh.run on {a} with {{\"command\":\"echo kernel\"}}")), "{out}");
}

/// `opslet publish` runs the applet's tests: a failing applet is refused (or, with `[publish]
/// tests = "warn"`, published with a warning), and how they went is kept with the version.
#[test]
fn publish_refuses_an_applet_whose_tests_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let app = tmp.path().join("os-report");
    let passing = r#"
test("reports each host's OS", function()
  fake("ssh.run", { stdout = "Linux" })
  assert.eq(run({ hosts = "web1" }).os, { web1 = "Linux" })
end)
"#;
    write(
        &app,
        &[
            ("applet.toml", MANIFEST),
            ("main.lua", MAIN),
            ("tests/hosts.csv", "name,address,groups\nweb1,10.0.0.1,fleet\n"),
            ("tests/report.lua", passing),
            (
                "tests/wrong.lua",
                "test(\"expects BSD\", function()\n  fake(\"ssh.run\", { stdout = \"Linux\" })\n  assert.eq(run({ hosts = \"web1\" }).os, { web1 = \"BSD\" })\nend)\n",
            ),
        ],
    );
    let o = opslet(&data, tmp.path(), &["publish", "./os-report"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("1 of 2 tests failed; nothing was published") && out.contains("tests/wrong.lua › expects BSD"), "{out}");
    let list = opslet(&data, tmp.path(), &["list", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]", "nothing was published");

    // "warn": published, and the version says how its tests went.
    std::fs::write(data.join("opslet.toml"), "[publish]\ntests = \"warn\"\n").unwrap();
    let o = opslet(&data, tmp.path(), &["publish", "./os-report"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning: os-report@1.0.0: 1 of 2 tests failed; published anyway"), "{}", text(&o));
    let shown = opslet(&data, tmp.path(), &["show", "os-report"]);
    assert!(text(&shown).contains("tests:      1 passed, 1 failed"), "{}", text(&shown));

    // Fixed: a new version whose tests pass; the market's search shows it.
    std::fs::remove_file(app.join("tests/wrong.lua")).unwrap();
    std::fs::write(app.join("applet.toml"), MANIFEST.replace("1.0.0", "1.1.0")).unwrap();
    std::fs::write(data.join("opslet.toml"), "").unwrap();
    let o = opslet(&data, tmp.path(), &["publish", "./os-report"]);
    assert!(o.status.success() && text(&o).contains("os-report@1.1.0: 1 test passed"), "{}", text(&o));
    let hits: Value = serde_json::from_slice(&opslet(&data, tmp.path(), &["search", "os", "--format", "json"]).stdout).unwrap();
    assert_eq!((hits[0]["tests"]["passed"].as_u64(), hits[0]["tests"]["failed"].as_u64()), (Some(1), Some(0)), "{hits}");
    // A bad setting is named.
    std::fs::write(data.join("opslet.toml"), "[publish]\ntests = \"sometimes\"\n").unwrap();
    let o = opslet(&data, tmp.path(), &["publish", "./os-report"]);
    assert!(text(&o).contains("publish.tests: `sometimes` is not one of required, warn, off"), "{}", text(&o));
}

/// Each case starts over: its own store (kv, the cmdb fixture) and its own fakes.
#[test]
fn each_case_starts_with_a_store_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("counter");
    write(
        &app,
        &[
            ("applet.toml", "name = \"counter\"\nversion = \"1.0.0\"\n"),
            ("main.lua", "return function() local n = (kv.get(\"n\") or 0) + 1 kv.set(\"n\", n) return n end"),
            (
                "tests/count.lua",
                "test(\"first\", function() assert.eq(run({}), 1) assert.eq(run({}), 2) end)\ntest(\"second\", function() assert.eq(run({}), 1) end)\n",
            ),
        ],
    );
    let o = opslet(&tmp.path().join("data"), tmp.path(), &["test", "counter"]);
    assert!(o.status.success() && text(&o).contains("1 applet: 2 passed, 0 failed"), "{}", text(&o));
}

/// `opslet test --watch`: the tests run again when a file of the applet changes.
#[test]
fn watch_runs_the_tests_again_on_a_change() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("counter");
    write(
        &app,
        &[
            ("applet.toml", "name = \"counter\"\nversion = \"1.0.0\"\n"),
            ("main.lua", "return function() return 1 end"),
            ("tests/one.lua", "test(\"one\", function() assert.eq(run({}), 1) end)\n"),
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["test", "counter", "--watch"])
        .current_dir(tmp.path())
        .env("OPSLET_DATA_DIR", tmp.path().join("data"))
        .env_remove("OPSLET_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(want) => return,
                Ok(_) => {}
                Err(_) => panic!("no line with {want:?}"),
            }
        }
    };
    wait_for("1 applet: 1 passed, 0 failed");
    // A change that breaks the applet: the tests run again and say so.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(app.join("main.lua"), "return function() return 2 end").unwrap();
    wait_for("1 applet: 0 passed, 1 failed");
    let _ = child.kill();
    let _ = child.wait();
}

/// A bundle is tested like a folder: `opslet import` and `POST /api/v1/registry/publish` run its
/// tests and refuse it when one fails.
#[test]
fn import_and_http_publish_run_the_bundles_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    let app = tmp.path().join("os-report");
    write(
        &app,
        &[
            ("applet.toml", MANIFEST),
            ("main.lua", MAIN),
            ("tests/hosts.csv", "name,address,groups\nweb1,10.0.0.1,fleet\n"),
            (
                "tests/wrong.lua",
                "test(\"expects BSD\", function()\n  fake(\"ssh.run\", { stdout = \"Linux\" })\n  assert.eq(run({ hosts = \"web1\" }).os, { web1 = \"BSD\" })\nend)\n",
            ),
        ],
    );
    // Published where tests are off, exported as a bundle.
    std::fs::write(from.join("opslet.toml"), "[publish]\ntests = \"off\"\n").unwrap();
    let o = opslet(&from, tmp.path(), &["publish", "./os-report", "--no-sign"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = opslet(&from, tmp.path(), &["export", "os-report", "-o", "os.bundle"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = opslet(&to, tmp.path(), &["import", "os.bundle", "--allow-unsigned"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("1 of 1 tests failed; nothing was published") && text(&o).contains("expects BSD"), "{}", text(&o));
    // Over HTTP, by a publisher.
    let o = opslet(&to, tmp.path(), &["user", "add", "pat", "--role", "publisher"]);
    assert!(o.status.success());
    let token = String::from_utf8(opslet(&to, tmp.path(), &["token", "create", "pat"]).stdout).unwrap().trim().to_string();
    let (mut child, addr) = common::serve::spawn(&to, &[]);
    opslet::install_tls_provider();
    let bundle = std::fs::read(tmp.path().join("os.bundle")).unwrap();
    let (code, body) = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/registry/publish"))
            .bearer_auth(&token)
            .body(bundle)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    common::serve::stop(&mut child);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("tests failed") && body.contains("expects BSD"), "{body}");
    let list = opslet(&to, tmp.path(), &["list", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]", "nothing was published");
}
