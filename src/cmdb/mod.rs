//! The cmdb: hosts (address, port, groups, tags, free attributes) and groups that can nest,
//! stored in sled; selectors choose hosts. Every change is audited with before and after.

pub mod config_items;
pub mod device_configs;
pub mod inventory;
pub mod selector;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::Store;
pub use selector::Selector;

/// One host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub name: String,
    pub address: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub groups: BTreeSet<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// The host's pinned SSH key, as an OpenSSH public key line ("ssh-ed25519 AAAA...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

fn default_port() -> u16 {
    22
}

fn short(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}...", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

/// What an import did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: usize,
    /// Groups whose parents were set.
    pub groups: Vec<String>,
}

/// The cmdb of a store.
#[derive(Clone)]
pub struct Cmdb {
    store: Store,
    hosts: crate::store::Tree,
    /// Group -> its parent groups.
    groups: crate::store::Tree,
}

pub fn valid(kind: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(Error::Usage(format!("{kind} name `{name}`: use letters, digits, `-`, `_` and `.`")));
    }
    if kind == "group" && ["all", "ungrouped", "_meta"].contains(&name) {
        return Err(Error::Usage(format!("group name `{name}` is reserved (Ansible gives it a meaning of its own)")));
    }
    Ok(())
}

impl Cmdb {
    pub fn new(store: Store) -> Result<Cmdb, Error> {
        Ok(Cmdb { hosts: store.tree(crate::store::keys::CMDB_HOSTS), groups: store.tree(crate::store::keys::CMDB_GROUPS), store })
    }

