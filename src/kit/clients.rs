//! The clients of a module's named connections (zabbix, es, s3, virt): kept from run to run so
//! logins, tokens and connection pools outlive a run, and made again when a secret a client was
//! made with reads differently (a rotated key takes effect at the next run, with no restart).
//! Each run reads the secrets once per connection it uses, so the run's redactor knows them and
//! a worker asks its secret source as for any other run. The connection's CA file (`ca_file`) is
//! read again each run too: new contents make a new client.
//!
//! A client serves the runs of one thread only. A run thread (`service::pool`) has an async
//! runtime of its own that turns only while the thread has a run, and a client's pooled
//! connections are driven by the runtime that opened them: shared with another thread, a
//! request could wait on a connection nobody drives until its timeout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::thread::ThreadId;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::runtime::context::RunCtx;

/// A secret as a client was made with it: its name and a digest of its text.
type Used = Vec<(String, [u8; 32])>;

/// Reads a secret's text by name (what a module's client maker is given).
pub type SecretReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

thread_local! {
    /// Dropped when the thread ends: the clients it made go with it.
    static THREAD_ALIVE: Arc<()> = Arc::new(());
}

struct Made<C> {
    used: Used,
    /// The CA file's contents when the client was made (None: no file, or it could not be read).
    ca: Option<[u8; 32]>,
    client: Arc<C>,
    thread: Weak<()>,
}

/// A module's clients, by connection and thread (one set per module instance: a new config
/// makes a new module and so new clients).
pub struct Clients<C> {
    made: Mutex<HashMap<(String, ThreadId), Made<C>>>,
}

