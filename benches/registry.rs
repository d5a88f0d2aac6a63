//! Registry figures: publish throughput and search latency over 10,000 published applets.
//! Run with `cargo bench --bench registry`. Target (issue #3): search p50 under 5 ms.
//!
//! Baselines measured in the same run: a bare store insert of the same package bytes (for
//! publish) and a plain substring scan over the applet names (for search).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use opslet::applet::AppletPackage;
use opslet::registry::Registry;
use opslet::store::Store;

const WORDS: &[&str] = &[
    "disk",
    "usage",
    "cleanup",
    "zabbix",
    "triage",
    "log",
    "errors",
    "switch",
    "backup",
    "vlan",
    "redis",
    "nginx",
    "restart",
    "power",
    "cycle",
    "bmc",
    "sensor",
    "cert",
    "expiry",
    "dns",
    "ntp",
    "drift",
    "config",
    "publish",
    "kernel",
    "patch",
    "inventory",
    "vm",
];

fn package(i: usize) -> AppletPackage {
    let w = |k: usize| WORDS[(i * 7 + k * 13) % WORDS.len()];
    let name = format!("{}-{}-{i}", w(0), w(1));
    let manifest = format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"{} the {} of every {} host and report {}\"\ntags = [\"{}\", \"{}\"]\n",
        w(2),
        w(3),
        w(4),
        w(5),
        w(6),
        w(7)
    );
    let mut files = BTreeMap::new();
    files.insert("applet.toml".to_string(), manifest.into_bytes());
    files.insert("main.lua".to_string(), format!("return function(p) return {i} end").into_bytes());
    AppletPackage::from_files(files).unwrap()
}

fn pct(mut v: Vec<Duration>, p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke { 200 } else { 10_000 };
    if smoke {
        println!("smoke run with {n} applets (use `cargo bench --bench registry` for figures)");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Duration::from_secs(5)).unwrap();
    let reg = Registry::new(store.clone()).unwrap();
    let packages: Vec<AppletPackage> = (0..n).map(package).collect();

    let raw = store.tree("bench-baseline");
    let t = Instant::now();
    for p in &packages {
        let bytes: usize = p.files.values().map(Vec::len).sum();
        raw.insert(p.hash.as_bytes(), vec![0u8; bytes * 2]).unwrap();
    }
    let raw_each = t.elapsed() / n as u32;

    let t = Instant::now();
    for p in &packages {
        reg.publish(p, "bench", "", false).unwrap();
    }
    let publish_each = t.elapsed() / n as u32;
    println!("publish ({n} applets)");
    println!("  bare store insert of the package bytes   {:>12}   1.00x (baseline)", ms(raw_each));
    println!(
        "  opslet publish (checks, 3 trees, audit)  {:>12}   {:.1}x   ({:.0} publishes/s)",
        ms(publish_each),
        publish_each.as_secs_f64() / raw_each.as_secs_f64(),
        1.0 / publish_each.as_secs_f64()
    );

    let t = Instant::now();
    let index = reg.index().unwrap();
    println!("search index build over {} applets: {}", index.len(), ms(t.elapsed()));

    let names: Vec<String> = packages.iter().map(|p| p.manifest.name.clone()).collect();
    let queries =
        ["disk", "zabix trige", "backup switch", "cert expiry", "redis restrat", "power cycle bmc", "inventory", "nothing-matches-this"];
    let rounds = if smoke { 3 } else { 30 };
    let mut base = Vec::new();
    let mut ours = Vec::new();
    let mut hits = 0;
    for _ in 0..rounds {
        for q in queries {
            let t = Instant::now();
            let found = names.iter().filter(|n| n.contains(q)).count();
            base.push(t.elapsed());
            std::hint::black_box(found);
            let t = Instant::now();
            hits += reg.search(q, None, None, 50).unwrap().len();
            ours.push(t.elapsed());
        }
    }
    std::hint::black_box(hits);
    let (b50, o50, o95) = (pct(base, 50), pct(ours.clone(), 50), pct(ours, 95));
    println!("search over {n} applets, best 50 hits ({} queries x {rounds} rounds)", queries.len());
    println!("  substring scan of names (baseline)       {:>12}   1.00x", ms(b50));
    println!("  opslet search, p50                       {:>12}   {:.1}x", ms(o50), o50.as_secs_f64() / b50.as_secs_f64());
    println!("  opslet search, p95                       {:>12}", ms(o95));
    if !smoke {
        println!("  target: p50 under 5 ms: {}", if o50 < Duration::from_millis(5) { "met" } else { "MISSED" });
    }
}
