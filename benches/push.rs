//! One object to many loopback hosts (real sshd, real S3 store), two ways in one run, each as
//! `opslet run` from process start to exit:
//! - **stream**: `ssh.put(hosts, path, s3.object(...))`: each host reads the object from the store
//!   as it is written over SFTP, checked with sha256sum on the host and renamed into place;
//! - **package**: `ssh.put(hosts, path, { file = "pkg.bin" })`: the same bytes shipped inside the
//!   applet, held in memory once and written to every host.
//!
//! Reports wall time (median) and peak memory of each, and their ratio. The stream does more per
//! host (a GET from the store, the on-host checksum, the rename); what it buys is that the bytes
//! never sit in opslet's memory nor in the applet. Run: `cargo bench --bench push` (root, after
//! `scripts/peers/ssh.sh install` and `scripts/peers/s3.sh install`; the store is started here).
//! Under `cargo test` it runs once on 3 hosts with a 1 MiB object.

#[path = "common/measure.rs"]
mod measure;
#[path = "../tests/common/sshd.rs"]
mod sshd;

use measure::{measure, median};

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const ACCESS: &str = "opsletaccess";
const SECRET: &str = "opsletsecret123";

fn endpoint() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/s3.sh");
    let o = Command::new("bash").args([script, "start"]).output().expect("running scripts/peers/s3.sh");
    assert!(o.status.success(), "scripts/peers/s3.sh start: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("bash").args([script, "env"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("OPSLET_S3_ENDPOINT=")).expect("an endpoint").trim().to_string()
}

struct Setup {
    _fleet: sshd::Fleet,
    work: tempfile::TempDir,
}

impl Setup {
    fn opslet(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"));
        c.env("OPSLET_DATA_DIR", self.work.path().join("data")).env("OPSLET_CONFIG", self.work.path().join("opslet.toml"));
        c
    }

    fn out(&self) -> PathBuf {
        self.work.path().join("out")
    }
}

fn setup(n: usize, size: usize, endpoint: &str) -> Setup {
    use std::os::unix::fs::PermissionsExt;
    let fleet = sshd::Fleet::start(n, "h");
    let s = Setup { _fleet: fleet, work: tempfile::tempdir().unwrap() };
    let w = s.work.path();
    std::fs::create_dir_all(s.out()).unwrap();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.out(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut csv = String::from("name,address,port,groups,host_key\n");
    for h in &s._fleet.hosts {
        csv.push_str(&format!("{},{},{},bench,{}\n", h.name, h.address, h.port, h.host_key));
    }
    std::fs::write(w.join("hosts.csv"), csv).unwrap();
    std::fs::write(
        w.join("opslet.toml"),
        format!(
            "[ssh]\nconcurrency = 1000\nmax_file = \"64MiB\"\n[[ssh.credentials]]\nhosts = \"*\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n\
             [s3.store]\nendpoint = \"{endpoint}\"\naccess_key = \"{ACCESS}\"\nsecret_key_secret = \"s3-secret\"\n"
        ),
    )
    .unwrap();
    std::fs::write(w.join("s3-secret"), SECRET).unwrap();
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    ok(s.opslet().args(["cmdb", "import"]).arg(w.join("hosts.csv")));
    ok(s.opslet().args(["secret", "set", "ssh-key", "--file"]).arg(s._fleet.dir.path().join("client")));
    ok(s.opslet().args(["secret", "set", "s3-secret", "--file"]).arg(w.join("s3-secret")));
    // The same bytes: in the store, and as the package applet's file.
    let bytes: Vec<u8> = (0..size).map(|i| ((i * 7 + i / 4096) % 251) as u8).collect();
    let bucket = format!("bench-push-{}", std::process::id());
    let pkg = w.join("pkg.bin");
    std::fs::write(&pkg, &bytes).unwrap();
    ok(s.opslet().args(["artifact", "put"]).arg(&pkg).arg(format!("store:{bucket}/bench/pkg.bin")));
    // A larger object only the stream can ship: its memory should not grow with it.
    let big = w.join("big.bin");
    std::fs::write(&big, (0..big_size(size)).map(|i| (i % 249) as u8).collect::<Vec<u8>>()).unwrap();
    ok(s.opslet().args(["artifact", "put"]).arg(&big).arg(format!("store:{bucket}/bench/big.bin")));
    std::fs::remove_file(&big).unwrap();
    for (name, source, perms) in [
        (
            "stream-big",
            format!("s3.object(\"{bucket}\", \"bench/big.bin\")"),
            format!("s3 = {{ bucket = \"{bucket}\", actions = [\"read\"] }}\n"),
        ),
        (
            "stream",
            format!("s3.object(\"{bucket}\", \"bench/pkg.bin\")"),
            format!("s3 = {{ bucket = \"{bucket}\", actions = [\"read\"] }}\n"),
        ),
        ("package", "{ file = \"pkg.bin\" }".to_string(), String::new()),
    ] {
        let dir = w.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("applet.toml"),
            format!(
                "name = \"{name}\"\nversion = \"1.0.0\"\n[permissions]\nssh = {{ hosts = [\"*\"] }}\n{perms}[limits]\ntimeout = \"600s\"\n"
            ),
        )
        .unwrap();
        if name == "package" {
            std::fs::write(dir.join("pkg.bin"), &bytes).unwrap();
        }
        std::fs::write(
            dir.join("main.lua"),
            format!(
                "return function()\n  local ok = 0\n  for _, r in ipairs(ssh.put('group:bench', '{out}/{name}.bin', {source}, {{ timeout = 600 }})) do if r.ok then ok += 1 end end\n  return ok\nend\n",
                out = s.out().display()
            ),
        )
        .unwrap();
    }
    s
}

