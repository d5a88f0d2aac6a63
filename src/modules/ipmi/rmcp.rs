//! A minimal async IPMI v2.0 / RMCP+ client, cipher suite 3 only
//! (RAKP-HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128), for tokio.
//!
//! * session open: Open Session + RAKP1..4, RAKP2 key-exchange code and RAKP4 ICV verified
//!   (constant time), then Set Session Privilege Level (ipmi_sim and most BMCs start at USER)
//! * every IPMI request is AES-CBC-128 encrypted and HMAC-SHA1-96 protected
//! * outbound session sequence numbers, inbound replay window, rq_seq/netfn/cmd matching
//! * retries on UDP loss (new session seq per retransmission, same rq_seq); stale or forged
//!   datagrams are dropped while waiting
//! * helpers: chassis status/control, boot device, SDR walk + sensor readings/thresholds, SEL
//!
//! Dependencies: tokio (net, time), hmac 0.13, sha1 0.11, aes 0.9, cbc 0.2, getrandom 0.4.
//!
//! Why not a crate: the RMCP+ crates on crates.io (ruipmi, ipmi-rs, ipmi) were each tried against
//! OpenIPMI's ipmi_sim. None raises the session's privilege after login (so every power action
//! fails with 0xd4 on BMCs that start sessions at User level), their SDR walks return nothing
//! against it, one only speaks port 623, one is blocking, and each pulls in a second, older
//! RustCrypto stack. This file uses the crypto crates opslet already has.

use aes::Aes128;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

type HmacSha1 = Hmac<Sha1>;

// ---------------------------------------------------------------- errors

#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// No (valid) answer after all retransmissions.
    Timeout,
    /// RAKP2 key exchange code or RAKP4 ICV did not verify (wrong password / Kg, or spoofed BMC).
    AuthFailed(&'static str),
    /// Open Session / RAKP status code from the BMC (RMCP+ status, IPMI 2.0 table 13-15).
    RakpStatus {
        stage: &'static str,
        code: u8,
    },
    /// IPMI completion code != 0.
    Completion {
        netfn: u8,
        cmd: u8,
        cc: u8,
    },
    Protocol(String),
}
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "io: {e}"),
            Error::Timeout => write!(f, "timeout (no valid response after retries)"),
            Error::AuthFailed(s) => write!(f, "authentication failed: {s}"),
            Error::RakpStatus { stage, code } => write!(f, "{stage} rejected, RMCP+ status {code:#04x} ({})", rakp_status_name(*code)),
            Error::Completion { netfn, cmd, cc } => write!(f, "netfn {netfn:#04x} cmd {cmd:#04x}: completion code {cc:#04x}"),
            Error::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}
impl std::error::Error for Error {}
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
pub type Result<T> = std::result::Result<T, Error>;

fn rakp_status_name(c: u8) -> &'static str {
    match c {
        0x01 => "insufficient resources",
        0x02 => "invalid session id",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x09 => "invalid role",
        0x0a => "unauthorized role or privilege",
        0x0c => "invalid name length",
        0x0d => "unauthorized name",
        0x0f => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match",
        0x12 => "illegal parameter",
        _ => "other",
    }
}

// ---------------------------------------------------------------- options

#[derive(Clone, Debug)]
pub struct Options {
    /// Per-attempt wait for a response.
    pub timeout: Duration,
    /// Retransmissions after the first attempt (per request and per handshake step).
    pub retries: u32,
    /// Requested privilege: 2 user, 3 operator, 4 administrator.
    pub privilege: u8,
}
impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_millis(1000), retries: 3, privilege: 4 }
    }
}

// ---------------------------------------------------------------- wire helpers

const RMCP_HDR: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
const AUTH_RMCPP: u8 = 0x06;
const PT_IPMI: u8 = 0x00;
const PT_OPEN_REQ: u8 = 0x10;
const PT_OPEN_RSP: u8 = 0x11;
const PT_RAKP1: u8 = 0x12;
const PT_RAKP2: u8 = 0x13;
const PT_RAKP3: u8 = 0x14;
const PT_RAKP4: u8 = 0x15;
const BMC_ADDR: u8 = 0x20;
const SW_ID: u8 = 0x81;

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("OS RNG");
    b
}

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut m = HmacSha1::new_from_slice(key).expect("hmac accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn hmac_verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha1::new_from_slice(key).expect("hmac accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_truncated_left(tag).is_ok()
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)).wrapping_neg()
}

/// Unauthenticated session-less RMCP+ packet (handshake).
fn plain_packet(ptype: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + payload.len());
    p.extend_from_slice(&RMCP_HDR);
    p.push(AUTH_RMCPP);
    p.push(ptype);
    p.extend_from_slice(&[0; 8]); // session id 0, seq 0
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

