//! `applet.toml`: parsing and validation. Every problem is reported with its line.

use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use super::spec::{ParamSpec, ParamType};
use crate::error::Diagnostic;
use crate::util::{parse_duration, parse_size, validate_name};

pub const MANIFEST_FILE: &str = "applet.toml";

/// The smallest Lua heap a run may have: the sandbox itself needs a few hundred KiB.
pub const MIN_MEMORY: u64 = 2 * 1024 * 1024;

/// The raw shape of `applet.toml`; unknown keys are rejected by serde.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    #[serde(default)]
    params: IndexMap<String, Spanned<ParamSpec>>,
    #[serde(default)]
    permissions: IndexMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    run: RawRun,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    worker_tag: Option<Spanned<String>>,
    #[serde(default)]
    retry: bool,
}

/// `[run]`: where and how the applet runs when a server hands runs to workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunSettings {
    /// Only workers with this tag take its runs (`opslet worker --tags`), unless a run asks
    /// for another.
    pub worker_tag: Option<String>,
    /// The applet may be run again from the start when its worker is lost mid-run (it does
    /// nothing that must not happen twice).
    pub retry: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout: Option<Spanned<String>>,
    cpu: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
}

/// `[limits]` requested by the applet (capped later by the host's maxima).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestedLimits {
    pub timeout: Option<Duration>,
    pub cpu: Option<Duration>,
    pub memory: Option<u64>,
}

/// A validated manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    pub description: String,
    pub tags: Vec<String>,
    pub params: IndexMap<String, ParamSpec>,
    /// Module name -> the scope value as written (checked by the module itself).
    pub permissions: IndexMap<String, toml::Value>,
    pub limits: RequestedLimits,
    pub run: RunSettings,
    /// Line of each permission in applet.toml, for later diagnostics.
    #[serde(skip)]
    pub permission_lines: IndexMap<String, usize>,
}

impl Manifest {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Each host-selector param (or list of them) given in `params`, with the selectors given,
    /// in declared order.
    pub fn host_selectors<'a>(&'a self, params: &'a serde_json::Map<String, serde_json::Value>) -> Vec<(&'a str, Vec<&'a str>)> {
        use super::ParamType;
        use serde_json::Value;
        self.params
            .iter()
            .filter(|(_, spec)| {
                spec.ty == ParamType::HostSelector || (spec.ty == ParamType::List && spec.items == Some(ParamType::HostSelector))
            })
            .filter_map(|(name, _)| match params.get(name) {
                Some(Value::String(s)) => Some((name.as_str(), vec![s.as_str()])),
                Some(Value::Array(a)) => Some((name.as_str(), a.iter().filter_map(Value::as_str).collect())),
                _ => None,
            })
            .collect()
    }

    /// Parses and validates `applet.toml`. Returns every problem found, each with its line.
    pub fn parse(source: &str) -> Result<Manifest, Vec<Diagnostic>> {
        let raw: RawManifest = toml::from_str(source).map_err(|e| {
            let message = e.message().trim().to_string();
            vec![match e.span() {
                Some(span) => Diagnostic::at(MANIFEST_FILE, source, span.start, message),
                None => Diagnostic::new(MANIFEST_FILE, message),
            }]
        })?;
        let mut errs = Vec::new();
        let at = |span: std::ops::Range<usize>, msg: String| Diagnostic::at(MANIFEST_FILE, source, span.start, msg);

        if let Err(msg) = validate_name(raw.name.get_ref()) {
            errs.push(at(raw.name.span(), format!("name: {msg}")));
        }
        let version = match semver::Version::parse(raw.version.get_ref()) {
            Ok(v) => v,
            Err(e) => {
                errs.push(at(raw.version.span(), format!("version `{}` is not semver (like 1.2.0): {e}", raw.version.get_ref())));
                semver::Version::new(0, 0, 0)
            }
        };
        for tag in &raw.tags {
            if validate_name(tag.get_ref()).is_err() {
                errs.push(at(tag.span(), format!("tag `{}` must be lowercase letters, digits and `-`", tag.get_ref())));
            }
        }
        let mut params = IndexMap::new();
        for (pname, spec) in raw.params {
            let span = spec.span();
            let spec = spec.into_inner();
            if let Err(msg) = validate_param_name(&pname) {
                errs.push(at(span.clone(), format!("params.{pname}: {msg}")));
            }
            if let Err(msg) = validate_param_spec(&spec) {
                errs.push(at(span, format!("params.{pname}: {msg}")));
            }
            params.insert(pname, spec);
        }
        let mut permissions = IndexMap::new();
        let mut permission_lines = IndexMap::new();
        for (module, scope) in raw.permissions {
            let span = scope.span();
            permission_lines.insert(module.clone(), crate::error::line_col(source, span.start).0);
            if let Err(msg) = check_permission(&module, scope.get_ref()) {
                errs.push(at(span, format!("permissions.{module}: {msg}")));
            }
            permissions.insert(module, scope.into_inner());
        }
        let mut limits = RequestedLimits::default();
        if let Some(t) = &raw.limits.timeout {
            match parse_duration(t.get_ref()) {
                Ok(d) => limits.timeout = Some(d),
                Err(m) => errs.push(at(t.span(), format!("limits.timeout: {m}"))),
            }
        }
        if let Some(t) = &raw.limits.cpu {
            match parse_duration(t.get_ref()) {
                Ok(d) => limits.cpu = Some(d),
                Err(m) => errs.push(at(t.span(), format!("limits.cpu: {m}"))),
            }
        }
        if let Some(m) = &raw.limits.memory {
            match parse_size(m.get_ref()) {
                Ok(b) if b < MIN_MEMORY => errs.push(at(m.span(), format!("limits.memory: {} is below the minimum of 2MiB", m.get_ref()))),
                Ok(b) => limits.memory = Some(b),
                Err(msg) => errs.push(at(m.span(), format!("limits.memory: {msg}"))),
            }
        }
        let mut run = RunSettings { worker_tag: None, retry: raw.run.retry };
        if let Some(t) = &raw.run.worker_tag {
            match validate_name(t.get_ref()) {
                Ok(()) => run.worker_tag = Some(t.get_ref().clone()),
                Err(m) => errs.push(at(t.span(), format!("run.worker_tag: {m}"))),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Manifest {
            name: raw.name.into_inner(),
            version,
            description: raw.description,
            tags: raw.tags.into_iter().map(Spanned::into_inner).collect(),
            params,
            permissions,
            limits,
            run,
            permission_lines,
        })
    }
}

