//! Runs on other machines: the control plane (`opslet serve --queue nats://…`) publishes runs to
//! NATS JetStream and `opslet worker` processes pull and execute them, with the same run service
//! code as the embedded pool. This file holds what both sides share: the settings, the
//! connection, the streams and the messages on them.
//!
//! ```text
//!   control plane                     JetStream                          worker (tags a, b)
//!   RunService::start ─publish─> OPSLET_RUNS  opslet.runs.<tag> ──pull──> Runtime::run
//!     package by hash ──put────> object store opslet-packages  ──get───>   (cached by hash)
//!   Events::apply     <─pull──── OPSLET_EVENTS opslet.events.<run> <─pub── started, log, audit, end
//!   cancel            ─core────> opslet.cancel                  ──sub───> CancelToken
//!   workers map       <─core──── opslet.workers.<id>            <─pub──── heartbeat
//! ```
//!
//! The control plane stays the only writer of its store: a worker's audit records travel as
//! events, each with a de-duplication id, and are appended to the one chain once.

pub mod control;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::applet::AppletPackage;
use crate::error::{Error, ParamError};
use crate::runtime::context::{Caller, LogLine, Targets};
use crate::runtime::{Origin, RunStatus};

/// The stream of queued runs (work-queue retention: a run is gone once a worker acknowledged it).
pub const RUNS: &str = "OPSLET_RUNS";
/// The stream of what workers report back.
pub const EVENTS: &str = "OPSLET_EVENTS";
/// The object store of packages, by content hash.
pub const PACKAGES: &str = "opslet-packages";
/// Core NATS subject of cancel requests (payload: the run id).
pub const CANCEL: &str = "opslet.cancel";
/// Workers' heartbeats: `opslet.workers.<id>`.
pub const HEARTBEATS: &str = "opslet.workers";
/// The tag of runs that ask for none.
pub const DEFAULT_TAG: &str = "default";
/// How often a worker says it is alive; the control plane forgets a worker after three missed.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

pub fn run_subject(tag: &str) -> String {
    format!("opslet.runs.{tag}")
}

pub fn event_subject(run_id: &str) -> String {
    format!("opslet.events.{run_id}")
}

/// How to reach NATS, from `--queue URL` and `[queue]` in opslet.toml.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `nats://host:port` (credentials in the URL are taken too: `nats://user:pass@host`).
    pub url: String,
    /// A NATS credentials file (user JWT and nkey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// A CA certificate to trust for `tls://` servers (and to require TLS).
    pub tls_ca: Option<std::path::PathBuf>,
    /// How long a worker may go without saying a run is still in progress before JetStream
    /// gives the run to another worker (which then ends it `interrupted`, see `worker`).
    pub ack_wait: Duration,
    /// How long JetStream drops a message that repeats an id it has seen (the streams are made
    /// with it; past it, the control plane's own marks still drop a repeated event).
    pub duplicate_window: Duration,
    /// `[[workers.route]]`: (host selector, tag), first match wins.
    pub routes: Vec<(String, String)>,
}

impl QueueSettings {
    pub fn new(url: &str) -> Result<QueueSettings, Error> {
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(Error::Usage(format!("--queue `{url}`: give a NATS URL, like nats://127.0.0.1:4222")));
        }
        Ok(QueueSettings {
            url: url.to_string(),
            creds_file: None,
            tls_ca: None,
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(600),
            routes: Vec::new(),
        })
    }
}

/// A connection to NATS and its JetStream context, set up with the streams opslet uses.
#[derive(Clone)]
pub struct Link {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub settings: Arc<QueueSettings>,
}

fn queue_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("the run queue (NATS): {what}: {e}"))
}

