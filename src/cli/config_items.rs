//! `opslet config`: config items (versions, diffs, which host runs what), and `watch`, which
//! publishes a folder of items to a dev environment as it changes.

use super::stdio::{errln, out, outln};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::Global;
use super::output::Format;
use crate::applet::AppletPackage;
use crate::cmdb::config_items::{ConfigItems, ItemSpec, spec_toml};
use crate::cmdb::device_configs::unified_diff;
use crate::error::Error;
use crate::runtime::CancelToken;
use crate::runtime::context::{Caller, LogLine, LogSink};
use crate::service::{Overrun, Source, Submission};

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Add a config item, or a new version of it, from its TOML file (the item's `name` says
    /// which). An unchanged file makes no new version.
    Set {
        file: PathBuf,
        /// Why (kept with the version).
        #[arg(short, long)]
        message: String,
    },
    /// An item's definition (the newest version, or --version N); with --host, the file as it
    /// would be published there (secrets shown as <secret:NAME>).
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        /// Render the file for this cmdb host.
        #[arg(long)]
        host: Option<String>,
        /// The environment to render for (default: the host's `env` tag).
        #[arg(long, requires = "host")]
        env: Option<String>,
    },
    /// The change between two versions (default: the newest against the one before).
    Diff { name: String, a: Option<u32>, b: Option<u32> },
    /// Every version: author, time, message.
    History {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// All items with their newest version.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Which version each host runs: in-sync, drifted, failed or unknown (as of the last publish or
    /// check); exits 1 when a host is not in sync.
    Status {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Watch a folder of item files (*.toml, templates beside them): each change becomes a new
    /// version and is published to the hosts of --hosts in environment --env, until Ctrl-C.
    Watch {
        dir: PathBuf,
        /// The environment published to (the hosts' `env` tags must agree).
        #[arg(long, default_value = "dev")]
        env: String,
        /// The hosts to publish to (a selector).
        #[arg(long)]
        hosts: String,
        /// Publish once and stop (no watching).
        #[arg(long)]
        once: bool,
    },
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(header.to_vec());
    t
}

fn print_as<T: serde::Serialize>(format: Format, v: &T, t: impl FnOnce() -> Table) -> Result<(), Error> {
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?),
        Format::Yaml => out!("{}", serde_yaml_ng::to_string(v).map_err(|e| Error::Internal(e.to_string()))?),
        Format::Table => outln!("{}", t()),
    }
    Ok(())
}

/// Reads an item file (its template_file relative to it).
fn read_item(file: &Path) -> Result<ItemSpec, Error> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::Usage(format!("reading {}: {e}", file.display())))?;
    ItemSpec::parse(&file.display().to_string(), &text, file.parent())
}

