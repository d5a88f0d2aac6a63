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
    fn conn(&self, call: &str, name: &str) -> mlua::Result<Arc<Connect>> {
        let conf = self.conns.get(name).ok_or_else(|| {
            LUA.err(
                call,
                format!("no virt connection `{name}` (configured: {})", self.conns.keys().cloned().collect::<Vec<_>>().join(", ")),
            )
        })?;
        let mut open = self.open.lock();
        if let Some(c) = open.get(name) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Connect::open(Some(&conf.uri)).map_err(|e| LUA.err(call, format!("connecting to {} ({}): {e}", name, conf.uri)))?);
        open.insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }

    fn domain(&self, call: &str, conn: &str, name: &str) -> mlua::Result<Domain> {
        valid_name(call, name)?;
        self.conn(call, conn)?.lookup_domain_by_name(name).map_err(|_| LUA.err(call, format!("no VM `{name}` on {conn}")))
    }

    /// Runs a change (or plans it in a dry run), audited either way.
    fn change(
        &self,
        call: &str,
        conn: &str,
        target: &str,
        detail: Value,
        f: impl FnOnce() -> Result<(), virt::error::Error>,
    ) -> mlua::Result<bool> {
        self.grant.require(call, "write")?;
        let mut d = detail;
        d["connection"] = json!(conn);
        if self.ctx.dry_run {
            d["planned"] = json!(true);
            self.ctx.record_action("virt", call, target, true, d).map_err(mlua::Error::external)?;
            return Ok(false);
        }
        let r = f();
        if let Err(e) = &r {
            d["error"] = json!(e.to_string());
        }
        self.ctx.record_action("virt", call, target, r.is_ok(), d).map_err(mlua::Error::external)?;
        r.map(|_| true).map_err(|e| LUA.err(call, format!("{target} on {conn}: {e}")))
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
            lua.create_function(move |lua, (conn, opts): (String, Option<Table>)| {
                s.grant.require("list", "read")?;
                let want: Option<String> = match &opts {
                    Some(o) => o.get("state")?,
                    None => None,
                };
                let c = s.conn("list", &conn)?;
                let mut out = Vec::new();
                for d in c.list_all_domains(0).map_err(|e| LUA.err("list", e))? {
                    let v = describe(&d).map_err(|e| LUA.err("list", e))?;
                    if want.as_deref().is_none_or(|w| v["state"] == w) {
                        out.push(v);
                    }
                }
                out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                crate::kit::json_to_lua(lua, &json!(out))
            })?,
        )?;

        let s = st.clone();
        t.set(
            "info",
            lua.create_function(move |lua, (conn, name): (String, String)| {
                s.grant.require("info", "read")?;
                let d = s.domain("info", &conn, &name)?;
                let mut v = describe(&d).map_err(|e| LUA.err("info", e))?;
                v["xml"] = json!(d.xml_desc(0).map_err(|e| LUA.err("info", e))?);
                crate::kit::json_to_lua(lua, &v)
            })?,
        )?;

        for action in ["start", "shutdown", "destroy", "reboot"] {
            let s = st.clone();
            t.set(
                action,
                lua.create_function(move |_, (conn, name): (String, String)| {
                    let d = s.domain(action, &conn, &name)?;
                    s.change(action, &conn, &name, json!({}), || match action {
                        "start" => d.create().map(|_| ()),
                        "shutdown" => d.shutdown().map(|_| ()),
                        "destroy" => d.destroy().map(|_| ()),
                        _ => d.reboot(0).map(|_| ()),
                    })
                })?,
            )?;
        }

        let s = st.clone();
        t.set(
            "create",
            lua.create_function(move |lua, (conn, spec): (String, LuaValue)| {
                let spec: Value = lua.from_value(spec)?;
                let kind = if s.conns.get(&conn).is_some_and(|c| c.uri.starts_with("test:")) { "test" } else { "kvm" };
                let dirs = s.conns.get(&conn).map(|c| c.disk_dirs.clone()).unwrap_or_default();
                let xml = domain_xml(&spec, kind, &dirs).map_err(|m| LUA.err("create", m))?;
                let name = spec["name"].as_str().unwrap_or("").to_string();
                valid_name("create", &name)?;
                s.grant.require("create", "write")?;
                let c = s.conn("create", &conn)?;
                if c.lookup_domain_by_name(&name).is_ok() {
                    return Err(LUA.err("create", format!("a VM `{name}` already exists on {conn}")));
                }
                s.change("create", &conn, &name, json!({ "spec": spec, "xml": xml }), || {
                    let d = c.define_domain_xml(&xml)?;
                    // A VM that was defined but would not start is removed again.
                    d.create().map(|_| ()).inspect_err(|_| {
                        let _ = d.undefine();
                    })
                })
            })?,
        )?;

        let s = st;
        t.set(
            "delete",
            lua.create_function(move |_, (conn, name): (String, String)| {
                let d = s.domain("delete", &conn, &name)?;
                s.change("delete", &conn, &name, json!({}), || {
                    if d.is_active()? {
                        d.destroy()?;
                    }
                    d.undefine()
                })
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