fn run(s: &Setup, name: &str, n: usize) -> (Duration, u64) {
    let mut c = s.opslet();
    c.args(["run", "-q", "--format", "json"]).arg(s.work.path().join(name));
    let (wall, peak, out) = measure(c);
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(got, n.to_string(), "{name}: hosts ok; stderr: {}", String::from_utf8_lossy(&out.stderr));
    (wall, peak)
}

/// The larger object's size: 64 MiB in a measurement, 2 MiB in the smoke run.
fn big_size(size: usize) -> usize {
    if size >= 4 << 20 { 64 << 20 } else { 2 << 20 }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn main() {
    // The store must exist before bucket creation: create it through the client library here.
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    // 6 MiB: an applet holds at most 8 MiB of files, so that is about the largest the package way can ship.
    let (n, size, reps) = if smoke { (3, 1 << 20, 1) } else { (50, 6 << 20, 3) };
    let endpoint = endpoint();
    make_bucket(&endpoint);
    let s = setup(n, size, &endpoint);
    // A warm-up of each: page cache, sshd's first fork, the store's first read.
    run(&s, "package", n);
    run(&s, "stream", n);
    let (mut pt, mut st, mut pm, mut sm) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..reps {
        let (t, m) = run(&s, "package", n);
        pt.push(t);
        pm = pm.max(m);
        let (t, m) = run(&s, "stream", n);
        st.push(t);
        sm = sm.max(m);
    }
    let (big_t, big_m) = run(&s, "stream-big", n);
    let (p, st) = (median(pt), median(st));
    println!("one {} MiB object to {n} hosts, `opslet run`, median of {reps}:", size >> 20);
    println!("  ssh.put of the applet's file (baseline)  {:>8.1} ms  peak {:>6.1} MiB   1.00x", p.as_secs_f64() * 1e3, mib(pm));
    println!(
        "  ssh.put of an s3.object (streamed)       {:>8.1} ms  peak {:>6.1} MiB   {:.2}x the time, {:.2}x the memory",
        st.as_secs_f64() * 1e3,
        mib(sm),
        st.as_secs_f64() / p.as_secs_f64(),
        mib(sm) / mib(pm).max(0.1)
    );
    println!(
        "  ssh.put of a {} MiB s3.object (once)     {:>8.1} ms  peak {:>6.1} MiB   {:.2}x the memory of the baseline, for {}x the bytes",
        big_size(size) >> 20,
        big_t.as_secs_f64() * 1e3,
        mib(big_m),
        mib(big_m) / mib(pm).max(0.1),
        big_size(size) / size
    );
}

/// The bucket of this run, made with the project's own client.
fn make_bucket(endpoint: &str) {
    let bucket = format!("bench-push-{}", std::process::id());
    let text = format!("[s3.t]\nendpoint = \"{endpoint}\"\naccess_key = \"{ACCESS}\"\nsecret_key_secret = \"x\"\n");
    let cfg = opslet::config::Config::parse(&text, "opslet.toml").unwrap();
    let conns = opslet::modules::s3::settings::from_config(&cfg).unwrap();
    opslet::install_tls_provider();
    let c = opslet::modules::s3::client_for(&conns, "t", &|_, _| Ok(SECRET.to_string())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(c.create_bucket(&bucket)).unwrap();
}
