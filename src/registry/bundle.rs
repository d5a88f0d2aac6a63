//! Single-file bundles: one published version with its files, for moving applets between
//! installations. JSON with base64 file contents; the content hash is checked on import.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::model::VersionMeta;
use crate::applet::{self, AppletPackage};
use crate::error::{Diagnostic, Error};

pub const FORMAT: &str = "opslet-bundle/1";
/// Largest bundle file accepted.
pub const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    format: String,
    meta: VersionMeta,
    files: BTreeMap<String, String>,
}

/// Encodes a package and its registry metadata.
pub fn encode(meta: &VersionMeta, pkg: &AppletPackage) -> Vec<u8> {
    let files = pkg.files.iter().map(|(p, b)| (p.clone(), B64.encode(b))).collect();
    serde_json::to_vec_pretty(&BundleFile { format: FORMAT.into(), meta: meta.clone(), files }).expect("bundles serialize")
}

/// Decodes and verifies a bundle: size, format, every path, the files' hash against the one
/// recorded, and the manifest against the recorded name and version.
pub fn decode(bytes: &[u8]) -> Result<(VersionMeta, AppletPackage), Error> {
    let bad = |m: String| Error::Applet(vec![Diagnostic::new("bundle", m)]);
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(bad(format!("is {} bytes; bundles may be at most {MAX_BUNDLE_BYTES}", bytes.len())));
    }
    let b: BundleFile = serde_json::from_slice(bytes).map_err(|e| bad(format!("not an opslet bundle: {e}")))?;
    if b.format != FORMAT {
        return Err(bad(format!("format `{}` is not supported (expected {FORMAT})", b.format)));
    }
    if b.files.len() > applet::MAX_FILES {
        return Err(bad(format!("holds {} files; an applet may hold at most {}", b.files.len(), applet::MAX_FILES)));
    }
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for (path, data) in b.files {
        applet::check_rel_path(&path).map_err(|m| bad(format!("entry `{path}`: {m}")))?;
        let data = B64.decode(data.as_bytes()).map_err(|e| bad(format!("entry `{path}`: not base64: {e}")))?;
        total += data.len() as u64;
        if total > applet::MAX_PACKAGE_BYTES {
            return Err(bad(format!("files add up to more than {} bytes", applet::MAX_PACKAGE_BYTES)));
        }
        files.insert(path, data);
    }
    let pkg = AppletPackage::from_files(files)?;
    if pkg.hash != b.meta.hash {
        return Err(bad(format!("content hash is {} but the bundle says {}: the bundle was altered or damaged", pkg.hash, b.meta.hash)));
    }
    if pkg.manifest.name != b.meta.name || pkg.manifest.version.to_string() != b.meta.version {
        return Err(bad(format!("its manifest is {} but the bundle says {}", pkg.id(), b.meta.id())));
    }
    Ok((b.meta, pkg))
}

/// Signs a bundle with `key` (over its verified content and its message), returning the
/// rewritten bundle and its version.
pub fn sign(bytes: &[u8], key: &ed25519_dalek::SigningKey) -> Result<(Vec<u8>, VersionMeta), Error> {
    let (mut meta, pkg) = decode(bytes)?;
    meta.signature = Some(super::signing::sign(key, &meta.name, &meta.version, &meta.hash, &meta.message));
    // Who signed is said by each registry's trust list, not by the bundle.
    meta.signed_by = None;
    meta.unsigned = false;
    Ok((encode(&meta, &pkg), meta))
}
