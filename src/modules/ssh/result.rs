//! What `ssh.*` returns for one host.

use serde::{Deserialize, Serialize};

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
    /// `ssh.put` of an object, `ssh.get` to a destination: the bytes moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `ssh.put` of an object, `ssh.get` to a destination: their hex SHA-256, as checked on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `ssh.get` to a destination: the stored object as the destination describes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
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

/// What a host answered a call, as a test fakes it and a transcript keeps it: `exit_code`
/// (0 when a fake leaves it out and gives no `error`), `stdout`, `stderr`, `content` (`ssh.get`),
/// `bytes` and `sha256` (an object put, a get to a destination), `object` (a get to a
/// destination), `error` (the call failed: "host down", "timed out ...").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl Answer {
    pub fn of(r: &HostResult) -> Answer {
        Answer {
            exit_code: r.exit_code,
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            content: r.content.clone(),
            bytes: r.bytes,
            sha256: r.sha256.clone(),
            object: r.object.clone(),
            error: r.error.clone(),
            truncated: r.truncated,
        }
    }

    /// The host's result; `exec` for a command (its exit code decides `ok`).
    pub fn into_result(self, host: &str, exec: bool) -> HostResult {
        let exit_code = match (exec, self.exit_code, &self.error) {
            (true, None, None) => Some(0),
            (_, code, _) => code,
        };
        let ok = self.error.is_none() && (!exec || exit_code == Some(0));
        HostResult {
            host: host.to_string(),
            ok,
            exit_code,
            stdout: self.stdout,
            stderr: self.stderr,
            content: self.content,
            bytes: self.bytes,
            sha256: self.sha256,
            object: self.object,
            error: self.error,
            truncated: self.truncated,
            ..Default::default()
        }
    }
}
