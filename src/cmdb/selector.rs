//! Host selectors: `web01`, `web*`, `group:web`, `tag:env=prod`, combined with `&` (and),
//! `,` or `|` (or) and `!` (not): `group:web & tag:env=prod & !web03`.

use super::Host;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Group(String),
    Tag(String, Option<String>),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

impl Selector {
    /// Parses a selector; the error names the part that is wrong.
    pub fn parse(s: &str) -> Result<Selector, String> {
        if s.trim().is_empty() {
            return Err("the selector is empty".into());
        }
        let alternatives: Vec<Selector> = s.split([',', '|']).map(parse_and).collect::<Result<_, _>>()?;
        Ok(if alternatives.len() == 1 { alternatives.into_iter().next().expect("one") } else { Selector::Or(alternatives) })
    }

    /// Whether `host` is selected; `in_group` answers group membership (with nesting).
    pub fn matches(&self, host: &Host, in_group: &dyn Fn(&Host, &str) -> bool) -> bool {
        match self {
            Selector::Name(pattern) => crate::util::pattern_matches(pattern, &host.name),
            Selector::Group(g) => in_group(host, g),
            Selector::Tag(k, v) => host.tags.get(k).is_some_and(|have| v.as_ref().is_none_or(|want| have == want)),
            Selector::Not(inner) => !inner.matches(host, in_group),
            Selector::And(all) => all.iter().all(|s| s.matches(host, in_group)),
            Selector::Or(any) => any.iter().any(|s| s.matches(host, in_group)),
        }
    }
}

fn parse_and(s: &str) -> Result<Selector, String> {
    let terms: Vec<Selector> = s.split('&').map(parse_term).collect::<Result<_, _>>()?;
    Ok(if terms.len() == 1 { terms.into_iter().next().expect("one") } else { Selector::And(terms) })
}

fn parse_term(raw: &str) -> Result<Selector, String> {
    let t = raw.trim();
    if let Some(rest) = t.strip_prefix('!') {
        return Ok(Selector::Not(Box::new(parse_term(rest)?)));
    }
    if t.is_empty() {
        return Err("an empty term (two operators in a row, or one at an end)".into());
    }
    let ok_name = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b));
    if let Some(g) = t.strip_prefix("group:") {
        if !ok_name(g) || g.contains('*') {
            return Err(format!("`{t}`: a group name is letters, digits, `-`, `_` and `.`"));
        }
        return Ok(Selector::Group(g.to_string()));
    }
    if let Some(tag) = t.strip_prefix("tag:") {
        let (k, v) = match tag.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
            None => (tag.trim(), None),
        };
        if !ok_name(k) || k.contains('*') {
            return Err(format!("`{t}`: expected tag:KEY or tag:KEY=VALUE"));
        }
        return Ok(Selector::Tag(k.to_string(), v));
    }
    if t.contains(':') || !ok_name(t) {
        return Err(format!("`{t}` is not a host name, a `name*` pattern, group:NAME or tag:KEY=VALUE"));
    }
    Ok(Selector::Name(t.to_string()))
}
