//! Publisher signatures (ed25519) on published versions, so a bundle carries who vouched for
//! it: the signature covers the applet's name, version and content hash, and the publish
//! message, under the label `opslet-version-v1`. A data dir's trust list (`opslet trust`) names
//! the keys whose bundles `opslet import` takes; an import shows the signer by that name, never
//! by what the bundle claims.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A version's signature: the signing key (`ed25519:HEX`) and the signature (hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signature {
    pub key: String,
    pub sig: String,
}

/// What is signed.
fn message(name: &str, version: &str, hash: &str, publish_message: &str) -> Vec<u8> {
    format!("opslet-version-v1\0{name}\0{version}\0{hash}\0{publish_message}").into_bytes()
}

/// A key's id as shown and trusted: `ed25519:` and the public key in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex::encode(key.to_bytes()))
}

/// Parses a key id (`ed25519:HEX`).
pub fn parse_key_id(id: &str) -> Result<VerifyingKey, String> {
    let hex_part = id.trim().strip_prefix("ed25519:").ok_or_else(|| format!("`{id}` is not a key id like ed25519:<64 hex digits>"))?;
    let bytes: [u8; 32] = hex::decode(hex_part)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{id}` is not a key id like ed25519:<64 hex digits>"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("`{id}` is not a valid ed25519 public key: {e}"))?;
    if key.is_weak() {
        return Err(format!("`{id}` is a weak ed25519 key (of small order): it cannot vouch for anything"));
    }
    Ok(key)
}

/// Signs a version.
pub fn sign(key: &SigningKey, name: &str, version: &str, hash: &str, publish_message: &str) -> Signature {
    let sig = key.sign(&message(name, version, hash, publish_message));
    Signature { key: key_id(&key.verifying_key()), sig: hex::encode(sig.to_bytes()) }
}

/// Whether `sig` is a good signature of the version by the key it names.
pub fn verify(sig: &Signature, name: &str, version: &str, hash: &str, publish_message: &str) -> bool {
    let Ok(key) = parse_key_id(&sig.key) else { return false };
    let Some(bytes) = hex::decode(&sig.sig).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()) else { return false };
    key.verify_strict(&message(name, version, hash, publish_message), &ed25519_dalek::Signature::from_bytes(&bytes)).is_ok()
}

/// Reads a signing key file (64 hex digits: the secret key).
pub fn load_key(path: &Path) -> Result<SigningKey, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("signing key {}: {e}", path.display())))?;
    let bytes = crate::util::parse_key32(&text)
        .ok_or_else(|| Error::Usage(format!("signing key {}: not a key written by `opslet key new`", path.display())))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Makes a new signing key in `path` (mode 0600; an existing file is never replaced).
pub fn new_key(path: &Path) -> Result<SigningKey, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Usage(format!("creating {}: {e}", dir.display())))?;
    }
    let bytes = crate::util::create_key32(path).map_err(|e| {
        let note = if e.kind() == std::io::ErrorKind::AlreadyExists { " (a key is never overwritten)" } else { "" };
        Error::Usage(format!("{}: {e}{note}", path.display()))
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_name_version_content_and_message() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let s = sign(&key, "disk", "1.0.0", "abc", "reviewed");
        assert!(verify(&s, "disk", "1.0.0", "abc", "reviewed"));
        for (n, v, h, m) in [
            ("disk2", "1.0.0", "abc", "reviewed"),
            ("disk", "1.0.1", "abc", "reviewed"),
            ("disk", "1.0.0", "abd", "reviewed"),
            ("disk", "1.0.0", "abc", "approved"),
        ] {
            assert!(!verify(&s, n, v, h, m), "{n} {v} {h} {m}");
        }
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!verify(&Signature { key: key_id(&other.verifying_key()), ..s.clone() }, "disk", "1.0.0", "abc", "reviewed"));
        assert!(!verify(&Signature { sig: "00".into(), ..s }, "disk", "1.0.0", "abc", "reviewed"));
    }
}
