//! The source table: fixed memory, no insert. `SOURCES` is an array of lines of
//! `SOURCE_WAYS` slots; a source prefix's bucket lives in the line its keyed hash names,
//! found by its tag. The hash is keyed with a secret drawn when the table is made, so no
//! sender can aim its keys at one line.
//!
//! A prefix not in its line takes a slot from another (`victim`): one idle for
//! `SOURCE_HOLD_NS` if there is one, else the one with the fewest queries, the newest
//! of those first. A source that keeps talking keeps its slot however many one-packet
//! sources arrive; they take turns in the line's newest slot. The newcomer inherits the
//! bucket of the slot it takes (`claimed_tat`), up to its own ceiling, as Metwally's
//! space-saving counters inherit the evicted count: whatever the table forgets, a
//! source never finds more than it left, and while a flood brings new sources faster
//! than a line can hold them, those newcomers share one bucket per line.

use bytemuck::{Pod, Zeroable};

use crate::{Limit, NS_PER_SEC, SourceKey, gcra_ceiling};

/// Slots per line: the candidates a prefix can occupy.
pub const SOURCE_WAYS: usize = 8;

/// What the loader keeps per slot besides its bucket: queries admitted and refused.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct SourceCounts {
    /// Queries admitted by the bucket.
    pub passed: u64,
    /// Queries refused by the bucket and dropped.
    pub dropped: u64,
    /// Queries refused by the bucket but passed because of dry-run.
    pub would_drop: u64,
}

/// One line of `SOURCES`: what the kernel reads on every query (tags, then buckets) in
/// the first two cache lines, the keys and counters the reports read after them.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct SourceLine {
    /// Each slot's tag (`slot_tag`); 0: never used.
    pub tags: [u64; SOURCE_WAYS],
    /// Each slot's GCRA theoretical arrival time (ns, `bpf_ktime_get_ns` clock).
    pub tats: [u64; SOURCE_WAYS],
    /// When each slot last saw a query (ns, same clock); 0: never used.
    pub lasts: [u64; SOURCE_WAYS],
    /// Each slot's prefix, written when the slot is claimed (for the reports).
    pub keys: [SourceKey; SOURCE_WAYS],
    pub counts: [SourceCounts; SOURCE_WAYS],
}

/// Bytes of table per source prefix tracked.
pub const SOURCE_SLOT_BYTES: usize = size_of::<SourceLine>() / SOURCE_WAYS;

/// The table's shape and hash key (`SOURCE_HASH`), written once by the loader that makes
/// the table, pinned with it: a takeover finds every bucket where it was.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug, PartialEq, Eq)]
pub struct SourceHash {
    /// SipHash key, drawn at random when the table is made.
    pub secret: [u64; 2],
    /// Lines in `SOURCES`; 0 until the loader has written this.
    pub lines: u32,
    pub _reserved: u32,
}

/// Lines for a table of `entries` slots (at least one).
pub const fn source_lines(entries: u32) -> u32 {
    let lines = entries.div_ceil(SOURCE_WAYS as u32);
    if lines == 0 { 1 } else { lines }
}

/// The keyed hash of a prefix: SipHash-1-3 of its 24 bytes (address, then family,
/// prefix length, level and bucket) under the table's secret.
#[inline(always)]
pub fn source_hash(key: &SourceKey, secret: &[u64; 2]) -> u64 {
    let words = [
        u64::from_le_bytes(split8(&key.addr, 0)),
        u64::from_le_bytes(split8(&key.addr, 8)),
        u64::from(key.family)
            | u64::from(key.prefix_len) << 8
            | u64::from(key.level) << 16
            | u64::from(key.tcp) << 24,
    ];
    siphash13(secret, &words)
}

#[inline(always)]
fn split8(bytes: &[u8; 16], at: usize) -> [u8; 8] {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    word
}

