//! The System Event Log: walking its entries and decoding each record.

use super::{Error, Result, Session};

impl Session {
    pub async fn sel_entries(&mut self) -> Result<Vec<SelEntry>> {
        let info = self.request(0x0a, 0x40, &[]).await?;
        let mut out = Vec::new();
        if info.len() < 3 || u16::from_le_bytes([info[1], info[2]]) == 0 {
            return Ok(out);
        }
        let mut id: u16 = 0;
        let mut seen = std::collections::HashSet::new();
        while id != 0xffff {
            if !seen.insert(id) || seen.len() > 65536 {
                return Err(Error::Protocol(format!("the SEL links back to entry {id:#06x}")));
            }
            let d = self.request(0x0a, 0x43, &[0, 0, id as u8, (id >> 8) as u8, 0, 0xff]).await?;
            if d.len() < 18 {
                return Err(Error::Protocol("short SEL entry".into()));
            }
            out.push(SelEntry::parse(&d[2..18]));
            id = u16::from_le_bytes([d[0], d[1]]);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct SelEntry {
    pub record_id: u16,
    pub record_type: u8,
    pub timestamp: u32,
    pub generator_id: u16,
    pub sensor_type: u8,
    pub sensor_number: u8,
    pub deassertion: bool,
    pub event_type: u8,
    pub event_data: [u8; 3],
    pub raw: [u8; 16],
}
impl SelEntry {
    fn parse(d: &[u8]) -> SelEntry {
        SelEntry {
            record_id: u16::from_le_bytes([d[0], d[1]]),
            record_type: d[2],
            timestamp: u32::from_le_bytes([d[3], d[4], d[5], d[6]]),
            generator_id: u16::from_le_bytes([d[7], d[8]]),
            sensor_type: d[10],
            sensor_number: d[11],
            deassertion: d[12] & 0x80 != 0,
            event_type: d[12] & 0x7f,
            event_data: [d[13], d[14], d[15]],
            raw: d[..16].try_into().unwrap(),
        }
    }
}
