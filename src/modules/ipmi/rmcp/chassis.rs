//! Chassis commands: power status and control, and the boot device (System Boot Options).

use super::{Error, Result, Session};

impl Session {
    pub async fn chassis_status(&mut self) -> Result<ChassisStatus> {
        let d = self.request(0x00, 0x01, &[]).await?;
        if d.len() < 3 {
            return Err(Error::Protocol("short chassis status".into()));
        }
        Ok(ChassisStatus { power_on: d[0] & 1 != 0, power_fault: d[0] & 0x10 != 0, raw: d })
    }

    pub async fn chassis_control(&mut self, c: ChassisControl) -> Result<()> {
        self.request(0x00, 0x02, &[c as u8]).await.map(|_| ())
    }

    /// Set System Boot Options, parameter 5 (boot flags), like `ipmitool chassis bootdev`.
    pub async fn set_boot_device(&mut self, dev: BootDevice, persistent: bool, efi: bool) -> Result<()> {
        let flags1 = 0x80 | if persistent { 0x40 } else { 0 } | if efi { 0x20 } else { 0 };
        self.request(0x00, 0x08, &[0x05, flags1, dev as u8, 0, 0, 0]).await.map(|_| ())
    }

    /// Get System Boot Options parameter 5; returns the 5 boot flag bytes.
    pub async fn boot_flags(&mut self) -> Result<Vec<u8>> {
        let d = self.request(0x00, 0x09, &[0x05, 0, 0]).await?;
        Ok(d.get(2..).unwrap_or_default().to_vec())
    }
}

#[derive(Debug, Clone)]
pub struct ChassisStatus {
    pub power_on: bool,
    pub power_fault: bool,
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum ChassisControl {
    PowerOff = 0,
    PowerOn = 1,
    PowerCycle = 2,
    HardReset = 3,
    Diag = 4,
    SoftShutdown = 5,
}

/// Boot device selector (boot flags data 2, bits 5:2).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum BootDevice {
    NoOverride = 0x00,
    Pxe = 0x04,
    Disk = 0x08,
    Safe = 0x0c,
    Diag = 0x10,
    Cdrom = 0x14,
    Bios = 0x18,
    Floppy = 0x3c,
}
