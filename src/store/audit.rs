//! The audit log: append-only, hash-chained records in the store's `audit` tree.
//!
//! Record `n` stores `prev` = hash of record `n-1` and `hash` = SHA-256 over `prev` and the
//! record's canonical JSON (all fields but `hash`). The head (last seq and hash) is kept apart, so
//! `verify` finds edited, removed, reordered and truncated records. Anchor `opslet audit head`
//! outside the host to also catch a rewrite of the whole chain.

use std::sync::Arc;

use super::Tree;
use crate::error::Error;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller hands to `append`.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// `run.start`, `run.end`, `action`, ...
    pub kind: String,
    pub run_id: Option<String>,
    pub actor: Option<String>,
    pub via: Option<String>,
    /// `name@version`.
    pub applet: Option<String>,
    pub status: Option<String>,
    pub data: serde_json::Value,
}

/// One stored record. Field order is the canonical order for hashing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    pub prev: String,
    #[serde(default)]
    pub hash: String,
}

impl AuditRecord {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let body = serde_json::to_vec(&unhashed).expect("audit records always serialize");
        hash_body(&self.prev, &body)
    }

    /// Sets `hash` and returns the record's stored JSON, serializing it only once: `hash` is the
    /// last field, so the hashed form (with `"hash":""`) ends the stored form but for the value.
    fn seal(&mut self) -> Vec<u8> {
        self.hash = String::new();
        let mut body = serde_json::to_vec(self).expect("audit records always serialize");
        let hash = hash_body(&self.prev, &body);
        debug_assert!(body.ends_with(br#""hash":""}"#));
        body.truncate(body.len() - 2);
        body.extend_from_slice(hash.as_bytes());
        body.extend_from_slice(b"\"}");
        self.hash = hash;
        body
    }
}

fn hash_body(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    /// Number of records (the next seq).
    pub count: u64,
    pub hash: String,
}

/// Result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub head: Head,
    /// The first bad record and why; `None` when the chain is intact.
    pub first_bad: Option<(u64, String)>,
    /// Records a `store.repair` removed as damaged (and named in its audit record).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<u64>,
}

/// Filters for `list`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub applet: Option<String>,
    pub actor: Option<String>,
    pub status: Option<String>,
    pub kind: Option<String>,
    pub run_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, r: &AuditRecord) -> bool {
        let applet_ok =
            self.applet.as_ref().is_none_or(|a| r.applet.as_deref().is_some_and(|ra| ra == a || ra.split('@').next() == Some(a.as_str())));
        applet_ok
            && self.actor.as_ref().is_none_or(|a| r.actor.as_deref() == Some(a))
            && self.status.as_ref().is_none_or(|s| r.status.as_deref() == Some(s))
            && self.kind.as_ref().is_none_or(|k| &r.kind == k)
            && self.run_id.as_ref().is_none_or(|id| r.run_id.as_deref().is_some_and(|rid| rid.starts_with(id.as_str())))
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time <= t)
    }
}

/// Handle to the audit tree: `r<seq>` records, `h` the chain head, `c` the checkpoint.
///
/// An append is one plain insert. The stored head, which is what catches records cut from the end,
/// is written with the checkpoint: every few hundred appends and whenever the store is flushed
/// or closed (the CLI flushes after a run's start and at exit). `open` moves a head left behind
/// by a crash forward over the records that chain correctly after it.
///
/// Open runs (a `run.start` without its `run.end`) are tracked in memory. The checkpoint is a
/// record number before which every run has ended; it is written every few hundred appends and
/// when the store is flushed or closed, and `open` rebuilds the open runs by reading the records
/// after it. So a killed process costs the next one a short scan, and a run costs no extra writes.
#[derive(Clone)]
pub struct AuditLog {
    tree: Tree,
    /// Serializes appends. One process holds the data dir at a time, so this cached state is
    /// authoritative.
    state: Arc<Mutex<LogState>>,
    /// Called with each record appended, in order, under the append lock (an `opslet worker`
    /// sends its runs' records to the control plane's chain this way).
    tap: Arc<parking_lot::RwLock<Option<Tap>>>,
    /// Further taps, each kept for as long as the log (see [`AuditLog::add_tap`]).
    taps: Arc<parking_lot::RwLock<Vec<Tap>>>,
}

/// See [`AuditLog::set_tap`].
pub type Tap = Arc<dyn Fn(&AuditRecord) + Send + Sync>;

struct LogState {
    head: Head,
    /// Run id -> seq of its `run.start`, for runs without a `run.end` yet.
    open: std::collections::BTreeMap<String, u64>,
    since_checkpoint: u32,
    /// The head count and checkpoint as stored, to skip writing them again unchanged.
    stored: (u64, u64),
}

