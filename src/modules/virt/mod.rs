//! The `virt` host module: virtual machines through libvirt or on an OpenStack cloud, with one
//! set of calls. An applet names a `[virt.NAME]` connection; opslet.toml says whether it is a
//! libvirt URI or a Keystone URL, so the same applet lists, powers, creates and deletes VMs on
//! either (docs/lua/virt.md).
//!
//! Layout: `settings` the `[virt.NAME]` tables, `scope` the permission (read, power, write; by
//! connection and project), `libvirt` the libvirt calls (cargo feature `virt`, which links
//! libvirt), `openstack` the Keystone-authenticated HTTP client and `nova` the OpenStack calls;
//! this file is the Lua boundary: each call checks the permission, then goes to the connection's
//! backend, audited with the VM's state before and after, and only planned in a dry run.

#[cfg(feature = "virt")]
pub mod libvirt;
pub mod nova;
pub mod openstack;
pub mod scope;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Lua, LuaSerdeExt, Table, Value as LuaValue};
use serde_json::{Value, json};

use crate::config::Config;
use crate::error::Error;
use crate::kit::clients::{Clients, RunClients};
use crate::kit::{Grant, HostModule};
use crate::runtime::context::RunCtx;
use openstack::Cloud;
use scope::Scope;
use settings::{Conn, OsConn, OsLogin};

pub struct VirtModule {
    conns: Arc<BTreeMap<String, Conn>>,
    /// OpenStack clouds (each with its token) by connection name, kept from run to run (see
    /// `kit::clients`).
    clouds: Arc<Clients<Cloud>>,
}

impl VirtModule {
    pub fn new(conns: BTreeMap<String, Conn>) -> VirtModule {
        VirtModule { conns: Arc::new(conns), clouds: Arc::default() }
    }
}

/// This module's calls, for their errors (`virt.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("virt");

/// A domain name libvirt and the XML both accept.
fn valid_name(call: &str, name: &str) -> mlua::Result<()> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(()) } else { Err(LUA.err(call, format!("`{name}` is not a VM name (letters, digits, `-`, `_`, `.`)"))) }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// Domain XML from `{name, vcpus, memory (MiB), disk (path), network}`, for a hypervisor of
/// `kind` ("kvm", or "test" for libvirt's test driver). A disk must lie in one of `disk_dirs`.
pub fn domain_xml(spec: &Value, kind: &str, disk_dirs: &[std::path::PathBuf]) -> Result<String, String> {
    let known = ["name", "vcpus", "memory", "disk", "network"];
    for k in spec.as_object().ok_or("spec: a table like { name = \"vm1\", vcpus = 2, memory = 2048 }")?.keys() {
        if !known.contains(&k.as_str()) {
            return Err(format!("spec: unknown key `{k}` (known: {})", known.join(", ")));
        }
    }
    let name = spec["name"].as_str().ok_or("spec.name is required")?;
    let vcpus = spec["vcpus"].as_u64().unwrap_or(1);
    let memory = spec["memory"].as_u64().unwrap_or(1024);
    if !(1..=256).contains(&vcpus) {
        return Err("spec.vcpus: 1 to 256".into());
    }
    if !(64..=4 * 1024 * 1024).contains(&memory) {
        return Err("spec.memory: 64 to 4194304 MiB".into());
    }
    let mut devices = String::new();
    if let Some(disk) = spec["disk"].as_str() {
        if !disk.starts_with('/') {
            return Err("spec.disk: an absolute path to the disk image".into());
        }
        let path = std::path::Path::new(disk);
        let inside = path.components().all(|c| !matches!(c, std::path::Component::ParentDir))
            && disk_dirs.iter().any(|d| path.starts_with(d) && path != d.as_path());
        if !inside {
            return Err(format!(
                "spec.disk: `{disk}` is not inside the connection's disk_dirs ({})",
                if disk_dirs.is_empty() {
                    "none configured".to_string()
                } else {
                    disk_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                }
            ));
        }
        devices.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            xml_escape(disk)
        ));
    }
    if let Some(net) = spec["network"].as_str() {
        devices.push_str(&format!("<interface type='network'><source network='{}'/><model type='virtio'/></interface>", xml_escape(net)));
    }
    Ok(format!(
        "<domain type='{kind}'><name>{}</name><memory unit='MiB'>{memory}</memory><currentMemory unit='MiB'>{memory}</currentMemory>\
         <vcpu>{vcpus}</vcpu><os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>",
        xml_escape(name)
    ))
}

