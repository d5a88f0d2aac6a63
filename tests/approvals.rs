//! Approvals for risky runs, against a real `opslet serve`: N approvers, self-approval refused,
//! approvers outside the rule refused, rejection, expiry, exactly the approved hash runs after
//! a newer version is published, a run without a plan waits all the same, and decisions from
//! the CLI (`--server`) and over HTTP; requests survive a restart.

use std::path::Path;
use std::process::{Child, Command, Output};

use serde_json::{Value, json};

#[path = "common/serve.rs"]
mod serve_proc;

struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Server {
    fn stop(&mut self) {
        serve_proc::stop(&mut self.child);
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn start_again(&mut self) {
        self.start_again_with(&[]);
    }

    fn start_again_with(&mut self, flags: &[&str]) {
        let listen = self.base.trim_start_matches("http://").to_string();
        let (child, _) = serve_proc::spawn_at(&self.data(), &listen, flags);
        self.child = child;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn opslet_out(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).envs(env.iter().copied()).output().unwrap()
}

fn opslet(data: &Path, args: &[&str]) -> String {
    let o = opslet_out(data, args, &[]);
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
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

/// Tags every host it picks with `note` and its own version.
const TAGGER: &str = r#"
return function(p, ctx)
  local n = 0
  for _, h in ipairs(cmdb.hosts(p.hosts)) do
    cmdb.set(h.name, { tags = { note = p.note, by = ctx.version } })
    n = n + 1
  end
  return { changed = n, version = ctx.version, hash = ctx.hash, dry_run = ctx.dry_run }
end
"#;

const POLICY: &str = r#"
[approvals]
expire = "EXPIRE"

[[approvals.rule]]
name = "inventory-writes"
module = "cmdb"
actions = ["write"]
approvals = 2
roles = ["admin"]
groups = ["sre"]
"#;

fn write_applet(dir: &Path, name: &str, version: &str, manifest: &str, main: &str) -> std::path::PathBuf {
    let d = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"{version}\"\n{manifest}")).unwrap();
    std::fs::write(d.join("main.lua"), main).unwrap();
    d
}

/// A data dir with the policy, the tagger, a harmless applet, hosts and users, then the server.
fn server(expire: &str) -> Server {
    server_with(&POLICY.replace("EXPIRE", expire), &[])
}

/// Like `server`, with this opslet.toml (and `serve` flags).
fn server_with(config: &str, flags: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("opslet.toml"), format!("{config}\n[serve]\nshutdown_grace = \"1s\"\n")).unwrap();
    let v1 = write_applet(dir.path(), "tag-hosts", "1.0.0", TAGGER_MANIFEST, TAGGER);
    opslet(&data, &["publish", v1.to_str().unwrap()]);
    let reader = write_applet(
        dir.path(),
        "tag-count",
        "1.0.0",
        "[permissions]\ncmdb = [\"read\"]\n",
        "return function() return #cmdb.hosts('*') end",
    );
    opslet(&data, &["publish", reader.to_str().unwrap()]);
    let unplannable = write_applet(
        dir.path(),
        "tag-blind",
        "1.0.0",
        TAGGER_MANIFEST,
        "return function(p, ctx) if ctx.dry_run then error('this applet cannot say what it would do') end return 'done' end",
    );
    opslet(&data, &["publish", unplannable.to_str().unwrap()]);
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
    }
    let slow = write_applet(dir.path(), "tag-slow", "1.0.0", "", "return function() while true do end end");
    opslet(&data, &["publish", slow.to_str().unwrap()]);
    let (child, addr) = serve_proc::spawn(&data, flags);
    Server { child, base: format!("http://{addr}"), dir, tokens }
}

