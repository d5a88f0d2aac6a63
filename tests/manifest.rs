//! Manifest and params validation with bad input: each error names what was wrong and where.

mod common;

use std::collections::BTreeMap;

use opslet::applet::params::resolve;
use opslet::applet::{AppletPackage, Manifest};
use opslet::error::Error;
use serde_json::json;

const BASE: &str = "name = \"disk-check\"\nversion = \"1.2.0\"\n";

/// Parses a manifest that must fail and checks the error text.
fn bad(src: &str, expect: &[&str]) {
    let errs = Manifest::parse(src).expect_err(&format!("manifest should be rejected:\n{src}"));
    let text = errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    for e in expect {
        assert!(text.contains(e), "error for\n{src}\nwas\n{text}\nexpected to contain `{e}`");
    }
}

#[test]
fn valid_manifest_with_everything() {
    let m = Manifest::parse(
        r#"
name = "disk-check"
version = "1.2.0-rc.1"
description = "Disk usage"
tags = ["disk", "linux"]

[params.hosts]
type = "host-selector"
required = true
description = "Which hosts"

[params.threshold]
type = "integer"
default = 90
min = 1
max = 100

[params.mode]
type = "enum"
values = ["fast", "full"]
default = "fast"

[params.paths]
type = "list"
items = "string"
default = ["/", "/var"]

[permissions]
ssh = { hosts = ["group:web"], commands = ["df *"] }
zabbix = ["read"]

[limits]
timeout = "2m"
memory = "128MiB"
cpu = "10s"
"#,
    )
    .unwrap();
    assert_eq!(m.id(), "disk-check@1.2.0-rc.1");
    assert_eq!(m.params.keys().collect::<Vec<_>>(), ["hosts", "threshold", "mode", "paths"], "declaration order is kept");
    assert_eq!(m.limits.memory, Some(128 * 1024 * 1024));
    assert_eq!(m.permission_lines["zabbix"], 30);
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    bad(&format!("{BASE}descripton = \"typo\"\n"), &["applet.toml:3:1", "unknown field `descripton`"]);
    bad(&format!("{BASE}[params.x]\ntype = \"string\"\nrequird = true\n"), &["applet.toml:", "unknown field `requird`"]);
    bad(&format!("{BASE}[limits]\nwall = \"1s\"\n"), &["applet.toml:4", "unknown field `wall`"]);
}

#[test]
fn names_and_versions() {
    for name in ["Disk", "disk_check", "-disk", "disk-", "", "a/b", "äpp", &"x".repeat(65)] {
        bad(&format!("name = {name:?}\nversion = \"1.0.0\"\n"), &["applet.toml:1", "name:"]);
    }
    bad("name = \"ok\"\nversion = \"1.0\"\n", &["applet.toml:2", "not semver"]);
    bad("name = \"ok\"\n", &["missing field `version`"]);
    bad("name = \"ok\"\nversion = 1\n", &["applet.toml:2"]);
    bad("name = \"ok\"\nversion = \"1.0.0\"\ntags = [\"Bad Tag\"]\n", &["tag `Bad Tag`"]);
}

#[test]
fn param_specs() {
    bad(&format!("{BASE}[params.x]\ntype = \"strin\"\n"), &["applet.toml:4", "unknown variant `strin`"]);
    bad(&format!("{BASE}[params.x]\ntype = \"enum\"\n"), &["params.x", "needs `values"]);
    bad(&format!("{BASE}[params.x]\ntype = \"string\"\nvalues = [\"a\"]\n"), &["only allowed with type = \"enum\""]);
    bad(&format!("{BASE}[params.x]\ntype = \"integer\"\ndefault = \"ten\"\n"), &["params.x", "default", "expected an integer"]);
    bad(&format!("{BASE}[params.x]\ntype = \"integer\"\ndefault = 5\nmax = 3\n"), &["above the maximum"]);
    bad(&format!("{BASE}[params.x]\ntype = \"string\"\nrequired = true\ndefault = \"a\"\n"), &["required param cannot have a default"]);
    bad(&format!("{BASE}[params.\"bad-name\"]\ntype = \"string\"\n"), &["params.bad-name", "identifiers"]);
    bad(&format!("{BASE}[params.x]\ntype = \"list\"\nitems = \"enum\"\n"), &["list items"]);
}

