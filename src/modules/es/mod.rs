//! The `es` host module: read-only search over Elasticsearch or OpenSearch.
//!
//! `[permissions] es = ["read"]`. Connections are `[es.NAME]` in opslet.toml (basic auth or an
//! API key from secrets, optional CA file); module functions use the default connection,
//! `es.connection(NAME)` another one. `es.scan` walks every hit with a point in time and
//! `search_after`, one page at a time, so a large result never sits in memory whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, LuaSerdeExt, Table, Value as LuaValue};
use serde_json::{Value, json};

use crate::kit::clients::{Clients, RunClients};
use crate::kit::http::{self, Trust};
use crate::kit::{Grant, HostModule};
pub mod settings;

use crate::config::Config;
use crate::error::Error;
use crate::runtime::context::RunCtx;
use settings::EsConn;

pub struct EsModule {
    conns: Arc<BTreeMap<String, EsConn>>,
    /// Clients by connection name, kept from run to run (see `kit::clients`).
    clients: Arc<Clients<Client>>,
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

/// A point in time `es.scan` walks: its client, its id (renewed by each page) and which
/// endpoints it uses.
struct Pit {
    client: Arc<Client>,
    id: String,
    opensearch: bool,
}

impl Pit {
    async fn open(client: Arc<Client>, index: &str) -> Result<Pit, String> {
        let opensearch = client.is_opensearch().await?;
        let path = if opensearch { format!("{index}/_search/point_in_time?keep_alive=2m") } else { format!("{index}/_pit?keep_alive=2m") };
        let v = client.send(reqwest::Method::POST, &path, None).await.map_err(|m| format!("opening a point in time: {m}"))?;
        let id = v["pit_id"].as_str().or(v["id"].as_str()).map(str::to_string).ok_or("no point in time id in the answer")?;
        Ok(Pit { client, id, opensearch })
    }

    async fn close(self) {
        let close = if self.opensearch {
            self.client.send(reqwest::Method::DELETE, "_search/point_in_time", Some(&json!({ "pit_id": [self.id] }))).await
        } else {
            self.client.send(reqwest::Method::DELETE, "_pit", Some(&json!({ "id": self.id }))).await
        };
        if let Err(m) = close {
            tracing::debug!(error = %m, "closing a point in time");
        }
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
    clients: RunClients<Client>,
    ctx: Arc<RunCtx>,
    grant: Grant,
    /// The connection the applet named (`es.connection(NAME)`), if it named one.
    named: Option<String>,
}

impl State {
    /// The connection Lua call `call` uses, once the manifest grants `read` (a stand-in in a
    /// test with no [es.*]: `kit::run_connection`).
    fn conn(&self, call: &str) -> mlua::Result<String> {
        self.grant.require(call, "read")?;
        let conns: Vec<(&str, bool)> = self.conns.iter().map(|(n, c)| (n.as_str(), c.default)).collect();
        crate::kit::run_connection(&self.ctx, "es", "es", &conns, self.named.as_deref()).map_err(|m| LUA.err(call, m))
    }

    /// The client of connection `name`. Only a real request (not a test's fake) asks for it,
    /// so a test needs neither the connection's secrets nor its cluster.
    fn client(&self, name: &str) -> Result<Arc<Client>, String> {
        let conf = self.conns.get(name).ok_or("no es connection is configured (add [es.NAME] to opslet.toml)")?;
        let owner = format!("[es.{name}]");
        self.clients.get(&self.ctx, &owner, name, conf.ca_file.as_deref(), |secret| {
            let auth = match (&conf.user, &conf.password_secret, &conf.api_key_secret) {
                (Some(u), Some(p), None) => Auth::Basic(u.clone(), secret(p)?),
                (None, None, Some(k)) => Auth::ApiKey(secret(k)?),
                _ => Auth::None,
            };
            let timeout = crate::util::parse_duration(&conf.timeout).unwrap_or(Duration::from_secs(30));
            let ca = http::read_ca(conf.ca_file.as_deref()).map_err(|m| format!("{owner} {m}"))?;
            let trust = ca.map_or(Trust::System, Trust::Also);
            let http = http::client(http::Options { timeout, connect_timeout: timeout, trust, redirects: true, read_timeout: None })
                .map_err(|m| format!("{owner} {m}"))?;
            Ok(Client { name: name.to_string(), base: conf.url.clone(), auth, http, opensearch: Default::default() })
        })
    }

    /// Where the module's requests leave the process: `es.CALL` on `index` (`INDEX@CONN` when
    /// the applet named the connection) with the request body `args`, made by `real` unless a
    /// test's fake answers it. The answer is Elasticsearch's JSON.
    async fn ask<F>(&self, call: &str, index: &str, args: Value, real: F) -> mlua::Result<Value>
    where
        F: std::future::Future<Output = Result<Value, String>>,
    {
        let target = match &self.named {
            Some(n) => format!("{index}@{n}"),
            None => index.to_string(),
        };
        crate::kit::exchange::call(&self.ctx, &format!("es.{call}"), &target, args, real).await.map_err(|m| LUA.err(call, m))
    }

