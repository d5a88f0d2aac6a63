//! Finding damaged records (`opslet store check`) and removing them (`opslet store repair`).
//!
//! Both read the table row by row in storage order (by rowid), a range at a time, and split a
//! range that the file cannot give back until only the unreadable rows are left, so a damaged
//! page costs the records on it and no more. A row whose checksum does not match is damaged too.
//! `repair` copies every sound row into a fresh file, keeps the old one as
//! `store.sqlite.damaged-TIME`, and appends a `store.repair` audit record naming what was lost
//! (tree and key, read from the file's key index where the table itself is unreadable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::audit::{AuditLog, VerifyReport};
use super::engine::{self, Engine, Tree};
use super::{Store, keys};
use crate::error::Error;

/// Rows read per query while walking the table.
const RANGE: i64 = 512;
/// Lost records named one by one in the `store.repair` audit record (the rest are counted).
const NAMED_LOSSES: usize = 1000;

/// A record that is gone or damaged.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lost {
    pub tree: String,
    pub key: String,
    /// The record number, for a record of the audit log.
    #[serde(skip)]
    pub audit_seq: Option<u64>,
}

impl Lost {
    fn new(tree: String, key: &[u8]) -> Lost {
        let audit_seq = if tree == keys::AUDIT { super::audit::record_seq(key) } else { None };
        Lost { key: engine::show_key(key), tree, audit_seq }
    }
}

/// What `check` found.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: PathBuf,
    /// Sound records per tree.
    pub trees: BTreeMap<String, u64>,
    /// Records present but damaged (checksum mismatch).
    pub damaged: Vec<Lost>,
    /// Rows the file cannot give back at all, and what the key index says they were.
    pub unreadable_rowids: u64,
    pub unreadable: Vec<Lost>,
    /// Findings of SQLite's own structure check (empty when it says ok).
    pub structure: Vec<String>,
    /// The audit chain, or why it could not be read.
    pub audit: Result<VerifyReport, String>,
}

impl Report {
    pub fn records(&self) -> u64 {
        self.trees.values().sum()
    }

    /// No damaged or unreadable record, a sound file structure, an intact audit chain.
    pub fn is_sound(&self) -> bool {
        self.damaged.is_empty()
            && self.unreadable_rowids == 0
            && self.structure.is_empty()
            && self.audit.as_ref().is_ok_and(|a| a.first_bad.is_none())
    }
}

/// What `repair` did.
#[derive(Debug, Serialize)]
pub struct Repaired {
    pub kept: u64,
    pub lost: Vec<Lost>,
    pub unreadable_rowids: u64,
    /// The damaged file, kept beside the new one.
    pub damaged_file: PathBuf,
}

/// One row as stored.
struct Row {
    tree: String,
    key: Vec<u8>,
    value: Vec<u8>,
    sum: i64,
}

impl Row {
    fn sound(&self) -> bool {
        engine::sum(&self.tree, &self.key, &self.value) == self.sum
    }

    fn lost(&self) -> Lost {
        Lost::new(self.tree.clone(), &self.key)
    }
}

fn store_file(data_dir: &Path) -> Result<PathBuf, Error> {
    let file = data_dir.join(engine::FILE);
    if !file.exists() {
        return Err(Error::NotFound(format!("no data store in {} (nothing to check)", data_dir.display())));
    }
    Ok(file)
}

/// Reads every record of the store in `data_dir`, and its structure and audit chain.
pub fn check(data_dir: &Path, wait: Duration) -> Result<Report, Error> {
    let lock = super::lock_data_dir(data_dir, wait)?;
    let file = store_file(data_dir)?;
    let engine = Arc::new(Engine::open(&file, Some(lock))?);
    let structure = engine.read(structure)?;
    let mut trees = BTreeMap::new();
    let mut damaged = Vec::new();
    let unreadable = engine.read(|c| {
        walk(c, &mut |row| {
            if row.sound() {
                *trees.entry(row.tree).or_insert(0) += 1;
            } else {
                damaged.push(row.lost());
            }
        })
    })?;
    let named = engine.read(|c| Ok(name_rows(c, &unreadable)))?;
    let audit = AuditLog::open(Tree::new(engine.clone(), keys::AUDIT)).and_then(|a| a.verify()).map_err(|e| e.to_string());
    Ok(Report { file, trees, damaged, unreadable_rowids: count(&unreadable), unreadable: named, structure, audit })
}

