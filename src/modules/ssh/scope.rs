//! The `ssh` permission:
//! `ssh = { hosts = [...], commands = [...], env = [...], files = [...], sudo = true }`.
//!
//! `hosts` (required) are selectors; every host a call targets must be picked by one of them.
//! `commands` (optional) are patterns a command must match, where `*` stands for exactly one
//! word: no spaces, no shell syntax, not starting with `-`. So `systemctl restart *` allows
//! `systemctl restart nginx` but neither `systemctl restart x; reboot` nor
//! `systemctl restart --now x`. With `commands` given (even empty) the applet is *restricted*:
//! `ssh.script` runs only the applet's own script files, `opts.env` only sets the names listed in
//! `env` (never loader or shell-startup variables), and `ssh.put`/`ssh.get` reach only the paths
//! `files` lists (none when it is absent). Unrestricted, env and files are free unless listed.
//! `sudo = true` allows `opts.sudo`.

/// Bytes a `*` in a command pattern never stands for: separators, and what would let a caller
/// append a second command, substitute one, redirect or glob.
const SHELL_SPECIAL: &[u8] = b";&|$`<>(){}[]\\'\"*?!#~\n\r\t %^ \x0b\x0c";

/// Variables a restricted applet may never set: they change which program runs or what the
/// shell does before it (PATH lookups, the dynamic loader, shell start-up files).
const NEVER_ENV: &[&str] = &["PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "CDPATH", "GLOBIGNORE"];

/// The parsed scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub hosts: Vec<String>,
    /// None: any command. Some: only these patterns (and scripts of the package).
    pub commands: Option<Vec<String>>,
    /// Variable names `opts.env` may set (None: any, when unrestricted; none, when restricted).
    pub env: Option<Vec<String>>,
    /// Path patterns for put/get (None: any, when unrestricted; none, when restricted).
    pub files: Option<Vec<String>>,
    pub sudo: bool,
}

impl Scope {
    pub fn parse(v: &toml::Value) -> Result<Scope, String> {
        let t = v.as_table().ok_or("expected a table like { hosts = [\"group:web\"], commands = [\"uptime\"] }")?;
        let list = |key: &str| crate::kit::string_list(t, key);
        const KEYS: &[&str] = &["hosts", "commands", "env", "files", "sudo"];
        for k in t.keys() {
            if !KEYS.contains(&k.as_str()) {
                return Err(format!("unknown key `{k}` (known: {})", KEYS.join(", ")));
            }
        }
        let hosts = list("hosts")?.unwrap_or_default();
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
        let commands = list("commands")?;
        if let Some(c) = commands.iter().flatten().find(|c| c.trim().is_empty()) {
            return Err(format!("commands: `{c}` is empty"));
        }
        let env = list("env")?;
        for name in env.iter().flatten() {
            if NEVER_ENV.contains(&name.as_str()) || name.starts_with("LD_") {
                return Err(format!("env: `{name}` changes which program runs or how the shell starts; it cannot be allowed"));
            }
        }
        let sudo = match t.get("sudo") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => return Err("`sudo` must be true or false".into()),
        };
        Ok(Scope { hosts, commands, env, files: list("files")?, sudo })
    }

    /// Restricted: `commands` is given.
    pub fn restricted(&self) -> bool {
        self.commands.is_some()
    }

    /// Whether `command` is allowed (always, when no `commands` are listed).
    pub fn allows_command(&self, command: &str) -> bool {
        self.commands.as_ref().is_none_or(|list| list.iter().any(|p| command_matches(p, command)))
    }

    /// Whether `opts.env` may set `name`.
    pub fn allows_env(&self, name: &str) -> bool {
        match &self.env {
            Some(list) => list.iter().any(|n| n == name),
            None => !self.restricted(),
        }
    }

    pub fn allows_file(&self, path: &str) -> bool {
        if path.split('/').any(|part| part == "..") {
            return false;
        }
        match &self.files {
            Some(list) => list.iter().any(|p| crate::util::pattern_matches(p, path)),
            None => !self.restricted(),
        }
    }
}

/// Matches `command` against `pattern`: literal parts exactly (after trimming both ends), each
/// `*` exactly one word of the command: at least one byte, no space or shell special byte, and
/// not starting with `-` (so a wildcard never turns into an option).
pub fn command_matches(pattern: &str, command: &str) -> bool {
    let (p, c) = (pattern.trim().as_bytes(), command.trim().as_bytes());
    // reach[j]: the pattern so far can match the first j command bytes. O(|p|·|c|).
    let mut reach = vec![false; c.len() + 1];
    reach[0] = true;
    for &pb in p {
        let mut next = vec![false; c.len() + 1];
        if pb == b'*' {
            // `on`: a word started at some reachable j0 < j and bytes j0..j are all word bytes.
            let mut on = false;
            for j in 1..=c.len() {
                let b = c[j - 1];
                let word_byte = !SHELL_SPECIAL.contains(&b);
                let starts = reach[j - 1] && word_byte && b != b'-';
                on = starts || (on && word_byte);
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
        assert!(command_matches(p, "systemctl restart getty@tty1.service"));
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
        // One word only, never an option.
        assert!(!command_matches(p, "systemctl restart a b"));
        assert!(!command_matches(p, "systemctl restart --now x"));
        assert!(!command_matches("find /tmp -name *", "find /tmp -name x -o -fprint /tmp/y"));
        assert!(!command_matches(p, "systemctl restart "));
        assert!(!command_matches(p, "systemctl restart \tnginx"));
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

    #[test]
    fn a_restricted_scope_allows_no_files_or_env_unless_listed() {
        let v: toml::Value = toml::from_str("hosts = [\"*\"]\ncommands = [\"uptime\"]").unwrap();
        let s = Scope::parse(&v).unwrap();
        assert!(!s.allows_file("/etc/passwd") && !s.allows_env("LANG"));
        let v: toml::Value = toml::from_str("hosts = [\"*\"]\ncommands = [\"uptime\"]\nenv = [\"LANG\"]").unwrap();
        let s = Scope::parse(&v).unwrap();
        assert!(s.allows_env("LANG") && !s.allows_env("PATH"));
        let v: toml::Value = toml::from_str("hosts = [\"*\"]").unwrap();
        let s = Scope::parse(&v).unwrap();
        assert!(s.allows_file("/etc/motd") && s.allows_env("PATH"), "unrestricted: anything goes");
        for bad in ["PATH", "LD_PRELOAD", "BASH_ENV"] {
            let v: toml::Value = toml::from_str(&format!("hosts = [\"*\"]\nenv = [\"{bad}\"]")).unwrap();
            assert!(Scope::parse(&v).unwrap_err().contains("cannot be allowed"), "{bad}");
        }
    }
}
