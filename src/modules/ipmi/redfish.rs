//! A small Redfish client (DMTF DSP0266) over reqwest: one computer system's power state and reset
//! actions, its one-time or persistent boot override, the chassis' thermal and power sensors, and
//! the system's or manager's log entries. HTTP Basic auth; nothing here knows Lua.

use std::time::Duration;

use serde_json::{Value, json};

use super::types::{BootDevice, LogEntry, PowerAction, Reading};

pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    user: String,
    password: String,
    /// `/redfish/v1/Systems/<id>`.
    system: String,
}

fn path_of(v: &Value) -> Option<String> {
    v.get("@odata.id").and_then(Value::as_str).map(|s| s.split('#').next().unwrap_or(s).to_string())
}

impl Client {
    /// Connects to the service at `base` (`https://bmc.example:443`) and finds the computer system:
    /// `system` names one (its Id or Name) when the BMC manages several.
    pub async fn open(
        base: &str,
        user: &str,
        password: &str,
        system: Option<&str>,
        ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Client, String> {
        use crate::kit::http::{Options, Trust, client};
        // With a site CA, only that CA: a BMC address changed in the cmdb cannot point the login
        // at a server with any public certificate. Redirects would carry the login elsewhere; a
        // BMC has no reason to send any.
        let trust = ca.map_or(Trust::System, |pem| Trust::Only(pem.to_vec()));
        let http = client(Options { timeout, connect_timeout: timeout, trust, redirects: false, read_timeout: None })?;
        let base_url = reqwest::Url::parse(base).map_err(|e| format!("BMC URL {base}: {e}"))?;
        if base_url.host_str().is_none() || !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(format!("BMC URL {base}: give scheme://host[:port] (no user or password in it)"));
        }
        let mut c = Client { http, base: base_url, user: user.into(), password: password.into(), system: String::new() };
        let systems = c.get("/redfish/v1/Systems").await?;
        let members: Vec<String> = systems.get("Members").and_then(Value::as_array).into_iter().flatten().filter_map(path_of).collect();
        c.system = match (system, members.as_slice()) {
            (_, []) => return Err("the BMC lists no computer systems".into()),
            (None, [only]) => only.clone(),
            (None, many) => {
                return Err(format!("the BMC manages {} systems; name one with the host's bmc_system tag (its Id or Name)", many.len()));
            }
            (Some(want), all) => {
                let mut found = None;
                for m in all {
                    if m.rsplit('/').next() == Some(want) {
                        found = Some(m.clone());
                        break;
                    }
                    let s = c.get(m).await?;
                    if s.get("Name").and_then(Value::as_str) == Some(want) || s.get("Id").and_then(Value::as_str) == Some(want) {
                        found = Some(m.clone());
                        break;
                    }
                }
                found.ok_or_else(|| format!("the BMC has no system `{want}` (bmc_system tag)"))?
            }
        };
        Ok(c)
    }

    /// A link the BMC gave (`@odata.id`, an action target) as a URL on the BMC itself: only
    /// absolute paths, or full URLs of the same scheme, host and port, so the login is never sent
    /// anywhere else.
    fn url(&self, link: &str) -> Result<reqwest::Url, String> {
        let u = if link.starts_with('/') && !link.starts_with("//") {
            self.base.join(link).map_err(|e| format!("the BMC's link {link:?}: {e}"))?
        } else {
            reqwest::Url::parse(link).map_err(|_| format!("the BMC's link {link:?} is not a path on the BMC"))?
        };
        let same = u.scheme() == self.base.scheme()
            && u.host_str() == self.base.host_str()
            && u.port_or_known_default() == self.base.port_or_known_default();
        if !same || !u.username().is_empty() || u.password().is_some() {
            return Err(format!("the BMC's link {link:?} leads off the BMC ({}); not followed", self.base));
        }
        Ok(u)
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Option<Value>, String> {
        let mut resp = req.basic_auth(&self.user, Some(&self.password)).header("Accept", "application/json").send().await.map_err(|e| {
            let m = crate::util::error_chain(&e);
            if e.is_timeout() { format!("{what}: no answer from the BMC in time ({m})") } else { format!("{what}: {m}") }
        })?;
        let status = resp.status();
        // Redfish answers are small; a BMC streaming more is cut off.
        const MAX_BODY: usize = 8 << 20;
        let mut raw = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{what}: reading the answer: {e}"))? {
            if raw.len() + chunk.len() > MAX_BODY {
                return Err(format!("{what}: the answer is over {} MiB", MAX_BODY >> 20));
            }
            raw.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&raw).into_owned();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(format!("{what}: the BMC refused the login as {} (HTTP {})", self.user, status.as_u16()));
        }
        if !status.is_success() {
            // Redfish errors carry { "error": { "message", "@Message.ExtendedInfo": [{ "Message" }] } }.
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let msg = v["error"]["@Message.ExtendedInfo"][0]["Message"]
                .as_str()
                .or_else(|| v["error"]["message"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(format!("{what}: HTTP {}: {msg}", status.as_u16()));
        }
        if body.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&body).map(Some).map_err(|e| format!("{what}: the answer is not JSON: {e}"))
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let url = self.url(path)?;
        self.send(self.http.get(url), &format!("GET {path}")).await?.ok_or_else(|| format!("GET {path}: empty answer"))
    }

    /// "on", "off", or the BMC's word for a transition ("poweringon").
    pub async fn power(&self) -> Result<String, String> {
        let s = self.get(&self.system).await?;
        let p = s.get("PowerState").and_then(Value::as_str).ok_or("the system reports no PowerState")?;
        Ok(p.to_ascii_lowercase())
    }

