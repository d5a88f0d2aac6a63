//! Attacks on approvals, schedules and notifications, against a real `opslet serve`.
//!
//! Each test tries one attack from an operator, viewer, admin, webhook sender or applet
//! publisher, and checks that it is refused.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

#[path = "common/serve.rs"]
mod serve_proc;

struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `opslet --server URL ARGS` as `user`.
    fn remote(&self, user: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["--server", &self.base])
            .args(args)
            .env("OPSLET_TOKEN", &self.tokens[user])
            .env_remove("OPSLET_DATA_DIR")
            .env_remove("OPSLET_CONFIG")
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

fn opslet(data: &Path, args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn write_applet(dir: &Path, name: &str, manifest: &str, main: &str) -> PathBuf {
    let d = dir.join(format!("applet-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest}")).unwrap();
    std::fs::write(d.join("main.lua"), main).unwrap();
    d
}

const TAGGER_MANIFEST: &str = r#"
[params.hosts]
type = "host-selector"
required = true
[params.note]
type = "string"
required = true
[permissions]
cmdb = ["read", "write"]
"#;

const TAGGER: &str = r#"
return function(p, ctx)
  local n = 0
  for _, h in ipairs(cmdb.hosts(p.hosts)) do
    cmdb.set(h.name, { tags = { note = p.note } })
    n = n + 1
  end
  return { changed = n, dry_run = ctx.dry_run }
end
"#;

/// One approval (an admin, or anyone in group sre) for any cmdb write.
const POLICY: &str = r#"
[approvals]
expire = "1h"

[[approvals.rule]]
name = "inventory-writes"
module = "cmdb"
actions = ["write"]
approvals = 1
roles = ["admin"]
groups = ["sre"]

[[approvals.rule]]
name = "prod-config"
module = "config"
actions = ["publish"]
env = ["prod"]
roles = ["admin"]
"#;

/// A data dir with `config` (opslet.toml, after the policy), applets `tag-hosts` (risky),
/// `tag-count`, extra applets from `setup`, hosts web1/web2/db1, accounts alice and bob
/// (operators, group sre), carol (admin), dave (operator, group web), vic (viewer), aud
/// (auditor); alice, bob and dave may run `tag-*` and `cfg-*`. Then the server.
fn lab(config: &str, setup: impl FnOnce(&Path, &Path)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("opslet.toml"), format!("{POLICY}\n{config}\n[serve]\nshutdown_grace = \"1s\"\n")).unwrap();
    let tagger = write_applet(dir.path(), "tag-hosts", TAGGER_MANIFEST, TAGGER);
    opslet(&data, &["publish", tagger.to_str().unwrap()]);
    let counter =
        write_applet(dir.path(), "tag-count", "[permissions]\ncmdb = [\"read\"]\n", "return function() return #cmdb.hosts('*') end");
    opslet(&data, &["publish", counter.to_str().unwrap()]);
    for h in ["web1", "web2", "db1"] {
        opslet(&data, &["cmdb", "host", "add", h, "--address", "192.0.2.1", "--group", if h.starts_with("web") { "web" } else { "db" }]);
    }
    let mut tokens = std::collections::HashMap::new();
    for (user, role, groups) in [
        ("alice", "operator", vec!["sre"]),
        ("bob", "operator", vec!["sre"]),
        ("carol", "admin", vec![]),
        ("dave", "operator", vec!["web"]),
        ("vic", "viewer", vec![]),
        ("aud", "auditor", vec![]),
    ] {
        let mut args = vec!["user", "add", user, "--role", role];
        for g in &groups {
            args.extend(["--group", g]);
        }
        opslet(&data, &args);
        tokens.insert(user, opslet(&data, &["token", "create", user]));
    }
    for u in ["alice", "bob", "dave"] {
        opslet(&data, &["grant", "add", u, "tag-*"]);
        opslet(&data, &["grant", "add", u, "cfg-*"]);
    }
    setup(dir.path(), &data);
    let (child, addr) = serve_proc::spawn(&data, &[]);
    Server { child, base: format!("http://{addr}"), dir, tokens }
}

