//! The `s3` host module: objects in an S3-compatible store (MinIO, Ceph RGW, SeaweedFS, AWS).
//!
//! Lua: `s3.list`, `s3.head`, `s3.get` (small objects, as text), `s3.object` (a handle to a
//! large one, which `ssh.put` streams to hosts), `s3.put`, `s3.copy`, `s3.delete`,
//! `s3.presign`, `s3.destination` (where `ssh.get` uploads each host's file) and
//! `s3.connection(NAME)` (docs/lua/s3.md). Connections are `[s3.NAME]` in opslet.toml, keys from
//! secrets. The permission grants actions on key prefixes of buckets (`scope`), checked before
//! anything is sent. Every read and change is audited with the object's size, checksum and
//! version; a dry run makes no change and hands out no URL.
//!
//! Layout: `client` is the plain S3 client (also used by `opslet artifact` and the console),
//! `scope` the permission, `settings` the `[s3.NAME]` tables; this file is the Lua boundary,
//! the per-run state and the handles other modules stream.

pub mod client;
pub mod scope;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mlua::{Lua, LuaSerdeExt, Table, Value as LuaValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::Error;
use crate::kit::clients::{Clients, RunClients};
use crate::kit::objects::{Chunks, ObjectHandle, Sink, SinkHandle, Source, Writer};
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use client::{Client, Object};
use scope::Scope;
use settings::{AccessKey, S3Conn};

/// This module's calls, for their errors (`s3.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("s3");

pub struct S3Module {
    conns: Arc<BTreeMap<String, S3Conn>>,
    /// Clients by connection name, kept from run to run (see `kit::clients`).
    clients: Arc<Clients<Client>>,
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    Ok(Arc::new(S3Module { conns: Arc::new(settings::from_config(config)?), clients: Arc::default() }))
}

/// A client for connection `name` of `conns`, its keys read through `secret` (the CLI and the
/// console use this; a run's state has its own, reading the run's secrets).
pub fn client_for(
    conns: &BTreeMap<String, S3Conn>,
    name: &str,
    secret: &dyn Fn(&str, &str) -> Result<String, String>,
) -> Result<Client, String> {
    let conf = conns.get(name).ok_or_else(|| {
        let known: Vec<&str> = conns.keys().map(String::as_str).collect();
        if known.is_empty() {
            "no s3 connection is configured (add [s3.NAME] to opslet.toml)".to_string()
        } else {
            format!("no s3 connection `{name}` (configured: {})", known.join(", "))
        }
    })?;
    let owner = format!("[s3.{name}]");
    let access = match &conf.access_key {
        AccessKey::Plain(k) => k.clone(),
        AccessKey::Secret(s) => secret(&owner, s)?,
    };
    let key = secret(&owner, &conf.secret_key_secret)?;
    Client::new(name, conf, access, key)
}

/// The connection a call uses when none is named.
pub fn default_connection(conns: &BTreeMap<String, S3Conn>, asked: Option<&str>) -> Result<String, String> {
    crate::kit::pick_connection("s3", "s3", &listed(conns), asked)
}

/// (name, marked default) of each connection, as `kit::pick_connection` takes them.
fn listed(conns: &BTreeMap<String, S3Conn>) -> Vec<(&str, bool)> {
    conns.iter().map(|(n, c)| (n.as_str(), c.default)).collect()
}

/// One run's view of the module.
#[derive(Clone)]
struct State {
    conns: Arc<BTreeMap<String, S3Conn>>,
    clients: RunClients<Client>,
    ctx: Arc<RunCtx>,
    scope: Arc<Scope>,
    /// The connection the applet named (`s3.connection(NAME)`), if it named one.
    named: Option<String>,
}

impl State {
    /// The connection a call uses (a stand-in in a test with no [s3.*]: `kit::run_connection`).
    fn conn(&self, call: &str) -> mlua::Result<String> {
        crate::kit::run_connection(&self.ctx, "s3", "s3", &listed(&self.conns), self.named.as_deref()).map_err(|m| LUA.err(call, m))
    }

    fn client(&self, name: &str) -> Result<Arc<Client>, String> {
        let ca_file = self.conns.get(name).and_then(|c| c.ca_file.as_deref());
        self.clients.get(&self.ctx, &format!("[s3.{name}]"), name, ca_file, |secret| client_for(&self.conns, name, &|_, s| secret(s)))
    }

