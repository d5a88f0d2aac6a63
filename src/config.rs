//! `opslet.toml`: host-wide settings. The doc comments on these structs are the reference
//! (docs/config.md repeats them with examples).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::util::{parse_duration, parse_size};
use crate::error::{Diagnostic, Error};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The `ssh` host module: credentials per host group, host-key policy, fan-out limits.
    #[serde(default)]
    pub ssh: SshConfig,
    /// The `netdev` host module: device CLI credentials, profiles, limits.
    #[serde(default)]
    pub netdev: NetdevConfig,
    /// The `ipmi` host module: BMC logins per host group, limits.
    #[serde(default)]
    pub ipmi: IpmiConfig,
    /// The `zabbix` host module: named connections (`[zabbix.NAME]`).
    #[serde(default)]
    pub zabbix: std::collections::BTreeMap<String, ZabbixConn>,
    /// The `es` host module: named Elasticsearch / OpenSearch connections (`[es.NAME]`).
    #[serde(default)]
    pub es: std::collections::BTreeMap<String, EsConn>,
    /// The `virt` host module (built with the `virt` feature): libvirt connections.
    #[serde(default)]
    pub virt: std::collections::BTreeMap<String, VirtConn>,
    /// Where this configuration was read from (for messages).
    #[serde(skip)]
    pub source: String,
}

/// `[virt.NAME]`: one libvirt connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtConn {
    /// A libvirt URI: "qemu:///system", "qemu+ssh://kvm01/system", "test:///default".
    pub uri: String,
    /// Folders `virt.create` may take disk images from (none: VMs are created without a disk).
    #[serde(default)]
    pub disk_dirs: Vec<PathBuf>,
}

/// `[es.NAME]`: one Elasticsearch or OpenSearch cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsConn {
    /// Like "https://logs.example.com:9200".
    pub url: String,
    /// Basic auth: user + password_secret.
    pub user: Option<String>,
    pub password_secret: Option<String>,
    /// Or an API key (the base64 `id:key` form) from a secret.
    pub api_key_secret: Option<String>,
    /// Per request (default "30s").
    #[serde(default = "default_zabbix_timeout")]
    pub timeout: String,
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// The connection `es.*` uses when several are configured.
    #[serde(default)]
    pub default: bool,
}

/// `[zabbix.NAME]`: one Zabbix server. Logs in with `user` + `password_secret`, or with an API
/// token from `token_secret` (Zabbix 5.4+).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZabbixConn {
    /// The API endpoint, like "https://zabbix.example.com/api_jsonrpc.php".
    pub url: String,
    pub user: Option<String>,
    /// Secret holding the user's password.
    pub password_secret: Option<String>,
    /// Secret holding an API token (instead of user + password).
    pub token_secret: Option<String>,
    /// Per request (default "30s").
    #[serde(default = "default_zabbix_timeout")]
    pub timeout: String,
    /// A PEM file of extra CA certificates to trust for this server.
    pub ca_file: Option<PathBuf>,
    /// The connection calls without a name use (default: the only one, or "default").
    #[serde(default)]
    pub default: bool,
}

fn default_zabbix_timeout() -> String {
    "30s".into()
}

/// `[ssh]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Hosts worked on at once by one call, unless the call asks for fewer (default 256).
    pub concurrency: usize,
    /// Time to connect and log in to one host (default "10s").
    pub connect_timeout: String,
    /// Time for one command on one host, login included, unless the call says (default "60s").
    pub timeout: String,
    /// What to do with a host whose key is not pinned in the cmdb: "refuse" (default) or
    /// "accept-and-pin" (trust on first use, pin it, audit it). A changed key is always refused.
    pub first_contact: FirstContact,
    /// Bytes of stdout and of stderr kept per host and command (default "1MiB"); the rest is cut.
    pub max_output: String,
    /// Largest file `ssh.put` sends or `ssh.get` fetches (default "16MiB").
    pub max_file: String,
    /// Who logs in where: the first entry whose `hosts` selector picks a host is used for it.
    pub credentials: Vec<SshCredential>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            concurrency: 256,
            connect_timeout: "10s".into(),
            timeout: "60s".into(),
            first_contact: FirstContact::Refuse,
            max_output: "1MiB".into(),
            max_file: "16MiB".into(),
            credentials: Vec::new(),
        }
    }
}

/// `[ssh] first_contact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstContact {
    Refuse,
    AcceptAndPin,
}

/// `[[ssh.credentials]]`: how to log in to the hosts a selector picks. Secrets are named, never
/// written here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshCredential {
    /// A host selector: "group:web", "tag:env=prod", "*".
    pub hosts: String,
    /// Login user.
    pub user: String,
    /// Secret holding the password.
    pub password_secret: Option<String>,
    /// Secret holding an OpenSSH private key (the file's text).
    pub key_secret: Option<String>,
    /// Secret holding the private key's passphrase.
    pub key_passphrase_secret: Option<String>,
    /// A cmdb host to connect through (its own credentials apply to it).
    pub jump: Option<String>,
}

