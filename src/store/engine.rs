//! The storage engine under [`super::Store`]: ordered key-value trees in one SQLite file.
//!
//! Every tree is a set of rows `(tree, key, value, sum)` of one table `kv`, ordered by
//! `(tree, key)` (blob order: bytewise, shorter first, the same order as sled's). `sum` is a
//! CRC-32 of the tree name, key and value: a read that finds a row whose sum does not match
//! reports that one record as damaged, and everything else stays readable (`store check` finds
//! them all, `store repair` copies what is sound into a fresh file).
//!
//! Durability follows the model opslet had with sled: every write is committed at once (visible to
//! every reader, and crash-consistent) but reaches the disk when [`Engine::sync`] runs, which
//! `Store::flush` does before a run starts and after every change an operator makes. The WAL is
//! written with `synchronous=NORMAL`, so a sync is one `fdatasync` of the WAL file, shared by
//! every caller waiting for one (group commit).
//!
//! One process holds a data dir at a time (a `flock` on `DATA_DIR/store.lock`); inside it,
//! writes go through one connection behind a mutex and reads through a small pool of read-only
//! connections, which WAL lets run beside the writer.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::Error;

/// The store file in the data dir (beside it SQLite keeps `-wal` and `-shm` while open).
pub const FILE: &str = "store.sqlite";
/// The lock file that keeps a second process out of the data dir.
pub const LOCK_FILE: &str = "store.lock";

/// Page cache of the writer connection, in KiB (SQLite's negative `cache_size`).
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of each read connection, in KiB.
const READER_CACHE_KIB: i64 = 4 * 1024;
/// Idle read connections kept open; more are opened under load and closed after.
const IDLE_READERS: usize = 8;
/// Commits between two background checkpoints (a few hundred WAL pages).
const CHECKPOINT_EVERY: u64 = 128;
/// The WAL's bound: past it the writer folds the log into the file and truncates it itself.
const WAL_LIMIT: u64 = 8 << 20;
/// Rows a scan reads per query: small first (most scans stop early), larger as it goes on.
const FIRST_CHUNK: usize = 32;
const MAX_CHUNK: usize = 1024;

/// A WAL longer than this is folded into the file when the store closes.
const CLOSE_CHECKPOINT: u64 = 256 * 1024;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS kv (
    tree  TEXT    NOT NULL,
    key   BLOB    NOT NULL,
    value BLOB    NOT NULL,
    sum   INTEGER NOT NULL,
    PRIMARY KEY (tree, key)
)";

pub(crate) struct Engine {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Commits so far, and how many of them the last finished sync covered: a sync with
    /// nothing new to cover costs nothing.
    commits: std::sync::atomic::AtomicU64,
    synced_commits: std::sync::atomic::AtomicU64,
    /// The background thread that folds the WAL into the file, started on the first need.
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Held while a checkpoint runs: SQLite refuses a second one at once (SQLITE_BUSY, without
    /// waiting), so the writer's truncating checkpoint waits here for the background one.
    checkpointing: Arc<Mutex<()>>,
    /// Held for the engine's life: the data dir's process lock.
    _lock: Option<std::fs::File>,
}

/// Group commit: callers of `sync` take a ticket; one of them syncs for everyone whose writes
/// came before the sync started.
#[derive(Default)]
struct SyncState {
    requested: u64,
    done: u64,
    syncing: bool,
}

/// The checksum stored beside every value.
pub(crate) fn sum(tree: &str, key: &[u8], value: &[u8]) -> i64 {
    let mut h = crc32fast::Hasher::new();
    h.update(tree.as_bytes());
    h.update(&[0]);
    h.update(key);
    h.update(value);
    i64::from(h.finalize())
}

/// A key as people read it in an error: text when it is text, else hex.
pub(crate) fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        // `\0` separates the parts of a composite key (`device \0 version`).
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\0') && !s.starts_with('\0') && !s.ends_with('\0') && !s.contains("\0\0") => {
            s.replace('\0', "/")
        }
        _ => format!("0x{}", hex::encode(key)),
    }
}