    /// Refuses, before anything is sent, a call the permission does not cover.
    fn allow(&self, call: &str, conn: &str, bucket: &str, key: &str, action: &str) -> mlua::Result<()> {
        scope::check_bucket(bucket).map_err(|m| LUA.err(call, m))?;
        if self.scope.allows(conn, bucket, key, action) {
            return Ok(());
        }
        Err(LUA.err(
            call,
            format!(
                "permission denied: `{action}` on {bucket}/{key} (connection {conn}) is not granted; the applet's s3 permission grants {}",
                self.scope.describe()
            ),
        ))
    }

    /// `bucket/key` (`bucket/key@CONN` when the applet named the connection): the target in
    /// the audit log and in a test's fakes.
    fn target(&self, bucket: &str, key: &str) -> String {
        let t = client::describe(bucket, Some(key));
        match &self.named {
            Some(n) => format!("{t}@{n}"),
            None => t,
        }
    }

    /// Where a call leaves the process: made by `real`, unless a test's exchange answers it.
    async fn ask<T, F>(&self, call: &str, bucket: &str, key: &str, args: Value, real: F) -> mlua::Result<T>
    where
        T: Serialize + serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<T, String>>,
    {
        crate::kit::exchange::call(&self.ctx, &format!("s3.{call}"), &self.target(bucket, key), args, real)
            .await
            .map_err(|m| LUA.err(call, m))
    }

    fn record(&self, action: &str, conn: &str, bucket: &str, key: &str, ok: bool, mut detail: Value) -> mlua::Result<()> {
        detail["connection"] = json!(conn);
        self.ctx.record_action("s3", action, &self.target(bucket, key), ok, detail).map_err(|e| LUA.err(action, e))
    }

    /// Records the outcome of a change or read, then gives it back.
    fn audited<T: Serialize>(&self, action: &str, conn: &str, bucket: &str, key: &str, r: mlua::Result<T>) -> mlua::Result<T> {
        let detail = match &r {
            Ok(v) => serde_json::to_value(v).unwrap_or(Value::Null),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let detail = if detail.is_object() { detail } else { json!({ "result": detail }) };
        self.record(action, conn, bucket, key, r.is_ok(), detail)?;
        r
    }
}

/// An object's content through the exchange: bytes when real, text in a fake or transcript.
#[derive(Serialize, Deserialize)]
struct Content {
    #[serde(with = "text_bytes")]
    content: Vec<u8>,
    object: Object,
}

mod text_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        String::deserialize(d).map(String::into_bytes)
    }
}

