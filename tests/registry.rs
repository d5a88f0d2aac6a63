//! The applet registry: publishing rules, current pointer, yanking, search, bundles, bad input,
//! concurrent publishes and publishes killed half way.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use opslet::applet::AppletPackage;
use opslet::error::Error;
use opslet::registry::{PermissionChanges, Published, Reference, Registry};
use opslet::store::Store;
use opslet::store::audit::Filter;
use serde_json::json;

fn pkg(name: &str, version: &str, body: &str, extra_manifest: &str) -> AppletPackage {
    let mut files = BTreeMap::new();
    files.insert("applet.toml".into(), format!("name = \"{name}\"\nversion = \"{version}\"\n{extra_manifest}").into_bytes());
    files.insert("main.lua".into(), format!("return function() return {body:?} end").into_bytes());
    AppletPackage::from_files(files).unwrap()
}

fn reg() -> Registry {
    Registry::new(Store::temporary().unwrap()).unwrap()
}

fn current(r: &Registry, name: &str) -> String {
    r.applet(name).unwrap().current
}

fn v(s: &str) -> semver::Version {
    semver::Version::parse(s).unwrap()
}

#[test]
fn publishing_rules() {
    let r = reg();
    assert!(matches!(r.publish(&pkg("disk", "1.0.0", "a", ""), "alice", "first", false).unwrap(), Published::New(_)));
    assert!(
        matches!(r.publish(&pkg("disk", "1.0.0", "a", ""), "bob", "again", false).unwrap(), Published::Unchanged(_)),
        "same content is a no-op"
    );
    let e = r.publish(&pkg("disk", "1.0.0", "b", ""), "bob", "", false).unwrap_err().to_string();
    assert!(e.contains("already published with different content"), "{e}");
    r.publish(&pkg("disk", "1.2.0", "c", ""), "alice", "", false).unwrap();
    let e = r.publish(&pkg("disk", "1.1.0", "d", ""), "alice", "", false).unwrap_err().to_string();
    assert!(e.contains("lower than the latest published 1.2.0") && e.contains("--allow-downgrade"), "{e}");
    r.publish(&pkg("disk", "1.1.0", "d", ""), "alice", "hotfix", true).unwrap();
    let versions: Vec<String> = r.versions("disk").unwrap().into_iter().map(|v| v.version).collect();
    assert_eq!(versions, ["1.0.0", "1.1.0", "1.2.0"]);
    assert_eq!(current(&r, "disk"), "1.1.0", "publishing moves the current pointer");
    let meta = r.resolve(&Reference::parse("disk@1.0.0").unwrap(), false).unwrap();
    assert_eq!((meta.publisher.as_str(), meta.message.as_str()), ("alice", "first"));
    assert_eq!(r.package(&meta).unwrap().hash, meta.hash);
}

#[test]
fn current_pointer_promote_rollback_yank() {
    let r = reg();
    for (ver, body) in [("1.0.0", "a"), ("1.1.0", "b"), ("2.0.0", "c")] {
        r.publish(&pkg("svc", ver, body, ""), "alice", "", false).unwrap();
    }
    assert_eq!(current(&r, "svc"), "2.0.0");
    assert_eq!(r.rollback("svc", "bob").unwrap(), ("2.0.0".to_string(), "1.1.0".to_string()));
    r.promote("svc", &v("2.0.0"), "bob").unwrap();
    r.yank("svc", &v("1.1.0"), false, "bob").unwrap();
    assert_eq!(r.rollback("svc", "bob").unwrap().1, "1.0.0", "rollback skips yanked versions");

    let e = r.resolve(&Reference::parse("svc@1.1.0").unwrap(), false).unwrap_err().to_string();
    // The registry names no edge's way of allowing it (a CLI flag, a query parameter): each
    // edge adds its own (tests/cli.rs, tests/serve.rs).
    assert!(e.contains("is yanked") && !e.contains("--"), "{e}");
    assert_eq!(r.resolve(&Reference::parse("svc@1.1.0").unwrap(), true).unwrap().version, "1.1.0");
    assert!(r.promote("svc", &v("1.1.0"), "bob").unwrap_err().to_string().contains("yanked"));

    r.yank("svc", &v("1.0.0"), false, "bob").unwrap();
    let e = r.resolve(&Reference::parse("svc").unwrap(), false).unwrap_err().to_string();
    assert!(e.contains("current version but it is yanked"), "{e}");
    r.yank("svc", &v("1.0.0"), true, "bob").unwrap();
    assert_eq!(r.resolve(&Reference::parse("svc").unwrap(), false).unwrap().version, "1.0.0");

    let fresh = reg();
    fresh.publish(&pkg("one", "1.0.0", "a", ""), "alice", "", false).unwrap();
    assert!(fresh.rollback("one", "bob").unwrap_err().to_string().contains("no earlier version"));
}

