//! The cipher suite 3 primitives: HMAC-SHA1 (RAKP key exchange codes, the session integrity key
//! and HMAC-SHA1-96 integrity), the K1/K2 derivation, and AES-CBC-128 confidentiality with the
//! IPMI pad.

use aes::Aes128;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

pub(super) fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("OS RNG");
    b
}

pub(super) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut m = HmacSha1::new_from_slice(key).expect("hmac accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

pub(super) fn hmac_verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = HmacSha1::new_from_slice(key).expect("hmac accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_truncated_left(tag).is_ok()
}

/// K1 (the integrity key) and K2 (the AES key, its first 16 bytes) from the session integrity key.
pub(super) fn session_keys(sik: &[u8; 20]) -> ([u8; 20], [u8; 16]) {
    let k1 = hmac_sha1(sik, &[&[1u8; 20]]);
    let k2: [u8; 16] = hmac_sha1(sik, &[&[2u8; 20]])[..16].try_into().unwrap();
    (k1, k2)
}

pub(super) fn encrypt(k2: &[u8; 16], plain: &[u8]) -> Vec<u8> {
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

pub(super) fn decrypt(k2: &[u8; 16], body: &[u8]) -> Option<Vec<u8>> {
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
}
