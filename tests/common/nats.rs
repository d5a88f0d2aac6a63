//! A real nats-server with JetStream on loopback, for the worker tests: started from the binary
//! `scripts/peers/nats.sh install` put in .peers/venv-nats, stopped by PID when dropped.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    monitor: u16,
    pub dir: tempfile::TempDir,
    /// A server config (nats-server's format) besides the flags: users and permissions.
    config: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("OPSLET_PEERS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join(".peers"));
    let bin = dir.join("venv-nats/bin/nats-server");
    assert!(bin.exists(), "no nats-server at {}: run scripts/peers/nats.sh install (scripts/test.sh does)", bin.display());
    bin
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(None)
    }

    /// A server with `config` (an `authorization { ... }` block, say) in its config file.
    pub fn start_with(config: Option<String>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Nats { child: None, port: free_port(), monitor: free_port(), dir, config };
        n.up();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL with a user and password in it.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub fn up(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let mut cmd = Command::new(binary());
        if let Some(config) = &self.config {
            let file = self.dir.path().join("nats.conf");
            std::fs::write(&file, config).unwrap();
            cmd.arg("-c").arg(file);
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-m", &self.monitor.to_string(), "-js", "-sd"])
            .arg(self.dir.path().join("js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the server (by PID).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            if healthy(self.monitor) {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "nats-server did not get ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether the monitor port answers 200 to `/healthz?js-enabled-only=true`.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(b"GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}
