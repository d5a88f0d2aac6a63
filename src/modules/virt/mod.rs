//! The `virt` host module (cargo feature `virt`): virtual machines through libvirt.
//!
//! `[permissions] virt = ["read"]` or `["read", "write"]`. Connections are `[virt.NAME] uri =
//! "qemu:///system"` in opslet.toml. Reads list and describe domains; writes start, shut down,
//! destroy, reboot, create (from a small spec turned into domain XML) and delete, each audited
//! and only planned in a dry run. One libvirt connection per name and run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, Table, Value as LuaValue};
use parking_lot::Mutex;
use serde_json::{Value, json};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};

use crate::kit::{Grant, HostModule};
pub mod settings;

use crate::config::Config;
use crate::error::Error;
use crate::runtime::context::RunCtx;
use settings::VirtConn;

pub struct VirtModule {
    conns: Arc<BTreeMap<String, VirtConn>>,
}

impl VirtModule {
    pub fn new(conns: BTreeMap<String, VirtConn>) -> VirtModule {
        VirtModule { conns: Arc::new(conns) }
    }
}

/// This module's calls, for their errors (`virt.CALL: ...`).
const LUA: crate::kit::Calls = crate::kit::Calls("virt");

fn state_name(s: &virt::domain::DomainStateEnum) -> &'static str {
    match s {
        virt::enumutil::Enum::Known(DomainState::Running) => "running",
        virt::enumutil::Enum::Known(DomainState::Blocked) => "blocked",
        virt::enumutil::Enum::Known(DomainState::Paused) => "paused",
        virt::enumutil::Enum::Known(DomainState::Shutdown) => "shutting-down",
        virt::enumutil::Enum::Known(DomainState::Shutoff) => "shutoff",
        virt::enumutil::Enum::Known(DomainState::Crashed) => "crashed",
        virt::enumutil::Enum::Known(DomainState::PMSuspended) => "suspended",
        _ => "unknown",
    }
}

fn describe(d: &Domain) -> Result<Value, virt::error::Error> {
    let info = d.info()?;
    Ok(json!({
        "name": d.name()?,
        "uuid": d.uuid_string()?,
        "id": d.id(),
        "state": state_name(&info.state),
        "vcpus": info.nr_virt_cpu,
        "memory_mib": info.memory / 1024,
        "max_memory_mib": info.max_mem / 1024,
        "cpu_time_s": info.cpu_time as f64 / 1e9,
    }))
}

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

#[derive(Clone)]
struct State {
    conns: Arc<BTreeMap<String, VirtConn>>,
    open: Arc<Mutex<HashMap<String, Arc<Connect>>>>,
    ctx: Arc<RunCtx>,
    grant: Grant,
}

impl State {
    /// Checks that `name` is a connection Lua call `call` may use: a configured one, or in a
    /// test (fakes or a transcript answer) with no [virt.*] configured, any (a stand-in that
    /// nothing is sent to).
    fn check_conn(&self, call: &str, name: &str) -> mlua::Result<()> {
        if self.conns.contains_key(name) || (self.conns.is_empty() && self.ctx.exchange.is_some()) {
            return Ok(());
        }
        Err(LUA
            .err(call, format!("no virt connection `{name}` (configured: {})", self.conns.keys().cloned().collect::<Vec<_>>().join(", "))))
    }