fn rt() -> tokio::runtime::Runtime {
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn call(s: &Server, method: &str, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", s.base);
    let mut req = if method == "POST" { client.post(&url) } else { client.get(&url) };
    req = req.header("Authorization", format!("Bearer {}", s.tokens[user]));
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Polls a job until `done(job)`.
async fn job_until(s: &Server, user: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (code, job) = call(s, "GET", &format!("/api/v1/jobs/{id}"), user, None).await;
        assert_eq!(code, 200, "{job}");
        if done(&job) {
            return job;
        }
        last = job;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {id} never got there: {last}");
}

fn planned(job: &Value) -> bool {
    job["approval"]["planning"] == false
}

fn ended(job: &Value) -> bool {
    !matches!(job["status"].as_str(), Some("queued" | "running" | "awaiting_approval"))
}

async fn ask(s: &Server, user: &str, applet: &str, params: Value) -> String {
    let (code, body) = call(s, "POST", &format!("/api/v1/applets/{applet}/run"), user, Some(params)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "awaiting_approval", "{body}");
    body["job_id"].as_str().unwrap().to_string()
}

fn host_tags(data: &Path, host: &str) -> Value {
    let hosts: Value = serde_json::from_str(&opslet(data, &["cmdb", "host", "list", "--format", "json"])).unwrap();
    hosts.as_array().unwrap().iter().find(|h| h["name"] == host).unwrap()["tags"].clone()
}

fn audit_kinds(data: &Path, job: &str) -> Vec<(String, String)> {
    let out = opslet(data, &["audit", "list", "--run", job, "--format", "json"]);
    let records: Value = serde_json::from_str(&out).unwrap();
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap().to_string(), r["actor"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn a_risky_run_waits_for_two_approvers_and_runs_exactly_what_they_approved() {
    let s = server("1h");
    let data = s.data();
    let (id, hash_v1) = rt().block_on(async {
        // Reading is not risky: it runs at once.
        let (code, body) = call(&s, "POST", "/api/v1/applets/tag-count/run", "alice", Some(json!({}))).await;
        assert_eq!((code, body["result"].clone()), (200, json!(3)), "{body}");
        // `show` and the API say which applets wait, and why.
        let (_, shown) = call(&s, "GET", "/api/v1/applets/tag-hosts", "vic", None).await;
        assert_eq!(shown["approval"]["required"], true, "{shown}");
        assert_eq!(shown["approval"]["rules"][0]["approvers"], "role admin or group sre");
        let (_, shown) = call(&s, "GET", "/api/v1/applets/tag-count", "vic", None).await;
        assert_eq!(shown["approval"]["required"], false);

        // A synchronous request of a risky run is answered at once: it waits as a job.
        let (code, body) =
            call(&s, "POST", "/api/v1/applets/tag-hosts/run", "alice", Some(json!({ "hosts": "group:web", "note": "patch-42" }))).await;
        assert_eq!((code, body["status"].as_str()), (202, Some("awaiting_approval")), "{body}");
        assert_eq!(body["approval"]["needed"], 2);
        let id = body["job_id"].as_str().unwrap().to_string();

        // The plan: the dry run's module calls, per host; nothing changed yet.
        let job = job_until(&s, "alice", &id, planned).await;
        let plan = job["approval"]["plan"].as_array().unwrap();
        let targets: Vec<&str> = plan.iter().map(|st| st["target"].as_str().unwrap()).collect();
        assert_eq!(targets, ["web1", "web2"], "{job}");
        assert_eq!((plan[0]["module"].as_str(), plan[0]["action"].as_str()), (Some("cmdb"), Some("set")));
        assert_eq!(plan[0]["detail"]["after"]["tags"]["note"], "patch-42");
        assert_eq!(job["approval"]["plan_error"], Value::Null);
        assert!(host_tags(&data, "web1").get("note").is_none(), "a plan changes nothing");
        let hash_v1 = job["hash"].as_str().unwrap().to_string();

        // The approvers see it with its plan; the requester sees it too, and may not decide.
        let (_, list) = call(&s, "GET", "/api/v1/approvals", "bob", None).await;
        let mine = list["approvals"].as_array().unwrap().iter().find(|a| a["job"]["id"] == id.as_str()).unwrap().clone();
        assert_eq!((mine["may_decide"].clone(), mine["job"]["approval"]["plan"].as_array().unwrap().len()), (json!(true), 2));
        let (_, list) = call(&s, "GET", "/api/v1/approvals", "alice", None).await;
        let own = list["approvals"].as_array().unwrap().iter().find(|a| a["job"]["id"] == id.as_str()).unwrap().clone();
        assert!(own["why_not"].as_str().unwrap().contains("self-approval is refused"), "{own}");
        // Approvers read the job itself (its plan, later its end); others who may not decide do not.
        assert_eq!(call(&s, "GET", &format!("/api/v1/jobs/{id}"), "bob", None).await.0, 200);
        assert_eq!(call(&s, "GET", &format!("/api/v1/jobs/{id}"), "dave", None).await.0, 403);

        // Self-approval is refused; so is an approver outside the rule.
        let (code, err) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "alice", Some(json!({ "message": "me" }))).await;
        assert_eq!(code, 403, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("self-approval is refused"), "{err}");
        let (code, err) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "dave", None).await;
        assert_eq!(code, 403, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains("needs role admin or group sre"), "{err}");

        // Meanwhile a newer version is published and made current.
        let v2 = write_applet(s.dir.path(), "tag-hosts", "2.0.0", TAGGER_MANIFEST, &TAGGER.replace("by = ctx.version", "by = 'two'"));
        opslet(&data, &["publish", v2.to_str().unwrap()]);

        // First approval, by bob, over HTTP: one of two; bob cannot approve twice.
        let (code, after) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "bob", Some(json!({ "message": "looks right" }))).await;
        assert_eq!((code, after["status"].as_str()), (200, Some("awaiting_approval")), "{after}");
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "bob", None).await;
        assert_eq!(code, 403);
        assert!(host_tags(&data, "web1").get("note").is_none(), "one approval of two starts nothing");
        (id, hash_v1)
    });

    // The second approval, by carol, from the CLI through the server: the run starts.
    let out = opslet_out(&data, &["--server", &s.base, "approvals"], &[("OPSLET_TOKEN", &s.tokens["carol"])]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&id) && listed.contains("cmdb.set web1") && listed.contains("1 of 2 approvals"), "{listed}");
    let out = opslet_out(&data, &["--server", &s.base, "approve", &id, "-m", "change CHG-7"], &[("OPSLET_TOKEN", &s.tokens["carol"])]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved (2 of 2)"));

    rt().block_on(async {
        let job = job_until(&s, "alice", &id, ended).await;
        // Exactly the approved version ran, not the newer current one.
        assert_eq!(job["status"], "ok", "{job}");
        assert_eq!(job["result"]["hash"].as_str(), Some(hash_v1.as_str()));
        assert_eq!(job["result"]["version"], "1.0.0");
        assert_eq!(job["applet"], "tag-hosts@1.0.0");
        assert_eq!(job["result"]["dry_run"], false);
        let decisions: Vec<&str> = job["approval"]["decisions"].as_array().unwrap().iter().map(|d| d["user"].as_str().unwrap()).collect();
        assert_eq!(decisions, ["bob", "carol"]);
    });
    assert_eq!(host_tags(&data, "web1")["note"], "patch-42");
    assert_eq!(host_tags(&data, "web1")["by"], "1.0.0");
    assert!(host_tags(&data, "db1").get("note").is_none());

    // Every request and decision is in the audit log, with who made it.
    let kinds = audit_kinds(&data, &id);
    for (kind, actor) in [
        ("approval.request", "alice"),
        ("approval.plan", "alice"),
        ("approval.denied", "alice"),
        ("approval.denied", "dave"),
        ("approval.approve", "bob"),
        ("approval.approve", "carol"),
        ("approval.granted", "carol"),
        ("run.start", "alice"),
        ("run.end", "alice"),
    ] {
        assert!(kinds.iter().any(|(k, a)| k == kind && a == actor), "no {kind} by {actor} in {kinds:?}");
    }
}

