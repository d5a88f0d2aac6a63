//! Notifications of `opslet serve` (docs/notifications.md) against real receivers: email through
//! a real SMTP server (aiosmtpd, tests/common/smtp.rs), signed webhooks and chat messages to an
//! HTTP receiver in this process whose signatures are checked here with hmac/sha2; per-applet
//! rules, retries with backoff, deliveries that fail for good, and a pending delivery that
//! survives a restart. Config mistakes are covered by the unit tests of `config::notify`.

#[path = "common/serve.rs"]
mod serve_proc;
#[path = "common/smtp.rs"]
mod smtp;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// A secret param's value, and a stored secret's value the applet has in its code: neither may
/// be in any message.
const PARAM_SECRET: &str = "tok-PARAM-9876";
const STORED_SECRET: &str = "S3cr3t-Stored-Value-42";
const SIGNING_KEY: &str = "whsec-0123456789abcdef";

// ---- a tiny HTTP receiver -------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Answers each request with the next status planned for its path (200 when none is left).
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Req>>>,
    plan: Arc<Mutex<HashMap<String, VecDeque<u16>>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn start_on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let r = Receiver { port, got: Default::default(), plan: Default::default(), stop: Default::default() };
        let (got, plan, stop) = (Arc::clone(&r.got), Arc::clone(&r.plan), Arc::clone(&r.stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (got, plan) = (Arc::clone(&got), Arc::clone(&plan));
                std::thread::spawn(move || serve_one(conn, &got, &plan));
            }
        });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn answer(&self, path: &str, statuses: &[u16]) {
        self.plan.lock().insert(path.to_string(), statuses.iter().copied().collect());
    }

    fn requests(&self, path: &str) -> Vec<Req> {
        self.got.lock().iter().filter(|r| r.path == path).cloned().collect()
    }

    fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Req> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests(path);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} requests to {path} arrived", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(mut conn: TcpStream, got: &Mutex<Vec<Req>>, plan: &Mutex<HashMap<String, VecDeque<u16>>>) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next().unwrap_or("").split(' ').nth(1).unwrap_or("").to_string();
    let headers: HashMap<String, String> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let status = plan.lock().get_mut(&path).and_then(|q| q.pop_front()).unwrap_or(200);
    got.lock().push(Req { path, headers, body, at: Instant::now() });
    let text = if status == 200 { "ok" } else { "receiver says no" };
    let _ = write!(conn, "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len());
}