    /// The libvirt connection `name`, opened on first use. Only a real call (not a test's fake)
    /// asks for it.
    fn open(&self, name: &str) -> Result<Arc<Connect>, String> {
        let conf = self.conns.get(name).ok_or_else(|| format!("no virt connection `{name}` is configured"))?;
        let mut open = self.open.lock();
        if let Some(c) = open.get(name) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Connect::open(Some(&conf.uri)).map_err(|e| format!("connecting to {} ({}): {e}", name, conf.uri))?);
        open.insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }

    /// The VM `name` on connection `conn`.
    fn domain(&self, conn: &str, name: &str) -> Result<Domain, String> {
        self.open(conn)?.lookup_domain_by_name(name).map_err(|_| format!("no VM `{name}` on {conn}"))
    }

    /// Where the module's calls leave the process: `virt.CALL` on connection `conn` with
    /// `args`, done by `op` (libvirt) unless a test's fake answers it.
    async fn ask(&self, call: &str, conn: &str, args: Value, op: impl FnOnce() -> Result<Value, String>) -> mlua::Result<Value> {
        crate::kit::exchange::call(&self.ctx, &format!("virt.{call}"), conn, args, async { op() }).await.map_err(|m| LUA.err(call, m))
    }

    /// Runs a change to VM `target` (or plans it in a dry run), audited either way; `args`
    /// are the call's (`name`, and for `create` the spec and its XML). `op` makes it.
    async fn change(
        &self,
        call: &str,
        conn: &str,
        target: &str,
        args: Value,
        op: impl FnOnce() -> Result<(), String>,
    ) -> mlua::Result<bool> {
        self.grant.require(call, "write")?;
        let mut d = args.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("name");
        }
        d["connection"] = json!(conn);
        if self.ctx.dry_run {
            d["planned"] = json!(true);
            self.ctx.record_action("virt", call, target, true, d).map_err(mlua::Error::external)?;
            return Ok(false);
        }
        let r = self.ask(call, conn, args, || op().map(|_| json!(true))).await;
        if let Err(e) = &r {
            d["error"] = json!(e.to_string());
        }
        self.ctx.record_action("virt", call, target, r.is_ok(), d).map_err(mlua::Error::external)?;
        r.map(|_| true)
    }
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
        let ok = scope.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(|v| matches!(v.as_str(), Some("read" | "write"))));
        if ok { Ok(()) } else { Err("expected a list of actions: [\"read\"] or [\"read\", \"write\"]".into()) }
    }

    fn register(&self, lua: &Lua, grant: Grant, ctx: &Arc<RunCtx>) -> mlua::Result<Table> {
        let st = State { conns: Arc::clone(&self.conns), open: Arc::default(), ctx: Arc::clone(ctx), grant };
        let t = lua.create_table()?;

        let s = st.clone();
        t.set(
            "list",
            lua.create_async_function(move |lua, (conn, opts): (String, Option<Table>)| {
                let s = s.clone();
                async move {
                    s.grant.require("list", "read")?;
                    let want: Option<String> = match &opts {
                        Some(o) => o.get("state")?,
                        None => None,
                    };
                    s.check_conn("list", &conn)?;
                    let all = s
                        .ask("list", &conn, json!({}), || {
                            let c = s.open(&conn)?;
                            let mut out = Vec::new();
                            for d in c.list_all_domains(0).map_err(|e| e.to_string())? {
                                out.push(describe(&d).map_err(|e| e.to_string())?);
                            }
                            Ok(json!(out))
                        })
                        .await?;
                    let mut out: Vec<Value> =
                        all.as_array().into_iter().flatten().filter(|v| want.as_deref().is_none_or(|w| v["state"] == w)).cloned().collect();
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
                    s.grant.require("info", "read")?;
                    valid_name("info", &name)?;
                    s.check_conn("info", &conn)?;
                    let v = s
                        .ask("info", &conn, json!({ "name": name }), || {
                            let d = s.domain(&conn, &name)?;
                            let mut v = describe(&d).map_err(|e| e.to_string())?;
                            v["xml"] = json!(d.xml_desc(0).map_err(|e| e.to_string())?);
                            Ok(v)
                        })
                        .await?;
                    crate::kit::json_to_lua(&lua, &v)
                }
            })?,
        )?;

        for action in ["start", "shutdown", "destroy", "reboot"] {
            let s = st.clone();
            t.set(
                action,
                lua.create_async_function(move |_, (conn, name): (String, String)| {
                    let s = s.clone();
                    async move {
                        valid_name(action, &name)?;
                        s.grant.require(action, "write")?;
                        s.check_conn(action, &conn)?;
                        if s.ctx.dry_run && s.ctx.exchange.is_none() {
                            s.domain(&conn, &name).map_err(|m| LUA.err(action, m))?;
                        }
                        s.change(action, &conn, &name, json!({ "name": name }), || {
                            let d = s.domain(&conn, &name)?;
                            match action {
                                "start" => d.create().map(|_| ()),
                                "shutdown" => d.shutdown().map(|_| ()),
                                "destroy" => d.destroy().map(|_| ()),
                                _ => d.reboot(0).map(|_| ()),
                            }
                            .map_err(|e| format!("{name} on {conn}: {e}"))
                        })
                        .await
                    }
                })?,
            )?;
        }

        let s = st.clone();
        t.set(
            "create",
            lua.create_async_function(move |lua, (conn, spec): (String, LuaValue)| {
                let s = s.clone();
                async move {
                    let spec: Value = lua.from_value(spec)?;
                    let kind = if s.conns.get(&conn).is_some_and(|c| c.uri.starts_with("test:")) { "test" } else { "kvm" };
                    let dirs = s.conns.get(&conn).map(|c| c.disk_dirs.clone()).unwrap_or_default();
                    let xml = domain_xml(&spec, kind, &dirs).map_err(|m| LUA.err("create", m))?;
                    let name = spec["name"].as_str().unwrap_or("").to_string();
                    valid_name("create", &name)?;
                    s.grant.require("create", "write")?;
                    s.check_conn("create", &conn)?;
                    let exists = |c: &Connect| -> Result<(), String> {
                        match c.lookup_domain_by_name(&name) {
                            Ok(_) => Err(format!("a VM `{name}` already exists on {conn}")),
                            Err(_) => Ok(()),
                        }
                    };
                    if s.ctx.dry_run && s.ctx.exchange.is_none() {
                        exists(&*s.open(&conn).map_err(|m| LUA.err("create", m))?).map_err(|m| LUA.err("create", m))?;
                    }
                    s.change("create", &conn, &name, json!({ "name": name, "spec": spec, "xml": xml }), || {
                        let c = s.open(&conn)?;
                        exists(&c)?;
                        let d = c.define_domain_xml(&xml).map_err(|e| format!("{name} on {conn}: {e}"))?;
                        // A VM that was defined but would not start is removed again.
                        d.create()
                            .map(|_| ())
                            .inspect_err(|_| {
                                let _ = d.undefine();
                            })
                            .map_err(|e| format!("{name} on {conn}: {e}"))
                    })
                    .await
                }
            })?,
        )?;

        let s = st;
        t.set(
            "delete",
            lua.create_async_function(move |_, (conn, name): (String, String)| {
                let s = s.clone();
                async move {
                    valid_name("delete", &name)?;
                    s.grant.require("delete", "write")?;
                    s.check_conn("delete", &conn)?;
                    if s.ctx.dry_run && s.ctx.exchange.is_none() {
                        s.domain(&conn, &name).map_err(|m| LUA.err("delete", m))?;
                    }
                    s.change("delete", &conn, &name, json!({ "name": name }), || {
                        let d = s.domain(&conn, &name)?;
                        let gone = || -> Result<(), virt::error::Error> {
                            if d.is_active()? {
                                d.destroy()?;
                            }
                            d.undefine()
                        };
                        gone().map_err(|e| format!("{name} on {conn}: {e}"))
                    })
                    .await
                }
            })?,
        )?;
        Ok(t)
    }
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
