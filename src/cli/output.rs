//! Printing results as a table, JSON or YAML.

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Renders a value in the chosen format (ending with a newline, or empty for `nil` as a table).
pub fn render(v: &Value, format: Format) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into())),
        Format::Yaml => serde_yaml_ng::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n")),
        Format::Table => render_table(v),
    }
}

/// An error as `--format json|yaml` prints it: its kind (as the audit log's `error_kind`),
/// message and exit code, the bad params one per field, an invalid applet's problems with
/// file, line and column.
pub fn error_object(e: &crate::error::Error) -> Value {
    use crate::error::Error;
    let mut err = serde_json::json!({ "kind": e.kind(), "message": e.to_string(), "exit_code": e.exit_code() });
    match e {
        Error::Params(fields) => {
            err["params"] = fields.iter().map(|f| serde_json::json!({ "param": f.param, "message": f.message })).collect();
        }
        Error::Applet(diags) => {
            err["diagnostics"] = diags
                .iter()
                .map(|d| serde_json::json!({ "file": d.file, "line": d.line, "column": d.column, "message": d.message }))
                .collect();
        }
        _ => {}
    }
    err
}

/// Applet-controlled text for a terminal: control characters (escape sequences, carriage
/// returns, and newlines unless `keep_newlines`) are shown escaped, so output cannot rewrite the
/// screen or pass off a line as a host message.
pub fn terminal_safe(s: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t' && !(keep_newlines && c == '\n');
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => terminal_safe(s, true).into_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Narrower than this, wrapping cells would leave a letter or two per line: the table is
/// printed at its full width instead, and the terminal wraps it.
const MIN_WIDTH: u16 = 40;

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    // The caller's terminal (which, for a command the server runs, is not the server's).
    match super::stdio::terminal_width() {
        Some(w) if w >= MIN_WIDTH => {
            t.set_width(w).set_content_arrangement(ContentArrangement::Dynamic);
        }
        _ => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    t
}

/// A table with these columns, in this order (cells made terminal-safe).
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = new_table();
    t.set_header(header.to_vec());
    for row in rows {
        t.add_row(row.iter().map(|c| terminal_safe(c, true).into_owned()));
    }
    format!("{t}\n")
}

fn render_table(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                for k in item.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
            let mut t = new_table();
            t.set_header(columns.iter().map(|c| terminal_safe(c, false).into_owned()).collect::<Vec<_>>());
            for item in items {
                t.add_row(columns.iter().map(|c| cell(item.get(c).unwrap_or(&Value::Null))));
            }
            format!("{t}\n")
        }
        Value::Array(items) => items.iter().map(|i| format!("{}\n", cell(i))).collect(),
        Value::Object(map) => {
            let mut t = new_table();
            t.set_header(vec!["key", "value"]);
            for (k, v) in map {
                t.add_row(vec![terminal_safe(k, false).into_owned(), cell(v)]);
            }
            format!("{t}\n")
        }
        scalar => format!("{}\n", cell(scalar)),
    }
}
