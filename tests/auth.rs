//! Accounts, tokens, roles and grants: tokens are shown once and stored hashed; every way a
//! token can be wrong is refused; the role matrix and grants decide what a caller may do.

use chrono::{Duration, Utc};
use opslet::auth::{Action, Auth, AuthError, Grant, Principal, Role};
use opslet::store::Store;
use opslet::store::audit::Filter;
use opslet::util::pattern_matches;

fn auth() -> (Store, Auth) {
    let store = Store::temporary().unwrap();
    (store.clone(), Auth::new(store).unwrap())
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn tokens_authenticate_and_only_their_hash_is_stored() {
    let (store, a) = auth();
    a.add_user("alice", Role::Operator, &["oncall".into()], "root").unwrap();
    let (token, rec) = a.create_token("alice", None, "laptop", "root").unwrap();
    assert!(token.starts_with(&format!("opslet_{}_", rec.id)));
    let p = a.authenticate(Some(&bearer(&token))).unwrap();
    assert_eq!((p.user.as_str(), p.role, p.groups.clone()), ("alice", Role::Operator, vec!["oncall".to_string()]));

    let secret = token.rsplit('_').next().unwrap();
    for tree in store.tree_names().unwrap() {
        for item in store.tree(&tree).iter() {
            let (k, v) = item.unwrap();
            assert!(
                !String::from_utf8_lossy(&v).contains(secret) && !String::from_utf8_lossy(&k).contains(secret),
                "token secret stored in {tree:?}"
            );
        }
    }
}

#[test]
fn every_bad_token_is_refused() {
    let (_, a) = auth();
    a.add_user("bob", Role::Viewer, &[], "root").unwrap();
    let (token, rec) = a.create_token("bob", None, "", "root").unwrap();
    let (id, secret) = (rec.id.clone(), token.rsplit('_').next().unwrap().to_string());
    let wrong_secret =
        format!("opslet_{id}_{}", if secret.starts_with('0') { secret.replacen('0', "1", 1) } else { format!("0{}", &secret[1..]) });
    let cases: Vec<(Option<String>, AuthError)> = vec![
        (None, AuthError::Missing),
        (Some("Basic Ym9iOnB3".into()), AuthError::Missing),
        (Some(bearer("not-a-token")), AuthError::Malformed),
        (Some(bearer(&format!("opslet_{id}"))), AuthError::Malformed),
        (Some(bearer(&format!("opslet_{id}_{}", &secret[..10]))), AuthError::Malformed),
        (Some(bearer(&format!("opslet_zzzzzzzz_{secret}"))), AuthError::Malformed),
        (Some(bearer(&format!("opslet_00000000_{secret}"))), AuthError::Unknown),
        (Some(bearer(&wrong_secret)), AuthError::Unknown),
    ];
    for (header, want) in cases {
        assert_eq!(a.authenticate(header.as_deref()).unwrap_err(), want, "{header:?}");
    }

    let (expiring, _) = a.create_token("bob", Some(Utc::now() - Duration::seconds(1)), "", "root").unwrap();
    assert!(matches!(a.authenticate(Some(&bearer(&expiring))), Err(AuthError::Expired(_))));
    a.revoke_token(&id, "root").unwrap();
    assert_eq!(a.authenticate(Some(&bearer(&token))).unwrap_err(), AuthError::Revoked);

    let (other, _) = a.create_token("bob", None, "", "root").unwrap();
    assert_eq!(a.remove_user("bob", "root").unwrap(), 2, "removing a user revokes their live tokens");
    assert_eq!(a.authenticate(Some(&bearer(&other))).unwrap_err(), AuthError::Revoked);
    assert!(a.create_token("bob", None, "", "root").is_err(), "no tokens for users that do not exist");
}

#[test]
fn role_matrix() {
    let p = |role| Principal { user: "u".into(), role, groups: vec![], token_id: "t".into() };
    let grants = [Grant { subject: "u".into(), pattern: "*".into() }];
    let actions = [
        Action::ReadRegistry,
        Action::ReadOwnJobs,
        Action::ReadAllJobs,
        Action::Run("x"),
        Action::Publish,
        Action::ReadAudit,
        Action::Admin,
    ];
    let expect: [(Role, [bool; 7]); 5] = [
        (Role::Viewer, [true, true, false, false, false, false, false]),
        (Role::Operator, [true, true, false, true, false, false, false]),
        (Role::Publisher, [true, true, false, false, true, false, false]),
        (Role::Auditor, [true, true, true, false, false, true, false]),
        (Role::Admin, [true; 7]),
    ];
    for (role, row) in expect {
        for (action, want) in actions.iter().zip(row) {
            assert_eq!(p(role).allows(action, &grants), want, "{role:?} {action:?}");
        }
    }
}

#[test]
fn grants_by_user_group_and_pattern() {
    let (_, a) = auth();
    a.add_grant("carol", "disk-*", "root").unwrap();
    a.add_grant("group:dba", "*-backup", "root").unwrap();
    let grants = a.grants().unwrap();
    let op = |user: &str, groups: &[&str]| Principal {
        user: user.into(),
        role: Role::Operator,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        token_id: "t".into(),
    };
    assert!(op("carol", &[]).allows(&Action::Run("disk-usage"), &grants));
    assert!(!op("carol", &[]).allows(&Action::Run("db-backup"), &grants));
    assert!(op("dave", &["dba"]).allows(&Action::Run("db-backup"), &grants));
    assert!(!op("dave", &["web"]).allows(&Action::Run("db-backup"), &grants));
    assert!(!op("dave", &["dba"]).allows(&Action::Run("disk-usage"), &grants));
    for (pattern, name, want) in [
        ("*", "x", true),
        ("a*c", "abc", true),
        ("a*c", "ac", true),
        ("a*c", "a", false),
        ("a*b*c", "axbyc", true),
        ("a*b*c", "acb", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(pattern_matches(pattern, name), want, "{pattern} vs {name}");
    }
    assert!(a.add_grant("carol", "../x", "root").is_err());
    assert!(a.add_grant("Bad Name", "x", "root").is_err());
    a.remove_grant("carol", "disk-*", "root").unwrap();
    assert!(a.remove_grant("carol", "disk-*", "root").is_err());
}

#[test]
fn account_changes_are_audited_without_secrets() {
    let (store, a) = auth();
    a.add_user("erin", Role::Admin, &[], "root").unwrap();
    let (token, rec) = a.create_token("erin", None, "ci", "root").unwrap();
    a.revoke_token(&rec.id, "root").unwrap();
    let recs = store.audit().list(&Filter::default()).unwrap();
    let kinds: Vec<&str> = recs.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["auth.user.add", "auth.token.create", "auth.token.revoke"]);
    assert!(!serde_json::to_string(&recs).unwrap().contains(token.rsplit('_').next().unwrap()));
    assert!(a.add_user("erin", Role::Viewer, &[], "root").is_err(), "duplicate users are refused");
}

#[test]
fn cli_prints_the_token_alone_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let opslet = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", dir.path()).output().unwrap()
    };
    assert!(opslet(&["user", "add", "ops", "--role", "operator", "--group", "oncall"]).status.success());
    let o = opslet(&["token", "create", "ops", "--expires", "30d", "--label", "zabbix"]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "stdout holds only the token: {out:?}");
    assert!(lines[0].starts_with("opslet_") && lines[0].len() == 7 + 8 + 1 + 64);
    let store = Store::open(dir.path(), std::time::Duration::from_secs(5)).unwrap();
    let p = Auth::new(store).unwrap().authenticate(Some(&format!("Bearer {}", lines[0]))).unwrap();
    assert_eq!(p.user, "ops");
    drop(p);
    let o = opslet(&["token", "list", "--format", "json"]);
    let listed = String::from_utf8(o.stdout).unwrap();
    assert!(listed.contains("\"state\": \"active\"") && !listed.contains(&lines[0][16..]), "{listed}");
    let o = opslet(&["user", "add", "x", "--role", "root"]);
    assert_eq!(o.status.code(), Some(2), "unknown roles are usage errors");
}
