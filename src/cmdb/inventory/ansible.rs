//! Ansible's formats: INI and YAML inventories (host ranges, `:children` and `:vars` sections,
//! group variables) and the dynamic-inventory JSON of `ansible-inventory --list`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{Builder, Inventory, all_groups, at, children_of, host_vars};
use crate::cmdb::Host;

// ---- Ansible dynamic inventory -------------------------------------------------------------

/// `ansible-inventory --list` shape: what `opslet cmdb inventory --list` prints.
pub fn dynamic(inv: &Inventory) -> Value {
    let mut out = Map::new();
    let mut hostvars = Map::new();
    for h in &inv.hosts {
        hostvars.insert(h.name.clone(), Value::Object(host_vars(h)));
    }
    out.insert("_meta".into(), json!({ "hostvars": hostvars }));
    let groups = all_groups(inv);
    let top: Vec<String> = groups.iter().filter(|g| inv.groups.get(*g).is_none_or(|p| p.is_empty())).cloned().collect();
    let ungrouped: Vec<&str> = inv.hosts.iter().filter(|h| h.groups.is_empty()).map(|h| h.name.as_str()).collect();
    let mut all_children = vec!["ungrouped".to_string()];
    all_children.extend(top);
    out.insert("all".into(), json!({ "children": all_children }));
    for g in &groups {
        let mut entry = Map::new();
        let hosts: Vec<&str> = inv.hosts.iter().filter(|h| h.groups.contains(g)).map(|h| h.name.as_str()).collect();
        if !hosts.is_empty() {
            entry.insert("hosts".into(), json!(hosts));
        }
        let kids = children_of(inv, g);
        if !kids.is_empty() {
            entry.insert("children".into(), json!(kids));
        }
        out.insert(g.clone(), Value::Object(entry));
    }
    if !ungrouped.is_empty() {
        out.insert("ungrouped".into(), json!({ "hosts": ungrouped }));
    }
    Value::Object(out)
}

// ---- Ansible INI -----------------------------------------------------------------------------

/// Splits a line into words like a shell (quotes group, backslash escapes); `#` starts a comment
/// outside quotes when it begins a word.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' | '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => cur.extend(chars.next()),
                        Some(x) => cur.push(x),
                        None => return Err(format!("unclosed {c} quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// An INI value as Ansible reads it: numbers and booleans as such, the rest as text.
fn ini_value(raw: &str) -> Value {
    if let Ok(i) = raw.parse::<i64>() {
        return json!(i);
    }
    match raw {
        "True" | "true" => json!(true),
        "False" | "false" => json!(false),
        _ => json!(raw),
    }
}

/// Expands Ansible host ranges: `web[01:03]`, `db-[a:c]`, `n[0:10:5]`.
pub fn expand_range(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find(']').map(|i| i + open).ok_or_else(|| format!("`{pattern}`: unclosed [ in a host range"))?;
    let (head, spec, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let parts: Vec<&str> = spec.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("`{pattern}`: a host range is [START:END] or [START:END:STEP]"));
    }
    let step: usize = match parts.get(2) {
        Some(s) => s.parse().ok().filter(|s| *s > 0).ok_or_else(|| format!("`{pattern}`: the step must be a positive number"))?,
        None => 1,
    };
    let (a, b) = (parts[0], parts[1]);
    let mut items = Vec::new();
    if let (Ok(x), Ok(y)) = (a.parse::<u64>(), b.parse::<u64>()) {
        if x > y || y - x >= MAX_RANGE as u64 {
            return Err(format!("`{pattern}`: the range must go up and hold at most {MAX_RANGE} hosts"));
        }
        let width = if a.starts_with('0') && a.len() > 1 { a.len() } else { 0 };
        for n in (x..=y).step_by(step) {
            items.push(format!("{n:0width$}"));
        }
    } else if a.len() == 1 && b.len() == 1 && a.as_bytes()[0].is_ascii_alphabetic() && b.as_bytes()[0].is_ascii_alphabetic() && a <= b {
        for c in (a.as_bytes()[0]..=b.as_bytes()[0]).step_by(step) {
            items.push((c as char).to_string());
        }
    } else {
        return Err(format!("`{pattern}`: a host range is numbers [01:10] or letters [a:f]"));
    }
    let rest = expand_range(tail)?;
    if items.len().saturating_mul(rest.len()) > MAX_RANGE {
        return Err(format!("`{pattern}` names more than {MAX_RANGE} hosts"));
    }
    let mut out = Vec::with_capacity(items.len() * rest.len());
    for i in items {
        for r in &rest {
            out.push(format!("{head}{i}{r}"));
        }
    }
    Ok(out)
}

/// Most hosts one range pattern may name.
const MAX_RANGE: usize = 100_000;

pub(super) fn parse_ini(text: &str, file: &str) -> Result<Inventory, String> {
    enum Section {
        Hosts(String),
        Children(String),
        Vars(String),
    }
    let mut b = Builder::default();
    let mut section = Section::Hosts("ungrouped".into());
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            let inner = line.strip_prefix('[').and_then(|l| l.split(']').next()).ok_or_else(|| at(file, line_no, "bad section header"))?;
            let (name, kind) = inner.split_once(':').unwrap_or((inner, ""));
            section = match kind {
                "" => Section::Hosts(name.to_string()),
                "children" => Section::Children(name.to_string()),
                "vars" => Section::Vars(name.to_string()),
                other => return Err(at(file, line_no, format!("unknown section kind `:{other}` (expected :children or :vars)"))),
            };
            let (Section::Hosts(g) | Section::Children(g) | Section::Vars(g)) = &section;
            if g != "all" && g != "ungrouped" {
                crate::cmdb::valid("group", g).map_err(|e| at(file, line_no, e))?;
            }
            b.children.entry(g.clone()).or_default();
            continue;
        }
        let w = words(line).map_err(|m| at(file, line_no, m))?;
        let Some(first) = w.first() else { continue };
        match &section {
            Section::Hosts(group) => {
                let mut vars = Map::new();
                for kv in &w[1..] {
                    let (k, v) = kv.split_once('=').ok_or_else(|| at(file, line_no, format!("`{kv}`: host variables are KEY=VALUE")))?;
                    vars.insert(k.to_string(), ini_value(v));
                }
                // `host:port`, but not an IPv6 address.
                let (pattern, port) = match first.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => (h.to_string(), Some(p.to_string())),
                    _ => (first.clone(), None),
                };
                if let Some(p) = port {
                    vars.entry("ansible_port").or_insert_with(|| ini_value(&p));
                }
                for name in expand_range(&pattern).map_err(|m| at(file, line_no, m))? {
                    crate::cmdb::valid("host", &name).map_err(|e| at(file, line_no, e))?;
                    b.host(&name, Some(group), vars.clone());
                }
            }
            Section::Children(group) => {
                if w.len() > 1 {
                    return Err(at(file, line_no, "a :children section lists one group per line"));
                }
                crate::cmdb::valid("group", first).map_err(|e| at(file, line_no, e))?;
                b.children.entry(group.clone()).or_default().insert(first.clone());
                b.children.entry(first.clone()).or_default();
            }
            Section::Vars(group) => {
                let (k, v) = line.split_once('=').ok_or_else(|| at(file, line_no, "group variables are KEY=VALUE"))?;
                let v = words(v.trim()).map_err(|m| at(file, line_no, m))?.join(" ");
                b.group_vars.entry(group.clone()).or_default().insert(k.trim().to_string(), ini_value(&v));
            }
        }
    }
    b.finish(file)
}