/// SipHash-1-3 of a message of whole 8-byte words (little-endian, as `siphasher` reads
/// bytes), `secret` as (k0, k1). Straight-line: the verifier walks it once.
#[inline(always)]
pub fn siphash13(secret: &[u64; 2], words: &[u64; 3]) -> u64 {
    let mut v = [
        secret[0] ^ 0x736f_6d65_7073_6575,
        secret[1] ^ 0x646f_7261_6e64_6f6d,
        secret[0] ^ 0x6c79_6765_6e65_7261,
        secret[1] ^ 0x7465_6462_7974_6573,
    ];
    let last = (size_of::<[u64; 3]>() as u64) << 56;
    for word in [words[0], words[1], words[2], last] {
        v[3] ^= word;
        sip_round(&mut v);
        v[0] ^= word;
    }
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// One SipRound, shared by SipHash-1-3 here and SipHash-2-4 (`cookies`).
#[inline(always)]
pub fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// The line of a hash: its high 32 bits scaled to `lines` (a multiply, no division).
#[inline(always)]
pub const fn line_index(hash: u64, lines: u32) -> u32 {
    (((hash >> 32) * lines as u64) >> 32) as u32
}

/// A slot's tag: the whole hash, never 0 (0 marks a slot never used). Two prefixes of
/// one line share a bucket only if their 64-bit hashes agree but for the lowest bit.
#[inline(always)]
pub const fn slot_tag(hash: u64) -> u64 {
    hash | 1
}

/// How long a slot is kept for a source that sends nothing: past it, any newcomer may
/// take it. Longer than the gap between two queries of a source limited to one a
/// minute, so that such a source keeps its bucket.
pub const SOURCE_HOLD_NS: u64 = 120 * NS_PER_SEC;

/// How readily a slot is given up to a newcomer (the highest goes): idle slots first,
/// the longest idle first; then the slot with the fewest queries, and of those the one
/// that saw its last query latest: one-packet sources replace each other, not the
/// sources that came before them. `hits` counts the slot's queries since it was taken.
#[inline(always)]
pub const fn evictability(last_ns: u64, hits: u64, now: u64) -> u64 {
    let idle = now.saturating_sub(last_ns);
    if idle > SOURCE_HOLD_NS {
        return (1 << 63) | idle;
    }
    const HITS_BITS: u32 = 16;
    const TIME_BITS: u32 = 63 - HITS_BITS;
    let hits = if hits > (1 << HITS_BITS) - 1 {
        (1 << HITS_BITS) - 1
    } else {
        hits
    };
    // Time in units of 2^10 ns (about a microsecond): 2^47 of them outlast any uptime.
    let time = (last_ns >> 10) & ((1 << TIME_BITS) - 1);
    (((1 << HITS_BITS) - 1 - hits) << TIME_BITS) | time
}

/// The slot a newcomer takes: the most evictable (`evictability`).
#[inline(always)]
pub fn victim(lasts: &[u64; SOURCE_WAYS], hits: &[u64; SOURCE_WAYS], now: u64) -> usize {
    victim_forgetting(|way| evictability(lasts[way], hits[way], now), Some)
}

/// The slot of the highest `score(slot)`, handing the running best (score, slot)
/// through `forget` after each slot: the kernel passes a function the verifier cannot
/// see through, so that it walks the slots once, not once per combination of which slot
/// won so far, and scores each slot where it reads it (no copy of the line on its
/// small stack). `None` from `forget`: slot 0.
#[inline(always)]
pub fn victim_forgetting(
    score: impl Fn(usize) -> u64,
    forget: impl Fn([u64; 2]) -> Option<[u64; 2]>,
) -> usize {
    let mut best = [0, 0];
    for index in 0..SOURCE_WAYS {
        let score = score(index);
        let next = if score > best[0] {
            [score, index as u64]
        } else {
            best
        };
        let Some(next) = forget(next) else {
            return 0;
        };
        best = next;
    }
    best[1] as usize & (SOURCE_WAYS - 1)
}

/// The `tat` a newcomer starts from in a slot whose bucket had `evicted_tat`: the same
/// (a full bucket stays full, a debt is inherited) but never beyond the newcomer's own
/// ceiling under `limit` (fully limited, never more).
#[inline(always)]
pub const fn claimed_tat(evicted_tat: u64, now: u64, limit: &Limit) -> u64 {
    let ceiling = gcra_ceiling(now, limit);
    if evicted_tat < ceiling {
        evicted_tat
    } else {
        ceiling
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{Level, gcra};
    use std::vec::Vec;

    #[test]
    fn siphash13_matches_the_reference() {
        use core::hash::Hasher;
        let secret = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let bytes: Vec<u8> = (0..24).collect();
        let mut reference = siphasher::sip::SipHasher13::new_with_keys(secret[0], secret[1]);
        reference.write(&bytes);
        let words = [0, 8, 16].map(|at| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()));
        assert_eq!(siphash13(&secret, &words), reference.finish());
    }

    #[test]
    fn the_hash_covers_every_field_and_the_secret() {
        let level = Level::new(32, 64, Limit::new(1, 1, 1).unwrap());
        let key = SourceKey::v4([198, 18, 0, 1], &level, 0);
        let secret = [1, 2];
        let base = source_hash(&key, &secret);
        let mut variants = Vec::new();
        for change in 0..6 {
            let mut other = key;
            match change {
                0 => other.addr[3] = 2,
                1 => other.addr[15] = 1,
                2 => other.family = 6,
                3 => other.prefix_len = 24,
                4 => other.level = 1,
                _ => other.tcp = 1,
            }
            variants.push(source_hash(&other, &secret));
        }
        variants.push(source_hash(&key, &[1, 3]));
        assert!(variants.iter().all(|&hash| hash != base), "{variants:x?}");
    }

    #[test]
    fn lines_and_tags_spread_evenly() {
        let (lines, keys) = (64u32, 64_000u32);
        let mut per_line = std::vec![0u32; lines as usize];
        let level = Level::new(32, 64, Limit::new(1, 1, 1).unwrap());
        for index in 0..keys {
            let key = SourceKey::v4(index.to_be_bytes(), &level, 0);
            let hash = source_hash(&key, &[7, 9]);
            assert_ne!(slot_tag(hash), 0);
            per_line[line_index(hash, lines) as usize] += 1;
        }
        let expected = keys / lines;
        assert!(
            per_line
                .iter()
                .all(|&n| n.abs_diff(expected) < expected / 5),
            "{per_line:?}"
        );
        assert_eq!(line_index(u64::MAX, lines), lines - 1);
        assert_eq!(source_lines(0), 1);
        assert_eq!(source_lines(262_144), 32_768);
        assert_eq!(source_lines(9), 2);
    }

    #[test]
    fn idle_slots_go_first_then_the_newest_of_the_least_used() {
        let now = 1000 * NS;
        let recent = now - NS;
        // Never used (last 0) beats everything in use.
        assert_eq!(
            victim(
                &[recent, recent, 0, recent, recent, recent, recent, recent],
                &[1; 8],
                now
            ),
            2
        );
        // Of two idle slots, the longer idle.
        let idle = now - SOURCE_HOLD_NS - NS;
        let older = now - SOURCE_HOLD_NS - 2 * NS;
        assert_eq!(
            victim(
                &[recent, idle, recent, older, recent, recent, recent, recent],
                &[1; 8],
                now
            ),
            3
        );
        // In use: the fewest queries, then the latest.
        let lasts = [5, 1, 3, 2, 4, 6, 7, 8].map(|ago| now - ago * NS);
        assert_eq!(victim(&lasts, &[9, 9, 1, 1, 9, 9, 9, 9], now), 3);
        assert_eq!(victim(&lasts, &[9, 2, 9, 9, 9, 9, 9, 9], now), 1);
        // A full bucket passes on nothing; a debt up to the ceiling.
        let limit = Limit::new(10, NS, 20).unwrap();
        assert_eq!(claimed_tat(0, now, &limit), 0);
        assert_eq!(claimed_tat(now + NS, now, &limit), now + NS);
        assert_eq!(
            claimed_tat(now + 60 * NS, now, &limit),
            gcra_ceiling(now, &limit)
        );
    }

    const NS: u64 = 1_000_000_000;

    /// The table in host memory, run as the kernel runs it (one CPU).
    struct Table {
        lines: Vec<SourceLine>,
        secret: [u64; 2],
    }

    impl Table {
        fn new(entries: u32) -> Self {
            Self {
                lines: std::vec![SourceLine::zeroed(); source_lines(entries) as usize],
                secret: [0x1234, 0x5678],
            }
        }

        fn admit(&mut self, addr: u32, now: u64, limit: &Limit) -> bool {
            let level = Level::new(32, 64, *limit);
            let key = SourceKey::v4(addr.to_be_bytes(), &level, 0);
            let hash = source_hash(&key, &self.secret);
            let index = line_index(hash, self.lines.len() as u32) as usize;
            let line = &mut self.lines[index];
            let tag = slot_tag(hash);
            let way = match line.tags.iter().position(|&t| t == tag) {
                Some(way) => way,
                None => {
                    let hits = line.counts.map(|c| c.passed + c.dropped);
                    let way = victim(&line.lasts, &hits, now);
                    line.tats[way] = claimed_tat(line.tats[way], now, limit);
                    line.tags[way] = tag;
                    line.counts[way] = SourceCounts::default();
                    way
                }
            };
            line.lasts[way] = now;
            match gcra(line.tats[way], now, limit) {
                Some(tat) => {
                    line.tats[way] = tat;
                    line.counts[way].passed += 1;
                    true
                }
                None => {
                    line.counts[way].dropped += 1;
                    false
                }
            }
        }
    }

    /// The admissions an exact, unbounded GCRA gives arrivals at `times`.
    fn exact(times: &[u64], limit: &Limit) -> usize {
        let mut tat = 0;
        times
            .iter()
            .filter(|&&now| gcra(tat, now, limit).map(|next| tat = next).is_some())
            .count()
    }

    /// One source at `times`, each of its arrivals followed by `churn_per_arrival`
    /// one-packet sources never seen before: what the table admits it, what an exact
    /// GCRA would, and the share of the one-packet sources refused.
    fn churned(
        entries: u32,
        limit: &Limit,
        times: &[u64],
        churn_per_arrival: u32,
    ) -> (usize, usize, f64) {
        let mut table = Table::new(entries);
        let (mut admitted, mut fresh, mut refused) = (0, 0u32, 0u32);
        for (index, &now) in times.iter().enumerate() {
            admitted += usize::from(table.admit(0xc612_0001, now, limit));
            // Spread over the gap to the next arrival.
            let gap = times.get(index + 1).map_or(NS, |next| next - now);
            for step in 1..=u64::from(churn_per_arrival) {
                fresh += 1;
                let at = now + gap * step / (u64::from(churn_per_arrival) + 1);
                refused += u32::from(!table.admit(0x0a00_0000 + fresh, at, limit));
            }
        }
        (
            admitted,
            exact(times, limit),
            f64::from(refused) / f64::from(fresh.max(1)),
        )
    }

    #[test]
    fn a_hot_source_keeps_its_slot_through_churn_of_200_times_the_table() {
        // 10/s burst 20, the source at 20/s for 5 s, 200 x 1024 new sources meanwhile.
        let limit = Limit::new(10, NS, 20).unwrap();
        let times: Vec<u64> = (0..100).map(|i| 1000 * NS + i * NS / 20).collect();
        let (admitted, expected, refused) = churned(1024, &limit, &times, 200 * 1024 / 100);
        assert!(admitted.abs_diff(expected) <= 1, "{admitted} of {expected}");
        // Newcomers faster than the lines hold them share one bucket per line: 128
        // lines x (20 + 10/s x 5 s) of the 204 800.
        let bound = 1.0 - (128.0 * 70.0 + 1024.0) / 204_800.0;
        assert!(
            refused >= bound - 0.01,
            "{refused} of the newcomers refused"
        );
    }

    #[test]
    fn a_sparse_source_gets_no_more_than_its_limit_through_churn() {
        // 1/min burst 1, the source at 2/min for 10 min, 200 x 1024 new sources meanwhile.
        let limit = Limit::new(1, 60 * NS, 1).unwrap();
        let times: Vec<u64> = (0..20).map(|i| 1000 * NS + i * 30 * NS).collect();
        let (admitted, expected, refused) = churned(1024, &limit, &times, 200 * 1024 / 20);
        assert_eq!(
            admitted, expected,
            "one-packet sources refused: {refused:.3}"
        );
    }
}