/// What a power call waits for on OpenStack, and the action it sends.
fn power_action(call: &str, hard: bool) -> (Value, &'static str) {
    match call {
        "start" => (json!({ "os-start": null }), "ACTIVE"),
        "shutdown" | "destroy" => (json!({ "os-stop": null }), "SHUTOFF"),
        _ => (json!({ "reboot": { "type": if hard { "HARD" } else { "SOFT" } } }), "ACTIVE"),
    }
}

#[derive(Clone)]
struct State {
    conns: Arc<BTreeMap<String, Conn>>,
    #[cfg(feature = "virt")]
    open: Arc<libvirt::Open>,
    clouds: RunClients<Cloud>,
    ctx: Arc<RunCtx>,
    scope: Arc<Scope>,
}

/// The backend of a call.
enum Backend<'a> {
    #[cfg_attr(not(feature = "virt"), allow(dead_code))]
    Libvirt(&'a settings::VirtConn),
    OpenStack(&'a OsConn),
    /// A test's stand-in connection: nothing is sent (fakes answer).
    Test,
}

impl State {
    /// Refuses a call the permission does not cover, or a connection that is not configured
    /// (a test with no [virt.*] has stand-ins that nothing is sent to).
    fn check(&self, call: &str, conn: &str, action: &str) -> mlua::Result<()> {
        if !self.scope.allows(action) {
            let why = match action {
                "power" => "does not grant `write` (nor `power`, which allows only start, stop and reboot)".to_string(),
                other => format!("does not grant `{other}`"),
            };
            return Err(LUA.err(
                call,
                format!("permission denied: the applet's manifest {why} (add it: [permissions] virt = [\"read\", \"{action}\"])"),
            ));
        }
        if !(self.conns.contains_key(conn) || crate::kit::stand_ins(&self.ctx, self.conns.len())) {
            return Err(LUA.err(
                call,
                format!("no virt connection `{conn}` (configured: {})", self.conns.keys().cloned().collect::<Vec<_>>().join(", ")),
            ));
        }
        if !self.scope.allows_connection(conn) {
            return Err(LUA.err(
                call,
                format!(
                    "permission denied: connection `{conn}` is not among the applet's virt connections ({})",
                    self.scope.connections.as_deref().unwrap_or_default().join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn backend(&self, conn: &str) -> Backend<'_> {
        match self.conns.get(conn) {
            Some(Conn::Libvirt(c)) => Backend::Libvirt(c),
            Some(Conn::OpenStack(c)) => Backend::OpenStack(c),
            None => Backend::Test,
        }
    }

    /// The cloud of connection `name`, logged in on first use; its token serves the later runs
    /// of this run thread too.
    fn cloud(&self, name: &str) -> Result<Arc<Cloud>, String> {
        let Some(Conn::OpenStack(conf)) = self.conns.get(name) else { return Err(format!("`{name}` is not an OpenStack connection")) };
        self.clouds.get(&self.ctx, &format!("[virt.{name}]"), name, conf.ca_file.as_deref(), |secret| {
            let text = match &conf.login {
                OsLogin::Password { password_secret, .. } => secret(password_secret)?,
                OsLogin::AppCredential { secret_secret, .. } => secret(secret_secret)?,
            };
            Cloud::new(name, conf, text)
        })
    }

    /// Where a call leaves the process: `virt.CALL` on connection `conn` with `args`, made by
    /// `real` unless a test's fake answers it.
    async fn ask<F>(&self, call: &str, conn: &str, args: Value, real: F) -> mlua::Result<Value>
    where
        F: std::future::Future<Output = Result<Value, String>>,
    {
        crate::kit::exchange::call(&self.ctx, &format!("virt.{call}"), conn, args, real).await.map_err(|m| LUA.err(call, m))
    }

    fn record(&self, call: &str, target: &str, ok: bool, detail: Value) -> mlua::Result<()> {
        self.ctx.record_action("virt", call, target, ok, detail).map_err(mlua::Error::external)
    }

    /// The OpenStack server `name` on `cloud` (looked up in every project when the login is an
    /// admin's), if the permission's projects allow it.
    async fn server(&self, cloud: &Cloud, conf: &OsConn, name: &str) -> Result<Value, String> {
        let (me, admin) = cloud.whoami().await.unwrap_or((None, false));
        let s = cloud.find(name, admin).await.map_err(|e| e.to_string())?;
        let project = s["tenant_id"].as_str();
        let own = match &conf.login {
            OsLogin::Password { project: p, .. } if me.as_deref() == project => Some(p.as_str()),
            _ => None,
        };
        if !self.scope.allows_project(project, own) {
            return Err(format!(
                "permission denied: `{name}` belongs to project {}, not among the applet's virt projects ({}); nothing was sent",
                project.unwrap_or("?"),
                self.scope.projects.as_deref().unwrap_or_default().join(", ")
            ));
        }
        Ok(s)
    }

    /// How long a call waits for its VM to settle: `opts.timeout`, else the connection's `wait`.
    fn wait(&self, conf: &OsConn, opts: &Opts) -> Duration {
        opts.timeout.unwrap_or(conf.wait)
    }
}

/// Options of the calls that change a VM.
#[derive(Default, Clone)]
struct Opts {
    hard: bool,
    timeout: Option<Duration>,
}

fn opts_of(call: &str, t: Option<Table>, known: &[&str]) -> mlua::Result<(Opts, BTreeMap<String, LuaValue>)> {
    let mut o = Opts::default();
    let mut rest = BTreeMap::new();
    let Some(t) = t else { return Ok((o, rest)) };
    for (k, v) in crate::kit::options::entries(&LUA.call(call), &t)? {
        match k.as_str() {
            "hard" if known.contains(&"hard") => o.hard = matches!(v, LuaValue::Boolean(true)),
            "timeout" => o.timeout = Some(crate::kit::options::duration_opt(&LUA.call(call), "timeout", v)?),
            other if known.contains(&other) => {
                rest.insert(k, v);
            }
            other => {
                let mut all: Vec<&str> = known.to_vec();
                all.push("timeout");
                return Err(LUA.err(call, format!("unknown option `{other}` (known: {})", all.join(", "))));
            }
        }
    }
    Ok((o, rest))
}

/// An OpenStack-only call on a libvirt connection.
fn openstack_only(call: &str, conn: &str) -> mlua::Error {
    LUA.err(call, format!("`{conn}` is a libvirt connection; {call} is an OpenStack call"))
}

#[cfg(not(feature = "virt"))]
fn no_libvirt(conn: &str) -> String {
    format!("`{conn}` is a libvirt connection, and this opslet was built without libvirt (cargo feature `virt`)")
}

/// The OpenStack create request for `spec`: `flavor` (a name or id; else the smallest that
/// fits `vcpus` and `memory`), `image` (a name or id), and `network` (a network id; none:
/// no network), `keypair`, `metadata`, `user_data` when given.
async fn create_body(cloud: &Cloud, spec: &Value) -> Result<(Value, Value), String> {
    let known = ["name", "flavor", "image", "network", "keypair", "metadata", "user_data", "vcpus", "memory", "disk"];
    let obj = spec.as_object().ok_or("spec: a table like { name = \"vm1\", flavor = \"m1.small\", image = \"debian-12\" }")?;
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("spec: unknown key `{k}` (known: {})", known.join(", ")));
    }
    if obj.contains_key("disk") {
        return Err("spec.disk: a libvirt key; on OpenStack the disk comes from the image and the flavor".into());
    }
    let name = spec["name"].as_str().ok_or("spec.name is required")?;
    let flavors = cloud.flavors().await.map_err(|e| e.to_string())?;
    let flavor = match spec["flavor"].as_str() {
        Some(f) => flavors
            .iter()
            .find(|x| x["id"] == f || x["name"] == f)
            .cloned()
            .ok_or_else(|| format!("spec.flavor: no flavor `{f}` on {}", cloud.name))?,
        None => {
            let (cpus, mem) = (spec["vcpus"].as_u64().unwrap_or(1), spec["memory"].as_u64().unwrap_or(512));
            flavors
                .iter()
                .find(|x| x["vcpus"].as_u64().unwrap_or(0) >= cpus && x["memory_mib"].as_u64().unwrap_or(0) >= mem)
                .cloned()
                .ok_or_else(|| format!("no flavor on {} has {cpus} vCPU(s) and {mem} MiB; name one in spec.flavor", cloud.name))?
        }
    };
    let image = spec["image"].as_str().ok_or("spec.image is required on OpenStack (a Glance image name or id)")?;
    let images = cloud.images().await.map_err(|e| e.to_string())?;
    let matching: Vec<&Value> = images.iter().filter(|i| i["id"] == image || i["name"] == image).collect();
    let img = match matching.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(format!("spec.image: no image `{image}` on {}", cloud.name)),
        _ => return Err(format!("spec.image: several images are named `{image}` on {}; give its id", cloud.name)),
    };
    let mut server = json!({ "name": name, "flavorRef": flavor["id"], "imageRef": img["id"] });
    server["networks"] = match spec["network"].as_str() {
        Some(n) => json!([{ "uuid": n }]),
        None => json!("none"),
    };
    if let Some(k) = spec["keypair"].as_str() {
        server["key_name"] = json!(k);
    }
    if spec["metadata"].is_object() {
        server["metadata"] = spec["metadata"].clone();
    }
    if let Some(u) = spec["user_data"].as_str() {
        use base64::Engine;
        server["user_data"] = json!(base64::engine::general_purpose::STANDARD.encode(u));
    }
    let plan = json!({ "name": name, "flavor": flavor["name"], "vcpus": flavor["vcpus"], "memory_mib": flavor["memory_mib"], "image": img["name"], "image_id": img["id"], "network": spec["network"] });
    Ok((json!({ "server": server }), plan))
}

/// The module set up from opslet.toml.
pub fn module(config: &Config) -> Result<Arc<dyn HostModule>, Error> {
    Ok(Arc::new(VirtModule::new(settings::from_config(config)?)))
}

impl HostModule for VirtModule {
    fn name(&self) -> &'static str {
        "virt"
    }

    fn check_scope(&self, scope: &toml::Value) -> Result<(), String> {
        Scope::parse(scope).map(drop)
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let scope = Scope::parse(&grant.scope).map_err(|m| LUA.err("permission", m))?;
        let st = State {
            conns: Arc::clone(&self.conns),
            #[cfg(feature = "virt")]
            open: Arc::default(),
            clouds: RunClients::new(&self.clouds),
            ctx: Arc::clone(ctx),
            scope: Arc::new(scope),
        };
        let t = lua.create_table()?;

        let s = st.clone();
        t.set(
            "list",
            lua.create_async_function(move |lua, (conn, opts): (String, Option<Table>)| {
                let s = s.clone();
                async move {
                    let (_, o) = opts_of("list", opts, &["state", "host", "project", "all_projects", "limit"])?;
                    s.check("list", &conn, "read")?;
                    let text = |k: &str| -> Option<String> {
                        match o.get(k) {
                            Some(LuaValue::String(v)) => Some(v.to_string_lossy()),
                            _ => None,
                        }
                    };
                    let want = text("state");
                    let all = matches!(o.get("all_projects"), Some(LuaValue::Boolean(true)));
                    let limit = match o.get("limit") {
                        Some(v) => crate::kit::options::count_opt("virt.list", "limit", v.clone())?.clamp(1, 100_000),
                        None => 10_000,
                    };
                    let args = json!({ "state": want, "host": text("host"), "project": text("project"), "all_projects": all });
                    let backend = s.backend(&conn);
                    let real = async {
                        match backend {
                            #[cfg(feature = "virt")]
                            Backend::Libvirt(c) => s.open.list(&conn, c),
                            #[cfg(not(feature = "virt"))]
                            Backend::Libvirt(_) => Err(no_libvirt(&conn)),
                            Backend::OpenStack(_) => {
                                let cloud = s.cloud(&conn)?;
                                // Nova filters by its own status; ours is derived from it.
                                let q = nova::ServerQuery {
                                    all_projects: all,
                                    host: text("host"),
                                    project: text("project"),
                                    limit,
                                    status: None,
                                };
                                let (list, _) = cloud.servers(&q).await.map_err(|e| e.to_string())?;
                                Ok(json!(list))
                            }
                            Backend::Test => Err("no connection to send to".into()),
                        }
                    };
                    let all_vms = s.ask("list", &conn, args, real).await?;
                    let mut out: Vec<Value> = all_vms
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|v| want.as_deref().is_none_or(|w| v["state"] == w))
                        .filter(|v| s.scope.projects.is_none() || s.scope.allows_project(v["project"].as_str(), None))
                        .cloned()
                        .collect();
                    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                    crate::kit::json_to_lua(&lua, &json!(out))
                }
            })?,
        )?;

        let s = st.clone();
        t.set(
            "info",
            lua.create_async_function(move |lua, (conn, name): (String, String)| {
                let s = s.clone();
                async move {
                    valid_name("info", &name)?;
                    s.check("info", &conn, "read")?;
                    let backend = s.backend(&conn);
                    let real = async {
                        match backend {
                            #[cfg(feature = "virt")]
                            Backend::Libvirt(c) => s.open.info(&conn, c, &name),
                            #[cfg(not(feature = "virt"))]
                            Backend::Libvirt(_) => Err(no_libvirt(&conn)),
                            Backend::OpenStack(c) => {
                                let cloud = s.cloud(&conn)?;
                                Ok(nova::normalize(&s.server(&cloud, c, &name).await?))
                            }
                            Backend::Test => Err("no connection to send to".into()),
                        }
                    };
                    let v = s.ask("info", &conn, json!({ "name": name }), real).await?;
                    crate::kit::json_to_lua(&lua, &v)
                }
            })?,
        )?;

        for action in ["start", "shutdown", "destroy", "reboot"] {
            let s = st.clone();
            t.set(
                action,
                lua.create_async_function(move |_, (conn, name, opts): (String, String, Option<Table>)| {
                    let s = s.clone();
                    async move {
                        let (o, _) = opts_of(action, opts, &["hard"])?;
                        valid_name(action, &name)?;
                        s.check(action, &conn, "power")?;
                        change(&s, action, &conn, &name, o, json!({ "name": name })).await
                    }
                })?,
            )?;
        }

        let s = st.clone();
        t.set(
            "create",
            lua.create_async_function(move |lua, (conn, spec, opts): (String, LuaValue, Option<Table>)| {
                let s = s.clone();
                async move {
                    let (o, _) = opts_of("create", opts, &[])?;
                    let spec: Value = lua.from_value(spec)?;
                    let name = spec["name"].as_str().unwrap_or("").to_string();
                    // A libvirt spec is checked whole before anything else (an OpenStack one
                    // needs the cloud's flavors and images, so it is checked where they are read).
                    let xml = match s.conns.get(&conn) {
                        Some(Conn::Libvirt(c)) => {
                            let kind = if c.uri.starts_with("test:") { "test" } else { "kvm" };
                            Some(domain_xml(&spec, kind, &c.disk_dirs).map_err(|m| LUA.err("create", m))?)
                        }
                        Some(Conn::OpenStack(_)) => None,
                        None if spec.get("image").is_none() && spec.get("flavor").is_none() => {
                            Some(domain_xml(&spec, "kvm", &[]).map_err(|m| LUA.err("create", m))?)
                        }
                        None => None,
                    };
                    valid_name("create", &name)?;
                    s.check("create", &conn, "write")?;
                    let mut args = json!({ "name": name, "spec": spec });
                    if let Some(x) = xml {
                        args["xml"] = json!(x);
                    }
                    change(&s, "create", &conn, &name, o, args).await
                }
            })?,
        )?;

        let s = st.clone();
        t.set(
            "delete",
            lua.create_async_function(move |_, (conn, name, opts): (String, String, Option<Table>)| {
                let s = s.clone();
                async move {
                    let (o, _) = opts_of("delete", opts, &[])?;
                    valid_name("delete", &name)?;
                    s.check("delete", &conn, "write")?;
                    change(&s, "delete", &conn, &name, o, json!({ "name": name })).await
                }
            })?,
        )?;

        let s = st.clone();
        t.set(
            "resize",
            lua.create_async_function(move |_, (conn, name, flavor, opts): (String, String, String, Option<Table>)| {
                let s = s.clone();
                async move { cloud_change(&s, "resize", &conn, &name, opts, json!({ "name": name, "flavor": flavor })).await }
            })?,
        )?;

        let s = st.clone();
        t.set(
            "confirm_resize",
            lua.create_async_function(move |_, (conn, name, opts): (String, String, Option<Table>)| {
                let s = s.clone();
                async move { cloud_change(&s, "confirm_resize", &conn, &name, opts, json!({ "name": name })).await }
            })?,
        )?;

        let s = st.clone();
        t.set(
            "console_log",
            lua.create_async_function(move |_, (conn, name, opts): (String, String, Option<Table>)| {
                let s = s.clone();
                async move {
                    let (_, o) = opts_of("console_log", opts, &["lines"])?;
                    valid_name("console_log", &name)?;
                    s.check("console_log", &conn, "read")?;
                    let lines = match o.get("lines") {
                        Some(v) => crate::kit::options::count_opt("virt.console_log", "lines", v.clone())?.clamp(1, 10_000) as u32,
                        None => 100,
                    };
                    let backend = s.backend(&conn);
                    if matches!(backend, Backend::Libvirt(_)) {
                        return Err(openstack_only("console_log", &conn));
                    }
                    let real = async {
                        let Backend::OpenStack(c) = backend else { return Err("no connection to send to".to_string()) };
                        let cloud = s.cloud(&conn)?;
                        let srv = s.server(&cloud, c, &name).await?;
                        let id = srv["id"].as_str().unwrap_or_default();
                        cloud.console_log(id, lines).await.map(Value::String).map_err(|e| format!("{name}: {e}"))
                    };
                    let v = s.ask("console_log", &conn, json!({ "name": name, "lines": lines }), real).await?;
                    Ok(v.as_str().unwrap_or_default().to_string())
                }
            })?,
        )?;

        for call in ["flavors", "images", "hypervisors", "usage"] {
            let s = st.clone();
            t.set(
                call,
                lua.create_async_function(move |lua, (conn, opts): (String, Option<Table>)| {
                    let s = s.clone();
                    async move {
                        let (_, o) = opts_of(call, opts, if call == "usage" { &["since"] } else { &[] })?;
                        s.check(call, &conn, "read")?;
                        let backend = s.backend(&conn);
                        if matches!(backend, Backend::Libvirt(_)) {
                            return Err(openstack_only(call, &conn));
                        }
                        let since = match o.get("since") {
                            Some(v) => crate::kit::options::duration_opt("virt.usage", "since", v.clone())?,
                            None => Duration::from_secs(24 * 3600),
                        };
                        let real = async {
                            let cloud = s.cloud(&conn)?;
                            let r = match call {
                                "flavors" => cloud.flavors().await,
                                "images" => cloud.images().await,
                                "hypervisors" => cloud.hypervisors().await,
                                _ => cloud.usage(chrono::Utc::now() - chrono::Duration::from_std(since).unwrap_or_default()).await,
                            };
                            r.map(Value::from).map_err(|e| e.to_string())
                        };
                        let args = if call == "usage" { json!({ "since_s": since.as_secs() }) } else { json!({}) };
                        let v = s.ask(call, &conn, args, real).await?;
                        let v = if call == "usage" && s.scope.projects.is_some() {
                            Value::from(
                                v.as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter(|u| s.scope.allows_project(u["project"].as_str(), None))
                                    .cloned()
                                    .collect::<Vec<_>>(),
                            )
                        } else {
                            v
                        };
                        crate::kit::json_to_lua(&lua, &v)
                    }
                })?,
            )?;
        }
        Ok(t)
    }
}

