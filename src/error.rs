//! `Error`, the error of every layer below the edges, with the exit code and the short code
//! (`kind`) each variant maps to; the edges map it in one place each (`cli`: exit codes,
//! `http::error`: status and body).

use std::fmt;

/// A problem at one place in an applet's files: `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { file: file.into(), line: None, column: None, message: message.into() }
    }

    /// A diagnostic located at byte offset `offset` of `source`.
    pub fn at(file: impl Into<String>, source: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(source, offset);
        Diagnostic { file: file.into(), line: Some(line), column: Some(column), message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.file, l, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, column)
}

/// One bad parameter value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "param `{}`: {}", self.param, self.message)
    }
}

/// Which hard limit ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    Cpu,
    Memory,
    WallTime,
    Output,
    ResultSize,
    CallDepth,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu",
            Limit::Memory => "memory",
            Limit::WallTime => "wall-time",
            Limit::Output => "output",
            Limit::ResultSize => "result-size",
            Limit::CallDepth => "call-depth",
        }
    }
}

/// Everything that can go wrong between "the user asked" and "the applet ran".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The applet folder, manifest or Lua sources are invalid.
    #[error("invalid applet:\n{}", join_lines(.0))]
    Applet(Vec<Diagnostic>),
    /// Parameters do not match the manifest.
    #[error("invalid params:\n{}", join_lines(.0))]
    Params(Vec<ParamError>),
    /// The applet raised an error (or returned something that is not a result).
    #[error("{0}")]
    AppletFailed(String),
    /// A hard limit ended the run.
    #[error("{message}")]
    LimitExceeded { limit: Limit, message: String },
    /// The run was cancelled from outside.
    #[error("run cancelled")]
    Cancelled,
    /// Configuration file problems.
    #[error("{0}")]
    Config(String),
    /// Stored data that is missing, damaged or refused (a record that does not parse, a layout
    /// of another version).
    #[error("{0}")]
    Store(String),
    /// The data store itself failed (SQLite: I/O, a damaged file).
    #[error("data store: {0}")]
    Db(#[from] rusqlite::Error),
    /// A command-line value that is malformed (not a param value: the shape of the flag).
    #[error("{0}")]
    Usage(String),
    /// Something asked for by name does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A version that is yanked, asked for without allowing yanked versions (each edge says
    /// how to allow them: a flag, a query parameter).
    #[error("{}", if *.current { format!("{id} is the current version but it is yanked; promote another version or roll back") } else { format!("{id} is yanked") })]
    Yanked { id: String, current: bool },
    /// The caller may not do this: a remote CLI's token is refused, or its role or grants do not
    /// allow the command.
    #[error("{0}")]
    Denied(String),
    /// The server has no room for the run now (its queue, or the applet's or caller's share of
    /// run slots, is full); retrying later may succeed.
    #[error("the server is busy: {0}")]
    Busy(String),
    /// A risky run that must be approved first (see `[approvals]` in opslet.toml): where it
    /// waits, or why it cannot wait here.
    #[error("{0}")]
    NeedsApproval(String),
    /// Anything else: I/O, bugs in host code.
    #[error("{0}")]
    Internal(String),
}

fn join_lines<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n")
}

impl Error {
    /// Process exit code for this error (documented in docs/cli.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::AppletFailed(_) => 1,
            Error::Usage(_) => 2,
            Error::Applet(_) | Error::Params(_) | Error::Config(_) | Error::NotFound(_) | Error::Yanked { .. } => 3,
            Error::LimitExceeded { .. } => 4,
            Error::Cancelled => 6,
            Error::Denied(_) => 11,
            Error::Busy(_) => 12,
            Error::NeedsApproval(_) => 13,
            Error::Store(_) | Error::Db(_) | Error::Internal(_) => 5,
        }
    }

    /// Short machine-readable kind, used in audit records and JSON error output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Applet(_) => "invalid_applet",
            Error::Params(_) => "invalid_params",
            Error::AppletFailed(_) => "applet_error",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Cancelled => "cancelled",
            Error::Config(_) => "config_error",
            Error::Usage(_) => "usage_error",
            Error::NotFound(_) | Error::Yanked { .. } => "not_found",
            Error::Store(_) | Error::Db(_) => "store_error",
            Error::Denied(_) => "forbidden",
            Error::Busy(_) => "busy",
            Error::NeedsApproval(_) => "approval_required",
            Error::Internal(_) => "internal_error",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
