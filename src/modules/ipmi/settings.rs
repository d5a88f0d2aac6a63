//! `[ipmi]` of opslet.toml: BMC logins per host group, and limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;
use crate::util::parse_duration;

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

impl IpmiConfig {
    /// `[ipmi]` and its timeout, checked.
    pub fn from_config(config: &Config) -> Result<(IpmiConfig, Duration), Error> {
        let c: IpmiConfig = config.section("ipmi")?;
        let timeout = c.check().map_err(|m| config.invalid(m))?;
        Ok((c, timeout))
    }

    fn check(&self) -> Result<Duration, String> {
        let c = self;
        if !(1..=1000).contains(&c.concurrency) {
            return Err("ipmi.concurrency must be between 1 and 1000".into());
        }
        for (i, cred) in c.credentials.iter().enumerate() {
            crate::kit::targets::check_credential("ipmi", i, "hosts", &cred.hosts, &cred.user, None)?;
        }
        parse_duration(&c.timeout).map_err(|m| format!("ipmi.timeout: {m}"))
    }
}
