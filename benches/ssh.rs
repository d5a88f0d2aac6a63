//! `uname -a; uptime` on 50 and 200 loopback hosts (real sshd), three ways in one run:
//! `opslet run` (the CLI, cold: a new process, new connections), a bare russh client doing only
//! connect + key login + exec, and Ansible ad-hoc (`-f` = number of hosts, `shell` and `raw`
//! modules). Reports wall time (median) and peak memory of each process tree, and the ratios.
//!
//! Targets (issue #5): at 200 hosts at least 10x faster than Ansible, and within 1.3x of the bare
//! russh client. Run: `cargo bench --bench ssh` (root, after `scripts/peers/ssh.sh install` and
//! `scripts/peers/ssh.sh ansible`). Under `cargo test` it runs once on 5 hosts, without Ansible.

#[path = "common/measure.rs"]
mod measure;
#[path = "../tests/common/sshd.rs"]
mod sshd;

use measure::{measure, median};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const CMD: &str = "uname -a; uptime";

struct Setup {
    fleet: sshd::Fleet,
    work: tempfile::TempDir,
}

impl Setup {
    fn data(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn opslet(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.env("OPSLET_DATA_DIR", self.data()).env("OPSLET_CONFIG", self.work.path().join("opslet.toml"));
        c
    }
}

fn setup(n: usize) -> Setup {
    let fleet = sshd::Fleet::start(n, "h");
    let work = tempfile::tempdir().unwrap();
    let s = Setup { fleet, work };
    let w = s.work.path();
    let mut csv = String::from("name,address,port,groups,host_key\n");
    let mut ini = String::new();
    for h in &s.fleet.hosts {
        csv.push_str(&format!("{},{},{},bench,{}\n", h.name, h.address, h.port, h.host_key));
        ini.push_str(&format!("{} ansible_host={} ansible_port={}\n", h.name, h.address, h.port));
    }
    std::fs::write(w.join("hosts.csv"), csv).unwrap();
    std::fs::write(w.join("hosts.ini"), ini).unwrap();
    std::fs::write(
        w.join("opslet.toml"),
        "[ssh]\nconcurrency = 1000\n[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n",
    )
    .unwrap();
    let key = s.fleet.dir.path().join("client");
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    ok(s.opslet().args(["cmdb", "import"]).arg(w.join("hosts.csv")));
    ok(s.opslet().args(["secret", "set", "ssh-key", "--file"]).arg(&key));
    let applet = w.join("fanout");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), "name = \"fanout\"\nversion = \"1.0.0\"\n[permissions]\nssh = { hosts = [\"*\"] }\n[params.cmd]\ntype = \"string\"\nrequired = true\n").unwrap();
    std::fs::write(
        applet.join("main.lua"),
        "return function(p)\n  local ok = 0\n  for _, r in ipairs(ssh.run('group:bench', p.cmd)) do if r.ok and #r.stdout > 0 then ok += 1 end end\n  return ok\nend\n",
    )
    .unwrap();
    s
}

/// opslet: the CLI, from process start to exit.
fn run_opslet(s: &Setup, n: usize) -> (Duration, u64) {
    let mut c = s.opslet();
    c.args(["run", "-q", "--format", "json"]).arg(s.work.path().join("fanout")).args(["-p", &format!("cmd={CMD}")]);
    let (wall, peak, out) = measure(c);
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(got, n.to_string(), "opslet: hosts ok; stderr: {}", String::from_utf8_lossy(&out.stderr));
    (wall, peak)
}

/// The bare client runs in a child process of this benchmark (so it is measured like the others).
fn run_bare(s: &Setup, n: usize) -> (Duration, u64) {
    let targets: String = s.fleet.hosts.iter().map(|h| format!("{} {}\n", h.address, h.port)).collect();
    let file = s.work.path().join("targets.txt");
    std::fs::write(&file, targets).unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg("--bare-child").arg(&file).arg(s.fleet.dir.path().join("client"));
    let (wall, peak, out) = measure(c);
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(got, n.to_string(), "bare russh: {}", String::from_utf8_lossy(&out.stderr));
    (wall, peak)
}

fn ansible_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/venv-ansible/bin/ansible");
    p.exists().then_some(p)
}

