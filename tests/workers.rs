//! `opslet serve --queue nats://…` with `opslet worker` processes, against a real nats-server
//! with JetStream (tests/common/nats.rs): runs through a worker (sync, async, events, cancel),
//! the audit chain kept whole on the control plane, NATS going away and coming back, and a
//! worker killed in the middle of a run.

#[path = "common/nats.rs"]
mod nats;
#[path = "common/serve.rs"]
mod serve_proc;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn opslet(data: &Path, args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Kills its process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(nats: &nats::Nats, id: &str, extra_env: &[(&str, &str)]) -> Proc {
    tagged_worker(nats, id, "default", extra_env)
}

fn tagged_worker(nats: &nats::Nats, id: &str, tags: &str, extra_env: &[(&str, &str)]) -> Proc {
    worker_with(nats, id, tags, None, extra_env)
}

/// A worker, with its own opslet.toml (module settings) when given.
fn worker_with(nats: &nats::Nats, id: &str, tags: &str, config: Option<&Path>, extra_env: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
    c.args(["worker", "--queue", &nats.url(), "--id", id, "--tags", tags])
        // A worker has no data dir of its own: point it at an empty one to show it needs none.
        .env("OPSLET_DATA_DIR", dir.join("unused"))
        .env_remove("OPSLET_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    Proc(c.spawn().unwrap())
}

fn applet(dir: &Path, data: &Path, name: &str, manifest: &str, main: &str) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest}")).unwrap();
    std::fs::write(d.join("main.lua"), main).unwrap();
    opslet(data, &["publish", d.to_str().unwrap()]);
}

struct Setup {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    token: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("opslet.toml"), "[serve]\nshutdown_grace = \"1s\"\n").unwrap();
    applet(
        dir.path(),
        &data,
        "hello",
        "[params.n]\ntype = \"integer\"\nrequired = true\n",
        "return function(p, ctx) log.info('n is ' .. p.n) return { n = p.n + 1, caller = ctx.caller } end",
    );
    applet(dir.path(), &data, "slow", "", "return function() log.info('sleeping') time.sleep(30) return 1 end");
    applet(dir.path(), &data, "counter", "", "return function() return kv.incr('runs') end");
    applet(dir.path(), &data, "near-net-a", "[run]\nworker_tag = \"neta\"\n", "return function() return 'done' end");
    opslet(&data, &["user", "add", "ada", "--role", "admin"]);
    let token = opslet(&data, &["token", "create", "ada"]).trim().to_string();
    Setup { data, token, _dir: dir }
}

