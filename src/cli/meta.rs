//! `opslet meta --out DIR [--applet FOLDER]...`: what an editor running luau-lsp needs to
//! type-check applets as opslet runs them (docs/testing.md, "Editor setup").
//!
//! Into DIR: `opslet.d.luau` (the builtins, every host module, the types of the `opslet.*`
//! helpers), `opslet-test.d.luau` (the functions test files get), `opslet/NAME.luau` (a typed
//! stub per stdlib helper, which the editor's `require "opslet.NAME"` resolves to) and
//! `params/APPLET.d.luau` (the applet's `Params`, from its manifest). Into the current folder
//! (the editor's workspace), each only when absent: `.luaurc` and `.vscode/settings.json`;
//! when one is there already, what to add is printed instead.
//!
//! How luau-lsp finds things (its VS Code extension's `package.json` settings and
//! `src/platform/LSPPlatform.cpp`, v1.5x):
//! - `luau-lsp.types.definitionFiles` (an object: name -> path) loads definition files, whose
//!   `declare`d globals and exported types every file of the workspace sees;
//! - a string `require` resolves relative to the requiring file's folder, or through a
//!   `.luaurc` alias when it starts with `@`; neither is what opslet does (`require "lib.util"`
//!   is `lib/util.lua` from the applet root, `require "opslet.text"` a bundled helper). The
//!   exact-string `luau-lsp.require.fileAliases` (deprecated there in favour of `.luaurc`
//!   aliases, but still read; its paths are not joined to the workspace root, so they are
//!   written absolute) maps each name the runtime accepts to its file;
//! - `.luaurc` (found from a file's folder upwards) sets `languageMode`; its `aliases` serve
//!   only `@` requires, which opslet has not, so it has none;
//! - `luau-lsp.platform.type = "standard"` drops the Roblox types and sourcemap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::stdio::errln;
use crate::applet::manifest::MANIFEST_FILE;
use crate::applet::{Manifest, ParamSpec, ParamType};
use crate::error::{Diagnostic, Error};

/// The types of the `opslet.*` helpers (appended to opslet.d.luau).
pub const STDLIB_TYPES: &str = include_str!("../../stdlib/meta/stdlib.d.luau");
/// The types of the test functions (opslet-test.d.luau).
pub const TEST_TYPES: &str = include_str!("../../stdlib/meta/testing.d.luau");

/// The type a stdlib helper's stub module returns: `opslet.strings` -> `OpsletStrings`.
pub fn stdlib_type_name(module: &str) -> String {
    pascal(&module.replace('.', "-"))
}

/// `disk-check` -> `DiskCheck`.
fn pascal(name: &str) -> String {
    let mut out: String = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            cs.next().map(|c| c.to_ascii_uppercase().to_string() + cs.as_str()).unwrap_or_default()
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert_str(0, "Applet");
    }
    out
}

const LUA_KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in", "local", "nil", "not", "or", "repeat", "return",
    "then", "true", "until", "while",
];

/// A Luau string literal.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scalar_type(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String | ParamType::HostSelector | ParamType::Enum => "string",
        ParamType::Integer | ParamType::Number => "number",
        ParamType::Boolean => "boolean",
        ParamType::List => "{ string }",
    }
}

/// The Luau type of a param's value as main.lua gets it.
pub fn param_type(spec: &ParamSpec) -> String {
    let ty = match spec.ty {
        ParamType::Enum => match spec.values.as_deref() {
            Some(v) if !v.is_empty() => v.iter().map(|s| lua_string(s)).collect::<Vec<_>>().join(" | "),
            _ => "string".into(),
        },
        ParamType::List => format!("{{ {} }}", scalar_type(spec.items.unwrap_or(ParamType::String))),
        other => scalar_type(other).into(),
    };
    // Not required and no default: main.lua gets nil when the caller leaves it out.
    if !spec.required && spec.default.is_none() { if ty.contains('|') { format!("({ty})?") } else { format!("{ty}?") } } else { ty }
}

/// `params/APPLET.d.luau`: `export type <Applet>Params` and `export type Params` (the same; the
/// name to use when the workspace is one applet's).
pub fn params_definitions(manifest: &Manifest) -> String {
    let name = format!("{}Params", pascal(&manifest.name));
    let mut out = format!(
        "-- The params of applet `{}` as main.lua gets them, from its {MANIFEST_FILE} (written by `opslet meta`;\n\
         -- run it again after changing the params). Use: return function(params: Params, ctx: Ctx) ... end\n\n\
         export type {name} = {{\n",
        manifest.name
    );
    for (key, spec) in &manifest.params {
        for line in spec.description.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("\t-- {}\n", line.trim()));
        }
        let key = if LUA_KEYWORDS.contains(&key.as_str()) { format!("[{}]", lua_string(key)) } else { key.clone() };
        out.push_str(&format!("\t{key}: {},\n", param_type(spec)));
    }
    out.push_str(&format!("}}\n\nexport type Params = {name}\n"));
    out
}

/// The names `require` accepts for an applet file (`lib/util.lua`): `lib.util`, `lib/util`,
/// `./lib/util` (src/runtime/sandbox.rs `module_path`).
pub fn require_names(path: &str) -> Vec<String> {
    let Some(base) = path.strip_suffix(".lua") else { return Vec::new() };
    let mut names = vec![base.to_string(), format!("./{base}")];
    if !base.contains('.') {
        names.insert(0, base.replace('/', "."));
    }
    names.dedup();
    names
}

