//! A plain OpenStack client for the `virt` module: Keystone v3 (password or application
//! credential), the service catalog for endpoints, Nova (compute, with its microversion chosen
//! per call within what the cloud offers) and Glance (images). Plain reqwest; nothing here
//! knows Lua.
//!
//! A token is kept until shortly before it expires; an answer of 401 (a token revoked or expired
//! early) logs in again once and repeats the request.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use super::settings::{OsConn, OsLogin};

/// How a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsError {
    /// The cloud answered with an error: its HTTP status and message.
    Api { status: u16, message: String },
    /// No answer, or one that could not be read.
    Transport(String),
    /// What opslet checked itself (a state not reached in time, no endpoint in the catalog).
    Check(String),
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OsError::Api { status, message } => write!(f, "{message} (HTTP {status})"),
            OsError::Transport(m) | OsError::Check(m) => f.write_str(m),
        }
    }
}

impl OsError {
    pub fn status(&self) -> Option<u16> {
        match self {
            OsError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A token and what came with it.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    /// When to log in again (a minute before it expires).
    renew_at: Instant,
    catalog: Value,
    project_id: Option<String>,
    roles: Vec<String>,
}

/// The compute API's microversion range, as the cloud announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micro(pub u32, pub u32);

impl Micro {
    fn parse(s: &str) -> Option<Micro> {
        let (a, b) = s.split_once('.')?;
        Some(Micro(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for Micro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// One cloud.
pub struct Cloud {
    pub name: String,
    conf: OsConn,
    /// The password or the application credential's secret.
    secret: String,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
    /// Serializes logins (one at a time, the others wait and use its token).
    login: tokio::sync::Mutex<()>,
    micro: tokio::sync::OnceCell<(Micro, Micro)>,
    /// How many times a token was obtained (for tests of re-authentication).
    pub logins: std::sync::atomic::AtomicU32,
}

/// Which API a request is for.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Compute,
    Image,
}

impl Service {
    fn kind(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Image => "image",
        }
    }
}

impl Cloud {
    pub fn new(name: &str, conf: &OsConn, secret: String) -> Result<Cloud, String> {
        let ca = crate::kit::http::read_ca(conf.ca_file.as_deref()).map_err(|m| format!("[virt.{name}] {m}"))?;
        let trust = ca.map_or(crate::kit::http::Trust::System, crate::kit::http::Trust::Also);
        let http = crate::kit::http::client(crate::kit::http::Options {
            timeout: conf.timeout,
            connect_timeout: conf.timeout.min(Duration::from_secs(15)),
            trust,
            // A redirect would carry the token elsewhere.
            redirects: false,
            read_timeout: None,
        })
        .map_err(|m| format!("[virt.{name}] {m}"))?;
        Ok(Cloud {
            name: name.to_string(),
            conf: conf.clone(),
            secret,
            http,
            token: Mutex::new(None),
            login: tokio::sync::Mutex::new(()),
            micro: tokio::sync::OnceCell::new(),
            logins: Default::default(),
        })
    }

    /// A valid token: the kept one, or a new one.
    async fn token(&self) -> Result<Token, OsError> {
        if let Some(t) = self.token.lock().clone()
            && Instant::now() < t.renew_at
        {
            return Ok(t);
        }
        let _one = self.login.lock().await;
        if let Some(t) = self.token.lock().clone()
            && Instant::now() < t.renew_at
        {
            return Ok(t);
        }
        let t = self.authenticate().await?;
        *self.token.lock() = Some(t.clone());
        Ok(t)
    }

    /// The token held now, if any (for diagnostics and tests; never logged).
    pub fn current_token(&self) -> Option<String> {
        self.token.lock().as_ref().map(|t| t.value.clone())
    }

    fn forget(&self, value: &str) {
        let mut t = self.token.lock();
        if t.as_ref().is_some_and(|t| t.value == value) {
            *t = None;
        }
    }

    async fn authenticate(&self) -> Result<Token, OsError> {
        let body = match &self.conf.login {
            OsLogin::Password { user, user_domain, project, project_domain, .. } => json!({ "auth": {
                "identity": { "methods": ["password"], "password": { "user": {
                    "name": user, "domain": { "name": user_domain }, "password": self.secret } } },
                "scope": { "project": { "name": project, "domain": { "name": project_domain } } } } }),
            OsLogin::AppCredential { id, .. } => json!({ "auth": {
                "identity": { "methods": ["application_credential"],
                    "application_credential": { "id": id, "secret": self.secret } } } }),
        };
        let url = format!("{}/auth/tokens", self.conf.auth_url);
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| OsError::Transport(format!("Keystone at {}: {}", self.conf.auth_url, crate::util::error_chain(&e))))?;
        let status = resp.status().as_u16();
        let header = resp.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_string);
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let who = match &self.conf.login {
                OsLogin::Password { user, project, .. } => format!("as {user} in project {project}"),
                OsLogin::AppCredential { id, .. } => format!("with application credential {id}"),
            };
            return Err(OsError::Api { status, message: format!("Keystone refused the login {who}: {}", api_message(&v)) });
        }
        let value = header.ok_or_else(|| OsError::Transport("Keystone answered without X-Subject-Token".into()))?;
        let t = &v["token"];
        let lifetime = t["expires_at"]
            .as_str()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .map(|e| (e.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(3600));
        self.logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Token {
            value,
            renew_at: Instant::now() + lifetime.saturating_sub(Duration::from_secs(60)),
            catalog: t["catalog"].clone(),
            project_id: t["project"]["id"].as_str().map(str::to_string),
            roles: t["roles"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str().map(str::to_string)).collect(),
        })
    }

    /// The endpoint of `service` in the token's catalog (interface and region as configured).
    fn endpoint(&self, t: &Token, service: Service) -> Result<String, OsError> {
        let kind = service.kind();
        let entry = t
            .catalog
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["type"] == kind)
            .ok_or_else(|| OsError::Check(format!("the service catalog of {} has no `{kind}` service", self.name)))?;
        let url = entry["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["interface"] == self.conf.interface.as_str())
            .find(|e| self.conf.region.as_deref().is_none_or(|r| e["region_id"] == r || e["region"] == r))
            .and_then(|e| e["url"].as_str())
            .ok_or_else(|| {
                OsError::Check(format!(
                    "the `{kind}` service of {} has no {} endpoint{}",
                    self.name,
                    self.conf.interface,
                    self.conf.region.as_deref().map(|r| format!(" in region {r}")).unwrap_or_default()
                ))
            })?;
        Ok(url.trim_end_matches('/').to_string())
    }

    /// The project the token is scoped to, and whether it holds the admin role there.
    pub async fn whoami(&self) -> Result<(Option<String>, bool), OsError> {
        let t = self.token().await?;
        Ok((t.project_id.clone(), t.roles.iter().any(|r| r == "admin")))
    }

    /// The compute microversions the cloud offers (min, max), asked once.
    pub async fn microversions(&self) -> Result<(Micro, Micro), OsError> {
        self.micro
            .get_or_try_init(|| async {
                let v = self.send(Service::Compute, reqwest::Method::GET, "/", None, None).await?;
                let ver = &v["version"];
                let min = ver["min_version"].as_str().and_then(Micro::parse).unwrap_or(Micro(2, 1));
                let max = ver["version"].as_str().and_then(Micro::parse).unwrap_or(Micro(2, 1));
                Ok((min, max))
            })
            .await
            .copied()
    }

    /// The microversion a call asks for: `want` (what the call's fields need), no higher than
    /// the cloud offers; below `need` the call is refused with the cloud's range named.
    pub async fn micro(&self, want: Micro, need: Micro) -> Result<Micro, OsError> {
        let (min, max) = self.microversions().await?;
        let pick = want.min(max).max(min);
        if pick < need {
            return Err(OsError::Check(format!(
                "{} offers compute microversions {min} to {max}; this call needs {need} or later",
                self.name
            )));
        }
        Ok(pick)
    }

    /// One request to `service` at `path` (relative to its endpoint); JSON in and out. A 401
    /// logs in again once and repeats it.
    pub async fn send(
        &self,
        service: Service,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        micro: Option<Micro>,
    ) -> Result<Value, OsError> {
        for attempt in 0..2 {
            let t = self.token().await?;
            let base = self.endpoint(&t, service)?;
            // The compute endpoint's root is its version document.
            let url = if path == "/" { format!("{base}/") } else { format!("{base}{path}") };
            let mut req = self.http.request(method.clone(), &url).header("X-Auth-Token", &t.value).header("Accept", "application/json");
            if let Some(m) = micro {
                req = req.header("OpenStack-API-Version", format!("compute {m}")).header("X-OpenStack-Nova-API-Version", m.to_string());
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| OsError::Transport(format!("{method} {url}: {}", crate::util::error_chain(&e))))?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                self.forget(&t.value);
                continue;
            }
            let text = resp.text().await.map_err(|e| OsError::Transport(format!("{method} {url}: reading the answer: {e}")))?;
            let v: Value = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
            if !(200..300).contains(&status) {
                return Err(OsError::Api { status, message: api_message(&v) });
            }
            return Ok(v);
        }
        unreachable!("the loop returns")
    }
}