fn validate_param_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok { Ok(()) } else { Err("param names must be identifiers (letters, digits, `_`)".into()) }
}

fn validate_param_spec(spec: &ParamSpec) -> Result<(), String> {
    match (spec.ty, &spec.values) {
        (ParamType::Enum, None) => return Err("an enum param needs `values = [...]`".into()),
        (ParamType::Enum, Some(v)) if v.is_empty() => return Err("`values` of an enum param must not be empty".into()),
        (ParamType::Enum, _) => {}
        (_, Some(_)) => return Err("`values` is only allowed with type = \"enum\"".into()),
        _ => {}
    }
    if spec.items.is_some() && spec.ty != ParamType::List {
        return Err("`items` is only allowed with type = \"list\"".into());
    }
    if matches!(spec.items, Some(ParamType::List | ParamType::Enum)) {
        return Err("list items must be string, integer, number, boolean or host-selector".into());
    }
    if (spec.min.is_some() || spec.max.is_some()) && !matches!(spec.ty, ParamType::Integer | ParamType::Number) {
        return Err("`min`/`max` are only allowed with integer and number params".into());
    }
    if spec.multiline && spec.ty != ParamType::String {
        return Err("`multiline` is only allowed with type = \"string\"".into());
    }
    if spec.required && spec.default.is_some() {
        return Err("a required param cannot have a default".into());
    }
    if let Some(default) = &spec.default {
        super::spec::check_value(spec, default).map_err(|m| format!("default: {m}"))?;
    }
    Ok(())
}

/// Shape check done while parsing a manifest: `true`, a list of action names, a table, or a
/// list of tables (a module that grants by several rules, like `s3`).
pub fn check_permission(module: &str, scope: &toml::Value) -> Result<(), String> {
    let ident = !module.is_empty() && module.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ident {
        return Err(format!("`{module}` is not a module name"));
    }
    match scope {
        toml::Value::Boolean(true) => Ok(()),
        toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => Ok(()),
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(toml::Value::is_table) => Ok(()),
        toml::Value::Array(_) => Err("a list of actions must contain only strings, like [\"read\"] (or only tables)".into()),
        toml::Value::Table(_) => Ok(()),
        _ => Err("expected true, a list of actions like [\"read\"], or a table like { hosts = [\"group:web\"] }".into()),
    }
}
