//! The applet registry ("market"): immutable published versions, a current pointer per applet,
//! yanking, search and featured collections, stored in the data dir's store.
//!
//! Trees (names in `store::keys`): packages by content hash, versions by `name@version`, applets
//! by name, featured collections by name. Publishing writes all of them in one transaction,
//! so a crash leaves either the whole version or none of it.

pub mod bundle;
pub mod model;
pub mod search;
pub mod signing;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;
use parking_lot::RwLock;

use crate::applet::AppletPackage;
use crate::error::{Diagnostic, Error};
use crate::store::Store;
use crate::util::validate_name;
pub use model::{AppletMeta, PermissionChanges, VersionMeta};
pub use search::SearchHit;

/// What `publish` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// A new version, now current.
    New(VersionMeta),
    /// This exact content was already published under this version.
    Unchanged(VersionMeta),
}

/// How a run names what to run: `name`, `name@1.2.0`, `name@sha256:ab12cd34`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Current(String),
    Version(String, semver::Version),
    Hash(String, String),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let bad = |m: String| Error::Usage(format!("`{s}`: {m}"));
        let (name, rest) = match s.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        validate_name(name).map_err(|m| bad(format!("applet name {m}")))?;
        Ok(match rest {
            None => Reference::Current(name.into()),
            Some(r) => match r.strip_prefix("sha256:") {
                Some(prefix) => {
                    if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad("a hash prefix needs at least 8 hex digits".into()));
                    }
                    Reference::Hash(name.into(), prefix.to_ascii_lowercase())
                }
                None => {
                    Reference::Version(name.into(), semver::Version::parse(r).map_err(|e| bad(format!("`{r}` is not a version: {e}")))?)
                }
            },
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Reference::Current(n) | Reference::Version(n, _) | Reference::Hash(n, _) => n,
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Current(n) => f.write_str(n),
            Reference::Version(n, v) => write!(f, "{n}@{v}"),
            Reference::Hash(n, h) => write!(f, "{n}@sha256:{h}"),
        }
    }
}

/// The registry over a store.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    packages: crate::store::Tree,
    versions: crate::store::Tree,
    applets: crate::store::Tree,
    features: crate::store::Tree,
    trust: crate::store::Tree,
    index: Arc<RwLock<Option<Arc<search::Index>>>>,
    /// Packages loaded for runs, by content hash (see `package_shared`).
    loaded: Arc<parking_lot::Mutex<std::collections::HashMap<String, Arc<AppletPackage>>>>,
}

/// Packages kept loaded for runs; the set starts over when it is full.
const LOADED_PACKAGES: usize = 64;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPackage {
    files: BTreeMap<String, String>,
}

fn version_key(name: &str, version: &str) -> Vec<u8> {
    format!("{name}@{version}").into_bytes()
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry records serialize")
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|e| Error::Store(format!("registry {what} is unreadable: {e}")))
}

impl Registry {
    pub fn new(store: Store) -> Result<Registry, Error> {
        Ok(Registry {
            packages: store.tree(crate::store::keys::REG_PACKAGES),
            versions: store.tree(crate::store::keys::REG_VERSIONS),
            applets: store.tree(crate::store::keys::REG_APPLETS),
            features: store.tree(crate::store::keys::REG_FEATURES),
            trust: store.tree(crate::store::keys::REG_TRUST),
            index: Arc::new(RwLock::new(None)),
            loaded: Arc::new(parking_lot::Mutex::new(std::collections::HashMap::new())),
            store,
        })
    }

    fn audit(&self, kind: &str, actor: &str, applet: &str, data: serde_json::Value) -> Result<(), Error> {
        self.store.audit().record_change(kind, actor, "registry", Some(applet), data)
    }

    fn changed(&self) {
        *self.index.write() = None;
    }

