//! DNS server cookies (RFC 7873, RFC 9018) as XDP checks them: the secrets in the live
//! configuration, what a query's COOKIE option can say, the SipHash-2-4 a server
//! computes its cookies with and the timestamp window it accepts them in, as plain
//! functions the kernel's check and the tests share. `tests/tests/veth_cookies.rs`
//! shows they reproduce BIND 9's cookies bit for bit.
//!
//! An RFC 9018 server cookie is 16 bytes: version 1, three reserved bytes, a 32-bit
//! timestamp (seconds since the epoch, serial arithmetic) and the first 8 bytes of
//! SipHash-2-4(client cookie | version | reserved | timestamp | client address) keyed
//! with the server's 16-byte secret. BIND 9 (`cookie-algorithm siphash24`), NSD and
//! Knot DNS make it the same way, so dns-xdp checks it with the same secret.

/// The EDNS option code of COOKIE.
pub const OPTION_COOKIE: u16 = 10;
/// The EDNS OPT record's type.
pub const TYPE_OPT: u16 = 41;
/// A client cookie alone (a client's first query, or a server that sent none).
pub const CLIENT_COOKIE_LEN: usize = 8;
/// A client cookie followed by an RFC 9018 server cookie.
pub const FULL_COOKIE_LEN: usize = 24;
/// Options of the OPT record walked to find COOKIE (each a bounded read).
pub const MAX_OPTIONS: usize = 4;
/// The server cookie's version (RFC 9018).
pub const COOKIE_VERSION: u8 = 1;
/// RFC 9018, section 4.3: a server cookie older than an hour, or more than five
/// minutes in the future, is not accepted.
pub const COOKIE_MAX_AGE_S: u32 = 3600;
pub const COOKIE_MAX_AHEAD_S: u32 = 300;

/// What a query's COOKIE option said: a client cookie only, or no OPT record, or no
/// COOKIE option: nothing to verify. (In the order of the `Cookie*` counters.)
pub const COOKIE_NONE: u8 = 0;
/// A server cookie a configured secret made for this client, within the window.
pub const COOKIE_VALID: u8 = 1;
/// A server cookie that no configured secret made for this client (forged, mangled,
/// another server's, a secret since dropped, or not in the RFC 9018 format).
pub const COOKIE_INVALID: u8 = 2;
/// A server cookie a configured secret made, with a timestamp outside the window.
pub const COOKIE_STALE: u8 = 3;

/// The server secrets cookies are checked against, in the live configuration: the
/// current one first, then the previous one during a rotation.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default, Debug, PartialEq, Eq)]
pub struct CookieSecrets {
    /// Each secret as SipHash's (k0, k1): its 16 bytes read as two little-endian words.
    pub keys: [[u64; 2]; 2],
    /// Secrets in use: 0 (cookies not checked), 1 or 2.
    pub count: u32,
    /// Seconds to add to the kernel's TAI clock for UNIX time (the loader reads both
    /// clocks: 0, or -37 where the kernel knows the TAI offset).
    pub tai_to_unix_s: i32,
}

impl CookieSecrets {
    /// The secrets of `secrets` (16 bytes each, at most 2, current first).
    pub fn new(secrets: &[[u8; 16]], tai_to_unix_s: i32) -> Self {
        let mut keys = [[0; 2]; 2];
        for (key, secret) in keys.iter_mut().zip(secrets) {
            *key = secret_key(secret);
        }
        Self {
            keys,
            count: secrets.len().min(2) as u32,
            tai_to_unix_s,
        }
    }

    #[inline(always)]
    pub const fn is_on(&self) -> bool {
        self.count != 0
    }
}

/// A 16-byte secret as SipHash's key words.
pub fn secret_key(secret: &[u8; 16]) -> [u64; 2] {
    let mut low = [0; 8];
    let mut high = [0; 8];
    low.copy_from_slice(&secret[..8]);
    high.copy_from_slice(&secret[8..]);
    [u64::from_le_bytes(low), u64::from_le_bytes(high)]
}

