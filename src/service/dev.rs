//! `opslet serve --dev DIR`: the applet folders under DIR are served by name (ahead of the
//! registry) and reloaded when their files change, so an applet being written can be triggered
//! over HTTP at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::RwLock;

use crate::applet::AppletPackage;
use crate::error::Error;

/// A dev applet: its package, or the error that keeps it from loading.
type Loaded = Result<Arc<AppletPackage>, String>;

/// Applet folders of a dev dir, by applet name.
#[derive(Clone, Default)]
pub struct DevApplets {
    map: Arc<RwLock<HashMap<String, Loaded>>>,
    /// Folder -> the name its applet is served under, so a rename drops the old name.
    keys: Arc<RwLock<HashMap<PathBuf, String>>>,
    _watcher: Arc<parking_lot::Mutex<Option<notify::RecommendedWatcher>>>,
}

fn load(folder: &Path) -> Option<(String, Loaded)> {
    let name = folder.file_name()?.to_str()?.to_string();
    if name.starts_with('.') || !folder.join(crate::applet::manifest::MANIFEST_FILE).exists() {
        return None;
    }
    let loaded = AppletPackage::load_dir(folder)
        .and_then(|p| p.check_modules(&crate::modules::builtin()).map(|()| p))
        .map(|p| {
            if p.manifest.name != name {
                tracing::warn!(folder = %folder.display(), applet = %p.manifest.name, "dev applet's folder and manifest names differ; serving it by its manifest name");
            }
            Arc::new(p)
        })
        .map_err(|e| e.to_string());
    let key = loaded.as_ref().map(|p| p.manifest.name.clone()).unwrap_or(name);
    Some((key, loaded))
}

impl DevApplets {
    /// Loads every applet folder under `dir` and watches them.
    pub fn watch(dir: &Path) -> Result<DevApplets, Error> {
        let dir = dir.canonicalize().map_err(|e| Error::Config(format!("--dev {}: {e}", dir.display())))?;
        let dev = DevApplets::default();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::Config(format!("--dev {}: {e}", dir.display())))?.flatten() {
            if entry.path().is_dir() {
                dev.reload(&entry.path());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let root = dir.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Only changes count: reading the files for a reload must not trigger another one.
            if let Ok(ev) = ev.as_ref().map(|e| (e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove()).then_some(e)) {
                let Some(ev) = ev else { return };
                for p in ev.paths.clone() {
                    // The applet folder is the first component below the dev dir.
                    if let Some(first) = p.strip_prefix(&root).ok().and_then(|rel| rel.components().next()) {
                        let _ = tx.send(root.join(first.as_os_str()));
                    }
                }
            }
        })
        .map_err(|e| Error::Internal(format!("watching {}: {e}", dir.display())))?;
        watcher.watch(&dir, RecursiveMode::Recursive).map_err(|e| Error::Internal(format!("watching {}: {e}", dir.display())))?;
        *dev._watcher.lock() = Some(watcher);
        let d = dev.clone();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                // Let an editor finish writing, then reload each folder touched once.
                std::thread::sleep(Duration::from_millis(100));
                let mut folders = vec![first];
                while let Ok(more) = rx.try_recv() {
                    if !folders.contains(&more) {
                        folders.push(more);
                    }
                }
                for f in folders {
                    d.reload(&f);
                }
            }
        });
        tracing::info!(dir = %dir.display(), applets = dev.map.read().len(), "serving dev applets");
        Ok(dev)
    }

    fn reload(&self, folder: &Path) {
        let loaded = load(folder);
        let mut map = self.map.write();
        let mut keys = self.keys.write();
        if let Some(old) = keys.remove(folder) {
            map.remove(&old);
        }
        if let Some((name, loaded)) = loaded {
            match &loaded {
                Ok(p) => tracing::info!(applet = %p.id(), "dev applet loaded"),
                Err(e) => tracing::warn!(folder = %folder.display(), error = %e, "dev applet does not load"),
            }
            if let Some(other) = keys.iter().find(|(f, n)| **n == name && f.as_path() != folder).map(|(f, _)| f.clone()) {
                tracing::warn!(applet = %name, first = %other.display(), second = %folder.display(), "two dev folders declare the same applet; keeping the first");
                return;
            }
            keys.insert(folder.to_path_buf(), name.clone());
            map.insert(name, loaded);
        }
    }

    /// The dev applet of that name, if there is one (an error when its files do not load).
    pub fn get(&self, name: &str) -> Option<Loaded> {
        self.map.read().get(name).cloned()
    }
}