pub(crate) fn damaged(tree: &str, key: &[u8]) -> Error {
    Error::Store(format!(
        "record `{}` in `{tree}` is damaged (its checksum does not match); `opslet store check` lists every damaged record and `opslet store repair` removes them",
        show_key(key)
    ))
}

fn checked(tree: &str, key: &[u8], value: Vec<u8>, stored: i64) -> Result<Vec<u8>, Error> {
    if sum(tree, key, &value) == stored { Ok(value) } else { Err(damaged(tree, key)) }
}

/// Removes a store file left by an unfinished migration or repair, with its `-wal` and `-shm`.
pub(super) fn remove_files(path: &Path) -> Result<(), Error> {
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::Store(format!("removing {p}: {e}")));
        }
    }
    Ok(())
}

/// Makes renames in `dir` durable (best effort: not every file system syncs a folder).
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Opens a connection to `path` with opslet's settings.
pub(crate) fn connect(path: &Path, read_only: bool) -> Result<Connection, Error> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::Store(format!("opening data store {}: {e}", path.display())))?;
    conn.set_prepared_statement_cache_capacity(64);
    let cache = if read_only { READER_CACHE_KIB } else { WRITER_CACHE_KIB };
    let setup = if read_only {
        format!("PRAGMA cache_size = -{cache}; PRAGMA query_only = 1; PRAGMA busy_timeout = 5000;")
    } else {
        format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{cache}; PRAGMA secure_delete = ON; \
             PRAGMA journal_size_limit = 67108864; PRAGMA busy_timeout = 5000; {SCHEMA};"
        )
    };
    conn.execute_batch(&setup).map_err(|e| Error::Store(format!("opening data store {}: {e}", path.display())))?;
    // Closing leaves the WAL as it is (see `Drop for Engine`).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| Error::Store(format!("opening data store {}: {e}", path.display())))?;
    Ok(conn)
}

