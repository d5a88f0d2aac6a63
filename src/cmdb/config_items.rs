//! Config items: application configuration files kept in the cmdb with immutable versions, and
//! which version each host runs.
//!
//! An item is a TOML document (`opslet config set FILE`): the target path, mode, owner and group,
//! a template body with values per environment and per host group, and the commands that
//! validate the file, reload the service and check its health. Every change is a new version with
//! author, message and the diff against the one before; nothing is rewritten. Rendering is
//! minijinja with undefined values as errors. Nothing here talks to hosts.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Host;
use crate::error::Error;
use crate::store::Store;

/// What `opslet config set` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemSpec {
    pub name: String,
    /// Absolute path of the file on the hosts. It may use the template's values
    /// (`/etc/redis/{{ instance }}.conf`).
    pub path: String,
    /// Octal, like "0644".
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Run the commands and write the file as root (`sudo -n`), or as this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo: Option<SudoSpec>,
    /// The file's template (minijinja). Either this or `template_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A template file beside the item's TOML file; its text is stored in the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<String>,
    /// Checks a candidate file: `{file}` is replaced by its path. Without `{file}` the command runs
    /// after the new file is in place, and a failure restores the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<String>,
    /// Makes the service read the file (e.g. `systemctl reload nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<String>,
    /// Says whether the service is fine with the new file; run after the reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Values: defaults, then `env.NAME`, then `group.NAME`: first the groups a host is in through
    /// nesting, then its own groups (each set in name order). `env`, `host` and `item` are
    /// reserved: the template gets them from opslet.
    #[serde(default)]
    pub values: Values,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SudoSpec {
    Root(bool),
    User(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Values {
    #[serde(flatten)]
    pub defaults: Map<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Map<String, Value>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group: BTreeMap<String, Map<String, Value>>,
}

fn default_mode() -> String {
    "0644".into()
}

fn ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl ItemSpec {
    /// Parses an item file; `dir` is where `template_file` is read from. Errors name the file.
    pub fn parse(file: &str, text: &str, dir: Option<&Path>) -> Result<ItemSpec, Error> {
        let mut spec: ItemSpec = toml::from_str(text).map_err(|e| Error::Usage(format!("{file}: {}", e.to_string().trim())))?;
        if let Some(tf) = spec.template_file.take() {
            if spec.template.is_some() {
                return Err(Error::Usage(format!("{file}: give `template` or `template_file`, not both")));
            }
            if tf.contains("..") || tf.starts_with('/') {
                return Err(Error::Usage(format!("{file}: template_file `{tf}` must be a file beside the item")));
            }
            let p = dir.unwrap_or(Path::new(".")).join(&tf);
            spec.template =
                Some(std::fs::read_to_string(&p).map_err(|e| Error::Usage(format!("{file}: template_file {}: {e}", p.display())))?);
        }
        spec.check().map_err(|m| Error::Usage(format!("{file}: {m}")))?;
        Ok(spec)
    }

    /// Checks the fields; the message names the one that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !ident(&self.name) {
            return Err(format!("name `{}`: use letters, digits, `-`, `_` and `.`", self.name));
        }
        if self.path.contains("{{") {
            template_env(std::sync::Arc::new(|_: &str| Ok(String::new())))
                .template_from_str(&self.path)
                .map_err(|e| format!("path: {}", template_error(&e)))?;
        } else {
            check_path(&self.path)?;
        }
        if self.mode.is_empty() || self.mode.len() > 4 || !self.mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!("mode `{}`: give octal permissions like \"0644\"", self.mode));
        }
        let user = |key: &str, v: &Option<String>| -> Result<(), String> {
            match v {
                Some(u) if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => {
                    Err(format!("{key} `{u}` is not a user or group name"))
                }
                _ => Ok(()),
            }
        };
        user("owner", &self.owner)?;
        user("group", &self.group)?;
        if let Some(SudoSpec::User(u)) = &self.sudo {
            user("sudo", &Some(u.clone()))?;
        }
        let v = &self.values;
        let tables = std::iter::once(("values", &v.defaults))
            .chain(v.env.values().map(|m| ("values.env", m)))
            .chain(v.group.values().map(|m| ("values.group", m)));
        for (at, m) in tables {
            if let Some(k) = ["env", "host", "item"].iter().find(|k| m.contains_key(**k)) {
                return Err(format!("{at}: `{k}` is reserved (the template gets it from opslet); name the value otherwise"));
            }
        }
        let Some(t) = &self.template else { return Err("give the file's `template` (or `template_file`)".into()) };
        template_env(std::sync::Arc::new(|_: &str| Ok(String::new())))
            .template_from_str(t)
            .map_err(|e| format!("template: {}", template_error(&e)))?;
        for (key, cmd) in [("validate", &self.validate), ("reload", &self.reload), ("health", &self.health)] {
            if let Some(c) = cmd
                && (c.trim().is_empty() || c.contains('\0'))
            {
                return Err(format!("{key}: empty command"));
            }
        }
        Ok(())
    }

    /// The values for a host in `env`: defaults, then the environment's, then each of the
    /// host's groups' that the item names, in the host's group order.
    pub fn values_for(&self, env: &str, host: &Host, inherited: &[String]) -> Map<String, Value> {
        let mut v = self.values.defaults.clone();
        if let Some(e) = self.values.env.get(env) {
            v.extend(e.clone());
        }
        for g in inherited.iter().chain(host.groups.iter()) {
            if let Some(gv) = self.values.group.get(g) {
                v.extend(gv.clone());
            }
        }
        v
    }

    /// The file for `host` in `env`. `secret` reads a secret for `{{ secret("name") }}`.
    pub fn render(&self, env: &str, host: &Host, inherited: &[String], secret: SecretFn) -> Result<String, String> {
        self.render_text(self.template.as_deref().unwrap_or_default(), env, host, inherited, secret)
    }

    /// Where the file goes on `host` in `env`.
    pub fn path_for(&self, env: &str, host: &Host, inherited: &[String]) -> Result<String, String> {
        if !self.path.contains("{{") {
            return Ok(self.path.clone());
        }
        let p =
            self.render_text(&self.path, env, host, inherited, std::sync::Arc::new(|_: &str| Err("no secrets in paths".to_string())))?;
        check_path(&p).map_err(|m| format!("the path renders as {m}"))?;
        Ok(p)
    }

    fn render_text(&self, source: &str, env: &str, host: &Host, inherited: &[String], secret: SecretFn) -> Result<String, String> {
        let mut ctx = self.values_for(env, host, inherited);
        ctx.insert("env".into(), Value::String(env.into()));
        ctx.insert("item".into(), Value::String(self.name.clone()));
        ctx.insert(
            "host".into(),
            serde_json::json!({ "name": host.name, "address": host.address, "groups": host.groups, "tags": host.tags }),
        );
        let env_ = template_env(secret);
        let t = env_.template_from_str(source).map_err(|e| template_error(&e))?;
        t.render(Value::Object(ctx)).map_err(|e| template_error(&e))
    }
}

fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.ends_with('/') || p.split('/').any(|c| c == "..") {
        return Err(format!("path `{p}`: give an absolute file path without `..`"));
    }
    if p.contains(['\n', '\r', '\0']) {
        return Err("path: must be one line".into());
    }
    Ok(())
}

/// A minijinja error with its line and what went wrong.
fn template_error(e: &minijinja::Error) -> String {
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        m.push_str(&format!(": {s}"));
        src = s.source();
    }
    m
}

/// Reads a secret for `{{ secret("name") }}` in templates.
pub type SecretFn = std::sync::Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

fn template_env<'a>(secret: SecretFn) -> minijinja::Environment<'a> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // A template is a config file, not a program: bounded work.
    env.set_fuel(Some(200_000));
    env.add_function("secret", move |name: String| -> Result<String, minijinja::Error> {
        secret(&name).map_err(|m| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m))
    });
    env
}

/// One immutable version of an item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemVersion {
    pub name: String,
    pub version: u32,
    pub author: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub spec: ItemSpec,
    /// The change against the version before, as a unified diff of the item's TOML.
    pub diff: String,
}

/// What a host runs, per item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostState {
    pub item: String,
    pub host: String,
    /// The version last published there (or being repaired to).
    pub version: u32,
    pub env: String,
    /// sha256 of the file as published.
    pub sha256: String,
    /// in-sync, drifted, failed, or unknown (a publish whose outcome was lost: see `pending_*`).
    pub status: String,
    pub at: DateTime<Utc>,
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When `unknown`: the version and hash the lost publish was putting in place (a check that
    /// finds them on the host records that version as in sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sha256: Option<String>,
}

#[derive(Clone)]
pub struct ConfigItems {
    versions: sled::Tree,
    state: sled::Tree,
}

fn vkey(name: &str, version: u32) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

fn skey(item: &str, host: &str) -> Vec<u8> {
    let mut k = prefix(item);
    k.extend_from_slice(host.as_bytes());
    k
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(v).map_err(|e| Error::Store(format!("a stored config item record is unreadable: {e}")))
}

/// The spec as TOML, for diffs and `show`.
pub fn spec_toml(spec: &ItemSpec) -> String {
    toml::to_string_pretty(spec).unwrap_or_default()
}

