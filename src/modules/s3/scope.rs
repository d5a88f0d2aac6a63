//! The `s3` permission: which objects an applet may touch, and how.
//!
//! ```toml
//! [permissions]
//! s3 = [
//!   { bucket = "releases", prefix = "agent/", actions = ["read", "presign"] },
//!   { connection = "logs", bucket = "bundles", prefix = "fleet/", actions = ["write"] },
//! ]
//! ```
//!
//! One table or a list of them. Each grants `actions` (`read`: list, head, get and stream to
//! hosts; `write`: put, copy into, upload from hosts; `delete`; `presign`: URLs, which also need
//! `read` for GET and `write` for PUT) on the keys of `bucket` (`"*"`: any bucket) that start
//! with `prefix` (none: every key), through `connection` (none: any `[s3.NAME]`). A call is
//! checked before anything is sent; a key with `.` or `..` segments, an empty segment or a
//! control character is refused outright, because some stores resolve such keys to paths and
//! they would leave the granted prefix.

pub const ACTIONS: &[&str] = &["read", "write", "delete", "presign"];

/// One granted table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub connection: Option<String>,
    pub bucket: String,
    pub prefix: String,
    pub actions: Vec<String>,
}

/// The parsed permission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub rules: Vec<Rule>,
}

impl Scope {
    pub fn parse(v: &toml::Value) -> Result<Scope, String> {
        let tables: Vec<&toml::map::Map<String, toml::Value>> = match v {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_table().ok_or("expected tables like { bucket = \"releases\", prefix = \"agent/\", actions = [\"read\"] }"))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err("expected { bucket = \"releases\", prefix = \"agent/\", actions = [\"read\"] } or a list of such tables".into());
            }
        };
        let mut rules = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let at = if tables.len() > 1 { format!("[{}] ", i + 1) } else { String::new() };
            const KEYS: &[&str] = &["connection", "bucket", "prefix", "actions"];
            if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(format!("{at}unknown key `{k}` (known: {})", KEYS.join(", ")));
            }
            let text = |key: &str| match t.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("{at}`{key}` must be a string")),
            };
            let bucket = text("bucket")?.ok_or_else(|| format!("{at}`bucket` is required (a bucket name, or \"*\" for any)"))?;
            if bucket != "*" {
                check_bucket(&bucket).map_err(|m| format!("{at}bucket: {m}"))?;
            }
            let prefix = text("prefix")?.unwrap_or_default();
            if !prefix.is_empty() {
                check_key_text(&prefix).map_err(|m| format!("{at}prefix: {m}"))?;
            }
            let connection = text("connection")?;
            let actions = crate::kit::string_list(t, "actions").map_err(|m| format!("{at}{m}"))?.unwrap_or_default();
            if actions.is_empty() {
                return Err(format!("{at}`actions` is required: some of {}", ACTIONS.join(", ")));
            }
            if let Some(a) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
                return Err(format!("{at}actions: unknown action `{a}` (known: {})", ACTIONS.join(", ")));
            }
            rules.push(Rule { connection, bucket, prefix, actions });
        }
        Ok(Scope { rules })
    }

    /// Whether `action` is granted on `key` of `bucket` through `conn`. A `key` ending in the
    /// middle of a granted prefix (a listing's prefix) is not covered by it.
    pub fn allows(&self, conn: &str, bucket: &str, key: &str, action: &str) -> bool {
        self.rules.iter().any(|r| {
            r.actions.iter().any(|a| a == action)
                && r.connection.as_deref().is_none_or(|c| c == conn)
                && (r.bucket == "*" || r.bucket == bucket)
                && key.starts_with(&r.prefix)
        })
    }

    /// The grants, for a refusal: `read on releases/agent/* (any connection)`.
    pub fn describe(&self) -> String {
        self.rules
            .iter()
            .map(|r| {
                let on = match &r.connection {
                    Some(c) => format!(" via {c}"),
                    None => String::new(),
                };
                format!("{} on {}/{}*{on}", r.actions.join("+"), r.bucket, r.prefix)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// S3's bucket naming rules (3..63 of lowercase letters, digits, `.` and `-`).
pub fn check_bucket(b: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..");
    if ok { Ok(()) } else { Err(format!("`{b}` is not a bucket name (3 to 63 lowercase letters, digits, `.` and `-`)")) }
}

/// An object key opslet will send: 1..1024 bytes, no control characters, no leading `/`, and no
/// empty, `.` or `..` segment (a store that maps keys to paths would resolve them).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    check_key_text(key)
}

/// What a key and a prefix share: a prefix may end in `/`, a key may too (a "folder" marker).
fn check_key_text(key: &str) -> Result<(), String> {
    if key.len() > 1024 {
        return Err(format!("the key is {} bytes, over S3's 1024", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("`{}` holds a control character", key.escape_debug()));
    }
    if key.starts_with('/') {
        return Err(format!("`{key}` starts with `/` (keys are relative to the bucket)"));
    }
    let segments: Vec<&str> = key.split('/').collect();
    let last = segments.len() - 1;
    for (i, s) in segments.iter().enumerate() {
        if *s == "." || *s == ".." || (s.is_empty() && i != last) {
            return Err(format!("`{key}` has an empty, `.` or `..` segment; such keys can resolve outside their prefix on some stores"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> Result<Scope, String> {
        let v: toml::Value = toml::from_str(&format!("s3 = {text}")).unwrap();
        Scope::parse(&v["s3"])
    }

    #[test]
    fn grants_are_by_connection_bucket_prefix_and_action() {
        let s = scope(r#"[{ bucket = "releases", prefix = "agent/", actions = ["read"] }, { connection = "logs", bucket = "*", actions = ["write"] }]"#).unwrap();
        assert!(s.allows("any", "releases", "agent/1.0.tgz", "read"));
        assert!(!s.allows("any", "releases", "agent/1.0.tgz", "write"));
        assert!(!s.allows("any", "releases", "other/x", "read"));
        assert!(!s.allows("any", "releases", "agen", "read"), "a listing above the prefix is not granted");
        assert!(!s.allows("any", "private", "agent/x", "read"));
        assert!(s.allows("logs", "bundles", "x", "write"));
        assert!(!s.allows("main", "bundles", "x", "write"));
        assert!(s.describe().contains("read on releases/agent/*"));
    }

    #[test]
    fn a_bad_permission_is_named() {
        assert!(scope(r#"{ prefix = "a/", actions = ["read"] }"#).unwrap_err().contains("`bucket` is required"));
        assert!(scope(r#"{ bucket = "bkt", actions = [] }"#).unwrap_err().contains("`actions` is required"));
        assert!(scope(r#"{ bucket = "bkt", actions = ["admin"] }"#).unwrap_err().contains("unknown action `admin`"));
        assert!(scope(r#"{ bucket = "bkt", actions = ["read"], hosts = [] }"#).unwrap_err().contains("unknown key `hosts`"));
        assert!(scope(r#"{ bucket = "Bad_Bucket", actions = ["read"] }"#).unwrap_err().contains("not a bucket name"));
        assert!(
            scope(r#"[{ bucket = "bkt", actions = ["read"] }, { bucket = "bkt", prefix = "../", actions = ["read"] }]"#)
                .unwrap_err()
                .starts_with("[2] prefix")
        );
        assert!(scope("[]").is_err());
    }

    #[test]
    fn keys_that_could_leave_their_prefix_are_refused() {
        assert!(check_key("agent/1.0/pkg.tgz").is_ok());
        assert!(check_key("agent/").is_ok());
        for bad in ["", "agent/../secret", "agent/./x", "agent//x", "/etc/passwd", "a\nb", "..", "a/.."] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
