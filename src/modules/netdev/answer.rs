//! What a device answered, as a test fakes it and a transcript keeps it: every call that reaches
//! a device goes through `kit::exchange::call` with one of these as its answer (docs/lua/netdev.md,
//! "In tests").
//!
//! | call              | args                     | answer                                              |
//! |-------------------|--------------------------|-----------------------------------------------------|
//! | `netdev.command`  | `command`                | `{ output, rejected }` (`rejected`: the device's error message) |
//! | `netdev.config`   | `lines`, `save`          | `{ applied, saved, transcript, rejected, message }` |
//! | `netdev.backup`   | `command`                | `{ config }`                                        |
//! | `netdev.expect`   | `command`, `patterns`    | `{ output, matched }` (1-based)                     |
//! | `netdev.save`     | —                        | `{}`                                                |
//! | `netdev.prompt`   | —                        | `{ prompt }`                                        |

use serde::{Deserialize, Serialize};

use super::cli::{Applied, CliError, ConfigError, LineRejected};

/// `netdev.command`: what one command printed; `rejected` when the device marked it as an
/// error (its message).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Output {
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl Output {
    pub fn of(r: Result<String, CliError>) -> Result<Output, String> {
        match r {
            Ok(output) => Ok(Output { output, rejected: None }),
            Err(CliError::Rejected { output, message, .. }) => Ok(Output { output, rejected: Some(message) }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The command's output, or the device's rejection of it.
    pub fn into_result(self, command: &str) -> Result<String, CliError> {
        match self.rejected {
            None => Ok(self.output),
            Some(message) => Err(CliError::Rejected { command: command.to_string(), message, output: self.output }),
        }
    }
}

/// The answer of a call that failed as a whole (a fake's `{ error = "..." }`, a lost session).
pub fn failed(m: String) -> CliError {
    CliError::Protocol(m)
}

/// `netdev.config`: lines applied (default: all), saved (default: as asked), the terminal
/// transcript; or the line the device `rejected` with its `message` (`applied`: lines before it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Configured {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transcript: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Configured {
    pub fn of(r: Result<Applied, ConfigError>) -> Result<Configured, String> {
        match r {
            Ok(a) => Ok(Configured { applied: Some(a.lines), saved: Some(a.saved), transcript: a.transcript, ..Default::default() }),
            Err(ConfigError::Line(l)) => Ok(Configured {
                applied: Some(l.index),
                transcript: l.transcript,
                rejected: Some(l.line),
                message: Some(l.message),
                ..Default::default()
            }),
            Err(ConfigError::Cli(e)) => Err(e.to_string()),
        }
    }

    pub fn into_result(self, lines: &[String], save: bool) -> Result<Applied, ConfigError> {
        match self.rejected {
            Some(line) => {
                let index = self.applied.or_else(|| lines.iter().position(|l| *l == line)).unwrap_or(0);
                let message = self.message.unwrap_or_else(|| "rejected".into());
                Err(ConfigError::Line(LineRejected { index, line, message, transcript: self.transcript }))
            }
            None => Ok(Applied {
                lines: self.applied.unwrap_or(lines.len()).min(lines.len()),
                transcript: self.transcript,
                saved: self.saved.unwrap_or(save),
            }),
        }
    }
}

/// `netdev.backup`: the configuration the profile's backup command printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Saved {
    pub config: String,
}

/// `netdev.expect`: the output, and which pattern showed (1-based; none: the prompt came back).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expected {
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<usize>,
}

/// `netdev.prompt`: the device's prompt.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prompt {
    pub prompt: String,
}

/// `netdev.save`: nothing but success (or `{ error = "..." }`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Done {}
