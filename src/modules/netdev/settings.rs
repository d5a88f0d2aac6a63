//! `[netdev]` of opslet.toml: device logins, profiles and limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;
use crate::kit::ssh::FirstContact;
use crate::util::{parse_duration, parse_size};

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

impl NetdevSettings {
    /// `[netdev]` resolved and checked.
    pub fn from_config(config: &Config) -> Result<NetdevSettings, Error> {
        let c: NetdevConfig = config.section("netdev")?;
        NetdevSettings::check(c).map_err(|m| config.invalid(m))
    }

    fn check(c: NetdevConfig) -> Result<NetdevSettings, String> {
        let d = |key: &str, v: &str| parse_duration(v).map_err(|m| format!("netdev.{key}: {m}"));
        if !(1..=1000).contains(&c.concurrency) {
            return Err("netdev.concurrency must be between 1 and 1000".into());
        }
        for (i, cred) in c.credentials.iter().enumerate() {
            let has_login = cred.password_secret.is_some() || cred.key_secret.is_some();
            crate::kit::targets::check_credential("netdev", i, "devices", &cred.devices, &cred.user, Some(has_login))?;
        }
        Ok(NetdevSettings {
            concurrency: c.concurrency,
            connect_timeout: d("connect_timeout", &c.connect_timeout)?,
            timeout: d("timeout", &c.timeout)?,
            first_contact: c.first_contact,
            max_output: parse_size(&c.max_output).map_err(|m| format!("netdev.max_output: {m}"))?,
            profiles_dir: c.profiles_dir,
            credentials: c.credentials,
        })
    }
}