#[test]
fn permissions_and_limits() {
    bad(&format!("{BASE}[permissions]\nssh = 5\n"), &["applet.toml:4", "permissions.ssh"]);
    bad(&format!("{BASE}[permissions]\nzabbix = [\"read\", 3]\n"), &["permissions.zabbix", "only strings"]);
    bad(&format!("{BASE}[limits]\ntimeout = \"soon\"\n"), &["applet.toml:4", "limits.timeout", "not a duration"]);
    bad(&format!("{BASE}[limits]\nmemory = \"lots\"\n"), &["limits.memory", "not a size"]);
}

#[test]
fn every_error_is_reported_at_once() {
    let errs = Manifest::parse("name = \"BAD\"\nversion = \"x\"\n[limits]\ntimeout = \"never\"\n").unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn package_problems_point_at_files_and_lines() {
    let mut files = BTreeMap::new();
    files.insert("applet.toml".to_string(), BASE.as_bytes().to_vec());
    files.insert("main.lua".to_string(), b"return function()\n  local x = \nend\n".to_vec());
    files.insert("lib/util.lua".to_string(), b"return {".to_vec());
    let Err(Error::Applet(errs)) = AppletPackage::from_files(files) else { panic!("syntax errors must be reported") };
    let text = errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(text.contains("main.lua:3:"), "{text}");
    assert!(text.contains("lib/util.lua:1:"), "{text}");

    let mut files = BTreeMap::new();
    files.insert("main.lua".to_string(), b"return function() end".to_vec());
    files.insert("../evil.lua".to_string(), b"".to_vec());
    let Err(Error::Applet(errs)) = AppletPackage::from_files(files) else { panic!() };
    let text = errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(text.contains("applet.toml: missing"), "{text}");
    assert!(text.contains("../evil.lua: path component `..`"), "{text}");
}

#[test]
fn load_dir_refuses_symlinks_and_skips_hidden_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("applet.toml"), BASE).unwrap();
    std::fs::write(dir.path().join("main.lua"), "return function() end").unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/config"), "x").unwrap();
    let pkg = AppletPackage::load_dir(dir.path()).unwrap();
    assert_eq!(pkg.files.keys().collect::<Vec<_>>(), ["applet.toml", "main.lua"]);
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd.lua")).unwrap();
    let Err(Error::Applet(errs)) = AppletPackage::load_dir(dir.path()) else { panic!("symlink must be refused") };
    assert!(errs[0].to_string().contains("symlinks are not allowed"), "{errs:?}");
}

fn params_manifest() -> Manifest {
    Manifest::parse(&format!(
        "{BASE}[params.hosts]\ntype = \"host-selector\"\nrequired = true\n[params.n]\ntype = \"integer\"\ndefault = 3\nmin = 1\nmax = 10\n\
         [params.ratio]\ntype = \"number\"\n[params.force]\ntype = \"boolean\"\ndefault = false\n\
         [params.mode]\ntype = \"enum\"\nvalues = [\"fast\", \"full\"]\n[params.ports]\ntype = \"list\"\nitems = \"integer\"\n"
    ))
    .unwrap()
}