    /// Publishes a validated package. The same content under the same version again is a no-op;
    /// other content under an existing version is refused, as is a version lower than the
    /// latest unless `allow_downgrade`.
    pub fn publish(&self, pkg: &AppletPackage, publisher: &str, message: &str, allow_downgrade: bool) -> Result<Published, Error> {
        self.publish_signed(pkg, publisher, message, allow_downgrade, None)
    }

    /// Publishes, signed with `key` when given (the signature travels in exported bundles).
    pub fn publish_signed(
        &self,
        pkg: &AppletPackage,
        publisher: &str,
        message: &str,
        allow_downgrade: bool,
        key: Option<&ed25519_dalek::SigningKey>,
    ) -> Result<Published, Error> {
        self.publish_tested(pkg, publisher, message, allow_downgrade, key, None)
    }

    /// Publishes, with how the applet's own tests went (`opslet publish` ran them).
    pub fn publish_tested(
        &self,
        pkg: &AppletPackage,
        publisher: &str,
        message: &str,
        allow_downgrade: bool,
        key: Option<&ed25519_dalek::SigningKey>,
        tests: Option<model::TestSummary>,
    ) -> Result<Published, Error> {
        let mut meta = VersionMeta::from_package(pkg, publisher, message);
        meta.tests = tests;
        if let Some(key) = key {
            let sig = signing::sign(key, &meta.name, &meta.version, &meta.hash, &meta.message);
            meta.signed_by = Some(self.trusted_name(&sig.key)?.unwrap_or_else(|| sig.key.clone()));
            meta.signature = Some(sig);
        }
        self.publish_meta(pkg, meta, allow_downgrade, "registry.publish", publisher)
    }

    /// The trust list: name -> key id.
    pub fn trusted(&self) -> Result<BTreeMap<String, String>, Error> {
        self.trust
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
    }