impl Engine {
    /// Opens (creating if needed) the store file at `path`, holding `lock` (the data dir's
    /// process lock) for as long as the engine lives.
    pub(crate) fn open(path: &Path, lock: Option<std::fs::File>) -> Result<Engine, Error> {
        // The file is for this user only, whatever the umask or the data dir's mode; SQLite gives
        // its `-wal` and `-shm` files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::Store(format!("opening data store {}: {e}", path.display())))?;
        }
        let writer = connect(path, false)?;
        Ok(Engine {
            path: path.to_path_buf(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            sync: Mutex::default(),
            synced: Condvar::new(),
            commits: Default::default(),
            synced_commits: Default::default(),
            checkpointer: Mutex::new(None),
            checkpointing: Arc::default(),
            _lock: lock,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read connection from the pool.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let idle = self.readers.lock().pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                // No read connection yet (a CLI command reads one record at a time): the writer
                // serves the read when it is free, so most commands open one connection.
                if let Some(w) = self.writer.try_lock() {
                    return f(&w);
                }
                connect(&self.path, true)?
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock();
        if pool.len() < IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Runs `f` on the writer connection.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let out = f(&self.writer.lock());
        self.committed();
        out
    }

    /// Counts a commit, and every so many asks the checkpointer to fold the WAL into the file.
    /// A checkpoint writes every page again; done by the writer (SQLite's automatic checkpoint
    /// at 1,000 pages) it lands on whichever request happened to commit. The background one
    /// copies most pages beforehand, so the writer's own finds little left, and then restarts
    /// the WAL from its beginning (which only a writer can, and only once everything is copied).
    fn committed(&self) {
        let n = self.commits.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        if n.is_multiple_of(CHECKPOINT_EVERY) {
            let mut cp = self.checkpointer.lock();
            match cp.as_ref() {
                Some(c) => {
                    let _ = c.wake.try_send(());
                }
                None => match Checkpointer::start(&self.path, self.checkpointing.clone()) {
                    Ok(c) => *cp = Some(c),
                    Err(e) => tracing::warn!(error = %e, "starting the store's checkpoint thread"),
                },
            }
            drop(cp);
            // Under writes that never pause, no passive checkpoint ever finishes, and only a
            // finished one lets the WAL start over: past the bound the writer waits for one.
            if self.wal_longer_than(WAL_LIMIT)
                && let Err(e) = self.truncate_wal()
            {
                tracing::warn!(error = %e, "checkpointing the data store");
            }
        }
    }

    /// Closes the store as one file: the WAL folded into it and removed, for code that moves
    /// the file (a migration, a repair). Every other close leaves a short WAL beside it.
    pub(crate) fn close_as_one_file(self) -> Result<(), Error> {
        let fail = |e: rusqlite::Error| Error::Store(format!("closing data store {}: {e}", self.path.display()));
        self.readers.lock().clear();
        self.stop_checkpointer();
        self.truncate_wal().map_err(fail)?;
        // The last connection to close now removes the (empty) WAL and its index.
        self.writer.lock().set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false).map_err(fail)?;
        drop(self);
        Ok(())
    }

    /// Folds the whole WAL into the file and empties it, after any background checkpoint
    /// (SQLite refuses a second one at once rather than wait for it).
    fn truncate_wal(&self) -> rusqlite::Result<()> {
        let _one = self.checkpointing.lock();
        self.writer.lock().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
    }

    fn wal_longer_than(&self, bytes: u64) -> bool {
        std::fs::metadata(self.wal_path()).is_ok_and(|m| m.len() > bytes)
    }

    /// Ends the background checkpointer, if it runs, and waits for it.
    fn stop_checkpointer(&self) {
        if let Some(c) = self.checkpointer.lock().take() {
            drop(c.wake);
            let _ = c.thread.join();
        }
    }

    fn wal_path(&self) -> PathBuf {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        wal.into()
    }

    /// Makes every write committed so far durable. Concurrent callers share one `fdatasync`.
    pub(crate) fn sync(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if self.synced_commits.load(Ordering::Acquire) >= self.commits.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.sync.lock();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.done >= ticket {
                return Ok(());
            }
            if !st.syncing {
                st.syncing = true;
                let target = st.requested;
                drop(st);
                // Every commit counted now is in the WAL before the fdatasync starts.
                let covered = self.commits.load(Ordering::Acquire);
                let result = self.sync_wal();
                if result.is_ok() {
                    self.synced_commits.fetch_max(covered, Ordering::AcqRel);
                }
                st = self.sync.lock();
                st.syncing = false;
                if result.is_ok() {
                    st.done = st.done.max(target);
                }
                self.synced.notify_all();
                result?;
                continue;
            }
            self.synced.wait(&mut st);
        }
    }

    fn sync_wal(&self) -> Result<(), Error> {
        match std::fs::File::open(self.wal_path()) {
            Ok(f) => f.sync_data().map_err(|e| Error::Store(format!("syncing data store {}: {e}", self.path.display()))),
            // No WAL yet: nothing was written since the last checkpoint, which synced the file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Store(format!("syncing data store {}: {e}", self.path.display()))),
        }
    }

    /// Names of every tree that holds at least one record.
    pub(crate) fn tree_names(&self) -> Result<Vec<String>, Error> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT DISTINCT tree FROM kv ORDER BY tree")?;
            let names = st.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            Ok(names)
        })
    }
}

// Closing syncs what is not yet on disk and leaves a short WAL in place: folding it into the
// file and removing it on every close (SQLite's default) costs two more syncs, a directory sync
// when the next process creates the log again, and the rewrite of every page the process
// changed, which for a CLI command that writes a few records is most of its I/O. The next open
// reads the log back instead (under 0.3 ms for `CLOSE_CHECKPOINT` bytes).
impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_checkpointer();
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "syncing the data store on close");
        }
        // A long log would make every later open read it back: past a few dozen pages it is
        // folded in now, which a CLI command that writes a little pays once every few runs.
        if self.wal_longer_than(CLOSE_CHECKPOINT)
            && let Err(e) = self.truncate_wal()
        {
            tracing::warn!(error = %e, "checkpointing the data store on close");
        }
    }
}