const RECORD: u8 = b'r';
const HEAD: &[u8] = b"h";
const CHECKPOINT: &[u8] = b"c";
const CHECKPOINT_EVERY: u32 = 256;

/// The key of record `seq`.
pub fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The record number a key names (the inverse of [`record_key`]).
pub fn record_seq(key: &[u8]) -> Option<u64> {
    match key {
        [RECORD, seq @ ..] => Some(u64::from_be_bytes(seq.try_into().ok()?)),
        _ => None,
    }
}

impl AuditLog {
    /// Opens the log kept in `tree` (the store's `audit` tree).
    pub fn open(tree: Tree) -> Result<AuditLog, Error> {
        let stored = read_head(&tree)?;
        // Records appended after the last head write (a crash before the next flush) are taken
        // in as long as each one chains onto the one before.
        let mut head = stored.clone();
        for item in tree.range(record_key(head.count)..=record_key(u64::MAX)) {
            let (_, v) = item?;
            match serde_json::from_slice::<AuditRecord>(&v) {
                Ok(rec) if rec.seq == head.count && rec.prev == head.hash && rec.compute_hash() == rec.hash => {
                    head = Head { count: rec.seq + 1, hash: rec.hash };
                }
                _ => break,
            }
        }
        // Records past a gap (a repair removed a damaged one): the head follows the newest record,
        // so an append never reuses a seq; `verify` still names the gap.
        if let Some(item) = tree.range(record_key(head.count)..=record_key(u64::MAX)).next_back() {
            let (_, v) = item?;
            let last: AuditRecord =
                serde_json::from_slice(&v).map_err(|e| Error::Store(format!("the newest audit record is unreadable: {e}")))?;
            if last.seq >= head.count {
                head = Head { count: last.seq + 1, hash: last.hash };
            }
        }
        if head != stored {
            tree.insert(HEAD, serde_json::to_vec(&head).expect("head serializes"))?;
        }
        let checkpoint = match tree.get(CHECKPOINT)? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| Error::Store("audit checkpoint is corrupt".into()))?),
            None => 0,
        };
        let mut open = std::collections::BTreeMap::new();
        for item in tree.range(record_key(checkpoint)..=record_key(u64::MAX)) {
            let (k, v) = item?;
            let rec: AuditRecord =
                serde_json::from_slice(&v).map_err(|e| Error::Store(format!("audit record {:?} is unreadable: {e}", &k[1..])))?;
            match (rec.kind.as_str(), rec.run_id) {
                ("run.start", Some(id)) => {
                    open.insert(id, rec.seq);
                }
                ("run.end", Some(id)) => {
                    open.remove(&id);
                }
                _ => {}
            }
        }
        Ok(AuditLog {
            tree,
            state: Arc::new(Mutex::new(LogState { stored: (head.count, checkpoint), head, open, since_checkpoint: 0 })),
            tap: Default::default(),
            taps: Default::default(),
        })
    }

    /// The chain head: the stored head as found at open, moved forward by every append since.
    pub fn head(&self) -> Result<Head, Error> {
        Ok(self.state.lock().head.clone())
    }

    /// Appends one record and moves the head.
    pub fn append(&self, ev: AuditEvent) -> Result<AuditRecord, Error> {
        let mut state = self.state.lock();
        self.append_locked(&mut state, ev, None)
    }

    /// Appends `ev` unless `mark` (a key of tree `marks`) is already there, and writes the mark
    /// in the same write as the record: a record that arrives twice (a queue redelivering a
    /// worker's event) is in the chain once. Returns None for a repeat.
    pub fn append_once(&self, ev: AuditEvent, marks: &Tree, mark: &[u8]) -> Result<Option<AuditRecord>, Error> {
        let mut state = self.state.lock();
        if marks.contains_key(mark)? {
            return Ok(None);
        }
        self.append_locked(&mut state, ev, Some((marks, mark))).map(Some)
    }

    /// Calls `tap` with every record appended from now on (None: stop).
    pub fn set_tap(&self, tap: Option<Tap>) {
        *self.tap.write() = tap;
    }

    /// Calls `tap` with every record appended from now on, besides the one [`AuditLog::set_tap`]
    /// sets and any added before (the notifier's watch for drift). A tap runs under the append
    /// lock: it must be quick and must not append.
    pub fn add_tap(&self, tap: Tap) {
        self.taps.write().push(tap);
    }

    /// Appends `ev` (a `run.end`) only while run `run_id` is still open; atomic with respect to
    /// other appends, so a run never gets two ends.
    pub fn end_if_open(&self, run_id: &str, ev: AuditEvent) -> Result<Option<AuditRecord>, Error> {
        let mut state = self.state.lock();
        if !state.open.contains_key(run_id) {
            return Ok(None);
        }
        self.append_locked(&mut state, ev, None).map(Some)
    }

    fn append_locked(&self, state: &mut LogState, ev: AuditEvent, mark: Option<(&Tree, &[u8])>) -> Result<AuditRecord, Error> {
        let mut rec = AuditRecord {
            seq: state.head.count,
            time: Utc::now(),
            kind: ev.kind,
            run_id: ev.run_id,
            actor: ev.actor,
            via: ev.via,
            applet: ev.applet,
            status: ev.status,
            data: ev.data,
            prev: state.head.hash.clone(),
            hash: String::new(),
        };
        let body = rec.seal();
        let written = match mark {
            None => self.tree.put(record_key(rec.seq), body.as_slice()),
            Some((marks, key)) => self.tree.transaction(|tx| {
                tx.insert(&self.tree, record_key(rec.seq), body.as_slice())?;
                tx.insert(marks, key, b"")
            }),
        };
        written.map_err(|e| Error::Store(format!("writing audit record: {e}")))?;
        state.head = Head { count: rec.seq + 1, hash: rec.hash.clone() };
        match (rec.kind.as_str(), &rec.run_id) {
            ("run.start", Some(id)) => {
                state.open.insert(id.clone(), rec.seq);
            }
            ("run.end", Some(id)) => {
                state.open.remove(id);
            }
            _ => {}
        }
        state.since_checkpoint += 1;
        if state.since_checkpoint >= CHECKPOINT_EVERY {
            self.write_checkpoint(state)?;
        }
        if let Some(tap) = self.tap.read().as_ref() {
            tap(&rec);
        }
        for tap in self.taps.read().iter() {
            tap(&rec);
        }
        Ok(rec)
    }

    /// Records a successful change made by `actor` through `via` (registry, auth, cmdb, ...).
    pub fn record_change(&self, kind: &str, actor: &str, via: &str, applet: Option<&str>, data: serde_json::Value) -> Result<(), Error> {
        self.append(AuditEvent {
            kind: kind.into(),
            actor: Some(actor.into()),
            via: Some(via.into()),
            applet: applet.map(str::to_string),
            status: Some("ok".into()),
            data,
            ..AuditEvent::default()
        })
        .map(|_| ())
    }

    /// Stores the head, and how far back `open` must read to find every open run.
    pub fn checkpoint(&self) -> Result<(), Error> {
        let mut state = self.state.lock();
        self.write_checkpoint(&mut state)
    }

    fn write_checkpoint(&self, state: &mut LogState) -> Result<(), Error> {
        let seq = state.open.values().min().copied().unwrap_or(state.head.count);
        state.since_checkpoint = 0;
        if state.stored == (state.head.count, seq) {
            return Ok(());
        }
        let head = serde_json::to_vec(&state.head).expect("head serializes");
        self.tree.transaction(|tx| {
            tx.insert(&self.tree, HEAD, &head)?;
            tx.insert(&self.tree, CHECKPOINT, seq.to_be_bytes())
        })?;
        state.stored = (state.head.count, seq);
        Ok(())
    }

    /// Run ids that have a `run.start` but no `run.end`, with the seq of their start.
    pub fn open_runs(&self) -> Result<Vec<(String, u64)>, Error> {
        Ok(self.state.lock().open.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    /// Closes every run left open by a process that died: each gets a `run.end` with status
    /// `interrupted`. Only call while holding the store exclusively (no run of ours is in flight).
    pub fn close_interrupted(&self) -> Result<usize, Error> {
        let open = self.open_runs()?;
        for (run_id, start_seq) in &open {
            let start = self.get(*start_seq)?;
            let applet = start.as_ref().and_then(|s| s.applet.clone());
            self.append(AuditEvent {
                kind: "run.end".into(),
                run_id: Some(run_id.clone()),
                actor: start.as_ref().and_then(|s| s.actor.clone()),
                via: start.as_ref().and_then(|s| s.via.clone()),
                applet: applet.clone(),
                status: Some("interrupted".into()),
                data: serde_json::json!({ "error": "the process running this applet stopped before the run ended", "start_seq": start_seq }),
            })?;
            tracing::warn!(run_id = %run_id, applet = applet.as_deref().unwrap_or(""), "run left open by a stopped process recorded as interrupted");
        }
        if !open.is_empty() {
            self.checkpoint()?;
        }
        Ok(open.len())
    }

    pub fn get(&self, seq: u64) -> Result<Option<AuditRecord>, Error> {
        match self.tree.get(record_key(seq))? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| Error::Store(format!("audit record {seq} is unreadable: {e}")))?)),
            None => Ok(None),
        }
    }

    /// Records matching `filter`, oldest first (the newest `limit` of them).
    pub fn list(&self, filter: &Filter) -> Result<Vec<AuditRecord>, Error> {
        let mut out = self.list_newest(filter, None)?;
        out.reverse();
        Ok(out)
    }

    /// The newest records that match, newest first, only those before record `before` (a
    /// cursor: the last record number of the page before).
    pub fn list_newest(&self, filter: &Filter, before: Option<u64>) -> Result<Vec<AuditRecord>, Error> {
        let mut out = Vec::new();
        let items = match before {
            Some(seq) => self.tree.range(record_key(0)..record_key(seq)),
            None => self.tree.scan_prefix([RECORD]),
        };
        for item in items.rev() {
            let (k, v) = item?;
            let rec: AuditRecord =
                serde_json::from_slice(&v).map_err(|e| Error::Store(format!("audit record {:?} is unreadable: {e}", k.as_slice())))?;
            if filter.matches(&rec) {
                out.push(rec);
                if filter.limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Walks the whole chain and reports the first record that does not fit.
    ///
    /// Records that a `store.repair` record (written by opslet itself) names as lost are
    /// reported in `lost`, not as a break: the chain is checked on both sides of such a gap, and
    /// only the link across it cannot be (the record it pointed at is gone).
    pub fn verify(&self) -> Result<VerifyReport, Error> {
        let head = self.head()?;
        let mut expected_seq = 0u64;
        let mut prev = GENESIS.to_string();
        let mut hard = None;
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        let mut declared = std::collections::BTreeSet::new();
        for item in self.tree.scan_prefix([RECORD]) {
            let (k, v) = item?;
            let key_seq = record_seq(&k).unwrap_or(u64::MAX);
            let rec: AuditRecord = match serde_json::from_slice(&v) {
                Ok(r) => r,
                Err(e) => {
                    hard = Some((key_seq, format!("record is not valid JSON: {e}")));
                    break;
                }
            };
            let after_gap = key_seq > expected_seq;
            if after_gap {
                gaps.push((expected_seq, key_seq - 1));
                expected_seq = key_seq;
            }
            let problem = if key_seq < expected_seq {
                Some(format!("record {key_seq} is out of place"))
            } else if rec.seq != key_seq {
                Some(format!("record stored at {key_seq} says it is record {} (moved or reordered)", rec.seq))
            } else if !after_gap && rec.prev != prev {
                Some("its `prev` hash does not match the record before it (a record was removed, replaced or reordered)".into())
            } else if rec.compute_hash() != rec.hash {
                Some("its content does not match its hash (the record was edited)".into())
            } else {
                None
            };
            if let Some(p) = problem {
                hard = Some((key_seq, p));
                break;
            }
            // Only opslet's own repair record counts (kind, actor and `via` together: an account
            // or a login called `opslet` never writes this kind).
            if rec.kind == "store.repair" && rec.actor.as_deref() == Some(super::SYSTEM_ACTOR) && rec.via.as_deref() == Some("store") {
                declared.extend(rec.data["lost_audit_records"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_u64));
            }
            prev = rec.hash.clone();
            expected_seq += 1;
        }
        let mut lost = Vec::new();
        let mut first_bad = None;
        for (from, to) in gaps {
            if (from..=to).all(|s| declared.contains(&s)) {
                lost.extend(from..=to);
            } else {
                let what = if from == to { format!("record {from} is missing") } else { format!("records {from} to {to} are missing") };
                first_bad = Some((from, what));
                break;
            }
        }
        if let Some((seq, why)) = hard
            && first_bad.as_ref().is_none_or(|(s, _)| seq < *s)
        {
            first_bad = Some((seq, why));
        }
        if first_bad.is_none() {
            if head.count > expected_seq {
                first_bad = Some((
                    expected_seq,
                    format!("the log holds {expected_seq} records but its head says {} (records were removed from the end)", head.count),
                ));
            } else if head.count < expected_seq || (expected_seq > 0 && head.hash != prev) {
                first_bad = Some((
                    head.count,
                    format!(
                        "the head (count {}, hash {}) does not match the last record (the head was rewritten)",
                        head.count,
                        &head.hash[..12.min(head.hash.len())]
                    ),
                ));
            }
        }
        Ok(VerifyReport { records: expected_seq, head, first_bad, lost })
    }

    /// Raw access for tests that tamper with the log on purpose (keys: [`record_key`]).
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &Tree {
        &self.tree
    }
}

fn read_head(tree: &Tree) -> Result<Head, Error> {
    Ok(match tree.get(HEAD)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Store(format!("audit head is corrupt: {e}")))?,
        None => Head { count: 0, hash: GENESIS.to_string() },
    })
}
