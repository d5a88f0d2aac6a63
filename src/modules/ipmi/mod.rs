//! The `ipmi` host module: bare-metal power, boot device, sensors and event log through each
//! host's BMC, over Redfish (HTTPS) or IPMI over LAN (RMCP+, cipher suite 3), behind one Lua API.
//!
//! Lua: `ipmi.power(host)`, `ipmi.power_on|power_off|power_cycle|power_reset|power_shutdown(host)`,
//! `ipmi.boot_device(host, device, {once=})`, `ipmi.sensors(host)`, `ipmi.sel(host)` and
//! `ipmi.check(selector)` (docs/lua/ipmi.md). The BMC comes from the host's cmdb tags: `bmc` (an
//! address for IPMI, or an http(s) URL for Redfish), `bmc_protocol` (`ipmi` or `redfish`, when the
//! address alone does not say) and `bmc_system` (a Redfish system's Id or Name, when the BMC has
//! several); the login from `[[ipmi.credentials]]` and secrets.
//!
//! Permission: `ipmi = ["read"]`, `["read", "power"]`, or `{ hosts = [...], actions = [...] }`.
//! Power and boot-device changes need `power`; they are audited with the power state before, and
//! only planned in a dry run. Reads are audited too.
//!
//! Layout: `rmcp` is the IPMI-over-LAN client, `redfish` the Redfish client, `bmc` puts them
//! behind one set of operations, `types` holds the plain types they share; this file is the Lua
//! boundary and the per-run state.

pub mod bmc;
pub mod redfish;
pub mod rmcp;
pub mod settings;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};
use serde::Serialize;
use serde_json::json;

use crate::cmdb::Host;
use crate::config::Config;
use crate::error::Error;
use crate::kit::fanout::Plan;
use crate::kit::io::on_io;
use crate::kit::options::count_opt;
use crate::kit::targets::Targets;
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use bmc::{Bmc, BootDevice, Endpoint, Login, PowerAction};
use settings::IpmiConfig;
use types::{Checked, List, PowerState};

pub struct IpmiModule {
    config: Arc<IpmiConfig>,
    timeout: Duration,
}

impl IpmiModule {
    pub fn new(config: IpmiConfig) -> Result<IpmiModule, String> {
        let timeout = crate::util::parse_duration(&config.timeout).map_err(|m| format!("ipmi.timeout: {m}"))?;
        Ok(IpmiModule { config: Arc::new(config), timeout })
    }
}

/// This module's calls, for their errors (`ipmi.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("ipmi");

const ACTIONS: &[&str] = &["read", "power"];

/// The parsed permission.
#[derive(Debug, Clone)]
struct Scope {
    hosts: Vec<String>,
    read: bool,
    power: bool,
}

impl Scope {
    fn parse(grant: &Grant) -> Result<Scope, String> {
        let actions = grant.actions();
        if let toml::Value::Table(t) = &grant.scope
            && let Some(k) = t.keys().find(|k| !["hosts", "actions"].contains(&k.as_str()))
        {
            return Err(format!("unknown key `{k}` (known: hosts, actions)"));
        }
        if actions.is_empty() {
            return Err("give the actions: [\"read\"] or [\"read\", \"power\"]".into());
        }
        if let Some(a) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(format!("unknown action `{a}` (known: {})", ACTIONS.join(", ")));
        }
        let hosts = match &grant.scope {
            toml::Value::Table(_) => grant.list("hosts"),
            _ => vec!["*".to_string()],
        };
        if hosts.is_empty() {
            return Err("`hosts` must list at least one selector".into());
        }
        for h in &hosts {
            if h != "*" {
                crate::cmdb::Selector::parse(h).map_err(|m| format!("hosts: `{h}`: {m}"))?;
            }
        }
        let has = |a: &str| actions.iter().any(|x| x == a);
        Ok(Scope { hosts, read: has("read"), power: has("power") })
    }
}

/// One run's view of the module.
struct RunState {
    config: Arc<IpmiConfig>,
    timeout: Duration,
    ctx: Arc<RunCtx>,
    scope: Scope,
    /// The cmdb as the run started and the hosts the permission picks.
    reach: Targets,
    cred_of: HashMap<String, usize>,
    /// Per credentials entry: the BMC password and CA file, read once per run.
    logins: crate::kit::targets::PerEntry<(String, Option<Vec<u8>>)>,
}

