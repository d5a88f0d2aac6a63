//! `opslet netdev`: device profiles, and the configuration backups `netdev.backup` stores.

use super::stdio::{out, outln};
use clap::Subcommand;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::Global;
use super::output::Format;
use crate::cmdb::device_configs::{DeviceConfigs, unified_diff};
use crate::error::Error;
use crate::modules::netdev::profile::Profiles;

#[derive(Subcommand, Debug)]
pub enum NetdevCmd {
    /// List the device profiles (built in, and from [netdev] profiles_dir).
    Profiles {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List a device's stored configuration versions.
    Backups {
        device: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print a stored configuration (the newest, or --version N).
    Show {
        device: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Unified diff between two stored versions (default: the newest against the one before).
    Diff {
        device: String,
        /// The older version.
        a: Option<u32>,
        /// The newer version (default: the newest).
        b: Option<u32>,
    },
}

pub fn run(global: &Global, cmd: NetdevCmd) -> Result<i32, Error> {
    if let NetdevCmd::Profiles { format } = cmd {
        let cfg = global.config()?;
        let settings = crate::modules::netdev::settings::NetdevSettings::from_config(&cfg)?;
        let profiles = Profiles::load(settings.profiles_dir.as_deref()).map_err(Error::Config)?;
        if format != Format::Table {
            let v: Vec<serde_json::Value> = profiles
                .names()
                .into_iter()
                .map(|name| {
                    let p = profiles.get(name).expect("listed");
                    serde_json::json!({ "profile": p.name, "description": p.description, "aliases": p.aliases, "backup": p.backup })
                })
                .collect();
            out!("{}", super::output::render(&serde_json::Value::Array(v), format));
            return Ok(0);
        }
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
        t.set_header(["profile", "description", "also known as", "backup command"]);
        for name in profiles.names() {
            let p = profiles.get(name).expect("listed");
            t.add_row([p.name.clone(), p.description.clone(), p.aliases.join(", "), p.backup.clone()]);
        }
        outln!("{t}");
        return Ok(0);
    }
    let configs = DeviceConfigs::open(&global.open_store()?)?;
    let versions = |device: &str| -> Result<Vec<crate::cmdb::device_configs::Backup>, Error> {
        let v = configs.versions(device)?;
        if v.is_empty() {
            return Err(Error::NotFound(format!(
                "no stored configuration of `{device}` (back it up with netdev.backup, e.g. the switch-backup applet)"
            )));
        }
        Ok(v)
    };
    let text = |device: &str, v: u32, latest: u32| -> Result<String, Error> {
        configs
            .get(device, v)?
            .map(|b| b.text)
            .ok_or_else(|| Error::NotFound(format!("`{device}` has no version {v} (versions 1-{latest})")))
    };
    match cmd {
        NetdevCmd::Profiles { .. } => unreachable!("handled above"),
        NetdevCmd::Backups { device, format } => {
            let v = versions(&device)?;
            match format {
                Format::Json => outln!("{}", serde_json::to_string_pretty(&v).map_err(|e| Error::Store(e.to_string()))?),
                Format::Yaml => out!("{}", serde_yaml_ng::to_string(&v).map_err(|e| Error::Store(e.to_string()))?),
                Format::Table => {
                    let mut t = Table::new();
                    t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
                    t.set_header(["version", "taken", "bytes", "sha256", "by", "run"]);
                    for b in v {
                        t.add_row([
                            b.version.to_string(),
                            b.taken_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            b.bytes.to_string(),
                            b.sha256[..12].to_string(),
                            b.user,
                            b.run.unwrap_or_default(),
                        ]);
                    }
                    outln!("{t}");
                }
            }
        }
        NetdevCmd::Show { device, version } => {
            let v = versions(&device)?;
            let latest = v.last().expect("not empty").version;
            out!("{}", text(&device, version.unwrap_or(latest), latest)?);
        }
        NetdevCmd::Diff { device, a, b } => {
            let v = versions(&device)?;
            let latest = v.last().expect("not empty").version;
            let b = b.unwrap_or(latest);
            let a = a.unwrap_or(b.saturating_sub(1).max(1));
            out!(
                "{}",
                unified_diff(&text(&device, a, latest)?, &text(&device, b, latest)?, &format!("{device} v{a}"), &format!("{device} v{b}"))
            );
        }
    }
    Ok(0)
}
