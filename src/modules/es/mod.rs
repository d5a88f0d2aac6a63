//! The `es` host module: read-only search over Elasticsearch or OpenSearch.
//!
//! `[permissions] es = ["read"]`. Connections are `[es.NAME]` in opslet.toml (basic auth or an
//! API key from secrets, optional CA file); module functions use the default connection,
//! `es.connection(NAME)` another one. `es.scan` walks every hit with a point in time and
//! `search_after`, one page at a time, so a large result never sits in memory whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, LuaSerdeExt, Table, Value as LuaValue};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::kit::http::{self, Trust};
use crate::kit::{Grant, HostModule};
pub mod settings;

use crate::config::Config;
use crate::error::Error;
use crate::runtime::context::RunCtx;
use settings::EsConn;

pub struct EsModule {
    conns: Arc<BTreeMap<String, EsConn>>,
    clients: Arc<Mutex<HashMap<String, Arc<Client>>>>,
}

impl EsModule {
    pub fn new(conns: BTreeMap<String, EsConn>) -> EsModule {
        EsModule { conns: Arc::new(conns), clients: Arc::default() }
    }
}

/// This module's calls, for their errors (`es.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("es");

enum Auth {
    None,
    Basic(String, String),
    ApiKey(String),
}

/// A plain REST client for one cluster.
pub struct Client {
    name: String,
    base: String,
    auth: Auth,
    http: reqwest::Client,
    /// OpenSearch names point-in-time endpoints differently (detected from `GET /`).
    opensearch: tokio::sync::OnceCell<bool>,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("{}/{}", self.base.trim_end_matches('/'), path.trim_start_matches('/'));
        let mut req = self.http.request(method.clone(), &url);
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
            Auth::ApiKey(k) => req.header("Authorization", format!("ApiKey {k}")),
        };
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("{method} {url}: {}", crate::util::error_chain(&e)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.chars().take(300).collect()));
        if !status.is_success() {
            // Elasticsearch's error: {"error": {"type", "reason", "root_cause": [...]}, "status"}.
            let e = &v["error"];
            let root = &e["root_cause"][0];
            let (ty, reason) = if root.is_object() { (&root["type"], &root["reason"]) } else { (&e["type"], &e["reason"]) };
            let what = match (ty.as_str(), reason.as_str()) {
                (Some(t), Some(r)) => format!("{t}: {r}"),
                _ => e.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
            };
            return Err(format!("{} answered HTTP {}: {what}", self.name, status.as_u16()));
        }
        Ok(v)
    }

    async fn is_opensearch(&self) -> Result<bool, String> {
        self.opensearch
            .get_or_try_init(|| async {
                let v = self.send(reqwest::Method::GET, "/", None).await?;
                Ok::<bool, String>(v["version"]["distribution"] == "opensearch")
            })
            .await
            .copied()
    }
}

fn check_index(call: &str, index: &str) -> mlua::Result<()> {
    let ok = !index.is_empty()
        && index.len() <= 255
        && index.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.*,+".contains(&b))
        && !index.starts_with(['-', '_', '+'])
        // No `.`/`..` segments (they would leave the base URL's path) and no hidden indices.
        && index.split(',').all(|part| !part.is_empty() && !part.starts_with('.'));
    if ok { Ok(()) } else { Err(LUA.err(call, format!("`{index}` is not an index name or pattern"))) }
}

#[derive(Clone)]
struct State {
    conns: Arc<BTreeMap<String, EsConn>>,
    clients: Arc<Mutex<HashMap<String, Arc<Client>>>>,
    ctx: Arc<RunCtx>,
    grant: Grant,
}

