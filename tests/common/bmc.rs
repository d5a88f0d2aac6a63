//! Real BMC simulators for the ipmi tests, started here and killed by PID when dropped (or by
//! the kernel, PR_SET_PDEATHSIG, should the test process die first): OpenIPMI's ipmi_sim (IPMI
//! over LAN, RMCP+) and sushy-emulator (Redfish). Needs `scripts/peers/bmc.sh install`
//! (scripts/test.sh runs it). Their users, sensors and SEL are listed in scripts/peers/bmc.sh.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "admin";
pub const PASSWORD: &str = "opslet-bmc-pw";
pub const NODE1: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
pub const NODE2: &str = "0f7e8a4c-4a8b-4b7e-9a40-7d0a3f7c2c11";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/peers/bmc.sh")
}

pub struct Bmc {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn spawn(args: &[&str], dir: &tempfile::TempDir) -> Child {
    let log = std::fs::File::create(dir.path().join("sim.log")).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("starting scripts/peers/bmc.sh")
}

impl Bmc {
    /// ipmi_sim on a free UDP port; `hot` puts CPU_Temp over its critical threshold and a critical
    /// event in the SEL.
    pub fn ipmi(hot: bool) -> Bmc {
        assert!(std::path::Path::new("/usr/bin/ipmi_sim").exists(), "ipmi_sim is not installed: run `scripts/peers/bmc.sh install`");
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let mut args = vec!["ipmi-sim", d.as_str()];
        let p = port.to_string();
        args.push(&p);
        if hot {
            args.push("hot");
        }
        let mut child = spawn(&args, &dir);
        // UDP: ready when ipmitool gets an answer.
        let t0 = Instant::now();
        loop {
            let ok = Command::new("ipmitool")
                .args([
                    "-I",
                    "lanplus",
                    "-C",
                    "3",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &p,
                    "-U",
                    USER,
                    "-P",
                    PASSWORD,
                    "-N",
                    "1",
                    "-R",
                    "1",
                    "mc",
                    "info",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("ipmi_sim exited ({st}): {}", std::fs::read_to_string(dir.path().join("sim.log")).unwrap_or_default());
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "ipmi_sim did not answer on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Bmc { child, port, dir }
    }

    /// sushy-emulator with systems node-1 and node-2 (both off); `tls` serves HTTPS with a
    /// certificate from the CA in [`Bmc::ca`].
    pub fn redfish(tls: bool) -> Bmc {
        assert!(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".peers/venv-redfish/bin/sushy-emulator").exists(),
            "sushy-emulator is not installed: run `scripts/peers/bmc.sh install`"
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let p = port.to_string();
        let mut args = vec!["redfish", d.as_str(), p.as_str()];
        if tls {
            args.push("tls");
        }
        let mut child = spawn(&args, &dir);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("sushy-emulator exited ({st}): {}", std::fs::read_to_string(dir.path().join("sim.log")).unwrap_or_default());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "sushy-emulator did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Bmc { child, port, dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// What the simulated chassis did (ipmi_sim), one line per power or boot change.
    pub fn chassis_events(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chassis-0x20/events")).unwrap_or_default()
    }

    /// ipmitool's answer to `args` (the reference client).
    pub fn ipmitool(&self, args: &[&str]) -> String {
        let p = self.port.to_string();
        let out = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", &p, "-U", USER, "-P", PASSWORD])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
