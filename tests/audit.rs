//! Tamper tests for the hash-chained audit log: every kind of edit is found and named.

mod common;

use common::*;
use opslet::store::Store;
use opslet::store::audit::{AuditEvent, AuditLog, AuditRecord, Filter, record_key};
use serde_json::json;

fn log_with(n: u64) -> Store {
    let store = Store::temporary().unwrap();
    for i in 0..n {
        store
            .audit()
            .append(AuditEvent {
                kind: "test".into(),
                actor: Some("alice".into()),
                status: Some("ok".into()),
                data: json!({ "i": i }),
                ..AuditEvent::default()
            })
            .unwrap();
    }
    store
}

fn raw(audit: &AuditLog, seq: u64) -> AuditRecord {
    serde_json::from_slice(&audit.raw_tree().get(record_key(seq)).unwrap().unwrap()).unwrap()
}

fn put(audit: &AuditLog, key: u64, rec: &AuditRecord) {
    audit.raw_tree().insert(record_key(key), serde_json::to_vec(rec).unwrap()).unwrap();
}

fn first_bad(audit: &AuditLog) -> (u64, String) {
    audit.verify().unwrap().first_bad.expect("tampering must be detected")
}

#[test]
fn intact_chain_verifies() {
    let store = log_with(5);
    let r = store.audit().verify().unwrap();
    assert_eq!(r.records, 5);
    assert!(r.first_bad.is_none());
    assert_eq!(r.head.count, 5);
}

#[test]
fn edited_record_is_named() {
    let store = log_with(6);
    let a = store.audit();
    let mut rec = raw(a, 3);
    rec.actor = Some("mallory".into());
    put(a, 3, &rec);
    let (seq, why) = first_bad(a);
    assert_eq!(seq, 3);
    assert!(why.contains("edited"), "{why}");
}

#[test]
fn edited_record_with_recomputed_hash_breaks_the_next_link() {
    let store = log_with(6);
    let a = store.audit();
    let mut rec = raw(a, 2);
    rec.data = json!({ "i": 999 });
    // An attacker recomputes this record's hash; the next record's `prev` no longer matches.
    rec.hash = String::new();
    let body = serde_json::to_vec(&rec).unwrap();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(rec.prev.as_bytes());
    h.update(&body);
    rec.hash = hex::encode(h.finalize());
    put(a, 2, &rec);
    let (seq, why) = first_bad(a);
    assert_eq!(seq, 3);
    assert!(why.contains("prev"), "{why}");
}

