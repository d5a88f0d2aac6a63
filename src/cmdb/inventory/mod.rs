//! Moving hosts in and out of the cmdb: CSV, JSON, Ansible inventories (INI and YAML), and
//! Ansible's dynamic-inventory JSON.
//!
//! Mapping to Ansible: `ansible_host` is the address (the name when missing), `ansible_port`
//! the port, `opslet_host_key` the pinned SSH key; other `ansible_*` variables and values that
//! are not scalars are free attributes; every other variable is a tag (its value as text).
//! Group variables become tags of the group's hosts that do not set them themselves. Groups
//! listed under `children` become nested groups.
//!
//! Layout: this file holds the shared model (`Inventory`, the variable mapping, the builder the
//! readers share) and the entry points; `tabular` reads and writes CSV and JSON, `ansible` the
//! INI and YAML inventories and the dynamic-inventory JSON.

mod ansible;
mod tabular;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Host;

pub use ansible::{dynamic, expand_range};

/// The formats of `opslet cmdb import` and `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    /// Ansible INI inventory.
    Ini,
    /// Ansible YAML inventory.
    Yaml,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Csv, Format::Json, Format::Ini, Format::Yaml];

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Ini => "ini",
            Format::Yaml => "yaml",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Format::Csv => "CSV, one host a line",
            Format::Json => "JSON, a list of hosts",
            Format::Ini => "Ansible INI inventory",
            Format::Yaml => "Ansible YAML inventory",
        }
    }

    /// From a file name's extension.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "ini" | "cfg" | "hosts" => Some(Format::Ini),
            "yml" | "yaml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Hosts plus the group tree (group -> its parents).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Variables left out of an import because they look like credentials, as `var` names
    /// (credentials belong in opslet's secrets, not in the cmdb every applet may read).
    #[serde(skip)]
    pub dropped: BTreeSet<String>,
}

/// Whether a variable name looks like it holds a credential.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passwd", "passphrase", "secret", "token", "vault", "api_key", "apikey", "private_key"]
        .iter()
        .any(|w| n.contains(w) && !n.ends_with("_file"))
        || n.ends_with("_pass")
        || n == "pass"
}

/// A parse error: `file:line: message`.
fn at(file: &str, line: usize, msg: impl std::fmt::Display) -> String {
    if line == 0 { format!("{file}: {msg}") } else { format!("{file}:{line}: {msg}") }
}

pub fn parse(format: Format, text: &str, file: &str) -> Result<Inventory, String> {
    match format {
        Format::Csv => tabular::parse_csv(text, file),
        Format::Json => tabular::parse_json(text, file),
        Format::Ini => ansible::parse_ini(text, file),
        Format::Yaml => ansible::parse_yaml(text, file),
    }
}

pub fn write(format: Format, inv: &Inventory) -> String {
    match format {
        Format::Csv => tabular::write_csv(inv),
        Format::Json => tabular::write_json(inv),
        Format::Ini => ansible::write_ini(inv),
        Format::Yaml => ansible::write_yaml(inv),
    }
}

// ---- shared: Ansible variables <-> host fields ----------------------------------------------

/// A builder that collects hosts, memberships and variables in file order.
#[derive(Default)]
struct Builder {
    order: Vec<String>,
    vars: BTreeMap<String, Map<String, Value>>,
    members: BTreeMap<String, BTreeSet<String>>,
    group_vars: BTreeMap<String, Map<String, Value>>,
    children: BTreeMap<String, BTreeSet<String>>,
}

impl Builder {
    fn host(&mut self, name: &str, group: Option<&str>, vars: Map<String, Value>) {
        if !self.vars.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.vars.entry(name.to_string()).or_default().extend(vars);
        if let Some(g) = group.filter(|g| *g != "all" && *g != "ungrouped") {
            self.members.entry(name.to_string()).or_default().insert(g.to_string());
        }
    }