/// A thread with its own connection that runs a passive checkpoint when woken (it never waits
/// for readers or blocks writers); it ends when its channel closes.
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &Path, checkpointing: Arc<Mutex<()>>) -> Result<Checkpointer, Error> {
        let conn = connect(path, false)?;
        let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("opslet-checkpoint".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let _one = checkpointing.lock();
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(error = %e, "checkpointing the data store");
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("starting the store's checkpoint thread: {e}")))?;
        let _ = wake.try_send(());
        Ok(Checkpointer { wake, thread })
    }
}

/// One ordered key-value tree; cheap to clone.
#[derive(Clone)]
pub struct Tree {
    engine: Arc<Engine>,
    name: Arc<str>,
}

/// A key and its value, as a scan yields them.
pub type Entry = (Vec<u8>, Vec<u8>);

impl Tree {
    pub(crate) fn new(engine: Arc<Engine>, name: &str) -> Tree {
        Tree { engine, name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        let key = key.as_ref();
        self.engine.read(|c| get(c, &self.name, key))
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        let key = key.as_ref();
        self.engine.read(|c| {
            let mut st = c.prepare_cached("SELECT 1 FROM kv WHERE tree = ?1 AND key = ?2")?;
            Ok(st.exists(params![&*self.name, key])?)
        })
    }

    /// Sets `key` to `value`; returns the value it had.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.engine.write(|c| {
            let old = get(c, &self.name, key)?;
            put(c, &self.name, key, value)?;
            Ok(old)
        })
    }

    /// Sets `key` to `value` without reading what was there (one write, for hot paths).
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.engine.write(|c| put(c, &self.name, key, value))
    }

    /// Removes `key`; returns the value it had.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        let key = key.as_ref();
        self.engine.write(|c| {
            let old = get(c, &self.name, key)?;
            if old.is_some() {
                del(c, &self.name, key)?;
            }
            Ok(old)
        })
    }

    /// Sets `key` to `new` (removes it for `None`) only if its value is `old` (absent for `None`);
    /// returns whether it did.
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<impl AsRef<[u8]>>,
        new: Option<impl AsRef<[u8]>>,
    ) -> Result<bool, Error> {
        let key = key.as_ref();
        self.engine.write(|c| {
            let current = get(c, &self.name, key)?;
            if current.as_deref() != old.as_ref().map(AsRef::as_ref) {
                return Ok(false);
            }
            match new {
                Some(v) => put(c, &self.name, key, v.as_ref())?,
                None => del(c, &self.name, key)?,
            }
            Ok(true)
        })
    }

    /// Number of records (counts them).
    pub fn len(&self) -> Result<usize, Error> {
        self.engine.read(|c| {
            let mut st = c.prepare_cached("SELECT count(*) FROM kv WHERE tree = ?1")?;
            Ok(st.query_row([&*self.name], |r| r.get::<_, i64>(0))? as usize)
        })
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.iter().next().transpose()?.is_none())
    }

    /// Removes every record.
    pub fn clear(&self) -> Result<(), Error> {
        self.engine.write(|c| {
            c.prepare_cached("DELETE FROM kv WHERE tree = ?1")?.execute([&*self.name])?;
            Ok(())
        })
    }

    /// Every record, in key order (reversible with `.rev()`).
    pub fn iter(&self) -> Iter {
        Iter::new(self.clone(), Bound::Unbounded, Bound::Unbounded)
    }

    /// Records whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref().to_vec();
        let hi = successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        Iter::new(self.clone(), Bound::Included(prefix), hi)
    }

    /// Records with keys in `range`, in key order.
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Iter {
        let own = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Iter::new(self.clone(), own(range.start_bound()), own(range.end_bound()))
    }

    /// Runs `f` as one transaction (see [`super::Store::transaction`]).
    pub fn transaction<T>(&self, f: impl FnOnce(&Tx) -> Result<T, Error>) -> Result<T, Error> {
        self.engine.transaction(f)
    }

    /// Makes every write so far durable (see [`Engine::sync`]).
    pub fn flush(&self) -> Result<(), Error> {
        self.engine.sync()
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

fn get(c: &Connection, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut st = c.prepare_cached("SELECT value, sum FROM kv WHERE tree = ?1 AND key = ?2")?;
    match st.query_row(params![tree, key], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))).optional()? {
        Some((v, s)) => checked(tree, key, v, s).map(Some),
        None => Ok(None),
    }
}