#[test]
fn registry_changes_are_audited() {
    let store = Store::temporary().unwrap();
    let r = Registry::new(store.clone()).unwrap();
    r.publish(&pkg("a", "1.0.0", "x", ""), "alice", "m", false).unwrap();
    r.publish(&pkg("a", "1.1.0", "y", ""), "alice", "", false).unwrap();
    r.rollback("a", "bob").unwrap();
    r.promote("a", &v("1.1.0"), "carol").unwrap();
    r.yank("a", &v("1.0.0"), false, "dave").unwrap();
    r.feature("ops", "a", false, "erin").unwrap();
    let recs = store.audit().list(&Filter::default()).unwrap();
    let got: Vec<(String, String)> = recs.iter().map(|r| (r.kind.clone(), r.actor.clone().unwrap())).collect();
    let want = [
        ("registry.publish", "alice"),
        ("registry.publish", "alice"),
        ("registry.rollback", "bob"),
        ("registry.promote", "carol"),
        ("registry.yank", "dave"),
        ("registry.feature.add", "erin"),
    ];
    assert_eq!(got, want.map(|(k, a)| (k.to_string(), a.to_string())));
    assert_eq!(recs[0].data["hash"].as_str().unwrap().len(), 64);
    assert!(store.audit().verify().unwrap().first_bad.is_none());
}

#[test]
fn references_and_unknowns() {
    for bad in ["Disk", "a/b", "../x", "", "x@1.0", "x@sha256:zz12zz12", "x@sha256:ab12", "x@@1.0.0"] {
        assert!(Reference::parse(bad).is_err(), "`{bad}` should be refused");
    }
    let r = reg();
    let p = pkg("disk", "1.0.0", "a", "");
    r.publish(&p, "alice", "", false).unwrap();
    let by_hash = r.resolve(&Reference::parse(&format!("disk@sha256:{}", &p.hash[..10])).unwrap(), false).unwrap();
    assert_eq!(by_hash.version, "1.0.0");
    let e = r.resolve(&Reference::parse("dsik").unwrap(), false).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)) && e.to_string().contains("did you mean `disk`"), "{e}");
    let e = r.resolve(&Reference::parse("disk@9.9.9").unwrap(), false).unwrap_err().to_string();
    assert!(e.contains("no version 9.9.9") && e.contains("published: 1.0.0"), "{e}");
    let e = r.resolve(&Reference::parse("disk@sha256:00000000").unwrap(), false).unwrap_err().to_string();
    assert!(e.contains("no version with hash"), "{e}");
    assert!(r.export(&Reference::parse("nope").unwrap()).is_err());
}

#[test]
fn permission_changes_between_versions() {
    let r = reg();
    r.publish(&pkg("web", "1.0.0", "a", "[permissions]\nzabbix = [\"read\"]\nes = true\n"), "a", "", false).unwrap();
    r.publish(
        &pkg("web", "1.1.0", "b", "[permissions]\nzabbix = [\"read\", \"ack\"]\nssh = { hosts = [\"group:web\"] }\n"),
        "a",
        "",
        false,
    )
    .unwrap();
    let vs = r.versions("web").unwrap();
    let c = PermissionChanges::between(&vs[0].permissions, &vs[1].permissions);
    assert_eq!(c.added, ["ssh"]);
    assert_eq!(c.removed, ["es"]);
    assert_eq!(c.changed.len(), 1);
    assert_eq!(c.changed[0].0, "zabbix");
    assert_eq!(c.changed[0].2, json!(["read", "ack"]));
}

