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
//! RustCrypto stack. This module uses the crypto crates opslet already has.
//!
//! Layout: this file holds the session (handshake, requests, replay window) and the errors;
//! `crypto` the cipher suite 3 primitives, `packet` the RMCP+ and IPMI message framing, and
//! `chassis`, `sdr` and `sel` the commands on top.

mod chassis;
mod crypto;
mod packet;
mod sdr;
mod sel;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

use crypto::{hmac_sha1, hmac_verify, rand_bytes, session_keys};
use packet::{
    PT_IPMI, PT_OPEN_REQ, PT_OPEN_RSP, PT_RAKP1, PT_RAKP2, PT_RAKP3, PT_RAKP4, ipmi_request, ipmi_response, parse_packet, plain_packet,
    session_packet,
};

pub use chassis::{BootDevice, ChassisControl, ChassisStatus};
pub use sdr::{Conversion, Sensor, Thresholds, unit_name};
pub use sel::SelEntry;

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
        let (k1, k2) = session_keys(&sik);

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
        let msg = ipmi_request(netfn, rq_seq, cmd, data);

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
                // a stale answer to an earlier (retransmitted) request, or a corrupt one, is skipped
                if let Some(r) = ipmi_response(&p.payload, netfn, rq_seq, cmd) {
                    return Ok(r);
                }
            }
        }
        Err(Error::Timeout)
    }

    fn seal(&mut self, ipmi_msg: &[u8]) -> Vec<u8> {
        self.out_seq = self.out_seq.wrapping_add(1).max(1);
        session_packet(&self.k1, &self.k2, self.bmc_sid, self.out_seq, ipmi_msg)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window() {
        let (mut t, mut m) = (0u32, 0u32);
        let mut acc = |seq| window_accept(&mut t, &mut m, seq);
        assert!(acc(1) && acc(3) && acc(2) && !acc(2) && !acc(3) && acc(40) && !acc(5) && !acc(0));
    }
}
