//! The libvirt backend of the `virt` module (cargo feature `virt`, the one part of opslet that
//! links a C library): what each call does on a libvirt connection.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value, json};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};

use super::settings::VirtConn;

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

/// A run's libvirt connections, opened on first use.
#[derive(Default)]
pub struct Open(Mutex<HashMap<String, Arc<Connect>>>);

impl Open {
    fn get(&self, name: &str, conf: &VirtConn) -> Result<Arc<Connect>, String> {
        let mut open = self.0.lock();
        if let Some(c) = open.get(name) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Connect::open(Some(&conf.uri)).map_err(|e| format!("connecting to {} ({}): {e}", name, conf.uri))?);
        open.insert(name.to_string(), Arc::clone(&c));
        Ok(c)
    }

    fn domain(&self, name: &str, conf: &VirtConn, vm: &str) -> Result<Domain, String> {
        self.get(name, conf)?.lookup_domain_by_name(vm).map_err(|_| format!("no VM `{vm}` on {name}"))
    }

    /// Every VM, described.
    pub fn list(&self, name: &str, conf: &VirtConn) -> Result<Value, String> {
        let c = self.get(name, conf)?;
        let mut out = Vec::new();
        for d in c.list_all_domains(0).map_err(|e| e.to_string())? {
            out.push(describe(&d).map_err(|e| e.to_string())?);
        }
        Ok(json!(out))
    }

    /// One VM, with its domain XML.
    pub fn info(&self, name: &str, conf: &VirtConn, vm: &str) -> Result<Value, String> {
        let d = self.domain(name, conf, vm)?;
        let mut v = describe(&d).map_err(|e| e.to_string())?;
        v["xml"] = json!(d.xml_desc(0).map_err(|e| e.to_string())?);
        Ok(v)
    }

    /// Whether the VM exists (a dry run's check).
    pub fn exists(&self, name: &str, conf: &VirtConn, vm: &str) -> Result<bool, String> {
        Ok(self.get(name, conf)?.lookup_domain_by_name(vm).is_ok())
    }

    /// start, shutdown, destroy or reboot.
    pub fn power(&self, name: &str, conf: &VirtConn, vm: &str, action: &str) -> Result<(), String> {
        let d = self.domain(name, conf, vm)?;
        match action {
            "start" => d.create().map(|_| ()),
            "shutdown" => d.shutdown().map(|_| ()),
            "destroy" => d.destroy().map(|_| ()),
            _ => d.reboot(0).map(|_| ()),
        }
        .map_err(|e| format!("{vm} on {name}: {e}"))
    }

    /// Defines and starts a VM from domain XML; one that would not start is removed again.
    pub fn create(&self, name: &str, conf: &VirtConn, vm: &str, xml: &str) -> Result<(), String> {
        let c = self.get(name, conf)?;
        if c.lookup_domain_by_name(vm).is_ok() {
            return Err(format!("a VM `{vm}` already exists on {name}"));
        }
        let d = c.define_domain_xml(xml).map_err(|e| format!("{vm} on {name}: {e}"))?;
        d.create()
            .map(|_| ())
            .inspect_err(|_| {
                let _ = d.undefine();
            })
            .map_err(|e| format!("{vm} on {name}: {e}"))
    }

    /// Stops (if running) and undefines a VM.
    pub fn delete(&self, name: &str, conf: &VirtConn, vm: &str) -> Result<(), String> {
        let d = self.domain(name, conf, vm)?;
        let gone = || -> Result<(), virt::error::Error> {
            if d.is_active()? {
                d.destroy()?;
            }
            d.undefine()
        };
        gone().map_err(|e| format!("{vm} on {name}: {e}"))
    }
}
