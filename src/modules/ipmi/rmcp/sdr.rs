//! Sensors: the SDR repository walk, full and compact sensor records, and readings and
//! thresholds converted to values and units.

use super::{Error, Result, Session};

impl Session {
    /// All SDR repository records (raw, header included), read in 16-byte chunks.
    pub async fn sdr_records(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let reserve = |d: Vec<u8>| if d.len() >= 2 { Ok(d) } else { Err(Error::Protocol("short Reserve SDR Repository response".into())) };
        let mut res = reserve(self.request(0x0a, 0x22, &[]).await?)?;
        let mut id: u16 = 0;
        let mut restarts = 0;
        let mut seen = std::collections::HashSet::new();
        while id != 0xffff {
            // A BMC that links records in a loop would keep this walking forever.
            if !seen.insert(id) || seen.len() > 4096 {
                return Err(Error::Protocol(format!("the SDR repository links back to record {id:#06x}")));
            }
            let mut rec = Vec::new();
            let mut len = 5usize;
            let mut next = 0xffff;
            while rec.len() < len {
                let n = (len - rec.len()).min(16) as u8;
                let req = [res[0], res[1], id as u8, (id >> 8) as u8, rec.len() as u8, n];
                match self.request(0x0a, 0x23, &req).await {
                    // Each chunk must bring record bytes, or a BMC could keep this asking forever.
                    Ok(d) if d.len() > 2 => {
                        next = u16::from_le_bytes([d[0], d[1]]);
                        rec.extend_from_slice(&d[2..]);
                        if rec.len() >= 5 {
                            len = 5 + rec[4] as usize;
                        }
                    }
                    // reservation cancelled (repository changed): reserve again and restart record
                    Err(Error::Completion { cc: 0xc5, .. }) if restarts < 5 => {
                        restarts += 1;
                        res = reserve(self.request(0x0a, 0x22, &[]).await?)?;
                        rec.clear();
                        len = 5;
                    }
                    Ok(_) => return Err(Error::Protocol("short Get SDR response".into())),
                    Err(e) => return Err(e),
                }
            }
            rec.truncate(len);
            out.push(rec);
            id = next;
        }
        Ok(out)
    }

