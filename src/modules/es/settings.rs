//! `[es.NAME]` of opslet.toml: one table per Elasticsearch or OpenSearch cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;

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
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// The connection `es.*` uses when several are configured.
    #[serde(default)]
    pub default: bool,
}

fn default_timeout() -> String {
    "30s".into()
}

/// `[es.NAME]` tables, checked.
pub fn from_config(config: &Config) -> Result<BTreeMap<String, EsConn>, Error> {
    let conns: BTreeMap<String, EsConn> = config.section("es")?;
    check(&conns).map_err(|m| config.invalid(m))?;
    Ok(conns)
}

fn check(conns: &BTreeMap<String, EsConn>) -> Result<(), String> {
    for (name, c) in conns {
        let at = format!("es.{name}");
        crate::kit::http::check_connection(&at, &c.url, &c.timeout)?;
        match (&c.user, &c.password_secret, &c.api_key_secret) {
            (None, None, None) | (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            _ => return Err(format!("{at}: give user + password_secret, or api_key_secret, or neither")),
        }
    }
    crate::kit::http::one_default("es", conns.values().map(|c| c.default))?;
    Ok(())
}
