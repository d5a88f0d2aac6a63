//! The hand-written type definitions (stdlib/meta/core.d.luau and each module's types.d.luau, as
//! `opslet meta` assembles them) list exactly the functions the modules have; the stdlib helpers'
//! docs list every exported function.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

/// `declare NAME: { key: ..., }` blocks -> NAME -> keys.
fn declared(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("declare ") {
            let name = rest.split(':').next().unwrap().trim().to_string();
            out.insert(name.clone(), BTreeSet::new());
            current = Some(name);
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
fn type_definitions_match_the_modules() {
    let text = opslet::modules::type_definitions();
    let declared = declared(&text);
    let built: Vec<&opslet::modules::Builtin> = opslet::modules::BUILTIN.iter().filter(|b| b.build.is_some()).collect();
    let manifest = format!("{MANIFEST}[permissions]\n{}\n", built.iter().map(|b| b.read_permission).collect::<Vec<_>>().join("\n"));
    let modules = ["json", "log", "time", "kv"]
        .into_iter()
        .chain(built.iter().map(|b| b.name))
        .map(|m| format!("'{m}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let main = format!(
        "return function()
            local out = {{}}
            for _, m in ipairs({{ {modules} }}) do
                local keys = {{}}
                for k in pairs(_G[m]) do table.insert(keys, k) end
                out[m] = keys
            end
            return out
        end"
    );
    let o = run(&runtime(TIGHT), package_with(&manifest, &main, &[]));
    let actual: BTreeMap<String, BTreeSet<String>> = serde_json::from_value(o.result.unwrap()).unwrap();
    for (module, keys) in &actual {
        let documented = declared.get(module).unwrap_or_else(|| panic!("the type definitions have no `declare {module}`"));
        let missing: Vec<_> = keys.difference(documented).collect();
        let stale: Vec<_> = documented.difference(keys).collect();
        assert!(missing.is_empty(), "{module}: functions missing from the type definitions: {missing:?}");
        assert!(stale.is_empty(), "{module}: the type definitions list functions that do not exist: {stale:?}");
    }
}

#[test]
fn stdlib_docs_cover_every_helper() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lua/stdlib.md")).unwrap_or_default();
    for (name, src) in opslet::runtime::sandbox::STDLIB {
        let start = doc.find(&format!("## {name}")).unwrap_or_else(|| panic!("docs/lua/stdlib.md has no section for {name}"));
        let section = &doc[start + 3..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        for line in src.lines() {
            if let Some(rest) = line.strip_prefix("function M.") {
                let f = rest.split('(').next().unwrap();
                assert!(section.contains(&format!(".{f}(")), "docs/lua/stdlib.md does not document {name}.{f}");
            }
        }
    }
}
