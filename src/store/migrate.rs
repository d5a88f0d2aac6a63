//! Moving a data dir written by an older opslet, whose store was sled (`DATA_DIR/db/`), into the
//! SQLite store. It runs on the first open, copies every tree record by record, compares the copy
//! with the original before it takes its place, and keeps the old files as `db.sled-migrated/`.
//! A migration that dies part way leaves the old store untouched and starts over next time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{self, Engine, Tree};
use crate::error::Error;

/// Where the old sled store lived in a data dir.
pub const SLED_DIR: &str = "db";
/// Where it is kept once migrated.
pub const SLED_KEPT: &str = "db.sled-migrated";

/// What a migration copied: records per tree.
pub(super) type Copied = BTreeMap<String, u64>;

/// Migrates `DATA_DIR/db/` into `target` when there is an old store and no new one yet.
/// An older opslet still running holds the old store: its lock is retried for up to `wait`.
pub(super) fn from_sled_if_needed(data_dir: &Path, target: &Path, wait: Duration) -> Result<Option<Copied>, Error> {
    let old = data_dir.join(SLED_DIR);
    if target.exists() || !old.join("conf").exists() {
        return Ok(None);
    }
    let staging = data_dir.join(format!("{}.migrating", engine::FILE));
    engine::remove_files(&staging)?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Store(format!(
            "migrating the data store {} (written by an older opslet) failed while {what}: {e}; the old store is untouched",
            old.display()
        ))
    };
    let start = Instant::now();
    let db = loop {
        match sled::Config::new().path(&old).open() {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => return Err(fail("opening it", &e)),
        }
    };
    let engine = Arc::new(Engine::open(&staging, None)?);
    let mut copied = Copied::new();
    for name in db.tree_names() {
        let name = String::from_utf8(name.to_vec()).map_err(|_| fail("reading its tree names", &"a tree name is not UTF-8"))?;
        let from = db.open_tree(&name).map_err(|e| fail("opening a tree", &e))?;
        if from.is_empty() {
            continue;
        }
        let to = Tree::new(engine.clone(), &name);
        let n = engine.transaction(|tx| {
            let mut n = 0u64;
            for item in from.iter() {
                let (k, v) = item.map_err(|e| fail(&format!("reading tree `{name}`"), &e))?;
                tx.insert(&to, &k, &v)?;
                n += 1;
            }
            Ok(n)
        })?;
        // The copy must equal the original, record for record, before it replaces it.
        let mut theirs = from.iter();
        for ours in to.iter() {
            let (k, v) = ours?;
            match theirs.next() {
                Some(Ok((tk, tv))) if tk.as_ref() == k.as_slice() && tv.as_ref() == v.as_slice() => {}
                _ => return Err(fail(&format!("checking tree `{name}`"), &format!("record `{}` differs", engine::show_key(&k)))),
            }
        }
        if theirs.next().is_some() {
            return Err(fail(&format!("checking tree `{name}`"), &"the copy has fewer records"));
        }
        copied.insert(name, n);
    }
    Arc::into_inner(engine).ok_or_else(|| fail("closing the new store", &"it is still in use"))?.close_as_one_file()?;
    drop(db);
    std::fs::rename(&staging, target).map_err(|e| fail("putting the new store in place", &e))?;
    std::fs::rename(&old, data_dir.join(SLED_KEPT)).map_err(|e| fail("moving the old store aside", &e))?;
    engine::sync_dir(data_dir);
    let total: u64 = copied.values().sum();
    tracing::warn!(
        records = total,
        trees = copied.len(),
        kept = %data_dir.join(SLED_KEPT).display(),
        "migrated the data store from sled to SQLite; the old files are kept beside it and can be removed"
    );
    Ok(Some(copied))
}
