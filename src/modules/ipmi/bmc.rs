//! One BMC, whichever protocol it speaks: the operations opslet offers (power, boot device,
//! sensors, event log) over IPMI-over-LAN (`rmcp`) or Redfish (`redfish`), with results in one
//! shape. Plain async Rust, no Lua.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::redfish;
use super::rmcp;
pub use super::types::{BootDevice, LogEntry, PowerAction, Reading};

/// Where and how to reach a BMC.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// IPMI over LAN: address:port (UDP, 623 by default).
    Ipmi(String),
    /// Redfish: base URL, and the system's Id or Name when the BMC has several.
    Redfish { url: String, system: Option<String> },
}

impl Endpoint {
    pub fn protocol(&self) -> &'static str {
        match self {
            Endpoint::Ipmi(_) => "ipmi",
            Endpoint::Redfish { .. } => "redfish",
        }
    }

    pub fn address(&self) -> &str {
        match self {
            Endpoint::Ipmi(a) => a,
            Endpoint::Redfish { url, .. } => url,
        }
    }
}

pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub ca: Option<&'a [u8]>,
    pub timeout: Duration,
    /// The session's privilege: 2 (User) for reads, 3 (Operator) for power and boot changes.
    pub privilege: u8,
}

/// An open connection to one BMC.
pub enum Bmc {
    Ipmi(Box<rmcp::Session>),
    Redfish(redfish::Client),
}

fn ipmi_err(e: rmcp::Error) -> String {
    match e {
        rmcp::Error::AuthFailed(_) | rmcp::Error::RakpStatus { code: 0x0d | 0x0a | 0x0f, .. } => {
            format!("the BMC refused the login (wrong user or password): {e}")
        }
        rmcp::Error::Completion { cc: 0xd4, .. } => format!("the BMC refused: insufficient privilege ({e})"),
        rmcp::Error::Timeout => "no answer from the BMC (IPMI over LAN, UDP): is the address right and IPMI over LAN enabled?".into(),
        other => other.to_string(),
    }
}

