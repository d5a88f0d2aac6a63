//! `opslet store`: checking the data store for damage and repairing it.

use super::stdio::{out, outln};
use std::time::Duration;

use clap::Subcommand;

use super::{EXIT_STORE_DAMAGED, Global, output};
use crate::error::Error;
use crate::store::check;

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Read every record of the data store and report damaged ones, the file's structure and
    /// the audit chain (exit code 8 when anything is wrong).
    Check {
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
    },
    /// Copy every sound record into a fresh store file, keep the damaged file beside it, and
    /// record what was lost in the audit log.
    Repair,
}

pub fn run(global: &Global, cmd: StoreCmd) -> Result<i32, Error> {
    let wait = Duration::from_secs(10);
    match cmd {
        StoreCmd::Check { format } => {
            let report = check::check(&global.data_dir, wait)?;
            let code = if report.is_sound() { 0 } else { EXIT_STORE_DAMAGED };
            if format != output::Format::Table {
                let mut v = serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?;
                v["sound"] = serde_json::Value::Bool(report.is_sound());
                out!("{}", output::render(&v, format));
                return Ok(code);
            }
            outln!("store {}: {} records in {} trees", report.file.display(), report.records(), report.trees.len());
            for d in &report.damaged {
                outln!("damaged: `{}` in `{}` (its checksum does not match)", output::terminal_safe(&d.key, false), d.tree);
            }
            if report.unreadable_rowids > 0 {
                outln!(
                    "unreadable: {} rows the file cannot give back; the key index names {}:",
                    report.unreadable_rowids,
                    report.unreadable.len()
                );
                for l in &report.unreadable {
                    outln!("  `{}` in `{}`", output::terminal_safe(&l.key, false), l.tree);
                }
            }
            for s in &report.structure {
                outln!("structure: {}", output::terminal_safe(s, false));
            }
            match &report.audit {
                Ok(a) => match &a.first_bad {
                    None => {
                        outln!("audit log intact: {} records, head {}", a.records, a.head.hash);
                        if !a.lost.is_empty() {
                            outln!("{}", super::audit::lost_line(&a.lost));
                        }
                    }
                    Some((seq, why)) => outln!("audit log BROKEN at record {seq}: {why}"),
                },
                Err(e) => outln!("audit log unreadable: {e}"),
            }
            if report.is_sound() {
                outln!("store sound");
            } else {
                outln!("store DAMAGED: `opslet store repair` keeps every sound record (see docs/store.md)");
            }
            Ok(code)
        }
        StoreCmd::Repair => {
            let r = check::repair(&global.data_dir, wait)?;
            outln!("kept {} records; lost {}", r.kept, r.lost.len());
            for l in &r.lost {
                outln!("  lost `{}` in `{}`", output::terminal_safe(&l.key, false), l.tree);
            }
            outln!("the damaged file is kept as {}", r.damaged_file.display());
            Ok(0)
        }
    }
}