fn ini_word(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let plain = !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || "'\"\\#=".contains(c));
    // Text that Ansible would read as a number or boolean stays text only when quoted.
    let looks_typed = matches!(v, Value::String(_)) && !matches!(ini_value(&s), Value::String(_));
    if plain && !looks_typed { s } else { format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")) }
}

pub(super) fn write_ini(inv: &Inventory) -> String {
    let mut out = String::from("# Ansible inventory exported by opslet\n");
    let line = |h: &Host| {
        let mut l = h.name.clone();
        for (k, v) in host_vars(h) {
            l.push_str(&format!(" {k}={}", ini_word(&v)));
        }
        l.push('\n');
        l
    };
    let ungrouped: Vec<&Host> = inv.hosts.iter().filter(|h| h.groups.is_empty()).collect();
    for h in &ungrouped {
        out.push_str(&line(h));
    }
    // Each host's variables are written once, in the first of its groups.
    let mut written: BTreeSet<&str> = ungrouped.iter().map(|h| h.name.as_str()).collect();
    for g in all_groups(inv) {
        out.push_str(&format!("\n[{g}]\n"));
        for h in inv.hosts.iter().filter(|h| h.groups.contains(&g)) {
            if written.insert(&h.name) {
                out.push_str(&line(h));
            } else {
                out.push_str(&format!("{}\n", h.name));
            }
        }
        let kids = children_of(inv, &g);
        if !kids.is_empty() {
            out.push_str(&format!("\n[{g}:children]\n"));
            for k in kids {
                out.push_str(&format!("{k}\n"));
            }
        }
    }
    out
}

// ---- Ansible YAML ----------------------------------------------------------------------------

