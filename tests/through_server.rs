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

fn applet(dir: &Path, name: &str, main: &str) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(dir.join(name).join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n[params.n]\ntype = \"integer\"\ndefault = 1\n"))
        .unwrap();
    std::fs::write(dir.join(name).join("main.lua"), main).unwrap();
}

/// The day's work of an operator, in order; relative paths are the caller's.
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
    (&["token", "create", "alice"], None),
    (&["secret", "set", "db-password"], Some("s3cret-value\n")),
    (&["secret", "list"], None),
    (&["cmdb", "host", "add", "web01", "--address", "10.0.0.1"], None),
    (&["cmdb", "host", "list", "--format", "json"], None),
    (&["export", "hello", "-o", "hello.bundle"], None),
    (&["import", "hello.bundle"], None),
    (&["yank", "hello@1.0.0"], None),
    (&["run", "hello@1.0.0"], None),
    (&["audit", "verify"], None),
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
    let codes: Vec<i32> = alone.iter().map(|r| r.0).collect();
    assert_eq!(codes, [0, 0, 0, 0, 0, 0, 3, 1, 3, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0], "{alone:#?}");
    assert!(socket[4].2.contains("[info] n is 41"), "{:?}", socket[4]);
    assert!(http[4].2.contains("[info] n is 41"), "{:?}", http[4]);
    // The export was written where the caller stood, not where the server runs.
    assert!(d2.path().join("hello.bundle").exists());
    assert!(d3.path().join("hello.bundle").exists());
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
    let (_, audit, _) = opslet(dir.path(), &data, &["audit", "list", "--format", "json"], None);
    let records: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let end = records.as_array().unwrap().iter().find(|r| r["kind"] == "run.end").expect("the run's end is recorded");
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
