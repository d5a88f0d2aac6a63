//! Per-run cost of a trivial applet through opslet, next to a bare mlua Luau state running the
//! same code, and the wall time of a cold `opslet run` process. Run with `cargo bench`.
//!
//! Targets (issue #2): opslet within 1.5x of the bare state and under 1 ms per run; a cold
//! `opslet run` under 30 ms. Figures are printed as ratios against the baseline measured here.
//! Cold start (issue #15): a cold `opslet run` within 2x of a bare sandboxed mlua process that
//! reads the applet, opens its data dir and appends one durable record before running it (this
//! bench's own binary, started with `--bare-cold`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, LuaOptions, Table};
use opslet::applet::AppletPackage;
use opslet::config::Config;
use opslet::runtime::context::Caller;
use opslet::runtime::{RunRequest, Runtime};
use opslet::store::Store;

const MAIN: &str = "return function(params, ctx) return { n = params.n + 1, id = ctx.applet_id } end";
const MANIFEST: &str = "name = \"bench\"\nversion = \"1.0.0\"\n[params.n]\ntype = \"integer\"\ndefault = 1\n";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p95(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 95 / 100).min(v.len() - 1)]
}

/// Times `f` in `rounds` rounds of `per_round` calls; returns the per-call median over rounds.
fn measure(rounds: usize, per_round: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..per_round {
        f();
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            f();
        }
        samples.push(t.elapsed() / per_round as u32);
    }
    median(samples)
}

