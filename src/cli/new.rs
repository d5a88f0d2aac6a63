//! `opslet new NAME`: scaffold an applet.

use super::stdio::errln;
use std::path::PathBuf;

use clap::Args;

use crate::error::{Diagnostic, Error};
use crate::util::validate_name;

#[derive(Args, Debug)]
pub struct NewArgs {
    /// Applet name: lowercase letters, digits and `-`.
    pub name: String,
    /// Folder to create (default: ./NAME).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(args: NewArgs) -> Result<i32, Error> {
    validate_name(&args.name).map_err(|m| Error::Applet(vec![Diagnostic::new("name", m)]))?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        return Err(Error::Applet(vec![Diagnostic::new(dir.display().to_string(), "already exists; choose another name or --dir")]));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
    let manifest = format!(
        r#"name = "{name}"
version = "0.1.0"
description = "What this applet does, in one line"
tags = []

[params.target]
type = "string"
description = "Who to greet"
default = "world"

# [permissions]
# ssh = {{ hosts = ["group:web"] }}

# [limits]
# timeout = "30s"
# memory = "64MiB"
"#,
        name = args.name
    );
    let main = r#"-- Called once per run with validated params and a read-only ctx.
return function(params, ctx)
	log.info("hello from", ctx.applet_id, "run", ctx.run_id)
	return { greeting = "hello, " .. params.target, dry_run = ctx.dry_run }
end
"#;
    for (file, text) in [("applet.toml", manifest.as_str()), ("main.lua", main)] {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(|e| Error::Internal(format!("writing {}: {e}", p.display())))?;
    }
    errln!("created {} (try: opslet run {})", dir.display(), dir.display());
    Ok(0)
}