impl ConfigItems {
    pub fn open(store: &Store) -> Result<ConfigItems, Error> {
        Ok(ConfigItems {
            versions: store.db().open_tree(crate::store::keys::CMDB_CONFIG_ITEMS)?,
            state: store.db().open_tree(crate::store::keys::CMDB_CONFIG_STATE)?,
        })
    }

    pub fn latest(&self, name: &str) -> Result<Option<ItemVersion>, Error> {
        match self.versions.scan_prefix(prefix(name)).next_back() {
            Some(kv) => Ok(Some(decode(&kv?.1)?)),
            None => Ok(None),
        }
    }

    pub fn get(&self, name: &str, version: u32) -> Result<Option<ItemVersion>, Error> {
        self.versions.get(vkey(name, version))?.map(|v| decode(&v)).transpose()
    }

    /// The version asked for, or the latest; an error names what is missing.
    pub fn resolve(&self, name: &str, version: Option<u32>) -> Result<ItemVersion, Error> {
        let latest =
            self.latest(name)?.ok_or_else(|| Error::NotFound(format!("no config item `{name}` (add it with `opslet config set FILE`)")))?;
        match version {
            None => Ok(latest),
            Some(v) => self
                .get(name, v)?
                .ok_or_else(|| Error::NotFound(format!("config item `{name}` has no version {v} (versions 1-{})", latest.version))),
        }
    }

    pub fn history(&self, name: &str) -> Result<Vec<ItemVersion>, Error> {
        self.versions.scan_prefix(prefix(name)).map(|kv| decode(&kv?.1)).collect()
    }

    /// Every item's latest version.
    pub fn list(&self) -> Result<Vec<ItemVersion>, Error> {
        let mut out: BTreeMap<String, ItemVersion> = BTreeMap::new();
        for kv in self.versions.iter() {
            let v: ItemVersion = decode(&kv?.1)?;
            out.insert(v.name.clone(), v);
        }
        Ok(out.into_values().collect())
    }

    /// Stores `spec` as the item's next version unless it equals the latest; audited. Returns
    /// the version holding it and whether it is new.
    pub fn set(&self, store: &Store, spec: ItemSpec, author: &str, message: &str) -> Result<(ItemVersion, bool), Error> {
        spec.check().map_err(|m| Error::Usage(format!("config item `{}`: {m}", spec.name)))?;
        loop {
            let latest = self.latest(&spec.name)?;
            if let Some(l) = &latest
                && l.spec == spec
            {
                return Ok((l.clone(), false));
            }
            if message.trim().is_empty() {
                return Err(Error::Usage("give a message saying why (-m \"...\")".into()));
            }
            let before = latest.as_ref().map(|l| spec_toml(&l.spec)).unwrap_or_default();
            let version = latest.as_ref().map_or(1, |l| l.version + 1);
            let diff = super::device_configs::unified_diff(
                &before,
                &spec_toml(&spec),
                &format!("{} v{}", spec.name, version - 1),
                &format!("{} v{version}", spec.name),
            );
            let v = ItemVersion {
                name: spec.name.clone(),
                version,
                author: author.into(),
                message: message.trim().into(),
                created_at: Utc::now(),
                spec: spec.clone(),
                diff,
            };
            let bytes = serde_json::to_vec(&v).map_err(|e| Error::Store(e.to_string()))?;
            if self.versions.compare_and_swap(vkey(&v.name, version), None::<&[u8]>, Some(bytes))?.is_ok() {
                self.versions.flush()?;
                store.audit().record_change(
                    "config.set",
                    author,
                    "config",
                    None,
                    serde_json::json!({ "item": v.name, "version": version, "message": v.message, "diff": v.diff }),
                )?;
                return Ok((v, true));
            }
        }
    }

    pub fn host_state(&self, item: &str, host: &str) -> Result<Option<HostState>, Error> {
        self.state.get(skey(item, host))?.map(|v| decode(&v)).transpose()
    }

    pub fn states(&self, item: &str) -> Result<Vec<HostState>, Error> {
        self.state.scan_prefix(prefix(item)).map(|kv| decode(&kv?.1)).collect()
    }

    pub fn put_state(&self, s: &HostState) -> Result<(), Error> {
        let bytes = serde_json::to_vec(s).map_err(|e| Error::Store(e.to_string()))?;
        self.state.insert(skey(&s.item, &s.host), bytes)?;
        Ok(())
    }

