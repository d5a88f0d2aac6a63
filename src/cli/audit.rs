//! `opslet audit list|show|verify|head`.

use super::stdio::{out, outln};
use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::output::Format;
use super::{EXIT_AUDIT_BROKEN, Global};
use crate::error::Error;
use crate::store::audit::{AuditRecord, Filter};

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List audit records, oldest first.
    List(ListArgs),
    /// Show one record by sequence number, or every record of a run by run id (or its prefix).
    Show {
        /// A record number (digits only), or a run id or a prefix of it (at least 8 characters).
        id: String,
    },
    /// Walk the hash chain and check it against the last anchor; exit 7 and name the first bad
    /// record (or the anchor it no longer matches) if anything was changed.
    Verify {
        /// Print as a table, JSON or YAML instead of plain lines.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// The anchor file to check against (default: `[audit] anchor_file` of the config).
        #[arg(long, value_name = "FILE")]
        anchor: Option<std::path::PathBuf>,
    },
    /// Print the chain head (record count and last hash) to anchor it elsewhere.
    Head,
    /// Sign the chain head and append it to the anchor file (for cron, where no server runs).
    Anchor {
        /// The anchor file (default: `[audit] anchor_file` of the config).
        #[arg(long, value_name = "FILE")]
        to: Option<std::path::PathBuf>,
    },
}

/// The anchor file: the flag, else `[audit] anchor_file` (a config that does not load counts as
/// none, so a broken file does not stop the audit commands).
fn anchor_file(global: &Global, flag: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    flag.or_else(|| global.config().ok().and_then(|c| c.audit.anchor_file))
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this applet (NAME or NAME@VERSION).
    #[arg(long)]
    pub applet: Option<String>,
    /// Only records made by this caller.
    #[arg(long)]
    pub caller: Option<String>,
    /// Only this status (ok, error, limit_exceeded, interrupted, ...).
    #[arg(long)]
    pub status: Option<String>,
    /// Only this kind (run.start, run.end, action).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this run (id or prefix).
    #[arg(long)]
    pub run: Option<String>,
    /// From this time: RFC 3339 (2026-11-24T10:00:00Z) or an age like 2h.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time: RFC 3339 or an age like 30m.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub fn run(global: &Global, cmd: AuditCmd) -> Result<i32, Error> {
    let store = global.open_store()?;
    let audit = store.audit();
    match cmd {
        AuditCmd::List(a) => {
            let filter = Filter {
                applet: a.applet,
                actor: a.caller,
                status: a.status,
                kind: a.kind,
                run_id: a.run,
                since: a.since.as_deref().map(|s| parse_time("--since", s)).transpose()?,
                until: a.until.as_deref().map(|s| parse_time("--until", s)).transpose()?,
                limit: Some(a.limit),
            };
            let records = audit.list(&filter)?;
            print_records(&records, a.format);
            Ok(0)
        }
        AuditCmd::Show { id } => {
            // All digits: a record number. Anything else: a run-id prefix of 8 or more characters
            // (run ids are UUIDs, which always contain `-` and usually letters).
            let records = match id.parse::<u64>() {
                Ok(seq) => audit.get(seq)?.into_iter().collect::<Vec<_>>(),
                Err(_) if id.len() < 8 => {
                    return Err(Error::Usage(format!("`{id}`: give a record number, or a run id (at least its first 8 characters)")));
                }
                Err(_) => audit.list(&Filter { run_id: Some(id.clone()), ..Filter::default() })?,
            };
            if records.is_empty() {
                return Err(Error::NotFound(format!("no audit record or run `{id}`")));
            }
            outln!("{}", serde_json::to_string_pretty(&records).unwrap_or_default());
            Ok(0)
        }
        AuditCmd::Verify { format, anchor } => {
            let report = audit.verify()?;
            let file = anchor_file(global, anchor);
            let (last, checked) = match &file {
                Some(f) => match crate::store::anchor::check_file(audit, &global.data_dir, f)? {
                    Some((a, c)) => (Some(a), Some(c)),
                    None => (None, None),
                },
                None => (None, None),
            };
            let anchor_ok = checked.as_ref().is_none_or(|c| c.is_ok());
            let intact = report.first_bad.is_none() && anchor_ok;
            if let Some(f) = format {
                let v = serde_json::json!({
                    "intact": intact,
                    "records": report.records,
                    "head": report.head.hash,
                    "first_bad": report.first_bad.as_ref().map(|(seq, why)| serde_json::json!({ "seq": seq, "why": why })),
                    "lost": report.lost,
                    "anchor": match (&last, &checked) {
                        (Some(a), Some(c)) => serde_json::json!({
                            "file": file, "time": a.time, "count": a.count, "hash": a.hash,
                            "age_seconds": (chrono::Utc::now() - a.time).num_seconds(),
                            "matches": c.is_ok(), "why": (!c.is_ok()).then(|| c.describe(a)),
                        }),
                        _ => serde_json::json!({ "file": file }),
                    },
                });
                out!("{}", super::output::render(&v, f));
                return Ok(if intact { 0 } else { EXIT_AUDIT_BROKEN });
            }
            match report.first_bad {
                None => {
                    outln!("audit log intact: {} records, head {}", report.records, report.head.hash);
                    if !report.lost.is_empty() {
                        outln!("{}", lost_line(&report.lost));
                    }
                }
                Some((seq, why)) => outln!("audit log BROKEN at record {seq}: {why}"),
            }
            match (&file, &last, &checked) {
                (None, _, _) => {
                    outln!("no anchor file set ([audit] anchor_file, or --anchor FILE): a cut at the end of the log cannot be seen")
                }
                (Some(f), None, _) => outln!("no anchor in {} yet", f.display()),
                (Some(_), Some(a), Some(c)) => {
                    let age = humantime::format_duration(std::time::Duration::from_secs(
                        (chrono::Utc::now() - a.time).num_seconds().max(0) as u64,
                    ));
                    if c.is_ok() {
                        outln!("{}, {age} ago", c.describe(a));
                    } else {
                        outln!("audit log BROKEN: {}", c.describe(a));
                    }
                }
                _ => {}
            }
            Ok(if intact { 0 } else { EXIT_AUDIT_BROKEN })
        }
        AuditCmd::Anchor { to } => {
            let Some(file) = anchor_file(global, to) else {
                return Err(Error::Usage("no anchor file: set `[audit] anchor_file` in opslet.toml, or pass --to FILE".into()));
            };
            let a = crate::store::anchor::write(audit, &global.data_dir, &file)?;
            super::stdio::errln!("anchored {} records (head {}) in {}", a.count, a.hash, file.display());
            Ok(0)
        }
        AuditCmd::Head => {
            let head = audit.head()?;
            outln!("{} {}", head.count, head.hash);
            Ok(0)
        }
    }
}

