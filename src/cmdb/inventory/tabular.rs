//! The tabular formats: CSV (one host a row; tags as KEY=VALUE or a JSON object, attrs as JSON)
//! and opslet's own JSON (the `Inventory` as serde writes it, or a bare list of hosts).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Inventory, at};
use crate::cmdb::Host;

// ---- JSON ------------------------------------------------------------------------------------

pub(super) fn parse_json(text: &str, file: &str) -> Result<Inventory, String> {
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

pub(super) fn write_json(inv: &Inventory) -> String {
    serde_json::to_string_pretty(inv).expect("inventories serialize") + "\n"
}

// ---- CSV -------------------------------------------------------------------------------------

const CSV_COLUMNS: &[&str] = &["name", "address", "port", "groups", "tags", "attrs", "host_key"];

pub(super) fn parse_csv(text: &str, file: &str) -> Result<Inventory, String> {
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

pub(super) fn write_csv(inv: &Inventory) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_csv_lines_name_the_file_and_line() {
        let e = parse_csv("name,addr\nweb1,x\n", "h.csv").unwrap_err();
        assert!(e.contains("unknown column `addr`"), "{e}");
        let e = parse_csv("name,port\nweb1,99999\n", "h.csv").unwrap_err();
        assert!(e.starts_with("h.csv:2:") && e.contains("99999"), "{e}");
    }
}
