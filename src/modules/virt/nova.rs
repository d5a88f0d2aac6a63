//! The OpenStack calls of the `virt` module over [`Cloud`]: servers (list, show, create, power,
//! resize, delete, console log), flavors, images (Glance), hypervisors and usage, and waiting
//! for a server to reach a state. Servers come back in the shape every `virt` backend gives
//! ([`normalize`]), with OpenStack's own fields added.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::openstack::{Cloud, Micro, OsError, Service};

/// Server fields as of 2.47 (the flavor embedded: vcpus, RAM and disk without another call).
const SERVER_MICRO: Micro = Micro(2, 47);
/// Creating a server with no network needs 2.37 (`"networks": "none"`).
const CREATE_MICRO: Micro = Micro(2, 37);
/// Hypervisors with their capacity fields (removed from the API in 2.88).
const HYPERVISOR_MICRO: Micro = Micro(2, 87);

/// Which servers `servers` lists.
#[derive(Debug, Clone, Default)]
pub struct ServerQuery {
    /// Every project's (admin only).
    pub all_projects: bool,
    /// Nova's status: ACTIVE, SHUTOFF, ERROR, BUILD, ...
    pub status: Option<String>,
    /// The compute host (admin only).
    pub host: Option<String>,
    /// A project id (with all_projects).
    pub project: Option<String>,
    pub limit: usize,
}

/// The lower-case state every backend names: running, shutoff, paused, suspended, error,
/// building, rebooting, resizing, verify_resize, deleted, unknown.
pub fn state_of(status: &str) -> &'static str {
    match status {
        "ACTIVE" => "running",
        "SHUTOFF" => "shutoff",
        "PAUSED" => "paused",
        "SUSPENDED" | "SHELVED" | "SHELVED_OFFLOADED" => "suspended",
        "ERROR" => "error",
        "BUILD" => "building",
        "REBOOT" | "HARD_REBOOT" => "rebooting",
        "RESIZE" | "MIGRATING" | "REVERT_RESIZE" => "resizing",
        "VERIFY_RESIZE" => "verify_resize",
        "DELETED" | "SOFT_DELETED" => "deleted",
        _ => "unknown",
    }
}

fn power_state(n: Option<u64>) -> &'static str {
    match n {
        Some(0) => "nostate",
        Some(1) => "running",
        Some(3) => "paused",
        Some(4) => "shutdown",
        Some(6) => "crashed",
        Some(7) => "suspended",
        _ => "unknown",
    }
}

