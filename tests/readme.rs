//! The README's steps, as written, in order: from the quick start through the market, the
//! HTTP API with the CLI still working while the server runs (locally and with `--server`),
//! and a console password. The shell blocks of those sections are run as one bash script in a
//! fresh home folder, with `opslet` the built binary (for `cargo run --release --`) and the
//! server's port a free one instead of 8620. The later sections need a fleet of real hosts and
//! are covered by the module tests.

use std::path::Path;
use std::process::{Command, Stdio};

/// The ```sh blocks between the two headings.
fn shell_blocks(readme: &str, from: &str, to: &str) -> String {
    let start = readme.find(from).expect("the README has the first section");
    let end = readme[start..].find(to).map(|i| start + i).expect("the README has the last section");
    let mut script = String::new();
    let mut inside = false;
    for line in readme[start..end].lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn the_readme_steps_work_in_order_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let steps = shell_blocks(&readme, "## Quick start", "### On many hosts over SSH")
        .replace("cargo run --release -- ", "opslet ")
        .replace("127.0.0.1:8620", &format!("127.0.0.1:{port}"));
    assert!(steps.contains("opslet serve &") && steps.contains("opslet user passwd alice"), "{steps}");

    let dir = tempfile::tempdir().unwrap();
    let (home, work, bin) = (dir.path().join("home"), dir.path().join("work"), dir.path().join("bin"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    // The checkout stays untouched: the steps run in a copy of what they use.
    copy_dir(&repo.join("applets"), &work.join("applets"));
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_opslet"), bin.join("opslet")).unwrap();
    // A server the steps leave running is stopped however they end.
    let script = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT\nset -x\n{steps}");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("OPSLET_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What `opslet user passwd alice` reads from a pipe.
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"correct horse battery staple\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a README step failed (the last `+` line):\n{stderr}\n--- stdout ---\n{stdout}");

    // The steps did what the README says they do.
    assert!(stdout.contains("restart"), "the checklist: {stdout}");
    assert!(stdout.contains("\"status\":\"ok\""), "the run over HTTP: {stdout}");
    assert!(work.join("le.bundle").exists() && work.join("my-applet/applet.toml").exists());
    let opslet = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).env_clear().env("HOME", &home).output().unwrap();
        assert!(o.status.success(), "opslet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let versions = opslet(&["versions", "my-applet", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&versions).unwrap();
    let find = |ver: &str| v.as_array().unwrap().iter().find(|x| x["version"] == ver).cloned().unwrap_or_default();
    assert_eq!(find("0.2.0")["yanked"], true, "{versions}");
    let list: serde_json::Value = serde_json::from_str(&opslet(&["list", "--format", "json"])).unwrap();
    let mine = list.as_array().unwrap().iter().find(|a| a["name"] == "my-applet").cloned().unwrap_or_default();
    assert_eq!(mine["current"]["version"], "0.1.0", "rolled back: {list}");
    let audit: serde_json::Value = serde_json::from_str(&opslet(&["audit", "list", "--format", "json", "--limit", "1000"])).unwrap();
    let records = audit.as_array().unwrap();
    assert!(records.iter().any(|r| r["kind"] == "auth.password.set" && r["data"]["user"] == "alice"), "{audit}");
    assert!(records.iter().any(|r| r["kind"] == "run.start" && r["actor"] == "ops" && r["via"] == "remote-cli"), "{audit}");
    assert!(opslet(&["audit", "verify"]).contains("audit log intact"));
}
