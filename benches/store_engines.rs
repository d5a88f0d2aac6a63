//! Embedded stores compared on opslet's own workload, so that the data dir's store is chosen by
//! measurement (issue #15). Run with `cargo bench --bench store_engines`.
//!
//! Engines, each configured as opslet would use it:
//! - sled 0.34 (today's store): 64 MiB cache, flushed every second; durable = `Db::flush` (which
//!   on Linux syncs with `sync_file_range`, weaker than the others' fdatasync: it flushes neither
//!   the drive's cache nor the file's metadata).
//! - SQLite (rusqlite, bundled): one `store.sqlite` in WAL mode, `synchronous=NORMAL`, 16 MiB
//!   cache, an ordinary table `kv (tree, key, value)`; every value carries its crc32, checked on
//!   read; one autocommit statement per write; durable = fdatasync of the `-wal` file.
//! - redb 2.6: one file, one table per tree, one write transaction per write; durable = a commit
//!   with `Durability::Immediate`, otherwise `Durability::None`.
//!
//! Records look like opslet's: ~700 bytes of JSON under `r` + seq (u64 big-endian) in "audit",
//! ~300 bytes under 16-byte keys in "jobs". Workloads: cold open (with and without 200k audit
//! records), durable appends (one thread; 16 threads sharing a group commit), job writes from 4
//! threads, memory and disk after a long history (300k audit records and 300k job insert+remove
//! cycles), restart after that history, and one flipped byte in the data file. Every measurement
//! runs in a child process of its own (this bench's binary started with
//! `--child <engine> <scenario> <dir> <n>`), which prints one JSON line; the parent prints a table
//! with each figure's ratio against sled. Stores live on the temp dir's disk and the OS page cache
//! is warm: "cold" means a fresh process, not a cold disk.
//!
//! The stores for cold open, history and flipped bytes are written in transactions of 1,000
//! records (see `fill`): with one commit per write, the history alone took over 3 minutes on a
//! 2-core machine (SQLite ~75 µs and redb ~155 µs a commit there). One commit per write is what the
//! append and job-write figures measure; redb's file growth under it shows in the job writes' size
//! on disk.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redb::{Durability, ReadableTable, TableDefinition, TableError};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

const ENGINES: [&str; 3] = ["sled", "sqlite", "redb"];

/// Workload sizes: the real figures under `cargo bench`; `cargo test --all-targets` runs benches
/// too, and then this is a quick smoke run.
struct Sizes {
    cold_records: u64,
    cold_opens: usize,
    appends: usize,
    group_threads: u64,
    group_per_thread: u64,
    job_threads: u64,
    jobs_per_thread: u64,
    history: u64,
    restart_opens: usize,
    flip_records: u64,
    flip_trials: u64,
}

const FULL: Sizes = Sizes {
    cold_records: 200_000,
    cold_opens: 5,
    appends: 1_000,
    group_threads: 16,
    group_per_thread: 100,
    job_threads: 4,
    jobs_per_thread: 5_000,
    history: 300_000,
    restart_opens: 3,
    flip_records: 10_000,
    flip_trials: 20,
};

const SMOKE: Sizes = Sizes {
    cold_records: 2_000,
    cold_opens: 2,
    appends: 50,
    group_threads: 16,
    group_per_thread: 5,
    job_threads: 4,
    jobs_per_thread: 50,
    history: 3_000,
    restart_opens: 1,
    flip_records: 500,
    flip_trials: 3,
};

/// Records per transaction (and per durable sync) while filling a store.
const BATCH: u64 = 1_000;

/// A flipped-byte trial that has not finished by then is killed and counted as a failed open.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Records

#[derive(Clone, Copy)]
enum Tree {
    Audit,
    Jobs,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Audit => "audit",
            Tree::Jobs => "jobs",
        }
    }
}

/// splitmix64: cheap, deterministic "random-ish" bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pads a JSON object (given without its closing `"}`) with a `pad` string to exactly `len` bytes.
fn padded(mut s: String, len: usize) -> Vec<u8> {
    s.push_str(",\"pad\":\"");
    while s.len() < len - 2 {
        s.push('.');
    }
    s.push_str("\"}");
    s.into_bytes()
}

fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An audit-like record of 700 bytes of JSON that names its own seq.
fn audit_value(seq: u64) -> Vec<u8> {
    let (a, b) = (mix(seq), mix(seq ^ 0xa5a5));
    let s = format!(
        "{{\"seq\":{seq},\"kind\":\"run.end\",\"applet\":\"deploy-web@1.4.2\",\"user\":\"alice\",\"via\":\"serve\",\
         \"at\":\"2025-06-01T12:00:00.000Z\",\"run\":\"{a:016x}\",\"prev\":\"{a:016x}{b:016x}{a:016x}{b:016x}\",\
         \"result\":{{\"ok\":true,\"changed\":3,\"hosts\":[\"web-1\",\"web-2\",\"web-3\"]}}"
    );
    padded(s, 700)
}

fn job_key(thread: u64, n: u64) -> Vec<u8> {
    let a = mix((thread << 40) | n);
    let mut k = a.to_be_bytes().to_vec();
    k.extend_from_slice(&mix(a).to_be_bytes());
    k
}

/// A job-like record of 300 bytes.
fn job_value(key: &[u8], state: u32) -> Vec<u8> {
    let s = format!("{{\"id\":\"{}\",\"applet\":\"deploy-web@1.4.2\",\"user\":\"alice\",\"state\":{state}", hex::encode(key));
    padded(s, 300)
}

// ---------------------------------------------------------------------------------------------
// Engines

/// What opslet needs from a store. `put` and `remove` are not durable by themselves; `sync`
/// makes every write made before it durable.
trait Engine: Send + Sync {
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()>;
    fn sync(&self) -> Result<()>;
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    fn scan(&self, tree: Tree, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()>;

    /// Applies `ops` in order, as one transaction where the engine has them; not durable by itself.
    fn apply(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            match op {
                Op::Put(tree, key, value) => self.put(*tree, key, value)?,
                Op::Remove(tree, key) => self.remove(*tree, key)?,
            }
        }
        Ok(())
    }

    /// Appends one record and makes it durable.
    fn append_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put(Tree::Audit, key, value)?;
        self.sync()
    }

    /// Closes cleanly (everything durable, nothing left to recover on the next open).
    fn close(&self) -> Result<()> {
        self.sync()
    }
}

enum Op {
    Put(Tree, Vec<u8>, Vec<u8>),
    Remove(Tree, Vec<u8>),
}

fn open(engine: &str, dir: &Path) -> Result<Box<dyn Engine>> {
    Ok(match engine {
        "sled" => Box::new(Sled::open(dir)?),
        "sqlite" => Box::new(Sqlite::open(dir)?),
        "redb" => Box::new(Redb::open(dir)?),
        _ => bail!("unknown engine {engine}"),
    })
}

/// The file a flipped-byte trial damages.
fn data_file(engine: &str, dir: &Path) -> PathBuf {
    match engine {
        "sled" => dir.join("db"),
        "sqlite" => dir.join(Sqlite::FILE),
        _ => dir.join(Redb::FILE),
    }
}

struct Sled {
    db: sled::Db,
    audit: sled::Tree,
    jobs: sled::Tree,
}

impl Sled {
    fn open(dir: &Path) -> Result<Sled> {
        let db = sled::Config::new().path(dir).cache_capacity(64 << 20).flush_every_ms(Some(1000)).open()?;
        Ok(Sled { audit: db.open_tree("audit")?, jobs: db.open_tree("jobs")?, db })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Audit => &self.audit,
            Tree::Jobs => &self.jobs,
        }
    }
}

impl Engine for Sled {
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(tree).insert(key, value)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.tree(tree).remove(key)?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.tree(tree).last()?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn scan(&self, tree: Tree, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for kv in self.tree(tree).iter() {
            let (k, v) = kv?;
            f(&k, &v);
        }
        Ok(())
    }
}