/// The message of an OpenStack error body: Nova's `{"itemNotFound": {"message": ...}}`,
/// Keystone's `{"error": {"message": ...}}`, or Glance's text.
pub fn api_message(v: &Value) -> String {
    if let Some(o) = v.as_object() {
        for (kind, inner) in o {
            if let Some(m) = inner["message"].as_str() {
                return if kind == "error" { m.to_string() } else { format!("{kind}: {m}") };
            }
        }
        if let Some(m) = v["message"].as_str() {
            return m.to_string();
        }
    }
    match v {
        Value::String(s) => crate::util::truncate(s.trim(), 300).to_string(),
        Value::Null => "no details".into(),
        other => crate::util::truncate(&other.to_string(), 300).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_microversions_read_as_the_cloud_wrote_them() {
        assert_eq!(
            api_message(&json!({ "itemNotFound": { "code": 404, "message": "Instance x could not be found." } })),
            "itemNotFound: Instance x could not be found."
        );
        assert_eq!(
            api_message(
                &json!({ "error": { "code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized" } })
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(api_message(&Value::String("<html>503</html>".into())), "<html>503</html>");
        assert!(Micro::parse("2.96") > Micro::parse("2.9"));
        assert_eq!(Micro::parse("2.37"), Some(Micro(2, 37)));
        assert_eq!(Micro(2, 1).to_string(), "2.1");
    }
}
