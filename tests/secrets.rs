//! Secrets: encrypted at rest, bound to their names, key file private, values never shown and
//! redacted from applet output.

use std::io::Write;
use std::process::{Command, Stdio};

use opslet::secrets::Secrets;
use opslet::store::Store;

#[test]
fn values_are_encrypted_at_rest_and_bound_to_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
    let s = Secrets::open(store.clone()).unwrap();
    s.set("db-password", b"hunter2-very-secret", "alice").unwrap();
    assert_eq!(s.get("db-password").unwrap().unwrap(), b"hunter2-very-secret");
    assert_eq!(s.list().unwrap()[0].name, "db-password");
    for tree in store.tree_names().unwrap() {
        for (k, v) in store.tree(&tree).iter().flatten() {
            assert!(
                !String::from_utf8_lossy(&v).contains("hunter2") && !String::from_utf8_lossy(&k).contains("hunter2"),
                "plaintext in {tree:?}"
            );
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("secret.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A ciphertext moved to another name does not decrypt.
    let tree = store.tree("secrets");
    tree.insert("other", tree.get("db-password").unwrap().unwrap()).unwrap();
    let e = s.get("other").unwrap_err().to_string();
    assert!(e.contains("cannot be decrypted"), "{e}");

    assert!(s.set("Bad Name", b"x", "a").is_err());
    assert!(s.set("empty", b"", "a").is_err());
    s.remove("db-password", "alice").unwrap();
    assert!(s.remove("db-password", "alice").is_err());
    let kinds: Vec<String> = store.audit().list(&Default::default()).unwrap().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["secret.set", "secret.rm"]);
}

#[test]
fn the_wrong_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
    Secrets::open(store.clone()).unwrap().set("token", b"abcdef123456", "a").unwrap();
    std::fs::write(dir.path().join("secret.key"), "00".repeat(32)).unwrap();
    let e = Secrets::open(store.clone()).unwrap().get("token").unwrap_err().to_string();
    assert!(e.contains("wrong key"), "{e}");
    std::fs::write(dir.path().join("secret.key"), "not hex").unwrap();
    assert!(Secrets::open(store).err().unwrap().to_string().contains("64 hex digits"));
}

#[test]
fn cli_stores_from_stdin_lists_names_only_and_runs_redact_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opslet = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.env("OPSLET_DATA_DIR", &data).env_remove(opslet::secrets::KEY_ENV);
        c
    };
    let mut child = opslet().args(["secret", "set", "api-token"]).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"tok-7f3a9c2e81\n").unwrap();
    assert!(child.wait().unwrap().success());
    let list = opslet().args(["secret", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.starts_with("api-token\t") && !list.contains("tok-7f3a9c2e81"), "{list}");

    // An applet that comes across a secret value (say, in command output) never shows it.
    let applet = dir.path().join("leaky");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), "name = \"leaky\"\nversion = \"1.0.0\"\n").unwrap();
    std::fs::write(
        applet.join("main.lua"),
        "return function() log.info('got tok-7f3a9c2e81 from the host') return { seen = 'tok-7f3a9c2e81' } end",
    )
    .unwrap();
    let o = opslet().args(["run", applet.to_str().unwrap(), "--format", "json"]).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(!out.contains("tok-7f3a9c2e81") && !err.contains("tok-7f3a9c2e81"), "{out}\n{err}");
    assert!(out.contains("<redacted>") && err.contains("got <redacted> from the host"), "{out}\n{err}");
    let audit = opslet().args(["audit", "list", "--format", "json"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&audit.stdout).contains("tok-7f3a9c2e81"));
}
