//! The hand-written type definitions (stdlib/meta/opslet.d.luau) list exactly the functions the
//! always-available modules have; the stdlib helpers' docs list every exported function.

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
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/stdlib/meta/opslet.d.luau")).unwrap();
    let declared = declared(&text);
    let manifest = format!(
        "{MANIFEST}[permissions]\ncmdb = [\"read\"]\nssh = {{ hosts = [\"*\"] }}\nzabbix = [\"read\"]\nes = [\"read\"]\nnetdev = {{ devices = [\"*\"], actions = [\"read\"] }}\nipmi = [\"read\"]\nconfig = [\"read\"]\n{}",
        if cfg!(feature = "virt") { "virt = [\"read\"]\n" } else { "" }
    );
    let modules = if cfg!(feature = "virt") {
        "'json', 'log', 'time', 'kv', 'cmdb', 'ssh', 'zabbix', 'es', 'netdev', 'ipmi', 'config', 'virt'"
    } else {
        "'json', 'log', 'time', 'kv', 'cmdb', 'ssh', 'zabbix', 'es', 'netdev', 'ipmi', 'config'"
    };
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
        let documented = declared.get(module).unwrap_or_else(|| panic!("stdlib/meta/opslet.d.luau has no `declare {module}`"));
        let missing: Vec<_> = keys.difference(documented).collect();
        let stale: Vec<_> = documented.difference(keys).collect();
        assert!(missing.is_empty(), "{module}: functions missing from opslet.d.luau: {missing:?}");
        assert!(stale.is_empty(), "{module}: opslet.d.luau lists functions that do not exist: {stale:?}");
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
