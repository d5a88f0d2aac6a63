//! Moving hosts in and out of the cmdb: CSV, JSON, Ansible inventories (INI and YAML), and
//! Ansible's dynamic-inventory JSON.
//!
//! Mapping to Ansible: `ansible_host` is the address (the name when missing), `ansible_port`
//! the port, `opslet_host_key` the pinned SSH key; other `ansible_*` variables and values that
//! are not scalars are free attributes; every other variable is a tag (its value as text).
//! Group variables become tags of the group's hosts that do not set them themselves. Groups
//! listed under `children` become nested groups.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Host;

/// The formats of `opslet cmdb import` and `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
    /// Ansible INI inventory.
    Ini,
    /// Ansible YAML inventory.
    Yaml,
}

impl Format {
    /// From a file name's extension.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "ini" | "cfg" | "hosts" => Some(Format::Ini),
            "yml" | "yaml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Hosts plus the group tree (group -> its parents).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Variables left out of an import because they look like credentials, as `var` names
    /// (credentials belong in opslet's secrets, not in the cmdb every applet may read).
    #[serde(skip)]
    pub dropped: BTreeSet<String>,
}

/// Whether a variable name looks like it holds a credential.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passwd", "passphrase", "secret", "token", "vault", "api_key", "apikey", "private_key"]
        .iter()
        .any(|w| n.contains(w) && !n.ends_with("_file"))
        || n.ends_with("_pass")
        || n == "pass"
}

/// A parse error: `file:line: message`.
fn at(file: &str, line: usize, msg: impl std::fmt::Display) -> String {
    if line == 0 { format!("{file}: {msg}") } else { format!("{file}:{line}: {msg}") }
}

pub fn parse(format: Format, text: &str, file: &str) -> Result<Inventory, String> {
    match format {
        Format::Csv => parse_csv(text, file),
        Format::Json => parse_json(text, file),
        Format::Ini => parse_ini(text, file),
        Format::Yaml => parse_yaml(text, file),
    }
}

pub fn write(format: Format, inv: &Inventory) -> String {
    match format {
        Format::Csv => write_csv(inv),
        Format::Json => serde_json::to_string_pretty(inv).expect("inventories serialize") + "\n",
        Format::Ini => write_ini(inv),
        Format::Yaml => write_yaml(inv),
    }
}

// ---- shared: Ansible variables <-> host fields ----------------------------------------------

/// A builder that collects hosts, memberships and variables in file order.
#[derive(Default)]
struct Builder {
    order: Vec<String>,
    vars: BTreeMap<String, Map<String, Value>>,
    members: BTreeMap<String, BTreeSet<String>>,
    group_vars: BTreeMap<String, Map<String, Value>>,
    children: BTreeMap<String, BTreeSet<String>>,
}

impl Builder {
    fn host(&mut self, name: &str, group: Option<&str>, vars: Map<String, Value>) {
        if !self.vars.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.vars.entry(name.to_string()).or_default().extend(vars);
        if let Some(g) = group.filter(|g| *g != "all" && *g != "ungrouped") {
            self.members.entry(name.to_string()).or_default().insert(g.to_string());
        }
    }

