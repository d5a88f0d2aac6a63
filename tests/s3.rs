//! The s3 module against a real S3 store (SeaweedFS, started by scripts/peers/s3.sh): every Lua
//! call, versioned buckets, presigned URLs and their expiry, multipart uploads, the store's own
//! errors passed through, dry runs, the audit records, and permissions refused before anything
//! is sent.

mod common;

use std::time::Duration;

use common::s3::{self as peer, block};
use common::*;
use opslet::runtime::{RunOutcome, Runtime};
use opslet::store::Store;
use serde_json::Value;

struct Lab {
    store: Store,
    rt: Runtime,
}

/// A runtime with `[s3.store]` (extra settings appended), its secret in the store.
fn lab(extra: &str) -> Lab {
    let store = Store::temporary().unwrap();
    opslet::secrets::Secrets::open(store.clone()).unwrap().set("s3-secret", peer::SECRET.as_bytes(), "tester").unwrap();
    let config = format!("[audit]\nsync = false\n{}", peer::connection("store", extra));
    let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    Lab { store, rt }
}

impl Lab {
    fn run(&self, scope: &str, main: &str) -> RunOutcome {
        self.run_as(scope, main, "", false)
    }

    fn run_as(&self, scope: &str, main: &str, limits: &str, dry_run: bool) -> RunOutcome {
        run_req(&self.rt, Lab::request(scope, main, limits, dry_run))
    }

    fn request(scope: &str, main: &str, limits: &str, dry_run: bool) -> opslet::runtime::RunRequest {
        let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\ns3 = {scope}\n{limits}");
        let mut r = req(package_with(&m, main, &[]));
        r.dry_run = dry_run;
        r
    }
}

fn all(bucket: &str) -> String {
    format!("{{ bucket = \"{bucket}\", actions = [\"read\", \"write\", \"delete\", \"presign\"] }}")
}

#[test]
fn every_call_works_against_the_store_and_is_audited() {
    let b = peer::bucket("calls", false);
    let lab = lab("");
    let main = format!(
        r#"return function()
            local put = s3.put("{b}", "rel/app/1.0/notes.txt", "hello objects", {{ content_type = "text/plain", metadata = {{ owner = "ops" }} }})
            s3.put("{b}", "rel/app/1.1/notes.txt", "newer")
            s3.put("{b}", "rel/other.txt", "x")
            local head = s3.head("{b}", "rel/app/1.0/notes.txt")
            local missing = s3.head("{b}", "rel/none")
            local text = s3.get("{b}", "rel/app/1.0/notes.txt")
            local listed = s3.list("{b}", "rel/app/")
            local folders = s3.list("{b}", "rel/", {{ delimiter = "/" }})
            local limited = s3.list("{b}", "rel/", {{ limit = 2 }})
            local copied = s3.copy("{b}", "rel/app/1.0/notes.txt", "{b}", "rel/copy.txt")
            local handle = s3.object("{b}", "rel/app/1.0/notes.txt")
            local deleted = s3.delete("{b}", "rel/other.txt")
            local after = s3.head("{b}", "rel/other.txt")
            local url = s3.presign("{b}", "rel/app/1.0/notes.txt", {{ expires = "5m" }})
            return {{ put = put, head = head, missing = missing == nil, text = text, listed = listed, folders = folders,
                limited = limited, copied = copied, handle = {{ label = handle.label, size = handle.size, sha256 = handle.sha256, text = tostring(handle) }},
                deleted = deleted, gone = after == nil, url = url }}
        end"#
    );
    let o = lab.run(&all(&b), &main);
    let v = ok(&o);
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(b"hello objects"));
    assert_eq!(v["put"]["size"], 13);
    assert_eq!(v["put"]["sha256"], want.as_str());
    assert_eq!(v["head"]["sha256"], want.as_str(), "the checksum recorded at upload comes back");
    assert_eq!(v["head"]["metadata"]["owner"], "ops");
    assert_eq!(v["head"]["content_type"], "text/plain");
    assert_eq!(v["missing"], true);
    assert_eq!(v["text"], "hello objects");
    let keys = |l: &Value| l["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&v["listed"]), ["rel/app/1.0/notes.txt", "rel/app/1.1/notes.txt"]);
    assert_eq!(v["listed"]["truncated"], false);
    assert_eq!(keys(&v["folders"]), ["rel/other.txt"]);
    assert_eq!(v["folders"]["prefixes"], serde_json::json!(["rel/app/"]));
    assert_eq!(v["limited"]["objects"].as_array().unwrap().len(), 2);
    assert_eq!(v["limited"]["truncated"], true);
    assert_eq!(v["copied"]["key"], "rel/copy.txt");
    assert_eq!(v["copied"]["sha256"], want.as_str(), "the copy keeps the recorded checksum");
    assert_eq!(v["handle"]["size"], 13);
    assert_eq!(v["handle"]["sha256"], want.as_str());
    assert_eq!(v["handle"]["label"], format!("s3://store/{b}/rel/app/1.0/notes.txt"));
    assert_eq!(v["handle"]["text"], v["handle"]["label"]);
    assert_eq!(v["deleted"]["delete_marker"], false);
    assert_eq!(v["gone"], true);
    // The URL works, and its signature is hidden in what the run returns like a secret.
    let url = v["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature=") && url.contains("<redacted>"), "{url}");

    // Audited: object, size, checksum; the URL's signature never.
    let acts = actions(&lab.store, &o);
    let find = |a: &str, target: &str| {
        acts.iter()
            .find(|r| r.data["action"] == a && r.data["target"] == target)
            .unwrap_or_else(|| panic!("no {a} on {target} in {:#?}", acts.iter().map(|r| &r.data).collect::<Vec<_>>()))
    };
    let put = find("put", &format!("{b}/rel/app/1.0/notes.txt"));
    assert_eq!(put.data["detail"]["sha256"], want.as_str());
    assert_eq!(put.data["detail"]["size"], 13);
    assert_eq!(put.data["detail"]["connection"], "store");
    find("get", &format!("{b}/rel/app/1.0/notes.txt"));
    find("copy", &format!("{b}/rel/copy.txt"));
    find("delete", &format!("{b}/rel/other.txt"));
    find("object", &format!("{b}/rel/app/1.0/notes.txt"));
    let presign = find("presign", &format!("{b}/rel/app/1.0/notes.txt"));
    assert_eq!(presign.data["detail"]["expires_s"], 300);
    let all_audit = serde_json::to_string(&acts.iter().map(|r| &r.data).collect::<Vec<_>>()).unwrap();
    assert!(!all_audit.contains("X-Amz-Signature="), "no URL in the audit log");
}

