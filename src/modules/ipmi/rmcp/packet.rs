//! RMCP+ framing: the session-less handshake packets, the authenticated and encrypted session
//! packets, parsing and checking what comes back, and the IPMI request/response messages inside.

use super::crypto::{decrypt, encrypt, hmac_sha1, hmac_verify};

const RMCP_HDR: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const AUTH_RMCPP: u8 = 0x06;
pub(super) const PT_IPMI: u8 = 0x00;
pub(super) const PT_OPEN_REQ: u8 = 0x10;
pub(super) const PT_OPEN_RSP: u8 = 0x11;
pub(super) const PT_RAKP1: u8 = 0x12;
pub(super) const PT_RAKP2: u8 = 0x13;
pub(super) const PT_RAKP3: u8 = 0x14;
pub(super) const PT_RAKP4: u8 = 0x15;
const BMC_ADDR: u8 = 0x20;
const SW_ID: u8 = 0x81;

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)).wrapping_neg()
}

/// Unauthenticated session-less RMCP+ packet (handshake).
pub(super) fn plain_packet(ptype: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + payload.len());
    p.extend_from_slice(&RMCP_HDR);
    p.push(AUTH_RMCPP);
    p.push(ptype);
    p.extend_from_slice(&[0; 8]); // session id 0, seq 0
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

pub(super) struct Parsed {
    pub(super) ptype: u8,
    pub(super) session_id: u32,
    pub(super) seq: u32,
    pub(super) payload: Vec<u8>,
}

/// Parse an RMCP+ packet; for authenticated packets verify the HMAC-SHA1-96 trailer with k1
/// and decrypt AES-CBC-128 payloads with k2.
pub(super) fn parse_packet(d: &[u8], keys: Option<(&[u8; 20], &[u8; 16])>) -> Option<Parsed> {
    if d.len() < 16 || d[..4] != RMCP_HDR || d[4] != AUTH_RMCPP {
        return None;
    }
    let ptype = d[5];
    let session_id = u32::from_le_bytes(d[6..10].try_into().ok()?);
    let seq = u32::from_le_bytes(d[10..14].try_into().ok()?);
    let len = u16::from_le_bytes([d[14], d[15]]) as usize;
    let body = d.get(16..16 + len)?;
    let (auth, enc) = (ptype & 0x40 != 0, ptype & 0x80 != 0);
    if auth || enc {
        let (k1, k2) = keys?;
        if !auth {
            return None; // we never accept unauthenticated session traffic
        }
        if d.len() < 16 + len + 2 + 12 {
            return None;
        }
        let icv_at = d.len() - 12;
        if !hmac_verify(k1, &[&d[4..icv_at]], &d[icv_at..]) {
            return None;
        }
        let payload = if enc { decrypt(k2, body)? } else { body.to_vec() };
        return Some(Parsed { ptype: ptype & 0x3f, session_id, seq, payload });
    }
    Some(Parsed { ptype, session_id, seq, payload: body.to_vec() })
}

/// An authenticated, encrypted session packet carrying `ipmi_msg` as session sequence number
/// `seq`: AES-CBC-128 with k2, then the integrity pad and the HMAC-SHA1-96 trailer with k1.
pub(super) fn session_packet(k1: &[u8; 20], k2: &[u8; 16], bmc_sid: u32, seq: u32, ipmi_msg: &[u8]) -> Vec<u8> {
    let enc = encrypt(k2, ipmi_msg);
    let mut p = Vec::with_capacity(16 + enc.len() + 20);
    p.extend_from_slice(&RMCP_HDR);
    p.push(AUTH_RMCPP);
    p.push(PT_IPMI | 0xc0); // encrypted + authenticated
    p.extend_from_slice(&bmc_sid.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(enc.len() as u16).to_le_bytes());
    p.extend_from_slice(&enc);
    // integrity pad so that authtype..next-header is a multiple of 4
    let pad = (4 - (p.len() - 4 + 2) % 4) % 4;
    p.extend(std::iter::repeat_n(0xffu8, pad));
    p.push(pad as u8);
    p.push(0x07);
    let icv = hmac_sha1(k1, &[&p[4..]]);
    p.extend_from_slice(&icv[..12]);
    p
}

/// An IPMI request message to the BMC, with both checksums.
pub(super) fn ipmi_request(netfn: u8, rq_seq: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut msg = vec![BMC_ADDR, netfn << 2];
    msg.push(checksum(&msg));
    let start = msg.len();
    msg.extend_from_slice(&[SW_ID, rq_seq << 2, cmd]);
    msg.extend_from_slice(data);
    msg.push(checksum(&msg[start..]));
    msg
}

/// (completion code, data) of an IPMI response message, when it answers the request
/// (`netfn`, `rq_seq`, `cmd`) and its checksums hold.
pub(super) fn ipmi_response(m: &[u8], netfn: u8, rq_seq: u8, cmd: u8) -> Option<(u8, Vec<u8>)> {
    // rqAddr, netFn|rsLUN, chk1, rsAddr, rqSeq|rqLUN, cmd, cc, data.., chk2
    if m.len() < 8 || m[1] >> 2 != netfn | 1 || m[4] >> 2 != rq_seq || m[5] != cmd {
        return None; // stale answer to an earlier (retransmitted) request
    }
    if checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return None;
    }
    Some((m[6], m[7..m.len() - 1].to_vec()))
}
