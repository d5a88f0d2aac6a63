//! `opslet check PATH`: everything a run would refuse, without running.

use super::stdio::outln;
use std::path::PathBuf;

use clap::Args;

use super::Global;
use crate::applet::AppletPackage;
use crate::error::Error;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The applet folder.
    pub path: PathBuf,
}

pub fn run(_global: &Global, args: CheckArgs) -> Result<i32, Error> {
    let pkg = AppletPackage::load_dir(&args.path)?;
    pkg.check_modules(&crate::modules::builtin())?;
    outln!("ok: {} ({} files, sha256:{})", pkg.id(), pkg.files.len(), &pkg.hash[..16]);
    Ok(0)
}
