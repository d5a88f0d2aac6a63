//! Objects between a real S3 store (SeaweedFS) and real OpenSSH hosts, never through the applet:
//! a 200 MB object streamed to several hosts by an applet whose memory limit is a tenth of it,
//! each copy checked with sha256sum on its host and renamed into place, one host failing alone;
//! a checksum that does not match leaving nothing behind; log files uploaded from every host in
//! parts; a presigned URL fetched by the hosts; and the bundled component-push applet rolling a
//! failed health check back.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::s3::{self as peer, block};
use common::sshd::Fleet;
use common::*;
use opslet::cmdb::{Cmdb, Host};
use opslet::runtime::{RunOutcome, Runtime};
use opslet::store::Store;
use serde_json::Value;

struct Lab {
    fleet: Fleet,
    store: Store,
    rt: Runtime,
    /// A folder every host (all on this machine) may write to.
    dir: tempfile::TempDir,
}

/// `n` hosts web1..webN in group `web`, plus `down1` (group `web`, nothing listening) when
/// `with_down`; S3 connection `store`, 5 MiB parts.
fn lab(n: usize, with_down: bool) -> Lab {
    let fleet = Fleet::start(n, "web");
    let store = Store::temporary().unwrap();
    let cmdb = Cmdb::new(store.clone()).unwrap();
    for h in &fleet.hosts {
        let host = Host {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            groups: ["web".to_string()].into(),
            host_key: Some(h.host_key.clone()),
            ..Default::default()
        };
        cmdb.put(host, "tester").unwrap();
    }
    if with_down {
        let down = Host {
            name: "down1".into(),
            address: fleet.dead_address.clone(),
            port: fleet.port,
            groups: ["web".to_string()].into(),
            ..Default::default()
        };
        cmdb.put(down, "tester").unwrap();
    }
    let secrets = opslet::secrets::Secrets::open(store.clone()).unwrap();
    secrets.set("ssh-key", fleet.client_key.as_bytes(), "tester").unwrap();
    secrets.set("s3-secret", peer::SECRET.as_bytes(), "tester").unwrap();
    let config = format!(
        "[audit]\nsync = false\n[limits]\ntimeout = \"300s\"\n[ssh]\nconnect_timeout = \"3s\"\n[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n{}",
        peer::connection("store", "part_size = \"5MiB\"")
    );
    let cfg = opslet::config::Config::parse(&config, "opslet.toml").unwrap();
    let rt = opslet::modules::runtime(&cfg, Some(store.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    Lab { fleet, store, rt, dir }
}

impl Lab {
    fn run(&self, permissions: &str, limits: &str, main: &str) -> RunOutcome {
        let m = format!("name = \"t\"\nversion = \"1.0.0\"\n[permissions]\n{permissions}\n{limits}");
        run(&self.rt, package_with(&m, main, &[]))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Uploads `mib` MiB of varied bytes as `key`, a MiB at a time; returns its SHA-256.
fn upload(bucket: &str, key: &str, mib: usize) -> String {
    use sha2::Digest;
    let c = peer::client_with("part_size = \"16MiB\"");
    block(async {
        let mut h = sha2::Sha256::new();
        let chunks: Vec<Vec<u8>> = (0..mib).map(|i| (0..1024 * 1024).map(|j| ((j * 7 + i * 13) % 253) as u8).collect()).collect();
        for c in &chunks {
            h.update(c);
        }
        let sha = hex::encode(h.finalize());
        let mut u = c.upload(bucket, key, Some(sha.clone()), None);
        for c in &chunks {
            u.write(c).await.unwrap();
        }
        u.finish().await.unwrap();
        sha
    })
}

/// Files in `dir` whose names say they are an interrupted transfer's.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".opslet-"))
        .collect()
}

#[test]
fn a_200mb_object_streams_to_every_host_checked_there_and_one_host_fails_alone() {
    let lab = lab(3, true);
    let b = peer::bucket("push", false);
    let sha = upload(&b, "releases/app-2.0.bin", 200);
    let dest = lab.path("app-2.0.bin");
    // 32 MiB of applet memory: the object is more than six times that.
    let main = format!(
        r#"return function()
            local pkg = s3.object("{b}", "releases/app-2.0.bin")
            local r = ssh.put("group:web", "{dest}", pkg, {{ mode = "0640", timeout = 240 }})
            return {{ label = pkg.label, size = pkg.size, sha256 = pkg.sha256, results = r }}
        end"#,
        dest = dest.display()
    );
    let perms = format!("ssh = {{ hosts = [\"*\"] }}\ns3 = {{ bucket = \"{b}\", prefix = \"releases/\", actions = [\"read\"] }}");
    let o = lab.run(&perms, "[limits]\nmemory = \"32MiB\"\ntimeout = \"300s\"\n", &main);
    let v = ok(&o);
    assert_eq!(v["size"], 200 * 1024 * 1024);
    assert_eq!(v["sha256"], sha.as_str());
    for h in ["web1", "web2", "web3"] {
        let r = by_host(&v["results"], h);
        assert_eq!(r["ok"], true, "{h}: {r}");
        assert_eq!(r["sha256"], sha.as_str(), "{h}: checked on the host");
        assert_eq!(r["bytes"], 200 * 1024 * 1024);
    }
    let down = by_host(&v["results"], "down1");
    assert_eq!(down["ok"], false);
    assert!(down["error"].as_str().unwrap().contains(&lab.fleet.dead_address), "{down}");
    assert_eq!(sha256_file(&dest), sha);
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(leftovers(lab.dir.path()).is_empty(), "temporary files left: {:?}", leftovers(lab.dir.path()));
    // Audited per host with the object it came from.
    let acts = actions(&lab.store, &o);
    let put = acts.iter().find(|r| r.data["module"] == "ssh" && r.data["target"] == "web2").unwrap();
    assert_eq!(put.data["detail"]["object"]["key"], "releases/app-2.0.bin");
    assert_eq!(put.data["detail"]["object"]["sha256"], sha.as_str());
}

#[test]
fn a_checksum_that_does_not_match_leaves_nothing_on_any_host() {
    let lab = lab(2, false);
    let b = peer::bucket("mismatch", false);
    // Uploaded through a presigned URL: the store records no checksum of its own.
    let c = peer::client();
    block(async {
        let url = c.presign(true, &b, "pkg/tool.bin", std::time::Duration::from_secs(60)).unwrap();
        let r = reqwest::Client::new().put(url).body(vec![7u8; 3 * 1024 * 1024]).send().await.unwrap();
        assert_eq!(r.status(), 200);
    });
    let dest = lab.path("tool.bin");
    std::fs::write(&dest, "the old tool").unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o666)).unwrap();
    let wrong = "ab".repeat(32);
    let main = format!(
        r#"return function()
            local pkg = s3.object("{b}", "pkg/tool.bin", {{ sha256 = "{wrong}" }})
            return ssh.put("group:web", "{dest}", pkg)
        end"#,
        dest = dest.display()
    );
    let perms = format!("ssh = {{ hosts = [\"*\"] }}\ns3 = {{ bucket = \"{b}\", actions = [\"read\"] }}");
    let o = lab.run(&perms, "", &main);
    let v = ok(&o);
    for h in ["web1", "web2"] {
        let r = by_host(v, h);
        assert_eq!(r["ok"], false, "{h}: {r}");
        assert!(r["error"].as_str().unwrap().contains(&wrong), "{h}: the error names the expected hash: {r}");
    }
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "the old tool", "the file in place is untouched");
    assert!(leftovers(lab.dir.path()).is_empty(), "{:?}", leftovers(lab.dir.path()));
}

