//! Maintenance periods: `zabbix.maintenance` checks its spec and creates one on the hosts it
//! names (audited; only planned in a dry run).

use serde_json::{Value, json};

use super::{LUA, State, hostids};

/// Creates the maintenance `o` describes (`hosts`, `duration`, optional `name`) on connection
/// `conn`: the new maintenance's id (null when Zabbix gives none), or None in a dry run, which
/// only plans it.
pub(super) async fn create(s: &State, conn: &str, o: &Value) -> mlua::Result<Option<Value>> {
    let hosts: Vec<String> = match o.get("hosts") {
        Some(Value::String(h)) => vec![h.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => return Err(LUA.err("maintenance", "hosts: a host name or a list of host names")),
    };
    let duration = match o.get("duration") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| LUA.err("maintenance", "duration: seconds"))?,
        Some(Value::String(d)) => crate::util::parse_duration(d).map_err(|m| LUA.err("maintenance", format!("duration: {m}")))?.as_secs(),
        _ => return Err(LUA.err("maintenance", "duration: seconds or a duration like \"2h\"")),
    };
    if !(300..=30 * 86400).contains(&duration) {
        return Err(LUA.err("maintenance", "duration: between 5 minutes and 30 days"));
    }
    let name =
        o.get("name").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("opslet {} {}", s.ctx.applet, s.ctx.run_id));
    let ids = hostids(s, "maintenance", conn, &hosts).await?;
    let now = chrono::Utc::now().timestamp();
    let detail = json!({ "connection": conn, "name": name, "hosts": hosts, "duration_s": duration });
    if s.ctx.dry_run {
        let mut d = detail;
        d["planned"] = json!(true);
        s.audit("maintenance", &hosts.join(","), true, d)?;
        return Ok(None);
    }
    // 6.2 replaced `hostids` with `hosts: [{hostid}]`.
    let ver = s.version("maintenance", conn).await?;
    let mut params = json!({
        "name": name, "active_since": now, "active_till": now + duration as i64,
        "timeperiods": [{ "timeperiod_type": 0, "start_date": now, "period": duration }],
    });
    if ver >= (6, 2) {
        params["hosts"] = json!(ids.iter().map(|i| json!({ "hostid": i })).collect::<Vec<_>>());
    } else {
        params["hostids"] = json!(ids);
    }
    let r = s.call("maintenance", conn, "maintenance.create", params).await;
    let id = r.as_ref().ok().and_then(|v| v["maintenanceids"].get(0).cloned());
    s.audit("maintenance", &hosts.join(","), r.is_ok(), {
        let mut d = detail;
        d["maintenanceid"] = json!(id);
        if let Err(e) = &r {
            d["error"] = json!(e.to_string());
        }
        d
    })?;
    r?;
    Ok(Some(id.unwrap_or(Value::Null)))
}
