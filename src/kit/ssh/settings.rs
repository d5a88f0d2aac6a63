//! `[ssh]` of opslet.toml: the logins, host-key policy and limits of SSH to cmdb hosts, shared
//! by the modules that use it (`ssh`, `config`); `netdev` takes `FirstContact` for its own.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;
use crate::util::{parse_duration, parse_size};

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

impl SshSettings {
    /// `[ssh]` resolved and checked.
    pub fn from_config(config: &Config) -> Result<SshSettings, Error> {
        let c: SshConfig = config.section("ssh")?;
        SshSettings::check(c).map_err(|m| config.invalid(m))
    }

    fn check(c: SshConfig) -> Result<SshSettings, String> {
        let d = |key: &str, v: &str| parse_duration(v).map_err(|m| format!("ssh.{key}: {m}"));
        let s = |key: &str, v: &str| parse_size(v).map_err(|m| format!("ssh.{key}: {m}"));
        if !(1..=10_000).contains(&c.concurrency) {
            return Err("ssh.concurrency must be between 1 and 10000".into());
        }
        for (i, cred) in c.credentials.iter().enumerate() {
            let has_login = cred.password_secret.is_some() || cred.key_secret.is_some();
            crate::kit::targets::check_credential("ssh", i, "hosts", &cred.hosts, &cred.user, Some(has_login))?;
        }
        Ok(SshSettings {
            concurrency: c.concurrency,
            connect_timeout: d("connect_timeout", &c.connect_timeout)?,
            timeout: d("timeout", &c.timeout)?,
            first_contact: c.first_contact,
            max_output: s("max_output", &c.max_output)?,
            max_file: s("max_file", &c.max_file)?,
            credentials: c.credentials,
        })
    }
}