#[test]
fn files_from_every_host_upload_in_parts_beyond_the_applet_memory() {
    let lab = lab(2, true);
    let b = peer::bucket("bundles", true);
    // 40 MiB on "each host" (one file here, as all hosts share this machine), 16 MiB of memory.
    let src = lab.path("logs.tgz");
    let data: Vec<u8> = (0..40 * 1024 * 1024).map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sha = sha256_file(&src);
    drop(data);
    let main = format!(
        r#"return function()
            local dest = s3.destination("{b}", "incident-1/")
            return ssh.get("group:web", "{src}", {{ to = dest, timeout = 120 }})
        end"#,
        src = src.display()
    );
    let perms = format!("ssh = {{ hosts = [\"*\"] }}\ns3 = {{ bucket = \"{b}\", prefix = \"incident-1/\", actions = [\"write\"] }}");
    let o = lab.run(&perms, "[limits]\nmemory = \"16MiB\"\n", &main);
    let v = ok(&o);
    let c = peer::client();
    for h in ["web1", "web2"] {
        let r = by_host(v, h);
        assert_eq!(r["ok"], true, "{h}: {r}");
        assert_eq!(r["sha256"], sha.as_str());
        assert!(r.get("content").is_none(), "no content comes back into the applet");
        let key = format!("incident-1/{h}/logs.tgz");
        assert_eq!(r["object"]["key"], key.as_str());
        let head = block(c.head(&b, &key, None)).unwrap().unwrap_or_else(|| panic!("{key} is in the store"));
        assert_eq!(head.size, 40 * 1024 * 1024);
        assert_eq!(head.sha256.as_deref(), Some(sha.as_str()), "the host's checksum is recorded with the object");
        assert!(head.etag.as_deref().unwrap().ends_with("-8"), "uploaded in 5 MiB parts: {:?}", head.etag);
        assert!(head.version_id.is_some());
    }
    assert_eq!(by_host(v, "down1")["ok"], false);
    // The store's upload is audited as the s3 module's put, the host's read as ssh's get.
    let acts = actions(&lab.store, &o);
    assert!(
        acts.iter()
            .any(|r| r.data["module"] == "s3" && r.data["action"] == "put" && r.data["target"] == format!("{b}/incident-1/web1/logs.tgz"))
    );
    // A destination outside the granted prefix is refused before any host is reached.
    let main =
        format!(r#"return function() return ssh.get("group:web", "{}", {{ to = s3.destination("{b}", "other/") }}) end"#, src.display());
    let o = lab.run(&perms, "", &main);
    assert!(err_text(&o).contains("permission denied: `write` on"), "{}", err_text(&o));
    assert_eq!(lab.fleet.logins(), 2, "only the first run's two hosts logged in");
}

#[test]
fn hosts_fetch_a_presigned_url_whose_signature_stays_out_of_the_audit_log() {
    let lab = lab(1, false);
    let b = peer::bucket("fetch", false);
    let c = peer::client();
    block(async { c.put(&b, "agent/install.sh", b"echo installed\n", None, Default::default()).await.unwrap() });
    let out = lab.path("install.sh");
    let main = format!(
        r#"return function()
            local url = s3.presign("{b}", "agent/install.sh", {{ expires = 60 }})
            return ssh.run("web1", "curl -fsS -o {out} '" .. url .. "' && cat {out}")
        end"#,
        out = out.display()
    );
    let perms = format!("ssh = {{ hosts = [\"*\"] }}\ns3 = {{ bucket = \"{b}\", actions = [\"read\", \"presign\"] }}");
    let o = lab.run(&perms, "", &main);
    let v = ok(&o);
    let r = by_host(v, "web1");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["stdout"], "echo installed\n");
    let audit = serde_json::to_string(&actions(&lab.store, &o).iter().map(|r| &r.data).collect::<Vec<_>>()).unwrap();
    assert!(audit.contains("X-Amz-Signature=<redacted>"), "the command is audited with the signature hidden: {audit}");
    let _: Value = Value::Null;
}

