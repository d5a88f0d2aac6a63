//! `opslet serve` driven over loopback: the auth matrix, runs with params, errors and limits.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

#[path = "common/sshd.rs"]
mod sshd;

#[path = "common/serve.rs"]
mod serve_proc;

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Server {
    /// Stops the server the way an operator would (SIGTERM): it finishes and flushes the store.
    fn stop(&mut self) {
        // SAFETY: sending a signal to our own child process by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn data(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn opslet(data: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A data dir with two published applets, users of every role and their tokens, then the server.
fn server(extra_flags: &[&str]) -> Server {
    server_with_config("", extra_flags)
}

/// Like `server`, with an opslet.toml in the data dir.
fn server_with_config(config: &str, extra_flags: &[&str]) -> Server {
    server_with(config, extra_flags, |_, _| {})
}

/// Like `server_with_config`; `prepare(dir, data)` runs on the data dir before the server starts.
fn server_with(config: &str, extra_flags: &[&str], prepare: impl Fn(&Path, &Path)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Tests stop their servers with runs still spinning: keep the shutdown grace short.
    let config = if config.contains("[serve]") {
        config.replace("[serve]\n", "[serve]\nshutdown_grace = \"1s\"\n")
    } else {
        format!("{config}\n[serve]\nshutdown_grace = \"1s\"\n")
    };
    std::fs::write(data.join("opslet.toml"), config).unwrap();
    let applet = |name: &str, manifest: &str, main: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest}")).unwrap();
        std::fs::write(d.join("main.lua"), main).unwrap();
        opslet(&data, &["publish", d.to_str().unwrap()]);
    };
    applet(
        "disk-report",
        "[params.threshold]\ntype = \"integer\"\nrequired = true\nmax = 100\n",
        "return function(p, ctx) log.info('checking') return { threshold = p.threshold, caller = ctx.caller, via = ctx.via } end",
    );
    applet("slow-one", "", "return function() time.sleep(0.5) while true do end end");
    let mut tokens = std::collections::HashMap::new();
    for (user, role) in
        [("vic", "viewer"), ("ola", "operator"), ("oz", "operator"), ("pat", "publisher"), ("aud", "auditor"), ("ada", "admin")]
    {
        opslet(&data, &["user", "add", user, "--role", role]);
        tokens.insert(user, opslet(&data, &["token", "create", user]));
    }
    opslet(&data, &["grant", "add", "ola", "disk-*"]);
    opslet(&data, &["grant", "add", "ola", "slow-one"]);
    tokens.insert("hook", opslet(&data, &["hook", "add", "disk-alert", "--applet", "disk-report", "--map", "threshold=$.items[0].value"]));
    prepare(dir.path(), &data);
    let (child, addr) = serve_proc::spawn(&data, extra_flags);
    Server { child, base: format!("http://{addr}"), _dir: dir, tokens }
}

/// Gives `user` a console password, through `opslet user passwd` on stdin.
fn set_password(data: &Path, user: &str, password: &str) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["user", "passwd", user])
        .env("OPSLET_DATA_DIR", data)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), format!("{password}\n").as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

fn rt() -> tokio::runtime::Runtime {
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn call(s: &Server, method: &str, path: &str, user: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", s.base);
    let mut req = match method {
        "POST" => client.post(&url),
        "DELETE" => client.delete(&url),
        "PUT" => client.put(&url),
        "PATCH" => client.patch(&url),
        _ => client.get(&url),
    };
    if let Some(u) = user {
        req = req.header("Authorization", format!("Bearer {}", s.tokens[u]));
    }
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn auth_matrix_over_every_route() {
    let s = server(&[]);
    rt().block_on(async {
        assert_eq!(call(&s, "GET", "/healthz", None, None).await, (200, json!("ok")));
        let reads = ["/api/v1/applets", "/api/v1/search?q=disk", "/api/v1/applets/disk-report", "/api/v1/applets/disk-report/versions"];
        for path in reads {
            let (code, body) = call(&s, "GET", path, None, None).await;
            assert_eq!(code, 401, "{path} without a token");
            assert!(body["error"]["message"].as_str().unwrap().contains("no bearer token"), "{body}");
            assert_eq!(body["error"]["code"], json!("unauthenticated"), "{body}");
            for user in ["vic", "ola", "pat", "aud", "ada"] {
                assert_eq!(call(&s, "GET", path, Some(user), None).await.0, 200, "{path} as {user}");
            }
        }
        let run = "/api/v1/applets/disk-report/run";
        let params = r#"{"threshold": 90}"#;
        for (user, code) in [("vic", 403), ("oz", 403), ("pat", 403), ("aud", 403), ("ola", 200), ("ada", 200)] {
            assert_eq!(call(&s, "POST", run, Some(user), Some(params)).await.0, code, "run as {user}");
        }
        let (code, body) = call(&s, "POST", run, None, Some(params)).await;
        assert_eq!(code, 401, "{body}");
    });
    let mut s = s;
    s.stop();
    let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["audit", "list", "--kind", "http.denied", "--limit", "1000", "--format", "json"])
        .env("OPSLET_DATA_DIR", s.data())
        .output()
        .unwrap();
    let denied: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(denied.len(), 4 + 4 + 1, "every refused request is audited: {denied:?}");
    assert!(
        denied.iter().any(|d| d["actor"] == json!("vic") && d["data"]["reason"].as_str().unwrap().contains("may not run `disk-report`"))
    );
    let starts = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["audit", "list", "--kind", "run.start", "--format", "json"])
        .env("OPSLET_DATA_DIR", s.data())
        .output()
        .unwrap();
    let starts: Vec<Value> = serde_json::from_slice(&starts.stdout).unwrap();
    assert_eq!(starts.iter().map(|r| r["via"].as_str().unwrap()).collect::<Vec<_>>(), ["http", "http"]);
}