/// `[ssh]` resolved to numbers.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub first_contact: FirstContact,
    pub max_output: u64,
    pub max_file: u64,
    pub credentials: Vec<SshCredential>,
}

/// `[ipmi]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpmiConfig {
    /// BMCs worked on at once by `ipmi.check` (default 32).
    pub concurrency: usize,
    /// Time for one BMC operation, login included (default "15s"). IPMI retries lost UDP packets
    /// within it.
    pub timeout: String,
    /// Who logs in to which BMC: the first entry whose `hosts` selector picks a host is used.
    pub credentials: Vec<IpmiCredential>,
}

impl Default for IpmiConfig {
    fn default() -> Self {
        IpmiConfig { concurrency: 32, timeout: "15s".into(), credentials: Vec::new() }
    }
}

/// `[[ipmi.credentials]]`: the BMC login for the hosts a selector picks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpmiCredential {
    pub hosts: String,
    pub user: String,
    /// Secret holding the BMC password.
    pub password_secret: String,
    /// CA certificate(s) (PEM) to trust for Redfish over HTTPS, e.g. the BMCs' own CA. When set,
    /// only these are trusted (not the system's roots).
    pub ca_file: Option<PathBuf>,
    /// The BMC addresses this login may be sent to (patterns with `*`, matched against the BMC's
    /// host name or address, e.g. "10.20.*" or "*.bmc.example.com"). Empty: any. The address
    /// comes from a cmdb tag, which applets with cmdb write access can change.
    #[serde(default)]
    pub bmcs: Vec<String>,
    /// Allow Redfish over plain HTTP (the password then crosses the network readable). Off by default.
    #[serde(default)]
    pub allow_http: bool,
}

/// `[netdev]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetdevConfig {
    /// Devices worked on at once by one call, unless the call asks for fewer (default 32).
    pub concurrency: usize,
    /// Time to connect, log in and reach the first prompt (default "15s").
    pub connect_timeout: String,
    /// Time for one command's answer, unless the call says (default "30s").
    pub timeout: String,
    /// A device whose SSH key is not pinned in the cmdb: "refuse" (default) or "accept-and-pin".
    pub first_contact: FirstContact,
    /// Bytes of output kept per command (default "4MiB"); more ends the session with an error.
    pub max_output: String,
    /// A folder of extra device profiles (`*.toml`); a profile whose `name` is a built-in one's
    /// replaces it.
    pub profiles_dir: Option<PathBuf>,
    /// Who logs in where: the first entry whose `devices` selector picks a device is used for it.
    pub credentials: Vec<NetdevCredential>,
}

impl Default for NetdevConfig {
    fn default() -> Self {
        NetdevConfig {
            concurrency: 32,
            connect_timeout: "15s".into(),
            timeout: "30s".into(),
            first_contact: FirstContact::Refuse,
            max_output: "4MiB".into(),
            profiles_dir: None,
            credentials: Vec::new(),
        }
    }
}

/// `[[netdev.credentials]]`: how to log in to the devices a selector picks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetdevCredential {
    /// A device selector: "group:switches", "tag:vendor=huawei", "*".
    pub devices: String,
    pub user: String,
    /// Secret holding the login password.
    pub password_secret: Option<String>,
    /// Secret holding an OpenSSH private key.
    pub key_secret: Option<String>,
    pub key_passphrase_secret: Option<String>,
    /// Secret holding the enable (privileged mode) password; without it an empty line answers.
    pub enable_secret: Option<String>,
}

/// `[netdev]` resolved to numbers.
#[derive(Debug, Clone)]
pub struct NetdevSettings {
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub first_contact: FirstContact,
    pub max_output: u64,
    pub profiles_dir: Option<PathBuf>,
    pub credentials: Vec<NetdevCredential>,
}

