//! One parameter's spec (`[params.NAME]` of applet.toml) and how a value is checked against it:
//! typed JSON values, and `--param k=v` strings coerced to the declared type.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// The type of one applet parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Enum,
    List,
    HostSelector,
}

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Enum => "enum",
            ParamType::List => "list",
            ParamType::HostSelector => "host-selector",
        }
    }
}

/// `[params.NAME]` in the manifest.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Allowed values of an `enum` param.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// Item type of a `list` param (default `string`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ParamType>,
    /// Inclusive bounds for `integer` and `number` params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// A secret param's value is redacted from audit records and logs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// A `string` param whose value is text of many lines (pasted logs, a config snippet): the
    /// console shows a text area, and newlines are kept everywhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multiline: bool,
}

/// Checks a typed (JSON) value against a spec and returns it normalized.
pub fn check_value(spec: &ParamSpec, value: &Value) -> Result<Value, String> {
    if spec.ty == ParamType::List {
        let item_ty = spec.items.unwrap_or(ParamType::String);
        let Value::Array(items) = value else {
            return Err(format!("expected a list, got {}", describe(value)));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(check_scalar(item_ty, spec, item).map_err(|m| format!("item {}: {m}", i + 1))?);
        }
        return Ok(Value::Array(out));
    }
    check_scalar(spec.ty, spec, value)
}

fn check_scalar(ty: ParamType, spec: &ParamSpec, value: &Value) -> Result<Value, String> {
    match (ty, value) {
        (ParamType::String, Value::String(_)) => Ok(value.clone()),
        (ParamType::HostSelector, Value::String(s)) => check_selector(s).map(|()| value.clone()),
        (ParamType::Boolean, Value::Bool(_)) => Ok(value.clone()),
        (ParamType::Integer, Value::Number(n)) => {
            let i = n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
                .ok_or_else(|| format!("expected an integer, got {n}"))?;
            check_bounds(spec, i as f64)?;
            Ok(Value::Number(i.into()))
        }
        (ParamType::Number, Value::Number(n)) => {
            let f = n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
            check_bounds(spec, f)?;
            Ok(value.clone())
        }
        (ParamType::Enum, Value::String(s)) => {
            let values = spec.values.as_deref().unwrap_or_default();
            if values.iter().any(|v| v == s) { Ok(value.clone()) } else { Err(format!("`{s}` is not one of: {}", values.join(", "))) }
        }
        (ty, v) => Err(format!("expected {}, got {}", article(ty), describe(v))),
    }
}

/// Converts a `--param k=v` string to the param's type.
pub fn coerce_str(spec: &ParamSpec, raw: &str) -> Result<Value, String> {
    if spec.ty == ParamType::List {
        let trimmed = raw.trim();
        let items: Vec<Value> = if trimmed.starts_with('[') {
            let v: Value = serde_json::from_str(trimmed).map_err(|e| format!("not a JSON list: {e}"))?;
            return check_value(spec, &v);
        } else if trimmed.is_empty() {
            Vec::new()
        } else {
            let item_ty = spec.items.unwrap_or(ParamType::String);
            let mut out = Vec::new();
            for (i, part) in trimmed.split(',').enumerate() {
                out.push(coerce_scalar(item_ty, part.trim()).map_err(|m| format!("item {}: {m}", i + 1))?);
            }
            out
        };
        return check_value(spec, &Value::Array(items));
    }
    let v = coerce_scalar(spec.ty, raw)?;
    check_value(spec, &v)
}

fn coerce_scalar(ty: ParamType, raw: &str) -> Result<Value, String> {
    Ok(match ty {
        ParamType::Integer => Value::Number(raw.trim().parse::<i64>().map_err(|_| format!("`{raw}` is not an integer"))?.into()),
        ParamType::Number => {
            let f: f64 = raw.trim().parse().map_err(|_| format!("`{raw}` is not a number"))?;
            Value::Number(Number::from_f64(f).ok_or_else(|| format!("`{raw}` is not a finite number"))?)
        }
        ParamType::Boolean => Value::Bool(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true,
            "false" | "no" | "off" | "0" => false,
            _ => return Err(format!("`{raw}` is not a boolean (true/false)")),
        }),
        _ => Value::String(raw.to_string()),
    })
}

fn check_bounds(spec: &ParamSpec, v: f64) -> Result<(), String> {
    if let Some(min) = spec.min
        && v < min
    {
        return Err(format!("{v} is below the minimum {min}"));
    }
    if let Some(max) = spec.max
        && v > max
    {
        return Err(format!("{v} is above the maximum {max}"));
    }
    Ok(())
}

fn check_selector(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("host selector is empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err("host selector contains control characters".into());
    }
    crate::cmdb::Selector::parse(s).map(|_| ()).map_err(|m| format!("host selector `{s}`: {m}"))
}

fn article(ty: ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Number => "a number",
        ParamType::Boolean => "a boolean",
        ParamType::Enum => "one of the enum values (a string)",
        ParamType::List => "a list",
        ParamType::HostSelector => "a host selector (a string)",
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.len() > 40 => format!("string \"{}...\"", s.chars().take(40).collect::<String>()),
        Value::String(s) => format!("string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}