    pub async fn power_action(&self, action: PowerAction) -> Result<String, String> {
        let s = self.get(&self.system).await?;
        let reset = &s["Actions"]["#ComputerSystem.Reset"];
        let target =
            reset["target"].as_str().map(str::to_string).unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", self.system));
        let allowed: Vec<&str> =
            reset["ResetType@Redfish.AllowableValues"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        // Preferred reset types, in order; the first the BMC allows is used.
        let wanted: &[&str] = match action {
            PowerAction::On => &["On", "ForceOn"],
            PowerAction::Off => &["ForceOff"],
            PowerAction::Shutdown => &["GracefulShutdown"],
            PowerAction::Cycle => &["PowerCycle", "ForceRestart"],
            PowerAction::Reset => &["ForceRestart", "GracefulRestart"],
        };
        let kind = if allowed.is_empty() {
            wanted[0]
        } else {
            wanted.iter().find(|w| allowed.contains(w)).copied().ok_or_else(|| {
                format!("the BMC allows none of {} for {} (it allows: {})", wanted.join(", "), action.as_str(), allowed.join(", "))
            })?
        };
        self.send(self.http.post(self.url(&target)?).json(&json!({ "ResetType": kind })), &format!("POST {target} {kind}")).await?;
        Ok(kind.to_string())
    }

    pub async fn boot_device(&self, dev: BootDevice, once: bool) -> Result<(), String> {
        let target = match dev {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
            BootDevice::Cdrom => "Cd",
            BootDevice::Bios => "BiosSetup",
        };
        let body = json!({ "Boot": { "BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": if once { "Once" } else { "Continuous" } } });
        self.send(self.http.patch(self.url(&self.system)?).json(&body), &format!("PATCH {} Boot", self.system)).await?;
        Ok(())
    }

    /// Temperatures and fans (the chassis' Thermal), voltages (its Power), where the BMC has them.
    pub async fn sensors(&self) -> Result<Vec<Reading>, String> {
        let s = self.get(&self.system).await?;
        let chassis: Vec<String> = s["Links"]["Chassis"].as_array().into_iter().flatten().filter_map(path_of).collect();
        let mut out = Vec::new();
        for ch in chassis {
            let c = self.get(&ch).await?;
            if let Some(p) = path_of(&c["Thermal"]) {
                let t = self.get(&p).await?;
                for x in t["Temperatures"].as_array().into_iter().flatten() {
                    out.push(reading(x, "temperature", "ReadingCelsius", "degrees C"));
                }
                for x in t["Fans"].as_array().into_iter().flatten() {
                    let unit = if x["ReadingUnits"].as_str() == Some("Percent") { "percent" } else { "RPM" };
                    out.push(reading(x, "fan", "Reading", unit));
                }
            }
            if let Some(p) = path_of(&c["Power"]) {
                let t = self.get(&p).await?;
                for x in t["Voltages"].as_array().into_iter().flatten() {
                    out.push(reading(x, "voltage", "ReadingVolts", "Volts"));
                }
            }
        }
        Ok(out)
    }

    /// The entries of the system's (else the manager's) first log service.
    pub async fn log(&self, limit: usize) -> Result<Vec<LogEntry>, String> {
        let s = self.get(&self.system).await?;
        let mut services = Vec::new();
        if let Some(p) = path_of(&s["LogServices"]) {
            services.push(p);
        }
        for m in s["Links"]["ManagedBy"].as_array().into_iter().flatten().filter_map(path_of) {
            if let Ok(mgr) = self.get(&m).await
                && let Some(p) = path_of(&mgr["LogServices"])
            {
                services.push(p);
            }
        }
        for svc in services {
            let Ok(list) = self.get(&svc).await else { continue };
            for member in list["Members"].as_array().into_iter().flatten().filter_map(path_of) {
                let Ok(log) = self.get(&member).await else { continue };
                let Some(entries) = path_of(&log["Entries"]) else { continue };
                let e = self.get(&entries).await?;
                return Ok(e["Members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .rev()
                    .take(limit)
                    .map(|x| LogEntry {
                        id: x["Id"].as_str().unwrap_or_default().to_string(),
                        time: x["Created"].as_str().map(str::to_string),
                        sensor: x["SensorType"].as_str().unwrap_or_default().to_string(),
                        message: x["Message"].as_str().unwrap_or_default().to_string(),
                        severity: match x["Severity"].as_str() {
                            Some("Critical") => "critical",
                            Some("Warning") => "warning",
                            _ => "info",
                        }
                        .to_string(),
                    })
                    .collect());
            }
        }
        Err("the BMC offers no log service (no LogServices on the system or its manager)".into())
    }
}

fn reading(x: &Value, kind: &str, field: &str, unit: &str) -> Reading {
    let f = |k: &str| x.get(k).and_then(Value::as_f64);
    let name = x["Name"].as_str().or_else(|| x["FanName"].as_str()).unwrap_or("?").to_string();
    let name = match x["MemberId"].as_str() {
        Some(id) if !name.ends_with(id) => format!("{name} {id}"),
        _ => name,
    };
    let mut r = Reading {
        name,
        kind: kind.to_string(),
        value: f(field),
        unit: unit.to_string(),
        lower_critical: f("LowerThresholdCritical"),
        lower_warning: f("LowerThresholdNonCritical"),
        upper_warning: f("UpperThresholdNonCritical"),
        upper_critical: f("UpperThresholdCritical"),
        status: String::new(),
    };
    let enabled = x["Status"]["State"].as_str().is_none_or(|s| s == "Enabled");
    r.status = match x["Status"]["Health"].as_str() {
        _ if !enabled => "absent".to_string(),
        Some("Critical") => "critical".to_string(),
        Some("Warning") => "warning".to_string(),
        _ => r.judge(),
    };
    r
}
