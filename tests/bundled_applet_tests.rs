//! The bundled applets' own tests (`applets/*/tests/*.lua`), run through the real binary as a
//! user runs them: `opslet test DIR... --format json`, offline (fakes answer every module call).
//! Every applet that has tests must pass them all; the applets that have none yet are named.
//! Running them writes nothing: not into the checkout, the current folder or the data dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde_json::Value;

/// Applets whose tests must exist (and pass). The others may have none yet, and are named. The
/// virt applets' tests run (and so are required) only in a build with the `virt` feature.
const MUST_HAVE_TESTS: [&str; 18] = [
    "disk-usage",
    "host-facts",
    "service-restart",
    "change-checklist",
    "log-excerpt",
    "run-report",
    "alert-remediate",
    "log-errors",
    "zabbix-triage",
    "vm-inventory",
    "vm-provision",
    "vm-capacity",
    "config-drift",
    "config-publish",
    "component-push",
    "hardware-check",
    "switch-backup",
    "vlan-provision",
];

fn applets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("applets")
}

/// The bundled applet folders (those with an applet.toml), by name.
fn bundled() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(applets_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("applet.toml").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

/// Whether the applet asks for the `virt` module, which only a build with the feature has.
fn needs_virt(dir: &Path) -> bool {
    let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("applet.toml")).unwrap()).unwrap();
    manifest.get("permissions").and_then(|p| p.get("virt")).is_some()
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

/// Each case of a report: (file, case, error if it failed); a file that did not load is a case
/// named after the file.
fn cases(report: &Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for f in report["files"].as_array().unwrap() {
        let file = f["file"].as_str().unwrap().to_string();
        if let Some(e) = f["error"].as_str() {
            out.push((file.clone(), "(the file)".into(), Some(e.to_string())));
        }
        for c in f["cases"].as_array().unwrap() {
            let error = if c["ok"] == Value::Bool(true) { None } else { Some(c["error"].as_str().unwrap_or("failed").to_string()) };
            out.push((file.clone(), c["name"].as_str().unwrap().to_string(), error));
        }
    }
    out
}

#[test]
fn bundled_applets_pass_their_own_tests() {
    let applets = bundled();
    assert!(applets.len() >= MUST_HAVE_TESTS.len(), "bundled applets: {applets:?}");
    // The virt applets load only in a build with the `virt` feature (scripts/test.sh has it).
    let (tested, skipped): (Vec<_>, Vec<_>) = applets.iter().partition(|(_, dir)| cfg!(feature = "virt") || !needs_virt(dir));
    let skipped: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();

    let tmp = tempfile::tempdir().unwrap();
    let (cwd, data) = (tmp.path().join("cwd"), tmp.path().join("data"));
    std::fs::create_dir(&cwd).unwrap();
    let before = snapshot(&applets_dir());
    let out = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .arg("test")
        .args(tested.iter().map(|(_, dir)| dir))
        .args(["--format", "json"])
        .current_dir(&cwd)
        .env("OPSLET_DATA_DIR", &data)
        .env_remove("OPSLET_CONFIG")
        .output()
        .unwrap();
    let after = snapshot(&applets_dir());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("opslet test --format json printed no JSON ({e}):\n{stdout}\n{stderr}"));

    // What each applet's tests did.
    let mut failures = Vec::new();
    let mut untested = Vec::new();
    let mut passed: BTreeMap<String, usize> = BTreeMap::new();
    let reports = summary["applets"].as_array().unwrap();
    assert_eq!(reports.len(), tested.len(), "one report per applet folder:\n{stdout}");
    for ((name, _), entry) in tested.iter().zip(reports) {
        if let Some(e) = entry.get("error") {
            failures.push(format!("{name}: did not load: {e}"));
            continue;
        }
        let report = &entry["report"];
        if report["files"].as_array().unwrap().is_empty() {
            untested.push(name.as_str());
            continue;
        }
        for (file, case, error) in cases(report) {
            match error {
                Some(e) => failures.push(format!("{name}: {file} › {case}:\n    {}", e.replace('\n', "\n    "))),
                None => *passed.entry(name.clone()).or_default() += 1,
            }
        }
    }
    let missing: Vec<&str> = MUST_HAVE_TESTS.iter().copied().filter(|n| !passed.contains_key(*n) && !skipped.contains(n)).collect();
    let without = format!(
        "bundled applets without tests yet: {}{}",
        if untested.is_empty() { "none".to_string() } else { untested.join(", ") },
        if skipped.is_empty() { String::new() } else { format!(" (not run, this build has no `virt`: {})", skipped.join(", ")) }
    );
    eprintln!("{without}");
    eprintln!("passed: {passed:?}");
    assert!(failures.is_empty(), "bundled applet tests failed:\n{}\n{without}", failures.join("\n"));
    assert!(missing.is_empty(), "these bundled applets must have passing tests (applets/NAME/tests/*.lua): {missing:?}\n{without}");
    assert_eq!(out.status.code(), Some(0), "opslet test exits 0 when every test passes:\n{stderr}");
    assert_eq!(summary["failed"], 0, "{stdout}");
    assert_eq!(summary["not_loaded"], 0, "{stdout}");
    assert_eq!(summary["without_tests"], untested.len(), "{stdout}");

    // Nothing was written: not into the checkout's applets, the current folder or the data dir.
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(changed.is_empty(), "opslet test changed files of the checkout: {changed:?}");
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "opslet test wrote into its current folder");
    assert!(!data.exists() || std::fs::read_dir(&data).unwrap().count() == 0, "opslet test wrote into the data dir {}", data.display());
}

/// A failing case makes `opslet test` fail, name the case and show the diff: the check above
/// would notice a bundled applet's broken test.
#[test]
fn a_failing_bundled_applet_test_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of a bundled applet with one more case, whose expectation is wrong.
    let app = tmp.path().join("log-excerpt");
    for rel in ["applet.toml", "main.lua", "parse.lua"] {
        std::fs::create_dir_all(app.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(applets_dir().join("log-excerpt").join(rel), app.join(rel)).unwrap();
    }
    std::fs::create_dir_all(app.join("tests")).unwrap();
    std::fs::write(
        app.join("tests/wrong.lua"),
        r#"test("an error line is not a warning", function()
  local recs = run({ text = "2024-05-01T10:00:00Z ERROR [api] boom" })
  assert.eq(recs, { { line = 1, time = "2024-05-01T10:00:00Z", level = "warn", source = "api", message = "boom" } })
end)
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["test", "--format", "json"])
        .arg(&app)
        .current_dir(tmp.path())
        .env("OPSLET_DATA_DIR", tmp.path().join("data"))
        .env_remove("OPSLET_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    let c = cases(&summary["applets"][0]["report"]);
    assert_eq!(c.len(), 1, "{stdout}");
    let error = c[0].2.as_deref().unwrap();
    assert!(error.contains("[1].level: expected \"warn\", got \"error\""), "{error}");
}