impl Link {
    /// Connects and makes sure the streams exist; `name` names this process to the NATS
    /// server's monitoring. NATS must answer now (a wrong URL or credentials is said at once);
    /// later losses of the connection are retried in the background.
    pub async fn connect(settings: QueueSettings, name: &str) -> Result<Link, Error> {
        let mut opts = async_nats::ConnectOptions::new().name(name).connection_timeout(Duration::from_secs(5)).max_reconnects(None);
        // Credentials in the URL (nats://user:password@host:port) are taken out of it.
        let (url, login) = split_login(&settings.url);
        if let Some((user, password)) = login {
            opts = opts.user_and_password(user, password);
        }
        if let Some(creds) = &settings.creds_file {
            opts = opts.credentials_file(creds).await.map_err(|e| queue_err(&format!("reading {}", creds.display()), e))?;
        }
        if let Some(ca) = &settings.tls_ca {
            opts = opts.require_tls(true).add_root_certificates(ca.clone());
        }
        let client = opts.connect(url.as_str()).await.map_err(|e| queue_err(&format!("connecting to {url}"), e))?;
        let js = jetstream::new(client.clone());
        let link = Link { client, js, settings: Arc::new(settings) };
        link.ensure_streams().await?;
        Ok(link)
    }

    /// Whether the connection is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn ensure_streams(&self) -> Result<(), Error> {
        // NATS may still be coming up: the first requests wait for it a while.
        let mut tries = 0;
        loop {
            let made = async {
                self.js
                    .get_or_create_stream(stream::Config {
                        name: RUNS.into(),
                        subjects: vec!["opslet.runs.>".into()],
                        retention: stream::RetentionPolicy::WorkQueue,
                        storage: stream::StorageType::File,
                        duplicate_window: self.settings.duplicate_window,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| queue_err("the runs stream", e))?;
                self.js
                    .get_or_create_stream(stream::Config {
                        name: EVENTS.into(),
                        subjects: vec!["opslet.events.>".into()],
                        retention: stream::RetentionPolicy::Limits,
                        storage: stream::StorageType::File,
                        duplicate_window: self.settings.duplicate_window,
                        max_age: Duration::from_secs(7 * 24 * 3600),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| queue_err("the events stream", e))?;
                if self.js.get_object_store(PACKAGES).await.is_err() {
                    self.js
                        .create_object_store(jetstream::object_store::Config {
                            bucket: PACKAGES.into(),
                            storage: stream::StorageType::File,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| queue_err("the package store", e))?;
                }
                Ok::<_, Error>(())
            }
            .await;
            match made {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::warn!(error = %e, "the run queue is not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts a package into the object store under its hash, unless it is there.
    pub async fn put_package(&self, package: &AppletPackage) -> Result<(), Error> {
        self.put_blob(&package.hash, &encode_package(package)).await
    }

    /// Puts `body` under `name` in the object store, unless it is there.
    pub async fn put_blob(&self, name: &str, body: &[u8]) -> Result<(), Error> {
        let store = self.js.get_object_store(PACKAGES).await.map_err(|e| queue_err("the object store", e))?;
        if store.info(name).await.is_ok() {
            return Ok(());
        }
        store.put(name, &mut &body[..]).await.map_err(|e| queue_err(&format!("storing {name}"), e))?;
        Ok(())
    }

    pub async fn get_blob(&self, name: &str) -> Result<Vec<u8>, Error> {
        use tokio::io::AsyncReadExt;
        let store = self.js.get_object_store(PACKAGES).await.map_err(|e| queue_err("the object store", e))?;
        let mut obj = store.get(name).await.map_err(|e| queue_err(name, e))?;
        let mut body = Vec::new();
        obj.read_to_end(&mut body).await.map_err(|e| queue_err(&format!("reading {name}"), e))?;
        Ok(body)
    }

    /// The package of `hash`, checked against it.
    pub async fn get_package(&self, hash: &str) -> Result<AppletPackage, Error> {
        decode_package(&self.get_blob(hash).await?, hash)
    }
}

/// `nats://user:password@host:4222` → (`nats://host:4222`, Some((user, password))). The URL
/// without its login is what messages and logs show.
pub fn split_login(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_string(), None) };
    match rest.rsplit_once('@') {
        Some((login, host)) => {
            let (user, password) = login.split_once(':').unwrap_or((login, ""));
            (format!("{scheme}://{host}"), Some((user.to_string(), password.to_string())))
        }
        None => (url.to_string(), None),
    }
}

/// A package as stored: its files, base64, by path. (The hash is computed again when read.)
pub fn encode_package(p: &AppletPackage) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let files: BTreeMap<&str, String> = p.files.iter().map(|(k, v)| (k.as_str(), b64.encode(v))).collect();
    serde_json::to_vec(&files).expect("a package serializes")
}

/// Reads a stored package and refuses it unless its content hashes to `hash`.
pub fn decode_package(body: &[u8], hash: &str) -> Result<AppletPackage, Error> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let files: BTreeMap<String, String> =
        serde_json::from_slice(body).map_err(|e| Error::Store(format!("package {hash} is unreadable: {e}")))?;
    let files = files
        .into_iter()
        .map(|(k, v)| b64.decode(v).map(|v| (k.clone(), v)).map_err(|e| Error::Store(format!("package {hash}: {k}: {e}"))))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let package = AppletPackage::from_files(files)?;
    if package.hash != hash {
        return Err(Error::Store(format!("package {hash} does not match its hash (it hashes to {}): refused", package.hash)));
    }
    Ok(package)
}

/// A run as queued for a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMessage {
    pub run_id: String,
    /// `name@version`, for logs.
    pub applet: String,
    /// The package's content hash: the worker runs exactly this or nothing.
    pub hash: String,
    pub caller: Caller,
    pub dry_run: bool,
    /// Params the control plane checked; or, for runs that check them themselves, the raw ones.
    #[serde(default)]
    pub validated: Option<Map<String, Value>>,
    #[serde(default)]
    pub params_json: Option<Map<String, Value>>,
    #[serde(default)]
    pub params_pairs: Vec<(String, String)>,
    pub origin: Origin,
    pub tag: String,
    /// The applet may be run again from the start if its worker is lost (`retry = true` in
    /// its manifest's `[run]`).
    #[serde(default)]
    pub retry: bool,
    /// The run's credential for asking the control plane for secrets (`opslet.secrets`), good
    /// while the run is in flight. It is not a secret's value: those never travel in runs.
    pub secret_token: String,
    /// The cmdb copy the run sees: `cmdb-<hash>` in the object store.
    pub cmdb: Option<String>,
    /// Environments the run may not publish config to (see `RunRequest::unapproved_envs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unapproved_envs: Vec<String>,
}

/// A worker asking for a secret a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretRequest {
    pub run_id: String,
    pub token: String,
    pub name: String,
}

