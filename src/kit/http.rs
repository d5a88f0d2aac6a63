//! The one HTTP client builder of the modules that speak HTTP (zabbix, es, Redfish): TLS through
//! rustls, a timeout, and which certificates to trust.

use std::path::Path;
use std::time::Duration;

/// Which server certificates a client accepts.
pub enum Trust {
    /// The system's roots.
    System,
    /// The system's roots and the PEM certificates of a CA file (`ca_file`).
    Also(Vec<u8>),
    /// Only the PEM certificates of a CA file: a BMC address changed in the cmdb cannot point a
    /// login at a server with any public certificate.
    Only(Vec<u8>),
}

/// The PEM text of a `ca_file` setting (None when unset); an error names the file.
pub fn read_ca(ca_file: Option<&Path>) -> Result<Option<Vec<u8>>, String> {
    ca_file.map(|p| std::fs::read(p).map_err(|e| format!("ca_file {}: {e}", p.display()))).transpose()
}

/// What a client needs.
pub struct Options {
    /// Whole request, answer included.
    pub timeout: Duration,
    /// Connecting, TLS included.
    pub connect_timeout: Duration,
    pub trust: Trust,
    /// Follow redirects (off where a redirect could carry a login elsewhere).
    pub redirects: bool,
    /// Longest wait for the next bytes of an answer (streams, whose whole transfer has no
    /// fixed bound, set this and a long `timeout`).
    pub read_timeout: Option<Duration>,
}

/// An HTTP client with these options.
pub fn client(o: Options) -> Result<reqwest::Client, String> {
    crate::util::install_tls_provider();
    let mut b = reqwest::Client::builder().timeout(o.timeout).connect_timeout(o.connect_timeout);
    match o.trust {
        Trust::System => {}
        Trust::Also(pem) => {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("the CA certificate is unreadable: {e}"))? {
                b = b.add_root_certificate(cert);
            }
        }
        Trust::Only(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("the CA certificate is unreadable: {e}"))?;
            b = b.tls_certs_only(certs);
        }
    }
    if let Some(t) = o.read_timeout {
        b = b.read_timeout(t);
    }
    if !o.redirects {
        b = b.redirect(reqwest::redirect::Policy::none());
    }
    b.build().map_err(|e| format!("building the HTTP client: {e}"))
}

/// Checks what every named HTTP connection of a module (`[zabbix.NAME]`, `[es.NAME]`) has: an
/// http(s) URL and a timeout, each named `MODULE.NAME.KEY` in errors.
pub fn check_connection(at: &str, url: &str, timeout: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{at}.url: `{url}` is not an http(s) URL"));
    }
    crate::util::parse_duration(timeout).map_err(|m| format!("{at}.timeout: {m}"))?;
    Ok(())
}

/// At most one of a module's named connections may say `default = true`.
pub fn one_default(module: &str, defaults: impl Iterator<Item = bool>) -> Result<(), String> {
    if defaults.filter(|d| *d).count() > 1 {
        return Err(format!("{module}: more than one connection says default = true"));
    }
    Ok(())
}
