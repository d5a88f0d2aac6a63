//! `[s3.NAME]` of opslet.toml: one table per S3-compatible object store (MinIO, Ceph RGW,
//! SeaweedFS, AWS S3).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;

/// `[s3.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    endpoint: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default = "yes")]
    path_style: bool,
    access_key: Option<String>,
    access_key_secret: Option<String>,
    secret_key_secret: String,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_presign_max")]
    presign_max: String,
    #[serde(default = "default_max_get")]
    max_get: String,
    #[serde(default = "default_part_size")]
    part_size: String,
    #[serde(default)]
    default: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn yes() -> bool {
    true
}
fn default_timeout() -> String {
    "5m".into()
}
fn default_presign_max() -> String {
    "1h".into()
}
fn default_max_get() -> String {
    "16MiB".into()
}
fn default_part_size() -> String {
    "16MiB".into()
}

/// Who the store knows opslet as: the access key itself, or the secret that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessKey {
    Plain(String),
    Secret(String),
}

/// One object store, checked.
#[derive(Debug, Clone)]
pub struct S3Conn {
    /// Like "https://minio.example.com:9000" (no bucket in it).
    pub endpoint: url::Url,
    pub region: String,
    /// Buckets as a path of the endpoint (MinIO, Ceph RGW, SeaweedFS); false: as a host name
    /// (AWS's virtual-hosted style).
    pub path_style: bool,
    pub access_key: AccessKey,
    /// The secret holding the secret access key.
    pub secret_key_secret: String,
    pub ca_file: Option<PathBuf>,
    /// Per request, a whole object's transfer included.
    pub timeout: Duration,
    /// The longest a presigned URL may live (`s3.presign`'s `expires` cap).
    pub presign_max: Duration,
    /// The largest object `s3.get` returns as text.
    pub max_get: u64,
    /// Uploads larger than this go in parts of this size (5 MiB..5 GiB).
    pub part_size: u64,
    pub default: bool,
}

/// SigV4 presigned URLs live at most 7 days.
pub const PRESIGN_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);
const MIN_PART: u64 = 5 * 1024 * 1024;
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

/// `[s3.NAME]` tables, checked; a mistake is named `s3.NAME.KEY`.
pub fn from_config(config: &Config) -> Result<BTreeMap<String, S3Conn>, Error> {
    let raw: BTreeMap<String, Raw> = config.section("s3")?;
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        out.insert(name.clone(), check(&name, r).map_err(|m| config.invalid(m))?);
    }
    crate::kit::http::one_default("s3", out.values().map(|c| c.default)).map_err(|m| config.invalid(m))?;
    Ok(out)
}

fn check(name: &str, r: Raw) -> Result<S3Conn, String> {
    let at = format!("s3.{name}");
    crate::util::validate_name(name).map_err(|m| format!("[{at}]: {m}"))?;
    crate::kit::http::check_connection(&at, &r.endpoint, &r.timeout).map_err(|m| m.replace(".url:", ".endpoint:"))?;
    let endpoint = url::Url::parse(&r.endpoint).map_err(|e| format!("{at}.endpoint: `{}`: {e}", r.endpoint))?;
    if endpoint.host_str().is_none() {
        return Err(format!("{at}.endpoint: `{}` has no host", r.endpoint));
    }
    if endpoint.path() != "/" || endpoint.query().is_some() {
        return Err(format!("{at}.endpoint: `{}`: give the store's address only (the bucket is named per call)", r.endpoint));
    }
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(format!("{at}.endpoint: no credentials in the URL (use access_key and secret_key_secret)"));
    }
    if r.region.is_empty() || !r.region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("{at}.region: `{}` is not a region name", r.region));
    }
    let access_key = match (r.access_key, r.access_key_secret) {
        (Some(k), None) if !k.is_empty() => AccessKey::Plain(k),
        (None, Some(s)) => AccessKey::Secret(s),
        _ => return Err(format!("{at}: give access_key (the key id) or access_key_secret (a secret holding it), one of them")),
    };
    let duration = |key: &str, v: &str| crate::util::parse_duration(v).map_err(|m| format!("{at}.{key}: {m}"));
    let size = |key: &str, v: &str| crate::util::parse_size(v).map_err(|m| format!("{at}.{key}: {m}"));
    let presign_max = duration("presign_max", &r.presign_max)?;
    if presign_max.is_zero() || presign_max > PRESIGN_LIMIT {
        return Err(format!("{at}.presign_max: must be more than 0 and at most 7 days (the longest a SigV4 URL lives)"));
    }
    let part_size = size("part_size", &r.part_size)?;
    if !(MIN_PART..=MAX_PART).contains(&part_size) {
        return Err(format!("{at}.part_size: must be between 5MiB and 5GiB (S3's part limits)"));
    }
    Ok(S3Conn {
        endpoint,
        region: r.region,
        path_style: r.path_style,
        access_key,
        secret_key_secret: r.secret_key_secret,
        ca_file: r.ca_file,
        timeout: duration("timeout", &r.timeout)?,
        presign_max,
        max_get: size("max_get", &r.max_get)?,
        part_size,
        default: r.default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<S3Conn, String> {
        let text = format!("endpoint = \"http://127.0.0.1:9000\"\nsecret_key_secret = \"s3-key\"\n{extra}");
        check("store", toml::from_str(&text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn a_connection_names_its_mistakes() {
        let c = raw("access_key = \"AKIA\"").unwrap();
        assert_eq!(c.access_key, AccessKey::Plain("AKIA".into()));
        assert_eq!(c.part_size, 16 * 1024 * 1024);
        assert!(raw("").unwrap_err().contains("give access_key"));
        assert!(raw("access_key = \"a\"\naccess_key_secret = \"b\"").unwrap_err().contains("one of them"));
        assert!(raw("access_key = \"a\"\npart_size = \"1MiB\"").unwrap_err().contains("s3.store.part_size"));
        assert!(raw("access_key = \"a\"\npresign_max = \"8d\"").unwrap_err().contains("s3.store.presign_max"));
        assert!(raw("access_key = \"a\"\nregion = \"us east\"").unwrap_err().contains("s3.store.region"));
        let bucket_in_url =
            check("store", toml::from_str("endpoint = \"http://h:9000/bucket\"\naccess_key = \"a\"\nsecret_key_secret = \"s\"").unwrap());
        assert!(bucket_in_url.unwrap_err().contains("address only"));
        let creds_in_url =
            check("store", toml::from_str("endpoint = \"http://u:p@h:9000\"\naccess_key = \"a\"\nsecret_key_secret = \"s\"").unwrap());
        assert!(creds_in_url.unwrap_err().contains("no credentials"));
    }
}
