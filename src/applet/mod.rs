//! Applets: a folder with `applet.toml` + `main.lua`, loaded into an immutable in-memory package.
//! Nothing reads the applet's folder after loading; `require` inside a run serves files from here.

pub mod compile;
pub mod manifest;
pub mod params;
pub mod spec;

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

pub use manifest::{Manifest, ParamSpec, ParamType};

use crate::error::{Diagnostic, Error};

pub const MAIN_FILE: &str = "main.lua";
/// Most files an applet package may hold.
pub const MAX_FILES: usize = 256;
/// Most bytes an applet package may hold.
pub const MAX_PACKAGE_BYTES: u64 = 8 * 1024 * 1024;

/// An applet's files, validated manifest and content hash.
#[derive(Debug, Clone)]
pub struct AppletPackage {
    pub manifest: Manifest,
    /// Relative path (with `/`) -> content.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Hex SHA-256 over all paths and contents.
    pub hash: String,
    /// Compiled Luau bytecode of every `.lua` file, by path.
    pub bytecode: BTreeMap<String, Vec<u8>>,
}

impl AppletPackage {
    /// Reads an applet folder. Hidden files and folders (`.git`, editor swap files) are skipped;
    /// symlinks are refused so a package never reaches outside its folder.
    pub fn load_dir(dir: &Path) -> Result<AppletPackage, Error> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| Error::Applet(vec![Diagnostic::new(dir.display().to_string(), format!("cannot open applet folder: {e}"))]))?;
        if !meta.is_dir() {
            return Err(Error::Applet(vec![Diagnostic::new(
                dir.display().to_string(),
                "not a folder: an applet is a folder with applet.toml and main.lua",
            )]));
        }
        let mut files = BTreeMap::new();
        let mut total = 0u64;
        read_tree(dir, "", &mut files, &mut total)?;
        AppletPackage::from_files(files)
    }

    /// Builds a package from files already in memory (a folder, a registry entry, a bundle).
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Result<AppletPackage, Error> {
        let mut errs = Vec::new();
        for path in files.keys() {
            if let Err(m) = check_rel_path(path) {
                errs.push(Diagnostic::new(path.clone(), m));
            }
        }
        let manifest_src = match files.get(manifest::MANIFEST_FILE) {
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => Some(s),
                Err(_) => {
                    errs.push(Diagnostic::new(manifest::MANIFEST_FILE, "not valid UTF-8"));
                    None
                }
            },
            None => {
                errs.push(Diagnostic::new(manifest::MANIFEST_FILE, "missing: every applet needs an applet.toml manifest"));
                None
            }
        };
        let manifest = manifest_src.and_then(|src| match Manifest::parse(src) {
            Ok(m) => Some(m),
            Err(e) => {
                errs.extend(e);
                None
            }
        });
        if !files.contains_key(MAIN_FILE) {
            errs.push(Diagnostic::new(MAIN_FILE, "missing: every applet needs a main.lua returning its function"));
        }
        let bytecode = compile_sources(&files, &mut errs);
        match manifest {
            Some(manifest) if errs.is_empty() => {
                let hash = content_hash(&files);
                Ok(AppletPackage { manifest, files, hash, bytecode })
            }
            _ => Err(Error::Applet(errs)),
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        self.manifest.id()
    }

    /// Checks `[permissions]` against the host modules `modules` knows (the module set of the
    /// build, passed in from above: the applet layer knows no module).
    pub fn check_modules(&self, modules: &dyn PermissionCheck) -> Result<(), Error> {
        let errs: Vec<Diagnostic> = modules
            .check_permissions(&self.manifest)
            .into_iter()
            .map(|(module, msg)| Diagnostic {
                file: manifest::MANIFEST_FILE.into(),
                line: self.manifest.permission_lines.get(&module).copied(),
                column: None,
                message: format!("permissions.{module}: {msg}"),
            })
            .collect();
        if errs.is_empty() { Ok(()) } else { Err(Error::Applet(errs)) }
    }

    pub fn source(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }
}

/// What can judge a manifest's `[permissions]`: the host modules of a build
/// (`runtime::modules::ModuleSet`). Each error is (module, message).
pub trait PermissionCheck {
    fn check_permissions(&self, manifest: &Manifest) -> Vec<(String, String)>;
}

fn read_tree(dir: &Path, prefix: &str, files: &mut BTreeMap<String, Vec<u8>>, total: &mut u64) -> Result<(), Error> {
    let io_err = |p: &str, e: std::io::Error| Error::Applet(vec![Diagnostic::new(p.to_string(), format!("cannot read: {e}"))]);
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(|e| io_err(prefix, e))?.collect::<Result<_, _>>().map_err(|e| io_err(prefix, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::Applet(vec![Diagnostic::new(
                format!("{prefix}{}", name.to_string_lossy()),
                "file name is not valid UTF-8",
            )]));
        };
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let ft = entry.file_type().map_err(|e| io_err(&rel, e))?;
        if ft.is_symlink() {
            return Err(Error::Applet(vec![Diagnostic::new(rel, "symlinks are not allowed in an applet folder")]));
        } else if ft.is_dir() {
            read_tree(&entry.path(), &format!("{rel}/"), files, total)?;
        } else if ft.is_file() {
            let data = std::fs::read(entry.path()).map_err(|e| io_err(&rel, e))?;
            *total += data.len() as u64;
            if files.len() >= MAX_FILES {
                return Err(Error::Applet(vec![Diagnostic::new(rel, format!("an applet may hold at most {MAX_FILES} files"))]));
            }
            if *total > MAX_PACKAGE_BYTES {
                return Err(Error::Applet(vec![Diagnostic::new(rel, format!("an applet may hold at most {} bytes", MAX_PACKAGE_BYTES))]));
            }
            files.insert(rel, data);
        }
    }
    Ok(())
}

/// A package path is relative, uses `/`, and never climbs out (`..`) or names hidden files.
pub fn check_rel_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 200 {
        return Err("path must be 1 to 200 characters".into());
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err("path must be relative and use `/`".into());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.starts_with('.') {
            return Err(format!("path component `{part}` is not allowed"));
        }
    }
    Ok(())
}

fn content_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (path, data) in files {
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        h.update((data.len() as u64).to_be_bytes());
        h.update(data);
    }
    hex::encode(h.finalize())
}

/// Compiles every `.lua` file; syntax errors come back as `file:line: message`.
fn compile_sources(files: &BTreeMap<String, Vec<u8>>, errs: &mut Vec<Diagnostic>) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (path, src) in files.iter().filter(|(p, _)| p.ends_with(".lua")) {
        match compile::compile(path, src) {
            Ok(bc) => {
                out.insert(path.clone(), bc);
            }
            Err(d) => errs.push(d),
        }
    }
    out
}
