//! `opslet check PATH`: everything a run would refuse, without running.

use super::output::Format;
use super::stdio::{errln, out, outln};
use std::path::PathBuf;

use clap::Args;

use super::Global;
use crate::applet::AppletPackage;
use crate::error::Error;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The applet folder.
    pub path: PathBuf,
    /// Print the verdict as JSON or YAML: `{"ok": true, "applet", "files", "sha256"}`, or
    /// `{"ok": false, "error": {...}}` with each problem's file, line and message.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

pub fn run(_global: &Global, args: CheckArgs) -> Result<i32, Error> {
    let checked = AppletPackage::load_dir(&args.path).and_then(|pkg| pkg.check_modules(&crate::modules::builtin()).map(|()| pkg));
    let Some(format) = args.format.filter(|f| *f != Format::Table) else {
        let pkg = checked?;
        outln!("ok: {} ({} files, sha256:{})", pkg.id(), pkg.files.len(), &pkg.hash[..16]);
        return Ok(0);
    };
    let (v, code) = match &checked {
        Ok(pkg) => (serde_json::json!({ "ok": true, "applet": pkg.id(), "files": pkg.files.len(), "sha256": pkg.hash }), 0),
        Err(e) => (serde_json::json!({ "ok": false, "error": super::output::error_object(e) }), e.exit_code()),
    };
    out!("{}", super::output::render(&v, format));
    if let Err(e) = &checked {
        errln!("error: {e}");
    }
    Ok(code)
}