    /// The trust list's name for a key id.
    fn trusted_name(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self.trusted()?.into_iter().find(|(_, k)| k == key).map(|(n, _)| n))
    }

    /// Trusts a publisher key under `name` (replacing the key that name had).
    pub fn trust(&self, name: &str, key: &str, actor: &str) -> Result<(), Error> {
        crate::util::validate_name(name).map_err(|m| Error::Usage(format!("trust name {m}")))?;
        let vk = signing::parse_key_id(key).map_err(Error::Usage)?;
        let id = signing::key_id(&vk);
        if let Some(other) = self.trusted_name(&id)?.filter(|n| n != name) {
            return Err(Error::Usage(format!("that key is trusted already, as `{other}`")));
        }
        if let Some(old) = self.trust.get(name.as_bytes())?.filter(|k| k.as_slice() != id.as_bytes()) {
            return Err(Error::Usage(format!(
                "`{name}` trusts another key already ({}); `opslet trust rm {name}` first",
                String::from_utf8_lossy(&old)
            )));
        }
        self.trust.insert(name.as_bytes(), id.as_bytes())?;
        self.store.audit().record_change("registry.trust", actor, "registry", None, serde_json::json!({ "name": name, "key": id }))
    }

    /// Stops trusting the key named `name`.
    pub fn untrust(&self, name: &str, actor: &str) -> Result<(), Error> {
        let Some(old) = self.trust.remove(name.as_bytes())? else {
            return Err(Error::NotFound(format!("no trusted key named `{name}`")));
        };
        let key = String::from_utf8_lossy(&old).into_owned();
        self.store.audit().record_change("registry.untrust", actor, "registry", None, serde_json::json!({ "name": name, "key": key }))
    }

    fn publish_meta(
        &self,
        pkg: &AppletPackage,
        meta: VersionMeta,
        allow_downgrade: bool,
        kind: &str,
        actor: &str,
    ) -> Result<Published, Error> {
        let name = meta.name.clone();
        let existing = self.versions(&name)?;
        if let Some(same) = existing.iter().find(|v| v.version == meta.version) {
            if same.hash == meta.hash {
                return Ok(Published::Unchanged(same.clone()));
            }
            return Err(Error::Applet(vec![Diagnostic::new(
                meta.id(),
                format!(
                    "version {} is already published with different content (sha256:{}); publish a new version",
                    meta.version,
                    &same.hash[..16]
                ),
            )]));
        }
        if let Some(latest) = existing.iter().map(VersionMeta::semver).max()
            && meta.semver() < latest
            && !allow_downgrade
        {
            return Err(Error::Applet(vec![Diagnostic::new(
                meta.id(),
                format!(
                    "version {} is lower than the latest published {latest}; pass --allow-downgrade to publish it anyway",
                    meta.version
                ),
            )]));
        }
        let stored = json(&StoredPackage { files: pkg.files.iter().map(|(p, b)| (p.clone(), B64.encode(b))).collect() });
        let vkey = version_key(&name, &meta.version);
        let vbody = json(&meta);
        let now = Utc::now();
        let inserted = self.store.transaction(|tx| {
            if let Some(prev) = tx.get(&self.versions, &vkey)? {
                // Someone published this version between our check and now.
                let prev: VersionMeta = parse("version", &prev)?;
                if prev.hash != meta.hash {
                    return Err(Error::Applet(vec![Diagnostic::new(meta.id(), "was just published with different content")]));
                }
                return Ok(Some(prev));
            }
            tx.insert(&self.packages, meta.hash.as_bytes(), stored.as_slice())?;
            tx.insert(&self.versions, vkey.as_slice(), vbody.as_slice())?;
            let applet = match tx.get(&self.applets, name.as_bytes())? {
                Some(b) => {
                    let mut a: AppletMeta = parse("applet", &b)?;
                    let prev = std::mem::replace(&mut a.current, meta.version.clone());
                    a.history.push(prev);
                    a.updated_at = now;
                    a
                }
                None => {
                    AppletMeta { name: name.clone(), current: meta.version.clone(), history: Vec::new(), created_at: now, updated_at: now }
                }
            };
            tx.insert(&self.applets, name.as_bytes(), json(&applet))?;
            Ok(None)
        })?;
        if let Some(prev) = inserted {
            return Ok(Published::Unchanged(prev));
        }
        self.changed();
        self.audit(
            kind,
            actor,
            &meta.id(),
            serde_json::json!({ "hash": meta.hash, "message": meta.message, "permissions": meta.permissions }),
        )?;
        Ok(Published::New(meta))
    }

    /// All versions of an applet, oldest first (semver order).
    pub fn versions(&self, name: &str) -> Result<Vec<VersionMeta>, Error> {
        let mut out = Vec::new();
        for item in self.versions.scan_prefix(format!("{name}@").as_bytes()) {
            let (_, v) = item?;
            out.push(parse::<VersionMeta>("version", &v)?);
        }
        out.sort_by_key(VersionMeta::semver);
        Ok(out)
    }

    pub fn applet(&self, name: &str) -> Result<AppletMeta, Error> {
        match self.applets.get(name.as_bytes())? {
            Some(b) => parse("applet", &b),
            None => Err(Error::NotFound(format!("no applet `{name}` in the registry{}", self.suggest(name)))),
        }
    }

    fn suggest(&self, name: &str) -> String {
        let names: Vec<String> =
            self.applets.iter().keys().filter_map(|k| k.ok()).map(|k| String::from_utf8_lossy(&k).into_owned()).collect();
        let best = names.iter().map(|n| (strsim::levenshtein(n, name), n)).filter(|(d, _)| *d <= 2).min();
        best.map(|(_, n)| format!(" (did you mean `{n}`?)")).unwrap_or_default()
    }

    fn version(&self, name: &str, version: &str) -> Result<VersionMeta, Error> {
        match self.versions.get(version_key(name, version))? {
            Some(b) => parse("version", &b),
            None => {
                self.applet(name)?;
                let have: Vec<String> = self.versions(name)?.into_iter().map(|v| v.version).collect();
                Err(Error::NotFound(format!("{name} has no version {version} (published: {})", have.join(", "))))
            }
        }
    }

    /// The version a reference names, refusing yanked versions unless `allow_yanked`.
    pub fn resolve(&self, r: &Reference, allow_yanked: bool) -> Result<VersionMeta, Error> {
        let meta = match r {
            Reference::Current(name) => {
                let a = self.applet(name)?;
                let v = self.version(name, &a.current)?;
                if v.yanked && !allow_yanked {
                    return Err(Error::Yanked { id: v.id(), current: true });
                }
                return Ok(v);
            }
            Reference::Version(name, v) => self.version(name, &v.to_string())?,
            Reference::Hash(name, prefix) => {
                let matches: Vec<VersionMeta> = self.versions(name)?.into_iter().filter(|v| v.hash.starts_with(prefix.as_str())).collect();
                match matches.len() {
                    0 => {
                        self.applet(name)?;
                        return Err(Error::NotFound(format!("{name} has no version with hash sha256:{prefix}")));
                    }
                    1 => matches.into_iter().next().expect("one match"),
                    _ => return Err(Error::Usage(format!("sha256:{prefix} matches several versions of {name}; give more digits"))),
                }
            }
        };
        if meta.yanked && !allow_yanked {
            return Err(Error::Yanked { id: meta.id(), current: false });
        }
        Ok(meta)
    }

    /// The package of a published version, checked against its recorded hash.
    /// The package of a version, shared: packages are content-addressed and never change, so
    /// the last few loaded are kept (decoded, checked and compiled) for the runs that follow.
    pub fn package_shared(&self, meta: &VersionMeta) -> Result<Arc<AppletPackage>, Error> {
        if let Some(p) = self.loaded.lock().get(&meta.hash) {
            return Ok(Arc::clone(p));
        }
        let pkg = Arc::new(self.package(meta)?);
        let mut loaded = self.loaded.lock();
        if loaded.len() >= LOADED_PACKAGES {
            loaded.clear();
        }
        loaded.insert(meta.hash.clone(), Arc::clone(&pkg));
        Ok(pkg)
    }

    pub fn package(&self, meta: &VersionMeta) -> Result<AppletPackage, Error> {
        let b = self
            .packages
            .get(meta.hash.as_bytes())?
            .ok_or_else(|| Error::Store(format!("package of {} (sha256:{}) is missing", meta.id(), meta.hash)))?;
        let stored: StoredPackage = parse("package", &b)?;
        let mut files = BTreeMap::new();
        for (p, data) in stored.files {
            files.insert(p, B64.decode(data).map_err(|e| Error::Store(format!("package of {} is damaged: {e}", meta.id())))?);
        }
        let pkg = AppletPackage::from_files(files)?;
        if pkg.hash != meta.hash {
            return Err(Error::Store(format!("package of {} does not match its hash: the store was altered", meta.id())));
        }
        Ok(pkg)
    }

    fn set_current(&self, name: &str, f: impl Fn(&mut AppletMeta) -> Result<(), Error>) -> Result<AppletMeta, Error> {
        let out = self.store.transaction(|tx| {
            let b =
                tx.get(&self.applets, name.as_bytes())?.ok_or_else(|| Error::NotFound(format!("no applet `{name}` in the registry")))?;
            let mut a: AppletMeta = parse("applet", &b)?;
            f(&mut a)?;
            a.updated_at = Utc::now();
            tx.insert(&self.applets, name.as_bytes(), json(&a))?;
            Ok(a)
        })?;
        self.changed();
        Ok(out)
    }

    /// Makes `version` the current one.
    pub fn promote(&self, name: &str, version: &semver::Version, actor: &str) -> Result<AppletMeta, Error> {
        let v = self.version(name, &version.to_string())?;
        if v.yanked {
            return Err(Error::Usage(format!("{} is yanked and cannot become current", v.id())));
        }
        let before = self.applet(name)?.current;
        if before == v.version {
            return self.applet(name);
        }
        let a = self.set_current(name, |a| {
            if a.current != v.version {
                let prev = std::mem::replace(&mut a.current, v.version.clone());
                a.history.push(prev);
            }
            Ok(())
        })?;
        self.audit("registry.promote", actor, &v.id(), serde_json::json!({ "from": before, "to": v.version }))?;
        Ok(a)
    }

    /// Goes back to the previous current version (skipping yanked ones). Returns (from, to).
    pub fn rollback(&self, name: &str, actor: &str) -> Result<(String, String), Error> {
        let versions = self.versions(name)?;
        let yanked = |ver: &str| versions.iter().any(|v| v.version == ver && v.yanked);
        let before = self.applet(name)?.current;
        let a = self.set_current(name, |a| {
            let mut history = a.history.clone();
            while let Some(prev) = history.pop() {
                if prev != a.current && !yanked(&prev) {
                    a.current = prev;
                    a.history = history;
                    return Ok(());
                }
            }
            Err(Error::NotFound(format!("{name} has no earlier version to roll back to")))
        })?;
        self.audit("registry.rollback", actor, &format!("{name}@{}", a.current), serde_json::json!({ "from": before, "to": a.current }))?;
        Ok((before, a.current))
    }

    /// Marks a version yanked (or, with `undo`, not yanked).
    pub fn yank(&self, name: &str, version: &semver::Version, undo: bool, actor: &str) -> Result<VersionMeta, Error> {
        let key = version_key(name, &version.to_string());
        let out = self.store.transaction(|tx| {
            let b = tx.get(&self.versions, &key)?.ok_or_else(|| Error::NotFound(format!("{name} has no version {version}")))?;
            let mut v: VersionMeta = parse("version", &b)?;
            v.yanked = !undo;
            tx.insert(&self.versions, key.as_slice(), json(&v))?;
            Ok(v)
        })?;
        self.changed();
        self.audit(if undo { "registry.unyank" } else { "registry.yank" }, actor, &out.id(), serde_json::json!({}))?;
        Ok(out)
    }

    /// Every applet with its current version, by name.
    pub fn list(&self) -> Result<Vec<(AppletMeta, VersionMeta)>, Error> {
        let mut out = Vec::new();
        for item in self.applets.iter() {
            let (_, b) = item?;
            let a: AppletMeta = parse("applet", &b)?;
            let v = self.version(&a.name, &a.current)?;
            out.push((a, v));
        }
        Ok(out)
    }

    /// The best `limit` matches among current versions (see `search`).
    pub fn search(&self, query: &str, tag: Option<&str>, permission: Option<&str>, limit: usize) -> Result<Vec<SearchHit>, Error> {
        let index = self.index()?;
        Ok(index.search(query, tag, permission, limit))
    }

    /// The search index, built on first use after a change.
    pub fn index(&self) -> Result<Arc<search::Index>, Error> {
        if let Some(i) = self.index.read().as_ref() {
            return Ok(Arc::clone(i));
        }
        let featured = self.featured_all()?;
        let index = Arc::new(search::Index::build(self.list()?.into_iter().map(|(_, v)| v), &featured));
        *self.index.write() = Some(Arc::clone(&index));
        Ok(index)
    }

    fn featured_all(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        let mut out = BTreeMap::new();
        for item in self.features.iter() {
            let (k, v) = item?;
            out.insert(String::from_utf8_lossy(&k).into_owned(), parse::<Vec<String>>("collection", &v)?);
        }
        Ok(out)
    }

    /// Featured collections: collection -> applet names.
    pub fn featured(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        self.featured_all()
    }

    /// Adds (or with `remove`, removes) an applet to a featured collection.
    pub fn feature(&self, collection: &str, name: &str, remove: bool, actor: &str) -> Result<Vec<String>, Error> {
        validate_name(collection).map_err(|m| Error::Usage(format!("collection name {m}")))?;
        if !remove {
            self.applet(name)?;
            if let Some(names) = self.featured_all()?.remove(collection).filter(|names| names.iter().any(|n| n == name)) {
                return Ok(names);
            }
        }
        let out = self.store.transaction(|tx| {
            let mut names: Vec<String> = match tx.get(&self.features, collection.as_bytes())? {
                Some(b) => parse("collection", &b)?,
                None => Vec::new(),
            };
            if remove {
                if !names.iter().any(|n| n == name) {
                    return Err(Error::NotFound(format!("`{name}` is not in collection `{collection}`")));
                }
                names.retain(|n| n != name);
            } else if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            if names.is_empty() {
                tx.remove(&self.features, collection.as_bytes())?;
            } else {
                tx.insert(&self.features, collection.as_bytes(), json(&names))?;
            }
            Ok(names)
        })?;
        self.changed();
        self.audit(
            if remove { "registry.feature.rm" } else { "registry.feature.add" },
            actor,
            name,
            serde_json::json!({ "collection": collection }),
        )?;
        Ok(out)
    }

    /// A single-file bundle of one version.
    pub fn export(&self, r: &Reference) -> Result<(VersionMeta, Vec<u8>), Error> {
        let meta = self.resolve(r, true)?;
        let pkg = self.package(&meta)?;
        Ok((bundle::encode(&meta, &pkg), meta)).map(|(b, m)| (m, b))
    }

    /// Publishes a bundle made by `export` (its hash is verified first). Everything that
    /// describes the applet is rebuilt from the verified files; only who published it, when and
    /// why are taken from the bundle. Its permissions are checked against `modules`, the host
    /// modules of this build.
    ///
    /// A signed bundle is taken when its signature verifies and the trust list has its key; its
    /// publisher is then the trust list's name for the key, whatever the bundle claims. An
    /// unsigned bundle is taken only with `allow_unsigned`, and marked `unsigned`.
    pub fn import(
        &self,
        bytes: &[u8],
        actor: &str,
        allow_downgrade: bool,
        allow_unsigned: bool,
        modules: &dyn crate::applet::PermissionCheck,
    ) -> Result<Published, Error> {
        self.import_tested(bytes, actor, allow_downgrade, allow_unsigned, modules, None)
    }

    /// Imports, with how the applet's own tests went (`opslet import` ran them).
    pub fn import_tested(
        &self,
        bytes: &[u8],
        actor: &str,
        allow_downgrade: bool,
        allow_unsigned: bool,
        modules: &dyn crate::applet::PermissionCheck,
        tests: Option<model::TestSummary>,
    ) -> Result<Published, Error> {
        let (claimed, pkg) = bundle::decode(bytes)?;
        let refuse = |m: String| Err(Error::Applet(vec![Diagnostic::new(format!("bundle of {}", claimed.id()), m)]));
        let mut meta = VersionMeta::from_package(&pkg, &claimed.publisher, &claimed.message);
        match &claimed.signature {
            Some(sig) => {
                if !signing::verify(sig, &meta.name, &meta.version, &meta.hash, &meta.message) {
                    return refuse("its signature does not verify: its content or message was changed after it was signed".into());
                }
                let Some(name) = self.trusted_name(&sig.key)? else {
                    return refuse(format!(
                        "it is signed by {}, a key this registry does not trust; if you know whose it is: opslet trust add NAME {}",
                        sig.key, sig.key
                    ));
                };
                meta.publisher = name.clone();
                meta.signed_by = Some(name);
                meta.signature = Some(sig.clone());
            }
            None if allow_unsigned => meta.unsigned = true,
            None => {
                return refuse("it is not signed, so nothing shows who published it; import it with --allow-unsigned to take it anyway (it is marked unsigned)".into());
            }
        }
        pkg.check_modules(modules)?;
        meta.published_at = claimed.published_at;
        meta.imported_by = Some(actor.to_string());
        meta.tests = tests;
        self.publish_meta(&pkg, meta, allow_downgrade, "registry.import", actor)
    }

    /// Puts every change made so far on disk.
    pub fn flush(&self) -> Result<(), Error> {
        self.store.flush()
    }
}
