//! Objects one module hands another to stream, so the bytes never pass through Lua nor sit
//! whole in memory: a [`Source`] (an `s3.object` handle, which `ssh.put` sends to each host)
//! and a [`Sink`] (an `s3.destination`, to which `ssh.get` uploads each host's file). The
//! module that makes a handle checks its own permission when it makes it; the module that uses
//! it checks its own (the hosts, the paths).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use mlua::{UserData, UserDataFields, UserDataMethods};
use serde_json::Value;

/// Bytes read in order.
pub trait Chunks: Send {
    /// The next bytes; None at the end.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, String>>;
}

/// Something to read from, as often as asked (once per host).
pub trait Source: Send + Sync {
    /// Like `s3://artifacts/releases/agent-1.2.tgz`, for results and messages.
    fn label(&self) -> String;
    fn size(&self) -> u64;
    /// The hex SHA-256 recorded for the content, when one is.
    fn sha256(&self) -> Option<String>;
    /// What the audit log records of it (and a test's fake matches).
    fn describe(&self) -> Value;
    /// Starts a read from the beginning.
    fn open(&self) -> BoxFuture<'static, Result<Box<dyn Chunks>, String>>;
}

/// Somewhere to write objects to, one per host.
pub trait Sink: Send + Sync {
    /// Like `s3://logs/bundles/fleet/`.
    fn label(&self) -> String;
    fn describe(&self) -> Value;
    /// Starts the object `name` (relative to the sink); `sha256` (hex), when known, is
    /// recorded with it and checked against the bytes before it is kept.
    fn begin(&self, name: &str, sha256: Option<String>) -> BoxFuture<'static, Result<Box<dyn Writer>, String>>;
}

/// One object being written.
pub trait Writer: Send {
    fn write<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), String>>;
    /// Keeps the object; its description (key, size, sha256, version).
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Value, String>>;
    /// Drops it: nothing is left behind.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// A [`Source`] as a Lua value (`s3.object(...)`): opaque to the applet, which can read its
/// `label`, `size` and `sha256` and pass it on.
#[derive(Clone)]
pub struct ObjectHandle(pub Arc<dyn Source>);

impl UserData for ObjectHandle {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("label", |_, h| Ok(h.0.label()));
        f.add_field_method_get("size", |_, h| Ok(h.0.size()));
        f.add_field_method_get("sha256", |_, h| Ok(h.0.sha256()));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(mlua::MetaMethod::ToString, |_, h, ()| Ok(h.0.label()));
    }
}

/// A [`Sink`] as a Lua value (`s3.destination(...)`).
#[derive(Clone)]
pub struct SinkHandle(pub Arc<dyn Sink>);

impl UserData for SinkHandle {
    fn add_fields<F: UserDataFields<Self>>(f: &mut F) {
        f.add_field_method_get("label", |_, h| Ok(h.0.label()));
    }

    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_meta_method(mlua::MetaMethod::ToString, |_, h, ()| Ok(h.0.label()));
    }
}

/// The object handle `v` holds, if it is one.
pub fn object_of(v: &mlua::Value) -> Option<ObjectHandle> {
    match v {
        mlua::Value::UserData(u) => u.borrow::<ObjectHandle>().ok().map(|h| h.clone()),
        _ => None,
    }
}

/// The sink handle `v` holds, if it is one.
pub fn sink_of(v: &mlua::Value) -> Option<SinkHandle> {
    match v {
        mlua::Value::UserData(u) => u.borrow::<SinkHandle>().ok().map(|h| h.clone()),
        _ => None,
    }
}