#[test]
fn rejection_expiry_no_plan_and_the_cli_in_every_place() {
    let mut s = server("3s");
    let data = s.data();
    // In place (no server on the data dir) a risky run is refused, saying where approvals wait;
    // its dry run is not risky and shows what it would do.
    let bare = tempfile::tempdir().unwrap();
    let bare_data = bare.path().join("data");
    std::fs::create_dir_all(&bare_data).unwrap();
    std::fs::write(bare_data.join("opslet.toml"), POLICY.replace("EXPIRE", "1h")).unwrap();
    let folder = write_applet(bare.path(), "tag-hosts", "1.0.0", TAGGER_MANIFEST, TAGGER);
    opslet(&bare_data, &["publish", folder.to_str().unwrap()]);
    opslet(&bare_data, &["cmdb", "host", "add", "web1", "--address", "192.0.2.1"]);
    let out = opslet_out(&bare_data, &["run", "tag-hosts", "-p", "hosts=web1", "-p", "note=n"], &[]);
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs approval (cmdb write (rule inventory-writes))") && err.contains("opslet serve"), "{err}");
    let out = opslet_out(&bare_data, &["run", "tag-hosts", "-p", "hosts=web1", "-p", "note=n", "--dry-run"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = opslet(&bare_data, &["show", "tag-hosts"]);
    assert!(shown.contains("approval:   needed before a run") && shown.contains("2 approvals by role admin or group sre"), "{shown}");
    // An unpublished folder cannot wait for approval: said so.
    let out = opslet_out(&data, &["run", folder.to_str().unwrap(), "-p", "hosts=web1", "-p", "note=n"], &[]);
    assert_eq!(out.status.code(), Some(13));
    assert!(String::from_utf8_lossy(&out.stderr).contains("approvals are given to published versions only"));

    // Through the server, the CLI's risky run waits as a job: exit code 13 and how to approve it.
    let out = opslet_out(
        &data,
        &["--server", &s.base, "run", "tag-hosts", "-p", "hosts=db1", "-p", "note=cli"],
        &[("OPSLET_TOKEN", &s.tokens["alice"])],
    );
    assert_eq!(out.status.code(), Some(13), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("waits for approval") && err.contains("opslet approve"), "{err}");
    let cli_job = err.split("job ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();

    rt().block_on(async {
        // `k=v` params given to the CLI are what the request holds.
        let job = job_until(&s, "alice", &cli_job, planned).await;
        assert_eq!(job["approval"]["plan"][0]["target"], "db1", "{job}");
        assert_eq!(job["approval"]["via"], "remote-cli");

        // A rejection needs a reason, ends the job, and nothing runs.
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{cli_job}/reject"), "bob", None).await;
        assert_eq!(code, 400);
        let (code, job) =
            call(&s, "POST", &format!("/api/v1/jobs/{cli_job}/reject"), "bob", Some(json!({ "message": "not during the freeze" }))).await;
        assert_eq!((code, job["status"].as_str()), (200, Some("rejected")), "{job}");
        assert_eq!(job["error"], "rejected by bob: not during the freeze");
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{cli_job}/approve"), "carol", None).await;
        assert_eq!(code, 400, "a decided request takes no more decisions");

        // A run whose dry run fails still waits, saying it has no plan.
        let blind = ask(&s, "alice", "tag-blind", json!({ "hosts": "web1", "note": "x" })).await;
        let job = job_until(&s, "alice", &blind, planned).await;
        let why = job["approval"]["plan_error"].as_str().unwrap();
        assert!(why.contains("cannot say what it would do"), "{job}");
        assert_eq!(job["status"], "awaiting_approval");

        // Nobody decides: after `expire` (3 s) the request ends `expired`, and nothing ran.
        let expiring = ask(&s, "alice", "tag-hosts", json!({ "hosts": "web2", "note": "late" })).await;
        let job = job_until(&s, "alice", &expiring, ended).await;
        assert_eq!(job["status"], "expired", "{job}");
        assert!(job["error"].as_str().unwrap().contains("expired"), "{job}");
        let (code, err) = call(&s, "POST", &format!("/api/v1/jobs/{expiring}/approve"), "bob", None).await;
        assert_eq!(code, 400, "{err}");
        let job = job_until(&s, "alice", &blind, ended).await;
        assert_eq!(job["status"], "expired");
    });
    assert!(host_tags(&data, "web2").get("note").is_none());
    assert!(host_tags(&data, "db1").get("note").is_none());
    let kinds = audit_kinds(&data, &cli_job);
    assert!(kinds.iter().any(|(k, a)| k == "approval.reject" && a == "bob"), "{kinds:?}");
    assert!(!kinds.iter().any(|(k, _)| k == "run.start"), "a rejected run never starts: {kinds:?}");

    // A request waits through a restart of the server, and is approved after it.
    s.stop();
    std::fs::write(data.join("opslet.toml"), format!("{}\n[serve]\nshutdown_grace = \"1s\"\n", POLICY.replace("EXPIRE", "1h"))).unwrap();
    s.start_again();
    rt().block_on(async {
        let id = ask(&s, "bob", "tag-hosts", json!({ "hosts": "web2", "note": "after-restart" })).await;
        job_until(&s, "bob", &id, planned).await;
        s.stop();
        s.start_again();
        let (_, list) = call(&s, "GET", "/api/v1/approvals", "carol", None).await;
        assert!(list["approvals"].as_array().unwrap().iter().any(|a| a["job"]["id"] == id.as_str()), "{list}");
        for who in ["carol", "alice"] {
            let (code, j) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), who, Some(json!({ "message": "ok" }))).await;
            assert_eq!(code, 200, "{j}");
        }
        let job = job_until(&s, "bob", &id, ended).await;
        assert_eq!(job["status"], "ok", "{job}");
    });
    assert_eq!(host_tags(&data, "web2")["note"], "after-restart");
}

/// A job queued before a rule covered its applet (the rule came with a restart) waits for
/// approval when the server starts again; it does not run on the old terms.
#[test]
fn a_queued_job_that_a_new_rule_covers_waits_after_the_restart() {
    let flags = ["--run-threads", "1", "--queue", "4"];
    let mut s = server_with("", &flags);
    let data = s.data();
    let id = rt().block_on(async {
        // One CPU slot, taken by a run that computes forever: the tagger's job stays queued.
        let (code, _) = call(&s, "POST", "/api/v1/applets/tag-slow/run?async=true", "alice", Some(json!({}))).await;
        assert_eq!(code, 202);
        let (code, body) =
            call(&s, "POST", "/api/v1/applets/tag-hosts/run?async=true", "alice", Some(json!({ "hosts": "web1", "note": "queued" }))).await;
        assert_eq!(code, 202, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let (_, job) = call(&s, "GET", &format!("/api/v1/jobs/{id}"), "alice", None).await;
        assert_eq!(job["status"], "queued", "{job}");
        id
    });
    s.stop();
    std::fs::write(data.join("opslet.toml"), format!("{}\n[serve]\nshutdown_grace = \"1s\"\n", POLICY.replace("EXPIRE", "1h"))).unwrap();
    s.start_again_with(&flags);
    rt().block_on(async {
        let job = job_until(&s, "alice", &id, planned).await;
        assert_eq!(job["status"], "awaiting_approval", "{job}");
        assert_eq!(job["approval"]["plan"][0]["target"], "web1");
        for who in ["bob", "carol"] {
            let (code, j) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), who, Some(json!({ "message": "ok" }))).await;
            assert_eq!(code, 200, "{j}");
        }
        let job = job_until(&s, "alice", &id, ended).await;
        assert_eq!(job["status"], "ok", "{job}");
    });
    assert_eq!(host_tags(&data, "web1")["note"], "queued");
}

