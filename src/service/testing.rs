//! `opslet test` and the tests `opslet publish` runs: an applet's own tests (see
//! `runtime::testing`), each applet on a throwaway store whose cmdb is the applet's fixture
//! (`tests/hosts.csv`, `.yaml`, `.json` or `.ini` in its folder), with the host modules of
//! opslet.toml (which the tests' fakes answer: nothing leaves the machine).

use std::sync::Arc;

use crate::applet::AppletPackage;
use crate::config::Config;
use crate::error::Error;
use crate::runtime::Runtime;
use crate::runtime::testing::Report;
use crate::store::Store;

/// The fixture files a test cmdb is read from, in the order they are looked for.
pub const FIXTURES: [&str; 4] = ["tests/hosts.csv", "tests/hosts.yaml", "tests/hosts.json", "tests/hosts.ini"];

/// Runs the tests of `package` on `rt`; each case gets a runtime on a store of its own (kv and
/// the cmdb fixture start over), with the limits and host modules of `config` and `modules`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    modules: crate::runtime::modules::ModuleSet,
    package: Arc<AppletPackage>,
) -> Result<Report, Error> {
    run_like(rt, &Runtime::new(config, None, modules)?, package)
}

/// Like [`run`], each case on a runtime like `template` (a server's own).
pub fn run_like(rt: &tokio::runtime::Runtime, template: &Runtime, package: Arc<AppletPackage>) -> Result<Report, Error> {
    // The fixture is read once: a bad one is said before any case runs.
    let mut fixture = None;
    if let Some(path) = FIXTURES.into_iter().find(|p| package.files.contains_key(*p)) {
        let format = crate::cmdb::inventory::Format::from_path(path).expect("the fixture names have known formats");
        let text = String::from_utf8_lossy(&package.files[path]).into_owned();
        let inv =
            crate::cmdb::inventory::parse(format, &text, path).map_err(|m| Error::Usage(format!("{}: {m}", package.manifest.name)))?;
        fixture = Some(inv);
    }
    let items = Arc::new(items(&package)?);
    let (template, fixture) = (template.clone(), Arc::new(fixture));
    let fresh: crate::runtime::testing::Fresh = Arc::new(move || {
        let store = Store::temporary()?;
        if let Some(inv) = fixture.as_ref() {
            crate::cmdb::Cmdb::new(store.clone())?.import(inv, "test", false)?;
        }
        if !items.is_empty() {
            let stored = crate::cmdb::config_items::ConfigItems::open(&store)?;
            for spec in items.iter() {
                stored.set(&store, spec.clone(), "test", "tests/items")?;
            }
        }
        Ok(template.for_tests(store))
    });
    let runtime = fresh()?;
    Ok(rt.block_on(runtime.test(package, fresh)))
}

/// What publishing does with an applet's tests (`[publish] tests`): none to run (None), they
/// passed, or they failed and `policy` lets it be published anyway (the summary, and a
/// warning naming the failures). A failure under `required` is an invalid-applet error naming
/// each failing case.
pub fn gate(
    template: &Runtime,
    policy: crate::config::PublishTests,
    package: &AppletPackage,
) -> Result<(Option<crate::registry::model::TestSummary>, Option<String>), Error> {
    use crate::config::PublishTests;
    if policy == PublishTests::Off || crate::runtime::testing::test_files(package).is_empty() {
        return Ok((None, None));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Internal(e.to_string()))?;
    let report = run_like(&rt, template, Arc::new(package.clone()))?;
    let summary = crate::registry::model::TestSummary { passed: report.passed, failed: report.failed, ran_at: chrono::Utc::now() };
    if report.ok() {
        return Ok((Some(summary), None));
    }
    let mut failures: Vec<String> = Vec::new();
    for f in &report.files {
        failures.extend(f.error.iter().cloned());
        failures.extend(
            f.cases
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} › {}: {}", f.file, c.name, c.error.as_deref().unwrap_or_default().lines().next().unwrap_or_default())),
        );
    }
    let total = report.passed + report.failed;
    if policy == PublishTests::Required {
        let mut diags = vec![crate::error::Diagnostic::new(
            "tests",
            format!(
                "{} of {total} tests failed; nothing was published (`opslet test` shows them; [publish] tests = \"warn\" publishes anyway)",
                report.failed
            ),
        )];
        diags.extend(failures.into_iter().map(|m| crate::error::Diagnostic::new("tests", m)));
        return Err(Error::Applet(diags));
    }
    let warning =
        format!("{} of {total} tests failed; published anyway ([publish] tests = \"warn\"): {}", report.failed, failures.join("; "));
    Ok((Some(summary), Some(warning)))
}

/// The config items a test's `config.*` calls see: `tests/items/*.toml` in the applet folder,
/// each an item file as `opslet config set` takes it (a `template_file` is read beside it).
fn items(package: &AppletPackage) -> Result<Vec<crate::cmdb::config_items::ItemSpec>, Error> {
    let mut out = Vec::new();
    for (path, bytes) in &package.files {
        let Some(rest) = path.strip_prefix("tests/items/") else { continue };
        if rest.contains('/') || !rest.ends_with(".toml") {
            continue;
        }
        let text = String::from_utf8_lossy(bytes).into_owned();
        let mut t: toml::Table = toml::from_str(&text).map_err(|e| Error::Usage(format!("{path}: {}", e.to_string().trim())))?;
        // The package holds the files, so the template comes from it, not the disk.
        if let Some(tf) = t.remove("template_file") {
            let tf = tf.as_str().unwrap_or_default().to_string();
            let beside = format!("tests/items/{tf}");
            let body = package
                .files
                .get(&beside)
                .ok_or_else(|| Error::Usage(format!("{path}: template_file `{tf}`: the applet has no file {beside}")))?;
            t.insert("template".into(), toml::Value::String(String::from_utf8_lossy(body).into_owned()));
        }
        let text = toml::to_string(&t).map_err(|e| Error::Internal(e.to_string()))?;
        out.push(crate::cmdb::config_items::ItemSpec::parse(path, &text, None)?);
    }
    Ok(out)
}
