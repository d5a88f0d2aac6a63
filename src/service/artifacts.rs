//! Artifacts: the objects of the `[s3.NAME]` stores as operators see them, for `opslet artifact`
//! and the console. Files go up and down as streams (a part in memory at a time), each with its
//! SHA-256: recorded at upload, checked at download. Every change is in the audit log
//! (`artifact.put`, `artifact.rm`), as is every download (`artifact.get`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::error::Error;
use crate::modules::s3::client::{Client, Deleted, Object, S3Error};
use crate::modules::s3::settings::S3Conn;
use crate::modules::s3::{self, scope};
use crate::store::Store;

/// Where an artifact is: `[CONN:]BUCKET[/KEY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub connection: Option<String>,
    pub bucket: String,
    pub key: String,
}

impl Location {
    /// Parses `[CONN:]BUCKET/KEY` (`key_required`) or `[CONN:]BUCKET[/PREFIX]`.
    pub fn parse(text: &str, key_required: bool) -> Result<Location, Error> {
        let bad = |m: String| Error::Usage(format!("`{text}`: {m} (give [CONNECTION:]BUCKET/KEY)"));
        let (connection, rest) = match text.split_once(':') {
            Some((c, r)) if !c.contains('/') => (Some(c.to_string()), r),
            _ => (None, text),
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        scope::check_bucket(bucket).map_err(bad)?;
        if key_required || !key.is_empty() {
            scope::check_key(key).map_err(bad)?;
        }
        if key_required && key.ends_with('/') {
            return Err(bad("a key, not a folder".into()));
        }
        Ok(Location { connection, bucket: bucket.to_string(), key: key.to_string() })
    }
}

/// A connection as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub name: String,
    pub endpoint: String,
    pub default: bool,
}

/// A listing, with what the bucket keeps.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub connection: String,
    pub bucket: String,
    pub prefix: String,
    /// "Enabled", "Suspended", or None (the bucket never kept versions).
    pub versioning: Option<String>,
    pub objects: Vec<Object>,
    pub truncated: bool,
}

/// The artifact stores of opslet.toml, with keys from the data store's secrets.
pub struct Artifacts {
    conns: BTreeMap<String, S3Conn>,
    store: Store,
}

fn store_error(what: &str, e: S3Error) -> Error {
    match &e {
        S3Error::Store { status: 404, .. } => Error::NotFound(format!("{what}: {e}")),
        S3Error::Store { status: 403, .. } => Error::Denied(format!("{what}: the store refused: {e}")),
        _ => Error::Internal(format!("{what}: {e}")),
    }
}

impl Artifacts {
    pub fn new(config: &Config, store: Store) -> Result<Artifacts, Error> {
        Ok(Artifacts { conns: s3::settings::from_config(config)?, store })
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.conns.iter().map(|(n, c)| Connection { name: n.clone(), endpoint: c.endpoint.to_string(), default: c.default }).collect()
    }

    /// The connection `asked` (or the default one) and its client.
    pub fn client(&self, asked: Option<&str>) -> Result<(String, Arc<Client>), Error> {
        let name = s3::default_connection(&self.conns, asked).map_err(Error::NotFound)?;
        let secrets = crate::secrets::Secrets::open(self.store.clone())?;
        let secret = |owner: &str, s: &str| secrets.text(s, owner).map_err(|e| e.to_string());
        let c = s3::client_for(&self.conns, &name, &secret).map_err(Error::Config)?;
        Ok((name, Arc::new(c)))
    }

    pub async fn list(&self, at: &Location, versions: bool, limit: usize) -> Result<Listing, Error> {
        let (conn, c) = self.client(at.connection.as_deref())?;
        let what = format!("{conn}:{}/{}", at.bucket, at.key);
        let versioning = c.versioning(&at.bucket).await.map_err(|e| store_error(&what, e))?;
        let l = if versions { c.list_versions(&at.bucket, &at.key, limit).await } else { c.list(&at.bucket, &at.key, None, limit).await }
            .map_err(|e| store_error(&what, e))?;
        Ok(Listing {
            connection: conn,
            bucket: at.bucket.clone(),
            prefix: at.key.clone(),
            versioning,
            objects: l.objects,
            truncated: l.truncated,
        })
    }