impl RunState {
    fn new(config: Arc<IpmiConfig>, timeout: Duration, ctx: Arc<RunCtx>, scope: Scope) -> RunState {
        let reach = Targets::new(&ctx, "ipmi", "hosts", scope.hosts.clone());
        let cred_of = reach.first_match(config.credentials.iter().map(|c| c.hosts.as_str()));
        RunState { config, timeout, ctx, scope, reach, cred_of, logins: Default::default() }
    }

    fn require(&self, call: &str, power: bool) -> mlua::Result<()> {
        let (ok, action) = if power { (self.scope.power, "power") } else { (self.scope.read, "read") };
        if ok {
            Ok(())
        } else {
            Err(LUA.err(
                call,
                format!("permission denied: the applet's manifest does not grant `{action}` (add \"{action}\" to [permissions] ipmi)"),
            ))
        }
    }

    /// The host's BMC from its cmdb tags.
    fn endpoint(&self, host: &Host) -> Result<Endpoint, String> {
        let bmc = host.tags.get("bmc").ok_or_else(|| {
            format!(
                "{} has no `bmc` tag with its BMC's address (set it: opslet cmdb host set {} --tag bmc=10.0.0.5 or bmc=https://10.0.0.5)",
                host.name, host.name
            )
        })?;
        let protocol = host.tags.get("bmc_protocol").map(String::as_str);
        let url = bmc.starts_with("https://") || bmc.starts_with("http://");
        match (protocol, url) {
            (Some("redfish"), true) | (None, true) => {
                Ok(Endpoint::Redfish { url: bmc.clone(), system: host.tags.get("bmc_system").cloned() })
            }
            (Some("redfish"), false) => {
                Ok(Endpoint::Redfish { url: format!("https://{bmc}"), system: host.tags.get("bmc_system").cloned() })
            }
            (Some("ipmi") | None, false) => Ok(Endpoint::Ipmi(ipmi_address(bmc))),
            (Some("ipmi"), true) => Err(format!("{}: bmc_protocol is ipmi but bmc is a URL ({bmc})", host.name)),
            (Some(other), _) => Err(format!("{}: unknown bmc_protocol `{other}` (ipmi or redfish)", host.name)),
        }
    }

    /// Logs in to the host's BMC.
    /// `change`: the session will change power or boot settings (Operator privilege, else User).
    async fn open(&self, host: &Host, change: bool) -> Result<(Endpoint, Bmc), String> {
        let ep = self.endpoint(host)?;
        let i = *self
            .cred_of
            .get(&host.name)
            .ok_or_else(|| format!("no [[ipmi.credentials]] entry picks host {} (add one whose hosts selector matches it)", host.name))?;
        let cred = &self.config.credentials[i];
        let owner = format!("[[ipmi.credentials]] for {}", cred.hosts);
        // Where the password may go: not over plain HTTP unless allowed, only to listed BMCs.
        let bmc_host = match &ep {
            Endpoint::Redfish { url, .. } => {
                let u = reqwest::Url::parse(url).map_err(|e| format!("{}: bmc {url}: {e}", host.name))?;
                if u.scheme() == "http" && !cred.allow_http {
                    return Err(format!(
                        "{}: the BMC URL {url} is plain HTTP, which would send the password readable; use https, or set allow_http = true in its [[ipmi.credentials]]",
                        host.name
                    ));
                }
                u.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string()
            }
            Endpoint::Ipmi(a) => a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_string(),
        };
        if !cred.bmcs.is_empty() && !cred.bmcs.iter().any(|p| crate::util::pattern_matches(p, &bmc_host)) {
            return Err(format!(
                "{}: its BMC {bmc_host} is not one of the BMCs its [[ipmi.credentials]] may log in to ({}); nothing was sent",
                host.name,
                cred.bmcs.join(", ")
            ));
        }
        let (password, ca) = self.logins.get(i, || {
            let password = crate::kit::read_secret(&self.ctx, &owner, &cred.password_secret)?;
            let ca = match &cred.ca_file {
                Some(p) => crate::kit::http::read_ca(Some(p)).map_err(|m| format!("{owner}: {m}"))?,
                None => None,
            };
            Ok((password, ca))
        })?;
        let login = Login {
            user: &cred.user,
            password: &password,
            ca: ca.as_deref(),
            timeout: self.timeout,
            privilege: if change { 3 } else { 2 },
        };
        let bmc = tokio::time::timeout(self.timeout, Bmc::open(&ep, &login))
            .await
            .map_err(|_| format!("no answer from the BMC at {} within {}", ep.address(), humantime::format_duration(self.timeout)))??;
        Ok((ep, bmc))
    }

