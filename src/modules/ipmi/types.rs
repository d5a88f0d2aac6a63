//! The plain types both BMC protocols share: power actions, boot devices, sensor readings and
//! event log entries. `redfish` and `bmc` use them, and `bmc` re-exports them for the rest.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    Reset,
    /// Ask the operating system to shut down (ACPI soft-off / GracefulShutdown).
    Shutdown,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "power_on",
            PowerAction::Off => "power_off",
            PowerAction::Cycle => "power_cycle",
            PowerAction::Reset => "power_reset",
            PowerAction::Shutdown => "power_shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    Pxe,
    Disk,
    Cdrom,
    Bios,
}

impl BootDevice {
    pub fn parse(s: &str) -> Option<BootDevice> {
        Some(match s {
            "pxe" | "network" => BootDevice::Pxe,
            "disk" | "hdd" => BootDevice::Disk,
            "cdrom" | "cd" => BootDevice::Cdrom,
            "bios" | "setup" => BootDevice::Bios,
            _ => return None,
        })
    }
}

/// One sensor's reading with its thresholds and a verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reading {
    pub name: String,
    /// temperature, fan, voltage, current, power or other.
    pub kind: String,
    pub value: Option<f64>,
    pub unit: String,
    /// ok, warning, critical, or absent (no reading).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_critical: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_warning: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_warning: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_critical: Option<f64>,
}

impl Reading {
    /// The verdict from the value and the thresholds.
    pub fn judge(&self) -> String {
        let Some(v) = self.value else { return "absent".into() };
        let over = |t: Option<f64>| t.is_some_and(|t| v >= t);
        let under = |t: Option<f64>| t.is_some_and(|t| v <= t);
        if over(self.upper_critical) || under(self.lower_critical) {
            "critical".into()
        } else if over(self.upper_warning) || under(self.lower_warning) {
            "warning".into()
        } else {
            "ok".into()
        }
    }
}

/// One event log (SEL) entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogEntry {
    pub id: String,
    /// RFC 3339, or None when the BMC had no clock yet ("pre-init").
    pub time: Option<String>,
    pub sensor: String,
    pub message: String,
    /// info, warning or critical.
    pub severity: String,
}