/// A change only OpenStack makes (resize, confirm_resize): checked like any other, refused on a
/// libvirt connection, then made.
async fn cloud_change(s: &State, call: &'static str, conn: &str, name: &str, opts: Option<Table>, args: Value) -> mlua::Result<bool> {
    let (o, _) = opts_of(call, opts, &[])?;
    valid_name(call, name)?;
    s.check(call, conn, "write")?;
    if matches!(s.backend(conn), Backend::Libvirt(_)) {
        return Err(openstack_only(call, conn));
    }
    change(s, call, conn, name, o, args).await
}

/// A change to VM `name` on `conn` (a power action, create, delete, resize, confirm): planned
/// in a dry run (after checking the VM is there and may be touched), else made and waited for;
/// audited either way with the VM's state before and after.
async fn change(s: &State, call: &'static str, conn: &str, name: &str, o: Opts, args: Value) -> mlua::Result<bool> {
    let backend = s.backend(conn);
    let mut detail = json!({ "connection": conn });
    if let Some(spec) = args.get("spec") {
        detail["spec"] = spec.clone();
    }
    if let Some(xml) = args.get("xml") {
        detail["xml"] = xml.clone();
    }
    if let Some(f) = args.get("flavor") {
        detail["flavor"] = f.clone();
    }
    if s.ctx.dry_run {
        // What the plan rests on is read (a test's fakes stand in for nothing here).
        if s.ctx.exchange.is_none() {
            let before = match backend {
                #[cfg(feature = "virt")]
                Backend::Libvirt(c) => {
                    let exists = s.open.exists(conn, c, name).map_err(|m| LUA.err(call, m))?;
                    match (call, exists) {
                        ("create", true) => return Err(LUA.err(call, format!("a VM `{name}` already exists on {conn}"))),
                        ("create", false) => Value::Null,
                        (_, false) => return Err(LUA.err(call, format!("no VM `{name}` on {conn}"))),
                        _ => Value::Null,
                    }
                }
                #[cfg(not(feature = "virt"))]
                Backend::Libvirt(_) => return Err(LUA.err(call, no_libvirt(conn))),
                Backend::OpenStack(c) => {
                    let cloud = s.cloud(conn).map_err(|m| LUA.err(call, m))?;
                    if call == "create" {
                        let (_, plan) = create_body(&cloud, &args["spec"]).await.map_err(|m| LUA.err(call, m))?;
                        detail["create"] = plan;
                        Value::Null
                    } else {
                        let srv = s.server(&cloud, c, name).await.map_err(|m| LUA.err(call, m))?;
                        json!(srv["status"])
                    }
                }
                Backend::Test => Value::Null,
            };
            if !before.is_null() {
                detail["before"] = before;
            }
        }
        detail["planned"] = json!(true);
        s.record(call, name, true, detail)?;
        return Ok(false);
    }
    let real = async {
        match backend {
            #[cfg(feature = "virt")]
            Backend::Libvirt(c) => {
                match call {
                    "create" => s.open.create(conn, c, name, args["xml"].as_str().unwrap_or_default())?,
                    "delete" => s.open.delete(conn, c, name)?,
                    _ => s.open.power(conn, c, name, call)?,
                }
                Ok(json!(true))
            }
            #[cfg(not(feature = "virt"))]
            Backend::Libvirt(_) => Err(no_libvirt(conn)),
            Backend::OpenStack(c) => openstack_change(s, c, call, conn, name, &o, &args).await,
            Backend::Test => Err("no connection to send to".into()),
        }
    };
    let r = s.ask(call, conn, args.clone(), real).await;
    match &r {
        Ok(v) if v.is_object() => {
            detail["before"] = v["before"].clone();
            detail["after"] = v["after"].clone();
        }
        Ok(_) => {}
        Err(e) => detail["error"] = json!(e.to_string()),
    }
    s.record(call, name, r.is_ok(), detail)?;
    r.map(|_| true)
}

