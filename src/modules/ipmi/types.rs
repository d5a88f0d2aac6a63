//! The plain types both BMC protocols share: power actions, boot devices, sensor readings and
//! event log entries. `redfish` and `bmc` use them, and `bmc` re-exports them for the rest.

use serde::{Deserialize, Serialize};

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

/// One sensor's reading with its thresholds and a verdict. (A test's fake may leave out all but
/// `name`: `status` is then judged from the value and thresholds.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reading {
    pub name: String,
    /// temperature, fan, voltage, current, power or other.
    #[serde(default = "other")]
    pub kind: String,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub unit: String,
    /// ok, warning, critical, or absent (no reading).
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_critical: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_warning: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_warning: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    #[serde(default)]
    pub id: String,
    /// RFC 3339, or None when the BMC had no clock yet ("pre-init").
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub sensor: String,
    pub message: String,
    /// info, warning or critical.
    #[serde(default = "info")]
    pub severity: String,
}

fn other() -> String {
    "other".into()
}

fn info() -> String {
    "info".into()
}

/// A list in an answer a test fakes or a transcript keeps: a Lua `{}` (which reads as an empty
/// object) is an empty list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Items(Vec<T>),
            Empty(std::collections::BTreeMap<String, serde::de::IgnoredAny>),
        }
        match Either::deserialize(d)? {
            Either::Items(v) => Ok(List(v)),
            Either::Empty(m) if m.is_empty() => Ok(List(Vec::new())),
            Either::Empty(_) => Err(serde::de::Error::custom("expected a list")),
        }
    }
}

impl List<Reading> {
    /// The readings, each without a status judged from its value.
    pub fn judged(self) -> Vec<Reading> {
        self.0
            .into_iter()
            .map(|mut r| {
                if r.status.is_empty() {
                    r.status = r.judge();
                }
                r
            })
            .collect()
    }
}

/// `ipmi.power`'s answer: the power state, as `"on"` or `{ power = "on" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PowerState {
    Table { power: String },
    Word(String),
}

impl PowerState {
    pub fn into_word(self) -> String {
        match self {
            PowerState::Table { power } | PowerState::Word(power) => power,
        }
    }
}

/// `ipmi.check`'s answer for one host: the power state, sensors and event log, as read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checked {
    pub power: String,
    pub sensors: List<Reading>,
    pub sel: List<LogEntry>,
}