    /// Uploads the file at `path` as `at`: hashed first, then streamed in parts, its SHA-256
    /// recorded and checked before the upload completes.
    pub async fn put_file(
        &self,
        at: &Location,
        path: &Path,
        content_type: Option<String>,
        actor: &str,
        via: &str,
    ) -> Result<Object, Error> {
        let (conn, c) = self.client(at.connection.as_deref())?;
        let what = format!("{conn}:{}/{}", at.bucket, at.key);
        let read_err = |e: std::io::Error| Error::Usage(format!("{}: {e}", path.display()));
        let sha = {
            use sha2::Digest;
            let mut f = tokio::fs::File::open(path).await.map_err(read_err)?;
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).await.map_err(read_err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        };
        let mut f = tokio::fs::File::open(path).await.map_err(read_err)?;
        let mut up = c.upload(&at.bucket, &at.key, Some(sha), content_type);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    up.abort().await;
                    return Err(read_err(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = up.write(&buf[..n]).await {
                up.abort().await;
                return Err(store_error(&what, e));
            }
        }
        let o = up.finish().await.map_err(|e| store_error(&what, e))?;
        self.store.audit().record_change("artifact.put", actor, via, None, serde_json::json!({ "connection": conn, "object": o }))?;
        Ok(o)
    }

    /// Downloads `at` (a version of it) to `dest`: written beside it and renamed into place only
    /// once its SHA-256 matches the recorded one.
    pub async fn get_file(&self, at: &Location, version: Option<&str>, dest: &Path, actor: &str, via: &str) -> Result<Object, Error> {
        let (conn, c) = self.client(at.connection.as_deref())?;
        let what = format!("{conn}:{}/{}", at.bucket, at.key);
        let (o, mut r) = c.open(&at.bucket, &at.key, version).await.map_err(|e| store_error(&what, e))?;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".opslet-artifact-")
            .tempfile_in(dir)
            .map_err(|e| Error::Usage(format!("{}: {e}", dest.display())))?;
        let write_err = |e: std::io::Error| Error::Internal(format!("writing {}: {e}", dest.display()));
        let mut f = tokio::fs::File::from_std(tmp.reopen().map_err(write_err)?);
        while let Some(chunk) = r.chunk().await.map_err(|e| store_error(&what, e))? {
            f.write_all(&chunk).await.map_err(write_err)?;
        }
        f.flush().await.map_err(write_err)?;
        drop(f);
        let sha = r.sha256();
        if let Some(want) = &o.sha256
            && *want != sha
        {
            return Err(Error::Store(format!(
                "{what}: the bytes read hash to {sha}, not the {want} recorded at upload; nothing was written"
            )));
        }
        tmp.persist(dest).map_err(|e| write_err(e.error))?;
        let o = Object { sha256: Some(sha), size: r.read(), ..o };
        self.store.audit().record_change("artifact.get", actor, via, None, serde_json::json!({ "connection": conn, "object": o }))?;
        Ok(o)
    }

    pub async fn remove(&self, at: &Location, version: Option<&str>, actor: &str, via: &str) -> Result<Deleted, Error> {
        let (conn, c) = self.client(at.connection.as_deref())?;
        let what = format!("{conn}:{}/{}", at.bucket, at.key);
        if version.is_none() && c.head(&at.bucket, &at.key, None).await.map_err(|e| store_error(&what, e))?.is_none() {
            return Err(Error::NotFound(format!("{what}: there is no such artifact")));
        }
        let d = c.delete(&at.bucket, &at.key, version).await.map_err(|e| store_error(&what, e))?;
        self.store.audit().record_change("artifact.rm", actor, via, None, serde_json::json!({ "connection": conn, "deleted": d }))?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_their_mistakes() {
        let l = Location::parse("artifacts:releases/app/1.0/app.tgz", true).unwrap();
        assert_eq!((l.connection.as_deref(), l.bucket.as_str(), l.key.as_str()), (Some("artifacts"), "releases", "app/1.0/app.tgz"));
        let l = Location::parse("releases", false).unwrap();
        assert_eq!((l.connection, l.key.as_str()), (None, ""));
        assert!(Location::parse("releases", true).unwrap_err().to_string().contains("the key is empty"));
        assert!(Location::parse("releases/app/", true).unwrap_err().to_string().contains("not a folder"));
        assert!(Location::parse("releases/a/../b", true).unwrap_err().to_string().contains("`..` segment"));
        assert!(Location::parse("Rel_eases/x", true).unwrap_err().to_string().contains("not a bucket name"));
    }
}
