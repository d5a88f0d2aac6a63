//! The data store at its edges: a data dir written by an older opslet (sled) migrates without
//! loss, and a damaged page costs the records on it and no more (`opslet store check` names
//! them, `opslet store repair` keeps everything else and the audit log says what is gone).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use opslet::applet::AppletPackage;
use opslet::registry::Registry;
use opslet::store::Store;
use opslet::store::audit::AuditEvent;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

fn opslet(data: &Path, args: &[&str]) -> (i32, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Every record of every tree.
fn contents(store: &Store) -> BTreeMap<String, Vec<opslet::store::Entry>> {
    store.tree_names().unwrap().into_iter().map(|t| (t.clone(), store.tree(&t).iter().map(Result::unwrap).collect())).collect()
}

fn package() -> AppletPackage {
    let mut files = BTreeMap::new();
    files.insert("applet.toml".to_string(), b"name = \"disk-report\"\nversion = \"1.2.0\"\n".to_vec());
    files.insert("main.lua".to_string(), b"return function() return 1 end".to_vec());
    AppletPackage::from_files(files).unwrap()
}

fn append(store: &Store, i: u64, marker: &str) {
    store
        .audit()
        .append(AuditEvent {
            kind: "test".into(),
            actor: Some("alice".into()),
            data: json!({ "i": i, "m": marker }),
            ..AuditEvent::default()
        })
        .unwrap();
}

#[test]
fn a_sled_data_dir_is_migrated_without_loss() {
    // The content: a published applet, kv values, audit records; written through opslet.
    let original = tempfile::tempdir().unwrap();
    let before = {
        let store = Store::open(original.path(), WAIT).unwrap();
        Registry::new(store.clone()).unwrap().publish(&package(), "alice", "first", false).unwrap();
        for i in 0..300u32 {
            store.kv_tree("disk-report").insert(format!("host-{i:03}"), i.to_be_bytes()).unwrap();
            append(&store, u64::from(i), "old");
        }
        store.flush().unwrap();
        contents(&store)
    };
    assert!(before.contains_key("audit") && before.contains_key("reg/packages") && before.contains_key("kv/disk-report"));

    // The same records in the layout an older opslet kept: sled, under DATA_DIR/db.
    let data = tempfile::tempdir().unwrap();
    {
        let db = sled::open(data.path().join("db")).unwrap();
        for (tree, records) in &before {
            let t = db.open_tree(tree).unwrap();
            for (k, v) in records {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        db.flush().unwrap();
    }
    // A migration that died part way left its file behind; it is started over.
    std::fs::write(data.path().join("store.sqlite.migrating"), b"half a file").unwrap();

    let store = Store::open(data.path(), WAIT).unwrap();
    let mut after = contents(&store);
    // The migration itself is one more audit record, naming what it copied.
    let last = store.audit().list(&opslet::store::audit::Filter { kind: Some("store.migrate".into()), ..Default::default() }).unwrap();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(last[0].data["records"]["audit"], json!(before["audit"].len()));
    assert_eq!(last[0].data["records"]["kv/disk-report"], json!(300));
    let audit_after = after.get_mut("audit").unwrap();
    audit_after.retain(|(k, _)| before["audit"].iter().any(|(bk, _)| bk == k) || k[0] != b'r');
    for (tree, records) in &before {
        if tree == "audit" {
            // Head and checkpoint move with the new record; every old record is unchanged.
            let old: Vec<_> = records.iter().filter(|(k, _)| k[0] == b'r').collect();
            let new: Vec<_> = after["audit"].iter().filter(|(k, _)| k[0] == b'r').collect();
            assert_eq!(old, new);
        } else {
            assert_eq!(&after[tree], records, "tree {tree}");
        }
    }
    assert!(store.audit().verify().unwrap().first_bad.is_none());
    let reg = Registry::new(store.clone()).unwrap();
    let meta = reg.resolve(&opslet::registry::Reference::parse("disk-report@1.2.0").unwrap(), false).unwrap();
    assert_eq!(reg.package(&meta).unwrap().hash, package().hash);
    assert!(data.path().join("db.sled-migrated").join("conf").exists());
    assert!(!data.path().join("db").exists() && !data.path().join("store.sqlite.migrating").exists());
    drop(reg);
    drop(store);

    // Opened again: nothing to migrate, nothing copied twice.
    let store = Store::open(data.path(), WAIT).unwrap();
    let n = store.audit().list(&opslet::store::audit::Filter { kind: Some("store.migrate".into()), ..Default::default() }).unwrap().len();
    assert_eq!(n, 1);
}

/// The byte offset of `needle` in the file.
fn find(file: &[u8], needle: &str) -> usize {
    file.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap_or_else(|| panic!("{needle} not in the file"))
}

fn page_size(file: &[u8]) -> usize {
    match u16::from_be_bytes([file[16], file[17]]) {
        1 => 65536,
        n => usize::from(n),
    }
}

#[test]
fn a_damaged_page_costs_only_its_records_and_repair_names_them() {
    let data = tempfile::tempdir().unwrap();
    {
        let store = Store::open(data.path(), WAIT).unwrap();
        for i in 0..3000u64 {
            append(&store, i, &format!("MARK{i:05}X"));
        }
        let jobs = store.tree("jobs");
        for i in 0..500u32 {
            jobs.insert(format!("job-{i:04}"), format!("{{\"n\":\"JOB{i:04}Y\"}}")).unwrap();
        }
        store.flush().unwrap();
    }
    let path = data.path().join("store.sqlite");
    let mut file = std::fs::read(&path).unwrap();
    let page = page_size(&file);

    // One flipped byte inside a value: that one record is damaged, named, and nothing else.
    let at = find(&file, "JOB0123Y");
    file[at + 3] ^= 0x01;
    // One broken page header in the middle of the audit records: the records on that page
    // cannot be read at all.
    let hit = find(&file, "MARK01500X");
    let page_start = hit / page * page;
    let on_page: Vec<u64> = (0..3000u64)
        .filter(|i| {
            let m = format!("MARK{i:05}X");
            file[page_start..page_start + page].windows(m.len()).any(|w| w == m.as_bytes())
        })
        .collect();
    assert!(!on_page.is_empty() && on_page.len() < 50, "{} records on the page", on_page.len());
    file[page_start] = 0x6b; // not a b-tree page type
    std::fs::write(&path, &file).unwrap();

    let (code, out) = opslet(data.path(), &["store", "check"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("damaged: `job-0123` in `jobs`"), "{out}");
    assert!(out.contains("store DAMAGED"), "{out}");
    let (code, json_out) = opslet(data.path(), &["store", "check", "--format", "json"]);
    assert_eq!(code, 8, "{json_out}");
    let report: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(report["sound"], json!(false));
    let unreadable: Vec<String> = report["unreadable"].as_array().unwrap().iter().map(|l| l["key"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = on_page.iter().map(|i| format!("0x72{}", hex::encode(i.to_be_bytes()))).collect();
    assert_eq!(unreadable, expected, "the key index names exactly the records on the page");

    let (code, out) = opslet(data.path(), &["store", "repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("lost {}", on_page.len() + 1)), "{out}");
    assert!(out.contains("lost `job-0123` in `jobs`"), "{out}");

    let store = Store::open(data.path(), WAIT).unwrap();
    let jobs = store.tree("jobs");
    assert_eq!(jobs.len().unwrap(), 499);
    assert_eq!(jobs.get("job-0122").unwrap().unwrap(), b"{\"n\":\"JOB0122Y\"}");
    for i in 0..3000u64 {
        let rec = store.audit().get(i).unwrap();
        assert_eq!(rec.is_none(), on_page.contains(&i), "record {i}");
    }
    // The repair record names every lost record, and the chain is checked on both sides of the
    // gap: verify reports the loss, not a break.
    let report = store.audit().verify().unwrap();
    assert_eq!(report.first_bad, None);
    assert_eq!(report.lost, on_page);
    let repair = store.audit().list(&opslet::store::audit::Filter { kind: Some("store.repair".into()), ..Default::default() }).unwrap();
    assert_eq!(repair[0].data["lost_audit_records"], json!(on_page));
    assert_eq!(repair[0].actor.as_deref(), Some("opslet"));
    // New records continue after the newest one; none reuses a lost record's number.
    let before = store.audit().head().unwrap().count;
    append(&store, 9999, "after");
    assert_eq!(store.audit().head().unwrap().count, before + 1);
    drop((jobs, store));
    let kept: Vec<_> = std::fs::read_dir(data.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(kept.iter().any(|f| f.starts_with("store.sqlite.damaged-")), "{kept:?}");
    let (code, out) = opslet(data.path(), &["store", "check"]);
    assert!(!out.contains("damaged:") && !out.contains("unreadable:") && !out.contains("structure:"), "{out}");
    assert!(out.contains(&format!("{} records lost in a store repair", on_page.len())) && out.contains("store sound"), "{out}");
    assert_eq!(code, 0, "{out}");

    // A gap no repair accounts for is still a break.
    let store = Store::open(data.path(), WAIT).unwrap();
    store.audit().raw_tree().remove(opslet::store::audit::record_key(2000)).unwrap();
    let (seq, why) = store.audit().verify().unwrap().first_bad.unwrap();
    assert_eq!((seq, why.as_str()), (2000, "record 2000 is missing"));
}

#[test]
fn the_store_files_are_for_their_owner_only_even_in_an_open_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(data.path(), WAIT).unwrap();
    append(&store, 1, "x");
    for file in ["store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "store.lock"] {
        let mode = std::fs::metadata(data.path().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}
