//! cmdb import/export against real Ansible: opslet's reading of an inventory must agree with
//! `ansible-inventory` on the same file, the files opslet writes must read back the same in
//! Ansible, and `opslet cmdb inventory` must work as Ansible's dynamic inventory script.
//! ansible-core comes from `scripts/peers/ssh.sh ansible` (scripts/test.sh runs it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inventory");

fn ansible_inventory() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv-ansible/bin/ansible-inventory");
    assert!(p.exists(), "{} is missing: run `scripts/peers/ssh.sh ansible` (scripts/test.sh does)", p.display());
    p
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }

    fn opslet(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .env("OPSLET_DATA_DIR", self.dir.path().join("data"))
            .env_remove("OPSLET_CONFIG")
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.opslet(args);
        assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn ansible_list(inventory: &str) -> Value {
    let o = Command::new(ansible_inventory())
        .args(["-i", inventory, "--list"])
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .env("ANSIBLE_LOCAL_TEMP", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "ansible-inventory -i {inventory}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// What both sides must agree on: each group's direct hosts and children, and each host's
/// variables as text (values become text in the cmdb), default port and address left out.
#[derive(Debug, PartialEq)]
struct View {
    groups: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    hostvars: BTreeMap<String, BTreeMap<String, String>>,
}

fn view(list: &Value) -> View {
    let mut groups = BTreeMap::new();
    for (g, body) in list.as_object().unwrap() {
        if g == "_meta" || g == "all" {
            continue;
        }
        let set = |k: &str| -> BTreeSet<String> {
            body.get(k).and_then(Value::as_array).map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect()).unwrap_or_default()
        };
        let (hosts, children) = (set("hosts"), set("children"));
        if !hosts.is_empty() || !children.is_empty() {
            groups.insert(g.clone(), (hosts, children));
        }
    }
    let mut hostvars = BTreeMap::new();
    for (h, vars) in list["_meta"]["hostvars"].as_object().unwrap() {
        let mut m = BTreeMap::new();
        for (k, v) in vars.as_object().unwrap() {
            // opslet leaves credentials out of the cmdb on purpose.
            if opslet::cmdb::inventory::looks_secret(k) {
                continue;
            }
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if (k == "ansible_port" && text == "22") || (k == "ansible_host" && &text == h) {
                continue;
            }
            m.insert(k.clone(), text);
        }
        hostvars.insert(h.clone(), m);
    }
    View { groups, hostvars }
}

fn check_fixture(file: &str) {
    let src = format!("{FIXTURES}/{file}");
    let theirs = view(&ansible_list(&src));
    let env = Env::new();
    let out = env.opslet(&["cmdb", "import", &src]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    if file.ends_with(".ini") {
        let warn = String::from_utf8_lossy(&out.stderr);
        assert!(warn.contains("not imported, they look like credentials") && warn.contains("ansible_become_password"), "{warn}");
        assert!(!env.ok(&["cmdb", "export", "--format", "json"]).contains("S3cret-become"), "the credential stays out of the cmdb");
    }
    let ours: Value = serde_json::from_str(&env.ok(&["cmdb", "inventory", "--list"])).unwrap();
    assert_eq!(view(&ours), theirs, "opslet's reading of {file} differs from Ansible's");

    // Exported as INI and as YAML, Ansible reads the same inventory back.
    for fmt in ["ini", "yml"] {
        let out = env.path(&format!("export.{fmt}"));
        env.ok(&["cmdb", "export", "-o", &out]);
        assert_eq!(view(&ansible_list(&out)), theirs, "{file} exported as {fmt}");
    }

    // opslet itself as Ansible's dynamic inventory script.
    let script = env.path("inventory.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nOPSLET_DATA_DIR='{}' exec '{}' cmdb inventory \"$@\"\n",
            env.dir.path().join("data").display(),
            env!("CARGO_BIN_EXE_opslet")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(view(&ansible_list(&script)), theirs, "{file} through the dynamic inventory");
}

#[test]
fn an_ini_inventory_reads_as_ansible_reads_it() {
    check_fixture("datacenter.ini");
}

#[test]
fn a_yaml_inventory_reads_as_ansible_reads_it() {
    check_fixture("datacenter.yml");
}

#[test]
fn every_format_round_trips_without_loss() {
    let env = Env::new();
    env.ok(&["cmdb", "import", &format!("{FIXTURES}/datacenter.ini")]);
    // Things Ansible files do not carry as such: a pinned key, a structured attribute.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEzyQcVaK4S5RlHzz8sX2yZ1sHUbGuhd3Y7kDFAXbS9u";
    env.ok(&["cmdb", "host", "set", "web01.fra1", "--host-key", key, "--tag", "note=a \"quoted\" value; with=signs"]);
    let reference = env.ok(&["cmdb", "export", "--format", "json"]);
    for fmt in ["json", "csv", "ini", "yaml"] {
        let file = env.path(&format!("rt.{fmt}"));
        env.ok(&["cmdb", "export", "--format", fmt, "-o", &file]);
        let fresh = Env::new();
        let o = fresh.opslet(&["cmdb", "import", "--format", fmt, &file]);
        assert!(o.status.success(), "{fmt}: {}", String::from_utf8_lossy(&o.stderr));
        let back = fresh.ok(&["cmdb", "export", "--format", "json"]);
        let (a, b): (Value, Value) = (serde_json::from_str(&reference).unwrap(), serde_json::from_str(&back).unwrap());
        if fmt == "csv" {
            // CSV has no group tree; hosts must match exactly.
            assert_eq!(a["hosts"], b["hosts"], "csv round trip");
        } else {
            assert_eq!(a, b, "{fmt} round trip");
        }
    }
}

#[test]
fn import_is_all_or_nothing_and_keeps_pins() {
    let env = Env::new();
    env.ok(&["cmdb", "import", &format!("{FIXTURES}/datacenter.ini")]);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEzyQcVaK4S5RlHzz8sX2yZ1sHUbGuhd3Y7kDFAXbS9u";
    env.ok(&["cmdb", "host", "set", "db01.fra1", "--host-key", key]);
    // Re-importing the same file changes nothing and keeps the pin.
    let o = env.opslet(&["cmdb", "import", &format!("{FIXTURES}/datacenter.ini")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("added 0 host(s), updated 0 host(s), 9 unchanged"), "{err}");
    let h: Value = serde_json::from_str(&env.ok(&["cmdb", "host", "show", "db01.fra1"])).unwrap();
    assert_eq!(h["host_key"], key);

    // A bad line anywhere: an error naming file and line, and nothing imported.
    let bad = env.path("bad.ini");
    std::fs::write(&bad, "[web]\nnew01 ansible_host=10.0.0.1\nnew02 ansible_port=notaport\n").unwrap();
    let o = env.opslet(&["cmdb", "import", &bad]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("new02") && err.contains("notaport"), "{err}");
    assert!(!env.opslet(&["cmdb", "host", "show", "new01"]).status.success(), "nothing from a bad file is imported");
    let bad = env.path("bad2.ini");
    std::fs::write(&bad, "[web]\nok01\n[web:vars]\nnovalue\n").unwrap();
    let err = String::from_utf8_lossy(&env.opslet(&["cmdb", "import", &bad]).stderr).to_string();
    assert!(err.contains("bad2.ini:4:") && err.contains("KEY=VALUE"), "{err}");

    // --dry-run reports and writes nothing.
    let more = env.path("more.csv");
    std::fs::write(&more, "name,address,groups,tags\nextra1,10.9.9.9,web;canary,env=dev\n").unwrap();
    let err = String::from_utf8_lossy(&env.opslet(&["cmdb", "import", "--dry-run", &more]).stderr).to_string();
    assert!(err.contains("would add 1 host(s) (extra1)"), "{err}");
    assert!(!env.opslet(&["cmdb", "host", "show", "extra1"]).status.success());
    env.ok(&["cmdb", "import", &more]);
    let sel: Value = serde_json::from_str(&env.ok(&["cmdb", "host", "list", "group:canary & tag:env=dev", "--format", "json"])).unwrap();
    assert_eq!(sel[0]["name"], "extra1");
}

#[test]
fn group_vars_nesting_and_selectors_after_import() {
    let env = Env::new();
    env.ok(&["cmdb", "import", &format!("{FIXTURES}/datacenter.ini")]);
    let names = |sel: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(&env.ok(&["cmdb", "host", "list", sel, "--format", "json"])).unwrap();
        v.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_string()).collect()
    };
    // prod > frontend > web: nested groups select through the tree.
    assert_eq!(names("group:prod & tag:http_port=8080"), ["web01.fra1", "web02.fra1", "web03.fra1", "web04.fra1"]);
    assert_eq!(names("group:frontend & !group:web"), ["lb-a.fra1", "lb-b.fra1"]);
    let h: Value = serde_json::from_str(&env.ok(&["cmdb", "host", "show", "db01.fra1"])).unwrap();
    assert_eq!(h["port"], 5432);
    assert_eq!(h["address"], "db01.fra1");
    let h: Value = serde_json::from_str(&env.ok(&["cmdb", "host", "show", "web04.fra1"])).unwrap();
    assert_eq!(h["tags"]["rack"], "R12 U4");
    let h: Value = serde_json::from_str(&env.ok(&["cmdb", "host", "show", "bastion.fra1"])).unwrap();
    assert_eq!(h["attrs"]["ansible_user"], "ops");
    let v: Value = serde_json::from_str(&env.ok(&["cmdb", "inventory", "--host", "db02.fra1"])).unwrap();
    assert_eq!(v["ansible_port"], 2222);
    assert_eq!(v["role"], "replica");
}

#[test]
fn hostile_inventories_are_refused_whole() {
    let env = Env::new();
    let write = |name: &str, text: &str| {
        let p = env.path(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        ("cycle.ini", "[a]\nh1\n[a:children]\nb\n[b:children]\na\n", "inside itself"),
        ("meta.ini", "[_meta]\nh1\n", "reserved"),
        ("ansible-tag.csv", "name,tags\nh1,ansible_ssh_common_args=-oProxyCommand=x\n", "connection settings"),
        ("newline.json", r#"[{"name":"h1","address":"h1","tags":{"a":"1\n[all:vars]"}}]"#, "control characters"),
        ("key.json", r#"[{"name":"h1","address":"h1","tags":{"a=1 b":"x"}}]"#, "tag name"),
        ("range.ini", "[web]\nh[1:1000][1:1000]\n", "more than 100000"),
    ];
    for (name, text, want) in cases {
        let o = env.opslet(&["cmdb", "import", &write(name, text)]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(want), "{name}: {err}");
    }
    let hosts: Value = serde_json::from_str(&env.ok(&["cmdb", "export", "--format", "json"])).unwrap();
    assert_eq!(hosts["hosts"], serde_json::json!([]), "nothing from a refused file is stored");
    assert_eq!(hosts["groups"], serde_json::json!({}));
}
