//! The host modules of this build, one folder each, and the one list that names them
//! ([`builtin`]). A module implements [`crate::kit::HostModule`] with the kit's shared pieces and
//! imports no other module.

pub mod cmdb;
pub mod config;
pub mod es;
pub mod ipmi;
pub mod netdev;
pub mod ssh;
#[cfg(feature = "virt")]
pub mod virt;
pub mod zabbix;

use std::sync::Arc;

pub use crate::runtime::modules::ModuleSet;
use crate::kit::HostModule;

/// The modules compiled into this opslet, with default settings (enough to check manifests;
/// runs use [`from_config`]).
pub fn builtin() -> ModuleSet {
    from_config(&crate::config::Config::default()).expect("the default config is valid")
}

/// The modules compiled into this opslet, set up from `config`.
pub fn from_config(config: &crate::config::Config) -> Result<ModuleSet, String> {
    #[allow(unused_mut)]
    let mut modules: Vec<Arc<dyn HostModule>> = vec![
        Arc::new(cmdb::CmdbModule),
        Arc::new(ssh::SshModule::new(config.ssh_settings()?)),
        Arc::new(self::config::ConfigModule::new(config.ssh_settings()?)),
        Arc::new(zabbix::ZabbixModule::new(config.zabbix.clone())),
        Arc::new(es::EsModule::new(config.es.clone())),
        Arc::new(netdev::NetdevModule::new(config.netdev_settings()?)?),
        Arc::new(ipmi::IpmiModule::new(config.ipmi.clone())?),
    ];
    #[cfg(feature = "virt")]
    modules.push(Arc::new(virt::VirtModule::new(config.virt.clone())));
    Ok(ModuleSet::new(modules))
}

/// A runtime with every built-in module, set up from `config`.
pub fn runtime(config: &crate::config::Config, store: Option<crate::store::Store>) -> Result<crate::runtime::Runtime, crate::error::Error> {
    crate::runtime::Runtime::new(config, store, checked(config)?)
}

/// The built-in modules set up from `config`; a module setting that is wrong is a config error
/// naming the file and the key.
pub fn checked(config: &crate::config::Config) -> Result<ModuleSet, crate::error::Error> {
    from_config(config).map_err(|m| crate::error::Error::Config(format!("invalid config: {}: {m}", config.source)))
}
