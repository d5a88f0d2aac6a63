//! Device profiles: how one vendor's CLI behaves, as data (TOML). The built-in ones live in
//! `stdlib/netdev/*.toml` and are compiled in; `[netdev] profiles_dir` adds more (a profile
//! whose `name` is a built-in one's replaces it). Nothing here talks to a device.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

/// The profiles shipped with opslet.
pub const BUILTIN: &[(&str, &str)] = &[
    ("cisco_ios.toml", include_str!("../../../stdlib/netdev/cisco_ios.toml")),
    ("huawei_vrp.toml", include_str!("../../../stdlib/netdev/huawei_vrp.toml")),
    ("hp_comware.toml", include_str!("../../../stdlib/netdev/hp_comware.toml")),
    ("juniper_junos.toml", include_str!("../../../stdlib/netdev/juniper_junos.toml")),
];

/// The CLI mode a prompt shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    User,
    Privileged,
    Config,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::User => "user",
            Mode::Privileged => "privileged",
            Mode::Config => "config",
        }
    }
}

/// One step of saving: send a line, then wait for `expect` (or, without it, for the prompt).
#[derive(Debug, Clone)]
pub struct Step {
    pub send: String,
    pub expect: Option<Regex>,
}

/// A parsed, checked profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub aliases: Vec<String>,
    pub user: Regex,
    pub privileged: Option<Regex>,
    pub config: Regex,
    /// Lines right before a prompt that belong to it (dropped from the output).
    pub banner: Option<Regex>,
    /// `(command, password prompt)` to reach privileged mode from user mode.
    pub enable: Option<(String, Regex)>,
    pub paging_off: Vec<String>,
    pub more: Option<Regex>,
    pub more_answer: String,
    pub config_enter: String,
    pub config_exit: String,
    pub commit: Vec<String>,
    /// Sent in configuration mode when a change fails, before leaving it (Junos: `rollback 0`,
    /// so leaving does not ask about uncommitted changes).
    pub abort: Vec<String>,
    pub save: Vec<Step>,
    pub errors: Vec<Regex>,
    pub read: Vec<String>,
    pub backup: String,
    pub volatile: Vec<Regex>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    aliases: Vec<String>,
    prompts: RawPrompts,
    enable: Option<RawEnable>,
    #[serde(default)]
    paging: RawPaging,
    config: RawConfig,
    #[serde(default)]
    errors: RawErrors,
    commands: RawCommands,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompts {
    user: String,
    privileged: Option<String>,
    config: String,
    banner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnable {
    command: String,
    password_prompt: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPaging {
    #[serde(default)]
    disable: Vec<String>,
    more: Option<String>,
    answer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    enter: String,
    exit: String,
    #[serde(default)]
    commit: Vec<String>,
    #[serde(default)]
    abort: Vec<String>,
    #[serde(default)]
    save: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    send: String,
    expect: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawErrors {
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommands {
    #[serde(default)]
    read: Vec<String>,
    backup: String,
    #[serde(default)]
    volatile: Vec<String>,
}

impl Profile {
    /// Parses one profile file; errors name the file and the key.
    pub fn parse(file: &str, text: &str) -> Result<Profile, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| format!("{file}: {}", e.to_string().trim()))?;
        let re = |key: &str, p: &str| Regex::new(p).map_err(|e| format!("{file}: {key}: `{p}` is not a valid pattern: {e}"));
        let res = |key: &str, ps: &[String]| ps.iter().map(|p| re(key, p)).collect::<Result<Vec<_>, _>>();
        if raw.name.is_empty() || !raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!("{file}: name: `{}` is not a profile name (letters, digits, _ and -)", raw.name));
        }
        let line = |key: &str, s: &str| -> Result<String, String> {
            if s.contains(['\n', '\r']) { Err(format!("{file}: {key}: must be one line")) } else { Ok(s.to_string()) }
        };
        for (i, c) in raw.paging.disable.iter().enumerate() {
            line(&format!("paging.disable[{i}]"), c)?;
        }
        if raw.commands.backup.trim().is_empty() {
            return Err(format!("{file}: commands.backup: give the command that prints the running configuration"));
        }
        Ok(Profile {
            description: raw.description,
            aliases: raw.aliases,
            user: re("prompts.user", &raw.prompts.user)?,
            privileged: raw.prompts.privileged.as_deref().map(|p| re("prompts.privileged", p)).transpose()?,
            config: re("prompts.config", &raw.prompts.config)?,
            banner: raw.prompts.banner.as_deref().map(|p| re("prompts.banner", p)).transpose()?,
            enable: match raw.enable {
                Some(e) => Some((line("enable.command", &e.command)?, re("enable.password_prompt", &e.password_prompt)?)),
                None => None,
            },
            paging_off: raw.paging.disable,
            more: raw.paging.more.as_deref().map(|p| re("paging.more", p)).transpose()?,
            more_answer: raw.paging.answer.unwrap_or_else(|| " ".into()),
            config_enter: line("config.enter", &raw.config.enter)?,
            config_exit: line("config.exit", &raw.config.exit)?,
            commit: raw.config.commit,
            abort: raw.config.abort,
            save: raw
                .config
                .save
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    Ok(Step {
                        send: line(&format!("config.save[{i}].send"), &s.send)?,
                        expect: s.expect.as_deref().map(|p| re(&format!("config.save[{i}].expect"), p)).transpose()?,
                    })
                })
                .collect::<Result<_, String>>()?,
            errors: res("errors.patterns", &raw.errors.patterns)?,
            read: raw.commands.read,
            backup: line("commands.backup", &raw.commands.backup)?,
            volatile: res("commands.volatile", &raw.commands.volatile)?,
            name: raw.name,
        })
    }

    /// The mode `line` (the line the cursor is on) is a prompt of, if any. Configuration mode is
    /// tried first: its prompts are the most specific.
    pub fn mode_of(&self, line: &str) -> Option<Mode> {
        if self.config.is_match(line) {
            Some(Mode::Config)
        } else if self.privileged.as_ref().is_some_and(|r| r.is_match(line)) {
            Some(Mode::Privileged)
        } else if self.user.is_match(line) {
            Some(Mode::User)
        } else {
            None
        }
    }

    /// The first line of `output` the device marks as an error.
    pub fn error_in<'a>(&self, output: &'a str) -> Option<&'a str> {
        output.lines().find(|l| self.errors.iter().any(|r| r.is_match(l))).map(str::trim)
    }

    /// Whether `command` only looks (matches one of `commands.read`).
    pub fn is_read(&self, command: &str) -> bool {
        self.read.iter().any(|p| super::scope::matches(p, command))
    }

    /// A backup with the lines that change on every read left out, and trailing blanks trimmed.
    pub fn stable(&self, config: &str) -> String {
        let mut out: String =
            config.lines().filter(|l| !self.volatile.iter().any(|r| r.is_match(l))).map(|l| format!("{}\n", l.trim_end())).collect();
        while out.ends_with("\n\n") {
            out.pop();
        }
        out.trim_start_matches('\n').to_string()
    }
}