struct Sqlite {
    /// One connection, for the writers and the readers alike.
    conn: Mutex<rusqlite::Connection>,
    /// The write-ahead log: with `synchronous=NORMAL`, syncing it makes every commit so far durable.
    wal: fs::File,
}

impl Sqlite {
    const FILE: &str = "store.sqlite";
    const PUT: &str = "INSERT INTO kv (tree, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value";
    const REMOVE: &str = "DELETE FROM kv WHERE tree = ?1 AND key = ?2";

    fn open(dir: &Path) -> Result<Sqlite> {
        let path = dir.join(Self::FILE);
        let conn = rusqlite::Connection::open(&path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" {
            bail!("journal_mode is {mode}, not wal");
        }
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16384; PRAGMA wal_autocheckpoint=1000;
             CREATE TABLE IF NOT EXISTS kv (tree TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (tree, key));",
        )?;
        let mut wal_path = path.into_os_string();
        wal_path.push("-wal");
        let wal = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(wal_path)?;
        Ok(Sqlite { conn: Mutex::new(conn), wal })
    }

    /// The stored form of a value: its crc32 (big-endian), then the value.
    fn frame(value: &[u8]) -> Vec<u8> {
        let mut v = crc32fast::hash(value).to_be_bytes().to_vec();
        v.extend_from_slice(value);
        v
    }

    fn unframe(mut stored: Vec<u8>) -> Result<Vec<u8>> {
        if stored.len() < 4 || crc32fast::hash(&stored[4..]).to_be_bytes() != stored[..4] {
            bail!("damaged record: crc32 mismatch");
        }
        stored.drain(..4);
        Ok(stored)
    }
}

impl Engine for Sqlite {
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.prepare_cached(Self::PUT)?.execute(params![tree.name(), key, Self::frame(value)])?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.prepare_cached(Self::REMOVE)?.execute(params![tree.name(), key])?;
        Ok(())
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        let tx = conn.unchecked_transaction()?;
        for op in ops {
            match op {
                Op::Put(tree, key, value) => tx.prepare_cached(Self::PUT)?.execute(params![tree.name(), key, Self::frame(value)])?,
                Op::Remove(tree, key) => tx.prepare_cached(Self::REMOVE)?.execute(params![tree.name(), key])?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.wal.sync_data()?;
        Ok(())
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT value FROM kv WHERE tree = ?1 AND key = ?2")?;
        let stored: Option<Vec<u8>> = stmt.query_row(params![tree.name(), key], |r| r.get(0)).optional()?;
        stored.map(Self::unframe).transpose()
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT key, value FROM kv WHERE tree = ?1 ORDER BY key DESC LIMIT 1")?;
        let row: Option<(Vec<u8>, Vec<u8>)> = stmt.query_row(params![tree.name()], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        row.map(|(k, v)| Ok((k, Self::unframe(v)?))).transpose()
    }

    fn scan(&self, tree: Tree, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT key, value FROM kv WHERE tree = ?1 ORDER BY key")?;
        let mut rows = stmt.query(params![tree.name()])?;
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            f(&key, &Self::unframe(row.get(1)?)?);
        }
        Ok(())
    }

    /// Also empties the write-ahead log into the main file, so that the closed store is one file.
    fn close(&self) -> Result<()> {
        self.sync()?;
        self.conn.lock().unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }
}

type RedbTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

struct Redb {
    db: redb::Database,
}

impl Redb {
    const FILE: &str = "store.redb";

    fn open(dir: &Path) -> Result<Redb> {
        Ok(Redb { db: redb::Database::create(dir.join(Self::FILE))? })
    }

    fn table(tree: Tree) -> RedbTable {
        TableDefinition::new(tree.name())
    }

