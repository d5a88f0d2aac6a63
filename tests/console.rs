//! The web console end to end: a real `opslet serve` with published applets, driven by a real
//! headless Chromium through playwright-core (e2e/console.mjs). Needs what
//! `scripts/peers/browser.sh` installs. With OPSLET_SCREENSHOTS=DIR the pages are saved there
//! (docs/screenshots holds the committed ones).

#[path = "common/sshd.rs"]
mod sshd;

#[path = "common/serve.rs"]
mod serve_proc;

#[path = "common/s3.rs"]
mod s3peer;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const ROLES: &[(&str, &str)] = &[("ola", "operator"), ("vic", "viewer"), ("pat", "publisher"), ("aud", "auditor"), ("ada", "admin")];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn opslet(data: &Path, args: &[&str]) -> String {
    let o =
        Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG").output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn opslet_stdin(data: &Path, args: &[&str], input: &str) {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(args)
        .env("OPSLET_DATA_DIR", data)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn password(user: &str) -> String {
    format!("{user}-console-pw-1")
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn the_console_works_in_a_real_browser() {
    let node_modules = root().join("e2e/node_modules/playwright-core");
    assert!(node_modules.exists() && Path::new("/usr/bin/chromium").exists(), "run scripts/peers/browser.sh first (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Users of every role with console passwords; the operator may run fleet-*.
    for (user, role) in ROLES {
        opslet(&data, &["user", "add", user, "--role", role]);
        opslet_stdin(&data, &["user", "passwd", user], &format!("{}\n", password(user)));
    }
    opslet(&data, &["grant", "add", "ola", "fleet-*"]);
    // Three hosts to select.
    for (i, name) in ["web1", "web2", "web3"].iter().enumerate() {
        opslet(&data, &["cmdb", "host", "add", name, "--address", &format!("192.0.2.{}", i + 10), "--group", "web"]);
    }
    // Three real sshd hosts for an ssh applet, whose per-host progress the job page shows.
    let fleet = sshd::Fleet::start(3, "node");
    let mut csv = String::from("name,address,port,groups,host_key\n");
    for h in &fleet.hosts {
        csv.push_str(&format!("{},{},{},fleet,{}\n", h.name, h.address, h.port, h.host_key));
    }
    // And a thousand more names on the same sshd hosts, for a run whose table has 1,000 rows.
    for i in 1..=BIG {
        let h = &fleet.hosts[i % fleet.hosts.len()];
        csv.push_str(&format!("big{i:04},{},{},big,{}\n", h.address, h.port, h.host_key));
    }
    std::fs::write(dir.path().join("fleet.csv"), csv).unwrap();
    opslet(&data, &["cmdb", "import", dir.path().join("fleet.csv").to_str().unwrap()]);
    opslet(&data, &["secret", "set", "ssh-key", "--file", fleet.dir.path().join("client").to_str().unwrap()]);
    // The 1,000 names share one sshd, which takes the call's burst of 256 logins (the default
    // concurrency) alone, forking and verifying a key for each: on a busy machine a few of them
    // outlast the 10 s default connect timeout. A real fleet answers from 1,000 machines.
    std::fs::write(
        data.join("opslet.toml"),
        format!(
            "[ssh]\nconnect_timeout = \"60s\"\n\n[[ssh.credentials]]\nhosts = \"group:fleet | group:big\"\nuser = \"opsuser\"\nkey_secret = \"ssh-key\"\n\n\
         [[approvals.rule]]\nname = \"inventory-writes\"\nmodule = \"cmdb\"\nactions = [\"write\"]\nroles = [\"admin\"]\n\n{}",
            s3peer::connection("store", "")
        ),
    )
    .unwrap();
    // An artifact store with a package in two versions, for the Artifacts page.
    let s3_key = dir.path().join("s3-key");
    std::fs::write(&s3_key, s3peer::SECRET).unwrap();
    opslet(&data, &["secret", "set", "s3-secret", "--file", s3_key.to_str().unwrap()]);
    let artifact_bucket = s3peer::bucket("console", true);
    for v in ["1.0", "1.1"] {
        let f = dir.path().join(format!("agent-{v}.tgz"));
        std::fs::write(&f, format!("agent {v}")).unwrap();
        opslet(&data, &["artifact", "put", f.to_str().unwrap(), &format!("{artifact_bucket}/agent/agent.tgz")]);
    }
    // An applet that changes the inventory: its runs wait for an admin's approval.
    let tagger = dir.path().join("fleet-tag");
    std::fs::create_dir_all(&tagger).unwrap();
    std::fs::write(
        tagger.join("applet.toml"),
        "name = \"fleet-tag\"\nversion = \"1.0.0\"\ndescription = \"Tags hosts\"\n\n[params.hosts]\ntype = \"host-selector\"\nrequired = true\n\n\
         [params.tag]\ntype = \"string\"\nrequired = true\n\n[permissions]\ncmdb = [\"read\", \"write\"]\n",
    )
    .unwrap();
    std::fs::write(
        tagger.join("main.lua"),
        "return function(p) local n = 0 for _, h in ipairs(cmdb.hosts(p.hosts)) do cmdb.set(h.name, { tags = { mark = p.tag } }) n = n + 1 end return { tagged = n } end",
    )
    .unwrap();
    opslet(&data, &["publish", tagger.to_str().unwrap(), "-m", "tags hosts"]);
    // An applet with a secret param, which a re-run leaves blank.
    let login = dir.path().join("fleet-login");
    std::fs::create_dir_all(&login).unwrap();
    std::fs::write(
        login.join("applet.toml"),
        "name = \"fleet-login\"\nversion = \"1.0.0\"\ndescription = \"Checks a login\"\n\n\
         [params.account]\ntype = \"string\"\nrequired = true\n\n[params.password]\ntype = \"string\"\nrequired = true\nsecret = true\n",
    )
    .unwrap();
    std::fs::write(login.join("main.lua"), "return function(p) return { account = p.account, length = #p.password } end").unwrap();
    opslet(&data, &["publish", login.to_str().unwrap(), "-m", "login check"]);
    opslet(&data, &["publish", root().join("applets/host-facts").to_str().unwrap(), "-m", "bundled"]);
    opslet(&data, &["grant", "add", "ola", "host-*"]);
    opslet(&data, &["publish", root().join("applets/log-excerpt").to_str().unwrap(), "-m", "bundled"]);
    opslet(&data, &["grant", "add", "ola", "log-*"]);
    // A slow applet to cancel.
    let slow = dir.path().join("fleet-wait");
    std::fs::create_dir_all(&slow).unwrap();
    std::fs::write(
        slow.join("applet.toml"),
        "name = \"fleet-wait\"\nversion = \"1.0.0\"\ndescription = \"A slow applet: waits a long time\"\n",
    )
    .unwrap();
    std::fs::write(slow.join("main.lua"), "return function() log.info('waiting') time.sleep(30) return 1 end").unwrap();
    opslet(&data, &["publish", slow.to_str().unwrap(), "-m", "slow"]);
    // A host whose address a spreadsheet would run as a formula.
    opslet(&data, &["cmdb", "host", "add", "calc1", "--address", "=1+1", "--group", "sheet"]);
    // fleet-report 1.0.0 (without the mode param), then 1.1.0 from the fixture.
    let fixture = root().join("tests/fixtures/console/fleet-report");
    let v1 = dir.path().join("fleet-report-1");
    copy_dir(&fixture, &v1);
    let manifest = std::fs::read_to_string(v1.join("applet.toml")).unwrap();
    let manifest = manifest.replace("version = \"1.1.0\"", "version = \"1.0.0\"");
    let manifest = manifest[..manifest.find("[params.mode]").unwrap()].to_string() + "[permissions]\ncmdb = [\"read\"]\n";
    std::fs::write(v1.join("applet.toml"), manifest).unwrap();
    std::fs::write(v1.join("main.lua"), std::fs::read_to_string(fixture.join("main.lua")).unwrap().replace("params.mode", "\"quick\""))
        .unwrap();
    opslet(&data, &["publish", v1.to_str().unwrap(), "-m", "first version"]);
    opslet(&data, &["publish", fixture.to_str().unwrap(), "-m", "add mode param"]);
    opslet(&data, &["publish", root().join("applets/run-report").to_str().unwrap(), "-m", "bundled"]);
    opslet(&data, &["feature", "add", "daily-ops", "fleet-report"]);
    // A bundle for the publisher to upload, exported from another registry.
    let other = dir.path().join("other");
    opslet(&other, &["publish", root().join("applets/disk-usage").to_str().unwrap(), "-m", "elsewhere"]);
    let bundle = dir.path().join("disk-usage.bundle");
    opslet(&other, &["export", "disk-usage", "-o", bundle.to_str().unwrap()]);

    // A trivial applet run 1,050 times, so the jobs page has pages past a thousand.
    let tick = dir.path().join("tick");
    std::fs::create_dir_all(&tick).unwrap();
    std::fs::write(tick.join("applet.toml"), "name = \"tick\"\nversion = \"1.0.0\"\ndescription = \"Returns one\"\n").unwrap();
    std::fs::write(tick.join("main.lua"), "return function() return 1 end").unwrap();
    opslet(&data, &["publish", tick.to_str().unwrap(), "-m", "ticks"]);
    opslet(&data, &["grant", "add", "ada", "tick"]);
    let token = opslet(&data, &["token", "create", "ada"]).trim().to_string();

    let flags = ["--applet-limit", "0", "--user-limit", "0", "--queue", "2000"];
    let (child, addr) = serve_proc::spawn(&data, &flags);
    let mut serve = Serve(child);
    opslet::install_tls_provider();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..1050 {
            let r = client.post(format!("http://{addr}/api/v1/applets/tick/run?async=true")).bearer_auth(&token).send().await.unwrap();
            assert_eq!(r.status(), 202);
        }
    });

    let shots = std::env::var("OPSLET_SCREENSHOTS").unwrap_or_else(|_| dir.path().join("shots").display().to_string());
    // The browser's cookies between the two phases (the admin's session).
    let browser_state = dir.path().join("browser-state.json");
    let phase = |name: &str| {
        let mut node = Command::new("node");
        node.arg(root().join("e2e/console.mjs"))
            .current_dir(root().join("e2e"))
            .env("OPSLET_PHASE", name)
            .env("OPSLET_URL", format!("http://{addr}"))
            .env("OPSLET_SHOTS", &shots)
            .env("OPSLET_STATE", &browser_state)
            .env("OPSLET_BIG", BIG.to_string())
            .env("OPSLET_BUNDLE", &bundle)
            .env("OPSLET_ARTIFACT_BUCKET", &artifact_bucket);
        for (user, role) in ROLES {
            node.env(format!("OPSLET_PW_{}", role.to_uppercase()), password(user));
        }
        let out = node.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{text}");
        assert!(out.status.success() && text.contains(&format!("{name}: all checks passed")), "the browser test ({name}) failed:\n{text}");
    };
    phase("before-restart");

    // The server stops as an operator stops it (SIGTERM) and starts again on the same address:
    // the admin's browser is still signed in.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    let st = serve.0.wait().unwrap();
    assert!(st.success(), "the server stopped cleanly: {st:?}");
    serve = Serve(serve_proc::spawn_at(&data, &addr, &flags).0);
    phase("after-restart");
    drop(serve);

    // The run ada approved in the browser changed the inventory; only then.
    let hosts = opslet(&data, &["cmdb", "host", "list", "--format", "json"]);
    assert_eq!(hosts.matches("\"mark\": \"approved-in-browser\"").count(), 3, "{hosts}");
    for page in [
        "login",
        "market",
        "job",
        "job-hosts",
        "audit",
        "hosts",
        "publish",
        "admin-users",
        "admin-tokens",
        "admin-secrets",
        "approval",
        "approvals",
        "schedules",
    ] {
        assert!(Path::new(&shots).join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
    // A secret typed into the console never reached a page, a log or the audit: only its name.
    let audit = opslet(&data, &["audit", "list", "--format", "json", "--limit", "10000"]);
    assert!(
        !audit.contains(CONSOLE_SECRET) && !audit.contains(ROTATED_SECRET) && !audit.contains(RUN_SECRET),
        "a secret value in the audit log"
    );
    assert!(audit.contains("\"secret\": \"deploy-key\""), "the secret's changes are audited by name");
}

/// Hosts in the `big` group (names on the fleet's sshd hosts).
const BIG: usize = 1000;
/// Values e2e/console.mjs types (it has the same strings): a secret set, then rotated, in the
/// admin pages; and a secret param of a run.
const CONSOLE_SECRET: &str = "first-deploy-key-value-7731";
const ROTATED_SECRET: &str = "rotated-deploy-key-value-9924";
const RUN_SECRET: &str = "hunter2-but-longer-5521";
