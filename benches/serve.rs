//! Drives a running `opslet serve` with concurrent clients and reports throughput and p50/p99
//! latency for a trivial applet, next to a bare axum handler doing no work measured in the same
//! run. Run with `cargo bench --bench serve`. Targets (issue #4): over 2,000 runs/s and p50
//! under 2 ms on this 2-core machine, with the audit kept durable (the default: every job and
//! run start is flushed to disk, fsyncs shared between concurrent requests).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn opslet(data: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

struct Stats {
    n: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(url: String, token: Option<String>, body: Option<&'static str>, clients: usize, dur: Duration) -> Stats {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < dur {
                let t = Instant::now();
                let mut req = client.post(&url);
                if let Some(tok) = &token {
                    req = req.header("Authorization", format!("Bearer {tok}"));
                }
                if let Some(b) = body {
                    req = req.header("Content-Type", "application/json").body(b);
                }
                let resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
                let _ = resp.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: usize| all[(all.len() * p / 100).min(all.len() - 1)];
    Stats { n: all.len(), secs, p50: pct(50), p99: pct(99) }
}

fn main() {
    opslet::install_tls_provider();
    let smoke = !std::env::args().any(|a| a == "--bench");
    let dur = if smoke { Duration::from_millis(500) } else { Duration::from_secs(5) };
    let clients = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let applet = dir.path().join("trivial");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), "name = \"trivial\"\nversion = \"1.0.0\"\n[params.n]\ntype = \"integer\"\ndefault = 1\n")
        .unwrap();
    std::fs::write(applet.join("main.lua"), "return function(p) return p.n + 1 end").unwrap();
    opslet(&data, &["publish", applet.to_str().unwrap()]);
    opslet(&data, &["user", "add", "bench", "--role", "admin"]);
    let token = opslet(&data, &["token", "create", "bench"]);

    let mut server = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--queue", "1024", "--applet-limit", "0"])
        .env("OPSLET_DATA_DIR", &data)
        .env("OPSLET_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stderr.take().unwrap()));
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let bare_addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/noop", axum::routing::post(|| async { "{}" }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        bare_addr
    });
    let mut rows = Vec::new();
    for clients in [4, clients] {
        let bare = rt.block_on(drive(format!("http://{bare_addr}/noop"), None, None, clients, dur));
        let ours = rt.block_on(drive(
            format!("http://{addr}/api/v1/applets/trivial/run"),
            Some(token.clone()),
            Some(r#"{"n": 41}"#),
            clients,
            dur,
        ));
        rows.push((clients, bare, ours));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let _ = server.wait();

    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let rps = |s: &Stats| s.n as f64 / s.secs;
    if smoke {
        println!("smoke run (use `cargo bench --bench serve` for figures)");
    }
    for (clients, bare, ours) in &rows {
        println!("{clients} concurrent clients, {:?} each, loopback, durable audit", dur);
        println!("  bare axum handler (baseline)     {:>8.0} req/s   p50 {:>9}   p99 {:>9}", rps(bare), ms(bare.p50), ms(bare.p99));
        println!(
            "  opslet run of a trivial applet   {:>8.0} runs/s  p50 {:>9}   p99 {:>9}   ({:.3}x the baseline's throughput, {:.1}x its p50)",
            rps(ours),
            ms(ours.p50),
            ms(ours.p99),
            rps(ours) / rps(bare),
            ours.p50.as_secs_f64() / bare.p50.as_secs_f64()
        );
        if !smoke {
            let met = rps(ours) > 2000.0 && ours.p50 < Duration::from_millis(2);
            println!("  target: over 2,000 runs/s and p50 under 2 ms: {}", if met { "met" } else { "MISSED" });
        }
    }
}
