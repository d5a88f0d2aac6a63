//! `opslet serve` for tests: started on a free loopback port over a data dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `opslet serve --listen 127.0.0.1:0 EXTRA...` on `data`; returns the child and the
/// address it printed. Its stderr keeps being read so the server never blocks on it.
pub fn spawn(data: &Path, extra: &[&str]) -> (Child, String) {
    spawn_at(data, "127.0.0.1:0", extra)
}

/// Like `spawn`, listening on `listen` (a server started again on the address it had).
pub fn spawn_at(data: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
    spawn_full(data, listen, extra, &[])
}

/// Like `spawn`, with environment variables.
pub fn spawn_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    spawn_full(data, "127.0.0.1:0", extra, env)
}

fn spawn_full(data: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["serve", "--listen", listen])
        .args(extra)
        .envs(env.iter().copied())
        .env("OPSLET_DATA_DIR", data)
        .env_remove("OPSLET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Stops a server the way an operator would (SIGTERM): it finishes and flushes its store. Killed
/// if it has not ended within 10 s.
pub fn stop(child: &mut Child) {
    // SAFETY: sending a signal to our own child process by pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for _ in 0..400 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
}
