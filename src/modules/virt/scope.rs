//! The `virt` permission: `["read"]`, `["read", "power"]`, `["read", "write"]`, or a table
//! `{ actions = [...], connections = [...], projects = [...] }`.
//!
//! `read` lists and describes VMs, flavors, images, hypervisors, usage and console logs; `power`
//! starts, stops and reboots; `write` creates, resizes and deletes, and powers too. `connections`
//! (none: any `[virt.NAME]`) limits which connections; `projects` (none: any) which OpenStack
//! projects' servers, by id or name, a call may touch or see. Every check is made before
//! anything is sent that changes a VM.

pub const ACTIONS: &[&str] = &["read", "power", "write"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub actions: Vec<String>,
    pub connections: Option<Vec<String>>,
    pub projects: Option<Vec<String>>,
}

impl Scope {
    pub fn parse(v: &toml::Value) -> Result<Scope, String> {
        let (actions, connections, projects) =
            match v {
                toml::Value::Array(_) => {
                    let t = toml::map::Map::from_iter([("actions".to_string(), v.clone())]);
                    (crate::kit::string_list(&t, "actions")?, None, None)
                }
                toml::Value::Table(t) => {
                    const KEYS: &[&str] = &["actions", "connections", "projects"];
                    if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
                        return Err(format!("unknown key `{k}` (known: {})", KEYS.join(", ")));
                    }
                    (
                        crate::kit::string_list(t, "actions")?,
                        crate::kit::string_list(t, "connections")?,
                        crate::kit::string_list(t, "projects")?,
                    )
                }
                _ => return Err(
                    "expected a list of actions like [\"read\", \"power\"], or { actions = [...], connections = [...], projects = [...] }"
                        .into(),
                ),
            };
        let actions = actions.unwrap_or_default();
        if actions.is_empty() {
            return Err(format!("give the actions: some of {}", ACTIONS.join(", ")));
        }
        if let Some(a) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(format!("unknown action `{a}` (known: {})", ACTIONS.join(", ")));
        }
        Ok(Scope { actions, connections, projects })
    }

    /// Whether `action` is granted (`write` covers `power`).
    pub fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action || (action == "power" && a == "write"))
    }

    pub fn allows_connection(&self, conn: &str) -> bool {
        self.connections.as_ref().is_none_or(|c| c.iter().any(|x| x == conn))
    }

    /// Whether a server of project `id` (called `name`, when known) may be touched.
    pub fn allows_project(&self, id: Option<&str>, name: Option<&str>) -> bool {
        match &self.projects {
            None => true,
            Some(list) => list.iter().any(|p| Some(p.as_str()) == id || Some(p.as_str()) == name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> Result<Scope, String> {
        let v: toml::Value = toml::from_str(&format!("virt = {text}")).unwrap();
        Scope::parse(&v["virt"])
    }

    #[test]
    fn actions_connections_and_projects() {
        let s = scope(r#"["read", "write"]"#).unwrap();
        assert!(s.allows("power") && s.allows("write") && s.allows_connection("any") && s.allows_project(Some("p"), None));
        let s = scope(r#"{ actions = ["read", "power"], connections = ["cloud"], projects = ["web"] }"#).unwrap();
        assert!(s.allows("power") && !s.allows("write"));
        assert!(s.allows_connection("cloud") && !s.allows_connection("lab"));
        assert!(s.allows_project(Some("abc"), Some("web")) && !s.allows_project(Some("abc"), Some("db")));
        assert!(scope(r#"["admin"]"#).unwrap_err().contains("unknown action `admin`"));
        assert!(scope(r#"{ actions = ["read"], hosts = [] }"#).unwrap_err().contains("unknown key `hosts`"));
        assert!(scope("[]").unwrap_err().contains("give the actions"));
    }
}
