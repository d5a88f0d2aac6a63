//! Network devices' running configurations, kept with versions: each backup that differs from
//! the device's latest one becomes version N+1 (an unchanged configuration is not stored again).
//! Versions are never rewritten; `diff` compares any two.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::Store;

/// One stored configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Backup {
    pub device: String,
    pub version: u32,
    pub taken_at: DateTime<Utc>,
    pub sha256: String,
    pub bytes: usize,
    /// The run that took it, and who ran it.
    pub run: Option<String>,
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

#[derive(Clone)]
pub struct DeviceConfigs {
    tree: crate::store::Tree,
}

fn key(device: &str, version: u32) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(device: &str) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k
}

impl DeviceConfigs {
    pub fn open(store: &Store) -> Result<DeviceConfigs, Error> {
        Ok(DeviceConfigs { tree: store.tree(crate::store::keys::CMDB_DEVICE_CONFIGS) })
    }

    fn decode(v: &[u8]) -> Result<Backup, Error> {
        serde_json::from_slice(v).map_err(|e| Error::Store(format!("a stored device configuration is unreadable: {e}")))
    }

    /// The device's newest backup.
    pub fn latest(&self, device: &str) -> Result<Option<Backup>, Error> {
        match self.tree.scan_prefix(prefix(device)).next_back() {
            Some(kv) => Ok(Some(Self::decode(&kv?.1)?)),
            None => Ok(None),
        }
    }

    pub fn get(&self, device: &str, version: u32) -> Result<Option<Backup>, Error> {
        self.tree.get(key(device, version))?.map(|v| Self::decode(&v)).transpose()
    }

    /// Every version of the device's configuration, oldest first, without the texts.
    pub fn versions(&self, device: &str) -> Result<Vec<Backup>, Error> {
        self.tree
            .scan_prefix(prefix(device))
            .map(|kv| {
                let mut b = Self::decode(&kv?.1)?;
                b.text.clear();
                Ok(b)
            })
            .collect()
    }

    /// Stores `text` as the device's next version unless it equals the latest one; returns the
    /// version that holds it and whether it is new.
    pub fn put(&self, device: &str, text: &str, run: Option<&str>, user: &str) -> Result<(Backup, bool), Error> {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        loop {
            let latest = self.latest(device)?;
            if let Some(l) = &latest
                && l.sha256 == sha256
            {
                return Ok((Backup { text: String::new(), ..l.clone() }, false));
            }
            let version = latest.map_or(1, |l| l.version + 1);
            let b = Backup {
                device: device.to_string(),
                version,
                taken_at: Utc::now(),
                sha256: sha256.clone(),
                bytes: text.len(),
                run: run.map(str::to_string),
                user: user.to_string(),
                text: text.to_string(),
            };
            let v = serde_json::to_vec(&b).map_err(|e| Error::Store(e.to_string()))?;
            // Two backups of one device at once: the loser tries again with the next number.
            if self.tree.compare_and_swap(key(device, version), None::<&[u8]>, Some(v))? {
                self.tree.flush()?;
                return Ok((Backup { text: String::new(), ..b }, true));
            }
        }
    }
}

/// A unified diff of two configurations (empty when they are equal).
pub fn unified_diff(a: &str, b: &str, a_label: &str, b_label: &str) -> String {
    similar::TextDiff::from_lines(a, b).unified_diff().context_radius(3).header(a_label, b_label).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_only_when_the_text_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), std::time::Duration::from_secs(5)).unwrap();
        let c = DeviceConfigs::open(&store).unwrap();
        let (b1, new1) = c.put("sw1", "hostname sw1\n", Some("r1"), "alice").unwrap();
        assert!(new1 && b1.version == 1);
        let (b1b, new) = c.put("sw1", "hostname sw1\n", Some("r2"), "alice").unwrap();
        assert!(!new && b1b.version == 1);
        let (b2, _) = c.put("sw1", "hostname sw1\nvlan 42\n", None, "bob").unwrap();
        assert_eq!(b2.version, 2);
        c.put("sw10", "other\n", None, "bob").unwrap();
        assert_eq!(c.versions("sw1").unwrap().iter().map(|b| b.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(c.latest("sw1").unwrap().unwrap().text, "hostname sw1\nvlan 42\n");
        let d = unified_diff(&c.get("sw1", 1).unwrap().unwrap().text, &c.get("sw1", 2).unwrap().unwrap().text, "sw1 v1", "sw1 v2");
        assert!(d.contains("--- sw1 v1") && d.contains("+++ sw1 v2") && d.contains("+vlan 42"), "{d}");
        assert_eq!(unified_diff("a\n", "a\n", "x", "y"), "");
    }
}