    fn finish(self, file: &str) -> Result<Inventory, String> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (parent, kids) in &self.children {
            for k in kids {
                let e = groups.entry(k.clone()).or_default();
                if parent != "all" && !e.contains(parent) {
                    e.push(parent.clone());
                }
            }
        }
        // Group vars reach hosts through nesting too: the nearest group wins, `all` last.
        let ancestors = |g: &str| -> Vec<String> {
            let mut out = vec![g.to_string()];
            let mut i = 0;
            while i < out.len() {
                for p in groups.get(&out[i]).cloned().unwrap_or_default() {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                i += 1;
            }
            out
        };
        let mut hosts = Vec::new();
        let mut dropped = BTreeSet::new();
        for name in &self.order {
            let mut vars = self.vars[name].clone();
            let member_of = self.members.get(name).cloned().unwrap_or_default();
            let mut chain: Vec<String> = Vec::new();
            for g in &member_of {
                for a in ancestors(g) {
                    if !chain.contains(&a) {
                        chain.push(a);
                    }
                }
            }
            chain.push("all".into());
            for g in chain {
                for (k, v) in self.group_vars.get(&g).cloned().unwrap_or_default() {
                    vars.entry(k).or_insert(v);
                }
            }
            vars.retain(|k, _| {
                let keep = !looks_secret(k);
                if !keep {
                    dropped.insert(k.clone());
                }
                keep
            });
            hosts.push(host_from_vars(name, member_of, vars).map_err(|m| at(file, 0, format!("host {name}: {m}")))?);
        }
        Ok(Inventory { hosts, groups: groups.into_iter().filter(|(_, p)| !p.is_empty()).collect(), dropped })
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn host_from_vars(name: &str, groups: BTreeSet<String>, vars: Map<String, Value>) -> Result<Host, String> {
    let mut h = Host { name: name.to_string(), address: name.to_string(), port: 22, groups, ..Default::default() };
    for (k, v) in vars {
        match k.as_str() {
            "ansible_host" | "ansible_ssh_host" => h.address = scalar_text(&v).ok_or("ansible_host must be text")?,
            "ansible_port" | "ansible_ssh_port" => {
                let t = scalar_text(&v).ok_or("ansible_port must be a number")?;
                h.port = t.parse().map_err(|_| format!("ansible_port `{t}` is not a port number"))?;
            }
            "opslet_host_key" => h.host_key = scalar_text(&v),
            _ if k.starts_with("ansible_") => {
                h.attrs.insert(k, v);
            }
            _ => match scalar_text(&v) {
                Some(t) => {
                    h.tags.insert(k, t);
                }
                None => {
                    h.attrs.insert(k, v);
                }
            },
        }
    }
    Ok(h)
}

/// A host's variables for Ansible.
pub fn host_vars(h: &Host) -> Map<String, Value> {
    let mut m = Map::new();
    if h.address != h.name {
        m.insert("ansible_host".into(), json!(h.address));
    }
    if h.port != 22 {
        m.insert("ansible_port".into(), json!(h.port));
    }
    for (k, v) in &h.tags {
        m.insert(k.clone(), json!(v));
    }
    for (k, v) in &h.attrs {
        m.insert(k.clone(), v.clone());
    }
    if let Some(k) = &h.host_key {
        m.insert("opslet_host_key".into(), json!(k));
    }
    m
}

/// Every group: those hosts are in plus those in the tree.
fn all_groups(inv: &Inventory) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = inv.hosts.iter().flat_map(|h| h.groups.iter().cloned()).collect();
    for (g, parents) in &inv.groups {
        out.insert(g.clone());
        out.extend(parents.iter().cloned());
    }
    out
}

fn children_of(inv: &Inventory, parent: &str) -> Vec<String> {
    inv.groups.iter().filter(|(_, ps)| ps.iter().any(|p| p == parent)).map(|(g, _)| g.clone()).collect()
}

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

// ---- JSON ------------------------------------------------------------------------------------

fn parse_json(text: &str, file: &str) -> Result<Inventory, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| at(file, e.line(), e))?;
    let inv = match v {
        Value::Array(_) => {
            Inventory { hosts: serde_json::from_value(v).map_err(|e| at(file, 0, format!("a host: {e}")))?, ..Default::default() }
        }
        other => {
            serde_json::from_value(other).map_err(|e| at(file, 0, format!("expected {{\"hosts\": [...], \"groups\": {{...}}}}: {e}")))?
        }
    };
    Ok(inv)
}

// ---- CSV -------------------------------------------------------------------------------------

const CSV_COLUMNS: &[&str] = &["name", "address", "port", "groups", "tags", "attrs", "host_key"];

fn parse_csv(text: &str, file: &str) -> Result<Inventory, String> {
    let mut rd = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let header: Vec<String> = rd.headers().map_err(|e| at(file, 1, e))?.iter().map(str::to_string).collect();
    for h in &header {
        if !CSV_COLUMNS.contains(&h.as_str()) {
            return Err(at(file, 1, format!("unknown column `{h}` (known: {})", CSV_COLUMNS.join(", "))));
        }
    }
    if !header.iter().any(|h| h == "name") {
        return Err(at(file, 1, "the header needs a `name` column"));
    }
    let mut hosts = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(|e| at(file, e.position().map_or(0, |p| p.line() as usize), e))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let get = |col: &str| header.iter().position(|h| h == col).and_then(|i| rec.get(i)).unwrap_or("").to_string();
        let name = get("name");
        if name.is_empty() {
            return Err(at(file, line, "the name is empty"));
        }
        let address = get("address");
        let port = get("port");
        let mut h = Host {
            name: name.clone(),
            address: if address.is_empty() { name.clone() } else { address },
            port: if port.is_empty() {
                22
            } else {
                port.parse().map_err(|_| at(file, line, format!("port `{port}` is not a port number")))?
            },
            groups: get("groups").split(';').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect(),
            ..Default::default()
        };
        let tags = get("tags");
        if tags.starts_with('{') {
            h.tags = serde_json::from_str(&tags).map_err(|e| at(file, line, format!("tags: not a JSON object of text values: {e}")))?;
        }
        for kv in tags.split(';').map(str::trim).filter(|t| !t.is_empty() && !tags.starts_with('{')) {
            let (k, v) = kv.split_once('=').ok_or_else(|| at(file, line, format!("tag `{kv}`: expected KEY=VALUE")))?;
            h.tags.insert(k.trim().to_string(), v.trim().to_string());
        }
        let attrs = get("attrs");
        if !attrs.is_empty() {
            h.attrs = serde_json::from_str(&attrs).map_err(|e| at(file, line, format!("attrs: not a JSON object: {e}")))?;
        }
        let key = get("host_key");
        h.host_key = (!key.is_empty()).then_some(key);
        hosts.push(h);
    }
    Ok(Inventory { hosts, groups: BTreeMap::new(), dropped: BTreeSet::new() })
}