/// The 8-byte hash of a server cookie, as the little-endian word its bytes are, for
/// the client cookie `client` (the option's first 8 bytes as a little-endian word), the
/// server cookie's first 8 bytes `header` (version, reserved, timestamp; the same), and
/// the client's address as two little-endian words (`address_words`): IPv4 in the
/// low 4 bytes of `addr_lo` (`v6` false) or IPv6.
#[inline(always)]
pub fn cookie_hash(key: &[u64; 2], client: u64, header: u64, addr: [u64; 2], v6: bool) -> u64 {
    let mut v = sip_init(key);
    sip_block(&mut v, client);
    sip_block(&mut v, header);
    if v6 {
        sip_block(&mut v, addr[0]);
        sip_block(&mut v, addr[1]);
        sip_block(&mut v, 32 << 56);
    } else {
        // 20 bytes: the last block holds the address's 4 bytes and the length.
        sip_block(&mut v, (addr[0] & 0xffff_ffff) | 20 << 56);
    }
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// An address (IPv4 in its first 4 bytes) as `cookie_hash`'s two little-endian words.
#[inline(always)]
pub fn address_words(addr: &[u8; 16]) -> [u64; 2] {
    let mut word = [0u8; 8];
    word.copy_from_slice(&addr[..8]);
    let low = u64::from_le_bytes(word);
    word.copy_from_slice(&addr[8..]);
    [low, u64::from_le_bytes(word)]
}

/// Whether a server cookie's `timestamp` is within the RFC 9018 window at `now`
/// (UNIX seconds; both compared with serial arithmetic, so the 2106 wrap is harmless).
#[inline(always)]
pub const fn cookie_fresh(timestamp: u32, now: u32) -> bool {
    let age = now.wrapping_sub(timestamp);
    // Within the past hour, or up to five minutes ahead (a negative age).
    age <= COOKIE_MAX_AGE_S || age.wrapping_neg() <= COOKIE_MAX_AHEAD_S
}

#[inline(always)]
fn sip_init(key: &[u64; 2]) -> [u64; 4] {
    [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ]
}

/// One SipHash-2-4 compression of a message word.
#[inline(always)]
fn sip_block(v: &mut [u64; 4], word: u64) {
    v[3] ^= word;
    sip_round(v);
    sip_round(v);
    v[0] ^= word;
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    crate::table::sip_round(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;

    fn reference(secret: &[u8; 16], input: &[u8]) -> u64 {
        let key = secret_key(secret);
        let mut hasher = siphasher::sip::SipHasher24::new_with_keys(key[0], key[1]);
        hasher.write(input);
        hasher.finish()
    }

    fn words(client: [u8; 8], timestamp: u32) -> (u64, u64, [u8; 16]) {
        let mut header = [COOKIE_VERSION, 0, 0, 0, 0, 0, 0, 0];
        header[4..].copy_from_slice(&timestamp.to_be_bytes());
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&client);
        input[8..].copy_from_slice(&header);
        (
            u64::from_le_bytes(client),
            u64::from_le_bytes(header),
            input,
        )
    }

    #[test]
    fn the_hash_is_siphash24_of_the_rfc9018_input() {
        let secret: [u8; 16] = core::array::from_fn(|i| i as u8 * 7 + 1);
        let key = secret_key(&secret);
        let (client, header, input) = words(*b"\x01\x02\x03\x04\x05\x06\x07\x08", 1_765_000_000);
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 0, 2]);
        let mut bytes = input.to_vec();
        bytes.extend([198, 18, 0, 2]);
        assert_eq!(
            cookie_hash(&key, client, header, address_words(&v4), false),
            reference(&secret, &bytes)
        );
        let v6: [u8; 16] = core::array::from_fn(|i| 0x20 + i as u8);
        let mut bytes = input.to_vec();
        bytes.extend(v6);
        assert_eq!(
            cookie_hash(&key, client, header, address_words(&v6), true),
            reference(&secret, &bytes)
        );
    }

    #[test]
    fn the_window_is_an_hour_back_and_five_minutes_ahead() {
        let now = 1_765_000_000;
        assert!(cookie_fresh(now, now));
        assert!(cookie_fresh(now - 3600, now));
        assert!(!cookie_fresh(now - 3601, now));
        assert!(cookie_fresh(now + 300, now));
        assert!(!cookie_fresh(now + 301, now));
        // Across the 32-bit wrap.
        assert!(cookie_fresh(u32::MAX - 10, 20));
        assert!(!cookie_fresh(u32::MAX / 2, 20));
    }
}
