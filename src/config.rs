//! `opslet.toml`: host-wide settings. The doc comments on these structs are the reference
//! (docs/config.md repeats them with examples).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::error::{Diagnostic, Error};
use crate::util::{parse_duration, parse_size};

pub mod notify;
pub use notify::NotifyConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Run limits: defaults for applets that ask for nothing, and maxima nobody can exceed.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The per-applet key-value store.
    #[serde(default)]
    pub kv: KvConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `opslet serve`; each value can be overridden by its flag or environment variable.
    #[serde(default)]
    pub serve: ServeSettings,
    /// With workers (`serve --queue nats://…`): which tag runs on which hosts go to.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// Notifications of `opslet serve` (`[notify]`, docs/notifications.md): read by
    /// [`Config::parse`] with the places of mistakes, so not through serde here.
    #[serde(skip)]
    pub notify: NotifyConfig,
    /// Which runs wait for approval before they run, how many approvals they need and from whom.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// `opslet publish`.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Every other table: the host modules' settings (`[ssh]`, `[zabbix.NAME]`, ...), each read
    /// by its module through [`Config::section`]; a table no module reads is refused when the
    /// modules are set up (`modules::from_config`).
    #[serde(flatten)]
    pub tables: BTreeMap<String, toml::Value>,
    /// Where this configuration was read from (for messages).
    #[serde(skip)]
    pub source: String,
    /// The file's text, so a module's settings are read with the line and column of a mistake.
    #[serde(skip)]
    text: Arc<str>,
}

/// `[workers]`: `[[workers.route]]` entries, in order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    #[serde(default)]
    pub route: Vec<WorkerRoute>,
}

/// A run whose host-selector params pick only hosts `hosts` selects goes to workers of `tag`
/// (unless the run or the applet asks for a tag).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRoute {
    pub hosts: String,
    pub tag: String,
}

/// `[publish]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// What `opslet publish` does with an applet's own tests: `required` (the default: run
    /// them, and refuse an applet whose tests fail), `warn` (run them, publish anyway and say
    /// so) or `off` (do not run them).
    pub tests: Option<String>,
}

/// What `opslet publish` does with an applet's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishTests {
    Required,
    Warn,
    Off,
}

impl PublishConfig {
    pub fn tests(&self) -> Result<PublishTests, String> {
        match self.tests.as_deref() {
            None | Some("required") => Ok(PublishTests::Required),
            Some("warn") => Ok(PublishTests::Warn),
            Some("off") => Ok(PublishTests::Off),
            Some(other) => Err(format!("publish.tests: `{other}` is not one of required, warn, off")),
        }
    }
}

/// `[approvals]`: `[[approvals.rule]]` entries, and how long a request waits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long a request waits for its approvals before it expires, like "24h" (default 24h).
    pub expire: Option<String>,
    #[serde(default)]
    pub rule: Vec<ApprovalRule>,
}

/// A run of an applet whose manifest grants `module` one of `actions` waits for approval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// Named in messages and records (default: `module` and `actions`).
    pub name: Option<String>,
    /// The permission's module: `ipmi`, `netdev`, `config`, `ssh`, `virt`, `cmdb`, `zabbix`, ...
    pub module: String,
    /// Any of these granted makes the run risky: the scope's actions (`power`, `config`,
    /// `publish`, `write`), or a key set to true in a table scope (`sudo`). Empty: any grant of
    /// the module.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Only when the dry run plans an action of `module` in one of these environments (a
    /// `config.publish` to `prod`); a run whose dry run fails waits anyway.
    #[serde(default)]
    pub env: Vec<String>,
    /// Approvals needed (default 1).
    pub approvals: Option<usize>,
    /// Who may approve: users with one of these roles, in one of these groups, or named here.
    /// All empty: admins.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
}

