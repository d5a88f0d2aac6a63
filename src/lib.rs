//! opslet: sandboxed, audited Lua applets for operations teams.
//!
//! See ARCHITECTURE.md for the map. The entry point for running an applet is
//! [`runtime::Runtime::run`].

pub mod applet;
pub mod auth;
pub mod cli;
pub mod cmdb;
pub mod config;
pub mod error;
pub mod http;
pub mod kit;
pub mod modules;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod service;
pub mod store;
pub mod util;

pub use error::{Error, Result};

/// Installs the process's TLS crypto provider (ring) for HTTP clients; idempotent. opslet's
/// modules call it before building a client; embedders that build their own `reqwest` clients
/// in the same process call it first.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
