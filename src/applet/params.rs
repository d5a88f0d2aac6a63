//! Parameter validation: typed values from JSON or `k=v` strings, checked against the manifest.

use serde_json::{Map, Value};

use super::manifest::Manifest;
use super::spec::ParamSpec;
use super::spec::{check_value, coerce_str};
use crate::error::ParamError;

/// Builds the params table for a run: `json` first, then `pairs` (`--param k=v`) on top, then
/// defaults. Every problem is reported, not just the first.
pub fn resolve(
    manifest: &Manifest,
    json: Option<&Map<String, Value>>,
    pairs: &[(String, String)],
) -> Result<Map<String, Value>, Vec<ParamError>> {
    let (out, errs) = resolve_partial(manifest, json, pairs);
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// Like [`resolve`], but keeps the params that are valid next to the errors of the others, so
/// a further check of the valid ones (host selectors against the cmdb) is reported together
/// with them.
pub fn resolve_partial(
    manifest: &Manifest,
    json: Option<&Map<String, Value>>,
    pairs: &[(String, String)],
) -> (Map<String, Value>, Vec<ParamError>) {
    let mut out = Map::new();
    let mut errs = Vec::new();
    let mut err = |param: &str, message: String| errs.push(ParamError { param: param.to_string(), message });

    if let Some(json) = json {
        for (name, value) in json {
            match manifest.params.get(name) {
                None => err(name, unknown_msg(manifest)),
                Some(spec) => match check_value(spec, value) {
                    Ok(v) => {
                        out.insert(name.clone(), v);
                    }
                    Err(m) => err(name, hide_secret(spec, m)),
                },
            }
        }
    }
    for (name, raw) in pairs {
        match manifest.params.get(name) {
            None => err(name, unknown_msg(manifest)),
            Some(spec) => match coerce_str(spec, raw) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                }
                Err(m) => err(name, hide_secret(spec, m)),
            },
        }
    }
    for (name, spec) in &manifest.params {
        // A param that was given but invalid is already reported; it is not also "missing".
        let given = json.is_some_and(|j| j.contains_key(name)) || pairs.iter().any(|(k, _)| k == name);
        if out.contains_key(name) || given {
            continue;
        }
        if let Some(default) = &spec.default {
            out.insert(name.clone(), check_value(spec, default).unwrap_or_else(|_| default.clone()));
        } else if spec.required {
            err(name, format!("required {} param is missing", spec.ty.name()));
        }
    }
    (out, errs)
}

/// Resolves the params and runs `more` on the valid ones; every error of both, together.
pub fn resolve_then(
    manifest: &Manifest,
    json: Option<&Map<String, Value>>,
    pairs: &[(String, String)],
    more: impl FnOnce(Map<String, Value>) -> Result<Map<String, Value>, Vec<ParamError>>,
) -> Result<Map<String, Value>, Vec<ParamError>> {
    let (valid, mut errs) = resolve_partial(manifest, json, pairs);
    match more(valid) {
        Ok(v) if errs.is_empty() => Ok(v),
        Ok(_) => Err(errs),
        Err(more_errs) => {
            errs.extend(more_errs);
            Err(errs)
        }
    }
}

/// A secret param's error never repeats the value it got.
fn hide_secret(spec: &ParamSpec, message: String) -> String {
    if spec.secret { format!("not a valid {} (the value is not shown: secret param)", spec.ty.name()) } else { message }
}

fn unknown_msg(manifest: &Manifest) -> String {
    if manifest.params.is_empty() {
        format!("unknown param: {} takes no params", manifest.name)
    } else {
        let known: Vec<&str> = manifest.params.keys().map(String::as_str).collect();
        format!("unknown param (known: {})", known.join(", "))
    }
}

/// The params with every `secret = true` param replaced by `"<redacted>"`.
pub fn redacted(manifest: &Manifest, params: &Map<String, Value>) -> Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| {
            let secret = manifest.params.get(k).is_some_and(|s| s.secret);
            (k.clone(), if secret { Value::String("<redacted>".into()) } else { v.clone() })
        })
        .collect()
}

/// Largest param value, as compact JSON, that an audit record keeps whole.
pub const AUDIT_VALUE_BYTES: usize = 4096;

/// Params as the audit log keeps them: a value over [`AUDIT_VALUE_BYTES`] (as compact JSON) is
/// replaced by `{"sha256": HEX, "bytes": N}` of that JSON, so a record stays small and still
/// proves what ran.
pub fn for_audit(params: Map<String, Value>) -> Map<String, Value> {
    use sha2::Digest;
    params
        .into_iter()
        .map(|(k, v)| {
            let json = serde_json::to_vec(&v).unwrap_or_default();
            if json.len() <= AUDIT_VALUE_BYTES {
                return (k, v);
            }
            (k, serde_json::json!({ "sha256": hex::encode(sha2::Sha256::digest(&json)), "bytes": json.len() }))
        })
        .collect()
}
