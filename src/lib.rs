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

pub use util::install_tls_provider;