/// A package `app-VERSION.tar.gz` holding VERSION and health.sh (exiting `health`), uploaded as
/// app/VERSION/app-VERSION.tar.gz.
fn package_in_store(bucket: &str, dir: &Path, version: &str, health: i32) {
    let src = dir.join(format!("src-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("VERSION"), version).unwrap();
    std::fs::write(src.join("health.sh"), format!("exit {health}\n")).unwrap();
    let tgz = dir.join(format!("app-{version}.tar.gz"));
    let st = std::process::Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(&src).args(["VERSION", "health.sh"]).status().unwrap();
    assert!(st.success());
    let c = peer::client();
    let data = std::fs::read(&tgz).unwrap();
    block(c.put(bucket, &format!("app/{version}/app-{version}.tar.gz"), &data, None, Default::default())).unwrap();
}

#[test]
fn component_push_rolls_a_failed_health_check_back_to_the_previous_version() {
    let lab = lab(3, false);
    let b = peer::bucket("components", false);
    let work = tempfile::tempdir().unwrap();
    package_in_store(&b, work.path(), "1.0", 0);
    package_in_store(&b, work.path(), "2.0", 1);
    // Each host installs into a folder of its own address (all hosts share this machine).
    let root = lab.dir.path().display().to_string();
    let mine = format!("{root}/installed/$(echo $SSH_CONNECTION | cut -d' ' -f3)");
    let install = format!("mkdir -p {mine} && tar -xzf {{path}} -C {mine}");
    let health = format!("sh {mine}/health.sh");
    let push = |version: &str, dry_run: bool| {
        let pkg = Arc::new(
            opslet::applet::AppletPackage::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("applets/component-push")).unwrap(),
        );
        let mut r = req(pkg);
        let params = [
            ("targets", "group:web"),
            ("component", "app"),
            ("version", version),
            ("bucket", b.as_str()),
            ("dest", root.as_str()),
            ("install", install.as_str()),
            ("health", health.as_str()),
            ("batch", "1"),
        ];
        r.params_pairs = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r.dry_run = dry_run;
        run_req(&lab.rt, r)
    };
    let installed = |h: &str| {
        let addr = &lab.fleet.hosts.iter().find(|x| x.name == h).unwrap().address;
        std::fs::read_to_string(format!("{root}/installed/{addr}/VERSION")).unwrap_or_default()
    };
    let tag = |h: &str| Cmdb::new(lab.store.clone()).unwrap().host(h).unwrap().unwrap().tags.get("component.app").cloned();

    let o = push("1.0", false);
    let v = ok(&o);
    for h in ["web1", "web2", "web3"] {
        assert_eq!(by_host(v, h)["status"], "updated", "{v}");
        assert_eq!(installed(h), "1.0");
        assert_eq!(tag(h).as_deref(), Some("1.0"));
    }

    // A dry run of 2.0 says per host what would change, and changes nothing.
    let o = push("2.0", true);
    let v = ok(&o);
    for h in ["web1", "web2", "web3"] {
        let r = by_host(v, h);
        assert_eq!((r["status"].as_str(), r["from"].as_str(), r["to"].as_str()), (Some("planned"), Some("1.0"), Some("2.0")), "{r}");
    }
    assert_eq!(installed("web1"), "1.0");

    // 2.0 fails its health check on the canary: 1.0 goes back there, no other host is touched.
    let o = push("2.0", false);
    let v = ok(&o);
    let canary = by_host(v, "web1");
    assert_eq!(canary["status"], "rolled_back", "{v}");
    assert!(canary["error"].as_str().unwrap_or_default().contains("health"), "{canary}");
    for h in ["web2", "web3"] {
        assert_eq!(by_host(v, h)["status"], "skipped", "{v}");
    }
    for h in ["web1", "web2", "web3"] {
        assert_eq!(installed(h), "1.0", "{h} runs 1.0");
        assert_eq!(tag(h).as_deref(), Some("1.0"), "{h}: the cmdb still says 1.0");
    }
    // Both packages reached the canary, each checked there.
    let pushed: Vec<String> = actions(&lab.store, &o)
        .iter()
        .filter(|r| r.data["module"] == "ssh" && r.data["action"] == "put" && r.data["target"] == "web1")
        .map(|r| r.data["detail"]["object"]["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(pushed, ["app/2.0/app-2.0.tar.gz", "app/1.0/app-1.0.tar.gz"]);
}
