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

mod render;

use render::{Rendered, template_env, template_error};
pub use render::{SecretFn, Unknown, placeholder_secrets};

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
    /// Where the item was read from, for messages (the item file, the template file); kept with
    /// each version, and no part of what makes two versions differ.
    #[serde(default, skip_serializing_if = "Origin::is_empty")]
    pub origin: Origin,
}

/// Where an item was read from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Origin {
    /// The item file as `opslet config set` was given it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its `template_file`, as the item names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<String>,
}

impl Origin {
    fn is_empty(&self) -> bool {
        self.file.is_none() && self.template_file.is_none()
    }
}

/// The same item read from another place is the same item.
impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
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
        // Where it was read from is opslet's to say, not the file's.
        spec.origin = Origin::default();
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
            spec.origin.template_file = Some(tf);
        }
        spec.origin.file = Some(file.to_string());
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

    /// The file for `host` in `env`. `secret` reads a secret for `{{ secret("name") }}`. An
    /// undefined value is an error naming it, where it is used and the layers searched.
    pub fn render(&self, env: &str, host: &Host, inherited: &[String], secret: SecretFn) -> Result<String, String> {
        let text = self.template.as_deref().unwrap_or_default();
        Rendered { spec: self, what: self.template_name(), text }.render(env, host, inherited, secret)
    }

    /// How messages name the template: its `template_file`, else the item file's `template`.
    pub fn template_name(&self) -> String {
        match (&self.origin.template_file, &self.origin.file) {
            (Some(tf), _) => tf.clone(),
            (None, Some(f)) => format!("{f}, template"),
            (None, None) => format!("item {}, template", self.name),
        }
    }

    /// How messages name the item's `path`.
    pub fn path_name(&self) -> String {
        match &self.origin.file {
            Some(f) => format!("{f}, path"),
            None => format!("item {}, path", self.name),
        }
    }

    /// The values the template uses that no layer defines (for `opslet config set` to warn).
    pub fn unknown_values(&self) -> Vec<Unknown> {
        render::unknown_values(self)
    }

    /// Where the file goes on `host` in `env`.
    pub fn path_for(&self, env: &str, host: &Host, inherited: &[String]) -> Result<String, String> {
        if !self.path.contains("{{") {
            return Ok(self.path.clone());
        }
        let what = self.path_name();
        let no_secrets: SecretFn = std::sync::Arc::new(|_: &str| Err("no secrets in paths".to_string()));
        let p = Rendered { spec: self, what, text: &self.path }.render(env, host, inherited, no_secrets)?;
        check_path(&p).map_err(|m| format!("the path renders as {m}"))?;
        Ok(p)
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
    versions: crate::store::Tree,
    state: crate::store::Tree,
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
    let mut spec = spec.clone();
    spec.origin = Origin::default();
    toml::to_string_pretty(&spec).unwrap_or_default()
}