    /// POSTs `body` to `path` on connection `conn`, as Lua call `call` on `index`.
    async fn post(&self, call: &str, conn: &str, index: &str, path: &str, body: Value) -> mlua::Result<Value> {
        let real = async { self.client(conn)?.send(reqwest::Method::POST, path, Some(&body)).await };
        self.ask(call, index, body.clone(), real).await
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
    let st = &State { named: conn, ..st.clone() };
    let s = st.clone();
    t.set(
        "search",
        lua.create_async_function(move |lua, (index, query, opts): (String, Option<LuaValue>, Option<Table>)| {
            let s = s.clone();
            async move {
                check_index("search", &index)?;
                let conn = s.conn("search")?;
                let body = search_body(&lua, "search", to_json(&lua, query)?, opts)?;
                let v = s.post("search", &conn, &index, &format!("{index}/_search"), body).await?;
                let out =
                    json!({ "total": v["hits"]["total"]["value"].as_u64().or(v["hits"]["total"].as_u64()).unwrap_or(0), "hits": hits(&v) });
                crate::kit::json_to_lua(&lua, &out)
            }
        })?,
    )?;
    let s = st.clone();
    t.set(
        "count",
        lua.create_async_function(move |lua, (index, query): (String, Option<LuaValue>)| {
            let s = s.clone();
            async move {
                check_index("count", &index)?;
                let conn = s.conn("count")?;
                let body = json!({ "query": to_json(&lua, query)? });
                let v = s.post("count", &conn, &index, &format!("{index}/_count"), body).await?;
                Ok(v["count"].as_u64().unwrap_or(0))
            }
        })?,
    )?;
    let s = st.clone();
    t.set(
        "aggs",
        lua.create_async_function(move |lua, (index, aggs, query): (String, LuaValue, Option<LuaValue>)| {
            let s = s.clone();
            async move {
                check_index("aggs", &index)?;
                let conn = s.conn("aggs")?;
                let aggs: Value = lua.from_value(aggs)?;
                if !aggs.is_object() {
                    return Err(
                        LUA.err("aggs", "aggs: a table of named aggregations, like { by_level = { terms = { field = \"level\" } } }")
                    );
                }
                let body = json!({ "size": 0, "query": to_json(&lua, query)?, "aggs": aggs });
                let v = s.post("aggs", &conn, &index, &format!("{index}/_search"), body).await?;
                crate::kit::json_to_lua(&lua, &v["aggregations"])
            }
        })?,
    )?;
    let s = st.clone();
    t.set(
        "scan",
        lua.create_async_function(move |lua, (index, query, each, opts): (String, Option<LuaValue>, Function, Option<Table>)| {
            let s = s.clone();
            async move {
                check_index("scan", &index)?;
                let conn = s.conn("scan")?;
                let query = to_json(&lua, query)?;
                let page: u64 = match opts {
                    Some(o) => o.get::<Option<u64>>("size")?.unwrap_or(500).clamp(1, 10_000),
                    None => 500,
                };
                // Each page is one `es.scan` call ({query, size, search_after}). The point in time
                // is opened by the first page really sent (never in a test, whose fakes answer
                // the pages) and closed at the end.
                let pit: tokio::sync::Mutex<Option<Pit>> = Default::default();
                let mut after: Option<Value> = None;
                let mut seen: u64 = 0;
                let result: mlua::Result<u64> = async {
                    loop {
                        let mut args = json!({ "query": query, "size": page });
                        if let Some(a) = &after {
                            args["search_after"] = a.clone();
                        }
                        let real = async {
                            let mut open = pit.lock().await;
                            let p = match &mut *open {
                                Some(p) => p,
                                None => open.insert(Pit::open(s.client(&conn)?, &index).await?),
                            };
                            let mut body = args.clone();
                            body["pit"] = json!({ "id": p.id, "keep_alive": "2m" });
                            body["sort"] = json!([{ "_shard_doc": "asc" }]);
                            let v = p.client.send(reqwest::Method::POST, "_search", Some(&body)).await?;
                            if let Some(id) = v["pit_id"].as_str() {
                                p.id = id.to_string();
                            }
                            Ok(v)
                        };
                        let v = s.ask("scan", &index, args.clone(), real).await?;
                        let batch = hits(&v);
                        // A short page is the last one (with a point in time, every other page is full).
                        let last = (batch.len() as u64) < page;
                        after = batch.last().map(|h| h["sort"].clone());
                        for h in batch {
                            seen += 1;
                            let go: LuaValue = each.call_async(crate::kit::json_to_lua(&lua, &h)?).await?;
                            if go == LuaValue::Boolean(false) {
                                return Ok(seen);
                            }
                        }
                        if last {
                            return Ok(seen);
                        }
                    }
                }
                .await;
                if let Some(p) = pit.into_inner() {
                    p.close().await;
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
        let st =
            State { conns: Arc::clone(&self.conns), clients: RunClients::new(&self.clients), ctx: Arc::clone(ctx), grant, named: None };
        let check = st.clone();
        crate::kit::with_connections(
            lua,
            move |lua, conn| functions(lua, &st, conn),
            move |name| State { named: Some(name.to_string()), ..check.clone() }.conn("connection").map(drop),
        )
    }
}