/// Options of a call, by name; another key is an error naming the known ones.
fn options(call: &str, opts: Option<Table>, known: &[&str]) -> mlua::Result<BTreeMap<String, LuaValue>> {
    let mut out = BTreeMap::new();
    let Some(o) = opts else { return Ok(out) };
    for (k, v) in crate::kit::options::entries(&LUA.call(call), &o)? {
        if !known.contains(&k.as_str()) {
            return Err(LUA.err(call, format!("unknown option `{k}` (known: {})", known.join(", "))));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn text_opt(call: &str, o: &BTreeMap<String, LuaValue>, key: &str) -> mlua::Result<Option<String>> {
    match o.get(key) {
        None | Some(LuaValue::Nil) => Ok(None),
        Some(LuaValue::String(s)) => Ok(Some(s.to_string_lossy())),
        Some(other) => Err(LUA.err(call, format!("opts.{key}: expected a string, got {}", other.type_name()))),
    }
}

fn check_key(call: &str, key: &str) -> mlua::Result<()> {
    scope::check_key(key).map_err(|m| LUA.err(call, m))
}

/// A stored object other modules stream (an `s3.object` handle).
struct S3Source {
    st: State,
    conn: String,
    object: Object,
    /// What the applet said the content hashes to, or what was recorded at upload.
    sha256: Option<String>,
}

impl Source for S3Source {
    fn label(&self) -> String {
        let v = self.object.version_id.as_deref().filter(|v| *v != "null").map(|v| format!("?version={v}")).unwrap_or_default();
        format!("s3://{}/{}/{}{v}", self.conn, self.object.bucket, self.object.key)
    }

    fn size(&self) -> u64 {
        self.object.size
    }

    fn sha256(&self) -> Option<String> {
        self.sha256.clone()
    }

    fn describe(&self) -> Value {
        json!({
            "connection": self.conn, "bucket": self.object.bucket, "key": self.object.key,
            "version_id": self.object.version_id, "size": self.object.size, "sha256": self.sha256,
        })
    }

    fn open(&self) -> BoxFuture<'static, Result<Box<dyn Chunks>, String>> {
        let (st, conn, o) = (self.st.clone(), self.conn.clone(), self.object.clone());
        Box::pin(async move {
            let c = st.client(&conn)?;
            // The version looked at, or (unversioned) the same content: a key replaced since
            // answers PreconditionFailed rather than other bytes.
            let version = o.version_id.as_deref().filter(|v| *v != "null");
            let etag = if version.is_none() { o.etag.as_deref() } else { None };
            let (_, r) = c
                .open_matching(&o.bucket, &o.key, version, etag)
                .await
                .map_err(|e| format!("{}: {e}", client::describe(&o.bucket, Some(&o.key))))?;
            Ok(Box::new(r) as Box<dyn Chunks>)
        })
    }
}

impl Chunks for client::Reader {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<bytes::Bytes>, String>> {
        Box::pin(async move { self.chunk().await.map_err(|e| e.to_string()) })
    }
}

/// A prefix other modules upload objects under (an `s3.destination` handle).
struct S3Sink {
    st: State,
    conn: String,
    bucket: String,
    prefix: String,
}

impl Sink for S3Sink {
    fn label(&self) -> String {
        format!("s3://{}/{}/{}", self.conn, self.bucket, self.prefix)
    }

    fn describe(&self) -> Value {
        json!({ "connection": self.conn, "bucket": self.bucket, "prefix": self.prefix })
    }

    fn begin(&self, name: &str, sha256: Option<String>) -> BoxFuture<'static, Result<Box<dyn Writer>, String>> {
        let key = format!("{}{name}", self.prefix);
        let (st, conn, bucket) = (self.st.clone(), self.conn.clone(), self.bucket.clone());
        Box::pin(async move {
            scope::check_key(&key)?;
            st.allow("destination", &conn, &bucket, &key, "write").map_err(|e| e.to_string())?;
            let c = st.client(&conn)?;
            let upload = c.upload(&bucket, &key, sha256, None);
            Ok(Box::new(S3Writer { st, conn, upload: Some(upload) }) as Box<dyn Writer>)
        })
    }
}

struct S3Writer {
    st: State,
    conn: String,
    upload: Option<client::Upload>,
}

impl Writer for S3Writer {
    fn write<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.upload.as_mut().expect("not finished").write(data).await.map_err(|e| e.to_string()) })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<Value, String>> {
        Box::pin(async move {
            let u = self.upload.take().expect("not finished");
            let (bucket, key) = (u.bucket().to_string(), u.key().to_string());
            let r = u.finish().await.map_err(|e| e.to_string());
            let st = &self.st;
            let detail = match &r {
                Ok(o) => serde_json::to_value(o).unwrap_or(Value::Null),
                Err(e) => json!({ "error": e }),
            };
            st.record("put", &self.conn, &bucket, &key, r.is_ok(), detail).map_err(|e| e.to_string())?;
            r.map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(u) = self.upload.take() {
                u.abort().await;
            }
        })
    }
}

/// Most objects a listing returns.
const MAX_LIST: usize = 100_000;