    /// The store this cmdb lives in.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    fn audit(&self, kind: &str, actor: &str, data: serde_json::Value) -> Result<(), Error> {
        self.store.audit().record_change(kind, actor, "cmdb", None, data)
    }

    /// Checks a host record without storing it.
    pub fn check(host: &Host) -> Result<(), Error> {
        valid("host", &host.name)?;
        if host.address.trim().is_empty() {
            return Err(Error::Usage(format!("host `{}`: the address is empty", host.name)));
        }
        for g in &host.groups {
            valid("group", g)?;
        }
        let at = |what: &str, m: &str| Error::Usage(format!("host `{}`: {what}: {m}", host.name));
        for (k, v) in &host.tags {
            valid("tag", k).map_err(|e| at("tag", &e.to_string()))?;
            if k.starts_with("ansible_") {
                return Err(at("tag", &format!("`{k}`: ansible_* variables are connection settings, not tags")));
            }
            if v.chars().any(char::is_control) {
                return Err(at("tag", &format!("`{k}`: the value holds control characters")));
            }
        }
        for (k, v) in &host.attrs {
            valid("attribute", k).map_err(|e| at("attribute", &e.to_string()))?;
            if v.as_str().is_some_and(|s| s.chars().any(char::is_control)) {
                return Err(at("attribute", &format!("`{k}`: the value holds control characters")));
            }
        }
        if let Some(k) = &host.host_key {
            russh::keys::PublicKey::from_openssh(k.trim()).map_err(|e| {
                Error::Usage(format!("host `{}`: host key `{}` is not an OpenSSH public key line: {e}", host.name, short(k)))
            })?;
        }
        Ok(())
    }

    /// Adds or replaces a host; the audit record holds before and after.
    pub fn put(&self, host: Host, actor: &str) -> Result<Option<Host>, Error> {
        Cmdb::check(&host)?;
        let before = self.hosts.insert(host.name.as_bytes(), serde_json::to_vec(&host).expect("hosts serialize"))?;
        let before: Option<Host> = before.and_then(|b| serde_json::from_slice(&b).ok());
        self.audit(
            if before.is_some() { "cmdb.host.set" } else { "cmdb.host.add" },
            actor,
            serde_json::json!({ "host": host.name, "before": before, "after": host }),
        )?;
        Ok(before)
    }

    pub fn remove(&self, name: &str, actor: &str) -> Result<Host, Error> {
        let before = self.hosts.remove(name.as_bytes())?.ok_or_else(|| Error::NotFound(format!("no host `{name}` in the cmdb")))?;
        let before: Host = serde_json::from_slice(&before).map_err(|e| Error::Store(format!("host `{name}` is unreadable: {e}")))?;
        self.audit("cmdb.host.rm", actor, serde_json::json!({ "host": name, "before": before, "after": null }))?;
        Ok(before)
    }

    pub fn host(&self, name: &str) -> Result<Option<Host>, Error> {
        self.hosts
            .get(name.as_bytes())?
            .map(|b| serde_json::from_slice(&b).map_err(|e| Error::Store(format!("host `{name}` is unreadable: {e}"))))
            .transpose()
    }

    pub fn hosts(&self) -> Result<Vec<Host>, Error> {
        self.hosts
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| Error::Store(format!("a host record is unreadable: {e}"))))
            .collect()
    }

    /// Makes `group` a member of each of `parents` (so `group:PARENT` also selects its hosts).
    pub fn set_parents(&self, group: &str, parents: &[String], actor: &str) -> Result<(), Error> {
        valid("group", group)?;
        for p in parents {
            valid("group", p)?;
            if p == group || self.ancestors(p)?.contains(group) {
                return Err(Error::Usage(format!("group `{group}` cannot be inside `{p}`: that would make a cycle")));
            }
        }
        self.groups.insert(group.as_bytes(), serde_json::to_vec(parents).expect("groups serialize"))?;
        self.audit("cmdb.group.set", actor, serde_json::json!({ "group": group, "parents": parents }))
    }

    /// Replaces this cmdb with a copy of another's (an `opslet worker`'s cache of the control
    /// plane's cmdb): one write, not audited (the copy is not a change anyone made here).
    pub fn load_copy(&self, hosts: &[Host], groups: &BTreeMap<String, Vec<String>>) -> Result<(), Error> {
        let (h, g) = (&self.hosts, &self.groups);
        h.transaction(|tx| {
            for item in h.iter().keys() {
                tx.remove(h, item?)?;
            }
            for item in g.iter().keys() {
                tx.remove(g, item?)?;
            }
            for host in hosts {
                tx.insert(h, host.name.as_bytes(), serde_json::to_vec(host).expect("hosts serialize"))?;
            }
            for (group, parents) in groups {
                tx.insert(g, group.as_bytes(), serde_json::to_vec(parents).expect("groups serialize"))?;
            }
            Ok(())
        })
    }

    /// Every nested group with its parents.
    pub fn groups(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        let mut out = BTreeMap::new();
        for item in self.groups.iter() {
            let (k, v) = item?;
            let parents: Vec<String> = serde_json::from_slice(&v).unwrap_or_default();
            if !parents.is_empty() {
                out.insert(String::from_utf8_lossy(&k).into_owned(), parents);
            }
        }
        Ok(out)
    }

    /// Adds and updates the inventory's hosts and groups (hosts not in it are left alone). A
    /// host without a key in the file keeps its pinned key. Everything is checked before
    /// anything is written.
    pub fn import(&self, inv: &inventory::Inventory, actor: &str, dry_run: bool) -> Result<ImportSummary, Error> {
        let mut seen = BTreeSet::new();
        for h in &inv.hosts {
            Cmdb::check(h)?;
            if !seen.insert(h.name.as_str()) {
                return Err(Error::Usage(format!("host `{}` appears twice", h.name)));
            }
        }
        for (g, parents) in &inv.groups {
            valid("group", g)?;
            for p in parents {
                valid("group", p)?;
            }
        }
        // The group tree as it would be: no cycles, checked before anything is written.
        let mut tree = self.groups()?;
        tree.extend(inv.groups.clone());
        for start in tree.keys() {
            let mut seen = BTreeSet::new();
            let mut todo: Vec<&String> = tree[start].iter().collect();
            while let Some(g) = todo.pop() {
                if g == start {
                    return Err(Error::Usage(format!(
                        "group `{start}` would end up inside itself (through {})",
                        seen.into_iter().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                if seen.insert(g) {
                    todo.extend(tree.get(g).into_iter().flatten());
                }
            }
        }
        let mut sum = ImportSummary::default();
        for h in &inv.hosts {
            let mut h = h.clone();
            let before = self.host(&h.name)?;
            if h.host_key.is_none() {
                h.host_key = before.as_ref().and_then(|b| b.host_key.clone());
            }
            match &before {
                Some(b) if *b == h => sum.unchanged += 1,
                Some(_) => {
                    sum.updated.push(h.name.clone());
                    if !dry_run {
                        self.put(h, actor)?;
                    }
                }
                None => {
                    sum.added.push(h.name.clone());
                    if !dry_run {
                        self.put(h, actor)?;
                    }
                }
            }
        }
        let have = self.groups()?;
        for (g, parents) in &inv.groups {
            if have.get(g) != Some(parents) {
                sum.groups.push(g.clone());
                if !dry_run {
                    self.set_parents(g, parents, actor)?;
                }
            }
        }
        Ok(sum)
    }

    /// The hosts a selector picks (all when None) with the group tree, for export.
    pub fn export(&self, selector: Option<&str>) -> Result<inventory::Inventory, Error> {
        let hosts = match selector {
            Some(s) => self.select(s)?,
            None => self.hosts()?,
        };
        Ok(inventory::Inventory { hosts, groups: self.groups()?, dropped: Default::default() })
    }

    /// A group's ancestors (parents, their parents, ...).
    pub fn ancestors(&self, group: &str) -> Result<BTreeSet<String>, Error> {
        let mut out = BTreeSet::new();
        let mut todo = vec![group.to_string()];
        while let Some(g) = todo.pop() {
            if let Some(b) = self.groups.get(g.as_bytes())? {
                let parents: Vec<String> = serde_json::from_slice(&b).unwrap_or_default();
                for p in parents {
                    if out.insert(p.clone()) {
                        todo.push(p);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The hosts a selector picks, by name. A selector that picks nothing is an error.
    pub fn select(&self, selector: &str) -> Result<Vec<Host>, Error> {
        self.snapshot()?.select(selector)
    }

    /// Every host with its groups (nesting resolved), read once: selections against it do not
    /// see later changes.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let mut memo: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let hosts = self.hosts()?;
        let mut member_of = BTreeMap::new();
        for h in &hosts {
            let mut all = BTreeSet::new();
            for g in &h.groups {
                all.insert(g.clone());
                if !memo.contains_key(g) {
                    memo.insert(g.clone(), self.ancestors(g)?);
                }
                all.extend(memo[g].iter().cloned());
            }
            member_of.insert(h.name.clone(), all);
        }
        Ok(Snapshot { hosts, member_of })
    }
}

/// The cmdb's hosts at one moment, for selecting.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub hosts: Vec<Host>,
    member_of: BTreeMap<String, BTreeSet<String>>,
}

impl Snapshot {
    /// The hosts a selector picks, by name. A selector that picks nothing is an error.
    pub fn select(&self, selector: &str) -> Result<Vec<Host>, Error> {
        let sel = Selector::parse(selector).map_err(|m| Error::Usage(format!("host selector `{selector}`: {m}")))?;
        let in_group = |h: &Host, g: &str| self.member_of.get(&h.name).is_some_and(|gs| gs.contains(g));
        let picked: Vec<Host> = self.hosts.iter().filter(|h| sel.matches(h, &in_group)).cloned().collect();
        if picked.is_empty() {
            return Err(Error::NotFound(format!("host selector `{selector}` matches no host in the cmdb")));
        }
        Ok(picked)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The groups a host belongs to through nesting only (parents of its groups, and theirs).
    pub fn inherited_groups(&self, host: &Host) -> Vec<String> {
        self.member_of.get(&host.name).map(|all| all.iter().filter(|g| !host.groups.contains(*g)).cloned().collect()).unwrap_or_default()
    }
}
