//! Schedules against a real `opslet serve`: fires on time in a time zone, no double fire,
//! pause and resume, the missed-run policies across a restart, owners' grants at fire time,
//! validation over HTTP and the CLI, and run-now.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

#[path = "common/serve.rs"]
mod serve_proc;

struct Server {
    child: Option<Child>,
    base: String,
    dir: tempfile::TempDir,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl Server {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server the way an operator would (SIGTERM).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            serve_proc::stop(&mut child);
        }
    }

    fn start(&mut self) {
        let (child, addr) = serve_proc::spawn(&self.data(), &[]);
        (self.child, self.base) = (Some(child), format!("http://{addr}"));
    }

    fn call(&self, method: &str, path: &str, user: &str, body: Option<Value>) -> (u16, Value) {
        opslet::install_tls_provider();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let url = format!("{}{path}", self.base);
            let mut req = match method {
                "POST" => client.post(&url),
                "DELETE" => client.delete(&url),
                _ => client.get(&url),
            };
            req = req.header("Authorization", format!("Bearer {}", self.tokens[user]));
            if let Some(b) = body {
                req = req.header("Content-Type", "application/json").body(b.to_string());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    /// `opslet ARGS` on the data dir (through the running server's socket when there is one).
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(args)
            .env("OPSLET_DATA_DIR", self.data())
            .env_remove("OPSLET_SERVER")
            .output()
            .unwrap()
    }

    /// `opslet --server URL ARGS` as `user`.
    fn remote(&self, user: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["--server", &self.base])
            .args(args)
            .env("OPSLET_TOKEN", &self.tokens[user])
            .env_remove("OPSLET_DATA_DIR")
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    fn add(&self, user: &str, body: Value) -> Value {
        let (code, v) = self.call("POST", "/api/v1/schedules", user, Some(body));
        assert_eq!(code, 201, "{v}");
        v
    }

    /// The jobs schedule `name` made, oldest first.
    fn jobs(&self, name: &str) -> Vec<Value> {
        let (code, v) = self.call("GET", "/api/v1/jobs?limit=1000", "ada", None);
        assert_eq!(code, 200, "{v}");
        let mut jobs: Vec<Value> = v.as_array().unwrap().iter().filter(|j| j["schedule"] == json!(name)).cloned().collect();
        jobs.reverse();
        jobs
    }

    fn audit(&self, kind: &str) -> Vec<Value> {
        let (code, v) = self.call("GET", &format!("/api/v1/audit?kind={kind}&limit=10000"), "ada", None);
        assert_eq!(code, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    fn audit_of(&self, kind: &str, schedule: &str) -> Vec<Value> {
        self.audit(kind).into_iter().filter(|r| r["data"]["schedule"] == json!(schedule)).collect()
    }

    fn schedule(&self, name: &str) -> Value {
        let (code, v) = self.call("GET", &format!("/api/v1/schedules/{name}"), "ada", None);
        assert_eq!(code, 200, "{v}");
        v
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

/// A data dir with applets `tick` (params `label`, `count` up to 100, secret `token`) and
/// `other`, accounts ada (admin), ola (operator, may run `tick*`), oz (operator, no grants) and
/// their tokens; the server is started unless `start` is false.
fn server(start: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("opslet.toml"), "[serve]\nshutdown_grace = \"1s\"\n").unwrap();
    let applet = |name: &str, manifest: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest}")).unwrap();
        std::fs::write(d.join("main.lua"), "return function(p, ctx) return { label = p.label, caller = ctx.caller } end").unwrap();
        opslet(&data, &["publish", d.to_str().unwrap()]);
    };
    applet(
        "tick",
        "[params.label]\ntype = \"string\"\ndefault = \"x\"\n[params.count]\ntype = \"integer\"\nmax = 100\n[params.token]\ntype = \"string\"\nsecret = true\n",
    );
    applet("other", "");
    let mut tokens = std::collections::HashMap::new();
    for (user, role) in [("ada", "admin"), ("ola", "operator"), ("oz", "operator")] {
        opslet(&data, &["user", "add", user, "--role", role]);
        tokens.insert(user, opslet(&data, &["token", "create", user]));
    }
    opslet(&data, &["grant", "add", "ola", "tick*"]);
    let mut s = Server { child: None, base: String::new(), dir, tokens };
    if start {
        s.start();
    }
    s
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    panic!("timed out waiting for {what}");
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap_or_else(|| panic!("not a time: {v}")).parse().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn fires_on_time_in_a_time_zone() {
    let s = server(true);
    // A wall-clock instant 5 s ahead in Asia/Kolkata (+05:30): a zone mix-up would be hours off.
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let at = (Utc::now() + chrono::Duration::seconds(5)).with_timezone(&tz);
    let at_utc = at.with_timezone(&Utc).with_nanosecond_zero();
    use chrono::Timelike;
    let cron = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    let o = s.cli(&[
        "schedule",
        "add",
        "daily",
        "--applet",
        "tick",
        "--cron",
        &cron,
        "--tz",
        "Asia/Kolkata",
        "--owner",
        "ola",
        "-p",
        "label=kolkata",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("+05:30"), "{}", stderr(&o));
    // The list shows the next fire in the zone and in UTC.
    let o = s.cli(&["schedule", "list", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    let daily = list.as_array().unwrap().iter().find(|x| x["name"] == "daily").unwrap().clone();
    assert_eq!(time(&daily["next_fire"]), at_utc, "{daily}");
    let local = daily["next_fire_local"].as_str().unwrap();
    assert!(local.ends_with("+05:30") && local.contains(&at.format("T%H:%M:%S").to_string()), "{local}");
    let table = String::from_utf8(s.cli(&["schedule", "list"]).stdout).unwrap();
    assert!(
        table.contains(&at.format("%H:%M:%S +05:30").to_string()) && table.contains(&at_utc.format("%H:%M:%S UTC").to_string()),
        "{table}"
    );

    wait_for("the fire", Duration::from_secs(12), || !s.jobs("daily").is_empty());
    let jobs = s.jobs("daily");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let submitted = time(&jobs[0]["submitted_at"]);
    let late = submitted - at_utc;
    assert!(late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(1500), "fired at {submitted}, due {at_utc}");
    assert_eq!((jobs[0]["user"].as_str(), jobs[0]["params"]["label"].as_str()), (Some("ola"), Some("kolkata")), "{}", jobs[0]);
    let after = s.schedule("daily");
    assert_eq!(time(&after["last_fire"]), at_utc);
    assert_eq!(time(&after["next_fire"]), at_utc + chrono::Duration::days(1));
    // The job is recorded on the schedule (and audited) right after it is submitted.
    wait_for("the fire's record", Duration::from_secs(3), || s.audit_of("schedule.fire", "daily").len() == 1);
    assert_eq!(s.schedule("daily")["last_job"], jobs[0]["id"]);
    let fires = s.audit_of("schedule.fire", "daily");
    assert_eq!(fires.len(), 1, "{fires:?}");
    assert_eq!((&fires[0]["data"]["job"], &fires[0]["actor"]), (&jobs[0]["id"], &json!("ola")));
    // The run ran as the owner, through the schedule.
    wait_for("the run's end", Duration::from_secs(5), || {
        s.call("GET", &format!("/api/v1/jobs/{}", jobs[0]["id"].as_str().unwrap()), "ada", None).1["status"] == "ok"
    });
    let starts: Vec<Value> = s.audit("run.start").into_iter().filter(|r| r["run_id"] == jobs[0]["id"]).collect();
    assert_eq!(starts.len(), 1);
    assert_eq!((&starts[0]["actor"], &starts[0]["via"]), (&json!("ola"), &json!("schedule")), "{}", starts[0]);
    assert_eq!(s.audit_of("schedule.add", "daily").len(), 1);
}

trait ZeroNanos {
    fn with_nanosecond_zero(self) -> Self;
}

impl ZeroNanos for DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap()
    }
}

#[test]
fn repeated_fires_pause_and_resume() {
    let s = server(true);
    s.add("ola", json!({ "name": "often", "applet": "tick", "cron": "*/2 * * * * *" }));
    wait_for("three fires", Duration::from_secs(10), || s.jobs("often").len() >= 3);
    let (code, v) = s.call("POST", "/api/v1/schedules/often/pause", "ola", None);
    assert_eq!((code, &v["paused"], &v["next_fire"]), (200, &json!(true), &Value::Null), "{v}");
    let paused_at = Utc::now();
    let before = s.jobs("often").len();
    // One fire may have been submitted as the pause was written; none after.
    std::thread::sleep(Duration::from_millis(4500));
    let during = s.jobs("often");
    assert!(during.len() <= before + 1, "fires while paused: {}", during.len() - before);
    assert!(during.iter().all(|j| time(&j["submitted_at"]) < paused_at + chrono::Duration::milliseconds(200)), "{during:?}");
    // Resumed: from the next fire after now, without catching up the paused ones.
    let resumed_at = Utc::now();
    let (code, v) = s.call("POST", "/api/v1/schedules/often/resume", "ola", None);
    assert_eq!(code, 200, "{v}");
    let next = time(&v["next_fire"]);
    assert!(next > resumed_at && next <= resumed_at + chrono::Duration::seconds(2), "{v}");
    wait_for("fires after resume", Duration::from_secs(8), || s.jobs("often").len() >= during.len() + 2);
    let jobs = s.jobs("often");
    let after: Vec<&Value> = jobs.iter().filter(|j| time(&j["submitted_at"]) > resumed_at).collect();
    assert!(time(&after[0]["submitted_at"]) >= next, "a fire before the first one after resume: {after:?}");
    assert!(s.audit_of("schedule.missed", "often").is_empty());
    assert_eq!(s.audit_of("schedule.pause", "often").len(), 1);
    assert_eq!(s.audit_of("schedule.resume", "often").len(), 1);

    // No double fire: one job per fire, each fire an even second, each once.
    let fires = s.audit_of("schedule.fire", "often");
    let mut at: Vec<DateTime<Utc>> = fires.iter().map(|r| time(&r["data"]["fire"])).collect();
    let n = at.len();
    at.sort();
    at.dedup();
    assert_eq!(at.len(), n, "an instant fired twice: {fires:?}");
    assert!(at.iter().all(|t| chrono::Timelike::second(t) % 2 == 0 && chrono::Timelike::nanosecond(t) == 0), "{at:?}");
    let mut ids: Vec<&str> = fires.iter().map(|r| r["data"]["job"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    let jobs = s.jobs("often");
    assert!(ids.len() == n && (jobs.len() == n || jobs.len() == n + 1), "{n} fires, {} jobs", jobs.len());
    let starts = s.audit("run.start");
    for id in &ids {
        assert!(starts.iter().filter(|r| r["run_id"] == json!(id)).count() <= 1, "run {id} started twice");
    }
    // Removed: no more fires.
    let (code, _) = s.call("DELETE", "/api/v1/schedules/often", "ola", None);
    assert_eq!(code, 200);
    let gone = s.jobs("often").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(s.jobs("often").len() <= gone + 1);
    assert_eq!(s.call("GET", "/api/v1/schedules/often", "ada", None).0, 404);
    assert_eq!(s.audit_of("schedule.remove", "often").len(), 1);
}

#[test]
fn missed_runs_across_a_restart_follow_each_policy() {
    let mut s = server(true);
    s.add("ada", json!({ "name": "catchup", "applet": "tick", "cron": "*/2 * * * * *", "owner": "ola", "missed": "once" }));
    s.add("ada", json!({ "name": "skipper", "applet": "tick", "cron": "*/2 * * * * *", "owner": "ola" }));
    assert_eq!(s.schedule("skipper")["missed"], "skip");
    wait_for("a fire of each", Duration::from_secs(8), || !s.jobs("catchup").is_empty() && !s.jobs("skipper").is_empty());
    s.stop();
    let stopped = Utc::now();
    std::thread::sleep(Duration::from_secs(5));
    let fired_before: Vec<(String, DateTime<Utc>)> = {
        // The store is free again: read what was fired before the stop through the CLI.
        let o = s.cli(&["audit", "list", "--kind", "schedule.fire", "--limit", "10000", "--format", "json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array().unwrap().iter().map(|r| (r["data"]["schedule"].as_str().unwrap().to_string(), time(&r["data"]["fire"]))).collect()
    };
    let restarted = Utc::now();
    s.start();
    wait_for("the catch-up", Duration::from_secs(6), || s.audit_of("schedule.missed", "catchup").len() == 1);
    wait_for("the skip", Duration::from_secs(3), || s.audit_of("schedule.missed", "skipper").len() == 1);

    // `once`: exactly one catch-up job, saying how many fires were missed.
    let missed = &s.audit_of("schedule.missed", "catchup")[0]["data"];
    let count = missed["count"].as_u64().unwrap();
    assert!(count >= 2, "{missed}");
    assert_eq!(missed["policy"], "once");
    assert!(
        time(&missed["first"]) > stopped - chrono::Duration::seconds(2)
            && time(&missed["last"]) <= restarted + chrono::Duration::seconds(1),
        "{missed}"
    );
    let catchups: Vec<Value> = s.jobs("catchup").into_iter().filter(|j| j.get("note").is_some()).collect();
    assert_eq!(catchups.len(), 1, "{catchups:?}");
    let note = catchups[0]["note"].as_str().unwrap();
    assert!(note.starts_with(&format!("catch-up run: {count} fires missed while the server was down, first ")), "{note}");
    assert_eq!(missed["job"], catchups[0]["id"]);
    assert_eq!(s.schedule("catchup")["last_miss"]["count"], json!(count));

    // `skip`: no catch-up job, the miss audited and shown.
    let missed = &s.audit_of("schedule.missed", "skipper")[0]["data"];
    assert_eq!((&missed["policy"], missed.get("job")), (&json!("skip"), None), "{missed}");
    assert!(missed["count"].as_u64().unwrap() >= 2);
    assert!(s.jobs("skipper").iter().all(|j| j.get("note").is_none()));
    assert_eq!(s.schedule("skipper")["last_miss"]["policy"], "skip");

    // No double fire: nothing fired before the stop fires again, and fires go on after it.
    wait_for("fires after the restart", Duration::from_secs(6), || {
        s.audit_of("schedule.fire", "skipper").len() > fired_before.iter().filter(|(n, _)| n == "skipper").count()
    });
    let fires = s.audit("schedule.fire");
    for name in ["catchup", "skipper"] {
        let mut at: Vec<DateTime<Utc>> =
            fires.iter().filter(|r| r["data"]["schedule"] == json!(name)).map(|r| time(&r["data"]["fire"])).collect();
        let n = at.len();
        at.sort();
        at.dedup();
        assert_eq!(at.len(), n, "{name}: an instant fired twice");
        let last_before = fired_before.iter().filter(|(n, _)| n == name).map(|(_, t)| *t).max().unwrap();
        assert!(at.iter().filter(|t| **t > last_before).all(|t| *t > restarted - chrono::Duration::milliseconds(1)), "{name}: {at:?}");
    }
    // One job per fire (and the one catch-up).
    let skipper_fires = fires.iter().filter(|r| r["data"]["schedule"] == json!("skipper")).count();
    let skipper_jobs = s.jobs("skipper").len();
    assert!(skipper_jobs == skipper_fires || skipper_jobs == skipper_fires + 1, "{skipper_fires} fires, {skipper_jobs} jobs");
}

#[test]
fn owners_grants_decide_at_every_fire() {
    let s = server(true);
    // Another owner's schedule needs admin, over HTTP and the remote CLI.
    let body = json!({ "name": "for-oz", "applet": "tick", "cron": "0 0 * * *", "owner": "ola" });
    let (code, v) = s.call("POST", "/api/v1/schedules", "oz", Some(body.clone()));
    assert_eq!((code, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    let o = s.remote("oz", &["schedule", "add", "for-oz", "--applet", "tick", "--cron", "0 0 * * *", "--owner", "ola"]);
    assert!(!o.status.success() && stderr(&o).contains("may not administer"), "{}", stderr(&o));
    // One's own, with a grant for the applet: allowed; without one: refused.
    let (code, v) = s.call("POST", "/api/v1/schedules", "oz", Some(json!({ "name": "mine", "applet": "tick", "cron": "0 0 * * *" })));
    assert_eq!(code, 403, "{v}");
    let o = s.remote("ola", &["schedule", "add", "mine", "--applet", "tick", "--cron", "*/2 * * * * *"]);
    assert!(o.status.success(), "{}", stderr(&o));
    s.add("ada", json!({ "name": "adas", "applet": "other", "cron": "0 0 * * *" }));
    // Each sees their own; admins all.
    let names = |user: &str| -> Vec<String> {
        let (_, v) = s.call("GET", "/api/v1/schedules", user, None);
        v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!((names("ola"), names("oz"), names("ada").len()), (vec!["mine".to_string()], Vec::<String>::new(), 2));
    let o = s.remote("ola", &["schedule", "list", "--format", "json"]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap().as_array().unwrap().len(), 1);
    assert_eq!(s.call("POST", "/api/v1/schedules/adas/pause", "ola", None).0, 403);
    assert_eq!(s.call("GET", "/api/v1/schedules/adas", "ola", None).0, 403);

    wait_for("a fire", Duration::from_secs(6), || !s.jobs("mine").is_empty());
    // The owner loses the grant: the next fires are refused and audited, and run nothing.
    let o = s.cli(&["grant", "rm", "ola", "tick*"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let revoked = Utc::now();
    wait_for("a refused fire", Duration::from_secs(6), || !s.audit_of("schedule.refused", "mine").is_empty());
    let refused = &s.audit_of("schedule.refused", "mine")[0];
    assert!(refused["data"]["why"].as_str().unwrap().contains("may no longer run `tick`"), "{refused}");
    let after: Vec<Value> =
        s.jobs("mine").into_iter().filter(|j| time(&j["submitted_at"]) > revoked + chrono::Duration::milliseconds(100)).collect();
    assert!(after.is_empty(), "{after:?}");
    assert!(s.schedule("mine")["last_refusal"]["why"].as_str().unwrap().contains("no longer"));
    // Denied requests are audited.
    assert!(s.audit("http.denied").iter().any(|r| r["actor"] == "oz" && r["data"]["path"] == "/api/v1/schedules"));
}

#[test]
fn bad_schedules_are_refused_field_by_field() {
    let mut s = server(false);
    // Without a server, the CLI edits the store and checks the same way.
    let o = s.cli(&[
        "schedule",
        "add",
        "x",
        "--applet",
        "tick",
        "--cron",
        "0 0 31 2 *",
        "--tz",
        "asia/shanghai",
        "--owner",
        "ola",
        "-p",
        "count=500",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for want in ["--cron: `0 0 31 2 *` never fires", "--tz: `asia/shanghai` is not a time zone; did you mean `Asia/Shanghai`?", "-p count:"]
    {
        assert!(e.contains(want), "{want}: {e}");
    }
    let o = s.cli(&["schedule", "add", "x", "--applet", "tick", "--cron", "*/5 * * * *", "--owner", "ola", "--missed", "once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("schedules fire while `opslet serve` runs"), "{}", stderr(&o));
    let o = s.cli(&["schedule", "run-now", "x"]);
    assert!(!o.status.success() && stderr(&o).contains("opslet serve"), "{}", stderr(&o));
    s.start();

    let post = |body: Value| s.call("POST", "/api/v1/schedules", "ada", Some(body));
    let fields = |v: &Value| -> Vec<(String, String)> {
        v["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["param"].as_str().unwrap().into(), f["message"].as_str().unwrap().into()))
            .collect()
    };
    let (code, v) = post(json!({ "name": "bad", "applet": "tick", "cron": "not a cron", "tz": "Mars/Olympus" }));
    assert_eq!((code, v["error"]["code"].as_str()), (422, Some("invalid_schedule")), "{v}");
    let f = fields(&v);
    assert!(f.iter().any(|(p, m)| p == "cron" && m.contains("not a cron expression")), "{f:?}");
    assert!(f.iter().any(|(p, m)| p == "tz" && m.contains("IANA")), "{f:?}");
    let (_, v) = post(json!({ "name": "bad", "applet": "tick", "cron": "0 0 31 2 *" }));
    assert!(fields(&v).iter().any(|(p, m)| p == "cron" && m.contains("never fires")), "{v}");
    let (_, v) = post(json!({ "name": "bad", "applet": "tick", "cron": "0 * * * *", "tz": "asia/kolkata" }));
    assert!(fields(&v).iter().any(|(p, m)| p == "tz" && m.contains("`Asia/Kolkata`")), "{v}");
    let (_, v) = post(json!({ "name": "bad", "applet": "nope", "cron": "0 * * * *" }));
    assert!(fields(&v).iter().any(|(p, m)| p == "applet" && m.contains("nope")), "{v}");
    let (_, v) = post(
        json!({ "name": "bad", "applet": "tick", "cron": "0 * * * *", "params": { "count": 500, "token": "hunter2" }, "missed": "twice", "owner": "nobody" }),
    );
    let f = fields(&v);
    for p in ["params.count", "params.token", "missed", "owner"] {
        assert!(f.iter().any(|(q, _)| q == p), "{p}: {f:?}");
    }
    assert!(!v.to_string().contains("hunter2"), "{v}");
    let (_, v) = post(json!({ "name": "x", "applet": "tick", "cron": "0 * * * *", "owner": "ola" }));
    assert!(fields(&v).iter().any(|(p, m)| p == "name" && m.contains("already exists")), "{v}");
    let (code, v) = post(json!({ "name": "x", "applet": "tick", "cron": "0 * * * *", "unknown": 1 }));
    assert_eq!(code, 400, "{v}");
    // Through the server's socket, the CLI names the flags.
    let o = s.cli(&["schedule", "add", "y", "--applet", "tick", "--cron", "61 * * * *", "--owner", "ola"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cron: `61 * * * *` is not a cron expression"), "{}", stderr(&o));
    assert_eq!(s.call("GET", "/api/v1/schedules", "ada", None).1.as_array().unwrap().len(), 1);

    // Run now: a job as the owner, through the server, for HTTP and the CLI.
    let (code, v) = s.call("POST", "/api/v1/schedules/x/run", "ada", None);
    assert_eq!(code, 202, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    let (_, job) = s.call("GET", &format!("/api/v1/jobs/{id}"), "ada", None);
    assert_eq!((&job["user"], &job["schedule"], &job["note"]), (&json!("ola"), &json!("x"), &json!("run now by ada")), "{job}");
    let o = s.cli(&["schedule", "run-now", "x"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id2 = String::from_utf8(o.stdout).unwrap().trim().to_string();
    wait_for("the run-now job", Duration::from_secs(5), || s.call("GET", &format!("/api/v1/jobs/{id2}"), "ada", None).1["status"] == "ok");
    assert_eq!(s.audit_of("schedule.run_now", "x").len(), 2);
    assert_eq!(s.schedule("x")["last_job"], json!(id2));
    assert_eq!(s.call("POST", "/api/v1/schedules/x/run", "oz", None).0, 403);
}

#[path = "common/nats.rs"]
mod nats;

/// Kills its process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_workers_on_nats_each_fire_runs_once() {
    let nats = nats::Nats::start();
    let mut s = server(false);
    let workers: Vec<Proc> = ["w1", "w2"]
        .iter()
        .map(|id| {
            let unused = s.dir.path().join(format!("worker-{id}"));
            Proc(
                Command::new(env!("CARGO_BIN_EXE_opslet"))
                    .args(["worker", "--queue", &nats.url(), "--id", id, "--tags", "default"])
                    .env("OPSLET_DATA_DIR", unused)
                    .env_remove("OPSLET_CONFIG")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let (child, addr) = serve_proc::spawn(&s.data(), &["--queue", &nats.url()]);
    (s.child, s.base) = (Some(child), format!("http://{addr}"));
    s.add("ola", json!({ "name": "spread", "applet": "tick", "cron": "*/2 * * * * *" }));
    wait_for("four fires", Duration::from_secs(15), || s.jobs("spread").len() >= 4);
    let (code, _) = s.call("POST", "/api/v1/schedules/spread/pause", "ola", None);
    assert_eq!(code, 200);
    let jobs = s.jobs("spread");
    for j in &jobs {
        let id = j["id"].as_str().unwrap();
        wait_for("the run on a worker", Duration::from_secs(10), || {
            s.call("GET", &format!("/api/v1/jobs/{id}"), "ada", None).1["status"] == "ok"
        });
    }
    let fires = s.audit_of("schedule.fire", "spread");
    let mut at: Vec<DateTime<Utc>> = fires.iter().map(|r| time(&r["data"]["fire"])).collect();
    let n = at.len();
    at.sort();
    at.dedup();
    assert_eq!(at.len(), n, "an instant fired twice: {fires:?}");
    assert!(jobs.len() == n || jobs.len() == n + 1, "{n} fires, {} jobs", jobs.len());
    let starts = s.audit("run.start");
    for j in &jobs {
        let runs = starts.iter().filter(|r| r["run_id"] == j["id"]).count();
        assert_eq!(runs, 1, "job {} ran {runs} times", j["id"]);
    }
    drop(workers);
}