/// The answer: the value, none (no such secret), or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretAnswer {
    pub value: Option<String>,
    pub error: Option<String>,
}

/// Core NATS subject of secret requests (request/reply: nothing about them is kept).
pub const SECRETS: &str = "opslet.secrets";

/// The cmdb as a worker gets it: hosts, and nested groups with their parents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CmdbCopy {
    pub hosts: Vec<crate::cmdb::Host>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// An error as it travels: enough to answer the caller as if the run had been local.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub fields: Vec<ParamError>,
    #[serde(default)]
    pub limit: Option<crate::error::Limit>,
}

impl WireError {
    pub fn of(e: &Error) -> WireError {
        WireError {
            kind: e.kind().to_string(),
            message: e.to_string(),
            fields: match e {
                Error::Params(f) => f.clone(),
                _ => Vec::new(),
            },
            limit: match e {
                Error::LimitExceeded { limit, .. } => Some(*limit),
                _ => None,
            },
        }
    }

    pub fn into_error(self) -> Error {
        match (self.kind.as_str(), self.limit) {
            ("invalid_params", _) => Error::Params(self.fields),
            ("applet_error", _) => Error::AppletFailed(self.message),
            (_, Some(limit)) => Error::LimitExceeded { limit, message: self.message },
            ("cancelled", _) => Error::Cancelled,
            ("invalid_applet", _) => Error::Applet(vec![crate::error::Diagnostic::new("applet", self.message)]),
            ("not_found", _) => Error::NotFound(self.message),
            ("config_error", _) => Error::Config(self.message),
            _ => Error::Internal(self.message),
        }
    }
}

