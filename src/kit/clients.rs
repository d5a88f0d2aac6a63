//! The clients of a module's named connections (zabbix, es, s3, virt): one per connection, kept
//! for the process so logins, tokens and connection pools outlive a run, and made again when a
//! secret it was made with reads differently (a rotated key takes effect at the next run, with
//! no restart). Each run reads the secrets once per connection it uses, so the run's redactor
//! knows them and a worker asks its secret source as for any other run.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::runtime::context::RunCtx;

/// A secret as a client was made with it: its name and a digest of its text.
type Used = Vec<(String, [u8; 32])>;

/// Reads a secret's text by name (what a module's client maker is given).
pub type SecretReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// A module's clients, shared by all its runs (one per module instance: a new config makes a new
/// module and so new clients).
pub struct Clients<C> {
    made: Mutex<HashMap<String, (Used, Arc<C>)>>,
}

impl<C> Default for Clients<C> {
    fn default() -> Self {
        Clients { made: Mutex::new(HashMap::new()) }
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl<C> Clients<C> {
    /// The client of connection `name`: the one made before if every secret it read still reads
    /// the same, else a new one from `make`. `owner` (`[es.NAME]`) names the config entry in the
    /// errors of a secret that is not set.
    pub fn get<F>(&self, ctx: &RunCtx, owner: &str, name: &str, make: F) -> Result<Arc<C>, String>
    where
        F: FnOnce(SecretReader<'_>) -> Result<C, String>,
    {
        let read = |s: &str| super::read_secret(ctx, owner, s);
        let before = self.made.lock().get(name).map(|(used, c)| (used.clone(), Arc::clone(c)));
        if let Some((used, c)) = before {
            let mut same = true;
            for (secret, was) in &used {
                // Every secret is read (not only up to the first change): the run's redactor
                // learns each one.
                same &= read(secret).map(|v| digest(&v) == *was).unwrap_or(false);
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
        let c = Arc::new(make(&recording)?);
        self.made.lock().insert(name.to_string(), (used.into_inner(), Arc::clone(&c)));
        Ok(c)
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
    pub fn get<F>(&self, ctx: &RunCtx, owner: &str, name: &str, make: F) -> Result<Arc<C>, String>
    where
        F: FnOnce(SecretReader<'_>) -> Result<C, String>,
    {
        if let Some(c) = self.run.lock().get(name) {
            return Ok(Arc::clone(c));
        }
        let c = self.shared.get(ctx, owner, name, make)?;
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
            let c = RunClients::new(&shared).get(&ctx, "[es.main]", "main", make).unwrap();
            assert_eq!(*c, "first-key");
            assert_eq!(ctx.redactor.apply("key=first-key"), "key=<redacted>", "the run knows the secret");
        }
        assert_eq!(made.load(Ordering::Relaxed), 1);

        // Within a run the secret is read once, however many calls ask.
        let ctx = run(&secrets);
        let this_run = RunClients::new(&shared);
        this_run.get(&ctx, "[es.main]", "main", make).unwrap();
        secrets.lock().insert("key".into(), "second-key".into());
        assert_eq!(*this_run.get(&ctx, "[es.main]", "main", make).unwrap(), "first-key", "a run keeps its client");

        // The next run sees the rotated key and makes a new client.
        let ctx = run(&secrets);
        assert_eq!(*RunClients::new(&shared).get(&ctx, "[es.main]", "main", make).unwrap(), "second-key");
        assert_eq!(made.load(Ordering::Relaxed), 2);

        // A secret that is gone is an error naming it, not the old client.
        secrets.lock().clear();
        let ctx = run(&secrets);
        let e = RunClients::new(&shared).get(&ctx, "[es.main]", "main", make).unwrap_err();
        assert_eq!(e, "secret `key` (named in [es.main]) is not set");
    }
}
