//! A plain S3 client: every request signed with SigV4 (query-string form, by `rusty-s3`'s
//! signer), sent with reqwest, its XML answer read with roxmltree. Nothing here knows Lua; the
//! `opslet artifact` commands and the console use it as the module does.
//!
//! Uploads stream: [`Upload`] takes bytes as they come and sends a part each `part_size`, so a
//! file of any size passes through one part's worth of memory. Downloads stream too
//! ([`Client::open`] and [`Reader::chunk`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rusty_s3::{Bucket, Credentials, Map, Method, UrlStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::settings::S3Conn;

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Error {
    /// The store answered with an error: its own code and message.
    Store { status: u16, code: String, message: String },
    /// No answer (connect, TLS, timeout), or one that could not be read.
    Transport(String),
    /// What opslet checked itself: a checksum that differs, an object over a limit.
    Check(String),
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Error::Store { status, code, message } if message.is_empty() => write!(f, "{code} (HTTP {status})"),
            S3Error::Store { status, code, message } => write!(f, "{code}: {message} (HTTP {status})"),
            S3Error::Transport(m) | S3Error::Check(m) => f.write_str(m),
        }
    }
}

/// One object (or, in a versions listing, one version or delete marker).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Object {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Hex SHA-256 of the content, as recorded at upload (`x-amz-meta-sha256`, or the store's
    /// own `x-amz-checksum-sha256`); None when nobody recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// In a versions listing: whether this is the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_marker: bool,
}

/// One page-walked listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Listing {
    pub objects: Vec<Object>,
    /// With a delimiter: the "folders" one level down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// More matched than the limit let through.
    pub truncated: bool,
}

/// What a delete did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Deleted {
    pub bucket: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub delete_marker: bool,
}

/// A client for one `[s3.NAME]` connection.
pub struct Client {
    pub name: String,
    endpoint: url::Url,
    region: String,
    style: UrlStyle,
    creds: Credentials,
    http: reqwest::Client,
    /// One request's bound (a streamed transfer has only `read_timeout` between its bytes).
    timeout: Duration,
    pub part_size: u64,
    pub max_get: u64,
    pub presign_max: Duration,
}

/// How long the URL of a request sent now is valid (clock skew included).
const SEND_VALID: Duration = Duration::from_secs(900);
/// Most of an error body read.
const ERROR_BODY: usize = 64 * 1024;

fn to_method(m: Method) -> reqwest::Method {
    match m {
        Method::Head => reqwest::Method::HEAD,
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Delete => reqwest::Method::DELETE,
    }
}

/// A request body.
enum Body {
    None,
    Bytes(Bytes),
}