fn functions(lua: &Lua, st: &State, conn: Option<String>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let st = &State { named: conn, ..st.clone() };

    let s = st.clone();
    t.set(
        "list",
        lua.create_async_function(move |lua, (bucket, prefix, opts): (String, Option<String>, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("list", opts, &["versions", "delimiter", "limit"])?;
                let prefix = prefix.unwrap_or_default();
                let conn = s.conn("list")?;
                if !prefix.is_empty() {
                    scope::check_key(&prefix).map_err(|m| LUA.err("list", format!("prefix: {m}")))?;
                }
                s.allow("list", &conn, &bucket, &prefix, "read")?;
                let versions = matches!(o.get("versions"), Some(LuaValue::Boolean(true)));
                let delimiter = text_opt("list", &o, "delimiter")?;
                let limit = match o.get("limit") {
                    None => 1000,
                    Some(v) => crate::kit::options::count_opt("s3.list", "limit", v.clone())?.clamp(1, MAX_LIST),
                };
                let args = json!({ "prefix": prefix, "versions": versions, "delimiter": delimiter, "limit": limit });
                let real = async {
                    let c = s.client(&conn)?;
                    let r = if versions {
                        c.list_versions(&bucket, &prefix, limit).await
                    } else {
                        c.list(&bucket, &prefix, delimiter.as_deref(), limit).await
                    };
                    r.map_err(|e| format!("{bucket}/{prefix}: {e}"))
                };
                let listing: client::Listing = s.ask("list", &bucket, &prefix, args, real).await?;
                crate::kit::to_lua(&lua, &listing)
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "head",
        lua.create_async_function(move |lua, (bucket, key, opts): (String, String, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("head", opts, &["version"])?;
                check_key("head", &key)?;
                let conn = s.conn("head")?;
                s.allow("head", &conn, &bucket, &key, "read")?;
                let version = text_opt("head", &o, "version")?;
                let head = head(&s, &conn, &bucket, &key, &version).await?;
                match head {
                    Some(h) => crate::kit::to_lua(&lua, &h),
                    None => Ok(LuaValue::Nil),
                }
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "get",
        lua.create_async_function(move |lua, (bucket, key, opts): (String, String, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("get", opts, &["version"])?;
                check_key("get", &key)?;
                let conn = s.conn("get")?;
                s.allow("get", &conn, &bucket, &key, "read")?;
                let version = text_opt("get", &o, "version")?;
                let args = json!({ "version": version });
                let max = s.conns.get(&conn).map_or(16 * 1024 * 1024, |c| c.max_get).min(s.ctx.guard.limits.memory);
                let real = async {
                    let c = s.client(&conn)?;
                    match c.get(&bucket, &key, version.as_deref(), max).await {
                        Ok((object, content)) => Ok(Content { content, object }),
                        Err(client::S3Error::Check(m)) if m.contains("-byte limit") => {
                            Err(format!("{m} (s3.get returns small objects as text; use s3.object for a handle ssh.put streams)"))
                        }
                        Err(e) => Err(format!("{bucket}/{key}: {e}")),
                    }
                };
                let r: mlua::Result<Content> = s.ask("get", &bucket, &key, args, real).await;
                let got = s.audited("get", &conn, &bucket, &key, r.map(|c| Audited { object: c.object, content: c.content }))?;
                lua.create_string(&got.content).map(LuaValue::String)
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "object",
        lua.create_async_function(move |lua, (bucket, key, opts): (String, String, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("object", opts, &["version", "sha256"])?;
                check_key("object", &key)?;
                let conn = s.conn("object")?;
                s.allow("object", &conn, &bucket, &key, "read")?;
                let version = text_opt("object", &o, "version")?;
                let want = text_opt("object", &o, "sha256")?.map(|h| h.to_ascii_lowercase());
                if let Some(w) = &want
                    && (w.len() != 64 || !w.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(LUA.err("object", "opts.sha256: expected 64 hex digits"));
                }
                let found = head(&s, &conn, &bucket, &key, &version).await?;
                let Some(object) = found else {
                    let what = version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default();
                    return Err(LUA.err("object", format!("{bucket}/{key}{what}: NoSuchKey: there is no such object")));
                };
                // The applet's expectation and the recorded checksum must agree before any host
                // is sent a byte.
                if let (Some(w), Some(rec)) = (&want, &object.sha256)
                    && w != rec
                {
                    return Err(
                        LUA.err("object", format!("{bucket}/{key}: its recorded SHA-256 is {rec}, not the expected {w}; nothing was sent"))
                    );
                }
                let sha256 = want.or(object.sha256.clone());
                let source = S3Source { st: s.clone(), conn: conn.clone(), object, sha256 };
                s.record("object", &conn, &bucket, &key, true, source.describe())?;
                lua.create_userdata(ObjectHandle(Arc::new(source))).map(LuaValue::UserData)
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "put",
        lua.create_async_function(move |lua, (bucket, key, content, opts): (String, String, mlua::LuaString, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("put", opts, &["content_type", "metadata"])?;
                check_key("put", &key)?;
                let conn = s.conn("put")?;
                s.allow("put", &conn, &bucket, &key, "write")?;
                let content_type = text_opt("put", &o, "content_type")?;
                let metadata: BTreeMap<String, String> = match o.get("metadata") {
                    None | Some(LuaValue::Nil) => BTreeMap::new(),
                    Some(v) => lua.from_value(v.clone()).map_err(|_| LUA.err("put", "opts.metadata: expected a table of name = text"))?,
                };
                for k in metadata.keys() {
                    if k.is_empty()
                        || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        || k.eq_ignore_ascii_case("sha256")
                    {
                        return Err(LUA.err(
                            "put",
                            format!("opts.metadata: `{k}` is not a metadata name (letters, digits, `-`, `_`; sha256 is opslet's)"),
                        ));
                    }
                }
                let data = content.as_bytes().to_vec();
                let sha = {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(&data))
                };
                let mut detail = json!({ "size": data.len(), "sha256": sha, "content_type": content_type });
                if s.ctx.dry_run {
                    detail["planned"] = json!(true);
                    s.record("put", &conn, &bucket, &key, true, detail)?;
                    return crate::kit::to_lua(
                        &lua,
                        &json!({ "bucket": bucket, "key": key, "size": data.len(), "sha256": sha, "planned": true }),
                    );
                }
                let real = async {
                    let c = s.client(&conn)?;
                    c.put(&bucket, &key, &data, content_type.clone(), metadata.clone()).await.map_err(|e| format!("{bucket}/{key}: {e}"))
                };
                let args = json!({ "size": data.len(), "sha256": sha, "content_type": content_type, "metadata": metadata });
                let r: mlua::Result<Object> = s.ask("put", &bucket, &key, args, real).await;
                let put = s.audited("put", &conn, &bucket, &key, r)?;
                crate::kit::to_lua(&lua, &put)
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "copy",
        lua.create_async_function(
            move |lua, (from_bucket, from_key, to_bucket, to_key, opts): (String, String, String, String, Option<Table>)| {
                let s = s.clone();
                async move {
                    let o = options("copy", opts, &["version"])?;
                    check_key("copy", &from_key)?;
                    check_key("copy", &to_key)?;
                    let conn = s.conn("copy")?;
                    s.allow("copy", &conn, &from_bucket, &from_key, "read")?;
                    s.allow("copy", &conn, &to_bucket, &to_key, "write")?;
                    let version = text_opt("copy", &o, "version")?;
                    let from = json!({ "bucket": from_bucket, "key": from_key, "version_id": version });
                    if s.ctx.dry_run {
                        s.record("copy", &conn, &to_bucket, &to_key, true, json!({ "from": from, "planned": true }))?;
                        return crate::kit::to_lua(&lua, &json!({ "bucket": to_bucket, "key": to_key, "planned": true }));
                    }
                    let real = async {
                        let c = s.client(&conn)?;
                        c.copy((&from_bucket, &from_key, version.as_deref()), (&to_bucket, &to_key))
                            .await
                            .map_err(|e| format!("{from_bucket}/{from_key} to {to_bucket}/{to_key}: {e}"))
                    };
                    let r: mlua::Result<Object> = s.ask("copy", &to_bucket, &to_key, json!({ "from": from }), real).await;
                    let copied = s.audited("copy", &conn, &to_bucket, &to_key, r.map(|o| Copied { from: from.clone(), object: o }))?;
                    crate::kit::to_lua(&lua, &copied.object)
                }
            },
        )?,
    )?;

    let s = st.clone();
    t.set(
        "delete",
        lua.create_async_function(move |lua, (bucket, key, opts): (String, String, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("delete", opts, &["version"])?;
                check_key("delete", &key)?;
                let conn = s.conn("delete")?;
                s.allow("delete", &conn, &bucket, &key, "delete")?;
                let version = text_opt("delete", &o, "version")?;
                if s.ctx.dry_run {
                    s.record("delete", &conn, &bucket, &key, true, json!({ "version_id": version, "planned": true }))?;
                    return crate::kit::to_lua(&lua, &json!({ "bucket": bucket, "key": key, "version_id": version, "planned": true }));
                }
                let real = async {
                    let c = s.client(&conn)?;
                    c.delete(&bucket, &key, version.as_deref()).await.map_err(|e| format!("{bucket}/{key}: {e}"))
                };
                let r: mlua::Result<client::Deleted> = s.ask("delete", &bucket, &key, json!({ "version": version }), real).await;
                let d = s.audited("delete", &conn, &bucket, &key, r)?;
                crate::kit::to_lua(&lua, &d)
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "presign",
        lua.create_async_function(move |_lua, (bucket, key, opts): (String, String, Option<Table>)| {
            let s = s.clone();
            async move {
                let o = options("presign", opts, &["method", "expires"])?;
                check_key("presign", &key)?;
                let conn = s.conn("presign")?;
                let method = text_opt("presign", &o, "method")?.unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
                let put = match method.as_str() {
                    "GET" => false,
                    "PUT" => true,
                    other => return Err(LUA.err("presign", format!("opts.method: `{other}` (GET or PUT)"))),
                };
                s.allow("presign", &conn, &bucket, &key, "presign")?;
                s.allow("presign", &conn, &bucket, &key, if put { "write" } else { "read" })?;
                let expires = match o.get("expires") {
                    None => Duration::from_secs(900),
                    Some(v) => crate::kit::options::duration_opt("s3.presign", "expires", v.clone())?,
                };
                let cap = s.conns.get(&conn).map_or(Duration::from_secs(3600), |c| c.presign_max);
                if expires > cap {
                    return Err(LUA.err(
                        "presign",
                        format!(
                            "opts.expires: {} is longer than this connection allows ([s3.{conn}] presign_max = {})",
                            humantime::format_duration(expires),
                            humantime::format_duration(cap)
                        ),
                    ));
                }
                let detail = json!({ "method": method, "expires_s": expires.as_secs() });
                if s.ctx.dry_run {
                    let mut d = detail.clone();
                    d["planned"] = json!(true);
                    s.record("presign", &conn, &bucket, &key, true, d)?;
                    return Ok("(dry run: no URL issued)".to_string());
                }
                let real = async {
                    let c = s.client(&conn)?;
                    c.presign(put, &bucket, &key, expires).map(|u| u.to_string()).map_err(|e| e.to_string())
                };
                let r: mlua::Result<String> = s.ask("presign", &bucket, &key, detail.clone(), real).await;
                // The URL is a bearer credential until it expires: its signature is hidden in
                // the run's logs, results and audit records from here on, like a secret's value.
                if let Ok(url) = &r
                    && let Some((_, sig)) = url.split_once("X-Amz-Signature=")
                {
                    s.ctx.redactor.learn(sig.split('&').next().unwrap_or(sig));
                }
                let ok = r.is_ok();
                let mut d = detail;
                if let Err(e) = &r {
                    d["error"] = json!(e.to_string());
                }
                s.record("presign", &conn, &bucket, &key, ok, d)?;
                r
            }
        })?,
    )?;

    let s = st.clone();
    t.set(
        "destination",
        lua.create_function(move |lua, (bucket, prefix): (String, String)| {
            let conn = s.conn("destination")?;
            if !prefix.is_empty() {
                scope::check_key(&prefix).map_err(|m| LUA.err("destination", format!("prefix: {m}")))?;
                if !prefix.ends_with('/') {
                    return Err(LUA.err("destination", format!("prefix `{prefix}` must end with `/` (each host's file goes below it)")));
                }
            }
            s.allow("destination", &conn, &bucket, &prefix, "write")?;
            let sink = S3Sink { st: s.clone(), conn, bucket, prefix };
            lua.create_userdata(SinkHandle(Arc::new(sink))).map(LuaValue::UserData)
        })?,
    )?;
    Ok(t)
}

/// `s3.get`'s audit record: the object, not its content.
struct Audited {
    object: Object,
    content: Vec<u8>,
}

impl Serialize for Audited {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.object.serialize(s)
    }
}

/// `s3.copy`'s audit record: the copy and where it came from.
#[derive(Serialize)]
struct Copied {
    from: Value,
    #[serde(flatten)]
    object: Object,
}

async fn head(s: &State, conn: &str, bucket: &str, key: &str, version: &Option<String>) -> mlua::Result<Option<Object>> {
    let real = async {
        let c = s.client(conn)?;
        c.head(bucket, key, version.as_deref()).await.map_err(|e| format!("{bucket}/{key}: {e}"))
    };
    s.ask("head", bucket, key, json!({ "version": version }), real).await
}

impl HostModule for S3Module {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(scope).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant.scope).map_err(|m| LUA.err("permission", m))?;
        let st = State {
            conns: Arc::clone(&self.conns),
            clients: RunClients::new(&self.clients),
            ctx: Arc::clone(ctx),
            scope: Arc::new(scope),
            named: None,
        };
        let check = st.clone();
        crate::kit::with_connections(
            lua,
            move |lua, conn| functions(lua, &st, conn),
            move |name| State { named: Some(name.to_string()), ..check.clone() }.conn("connection").map(drop),
        )
    }
}