    fn audit(&self, action: &str, host: &str, ok: bool, detail: serde_json::Value) -> Result<(), String> {
        self.ctx.record_action("ipmi", action, host, ok, detail).map_err(|e| format!("could not record the action in the audit log: {e}"))
    }
}

/// `address[:port]` with IPMI's port 623 when none is given (IPv6 addresses bare or bracketed).
fn ipmi_address(bmc: &str) -> String {
    if bmc.parse::<std::net::SocketAddr>().is_ok() {
        return bmc.to_string();
    }
    if let Ok(ip) = bmc.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, 623).to_string();
    }
    match bmc.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => bmc.to_string(),
        _ => format!("{bmc}:623"),
    }
}

/// Runs one operation on one host's BMC on the I/O threads, within the module's timeout; audits it.
async fn with_bmc<T, F>(
    st: &Arc<RunState>,
    call: &'static str,
    host: Host,
    detail: serde_json::Value,
    record: bool,
    change: bool,
    f: F,
) -> mlua::Result<T>
where
    T: Send + Serialize + serde::de::DeserializeOwned + 'static,
    F: for<'a> FnOnce(&'a mut Bmc) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>> + Send + 'static,
{
    let st2 = Arc::clone(st);
    let h = host.clone();
    let t0 = Instant::now();
    let pending = crate::kit::Pending::new(&st.ctx, "ipmi", call, &host.name, detail.clone());
    // The BMC comes from the host's cmdb tags, checked here in a test too; the login (opslet.toml
    // and secrets) is read only when the call is really made, so a test needs none.
    let real = async move {
        on_io(async move {
            let (ep, mut bmc) = st2.open(&h, change).await?;
            let r = tokio::time::timeout(st2.timeout * 4, f(&mut bmc))
                .await
                .unwrap_or_else(|_| Err(format!("the BMC at {} stopped answering", ep.address())));
            bmc.close().await;
            r
        })
        .await
        .and_then(|r| r)
    };
    let r = match st.endpoint(&host) {
        Ok(ep) => crate::kit::exchange::call(&st.ctx, &format!("ipmi.{call}"), &host.name, detail.clone(), real).await.map(|v| (ep, v)),
        Err(m) => Err(m),
    };
    let mut d = detail;
    d["duration_ms"] = json!(t0.elapsed().as_millis() as u64);
    match &r {
        Ok((ep, v)) => {
            d["protocol"] = json!(ep.protocol());
            d["bmc"] = json!(ep.address());
            if record {
                d["result"] = serde_json::to_value(v).unwrap_or_default();
            }
        }
        Err(m) => d["error"] = json!(m),
    }
    pending.finish();
    st.audit(call, &host.name, r.is_ok(), d).map_err(|m| LUA.err(call, m))?;
    r.map(|(_, v)| v).map_err(|m| LUA.err(call, format!("{}: {m}", host.name)))
}

/// `ipmi.check`: one host's state.
#[derive(Debug, Clone, Default, Serialize)]
struct HostCheck {
    host: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    power: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sensors: Option<Vec<bmc::Reading>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sel: Option<Vec<bmc::LogEntry>>,
    /// Sensors out of range and SEL entries that are warnings or worse, in words.
    problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    duration: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skipped: bool,
}

crate::kit::fanout::impl_outcome!(HostCheck);

