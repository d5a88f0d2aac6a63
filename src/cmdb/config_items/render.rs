//! Rendering an item's template or path for one host with minijinja (strict: an undefined value
//! is an error, never an empty string), and errors that name what is missing: the value's full
//! path, where the template uses it, and the layers of `[values]` searched for that host.

use minijinja::ErrorKind;
use serde_json::{Map, Value};

use super::ItemSpec;
use crate::cmdb::Host;

/// Reads a secret for `{{ secret("name") }}` in templates.
pub type SecretFn = std::sync::Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Secrets as `<secret:NAME>`, for a file that is only shown, never sent to a host: what
/// `config.render` gives an applet (which never holds secrets) and `opslet config show` prints.
pub fn placeholder_secrets() -> SecretFn {
    std::sync::Arc::new(|name: &str| Ok(format!("<secret:{name}>")))
}

/// Names the template and the item gives every template it renders, `ctx` aside.
const RESERVED: &[&str] = &["env", "host", "item"];

pub(super) fn template_env<'a>(secret: SecretFn) -> minijinja::Environment<'a> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // Errors keep the failing expression's place, so an undefined value can be named.
    env.set_debug(true);
    // A template is a config file, not a program: bounded work.
    env.set_fuel(Some(200_000));
    env.add_function("secret", move |name: String| -> Result<String, minijinja::Error> {
        secret(&name).map_err(|m| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m))
    });
    env
}

/// A minijinja error with its line and what went wrong.
pub(super) fn template_error(e: &minijinja::Error) -> String {
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        m.push_str(&format!(": {s}"));
        src = s.source();
    }
    m
}

/// One text of an item to render: its template or its path.
pub(super) struct Rendered<'a> {
    pub spec: &'a ItemSpec,
    /// How messages name the text: `app.conf.j2`, `items/app.toml, template`.
    pub what: String,
    pub text: &'a str,
}

impl Rendered<'_> {
    pub fn render(&self, env: &str, host: &Host, inherited: &[String], secret: SecretFn) -> Result<String, String> {
        let mut ctx = self.spec.values_for(env, host, inherited);
        ctx.insert("env".into(), Value::String(env.into()));
        ctx.insert("item".into(), Value::String(self.spec.name.clone()));
        ctx.insert(
            "host".into(),
            serde_json::json!({ "name": host.name, "address": host.address, "groups": host.groups, "tags": host.tags }),
        );
        let jinja = template_env(secret);
        let t = jinja.template_from_named_str(&self.what, self.text).map_err(|e| template_error(&e))?;
        t.render(Value::Object(ctx)).map_err(|e| match e.kind() {
            ErrorKind::UndefinedError => self.undefined(&e, &t, env, host, inherited),
            _ => template_error(&e),
        })
    }

    /// `undefined value `db.primary.port` at app.conf.j2 line 3 (for web1 in prod, searched
    /// [values], [values.env.prod], [values.group.web])`.
    fn undefined(&self, e: &minijinja::Error, t: &minijinja::Template, env: &str, host: &Host, inherited: &[String]) -> String {
        let expr = e.template_source().zip(e.range()).map(|(src, r)| value_path(src, r.start)).unwrap_or_default();
        let line = e.line().map(|l| format!(" line {l}")).unwrap_or_default();
        if expr.is_empty() {
            return format!("undefined value at {}{line}", self.what);
        }
        let root = expr.split('.').next().unwrap_or_default();
        // A name the template sets itself (a loop variable, `set`) is not looked up in the values.
        let from_values = t.undeclared_variables(false).contains(root);
        if !from_values {
            return format!("undefined value `{expr}` at {}{line} (`{root}` is a variable of the template)", self.what);
        }
        let searched = self.spec.layers_for(env, host, inherited).join(", ");
        format!("undefined value `{expr}` at {}{line} (for {} in {env}, searched {searched})", self.what, host.name)
    }
}

/// The dotted name around byte `at` of `src`, where a failing expression starts: minijinja
/// places an attribute's error at its `.` (`db|.primary.port`), a name's at the name.
fn value_path(src: &str, at: usize) -> String {
    let part = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let mut start = at.min(src.len());
    while !src.is_char_boundary(start) {
        start -= 1;
    }
    while let Some(c) = src[..start].chars().next_back().filter(|c| part(*c)) {
        start -= c.len_utf8();
    }
    let p: String = src[start..].chars().take_while(|c| part(*c)).collect();
    p.trim_matches('.').to_string()
}

impl ItemSpec {
    /// The layers of `[values]` a host's values come from, in order, as messages name them; a
    /// layer the item does not have says so.
    pub fn layers_for(&self, env: &str, host: &Host, inherited: &[String]) -> Vec<String> {
        let mut out = vec!["[values]".to_string()];
        let missing = |has: bool| if has { "" } else { " (not in the item)" };
        out.push(format!("[values.env.{env}]{}", missing(self.values.env.contains_key(env))));
        for g in inherited.iter().chain(host.groups.iter()) {
            out.push(format!("[values.group.{g}]{}", missing(self.values.group.contains_key(g))));
        }
        out
    }
}

/// A value the template uses that no layer of the item defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// Its full path, `db.primary.port`.
    pub name: String,
    /// Where it is first used: `app.conf.j2 line 3`, `items/app.toml, path`.
    pub at: String,
}

/// The values `spec`'s template (and path) use that neither `[values]` nor any environment's or
/// group's layer defines, nor opslet (`env`, `host`, `item`).
pub(super) fn unknown_values(spec: &ItemSpec) -> Vec<Unknown> {
    let jinja = template_env(std::sync::Arc::new(|_: &str| Ok(String::new())));
    let mut out = Vec::new();
    for (what, text) in [(spec.template_name(), spec.template.as_deref().unwrap_or_default()), (spec.path_name(), spec.path.as_str())] {
        let Ok(t) = jinja.template_from_str(text) else { continue };
        let mut used: Vec<String> = t.undeclared_variables(true).into_iter().collect();
        used.sort();
        for name in used {
            let root = name.split('.').next().unwrap_or_default();
            if RESERVED.contains(&root) || jinja.globals().any(|(g, _)| g == root) {
                continue;
            }
            if !defined(spec, &name) && !out.iter().any(|u: &Unknown| u.name == name) {
                let at = match first_line(text, &name) {
                    Some(l) => format!("{what} line {l}"),
                    None => what.clone(),
                };
                out.push(Unknown { at, name });
            }
        }
    }
    out
}

/// Whether some layer has `a.b.c`.
fn defined(spec: &ItemSpec, path: &str) -> bool {
    let v = &spec.values;
    std::iter::once(&v.defaults).chain(v.env.values()).chain(v.group.values()).any(|layer| lookup(layer, path))
}

fn lookup(layer: &Map<String, Value>, path: &str) -> bool {
    let mut parts = path.split('.');
    let Some(mut cur) = parts.next().and_then(|k| layer.get(k)) else { return false };
    for k in parts {
        match cur.get(k) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// The first line (1-based) of `text` where `name` stands as a whole word.
fn first_line(text: &str, name: &str) -> Option<usize> {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    text.lines()
        .position(|l| {
            l.match_indices(name).any(|(i, _)| {
                let before = l[..i].chars().next_back();
                let after = l[i + name.len()..].chars().next();
                !before.is_some_and(word) && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|i| i + 1)
}