#[test]
fn runs_validate_params_and_report_results() {
    let s = server(&["--sync-timeout", "2s"]);
    rt().block_on(async {
        let run = "/api/v1/applets/disk-report/run";
        let (code, body) = call(&s, "POST", run, Some("ola"), Some(r#"{"threshold": 90}"#)).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], json!("ok"));
        assert_eq!(body["result"], json!({ "threshold": 90, "caller": "ola", "via": "http" }));
        assert_eq!(body["logs"][0]["message"], json!("checking"));
        assert_eq!(body["hash"].as_str().unwrap().len(), 64);

        let (code, body) = call(&s, "POST", run, Some("ola"), Some(r#"{"threshold": "high", "extra": 1}"#)).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["error"]["code"], json!("invalid_params"), "{body}");
        let mut fields: Vec<&str> = body["error"]["fields"].as_array().unwrap().iter().map(|f| f["param"].as_str().unwrap()).collect();
        fields.sort();
        assert_eq!(fields, ["extra", "threshold"], "each bad field named once: {body}");
        assert_eq!(call(&s, "POST", run, Some("ola"), Some(r#"{}"#)).await.0, 422, "missing required param");
        assert_eq!(call(&s, "POST", run, Some("ola"), Some("{not json")).await.0, 400);
        assert_eq!(call(&s, "POST", run, Some("ola"), Some("[1, 2]")).await.0, 400);
        let big = format!(r#"{{"threshold": 1, "pad": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
        assert_eq!(call(&s, "POST", run, Some("ola"), Some(&big)).await.0, 413, "oversized bodies are refused");
        assert_eq!(call(&s, "POST", "/api/v1/applets/no-such/run", Some("ada"), Some("{}")).await.0, 404);
        assert_eq!(call(&s, "POST", "/api/v1/applets/Bad_Name/run", Some("ada"), Some("{}")).await.0, 400);

        let (code, body) = call(&s, "POST", "/api/v1/applets/slow-one/run", Some("ola"), None).await;
        assert_eq!(code, 504, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("cancelled"), "{body}");
        assert_eq!(body["error"]["code"], json!("timeout"), "{body}");
    });
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = server(&["--run-threads", "1", "--queue", "1", "--sync-timeout", "20s"]);
    rt().block_on(async {
        let client = reqwest::Client::new();
        let send = || {
            client
                .post(format!("{}/api/v1/applets/slow-one/run", s.base))
                .header("Authorization", format!("Bearer {}", s.tokens["ola"]))
                .send()
        };
        // One computing (slow-one sleeps 0.5 s, which holds no CPU slot, then spins), one waiting
        // for the slot; the third finds the queue full.
        let first = tokio::spawn(send());
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let second = tokio::spawn(send());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let third = send().await.unwrap();
        assert_eq!(third.status().as_u16(), 503);
        assert_eq!(third.headers()["retry-after"], "1");
        assert_eq!(third.json::<Value>().await.unwrap()["error"]["code"], json!("queue_full"));
        // The refused request stored no job: only the running and the queued one are.
        let (_, jobs) = call(&s, "GET", "/api/v1/jobs?applet=slow-one", Some("ada"), None).await;
        assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
        first.abort();
        second.abort();
    });
}

async fn poll_job(s: &Server, user: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (code, job) = call(s, "GET", &format!("/api/v1/jobs/{id}"), Some(user), None).await;
        assert_eq!(code, 200, "{job}");
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[test]
fn async_jobs_stream_events_and_can_be_cancelled() {
    let s = server(&[]);
    rt().block_on(async {
        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-report/run?async=true", Some("ola"), Some(r#"{"threshold": 70}"#)).await;
        assert_eq!(code, 202, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let job = poll_job(&s, "ola", &id).await;
        assert_eq!(job["status"], json!("ok"));
        assert_eq!(job["result"]["threshold"], json!(70));
        assert_eq!(job["logs"][0]["message"], json!("checking"));

        // Jobs are private to their caller unless one may read all jobs.
        assert_eq!(call(&s, "GET", &format!("/api/v1/jobs/{id}"), Some("oz"), None).await.0, 403);
        assert_eq!(call(&s, "GET", &format!("/api/v1/jobs/{id}"), Some("aud"), None).await.0, 200);
        let (_, mine) = call(&s, "GET", "/api/v1/jobs", Some("oz"), None).await;
        assert_eq!(mine, json!([]));
        let (_, all) = call(&s, "GET", "/api/v1/jobs?applet=disk-report", Some("ada"), None).await;
        assert_eq!(all.as_array().unwrap().len(), 1);
        let (_, ended_ok) = call(&s, "GET", "/api/v1/jobs?applet=disk-report&status=ok", Some("ada"), None).await;
        assert_eq!(ended_ok.as_array().unwrap().len(), 1);
        // A status that does not exist is named, not answered with an empty list.
        let (code, body) = call(&s, "GET", "/api/v1/jobs?status=finished", Some("ada"), None).await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["error"]["code"], json!("bad_request"));
        assert!(
            body["error"]["message"].as_str().unwrap().contains("status `finished` is not one of awaiting_approval, queued, running, ok"),
            "{body}"
        );
        // Every error answer has the one body: a code and a message.
        let (code, body) = call(&s, "GET", &format!("/api/v1/jobs/{id}"), Some("oz"), None).await;
        assert_eq!((code, body["error"]["code"].clone()), (403, json!("forbidden")), "{body}");
        let (code, body) = call(&s, "GET", "/api/v1/jobs/no-such-job", Some("ada"), None).await;
        assert_eq!((code, body["error"]["code"].clone()), (404, json!("not_found")), "{body}");

        // Events of a finished job: its logs, then the end.
        let events = sse(&s, "ola", &id).await;
        assert!(events.contains("event: log") && events.contains("event: end") && events.contains("\"checking\""), "{events}");

        // A long job: watch it live, cancel it, and see the end event.
        let (_, body) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        let slow = body["job_id"].as_str().unwrap().to_string();
        let watcher = {
            let (base, token, slow) = (s.base.clone(), s.tokens["ola"].clone(), slow.clone());
            tokio::spawn(async move { sse_raw(&base, &token, &slow).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            call(&s, "POST", &format!("/api/v1/jobs/{slow}/cancel"), Some("oz"), None).await.0,
            403,
            "only the owner or an admin cancels"
        );
        assert_eq!(call(&s, "POST", &format!("/api/v1/jobs/{slow}/cancel"), Some("ola"), None).await.0, 200);
        let job = poll_job(&s, "ola", &slow).await;
        assert_eq!(job["status"], json!("cancelled"));
        let events = tokio::time::timeout(std::time::Duration::from_secs(10), watcher).await.unwrap().unwrap();
        assert!(events.contains("event: status") && events.contains("event: end") && events.contains("cancelled"), "{events}");
        assert_eq!(call(&s, "POST", &format!("/api/v1/jobs/{slow}/cancel"), Some("ola"), None).await.0, 409);
    });
}

async fn sse(s: &Server, user: &str, id: &str) -> String {
    sse_raw(&s.base, &s.tokens[user], id).await
}

async fn sse_raw(base: &str, token: &str, id: &str) -> String {
    let mut resp = reqwest::Client::new()
        .get(format!("{base}/api/v1/jobs/{id}/events"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut out = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        out.push_str(&String::from_utf8_lossy(&chunk));
        if out.contains("event: end") {
            break;
        }
    }
    out
}

#[test]
fn finished_jobs_are_purged_after_their_retention_while_the_server_runs() {
    let s = server(&["--job-retention", "2s"]);
    rt().block_on(async {
        let (_, a) = call(&s, "POST", "/api/v1/applets/disk-report/run?async=true", Some("ola"), Some(r#"{"threshold": 5}"#)).await;
        let id = a["job_id"].as_str().unwrap().to_string();
        let job = poll_job(&s, "ola", &id).await;
        assert_eq!(job["status"], json!("ok"), "{job}");
        // Still there within its retention; gone a little after it.
        assert_eq!(call(&s, "GET", &format!("/api/v1/jobs/{id}"), Some("ola"), None).await.0, 200);
        let start = std::time::Instant::now();
        loop {
            let (code, body) = call(&s, "GET", &format!("/api/v1/jobs/{id}"), Some("ola"), None).await;
            if code == 404 {
                break;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "job still there: {body}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(start.elapsed() >= std::time::Duration::from_secs(1), "purged before its retention");
    });
}

#[test]
fn restart_marks_running_jobs_interrupted_and_runs_queued_ones() {
    let mut s = server(&["--run-threads", "1", "--queue", "4"]);
    let (running, queued) = rt().block_on(async {
        let (_, a) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        // slow-one sleeps 0.5 s (holding no CPU slot), then computes: the next run waits for it.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let (_, b) = call(&s, "POST", "/api/v1/applets/disk-report/run?async=true", Some("ola"), Some(r#"{"threshold": 5}"#)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        (a["job_id"].as_str().unwrap().to_string(), b["job_id"].as_str().unwrap().to_string())
    });
    // Crash the server: no chance to finish anything.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let restarted = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OPSLET_DATA_DIR", s.data())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    s.child = restarted;
    let mut lines = BufReader::new(s.child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    s.base = format!("http://{addr}");
    rt().block_on(async {
        let job = poll_job(&s, "ola", &running).await;
        assert_eq!(job["status"], json!("interrupted"), "{job}");
        let job = poll_job(&s, "ola", &queued).await;
        assert_eq!(job["status"], json!("ok"), "the queued job ran after the restart: {job}");
        assert_eq!(job["result"]["threshold"], json!(5));
    });
}

#[test]
fn registry_writes_audit_reads_and_metrics_are_guarded_by_role() {
    let s = server(&[]);
    // A bundle of a new version, made with the CLI from a second data dir.
    let src = tempfile::tempdir().unwrap();
    let applet = src.path().join("disk-report");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(
        applet.join("applet.toml"),
        "name = \"disk-report\"\nversion = \"1.1.0\"\n[params.threshold]\ntype = \"integer\"\ndefault = 1\n",
    )
    .unwrap();
    std::fs::write(applet.join("main.lua"), "return function(p) return 'v1.1' end").unwrap();
    let src_data = src.path().join("data");
    opslet(&src_data, &["publish", applet.to_str().unwrap()]);
    let bundle_path = src.path().join("b.json");
    opslet(&src_data, &["export", "disk-report", "-o", bundle_path.to_str().unwrap()]);
    let bundle = std::fs::read_to_string(&bundle_path).unwrap();

    rt().block_on(async {
        assert_eq!(call(&s, "GET", "/readyz", None, None).await.0, 401, "only /healthz answers without a token");
        assert_eq!(call(&s, "GET", "/readyz", Some("vic"), None).await.0, 200);
        let (code, doc) = call(&s, "GET", "/api/v1/openapi.json", Some("vic"), None).await;
        assert_eq!((code, doc["openapi"].as_str().map(|v| &v[..2])), (200, Some("3.")));
        for user in ["vic", "ola", "aud"] {
            assert_eq!(call(&s, "POST", "/api/v1/registry/publish", Some(user), Some(&bundle)).await.0, 403, "{user} may not publish");
        }
        let (code, body) = call(&s, "POST", "/api/v1/registry/publish?message=from%20ci", Some("pat"), Some(&bundle)).await;
        assert_eq!(code, 201, "{body}");
        assert_eq!((body["published"]["publisher"].as_str(), body["published"]["message"].as_str()), (Some("pat"), Some("from ci")));
        assert_eq!(call(&s, "POST", "/api/v1/registry/publish", Some("pat"), Some("{\"format\": 1}")).await.0, 422);

        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-report/rollback", Some("pat"), None).await;
        assert_eq!((code, body["to"].as_str()), (200, Some("1.0.0")));
        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/promote?version=1.1.0", Some("ola"), None).await.0, 403);
        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/promote?version=1.1.0", Some("pat"), None).await.0, 200);
        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/promote", Some("pat"), None).await.0, 400);
        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/yank?version=1.0.0", Some("pat"), None).await.0, 200);
        // A yanked version is refused with the API's way of allowing it, not the CLI's flag.
        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-report@1.0.0/run", Some("ola"), Some("{}")).await;
        let msg = body["error"]["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(code, 404, "{body}");
        assert!(msg.contains("is yanked") && msg.contains("allow_yanked=true") && !msg.contains("--"), "{msg}");

        for user in ["vic", "ola", "pat"] {
            assert_eq!(call(&s, "GET", "/api/v1/audit", Some(user), None).await.0, 403, "{user} may not read the audit log");
        }
        let (code, recs) = call(&s, "GET", "/api/v1/audit?kind=registry.yank", Some("aud"), None).await;
        assert_eq!(code, 200);
        assert_eq!(recs[0]["actor"], json!("pat"));
        let (_, verify) = call(&s, "GET", "/api/v1/audit/verify", Some("aud"), None).await;
        assert_eq!(verify["intact"], json!(true));

        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ola"), Some("{}")).await.0, 200);
        assert_eq!(call(&s, "GET", "/metrics", None, None).await.0, 401);
        let (code, text) = call(&s, "GET", "/metrics", Some("vic"), None).await;
        assert_eq!(code, 200);
        let text = text.as_str().unwrap();
        assert!(text.contains("opslet_runs_total{applet=\"disk-report\",status=\"ok\"} 1"), "{text}");
        assert!(text.contains("opslet_queue_depth 0"), "{text}");
    });
}

#[test]
fn webhooks_need_fresh_signed_deliveries_and_map_the_payload() {
    use opslet::service::hooks::sign;
    let s = server(&[]);
    rt().block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/hooks/disk-alert", s.base);
        let body = r#"{"event": "disk", "items": [{"value": 93}, {"value": 12}]}"#;
        let now = chrono::Utc::now().timestamp();
        let deliver = |ts: i64, sig: Option<String>, body: &'static str| {
            let mut req =
                client.post(&url).header("Content-Type", "application/json").header("X-Opslet-Timestamp", ts.to_string()).body(body);
            if let Some(sig) = sig {
                req = req.header("X-Opslet-Signature", sig);
            }
            req.send()
        };
        let secret = s.tokens["hook"].clone();

        assert_eq!(deliver(now, None, body).await.unwrap().status().as_u16(), 401, "unsigned");
        assert_eq!(
            deliver(now, Some(sign("wrong-secret", now, body.as_bytes())), body).await.unwrap().status().as_u16(),
            401,
            "bad signature"
        );
        let old = now - 3600;
        assert_eq!(deliver(old, Some(sign(&secret, old, body.as_bytes())), body).await.unwrap().status().as_u16(), 401, "stale");
        let tampered = r#"{"event": "disk", "items": [{"value": 1}]}"#;
        assert_eq!(
            deliver(now, Some(sign(&secret, now, body.as_bytes())), tampered).await.unwrap().status().as_u16(),
            401,
            "body changed after signing"
        );

        let sig = sign(&secret, now, body.as_bytes());
        let resp = deliver(now, Some(sig.clone()), body).await.unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let id = resp.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string();
        let replay = deliver(now, Some(sig), body).await.unwrap();
        assert_eq!(replay.status().as_u16(), 409, "replayed");
        assert_eq!(replay.json::<Value>().await.unwrap()["error"]["code"], json!("replayed"));

        let job = poll_job(&s, "ada", &id).await;
        assert_eq!(job["status"], json!("ok"), "{job}");
        assert_eq!(job["result"], json!({ "threshold": 93, "caller": "hook:disk-alert", "via": "hook" }));
        assert_eq!(job["user"], json!("hook:disk-alert"));

        let unknown = client.post(format!("{}/hooks/nope", s.base)).body("{}").send().await.unwrap();
        assert_eq!(unknown.status().as_u16(), 401, "unknown hooks look like bad signatures");
        // The same answers, word for word, for a hook that exists and one that does not: a
        // hook's name cannot be probed, signed or not.
        let unsigned = deliver(now, None, body).await.unwrap();
        assert_eq!(unknown.json::<Value>().await.unwrap(), unsigned.json::<Value>().await.unwrap());
        let wrong = deliver(now, Some(sign("not-the-secret", now, body.as_bytes())), body).await.unwrap();
        let signed_unknown = client
            .post(format!("{}/hooks/nope", s.base))
            .header("X-Opslet-Timestamp", now.to_string())
            .header("X-Opslet-Signature", sign("not-the-secret", now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!((wrong.status().as_u16(), signed_unknown.status().as_u16()), (401, 401));
        assert_eq!(wrong.json::<Value>().await.unwrap(), signed_unknown.json::<Value>().await.unwrap());
    });
}

#[test]
fn per_applet_limit_answers_429() {
    let s = server(&["--applet-limit", "1", "--run-threads", "2"]);
    rt().block_on(async {
        let (code, first) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        assert_eq!(code, 202, "{first}");
        let (code, body) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        assert_eq!(code, 429, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit per applet"), "{body}");
        assert_eq!(body["error"]["code"], json!("quota_exceeded"), "{body}");
        // A refused request stores no job.
        let (_, jobs) = call(&s, "GET", "/api/v1/jobs?applet=slow-one", Some("ada"), None).await;
        assert_eq!(jobs.as_array().unwrap().len(), 1, "only the accepted run is a job: {jobs}");
        // Another applet is not held back by slow-one.
        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ola"), Some(r#"{"threshold": 1}"#)).await.0, 200);
        let id = first["job_id"].as_str().unwrap();
        assert_eq!(call(&s, "POST", &format!("/api/v1/jobs/{id}/cancel"), Some("ola"), None).await.0, 200);
    });
}

#[test]
fn graceful_shutdown_cancels_running_jobs_and_keeps_queued_ones() {
    let mut s = server(&["--run-threads", "1", "--shutdown-grace", "500ms"]);
    let (running, queued) = rt().block_on(async {
        let (_, a) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        // slow-one sleeps 0.5 s (holding no CPU slot), then computes: the next run waits for it.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let (_, b) = call(&s, "POST", "/api/v1/applets/disk-report/run?async=true", Some("ola"), Some(r#"{"threshold": 8}"#)).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        (a["job_id"].as_str().unwrap().to_string(), b["job_id"].as_str().unwrap().to_string())
    });
    s.stop();
    // Read the jobs straight from the store the stopped server left behind.
    let store = opslet::store::Store::open(&s.data(), std::time::Duration::from_secs(5)).unwrap();
    let jobs = opslet::service::Jobs::new(store).unwrap();
    assert_eq!(jobs.get(&running).unwrap().unwrap().status.name(), "cancelled");
    assert_eq!(jobs.get(&queued).unwrap().unwrap().status.name(), "queued", "a queued job waits for the next start");
}

/// Every route, every role: 401 without a token, 403 when the role (or grant) does not allow
/// it, and anything else (the route's own answer) when it does.
#[test]
fn full_auth_matrix() {
    let s = server(&[]);
    rt().block_on(async {
        // A finished job of ola's, for the job routes.
        let (_, job) = call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ola"), Some(r#"{"threshold": 1}"#)).await;
        let id = job["run_id"].as_str().unwrap().to_string();
        let job_path = format!("/api/v1/jobs/{id}");
        let cancel_path = format!("/api/v1/jobs/{id}/cancel");
        let events_path = format!("/api/v1/jobs/{id}/events");
        // (method, path, body, roles allowed); `ola` is an operator with a grant for disk-*.
        let all = ["vic", "ola", "oz", "pat", "aud", "ada"];
        let routes: Vec<(&str, &str, Option<&str>, Vec<&str>)> = vec![
            ("GET", "/readyz", None, all.to_vec()),
            ("GET", "/metrics", None, all.to_vec()),
            ("GET", "/api/v1/openapi.json", None, all.to_vec()),
            ("GET", "/api/v1/applets", None, all.to_vec()),
            ("GET", "/api/v1/search?q=disk", None, all.to_vec()),
            ("GET", "/api/v1/applets/disk-report", None, all.to_vec()),
            ("GET", "/api/v1/applets/disk-report/versions", None, all.to_vec()),
            ("POST", "/api/v1/applets/disk-report/run?dry_run=true", Some(r#"{"threshold": 2}"#), vec!["ola", "ada"]),
            ("POST", "/api/v1/registry/publish", Some("{}"), vec!["pat", "ada"]),
            ("POST", "/api/v1/applets/disk-report/promote?version=1.0.0", None, vec!["pat", "ada"]),
            ("POST", "/api/v1/applets/disk-report/rollback", None, vec!["pat", "ada"]),
            ("POST", "/api/v1/applets/disk-report/yank?version=9.9.9", None, vec!["pat", "ada"]),
            ("GET", "/api/v1/audit", None, vec!["aud", "ada"]),
            ("GET", "/api/v1/audit/verify", None, vec!["aud", "ada"]),
            ("GET", "/api/v1/jobs", None, all.to_vec()),
            ("GET", "/api/v1/workers", None, all.to_vec()),
            ("GET", &job_path, None, vec!["ola", "aud", "ada"]),
            ("GET", &events_path, None, vec!["ola", "aud", "ada"]),
            ("POST", &cancel_path, None, vec!["ola", "ada"]),
            ("GET", "/api/v1/users", None, vec!["ada"]),
            ("POST", "/api/v1/users", Some(r#"{"name": "Bad Name", "role": "viewer"}"#), vec!["ada"]),
            ("DELETE", "/api/v1/users/nobody", None, vec!["ada"]),
            ("PATCH", "/api/v1/users/nobody", Some(r#"{"role": "viewer"}"#), vec!["ada"]),
            ("POST", "/api/v1/users/nobody/tokens", None, vec!["ada"]),
            ("GET", "/api/v1/tokens", None, vec!["ada"]),
            ("DELETE", "/api/v1/tokens/00000000", None, vec!["ada"]),
            ("GET", "/api/v1/grants", None, vec!["ada"]),
            ("POST", "/api/v1/grants", Some(r#"{"subject": "Bad Name", "pattern": "x"}"#), vec!["ada"]),
            ("DELETE", "/api/v1/grants", Some(r#"{"subject": "nobody", "pattern": "x"}"#), vec!["ada"]),
            ("GET", "/api/v1/hooks", None, vec!["ada"]),
            ("GET", "/api/v1/notifications", None, vec!["ada"]),
            ("POST", "/api/v1/hooks", Some(r#"{"name": "Bad Name", "applet": "x"}"#), vec!["ada"]),
            ("DELETE", "/api/v1/hooks/nobody", None, vec!["ada"]),
            ("PUT", "/api/v1/users/nobody/password", Some(r#"{"password": "long enough at last"}"#), vec!["ada"]),
            ("GET", "/api/v1/secrets", None, vec!["ada"]),
            ("PUT", "/api/v1/secrets/matrix", Some(r#"{"value": "v"}"#), vec!["ada"]),
            ("DELETE", "/api/v1/secrets/nobody", None, vec!["ada"]),
            ("POST", "/api/v1/commands/00000000/cancel", None, all.to_vec()),
        ];
        for (method, path, body, allowed) in &routes {
            let (code, resp) = call(&s, method, path, None, *body).await;
            assert_eq!(code, 401, "{method} {path} without a token: {resp}");
            for user in all {
                let (code, resp) = call(&s, method, path, Some(user), *body).await;
                if allowed.contains(&user) {
                    assert!(code != 401 && code != 403, "{method} {path} as {user} should be allowed, got {code}: {resp}");
                } else {
                    assert_eq!(code, 403, "{method} {path} as {user}: {resp}");
                }
            }
        }
        assert_eq!(call(&s, "GET", "/healthz", None, None).await.0, 200);
    });
}

#[test]
fn a_busy_applet_does_not_hold_up_other_runs() {
    let s = server(&["--run-threads", "2"]);
    rt().block_on(async {
        let (code, _) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        assert_eq!(code, 202);
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        // slow-one now spins on one run thread until its CPU limit; short runs use the other.
        for i in 0..20 {
            let (code, body) =
                call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ola"), Some(&format!(r#"{{"threshold": {i}}}"#))).await;
            assert_eq!((code, body["result"]["threshold"].as_i64()), (200, Some(i)), "{body}");
        }
    });
}

#[test]
fn dev_dir_applets_reload_when_their_files_change() {
    let dev = tempfile::tempdir().unwrap();
    let folder = dev.path().join("dev-hello");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("applet.toml"), "name = \"dev-hello\"\nversion = \"0.1.0\"\n").unwrap();
    std::fs::write(folder.join("main.lua"), "return function() return 'first' end").unwrap();
    let s = server(&["--dev", dev.path().to_str().unwrap()]);
    rt().block_on(async {
        let run = "/api/v1/applets/dev-hello/run";
        let (code, body) = call(&s, "POST", run, Some("ada"), None).await;
        assert_eq!((code, body["result"].clone()), (200, json!("first")), "{body}");
        std::fs::write(folder.join("main.lua"), "return function() return 'second' end").unwrap();
        let mut last = Value::Null;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            last = call(&s, "POST", run, Some("ada"), None).await.1;
            if last["result"] == json!("second") {
                break;
            }
        }
        assert_eq!(last["result"], json!("second"), "the edit was picked up: {last}");
        std::fs::write(folder.join("main.lua"), "return function( return 1 end").unwrap();
        let mut code = 0;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            code = call(&s, "POST", run, Some("ada"), None).await.0;
            if code == 422 {
                break;
            }
        }
        assert_eq!(code, 422, "a broken edit is reported, not run");
        // Registry applets are still there beside the dev ones.
        assert_eq!(call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ada"), Some(r#"{"threshold": 3}"#)).await.0, 200);
    });
}

#[test]
fn settings_come_from_opslet_toml_and_flags_override_them() {
    let s = server_with_config("[serve]\napplet_limit = 1\nqueue = 8\n", &[]);
    rt().block_on(async {
        assert_eq!(call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await.0, 202);
        assert_eq!(
            call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await.0,
            429,
            "applet_limit from opslet.toml"
        );
    });
    let s = server_with_config("[serve]\napplet_limit = 1\n", &["--applet-limit", "5"]);
    rt().block_on(async {
        for _ in 0..2 {
            assert_eq!(call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await.0, 202, "the flag wins");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("opslet.toml"), "[serve]\nlisten = \"nowhere\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_opslet")).args(["serve"]).env("OPSLET_DATA_DIR", dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("serve.listen `nowhere`"));
}

#[test]
fn anonymous_refusals_cannot_flood_the_audit_log_and_one_caller_cannot_take_every_slot() {
    let mut s = server(&["--user-limit", "1", "--applet-limit", "0"]);
    rt().block_on(async {
        let long = format!("/api/v1/jobs/{}", "b".repeat(10_000));
        for _ in 0..100 {
            assert_eq!(call(&s, "GET", &long, None, None).await.0, 401);
        }
        assert_eq!(call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await.0, 202);
        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-report/run?async=true", Some("ola"), Some(r#"{"threshold": 1}"#)).await;
        assert_eq!(code, 429, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit per caller"), "{body}");
        assert_eq!(
            call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ada"), Some(r#"{"threshold": 1}"#)).await.0,
            200,
            "others still run"
        );
    });
    s.stop();
    let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["audit", "list", "--kind", "http.denied", "--limit", "1000", "--format", "json"])
        .env("OPSLET_DATA_DIR", s.data())
        .output()
        .unwrap();
    let denied: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(denied.len() <= 45, "{} records for 100 anonymous refusals", denied.len());
    assert!(denied.iter().all(|d| d["data"]["path"].as_str().unwrap().len() <= 256));
}

#[test]
fn admins_manage_accounts_grants_and_hooks_over_http_while_the_server_runs() {
    let mut s = server(&[]);
    rt().block_on(async {
        let (code, _) =
            call(&s, "POST", "/api/v1/users", Some("ada"), Some(r#"{"name": "newbie", "role": "operator", "groups": ["oncall"]}"#)).await;
        assert_eq!(code, 201);
        let (code, t) = call(&s, "POST", "/api/v1/users/newbie/tokens", Some("ada"), Some(r#"{"expires": "1h", "label": "api"}"#)).await;
        assert_eq!(code, 201, "{t}");
        s.tokens.insert("newbie", t["token"].as_str().unwrap().to_string());
        let run = "/api/v1/applets/disk-report/run";
        assert_eq!(call(&s, "POST", run, Some("newbie"), Some(r#"{"threshold": 1}"#)).await.0, 403, "no grant yet");
        assert_eq!(
            call(&s, "POST", "/api/v1/grants", Some("ada"), Some(r#"{"subject": "group:oncall", "pattern": "disk-*"}"#)).await.0,
            201
        );
        assert_eq!(call(&s, "POST", run, Some("newbie"), Some(r#"{"threshold": 1}"#)).await.0, 200, "the group grant applies at once");
        let (_, tokens) = call(&s, "GET", "/api/v1/tokens", Some("ada"), None).await;
        assert!(!tokens.to_string().contains(&s.tokens["newbie"][16..]), "token secrets are never listed");
        let id = t["id"].as_str().unwrap();
        assert_eq!(call(&s, "DELETE", &format!("/api/v1/tokens/{id}"), Some("ada"), None).await.0, 200);
        assert_eq!(call(&s, "POST", run, Some("newbie"), Some(r#"{"threshold": 1}"#)).await.0, 401, "revoked at once");

        let (code, h) = call(
            &s,
            "POST",
            "/api/v1/hooks",
            Some("ada"),
            Some(r#"{"name": "api-hook", "applet": "disk-report", "map": ["threshold=$.v"]}"#),
        )
        .await;
        assert_eq!(code, 201, "{h}");
        let secret = h["secret"].as_str().unwrap();
        let body = r#"{"v": 42}"#;
        let now = chrono::Utc::now().timestamp();
        let resp = reqwest::Client::new()
            .post(format!("{}/hooks/api-hook", s.base))
            .header("X-Opslet-Timestamp", now.to_string())
            .header("X-Opslet-Signature", opslet::service::hooks::sign(secret, now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let (_, hooks) = call(&s, "GET", "/api/v1/hooks", Some("ada"), None).await;
        assert!(!hooks.to_string().contains(secret), "hook secrets are never listed");
        assert_eq!(call(&s, "DELETE", "/api/v1/users/newbie", Some("ada"), None).await.0, 200);
    });
}

#[test]
fn an_admin_changes_roles_and_groups_which_apply_at_once_and_the_last_admin_stays() {
    let s = server(&[]);
    rt().block_on(async {
        let run = "/api/v1/applets/disk-report/run";
        assert_eq!(call(&s, "POST", run, Some("vic"), Some(r#"{"threshold": 1}"#)).await.0, 403, "a viewer runs nothing");
        // Promote vic to operator in a group that has a grant: the same token runs at once.
        assert_eq!(
            call(&s, "POST", "/api/v1/grants", Some("ada"), Some(r#"{"subject": "group:night", "pattern": "disk-*"}"#)).await.0,
            201
        );
        let (code, u) = call(&s, "PATCH", "/api/v1/users/vic", Some("ada"), Some(r#"{"role": "operator", "groups": ["night"]}"#)).await;
        assert_eq!((code, u["role"].as_str(), u["groups"].clone()), (200, Some("operator"), json!(["night"])), "{u}");
        assert_eq!(call(&s, "POST", run, Some("vic"), Some(r#"{"threshold": 1}"#)).await.0, 200);
        // Out of the group: the grant no longer applies; the role is kept.
        let (code, u) = call(&s, "PATCH", "/api/v1/users/vic", Some("ada"), Some(r#"{"groups": []}"#)).await;
        assert_eq!((code, u["role"].as_str()), (200, Some("operator")));
        assert_eq!(call(&s, "POST", run, Some("vic"), Some(r#"{"threshold": 1}"#)).await.0, 403);

        // Bad changes say what was wrong.
        let (code, e) = call(&s, "PATCH", "/api/v1/users/vic", Some("ada"), Some(r#"{"role": "root"}"#)).await;
        assert_eq!(code, 400, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("root"), "{e}");
        let (code, e) = call(&s, "PATCH", "/api/v1/users/vic", Some("ada"), Some(r#"{"groups": ["Bad Group"]}"#)).await;
        assert!(code == 400 && e["error"]["message"].as_str().unwrap().contains("group name"), "{code} {e}");
        let (code, e) = call(&s, "PATCH", "/api/v1/users/vic", Some("ada"), Some(r#"{"admin": true}"#)).await;
        assert!(code == 400 && e["error"]["message"].as_str().unwrap().contains("admin"), "unknown fields are refused: {code} {e}");
        assert_eq!(call(&s, "PATCH", "/api/v1/users/vic", Some("ada"), Some("{}")).await.0, 400, "nothing to change");
        assert_eq!(call(&s, "PATCH", "/api/v1/users/nobody", Some("ada"), Some(r#"{"role": "viewer"}"#)).await.0, 404);
        // A user cannot raise themselves.
        assert_eq!(call(&s, "PATCH", "/api/v1/users/vic", Some("vic"), Some(r#"{"role": "admin"}"#)).await.0, 403);

        // ada is the only admin: she can neither step down nor be removed.
        let (code, e) = call(&s, "PATCH", "/api/v1/users/ada", Some("ada"), Some(r#"{"role": "viewer"}"#)).await;
        assert!(code == 400 && e["error"]["message"].as_str().unwrap().contains("only admin"), "{code} {e}");
        let (code, e) = call(&s, "DELETE", "/api/v1/users/ada", Some("ada"), None).await;
        assert!(code == 400 && e["error"]["message"].as_str().unwrap().contains("only admin"), "{code} {e}");
        // With a second admin she can.
        assert_eq!(call(&s, "PATCH", "/api/v1/users/pat", Some("ada"), Some(r#"{"role": "admin"}"#)).await.0, 200);
        assert_eq!(call(&s, "PATCH", "/api/v1/users/ada", Some("ada"), Some(r#"{"role": "auditor"}"#)).await.0, 200);
        assert_eq!(call(&s, "GET", "/api/v1/users", Some("ada"), None).await.0, 403, "the demotion applies to her own token at once");
        let (code, users) = call(&s, "GET", "/api/v1/users", Some("pat"), None).await;
        assert_eq!(code, 200);
        assert!(users.as_array().unwrap().iter().all(|u| u["password"] == json!(false) && u.get("hash").is_none()), "{users}");

        // Each change is audited with what it was before.
        let (_, audit) = call(&s, "GET", "/api/v1/audit?kind=auth.user.change", Some("pat"), None).await;
        let changes = audit.as_array().unwrap();
        assert_eq!(changes.len(), 4, "{audit}");
        assert_eq!(changes[0]["data"]["was"]["role"], "viewer");
        assert_eq!(changes[0]["actor"], "ada");
    });
}

#[test]
fn ssh_progress_streams_over_sse() {
    let fleet = sshd::Fleet::start(3, "web");
    let config = "[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n";
    let s = server_with(config, &[], |dir, data| {
        let mut csv = String::from("name,address,port,groups,host_key\n");
        for h in &fleet.hosts {
            csv.push_str(&format!("{},{},{},web,{}\n", h.name, h.address, h.port, h.host_key));
        }
        std::fs::write(dir.join("hosts.csv"), csv).unwrap();
        opslet(data, &["cmdb", "import", dir.join("hosts.csv").to_str().unwrap()]);
        opslet(data, &["secret", "set", "ssh-key", "--file", fleet.dir.path().join("client").to_str().unwrap()]);
        let d = dir.join("fleet-check");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("applet.toml"),
            "name = \"fleet-check\"\nversion = \"1.0.0\"\n[permissions]\nssh = { hosts = [\"group:web\"] }\n",
        )
        .unwrap();
        // The pause lets the test subscribe before the hosts are contacted.
        std::fs::write(d.join("main.lua"), "return function() time.sleep(1) local n = 0 for _, r in ipairs(ssh.run('group:web', 'uname -s')) do if r.ok then n += 1 end end return n end").unwrap();
        opslet(data, &["publish", d.to_str().unwrap()]);
        opslet(data, &["grant", "add", "ola", "fleet-*"]);
    });
    rt().block_on(async {
        let (code, body) = call(&s, "POST", "/api/v1/applets/fleet-check/run?async=true", Some("ola"), None).await;
        assert_eq!(code, 202, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let events = sse(&s, "ola", &id).await;
        let progress: Vec<Value> = events
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["line"].get("progress").cloned())
            .collect();
        assert_eq!(progress.len(), 3, "one event per finished host: {events}");
        assert!(progress.iter().all(|p| p["call"] == "ssh.run" && p["total"] == 3));
        let last = progress.last().unwrap();
        assert_eq!((last["ok"].as_u64(), last["pending"].as_u64()), (Some(3), Some(0)), "{last}");
        let job = poll_job(&s, "ola", &id).await;
        assert_eq!(job["result"], json!(3));
        // Progress is not part of the stored log.
        assert!(job["logs"].as_array().unwrap().iter().all(|l| l.get("progress").is_none()), "{job}");
    });
}

/// A raw request with a cookie and/or CSRF header: (status, set-cookie, body).
async fn cookie_call(
    s: &Server,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<&str>,
) -> (u16, String, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", s.base);
    let mut req = match method {
        "POST" => client.post(&url),
        "DELETE" => client.delete(&url),
        _ => client.get(&url),
    };
    if let Some(c) = cookie {
        req = req.header("Cookie", format!("opslet_session={c}"));
    }
    if let Some(t) = csrf {
        req = req.header("X-CSRF-Token", t);
    }
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let set = resp.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = resp.text().await.unwrap();
    (status, set, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn console_sessions_resist_guessing_csrf_and_stale_cookies() {
    let s = server_with("", &[], |_, data| {
        for user in ["ola", "vic"] {
            set_password(data, user, &format!("{user}-long-password"));
        }
        // Too short: refused.
        let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["user", "passwd", "oz", "--file", "/dev/null"])
            .env("OPSLET_DATA_DIR", data)
            .output()
            .unwrap();
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("too short"));
    });
    rt().block_on(async {
        let login = |user: &str, pw: &str| format!(r#"{{"user": "{user}", "password": "{pw}"}}"#);
        // Wrong password, unknown user and a user without a password all look the same.
        for body in [login("ola", "nope-nope-nope"), login("nobody", "whatever-long"), login("oz", "oz-long-password")] {
            let (code, set, v) = cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&body)).await;
            assert_eq!((code, set.as_str()), (401, ""), "{body}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains("wrong user name or password"), "{v}");
        }
        // A good sign-in: HttpOnly, SameSite=Strict cookie; the CSRF token in the body.
        let (code, set, v) = cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&login("ola", "ola-long-password"))).await;
        assert_eq!(code, 200, "{v}");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
        let sid = set.split(';').next().unwrap().strip_prefix("opslet_session=").unwrap().to_string();
        let csrf = v["csrf"].as_str().unwrap().to_string();
        assert_eq!((v["user"].as_str(), v["role"].as_str()), (Some("ola"), Some("operator")));
        assert!(!v.to_string().contains(&sid), "the session id is only in the cookie");

        // Reads work with the cookie alone; writes need the CSRF token, and only the right one.
        let (code, _, me) = cookie_call(&s, "GET", "/api/v1/session", Some(&sid), None, None).await;
        assert_eq!((code, me["csrf"].as_str()), (200, Some(csrf.as_str())));
        let run = "/api/v1/applets/disk-report/run";
        let body = Some(r#"{"threshold": 5}"#);
        assert_eq!(cookie_call(&s, "POST", run, Some(&sid), None, body).await.0, 403);
        assert_eq!(cookie_call(&s, "POST", run, Some(&sid), Some("0".repeat(48).as_str()), body).await.0, 403);
        let (code, _, v) = cookie_call(&s, "POST", run, Some(&sid), Some(&csrf), body).await;
        assert_eq!((code, v["result"]["threshold"].as_i64()), (200, Some(5)), "{v}");
        // A forged or guessed cookie is no session.
        assert_eq!(cookie_call(&s, "GET", "/api/v1/jobs", Some(&"f".repeat(64)), None, None).await.0, 401);
        // Another session's CSRF token does not fit this one.
        let (_, set2, v2) = cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&login("vic", "vic-long-password"))).await;
        let sid2 = set2.split(';').next().unwrap().strip_prefix("opslet_session=").unwrap().to_string();
        assert_eq!(cookie_call(&s, "POST", run, Some(&sid), v2["csrf"].as_str(), body).await.0, 403);
        // The viewer's session cannot run even with its own token.
        assert_eq!(cookie_call(&s, "POST", run, Some(&sid2), v2["csrf"].as_str(), body).await.0, 403);

        // Signing out ends the session: the old cookie no longer works.
        let (code, set, _) = cookie_call(&s, "DELETE", "/api/v1/session", Some(&sid), Some(&csrf), None).await;
        assert!(code == 200 && set.contains("Max-Age=0"), "{set}");
        assert_eq!(cookie_call(&s, "GET", "/api/v1/jobs", Some(&sid), None, None).await.0, 401);

        // A removed user's session dies with the account.
        let (code, _) = call(&s, "DELETE", "/api/v1/users/vic", Some("ada"), None).await;
        assert_eq!(code, 200);
        assert_eq!(cookie_call(&s, "GET", "/api/v1/jobs", Some(&sid2), None, None).await.0, 401);

        // Guessing is throttled per user after five failures in a minute.
        let mut codes = Vec::new();
        for _ in 0..7 {
            codes.push(cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&login("ola", "guess-guess-guess"))).await.0);
        }
        assert_eq!(codes, [401, 401, 401, 401, 401, 429, 429]);
        // Sign-ins are audited; refusals too.
        let (_, recs) = call(&s, "GET", "/api/v1/audit?kind=http.signin", Some("aud"), None).await;
        assert!(!recs.as_array().unwrap().is_empty());

        // Parallel guesses for one user cannot slip past the count (it is taken before hashing).
        let (_, set3, _) =
            cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&format!(r#"{{"token": "{}"}}"#, s.tokens["oz"]))).await;
        assert!(set3.contains("HttpOnly"));
        let guesses = (0..12).map(|_| {
            let base = s.base.clone();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{base}/api/v1/session"))
                    .header("Content-Type", "application/json")
                    .body(r#"{"user": "zed", "password": "guess-guess-guess"}"#)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        });
        let mut got = Vec::new();
        for g in guesses {
            got.push(g.await.unwrap());
        }
        assert_eq!(got.iter().filter(|c| **c == 401).count(), 5, "{got:?}");
        assert_eq!(got.iter().filter(|c| **c == 429).count(), 7, "{got:?}");
        // Over-long names are refused before any work.
        let long = format!(r#"{{"user": "{}", "password": "x"}}"#, "a".repeat(100));
        assert_eq!(cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&long)).await.0, 400);

        // A session started with a token ends when the token is revoked.
        let (code, created) = call(&s, "POST", "/api/v1/users/ola/tokens", Some("ada"), Some(r#"{"label": "console"}"#)).await;
        assert_eq!(code, 201, "{created}");
        let token = created["token"].as_str().unwrap().to_string();
        let (_, set4, _) = cookie_call(&s, "POST", "/api/v1/session", None, None, Some(&format!(r#"{{"token": "{token}"}}"#))).await;
        let sid4 = set4.split(';').next().unwrap().strip_prefix("opslet_session=").unwrap().to_string();
        assert_eq!(cookie_call(&s, "GET", "/api/v1/jobs", Some(&sid4), None, None).await.0, 200);
        let id = created["id"].as_str().unwrap();
        assert_eq!(call(&s, "DELETE", &format!("/api/v1/tokens/{id}"), Some("ada"), None).await.0, 200);
        let (code, _, v) = cookie_call(&s, "GET", "/api/v1/jobs", Some(&sid4), None, None).await;
        assert_eq!(code, 401, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("revoked"), "{v}");

        // API answers are never cached.
        let resp = reqwest::Client::new().get(format!("{}/api/v1/applets", s.base)).bearer_auth(&s.tokens["vic"]).send().await.unwrap();
        assert_eq!(resp.headers()["cache-control"], "no-store");

        // The console's own page: served with a strict policy, no inline script allowed.
        let resp = reqwest::get(format!("{}/ui/", s.base)).await.unwrap();
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(resp.text().await.unwrap().contains("/ui/app.js"));
    });
}

#[test]
fn a_run_that_fails_is_answered_200_with_its_error_in_the_one_shape() {
    let s = server_with("", &[], |dir, data| {
        let d = dir.join("disk-fails");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("applet.toml"), "name = \"disk-fails\"\nversion = \"1.0.0\"\n").unwrap();
        std::fs::write(d.join("main.lua"), "return function() error('disk full on /var') end").unwrap();
        opslet(data, &["publish", d.to_str().unwrap()]);
    });
    rt().block_on(async {
        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-fails/run", Some("ola"), None).await;
        // The request was fine; the run failed: 200, and the run's status and error say how.
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], json!("error"));
        assert_eq!(body["error"]["code"], json!("applet_error"));
        assert!(body["error"]["message"].as_str().unwrap().contains("main.lua:1: disk full on /var"), "{body}");
        assert!(body.get("result").is_none(), "{body}");
    });
}

#[test]
fn every_error_answer_has_the_one_body() {
    let s = server(&[]);
    rt().block_on(async {
        let shape = |code: u16, body: &Value, want: &str| {
            assert_eq!(body["error"]["code"], json!(want), "{code}: {body}");
            assert!(!body["error"]["message"].as_str().unwrap_or_default().is_empty(), "{code}: {body}");
        };
        // Made by the handlers.
        let (code, body) = call(&s, "GET", "/api/v1/applets/no-such", Some("ada"), None).await;
        assert_eq!(code, 404);
        shape(code, &body, "not_found");
        // Made by axum's extractors, the body limit and the router, given the same body.
        let (code, body) = call(&s, "GET", "/api/v1/search?q=x&limit=many", Some("ada"), None).await;
        assert_eq!(code, 400);
        shape(code, &body, "bad_request");
        let (code, body) = call(&s, "GET", "/api/v1/nothing-here", Some("ada"), None).await;
        assert_eq!(code, 404);
        shape(code, &body, "not_found");
        assert!(body["error"]["message"].as_str().unwrap().contains("GET /api/v1/nothing-here"), "{body}");
        let (code, body) = call(&s, "DELETE", "/api/v1/applets", Some("ada"), None).await;
        assert_eq!(code, 405);
        shape(code, &body, "method_not_allowed");
        let big = format!(r#"{{"threshold": 1, "pad": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ola"), Some(&big)).await;
        assert_eq!(code, 413);
        shape(code, &body, "too_large");
        let (code, body) = call(&s, "POST", "/api/v1/session", None, Some(r#"{"user": 5}"#)).await;
        assert!(code == 400 || code == 422, "{code} {body}");
        shape(code, &body, "bad_request");
    });
}

#[test]
fn runs_that_wait_hold_no_core_and_a_trivial_run_is_not_held_up_by_them() {
    // Two CPU slots, the default quotas lifted: 200 runs asleep at once, then a trivial run.
    let s = server_with("", &["--run-threads", "2", "--applet-limit", "0", "--user-limit", "0"], |dir, data| {
        let d = dir.join("sleeper");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("applet.toml"), "name = \"sleeper\"\nversion = \"1.0.0\"\n").unwrap();
        std::fs::write(d.join("main.lua"), "return function() time.sleep(6) return 'rested' end").unwrap();
        opslet(data, &["publish", d.to_str().unwrap()]);
        opslet(data, &["grant", "add", "oz", "sleeper"]);
    });
    rt().block_on(async {
        let mut ids = Vec::new();
        for _ in 0..200 {
            let (code, body) = call(&s, "POST", "/api/v1/applets/sleeper/run?async=true", Some("oz"), None).await;
            assert_eq!(code, 202, "{body}");
            ids.push(body["job_id"].as_str().unwrap().to_string());
        }
        // Every sleeper has started: none waits for a core.
        let t0 = std::time::Instant::now();
        loop {
            let (_, running) = call(&s, "GET", "/api/v1/jobs?applet=sleeper&status=running&limit=1000", Some("ada"), None).await;
            if running.as_array().unwrap().len() == 200 {
                break;
            }
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "only {} of 200 sleepers started", running.as_array().unwrap().len());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Another operator's trivial run is answered while they all still sleep.
        let t0 = std::time::Instant::now();
        let (code, body) = call(&s, "POST", "/api/v1/applets/disk-report/run", Some("ola"), Some(r#"{"threshold": 5}"#)).await;
        let took = t0.elapsed();
        assert_eq!((code, body["status"].clone()), (200, json!("ok")), "{body}");
        assert!(took < std::time::Duration::from_secs(2), "a trivial run took {took:?} among 200 sleeping ones");
        let (_, sleeping) = call(&s, "GET", "/api/v1/jobs?applet=sleeper&status=running&limit=1000", Some("ada"), None).await;
        assert_eq!(sleeping.as_array().unwrap().len(), 200, "the sleepers were still asleep");
        // And every sleeper ends well.
        for id in ids.iter().take(5) {
            assert_eq!(poll_job(&s, "oz", id).await["result"], json!("rested"));
        }
    });
}

#[test]
fn console_sessions_survive_a_restart_and_whoami_probes_are_not_audited() {
    let mut s = server_with("", &[], |_, data| {
        set_password(data, "ola", "ola-long-password");
    });
    let (sid, csrf) = rt().block_on(async {
        // A visit to the sign-in page asks who is signed in: not a refusal to record.
        for _ in 0..3 {
            assert_eq!(cookie_call(&s, "GET", "/api/v1/session", None, None, None).await.0, 401);
        }
        let (_, denied) = call(&s, "GET", "/api/v1/audit?kind=http.denied", Some("aud"), None).await;
        assert!(!denied.as_array().unwrap().iter().any(|r| r["data"]["path"] == "/api/v1/session"), "{denied}");
        let (code, set, v) =
            cookie_call(&s, "POST", "/api/v1/session", None, None, Some(r#"{"user": "ola", "password": "ola-long-password"}"#)).await;
        assert_eq!(code, 200, "{v}");
        let sid = set.split(';').next().unwrap().strip_prefix("opslet_session=").unwrap().to_string();
        (sid, v["csrf"].as_str().unwrap().to_string())
    });
    // A restart signs nobody out.
    s.stop();
    let data = s.data();
    // The store keeps a digest of the session id, never the id itself.
    {
        let store = opslet::store::Store::open(&data, std::time::Duration::from_secs(5)).unwrap();
        let kept: Vec<(Vec<u8>, Vec<u8>)> = store.tree("http/sessions").iter().map(|r| r.unwrap()).collect();
        assert_eq!(kept.len(), 1);
        let (k, v) = &kept[0];
        assert!(!String::from_utf8_lossy(k).contains(&sid) && !String::from_utf8_lossy(v).contains(&sid));
    }
    let (child, addr) = serve_proc::spawn(&data, &[]);
    s.child = child;
    s.base = format!("http://{addr}");
    rt().block_on(async {
        let (code, _, me) = cookie_call(&s, "GET", "/api/v1/session", Some(&sid), None, None).await;
        assert_eq!((code, me["user"].as_str(), me["csrf"].as_str()), (200, Some("ola"), Some(csrf.as_str())), "{me}");
        // Signing out after the restart ends it for good.
        let (code, _, _) = cookie_call(&s, "DELETE", "/api/v1/session", Some(&sid), Some(&csrf), None).await;
        assert_eq!(code, 200);
        assert_eq!(cookie_call(&s, "GET", "/api/v1/session", Some(&sid), None, None).await.0, 401);
    });
}

/// Params keep the order the manifest declares them in (the API, the console's form, `show`),
/// and a multi-line param keeps its newlines from the request to the applet.
#[test]
fn params_keep_their_declared_order_and_multiline_text_its_lines() {
    let s = server_with("", &[], |_, data| {
        let applet = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("applets/log-excerpt");
        opslet(data, &["publish", applet.to_str().unwrap()]);
        opslet(data, &["grant", "add", "ola", "log-*"]);
    });
    rt().block_on(async {
        let text = reqwest::Client::new()
            .get(format!("{}/api/v1/applets/log-excerpt", s.base))
            .bearer_auth(&s.tokens["vic"])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":{{")).unwrap_or_else(|| panic!("{k} in {text}"));
        assert!(at("text") < at("min_level") && at("min_level") < at("mode") && at("mode") < at("top"), "{text}");
        assert!(text.contains("\"multiline\":true"), "{text}");
        let logs =
            "2024-05-01T10:00:00Z ERROR [api] timeout\n2024-05-01T10:00:01Z INFO [api] retry\n2024-05-01T10:00:02Z ERROR [db] gone\n";
        let body = serde_json::json!({ "text": logs, "mode": "summary" }).to_string();
        let (code, v) = call(&s, "POST", "/api/v1/applets/log-excerpt/run", Some("ola"), Some(&body)).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["result"]["lines"], 3, "{v}");
    });
    // `show` lists them in that order, with what each allows.
    let shown = opslet(&s.data(), &["show", "log-excerpt"]);
    let at = |k: &str| shown.find(&format!("│ {k} ")).unwrap_or_else(|| panic!("{k} in {shown}"));
    assert!(at("text") < at("min_level") && at("min_level") < at("mode") && at("mode") < at("top"), "{shown}");
    assert!(shown.contains("debug, info, warn, error") && shown.contains("1 to 100") && shown.contains("string (many lines)"), "{shown}");
}

/// Jobs and audit records page newest first past 1,000 entries, each page pointing at the next
/// (`X-Opslet-Next`, passed back as `before`).
#[test]
fn jobs_and_audit_records_page_newest_first_past_a_thousand() {
    let s = server(&["--applet-limit", "0", "--user-limit", "0", "--queue", "2000"]);
    rt().block_on(async {
        let client = reqwest::Client::new();
        for i in 0..1050 {
            let resp = client
                .post(format!("{}/api/v1/applets/disk-report/run?async=true", s.base))
                .bearer_auth(&s.tokens["ola"])
                .json(&json!({ "threshold": i % 100 }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
        }
        let page = |path: String| {
            let (client, token) = (client.clone(), s.tokens["ada"].clone());
            async move {
                let resp = client.get(path).bearer_auth(token).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let next = resp.headers().get("x-opslet-next").map(|v| v.to_str().unwrap().to_string());
                (resp.json::<Vec<Value>>().await.unwrap(), next)
            }
        };
        let mut ids: Vec<String> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let q = before.as_ref().map(|b| format!("&before={b}")).unwrap_or_default();
            let (jobs, next) = page(format!("{}/api/v1/jobs?limit=300{q}", s.base)).await;
            ids.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()));
            match next {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        assert_eq!(ids.len(), 1050);
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first, no job twice");
        // The audit log, newest first, page by page (once every run has ended).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        for status in ["queued", "running"] {
            while !page(format!("{}/api/v1/jobs?status={status}&limit=1", s.base)).await.0.is_empty() {
                assert!(std::time::Instant::now() < deadline, "runs still {status}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        let mut seqs: Vec<u64> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let q = before.as_ref().map(|b| format!("&before={b}")).unwrap_or_default();
            let (records, next) = page(format!("{}/api/v1/audit?order=newest&limit=700{q}", s.base)).await;
            seqs.extend(records.iter().map(|r| r["seq"].as_u64().unwrap()));
            match next {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        assert!(seqs.len() > 2100, "{}", seqs.len());
        assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "every record once, newest first");
        assert_eq!(*seqs.last().unwrap(), 0);
    });
}

/// An event stream a console session opened ends when the session signs out.
#[test]
fn a_sessions_event_stream_ends_when_it_signs_out() {
    let s = server_with("", &[], |_, data| {
        set_password(data, "ola", "ola-long-password");
    });
    rt().block_on(async {
        let (code, set, v) =
            cookie_call(&s, "POST", "/api/v1/session", None, None, Some(r#"{"user": "ola", "password": "ola-long-password"}"#)).await;
        assert_eq!(code, 200, "{v}");
        let sid = set.split(';').next().unwrap().strip_prefix("opslet_session=").unwrap().to_string();
        let csrf = v["csrf"].as_str().unwrap().to_string();
        let (code, job) = call(&s, "POST", "/api/v1/applets/slow-one/run?async=true", Some("ola"), None).await;
        assert_eq!(code, 202, "{job}");
        let id = job["job_id"].as_str().unwrap().to_string();
        let mut events = reqwest::Client::new()
            .get(format!("{}/api/v1/jobs/{id}/events", s.base))
            .header("Cookie", format!("opslet_session={sid}"))
            .send()
            .await
            .unwrap();
        assert_eq!(events.status(), 200);
        let first = events.chunk().await.unwrap().expect("the stream starts");
        assert!(String::from_utf8_lossy(&first).contains("event: status"), "{}", String::from_utf8_lossy(&first));
        let (code, _, _) = cookie_call(&s, "DELETE", "/api/v1/session", Some(&sid), Some(&csrf), None).await;
        assert_eq!(code, 200);
        // The stream ends within a few seconds, though the job runs on.
        let ended =
            tokio::time::timeout(std::time::Duration::from_secs(10), async { while let Ok(Some(_)) = events.chunk().await {} }).await;
        assert!(ended.is_ok(), "the stream outlived its session");
        let (_, j) = call(&s, "GET", &format!("/api/v1/jobs/{id}"), Some("ola"), None).await;
        assert_eq!(j["status"], "running", "{j}");
        call(&s, "POST", &format!("/api/v1/jobs/{id}/cancel"), Some("ola"), None).await;
    });
}
