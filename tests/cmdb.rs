//! The cmdb: hosts with groups (nested) and tags, selectors, audit with before and after.

use opslet::cmdb::{Cmdb, Host, Selector};
use opslet::store::Store;
use opslet::store::audit::Filter;

fn host(name: &str, groups: &[&str], tags: &[(&str, &str)]) -> Host {
    Host {
        name: name.into(),
        address: format!("10.0.0.{}", name.len()),
        port: 22,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        attrs: Default::default(),
        host_key: None,
    }
}

fn fleet() -> (Store, Cmdb) {
    let store = Store::temporary().unwrap();
    let c = Cmdb::new(store.clone()).unwrap();
    for h in [
        host("web01", &["web"], &[("env", "prod")]),
        host("web02", &["web"], &[("env", "prod")]),
        host("web03", &["web"], &[("env", "qa")]),
        host("db01", &["db", "backup"], &[("env", "prod")]),
        host("cache01", &["redis"], &[("env", "prod")]),
    ] {
        c.put(h, "alice").unwrap();
    }
    c.set_parents("web", &["frontend".into()], "alice").unwrap();
    c.set_parents("frontend", &["prod-stack".into()], "alice").unwrap();
    (store, c)
}

fn names(c: &Cmdb, sel: &str) -> Vec<String> {
    c.select(sel).unwrap().into_iter().map(|h| h.name).collect()
}

#[test]
fn selectors_pick_hosts() {
    let (_, c) = fleet();
    assert_eq!(names(&c, "web01"), ["web01"]);
    assert_eq!(names(&c, "web*"), ["web01", "web02", "web03"]);
    assert_eq!(names(&c, "group:db"), ["db01"]);
    assert_eq!(names(&c, "group:prod-stack"), ["web01", "web02", "web03"], "nested groups");
    assert_eq!(names(&c, "tag:env=qa"), ["web03"]);
    assert_eq!(names(&c, "group:web & tag:env=prod"), ["web01", "web02"]);
    assert_eq!(names(&c, "group:web & !web03"), ["web01", "web02"]);
    assert_eq!(names(&c, "db01, cache01"), ["cache01", "db01"]);
    assert_eq!(names(&c, "tag:env & !group:web"), ["cache01", "db01"]);
}

#[test]
fn bad_or_empty_selections_are_errors() {
    let (_, c) = fleet();
    let e = c.select("group:nope").unwrap_err().to_string();
    assert!(e.contains("matches no host"), "{e}");
    for bad in ["", "web01 &", "group:", "tag:=x", "a:b", "web 01", "!"] {
        assert!(Selector::parse(bad).is_err(), "`{bad}` should be refused");
        assert!(c.select(bad).is_err());
    }
    assert!(c.set_parents("prod-stack", &["web".into()], "a").unwrap_err().to_string().contains("cycle"));
}

#[test]
fn changes_are_audited_with_before_and_after() {
    let (store, c) = fleet();
    let mut h = c.host("web01").unwrap().unwrap();
    h.tags.insert("env".into(), "qa".into());
    c.put(h, "bob").unwrap();
    c.remove("cache01", "bob").unwrap();
    assert!(c.remove("cache01", "bob").is_err());
    let recs = store.audit().list(&Filter { actor: Some("bob".into()), ..Filter::default() }).unwrap();
    assert_eq!(recs[0].kind, "cmdb.host.set");
    assert_eq!(recs[0].data["before"]["tags"]["env"], "prod");
    assert_eq!(recs[0].data["after"]["tags"]["env"], "qa");
    assert_eq!(recs[1].kind, "cmdb.host.rm");
    assert!(recs[1].data["after"].is_null());
}