/// A Nova server as a `virt` VM: `name`, `uuid`, `id`, `state`, `vcpus`, `memory_mib` as
/// libvirt's are, and `status`, `power_state`, `flavor`, `disk_gb`, `image`, `addresses`,
/// `host`, `project`, `created`, `task` and `fault` besides.
pub fn normalize(s: &Value) -> Value {
    let status = s["status"].as_str().unwrap_or("UNKNOWN");
    let flavor = &s["flavor"];
    let addresses: serde_json::Map<String, Value> = s["addresses"]
        .as_object()
        .map(|nets| {
            nets.iter()
                .map(|(net, list)| {
                    let ips: Vec<Value> =
                        list.as_array().into_iter().flatten().filter_map(|a| a["addr"].as_str().map(|x| json!(x))).collect();
                    (net.clone(), Value::Array(ips))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut v = json!({
        "name": s["name"],
        "uuid": s["id"],
        "id": s["id"],
        "state": state_of(status),
        "status": status,
        "power_state": power_state(s["OS-EXT-STS:power_state"].as_u64()),
        "vcpus": flavor["vcpus"],
        "memory_mib": flavor["ram"],
        "disk_gb": flavor["disk"],
        "flavor": flavor["original_name"].as_str().or(flavor["id"].as_str()),
        "image": s["image"]["id"].as_str(),
        "addresses": addresses,
        "host": s["OS-EXT-SRV-ATTR:host"].as_str(),
        "project": s["tenant_id"],
        "created": s["created"],
        "updated": s["updated"],
        "task": s["OS-EXT-STS:task_state"].as_str(),
    });
    if s["fault"].is_object() {
        v["fault"] = json!({ "code": s["fault"]["code"], "message": s["fault"]["message"] });
    }
    v
}

/// A server id: a UUID in its hyphenated form (the only one 36 characters long).
fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// Query text, percent-encoded.
fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Cloud {
    async fn compute(&self, method: Method, path: &str, body: Option<&Value>, want: Micro, need: Micro) -> Result<Value, OsError> {
        let m = self.micro(want, need).await?;
        self.send(Service::Compute, method, path, body, Some(m)).await
    }

    /// Servers, a page of at most 1000 at a time, up to `q.limit`; normalized.
    pub async fn servers(&self, query: &ServerQuery) -> Result<(Vec<Value>, bool), OsError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let room = query.limit.saturating_sub(out.len());
            if room == 0 {
                return Ok((out, true));
            }
            let mut path = format!("/servers/detail?limit={}", room.min(1000));
            if query.all_projects {
                path.push_str("&all_tenants=1");
            }
            if let Some(s) = &query.status {
                path.push_str(&format!("&status={}", q(s)));
            }
            if let Some(h) = &query.host {
                path.push_str(&format!("&host={}", q(h)));
            }
            if let Some(p) = &query.project {
                path.push_str(&format!("&project_id={}", q(p)));
            }
            if let Some(m) = &marker {
                path.push_str(&format!("&marker={}", q(m)));
            }
            let v = self.compute(Method::GET, &path, None, SERVER_MICRO, Micro(2, 1)).await?;
            let page = v["servers"].as_array().cloned().unwrap_or_default();
            let full = page.len() >= room.min(1000);
            marker = page.last().and_then(|s| s["id"].as_str()).map(str::to_string);
            out.extend(page.iter().map(normalize));
            if !full || marker.is_none() {
                return Ok((out, false));
            }
        }
    }

    /// The server `name_or_id` (a UUID, or a name that must be unique among what the token
    /// sees), as Nova describes it.
    pub async fn find(&self, name_or_id: &str, all_projects: bool) -> Result<Value, OsError> {
        if is_uuid(name_or_id) {
            let v = self.compute(Method::GET, &format!("/servers/{name_or_id}"), None, SERVER_MICRO, Micro(2, 1)).await;
            return match v {
                Ok(v) => Ok(v["server"].clone()),
                Err(OsError::Api { status: 404, .. }) => Err(OsError::Check(format!("no server {name_or_id} on {}", self.name))),
                Err(e) => Err(e),
            };
        }
        let mut path = format!("/servers/detail?name={}", q(&format!("^{}$", regex_escape(name_or_id))));
        if all_projects {
            path.push_str("&all_tenants=1");
        }
        let v = self.compute(Method::GET, &path, None, SERVER_MICRO, Micro(2, 1)).await?;
        let found: Vec<Value> = v["servers"].as_array().into_iter().flatten().filter(|s| s["name"] == name_or_id).cloned().collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(OsError::Check(format!("no server `{name_or_id}` on {}", self.name))),
            many => Err(OsError::Check(format!(
                "{} servers are named `{name_or_id}` on {} ({}); give the id",
                many.len(),
                self.name,
                many.iter().filter_map(|s| s["id"].as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Flavors with their sizes.
    pub async fn flavors(&self) -> Result<Vec<Value>, OsError> {
        let v = self.compute(Method::GET, "/flavors/detail?is_public=None", None, Micro(2, 61), Micro(2, 1)).await?;
        let mut out: Vec<Value> = v["flavors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| json!({ "id": f["id"], "name": f["name"], "vcpus": f["vcpus"], "memory_mib": f["ram"], "disk_gb": f["disk"], "public": f["os-flavor-access:is_public"] }))
            .collect();
        out.sort_by_key(|f| (f["vcpus"].as_u64(), f["memory_mib"].as_u64(), f["disk_gb"].as_u64()));
        Ok(out)
    }

    /// Images, from Glance.
    pub async fn images(&self) -> Result<Vec<Value>, OsError> {
        let mut out = Vec::new();
        let mut next = Some("/v2/images?limit=1000".to_string());
        while let Some(path) = next.take() {
            let v = self.send(Service::Image, Method::GET, &path, None, None).await?;
            out.extend(v["images"].as_array().into_iter().flatten().map(|i| {
                json!({ "id": i["id"], "name": i["name"], "status": i["status"], "size": i["size"], "visibility": i["visibility"], "disk_format": i["disk_format"] })
            }));
            next = v["next"].as_str().map(str::to_string).filter(|n| n.starts_with("/v2/") && out.len() < 100_000);
        }
        Ok(out)
    }

    /// Compute hosts with their capacity and use (admin).
    pub async fn hypervisors(&self) -> Result<Vec<Value>, OsError> {
        let v = self.compute(Method::GET, "/os-hypervisors/detail", None, HYPERVISOR_MICRO, Micro(2, 1)).await?;
        Ok(v["hypervisors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                json!({
                    "name": h["hypervisor_hostname"], "host": h["service"]["host"], "state": h["state"], "status": h["status"],
                    "type": h["hypervisor_type"], "vcpus": h["vcpus"], "vcpus_used": h["vcpus_used"],
                    "memory_mib": h["memory_mb"], "memory_used_mib": h["memory_mb_used"],
                    "disk_gb": h["local_gb"], "disk_used_gb": h["local_gb_used"], "running_vms": h["running_vms"],
                })
            })
            .collect())
    }

    /// Each project's use of the cloud since `since` (admin): servers, vCPU hours, RAM MiB hours.
    pub async fn usage(&self, since: chrono::DateTime<chrono::Utc>) -> Result<Vec<Value>, OsError> {
        let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
        let path = format!("/os-simple-tenant-usage?start={}&end={}&detailed=1", fmt(since), fmt(chrono::Utc::now()));
        let v = self.compute(Method::GET, &path, None, Micro(2, 40), Micro(2, 1)).await?;
        Ok(v["tenant_usages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| {
                let live = u["server_usages"].as_array().into_iter().flatten().filter(|s| s["state"] != "terminated").count();
                json!({ "project": u["tenant_id"], "servers": live, "vcpu_hours": u["total_vcpus_usage"], "memory_mib_hours": u["total_memory_mb_usage"], "disk_gb_hours": u["total_local_gb_usage"] })
            })
            .collect())
    }

    /// Creates a server; returns Nova's description of it (still building).
    pub async fn create(&self, body: &Value) -> Result<Value, OsError> {
        let v = self.compute(Method::POST, "/servers", Some(body), CREATE_MICRO, CREATE_MICRO).await?;
        Ok(v["server"].clone())
    }

    /// A server action (`{"os-stop": null}`, `{"reboot": {"type": "HARD"}}`, ...).
    pub async fn action(&self, id: &str, body: &Value) -> Result<Value, OsError> {
        self.compute(Method::POST, &format!("/servers/{id}/action"), Some(body), SERVER_MICRO, Micro(2, 1)).await
    }

    pub async fn delete(&self, id: &str) -> Result<(), OsError> {
        self.compute(Method::DELETE, &format!("/servers/{id}"), None, SERVER_MICRO, Micro(2, 1)).await.map(drop)
    }

    /// The last `lines` lines of the server's console log.
    pub async fn console_log(&self, id: &str, lines: u32) -> Result<String, OsError> {
        let v = self.action(id, &json!({ "os-getConsoleOutput": { "length": lines } })).await?;
        Ok(v["output"].as_str().unwrap_or("").to_string())
    }

    /// Polls the server until its status is one of `targets` (or it is gone, with `gone`),
    /// within `timeout`. ERROR, when not a target, ends the wait with the server's fault.
    pub async fn wait(&self, id: &str, targets: &[&str], gone: bool, timeout: Duration) -> Result<Option<Value>, OsError> {
        let t0 = Instant::now();
        let mut delay = Duration::from_millis(250);
        // Seen working on it: a server that then rests in a state that is not a target did
        // not take the change (a resize with no host to go to, say).
        let mut seen_busy = false;
        loop {
            let v = self.compute(Method::GET, &format!("/servers/{id}"), None, SERVER_MICRO, Micro(2, 1)).await;
            let s = match v {
                Ok(v) => v["server"].clone(),
                Err(OsError::Api { status: 404, .. }) if gone => return Ok(None),
                Err(e) => return Err(e),
            };
            let status = s["status"].as_str().unwrap_or("");
            // Working on it: a task in progress, or a status that is itself a transition.
            let busy = s["OS-EXT-STS:task_state"].as_str().is_some_and(|t| !t.is_empty())
                || ["BUILD", "REBOOT", "HARD_REBOOT", "RESIZE", "MIGRATING", "REVERT_RESIZE"].contains(&status);
            if targets.contains(&status) && !busy {
                return Ok(Some(s));
            }
            if busy {
                seen_busy = true;
            } else if seen_busy && status != "ERROR" && !targets.is_empty() {
                let why = self.last_action_error(id).await.unwrap_or_else(|| "Nova gave no reason".into());
                return Err(OsError::Check(format!(
                    "{} went back to {status} without reaching {}: {why}",
                    s["name"].as_str().unwrap_or(id),
                    targets.join(" or ")
                )));
            }
            if status == "ERROR" {
                let fault = s["fault"]["message"].as_str().unwrap_or("no fault recorded");
                return Err(OsError::Check(format!("{} went to ERROR: {fault}", s["name"].as_str().unwrap_or(id))));
            }
            if t0.elapsed() >= timeout {
                return Err(OsError::Check(format!(
                    "{} is still {status}{} after {} (waiting for {})",
                    s["name"].as_str().unwrap_or(id),
                    s["OS-EXT-STS:task_state"].as_str().map(|t| format!(" ({t})")).unwrap_or_default(),
                    humantime::format_duration(timeout),
                    if gone { "it to be deleted".to_string() } else { targets.join(" or ") }
                )));
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(t0.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }
}

impl Cloud {
    /// The message of the server's latest instance action, when it failed.
    async fn last_action_error(&self, id: &str) -> Option<String> {
        let v = self.compute(Method::GET, &format!("/servers/{id}/os-instance-actions"), None, Micro(2, 58), Micro(2, 1)).await.ok()?;
        let last = v["instanceActions"].as_array()?.first()?.clone();
        let action = last["action"].as_str().unwrap_or("the action");
        match last["message"].as_str() {
            Some(m) if !m.is_empty() => Some(format!("{action}: {m}")),
            _ => {
                let req = last["request_id"].as_str()?;
                let d = self
                    .compute(Method::GET, &format!("/servers/{id}/os-instance-actions/{req}"), None, Micro(2, 58), Micro(2, 1))
                    .await
                    .ok()?;
                let failed = d["instanceAction"]["events"].as_array()?.iter().find(|e| e["result"] == "Error")?.clone();
                Some(format!(
                    "{action} failed at {}{}",
                    failed["event"].as_str().unwrap_or("?"),
                    failed["traceback"].as_str().map(|t| format!(": {}", t.lines().last().unwrap_or(""))).unwrap_or_default()
                ))
            }
        }
    }
}

/// `name` as a literal inside Nova's name regex.
fn regex_escape(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nova_server_becomes_a_vm_record() {
        let s = json!({
            "id": "0f6d1f2e-3c4b-4a5d-8e9f-001122334455", "name": "web1", "status": "SHUTOFF", "tenant_id": "p1",
            "OS-EXT-STS:power_state": 4, "OS-EXT-SRV-ATTR:host": "cmp1", "OS-EXT-STS:task_state": null,
            "flavor": { "original_name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20 },
            "image": { "id": "img1" }, "addresses": { "net": [{ "addr": "10.0.0.5" }] }, "created": "2026-12-05T10:00:00Z",
        });
        let v = normalize(&s);
        assert_eq!(v["state"], "shutoff");
        assert_eq!(v["power_state"], "shutdown");
        assert_eq!((v["vcpus"].as_u64(), v["memory_mib"].as_u64()), (Some(1), Some(2048)));
        assert_eq!(v["flavor"], "m1.small");
        assert_eq!(v["addresses"]["net"][0], "10.0.0.5");
        assert!(v.get("fault").is_none());
        let e = normalize(&json!({ "id": "x", "status": "ERROR", "fault": { "code": 500, "message": "No valid host was found." } }));
        assert_eq!(e["state"], "error");
        assert_eq!(e["fault"]["message"], "No valid host was found.");
        assert!(is_uuid("0f6d1f2e-3c4b-4a5d-8e9f-001122334455") && !is_uuid("web1"));
        assert_eq!(regex_escape("a.b(1)"), "a\\.b\\(1\\)");
    }
}
