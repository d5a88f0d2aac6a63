//! The data dir's store: ordered key-value trees in one SQLite file (see `engine`), with the
//! audit log on top. Every tree name lives in `keys`; a data dir written by an older opslet (sled,
//! under `db/`) is migrated on first open (see `migrate`); `check` finds damaged records and
//! `repair` copies the sound ones into a fresh file.

pub mod anchor;
pub mod audit;
pub mod check;
mod engine;
mod migrate;

pub use engine::{Entry, Iter, Tree, Tx};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Names of every tree opslet uses.
pub mod keys {
    /// Audit records, chain head and open runs (see `audit`).
    pub const AUDIT: &str = "audit";
    /// Registry: packages by content hash, versions by `name@version`, applets by name,
    /// featured collections by name.
    pub const REG_PACKAGES: &str = "reg/packages";
    pub const REG_VERSIONS: &str = "reg/versions";
    pub const REG_APPLETS: &str = "reg/applets";
    pub const REG_FEATURES: &str = "reg/features";
    /// Publisher keys `opslet import` trusts: name -> key id (`ed25519:HEX`).
    pub const REG_TRUST: &str = "reg/trust";
    /// Accounts, API tokens (by id; only secret hashes) and run grants.
    pub const AUTH_USERS: &str = "auth/users";
    pub const AUTH_TOKENS: &str = "auth/tokens";
    pub const AUTH_GRANTS: &str = "auth/grants";
    /// User name -> argon2id hash of the console password.
    pub const AUTH_PASSWORDS: &str = "auth/passwords";
    /// Jobs accepted by `opslet serve`, by id; and the params they were given, until they end.
    pub const JOBS: &str = "jobs";
    pub const JOB_PARAMS: &str = "jobs/params";
    /// Ids of jobs that have not ended (queued or running), so a restart reads only those.
    pub const JOBS_OPEN: &str = "jobs/open";
    /// In `META`: set once `JOBS_OPEN` holds every open job (data dirs from before it existed
    /// are indexed by one full read on the first start).
    pub const JOBS_OPEN_INDEXED: &str = "jobs-open-indexed";
    /// Webhooks by name, and the delivery signatures seen within the replay window.
    /// Worker events the control plane applied (`<run id>.<n>`), so a redelivered one is not
    /// applied twice.
    pub const QUEUE_APPLIED: &str = "queue/applied";
    /// Runs JetStream took, by id: the SHA-256 of the run's secret credential (so a restarted
    /// control plane still answers its workers, and republishes only what was never taken).
    pub const QUEUE_PUBLISHED: &str = "queue/published";
    pub const HOOKS: &str = "hooks";
    pub const HOOKS_SEEN: &str = "hooks/seen";
    /// Notification deliveries by id (UUIDv7, so oldest first): where to, what, and each
    /// attempt's outcome (see `service::notify`); the newest 10,000 are kept.
    pub const NOTIFY_DELIVERIES: &str = "notify/deliveries";
    /// Schedules by name (see `service::schedule`): applet, cron, zone, owner, next and last fire.
    pub const SCHEDULES: &str = "schedules";
    /// Web console sessions, by the SHA-256 of the session id: user, CSRF token, expiry.
    pub const HTTP_SESSIONS: &str = "http/sessions";
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
    engine: Arc<engine::Engine>,
    audit: audit::AuditLog,
    dir: PathBuf,
    /// The folder of a temporary store, removed with it (declared last: dropped after the engine).
    _tmp: Option<tempfile::TempDir>,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`. One process holds a data dir at a time,
    /// so a busy one is retried for up to `wait` before giving up with a clear error.
    pub fn open(data_dir: &Path, wait: Duration) -> Result<Store, Error> {
        if !data_dir.exists() {
            std::fs::create_dir_all(data_dir).map_err(|e| Error::Store(format!("creating data dir {}: {e}", data_dir.display())))?;
            // Audit log, kv values, jobs and hook secrets: for this user only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::Store(format!("restricting data dir {}: {e}", data_dir.display())))?;
        }
        let lock = lock_data_dir(data_dir, wait)?;
        restrict_data_dir(data_dir)?;
        let path = data_dir.join(engine::FILE);
        let migrated = migrate::from_sled_if_needed(data_dir, &path, wait)?;
        let store = Store::with_engine(engine::Engine::open(&path, Some(lock))?, data_dir.to_path_buf(), None)?;
        if let Some(copied) = migrated {
            let data = serde_json::json!({ "from": "sled", "kept": migrate::SLED_KEPT, "records": copied });
            store.audit().record_change("store.migrate", SYSTEM_ACTOR, "store", None, data)?;
            store.flush()?;
        }
        Ok(store)
    }

    /// A throwaway store in a folder of its own under the system's temporary directory (tests,
    /// benchmarks, embedders); the folder, and any file written beside the store (such as the
    /// secret key), is removed when the last handle is dropped.
    pub fn temporary() -> Result<Store, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("opslet-store-")
            .tempdir()
            .map_err(|e| Error::Store(format!("creating a temporary data dir: {e}")))?;
        let engine = engine::Engine::open(&tmp.path().join(engine::FILE), None)?;
        let dir = tmp.path().to_path_buf();
        Store::with_engine(engine, dir, Some(tmp))
    }

    fn with_engine(engine: engine::Engine, dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Result<Store, Error> {
        let engine = Arc::new(engine);
        check_format(&Tree::new(engine.clone(), keys::META), engine.path())?;
        let audit = audit::AuditLog::open(Tree::new(engine.clone(), keys::AUDIT))?;
        Ok(Store { inner: Arc::new(Inner { engine, audit, dir, _tmp: tmp }) })
    }

    pub fn audit(&self) -> &audit::AuditLog {
        &self.inner.audit
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The tree called `name` (see `keys`); an empty tree until something is written to it.
    pub fn tree(&self, name: &str) -> Tree {
        Tree::new(self.inner.engine.clone(), name)
    }

    /// Names of every tree that holds records.
    pub fn tree_names(&self) -> Result<Vec<String>, Error> {
        self.inner.engine.tree_names()
    }

    /// An applet's own `kv` tree.
    pub fn kv_tree(&self, applet: &str) -> Tree {
        self.tree(&format!("{}{applet}", keys::KV_PREFIX))
    }

    /// Runs `f` as one transaction: its writes all commit when it returns `Ok`, none when `Err`.
    pub fn transaction<T>(&self, f: impl FnOnce(&Tx) -> Result<T, Error>) -> Result<T, Error> {
        self.inner.engine.transaction(f)
    }

    /// Writes everything to disk (fsync), with the audit log's checkpoint.
    ///
    /// Concurrent callers share one fsync: the writes of every caller that asked before a sync
    /// started are on disk when that sync ends.
    pub fn flush(&self) -> Result<(), Error> {
        self.inner.audit.checkpoint()?;
        self.inner.engine.sync()
    }
}

/// The actor of audit records opslet writes on its own (a migration, a repair).
pub const SYSTEM_ACTOR: &str = "opslet";

/// Layout version of the store; a data dir of another version is refused, never misread.
pub const FORMAT: u32 = 1;

fn check_format(meta: &Tree, path: &Path) -> Result<(), Error> {
    match meta.get(keys::FORMAT)? {
        None => {
            meta.insert(keys::FORMAT, FORMAT.to_be_bytes())?;
            Ok(())
        }
        Some(v) if v.as_slice() == FORMAT.to_be_bytes() => Ok(()),
        Some(v) => {
            let found = v.as_slice().try_into().map(u32::from_be_bytes).map_or_else(|_| "unknown".to_string(), |n| n.to_string());
            Err(Error::Store(format!("data store {} has layout version {found}; this opslet reads version {FORMAT}", path.display())))
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A clean close leaves a fresh checkpoint, so the next open reads almost nothing.
        if let Err(e) = self.audit.checkpoint().and_then(|()| self.engine.sync()) {
            tracing::warn!(error = %e, "closing the data store");
        }
    }
}

/// A data dir made beforehand (by a package, by hand) may be open to others: the folder becomes
/// 0700 and the store's own files (and the secret and anchor keys) 0600, each change said once
/// in the log. One of them owned by another user is refused: whoever owns it could have
/// planted it, or keep a way in.
fn restrict_data_dir(data_dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let tighten = |path: &Path, mode: u32| -> Result<(), Error> {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
        if meta.uid() != me {
            return Err(Error::Store(format!(
                "{} belongs to uid {}, not to this user (uid {me}): opslet does not use a data dir whose files another user owns",
                path.display(),
                meta.uid()
            )));
        }
        let open = meta.mode() & 0o077;
        if open == 0 || meta.file_type().is_symlink() {
            return Ok(());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::Store(format!("restricting {} to its owner: {e}", path.display())))?;
        tracing::warn!(path = %path.display(), was = format!("{:o}", meta.mode() & 0o777), now = format!("{mode:o}"), "restricted to its owner");
        Ok(())
    };
    tighten(data_dir, 0o700)?;
    for name in [engine::FILE, "store.sqlite-wal", "store.sqlite-shm", engine::LOCK_FILE, "secret.key", anchor::KEY_FILE] {
        tighten(&data_dir.join(name), 0o600)?;
    }
    Ok(())
}

/// Takes the data dir's process lock (`flock` on `store.lock`), retrying for up to `wait`.
fn lock_data_dir(data_dir: &Path, wait: Duration) -> Result<std::fs::File, Error> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(engine::LOCK_FILE);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)
    }
    .map_err(|e| Error::Store(format!("opening {}: {e}", path.display())))?;
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(Error::Store(format!("locking {}: {e}", path.display())));
        }
        if start.elapsed() >= wait {
            return Err(Error::Store(format!(
                "data dir {} is in use by another opslet process (waited {}s); wait for it to finish or use another --data-dir",
                data_dir.display(),
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
