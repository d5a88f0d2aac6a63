//! What `ssh.*` returns for one host.

use serde::Serialize;

/// The outcome on one host.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HostResult {
    pub host: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    /// Seconds.
    pub duration: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Dry run: what would run, nothing connected.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub planned: bool,
    /// Not started: an earlier batch failed (canary or stop_after).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Output was cut at [ssh] max_output.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// `ssh.get`: the file's content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The command as run on the host (dry run and errors show it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl HostResult {
    pub fn failed(host: &str, error: impl Into<String>) -> HostResult {
        HostResult { host: host.into(), error: Some(error.into()), ..Default::default() }
    }
}

crate::kit::fanout::impl_outcome!(HostResult);
