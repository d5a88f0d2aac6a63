//! Real OpenSSH servers for the tests: a fleet of hosts on loopback addresses of this test
//! process's own, each sshd started here and killed by PID when the fleet is dropped (or, should
//! the test process die first, by the kernel: PR_SET_PDEATHSIG).
//!
//! Needs root (sshd's privilege separation) and what `scripts/peers/ssh.sh install` sets up:
//! OpenSSH's server, the account `opsuser` with the password `opslet-test-pw`, and a sudo rule
//! letting it run commands as `nobody`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const USER: &str = "opsuser";
pub const PASSWORD: &str = "opslet-test-pw";
const SSHD: &str = "/usr/sbin/sshd";
/// sshd listens on at most this many addresses per process.
const PER_SSHD: usize = 16;

pub struct FleetHost {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// The host's ed25519 key as an OpenSSH line.
    pub host_key: String,
}

pub struct Fleet {
    pub hosts: Vec<FleetHost>,
    /// An address in this fleet's range where nothing listens.
    pub dead_address: String,
    pub port: u16,
    /// The client's ed25519 private key (OpenSSH text), authorized on every host.
    pub client_key: String,
    /// A second client key that no host authorizes.
    pub stranger_key: String,
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

fn keygen(path: &Path, comment: &str) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs (install OpenSSH: scripts/peers/ssh.sh install)");
    assert!(st.success(), "ssh-keygen failed for {}", path.display());
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A /24 of loopback of this process's own, so test binaries running at once never collide.
fn net() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let k = N.fetch_add(1, Ordering::SeqCst);
    format!("127.{}.{}", 100 + (pid % 100), (pid / 100 + k * 37) % 250 + 1)
}

fn free_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0)).expect("binding a loopback port").local_addr().unwrap().port()
}

fn preflight() {
    let root = unsafe { libc::geteuid() } == 0;
    let ok = Path::new(SSHD).exists() && root && Command::new("id").arg(USER).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "the ssh tests need root, {SSHD} and the user {USER}: run `scripts/peers/ssh.sh install` first (scripts/test.sh does)");
    std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
}

impl Fleet {
    /// `n` hosts named `prefix1..prefixN`, each on its own loopback address.
    pub fn start(n: usize, prefix: &str) -> Fleet {
        preflight();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        keygen(&dir.path().join("client"), "opslet-test-client");
        keygen(&dir.path().join("stranger"), "opslet-test-stranger");
        let auth = dir.path().join("authorized_keys");
        std::fs::write(&auth, read(&dir.path().join("client.pub"))).unwrap();
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();

        let net = net();
        let addrs: Vec<String> = (1..=n).map(|i| format!("{net}.{}", i)).collect();
        let port = free_port(&addrs[0]);
        let mut children = Vec::new();
        let mut logs = Vec::new();
        let mut hosts = Vec::new();
        for (chunk_no, chunk) in addrs.chunks(PER_SSHD).enumerate() {
            let hk = dir.path().join(format!("host{chunk_no}"));
            keygen(&hk, &format!("opslet-test-host{chunk_no}"));
            let listen: String = chunk.iter().map(|a| format!("ListenAddress {a}:{port}\n")).collect();
            let conf = dir.path().join(format!("sshd{chunk_no}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "{listen}HostKey {hk}\nPidFile none\nAuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\n\
                     PubkeyAuthentication yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin no\nAllowUsers {USER}\nMaxStartups 1000:30:1000\nMaxSessions 100\n\
                     PrintMotd no\nPrintLastLog no\nAllowTcpForwarding yes\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n",
                    hk = hk.display(),
                    auth = auth.display()
                ),
            )
            .unwrap();
            let log = dir.path().join(format!("sshd{chunk_no}.log"));
            let mut cmd = Command::new(SSHD);
            cmd.arg("-D").arg("-f").arg(&conf).arg("-E").arg(&log).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            // SAFETY: prctl only sets a flag on the child between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            children.push(cmd.spawn().expect("starting sshd"));
            logs.push(log);
            let key = read(&hk.with_extension("pub"));
            let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            for a in chunk {
                hosts.push(FleetHost { name: format!("{prefix}{}", hosts.len() + 1), address: a.clone(), port, host_key: key.clone() });
            }
        }
        let fleet = Fleet {
            hosts,
            dead_address: format!("{net}.250"),
            port,
            client_key: read(&dir.path().join("client")),
            stranger_key: read(&dir.path().join("stranger")),
            dir,
            children,
            logs,
        };
        for h in &fleet.hosts {
            fleet.wait_listening(&h.address);
        }
        fleet
    }

    fn wait_listening(&self, address: &str) {
        let sa: SocketAddr = format!("{address}:{}", self.port).parse().unwrap();
        let t0 = Instant::now();
        while TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "sshd did not listen on {sa} (log: {})", self.sshd_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every sshd's log so far.
    pub fn sshd_log(&self) -> String {
        self.logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect()
    }

    /// Logins sshd accepted so far.
    pub fn logins(&self) -> usize {
        self.sshd_log().lines().filter(|l| l.contains("Accepted publickey for") || l.contains("Accepted password for")).count()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