fn rt() -> tokio::runtime::Runtime {
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn call(s: &Server, method: &str, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", s.base);
    let mut req = match method {
        "POST" => client.post(&url),
        "DELETE" => client.delete(&url),
        _ => client.get(&url),
    };
    req = req.header("Authorization", format!("Bearer {}", s.tokens[user]));
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Polls a job (as carol, the admin) until `done(job)`.
async fn job_until(s: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (code, job) = call(s, "GET", &format!("/api/v1/jobs/{id}"), "carol", None).await;
        assert_eq!(code, 200, "{job}");
        if done(&job) {
            return job;
        }
        last = job;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never got there: {last}");
}

fn planned(job: &Value) -> bool {
    job["approval"]["planning"] == false
}

fn ended(job: &Value) -> bool {
    job["finished_at"].is_string()
}

/// `user` asks for a run of tag-hosts; returns the job id once its plan is there.
async fn ask(s: &Server, user: &str, hosts: &str) -> String {
    let (code, body) = call(s, "POST", "/api/v1/applets/tag-hosts/run", user, Some(json!({ "hosts": hosts, "note": "n" }))).await;
    assert_eq!((code, body["status"].as_str()), (202, Some("awaiting_approval")), "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    job_until(s, &id, planned).await;
    id
}

fn host_note(data: &Path, host: &str) -> Option<String> {
    let hosts: Value = serde_json::from_str(&opslet(data, &["cmdb", "host", "list", "--format", "json"])).unwrap();
    let h = hosts.as_array().unwrap().iter().find(|h| h["name"] == host).cloned().unwrap();
    h["tags"]["note"].as_str().map(str::to_string)
}

fn audit_of(s: &Server, job: &str) -> Vec<Value> {
    rt().block_on(async {
        let (code, v) = call(s, "GET", &format!("/api/v1/audit?run={job}&limit=1000"), "carol", None).await;
        assert_eq!(code, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    })
}

// ---- attacks that once got through ---------------------------------------------------------------

/// Attack: a viewer asks `opslet --server URL approvals` for every run awaiting approval (its
/// requester, params, whole plan). It shows what `GET /api/v1/approvals` shows: the runs the
/// caller may decide on, their own, and all only to those who read all jobs.
#[test]
fn the_remote_cli_lists_approvals_no_wider_than_the_http_route() {
    let s = lab("", |_, _| {});
    let id = rt().block_on(ask(&s, "alice", "web1"));
    for outsider in ["vic", "dave"] {
        let (code, list) = rt().block_on(call(&s, "GET", "/api/v1/approvals", outsider, None));
        assert_eq!(code, 200, "{list}");
        assert!(!list.to_string().contains(&id), "HTTP shows {outsider} alice's request: {list}");
        let o = s.remote(outsider, &["approvals", "--format", "json"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.contains(&id),
            "`opslet --server approvals` shows {outsider} alice's request (its params and plan), which GET /api/v1/approvals hides:\n{out}"
        );
    }
}

/// Attack: self-approval through a schedule. An admin saves a schedule owned by an operator
/// and runs it now, then approves the run alone. Whoever made, changed or ran a schedule asked
/// for its runs, and may not approve them.
#[test]
fn whoever_runs_a_schedule_now_may_not_approve_that_run() {
    let s = lab("", |_, _| {});
    rt().block_on(async {
        let (code, v) = call(
            &s,
            "POST",
            "/api/v1/schedules",
            "carol",
            Some(json!({ "name": "retag", "applet": "tag-hosts", "cron": "0 0 1 1 *", "owner": "alice",
                         "params": { "hosts": "db1", "note": "by-carol" }, "paused": true })),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        let (code, v) = call(&s, "POST", "/api/v1/schedules/retag/run", "carol", None).await;
        assert_eq!(code, 202, "{v}");
        let id = v["job_id"].as_str().unwrap().to_string();
        let job = job_until(&s, &id, planned).await;
        assert_eq!((job["status"].as_str(), job["user"].as_str()), (Some("awaiting_approval"), Some("alice")), "{job}");
        assert_eq!(job["note"], "run now by carol");
        let (code, v) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "carol", Some(json!({ "message": "lgtm" }))).await;
        let job = job_until(&s, &id, |j| j["status"] != "awaiting_approval" || code != 200).await;
        assert_eq!(code, 403, "carol asked for this run (run now) and approved it herself: {v}\njob: {}", job["status"]);
    });
    assert_eq!(host_note(&s.data(), "db1"), None, "the run carol asked for and approved herself ran");
}

/// Attack: an `env` rule is decided by the plan, and the plan is the applet's own dry run. An
/// applet that does nothing in its dry run and publishes to prod in the real run is released
/// without approval (`approval.not_needed`), but the real run may not publish to an environment
/// nobody approved: it never connects to the prod host (a TCP listener of this test).
#[test]
fn an_env_rule_is_not_dodged_by_a_dry_run_that_plans_nothing() {
    let prod = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = prod.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    {
        let hits = Arc::clone(&hits);
        std::thread::spawn(move || {
            for c in prod.incoming() {
                hits.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut c) = c {
                    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = c.read(&mut [0u8; 64]);
                }
            }
        });
    }
    let ssh = "[ssh]\nconnect_timeout = \"3s\"\n[[ssh.credentials]]\nhosts = \"*\"\nuser = \"ops\"\nkey_secret = \"ssh-key\"\n";
    let s = lab(ssh, |dir, data| {
        let key = dir.join("id_ed25519");
        let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&o.stderr));
        opslet(data, &["secret", "set", "ssh-key", "--file", key.to_str().unwrap()]);
        let p = port.to_string();
        opslet(data, &["cmdb", "host", "add", "prod1", "--address", "127.0.0.1", "--port", &p, "--tag", "env=prod"]);
        let item = dir.join("app.toml");
        std::fs::write(&item, "name = \"app\"\npath = \"/etc/app.conf\"\ntemplate = \"port = {{ port }}\\n\"\n[values]\nport = 7070\n")
            .unwrap();
        opslet(data, &["config", "set", item.to_str().unwrap(), "-m", "first"]);
        let sneak = write_applet(
            dir,
            "cfg-sneak",
            "[permissions]\nconfig = [\"read\", \"publish\"]\n",
            r#"return function(p, ctx)
  if ctx.dry_run then return { planned = "nothing" } end
  return config.publish("app", "prod1", { env = "prod" })
end"#,
        );
        opslet(data, &["publish", sneak.to_str().unwrap()]);
    });
    rt().block_on(async {
        let (code, body) = call(&s, "POST", "/api/v1/applets/cfg-sneak/run", "alice", Some(json!({}))).await;
        assert_eq!((code, body["status"].as_str()), (202, Some("awaiting_approval")), "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let job = job_until(&s, &id, planned).await;
        // Give the released run (if any) time to reach the prod host.
        let mut job = job;
        for _ in 0..100 {
            if ended(&job) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            job = call(&s, "GET", &format!("/api/v1/jobs/{id}"), "carol", None).await.1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "a run nobody approved connected to the prod host to publish there (rule prod-config); job: status {} decisions {} rules {} error {}",
            job["status"],
            job["approval"]["decisions"],
            job["approval"]["rules"],
            job["error"]
        );
    });
}

/// Attack: once an `env` rule is settled as not needed, the job keeps `approval` with no rules;
/// a viewer reads it as if they were an approver (every rule of none allows them). Only a job
/// with rules lets its approvers read it.
#[test]
fn a_job_released_as_not_needing_approval_is_not_readable_by_everyone() {
    let s = lab("", |dir, data| {
        let quiet = write_applet(
            dir,
            "cfg-quiet",
            "[params.ticket]\ntype = \"string\"\ndefault = \"CHG-1\"\n[permissions]\nconfig = [\"read\", \"publish\"]\n",
            r#"return function(p) log.info("internal detail for alice only"); return { internal = "alice's result " .. p.ticket } end"#,
        );
        opslet(data, &["publish", quiet.to_str().unwrap()]);
    });
    rt().block_on(async {
        let (code, body) = call(&s, "POST", "/api/v1/applets/cfg-quiet/run", "alice", Some(json!({ "ticket": "CHG-42" }))).await;
        assert_eq!(code, 202, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let job = job_until(&s, &id, ended).await;
        assert_eq!(job["status"], "ok", "{job}");
        assert_eq!(job["approval"]["rules"], json!([]), "{job}");
        // dave (another operator, not an approver) and vic (a viewer) read their own jobs only.
        for outsider in ["dave", "vic"] {
            let (code, v) = call(&s, "GET", &format!("/api/v1/jobs/{id}"), outsider, None).await;
            assert_eq!(code, 403, "{outsider} reads alice's job: {v}");
        }
    });
}

/// Attack: `schedule add " NAME" --replace` (a padded name, saved trimmed) by an operator, to
/// replace another user's (here an admin's) schedule through the remote CLI. The check looks
/// the old schedule up by the name as it is saved, and refuses.
#[test]
fn an_operator_cannot_replace_anothers_schedule_with_a_padded_name() {
    let s = lab("", |_, _| {});
    rt().block_on(async {
        let (code, v) = call(
            &s,
            "POST",
            "/api/v1/schedules",
            "carol",
            Some(json!({ "name": "carol-nightly", "applet": "tag-count", "cron": "0 3 * * *", "paused": true })),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        // Over HTTP the check is right.
        let (code, v) = call(
            &s,
            "POST",
            "/api/v1/schedules",
            "alice",
            Some(json!({ "name": " carol-nightly", "applet": "tag-count", "cron": "* * * * *", "replace": true })),
        )
        .await;
        assert_eq!(code, 403, "{v}");
    });
    let o = s.remote("alice", &["schedule", "add", " carol-nightly", "--replace", "--applet", "tag-count", "--cron", "* * * * *"]);
    let after = rt().block_on(call(&s, "GET", "/api/v1/schedules/carol-nightly", "carol", None)).1;
    assert!(
        !o.status.success() && after["owner"] == "carol" && after["cron"] == "0 3 * * *",
        "alice replaced carol's schedule through the remote CLI: exit {:?}, stderr {}\nnow: {after}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Refused (regression): a secret param's value given with the wrong type through a webhook
/// delivery (its params are checked by the run) is not quoted, whole or in part, in the job's
/// error (which failure notifications carry) nor in the audit log.
#[test]
fn a_bad_secret_param_is_not_quoted_in_part_in_the_jobs_error() {
    const PIN: &str = "sk-live-0123456789abcdefghijklmnopqrstuvwxyz-TAIL-OF-THE-SECRET";
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let s = lab("", |dir, data| {
        let a = write_applet(dir, "tag-pin", "[params.pin]\ntype = \"integer\"\nsecret = true\n", "return function(p) return 'ok' end");
        opslet(data, &["publish", a.to_str().unwrap()]);
        tx.send(opslet(data, &["hook", "add", "pinhook", "--applet", "tag-pin", "--map", "pin=$.pin"])).unwrap();
    });
    let secret = rx.recv().unwrap();
    let id = rt().block_on(async {
        let body = json!({ "pin": PIN }).to_string();
        let ts = chrono::Utc::now().timestamp();
        let resp = reqwest::Client::new()
            .post(format!("{}/hooks/pinhook", s.base))
            .header("X-Opslet-Timestamp", ts.to_string())
            .header("X-Opslet-Signature", opslet::service::hooks::sign(&secret, ts, body.as_bytes()))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let id = resp.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
        let job = job_until(&s, &id, ended).await;
        assert_eq!(job["status"], "invalid_params", "{job}");
        let text = job.to_string();
        assert!(!text.contains(&PIN[..20]), "part of the secret param is in the job: {text}");
        id
    });
    let audit = serde_json::to_string(&audit_of(&s, &id)).unwrap();
    assert!(!audit.contains(&PIN[..20]), "part of the secret param is in the audit log: {audit}");
}

// ---- attacks that are refused (regression tests) --------------------------------------------

/// The requester may not approve their own run over HTTP nor the remote CLI; an approver
/// outside the rule (dave, group web; vic, viewer) is refused; a second approval by the same
/// approver is refused; a viewer may not read the job.
#[test]
fn self_approval_and_outsiders_are_refused_on_every_edge() {
    let s = lab("", |_, _| {});
    let id = rt().block_on(ask(&s, "alice", "web1"));
    rt().block_on(async {
        for who in ["alice", "dave", "vic"] {
            let (code, v) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), who, Some(json!({ "message": "me" }))).await;
            assert_eq!(code, 403, "{who} approved: {v}");
        }
        // Outsiders may not reject (end) it either, nor withdraw it.
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{id}/reject"), "dave", Some(json!({ "message": "no" }))).await;
        assert_eq!(code, 403);
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{id}/cancel"), "bob", None).await;
        assert_eq!(code, 403);
        for who in ["dave", "vic"] {
            let (code, _) = call(&s, "GET", &format!("/api/v1/jobs/{id}"), who, None).await;
            assert_eq!(code, 403, "{who} reads alice's waiting job");
        }
    });
    for who in ["alice", "dave", "vic"] {
        let o = s.remote(who, &["approve", &id, "-m", "me"]);
        assert!(!o.status.success(), "{who} approved over the remote CLI: {}", String::from_utf8_lossy(&o.stdout));
    }
    let job = rt().block_on(job_until(&s, &id, |_| true));
    assert_eq!(
        (job["status"].as_str(), job["approval"]["decisions"].as_array().map(Vec::len)),
        (Some("awaiting_approval"), Some(0)),
        "{job}"
    );
    assert_eq!(host_note(&s.data(), "web1"), None);
}

/// With two approvals needed (a second rule), the same approver counts once: a second approval
/// by bob is refused and the run still waits; carol's makes two, and it runs.
#[test]
fn one_approver_counts_once() {
    let extra = "[[approvals.rule]]\nname = \"double\"\nmodule = \"cmdb\"\nactions = [\"write\"]\napprovals = 2\nroles = [\"admin\"]\ngroups = [\"sre\"]\n";
    let s = lab(extra, |_, _| {});
    let id = rt().block_on(ask(&s, "alice", "web1"));
    rt().block_on(async {
        assert_eq!(call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "bob", None).await.0, 200);
        let (code, v) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "bob", None).await;
        assert_eq!(code, 403, "{v}");
        let o = s.remote("bob", &["approve", &id]);
        assert!(!o.status.success(), "bob approved twice over the remote CLI");
        let job = job_until(&s, &id, |_| true).await;
        assert_eq!(job["status"], "awaiting_approval", "{job}");
        assert_eq!(call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "carol", None).await.0, 200);
        assert_eq!(job_until(&s, &id, ended).await["status"], "ok");
    });
}

/// Two approvers racing on a run that needs one approval: one decision wins, the run happens
/// once, the other is told it is no longer waiting.
#[test]
fn racing_approvals_run_the_job_once() {
    let s = lab("", |_, _| {});
    let id = rt().block_on(ask(&s, "alice", "web2"));
    let (a, b) = std::thread::scope(|sc| {
        let approve = |who: &'static str| {
            let (s, id) = (&s, id.clone());
            sc.spawn(move || rt().block_on(call(s, "POST", &format!("/api/v1/jobs/{id}/approve"), who, None)).0)
        };
        let (ta, tb) = (approve("bob"), approve("carol"));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut codes = [a, b];
    codes.sort();
    assert_eq!(codes, [200, 400], "one approval wins, the other finds it decided");
    let job = rt().block_on(job_until(&s, &id, ended));
    assert_eq!(job["status"], "ok", "{job}");
    assert_eq!(job["approval"]["decisions"].as_array().unwrap().len(), 1, "{job}");
    let starts = audit_of(&s, &id).iter().filter(|r| r["kind"] == "run.start" && r["data"]["dry_run"] != true).count();
    assert_eq!(starts, 1, "the approved run started once");
    assert_eq!(host_note(&s.data(), "web2").as_deref(), Some("n"));
}

/// A dry run is never held, and changes nothing.
#[test]
fn a_dry_run_is_not_held_and_changes_nothing() {
    let s = lab("", |_, _| {});
    rt().block_on(async {
        let (code, v) =
            call(&s, "POST", "/api/v1/applets/tag-hosts/run?dry_run=true", "alice", Some(json!({ "hosts": "db1", "note": "dry" }))).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["result"]["dry_run"], true, "{v}");
    });
    assert_eq!(host_note(&s.data(), "db1"), None);
}

/// Schedules of others: an operator may not save one for another owner, replace, pause, resume,
/// remove, run now or show another's (HTTP and the remote CLI); a viewer may not save one; an
/// operator may not schedule an applet they have no grant for.
#[test]
fn schedules_of_others_are_out_of_reach() {
    let s = lab("", |_, _| {});
    rt().block_on(async {
        let (code, v) = call(
            &s,
            "POST",
            "/api/v1/schedules",
            "bob",
            Some(json!({ "name": "bobs", "applet": "tag-count", "cron": "0 3 * * *", "paused": true })),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        // For another owner, or an applet without a grant.
        for body in [
            json!({ "name": "as-bob", "applet": "tag-count", "cron": "0 3 * * *", "owner": "bob" }),
            json!({ "name": "as-carol", "applet": "tag-count", "cron": "0 3 * * *", "owner": "carol" }),
            json!({ "name": "ungranted", "applet": "secret-thing", "cron": "0 3 * * *" }),
            json!({ "name": "bobs", "applet": "tag-count", "cron": "* * * * *", "replace": true }),
        ] {
            let (code, v) = call(&s, "POST", "/api/v1/schedules", "alice", Some(body.clone())).await;
            assert!(code == 403 || code == 422, "{body} -> {code} {v}");
            assert_ne!(code, 201);
        }
        let (code, _) =
            call(&s, "POST", "/api/v1/schedules", "vic", Some(json!({ "name": "v", "applet": "tag-count", "cron": "0 3 * * *" }))).await;
        assert_eq!(code, 403);
        for (method, path) in [
            ("POST", "/api/v1/schedules/bobs/pause"),
            ("POST", "/api/v1/schedules/bobs/resume"),
            ("POST", "/api/v1/schedules/bobs/run"),
            ("DELETE", "/api/v1/schedules/bobs"),
            ("GET", "/api/v1/schedules/bobs"),
        ] {
            let (code, v) = call(&s, method, path, "alice", None).await;
            assert_eq!(code, 403, "{method} {path}: {v}");
        }
        let (_, list) = call(&s, "GET", "/api/v1/schedules", "alice", None).await;
        assert_eq!(list, json!([]), "alice sees only her own");
    });
    for args in [
        vec!["schedule", "add", "as-bob2", "--applet", "tag-count", "--cron", "0 3 * * *", "--owner", "bob"],
        vec!["schedule", "add", "bobs", "--replace", "--applet", "tag-count", "--cron", "* * * * *"],
        vec!["schedule", "pause", "bobs"],
        vec!["schedule", "rm", "bobs"],
        vec!["schedule", "run-now", "bobs"],
        vec!["schedule", "show", "bobs"],
    ] {
        let o = s.remote("alice", &args);
        assert!(!o.status.success(), "alice: opslet --server {args:?} worked: {}", String::from_utf8_lossy(&o.stderr));
    }
    let o = s.remote("alice", &["schedule", "list", "--format", "json"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("bobs"), "{}", String::from_utf8_lossy(&o.stdout));
    let after = rt().block_on(call(&s, "GET", "/api/v1/schedules/bobs", "carol", None)).1;
    assert_eq!((after["owner"].as_str(), after["cron"].as_str()), (Some("bob"), Some("0 3 * * *")), "{after}");
}

/// A schedule keeps no secret param's value, through HTTP and the remote CLI.
#[test]
fn a_schedule_refuses_secret_param_values() {
    let s = lab("", |dir, data| {
        let a = write_applet(dir, "tag-tok", "[params.token]\ntype = \"string\"\nsecret = true\n", "return function() return 1 end");
        opslet(data, &["publish", a.to_str().unwrap()]);
    });
    rt().block_on(async {
        let (code, v) = call(
            &s,
            "POST",
            "/api/v1/schedules",
            "alice",
            Some(json!({ "name": "t", "applet": "tag-tok", "cron": "0 3 * * *", "params": { "token": "hunter2-secret" } })),
        )
        .await;
        assert_eq!(code, 422, "{v}");
        assert!(!v.to_string().contains("hunter2-secret"), "{v}");
    });
    let o = s.remote("alice", &["schedule", "add", "t", "--applet", "tag-tok", "--cron", "0 3 * * *", "-p", "token=hunter2-secret"]);
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("hunter2-secret"));
    let audit = rt().block_on(call(&s, "GET", "/api/v1/audit?limit=10000", "carol", None)).1;
    assert!(!audit.to_string().contains("hunter2-secret"), "the secret reached the audit log");
}

/// Notification records are for admins only; approvals and jobs of others are not listed to
/// outsiders over HTTP.
#[test]
fn notifications_and_others_jobs_are_not_listed_to_outsiders() {
    let s = lab("", |_, _| {});
    let id = rt().block_on(ask(&s, "alice", "db1"));
    rt().block_on(async {
        for who in ["alice", "vic", "aud", "dave"] {
            let (code, _) = call(&s, "GET", "/api/v1/notifications", who, None).await;
            assert_eq!(code, 403, "{who} lists notifications");
        }
        let (_, jobs) = call(&s, "GET", "/api/v1/jobs?user=alice", "vic", None).await;
        assert!(!jobs.to_string().contains(&id), "{jobs}");
        // The auditor sees it, without being able to decide.
        let (_, list) = call(&s, "GET", "/api/v1/approvals", "aud", None).await;
        let mine = list["approvals"].as_array().unwrap().iter().find(|a| a["job"]["id"] == json!(id)).cloned().unwrap();
        assert_eq!(mine["may_decide"], false, "{mine}");
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "aud", None).await;
        assert_eq!(code, 403);
    });
    let o = s.remote("vic", &["notify", "list"]);
    assert!(!o.status.success(), "a viewer lists notifications over the remote CLI");
}