async fn check_host(st: Arc<RunState>, host: Host, sel_limit: usize) -> HostCheck {
    let t0 = Instant::now();
    let mut c = HostCheck { host: host.name.clone(), ..Default::default() };
    let r: Result<(), String> = async {
        let ep = st.endpoint(&host)?;
        c.protocol = Some(ep.protocol().to_string());
        let (st2, h) = (Arc::clone(&st), host.clone());
        // One call per host: the power state, sensors and event log, read over one login.
        let real = async move {
            let (ep, mut b) = st2.open(&h, false).await?;
            let work = async {
                let power = b.power().await?;
                let sensors = b.sensors().await?;
                let sel = match b.log(sel_limit).await {
                    Ok(sel) => sel,
                    // A BMC without an event log is not a broken host.
                    Err(m) if m.contains("offers no log service") => Vec::new(),
                    Err(m) => return Err(m),
                };
                Ok(Checked { power, sensors: List(sensors), sel: List(sel) })
            };
            let r = tokio::time::timeout(st2.timeout * 4, work)
                .await
                .unwrap_or_else(|_| Err(format!("the BMC at {} stopped answering", ep.address())));
            b.close().await;
            r
        };
        let got = crate::kit::exchange::call(&st.ctx, "ipmi.check", &host.name, json!({ "sel_limit": sel_limit }), real).await?;
        {
            c.power = Some(got.power);
            let sensors = got.sensors.judged();
            for s in &sensors {
                if s.status == "warning" || s.status == "critical" {
                    let v = s.value.map(|v| format!("{v} {}", s.unit)).unwrap_or_else(|| "no reading".into());
                    c.problems.push(format!("sensor {} is {} ({v})", s.name, s.status));
                }
            }
            c.sensors = Some(sensors);
            let sel = got.sel.0;
            for e in &sel {
                if e.severity == "warning" || e.severity == "critical" {
                    c.problems.push(format!("SEL {} {}: {} ({})", e.id, e.severity, e.message, e.sensor));
                }
            }
            c.sel = Some(sel);
        }
        Ok::<(), String>(())
    }
    .await;
    c.duration = t0.elapsed().as_secs_f64();
    c.ok = r.is_ok();
    c.error = r.err();
    let detail = json!({ "protocol": c.protocol, "power": c.power, "problems": c.problems, "error": c.error, "duration_ms": t0.elapsed().as_millis() as u64 });
    if let Err(m) = st.audit("check", &host.name, c.ok, detail) {
        c.ok = false;
        c.error = Some(m);
    }
    c
}

fn power_fn(lua: &Lua, state: &Arc<RunState>, t: &Table, name: &'static str, action: PowerAction) -> mlua::Result<()> {
    let st = Arc::clone(state);
    t.set(
        name,
        lua.create_async_function(move |lua, host: String| {
            let st = Arc::clone(&st);
            async move {
                st.require(name, true)?;
                let host = st.reach.one(name, &host)?;
                if st.ctx.dry_run {
                    let ep = st.endpoint(&host).map_err(|m| LUA.err(name, m))?;
                    st.audit(name, &host.name, true, json!({ "planned": true, "protocol": ep.protocol(), "bmc": ep.address() }))
                        .map_err(|m| LUA.err(name, m))?;
                    return crate::kit::to_lua(&lua, &json!({ "host": host.name, "action": name, "planned": true }));
                }
                let hn = host.name.clone();
                let done = with_bmc(&st, name, host, json!({}), true, true, move |b| {
                    Box::pin(async move {
                        let before = b.power().await?;
                        let sent = b.power_action(action).await?;
                        Ok(json!({ "before": before, "sent": sent }))
                    })
                })
                .await?;
                crate::kit::to_lua(&lua, &json!({ "host": hn, "action": name, "before": done["before"], "sent": done["sent"] }))
            }
        })?,
    )
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    let (settings, _) = IpmiConfig::from_config(config)?;
    Ok(Arc::new(IpmiModule::new(settings).map_err(|m| config.invalid(m))?))
}

