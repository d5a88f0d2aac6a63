//! A real SMTP server on loopback for the notification tests: aiosmtpd (PyPI) from the venv
//! `scripts/peers/smtp.sh install` made in .peers/venv-smtp, writing each message it accepts
//! into a Maildir (before it answers 250), stopped by PID when dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Smtp {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The venv's python, with aiosmtpd installed.
pub fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("OPSLET_PEERS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join(".peers"));
    let bin = dir.join("venv-smtp/bin/python");
    assert!(bin.exists(), "no aiosmtpd venv at {}: run scripts/peers/smtp.sh install (scripts/test.sh does)", bin.display());
    bin
}

impl Smtp {
    /// Starts `python -m aiosmtpd` on a free loopback port and waits until it takes connections.
    pub fn start() -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("Maildir"));
        Smtp::spawn(cmd, dir, port)
    }

    /// Starts `scripts/peers/smtpd-tls.py`: a server that requires STARTTLS (`mode` "starttls")
    /// or TLS from the first byte ("tls"), then a login as `user` with `password`. Its
    /// certificate is for IP 127.0.0.1, signed by the CA in [`Smtp::ca`].
    pub fn start_tls(mode: &str, user: &str, password: &str) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let certs = dir.path().join("certs");
        let made = Command::new(root.join("scripts/peers/smtp.sh")).arg("tls").arg(&certs).status().unwrap();
        assert!(made.success(), "scripts/peers/smtp.sh tls failed");
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(root.join("scripts/peers/smtpd-tls.py"))
            .args([mode, &port.to_string()])
            .arg(dir.path().join("Maildir"))
            .arg(certs.join("tls.crt"))
            .arg(certs.join("tls.key"))
            .args([user, password]);
        Smtp::spawn(cmd, dir, port)
    }

    /// The CA that signed a TLS server's certificate (PEM file).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir, port: u16) -> Smtp {
        let log = std::fs::File::create(dir.path().join("smtp.log")).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let smtp = Smtp { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {port}: {}", smtp.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        smtp
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smtp.log")).unwrap_or_default()
    }

    /// The messages received so far, as raw text, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let new = self.dir.path().join("Maildir/new");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = match std::fs::read_dir(&new) {
            Ok(rd) => rd.flatten().map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path())).collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files.into_iter().map(|(_, p)| std::fs::read_to_string(p).unwrap()).collect()
    }

    /// Waits until at least `n` messages arrived; returns them.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(Instant::now() < deadline, "{} of {n} messages arrived; server log:\n{}", m.len(), self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
