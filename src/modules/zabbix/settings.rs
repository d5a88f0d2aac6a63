//! `[zabbix.NAME]` of opslet.toml: one table per Zabbix server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;

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
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// A PEM file of extra CA certificates to trust for this server.
    pub ca_file: Option<PathBuf>,
    /// The connection calls without a name use (default: the only one, or "default").
    #[serde(default)]
    pub default: bool,
}

fn default_timeout() -> String {
    "30s".into()
}

/// `[zabbix.NAME]` tables, checked.
pub fn from_config(config: &Config) -> Result<BTreeMap<String, ZabbixConn>, Error> {
    let conns: BTreeMap<String, ZabbixConn> = config.section("zabbix")?;
    check(&conns).map_err(|m| config.invalid(m))?;
    Ok(conns)
}

fn check(conns: &BTreeMap<String, ZabbixConn>) -> Result<(), String> {
    for (name, c) in conns {
        let at = format!("zabbix.{name}");
        crate::kit::http::check_connection(&at, &c.url, &c.timeout)?;
        match (&c.user, &c.password_secret, &c.token_secret) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            _ => return Err(format!("{at}: give user + password_secret, or token_secret (names of secrets, not values)")),
        }
    }
    crate::kit::http::one_default("zabbix", conns.values().map(|c| c.default))?;
    Ok(())
}