impl Client {
    /// A client for `conf`, logging in as `access_key` with `secret_key`.
    pub fn new(name: &str, conf: &S3Conn, access_key: String, secret_key: String) -> Result<Client, String> {
        let ca = crate::kit::http::read_ca(conf.ca_file.as_deref()).map_err(|m| format!("[s3.{name}] {m}"))?;
        let trust = ca.map_or(crate::kit::http::Trust::System, crate::kit::http::Trust::Also);
        let http = crate::kit::http::client(crate::kit::http::Options {
            // A transfer's whole length is not bounded (a 2 GiB package); each request sets its
            // own bound, and a stalled stream ends after `timeout` without bytes.
            timeout: Duration::from_secs(7 * 24 * 3600),
            connect_timeout: conf.timeout.min(Duration::from_secs(30)),
            trust,
            // A redirect would carry the signed URL elsewhere.
            redirects: false,
            read_timeout: Some(conf.timeout),
        })
        .map_err(|m| format!("[s3.{name}] {m}"))?;
        Ok(Client {
            name: name.to_string(),
            endpoint: conf.endpoint.clone(),
            region: conf.region.clone(),
            style: if conf.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost },
            creds: Credentials::new(access_key, secret_key),
            http,
            timeout: conf.timeout,
            part_size: conf.part_size,
            max_get: conf.max_get,
            presign_max: conf.presign_max,
        })
    }

    /// The signed URL of a request: `key` None addresses the bucket itself.
    fn signed(
        &self,
        method: Method,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, String)],
        headers: &[(String, String)],
        valid: Duration,
    ) -> Result<url::Url, S3Error> {
        let b = Bucket::new(self.endpoint.clone(), self.style, bucket.to_string(), self.region.clone())
            .map_err(|e| S3Error::Check(format!("bucket `{bucket}`: {e}")))?;
        let url = match key {
            Some(k) => b.object_url(k).map_err(|e| S3Error::Check(format!("key `{k}`: {e}")))?,
            None => b.base_url().clone(),
        };
        let mut q = Map::new();
        for (k, v) in query {
            q.insert(k.to_string(), v.clone());
        }
        let mut h = Map::new();
        for (k, v) in headers {
            h.insert(k.to_ascii_lowercase(), v.clone());
        }
        let now = jiff::Timestamp::now();
        Ok(rusty_s3::signing::sign(
            &now,
            method,
            url,
            self.creds.key(),
            self.creds.secret(),
            self.creds.token(),
            &self.region,
            valid.as_secs(),
            q.iter(),
            h.iter(),
        ))
    }

    /// Sends one request; an answer other than 2xx becomes the store's error.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        method: Method,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, String)],
        headers: &[(String, String)],
        body: Body,
        bounded: bool,
    ) -> Result<reqwest::Response, S3Error> {
        let url = self.signed(method, bucket, key, query, headers, SEND_VALID)?;
        let what = format!("{} {}", method.to_str(), describe(bucket, key));
        let mut req = self.http.request(to_method(method), url);
        if bounded {
            req = req.timeout(self.timeout);
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Body::Bytes(b) = body {
            req = req.body(b);
        }
        // The message names the store, not the URL: its query is a signature that lets anyone
        // read or change the object for minutes.
        let resp = req.send().await.map_err(|e| {
            let at = self.endpoint.origin().ascii_serialization();
            S3Error::Transport(format!("{what} at {at}: {}", crate::util::error_chain(&e.without_url())))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_of(resp).await)
    }

    /// Reads a small XML answer.
    async fn xml(resp: reqwest::Response) -> Result<String, S3Error> {
        let text = resp.text().await.map_err(|e| S3Error::Transport(format!("reading the answer: {}", e.without_url())))?;
        // CompleteMultipartUpload and CopyObject may answer 200 with an error in the body.
        if let Some(e) = parse_error(200, &text) {
            return Err(e);
        }
        Ok(text)
    }

    /// A GET of the bucket itself (a listing, its settings): the XML answer.
    async fn bucket_xml(&self, bucket: &str, query: &[(&str, String)]) -> Result<String, S3Error> {
        let resp = self.send(Method::Get, bucket, None, query, &[], Body::None, true).await?;
        Self::xml(resp).await
    }

    /// Lists up to `limit` objects of `bucket` under `prefix`, a page at a time; with
    /// `delimiter`, keys below it are rolled up into `prefixes`.
    pub async fn list(&self, bucket: &str, prefix: &str, delimiter: Option<&str>, limit: usize) -> Result<Listing, S3Error> {
        let mut out = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let room = limit.saturating_sub(out.objects.len() + out.prefixes.len());
            if room == 0 {
                out.truncated = true;
                return Ok(out);
            }
            let mut q = vec![("list-type", "2".to_string()), ("max-keys", room.min(1000).to_string())];
            if !prefix.is_empty() {
                q.push(("prefix", prefix.to_string()));
            }
            if let Some(d) = delimiter {
                q.push(("delimiter", d.to_string()));
            }
            if let Some(t) = &token {
                q.push(("continuation-token", t.clone()));
            }
            let text = self.bucket_xml(bucket, &q).await?;
            let doc = parse_xml(&text)?;
            let root = doc.root_element();
            for n in root.children().filter(|n| n.has_tag_name_local("Contents")) {
                out.objects.push(listed(bucket, n));
            }
            for n in root.children().filter(|n| n.has_tag_name_local("CommonPrefixes")) {
                if let Some(p) = child(n, "Prefix") {
                    out.prefixes.push(p);
                }
            }
            let more = child(root, "IsTruncated").as_deref() == Some("true");
            token = child(root, "NextContinuationToken");
            if !more || token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Lists up to `limit` versions (and delete markers) of the keys under `prefix`, newest
    /// first per key.
    pub async fn list_versions(&self, bucket: &str, prefix: &str, limit: usize) -> Result<Listing, S3Error> {
        let mut out = Listing::default();
        let mut markers: Option<(String, Option<String>)> = None;
        loop {
            let room = limit.saturating_sub(out.objects.len());
            if room == 0 {
                out.truncated = true;
                return Ok(out);
            }
            let mut q = vec![("versions", String::new()), ("max-keys", room.min(1000).to_string())];
            if !prefix.is_empty() {
                q.push(("prefix", prefix.to_string()));
            }
            if let Some((k, v)) = &markers {
                q.push(("key-marker", k.clone()));
                if let Some(v) = v {
                    q.push(("version-id-marker", v.clone()));
                }
            }
            let text = self.bucket_xml(bucket, &q).await?;
            let doc = parse_xml(&text)?;
            let root = doc.root_element();
            for n in root.children().filter(|n| n.has_tag_name_local("Version") || n.has_tag_name_local("DeleteMarker")) {
                out.objects.push(Object {
                    version_id: child(n, "VersionId"),
                    latest: Some(child(n, "IsLatest").as_deref() == Some("true")),
                    delete_marker: n.has_tag_name_local("DeleteMarker"),
                    ..listed(bucket, n)
                });
            }
            let more = child(root, "IsTruncated").as_deref() == Some("true");
            match child(root, "NextKeyMarker") {
                Some(k) if more => markers = Some((k, child(root, "NextVersionIdMarker"))),
                _ => return Ok(out),
            }
        }
    }

    /// Whether the bucket keeps versions: "Enabled", "Suspended", or None (never enabled).
    pub async fn versioning(&self, bucket: &str) -> Result<Option<String>, S3Error> {
        let text = self.bucket_xml(bucket, &[("versioning", String::new())]).await?;
        let doc = parse_xml(&text)?;
        Ok(child(doc.root_element(), "Status").filter(|s| !s.is_empty()))
    }

    /// Turns versioning on (or suspends it) for `bucket`.
    pub async fn set_versioning(&self, bucket: &str, on: bool) -> Result<(), S3Error> {
        let body = format!(
            "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{}</Status></VersioningConfiguration>",
            if on { "Enabled" } else { "Suspended" }
        );
        let resp = self.send(Method::Put, bucket, None, &[("versioning", String::new())], &[], Body::Bytes(body.into()), true).await?;
        Self::xml(resp).await.map(drop)
    }

    /// Creates `bucket` (for setting a store up; applets never do).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        let resp = self.send(Method::Put, bucket, None, &[], &[], Body::None, true).await?;
        Self::xml(resp).await.map(drop)
    }

    /// The object's description; None when there is no such key (or version).
    pub async fn head(&self, bucket: &str, key: &str, version: Option<&str>) -> Result<Option<Object>, S3Error> {
        let q = version_query(version);
        match self.send(Method::Head, bucket, Some(key), &q, &[], Body::None, true).await {
            Ok(resp) => Ok(Some(object_of(bucket, key, &resp))),
            Err(S3Error::Store { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the object for reading, as a stream of chunks.
    pub async fn open(&self, bucket: &str, key: &str, version: Option<&str>) -> Result<(Object, Reader), S3Error> {
        self.open_matching(bucket, key, version, None).await
    }

    /// Opens the object only if its ETag is still `etag` (when given): a key replaced since
    /// it was looked at answers PreconditionFailed instead of other bytes.
    pub async fn open_matching(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        etag: Option<&str>,
    ) -> Result<(Object, Reader), S3Error> {
        let q = version_query(version);
        let headers: Vec<(String, String)> = etag.map(|e| vec![("if-match".to_string(), format!("\"{e}\""))]).unwrap_or_default();
        let resp = self.send(Method::Get, bucket, Some(key), &q, &headers, Body::None, false).await?;
        let expected = resp.content_length();
        Ok((object_of(bucket, key, &resp), Reader { resp, hasher: Sha256::new(), read: 0, expected }))
    }

    /// The whole object, when it is at most `max` bytes; its checksum is checked against the
    /// one recorded at upload, when there is one.
    pub async fn get(&self, bucket: &str, key: &str, version: Option<&str>, max: u64) -> Result<(Object, Vec<u8>), S3Error> {
        let (o, mut r) = self.open(bucket, key, version).await?;
        if o.size > max {
            return Err(S3Error::Check(format!("{} is {} bytes, over the {max}-byte limit", describe(bucket, Some(key)), o.size)));
        }
        let mut data = Vec::with_capacity(o.size as usize);
        while let Some(c) = r.chunk().await? {
            if (data.len() + c.len()) as u64 > max {
                return Err(S3Error::Check(format!("{} grew over the {max}-byte limit while being read", describe(bucket, Some(key)))));
            }
            data.extend_from_slice(&c);
        }
        let sha = r.sha256();
        if let Some(want) = &o.sha256
            && *want != sha
        {
            return Err(S3Error::Check(format!(
                "{}: the content's SHA-256 is {sha}, not the {want} recorded at upload",
                describe(bucket, Some(key))
            )));
        }
        Ok((Object { sha256: Some(sha), ..o }, data))
    }

    /// Starts an upload of `key`; `sha256`, when known now, is recorded with the object and
    /// checked against the bytes before the upload completes.
    pub fn upload(self: &Arc<Self>, bucket: &str, key: &str, sha256: Option<String>, content_type: Option<String>) -> Upload {
        Upload {
            client: Arc::clone(self),
            bucket: bucket.to_string(),
            key: key.to_string(),
            expect: sha256,
            content_type,
            metadata: BTreeMap::new(),
            buf: Vec::new(),
            hasher: Sha256::new(),
            size: 0,
            id: None,
            parts: Vec::new(),
            done: false,
        }
    }

    /// Writes `data` as `key` in one go.
    pub async fn put(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        data: &[u8],
        content_type: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Object, S3Error> {
        let sha = hex::encode(Sha256::digest(data));
        let mut u = self.upload(bucket, key, Some(sha), content_type);
        u.metadata = metadata;
        u.write(data).await?;
        u.finish().await
    }

    /// Copies an object (a version of it) within the store, metadata included.
    pub async fn copy(&self, from: (&str, &str, Option<&str>), to: (&str, &str)) -> Result<Object, S3Error> {
        let (sb, sk, sv) = from;
        // The source as a path of the endpoint, each key segment percent-encoded.
        let src = Bucket::new(self.endpoint.clone(), UrlStyle::Path, sb.to_string(), self.region.clone())
            .map_err(|e| S3Error::Check(format!("bucket `{sb}`: {e}")))?
            .object_url(sk)
            .map_err(|e| S3Error::Check(format!("key `{sk}`: {e}")))?;
        let mut source = src.path().to_string();
        if let Some(v) = sv {
            source.push_str(&format!("?versionId={v}"));
        }
        let headers = vec![("x-amz-copy-source".to_string(), source)];
        let resp = self.send(Method::Put, to.0, Some(to.1), &[], &headers, Body::None, true).await?;
        Self::xml(resp).await?;
        self.head(to.0, to.1, None)
            .await?
            .ok_or_else(|| S3Error::Check(format!("{} was copied but is not there", describe(to.0, Some(to.1)))))
    }

    /// Deletes `key` (a version of it, when given; else, in a versioned bucket, a delete
    /// marker hides it and its versions stay).
    pub async fn delete(&self, bucket: &str, key: &str, version: Option<&str>) -> Result<Deleted, S3Error> {
        let q = version_query(version);
        let resp = self.send(Method::Delete, bucket, Some(key), &q, &[], Body::None, true).await?;
        let h = resp.headers();
        Ok(Deleted {
            bucket: bucket.to_string(),
            key: key.to_string(),
            version_id: header(h, "x-amz-version-id").or(version.map(str::to_string)),
            delete_marker: header(h, "x-amz-delete-marker").as_deref() == Some("true"),
        })
    }

    /// A URL anyone holding it may use to GET or PUT `key` for `expires`.
    pub fn presign(&self, put: bool, bucket: &str, key: &str, expires: Duration) -> Result<url::Url, S3Error> {
        let method = if put { Method::Put } else { Method::Get };
        self.signed(method, bucket, Some(key), &[], &[], expires)
    }
}

/// An object being read.
pub struct Reader {
    resp: reqwest::Response,
    hasher: Sha256,
    read: u64,
    /// The length the store announced: an answer that ends short is an error, never a
    /// shorter object.
    expected: Option<u64>,
}

impl Reader {
    /// The next bytes; None at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, S3Error> {
        let c = self
            .resp
            .chunk()
            .await
            .map_err(|e| S3Error::Transport(format!("reading the object: {}", crate::util::error_chain(&e.without_url()))))?;
        match &c {
            Some(c) => {
                self.hasher.update(c);
                self.read += c.len() as u64;
            }
            None => {
                if let Some(n) = self.expected
                    && n != self.read
                {
                    return Err(S3Error::Transport(format!("the store's answer ended after {} of {n} bytes", self.read)));
                }
            }
        }
        Ok(c)
    }

    /// The SHA-256 of what was read so far.
    pub fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    pub fn read(&self) -> u64 {
        self.read
    }
}

/// An upload in progress: bytes go out a part at a time (a single PUT when they fit in one).
pub struct Upload {
    client: Arc<Client>,
    bucket: String,
    key: String,
    expect: Option<String>,
    content_type: Option<String>,
    /// User metadata (`x-amz-meta-NAME`), names in lowercase.
    pub metadata: BTreeMap<String, String>,
    buf: Vec<u8>,
    hasher: Sha256,
    size: u64,
    id: Option<String>,
    parts: Vec<(u32, String)>,
    /// Completed or aborted: nothing left to clean up.
    done: bool,
}

impl Drop for Upload {
    /// An upload dropped midway (its run was cancelled, a host went away) aborts its parts in
    /// the background, so none linger in the store.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (Some(id), Ok(rt)) = (self.id.take(), tokio::runtime::Handle::try_current()) else { return };
        let (client, bucket, key) = (Arc::clone(&self.client), self.bucket.clone(), self.key.clone());
        rt.spawn(async move {
            let q = [("uploadId", id)];
            if let Err(e) = client.send(Method::Delete, &bucket, Some(&key), &q, &[], Body::None, true).await {
                tracing::warn!(%bucket, %key, error = %e, "aborting a dropped multipart upload");
            }
        });
    }
}

impl Upload {
    fn headers(&self, sha: Option<&str>) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if let Some(ct) = &self.content_type {
            h.push(("content-type".to_string(), ct.clone()));
        }
        for (k, v) in &self.metadata {
            h.push((format!("x-amz-meta-{}", k.to_ascii_lowercase()), v.clone()));
        }
        if let Some(s) = sha.or(self.expect.as_deref()) {
            h.push(("x-amz-meta-sha256".to_string(), s.to_string()));
        }
        h
    }

    /// Takes the next bytes; a full part is sent before this returns.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), S3Error> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        let part = self.client.part_size as usize;
        while self.buf.len() >= part {
            let rest = self.buf.split_off(part);
            let full = std::mem::replace(&mut self.buf, rest);
            self.send_part(full.into()).await?;
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    async fn send_part(&mut self, part: Bytes) -> Result<(), S3Error> {
        let c = Arc::clone(&self.client);
        if self.id.is_none() {
            let headers = self.headers(None);
            let resp =
                c.send(Method::Post, &self.bucket, Some(&self.key), &[("uploads", String::new())], &headers, Body::None, true).await?;
            let text = Client::xml(resp).await?;
            let doc = parse_xml(&text)?;
            let id = child(doc.root_element(), "UploadId").ok_or_else(|| S3Error::Transport("no UploadId in the answer".into()))?;
            self.id = Some(id);
        }
        let id = self.id.clone().expect("set above");
        let n = self.parts.len() as u32 + 1;
        let q = [("partNumber", n.to_string()), ("uploadId", id)];
        let resp = c.send(Method::Put, &self.bucket, Some(&self.key), &q, &[], Body::Bytes(part), false).await?;
        let etag = header(resp.headers(), "etag").ok_or_else(|| S3Error::Transport(format!("no ETag for part {n}")))?;
        self.parts.push((n, etag));
        Ok(())
    }

    /// Sends what is left and completes the object; a checksum that differs from the one
    /// given at the start aborts it (nothing is left in the store).
    pub async fn finish(mut self) -> Result<Object, S3Error> {
        let sha = hex::encode(self.hasher.clone().finalize());
        if let Some(want) = &self.expect
            && *want != sha
        {
            let e = S3Error::Check(format!(
                "{}: the bytes sent hash to {sha}, not the expected {want}; the upload was abandoned",
                describe(&self.bucket, Some(&self.key))
            ));
            self.abort().await;
            return Err(e);
        }
        let c = Arc::clone(&self.client);
        let (bucket, key) = (self.bucket.clone(), self.key.clone());
        if self.id.is_none() {
            use base64::Engine;
            let mut headers = self.headers(Some(&sha));
            let md5 = base64::engine::general_purpose::STANDARD.encode(md5_of(&self.buf));
            headers.push(("content-md5".to_string(), md5));
            let body = Bytes::from(std::mem::take(&mut self.buf));
            let resp = c.send(Method::Put, &bucket, Some(&key), &[], &headers, Body::Bytes(body), false).await?;
            self.done = true;
            let h = resp.headers();
            return Ok(Object {
                bucket,
                key,
                size: self.size,
                etag: header(h, "etag").map(|e| unquote(&e)),
                version_id: header(h, "x-amz-version-id"),
                sha256: Some(sha),
                content_type: self.content_type.clone(),
                metadata: self.metadata.clone(),
                ..Default::default()
            });
        }
        let done = async {
            if !self.buf.is_empty() {
                let last = Bytes::from(std::mem::take(&mut self.buf));
                self.send_part(last).await?;
            }
            let mut body = String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
            for (n, etag) in &self.parts {
                body.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>", xml_escape(etag)));
            }
            body.push_str("</CompleteMultipartUpload>");
            let q = [("uploadId", self.id.clone().expect("multipart"))];
            let resp = c.send(Method::Post, &bucket, Some(&key), &q, &[], Body::Bytes(body.into()), true).await?;
            let version = header(resp.headers(), "x-amz-version-id");
            let text = Client::xml(resp).await?;
            let doc = parse_xml(&text)?;
            Ok::<_, S3Error>((child(doc.root_element(), "ETag").map(|e| unquote(&e)), version))
        }
        .await;
        if done.is_ok() {
            self.done = true;
        }
        match done {
            Ok((etag, version_id)) => Ok(Object {
                bucket,
                key,
                size: self.size,
                etag,
                version_id,
                sha256: Some(sha),
                content_type: self.content_type.clone(),
                metadata: self.metadata.clone(),
                ..Default::default()
            }),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Gives up: a started multipart upload is aborted, so its parts do not linger.
    pub async fn abort(mut self) {
        self.done = true;
        if let Some(id) = &self.id {
            let q = [("uploadId", id.clone())];
            if let Err(e) = self.client.send(Method::Delete, &self.bucket, Some(&self.key), &q, &[], Body::None, true).await {
                tracing::warn!(bucket = %self.bucket, key = %self.key, error = %e, "aborting a multipart upload");
            }
        }
    }
}

fn md5_of(data: &[u8]) -> Vec<u8> {
    use md5::Digest as _;
    md5::Md5::digest(data).to_vec()
}

/// `bucket/key`, for messages.
pub fn describe(bucket: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("{bucket}/{k}"),
        None => bucket.to_string(),
    }
}

fn version_query(version: Option<&str>) -> Vec<(&'static str, String)> {
    version.map(|v| vec![("versionId", v.to_string())]).unwrap_or_default()
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

/// A timestamp as RFC 3339 UTC (S3 gives ISO 8601 in XML and an HTTP date in headers).
fn iso(s: &str) -> String {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc2822(s) {
        return t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    }
    s.to_string()
}

fn object_of(bucket: &str, key: &str, resp: &reqwest::Response) -> Object {
    let h = resp.headers();
    let mut metadata = BTreeMap::new();
    for (name, v) in h {
        if let Some(m) = name.as_str().strip_prefix("x-amz-meta-")
            && let Ok(v) = v.to_str()
        {
            metadata.insert(m.to_string(), v.to_string());
        }
    }
    let checksum = header(h, "x-amz-checksum-sha256").and_then(|b| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(b.trim()).ok().filter(|d| d.len() == 32).map(hex::encode)
    });
    let sha256 = metadata
        .get("sha256")
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|s| s.to_ascii_lowercase())
        .or(checksum);
    Object {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size: header(h, "content-length").and_then(|s| s.parse().ok()).unwrap_or(0),
        etag: header(h, "etag").map(|e| unquote(&e)),
        modified: header(h, "last-modified").map(|m| iso(&m)),
        version_id: header(h, "x-amz-version-id"),
        sha256,
        content_type: header(h, "content-type"),
        metadata,
        ..Default::default()
    }
}

/// The store's error from an answer that is not 2xx.
async fn error_of(resp: reqwest::Response) -> S3Error {
    let status = resp.status().as_u16();
    let mut resp = resp;
    let mut body = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        body.extend_from_slice(&c);
        if body.len() >= ERROR_BODY {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    if let Some(e) = parse_error(status, &text) {
        return e;
    }
    // No body (HEAD) or not S3's: name the status as S3 would.
    let code = match status {
        301 | 307 => "PermanentRedirect",
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        412 => "PreconditionFailed",
        _ => "HttpError",
    };
    let message = crate::util::truncate(text.trim(), 300).to_string();
    S3Error::Store { status, code: code.into(), message }
}

/// `<Error><Code>..</Code><Message>..</Message></Error>`, when `text` is one.
fn parse_error(status: u16, text: &str) -> Option<S3Error> {
    if !text.contains("<Error") {
        return None;
    }
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    if !root.has_tag_name_local("Error") {
        return None;
    }
    let code = child(root, "Code").unwrap_or_else(|| "Error".into());
    let message = child(root, "Message").unwrap_or_default();
    let status = if status == 200 { 500 } else { status };
    Some(S3Error::Store { status, code, message })
}

trait LocalName {
    fn has_tag_name_local(&self, name: &str) -> bool;
}

impl LocalName for roxmltree::Node<'_, '_> {
    fn has_tag_name_local(&self, name: &str) -> bool {
        self.is_element() && self.tag_name().name() == name
    }
}

/// The store's XML answer, parsed.
fn parse_xml(text: &str) -> Result<roxmltree::Document<'_>, S3Error> {
    roxmltree::Document::parse(text).map_err(|e| S3Error::Transport(format!("the store's answer is not XML: {e}")))
}

/// What every listing says of an object (`Contents`, `Version`, `DeleteMarker`).
fn listed(bucket: &str, n: roxmltree::Node<'_, '_>) -> Object {
    Object {
        bucket: bucket.to_string(),
        key: child(n, "Key").unwrap_or_default(),
        size: child(n, "Size").and_then(|s| s.parse().ok()).unwrap_or(0),
        etag: child(n, "ETag").map(|e| unquote(&e)),
        modified: child(n, "LastModified").map(|m| iso(&m)),
        ..Default::default()
    }
}

/// The text of `n`'s first child element named `name`.
fn child(n: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    n.children().find(|c| c.has_tag_name_local(name)).map(|c| c.text().unwrap_or("").to_string())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stores_error_passes_through() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>x</Key></Error>"#;
        let e = parse_error(404, xml).unwrap();
        assert!(matches!(&e, S3Error::Store { status: 404, code, .. } if code == "NoSuchKey"), "{e:?}");
        assert_eq!(e.to_string(), "NoSuchKey: The specified key does not exist. (HTTP 404)");
        assert!(parse_error(200, "<CopyObjectResult/>").is_none());
        // An error inside a 200 answer is still an error.
        assert_eq!(parse_error(200, "<Error><Code>InternalError</Code></Error>").unwrap().to_string(), "InternalError (HTTP 500)");
    }

    #[test]
    fn timestamps_read_as_rfc3339() {
        assert_eq!(iso("2026-12-05T10:00:00.000Z"), "2026-12-05T10:00:00Z");
        assert_eq!(iso("Sat, 05 Dec 2026 10:00:00 GMT"), "2026-12-05T10:00:00Z");
    }
}