/// `[serve]`. Unset values take the flag's default (see `opslet serve --help`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Address and port, like "127.0.0.1:8620".
    pub listen: Option<String>,
    /// Runs computing at once (executing Lua).
    pub run_threads: Option<usize>,
    /// Runs in flight at once, waiting on hosts or computing.
    pub max_runs: Option<usize>,
    /// Runs waiting for a run thread before 503.
    pub queue: Option<usize>,
    /// Largest request body in bytes.
    pub body_limit: Option<usize>,
    /// Runs of one applet queued or running at once before 429 (0: no limit).
    pub applet_limit: Option<usize>,
    /// Runs of one caller queued or running at once before 429 (0: no limit).
    pub user_limit: Option<usize>,
    /// Synchronous run timeout, like "60s".
    pub sync_timeout: Option<String>,
    /// Grace for running jobs at shutdown, like "10s".
    pub shutdown_grace: Option<String>,
    /// How long finished jobs are kept, like "7d".
    pub job_retention: Option<String>,
    /// Connections open at once before new ones are answered 503.
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's headers (and a kept-alive connection may
    /// wait for its next request), like "10s".
    pub header_timeout: Option<String>,
}

/// `[limits]`. Durations are written like `"30s"`, sizes like `"64MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Wall-clock time of a run, async waits included (default 60s).
    pub timeout: String,
    /// Upper bound for an applet's own `limits.timeout` (default 1h).
    pub max_timeout: String,
    /// CPU time a run may use (default 30s).
    pub cpu: String,
    /// Upper bound for an applet's `limits.cpu` (default 10m).
    pub max_cpu: String,
    /// Lua heap of a run (default 64MiB).
    pub memory: String,
    /// Upper bound for an applet's `limits.memory` (default 1GiB).
    pub max_memory: String,
    /// Number of log lines a run may write (default 10000).
    pub log_lines: usize,
    /// Total bytes of log output a run may write (default 1MiB).
    pub log_bytes: String,
    /// Size of the run's result as JSON (default 8MiB).
    pub result_bytes: String,
    /// Nested Lua calls (default 200).
    pub call_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            timeout: "60s".into(),
            max_timeout: "1h".into(),
            cpu: "30s".into(),
            max_cpu: "10m".into(),
            memory: "64MiB".into(),
            max_memory: "1GiB".into(),
            log_lines: 10_000,
            log_bytes: "1MiB".into(),
            result_bytes: "8MiB".into(),
            call_depth: 200,
        }
    }
}

/// `[kv]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// Total size of one applet's keys and values (default 1MiB).
    pub max_bytes: String,
    /// Size of one value (default 64KiB).
    pub max_value_bytes: String,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig { max_bytes: "1MiB".into(), max_value_bytes: "64KiB".into() }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Flush the store to disk after recording a run's start, so a run whose process is killed
    /// still shows as interrupted (default true).
    pub sync: bool,
    /// A file (best kept off the data dir's disk, or shipped elsewhere) the chain's head is
    /// appended to, signed: by `opslet serve` every `anchor_every` and soon after every change
    /// that is not a run, and by `opslet audit anchor`. `audit verify` checks the last one.
    pub anchor_file: Option<std::path::PathBuf>,
    /// How often `opslet serve` anchors a head that moved (default 5m).
    pub anchor_every: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { sync: true, anchor_file: None, anchor_every: "5m".into() }
    }
}

/// Limits resolved to numbers: the host's defaults and maxima.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    pub timeout: Duration,
    pub max_timeout: Duration,
    pub cpu: Duration,
    pub max_cpu: Duration,
    pub memory: u64,
    pub max_memory: u64,
    pub log_lines: usize,
    pub log_bytes: u64,
    pub result_bytes: u64,
    pub call_depth: usize,
}

