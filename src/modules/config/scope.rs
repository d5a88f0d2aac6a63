//! The `config` permission: `config = ["read"]`, `["read", "publish"]`, or
//! `{ items = [...], hosts = [...], actions = [...] }`.

use crate::kit::Grant;

const ACTIONS: &[&str] = &["read", "publish"];

#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) items: Vec<String>,
    pub(super) hosts: Vec<String>,
    pub(super) publish: bool,
}

impl Scope {
    pub(super) fn parse(grant: &Grant) -> Result<Scope, String> {
        if let toml::Value::Table(t) = &grant.scope
            && let Some(k) = t.keys().find(|k| !["items", "hosts", "actions"].contains(&k.as_str()))
        {
            return Err(format!("unknown key `{k}` (known: items, hosts, actions)"));
        }
        let actions = grant.actions();
        if actions.is_empty() {
            return Err("give the actions: [\"read\"] or [\"read\", \"publish\"]".into());
        }
        if let Some(a) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(format!("unknown action `{a}` (known: {})", ACTIONS.join(", ")));
        }
        let (items, hosts) = match &grant.scope {
            toml::Value::Table(_) => (grant.list("items"), grant.list("hosts")),
            _ => (Vec::new(), Vec::new()),
        };
        let items = if items.is_empty() { vec!["*".to_string()] } else { items };
        let hosts = if hosts.is_empty() { vec!["*".to_string()] } else { hosts };
        for h in hosts.iter().filter(|h| *h != "*") {
            crate::cmdb::Selector::parse(h).map_err(|m| format!("hosts: `{h}`: {m}"))?;
        }
        Ok(Scope { items, hosts, publish: actions.iter().any(|a| a == "publish") })
    }

    pub(super) fn allows_item(&self, name: &str) -> bool {
        self.items.iter().any(|p| crate::util::pattern_matches(p, name))
    }
}
