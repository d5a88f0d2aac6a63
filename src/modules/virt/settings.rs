//! `[virt.NAME]` of opslet.toml: one table per connection, to libvirt (`uri`) or to an
//! OpenStack cloud (`auth_url`). Applets name the connection; which backend it is stays here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;

/// `[virt.NAME]` as written: the keys of either backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    // libvirt
    uri: Option<String>,
    #[serde(default)]
    disk_dirs: Vec<PathBuf>,
    // OpenStack
    auth_url: Option<String>,
    user: Option<String>,
    password_secret: Option<String>,
    #[serde(default = "default_domain")]
    user_domain: String,
    project: Option<String>,
    #[serde(default = "default_domain")]
    project_domain: String,
    application_credential_id: Option<String>,
    application_credential_secret: Option<String>,
    region: Option<String>,
    #[serde(default = "default_interface")]
    interface: String,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_wait")]
    wait: String,
}

fn default_domain() -> String {
    "Default".into()
}
fn default_interface() -> String {
    "public".into()
}
fn default_timeout() -> String {
    "60s".into()
}
fn default_wait() -> String {
    "10m".into()
}

/// `[virt.NAME]`: one libvirt connection.
#[derive(Debug, Clone)]
pub struct VirtConn {
    /// A libvirt URI: "qemu:///system", "qemu+ssh://kvm01/system", "test:///default".
    pub uri: String,
    /// Folders `virt.create` may take disk images from (none: VMs are created without a disk).
    pub disk_dirs: Vec<PathBuf>,
}

/// How opslet logs in to Keystone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsLogin {
    /// A user's password (from a secret), scoped to a project.
    Password { user: String, user_domain: String, password_secret: String, project: String, project_domain: String },
    /// An application credential (its id; the secret from a secret): scoped by itself.
    AppCredential { id: String, secret_secret: String },
}

/// `[virt.NAME]` of an OpenStack cloud.
#[derive(Debug, Clone)]
pub struct OsConn {
    /// Keystone v3, like "https://keystone.example.com:5000/v3".
    pub auth_url: String,
    pub login: OsLogin,
    /// Which of the catalog's regions (None: the only one, or the first).
    pub region: Option<String>,
    /// public, internal or admin endpoints.
    pub interface: String,
    pub ca_file: Option<PathBuf>,
    /// Per request.
    pub timeout: Duration,
    /// How long a long operation (create, reboot, resize) is waited for by default.
    pub wait: Duration,
}

/// One `[virt.NAME]`.
#[derive(Debug, Clone)]
pub enum Conn {
    Libvirt(VirtConn),
    OpenStack(OsConn),
}

/// `[virt.NAME]` tables, checked; a mistake names `virt.NAME.KEY`.
pub fn from_config(config: &Config) -> Result<BTreeMap<String, Conn>, Error> {
    let raw: BTreeMap<String, Raw> = config.section("virt")?;
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        out.insert(name.clone(), check(&name, r).map_err(|m| config.invalid(m))?);
    }
    Ok(out)
}

fn check(name: &str, r: Raw) -> Result<Conn, String> {
    let at = format!("virt.{name}");
    match (&r.uri, &r.auth_url) {
        (Some(uri), None) => {
            let os_keys = [
                ("user", r.user.is_some()),
                ("password_secret", r.password_secret.is_some()),
                ("project", r.project.is_some()),
                ("application_credential_id", r.application_credential_id.is_some()),
                ("application_credential_secret", r.application_credential_secret.is_some()),
                ("region", r.region.is_some()),
                ("ca_file", r.ca_file.is_some()),
            ];
            if let Some((k, _)) = os_keys.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{at}.{k}: an OpenStack key on a libvirt connection (`uri`); give auth_url instead of uri for a cloud"
                ));
            }
            Ok(Conn::Libvirt(VirtConn { uri: uri.clone(), disk_dirs: r.disk_dirs }))
        }
        (None, Some(url)) => {
            if !r.disk_dirs.is_empty() {
                return Err(format!("{at}.disk_dirs: a libvirt key on an OpenStack connection (images come from Glance)"));
            }
            crate::kit::http::check_connection(&at, url, &r.timeout).map_err(|m| m.replace(".url:", ".auth_url:"))?;
            let wait = crate::util::parse_duration(&r.wait).map_err(|m| format!("{at}.wait: {m}"))?;
            if !["public", "internal", "admin"].contains(&r.interface.as_str()) {
                return Err(format!("{at}.interface: `{}` (public, internal or admin)", r.interface));
            }
            let login = match (r.user, r.password_secret, r.project, r.application_credential_id, r.application_credential_secret) {
                (Some(user), Some(password_secret), Some(project), None, None) => {
                    OsLogin::Password { user, user_domain: r.user_domain, password_secret, project, project_domain: r.project_domain }
                }
                (None, None, None, Some(id), Some(secret_secret)) => OsLogin::AppCredential { id, secret_secret },
                _ => {
                    return Err(format!(
                        "{at}: give user, password_secret and project, or application_credential_id and application_credential_secret"
                    ));
                }
            };
            Ok(Conn::OpenStack(OsConn {
                auth_url: url.trim_end_matches('/').to_string(),
                login,
                region: r.region,
                interface: r.interface,
                ca_file: r.ca_file,
                timeout: crate::util::parse_duration(&r.timeout).map_err(|m| format!("{at}.timeout: {m}"))?,
                wait,
            }))
        }
        (Some(_), Some(_)) => Err(format!("{at}: give uri (libvirt) or auth_url (OpenStack), not both")),
        (None, None) => Err(format!("{at}: give uri (a libvirt URI) or auth_url (an OpenStack Keystone v3 URL)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(text: &str) -> Result<Conn, String> {
        check("c", toml::from_str(text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn a_connection_is_libvirt_or_openstack_and_says_which_key_is_wrong() {
        assert!(matches!(conn("uri = \"test:///default\"").unwrap(), Conn::Libvirt(_)));
        let os = conn("auth_url = \"http://k:5000/v3/\"\nuser = \"u\"\npassword_secret = \"p\"\nproject = \"ops\"").unwrap();
        let Conn::OpenStack(os) = os else { panic!() };
        assert_eq!(os.auth_url, "http://k:5000/v3");
        assert_eq!(os.interface, "public");
        assert!(matches!(os.login, OsLogin::Password { ref user_domain, .. } if user_domain == "Default"));
        let ac = conn("auth_url = \"http://k/v3\"\napplication_credential_id = \"id\"\napplication_credential_secret = \"s\"").unwrap();
        assert!(matches!(ac, Conn::OpenStack(OsConn { login: OsLogin::AppCredential { .. }, .. })));
        assert!(conn("").unwrap_err().contains("give uri"));
        assert!(conn("uri = \"x\"\nauth_url = \"http://k/v3\"").unwrap_err().contains("not both"));
        assert!(conn("uri = \"x\"\nproject = \"p\"").unwrap_err().contains("virt.c.project: an OpenStack key"));
        assert!(conn("auth_url = \"http://k/v3\"\nuser = \"u\"").unwrap_err().contains("give user, password_secret and project"));
        assert!(
            conn("auth_url = \"ftp://k/v3\"\napplication_credential_id = \"i\"\napplication_credential_secret = \"s\"")
                .unwrap_err()
                .contains("virt.c.auth_url")
        );
        assert!(
            conn("auth_url = \"http://k/v3\"\napplication_credential_id = \"i\"\napplication_credential_secret = \"s\"\ninterface = \"private\"")
                .unwrap_err()
                .contains("virt.c.interface")
        );
    }
}
