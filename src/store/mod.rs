//! The embedded sled store under the data dir: audit log, per-applet kv (and, later, the registry).
//! Every tree name lives in `keys`.

pub mod audit;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Names of every sled tree opslet uses.
pub mod keys {
    /// Audit records, chain head and open runs (see `audit`).
    pub const AUDIT: &str = "audit";
    /// Registry: packages by content hash, versions by `name@version`, applets by name,
    /// featured collections by name.
    pub const REG_PACKAGES: &str = "reg/packages";
    pub const REG_VERSIONS: &str = "reg/versions";
    pub const REG_APPLETS: &str = "reg/applets";
    pub const REG_FEATURES: &str = "reg/features";
    /// Accounts, API tokens (by id; only secret hashes) and run grants.
    pub const AUTH_USERS: &str = "auth/users";
    pub const AUTH_TOKENS: &str = "auth/tokens";
    pub const AUTH_GRANTS: &str = "auth/grants";
    /// User name -> argon2id hash of the console password.
    pub const AUTH_PASSWORDS: &str = "auth/passwords";
    /// Jobs accepted by `opslet serve`, by id; and the params they were given, until they end.
    pub const JOBS: &str = "jobs";
    pub const JOB_PARAMS: &str = "jobs/params";
    /// Webhooks by name, and the delivery signatures seen within the replay window.
    pub const HOOKS: &str = "hooks";
    pub const HOOKS_SEEN: &str = "hooks/seen";
    /// cmdb hosts by name, and groups with their parent groups.
    pub const CMDB_HOSTS: &str = "cmdb/hosts";
    pub const CMDB_GROUPS: &str = "cmdb/groups";
    /// Network devices' configuration backups: `device \0 version (u32 big-endian)` -> backup.
    pub const CMDB_DEVICE_CONFIGS: &str = "cmdb/device-configs";
    /// Config items: `name \0 version (u32 big-endian)` -> version; `name \0 host` -> what the host runs.
    pub const CMDB_CONFIG_ITEMS: &str = "cmdb/config-items";
    pub const CMDB_CONFIG_STATE: &str = "cmdb/config-state";
    /// Secrets by name, encrypted (see `secrets`).
    pub const SECRETS: &str = "secrets";
    /// Store-wide settings, such as the layout version under `FORMAT`.
    pub const META: &str = "meta";
    pub const FORMAT: &str = "format";
    pub const KV_PREFIX: &str = "kv/";
}

/// A handle to the data dir's store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    audit: audit::AuditLog,
    dir: PathBuf,
    sync: parking_lot::Mutex<SyncState>,
    synced: parking_lot::Condvar,
    /// The folder of a temporary store, removed with it (declared last: dropped after the db).
    _tmp: Option<tempfile::TempDir>,
}

/// Group commit: callers of `flush` take a ticket; one of them flushes for everyone whose
/// writes came before the flush started.
#[derive(Default)]
struct SyncState {
    requested: u64,
    done: u64,
    flushing: bool,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`. sled allows one process at a time, so a
    /// busy store is retried for up to `wait` before giving up with a clear error.
    pub fn open(data_dir: &Path, wait: Duration) -> Result<Store, Error> {
        if !data_dir.exists() {
            std::fs::create_dir_all(data_dir).map_err(|e| Error::Store(format!("creating data dir {}: {e}", data_dir.display())))?;
            // Audit log, kv values, jobs and hook secrets: for this user only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::Store(format!("restricting data dir {}: {e}", data_dir.display())))?;
        }
        let path = data_dir.join("db");
        let start = Instant::now();
        let db = loop {
            match sled::Config::new().path(&path).flush_every_ms(Some(1000)).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&e) && start.elapsed() < wait => std::thread::sleep(Duration::from_millis(25)),
                Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                    return Err(Error::Store(format!(
                        "data dir {} is in use by another opslet process (waited {}s); wait for it to finish or use another --data-dir",
                        data_dir.display(),
                        wait.as_secs()
                    )));
                }
                Err(e) => return Err(Error::Store(format!("opening data store {}: {e}", path.display()))),
            }
        };
        check_format(&db, &path)?;
        let audit = audit::AuditLog::open(&db)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                audit,
                dir: data_dir.to_path_buf(),
                sync: Default::default(),
                synced: Default::default(),
                _tmp: None,
            }),
        })
    }

    /// A throwaway store in a folder of its own under the system's temporary directory (tests,
    /// benchmarks, embedders); the folder, and any file written beside the store (such as the
    /// secret key), is removed when the last handle is dropped.
    pub fn temporary() -> Result<Store, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("opslet-store-")
            .tempdir()
            .map_err(|e| Error::Store(format!("creating a temporary data dir: {e}")))?;
        let db = sled::Config::new().path(tmp.path().join("db")).temporary(true).open()?;
        check_format(&db, tmp.path())?;
        let audit = audit::AuditLog::open(&db)?;
        let dir = tmp.path().to_path_buf();
        Ok(Store { inner: Arc::new(Inner { db, audit, dir, sync: Default::default(), synced: Default::default(), _tmp: Some(tmp) }) })
    }

    pub fn audit(&self) -> &audit::AuditLog {
        &self.inner.audit
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn kv_tree(&self, applet: &str) -> Result<sled::Tree, Error> {
        Ok(self.inner.db.open_tree(format!("{}{applet}", keys::KV_PREFIX))?)
    }

    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Writes everything to disk (fsync).
    ///
    /// Concurrent callers share one fsync: the writes of every caller that asked before a flush
    /// started are on disk when that flush ends.
    pub fn flush(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let mut st = inner.sync.lock();
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.done >= ticket {
                return Ok(());
            }
            if !st.flushing {
                st.flushing = true;
                let target = st.requested;
                drop(st);
                let result = inner.audit.checkpoint().and_then(|()| inner.db.flush().map(|_| ()).map_err(Error::from));
                st = inner.sync.lock();
                st.flushing = false;
                if result.is_ok() {
                    st.done = st.done.max(target);
                }
                inner.synced.notify_all();
                result?;
                continue;
            }
            inner.synced.wait(&mut st);
        }
    }
}

/// Layout version of the store; a data dir of another version is refused, never misread.
pub const FORMAT: u32 = 1;

fn check_format(db: &sled::Db, path: &Path) -> Result<(), Error> {
    let meta = db.open_tree(keys::META)?;
    match meta.get(keys::FORMAT)? {
        None => {
            meta.insert(keys::FORMAT, &FORMAT.to_be_bytes())?;
            Ok(())
        }
        Some(v) if v.as_ref() == FORMAT.to_be_bytes() => Ok(()),
        Some(v) => {
            let found = v.as_ref().try_into().map(u32::from_be_bytes).map_or_else(|_| "unknown".to_string(), |n| n.to_string());
            Err(Error::Store(format!("data store {} has layout version {found}; this opslet reads version {FORMAT}", path.display())))
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A clean close leaves a fresh checkpoint, so the next open reads almost nothing.
        if let Err(e) = self.audit.checkpoint().and_then(|()| self.db.flush().map(|_| ()).map_err(Error::from)) {
            tracing::warn!(error = %e, "closing the data store");
        }
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock")
}