#[test]
fn removed_record_is_named() {
    let store = log_with(6);
    let a = store.audit();
    a.raw_tree().remove(record_key(2)).unwrap();
    let (seq, why) = first_bad(a);
    assert_eq!(seq, 2);
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn reordered_records_are_found() {
    let store = log_with(6);
    let a = store.audit();
    let (r1, r4) = (raw(a, 1), raw(a, 4));
    put(a, 1, &r4);
    put(a, 4, &r1);
    let (seq, why) = first_bad(a);
    assert_eq!(seq, 1);
    assert!(why.contains("reordered") || why.contains("moved"), "{why}");
}

#[test]
fn truncated_tail_is_found() {
    let store = log_with(6);
    let a = store.audit();
    a.raw_tree().remove(record_key(5)).unwrap();
    let (seq, why) = first_bad(a);
    assert_eq!(seq, 5);
    assert!(why.contains("removed from the end"), "{why}");
}

#[test]
fn garbage_record_is_named() {
    let store = log_with(3);
    let a = store.audit();
    a.raw_tree().insert(record_key(1), b"not json").unwrap();
    let (seq, why) = first_bad(a);
    assert_eq!(seq, 1);
    assert!(why.contains("not valid JSON"), "{why}");
}

#[test]
fn runs_record_start_and_end_with_hash_digest_and_redacted_secrets() {
    let rt = runtime(TIGHT);
    let manifest = format!("{MANIFEST}[params.token]\ntype = \"string\"\nsecret = true\n[params.host]\ntype = \"string\"\n");
    let pkg = package_with(&manifest, "return function(p) log.info('using', p.token) return { echoed = p.token, host = p.host } end", &[]);
    let mut r = req(pkg.clone());
    r.params_pairs = vec![("token".into(), "s3cr3t-value".into()), ("host".into(), "db1".into())];
    let o = run_req(&rt, r);
    let result = o.result.as_ref().unwrap();
    assert_eq!(result["echoed"], json!("<redacted>"), "secret params never come back in results");
    assert_eq!(o.logs[0].message, "using <redacted>");

    let recs = rt.store().unwrap().audit().list(&Filter { run_id: Some(o.run_id.clone()), ..Filter::default() }).unwrap();
    assert_eq!(recs.len(), 2);
    let (start, end) = (&recs[0], &recs[1]);
    assert_eq!(start.kind, "run.start");
    assert_eq!(start.actor.as_deref(), Some("tester"));
    assert_eq!(start.applet.as_deref(), Some("t@1.0.0"));
    assert_eq!(start.data["hash"], json!(pkg.hash));
    assert_eq!(start.data["params"], json!({ "token": "<redacted>", "host": "db1" }));
    assert_eq!(end.kind, "run.end");
    assert_eq!(end.status.as_deref(), Some("ok"));
    assert_eq!(end.data["result_sha256"].as_str().unwrap().len(), 64);
    let dump = serde_json::to_string(&recs).unwrap();
    assert!(!dump.contains("s3cr3t-value"), "secret leaked into the audit log: {dump}");
}

#[test]
fn failed_and_limited_runs_are_recorded_with_their_error() {
    let rt = runtime(TIGHT);
    let o = run(&rt, package("return function() error('disk full on /var') end"));
    let o2 = run(&rt, package("return function() while true do end end"));
    let audit = rt.store().unwrap().audit();
    let end = audit.list(&Filter { run_id: Some(o.run_id), kind: Some("run.end".into()), ..Filter::default() }).unwrap();
    assert_eq!(end[0].status.as_deref(), Some("error"));
    assert!(end[0].data["error"].as_str().unwrap().contains("main.lua:1: disk full on /var"));
    let end2 = audit.list(&Filter { run_id: Some(o2.run_id), kind: Some("run.end".into()), ..Filter::default() }).unwrap();
    assert_eq!(end2[0].status.as_deref(), Some("limit_exceeded"));
    assert_eq!(end2[0].data["limit"], json!("cpu"));
}

#[test]
fn open_runs_are_closed_as_interrupted() {
    let store = Store::temporary().unwrap();
    let a = store.audit();
    a.append(AuditEvent {
        kind: "run.start".into(),
        run_id: Some("r-1".into()),
        actor: Some("bob".into()),
        applet: Some("x@1.0.0".into()),
        ..AuditEvent::default()
    })
    .unwrap();
    assert_eq!(a.open_runs().unwrap().len(), 1);
    assert_eq!(a.close_interrupted().unwrap(), 1);
    assert!(a.open_runs().unwrap().is_empty());
    let end = a.list(&Filter { run_id: Some("r-1".into()), kind: Some("run.end".into()), ..Filter::default() }).unwrap();
    assert_eq!(end[0].status.as_deref(), Some("interrupted"));
    assert_eq!(end[0].actor.as_deref(), Some("bob"));
    assert!(a.verify().unwrap().first_bad.is_none());
}

#[test]
fn filters_select_records() {
    let store = log_with(0);
    let a = store.audit();
    for (actor, applet, status) in [("alice", "a@1.0.0", "ok"), ("bob", "b@2.0.0", "error"), ("alice", "b@2.0.0", "ok")] {
        a.append(AuditEvent {
            kind: "run.end".into(),
            actor: Some(actor.into()),
            applet: Some(applet.into()),
            status: Some(status.into()),
            ..AuditEvent::default()
        })
        .unwrap();
    }
    let n = |f: Filter| a.list(&f).unwrap().len();
    assert_eq!(n(Filter { actor: Some("alice".into()), ..Filter::default() }), 2);
    assert_eq!(n(Filter { applet: Some("b".into()), ..Filter::default() }), 2);
    assert_eq!(n(Filter { applet: Some("b@2.0.0".into()), status: Some("ok".into()), ..Filter::default() }), 1);
    assert_eq!(n(Filter { limit: Some(1), ..Filter::default() }), 1);
    assert_eq!(n(Filter { since: Some(chrono::Utc::now() + chrono::Duration::hours(1)), ..Filter::default() }), 0);
}

#[test]
fn a_store_of_another_layout_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
        store.tree("meta").insert("format", 99u32.to_be_bytes()).unwrap();
        store.flush().unwrap();
    }
    let err = Store::open(dir.path(), std::time::Duration::from_secs(1)).err().expect("must refuse").to_string();
    assert!(err.contains("layout version 99") && err.contains("reads version 1"), "{err}");
}

