//! Applet folders with tests, and `opslet test` on them, for the tests of `opslet test` itself.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Writes `files` (path relative to `dir`, content) into `dir`.
pub fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

/// `opslet test DIR --format json` with an empty data folder and no config: each case's error
/// (None when it passed), by name.
pub fn run_tests(tmp: &Path, dir: &Path) -> BTreeMap<String, Option<String>> {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_opslet"))
        .args(["test", dir.to_str().unwrap(), "--format", "json"])
        .current_dir(tmp)
        .env("OPSLET_DATA_DIR", &data)
        .env_remove("OPSLET_CONFIG")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    let report = &summary["applets"][0]["report"];
    let files = report["files"].as_array().unwrap_or_else(|| panic!("no report: {text}"));
    let mut out = BTreeMap::new();
    for f in files {
        assert!(f["error"].is_null(), "{}: {}", f["file"], f["error"]);
        for c in f["cases"].as_array().unwrap() {
            out.insert(c["name"].as_str().unwrap().to_string(), c["error"].as_str().map(str::to_string));
        }
    }
    out
}

/// Every case passed but those in `failing`, whose errors contain the text given.
pub fn check(cases: &BTreeMap<String, Option<String>>, want: usize, failing: &[(&str, &str)]) {
    assert_eq!(cases.len(), want, "{cases:#?}");
    for (name, error) in cases {
        match failing.iter().find(|(n, _)| n == name) {
            Some((_, text)) => {
                let e = error.as_deref().unwrap_or_else(|| panic!("`{name}` passed; it should fail with {text}"));
                assert!(e.contains(text), "`{name}`: {e}");
            }
            None => assert!(error.is_none(), "`{name}`: {}", error.as_deref().unwrap_or("")),
        }
    }
}
