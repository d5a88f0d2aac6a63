//! Findings of a security pass against the running server, each reproduced: a token lifetime
//! that overflowed the calendar, the bearer scheme's case, a data dir made beforehand staying
//! open to others, webhook deliveries (a forged one after a genuine one; two distinct ones with
//! the same body in one second).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn opslet(data: &Path, args: &[&str]) -> (i32, String, String) {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn rt() -> tokio::runtime::Runtime {
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_huge_token_lifetime_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert_eq!(opslet(&data, &["user", "add", "ada", "--role", "admin"]).0, 0);
    let (code, _, err) = opslet(&data, &["token", "create", "ada", "--expires", "1000000000d"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("longer than 3650 days"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let token = opslet(&data, &["token", "create", "ada", "--expires", "30d"]).1.trim().to_string();
    let (mut server, addr) = common::serve::spawn(&data, &[]);
    rt().block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/users/ada/tokens"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "expires": "1000000000d" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("longer than 3650 days"), "{body}");
        // The server is still there.
        let ok = reqwest::Client::new().get(format!("http://{addr}/api/v1/applets")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(ok.status(), 200);
    });
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    opslet(&data, &["user", "add", "vic", "--role", "viewer"]);
    let token = opslet(&data, &["token", "create", "vic"]).1.trim().to_string();
    let (mut server, addr) = common::serve::spawn(&data, &[]);
    rt().block_on(async {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let resp = reqwest::Client::new()
                .get(format!("http://{addr}/api/v1/applets"))
                .header("Authorization", format!("{scheme} {token}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{scheme}");
        }
        let basic = reqwest::Client::new()
            .get(format!("http://{addr}/api/v1/applets"))
            .header("Authorization", format!("Basic {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401);
    });
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_data_dir_made_beforehand_is_restricted_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(opslet(&data, &["list"]).0, 0);
    // A store file a backup restore (or a umask) left readable to all.
    let store = data.join("store.sqlite");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, err) = opslet(&data, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(err.contains("restricted to its owner"), "{err}");
    // A store file another user owns (planted, or kept as a way in) is refused.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        std::os::unix::fs::chown(&store, Some(65534), None).unwrap();
        let (code, _, err) = opslet(&data, &["list"]);
        assert_eq!(code, 5, "{err}");
        assert!(err.contains("belongs to uid 65534, not to this user"), "{err}");
    }
}

#[test]
fn webhook_deliveries_are_checked_before_they_are_remembered_and_may_carry_their_own_id() {
    use opslet::service::hooks::{sign, sign_delivery};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let applet = dir.path().join("echo");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), "name = \"echo\"\nversion = \"1.0.0\"\n").unwrap();
    std::fs::write(applet.join("main.lua"), "return function() return true end").unwrap();
    opslet(&data, &["publish", applet.to_str().unwrap()]);
    let secret = opslet(&data, &["hook", "add", "alert", "--applet", "echo"]).1.trim().to_string();
    let (mut server, addr) = common::serve::spawn(&data, &[]);
    let url = format!("http://{addr}/hooks/alert");
    rt().block_on(async {
        let client = reqwest::Client::new();
        let send = |ts: i64, sig: String, id: Option<&str>, body: &'static str| {
            let mut r = client.post(&url).header("X-Opslet-Timestamp", ts.to_string()).header("X-Opslet-Signature", sig).body(body);
            if let Some(id) = id {
                r = r.header("X-Opslet-Delivery", id);
            }
            r.send()
        };
        let now = chrono::Utc::now().timestamp();
        let body = r#"{"alert": "disk"}"#;
        let sig = sign(&secret, now, body.as_bytes());
        assert_eq!(send(now, sig.clone(), None, body).await.unwrap().status(), 202);
        // A forged delivery reusing the genuine one's signature is a bad signature, not a replay.
        assert_eq!(send(now, sig.clone(), None, r#"{"alert": "forged"}"#).await.unwrap().status(), 401);
        assert_eq!(send(now, sig, None, body).await.unwrap().status(), 409, "the genuine one again is a replay");
        // Two distinct deliveries with the same body in the same second, each with its own id.
        let (a, b) = (sign_delivery(&secret, now, "evt-1", body.as_bytes()), sign_delivery(&secret, now, "evt-2", body.as_bytes()));
        assert_eq!(send(now, a.clone(), Some("evt-1"), body).await.unwrap().status(), 202);
        assert_eq!(send(now, b, Some("evt-2"), body).await.unwrap().status(), 202);
        assert_eq!(send(now, a.clone(), Some("evt-1"), body).await.unwrap().status(), 409);
        // The id is signed: another id under the same signature is refused.
        assert_eq!(send(now, a, Some("evt-3"), body).await.unwrap().status(), 401);
        // A signature without an id does not pass with one, nor the other way round.
        assert_eq!(send(now, sign(&secret, now, body.as_bytes()), Some("evt-4"), body).await.unwrap().status(), 401);
    });
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn redaction_does_not_tell_a_caller_which_guess_is_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let applet = dir.path().join("echo");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(
        applet.join("applet.toml"),
        "name = \"echo\"\nversion = \"1.0.0\"\n[params.text]\ntype = \"string\"\n[params.pin]\ntype = \"string\"\nsecret = true\ndefault = \"\"\n",
    )
    .unwrap();
    std::fs::write(applet.join("main.lua"), "return function(p) log.info(p.text) return { text = p.text, pin = p.pin } end").unwrap();
    opslet(&data, &["publish", applet.to_str().unwrap()]);
    let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["secret", "set", "bmc-pin"])
        .env("OPSLET_DATA_DIR", &data)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"493817\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success());
    // Setting a short value says it is guessable.
    assert!(String::from_utf8_lossy(&o.stderr).contains("easy to guess"), "{}", String::from_utf8_lossy(&o.stderr));
    opslet(&data, &["user", "add", "olga", "--role", "operator"]);
    opslet(&data, &["grant", "add", "olga", "echo"]);
    let token = opslet(&data, &["token", "create", "olga"]).1.trim().to_string();
    opslet(&data, &["user", "add", "ada", "--role", "admin"]);
    let admin = opslet(&data, &["token", "create", "ada"]).1.trim().to_string();
    let (mut server, addr) = common::serve::spawn(&data, &["--body-limit", "4194304"]);
    let run = |text: String, pin: &str| {
        let (addr, token) = (addr.clone(), token.clone());
        let pin = pin.to_string();
        async move {
            let resp = reqwest::Client::new()
                .post(format!("http://{addr}/api/v1/applets/echo/run"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "text": text, "pin": pin }))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let guesses = |from: u32, to: u32| (from..to).map(|n| n.to_string()).collect::<Vec<_>>().join(" ");
    rt().block_on(async {
        // The attack: 120,000 candidates in one param, echoed back. Before, the secret came back
        // as `<redacted>` in its place; now the run is refused before it starts, and the answer
        // says which param, not which part or which secret.
        let (code, body) = run(guesses(400_000, 520_000), "").await;
        assert_eq!(code, 422, "{body}");
        let message = body.to_string();
        assert!(message.contains("carries the value of a stored secret"), "{message}");
        assert!(!message.contains("493817") && !message.contains("bmc-pin"), "{message}");
        // Guesses that hold no secret run as usual, echoed as given: nothing of the caller's own
        // text is ever redacted.
        let (code, body) = run(guesses(0, 100), "").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["result"]["text"], guesses(0, 100));
        // A param declared secret may carry any value: it is redacted wherever it shows.
        let (code, body) = run("hello".into(), "493817").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["result"]["pin"], "<redacted>");
        // Every text sent is checked before anything else reads it: a key the applet does not
        // declare, nested values, and a value embedded in other text (an error that repeated
        // it, or an echo, would redact it in place).
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/api/v1/applets/echo/run"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "text": "ok", "bogus": ["x", { "k": "is it 493817?" }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["fields"][0]["param"], "bogus", "{body}");
        assert!(!body.to_string().contains("493817"), "{body}");
        let (code, body) = run("xx493817xx".into(), "").await;
        assert_eq!(code, 422, "{body}");
        // A refusal is one bit: after three in a day, every run of that caller is refused.
        let (code, body) = run("nothing secret here".into(), "").await;
        assert_eq!(code, 422, "{body}");
        assert!(body.to_string().contains("runs are refused until the day is over"), "{body}");
    });
    // Through the server's socket too (its runs are checked in the run, and are jobs).
    let (code, _, err) = opslet(&data, &["run", "echo", "-p", "text=pin is 493817"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("carries the value of a stored secret"), "{err}");
    rt().block_on(async {
        // Nothing stored holds the value: no job shows it, whoever looks.
        let jobs = reqwest::Client::new()
            .get(format!("http://{addr}/api/v1/jobs"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(jobs.contains("echo"), "{jobs}");
        assert!(!jobs.contains("493817"), "{jobs}");
    });
    server.kill().unwrap();
    server.wait().unwrap();
    let (_, audit, _) = opslet(&data, &["audit", "list", "--format", "json", "--limit", "10000"]);
    assert!(!audit.contains("493817"));
    let records: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let flagged: Vec<&serde_json::Value> = records.as_array().unwrap().iter().filter(|r| r["kind"] == "secret.in_params").collect();
    // Olga's three, and the socket's run.
    assert_eq!(flagged.len(), 4, "{flagged:?}");
    assert_eq!(flagged[0]["actor"], "olga");
    assert_eq!(flagged[0]["data"]["matched"][0]["secret"], "bmc-pin");
}

/// Records cut from the end of the audit log, with the head moved back to match: the chain
/// alone still verifies; against the last signed anchor, `audit verify` says what was cut.
#[test]
fn a_cut_at_the_end_of_the_audit_log_is_found_against_the_last_anchor() {
    use opslet::store::audit::{Head, record_key};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let anchors = dir.path().join("anchors.jsonl");
    for user in ["ann", "bob", "cy"] {
        assert_eq!(opslet(&data, &["user", "add", user, "--role", "viewer"]).0, 0);
    }
    let (code, _, err) = opslet(&data, &["audit", "anchor", "--to", anchors.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("anchored 3 records"), "{err}");
    // Someone with write access to the data dir removes the last record and moves the head.
    {
        let store = opslet::store::Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
        let tree = store.audit().raw_tree();
        let kept: opslet::store::audit::AuditRecord = serde_json::from_slice(&tree.get(record_key(1)).unwrap().unwrap()).unwrap();
        tree.remove(record_key(2)).unwrap();
        tree.insert(b"h", serde_json::to_vec(&Head { count: 2, hash: kept.hash }).unwrap()).unwrap();
        store.flush().unwrap();
    }
    // The chain alone cannot tell.
    let (code, out, _) = opslet(&data, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit log intact: 2 records"), "{out}");
    assert!(out.contains("no anchor file set"), "{out}");
    // The anchor can.
    let (code, out, _) = opslet(&data, &["audit", "verify", "--anchor", anchors.to_str().unwrap()]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("3 records were anchored at") && out.contains("but the log has 2: records were removed from its end"), "{out}");
    // Anchoring again does not sign the cut chain over the anchor that shows it.
    let (code, _, err) = opslet(&data, &["audit", "anchor", "--to", anchors.to_str().unwrap()]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not anchoring over") && err.contains("records were removed from its end"), "{err}");
    // Nor does removing the anchor key help: a new key is not the anchors' key.
    let key = data.join("audit-anchor.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (code, out, _) = opslet(&data, &["audit", "verify", "--anchor", anchors.to_str().unwrap()]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("no audit-anchor.key"), "{out}");
    std::fs::write(&key, saved).unwrap();
    // An anchor line rewritten to match the cut does not verify.
    let text = std::fs::read_to_string(&anchors).unwrap();
    std::fs::write(&anchors, text.replace("\"count\":3", "\"count\":2")).unwrap();
    let (code, out, _) = opslet(&data, &["audit", "verify", "--anchor", anchors.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 7, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["anchor"]["matches"], false);
    assert!(v["anchor"]["why"].as_str().unwrap().contains("signature does not verify"), "{v}");
}

/// With `[audit] anchor_file`, the server anchors on its own: soon after a change that is not a
/// run, and `audit verify` compares against it by default, saying how old it is.
#[test]
fn the_server_anchors_the_audit_log_after_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let anchors = dir.path().join("anchors.jsonl");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("opslet.toml"), format!("[audit]\nanchor_file = \"{}\"\nanchor_every = \"1h\"\n", anchors.display())).unwrap();
    let (mut server, _) = common::serve::spawn(&data, &[]);
    let last_count = || {
        std::fs::read_to_string(&anchors)
            .ok()
            .and_then(|t| t.lines().last().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["count"].as_u64().unwrap()))
    };
    // Through the server's socket: an account change is anchored within seconds.
    assert_eq!(opslet(&data, &["user", "add", "ann", "--role", "viewer"]).0, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while last_count() != Some(1) {
        assert!(std::time::Instant::now() < deadline, "anchors: {:?}", std::fs::read_to_string(&anchors));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, out, _) = opslet(&data, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("matches the last anchor (1 records") && out.contains("ago"), "{out}");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A bundle's claims (publisher, message) are believed only when a key the registry trusts
/// signed them; an unsigned bundle is taken only when asked, and marked.
#[test]
fn bundles_are_signed_and_imports_trust_only_listed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let applet = dir.path().join("disk");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), "name = \"disk\"\nversion = \"1.0.0\"\ndescription = \"checks disks\"\n").unwrap();
    std::fs::write(applet.join("main.lua"), "return function() return true end").unwrap();
    let bundle = dir.path().join("disk.bundle");
    let b = bundle.to_str().unwrap();
    let key = dir.path().join("keys/alice.key");
    let (code, key_id, err) = opslet(&src, &["key", "new", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let key_id = key_id.trim().to_string();
    assert!(key_id.starts_with("ed25519:") && key_id.len() == 8 + 64, "{key_id}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Unsigned first: the attack of the finding, a bundle whose claims were rewritten.
    assert_eq!(opslet(&src, &["publish", applet.to_str().unwrap(), "-m", "first try", "--no-sign"]).0, 0);
    assert_eq!(opslet(&src, &["export", "disk", "-o", b]).0, 0);
    let forged = std::fs::read_to_string(&bundle)
        .unwrap()
        .replace("first try", "approved by security")
        .replace("\"publisher\": \"", "\"publisher\": \"security-team-");
    std::fs::write(&bundle, &forged).unwrap();
    let (code, _, err) = opslet(&dst, &["import", b]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("it is not signed") && err.contains("--allow-unsigned"), "{err}");
    let (code, out, err) = opslet(&dst, &["import", b, "--allow-unsigned"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("UNSIGNED"), "{out}");
    let (_, shown, _) = opslet(&dst, &["show", "disk"]);
    assert!(shown.contains("signed:     NO: imported unsigned"), "{shown}");

    // Signed: 2.0.0 with alice's key.
    std::fs::write(applet.join("applet.toml"), "name = \"disk\"\nversion = \"2.0.0\"\ndescription = \"checks disks\"\n").unwrap();
    let (code, _, err) = opslet(&src, &["publish", applet.to_str().unwrap(), "-m", "reviewed", "--sign-key", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(opslet(&src, &["export", "disk@2.0.0", "-o", b]).0, 0);
    let signed = std::fs::read_to_string(&bundle).unwrap();
    // A key the registry does not trust: refused, naming the key.
    let (code, _, err) = opslet(&dst, &["import", b]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("a key this registry does not trust") && err.contains(&key_id), "{err}");
    // Trusted: taken, and the publisher is the trust list's name, not the bundle's claim.
    assert_eq!(opslet(&dst, &["trust", "add", "security-team", &key_id]).0, 0);
    std::fs::write(&bundle, signed.replace(&format!("\"publisher\": \"{}\"", whoami()), "\"publisher\": \"mallory\"")).unwrap();
    let (code, out, err) = opslet(&dst, &["import", b]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed by security-team"), "{out}");
    let (_, shown, _) = opslet(&dst, &["show", "disk@2.0.0", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["version"]["publisher"], "security-team");
    assert_eq!(v["version"]["signed_by"], "security-team");
    // A signed bundle whose message was changed does not verify.
    std::fs::write(&bundle, signed.replace("reviewed", "approved")).unwrap();
    let (code, _, err) = opslet(&dir.path().join("third"), &["import", b, "--allow-unsigned"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("signature does not verify"), "{err}");
    // `opslet sign` signs a bundle made without a key.
    assert_eq!(opslet(&src, &["export", "disk@1.0.0", "-o", b]).0, 0);
    let (code, _, err) = opslet(&src, &["sign", b, "--key", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let third = dir.path().join("fourth");
    opslet(&third, &["trust", "add", "alice", &key_id]);
    let (code, out, err) = opslet(&third, &["import", b]);
    assert_eq!((code, out.contains("signed by alice")), (0, true), "{out}{err}");
    // Trust changes are audited.
    let (_, audit, _) = opslet(&dst, &["audit", "list", "--kind", "registry.trust", "--format", "json"]);
    assert!(audit.contains("security-team") && audit.contains(&key_id), "{audit}");
}

fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string()
}
