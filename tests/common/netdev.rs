//! Real network-device simulators for the netdev tests, started here and killed by PID when
//! dropped (or by the kernel, PR_SET_PDEATHSIG, should the test process die first):
//! fake-switches (a stateful Cisco IOS CLI) and FakeNOS (Huawei VRP, H3C Comware, Cisco IOS and
//! Junos). Needs `scripts/peers/netdev.sh install` (scripts/test.sh runs it). netmiko, installed
//! beside them, is the reference client the results are compared with.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "opslet-sw-pw";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    root().join("scripts/peers/netdev.sh")
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).expect("binding a loopback port").local_addr().unwrap().port()
}

/// `n` consecutive free ports.
fn free_ports(n: u16) -> u16 {
    for _ in 0..50 {
        let base = free_port();
        if base > 65000 {
            continue;
        }
        if (1..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free loopback ports");
}

fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the simulator exited ({st}) before listening on {port}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the simulator did not listen on {port} within 60 s:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// One simulator process.
pub struct Sim {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Sim {
    fn spawn(args: &[&str], port: u16, dir: tempfile::TempDir) -> Sim {
        assert!(
            root().join(".peers/venv-net/bin/python").exists(),
            "the netdev simulators are not installed: run `scripts/peers/netdev.sh install` first (scripts/test.sh does)"
        );
        let log = dir.path().join("sim.log");
        let mut cmd = Command::new("bash");
        cmd.arg(script()).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting scripts/peers/netdev.sh");
        wait_listening(port, &mut child, &log);
        Sim { child, port, dir, log }
    }

    /// A stateful Cisco IOS switch (fake-switches) called `hostname`.
    pub fn cisco(hostname: &str) -> Sim {
        let port = free_port();
        Sim::spawn(&["cisco", &port.to_string(), hostname], port, tempfile::tempdir().unwrap())
    }

    /// FakeNOS with HUAWEI on `port`, H3C on `port + 1`, R-IOS on `+ 2`, R-JUNOS on `+ 3`.
    pub fn fakenos() -> Sim {
        let port = free_ports(4);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let sim = Sim::spawn(&["fakenos", &d, &port.to_string()], port, dir);
        for p in port + 1..port + 4 {
            let t0 = Instant::now();
            while TcpStream::connect(("127.0.0.1", p)).is_err() && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        sim
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops the process from answering (SIGSTOP) until [`Sim::resume`].
    pub fn pause(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `commands` to a device with netmiko; returns its outputs by command and the prompt.
/// netmiko sometimes reads an empty output from the simulators under load (its prompt
/// detection races their echo): a reply with an empty output is asked for again, up to 3 times.
pub fn netmiko(device_type: &str, port: u16, commands: &[&str]) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        last = netmiko_once(device_type, port, commands);
        if commands.iter().all(|c| last["outputs"][*c].as_str().is_some_and(|o| !o.trim().is_empty())) {
            break;
        }
    }
    last
}

fn netmiko_once(device_type: &str, port: u16, commands: &[&str]) -> serde_json::Value {
    let req = serde_json::json!({
        "device_type": device_type, "host": "127.0.0.1", "port": port,
        "username": USER, "password": PASSWORD, "secret": "", "commands": commands,
    });
    let mut child = Command::new("bash")
        .arg(script())
        .arg("netmiko")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netmiko");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "netmiko failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("netmiko printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}