pub(super) fn parse_yaml(text: &str, file: &str) -> Result<Inventory, String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| at(file, e.location().map_or(0, |l| l.line()), e))?;
    let doc: Value = serde_json::to_value(doc).map_err(|e| at(file, 0, e))?;
    let Value::Object(top) = doc else { return Err(at(file, 0, "expected a mapping of groups (all: {hosts: ..., children: ...})")) };
    let mut b = Builder::default();
    fn group(b: &mut Builder, name: &str, body: &Value, file: &str, depth: usize) -> Result<(), String> {
        if depth > 64 {
            return Err(at(file, 0, "groups nest more than 64 deep"));
        }
        if name != "all" && name != "ungrouped" {
            crate::cmdb::valid("group", name).map_err(|e| at(file, 0, e))?;
        }
        b.children.entry(name.to_string()).or_default();
        let body = match body {
            Value::Null => return Ok(()),
            Value::Object(m) => m,
            _ => return Err(at(file, 0, format!("group `{name}`: expected a mapping with hosts, children or vars"))),
        };
        for k in body.keys() {
            if !["hosts", "children", "vars"].contains(&k.as_str()) {
                return Err(at(file, 0, format!("group `{name}`: unknown key `{k}` (expected hosts, children, vars)")));
            }
        }
        if let Some(hosts) = body.get("hosts") {
            let hosts = match hosts {
                Value::Null => Map::new(),
                Value::Object(m) => m.clone(),
                _ => return Err(at(file, 0, format!("group `{name}`: hosts must be a mapping of host: vars"))),
            };
            for (pattern, vars) in hosts {
                let vars = match vars {
                    Value::Null => Map::new(),
                    Value::Object(m) => m,
                    _ => return Err(at(file, 0, format!("host `{pattern}`: its variables must be a mapping"))),
                };
                for h in expand_range(&pattern).map_err(|m| at(file, 0, m))? {
                    crate::cmdb::valid("host", &h).map_err(|e| at(file, 0, e))?;
                    b.host(&h, Some(name), vars.clone());
                }
            }
        }
        if let Some(Value::Object(vars)) = body.get("vars") {
            b.group_vars.entry(name.to_string()).or_default().extend(vars.clone());
        }
        if let Some(children) = body.get("children") {
            let Value::Object(kids) = children else { return Err(at(file, 0, format!("group `{name}`: children must be a mapping"))) };
            for (kid, kbody) in kids {
                b.children.entry(name.to_string()).or_default().insert(kid.clone());
                group(b, kid, kbody, file, depth + 1)?;
            }
        }
        Ok(())
    }
    for (name, body) in &top {
        group(&mut b, name, body, file, 0)?;
    }
    b.finish(file)
}

pub(super) fn write_yaml(inv: &Inventory) -> String {
    let mut hosts = Map::new();
    for h in &inv.hosts {
        let vars = host_vars(h);
        hosts.insert(h.name.clone(), if vars.is_empty() { Value::Null } else { Value::Object(vars) });
    }
    fn node(inv: &Inventory, g: &str) -> Value {
        let mut m = Map::new();
        let hosts: Map<String, Value> = inv.hosts.iter().filter(|h| h.groups.contains(g)).map(|h| (h.name.clone(), Value::Null)).collect();
        if !hosts.is_empty() {
            m.insert("hosts".into(), Value::Object(hosts));
        }
        let kids: Map<String, Value> = children_of(inv, g).into_iter().map(|k| (k.clone(), node(inv, &k))).collect();
        if !kids.is_empty() {
            m.insert("children".into(), Value::Object(kids));
        }
        if m.is_empty() { Value::Null } else { Value::Object(m) }
    }
    let top: Map<String, Value> = all_groups(inv)
        .into_iter()
        .filter(|g| inv.groups.get(g).is_none_or(|p| p.is_empty()))
        .map(|g| {
            let n = node(inv, &g);
            (g, n)
        })
        .collect();
    let mut all = Map::new();
    // Every host's variables once, under all.hosts; groups only list names.
    all.insert("hosts".into(), Value::Object(hosts));
    if !top.is_empty() {
        all.insert("children".into(), Value::Object(top));
    }
    let doc = json!({ "all": all });
    format!("# Ansible inventory exported by opslet\n{}", serde_yaml_ng::to_string(&doc).expect("inventories serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_like_ansible() {
        assert_eq!(expand_range("web[01:03]").unwrap(), ["web01", "web02", "web03"]);
        assert_eq!(expand_range("db-[a:c]").unwrap(), ["db-a", "db-b", "db-c"]);
        assert_eq!(expand_range("n[0:10:5]").unwrap(), ["n0", "n5", "n10"]);
        assert_eq!(expand_range("r[1:2]-[a:b]").unwrap(), ["r1-a", "r1-b", "r2-a", "r2-b"]);
        assert!(expand_range("web[3:1]").unwrap_err().contains("must go up"));
        assert!(expand_range("web[1:").unwrap_err().contains("unclosed"));
        assert!(expand_range("h[1:1000][1:1000]").unwrap_err().contains("more than 100000"));
    }

    #[test]
    fn ini_words_and_values() {
        assert_eq!(words(r#"h1 a=1 b="x y" c='q' # note"#).unwrap(), ["h1", "a=1", "b=x y", "c=q"]);
        assert!(words("h1 a=\"open").unwrap_err().contains("unclosed"));
        assert_eq!(ini_value("22"), json!(22));
        assert_eq!(ini_value("prod"), json!("prod"));
        assert_eq!(ini_word(&json!("8080")), "\"8080\"");
        assert_eq!(ini_word(&json!(8080)), "8080");
    }

    #[test]
    fn bad_ini_lines_name_the_file_and_line() {
        let e = parse_ini("[web]\nweb1 ansible_port\n", "hosts.ini").unwrap_err();
        assert!(e.starts_with("hosts.ini:2:") && e.contains("KEY=VALUE"), "{e}");
        let e = parse_ini("[web:kids]\n", "hosts.ini").unwrap_err();
        assert!(e.starts_with("hosts.ini:1:"), "{e}");
    }
}