async fn call(base: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut r = match method {
        "POST" => c.post(&url),
        _ => c.get(&url),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn wait_job(base: &str, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (_, job) = call(base, token, "GET", &format!("/api/v1/jobs/{id}"), None).await;
        if done(&job) {
            return job;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "job {id} never got there: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rt() -> tokio::runtime::Runtime {
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn audit(data: &Path) -> Vec<Value> {
    serde_json::from_str(&opslet(data, &["audit", "list", "--format", "json", "--limit", "10000"])).unwrap()
}

#[test]
fn runs_go_through_a_worker_sync_async_with_events_and_cancel_and_the_audit_chain_stays_one() {
    let nats = nats::Nats::start();
    let s = setup();
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let serve = Proc(child);
    let base = format!("http://{addr}");
    let w = worker(&nats, "w1", &[]);
    let (serve_pid, worker_pid) = (serve.0.id(), w.0.id());
    rt().block_on(async {
        // Synchronous: the answer is the worker's result.
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run", Some(json!({ "n": 41 }))).await;
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["result"], json!({ "n": 42, "caller": "ada" }));
        assert!(r["logs"][0]["message"].as_str().unwrap().contains("n is 41"), "{r}");
        // Bad params are still refused by the control plane, field by field, before any queue.
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run", Some(json!({ "n": "x" }))).await;
        assert_eq!((code, r["error"]["fields"][0]["param"].as_str()), (422, Some("n")), "{r}");

        // Asynchronous, with its event stream.
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run?async=true", Some(json!({ "n": 1 }))).await;
        assert_eq!(code, 202, "{r}");
        let id = r["job_id"].as_str().unwrap().to_string();
        let job = wait_job(&base, &s.token, &id, |j| j["status"] == "ok").await;
        assert_eq!(job["result"]["n"], 2);
        assert!(job["started_at"].is_string() && job["applet"] == "hello@1.0.0", "{job}");

        // A slow run: its log line arrives on the event stream while it runs; cancel stops it
        // on the worker.
        let (_, r) = call(&base, &s.token, "POST", "/api/v1/applets/slow/run?async=true", None).await;
        let slow = r["job_id"].as_str().unwrap().to_string();
        let mut resp = reqwest::Client::new().get(format!("{base}/api/v1/jobs/{slow}/events")).bearer_auth(&s.token).send().await.unwrap();
        let mut seen = String::new();
        while !seen.contains("sleeping") {
            let chunk = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("the stream goes on");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let (code, _) = call(&base, &s.token, "POST", &format!("/api/v1/jobs/{slow}/cancel"), None).await;
        assert!(code == 200 || code == 202, "{code}");
        let job = wait_job(&base, &s.token, &slow, |j| j["status"] == "cancelled").await;
        assert!(job["finished_at"].is_string());
        let t = chrono::DateTime::parse_from_rfc3339(job["finished_at"].as_str().unwrap()).unwrap()
            - chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
        assert!(t.num_seconds() < 20, "cancelled, not slept out: {job}");

        // State kept in the control plane's store is refused on a worker, saying why, rather
        // than written to the worker's cache and lost.
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/counter/run", None).await;
        assert_eq!((code, r["status"].as_str()), (200, Some("error")), "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("kv lives in the control plane's store") && msg.contains("`counter`"), "{msg}");

        // The workers the control plane hears from are in /metrics and the API.
        let m = reqwest::Client::new().get(format!("{base}/metrics")).bearer_auth(&s.token).send().await.unwrap().text().await.unwrap();
        assert!(m.contains("opslet_workers{tags=\"default\"} 1"), "{m}");
        let (_, w) = call(&base, &s.token, "GET", "/api/v1/workers", None).await;
        assert_eq!(w["workers"][0]["id"], "w1", "{w}");
        assert_eq!(w["workers"][0]["tags"], json!(["default"]), "{w}");
        assert!(w["workers"][0]["seen_ago_s"].as_f64().unwrap() < 6.0, "{w}");
    });
    drop(serve);
    // One chain on the control plane: each run's start and end once, in order, with the
    // worker's records in it; and it verifies.
    let records = audit(&s.data);
    for kind in ["run.start", "run.end"] {
        let n = records.iter().filter(|r| r["kind"] == kind).count();
        assert_eq!(n, 4, "four runs reached a worker, each with one {kind}: {records:#?}");
    }
    // The worker ran them (its process id is in run.start), not the control plane.
    for r in records.iter().filter(|r| r["kind"] == "run.start") {
        assert_eq!(r["data"]["pid"], json!(worker_pid), "{r}");
        assert_ne!(r["data"]["pid"], json!(serve_pid));
    }
    drop(w);
    let verify = opslet(&s.data, &["audit", "verify"]);
    assert!(verify.starts_with("audit log intact"), "{verify}");
}

#[test]
fn with_nats_down_runs_are_refused_with_503_and_work_again_when_it_returns() {
    let mut nats = nats::Nats::start();
    let s = setup();
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    let _w = worker(&nats, "w1", &[]);
    rt().block_on(async {
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run", Some(json!({ "n": 1 }))).await;
        assert_eq!((code, r["status"].as_str()), (200, Some("ok")), "{r}");
        nats.down();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run?async=true", Some(json!({ "n": 1 }))).await;
        assert_eq!(code, 503, "{r}");
        assert_eq!(r["error"]["code"], "queue_unavailable", "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("NATS"), "{r}");
        nats.up();
        // Client and worker reconnect on their own.
        let t0 = Instant::now();
        loop {
            let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run", Some(json!({ "n": 5 }))).await;
            if code == 200 {
                assert_eq!(r["result"]["n"], 6, "{r}");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no recovery: {code} {r}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

#[test]
fn a_worker_killed_mid_run_leaves_its_run_interrupted_not_run_twice() {
    let nats = nats::Nats::start();
    let s = setup();
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    // A short ack wait, so the lost run is noticed in seconds.
    let env = [("OPSLET_QUEUE_ACK_WAIT", "2s")];
    let mut first = worker(&nats, "doomed", &env);
    rt().block_on(async {
        let (_, r) = call(&base, &s.token, "POST", "/api/v1/applets/slow/run?async=true", None).await;
        let id = r["job_id"].as_str().unwrap().to_string();
        wait_job(&base, &s.token, &id, |j| j["status"] == "running").await;
        // SIGKILL: no goodbye, no more progress acks.
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        let _second = worker(&nats, "survivor", &env);
        let job = wait_job(&base, &s.token, &id, |j| j["finished_at"].is_string()).await;
        assert_eq!(job["status"], "interrupted", "{job}");
        assert!(job["error"].as_str().unwrap().contains("not run again"), "{job}");
        // And it was not started again.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, job) = call(&base, &s.token, "GET", &format!("/api/v1/jobs/{id}"), None).await;
        assert_eq!(job["status"], "interrupted");
    });
    drop(_serve);
    let records = audit(&s.data);
    let of_run: Vec<&Value> = records.iter().filter(|r| r["kind"] == "run.start").collect();
    assert_eq!(of_run.len(), 1, "started once: {records:#?}");
    let ends: Vec<&Value> = records.iter().filter(|r| r["kind"] == "run.end").collect();
    assert_eq!(ends.len(), 1, "{records:#?}");
    assert_eq!(ends[0]["status"], "interrupted");
    let verify = opslet(&s.data, &["audit", "verify"]);
    assert!(verify.starts_with("audit log intact"), "{verify}");
}

/// Puts `fleet`'s hosts in the control plane's cmdb (group `fleet`) with the key secret and an
/// ssh credential rule for them; returns the worker's copy of that opslet.toml (its module
/// settings, the same file, as config management would put it there).
fn ssh_fleet(s: &Setup, dir: &Path, fleet: &sshd::Fleet) -> std::path::PathBuf {
    let mut csv = String::from("name,address,port,groups,host_key\n");
    for h in &fleet.hosts {
        csv.push_str(&format!("{},{},{},fleet,{}\n", h.name, h.address, h.port, h.host_key));
    }
    std::fs::write(dir.join("fleet.csv"), csv).unwrap();
    opslet(&s.data, &["cmdb", "import", dir.join("fleet.csv").to_str().unwrap()]);
    opslet(&s.data, &["secret", "set", "ssh-key", "--file", fleet.dir.path().join("client").to_str().unwrap()]);
    let config =
        "[serve]\nshutdown_grace = \"1s\"\n[[ssh.credentials]]\nhosts = \"group:fleet\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n";
    std::fs::write(s.data.join("opslet.toml"), config).unwrap();
    let worker_config = dir.join("worker.toml");
    std::fs::write(&worker_config, config).unwrap();
    worker_config
}

/// The process id the run's `run.start` record names: which worker ran it.
fn ran_on(data: &Path, run_id: &str) -> u64 {
    let records = audit(data);
    let start =
        records.iter().find(|r| r["kind"] == "run.start" && r["run_id"] == run_id).unwrap_or_else(|| panic!("no run.start of {run_id}"));
    start["data"]["pid"].as_u64().unwrap()
}

#[test]
fn tags_route_runs_and_a_run_no_worker_takes_waits_through_a_control_plane_restart() {
    let nats = nats::Nats::start();
    let s = setup();
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let mut serve = Proc(child);
    let base = format!("http://{addr}");
    let plain = worker(&nats, "plain", &[]);
    let dc1 = tagged_worker(&nats, "in-dc1", "dc1", &[]);
    let (plain_pid, dc1_pid) = (plain.0.id() as u64, dc1.0.id() as u64);
    let (mut by_tag, mut untagged, mut waiting) = (Vec::new(), Vec::new(), String::new());
    rt().block_on(async {
        // Let both workers be heard from.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for _ in 0..3 {
            let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run?tag=dc1", Some(json!({ "n": 1 }))).await;
            assert_eq!(code, 200, "{r}");
            by_tag.push(r["run_id"].as_str().unwrap().to_string());
            let (_, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run", Some(json!({ "n": 1 }))).await;
            untagged.push(r["run_id"].as_str().unwrap().to_string());
        }
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run?tag=Not%20A%20Tag", Some(json!({ "n": 1 }))).await;
        assert_eq!(code, 400, "{r}");
        // The applet asks for `neta`, which no worker has: queued, saying why.
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/near-net-a/run?async=true", None).await;
        assert_eq!(code, 202, "{r}");
        waiting = r["job_id"].as_str().unwrap().to_string();
        let job = wait_job(&base, &s.token, &waiting, |j| j["waiting"].is_string()).await;
        assert_eq!(job["status"], "queued");
        let why = job["waiting"].as_str().unwrap();
        assert!(why.contains("no worker with tag `neta`") && why.contains("in-dc1 [dc1]"), "{why}");
    });
    // The control plane restarts with the run still queued.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    serve.0.wait().unwrap();
    let (child, addr2) = serve_proc::spawn_at(&s.data, &addr, &["--queue", &nats.url()]);
    serve = Proc(child);
    assert_eq!(addr2, addr);
    let neta = tagged_worker(&nats, "in-neta", "neta,default", &[]);
    rt().block_on(async {
        let job = wait_job(&base, &s.token, &waiting, |j| j["status"] == "ok").await;
        assert_eq!(job["result"], "done");
        assert!(job.get("waiting").is_none(), "{job}");
    });
    drop(serve);
    for id in &by_tag {
        assert_eq!(ran_on(&s.data, id), dc1_pid, "a run asking for dc1 ran on the dc1 worker");
    }
    for id in &untagged {
        assert_eq!(ran_on(&s.data, id), plain_pid, "a run asking for no tag goes to the default worker, not the dc1-only one");
    }
    assert_eq!(ran_on(&s.data, &waiting), neta.0.id() as u64);
    let records = audit(&s.data);
    assert_eq!(records.iter().filter(|r| r["kind"] == "run.start").count(), 7, "each run started once");
    assert_eq!(records.iter().filter(|r| r["kind"] == "run.end").count(), 7);
    assert!(opslet(&s.data, &["audit", "verify"]).starts_with("audit log intact"));
}

#[test]
fn an_event_delivered_twice_is_applied_once_and_a_forged_one_not_at_all() {
    // A duplicate window of a second, so JetStream itself lets the repeat through and only the
    // control plane's own marks stand between it and a second audit record.
    let nats = nats::Nats::start();
    let s = setup();
    let (child, addr) = serve_proc::spawn_with_env(&s.data, &["--queue", &nats.url()], &[("OPSLET_QUEUE_DUP_WINDOW", "1s")]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    rt().block_on(async {
        // Queued with no worker yet: the run message, credential and all, is read from the
        // stream as a worker that took it would have it.
        let (_, r) = call(&base, &s.token, "POST", "/api/v1/applets/slow/run?async=true", None).await;
        let run_id = r["job_id"].as_str().unwrap().to_string();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut runs = js.get_stream("OPSLET_RUNS").await.unwrap();
        let last = runs.info().await.unwrap().state.last_sequence;
        let msg: Value = serde_json::from_slice(&runs.get_raw_message(last).await.unwrap().payload).unwrap();
        assert_eq!(msg["run_id"], run_id.as_str());
        let key = opslet::service::queue::event_key(msg["secret_token"].as_str().unwrap());
        let _w = worker(&nats, "w1", &[]);
        wait_job(&base, &s.token, &run_id, |j| j["status"] == "running").await;

        let publish = |body: Value, id: String, signature: String| {
            let js = js.clone();
            let subject = format!("opslet.events.{run_id}");
            async move {
                let payload = serde_json::to_vec(&body).unwrap();
                js.send_publish(
                    subject,
                    async_nats::jetstream::message::PublishMessage::build().payload(payload.into()).message_id(&id).header("Opslet-Signature", signature.as_str()),
                )
                .await
                .unwrap()
                .await
                .unwrap()
            }
        };
        let sign = |body: &Value, id: &str| opslet::service::queue::sign_event(&key, id, &serde_json::to_vec(body).unwrap());
        let event = json!({ "type": "audit", "kind": "action", "actor": "ada", "via": "http", "applet": "slow@1.0.0", "status": "ok",
            "data": { "module": "test", "action": "replayed", "target": "t1" } });
        let id = format!("{run_id}.9000");
        for _ in 0..2 {
            let ack = publish(event.clone(), id.clone(), sign(&event, &id)).await;
            assert!(!ack.duplicate, "past the window, JetStream takes the repeat");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        // Forged reports (no signature, another key's, a signature of another body) for the run:
        // an end that would finish it with a made-up result, and an audit record.
        let forged_end = json!({ "type": "end", "status": "ok", "result": "forged", "error": null, "traceback": null, "logs": [],
            "duration_ms": 1, "cpu_ms": 1, "notes": [], "targets": { "ok": 0, "failed": 0, "skipped": 0, "calls": [], "handled": false } });
        let forged_audit = json!({ "type": "audit", "kind": "action", "actor": "mallory", "via": "http", "applet": "slow@1.0.0", "status": "ok",
            "data": { "module": "test", "action": "forged", "target": "t1" } });
        let wrong_key = opslet::service::queue::sign_event(&"0".repeat(64), "x", b"");
        publish(forged_audit.clone(), format!("{run_id}.9100"), String::new()).await;
        publish(forged_audit.clone(), format!("{run_id}.9101"), wrong_key.clone()).await;
        publish(forged_end.clone(), format!("{run_id}.9102"), sign(&event, &format!("{run_id}.9102"))).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, job) = call(&base, &s.token, "GET", &format!("/api/v1/jobs/{run_id}"), None).await;
        assert_eq!(job["status"], "running", "a forged end did not finish the job: {job}");
        let (code, _) = call(&base, &s.token, "POST", &format!("/api/v1/jobs/{run_id}/cancel"), None).await;
        assert!(code == 200 || code == 202);
        let job = wait_job(&base, &s.token, &run_id, |j| j["finished_at"].is_string()).await;
        assert_eq!(job["status"], "cancelled", "{job}");
    });
    drop(_serve);
    let records = audit(&s.data);
    let replayed = records.iter().filter(|r| r["data"]["action"] == "replayed").count();
    assert_eq!(replayed, 1, "{records:#?}");
    assert!(!records.iter().any(|r| r["data"]["action"] == "forged" || r["actor"] == "mallory"), "{records:#?}");
    assert!(opslet(&s.data, &["audit", "verify"]).starts_with("audit log intact"));
}

#[test]
fn ssh_runs_on_a_worker_with_the_cmdb_copy_and_secrets_asked_for_the_run_only() {
    let fleet = sshd::Fleet::start(3, "node");
    let nats = nats::Nats::start();
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let worker_config = ssh_fleet(&s, dir.path(), &fleet);
    applet(
        dir.path(),
        &s.data,
        "uptime-all",
        "[permissions]\nssh = { hosts = [\"*\"], commands = [\"hostname\"] }\n",
        "return function() local out = {} for _, r in ipairs(ssh.run('group:fleet', 'hostname')) do table.insert(out, { host = r.host, ok = r.ok, err = r.error }) end return out end",
    );
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    let _w = worker_with(&nats, "w1", "default", Some(&worker_config), &[]);
    let key = std::fs::read_to_string(fleet.dir.path().join("client")).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_string();
    let mut run_id = String::new();
    rt().block_on(async {
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/uptime-all/run", None).await;
        assert_eq!((code, r["status"].as_str()), (200, Some("ok")), "{r}");
        let rows = r["result"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{r}");
        assert!(rows.iter().all(|x| x["ok"] == true), "every host answered over ssh from the worker: {r}");
        run_id = r["run_id"].as_str().unwrap().to_string();

        // A host added while the server runs (the CLI goes through its socket) is in the cmdb
        // copy the next run gets on the worker.
        let port = fleet.port.to_string();
        opslet(&s.data, &["cmdb", "host", "add", "late", "--address", &fleet.dead_address, "--port", &port, "--group", "fleet"]);
        let (_, r) = call(&base, &s.token, "POST", "/api/v1/applets/uptime-all/run", None).await;
        let rows = r["result"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{r}");
        assert!(rows.iter().any(|x| x["host"] == "late" && x["ok"] == false), "nothing listens at the new host: {r}");

        // The secret travels only as an answer to the run's own request, while it runs: a
        // request with a guessed credential, or for a run that ended, gets nothing.
        let client = async_nats::connect(nats.url()).await.unwrap();
        for (run, token) in [(run_id.as_str(), "0".repeat(48)), ("nosuch", "x".repeat(48))] {
            let body = serde_json::to_vec(&json!({ "run_id": run, "token": token, "name": "ssh-key" })).unwrap();
            let answer = client.request("opslet.secrets", body.into()).await.unwrap();
            let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
            assert!(answer["value"].is_null() && answer["error"].as_str().unwrap().contains("no run in flight"), "{answer}");
        }
        // Nothing kept in JetStream holds the key: not the run message, not any event.
        let js = async_nats::jetstream::new(client);
        for stream in ["OPSLET_EVENTS", "OPSLET_RUNS"] {
            let mut st = js.get_stream(stream).await.unwrap();
            let info = st.info().await.unwrap().clone();
            for seq in info.state.first_sequence..=info.state.last_sequence {
                if let Ok(m) = st.get_raw_message(seq).await {
                    assert!(!String::from_utf8_lossy(&m.payload).contains(&key_line), "{stream} message {seq} holds the key");
                }
            }
        }
    });
    drop(_serve);
    // Each host's ssh action is in the control plane's chain, under the run.
    let records = audit(&s.data);
    let actions: Vec<&Value> = records.iter().filter(|r| r["kind"] == "action" && r["run_id"] == run_id.as_str()).collect();
    assert_eq!(actions.len(), 3, "{records:#?}");
    assert!(!serde_json::to_string(&records).unwrap().contains(&key_line));
    assert!(opslet(&s.data, &["audit", "verify"]).starts_with("audit log intact"));
}

/// NATS permissions for a worker of tag `dc1` (docs/scale-out.md says which it needs): it may
/// report events and heartbeats, ask for secrets, pull and acknowledge runs of `dc1`, and read
/// packages; nothing else.
const WORKER_PERMISSIONS: &str = r#"
authorization {
  users = [
    { user: control, password: "control-pass-0001" }
    { user: worker-dc1, password: "worker-pass-0001", permissions: {
        publish: { allow: [
          "opslet.events.>", "opslet.workers.>", "opslet.secrets",
          "$JS.API.INFO",
          "$JS.API.STREAM.INFO.OPSLET_RUNS", "$JS.API.STREAM.INFO.OPSLET_EVENTS", "$JS.API.STREAM.INFO.OBJ_opslet-packages",
          "$JS.API.CONSUMER.CREATE.OPSLET_RUNS.runs-dc1", "$JS.API.CONSUMER.CREATE.OPSLET_RUNS.runs-dc1.>",
          "$JS.API.CONSUMER.DURABLE.CREATE.OPSLET_RUNS.runs-dc1", "$JS.API.CONSUMER.INFO.OPSLET_RUNS.runs-dc1",
          "$JS.API.CONSUMER.MSG.NEXT.OPSLET_RUNS.runs-dc1", "$JS.ACK.OPSLET_RUNS.runs-dc1.>",
          "$JS.API.STREAM.MSG.GET.OBJ_opslet-packages", "$JS.API.DIRECT.GET.OBJ_opslet-packages", "$JS.API.DIRECT.GET.OBJ_opslet-packages.>",
          "$JS.API.CONSUMER.CREATE.OBJ_opslet-packages", "$JS.API.CONSUMER.CREATE.OBJ_opslet-packages.>",
          "$JS.API.CONSUMER.DELETE.OBJ_opslet-packages.>", "$JS.FC.>"
        ] }
        subscribe: { allow: [ "opslet.cancel", "_INBOX.>" ] }
    } }
  ]
}
"#;

#[test]
fn a_worker_with_its_own_nats_user_runs_its_tag_and_can_neither_queue_runs_nor_take_another_tags() {
    let nats = nats::Nats::start_with(Some(WORKER_PERMISSIONS.to_string()));
    let s = setup();
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url_as("control", "control-pass-0001")]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    let worker_url = nats.url_as("worker-dc1", "worker-pass-0001");
    let dir = tempfile::tempdir().unwrap();
    let _w = Proc(
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["worker", "--queue", &worker_url, "--id", "w-dc1", "--tags", "dc1"])
            .env("OPSLET_DATA_DIR", dir.path().join("unused"))
            .env_remove("OPSLET_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    rt().block_on(async {
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run?tag=dc1", Some(json!({ "n": 1 }))).await;
        assert_eq!((code, r["result"]["n"].as_i64()), (200, Some(2)), "the restricted worker runs its tag: {r} {}", nats.log());

        // The same credentials cannot queue a run, as the control plane does…
        let client = async_nats::ConnectOptions::new().user_and_password("worker-dc1".into(), "worker-pass-0001".into()).connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let forged = json!({ "run_id": "forged", "applet": "hello@1.0.0", "hash": "0", "caller": { "user": "ada", "via": "http" }, "dry_run": false,
            "origin": { "kind": "package" }, "tag": "dc1", "secret_token": "", "cmdb": null });
        let sent = tokio::time::timeout(Duration::from_secs(3), async {
            js.publish("opslet.runs.dc1", serde_json::to_vec(&forged).unwrap().into()).await.map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())
        })
        .await;
        assert!(!matches!(sent, Ok(Ok(_))), "a worker queued a run: {sent:?}");
        // …nor take the runs of another tag.
        let stream = js.get_stream("OPSLET_RUNS").await.unwrap();
        let other = stream
            .get_or_create_consumer(
                "runs-default",
                async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some("runs-default".into()),
                    filter_subject: "opslet.runs.default".into(),
                    ..Default::default()
                },
            )
            .await;
        assert!(other.is_err(), "a dc1 worker made a consumer of another tag");
    });
    // The server refused both attempts, and nothing the worker did in its own work.
    let log = nats.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(refused.iter().any(|l| l.contains(r#"Subject "opslet.runs.dc1""#)), "{log}");
    assert!(refused.iter().any(|l| l.contains("runs-default")), "{log}");
    assert!(refused.iter().all(|l| l.contains(r#"Subject "opslet.runs.dc1""#) || l.contains("runs-default")), "{log}");
}

#[test]
fn a_cmdb_route_sends_runs_on_its_hosts_to_its_tag() {
    let nats = nats::Nats::start();
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    opslet(&s.data, &["cmdb", "host", "add", "web-a1", "--address", "192.0.2.1", "--group", "dc1"]);
    opslet(&s.data, &["cmdb", "host", "add", "web-a2", "--address", "192.0.2.2", "--group", "dc1"]);
    opslet(&s.data, &["cmdb", "host", "add", "web-b1", "--address", "198.51.100.1", "--group", "dc2"]);
    std::fs::write(
        s.data.join("opslet.toml"),
        "[serve]\nshutdown_grace = \"1s\"\n[[workers.route]]\nhosts = \"group:dc1\"\ntag = \"dc1\"\n",
    )
    .unwrap();
    applet(
        dir.path(),
        &s.data,
        "count-hosts",
        "[params.targets]\ntype = \"host-selector\"\nrequired = true\n",
        "return function(p) return p.targets end",
    );
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    let plain = worker(&nats, "plain", &[]);
    let dc1 = tagged_worker(&nats, "in-dc1", "dc1", &[]);
    let mut runs = Vec::new();
    rt().block_on(async {
        for (targets, expect_dc1) in [("group:dc1", true), ("web-a1", true), ("web-b1", false), ("web-a1,web-b1", false)] {
            let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/count-hosts/run", Some(json!({ "targets": targets }))).await;
            assert_eq!(code, 200, "{r}");
            runs.push((targets, expect_dc1, r["run_id"].as_str().unwrap().to_string()));
        }
    });
    drop(_serve);
    for (targets, expect_dc1, id) in runs {
        let pid = ran_on(&s.data, &id);
        let want = if expect_dc1 { dc1.0.id() } else { plain.0.id() };
        assert_eq!(pid, want as u64, "`{targets}` ran on the wrong worker");
    }
    // A route that does not parse is refused when the server starts, naming it.
    std::fs::write(s.data.join("opslet.toml"), "[[workers.route]]\nhosts = \"group:\"\ntag = \"dc1\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--queue", &nats.url()])
        .env("OPSLET_DATA_DIR", &s.data)
        .env_remove("OPSLET_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("workers.route[0]") && err.contains("group:"), "{err}");
}

#[test]
fn a_run_on_a_worker_gets_its_secrets_from_a_restarted_control_plane() {
    let fleet = sshd::Fleet::start(1, "node");
    let nats = nats::Nats::start();
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let worker_config = ssh_fleet(&s, dir.path(), &fleet);
    // It waits, so the control plane can be restarted before it asks for the key.
    applet(
        dir.path(),
        &s.data,
        "late-ssh",
        "[permissions]\nssh = { hosts = [\"*\"], commands = [\"hostname\"] }\n",
        "return function() time.sleep(4) local r = ssh.run('group:fleet', 'hostname')[1] return { ok = r.ok, err = r.error } end",
    );
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &nats.url()]);
    let mut serve = Proc(child);
    let base = format!("http://{addr}");
    let _w = worker_with(&nats, "w1", "default", Some(&worker_config), &[]);
    let id = rt().block_on(async {
        let (_, r) = call(&base, &s.token, "POST", "/api/v1/applets/late-ssh/run?async=true", None).await;
        let id = r["job_id"].as_str().unwrap().to_string();
        wait_job(&base, &s.token, &id, |j| j["status"] == "running").await;
        id
    });
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    serve.0.wait().unwrap();
    serve = Proc(serve_proc::spawn_at(&s.data, &addr, &["--queue", &nats.url()]).0);
    rt().block_on(async {
        let job = wait_job(&base, &s.token, &id, |j| j["finished_at"].is_string()).await;
        assert_eq!(job["status"], "ok", "{job}");
        assert_eq!(job["result"]["ok"], true, "the key came from the restarted control plane: {job}");
    });
    drop(serve);
}

#[test]
fn the_queue_runs_over_tls_and_a_worker_that_does_not_trust_the_server_is_refused() {
    let tls = tempfile::tempdir().unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/peers/nats.sh");
    let st = Command::new("bash").arg(&script).arg("tls").arg(tls.path()).status().unwrap();
    assert!(st.success(), "scripts/peers/nats.sh tls");
    let (cert, key, ca) = (tls.path().join("tls.crt"), tls.path().join("tls.key"), tls.path().join("ca.crt"));
    let nats =
        nats::Nats::start_with(Some(format!("tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n", cert.display(), key.display())));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let s = setup();
    let (child, addr) = serve_proc::spawn(&s.data, &["--queue", &url, "--queue-ca", ca.to_str().unwrap()]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    let dir = tempfile::tempdir().unwrap();
    let worker = |ca: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.args(["worker", "--queue", &url, "--id", "w-tls"]).env("OPSLET_DATA_DIR", dir.path().join("unused")).env_remove("OPSLET_CONFIG");
        if let Some(ca) = ca {
            c.arg("--queue-ca").arg(ca);
        }
        c
    };
    // Without the CA, the server's certificate is not trusted: the worker says so and stops.
    let o = worker(None).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("NATS") && err.contains("invalid peer certificate"), "{err}");
    let _w = Proc(worker(Some(&ca)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    rt().block_on(async {
        let (code, r) = call(&base, &s.token, "POST", "/api/v1/applets/hello/run", Some(json!({ "n": 9 }))).await;
        assert_eq!((code, r["result"]["n"].as_i64()), (200, Some(10)), "{r}");
    });
}