impl<C> Default for Clients<C> {
    fn default() -> Self {
        Clients { made: Mutex::new(HashMap::new()) }
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn file_digest(path: Option<&Path>) -> Option<[u8; 32]> {
    std::fs::read(path?).ok().map(|b| Sha256::digest(&b).into())
}

impl<C> Clients<C> {
    /// This thread's client of connection `name`: the one made before if every secret it read
    /// and its CA file `ca_file` still read the same, else a new one from `make`. `owner`
    /// (`[es.NAME]`) names the config entry in the errors of a secret that is not set.
    pub fn get<F>(&self, ctx: &RunCtx, owner: &str, name: &str, ca_file: Option<&Path>, make: F) -> Result<Arc<C>, String>
    where
        F: FnOnce(SecretReader<'_>) -> Result<C, String>,
    {
        let read = |s: &str| super::read_secret(ctx, owner, s);
        let key = (name.to_string(), std::thread::current().id());
        let ca = file_digest(ca_file);
        let before = self.made.lock().get(&key).map(|m| (m.used.clone(), m.ca, Arc::clone(&m.client)));
        if let Some((used, ca_before, c)) = before {
            let mut same = ca_before == ca;
            for (secret, was) in &used {
                // Every secret is read (not only up to the first change): the run's redactor
                // learns each one. One that cannot be read fails the call.
                same &= digest(&read(secret)?) == *was;
            }
            if same {
                return Ok(c);
            }
        }
        let used = Mutex::new(Used::new());
        let recording = |s: &str| {
            let v = read(s)?;
            used.lock().push((s.to_string(), digest(&v)));
            Ok(v)
        };
        let client = Arc::new(make(&recording)?);
        let thread = THREAD_ALIVE.with(Arc::downgrade);
        let mut made = self.made.lock();
        // The clients of threads that ended are dropped here.
        made.retain(|_, m| m.thread.strong_count() > 0);
        made.insert(key, Made { used: used.into_inner(), ca, client: Arc::clone(&client), thread });
        Ok(client)
    }
}

/// One run's view of a module's [`Clients`]: each connection's client is looked up (and its
/// secrets read) once per run.
pub struct RunClients<C> {
    shared: Arc<Clients<C>>,
    run: Arc<Mutex<HashMap<String, Arc<C>>>>,
}

impl<C> Clone for RunClients<C> {
    fn clone(&self) -> Self {
        RunClients { shared: Arc::clone(&self.shared), run: Arc::clone(&self.run) }
    }
}

impl<C> RunClients<C> {
    pub fn new(shared: &Arc<Clients<C>>) -> Self {
        RunClients { shared: Arc::clone(shared), run: Arc::default() }
    }

    /// See [`Clients::get`].
    pub fn get<F>(&self, ctx: &RunCtx, owner: &str, name: &str, ca_file: Option<&Path>, make: F) -> Result<Arc<C>, String>
    where
        F: FnOnce(SecretReader<'_>) -> Result<C, String>,
    {
        if let Some(c) = self.run.lock().get(name) {
            return Ok(Arc::clone(c));
        }
        let c = self.shared.get(ctx, owner, name, ca_file, make)?;
        self.run.lock().insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::runtime::CancelToken;
    use crate::runtime::context::{Caller, RunCtx};
    use crate::runtime::limits::{Guard, RunLimits};

    /// A run whose secrets come from `secrets` (as on a worker).
    fn run(secrets: &Arc<Mutex<HashMap<String, String>>>) -> RunCtx {
        let secrets = Arc::clone(secrets);
        let limits = RunLimits {
            timeout: Duration::from_secs(10),
            cpu: Duration::from_secs(10),
            memory: 1 << 26,
            log_lines: 100,
            log_bytes: 1 << 16,
            result_bytes: 1 << 16,
            call_depth: 10,
        };
        RunCtx {
            run_id: "r".into(),
            applet: "a".into(),
            version: "1.0.0".into(),
            hash: String::new(),
            caller: Caller { user: "u".into(), via: "test".into() },
            dry_run: false,
            guard: Guard::new(limits, CancelToken::default()),
            redactor: Default::default(),
            store: None,
            package: None,
            logs: Default::default(),
            sink: None,
            kv_overlay: Default::default(),
            kv_limits: (0, 0),
            targets: Default::default(),
            plan: Default::default(),
            unapproved_envs: Vec::new(),
            exchange: None,
            secret_source: Some(Arc::new(move |_, name| Ok(secrets.lock().get(name).cloned()))),
        }
    }

    #[test]
    fn a_client_is_kept_until_a_secret_it_read_changes() {
        let secrets = Arc::new(Mutex::new(HashMap::from([("key".to_string(), "first-key".to_string())])));
        let shared = Arc::new(Clients::<String>::default());
        let made = AtomicU32::new(0);
        let make = |read: SecretReader<'_>| {
            made.fetch_add(1, Ordering::Relaxed);
            read("key")
        };

        // Two runs: one client, made once; each run's redactor learns the key.
        for _ in 0..2 {
            let ctx = run(&secrets);
            let c = RunClients::new(&shared).get(&ctx, "[es.main]", "main", None, make).unwrap();
            assert_eq!(*c, "first-key");
            assert_eq!(ctx.redactor.apply("key=first-key"), "key=<redacted>", "the run knows the secret");
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);

        // Within a run the secret is read once, however many calls ask.
        let ctx = run(&secrets);
        let this_run = RunClients::new(&shared);
        this_run.get(&ctx, "[es.main]", "main", None, make).unwrap();
        secrets.lock().insert("key".into(), "second-key".into());
        assert_eq!(*this_run.get(&ctx, "[es.main]", "main", None, make).unwrap(), "first-key", "a run keeps its client");

        // The next run sees the rotated key and makes a new client.
        let ctx = run(&secrets);
        assert_eq!(*RunClients::new(&shared).get(&ctx, "[es.main]", "main", None, make).unwrap(), "second-key");
        assert_eq!(made.load(Ordering::Relaxed), 2);

        // A secret that is gone is an error naming it, not the old client.
        secrets.lock().clear();
        let ctx = run(&secrets);
        let e = RunClients::new(&shared).get(&ctx, "[es.main]", "main", None, make).unwrap_err();
        assert_eq!(e, "secret `key` (named in [es.main]) is not set");
    }

    #[test]
    fn every_secret_is_read_again_and_learned_by_each_run() {
        let secrets = Arc::new(Mutex::new(HashMap::from([
            ("user".to_string(), "first-user".to_string()),
            ("pass".to_string(), "first-pass".to_string()),
        ])));
        let shared = Arc::new(Clients::<String>::default());
        let make = |read: SecretReader<'_>| Ok(format!("{}:{}", read("user")?, read("pass")?));
        RunClients::new(&shared).get(&run(&secrets), "[zabbix.main]", "main", None, make).unwrap();
        // The first secret changes: a new client, and the run has learned the second one too.
        secrets.lock().insert("user".into(), "other-user".into());
        let ctx = run(&secrets);
        assert_eq!(*RunClients::new(&shared).get(&ctx, "[zabbix.main]", "main", None, make).unwrap(), "other-user:first-pass");
        assert_eq!(ctx.redactor.apply("first-pass other-user"), "<redacted> <redacted>");
        // Unchanged: the same client, and still both learned.
        let ctx = run(&secrets);
        RunClients::new(&shared).get(&ctx, "[zabbix.main]", "main", None, make).unwrap();
        assert_eq!(ctx.redactor.apply("first-pass other-user"), "<redacted> <redacted>");
    }

    #[test]
    fn new_contents_of_the_ca_file_make_a_new_client() {
        let secrets = Arc::new(Mutex::new(HashMap::from([("key".to_string(), "first-key".to_string())])));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "first CA").unwrap();
        let shared = Arc::new(Clients::<String>::default());
        let make = |_: SecretReader<'_>| Ok(std::fs::read_to_string(&ca).unwrap());
        let get = || RunClients::new(&shared).get(&run(&secrets), "[virt.cloud]", "cloud", Some(&ca), make).unwrap();
        assert_eq!(*get(), "first CA");
        assert_eq!(*get(), "first CA");
        std::fs::write(&ca, "second CA").unwrap();
        assert_eq!(*get(), "second CA", "the CA file is read again each run");
    }

    #[test]
    fn a_client_serves_the_thread_that_made_it_and_goes_with_it() {
        let secrets = Arc::new(Mutex::new(HashMap::from([("key".to_string(), "first-key".to_string())])));
        let shared = Arc::new(Clients::<(String, std::thread::ThreadId)>::default());
        let make = |read: SecretReader<'_>| Ok((read("key")?, std::thread::current().id()));
        let here = RunClients::new(&shared).get(&run(&secrets), "[s3.store]", "store", None, make).unwrap();
        assert_eq!(here.1, std::thread::current().id());
        // Another thread (another run thread's runtime) gets a client of its own.
        let (s2, sh2) = (Arc::clone(&secrets), Arc::clone(&shared));
        let there =
            std::thread::spawn(move || RunClients::new(&sh2).get(&run(&s2), "[s3.store]", "store", None, make).unwrap()).join().unwrap();
        assert_ne!(there.1, here.1);
        assert_eq!(shared.made.lock().len(), 2);
        // That thread has ended: its client is dropped when the next one is made.
        secrets.lock().insert("key".into(), "second-key".into());
        RunClients::new(&shared).get(&run(&secrets), "[s3.store]", "store", None, make).unwrap();
        assert_eq!(shared.made.lock().len(), 1);
        assert_eq!(RunClients::new(&shared).get(&run(&secrets), "[s3.store]", "store", None, make).unwrap().0, "second-key");
    }
}