fn put(c: &Connection, tree: &str, key: &[u8], value: &[u8]) -> Result<(), Error> {
    let mut st = c.prepare_cached(
        "INSERT INTO kv (tree, key, value, sum) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value, sum = excluded.sum",
    )?;
    st.execute(params![tree, key, value, sum(tree, key, value)])?;
    Ok(())
}

fn del(c: &Connection, tree: &str, key: &[u8]) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM kv WHERE tree = ?1 AND key = ?2")?.execute(params![tree, key])?;
    Ok(())
}

/// A scan over a key range, read a chunk at a time (no connection is held between chunks, so a
/// long scan never blocks writers). Yields what is in the range when each chunk is read.
pub struct Iter {
    tree: Tree,
    /// The part of the range not read yet.
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: std::collections::VecDeque<Result<Entry, Error>>,
    back: std::collections::VecDeque<Result<Entry, Error>>,
    chunk: usize,
    /// The unread range is empty.
    done: bool,
}

impl Iter {
    fn new(tree: Tree, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Iter {
        Iter { tree, lo, hi, front: Default::default(), back: Default::default(), chunk: FIRST_CHUNK, done: false }
    }

    /// The values alone.
    pub fn values(self) -> impl DoubleEndedIterator<Item = Result<Vec<u8>, Error>> {
        self.map(|e| e.map(|(_, v)| v))
    }

    /// The keys alone.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Vec<u8>, Error>> {
        self.map(|e| e.map(|(k, _)| k))
    }

    /// Reads the next chunk from the low end (`forward`) or the high end of the unread range.
    fn fetch(&mut self, forward: bool) {
        let limit = self.chunk;
        self.chunk = (self.chunk * 4).min(MAX_CHUNK);
        let mut sql = String::from("SELECT key, value, sum FROM kv WHERE tree = ?1");
        let mut args: Vec<&[u8]> = Vec::new();
        for (bound, ge, gt) in [(&self.lo, ">=", ">"), (&self.hi, "<=", "<")] {
            let (op, k) = match bound {
                Bound::Included(k) => (ge, k),
                Bound::Excluded(k) => (gt, k),
                Bound::Unbounded => continue,
            };
            args.push(k);
            sql.push_str(&format!(" AND key {op} ?{}", args.len() + 1));
        }
        sql.push_str(if forward { " ORDER BY key ASC" } else { " ORDER BY key DESC" });
        sql.push_str(&format!(" LIMIT {limit}"));
        let name = self.tree.name.clone();
        let rows = self.tree.engine.read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let tree: &str = &name;
            let mut bind: Vec<&dyn rusqlite::ToSql> = vec![&tree];
            bind.extend(args.iter().map(|a| a as &dyn rusqlite::ToSql));
            let rows = st
                .query_map(bind.as_slice(), |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        });
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // Report the failure once, then end the scan.
                self.done = true;
                if forward {
                    self.front.push_back(Err(e))
                } else {
                    self.back.push_front(Err(e))
                }
                return;
            }
        };
        if rows.len() < limit {
            self.done = true;
        }
        if let Some((k, _, _)) = rows.last() {
            if forward {
                self.lo = Bound::Excluded(k.clone());
            } else {
                self.hi = Bound::Excluded(k.clone());
            }
        }
        for (k, v, s) in rows {
            let item = checked(&name, &k, v, s).map(|v| (k, v));
            if forward { self.front.push_back(item) } else { self.back.push_front(item) }
        }
    }
}

impl Iterator for Iter {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty() && !self.done {
            self.fetch(true);
        }
        self.front.pop_front().or_else(|| self.back.pop_front())
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty() && !self.done {
            self.fetch(false);
        }
        self.back.pop_back().or_else(|| self.front.pop_back())
    }
}

