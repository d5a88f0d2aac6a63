//! Secrets: named values encrypted at rest (XChaCha20-Poly1305), for host modules to use by
//! name. Applets never read them; every known secret value is redacted from all applet output.
//!
//! The key is `OPSLET_SECRET_KEY` (64 hex digits) when set, else the file `secret.key` in the
//! data dir, created on first use with mode 0600.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::Store;

pub const KEY_FILE: &str = "secret.key";
pub const KEY_ENV: &str = "OPSLET_SECRET_KEY";
/// Largest secret value.
pub const MAX_VALUE: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    ciphertext: String,
    updated_at: chrono::DateTime<chrono::Utc>,
    updated_by: String,
}

/// What `list` shows: never the value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub updated_by: String,
}

/// The secret store of a data dir.
#[derive(Clone)]
pub struct Secrets {
    store: Store,
    tree: crate::store::Tree,
    cipher: XChaCha20Poly1305,
}

fn load_key(data_dir: &Path) -> Result<[u8; 32], Error> {
    let parse = |s: &str, from: &str| -> Result<[u8; 32], Error> {
        let bytes = hex::decode(s.trim()).map_err(|_| Error::Config(format!("{from}: the secret key must be 64 hex digits")))?;
        bytes.try_into().map_err(|_| Error::Config(format!("{from}: the secret key must be 64 hex digits (32 bytes)")))
    };
    if let Ok(k) = std::env::var(KEY_ENV) {
        return parse(&k, KEY_ENV);
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => parse(&s, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| Error::Internal(format!("no randomness for the secret key: {e}")))?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::Store(format!("creating {}: {e}", path.display())))?;
            f.write_all(hex::encode(key).as_bytes()).map_err(|e| Error::Store(format!("writing {}: {e}", path.display())))?;
            f.sync_all().map_err(|e| Error::Store(format!("writing {}: {e}", path.display())))?;
            Ok(key)
        }
        Err(e) => Err(Error::Store(format!("reading {}: {e}", path.display()))),
    }
}

impl Secrets {
    /// Opens the secret store (creating the key on first use).
    pub fn open(store: Store) -> Result<Secrets, Error> {
        let key = load_key(store.dir())?;
        Ok(Secrets { tree: store.tree(crate::store::keys::SECRETS), cipher: XChaCha20Poly1305::new(&Key::from(key)), store })
    }

    pub fn set(&self, name: &str, value: &[u8], actor: &str) -> Result<(), Error> {
        crate::util::validate_name(name).map_err(|m| Error::Usage(format!("secret name {m}")))?;
        if value.is_empty() || value.len() > MAX_VALUE {
            return Err(Error::Usage(format!("secret `{name}`: the value must be 1 to {MAX_VALUE} bytes")));
        }
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| Error::Internal(format!("no randomness for a nonce: {e}")))?;
        // The name is bound in as associated data, so a value cannot be moved to another name.
        let ct = self
            .cipher
            .encrypt(&XNonce::from(nonce), chacha20poly1305::aead::Payload { msg: value, aad: name.as_bytes() })
            .map_err(|_| Error::Internal(format!("encrypting secret `{name}`")))?;
        let sealed =
            Sealed { nonce: hex::encode(nonce), ciphertext: hex::encode(ct), updated_at: chrono::Utc::now(), updated_by: actor.into() };
        let existed = self.tree.insert(name.as_bytes(), serde_json::to_vec(&sealed).expect("sealed secrets serialize"))?.is_some();
        let kind = if existed { "secret.update" } else { "secret.set" };
        self.store.audit().record_change(kind, actor, "cli", None, serde_json::json!({ "secret": name }))?;
        Ok(())
    }

    /// The value of a secret (for host modules; never handed to applets).
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(b) = self.tree.get(name.as_bytes())? else { return Ok(None) };
        let sealed: Sealed = serde_json::from_slice(&b).map_err(|e| Error::Store(format!("secret `{name}` is unreadable: {e}")))?;
        let nonce = hex::decode(&sealed.nonce).map_err(|_| Error::Store(format!("secret `{name}` is damaged")))?;
        let ct = hex::decode(&sealed.ciphertext).map_err(|_| Error::Store(format!("secret `{name}` is damaged")))?;
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| Error::Store(format!("secret `{name}` is damaged")))?;
        let plain = self.cipher.decrypt(&XNonce::from(nonce), chacha20poly1305::aead::Payload { msg: &ct, aad: name.as_bytes() }).map_err(
            |_| Error::Store(format!("secret `{name}` cannot be decrypted: wrong key ({KEY_ENV} or {KEY_FILE}) or altered data")),
        )?;
        Ok(Some(plain))
    }

    pub fn remove(&self, name: &str, actor: &str) -> Result<(), Error> {
        if self.tree.remove(name.as_bytes())?.is_none() {
            return Err(Error::NotFound(format!("no secret `{name}`")));
        }
        self.store.audit().record_change("secret.rm", actor, "cli", None, serde_json::json!({ "secret": name }))
    }

    pub fn list(&self) -> Result<Vec<SecretInfo>, Error> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let sealed: Sealed = serde_json::from_slice(&v).map_err(|e| Error::Store(format!("a secret record is unreadable: {e}")))?;
            out.push(SecretInfo {
                name: String::from_utf8_lossy(&k).into_owned(),
                updated_at: sealed.updated_at,
                updated_by: sealed.updated_by,
            });
        }
        Ok(out)
    }

    /// A secret's value as text, for a login or a template: an error names the secret and
    /// `owner`, the config entry or item that names it, when it is not set or not text.
    pub fn text(&self, name: &str, owner: &str) -> Result<String, Error> {
        let v = self.get(name)?.ok_or_else(|| Error::Config(format!("secret `{name}` (named in {owner}) is not set")))?;
        String::from_utf8(v).map_err(|_| Error::Config(format!("secret `{name}` is not text")))
    }

    /// Every secret value of a store, for redaction, without creating a key when there are no
    /// secrets yet.
    pub fn values_of(store: &Store) -> Result<Vec<String>, Error> {
        Ok(Secrets::named_values_of(store)?.into_iter().map(|(_, v)| v).collect())
    }

    /// Every secret as (name, value text), without creating a key when there are none yet.
    pub fn named_values_of(store: &Store) -> Result<Vec<(String, String)>, Error> {
        if store.tree(crate::store::keys::SECRETS).is_empty()? {
            return Ok(Vec::new());
        }
        Secrets::open(store.clone())?.named_values()
    }

    /// Every secret value as text, for redaction. Values that cannot be decrypted are skipped.
    pub fn values(&self) -> Result<Vec<String>, Error> {
        Ok(self.named_values()?.into_iter().map(|(_, v)| v).collect())
    }

    /// Every secret as (name, value text). Values that cannot be decrypted are skipped.
    pub fn named_values(&self) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        for info in self.list()? {
            if let Ok(Some(v)) = self.get(&info.name) {
                out.push((info.name, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        Ok(out)
    }
}
