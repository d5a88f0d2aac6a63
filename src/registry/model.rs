//! What the registry stores about applets and their versions.

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::applet::{AppletPackage, ParamSpec};

/// One published version: immutable except for the `yanked` flag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionMeta {
    pub name: String,
    pub version: String,
    /// SHA-256 of the package content (see `AppletPackage::hash`).
    pub hash: String,
    pub publisher: String,
    pub published_at: DateTime<Utc>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub yanked: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub params: IndexMap<String, ParamSpec>,
    /// Module -> scope, as written in the manifest (TOML values rendered as JSON).
    #[serde(default)]
    pub permissions: IndexMap<String, serde_json::Value>,
    /// Where an imported version came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_by: Option<String>,
    /// The publisher's signature of name, version, content hash and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<super::signing::Signature>,
    /// Who signed it, by the name the trust list gives the key (or the key id when it is not
    /// in the list, for a version published here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// An import of an unsigned bundle, taken with `--allow-unsigned`: its publisher and
    /// message are what the bundle claims.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsigned: bool,
    /// How its own tests went when it was published (None: it has none, or they were not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestSummary>,
}

/// An applet's tests at publish time (`opslet publish` runs them; docs/testing.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestSummary {
    pub passed: usize,
    pub failed: usize,
    pub ran_at: DateTime<Utc>,
}

impl VersionMeta {
    pub fn from_package(pkg: &AppletPackage, publisher: &str, message: &str) -> VersionMeta {
        let m = &pkg.manifest;
        VersionMeta {
            name: m.name.clone(),
            version: m.version.to_string(),
            hash: pkg.hash.clone(),
            publisher: publisher.to_string(),
            published_at: Utc::now(),
            message: message.to_string(),
            yanked: false,
            description: m.description.clone(),
            tags: m.tags.clone(),
            params: m.params.clone(),
            permissions: m.permissions.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default())).collect(),
            imported_by: None,
            signature: None,
            signed_by: None,
            unsigned: false,
            tests: None,
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn semver(&self) -> semver::Version {
        semver::Version::parse(&self.version).unwrap_or_else(|_| semver::Version::new(0, 0, 0))
    }
}

/// Per applet: which version runs by default, and the versions that ran before it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppletMeta {
    pub name: String,
    pub current: String,
    /// Earlier `current` versions, most recent last; `rollback` pops from here.
    #[serde(default)]
    pub history: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How permissions changed from one version to the next.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PermissionChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Modules whose scope changed: (module, before, after).
    pub changed: Vec<(String, serde_json::Value, serde_json::Value)>,
}

impl PermissionChanges {
    pub fn between(before: &IndexMap<String, serde_json::Value>, after: &IndexMap<String, serde_json::Value>) -> PermissionChanges {
        let mut c = PermissionChanges::default();
        for (k, v) in after {
            match before.get(k) {
                None => c.added.push(k.clone()),
                Some(old) if old != v => c.changed.push((k.clone(), old.clone(), v.clone())),
                _ => {}
            }
        }
        c.removed = before.keys().filter(|k| !after.contains_key(*k)).cloned().collect();
        c
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}