/// Copies every sound record of the store in `data_dir` into a fresh file that takes its place.
pub fn repair(data_dir: &Path, wait: Duration) -> Result<Repaired, Error> {
    let lock = super::lock_data_dir(data_dir, wait)?;
    let file = store_file(data_dir)?;
    let fresh_path = data_dir.join(format!("{}.repairing", engine::FILE));
    engine::remove_files(&fresh_path)?;
    let source = Engine::open(&file, None)?;
    let fresh = Engine::open(&fresh_path, None)?;
    let mut kept = 0u64;
    let mut lost = Vec::new();
    let mut failed: Option<Error> = None;
    let unreadable = fresh.transaction(|tx| {
        let unreadable = source.read(|c| {
            walk(c, &mut |row| {
                if failed.is_some() {
                    return;
                }
                if !row.sound() {
                    lost.push(row.lost());
                    return;
                }
                match tx.insert_raw(&row.tree, &row.key, &row.value) {
                    Ok(()) => kept += 1,
                    Err(e) => failed = Some(e),
                }
            })
        })?;
        failed.take().map_or(Ok(unreadable), Err)
    })?;
    lost.extend(source.read(|c| Ok(name_rows(c, &unreadable)))?);
    lost.sort();
    fresh.close_as_one_file()?;
    drop(source);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let damaged_file = data_dir.join(format!("{}.damaged-{stamp}", engine::FILE));
    for suffix in ["-wal", "-shm"] {
        let from = format!("{}{suffix}", file.display());
        if Path::new(&from).exists() {
            std::fs::rename(&from, format!("{}{suffix}", damaged_file.display()))
                .map_err(|e| Error::Store(format!("moving {from} aside: {e}")))?;
        }
    }
    std::fs::rename(&file, &damaged_file).map_err(|e| Error::Store(format!("moving {} aside: {e}", file.display())))?;
    std::fs::rename(&fresh_path, &file).map_err(|e| Error::Store(format!("putting the repaired store in place: {e}")))?;
    engine::sync_dir(data_dir);
    drop(lock);
    let out = Repaired { kept, lost, unreadable_rowids: count(&unreadable), damaged_file };
    let store = Store::open(data_dir, wait)?;
    let audit_seqs: Vec<u64> = out.lost.iter().filter_map(|l| l.audit_seq).collect();
    let data = serde_json::json!({
        "kept": out.kept,
        "lost": out.lost.len(),
        "unreadable_rowids": out.unreadable_rowids,
        "lost_records": out.lost.iter().take(NAMED_LOSSES).collect::<Vec<_>>(),
        "lost_audit_records": audit_seqs,
        "damaged_file": out.damaged_file.file_name().map(|f| f.to_string_lossy().into_owned()),
    });
    store.audit().record_change("store.repair", super::SYSTEM_ACTOR, "store", None, data)?;
    store.flush()?;
    Ok(out)
}

fn structure(c: &Connection) -> Result<Vec<String>, Error> {
    let found: Result<Vec<String>, rusqlite::Error> = (|| {
        let mut st = c.prepare("PRAGMA integrity_check(100)")?;
        st.query_map([], |r| r.get::<_, String>(0))?.collect()
    })();
    Ok(match found {
        Ok(lines) if lines == ["ok"] => Vec::new(),
        Ok(lines) => lines,
        Err(e) => vec![e.to_string()],
    })
}

/// Calls `each` for every row it can read, in rowid order; returns the rowid ranges it could not.
fn walk(c: &Connection, each: &mut dyn FnMut(Row)) -> Result<Vec<(i64, i64)>, Error> {
    let Some(last) = last_rowid(c) else {
        return Ok(Vec::new());
    };
    let mut unreadable = Vec::new();
    // rowids start at 1 (opslet never assigns one itself).
    let mut lo = 1;
    while lo <= last {
        let hi = lo.saturating_add(RANGE - 1).min(last);
        read_range(c, lo, hi, each, &mut unreadable);
        lo = hi + 1;
    }
    Ok(unreadable)
}

/// The largest rowid, from the table or, when its right edge is damaged, from the key index.
fn last_rowid(c: &Connection) -> Option<i64> {
    let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)).optional().ok().flatten().flatten();
    let table = q("SELECT max(rowid) FROM kv");
    let index = q("SELECT max(rowid) FROM kv INDEXED BY sqlite_autoindex_kv_1");
    table.max(index)
}

fn read_range(c: &Connection, lo: i64, hi: i64, each: &mut dyn FnMut(Row), unreadable: &mut Vec<(i64, i64)>) {
    let rows: Result<Vec<Row>, rusqlite::Error> = (|| {
        // One row is read by an exact match: a range read steps on to the next page after its
        // last row, so the row before a damaged page would be taken for damaged too.
        let sql = if lo == hi {
            "SELECT tree, key, value, sum FROM kv WHERE rowid = ?1 AND ?2 = ?2"
        } else {
            "SELECT tree, key, value, sum FROM kv WHERE rowid BETWEEN ?1 AND ?2 ORDER BY rowid"
        };
        let mut st = c.prepare_cached(sql)?;
        st.query_map([lo, hi], |r| Ok(Row { tree: r.get(0)?, key: r.get(1)?, value: r.get(2)?, sum: r.get(3)? }))?.collect()
    })();
    match rows {
        Ok(rows) => rows.into_iter().for_each(each),
        Err(_) if lo == hi => match unreadable.last_mut() {
            Some((_, end)) if *end + 1 == lo => *end = hi,
            _ => unreadable.push((lo, hi)),
        },
        Err(_) => {
            let mid = lo + (hi - lo) / 2;
            read_range(c, lo, mid, each, unreadable);
            read_range(c, mid + 1, hi, each, unreadable);
        }
    }
}

/// Rows in `ranges` that the key index still names. A rowid the index does not hold was never
/// a record (rowids are not contiguous), so only named rows count as lost.
fn name_rows(c: &Connection, ranges: &[(i64, i64)]) -> Vec<Lost> {
    if ranges.is_empty() {
        return Vec::new();
    }
    let inside = |id: i64| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&id));
    let mut out = Vec::new();
    let _ = (|| -> Result<(), rusqlite::Error> {
        let mut st = c.prepare("SELECT rowid, tree, key FROM kv INDEXED BY sqlite_autoindex_kv_1")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if inside(id) {
                out.push(Lost::new(r.get(1)?, &r.get::<_, Vec<u8>>(2)?));
            }
        }
        Ok(())
    })();
    out
}

fn count(ranges: &[(i64, i64)]) -> u64 {
    ranges.iter().map(|(lo, hi)| (hi - lo + 1) as u64).sum()
}