/// Writes made inside [`super::Store::transaction`]: all of them or none.
pub struct Tx<'a> {
    conn: &'a Connection,
}

impl Tx<'_> {
    pub fn get(&self, tree: &Tree, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        get(self.conn, &tree.name, key.as_ref())
    }

    pub fn insert(&self, tree: &Tree, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        put(self.conn, &tree.name, key.as_ref(), value.as_ref())
    }

    pub fn remove(&self, tree: &Tree, key: impl AsRef<[u8]>) -> Result<(), Error> {
        del(self.conn, &tree.name, key.as_ref())
    }

    /// Writes into the tree called `tree` (a migration or repair, copying trees by name).
    pub(crate) fn insert_raw(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), Error> {
        put(self.conn, tree, key, value)
    }
}

impl Engine {
    /// Runs `f` in one transaction: its writes commit together when it returns `Ok`, and none
    /// of them when it returns `Err`. Other writers wait meanwhile.
    pub(crate) fn transaction<T>(&self, f: impl FnOnce(&Tx) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.writer.lock();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&Tx { conn: &conn }) {
            Ok(v) => {
                conn.execute_batch("COMMIT")?;
                drop(conn);
                self.committed();
                Ok(v)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(&dir.path().join(FILE), None).unwrap());
        (dir, Tree::new(engine, name))
    }

    fn keys(it: impl Iterator<Item = Result<Entry, Error>>) -> Vec<Vec<u8>> {
        it.map(|e| e.unwrap().0).collect()
    }

    #[test]
    fn scans_follow_byte_order_from_both_ends_without_overlap() {
        let (_d, t) = tree("t");
        let other = Tree::new(t.engine.clone(), "t2");
        other.insert(b"a1", b"x").unwrap();
        let mut all: Vec<Vec<u8>> = (0u16..300).map(|i| format!("a{i:03}").into_bytes()).collect();
        all.extend([b"a".to_vec(), b"a\xff".to_vec(), b"b".to_vec(), vec![0xff, 0xff]]);
        for k in &all {
            t.insert(k, k).unwrap();
        }
        all.sort();
        assert_eq!(keys(t.iter()), all);
        assert_eq!(keys(t.iter().rev()), all.iter().rev().cloned().collect::<Vec<_>>());
        let prefixed: Vec<_> = all.iter().filter(|k| k.starts_with(b"a")).cloned().collect();
        assert_eq!(keys(t.scan_prefix(b"a")), prefixed);
        assert_eq!(keys(t.scan_prefix([0xff])), vec![vec![0xff, 0xff]]);
        // Alternating ends meet in the middle and yield every key once.
        let mut it = t.iter();
        let (mut lo, mut hi) = (Vec::new(), Vec::new());
        loop {
            match (it.next(), it.next_back()) {
                (Some(a), Some(b)) => {
                    lo.push(a.unwrap().0);
                    hi.push(b.unwrap().0);
                }
                (Some(a), None) => lo.push(a.unwrap().0),
                (None, Some(b)) => hi.push(b.unwrap().0),
                (None, None) => break,
            }
        }
        hi.reverse();
        lo.extend(hi);
        assert_eq!(lo, all);
        assert_eq!(keys(t.range(b"a010".as_slice()..b"a013".as_slice())), vec![b"a010".to_vec(), b"a011".to_vec(), b"a012".to_vec()]);
        assert_eq!(keys(t.range(b"a298".as_slice()..=b"a299".as_slice()).rev()), vec![b"a299".to_vec(), b"a298".to_vec()]);
        assert_eq!(t.len().unwrap(), all.len());
    }

    #[test]
    fn writes_return_what_was_there_and_swaps_check_it() {
        let (_d, t) = tree("t");
        assert_eq!(t.insert("k", "1").unwrap(), None);
        assert_eq!(t.insert("k", "2").unwrap(), Some(b"1".to_vec()));
        assert!(!t.compare_and_swap("k", Some("1"), Some("3")).unwrap());
        assert!(t.compare_and_swap("k", Some("2"), Some("3")).unwrap());
        assert!(!t.compare_and_swap("n", Some("x"), None::<&[u8]>).unwrap());
        assert!(t.compare_and_swap("n", None::<&[u8]>, Some("new")).unwrap());
        assert_eq!(t.remove("k").unwrap(), Some(b"3".to_vec()));
        assert_eq!(t.remove("k").unwrap(), None);
        assert!(t.contains_key("n").unwrap() && !t.contains_key("k").unwrap());
        t.clear().unwrap();
        assert!(t.is_empty().unwrap());
    }

