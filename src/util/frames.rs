//! The frames a CLI command's output travels in, from the server to the CLI that sent it (over
//! the local socket and over HTTP alike): a kind byte, a big-endian u32 length, a payload.

/// The command, from the CLI (local socket only).
pub const REQUEST: u8 = 0;
/// Bytes for the CLI's stdout.
pub const STDOUT: u8 = 1;
/// Bytes for the CLI's stderr.
pub const STDERR: u8 = 2;
/// The exit code, an i32 (big-endian); the last frame.
pub const EXIT: u8 = 3;
/// Cancel what the command started (local socket only, from the CLI).
pub const CANCEL: u8 = 4;
/// The id of a command on the HTTP API (to cancel it by), the first frame.
pub const STARTED: u8 = 5;
/// A file the command wrote for the caller: u32 length of its name, the name, the content.
pub const FILE: u8 = 6;
/// Nothing: sent while a command is silent, so a caller that went away is noticed.
pub const PING: u8 = 7;

/// One frame, encoded.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A `FILE` frame's payload: `name` and `content`.
pub fn file_payload(name: &str, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + content.len() + 4);
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(content);
    out
}

/// The name and content of a `FILE` frame's payload.
pub fn parse_file(payload: &[u8]) -> Option<(String, &[u8])> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(payload.get(4..4 + len)?).ok()?;
    Some((name.to_string(), &payload[4 + len..]))
}

/// Frames out of a byte stream that arrives in pieces.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let head = self.buf.get(..5)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        let kind = head[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Some((kind, payload))
    }

    /// Bytes of a frame not yet whole.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_anywhere_come_out_whole() {
        let mut wire = encode(STDOUT, b"hello");
        wire.extend(encode(FILE, &file_payload("out.bundle", b"\x00\x01")));
        wire.extend(encode(EXIT, &3i32.to_be_bytes()));
        for cut in 0..wire.len() {
            let mut d = Decoder::default();
            d.push(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
            d.push(&wire[cut..]);
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], (STDOUT, b"hello".to_vec()));
            assert_eq!(parse_file(&got[1].1), Some(("out.bundle".to_string(), &b"\x00\x01"[..])));
            assert_eq!(got[2], (EXIT, 3i32.to_be_bytes().to_vec()));
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn a_file_frame_with_a_name_longer_than_it_is_not_read() {
        assert_eq!(parse_file(&[0, 0, 0, 9, b'a']), None);
    }
}