impl State {
    fn client(&self, call: &str, conn: Option<&str>) -> mlua::Result<Arc<Client>> {
        self.grant.require(call, "read")?;
        let conns: Vec<(&str, bool)> = self.conns.iter().map(|(n, c)| (n.as_str(), c.default)).collect();
        let name = crate::kit::pick_connection("es", "es", &conns, conn).map_err(|m| LUA.err(call, m))?;
        if let Some(c) = self.clients.lock().get(&name) {
            return Ok(Arc::clone(c));
        }
        let conf = &self.conns[&name];
        let owner = format!("[es.{name}]");
        let secret = |s: &str| crate::kit::read_secret(&self.ctx, &owner, s).map_err(|m| LUA.err(call, m));
        let auth = match (&conf.user, &conf.password_secret, &conf.api_key_secret) {
            (Some(u), Some(p), None) => Auth::Basic(u.clone(), secret(p)?),
            (None, None, Some(k)) => Auth::ApiKey(secret(k)?),
            _ => Auth::None,
        };
        let timeout = crate::util::parse_duration(&conf.timeout).unwrap_or(Duration::from_secs(30));
        let ca = http::read_ca(conf.ca_file.as_deref()).map_err(|m| LUA.err(call, format!("{owner} {m}")))?;
        let trust = ca.map_or(Trust::System, Trust::Also);
        let http = http::client(http::Options { timeout, connect_timeout: timeout, trust, redirects: true })
            .map_err(|m| LUA.err(call, format!("{owner} {m}")))?;
        let c = Arc::new(Client { name: name.clone(), base: conf.url.clone(), auth, http, opensearch: Default::default() });
        self.clients.lock().insert(name, Arc::clone(&c));
        Ok(c)
    }
}

fn to_json(lua: &Lua, v: Option<LuaValue>) -> mlua::Result<Value> {
    match v {
        None | Some(LuaValue::Nil) => Ok(json!({ "match_all": {} })),
        Some(v) => lua.from_value(v),
    }
}

