//! The CLI's `cmdb import --from-zabbix`: Zabbix hosts as cmdb hosts, and a client for a
//! configured connection outside a run; `connect` is also how a run's clients log in.

use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Client, Login};
use super::settings::{self, ZabbixConn};

/// A client for connection `name` with its login: the one way both a run and the CLI connect.
/// `secret` reads a secret's text by name.
pub(super) fn connect(name: &str, conf: &ZabbixConn, secret: &dyn Fn(&str) -> Result<String, String>) -> Result<Client, String> {
    let login = match (&conf.user, &conf.password_secret, &conf.token_secret) {
        (Some(u), Some(p), _) => Login::Password { user: u.clone(), password: secret(p)? },
        (_, _, Some(t)) => Login::Token(secret(t)?),
        _ => return Err(format!("[zabbix.{name}] has no credentials")),
    };
    let timeout = crate::util::parse_duration(&conf.timeout).unwrap_or(Duration::from_secs(30));
    let ca = crate::kit::http::read_ca(conf.ca_file.as_deref()).map_err(|m| format!("[zabbix.{name}] {m}"))?;
    Client::new(name, &conf.url, login, timeout, ca.as_deref())
}

/// A client for connection `name` of `config`, with its login read from `store`'s secrets
/// (for the CLI's `cmdb import --from-zabbix`).
pub fn client_for(config: &crate::config::Config, store: &crate::store::Store, name: &str) -> Result<Client, crate::error::Error> {
    use crate::error::Error;
    let conns = settings::from_config(config)?;
    let conf = conns.get(name).ok_or_else(|| {
        let have: Vec<&String> = conns.keys().collect();
        Error::Usage(format!(
            "no [zabbix.{name}] in the config (configured: {})",
            if have.is_empty() { "none".into() } else { have.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
        ))
    })?;
    let secrets = crate::secrets::Secrets::open(store.clone())?;
    let owner = format!("[zabbix.{name}]");
    connect(name, conf, &|s| secrets.text(s, &owner).map_err(|e| e.to_string())).map_err(Error::Config)
}

/// Zabbix hosts as cmdb hosts: the technical name, the main interface's address, groups and tags
/// made into cmdb names (lowercase, `-` for anything else), the Zabbix host id as an attribute.
/// Returns the hosts and what had to be left out.
pub async fn cmdb_hosts(client: &Client, group: Option<&str>) -> Result<(Vec<crate::cmdb::Host>, Vec<String>), String> {
    let mut params = json!({ "output": ["hostid", "host", "status"], "selectGroups": ["name"], "selectInterfaces": ["ip", "dns", "useip", "main"], "selectTags": "extend" });
    if let Some(g) = group {
        let groups =
            client.call("hostgroup.get", json!({ "output": ["groupid"], "filter": { "name": [g] } })).await.map_err(|e| e.to_string())?;
        let ids: Vec<Value> = groups.as_array().into_iter().flatten().map(|g| g["groupid"].clone()).collect();
        if ids.is_empty() {
            return Err(format!("Zabbix has no host group `{g}`"));
        }
        params["groupids"] = json!(ids);
    }
    let r = client.call("host.get", params).await.map_err(|e| e.to_string())?;
    let slug = |s: &str| -> String {
        let mut out: String =
            s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c.to_ascii_lowercase() } else { '-' }).collect();
        out.truncate(128);
        out
    };
    let mut hosts = Vec::new();
    let mut skipped = Vec::new();
    for h in r.as_array().into_iter().flatten() {
        let name = h["host"].as_str().unwrap_or("").to_string();
        if crate::cmdb::valid("host", &name).is_err() {
            skipped.push(format!("host `{name}` (not a cmdb host name)"));
            continue;
        }
        let iface = h["interfaces"].as_array().into_iter().flatten().find(|i| i["main"] == "1").or_else(|| h["interfaces"].get(0));
        let address = iface
            .map(|i| if i["useip"] == "0" { i["dns"].as_str().unwrap_or("") } else { i["ip"].as_str().unwrap_or("") })
            .filter(|a| !a.is_empty())
            .unwrap_or(&name)
            .to_string();
        let mut host = crate::cmdb::Host { name: name.clone(), address, port: 22, ..Default::default() };
        host.groups = h["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .map(slug)
            .filter(|g| crate::cmdb::valid("group", g).is_ok())
            .collect();
        for t in h["tags"].as_array().into_iter().flatten() {
            let (k, v) = (t["tag"].as_str().unwrap_or(""), t["value"].as_str().unwrap_or(""));
            if crate::cmdb::valid("tag", k).is_ok() && !k.starts_with("ansible_") && !v.chars().any(char::is_control) {
                host.tags.insert(k.to_string(), v.to_string());
            } else {
                skipped.push(format!("tag `{k}` on {name}"));
            }
        }
        host.attrs.insert("zabbix_hostid".into(), h["hostid"].clone());
        host.attrs.insert("zabbix_enabled".into(), json!(h["status"] == "0"));
        hosts.push(host);
    }
    Ok((hosts, skipped))
}
