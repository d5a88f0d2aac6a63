//! Anchors of the audit chain: the head (record count and last hash), signed with the data
//! dir's anchor key (ed25519) and appended as one JSON line to a file kept elsewhere (another
//! mount, a log shipper's input). The chain alone cannot show that records were cut from its
//! end by someone who can write the data dir; an anchor taken before can.
//!
//! An anchor line: `{"time", "count", "hash", "key", "sig"}`, `key` the public key (hex) and
//! `sig` the signature (hex) of `opslet-audit-anchor\0<count>\0<hash>\0<time>`.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::audit::AuditLog;
use crate::error::Error;

/// The anchor signing key in the data dir (32 random bytes, hex; mode 0600).
pub const KEY_FILE: &str = "audit-anchor.key";

/// One anchor line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anchor {
    pub time: DateTime<Utc>,
    pub count: u64,
    pub hash: String,
    /// The public key that signed it, hex.
    pub key: String,
    pub sig: String,
}

/// What the last anchor says of the chain now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The anchored record is still there with its hash (the chain may have grown since).
    Matches,
    /// The chain has fewer records than were anchored: records were removed from its end.
    Cut { records: u64 },
    /// The anchored record has another hash now: the chain was rewritten.
    Rewritten,
    /// The anchor's signature does not verify.
    BadSignature,
    /// The anchor was signed by another key than this data dir's (or than the anchors before
    /// it).
    OtherKey,
    /// The file has anchors but the data dir has no anchor key (it was removed).
    KeyMissing,
    /// An anchor has fewer records than one before it: the chain was cut between them, and
    /// anchored again.
    WentBack { line: usize },
}

impl Check {
    pub fn is_ok(&self) -> bool {
        *self == Check::Matches
    }

