//! `[virt.NAME]` of opslet.toml: one table per libvirt connection.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;

/// `[virt.NAME]`: one libvirt connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtConn {
    /// A libvirt URI: "qemu:///system", "qemu+ssh://kvm01/system", "test:///default".
    pub uri: String,
    /// Folders `virt.create` may take disk images from (none: VMs are created without a disk).
    #[serde(default)]
    pub disk_dirs: Vec<PathBuf>,
}

/// `[virt.NAME]` tables.
pub fn from_config(config: &Config) -> Result<BTreeMap<String, VirtConn>, Error> {
    config.section("virt")
}
