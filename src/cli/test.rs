//! `opslet test [APPLET...]`: runs applets' own tests (docs/testing.md), offline: their module
//! calls are answered by the fakes and transcripts the tests declare.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::Global;
use super::output::{Format, terminal_safe};
use super::stdio::{errln, outln};
use crate::applet::AppletPackage;
use crate::error::Error;
use crate::runtime::testing::Report;

/// Exit code when a test fails (or a test file does not load).
pub const EXIT_TESTS_FAILED: i32 = 1;

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Applet folders (default: the current folder when it is an applet, else each applet
    /// folder in it).
    #[arg(value_name = "APPLET")]
    pub applets: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Run the tests again whenever a file of the applet changes (one applet folder).
    #[arg(long)]
    pub watch: bool,
}

/// The applet folders to test: those given, else `.` or its applet subfolders.
fn folders(given: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let here = Path::new(".");
    if here.join(crate::applet::manifest::MANIFEST_FILE).exists() {
        return Ok(vec![here.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(here)
        .map_err(|e| Error::Usage(format!("reading the current folder: {e}")))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(crate::applet::manifest::MANIFEST_FILE).exists())
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(Error::Usage("no applet here: give applet folders (opslet test ./disk-report), or run it in one".into()));
    }
    Ok(out)
}

/// Each folder with its report, or why it did not load.
type Reports = Vec<(PathBuf, Result<Report, Error>)>;

/// Loads and tests each folder; an applet without tests is said, not failed.
pub fn tests(global: &Global, folders: &[PathBuf]) -> Result<Reports, Error> {
    let config = global.config()?;
    let modules = crate::modules::from_config(&config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Internal(e.to_string()))?;
    Ok(folders
        .iter()
        .map(|dir| {
            let report =
                AppletPackage::load_dir(dir).and_then(|p| crate::service::testing::run(&rt, &config, modules.clone(), Arc::new(p)));
            (dir.clone(), report)
        })
        .collect())
}

pub fn run(global: &Global, args: TestArgs) -> Result<i32, Error> {
    let dirs = folders(&args.applets)?;
    if args.watch {
        let [dir] = dirs.as_slice() else {
            return Err(Error::Usage("--watch takes one applet folder".into()));
        };
        let cancel = crate::runtime::CancelToken::default();
        let c = cancel.clone();
        // Ctrl-C ends the watch (the test runs are short and offline).
        let _ = ctrlc_thread(c);
        return super::run::watch(dir, &cancel, |_| once(global, std::slice::from_ref(dir), args.format));
    }
    once(global, &dirs, args.format)
}

/// Ctrl-C stops a watch: a thread waits for SIGINT on a runtime of its own.
fn ctrlc_thread(cancel: crate::runtime::CancelToken) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("ctrl-c".into()).spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            cancel.cancel();
        }
    })
}

fn once(global: &Global, dirs: &[PathBuf], format: Format) -> Result<i32, Error> {
    let results = tests(global, dirs)?;
    let (mut passed, mut failed, mut broken, mut untested) = (0, 0, 0, 0);
    let mut json = Vec::new();
    for (dir, r) in &results {
        match r {
            Ok(report) => {
                passed += report.passed;
                failed += report.failed;
                if report.files.is_empty() {
                    untested += 1;
                }
                if format != Format::Table {
                    json.push(serde_json::json!({ "folder": dir, "report": report }));
                    continue;
                }
                print_report(dir, report);
            }
            Err(e) => {
                broken += 1;
                if format != Format::Table {
                    json.push(serde_json::json!({ "folder": dir, "error": super::output::error_object(e) }));
                    continue;
                }
                errln!("{}: {e}", dir.display());
            }
        }
    }
    if format != Format::Table {
        let summary =
            serde_json::json!({ "applets": json, "passed": passed, "failed": failed, "not_loaded": broken, "without_tests": untested });
        outln!("{}", super::output::render(&summary, format).trim_end());
    } else {
        let without = if untested > 0 { format!(", {untested} without tests") } else { String::new() };
        let unloaded = if broken > 0 { format!(", {broken} did not load") } else { String::new() };
        outln!(
            "{} applet{}: {passed} passed, {failed} failed{without}{unloaded}",
            results.len(),
            if results.len() == 1 { "" } else { "s" }
        );
    }
    Ok(if failed > 0 || broken > 0 { EXIT_TESTS_FAILED } else { 0 })
}

fn print_report(dir: &Path, report: &Report) {
    outln!("{}  ({})", report.applet, dir.display());
    if report.files.is_empty() {
        outln!("  no tests (add tests/*.lua: docs/testing.md)");
    }
    for f in &report.files {
        if let Some(e) = &f.error {
            outln!("  FAIL  {}: {}", f.file, terminal_safe(e, true).replace('\n', "\n        "));
        }
        for c in &f.cases {
            let name = terminal_safe(&c.name, false);
            match &c.error {
                None => outln!("  ok    {} › {name} ({} ms)", f.file, c.duration_ms),
                Some(e) => {
                    outln!("  FAIL  {} › {name}\n        {}", f.file, terminal_safe(e, true).replace('\n', "\n        "));
                    if !c.log.is_empty() {
                        outln!("        log:");
                        for l in &c.log {
                            outln!("          {}", terminal_safe(l, false));
                        }
                    }
                }
            }
        }
    }
}