impl Config {
    /// Reads a config file; a missing file at the default location is an empty config.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("reading config {}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, name: &str) -> Result<Config, Error> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let d = match e.span() {
                Some(span) => Diagnostic::at(name, text, span.start, e.message().trim()),
                None => Diagnostic::new(name, e.message().trim()),
            };
            Error::Config(format!("invalid config: {d}"))
        })?;
        cfg.source = name.to_string();
        cfg.text = Arc::from(text);
        cfg.host_limits().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.kv_limits().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.publish.tests().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        // `[notify]` is opslet's own: read with its places (rules keep their spans), then checked.
        cfg.notify = cfg.section::<NotifyConfig>("notify")?;
        cfg.tables.remove("notify");
        cfg.notify.check().map_err(|(at, m)| {
            let d = match at {
                Some(offset) => Diagnostic::at(name, text, offset, m),
                None => Diagnostic::new(name, m),
            };
            Error::Config(format!("invalid config: {d}"))
        })?;
        Ok(cfg)
    }

    pub fn host_limits(&self) -> Result<HostLimits, String> {
        let l = &self.limits;
        let d = |key: &str, v: &str| parse_duration(v).map_err(|m| format!("limits.{key}: {m}"));
        let s = |key: &str, v: &str| parse_size(v).map_err(|m| format!("limits.{key}: {m}"));
        let out = HostLimits {
            timeout: d("timeout", &l.timeout)?,
            max_timeout: d("max_timeout", &l.max_timeout)?,
            cpu: d("cpu", &l.cpu)?,
            max_cpu: d("max_cpu", &l.max_cpu)?,
            memory: s("memory", &l.memory)?,
            max_memory: s("max_memory", &l.max_memory)?,
            log_lines: l.log_lines,
            log_bytes: s("log_bytes", &l.log_bytes)?,
            result_bytes: s("result_bytes", &l.result_bytes)?,
            call_depth: l.call_depth,
        };
        if out.memory < crate::applet::manifest::MIN_MEMORY || out.max_memory < crate::applet::manifest::MIN_MEMORY {
            return Err("limits.memory and limits.max_memory must be at least 2MiB".into());
        }
        if !(16..=20_000).contains(&out.call_depth) {
            return Err("limits.call_depth must be between 16 and 20000".into());
        }
        Ok(out)
    }

    /// The table `key` (`[ssh]`, or every `[zabbix.NAME]` as a map) as its module's settings
    /// type; absent, its default. A mistake is reported with the file, line and column.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, Error> {
        let Some(table) = self.tables.get(key) else { return Ok(T::default()) };
        if self.text.is_empty() {
            // Built in code, not read from a file: no places to name.
            return table
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| Error::Config(format!("invalid config: [{key}]: {}", e.message().trim())));
        }
        let located = |e: toml::de::Error| {
            let d = match e.span() {
                Some(span) => Diagnostic::at(&self.source, &self.text, span.start, e.message().trim()),
                None => Diagnostic::new(&self.source, format!("[{key}]: {}", e.message().trim())),
            };
            Error::Config(format!("invalid config: {d}"))
        };
        let doc = toml::de::Deserializer::parse(&self.text).map_err(located)?;
        let found = Section::<T> { key, _t: std::marker::PhantomData }.deserialize(doc).map_err(located)?;
        Ok(found.unwrap_or_default())
    }

    /// A mistake in a module's settings, said with the file it is in.
    pub fn invalid(&self, m: impl std::fmt::Display) -> Error {
        Error::Config(format!("invalid config: {}: {m}", self.source))
    }

    pub fn kv_limits(&self) -> Result<(u64, u64), String> {
        let total = parse_size(&self.kv.max_bytes).map_err(|m| format!("kv.max_bytes: {m}"))?;
        let value = parse_size(&self.kv.max_value_bytes).map_err(|m| format!("kv.max_value_bytes: {m}"))?;
        Ok((total, value))
    }
}

/// Where opslet keeps its data when neither `--data-dir` nor `OPSLET_DATA_DIR` says.
/// Where `opslet key new` writes a publisher's signing key, and `publish` and `sign` look for
/// one: `$XDG_CONFIG_HOME/opslet/signing.key` (or the platform's config folder).
pub fn default_signing_key() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "opslet").map(|d| d.config_dir().join("signing.key"))
}

pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "opslet").map(|d| d.data_dir().to_path_buf()).unwrap_or_else(|| PathBuf::from(".opslet"))
}

/// Picks one table out of the whole document, the rest skipped, so errors keep their spans.
struct Section<'k, T> {
    key: &'k str,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Section<'_, T> {
    type Value = Option<T>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Section<'_, T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a table [{}]", self.key)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}