    #[test]
    fn the_wal_is_folded_into_the_file_in_the_background() {
        let (dir, t) = tree("audit");
        let value = vec![b'v'; 600];
        for i in 0u64..20_000 {
            t.put(i.to_be_bytes(), &value).unwrap();
        }
        // 20,000 commits of two pages each would be a WAL of 160 MiB without checkpoints; past
        // its bound the writer truncates it, however busy the machine.
        let wal = std::fs::metadata(dir.path().join(format!("{FILE}-wal"))).unwrap().len();
        assert!(wal < 2 * WAL_LIMIT, "WAL of {wal} bytes");
        assert!(t.engine.checkpointer.lock().is_some());
        assert_eq!(t.len().unwrap(), 20_000);
    }

    #[test]
    fn a_closed_store_keeps_a_short_wal_and_folds_a_long_one() {
        let dir = tempfile::tempdir().unwrap();
        let (path, wal) = (dir.path().join(FILE), dir.path().join(format!("{FILE}-wal")));
        let reopen = || Tree::new(Arc::new(Engine::open(&path, None).unwrap()), "t");
        // A few records: the WAL stays, synced, and the next open reads them from it.
        let t = reopen();
        t.put("a", "1").unwrap();
        drop(t);
        let kept = std::fs::metadata(&wal).unwrap().len();
        assert!(kept > 0 && kept <= CLOSE_CHECKPOINT, "WAL of {kept} bytes");
        let t = reopen();
        assert_eq!(t.get("a").unwrap(), Some(b"1".to_vec()));
        // More than the bound: closing folds it into the file.
        for i in 0u32..200 {
            t.put(i.to_be_bytes(), vec![b'v'; 2000]).unwrap();
        }
        assert!(std::fs::metadata(&wal).unwrap().len() > CLOSE_CHECKPOINT);
        drop(t);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        // Closed as one file, nothing is left beside it, and nothing is lost.
        let engine = Arc::new(Engine::open(&path, None).unwrap());
        Tree::new(engine.clone(), "t").put("z", "1").unwrap();
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        Arc::into_inner(engine).unwrap().close_as_one_file().unwrap();
        assert!(!wal.exists() && !dir.path().join(format!("{FILE}-shm")).exists());
        let t = reopen();
        assert_eq!(t.len().unwrap(), 202);
    }

    #[test]
    fn a_failed_transaction_writes_nothing() {
        let (_d, t) = tree("t");
        let r: Result<(), Error> = t.engine.transaction(|tx| {
            tx.insert(&t, "a", "1")?;
            Err(Error::Store("no".into()))
        });
        assert!(r.is_err());
        assert_eq!(t.get("a").unwrap(), None);
        t.engine.transaction(|tx| tx.insert(&t, "a", "1")).unwrap();
        assert_eq!(t.get("a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_changed_value_is_reported_as_that_one_damaged_record() {
        let (_d, t) = tree("t");
        for k in ["a", "b", "c"] {
            t.insert(k, "value").unwrap();
        }
        t.engine.write(|c| Ok(c.execute("UPDATE kv SET value = x'76616c7566' WHERE key = x'62'", [])?)).unwrap();
        let err = t.get("b").unwrap_err().to_string();
        assert!(err.contains("record `b` in `t` is damaged"), "{err}");
        assert_eq!(t.get("a").unwrap(), Some(b"value".to_vec()));
        let scanned: Vec<_> = t.iter().collect();
        assert_eq!(scanned.len(), 3);
        assert!(scanned[0].is_ok() && scanned[1].is_err() && scanned[2].is_ok());
    }
}