/// The records a store repair removed, as one line (`audit verify`, `store check`).
pub(super) fn lost_line(lost: &[u64]) -> String {
    let shown: Vec<String> = lost.iter().take(20).map(u64::to_string).collect();
    let more = if lost.len() > 20 { format!(" and {} more", lost.len() - 20) } else { String::new() };
    format!("{} records lost in a store repair (see its `store.repair` record): {}{more}", lost.len(), shown.join(", "))
}

fn parse_time(flag: &str, s: &str) -> Result<chrono::DateTime<chrono::Utc>, Error> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default()),
        Err(_) => Err(Error::Usage(format!("{flag}: `{s}` is neither an RFC 3339 time nor an age like 2h"))),
    }
}

fn print_records(records: &[AuditRecord], format: Format) {
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(records).unwrap_or_default()),
        Format::Yaml => out!("{}", serde_yaml_ng::to_string(records).unwrap_or_default()),
        Format::Table => {
            let mut t = Table::new();
            t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
            t.set_header(vec!["seq", "time", "kind", "applet", "caller", "via", "status", "run"]);
            for r in records {
                t.add_row(vec![
                    r.seq.to_string(),
                    r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                    r.kind.clone(),
                    r.applet.clone().unwrap_or_default(),
                    r.actor.clone().unwrap_or_default(),
                    r.via.clone().unwrap_or_default(),
                    r.status.clone().unwrap_or_default(),
                    r.run_id.clone().unwrap_or_default(),
                ]);
            }
            outln!("{t}");
        }
    }
}