/// Checks a webhook delivery's signature the way a receiver would, independently of opslet:
/// `v2=` hex HMAC-SHA256 over "opslet-delivery-v2\0<timestamp>\0<delivery>\0<body>".
fn verify_signature(r: &Req, key: &str) {
    let ts = &r.headers["x-opslet-timestamp"];
    let id = &r.headers["x-opslet-delivery"];
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("opslet-delivery-v2\0{ts}\0{id}\0").as_bytes());
    mac.update(&r.body);
    let expected = format!("v2={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.headers["x-opslet-signature"], expected, "signature of {}", String::from_utf8_lossy(&r.body));
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    assert!(age.abs() < 300, "timestamp {ts} is fresh");
    assert!(r.body.windows(id.len()).any(|w| w == id.as_bytes()), "the body names its delivery");
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

// ---- the server -----------------------------------------------------------------------------

fn opslet(data: &Path, args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

struct Server {
    child: Option<Child>,
    base: String,
    data: PathBuf,
    admin: String,
    viewer: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A data dir with `config` as opslet.toml, the test applets, secrets, an admin and a
    /// viewer; then the server.
    fn new(config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("opslet.toml"), format!("[limits]\ncpu = \"300ms\"\n[serve]\nshutdown_grace = \"1s\"\n{config}")).unwrap();
        let applet = |name: &str, manifest: &str, main: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest}")).unwrap();
            std::fs::write(d.join("main.lua"), main).unwrap();
            opslet(&data, &["publish", d.to_str().unwrap()]);
        };
        applet(
            "deploy-web",
            "[params.token]\ntype = \"string\"\nsecret = true\nrequired = true\n",
            &format!("return function(p) error('deploy failed: token ' .. p.token .. ' refused, key {STORED_SECRET}\\nsecond line') end"),
        );
        applet("deploy-ok", "", "return function() return { done = true } end");
        applet("backup-db", "", "return function() error('backup failed') end");
        applet("spin", "", "return function() while true do end end");
        for (name, value) in [("notify-key", SIGNING_KEY), ("db-password", STORED_SECRET)] {
            let f = dir.path().join(name);
            std::fs::write(&f, value).unwrap();
            opslet(&data, &["secret", "set", name, "--file", f.to_str().unwrap()]);
        }
        opslet(&data, &["user", "add", "alice", "--role", "admin"]);
        opslet(&data, &["user", "add", "vic", "--role", "viewer"]);
        let admin = opslet(&data, &["token", "create", "alice"]);
        let viewer = opslet(&data, &["token", "create", "vic"]);
        let mut s = Server { child: None, base: String::new(), data, admin, viewer, _dir: dir };
        s.start();
        s
    }

    fn start(&mut self) {
        let (child, addr) = serve_proc::spawn(&self.data, &[]);
        self.child = Some(child);
        self.base = format!("http://{addr}");
    }

    /// Stops the server the way an operator would (SIGTERM).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            serve_proc::stop(&mut child);
        }
    }

    /// Runs `applet` synchronously as alice; returns the job id and status.
    fn run(&self, applet: &str, params: Value) -> (String, String) {
        let url = format!("{}/api/v1/applets/{applet}/run", self.base);
        let body: Value = block(async {
            reqwest::Client::new().post(url).bearer_auth(&self.admin).json(&params).send().await.unwrap().json().await.unwrap()
        });
        (body["run_id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string(), body["status"].as_str().unwrap().to_string())
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        block(async {
            let resp = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    }

    fn deliveries(&self) -> Vec<Value> {
        let (status, v) = self.get("/api/v1/notifications?limit=100", &self.admin);
        assert_eq!(status, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// Waits until no delivery is pending (and at least `n` exist); returns them, newest first.
    fn settled(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let d = self.deliveries();
            if d.len() >= n && d.iter().all(|d| d["status"] != "pending") {
                return d;
            }
            assert!(Instant::now() < deadline, "deliveries did not settle: {d:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn audit(&self, kind: &str) -> Vec<Value> {
        let (status, v) = self.get(&format!("/api/v1/audit?kind={kind}&limit=1000"), &self.admin);
        assert_eq!(status, 200, "{v}");
        v.as_array().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A raw mail message's headers (unfolded, lowercase names) and body (quoted-printable undone).
fn parse_mail(raw: &str) -> (HashMap<String, String>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap();
    let head = head.replace("\n ", " ").replace("\n\t", " ");
    let headers: HashMap<String, String> =
        head.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let body = match headers.get("content-transfer-encoding").map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("quoted-printable") => {
            let joined = body.replace("=\n", "");
            let (b, mut out, mut i) = (joined.as_bytes(), Vec::new(), 0);
            while i < b.len() {
                let hex = (b[i] == b'=' && i + 2 < b.len()).then(|| u8::from_str_radix(&joined[i + 1..i + 3], 16).ok()).flatten();
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        Some("base64") => {
            use base64::Engine;
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(body.replace('\n', "")).unwrap()).into_owned()
        }
        _ => body.to_string(),
    };
    (headers, body)
}

fn no_secrets(what: &str, text: &str) {
    assert!(!text.contains(PARAM_SECRET), "{what} carries the secret param's value:\n{text}");
    assert!(!text.contains(STORED_SECRET), "{what} carries a stored secret's value:\n{text}");
    assert!(!text.contains(SIGNING_KEY), "{what} carries the signing key:\n{text}");
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn email_webhook_and_chat_by_rule_and_applet() {
    let mail = smtp::Smtp::start();
    let rx = Receiver::start();
    let config = format!(
        r#"
[notify]
attempts = 3
backoff = "200ms"
[notify.smtp]
host = "127.0.0.1"
port = {port}
from = "opslet <opslet@example.com>"
tls = "none"
[[notify.rule]]
name = "deploy-mail"
on = ["failure"]
applets = ["deploy-*"]
email = ["ops@example.com", "Second Ops <two@example.com>"]
[[notify.rule]]
name = "deploy-hook"
on = ["failure", "success"]
applets = ["deploy-*"]
webhook = "{hook}"
secret = "notify-key"
[[notify.rule]]
name = "limits"
on = ["limit"]
chat = "{chat}"
"#,
        port = mail.port,
        hook = rx.url("/hook"),
        chat = rx.url("/chat/T000/B000/XXXX"),
    );
    let s = Server::new(&config);
    let (failed, status) = s.run("deploy-web", json!({ "token": PARAM_SECRET }));
    assert_eq!(status, "error");
    let (ok, status) = s.run("deploy-ok", json!({}));
    assert_eq!(status, "ok");
    let (other, status) = s.run("backup-db", json!({}));
    assert_eq!(status, "error");
    let (spun, status) = s.run("spin", json!({}));
    assert_eq!(status, "limit_exceeded");

    // Email: one message, for the deploy failure only.
    let msgs = mail.wait_for(1, Duration::from_secs(20));
    let (h, body) = parse_mail(&msgs[0]);
    assert!(h["from"].contains("opslet@example.com"), "{h:?}");
    assert!(h["to"].contains("ops@example.com") && h["to"].contains("two@example.com"), "{h:?}");
    let subject = &h["subject"];
    assert!(subject.starts_with(&format!("opslet: deploy-web@1.0.0 failed (job {failed}) for alice: ")), "{subject}");
    assert!(subject.contains("deploy failed") && !subject.contains("second line"), "the error's first line: {subject}");
    for want in [
        "event:      failure",
        "applet:     deploy-web@1.0.0",
        "user:       alice",
        "status:     error",
        "duration:",
        &format!("job:        {failed}"),
        "second line",
    ] {
        assert!(body.contains(want), "the body has {want:?}:\n{body}");
    }
    no_secrets("the email", &msgs[0]);
    no_secrets("the email body", &body);

    // Webhook: the failure and the success of deploy-* applets, signed.
    let hooks = rx.wait_for("/hook", 2, Duration::from_secs(20));
    let chats = rx.wait_for("/chat/T000/B000/XXXX", 1, Duration::from_secs(20));
    let all = s.settled(4, Duration::from_secs(20));
    for r in &hooks {
        verify_signature(r, SIGNING_KEY);
        assert_eq!(r.headers["content-type"], "application/json");
        no_secrets("a webhook body", &String::from_utf8_lossy(&r.body));
    }
    let by_event: HashMap<String, Value> = hooks.iter().map(|r| (r.json()["event"].as_str().unwrap().to_string(), r.json())).collect();
    let f = &by_event["failure"];
    assert_eq!(f["job"]["id"], failed);
    assert_eq!(f["job"]["status"], "error");
    assert_eq!(f["job"]["user"], "alice");
    assert_eq!(f["job"]["applet"], "deploy-web@1.0.0");
    assert_eq!(f["job"]["params"]["token"], "<redacted>");
    assert_eq!(f["rule"], "deploy-hook");
    assert!(f["sent_at"].is_string() && f["job"]["finished_at"].is_string(), "{f}");
    assert_eq!(by_event["success"]["job"]["id"], ok);
    assert_eq!(hooks[0].headers["x-opslet-event"], hooks[0].json()["event"].as_str().unwrap());

    // Chat: the limit hit, as {"text": ...}.
    assert_eq!(chats.len(), 1);
    let text = chats[0].json()["text"].as_str().unwrap().to_string();
    assert!(text.starts_with(&format!("opslet: spin@1.0.0 hit a limit (job {spun}) for alice")), "{text}");

    // No rule of deploy-* fired for backup-db, and nothing else was sent.
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all.iter().all(|d| d["job"] != other), "backup-db matches no rule: {all:#?}");
    assert!(all.iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1), "{all:#?}");
    assert!(all.iter().all(|d| d.get("send").is_none()), "what is sent is not shown");
    let chat = all.iter().find(|d| d["channel"] == "chat").unwrap();
    assert_eq!(chat["target"], format!("http://127.0.0.1:{}/…", rx.port), "a chat URL's path is not shown");
    assert_eq!(s.audit("notify.delivered").len(), 4);

    // The API: admins only, filtered by status.
    assert_eq!(s.get("/api/v1/notifications", &s.viewer).0, 403);
    let (_, none) = s.get("/api/v1/notifications?status=failed", &s.admin);
    assert_eq!(none, json!([]));
    assert_eq!(s.get("/api/v1/notifications?status=soon", &s.admin).0, 400);
    // The CLI, through the running server.
    let listed: Value = serde_json::from_str(&opslet(&s.data, &["notify", "list", "--format", "json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4);
    let plain = opslet(&s.data, &["notify", "list", "--status", "delivered"]);
    assert!(plain.contains("deploy-mail") && plain.contains("failure -> email"), "{plain}");
    // A test message through a rule.
    opslet(&s.data, &["notify", "test", "--rule", "limits"]);
    let chats = rx.wait_for("/chat/T000/B000/XXXX", 2, Duration::from_secs(10));
    assert!(chats[1].json()["text"].as_str().unwrap().contains("test message"), "{:?}", chats[1].json());
}

#[test]
fn retries_back_off_and_end_delivered_or_failed() {
    let rx = Receiver::start();
    rx.answer("/flaky", &[500, 500]);
    rx.answer("/down", &[500; 10]);
    let config = format!(
        r#"
[notify]
attempts = 3
backoff = "200ms"
[[notify.rule]]
name = "flaky"
on = ["failure"]
webhook = "{flaky}"
secret = "notify-key"
[[notify.rule]]
name = "down"
on = ["failure"]
chat = "{down}"
"#,
        flaky = rx.url("/flaky"),
        down = rx.url("/down"),
    );
    let s = Server::new(&config);
    let (job, _) = s.run("backup-db", json!({}));
    let all = s.settled(2, Duration::from_secs(20));

    let flaky = all.iter().find(|d| d["rule"] == "flaky").unwrap();
    assert_eq!(flaky["status"], "delivered", "{flaky}");
    assert_eq!(flaky["attempts"], 3, "delivered on the third attempt: {flaky}");
    assert_eq!(flaky["job"], job);
    assert!(flaky["delivered_at"].is_string() && flaky["last_error"].is_null(), "{flaky}");
    let got = rx.requests("/flaky");
    assert_eq!(got.len(), 3);
    for r in &got {
        verify_signature(r, SIGNING_KEY);
    }
    assert!(got.iter().all(|r| r.headers["x-opslet-delivery"] == flaky["id"].as_str().unwrap()), "one delivery id across attempts");
    // The waits double: 200 ms, then 400 ms (at least).
    assert!(got[1].at - got[0].at >= Duration::from_millis(150), "{:?}", got[1].at - got[0].at);
    assert!(got[2].at - got[1].at >= Duration::from_millis(300), "{:?}", got[2].at - got[1].at);

    let down = all.iter().find(|d| d["rule"] == "down").unwrap();
    assert_eq!(down["status"], "failed", "{down}");
    assert_eq!(down["attempts"], 3);
    assert!(down["last_error"].as_str().unwrap().contains("HTTP 500"), "{down}");
    assert_eq!(rx.requests("/down").len(), 3, "no attempt after the last");

    let delivered = s.audit("notify.delivered");
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["data"]["attempts"], 3);
    assert_eq!(delivered[0]["data"]["rule"], "flaky");
    assert_eq!(delivered[0]["run_id"], job);
    let failed = s.audit("notify.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], "error");
    assert!(failed[0]["data"]["error"].as_str().unwrap().contains("HTTP 500"));
    let (_, listed) = s.get("/api/v1/notifications?status=failed", &s.admin);
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[test]
fn a_pending_delivery_survives_a_restart() {
    // The receiver's port, with nobody listening yet.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        r#"
[notify]
attempts = 20
backoff = "1s"
[[notify.rule]]
on = ["failure"]
webhook = "http://127.0.0.1:{port}/later"
secret = "notify-key"
"#
    );
    let mut s = Server::new(&config);
    let (job, _) = s.run("backup-db", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let d = s.deliveries();
        if let Some(d) = d.first().filter(|d| d["attempts"].as_u64() >= Some(1)) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no attempt recorded: {d:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first["status"], "pending");
    assert_eq!(first["rule"], "rule[0]");
    assert!(first["last_error"].is_string() && first["next_at"].is_string(), "{first}");
    s.stop();

    let rx = Receiver::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    s.start();
    let got = rx.wait_for("/later", 1, Duration::from_secs(20));
    verify_signature(&got[0], SIGNING_KEY);
    assert_eq!(got[0].headers["x-opslet-delivery"], first["id"].as_str().unwrap());
    assert_eq!(got[0].json()["job"]["id"], job);
    let all = s.settled(1, Duration::from_secs(20));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["status"], "delivered");
    assert!(all[0]["attempts"].as_u64().unwrap() >= 2, "{}", all[0]);
    assert_eq!(s.audit("notify.delivered").len(), 1);
}

#[test]
fn a_bad_rule_stops_the_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("opslet.toml"),
        "[notify]\nattempts = 2\n\n[[notify.rule]]\non = [\"failure\"]\nchat = \"https://chat.example.com/x\"\nemail = [\"ops@example.com\"]\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OPSLET_DATA_DIR", &data)
        .env_remove("OPSLET_CONFIG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("opslet.toml:4:") && err.contains("notify.rule[0]: give one of webhook, email, chat"), "{err}");
}

#[test]
fn a_run_waiting_for_approval_is_announced_to_its_approvers() {
    let rx = Receiver::start();
    let config = format!(
        r#"
[[approvals.rule]]
name = "inventory-writes"
module = "cmdb"
actions = ["write"]
[[notify.rule]]
name = "approvers"
on = ["approval"]
webhook = "{hook}"
secret = "notify-key"
"#,
        hook = rx.url("/approvals")
    );
    let s = Server::new(&config);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("applet.toml"),
        "name = \"tagger\"\nversion = \"1.0.0\"\n[params.token]\ntype = \"string\"\nsecret = true\n[permissions]\ncmdb = [\"read\", \"write\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("main.lua"), "return function(p) cmdb.set('nope', {}) end").unwrap();
    opslet(&s.data, &["publish", dir.path().to_str().unwrap()]);
    let url = format!("{}/api/v1/applets/tagger/run", s.base);
    let body: Value = block(async {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(&s.admin)
            .json(&json!({ "token": PARAM_SECRET }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(body["status"], "awaiting_approval", "{body}");
    let job = body["job_id"].as_str().unwrap();
    // Announced once its plan is made (here: no plan, its dry run fails), signed, without the secret.
    let got = rx.wait_for("/approvals", 1, Duration::from_secs(20));
    verify_signature(&got[0], SIGNING_KEY);
    let ev = got[0].json();
    assert_eq!(ev["event"], "approval", "{ev}");
    assert_eq!(ev["job"]["id"], job);
    assert_eq!(ev["job"]["status"], "awaiting_approval");
    assert!(ev["detail"]["reasons"][0].as_str().unwrap().contains("cmdb write (rule inventory-writes)"), "{ev}");
    no_secrets("the approval announcement", &String::from_utf8_lossy(&got[0].body));
    // Nothing else is announced while it waits.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.requests("/approvals").len(), 1);
}

/// Email as production sends it: STARTTLS required (or TLS from the start) and a login, the
/// password from the secret store, the server's certificate checked against `ca`. An untrusted
/// certificate ends the delivery `failed`, saying why. (A wrong password is not tried: the test
/// server answers a failed login by holding the connection until its own timeout.)
#[test]
fn email_over_starttls_and_tls_with_a_login() {
    const SMTP_PASSWORD: &str = "mail-Pa55word-31337";
    for mode in ["starttls", "tls"] {
        let mail = smtp::Smtp::start_tls(mode, "opslet", SMTP_PASSWORD);
        let config = format!(
            r#"
[notify]
attempts = 1
[notify.smtp]
host = "127.0.0.1"
port = {port}
from = "opslet <opslet@example.com>"
tls = "{mode}"
user = "opslet"
password_secret = "smtp-password"
ca = "{ca}"
[[notify.rule]]
name = "mail"
on = ["failure"]
email = ["ops@example.com"]
"#,
            port = mail.port,
            ca = mail.ca().display(),
        );
        let s = Server::new(&config);
        let pw = s._dir.path().join("pw");
        std::fs::write(&pw, SMTP_PASSWORD).unwrap();
        opslet(&s.data, &["secret", "set", "smtp-password", "--file", pw.to_str().unwrap()]);
        let (_, status) = s.run("backup-db", json!({}));
        assert_eq!(status, "error");
        let msgs = mail.wait_for(1, Duration::from_secs(20));
        assert!(msgs[0].contains("backup-db") && msgs[0].contains("X-Peer"), "{mode}: {}", msgs[0]);
        let d = s.settled(1, Duration::from_secs(20));
        assert_eq!(d[0]["status"], "delivered", "{mode}: {d:#?}");

        // The password never reaches a record.
        let all = serde_json::to_string(&d).unwrap();
        assert!(!all.contains(SMTP_PASSWORD), "{mode}: the password in the records: {all}");
        assert_eq!(mail.messages().len(), 1, "{mode}: nothing more arrived");
    }

    // A server whose certificate opslet does not trust (no `ca`): not delivered, and said why.
    let mail = smtp::Smtp::start_tls("starttls", "opslet", SMTP_PASSWORD);
    let config = format!(
        "[notify]\nattempts = 1\n[notify.smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"opslet@example.com\"\ntls = \"starttls\"\n\
         [[notify.rule]]\non = [\"failure\"]\nemail = [\"ops@example.com\"]\n",
        mail.port
    );
    let s = Server::new(&config);
    s.run("backup-db", json!({}));
    let d = s.settled(1, Duration::from_secs(20));
    assert_eq!(d[0]["status"], "failed", "{d:#?}");
    let all = serde_json::to_string(&d).unwrap().to_lowercase();
    assert!(all.contains("certificate") || all.contains("tls"), "the failure names the certificate: {all}");
    assert!(mail.messages().is_empty());
}