/// `[serve]`. Unset values take the flag's default (see `opslet serve --help`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Address and port, like "127.0.0.1:8620".
    pub listen: Option<String>,
    /// Runs executing at once.
    pub run_threads: Option<usize>,
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
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { sync: true }
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
        cfg.host_limits().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.kv_limits().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.ssh_settings().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.check_zabbix().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.netdev_settings().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
        cfg.check_ipmi().map_err(|m| Error::Config(format!("invalid config: {name}: {m}")))?;
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

    pub fn ssh_settings(&self) -> Result<SshSettings, String> {
        let c = &self.ssh;
        let d = |key: &str, v: &str| parse_duration(v).map_err(|m| format!("ssh.{key}: {m}"));
        let s = |key: &str, v: &str| parse_size(v).map_err(|m| format!("ssh.{key}: {m}"));
        if !(1..=10_000).contains(&c.concurrency) {
            return Err("ssh.concurrency must be between 1 and 10000".into());
        }
        for (i, cred) in c.credentials.iter().enumerate() {
            let at = format!("ssh.credentials[{i}] (hosts = \"{}\")", cred.hosts);
            crate::cmdb::Selector::parse(&cred.hosts).map_err(|m| format!("{at}: hosts: {m}"))?;
            if cred.user.trim().is_empty() {
                return Err(format!("{at}: user is empty"));
            }
            if cred.password_secret.is_none() && cred.key_secret.is_none() {
                return Err(format!("{at}: give password_secret or key_secret (the name of a secret set with `opslet secret set`)"));
            }
        }
        Ok(SshSettings {
            concurrency: c.concurrency,
            connect_timeout: d("connect_timeout", &c.connect_timeout)?,
            timeout: d("timeout", &c.timeout)?,
            first_contact: c.first_contact,
            max_output: s("max_output", &c.max_output)?,
            max_file: s("max_file", &c.max_file)?,
            credentials: c.credentials.clone(),
        })
    }

    pub fn netdev_settings(&self) -> Result<NetdevSettings, String> {
        let c = &self.netdev;
        let d = |key: &str, v: &str| parse_duration(v).map_err(|m| format!("netdev.{key}: {m}"));
        if !(1..=1000).contains(&c.concurrency) {
            return Err("netdev.concurrency must be between 1 and 1000".into());
        }
        for (i, cred) in c.credentials.iter().enumerate() {
            let at = format!("netdev.credentials[{i}] (devices = \"{}\")", cred.devices);
            crate::cmdb::Selector::parse(&cred.devices).map_err(|m| format!("{at}: devices: {m}"))?;
            if cred.user.trim().is_empty() {
                return Err(format!("{at}: user is empty"));
            }
            if cred.password_secret.is_none() && cred.key_secret.is_none() {
                return Err(format!("{at}: give password_secret or key_secret (the name of a secret set with `opslet secret set`)"));
            }
        }
        Ok(NetdevSettings {
            concurrency: c.concurrency,
            connect_timeout: d("connect_timeout", &c.connect_timeout)?,
            timeout: d("timeout", &c.timeout)?,
            first_contact: c.first_contact,
            max_output: parse_size(&c.max_output).map_err(|m| format!("netdev.max_output: {m}"))?,
            profiles_dir: c.profiles_dir.clone(),
            credentials: c.credentials.clone(),
        })
    }

    pub fn check_ipmi(&self) -> Result<Duration, String> {
        let c = &self.ipmi;
        if !(1..=1000).contains(&c.concurrency) {
            return Err("ipmi.concurrency must be between 1 and 1000".into());
        }
        for (i, cred) in c.credentials.iter().enumerate() {
            let at = format!("ipmi.credentials[{i}] (hosts = \"{}\")", cred.hosts);
            crate::cmdb::Selector::parse(&cred.hosts).map_err(|m| format!("{at}: hosts: {m}"))?;
            if cred.user.trim().is_empty() {
                return Err(format!("{at}: user is empty"));
            }
        }
        parse_duration(&c.timeout).map_err(|m| format!("ipmi.timeout: {m}"))
    }

    pub fn check_zabbix(&self) -> Result<(), String> {
        for (name, c) in &self.zabbix {
            let at = format!("zabbix.{name}");
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return Err(format!("{at}.url: `{}` is not an http(s) URL", c.url));
            }
            match (&c.user, &c.password_secret, &c.token_secret) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => return Err(format!("{at}: give user + password_secret, or token_secret (names of secrets, not values)")),
            }
            parse_duration(&c.timeout).map_err(|m| format!("{at}.timeout: {m}"))?;
        }
        if self.zabbix.values().filter(|c| c.default).count() > 1 {
            return Err("zabbix: more than one connection says default = true".into());
        }
        for (name, c) in &self.es {
            let at = format!("es.{name}");
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return Err(format!("{at}.url: `{}` is not an http(s) URL", c.url));
            }
            match (&c.user, &c.password_secret, &c.api_key_secret) {
                (None, None, None) | (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => return Err(format!("{at}: give user + password_secret, or api_key_secret, or neither")),
            }
            parse_duration(&c.timeout).map_err(|m| format!("{at}.timeout: {m}"))?;
        }
        if self.es.values().filter(|c| c.default).count() > 1 {
            return Err("es: more than one connection says default = true".into());
        }
        Ok(())
    }

    pub fn kv_limits(&self) -> Result<(u64, u64), String> {
        let total = parse_size(&self.kv.max_bytes).map_err(|m| format!("kv.max_bytes: {m}"))?;
        let value = parse_size(&self.kv.max_value_bytes).map_err(|m| format!("kv.max_value_bytes: {m}"))?;
        Ok((total, value))
    }
}

/// Where opslet keeps its data when neither `--data-dir` nor `OPSLET_DATA_DIR` says.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "opslet").map(|d| d.data_dir().to_path_buf()).unwrap_or_else(|| PathBuf::from(".opslet"))
}