/// What a worker reports about a run, in order, on `opslet.events.<run_id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started {
        worker: String,
    },
    Log {
        line: LogLine,
    },
    /// One audit record the run made, to be appended to the control plane's chain.
    Audit {
        kind: String,
        actor: Option<String>,
        via: Option<String>,
        applet: Option<String>,
        status: Option<String>,
        data: Value,
    },
    End(Box<EndMsg>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndMsg {
    pub status: RunStatus,
    pub result: Option<Value>,
    pub error: Option<WireError>,
    pub traceback: Option<String>,
    pub logs: Vec<LogLine>,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub notes: Vec<String>,
    pub targets: Targets,
    /// Who ended it when it is not the run itself (a worker that found the run lost).
    #[serde(default)]
    pub worker: String,
}

impl EndMsg {
    /// The end of a run that did not run here: `worker` names a worker that found it lost
    /// (empty when the run could not start, like a package that does not load).
    pub fn without_run(status: RunStatus, error: WireError, worker: &str) -> EndMsg {
        EndMsg {
            status,
            result: None,
            error: Some(error),
            traceback: None,
            logs: Vec::new(),
            duration_ms: 0,
            cpu_ms: 0,
            notes: Vec::new(),
            targets: Default::default(),
            worker: worker.to_string(),
        }
    }
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    pub tags: Vec<String>,
    pub in_flight: usize,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub host: String,
}

/// The header with an event's signature (see [`sign_event`]).
pub const SIGNATURE: &str = "Opslet-Signature";

/// The key a run's events are signed with: the SHA-256 of the run's credential. The worker
/// that took the run computes it from the credential; the control plane keeps only it.
pub fn event_key(secret_token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret_token.as_bytes()))
}

/// HMAC-SHA256 of an event's id and body under the run's event key: only a worker that took
/// the run can report for it, so a worker cannot end, log into or audit another's run.
pub fn sign_event(key: &str, id: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The header a worker's events carry so JetStream drops a repeat: `<run id>.<n>`.
pub fn event_id(run_id: &str, n: u64) -> String {
    format!("{run_id}.{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package() -> AppletPackage {
        let mut files = BTreeMap::new();
        files.insert("applet.toml".to_string(), b"name = \"t\"\nversion = \"1.0.0\"\n".to_vec());
        files.insert("main.lua".to_string(), b"return function() return 1 end".to_vec());
        AppletPackage::from_files(files).unwrap()
    }

    #[test]
    fn a_package_is_taken_only_under_its_own_hash() {
        let p = package();
        let body = encode_package(&p);
        assert_eq!(decode_package(&body, &p.hash).unwrap().hash, p.hash);
        // Stored under another hash (a swapped object, a mix-up): refused, saying so.
        let other = "0".repeat(64);
        let e = decode_package(&body, &other).unwrap_err().to_string();
        assert!(e.contains("does not match its hash") && e.contains(&p.hash), "{e}");
        // Tampered content under the right name: refused too.
        let tampered = String::from_utf8(body).unwrap().replace(
            &base64::engine::general_purpose::STANDARD.encode(b"return function() return 1 end"),
            &base64::engine::general_purpose::STANDARD.encode(b"return function() return 2 end"),
        );
        assert!(decode_package(tampered.as_bytes(), &p.hash).is_err());
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        assert_eq!(split_login("nats://u:p@h:4222"), ("nats://h:4222".to_string(), Some(("u".to_string(), "p".to_string()))));
        assert_eq!(split_login("tls://h:4222"), ("tls://h:4222".to_string(), None));
        assert!(QueueSettings::new("http://h").is_err());
    }
}