#[test]
fn open_runs_survive_reopen_across_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
        let a = store.audit();
        a.append(AuditEvent { kind: "test".into(), ..AuditEvent::default() }).unwrap();
        a.append(AuditEvent { kind: "run.start".into(), run_id: Some("long-one".into()), ..AuditEvent::default() }).unwrap();
        // Enough short runs to pass several checkpoints; the long one stays open throughout.
        for i in 0..300 {
            let id = format!("short-{i}");
            a.append(AuditEvent { kind: "run.start".into(), run_id: Some(id.clone()), ..AuditEvent::default() }).unwrap();
            a.append(AuditEvent { kind: "run.end".into(), run_id: Some(id), status: Some("ok".into()), ..AuditEvent::default() }).unwrap();
        }
        a.append(AuditEvent { kind: "run.start".into(), run_id: Some("last".into()), ..AuditEvent::default() }).unwrap();
    }
    let store = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
    let open: Vec<String> = store.audit().open_runs().unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(open, ["last", "long-one"]);
    assert_eq!(store.audit().close_interrupted().unwrap(), 2);
    assert!(store.audit().open_runs().unwrap().is_empty());
    assert!(store.audit().verify().unwrap().first_bad.is_none());
}

#[test]
fn invalid_secret_values_and_numeric_secrets_never_leak() {
    let rt = runtime(TIGHT);
    let manifest = format!(
        "{MANIFEST}[params.pin]\ntype = \"integer\"\nsecret = true\n[params.mode]\ntype = \"enum\"\nvalues = [\"a\", \"b\"]\nsecret = true\n"
    );
    let pkg = package_with(&manifest, "return function(p) log.info('pin is', p.pin) return { pin = p.pin } end", &[]);

    let mut r = req(pkg.clone());
    r.params_json = Some(json!({ "mode": "hunter2-typo" }).as_object().unwrap().clone());
    r.params_pairs = vec![("pin".into(), "hunter2pin".into())];
    let o = run_req(&rt, r);
    let err = err_text(&o);
    assert!(!err.contains("hunter2"), "secret value echoed in the error: {err}");
    assert!(err.contains("param `pin`") && err.contains("secret param"), "{err}");

    let mut r = req(pkg);
    r.params_pairs = vec![("pin".into(), "987654".into()), ("mode".into(), "a".into())];
    let o = run_req(&rt, r);
    assert_eq!(o.logs[0].message, "pin is <redacted>");
    assert_eq!(o.result.as_ref().unwrap()["pin"], json!("<redacted>"));

    let dump = serde_json::to_string(&rt.store().unwrap().audit().list(&Filter::default()).unwrap()).unwrap();
    assert!(!dump.contains("hunter2") && !dump.contains("987654"), "secret in the audit log: {dump}");
}

#[test]
fn a_head_left_behind_by_a_crash_is_moved_forward_over_good_records() {
    let store = log_with(3);
    let a = store.audit();
    a.checkpoint().unwrap();
    let stale = a.raw_tree().get("h").unwrap().unwrap();
    for i in 0..4 {
        a.append(AuditEvent { kind: "later".into(), data: json!({ "i": i }), ..AuditEvent::default() }).unwrap();
    }
    // The process died before writing the head again: only the records reached the tree.
    a.raw_tree().insert("h", stale.clone()).unwrap();
    let reopened = AuditLog::open(store.tree("audit")).unwrap();
    assert_eq!(reopened.head().unwrap().count, 7);
    assert!(reopened.verify().unwrap().first_bad.is_none());

    // A record that does not chain stops the walk, and verify names it.
    let mut rec = raw(a, 5);
    rec.actor = Some("mallory".into());
    put(a, 5, &rec);
    a.raw_tree().insert("h", stale).unwrap();
    let reopened = AuditLog::open(store.tree("audit")).unwrap();
    // The head still follows the newest record, so the next append cannot overwrite the
    // evidence (records 5 and 6); the walk stops at the edit, and verify names it.
    assert_eq!(reopened.head().unwrap().count, 7);
    let (seq, _) = reopened.verify().unwrap().first_bad.expect("the edit is found");
    assert_eq!(seq, 5);
}

