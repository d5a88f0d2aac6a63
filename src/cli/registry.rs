//! Registry subcommands: publish, versions, show, promote, rollback, yank, list, search,
//! feature, export, import.

use super::stdio::{errln, out, outln};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::Global;
use super::output::{Format, terminal_safe};
use crate::applet::AppletPackage;
use crate::error::Error;

use crate::registry::{PermissionChanges, Published, Reference, Registry, VersionMeta};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The applet folder.
    pub path: PathBuf,
    /// Why this version exists (shown by `show` and `versions`).
    #[arg(short, long, default_value = "")]
    pub message: String,
    /// Allow a version lower than the latest published one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Print what was published as JSON or YAML: `{"applet", "version", "sha256", "new"}`.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Sign the version with this key (default: the key `opslet key new` made, when there is
    /// one); `--no-sign` to publish unsigned.
    #[arg(long, value_name = "FILE", conflicts_with = "no_sign")]
    pub sign_key: Option<PathBuf>,
    /// Publish without a signature even when a signing key exists.
    #[arg(long)]
    pub no_sign: bool,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// Applet name.
    pub name: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct RefArgs {
    /// NAME, NAME@VERSION or NAME@sha256:PREFIX.
    pub reference: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// NAME@VERSION.
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct YankArgs {
    /// NAME@VERSION.
    pub reference: String,
    /// Take the yank back.
    #[arg(long)]
    pub undo: bool,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Words to look for in names, tags and descriptions (typos are tolerated).
    #[arg(default_value = "")]
    pub query: String,
    /// Only applets with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only applets that need this module (e.g. ssh).
    #[arg(long)]
    pub permission: Option<String>,
    /// At most this many results.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum FeatureCmd {
    /// Add an applet to a featured collection.
    Add { collection: String, name: String },
    /// Remove an applet from a featured collection.
    Rm { collection: String, name: String },
    /// List the featured collections.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// NAME, NAME@VERSION or NAME@sha256:PREFIX.
    pub reference: String,
    /// The bundle file to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A bundle written by `opslet export`.
    pub file: PathBuf,
    /// Allow a version lower than the latest published one.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Take a bundle that is not signed (it is marked unsigned, and its publisher and message
    /// are only what it claims).
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// A bundle written by `opslet export`; it is rewritten with the signature.
    pub file: PathBuf,
    /// The signing key (default: the key `opslet key new` made).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Make a publisher signing key (ed25519) and print its id, to give to the registries that
    /// should trust it (`opslet trust add NAME KEY`).
    New {
        /// Where to write it (default: the config folder's signing.key); never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the id of a signing key.
    Show {
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TrustCmd {
    /// Trust bundles signed by KEY (`ed25519:...`, from `opslet key new`), shown as NAME.
    Add { name: String, key: String },
    /// Stop trusting the key named NAME.
    Rm { name: String },
    /// List the trusted keys.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// The signing key: the flag, else the default key when it exists.
fn signing_key_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| crate::config::default_signing_key().filter(|p| p.exists()))
}

pub fn key(cmd: KeyCmd) -> Result<i32, Error> {
    let default = || crate::config::default_signing_key().ok_or_else(|| Error::Usage("no config folder here: pass --out FILE".into()));
    match cmd {
        KeyCmd::New { out } => {
            let path = match out {
                Some(p) => p,
                None => default()?,
            };
            let key = crate::registry::signing::new_key(&path)?;
            outln!("{}", crate::registry::signing::key_id(&key.verifying_key()));
            errln!(
                "wrote the signing key to {} (keep it to yourself); registries that should trust it: opslet trust add NAME <the key above>",
                path.display()
            );
        }
        KeyCmd::Show { key } => {
            let path = signing_key_path(key)
                .ok_or_else(|| Error::Usage("no signing key: make one with `opslet key new`, or pass --key FILE".into()))?;
            let key = crate::registry::signing::load_key(&path)?;
            outln!("{}", crate::registry::signing::key_id(&key.verifying_key()));
        }
    }
    Ok(0)
}

pub fn sign(args: SignArgs) -> Result<i32, Error> {
    let path = signing_key_path(args.key)
        .ok_or_else(|| Error::Usage("no signing key: make one with `opslet key new`, or pass --key FILE".into()))?;
    let key = crate::registry::signing::load_key(&path)?;
    let bytes = std::fs::read(&args.file).map_err(|e| Error::NotFound(format!("{}: {e}", args.file.display())))?;
    let (signed, meta) = crate::registry::bundle::sign(&bytes, &key)?;
    std::fs::write(&args.file, signed).map_err(|e| Error::Internal(format!("writing {}: {e}", args.file.display())))?;
    errln!("signed {} in {} as {}", meta.id(), args.file.display(), crate::registry::signing::key_id(&key.verifying_key()));
    Ok(0)
}

pub fn trust(global: &Global, cmd: TrustCmd) -> Result<i32, Error> {
    let reg = registry(global)?;
    match cmd {
        TrustCmd::Add { name, key } => {
            reg.trust(&name, &key, &global.actor())?;
            reg.flush()?;
            errln!("bundles signed by {} are taken, shown as published by {name}", key.trim());
        }
        TrustCmd::Rm { name } => {
            reg.untrust(&name, &global.actor())?;
            reg.flush()?;
            errln!("no longer trusting {name}");
        }
        TrustCmd::List { format } => {
            let keys = reg.trusted()?;
            if format != Format::Table {
                let v: Vec<serde_json::Value> = keys.iter().map(|(n, k)| serde_json::json!({ "name": n, "key": k })).collect();
                print_json(&v, format);
            } else {
                let mut t = table();
                t.set_header(vec!["name", "key"]);
                for (n, k) in keys {
                    t.add_row(vec![n, k]);
                }
                outln!("{t}");
            }
        }
    }
    Ok(0)
}

fn registry(global: &Global) -> Result<Registry, Error> {
    Registry::new(global.open_store()?)
}

fn version_ref(s: &str) -> Result<(String, semver::Version), Error> {
    match Reference::parse(s)? {
        Reference::Version(n, v) => Ok((n, v)),
        _ => Err(Error::Usage(format!("`{s}`: give NAME@VERSION"))),
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    t
}

fn print_json<T: serde::Serialize>(v: &T, format: Format) {
    match format {
        Format::Yaml => out!("{}", serde_yaml_ng::to_string(v).unwrap_or_default()),
        _ => outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

pub fn publish(global: &Global, args: PublishArgs) -> Result<i32, Error> {
    let pkg = AppletPackage::load_dir(&args.path)?;
    pkg.check_modules(&crate::modules::builtin())?;
    // A remote caller's key stays on their machine, and the server's own is not theirs.
    let key_path = match (args.no_sign, global.is_remote(), args.sign_key) {
        (true, _, _) | (false, true, None) => None,
        (false, true, Some(_)) => {
            return Err(Error::Usage(
                "--sign-key: a signing key stays on your machine; with --server, export, `opslet sign` the bundle here, then import it"
                    .into(),
            ));
        }
        (false, false, flag) => signing_key_path(flag),
    };
    let key = key_path.as_deref().map(crate::registry::signing::load_key).transpose()?;
    let tests = publish_tests(global, &pkg)?;
    let reg = registry(global)?;
    let published = reg.publish_tested(&pkg, &global.actor(), &args.message, args.allow_downgrade, key.as_ref(), tests)?;
    reg.flush()?;
    let (v, new) = match published {
        Published::New(v) => (v, true),
        Published::Unchanged(v) => (v, false),
    };
    match args.format.filter(|f| *f != Format::Table) {
        Some(f) => out!(
            "{}",
            super::output::render(&serde_json::json!({ "applet": v.name, "version": v.version, "sha256": v.hash, "new": new }), f)
        ),
        None if new => outln!("published {} (sha256:{}), now current", v.id(), &v.hash[..16]),
        None => outln!("{} is already published with this content; nothing to do", v.id()),
    }
    Ok(0)
}

/// Runs the applet's own tests before it is published or imported (`[publish] tests`): a failing
/// applet is refused (`required`) or published with a warning (`warn`). None when it has no
/// tests, or they are off.
fn publish_tests(global: &Global, pkg: &AppletPackage) -> Result<Option<crate::registry::model::TestSummary>, Error> {
    let config = global.config()?;
    let policy = config.publish.tests().map_err(Error::Config)?;
    let template = crate::runtime::Runtime::new(&config, None, crate::modules::from_config(&config)?)?;
    let (summary, warning) = crate::service::testing::gate(&template, policy, pkg)?;
    match (&summary, warning) {
        (_, Some(w)) => errln!("warning: {}: {w}", pkg.manifest.id()),
        (Some(t), None) => errln!("{}: {} test{} passed", pkg.manifest.id(), t.passed, if t.passed == 1 { "" } else { "s" }),
        (None, None) => {}
    }
    Ok(summary)
}

pub fn versions(global: &Global, args: NameArgs) -> Result<i32, Error> {
    let reg = registry(global)?;
    let applet = reg.applet(&args.name)?;
    let versions = reg.versions(&args.name)?;
    if args.format != Format::Table {
        print_json(&versions, args.format);
        return Ok(0);
    }
    let mut t = table();
    t.set_header(vec!["version", "", "published", "publisher", "signed by", "sha256", "message"]);
    for v in versions.iter().rev() {
        let mark = match (v.version == applet.current, v.yanked) {
            (true, true) => "current, yanked",
            (true, false) => "current",
            (false, true) => "yanked",
            _ => "",
        };
        t.add_row(vec![
            v.version.clone(),
            mark.into(),
            v.published_at.format("%Y-%m-%d %H:%M").to_string(),
            v.publisher.clone(),
            match (&v.signed_by, v.unsigned) {
                (Some(by), _) => by.clone(),
                (None, true) => "UNSIGNED import".into(),
                (None, false) => String::new(),
            },
            v.hash[..12].to_string(),
            terminal_safe(&v.message, false).into_owned(),
        ]);
    }
    outln!("{t}");
    Ok(0)
}

pub fn show(global: &Global, args: RefArgs) -> Result<i32, Error> {
    let reg = registry(global)?;
    let r = Reference::parse(&args.reference)?;
    let v = reg.resolve(&r, true)?;
    let applet = reg.applet(r.name())?;
    let versions = reg.versions(r.name())?;
    let previous = versions.iter().rfind(|p| p.semver() < v.semver());
    let changes = previous.map(|p| PermissionChanges::between(&p.permissions, &v.permissions));
    let approval = crate::service::Policy::of(&global.config()?)?.explain(&v.permissions);
    if args.format != Format::Table {
        print_json(
            &serde_json::json!({ "version": v, "current": applet.current, "permission_changes": changes, "previous": previous.map(VersionMeta::id), "approval": approval }),
            args.format,
        );
        return Ok(0);
    }
    let safe = |s: &str| terminal_safe(s, false).into_owned();
    outln!("{}  {}", v.id(), if v.version == applet.current { "(current)" } else { "" });
    if v.yanked {
        outln!("YANKED: new runs need --allow-yanked");
    }
    outln!("{}", safe(&v.description));
    outln!("tags:       {}", v.tags.join(", "));
    outln!("sha256:     {}", v.hash);
    outln!("published:  {} by {}", v.published_at.format("%Y-%m-%d %H:%M:%S UTC"), safe(&v.publisher));
    if let Some(by) = &v.imported_by {
        outln!("imported:   by {}", safe(by));
    }
    match (&v.signed_by, &v.signature) {
        (Some(by), Some(sig)) => outln!("signed:     by {} ({})", safe(by), sig.key),
        _ if v.unsigned => outln!("signed:     NO: imported unsigned; the publisher and message are what the bundle claimed"),
        _ => outln!("signed:     no"),
    }
    if !v.message.is_empty() {
        outln!("message:    {}", safe(&v.message));
    }
    match &v.tests {
        Some(t) => {
            outln!("tests:      {} passed, {} failed (when published, {})", t.passed, t.failed, t.ran_at.format("%Y-%m-%d %H:%M UTC"))
        }
        None => outln!("tests:      none run (the applet has no tests, or [publish] tests = \"off\")"),
    }
    if v.permissions.is_empty() {
        outln!("permissions: none (runs with the always-available modules only)");
    } else {
        outln!("permissions:");
        for (m, scope) in &v.permissions {
            outln!("  {m} = {scope}");
        }
    }
    match (&changes, previous) {
        (Some(c), Some(p)) if !c.is_empty() => {
            outln!("permission changes since {}:", p.version);
            for m in &c.added {
                outln!("  + {m} = {}  (NEW)", v.permissions[m]);
            }
            for m in &c.removed {
                outln!("  - {m}");
            }
            for (m, before, after) in &c.changed {
                outln!("  ~ {m}: {before} -> {after}");
            }
        }
        (Some(_), Some(p)) => outln!("permissions unchanged since {}", p.version),
        _ => {}
    }
    match approval["rules"].as_array().filter(|r| !r.is_empty()) {
        None => outln!("approval:   not needed (no [approvals] rule covers its permissions)"),
        Some(rules) => {
            outln!("approval:   needed before a run (a dry run is its plan):");
            for r in rules {
                let n = r["approvals"].as_u64().unwrap_or(1);
                outln!(
                    "  {}: {n} approval{} by {}, {}",
                    r["why"].as_str().unwrap_or_default(),
                    if n == 1 { "" } else { "s" },
                    r["approvers"].as_str().unwrap_or_default(),
                    r["when"].as_str().unwrap_or_default()
                );
            }
        }
    }
    if !v.params.is_empty() {
        let mut t = table();
        t.set_header(vec!["param", "type", "required", "default", "allowed", "description"]);
        for (name, p) in &v.params {
            t.add_row(vec![
                name.clone(),
                if p.multiline { format!("{} (many lines)", p.ty.name()) } else { p.ty.name().to_string() },
                if p.required { "yes".into() } else { String::new() },
                p.default.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                allowed(p),
                safe(&p.description),
            ]);
        }
        outln!("{t}");
    }
    Ok(0)
}

/// What values a param takes, as text: an enum's values, a number's bounds.
fn allowed(p: &crate::applet::ParamSpec) -> String {
    let n = |x: f64| if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { x.to_string() };
    match (&p.values, p.min, p.max) {
        (Some(values), _, _) => values.join(", "),
        (None, Some(lo), Some(hi)) => format!("{} to {}", n(lo), n(hi)),
        (None, Some(lo), None) => format!("at least {}", n(lo)),
        (None, None, Some(hi)) => format!("at most {}", n(hi)),
        (None, None, None) => String::new(),
    }
}

pub fn promote(global: &Global, args: VersionArgs) -> Result<i32, Error> {
    let (name, version) = version_ref(&args.reference)?;
    let reg = registry(global)?;
    let a = reg.promote(&name, &version, &global.actor())?;
    reg.flush()?;
    outln!("{}@{} is now current", a.name, a.current);
    Ok(0)
}

pub fn rollback(global: &Global, name: String) -> Result<i32, Error> {
    let reg = registry(global)?;
    let (from, to) = reg.rollback(&name, &global.actor())?;
    reg.flush()?;
    outln!("{name}: rolled back from {from} to {to}");
    Ok(0)
}

pub fn yank(global: &Global, args: YankArgs) -> Result<i32, Error> {
    let (name, version) = version_ref(&args.reference)?;
    let reg = registry(global)?;
    let v = reg.yank(&name, &version, args.undo, &global.actor())?;
    reg.flush()?;
    outln!("{} {}", v.id(), if v.yanked { "yanked: new runs need --allow-yanked" } else { "is no longer yanked" });
    Ok(0)
}

pub fn list(global: &Global, format: Format) -> Result<i32, Error> {
    let reg = registry(global)?;
    let all = reg.list()?;
    if format != Format::Table {
        print_json(
            &all.iter().map(|(a, v)| serde_json::json!({ "name": a.name, "current": v, "history": a.history })).collect::<Vec<_>>(),
            format,
        );
        return Ok(0);
    }
    let mut t = table();
    t.set_header(vec!["applet", "current", "permissions", "description"]);
    for (a, v) in &all {
        t.add_row(vec![
            a.name.clone(),
            if v.yanked { format!("{} (yanked)", v.version) } else { v.version.clone() },
            v.permissions.keys().cloned().collect::<Vec<_>>().join(", "),
            terminal_safe(&v.description, false).into_owned(),
        ]);
    }
    outln!("{t}");
    Ok(0)
}

pub fn search(global: &Global, args: SearchArgs) -> Result<i32, Error> {
    let hits = registry(global)?.search(&args.query, args.tag.as_deref(), args.permission.as_deref(), args.limit)?;
    if args.format != Format::Table {
        print_json(&hits, args.format);
        return Ok(0);
    }
    if hits.is_empty() {
        errln!("no applet matches `{}`", args.query);
        return Ok(0);
    }
    let mut t = table();
    t.set_header(vec!["applet", "version", "needs", "tags", "description"]);
    for h in &hits {
        let needs = if h.permissions.is_empty() { "-".to_string() } else { h.permissions.join(", ") };
        let mut name = if h.featured.is_empty() { h.name.clone() } else { format!("{} *", h.name) };
        if h.yanked {
            name.push_str(" (yanked)");
        }
        t.add_row(vec![name, h.version.clone(), needs, h.tags.join(", "), terminal_safe(&h.description, false).into_owned()]);
    }
    outln!("{t}");
    Ok(0)
}

pub fn feature(global: &Global, cmd: FeatureCmd) -> Result<i32, Error> {
    let reg = registry(global)?;
    match cmd {
        FeatureCmd::Add { collection, name } => {
            reg.feature(&collection, &name, false, &global.actor())?;
            reg.flush()?;
            outln!("{name} is featured in {collection}");
        }
        FeatureCmd::Rm { collection, name } => {
            reg.feature(&collection, &name, true, &global.actor())?;
            reg.flush()?;
            outln!("{name} removed from {collection}");
        }
        FeatureCmd::List { format } => {
            let all = reg.featured()?;
            if format != Format::Table {
                print_json(&all, format);
            } else {
                for (c, names) in all {
                    outln!("{c}: {}", names.join(", "));
                }
            }
        }
    }
    Ok(0)
}

pub fn export(global: &Global, args: ExportArgs) -> Result<i32, Error> {
    let (meta, bytes) = registry(global)?.export(&Reference::parse(&args.reference)?)?;
    std::fs::write(&args.output, bytes).map_err(|e| Error::Internal(format!("writing {}: {e}", args.output.display())))?;
    errln!("wrote {} to {}", meta.id(), args.output.display());
    Ok(0)
}

pub fn import(global: &Global, args: ImportArgs) -> Result<i32, Error> {
    let meta = std::fs::metadata(&args.file).map_err(|e| Error::NotFound(format!("{}: {e}", args.file.display())))?;
    if meta.len() > crate::registry::bundle::MAX_BUNDLE_BYTES {
        return Err(Error::Applet(vec![crate::error::Diagnostic::new(
            args.file.display().to_string(),
            format!("is {} bytes; bundles may be at most {}", meta.len(), crate::registry::bundle::MAX_BUNDLE_BYTES),
        )]));
    }
    let bytes = std::fs::read(&args.file).map_err(|e| Error::Internal(format!("reading {}: {e}", args.file.display())))?;
    // Its own tests run before it is taken, as for a publish.
    let (_, pkg) = crate::registry::bundle::decode(&bytes)?;
    let tests = publish_tests(global, &pkg)?;
    let reg = registry(global)?;
    let imported =
        reg.import_tested(&bytes, &global.actor(), args.allow_downgrade, args.allow_unsigned, &crate::modules::builtin(), tests)?;
    reg.flush()?;
    match imported {
        Published::New(v) if v.unsigned => {
            outln!(
                "imported {} (sha256:{}), now current; UNSIGNED: its publisher ({}) is only what it claims",
                v.id(),
                &v.hash[..16],
                terminal_safe(&v.publisher, false)
            )
        }
        Published::New(v) => {
            outln!("imported {} (sha256:{}), signed by {}, now current", v.id(), &v.hash[..16], v.signed_by.as_deref().unwrap_or("?"))
        }
        Published::Unchanged(v) => outln!("{} is already in the registry with this content", v.id()),
    }
    Ok(0)
}
