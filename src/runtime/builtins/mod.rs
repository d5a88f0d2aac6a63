//! Modules every applet gets without asking: `json`, `log`, `time`, `kv`.
//! Each file has one `module()` entry point building the Lua table.

pub mod json;
pub mod kv;
pub mod log;
pub mod time;

/// Names of the always-available modules, in the order they are documented.
pub const NAMES: &[&str] = &["json", "log", "time", "kv"];
