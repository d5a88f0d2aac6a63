//! `opslet cmdb`: hosts, groups and selectors.

use super::stdio::{errln, out, outln};
use clap::Subcommand;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use std::path::PathBuf;

use super::Global;
use super::output::Format;
use crate::cmdb::inventory::{self, Format as InvFormat};
use crate::cmdb::{Cmdb, Host};
use crate::error::Error;

#[derive(Subcommand, Debug)]
pub enum CmdbCmd {
    /// Manage hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Manage groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Add and update hosts from a file: CSV, JSON, or an Ansible inventory (INI or YAML).
    /// Hosts not in the file are left alone; pinned host keys are kept.
    Import {
        #[arg(required_unless_present = "from_zabbix")]
        file: Option<PathBuf>,
        /// The file's format (default: from its extension).
        #[arg(long, value_parser = super::choice(&InvFormat::ALL, InvFormat::name, InvFormat::describe))]
        format: Option<InvFormat>,
        /// Take the hosts from a Zabbix connection of the config ([zabbix.NAME]) instead of a file.
        #[arg(long, value_name = "CONN", conflicts_with_all = ["file", "format"])]
        from_zabbix: Option<String>,
        /// With --from-zabbix: only hosts of this Zabbix host group.
        #[arg(long, requires = "from_zabbix")]
        group: Option<String>,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write hosts (all, or those a selector picks) as CSV, JSON or an Ansible inventory.
    Export {
        selector: Option<String>,
        #[arg(long, value_parser = super::choice(&InvFormat::ALL, InvFormat::name, InvFormat::describe))]
        format: Option<InvFormat>,
        /// Write to this file instead of stdout (the format then defaults to its extension).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Ansible dynamic inventory: `ansible -i inventory.sh` where the script runs
    /// `opslet cmdb inventory "$@"`, so playbooks keep working against this cmdb.
    Inventory {
        /// All groups and hosts (the default).
        #[arg(long)]
        list: bool,
        /// One host's variables.
        #[arg(long, value_name = "NAME", conflicts_with = "list")]
        host: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Add a host.
    Add {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Pin the host's SSH key: an OpenSSH public key line ("ssh-ed25519 AAAA...").
        #[arg(long)]
        host_key: Option<String>,
    },
    /// Change a host: the given fields replace or extend what it has.
    Set {
        name: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// Add to these groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Leave these groups (repeatable).
        #[arg(long = "ungroup")]
        ungroups: Vec<String>,
        /// Set KEY=VALUE tags (repeatable); KEY= removes the tag.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Pin the host's SSH key ("ssh-ed25519 AAAA..."); an empty value removes the pin.
        #[arg(long)]
        host_key: Option<String>,
    },
    /// Remove a host.
    Rm { name: String },
    /// List hosts, all or those a selector picks (e.g. 'group:web & tag:env=prod & !web03').
    List {
        selector: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one host as JSON.
    Show { name: String },
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Put a group inside parent groups: `group:PARENT` then also selects its hosts.
    Set {
        name: String,
        #[arg(long = "parent")]
        parents: Vec<String>,
    },
}

fn tag(s: &str) -> Result<(String, String), Error> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| Error::Usage(format!("--tag `{s}`: expected KEY=VALUE")))
}

fn list_suffix(names: &[String]) -> String {
    match names.len() {
        0 => String::new(),
        1..=8 => format!(" ({})", names.join(", ")),
        n => format!(" ({}, and {} more)", names[..8].join(", "), n - 8),
    }
}

pub fn run(global: &Global, cmd: CmdbCmd) -> Result<i32, Error> {
    let cmdb = Cmdb::new(global.open_store()?)?;
    match cmd {
        CmdbCmd::Host(HostCmd::Add { name, address, port, groups, tags, host_key }) => {
            if cmdb.host(&name)?.is_some() {
                return Err(Error::Usage(format!("host `{name}` already exists; change it with `opslet cmdb host set`")));
            }
            let tags = tags.iter().map(|t| tag(t)).collect::<Result<_, _>>()?;
            cmdb.put(
                Host { name: name.clone(), address, port, groups: groups.into_iter().collect(), tags, attrs: Default::default(), host_key },
                &global.actor(),
            )?;
            errln!("added {name}");
        }
        CmdbCmd::Host(HostCmd::Set { name, address, port, groups, ungroups, tags, host_key }) => {
            let mut h = cmdb.host(&name)?.ok_or_else(|| Error::NotFound(format!("no host `{name}` in the cmdb")))?;
            if let Some(a) = address {
                h.address = a;
            }
            if let Some(p) = port {
                h.port = p;
            }
            if let Some(k) = host_key {
                h.host_key = if k.trim().is_empty() { None } else { Some(k) };
            }
            h.groups.extend(groups);
            for g in ungroups {
                h.groups.remove(&g);
            }
            for t in tags {
                let (k, v) = tag(&t)?;
                if v.is_empty() {
                    h.tags.remove(&k);
                } else {
                    h.tags.insert(k, v);
                }
            }
            cmdb.put(h, &global.actor())?;
            errln!("updated {name}");
        }
        CmdbCmd::Host(HostCmd::Rm { name }) => {
            cmdb.remove(&name, &global.actor())?;
            errln!("removed {name}");
        }
        CmdbCmd::Host(HostCmd::List { selector, format }) => {
            let hosts = match &selector {
                Some(s) => cmdb.select(s)?,
                None => cmdb.hosts()?,
            };
            if format != Format::Table {
                outln!("{}", serde_json::to_string_pretty(&hosts).unwrap_or_default());
            } else {
                let mut t = Table::new();
                t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
                t.set_header(vec!["host", "address", "port", "groups", "tags"]);
                for h in hosts {
                    let tags: Vec<String> = h.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    t.add_row(vec![
                        h.name,
                        h.address,
                        h.port.to_string(),
                        h.groups.into_iter().collect::<Vec<_>>().join(", "),
                        tags.join(", "),
                    ]);
                }
                outln!("{t}");
            }
        }
        CmdbCmd::Host(HostCmd::Show { name }) => {
            let h = cmdb.host(&name)?.ok_or_else(|| Error::NotFound(format!("no host `{name}` in the cmdb")))?;
            outln!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
        }
        CmdbCmd::Import { file, format, dry_run, from_zabbix, group } => {
            let inv = match (&file, &from_zabbix) {
                (_, Some(conn)) => {
                    let client = crate::modules::zabbix::client_for(&global.config()?, &cmdb.store(), conn)?;
                    let rt =
                        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Internal(e.to_string()))?;
                    let (hosts, skipped) = rt
                        .block_on(crate::modules::zabbix::cmdb_hosts(&client, group.as_deref()))
                        .map_err(|m| Error::Usage(format!("--from-zabbix {conn}: {m}")))?;
                    if !skipped.is_empty() {
                        errln!("warning: left out: {}", skipped.join(", "));
                    }
                    inventory::Inventory { hosts, ..Default::default() }
                }
                (Some(file), None) => {
                    let shown = file.display().to_string();
                    let format = format.or_else(|| InvFormat::from_path(&shown)).ok_or_else(|| {
                        Error::Usage(format!("{shown}: cannot tell the format from the name; give --format csv|json|ini|yaml"))
                    })?;
                    let text = std::fs::read_to_string(file).map_err(|e| Error::Usage(format!("reading {shown}: {e}")))?;
                    inventory::parse(format, &text, &shown).map_err(Error::Usage)?
                }
                (None, None) => return Err(Error::Usage("give a FILE or --from-zabbix CONN".into())),
            };
            if !inv.dropped.is_empty() {
                let names: Vec<&str> = inv.dropped.iter().map(String::as_str).collect();
                errln!(
                    "warning: not imported, they look like credentials (keep those in `opslet secret`, where applets cannot read them): {}",
                    names.join(", ")
                );
            }
            let sum = cmdb.import(&inv, &global.actor(), dry_run)?;
            let verb = if dry_run { "would add" } else { "added" };
            errln!(
                "{verb} {} host(s){}, {} {} host(s){}, {} unchanged, {} group(s) nested",
                sum.added.len(),
                list_suffix(&sum.added),
                if dry_run { "would update" } else { "updated" },
                sum.updated.len(),
                list_suffix(&sum.updated),
                sum.unchanged,
                sum.groups.len()
            );
        }
        CmdbCmd::Export { selector, format, output } => {
            let from_name = output.as_ref().and_then(|p| InvFormat::from_path(&p.display().to_string()));
            let format = format.or(from_name).unwrap_or(InvFormat::Json);
            let text = inventory::write(format, &cmdb.export(selector.as_deref())?);
            match output {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| Error::Usage(format!("writing {}: {e}", path.display())))?;
                }
                None => out!("{text}"),
            }
        }
        CmdbCmd::Inventory { list: _, host } => {
            let inv = cmdb.export(None)?;
            let out = match host {
                Some(name) => {
                    let h = inv
                        .hosts
                        .iter()
                        .find(|h| h.name == name)
                        .ok_or_else(|| Error::NotFound(format!("no host `{name}` in the cmdb")))?;
                    serde_json::Value::Object(inventory::host_vars(h))
                }
                None => inventory::dynamic(&inv),
            };
            outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        CmdbCmd::Group(GroupCmd::Set { name, parents }) => {
            cmdb.set_parents(&name, &parents, &global.actor())?;
            errln!("group {name} is inside: {}", if parents.is_empty() { "nothing".into() } else { parents.join(", ") });
        }
    }
    Ok(0)
}
