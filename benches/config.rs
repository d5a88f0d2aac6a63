//! Publishing a small config item to 50 loopback hosts (real sshd): `opslet run` of the bundled
//! `config-publish` applet (the CLI, cold: a new process, new connections; one canary host, then
//! the other 49 at once), against `ssh.run("true")` on the same hosts from the same CLI in the
//! same run, the least any SSH fan-out can cost. Each publish carries a new version (the file
//! changes, so every host writes, validates, swaps, reloads and checks health).
//!
//! Target (issue #9): the whole publish to 50 hosts completes in a few seconds. Run:
//! `cargo bench --bench config` (root, after `scripts/peers/ssh.sh install`). Under `cargo test`
//! it runs once on 5 hosts.

#[path = "../tests/common/sshd.rs"]
mod sshd;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Setup {
    fleet: sshd::Fleet,
    work: tempfile::TempDir,
}

impl Setup {
    fn opslet(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.env("OPSLET_DATA_DIR", self.work.path().join("data")).env("OPSLET_CONFIG", self.work.path().join("opslet.toml"));
        c
    }

    fn ok(&self, c: &mut Command) -> String {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Stores version `v` of the item (the port changes with it).
    fn set_item(&self, v: u32) {
        let w = self.work.path();
        let root = w.join("hosts");
        std::fs::write(
            w.join("app.toml"),
            format!(
                "name = \"app\"\npath = \"{}/{{{{ host.name }}}}/app.conf\"\nmode = \"0640\"\n\
                 validate = \"grep -q '^port = ' {{file}}\"\nreload = \"cp {{path}} {{path}}.loaded\"\nhealth = \"test -s {{path}}.loaded\"\n\
                 template = \"# {{{{ host.name }}}}\\nport = {{{{ port }}}}\\nworkers = 4\\n\"\n[values]\nport = {}\n",
                root.display(),
                8000 + v
            ),
        )
        .unwrap();
        self.ok(self.opslet().args(["config", "set"]).arg(w.join("app.toml")).args(["-m", &format!("v{v}")]));
    }
}

fn setup(n: usize) -> Setup {
    let fleet = sshd::Fleet::start(n, "h");
    let work = tempfile::tempdir().unwrap();
    let s = Setup { fleet, work };
    let w = s.work.path();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = w.join("hosts");
    std::fs::create_dir(&root).unwrap();
    let uid: u32 = String::from_utf8_lossy(&Command::new("id").args(["-u", sshd::USER]).output().unwrap().stdout).trim().parse().unwrap();
    let mut csv = String::from("name,address,port,groups,tags,host_key\n");
    for h in &s.fleet.hosts {
        csv.push_str(&format!("{},{},{},bench,env=dev,{}\n", h.name, h.address, h.port, h.host_key));
        let d = root.join(&h.name);
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(uid), None).unwrap();
    }
    std::fs::write(w.join("hosts.csv"), csv).unwrap();
    std::fs::write(
        w.join("opslet.toml"),
        "[ssh]\nconcurrency = 1000\n[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n",
    )
    .unwrap();
    s.ok(s.opslet().args(["cmdb", "import"]).arg(w.join("hosts.csv")));
    s.ok(s.opslet().args(["secret", "set", "ssh-key", "--file"]).arg(s.fleet.dir.path().join("client")));
    let applet = w.join("fanout");
    std::fs::create_dir_all(&applet).unwrap();
    std::fs::write(applet.join("applet.toml"), "name = \"fanout\"\nversion = \"1.0.0\"\n[permissions]\nssh = { hosts = [\"*\"] }\n")
        .unwrap();
    std::fs::write(
        applet.join("main.lua"),
        "return function()\n  local ok = 0\n  for _, r in ipairs(ssh.run('group:bench', 'true')) do if r.ok then ok += 1 end end\n  return ok\nend\n",
    )
    .unwrap();
    s
}

fn publish(s: &Setup, n: usize) -> Duration {
    let applet = Path::new(env!("CARGO_MANIFEST_DIR")).join("applets/config-publish");
    let mut c = s.opslet();
    c.args(["run", "-q", "--format", "json"]).arg(&applet).args([
        "-p",
        "item=app",
        "-p",
        "targets=group:bench",
        "-p",
        &format!("batch={n}"),
    ]);
    let t0 = Instant::now();
    let out = s.ok(&mut c);
    let took = t0.elapsed();
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let published = rows.as_array().unwrap().iter().filter(|r| r["status"] == "published").count();
    assert_eq!(published, n, "every host published: {out}");
    took
}

fn baseline(s: &Setup, n: usize) -> Duration {
    let mut c = s.opslet();
    c.args(["run", "-q", "--format", "json"]).arg(s.work.path().join("fanout"));
    let t0 = Instant::now();
    let out = s.ok(&mut c);
    let took = t0.elapsed();
    assert_eq!(out.trim(), n.to_string());
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let (n, reps) = if smoke { (5, 1) } else { (50, 5) };
    let s = setup(n);
    // Warm-up: page cache, sshd's first forks.
    s.set_item(1);
    publish(&s, n);
    baseline(&s, n);
    let (mut pt, mut bt) = (Vec::new(), Vec::new());
    for i in 0..reps {
        s.set_item(i as u32 + 2);
        pt.push(publish(&s, n));
        bt.push(baseline(&s, n));
    }
    // The hosts run the last version.
    let last = 8000 + reps as u32 + 1;
    for h in &s.fleet.hosts {
        let f: PathBuf = s.work.path().join("hosts").join(&h.name).join("app.conf.loaded");
        assert!(std::fs::read_to_string(f).unwrap().contains(&format!("port = {last}")));
    }
    let (p, b) = (median(pt), median(bt));
    println!("{n} hosts, median of {reps} (CLI, cold):");
    println!("  ssh.run `true`            {:>8.1} ms   1.00x", b.as_secs_f64() * 1e3);
    println!(
        "  config-publish (new v.)   {:>8.1} ms   {:.2}x of the bare fan-out (target: a few seconds in all)",
        p.as_secs_f64() * 1e3,
        p.as_secs_f64() / b.as_secs_f64()
    );
}