    /// Why the chain does not match the anchor (for `audit verify`).
    pub fn describe(&self, a: &Anchor) -> String {
        match self {
            Check::Matches => format!("matches the last anchor ({} records, {})", a.count, a.time.format("%Y-%m-%d %H:%M:%S UTC")),
            Check::Cut { records } => format!(
                "{} records were anchored at {}, but the log has {records}: records were removed from its end",
                a.count,
                a.time.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Check::Rewritten => {
                format!("record {} no longer has the hash anchored at {}: the chain was rewritten", a.count.saturating_sub(1), a.time)
            }
            Check::BadSignature => "the last anchor's signature does not verify: the anchor file was altered".into(),
            Check::OtherKey => "an anchor was signed by another key than this data dir's anchor key (or than the anchors before it)".into(),
            Check::KeyMissing => format!("the anchor file has anchors but the data dir has no {KEY_FILE}: it was removed"),
            Check::WentBack { line } => {
                format!("anchor line {line} has fewer records than one before it: the log was cut and anchored again")
            }
        }
    }
}

fn message(count: u64, hash: &str, time: &DateTime<Utc>) -> Vec<u8> {
    format!("opslet-audit-anchor\0{count}\0{hash}\0{}", time.to_rfc3339()).into_bytes()
}

/// The data dir's anchor key, made on first use.
fn signing_key(data_dir: &Path) -> Result<SigningKey, Error> {
    let path = data_dir.join(KEY_FILE);
    let bad = |why: String| Error::Store(format!("{}: {why}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(SigningKey::from_bytes(&crate::util::parse_key32(&text).ok_or_else(|| bad("not a 64-digit hex key".into()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(SigningKey::from_bytes(&crate::util::create_key32(&path).map_err(|e| bad(e.to_string()))?))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// This data dir's anchor public key (hex), when it has one.
pub fn public_key(data_dir: &Path) -> Result<Option<String>, Error> {
    if !data_dir.join(KEY_FILE).exists() {
        return Ok(None);
    }
    Ok(Some(hex::encode(signing_key(data_dir)?.verifying_key().to_bytes())))
}

/// Signs the chain's head and appends it to `dest` (made 0600 when new), synced. Refused when
/// the chain no longer matches the anchors already there: a cut chain is never anchored over.
pub fn write(audit: &AuditLog, data_dir: &Path, dest: &Path) -> Result<Anchor, Error> {
    if let Some((last, c)) = check_file(audit, data_dir, dest)?
        && !c.is_ok()
    {
        return Err(Error::Store(format!("not anchoring over {}: {}", dest.display(), c.describe(&last))));
    }
    let key = signing_key(data_dir)?;
    let head = audit.head()?;
    let time = Utc::now();
    let sig = key.sign(&message(head.count, &head.hash, &time));
    let anchor = Anchor {
        time,
        count: head.count,
        hash: head.hash,
        key: hex::encode(key.verifying_key().to_bytes()),
        sig: hex::encode(sig.to_bytes()),
    };
    let fail = |e: std::io::Error| Error::Store(format!("writing the audit anchor to {}: {e}", dest.display()));
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(dest).map_err(fail)?;
    let mut line = serde_json::to_vec(&anchor).expect("anchors serialize");
    line.push(b'\n');
    f.write_all(&line).and_then(|()| f.sync_data()).map_err(fail)?;
    Ok(anchor)
}

/// Every anchor in `dest`, with its line number (lines that do not parse, such as a last line
/// cut short by a crash, are skipped).
pub fn all(dest: &Path) -> Result<Vec<(usize, Anchor)>, Error> {
    let text = match std::fs::read_to_string(dest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Store(format!("reading the audit anchors in {}: {e}", dest.display()))),
    };
    Ok(text.lines().enumerate().filter_map(|(i, l)| serde_json::from_str(l).ok().map(|a| (i + 1, a))).collect())
}

/// The last anchor in `dest`, if any.
pub fn last(dest: &Path) -> Result<Option<Anchor>, Error> {
    Ok(all(dest)?.pop().map(|(_, a)| a))
}

/// Checks every anchor of `dest`: each signed by one key, this data dir's; their counts never
/// going back; the last one against the chain now. None when there are no anchors yet.
pub fn check_file(audit: &AuditLog, data_dir: &Path, dest: &Path) -> Result<Option<(Anchor, Check)>, Error> {
    let anchors = all(dest)?;
    let Some((_, last)) = anchors.last().cloned() else { return Ok(None) };
    let mine = public_key(data_dir)?;
    let first_key = anchors[0].1.key.clone();
    let mut before: Option<&Anchor> = None;
    for (line, a) in &anchors {
        if !signed(a) {
            return Ok(Some((a.clone(), Check::BadSignature)));
        }
        if a.key != first_key || mine.as_ref().is_some_and(|m| *m != a.key) {
            return Ok(Some((a.clone(), Check::OtherKey)));
        }
        if let Some(b) = before
            && (a.count < b.count || (a.count == b.count && a.hash != b.hash))
        {
            return Ok(Some((a.clone(), Check::WentBack { line: *line })));
        }
        before = Some(a);
    }
    if mine.is_none() {
        return Ok(Some((last, Check::KeyMissing)));
    }
    let c = check(audit, data_dir, &last)?;
    Ok(Some((last, c)))
}

fn signed(anchor: &Anchor) -> bool {
    hex::decode(&anchor.key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .zip(hex::decode(&anchor.sig).ok().and_then(|s| <[u8; 64]>::try_from(s).ok()).map(|s| ed25519_dalek::Signature::from_bytes(&s)))
        .is_some_and(|(k, s)| k.verify_strict(&message(anchor.count, &anchor.hash, &anchor.time), &s).is_ok())
}

/// Checks `anchor` against the chain now (and against this data dir's key, when it has one).
pub fn check(audit: &AuditLog, data_dir: &Path, anchor: &Anchor) -> Result<Check, Error> {
    if !signed(anchor) {
        return Ok(Check::BadSignature);
    }
    if public_key(data_dir)?.is_some_and(|mine| mine != anchor.key) {
        return Ok(Check::OtherKey);
    }
    let head = audit.head()?;
    if anchor.count == 0 {
        return Ok(Check::Matches);
    }
    if head.count < anchor.count {
        return Ok(Check::Cut { records: head.count });
    }
    match audit.get(anchor.count - 1)? {
        Some(r) if r.hash == anchor.hash => Ok(Check::Matches),
        Some(_) => Ok(Check::Rewritten),
        None => Ok(Check::Cut { records: head.count }),
    }
}