    /// SDR walk + Get Sensor Reading (+ Get Sensor Thresholds for threshold sensors).
    pub async fn sensors(&mut self) -> Result<Vec<Sensor>> {
        let mut out = Vec::new();
        for rec in self.sdr_records().await? {
            let Some(mut s) = Sensor::from_sdr(&rec) else { continue };
            match self.request(0x04, 0x2d, &[s.number]).await {
                Ok(d) if d.len() >= 2 => {
                    s.raw = Some(d[0]);
                    let unavailable = d[1] & 0x20 != 0 || d[1] & 0x40 == 0;
                    s.value = if unavailable { None } else { s.conv.as_ref().and_then(|c| c.value(d[0])) };
                    s.state = d.get(2).copied();
                }
                Ok(_) | Err(Error::Completion { .. }) => {}
                Err(e) => return Err(e),
            }
            if s.threshold_based
                && let Ok(d) = self.request(0x04, 0x27, &[s.number]).await
                && d.len() >= 7
            {
                let m = d[0];
                let v = |bit: u8, raw: u8| if m & (1 << bit) != 0 { s.conv.as_ref().and_then(|c| c.value(raw)) } else { None };
                s.thresholds =
                    Thresholds { lnc: v(0, d[1]), lc: v(1, d[2]), lnr: v(2, d[3]), unc: v(3, d[4]), uc: v(4, d[5]), unr: v(5, d[6]) };
            }
            out.push(s);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    pub lnr: Option<f64>,
    pub lc: Option<f64>,
    pub lnc: Option<f64>,
    pub unc: Option<f64>,
    pub uc: Option<f64>,
    pub unr: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Conversion {
    format: u8, // 0 unsigned, 1 ones' complement, 2 two's complement, 3 none
    lin: u8,
    m: i32,
    b: i32,
    bexp: i32,
    rexp: i32,
}
impl Conversion {
    pub fn value(&self, raw: u8) -> Option<f64> {
        let x = match self.format {
            0 => raw as f64,
            1 => (if raw & 0x80 != 0 { -((!raw) as i32) } else { raw as i32 }) as f64,
            2 => raw as i8 as f64,
            _ => return None,
        };
        let y = (self.m as f64 * x + self.b as f64 * 10f64.powi(self.bexp)) * 10f64.powi(self.rexp);
        Some(match self.lin {
            0 => y,
            1 => y.ln(),
            2 => y.log10(),
            3 => y.log2(),
            4 => y.exp(),
            5 => 10f64.powf(y),
            6 => 2f64.powf(y),
            7 => 1.0 / y,
            8 => y * y,
            9 => y * y * y,
            10 => y.sqrt(),
            11 => y.cbrt(),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Sensor {
    pub record_id: u16,
    pub number: u8,
    pub name: String,
    pub sensor_type: u8,
    pub unit: &'static str,
    pub threshold_based: bool,
    pub raw: Option<u8>,
    pub value: Option<f64>,
    /// reading byte 3 (threshold comparison status / discrete state bits)
    pub state: Option<u8>,
    pub thresholds: Thresholds,
    conv: Option<Conversion>,
}

fn sign_ext(v: i32, bits: u32) -> i32 {
    let s = 32 - bits;
    (v << s) >> s
}

impl Sensor {
    /// Parse a full (type 1) or compact (type 2) sensor SDR (raw record incl. 5-byte header).
    pub fn from_sdr(r: &[u8]) -> Option<Sensor> {
        let ty = *r.get(3)?;
        let (id_at, conv) = match ty {
            0x01 if r.len() >= 48 => {
                let m = sign_ext(((r[25] as i32 & 0xc0) << 2) | r[24] as i32, 10);
                let b = sign_ext(((r[27] as i32 & 0xc0) << 2) | r[26] as i32, 10);
                let conv = Conversion {
                    format: r[20] >> 6,
                    lin: r[23] & 0x7f,
                    m,
                    b,
                    rexp: sign_ext((r[29] >> 4) as i32, 4),
                    bexp: sign_ext((r[29] & 0x0f) as i32, 4),
                };
                (47, Some(conv))
            }
            0x02 if r.len() >= 32 => (31, None),
            _ => return None,
        };
        let id_len = (r[id_at] & 0x1f) as usize;
        let name_bytes = r.get(id_at + 1..(id_at + 1 + id_len).min(r.len()))?;
        Some(Sensor {
            record_id: u16::from_le_bytes([r[0], r[1]]),
            number: r[7],
            name: String::from_utf8_lossy(name_bytes).trim_end_matches('\0').to_string(),
            sensor_type: r[12],
            unit: unit_name(r[21]),
            threshold_based: r[13] == 0x01,
            raw: None,
            value: None,
            state: None,
            thresholds: Thresholds::default(),
            conv,
        })
    }
}

pub fn unit_name(code: u8) -> &'static str {
    match code {
        0 => "unspecified",
        1 => "degrees C",
        2 => "degrees F",
        3 => "degrees K",
        4 => "Volts",
        5 => "Amps",
        6 => "Watts",
        7 => "Joules",
        18 => "RPM",
        19 => "Hz",
        20 => "microseconds",
        21 => "milliseconds",
        22 => "seconds",
        23 => "minute",
        24 => "hour",
        35 => "CFM",
        70 => "bytes",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdr_full_sensor_parse() {
        // CPU_Temp record as served by the peers' ipmi_sim
        let r = [
            0x00, 0x00, 0x51, 0x01, 0x33, 0x20, 0x00, 0x01, 0x03, 0x01, 0x67, 0x88, 0x01, 0x01, 0xc0, 0x0f, 0xc0, 0x7f, 0x38, 0x38, 0x00,
            0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x30, 0xb0, 0x00, 0xff, 0x00, 0x64, 0x5a, 0x50, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0xc8, b'C', b'P', b'U', b'_', b'T', b'e', b'm', b'p',
        ];
        let s = Sensor::from_sdr(&r).unwrap();
        assert_eq!((s.number, s.name.as_str(), s.unit, s.threshold_based), (1, "CPU_Temp", "degrees C", true));
        assert_eq!(s.conv.unwrap().value(48), Some(48.0));
    }
}