    fn finish(self, file: &str) -> Result<Inventory, String> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (parent, kids) in &self.children {
            for k in kids {
                let e = groups.entry(k.clone()).or_default();
                if parent != "all" && !e.contains(parent) {
                    e.push(parent.clone());
                }
            }
        }
        // Group vars reach hosts through nesting too: the nearest group wins, `all` last.
        let ancestors = |g: &str| -> Vec<String> {
            let mut out = vec![g.to_string()];
            let mut i = 0;
            while i < out.len() {
                for p in groups.get(&out[i]).cloned().unwrap_or_default() {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                i += 1;
            }
            out
        };
        let mut hosts = Vec::new();
        let mut dropped = BTreeSet::new();
        for name in &self.order {
            let mut vars = self.vars[name].clone();
            let member_of = self.members.get(name).cloned().unwrap_or_default();
            let mut chain: Vec<String> = Vec::new();
            for g in &member_of {
                for a in ancestors(g) {
                    if !chain.contains(&a) {
                        chain.push(a);
                    }
                }
            }
            chain.push("all".into());
            for g in chain {
                for (k, v) in self.group_vars.get(&g).cloned().unwrap_or_default() {
                    vars.entry(k).or_insert(v);
                }
            }
            vars.retain(|k, _| {
                let keep = !looks_secret(k);
                if !keep {
                    dropped.insert(k.clone());
                }
                keep
            });
            hosts.push(host_from_vars(name, member_of, vars).map_err(|m| at(file, 0, format!("host {name}: {m}")))?);
        }
        Ok(Inventory { hosts, groups: groups.into_iter().filter(|(_, p)| !p.is_empty()).collect(), dropped })
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn host_from_vars(name: &str, groups: BTreeSet<String>, vars: Map<String, Value>) -> Result<Host, String> {
    let mut h = Host { name: name.to_string(), address: name.to_string(), port: 22, groups, ..Default::default() };
    for (k, v) in vars {
        match k.as_str() {
            "ansible_host" | "ansible_ssh_host" => h.address = scalar_text(&v).ok_or("ansible_host must be text")?,
            "ansible_port" | "ansible_ssh_port" => {
                let t = scalar_text(&v).ok_or("ansible_port must be a number")?;
                h.port = t.parse().map_err(|_| format!("ansible_port `{t}` is not a port number"))?;
            }
            "opslet_host_key" => h.host_key = scalar_text(&v),
            _ if k.starts_with("ansible_") => {
                h.attrs.insert(k, v);
            }
            _ => match scalar_text(&v) {
                Some(t) => {
                    h.tags.insert(k, t);
                }
                None => {
                    h.attrs.insert(k, v);
                }
            },
        }
    }
    Ok(h)
}

/// A host's variables for Ansible.
pub fn host_vars(h: &Host) -> Map<String, Value> {
    let mut m = Map::new();
    if h.address != h.name {
        m.insert("ansible_host".into(), json!(h.address));
    }
    if h.port != 22 {
        m.insert("ansible_port".into(), json!(h.port));
    }
    for (k, v) in &h.tags {
        m.insert(k.clone(), json!(v));
    }
    for (k, v) in &h.attrs {
        m.insert(k.clone(), v.clone());
    }
    if let Some(k) = &h.host_key {
        m.insert("opslet_host_key".into(), json!(k));
    }
    m
}

/// Every group: those hosts are in plus those in the tree.
fn all_groups(inv: &Inventory) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = inv.hosts.iter().flat_map(|h| h.groups.iter().cloned()).collect();
    for (g, parents) in &inv.groups {
        out.insert(g.clone());
        out.extend(parents.iter().cloned());
    }
    out
}

fn children_of(inv: &Inventory, parent: &str) -> Vec<String> {
    inv.groups.iter().filter(|(_, ps)| ps.iter().any(|p| p == parent)).map(|(g, _)| g.clone()).collect()
}