fn write_csv(inv: &Inventory) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS).expect("writing to memory");
    for h in &inv.hosts {
        // KEY=VALUE;KEY=VALUE, or a JSON object when a value holds `;` or `=` (or starts with `{`).
        let plain = h.tags.iter().all(|(k, v)| !v.contains([';', '=']) && !k.starts_with('{'));
        let tags: Vec<String> = if plain {
            h.tags.iter().map(|(k, v)| format!("{k}={v}")).collect()
        } else {
            vec![serde_json::to_string(&h.tags).expect("tags serialize")]
        };
        let attrs = if h.attrs.is_empty() { String::new() } else { serde_json::to_string(&h.attrs).expect("attrs serialize") };
        let groups: Vec<&str> = h.groups.iter().map(String::as_str).collect();
        w.write_record([
            h.name.as_str(),
            h.address.as_str(),
            &h.port.to_string(),
            &groups.join(";"),
            &tags.join(";"),
            &attrs,
            h.host_key.as_deref().unwrap_or(""),
        ])
        .expect("writing to memory");
    }
    String::from_utf8(w.into_inner().expect("flushing to memory")).expect("CSV of text is text")
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

fn parse_ini(text: &str, file: &str) -> Result<Inventory, String> {
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
                super::valid("group", g).map_err(|e| at(file, line_no, e))?;
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
                    super::valid("host", &name).map_err(|e| at(file, line_no, e))?;
                    b.host(&name, Some(group), vars.clone());
                }
            }
            Section::Children(group) => {
                if w.len() > 1 {
                    return Err(at(file, line_no, "a :children section lists one group per line"));
                }
                super::valid("group", first).map_err(|e| at(file, line_no, e))?;
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

fn write_ini(inv: &Inventory) -> String {
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

fn parse_yaml(text: &str, file: &str) -> Result<Inventory, String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| at(file, e.location().map_or(0, |l| l.line()), e))?;
    let doc: Value = serde_json::to_value(doc).map_err(|e| at(file, 0, e))?;
    let Value::Object(top) = doc else { return Err(at(file, 0, "expected a mapping of groups (all: {hosts: ..., children: ...})")) };
    let mut b = Builder::default();
    fn group(b: &mut Builder, name: &str, body: &Value, file: &str, depth: usize) -> Result<(), String> {
        if depth > 64 {
            return Err(at(file, 0, "groups nest more than 64 deep"));
        }
        if name != "all" && name != "ungrouped" {
            super::valid("group", name).map_err(|e| at(file, 0, e))?;
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
                    super::valid("host", &h).map_err(|e| at(file, 0, e))?;
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

fn write_yaml(inv: &Inventory) -> String {
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
    fn bad_lines_name_the_file_and_line() {
        let e = parse_ini("[web]\nweb1 ansible_port\n", "hosts.ini").unwrap_err();
        assert!(e.starts_with("hosts.ini:2:") && e.contains("KEY=VALUE"), "{e}");
        let e = parse_ini("[web:kids]\n", "hosts.ini").unwrap_err();
        assert!(e.starts_with("hosts.ini:1:"), "{e}");
        let e = parse_csv("name,addr\nweb1,x\n", "h.csv").unwrap_err();
        assert!(e.contains("unknown column `addr`"), "{e}");
        let e = parse_csv("name,port\nweb1,99999\n", "h.csv").unwrap_err();
        assert!(e.starts_with("h.csv:2:") && e.contains("99999"), "{e}");
    }
}