impl Bmc {
    pub async fn open(ep: &Endpoint, login: &Login<'_>) -> Result<Bmc, String> {
        match ep {
            Endpoint::Ipmi(addr) => {
                let sa: SocketAddr = addr
                    .to_socket_addrs()
                    .map_err(|e| format!("BMC address {addr}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("BMC address {addr} resolves to nothing"))?;
                // Retries on UDP loss: four attempts share the timeout.
                let opts =
                    rmcp::Options { timeout: (login.timeout / 4).max(Duration::from_millis(200)), retries: 3, privilege: login.privilege };
                let s = rmcp::Session::open(sa, login.user, login.password, opts).await.map_err(ipmi_err)?;
                Ok(Bmc::Ipmi(Box::new(s)))
            }
            Endpoint::Redfish { url, system } => {
                redfish::Client::open(url, login.user, login.password, system.as_deref(), login.ca, login.timeout).await.map(Bmc::Redfish)
            }
        }
    }

    /// "on" or "off" (Redfish may also say "poweringon" / "poweringoff").
    pub async fn power(&mut self) -> Result<String, String> {
        match self {
            Bmc::Ipmi(s) => s.chassis_status().await.map(|c| if c.power_on { "on" } else { "off" }.to_string()).map_err(ipmi_err),
            Bmc::Redfish(c) => c.power().await,
        }
    }

    /// Performs `action`; returns what was asked of the BMC (IPMI chassis control or Redfish reset type).
    pub async fn power_action(&mut self, action: PowerAction) -> Result<String, String> {
        match self {
            Bmc::Ipmi(s) => {
                let c = match action {
                    PowerAction::On => rmcp::ChassisControl::PowerOn,
                    PowerAction::Off => rmcp::ChassisControl::PowerOff,
                    PowerAction::Cycle => rmcp::ChassisControl::PowerCycle,
                    PowerAction::Reset => rmcp::ChassisControl::HardReset,
                    PowerAction::Shutdown => rmcp::ChassisControl::SoftShutdown,
                };
                s.chassis_control(c).await.map_err(ipmi_err)?;
                Ok(format!("chassis control {c:?}"))
            }
            Bmc::Redfish(c) => c.power_action(action).await.map(|t| format!("ResetType {t}")),
        }
    }

    pub async fn boot_device(&mut self, dev: BootDevice, once: bool) -> Result<(), String> {
        match self {
            Bmc::Ipmi(s) => {
                let d = match dev {
                    BootDevice::Pxe => rmcp::BootDevice::Pxe,
                    BootDevice::Disk => rmcp::BootDevice::Disk,
                    BootDevice::Cdrom => rmcp::BootDevice::Cdrom,
                    BootDevice::Bios => rmcp::BootDevice::Bios,
                };
                s.set_boot_device(d, !once, false).await.map_err(ipmi_err)
            }
            Bmc::Redfish(c) => c.boot_device(dev, once).await,
        }
    }

    pub async fn sensors(&mut self) -> Result<Vec<Reading>, String> {
        match self {
            Bmc::Ipmi(s) => Ok(s.sensors().await.map_err(ipmi_err)?.iter().map(ipmi_reading).collect()),
            Bmc::Redfish(c) => c.sensors().await,
        }
    }

    /// The newest `limit` event log entries, newest first.
    pub async fn log(&mut self, limit: usize) -> Result<Vec<LogEntry>, String> {
        match self {
            Bmc::Ipmi(s) => {
                let names: std::collections::HashMap<u8, String> =
                    s.sensors().await.map_err(ipmi_err)?.into_iter().map(|x| (x.number, x.name)).collect();
                let entries = s.sel_entries().await.map_err(ipmi_err)?;
                Ok(entries.iter().rev().take(limit).map(|e| sel_entry(e, &names)).collect())
            }
            Bmc::Redfish(c) => c.log(limit).await,
        }
    }

    pub async fn close(&mut self) {
        if let Bmc::Ipmi(s) = self {
            let _ = s.close().await;
        }
    }
}

fn ipmi_reading(s: &rmcp::Sensor) -> Reading {
    let kind = match s.sensor_type {
        0x01 => "temperature",
        0x02 => "voltage",
        0x03 => "current",
        0x04 => "fan",
        0x08 => "power",
        _ => "other",
    };
    let t = &s.thresholds;
    let mut r = Reading {
        name: s.name.clone(),
        kind: kind.into(),
        value: s.value,
        unit: s.unit.to_string(),
        status: String::new(),
        lower_critical: t.lc,
        lower_warning: t.lnc,
        upper_warning: t.unc,
        upper_critical: t.uc,
    };
    // The BMC's own comparison (reading byte 3) wins; the values are the fallback.
    r.status = match (s.threshold_based, s.state, s.value) {
        // A discrete sensor has states, not a value: "ok" when it answered.
        (false, _, _) if s.raw.is_some() => "ok".into(),
        (_, _, None) => "absent".into(),
        (true, Some(st), _) if st & 0b0011_0110 != 0 => "critical".into(),
        (true, Some(st), _) if st & 0b0000_1001 != 0 => "warning".into(),
        (true, Some(_), _) => r.judge(),
        (true, None, _) => r.judge(),
        (false, _, _) => "ok".into(),
    };
    r
}

fn sensor_type_name(t: u8) -> &'static str {
    match t {
        0x01 => "Temperature",
        0x02 => "Voltage",
        0x03 => "Current",
        0x04 => "Fan",
        0x05 => "Chassis intrusion",
        0x07 => "Processor",
        0x08 => "Power supply",
        0x09 => "Power unit",
        0x0c => "Memory",
        0x0d => "Drive slot",
        0x0f => "System firmware",
        0x10 => "Event logging",
        0x12 => "System event",
        0x13 => "Critical interrupt",
        0x23 => "Watchdog",
        _ => "Sensor",
    }
}

/// A SEL record in words, with a severity: threshold crossings by their level, and the
/// sensor-specific events that mean broken hardware.
fn sel_entry(e: &rmcp::SelEntry, names: &std::collections::HashMap<u8, String>) -> LogEntry {
    let sensor =
        names.get(&e.sensor_number).cloned().unwrap_or_else(|| format!("{} #{:#04x}", sensor_type_name(e.sensor_type), e.sensor_number));
    let offset = e.event_data[0] & 0x0f;
    let (what, severity) = match e.event_type {
        0x01 => {
            const T: [(&str, &str); 12] = [
                ("Lower Non-critical going low", "warning"),
                ("Lower Non-critical going high", "warning"),
                ("Lower Critical going low", "critical"),
                ("Lower Critical going high", "critical"),
                ("Lower Non-recoverable going low", "critical"),
                ("Lower Non-recoverable going high", "critical"),
                ("Upper Non-critical going low", "warning"),
                ("Upper Non-critical going high", "warning"),
                ("Upper Critical going low", "critical"),
                ("Upper Critical going high", "critical"),
                ("Upper Non-recoverable going low", "critical"),
                ("Upper Non-recoverable going high", "critical"),
            ];
            T.get(offset as usize).map(|(w, s)| (w.to_string(), *s)).unwrap_or((format!("threshold event {offset}"), "warning"))
        }
        0x6f => match (e.sensor_type, offset) {
            (0x08, 1) => ("Power supply failure detected".into(), "critical"),
            (0x08, 2) => ("Power supply predictive failure".into(), "warning"),
            (0x0c, 0) => ("Correctable ECC".into(), "warning"),
            (0x0c, 1) => ("Uncorrectable ECC".into(), "critical"),
            (0x07, 0) => ("Processor IERR".into(), "critical"),
            (0x07, 1) => ("Processor thermal trip".into(), "critical"),
            (0x13, _) => ("Critical interrupt".into(), "critical"),
            (0x0d, 1) => ("Drive fault".into(), "critical"),
            (t, o) => (format!("{} event {o}", sensor_type_name(t)), "info"),
        },
        t => (format!("event type {t:#04x} offset {offset}"), "info"),
    };
    let (what, severity) = if e.deassertion { (format!("{what} (deasserted)"), "info") } else { (what, severity) };
    // Timestamps below 0x20000000 count from the BMC's start, not from the epoch.
    let time = (e.timestamp >= 0x2000_0000 && e.timestamp != 0xffff_ffff)
        .then(|| chrono::DateTime::from_timestamp(i64::from(e.timestamp), 0).map(|t| t.to_rfc3339()))
        .flatten();
    LogEntry {
        id: format!("{:#06x}", e.record_id),
        time,
        sensor: format!("{} ({})", sensor, sensor_type_name(e.sensor_type)),
        message: what,
        severity: severity.into(),
    }
}
