//! Wall time and peak memory of a child process tree, for the benchmarks that compare whole
//! processes (`opslet run` against other tools or ways).
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Runs `cmd` and samples the summed RSS of its process tree every 10 ms.
pub fn measure(mut cmd: Command) -> (Duration, u64, std::process::Output) {
    let t0 = Instant::now();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning");
    let pid = child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = child.wait_with_output().unwrap();
    let wall = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (wall, peak.load(Ordering::Relaxed), out)
}

/// Bytes resident in `root` and all its descendants.
pub fn tree_rss(root: u32) -> u64 {
    let page = 4096u64;
    let mut parent = std::collections::HashMap::new();
    let mut rss = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if let (Some(pp), Some(r)) = (fields.get(1).and_then(|s| s.parse::<u32>().ok()), fields.get(21).and_then(|s| s.parse::<u64>().ok()))
        {
            parent.insert(pid, pp);
            rss.insert(pid, r * page);
        }
    }
    let mut total = 0;
    for (&pid, &r) in &rss {
        let mut p = pid;
        for _ in 0..64 {
            if p == root {
                total += r;
                break;
            }
            match parent.get(&p) {
                Some(&pp) if pp != 0 => p = pp,
                _ => break,
            }
        }
    }
    total
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