#[test]
fn secrets_are_redacted_across_the_log_cut_and_in_every_numeric_form() {
    let rt = runtime("[audit]\nsync = false\n");
    let manifest = format!(
        "{MANIFEST}[params.token]\ntype = \"string\"\nsecret = true\n[params.num]\ntype = \"number\"\nsecret = true\n[params.flag]\ntype = \"boolean\"\nsecret = true\n"
    );
    let main = "return function(p)
        log.info(string.rep('x', 64 * 1024 - 5) .. p.token)
        log.info('num', p.num, 'flag', p.flag, 'true stays true')
        return p.num
    end";
    let mut r = req(package_with(&manifest, main, &[]));
    r.params_json = Some(json!({ "token": "ABCDEFGHIJ", "num": 1000.0, "flag": true }).as_object().unwrap().clone());
    let o = run_req(&rt, r);
    assert!(!o.logs[0].message.contains("ABCDE"), "part of a secret crossing the cut leaked");
    assert_eq!(o.logs[1].message, "num <redacted> flag true true stays true");
    assert_eq!(o.result.unwrap(), json!("<redacted>"));
}

#[test]
fn concurrent_flushes_share_the_work_and_all_return() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    store.audit().append(AuditEvent { kind: format!("t{t}-{i}"), ..AuditEvent::default() }).unwrap();
                    store.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.audit().head().unwrap().count, 160);
    drop(store);
    let reopened = Store::open(dir.path(), std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(reopened.audit().verify().unwrap().records, 160);
}

#[test]
fn a_large_param_is_kept_in_the_audit_log_as_its_digest() {
    let rt = runtime(TIGHT);
    let manifest = format!("{MANIFEST}[params.text]\ntype = \"string\"\n[params.mode]\ntype = \"string\"\n");
    let pkg = package_with(&manifest, "return function(p) return #p.text end", &[]);
    let big = "x".repeat(1024 * 1024);
    let mut r = req(pkg);
    r.params_pairs = vec![("text".into(), big.clone()), ("mode".into(), "summary".into())];
    let o = run_req(&rt, r);
    assert_eq!(o.result.as_ref().unwrap(), &json!(1024 * 1024), "the run gets the whole value");
    let recs = rt.store().unwrap().audit().list(&Filter { run_id: Some(o.run_id.clone()), ..Filter::default() }).unwrap();
    let start = &recs[0];
    // Small values whole; the large one as the SHA-256 of its JSON, which proves what ran.
    use sha2::Digest;
    let json = serde_json::to_vec(&json!(big)).unwrap();
    assert_eq!(start.data["params"]["mode"], json!("summary"));
    assert_eq!(start.data["params"]["text"], json!({ "sha256": hex::encode(sha2::Sha256::digest(&json)), "bytes": json.len() }));
    assert!(serde_json::to_vec(&start.data).unwrap().len() < 8 * 1024, "the record stays small");
    // A value at the limit is kept whole.
    let at_limit = "y".repeat(opslet::applet::params::AUDIT_VALUE_BYTES - 2);
    let mut r = req(package_with(&manifest, "return function(p) return #p.text end", &[]));
    r.params_pairs = vec![("text".into(), at_limit.clone()), ("mode".into(), "m".into())];
    let o = run_req(&rt, r);
    let recs = rt.store().unwrap().audit().list(&Filter { run_id: Some(o.run_id.clone()), ..Filter::default() }).unwrap();
    assert_eq!(recs[0].data["params"]["text"], json!(at_limit));
}