#[test]
fn params_are_typed_and_defaulted() {
    let m = params_manifest();
    let pairs: Vec<(String, String)> =
        [("hosts", "group:web"), ("n", "7"), ("ratio", "0.5"), ("force", "yes"), ("mode", "full"), ("ports", "22, 80,443")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let p = resolve(&m, None, &pairs).unwrap();
    assert_eq!(
        serde_json::Value::Object(p),
        json!({ "hosts": "group:web", "n": 7, "ratio": 0.5, "force": true, "mode": "full", "ports": [22, 80, 443] })
    );

    let p = resolve(&m, Some(json!({ "hosts": "web*", "ports": [1] }).as_object().unwrap()), &[("n".into(), "2".into())]).unwrap();
    assert_eq!(serde_json::Value::Object(p), json!({ "hosts": "web*", "ports": [1], "n": 2, "force": false }));
}

#[test]
fn bad_params_are_all_named() {
    let m = params_manifest();
    let json = json!({ "n": "three", "ratio": true, "mode": "slow", "ports": [22, "x"], "extra": 1 });
    let errs = resolve(&m, json.as_object(), &[("force".into(), "maybe".into())]).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    for expect in [
        "param `hosts`: required host-selector param is missing",
        "param `n`: expected an integer, got string \"three\"",
        "param `ratio`: expected a number, got boolean true",
        "param `mode`: `slow` is not one of: fast, full",
        "param `ports`: item 2: expected an integer",
        "param `extra`: unknown param",
        "param `force`: `maybe` is not a boolean",
    ] {
        assert!(text.contains(expect), "missing `{expect}` in:\n{text}");
    }
    let errs = resolve(&m, None, &[("hosts".into(), "  ".into()), ("n".into(), "11".into())]).unwrap_err();
    let text = errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(text.contains("host selector is empty") && text.contains("above the maximum 10"), "{text}");
}

#[test]
fn invalid_params_stop_the_run_and_are_audited() {
    let rt = common::runtime(common::TIGHT);
    let pkg =
        common::package_with(&format!("{BASE}[params.n]\ntype = \"integer\"\nrequired = true\n"), "return function(p) return p.n end", &[]);
    let mut r = common::req(pkg);
    r.params_pairs = vec![("n".into(), "x".into())];
    let o = common::run_req(&rt, r);
    assert_eq!(o.status, opslet::runtime::RunStatus::InvalidParams);
    let recs = rt.store().unwrap().audit().list(&Default::default()).unwrap();
    assert_eq!(recs.last().unwrap().status.as_deref(), Some("invalid_params"));
}

#[test]
fn memory_request_has_a_floor() {
    bad(&format!("{BASE}[limits]\nmemory = \"1KiB\"\n"), &["applet.toml:4", "below the minimum of 2MiB"]);
    let e = opslet::config::Config::parse("[limits]\nmax_memory = \"1MiB\"\n", "opslet.toml").unwrap_err();
    assert!(e.to_string().contains("at least 2MiB"), "{e}");
}

#[test]
fn each_module_reads_its_own_table_and_a_mistake_is_named_where_it_is() {
    use opslet::config::Config;
    let err = |text: &str| opslet::modules::from_config(&Config::parse(text, "opslet.toml").unwrap()).err().map(|e| e.to_string());
    // A type mistake inside a module's table: the file, line and column.
    let e = err("[audit]\nsync = false\n[ssh]\nconcurrency = \"many\"\n").unwrap();
    assert!(e.contains("opslet.toml:4:15") && e.contains("invalid type"), "{e}");
    let e = err("[zabbix.main]\nurl = \"https://z.example/api_jsonrpc.php\"\ntoken_secret = \"t\"\ntimeot = \"5s\"\n").unwrap();
    assert!(e.contains("opslet.toml:4:1") && e.contains("unknown field `timeot`"), "{e}");
    // A rule the module checks: the file and the key.
    let e = err("[[ssh.credentials]]\nhosts = \"*\"\nuser = \"ops\"\n").unwrap();
    assert!(e.contains("invalid config: opslet.toml: ssh.credentials[0]") && e.contains("give password_secret or key_secret"), "{e}");
    let e = err("[netdev]\nconcurrency = 0\n").unwrap();
    assert!(e.contains("netdev.concurrency must be between 1 and 1000"), "{e}");
    // A table no module reads, and a misspelt core table.
    let e = err("[sssh]\nconcurrency = 4\n").unwrap();
    assert!(
        e.contains("unknown table `[sssh]`") && e.contains("known: limits, kv, audit, serve, ssh, zabbix, es, netdev, ipmi, s3, virt)"),
        "{e}"
    );
    // Modules without a table of their own have none to give.
    assert!(err("[cmdb]\nx = 1\n").unwrap().contains("unknown table `[cmdb]`"));
    assert!(err("[config]\nx = 1\n").unwrap().contains("unknown table `[config]`"));
    assert!(err("[limit]\ntimeout = \"5s\"\n").unwrap().contains("unknown table `[limit]`"));
    // The virt table is known even in a build without the module.
    assert_eq!(err("[virt.lab]\nuri = \"test:///default\"\n"), None);
    assert_eq!(err("[audit]\nsync = false\n"), None);
    // A configuration built in code (no file) is read from its tables.
    let mut cfg = Config::default();
    cfg.tables.insert("ssh".into(), toml::from_str::<toml::Value>("concurrency = 7").unwrap());
    let ssh = opslet::kit::ssh::SshSettings::from_config(&cfg).unwrap();
    assert_eq!(ssh.concurrency, 7);
    cfg.tables.insert("ssh".into(), toml::from_str::<toml::Value>("concurrency = \"x\"").unwrap());
    let e = opslet::kit::ssh::SshSettings::from_config(&cfg).unwrap_err().to_string();
    assert!(e.contains("invalid config: [ssh]") && e.contains("invalid type"), "{e}");
}
