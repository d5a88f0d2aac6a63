//! `opslet artifact`: the objects of the `[s3.NAME]` stores (releases, agent packages,
//! certificates, bundles): list them with their checksums and versions, upload, download and
//! remove them (docs/artifacts.md).

use std::path::PathBuf;

use clap::Subcommand;

use super::Global;
use super::output::Format;
use super::stdio::{errln, out, outln};
use crate::error::Error;
use crate::service::artifacts::{Artifacts, Location};

#[derive(Subcommand, Debug)]
pub enum ArtifactCmd {
    /// The stores of opslet.toml (`[s3.NAME]`).
    Connections {
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Objects under [CONNECTION:]BUCKET[/PREFIX]: key, size, SHA-256, version.
    List {
        /// [CONNECTION:]BUCKET[/PREFIX]
        at: String,
        /// Every version and delete marker (a bucket with versioning).
        #[arg(long)]
        versions: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Upload FILE as [CONNECTION:]BUCKET/KEY (in parts, its SHA-256 recorded and checked).
    Put {
        file: PathBuf,
        /// [CONNECTION:]BUCKET/KEY
        at: String,
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Download [CONNECTION:]BUCKET/KEY (checked against its recorded SHA-256).
    Get {
        /// [CONNECTION:]BUCKET/KEY
        at: String,
        /// Where to write it (default: the key's file name, here).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// One version of it.
        #[arg(long)]
        version: Option<String>,
    },
    /// Remove [CONNECTION:]BUCKET/KEY (with versioning, a delete marker hides it; --version
    /// removes one version for good).
    Rm {
        /// [CONNECTION:]BUCKET/KEY
        at: String,
        #[arg(long)]
        version: Option<String>,
    },
}

impl ArtifactCmd {
    /// The file a command reads or writes, for `--server` to send or bring back.
    pub fn path_mut(&mut self) -> Option<(bool, &mut PathBuf)> {
        match self {
            ArtifactCmd::Put { file, .. } => Some((false, file)),
            ArtifactCmd::Get { output, at, .. } => {
                if output.is_none() {
                    let name = at.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("artifact").to_string();
                    *output = Some(PathBuf::from(name));
                }
                output.as_mut().map(|o| (true, o))
            }
            _ => None,
        }
    }
}

fn short(sha: &Option<String>) -> String {
    sha.as_deref().map(|s| s[..12.min(s.len())].to_string()).unwrap_or_else(|| "-".into())
}

pub fn run(global: &Global, cmd: ArtifactCmd) -> Result<i32, Error> {
    let config = global.config()?;
    let artifacts = Artifacts::new(&config, global.open_store()?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the async runtime: {e}")))?;
    let actor = global.actor();
    let via = if global.is_remote() { "remote-cli" } else { "cli" };
    match cmd {
        ArtifactCmd::Connections { format } => {
            let list = artifacts.connections();
            match format {
                Some(f) => out!("{}", super::output::render(&serde_json::to_value(&list).unwrap_or_default(), f)),
                None if list.is_empty() => errln!("no s3 connection is configured (add [s3.NAME] to opslet.toml; docs/lua/s3.md)"),
                None => {
                    for c in list {
                        outln!("{}{}  {}", c.name, if c.default { " (default)" } else { "" }, c.endpoint);
                    }
                }
            }
            Ok(0)
        }
        ArtifactCmd::List { at, versions, limit, format } => {
            let at = Location::parse(&at, false)?;
            let l = rt.block_on(artifacts.list(&at, versions, limit.clamp(1, 100_000)))?;
            if let Some(f) = format {
                out!("{}", super::output::render(&serde_json::to_value(&l).unwrap_or_default(), f));
                return Ok(0);
            }
            errln!("{}:{}/{}  versioning: {}", l.connection, l.bucket, l.prefix, l.versioning.as_deref().unwrap_or("off"));
            for o in &l.objects {
                let version = match (&o.version_id, o.latest, o.delete_marker) {
                    (_, _, true) => format!("  {} (delete marker)", o.version_id.as_deref().unwrap_or("")),
                    (Some(v), Some(true), _) => format!("  {v} (latest)"),
                    (Some(v), _, _) => format!("  {v}"),
                    _ => String::new(),
                };
                outln!("{}  {:>12}  {}  {}{version}", o.modified.as_deref().unwrap_or("-"), o.size, short(&o.etag), o.key);
            }
            if l.truncated {
                errln!("(more than {limit}; raise --limit or narrow the prefix)");
            }
            Ok(0)
        }
        ArtifactCmd::Put { file, at, content_type } => {
            let at = Location::parse(&at, true)?;
            let o = rt.block_on(artifacts.put_file(&at, &file, content_type, &actor, via))?;
            outln!("{}/{}  {} bytes  sha256 {}", o.bucket, o.key, o.size, o.sha256.as_deref().unwrap_or("-"));
            if let Some(v) = &o.version_id {
                outln!("version {v}");
            }
            Ok(0)
        }
        ArtifactCmd::Get { at, output, version } => {
            let loc = Location::parse(&at, true)?;
            let dest = output.unwrap_or_else(|| PathBuf::from(loc.key.rsplit('/').next().unwrap_or("artifact")));
            let o = rt.block_on(artifacts.get_file(&loc, version.as_deref(), &dest, &actor, via))?;
            errln!(
                "{}/{} -> {}  {} bytes  sha256 {} (checked)",
                o.bucket,
                o.key,
                dest.display(),
                o.size,
                o.sha256.as_deref().unwrap_or("-")
            );
            Ok(0)
        }
        ArtifactCmd::Rm { at, version } => {
            let at = Location::parse(&at, true)?;
            let d = rt.block_on(artifacts.remove(&at, version.as_deref(), &actor, via))?;
            match (&d.version_id, d.delete_marker) {
                (Some(v), true) => outln!("{}/{} hidden by delete marker {v} (its versions stay)", d.bucket, d.key),
                (Some(v), false) => outln!("{}/{} version {v} removed", d.bucket, d.key),
                (None, _) => outln!("{}/{} removed", d.bucket, d.key),
            }
            Ok(0)
        }
    }
}