pub fn run(global: &Global, cmd: ConfigCmd) -> Result<i32, Error> {
    let store = global.open_store()?;
    let items = ConfigItems::open(&store)?;
    match cmd {
        ConfigCmd::Set { file, message } => {
            let spec = read_item(&file)?;
            // A value no layer defines fails every host: said now, before any host is involved.
            for u in spec.unknown_values() {
                errln!(
                    "warning: `{}` (used at {}) is defined by no layer of [values], [values.env.*] or [values.group.*]: every render fails until one does",
                    u.name,
                    u.at
                );
            }
            let (v, new) = items.set(&store, spec, &global.actor(), &message)?;
            if new {
                errln!("{} v{} stored", v.name, v.version);
                out!("{}", v.diff);
            } else {
                errln!("{} is unchanged (still v{})", v.name, v.version);
            }
        }
        ConfigCmd::Show { name, version, host, env } => {
            let v = items.resolve(&name, version)?;
            match host {
                None => {
                    outln!("# {} v{} by {} at {}: {}", v.name, v.version, v.author, v.created_at.format("%Y-%m-%d %H:%M:%S"), v.message);
                    out!("{}", spec_toml(&v.spec));
                }
                Some(h) => {
                    let cmdb = crate::cmdb::Cmdb::new(store.clone())?;
                    let host = cmdb.host(&h)?.ok_or_else(|| Error::NotFound(format!("no host `{h}` in the cmdb")))?;
                    let env = match (env, host.tags.get("env")) {
                        (Some(e), _) => e,
                        (None, Some(t)) => t.clone(),
                        (None, None) => return Err(Error::Usage(format!("{h} has no `env` tag: give --env"))),
                    };
                    // Secrets show as <secret:NAME>: what a host gets is not for terminals.
                    let secret = crate::cmdb::config_items::placeholder_secrets();
                    let inherited = cmdb.snapshot()?.inherited_groups(&host);
                    let text = v
                        .spec
                        .render(&env, &host, &inherited, secret)
                        .map_err(|m| Error::Usage(format!("{name} v{} for {h} ({env}): {m}", v.version)))?;
                    out!("{text}");
                }
            }
        }
        ConfigCmd::Diff { name, a, b } => {
            let latest = items.resolve(&name, None)?;
            let b = items.resolve(&name, Some(b.unwrap_or(latest.version)))?;
            let a = items.resolve(&name, Some(a.unwrap_or(b.version.saturating_sub(1).max(1))))?;
            out!(
                "{}",
                unified_diff(
                    &spec_toml(&a.spec),
                    &spec_toml(&b.spec),
                    &format!("{name} v{}", a.version),
                    &format!("{name} v{}", b.version)
                )
            );
        }
        ConfigCmd::History { name, format } => {
            let h = items.history(&name)?;
            if h.is_empty() {
                return Err(Error::NotFound(format!("no config item `{name}`")));
            }
            let rows: Vec<_> = h
                .iter()
                .map(|v| serde_json::json!({ "version": v.version, "author": v.author, "created_at": v.created_at, "message": v.message }))
                .collect();
            print_as(format, &rows, || {
                let mut t = table(&["version", "when", "by", "message"]);
                for v in &h {
                    t.add_row([
                        v.version.to_string(),
                        v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        v.author.clone(),
                        v.message.clone(),
                    ]);
                }
                t
            })?;
        }
        ConfigCmd::List { format } => {
            let all = items.list()?;
            let rows: Vec<_> = all
                .iter()
                .map(|v| serde_json::json!({ "name": v.name, "version": v.version, "path": v.spec.path, "author": v.author, "created_at": v.created_at }))
                .collect();
            print_as(format, &rows, || {
                let mut t = table(&["item", "version", "path", "last change"]);
                for v in &all {
                    t.add_row([
                        v.name.clone(),
                        v.version.to_string(),
                        v.spec.path.clone(),
                        format!("{} by {}", v.created_at.format("%Y-%m-%d %H:%M"), v.author),
                    ]);
                }
                t
            })?;
        }
        ConfigCmd::Status { name, format } => {
            let latest = items.resolve(&name, None)?;
            let states = items.states(&name)?;
            // A host behind the newest version: why the newest does not render there, if it does
            // not (an undefined value names itself, its place and the layers searched).
            let snap = crate::cmdb::Cmdb::new(store.clone())?.snapshot()?;
            let mut rows = Vec::new();
            for st in &states {
                let mut row = serde_json::to_value(st).map_err(|e| Error::Internal(e.to_string()))?;
                if st.version != latest.version
                    && let Some(host) = snap.host(&st.host)
                {
                    let inherited = snap.inherited_groups(host);
                    let placeholders = crate::cmdb::config_items::placeholder_secrets();
                    let rendered = latest
                        .spec
                        .path_for(&st.env, host, &inherited)
                        .and_then(|_| latest.spec.render(&st.env, host, &inherited, placeholders));
                    if let Err(m) = rendered {
                        row["newest_error"] = serde_json::json!(format!("v{} does not render: {m}", latest.version));
                    }
                }
                rows.push(row);
            }
            print_as(format, &rows, || {
                let mut t = table(&["host", "status", "version", "env", "sha256", "since", "error"]);
                for (s, row) in states.iter().zip(&rows) {
                    let version = if s.version == latest.version {
                        format!("v{}", s.version)
                    } else {
                        format!("v{} (newest v{})", s.version, latest.version)
                    };
                    let error =
                        [s.error.clone(), row["newest_error"].as_str().map(str::to_string)].into_iter().flatten().collect::<Vec<_>>();
                    t.add_row([
                        s.host.clone(),
                        s.status.clone(),
                        version,
                        s.env.clone(),
                        s.sha256.chars().take(12).collect(),
                        s.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        error.join("; "),
                    ]);
                }
                t
            })?;
            // Exit 1 when a host is not in sync, so scripts and monitors can use it.
            return Ok(if states.iter().all(|s| s.status == "in-sync") { 0 } else { 1 });
        }
        ConfigCmd::Watch { dir, env, hosts, once } => return watch(global, store, &dir, &env, &hosts, once),
    }
    Ok(0)
}

