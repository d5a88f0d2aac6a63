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

/// Runs the tests of `package` on `rt`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    modules: crate::runtime::modules::ModuleSet,
    package: Arc<AppletPackage>,
) -> Result<Report, Error> {
    let store = Store::temporary()?;
    for path in FIXTURES {
        let Some(text) = package.files.get(path) else { continue };
        let format = crate::cmdb::inventory::Format::from_path(path).expect("the fixture names have known formats");
        let text = String::from_utf8_lossy(text);
        let inv =
            crate::cmdb::inventory::parse(format, &text, path).map_err(|m| Error::Usage(format!("{}: {m}", package.manifest.name)))?;
        crate::cmdb::Cmdb::new(store.clone())?.import(&inv, "test", false)?;
        break;
    }
    let runtime = Runtime::new(config, Some(store), modules)?;
    Ok(rt.block_on(runtime.test(package)))
}