/// The applet's `.lua` files (other than main.lua), as the package loader finds them: hidden
/// files and folders are skipped.
fn lua_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            lua_files(root, &e.path(), out);
        } else if ft.is_file() && name.ends_with(".lua") {
            let rel = e.path().strip_prefix(root).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default();
            if rel != crate::applet::MAIN_FILE {
                out.push(rel);
            }
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Internal(format!("creating {}: {e}", parent.display())))?;
    }
    std::fs::write(path, text).map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// `opslet meta --out DIR [--applet FOLDER]...`. With no `--applet`, the current folder is the
/// applet when it holds an applet.toml.
pub fn write_meta(out: &Path, applets: &[PathBuf]) -> Result<i32, Error> {
    let cwd = std::env::current_dir().map_err(|e| Error::Internal(format!("the current folder: {e}")))?;
    let mut applets = applets.to_vec();
    if applets.is_empty() && cwd.join(MANIFEST_FILE).is_file() {
        applets.push(cwd.clone());
    }

    std::fs::create_dir_all(out).map_err(|e| Error::Internal(format!("creating {}: {e}", out.display())))?;
    let dir = absolute(out);
    let mut definitions = BTreeMap::new();
    let mut aliases = Map::new();

    let p = dir.join("opslet.d.luau");
    write(&p, &format!("{}\n{STDLIB_TYPES}", crate::modules::type_definitions()))?;
    errln!("wrote {}", p.display());
    definitions.insert("opslet".to_string(), path_str(&p));
    let p = dir.join("opslet-test.d.luau");
    write(&p, TEST_TYPES)?;
    errln!("wrote {}", p.display());
    definitions.insert("opslet-test".to_string(), path_str(&p));

    for (module, _) in crate::runtime::sandbox::STDLIB {
        let file = dir.join(format!("{}.luau", module.replace('.', "/")));
        let ty = stdlib_type_name(module);
        write(
            &file,
            &format!(
                "--!strict\n-- `require \"{module}\"` in the editor (written by `opslet meta`): the helper runs inside opslet.\nreturn (nil :: any) :: {ty}\n"
            ),
        )?;
        aliases.insert(module.to_string(), Value::String(path_str(&file)));
    }
    errln!("wrote {}", dir.join("opslet").display());

    for folder in &applets {
        let manifest_path = folder.join(MANIFEST_FILE);
        let src = std::fs::read_to_string(&manifest_path).map_err(|e| {
            Error::Applet(vec![Diagnostic::new(
                manifest_path.display().to_string(),
                format!("cannot read: {e} (--applet names an applet folder)"),
            )])
        })?;
        let manifest = Manifest::parse(&src).map_err(Error::Applet)?;
        let p = dir.join("params").join(format!("{}.d.luau", manifest.name));
        write(&p, &params_definitions(&manifest))?;
        errln!("wrote {} (type {}Params, and Params)", p.display(), pascal(&manifest.name));
        definitions.insert(format!("params-{}", manifest.name), path_str(&p));
        let root = absolute(folder);
        let mut files = Vec::new();
        lua_files(&root, &root, &mut files);
        for f in files {
            for name in require_names(&f) {
                if let Some(Value::String(other)) = aliases.get(&name)
                    && *other != path_str(&root.join(&f))
                {
                    errln!(
                        "note: `require \"{name}\"` names a file of more than one applet; the editor resolves it to {other} (open one applet per workspace)"
                    );
                    continue;
                }
                aliases.insert(name, Value::String(path_str(&root.join(&f))));
            }
        }
    }

    // .luaurc: strict type checking for the workspace.
    let luaurc = json!({ "languageMode": "strict", "aliases": {} });
    let luaurc_text = serde_json::to_string_pretty(&luaurc).expect("json") + "\n";
    let p = cwd.join(".luaurc");
    if p.exists() {
        errln!("kept {} (there already); opslet's is:\n{luaurc_text}", p.display());
    } else {
        write(&p, &luaurc_text)?;
        errln!("wrote {}", p.display());
    }

    // .vscode/settings.json: where luau-lsp finds the definitions and the require names.
    let mut settings = Map::new();
    settings.insert("luau-lsp.platform.type".into(), json!("standard"));
    settings.insert("luau-lsp.sourcemap.enabled".into(), json!(false));
    settings.insert("luau-lsp.types.definitionFiles".into(), json!(definitions));
    settings.insert("luau-lsp.require.fileAliases".into(), Value::Object(aliases));
    settings.insert("files.associations".into(), json!({ "*.lua": "luau" }));
    let settings_text = serde_json::to_string_pretty(&settings).expect("json") + "\n";
    let p = cwd.join(".vscode").join("settings.json");
    if p.exists() {
        // Never rewrite the user's settings: say whether they have ours, and what to add if not.
        let have: Option<Map<String, Value>> = std::fs::read_to_string(&p).ok().and_then(|t| serde_json::from_str(&t).ok());
        if have.is_some_and(|have| settings.iter().all(|(k, v)| have.get(k) == Some(v))) {
            errln!("kept {} (it has these settings already)", p.display());
        } else {
            errln!("kept {} (there already); set these in it:\n{settings_text}", p.display());
        }
    } else {
        write(&p, &settings_text)?;
        errln!("wrote {}", p.display());
    }
    Ok(0)
}
