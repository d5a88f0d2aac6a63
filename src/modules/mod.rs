//! The host modules of this build, one folder each, and the one list that names them
//! ([`BUILTIN`]). A module folder holds its Lua boundary (`mod.rs`), its plain-Rust client, its
//! permission scope, its settings (`settings.rs`, its own table of opslet.toml) and its Lua type
//! definitions (`types.d.luau`); it builds on the kit and imports no other module.

pub mod cmdb;
pub mod config;
pub mod es;
pub mod ipmi;
pub mod netdev;
pub mod s3;
pub mod ssh;
pub mod virt;
pub mod zabbix;

use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::kit::HostModule;
pub use crate::runtime::modules::ModuleSet;

/// Sets a module up from opslet.toml (its own table, read with `Config::section`).
pub type Build = fn(&Config) -> Result<Arc<dyn HostModule>, Error>;

/// One built-in host module.
pub struct Builtin {
    /// The Lua global and the `[permissions]` key.
    pub name: &'static str,
    /// Its own table of opslet.toml (`[ssh]`, `[zabbix.NAME]`), if it has one.
    pub table: Option<&'static str>,
    /// None when this build leaves the module out (a cargo feature).
    pub build: Option<Build>,
    /// Its Lua type definitions.
    pub types: &'static str,
    /// A permission that lets an applet read with it, as written under `[permissions]` (shown by
    /// `opslet new` and the docs; the type-drift test runs with it).
    pub read_permission: &'static str,
}

/// Every host module opslet knows, in the order `opslet meta` writes their types.
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "cmdb",
        table: None,
        build: Some(cmdb::module),
        types: include_str!("cmdb/types.d.luau"),
        read_permission: r#"cmdb = ["read"]"#,
    },
    Builtin {
        name: "ssh",
        table: Some("ssh"),
        build: Some(ssh::module),
        types: include_str!("ssh/types.d.luau"),
        read_permission: r#"ssh = { hosts = ["*"] }"#,
    },
    Builtin {
        name: "config",
        table: None,
        build: Some(config::module),
        types: include_str!("config/types.d.luau"),
        read_permission: r#"config = ["read"]"#,
    },
    Builtin {
        name: "zabbix",
        table: Some("zabbix"),
        build: Some(zabbix::module),
        types: include_str!("zabbix/types.d.luau"),
        read_permission: r#"zabbix = ["read"]"#,
    },
    Builtin {
        name: "es",
        table: Some("es"),
        build: Some(es::module),
        types: include_str!("es/types.d.luau"),
        read_permission: r#"es = ["read"]"#,
    },
    Builtin {
        name: "netdev",
        table: Some("netdev"),
        build: Some(netdev::module),
        types: include_str!("netdev/types.d.luau"),
        read_permission: r#"netdev = { devices = ["*"], actions = ["read"] }"#,
    },
    Builtin {
        name: "ipmi",
        table: Some("ipmi"),
        build: Some(ipmi::module),
        types: include_str!("ipmi/types.d.luau"),
        read_permission: r#"ipmi = ["read"]"#,
    },
    Builtin {
        name: "s3",
        table: Some("s3"),
        build: Some(s3::module),
        types: include_str!("s3/types.d.luau"),
        read_permission: r#"s3 = { bucket = "*", actions = ["read"] }"#,
    },
    Builtin {
        name: "virt",
        table: Some("virt"),
        build: Some(virt::module),
        types: include_str!("virt/types.d.luau"),
        read_permission: r#"virt = ["read"]"#,
    },
];

/// The opslet.toml tables that are not a module's.
const CORE_TABLES: &[&str] = &["limits", "kv", "audit", "serve"];

/// The modules compiled into this opslet, with default settings (enough to check manifests;
/// runs use [`from_config`]).
pub fn builtin() -> ModuleSet {
    from_config(&Config::default()).expect("the default config is valid")
}

/// The modules compiled into this opslet, set up from `config`. A table of opslet.toml that
/// neither opslet nor a module reads is an error naming it.
pub fn from_config(config: &Config) -> Result<ModuleSet, Error> {
    for table in config.tables.keys() {
        if !BUILTIN.iter().any(|b| b.table == Some(table.as_str())) {
            let known: Vec<&str> = CORE_TABLES.iter().copied().chain(BUILTIN.iter().filter_map(|b| b.table)).collect();
            return Err(config.invalid(format!("unknown table `[{table}]` (known: {})", known.join(", "))));
        }
    }
    let mut modules = Vec::new();
    for b in BUILTIN {
        if let Some(build) = b.build {
            modules.push(build(config)?);
        }
    }
    Ok(ModuleSet::new(modules).knowing(BUILTIN.iter().map(|b| b.name).collect()))
}

/// A runtime with every built-in module, set up from `config`.
pub fn runtime(config: &Config, store: Option<crate::store::Store>) -> Result<crate::runtime::Runtime, Error> {
    crate::runtime::Runtime::new(config, store, from_config(config)?)
}

/// The Lua type definitions of the always-available modules and every host module, as one
/// luau-lsp definition file (`opslet meta`).
pub fn type_definitions() -> String {
    let mut out = String::from(include_str!("../../stdlib/meta/core.d.luau"));
    for b in BUILTIN {
        out.push('\n');
        out.push_str(b.types);
    }
    out
}
