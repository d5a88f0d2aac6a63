//! Luau compilation of an applet's sources to bytecode, done once when a package is built.

use mlua::chunk::Compiler;

use crate::error::Diagnostic;

/// Compiles Luau source to bytecode; a syntax error becomes `path:line: message`.
pub fn compile(path: &str, src: &[u8]) -> Result<Vec<u8>, Diagnostic> {
    Compiler::new().set_optimization_level(1).set_debug_level(1).compile(src).map_err(|e| {
        let msg = match &e {
            mlua::Error::SyntaxError { message, .. } => message.clone(),
            other => other.to_string(),
        };
        syntax_diagnostic(path, &msg)
    })
}

/// Luau reports `LINE: message` (or `:LINE: message`); pull the line out.
fn syntax_diagnostic(path: &str, msg: &str) -> Diagnostic {
    let trimmed = msg.trim().trim_start_matches(':');
    match trimmed.split_once(':') {
        Some((line, rest)) if line.trim().parse::<usize>().is_ok() => {
            Diagnostic { file: path.to_string(), line: line.trim().parse().ok(), column: None, message: rest.trim().to_string() }
        }
        _ => Diagnostic::new(path, msg.trim()),
    }
}