#[test]
fn presigned_urls_work_until_they_expire_and_the_cap_holds() {
    let b = peer::bucket("presign", false);
    let c = peer::client();
    block(async {
        c.put(&b, "pkg/a.txt", b"fetch me", None, Default::default()).await.unwrap();
        let url = c.presign(false, &b, "pkg/a.txt", Duration::from_secs(2)).unwrap();
        let http = reqwest::Client::new();
        let r = http.get(url.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "fetch me");
        let put = c.presign(true, &b, "pkg/up.txt", Duration::from_secs(2)).unwrap();
        assert_eq!(http.put(put.clone()).body("uploaded").send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("Request has expired"));
        assert_eq!(http.put(put).body("late").send().await.unwrap().status(), 403);
        let (_, data) = c.get(&b, "pkg/up.txt", None, 1024).await.unwrap();
        assert_eq!(data, b"uploaded", "the late PUT changed nothing");
    });
    // The connection's cap on how long a URL may live.
    let lab = lab("presign_max = \"10m\"");
    let o = lab.run(&all(&b), &format!(r#"return function() return s3.presign("{b}", "pkg/a.txt", {{ expires = "1h" }}) end"#));
    let e = err_text(&o);
    assert!(e.contains("s3.presign: opts.expires: 1h is longer than this connection allows ([s3.store] presign_max = 10m)"), "{e}");
    let o = lab.run(&all(&b), &format!(r#"return function() return s3.presign("{b}", "pkg/a.txt", {{ method = "DELETE" }}) end"#));
    assert!(err_text(&o).contains("opts.method: `DELETE` (GET or PUT)"), "{}", err_text(&o));
}

#[test]
fn versioned_objects_list_read_and_delete_by_version() {
    let b = peer::bucket("versions", true);
    let lab = lab("");
    let main = format!(
        r#"return function()
            local v1 = s3.put("{b}", "agent/agent.tgz", "one")
            local v2 = s3.put("{b}", "agent/agent.tgz", "two")
            local v3 = s3.put("{b}", "agent/agent.tgz", "three")
            local versions = s3.list("{b}", "agent/", {{ versions = true }})
            local old = s3.get("{b}", "agent/agent.tgz", {{ version = v1.version_id }})
            local marker = s3.delete("{b}", "agent/agent.tgz")
            local hidden = s3.head("{b}", "agent/agent.tgz") == nil
            local still = s3.get("{b}", "agent/agent.tgz", {{ version = v2.version_id }})
            local after = s3.list("{b}", "agent/", {{ versions = true }})
            s3.delete("{b}", "agent/agent.tgz", {{ version = v1.version_id }})
            local ok, err = pcall(s3.get, "{b}", "agent/agent.tgz", {{ version = v1.version_id }})
            return {{ ids = {{ v1.version_id, v2.version_id, v3.version_id }}, versions = versions, old = old, marker = marker,
                hidden = hidden, still = still, after = after, gone_err = tostring(err) }}
        end"#
    );
    let o = lab.run(&all(&b), &main);
    let v = ok(&o);
    let ids: Vec<&str> = v["ids"].as_array().unwrap().iter().map(|i| i.as_str().expect("a versioned put has an id")).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2]);
    let versions = v["versions"]["objects"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions.iter().filter(|o| o["latest"] == true).count(), 1);
    assert_eq!(versions.iter().find(|o| o["latest"] == true).unwrap()["version_id"], ids[2]);
    assert_eq!(v["old"], "one");
    assert_eq!(v["marker"]["delete_marker"], true);
    assert_eq!(v["hidden"], true);
    assert_eq!(v["still"], "two", "a version outlives the delete marker");
    let after = v["after"]["objects"].as_array().unwrap();
    assert_eq!(after.iter().filter(|o| o["delete_marker"] == true).count(), 1);
    let e = v["gone_err"].as_str().unwrap();
    assert!(e.contains("NoSuchVersion") || e.contains("NoSuchKey"), "{e}");
}

#[test]
fn the_stores_errors_pass_through_with_its_code_and_message() {
    let b = peer::bucket("errors", false);
    let lab = lab("");
    let o = lab.run(&all(&b), &format!(r#"return function() return s3.get("{b}", "no/such/key") end"#));
    let e = err_text(&o);
    assert!(e.contains(&format!("s3.get: {b}/no/such/key: NoSuchKey: The specified key does not exist. (HTTP 404)")), "{e}");
    let o = lab.run("{ bucket = \"*\", actions = [\"read\"] }", r#"return function() return s3.list("no-such-bucket-here") end"#);
    let e = err_text(&o);
    assert!(e.contains("NoSuchBucket") && e.contains("(HTTP 404)"), "{e}");
    let o = lab.run(&all(&b), &format!(r#"return function() return s3.object("{b}", "none.tgz") end"#));
    assert!(err_text(&o).contains("NoSuchKey"), "{}", err_text(&o));
    // The store's own refusal: a key the store lets read only.
    let ro = {
        let store = Store::temporary().unwrap();
        opslet::secrets::Secrets::open(store.clone()).unwrap().set("ro", peer::RO_SECRET.as_bytes(), "tester").unwrap();
        let config = format!(
            "[audit]\nsync = false\n[s3.store]\nendpoint = \"{}\"\naccess_key = \"{}\"\nsecret_key_secret = \"ro\"\n",
            peer::endpoint(),
            peer::RO_ACCESS
        );
        let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
        Lab { rt: opslet::modules::runtime(&cfg, Some(store.clone())).unwrap(), store }
    };
    let o = ro.run(&all(&b), &format!(r#"return function() return s3.put("{b}", "x.txt", "x") end"#));
    let e = err_text(&o);
    assert!(e.contains("AccessDenied: Access Denied. (HTTP 403)"), "{e}");
    // A refused change is audited as failed.
    let acts = actions(&ro.store, &o);
    assert!(acts.iter().any(|r| r.data["action"] == "put" && r.status.as_deref() == Some("error")), "{acts:#?}");
    // A dead store names where it tried.
    let dead = {
        let store = Store::temporary().unwrap();
        opslet::secrets::Secrets::open(store.clone()).unwrap().set("s3-secret", b"x", "tester").unwrap();
        let cfg = opslet::config::Config::parse(
            "[s3.store]\nendpoint = \"http://127.0.0.1:1\"\naccess_key = \"a\"\nsecret_key_secret = \"s3-secret\"\ntimeout = \"3s\"\n",
            "opslet.toml",
        )
        .unwrap();
        Lab { rt: opslet::modules::runtime(&cfg, Some(store.clone())).unwrap(), store }
    };
    let o = dead.run(&all(&b), &format!(r#"return function() return s3.head("{b}", "x") end"#));
    let e = err_text(&o);
    assert!(e.contains("127.0.0.1:1") && e.to_lowercase().contains("connect"), "{e}");
}

#[test]
fn a_rotated_key_takes_effect_at_the_next_run_of_the_same_process() {
    // One runtime, as a server keeps it: its client of the store outlives a run, but not a
    // change of the secret it was made with.
    let b = peer::bucket("rotate", false);
    let lab = lab("");
    let secrets = opslet::secrets::Secrets::open(lab.store.clone()).unwrap();
    let list = format!(r#"return function() return #s3.list("{b}") end"#);
    let scope = format!("{{ bucket = \"{b}\", actions = [\"read\"] }}");
    let o = lab.run(&scope, &list);
    assert!(o.result.is_ok(), "{:?}", o.result);
    secrets.set("s3-secret", b"not-the-key-anymore", "tester").unwrap();
    let e = err_text(&lab.run(&scope, &list));
    assert!(e.contains("SignatureDoesNotMatch") || e.contains("AccessDenied") || e.contains("HTTP 403"), "the old key is not used: {e}");
    secrets.set("s3-secret", peer::SECRET.as_bytes(), "tester").unwrap();
    let o = lab.run(&scope, &list);
    assert!(o.result.is_ok(), "the restored key works at once: {:?}", o.result);
}

#[test]
fn a_run_is_not_held_up_by_another_run_threads_idle_runtime() {
    // `opslet serve` gives each run thread an async runtime that lives as long as the thread and
    // turns only while the thread has a run. A connection opened by one thread's run must not
    // serve a run on another thread while the first thread waits for work: nothing would drive
    // it, and the request would wait for its timeout.
    let b = peer::bucket("threads", false);
    let lab = std::sync::Arc::new(lab("timeout = \"5s\""));
    let scope = format!("{{ bucket = \"{b}\", actions = [\"read\"] }}");
    let list = format!(r#"return function() return #s3.list("{b}") end"#);
    let (ran, idle) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let thread = {
        let (lab, scope, list) = (std::sync::Arc::clone(&lab), scope.clone(), list.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let o = rt.block_on(lab.rt.run(Lab::request(&scope, &list, "", false)));
            ran.0.send(format!("{:?}", o.result)).unwrap();
            // Waits for work, its runtime kept and not turning, as an idle run thread does.
            let _ = idle.1.recv();
        })
    };
    let first = ran.1.recv().unwrap();
    assert!(first.starts_with("Ok"), "{first}");
    // A request stuck on the idle runtime's connection fails at the connection's timeout.
    let o = lab.run(&scope, &list);
    assert!(o.result.is_ok(), "{:?}", o.result);
    idle.0.send(()).unwrap();
    thread.join().unwrap();
}

#[test]
fn permissions_are_refused_before_anything_is_sent() {
    // The connection points where nothing listens: a refusal that reached the network would
    // say "connect"; every one here must be the permission's.
    let store = Store::temporary().unwrap();
    let cfg = opslet::config::Config::parse(
        "[audit]\nsync = false\n[s3.store]\nendpoint = \"http://127.0.0.1:1\"\naccess_key = \"a\"\nsecret_key_secret = \"none\"\ndefault = true\n[s3.other]\nendpoint = \"http://127.0.0.1:1\"\naccess_key = \"a\"\nsecret_key_secret = \"none\"\n",
        "opslet.toml",
    )
    .unwrap();
    let lab = Lab { rt: opslet::modules::runtime(&cfg, Some(store.clone())).unwrap(), store };
    let scope = r#"[{ connection = "store", bucket = "releases", prefix = "agent/", actions = ["read"] }, { connection = "store", bucket = "uploads", prefix = "in/", actions = ["write"] }]"#;
    for (call, want) in [
        (r#"s3.list("releases", "other/")"#, "`read` on releases/other/"),
        (r#"s3.list("releases")"#, "`read` on releases/ "),
        (r#"s3.head("private", "agent/x")"#, "`read` on private/agent/x"),
        (r#"s3.get("releases", "agentx/y")"#, "`read` on releases/agentx/y"),
        (r#"s3.object("releases", "other/pkg.tgz")"#, "`read` on releases/other/pkg.tgz"),
        (r#"s3.put("releases", "agent/new.tgz", "x")"#, "`write` on releases/agent/new.tgz"),
        (r#"s3.put("uploads", "out/x", "x")"#, "`write` on uploads/out/x"),
        (r#"s3.copy("releases", "agent/a", "releases", "agent/b")"#, "`write` on releases/agent/b"),
        (r#"s3.copy("private", "a", "uploads", "in/b")"#, "`read` on private/a"),
        (r#"s3.delete("releases", "agent/a")"#, "`delete` on releases/agent/a"),
        (r#"s3.presign("releases", "agent/a")"#, "`presign` on releases/agent/a"),
        (r#"s3.destination("releases", "agent/")"#, "`write` on releases/agent/"),
        (r#"s3.connection("other").get("releases", "agent/a")"#, "(connection other)"),
        // Keys that some stores resolve as paths, out of the granted prefix.
        (r#"s3.get("releases", "agent/../secret/key")"#, "`..` segment"),
        (r#"s3.get("releases", "agent//x")"#, "empty, `.` or `..` segment"),
        (r#"s3.put("uploads", "in/./x", "x")"#, "`..` segment"),
        (r#"s3.get("releases", "/agent/x")"#, "starts with `/`"),
        (r#"s3.get("Bad_Bucket", "agent/x")"#, "not a bucket name"),
        (r#"s3.destination("uploads", "in")"#, "must end with `/`"),
        (r#"s3.get("releases", "agent/x", { versoin = "1" })"#, "unknown option `versoin`"),
        (r#"s3.connection("nope")"#, "no s3 connection `nope`"),
    ] {
        let o = lab.run(scope, &format!("return function() return {call} end"));
        let e = err_text(&o);
        assert!(e.contains(want), "{call}: {e}");
        assert!(!e.contains("127.0.0.1:1") && !e.contains("secret `none`"), "{call} reached the network (or its keys): {e}");
    }
    // presign needs read (GET) or write (PUT) as well.
    let scope = r#"{ bucket = "releases", actions = ["presign", "read"] }"#;
    let o = lab.run(scope, r#"return function() return s3.presign("releases", "a", { method = "PUT" }) end"#);
    assert!(err_text(&o).contains("`write` on releases/a"), "{}", err_text(&o));
    // Undeclared: the module is not there at all.
    let o = run(&lab.rt, package("return function() return s3.get('releases', 'a') end"));
    assert!(err_text(&o).contains("does not declare the `s3` permission"), "{}", err_text(&o));
    for (scope, want) in [
        (r#"{ prefix = "a/", actions = ["read"] }"#, "`bucket` is required"),
        (r#"{ bucket = "releases", actions = ["admin"] }"#, "unknown action `admin`"),
        (r#"["read"]"#, "expected tables"),
    ] {
        let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\ns3 = {scope}\n");
        let pkg = opslet::applet::AppletPackage::from_files(
            [("applet.toml".to_string(), m.into_bytes()), ("main.lua".to_string(), b"return function() end".to_vec())].into(),
        )
        .unwrap();
        let e = pkg.check_modules(lab.rt.modules()).unwrap_err().to_string();
        assert!(e.contains(want), "{scope}: {e}");
    }
}

#[test]
fn a_dry_run_changes_nothing_and_issues_no_url() {
    let b = peer::bucket("dry", false);
    let c = peer::client();
    block(async { c.put(&b, "keep.txt", b"keep", None, Default::default()).await.unwrap() });
    let lab = lab("");
    let main = format!(
        r#"return function()
            local put = s3.put("{b}", "new.txt", "x")
            local del = s3.delete("{b}", "keep.txt")
            local cp = s3.copy("{b}", "keep.txt", "{b}", "copy.txt")
            local url = s3.presign("{b}", "keep.txt")
            local read = s3.get("{b}", "keep.txt")
            return {{ put = put, del = del, cp = cp, url = url, read = read }}
        end"#
    );
    let o = lab.run_as(&all(&b), &main, "", true);
    let v = ok(&o);
    assert_eq!(v["put"]["planned"], true);
    assert_eq!(v["del"]["planned"], true);
    assert_eq!(v["cp"]["planned"], true);
    assert_eq!(v["url"], "(dry run: no URL issued)");
    assert_eq!(v["read"], "keep", "reads still read");
    let plan: Vec<String> = o.plan.iter().map(|s| format!("{} {} {}", s["module"], s["action"], s["target"])).collect();
    assert!(plan.iter().any(|p| p.contains("\"put\"") && p.contains("new.txt")), "{plan:?}");
    assert!(plan.iter().any(|p| p.contains("\"delete\"") && p.contains("keep.txt")), "{plan:?}");
    block(async {
        assert!(c.head(&b, "new.txt", None).await.unwrap().is_none());
        assert!(c.head(&b, "copy.txt", None).await.unwrap().is_none());
        assert!(c.head(&b, "keep.txt", None).await.unwrap().is_some());
    });
}

#[test]
fn multipart_uploads_stream_and_a_bad_checksum_leaves_nothing() {
    let b = peer::bucket("multipart", false);
    // 5 MiB parts: 23 MiB goes in five parts through one part's worth of memory.
    let c = peer::client_with("part_size = \"5MiB\"");
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for _ in 0..23 {
        h.update(&chunk);
    }
    let sha = hex::encode(h.finalize());
    block(async {
        let mut u = c.upload(&b, "big/blob.bin", Some(sha.clone()), None);
        for _ in 0..23 {
            u.write(&chunk).await.unwrap();
        }
        let o = u.finish().await.unwrap();
        assert_eq!(o.size, 23 * 1024 * 1024);
        assert!(o.etag.as_deref().unwrap().ends_with("-5"), "a five-part upload: {:?}", o.etag);
        let head = c.head(&b, "big/blob.bin", None).await.unwrap().unwrap();
        assert_eq!(head.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(head.size, 23 * 1024 * 1024);
        // Streamed back, hashing as it reads.
        let (_, mut r) = c.open(&b, "big/blob.bin", None).await.unwrap();
        while r.chunk().await.unwrap().is_some() {}
        assert_eq!(r.sha256(), sha);

        // Bytes that do not hash to what was promised: the upload is abandoned, no object.
        let mut u = c.upload(&b, "big/wrong.bin", Some("0".repeat(64)), None);
        for _ in 0..7 {
            u.write(&chunk).await.unwrap();
        }
        let e = u.finish().await.unwrap_err().to_string();
        assert!(e.contains("not the expected"), "{e}");
        assert!(c.head(&b, "big/wrong.bin", None).await.unwrap().is_none());
    });
    // s3.get refuses what is over max_get and points at s3.object.
    let lab = lab("max_get = \"1MiB\"");
    let o = lab.run(&all(&b), &format!(r#"return function() return s3.get("{b}", "big/blob.bin") end"#));
    let e = err_text(&o);
    assert!(e.contains("over the 1048576-byte limit") && e.contains("use s3.object"), "{e}");
}

#[test]
fn a_store_over_tls_is_trusted_through_its_ca_file() {
    let b = peer::bucket("tls", false);
    let (url, ca) = peer::https_endpoint();
    let lab_with = |extra: &str| {
        let store = Store::temporary().unwrap();
        opslet::secrets::Secrets::open(store.clone()).unwrap().set("s3-secret", peer::SECRET.as_bytes(), "tester").unwrap();
        let config = format!(
            "[audit]\nsync = false\n[s3.store]\nendpoint = \"{url}\"\naccess_key = \"{}\"\nsecret_key_secret = \"s3-secret\"\ntimeout = \"10s\"\n{extra}",
            peer::ACCESS
        );
        let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
        Lab { rt: opslet::modules::runtime(&cfg, Some(store.clone())).unwrap(), store }
    };
    let main = format!(r#"return function() s3.put("{b}", "tls.txt", "over tls") return s3.get("{b}", "tls.txt") end"#);
    let o = lab_with(&format!("ca_file = \"{ca}\"")).run(&all(&b), &main);
    assert_eq!(ok(&o), "over tls");
    // Without the CA, the store's certificate is refused and nothing is sent.
    let o = lab_with("").run(&all(&b), &main);
    let e = err_text(&o);
    assert!(e.contains(url.trim_start_matches("https://")) && e.to_lowercase().contains("certificate"), "{e}");
    // The request's signed URL (a credential for minutes) is not in the message.
    assert!(!e.contains("X-Amz-") && !e.contains('?'), "{e}");
    // A CA file that is not there is named.
    let o = lab_with("ca_file = \"/nonexistent/ca.pem\"").run(&all(&b), &main);
    assert!(err_text(&o).contains("[s3.store] ca_file /nonexistent/ca.pem"), "{}", err_text(&o));
}