    /// Replaces `old` with `new` only if the record is still `old` (a publish that happened
    /// meanwhile wins); returns whether it was replaced.
    pub fn replace_state(&self, old: &HostState, new: &HostState) -> Result<bool, Error> {
        let o = serde_json::to_vec(old).map_err(|e| Error::Store(e.to_string()))?;
        let n = serde_json::to_vec(new).map_err(|e| Error::Store(e.to_string()))?;
        Ok(self.state.compare_and_swap(skey(&new.item, &new.host), Some(o), Some(n))?.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: &str = r#"
name = "app"
path = "/etc/app/app.conf"
mode = "0640"
validate = "app --check {file}"
reload = "systemctl reload app"
template = """
port = {{ port }}
workers = {{ workers }}
host = {{ host.name }} ({{ env }})
"""
[values]
port = 8080
workers = 2
[values.env.prod]
workers = 8
[values.group.big]
workers = 32
"#;

    fn host(groups: &[&str]) -> Host {
        Host {
            name: "web1".into(),
            address: "10.0.0.1".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn values_layer_defaults_environment_and_groups() {
        let s = ItemSpec::parse("app.toml", ITEM, None).unwrap();
        let none: SecretFn = std::sync::Arc::new(|_: &str| -> Result<String, String> { Err("no secrets".into()) });
        assert_eq!(s.render("dev", &host(&[]), &[], none.clone()).unwrap(), "port = 8080\nworkers = 2\nhost = web1 (dev)\n");
        assert_eq!(s.render("prod", &host(&[]), &[], none.clone()).unwrap(), "port = 8080\nworkers = 8\nhost = web1 (prod)\n");
        assert_eq!(s.render("prod", &host(&["big"]), &[], none.clone()).unwrap(), "port = 8080\nworkers = 32\nhost = web1 (prod)\n");
        // A group the host is in through nesting counts too, before its own groups.
        assert_eq!(
            s.render("prod", &host(&[]), &["big".to_string()], none.clone()).unwrap(),
            "port = 8080\nworkers = 32\nhost = web1 (prod)\n"
        );
    }

    #[test]
    fn undefined_values_and_bad_fields_are_named() {
        let s = ItemSpec::parse("app.toml", &ITEM.replace("{{ workers }}", "{{ wrokers }}"), None).unwrap();
        let e = s.render("dev", &host(&[]), &[], std::sync::Arc::new(|_: &str| Ok(String::new()))).unwrap_err();
        assert!(e.contains("undefined"), "{e}");
        let e = ItemSpec::parse("app.toml", &ITEM.replace("/etc/app/app.conf", "etc/app.conf"), None).unwrap_err().to_string();
        assert!(e.contains("app.toml: path `etc/app.conf`"), "{e}");
        let e = ItemSpec::parse("app.toml", &ITEM.replace("0640", "rw-r"), None).unwrap_err().to_string();
        assert!(e.contains("mode `rw-r`"), "{e}");
        let e = ItemSpec::parse("app.toml", &ITEM.replace("{{ port }}", "{{ port "), None).unwrap_err().to_string();
        assert!(e.contains("app.toml: template:"), "{e}");
        let e = ItemSpec::parse("app.toml", &ITEM.replace("0640", "+644"), None).unwrap_err().to_string();
        assert!(e.contains("mode `+644`"), "{e}");
        let e = ItemSpec::parse("app.toml", &ITEM.replace("port = 8080", "port = 8080\nhost = \"x\""), None).unwrap_err().to_string();
        assert!(e.contains("values: `host` is reserved"), "{e}");
        let e = ItemSpec::parse("app.toml", &format!("bogus = 1\n{ITEM}"), None).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn versions_are_immutable_and_carry_a_diff() {
        let store = Store::temporary().unwrap();
        let items = ConfigItems::open(&store).unwrap();
        let s1 = ItemSpec::parse("app.toml", ITEM, None).unwrap();
        let (v1, new) = items.set(&store, s1.clone(), "alice", "first").unwrap();
        assert!(new && v1.version == 1);
        let (same, new) = items.set(&store, s1.clone(), "alice", "again").unwrap();
        assert!(!new && same.version == 1);
        let mut s2 = s1;
        s2.values.defaults.insert("port".into(), 9090.into());
        let (v2, _) = items.set(&store, s2, "bob", "move the port").unwrap();
        assert_eq!(v2.version, 2);
        assert!(v2.diff.contains("-port = 8080") && v2.diff.contains("+port = 9090"), "{}", v2.diff);
        assert_eq!(items.history("app").unwrap().len(), 2);
        assert_eq!(items.resolve("app", Some(1)).unwrap().author, "alice");
        assert!(items.resolve("app", Some(9)).unwrap_err().to_string().contains("versions 1-2"));
        assert!(items.set(&store, v2.spec.clone(), "bob", " ").is_ok(), "unchanged needs no message");
    }
}
