//! A plain Zabbix JSON-RPC client: logs in (user + password, or an API token), detects the API
//! version, places the session where that version wants it (the body's `auth` before 6.4, an
//! `Authorization: Bearer` header from 6.4), and logs in again once when the session expired.

use std::time::Duration;

use serde_json::{Value, json};

/// How to log in.
#[derive(Clone)]
pub enum Login {
    Password { user: String, password: String },
    Token(String),
}

/// An error from Zabbix itself (its code, message and data) or from getting there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZabbixError {
    Api { code: i64, message: String, data: String },
    Transport(String),
}

impl std::fmt::Display for ZabbixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZabbixError::Api { code, message, data } if data.is_empty() => write!(f, "Zabbix API error {code}: {message}"),
            ZabbixError::Api { code, message, data } => write!(f, "Zabbix API error {code}: {message} {data}"),
            ZabbixError::Transport(m) => f.write_str(m),
        }
    }
}

impl ZabbixError {
    /// The session is gone (expired, logged out): worth one new login.
    fn session_lost(&self) -> bool {
        match self {
            ZabbixError::Api { data, message, .. } => {
                let t = format!("{message} {data}").to_ascii_lowercase();
                t.contains("session terminated") || t.contains("not authori") || t.contains("re-login")
            }
            ZabbixError::Transport(_) => false,
        }
    }
}

struct Session {
    /// Session id or API token.
    auth: Option<String>,
    /// (major, minor) from apiinfo.version.
    version: Option<(u32, u32)>,
}

pub struct Client {
    pub name: String,
    url: String,
    login: Login,
    http: reqwest::Client,
    session: tokio::sync::Mutex<Session>,
}

impl Client {
    pub fn new(name: &str, url: &str, login: Login, timeout: Duration, ca_pem: Option<&[u8]>) -> Result<Client, String> {
        use crate::kit::http::{Options, Trust, client};
        let trust = ca_pem.map_or(Trust::System, |pem| Trust::Also(pem.to_vec()));
        let connect_timeout = timeout.min(Duration::from_secs(10));
        let http = client(Options { timeout, connect_timeout, trust, redirects: true, read_timeout: None })
            .map_err(|m| format!("zabbix.{name}: {m}"))?;
        Ok(Client {
            name: name.into(),
            url: url.into(),
            login,
            http,
            session: tokio::sync::Mutex::new(Session { auth: None, version: None }),
        })
    }

    async fn post(&self, method: &str, params: &Value, auth: Option<&str>, bearer: bool) -> Result<Value, ZabbixError> {
        let mut body = json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": 1 });
        let mut req = self.http.post(&self.url).header("Content-Type", "application/json-rpc");
        if let Some(a) = auth {
            if bearer {
                req = req.bearer_auth(a);
            } else {
                body["auth"] = json!(a);
            }
        }
        let resp = req
            .json(&body)
            .send()
            .await
            .map_err(|e| ZabbixError::Transport(format!("{method} at {}: {}", self.url, crate::util::error_chain(&e))))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ZabbixError::Transport(format!("{method}: reading the answer: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            let head: String = text.chars().take(200).collect();
            ZabbixError::Transport(format!("{method} at {}: HTTP {status}, not a JSON-RPC answer: {head}", self.url))
        })?;
        if let Some(err) = v.get("error") {
            return Err(ZabbixError::Api {
                code: err["code"].as_i64().unwrap_or(0),
                message: err["message"].as_str().unwrap_or("").to_string(),
                data: err["data"].as_str().unwrap_or("").to_string(),
            });
        }
        v.get("result").cloned().ok_or_else(|| ZabbixError::Transport(format!("{method}: the answer has no result")))
    }

    /// The API version (asked once).
    pub async fn version(&self) -> Result<(u32, u32), ZabbixError> {
        let mut s = self.session.lock().await;
        self.version_locked(&mut s).await
    }

    async fn version_locked(&self, s: &mut Session) -> Result<(u32, u32), ZabbixError> {
        if let Some(v) = s.version {
            return Ok(v);
        }
        let v = self.post("apiinfo.version", &json!({}), None, false).await?;
        let text = v.as_str().unwrap_or("");
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let ver = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if ver < (5, 0) {
            return Err(ZabbixError::Transport(format!("Zabbix {text} is too old: opslet needs 5.0 or newer")));
        }
        s.version = Some(ver);
        Ok(ver)
    }

    async fn login_locked(&self, s: &mut Session) -> Result<String, ZabbixError> {
        let ver = self.version_locked(s).await?;
        let auth = match &self.login {
            Login::Token(t) => t.clone(),
            Login::Password { user, password } => {
                // 5.4 renamed `user` to `username` (6.4 dropped the old name).
                let key = if ver >= (5, 4) { "username" } else { "user" };
                let r = self.post("user.login", &json!({ key: user, "password": password }), None, false).await?;
                r.as_str().ok_or_else(|| ZabbixError::Transport("user.login did not return a session".into()))?.to_string()
            }
        };
        s.auth = Some(auth.clone());
        Ok(auth)
    }

    /// Calls `method`, logging in first if needed and once more if the session was lost.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ZabbixError> {
        let mut s = self.session.lock().await;
        let ver = self.version_locked(&mut s).await?;
        let bearer = ver >= (6, 4);
        let auth = match &s.auth {
            Some(a) => a.clone(),
            None => self.login_locked(&mut s).await?,
        };
        drop(s);
        match self.post(method, &params, Some(&auth), bearer).await {
            Err(e) if e.session_lost() && matches!(self.login, Login::Password { .. }) => {
                let mut s = self.session.lock().await;
                let fresh = if s.auth.as_deref() == Some(auth.as_str()) {
                    self.login_locked(&mut s).await?
                } else {
                    s.auth.clone().unwrap_or_default()
                };
                drop(s);
                self.post(method, &params, Some(&fresh), bearer).await
            }
            other => other,
        }
    }
}