/// Every trigger goes through the same hold: a webhook delivery and a schedule's fire of a risky
/// applet wait for approval like a request over HTTP.
#[test]
fn webhook_deliveries_and_schedule_fires_wait_for_approval_too() {
    let s = server("1h");
    let data = s.data();
    let secret = opslet(&data, &["hook", "add", "inventory", "--applet", "tag-hosts", "--map", "hosts=$.hosts", "--map", "note=$.note"]);
    opslet(
        &data,
        &[
            "schedule",
            "add",
            "nightly-tag",
            "--applet",
            "tag-hosts",
            "--cron",
            "*/2 * * * * *",
            "-p",
            "hosts=db1",
            "-p",
            "note=nightly",
            "--owner",
            "alice",
        ],
    );
    rt().block_on(async {
        let body = json!({ "hosts": "web2", "note": "from-a-hook" }).to_string();
        let ts = chrono::Utc::now().timestamp();
        let resp = reqwest::Client::new()
            .post(format!("{}/hooks/inventory", s.base))
            .header("X-Opslet-Timestamp", ts.to_string())
            .header("X-Opslet-Signature", opslet::service::hooks::sign(&secret, ts, body.as_bytes()))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let hooked = resp.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
        let job = job_until(&s, "carol", &hooked, planned).await;
        assert_eq!((job["status"].as_str(), job["user"].as_str()), (Some("awaiting_approval"), Some("hook:inventory")), "{job}");
        assert_eq!(job["approval"]["plan"][0]["target"], "web2");

        // The schedule fires every 2 s: each fire is a job of alice's waiting for approval.
        let mut fired = Vec::new();
        for _ in 0..100 {
            let (_, list) = call(&s, "GET", "/api/v1/approvals", "carol", None).await;
            fired = list["approvals"].as_array().unwrap().iter().filter(|a| a["job"]["schedule"] == "nightly-tag").cloned().collect();
            if !fired.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let first = &fired[0]["job"];
        assert_eq!((first["user"].as_str(), first["approval"]["via"].as_str()), (Some("alice"), Some("schedule")), "{first}");
        // Its owner may not approve it; two others do, and it runs.
        let id = first["id"].as_str().unwrap().to_string();
        job_until(&s, "alice", &id, planned).await;
        let (code, _) = call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), "alice", None).await;
        assert_eq!(code, 403);
        for who in ["bob", "carol"] {
            assert_eq!(call(&s, "POST", &format!("/api/v1/jobs/{id}/approve"), who, None).await.0, 200);
        }
        assert_eq!(job_until(&s, "alice", &id, ended).await["status"], "ok");
    });
    assert_eq!(host_tags(&data, "db1")["note"], "nightly");
    assert!(host_tags(&data, "web2").get("note").is_none(), "the hook's run waits still");
}
