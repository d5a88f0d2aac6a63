//! Scale-out (issue #19): a fixed batch of I/O-bound runs enqueued at once on `opslet serve
//! --queue nats://…`, executed by 1, 2, 4 and 8 `opslet worker` processes (each taking
//! `PER_WORKER` runs at a time), and by the embedded pool alongside, all in the same run against
//! a real nats-server. Two batches: `time.sleep(0.1)`, and `ssh.run` of `hostname` on loopback
//! sshd hosts. Reports runs/s, scaling efficiency T1/(k·Tk), and enqueue-to-start p50/p95 (a
//! job's `started_at` minus its `submitted_at`).
//!
//! Run: `cargo bench --features virt --bench workers` (root, after scripts/peers/nats.sh install
//! and scripts/peers/ssh.sh install). Under `cargo test` it runs once with small batches.

#[path = "../tests/common/nats.rs"]
mod nats;
#[path = "../tests/common/serve.rs"]
mod serve_proc;
#[path = "../tests/common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs one worker takes at a time (like a worker slot elsewhere).
const PER_WORKER: usize = 4;

fn opslet(data: &Path, args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Batch {
    runs: usize,
    secs: f64,
    p50: Duration,
    p95: Duration,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Enqueues `n` async runs of `applet` at once and waits for all of them to end.
async fn batch(base: &str, token: &str, applet: &str, n: usize) -> Batch {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let mut ids = Vec::new();
    let mut posts = Vec::new();
    for _ in 0..n {
        let (client, url, token) = (client.clone(), format!("{base}/api/v1/applets/{applet}/run?async=true"), token.to_string());
        posts.push(tokio::spawn(async move {
            let r = client.post(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.unwrap()["job_id"].as_str().unwrap().to_string()
        }));
    }
    for p in posts {
        ids.push(p.await.unwrap());
    }
    let mut waits = Vec::new();
    for id in &ids {
        loop {
            let job: serde_json::Value =
                client.get(format!("{base}/api/v1/jobs/{id}")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            if job["finished_at"].is_string() {
                assert_eq!(job["status"], "ok", "{job}");
                let at = |k: &str| chrono::DateTime::parse_from_rfc3339(job[k].as_str().unwrap()).unwrap();
                waits.push((at("started_at") - at("submitted_at")).to_std().unwrap_or_default());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Batch { runs: n, secs, p50: pct(&mut waits, 0.5), p95: pct(&mut waits, 0.95) }
}

fn worker(nats: &nats::Nats, id: &str, config: &Path) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_opslet"))
            .args(["worker", "--queue", &nats.url(), "--id", id, "--max-runs", &PER_WORKER.to_string(), "--config"])
            .arg(config)
            .env("OPSLET_DATA_DIR", "/nonexistent/opslet-worker")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn workers_heard(base: &str, token: &str, k: usize) {
    let t0 = Instant::now();
    loop {
        let m = reqwest::Client::new().get(format!("{base}/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
        if m.contains(&format!("opslet_workers{{tags=\"default\"}} {k}\n")) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the workers were not heard from: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row(label: &str, b: &Batch, t1: Option<f64>, k: usize) {
    let eff = t1.map(|t1| format!("{:>5.0}%", 100.0 * t1 / (k as f64 * b.secs))).unwrap_or_else(|| "     -".into());
    println!(
        "{label:<22} {:>5} runs {:>7.2} s {:>8.1} runs/s  efficiency {eff}  enqueue-to-start p50 {:>7.1} ms p95 {:>7.1} ms",
        b.runs,
        b.secs,
        b.runs as f64 / b.secs,
        b.p50.as_secs_f64() * 1e3,
        b.p95.as_secs_f64() * 1e3
    );
}

fn main() {
    opslet::install_tls_provider();
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (n_sleep, n_ssh) = if smoke { (8, 4) } else { (320, 160) };
    let ks: &[usize] = if smoke { &[1, 2] } else { &[1, 2, 4, 8] };
    let fleet = sshd::Fleet::start(4, "node");
    let nats = nats::Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let applet = |name: &str, manifest: &str, main: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("applet.toml"), format!("name = \"{name}\"\nversion = \"1.0.0\"\n{manifest}")).unwrap();
        std::fs::write(d.join("main.lua"), main).unwrap();
        opslet(&data, &["publish", d.to_str().unwrap()]);
    };
    applet("nap", "", "return function() time.sleep(0.1) return true end");
    applet(
        "ssh-hostname",
        "[permissions]\nssh = { hosts = [\"*\"], commands = [\"hostname\"] }\n",
        "return function() local r = ssh.run('group:fleet', 'hostname') for _, x in ipairs(r) do assert(x.ok, x.error) end return #r end",
    );
    let mut csv = String::from("name,address,port,groups,host_key\n");
    for h in &fleet.hosts {
        csv.push_str(&format!("{},{},{},fleet,{}\n", h.name, h.address, h.port, h.host_key));
    }
    std::fs::write(dir.path().join("fleet.csv"), csv).unwrap();
    opslet(&data, &["cmdb", "import", dir.path().join("fleet.csv").to_str().unwrap()]);
    opslet(&data, &["secret", "set", "ssh-key", "--file", fleet.dir.path().join("client").to_str().unwrap()]);
    let config = "[[ssh.credentials]]\nhosts = \"group:fleet\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n";
    std::fs::write(data.join("opslet.toml"), config).unwrap();
    let worker_config = dir.path().join("worker.toml");
    std::fs::write(&worker_config, config).unwrap();
    opslet(&data, &["user", "add", "bench", "--role", "admin"]);
    let token = opslet(&data, &["token", "create", "bench"]);
    let limits = ["--applet-limit", "0", "--user-limit", "0", "--queue"];
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    println!(
        "{n_sleep} runs of time.sleep(0.1) and {n_ssh} runs of ssh.run on {} loopback sshd hosts; {PER_WORKER} runs at a time per worker",
        fleet.hosts.len()
    );
    // The embedded pool, as `opslet serve` runs without workers.
    {
        let (child, addr) = serve_proc::spawn(&data, &[limits[0], limits[1], limits[2], limits[3], limits[4], "4096"]);
        let _serve = Proc(child);
        let base = format!("http://{addr}");
        rt.block_on(async {
            let b = batch(&base, &token, "nap", n_sleep).await;
            row("embedded sleep", &b, None, 1);
            let b = batch(&base, &token, "ssh-hostname", n_ssh).await;
            row("embedded ssh", &b, None, 1);
        });
    }
    let (child, addr) = serve_proc::spawn(&data, &[limits[0], limits[1], limits[2], limits[3], "--queue", &nats.url()]);
    let _serve = Proc(child);
    let base = format!("http://{addr}");
    let (mut t1_sleep, mut t1_ssh) = (None, None);
    for &k in ks {
        let workers: Vec<Proc> = (0..k).map(|i| worker(&nats, &format!("w{k}-{i}"), &worker_config)).collect();
        rt.block_on(async {
            workers_heard(&base, &token, k).await;
            let b = batch(&base, &token, "nap", n_sleep).await;
            t1_sleep.get_or_insert(b.secs);
            row(&format!("{k} worker(s) sleep"), &b, t1_sleep, k);
            let b = batch(&base, &token, "ssh-hostname", n_ssh).await;
            t1_ssh.get_or_insert(b.secs);
            row(&format!("{k} worker(s) ssh"), &b, t1_ssh, k);
        });
        drop(workers);
        // The control plane forgets them after three missed heartbeats.
        std::thread::sleep(Duration::from_secs(7));
    }
}