fn hits(v: &Value) -> Vec<Value> {
    v["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| json!({ "id": h["_id"], "index": h["_index"], "score": h["_score"], "source": h["_source"], "sort": h["sort"] }))
        .collect()
}

/// Search options from Lua: size, from, sort, source.
fn search_body(lua: &Lua, call: &str, query: Value, opts: Option<Table>) -> mlua::Result<Value> {
    let mut body = json!({ "query": query });
    if let Some(o) = opts {
        for pair in o.pairs::<String, LuaValue>() {
            let (k, v) = pair?;
            let v: Value = lua.from_value(v)?;
            match k.as_str() {
                "size" | "from" | "sort" => body[k.as_str()] = v,
                "source" => body["_source"] = v,
                other => return Err(LUA.err(call, format!("unknown option `{other}` (known: size, from, sort, source)"))),
            }
        }
    }
    if body["size"].as_u64().is_some_and(|s| s > 10_000) {
        return Err(LUA.err(call, "size: at most 10000 (use es.scan for more)"));
    }
    Ok(body)
}

fn functions(lua: &Lua, st: &State, conn: Option<String>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "search",
        lua.create_async_function(move |lua, (index, query, opts): (String, Option<LuaValue>, Option<Table>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                check_index("search", &index)?;
                let client = s.client("search", c.as_deref())?;
                let body = search_body(&lua, "search", to_json(&lua, query)?, opts)?;
                let v =
                    client.send(reqwest::Method::POST, &format!("{index}/_search"), Some(&body)).await.map_err(|m| LUA.err("search", m))?;
                let out =
                    json!({ "total": v["hits"]["total"]["value"].as_u64().or(v["hits"]["total"].as_u64()).unwrap_or(0), "hits": hits(&v) });
                crate::kit::json_to_lua(&lua, &out)
            }
        })?,
    )?;
    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "count",
        lua.create_async_function(move |lua, (index, query): (String, Option<LuaValue>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                check_index("count", &index)?;
                let client = s.client("count", c.as_deref())?;
                let body = json!({ "query": to_json(&lua, query)? });
                let v =
                    client.send(reqwest::Method::POST, &format!("{index}/_count"), Some(&body)).await.map_err(|m| LUA.err("count", m))?;
                Ok(v["count"].as_u64().unwrap_or(0))
            }
        })?,
    )?;
    let (s, c) = (st.clone(), conn.clone());
    t.set(
        "aggs",
        lua.create_async_function(move |lua, (index, aggs, query): (String, LuaValue, Option<LuaValue>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                check_index("aggs", &index)?;
                let client = s.client("aggs", c.as_deref())?;
                let aggs: Value = lua.from_value(aggs)?;
                if !aggs.is_object() {
                    return Err(
                        LUA.err("aggs", "aggs: a table of named aggregations, like { by_level = { terms = { field = \"level\" } } }")
                    );
                }
                let body = json!({ "size": 0, "query": to_json(&lua, query)?, "aggs": aggs });
                let v =
                    client.send(reqwest::Method::POST, &format!("{index}/_search"), Some(&body)).await.map_err(|m| LUA.err("aggs", m))?;
                crate::kit::json_to_lua(&lua, &v["aggregations"])
            }
        })?,
    )?;
    let (s, c) = (st.clone(), conn);
    t.set(
        "scan",
        lua.create_async_function(move |lua, (index, query, each, opts): (String, Option<LuaValue>, Function, Option<Table>)| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                check_index("scan", &index)?;
                let client = s.client("scan", c.as_deref())?;
                let query = to_json(&lua, query)?;
                let page: u64 = match opts {
                    Some(o) => o.get::<Option<u64>>("size")?.unwrap_or(500).clamp(1, 10_000),
                    None => 500,
                };
                let os = client.is_opensearch().await.map_err(|m| LUA.err("scan", m))?;
                let open = if os { format!("{index}/_search/point_in_time?keep_alive=2m") } else { format!("{index}/_pit?keep_alive=2m") };
                let pit = client.send(reqwest::Method::POST, &open, None).await.map_err(|m| LUA.err("scan", format!("opening a point in time: {m}")))?;
                let mut pit_id = pit["pit_id"].as_str().or(pit["id"].as_str()).map(str::to_string).ok_or_else(|| LUA.err("scan", "no point in time id in the answer"))?;
                let mut after: Option<Value> = None;
                let mut seen: u64 = 0;
                let result: mlua::Result<u64> = async {
                    loop {
                        let mut body = json!({ "size": page, "query": query, "pit": { "id": pit_id, "keep_alive": "2m" }, "sort": [{ "_shard_doc": "asc" }] });
                        if let Some(a) = &after {
                            body["search_after"] = a.clone();
                        }
                        let v = client.send(reqwest::Method::POST, "_search", Some(&body)).await.map_err(|m| LUA.err("scan", m))?;
                        if let Some(p) = v["pit_id"].as_str() {
                            pit_id = p.to_string();
                        }
                        let batch = hits(&v);
                        if batch.is_empty() {
                            return Ok(seen);
                        }
                        after = batch.last().map(|h| h["sort"].clone());
                        for h in batch {
                            seen += 1;
                            let go: LuaValue = each.call_async(crate::kit::json_to_lua(&lua, &h)?).await?;
                            if go == LuaValue::Boolean(false) {
                                return Ok(seen);
                            }
                        }
                    }
                }
                .await;
                let close = if os {
                    client.send(reqwest::Method::DELETE, "_search/point_in_time", Some(&json!({ "pit_id": [pit_id] }))).await
                } else {
                    client.send(reqwest::Method::DELETE, "_pit", Some(&json!({ "id": pit_id }))).await
                };
                if let Err(m) = close {
                    tracing::debug!(error = %m, "closing a point in time");
                }
                result
            }
        })?,
    )?;
    Ok(t)
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    Ok(Arc::new(EsModule::new(settings::from_config(config)?)))
}

impl HostModule for EsModule {
    fn name(&self) -> &'static str {
        "es"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        let ok = scope.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(|v| v.as_str() == Some("read")));
        if ok { Ok(()) } else { Err("expected [\"read\"] (this build's es module only reads)".into()) }
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let st = State { conns: Arc::clone(&self.conns), clients: Arc::clone(&self.clients), ctx: Arc::clone(ctx), grant };
        let t = functions(lua, &st, None)?;
        let s2 = st.clone();
        t.set(
            "connection",
            lua.create_function(move |lua, name: String| {
                s2.client("connection", Some(&name))?;
                let t = functions(lua, &s2, Some(name))?;
                t.set_readonly(true);
                Ok(t)
            })?,
        )?;
        Ok(t)
    }
}