fn run_ansible(s: &Setup, n: usize, module: &str) -> (Duration, u64) {
    let mut c = Command::new(ansible_bin().unwrap());
    c.args(["all", "-i"])
        .arg(s.work.path().join("hosts.ini"))
        .args(["-m", module, "-a", CMD, "-f", &n.to_string(), "-o"])
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_PRIVATE_KEY_FILE", s.fleet.dir.path().join("client"))
        .env("ANSIBLE_REMOTE_USER", sshd::USER)
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .env("ANSIBLE_LOCAL_TEMP", s.work.path().join("ansible-tmp"))
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", s.work.path().join("cp"));
    let (wall, peak, out) = measure(c);
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text.lines().filter(|l| l.contains("| CHANGED") || l.contains("| SUCCESS")).count();
    assert_eq!(
        ok,
        n,
        "ansible -m {module}: {}\n{}",
        text.lines().take(5).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    (wall, peak)
}

fn bare_child(targets: &Path, key: &Path) {
    use russh::client;
    struct H;
    impl client::Handler for H {
        type Error = russh::Error;
        async fn check_server_key(&mut self, _: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let key = Arc::new(russh::keys::decode_secret_key(&std::fs::read_to_string(key).unwrap(), None).unwrap());
    let targets: Vec<(String, u16)> = std::fs::read_to_string(targets)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, p) = l.split_once(' ').unwrap();
            (a.to_string(), p.parse().unwrap())
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ok = rt.block_on(async {
        let cfg = Arc::new(client::Config { nodelay: true, ..Default::default() });
        let mut set = tokio::task::JoinSet::new();
        for (addr, port) in targets {
            let (cfg, key) = (Arc::clone(&cfg), Arc::clone(&key));
            set.spawn(async move {
                let mut h = client::connect(cfg, (addr.as_str(), port), H).await.ok()?;
                let hash = h.best_supported_rsa_hash().await.ok()?.flatten();
                let auth = h.authenticate_publickey("opsuser", russh::keys::PrivateKeyWithHashAlg::new(key, hash)).await.ok()?;
                if !auth.success() {
                    return None;
                }
                let mut ch = h.channel_open_session().await.ok()?;
                ch.exec(true, CMD).await.ok()?;
                let (mut out, mut code) = (Vec::new(), None);
                while let Some(m) = ch.wait().await {
                    match m {
                        russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                        russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                        _ => {}
                    }
                }
                (code == Some(0) && !out.is_empty()).then_some(())
            });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            if matches!(r, Ok(Some(()))) {
                ok += 1;
            }
        }
        ok
    });
    println!("{ok}");
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-child") {
        bare_child(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let sizes: &[usize] = if smoke { &[5] } else { &[50, 200] };
    let reps = if smoke { 1 } else { 5 };
    let ansible = if smoke { None } else { ansible_bin() };
    if !smoke && ansible.is_none() {
        println!("ansible not found under .peers/venv-ansible: run scripts/peers/ssh.sh ansible (comparison skipped)");
    }
    for &n in sizes {
        let s = setup(n);
        // One warm-up of each: page cache, sshd's first fork.
        run_opslet(&s, n);
        run_bare(&s, n);
        let (mut ot, mut bt, mut om, mut bm) = (Vec::new(), Vec::new(), 0, 0);
        for _ in 0..reps {
            let (t, m) = run_opslet(&s, n);
            ot.push(t);
            om = om.max(m);
            let (t, m) = run_bare(&s, n);
            bt.push(t);
            bm = bm.max(m);
        }
        let (o, b) = (median(ot), median(bt));
        println!("{n} hosts, `{CMD}`, median of {reps}:");
        println!("  bare russh client      {:>8.1} ms  peak {:>6.1} MiB   1.00x", b.as_secs_f64() * 1e3, mib(bm));
        println!(
            "  opslet run (CLI, cold) {:>8.1} ms  peak {:>6.1} MiB   {:.2}x of bare (target <= 1.3x)",
            o.as_secs_f64() * 1e3,
            mib(om),
            o.as_secs_f64() / b.as_secs_f64()
        );
        if ansible.is_some() {
            for module in ["shell", "raw"] {
                let runs = if n >= 200 { 2 } else { 3 };
                let mut at = Vec::new();
                let mut am = 0;
                for _ in 0..runs {
                    let (t, m) = run_ansible(&s, n, module);
                    at.push(t);
                    am = am.max(m);
                }
                let a = median(at);
                println!(
                    "  ansible -m {module:<5} -f {n:<3} {:>8.1} ms  peak {:>6.1} MiB   opslet is {:.1}x faster (target >= 10x at 200), uses {:.1}x less memory",
                    a.as_secs_f64() * 1e3,
                    mib(am),
                    a.as_secs_f64() / o.as_secs_f64(),
                    mib(am) / mib(om).max(0.1)
                );
            }
        }
    }
}