/// Publishes changed items of `dir` to `hosts` in `env`, now and on every change.
fn watch(global: &Global, store: crate::store::Store, dir: &Path, env: &str, hosts: &str, once: bool) -> Result<i32, Error> {
    crate::cmdb::Selector::parse(hosts).map_err(|m| Error::Usage(format!("--hosts `{hosts}`: {m}")))?;
    if !dir.is_dir() {
        return Err(Error::Usage(format!("{} is not a folder of config items", dir.display())));
    }
    let config = global.config()?;
    let service = crate::service::RunService::new(global.runtime(&config, store.clone())?, crate::service::Policy::of(&config)?)?;
    let (rt, cancel) = super::runtime_with_ctrl_c(global)?;
    let items = ConfigItems::open(&store)?;
    let publish_changed = |cancel: CancelToken| -> Result<i32, Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::Usage(format!("reading {}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut code = 0;
        for f in files {
            let spec = match read_item(&f) {
                Ok(s) => s,
                Err(e) => {
                    // A half-written file: say so and wait for the next change.
                    errln!("error: {e}");
                    code = 1;
                    continue;
                }
            };
            let (v, new) = items.set(&store, spec, &global.actor(), &format!("opslet config watch {}", f.display()))?;
            if !new {
                continue;
            }
            errln!("{} v{} stored; publishing to {hosts} ({env})", v.name, v.version);
            let outcome = service.run_here(
                &rt,
                service.prepare(publish_submission(&v.name, hosts, env)?)?,
                cancel.clone(),
                Some(watch_sink()),
                Overrun::Wait,
            )?;
            match &outcome.result {
                Ok(rows) => {
                    for r in rows.as_array().into_iter().flatten() {
                        let host = r["host"].as_str().unwrap_or("?");
                        if r["ok"] == true {
                            let what = if r["changed"] == false { "unchanged" } else { "published" };
                            errln!("  {host}: {what}");
                        } else {
                            code = 1;
                            errln!("  {host}: FAILED: {}", r["error"].as_str().unwrap_or("?"));
                        }
                    }
                }
                Err(e) => {
                    code = 1;
                    errln!("error: publishing {}: {e}", v.name);
                }
            }
        }
        Ok(code)
    };
    if once {
        return publish_changed(cancel);
    }
    super::run::watch(dir, &cancel, publish_changed)
}

/// A run of the built-in `config-watch` applet: publish one item, audited like any run.
fn publish_submission(item: &str, hosts: &str, env: &str) -> Result<Submission, Error> {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let manifest = format!(
        "name = \"config-watch\"\nversion = \"1.0.0\"\ndescription = \"opslet config watch: publish a changed item\"\n\
         [permissions]\nconfig = {{ items = [{}], hosts = [{}], actions = [\"read\", \"publish\"] }}\n",
        q(item),
        q(hosts)
    );
    let main = format!("return function() return config.publish({}, {}, {{ env = {} }}) end", q(item), q(hosts), q(env));
    let mut files = std::collections::BTreeMap::new();
    files.insert("applet.toml".to_string(), manifest.into_bytes());
    files.insert("main.lua".to_string(), main.into_bytes());
    let pkg = AppletPackage::from_files(files)?;
    Ok(Submission::new(Source::Package(Arc::new(pkg)), Caller { via: "config-watch".into(), ..Caller::cli() }))
}

/// The applet's log lines, indented under the item being published.
fn watch_sink() -> LogSink {
    Arc::new(|l: &LogLine| {
        if l.progress.is_none() {
            errln!("  [{}] {}", l.level.name(), l.message);
        }
    })
}
