//! The `ssh` permission: `ssh = { hosts = [...], commands = [...], files = [...], sudo = true }`.
//!
//! `hosts` (required) are selectors; every host a call targets must be picked by one of them.
//! `commands` (optional) are patterns a command must match; `*` stands for shell words only, so
//! `systemctl restart *` allows `systemctl restart nginx` but never `systemctl restart x; rm -rf /`.
//! With `commands` given (even empty), `ssh.script` runs only the applet's own script files.
//! `files` (optional) are path patterns for `ssh.put` and `ssh.get`. `sudo = true` allows `sudo`.

/// Bytes a `*` in a command pattern may never stand for: they would let a caller append a
/// second command, substitute one, redirect or glob.
const SHELL_SPECIAL: &[u8] = b";&|$`<>(){}[]\\'\"*?!#~\n\r\t%^";

/// The parsed scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub hosts: Vec<String>,
    /// None: any command. Some: only these patterns (and scripts of the package).
    pub commands: Option<Vec<String>>,
    pub files: Vec<String>,
    pub sudo: bool,
}

impl Scope {
    pub fn parse(v: &toml::Value) -> Result<Scope, String> {
        let t = v.as_table().ok_or("expected a table like { hosts = [\"group:web\"], commands = [\"uptime\"] }")?;
        let list = |key: &str| -> Result<Vec<String>, String> {
            match t.get(key) {
                None => Ok(Vec::new()),
                Some(toml::Value::Array(a)) => {
                    a.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| format!("`{key}` must be a list of strings"))).collect()
                }
                Some(_) => Err(format!("`{key}` must be a list of strings")),
            }
        };
        for k in t.keys() {
            if !["hosts", "commands", "files", "sudo"].contains(&k.as_str()) {
                return Err(format!("unknown key `{k}` (known: hosts, commands, files, sudo)"));
            }
        }
        let hosts = list("hosts")?;
        if hosts.is_empty() {
            return Err(
                "`hosts` is required: the selectors this applet may reach, like hosts = [\"group:web\"] (or [\"*\"] for all)".into()
            );
        }
        for h in &hosts {
            if h != "*" {
                crate::cmdb::Selector::parse(h).map_err(|m| format!("hosts: `{h}`: {m}"))?;
            }
        }
        let commands = t.contains_key("commands").then(|| list("commands")).transpose()?;
        if let Some(c) = commands.iter().flatten().find(|c| c.trim().is_empty()) {
            return Err(format!("commands: `{c}` is empty"));
        }
        let sudo = match t.get("sudo") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => return Err("`sudo` must be true or false".into()),
        };
        Ok(Scope { hosts, commands, files: list("files")?, sudo })
    }

    /// Whether `command` is allowed (always, when no `commands` are listed).
    pub fn allows_command(&self, command: &str) -> bool {
        self.commands.as_ref().is_none_or(|list| list.iter().any(|p| command_matches(p, command)))
    }

    pub fn allows_file(&self, path: &str) -> bool {
        if path.split('/').any(|part| part == "..") {
            return false;
        }
        self.files.is_empty() || self.files.iter().any(|p| crate::auth::pattern_matches(p, path))
    }
}

/// Matches `command` against `pattern`: literal parts exactly, each `*` any run of bytes that
/// holds no shell special character.
pub fn command_matches(pattern: &str, command: &str) -> bool {
    let (p, c) = (pattern.trim().as_bytes(), command.trim().as_bytes());
    // reach[j]: the first i pattern bytes can match the first j command bytes. O(|p|·|c|).
    let mut reach = vec![false; c.len() + 1];
    reach[0] = true;
    for &pb in p {
        let mut next = vec![false; c.len() + 1];
        if pb == b'*' {
            let mut on = false;
            for j in 0..=c.len() {
                on = reach[j] || (on && j > 0 && !SHELL_SPECIAL.contains(&c[j - 1]));
                next[j] = on;
            }
        } else {
            for j in 1..=c.len() {
                next[j] = reach[j - 1] && c[j - 1] == pb;
            }
        }
        reach = next;
    }
    reach[c.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_never_cross_shell_syntax() {
        let p = "systemctl restart *";
        assert!(command_matches(p, "systemctl restart nginx"));
        assert!(command_matches(p, "systemctl restart nginx.service"));
        for bad in [
            "systemctl restart nginx; rm -rf /",
            "systemctl restart nginx && reboot",
            "systemctl restart $(reboot)",
            "systemctl restart `reboot`",
            "systemctl restart x | sh",
            "systemctl restart x > /etc/passwd",
            "systemctl restart x\nreboot",
            "systemctl restart 'x'",
            "systemctl stop nginx",
        ] {
            assert!(!command_matches(p, bad), "{bad:?} must not match");
        }
        assert!(command_matches("uptime", " uptime "));
        assert!(!command_matches("uptime", "uptime; id"));
        assert!(command_matches("df -h *", "df -h /var"));
        assert!(command_matches("a * b * c", "a x b y c"));
        assert!(!command_matches("a * b", "a x;y b"));
        // Many wildcards against a long command stay linear in each.
        let long = "a".repeat(20_000);
        assert!(!command_matches("*a*a*a*a*b", &long));
    }

    #[test]
    fn scope_needs_hosts_and_rejects_unknown_keys() {
        let v: toml::Value = toml::from_str("hosts = [\"group:web\"]\ncommands = [\"uptime\"]").unwrap();
        let s = Scope::parse(&v).unwrap();
        assert_eq!(s.hosts, ["group:web"]);
        assert!(s.allows_command("uptime") && !s.allows_command("id"));
        let v: toml::Value = toml::from_str("hosts = [\"*\"]\ncommands = []").unwrap();
        assert!(!Scope::parse(&v).unwrap().allows_command("uptime"), "an empty list allows no command");
        let v: toml::Value = toml::from_str("hosts = [\"*\"]").unwrap();
        assert!(Scope::parse(&v).unwrap().allows_command("anything"), "no list allows any command");
        let v: toml::Value = toml::from_str("commands = [\"uptime\"]").unwrap();
        assert!(Scope::parse(&v).unwrap_err().contains("`hosts` is required"));
        let v: toml::Value = toml::from_str("hosts = [\"*\"]\nhost = [\"x\"]").unwrap();
        assert!(Scope::parse(&v).unwrap_err().contains("unknown key `host`"));
        let v: toml::Value = toml::from_str("hosts = [\"group:\"]").unwrap();
        assert!(Scope::parse(&v).unwrap_err().contains("hosts: `group:`"));
    }

    #[test]
    fn file_patterns_refuse_parent_segments() {
        let v: toml::Value = toml::from_str("hosts = [\"*\"]\nfiles = [\"/tmp/*\"]").unwrap();
        let s = Scope::parse(&v).unwrap();
        assert!(s.allows_file("/tmp/a.txt"));
        assert!(!s.allows_file("/tmp/../etc/shadow"));
        assert!(!s.allows_file("/etc/motd"));
    }
}