impl ConfigItems {
    pub fn open(store: &Store) -> Result<ConfigItems, Error> {
        Ok(ConfigItems {
            versions: store.tree(crate::store::keys::CMDB_CONFIG_ITEMS),
            state: store.tree(crate::store::keys::CMDB_CONFIG_STATE),
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
            if self.versions.compare_and_swap(vkey(&v.name, version), None::<&[u8]>, Some(bytes))? {
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
        self.state.compare_and_swap(skey(&new.item, &new.host), Some(o), Some(n))
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

    #[test]
    fn an_undefined_value_is_named_with_where_it_is_used_and_the_layers_searched() {
        let none: SecretFn = std::sync::Arc::new(|_: &str| -> Result<String, String> { Err("no secrets".into()) });
        // A top-level value of an inline template.
        let s = ItemSpec::parse("items/app.toml", &ITEM.replace("{{ workers }}", "{{ wrokers }}"), None).unwrap();
        let e = s.render("prod", &host(&["big"]), &["all".to_string()], none.clone()).unwrap_err();
        assert_eq!(
            e,
            "undefined value `wrokers` at items/app.toml, template line 2 (for web1 in prod, searched [values], \
             [values.env.prod], [values.group.all] (not in the item), [values.group.big])"
        );
        // A nested value of a template file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.conf.j2"), "# app\nport = {{ port }}\nprimary = {{ db.primary.port }}\n").unwrap();
        let item = "name = \"app\"\npath = \"/etc/app.conf\"\ntemplate_file = \"app.conf.j2\"\n[values]\nport = 1\n[values.db.primary]\nhost = \"db1\"\n";
        let s = ItemSpec::parse("items/app.toml", item, Some(dir.path())).unwrap();
        let e = s.render("dev", &host(&[]), &[], none.clone()).unwrap_err();
        assert_eq!(
            e,
            "undefined value `db.primary.port` at app.conf.j2 line 3 (for web1 in dev, searched [values], [values.env.dev] (not in the item))"
        );
        // An attribute of a loop variable.
        let looped = ITEM
            .replace("workers = {{ workers }}", "{% for u in users %}\nuser = {{ u.nme }}\n{% endfor %}")
            .replace("workers = 2", "workers = 2\nusers = [{ name = \"ann\" }]");
        let s = ItemSpec::parse("items/app.toml", &looped, None).unwrap();
        let e = s.render("dev", &host(&[]), &[], none.clone()).unwrap_err();
        assert_eq!(e, "undefined value `u.nme` at items/app.toml, template line 3 (`u` is a variable of the template)");
        // A templated path.
        let s = ItemSpec::parse("items/app.toml", &ITEM.replace("/etc/app/app.conf", "/etc/{{ instance }}/app.conf"), None).unwrap();
        let e = s.path_for("dev", &host(&[]), &[]).unwrap_err();
        assert!(e.starts_with("undefined value `instance` at items/app.toml, path line 1 (for web1 in dev"), "{e}");
    }

    #[test]
    fn values_no_layer_defines_are_found_before_any_host() {
        let s = ItemSpec::parse("items/app.toml", &ITEM.replace("{{ workers }}", "{{ wrokers }}"), None).unwrap();
        assert_eq!(s.unknown_values(), vec![Unknown { name: "wrokers".into(), at: "items/app.toml, template line 2".into() }]);
        // Defined in some layer (an environment's, a group's), a nested value, opslet's own names,
        // loop variables and functions are not reported; a nested value no layer has is.
        let t = "{{ workers }} {{ env }} {{ host.name }} {{ item }} {{ secret('k') }}\n{% for u in users %}{{ u.nme }}{% endfor %}\n{{ db.primary.host }} {{ db.primary.port }}";
        let item = format!(
            "name = \"app\"\npath = \"/etc/{{{{ dir }}}}/app.conf\"\ntemplate = \"\"\"\n{t}\"\"\"\n[values]\nusers = []\n[values.db.primary]\nhost = \"db1\"\n\
             [values.env.prod]\nworkers = 8\n[values.group.web]\ndir = \"web\"\n"
        );
        let s = ItemSpec::parse("items/app.toml", &item, None).unwrap();
        assert_eq!(s.unknown_values(), vec![Unknown { name: "db.primary.port".into(), at: "items/app.toml, template line 3".into() }]);
    }

    #[test]
    fn where_an_item_was_read_from_does_not_make_a_new_version() {
        let store = Store::temporary().unwrap();
        let items = ConfigItems::open(&store).unwrap();
        let (v1, _) = items.set(&store, ItemSpec::parse("items/app.toml", ITEM, None).unwrap(), "alice", "first").unwrap();
        let (same, new) = items.set(&store, ItemSpec::parse("./elsewhere/app.toml", ITEM, None).unwrap(), "alice", "again").unwrap();
        assert!(!new && same.version == v1.version);
        assert!(!spec_toml(&v1.spec).contains("origin"), "{}", spec_toml(&v1.spec));
        // An item file cannot claim an origin of its own.
        let s = ItemSpec::parse("items/app.toml", &format!("{ITEM}\n[origin]\ntemplate_file = \"fake.j2\"\n"), None).unwrap();
        assert_eq!(s.template_name(), "items/app.toml, template");
    }
}