#[test]
fn cli_adds_sets_lists_and_selects() {
    let dir = tempfile::tempdir().unwrap();
    let opslet = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", dir.path()).output().unwrap()
    };
    assert!(opslet(&["cmdb", "host", "add", "web01", "--address", "192.0.2.10", "--group", "web", "--tag", "env=prod"]).status.success());
    assert!(opslet(&["cmdb", "host", "add", "web02", "--address", "192.0.2.11", "--group", "web", "--tag", "env=qa"]).status.success());
    assert_eq!(opslet(&["cmdb", "host", "add", "web01", "--address", "x"]).status.code(), Some(2), "no silent overwrite");
    assert!(opslet(&["cmdb", "host", "set", "web02", "--tag", "env=prod", "--port", "2222"]).status.success());
    let o = opslet(&["cmdb", "host", "list", "group:web & tag:env=prod", "--format", "json"]);
    let hosts: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[1]["port"], 2222);
    let o = opslet(&["cmdb", "host", "list", "group:nope"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("matches no host"));
    let o = opslet(&["cmdb", "host", "list", "web01 &"]);
    assert_eq!(o.status.code(), Some(2));
}

mod lua {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use opslet::applet::AppletPackage;
    use opslet::config::Config;
    use opslet::runtime::RunRequest;
    use opslet::runtime::context::Caller;
    use serde_json::{Value, json};

    fn run(store: &opslet::store::Store, perms: &str, main: &str, dry_run: bool) -> Result<Value, String> {
        let mut files = BTreeMap::new();
        files.insert(
            "applet.toml".to_string(),
            format!("name = \"inv\"\nversion = \"1.0.0\"\n[permissions]\ncmdb = {perms}\n").into_bytes(),
        );
        files.insert("main.lua".to_string(), main.as_bytes().to_vec());
        let pkg = Arc::new(AppletPackage::from_files(files).unwrap());
        let rt = opslet::modules::runtime(&Config::parse("[audit]\nsync = false\n", "t").unwrap(), Some(store.clone())).unwrap();
        let mut req = RunRequest::new(pkg, Caller { user: "carol".into(), via: "test".into() });
        req.dry_run = dry_run;
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio.block_on(rt.run(req)).result.map_err(|e| e.to_string())
    }

    #[test]
    fn applets_read_and_change_the_cmdb_within_their_permission() {
        let (store, c) = super::fleet();
        let v = run(&store, r#"["read"]"#, "return function() local hs = cmdb.hosts('group:web & tag:env=prod') local out = {} for _, h in ipairs(hs) do table.insert(out, h.name .. ':' .. h.port) end return { names = out, one = cmdb.host('db01').tags.env, none = cmdb.host('nope') == nil } end", false).unwrap();
        assert_eq!(v, json!({ "names": ["web01:22", "web02:22"], "one": "prod", "none": true }));

        let e = run(&store, r#"["read"]"#, "return function() return cmdb.set('web01', { tags = { env = 'qa' } }) end", false).unwrap_err();
        assert!(e.contains("cmdb.set") && e.contains("`write`"), "{e}");
        let e = run(&store, r#"["read"]"#, "return function() return cmdb.hosts('group:nope') end", false).unwrap_err();
        assert!(e.contains("matches no host"), "{e}");

        assert_eq!(
            run(
                &store,
                r#"["read", "write"]"#,
                "return function() return cmdb.set('web01', { tags = { env = 'qa' }, port = 2222 }) end",
                true
            )
            .unwrap(),
            json!(false),
            "a dry run changes nothing"
        );
        assert_eq!(c.host("web01").unwrap().unwrap().tags["env"], "prod");
        assert_eq!(
            run(
                &store,
                r#"["read", "write"]"#,
                "return function() return cmdb.set('web01', { tags = { env = 'qa' }, port = 2222 }) end",
                false
            )
            .unwrap(),
            json!(true)
        );
        let h = c.host("web01").unwrap().unwrap();
        assert_eq!((h.tags["env"].as_str(), h.port), ("qa", 2222));

        let actions = store.audit().list(&opslet::store::audit::Filter { kind: Some("action".into()), ..Default::default() }).unwrap();
        assert_eq!(actions.len(), 2);
        assert_eq!(actions[0].data["detail"]["planned"], json!(true));
        assert_eq!(actions[1].data["detail"]["before"]["port"], json!(22));
        assert_eq!(actions[1].data["detail"]["after"]["port"], json!(2222));
    }
}