fn bare_source() {
    let lua = Lua::new_with(opslet::runtime::sandbox::libs(), LuaOptions::new()).unwrap();
    lua.sandbox(true).unwrap();
    let f: Function = lua.load(MAIN).set_name("=main.lua").call(()).unwrap();
    let params = lua.create_table().unwrap();
    params.set("n", 1).unwrap();
    let ctx = lua.create_table().unwrap();
    ctx.set("applet_id", "bench@1.0.0").unwrap();
    let r: Table = f.call((params, ctx)).unwrap();
    assert_eq!(r.get::<i64>("n").unwrap(), 2);
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The cold-start baseline, in a process of its own: the applet's `main.lua` read from its
/// folder, one record appended to DATA/audit.log and flushed to disk, the applet run in a
/// sandboxed Luau state, the result printed as JSON.
fn bare_cold(applet: &std::path::Path, data: &std::path::Path) {
    use std::io::Write;
    let src = std::fs::read(applet.join("main.lua")).unwrap();
    std::fs::create_dir_all(data).unwrap();
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("audit.log")).unwrap();
    log.write_all(b"{\"kind\":\"run.start\",\"applet\":\"bench@1.0.0\"}\n").unwrap();
    log.sync_data().unwrap();
    let lua = Lua::new_with(opslet::runtime::sandbox::libs(), LuaOptions::new()).unwrap();
    lua.sandbox(true).unwrap();
    let f: Function = lua.load(src).set_name("=main.lua").call(()).unwrap();
    let params = lua.create_table().unwrap();
    params.set("n", 1).unwrap();
    let ctx = lua.create_table().unwrap();
    ctx.set("applet_id", "bench@1.0.0").unwrap();
    let r: Table = f.call((params, ctx)).unwrap();
    println!("{{\"n\":{}}}", r.get::<i64>("n").unwrap());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-cold") {
        bare_cold(args[i + 1].as_ref(), args[i + 2].as_ref());
        return;
    }
    let mut files = BTreeMap::new();
    files.insert("applet.toml".to_string(), MANIFEST.as_bytes().to_vec());
    files.insert("main.lua".to_string(), MAIN.as_bytes().to_vec());
    let pkg = Arc::new(AppletPackage::from_files(files).unwrap());
    let bytecode = pkg.bytecode["main.lua"].clone();

    let bare_bc = || {
        let lua = Lua::new_with(opslet::runtime::sandbox::libs(), LuaOptions::new()).unwrap();
        lua.sandbox(true).unwrap();
        let f: Function = lua.load(bytecode.as_slice()).set_mode(mlua::chunk::ChunkMode::Binary).set_name("=main.lua").call(()).unwrap();
        let params = lua.create_table().unwrap();
        params.set("n", 1).unwrap();
        let ctx = lua.create_table().unwrap();
        ctx.set("applet_id", "bench@1.0.0").unwrap();
        let r: Table = f.call((params, ctx)).unwrap();
        assert_eq!(r.get::<i64>("n").unwrap(), 2);
    };

    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = Config::parse("[audit]\nsync = false\n", "bench").unwrap();
    let no_store = opslet::modules::runtime(&config, None).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let with_store = opslet::modules::runtime(&config, Some(Store::open(store_dir.path(), Duration::from_secs(1)).unwrap())).unwrap();
    let caller = Caller { user: "bench".into(), via: "bench".into() };
    let through = |rt: &Runtime| {
        let o = tokio.block_on(rt.run(RunRequest::new(Arc::clone(&pkg), caller.clone())));
        assert!(o.result.is_ok(), "{:?}", o.result);
    };

    // `cargo test --all-targets` runs this file too: then it is a quick smoke run, not a measurement.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rounds, per) = if smoke { (2, 5) } else { (15, 200) };
    if smoke {
        println!("smoke run (use `cargo bench` for figures)");
    }
    let t_bare = measure(rounds, per, bare_source);
    let t_bare_bc = measure(rounds, per, bare_bc);
    let t_rt = measure(rounds, per, || through(&no_store));
    let t_audit = measure(rounds, per, || through(&with_store));

    println!("per-run cost of a trivial applet (median of {rounds} rounds x {per} runs)");
    println!("  bare mlua Luau state, source          {:>10}   1.00x (baseline)", us(t_bare));
    println!("  bare mlua Luau state, bytecode        {:>10}   {:.2}x", us(t_bare_bc), t_bare_bc.as_secs_f64() / t_bare.as_secs_f64());
    println!("  opslet runtime, no store              {:>10}   {:.2}x", us(t_rt), t_rt.as_secs_f64() / t_bare.as_secs_f64());
    println!("  opslet runtime + audit log (SQLite)   {:>10}   {:.2}x", us(t_audit), t_audit.as_secs_f64() / t_bare.as_secs_f64());
    let ratio = t_audit.as_secs_f64() / t_bare.as_secs_f64();
    if !smoke {
        println!(
            "  target: opslet+audit within 1.5x of bare and under 1 ms: {}",
            if ratio <= 1.5 && t_audit < Duration::from_millis(1) { "met" } else { "MISSED" }
        );
    }

    // Cold process: the release binary built next to this bench.
    let exe = env!("CARGO_BIN_EXE_opslet");
    let dir = tempfile::tempdir().unwrap();
    let applet = dir.path().join("bench");
    std::fs::create_dir(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), MANIFEST).unwrap();
    std::fs::write(applet.join("main.lua"), MAIN).unwrap();
    // The three processes take turns, so a busy moment of the machine weighs on each alike.
    let cold_cmd = |sync: bool| {
        let data = dir.path().join(if sync { "data-sync" } else { "data-nosync" });
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("opslet.toml"), format!("[audit]\nsync = {sync}\n")).unwrap();
        let applet = applet.clone();
        move || {
            let mut c = Command::new(exe);
            c.args(["run", applet.to_str().unwrap(), "--format", "json", "-q"]).env("OPSLET_DATA_DIR", &data);
            c
        }
    };
    let bare_data = dir.path().join("data-bare");
    let bare_cmd = || {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.arg("--bare-cold").arg(&applet).arg(&bare_data);
        c
    };
    let cmds: [Box<dyn Fn() -> Command>; 3] = [Box::new(bare_cmd), Box::new(cold_cmd(true)), Box::new(cold_cmd(false))];
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for i in 0..if smoke { 4 } else { 60 } {
        for (cmd, out) in cmds.iter().zip(samples.iter_mut()) {
            let t = Instant::now();
            let st = cmd().stdout(Stdio::null()).status().unwrap();
            assert!(st.success());
            // The first rounds create the data dirs.
            if i >= 3 {
                out.push(t.elapsed());
            }
        }
    }
    let [bare, synced, unsynced] = samples;
    let t_true = {
        let mut samples = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            Command::new("true").status().unwrap();
            samples.push(t.elapsed());
        }
        median(samples)
    };
    println!("cold `opslet run` process (median / p95 of {} runs)", synced.len());
    let t_bare_cold = median(bare.clone());
    let x = |d: Duration| d.as_secs_f64() / t_bare_cold.as_secs_f64();
    println!("  spawning /bin/true                    {:>10}", ms(t_true));
    println!("  bare sandboxed mlua + durable record  {:>10} / {}   1.00x (baseline)", ms(t_bare_cold), ms(p95(bare)));
    let (m_sync, m_nosync) = (median(synced.clone()), median(unsynced.clone()));
    println!("  opslet run, audit fsync (default)     {:>10} / {}   {:.1}x", ms(m_sync), ms(p95(synced)), x(m_sync));
    println!("  opslet run, audit sync = false        {:>10} / {}   {:.1}x", ms(m_nosync), ms(p95(unsynced)), x(m_nosync));
    if !smoke {
        println!("  target: under 30 ms: {}", if m_sync < Duration::from_millis(30) { "met" } else { "MISSED" });
        println!("  target: within 2x of the bare process: {}", if x(m_sync) <= 2.0 { "met" } else { "MISSED" });
    }

    // A CLI command through a running server (its local socket, and over HTTP with --server)
    // against the same command opening the store itself, taking turns.
    let served = dir.path().join("data-served");
    let own = dir.path().join("data-own");
    for d in [&served, &own] {
        let st =
            Command::new(exe).args(["publish", applet.to_str().unwrap()]).env("OPSLET_DATA_DIR", d).stdout(Stdio::null()).status().unwrap();
        assert!(st.success());
    }
    let admin = |args: &[&str]| {
        let o = Command::new(exe).args(args).env("OPSLET_DATA_DIR", &served).output().unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    admin(&["user", "add", "bench", "--role", "admin"]);
    let token = admin(&["token", "create", "bench"]);
    let mut server = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OPSLET_DATA_DIR", &served)
        .env("OPSLET_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stderr.take().unwrap()));
    let url = loop {
        if let Some(addr) = lines.next().unwrap().unwrap().strip_prefix("listening on ") {
            break format!("http://{addr}");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let nowhere = dir.path().join("no-data-dir");
    // In place, on the socket, over HTTP.
    let command = |how: usize, args: &[&str]| {
        let mut c = Command::new(exe);
        c.args(args);
        match how {
            0 => c.env("OPSLET_DATA_DIR", &own),
            1 => c.env("OPSLET_DATA_DIR", &served),
            _ => c.env("OPSLET_DATA_DIR", &nowhere).env("OPSLET_SERVER", &url).env("OPSLET_TOKEN", &token),
        };
        c
    };
    let cases: [(&str, &[&str]); 2] = [("list", &["list"]), ("run bench (registry)", &["run", "bench", "--format", "json", "-q"])];
    println!("a CLI command through `opslet serve` (local socket; --server over HTTP) vs opening the store (median of the runs)");
    for (name, args) in cases {
        let mut samples: [Vec<Duration>; 3] = Default::default();
        for i in 0..if smoke { 3 } else { 40 } {
            for (how, out) in samples.iter_mut().enumerate() {
                let t = Instant::now();
                assert!(command(how, args).stdout(Stdio::null()).status().unwrap().success());
                if i >= 2 {
                    out.push(t.elapsed());
                }
            }
        }
        let [d, t, h] = samples.map(median);
        let x = |v: Duration| v.as_secs_f64() / d.as_secs_f64();
        println!("  {name:<24} in place {:>9} (1.00x)   socket {:>9} ({:.2}x)   --server {:>9} ({:.2}x)", ms(d), ms(t), x(t), ms(h), x(h));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let _ = server.wait();
}