#[test]
fn search_ranks_tolerates_typos_and_filters() {
    let r = reg();
    r.publish(
        &pkg("disk-usage", "1.0.0", "a", "description = \"Report filesystem usage per host\"\ntags = [\"disk\", \"linux\"]\n"),
        "a",
        "",
        false,
    )
    .unwrap();
    r.publish(
        &pkg(
            "disk-cleanup",
            "1.0.0",
            "a",
            "description = \"Remove old logs to free space\"\ntags = [\"disk\"]\n[permissions]\nssh = true\n",
        ),
        "a",
        "",
        false,
    )
    .unwrap();
    r.publish(
        &pkg(
            "zabbix-triage",
            "1.0.0",
            "a",
            "description = \"Open problems with host facts\"\ntags = [\"monitoring\"]\n[permissions]\nzabbix = [\"read\"]\n",
        ),
        "a",
        "",
        false,
    )
    .unwrap();
    r.publish(
        &pkg("log-errors", "1.0.0", "a", "description = \"Count errors per service in the disk-heavy logs\"\ntags = [\"logs\"]\n"),
        "a",
        "",
        false,
    )
    .unwrap();
    let names = |q: &str, tag: Option<&str>, perm: Option<&str>| {
        r.search(q, tag, perm, 50).unwrap().into_iter().map(|h| h.name).collect::<Vec<_>>()
    };

    assert_eq!(names("disk-usage", None, None)[0], "disk-usage", "an exact name ranks first");
    let disk = names("disk", None, None);
    assert_eq!(disk.len(), 3, "{disk:?}");
    assert!(
        disk.iter().position(|n| n == "log-errors") > disk.iter().position(|n| n == "disk-cleanup"),
        "name matches outrank descriptions: {disk:?}"
    );
    assert_eq!(names("zabix", None, None), ["zabbix-triage"], "one typo is tolerated");
    assert_eq!(names("filesytem usage", None, None), ["disk-usage"]);
    assert_eq!(names("disk monitoring", None, None), Vec::<String>::new(), "every word must match");
    assert_eq!(names("disk", Some("linux"), None), ["disk-usage"]);
    assert_eq!(names("", None, Some("ssh")), ["disk-cleanup"]);
    let hit = &r.search("triage", None, None, 50).unwrap()[0];
    assert_eq!(hit.permissions, ["zabbix"]);

    r.feature("storage", "disk-usage", false, "a").unwrap();
    let hits = r.search("disk", None, None, 50).unwrap();
    assert_eq!(hits.iter().find(|h| h.name == "disk-usage").unwrap().featured, ["storage"]);
    assert!(r.feature("storage", "missing-applet", false, "a").is_err());
    r.feature("storage", "disk-usage", true, "a").unwrap();
    assert!(r.featured().unwrap().is_empty());
}