    fn write(&self, durability: Durability, f: impl FnOnce(&redb::WriteTransaction) -> Result<()>) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(durability);
        f(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The tree's table for reading; `None` while nothing has been written to it.
    fn read(&self, tree: Tree) -> Result<Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>> {
        match self.db.begin_read()?.open_table(Self::table(tree)) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Engine for Redb {
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(Durability::None, |tx| {
            tx.open_table(Self::table(tree))?.insert(key, value)?;
            Ok(())
        })
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.write(Durability::None, |tx| {
            tx.open_table(Self::table(tree))?.remove(key)?;
            Ok(())
        })
    }

    fn apply(&self, ops: &[Op]) -> Result<()> {
        self.write(Durability::None, |tx| {
            let (mut audit, mut jobs) = (tx.open_table(Self::table(Tree::Audit))?, tx.open_table(Self::table(Tree::Jobs))?);
            for op in ops {
                let (Op::Put(tree, key, _) | Op::Remove(tree, key)) = op;
                let table = if matches!(tree, Tree::Audit) { &mut audit } else { &mut jobs };
                match op {
                    Op::Put(_, _, value) => table.insert(key.as_slice(), value.as_slice())?,
                    Op::Remove(..) => table.remove(key.as_slice())?,
                };
            }
            Ok(())
        })
    }

    /// An empty durable commit: it makes the non-durable ones before it durable.
    fn sync(&self) -> Result<()> {
        self.write(Durability::Immediate, |_| Ok(()))
    }

    fn append_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(Durability::Immediate, |tx| {
            tx.open_table(Self::table(Tree::Audit))?.insert(key, value)?;
            Ok(())
        })
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(table) = self.read(tree)? else { return Ok(None) };
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    fn last(&self, tree: Tree) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(table) = self.read(tree)? else { return Ok(None) };
        Ok(table.last()?.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
    }

    fn scan(&self, tree: Tree, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        let Some(table) = self.read(tree)? else { return Ok(()) };
        for kv in table.iter()? {
            let (k, v) = kv?;
            f(k.value(), v.value());
        }
        Ok(())
    }
}

/// Group commit: an append waits until a sync that started after its write has finished. One sync
/// runs at a time and serves every append written before it started.
#[derive(Default)]
struct GroupCommit {
    state: Mutex<GroupState>,
    synced: Condvar,
}

#[derive(Default)]
struct GroupState {
    written: u64,
    synced: u64,
    syncing: bool,
}

impl GroupCommit {
    fn append(&self, engine: &dyn Engine, key: &[u8], value: &[u8]) -> Result<()> {
        engine.put(Tree::Audit, key, value)?;
        let mut s = self.state.lock().unwrap();
        s.written += 1;
        let ticket = s.written;
        while s.synced < ticket {
            if s.syncing {
                s = self.synced.wait(s).unwrap();
                continue;
            }
            s.syncing = true;
            let upto = s.written;
            drop(s);
            let synced = engine.sync();
            s = self.state.lock().unwrap();
            s.syncing = false;
            if synced.is_ok() {
                s.synced = upto;
            }
            self.synced.notify_all();
            synced?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Child: one scenario, one JSON line

fn child(engine: &str, scenario: &str, dir: &Path, n: u64, sizes: &Sizes) -> Result<Value> {
    match scenario {
        "fill" => {
            fs::create_dir_all(dir)?;
            let store = open(engine, dir)?;
            fill(store.as_ref(), n, false)?;
            store.close()?;
            Ok(json!({}))
        }
        "open" => {
            let t = Instant::now();
            let store = open(engine, dir)?;
            let newest = store.last(Tree::Audit)?;
            let open_ms = ms(t.elapsed());
            let seq = newest.map(|(k, _)| u64::from_be_bytes(k[1..9].try_into().unwrap()));
            Ok(json!({ "open_ms": open_ms, "newest": seq }))
        }
        "append" => {
            let single = dir.join("single");
            fs::create_dir_all(&single)?;
            let store = open(engine, &single)?;
            let mut times = Vec::with_capacity(sizes.appends);
            for seq in 0..sizes.appends as u64 {
                let t = Instant::now();
                store.append_durable(&audit_key(seq), &audit_value(seq))?;
                times.push(ms(t.elapsed()));
            }
            store.close()?;

            let group = dir.join("group");
            fs::create_dir_all(&group)?;
            let store = open(engine, &group)?;
            let commit = GroupCommit::default();
            let t = Instant::now();
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..sizes.group_threads)
                    .map(|thread| {
                        let (store, commit) = (store.as_ref(), &commit);
                        s.spawn(move || -> Result<()> {
                            for i in 0..sizes.group_per_thread {
                                let seq = thread * sizes.group_per_thread + i;
                                commit.append(store, &audit_key(seq), &audit_value(seq))?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|w| w.join().unwrap())
            })?;
            let group_per_s = (sizes.group_threads * sizes.group_per_thread) as f64 / t.elapsed().as_secs_f64();
            store.close()?;
            Ok(json!({ "median_ms": percentile(&mut times, 50), "p99_ms": percentile(&mut times, 99), "group_per_s": group_per_s }))
        }
        "jobs" => {
            fs::create_dir_all(dir)?;
            let store = open(engine, dir)?;
            let t = Instant::now();
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..sizes.job_threads)
                    .map(|thread| {
                        let store = store.as_ref();
                        s.spawn(move || -> Result<()> {
                            for n in 0..sizes.jobs_per_thread {
                                let key = job_key(thread, n);
                                for state in 0..4 {
                                    store.put(Tree::Jobs, &key, &job_value(&key, state))?;
                                }
                                store.remove(Tree::Jobs, &key)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|w| w.join().unwrap())
            })?;
            store.sync()?;
            let ops = sizes.job_threads * sizes.jobs_per_thread * 5;
            let ops_per_s = ops as f64 / t.elapsed().as_secs_f64();
            store.close()?;
            Ok(json!({ "ops_per_s": ops_per_s }))
        }
        "history" => {
            fs::create_dir_all(dir)?;
            let store = open(engine, dir)?;
            let t = Instant::now();
            fill(store.as_ref(), n, true)?;
            let write_s = t.elapsed().as_secs_f64();
            let rss_written = rss_mib()?;
            let (mut records, mut bytes) = (0u64, 0usize);
            store.scan(Tree::Audit, &mut |_, v| {
                records += 1;
                bytes += v.len();
            })?;
            if records != n {
                bail!("read {records} audit records back, wrote {n}");
            }
            let rss_read = rss_mib()?;
            store.close()?;
            Ok(json!({ "write_s": write_s, "rss_written_mib": rss_written, "rss_read_mib": rss_read, "bytes_read": bytes }))
        }
        "read-all" => Ok(read_all(engine, dir, n)),
        _ => bail!("unknown scenario {scenario}"),
    }
}

/// Appends `n` audit records; with `jobs`, each append comes with one job inserted and removed.
/// Written in durable batches of `BATCH` records (one transaction each where the engine has them):
/// one commit per write, as opslet makes them, would take minutes here (see the module comment).
fn fill(store: &dyn Engine, n: u64, jobs: bool) -> Result<()> {
    let mut ops = Vec::new();
    for seq in 0..n {
        ops.push(Op::Put(Tree::Audit, audit_key(seq), audit_value(seq)));
        if jobs {
            let key = job_key(u64::from(u32::MAX), seq);
            ops.push(Op::Put(Tree::Jobs, key.clone(), job_value(&key, 0)));
            ops.push(Op::Remove(Tree::Jobs, key));
        }
        if seq % BATCH == BATCH - 1 || seq == n - 1 {
            store.apply(&ops)?;
            store.sync()?;
            ops.clear();
        }
    }
    store.sync()
}

/// Opens a (possibly damaged) store and reads each of its `n` audit records by key.
fn read_all(engine: &str, dir: &Path, n: u64) -> Value {
    let store = match open(engine, dir) {
        Ok(store) => store,
        Err(e) => return json!({ "opened": false, "error": format!("{e:#}") }),
    };
    let (mut correct, mut errors, mut wrong, mut missing) = (0u64, 0u64, 0u64, 0u64);
    for seq in 0..n {
        match store.get(Tree::Audit, &audit_key(seq)) {
            Ok(Some(v)) if v == audit_value(seq) => correct += 1,
            Ok(Some(_)) => wrong += 1,
            Ok(None) => missing += 1,
            Err(_) => errors += 1,
        }
    }
    json!({ "opened": true, "correct": correct, "errors": errors, "wrong": wrong, "missing": missing })
}

fn rss_mib() -> Result<f64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS in /proc/self/status")?;
    let kb: f64 = line.split_whitespace().nth(1).context("VmRSS without a value")?.parse()?;
    Ok(kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Parent: run the children, print the table

struct Run {
    /// The child's JSON line, when it exited successfully.
    json: Option<Value>,
    wall: Duration,
    /// Why the child did not succeed: its panic or error message, or a timeout.
    failure: Option<String>,
}

fn run_child(engine: &str, scenario: &str, dir: &Path, n: u64, bench: bool, timeout: Option<Duration>) -> Run {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--child", engine, scenario]).arg(dir).arg(n.to_string());
    if bench {
        cmd.arg("--bench");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t = Instant::now();
    let mut proc = cmd.spawn().expect("starting a child");
    let mut timed_out = false;
    if let Some(timeout) = timeout {
        while proc.try_wait().unwrap().is_none() {
            if t.elapsed() > timeout {
                proc.kill().unwrap();
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let status = proc.wait().unwrap();
    let wall = t.elapsed();
    let (mut out, mut err) = (String::new(), String::new());
    proc.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    proc.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let failure = if timed_out {
        Some(format!("hung: killed after {} s", timeout.unwrap_or_default().as_secs()))
    } else if !status.success() {
        Some(panic_message(&err).unwrap_or_else(|| format!("{status}: {}", err.trim())))
    } else {
        None
    };
    let json = if failure.is_none() { out.lines().last().and_then(|l| serde_json::from_str(l).ok()) } else { None };
    Run { json, wall, failure }
}

/// "panicked: <message> (<file:line:col>)", from a child's stderr, whose panic report is a line
/// "thread '…' panicked at <file:line:col>:" followed by the message.
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked at "));
    let location = lines.next()?.rsplit("panicked at ").next()?.trim_end_matches(':');
    // A dependency's file: from its crate folder on, without the registry's path.
    let location = location.split("/registry/src/").nth(1).and_then(|l| l.split_once('/')).map_or(location, |(_, l)| l);
    Some(format!("panicked: {} ({location})", lines.next().unwrap_or_default().trim()))
}

/// Runs a child that must succeed, and returns its JSON line and wall time.
fn must(engine: &str, scenario: &str, dir: &Path, n: u64, bench: bool) -> (Value, Duration) {
    let run = run_child(engine, scenario, dir, n, bench, None);
    match (run.json, run.failure) {
        (Some(json), None) => (json, run.wall),
        (_, failure) => panic!("{engine} {scenario}: {}", failure.unwrap_or_else(|| "no JSON line".into())),
    }
}

fn num(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or_else(|| panic!("no number {field} in {v}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 50)
}

#[derive(Default)]
struct Results {
    cold_open_ms: f64,
    cold_wall_ms: f64,
    empty_open_ms: f64,
    empty_wall_ms: f64,
    append_median_ms: f64,
    append_p99_ms: f64,
    group_per_s: f64,
    jobs_per_s: f64,
    jobs_disk_mib: f64,
    history_write_s: f64,
    rss_written_mib: f64,
    rss_read_mib: f64,
    disk_mib: f64,
    restart_open_ms: f64,
    restart_wall_ms: f64,
    flip_file_mib: f64,
    flip_opened: f64,
    flip_correct_mean: f64,
    flip_detected: f64,
    flip_silent_wrong: f64,
    flip_silent_missing: f64,
    /// Flipped-byte trials that did not open: what went wrong, and the offset of the flipped byte.
    flip_failures: Vec<(String, usize)>,
}

/// Opens a store in `runs` fresh children; median time to the newest record and median wall time.
fn cold_opens(engine: &str, dir: &Path, runs: usize, newest: Option<u64>, bench: bool) -> (f64, f64) {
    let (mut open, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (json, w) = must(engine, "open", dir, 0, bench);
        assert_eq!(json["newest"].as_u64(), newest, "{engine}: newest record in {}", dir.display());
        open.push(num(&json, "open_ms"));
        wall.push(ms(w));
    }
    (median(open), median(wall))
}

fn measure(engine: &str, root: &Path, sizes: &Sizes, bench: bool, start: Instant) -> Results {
    let mut r = Results::default();
    let dir = |name: &str| root.join(format!("{engine}-{name}"));
    let step = |what: &str| eprintln!("[{:>5.1} s] {engine}: {what}", start.elapsed().as_secs_f64());
    step("cold open");
    must(engine, "fill", &dir("cold"), sizes.cold_records, bench);
    must(engine, "fill", &dir("empty"), 0, bench);
    (r.cold_open_ms, r.cold_wall_ms) = cold_opens(engine, &dir("cold"), sizes.cold_opens, Some(sizes.cold_records - 1), bench);
    (r.empty_open_ms, r.empty_wall_ms) = cold_opens(engine, &dir("empty"), sizes.cold_opens, None, bench);

    step("durable appends");
    let (json, _) = must(engine, "append", &dir("append"), 0, bench);
    (r.append_median_ms, r.append_p99_ms, r.group_per_s) = (num(&json, "median_ms"), num(&json, "p99_ms"), num(&json, "group_per_s"));

    step("job writes");
    r.jobs_per_s = num(&must(engine, "jobs", &dir("jobs"), 0, bench).0, "ops_per_s");
    r.jobs_disk_mib = mib(disk_usage(&dir("jobs")));

    step("history");
    let (json, _) = must(engine, "history", &dir("history"), sizes.history, bench);
    (r.history_write_s, r.rss_written_mib, r.rss_read_mib) =
        (num(&json, "write_s"), num(&json, "rss_written_mib"), num(&json, "rss_read_mib"));
    r.disk_mib = mib(disk_usage(&dir("history")));
    (r.restart_open_ms, r.restart_wall_ms) = cold_opens(engine, &dir("history"), sizes.restart_opens, Some(sizes.history - 1), bench);

    step("flipped bytes");
    let base = dir("flip-base");
    must(engine, "fill", &base, sizes.flip_records, bench);
    r.flip_file_mib = mib(fs::metadata(data_file(engine, &base)).unwrap().len());
    let mut seed = 0x15;
    for trial in 0..sizes.flip_trials {
        let store = dir(&format!("flip-{trial}"));
        copy_dir(&base, &store);
        let file = data_file(engine, &store);
        let mut bytes = fs::read(&file).unwrap();
        let at = (lcg(&mut seed) % bytes.len() as u64) as usize;
        bytes[at] ^= 0xff;
        fs::write(&file, bytes).unwrap();
        let run = run_child(engine, "read-all", &store, sizes.flip_records, bench, Some(TRIAL_TIMEOUT));
        match (&run.json, run.failure) {
            (Some(json), None) if json["opened"] == true => {
                r.flip_opened += 1.0;
                r.flip_correct_mean += num(json, "correct") / sizes.flip_trials as f64;
                r.flip_detected += num(json, "errors");
                r.flip_silent_wrong += num(json, "wrong");
                r.flip_silent_missing += num(json, "missing");
            }
            (Some(json), None) => r.flip_failures.push((format!("open error: {}", json["error"].as_str().unwrap_or("?")), at)),
            (_, failure) => r.flip_failures.push((failure.unwrap_or_else(|| "no JSON line".into()), at)),
        }
        fs::remove_dir_all(&store).unwrap();
    }
    r
}

/// A simple LCG (Knuth's MMIX constants): the same flipped offsets on every run.
fn lcg(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *state >> 16
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Bytes allocated to the files under `dir`, as `du` counts them (redb's file is partly sparse).
fn disk_usage(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() { disk_usage(&entry.path()) } else { entry.metadata().unwrap().blocks() * 512 }
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn cell(value: f64, baseline: f64) -> String {
    let v = if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let ratio = if baseline == 0.0 { "  n/a".to_string() } else { format!("{:.2}x", value / baseline) };
    format!("{v:>9} {ratio:>7}")
}

fn print_table(results: &[Results], sizes: &Sizes) {
    type Figure = fn(&Results) -> f64;
    let rows: Vec<(String, Figure)> = vec![
        (format!("cold open, {}k records: to newest read (ms)", sizes.cold_records / 1000), |r| r.cold_open_ms),
        ("  child process wall time (ms)".into(), |r| r.cold_wall_ms),
        ("cold open, empty store: to first read (ms)".into(), |r| r.empty_open_ms),
        ("  child process wall time (ms)".into(), |r| r.empty_wall_ms),
        ("durable append, 1 thread: median (ms)".into(), |r| r.append_median_ms),
        ("durable append, 1 thread: p99 (ms)".into(), |r| r.append_p99_ms),
        (format!("durable append, {} threads, group commit (/s)", sizes.group_threads), |r| r.group_per_s),
        (format!("job writes, {} threads, no per-op sync (ops/s)", sizes.job_threads), |r| r.jobs_per_s),
        ("job writes: size on disk after, closed (MiB)".into(), |r| r.jobs_disk_mib),
        (format!("history: write {}k audit + {}k job cycles, batched (s)", sizes.history / 1000, sizes.history / 1000), |r| {
            r.history_write_s
        }),
        ("history: RSS after writing (MiB)".into(), |r| r.rss_written_mib),
        ("history: RSS after reading audit tree (MiB)".into(), |r| r.rss_read_mib),
        ("history: size on disk, closed (MiB)".into(), |r| r.disk_mib),
        ("restart after history: to newest read (ms)".into(), |r| r.restart_open_ms),
        ("  child process wall time (ms)".into(), |r| r.restart_wall_ms),
        (format!("flipped byte: data file length, {} records (MiB)", sizes.flip_records), |r| r.flip_file_mib),
        (format!("flipped byte: opens that succeeded (of {})", sizes.flip_trials), |r| r.flip_opened),
        (format!("flipped byte: records read correctly (mean, of {})", sizes.flip_records), |r| r.flip_correct_mean),
        ("flipped byte: reads with an error (detected)".into(), |r| r.flip_detected),
        ("flipped byte: reads of wrong bytes (silent)".into(), |r| r.flip_silent_wrong),
        ("flipped byte: records missing (silent)".into(), |r| r.flip_silent_missing),
    ];
    print!("{:<56}", "ratio = engine / sled (sled = 1.00x)");
    for engine in ENGINES {
        print!("{engine:>18}");
    }
    println!();
    for (label, figure) in &rows {
        print!("{label:<56}");
        for r in results {
            print!(" {}", cell(figure(r), figure(&results[0])));
        }
        println!();
    }
    for (engine, r) in ENGINES.iter().zip(results) {
        let mut failures: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (why, at) in &r.flip_failures {
            failures.entry(why).or_default().push(*at);
        }
        for (why, offsets) in failures {
            println!("{engine}: {} flipped-byte open(s) failed: {why}; flipped bytes at {offsets:?}", offsets.len());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let sizes = if bench { &FULL } else { &SMOKE };
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let n = args[i + 4].parse().expect("record count");
        match child(&args[i + 1], &args[i + 2], Path::new(&args[i + 3]), n, sizes) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    if !bench {
        println!("smoke run (use `cargo bench` for figures)");
    }
    let t = Instant::now();
    let root = tempfile::Builder::new().prefix("store-engines").tempdir().unwrap();
    let results: Vec<Results> = ENGINES.iter().map(|engine| measure(engine, root.path(), sizes, bench, t)).collect();
    print_table(&results, sizes);
    println!("bench wall time: {:.1} s", t.elapsed().as_secs_f64());
}