/// A change on OpenStack: looked up (and the project checked) first, then sent and waited for.
/// The answer is `{ before, after }` (Nova's status; after is null for a deleted server).
async fn openstack_change(s: &State, c: &OsConn, call: &str, conn: &str, name: &str, o: &Opts, args: &Value) -> Result<Value, String> {
    let cloud = s.cloud(conn)?;
    let wait = s.wait(c, o);
    let (project, _) = cloud.whoami().await.map_err(|e| e.to_string())?;
    if call == "create" {
        let own = match &c.login {
            OsLogin::Password { project, .. } => Some(project.as_str()),
            OsLogin::AppCredential { .. } => None,
        };
        if !s.scope.allows_project(project.as_deref(), own) {
            return Err(format!(
                "permission denied: new servers go to project {}, not among the applet's virt projects",
                project.as_deref().unwrap_or("?")
            ));
        }
        if cloud.find(name, false).await.is_ok() {
            return Err(format!("a server `{name}` already exists on {conn}"));
        }
        let (body, _) = create_body(&cloud, &args["spec"]).await?;
        let made = cloud.create(&body).await.map_err(|e| format!("{name}: {e}"))?;
        let id = made["id"].as_str().ok_or("Nova answered without the new server's id")?.to_string();
        let done = cloud.wait(&id, &["ACTIVE"], false, wait).await.map_err(|e| format!("{e} (server {id})"))?;
        return Ok(json!({ "before": null, "after": done.map(|d| nova::normalize(&d)) }));
    }
    let srv = s.server(&cloud, c, name).await?;
    let id = srv["id"].as_str().unwrap_or_default().to_string();
    let before = nova::normalize(&srv);
    let sent = |e: openstack::OsError| format!("{name}: {e}");
    let after = match call {
        "delete" => {
            cloud.delete(&id).await.map_err(sent)?;
            cloud.wait(&id, &[], true, wait).await.map_err(|e| e.to_string())?
        }
        "resize" => {
            let f = args["flavor"].as_str().unwrap_or_default();
            let flavors = cloud.flavors().await.map_err(|e| e.to_string())?;
            let flavor = flavors.iter().find(|x| x["id"] == f || x["name"] == f).ok_or_else(|| format!("no flavor `{f}` on {conn}"))?;
            cloud.action(&id, &json!({ "resize": { "flavorRef": flavor["id"] } })).await.map_err(sent)?;
            cloud.wait(&id, &["VERIFY_RESIZE"], false, wait).await.map_err(|e| e.to_string())?
        }
        "confirm_resize" => {
            cloud.action(&id, &json!({ "confirmResize": null })).await.map_err(sent)?;
            cloud.wait(&id, &["ACTIVE", "SHUTOFF"], false, wait).await.map_err(|e| e.to_string())?
        }
        _ => {
            let (body, target) = power_action(call, o.hard);
            cloud.action(&id, &body).await.map_err(sent)?;
            cloud.wait(&id, &[target], false, wait).await.map_err(|e| e.to_string())?
        }
    };
    Ok(json!({ "before": before, "after": after.map(|a| nova::normalize(&a)) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_become_escaped_domain_xml_and_bad_ones_are_named() {
        let dirs = [std::path::PathBuf::from("/var/lib")];
        let spec = json!({ "name": "vm1", "vcpus": 2, "memory": 2048, "network": "default", "disk": "/var/lib/x'y.qcow2" });
        let x = domain_xml(&spec, "kvm", &dirs).unwrap();
        assert!(x.contains("<name>vm1</name>") && x.contains("<vcpu>2</vcpu>") && x.contains("<memory unit='MiB'>2048</memory>"));
        assert!(x.contains("file='/var/lib/x&apos;y.qcow2'") && x.starts_with("<domain type='kvm'>"), "{x}");
        assert!(domain_xml(&json!({ "name": "vm1", "cpus": 2 }), "kvm", &dirs).unwrap_err().contains("unknown key `cpus`"));
        assert!(domain_xml(&json!({ "name": "vm1", "vcpus": 0 }), "kvm", &dirs).unwrap_err().contains("vcpus"));
        assert!(domain_xml(&json!({ "name": "vm1", "disk": "relative.img" }), "kvm", &dirs).unwrap_err().contains("absolute"));
        for bad in ["/etc/shadow", "/var/lib/../../etc/shadow", "/var/lib"] {
            assert!(domain_xml(&json!({ "name": "vm1", "disk": bad }), "kvm", &dirs).unwrap_err().contains("disk_dirs"), "{bad}");
        }
        assert!(domain_xml(&json!({ "name": "vm1", "disk": "/var/lib/a.qcow2" }), "kvm", &[]).unwrap_err().contains("none configured"));
    }
}