impl HostModule for IpmiModule {
    fn name(&self) -> &'static str {
        "ipmi"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(&Grant { module: "ipmi", scope: scope.clone() }).map(|_| ())
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant).map_err(|m| LUA.err("permission", m))?;
        let state = Arc::new(RunState::new(Arc::clone(&self.config), self.timeout, Arc::clone(ctx), scope));
        let t = lua.create_table()?;

        let st = Arc::clone(&state);
        t.set(
            "power",
            lua.create_async_function(move |_, host: String| {
                let st = Arc::clone(&st);
                async move {
                    st.require("power", false)?;
                    let host = st.reach.one("power", &host)?;
                    let p = with_bmc(&st, "power", host, json!({}), true, false, |b| {
                        Box::pin(async move { b.power().await.map(PowerState::Word) })
                    })
                    .await?;
                    Ok(p.into_word())
                }
            })?,
        )?;
        for (name, action) in [
            ("power_on", PowerAction::On),
            ("power_off", PowerAction::Off),
            ("power_cycle", PowerAction::Cycle),
            ("power_reset", PowerAction::Reset),
            ("power_shutdown", PowerAction::Shutdown),
        ] {
            power_fn(lua, &state, &t, name, action)?;
        }

        let st = Arc::clone(&state);
        t.set(
            "boot_device",
            lua.create_async_function(move |lua, (host, device, opts): (String, String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    st.require("boot_device", true)?;
                    let dev = BootDevice::parse(&device)
                        .ok_or_else(|| LUA.err("boot_device", format!("`{device}` is not a boot device (pxe, disk, cdrom, bios)")))?;
                    let mut once = true;
                    if let Some(o) = opts {
                        for pair in o.pairs::<String, Value>() {
                            let (k, v) = pair?;
                            match (k.as_str(), v) {
                                ("once", Value::Boolean(b)) => once = b,
                                ("once", other) => {
                                    return Err(
                                        LUA.err("boot_device", format!("opts.once: expected true or false, got {}", other.type_name()))
                                    );
                                }
                                (other, _) => return Err(LUA.err("boot_device", format!("unknown option `{other}` (known: once)"))),
                            }
                        }
                    }
                    let host = st.reach.one("boot_device", &host)?;
                    let detail = json!({ "device": device, "once": once });
                    if st.ctx.dry_run {
                        let ep = st.endpoint(&host).map_err(|m| LUA.err("boot_device", m))?;
                        let mut d = detail.clone();
                        d["planned"] = json!(true);
                        d["protocol"] = json!(ep.protocol());
                        d["bmc"] = json!(ep.address());
                        st.audit("boot_device", &host.name, true, d).map_err(|m| LUA.err("boot_device", m))?;
                        return crate::kit::to_lua(&lua, &json!({ "host": host.name, "device": device, "once": once, "planned": true }));
                    }
                    let hn = host.name.clone();
                    with_bmc(&st, "boot_device", host, detail, false, true, move |b| {
                        Box::pin(async move { b.boot_device(dev, once).await.map(|()| json!({})) })
                    })
                    .await?;
                    crate::kit::to_lua(&lua, &json!({ "host": hn, "device": device, "once": once }))
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "sensors",
            lua.create_async_function(move |lua, host: String| {
                let st = Arc::clone(&st);
                async move {
                    st.require("sensors", false)?;
                    let host = st.reach.one("sensors", &host)?;
                    let v =
                        with_bmc(&st, "sensors", host, json!({}), false, false, |b| Box::pin(async move { b.sensors().await.map(List) }))
                            .await?;
                    crate::kit::to_lua(&lua, &v.judged())
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "sel",
            lua.create_async_function(move |lua, (host, opts): (String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    st.require("sel", false)?;
                    let mut limit = 200;
                    if let Some(o) = opts {
                        for pair in o.pairs::<String, Value>() {
                            let (k, v) = pair?;
                            match k.as_str() {
                                "limit" => limit = count_opt("ipmi.sel", "limit", v)?,
                                other => return Err(LUA.err("sel", format!("unknown option `{other}` (known: limit)"))),
                            }
                        }
                    }
                    let host = st.reach.one("sel", &host)?;
                    let v = with_bmc(&st, "sel", host, json!({ "limit": limit }), false, false, move |b| {
                        Box::pin(async move { b.log(limit).await.map(List) })
                    })
                    .await?;
                    crate::kit::to_lua(&lua, &v.0)
                }
            })?,
        )?;

        let st = Arc::clone(&state);
        t.set(
            "check",
            lua.create_async_function(move |lua, (selector, opts): (String, Option<Table>)| {
                let st = Arc::clone(&st);
                async move {
                    st.require("check", false)?;
                    let (mut concurrency, mut sel_limit) = (st.config.concurrency, 50usize);
                    if let Some(o) = opts {
                        for pair in o.pairs::<String, Value>() {
                            let (k, v) = pair?;
                            match k.as_str() {
                                "concurrency" => concurrency = count_opt("ipmi.check", "concurrency", v)?.clamp(1, st.config.concurrency),
                                "sel_limit" => sel_limit = count_opt("ipmi.check", "sel_limit", v)?,
                                other => return Err(LUA.err("check", format!("unknown option `{other}` (known: concurrency, sel_limit)"))),
                            }
                        }
                    }
                    let hosts = st.reach.select("check", &selector)?;
                    let plan = Plan { concurrency, batch: None, canary: 0, stop_after: None };
                    let st2 = Arc::clone(&st);
                    let results = crate::kit::targets::fan_out_hosts(&st.ctx, "ipmi.check".into(), hosts, &plan, move |h| {
                        check_host(Arc::clone(&st2), h, sel_limit)
                    })
                    .await;
                    crate::kit::to_lua(&lua, &results)
                }
            })?,
        )?;
        Ok(t)
    }
}
