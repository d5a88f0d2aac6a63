//! The OpenAPI document lists exactly the routes the router has, with the same methods.

use std::collections::BTreeSet;

/// (method, path) of every `.route("PATH", get(..))` / `post(..)` in src/http/mod.rs.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    let mut out = BTreeSet::new();
    for chunk in src.split(".route(\"").skip(1) {
        let (path, rest) = chunk.split_once('"').unwrap();
        // One route per line: `.route("/p", get(a).post(b))`.
        let line = rest.lines().next().unwrap_or_default().trim_start_matches(',').trim_start();
        for method in ["get", "post", "put", "delete", "patch"] {
            if line.starts_with(&format!("{method}(")) || line.contains(&format!(").{method}(")) {
                out.insert((method.to_string(), path.to_string()));
            }
        }
    }
    out
}

fn routes_in_document() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(opslet::http::OPENAPI).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

#[test]
fn the_document_matches_the_router() {
    let (code, doc) = (routes_in_source(), routes_in_document());
    assert!(code.len() >= 20, "found only {} routes in the source: {code:?}", code.len());
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(undocumented.is_empty(), "routes missing from src/http/openapi.json: {undocumented:?}");
    assert!(stale.is_empty(), "src/http/openapi.json documents routes that do not exist: {stale:?}");
}

#[test]
fn the_document_is_valid_openapi_3() {
    let doc: serde_json::Value = serde_json::from_str(opslet::http::OPENAPI).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(['{', '}']);
                let declared = op["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                assert!(declared, "{method} {path}: path parameter `{name}` is not declared");
            }
        }
    }
}