#[test]
fn bundles_round_trip_and_reject_tampering() {
    let src = reg();
    let p = pkg("disk", "1.0.0", "hello", "description = \"d\"\n");
    src.publish(&p, "alice", "why", false).unwrap();
    let (_, bytes) = src.export(&Reference::parse("disk").unwrap()).unwrap();

    let dst = reg();
    let Published::New(meta) = dst.import(&bytes, "bob", false, true, &opslet::modules::builtin()).unwrap() else {
        panic!("first import publishes")
    };
    assert_eq!((meta.hash.as_str(), meta.publisher.as_str(), meta.imported_by.as_deref()), (p.hash.as_str(), "alice", Some("bob")));
    assert!(matches!(dst.import(&bytes, "bob", false, true, &opslet::modules::builtin()).unwrap(), Published::Unchanged(_)));

    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let import_err = |doc: &serde_json::Value| {
        reg().import(&serde_json::to_vec(doc).unwrap(), "x", false, true, &opslet::modules::builtin()).unwrap_err().to_string()
    };

    let mut tampered = doc.clone();
    tampered["files"]["main.lua"] = json!(base64_of(b"return function() return 'evil' end"));
    assert!(import_err(&tampered).contains("was altered or damaged"));

    let mut traversal = doc.clone();
    traversal["files"]["../../etc/cron.d/x"] = json!(base64_of(b"* * * * * root sh"));
    let e = import_err(&traversal);
    assert!(e.contains("entry `../../etc/cron.d/x`") && e.contains("not allowed"), "{e}");

    let mut absolute = doc.clone();
    absolute["files"]["/etc/passwd"] = json!(base64_of(b"x"));
    assert!(import_err(&absolute).contains("relative"));

    let mut renamed = doc.clone();
    renamed["meta"]["version"] = json!("9.0.0");
    assert!(import_err(&renamed).contains("its manifest is disk@1.0.0 but the bundle says disk@9.0.0"));

    doc["format"] = json!("zip");
    assert!(import_err(&doc).contains("not supported"));
    assert!(
        reg().import(b"garbage", "x", false, true, &opslet::modules::builtin()).unwrap_err().to_string().contains("not an opslet bundle")
    );
    let huge = vec![b' '; 17 * 1024 * 1024];
    assert!(reg().import(&huge, "x", false, true, &opslet::modules::builtin()).unwrap_err().to_string().contains("at most"));
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn concurrent_publishes_keep_the_registry_consistent() {
    let r = Arc::new(reg());
    let mut threads = Vec::new();
    for t in 0..6 {
        let r = Arc::clone(&r);
        threads.push(std::thread::spawn(move || {
            for i in 0..15 {
                // Each thread has its own applet, and all of them also race on "shared".
                r.publish(&pkg(&format!("app-{t}"), &format!("1.0.{i}"), &format!("{t}-{i}"), ""), "t", "", false).unwrap();
                let _ = r.publish(&pkg("shared", &format!("{t}.{i}.0"), &format!("{t}-{i}"), ""), "t", "", true).unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..6 {
        assert_eq!(r.versions(&format!("app-{t}")).unwrap().len(), 15);
        assert_eq!(current(&r, &format!("app-{t}")), "1.0.14");
    }
    check_consistent(&r);
    assert_eq!(r.versions("shared").unwrap().len(), 90);
}

/// Every version has its package with the right hash, and every current pointer names a version.
fn check_consistent(r: &Registry) {
    for (applet, cur) in r.list().unwrap() {
        let versions = r.versions(&applet.name).unwrap();
        assert!(versions.iter().any(|v| v.version == cur.version));
        for h in &applet.history {
            assert!(versions.iter().any(|v| &v.version == h), "history names a missing version {h}");
        }
        for v in versions {
            assert_eq!(r.package(&v).unwrap().hash, v.hash, "{}", v.id());
        }
    }
}

#[test]
fn publishes_killed_half_way_leave_whole_versions_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut published = 0;
    for i in 0..12 {
        let applet = dir.path().join(format!("a{i}"));
        std::fs::create_dir_all(&applet).unwrap();
        std::fs::write(applet.join("applet.toml"), format!("name = \"crash\"\nversion = \"1.0.{i}\"\n")).unwrap();
        let big = "x".repeat(200_000 + i * 1000);
        std::fs::write(applet.join("main.lua"), format!("local pad = {big:?}\nreturn function() return {i} end")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["publish", applet.to_str().unwrap()])
            .env("OPSLET_DATA_DIR", &data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment each time: before, during or after the write.
        std::thread::sleep(std::time::Duration::from_millis((i as u64 * 23) % 250));
        let _ = child.kill();
        let _ = child.wait();
        let store = Store::open(&data, std::time::Duration::from_secs(10)).unwrap();
        let r = Registry::new(store.clone()).unwrap();
        check_consistent(&r);
        let n = r.versions("crash").map(|v| v.len()).unwrap_or(0);
        assert!(n >= published, "a version that was published disappeared");
        published = n;
        assert!(store.audit().verify().unwrap().first_bad.is_none());
    }
    assert!(published > 0, "no publish ever finished; the kill delays are too short to test anything");
}

#[test]
fn imports_describe_the_applet_from_its_files_not_the_bundle_claims() {
    let src = reg();
    src.publish(&pkg("quiet", "1.0.0", "x", "description = \"harmless\"\n"), "alice", "why", false).unwrap();
    let (_, bytes) = src.export(&Reference::parse("quiet").unwrap()).unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["meta"]["description"] = json!("approved by security");
    doc["meta"]["permissions"] = json!({});
    doc["meta"]["tags"] = json!(["trusted"]);
    let dst = reg();
    let Published::New(meta) = dst.import(&serde_json::to_vec(&doc).unwrap(), "bob", false, true, &opslet::modules::builtin()).unwrap()
    else {
        panic!()
    };
    assert_eq!(meta.description, "harmless");
    assert!(meta.tags.is_empty());
    assert_eq!((meta.publisher.as_str(), meta.message.as_str(), meta.imported_by.as_deref()), ("alice", "why", Some("bob")));

    // An applet that needs a module this build lacks is refused at import, as at publish.
    let mut files = BTreeMap::new();
    files.insert("applet.toml".to_string(), b"name = \"needs-snmp\"\nversion = \"1.0.0\"\n[permissions]\nsnmp = [\"read\"]\n".to_vec());
    files.insert("main.lua".to_string(), b"return function() end".to_vec());
    let p = AppletPackage::from_files(files).unwrap();
    let meta = opslet::registry::VersionMeta::from_package(&p, "alice", "");
    let bundle = opslet::registry::bundle::encode(&meta, &p);
    let e = reg().import(&bundle, "bob", false, true, &opslet::modules::builtin()).unwrap_err().to_string();
    assert!(e.contains("permissions.snmp") && e.contains("unknown module `snmp`"), "{e}");
}

#[test]
fn no_op_changes_write_no_audit_records() {
    let store = Store::temporary().unwrap();
    let r = Registry::new(store.clone()).unwrap();
    r.publish(&pkg("a", "1.0.0", "x", ""), "alice", "", false).unwrap();
    r.promote("a", &v("1.0.0"), "bob").unwrap();
    r.feature("ops", "a", false, "bob").unwrap();
    r.feature("ops", "a", false, "bob").unwrap();
    r.publish(&pkg("a", "1.0.0", "x", ""), "alice", "", false).unwrap();
    let kinds: Vec<String> = store.audit().list(&Filter::default()).unwrap().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["registry.publish", "registry.feature.add"]);
    assert_eq!(r.search("a", None, None, 10).unwrap()[0].score, 205, "whole-name match + featured boost");
}
