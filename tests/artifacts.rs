//! `opslet artifact` against a real S3 store (SeaweedFS, scripts/peers/s3.sh): a file larger than
//! a part uploaded in parts with its checksum, listed with versions, downloaded and checked,
//! removed (a delete marker in a versioned bucket); every step audited. Through a server: the
//! console's listing route, and who may list, download and change artifacts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::s3 as peer;
use common::serve as serve_proc;
use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A data dir whose opslet.toml has `[s3.store]`, its secret key set.
    fn new() -> Env {
        let env = Env { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(env.data()).unwrap();
        std::fs::write(
            env.data().join("opslet.toml"),
            format!("[audit]\nsync = false\n{}", peer::connection("store", "part_size = \"5MiB\"")),
        )
        .unwrap();
        let key = env.dir.path().join("key");
        std::fs::write(&key, peer::SECRET).unwrap();
        let o = env.opslet(&["secret", "set", "s3-secret", "--file", key.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        env
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn opslet(&self, args: &[&str]) -> Output {
        self.opslet_env(args, &[])
    }

    fn opslet_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(args)
            .env("OPSLET_DATA_DIR", self.data())
            .env_remove("OPSLET_CONFIG")
            .env_remove("OPSLET_SERVER")
            .env_remove("OPSLET_TOKEN")
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256_of(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// A file of `mib` MiB of varied bytes.
fn file(dir: &Path, name: &str, mib: usize, seed: u8) -> PathBuf {
    let p = dir.join(name);
    let data: Vec<u8> = (0..mib * 1024 * 1024).map(|i| ((i / 7) as u8).wrapping_add(seed).wrapping_mul(31)).collect();
    std::fs::write(&p, data).unwrap();
    p
}

#[test]
fn put_list_get_and_rm_with_versions_checksums_and_audit() {
    let env = Env::new();
    let b = peer::bucket("art", true);
    let v1 = file(env.dir.path(), "agent-v1.bin", 12, 1);
    let v2 = file(env.dir.path(), "agent-v2.bin", 3, 2);
    let at = format!("store:{b}/agent/agent.bin");

    // 12 MiB in 5 MiB parts, hashed first: the store records the checksum.
    let o = env.opslet(&["artifact", "put", v1.to_str().unwrap(), &at]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("{b}/agent/agent.bin  12582912 bytes  sha256 {}", sha256_of(&v1))), "{out}");
    let first_version = out.lines().find_map(|l| l.strip_prefix("version ")).expect("a versioned bucket names the version").to_string();
    let o = env.opslet(&["artifact", "put", v2.to_str().unwrap(), &at]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = env.opslet(&["artifact", "list", &format!("store:{b}/agent/"), "--versions", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let l: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(l["versioning"], "Enabled");
    let versions = l["objects"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{l}");
    assert_eq!(versions.iter().filter(|v| v["latest"] == true).count(), 1);
    assert!(versions.iter().any(|v| v["version_id"] == first_version.as_str() && v["size"] == 12582912));
    let o = env.opslet(&["artifact", "list", &b]);
    assert!(stdout(&o).contains("agent/agent.bin"), "{}", stdout(&o));
    assert!(stderr(&o).contains("versioning: Enabled"), "{}", stderr(&o));

    // Downloads are checked against the recorded checksum; --version reads an older one.
    let o = env.opslet(&["artifact", "get", &at, "-o", "latest.bin"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(checked)"), "{}", stderr(&o));
    assert_eq!(sha256_of(&env.dir.path().join("latest.bin")), sha256_of(&v2));
    let o = env.opslet(&["artifact", "get", &at, "--version", &first_version]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256_of(&env.dir.path().join("agent.bin")), sha256_of(&v1), "the default output is the key's file name");

    // rm hides it behind a delete marker; the versions stay.
    let o = env.opslet(&["artifact", "rm", &at]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("hidden by delete marker"), "{}", stdout(&o));
    let o = env.opslet(&["artifact", "get", &at, "-o", "gone.bin"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("NoSuchKey"), "{}", stderr(&o));
    assert!(!env.dir.path().join("gone.bin").exists(), "nothing written for a failed download");
    let o = env.opslet(&["artifact", "get", &at, "--version", &first_version, "-o", "again.bin"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Bad input is named.
    for (args, want) in [
        (vec!["artifact", "put", "nope.bin", at.as_str()], "nope.bin"),
        (vec!["artifact", "get", "store:Bad_Bucket/x"], "not a bucket name"),
        (vec!["artifact", "get", &format!("store:{b}/a/../b")], "`..` segment"),
        (vec!["artifact", "list", "other:releases"], "no s3 connection `other`"),
    ] {
        let o = env.opslet(&args);
        assert!(!o.status.success() && stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }

    // Every change and download is audited with the object and its checksum.
    let o = env.opslet(&["audit", "list", "--format", "json"]);
    let records: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["kind"].as_str()).filter(|k| k.starts_with("artifact.")).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "artifact.put").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "artifact.get").count(), 3, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "artifact.rm").count(), 1, "{kinds:?}");
    let put = records.iter().find(|r| r["kind"] == "artifact.put").unwrap();
    assert_eq!(put["data"]["object"]["sha256"], sha256_of(&v1).as_str());
}

#[test]
fn through_a_server_the_console_lists_and_roles_decide_who_changes() {
    let env = Env::new();
    let b = peer::bucket("srv", false);
    // Sent with the command: within the server's default body limit.
    let small = env.dir.path().join("cert.pem");
    std::fs::write(&small, "-----BEGIN CERTIFICATE-----\n".repeat(4000)).unwrap();
    for (user, role) in [("vic", "viewer"), ("pat", "publisher")] {
        assert!(env.opslet(&["user", "add", user, "--role", role]).status.success());
    }
    let token = |user: &str| stdout(&env.opslet(&["token", "create", user])).trim().to_string();
    let (vic, pat) = (token("vic"), token("pat"));
    let (mut child, addr) = serve_proc::spawn(&env.data(), &[]);
    let base = format!("http://{addr}");
    let remote = |tok: &str, args: &[&str]| env.opslet_env(args, &[("OPSLET_SERVER", base.as_str()), ("OPSLET_TOKEN", tok)]);

    // A viewer may not upload; a publisher may, sending the file with the command.
    let o = remote(&vic, &["artifact", "put", small.to_str().unwrap(), &format!("{b}/certs/cert.pem")]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains("may not publish"), "{}", stderr(&o));
    let o = remote(&pat, &["artifact", "put", small.to_str().unwrap(), &format!("{b}/certs/cert.pem")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&sha256_of(&small)), "{}", stdout(&o));
    // ... and download it back to their own machine.
    let o = remote(&pat, &["artifact", "get", &format!("{b}/certs/cert.pem"), "-o", "back.pem"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256_of(&env.dir.path().join("back.pem")), sha256_of(&small));
    let o = remote(&vic, &["artifact", "get", &format!("{b}/certs/cert.pem"), "-o", "x.pem"]);
    assert_eq!(o.status.code(), Some(11), "a viewer does not read contents: {}", stderr(&o));

    // The console's listing: names, sizes, checksums, for any role that reads the registry.
    opslet::install_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (conns, listing, bad, anon) = rt.block_on(async {
        let c = reqwest::Client::new();
        let get = |path: String| c.get(format!("{base}{path}")).bearer_auth(&vic).send();
        let conns: Value = get("/api/v1/artifacts".into()).await.unwrap().json().await.unwrap();
        let listing: Value = get(format!("/api/v1/artifacts/store?bucket={b}&prefix=certs/")).await.unwrap().json().await.unwrap();
        let bad = get(format!("/api/v1/artifacts/store?bucket={b}&prefix=../x")).await.unwrap().status().as_u16();
        let anon = c.get(format!("{base}/api/v1/artifacts")).send().await.unwrap().status().as_u16();
        (conns, listing, bad, anon)
    });
    assert_eq!(conns["connections"][0]["name"], "store");
    assert_eq!(listing["objects"][0]["key"], "certs/cert.pem");
    assert_eq!(listing["objects"][0]["size"], 28 * 4000);
    assert_eq!(listing["versioning"], Value::Null);
    assert_eq!(bad, 400);
    assert_eq!(anon, 401);
    serve_proc::stop(&mut child);
}
