//! `opslet meta` writes what luau-lsp needs (docs/testing.md, "Editor setup"): the definitions,
//! the stdlib helpers' stubs, each applet's `Params`, `.luaurc` and `.vscode/settings.json`
//! (never over the user's own), with every name `require` accepts at run time mapped to its file.
//! There is no Luau type checker here, so the Luau written is checked by the compiler's parser.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const MANIFEST: &str = r#"name = "disk-check"
version = "1.0.0"

[params.hosts]
type = "host-selector"
required = true
description = "Which hosts"

[params.threshold]
type = "integer"
default = 90

[params.ratio]
type = "number"
required = true

[params.verbose]
type = "boolean"

[params.mode]
type = "enum"
values = ["fast", "full"]

[params.level]
type = "enum"
values = ["low", "high"]
default = "low"

[params.paths]
type = "list"

[params.ports]
type = "list"
items = "integer"
default = [22]

[params.note]
type = "string"
multiline = true

[params.end]
type = "string"
required = true
"#;

const PARAMS: &str = "export type DiskCheckParams = {
\t-- Which hosts
\thosts: string,
\tthreshold: number,
\tratio: number,
\tverbose: boolean?,
\tmode: (\"fast\" | \"full\")?,
\tlevel: \"low\" | \"high\",
\tpaths: { string }?,
\tports: { number },
\tnote: string?,
\t[\"end\"]: string,
}

export type Params = DiskCheckParams
";

/// The main.lua docs/testing.md shows: typed params and ctx.
const MAIN: &str = r#"local util = require "lib.util"
local str = require "opslet.strings"

return function(params: Params, ctx: Ctx)
	return { n = util.double(params.threshold), first = str.split(params.hosts, ",")[1], by = ctx.caller }
end
"#;

fn opslet(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_opslet")).args(args).current_dir(cwd).env_remove("OPSLET_CONFIG").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A workspace with one applet (`apps/disk-check`): modules at two depths, a test file, and a
/// hidden folder the package loader skips.
fn workspace() -> (tempfile::TempDir, std::path::PathBuf) {
    let ws = tempfile::tempdir().unwrap();
    let app = ws.path().join("apps/disk-check");
    put(&app.join("applet.toml"), MANIFEST);
    put(&app.join("main.lua"), MAIN);
    put(&app.join("lib/util.lua"), "local M = {}\nfunction M.double(n: number): number return n * 2 end\nreturn M\n");
    put(&app.join("lib/deep/x.lua"), "return require \"lib.util\"\n");
    put(
        &app.join("tests/main_test.lua"),
        "test(\"doubles\", function()\n\tlocal r = run({ hosts = \"web1\", ratio = 1, [\"end\"] = \"x\" })\n\tassert.eq(r.n, 180)\nend)\n",
    );
    put(&app.join(".hidden/skip.lua"), "return 1\n");
    (ws, app)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn meta_writes_definitions_stubs_params_and_editor_settings() {
    let (ws, app) = workspace();
    let o = opslet(ws.path(), &["meta", "--out", ".opslet-meta", "--applet", "apps/disk-check"]);
    assert!(o.status.success(), "{}", text(&o));
    let meta = ws.path().join(".opslet-meta");

    let defs = read(&meta.join("opslet.d.luau"));
    for want in ["declare json:", "declare ssh:", "export type Ctx", "export type OpsletStrings", "export type OpsletText"] {
        assert!(defs.contains(want), "opslet.d.luau lacks {want}");
    }
    let tests = read(&meta.join("opslet-test.d.luau"));
    for want in [
        "declare function test(",
        "declare function fake(",
        "declare function run(",
        "declare function calls(",
        "declare function replay(",
        "declare assert:",
    ] {
        assert!(tests.contains(want), "opslet-test.d.luau lacks {want}");
    }
    for f in ["eq", "ne", "truthy", "falsy", "match", "contains", "called", "not_called", "fails"] {
        assert!(tests.contains(&format!("\t{f}: (")), "opslet-test.d.luau lacks assert.{f}");
    }
    for (module, _) in opslet::runtime::sandbox::STDLIB {
        let stub = read(&meta.join(format!("{}.luau", module.replace('.', "/"))));
        let ty = format!("Opslet{}", {
            let rest = module.strip_prefix("opslet.").unwrap();
            rest[..1].to_uppercase() + &rest[1..]
        });
        assert!(stub.contains(&format!(":: {ty}")), "{module}'s stub returns {ty}: {stub}");
        assert!(defs.contains(&format!("export type {ty} = {{")), "opslet.d.luau lacks {ty}");
    }

    let params = read(&meta.join("params/disk-check.d.luau"));
    assert!(params.contains(PARAMS), "params/disk-check.d.luau:\n{params}");

    let luaurc = json(&ws.path().join(".luaurc"));
    assert_eq!(luaurc["languageMode"], "strict");
    assert!(luaurc["aliases"].is_object(), "{luaurc}");

    let settings = json(&ws.path().join(".vscode/settings.json"));
    assert_eq!(settings["luau-lsp.platform.type"], "standard");
    assert_eq!(settings["files.associations"]["*.lua"], "luau");
    let defs = settings["luau-lsp.types.definitionFiles"].as_object().unwrap();
    for (name, file) in
        [("opslet", "opslet.d.luau"), ("opslet-test", "opslet-test.d.luau"), ("params-disk-check", "params/disk-check.d.luau")]
    {
        let p = defs[name].as_str().unwrap_or_else(|| panic!("definitionFiles has no {name}: {settings}"));
        assert!(Path::new(p).is_absolute() && Path::new(p).ends_with(file) && Path::new(p).is_file(), "{name}: {p}");
    }
    // Every name the runtime's require accepts resolves to the file it loads.
    let aliases = settings["luau-lsp.require.fileAliases"].as_object().unwrap();
    let app = std::fs::canonicalize(&app).unwrap();
    for (name, file) in [
        ("lib.util", "lib/util.lua"),
        ("lib/util", "lib/util.lua"),
        ("./lib/util", "lib/util.lua"),
        ("lib.deep.x", "lib/deep/x.lua"),
        ("tests.main_test", "tests/main_test.lua"),
    ] {
        assert_eq!(aliases.get(name).and_then(Value::as_str).map(Path::new), Some(app.join(file).as_path()), "{name}: {settings}");
    }
    for (module, _) in opslet::runtime::sandbox::STDLIB {
        let p = aliases[*module].as_str().unwrap();
        assert!(Path::new(p).is_file(), "{module} -> {p}");
    }
    assert!(!aliases.contains_key("main") && !aliases.keys().any(|k| k.contains("hidden")), "{settings}");

    // The applet still checks: main.lua's annotations compile, and the package loader skips
    // nothing new (meta wrote nothing into the applet).
    let o = opslet(ws.path(), &["check", "apps/disk-check"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn meta_inside_an_applet_folder_types_that_applet_and_keeps_it_clean() {
    let (_ws, app) = workspace();
    let o = opslet(&app, &["meta", "--out", ".opslet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(read(&app.join(".opslet/params/disk-check.d.luau")).contains(PARAMS));
    assert!(app.join(".luaurc").is_file() && app.join(".vscode/settings.json").is_file());
    let settings = json(&app.join(".vscode/settings.json"));
    assert!(settings["luau-lsp.require.fileAliases"]["lib.util"].is_string(), "{settings}");
    // Hidden files and folders are not part of the package.
    let o = opslet(&app, &["check", "."]);
    assert!(o.status.success(), "{}", text(&o));
    let pkg = opslet::applet::AppletPackage::load_dir(&app).unwrap();
    assert!(pkg.files.keys().all(|f| !f.starts_with('.')), "{:?}", pkg.files.keys());
}

#[test]
fn existing_editor_files_are_kept_and_what_to_add_is_printed() {
    let (ws, _app) = workspace();
    put(&ws.path().join(".vscode/settings.json"), "{ \"editor.tabSize\": 4 }\n");
    put(&ws.path().join(".luaurc"), "{ \"languageMode\": \"nonstrict\" }\n");
    let o = opslet(ws.path(), &["meta", "--out", "meta", "--applet", "apps/disk-check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read(&ws.path().join(".vscode/settings.json")), "{ \"editor.tabSize\": 4 }\n");
    assert_eq!(read(&ws.path().join(".luaurc")), "{ \"languageMode\": \"nonstrict\" }\n");
    let out = text(&o);
    assert!(out.contains("luau-lsp.types.definitionFiles") && out.contains("luau-lsp.require.fileAliases"), "{out}");

    // Once the settings have opslet's, a rerun says so and prints nothing to add.
    let start = out.find("set these in it:\n").unwrap() + "set these in it:\n".len();
    let printed: serde_json::Map<String, Value> = serde_json::Deserializer::from_str(&out[start..]).into_iter().next().unwrap().unwrap();
    let mut merged = json(&ws.path().join(".vscode/settings.json")).as_object().unwrap().clone();
    merged.extend(printed);
    put(&ws.path().join(".vscode/settings.json"), &serde_json::to_string_pretty(&merged).unwrap());
    let o = opslet(ws.path(), &["meta", "--out", "meta", "--applet", "apps/disk-check"]);
    assert!(text(&o).contains("has these settings already"), "{}", text(&o));
}

#[test]
fn a_folder_that_is_not_an_applet_is_an_error() {
    let ws = tempfile::tempdir().unwrap();
    let o = opslet(ws.path(), &["meta", "--out", "m", "--applet", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("applet.toml"), "{}", text(&o));
}

/// Turns definition-file syntax into plain Luau the compiler parses: `declare NAME: T` becomes
/// `type NAME = T`, `declare function f(...): R` a local function.
fn as_luau(defs: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for line in defs.lines() {
        if let Some(rest) = line.strip_prefix("declare function ") {
            out.push_str(&format!("local function {rest} error() end\n"));
        } else if let Some(rest) = line.strip_prefix("declare ") {
            let (_, ty) = rest.split_once(':').unwrap();
            n += 1;
            out.push_str(&format!("type Declared{n} ={ty}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_luau_written_parses() {
    let (ws, _app) = workspace();
    let o = opslet(ws.path(), &["meta", "--out", "m", "--applet", "apps/disk-check"]);
    assert!(o.status.success(), "{}", text(&o));
    let m = ws.path().join("m");
    let mut files = vec![m.join("params/disk-check.d.luau")];
    for (module, _) in opslet::runtime::sandbox::STDLIB {
        files.push(m.join(format!("{}.luau", module.replace('.', "/"))));
    }
    for f in files {
        opslet::applet::compile::compile("x", read(&f).as_bytes()).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
    }
    for f in ["opslet.d.luau", "opslet-test.d.luau"] {
        let src = as_luau(&read(&m.join(f)));
        opslet::applet::compile::compile(f, src.as_bytes()).unwrap_or_else(|e| panic!("{f}: {e:?}\n{src}"));
    }
}

/// `export type NAME = {` blocks of a definition file -> NAME -> keys.
fn exported(text: &str) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("export type ").and_then(|r| r.strip_suffix(" = {")) {
            out.insert(rest.to_string(), Default::default());
            current = Some(rest.to_string());
        } else if t == "}" {
            current = None;
        } else if let Some(name) = &current
            && let Some((key, _)) = t.split_once(':')
            && !key.starts_with("--")
            && !key.contains(' ')
        {
            out.get_mut(name).unwrap().insert(key.to_string());
        }
    }
    out
}

#[test]
fn stdlib_types_list_every_helper() {
    let types = exported(include_str!("../stdlib/meta/stdlib.d.luau"));
    for (module, src) in opslet::runtime::sandbox::STDLIB {
        let rest = module.strip_prefix("opslet.").unwrap();
        let ty = format!("Opslet{}{}", rest[..1].to_uppercase(), &rest[1..]);
        let listed = types.get(&ty).unwrap_or_else(|| panic!("stdlib/meta/stdlib.d.luau has no `export type {ty} = {{` for {module}"));
        let actual: std::collections::BTreeSet<String> =
            src.lines().filter_map(|l| l.strip_prefix("function M.")).map(|r| r.split('(').next().unwrap().to_string()).collect();
        assert_eq!(listed, &actual, "{ty} (stdlib/meta/stdlib.d.luau) vs {module}'s functions");
    }
}
