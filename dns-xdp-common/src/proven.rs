//! The table of proven sources: addresses (at the per-source prefix) that recently
//! completed a TCP handshake with the server or sent it a valid DNS server cookie, so
//! are not spoofed. Fixed memory: lines of `PROVEN_WAYS` slots, each a full key and an
//! expiry, found by the keyed hash the source table uses. Over the server budget,
//! proven sources are served first (`limits::budget_gcra`).

use bytemuck::{Pod, Zeroable};

use crate::{FAMILY_V6, Level};

/// Slots per line of the proven-sources table: a line is two 64-byte cache lines,
/// searched whole.
pub const PROVEN_WAYS: usize = 4;
/// Lines of the proven-sources table: 16 384 × 4 = 65 536 proven sources in 2 MiB.
pub const PROVEN_LINES: u32 = 16_384;
/// The proof lifetime unless configured (`--proof-ttl`): ten minutes.
pub const DEFAULT_PROOF_TTL_S: u64 = 600;

/// One line of the proven-sources table.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct ProvenLine {
    /// Each slot's source prefix (`proven_key`).
    pub keys: [[u64; 3]; PROVEN_WAYS],
    /// Each slot's expiry (kernel monotonic ns); 0: free.
    pub until: [u64; PROVEN_WAYS],
}

/// The key of a proof of the source `addr` (`address_words`: IPv4 in the first four
/// bytes) at `level`'s prefix: the masked address, then family and prefix length.
#[inline(always)]
pub fn proven_key(addr: [u64; 2], family: u8, level: &Level) -> [u64; 3] {
    let (mask, prefix_len) = if family == FAMILY_V6 {
        (crate::address_words(&level.v6_mask), level.v6_prefix_len)
    } else {
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&level.v4_mask);
        (crate::address_words(&mask), level.v4_prefix_len)
    };
    [
        addr[0] & mask[0],
        addr[1] & mask[1],
        u64::from(family) | u64::from(prefix_len) << 8,
    ]
}

/// The slot a proof of `key` takes in `line`: the one holding it, else the one that
/// expires first (free and expired slots first of all).
#[inline(always)]
pub fn proven_slot(line: &ProvenLine, key: &[u64; 3]) -> usize {
    let mut oldest = 0;
    let mut way = 0;
    while way < PROVEN_WAYS {
        if line.keys[way] == *key {
            return way;
        }
        if line.until[way] < line.until[oldest] {
            oldest = way;
        }
        way += 1;
    }
    oldest
}

/// Whether `line` holds an unexpired proof of `key` at `now`.
#[inline(always)]
pub fn proven_in(line: &ProvenLine, key: &[u64; 3], now: u64) -> bool {
    let mut way = 0;
    let mut found = false;
    while way < PROVEN_WAYS {
        found |= line.keys[way] == *key && line.until[way] > now;
        way += 1;
    }
    found
}

/// Whether a proof of a slot holding the same key until `until` is still fresh enough
/// at `now` to leave alone: refreshed at most once per half lifetime, so a busy
/// client writes its line rarely.
#[inline(always)]
pub const fn proof_fresh(until: u64, now: u64, ttl_ns: u64) -> bool {
    until >= now + ttl_ns / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, Limit, address_words};

    fn v4(last: u8) -> [u64; 2] {
        address_words(&[198, 18, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn a_proof_takes_its_own_slot_else_the_first_to_expire() {
        let level = Level::new(32, 64, Limit::default());
        let key = |last: u8| proven_key(v4(last), FAMILY_V4, &level);
        let mut line = ProvenLine::default();
        for (way, until) in [50, 10, 40, 30].into_iter().enumerate() {
            line.keys[way] = key(way as u8);
            line.until[way] = until;
        }
        assert_eq!(proven_slot(&line, &key(2)), 2);
        assert_eq!(proven_slot(&line, &key(9)), 1);
        assert!(proven_in(&line, &key(0), 49));
        assert!(!proven_in(&line, &key(0), 50));
        assert!(!proven_in(&line, &key(9), 0));
    }

    #[test]
    fn keys_are_masked_to_the_prefix_and_tell_families_apart() {
        let level = Level::new(24, 56, Limit::default());
        assert_eq!(
            proven_key(v4(1), FAMILY_V4, &level),
            proven_key(v4(200), FAMILY_V4, &level)
        );
        assert_ne!(
            proven_key(v4(1), FAMILY_V4, &level),
            proven_key(v4(1), FAMILY_V6, &level)
        );
        let v6 = |byte: u8| {
            let mut addr = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            addr[6] = byte;
            address_words(&addr)
        };
        // /56: the 7th byte is inside the prefix, the 8th is not.
        assert_ne!(
            proven_key(v6(1), FAMILY_V6, &level),
            proven_key(v6(2), FAMILY_V6, &level)
        );
        let mut other = v6(1);
        other[0] ^= 0xff << 56;
        assert_eq!(
            proven_key(v6(1), FAMILY_V6, &level),
            proven_key(other, FAMILY_V6, &level)
        );
    }

    #[test]
    fn a_proof_is_refreshed_at_most_once_per_half_lifetime() {
        assert!(proof_fresh(100, 40, 100));
        assert!(!proof_fresh(100, 51, 100));
    }
}
