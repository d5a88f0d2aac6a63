//! The CLI through a server: while `opslet serve` holds the data dir, every command goes to it
//! over the data dir's local socket, and with `--server URL` over its HTTP API from anywhere;
//! either way it gives the same output and exit code as without a server, a run streams its
//! logs and Ctrl-C cancels it. Only the data dir's owner gets in on the socket; over HTTP each
//! command needs the token's role and grants, and paths stay the caller's.

mod common;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use regex::Regex;

/// Runs `opslet ARGS` in `cwd` on `data` with `stdin`; returns (exit code, stdout, stderr).
fn opslet(cwd: &Path, data: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    opslet_with(cwd, data, args, stdin, &[])
}

/// Likewise with more environment (`OPSLET_SERVER`, `OPSLET_TOKEN`).
fn opslet_with(cwd: &Path, data: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(args)
        .current_dir(cwd)
        .env("OPSLET_DATA_DIR", data)
        .env_remove("OPSLET_CONFIG")
        .env_remove("OPSLET_SERVER")
        .env_remove("OPSLET_TOKEN")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What differs between two data dirs by nature: ids, times, tokens, durations.
fn normalize(s: &str) -> String {
    let rules = [
        (r"/tmp/\.tmp\w+", "<tmp>"),
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>"),
        (r"opslet_[0-9a-f]{8}_[0-9a-f]{64}", "<token>"),
        (r"\b[0-9a-f]{64}\b", "<sha256>"),
        (r"\b[0-9a-f]{8}\b", "<id>"),
        (r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z?", "<time>"),
        (r#""(duration_ms|cpu_ms|pid)": \d+"#, "\"$1\": <n>"),
    ];
    let mut s = s.to_string();
    for (re, to) in rules {
        s = Regex::new(re).unwrap().replace_all(&s, to).into_owned();
    }
    // Tables size their columns to what they hold.
    s.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n")
}

/// The audit log of `data`, read without a server or through one.
fn audit_records(cwd: &Path, data: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = opslet(cwd, data, &["audit", "list", "--format", "json"], None);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

/// The server's jobs, as `token`'s user sees them.
fn jobs(base: &str, token: &str) -> Vec<serde_json::Value> {
    opslet::install_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let jobs: serde_json::Value = rt.block_on(async {
        reqwest::Client::new().get(format!("{base}/api/v1/jobs")).bearer_auth(token).send().await.unwrap().json().await.unwrap()
    });
    jobs.as_array().or(jobs["jobs"].as_array()).cloned().unwrap_or_default()
}

fn applet(dir: &Path, name: &str, main: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(
        dir.join(name).join("applet.toml"),
        format!("name = \"{name}\"\nversion = \"1.0.0\"\n[params.n]\ntype = \"integer\"\ndefault = 1\n"),
    )
    .unwrap();
    std::fs::write(dir.join(name).join("main.lua"), main).unwrap();
}

/// The day's work of an operator, in order, using every command that opens the data dir;
/// relative paths are the caller's.
const SESSION: &[(&[&str], Option<&str>)] = &[
    (&["publish", "hello", "-m", "first"], None),
    (&["list"], None),
    (&["versions", "hello"], None),
    (&["show", "hello"], None),
    (&["run", "hello", "--format", "json", "-p", "n=41"], None),
    (&["run", "./hello", "--format", "yaml"], None),
    (&["run", "hello", "-p", "n=oops"], None),
    (&["run", "failing"], None),
    (&["run", "nosuch"], None),
    (&["user", "add", "alice", "--role", "admin"], None),
    (&["user", "passwd", "alice"], Some("correct horse battery\n")),
    (&["user", "passwd", "alice"], Some("short\n")),
    (&["user", "list"], None),
    (&["user", "add", "bob", "--role", "viewer"], None),
    (&["user", "set", "bob", "--role", "operator", "--group", "night", "--group", "web"], None),
    (&["user", "set", "bob", "--no-groups"], None),
    (&["user", "set", "bob"], None),
    (&["user", "set", "bob", "--role", "root"], None),
    (&["user", "list", "--format", "json"], None),
    (&["user", "rm", "bob"], None),
    (&["token", "create", "alice"], None),
    (&["secret", "set", "db-password"], Some("s3cret-value\n")),
    (&["secret", "list"], None),
    (&["cmdb", "host", "add", "web01", "--address", "10.0.0.1"], None),
    (&["cmdb", "host", "list", "--format", "json"], None),
    (&["export", "hello", "-o", "hello.bundle"], None),
    (&["import", "hello.bundle", "--allow-unsigned"], None),
    (&["trust", "list"], None),
    (&["yank", "hello@1.0.0"], None),
    (&["run", "hello@1.0.0"], None),
    (&["audit", "verify"], None),
    (&["search", "hello"], None),
    (&["yank", "hello@1.0.0", "--undo"], None),
    (&["promote", "hello@1.0.0"], None),
    (&["rollback", "hello"], None),
    (&["feature", "add", "daily", "hello"], None),
    (&["feature", "list", "--format", "json"], None),
    (&["feature", "rm", "daily", "hello"], None),
    (&["token", "list", "--format", "json"], None),
    (&["token", "revoke", "00000000"], None),
    (&["grant", "add", "alice", "hello*"], None),
    (&["grant", "list"], None),
    (&["grant", "rm", "alice", "hello*"], None),
    (&["hook", "add", "nightly", "--applet", "hello"], None),
    (&["hook", "list", "--format", "json"], None),
    (&["hook", "rm", "nightly"], None),
    (&["schedule", "list", "--format", "json"], None),
    (&["schedule", "rm", "nope"], None),
    (&["notify", "list", "--format", "json"], None),
    (&["notify", "test", "--rule", "nope"], None),
    (&["secret", "rm", "db-password"], None),
    (&["cmdb", "host", "set", "web01", "--tag", "env=prod", "--group", "web"], None),
    (&["cmdb", "host", "show", "web01"], None),
    (&["cmdb", "group", "set", "web", "--parent", "prod"], None),
    (&["cmdb", "export", "--format", "csv", "-o", "hosts.csv"], None),
    (&["cmdb", "host", "rm", "web01"], None),
    (&["cmdb", "import", "hosts.csv"], None),
    (&["cmdb", "export", "group:web", "--format", "json"], None),
    (&["cmdb", "inventory", "--list"], None),
    (&["config", "set", "app.toml", "-m", "first"], None),
    (&["config", "list"], None),
    (&["config", "show", "app"], None),
    (&["config", "history", "app", "--format", "json"], None),
    (&["config", "diff", "app"], None),
    (&["config", "status", "app"], None),
    (&["netdev", "profiles"], None),
    (&["netdev", "backups", "sw1"], None),
    (&["netdev", "show", "sw1"], None),
    (&["netdev", "diff", "sw1"], None),
    (&["audit", "show", "0"], None),
    (&["audit", "head"], None),
    (&["user", "rm", "alice"], None),
    (&["audit", "list", "--format", "json"], None),
];

/// The OS user these tests run as (the actor of local commands); the remote CLI's account is
/// named after it, so the audit logs of both compare.
fn os_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Via {
    /// No server: the CLI opens the store.
    Alone,
    /// A server holds the data dir: the local socket.
    Socket,
    /// `--server URL` with an admin's token, and no data dir on the CLI's side.
    Http,
}

/// The session's results (exit code, stdout, stderr), normalized, and the folder it ran in.
fn session(via: Via) -> (Vec<(i32, String, String)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    applet(dir.path(), "hello", "return function(p) log.info('n is ' .. p.n) return { n = p.n + 1 } end");
    applet(dir.path(), "failing", "return function() error('disk full on /var') end");
    std::fs::write(
        dir.path().join("app.toml"),
        "name = \"app\"\npath = \"/etc/app.conf\"\ntemplate_file = \"app.conf.j2\"\n[values]\nport = 80\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("app.conf.j2"), "listen {{ port }}\n").unwrap();
    // Every data dir gets the account a remote CLI uses, so all audit logs start alike.
    let me = os_user();
    assert_eq!(opslet(dir.path(), &data, &["user", "add", &me, "--role", "admin"], None).0, 0);
    let (code, token, err) = opslet(dir.path(), &data, &["token", "create", &me], None);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let server = (via != Via::Alone).then(|| common::serve::spawn(&data, &[]));
    if via == Via::Socket {
        assert!(data.join("opslet.sock").exists());
    }
    let url = server.as_ref().map(|(_, addr)| format!("http://{addr}")).unwrap_or_default();
    // The remote CLI has no data dir of its own: a path that does not exist.
    let nowhere = dir.path().join("no-data-dir-here");
    let (data_arg, env): (&Path, Vec<(&str, &str)>) = match via {
        Via::Http => (&nowhere, vec![("OPSLET_SERVER", url.as_str()), ("OPSLET_TOKEN", token.as_str())]),
        _ => (&data, vec![]),
    };
    let out: Vec<(i32, String, String)> = SESSION
        .iter()
        .map(|(args, stdin)| {
            let (code, out, err) = opslet_with(dir.path(), data_arg, args, *stdin, &env);
            (code, normalize(&out), normalize(&err))
        })
        .collect();
    if let Some((mut child, _)) = server {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(!nowhere.exists(), "the remote CLI made a data dir of its own");
    (out, dir)
}

#[test]
fn every_command_gives_the_same_result_through_the_server() {
    let (alone, _d1) = session(Via::Alone);
    let (socket, d2) = session(Via::Socket);
    let (http, d3) = session(Via::Http);
    for (((args, _), a), s) in SESSION.iter().zip(&alone).zip(&socket) {
        assert_eq!(a, s, "`opslet {}` alone (left) and through the local socket (right)", args.join(" "));
    }
    // Over HTTP, runs are recorded as the remote CLI's, and a folder it ran by the path its
    // user wrote (the server's copy is gone); all else is the same.
    let audit = SESSION.len() - 1;
    assert!(http[audit].1.contains("\"via\": \"remote-cli\""), "{}", http[audit].1);
    assert!(http[audit].1.contains("\"kind\": \"sent\",\n\"path\": \"./hello\""), "{}", http[audit].1);
    let as_local = |s: &str| {
        let s = s.replace("\"via\": \"remote-cli\"", "\"via\": \"cli\"").replace("\"kind\": \"sent\"", "\"kind\": \"folder\"");
        Regex::new(r#""path": "(\./)?(\w+)""#).unwrap().replace_all(&s, "\"path\": \"<tmp>/$2\"").into_owned()
    };
    for (i, (((args, _), a), h)) in SESSION.iter().zip(&alone).zip(&http).enumerate() {
        let h = if i == audit { (h.0, as_local(&h.1), h.2.clone()) } else { h.clone() };
        assert_eq!(a, &h, "`opslet {}` alone (left) and with --server (right)", args.join(" "));
    }
    // The exit codes the session expects, so the comparison compares something.
    let codes: Vec<(&str, i32)> = SESSION.iter().zip(&alone).map(|((args, _), r)| (args[0], r.0)).collect();
    let expected = [0, 0, 0, 0, 0, 0, 3, 1, 3, 0, 0, 2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0];
    assert_eq!(codes[..expected.len()].iter().map(|c| c.1).collect::<Vec<_>>(), expected, "{alone:#?}");
    let failed: Vec<String> = SESSION
        .iter()
        .zip(&alone)
        .skip(expected.len())
        .filter(|(_, r)| r.0 != 0)
        .map(|((a, _), r)| format!("{} -> {}", a.join(" "), r.0))
        .collect();
    // Past the first part every command succeeds, but those that find nothing to act on.
    assert_eq!(
        failed,
        [
            "rollback hello -> 3",
            "token revoke 00000000 -> 3",
            "schedule rm nope -> 3",
            "notify test --rule nope -> 3",
            "netdev backups sw1 -> 3",
            "netdev show sw1 -> 3",
            "netdev diff sw1 -> 3"
        ],
        "{alone:#?}"
    );
    assert!(socket[4].2.contains("[info] n is 41"), "{:?}", socket[4]);
    assert!(http[4].2.contains("[info] n is 41"), "{:?}", http[4]);
    // The export was written where the caller stood, not where the server runs.
    assert!(d2.path().join("hello.bundle").exists());
    assert!(d3.path().join("hello.bundle").exists());
    assert!(d2.path().join("hosts.csv").exists() && d3.path().join("hosts.csv").exists());
}

#[test]
fn a_run_through_the_server_streams_its_logs_and_ctrl_c_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    applet(dir.path(), "nap", "return function() log.info('going to sleep') time.sleep(30) return true end");
    opslet(dir.path(), &data, &["list"], None);
    let (mut server, _) = common::serve::spawn(&data, &[]);
    let mut run = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["run", "nap"])
        .current_dir(dir.path())
        .env("OPSLET_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(run.stderr.take().unwrap()).lines();
    // The log line arrives while the run is still asleep in the server.
    assert_eq!(err.next().unwrap().unwrap(), "[info] going to sleep");
    assert!(run.try_wait().unwrap().is_none());
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    let status = run.wait().unwrap();
    let rest: Vec<String> = err.map(|l| l.unwrap()).collect();
    assert_eq!(status.code(), Some(6), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("run cancelled")), "{rest:?}");
    let records = audit_records(dir.path(), &data);
    let end = records.iter().find(|r| r["kind"] == "run.end").expect("the run's end is recorded");
    assert_eq!(end["status"], "cancelled");
    assert_eq!(end["via"], "cli");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn only_the_data_dirs_owner_gets_in_and_commands_that_need_it_alone_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    opslet(dir.path(), &data, &["list"], None);
    let (mut server, _) = common::serve::spawn(&data, &[]);
    let sock = data.join("opslet.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    // Repairing the store under a running server is refused with what to do instead.
    let (code, _, err) = opslet(dir.path(), &data, &["store", "check"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stop `opslet serve` first"), "{err}");

    // Past the socket's mode (opened up here on purpose), the server still checks who is on
    // the other end: another user's command is refused and does not run.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        use std::os::unix::process::CommandExt;
        let out = Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["user", "add", "mallory", "--role", "admin"])
            .env("OPSLET_DATA_DIR", &data)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{err}");
        assert!(err.contains("only for its own user"), "{err}");
        let (_, users, _) = opslet(dir.path(), &data, &["user", "list"], None);
        assert!(!users.contains("mallory"), "{users}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

trait ExitAndStderr {
    fn wait_with_output_stderr(&mut self) -> (Option<i32>, String);
}

impl ExitAndStderr for std::process::Child {
    fn wait_with_output_stderr(&mut self) -> (Option<i32>, String) {
        let mut err = String::new();
        std::io::Read::read_to_string(self.stderr.as_mut().unwrap(), &mut err).unwrap();
        (self.wait().unwrap().code(), err)
    }
}

/// The frames of a `POST /api/v1/commands` answer: (stdout, stderr, exit code).
async fn raw_command(base: &str, token: &str, request: serde_json::Value) -> (String, String, i32) {
    let resp = reqwest::Client::new().post(format!("{base}/api/v1/commands")).bearer_auth(token).json(&request).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        match rest[0] {
            1 => out.extend_from_slice(payload),
            2 => err.extend_from_slice(payload),
            3 => code = Some(i32::from_be_bytes(payload.try_into().unwrap())),
            _ => {}
        }
        rest = &rest[5 + len..];
    }
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), code.expect("an EXIT frame"))
}

#[test]
fn over_http_each_command_needs_the_tokens_rights_and_names_only_the_callers_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    applet(dir.path(), "hello", "return function(p) return { n = p.n } end");
    let mut tokens = std::collections::HashMap::new();
    for (user, role) in [("boss", "admin"), ("vic", "viewer"), ("olga", "operator")] {
        assert_eq!(opslet(dir.path(), &data, &["user", "add", user, "--role", role], None).0, 0);
        tokens.insert(user, opslet(dir.path(), &data, &["token", "create", user], None).1.trim().to_string());
    }
    opslet(dir.path(), &data, &["grant", "add", "olga", "hello"], None);
    opslet(dir.path(), &data, &["publish", "hello"], None);
    // Files only the server's machine has: a bundle of a version never published, an applet.
    opslet(dir.path(), &data, &["export", "hello", "-o", "server-only.bundle"], None);
    let (mut server, addr) = common::serve::spawn(&data, &[]);
    let base = format!("http://{addr}");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let nowhere = dir.path().join("no-data-dir");
    let as_user = |user: &str, args: &[&str], stdin: Option<&str>| {
        opslet_with(&elsewhere, &nowhere, args, stdin, &[("OPSLET_SERVER", base.as_str()), ("OPSLET_TOKEN", tokens[user].as_str())])
    };

    // A viewer may read the registry, not administer; the refusal is audited.
    assert_eq!(as_user("vic", &["list"], None).0, 0);
    let (code, _, err) = as_user("vic", &["user", "add", "mallory", "--role", "admin"], None);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("vic (viewer) may not administer"), "{err}");
    // ... nor set a console password, not even their own with a token (a leaked token must not
    // become a console login that outlives it), nor read an applet's source or the inventory's
    // attributes.
    assert_eq!(as_user("vic", &["user", "passwd", "vic"], Some("a long password\n")).0, 11);
    assert_eq!(as_user("vic", &["user", "passwd", "boss"], Some("a long password\n")).0, 11);
    assert_eq!(as_user("vic", &["export", "hello", "-o", "h.bundle"], None).0, 11);
    assert!(!elsewhere.join("h.bundle").exists());
    assert_eq!(as_user("vic", &["cmdb", "host", "list"], None).0, 0);
    assert_eq!(as_user("vic", &["cmdb", "host", "list", "--format", "json"], None).0, 11);
    let (code, _, err) = as_user("boss", &["user", "passwd", "vic"], Some("a long password\n"));
    assert_eq!(code, 0, "{err}");
    // An operator runs what the grants allow, and no unpublished folder.
    let (code, out, err) = as_user("olga", &["run", "hello", "-p", "n=7", "--format", "json"], None);
    assert_eq!((code, out.contains("\"n\": 7")), (0, true), "{out}{err}");
    std::fs::create_dir_all(elsewhere.join("hello")).unwrap();
    std::fs::write(elsewhere.join("hello/applet.toml"), "name = \"hello\"\nversion = \"9.0.0\"\n").unwrap();
    std::fs::write(elsewhere.join("hello/main.lua"), "return function() return 'unpublished' end").unwrap();
    let (code, _, err) = as_user("olga", &["run", "./hello"], None);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("may not administer"), "{err}");
    assert_eq!(as_user("olga", &["publish", "./hello"], None).0, 11);
    // A folder sent under a granted applet's bare name is still unpublished code: refused.
    let (code, _, err) = as_user("olga", &["run", "hello"], None);
    assert_eq!(code, 11, "{err}");
    let (_, users, _) = as_user("boss", &["user", "list", "--format", "json"], None);
    assert!(!users.contains("mallory"), "{users}");
    let (_, audit, _) = as_user("boss", &["audit", "list", "--format", "json"], None);
    let records: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let denied: Vec<&serde_json::Value> = records.as_array().unwrap().iter().filter(|r| r["kind"] == "http.denied").collect();
    assert!(denied.iter().any(|d| d["actor"] == "vic"), "{denied:?}");
    assert!(denied.iter().any(|d| d["actor"] == "olga"), "{denied:?}");
    let set = records.as_array().unwrap().iter().find(|r| r["kind"] == "auth.password.set").unwrap();
    assert_eq!((&set["actor"], &set["data"]["user"]), (&serde_json::json!("boss"), &serde_json::json!("vic")));
    assert!(
        !records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "run.start" && r["actor"] == "olga" && r["data"]["source"]["kind"] == "sent")
    );

    // No token, a bad token, a data dir of this machine: each said plainly.
    let (code, _, err) = opslet_with(&elsewhere, &nowhere, &["list"], None, &[("OPSLET_SERVER", base.as_str())]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OPSLET_TOKEN"), "{err}");
    let (code, _, err) =
        opslet_with(&elsewhere, &nowhere, &["list"], None, &[("OPSLET_SERVER", base.as_str()), ("OPSLET_TOKEN", "opslet_00000000_00")]);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("refused: unauthenticated"), "{err}");
    let (code, _, err) = as_user("boss", &["--data-dir", data.to_str().unwrap(), "list"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--data-dir names a path on this machine"), "{err}");
    let (code, _, err) =
        opslet_with(&elsewhere, &nowhere, &["list"], None, &[("OPSLET_SERVER", "http://127.0.0.1:9"), ("OPSLET_TOKEN", "x")]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("cannot reach the server at http://127.0.0.1:9"), "{err}");
    assert!(!nowhere.exists());

    // Paths are the caller's: a request naming files of the server's machine without sending
    // them finds nothing there, even as an admin.
    let bundle = dir.path().join("server-only.bundle");
    let server_applet = dir.path().join("hello");
    opslet::install_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let boss = &tokens["boss"];
        let (_, err, code) = raw_command(&base, boss, serde_json::json!({ "argv": ["opslet", "import", bundle.to_str().unwrap()] })).await;
        assert!(bundle.exists());
        assert_eq!(code, 3, "{err}");
        assert!(err.contains(&format!("{}: No such file", bundle.display())), "the error names the path as sent: {err}");
        let (_, err, code) =
            raw_command(&base, boss, serde_json::json!({ "argv": ["opslet", "run", server_applet.to_str().unwrap()] })).await;
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("cannot open applet folder"), "{err}");
        // A sent folder cannot place a file outside itself.
        let escape = serde_json::json!({
            "argv": ["opslet", "publish", "x"],
            "files": { "x": { "kind": "dir", "files": { "../../escaped.lua": "cmV0dXJuIDE=" } } },
        });
        let (_, err, code) = raw_command(&base, boss, escape).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("would land outside its folder"), "{err}");
        // A command that needs the data dir alone is not run for a remote caller.
        let (_, err, code) = raw_command(&base, boss, serde_json::json!({ "argv": ["opslet", "store", "repair"] })).await;
        assert_eq!(code, 2, "{err}");
    });
    // A config item and the template beside it travel together.
    std::fs::write(
        elsewhere.join("app.toml"),
        "name = \"app\"\npath = \"/etc/app.conf\"\ntemplate_file = \"app.conf.j2\"\n[values]\nport = 80\n",
    )
    .unwrap();
    std::fs::write(elsewhere.join("app.conf.j2"), "listen {{ port }}\n").unwrap();
    let (code, _, err) = as_user("boss", &["config", "set", "app.toml", "-m", "first"], None);
    assert_eq!(code, 0, "{err}");
    let (_, shown, err) = as_user("boss", &["config", "show", "app"], None);
    assert!(shown.contains("listen {{ port }}"), "{shown}{err}");
    let (_, versions, _) = as_user("boss", &["versions", "hello"], None);
    assert!(!versions.contains("9.0.0"), "{versions}");

    // The password route: an admin sets anyone's; a user changes their own only by giving the
    // current one; never shorter than 10 characters.
    rt.block_on(async {
        let put = |who: &str, whose: &str, body: serde_json::Value| {
            reqwest::Client::new().put(format!("{base}/api/v1/users/{whose}/password")).bearer_auth(&tokens[who]).json(&body).send()
        };
        let pw = |p: &str| serde_json::json!({ "password": p });
        assert_eq!(put("olga", "olga", pw("olgas own password")).await.unwrap().status(), 403, "no first password from a token");
        assert_eq!(put("olga", "vic", pw("not olgas to set")).await.unwrap().status(), 403);
        assert_eq!(put("boss", "olga", pw("short")).await.unwrap().status(), 400);
        assert_eq!(put("boss", "nobody", pw("long enough here")).await.unwrap().status(), 404);
        assert_eq!(put("boss", "olga", pw("olgas first password")).await.unwrap().status(), 200);
        let change = |current: &str| serde_json::json!({ "password": "olgas second password", "current": current });
        assert_eq!(put("olga", "olga", change("a wrong guess!")).await.unwrap().status(), 403);
        assert_eq!(put("olga", "olga", change("olgas first password")).await.unwrap().status(), 200);
        let signin = reqwest::Client::new()
            .post(format!("{base}/api/v1/session"))
            .json(&serde_json::json!({ "user": "olga", "password": "olgas second password" }))
            .send()
            .await
            .unwrap();
        assert_eq!(signin.status(), 200);
    });
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_remote_run_streams_its_logs_and_ctrl_c_or_a_lost_caller_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    applet(dir.path(), "nap", "return function() log.info('going to sleep') time.sleep(30) return true end");
    opslet(dir.path(), &data, &["user", "add", "boss", "--role", "admin"], None);
    let token = opslet(dir.path(), &data, &["token", "create", "boss"], None).1.trim().to_string();
    let (mut server, addr) = common::serve::spawn(&data, &["--user-limit", "1"]);
    let base = format!("http://{addr}");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["run", "nap"])
            .current_dir(dir.path())
            .env("OPSLET_SERVER", &base)
            .env("OPSLET_TOKEN", &token)
            .env("OPSLET_DATA_DIR", dir.path().join("nowhere"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut run = start();
    let mut err = std::io::BufReader::new(run.stderr.take().unwrap()).lines();
    assert_eq!(err.next().unwrap().unwrap(), "[info] going to sleep");
    assert!(run.try_wait().unwrap().is_none());
    // The run is a job of the server's run service: listed with its jobs, within its quotas
    // (one run at a time for boss here).
    let listed = jobs(&base, &token);
    assert!(listed.iter().any(|j| j["applet"].as_str().is_some_and(|a| a.starts_with("nap")) && j["status"] == "running"), "{listed:?}");
    let mut second = start();
    let out = second.wait_with_output_stderr();
    assert_eq!(out.0, Some(12), "{}", out.1);
    assert!(out.1.contains("the server is busy"), "{}", out.1);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    let status = run.wait().unwrap();
    let rest: Vec<String> = err.map(|l| l.unwrap()).collect();
    assert_eq!(status.code(), Some(6), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("run cancelled")), "{rest:?}");

    // A CLI killed outright: the server notices the lost caller and cancels its run.
    let mut run = start();
    let mut err = std::io::BufReader::new(run.stderr.take().unwrap()).lines();
    assert_eq!(err.next().unwrap().unwrap(), "[info] going to sleep");
    run.kill().unwrap();
    run.wait().unwrap();
    let ends = || audit_records(dir.path(), &data).into_iter().filter(|r| r["kind"] == "run.end").collect::<Vec<_>>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ends().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ends = ends();
    assert_eq!(ends.len(), 2, "{ends:?}");
    for end in &ends {
        assert_eq!(end["status"], "cancelled", "{end}");
        assert_eq!(end["via"], "remote-cli");
        assert_eq!(end["actor"], "boss");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn one_user_has_at_most_eight_commands_running_on_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    applet(dir.path(), "nap", "return function() time.sleep(30) return true end");
    opslet(dir.path(), &data, &["user", "add", "boss", "--role", "admin"], None);
    opslet(dir.path(), &data, &["publish", "nap"], None);
    let token = opslet(dir.path(), &data, &["token", "create", "boss"], None).1.trim().to_string();
    let (mut server, addr) = common::serve::spawn(&data, &[]);
    let base = format!("http://{addr}");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let remote = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.args(args)
            .current_dir(&elsewhere)
            .env("OPSLET_SERVER", &base)
            .env("OPSLET_TOKEN", &token)
            .env("OPSLET_DATA_DIR", dir.path().join("nowhere"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let mut naps: Vec<std::process::Child> = (0..8).map(|_| remote(&["run", "nap"]).spawn().unwrap()).collect();
    // All eight are running once the server lists eight running jobs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list = jobs(&base, &token);
        if list.iter().filter(|j| j["status"] == "running").count() == 8 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut ninth = remote(&["list"]).spawn().unwrap();
    let (code, err) = ninth.wait_with_output_stderr();
    assert_eq!(code, Some(12), "{err}");
    assert!(err.contains("boss has 8 commands running already"), "{err}");
    for n in &mut naps {
        n.kill().unwrap();
        n.wait().unwrap();
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