struct Parsed {
    ptype: u8,
    session_id: u32,
    seq: u32,
    payload: Vec<u8>,
}

/// Parse an RMCP+ packet; for authenticated packets verify the HMAC-SHA1-96 trailer with k1
/// and decrypt AES-CBC-128 payloads with k2.
fn parse_packet(d: &[u8], keys: Option<(&[u8; 20], &[u8; 16])>) -> Option<Parsed> {
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

fn encrypt(k2: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let pad = (16 - (plain.len() + 1) % 16) % 16;
    let iv: [u8; 16] = rand_bytes();
    let mut buf = Vec::with_capacity(16 + plain.len() + pad + 1);
    buf.extend_from_slice(plain);
    buf.extend((1..=pad as u8).collect::<Vec<_>>());
    buf.push(pad as u8);
    let n = buf.len();
    cbc::Encryptor::<Aes128>::new(k2.into(), &iv.into()).encrypt_padded::<NoPadding>(&mut buf, n).expect("block aligned");
    let mut out = iv.to_vec();
    out.extend_from_slice(&buf);
    out
}

fn decrypt(k2: &[u8; 16], body: &[u8]) -> Option<Vec<u8>> {
    if body.len() < 32 || !body.len().is_multiple_of(16) {
        return None;
    }
    let iv: [u8; 16] = body[..16].try_into().ok()?;
    let mut buf = body[16..].to_vec();
    let plain = cbc::Decryptor::<Aes128>::new(k2.into(), &iv.into()).decrypt_padded::<NoPadding>(&mut buf).ok()?;
    let pad = *plain.last()? as usize;
    if pad + 1 > plain.len() || pad > 15 {
        return None;
    }
    // confidentiality pad bytes are 1, 2, 3, ...
    if !plain[plain.len() - 1 - pad..plain.len() - 1].iter().enumerate().all(|(i, b)| *b == i as u8 + 1) {
        return None;
    }
    Some(plain[..plain.len() - 1 - pad].to_vec())
}

// ---------------------------------------------------------------- session

pub struct Session {
    sock: UdpSocket,
    opts: Options,
    console_sid: u32,
    bmc_sid: u32,
    k1: [u8; 20],
    k2: [u8; 16],
    out_seq: u32,
    rq_seq: u8,
    /// highest inbound session seq seen + bitmap of the 32 below it (replay window)
    in_top: u32,
    in_mask: u32,
    closed: bool,
}

impl Session {
    /// Open an RMCP+ session (cipher suite 3) and raise it to `opts.privilege`.
    /// A handshake that times out part-way (e.g. RAKP4 lost and the BMC ignores the repeated
    /// RAKP3) is restarted once from Open Session.
    pub async fn open(addr: SocketAddr, user: &str, password: &str, opts: Options) -> Result<Session> {
        let mut answered = false;
        match Self::open_once(addr, user, password, opts.clone(), &mut answered).await {
            // restart only if the BMC answered at least the Open Session request
            Err(Error::Timeout) if answered => Self::open_once(addr, user, password, opts, &mut answered).await,
            r => r,
        }
    }

    async fn open_once(addr: SocketAddr, user: &str, password: &str, opts: Options, answered: &mut bool) -> Result<Session> {
        if user.len() > 16 || password.len() > 20 {
            return Err(Error::Protocol("user > 16 or password > 20 bytes".into()));
        }
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(addr).await?;
        let (user, kuid) = (user.as_bytes(), password.as_bytes());
        let role = 0x10 | (opts.privilege & 0x0f); // name-only lookup + requested max privilege

        // --- Open Session
        let console_sid = u32::from_le_bytes(rand_bytes::<4>()) | 1;
        let tag = rand_bytes::<1>()[0];
        let mut p = vec![tag, opts.privilege, 0, 0];
        p.extend_from_slice(&console_sid.to_le_bytes());
        p.extend_from_slice(&[0x00, 0, 0, 0x08, 0x01, 0, 0, 0]); // auth: RAKP-HMAC-SHA1
        p.extend_from_slice(&[0x01, 0, 0, 0x08, 0x01, 0, 0, 0]); // integrity: HMAC-SHA1-96
        p.extend_from_slice(&[0x02, 0, 0, 0x08, 0x01, 0, 0, 0]); // confidentiality: AES-CBC-128
        let r = handshake(&sock, &opts, &plain_packet(PT_OPEN_REQ, &p), PT_OPEN_RSP, |r| {
            r.len() >= 2 && r[0] == tag && (r[1] != 0 || (r.len() >= 36 && r[4..8] == console_sid.to_le_bytes()))
        })
        .await?;
        *answered = true;
        if r[1] != 0 {
            return Err(Error::RakpStatus { stage: "Open Session", code: r[1] });
        }
        if r[16] != 0x01 || r[24] != 0x01 || r[32] != 0x01 {
            return Err(Error::Protocol("BMC did not accept cipher suite 3".into()));
        }
        let bmc_sid = u32::from_le_bytes(r[8..12].try_into().unwrap());

        // --- RAKP1 / RAKP2
        let rm: [u8; 16] = rand_bytes();
        let tag = tag.wrapping_add(1);
        let mut p = vec![tag, 0, 0, 0];
        p.extend_from_slice(&bmc_sid.to_le_bytes());
        p.extend_from_slice(&rm);
        p.extend_from_slice(&[role, 0, 0, user.len() as u8]);
        p.extend_from_slice(user);
        let r = handshake(&sock, &opts, &plain_packet(PT_RAKP1, &p), PT_RAKP2, |r| {
            r.len() >= 2 && r[0] == tag && (r[1] != 0 || (r.len() >= 60 && r[4..8] == console_sid.to_le_bytes()))
        })
        .await?;
        if r[1] != 0 {
            return Err(Error::RakpStatus { stage: "RAKP1", code: r[1] });
        }
        let rc: [u8; 16] = r[8..24].try_into().unwrap();
        let guid: [u8; 16] = r[24..40].try_into().unwrap();
        let ulen = [role, user.len() as u8];
        let ok = hmac_verify(kuid, &[&console_sid.to_le_bytes(), &bmc_sid.to_le_bytes(), &rm, &rc, &guid, &ulen, user], &r[40..60]);
        let tag = tag.wrapping_add(1);
        if !ok {
            // tell the BMC, so it can drop the half-open session; no answer expected
            let mut p = vec![tag, 0x0f, 0, 0];
            p.extend_from_slice(&bmc_sid.to_le_bytes());
            let _ = sock.send(&plain_packet(PT_RAKP3, &p)).await;
            return Err(Error::AuthFailed("RAKP2 key exchange code mismatch (wrong password?)"));
        }

        // --- RAKP3 / RAKP4
        let sik = hmac_sha1(kuid, &[&rm, &rc, &ulen, user]); // Kg = Kuid (no BMC key)
        let auth3 = hmac_sha1(kuid, &[&rc, &console_sid.to_le_bytes(), &ulen, user]);
        let mut p = vec![tag, 0, 0, 0];
        p.extend_from_slice(&bmc_sid.to_le_bytes());
        p.extend_from_slice(&auth3);
        let r = handshake(&sock, &opts, &plain_packet(PT_RAKP3, &p), PT_RAKP4, |r| {
            r.len() >= 2 && r[0] == tag && (r[1] != 0 || (r.len() >= 20 && r[4..8] == console_sid.to_le_bytes()))
        })
        .await?;
        if r[1] != 0 {
            return Err(Error::RakpStatus { stage: "RAKP3", code: r[1] });
        }
        if !hmac_verify(&sik, &[&rm, &bmc_sid.to_le_bytes(), &guid], &r[8..20]) {
            return Err(Error::AuthFailed("RAKP4 integrity check value mismatch"));
        }
        let k1 = hmac_sha1(&sik, &[&[1u8; 20]]);
        let k2: [u8; 16] = hmac_sha1(&sik, &[&[2u8; 20]])[..16].try_into().unwrap();

        let mut s = Session { sock, opts, console_sid, bmc_sid, k1, k2, out_seq: 0, rq_seq: 0, in_top: 0, in_mask: 0, closed: false };
        // sessions start at USER privilege: raise to the requested one
        if s.opts.privilege > 2 {
            let p = s.opts.privilege;
            s.request(0x06, 0x3b, &[p]).await?;
        }
        Ok(s)
    }

    pub fn bmc_session_id(&self) -> u32 {
        self.bmc_sid
    }

    /// Send one IPMI request; returns the response data after the completion code.
    /// A non-zero completion code is `Error::Completion`.
    pub async fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>> {
        let (cc, d) = self.request_cc(netfn, cmd, data).await?;
        if cc != 0 {
            return Err(Error::Completion { netfn, cmd, cc });
        }
        Ok(d)
    }

    /// Like `request` but returns (completion code, data) without judging the code.
    pub async fn request_cc(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<(u8, Vec<u8>)> {
        if self.closed {
            return Err(Error::Protocol("session closed".into()));
        }
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let rq_seq = self.rq_seq;
        let mut msg = vec![BMC_ADDR, netfn << 2];
        msg.push(checksum(&msg));
        let start = msg.len();
        msg.extend_from_slice(&[SW_ID, rq_seq << 2, cmd]);
        msg.extend_from_slice(data);
        msg.push(checksum(&msg[start..]));

        let mut buf = vec![0u8; 2048];
        for _attempt in 0..=self.opts.retries {
            let pkt = self.seal(&msg);
            self.sock.send(&pkt).await?;
            let deadline = Instant::now() + self.opts.timeout;
            loop {
                let n = match timeout_at(deadline, self.sock.recv(&mut buf)).await {
                    Err(_) => break, // attempt timed out: retransmit
                    Ok(r) => r?,
                };
                let Some(p) = parse_packet(&buf[..n], Some((&self.k1, &self.k2))) else { continue };
                if p.ptype != PT_IPMI || p.session_id != self.console_sid || !self.accept_seq(p.seq) {
                    continue;
                }
                let m = &p.payload;
                // rqAddr, netFn|rsLUN, chk1, rsAddr, rqSeq|rqLUN, cmd, cc, data.., chk2
                if m.len() < 8 || m[1] >> 2 != netfn | 1 || m[4] >> 2 != rq_seq || m[5] != cmd {
                    continue; // stale answer to an earlier (retransmitted) request
                }
                if checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
                    continue;
                }
                return Ok((m[6], m[7..m.len() - 1].to_vec()));
            }
        }
        Err(Error::Timeout)
    }

    fn seal(&mut self, ipmi_msg: &[u8]) -> Vec<u8> {
        self.out_seq = self.out_seq.wrapping_add(1).max(1);
        let enc = encrypt(&self.k2, ipmi_msg);
        let mut p = Vec::with_capacity(16 + enc.len() + 20);
        p.extend_from_slice(&RMCP_HDR);
        p.push(AUTH_RMCPP);
        p.push(PT_IPMI | 0xc0); // encrypted + authenticated
        p.extend_from_slice(&self.bmc_sid.to_le_bytes());
        p.extend_from_slice(&self.out_seq.to_le_bytes());
        p.extend_from_slice(&(enc.len() as u16).to_le_bytes());
        p.extend_from_slice(&enc);
        // integrity pad so that authtype..next-header is a multiple of 4
        let pad = (4 - (p.len() - 4 + 2) % 4) % 4;
        p.extend(std::iter::repeat_n(0xffu8, pad));
        p.push(pad as u8);
        p.push(0x07);
        let icv = hmac_sha1(&self.k1, &[&p[4..]]);
        p.extend_from_slice(&icv[..12]);
        p
    }

    fn accept_seq(&mut self, seq: u32) -> bool {
        window_accept(&mut self.in_top, &mut self.in_mask, seq)
    }

    /// Close Session (best effort; the session is unusable afterwards).
    pub async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let sid = self.bmc_sid.to_le_bytes();
        let r = self.request(0x06, 0x3c, &sid).await;
        self.closed = true;
        match r {
            // reply lost and the retransmission hit an already closed session
            Ok(_) | Err(Error::Timeout) | Err(Error::Completion { cc: 0x87, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------ chassis

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

    // ------------------------------------------------------------ SDR / sensors

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

    // ------------------------------------------------------------ SEL

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

/// Sliding replay window: `top` = highest inbound session seq, bit i of `mask` = top-i seen.
fn window_accept(top: &mut u32, mask: &mut u32, seq: u32) -> bool {
    if seq == 0 {
        return false;
    }
    if seq > *top {
        let shift = seq - *top;
        *mask = if shift >= 32 { 0 } else { *mask << shift } | 1;
        *top = seq;
        return true;
    }
    let back = *top - seq;
    if back >= 32 || *mask & (1 << back) != 0 {
        return false;
    }
    *mask |= 1 << back;
    true
}

/// Send a handshake message, retransmitting on timeout, until a packet of `want` type whose
/// payload satisfies `ok` arrives. Connection refused (ICMP) surfaces at once as Error::Io.
async fn handshake(sock: &UdpSocket, opts: &Options, pkt: &[u8], want: u8, ok: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    for _ in 0..=opts.retries {
        sock.send(pkt).await?;
        let deadline = Instant::now() + opts.timeout;
        loop {
            let n = match timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(r) => r?,
            };
            if let Some(p) = parse_packet(&buf[..n], None)
                && p.ptype == want
                && ok(&p.payload)
            {
                return Ok(p.payload);
            }
        }
    }
    Err(Error::Timeout)
}

// ---------------------------------------------------------------- types

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_roundtrip_and_padding() {
        let k = [7u8; 16];
        for n in 0..40 {
            let m: Vec<u8> = (0..n as u8).collect();
            let c = encrypt(&k, &m);
            assert_eq!(c.len() % 16, 0);
            assert_eq!(decrypt(&k, &c).unwrap(), m);
        }
    }

    #[test]
    fn replay_window() {
        let (mut t, mut m) = (0u32, 0u32);
        let mut acc = |seq| window_accept(&mut t, &mut m, seq);
        assert!(acc(1) && acc(3) && acc(2) && !acc(2) && !acc(3) && acc(40) && !acc(5) && !acc(0));
    }

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