/// The profiles of this opslet: the built-in ones, then the files of `dir` (a profile whose
/// `name` is a built-in one's replaces it).
#[derive(Debug, Clone)]
pub struct Profiles {
    by_name: BTreeMap<String, Arc<Profile>>,
}

impl Profiles {
    pub fn load(dir: Option<&Path>) -> Result<Profiles, String> {
        let mut by_name = BTreeMap::new();
        for (file, text) in BUILTIN {
            let p = Profile::parse(&format!("stdlib/netdev/{file}"), text)?;
            by_name.insert(p.name.clone(), Arc::new(p));
        }
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("[netdev] profiles_dir {}: {e}", dir.display()))?;
            let mut files: Vec<_> =
                entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let p = Profile::parse(&path.display().to_string(), &text)?;
                by_name.insert(p.name.clone(), Arc::new(p));
            }
        }
        Ok(Profiles { by_name })
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The profile called `name`, or whose aliases include it.
    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.by_name.get(name).or_else(|| self.by_name.values().find(|p| p.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_tell_modes_apart() {
        let ps = Profiles::load(None).unwrap();
        assert_eq!(ps.names(), ["cisco_ios", "hp_comware", "huawei_vrp", "juniper_junos"]);
        let ios = ps.get("cisco_ios").unwrap();
        assert_eq!(ios.mode_of("sw-1>"), Some(Mode::User));
        assert_eq!(ios.mode_of("sw-1#"), Some(Mode::Privileged));
        assert_eq!(ios.mode_of("sw-1(config)#"), Some(Mode::Config));
        assert_eq!(ios.mode_of("sw-1(config-if)# "), Some(Mode::Config));
        assert_eq!(ios.mode_of("interface Vlan1"), None);
        let vrp = ps.get("vrp").expect("found by alias");
        assert_eq!(vrp.name, "huawei_vrp");
        assert_eq!(vrp.mode_of("<HUAWEI>"), Some(Mode::User));
        assert_eq!(vrp.mode_of("[HUAWEI]"), Some(Mode::Config));
        assert_eq!(vrp.mode_of("[~HUAWEI-vlan42]"), Some(Mode::Config));
        let junos = ps.get("junos").unwrap();
        assert_eq!(junos.mode_of("admin@R1>"), Some(Mode::User));
        assert_eq!(junos.mode_of("admin@R1# "), Some(Mode::Config));
        assert_eq!(
            ios.error_in("vlan 5000\n     ^\n% Invalid input detected at '^' marker.\n"),
            Some("% Invalid input detected at '^' marker.")
        );
        assert_eq!(
            vrp.error_in("Error: Unrecognized command found at '^' position."),
            Some("Error: Unrecognized command found at '^' position.")
        );
        assert!(ios.is_read("show running-config") && ios.is_read("show interfaces status"));
        assert!(!ios.is_read("reload") && !ios.is_read("show run | redirect tftp://x/y"));
    }

    #[test]
    fn a_broken_profile_names_the_file_and_key() {
        let e = Profile::parse(
            "x.toml",
            "name = \"x\"\n[prompts]\nuser = '('\nconfig = 'a'\n[config]\nenter='c'\nexit='e'\n[commands]\nbackup='s'\n",
        )
        .unwrap_err();
        assert!(e.starts_with("x.toml: prompts.user: `(` is not a valid pattern"), "{e}");
        let e = Profile::parse("y.toml", "name = \"y\"\nbogus = 1\n").unwrap_err();
        assert!(e.contains("y.toml") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn volatile_lines_leave_the_backup() {
        let ios = Profiles::load(None).unwrap().get("cisco_ios").unwrap();
        let a = ios.stable("Building configuration...\n\nCurrent configuration : 1200 bytes\n!\nhostname sw1\n\n");
        assert_eq!(a, "!\nhostname sw1\n");
    }
}
