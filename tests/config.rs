//! Config items published to real OpenSSH hosts (tests/common/sshd.rs): a publish to several
//! hosts, a validate that fails on one (the old file is put back and the service reloaded with
//! it), a failing health check, drift found and repaired, a rollback, the permission refused, a
//! dry run with diffs, the wrong environment refused, 50 hosts at once, and `opslet config watch`.
//!
//! The fleet's hosts share this machine's filesystem, so each host's file lives under a folder
//! of its own: the item's path uses `{{ host.name }}`. The "service" is `cp` of the file to
//! `app.conf.loaded`, which is what it "runs".

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::sshd::{Fleet, USER};
use common::*;
use opslet::cmdb::config_items::{ConfigItems, ItemSpec};
use opslet::cmdb::{Cmdb, Host};
use opslet::runtime::{RunOutcome, Runtime};
use opslet::secrets::Secrets;
use opslet::store::Store;
use opslet::store::audit::Filter;
use serde_json::{Value, json};

struct Lab {
    fleet: Fleet,
    store: Store,
    rt: Runtime,
    /// Where the hosts' files are: ROOT/HOST/app.conf.
    root: PathBuf,
    _root_dir: tempfile::TempDir,
}

fn uid_of(user: &str) -> u32 {
    let out = std::process::Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `n` hosts web1..webN tagged env=dev, in group `web`; `groups` adds groups per host name.
fn lab(n: usize, groups: &[(&str, &str)]) -> Lab {
    let fleet = Fleet::start(n, "web");
    let store = Store::temporary().unwrap();
    let cmdb = Cmdb::new(store.clone()).unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().to_path_buf();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uid = uid_of(USER);
    for h in &fleet.hosts {
        let mut g: std::collections::BTreeSet<String> = ["web".to_string()].into();
        g.extend(groups.iter().filter(|(host, _)| *host == h.name).map(|(_, grp)| grp.to_string()));
        let host = Host {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            groups: g,
            tags: [("env".to_string(), "dev".to_string())].into(),
            host_key: Some(h.host_key.clone()),
            ..Default::default()
        };
        cmdb.put(host, "tester").unwrap();
        let d = root.join(&h.name);
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(uid), None).unwrap();
    }
    let secrets = Secrets::open(store.clone()).unwrap();
    secrets.set("ssh-key", fleet.client_key.as_bytes(), "tester").unwrap();
    secrets.set("app-token", b"s3cr3t-app-token", "tester").unwrap();
    let config = "[audit]\nsync = false\n[limits]\ntimeout = \"60s\"\n[ssh]\nconnect_timeout = \"5s\"\n\
                  [[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n";
    let cfg = opslet::config::Config::parse(config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    Lab { fleet, store, rt, root, _root_dir: root_dir }
}

/// The item: `port` and `workers` per environment and group, a token from secrets. `validate`
/// fails when the file holds `broken`; the health check fails when the loaded file holds `crash`.
fn item(root: &Path, port: u32, extra: &str) -> ItemSpec {
    let text = format!(
        r#"
name = "app"
path = "{root}/{{{{ host.name }}}}/app.conf"
mode = "0640"
owner = "{USER}"
validate = "! grep -q broken {{path}}"
reload = "cp {{path}} {{path}}.loaded"
health = "! grep -q crash {{path}}.loaded"
template = """
# managed by opslet: {{{{ item }}}} for {{{{ host.name }}}} ({{{{ env }}}})
port = {{{{ port }}}}
workers = {{{{ workers }}}}
token = {{{{ secret("app-token") }}}}
{{{{ extra }}}}
"""
[values]
port = {port}
workers = 2
extra = ""
[values.env.prod]
workers = 16
[values.group.bad]
extra = "broken = yes"
[values.group.crashy]
extra = "crash = now"
{extra}
"#,
        root = root.display()
    );
    ItemSpec::parse("app.toml", &text, None).unwrap()
}

impl Lab {
    fn set(&self, spec: ItemSpec, message: &str) -> u32 {
        ConfigItems::open(&self.store).unwrap().set(&self.store, spec, "tester", message).unwrap().0.version
    }

    fn run(&self, scope: &str, main: &str, dry_run: bool) -> RunOutcome {
        let manifest = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nconfig = {scope}\n");
        let mut r = req(package_with(&manifest, main, &[]));
        r.dry_run = dry_run;
        run_req(&self.rt, r)
    }

    fn file(&self, host: &str) -> String {
        std::fs::read_to_string(self.root.join(host).join("app.conf")).unwrap_or_default()
    }

    fn loaded(&self, host: &str) -> String {
        std::fs::read_to_string(self.root.join(host).join("app.conf.loaded")).unwrap_or_default()
    }
}

const PUBLISH: &str = r#"["read", "publish"]"#;

fn sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn publish_fail_validate_on_one_host_detect_drift_repair_and_roll_back() {
    let lab = lab(3, &[]);
    let v1 = lab.set(item(&lab.root, 8080, ""), "first");
    // Publish v1 to three hosts.
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "group:web") end"#, false);
    let v = ok(&o);
    for h in ["web1", "web2", "web3"] {
        let r = by_host(v, h);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["action"], "publish");
        assert_eq!(r["changed"], true);
        let file = lab.file(h);
        assert!(file.contains("port = 8080") && file.contains(&format!("for {h} (dev)")), "{file}");
        assert!(file.contains("token = s3cr3t-app-token"), "the secret is in the file on the host");
        assert_eq!(lab.loaded(h), file, "reloaded with the new file");
        let mode = std::fs::metadata(lab.root.join(h).join("app.conf")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(r["after_sha256"], sha(&file));
        // No temp or backup files are left beside it.
        let left: Vec<_> = std::fs::read_dir(lab.root.join(h)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
    // The result never shows the secret; the audit log has hashes before and after.
    assert!(!v.to_string().contains("s3cr3t-app-token"));
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.len(), 3);
    for a in &acts {
        assert_eq!(a.data["action"], "publish");
        assert_eq!(a.data["detail"]["version"], v1);
        assert_eq!(a.data["detail"]["before_sha256"], Value::Null, "no file before");
        assert_eq!(a.data["detail"]["after_sha256"], sha(&lab.file(a.data["target"].as_str().unwrap())));
    }
    // Publishing the same version again changes nothing and reloads nothing.
    std::fs::remove_file(lab.root.join("web1/app.conf.loaded")).unwrap();
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web1") end"#, false);
    assert_eq!(ok(&o)[0]["changed"], false);
    assert_eq!(lab.loaded("web1"), "", "an unchanged file is not reloaded");
    ok(&lab.run(PUBLISH, r#"return function() return config.publish("app", "web1") end"#, false));
    let old = lab.file("web2");

    // v2 breaks on web2 (in group `bad`): validation runs on the installed file, fails, and the
    // old file is put back and the service reloaded with it. The other hosts get v2.
    Cmdb::new(lab.store.clone())
        .unwrap()
        .put(
            Host {
                groups: ["web".to_string(), "bad".to_string()].into(),
                ..Cmdb::new(lab.store.clone()).unwrap().host("web2").unwrap().unwrap()
            },
            "tester",
        )
        .unwrap();
    let v2 = lab.set(item(&lab.root, 9090, ""), "move to 9090");
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "group:web") end"#, false);
    let v = ok(&o);
    let bad = by_host(v, "web2");
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["failed_at"], "validate");
    assert_eq!(bad["restored"], "reloaded");
    let err = bad["error"].as_str().unwrap();
    assert!(err.contains("validate failed on web2; the previous file was put back and the service reloaded with it"), "{err}");
    assert_eq!(lab.file("web2"), old, "the old file is back");
    assert_eq!(lab.loaded("web2"), old, "and the service runs it");
    for h in ["web1", "web3"] {
        assert_eq!(by_host(v, h)["ok"], true);
        assert!(lab.file(h).contains("port = 9090"));
    }
    let fail = actions(&lab.store, &o).into_iter().find(|a| a.data["target"] == "web2").unwrap();
    assert_eq!(fail.status.as_deref(), Some("error"));
    assert_eq!(fail.data["detail"]["before_sha256"], sha(&old));
    assert_eq!(fail.data["detail"]["restored"], "reloaded");

    // Status: web2 still runs v1 and is marked failed.
    let o = lab.run(PUBLISH, r#"return function() return config.status("app") end"#, false);
    let st = ok(&o);
    assert_eq!(by_host_state(st, "web2")["status"], "failed");
    assert_eq!(by_host_state(st, "web2")["version"], v1);
    assert_eq!(by_host_state(st, "web1")["version"], v2);

    // A hand edit on web3 is drift; repair puts the recorded version back.
    let edited = lab.file("web3").replace("workers = 2", "workers = 99");
    std::fs::write(lab.root.join("web3/app.conf"), &edited).unwrap();
    let o = lab.run(PUBLISH, r#"return function() return config.check("app", "web1,web3") end"#, false);
    let v = ok(&o);
    assert_eq!(by_host(v, "web1")["status"], "in-sync");
    assert_eq!(by_host(v, "web3")["status"], "drifted");
    assert_eq!(lab.file("web3"), edited, "check alone changes nothing");
    let o = lab.run(PUBLISH, r#"return function() return config.status("app") end"#, false);
    assert_eq!(by_host_state(ok(&o), "web3")["status"], "drifted");
    let o = lab.run(PUBLISH, r#"return function() return config.check("app", "web3", { repair = true }) end"#, false);
    let r = &ok(&o)[0];
    assert_eq!(r["repaired"], true, "{r}");
    assert!(lab.file("web3").contains("workers = 2") && lab.file("web3").contains("port = 9090"));
    let acts = actions(&lab.store, &o);
    assert_eq!(acts.iter().map(|a| a.data["action"].as_str().unwrap()).collect::<Vec<_>>(), ["check", "repair"]);
    assert_eq!(acts[0].data["detail"]["status"], "drifted");
    assert_eq!(acts[1].data["detail"]["before_sha256"], sha(&edited));
    let o = lab.run(PUBLISH, r#"return function() return config.status("app") end"#, false);
    assert_eq!(by_host_state(ok(&o), "web3")["status"], "in-sync");

    // A hand change of mode is drift too, named; repair puts the item's mode back.
    std::fs::set_permissions(lab.root.join("web1/app.conf"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = lab.run(PUBLISH, r#"return function() return config.check("app", "web1", { repair = true }) end"#, false);
    let r = &ok(&o)[0];
    assert_eq!(r["status"], "drifted", "{r}");
    assert_eq!(r["drift"], "mode is 0666, the item says 0640");
    assert_eq!(r["repaired"], true);
    assert_eq!(std::fs::metadata(lab.root.join("web1/app.conf")).unwrap().permissions().mode() & 0o777, 0o640);
    // Roll web1 and web3 back to v1.
    let o = lab.run(PUBLISH, &format!(r#"return function() return config.publish("app", "web1,web3", {{ version = {v1} }}) end"#), false);
    for r in ok(&o).as_array().unwrap() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["action"], "rollback");
    }
    assert!(lab.file("web1").contains("port = 8080") && lab.loaded("web1").contains("port = 8080"));
    assert!(actions(&lab.store, &o).iter().all(|a| a.data["action"] == "rollback" && a.data["detail"]["previous_version"] == v2));
}

fn by_host_state<'a>(v: &'a Value, host: &str) -> &'a Value {
    v.as_array().unwrap().iter().find(|r| r["host"] == host).unwrap_or_else(|| panic!("no state for {host} in {v}"))
}

#[test]
fn a_failing_health_check_or_candidate_validation_keeps_the_old_file() {
    let lab = lab(2, &[("web2", "crashy")]);
    // v1 without the crash value anywhere: publish to both.
    let mut spec = item(&lab.root, 8080, "");
    spec.values.group.remove("crashy");
    lab.set(spec, "v1");
    ok(&lab.run(PUBLISH, r#"return function() return config.publish("app", "*") end"#, false));
    let old = lab.file("web2");
    // Mode drift is put right even when the content is the same (and nothing is reloaded).
    std::fs::set_permissions(lab.root.join("web1/app.conf"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web1") end"#, false);
    assert_eq!(ok(&o)[0]["changed"], false);
    assert_eq!(std::fs::metadata(lab.root.join("web1/app.conf")).unwrap().permissions().mode() & 0o777, 0o640);
    // v2 makes web2's service crash after the reload: the health check fails, the old file is
    // put back and reloaded.
    lab.set(item(&lab.root, 8081, ""), "v2");
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "*") end"#, false);
    let r = by_host(ok(&o), "web2");
    assert_eq!(r["failed_at"], "health", "{r}");
    assert_eq!(r["restored"], "reloaded");
    assert_eq!(lab.file("web2"), old);
    assert_eq!(lab.loaded("web2"), old);
    assert!(lab.file("web1").contains("port = 8081"));
    // A validate command that checks the candidate ({file}) stops before anything is touched.
    let mut spec = item(&lab.root, 8082, "");
    spec.validate = Some("! grep -q crash {file}".into());
    lab.set(spec, "v3: validate the candidate");
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web2") end"#, false);
    let r = &ok(&o)[0];
    assert_eq!(r["failed_at"], "validate", "{r}");
    assert!(r.get("restored").is_none());
    assert!(r["error"].as_str().unwrap().contains("the file in place was not touched"));
    assert_eq!(lab.file("web2"), old);
    let left: Vec<_> = std::fs::read_dir(lab.root.join("web2")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left.len(), 2, "no temp file left: {left:?}");
    // A symbolic link where the file goes is refused, in a dry run too.
    std::fs::remove_file(lab.root.join("web1/app.conf")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", lab.root.join("web1/app.conf")).unwrap();
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web1") end"#, false);
    assert_eq!(ok(&o)[0]["failed_at"], "symlink", "{}", ok(&o)[0]);
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web1") end"#, true);
    assert!(ok(&o)[0]["error"].as_str().unwrap().contains("is a symbolic link"), "{}", ok(&o)[0]);
    assert!(std::fs::symlink_metadata(lab.root.join("web1/app.conf")).unwrap().file_type().is_symlink());
}

#[test]
fn a_first_publish_that_fails_leaves_no_file() {
    let lab = lab(1, &[("web1", "crashy")]);
    lab.set(item(&lab.root, 8080, ""), "first");
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web1") end"#, false);
    let r = &ok(&o)[0];
    assert_eq!(r["failed_at"], "health", "{r}");
    assert!(r["error"].as_str().unwrap().contains("the new file was removed (there was none before)"), "{r}");
    assert!(!lab.root.join("web1/app.conf").exists());
    let o = lab.run(PUBLISH, r#"return function() return config.status("app") end"#, false);
    assert_eq!(ok(&o)[0]["status"], "failed");
}

#[test]
fn permission_environment_and_dry_run() {
    let lab = lab(2, &[]);
    lab.set(item(&lab.root, 8080, ""), "first");
    // Without `publish`: refused before anything is sent.
    for call in [r#"config.publish("app", "*")"#, r#"config.check("app", "*", { repair = true })"#] {
        let o = lab.run(r#"["read"]"#, &format!("return function() return {call} end"), false);
        assert!(err_text(&o).contains("does not grant `publish`"), "{call}: {}", err_text(&o));
        assert!(actions(&lab.store, &o).is_empty());
    }
    assert_eq!(lab.file("web1"), "");
    // Option errors name the call and the option.
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "*", { timeout = "soon" }) end"#, false);
    assert!(err_text(&o).contains("config.publish: opts.timeout:"), "{}", err_text(&o));
    let o = lab.run(PUBLISH, r#"return function() return config.check("app", "*", { env = "dev" }) end"#, false);
    assert!(err_text(&o).contains("config.check: unknown option `env`"), "{}", err_text(&o));
    // Items and hosts outside a table scope.
    let o = lab.run(
        r#"{ items = ["nginx*"], actions = ["read", "publish"] }"#,
        r#"return function() return config.publish("app", "*") end"#,
        false,
    );
    assert!(err_text(&o).contains("config item `app` is outside the applet's config items (nginx*)"), "{}", err_text(&o));
    let o = lab.run(
        r#"{ hosts = ["web1"], actions = ["read", "publish"] }"#,
        r#"return function() return config.publish("app", "*") end"#,
        false,
    );
    assert!(err_text(&o).contains("web2 is outside the applet's config hosts (web1)"), "{}", err_text(&o));
    // Hosts tagged for another environment are refused one by one.
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "*", { env = "prod" }) end"#, false);
    for r in ok(&o).as_array().unwrap() {
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("is tagged env=dev, and this publish is for env prod"), "{r}");
    }
    assert_eq!(lab.file("web1"), "");
    // A dry run shows the change per host and touches nothing.
    std::fs::write(lab.root.join("web1/app.conf"), "port = 1\n").unwrap();
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "*") end"#, true);
    let v = ok(&o);
    let r = by_host(v, "web1");
    assert_eq!(r["planned"], true);
    let diff = r["diff"].as_str().unwrap();
    assert!(diff.contains("-port = 1") && diff.contains("+port = 8080"), "{diff}");
    assert!(!diff.contains("s3cr3t-app-token"), "secrets are redacted in diffs: {diff}");
    assert_eq!(lab.file("web1"), "port = 1\n");
    assert_eq!(lab.file("web2"), "");
    assert!(actions(&lab.store, &o).iter().all(|a| a.data["detail"]["planned"] == true));
    // render and get read the item.
    let o = lab.run(
        r#"["read"]"#,
        r#"return function() return { text = config.render("app", "web1", { env = "dev" }), item = config.get("app") } end"#,
        false,
    );
    let v = ok(&o);
    assert!(v["text"].as_str().unwrap().contains("port = 8080"));
    // Secrets never reach the applet: render shows where they go.
    assert!(v["text"].as_str().unwrap().contains("token = <secret:app-token>"), "{}", v["text"]);
    assert_eq!(v["item"]["version"], 1);
    assert_eq!(v["item"]["path"], format!("{}/{{{{ host.name }}}}/app.conf", lab.root.display()));
}

#[test]
fn fifty_hosts_at_once_with_the_bundled_applets() {
    let lab = lab(50, &[]);
    lab.set(item(&lab.root, 8080, ""), "first");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("applets");
    let bundled = |name: &str, params: &[(&str, &str)]| {
        let mut r = req(std::sync::Arc::new(opslet::applet::AppletPackage::load_dir(&dir.join(name)).unwrap()));
        r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        run_req(&lab.rt, r)
    };
    let t0 = std::time::Instant::now();
    let o = bundled("config-publish", &[("item", "app"), ("targets", "group:web"), ("batch", "50")]);
    let took = t0.elapsed();
    let rows = ok(&o).as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r["status"] == "published"), "{rows:?}");
    for h in &lab.fleet.hosts {
        assert!(lab.file(&h.name).contains(&format!("for {} (dev)", h.name)));
    }
    eprintln!("published to 50 hosts in {took:?}");
    // Drift on two hosts, found and repaired by config-drift.
    for h in ["web7", "web31"] {
        std::fs::write(lab.root.join(h).join("app.conf"), "edited by hand\n").unwrap();
    }
    let o = bundled("config-drift", &[("item", "app"), ("targets", "group:web")]);
    let mut drifted: Vec<&str> =
        ok(&o).as_array().unwrap().iter().filter(|r| r["status"] == "drifted").map(|r| r["host"].as_str().unwrap()).collect();
    drifted.sort();
    assert_eq!(drifted, ["web31", "web7"]);
    let o = bundled("config-drift", &[("item", "app"), ("targets", "group:web"), ("repair", "true")]);
    assert_eq!(ok(&o).as_array().unwrap().iter().filter(|r| r["repaired"] == true).count(), 2);
    assert!(lab.file("web7").contains("port = 8080"));
}

/// Hosts web1..webN (env=dev, group web) in the cmdb of a data dir with an opslet.toml, for
/// tests that drive the `opslet` binary; `items_dir` for item files, `root` for the hosts' files.
struct CliLab {
    fleet: Fleet,
    tmp: tempfile::TempDir,
    data: PathBuf,
    items_dir: PathBuf,
    root: PathBuf,
}

fn cli_lab(n: usize) -> CliLab {
    let fleet = Fleet::start(n, "web");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let items_dir = tmp.path().join("items");
    let root = tmp.path().join("hosts");
    std::fs::create_dir_all(&items_dir).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    for p in [tmp.path(), root.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    {
        let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
        let cmdb = Cmdb::new(store.clone()).unwrap();
        for h in &fleet.hosts {
            let host = Host {
                name: h.name.clone(),
                address: h.address.clone(),
                port: h.port,
                groups: ["web".to_string()].into(),
                tags: [("env".to_string(), "dev".to_string())].into(),
                host_key: Some(h.host_key.clone()),
                ..Default::default()
            };
            cmdb.put(host, "tester").unwrap();
            let d = root.join(&h.name);
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(uid_of(USER)), None).unwrap();
        }
        let secrets = Secrets::open(store.clone()).unwrap();
        secrets.set("ssh-key", fleet.client_key.as_bytes(), "tester").unwrap();
    }
    std::fs::write(
        data.join("opslet.toml"),
        "[ssh]\nconnect_timeout = \"5s\"\n[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n",
    )
    .unwrap();
    CliLab { fleet, tmp, data, items_dir, root }
}

#[test]
fn watch_publishes_each_change_of_a_folder_to_dev() {
    let CliLab { fleet, tmp, data, items_dir, root } = cli_lab(2);
    let write_item = |port: u32| {
        // The template lives in its own file beside the item.
        std::fs::write(items_dir.join("app.conf.j2"), "port = {{ port }}\n").unwrap();
        std::fs::write(
            items_dir.join("app.toml"),
            format!(
                "name = \"app\"\npath = \"{}/{{{{ host.name }}}}/app.conf\"\ntemplate_file = \"app.conf.j2\"\n[values]\nport = {port}\n",
                root.display()
            ),
        )
        .unwrap();
    };
    write_item(8080);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["config", "watch"])
        .arg(&items_dir)
        .args(["--env", "dev", "--hosts", "group:web"])
        .env("OPSLET_DATA_DIR", &data)
        .env_remove("OPSLET_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |want: &str| {
        let t0 = std::time::Instant::now();
        loop {
            let all = fleet.hosts.iter().all(|h| std::fs::read_to_string(root.join(&h.name).join("app.conf")).unwrap_or_default() == want);
            if all {
                return;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "hosts never got {want:?}; watch log:\n{}",
                std::fs::read_to_string(tmp.path().join("watch.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for("port = 8080\n");
    // An edit to the template file alone is a new version, published at once.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(items_dir.join("app.conf.j2"), "port = {{ port }}\nlog = debug\n").unwrap();
    wait_for("port = 8080\nlog = debug\n");
    write_item(9090);
    wait_for("port = 9090\n");
    // The files are in place before the publish records them: stop the watch only once it said
    // how each host went.
    let t0 = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(tmp.path().join("watch.log")).unwrap_or_default();
        let after = log.split("app v3 stored").nth(1).unwrap_or("");
        if after.matches(": published").count() + after.matches(": unchanged").count() >= 2 {
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the v3 publish never ended; watch log:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(st.success(), "watch ends cleanly on Ctrl-C: {st}");
    let log = std::fs::read_to_string(tmp.path().join("watch.log")).unwrap();
    assert!(log.contains("app v3 stored; publishing to group:web (dev)"), "{log}");
    // `opslet config status` shows both hosts in sync with the last version (exit 0); after a
    // hand edit and a check, the drifted one (exit 1).
    let status = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["config", "status", "app"])
            .args(extra)
            .env("OPSLET_DATA_DIR", &data)
            .env_remove("OPSLET_CONFIG")
            .output()
            .unwrap()
    };
    let out = status(&["--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.as_array().unwrap().iter().all(|r| r["status"] == "in-sync" && r["version"] == 3), "{rows}");
    std::fs::write(root.join("web1/app.conf"), "port = 1\n").unwrap();
    {
        let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
        let cfg = opslet::config::Config::load(&data.join("opslet.toml")).unwrap();
        let rt = opslet::modules::runtime(&cfg, Some(store)).unwrap();
        let manifest = "name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nconfig = [\"read\"]\n";
        ok(&run_req(&rt, req(package_with(manifest, r#"return function() return config.check("app", "*") end"#, &[]))));
    }
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(1), "a drifted host makes status exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("web1") && text.contains("drifted") && text.contains("in-sync"), "{text}");
    let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
    let h = ConfigItems::open(&store).unwrap().history("app").unwrap();
    assert_eq!(h.len(), 3);
    assert!(h.iter().all(|v| v.message.starts_with("opslet config watch")));
    let runs = store.audit().list(&Filter { kind: Some("action".into()), ..Default::default() }).unwrap();
    assert_eq!(runs.iter().filter(|a| a.data["module"] == "config" && a.data["action"] == "publish").count(), 6, "3 versions x 2 hosts");
}

#[test]
fn a_publish_whose_outcome_is_lost_is_unknown_until_a_check_finds_it() {
    let lab = lab(1, &[]);
    // A reload slower than the call's timeout: the connection gives up while the host goes on.
    let mut spec = item(&lab.root, 8080, "");
    spec.reload = Some("sleep 2; cp {path} {path}.loaded".into());
    let v1 = lab.set(spec, "slow reload");
    let o = lab.run(PUBLISH, r#"return function() return config.publish("app", "web1", { timeout = 1 }) end"#, false);
    let r = &ok(&o)[0];
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("what web1 runs now is unknown"), "{r}");
    let o = lab.run(PUBLISH, r#"return function() return config.status("app") end"#, false);
    assert_eq!(ok(&o)[0]["status"], "unknown");
    // The host finished on its own; a check finds the new file and records it.
    let t0 = std::time::Instant::now();
    while !lab.file("web1").contains("port = 8080") {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the file never landed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = lab.run(PUBLISH, r#"return function() return config.check("app", "web1") end"#, false);
    let r = &ok(&o)[0];
    assert_eq!(r["status"], "in-sync", "{r}");
    assert_eq!(r["version"], v1);
    let o = lab.run(PUBLISH, r#"return function() return config.status("app") end"#, false);
    assert_eq!(ok(&o)[0]["status"], "in-sync");
    assert_eq!(ok(&o)[0]["version"], v1);
}

#[test]
fn a_run_that_ends_mid_publish_audits_the_host_as_abandoned() {
    let lab = lab(1, &[]);
    let mut spec = item(&lab.root, 8080, "");
    spec.reload = Some("sleep 5; cp {path} {path}.loaded".into());
    lab.set(spec, "slow reload");
    // The run's own wall-time limit ends it while the host is still reloading.
    let manifest = "name = \"t\"\nversion = \"1.0.0\"\n[limits]\ntimeout = \"2s\"\n[permissions]\nconfig = [\"read\", \"publish\"]\n";
    let o = run_req(&lab.rt, req(package_with(manifest, r#"return function() return config.publish("app", "web1") end"#, &[])));
    assert!(o.result.is_err(), "the run ran out of time");
    // The host's task is aborted just after the run ends; its record follows.
    let t0 = std::time::Instant::now();
    while !actions(&lab.store, &o).iter().any(|a| a.data["action"] == "publish") && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let acts = actions(&lab.store, &o);
    let a = acts.iter().find(|a| a.data["action"] == "publish").expect("the publish is in the audit log");
    assert_eq!(a.status.as_deref(), Some("error"));
    assert!(a.data["detail"]["error"].as_str().unwrap().starts_with("abandoned:"), "{:?}", a.data);
    assert_eq!(a.data["detail"]["item"], "app");
}

#[test]
fn an_undefined_value_is_named_by_watch_status_and_a_dry_run_publish() {
    let CliLab { fleet: _fleet, tmp: _tmp, data, items_dir, root } = cli_lab(1);
    std::fs::write(
        items_dir.join("app.toml"),
        format!(
            "name = \"app\"\npath = \"{}/{{{{ host.name }}}}/app.conf\"\ntemplate_file = \"app.conf.j2\"\n[values]\nport = 80\n",
            root.display()
        ),
    )
    .unwrap();
    let opslet = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(args)
            .env("OPSLET_DATA_DIR", &data)
            .env_remove("OPSLET_CONFIG")
            .output()
            .unwrap()
    };
    let watch_once = || opslet(&["config", "watch", items_dir.to_str().unwrap(), "--env", "dev", "--hosts", "group:web", "--once"]);
    std::fs::write(items_dir.join("app.conf.j2"), "port = {{ port }}\n").unwrap();
    let o = watch_once();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(root.join("web1/app.conf")).unwrap(), "port = 80\n");
    // v2 uses a value no layer has: watch says which, where, and what was searched.
    std::fs::write(items_dir.join("app.conf.j2"), "port = {{ port }}\nname = {{ nope }}\n").unwrap();
    let o = watch_once();
    let err = String::from_utf8_lossy(&o.stderr);
    let named = "undefined value `nope` at app.conf.j2 line 2 (for web1 in dev, searched [values], [values.env.dev] (not in the item), \
                 [values.group.web] (not in the item))";
    assert!(!o.status.success() && err.contains(&format!("web1: FAILED: rendering app v2 for web1 (dev): {named}")), "{err}");
    assert_eq!(std::fs::read_to_string(root.join("web1/app.conf")).unwrap(), "port = 80\n", "nothing was sent");
    // `config status`: the host is on v1, and why v2 does not render there.
    let o = opslet(&["config", "status", "app", "--format", "json"]);
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["version"], 1, "{rows}");
    assert_eq!(rows[0]["newest_error"], json!(format!("v2 does not render: {named}")), "{rows}");
    let o = opslet(&["config", "status", "app"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("undefined value `nope`"), "{}", String::from_utf8_lossy(&o.stdout));
    // A dry-run publish says the same.
    let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
    let cfg = opslet::config::Config::load(&data.join("opslet.toml")).unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store)).unwrap();
    let manifest = "name = \"t\"\nversion = \"1.0.0\"\n[permissions]\nconfig = [\"read\", \"publish\"]\n";
    let mut r = req(package_with(manifest, r#"return function() return config.publish("app", "*", { env = "dev" }) end"#, &[]));
    r.dry_run = true;
    let o = run_req(&rt, r);
    let row = &ok(&o)[0];
    assert!(row["error"].as_str().unwrap().contains(named), "{row}");
}

/// `[[approvals.rule]]` with `env = ["prod"]`: the plan (a dry run that reads each host's file)
/// decides. A publish to a dev host runs without anyone's approval; one to a prod host waits,
/// and runs once an admin approves it.
#[test]
fn an_approval_rule_for_prod_holds_a_publish_to_prod_only() {
    let CliLab { fleet, tmp, data, items_dir, root } = cli_lab(2);
    let prod = fleet.hosts[1].name.clone();
    {
        let store = Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
        let cmdb = Cmdb::new(store.clone()).unwrap();
        let mut h = cmdb.host(&prod).unwrap().unwrap();
        h.tags.insert("env".into(), "prod".into());
        cmdb.put(h, "tester").unwrap();
    }
    let cfg = std::fs::read_to_string(data.join("opslet.toml")).unwrap();
    std::fs::write(
        data.join("opslet.toml"),
        format!("{cfg}\n[[approvals.rule]]\nname = \"prod-config\"\nmodule = \"config\"\nactions = [\"publish\"]\nenv = [\"prod\"]\nroles = [\"admin\"]\n"),
    )
    .unwrap();
    let opslet = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(args)
            .env("OPSLET_DATA_DIR", &data)
            .env_remove("OPSLET_CONFIG")
            .output()
            .unwrap();
        assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let item = items_dir.join("app.toml");
    std::fs::write(
        &item,
        format!(
            "name = \"app\"\npath = \"{}/{{{{ host.name }}}}/app.conf\"\ntemplate = \"port = {{{{ port }}}}\\n\"\n[values]\nport = 7070\n",
            root.display()
        ),
    )
    .unwrap();
    opslet(&["config", "set", item.to_str().unwrap(), "-m", "first"]);
    opslet(&["publish", Path::new(env!("CARGO_MANIFEST_DIR")).join("applets/config-publish").to_str().unwrap()]);
    opslet(&["user", "add", "ola", "--role", "operator"]);
    opslet(&["user", "add", "ada", "--role", "admin"]);
    opslet(&["grant", "add", "ola", "config-*"]);
    let (ola, ada) = (opslet(&["token", "create", "ola"]), opslet(&["token", "create", "ada"]));
    let (mut child, addr) = common::serve::spawn(&data, &[]);
    let base = format!("http://{addr}");
    opslet::install_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let call = |method: &str, path: &str, token: &str, body: Value| {
        let (base, token, path, method) = (base.clone(), token.to_string(), path.to_string(), method.to_string());
        async move {
            let c = reqwest::Client::new();
            let r = if method == "POST" { c.post(format!("{base}{path}")).json(&body) } else { c.get(format!("{base}{path}")) };
            let r = r.bearer_auth(token).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        }
    };
    let until = |id: String, token: String, done: fn(&Value) -> bool| {
        let call = &call;
        async move {
            for _ in 0..400 {
                let (_, job) = call("GET", &format!("/api/v1/jobs/{id}"), &token, Value::Null).await;
                if done(&job) {
                    return job;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("job {id} did not get there");
        }
    };
    let dev = fleet.hosts[0].name.clone();
    rt.block_on(async {
        // To dev: its plan shows no publish to prod, so it runs without an approval.
        let (code, body) = call("POST", "/api/v1/applets/config-publish/run", &ola, json!({ "item": "app", "targets": dev })).await;
        assert_eq!((code, body["status"].as_str()), (202, Some("awaiting_approval")), "{body}");
        let job = until(body["job_id"].as_str().unwrap().to_string(), ola.clone(), |j| j["status"] == "ok" || j["status"] == "error").await;
        assert_eq!(job["status"], "ok", "{job}");
        assert_eq!(job["approval"]["rules"], json!([]), "no rule applied: {job}");
        assert_eq!(std::fs::read_to_string(root.join(&dev).join("app.conf")).unwrap(), "port = 7070\n");

        // To prod: it waits, its plan showing the publish to prod, and nothing is there yet.
        let (code, body) = call("POST", "/api/v1/applets/config-publish/run", &ola, json!({ "item": "app", "targets": prod })).await;
        assert_eq!(code, 202, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let job = until(id.clone(), ola.clone(), |j| j["approval"]["planning"] == false).await;
        assert_eq!(job["status"], "awaiting_approval", "{job}");
        let step = &job["approval"]["plan"][0];
        assert_eq!(
            (step["module"].as_str(), step["target"].as_str(), step["detail"]["env"].as_str()),
            (Some("config"), Some(prod.as_str()), Some("prod")),
            "{job}"
        );
        assert!(!root.join(&prod).join("app.conf").exists());
        let (code, _) = call("POST", &format!("/api/v1/jobs/{id}/approve"), &ada, json!({ "message": "prod window" })).await;
        assert_eq!(code, 200);
        let job = until(id, ola.clone(), |j| j["status"] == "ok" || j["status"] == "error").await;
        assert_eq!(job["status"], "ok", "{job}");
    });
    assert_eq!(std::fs::read_to_string(root.join(&prod).join("app.conf")).unwrap(), "port = 7070\n");
    let audit = opslet(&["audit", "list", "--kind", "approval.not_needed", "--format", "json"]);
    assert!(audit.contains("its plan shows none of what the approval rules guard"), "{audit}");
    let _ = (tmp, child.kill(), child.wait());
}

/// A hand edit found by `config.check` (the bundled config-drift applet) is sent to a
/// `[[notify.rule]] on = ["drift"]` webhook, naming the host and the item, signed.
#[test]
fn drift_found_by_a_run_is_sent_to_a_signed_webhook() {
    use std::io::{Read, Write};
    let CliLab { fleet, tmp, data, items_dir, root } = cli_lab(1);
    let host = fleet.hosts[0].name.clone();
    // A receiver that keeps each request's headers and body.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    type Requests = std::sync::Arc<parking_lot::Mutex<Vec<(String, Vec<u8>)>>>;
    let got: Requests = Default::default();
    {
        let got = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let len: usize =
                            head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
                        let mut body = buf[i + 4..].to_vec();
                        while body.len() < len {
                            let n = c.read(&mut chunk).unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                        break (head, body);
                    }
                };
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                got.lock().push((head, body));
            }
        });
    }
    let cfg = std::fs::read_to_string(data.join("opslet.toml")).unwrap();
    std::fs::write(
        data.join("opslet.toml"),
        format!("{cfg}\n[[notify.rule]]\nname = \"drift\"\non = [\"drift\"]\nwebhook = \"http://127.0.0.1:{port}/drift\"\nsecret = \"notify-key\"\n"),
    )
    .unwrap();
    let opslet = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(args)
            .env("OPSLET_DATA_DIR", &data)
            .env_remove("OPSLET_CONFIG")
            .output()
            .unwrap();
        assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let key = tmp.path().join("key");
    std::fs::write(&key, "drift-signing-key-77").unwrap();
    opslet(&["secret", "set", "notify-key", "--file", key.to_str().unwrap()]);
    let item = items_dir.join("app.toml");
    std::fs::write(
        &item,
        format!(
            "name = \"app\"\npath = \"{}/{{{{ host.name }}}}/app.conf\"\ntemplate = \"port = {{{{ port }}}}\\n\"\n[values]\nport = 7070\n",
            root.display()
        ),
    )
    .unwrap();
    opslet(&["config", "set", item.to_str().unwrap(), "-m", "first"]);
    let applets = Path::new(env!("CARGO_MANIFEST_DIR")).join("applets");
    opslet(&["publish", applets.join("config-publish").to_str().unwrap()]);
    opslet(&["publish", applets.join("config-drift").to_str().unwrap()]);
    opslet(&["user", "add", "ada", "--role", "admin"]);
    let token = opslet(&["token", "create", "ada"]);
    let (mut child, addr) = common::serve::spawn(&data, &[]);
    opslet::install_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = |applet: &str, params: Value| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("http://{addr}/api/v1/applets/{applet}/run"))
                .bearer_auth(&token)
                .json(&params)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    let published = run("config-publish", json!({ "item": "app", "targets": host }));
    assert_eq!(published["status"], "ok", "{published}");
    // In sync: no drift, nothing sent.
    let checked = run("config-drift", json!({ "item": "app", "targets": host }));
    assert_eq!(checked["status"], "ok", "{checked}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(got.lock().is_empty(), "no drift, no message");
    // Someone edits the file by hand: the next check finds it, and it is sent.
    std::fs::write(root.join(&host).join("app.conf"), "port = 9999\n").unwrap();
    let checked = run("config-drift", json!({ "item": "app", "targets": host }));
    assert_eq!(checked["status"], "ok", "{checked}");
    let t0 = std::time::Instant::now();
    while got.lock().is_empty() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "no drift message arrived");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (head, body) = got.lock()[0].clone();
    let ev: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ev["event"], "drift", "{ev}");
    assert_eq!(ev["detail"]["hosts"][0]["host"], host.as_str(), "{ev}");
    assert_eq!(ev["detail"]["hosts"][0]["item"], "app", "{ev}");
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap().trim().to_string();
    let (ts, delivery) = (header("x-opslet-timestamp"), header("x-opslet-delivery"));
    let expected = opslet::service::hooks::sign_delivery("drift-signing-key-77", ts.parse().unwrap(), &delivery, &body);
    assert_eq!(header("x-opslet-signature"), expected);
    let _ = (child.kill(), child.wait());
}
